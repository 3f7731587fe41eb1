//! The embedded store: one SQLite database in WAL mode under the data directory.
//!
//! # Layout
//!
//! - `agents`: the registry, one row per agent, keyed by a small integer (`agent_key`) that the
//!   data tables use instead of repeating the agent's text id on every row. It also holds each
//!   host's latest CPU, memory and fullest filesystem ([`HostSummary`]), kept up to date by
//!   `commit_batches` so fleet status never scans the metrics table.
//! - `spools`: per `(agent, spool)`, the highest low-water mark seen and when the last batch came.
//! - `batches`: the deduplication keys `(agent_key, spool_id, seq)`, `WITHOUT ROWID` so the key
//!   *is* the table.
//! - `metrics`, `logs`, `fim_events`, `agent_status`: one row per event, with the agent, the
//!   event's own time and the receive time. Attributes and nested values are JSON text, so they
//!   can be queried with SQLite's JSON functions.
//!
//! # Invariants
//!
//! - Within each data table, `id` (the rowid) grows with `received_ns`: the store clamps
//!   `received_ns` to never go below the last stored value, and retention deletes only from the
//!   low end. Retention therefore finds its cut-off by binary search on `id` and deletes a prefix,
//!   with no index on time at all: an insert touches one B-tree per row, which is what makes
//!   group commits of hundreds of thousands of events a second possible.
//! - `u64` values (spool ids, sequence numbers) are stored bit-for-bit as SQLite's signed
//!   integers, so identity is preserved for every value; comparisons that need unsigned order are
//!   done in Rust ([`seq_ranges_below`]).
//! - Every write holds one mutex around one connection; readers (`agents`, `count_events`) use a
//!   second, read-only connection, so status queries never wait for a commit.
//!
//! # Durability
//!
//! `synchronous=FULL`: in WAL mode every commit is fsynced before it returns, so an acknowledged
//! batch survives power loss, not only a crashed process. Group commit amortises the fsync over
//! every batch in the transaction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use outpost_common::event::{
    AgentStatus, Attributes, DropCounters, DropReason, Event, EventKind, FimChange, HostFacts,
    MetricKind, Severity,
};
use outpost_common::time::duration_ns;
use outpost_common::wire::Hello;
use rusqlite::types::Type;
use rusqlite::{
    CachedStatement, Connection, OpenFlags, OptionalExtension, Row, Transaction,
    TransactionBehavior, params,
};
use serde::Serialize;
use serde::ser::SerializeMap;

use super::{
    AgentRecord, CommitOutcome, HostSummary, IncomingBatch, Retention, RetentionReport, Store,
    StoreError,
};

/// Rows one retention transaction deletes at most; small enough that a waiting commit is held
/// up by milliseconds only.
const RETENTION_CHUNK_ROWS: i64 = 5_000;

/// How long a connection waits for a lock held by another process (a backup tool, the sqlite3
/// shell) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; `PRAGMA user_version` counts how many have been applied.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2_HOST_SUMMARY, SCHEMA_V3_METRIC_UNIT];

const SCHEMA_V1: &str = "
CREATE TABLE agents (
    agent_key               INTEGER PRIMARY KEY,
    agent_id                TEXT NOT NULL UNIQUE,
    spool_id                INTEGER,
    first_seen_ns           INTEGER NOT NULL,
    last_seen_ns            INTEGER NOT NULL,
    agent_version           TEXT,
    hostname                TEXT,
    os                      TEXT,
    kernel                  TEXT,
    arch                    TEXT,
    cpus                    INTEGER,
    memory_bytes            INTEGER,
    boot_time_ns            INTEGER,
    connected               INTEGER NOT NULL DEFAULT 0,
    last_disconnect_ns      INTEGER,
    last_disconnect_reason  TEXT,
    status                  TEXT,    -- latest AgentStatus, JSON
    status_received_ns      INTEGER,
    drops_changed_ns        INTEGER,
    drops_last_increase     TEXT,    -- DropCounters, JSON
    backlog_rising_since_ns INTEGER,
    clock_skew_ns           INTEGER
);
CREATE TABLE spools (
    agent_key     INTEGER NOT NULL,
    spool_id      INTEGER NOT NULL,
    low_water_seq INTEGER NOT NULL,
    last_batch_ns INTEGER NOT NULL,
    PRIMARY KEY (agent_key, spool_id)
) WITHOUT ROWID;
CREATE TABLE batches (
    agent_key   INTEGER NOT NULL,
    spool_id    INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    PRIMARY KEY (agent_key, spool_id, seq)
) WITHOUT ROWID;
CREATE TABLE metrics (
    id          INTEGER PRIMARY KEY,
    agent_key   INTEGER NOT NULL,
    time_ns     INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,     -- gauge | counter
    value       REAL,              -- NULL for NaN
    attributes  TEXT               -- JSON object, NULL when empty
);
CREATE TABLE logs (
    id          INTEGER PRIMARY KEY,
    agent_key   INTEGER NOT NULL,
    time_ns     INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    source      TEXT NOT NULL,
    severity    INTEGER,           -- syslog level: 0 emergency .. 7 debug
    body        TEXT NOT NULL,
    attributes  TEXT               -- JSON object, NULL when empty
);
CREATE TABLE fim_events (
    id          INTEGER PRIMARY KEY,
    agent_key   INTEGER NOT NULL,
    time_ns     INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    path        TEXT NOT NULL,
    change      TEXT NOT NULL,     -- created | modified | metadata_changed | deleted
    before      TEXT,              -- FileState, JSON
    after       TEXT               -- FileState, JSON
);
CREATE TABLE agent_status (
    id          INTEGER PRIMARY KEY,
    agent_key   INTEGER NOT NULL,
    time_ns     INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    status      TEXT NOT NULL      -- AgentStatus, JSON
);
";

