//! The reads: events by kind, agent, time and cursor; each host's summary; counts for tests.
//!
//! Event queries walk the shared id sequence (the rowid B-trees) from the cursor on and filter
//! as they go: cheap for tailing and paging, a scan for a selective filter over a long range,
//! since the tables carry no index but their ids (see the parent module for why; `fim_events` has
//! a few, which [`super::reader`] uses).

use std::collections::BTreeMap;
use std::ops::Range;

use outpost_common::event::{
    AgentStatus, Event, EventKind, FileState, FimDetection, FimEvent, LogRecord, MetricPoint,
};
use outpost_common::wire;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::codec::{
    attributes_column, changed_column, fim_change_from_name, fim_detection_from_name,
    from_json_column, metric_kind_from_name, parse_column, severity_from_level,
};
use super::commit::{cursor_of, id_of, summary_from_row};
use super::table;
use crate::store::{EventPage, EventQuery, HostSummary, PackedEvents, StoreError, StoredEvent};

/// One page of events matching `query`, merged across kinds in id order.
pub(super) fn events(conn: &Connection, query: &EventQuery) -> Result<EventPage, StoreError> {
    let context = || format!("reading events ({query:?})");
    let limit = query.limit.max(1);
    let agent_key = match &query.agent_id {
        None => None,
        Some(id) => {
            let key = conn
                .prepare_cached("SELECT agent_key FROM agents WHERE agent_id = ?1")
                .and_then(|mut s| s.query_row([id], |r| r.get::<_, i64>(0)).optional())
                .map_err(|e| StoreError::backend(context(), e))?;
            match key {
                Some(key) => Some(key),
                None => {
                    return Ok(EventPage {
                        events: Vec::new(),
                        next: None,
                    });
                }
            }
        }
    };
    let kinds = match query.kind {
        Some(kind) => vec![kind],
        None => EventKind::ALL.to_vec(),
    };
    let from = id_of(query.from);
    let until = query.until.map_or(i64::MAX, id_of);
    let (time_from, time_until) = match &query.time_ns {
        Some(range) => (Some(range.start), Some(range.end)),
        None => (None, None),
    };
    let mut found: Vec<Found> = Vec::new();
    for kind in kinds {
        let sql = select_sql(kind, agent_key.is_some() && query.time_ns.is_some());
        let rows = conn.prepare_cached(&sql).and_then(|mut s| {
            s.query_map(
                params![from, until, agent_key, time_from, time_until, limit as i64],
                |r| Ok((r.get::<_, i64>(0)?, stored_event(kind, r)?)),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        });
        found.extend(rows.map_err(|e| StoreError::backend(context(), e))?);
        if kind == EventKind::Log {
            let scan = BlockScan {
                ids: from..until,
                agent_key,
                time_ns: query.time_ns.clone(),
                source: None,
                limit,
            };
            found.extend(block_logs(conn, &scan).map_err(|e| StoreError::backend(context(), e))?);
        }
    }
    // Stable: rows sharing an id (stored before the shared sequence) stay in kind order.
    found.sort_by_key(|(id, _)| *id);
    let full = found.len() >= limit;
    found.truncate(limit);
    let next = match found.last() {
        Some((id, _)) if full => Some(cursor_of(id.saturating_add(1))),
        _ => None,
    };
    Ok(EventPage {
        events: found.into_iter().map(|(_, e)| e).collect(),
        next,
    })
}

/// A found event and its id, by which kinds merge.
pub(super) type Found = (i64, StoredEvent);

/// Which log records kept in blocks [`block_logs`] reads: those with an id in `ids`, of one
/// agent or all, of a time range or any, from one source or any, `limit` at most.
pub(super) struct BlockScan<'a> {
    pub ids: Range<i64>,
    pub agent_key: Option<i64>,
    pub time_ns: Option<Range<i64>>,
    pub source: Option<&'a str>,
    pub limit: usize,
}

