//! The durable SQLite spool: where collected events wait until the aggregator has stored them.
//!
//! The agent's promise rests here: an event the spool accepts reaches the aggregator exactly once,
//! or its loss is counted by reason. To keep it:
//!
//! - A collector's events and its checkpoint commit in **one transaction** ([`Spool::append`]), so
//!   after a crash the collector resumes exactly where the committed data ends.
//! - Events are packed into batches with a persisted, strictly increasing `seq` that is never
//!   reused within a spool id, even after everything was acknowledged and the agent restarted;
//!   the aggregator deduplicates by `(agent, spool id, seq)`, so reusing a seq would lose data.
//! - A batch is deleted only when acknowledged ([`Spool::ack`]), dropped with a counted reason
//!   ([`Spool::drop_batch`]), or split into smaller batches holding exactly its events
//!   ([`Spool::split_batch`]). Once handed to the shipper ([`Spool::batches_after`]) it may
//!   already be stored centrally, so it is never evicted: evicting it would count a loss that did
//!   not happen.
//! - Batches are packed within the configured limits, lowered to what the aggregator announces
//!   ([`Spool::set_batch_limits`]); a batch packed before the aggregator's limits were known is
//!   split to fit them rather than dropped.
//! - A batch's payload is stored as it travels: compressed ([`SpoolConfig::compression`], zstd
//!   in the agent's default configuration) when that makes it smaller, so a batch is compressed
//!   once, when it is written, and its bytes are written, read back and sent as they are. The
//!   batch limits apply to the payload before compression (what the aggregator decodes). The
//!   batches of one commit are compressed by as many threads as the host has CPUs (up to four).
//! - A submission's events are encoded, and freed, before they reach the spool's thread
//!   ([`Submission::prepare`]): by the source's own thread when it prepares them, else by the
//!   task that submits them.
//! - The payload bytes of unacknowledged batches, as stored, are capped ([`SpoolConfig::max_bytes`]). When a
//!   submission does not fit, sources that can wait ([`Class::Wait`]) get [`SubmitOutcome::Full`]
//!   and nothing is written; sources that cannot ([`Class::Drop`]) evict the oldest evictable
//!   batches or, failing that, lose the new submission. Every drop is counted in the same
//!   transaction as the change that caused it.
//!
//! The database runs in WAL mode with `synchronous = FULL`: a batch may be shipped as soon as its
//! transaction commits, so the commit must survive power loss, or a rolled-back seq could be
//! reused for different events and then discarded by the aggregator as a duplicate. The one
//! exception is the deletion of acknowledged batches ([`Spool::ack`]), committed without an
//! fsync: power loss can only roll it back, together with everything committed after it, which
//! brings back batches the aggregator already holds; they are sent again and it recognises them
//! as duplicates. The next commit with an fsync, or a WAL checkpoint, makes it durable.
//!
//! The disk may fill up, under the spool or because of it. The spool keeps a reserve file beside
//! the database and caps appends below the free space beyond it ([`disk`]), so acknowledgements
//! and checkpoints still commit on a full disk: Wait-class sources pause, droppable samples are
//! dropped as [`DropReason::DiskFull`], and the backlog drains as soon as the aggregator is
//! reachable. The database uses `auto_vacuum = INCREMENTAL`: once acknowledgements free enough
//! pages they are given back to the filesystem and the write-ahead log is truncated, so the files
//! shrink after a drain. The spool's [`Trouble`] (disk full, read-only, unavailable) is part of
//! its [`SpoolStats`].
//!
//! One thread owns the [`Spool`]; the rest of the agent talks to it through the [`writer`], which
//! also group-commits concurrent submissions.
//!
//! ```no_run
//! use outpost_agent::spool::{Checkpoint, Class, Spool, SpoolConfig, Submission};
//!
//! let mut spool = Spool::open(SpoolConfig::new("/var/lib/outpost/spool.db", 256 << 20))?;
//! let sub = Submission::new(Class::Wait, vec![]).with_checkpoint(Checkpoint::new("app.log", *b"42"));
//! let outcomes = spool.append(vec![sub], outpost_common::time::now_ns())?;
//! for batch in spool.batches_after(0, 16)? {
//!     // ... ship it, then:
//!     spool.ack(&[batch.seq])?;
//! }
//! # Ok::<(), outpost_agent::spool::SpoolError>(())
//! ```

pub mod disk;
mod plan;
pub mod writer;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use outpost_common::event::{DropCounters, DropReason, Event};
use outpost_common::wire::{self, Codec, Packer, WireError};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use self::disk::{DiskCap, Reserve};
pub use self::disk::{
    DiskEvent, DiskReporter, FreeSpace, NoReporter, Statvfs, Trouble, TroubleKind, diagnose,
};
use self::plan::{
    BatchLimits, BatchSize, Cap, Decision, Evictable, Holding, PlannedBatch, SizedSubmission,
};
pub use self::writer::{SpoolHandle, SpoolJoin, spawn};

/// The default largest number of events in one batch.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 1000;

/// The default largest batch payload, in bytes; also the largest single event accepted.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1024 * 1024;

/// The default size of the reserve file kept beside the database.
pub const DEFAULT_RESERVE_BYTES: u64 = 8 * 1024 * 1024;

/// Free pages below which acknowledgements do not give pages back to the filesystem while the
/// disk is full (64 KiB with 4 KiB pages).
const VACUUM_MIN_PAGES: u64 = 16;

/// Free pages given back per acknowledgement while the disk is full (256 KiB with 4 KiB pages),
/// so that no single step holds the spool for long.
const VACUUM_STEP_PAGES: u64 = 64;

/// Free pages below which acknowledgements do not give pages back otherwise (1 MiB with 4 KiB
/// pages): a spool that only ever holds a few small batches reuses its free pages instead.
const VACUUM_MIN_PAGES_ROOMY: u64 = 256;

/// Free pages per page still in use at which the spool gives pages back on a roomy disk, by
/// rewriting itself (`VACUUM`), which costs what is still in use: at most a ninth of the file
/// (in practice, once a backlog has drained). SQLite's incremental vacuum would need no room, but
/// it looks each page up in the free list, a cost that grows with the square of a large free
/// list (seconds for a drained 200 MB backlog, during which the spool answers nothing); it is kept
/// for a full disk, a step at a time.
const VACUUM_FREE_PER_LIVE_PAGE: u64 = 8;

/// The schema this build writes, kept in SQLite's `user_version`.
const SCHEMA_VERSION: i64 = 5;

/// Migrations, by the version they start from: version 2 added the `spool_write_failed` counter,
/// version 3 the sources' keyed state, version 4 the `disk_full` counter, version 5 compressed
/// payloads (a batch's `codec` and `raw_bytes`). (Turning on
/// `auto_vacuum` needs a `VACUUM` outside any transaction, so it is a step of its own, see
/// [`enable_auto_vacuum`].)
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "ALTER TABLE spool ADD COLUMN spool_write_failed INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        2,
        "CREATE TABLE source_state (
            source TEXT NOT NULL,
            key BLOB NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (source, key)
        ) WITHOUT ROWID;",
    ),
    (
        3,
        "ALTER TABLE spool ADD COLUMN disk_full INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        4,
        "ALTER TABLE batches ADD COLUMN codec INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE batches ADD COLUMN raw_bytes INTEGER;",
    ),
];

/// WAL size SQLite truncates back to after a checkpoint, so a burst does not leave a large file.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// WAL pages after which a commit checkpoints the log, which is then reused from its start: with
/// 4 KiB pages the log stays near 1 MiB, the room [`Spool`] keeps free for it on a small disk.
const WAL_AUTOCHECKPOINT_PAGES: u64 = 256;

/// Bytes of a WAL frame besides its page.
const WAL_FRAME_HEADER: u64 = 24;

