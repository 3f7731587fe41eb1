//! The event model: what agents collect and the aggregator stores.
//!
//! These are plain serde types that travel inside [`crate::wire::Batch`]. They avoid serde
//! attributes such as `skip_serializing_if`, `flatten` and `untagged`, which break the
//! non-self-describing wire codec. All timestamps are `i64` nanoseconds since the Unix epoch (UTC),
//! in fields named `*_ns`.

use serde::{Deserialize, Serialize};

/// Key/value attributes attached to a metric point or log record, in a stable order.
pub type Attributes = Vec<(String, String)>;

/// One thing an agent observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A metric sample.
    Metric(MetricPoint),
    /// A log line or journal entry.
    Log(LogRecord),
    /// A file-integrity change.
    Fim(FimEvent),
    /// A snapshot of the agent's own state.
    Status(AgentStatus),
}

impl Event {
    /// When the event happened, as the agent saw it.
    pub fn time_ns(&self) -> i64 {
        match self {
            Event::Metric(m) => m.time_ns,
            Event::Log(l) => l.time_ns,
            Event::Fim(f) => f.time_ns,
            Event::Status(s) => s.time_ns,
        }
    }

    /// A short, stable name of the event's kind, for logs and counters.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Metric(_) => EventKind::Metric,
            Event::Log(_) => EventKind::Log,
            Event::Fim(_) => EventKind::Fim,
            Event::Status(_) => EventKind::Status,
        }
    }
}

/// The kinds of [`Event`], used for retention settings and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    Metric,
    Log,
    Fim,
    Status,
}

impl EventKind {
    /// All kinds, in a fixed order.
    pub const ALL: [EventKind; 4] = [
        EventKind::Metric,
        EventKind::Log,
        EventKind::Fim,
        EventKind::Status,
    ];

    /// The lower-case name used in configuration and output.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Metric => "metric",
            EventKind::Log => "log",
            EventKind::Fim => "fim",
            EventKind::Status => "status",
        }
    }
}

/// Whether a metric is a point-in-time value or a monotonically growing total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricKind {
    /// A value at a point in time (memory used, load average).
    Gauge,
    /// A cumulative total since some start (bytes received); rates are computed centrally.
    Counter,
}

/// One metric sample, named after the OpenTelemetry host-metrics conventions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// For example `system.memory.usage`.
    pub name: String,
    /// The unit in UCUM notation, as OpenTelemetry writes it: `By` (bytes), `s`, `1` (a ratio
    /// or a plain number), `%`, or a curly-brace annotation such as `{packet}` for counts.
    pub unit: String,
    /// For example `[("state", "used")]`.
    pub attributes: Attributes,
    pub time_ns: i64,
    pub value: f64,
    pub kind: MetricKind,
}

/// Severity of a log record, after the syslog levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    Emergency,
    Alert,
    Critical,
    Error,
    Warning,
    Notice,
    Info,
    Debug,
}

impl Severity {
    /// Every severity, most severe first.
    pub const ALL: [Severity; 8] = [
        Severity::Emergency,
        Severity::Alert,
        Severity::Critical,
        Severity::Error,
        Severity::Warning,
        Severity::Notice,
        Severity::Info,
        Severity::Debug,
    ];

    /// Its lower-case name, as syslog spells it: `emergency` … `debug`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Emergency => "emergency",
            Severity::Alert => "alert",
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Notice => "notice",
            Severity::Info => "info",
            Severity::Debug => "debug",
        }
    }
}

/// One log line or journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub time_ns: i64,
    /// Where it came from: a file path, `journal`, or `synthetic`.
    pub source: String,
    pub severity: Option<Severity>,
    pub body: String,
    pub attributes: Attributes,
}

/// What happened to a watched path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FimChange {
    /// The path appeared.
    Created,
    /// The content changed (its hash, or its size when it is not hashed); attributes may have
    /// changed too ([`FimEvent::changed`] lists them all).
    Modified,
    /// Only attributes changed: [`FimEvent::changed`] says which.
    MetadataChanged,
    /// The path disappeared.
    Deleted,
    /// The path was renamed: [`FimEvent::path`] is where it went, [`FimEvent::moved_from`] where
    /// it was.
    Moved,
    /// The path is now of another [`FileKind`] (a file replaced by a symlink, say).
    TypeChanged,
}

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// How a change was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FimDetection {
    /// A filesystem notification (inotify), checked against the baseline.
    Realtime,
    /// A scheduled full scan.
    Scheduled,
    /// A rescan after notifications were lost (queue overflow, watch limit) or at start.
    Rescan,
}

