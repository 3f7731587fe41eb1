//! Retention: old events go in chunks, from the low end of each table, and deduplication
//! entries go once no resend can need them.

use outpost_common::event::EventKind;
use outpost_common::time::duration_ns;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, stored_table};
use crate::store::{Retention, RetentionReport, StoreError};

/// Rows one retention transaction deletes at most; small enough that a waiting commit is held
/// up by milliseconds only.
const RETENTION_CHUNK_ROWS: i64 = 5_000;

/// Log blocks deleted per transaction at most: each holds a batch, up to a few thousand records.
const RETENTION_CHUNK_BLOCKS: i64 = 16;

impl SqliteStore {
    /// One retention pass ([`crate::store::EventStore::enforce_retention`]).
    pub(super) fn enforce(
        &self,
        retention: &Retention,
        now_ns: i64,
    ) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        self.compact_metrics(
            chunk_boundary(now_ns, retention),
            duration_ns(retention.metric_chunk).max(1),
            &mut report,
        )?;
        for kind in EventKind::ALL {
            let cutoff = now_ns.saturating_sub(duration_ns(retention.for_kind(kind)));
            self.expire(kind, cutoff, &mut report)?;
            if kind == EventKind::Metric {
                self.expire_metric_chunks(cutoff, &mut report)?;
            }
        }
        let stale_before = now_ns.saturating_sub(duration_ns(retention.longest()));
        self.prune_dedup(stale_before, &mut report)?;
        Ok(report)
    }

    /// Deletes the rows of `kind` received before `cutoff_ns`, a chunk per transaction (for
    /// metrics, the head's rows).
    fn expire(
        &self,
        kind: EventKind,
        cutoff_ns: i64,
        report: &mut RetentionReport,
    ) -> Result<(), StoreError> {
        let table = stored_table(kind);
        let context = || format!("expiring {table} received before {cutoff_ns}");
        let cut = {
            let state = self.lock_for_retention();
            last_id_received_before(&state.conn, table, cutoff_ns)
                .map_err(|e| StoreError::backend(context(), e))?
        };
        if kind == EventKind::Log {
            self.expire_log_blocks(cutoff_ns, report)?;
        }
        let Some(cut) = cut else { return Ok(()) };
        let sql = format!(
            "DELETE FROM {table} WHERE id <= min((SELECT min(id) FROM {table}) + ?2 - 1, ?1)"
        );
        loop {
            let state = self.lock_for_retention();
            let deleted = state
                .conn
                .prepare_cached(&sql)
                .and_then(|mut s| s.execute(params![cut, RETENTION_CHUNK_ROWS]))
                .map_err(|e| StoreError::backend(context(), e))?;
            drop(state);
            if deleted == 0 {
                break;
            }
            report.chunks += 1;
            report.add_deleted(kind, deleted as u64);
        }
        Ok(())
    }

    /// Deletes the log blocks received before `cutoff_ns` (every event of a block was received
    /// at once), a few per transaction, counting their log records.
    fn expire_log_blocks(
        &self,
        cutoff_ns: i64,
        report: &mut RetentionReport,
    ) -> Result<(), StoreError> {
        let context = || format!("expiring log blocks received before {cutoff_ns}");
        loop {
            let state = self.lock_for_retention();
            // Receive times grow with ids, so the oldest blocks come first.
            let logs: Vec<i64> = state
                .conn
                .prepare_cached(
                    "DELETE FROM log_blocks WHERE id IN (
                        SELECT id FROM log_blocks WHERE received_ns < ?1 ORDER BY id LIMIT ?2)
                     RETURNING logs",
                )
                .and_then(|mut s| {
                    s.query_map(params![cutoff_ns, RETENTION_CHUNK_BLOCKS], |r| r.get(0))?
                        .collect()
                })
                .map_err(|e| StoreError::backend(context(), e))?;
            drop(state);
            if logs.is_empty() {
                return Ok(());
            }
            report.chunks += 1;
            report.add_deleted(EventKind::Log, logs.iter().sum::<i64>().cast_unsigned());
        }
    }

    /// Forgets deduplication entries below each spool's low-water mark, and all entries of
    /// spools that were replaced and have sent nothing since `stale_before_ns`.
    fn prune_dedup(
        &self,
        stale_before_ns: i64,
        report: &mut RetentionReport,
    ) -> Result<(), StoreError> {
        let context = "pruning deduplication entries";
        let (spools, stale) = {
            let state = self.lock_for_retention();
            spools_to_prune(&state.conn, stale_before_ns)
                .map_err(|e| StoreError::backend(context, e))?
        };
        for (agent_key, spool_id, low_water) in spools {
            for (lo, hi) in seq_ranges_below(low_water) {
                self.delete_seq_range(agent_key, spool_id, lo, hi, report)?;
            }
        }
        for (agent_key, spool_id) in stale {
            self.delete_seq_range(agent_key, spool_id, i64::MIN, i64::MAX, report)?;
            let mut state = self.lock_for_retention();
            state
                .conn
                .execute(
                    "DELETE FROM spools WHERE agent_key = ?1 AND spool_id = ?2",
                    params![agent_key, spool_id],
                )
                .map_err(|e| StoreError::backend(context, e))?;
            state.low_water.remove(&(agent_key, spool_id));
        }
        Ok(())
    }

    /// Deletes the dedup entries of one spool with a stored `seq` in `lo..=hi`, a chunk at a time.
    fn delete_seq_range(
        &self,
        agent_key: i64,
        spool_id: i64,
        lo: i64,
        hi: i64,
        report: &mut RetentionReport,
    ) -> Result<(), StoreError> {
        const SQL: &str = "DELETE FROM batches
            WHERE agent_key = ?1 AND spool_id = ?2 AND seq >= ?3 AND seq <= coalesce(
                (SELECT seq FROM batches
                 WHERE agent_key = ?1 AND spool_id = ?2 AND seq >= ?3 AND seq <= ?4
                 ORDER BY seq LIMIT 1 OFFSET ?5),
                ?4)";
        let context = || {
            format!(
                "pruning deduplication entries of spool {} (agent key {agent_key})",
                spool_id.cast_unsigned()
            )
        };
        let chunk = params![agent_key, spool_id, lo, hi, RETENTION_CHUNK_ROWS - 1];
        loop {
            let state = self.lock_for_retention();
            let deleted = state
                .conn
                .prepare_cached(SQL)
                .and_then(|mut s| s.execute(chunk))
                .map_err(|e| StoreError::backend(context(), e))?;
            drop(state);
            if deleted == 0 {
                return Ok(());
            }
            report.chunks += 1;
            report.dedup_entries += deleted as u64;
            if (deleted as i64) < RETENTION_CHUNK_ROWS {
                return Ok(());
            }
        }
    }
}