/// Room kept free besides the reserve and the log, for the WAL index and the filesystem's own
/// bookkeeping.
const DISK_MARGIN: u64 = 64 * 1024;

const SCHEMA: &str = "
    CREATE TABLE spool (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        spool_id INTEGER NOT NULL,
        next_seq INTEGER NOT NULL,
        spool_full_evicted INTEGER NOT NULL,
        spool_full_rejected INTEGER NOT NULL,
        rejected_by_aggregator INTEGER NOT NULL,
        oversized INTEGER NOT NULL,
        spool_write_failed INTEGER NOT NULL DEFAULT 0,
        disk_full INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE batches (
        seq INTEGER PRIMARY KEY,
        created_ns INTEGER NOT NULL,
        class INTEGER NOT NULL,
        events INTEGER NOT NULL,
        payload BLOB NOT NULL,
        codec INTEGER NOT NULL DEFAULT 0,
        raw_bytes INTEGER
    );
    CREATE TABLE checkpoints (
        source TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE source_state (
        source TEXT NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (source, key)
    ) WITHOUT ROWID;
";

/// Where the spool lives and how large it may grow.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The SQLite file; SQLite keeps `-wal` and `-shm` files beside it.
    pub path: PathBuf,
    /// Cap on the payload bytes of unacknowledged batches.
    pub max_bytes: u64,
    /// Largest number of events in one batch; at most `u32::MAX`.
    pub max_batch_events: usize,
    /// Largest batch payload in bytes; an event whose encoding alone exceeds it (or the lower
    /// limit set by [`Spool::set_batch_limits`]) is dropped as [`DropReason::Oversized`].
    pub max_batch_bytes: usize,
    /// Size of the reserve file (`<name>.reserve` beside the database), written with real
    /// blocks and deleted when a write fails for lack of space, so that acknowledgements always
    /// commit; appends never use the space it holds. 0 for none.
    pub reserve_bytes: u64,
    /// Where the free space on the disk comes from: [`Statvfs`], or a fake in tests.
    pub free_space: Arc<dyn FreeSpace>,
    /// How batch payloads are compressed, on disk and on the wire. A payload the codec does not
    /// make smaller is kept as it is. Batches are packed to the limits by their size before
    /// compression (what the aggregator decodes); the cap counts the bytes stored.
    pub compression: Codec,
}

impl SpoolConfig {
    /// A configuration with the default batch limits.
    pub fn new(path: impl Into<PathBuf>, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            path: path.into(),
            max_bytes,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
            free_space: Arc::new(Statvfs),
            compression: Codec::None,
        }
    }

    /// The directory holding the database, where free space is measured.
    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    /// The reserve file.
    pub fn reserve_path(&self) -> PathBuf {
        self.path.with_extension("reserve")
    }
}

/// How a source copes with a full spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Class {
    /// The source can stop reading and resume later (log files, the journal): back-pressure.
    #[default]
    Wait,
    /// The source cannot wait (metric samples): the oldest such data is evicted instead.
    Drop,
}

impl Class {
    fn code(self) -> i64 {
        match self {
            Class::Wait => 0,
            Class::Drop => 1,
        }
    }
}

/// Where a source has got to, committed together with its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The source's stable name, for example a log file's configured path.
    pub source: String,
    /// Opaque to the spool.
    pub value: Vec<u8>,
}

impl Checkpoint {
    pub fn new(source: impl Into<String>, value: impl Into<Vec<u8>>) -> Checkpoint {
        Checkpoint {
            source: source.into(),
            value: value.into(),
        }
    }
}

/// One row of a source's keyed state: key and value.
pub type StateRow = (Vec<u8>, Vec<u8>);

/// A change to one row of a source's keyed state (a file-integrity baseline, say), committed
/// together with the events it explains. Keys and values are opaque to the spool; each source
/// has its own key space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// Inserts or replaces the row `key` of `source`.
    Put {
        source: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Removes the row `key` of `source`; removing a missing row is not an error.
    Delete { source: String, key: Vec<u8> },
}

/// Events from one source with the checkpoints and state changes that go with them, committed
/// all together or not at all.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Submission {
    pub events: Vec<Event>,
    /// Upserted by source, in order: a later one for the same source wins.
    pub checkpoints: Vec<Checkpoint>,
    /// Applied in order.
    pub state: Vec<StateChange>,
    pub class: Class,
}

/// A submission with its events encoded, ready for the spool ([`SpoolHandle::submit_prepared`]).
///
/// Preparing a submission on the thread that made its events (encoding them, then freeing them)
/// takes that work off the spool's thread, which every source shares.
#[derive(Debug)]
pub struct Prepared(Result<SizedSubmission, Arc<WireError>>);

impl Prepared {
    /// How many events it holds (none if they could not be encoded).
    pub fn events(&self) -> usize {
        self.0.as_ref().map_or(0, SizedSubmission::events)
    }

    /// Its class, if its events could be encoded.
    fn class(&self) -> Option<Class> {
        self.0.as_ref().ok().map(|s| s.sub.class)
    }

    /// The encoded submission, or the encoding's error as the spool at `path` reports it.
    fn into_sized(self, path: &Path) -> Result<SizedSubmission, SpoolError> {
        self.0.map_err(|source| SpoolError::Encode {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Submission {
    /// Encodes the events, and frees them (see [`Prepared`]).
    pub fn prepare(mut self) -> Prepared {
        let events = std::mem::take(&mut self.events);
        Prepared(
            encode_events(&events)
                .map(|(encoded, sizes)| SizedSubmission {
                    sub: self,
                    encoded,
                    sizes,
                })
                .map_err(Arc::new),
        )
    }

    /// Events of `class`, with no checkpoint or state change yet.
    pub fn new(class: Class, events: Vec<Event>) -> Submission {
        Submission {
            events,
            class,
            ..Submission::default()
        }
    }

    /// Adds a checkpoint.
    pub fn with_checkpoint(mut self, checkpoint: Checkpoint) -> Submission {
        self.checkpoints.push(checkpoint);
        self
    }

    /// Whether committing it writes nothing at all.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.checkpoints.is_empty() && self.state.is_empty()
    }
}

/// What became of one submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// The events that fit in a batch were committed with the checkpoint. Events whose encoding
    /// alone exceeds the batch limit were dropped and counted as [`DropReason::Oversized`]; they
    /// are the difference between the events submitted and `events`.
    Committed { events: u64 },
    /// A Wait-class submission did not fit: nothing was written, not even the checkpoint. Retry
    /// after acknowledgements free space.
    Full,
    /// A Drop-class submission did not fit even after evicting: its `events` were counted as
    /// [`DropReason::SpoolFullRejected`] (oversized ones as [`DropReason::Oversized`]) and its
    /// checkpoint was saved, since the data is gone and the source must move on.
    Rejected { events: u64 },
}

/// One batch as stored, ready to be framed with [`wire::encode_batch_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub seq: u64,
    pub created_ns: i64,
    pub events: u32,
    /// The spool's low-water mark when the batch was read: every seq below it was acknowledged
    /// (and deleted) or dropped, so it is never sent again. Sent along so the aggregator may
    /// forget older deduplication entries.
    pub low_water_seq: u64,
    /// The events as [`wire::encode_events`] wrote them, compressed with `codec`.
    pub payload: Vec<u8>,
    pub codec: Codec,
    /// The payload's length before compression (its length when `codec` is [`Codec::None`]).
    pub raw_bytes: usize,
}

impl StoredBatch {
    /// The frame that sends it: a `Batch`, or a `PackedBatch` when it is stored compressed; its
    /// payload is copied in as it is.
    pub fn frame(&self) -> Result<Vec<u8>, WireError> {
        let (seq, low, created) = (self.seq, self.low_water_seq, self.created_ns);
        if self.codec == Codec::None {
            return wire::encode_batch_frame(seq, low, created, &self.payload);
        }
        let raw_bytes = u32::try_from(self.raw_bytes).map_err(|_| WireError::FrameTooLarge {
            len: self.raw_bytes as u64,
            limit: u32::MAX,
        })?;
        wire::encode_packed_batch_frame(seq, low, created, self.codec, raw_bytes, &self.payload)
    }

