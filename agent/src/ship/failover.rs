//! Which aggregator to connect to next, and when: failover between the configured endpoints, as
//! a state machine without I/O. Time is passed in; nothing here resolves a name, opens a socket or
//! sleeps, so tests drive it with a simulated clock.
//!
//! Each configured endpoint ([`Target`]) resolves to one or more addresses, and every address is
//! a *candidate*: a name with three addresses counts as three endpoints. The candidates are the
//! endpoints in their configured order, each one's addresses in the resolver's order, every
//! address once. Failover is lossless because of the spool: the batches one aggregator did not
//! acknowledge are sent again to the next, and the store deduplicates them.
//!
//! # Rules
//!
//! - **Stick to what works.** While a connection lasts the agent stays on its candidate, and a
//!   renewed certificate reconnects to the same one at once.
//! - **Move on** to the next candidate, at once, when an attempt fails (connect, TLS handshake,
//!   Hello/Welcome, a refusal) or an established connection is lost (which includes the
//!   aggregator refusing batches as unavailable).
//! - **Rotate through all before backing off.** Once every candidate has failed in turn (a
//!   *round*), wait for the backoff's next delay (`ship.reconnect_min` doubling with jitter up to
//!   `ship.reconnect_max`), resolve the names again, and go on where the round ended. Once an
//!   established connection is lost, the backoff starts again from its smallest delay.
//! - **Never hammer one dead address.** An address is tried at most once per round and rounds are
//!   a backoff delay apart. A connection lost within `ship.reconnect_max` (the longest delay) of
//!   its start does not count as having worked for the round, so aggregators that accept
//!   connections and then drop them are not cycled through without pause either.
//! - **No flapping back.** After failing over, the agent stays on the new candidate; the rotation
//!   only ever moves forward from the candidate that failed, never back to the first one because
//!   it is first.
//! - **Trouble of the agent's own** (its spool) is no endpoint's fault: the same candidate is
//!   tried again after the backoff's delay.
//!
//! A *failover* is a connection established to another candidate than the one the agent was last
//! connected to (before any connection: than the first one it tried). It is reported once, as
//! [`FailoverEvent::FailedOver`].
//!
//! # Call order
//!
//! 1. [`Failover::poll_action`] with the current time says what to do:
//!    - [`Step::Resolve`]: resolve every target, in order, and hand the results to
//!      [`Failover::handle_resolved`].
//!    - [`Step::Connect`]: connect to the candidate; once its Welcome arrived, call
//!      [`Failover::handle_established`]; when the attempt or the connection ends, call
//!      [`Failover::handle_ended`] with how it ended.
//!    - [`Step::Wait`]: sleep until then, and poll again.
//! 2. After each `handle_*`, report every event from [`Failover::poll_event`].
//!
//! `poll_action` returns `None` only while an attempt or connection is under way, that is
//! between a [`Step::Connect`] and its [`Failover::handle_ended`].

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use outpost_common::config::QuicEndpoint;

/// A configured aggregator endpoint: where to connect, and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub endpoint: QuicEndpoint,
    /// The name verified on the aggregator's certificate.
    pub server_name: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.endpoint.fmt(f)
    }
}

/// One address of one target: what a connection attempt is made to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The index of its target, in the configured order.
    pub target: usize,
    /// The endpoint as configured.
    pub endpoint: QuicEndpoint,
    pub addr: SocketAddr,
    /// The name verified on the aggregator's certificate.
    pub server_name: String,
}

impl Candidate {
    fn same_as(&self, other: &Candidate) -> bool {
        self.target == other.target && self.addr == other.addr
    }
}

/// The endpoint as configured, with the address when the host is a name.
impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.endpoint.host_is_ip {
            self.endpoint.fmt(f)
        } else {
            write!(f, "{} ({})", self.endpoint, self.addr)
        }
    }
}

/// What to do next, from [`Failover::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Resolve every target and hand the results to [`Failover::handle_resolved`].
    Resolve,
    /// Connect to this candidate.
    Connect(Candidate),
    /// Nothing to do before this instant.
    Wait(Instant),
}

