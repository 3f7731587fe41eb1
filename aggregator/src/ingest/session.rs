//! One agent connection's protocol, as a state machine without I/O.
//!
//! ```text
//! AwaitingHello ──Hello──▶ Registering ──Hello recorded──▶ Established ──▶ Closed
//!       │                      │                               │
//!       └── timeout, bad or ───┴──── store failure ────────────┴── violation, idle, replaced,
//!           early frames                                            revoked, connection lost
//! ```
//!
//! The driver (`ingest::connection`) owns the sockets and the timer. It feeds the machine what
//! happened through the `handle_*` methods, each with the current time, and after every call
//! carries out what the machine asks, in this order:
//!
//! 1. [`Session::poll_transmit`]: messages to write (Welcome and Rejects on the control stream,
//!    Ack or Reject on a batch stream, which is then finished);
//! 2. [`Session::poll_job`]: store work (commit a batch, record Hello, heartbeat or disconnect,
//!    issue a renewed certificate), whose outcome comes back through
//!    [`Session::handle_committed`], [`Session::handle_recorded`] and
//!    [`Session::handle_renewed`];
//! 3. [`Session::poll_close`]: close the connection with this code and reason;
//!
//! and sleeps until [`Session::poll_timeout`], then calls [`Session::handle_timeout`].
//!
//! Invariants: at most `max_in_flight` batches wait for the store; at most one registry update
//! is with the store at a time (heartbeats arriving meanwhile are coalesced, the latest wins), so
//! updates apply in order and a chatty agent cannot queue work without bound; a disconnect is
//! recorded only for a session whose Hello was recorded and which was not replaced (the newer
//! connection is the agent's current state); at most one renewal is with the enroller at a
//! time, and a second one asked meanwhile is refused on its own stream; once closed, the
//! machine ignores every input.
//!
//! A stream other than the control stream carries one request and gets one answer: a batch
//! (Ack or Reject), or a certificate renewal ([`Message::RenewRequest`], answered with
//! [`Message::RenewResponse`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use outpost_common::enroll::{RenewRequest, RenewResponse};
use outpost_common::wire::{
    self, Ack, Batch, Hello, Message, Reject, RejectCode, Welcome, WireError, close_code,
};

use super::IngestConfig;
use super::validation::{validate_batch, validate_hello};
use crate::enroll::{Outcome, Refusal};
use crate::internal_events::{
    AgentConnected, AgentDisconnected, BatchCommitted, BatchDuplicate, BatchRejected,
    CertificateAnswered, CertificateRequest, ConnectionReplaced, FrameRejected, FrameRejection,
    HeartbeatReceived, HelloRejected, HelloRejection, HelloTimedOut, SessionIdle, StoreFailed,
    StoreWork, Telemetry,
};
use crate::store::{CommitOutcome, IncomingBatch, PackedEvents, RegistryUpdate, StoreError};

/// The current time, on the monotonic clock (deadlines) and the wall clock (what is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    /// Nanoseconds since the Unix epoch.
    pub unix_ns: i64,
}

/// A stream other than the control stream (a batch or a renewal), numbered by the driver in
/// the order the agent opened them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchStream(pub u64);

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The connection's first stream: Hello, Welcome, heartbeats.
    Control,
    /// A stream carrying one batch and its answer.
    Batch(BatchStream),
}

/// A message to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    pub stream: Stream,
    pub message: Message,
    /// Finish the stream after the message: nothing more will be written on it.
    pub finish: bool,
}

/// Work for the store writer.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreJob {
    /// Commit this batch; answer with [`Session::handle_committed`] for `stream`.
    Commit {
        stream: BatchStream,
        batch: IncomingBatch,
    },
    /// Apply this registry update; answer with [`Session::handle_recorded`], except for
    /// [`RegistryUpdate::Disconnect`], which comes last and needs no answer.
    Record(Box<RegistryUpdate>),
    /// Issue a certificate for this renewal of the session's agent (refused if the
    /// connection's certificate is revoked by then); answer with [`Session::handle_renewed`]
    /// for `stream`.
    Renew {
        stream: BatchStream,
        request: RenewRequest,
    },
}

/// Close the connection with this application error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u32,
    pub reason: String,
}

#[derive(Debug)]
enum State {
    /// Waiting for the Hello on the control stream, until the handshake deadline.
    AwaitingHello,
    /// The Hello is valid and with the store; Welcome follows once it is recorded.
    Registering { hello: Box<Hello> },
    /// Welcome sent: heartbeats on the control stream, one batch per other stream.
    Established { spool_id: u64 },
    /// Finished; outputs queued before the close are still to be carried out.
    Closed,
}

/// A batch handed to the store, waiting for its outcome.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    events: usize,
}

/// The protocol state of one agent connection. See the module documentation for the call order.
#[derive(Debug)]
pub struct Session {
    agent_id: String,
    remote: SocketAddr,
    config: Arc<IngestConfig>,
    telemetry: Arc<Telemetry>,
    state: State,
    hello_deadline: Instant,
    /// When an established session that stays silent is closed.
    idle_deadline: Option<Instant>,
    in_flight: HashMap<BatchStream, InFlight>,
    /// A registry update is with the store.
    recording: bool,
    /// The latest heartbeat that arrived while another update was with the store.
    queued_heartbeat: Option<RegistryUpdate>,
    /// The Hello was handed to the store: the registry may say the agent is connected.
    registered: bool,
    /// The stream of the renewal with the enroller.
    renewing: Option<BatchStream>,
    transmits: VecDeque<Transmit>,
    jobs: VecDeque<StoreJob>,
    close: Option<Close>,
}

impl Session {
    /// A session for a connection whose certificate names `agent_id`, accepted at `now`.
    pub fn new(
        now: Now,
        agent_id: String,
        remote: SocketAddr,
        config: Arc<IngestConfig>,
        telemetry: Arc<Telemetry>,
    ) -> Session {
        Session {
            agent_id,
            remote,
            hello_deadline: now.instant + config.handshake_timeout,
            config,
            telemetry,
            state: State::AwaitingHello,
            idle_deadline: None,
            in_flight: HashMap::new(),
            recording: false,
            queued_heartbeat: None,
            registered: false,
            renewing: None,
            transmits: VecDeque::new(),
            jobs: VecDeque::new(),
            close: None,
        }
    }

