//! The aggregator's internal events: what ingest did or suffered, each written once as a struct
//! whose `emit` logs its sentence and updates its counters.
//!
//! Emit through [`Telemetry::emit`], which also records the event's [`InternalEvent::NAME`] when
//! the telemetry records (tests). A new event goes here, beside the others, so its log line and
//! its counter are found together. Warnings that a misbehaving peer can cause at will (refused
//! connections, bad frames, store failures it retries into) go through a per-kind log limiter:
//! a few lines a minute at most, each saying how many were suppressed before it.
//!
//! The counters are read by [`Telemetry::counters`]: the ingest service logs an
//! [`IngestSummary`] every minute when they moved, and once at shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use outpost_common::telemetry::Recorder;
use outpost_common::wire::RejectCode;
use tracing::{debug, info, warn};

pub use outpost_common::telemetry::InternalEvent;

/// Ingest's counters, the log limiter and (in tests) the recorder. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Telemetry {
    counters: AtomicCounters,
    log_limiter: LogLimiter,
    recorder: Recorder,
}

outpost_common::counters! {
    /// Ingest's counters at one moment; each counts since the aggregator started.
    pub struct Counters;
    enum Counter;
    struct AtomicCounters;
    {
        /// Connections refused before any session: failed TLS handshake, no agent identity,
        /// revoked, or refused before their handshake (`connections_shed`).
        connections_refused => ConnectionsRefused,
        /// Connections refused at once, before their handshake, because `ingest.max_handshakes`
        /// handshakes were in progress; their agents retry after their backoff.
        connections_shed => ConnectionsShed,
        /// Sessions established (Welcome sent).
        agents_connected => AgentsConnected,
        /// Established sessions that ended, for any reason.
        agents_disconnected => AgentsDisconnected,
        /// Established sessions closed because a newer connection of the same agent took over.
        connections_replaced => ConnectionsReplaced,
        /// Established sessions closed because their certificate was revoked.
        connections_revoked => ConnectionsRevoked,
        /// Hellos refused: unsupported protocol version or invalid content.
        hellos_rejected => HellosRejected,
        /// Connections that sent no Hello within the handshake timeout.
        hello_timeouts => HelloTimeouts,
        /// Established sessions closed after sending nothing for the idle timeout.
        idle_timeouts => IdleTimeouts,
        /// Frames that could not be decoded or exceeded the frame limit.
        frames_malformed => FramesMalformed,
        /// Well-formed messages where the protocol does not allow them.
        protocol_violations => ProtocolViolations,
        /// Heartbeats received.
        heartbeats => Heartbeats,
        /// Batches stored for the first time.
        batches_stored => BatchesStored,
        /// Events in those batches.
        events_stored => EventsStored,
        /// Batches acknowledged again because they were stored before.
        batches_duplicate => BatchesDuplicate,
        /// Batches refused: invalid content, or beyond the in-flight limit.
        batches_rejected => BatchesRejected,
        /// Store operations that failed (batch commits and registry updates).
        store_failures => StoreFailures,
        /// TLS files reloaded.
        tls_reloads => TlsReloads,
        /// TLS reloads that failed (the previous files stay in use).
        tls_reload_failures => TlsReloadFailures,
        /// Certificates issued to enrolling agents.
        enrollments_issued => EnrollmentsIssued,
        /// Enrollment requests refused (bad token, id held, bad signing request, replay...).
        enrollments_refused => EnrollmentsRefused,
        /// Enrollment connections that sent no valid EnrollRequest in time (garbage, another
        /// message, nothing).
        enrollments_malformed => EnrollmentsMalformed,
        /// Certificates issued to agents renewing over their connection.
        renewals_issued => RenewalsIssued,
        /// Renewal requests refused.
        renewals_refused => RenewalsRefused,
    }
}

impl Telemetry {
    pub fn new() -> Self {
        Telemetry::default()
    }

    /// Telemetry that also records the name of every event emitted, for tests.
    pub fn recording() -> Self {
        Telemetry {
            recorder: Recorder::recording(),
            ..Telemetry::default()
        }
    }

    /// Emits an internal event: its log line and counters, and its name when recording.
    pub fn emit<E: InternalEvent<Self>>(&self, event: E) {
        self.recorder.record(E::NAME);
        event.emit(self);
    }