/// The state of a path as the integrity monitor saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    pub kind: FileKind,
    pub size: u64,
    /// The full `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub device: u64,
    pub nlink: u64,
    /// A symlink's target.
    pub link_target: Option<String>,
    /// Hex SHA-256 over the extended attributes (ACLs included), names sorted, when there are any.
    pub xattrs: Option<String>,
    /// The content hash as `algorithm:hex` (`sha256:…` or `blake3:…`), when it was hashed.
    pub hash: Option<String>,
    /// The file is larger than the configured hashing limit: it is compared by metadata only.
    pub too_large_to_hash: bool,
}

/// A file-integrity change.
///
/// Every event of an agent carries its place in the agent's tamper-evident trail: `seq` counts
/// the agent's FIM events from 1 without gaps, and `chain` is [`chain_hash`] of the previous
/// event's `chain` and this event, so the aggregator can tell a lost, reordered, replayed or edited
/// event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FimEvent {
    pub time_ns: i64,
    pub path: String,
    pub change: FimChange,
    /// The attributes that differ between `before` and `after`, by name: `kind`, `size`, `mode`,
    /// `uid`, `gid`, `mtime`, `ctime`, `inode`, `device`, `nlink`, `link_target`, `xattrs`,
    /// `hash`. Empty for created and deleted paths.
    pub changed: Vec<String>,
    /// For [`FimChange::Moved`]: the path it had before.
    pub moved_from: Option<String>,
    /// Boxed, so that an [`Event`] stays small.
    pub before: Option<Box<FileState>>,
    pub after: Option<Box<FileState>>,
    pub detected_by: FimDetection,
    /// The event's place in the agent's trail, from 1.
    pub seq: u64,
    /// Hex SHA-256 chaining this event to the previous one: see [`chain_hash`].
    pub chain: String,
}

/// The `chain` of the event before the first: 64 zeros.
pub const CHAIN_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `chain` value of `event` following an event whose `chain` is `previous`: hex SHA-256 of
/// `previous` (as text) and the event's encoding in the wire codec with its own `chain` empty.
///
/// The agent computes it when it emits the event; the aggregator computes it again as events
/// arrive and when it re-verifies a stored trail.
pub fn chain_hash(previous: &str, event: &FimEvent) -> String {
    let unchained = FimEvent {
        chain: String::new(),
        ..event.clone()
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(previous.as_bytes());
    // Encoding plain data into memory cannot fail; an empty encoding would still be chained.
    ctx.update(&crate::wire::encode_fim_for_chain(&unchained));
    hex(ctx.finish().as_ref())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Why the agent dropped events; every drop is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DropReason {
    /// The spool was full and the oldest droppable data was evicted to make room.
    SpoolFullEvicted,
    /// The spool was full and nothing older could be evicted, so the new data was refused.
    SpoolFullRejected,
    /// The aggregator rejected a batch permanently (invalid content).
    RejectedByAggregator,
    /// An event was larger than the largest batch the aggregator accepts.
    Oversized,
    /// Droppable data (metric samples, status snapshots) could not be written to the spool
    /// (disk full, I/O error) and was given up.
    SpoolWriteFailed,
    /// The disk holding the spool had no room left (beyond its reserve): droppable data was
    /// evicted or refused, or could not be written.
    DiskFull,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::SpoolFullEvicted,
        DropReason::SpoolFullRejected,
        DropReason::RejectedByAggregator,
        DropReason::Oversized,
        DropReason::SpoolWriteFailed,
        DropReason::DiskFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SpoolFullEvicted => "spool_full_evicted",
            DropReason::SpoolFullRejected => "spool_full_rejected",
            DropReason::RejectedByAggregator => "rejected_by_aggregator",
            DropReason::Oversized => "oversized",
            DropReason::SpoolWriteFailed => "spool_write_failed",
            DropReason::DiskFull => "disk_full",
        }
    }
}

/// Events dropped, by reason, since the spool was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounters {
    pub spool_full_evicted: u64,
    pub spool_full_rejected: u64,
    pub rejected_by_aggregator: u64,
    pub oversized: u64,
    pub spool_write_failed: u64,
    /// Absent from statuses stored before it existed.
    #[serde(default)]
    pub disk_full: u64,
}

impl DropCounters {
    /// The sum over every reason, saturating: the counters arrive from agents.
    pub fn total(&self) -> u64 {
        DropReason::ALL
            .iter()
            .fold(0u64, |sum, &r| sum.saturating_add(self.get(r)))
    }

