//! How events become rows of the four event tables and come back, free of any server.
//!
//! Every row carries the event's identity (`agent_id`, `spool_id`, `seq`, `idx`: its batch and
//! its place in it), its cursor and receive time, its own time, and typed columns for what
//! queries filter on: a metric's name, unit, kind, attributes (parallel key and value arrays, in
//! the agent's order, repeats kept) and value; a log record's source, severity, body and
//! attributes; a file-integrity change's path, change, listed attributes, trail place and chain.
//! What no query filters on is JSON: a change's file states before and after, an agent status.
//!
//! Reads go through one shape, [`ReadRow`], whatever the kind, so that a query over every kind is
//! one `UNION ALL`: [`select_columns`] maps each table's columns onto it and [`stored_event`]
//! turns it back into the event.

use clickhouse::Row;
use outpost_common::event::{
    AgentStatus, Event, EventKind, FileState, FimChange, FimDetection, FimEvent, LogRecord,
    MetricKind, MetricPoint, Severity,
};
use serde::{Deserialize, Serialize};

use crate::store::{Cursor, StoredEvent};

/// The Enum8 values of a metric's kind.
pub(super) const METRIC_KINDS: [(MetricKind, &str, i8); 2] = [
    (MetricKind::Gauge, "gauge", 1),
    (MetricKind::Counter, "counter", 2),
];

/// The Enum8 values of a file-integrity change.
pub(super) const FIM_CHANGES: [(FimChange, &str, i8); 6] = [
    (FimChange::Created, "created", 1),
    (FimChange::Modified, "modified", 2),
    (FimChange::MetadataChanged, "metadata_changed", 3),
    (FimChange::Deleted, "deleted", 4),
    (FimChange::Moved, "moved", 5),
    (FimChange::TypeChanged, "type_changed", 6),
];

/// The Enum8 values of how a change was found.
pub(super) const FIM_DETECTIONS: [(FimDetection, &str, i8); 3] = [
    (FimDetection::Realtime, "realtime", 1),
    (FimDetection::Scheduled, "scheduled", 2),
    (FimDetection::Rescan, "rescan", 3),
];

/// The column type of an Enum8 with these values: `Enum8('gauge' = 1, 'counter' = 2)`.
pub(super) fn enum8<T>(values: &[(T, &str, i8)]) -> String {
    let list: Vec<String> = values
        .iter()
        .map(|(_, name, code)| format!("'{name}' = {code}"))
        .collect();
    format!("Enum8({})", list.join(", "))
}

fn code_of<T: PartialEq>(values: &[(T, &str, i8)], value: &T) -> i8 {
    values
        .iter()
        .find(|(v, _, _)| v == value)
        .map_or(0, |&(_, _, code)| code)
}

fn value_of<T: Copy>(values: &[(T, &str, i8)], code: i64) -> Option<T> {
    values
        .iter()
        .find(|&&(_, _, c)| i64::from(c) == code)
        .map(|&(v, _, _)| v)
}

/// The syslog level of a severity, so that `severity <= 3` selects errors and worse.
fn severity_level(s: Severity) -> u8 {
    match s {
        Severity::Emergency => 0,
        Severity::Alert => 1,
        Severity::Critical => 2,
        Severity::Error => 3,
        Severity::Warning => 4,
        Severity::Notice => 5,
        Severity::Info => 6,
        Severity::Debug => 7,
    }
}

/// The table holding events of a kind.
pub(super) fn table(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Metric => "metrics",
        EventKind::Log => "logs",
        EventKind::Fim => "fim",
        EventKind::Status => "status",
    }
}

/// The columns naming the batch of a row of `kind`'s table: a prefix of its sort key, so that a
/// search by batch reads only the batch's rows.
pub(super) fn batch_key(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Metric => "agent_id, name, spool_id, seq",
        EventKind::Log | EventKind::Fim | EventKind::Status => "agent_id, spool_id, seq",
    }
}

/// The number [`ReadRow::event_kind`] gives a kind.
pub(super) fn kind_code(kind: EventKind) -> u8 {
    match kind {
        EventKind::Metric => 1,
        EventKind::Log => 2,
        EventKind::Fim => 3,
        EventKind::Status => 4,
    }
}

/// Where a row's event came from and where it stands.
#[derive(Debug, Clone, Copy)]
pub(super) struct Place<'a> {
    pub agent_id: &'a str,
    pub spool_id: u64,
    pub seq: u64,
    /// Its place in the batch; the store's notices follow the batch's events.
    pub idx: u32,
    pub cursor: Cursor,
    pub received_ns: i64,
}

