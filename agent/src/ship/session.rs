//! One connection's delivery, as a state machine without I/O: what to fetch, send, acknowledge,
//! split or drop, and when to wake. Time is passed in; nothing here awaits, sleeps or touches a
//! socket or the spool, so tests drive it with a simulated clock and an in-memory peer.
//!
//! # Call order
//!
//! 1. [`Session::new`] once the aggregator's Welcome arrived: the connection is established.
//! 2. Execute every [`Action`] from [`Session::poll_action`], in order, each one finished before
//!    the next (the spool's calls are ordered, so a split lands before the fetch that follows
//!    it), and report every [`SessionEvent`] from [`Session::poll_event`]. An action that
//!    asks for an answer gets it through its `handle_*` call: [`Action::FetchBatches`] through
//!    [`Session::handle_batches`], [`Action::SendBatch`] through exactly one of
//!    [`Session::handle_ack`], [`Session::handle_reject`] or [`Session::handle_stream_failed`].
//! 3. Wait for the first of: a batch stream's answer, new spool data (only while
//!    [`Session::wants_new_data`]), the connection closing ([`Session::handle_connection_lost`]),
//!    shutdown ([`Session::handle_shutdown`]), or the instant [`Session::poll_timeout`] names
//!    ([`Session::handle_timeout`]). Feed it in and go back to 2.
//! 4. Stop after [`Action::Done`] or [`Action::Ended`]; later inputs are ignored.
//!
//! # Invariants
//!
//! - At most `limit` batches are fetched-and-waiting or in flight, where `limit` is the smaller of
//!   the agent's `max_in_flight` and the Welcome's.
//! - A batch leaves the spool only through [`Action::AckSeqs`] (the aggregator acknowledged it) or
//!   [`Action::DropBatch`] (it refused it for good); every other batch stays there, and the next
//!   session, whose cursor starts at 0, sends it again.
//! - Each seq is acknowledged to the spool at most once per session.

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use outpost_common::event::DropReason;
use outpost_common::wire::{self, RejectCode, Welcome, close_code};

use super::SessionError;
use crate::spool::StoredBatch;

/// Bytes a batch's frame adds around its events' payload, at most: the `u32` length prefix (4
/// bytes), then the bincode header of `Message::PackedBatch` (the larger of the two batch
/// messages, see [`wire::PACKED_BATCH_HEADER_BYTES`]). A compressed payload is smaller than the
/// list it stands for, so a batch whose list is within the frame limit less this fits the
/// limit either way.
pub const BATCH_FRAME_OVERHEAD_BYTES: usize =
    wire::LENGTH_PREFIX_BYTES + wire::PACKED_BATCH_HEADER_BYTES;

/// The largest batch the aggregator accepts, from its Welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverLimits {
    /// Events in one batch; at least 1.
    pub max_events: u32,
    /// Bytes of a batch's encoded events before compression (what the aggregator decodes), so
    /// that its whole frame fits the frame limit.
    pub max_payload_bytes: usize,
}

impl ReceiverLimits {
    /// The limits a Welcome announces. A limit of 0 events is taken as 1: a batch holds at least
    /// one event, and splitting to fit 0 would never end.
    pub fn from_welcome(welcome: &Welcome) -> Self {
        ReceiverLimits {
            max_events: welcome.max_batch_events.max(1),
            max_payload_bytes: (welcome.max_frame_bytes as usize)
                .saturating_sub(BATCH_FRAME_OVERHEAD_BYTES),
        }
    }

    /// Whether the aggregator accepts `batch` as it is.
    pub fn admit(&self, batch: &StoredBatch) -> bool {
        batch.events <= self.max_events && batch.raw_bytes <= self.max_payload_bytes
    }
}

/// The agent's side of a session's settings; the aggregator's side comes with its Welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Batches sent and not yet answered, at most; the Welcome may lower it.
    pub max_in_flight: u32,
    /// Time between heartbeats (Hello carried the first status). Above zero.
    pub heartbeat_interval: Duration,
    /// How long shutdown waits for outstanding acknowledgements.
    pub shutdown_grace: Duration,
}