    /// The names of the events emitted so far (empty unless made with [`Telemetry::recording`]).
    pub fn recorded(&self) -> Vec<&'static str> {
        self.recorder.names()
    }

    /// Every counter now.
    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    /// Adds `n` to a counter. Only internal events call this.
    fn add(&self, counter: Counter, n: u64) {
        self.counters.add(counter, n);
    }

    /// Whether a rate-limited line of kind `key` may be logged now; if so, how many were
    /// suppressed since the last one.
    fn may_log(&self, key: &'static str) -> Option<u64> {
        self.log_limiter.check(key)
    }
}

/// Decides when the periodic summary is worth a line: only when a counter moved since the last.
#[derive(Debug, Default)]
pub struct SummaryGate {
    last: Counters,
}

impl SummaryGate {
    /// Whether `now` differs from the counters last let through; if so, remembers `now`.
    pub fn changed(&mut self, now: Counters) -> bool {
        if now == self.last {
            return false;
        }
        self.last = now;
        true
    }
}

/// Logs at most a few lines per minute for each kind of failure, counting what it suppressed.
#[derive(Debug)]
struct LogLimiter {
    limiter: DefaultKeyedRateLimiter<&'static str>,
    suppressed: Mutex<HashMap<&'static str, u64>>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        let burst = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN);
        LogLimiter {
            limiter: RateLimiter::keyed(Quota::per_minute(burst).allow_burst(burst)),
            suppressed: Mutex::new(HashMap::new()),
        }
    }
}

impl LogLimiter {
    /// Whether to log now; if so, how many were suppressed since the last line.
    fn check(&self, key: &'static str) -> Option<u64> {
        let mut suppressed = self
            .suppressed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.limiter.check_key(&key).is_ok() {
            Some(suppressed.remove(key).unwrap_or(0))
        } else {
            *suppressed.entry(key).or_insert(0) += 1;
            None
        }
    }
}

/// Why a connection was refused before it could become a session.
#[derive(Debug, Clone, Copy)]
pub enum Refusal<'a> {
    /// The TLS handshake failed (no certificate, unknown CA, revoked, expired...).
    HandshakeFailed { error: &'a str },
    /// The certificate carries no valid agent identity.
    NoIdentity { error: &'a str },
    /// The certificate's serial is on the revocation list loaded since the handshake.
    Revoked { agent_id: &'a str, serial: &'a str },
    /// `limit` handshakes were already in progress; refused before its own.
    Busy { limit: usize },
}

/// A connection was refused before any session.
#[derive(Debug)]
pub struct ConnectionRefused<'a> {
    pub remote: SocketAddr,
    pub refusal: Refusal<'a>,
}

impl InternalEvent<Telemetry> for ConnectionRefused<'_> {
    const NAME: &'static str = "connection_refused";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::ConnectionsRefused, 1);
        let remote = self.remote;
        match self.refusal {
            Refusal::HandshakeFailed { error } => {
                if let Some(suppressed) = t.may_log("handshake") {
                    warn!(%remote, reason = error, suppressed, "refused a connection: TLS handshake failed");
                }
            }
            Refusal::NoIdentity { error } => {
                if let Some(suppressed) = t.may_log("identity") {
                    warn!(%remote, reason = error, suppressed, "refused a connection: no agent identity in the certificate");
                }
            }
            Refusal::Revoked { agent_id, serial } => {
                if let Some(suppressed) = t.may_log("revoked") {
                    warn!(%remote, agent_id, serial, suppressed, "refused a connection: certificate revoked");
                }
            }
            Refusal::Busy { limit } => {
                t.add(Counter::ConnectionsShed, 1);
                if let Some(suppressed) = t.may_log("busy") {
                    warn!(%remote, limit, suppressed, "refused a connection before its handshake: ingest.max_handshakes handshakes are in progress; the agent retries after its backoff");
                }
            }
        }
    }
}

/// An agent said a valid Hello and was welcomed: its session is established.
#[derive(Debug)]
pub struct AgentConnected<'a> {
    pub agent_id: &'a str,
    pub remote: SocketAddr,
    pub agent_version: &'a str,
    pub hostname: &'a str,
    pub backlog_batches: u64,
}

