//! The central store: every batch an agent sends is kept here exactly once, and the state the
//! aggregator keeps about its fleet.
//!
//! Two seams, both speaking only Outpost's own types (batches, events, agent facts, retention
//! periods, cursors), never a query language, so stores for fleets that outgrow one machine can
//! implement them beside the embedded [`sqlite::SqliteStore`] (which implements both):
//!
//! - [`EventStore`]: what agents sent. Idempotent commit of batches, retention, and the reads the
//!   API and the rules engine need. Append-mostly, large; a column store fits it.
//! - [`StateStore`]: what the aggregator knows and decides. The agent registry now; alert state,
//!   silences, the notification outbox and API tokens later. Small, updated in place; a
//!   relational database fits it.
//!
//! Their methods are synchronous: they may block on I/O, so callers run them on threads of their
//! own. Ingest does that through [`writer::StoreWriter`], which groups the batches of many agents
//! into one commit (group commit), applies the registry updates of the same round in one write,
//! and publishes every newly stored batch on a [`feed`]. [`retention::spawn_retention`] runs
//! retention on its own thread.
//!
//! # Exactly once
//!
//! A batch is identified by `(agent_id, spool_id, seq)`. [`EventStore::commit_batches`] stores a
//! batch the first time it sees that key and answers [`BatchCommit::Duplicate`] afterwards, so
//! the aggregator can acknowledge a resent batch again without storing it twice. The agent's
//! `low_water_seq` promises that no lower `seq` of that spool will ever be sent again; the store
//! may forget the deduplication entries below it, and keeps answering `Duplicate` for anything
//! below it. The rule itself is in [`dedup`], free of any backend.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::enroll::token::EnrollmentToken;
use crate::tokens::TokenRecord;
use outpost_common::event::{AgentStatus, DropCounters, Event, EventKind, FimChange, HostFacts};
use outpost_common::wire::Hello;
use serde::Serialize;

pub mod alerting;
pub mod clickhouse;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod dedup;
pub mod feed;
pub mod fim_trail;
pub mod marks;
pub mod postgres;
pub mod retention;
pub mod series;
pub mod split;
pub mod sqlite;
pub mod summary;
pub mod writer;

pub use feed::{CommittedBatch, Feed, FeedItem, FeedSubscriber};
pub use sqlite::{SqliteReader, SqliteStore};
pub use summary::{CPU_UTILIZATION, FILESYSTEM_UTILIZATION, HostSummary, MEMORY_UTILIZATION};
pub use writer::{StoreWriter, WriterConfig, WriterFigures, WriterJoin, WriterStats};

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
    /// The events as the agent compressed them, when it did: a store may keep the bodies of
    /// log records in this form rather than a row's worth of text each.
    pub packed: Option<PackedEvents>,
}

/// A batch's events as they arrived compressed: the data of a [`wire::PackedBatch`], the event
/// list [`wire::encode_events`] writes, compressed with `codec`.
///
/// [`wire::PackedBatch`]: outpost_common::wire::PackedBatch
/// [`wire::encode_events`]: outpost_common::wire::encode_events
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedEvents {
    pub codec: outpost_common::wire::Codec,
    /// The list's length once decompressed.
    pub raw_bytes: u32,
    pub data: Vec<u8>,
}

impl PackedEvents {
    /// The events again.
    pub fn unpack(&self) -> Result<Vec<Event>, outpost_common::wire::WireError> {
        outpost_common::wire::decode_packed_events(self.codec, &self.data, self.raw_bytes as usize)
    }
}

/// A change to the agent registry. Sessions hand these to [`StoreWriter::record`], which applies
/// all the updates of one writer round in one write.
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
    /// The aggregator received something else from the agent (a batch) at `now_ns`. The writer
    /// adds one for every agent whose batches it commits.
    Seen { agent_id: String, now_ns: i64 },
}

impl RegistryUpdate {
    /// The agent the update is about.
    pub fn agent_id(&self) -> &str {
        match self {
            RegistryUpdate::Hello { agent_id, .. }
            | RegistryUpdate::Heartbeat { agent_id, .. }
            | RegistryUpdate::Disconnect { agent_id, .. }
            | RegistryUpdate::Seen { agent_id, .. } => agent_id,
        }
    }