/// The receive time before which metric points are packed: the start of the current span of
/// [`Retention::metric_chunk`], a minute late (or a span, if shorter), so batches already
/// received and still on their way to a commit land before their span is packed.
fn chunk_boundary(now_ns: i64, retention: &Retention) -> i64 {
    const GRACE_NS: i64 = 60_000_000_000;
    let span = duration_ns(retention.metric_chunk).max(1);
    let late = now_ns.saturating_sub(GRACE_NS.min(span));
    late.saturating_sub(late.rem_euclid(span))
}

/// Spools with their low-water marks (those above zero), and the replaced spools silent since
/// `stale_before_ns`: those of agents whose latest Hello named another spool. An agent that never
/// said Hello replaced none, so its spools keep their entries.
#[allow(clippy::type_complexity)] // two plain lists of keys; a struct would only rename them
fn spools_to_prune(
    conn: &Connection,
    stale_before_ns: i64,
) -> rusqlite::Result<(Vec<(i64, i64, u64)>, Vec<(i64, i64)>)> {
    let marks = conn
        .prepare_cached(
            "SELECT agent_key, spool_id, low_water_seq FROM spools WHERE low_water_seq != 0",
        )?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.cast_unsigned()))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let stale = conn
        .prepare_cached(
            "SELECT s.agent_key, s.spool_id FROM spools s JOIN agents a USING (agent_key)
             WHERE s.last_batch_ns < ?1 AND a.spool_id != s.spool_id",
        )?
        .query_map([stale_before_ns], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((marks, stale))
}

/// The stored (signed) ranges, inclusive, that hold exactly the `u64` sequence numbers below
/// `low`. Stored values are the `u64` bits read as `i64`, so numbers from 2^63 up are negative.
fn seq_ranges_below(low: u64) -> Vec<(i64, i64)> {
    let stored = low.cast_signed();
    match stored {
        0 => Vec::new(),
        1.. => vec![(0, stored - 1)],
        i64::MIN => vec![(0, i64::MAX)],
        _ => vec![(0, i64::MAX), (i64::MIN, stored - 1)],
    }
}