/// How an attempt or a connection ended, for [`Failover::handle_ended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The endpoint failed: no connection, no Welcome, a refusal, or an established connection
    /// lost.
    Failed,
    /// The agent's own trouble (its spool), no fault of the endpoint.
    Local,
    /// The certificate was renewed on the connection: reconnect with it, to the same candidate.
    Renewed,
}

/// Something to report, from [`Failover::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverEvent {
    /// A connection is established to another candidate than the one the agent was last
    /// connected to (or, before any, the first one it tried).
    FailedOver { from: Candidate, to: Candidate },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Resolve the targets before the next attempt.
    Unresolved,
    /// A [`Step::Resolve`] awaits its [`Failover::handle_resolved`].
    Resolving,
    /// Try `candidates[next]`.
    Ready,
    /// An attempt at `candidates[next]` is under way.
    Attempting,
    /// Connected to `candidates[next]` since then.
    Connected { since: Instant },
    /// Backing off until then; then resolve again.
    Waiting { until: Instant },
}

/// The delays between rounds: from `min`, doubling up to `max`; with jitter, each is up to
/// twice as long, at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    pub jitter: bool,
}

impl Backoff {
    fn build(&self) -> ExponentialBackoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times();
        if self.jitter {
            builder.with_jitter().build()
        } else {
            builder.build()
        }
    }
}

/// Where to connect next. See the module documentation for the rules and the call order.
#[derive(Debug)]
pub struct Failover {
    targets: Vec<Target>,
    config: Backoff,
    backoff: ExponentialBackoff,
    candidates: Vec<Candidate>,
    /// The candidate tried next, being tried, or connected: an index into `candidates`, valid
    /// whenever `candidates` is not empty.
    next: usize,
    /// Candidates that failed in turn since the round began.
    failed: usize,
    state: State,
    /// The candidate the agent was last connected to; before any connection, the first tried.
    home: Option<Candidate>,
    events: VecDeque<FailoverEvent>,
}

impl Failover {
    /// Failover between `targets` (at least one, in the configured order), backing off between
    /// rounds with delays from `backoff`. A connection lost within `backoff.max` of its start
    /// does not count as having worked, for the round: it did not outlast the longest delay.
    pub fn new(targets: Vec<Target>, backoff: Backoff) -> Self {
        Failover {
            targets,
            backoff: backoff.build(),
            config: backoff,
            candidates: Vec::new(),
            next: 0,
            failed: 0,
            state: State::Unresolved,
            home: None,
            events: VecDeque::new(),
        }
    }

    /// The configured targets, in order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The candidates as last resolved, in the order they are tried.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The candidate being tried or connected to now.
    pub fn current(&self) -> Option<&Candidate> {
        match self.state {
            State::Attempting | State::Connected { .. } => self.candidates.get(self.next),
            _ => None,
        }
    }

    /// What to do at `now`; `None` while an attempt or a connection is under way.
    pub fn poll_action(&mut self, now: Instant) -> Option<Step> {
        match self.state {
            State::Waiting { until } if now < until => Some(Step::Wait(until)),
            State::Waiting { .. } | State::Unresolved | State::Resolving => {
                self.state = State::Resolving;
                Some(Step::Resolve)
            }
            State::Ready => match self.candidates.get(self.next).cloned() {
                Some(candidate) => {
                    self.home.get_or_insert_with(|| candidate.clone());
                    self.state = State::Attempting;
                    Some(Step::Connect(candidate))
                }
                // Ready always has a candidate; were it not so, resolving finds one.
                None => {
                    self.state = State::Resolving;
                    Some(Step::Resolve)
                }
            },
            State::Attempting | State::Connected { .. } => None,
        }
    }