/// The log records kept in blocks that `scan` picks, in id order.
///
/// A block's columns before its data say whether it may hold any (its agent, its records' time
/// range), so only the blocks that may are read and decompressed.
pub(super) fn block_logs(conn: &Connection, scan: &BlockScan<'_>) -> rusqlite::Result<Vec<Found>> {
    let mut found = Vec::new();
    if scan.limit == 0 || scan.ids.is_empty() {
        return Ok(found);
    }
    let (time_from, time_until) = match &scan.time_ns {
        Some(range) => (Some(range.start), Some(range.end)),
        None => (None, None),
    };
    let mut stmt = conn.prepare_cached(
        "SELECT b.id, a.agent_id, b.received_ns, b.codec, b.raw_bytes, b.data
         FROM log_blocks b JOIN agents a USING (agent_key)
         WHERE b.id >= coalesce((SELECT max(id) FROM log_blocks WHERE id <= ?1), ?1)
           AND b.id < ?2 AND (?3 IS NULL OR b.agent_key = ?3)
           AND (?4 IS NULL OR b.max_time_ns >= ?4) AND (?5 IS NULL OR b.min_time_ns < ?5)
         ORDER BY b.id",
    )?;
    let mut rows = stmt.query(params![
        scan.ids.start,
        scan.ids.end,
        scan.agent_key,
        time_from,
        time_until
    ])?;
    while let Some(r) = rows.next()? {
        let block: i64 = r.get(0)?;
        let agent_id: String = r.get(1)?;
        let received_ns: i64 = r.get(2)?;
        let events = unpack_block(block, r.get(3)?, r.get(4)?, r.get(5)?)?;
        for (id, event) in (block..).zip(events) {
            let Event::Log(record) = event else { continue };
            let wanted = scan.ids.contains(&id)
                && scan
                    .time_ns
                    .as_ref()
                    .is_none_or(|t| t.contains(&record.time_ns))
                && scan.source.is_none_or(|s| s == record.source);
            if !wanted {
                continue;
            }
            found.push((
                id,
                StoredEvent {
                    cursor: cursor_of(id),
                    agent_id: agent_id.clone(),
                    received_ns,
                    event: Event::Log(record),
                },
            ));
            if found.len() >= scan.limit {
                return Ok(found);
            }
        }
    }
    Ok(found)
}

/// The events of log block `block`, from its columns `codec`, `raw_bytes` and `data`.
fn unpack_block(
    block: i64,
    codec: i64,
    raw_bytes: i64,
    data: Vec<u8>,
) -> rusqlite::Result<Vec<Event>> {
    let codec = wire::Codec::from_code(codec)
        .ok_or_else(|| damaged_block(block, &format!("unknown codec {codec}")))?;
    let raw_bytes =
        u32::try_from(raw_bytes).map_err(|_| damaged_block(block, "a length out of range"))?;
    let packed = PackedEvents {
        codec,
        raw_bytes,
        data,
    };
    packed
        .unpack()
        .map_err(|e| damaged_block(block, &e.to_string()))
}

fn damaged_block(block: i64, why: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        5,
        rusqlite::types::Type::Blob,
        format!("log block {block} cannot be read: {why}").into(),
    )
}

/// The query of [`events`] for one kind: parameters `?1..?2` the id range, `?3` the agent key,
/// `?4..?5` the time range, `?6` the limit.
///
/// For one host over a time range (`host_and_time`), the planner may use an index by agent and
/// time where the table has one. Otherwise it walks the ids: `+` keeps an index on the agent out
/// of it, since the planner would sort every row of the agent to page through them in id order.
fn select_sql(kind: EventKind, host_and_time: bool) -> String {
    let conditions = if host_and_time {
        "e.agent_key = ?3 AND e.time_ns >= ?4 AND e.time_ns < ?5"
    } else {
        "(?3 IS NULL OR +e.agent_key = ?3)
           AND (?4 IS NULL OR e.time_ns >= ?4) AND (?5 IS NULL OR e.time_ns < ?5)"
    };
    format!(
        "SELECT e.id, a.agent_id, e.time_ns, e.received_ns, {columns}
         FROM {table} e JOIN agents a USING (agent_key)
         WHERE e.id >= ?1 AND e.id < ?2 AND {conditions}
         ORDER BY e.id LIMIT ?6",
        columns = columns(kind),
        table = table(kind),
    )
}