    /// When the aggregator learnt what the update says.
    pub fn now_ns(&self) -> i64 {
        match self {
            RegistryUpdate::Hello { now_ns, .. }
            | RegistryUpdate::Heartbeat { now_ns, .. }
            | RegistryUpdate::Disconnect { now_ns, .. }
            | RegistryUpdate::Seen { now_ns, .. } => *now_ns,
        }
    }
}

/// What committing one batch meant for its agent: acknowledge it, and whether it was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The batch was new and is now durably stored.
    Stored,
    /// The batch had been stored before (or lies below its spool's low-water mark); nothing was
    /// written, and the agent may be acknowledged again.
    Duplicate,
}

/// What [`EventStore::commit_batches`] did with one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchCommit {
    /// New and now durably stored; its events have the cursors from `start` on, one each, in
    /// the batch's order, and the `notices` the store added the cursors right after them.
    Stored {
        start: Cursor,
        /// Events the store added to the batch, stored after its own: one critical log record
        /// (source [`fim_trail::NOTICE_SOURCE`]) for every break it found in the agent's
        /// file-integrity trail ([`fim_trail`]), so rules and queries see the break as they see the
        /// agent's logs. Usually empty.
        notices: Vec<Event>,
    },
    /// Stored before (or below its spool's low-water mark); nothing was written.
    Duplicate,
}

impl BatchCommit {
    /// Stored, with no notices added.
    pub fn stored(start: Cursor) -> BatchCommit {
        BatchCommit::Stored {
            start,
            notices: Vec::new(),
        }
    }

    /// The outcome the agent is told.
    pub fn outcome(&self) -> CommitOutcome {
        match self {
            BatchCommit::Stored { .. } => CommitOutcome::Stored,
            BatchCommit::Duplicate => CommitOutcome::Duplicate,
        }
    }
}

/// A place in an event store's order of events; each stored event has one.
///
/// Opaque outside the store: it is handed out ([`StoredEvent::cursor`], [`EventPage::next`],
/// [`CommittedBatch::start`]) and handed back, or rendered as a token for API clients
/// ([`fmt::Display`], [`std::str::FromStr`]). Cursors grow in commit order: every event of a
/// commit has a higher cursor than every event of an earlier commit, and a batch's events have
/// consecutive cursors in the batch's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(u64);

impl Cursor {
    /// Before every stored event.
    pub const START: Cursor = Cursor(0);

    /// The cursor `n` events further on.
    pub fn advance(self, n: usize) -> Cursor {
        Cursor(self.0.saturating_add(n as u64))
    }

    pub(crate) fn from_position(position: u64) -> Cursor {
        Cursor(position)
    }

    pub(crate) fn position(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{:x}", self.0)
    }
}

impl std::str::FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        s.strip_prefix('c')
            .filter(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .map(Cursor)
            .ok_or_else(|| BadCursor(s.chars().take(64).collect()))
    }
}

/// A cursor token that no store handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a cursor (use the `next` value of a previous page)")]
pub struct BadCursor(String);

/// Which events [`EventStore::events`] returns: those matching every field, in cursor order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// One kind, or every kind.
    pub kind: Option<EventKind>,
    /// One agent, or the whole fleet.
    pub agent_id: Option<String>,
    /// Events whose own time (`time_ns`, the agent's clock) lies in this range; `None`: any time.
    pub time_ns: Option<Range<i64>>,
    /// The first cursor to consider: [`Cursor::START`], or a previous page's `next`.
    pub from: Cursor,
    /// Stop before this cursor; `None`: up to the latest commit.
    pub until: Option<Cursor>,
    /// Events in one page at most; zero counts as one.
    pub limit: usize,
}

impl Default for EventQuery {
    /// Every event, in pages of 1,000.
    fn default() -> Self {
        EventQuery {
            kind: None,
            agent_id: None,
            time_ns: None,
            from: Cursor::START,
            until: None,
            limit: 1000,
        }
    }
}