/// Each host's latest CPU busy and memory used fractions and fullest filesystem, with the
/// agent's time of each ([`HostSummary`]). Columns on `agents` rather than a table of their own:
/// fleet status reads them with the registry row it reads anyway.
const SCHEMA_V2_HOST_SUMMARY: &str = "
ALTER TABLE agents ADD COLUMN cpu_busy REAL;
ALTER TABLE agents ADD COLUMN cpu_busy_ns INTEGER;
ALTER TABLE agents ADD COLUMN memory_used REAL;
ALTER TABLE agents ADD COLUMN memory_used_ns INTEGER;
ALTER TABLE agents ADD COLUMN fullest_fs_mountpoint TEXT;
ALTER TABLE agents ADD COLUMN fullest_fs REAL;
ALTER TABLE agents ADD COLUMN fullest_fs_ns INTEGER;
";

/// Rows stored before units travelled keep an empty unit.
const SCHEMA_V3_METRIC_UNIT: &str = "
ALTER TABLE metrics ADD COLUMN unit TEXT NOT NULL DEFAULT '';
";

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    write: Mutex<WriteState>,
    read: Mutex<Connection>,
    /// Callers waiting for `write`; retention lets them in before each of its chunks.
    writers_waiting: AtomicUsize,
}

/// The write connection and what it remembers between transactions.
///
/// The caches only ever hold what a committed transaction wrote: changes made inside a
/// transaction go to [`Pending`] and are merged after the commit succeeds.
#[derive(Debug)]
struct WriteState {
    conn: Connection,
    agent_keys: HashMap<String, i64>,
    /// Low-water mark per `(agent_key, stored spool id)`.
    low_water: HashMap<(i64, i64), u64>,
    /// The highest `received_ns` stored; later rows are clamped up to it.
    last_received_ns: i64,
    /// The stored host summary per agent key, read once per agent and then kept, so a commit
    /// writes each summary with one UPDATE and reads nothing.
    summaries: HashMap<i64, HostSummary>,
}

/// Cache changes of a transaction not yet committed.
#[derive(Debug, Default)]
struct Pending {
    agent_keys: HashMap<String, i64>,
    low_water: HashMap<(i64, i64), u64>,
    /// Per agent key, the summary of the metric points this transaction stored; after
    /// [`WriteState::write_summaries`], the summary as written.
    summaries: HashMap<i64, HostSummary>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    ///
    /// The directory must exist. Besides `path`, SQLite keeps `path-wal` and `path-shm` next to it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = open_error(path);
        let mut conn = Connection::open(path).map_err(open_err)?;
        configure_writer(&conn, path)?;
        migrate(&mut conn, path)?;
        let last_received_ns = last_received_ns(&conn).map_err(open_err)?;

        // Opened after the writer so the WAL and its index already exist.
        let read = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        read.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;

        Ok(SqliteStore {
            path: path.to_owned(),
            write: Mutex::new(WriteState {
                conn,
                agent_keys: HashMap::new(),
                low_water: HashMap::new(),
                last_received_ns,
                summaries: HashMap::new(),
            }),
            read: Mutex::new(read),
            writers_waiting: AtomicUsize::new(0),
        })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_write(&self) -> MutexGuard<'_, WriteState> {
        self.writers_waiting.fetch_add(1, Ordering::AcqRel);
        let guard = lock(&self.write);
        self.writers_waiting.fetch_sub(1, Ordering::AcqRel);
        guard
    }

    /// Locks for one retention chunk, after every writer already waiting has had its turn:
    /// std's mutex is not fair, and retention must not starve ingest by re-locking at once.
    fn lock_for_retention(&self) -> MutexGuard<'_, WriteState> {
        while self.writers_waiting.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
        lock(&self.write)
    }

    /// Runs `f` in one transaction on the agent's registry row, creating the row if needed.
    fn update_registry(
        &self,
        agent_id: &str,
        now_ns: i64,
        what: &str,
        f: impl FnOnce(&Transaction<'_>, i64) -> rusqlite::Result<()>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock_write();
        let WriteState {
            conn, agent_keys, ..
        } = &mut *state;
        let mut pending = Pending::default();
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let key = agent_key(&tx, agent_keys, &mut pending, agent_id, now_ns)?;
            f(&tx, key)?;
            tx.commit()
        })();
        result.map_err(|e| StoreError::backend(format!("{what} of agent {agent_id}"), e))?;
        agent_keys.extend(pending.agent_keys);
        Ok(())
    }

    /// Deletes the rows of `kind` received before `cutoff_ns`, a chunk per transaction.
    fn expire(
        &self,
        kind: EventKind,
        cutoff_ns: i64,
        report: &mut RetentionReport,
    ) -> Result<(), StoreError> {
        let table = table(kind);
        let context = || format!("expiring {table} received before {cutoff_ns}");
        let cut = {
            let state = self.lock_for_retention();
            last_id_received_before(&state.conn, table, cutoff_ns)
                .map_err(|e| StoreError::backend(context(), e))?
        };
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
                return Ok(());
            }
            report.chunks += 1;
            report.add_deleted(kind, deleted as u64);
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

impl Store for SqliteStore {
    fn commit_batches(&self, batches: &[IncomingBatch]) -> Result<Vec<CommitOutcome>, StoreError> {
        let Some(first) = batches.first() else {
            return Ok(Vec::new());
        };
        let mut state = self.lock_write();
        state.commit(batches).map_err(|e| {
            StoreError::backend(
                format!(
                    "committing {} batches (the first from agent {} spool {} seq {})",
                    batches.len(),
                    first.agent_id,
                    first.spool_id,
                    first.seq
                ),
                e,
            )
        })
    }

    fn record_hello(&self, agent_id: &str, hello: &Hello, now_ns: i64) -> Result<(), StoreError> {
        self.update_registry(agent_id, now_ns, "recording the hello", |tx, key| {
            let h = &hello.host;
            tx.prepare_cached(
                "UPDATE agents SET spool_id = ?2, agent_version = ?3, hostname = ?4, os = ?5,
                    kernel = ?6, arch = ?7, cpus = ?8, memory_bytes = ?9, boot_time_ns = ?10
                 WHERE agent_key = ?1",
            )?
            .execute(params![
                key,
                hello.spool_id.cast_signed(),
                hello.agent_version,
                h.hostname,
                h.os,
                h.kernel,
                h.arch,
                h.cpus,
                h.memory_bytes.cast_signed(),
                h.boot_time_ns,
            ])?;
            apply_status(tx, key, &hello.status, now_ns)
        })
    }