#[derive(Debug, Row, Serialize)]
pub(super) struct MetricRow<'a> {
    agent_id: &'a str,
    spool_id: u64,
    seq: u64,
    idx: u32,
    cursor: u64,
    received_ns: i64,
    time_ns: i64,
    name: &'a str,
    unit: &'a str,
    kind: i8,
    attr_keys: Vec<&'a str>,
    attr_values: Vec<&'a str>,
    value: f64,
}

#[derive(Debug, Row, Serialize)]
pub(super) struct LogRow<'a> {
    agent_id: &'a str,
    spool_id: u64,
    seq: u64,
    idx: u32,
    cursor: u64,
    received_ns: i64,
    time_ns: i64,
    source: &'a str,
    severity: Option<u8>,
    body: &'a str,
    attr_keys: Vec<&'a str>,
    attr_values: Vec<&'a str>,
}

#[derive(Debug, Row, Serialize)]
pub(super) struct FimRow<'a> {
    agent_id: &'a str,
    spool_id: u64,
    seq: u64,
    idx: u32,
    cursor: u64,
    received_ns: i64,
    time_ns: i64,
    path: &'a str,
    change: i8,
    changed: Vec<&'a str>,
    moved_from: Option<&'a str>,
    /// JSON of the file state, empty when there is none.
    before: String,
    after: String,
    detected_by: i8,
    fim_seq: u64,
    chain: &'a str,
}

#[derive(Debug, Row, Serialize)]
pub(super) struct StatusRow<'a> {
    agent_id: &'a str,
    spool_id: u64,
    seq: u64,
    idx: u32,
    cursor: u64,
    received_ns: i64,
    time_ns: i64,
    /// JSON of the status.
    status: String,
}

/// The rows of one commit, by table.
#[derive(Debug, Default)]
pub(super) struct Rows<'a> {
    pub metrics: Vec<MetricRow<'a>>,
    pub logs: Vec<LogRow<'a>>,
    pub fim: Vec<FimRow<'a>>,
    pub status: Vec<StatusRow<'a>>,
}

impl<'a> Rows<'a> {
    /// Adds the row of `event` at `place`.
    pub(super) fn push(&mut self, place: Place<'a>, event: &'a Event) -> serde_json::Result<()> {
        let Place {
            agent_id,
            spool_id,
            seq,
            idx,
            cursor,
            received_ns,
        } = place;
        let cursor = cursor.position();
        match event {
            Event::Metric(m) => self.metrics.push(MetricRow {
                agent_id,
                spool_id,
                seq,
                idx,
                cursor,
                received_ns,
                time_ns: m.time_ns,
                name: &m.name,
                unit: &m.unit,
                kind: code_of(&METRIC_KINDS, &m.kind),
                attr_keys: m.attributes.iter().map(|(k, _)| k.as_str()).collect(),
                attr_values: m.attributes.iter().map(|(_, v)| v.as_str()).collect(),
                value: m.value,
            }),
            Event::Log(l) => self.logs.push(LogRow {
                agent_id,
                spool_id,
                seq,
                idx,
                cursor,
                received_ns,
                time_ns: l.time_ns,
                source: &l.source,
                severity: l.severity.map(severity_level),
                body: &l.body,
                attr_keys: l.attributes.iter().map(|(k, _)| k.as_str()).collect(),
                attr_values: l.attributes.iter().map(|(_, v)| v.as_str()).collect(),
            }),
            Event::Fim(f) => self.fim.push(FimRow {
                agent_id,
                spool_id,
                seq,
                idx,
                cursor,
                received_ns,
                time_ns: f.time_ns,
                path: &f.path,
                change: code_of(&FIM_CHANGES, &f.change),
                changed: f.changed.iter().map(String::as_str).collect(),
                moved_from: f.moved_from.as_deref(),
                before: state_json(f.before.as_deref())?,
                after: state_json(f.after.as_deref())?,
                detected_by: code_of(&FIM_DETECTIONS, &f.detected_by),
                fim_seq: f.seq,
                chain: &f.chain,
            }),
            Event::Status(s) => self.status.push(StatusRow {
                agent_id,
                spool_id,
                seq,
                idx,
                cursor,
                received_ns,
                time_ns: s.time_ns,
                status: serde_json::to_string(s)?,
            }),
        }
        Ok(())
    }
}

fn state_json(state: Option<&FileState>) -> serde_json::Result<String> {
    state.map_or(Ok(String::new()), serde_json::to_string)
}