impl InternalEvent<Telemetry> for AgentConnected<'_> {
    const NAME: &'static str = "agent_connected";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::AgentsConnected, 1);
        info!(
            agent_id = self.agent_id,
            remote = %self.remote,
            version = self.agent_version,
            hostname = self.hostname,
            backlog_batches = self.backlog_batches,
            "agent connected"
        );
    }
}

/// An established session ended.
#[derive(Debug)]
pub struct AgentDisconnected<'a> {
    pub agent_id: &'a str,
    pub remote: SocketAddr,
    pub reason: &'a str,
}

impl InternalEvent<Telemetry> for AgentDisconnected<'_> {
    const NAME: &'static str = "agent_disconnected";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::AgentsDisconnected, 1);
        info!(agent_id = self.agent_id, remote = %self.remote, reason = self.reason, "agent disconnected");
    }
}

/// Why a Hello was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloRejection {
    /// The agent speaks a protocol version this aggregator does not.
    VersionMismatch,
    /// A field of the Hello is out of bounds.
    Invalid,
}

/// A Hello was refused with a Reject, and the connection closed.
#[derive(Debug)]
pub struct HelloRejected<'a> {
    pub agent_id: &'a str,
    pub remote: SocketAddr,
    pub rejection: HelloRejection,
    pub reason: &'a str,
}

impl InternalEvent<Telemetry> for HelloRejected<'_> {
    const NAME: &'static str = "hello_rejected";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::HellosRejected, 1);
        let (key, sentence) = match self.rejection {
            HelloRejection::VersionMismatch => (
                "version mismatch",
                "unsupported protocol version; closing the connection",
            ),
            HelloRejection::Invalid => ("invalid Hello", "invalid Hello; closing the connection"),
        };
        if let Some(suppressed) = t.may_log(key) {
            warn!(agent_id = self.agent_id, remote = %self.remote, reason = self.reason, suppressed, "{sentence}");
        }
    }
}

/// A connection sent no Hello within the handshake timeout and was closed.
#[derive(Debug)]
pub struct HelloTimedOut<'a> {
    pub agent_id: &'a str,
    pub remote: SocketAddr,
    pub after: Duration,
}

impl InternalEvent<Telemetry> for HelloTimedOut<'_> {
    const NAME: &'static str = "hello_timed_out";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::HelloTimeouts, 1);
        if let Some(suppressed) = t.may_log("hello timeout") {
            warn!(agent_id = self.agent_id, remote = %self.remote, after = ?self.after, suppressed, "no Hello within the handshake timeout; closing the connection");
        }
    }
}

/// An established session sent nothing for the idle timeout and was closed.
#[derive(Debug)]
pub struct SessionIdle<'a> {
    pub agent_id: &'a str,
    pub remote: SocketAddr,
    pub after: Duration,
}

impl InternalEvent<Telemetry> for SessionIdle<'_> {
    const NAME: &'static str = "session_idle";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::IdleTimeouts, 1);
        if let Some(suppressed) = t.may_log("idle") {
            warn!(agent_id = self.agent_id, remote = %self.remote, after = ?self.after, suppressed, "no heartbeat or batch within the idle timeout; closing the connection");
        }
    }
}

/// What was wrong with a frame that closed its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRejection {
    /// The frame could not be decoded, or its length prefix exceeded the limit.
    Malformed,
    /// A well-formed message arrived where the protocol does not allow it.
    Unexpected,
}

/// A frame broke the protocol; the connection is closed with the matching code.
#[derive(Debug)]
pub struct FrameRejected<'a> {
    pub agent_id: &'a str,
    pub remote: SocketAddr,
    pub rejection: FrameRejection,
    pub reason: &'a str,
}

impl InternalEvent<Telemetry> for FrameRejected<'_> {
    const NAME: &'static str = "frame_rejected";

    fn emit(self, t: &Telemetry) {
        let (counter, key, sentence) = match self.rejection {
            FrameRejection::Malformed => (
                Counter::FramesMalformed,
                "malformed frame",
                "malformed frame; closing the connection",
            ),
            FrameRejection::Unexpected => (
                Counter::ProtocolViolations,
                "protocol violation",
                "protocol violation; closing the connection",
            ),
        };
        t.add(counter, 1);
        if let Some(suppressed) = t.may_log(key) {
            warn!(agent_id = self.agent_id, remote = %self.remote, reason = self.reason, suppressed, "{sentence}");
        }
    }
}