/// The columns after `id, agent_id, time_ns, received_ns` that [`stored_event`] reads.
pub(super) fn columns(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Metric => "e.name, e.unit, e.kind, e.value, e.attributes",
        EventKind::Log => "e.source, e.severity, e.body, e.attributes",
        EventKind::Fim => {
            "e.path, e.change, e.before, e.after, e.changed, e.moved_from, e.detected_by, e.seq, \
             e.chain"
        }
        EventKind::Status => "e.status",
    }
}

pub(super) fn stored_event(kind: EventKind, r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let time_ns: i64 = r.get(2)?;
    let event = match kind {
        EventKind::Metric => Event::Metric(MetricPoint {
            name: r.get(4)?,
            unit: r.get(5)?,
            time_ns,
            kind: parse_column(6, "metric kind", r.get(6)?, metric_kind_from_name)?,
            // NaN is stored as NULL.
            value: r.get::<_, Option<f64>>(7)?.unwrap_or(f64::NAN),
            attributes: attributes_column(r, 8)?,
        }),
        EventKind::Log => Event::Log(LogRecord {
            time_ns,
            source: r.get(4)?,
            severity: match r.get::<_, Option<i64>>(5)? {
                None => None,
                Some(level) => Some(parse_column(5, "severity", level.to_string(), |s| {
                    s.parse().ok().and_then(severity_from_level)
                })?),
            },
            body: r.get(6)?,
            attributes: attributes_column(r, 7)?,
        }),
        EventKind::Fim => Event::Fim(fim_event(r, time_ns, 4)?),
        EventKind::Status => {
            let status: Option<AgentStatus> = from_json_column(r, 4)?;
            Event::Status(status.ok_or(rusqlite::Error::InvalidColumnType(
                4,
                "status".to_owned(),
                rusqlite::types::Type::Null,
            ))?)
        }
    };
    Ok(StoredEvent {
        cursor: cursor_of(r.get(0)?),
        agent_id: r.get(1)?,
        received_ns: r.get(3)?,
        event,
    })
}

/// A file-integrity event from the nine columns from `first` on, as [`columns`] lists them.
///
/// Rows stored before schema 4 have NULL in the last five: read back with no attributes listed,
/// no move, realtime detection and seq 0 (outside any trail).
pub(super) fn fim_event(r: &Row<'_>, time_ns: i64, first: usize) -> rusqlite::Result<FimEvent> {
    let detected_by = match r.get::<_, Option<String>>(first + 6)? {
        None => FimDetection::Realtime,
        Some(name) => parse_column(first + 6, "detection", name, fim_detection_from_name)?,
    };
    Ok(FimEvent {
        time_ns,
        path: r.get(first)?,
        change: parse_column(
            first + 1,
            "file change",
            r.get(first + 1)?,
            fim_change_from_name,
        )?,
        before: from_json_column::<FileState>(r, first + 2)?.map(Box::new),
        after: from_json_column::<FileState>(r, first + 3)?.map(Box::new),
        changed: changed_column(r, first + 4)?,
        moved_from: r.get(first + 5)?,
        detected_by,
        seq: r
            .get::<_, Option<i64>>(first + 7)?
            .map_or(0, i64::cast_unsigned),
        chain: r.get::<_, Option<String>>(first + 8)?.unwrap_or_default(),
    })
}

/// Every agent's non-empty host summary.
pub(super) fn host_summaries(
    conn: &Connection,
) -> Result<BTreeMap<String, HostSummary>, StoreError> {
    let result = (|| {
        conn.prepare_cached(
            "SELECT agent_id, cpu_busy, cpu_busy_ns, memory_used, memory_used_ns,
                fullest_fs_mountpoint, fullest_fs, fullest_fs_ns
             FROM agents",
        )?
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, summary_from_row(r, 1)?))
        })?
        .filter(|row| row.as_ref().map_or(true, |(_, s)| !s.is_empty()))
        .collect::<rusqlite::Result<BTreeMap<_, _>>>()
    })();
    result.map_err(|e| StoreError::backend("reading the hosts' summaries", e))
}

