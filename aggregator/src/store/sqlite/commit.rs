//! The group commit: many batches in one transaction, each stored once ([`crate::store::dedup`]),
//! each event a row with the next id of the shared sequence, and the hosts' summaries kept up to
//! date on the way.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use outpost_common::event::{Event, EventKind, FimEvent, MetricPoint};
use rusqlite::{CachedStatement, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::codec::{
    attributes_json, changed_json, fim_change_name, fim_detection_name, metric_kind_name,
    severity_level, to_json,
};
use super::queries;
use super::registry::agent_key;
use super::{Pending, WriteState};
use crate::store::dedup::{self, Admission};
use crate::store::fim_trail::{self, Arrival, Break, Found, Held, Position, Trail};
use crate::store::{BatchCommit, CommitOutcome, Cursor, HostSummary, IncomingBatch, PackedEvents};

/// The cursor of the event row `id` (ids start at 1; lower ones only in hand-made rows).
pub(super) fn cursor_of(id: i64) -> Cursor {
    Cursor::from_position(u64::try_from(id).unwrap_or(0))
}

/// The row id at a cursor.
pub(super) fn id_of(cursor: Cursor) -> i64 {
    i64::try_from(cursor.position()).unwrap_or(i64::MAX)
}

impl WriteState {
    /// One group commit. On error the transaction rolls back and the caches stay as they were.
    pub(super) fn commit(
        &mut self,
        batches: &[IncomingBatch],
    ) -> rusqlite::Result<Vec<BatchCommit>> {
        let WriteState {
            conn,
            agent_keys,
            low_water,
            last_received_ns,
            next_id,
            summaries,
            trails,
            series,
        } = self;
        let mut pending = Pending::default();
        // Apart from `pending`: the row inserter holds it for the whole transaction.
        let mut new_series = HashMap::new();
        let mut received = *last_received_ns;
        let mut id = *next_id;
        let mut answers = Vec::with_capacity(batches.len());
        // Logged once the commit holds, so a failed commit retried does not log twice.
        let mut breaks: Vec<(&str, Found)> = Vec::new();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut rows = RowInserter::prepare(&tx, series, &mut new_series)?;
            let mut claim = tx.prepare_cached(
                "INSERT INTO batches (agent_key, spool_id, seq, received_ns, events)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )?;
            let mut advance = tx.prepare_cached(
                "INSERT INTO spools (agent_key, spool_id, low_water_seq, last_batch_ns)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (agent_key, spool_id) DO UPDATE
                 SET low_water_seq = excluded.low_water_seq, last_batch_ns = excluded.last_batch_ns",
            )?;
            for batch in batches {
                received = received.max(batch.received_ns);
                let key = agent_key(&tx, agent_keys, &mut pending, &batch.agent_id, received)?;
                let spool = (key, batch.spool_id.cast_signed());
                let floor = match pending.low_water.get(&spool).or(low_water.get(&spool)) {
                    Some(&lw) => Some(lw),
                    None => {
                        let stored = stored_low_water(&tx, spool)?;
                        if let Some(lw) = stored {
                            pending.low_water.insert(spool, lw);
                        }
                        stored
                    }
                };
                let admission = dedup::admit(floor, batch.seq, batch.low_water_seq);
                let Admission::Claim { low_water: lw } = admission else {
                    answers.push(BatchCommit::Duplicate);
                    continue;
                };
                let claimed = claim.execute(params![
                    spool.0,
                    spool.1,
                    batch.seq.cast_signed(),
                    received,
                    batch.events.len() as i64,
                ])? == 1;
                if dedup::outcome(admission, claimed) == CommitOutcome::Duplicate {
                    answers.push(BatchCommit::Duplicate);
                    continue;
                }
                let start = cursor_of(id);
                let in_block = match &batch.packed {
                    Some(packed) if mostly_logs(&batch.events) => {
                        rows.block(id, key, received, &batch.events, packed)?;
                        true
                    }
                    _ => false,
                };
                let mut summary = HostSummary::default();
                let mut found = Vec::new();
                for event in &batch.events {
                    if let Event::Fim(f) = event {
                        let arrival = Arrival {
                            row: id,
                            spool_id: batch.spool_id,
                            batch_seq: batch.seq,
                        };
                        let trail = trail_mut(&tx, trails, &mut pending.trails, key)?;
                        let copy = trail.needs_lookup(f) && stored_copy(&tx, key, f)?;
                        found.extend(trail.receive(f, arrival, copy));
                    }
                    if !(in_block && matches!(event, Event::Log(_))) {
                        rows.insert(id, key, received, event)?;
                    }
                    id += 1;
                    if let Event::Metric(m) = event {
                        summary.observe(m);
                    }
                }
                found.extend(settle_trail(
                    &tx,
                    trails,
                    &mut pending.trails,
                    key,
                    batch.spool_id,
                    lw,
                )?);
                let mut notices = Vec::with_capacity(found.len());
                for f in found {
                    record_break(&tx, key, f.row, &f.brk, received)?;
                    let notice = fim_trail::notice(&batch.agent_id, &f.brk, &f.path, received);
                    rows.insert(id, key, received, &notice)?;
                    id += 1;
                    notices.push(notice);
                    breaks.push((&batch.agent_id, f));
                }
                if !summary.is_empty() {
                    pending.summaries.entry(key).or_default().merge(&summary);
                }
                advance.execute(params![spool.0, spool.1, lw.cast_signed(), received])?;
                pending.low_water.insert(spool, lw);
                answers.push(BatchCommit::Stored { start, notices });
            }
        }
        write_summaries(&tx, summaries, &mut pending.summaries)?;
        write_trails(&tx, &pending.trails)?;
        tx.commit()?;
        for (agent_id, found) in &breaks {
            fim_trail::log_break(agent_id, found);
        }
        agent_keys.extend(pending.agent_keys);
        low_water.extend(pending.low_water);
        summaries.extend(pending.summaries);
        trails.extend(pending.trails);
        series.extend(new_series);
        *last_received_ns = received;
        *next_id = id;
        Ok(answers)
    }
}

/// Whether at least half of a batch's events are log records: only then is the batch kept as a
/// block for them, so that a block never holds mostly events that have rows of their own (an
/// agent's batches of logs hold little else: metric samples travel apart).
fn mostly_logs(events: &[Event]) -> bool {
    let logs = events.iter().filter(|e| matches!(e, Event::Log(_))).count();
    logs > 0 && logs * 2 >= events.len()
}

/// The trail of agent `key` for this transaction to change: the one it changed already, else a
/// copy of the committed one (read from the store the first time, which is committed state and
/// so goes to the cache at once).
fn trail_mut<'p>(
    tx: &Transaction<'_>,
    committed: &mut HashMap<i64, Trail>,
    pending: &'p mut HashMap<i64, Trail>,
    key: i64,
) -> rusqlite::Result<&'p mut Trail> {
    Ok(match pending.entry(key) {
        Entry::Occupied(held) => held.into_mut(),
        Entry::Vacant(place) => place.insert(committed_trail(tx, committed, key)?.clone()),
    })
}

