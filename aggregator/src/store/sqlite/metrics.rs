//! Metrics as series and points: compaction of the head into chunks, their expiry, and the
//! metric queries.
//!
//! A commit writes each point as a row of `metric_points` (the head), under its series in
//! `metric_series`. Rows are what a commit can write fast, but each costs 20 to 30 bytes and an
//! index entry; so once the span of receive time set by [`Retention::metric_chunk`] has passed,
//! compaction (run with retention) packs each series' points of that span into one
//! `metric_chunks` row ([`super::chunk`]), deleting the rows in the same transaction: a reader
//! sees every point exactly once, in the head or in a chunk. Points arriving late simply make a
//! chunk of their own at the next compaction; queries merge chunks and head by time.
//!
//! Points in chunks keep their event ids but are no longer read by cursor
//! ([`crate::store::EventStore::events`] reads metrics from the head): queries reach them by
//! series and time.

use rusqlite::{Connection, params};

use super::chunk::{self, Points};
use super::codec::{attributes_column, metric_kind_from_name, parse_column};
use super::retention::last_id_received_before;
use super::{SqliteStore, lock};
use crate::store::series::{
    self, MAX_SERIES, MetricAnswer, MetricQuery, MetricQueryError, QueryError, SeriesInfo,
    SeriesPoints,
};
use crate::store::{RetentionReport, StoreError};

/// Series one compaction transaction packs (each with at most a span of points), so a waiting
/// commit is held up by milliseconds only.
const COMPACT_SERIES_PER_TX: i64 = 256;
/// Chunks one expiry transaction deletes at most.
const EXPIRE_CHUNKS_PER_TX: i64 = 500;
/// The head's rows are indexed by the minute they were received in.
pub(super) const BUCKET_NS: i64 = 60_000_000_000;

/// The start of the minute `received_ns` falls in: the head row's `bucket`.
pub(super) fn bucket_of(received_ns: i64) -> i64 {
    received_ns.saturating_sub(received_ns.rem_euclid(BUCKET_NS))
}

/// The distinct minutes of the head, ascending, up to `upto` (inclusive): one index seek each.
fn head_buckets(conn: &Connection, upto: i64) -> rusqlite::Result<Vec<i64>> {
    conn.prepare_cached(
        "WITH RECURSIVE b(x) AS (
             SELECT min(bucket) FROM metric_points
             UNION ALL
             SELECT (SELECT min(bucket) FROM metric_points WHERE bucket > b.x)
             FROM b WHERE b.x IS NOT NULL AND b.x < ?1
         )
         SELECT x FROM b WHERE x IS NOT NULL AND x <= ?1",
    )?
    .query_map([upto], |r| r.get(0))?
    .collect()
}

impl SqliteStore {
    /// Packs every head point received before `before_ns` into chunks, a group of series per
    /// transaction.
    pub(super) fn compact_metrics(
        &self,
        before_ns: i64,
        span_ns: i64,
        report: &mut RetentionReport,
    ) -> Result<(), StoreError> {
        let context = || format!("packing metric points received before {before_ns}");
        let cut = {
            let state = self.lock_for_retention();
            last_id_received_before(&state.conn, "metric_points", before_ns)
                .map_err(|e| StoreError::backend(context(), e))?
        };
        let Some(cut) = cut else { return Ok(()) };
        // The minutes holding rows at or below the cut, grouped by span (a minute at least), so
        // a series' points of one span make one chunk.
        let buckets = {
            let state = self.lock_for_retention();
            head_buckets(&state.conn, bucket_of(before_ns))
                .map_err(|e| StoreError::backend(context(), e))?
        };
        let group_ns = span_ns.max(BUCKET_NS);
        let mut groups: Vec<Vec<i64>> = Vec::new();
        for b in buckets {
            let same = groups.last().is_some_and(|g| {
                g[0].saturating_sub(g[0].rem_euclid(group_ns))
                    == b.saturating_sub(b.rem_euclid(group_ns))
            });
            match groups.last_mut() {
                Some(g) if same => g.push(b),
                _ => groups.push(vec![b]),
            }
        }
        for group in groups {
            let mut after_series = i64::MIN;
            loop {
                let state = self.lock_for_retention();
                let step = compact_some(&state.conn, cut, span_ns, &group, after_series)
                    .map_err(|e| StoreError::backend(context(), e))?;
                drop(state);
                let Some((last_series, points, chunks)) = step else {
                    break;
                };
                after_series = last_series;
                if chunks > 0 {
                    report.chunks += 1;
                    report.metric_points_packed += points;
                    report.metric_chunks_written += chunks;
                }
            }
        }
        Ok(())
    }