/// Stored events of a kind, of one agent or all.
pub(super) fn count_events(
    conn: &Connection,
    kind: EventKind,
    agent_id: Option<&str>,
) -> Result<u64, StoreError> {
    let table = table(kind);
    // Log records kept in blocks are counted there.
    let in_blocks = if kind == EventKind::Log {
        "(SELECT coalesce(sum(logs), 0) FROM log_blocks WHERE ?1 IS NULL
            OR agent_key = (SELECT agent_key FROM agents WHERE agent_id = ?1))"
    } else {
        "0"
    };
    let count: rusqlite::Result<i64> = conn.query_row(
        &format!(
            "SELECT (SELECT count(*) FROM {table} WHERE ?1 IS NULL
                OR agent_key = (SELECT agent_key FROM agents WHERE agent_id = ?1)) + {in_blocks}"
        ),
        [agent_id],
        |r| r.get(0),
    );
    count
        .map(i64::cast_unsigned)
        .map_err(|e| StoreError::backend(format!("counting {table}"), e))
}

#[cfg(test)]
mod tests {
    use outpost_common::event::MetricKind;

    use super::*;
    use crate::store::sqlite::test_support::*;
    use crate::store::testutil::*;
    use crate::store::{BatchCommit, EventStore};

    /// Every page of `query`, following `next`.
    fn all_pages(store: &impl EventStore, mut query: EventQuery) -> Vec<Vec<StoredEvent>> {
        let mut pages = Vec::new();
        loop {
            let page = store.events(&query).unwrap();
            pages.push(page.events);
            match page.next {
                Some(next) => query.from = next,
                None => return pages,
            }
        }
    }

    #[test]
    fn events_read_back_as_they_were_sent_in_commit_order_across_kinds() {
        let (_dir, store) = open();
        let odd_metric = Event::Metric(MetricPoint {
            name: "x".into(),
            unit: String::new(),
            attributes: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
            time_ns: 5,
            value: f64::NAN,
            kind: MetricKind::Counter,
        });
        let quiet_log = Event::Log(LogRecord {
            time_ns: 6,
            source: "s".into(),
            severity: None,
            body: "b".into(),
            attributes: vec![],
        });
        let first = vec![log(T0, 3), metric(T0, 1.5), fim(T0), status_event(T0)];
        let second = vec![odd_metric, quiet_log, log(T0 + 1, 4)];
        let answers = store
            .commit_batches(&[
                batch("a", 1, 1, first.clone()),
                batch("a", 1, 1, first.clone()),
                batch("b", 1, 1, second.clone()),
            ])
            .unwrap();
        let BatchCommit::Stored { start, .. } = answers[0] else {
            panic!("{answers:?}")
        };
        assert_eq!(answers[1], BatchCommit::Duplicate);
        assert_eq!(answers[2], BatchCommit::stored(start.advance(4)));
        assert_eq!(store.end().unwrap(), start.advance(7));

        let page = store.events(&EventQuery::default()).unwrap();
        assert_eq!(page.next, None);
        let got: Vec<_> = page
            .events
            .iter()
            .map(|e| (e.cursor, e.agent_id.as_str(), e.received_ns))
            .collect();
        let expected: Vec<_> = (0..7)
            .map(|i| (start.advance(i), if i < 4 { "a" } else { "b" }, T0))
            .collect();
        assert_eq!(got, expected);
        let events: Vec<_> = page.events.into_iter().map(|e| e.event).collect();
        assert_eq!(&events[..4], &first[..]);
        // NaN never equals itself; compare the rest field by field.
        let Event::Metric(m) = &events[4] else {
            panic!()
        };
        assert!(m.value.is_nan());
        assert_eq!(
            m.attributes,
            vec![("k".into(), "1".into()), ("k".into(), "2".into())]
        );
        assert_eq!((m.kind, m.time_ns), (MetricKind::Counter, 5));
        assert_eq!(&events[5..], &second[1..]);
    }

