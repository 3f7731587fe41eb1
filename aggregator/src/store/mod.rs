//! The central store: every batch an agent sends is kept here exactly once, together with the
//! registry of agents that feeds fleet status.
//!
//! [`Store`] is the seam. It speaks only Outpost's own types (batches, events, agent facts,
//! retention periods), never SQL, so a store for fleets that outgrow one machine (ClickHouse) can
//! implement it beside the embedded [`sqlite::SqliteStore`]. Its methods are synchronous: they
//! block on disk, so callers run them on a dedicated thread. Ingest does that through
//! [`writer::StoreWriter`], which also groups the batches of many agents into one transaction
//! (group commit), and [`retention::spawn_retention`] runs retention on its own thread.
//!
//! # Exactly once
//!
//! A batch is identified by `(agent_id, spool_id, seq)`. [`Store::commit_batches`] stores a batch
//! the first time it sees that key and answers [`CommitOutcome::Duplicate`] afterwards, so the
//! aggregator can acknowledge a resent batch again without storing it twice. The agent's
//! `low_water_seq` promises that no lower `seq` of that spool will ever be sent again; the store
//! forgets the deduplication entries below it during retention, and keeps answering `Duplicate`
//! for anything below it.

use std::sync::Arc;
use std::time::Duration;

use outpost_common::event::{AgentStatus, DropCounters, Event, EventKind, HostFacts};
use outpost_common::wire::Hello;
use serde::Serialize;

pub mod retention;
pub mod sqlite;
pub mod writer;

pub use sqlite::SqliteStore;
pub use writer::{StoreWriter, WriterConfig, WriterJoin, WriterStats};

/// One batch as received from an authenticated agent.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingBatch {
    /// From the agent's certificate, already validated.
    pub agent_id: String,
    /// The agent's spool identity, from its Hello.
    pub spool_id: u64,
    pub seq: u64,
    /// Every `seq` below this was acknowledged or dropped by the agent and is never resent.
    pub low_water_seq: u64,
    /// When the aggregator received the batch. Retention counts from this time.
    pub received_ns: i64,
    pub events: Vec<Event>,
}

/// What [`Store::commit_batches`] did with one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The batch was new and is now durably stored.
    Stored,
    /// The batch had been stored before (or lies below its spool's low-water mark); nothing was
    /// written, and the agent may be acknowledged again.
    Duplicate,
}

/// The cause below a [`StoreError`], shared so that one failed group commit can be reported to
/// every batch in it.
pub type BackendError = Arc<dyn std::error::Error + Send + Sync>;

/// Why a store operation failed.
///
/// Cloneable because a group commit that fails fails for every batch in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened or its schema set up.
    #[error("opening the store at {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: BackendError,
    },
    /// The database refused an operation.
    #[error("{context}: {source}")]
    Backend {
        /// What was being done, with the ids involved.
        context: String,
        #[source]
        source: BackendError,
    },
    /// The store's files were written by a newer Outpost.
    #[error(
        "the store at {path} has schema version {found}, newer than the {supported} this build \
         understands; upgrade outpost-aggregator"
    )]
    SchemaTooNew {
        path: std::path::PathBuf,
        found: i64,
        supported: i64,
    },
    /// The writer thread is gone (shut down or panicked); nothing was stored.
    #[error("the store writer has stopped; the batch was not stored")]
    WriterStopped,
    /// The writer thread panicked; found when joining it.
    #[error("the store writer thread panicked")]
    WriterPanicked,
}

impl StoreError {
    /// Wraps a backend error with what was being done.
    pub fn backend(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

/// What the registry knows about one agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRecord {
    pub agent_id: String,
    /// The spool the agent announced in its latest Hello.
    pub spool_id: Option<u64>,
    pub first_seen_ns: i64,
    /// The last time the aggregator heard from the agent (Hello, heartbeat, batch or disconnect).
    pub last_seen_ns: i64,
    pub agent_version: Option<String>,
    /// From the latest Hello.
    pub host: Option<HostFacts>,
    /// Whether a connection is open (a Hello or heartbeat came after the last disconnect).
    pub connected: bool,
    pub last_disconnect_ns: Option<i64>,
    pub last_disconnect_reason: Option<String>,
    /// The latest status the agent reported (in Hello or a heartbeat).
    pub status: Option<AgentStatus>,
    /// When the latest status was received.
    pub status_received_ns: Option<i64>,
    /// When the agent's total of dropped events last increased.
    pub drops_changed_ns: Option<i64>,
    /// How much each drop counter grew at that last increase.
    pub drops_last_increase: DropCounters,
    /// Set when the backlog grows, kept while it does not shrink, cleared when it shrinks.
    pub backlog_rising_since_ns: Option<i64>,
    /// The agent's clock minus the aggregator's at the latest status (positive: agent ahead).
    pub clock_skew_ns: Option<i64>,
}

/// How long each kind of event is kept, counted from when the aggregator received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub metric: Duration,
    pub log: Duration,
    pub fim: Duration,
    pub status: Duration,
}