    /// Deletes the chunks whose latest point was received before `cutoff_ns`, and the series
    /// left with no point at all (so attributes that churn, a process id say, do not grow the
    /// series table for ever).
    pub(super) fn expire_metric_chunks(
        &self,
        cutoff_ns: i64,
        report: &mut RetentionReport,
    ) -> Result<(), StoreError> {
        let context = || format!("expiring metric chunks received before {cutoff_ns}");
        loop {
            let mut state = self.lock_for_retention();
            let step = expire_some(&state.conn, cutoff_ns)
                .map_err(|e| StoreError::backend(context(), e))?;
            let Some((points, pruned)) = step else {
                return Ok(());
            };
            // The writer's cache must not hand out an id whose row is gone.
            if !pruned.is_empty() {
                state.series.retain(|_, id| !pruned.contains(id));
            }
            drop(state);
            report.chunks += 1;
            report.metric += points;
            report.metric_series_pruned += pruned.len() as u64;
        }
    }

    /// Answers a metric query ([`crate::store::EventStore::metric_query`]).
    pub(super) fn query_metrics(
        &self,
        query: &MetricQuery,
    ) -> Result<MetricAnswer, MetricQueryError> {
        metric_query(&lock(&self.read), query)
    }
}

/// One compaction transaction: the head rows at or below `cut`, in the minutes `buckets`, of
/// the next [`COMPACT_SERIES_PER_TX`] series after `after_series`; one chunk per series and span
/// of `span_ns` of receive time. Answers the last series looked at, the points packed and the
/// chunks written; `None` once no series is left.
fn compact_some(
    conn: &Connection,
    cut: i64,
    span_ns: i64,
    buckets: &[i64],
    after_series: i64,
) -> rusqlite::Result<Option<(i64, u64, u64)>> {
    let tx = conn.unchecked_transaction()?;
    let range: Option<(i64, i64)> = tx
        .prepare_cached(
            "SELECT min(series_id), max(series_id) FROM (
                 SELECT series_id FROM metric_series WHERE series_id > ?1
                 ORDER BY series_id LIMIT ?2)",
        )?
        .query_row(params![after_series, COMPACT_SERIES_PER_TX], |r| {
            Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?))
        })?;
    let Some((first, last)) = range else {
        return Ok(None);
    };
    let mut read = tx.prepare_cached(
        "SELECT series_id, id, time_ns, value, received_ns FROM metric_points
         WHERE bucket = ?1 AND series_id BETWEEN ?2 AND ?3 AND id <= ?4",
    )?;
    // Per series and span of receive time: the points and the latest receive time among them.
    let mut found: std::collections::BTreeMap<(i64, i64), (Points, i64)> = Default::default();
    for &bucket in buckets {
        let mut rows = read.query(params![bucket, first, last, cut])?;
        while let Some(r) = rows.next()? {
            let received: i64 = r.get(4)?;
            let span = received.saturating_sub(received.rem_euclid(span_ns));
            let value: Option<f64> = r.get(3)?;
            let (points, latest) = found
                .entry((r.get(0)?, span))
                .or_insert((Points::default(), i64::MIN));
            points.push(r.get(2)?, value.unwrap_or(f64::NAN), r.get(1)?);
            *latest = (*latest).max(received);
        }
    }
    drop(read);
    let mut insert = tx.prepare_cached(
        "INSERT INTO metric_chunks
            (series_id, start_ns, end_ns, first_id, last_id, received_ns, points, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let (mut packed, mut chunks) = (0u64, 0u64);
    for ((series_id, _), (mut points, received)) in found {
        points.sort();
        let blob = chunk::encode(&points)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let ids = points.ids.iter();
        insert.execute(params![
            series_id,
            points.times[0],
            points.times[points.len() - 1],
            ids.clone().min(),
            ids.max(),
            received,
            points.len() as i64,
            blob,
        ])?;
        packed += points.len() as u64;
        chunks += 1;
    }
    drop(insert);
    let mut delete = tx.prepare_cached(
        "DELETE FROM metric_points
         WHERE bucket = ?1 AND series_id BETWEEN ?2 AND ?3 AND id <= ?4",
    )?;
    for &bucket in buckets {
        delete.execute(params![bucket, first, last, cut])?;
    }
    drop(delete);
    tx.commit()?;
    Ok(Some((last, packed, chunks)))
}

/// One expiry transaction: up to [`EXPIRE_CHUNKS_PER_TX`] chunks received before `cutoff_ns`,
/// then the series of those chunks that hold no other chunk and no head row. Answers the points
/// deleted and the series pruned; `None` when no chunk was old enough.
fn expire_some(
    conn: &Connection,
    cutoff_ns: i64,
) -> rusqlite::Result<Option<(u64, std::collections::HashSet<i64>)>> {
    let tx = conn.unchecked_transaction()?;
    let deleted: Vec<(i64, i64)> = tx
        .prepare_cached(
            "DELETE FROM metric_chunks WHERE chunk_id IN (
                 SELECT chunk_id FROM metric_chunks WHERE received_ns < ?1 LIMIT ?2)
             RETURNING points, series_id",
        )?
        .query_map(params![cutoff_ns, EXPIRE_CHUNKS_PER_TX], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if deleted.is_empty() {
        return Ok(None);
    }
    let points = deleted.iter().map(|&(n, _)| n.cast_unsigned()).sum();
    let candidates: std::collections::BTreeSet<i64> = deleted.iter().map(|&(_, s)| s).collect();
    let buckets = head_buckets(&tx, i64::MAX)?;
    let mut chunked =
        tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM metric_chunks WHERE series_id = ?1)")?;
    let mut in_head = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM metric_points WHERE bucket = ?1 AND series_id = ?2)",
    )?;
    let mut forget = tx.prepare_cached("DELETE FROM metric_series WHERE series_id = ?1")?;
    let mut pruned = std::collections::HashSet::new();
    for series_id in candidates {
        if chunked.query_row([series_id], |r| r.get::<_, bool>(0))? {
            continue;
        }
        let mut held = false;
        for &bucket in &buckets {
            if in_head.query_row([bucket, series_id], |r| r.get::<_, bool>(0))? {
                held = true;
                break;
            }
        }
        if !held {
            forget.execute([series_id])?;
            pruned.insert(series_id);
        }
    }
    drop((chunked, in_head, forget));
    tx.commit()?;
    Ok(Some((points, pruned)))
}