fn committed_trail<'c>(
    tx: &Transaction<'_>,
    committed: &'c mut HashMap<i64, Trail>,
    key: i64,
) -> rusqlite::Result<&'c Trail> {
    Ok(match committed.entry(key) {
        Entry::Occupied(cached) => cached.into_mut(),
        Entry::Vacant(place) => place.insert(stored_trail(tx, key)?),
    })
}

/// After a batch of agent `key` from `spool_id` moved the spool's low-water mark to `low_water`:
/// reports the gaps before events held ahead that can no longer be filled.
fn settle_trail(
    tx: &Transaction<'_>,
    committed: &mut HashMap<i64, Trail>,
    pending: &mut HashMap<i64, Trail>,
    key: i64,
    spool_id: u64,
    low_water: u64,
) -> rusqlite::Result<Vec<Found>> {
    let holds = match pending.get(&key) {
        Some(trail) => !trail.ahead.is_empty(),
        None => !committed_trail(tx, committed, key)?.ahead.is_empty(),
    };
    if !holds {
        return Ok(Vec::new());
    }
    Ok(trail_mut(tx, committed, pending, key)?.settle(spool_id, low_water))
}

/// An agent's stored trail: its end, and the events held ahead of it read back from their rows.
fn stored_trail(tx: &Transaction<'_>, key: i64) -> rusqlite::Result<Trail> {
    let end = tx
        .prepare_cached("SELECT seq, chain FROM fim_trails WHERE agent_key = ?1")?
        .query_row([key], |r| {
            Ok(Position {
                seq: r.get::<_, i64>(0)?.cast_unsigned(),
                chain: r.get(1)?,
            })
        })
        .optional()?;
    let sql = format!(
        "SELECT h.seq, h.spool_id, h.batch_seq, e.id, e.time_ns, {}
         FROM fim_trail_ahead h JOIN fim_events e ON e.id = h.event_id
         WHERE h.agent_key = ?1",
        queries::columns(EventKind::Fim)
    );
    let ahead = tx
        .prepare_cached(&sql)?
        .query_map([key], |r| {
            let held = Held {
                arrival: Arrival {
                    row: r.get(3)?,
                    spool_id: r.get::<_, i64>(1)?.cast_unsigned(),
                    batch_seq: r.get::<_, i64>(2)?.cast_unsigned(),
                },
                event: queries::fim_event(r, r.get(4)?, 5)?,
            };
            Ok((r.get::<_, i64>(0)?.cast_unsigned(), held))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Trail {
        end,
        ahead,
        last_received: None,
    })
}

/// Whether the agent has an event with the same `seq` and `chain` stored already.
fn stored_copy(tx: &Transaction<'_>, key: i64, event: &FimEvent) -> rusqlite::Result<bool> {
    tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM fim_events WHERE agent_key = ?1 AND seq = ?2 AND chain = ?3)",
    )?
    .query_row(params![key, event.seq.cast_signed(), event.chain], |r| {
        r.get(0)
    })
}

/// Writes the trails this transaction changed: each one's end, and the events it holds ahead.
fn write_trails(tx: &Transaction<'_>, trails: &HashMap<i64, Trail>) -> rusqlite::Result<()> {
    if trails.is_empty() {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO fim_trails (agent_key, seq, chain) VALUES (?1, ?2, ?3)
         ON CONFLICT (agent_key) DO UPDATE SET seq = excluded.seq, chain = excluded.chain",
    )?;
    let mut forget = tx.prepare_cached("DELETE FROM fim_trail_ahead WHERE agent_key = ?1")?;
    let mut hold = tx.prepare_cached(
        "INSERT INTO fim_trail_ahead (agent_key, seq, event_id, spool_id, batch_seq)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (key, trail) in trails {
        if let Some(p) = &trail.end {
            upsert.execute(params![key, p.seq.cast_signed(), p.chain])?;
        }
        forget.execute([key])?;
        for (seq, held) in &trail.ahead {
            let a = held.arrival;
            hold.execute(params![
                key,
                seq.cast_signed(),
                a.row,
                a.spool_id.cast_signed(),
                a.batch_seq.cast_signed()
            ])?;
        }
    }
    Ok(())
}

fn record_break(
    tx: &Transaction<'_>,
    key: i64,
    event_id: i64,
    b: &Break,
    received_ns: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO fim_trail_breaks
            (agent_key, event_id, seq, kind, expected_seq, detail, received_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        key,
        event_id,
        b.seq.cast_signed(),
        b.kind.as_str(),
        b.expected_seq.cast_signed(),
        b.detail,
        received_ns,
    ])?;
    Ok(())
}