/// What the driver must do next, from [`Session::poll_action`].
#[derive(Debug)]
pub enum Action {
    /// Pack new batches within the receiver's limits (`Spool::set_batch_limits`).
    SetBatchLimits { max_events: usize, max_bytes: usize },
    /// Read the oldest batches with a seq above `after`, at most `max`, and hand them to
    /// [`Session::handle_batches`].
    FetchBatches { after: u64, max: usize },
    /// Send this batch on its own stream; its answer goes to [`Session::handle_ack`],
    /// [`Session::handle_reject`] or [`Session::handle_stream_failed`].
    SendBatch(StoredBatch),
    /// Replace batch `seq` (`events` events, `bytes` payload bytes before compression, more than
    /// the receiver takes)
    /// with batches within `max_events` and `max_bytes`. They get seqs above every existing one,
    /// so a later fetch past the cursor finds them.
    SplitBatch {
        seq: u64,
        events: u32,
        bytes: usize,
        max_events: usize,
        max_bytes: usize,
    },
    /// Delete these acknowledged batches from the spool, in one call: every acknowledgement
    /// received since the last poll.
    AckSeqs(Vec<u64>),
    /// Delete batch `seq` and count its events as dropped for `reason`.
    DropBatch { seq: u64, reason: DropReason },
    /// Send a heartbeat with the agent's status on the control stream; if that fails, the
    /// connection is gone ([`Session::handle_connection_lost`]).
    SendHeartbeat,
    /// Close the connection with this application code and reason.
    Close { code: u32, reason: &'static str },
    /// The session ended on shutdown; the unacknowledged batches stay in the spool.
    Done,
    /// The session ended early; reconnect after a backoff.
    Ended(SessionError),
}

/// Something that happened, for the driver's telemetry, from [`Session::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The aggregator acknowledged batch `seq`, `rtt` after it was sent.
    Acked {
        seq: u64,
        events: u32,
        rtt: Duration,
        duplicate: bool,
    },
    /// The aggregator refused batch `seq` for good; it is dropped.
    Rejected {
        seq: u64,
        code: RejectCode,
        reason: String,
    },
    /// Shutdown began with `in_flight` batches awaiting their acknowledgement.
    Draining { in_flight: usize },
    /// The grace period ended with `in_flight` batches unanswered; they stay in the spool.
    GraceExpired { in_flight: usize },
}

/// Paces sends to a number of events per second, over the instants the session is given.
///
/// A governor rate limiter whose clock moves only when told: each check first moves it to the
/// `now` it is given. Clones share one budget, so a reconnect does not grant a fresh burst.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    limit: Option<Arc<Paced>>,
}

#[derive(Debug)]
struct Paced {
    /// The instant the clock's zero stands for.
    origin: Instant,
    clock: FakeRelativeClock,
    limiter: RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, NoOpMiddleware<Nanos>>,
}

impl Pacer {
    /// A pacer that never delays.
    pub fn unlimited() -> Pacer {
        Pacer::default()
    }

    /// At most `events_per_sec` events per second (0: no limit), with a burst that holds the
    /// largest batch, `max_batch_events`, so a full batch never waits forever.
    pub fn new(origin: Instant, events_per_sec: u32, max_batch_events: u32) -> Pacer {
        let Some(rate) = NonZeroU32::new(events_per_sec) else {
            return Pacer::unlimited();
        };
        let burst = NonZeroU32::new(max_batch_events.max(rate.get())).unwrap_or(rate);
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(
            Quota::per_second(rate).allow_burst(burst),
            clock.clone(),
        );
        Pacer {
            limit: Some(Arc::new(Paced {
                origin,
                clock,
                limiter,
            })),
        }
    }

    /// Takes `events` from the budget at `now`, or returns when they will be there (nothing is
    /// taken then). A batch larger than the burst goes unpaced: it could never pass.
    pub fn check(&self, now: Instant, events: u32) -> Result<(), Instant> {
        let (Some(p), Some(n)) = (&self.limit, NonZeroU32::new(events)) else {
            return Ok(());
        };
        let target = Nanos::from(now.saturating_duration_since(p.origin));
        let at = p.clock.now();
        if target > at {
            p.clock.advance(Duration::from(target.saturating_sub(at)));
        }
        match p.limiter.check_n(n) {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(not_until)) => Err(p.origin + Duration::from(not_until.earliest_possible())),
        }
    }
}

/// A batch sent and not yet answered.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    sent: Instant,
    events: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Shutting down: no new sends; acknowledgements are awaited until `until`.
    Draining {
        until: Instant,
    },
    /// The final action is queued; inputs are ignored.
    Closed,
}