    /// The agent this connection belongs to, from its certificate.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Whether Welcome has been sent and the session not closed since.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Whether the session is over; the driver carries out the outputs left and stops.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// A frame read from the control stream, or why none could be read.
    pub fn handle_control(&mut self, now: Now, frame: Result<Message, WireError>) {
        let message = match frame {
            Ok(m) => m,
            Err(e) => return self.control_failed(now, &e),
        };
        match (&self.state, message) {
            (State::Closed, _) => {}
            (State::AwaitingHello, Message::Hello(hello)) => self.hello(now, hello),
            (State::AwaitingHello, other) => {
                let reason = format!("expected Hello, got {}", other.name());
                self.violation(now, &reason);
            }
            (State::Registering { .. }, other) => {
                let reason = format!("unexpected {} before Welcome", other.name());
                self.violation(now, &reason);
            }
            (State::Established { .. }, Message::Heartbeat(hb)) => {
                self.touch(now);
                self.telemetry.emit(HeartbeatReceived {
                    agent_id: &self.agent_id,
                    skew: hb.sent_ns.saturating_sub(now.unix_ns),
                });
                self.record(RegistryUpdate::Heartbeat {
                    agent_id: self.agent_id.clone(),
                    status: hb.status,
                    now_ns: now.unix_ns,
                });
            }
            (State::Established { .. }, other) => {
                let reason = format!("unexpected {} on the control stream", other.name());
                self.violation(now, &reason);
            }
        }
    }

    /// The one frame read from batch stream `stream`, or why none could be read.
    pub fn handle_batch(
        &mut self,
        now: Now,
        stream: BatchStream,
        frame: Result<Message, WireError>,
    ) {
        if self.is_closed() {
            return;
        }
        let message = match frame {
            Ok(m) => m,
            // The stream was reset or the connection is going away; the driver reports the
            // latter, and a reset batch is the agent's to resend.
            Err(WireError::Io(_)) => return,
            Err(e) => return self.malformed(now, &e),
        };
        let spool_id = match self.state {
            State::Established { spool_id } => spool_id,
            _ => {
                let reason = format!("{} on a new stream before Welcome", message.name());
                return self.violation(now, &reason);
            }
        };
        match message {
            Message::Batch(batch) => self.batch(now, stream, spool_id, batch, None),
            Message::PackedBatch(packed) => {
                let seq = packed.seq;
                match packed.unpack(self.config.max_frame_bytes) {
                    Ok(batch) => {
                        let events = PackedEvents {
                            codec: packed.codec,
                            raw_bytes: packed.raw_bytes,
                            data: packed.data,
                        };
                        self.batch(now, stream, spool_id, batch, Some(events));
                    }
                    // The frame was read, so the seq is known: the batch is refused, not the
                    // connection.
                    Err(e) => self.refuse(stream, seq, RejectCode::Invalid, &e.to_string()),
                }
            }
            Message::RenewRequest(request) => self.renew(now, stream, request),
            other => {
                let reason = format!("expected Batch or RenewRequest, got {}", other.name());
                self.violation(now, &reason);
            }
        }
    }

    /// The store's outcome for the batch of `stream`.
    pub fn handle_committed(
        &mut self,
        now: Now,
        stream: BatchStream,
        outcome: Result<CommitOutcome, StoreError>,
    ) {
        let Some(InFlight { seq, events }) = self.in_flight.remove(&stream) else {
            return;
        };
        self.touch(now);
        let message = match outcome {
            Ok(CommitOutcome::Stored) => {
                self.telemetry.emit(BatchCommitted {
                    agent_id: &self.agent_id,
                    seq,
                    events,
                });
                Message::Ack(Ack {
                    seq,
                    duplicate: false,
                })
            }
            Ok(CommitOutcome::Duplicate) => {
                self.telemetry.emit(BatchDuplicate {
                    agent_id: &self.agent_id,
                    seq,
                });
                Message::Ack(Ack {
                    seq,
                    duplicate: true,
                })
            }
            Err(e) => {
                self.telemetry.emit(StoreFailed {
                    agent_id: &self.agent_id,
                    work: StoreWork::Batch { seq },
                    error: &e.to_string(),
                });
                Message::Reject(Reject {
                    seq,
                    code: RejectCode::Unavailable,
                    reason: format!("store unavailable: {e}"),
                })
            }
        };
        self.send(Stream::Batch(stream), message, true);
    }

    /// The store's outcome for the registry update last handed out (Hello or heartbeat).
    pub fn handle_recorded(&mut self, now: Now, outcome: Result<(), StoreError>) {
        self.recording = false;
        match (&self.state, outcome) {
            (State::Closed, _) => {}
            (State::Registering { hello }, Ok(())) => {
                let hello = hello.clone();
                self.welcome(now, &hello);
            }
            (State::Registering { .. }, Err(e)) => {
                self.telemetry.emit(StoreFailed {
                    agent_id: &self.agent_id,
                    work: StoreWork::Hello,
                    error: &e.to_string(),
                });
                let reason = "store unavailable; try again later".to_owned();
                self.reject_hello(RejectCode::Unavailable, &reason);
                self.close(now, close_code::NORMAL, reason);
            }
            (_, outcome) => {
                if let Err(e) = outcome {
                    self.telemetry.emit(StoreFailed {
                        agent_id: &self.agent_id,
                        work: StoreWork::Heartbeat,
                        error: &e.to_string(),
                    });
                }
                if let Some(update) = self.queued_heartbeat.take() {
                    self.record(update);
                }
            }
        }
    }

    /// The enroller's answer to the renewal of `stream`.
    pub fn handle_renewed(&mut self, now: Now, stream: BatchStream, outcome: Outcome) {
        if self.renewing != Some(stream) || self.is_closed() {
            return;
        }
        self.renewing = None;
        self.touch(now);
        self.answer_renewal(stream, outcome);
    }