impl Retention {
    /// The period for one kind.
    pub fn for_kind(&self, kind: EventKind) -> Duration {
        match kind {
            EventKind::Metric => self.metric,
            EventKind::Log => self.log,
            EventKind::Fim => self.fim,
            EventKind::Status => self.status,
        }
    }

    /// The longest period of all kinds: after it, nothing a batch carried is left in the store.
    pub fn longest(&self) -> Duration {
        EventKind::ALL
            .iter()
            .map(|&k| self.for_kind(k))
            .max()
            .unwrap_or_default()
    }
}

impl Default for Retention {
    /// Metrics 30 days, logs 14 days, file-integrity changes a year, agent status 7 days.
    fn default() -> Self {
        const DAY: u64 = 24 * 60 * 60;
        Retention {
            metric: Duration::from_secs(30 * DAY),
            log: Duration::from_secs(14 * DAY),
            fim: Duration::from_secs(365 * DAY),
            status: Duration::from_secs(7 * DAY),
        }
    }
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub metric: u64,
    pub log: u64,
    pub fim: u64,
    pub status: u64,
    /// Deduplication entries forgotten (below a low-water mark, or of spools long gone).
    pub dedup_entries: u64,
    /// Transactions the pass took; each held the writer for one small chunk only.
    pub chunks: u64,
}

impl RetentionReport {
    /// Events of one kind deleted.
    pub fn deleted(&self, kind: EventKind) -> u64 {
        match kind {
            EventKind::Metric => self.metric,
            EventKind::Log => self.log,
            EventKind::Fim => self.fim,
            EventKind::Status => self.status,
        }
    }

    /// Events of all kinds deleted.
    pub fn deleted_events(&self) -> u64 {
        EventKind::ALL.iter().map(|&k| self.deleted(k)).sum()
    }

    pub(crate) fn add_deleted(&mut self, kind: EventKind, n: u64) {
        let slot = match kind {
            EventKind::Metric => &mut self.metric,
            EventKind::Log => &mut self.log,
            EventKind::Fim => &mut self.fim,
            EventKind::Status => &mut self.status,
        };
        *slot += n;
    }
}

/// Where batches are stored exactly once and agents are registered.
///
/// Implementations are shared between threads; every method may block on disk.
pub trait Store: Send + Sync + 'static {
    /// Stores all batches in ONE transaction (group commit). Dedup by (agent_id, spool_id, seq):
    /// a batch already stored returns Duplicate and writes nothing. Returns outcomes in order.
    /// Must be durable when it returns Ok. If it fails, nothing of any batch was stored.
    fn commit_batches(&self, batches: &[IncomingBatch]) -> Result<Vec<CommitOutcome>, StoreError>;

    /// Agent connected and said Hello: upsert registry (first_seen/last_seen, version, host facts,
    /// spool_id), take its status, and mark it connected.
    fn record_hello(&self, agent_id: &str, hello: &Hello, now_ns: i64) -> Result<(), StoreError>;

    /// Heartbeat: last_seen = now, latest AgentStatus (backlog, drops, collector errors), and the
    /// clock skew `status.time_ns - now_ns` (the agent stamps the status when it sends it).
    fn record_heartbeat(
        &self,
        agent_id: &str,
        status: &AgentStatus,
        now_ns: i64,
    ) -> Result<(), StoreError>;

    /// Connection closed (reason text), last_seen = now.
    fn record_disconnect(
        &self,
        agent_id: &str,
        reason: &str,
        now_ns: i64,
    ) -> Result<(), StoreError>;

    /// Registry rows for status, sorted by agent id.
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Delete data older than the per-kind retention, in small chunks so ingest is never stalled
    /// for long; also prune dedup entries below each agent's low_water_seq. Returns what it did.
    fn enforce_retention(
        &self,
        retention: &Retention,
        now_ns: i64,
    ) -> Result<RetentionReport, StoreError>;

    /// Count of stored events of a kind (optionally for one agent) — used by tests and benchmarks.
    fn count_events(&self, kind: EventKind, agent_id: Option<&str>) -> Result<u64, StoreError>;
}

#[cfg(test)]
pub(crate) mod testutil;