/// Merges the summaries of this transaction's metric points into the stored ones, with one
/// UPDATE per agent; `fresh` then holds what was written.
pub(super) fn write_summaries(
    tx: &Transaction<'_>,
    committed: &HashMap<i64, HostSummary>,
    fresh: &mut HashMap<i64, HostSummary>,
) -> rusqlite::Result<()> {
    if fresh.is_empty() {
        return Ok(());
    }
    let mut update = tx.prepare_cached(
        "UPDATE agents SET cpu_busy = ?2, cpu_busy_ns = ?3, memory_used = ?4, memory_used_ns = ?5,
            fullest_fs_mountpoint = ?6, fullest_fs = ?7, fullest_fs_ns = ?8
         WHERE agent_key = ?1",
    )?;
    for (&key, summary) in fresh.iter_mut() {
        let mut merged = match committed.get(&key) {
            Some(held) => held.clone(),
            None => stored_summary(tx, key)?,
        };
        merged.merge(summary);
        let fs = merged.fullest_fs.as_ref();
        update.execute(params![
            key,
            merged.cpu_busy.map(|c| c.0),
            merged.cpu_busy.map(|c| c.1),
            merged.memory_used.map(|m| m.0),
            merged.memory_used.map(|m| m.1),
            fs.map(|f| f.0.as_str()),
            fs.map(|f| f.1),
            fs.map(|f| f.2),
        ])?;
        *summary = merged;
    }
    Ok(())
}

/// The summary stored for an agent, read when the write connection has not cached it yet.
fn stored_summary(tx: &Transaction<'_>, key: i64) -> rusqlite::Result<HostSummary> {
    tx.prepare_cached(
        "SELECT cpu_busy, cpu_busy_ns, memory_used, memory_used_ns,
            fullest_fs_mountpoint, fullest_fs, fullest_fs_ns
         FROM agents WHERE agent_key = ?1",
    )?
    .query_row([key], |r| summary_from_row(r, 0))
}

/// The host summary in the seven columns from `first` on (see [`SCHEMA_V2_HOST_SUMMARY`]).
/// A value without its time (or a time without its value) counts as unknown.
pub(super) fn summary_from_row(r: &Row<'_>, first: usize) -> rusqlite::Result<HostSummary> {
    let pair = |i: usize| -> rusqlite::Result<Option<(f64, i64)>> {
        Ok(r.get::<_, Option<f64>>(first + i)?
            .zip(r.get::<_, Option<i64>>(first + i + 1)?))
    };
    let fullest_fs = match (
        r.get::<_, Option<String>>(first + 4)?,
        r.get::<_, Option<f64>>(first + 5)?,
        r.get::<_, Option<i64>>(first + 6)?,
    ) {
        (Some(mountpoint), Some(value), Some(time_ns)) => Some((mountpoint, value, time_ns)),
        _ => None,
    };
    Ok(HostSummary {
        cpu_busy: pair(0)?,
        memory_used: pair(2)?,
        fullest_fs,
    })
}

/// The prepared inserts of one transaction, one per event kind, and the metric series it knows.
struct RowInserter<'c> {
    metric: CachedStatement<'c>,
    find_series: CachedStatement<'c>,
    add_series: CachedStatement<'c>,
    /// Series ids by [`series_key`]: those committed before, and those this transaction added.
    series: &'c HashMap<String, i64>,
    new_series: &'c mut HashMap<String, i64>,
    /// Reused for each metric point's series key.
    key: String,
    log: CachedStatement<'c>,
    fim: CachedStatement<'c>,
    status: CachedStatement<'c>,
    log_block: CachedStatement<'c>,
    /// Reused for each row's attributes, to avoid an allocation per row.
    json: Vec<u8>,
}

