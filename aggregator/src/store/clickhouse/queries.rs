//! The reads: events by kind, agent, time and cursor; each host's summary; metric queries.
//!
//! Every read of an event table is `FINAL`, so an event written twice (a failed commit retried,
//! two aggregators storing one batch) is read once, as the copy with the highest cursor. Filters
//! on what all copies of an event share (agent, name, time) go inside the `FINAL`, where they
//! prune partitions and use the sort key; a filter that may tell copies apart (`cursor <
//! until`) goes outside, after the copies collapsed. `cursor >= from` may go inside: it drops
//! only copies below a copy that passes, or events whose every copy is below.

use std::collections::{BTreeMap, HashMap};

use clickhouse::Row;
use outpost_common::event::EventKind;
use serde::Deserialize;

use super::commit::{CPU, FILESYSTEM, MEMORY};
use super::rows::{self, ReadRow};
use super::{ClickHouseStore, Failure};
use crate::store::series::{
    self, MAX_SERIES, MetricAnswer, MetricQuery, MetricQueryError, QueryError, SeriesInfo,
};
use crate::store::{Cursor, EventPage, EventQuery, HostSummary, StoreError};

impl ClickHouseStore {
    /// One page of events matching `query`, stopping before `horizon` (see
    /// [`ClickHouseStore::horizon`]).
    ///
    /// Two steps, so that a page reads the rows it shows rather than a whole table under
    /// `FINAL`: the window, the first `limit` rows from `from` on (copies of one event counted
    /// each), read from the cursor column alone; then, under `FINAL`, the batches with a row in
    /// the window (in the tables of the kinds found there), of which the events whose surviving
    /// copy lies in the window make the page.
    /// Every event seen in the window is its own row there, so none is missed; a page holds
    /// fewer than `limit` events only when the window held stale copies, and `next` then still
    /// follows the window.
    pub(super) async fn read_events(
        &self,
        query: &EventQuery,
        horizon: Cursor,
    ) -> Result<EventPage, Failure> {
        let empty = EventPage {
            events: Vec::new(),
            next: None,
        };
        let limit = query.limit.max(1);
        let until = query.until.map_or(horizon, |u| u.min(horizon));
        if until <= query.from {
            return Ok(empty);
        }
        let kinds = match query.kind {
            Some(kind) => vec![kind],
            None => EventKind::ALL.to_vec(),
        };
        let mut filters = String::new();
        if query.agent_id.is_some() {
            filters.push_str(" AND agent_id = ?");
        }
        if query.time_ns.is_some() {
            filters.push_str(" AND time_ns >= ? AND time_ns < ?");
        }
        let bind_filters = |mut q: clickhouse::query::Query| {
            if let Some(agent_id) = &query.agent_id {
                q = q.bind(agent_id.as_str());
            }
            if let Some(range) = &query.time_ns {
                q = q.bind(range.start).bind(range.end);
            }
            q
        };

        // The window, and the kinds with rows in it.
        let arms: Vec<String> = kinds
            .iter()
            .map(|&kind| {
                format!(
                    "SELECT cursor, toUInt8({code}) AS event_kind FROM (
                         SELECT cursor FROM {table}
                         WHERE cursor >= ? AND cursor < ?{filters} ORDER BY cursor LIMIT ?)",
                    code = rows::kind_code(kind),
                    table = rows::table(kind),
                )
            })
            .collect();
        let sql = format!(
            "SELECT cursor, event_kind FROM ({}) ORDER BY cursor LIMIT ?",
            arms.join(" UNION ALL ")
        );
        let mut q = self.client().query(&sql);
        for _ in &kinds {
            q = q.bind(query.from.position()).bind(until.position());
            q = bind_filters(q).bind(limit as u64);
        }
        let window: Vec<(u64, u8)> = self.timed(q.bind(limit as u64).fetch_all()).await?;
        let (window_end, more) = match window.get(limit - 1) {
            Some(&(last, _)) => (Cursor::from_position(last).advance(1), true),
            None if window.is_empty() => return Ok(empty),
            None => (until, false),
        };
        let kinds: Vec<EventKind> = kinds
            .into_iter()
            .filter(|&kind| window.iter().any(|&(_, k)| k == rows::kind_code(kind)))
            .collect();