    /// Its events, decompressed and decoded.
    pub fn events(&self) -> Result<Vec<Event>, WireError> {
        wire::decode_packed_events(self.codec, &self.payload, self.raw_bytes)
    }
}

/// The spool's state, for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    pub spool_id: u64,
    /// Payload bytes of unacknowledged batches; what the cap applies to.
    pub payload_bytes: u64,
    /// Bytes of the database and its write-ahead log on disk.
    pub file_bytes: u64,
    /// Events in unacknowledged batches.
    pub events: u64,
    /// Unacknowledged batches.
    pub batches: u64,
    pub cap_bytes: u64,
    /// Events dropped, by reason, since the spool was created.
    pub drops: DropCounters,
    /// The smallest unacknowledged seq, or `next_seq` when empty: every seq below it was
    /// acknowledged or dropped.
    pub low_water_seq: u64,
    /// The seq the next batch will get.
    pub next_seq: u64,
    /// What is wrong with the spool's storage, if anything.
    pub trouble: Option<Trouble>,
}

impl SpoolStats {
    /// The statistics of a spool that could not be opened: spool id 0 (never a real one), and
    /// the trouble.
    pub fn unavailable(cap_bytes: u64, trouble: Trouble) -> SpoolStats {
        SpoolStats {
            spool_id: 0,
            payload_bytes: 0,
            file_bytes: 0,
            events: 0,
            batches: 0,
            cap_bytes,
            drops: DropCounters::default(),
            low_water_seq: 0,
            next_seq: 0,
            trouble: Some(trouble),
        }
    }

    /// Whether the spool is open (a real spool id is known).
    pub fn is_available(&self) -> bool {
        self.spool_id != 0
    }
}

/// A spool operation that failed; the spool is left as it was before the operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {action}: {source}")]
    Sqlite {
        path: PathBuf,
        action: &'static str,
        source: Arc<rusqlite::Error>,
    },
    #[error("{path}: cannot encode events: {source}")]
    Encode {
        path: PathBuf,
        source: Arc<WireError>,
    },
    #[error("{path}: invalid spool configuration: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: not a usable spool: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the spool is shutting down")]
    ShuttingDown,
    #[error("the spool writer thread panicked")]
    WriterPanicked,
}

impl SpoolError {
    /// The trouble with the storage this error shows, if it shows one.
    pub fn trouble(&self) -> Option<TroubleKind> {
        match self {
            SpoolError::Sqlite { source, .. } => disk::trouble_of(source),
            _ => None,
        }
    }
}

/// The spool, owned by one thread (see [`writer`]).
#[derive(Debug)]
pub struct Spool {
    conn: Connection,
    config: SpoolConfig,
    spool_id: u64,
    /// Mirrors what is committed; updated only after a commit succeeds.
    state: State,
    evictable: Evictable,
    /// The batch limits appends pack to: the configured ones, lowered by
    /// [`Spool::set_batch_limits`].
    limits: BatchLimits,
    /// The connection's `synchronous` setting now.
    sync: Sync,
    reserve: Reserve,
    trouble: Option<Trouble>,
    reporter: Box<dyn DiskReporter>,
    /// One compressor per thread that packs a commit's batches ([`payloads`]).
    packers: Vec<Packer>,
}

/// Whether a commit waits for the disk: SQLite's `synchronous` setting in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// `FULL`: the commit fsyncs the WAL, so it survives power loss.
    Full,
    /// `NORMAL`: no fsync at commit; power loss may roll back the newest commits, in order.
    Normal,
}

impl Sync {
    fn pragma(self) -> &'static str {
        match self {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        }
    }
}

/// Sets `conn`'s `synchronous` to `want`, if `current` says it is not already, then begins an
/// immediate transaction.
fn begin<'c>(
    conn: &'c mut Connection,
    current: &mut Sync,
    want: Sync,
    path: &Path,
) -> Result<Transaction<'c>, SpoolError> {
    if *current != want {
        conn.pragma_update(None, "synchronous", want.pragma())
            .map_err(sql(path, "cannot set synchronous mode"))?;
        *current = want;
    }
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql(path, "cannot begin a transaction"))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    next_seq: u64,
    payload_bytes: u64,
    events: u64,
    batches: u64,
    low_water_seq: u64,
    drops: DropCounters,
}

impl State {
    fn remove(&mut self, size: BatchSize) {
        self.batches -= 1;
        self.payload_bytes -= size.bytes;
        self.events -= size.events;
    }
}

/// A planned batch, encoded.
struct EncodedBatch {
    class: Class,
    events: u32,
    payload: Vec<u8>,
    codec: Codec,
    raw_bytes: usize,
}

