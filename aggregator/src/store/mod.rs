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

use outpost_common::event::{AgentStatus, DropCounters, Event, EventKind, HostFacts, MetricPoint};
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

/// A change to the agent registry. Sessions hand these to [`StoreWriter::record`], which applies
/// them with the next group commit instead of one transaction (and one fsync) each.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryUpdate {
    /// The agent connected and said Hello.
    Hello {
        agent_id: String,
        hello: Hello,
        now_ns: i64,
    },
    /// The agent's periodic status.
    Heartbeat {
        agent_id: String,
        status: AgentStatus,
        now_ns: i64,
    },
    /// The agent's current connection closed.
    Disconnect {
        agent_id: String,
        reason: String,
        now_ns: i64,
    },
}

impl RegistryUpdate {
    /// The agent the update is about.
    pub fn agent_id(&self) -> &str {
        match self {
            RegistryUpdate::Hello { agent_id, .. }
            | RegistryUpdate::Heartbeat { agent_id, .. }
            | RegistryUpdate::Disconnect { agent_id, .. } => agent_id,
        }
    }
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
    /// The host's latest CPU, memory and fullest filesystem, from its metric events; `None`
    /// until one of them arrives.
    pub host_summary: Option<HostSummary>,
}

/// The OpenTelemetry name of the CPU utilisation gauge (0..1, attribute `state`; per-core points
/// also carry `cpu`).
pub const CPU_UTILIZATION: &str = "system.cpu.utilization";
/// The OpenTelemetry name of the memory utilisation gauge (0..1, attribute `state`).
pub const MEMORY_UTILIZATION: &str = "system.memory.utilization";
/// The OpenTelemetry name of the filesystem utilisation gauge (0..1, attributes `device`, `type`,
/// `mountpoint`).
pub const FILESYSTEM_UTILIZATION: &str = "system.filesystem.utilization";

/// A host's latest load at a glance, kept beside the registry so fleet status needs no query
/// over the metrics table. Each value carries the agent's time of the point it came from.
///
/// Built by [`HostSummary::observe`] from metric points in any order: a point older than the
/// value held is ignored, so batches resent or delivered late cannot roll the summary back.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostSummary {
    /// Busy fraction of all CPUs (1 − idle of the host total) and its time.
    pub cpu_busy: Option<(f64, i64)>,
    /// Used fraction of memory and its time.
    pub memory_used: Option<(f64, i64)>,
    /// The fullest filesystem of the latest collection: mountpoint, used fraction, time.
    pub fullest_fs: Option<(String, f64, i64)>,
}