    /// The deadline given by [`Session::poll_timeout`] has come (or passed).
    pub fn handle_timeout(&mut self, now: Now) {
        match self.state {
            State::AwaitingHello if now.instant >= self.hello_deadline => {
                let after = self.config.handshake_timeout;
                self.telemetry.emit(HelloTimedOut {
                    agent_id: &self.agent_id,
                    remote: self.remote,
                    after,
                });
                self.close(
                    now,
                    close_code::HANDSHAKE_TIMEOUT,
                    "no Hello in time".to_owned(),
                );
            }
            State::Established { .. } if self.idle_deadline.is_some_and(|d| now.instant >= d) => {
                let after = self.config.idle_timeout;
                self.telemetry.emit(SessionIdle {
                    agent_id: &self.agent_id,
                    remote: self.remote,
                    after,
                });
                let reason = format!("nothing received for {}", humantime::format_duration(after));
                self.close(now, close_code::NORMAL, reason);
            }
            _ => {}
        }
    }

    /// A newer connection of the same agent took over: close this one, and leave the registry
    /// to the newer.
    pub fn handle_replaced(&mut self, now: Now) {
        if self.is_closed() {
            return;
        }
        self.telemetry.emit(ConnectionReplaced {
            agent_id: &self.agent_id,
            remote: self.remote,
        });
        // The newer connection's Hello is the agent's current state: no disconnect for this one.
        self.registered = false;
        self.close(
            now,
            close_code::REPLACED,
            "replaced by a newer connection".to_owned(),
        );
    }

    /// The agent's certificate was revoked since the connection was admitted.
    pub fn handle_revoked(&mut self, now: Now) {
        if self.is_closed() {
            return;
        }
        self.close(
            now,
            close_code::UNAUTHORIZED,
            "certificate revoked".to_owned(),
        );
    }

    /// The connection is gone (closed by the peer, timed out, or reset).
    pub fn handle_connection_lost(&mut self, now: Now, reason: &str) {
        if self.is_closed() {
            return;
        }
        self.finish(now, reason);
    }

    /// The next message to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next piece of store work.
    pub fn poll_job(&mut self) -> Option<StoreJob> {
        self.jobs.pop_front()
    }

    /// How to close the connection, once the session decided to.
    pub fn poll_close(&mut self) -> Option<Close> {
        self.close.take()
    }