/// The highest `id` of `table` whose row was received before `cutoff_ns`, by binary search on
/// `id` (see the module's invariants): O(log n) probes of the rowid B-tree, no time index.
pub(super) fn last_id_received_before(
    conn: &Connection,
    table: &str,
    cutoff_ns: i64,
) -> rusqlite::Result<Option<i64>> {
    let mut probe = conn.prepare_cached(&format!(
        "SELECT id, received_ns FROM {table} WHERE id >= ?1 ORDER BY id LIMIT 1"
    ))?;
    let mut first_at = |id: i64| -> rusqlite::Result<Option<(i64, i64)>> {
        probe
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    };
    let Some((first_id, first_received)) = first_at(i64::MIN)? else {
        return Ok(None);
    };
    if first_received >= cutoff_ns {
        return Ok(None);
    }
    let last_id: i64 = conn.query_row(&format!("SELECT max(id) FROM {table}"), [], |r| r.get(0))?;
    // Invariant: the row at `lo` was received before the cut-off; every row at or above `hi` was
    // received at or after it.
    let (mut lo, mut hi) = (first_id, last_id.saturating_add(1));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match first_at(mid)? {
            Some((id, received)) if received < cutoff_ns => lo = id,
            _ => hi = mid,
        }
    }
    Ok(Some(lo))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use outpost_common::event::AgentStatus;
    use proptest::prelude::*;

    use super::*;
    use crate::store::CommitOutcome::{Duplicate, Stored};
    use crate::store::sqlite::schema::SCHEMA_V1;
    use crate::store::sqlite::test_support::*;
    use crate::store::testutil::*;
    use crate::store::{EventStore, IncomingBatch};

    #[test]
    fn retention_deletes_only_old_rows_of_each_kind() {
        let (_dir, store) = open();
        let day = secs(86_400);
        let all_kinds = |t, fim| vec![metric(t, 1.0), log(t, 5), fim, status_event(t)];
        let first = fim(T0);
        let second = fim_next(&first, T0 + 20 * day);
        let mut old = batch("a", 1, 1, all_kinds(T0, first));
        old.received_ns = T0;
        let mut new = batch("a", 1, 2, all_kinds(T0 + 20 * day, second));
        new.received_ns = T0 + 20 * day;
        commit(&store, &[old, new]);

        // 20 days later: older than the log (14 d) and status (7 d) periods, not the metric
        // (30 d) or file-integrity (365 d) ones.
        let now = T0 + 20 * day + secs(1);
        let report = store.enforce_retention(&Retention::default(), now).unwrap();
        assert_eq!(
            (report.metric, report.log, report.fim, report.status),
            (0, 1, 0, 1)
        );
        assert_eq!(report.deleted_events(), 2);
        for (kind, left) in [
            (EventKind::Metric, 2),
            (EventKind::Log, 1),
            (EventKind::Fim, 2),
            (EventKind::Status, 1),
        ] {
            assert_eq!(count(&store, kind, None), left, "{kind:?}");
        }
        // A second pass finds nothing more.
        assert_eq!(
            store
                .enforce_retention(&Retention::default(), now)
                .unwrap()
                .deleted_events(),
            0
        );
    }

    #[test]
    fn retention_works_in_chunks_up_to_the_cut_off() {
        let (_dir, store) = open();
        let n = 2 * RETENTION_CHUNK_ROWS as usize + 10;
        // Rows, in chunks of rows, and blocks, in chunks of blocks.
        let mut old: Vec<IncomingBatch> = (0..n / 1000 + 1)
            .map(|i| logs("a", 1, i as u64, 1000))
            .collect();
        let blocks = 2 * RETENTION_CHUNK_BLOCKS as usize + 1;
        old.extend((0..blocks).map(|i| logs("a", 2, i as u64, 10)));
        for (i, b) in old.iter_mut().enumerate() {
            b.received_ns = T0 + i as i64;
            if b.spool_id == 1 {
                b.packed = None;
            }
        }
        let old_events: usize = old.iter().map(|b| b.events.len()).sum();
        commit(&store, &old);
        let mut new = logs("a", 1, 1000, 7);
        new.received_ns = T0 + secs(3600);
        commit(&store, &[new]);

        let one_hour = Retention {
            log: Duration::from_secs(3600),
            ..Retention::default()
        };
        let report = store
            .enforce_retention(&one_hour, T0 + secs(3600) + secs(3599))
            .unwrap();
        assert_eq!(report.log, old_events as u64);
        assert!(report.chunks >= 3 + 3, "{report:?}");
        assert_eq!(count(&store, EventKind::Log, None), 7);
    }

    #[test]
    fn receive_times_never_go_backwards_so_retention_keeps_newer_rows() {
        let (_dir, store) = open();
        let mut first = logs("a", 1, 1, 1);
        first.received_ns = T0 + secs(10);
        // The aggregator's clock stepped back before the second batch arrived.
        let mut second = logs("a", 1, 2, 1);
        second.received_ns = T0;
        commit(&store, &[first]);
        commit(&store, &[second]);

        let ten_s = Retention {
            log: Duration::from_secs(10),
            ..Retention::default()
        };
        // Cut-off T0 + 5 s: the second row counts as received at T0 + 10 s, like the first.
        let report = store.enforce_retention(&ten_s, T0 + secs(15)).unwrap();
        assert_eq!(report.log, 0);
        let report = store.enforce_retention(&ten_s, T0 + secs(21)).unwrap();
        assert_eq!(report.log, 2);
    }

    #[test]
    fn dedup_entries_below_the_low_water_mark_are_pruned_and_stay_duplicates() {
        let (_dir, store) = open();
        for seq in 1..=5 {
            commit(&store, &[logs("a", 7, seq, 1)]);
        }
        let mut sixth = logs("a", 7, 6, 1);
        sixth.low_water_seq = 4;
        commit(&store, &[sixth]);
        commit(&store, &[logs("b", 7, 1, 1)]);

        let report = store
            .enforce_retention(&Retention::default(), T0 + secs(1))
            .unwrap();
        assert_eq!(report.dedup_entries, 3);
        assert_eq!(
            dedup_rows(&store),
            vec![
                ("a".into(), 7, 4),
                ("a".into(), 7, 5),
                ("a".into(), 7, 6),
                ("b".into(), 7, 1)
            ]
        );
        // Resent after pruning: still recognised, by the low-water mark.
        assert_eq!(
            commit(
                &store,
                &[logs("a", 7, 2, 1), logs("a", 7, 5, 1), logs("a", 7, 7, 1)]
            ),
            vec![Duplicate, Duplicate, Stored]
        );
        assert_eq!(count(&store, EventKind::Log, Some("a")), 7);
    }

    #[test]
    fn dedup_entries_of_a_replaced_spool_go_once_its_data_has_expired() {
        let (_dir, store) = open();
        record_hello(&store, "a", &hello(1, AgentStatus::default()), T0).unwrap();
        commit(&store, &[logs("a", 1, 1, 1), logs("a", 1, 2, 1)]);
        // The agent's spool was recreated.
        record_hello(&store, "a", &hello(2, AgentStatus::default()), T0).unwrap();
        let mut current = logs("a", 2, 1, 1);
        current.received_ns = T0;
        commit(&store, &[current]);

        let retention = Retention::default();
        let before_expiry = T0 + duration_ns(retention.longest());
        let report = store.enforce_retention(&retention, before_expiry).unwrap();
        assert_eq!(report.dedup_entries, 0);

        let report = store
            .enforce_retention(&retention, before_expiry + 1)
            .unwrap();
        assert_eq!(report.dedup_entries, 2);
        // The current spool keeps its entry even though it is as old.
        assert_eq!(dedup_rows(&store), vec![("a".into(), 2, 1)]);
    }

    #[test]
    fn dedup_entries_of_a_spool_never_replaced_stay_past_the_longest_period() {
        let (_dir, store) = open();
        // Batches without a Hello: the registry names no spool of the agent.
        commit(&store, &[logs("a", 1, 1, 1), logs("a", 1, 2, 1)]);
        let retention = Retention::default();
        let long_after = T0 + duration_ns(retention.longest()) + secs(86_400);
        let report = store.enforce_retention(&retention, long_after).unwrap();
        assert_eq!((report.log, report.dedup_entries), (2, 0));
        assert_eq!(
            dedup_rows(&store),
            vec![("a".into(), 1, 1), ("a".into(), 1, 2)]
        );
        assert_eq!(
            commit(&store, &[logs("a", 1, 1, 1), logs("a", 1, 2, 1)]),
            vec![Duplicate, Duplicate]
        );
        assert_eq!(count(&store, EventKind::Log, None), 0);
    }

    /// The ids of a table holding rows `(id, received_ns)`, in memory.
    fn table_with(rows: &[(i64, i64)]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        for &(id, received) in rows {
            conn.execute(
                "INSERT INTO logs (id, agent_key, time_ns, received_ns, source, body)
                 VALUES (?1, 1, 0, ?2, '', '')",
                [id, received],
            )
            .unwrap();
        }
        conn
    }

    proptest! {
        #[test]
        fn seq_ranges_hold_exactly_the_seqs_below(low in any::<u64>(), seq in any::<u64>()) {
            let stored = seq.cast_signed();
            let inside = seq_ranges_below(low)
                .iter()
                .any(|&(lo, hi)| lo <= stored && stored <= hi);
            prop_assert_eq!(inside, seq < low);
        }

        #[test]
        fn binary_search_finds_the_last_row_before_the_cut_off(
            steps in prop::collection::vec((1i64..4, 0i64..3), 0..60),
            first_id in -5i64..5,
            cutoff in 0i64..100,
        ) {
            // Ids with gaps, receive times non-decreasing.
            let mut rows = Vec::new();
            let (mut id, mut received) = (first_id, 0);
            for (gap, later) in steps {
                id += gap;
                received += later;
                rows.push((id, received));
            }
            let conn = table_with(&rows);
            let expected = rows.iter().filter(|r| r.1 < cutoff).map(|r| r.0).max();
            prop_assert_eq!(last_id_received_before(&conn, "logs", cutoff).unwrap(), expected);
        }
    }
}