/// Any stored event, in the shape [`select_columns`] gives every table.
///
/// | column   | metric  | log             | fim           | status |
/// |----------|---------|-----------------|---------------|--------|
/// | `text1`  | name    | source          | path          | status |
/// | `text2`  | unit    | body            | chain         |        |
/// | `text3`  |         |                 | before        |        |
/// | `text4`  |         |                 | after         |        |
/// | `num1`   | kind    | severity (or -1)| change        |        |
/// | `num2`   |         |                 | detected_by   |        |
/// | `num3`   |         |                 | trail seq     |        |
/// | `value`  | value   |                 |               |        |
/// | `keys`   | attribute keys | attribute keys | changed |     |
/// | `values` | attribute values | attribute values |     |     |
/// | `maybe`  |         |                 | moved_from    |        |
#[derive(Debug, Clone, PartialEq, Row, Deserialize)]
pub(super) struct ReadRow {
    pub cursor: u64,
    pub agent_id: String,
    pub received_ns: i64,
    pub time_ns: i64,
    /// 1 metric, 2 log, 3 fim, 4 status.
    pub event_kind: u8,
    pub text1: String,
    pub text2: String,
    pub text3: String,
    pub text4: String,
    pub num1: i64,
    pub num2: i64,
    pub num3: u64,
    pub value: f64,
    pub keys: Vec<String>,
    pub vals: Vec<String>,
    pub maybe: Option<String>,
}

/// The columns after `cursor, agent_id, received_ns, time_ns` that make a row of `kind`'s table
/// a [`ReadRow`].
pub(super) fn select_columns(kind: EventKind) -> String {
    let none = "CAST(NULL AS Nullable(String))";
    let columns = match kind {
        EventKind::Metric => format!(
            "name, unit, '', '', toInt64(kind), toInt64(0), toUInt64(0), value, attr_keys, \
             attr_values, {none}"
        ),
        EventKind::Log => format!(
            "source, body, '', '', ifNull(toInt64(severity), toInt64(-1)), toInt64(0), \
             toUInt64(0), toFloat64(0), attr_keys, attr_values, {none}"
        ),
        EventKind::Fim => "path, chain, before, after, toInt64(change), toInt64(detected_by), \
             fim_seq, toFloat64(0), changed, emptyArrayString(), moved_from"
            .to_owned(),
        EventKind::Status => format!(
            "status, '', '', '', toInt64(0), toInt64(0), toUInt64(0), toFloat64(0), \
             emptyArrayString(), emptyArrayString(), {none}"
        ),
    };
    // Named, so that every arm of a UNION ALL has the same columns.
    let names = [
        "text1", "text2", "text3", "text4", "num1", "num2", "num3", "value", "keys", "vals",
        "maybe",
    ];
    let aliased: Vec<String> = split_top_level(&columns)
        .into_iter()
        .zip(names)
        .map(|(expr, name)| format!("{} AS {name}", expr.trim()))
        .collect();
    format!(
        "toUInt8({}) AS event_kind, {}",
        kind_code(kind),
        aliased.join(", ")
    )
}

/// Splits a column list at the commas outside parentheses.
fn split_top_level(list: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    parts
}

/// A stored row that does not read back: written by hand, or by a newer build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{row} cannot be read: {what}")]
pub struct BadRow {
    /// Which row: "the log row at cursor c…".
    row: String,
    what: String,
}

impl BadRow {
    fn event(cursor: u64, kind: &str, what: String) -> BadRow {
        BadRow {
            row: format!("the {kind} row at cursor c{cursor:x}"),
            what,
        }
    }

    /// A point of metric `name` of `agent_id`.
    pub(super) fn series(name: &str, agent_id: &str, what: String) -> BadRow {
        BadRow {
            row: format!("a point of metric `{name}` of agent {agent_id}"),
            what,
        }
    }
}