    /// When to call [`Session::handle_timeout`]: the Hello deadline, then the idle deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingHello => Some(self.hello_deadline),
            State::Established { .. } => self.idle_deadline,
            State::Registering { .. } | State::Closed => None,
        }
    }

    fn hello(&mut self, now: Now, hello: Hello) {
        if hello.protocol_version != wire::PROTOCOL_VERSION {
            let reason = format!(
                "protocol version {} is not supported (this aggregator speaks {})",
                hello.protocol_version,
                wire::PROTOCOL_VERSION
            );
            self.telemetry.emit(HelloRejected {
                agent_id: &self.agent_id,
                remote: self.remote,
                rejection: HelloRejection::VersionMismatch,
                reason: &reason,
            });
            self.reject_hello(RejectCode::VersionMismatch, &reason);
            return self.close(now, close_code::VERSION_MISMATCH, reason);
        }
        if let Err(reason) = validate_hello(&hello) {
            self.telemetry.emit(HelloRejected {
                agent_id: &self.agent_id,
                remote: self.remote,
                rejection: HelloRejection::Invalid,
                reason: &reason,
            });
            self.reject_hello(RejectCode::Invalid, &reason);
            return self.close(
                now,
                close_code::UNEXPECTED_MESSAGE,
                format!("invalid Hello: {reason}"),
            );
        }
        self.registered = true;
        self.record(RegistryUpdate::Hello {
            agent_id: self.agent_id.clone(),
            hello: hello.clone(),
            now_ns: now.unix_ns,
        });
        self.state = State::Registering {
            hello: Box::new(hello),
        };
    }

    fn welcome(&mut self, now: Now, hello: &Hello) {
        let cfg = &self.config;
        let welcome = Message::Welcome(Welcome {
            protocol_version: wire::PROTOCOL_VERSION,
            server_version: outpost_common::VERSION.to_owned(),
            max_frame_bytes: cfg.max_frame_bytes,
            max_batch_events: cfg.max_batch_events,
            max_in_flight: cfg.max_in_flight,
            heartbeat_interval_ms: u32::try_from(cfg.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
        });
        self.send(Stream::Control, welcome, false);
        self.state = State::Established {
            spool_id: hello.spool_id,
        };
        self.touch(now);
        self.telemetry.emit(AgentConnected {
            agent_id: &self.agent_id,
            remote: self.remote,
            agent_version: &hello.agent_version,
            hostname: &hello.host.hostname,
            backlog_batches: hello.status.backlog_batches,
        });
    }

    fn batch(
        &mut self,
        now: Now,
        stream: BatchStream,
        spool_id: u64,
        batch: Batch,
        packed: Option<PackedEvents>,
    ) {
        self.touch(now);
        let seq = batch.seq;
        let max = self.config.max_in_flight as usize;
        let refusal = if self.in_flight.len() >= max {
            Some((
                RejectCode::Unavailable,
                format!("more than {max} batches in flight; retry later"),
            ))
        } else {
            validate_batch(&batch, &self.config, now.unix_ns)
                .err()
                .map(|reason| (RejectCode::Invalid, reason))
        };
        if let Some((code, reason)) = refusal {
            return self.refuse(stream, seq, code, &reason);
        }
        let events = batch.events.len();
        self.in_flight.insert(stream, InFlight { seq, events });
        self.jobs.push_back(StoreJob::Commit {
            stream,
            batch: IncomingBatch {
                agent_id: self.agent_id.clone(),
                spool_id,
                seq,
                low_water_seq: batch.low_water_seq,
                received_ns: now.unix_ns,
                events: batch.events,
                packed,
            },
        });
    }

    /// A renewal asked on `stream`: to the enroller, unless one is already there.
    fn renew(&mut self, now: Now, stream: BatchStream, request: RenewRequest) {
        self.touch(now);
        if self.renewing.is_some() {
            return self.answer_renewal(stream, Err(Refusal::RenewalInProgress));
        }
        self.renewing = Some(stream);
        self.jobs.push_back(StoreJob::Renew { stream, request });
    }

    fn answer_renewal(&mut self, stream: BatchStream, outcome: Outcome) {
        self.telemetry.emit(CertificateAnswered::new(
            CertificateRequest::Renew,
            self.remote,
            &self.agent_id,
            &outcome,
        ));
        let response = match outcome {
            Ok(issued) => RenewResponse::Issued(issued),
            Err(refusal) => RenewResponse::Refused {
                reason: refusal.to_string(),
            },
        };
        self.send(
            Stream::Batch(stream),
            Message::RenewResponse(response),
            true,
        );
    }

    /// Answers batch `seq` of `stream` with a refusal.
    fn refuse(&mut self, stream: BatchStream, seq: u64, code: RejectCode, reason: &str) {
        self.telemetry.emit(BatchRejected {
            agent_id: &self.agent_id,
            seq,
            code,
            reason,
        });
        let reject = Message::Reject(Reject {
            seq,
            code,
            reason: reason.to_owned(),
        });
        self.send(Stream::Batch(stream), reject, true);
    }

    /// Hands a registry update to the store, or queues it behind the one already there.
    fn record(&mut self, update: RegistryUpdate) {
        if self.recording {
            self.queued_heartbeat = Some(update);
        } else {
            self.recording = true;
            self.jobs.push_back(StoreJob::Record(Box::new(update)));
        }
    }

    fn reject_hello(&mut self, code: RejectCode, reason: &str) {
        let reject = Message::Reject(Reject {
            seq: 0,
            code,
            reason: reason.to_owned(),
        });
        self.send(Stream::Control, reject, true);
    }

    /// The control stream failed to yield a frame.
    fn control_failed(&mut self, now: Now, e: &WireError) {
        if self.is_closed() {
            return;
        }
        match e {
            WireError::EndOfStream => {
                self.close(now, close_code::NORMAL, "control stream closed".to_owned());
            }
            // The connection is going away, and the driver reports it with the peer's reason; or
            // the agent reset only this stream, and the idle timeout ends a session that hears
            // nothing more.
            WireError::Io(_) => {}
            e => self.malformed(now, e),
        }
    }

    fn malformed(&mut self, now: Now, e: &WireError) {
        let reason = e.to_string();
        self.telemetry.emit(FrameRejected {
            agent_id: &self.agent_id,
            remote: self.remote,
            rejection: FrameRejection::Malformed,
            reason: &reason,
        });
        self.close(now, e.close_code(), reason);
    }

    fn violation(&mut self, now: Now, reason: &str) {
        self.telemetry.emit(FrameRejected {
            agent_id: &self.agent_id,
            remote: self.remote,
            rejection: FrameRejection::Unexpected,
            reason,
        });
        self.close(now, close_code::UNEXPECTED_MESSAGE, reason.to_owned());
    }

    fn send(&mut self, stream: Stream, message: Message, finish: bool) {
        self.transmits.push_back(Transmit {
            stream,
            message,
            finish,
        });
    }

    /// Something arrived from the agent (or the store answered for it): not idle.
    fn touch(&mut self, now: Now) {
        if self.is_established() {
            self.idle_deadline = Some(now.instant + self.config.idle_timeout);
        }
    }

    fn close(&mut self, now: Now, code: u32, reason: String) {
        self.finish(now, &reason);
        self.close = Some(Close { code, reason });
    }

    fn finish(&mut self, now: Now, reason: &str) {
        if self.is_established() {
            self.telemetry.emit(AgentDisconnected {
                agent_id: &self.agent_id,
                remote: self.remote,
                reason,
            });
        }
        if self.registered {
            self.jobs
                .push_back(StoreJob::Record(Box::new(RegistryUpdate::Disconnect {
                    agent_id: self.agent_id.clone(),
                    reason: reason.to_owned(),
                    now_ns: now.unix_ns,
                })));
        }
        self.state = State::Closed;
        self.in_flight.clear();
        self.renewing = None;
        self.queued_heartbeat = None;
        self.idle_deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use outpost_common::event::{AgentStatus, Event, LogRecord};
    use outpost_common::wire::{Heartbeat, PackedBatch};

    use super::*;
    use crate::ingest::sessions::{Admission, ConnectionId, Sessions};
    use crate::ingest::test_config;
    use crate::internal_events::{Counters, InternalEvent};

    const AGENT: &str = "web-1";
    const SPOOL: u64 = 77;
    /// 2027-01-15, as the simulated wall clock's start.
    const START_NS: i64 = 1_800_000_000 * 1_000_000_000;

    /// A session under a simulated clock: time moves only when a test says so.
    struct Sim {
        now: Now,
        session: Session,
        telemetry: Arc<Telemetry>,
    }

    impl Sim {
        fn new() -> Sim {
            Sim::with_config(test_config())
        }

        fn with_config(config: IngestConfig) -> Sim {
            let telemetry = Arc::new(Telemetry::recording());
            let now = Now {
                instant: Instant::now(),
                unix_ns: START_NS,
            };
            let remote = SocketAddr::from(([192, 0, 2, 1], 4433));
            let session = Session::new(
                now,
                AGENT.to_owned(),
                remote,
                Arc::new(config),
                telemetry.clone(),
            );
            Sim {
                now,
                session,
                telemetry,
            }
        }

        /// A session past Hello and Welcome, with its outputs and events so far taken.
        fn established() -> Sim {
            let mut sim = Sim::new();
            sim.control(Message::Hello(hello()));
            sim.jobs();
            sim.session.handle_recorded(sim.now, Ok(()));
            assert!(sim.session.is_established());
            sim.transmits();
            sim
        }

        fn advance(&mut self, by: Duration) {
            self.now.instant += by;
            self.now.unix_ns += i64::try_from(by.as_nanos()).unwrap();
        }

        fn control(&mut self, message: Message) {
            self.session.handle_control(self.now, Ok(message));
        }

        fn batch(&mut self, stream: u64, batch: Batch) {
            self.session
                .handle_batch(self.now, BatchStream(stream), Ok(Message::Batch(batch)));
        }

        fn transmits(&mut self) -> Vec<Transmit> {
            std::iter::from_fn(|| self.session.poll_transmit()).collect()
        }

        fn jobs(&mut self) -> Vec<StoreJob> {
            std::iter::from_fn(|| self.session.poll_job()).collect()
        }

        fn close_code(&mut self) -> Option<u32> {
            self.session.poll_close().map(|c| c.code)
        }

        fn events(&self) -> Vec<&'static str> {
            self.telemetry.recorded()
        }

        fn counters(&self) -> Counters {
            self.telemetry.counters()
        }
    }

    fn hello() -> Hello {
        Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            agent_version: "1.2.3".into(),
            spool_id: SPOOL,
            host: Default::default(),
            status: AgentStatus {
                backlog_batches: 5,
                ..Default::default()
            },
            labels: Vec::new(),
        }
    }

    fn log_batch(seq: u64, events: usize, time_ns: i64) -> Batch {
        let event = Event::Log(LogRecord {
            time_ns,
            source: "synthetic".into(),
            severity: None,
            body: "line".into(),
            attributes: vec![],
        });
        Batch {
            seq,
            low_water_seq: 1,
            created_ns: time_ns,
            events: vec![event; events],
        }
    }

    fn heartbeat(backlog: u64) -> Message {
        Message::Heartbeat(Heartbeat {
            sent_ns: START_NS,
            status: AgentStatus {
                backlog_batches: backlog,
                ..Default::default()
            },
        })
    }

    fn is_disconnect(job: &StoreJob) -> bool {
        matches!(job, StoreJob::Record(u) if matches!(**u, RegistryUpdate::Disconnect { .. }))
    }

    #[test]
    fn hello_is_recorded_then_welcomed_with_the_limits() {
        let mut sim = Sim::new();
        sim.control(Message::Hello(hello()));
        assert_eq!(
            sim.transmits(),
            [],
            "no Welcome before the Hello is recorded"
        );
        assert_eq!(
            sim.jobs(),
            [StoreJob::Record(Box::new(RegistryUpdate::Hello {
                agent_id: AGENT.into(),
                hello: hello(),
                now_ns: START_NS,
            }))]
        );
        assert!(!sim.session.is_established());
        assert_eq!(
            sim.session.poll_timeout(),
            None,
            "the store is slow, not the agent"
        );

        sim.session.handle_recorded(sim.now, Ok(()));
        let config = test_config();
        assert_eq!(
            sim.transmits(),
            [Transmit {
                stream: Stream::Control,
                message: Message::Welcome(Welcome {
                    protocol_version: wire::PROTOCOL_VERSION,
                    server_version: outpost_common::VERSION.to_owned(),
                    max_frame_bytes: config.max_frame_bytes,
                    max_batch_events: config.max_batch_events,
                    max_in_flight: config.max_in_flight,
                    heartbeat_interval_ms: 10_000,
                }),
                finish: false,
            }]
        );
        assert!(sim.session.is_established());
        assert_eq!(sim.close_code(), None);
        assert_eq!(sim.events(), [AgentConnected::NAME]);
        assert_eq!(sim.counters().agents_connected, 1);
    }

    #[test]
    fn a_wrong_protocol_version_is_rejected_and_closed() {
        let mut sim = Sim::new();
        sim.control(Message::Hello(Hello {
            protocol_version: wire::PROTOCOL_VERSION + 1,
            ..hello()
        }));
        let sent = sim.transmits();
        let [
            Transmit {
                stream: Stream::Control,
                message: Message::Reject(reject),
                finish: true,
            },
        ] = &sent[..]
        else {
            panic!("expected one Reject on the control stream, got {sent:?}");
        };
        assert_eq!((reject.seq, reject.code), (0, RejectCode::VersionMismatch));
        assert!(reject.reason.contains("protocol version"), "{reject:?}");
        assert_eq!(sim.close_code(), Some(close_code::VERSION_MISMATCH));
        assert_eq!(sim.jobs(), [], "nothing reaches the registry");
        assert!(sim.session.is_closed());
        assert_eq!(sim.events(), [HelloRejected::NAME]);
        assert_eq!(sim.counters().hellos_rejected, 1);
    }

    #[test]
    fn an_invalid_hello_is_rejected_and_closed() {
        let mut sim = Sim::new();
        let mut bad = hello();
        bad.host.hostname = "h".repeat(10_000);
        sim.control(Message::Hello(bad));
        let sent = sim.transmits();
        assert!(
            matches!(&sent[..], [Transmit { message: Message::Reject(Reject { code: RejectCode::Invalid, reason, .. }), finish: true, .. }] if reason.contains("hostname")),
            "{sent:?}"
        );
        assert_eq!(sim.close_code(), Some(close_code::UNEXPECTED_MESSAGE));
        assert_eq!(sim.jobs(), []);
        assert_eq!(sim.events(), [HelloRejected::NAME]);
    }

    #[test]
    fn a_second_hello_closes_an_established_session_as_a_protocol_violation() {
        let mut sim = Sim::established();
        sim.control(Message::Hello(hello()));
        assert_eq!(sim.close_code(), Some(close_code::UNEXPECTED_MESSAGE));
        assert_eq!(sim.transmits(), []);
        let jobs = sim.jobs();
        assert!(matches!(&jobs[..], [j] if is_disconnect(j)), "{jobs:?}");
        assert_eq!(
            sim.events(),
            [
                AgentConnected::NAME,
                FrameRejected::NAME,
                AgentDisconnected::NAME
            ]
        );
        assert_eq!(sim.counters().protocol_violations, 1);
    }

    #[test]
    fn a_batch_before_hello_closes_the_connection() {
        let mut sim = Sim::new();
        sim.batch(0, log_batch(1, 1, START_NS));
        assert_eq!(sim.close_code(), Some(close_code::UNEXPECTED_MESSAGE));
        assert_eq!(sim.jobs(), [], "nothing stored, no registry entry to close");
        assert_eq!(sim.events(), [FrameRejected::NAME]);

        let mut sim = Sim::new();
        sim.control(Message::Batch(log_batch(1, 1, START_NS)));
        assert_eq!(sim.close_code(), Some(close_code::UNEXPECTED_MESSAGE));

        // Between Hello and Welcome, too.
        let mut sim = Sim::new();
        sim.control(Message::Hello(hello()));
        sim.batch(0, log_batch(1, 1, START_NS));
        assert_eq!(sim.close_code(), Some(close_code::UNEXPECTED_MESSAGE));
        let jobs = sim.jobs();
        assert!(
            matches!(&jobs[..], [StoreJob::Record(h), d] if matches!(**h, RegistryUpdate::Hello { .. }) && is_disconnect(d)),
            "the Hello went to the registry, so the disconnect follows it: {jobs:?}"
        );
    }

    #[test]
    fn a_valid_batch_is_committed_then_acknowledged() {
        let mut sim = Sim::established();
        sim.advance(Duration::from_secs(1));
        sim.batch(3, log_batch(9, 2, START_NS));
        assert_eq!(sim.transmits(), [], "no answer before the store's");
        assert_eq!(
            sim.jobs(),
            [StoreJob::Commit {
                stream: BatchStream(3),
                batch: IncomingBatch {
                    agent_id: AGENT.into(),
                    spool_id: SPOOL,
                    seq: 9,
                    low_water_seq: 1,
                    received_ns: sim.now.unix_ns,
                    events: log_batch(9, 2, START_NS).events,
                    packed: None,
                },
            }]
        );
        sim.session
            .handle_committed(sim.now, BatchStream(3), Ok(CommitOutcome::Stored));
        assert_eq!(
            sim.transmits(),
            [Transmit {
                stream: Stream::Batch(BatchStream(3)),
                message: Message::Ack(Ack {
                    seq: 9,
                    duplicate: false
                }),
                finish: true,
            }]
        );
        assert_eq!(sim.events(), [AgentConnected::NAME, BatchCommitted::NAME]);
        let c = sim.counters();
        assert_eq!((c.batches_stored, c.events_stored), (1, 2));
    }

    #[test]
    fn a_duplicate_batch_is_acknowledged_as_duplicate() {
        let mut sim = Sim::established();
        sim.batch(0, log_batch(4, 1, START_NS));
        sim.jobs();
        sim.session
            .handle_committed(sim.now, BatchStream(0), Ok(CommitOutcome::Duplicate));
        assert_eq!(
            sim.transmits()[0].message,
            Message::Ack(Ack {
                seq: 4,
                duplicate: true
            })
        );
        assert_eq!(sim.events(), [AgentConnected::NAME, BatchDuplicate::NAME]);
        assert_eq!(sim.counters().batches_duplicate, 1);
        assert_eq!(sim.counters().batches_stored, 0);
    }

    #[test]
    fn a_store_failure_is_a_retryable_reject_and_the_session_goes_on() {
        let mut sim = Sim::established();
        sim.batch(0, log_batch(4, 1, START_NS));
        sim.jobs();
        sim.session
            .handle_committed(sim.now, BatchStream(0), Err(StoreError::WriterStopped));
        let sent = sim.transmits();
        let [
            Transmit {
                message: Message::Reject(reject),
                finish: true,
                ..
            },
        ] = &sent[..]
        else {
            panic!("{sent:?}");
        };
        assert_eq!(reject.seq, 4);
        assert!(reject.code.is_retryable(), "{reject:?}");
        assert!(sim.session.is_established());
        assert_eq!(sim.close_code(), None);
        assert_eq!(sim.events(), [AgentConnected::NAME, StoreFailed::NAME]);
        assert_eq!(sim.counters().store_failures, 1);
    }

    #[test]
    fn an_invalid_batch_is_rejected_for_good_without_reaching_the_store() {
        let mut sim = Sim::established();
        // The test configuration allows three events per batch.
        sim.batch(0, log_batch(4, 4, START_NS));
        assert_eq!(sim.jobs(), []);
        let sent = sim.transmits();
        assert!(
            matches!(&sent[..], [Transmit { message: Message::Reject(Reject { seq: 4, code: RejectCode::Invalid, reason }), .. }] if reason.contains("exceed the limit")),
            "{sent:?}"
        );
        assert!(sim.session.is_established());
        assert_eq!(sim.counters().batches_rejected, 1);
    }

    fn packed(batch: &Batch) -> PackedBatch {
        let events = crate::store::testutil::pack(&batch.events).expect("log lines compress");
        PackedBatch {
            seq: batch.seq,
            low_water_seq: batch.low_water_seq,
            created_ns: batch.created_ns,
            codec: events.codec,
            raw_bytes: events.raw_bytes,
            data: events.data,
        }
    }

    #[test]
    fn a_packed_batch_is_committed_as_the_batch_it_stands_for() {
        let mut sim = Sim::established();
        let batch = log_batch(9, 3, START_NS);
        let message = Message::PackedBatch(packed(&batch));
        sim.session
            .handle_batch(sim.now, BatchStream(2), Ok(message));
        let jobs = sim.jobs();
        let [
            StoreJob::Commit {
                stream,
                batch: incoming,
            },
        ] = &jobs[..]
        else {
            panic!("{jobs:?}");
        };
        assert_eq!(*stream, BatchStream(2));
        assert_eq!((incoming.seq, &incoming.events), (9, &batch.events));
        // The store gets the events as they came, compressed, too.
        let kept = incoming
            .packed
            .as_ref()
            .expect("the packed events are handed on");
        assert_eq!(kept.unpack().unwrap(), batch.events);
    }

    #[test]
    fn a_packed_batch_that_does_not_unpack_is_refused_and_the_session_goes_on() {
        let mut sim = Sim::established();
        let good = packed(&log_batch(5, 3, START_NS));
        let limit = sim.session.config.max_frame_bytes;
        let mut damaged = good.clone();
        damaged.data.truncate(damaged.data.len() / 2);
        let huge = PackedBatch {
            seq: 6,
            raw_bytes: limit + 1,
            ..good.clone()
        };
        for (stream, packed) in [(0, damaged), (1, huge)] {
            let seq = packed.seq;
            sim.session.handle_batch(
                sim.now,
                BatchStream(stream),
                Ok(Message::PackedBatch(packed)),
            );
            let sent = sim.transmits();
            assert!(
                matches!(&sent[..], [Transmit { message: Message::Reject(r), .. }] if r.seq == seq && r.code == RejectCode::Invalid),
                "{sent:?}"
            );
        }
        assert_eq!(sim.jobs(), []);
        assert!(sim.session.is_established());
        assert_eq!(sim.counters().batches_rejected, 2);
    }

    #[test]
    fn batches_beyond_the_in_flight_limit_are_refused_until_one_is_answered() {
        let mut sim = Sim::established();
        // The test configuration allows two batches in flight.
        sim.batch(0, log_batch(1, 1, START_NS));
        sim.batch(1, log_batch(2, 1, START_NS));
        assert_eq!(sim.jobs().len(), 2);
        sim.batch(2, log_batch(3, 1, START_NS));
        assert_eq!(sim.jobs(), []);
        let sent = sim.transmits();
        assert!(
            matches!(
                &sent[..],
                [Transmit {
                    stream: Stream::Batch(BatchStream(2)),
                    message: Message::Reject(Reject {
                        seq: 3,
                        code: RejectCode::Unavailable,
                        ..
                    }),
                    finish: true
                }]
            ),
            "{sent:?}"
        );
        sim.session
            .handle_committed(sim.now, BatchStream(0), Ok(CommitOutcome::Stored));
        sim.transmits();
        sim.batch(3, log_batch(3, 1, START_NS));
        assert!(
            matches!(
                &sim.jobs()[..],
                [StoreJob::Commit {
                    stream: BatchStream(3),
                    ..
                }]
            ),
            "room again after an answer"
        );
    }

    #[test]
    fn the_hello_timeout_fires_at_the_handshake_deadline_and_not_before() {
        let mut sim = Sim::new();
        let start = sim.now.instant;
        let deadline = start + test_config().handshake_timeout;
        assert_eq!(sim.session.poll_timeout(), Some(deadline));
        sim.advance(test_config().handshake_timeout - Duration::from_millis(1));
        sim.session.handle_timeout(sim.now);
        assert_eq!(sim.close_code(), None, "1 ms early");
        assert!(!sim.session.is_closed());
        sim.advance(Duration::from_millis(1));
        assert_eq!(sim.now.instant, deadline);
        sim.session.handle_timeout(sim.now);
        assert_eq!(sim.close_code(), Some(close_code::HANDSHAKE_TIMEOUT));
        assert_eq!(sim.session.poll_timeout(), None);
        assert_eq!(sim.jobs(), []);
        assert_eq!(sim.events(), [HelloTimedOut::NAME]);
        assert_eq!(sim.counters().hello_timeouts, 1);
    }

    #[test]
    fn a_session_silent_for_the_idle_timeout_is_closed_and_each_frame_postpones_it() {
        let mut sim = Sim::established();
        let idle = test_config().idle_timeout;
        let first = sim.now.instant + idle;
        assert_eq!(sim.session.poll_timeout(), Some(first));
        sim.advance(idle / 2);
        sim.control(heartbeat(0));
        let second = sim.now.instant + idle;
        assert_eq!(sim.session.poll_timeout(), Some(second));
        sim.advance(first - sim.now.instant);
        sim.session.handle_timeout(sim.now);
        assert!(
            sim.session.is_established(),
            "the heartbeat moved the deadline"
        );
        sim.advance(second - sim.now.instant);
        sim.session.handle_timeout(sim.now);
        assert_eq!(sim.close_code(), Some(close_code::NORMAL));
        let jobs = sim.jobs();
        assert!(
            matches!(jobs.last(), Some(j) if is_disconnect(j)),
            "{jobs:?}"
        );
        assert_eq!(sim.counters().idle_timeouts, 1);
    }

    #[test]
    fn heartbeats_reach_the_registry_one_at_a_time_and_the_latest_wins() {
        let mut sim = Sim::established();
        sim.control(heartbeat(1));
        let jobs = sim.jobs();
        assert!(
            matches!(&jobs[..], [StoreJob::Record(u)] if matches!(&**u, RegistryUpdate::Heartbeat { status, .. } if status.backlog_batches == 1)),
            "{jobs:?}"
        );
        sim.control(heartbeat(2));
        sim.control(heartbeat(3));
        assert_eq!(sim.jobs(), [], "one update with the store at a time");
        sim.session
            .handle_recorded(sim.now, Err(StoreError::WriterStopped));
        let jobs = sim.jobs();
        assert!(
            matches!(&jobs[..], [StoreJob::Record(u)] if matches!(&**u, RegistryUpdate::Heartbeat { status, .. } if status.backlog_batches == 3)),
            "{jobs:?}"
        );
        assert!(
            sim.session.is_established(),
            "a lost heartbeat is not fatal"
        );
        let c = sim.counters();
        assert_eq!((c.heartbeats, c.store_failures), (3, 1));
    }

    #[test]
    fn a_store_failure_on_hello_turns_the_agent_away_for_now() {
        let mut sim = Sim::new();
        sim.control(Message::Hello(hello()));
        sim.jobs();
        sim.session
            .handle_recorded(sim.now, Err(StoreError::WriterStopped));
        let sent = sim.transmits();
        assert!(
            matches!(
                &sent[..],
                [Transmit {
                    message: Message::Reject(Reject {
                        code: RejectCode::Unavailable,
                        ..
                    }),
                    ..
                }]
            ),
            "{sent:?}"
        );
        assert_eq!(sim.close_code(), Some(close_code::NORMAL));
        assert!(!sim.events().contains(&AgentConnected::NAME));
    }

    #[test]
    fn bad_frames_close_with_their_codes() {
        let cases = [
            (
                WireError::Malformed("bad".into()),
                close_code::MALFORMED_FRAME,
            ),
            (
                WireError::FrameTooLarge {
                    len: u64::from(u32::MAX),
                    limit: 1 << 20,
                },
                close_code::FRAME_TOO_LARGE,
            ),
        ];
        for (error, code) in cases {
            let mut sim = Sim::established();
            sim.session
                .handle_batch(sim.now, BatchStream(0), Err(error));
            assert_eq!(sim.close_code(), Some(code));
            assert_eq!(sim.counters().frames_malformed, 1);
        }
        let mut sim = Sim::established();
        let lost = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "lost");
        sim.session
            .handle_control(sim.now, Err(WireError::Io(lost)));
        assert_eq!(
            sim.close_code(),
            None,
            "the driver reports a lost connection"
        );
        assert!(sim.session.is_established());
        sim.session
            .handle_control(sim.now, Err(WireError::EndOfStream));
        assert_eq!(sim.close_code(), Some(close_code::NORMAL));
        let mut sim = Sim::established();
        sim.session
            .handle_control(sim.now, Err(WireError::Malformed("bad".into())));
        assert_eq!(sim.close_code(), Some(close_code::MALFORMED_FRAME));
        let mut sim = Sim::established();
        sim.session.handle_batch(
            sim.now,
            BatchStream(0),
            Ok(Message::Ack(Ack {
                seq: 1,
                duplicate: false,
            })),
        );
        assert_eq!(sim.close_code(), Some(close_code::UNEXPECTED_MESSAGE));
    }

    #[test]
    fn a_lost_connection_records_the_disconnect_and_ignores_what_comes_after() {
        let mut sim = Sim::established();
        sim.batch(0, log_batch(1, 1, START_NS));
        sim.jobs();
        sim.session.handle_connection_lost(sim.now, "timed out");
        assert_eq!(sim.close_code(), None, "nothing left to close");
        assert_eq!(
            sim.jobs(),
            [StoreJob::Record(Box::new(RegistryUpdate::Disconnect {
                agent_id: AGENT.into(),
                reason: "timed out".into(),
                now_ns: sim.now.unix_ns,
            }))]
        );
        // The commit's answer, a frame and a timer arrive late: the session is over.
        sim.session
            .handle_committed(sim.now, BatchStream(0), Ok(CommitOutcome::Stored));
        sim.control(heartbeat(1));
        sim.session.handle_timeout(sim.now);
        assert_eq!(sim.transmits(), []);
        assert_eq!(sim.jobs(), []);
        assert_eq!(sim.close_code(), None);
        assert_eq!(
            sim.events(),
            [AgentConnected::NAME, AgentDisconnected::NAME]
        );
    }

    #[test]
    fn a_revoked_certificate_closes_the_session() {
        let mut sim = Sim::established();
        sim.session.handle_revoked(sim.now);
        assert_eq!(sim.close_code(), Some(close_code::UNAUTHORIZED));
        assert!(sim.jobs().iter().any(is_disconnect));
    }

    #[test]
    fn a_newer_connection_of_the_same_agent_closes_the_older_one() {
        // Two connections of one agent, and the registry of sessions between them; the handle
        // is the index of the session in `sims`.
        let mut sims = [Sim::established(), Sim::established()];
        let mut sessions = Sessions::default();
        assert_eq!(
            sessions.establish(AGENT, ConnectionId(1), vec![1], 0),
            Admission::First
        );
        let Admission::Replaces(older) = sessions.establish(AGENT, ConnectionId(2), vec![1], 1)
        else {
            panic!("the newer connection must replace the older");
        };
        let old = &mut sims[older];
        old.session.handle_replaced(old.now);
        assert_eq!(old.close_code(), Some(close_code::REPLACED));
        assert_eq!(
            old.jobs(),
            [],
            "the newer connection owns the registry entry"
        );
        assert_eq!(
            old.events(),
            [
                AgentConnected::NAME,
                ConnectionReplaced::NAME,
                AgentDisconnected::NAME
            ]
        );
        assert!(!sessions.end(AGENT, ConnectionId(1)));

        let new = &mut sims[1];
        assert!(new.session.is_established());
        assert_eq!(new.close_code(), None);
        new.session.handle_connection_lost(new.now, "closed");
        assert!(new.jobs().iter().any(is_disconnect));
        assert!(
            sessions.end(AGENT, ConnectionId(2)),
            "the newer may record it"
        );
    }

    fn renew_request(key: u8) -> Message {
        Message::RenewRequest(RenewRequest {
            csr_der: vec![key; 8],
        })
    }

    #[test]
    fn one_renewal_at_a_time_goes_to_the_enroller_and_its_answer_finishes_its_stream() {
        let mut sim = Sim::established();
        sim.session
            .handle_batch(sim.now, BatchStream(1), Ok(renew_request(1)));
        let jobs = sim.jobs();
        assert!(
            matches!(
                &jobs[..],
                [StoreJob::Renew {
                    stream: BatchStream(1),
                    ..
                }]
            ),
            "{jobs:?}"
        );
        // A second one meanwhile is refused on its own stream; the session goes on.
        sim.session
            .handle_batch(sim.now, BatchStream(2), Ok(renew_request(2)));
        assert!(sim.jobs().is_empty());
        let t = sim.transmits();
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].stream, t[0].finish),
            (Stream::Batch(BatchStream(2)), true)
        );
        assert!(
            matches!(&t[0].message, Message::RenewResponse(RenewResponse::Refused { reason }) if reason.contains("already in progress")),
            "{:?}",
            t[0].message
        );
        // The enroller's answer goes back on the first stream, and frees the slot.
        sim.session
            .handle_renewed(sim.now, BatchStream(1), Err(Refusal::KeyReplayed));
        let t = sim.transmits();
        assert_eq!(
            (t[0].stream, t[0].finish),
            (Stream::Batch(BatchStream(1)), true)
        );
        assert!(matches!(
            t[0].message,
            Message::RenewResponse(RenewResponse::Refused { .. })
        ));
        sim.session
            .handle_batch(sim.now, BatchStream(3), Ok(renew_request(3)));
        assert_eq!(sim.jobs().len(), 1);
        assert!(sim.session.poll_close().is_none());
        assert_eq!(sim.counters().renewals_refused, 2);
    }

    #[test]
    fn a_renewal_before_welcome_closes_the_connection() {
        let mut sim = Sim::new();
        sim.session
            .handle_batch(sim.now, BatchStream(0), Ok(renew_request(1)));
        assert_eq!(sim.close_code(), Some(close_code::UNEXPECTED_MESSAGE));
        assert!(sim.jobs().is_empty());
    }
}