    fn record_heartbeat(
        &self,
        agent_id: &str,
        status: &AgentStatus,
        now_ns: i64,
    ) -> Result<(), StoreError> {
        self.update_registry(agent_id, now_ns, "recording a heartbeat", |tx, key| {
            apply_status(tx, key, status, now_ns)
        })
    }

    fn record_disconnect(
        &self,
        agent_id: &str,
        reason: &str,
        now_ns: i64,
    ) -> Result<(), StoreError> {
        self.update_registry(agent_id, now_ns, "recording a disconnect", |tx, key| {
            tx.prepare_cached(
                "UPDATE agents SET connected = 0, last_disconnect_ns = ?2,
                    last_disconnect_reason = ?3, last_seen_ns = max(last_seen_ns, ?2)
                 WHERE agent_key = ?1",
            )?
            .execute(params![key, now_ns, reason])?;
            Ok(())
        })
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let conn = lock(&self.read);
        let result = (|| {
            let mut stmt = conn.prepare_cached(
                "SELECT agent_id, spool_id, first_seen_ns, last_seen_ns, agent_version,
                    hostname, os, kernel, arch, cpus, memory_bytes, boot_time_ns, connected,
                    last_disconnect_ns, last_disconnect_reason, status, status_received_ns,
                    drops_changed_ns, drops_last_increase, backlog_rising_since_ns, clock_skew_ns,
                    cpu_busy, cpu_busy_ns, memory_used, memory_used_ns,
                    fullest_fs_mountpoint, fullest_fs, fullest_fs_ns
                 FROM agents ORDER BY agent_id",
            )?;
            let rows = stmt.query_map([], agent_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })();
        result.map_err(|e| StoreError::backend("reading the agent registry", e))
    }

    fn enforce_retention(
        &self,
        retention: &Retention,
        now_ns: i64,
    ) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        for kind in EventKind::ALL {
            let cutoff = now_ns.saturating_sub(duration_ns(retention.for_kind(kind)));
            self.expire(kind, cutoff, &mut report)?;
        }
        let stale_before = now_ns.saturating_sub(duration_ns(retention.longest()));
        self.prune_dedup(stale_before, &mut report)?;
        Ok(report)
    }

    fn count_events(&self, kind: EventKind, agent_id: Option<&str>) -> Result<u64, StoreError> {
        let table = table(kind);
        let conn = lock(&self.read);
        let count: rusqlite::Result<i64> = match agent_id {
            None => conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)),
            Some(id) => conn.query_row(
                &format!(
                    "SELECT count(*) FROM {table}
                     WHERE agent_key = (SELECT agent_key FROM agents WHERE agent_id = ?1)"
                ),
                [id],
                |r| r.get(0),
            ),
        };
        count
            .map(i64::cast_unsigned)
            .map_err(|e| StoreError::backend(format!("counting {table}"), e))
    }
}

impl WriteState {
    /// One group commit. On error the transaction rolls back and the caches stay as they were.
    fn commit(&mut self, batches: &[IncomingBatch]) -> rusqlite::Result<Vec<CommitOutcome>> {
        let WriteState {
            conn,
            agent_keys,
            low_water,
            last_received_ns,
            summaries,
        } = self;
        let mut pending = Pending::default();
        let mut received = *last_received_ns;
        let mut outcomes = Vec::with_capacity(batches.len());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut rows = RowInserter::prepare(&tx)?;
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
            let mut seen = tx.prepare_cached(
                "UPDATE agents SET last_seen_ns = max(last_seen_ns, ?2) WHERE agent_key = ?1",
            )?;
            for batch in batches {
                received = received.max(batch.received_ns);
                let key = agent_key(&tx, agent_keys, &mut pending, &batch.agent_id, received)?;
                seen.execute(params![key, batch.received_ns])?;
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
                if floor.is_some_and(|lw| batch.seq < lw) {
                    // The agent promised never to resend below its low-water mark: this batch
                    // was acknowledged before, and its dedup entry may already be pruned.
                    outcomes.push(CommitOutcome::Duplicate);
                    continue;
                }
                let claimed = claim.execute(params![
                    spool.0,
                    spool.1,
                    batch.seq.cast_signed(),
                    received,
                    batch.events.len() as i64,
                ])?;
                if claimed == 0 {
                    outcomes.push(CommitOutcome::Duplicate);
                    continue;
                }
                let mut summary = HostSummary::default();
                for event in &batch.events {
                    rows.insert(key, received, event)?;
                    if let Event::Metric(m) = event {
                        summary.observe(m);
                    }
                }
                if !summary.is_empty() {
                    pending.summaries.entry(key).or_default().merge(&summary);
                }
                let lw = floor.unwrap_or(0).max(batch.low_water_seq);
                advance.execute(params![spool.0, spool.1, lw.cast_signed(), received])?;
                pending.low_water.insert(spool, lw);
                outcomes.push(CommitOutcome::Stored);
            }
        }
        write_summaries(&tx, summaries, &mut pending.summaries)?;
        tx.commit()?;
        agent_keys.extend(pending.agent_keys);
        low_water.extend(pending.low_water);
        summaries.extend(pending.summaries);
        *last_received_ns = received;
        Ok(outcomes)
    }
}