    /// When to poll again, while backing off.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { until } => Some(until),
            _ => None,
        }
    }

    /// The addresses of each target, in the order of [`Failover::targets`]; a target that did
    /// not resolve has its error. With no address at all, the round is over: back off.
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        resolved: Vec<Result<Vec<SocketAddr>, String>>,
    ) {
        if self.state != State::Resolving {
            return;
        }
        let previous = self.candidates.get(self.next).cloned();
        let mut candidates: Vec<Candidate> = Vec::new();
        for (target, result) in resolved.into_iter().enumerate() {
            let (Some(t), Ok(addrs)) = (self.targets.get(target), result) else {
                continue;
            };
            for addr in addrs {
                if candidates.iter().all(|c| c.addr != addr) {
                    candidates.push(Candidate {
                        target,
                        endpoint: t.endpoint.clone(),
                        addr,
                        server_name: t.server_name.clone(),
                    });
                }
            }
        }
        // Go on from the same candidate; if it is gone, from the next target that has one.
        self.next = previous.map_or(0, |p| {
            candidates
                .iter()
                .position(|c| c.same_as(&p))
                .or_else(|| candidates.iter().position(|c| c.target >= p.target))
                .unwrap_or(0)
        });
        self.candidates = candidates;
        if self.candidates.is_empty() {
            self.back_off(now);
        } else {
            self.state = State::Ready;
        }
    }

    /// The candidate [`Step::Connect`] named answered with Welcome: the agent is connected.
    pub fn handle_established(&mut self, now: Instant) {
        if self.state != State::Attempting {
            return;
        }
        self.state = State::Connected { since: now };
        let Some(to) = self.candidates.get(self.next).cloned() else {
            return;
        };
        if let Some(from) = self.home.replace(to.clone())
            && !from.same_as(&to)
        {
            self.events
                .push_back(FailoverEvent::FailedOver { from, to });
        }
    }

    /// The attempt or connection [`Step::Connect`] started ended, `how`.
    pub fn handle_ended(&mut self, now: Instant, how: Ending) {
        let since = match self.state {
            State::Attempting => None,
            State::Connected { since } => Some(since),
            _ => return,
        };
        match how {
            Ending::Renewed => {
                self.backoff = self.config.build();
                self.failed = 0;
                self.state = State::Ready;
            }
            Ending::Local => self.wait(now),
            Ending::Failed => {
                if let Some(since) = since {
                    // The connection worked: the next wait starts from the smallest delay, and
                    // if it worked for a while, the round starts again from here.
                    self.backoff = self.config.build();
                    if now.saturating_duration_since(since) >= self.config.max {
                        self.failed = 0;
                    }
                }
                self.failed += 1;
                self.next = (self.next + 1) % self.candidates.len().max(1);
                if self.failed >= self.candidates.len() {
                    self.back_off(now);
                } else {
                    self.state = State::Ready;
                }
            }
        }
    }

    /// The next thing to report.
    pub fn poll_event(&mut self) -> Option<FailoverEvent> {
        self.events.pop_front()
    }

    /// Ends the round: wait, then resolve again for the next.
    fn back_off(&mut self, now: Instant) {
        self.failed = 0;
        self.wait(now);
    }

    fn wait(&mut self, now: Instant) {
        // Built without a maximum number of attempts, the backoff never runs out; were it to,
        // the longest delay is the one to keep.
        let delay = self.backoff.next().unwrap_or(self.config.max);
        self.state = State::Waiting { until: now + delay };
    }
}

/// The addresses of `addrs` a client socket can reach: all of them from a (dual-stack) IPv6
/// socket, the IPv4 ones from an IPv4 socket.
pub fn reachable(addrs: Vec<SocketAddr>, local_v6: bool) -> Result<Vec<SocketAddr>, String> {
    if local_v6 || addrs.is_empty() {
        return if addrs.is_empty() {
            Err("no addresses".to_owned())
        } else {
            Ok(addrs)
        };
    }
    let v4: Vec<SocketAddr> = addrs.iter().copied().filter(SocketAddr::is_ipv4).collect();
    if v4.is_empty() {
        let listed: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        return Err(format!(
            "only IPv6 addresses ({}), and the agent's socket is IPv4: name an IPv6 endpoint as \
             an address (quic://[…]:4433) to use IPv6",
            listed.join(", ")
        ));
    }
    Ok(v4)
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