/// Which file-integrity changes [`SqliteReader::fim_changes`] lists: those matching every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FimQuery {
    /// One agent, or the whole fleet.
    pub agent_id: Option<String>,
    /// Paths starting with this text (`/etc/` for everything below `/etc`).
    pub path_prefix: Option<String>,
    pub change: Option<FimChange>,
    /// Changes whose own time (`time_ns`, the agent's clock) lies in this range.
    pub time_ns: Option<Range<i64>>,
    /// The latest this many changes; zero counts as one.
    pub limit: usize,
}

/// One page of an [`EventQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Where the next page starts, when this one was full; `None` when the query has returned
    /// everything stored so far.
    pub next: Option<Cursor>,
}

/// What [`EventStore::follow`] answers.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowPage {
    pub events: Vec<StoredEvent>,
    /// Where the next call starts.
    pub next: Cursor,
    /// Batches whose commit began but never completed (their resends were stored with other
    /// cursors), passed over.
    pub passed_over: u64,
}

/// An event as stored, with where and when it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub cursor: Cursor,
    pub agent_id: String,
    /// When the aggregator received its batch (never earlier than an earlier commit's).
    pub received_ns: i64,
    pub event: Event,
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
    /// A store on a database server could not be reached, or its schema set up.
    #[error("opening the store in {database}: {source}")]
    OpenDatabase {
        /// Which database on which server, as user who (never the password).
        database: String,
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
    /// The store's files, or its database, were written by a newer Outpost.
    #[error(
        "the store at {location} has schema version {found}, newer than the {supported} this \
         build understands; upgrade outpost-aggregator"
    )]
    SchemaTooNew {
        /// The store's file, or its database on its server.
        location: String,
        found: i64,
        supported: i64,
    },
    /// The writer thread is gone (shut down or panicked); nothing was stored.
    #[error("the store writer has stopped; the batch was not stored")]
    WriterStopped,
    /// The writer thread panicked; found when joining it.
    #[error("the store writer thread panicked")]
    WriterPanicked,
    /// The write would break a rule of the data (a name already taken).
    #[error("{0}")]
    Conflict(String),
    /// The alerting lease passed to another aggregator; nothing was written
    /// ([`alerting::AlertingStore::save_alerting_fenced`]).
    #[error(
        "the alerting lease passed to another aggregator (this one held epoch {epoch}); \
         nothing was written"
    )]
    LeaseLost { epoch: i64 },
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
    /// The labels of the agent's latest Hello.
    pub labels: BTreeMap<String, String>,
    /// The host's latest CPU, memory and fullest filesystem. The event store derives it from
    /// metric points ([`EventStore::host_summaries`]); a state store answers `None`, and readers
    /// join the two with [`join_host_summaries`].
    pub host_summary: Option<HostSummary>,
}

/// How long each kind of event is kept, counted from when the aggregator received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub metric: Duration,
    /// Metric points are packed into chunks per series once this span of receive time has
    /// passed (aligned to the epoch): rows until then, about 7 bytes a point after.
    pub metric_chunk: Duration,
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
            metric_chunk: Duration::from_secs(30 * 60),
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
    /// Steps the pass took; each held up commits for one small chunk only.
    pub chunks: u64,
    /// Metric points packed from rows into chunks, and the chunks written.
    pub metric_points_packed: u64,
    pub metric_chunks_written: u64,
    /// Metric series deleted for having no point left.
    pub metric_series_pruned: u64,
}

impl RetentionReport {
    /// Adds what another pass did.
    pub fn add(&mut self, other: &RetentionReport) {
        self.metric += other.metric;
        self.log += other.log;
        self.fim += other.fim;
        self.status += other.status;
        self.dedup_entries += other.dedup_entries;
        self.chunks += other.chunks;
        self.metric_points_packed += other.metric_points_packed;
        self.metric_chunks_written += other.metric_chunks_written;
        self.metric_series_pruned += other.metric_series_pruned;
    }

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

/// Where what agents send is stored, exactly once.
///
/// Implementations are shared between threads; every method may block on I/O.
pub trait EventStore: Send + Sync + 'static {
    /// Stores the batches as one unit: when it returns `Ok`, every new batch is durably stored
    /// and visible to readers; when it fails, nothing of any batch was stored.
    ///
    /// Deduplicates by `(agent_id, spool_id, seq)` following [`dedup`]: a batch stored before, or
    /// below its spool's low-water mark, is [`BatchCommit::Duplicate`] and writes nothing (this
    /// includes a repeat within the same call). Returns one answer per batch, in order. Cursors
    /// of new events follow those of every earlier commit.
    ///
    /// Checks every file-integrity event of a new batch against its agent's trail ([`fim_trail`]),
    /// in commit order, within the same commit: the trail's position commits with the events,
    /// a duplicate batch does not touch it, and each break is recorded, logged, and stored as a
    /// notice after the batch's events ([`BatchCommit::Stored`]). The event is stored either way.
    fn commit_batches(&self, batches: &[IncomingBatch]) -> Result<Vec<BatchCommit>, StoreError>;