/// Merges the summaries of this transaction's metric points into the stored ones, with one
/// UPDATE per agent; `fresh` then holds what was written.
fn write_summaries(
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
fn summary_from_row(r: &Row<'_>, first: usize) -> rusqlite::Result<HostSummary> {
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

/// The prepared inserts of one transaction, one per event kind.
struct RowInserter<'c> {
    metric: CachedStatement<'c>,
    log: CachedStatement<'c>,
    fim: CachedStatement<'c>,
    status: CachedStatement<'c>,
    /// Reused for each row's attributes, to avoid an allocation per row.
    json: Vec<u8>,
}

impl<'c> RowInserter<'c> {
    fn prepare(tx: &'c Transaction<'_>) -> rusqlite::Result<Self> {
        Ok(RowInserter {
            metric: tx.prepare_cached(
                "INSERT INTO metrics (agent_key, time_ns, received_ns, name, unit, kind, value, attributes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?,
            log: tx.prepare_cached(
                "INSERT INTO logs (agent_key, time_ns, received_ns, source, severity, body, attributes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            fim: tx.prepare_cached(
                "INSERT INTO fim_events (agent_key, time_ns, received_ns, path, change, before, after)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            status: tx.prepare_cached(
                "INSERT INTO agent_status (agent_key, time_ns, received_ns, status)
                 VALUES (?1, ?2, ?3, ?4)",
            )?,
            json: Vec::with_capacity(256),
        })
    }

    fn insert(&mut self, agent_key: i64, received_ns: i64, event: &Event) -> rusqlite::Result<()> {
        match event {
            Event::Metric(m) => {
                let attributes = attributes_json(&mut self.json, &m.attributes)?;
                self.metric.execute(params![
                    agent_key,
                    m.time_ns,
                    received_ns,
                    m.name,
                    m.unit,
                    metric_kind_name(m.kind),
                    m.value,
                    attributes,
                ])?;
            }
            Event::Log(l) => {
                let attributes = attributes_json(&mut self.json, &l.attributes)?;
                self.log.execute(params![
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
                    agent_key,
                    f.time_ns,
                    received_ns,
                    f.path,
                    fim_change_name(f.change),
                    before,
                    after,
                ])?;
            }
            Event::Status(s) => {
                self.status
                    .execute(params![agent_key, s.time_ns, received_ns, to_json(s)?])?;
            }
        }
        Ok(())
    }
}

/// The derived marks fleet status needs, carried from one status report to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct StatusMarks {
    drops_changed_ns: Option<i64>,
    drops_last_increase: DropCounters,
    backlog_rising_since_ns: Option<i64>,
}

impl StatusMarks {
    /// The marks after `next` arrives at `now_ns`, given the previous status.
    ///
    /// Drops: any counter that grew sets the change time and the increase. A first status with
    /// drops counts them as new, since the aggregator cannot know when they happened. A counter
    /// that went down (the agent's spool was recreated) is not an increase.
    ///
    /// Backlog: growing sets the rising time (keeping an earlier one), shrinking or reaching zero
    /// clears it, staying level keeps it. A first status sets nothing: a backlog found on
    /// connecting is not yet known to be rising.
    fn advance(self, prev: Option<&AgentStatus>, next: &AgentStatus, now_ns: i64) -> Self {
        let empty = DropCounters::default();
        let before = prev.map_or(&empty, |p| &p.drops);
        let mut increase = DropCounters::default();
        for reason in DropReason::ALL {
            increase.add(
                reason,
                next.drops.get(reason).saturating_sub(before.get(reason)),
            );
        }
        let dropped = DropReason::ALL.iter().any(|&r| increase.get(r) > 0);
        let (drops_changed_ns, drops_last_increase) = if dropped {
            (Some(now_ns), increase)
        } else {
            (self.drops_changed_ns, self.drops_last_increase)
        };

        let backlog_rising_since_ns = match prev {
            _ if next.backlog_batches == 0 => None,
            None => None,
            Some(p) if next.backlog_batches > p.backlog_batches => {
                Some(self.backlog_rising_since_ns.unwrap_or(now_ns))
            }
            Some(p) if next.backlog_batches < p.backlog_batches => None,
            Some(_) => self.backlog_rising_since_ns,
        };
        StatusMarks {
            drops_changed_ns,
            drops_last_increase,
            backlog_rising_since_ns,
        }
    }
}

/// Stores `status` as the agent's latest and updates the marks derived from the change.
fn apply_status(
    tx: &Transaction<'_>,
    key: i64,
    status: &AgentStatus,
    now_ns: i64,
) -> rusqlite::Result<()> {
    let (prev, marks) = tx
        .prepare_cached(
            "SELECT status, drops_changed_ns, drops_last_increase, backlog_rising_since_ns
             FROM agents WHERE agent_key = ?1",
        )?
        .query_row([key], |r| {
            // A previous value that no longer parses is treated as absent, not as an error:
            // it is replaced right here.
            let prev = r
                .get::<_, Option<String>>(0)?
                .and_then(|s| serde_json::from_str::<AgentStatus>(&s).ok());
            let marks = StatusMarks {
                drops_changed_ns: r.get(1)?,
                drops_last_increase: r
                    .get::<_, Option<String>>(2)?
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or_default(),
                backlog_rising_since_ns: r.get(3)?,
            };
            Ok((prev, marks))
        })?;
    let marks = marks.advance(prev.as_ref(), status, now_ns);
    tx.prepare_cached(
        "UPDATE agents SET status = ?2, status_received_ns = ?3, drops_changed_ns = ?4,
            drops_last_increase = ?5, backlog_rising_since_ns = ?6, clock_skew_ns = ?7,
            connected = 1, last_seen_ns = max(last_seen_ns, ?3)
         WHERE agent_key = ?1",
    )?
    .execute(params![
        key,
        to_json(status)?,
        now_ns,
        marks.drops_changed_ns,
        to_json(&marks.drops_last_increase)?,
        marks.backlog_rising_since_ns,
        status.time_ns.saturating_sub(now_ns),
    ])?;
    Ok(())
}

/// The agent's key, registering it (first seen at `now_ns`) if it is new.
fn agent_key(
    tx: &Transaction<'_>,
    committed: &HashMap<String, i64>,
    pending: &mut Pending,
    agent_id: &str,
    now_ns: i64,
) -> rusqlite::Result<i64> {
    if let Some(&key) = committed
        .get(agent_id)
        .or_else(|| pending.agent_keys.get(agent_id))
    {
        return Ok(key);
    }
    tx.prepare_cached(
        "INSERT INTO agents (agent_id, first_seen_ns, last_seen_ns) VALUES (?1, ?2, ?2)
         ON CONFLICT (agent_id) DO NOTHING",
    )?
    .execute(params![agent_id, now_ns])?;
    let key = tx
        .prepare_cached("SELECT agent_key FROM agents WHERE agent_id = ?1")?
        .query_row([agent_id], |r| r.get(0))?;
    pending.agent_keys.insert(agent_id.to_owned(), key);
    Ok(key)
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

/// Spools with their low-water marks (those above zero), and the replaced spools silent since
/// `stale_before_ns`.
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
             WHERE s.last_batch_ns < ?1 AND (a.spool_id IS NULL OR a.spool_id != s.spool_id)",
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
fn last_id_received_before(
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

/// The database stayed in another journal mode (for example on a file system without shared
/// memory); the store needs WAL for readers that do not block the writer.
#[derive(Debug, thiserror::Error)]
#[error("the database refused WAL mode (journal_mode is {0})")]
struct WalRefused(String);

fn configure_writer(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = open_error(path);
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path.to_owned(),
            source: Arc::new(WalRefused(mode)),
        });
    }
    configure_wal_writer(conn).map_err(open_err)
}