    #[test]
    fn queries_filter_by_kind_agent_time_and_cursor_range_and_page() {
        let (_dir, store) = open();
        for seq in 0..10u64 {
            let t = T0 + seq as i64;
            let agent = if seq % 2 == 0 { "a" } else { "b" };
            commit(
                &store,
                &[batch(agent, 1, seq, vec![log(t, 1), metric(t, seq as f64)])],
            );
        }
        let logs_of_a = EventQuery {
            kind: Some(EventKind::Log),
            agent_id: Some("a".into()),
            limit: 2,
            ..EventQuery::default()
        };
        let pages = all_pages(&store, logs_of_a.clone());
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let times: Vec<_> = pages.concat().iter().map(|e| e.event.time_ns()).collect();
        assert_eq!(times, [T0, T0 + 2, T0 + 4, T0 + 6, T0 + 8]);
        assert!(
            pages
                .concat()
                .iter()
                .all(|e| e.event.kind() == EventKind::Log)
        );

        let in_time = EventQuery {
            time_ns: Some(T0 + 3..T0 + 7),
            ..logs_of_a.clone()
        };
        let times: Vec<_> = all_pages(&store, in_time)
            .concat()
            .iter()
            .map(|e| e.event.time_ns())
            .collect();
        assert_eq!(times, [T0 + 4, T0 + 6]);

        // Fleet-wide, every kind, between two cursors.
        let all = store.events(&EventQuery::default()).unwrap().events;
        assert_eq!(all.len(), 20);
        let window = EventQuery {
            from: all[3].cursor,
            until: Some(all[7].cursor),
            limit: 3,
            ..EventQuery::default()
        };
        let got = all_pages(&store, window).concat();
        assert_eq!(got, all[3..7].to_vec());

        let nobody = EventQuery {
            agent_id: Some("nobody".into()),
            ..EventQuery::default()
        };
        assert_eq!(
            store.events(&nobody).unwrap(),
            EventPage {
                events: vec![],
                next: None
            }
        );
        let after_end = EventQuery {
            from: store.end().unwrap(),
            ..EventQuery::default()
        };
        assert!(store.events(&after_end).unwrap().events.is_empty());
    }