/// A heartbeat arrived on an established session.
#[derive(Debug)]
pub struct HeartbeatReceived<'a> {
    pub agent_id: &'a str,
    /// The agent's clock minus ours at receipt (positive: the agent is ahead).
    pub skew: i64,
}

impl InternalEvent<Telemetry> for HeartbeatReceived<'_> {
    const NAME: &'static str = "heartbeat_received";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::Heartbeats, 1);
        debug!(
            agent_id = self.agent_id,
            skew_ms = self.skew / 1_000_000,
            "heartbeat"
        );
    }
}

/// A batch was stored for the first time and acknowledged.
#[derive(Debug)]
pub struct BatchCommitted<'a> {
    pub agent_id: &'a str,
    pub seq: u64,
    pub events: usize,
}

impl InternalEvent<Telemetry> for BatchCommitted<'_> {
    const NAME: &'static str = "batch_committed";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::BatchesStored, 1);
        t.add(Counter::EventsStored, self.events as u64);
        debug!(
            agent_id = self.agent_id,
            seq = self.seq,
            events = self.events,
            "batch stored"
        );
    }
}

/// A batch had been stored before; it is acknowledged again and stored once.
#[derive(Debug)]
pub struct BatchDuplicate<'a> {
    pub agent_id: &'a str,
    pub seq: u64,
}

impl InternalEvent<Telemetry> for BatchDuplicate<'_> {
    const NAME: &'static str = "batch_duplicate";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::BatchesDuplicate, 1);
        debug!(
            agent_id = self.agent_id,
            seq = self.seq,
            "batch stored before; acknowledged again"
        );
    }
}

/// A batch was answered with a Reject: invalid content (for good) or beyond the in-flight limit
/// (retryable).
#[derive(Debug)]
pub struct BatchRejected<'a> {
    pub agent_id: &'a str,
    pub seq: u64,
    pub code: RejectCode,
    pub reason: &'a str,
}

impl InternalEvent<Telemetry> for BatchRejected<'_> {
    const NAME: &'static str = "batch_rejected";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::BatchesRejected, 1);
        if let Some(suppressed) = t.may_log("invalid batch") {
            warn!(agent_id = self.agent_id, seq = self.seq, code = ?self.code, reason = self.reason, suppressed, "rejected a batch");
        }
    }
}

/// What the store failed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreWork {
    /// Commit batch `seq`; the agent is told to retry.
    Batch { seq: u64 },
    /// Record the agent's Hello; the agent is told to come back later.
    Hello,
    /// Record a heartbeat.
    Heartbeat,
    /// Record the end of the agent's connection.
    Disconnect,
}

/// The store failed a session's request.
#[derive(Debug)]
pub struct StoreFailed<'a> {
    pub agent_id: &'a str,
    pub work: StoreWork,
    pub error: &'a str,
}

impl InternalEvent<Telemetry> for StoreFailed<'_> {
    const NAME: &'static str = "store_failed";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::StoreFailures, 1);
        let Some(suppressed) = t.may_log("store") else {
            return;
        };
        let (agent_id, error) = (self.agent_id, self.error);
        match self.work {
            StoreWork::Batch { seq } => {
                warn!(
                    agent_id,
                    seq, error, suppressed, "cannot store a batch; the agent will retry"
                );
            }
            StoreWork::Hello => {
                warn!(
                    agent_id,
                    error, suppressed, "cannot record the agent's Hello; the agent will retry"
                );
            }
            StoreWork::Heartbeat => {
                warn!(agent_id, error, suppressed, "cannot record a heartbeat");
            }
            StoreWork::Disconnect => {
                warn!(agent_id, error, suppressed, "cannot record the disconnect");
            }
        }
    }
}

/// A newer connection of the same agent took over; this one is closed.
#[derive(Debug)]
pub struct ConnectionReplaced<'a> {
    pub agent_id: &'a str,
    pub remote: SocketAddr,
}

impl InternalEvent<Telemetry> for ConnectionReplaced<'_> {
    const NAME: &'static str = "connection_replaced";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::ConnectionsReplaced, 1);
        warn!(
            agent_id = self.agent_id,
            remote = %self.remote,
            "a new connection replaces an existing one for this agent"
        );
    }
}