/// The series a query selects: its name, its agent if it names one, and its matchers.
fn select_series(
    conn: &Connection,
    query: &MetricQuery,
    max_series: usize,
) -> Result<Vec<(i64, SeriesInfo)>, MetricQueryError> {
    let context = || format!("selecting the series of `{}`", query.name);
    let mut stmt = conn
        .prepare_cached(
            "SELECT s.series_id, a.agent_id, s.unit, s.kind, nullif(s.attributes, '')
             FROM metric_series s JOIN agents a USING (agent_key)
             WHERE s.name = ?1 AND (?2 IS NULL OR a.agent_id = ?2)
             ORDER BY a.agent_id, s.series_id",
        )
        .map_err(|e| StoreError::backend(context(), e))?;
    let mut rows = stmt
        .query(params![query.name, query.agent_id])
        .map_err(|e| StoreError::backend(context(), e))?;
    let mut selected = Vec::new();
    while let Some(r) = rows.next().map_err(|e| StoreError::backend(context(), e))? {
        let read = || -> rusqlite::Result<(i64, SeriesInfo)> {
            let kind: String = r.get(3)?;
            Ok((
                r.get(0)?,
                SeriesInfo {
                    agent_id: r.get(1)?,
                    name: query.name.clone(),
                    unit: r.get(2)?,
                    kind: parse_column(3, "metric kind", kind, metric_kind_from_name)?,
                    attributes: attributes_column(r, 4)?,
                },
            ))
        };
        let (id, info) = read().map_err(|e| StoreError::backend(context(), e))?;
        if !query.matchers.iter().all(|m| m.matches(&info.attributes)) {
            continue;
        }
        if selected.len() == max_series {
            return Err(QueryError::new(
                "match",
                format!(
                    "more than {max_series} series of `{}` match; name an agent or add matchers",
                    query.name
                ),
            )
            .into());
        }
        selected.push((id, info));
    }
    Ok(selected)
}

