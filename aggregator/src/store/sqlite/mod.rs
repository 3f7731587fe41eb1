//! The embedded store: one SQLite database in WAL mode under the data directory, holding both
//! the [`EventStore`] and the [`StateStore`].
//!
//! # Layout
//!
//! - `agents`: the registry, one row per agent, keyed by a small integer (`agent_key`) that the
//!   data tables use instead of repeating the agent's text id on every row. It also holds each
//!   host's latest CPU, memory and fullest filesystem ([`HostSummary`]), kept up to date by
//!   every commit so fleet status never scans the metrics table.
//! - `spools`: per `(agent, spool)`, the highest low-water mark seen and when the last batch came.
//! - `batches`: the deduplication keys `(agent_key, spool_id, seq)`, `WITHOUT ROWID` so the key
//!   *is* the table.
//! - `metrics`, `logs`, `fim_events`, `agent_status`: one row per event, with the agent, the
//!   event's own time and the receive time. Attributes and nested values are JSON text, so they
//!   can be queried with SQLite's JSON functions.
//! - `fim_trails`: per agent, the `seq` and `chain` of the last file-integrity event received,
//!   written in the commit that stores the event ([`fim_trail`]); `fim_trail_ahead`: the events
//!   stored ahead of their place in a trail, held until the events before them come or are known
//!   lost; `fim_trail_breaks`: every break found in a trail, with the event that showed it.
//!
//! Modules: [`schema`] (tables and migrations), [`commit`] (the group commit and deduplication),
//! [`registry`] (the agent registry), [`retention`], [`queries`] (the reads), [`reader`] (the
//! read-only store the CLI opens beside a running aggregator), [`codec`] (how values are
//! written into columns and read back).
//!
//! # Invariants
//!
//! - The four data tables share one id sequence: each new row gets the next id of all of them,
//!   so `id` is the event's [`Cursor`] and grows in commit order across kinds. (Rows written
//!   by builds before the shared sequence may share ids between tables; they are ordered by kind
//!   among themselves. Schema 4 is the file-integrity trail, not that change.)
//! - Within each data table, `id` grows with `received_ns`: the store clamps `received_ns` to
//!   never go below the last stored value, and retention deletes only from the low end.
//!   Retention therefore finds its cut-off by binary search on `id` and deletes a prefix, with no
//!   index on time at all: an insert touches one B-tree per row, which is what makes group
//!   commits of hundreds of thousands of events a second possible. `fim_events` alone carries
//!   indexes (agent and seq, agent and time, time, path): file-integrity changes are few, and
//!   they are read by trail position and by path.
//! - `u64` values (spool ids, sequence numbers) are stored bit-for-bit as SQLite's signed
//!   integers, so identity is preserved for every value; comparisons that need unsigned order are
//!   done in Rust.
//! - Every write holds one mutex around one connection; readers use a second, read-only
//!   connection, so status queries never wait for a commit.
//!
//! # Durability
//!
//! Batch commits run with `synchronous=FULL`: in WAL mode every commit is fsynced before it
//! returns, so an acknowledged batch survives power loss, not only a crashed process. Group
//! commit amortises the fsync over every batch in the transaction. Registry writes run with
//! `synchronous=NORMAL`: they are atomic but reach the disk with the next batch commit or
//! checkpoint, which the [`StateStore`] contract allows. WAL checkpoints run on a thread of
//! their own ([`checkpoint`]), so no commit waits for one unless the log grows past a backstop.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use outpost_common::event::EventKind;
use rusqlite::{Connection, OpenFlags};

use self::checkpoint::Checkpointer;
pub use self::codec::{fim_change_from_name, fim_change_name, fim_detection_name};
pub use self::reader::SqliteReader;
use crate::enroll::token::EnrollmentToken;
use crate::tokens::TokenRecord;

use super::{
    AgentRecord, AuditEntry, BatchCommit, Cursor, Enrollment, EventPage, EventQuery, EventStore,
    HostSummary, IncomingBatch, RegistryUpdate, Retention, RetentionReport, StateStore, StoreError,
    fim_trail,
};
use crate::store::series::{MetricAnswer, MetricQuery, MetricQueryError};

mod alerting;
mod checkpoint;
mod chunk;
mod codec;
mod commit;
mod enrollment;
mod metrics;
mod queries;
mod reader;
mod registry;
mod retention;
mod schema;
mod tokens;

/// How long a connection waits for a lock held by another process (a backup tool, the sqlite3
/// shell) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    write: Mutex<WriteState>,
    read: Mutex<Connection>,
    /// Callers waiting for `write`; retention lets them in before each of its chunks.
    writers_waiting: AtomicUsize,
    /// Bumped after every write that may change what `agents()` answers.
    generation: AtomicU64,
    /// Last: its thread ends once the write connection, dropped before it, is closed.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "held for its thread; tests read its counts")
    )]
    checkpointer: Checkpointer,
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
    /// The id the next event row gets, in whichever data table.
    next_id: i64,
    /// The stored host summary per agent key, read once per agent and then kept, so a commit
    /// writes each summary with one UPDATE and reads nothing.
    summaries: HashMap<i64, HostSummary>,
    /// Each agent's file-integrity trail, read once per agent and then kept.
    trails: HashMap<i64, fim_trail::Trail>,
    /// Metric series ids by their identity (see `commit::series_key`), filled as commits meet
    /// them. A series is never deleted while the store is open (compaction and retention remove
    /// points, not series), so an entry never goes stale.
    series: HashMap<String, i64>,
}