    /// Where the events committed from now on start: a query from it sees only what is
    /// committed afterwards, and every new event gets a cursor at or after it. (The embedded
    /// store answers exactly the next event's cursor; a store whose cursors come from a clock
    /// answers a lower bound.)
    fn end(&self) -> Result<Cursor, StoreError>;

    /// One page of stored events matching `query`, in cursor order.
    ///
    /// Metric points the store has packed into per-series chunks (the embedded store, once
    /// `metric_chunk` has passed) are reached through [`EventStore::metric_query`] only.
    fn events(&self, query: &EventQuery) -> Result<EventPage, StoreError>;

    /// The latest CPU, memory and fullest filesystem of every agent that sent any of them, by
    /// agent id (what fleet status shows). Points are taken in agent time, so batches resent or
    /// delivered late never roll a summary back ([`HostSummary::observe`]).
    fn host_summaries(&self) -> Result<BTreeMap<String, HostSummary>, StoreError>;

    /// Committed events from `from` on, in cursor order, at most about `limit` (whole batches),
    /// for the one reader that follows every commit of every aggregator sharing the store
    /// (alerting, in a cluster). [`FollowPage::next`] is where to continue: it never passes a
    /// commit that may still complete, so a reader calling again from it sees every committed
    /// event once. A store shared by several aggregators answers only up to a few seconds
    /// behind its clock, so that commits of aggregators whose clocks lag a little are not
    /// passed over.
    ///
    /// The embedded store has one writer whose commits are atomic: every event it shows is
    /// committed, and `next` follows the last one.
    fn follow(&self, from: Cursor, limit: usize) -> Result<FollowPage, StoreError> {
        let page = self.events(&EventQuery {
            from,
            limit,
            ..EventQuery::default()
        })?;
        let next = page
            .next
            .or_else(|| page.events.last().map(|e| e.cursor.advance(1)))
            .unwrap_or(from);
        Ok(FollowPage {
            events: page.events,
            next,
            passed_over: 0,
        })
    }

    /// Answers a metric query ([`series`]): the selected series' values per step.
    fn metric_query(
        &self,
        query: &series::MetricQuery,
    ) -> Result<series::MetricAnswer, series::MetricQueryError>;

    /// Deletes events received longer ago than their kind's period, in small steps so that
    /// commits are never held up for long, and forgets deduplication entries below each spool's
    /// low-water mark (and those of spools replaced longer ago than the longest period; a spool
    /// is replaced when its agent's latest Hello named another).
    ///
    /// A store may delete in coarser units than events: the ClickHouse store drops whole days,
    /// by the events' own time, once the whole day is past the period. Either way nothing
    /// younger than its period is deleted, and the report counts what was deleted (whole units).
    fn enforce_retention(
        &self,
        retention: &Retention,
        now_ns: i64,
    ) -> Result<RetentionReport, StoreError>;

    /// Whether the store answers now (`/readyz`): cheap, and an error when it does not.
    fn ping(&self) -> Result<(), StoreError> {
        self.end().map(drop)
    }

    /// The backend's name as the configuration spells it (`sqlite`, `clickhouse`), for
    /// `/metrics` and `/readyz`.
    fn backend_name(&self) -> &'static str;
}