/// One connection's delivery. See the module documentation for the call order.
#[derive(Debug)]
pub struct Session {
    limit: usize,
    receiver: ReceiverLimits,
    heartbeat_interval: Duration,
    shutdown_grace: Duration,
    pacer: Pacer,
    state: State,
    /// Fetch batches with a seq above this: the highest seq fetched so far.
    cursor: u64,
    /// A [`Action::FetchBatches`] awaits its [`Session::handle_batches`].
    fetching: bool,
    /// The last fetch found nothing; wait for new data.
    exhausted: bool,
    /// Fetched and admitted, waiting for the pacer.
    ready: VecDeque<StoredBatch>,
    in_flight: BTreeMap<u64, InFlight>,
    /// Acknowledged since the last [`Action::AckSeqs`].
    acked: Vec<u64>,
    actions: VecDeque<Action>,
    events: VecDeque<SessionEvent>,
    next_heartbeat: Instant,
    /// When the pacer lets the first ready batch go.
    send_at: Option<Instant>,
}

impl Session {
    /// A session on a connection whose `welcome` arrived at `now`. It starts from the oldest
    /// unacknowledged batch in the spool.
    pub fn new(now: Instant, config: &SessionConfig, welcome: &Welcome, pacer: Pacer) -> Session {
        let receiver = ReceiverLimits::from_welcome(welcome);
        let limit = config.max_in_flight.min(welcome.max_in_flight).max(1) as usize;
        let mut session = Session {
            limit,
            receiver,
            heartbeat_interval: config.heartbeat_interval,
            shutdown_grace: config.shutdown_grace,
            pacer,
            state: State::Running,
            cursor: 0,
            fetching: false,
            exhausted: false,
            ready: VecDeque::new(),
            in_flight: BTreeMap::new(),
            acked: Vec::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            next_heartbeat: now + config.heartbeat_interval,
            send_at: None,
        };
        session.actions.push_back(Action::SetBatchLimits {
            max_events: receiver.max_events as usize,
            max_bytes: receiver.max_payload_bytes,
        });
        session.advance(now);
        session
    }

    /// The batches a [`Action::FetchBatches`] read, oldest first.
    pub fn handle_batches(&mut self, now: Instant, batches: Vec<StoredBatch>) {
        self.fetching = false;
        if self.state != State::Running {
            // Shutting down: they stay in the spool.
            return;
        }
        self.exhausted = batches.is_empty();
        for batch in batches {
            self.cursor = self.cursor.max(batch.seq);
            if self.receiver.admit(&batch) {
                self.ready.push_back(batch);
            } else {
                self.actions.push_back(Action::SplitBatch {
                    seq: batch.seq,
                    events: batch.events,
                    bytes: batch.raw_bytes,
                    max_events: self.receiver.max_events as usize,
                    max_bytes: self.receiver.max_payload_bytes,
                });
            }
        }
        self.advance(now);
    }

    /// The aggregator acknowledged batch `seq`. An answer for a seq not in flight is ignored.
    pub fn handle_ack(&mut self, now: Instant, seq: u64, duplicate: bool) {
        if self.state == State::Closed {
            return;
        }
        let Some(sent) = self.in_flight.remove(&seq) else {
            return;
        };
        self.acked.push(seq);
        self.events.push_back(SessionEvent::Acked {
            seq,
            events: sent.events,
            rtt: now.saturating_duration_since(sent.sent),
            duplicate,
        });
        self.advance(now);
    }

    /// The aggregator refused batch `seq`. A retryable refusal ends the session (the aggregator
    /// is unavailable: back off, reconnect, send again); a final one drops the batch and goes on.
    pub fn handle_reject(&mut self, now: Instant, seq: u64, code: RejectCode, reason: String) {
        if self.state == State::Closed || self.in_flight.remove(&seq).is_none() {
            return;
        }
        if code.is_retryable() {
            self.end(
                SessionError::Unavailable(reason),
                Some((close_code::NORMAL, "backing off")),
            );
            return;
        }
        self.events
            .push_back(SessionEvent::Rejected { seq, code, reason });
        self.actions.push_back(Action::DropBatch {
            seq,
            reason: DropReason::RejectedByAggregator,
        });
        self.advance(now);
    }

    /// Batch `seq`'s stream failed before an answer: the connection is broken.
    pub fn handle_stream_failed(&mut self, _now: Instant, seq: u64, reason: &str) {
        if self.state == State::Closed {
            return;
        }
        self.in_flight.remove(&seq);
        self.end(SessionError::Lost(format!("batch {seq}: {reason}")), None);
    }

    /// The spool has batches it did not have at the last fetch.
    pub fn handle_new_data(&mut self, now: Instant) {
        if self.state == State::Running {
            self.exhausted = false;
            self.advance(now);
        }
    }