/// The event a [`ReadRow`] holds.
pub(super) fn stored_event(row: ReadRow) -> Result<StoredEvent, BadRow> {
    let cursor = row.cursor;
    let bad = |kind: &str, what: String| BadRow::event(cursor, kind, what);
    let event = match row.event_kind {
        1 => Event::Metric(MetricPoint {
            kind: value_of(&METRIC_KINDS, row.num1)
                .ok_or_else(|| bad("metric", format!("unknown metric kind {}", row.num1)))?,
            name: row.text1,
            unit: row.text2,
            attributes: pairs(row.keys, row.vals).map_err(|w| bad("metric", w))?,
            time_ns: row.time_ns,
            value: row.value,
        }),
        2 => Event::Log(LogRecord {
            time_ns: row.time_ns,
            severity: match row.num1 {
                -1 => None,
                level => Some(
                    usize::try_from(level)
                        .ok()
                        .and_then(|l| Severity::ALL.get(l).copied())
                        .ok_or_else(|| bad("log", format!("unknown severity {level}")))?,
                ),
            },
            source: row.text1,
            body: row.text2,
            attributes: pairs(row.keys, row.vals).map_err(|w| bad("log", w))?,
        }),
        3 => Event::Fim(FimEvent {
            time_ns: row.time_ns,
            change: value_of(&FIM_CHANGES, row.num1)
                .ok_or_else(|| bad("fim", format!("unknown change {}", row.num1)))?,
            detected_by: value_of(&FIM_DETECTIONS, row.num2)
                .ok_or_else(|| bad("fim", format!("unknown detection {}", row.num2)))?,
            before: state_from_json(&row.text3).map_err(|e| bad("fim", e.to_string()))?,
            after: state_from_json(&row.text4).map_err(|e| bad("fim", e.to_string()))?,
            path: row.text1,
            chain: row.text2,
            changed: row.keys,
            moved_from: row.maybe,
            seq: row.num3,
        }),
        4 => Event::Status(
            serde_json::from_str::<AgentStatus>(&row.text1)
                .map_err(|e| bad("status", e.to_string()))?,
        ),
        other => return Err(bad("unknown kind", format!("kind {other}"))),
    };
    Ok(StoredEvent {
        cursor: Cursor::from_position(row.cursor),
        agent_id: row.agent_id,
        received_ns: row.received_ns,
        event,
    })
}

/// Attributes from their parallel arrays.
pub(super) fn pairs(
    keys: Vec<String>,
    values: Vec<String>,
) -> Result<Vec<(String, String)>, String> {
    if keys.len() != values.len() {
        return Err(format!(
            "{} attribute keys but {} values",
            keys.len(),
            values.len()
        ));
    }
    Ok(keys.into_iter().zip(values).collect())
}

fn state_from_json(json: &str) -> serde_json::Result<Option<Box<FileState>>> {
    if json.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(json).map(Some)
}

/// The code of a metric kind, as stored.
pub(super) fn metric_kind_code(kind: MetricKind) -> i8 {
    code_of(&METRIC_KINDS, &kind)
}