impl Spool {
    /// Opens the spool at `config.path`, creating it (with a new random spool id) if it does not
    /// exist.
    ///
    /// Every batch present at open counts as possibly delivered: the previous run may have sent
    /// it, so it is never evicted.
    pub fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        validate(&config)?;
        let path = config.path.as_path();
        let mut conn = Connection::open(path).map_err(sql(path, "cannot open"))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(sql(path, "cannot switch to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(corrupt(path, format!("journal mode is {mode}, not wal")));
        }
        conn.pragma_update(None, "synchronous", Sync::Full.pragma())
            .map_err(sql(path, "cannot set synchronous mode"))?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
            .map_err(sql(path, "cannot set the journal size limit"))?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES as i64)
            .map_err(sql(path, "cannot set the WAL checkpoint interval"))?;
        // Takes effect at once in a new file (before its first table), at the next VACUUM in an
        // existing one.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(sql(path, "cannot set auto_vacuum"))?;
        create_schema(&mut conn, path)?;
        enable_auto_vacuum(&conn, path);
        let (spool_id, mut state) = load_state(&conn, path)?;
        state.low_water_seq = low_water(&conn, path, state.next_seq)?;
        let limits = BatchLimits {
            events: config.max_batch_events,
            bytes: config.max_batch_bytes,
        };
        let reserve = Reserve::new(config.reserve_path(), config.reserve_bytes);
        let packers = (0..packing_threads())
            .map(|_| Packer::new(config.compression))
            .collect::<Result<Vec<_>, _>>()
            .map_err(encode_error(path))?;
        let mut spool = Spool {
            conn,
            config,
            spool_id,
            state,
            evictable: Evictable::default(),
            limits,
            sync: Sync::Full,
            reserve,
            trouble: None,
            reporter: Box::new(NoReporter),
            packers,
        };
        spool.recheck();
        Ok(spool)
    }

    /// Sends the spool's [`DiskEvent`]s to `reporter` from now on; [`Spool::trouble`] tells the
    /// trouble it may already be in.
    pub fn set_reporter(&mut self, reporter: Box<dyn DiskReporter>) {
        self.reporter = reporter;
    }

    /// What is wrong with the spool's storage now, if anything.
    pub fn trouble(&self) -> Option<&Trouble> {
        self.trouble.as_ref()
    }

    /// Looks at the disk again: writes the reserve back when there is room for it twice over,
    /// and leaves the disk-full state when the disk has room for new data again. The writer
    /// calls it periodically while the disk is full and after acknowledgements; `append` looks
    /// at the disk itself.
    ///
    /// While the disk is full it also gives free pages back, a step at a time, and once it has
    /// room again, all of them: a backlog that drained while the disk was full leaves its pages
    /// free in the file, and no acknowledgement may come after to give them back.
    pub fn recheck(&mut self) {
        let was_full = self.trouble_kind() == Some(TroubleKind::DiskFull);
        let cap = self.disk_cap();
        self.observe_disk(&cap);
        if was_full {
            self.maybe_vacuum();
        }
    }

    /// The random id chosen when the spool was created; seqs are unique within it.
    pub fn spool_id(&self) -> u64 {
        self.spool_id
    }

    /// The last committed checkpoint of `source`.
    pub fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        self.conn
            .prepare_cached("SELECT value FROM checkpoints WHERE source = ?1")
            .and_then(|mut stmt| stmt.query_row([source], |row| row.get(0)).optional())
            .map_err(sql(&self.config.path, "cannot read a checkpoint"))
    }

    /// The row `key` of `source`'s keyed state, as last committed.
    pub fn state(&self, source: &str, key: &[u8]) -> Result<Option<Vec<u8>>, SpoolError> {
        self.conn
            .prepare_cached("SELECT value FROM source_state WHERE source = ?1 AND key = ?2")
            .and_then(|mut stmt| {
                stmt.query_row(params![source, key], |row| row.get(0))
                    .optional()
            })
            .map_err(sql(&self.config.path, "cannot read a source's state"))
    }

    /// Up to `limit` rows of `source`'s keyed state with keys above `after` (from the first
    /// when `None`), in key order (bytewise): a source walks its whole state a page at a time.
    pub fn state_page(
        &self,
        source: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateRow>, SpoolError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT key, value FROM source_state
                 WHERE source = ?1 AND (?2 IS NULL OR key > ?2) ORDER BY key LIMIT ?3",
            )
            .map_err(sql(&self.config.path, "cannot read a source's state"))?;
        let rows = stmt
            .query_map(params![source, after, limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(sql(&self.config.path, "cannot read a source's state"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sql(&self.config.path, "cannot read a source's state"))
    }

    /// Commits the submissions in ONE SQLite transaction: their events packed into new batches
    /// (at most `max_batch_events` and `max_batch_bytes` each, or the lower limits set by
    /// [`Spool::set_batch_limits`]; a batch never mixes classes) with
    /// persisted, strictly increasing seqs, their checkpoints (upserted by source) and their state
    /// changes. Each submission is all-or-nothing. Returns one outcome per submission, in order.
    ///
    /// On error nothing was written.
    pub fn append(
        &mut self,
        subs: Vec<Submission>,
        now_ns: i64,
    ) -> Result<Vec<SubmitOutcome>, SpoolError> {
        let path = self.config.path.clone();
        let sized = subs
            .into_iter()
            .map(|sub| sized(sub, &path))
            .collect::<Result<Vec<_>, _>>()?;
        let decisions = self.append_keeping_full(sized, now_ns)?;
        Ok(decisions.into_iter().map(Decision::into_outcome).collect())
    }

    /// The oldest unacknowledged batches with seq above `after_seq`, at most `limit`.
    ///
    /// Every batch returned counts as possibly delivered from then on and is never evicted.
    pub fn batches_after(
        &mut self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredBatch>, SpoolError> {
        let batches = read_batches(&self.conn, &self.config.path, after_seq, limit)?;
        for (batch, _) in &batches {
            self.evictable.remove(batch.seq);
        }
        let low_water_seq = self.state.low_water_seq;
        Ok(batches
            .into_iter()
            .map(|(batch, _)| StoredBatch {
                low_water_seq,
                ..batch
            })
            .collect())
    }

    /// Deletes the acknowledged batches; unknown seqs are ignored.
    ///
    /// The deletion commits without an fsync (see the module documentation): undoing it can only
    /// make the shipper send batches again that the aggregator already stored, which it
    /// recognises as duplicates.
    pub fn ack(&mut self, seqs: &[u64]) -> Result<(), SpoolError> {
        self.delete(seqs, None, Sync::Normal)
    }

    /// Deletes batch `seq` and counts its events as dropped for `reason`; an unknown seq is
    /// ignored.
    pub fn drop_batch(&mut self, seq: u64, reason: DropReason) -> Result<(), SpoolError> {
        self.delete(&[seq], Some(reason), Sync::Full)
    }

    /// Lowers the limits future appends pack batches to, to what the receiver accepts: each limit
    /// becomes the smaller of the given and the configured one (never above the configured one,
    /// never below 1), so calling again with larger values restores up to the configured limits.
    /// An event whose encoding alone exceeds the byte limit is dropped at append as
    /// [`DropReason::Oversized`]: the receiver could never take it.
    ///
    /// Not persisted: the limits hold until the spool is reopened or this is called again.
    pub fn set_batch_limits(&mut self, max_events: usize, max_bytes: usize) {
        self.limits = BatchLimits {
            events: max_events.clamp(1, self.config.max_batch_events),
            bytes: max_bytes.clamp(1, self.config.max_batch_bytes),
        };
    }

    /// Replaces batch `seq` with new batches holding exactly its events, in order, each within
    /// `max_events` and `max_bytes` (payload bytes, measured as [`Spool::append`] does), all in
    /// ONE transaction. Returns the new seqs, in order; an unknown seq returns none.
    ///
    /// This is for a batch too large for the receiver: it was never delivered, so its events may
    /// travel again under new seqs, fresh from `next_seq` and so above every seq there is; the new
    /// batches keep its class and `created_ns`, and are evictable only if it was. An event whose
    /// encoding alone exceeds `max_bytes` is dropped as [`DropReason::Oversized`]. The payload
    /// total may grow by a few bytes (each batch carries its own event count), never evicting or
    /// refusing anything for the cap.
    ///
    /// A payload that cannot be decoded is dropped with all its events counted as
    /// [`DropReason::Oversized`], and logged as an error: the spool wrote it, so this means
    /// corruption and should never happen. Oversized is the honest reason: the batch is lost
    /// because it exceeds what the receiver accepts and cannot be re-packed; the aggregator never
    /// saw it, so "rejected by the aggregator" would misplace the loss.
    ///
    /// On error nothing was changed.
    pub fn split_batch(
        &mut self,
        seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<u64>, SpoolError> {
        let limits = BatchLimits {
            // Keeps each batch's count within the u32 the table and the wire carry.
            events: max_events.clamp(1, u32::MAX as usize),
            bytes: max_bytes,
        };
        let result = self.try_split(seq, limits, max_bytes);
        match &result {
            Ok(_) => self.wrote(),
            Err(e) => self.failed(e),
        }
        result
    }

    fn try_split(
        &mut self,
        seq: u64,
        limits: BatchLimits,
        max_bytes: usize,
    ) -> Result<Vec<u64>, SpoolError> {
        let path = self.config.path.as_path();
        let mut next = self.state.clone();
        let tx = begin(&mut self.conn, &mut self.sync, Sync::Full, path)?;
        let found = read_batches(&tx, path, seq.saturating_sub(1), 1)?
            .into_iter()
            .find(|(batch, _)| batch.seq == seq);
        let Some((batch, class)) = found else {
            // Nothing matched; dropping the transaction rolls back an empty change.
            return Ok(Vec::new());
        };
        let size = delete_batch(&tx, path, seq)?
            .ok_or_else(|| corrupt(path, format!("batch {seq} vanished")))?;
        next.remove(size);
        let mut oversized = 0;
        let written = match batch.events() {
            Ok(events) => {
                let (encoded, sizes) = encode_each(&events, path)?;
                let repacked = plan::repack(class, &encoded, &sizes, limits);
                oversized = repacked.oversized;
                next.drops.add(DropReason::Oversized, oversized);
                let encoded = payloads(repacked.batches, &mut self.packers, path)?;
                insert_batches(&tx, path, &mut next, batch.created_ns, &encoded)?
            }
            Err(error) => {
                tracing::error!(
                    spool = %path.display(),
                    seq,
                    events = size.events,
                    %error,
                    "a spooled batch cannot be decoded, so it cannot be split; dropping it as oversized (this means the spool file is corrupt)"
                );
                next.drops.add(DropReason::Oversized, size.events);
                Vec::new()
            }
        };
        next.low_water_seq = low_water(&tx, path, next.next_seq)?;
        write_state(&tx, path, &next)?;
        tx.commit().map_err(sql(path, "cannot commit a split"))?;
        if oversized > 0 {
            tracing::warn!(
                seq,
                events = oversized,
                max_bytes,
                "events larger than the receiver's batch limit on their own were dropped as oversized"
            );
        }

        if self.evictable.contains(seq) {
            self.evictable.remove(seq);
            for &(new_seq, size, _) in &written {
                self.evictable.insert(new_seq, size);
            }
        }
        self.state = next;
        Ok(written.into_iter().map(|(seq, _, _)| seq).collect())
    }

    /// The spool's current state.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            spool_id: self.spool_id,
            payload_bytes: self.state.payload_bytes,
            file_bytes: self.file_bytes(),
            events: self.state.events,
            batches: self.state.batches,
            cap_bytes: self.config.max_bytes,
            drops: self.state.drops.clone(),
            low_water_seq: self.state.low_water_seq,
            next_seq: self.state.next_seq,
            trouble: self.trouble.clone(),
        }
    }

    /// Counts `n` events lost for `reason` outside any append (while the spool could not be
    /// opened, say): in memory at once, on disk with the next transaction that saves the counters.
    pub fn count_lost(&mut self, reason: DropReason, n: u64) {
        self.state.drops.add(reason, n);
    }

    /// The seq of the newest batch ever committed, 0 before the first.
    fn newest_seq(&self) -> u64 {
        self.state.next_seq - 1
    }

    /// [`Spool::append`], but a Wait-class submission that does not fit is handed back so the
    /// writer can hold it without copying its events.
    ///
    /// When it fails, the events of Drop-class submissions are given up (their sources do not
    /// retry) and counted as [`DropReason::SpoolWriteFailed`], or [`DropReason::DiskFull`] when
    /// the disk ran out of space: in memory at once, on disk with the next transaction that saves
    /// the counters.
    ///
    /// While the disk sets the cap, the cap is an estimate that a large write can still overrun.
    /// The submissions are then kept, so that if the disk runs out of space after all, the
    /// Wait-class ones are handed back as not fitting (held and retried, like any other) and the
    /// Drop-class ones are answered [`SubmitOutcome::Rejected`] (with nothing written, not even
    /// their checkpoints): the sources see back-pressure, not errors.
    fn append_keeping_full(
        &mut self,
        subs: Vec<SizedSubmission>,
        now_ns: i64,
    ) -> Result<Vec<Decision>, SpoolError> {
        let droppable: u64 = subs
            .iter()
            .filter(|s| s.sub.class == Class::Drop)
            .map(|s| s.events() as u64)
            .sum();
        let kept: Option<Vec<Decision>> = self.disk_cap().disk_bound.then(|| {
            subs.iter()
                .map(|s| match s.sub.class {
                    Class::Wait => Decision::Full(s.clone()),
                    Class::Drop => Decision::Done(SubmitOutcome::Rejected {
                        events: s.events() as u64,
                    }),
                })
                .collect()
        });
        let result = self.try_append(subs, now_ns);
        match &result {
            Ok(_) => self.wrote(),
            Err(e) => {
                let full = e.trouble() == Some(TroubleKind::DiskFull);
                let reason = if full {
                    DropReason::DiskFull
                } else {
                    DropReason::SpoolWriteFailed
                };
                self.state.drops.add(reason, droppable);
                self.failed(e);
                if let (true, Some(kept)) = (full, kept) {
                    return Ok(kept);
                }
            }
        }
        result
    }

    /// The cap for the next append, from the disk's free space now.
    fn disk_cap(&self) -> DiskCap {
        let max = self.config.max_bytes;
        match self.config.free_space.available(self.config.dir()) {
            Ok(free) => {
                let page = self.page_size();
                let (free_pages, pages) = self.free_pages();
                // Room the log may still take before it is reused, and the growth of the
                // database still waiting in the log for a checkpoint: neither shows in the free
                // space yet.
                let wal_limit = WAL_AUTOCHECKPOINT_PAGES * (page + WAL_FRAME_HEADER);
                let wal_room = wal_limit.saturating_sub(self.wal_bytes());
                let db_file = std::fs::metadata(&self.config.path).map_or(0, |m| m.len());
                let db_pending = (pages * page).saturating_sub(db_file);
                DiskCap::new(
                    max,
                    self.state.payload_bytes,
                    free,
                    self.reserve.missing() + wal_room + db_pending + DISK_MARGIN,
                    wal_room,
                    free_pages * page,
                )
            }
            // Without a measure the configured cap holds; a write that then fails for lack of
            // space still releases the reserve.
            Err(_) => DiskCap {
                bytes: max,
                disk_bound: false,
                free: u64::MAX,
                headroom: u64::MAX,
            },
        }
    }

    /// Free pages in the database, and all its pages.
    fn free_pages(&self) -> (u64, u64) {
        let pragma = |name: &str| {
            self.conn
                .pragma_query_value(None, name, |row| row.get::<_, i64>(0))
                .map_or(0, |n| u64::try_from(n).unwrap_or(0))
        };
        (pragma("freelist_count"), pragma("page_count"))
    }

    fn page_size(&self) -> u64 {
        self.conn
            .pragma_query_value(None, "page_size", |row| row.get::<_, i64>(0))
            .map_or(4096, |n| u64::try_from(n).unwrap_or(4096))
    }

    /// Enters or leaves the disk-full state, and writes the reserve back, as the disk allows.
    fn observe_disk(&mut self, cap: &DiskCap) {
        let missing = self.reserve.missing();
        if missing > 0 && cap.free != u64::MAX && cap.free >= missing.saturating_mul(2) {
            match self.reserve.write() {
                Ok(()) => self.reporter.report(DiskEvent::ReserveRestored {
                    path: self.reserve.path().to_path_buf(),
                    bytes: self.reserve.bytes(),
                }),
                Err(e) => tracing::debug!(
                    reserve = %self.reserve.path().display(),
                    error = %e,
                    "cannot write the reserve yet"
                ),
            }
        }
        // Leaving wants clearly more room than entering, so a drain that makes room a batch at
        // a time does not flap in and out of the state.
        let room = (self.config.max_batch_bytes as u64).max(self.reserve.bytes());
        let full = self.trouble_kind() == Some(TroubleKind::DiskFull);
        if full && cap.headroom >= room && self.reserve.missing() == 0 {
            self.recover(TroubleKind::DiskFull);
        }
    }

    fn trouble_kind(&self) -> Option<TroubleKind> {
        self.trouble.as_ref().map(|t| t.kind)
    }

    /// Enters the disk-full state after an append the disk's room held back.
    fn squeezed(&mut self, cap: &DiskCap) {
        if self.trouble_kind() == Some(TroubleKind::DiskFull) {
            return;
        }
        let message = format!(
            "disk full: {} free on {} (beyond a reserve of {}); sources paused, samples dropped",
            disk::human_bytes(cap.free),
            self.config.dir().display(),
            disk::human_bytes(self.reserve.bytes()),
        );
        self.enter(TroubleKind::DiskFull, message);
    }

    fn enter(&mut self, kind: TroubleKind, message: String) {
        if self.trouble.as_ref().is_some_and(|t| t.kind == kind) {
            return;
        }
        let trouble = Trouble {
            kind,
            message,
            since_ns: outpost_common::time::now_ns(),
        };
        self.trouble = Some(trouble.clone());
        self.reporter.report(DiskEvent::Trouble(trouble));
    }

    fn recover(&mut self, kind: TroubleKind) {
        if self.trouble_kind() == Some(kind) {
            self.trouble = None;
            self.reporter.report(DiskEvent::Recovered { kind });
        }
    }

    /// A write committed: the storage is neither read-only nor gone.
    fn wrote(&mut self) {
        if let Some(kind @ (TroubleKind::ReadOnly | TroubleKind::Unavailable)) = self.trouble_kind()
        {
            self.recover(kind);
        }
    }

    /// A write failed: enters the trouble it shows, releasing the reserve if space ran out.
    fn failed(&mut self, error: &SpoolError) {
        match error.trouble() {
            Some(TroubleKind::DiskFull) => {
                self.release_reserve();
                let cap = self.disk_cap();
                let message = format!(
                    "disk full: {} free on {}; sources paused, samples dropped ({error})",
                    disk::human_bytes(cap.free),
                    self.config.dir().display(),
                );
                self.enter(TroubleKind::DiskFull, message);
            }
            Some(_) => {
                let (kind, message) = disk::diagnose(self.config.dir(), error);
                self.enter(kind, message);
            }
            None => {}
        }
    }

    /// Deletes the reserve file; returns whether that freed anything.
    fn release_reserve(&mut self) -> bool {
        let bytes = self.reserve.release();
        if bytes > 0 {
            self.reporter.report(DiskEvent::ReserveReleased {
                path: self.reserve.path().to_path_buf(),
                bytes,
            });
        }
        bytes > 0
    }

    /// Gives free pages back to the filesystem and truncates the write-ahead log: on a roomy disk
    /// once the file is mostly free (at least [`VACUUM_MIN_PAGES_ROOMY`] free pages, and
    /// [`VACUUM_FREE_PER_LIVE_PAGE`] per page in use), by rewriting the file; while the disk is
    /// full, [`VACUUM_STEP_PAGES`] at a time once [`VACUUM_MIN_PAGES`] are free, in place.
    fn maybe_vacuum(&mut self) {
        let (free, pages) = self.free_pages();
        let live = pages.saturating_sub(free);
        let full = self.trouble_kind() == Some(TroubleKind::DiskFull);
        let sql = if full {
            if free < VACUUM_MIN_PAGES {
                return;
            }
            format!("PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})")
        } else {
            if free < VACUUM_MIN_PAGES_ROOMY
                || free < live.saturating_mul(VACUUM_FREE_PER_LIVE_PAGE)
            {
                return;
            }
            "VACUUM".to_owned()
        };
        let before = self.file_bytes();
        let path = self.config.path.as_path();
        // The pragma frees one page per row: step it to the end.
        let result = self
            .conn
            .prepare(&sql)
            .and_then(|mut stmt| {
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            })
            .and_then(|()| {
                self.conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            });
        match result {
            Ok(()) => self.reporter.report(DiskEvent::Vacuumed {
                pages: free,
                file_bytes_before: before,
                file_bytes_after: self.file_bytes(),
            }),
            // Nothing is lost: the pages stay free inside the file and are reused.
            Err(e) => {
                tracing::debug!(spool = %path.display(), error = %e, "cannot vacuum the spool")
            }
        }
    }

    fn try_append(
        &mut self,
        sized: Vec<SizedSubmission>,
        now_ns: i64,
    ) -> Result<Vec<Decision>, SpoolError> {
        // Owned: looking at the disk below changes the spool's trouble.
        let path_buf = self.config.path.clone();
        let path = path_buf.as_path();
        let holding = Holding {
            payload_bytes: self.state.payload_bytes,
            batches: self.state.batches,
            evictable: &self.evictable,
        };
        let disk = self.disk_cap();
        let cap = Cap {
            bytes: disk.bytes,
            disk: disk.disk_bound,
        };
        let mut plan = plan::plan(cap, self.limits, holding, sized);
        if plan.squeezed && disk.disk_bound {
            self.squeezed(&disk);
        } else {
            self.observe_disk(&disk);
        }
        if plan.writes_nothing() {
            return Ok(plan.decisions);
        }
        let encoded = payloads(std::mem::take(&mut plan.batches), &mut self.packers, path)?;

        let mut next = self.state.clone();
        let tx = begin(&mut self.conn, &mut self.sync, Sync::Full, path)?;
        for &seq in &plan.evict {
            if delete_batch(&tx, path, seq)?.is_none() {
                return Err(corrupt(path, format!("batch {seq} vanished")));
            }
        }
        next.batches -= plan.evicted.batches;
        next.payload_bytes -= plan.evicted.bytes;
        next.events -= plan.evicted.events;
        let written = insert_batches(&tx, path, &mut next, now_ns, &encoded)?;
        for checkpoint in &plan.checkpoints {
            tx.prepare_cached(
                "INSERT INTO checkpoints (source, value) VALUES (?1, ?2)
                 ON CONFLICT (source) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut stmt| stmt.execute(params![checkpoint.source, checkpoint.value]))
            .map_err(sql(path, "cannot save a checkpoint"))?;
        }
        for change in &plan.state {
            apply_state_change(&tx, path, change)?;
        }
        add_drops(&mut next.drops, &plan.drops);
        next.low_water_seq = low_water(&tx, path, next.next_seq)?;
        write_state(&tx, path, &next)?;
        tx.commit().map_err(sql(path, "cannot commit an append"))?;

        for &seq in &plan.evict {
            self.evictable.remove(seq);
        }
        for (seq, size, class) in written {
            if class == Class::Drop {
                self.evictable.insert(seq, size);
            }
        }
        self.state = next;
        Ok(plan.decisions)
    }

    /// Deletes batches in one transaction, counting their events under `reason` if given.
    /// `sync` says whether the commit waits for the disk. When the disk is out of space, the
    /// reserve is released and the deletion tried once more.
    fn delete(
        &mut self,
        seqs: &[u64],
        reason: Option<DropReason>,
        sync: Sync,
    ) -> Result<(), SpoolError> {
        let mut result = self.try_delete(seqs, reason, sync);
        if let Err(e) = &result {
            let full = e.trouble() == Some(TroubleKind::DiskFull);
            self.failed(e);
            if full {
                // The reserve was released (if there was one): the retry has its room.
                result = self.try_delete(seqs, reason, sync);
            }
        }
        if result.is_ok() {
            self.wrote();
            self.maybe_vacuum();
        }
        result
    }

    fn try_delete(
        &mut self,
        seqs: &[u64],
        reason: Option<DropReason>,
        sync: Sync,
    ) -> Result<(), SpoolError> {
        let path = self.config.path.as_path();
        let mut next = self.state.clone();
        let mut removed = Vec::with_capacity(seqs.len());
        let tx = begin(&mut self.conn, &mut self.sync, sync, path)?;
        for &seq in seqs {
            if let Some(size) = delete_batch(&tx, path, seq)? {
                next.remove(size);
                if let Some(reason) = reason {
                    next.drops.add(reason, size.events);
                }
                removed.push(seq);
            }
        }
        if removed.is_empty() {
            // Nothing matched; dropping the transaction rolls back an empty change.
            return Ok(());
        }
        next.low_water_seq = low_water(&tx, path, next.next_seq)?;
        if reason.is_some() {
            write_state(&tx, path, &next)?;
        }
        tx.commit().map_err(sql(path, "cannot commit a deletion"))?;
        for seq in removed {
            self.evictable.remove(seq);
        }
        self.state = next;
        Ok(())
    }

    fn file_bytes(&self) -> u64 {
        let db = std::fs::metadata(&self.config.path).map_or(0, |m| m.len());
        db + self.wal_bytes()
    }

    fn wal_bytes(&self) -> u64 {
        let mut wal = OsString::from(self.config.path.as_os_str());
        wal.push("-wal");
        std::fs::metadata(wal).map_or(0, |m| m.len())
    }

    /// Every stored batch with its class, without marking any as handed out.
    #[cfg(test)]
    fn peek(&self) -> Vec<(StoredBatch, Class)> {
        read_batches(&self.conn, &self.config.path, 0, usize::MAX).expect("peek reads batches")
    }
}

fn validate(config: &SpoolConfig) -> Result<(), SpoolError> {
    let reason = if config.max_batch_events == 0 {
        "max_batch_events must be at least 1"
    } else if u32::try_from(config.max_batch_events).is_err() {
        "max_batch_events must be at most 4294967295"
    } else if config.max_batch_bytes == 0 {
        "max_batch_bytes must be at least 1"
    } else {
        return Ok(());
    };
    Err(SpoolError::Config {
        path: config.path.clone(),
        reason: reason.to_owned(),
    })
}

/// Maps a SQLite error to a [`SpoolError`] naming the file and what was being done.
fn sql<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(rusqlite::Error) -> SpoolError + 'a {
    move |source| SpoolError::Sqlite {
        path: path.to_path_buf(),
        action,
        source: Arc::new(source),
    }
}