/// Cache changes of a transaction not yet committed.
#[derive(Debug, Default)]
struct Pending {
    agent_keys: HashMap<String, i64>,
    low_water: HashMap<(i64, i64), u64>,
    /// Per agent key, the summary of the metric points this transaction stored; after
    /// [`commit::write_summaries`], the summary as written.
    summaries: HashMap<i64, HostSummary>,
    /// Per agent key, the trail after this transaction's file-integrity events and batches.
    trails: HashMap<i64, fim_trail::Trail>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    ///
    /// The directory must exist. Besides `path`, SQLite keeps `path-wal` and `path-shm` next to it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        SqliteStore::open_with(path, checkpoint::Policy::default())
    }

    fn open_with(path: &Path, policy: checkpoint::Policy) -> Result<Self, StoreError> {
        let open_err = open_error(path);
        let mut conn = Connection::open(path).map_err(open_err)?;
        configure_writer(&conn, path)?;
        schema::migrate(&mut conn, path)?;
        let checkpointer = Checkpointer::install(&mut conn, path, policy)?;
        let last_received_ns = schema::last_received_ns(&conn).map_err(open_err)?;
        let next_id = schema::next_event_id(&conn).map_err(open_err)?;

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
                next_id,
                summaries: HashMap::new(),
                trails: HashMap::new(),
                series: HashMap::new(),
            }),
            read: Mutex::new(read),
            writers_waiting: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            checkpointer,
        })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the index of logs by agent and time (`[store] log_index`), or drops it: building
    /// it reads every stored log record, so it is logged.
    pub fn set_log_index(&self, on: bool) -> Result<(), StoreError> {
        let state = self.lock_write();
        let context = |e| StoreError::backend("changing the index of logs by agent and time", e);
        let present: bool = state
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master
                 WHERE type = 'index' AND name = 'logs_agent_time')",
                [],
                |r| r.get(0),
            )
            .map_err(context)?;
        match (on, present) {
            (true, false) => {
                tracing::info!("Building the index of logs by agent and time (store.log_index).");
                state
                    .conn
                    .execute_batch(schema::LOG_INDEX)
                    .map_err(context)?;
                tracing::info!("Built the index of logs by agent and time.");
            }
            (false, true) => {
                state
                    .conn
                    .execute_batch("DROP INDEX logs_agent_time")
                    .map_err(context)?;
                tracing::info!(
                    "Dropped the index of logs by agent and time (store.log_index = false)."
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Count of stored events of a kind (optionally for one agent), for tests and benchmarks.
    pub fn count_events(&self, kind: EventKind, agent_id: Option<&str>) -> Result<u64, StoreError> {
        let conn = lock(&self.read);
        match kind {
            EventKind::Metric => metrics::count_points(&conn, agent_id),
            kind => queries::count_events(&conn, kind, agent_id),
        }
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
}

impl EventStore for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn commit_batches(&self, batches: &[IncomingBatch]) -> Result<Vec<BatchCommit>, StoreError> {
        let Some(first) = batches.first() else {
            return Ok(Vec::new());
        };
        let mut state = self.lock_write();
        let result = state.commit(batches);
        // After the write (host summaries change with batches): a reader that saw the number
        // before it reads the store sees this write or a later number.
        self.generation.fetch_add(1, Ordering::Release);
        result.map_err(|e| {
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

    fn end(&self) -> Result<Cursor, StoreError> {
        Ok(commit::cursor_of(self.lock_write().next_id))
    }

    fn events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        queries::events(&lock(&self.read), query)
    }

    fn host_summaries(&self) -> Result<BTreeMap<String, HostSummary>, StoreError> {
        queries::host_summaries(&lock(&self.read))
    }

    fn metric_query(&self, query: &MetricQuery) -> Result<MetricAnswer, MetricQueryError> {
        self.query_metrics(query)
    }

    fn enforce_retention(
        &self,
        retention: &Retention,
        now_ns: i64,
    ) -> Result<RetentionReport, StoreError> {
        self.enforce(retention, now_ns)
    }
}

impl StateStore for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn record_all(&self, updates: &[RegistryUpdate]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let result = self.lock_write().record_all(updates);
        self.generation.fetch_add(1, Ordering::Release);
        result
    }

    fn registry_generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        registry::agents(&lock(&self.read), None)
    }

    fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(registry::agents(&lock(&self.read), Some(agent_id))?
            .into_iter()
            .next())
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.lock_write().insert_token(token)
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        tokens::token(&lock(&self.read), id)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        tokens::tokens(&lock(&self.read))
    }

    fn revoke_token(
        &self,
        id_or_name: &str,
        now_ns: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.lock_write().revoke_token(id_or_name, now_ns)
    }

    fn touch_token(&self, id: &str, now_ns: i64) -> Result<(), StoreError> {
        self.lock_write().touch_token(id, now_ns)
    }

    fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.lock_write().append_audit(entries)
    }

    fn audit(&self, before: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        tokens::audit(&lock(&self.read), before, limit)
    }

    fn remove_agent(&self, agent_id: &str, now_ns: i64) -> Result<bool, StoreError> {
        let result = self.lock_write().remove_agent(agent_id, now_ns);
        self.generation.fetch_add(1, Ordering::Release);
        result
    }

    fn insert_enrollment_token(&self, token: &EnrollmentToken) -> Result<(), StoreError> {
        self.lock_write().insert_enrollment_token(token)
    }

    fn enrollment_token(&self, id: &str) -> Result<Option<EnrollmentToken>, StoreError> {
        enrollment::token(&lock(&self.read), id)
    }

    fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>, StoreError> {
        enrollment::tokens(&lock(&self.read))
    }

    fn revoke_enrollment_token(
        &self,
        id: &str,
        now_ns: i64,
    ) -> Result<Option<EnrollmentToken>, StoreError> {
        self.lock_write().revoke_enrollment_token(id, now_ns)
    }

    fn key_enrolled(&self, key_sha256: &[u8; 32]) -> Result<bool, StoreError> {
        enrollment::key_enrolled(&lock(&self.read), key_sha256)
    }

    fn record_enrollment(&self, enrollment: &Enrollment) -> Result<(), StoreError> {
        self.lock_write().record_enrollment(enrollment)
    }
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

/// Maps a failure while opening the store at `path`.
fn open_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |e| StoreError::Open {
        path: path.to_owned(),
        source: Arc::new(e),
    }
}