fn configure_wal_writer(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 64 MiB of page cache: the tails of the data tables and the dedup index stay in memory.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = open_error(path);
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported,
        });
    }
    if found == supported {
        return Ok(());
    }
    let tx = conn.transaction().map_err(open_err)?;
    for sql in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
        tx.execute_batch(sql).map_err(open_err)?;
    }
    tx.pragma_update(None, "user_version", supported)
        .map_err(open_err)?;
    tx.commit().map_err(open_err)
}

/// Maps a failure while opening the store at `path`.
fn open_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |e| StoreError::Open {
        path: path.to_owned(),
        source: Arc::new(e),
    }
}

/// The highest receive time in any data table (the last row of each, by the id invariant).
fn last_received_ns(conn: &Connection) -> rusqlite::Result<i64> {
    let mut last = i64::MIN;
    for kind in EventKind::ALL {
        let sql = format!(
            "SELECT received_ns FROM {} ORDER BY id DESC LIMIT 1",
            table(kind)
        );
        if let Some(ns) = conn
            .query_row(&sql, [], |r| r.get::<_, i64>(0))
            .optional()?
        {
            last = last.max(ns);
        }
    }
    Ok(last)
}

fn agent_from_row(r: &Row<'_>) -> rusqlite::Result<AgentRecord> {
    let host = match r.get::<_, Option<String>>(5)? {
        Some(hostname) => Some(HostFacts {
            hostname,
            os: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
            kernel: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
            arch: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
            cpus: r.get::<_, Option<u32>>(9)?.unwrap_or_default(),
            memory_bytes: r
                .get::<_, Option<i64>>(10)?
                .unwrap_or_default()
                .cast_unsigned(),
            boot_time_ns: r.get::<_, Option<i64>>(11)?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(AgentRecord {
        agent_id: r.get(0)?,
        spool_id: r.get::<_, Option<i64>>(1)?.map(i64::cast_unsigned),
        first_seen_ns: r.get(2)?,
        last_seen_ns: r.get(3)?,
        agent_version: r.get(4)?,
        host,
        connected: r.get(12)?,
        last_disconnect_ns: r.get(13)?,
        last_disconnect_reason: r.get(14)?,
        status: from_json_column(r, 15)?,
        status_received_ns: r.get(16)?,
        drops_changed_ns: r.get(17)?,
        drops_last_increase: from_json_column(r, 18)?.unwrap_or_default(),
        backlog_rising_since_ns: r.get(19)?,
        clock_skew_ns: r.get(20)?,
        host_summary: Some(summary_from_row(r, 21)?).filter(|s| !s.is_empty()),
    })
}

fn from_json_column<T: serde::de::DeserializeOwned>(
    r: &Row<'_>,
    idx: usize,
) -> rusqlite::Result<Option<T>> {
    r.get::<_, Option<String>>(idx)?
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

fn to_json<T: Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Attributes as a JSON object in their original order, or `None` when there are none.
fn attributes_json<'b>(
    buf: &'b mut Vec<u8>,
    attributes: &Attributes,
) -> rusqlite::Result<Option<&'b str>> {
    if attributes.is_empty() {
        return Ok(None);
    }
    buf.clear();
    let conversion =
        |e: Box<dyn std::error::Error + Send + Sync>| rusqlite::Error::ToSqlConversionFailure(e);
    serde_json::to_writer(&mut *buf, &AttributesJson(attributes))
        .map_err(|e| conversion(Box::new(e)))?;
    std::str::from_utf8(buf)
        .map(Some)
        .map_err(|e| conversion(Box::new(e)))
}

/// Serialises key/value pairs as a JSON object without reordering them.
struct AttributesJson<'a>(&'a Attributes);

impl Serialize for AttributesJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn table(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Metric => "metrics",
        EventKind::Log => "logs",
        EventKind::Fim => "fim_events",
        EventKind::Status => "agent_status",
    }
}

/// The syslog level, so that `severity <= 3` selects errors and worse.
fn severity_level(s: Severity) -> i64 {
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

fn metric_kind_name(k: MetricKind) -> &'static str {
    match k {
        MetricKind::Gauge => "gauge",
        MetricKind::Counter => "counter",
    }
}

fn fim_change_name(c: FimChange) -> &'static str {
    match c {
        FimChange::Created => "created",
        FimChange::Modified => "modified",
        FimChange::MetadataChanged => "metadata_changed",
        FimChange::Deleted => "deleted",
    }
}