        // The events visible in it.
        let arms: Vec<String> = kinds
            .iter()
            .map(|&kind| {
                format!(
                    "SELECT * FROM (
                         SELECT cursor, agent_id, received_ns, time_ns, {columns}
                         FROM (SELECT * FROM {table} FINAL
                               WHERE ({key}) IN (SELECT {key} FROM {table}
                                                 WHERE cursor >= ? AND cursor < ?{filters})
                                 {filters})
                         WHERE cursor >= ? AND cursor < ?)",
                    columns = rows::select_columns(kind),
                    table = rows::table(kind),
                    key = rows::batch_key(kind),
                )
            })
            .collect();
        let sql = format!(
            "SELECT * FROM ({}) ORDER BY cursor",
            arms.join(" UNION ALL ")
        );
        let mut q = self.client().query(&sql);
        for _ in &kinds {
            q = q.bind(query.from.position()).bind(window_end.position());
            q = bind_filters(bind_filters(q));
            q = q.bind(query.from.position()).bind(window_end.position());
        }
        let found: Vec<ReadRow> = self.timed(q.fetch_all()).await?;
        let events = found
            .into_iter()
            .map(rows::stored_event)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EventPage {
            events,
            next: more.then_some(window_end),
        })
    }

    /// Every agent's host summary, folded from its rows the way
    /// [`HostSummary::observe`] folds points: the latest in agent time wins, whichever
    /// aggregator wrote it and whether or not the server merged the rows yet.
    pub(super) async fn read_host_summaries(
        &self,
    ) -> Result<BTreeMap<String, HostSummary>, Failure> {
        let rows: Vec<(String, i8, String, f64, i64)> = self
            .timed(
                self.client()
                    .query(
                        "SELECT agent_id, toInt8(gauge), mountpoint, value, time_ns \
                         FROM host_summaries",
                    )
                    .fetch_all(),
            )
            .await?;
        let mut summaries: BTreeMap<String, HostSummary> = BTreeMap::new();
        for (agent_id, gauge, mountpoint, value, time_ns) in rows {
            let one = match gauge {
                CPU => HostSummary {
                    cpu_busy: Some((value, time_ns)),
                    ..HostSummary::default()
                },
                MEMORY => HostSummary {
                    memory_used: Some((value, time_ns)),
                    ..HostSummary::default()
                },
                FILESYSTEM => HostSummary {
                    fullest_fs: Some((mountpoint, value, time_ns)),
                    ..HostSummary::default()
                },
                _ => continue,
            };
            summaries.entry(agent_id).or_default().merge(&one);
        }
        Ok(summaries)
    }

    /// Answers a metric query as the SQLite store does: the same checks, the same series
    /// selection, [`series::bucket`] and [`series::combine`] over the points read.
    pub(super) async fn query_metrics(
        &self,
        query: &MetricQuery,
    ) -> Result<MetricAnswer, MetricQueryError> {
        query.check()?;
        let failed = |e: Failure| {
            MetricQueryError::Store(StoreError::backend(
                format!(
                    "answering a query of `{}` in the {}",
                    query.name,
                    self.place()
                ),
                e,
            ))
        };
        let selected = self.select_series(query).await.map_err(failed)?;
        let selected = matching(query, selected)?;
        for info in &selected {
            query.check_kind(info.kind)?;
        }
        let points = if selected.is_empty() {
            Vec::new()
        } else {
            self.series_points(query, &selected).await.map_err(failed)?
        };
        let answered: Vec<(SeriesInfo, Vec<(i64, f64)>)> = selected
            .into_iter()
            .zip(points)
            .map(|(info, points)| (info, series::bucket(&points, query)))
            .collect();
        Ok(series::answer(query, answered))
    }

    /// Every series of the query's metric (and agent) with a point stored, by agent and then
    /// in the order they first came.
    async fn select_series(&self, query: &MetricQuery) -> Result<Vec<SeriesInfo>, Failure> {
        let agent = if query.agent_id.is_some() {
            " AND agent_id = ?"
        } else {
            ""
        };
        let sql = format!(
            "SELECT agent_id, unit, toInt64(kind) AS kind_code, attr_keys, attr_values
             FROM metrics WHERE name = ?{agent}
             GROUP BY agent_id, unit, kind, attr_keys, attr_values
             ORDER BY agent_id, min(cursor)"
        );
        let mut q = self.client().query(&sql).bind(query.name.as_str());
        if let Some(agent_id) = &query.agent_id {
            q = q.bind(agent_id.as_str());
        }
        let found: Vec<SeriesRow> = self.timed(q.fetch_all()).await?;
        found
            .into_iter()
            .map(|row| {
                series_info(
                    &query.name,
                    row.agent_id,
                    row.unit,
                    row.kind_code,
                    row.attr_keys,
                    row.attr_values,
                )
            })
            .collect()
    }

    /// The points of each selected series in the query's read range, by time, in the order of
    /// `selected`.
    async fn series_points(
        &self,
        query: &MetricQuery,
        selected: &[SeriesInfo],
    ) -> Result<Vec<Vec<(i64, f64)>>, Failure> {
        let agent = if query.agent_id.is_some() {
            " AND agent_id = ?"
        } else {
            ""
        };
        let sql = format!(
            "SELECT agent_id, unit, toInt64(kind) AS kind_code, attr_keys, attr_values, time_ns,
                 value
             FROM (SELECT * FROM metrics FINAL
                   WHERE name = ?{agent} AND time_ns >= ? AND time_ns < ?)
             ORDER BY time_ns, cursor"
        );
        let range = query.read_range();
        let mut q = self.client().query(&sql).bind(query.name.as_str());
        if let Some(agent_id) = &query.agent_id {
            q = q.bind(agent_id.as_str());
        }
        q = q.bind(range.start).bind(range.end);
        let found: Vec<PointRow> = self.timed(q.fetch_all()).await?;
        let index: HashMap<SeriesKey<'_>, usize> = selected
            .iter()
            .enumerate()
            .map(|(i, info)| (SeriesKey::of(info), i))
            .collect();
        let mut points = vec![Vec::new(); selected.len()];
        for row in found {
            let info = series_info(
                &query.name,
                row.agent_id,
                row.unit,
                row.kind_code,
                row.attr_keys,
                row.attr_values,
            )?;
            if let Some(&i) = index.get(&SeriesKey::of(&info)) {
                points[i].push((row.time_ns, row.value));
            }
        }
        Ok(points)
    }
}