/// Where events of a kind are read from: a table, or for metrics the view of the head.
fn table(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Metric => "metrics",
        kind => stored_table(kind),
    }
}

/// The table holding the rows of `kind` in the shared id sequence: for metrics, the head
/// (`metric_points`), whose older points move to `metric_chunks`.
fn stored_table(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Metric => "metric_points",
        EventKind::Log => "logs",
        EventKind::Fim => "fim_events",
        EventKind::Status => "agent_status",
    }
}

/// Locks a mutex, recovering it if a holder panicked: a panic inside a transaction rolls the
/// transaction back as it unwinds, and the caches change only after a commit, so what the
/// mutex guards is consistent either way.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Helpers shared by the tests of the SQLite modules.
#[cfg(test)]
mod test_support {
    use outpost_common::event::AgentStatus;
    use outpost_common::wire::Hello;
    use rusqlite::Connection;
    use tempfile::TempDir;

    use super::*;
    use crate::store::CommitOutcome;

    pub(super) fn open() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
        (dir, store)
    }

    pub(super) fn count(store: &SqliteStore, kind: EventKind, agent: Option<&str>) -> u64 {
        store.count_events(kind, agent).unwrap()
    }

    /// Commits and answers what each agent would be told.
    pub(super) fn commit(store: &SqliteStore, batches: &[IncomingBatch]) -> Vec<CommitOutcome> {
        store
            .commit_batches(batches)
            .unwrap()
            .into_iter()
            .map(|answer| answer.outcome())
            .collect()
    }

    /// The agent's host summary as the event store reports it.
    pub(super) fn summary(store: &SqliteStore, agent: &str) -> Option<HostSummary> {
        store.host_summaries().unwrap().remove(agent)
    }

    pub(super) fn record_hello(
        store: &SqliteStore,
        agent_id: &str,
        hello: &Hello,
        now_ns: i64,
    ) -> Result<(), StoreError> {
        store.record(&RegistryUpdate::Hello {
            agent_id: agent_id.to_owned(),
            hello: hello.clone(),
            now_ns,
        })
    }

    pub(super) fn record_heartbeat(
        store: &SqliteStore,
        agent_id: &str,
        status: &AgentStatus,
        now_ns: i64,
    ) -> Result<(), StoreError> {
        store.record(&RegistryUpdate::Heartbeat {
            agent_id: agent_id.to_owned(),
            status: status.clone(),
            now_ns,
        })
    }

    pub(super) fn record_disconnect(
        store: &SqliteStore,
        agent_id: &str,
        reason: &str,
        now_ns: i64,
    ) -> Result<(), StoreError> {
        store.record(&RegistryUpdate::Disconnect {
            agent_id: agent_id.to_owned(),
            reason: reason.to_owned(),
            now_ns,
        })
    }

    /// Rows of the dedup table, read straight from the file.
    pub(super) fn dedup_rows(store: &SqliteStore) -> Vec<(String, u64, u64)> {
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
}