/// A connected agent's certificate is now revoked; its connection is closed.
#[derive(Debug)]
pub struct ConnectionRevoked<'a> {
    pub agent_id: &'a str,
    pub serial: &'a str,
}

impl InternalEvent<Telemetry> for ConnectionRevoked<'_> {
    const NAME: &'static str = "connection_revoked";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::ConnectionsRevoked, 1);
        warn!(
            agent_id = self.agent_id,
            serial = self.serial,
            "certificate revoked; closing the agent's connection"
        );
    }
}

/// The TLS files were read again; new connections use them.
#[derive(Debug)]
pub struct TlsReloaded {
    /// Serials on the revocation list now.
    pub revoked: usize,
}

impl InternalEvent<Telemetry> for TlsReloaded {
    const NAME: &'static str = "tls_reloaded";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::TlsReloads, 1);
        info!(revoked = self.revoked, "TLS files reloaded");
    }
}

/// The TLS files could not be reloaded; the previous ones stay in use.
#[derive(Debug)]
pub struct TlsReloadFailed<'a> {
    pub error: &'a str,
}

impl InternalEvent<Telemetry> for TlsReloadFailed<'_> {
    const NAME: &'static str = "tls_reload_failed";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::TlsReloadFailures, 1);
        warn!(
            error = self.error,
            "cannot reload the TLS files; keeping the previous ones"
        );
    }
}

/// What an agent asked a certificate for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateRequest {
    /// Enrollment, with a token, on an enrollment connection.
    Enroll,
    /// Renewal, on the agent's authenticated connection.
    Renew,
}

/// An enrollment or renewal was answered: a certificate, or a refusal (also in the audit log).
#[derive(Debug)]
pub struct CertificateAnswered<'a> {
    pub request: CertificateRequest,
    pub remote: SocketAddr,
    /// As the agent asked (for an enrollment, not yet validated).
    pub agent_id: &'a str,
    /// `None`: issued, valid until `not_after_ns`.
    pub refusal: Option<&'a crate::enroll::Refusal>,
    pub not_after_ns: i64,
}

impl<'a> CertificateAnswered<'a> {
    /// The event of `outcome`, the answer to `request` from `agent_id` at `remote`.
    pub fn new(
        request: CertificateRequest,
        remote: SocketAddr,
        agent_id: &'a str,
        outcome: &'a crate::enroll::Outcome,
    ) -> Self {
        CertificateAnswered {
            request,
            remote,
            agent_id,
            refusal: outcome.as_ref().err(),
            not_after_ns: outcome.as_ref().map_or(0, |i| i.not_after_ns),
        }
    }
}

impl InternalEvent<Telemetry> for CertificateAnswered<'_> {
    const NAME: &'static str = "certificate_answered";

    fn emit(self, t: &Telemetry) {
        // The id is the peer's to choose: quoted and cut short.
        let agent_id: String = format!("{:?}", self.agent_id).chars().take(140).collect();
        let remote = self.remote;
        let what = match self.request {
            CertificateRequest::Enroll => "enrollment",
            CertificateRequest::Renew => "renewal",
        };
        match (self.request, self.refusal) {
            (request, None) => {
                t.add(
                    match request {
                        CertificateRequest::Enroll => Counter::EnrollmentsIssued,
                        CertificateRequest::Renew => Counter::RenewalsIssued,
                    },
                    1,
                );
                let not_after = outpost_common::time::format_rfc3339(self.not_after_ns);
                info!(agent_id, %remote, what, %not_after, "agent certificate issued");
            }
            (request, Some(refusal)) => {
                t.add(
                    match request {
                        CertificateRequest::Enroll => Counter::EnrollmentsRefused,
                        CertificateRequest::Renew => Counter::RenewalsRefused,
                    },
                    1,
                );
                if let Some(suppressed) = t.may_log("certificate refused") {
                    warn!(agent_id, %remote, what, refusal = refusal.kind(), reason = %refusal, suppressed, "agent certificate refused");
                }
            }
        }
    }
}

/// An enrollment connection sent no valid EnrollRequest in time; it is closed, never admitted.
#[derive(Debug)]
pub struct EnrollmentMalformed<'a> {
    pub remote: SocketAddr,
    pub reason: &'a str,
}