/// Locks a mutex, recovering it if a holder panicked: a panic inside a transaction rolls the
/// transaction back as it unwinds, and the caches change only after a commit, so what the
/// mutex guards is consistent either way.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use outpost_common::event::{CollectorError, LogRecord, MetricPoint};
    use proptest::prelude::*;
    use tempfile::TempDir;

    use super::*;
    use crate::store::CommitOutcome::{Duplicate, Stored};
    use crate::store::testutil::*;
    use crate::store::{
        CPU_UTILIZATION as CPU, FILESYSTEM_UTILIZATION as FILESYSTEM, MEMORY_UTILIZATION as MEMORY,
    };

    fn open() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
        (dir, store)
    }

    fn count(store: &SqliteStore, kind: EventKind, agent: Option<&str>) -> u64 {
        store.count_events(kind, agent).unwrap()
    }

    /// Rows of the dedup table, read straight from the file.
    fn dedup_rows(store: &SqliteStore) -> Vec<(String, u64, u64)> {
        let conn = Connection::open(store.path()).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT a.agent_id, b.spool_id, b.seq FROM batches b JOIN agents a USING (agent_key)
                 ORDER BY 1, 2, 3",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)?.cast_unsigned(),
                r.get::<_, i64>(2)?.cast_unsigned(),
            ))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    #[test]
    fn a_batch_is_stored_once_per_agent_spool_and_seq() {
        let (_dir, store) = open();
        assert_eq!(
            store.commit_batches(&[logs("a", 1, 1, 3)]).unwrap(),
            vec![Stored]
        );
        // Resent in a later transaction: acknowledged again, stored once.
        assert_eq!(
            store.commit_batches(&[logs("a", 1, 1, 3)]).unwrap(),
            vec![Duplicate]
        );
        // The same seq from a new spool (the agent's spool was recreated) is new data, and so is
        // the same seq from another agent.
        assert_eq!(
            store
                .commit_batches(&[logs("a", 2, 1, 4), logs("b", 1, 1, 5)])
                .unwrap(),
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
        store.commit_batches(&[logs("a", 1, 1, 1)]).unwrap();
        let group = [
            logs("a", 1, 2, 2),
            logs("a", 1, 1, 1), // stored by an earlier transaction
            logs("b", 1, 1, 3),
            logs("a", 1, 2, 2), // stored earlier in this same group
            logs("a", 1, 3, 4),
        ];
        assert_eq!(
            store.commit_batches(&group).unwrap(),
            vec![Stored, Duplicate, Stored, Duplicate, Stored]
        );
        assert_eq!(count(&store, EventKind::Log, Some("a")), 1 + 2 + 4);
        assert_eq!(count(&store, EventKind::Log, Some("b")), 3);
        assert!(store.commit_batches(&[]).unwrap().is_empty());
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
        store.commit_batches(&[batch("a", 1, 1, events)]).unwrap();
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
        store
            .commit_batches(&[logs("a", 1, 1, 10), logs("a", 1, 2, 10)])
            .unwrap();
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
                "store::sqlite::tests::crash_child",
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
            store
                .commit_batches(&[logs("a", 1, 2, 10), logs("a", 1, 3, 1)])
                .unwrap(),
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
            store.commit_batches(&[b]).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store
                .commit_batches(&[logs("a", 1, 5, 2), logs("a", 1, 3, 2), logs("a", 1, 6, 2)])
                .unwrap(),
            vec![Duplicate, Duplicate, Stored]
        );
        assert_eq!(count(&store, EventKind::Log, None), 4);
    }

    #[test]
    fn a_failed_group_stores_nothing_and_forgets_what_it_cached() {
        let (_dir, store) = open();
        store.commit_batches(&[logs("old", 1, 1, 1)]).unwrap();
        let admin = Connection::open(store.path()).unwrap();
        admin
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON logs WHEN NEW.body = 'boom'
                 BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;",
            )
            .unwrap();
        let mut poison = logs("old", 1, 3, 1);
        poison.events = vec![Event::Log(LogRecord {
            time_ns: T0,
            source: "s".into(),
            severity: None,
            body: "boom".into(),
            attributes: vec![],
        })];
        let mut fresh = logs("fresh", 9, 1, 2);
        fresh.low_water_seq = 1;
        let err = store
            .commit_batches(&[fresh.clone(), logs("old", 1, 2, 1), poison])
            .unwrap_err();
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
        store
            .record_heartbeat("other", &AgentStatus::default(), T0)
            .unwrap();
        admin.execute_batch("DROP TRIGGER boom").unwrap();
        assert_eq!(
            store
                .commit_batches(&[fresh, logs("old", 1, 2, 1)])
                .unwrap(),
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
        assert_eq!(store.commit_batches(&[b.clone()]).unwrap(), vec![Stored]);
        assert_eq!(store.commit_batches(&[b]).unwrap(), vec![Duplicate]);
        assert_eq!(count(&store, EventKind::Metric, Some("")), 4);
        for now in [i64::MIN, 0, i64::MAX] {
            let huge = Retention {
                metric: Duration::MAX,
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
        store.record_heartbeat("", &status, i64::MAX).unwrap();
        store.record_disconnect("", "\0", i64::MIN).unwrap();
        let agents = store.agents().unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].clock_skew_ns, Some(i64::MIN));
    }

    #[test]
    fn retention_deletes_only_old_rows_of_each_kind() {
        let (_dir, store) = open();
        let day = secs(86_400);
        let all_kinds = |t| vec![metric(t, 1.0), log(t, 5), fim(t), status_event(t)];
        let mut old = batch("a", 1, 1, all_kinds(T0));
        old.received_ns = T0;
        let mut new = batch("a", 1, 2, all_kinds(T0 + 20 * day));
        new.received_ns = T0 + 20 * day;
        store.commit_batches(&[old, new]).unwrap();

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
        let mut old: Vec<IncomingBatch> = (0..n / 1000 + 1)
            .map(|i| logs("a", 1, i as u64, 1000))
            .collect();
        for (i, b) in old.iter_mut().enumerate() {
            b.received_ns = T0 + i as i64;
        }
        let old_events: usize = old.iter().map(|b| b.events.len()).sum();
        store.commit_batches(&old).unwrap();
        let mut new = logs("a", 1, 1000, 7);
        new.received_ns = T0 + secs(3600);
        store.commit_batches(&[new]).unwrap();

        let one_hour = Retention {
            log: Duration::from_secs(3600),
            ..Retention::default()
        };
        let report = store
            .enforce_retention(&one_hour, T0 + secs(3600) + secs(3599))
            .unwrap();
        assert_eq!(report.log, old_events as u64);
        assert!(report.chunks >= 3, "{report:?}");
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
        store.commit_batches(&[first]).unwrap();
        store.commit_batches(&[second]).unwrap();

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
            store.commit_batches(&[logs("a", 7, seq, 1)]).unwrap();
        }
        let mut sixth = logs("a", 7, 6, 1);
        sixth.low_water_seq = 4;
        store.commit_batches(&[sixth]).unwrap();
        store.commit_batches(&[logs("b", 7, 1, 1)]).unwrap();

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
            store
                .commit_batches(&[logs("a", 7, 2, 1), logs("a", 7, 5, 1), logs("a", 7, 7, 1)])
                .unwrap(),
            vec![Duplicate, Duplicate, Stored]
        );
        assert_eq!(count(&store, EventKind::Log, Some("a")), 7);
    }

    #[test]
    fn dedup_entries_of_a_replaced_spool_go_once_its_data_has_expired() {
        let (_dir, store) = open();
        store
            .record_hello("a", &hello(1, AgentStatus::default()), T0)
            .unwrap();
        store
            .commit_batches(&[logs("a", 1, 1, 1), logs("a", 1, 2, 1)])
            .unwrap();
        // The agent's spool was recreated.
        store
            .record_hello("a", &hello(2, AgentStatus::default()), T0)
            .unwrap();
        let mut current = logs("a", 2, 1, 1);
        current.received_ns = T0;
        store.commit_batches(&[current]).unwrap();

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
    fn the_registry_follows_hello_heartbeats_batches_and_disconnects() {
        let (_dir, store) = open();
        store
            .record_hello("web-1", &hello(42, AgentStatus::default()), T0)
            .unwrap();
        let a = &store.agents().unwrap()[0];
        assert_eq!(a.agent_id, "web-1");
        assert_eq!(a.spool_id, Some(42));
        assert_eq!((a.first_seen_ns, a.last_seen_ns), (T0, T0));
        assert_eq!(a.agent_version.as_deref(), Some("1.2.3"));
        let host = a.host.as_ref().unwrap();
        assert_eq!(
            (
                host.hostname.as_str(),
                host.arch.as_str(),
                host.memory_bytes
            ),
            ("web-1.example", "x86_64", 4 << 30)
        );
        assert!(a.connected);
        assert_eq!(a.status, Some(AgentStatus::default()));

        // A heartbeat whose clock runs 2 s ahead, with a growing backlog and new drops.
        let mut status = AgentStatus {
            time_ns: T0 + secs(12),
            backlog_batches: 5,
            collector_errors: vec![CollectorError {
                collector: "metrics.filesystem".into(),
                reason: "statvfs failed".into(),
                since_ns: T0,
            }],
            ..AgentStatus::default()
        };
        status.drops.add(DropReason::SpoolFullEvicted, 12);
        store
            .record_heartbeat("web-1", &status, T0 + secs(10))
            .unwrap();
        let a = &store.agents().unwrap()[0];
        assert_eq!(a.last_seen_ns, T0 + secs(10));
        assert_eq!(a.clock_skew_ns, Some(secs(2)));
        assert_eq!(a.backlog_rising_since_ns, Some(T0 + secs(10)));
        assert_eq!(a.drops_changed_ns, Some(T0 + secs(10)));
        assert_eq!(a.drops_last_increase.spool_full_evicted, 12);
        assert_eq!(a.status.as_ref(), Some(&status));

        // Still rising: the start is kept; drops unchanged: their time too.
        status.backlog_batches = 9;
        store
            .record_heartbeat("web-1", &status, T0 + secs(20))
            .unwrap();
        let a = &store.agents().unwrap()[0];
        assert_eq!(a.backlog_rising_since_ns, Some(T0 + secs(10)));
        assert_eq!(a.drops_changed_ns, Some(T0 + secs(10)));

        let mut b = logs("web-1", 42, 1, 1);
        b.received_ns = T0 + secs(25);
        store.commit_batches(&[b]).unwrap();
        assert_eq!(store.agents().unwrap()[0].last_seen_ns, T0 + secs(25));

        store
            .record_disconnect("web-1", "connection lost: timed out", T0 + secs(30))
            .unwrap();
        let a = &store.agents().unwrap()[0];
        assert!(!a.connected);
        assert_eq!(a.last_disconnect_ns, Some(T0 + secs(30)));
        assert_eq!(
            a.last_disconnect_reason.as_deref(),
            Some("connection lost: timed out")
        );
        assert_eq!((a.first_seen_ns, a.last_seen_ns), (T0, T0 + secs(30)));

        // A heartbeat from an agent never registered creates its row; rows come sorted.
        store
            .record_heartbeat("app-1", &AgentStatus::default(), T0 + secs(40))
            .unwrap();
        let ids: Vec<_> = store
            .agents()
            .unwrap()
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        assert_eq!(ids, ["app-1", "web-1"]);
    }

    #[test]
    fn status_marks_follow_drops_and_backlog() {
        let at = |backlog, evicted| {
            let mut s = AgentStatus {
                backlog_batches: backlog,
                ..AgentStatus::default()
            };
            s.drops.add(DropReason::SpoolFullEvicted, evicted);
            s
        };
        let none = StatusMarks::default();

        // A first status: drops are news, a backlog is not yet "rising".
        let m = none.clone().advance(None, &at(10, 3), 100);
        assert_eq!(m.drops_changed_ns, Some(100));
        assert_eq!(m.drops_last_increase.spool_full_evicted, 3);
        assert_eq!(m.backlog_rising_since_ns, None);
        assert_eq!(none.clone().advance(None, &at(0, 0), 100), none);

        // Growing backlog and drops.
        let m = m.advance(Some(&at(10, 3)), &at(11, 5), 200);
        assert_eq!(m.backlog_rising_since_ns, Some(200));
        assert_eq!(m.drops_changed_ns, Some(200));
        assert_eq!(m.drops_last_increase.spool_full_evicted, 2);
        // Level: both kept.
        let m = m.advance(Some(&at(11, 5)), &at(11, 5), 300);
        assert_eq!(m.backlog_rising_since_ns, Some(200));
        assert_eq!(m.drops_changed_ns, Some(200));
        // Growing again: the rise started at 200.
        let m = m.advance(Some(&at(11, 5)), &at(20, 5), 400);
        assert_eq!(m.backlog_rising_since_ns, Some(200));
        // Shrinking clears it; counters that went down (a new spool) are no increase.
        let m = m.advance(Some(&at(20, 5)), &at(19, 0), 500);
        assert_eq!(m.backlog_rising_since_ns, None);
        assert_eq!(m.drops_changed_ns, Some(200));
        // Reaching zero clears it even from a rise.
        let m = m.advance(Some(&at(19, 0)), &at(25, 0), 600);
        assert_eq!(m.backlog_rising_since_ns, Some(600));
        let m = m.advance(Some(&at(25, 0)), &at(0, 0), 700);
        assert_eq!(m.backlog_rising_since_ns, None);
    }

    fn gauge(name: &str, attributes: &[(&str, &str)], time_ns: i64, value: f64) -> Event {
        Event::Metric(crate::store::tests::point(name, attributes, time_ns, value))
    }

    /// One collection of the three summarised gauges at `time_ns`, with per-core and other-state
    /// points beside them, and one filesystem point per `(mountpoint, fraction)`.
    fn collection(time_ns: i64, idle: f64, used: f64, filesystems: &[(&str, f64)]) -> Vec<Event> {
        let mut events = vec![
            gauge(CPU, &[("cpu", "cpu0"), ("state", "idle")], time_ns, 0.01),
            gauge(CPU, &[("state", "user")], time_ns, 1.0 - idle),
            gauge(CPU, &[("state", "idle")], time_ns, idle),
            gauge(MEMORY, &[("state", "used")], time_ns, used),
            gauge(MEMORY, &[("state", "free")], time_ns, 1.0 - used),
            log(time_ns, 10),
        ];
        for &(mountpoint, fraction) in filesystems {
            let attributes = [
                ("device", "/dev/sda1"),
                ("type", "ext4"),
                ("mountpoint", mountpoint),
            ];
            events.push(gauge(FILESYSTEM, &attributes, time_ns, fraction));
        }
        events
    }

    fn summary(store: &SqliteStore, agent: &str) -> Option<HostSummary> {
        let agents = store.agents().unwrap();
        let a = agents.iter().find(|a| a.agent_id == agent).unwrap();
        a.host_summary.clone()
    }

    #[test]
    fn commits_keep_each_hosts_latest_cpu_memory_and_fullest_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).unwrap();
        let (t1, t2) = (T0 + secs(10), T0 + secs(20));
        store
            .commit_batches(&[logs("a", 1, 1, 1), logs("b", 1, 1, 1)])
            .unwrap();
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
        store.commit_batches(&[newer, older, other]).unwrap();
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
            store.commit_batches(&[late, stale, resent]).unwrap(),
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
        store
            .commit_batches(&[batch(
                "a",
                1,
                6,
                vec![gauge(CPU, &[("state", "idle")], t3, 0.6)],
            )])
            .unwrap();
        store
            .commit_batches(&[batch("a", 1, 7, collection(t1, 0.0, 1.0, &[("/x", 1.0)]))])
            .unwrap();
        let cpu = summary(&store, "a").unwrap().cpu_busy.unwrap();
        assert_eq!(cpu.1, t3);
        assert!((cpu.0 - 0.4).abs() < 1e-9, "{cpu:?}");
        assert_eq!(
            summary(&store, "a").map(|s| (s.memory_used, s.fullest_fs)),
            Some((latest.memory_used, latest.fullest_fs))
        );
        // Registry updates leave the summary alone.
        store
            .record_hello("a", &hello(1, AgentStatus::default()), t3)
            .unwrap();
        store.record_disconnect("a", "bye", t3).unwrap();
        assert_eq!(summary(&store, "a").unwrap().cpu_busy.unwrap().1, t3);
    }

    #[test]
    fn a_store_of_the_first_schema_gains_the_host_summary_and_units() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO agents (agent_id, first_seen_ns, last_seen_ns, hostname)
                 VALUES ('old', ?1, ?1, 'old.example')",
                [T0],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO metrics (agent_key, time_ns, received_ns, name, kind, value)
                 VALUES (1, ?1, ?1, 'old.metric', 'gauge', 1.0)",
                [T0],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert_eq!(version, 3);
        let units = |store: &SqliteStore| -> Vec<(String, String)> {
            let conn = Connection::open(store.path()).unwrap();
            let mut q = conn
                .prepare("SELECT DISTINCT name, unit FROM metrics ORDER BY name")
                .unwrap();
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(units(&store), [("old.metric".to_owned(), String::new())]);
        let agents = store.agents().unwrap();
        assert_eq!(agents[0].agent_id, "old");
        assert_eq!(agents[0].host_summary, None);

        let t = T0 + secs(5);
        store
            .commit_batches(&[batch("old", 1, 1, collection(t, 0.5, 0.25, &[("/", 0.5)]))])
            .unwrap();
        let after = units(&store);
        assert!(after.contains(&("old.metric".to_owned(), String::new())));
        assert!(
            after.contains(&(CPU.to_owned(), "1".to_owned())),
            "{after:?}"
        );
        let expected = HostSummary {
            cpu_busy: Some((0.5, t)),
            memory_used: Some((0.25, t)),
            fullest_fs: Some(("/".to_owned(), 0.5, t)),
        };
        assert_eq!(summary(&store, "old"), Some(expected.clone()));
        // A reopen of the migrated store migrates nothing and keeps the data.
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(summary(&store, "old"), Some(expected));
    }

    #[test]
    fn a_store_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
            "{err}"
        );
        let err = SqliteStore::open(&dir.path().join("missing/store.db")).unwrap_err();
        assert!(err.to_string().contains("missing/store.db"), "{err}");
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
                        prop_assert_eq!(store.commit_batches(&batches).unwrap(), expected);
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
            store.commit_batches(group).unwrap();
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