/// How a query reads the head: by each of its minutes, found once per query.
struct HeadBuckets {
    /// `?1` the series, `?2..?3` the time range; `None` when the head is empty.
    sql: Option<String>,
}

impl HeadBuckets {
    fn read(conn: &Connection) -> Result<HeadBuckets, StoreError> {
        let buckets = head_buckets(conn, i64::MAX)
            .map_err(|e| StoreError::backend("listing the minutes of the metric head", e))?;
        if buckets.is_empty() {
            return Ok(HeadBuckets { sql: None });
        }
        // Integers the store wrote itself, so the list can be written into the statement.
        let list = buckets
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Ok(HeadBuckets {
            sql: Some(format!(
                "SELECT time_ns, value FROM metric_points
                 WHERE bucket IN ({list}) AND series_id = ?1 AND time_ns >= ?2 AND time_ns < ?3"
            )),
        })
    }
}

/// The points of one series with a time in `range`, from its chunks and its head, by time.
fn series_points(
    conn: &Connection,
    series_id: i64,
    range: &std::ops::Range<i64>,
    head: &HeadBuckets,
) -> Result<Vec<(i64, f64)>, StoreError> {
    let context = || format!("reading the points of metric series {series_id}");
    let backend = |e: rusqlite::Error| StoreError::backend(context(), e);
    let mut points = Vec::new();
    let mut chunks = conn
        .prepare_cached(
            "SELECT data FROM metric_chunks
             WHERE series_id = ?1 AND end_ns >= ?2 AND start_ns < ?3",
        )
        .map_err(backend)?;
    let mut rows = chunks
        .query(params![series_id, range.start, range.end])
        .map_err(backend)?;
    while let Some(r) = rows.next().map_err(backend)? {
        let blob = r.get_ref(0).map_err(backend)?.as_blob().map_err(|e| {
            backend(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Blob,
                Box::new(e),
            ))
        })?;
        let decoded = chunk::decode(blob, false)
            .map_err(|e| StoreError::backend(format!("{} (series {series_id})", context()), e))?;
        points.extend(
            decoded
                .times
                .into_iter()
                .zip(decoded.values)
                .filter(|(t, _)| range.contains(t)),
        );
    }
    let from_head = match &head.sql {
        None => Vec::new(),
        Some(sql) => conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.query_map(params![series_id, range.start, range.end], |r| {
                    Ok((r.get(0)?, r.get::<_, Option<f64>>(1)?.unwrap_or(f64::NAN)))
                })?
                .collect::<rusqlite::Result<Vec<(i64, f64)>>>()
            })
            .map_err(backend)?,
    };
    points.extend(from_head);
    // Usually in order already (one chunk, or rows of one minute); chunks that overlap, late
    // points and rows of several minutes are not.
    if !points.is_sorted_by_key(|&(t, _)| t) {
        points.sort_by_key(|&(t, _)| t);
    }
    Ok(points)
}

/// Runs a metric query on `conn`.
pub(super) fn metric_query(
    conn: &Connection,
    query: &MetricQuery,
) -> Result<MetricAnswer, MetricQueryError> {
    query.check()?;
    let selected = select_series(conn, query, MAX_SERIES)?;
    for (_, info) in &selected {
        query.check_kind(info.kind)?;
    }
    let read_range = query.read_range();
    let head = HeadBuckets::read(conn)?;
    let mut answered = Vec::with_capacity(selected.len());
    for (id, info) in selected {
        let points = series_points(conn, id, &read_range, &head)?;
        answered.push((info, series::bucket(&points, query)));
    }
    Ok(series::answer(query, answered))
}

/// Every stored point of the series of `name` (of one agent or all), head and chunks, with each
/// series' attributes: what loss checks count. Sorted by series, then time.
pub(super) fn all_points(
    conn: &Connection,
    agent_id: Option<&str>,
    name: &str,
) -> Result<Vec<SeriesPoints>, StoreError> {
    let mut all = Vec::new();
    each_series_points(conn, agent_id, name, MAX_SERIES, |info, points| {
        all.push((info, points));
    })?;
    Ok(all)
}