fn corrupt(path: &Path, reason: String) -> SpoolError {
    SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// Creates the tables and the spool row in a fresh file; checks the schema version otherwise.
fn create_schema(conn: &mut Connection, path: &Path) -> Result<(), SpoolError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql(path, "cannot begin a transaction"))?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql(path, "cannot read the schema version"))?;
    match version {
        SCHEMA_VERSION => return Ok(()),
        0 => {}
        1..SCHEMA_VERSION => {
            for (_, migration) in MIGRATIONS.iter().filter(|(from, _)| *from >= version) {
                tx.execute_batch(migration)
                    .map_err(sql(path, "cannot migrate the schema"))?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql(path, "cannot set the schema version"))?;
            return tx.commit().map_err(sql(path, "cannot migrate the schema"));
        }
        other => {
            return Err(corrupt(
                path,
                format!(
                    "schema version {other} is not {SCHEMA_VERSION} (written by another version of the agent?)"
                ),
            ));
        }
    }
    let spool_id: u64 = rand::random_range(1..=u64::MAX);
    tx.execute_batch(SCHEMA)
        .map_err(sql(path, "cannot create the schema"))?;
    tx.execute(
        "INSERT INTO spool VALUES (1, ?1, 1, 0, 0, 0, 0, 0, 0)",
        [id_to_sql(spool_id)],
    )
    .map_err(sql(path, "cannot create the spool row"))?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql(path, "cannot set the schema version"))?;
    tx.commit().map_err(sql(path, "cannot create the schema"))
}