    #[test]
    fn ids_continue_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = crate::store::SqliteStore::open(&path).unwrap();
        commit(&store, &[logs("a", 1, 1, 3)]);
        let end = store.end().unwrap();
        drop(store);
        let store = crate::store::SqliteStore::open(&path).unwrap();
        assert_eq!(store.end().unwrap(), end);
        let answers = store
            .commit_batches(&[batch("a", 1, 2, vec![metric(T0, 1.0)])])
            .unwrap();
        assert_eq!(answers, vec![BatchCommit::stored(end)]);
    }

    #[test]
    fn one_hosts_logs_over_a_time_range_are_found_by_the_index_and_the_rest_by_id() {
        let (_dir, store) = open();
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        let plan = |host_and_time: bool| -> String {
            let sql = format!(
                "EXPLAIN QUERY PLAN {}",
                select_sql(EventKind::Log, host_and_time)
            );
            let mut stmt = conn.prepare(&sql).unwrap();
            let rows = stmt
                .query_map(params![0, 10, 1, 0, 10, 5], |r| r.get::<_, String>(3))
                .unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        let indexed = plan(true);
        assert!(indexed.contains("logs_agent_time"), "{indexed}");
        let by_id = plan(false);
        assert!(!by_id.contains("logs_agent_time"), "{by_id}");
        assert!(by_id.contains("INTEGER PRIMARY KEY"), "{by_id}");

        // Without the index (`[store] log_index = false`) the same search walks the ids, and
        // finds the same records.
        let t = T0;
        commit(
            &store,
            &[
                batch("a", 1, 1, vec![log(t, 10), log(t + 5, 10)]),
                batch("b", 1, 1, vec![log(t + 1, 10)]),
            ],
        );
        let one_host = EventQuery {
            kind: Some(EventKind::Log),
            agent_id: Some("a".to_owned()),
            time_ns: Some(t + 1..t + 10),
            ..EventQuery::default()
        };
        let with_index = store.events(&one_host).unwrap();
        assert_eq!(with_index.events.len(), 1);
        store.set_log_index(false).unwrap();
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        let mut stmt = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                select_sql(EventKind::Log, true)
            ))
            .unwrap();
        let without: Vec<String> = stmt
            .query_map(params![0, 10, 1, 0, 10, 5], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            !without.join("; ").contains("logs_agent_time"),
            "{without:?}"
        );
        assert_eq!(store.events(&one_host).unwrap(), with_index);
        // Turning it back on makes it again; asking twice changes nothing.
        store.set_log_index(true).unwrap();
        store.set_log_index(true).unwrap();
        assert!(plan(true).contains("logs_agent_time"));
    }

    #[test]
    fn a_stored_value_this_build_does_not_know_is_an_error_naming_it() {
        let (_dir, store) = open();
        commit(&store, &[batch("a", 1, 1, vec![metric(T0, 1.0)])]);
        rusqlite::Connection::open(store.path())
            .unwrap()
            .execute("UPDATE metric_series SET kind = 'histogram'", [])
            .unwrap();
        let err = store.events(&EventQuery::default()).unwrap_err();
        assert!(
            err.to_string().contains("unknown metric kind `histogram`"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod block_tests {
    use outpost_common::event::{LogRecord, Severity};
    use rusqlite::Connection;

    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::sqlite::test_support::*;
    use crate::store::testutil::*;
    use crate::store::{EventStore, Retention};

    fn line(time_ns: i64, i: usize) -> Event {
        Event::Log(LogRecord {
            time_ns,
            source: "/var/log/app.log".to_owned(),
            severity: Some(Severity::Warning),
            body: format!("GET /api/v1/items/{i:06} status=503 upstream timed out"),
            attributes: vec![("line".to_owned(), i.to_string())],
        })
    }

    /// Logs with a metric and a status between them, as a batch from an agent holds them.
    fn mixed(first: usize, n: usize) -> Vec<Event> {
        let mut events: Vec<Event> = (first..first + n).map(|i| line(T0 + i as i64, i)).collect();
        events.insert(2, metric(T0, 1.0));
        events.insert(5, status_event(T0));
        events
    }

    fn every(store: &SqliteStore, query: EventQuery) -> Vec<Event> {
        let mut query = query;
        let mut events = Vec::new();
        loop {
            let page = store.events(&query).unwrap();
            events.extend(page.events.into_iter().map(|e| e.event));
            match page.next {
                Some(next) => query.from = next,
                None => return events,
            }
        }
    }

    fn column<T: rusqlite::types::FromSql>(store: &SqliteStore, sql: &str) -> Vec<T> {
        let conn = Connection::open(store.path()).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn log_records_of_a_compressed_batch_are_kept_in_one_block_and_read_back_whole() {
        let (_dir, store) = open();
        let packed = batch("a", 1, 1, mixed(0, 40));
        assert!(packed.packed.is_some(), "the lines compress");
        let plain = unpacked_batch("a", 1, 2, mixed(40, 10));
        commit(&store, &[packed.clone(), plain.clone()]);

        // One block, for the compressed batch's 40 records and their time range; only the
        // other batch's records have rows. The metric and status of both have theirs.
        let blocks: Vec<(i64, i64, i64, i64)> = {
            let conn = Connection::open(store.path()).unwrap();
            let mut stmt = conn
                .prepare("SELECT events, logs, min_time_ns, max_time_ns FROM log_blocks")
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(blocks, [(42, 40, T0, T0 + 39)]);
        let bodies: Vec<String> = column(&store, "SELECT body FROM logs ORDER BY id");
        assert_eq!(bodies.len(), 10);
        assert!(bodies.iter().all(|b| b.starts_with("GET ")));
        assert_eq!(
            column::<i64>(&store, "SELECT count(*) FROM agent_status"),
            [2]
        );
        assert_eq!(store.count_events(EventKind::Log, Some("a")).unwrap(), 50);
        assert_eq!(store.count_events(EventKind::Log, Some("b")).unwrap(), 0);

        // Read back whole, in pages that end inside the block, by kind or not, by agent and
        // time (the index's plan) or not.
        let logs_of = |events: Vec<Event>| -> Vec<Event> {
            events
                .into_iter()
                .filter(|e| matches!(e, Event::Log(_)))
                .collect()
        };
        let expected = logs_of([packed.events, plain.events].concat());
        for limit in [1, 3, 7, 1000] {
            let query = EventQuery {
                kind: Some(EventKind::Log),
                limit,
                ..EventQuery::default()
            };
            assert_eq!(every(&store, query), expected, "pages of {limit}");
            let all = EventQuery {
                limit,
                ..EventQuery::default()
            };
            assert_eq!(
                logs_of(every(&store, all)),
                expected,
                "every kind, pages of {limit}"
            );
        }
        let window = EventQuery {
            kind: Some(EventKind::Log),
            agent_id: Some("a".to_owned()),
            time_ns: Some(T0 + 10..T0 + 45),
            limit: 4,
            ..EventQuery::default()
        };
        assert_eq!(every(&store, window), expected[10..45].to_vec());
    }

    #[test]
    fn a_batch_of_mostly_other_events_keeps_its_log_bodies_in_their_rows() {
        let (_dir, store) = open();
        let mut events: Vec<Event> = (0..9).map(|i| metric(T0 + i, 1.0)).collect();
        events.push(line(T0, 1));
        let few = batch("a", 1, 1, events);
        assert!(few.packed.is_some());
        commit(&store, &[few]);
        assert_eq!(
            column::<i64>(&store, "SELECT count(*) FROM log_blocks"),
            [0]
        );
        let bodies: Vec<String> = column(&store, "SELECT body FROM logs");
        assert_eq!(bodies.len(), 1);
        assert!(bodies[0].starts_with("GET "), "{bodies:?}");
    }

    #[test]
    fn a_damaged_block_is_an_error_naming_it_never_a_wrong_body() {
        let (_dir, store) = open();
        commit(&store, &[batch("a", 1, 1, mixed(0, 30))]);
        let conn = Connection::open(store.path()).unwrap();
        let id: i64 = conn
            .query_row("SELECT id FROM log_blocks", [], |r| r.get(0))
            .unwrap();
        conn.execute(
            "UPDATE log_blocks SET data = substr(data, 1, length(data) / 2)",
            [],
        )
        .unwrap();
        let err = store
            .events(&EventQuery {
                kind: Some(EventKind::Log),
                ..EventQuery::default()
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("log block {id} cannot be read")),
            "{err}"
        );
    }

    #[test]
    fn a_loss_check_reads_one_sources_records_from_rows_and_blocks_alike() {
        let (_dir, store) = open();
        let other = |mut e: Event| {
            if let Event::Log(l) = &mut e {
                l.source = "/var/log/other.log".to_owned();
            }
            e
        };
        let mut events = mixed(0, 20);
        events[7] = other(events[7].clone());
        let packed = batch("a", 1, 1, events.clone());
        let plain = unpacked_batch("a", 1, 2, mixed(20, 5));
        let elsewhere = batch("b", 1, 1, mixed(0, 20));
        commit(&store, &[packed, plain.clone(), elsewhere]);
        let reader = crate::store::sqlite::SqliteReader::open(store.path()).unwrap();
        let read = |source: &str| -> Vec<Event> {
            reader
                .logs("a", source)
                .unwrap()
                .into_iter()
                .map(|e| e.event)
                .collect()
        };
        let of = |events: Vec<Event>, source: &str| -> Vec<Event> {
            events
                .into_iter()
                .filter(|e| matches!(e, Event::Log(l) if l.source == source))
                .collect()
        };
        let all = [events, plain.events].concat();
        assert_eq!(
            read("/var/log/app.log"),
            of(all.clone(), "/var/log/app.log")
        );
        assert_eq!(read("/var/log/app.log").len(), 24);
        assert_eq!(read("/var/log/other.log"), of(all, "/var/log/other.log"));
        assert!(
            reader
                .logs("nobody", "/var/log/app.log")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_block_goes_once_its_batch_was_received_before_the_cut_off() {
        let (_dir, store) = open();
        let day = secs(86_400);
        let mut old = batch("a", 1, 1, mixed(0, 30));
        old.received_ns = T0;
        let mut new = batch("a", 1, 2, mixed(30, 30));
        new.received_ns = T0 + 20 * day;
        assert!(old.packed.is_some() && new.packed.is_some());
        commit(&store, &[old, new.clone()]);
        assert_eq!(
            column::<i64>(&store, "SELECT count(*) FROM log_blocks"),
            [2]
        );
        let report = store
            .enforce_retention(&Retention::default(), T0 + 20 * day + secs(1))
            .unwrap();
        assert_eq!(report.log, 30);
        assert_eq!(
            column::<i64>(&store, "SELECT count(*) FROM log_blocks"),
            [1]
        );
        let left = every(
            &store,
            EventQuery {
                kind: Some(EventKind::Log),
                ..EventQuery::default()
            },
        );
        let expected: Vec<Event> = new
            .events
            .into_iter()
            .filter(|e| matches!(e, Event::Log(_)))
            .collect();
        assert_eq!(left, expected);
    }
}