/// The series that pass the query's matchers; too many is the query's fault.
fn matching(
    query: &MetricQuery,
    candidates: Vec<SeriesInfo>,
) -> Result<Vec<SeriesInfo>, MetricQueryError> {
    let mut selected = Vec::new();
    for info in candidates {
        if !query.matchers.iter().all(|m| m.matches(&info.attributes)) {
            continue;
        }
        if selected.len() == MAX_SERIES {
            return Err(QueryError::new(
                "match",
                format!(
                    "more than {MAX_SERIES} series of `{}` match; name an agent or add matchers",
                    query.name
                ),
            )
            .into());
        }
        selected.push(info);
    }
    Ok(selected)
}

/// A series' identity, borrowed: what tells two series of one metric apart.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SeriesKey<'a> {
    agent_id: &'a str,
    unit: &'a str,
    kind: i8,
    attributes: &'a [(String, String)],
}

impl<'a> SeriesKey<'a> {
    fn of(info: &'a SeriesInfo) -> SeriesKey<'a> {
        SeriesKey {
            agent_id: &info.agent_id,
            unit: &info.unit,
            kind: rows::metric_kind_code(info.kind),
            attributes: &info.attributes,
        }
    }
}

#[derive(Debug, Row, Deserialize)]
struct SeriesRow {
    agent_id: String,
    unit: String,
    kind_code: i64,
    attr_keys: Vec<String>,
    attr_values: Vec<String>,
}

#[derive(Debug, Row, Deserialize)]
struct PointRow {
    agent_id: String,
    unit: String,
    kind_code: i64,
    attr_keys: Vec<String>,
    attr_values: Vec<String>,
    time_ns: i64,
    value: f64,
}

fn series_info(
    name: &str,
    agent_id: String,
    unit: String,
    kind_code: i64,
    keys: Vec<String>,
    values: Vec<String>,
) -> Result<SeriesInfo, Failure> {
    let bad = |what: String| Failure::Row(rows::BadRow::series(name, &agent_id, what));
    let kind = rows::metric_kind(kind_code)
        .ok_or_else(|| bad(format!("unknown metric kind {kind_code}")))?;
    let attributes = rows::pairs(keys, values).map_err(bad)?;
    Ok(SeriesInfo {
        agent_id,
        name: name.to_owned(),
        unit,
        kind,
        attributes,
    })
}

/// The highest cursor `node` stored (0 when none): in the event tables, or as a trail's version.
pub(super) async fn last_cursor(
    client: &clickhouse::Client,
    node: u8,
) -> Result<Cursor, clickhouse::error::Error> {
    let of_node = format!("bitAnd(bitShiftRight(cursor, 16), 63) = {node}");
    let mut arms: Vec<String> = EventKind::ALL
        .iter()
        .map(|&kind| {
            format!(
                "SELECT max(cursor) AS c FROM {} WHERE {of_node}",
                rows::table(kind)
            )
        })
        .collect();
    arms.push(format!(
        "SELECT max(version) AS c FROM fim_trails WHERE {}",
        of_node.replace("cursor", "version")
    ));
    let sql = format!(
        "SELECT toUInt64(max(c)) FROM ({})",
        arms.join(" UNION ALL ")
    );
    let last: u64 = client.query(&sql).fetch_one().await?;
    Ok(Cursor::from_position(last))
}