/// Turns on `auto_vacuum = INCREMENTAL` in a file made before the spool used it, with the one
/// `VACUUM` that takes; the migration step that cannot run inside the schema transaction. It needs
/// free space about the size of the file, so on a full disk it fails, is logged, and is tried
/// again at the next open: the spool works without it, its files just do not shrink.
fn enable_auto_vacuum(conn: &Connection, path: &Path) {
    const INCREMENTAL: i64 = 2;
    let mode = conn.pragma_query_value(None, "auto_vacuum", |row| row.get::<_, i64>(0));
    if matches!(mode, Ok(INCREMENTAL)) {
        return;
    }
    match conn.execute_batch("VACUUM;") {
        Ok(()) => {
            tracing::info!(spool = %path.display(), "spool migrated to incremental auto-vacuum")
        }
        Err(error) => tracing::warn!(
            spool = %path.display(),
            %error,
            "cannot turn on incremental auto-vacuum yet (it needs free space the size of the spool); the spool works without it and tries again at the next start"
        ),
    }
}

fn load_state(conn: &Connection, path: &Path) -> Result<(u64, State), SpoolError> {
    let (spool_id, next_seq, drops) = conn
        .query_row(
            "SELECT spool_id, next_seq, spool_full_evicted, spool_full_rejected,
                    rejected_by_aggregator, oversized, spool_write_failed, disk_full
             FROM spool WHERE id = 1",
            [],
            |row| {
                let drops = DropCounters {
                    spool_full_evicted: get_u64(row, 2)?,
                    spool_full_rejected: get_u64(row, 3)?,
                    rejected_by_aggregator: get_u64(row, 4)?,
                    oversized: get_u64(row, 5)?,
                    spool_write_failed: get_u64(row, 6)?,
                    disk_full: get_u64(row, 7)?,
                };
                Ok((id_from_sql(row.get(0)?), get_u64(row, 1)?, drops))
            },
        )
        .optional()
        .map_err(sql(path, "cannot read the spool state"))?
        .ok_or_else(|| corrupt(path, "the spool row is missing".to_owned()))?;
    let (batches, events, payload_bytes, max_seq) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(events), 0), coalesce(sum(length(payload)), 0),
                    coalesce(max(seq), 0) FROM batches",
            [],
            |row| {
                let totals = [0, 1, 2, 3].map(|i| get_u64(row, i));
                let [batches, events, bytes, max_seq] = totals;
                Ok((batches?, events?, bytes?, max_seq?))
            },
        )
        .map_err(sql(path, "cannot read the batch totals"))?;
    if next_seq <= max_seq || next_seq == 0 {
        return Err(corrupt(
            path,
            format!("next seq {next_seq} is not above the newest batch {max_seq}"),
        ));
    }
    let state = State {
        next_seq,
        payload_bytes,
        events,
        batches,
        low_water_seq: next_seq,
        drops,
    };
    Ok((spool_id, state))
}