impl<'c> RowInserter<'c> {
    fn prepare(
        tx: &'c Transaction<'_>,
        series: &'c HashMap<String, i64>,
        new_series: &'c mut HashMap<String, i64>,
    ) -> rusqlite::Result<Self> {
        Ok(RowInserter {
            metric: tx.prepare_cached(
                "INSERT INTO metric_points (id, series_id, time_ns, received_ns, bucket, value)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
            find_series: tx.prepare_cached(
                "SELECT series_id FROM metric_series
                 WHERE agent_key = ?1 AND name = ?2 AND attributes = ?3 AND unit = ?4 AND kind = ?5",
            )?,
            add_series: tx.prepare_cached(
                "INSERT INTO metric_series (agent_key, name, attributes, unit, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING series_id",
            )?,
            series,
            new_series,
            key: String::with_capacity(128),
            log: tx.prepare_cached(
                "INSERT INTO logs (id, agent_key, time_ns, received_ns, source, severity, body, attributes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?,
            log_block: tx.prepare_cached(
                "INSERT INTO log_blocks (id, events, agent_key, logs, min_time_ns, max_time_ns,
                    received_ns, codec, raw_bytes, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?,
            fim: tx.prepare_cached(
                "INSERT INTO fim_events (id, agent_key, time_ns, received_ns, path, change, before, after,
                    changed, moved_from, detected_by, seq, chain)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?,
            status: tx.prepare_cached(
                "INSERT INTO agent_status (id, agent_key, time_ns, received_ns, status)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?,
            json: Vec::with_capacity(256),
        })
    }

    /// Stores the `events` of a batch whose first event is number `id` as the block `id`, as the
    /// agent compressed them (`packed`): its log records get no row of their own.
    fn block(
        &mut self,
        id: i64,
        agent_key: i64,
        received_ns: i64,
        events: &[Event],
        packed: &PackedEvents,
    ) -> rusqlite::Result<()> {
        // The log records' count and time range, in one pass.
        let (logs, min, max) = events
            .iter()
            .filter_map(|e| match e {
                Event::Log(l) => Some(l.time_ns),
                _ => None,
            })
            .fold((0i64, i64::MAX, i64::MIN), |(n, lo, hi), t| {
                (n + 1, lo.min(t), hi.max(t))
            });
        let (min, max) = if logs == 0 { (0, 0) } else { (min, max) };
        self.log_block.execute(params![
            id,
            events.len() as i64,
            agent_key,
            logs,
            min,
            max,
            received_ns,
            packed.codec.code(),
            packed.raw_bytes,
            packed.data,
        ])?;
        Ok(())
    }

    /// Inserts one event as row `id`.
    fn insert(
        &mut self,
        id: i64,
        agent_key: i64,
        received_ns: i64,
        event: &Event,
    ) -> rusqlite::Result<()> {
        match event {
            Event::Metric(m) => {
                let series_id = self.series_id(agent_key, m)?;
                self.metric.execute(params![
                    id,
                    series_id,
                    m.time_ns,
                    received_ns,
                    super::metrics::bucket_of(received_ns),
                    m.value
                ])?;
            }
            Event::Log(l) => {
                let attributes = attributes_json(&mut self.json, &l.attributes)?;
                self.log.execute(params![
                    id,
                    agent_key,
                    l.time_ns,
                    received_ns,
                    l.source,
                    l.severity.map(severity_level),
                    l.body,
                    attributes,
                ])?;
            }
            Event::Fim(f) => {
                let before = f.before.as_ref().map(to_json).transpose()?;
                let after = f.after.as_ref().map(to_json).transpose()?;
                self.fim.execute(params![
                    id,
                    agent_key,
                    f.time_ns,
                    received_ns,
                    f.path,
                    fim_change_name(f.change),
                    before,
                    after,
                    changed_json(&f.changed)?,
                    f.moved_from,
                    fim_detection_name(f.detected_by),
                    f.seq.cast_signed(),
                    f.chain,
                ])?;
            }
            Event::Status(s) => {
                self.status
                    .execute(params![id, agent_key, s.time_ns, received_ns, to_json(s)?])?;
            }
        }
        Ok(())
    }
}

impl RowInserter<'_> {
    /// The id of the point's series, found in the caches, else in the table, else added.
    fn series_id(&mut self, agent_key: i64, m: &MetricPoint) -> rusqlite::Result<i64> {
        let attributes = attributes_json(&mut self.json, &m.attributes)?.unwrap_or("");
        let kind = metric_kind_name(m.kind);
        series_key(&mut self.key, agent_key, &m.name, attributes, &m.unit, kind);
        if let Some(&id) = self
            .series
            .get(self.key.as_str())
            .or_else(|| self.new_series.get(self.key.as_str()))
        {
            return Ok(id);
        }
        let row = params![agent_key, m.name, attributes, m.unit, kind];
        let id = match self
            .find_series
            .query_row(row, |r| r.get::<_, i64>(0))
            .optional()?
        {
            Some(id) => id,
            None => self.add_series.query_row(row, |r| r.get(0))?,
        };
        self.new_series.insert(self.key.clone(), id);
        Ok(id)
    }
}

/// The cache key of a metric series: its identity's fields, separated by a byte no name holds.
fn series_key(
    buf: &mut String,
    agent_key: i64,
    name: &str,
    attributes: &str,
    unit: &str,
    kind: &str,
) {
    use std::fmt::Write;
    buf.clear();
    let _ = write!(
        buf,
        "{agent_key}\u{1f}{name}\u{1f}{attributes}\u{1f}{unit}\u{1f}{kind}"
    );
}

fn stored_low_water(
    tx: &Transaction<'_>,
    (agent, spool): (i64, i64),
) -> rusqlite::Result<Option<u64>> {
    tx.prepare_cached("SELECT low_water_seq FROM spools WHERE agent_key = ?1 AND spool_id = ?2")?
        .query_row([agent, spool], |r| r.get::<_, i64>(0))
        .optional()
        .map(|lw| lw.map(i64::cast_unsigned))
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use outpost_common::event::{
        AgentStatus, DropCounters, EventKind, LogRecord, MetricKind, MetricPoint, Severity,
    };
    use proptest::prelude::*;
    use rusqlite::Connection;

    use super::*;
    use crate::store::CommitOutcome::{Duplicate, Stored};
    use crate::store::sqlite::SqliteStore;
    use crate::store::sqlite::test_support::*;
    use crate::store::testutil::*;
    use crate::store::{
        CPU_UTILIZATION as CPU, EventStore, FILESYSTEM_UTILIZATION as FILESYSTEM, Retention,
        StateStore,
    };

    #[test]
    fn a_batch_is_stored_once_per_agent_spool_and_seq() {
        let (_dir, store) = open();
        assert_eq!(commit(&store, &[logs("a", 1, 1, 3)]), vec![Stored]);
        // Resent in a later transaction: acknowledged again, stored once.
        assert_eq!(commit(&store, &[logs("a", 1, 1, 3)]), vec![Duplicate]);
        // The same seq from a new spool (the agent's spool was recreated) is new data, and so is
        // the same seq from another agent.
        assert_eq!(
            commit(&store, &[logs("a", 2, 1, 4), logs("b", 1, 1, 5)]),
            vec![Stored, Stored]
        );
        assert_eq!(count(&store, EventKind::Log, Some("a")), 7);
        assert_eq!(count(&store, EventKind::Log, Some("b")), 5);
        assert_eq!(count(&store, EventKind::Log, None), 12);
        assert_eq!(count(&store, EventKind::Log, Some("nobody")), 0);
    }

    #[test]
    fn outcomes_come_in_order_with_a_duplicate_inside_the_same_group() {
        let (_dir, store) = open();
        commit(&store, &[logs("a", 1, 1, 1)]);
        let group = [
            logs("a", 1, 2, 2),
            logs("a", 1, 1, 1), // stored by an earlier transaction
            logs("b", 1, 1, 3),
            logs("a", 1, 2, 2), // stored earlier in this same group
            logs("a", 1, 3, 4),
        ];
        assert_eq!(
            commit(&store, &group),
            vec![Stored, Duplicate, Stored, Duplicate, Stored]
        );
        assert_eq!(count(&store, EventKind::Log, Some("a")), 1 + 2 + 4);
        assert_eq!(count(&store, EventKind::Log, Some("b")), 3);
        assert!(commit(&store, &[]).is_empty());
    }

    #[test]
    fn every_kind_of_event_lands_in_its_table() {
        let (_dir, store) = open();
        let events = vec![
            metric(T0, 1.5),
            metric(T0, 2.5),
            log(T0, 10),
            fim(T0),
            status_event(T0),
        ];
        commit(&store, &[batch("a", 1, 1, events)]);
        for (kind, n) in [
            (EventKind::Metric, 2),
            (EventKind::Log, 1),
            (EventKind::Fim, 1),
            (EventKind::Status, 1),
        ] {
            assert_eq!(count(&store, kind, Some("a")), n, "{kind:?}");
        }
        let conn = Connection::open(store.path()).unwrap();
        let (attrs, severity): (String, i64) = conn
            .query_row("SELECT attributes, severity FROM logs", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(attrs, r#"{"unit":"sshd.service"}"#);
        assert_eq!(severity, 6);
        let (state, unit): (String, String) = conn
            .query_row(
                "SELECT json_extract(attributes, '$.state'), unit FROM metrics LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((state.as_str(), unit.as_str()), ("used", "By"));
    }

    /// Run as a child process by `committed_batches_survive_a_crash`: commits, then aborts
    /// without closing the database, as a killed process would.
    #[test]
    #[ignore = "runs as a child process of committed_batches_survive_a_crash"]
    fn crash_child() {
        let Some(path) = std::env::var_os(CRASH_DB_ENV) else {
            return;
        };
        let store = SqliteStore::open(Path::new(&path)).unwrap();
        commit(&store, &[logs("a", 1, 1, 10), logs("a", 1, 2, 10)]);
        std::process::abort();
    }

    const CRASH_DB_ENV: &str = "OUTPOST_TEST_CRASH_DB";

    #[test]
    fn committed_batches_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::sqlite::commit::tests::crash_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CRASH_DB_ENV, &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child should have aborted: {status}");

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(count(&store, EventKind::Log, Some("a")), 20);
        assert_eq!(
            commit(&store, &[logs("a", 1, 2, 10), logs("a", 1, 3, 1)]),
            vec![Duplicate, Stored]
        );
    }

    #[test]
    fn reopening_keeps_data_dedup_and_low_water() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            let mut b = logs("a", 1, 5, 2);
            b.low_water_seq = 4;
            commit(&store, &[b]);
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            commit(
                &store,
                &[logs("a", 1, 5, 2), logs("a", 1, 3, 2), logs("a", 1, 6, 2)]
            ),
            vec![Duplicate, Duplicate, Stored]
        );
        assert_eq!(count(&store, EventKind::Log, None), 4);
    }

    #[test]
    fn a_failed_group_stores_nothing_and_forgets_what_it_cached() {
        let (_dir, store) = open();
        commit(&store, &[logs("old", 1, 1, 1)]);
        let admin = Connection::open(store.path()).unwrap();
        admin
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON logs WHEN NEW.body = 'boom'
                 BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;",
            )
            .unwrap();
        // Uncompressed, so that the body the trigger looks for is in the row.
        let poison = unpacked_batch(
            "old",
            1,
            3,
            vec![Event::Log(LogRecord {
                time_ns: T0,
                source: "s".into(),
                severity: None,
                body: "boom".into(),
                attributes: vec![],
            })],
        );
        let mut fresh = logs("fresh", 9, 1, 2);
        fresh.low_water_seq = 1;
        let end = store.end().unwrap();
        let err = store
            .commit_batches(&[fresh.clone(), logs("old", 1, 2, 1), poison])
            .unwrap_err();
        // The ids of the rolled-back rows are handed out again.
        assert_eq!(store.end().unwrap(), end);
        let msg = err.to_string();
        assert!(msg.contains("committing 3 batches"), "{msg}");
        assert!(msg.contains("refused by test trigger"), "{msg}");
        assert_eq!(count(&store, EventKind::Log, None), 1);
        assert!(
            store
                .agents()
                .unwrap()
                .iter()
                .all(|a| a.agent_id != "fresh")
        );

        // Another agent takes the registry key the rolled-back one had; a stale cache would now
        // file "fresh"'s events under "other".
        record_heartbeat(&store, "other", &AgentStatus::default(), T0).unwrap();
        admin.execute_batch("DROP TRIGGER boom").unwrap();
        assert_eq!(
            commit(&store, &[fresh, logs("old", 1, 2, 1)]),
            vec![Stored, Stored]
        );
        assert_eq!(count(&store, EventKind::Log, Some("fresh")), 2);
        assert_eq!(count(&store, EventKind::Log, Some("other")), 0);
        assert_eq!(count(&store, EventKind::Log, Some("old")), 2);
    }

    #[test]
    fn odd_input_is_stored_without_panicking() {
        let (_dir, store) = open();
        let events = vec![
            metric(i64::MIN, f64::NAN),
            metric(i64::MAX, f64::INFINITY),
            metric(0, f64::NEG_INFINITY),
            Event::Log(LogRecord {
                time_ns: -1,
                source: String::new(),
                severity: Some(Severity::Emergency),
                body: "nul \0 inside, ünïcødé, \"quotes\" and \\".into(),
                attributes: vec![("k".into(), "1".into()), ("k".into(), "\0".into())],
            }),
            Event::Metric(MetricPoint {
                name: String::new(),
                unit: "{\0}".into(),
                attributes: vec![],
                time_ns: 0,
                value: -0.0,
                kind: MetricKind::Counter,
            }),
            Event::Status(AgentStatus {
                drops: DropCounters {
                    spool_full_evicted: u64::MAX,
                    ..DropCounters::default()
                },
                ..AgentStatus::default()
            }),
        ];
        let mut b = batch("", u64::MAX, u64::MAX, events);
        b.low_water_seq = u64::MAX;
        b.received_ns = i64::MIN;
        assert_eq!(commit(&store, &[b.clone()]), vec![Stored]);
        assert_eq!(commit(&store, &[b]), vec![Duplicate]);
        assert_eq!(count(&store, EventKind::Metric, Some("")), 4);
        for now in [i64::MIN, 0, i64::MAX] {
            let huge = Retention {
                metric: Duration::MAX,
                metric_chunk: Duration::MAX,
                log: Duration::ZERO,
                fim: Duration::MAX,
                status: Duration::ZERO,
            };
            store.enforce_retention(&huge, now).unwrap();
        }
        let status = AgentStatus {
            time_ns: i64::MIN,
            backlog_batches: u64::MAX,
            ..AgentStatus::default()
        };
        record_heartbeat(&store, "", &status, i64::MAX).unwrap();
        record_disconnect(&store, "", "\0", i64::MIN).unwrap();
        let agents = store.agents().unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].clock_skew_ns, Some(i64::MIN));
    }