/// Where the aggregator keeps what it knows and decides about its fleet: the agent registry now;
/// alert state, silences, the notification outbox and API tokens land here later.
///
/// Implementations are shared between threads; every method may block on I/O.
pub trait StateStore: Send + Sync + 'static {
    /// Applies the updates in order, as one write: all or none.
    ///
    /// - Hello: registers the agent if new (first seen now), takes its version, host facts and
    ///   spool, its status (as a heartbeat does) and marks it connected.
    /// - Heartbeat: the latest status, the [`marks`] derived from the previous one, the clock
    ///   skew ([`marks::clock_skew_ns`]); marks it connected.
    /// - Disconnect: not connected, with the time and reason.
    /// - Seen: the agent was heard from.
    ///
    /// Every update moves `last_seen_ns` forward to its time, never back. Registry facts are
    /// refreshed by every heartbeat, so an implementation may make this write cheaper than a
    /// batch commit: an update acknowledged just before a crash may be lost, but the registry is
    /// never left half-updated.
    fn record_all(&self, updates: &[RegistryUpdate]) -> Result<(), StoreError>;

    /// Applies one update ([`StateStore::record_all`]).
    fn record(&self, update: &RegistryUpdate) -> Result<(), StoreError> {
        self.record_all(std::slice::from_ref(update))
    }

    /// Every registered agent, sorted by agent id.
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// A number that changes whenever what [`StateStore::agents`] answers may have changed
    /// (registry updates, and host summaries written by commits), so readers can keep a view of
    /// the fleet until it does. `None`: the store cannot tell, and a view must be rebuilt to be
    /// current.
    fn registry_generation(&self) -> Option<u64> {
        None
    }

    /// One agent, if registered.
    fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError>;

    /// Stores a new API token; [`StoreError::Conflict`] when a token not revoked has its name.
    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;

    /// The token with this id, revoked and expired ones included.
    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// Every token, newest first.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Revokes the token with this id (or, failing that, the one not revoked with this name) at
    /// `now_ns`; answers it as revoked, or `None` when there is no such token. Revoking a revoked
    /// token changes nothing.
    fn revoke_token(
        &self,
        id_or_name: &str,
        now_ns: i64,
    ) -> Result<Option<TokenRecord>, StoreError>;

    /// Records that the token was used at `now_ns` (callers limit how often).
    fn touch_token(&self, id: &str, now_ns: i64) -> Result<(), StoreError>;

    /// Appends entries to the audit log.
    fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError>;

    /// Up to `limit` audit entries older than the entry `before` (all when `None`), newest first.
    fn audit(&self, before: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// Takes an agent out of the fleet (`agents remove`): [`StateStore::agents`] and
    /// [`StateStore::agent`] no longer answer it, until its next Hello. Answers whether it was
    /// in the fleet.
    fn remove_agent(&self, agent_id: &str, now_ns: i64) -> Result<bool, StoreError>;

    /// Stores a new enrollment token.
    fn insert_enrollment_token(&self, token: &EnrollmentToken) -> Result<(), StoreError>;

    /// The enrollment token with this id (16 hex digits), revoked and expired ones included.
    fn enrollment_token(&self, id: &str) -> Result<Option<EnrollmentToken>, StoreError>;

    /// Every enrollment token, newest first.
    fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>, StoreError>;

    /// Revokes the enrollment token with this id at `now_ns`; answers it as revoked, or `None`
    /// when there is no such token. Revoking a revoked token changes nothing.
    fn revoke_enrollment_token(
        &self,
        id: &str,
        now_ns: i64,
    ) -> Result<Option<EnrollmentToken>, StoreError>;

    /// Whether a public key with this SHA-256 was certified by enrollment or renewal before.
    fn key_enrolled(&self, key_sha256: &[u8; 32]) -> Result<bool, StoreError>;

    /// Records a certified key and spends a use of its enrollment token, as one write: all or
    /// none. [`StoreError::Conflict`] when the key was certified before, or the token can no
    /// longer be used (used up, revoked or expired since it was checked).
    fn record_enrollment(&self, enrollment: &Enrollment) -> Result<(), StoreError>;

    /// Whether the store answers now (`/readyz`): cheap, and an error when it does not.
    fn ping(&self) -> Result<(), StoreError> {
        self.agent("").map(drop)
    }

    /// The backend's name as the configuration spells it (`sqlite`, `postgres`), for `/metrics`
    /// and `/readyz`.
    fn backend_name(&self) -> &'static str;
}