/// SQLite integers are signed; the spool id keeps its 64 bits by reinterpretation.
fn id_to_sql(id: u64) -> i64 {
    i64::from_ne_bytes(id.to_ne_bytes())
}

fn id_from_sql(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

/// Seqs, sizes and counters are `u64` here and non-negative `i64` in SQLite; they stay far below
/// `i64::MAX`, and a value that does not fit fails the statement rather than wrapping.
fn int(value: u64) -> rusqlite::Result<i64> {
    i64::try_from(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Reads a column written by [`int`]; a negative value means the file was tampered with.
fn get_u64(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

fn write_state(tx: &Transaction<'_>, path: &Path, state: &State) -> Result<(), SpoolError> {
    let d = &state.drops;
    tx.prepare_cached(
        "UPDATE spool SET next_seq = ?1, spool_full_evicted = ?2, spool_full_rejected = ?3,
                          rejected_by_aggregator = ?4, oversized = ?5, spool_write_failed = ?6,
                          disk_full = ?7
         WHERE id = 1",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            int(state.next_seq)?,
            int(d.spool_full_evicted)?,
            int(d.spool_full_rejected)?,
            int(d.rejected_by_aggregator)?,
            int(d.oversized)?,
            int(d.spool_write_failed)?,
            int(d.disk_full)?
        ])
    })
    .map_err(sql(path, "cannot save the spool state"))
    .map(drop)
}

fn low_water(conn: &Connection, path: &Path, next_seq: u64) -> Result<u64, SpoolError> {
    conn.prepare_cached("SELECT min(seq) FROM batches")
        .and_then(|mut stmt| {
            stmt.query_row([], |row| {
                let min: Option<i64> = row.get(0)?;
                min.map(|_| get_u64(row, 0)).transpose()
            })
        })
        .map_err(sql(path, "cannot read the oldest batch"))
        .map(|min| min.unwrap_or(next_seq))
}

fn apply_state_change(
    tx: &Transaction<'_>,
    path: &Path,
    change: &StateChange,
) -> Result<(), SpoolError> {
    let result = match change {
        StateChange::Put { source, key, value } => tx
            .prepare_cached(
                "INSERT INTO source_state (source, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (source, key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut stmt| stmt.execute(params![source, key, value])),
        StateChange::Delete { source, key } => tx
            .prepare_cached("DELETE FROM source_state WHERE source = ?1 AND key = ?2")
            .and_then(|mut stmt| stmt.execute(params![source, key])),
    };
    result
        .map(drop)
        .map_err(sql(path, "cannot save a source's state"))
}

/// Writes `batches` with fresh seqs from `next.next_seq`, counting them into `next`; returns each
/// one's seq, size and class, in order.
fn insert_batches(
    tx: &Transaction<'_>,
    path: &Path,
    next: &mut State,
    created_ns: i64,
    batches: &[EncodedBatch],
) -> Result<Vec<(u64, BatchSize, Class)>, SpoolError> {
    let mut written = Vec::with_capacity(batches.len());
    for batch in batches {
        let seq = next.next_seq;
        insert_batch(tx, path, seq, created_ns, batch)?;
        let size = BatchSize {
            bytes: batch.payload.len() as u64,
            events: u64::from(batch.events),
        };
        next.next_seq += 1;
        next.batches += 1;
        next.payload_bytes += size.bytes;
        next.events += size.events;
        written.push((seq, size, batch.class));
    }
    Ok(written)
}

fn insert_batch(
    tx: &Transaction<'_>,
    path: &Path,
    seq: u64,
    created_ns: i64,
    batch: &EncodedBatch,
) -> Result<(), SpoolError> {
    tx.prepare_cached(
        "INSERT INTO batches (seq, created_ns, class, events, payload, codec, raw_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut stmt| {
        let packed = batch.codec != Codec::None;
        stmt.execute(params![
            int(seq)?,
            created_ns,
            batch.class.code(),
            batch.events,
            batch.payload,
            batch.codec.code(),
            packed.then(|| int(batch.raw_bytes as u64)).transpose()?,
        ])
    })
    .map_err(sql(path, "cannot write a batch"))
    .map(drop)
}

/// Deletes one batch, returning its size if it existed.
fn delete_batch(
    tx: &Transaction<'_>,
    path: &Path,
    seq: u64,
) -> Result<Option<BatchSize>, SpoolError> {
    tx.prepare_cached("DELETE FROM batches WHERE seq = ?1 RETURNING length(payload), events")
        .and_then(|mut stmt| {
            stmt.query_row([int(seq)?], |row| {
                Ok(BatchSize {
                    bytes: get_u64(row, 0)?,
                    events: get_u64(row, 1)?,
                })
            })
            .optional()
        })
        .map_err(sql(path, "cannot delete a batch"))
}

fn read_batches(
    conn: &Connection,
    path: &Path,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<(StoredBatch, Class)>, SpoolError> {
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    // No `LIMIT ?`: SQLite prepares a statement again when a bound limit moves between values
    // that change its plan (to or from 1, say), which the shipper's varying limits did on most
    // reads. Stepping stops after `limit` rows all the same.
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, created_ns, events, payload, class, codec, raw_bytes FROM batches
             WHERE seq > ?1 ORDER BY seq",
        )
        .map_err(sql(path, "cannot read batches"))?;
    let rows = stmt
        .query_map([after], |row| {
            let class = if row.get::<_, i64>(4)? == Class::Drop.code() {
                Class::Drop
            } else {
                Class::Wait
            };
            let payload: Vec<u8> = row.get(3)?;
            let codec = Codec::from_code(row.get(5)?).ok_or_else(|| {
                rusqlite::Error::IntegralValueOutOfRange(5, row.get(5).unwrap_or_default())
            })?;
            let raw_bytes: Option<i64> = row.get(6)?;
            let raw_bytes = match raw_bytes {
                Some(_) => usize::try_from(get_u64(row, 6)?)
                    .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(6, i64::MAX))?,
                None => payload.len(),
            };
            let batch = StoredBatch {
                seq: get_u64(row, 0)?,
                created_ns: row.get(1)?,
                events: row.get(2)?,
                low_water_seq: 0,
                payload,
                codec,
                raw_bytes,
            };
            Ok((batch, class))
        })
        .map_err(sql(path, "cannot read batches"))?;
    rows.take(limit)
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql(path, "cannot read batches"))
}