    #[test]
    fn commits_keep_each_hosts_latest_cpu_memory_and_fullest_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).unwrap();
        let (t1, t2) = (T0 + secs(10), T0 + secs(20));
        commit(&store, &[logs("a", 1, 1, 1), logs("b", 1, 1, 1)]);
        assert_eq!(summary(&store, "a"), None);

        // Two collections in one transaction, the newer one first; and another agent.
        let newer = batch(
            "a",
            1,
            2,
            collection(t2, 0.75, 0.5, &[("/", 0.6), ("/var", 0.3)]),
        );
        let older = batch(
            "a",
            1,
            3,
            collection(t1, 0.1, 0.9, &[("/", 0.5), ("/var", 0.87)]),
        );
        let other = batch("b", 1, 2, collection(t1, 0.5, 0.2, &[("/data", 0.99)]));
        commit(&store, &[newer, older, other]);
        let latest = HostSummary {
            cpu_busy: Some((0.25, t2)),
            memory_used: Some((0.5, t2)),
            fullest_fs: Some(("/".to_owned(), 0.6, t2)),
        };
        assert_eq!(summary(&store, "a"), Some(latest.clone()));
        assert_eq!(
            summary(&store, "b").unwrap().fullest_fs,
            Some(("/data".to_owned(), 0.99, t1))
        );

        // In a later transaction: late points of the latest collection join it, older ones
        // and a resent batch change nothing.
        let late = batch(
            "a",
            1,
            4,
            vec![gauge(FILESYSTEM, &[("mountpoint", "/srv")], t2, 0.7)],
        );
        let stale = batch("a", 1, 5, collection(t1, 0.0, 1.0, &[("/home", 1.0)]));
        let resent = batch("a", 1, 2, collection(T0 + secs(99), 0.0, 1.0, &[]));
        assert_eq!(
            commit(&store, &[late, stale, resent]),
            vec![Stored, Stored, Duplicate]
        );
        let latest = HostSummary {
            fullest_fs: Some(("/srv".to_owned(), 0.7, t2)),
            ..latest
        };
        assert_eq!(summary(&store, "a"), Some(latest.clone()));

        // After a restart the stored summary is the base for the next commit.
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(summary(&store, "a"), Some(latest.clone()));
        let t3 = T0 + secs(30);
        commit(
            &store,
            &[batch(
                "a",
                1,
                6,
                vec![gauge(CPU, &[("state", "idle")], t3, 0.6)],
            )],
        );
        commit(
            &store,
            &[batch("a", 1, 7, collection(t1, 0.0, 1.0, &[("/x", 1.0)]))],
        );
        let cpu = summary(&store, "a").unwrap().cpu_busy.unwrap();
        assert_eq!(cpu.1, t3);
        assert!((cpu.0 - 0.4).abs() < 1e-9, "{cpu:?}");
        assert_eq!(
            summary(&store, "a").map(|s| (s.memory_used, s.fullest_fs)),
            Some((latest.memory_used, latest.fullest_fs))
        );
        // Registry updates leave the summary alone.
        record_hello(&store, "a", &hello(1, AgentStatus::default()), t3).unwrap();
        record_disconnect(&store, "a", "bye", t3).unwrap();
        assert_eq!(summary(&store, "a").unwrap().cpu_busy.unwrap().1, t3);
    }

    /// The FIM events of a trail, as events.
    fn fims(events: &[FimEvent]) -> Vec<Event> {
        events.iter().cloned().map(Event::Fim).collect()
    }

    /// Every recorded break: (agent, seq, kind, expected seq, path of its event).
    fn recorded_breaks(store: &SqliteStore) -> Vec<(String, u64, String, u64, String)> {
        let conn = Connection::open(store.path()).unwrap();
        let mut q = conn
            .prepare(
                "SELECT a.agent_id, b.seq, b.kind, b.expected_seq, f.path
                 FROM fim_trail_breaks b JOIN agents a USING (agent_key)
                 JOIN fim_events f ON f.id = b.event_id ORDER BY b.id",
            )
            .unwrap();
        q.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)?.cast_unsigned(),
                r.get(2)?,
                r.get::<_, i64>(3)?.cast_unsigned(),
                r.get(4)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// The stored trail position of an agent.
    fn stored_position(store: &SqliteStore, agent: &str) -> Option<(u64, String)> {
        Connection::open(store.path())
            .unwrap()
            .query_row(
                "SELECT t.seq, t.chain FROM fim_trails t JOIN agents a USING (agent_key)
                 WHERE a.agent_id = ?1",
                [agent],
                |r| Ok((r.get::<_, i64>(0)?.cast_unsigned(), r.get(1)?)),
            )
            .optional()
            .unwrap()
    }

    /// The breaks told by log records, as (agent, kind, seq) from their attributes.
    fn trail_notices(store: &SqliteStore) -> Vec<(String, String, String)> {
        let query = crate::store::EventQuery {
            kind: Some(EventKind::Log),
            ..crate::store::EventQuery::default()
        };
        let attr = |l: &LogRecord, k: &str| {
            l.attributes
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        store
            .events(&query)
            .unwrap()
            .events
            .into_iter()
            .filter_map(|e| match e.event {
                Event::Log(l) if l.source == fim_trail::NOTICE_SOURCE => {
                    assert_eq!(l.severity, Some(Severity::Critical), "{l:?}");
                    assert!(l.body.contains(&e.agent_id), "{l:?}");
                    Some((e.agent_id, attr(&l, "kind"), attr(&l, "seq")))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fim_trail_intact_records_nothing_and_ends_where_it_was_received() {
        let (_dir, store) = open();
        let t = fim_trail::chained::trail(5);
        let answers = store
            .commit_batches(&[
                batch("a", 1, 1, fims(&t[..2])),
                batch("a", 1, 2, vec![log(T0, 3), Event::Fim(t[2].clone())]),
                batch("b", 1, 1, fims(&t[..1])),
                batch("a", 1, 3, fims(&t[3..])),
            ])
            .unwrap();
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, BatchCommit::Stored { notices, .. } if notices.is_empty())),
            "{answers:?}"
        );
        assert_eq!(recorded_breaks(&store), []);
        assert_eq!(stored_position(&store, "a"), Some((5, t[4].chain.clone())));
        assert_eq!(stored_position(&store, "b"), Some((1, t[0].chain.clone())));
    }

    #[test]
    fn fim_trail_each_kind_of_break_is_stored_recorded_logged_and_told_once() {
        let (_dir, store) = open();
        let t = fim_trail::chained::trail(8);
        let mut edited = t[2].clone();
        edited.path = "/etc/shadow".to_owned();
        let mut reset = fim_trail::chained::unchained(1, "/etc/hosts");
        reset.chain =
            outpost_common::event::chain_hash(outpost_common::event::CHAIN_GENESIS, &reset);
        let batches = [
            oldest_batch("a", 1, 1, fims(&t[..2])),
            // 3 altered on the way; 4 follows 3 as the agent chained it.
            oldest_batch(
                "a",
                1,
                2,
                vec![Event::Fim(edited), Event::Fim(t[3].clone())],
            ),
            // 5 and 6 lost.
            oldest_batch("a", 1, 3, fims(&t[6..7])),
            // 2 sent again, inside a batch that is itself new.
            oldest_batch("a", 1, 4, vec![log(T0, 1), Event::Fim(t[1].clone())]),
            // 8 follows 7: the replay left the trail where it was.
            oldest_batch("a", 1, 5, fims(&t[7..8])),
        ];
        let answers = store.commit_batches(&batches).unwrap();
        // The agent's state wiped, in a later commit.
        let wiped = store
            .commit_batches(&[oldest_batch("a", 1, 6, vec![Event::Fim(reset.clone())])])
            .unwrap();

        let expected = [
            (
                "a".to_owned(),
                3,
                "edit".to_owned(),
                3,
                "/etc/shadow".to_owned(),
            ),
            ("a".to_owned(), 7, "gap".to_owned(), 5, "/etc/f7".to_owned()),
            (
                "a".to_owned(),
                2,
                "replay".to_owned(),
                8,
                "/etc/f2".to_owned(),
            ),
            (
                "a".to_owned(),
                1,
                "reset".to_owned(),
                9,
                "/etc/hosts".to_owned(),
            ),
        ];
        assert_eq!(recorded_breaks(&store), expected);
        // Every event is stored, broken or not.
        assert_eq!(
            count(&store, EventKind::Fim, Some("a")),
            2 + 2 + 1 + 1 + 1 + 1
        );
        let told: Vec<_> = expected
            .iter()
            .map(|(agent, seq, kind, ..)| (agent.clone(), kind.clone(), seq.to_string()))
            .collect();
        assert_eq!(trail_notices(&store), told);
        assert_eq!(stored_position(&store, "a"), Some((1, reset.chain.clone())));

        // Each batch's notices follow its own events, and the next batch's cursors follow them.
        let notices: Vec<usize> = answers
            .iter()
            .chain(&wiped)
            .map(|a| match a {
                BatchCommit::Stored { notices, .. } => notices.len(),
                BatchCommit::Duplicate => panic!("{a:?}"),
            })
            .collect();
        assert_eq!(notices, [0, 1, 1, 1, 0, 1]);
        let starts: Vec<Cursor> = answers
            .iter()
            .map(|a| match a {
                BatchCommit::Stored { start, .. } => *start,
                BatchCommit::Duplicate => unreachable!(),
            })
            .collect();
        for (i, b) in batches.iter().enumerate().skip(1) {
            let previous = starts[i - 1].advance(batches[i - 1].events.len() + notices[i - 1]);
            assert_eq!(starts[i], previous, "batch {} ({b:?})", i + 1);
        }
        let BatchCommit::Stored { notices, .. } = &answers[2] else {
            unreachable!()
        };
        let stored_notice = store
            .events(&crate::store::EventQuery {
                from: starts[2].advance(1),
                limit: 1,
                ..crate::store::EventQuery::default()
            })
            .unwrap()
            .events;
        assert_eq!(stored_notice[0].event, notices[0]);
        let Event::Log(l) = &notices[0] else {
            panic!("{notices:?}")
        };
        assert!(
            l.body.contains("gap") && l.body.contains("2 events missing"),
            "{l:?}"
        );
        assert!(
            l.attributes
                .contains(&("expected_seq".to_owned(), "5".to_owned())),
            "{l:?}"
        );
    }

    #[test]
    fn fim_trail_is_left_alone_by_a_duplicate_batch() {
        let (_dir, store) = open();
        let t = fim_trail::chained::trail(3);
        let first = oldest_batch("a", 1, 1, fims(&t[..2]));
        commit(&store, std::slice::from_ref(&first));
        let position = stored_position(&store, "a");
        // Sent again, alone and beside a new batch in one group: acknowledged, nothing checked.
        assert_eq!(
            commit(&store, std::slice::from_ref(&first)),
            vec![Duplicate]
        );
        let next = oldest_batch("a", 1, 2, fims(&t[2..]));
        assert_eq!(
            commit(&store, &[first.clone(), next.clone(), next]),
            vec![Duplicate, Stored, Duplicate]
        );
        assert_eq!(recorded_breaks(&store), []);
        assert_eq!(trail_notices(&store), []);
        assert_ne!(stored_position(&store, "a"), position);
        assert_eq!(stored_position(&store, "a"), Some((3, t[2].chain.clone())));
        assert_eq!(count(&store, EventKind::Fim, Some("a")), 3);
    }

    #[test]
    fn fim_trail_survives_reopening_and_a_failed_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let t = fim_trail::chained::trail(6);
        {
            let store = SqliteStore::open(&path).unwrap();
            commit(&store, &[oldest_batch("a", 1, 1, fims(&t[..3]))]);
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(stored_position(&store, "a"), Some((3, t[2].chain.clone())));
        // A commit that fails moves neither the stored nor the cached trail.
        let admin = Connection::open(&path).unwrap();
        admin
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON fim_events
                 BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;",
            )
            .unwrap();
        let poisoned = oldest_batch("a", 1, 2, vec![Event::Fim(t[3].clone()), log(T0, 1)]);
        store.commit_batches(&[poisoned]).unwrap_err();
        admin.execute_batch("DROP TRIGGER boom").unwrap();
        assert_eq!(stored_position(&store, "a"), Some((3, t[2].chain.clone())));
        // After the restart and the failure, 4 still follows 3, and 6 after it is a gap.
        commit(&store, &[oldest_batch("a", 1, 2, fims(&t[3..4]))]);
        assert_eq!(recorded_breaks(&store), []);
        commit(&store, &[oldest_batch("a", 1, 3, fims(&t[5..6]))]);
        assert_eq!(
            recorded_breaks(&store),
            [("a".to_owned(), 6, "gap".to_owned(), 5, "/etc/f6".to_owned())]
        );
    }

    #[test]
    fn fim_trail_batches_stored_out_of_order_across_commits_and_restarts_break_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let t = fim_trail::chained::trail(8);
        // Batches 1..3 in flight at once (low-water 1): 3 is stored first, then the aggregator
        // restarts, then 2, then 1 sent again after a reconnect.
        let in_flight = |seq, events: &[FimEvent]| IncomingBatch {
            low_water_seq: 1,
            ..batch("a", 1, seq, fims(events))
        };
        {
            let store = SqliteStore::open(&path).unwrap();
            commit(&store, &[in_flight(3, &t[4..6])]);
            assert_eq!(stored_position(&store, "a"), None);
        }
        let store = SqliteStore::open(&path).unwrap();
        commit(&store, &[in_flight(2, &t[2..4])]);
        commit(&store, &[in_flight(1, &t[..2])]);
        assert_eq!(recorded_breaks(&store), []);
        assert_eq!(stored_position(&store, "a"), Some((6, t[5].chain.clone())));
        // Held again across a restart, then given up when the mark passes the missing batch.
        commit(&store, &[in_flight(5, &t[7..8])]);
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        commit(&store, &[oldest_batch("a", 1, 6, vec![log(T0, 1)])]);
        assert_eq!(
            recorded_breaks(&store),
            [("a".to_owned(), 8, "gap".to_owned(), 7, "/etc/f8".to_owned())]
        );
        assert_eq!(trail_notices(&store).len(), 1);
        assert_eq!(count(&store, EventKind::Fim, Some("a")), 7);
    }

    #[derive(Debug, Clone)]
    enum Action {
        Commit(Vec<(usize, u64, u64, u64, usize)>),
        Prune,
        Reopen,
    }

    fn arb_action() -> impl Strategy<Value = Action> {
        prop_oneof![
            4 => prop::collection::vec((0usize..2, 0u64..2, 0u64..6, 0u64..5, 0usize..3), 1..5)
                .prop_map(Action::Commit),
            1 => Just(Action::Prune),
            1 => Just(Action::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Random commits, prunes and restarts against a model of exactly-once storage.
        #[test]
        fn the_store_matches_a_model_of_exactly_once(actions in prop::collection::vec(arb_action(), 1..12)) {
            const AGENTS: [&str; 2] = ["a", "b"];
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.db");
            let mut store = SqliteStore::open(&path).unwrap();
            let mut stored: HashSet<(usize, u64, u64)> = HashSet::new();
            let mut low: HashMap<(usize, u64), u64> = HashMap::new();
            let mut events = [0u64; 2];
            for action in actions {
                match action {
                    Action::Commit(group) => {
                        let batches: Vec<_> = group
                            .iter()
                            .map(|&(a, spool, seq, lw, n)| {
                                let mut b = logs(AGENTS[a], spool, seq, n);
                                b.low_water_seq = lw;
                                b
                            })
                            .collect();
                        let mut expected = Vec::new();
                        for &(a, spool, seq, lw, n) in &group {
                            let floor = low.get(&(a, spool)).copied();
                            if floor.is_some_and(|f| seq < f) || !stored.insert((a, spool, seq)) {
                                expected.push(Duplicate);
                            } else {
                                events[a] += n as u64;
                                low.insert((a, spool), floor.unwrap_or(0).max(lw));
                                expected.push(Stored);
                            }
                        }
                        prop_assert_eq!(commit(&store, &batches), expected);
                    }
                    Action::Prune => {
                        store.enforce_retention(&Retention::default(), T0).unwrap();
                    }
                    Action::Reopen => {
                        drop(store);
                        store = SqliteStore::open(&path).unwrap();
                    }
                }
                for (i, agent) in AGENTS.iter().enumerate() {
                    prop_assert_eq!(count(&store, EventKind::Log, Some(agent)), events[i]);
                }
            }
        }
    }

    #[test]
    #[ignore = "benchmark; run with --release -- --ignored --nocapture"]
    fn throughput_of_200_byte_log_events() {
        const BATCH: usize = 1000;
        const PER_TXN: usize = 10;
        const TXNS: usize = 100;
        let (_dir, store) = open();
        let size = outpost_common::wire::encode_events(&[bench_event(0)])
            .unwrap()
            .len();
        let groups: Vec<Vec<IncomingBatch>> = (0..TXNS)
            .map(|t| {
                (0..PER_TXN)
                    .map(|b| bench_batch("bench", (t * PER_TXN + b) as u64, BATCH))
                    .collect()
            })
            .collect();
        let started = Instant::now();
        for group in &groups {
            commit(&store, group);
        }
        let elapsed = started.elapsed();
        let n = (TXNS * PER_TXN * BATCH) as u64;
        assert_eq!(count(&store, EventKind::Log, None), n);
        println!(
            "{n} log events of {size} bytes, {BATCH} a batch, {PER_TXN} batches a transaction: \
             {:.0} events/s ({:.1} ms per transaction)",
            n as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1000.0 / TXNS as f64
        );
    }
}