    pub fn add(&mut self, reason: DropReason, n: u64) {
        *self.slot(reason) += n;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::SpoolFullEvicted => self.spool_full_evicted,
            DropReason::SpoolFullRejected => self.spool_full_rejected,
            DropReason::RejectedByAggregator => self.rejected_by_aggregator,
            DropReason::Oversized => self.oversized,
            DropReason::SpoolWriteFailed => self.spool_write_failed,
            DropReason::DiskFull => self.disk_full,
        }
    }

    fn slot(&mut self, reason: DropReason) -> &mut u64 {
        match reason {
            DropReason::SpoolFullEvicted => &mut self.spool_full_evicted,
            DropReason::SpoolFullRejected => &mut self.spool_full_rejected,
            DropReason::RejectedByAggregator => &mut self.rejected_by_aggregator,
            DropReason::Oversized => &mut self.oversized,
            DropReason::SpoolWriteFailed => &mut self.spool_write_failed,
            DropReason::DiskFull => &mut self.disk_full,
        }
    }
}

/// A collector that failed or overran its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorError {
    /// The collector's name, for example `metrics.filesystem`.
    pub collector: String,
    /// What went wrong, in a sentence.
    pub reason: String,
    /// When it was last seen failing.
    pub since_ns: i64,
}

/// The agent's own state, sent with every heartbeat and spooled periodically.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub time_ns: i64,
    pub agent_version: String,
    pub started_ns: i64,
    /// Bytes the spool's database occupies.
    pub spool_bytes: u64,
    /// Events in the spool that the aggregator has not acknowledged.
    pub spool_events: u64,
    /// Batches in the spool that the aggregator has not acknowledged.
    pub backlog_batches: u64,
    /// The spool's byte cap.
    pub spool_cap_bytes: u64,
    pub batches_sent: u64,
    pub batches_acked: u64,
    pub events_acked: u64,
    pub drops: DropCounters,
    /// Collectors currently failing; empty when all is well.
    pub collector_errors: Vec<CollectorError>,
    /// The log file sources at a glance (absent from statuses stored before protocol 4).
    #[serde(default)]
    pub logs: LogStatus,
    /// When the agent's certificate expires, nanoseconds since the epoch; 0 when unknown
    /// (statuses stored before protocol 8). It changes when the agent renews the certificate.
    #[serde(default)]
    pub cert_not_after_ns: i64,
    /// Why the last attempt to renew the certificate failed; `None` when it has not failed
    /// since the agent started or last renewed it.
    #[serde(default)]
    pub cert_renewal_error: Option<String>,
}

/// The agent's log file sources at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStatus {
    /// Files open, rotated-away ones still being read included.
    pub files_open: u64,
    /// Bytes written to the files and not read yet.
    pub lag_bytes: u64,
    /// Bytes that could not be read since the agent started: truncated before they were read,
    /// given up after a rotation, cut off over-long lines.
    pub lost_bytes: u64,
    /// The files furthest behind, with their lag in bytes (a few at most).
    pub lagging: Vec<(String, u64)>,
}

/// Facts about the host, sent in Hello.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub boot_time_ns: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> FimEvent {
        FimEvent {
            time_ns: 1,
            path: "/etc/passwd".to_owned(),
            change: FimChange::Modified,
            changed: vec!["hash".to_owned()],
            moved_from: None,
            before: None,
            after: None,
            detected_by: FimDetection::Realtime,
            seq,
            chain: String::new(),
        }
    }

    #[test]
    fn the_chain_covers_every_field_but_its_own() {
        let first = event(1);
        let hash = chain_hash(CHAIN_GENESIS, &first);
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, chain_hash(CHAIN_GENESIS, &first), "deterministic");
        let with_chain = FimEvent {
            chain: hash.clone(),
            ..first.clone()
        };
        assert_eq!(chain_hash(CHAIN_GENESIS, &with_chain), hash);
        assert_ne!(chain_hash(&hash, &first), hash, "the previous link counts");
        let edits = [
            FimEvent {
                path: "/etc/shadow".to_owned(),
                ..first.clone()
            },
            FimEvent {
                seq: 2,
                ..first.clone()
            },
            FimEvent {
                time_ns: 2,
                ..first.clone()
            },
            FimEvent {
                change: FimChange::Deleted,
                ..first.clone()
            },
            FimEvent {
                changed: Vec::new(),
                ..first.clone()
            },
            FimEvent {
                detected_by: FimDetection::Scheduled,
                ..first.clone()
            },
        ];
        for edited in edits {
            assert_ne!(chain_hash(CHAIN_GENESIS, &edited), hash, "{edited:?}");
        }
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