fn sized(sub: Submission, path: &Path) -> Result<SizedSubmission, SpoolError> {
    sub.prepare().into_sized(path)
}

/// Encodes each event on its own, back to back, with the size of each as a one-event list, which
/// is what batches are packed by (see [`plan::SizedSubmission`]). Each event is encoded once:
/// the batches are cut from these bytes.
fn encode_each(events: &[Event], path: &Path) -> Result<(Vec<u8>, Vec<usize>), SpoolError> {
    encode_events(events).map_err(encode_error(path))
}

fn encode_events(events: &[Event]) -> Result<(Vec<u8>, Vec<usize>), WireError> {
    let mut encoded = Vec::new();
    let mut sizes = Vec::with_capacity(events.len());
    for event in events {
        let bytes = wire::encode_event_into(event, &mut encoded)?;
        sizes.push(bytes + wire::ONE_EVENT_LIST_PREFIX);
    }
    Ok((encoded, sizes))
}

fn encode_error(path: &Path) -> impl Fn(WireError) -> SpoolError + '_ {
    move |source| SpoolError::Encode {
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

/// Threads that pack one commit's batches at most: compressing is most of the work of a commit
/// of many batches, and they compress independently.
const MAX_PACKING_THREADS: usize = 4;

/// How many threads pack a commit's batches: one per CPU, up to [`MAX_PACKING_THREADS`].
fn packing_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_PACKING_THREADS)
}

/// The payloads of planned batches, in order, each compressed where that makes it smaller.
///
/// A commit of several batches is packed by as many threads as there are `packers` (the spool's
/// own thread takes the first share), so that a burst is compressed by the CPUs the host has
/// rather than one; a commit of one batch is packed where it is.
fn payloads(
    batches: Vec<PlannedBatch>,
    packers: &mut [Packer],
    path: &Path,
) -> Result<Vec<EncodedBatch>, SpoolError> {
    let threads = packers.len().min(batches.len());
    if threads <= 1 {
        let packer = packers
            .first_mut()
            .ok_or_else(|| corrupt(path, "no compressor".to_owned()))?;
        return pack_all(batches, packer, path);
    }
    let per_thread = batches.len().div_ceil(threads);
    let mut shares: Vec<Vec<PlannedBatch>> = Vec::with_capacity(threads);
    let mut batches = batches.into_iter();
    loop {
        let share: Vec<PlannedBatch> = batches.by_ref().take(per_thread).collect();
        if share.is_empty() {
            break;
        }
        shares.push(share);
    }
    std::thread::scope(|scope| {
        let mut shares = shares.into_iter().zip(packers.iter_mut());
        let first = shares.next();
        let others: Vec<_> = shares
            .map(|(share, packer)| scope.spawn(move || pack_all(share, packer, path)))
            .collect();
        let mut encoded = match first {
            Some((share, packer)) => pack_all(share, packer, path)?,
            None => Vec::new(),
        };
        for other in others {
            let packed = other
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            encoded.extend(packed);
        }
        Ok(encoded)
    })
}

/// [`payloads`] of `batches`, on this thread.
///
/// The planner packs by the sum of the events' sizes as one-event lists, and a list of `n` events
/// is at most that long, so each payload is within the byte limit the batch was packed to before
/// compression, and no larger after.
fn pack_all(
    batches: Vec<PlannedBatch>,
    packer: &mut Packer,
    path: &Path,
) -> Result<Vec<EncodedBatch>, SpoolError> {
    batches
        .into_iter()
        .map(|batch| {
            let raw =
                wire::events_payload(batch.events, &batch.body).map_err(encode_error(path))?;
            let raw_bytes = raw.len();
            let (payload, codec) = match packer.pack(&raw).map_err(encode_error(path))? {
                Some(packed) => (packed, packer.codec()),
                None => (raw, Codec::None),
            };
            Ok(EncodedBatch {
                class: batch.class,
                // The planner caps a batch at `max_batch_events`, which `validate` keeps within
                // u32 (and `split_batch` clamps its limit to).
                events: u32::try_from(batch.events).unwrap_or(u32::MAX),
                payload,
                codec,
                raw_bytes,
            })
        })
        .collect()
}

fn add_drops(into: &mut DropCounters, delta: &DropCounters) {
    for reason in DropReason::ALL {
        into.add(reason, delta.get(reason));
    }
}

#[cfg(test)]
mod tests;