/// The metric kind of a stored code.
pub(super) fn metric_kind(code: i64) -> Option<MetricKind> {
    value_of(&METRIC_KINDS, code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::{T0, fim, log, metric, status_event};

    fn place(idx: u32) -> Place<'static> {
        Place {
            agent_id: "web-1",
            spool_id: 7,
            seq: 9,
            idx,
            cursor: Cursor::from_position(1000 + u64::from(idx)),
            received_ns: T0 + 5,
        }
    }

    /// What the server would answer for a row: the columns [`select_columns`] names, taken from
    /// the row as written.
    fn read_back(rows: &Rows<'_>) -> Vec<ReadRow> {
        let mut out = Vec::new();
        for m in &rows.metrics {
            out.push(ReadRow {
                cursor: m.cursor,
                agent_id: m.agent_id.to_owned(),
                received_ns: m.received_ns,
                time_ns: m.time_ns,
                event_kind: 1,
                text1: m.name.to_owned(),
                text2: m.unit.to_owned(),
                text3: String::new(),
                text4: String::new(),
                num1: m.kind.into(),
                num2: 0,
                num3: 0,
                value: m.value,
                keys: m.attr_keys.iter().map(|s| (*s).to_owned()).collect(),
                vals: m.attr_values.iter().map(|s| (*s).to_owned()).collect(),
                maybe: None,
            });
        }
        for l in &rows.logs {
            out.push(ReadRow {
                cursor: l.cursor,
                agent_id: l.agent_id.to_owned(),
                received_ns: l.received_ns,
                time_ns: l.time_ns,
                event_kind: 2,
                text1: l.source.to_owned(),
                text2: l.body.to_owned(),
                text3: String::new(),
                text4: String::new(),
                num1: l.severity.map_or(-1, i64::from),
                num2: 0,
                num3: 0,
                value: 0.0,
                keys: l.attr_keys.iter().map(|s| (*s).to_owned()).collect(),
                vals: l.attr_values.iter().map(|s| (*s).to_owned()).collect(),
                maybe: None,
            });
        }
        for f in &rows.fim {
            out.push(ReadRow {
                cursor: f.cursor,
                agent_id: f.agent_id.to_owned(),
                received_ns: f.received_ns,
                time_ns: f.time_ns,
                event_kind: 3,
                text1: f.path.to_owned(),
                text2: f.chain.to_owned(),
                text3: f.before.clone(),
                text4: f.after.clone(),
                num1: f.change.into(),
                num2: f.detected_by.into(),
                num3: f.fim_seq,
                value: 0.0,
                keys: f.changed.iter().map(|s| (*s).to_owned()).collect(),
                vals: Vec::new(),
                maybe: f.moved_from.map(str::to_owned),
            });
        }
        for s in &rows.status {
            out.push(ReadRow {
                cursor: s.cursor,
                agent_id: s.agent_id.to_owned(),
                received_ns: s.received_ns,
                time_ns: s.time_ns,
                event_kind: 4,
                text1: s.status.clone(),
                text2: String::new(),
                text3: String::new(),
                text4: String::new(),
                num1: 0,
                num2: 0,
                num3: 0,
                value: 0.0,
                keys: Vec::new(),
                vals: Vec::new(),
                maybe: None,
            });
        }
        out
    }

    #[test]
    fn every_kind_of_event_reads_back_as_it_was_written() {
        let mut moved = match fim(T0) {
            Event::Fim(f) => f,
            _ => unreachable!(),
        };
        moved.change = FimChange::Moved;
        moved.moved_from = Some("/etc/old".to_owned());
        moved.before = None;
        moved.detected_by = FimDetection::Rescan;
        let mut quiet = match log(T0, 3) {
            Event::Log(l) => l,
            _ => unreachable!(),
        };
        quiet.severity = None;
        quiet.attributes = vec![("k".into(), "1".into()), ("k".into(), "2".into())];
        let mut counter = match metric(T0, -0.0) {
            Event::Metric(m) => m,
            _ => unreachable!(),
        };
        counter.kind = MetricKind::Counter;
        counter.attributes.clear();
        let mut busy = match status_event(T0) {
            Event::Status(s) => s,
            _ => unreachable!(),
        };
        busy.cert_renewal_error = Some("expired".into());
        busy.spool_bytes = u64::MAX;
        let events = vec![
            metric(T0, 1.5),
            Event::Metric(counter),
            log(T0, 10),
            Event::Log(quiet),
            fim(T0 + 1),
            Event::Fim(moved),
            status_event(T0),
            Event::Status(busy),
        ];
        let mut rows = Rows::default();
        for (idx, e) in (0..).zip(&events) {
            rows.push(place(idx), e).unwrap();
        }
        let mut read: Vec<StoredEvent> = read_back(&rows)
            .into_iter()
            .map(|r| stored_event(r).unwrap())
            .collect();
        read.sort_by_key(|e| e.cursor);
        assert_eq!(read.len(), events.len());
        for (i, (got, sent)) in read.iter().zip(&events).enumerate() {
            assert_eq!(&got.event, sent, "event {i}");
            assert_eq!(got.cursor, Cursor::from_position(1000 + i as u64));
            assert_eq!((got.agent_id.as_str(), got.received_ns), ("web-1", T0 + 5));
        }
        // Severities are their syslog levels, so `severity <= 3` means errors and worse.
        assert_eq!(rows.logs[0].severity, Some(6));
        assert_eq!(rows.fim[1].before, "");
    }

    #[test]
    fn rows_a_build_cannot_read_are_errors_naming_the_row() {
        let mut rows = Rows::default();
        let event = metric(T0, 1.0);
        rows.push(place(0), &event).unwrap();
        let mut row = read_back(&rows).remove(0);
        row.num1 = 9;
        let err = stored_event(row.clone()).unwrap_err().to_string();
        assert!(err.contains("unknown metric kind 9"), "{err}");
        assert!(err.contains(&format!("c{:x}", 1000)), "{err}");
        row.num1 = 1;
        row.vals.clear();
        let err = stored_event(row.clone()).unwrap_err().to_string();
        assert!(err.contains("1 attribute keys but 0 values"), "{err}");
        row.event_kind = 9;
        assert!(stored_event(row).is_err());
    }

    #[test]
    fn every_table_reads_into_the_same_columns() {
        for kind in EventKind::ALL {
            let columns = select_columns(kind);
            let names: Vec<&str> = split_top_level(&columns)
                .into_iter()
                .map(|c| c.rsplit(" AS ").next().unwrap_or_default())
                .collect();
            assert_eq!(
                names,
                [
                    "event_kind",
                    "text1",
                    "text2",
                    "text3",
                    "text4",
                    "num1",
                    "num2",
                    "num3",
                    "value",
                    "keys",
                    "vals",
                    "maybe"
                ],
                "{kind:?}: {columns}"
            );
        }
        assert_eq!(enum8(&METRIC_KINDS), "Enum8('gauge' = 1, 'counter' = 2)");
    }
}