/// Every stored point of the metric `name` (of one agent, or all), handed to `visit` one series
/// at a time, up to `max_series` series.
pub(super) fn each_series_points(
    conn: &Connection,
    agent_id: Option<&str>,
    name: &str,
    max_series: usize,
    mut visit: impl FnMut(SeriesInfo, Vec<(i64, f64)>),
) -> Result<(), StoreError> {
    let query = MetricQuery {
        agent_id: agent_id.map(str::to_owned),
        ..MetricQuery::new(name, i64::MIN..i64::MAX, i64::MAX)
    };
    let selected = select_series(conn, &query, max_series).map_err(|e| match e {
        MetricQueryError::Store(e) => e,
        MetricQueryError::Query(e) => StoreError::Conflict(e.message),
    })?;
    let head = HeadBuckets::read(conn)?;
    for (id, info) in selected {
        // The one range that cannot be written as start..end holds i64::MAX; no agent's clock
        // gets there.
        visit(info, series_points(conn, id, &(i64::MIN..i64::MAX), &head)?);
    }
    Ok(())
}

/// How many metric points are stored (of one agent or all): head rows and chunk points.
pub(super) fn count_points(conn: &Connection, agent_id: Option<&str>) -> Result<u64, StoreError> {
    let sql = "SELECT
        (SELECT count(*) FROM metric_points p JOIN metric_series s USING (series_id)
         WHERE ?1 IS NULL OR s.agent_key = (SELECT agent_key FROM agents WHERE agent_id = ?1))
      + (SELECT coalesce(sum(c.points), 0) FROM metric_chunks c JOIN metric_series s USING (series_id)
         WHERE ?1 IS NULL OR s.agent_key = (SELECT agent_key FROM agents WHERE agent_id = ?1))";
    conn.query_row(sql, [agent_id], |r| r.get::<_, i64>(0))
        .map(i64::cast_unsigned)
        .map_err(|e| StoreError::backend("counting metric points", e))
}