/// A state store with the alerting engine's part: what a state backend implements.
pub trait StateBackend: StateStore + alerting::AlertingStore {}
impl<T: StateStore + alerting::AlertingStore> StateBackend for T {}

/// A public key certified for an agent ([`StateStore::record_enrollment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// SHA-256 of the public key (DER).
    pub key_sha256: [u8; 32],
    pub agent_id: String,
    /// The enrollment token whose use this spends; `None` for a renewal.
    pub token_id: Option<String>,
    pub now_ns: i64,
}

/// One call to the API that changed something or was refused; or an enrollment or renewal
/// over QUIC (`method` `QUIC`, `route` `enroll "<id>"` or `renew "<id>"`, `token_id` the
/// enrollment token's, `outcome` `ok` or `refused: <reason>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Its place in the log (0 before it is stored); newer entries have higher ids.
    pub id: i64,
    pub time_ns: i64,
    /// The token presented, when it was a valid one.
    pub token_id: Option<String>,
    pub token_name: Option<String>,
    /// The client's IP address.
    pub address: String,
    pub method: String,
    /// The matched route (`/api/v1/tokens/{id}`), or the path when none matched.
    pub route: String,
    pub status: u16,
    /// `ok`, `unauthorized`, `forbidden`, `rate_limited` or `refused` (any other error).
    pub outcome: String,
}

/// Fills each agent's `host_summary` from the event store's summaries.
pub fn join_host_summaries(
    agents: &mut [AgentRecord],
    mut summaries: BTreeMap<String, HostSummary>,
) {
    for a in agents {
        a.host_summary = summaries.remove(&a.agent_id);
    }
}

#[cfg(any(test, feature = "conformance"))]
// Built for the conformance suite too, which uses only some of the builders.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_render_as_tokens_and_parse_back() {
        for n in [0, 1, 0xff, u64::MAX] {
            let c = Cursor::from_position(n);
            assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        }
        assert_eq!(Cursor::from_position(255).to_string(), "cff");
        for bad in ["", "c", "ff", "c-1", "cxyz", "c10000000000000000", " c1"] {
            let err = bad.parse::<Cursor>().unwrap_err();
            assert!(err.to_string().contains("is not a cursor"), "{bad}: {err}");
        }
        assert_eq!(Cursor::START.advance(3), Cursor::from_position(3));
        assert_eq!(
            Cursor::from_position(u64::MAX).advance(1),
            Cursor::from_position(u64::MAX)
        );
    }

    #[test]
    fn batch_commits_tell_the_agent_stored_or_duplicate() {
        let stored = BatchCommit::stored(Cursor::START);
        assert_eq!(stored.outcome(), CommitOutcome::Stored);
        assert_eq!(BatchCommit::Duplicate.outcome(), CommitOutcome::Duplicate);
    }

    #[test]
    fn host_summaries_join_their_agents() {
        let record = |id: &str| AgentRecord {
            agent_id: id.to_owned(),
            spool_id: None,
            first_seen_ns: 0,
            last_seen_ns: 0,
            agent_version: None,
            host: None,
            connected: false,
            last_disconnect_ns: None,
            last_disconnect_reason: None,
            status: None,
            status_received_ns: None,
            drops_changed_ns: None,
            drops_last_increase: DropCounters::default(),
            backlog_rising_since_ns: None,
            clock_skew_ns: None,
            labels: BTreeMap::new(),
            host_summary: Some(HostSummary::default()),
        };
        let mut agents = vec![record("a"), record("b")];
        let busy = HostSummary {
            cpu_busy: Some((0.5, 1)),
            ..HostSummary::default()
        };
        let summaries = BTreeMap::from([
            ("b".to_owned(), busy.clone()),
            ("gone".to_owned(), busy.clone()),
        ]);
        join_host_summaries(&mut agents, summaries);
        assert_eq!(agents[0].host_summary, None);
        assert_eq!(agents[1].host_summary, Some(busy));
    }
}