    /// The agent is shutting down: send nothing more, await the acknowledgements of what is in
    /// flight until the grace period ends, then close.
    pub fn handle_shutdown(&mut self, now: Instant) {
        if self.state != State::Running {
            return;
        }
        // Fetched but not sent: they stay in the spool.
        self.ready.clear();
        self.send_at = None;
        self.events.push_back(SessionEvent::Draining {
            in_flight: self.in_flight.len(),
        });
        self.state = State::Draining {
            until: now + self.shutdown_grace,
        };
        self.advance(now);
    }

    /// The connection closed (or a write on it failed).
    pub fn handle_connection_lost(&mut self, _now: Instant, reason: String) {
        if self.state != State::Closed {
            self.end(SessionError::Lost(reason), None);
        }
    }

    /// Time passed; call at (or after) [`Session::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The next thing to do, in the order it arose, except for acknowledgements: every one since
    /// the last [`Action::AckSeqs`] goes in the next one, handed out once nothing else waits (so
    /// refilling the window comes first and acknowledgements that keep arriving meanwhile share
    /// one spool transaction), and always before the connection is closed or the session ends.
    pub fn poll_action(&mut self) -> Option<Action> {
        let ending = matches!(
            self.actions.front(),
            None | Some(Action::Close { .. } | Action::Done | Action::Ended(_))
        );
        if ending && !self.acked.is_empty() {
            return Some(Action::AckSeqs(std::mem::take(&mut self.acked)));
        }
        self.actions.pop_front()
    }

    /// The next thing to report.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When to call [`Session::handle_timeout`]: the next heartbeat, the pacer letting a batch
    /// go, or the end of the shutdown grace period. `None` once ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Running => Some(match self.send_at {
                Some(at) => at.min(self.next_heartbeat),
                None => self.next_heartbeat,
            }),
            State::Draining { until } => Some(until),
            State::Closed => None,
        }
    }

    /// Whether new spool data would be acted on: the last fetch found nothing.
    pub fn wants_new_data(&self) -> bool {
        self.state == State::Running && self.exhausted && !self.fetching
    }

    /// Batches sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Batches sent or waiting to be sent, at most.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Queues what can be done at `now`.
    fn advance(&mut self, now: Instant) {
        match self.state {
            State::Closed => return,
            State::Draining { until } => {
                if self.in_flight.is_empty() {
                    self.finish();
                } else if now >= until {
                    self.events.push_back(SessionEvent::GraceExpired {
                        in_flight: self.in_flight.len(),
                    });
                    self.finish();
                }
                return;
            }
            State::Running => {}
        }
        if now >= self.next_heartbeat {
            self.actions.push_back(Action::SendHeartbeat);
            self.next_heartbeat = now + self.heartbeat_interval;
        }
        self.send_at = None;
        while self.in_flight.len() < self.limit {
            let Some(batch) = self.ready.front() else {
                break;
            };
            if let Err(at) = self.pacer.check(now, batch.events) {
                self.send_at = Some(at);
                break;
            }
            let Some(batch) = self.ready.pop_front() else {
                break;
            };
            self.in_flight.insert(
                batch.seq,
                InFlight {
                    sent: now,
                    events: batch.events,
                },
            );
            self.actions.push_back(Action::SendBatch(batch));
        }
        let room = self
            .limit
            .saturating_sub(self.in_flight.len() + self.ready.len());
        if room > 0 && !self.fetching && !self.exhausted {
            self.fetching = true;
            self.actions.push_back(Action::FetchBatches {
                after: self.cursor,
                max: room,
            });
        }
    }

    /// Ends on shutdown: close cleanly, then done.
    fn finish(&mut self) {
        self.close(Some((close_code::NORMAL, "agent shutting down")));
        self.actions.push_back(Action::Done);
    }

    /// Ends early with `error`, closing the connection first when `close` says how.
    fn end(&mut self, error: SessionError, close: Option<(u32, &'static str)>) {
        self.close(close);
        self.actions.push_back(Action::Ended(error));
    }

    /// Stops all new work; the spool bookkeeping already queued (acknowledgements, drops,
    /// splits) still happens.
    fn close(&mut self, close: Option<(u32, &'static str)>) {
        self.state = State::Closed;
        self.ready.clear();
        self.send_at = None;
        self.actions.retain(|a| {
            matches!(
                a,
                Action::SetBatchLimits { .. }
                    | Action::SplitBatch { .. }
                    | Action::DropBatch { .. }
            )
        });
        if let Some((code, reason)) = close {
            self.actions.push_back(Action::Close { code, reason });
        }
    }
}