/// Series ids per kind name, for tests that look at the layout.
#[cfg(test)]
pub(super) fn layout(conn: &Connection) -> std::collections::HashMap<&'static str, i64> {
    let mut out = std::collections::HashMap::new();
    for (what, sql) in [
        ("series", "SELECT count(*) FROM metric_series"),
        ("head", "SELECT count(*) FROM metric_points"),
        ("chunks", "SELECT count(*) FROM metric_chunks"),
        (
            "chunk_points",
            "SELECT coalesce(sum(points), 0) FROM metric_chunks",
        ),
    ] {
        out.insert(what, conn.query_row(sql, [], |r| r.get(0)).unwrap());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use outpost_common::event::{Event, EventKind, MetricKind};
    use rusqlite::Connection;

    use super::*;
    use crate::store::series::{Aggregate, Combine, Function, Matcher};
    use crate::store::sqlite::test_support::*;
    use crate::store::testutil::*;
    use crate::store::{EventQuery, EventStore, IncomingBatch, Retention};

    const MIN: i64 = 60_000_000_000;

    /// Points of a host every 10 s for `minutes`, received as they are made: CPU idle per state
    /// total and per core, and a byte counter that resets half-way.
    fn host_batches(agent: &str, start: i64, minutes: i64) -> Vec<IncomingBatch> {
        (0..minutes * 6)
            .map(|i| {
                let t = start + secs(10 * i);
                let counter = if i < minutes * 3 {
                    1000.0 + 50.0 * i as f64
                } else {
                    10.0 * (i - minutes * 3) as f64
                };
                let mut events = vec![
                    Event::Metric(point(
                        "system.cpu.utilization",
                        &[("state", "idle")],
                        t,
                        0.5 + (i % 2) as f64 * 0.1,
                    )),
                    Event::Metric(point(
                        "system.cpu.utilization",
                        &[("cpu", "0"), ("state", "idle")],
                        t,
                        0.25,
                    )),
                ];
                let mut c = point("system.network.io", &[("direction", "receive")], t, counter);
                c.kind = MetricKind::Counter;
                c.unit = "By".into();
                events.push(Event::Metric(c));
                let mut b = batch(agent, 1, i as u64 + 1, events);
                b.received_ns = t;
                b
            })
            .collect()
    }

    fn query(name: &str, range: std::ops::Range<i64>, step: i64) -> MetricQuery {
        MetricQuery::new(name, range, step)
    }

    fn retention(chunk: Duration) -> Retention {
        Retention {
            metric_chunk: chunk,
            ..Retention::default()
        }
    }

    fn layout_of(store: &SqliteStore) -> std::collections::HashMap<&'static str, i64> {
        layout(&Connection::open(store.path()).unwrap())
    }

    fn everything(
        store: &SqliteStore,
        agent: Option<&str>,
        name: &str,
    ) -> Vec<(String, Vec<(i64, f64)>)> {
        all_points(&lock(&store.read), agent, name)
            .unwrap()
            .into_iter()
            .map(|(info, points)| (format!("{}{:?}", info.agent_id, info.attributes), points))
            .collect()
    }

    #[test]
    fn compaction_packs_each_series_once_its_span_has_passed_and_every_point_reads_back_once() {
        let (_dir, store) = open();
        let start = T0 - T0.rem_euclid(30 * MIN);
        for b in host_batches("a", start, 60) {
            store.commit_batches(&[b]).unwrap();
        }
        let before = everything(&store, Some("a"), "system.cpu.utilization");
        let net_before = everything(&store, None, "system.network.io");
        assert_eq!(layout_of(&store)["head"], 3 * 360);
        assert_eq!(layout_of(&store)["series"], 3);
        let total = store.count_events(EventKind::Metric, Some("a")).unwrap();
        assert_eq!(total, 3 * 360);

        // Thirty minutes on, and the minute's grace: the first half-hour is packed.
        let report = store
            .enforce_retention(&retention(Duration::from_secs(1800)), start + 31 * MIN)
            .unwrap();
        assert_eq!(report.metric_points_packed, 3 * 180);
        assert_eq!(report.metric_chunks_written, 3);
        assert_eq!(report.metric, 0);
        let l = layout_of(&store);
        assert_eq!(
            (l["head"], l["chunks"], l["chunk_points"]),
            (3 * 180, 3, 3 * 180)
        );
        assert_eq!(
            everything(&store, Some("a"), "system.cpu.utilization"),
            before
        );
        assert_eq!(everything(&store, None, "system.network.io"), net_before);
        assert_eq!(
            store.count_events(EventKind::Metric, Some("a")).unwrap(),
            total
        );
        // A second pass at the same time packs nothing more; later, the rest goes.
        let again = store
            .enforce_retention(&retention(Duration::from_secs(1800)), start + 31 * MIN)
            .unwrap();
        assert_eq!(again.metric_points_packed, 0);
        store
            .enforce_retention(&retention(Duration::from_secs(1800)), start + 61 * MIN)
            .unwrap();
        let l = layout_of(&store);
        assert_eq!((l["head"], l["chunks"], l["chunk_points"]), (0, 6, 3 * 360));
        assert_eq!(
            everything(&store, Some("a"), "system.cpu.utilization"),
            before
        );
        // Ids go on past the packed points, even with the head empty and after a reopen.
        let path = store.path().to_owned();
        let end = store.end().unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.end().unwrap(), end);
        // Cursor reads see the head only.
        let page = store
            .events(&EventQuery {
                kind: Some(EventKind::Metric),
                ..EventQuery::default()
            })
            .unwrap();
        assert!(page.events.is_empty());
    }

    #[test]
    fn queries_aggregate_across_chunks_and_head_with_matchers_rates_and_combination() {
        let (_dir, store) = open();
        let start = T0 - T0.rem_euclid(30 * MIN);
        for agent in ["a", "b"] {
            for b in host_batches(agent, start, 60) {
                store.commit_batches(&[b]).unwrap();
            }
        }
        let run = |q: &MetricQuery| store.metric_query(q).unwrap();
        let mut q = query("system.cpu.utilization", start..start + 60 * MIN, 30 * MIN);
        q.agent_id = Some("a".into());
        q.matchers = vec![Matcher::parse("cpu=").unwrap()];
        let unpacked = run(&q);
        store
            .enforce_retention(&retention(Duration::from_secs(1800)), start + 31 * MIN)
            .unwrap();
        let packed = run(&q);
        assert_eq!(packed, unpacked);
        assert_eq!(packed.selected, 1);
        let series = &packed.series[0];
        assert_eq!(
            series.series.as_ref().unwrap().attributes,
            [("state".to_owned(), "idle".to_owned())]
        );
        // Half the points at 0.5, half at 0.6, in each half-hour.
        assert_eq!(series.points.len(), 2);
        for (i, (t, v)) in series.points.iter().enumerate() {
            assert_eq!(*t, start + i as i64 * 30 * MIN);
            assert!((v - 0.55).abs() < 1e-9, "{v}");
        }
        q.aggregate = Aggregate::Max;
        assert!(
            run(&q).series[0]
                .points
                .iter()
                .all(|&(_, v)| (v - 0.6).abs() < 1e-12)
        );

        // Both agents' totals, and the per-core series too when the matcher is dropped.
        q.agent_id = None;
        q.aggregate = Aggregate::Avg;
        q.combine = Some(Combine::Avg);
        let fleet = run(&q);
        assert_eq!(fleet.selected, 2);
        assert_eq!(fleet.series.len(), 1);
        assert!(fleet.series[0].series.is_none());
        q.matchers.clear();
        q.combine = None;
        assert_eq!(run(&q).selected, 4);
        q.matchers = vec![Matcher::parse("cpu=~[0-9]+").unwrap()];
        q.combine = Some(Combine::Max);
        assert!(run(&q).series[0].points.iter().all(|&(_, v)| v == 0.25));

        // The counter climbs 50 a sample for half an hour, then restarts and climbs 10 a sample;
        // the reset in between counts as a rise to its new value (0).
        let mut net = query("system.network.io", start..start + 60 * MIN, 30 * MIN);
        net.agent_id = Some("b".into());
        net.function = Some(Function::Increase);
        let increase = run(&net).series[0].points.clone();
        assert_eq!(
            increase,
            [(start, 50.0 * 179.0), (start + 30 * MIN, 10.0 * 179.0)]
        );
        net.function = Some(Function::Rate);
        assert_eq!(run(&net).series[0].points[0].1, 50.0 * 179.0 / 1800.0);
        // A step that begins inside the climb has the sample before it.
        let mut late = net.clone();
        late.range = start + 10 * MIN..start + 20 * MIN;
        late.step_ns = 10 * MIN;
        late.function = Some(Function::Increase);
        assert_eq!(
            run(&late).series[0].points,
            [(start + 10 * MIN, 50.0 * 60.0)]
        );

        // Wrong queries are refused naming the part.
        net.function = Some(Function::Rate);
        net.name = "system.cpu.utilization".into();
        let err = store.metric_query(&net).unwrap_err();
        assert!(
            matches!(&err, MetricQueryError::Query(e) if e.part == "function"),
            "{err}"
        );
        let err = store
            .metric_query(&query("x", 0..secs(100_000), 1))
            .unwrap_err();
        assert!(
            matches!(&err, MetricQueryError::Query(e) if e.part == "step"),
            "{err}"
        );
        // A name nobody sends selects nothing.
        assert_eq!(run(&query("nothing", start..start + MIN, MIN)).selected, 0);
    }

    #[test]
    fn points_arriving_late_make_chunks_of_their_own_and_read_back_in_time_order() {
        let (_dir, store) = open();
        let start = T0 - T0.rem_euclid(30 * MIN);
        let batches = host_batches("a", start, 30);
        let (early, late) = batches.split_at(90);
        for b in early {
            store.commit_batches(std::slice::from_ref(b)).unwrap();
        }
        store
            .enforce_retention(&retention(Duration::from_secs(1800)), start + 31 * MIN)
            .unwrap();
        // The rest comes after the span was packed (an agent back from an outage).
        for b in late {
            let mut b = b.clone();
            b.received_ns = start + 40 * MIN;
            store.commit_batches(&[b]).unwrap();
        }
        store
            .enforce_retention(&retention(Duration::from_secs(1800)), start + 91 * MIN)
            .unwrap();
        let l = layout_of(&store);
        assert_eq!((l["head"], l["chunks"]), (0, 6));
        let all = everything(&store, Some("a"), "system.network.io");
        let times: Vec<i64> = all[0].1.iter().map(|&(t, _)| t).collect();
        assert_eq!(
            times,
            (0..180).map(|i| start + secs(10 * i)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn retention_expires_chunks_by_receive_time_and_counts_their_points() {
        let (_dir, store) = open();
        let start = T0 - T0.rem_euclid(30 * MIN);
        for b in host_batches("a", start, 60) {
            store.commit_batches(&[b]).unwrap();
        }
        let keep = |metric: Duration| Retention {
            metric,
            metric_chunk: Duration::from_secs(1800),
            ..Retention::default()
        };
        store
            .enforce_retention(&keep(Duration::from_secs(86_400)), start + 91 * MIN)
            .unwrap();
        assert_eq!(layout_of(&store)["chunks"], 6);
        // Keep 40 minutes at 91 minutes: the first half-hour's chunks (received up to minute
        // 30) go, the second's (up to minute 60) stay.
        let report = store
            .enforce_retention(&keep(Duration::from_secs(40 * 60)), start + 91 * MIN)
            .unwrap();
        assert_eq!(report.metric, 3 * 180);
        assert_eq!(layout_of(&store)["chunk_points"], 3 * 180);
        assert_eq!(
            store.count_events(EventKind::Metric, None).unwrap(),
            3 * 180
        );
    }

    #[test]
    fn series_left_without_points_are_pruned_and_come_back_when_points_do() {
        let (_dir, store) = open();
        let start = T0 - T0.rem_euclid(30 * MIN);
        // A process restarted every 10 s: a new pid, so a new series, each round.
        let round = |i: i64, received: i64, seq: u64| {
            let pid = (1000 + i).to_string();
            let mut b = batch(
                "a",
                1,
                seq,
                vec![
                    Event::Metric(point(
                        "process.threads",
                        &[("process.pid", &pid)],
                        received,
                        4.0,
                    )),
                    Event::Metric(point(
                        "system.cpu.utilization",
                        &[("state", "idle")],
                        received,
                        0.5,
                    )),
                ],
            );
            b.received_ns = received;
            b
        };
        for i in 0..6 {
            store
                .commit_batches(&[round(i, start + secs(10 * i), i as u64 + 1)])
                .unwrap();
        }
        let keep = |metric: Duration| Retention {
            metric,
            metric_chunk: Duration::from_secs(1800),
            ..Retention::default()
        };
        store
            .enforce_retention(&keep(Duration::from_secs(86_400)), start + 31 * MIN)
            .unwrap();
        assert_eq!(layout_of(&store)["series"], 7);
        // The idle CPU keeps arriving; the old processes' points age out with their chunks.
        store
            .commit_batches(&[round(6, start + 40 * MIN, 7)])
            .unwrap();
        let report = store
            .enforce_retention(&keep(Duration::from_secs(20 * 60)), start + 41 * MIN)
            .unwrap();
        assert_eq!(report.metric, 12);
        // Six pids had points only in the expired chunks; the CPU series and the seventh pid
        // still have rows.
        assert_eq!(report.metric_series_pruned, 6);
        assert_eq!(layout_of(&store)["series"], 2);
        // A pruned series that sends again is a series again, with its points readable.
        store
            .commit_batches(&[round(0, start + 42 * MIN, 8)])
            .unwrap();
        assert_eq!(layout_of(&store)["series"], 3);
        let again = everything(&store, Some("a"), "process.threads");
        assert_eq!(again.len(), 2, "{again:?}");
        assert!(
            again.iter().all(|(_, points)| points.len() == 1),
            "{again:?}"
        );
    }

    #[test]
    fn a_damaged_chunk_is_an_error_naming_the_series_not_a_panic() {
        let (_dir, store) = open();
        let start = T0 - T0.rem_euclid(30 * MIN);
        for b in host_batches("a", start, 30) {
            store.commit_batches(&[b]).unwrap();
        }
        store
            .enforce_retention(&retention(Duration::from_secs(1800)), start + 61 * MIN)
            .unwrap();
        Connection::open(store.path())
            .unwrap()
            .execute(
                "UPDATE metric_chunks SET data = x'01ffff' WHERE series_id = 1",
                [],
            )
            .unwrap();
        let err = store
            .metric_query(&query(
                "system.cpu.utilization",
                start..start + 30 * MIN,
                MIN,
            ))
            .unwrap_err();
        assert!(err.to_string().contains("series 1"), "{err}");
        assert!(err.to_string().contains("cut short"), "{err}");
    }
}