impl InternalEvent<Telemetry> for EnrollmentMalformed<'_> {
    const NAME: &'static str = "enrollment_malformed";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::EnrollmentsMalformed, 1);
        if let Some(suppressed) = t.may_log("enrollment malformed") {
            warn!(remote = %self.remote, reason = self.reason, suppressed, "closed an enrollment connection: no valid request");
        }
    }
}

/// What ingest has done since the start: logged every minute when something changed, and at
/// shutdown.
#[derive(Debug)]
pub struct IngestSummary {
    pub counters: Counters,
    /// Agents with an established session now.
    pub sessions: usize,
    /// Breaks found in agents' file-integrity trails since the aggregator started (each also
    /// logged as a warning by the store, and stored).
    pub fim_trail_breaks: u64,
    /// The last summary, written at shutdown.
    pub last: bool,
}

impl InternalEvent<Telemetry> for IngestSummary {
    const NAME: &'static str = "ingest_summary";

    fn emit(self, _: &Telemetry) {
        let c = self.counters;
        info!(
            sessions = self.sessions,
            connected = c.agents_connected,
            disconnected = c.agents_disconnected,
            refused = c.connections_refused,
            shed = c.connections_shed,
            replaced = c.connections_replaced,
            revoked = c.connections_revoked,
            hellos_rejected = c.hellos_rejected,
            hello_timeouts = c.hello_timeouts,
            idle_timeouts = c.idle_timeouts,
            frames_malformed = c.frames_malformed,
            protocol_violations = c.protocol_violations,
            heartbeats = c.heartbeats,
            batches_stored = c.batches_stored,
            events_stored = c.events_stored,
            batches_duplicate = c.batches_duplicate,
            batches_rejected = c.batches_rejected,
            store_failures = c.store_failures,
            tls_reloads = c.tls_reloads,
            tls_reload_failures = c.tls_reload_failures,
            enrollments_issued = c.enrollments_issued,
            enrollments_refused = c.enrollments_refused,
            enrollments_malformed = c.enrollments_malformed,
            renewals_issued = c.renewals_issued,
            renewals_refused = c.renewals_refused,
            fim_trail_breaks = self.fim_trail_breaks,
            "{}",
            if self.last {
                "ingest summary at shutdown"
            } else {
                "ingest summary"
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_update_their_counters_and_are_recorded_by_name() {
        let t = Telemetry::recording();
        t.emit(BatchCommitted {
            agent_id: "a",
            seq: 1,
            events: 7,
        });
        t.emit(BatchDuplicate {
            agent_id: "a",
            seq: 1,
        });
        t.emit(FrameRejected {
            agent_id: "a",
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
            rejection: FrameRejection::Malformed,
            reason: "x",
        });
        t.emit(FrameRejected {
            agent_id: "a",
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
            rejection: FrameRejection::Unexpected,
            reason: "x",
        });
        let c = t.counters();
        assert_eq!(
            (c.batches_stored, c.events_stored, c.batches_duplicate),
            (1, 7, 1)
        );
        assert_eq!((c.frames_malformed, c.protocol_violations), (1, 1));
        assert_eq!(
            t.recorded(),
            [
                BatchCommitted::NAME,
                BatchDuplicate::NAME,
                FrameRejected::NAME,
                FrameRejected::NAME
            ]
        );
    }

    #[test]
    fn the_summary_is_let_through_only_when_a_counter_moved() {
        let t = Telemetry::new();
        let mut gate = SummaryGate::default();
        assert!(!gate.changed(t.counters()), "nothing happened yet");
        t.emit(TlsReloaded { revoked: 0 });
        assert!(gate.changed(t.counters()));
        assert!(
            !gate.changed(t.counters()),
            "no change since the last summary"
        );
        t.emit(TlsReloadFailed { error: "e" });
        assert!(gate.changed(t.counters()));
    }

    #[test]
    fn log_limiter_suppresses_and_counts() {
        let l = LogLimiter::default();
        for _ in 0..20 {
            assert_eq!(l.check("k"), Some(0));
        }
        assert_eq!(l.check("k"), None);
        assert_eq!(l.check("k"), None);
        assert_eq!(l.check("other"), Some(0));
    }
}