impl HostSummary {
    /// Takes in one metric point; points that are not one of the three summarised gauges, that
    /// are per-core, or whose value is not finite change nothing.
    pub fn observe(&mut self, m: &MetricPoint) {
        if !m.value.is_finite() {
            return;
        }
        let attr = |key: &str| {
            m.attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        match m.name.as_str() {
            CPU_UTILIZATION if attr("cpu").is_none() && attr("state") == Some("idle") => {
                // Rounding in the agent can put idle a hair above 1.
                let busy = (1.0 - m.value).clamp(0.0, 1.0);
                keep_latest(&mut self.cpu_busy, busy, m.time_ns);
            }
            MEMORY_UTILIZATION if attr("state") == Some("used") => {
                keep_latest(&mut self.memory_used, m.value, m.time_ns);
            }
            FILESYSTEM_UTILIZATION => {
                if let Some(mountpoint) = attr("mountpoint") {
                    self.observe_filesystem(mountpoint, m.value, m.time_ns);
                }
            }
            _ => {}
        }
    }

    /// Takes in another summary as if its points had been observed here.
    pub fn merge(&mut self, other: &HostSummary) {
        if let Some((value, time_ns)) = other.cpu_busy {
            keep_latest(&mut self.cpu_busy, value, time_ns);
        }
        if let Some((value, time_ns)) = other.memory_used {
            keep_latest(&mut self.memory_used, value, time_ns);
        }
        if let Some((mountpoint, value, time_ns)) = &other.fullest_fs {
            self.observe_filesystem(mountpoint, *value, *time_ns);
        }
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.cpu_busy.is_none() && self.memory_used.is_none() && self.fullest_fs.is_none()
    }

    /// The points of one time form one collection: a newer collection replaces the fullest
    /// filesystem, within the same one the largest value wins (the first seen on a tie).
    fn observe_filesystem(&mut self, mountpoint: &str, value: f64, time_ns: i64) {
        let replace = match &self.fullest_fs {
            None => true,
            Some((_, held, held_ns)) => {
                time_ns > *held_ns || (time_ns == *held_ns && value > *held)
            }
        };
        if replace {
            self.fullest_fs = Some((mountpoint.to_owned(), value, time_ns));
        }
    }
}

/// Replaces `slot` unless it holds a newer value; on equal times the later observed wins.
fn keep_latest(slot: &mut Option<(f64, i64)>, value: f64, time_ns: i64) {
    if slot.is_none_or(|(_, held_ns)| time_ns >= held_ns) {
        *slot = Some((value, time_ns));
    }
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

#[cfg(test)]
mod tests {
    use outpost_common::event::MetricKind;

    use super::*;

    /// A gauge point; also used by the SQLite store's tests.
    pub(super) fn point(
        name: &str,
        attributes: &[(&str, &str)],
        time_ns: i64,
        value: f64,
    ) -> MetricPoint {
        MetricPoint {
            name: name.to_owned(),
            unit: "1".to_owned(),
            attributes: attributes
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            time_ns,
            value,
            kind: MetricKind::Gauge,
        }
    }

    fn observed(points: &[MetricPoint]) -> HostSummary {
        let mut s = HostSummary::default();
        for p in points {
            s.observe(p);
        }
        s
    }

    #[test]
    fn cpu_is_one_minus_the_idle_share_of_the_host_total() {
        let s = observed(&[
            point(CPU_UTILIZATION, &[("state", "user")], 10, 0.6),
            point(
                CPU_UTILIZATION,
                &[("cpu", "cpu0"), ("state", "idle")],
                10,
                0.1,
            ),
            point(CPU_UTILIZATION, &[("state", "idle")], 10, 0.75),
            point(
                CPU_UTILIZATION,
                &[("cpu", "cpu1"), ("state", "idle")],
                20,
                0.9,
            ),
        ]);
        assert_eq!(s.cpu_busy, Some((0.25, 10)));
        // An idle share a hair above 1 reads as not busy at all.
        let s = observed(&[point(CPU_UTILIZATION, &[("state", "idle")], 10, 1.000_001)]);
        assert_eq!(s.cpu_busy, Some((0.0, 10)));
    }

    #[test]
    fn memory_is_the_used_share() {
        let s = observed(&[
            point(MEMORY_UTILIZATION, &[("state", "free")], 10, 0.3),
            point(MEMORY_UTILIZATION, &[("state", "used")], 10, 0.43),
            point(MEMORY_UTILIZATION, &[("state", "cached")], 10, 0.2),
        ]);
        assert_eq!(s.memory_used, Some((0.43, 10)));
        assert_eq!((s.cpu_busy, s.fullest_fs), (None, None));
    }

    #[test]
    fn older_points_do_not_replace_newer_ones() {
        let s = observed(&[
            point(MEMORY_UTILIZATION, &[("state", "used")], 20, 0.5),
            point(MEMORY_UTILIZATION, &[("state", "used")], 10, 0.9),
            point(CPU_UTILIZATION, &[("state", "idle")], 20, 0.5),
            point(CPU_UTILIZATION, &[("state", "idle")], 10, 0.0),
        ]);
        assert_eq!(s.memory_used, Some((0.5, 20)));
        assert_eq!(s.cpu_busy, Some((0.5, 20)));
    }

    #[test]
    fn the_fullest_filesystem_comes_from_the_latest_collection() {
        let fs = |mountpoint, time_ns, value| {
            point(
                FILESYSTEM_UTILIZATION,
                &[
                    ("device", "/dev/sda1"),
                    ("type", "ext4"),
                    ("mountpoint", mountpoint),
                ],
                time_ns,
                value,
            )
        };
        let first = [fs("/", 10, 0.5), fs("/var", 10, 0.87), fs("/home", 10, 0.2)];
        assert_eq!(
            observed(&first).fullest_fs,
            Some(("/var".to_owned(), 0.87, 10))
        );
        // The next collection: /var was cleaned up, so / is now the fullest, even though /var's
        // old value is higher.
        let mut both = first.to_vec();
        both.extend([fs("/", 20, 0.6), fs("/var", 20, 0.3)]);
        assert_eq!(observed(&both).fullest_fs, Some(("/".to_owned(), 0.6, 20)));
        // Late points of the older collection change nothing.
        both.push(fs("/home", 10, 0.99));
        assert_eq!(observed(&both).fullest_fs, Some(("/".to_owned(), 0.6, 20)));
        // Without a mountpoint a point cannot be named, so it is skipped.
        let s = observed(&[point(FILESYSTEM_UTILIZATION, &[("device", "x")], 30, 0.9)]);
        assert_eq!(s.fullest_fs, None);
    }

    #[test]
    fn other_metrics_and_non_finite_values_change_nothing() {
        let s = observed(&[
            point("system.memory.usage", &[("state", "used")], 10, 1e9),
            point(MEMORY_UTILIZATION, &[("state", "used")], 10, f64::NAN),
            point(CPU_UTILIZATION, &[("state", "idle")], 10, f64::INFINITY),
            point(FILESYSTEM_UTILIZATION, &[("mountpoint", "/")], 10, f64::NAN),
        ]);
        assert!(s.is_empty(), "{s:?}");
    }

    #[test]
    fn merging_equals_observing_everything_in_one() {
        let points = [
            point(CPU_UTILIZATION, &[("state", "idle")], 20, 0.5),
            point(MEMORY_UTILIZATION, &[("state", "used")], 20, 0.4),
            point(FILESYSTEM_UTILIZATION, &[("mountpoint", "/")], 20, 0.3),
            point(FILESYSTEM_UTILIZATION, &[("mountpoint", "/var")], 20, 0.8),
            point(CPU_UTILIZATION, &[("state", "idle")], 10, 0.9),
            point(FILESYSTEM_UTILIZATION, &[("mountpoint", "/srv")], 10, 0.95),
        ];
        let whole = observed(&points);
        for split in 0..=points.len() {
            let (a, b) = points.split_at(split);
            let mut merged = observed(a);
            merged.merge(&observed(b));
            assert_eq!(merged, whole, "split at {split}");
            let mut merged = observed(b);
            merged.merge(&observed(a));
            assert_eq!(merged, whole, "split at {split}, reversed");
        }
    }
}
