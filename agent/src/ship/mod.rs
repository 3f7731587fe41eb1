//! The shipper: moves spooled batches to the aggregator over QUIC.
//!
//! One connection at a time. After the TLS handshake the agent sends Hello on a control stream
//! and waits for Welcome: only then is the connection established (a refused certificate can
//! surface late, at the first stream operation). Batches are then sent oldest first, each on its
//! own stream, with at most `max_in_flight` unacknowledged. A batch leaves the spool only when the
//! aggregator acknowledges it; on reconnect every unacknowledged batch is sent again and the
//! aggregator's deduplication makes that harmless.
//!
//! Welcome announces the largest batch the aggregator takes ([`ReceiverLimits`]), which an
//! operator may set below the agent's own batch limits. The spool then packs new batches to fit,
//! and a batch packed earlier that does not fit is split into batches that do before it is sent,
//! so both configurations being valid never costs data.
//!
//! What to send, acknowledge, split or drop, and when, is decided by the pure [`Session`]
//! (`session.rs`), which never awaits; which aggregator endpoint to connect to, when to fail over
//! to the next and when to back off, by the pure [`Failover`] ([`failover`]). [`Shipper::run`]
//! resolves, connects and waits as the failover says, and runs each session's loop: feed it the
//! network's and the spool's results, execute its actions, and sleep until its next timeout.
//!
//! Past two thirds of its certificate's lifetime the agent asks for a new one on the established
//! connection ([`renew`]), installs it with its new key, and reconnects with it.

pub mod failover;
pub mod renew;
mod session;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_common::event::{DropReason, HostFacts};
use outpost_common::wire::{self, Heartbeat, Hello, Message, RejectCode, Welcome, close_code};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::internal_events::{
    BatchAcked, BatchRejected, BatchSent, BatchSplit, CertificateRenewalFailed, CertificateRenewed,
    Connected, Disconnected, DrainStarted, EndpointUnresolved, FailedOver, GraceExpired,
    NotConnected,
};
use crate::spool::{SpoolError, SpoolHandle, SpoolStats, StoredBatch};
use crate::telemetry::Telemetry;

pub use failover::{Backoff, Candidate, Ending, Failover, FailoverEvent, Step, Target};
pub use renew::{Renewal, RenewalConfig};
pub use session::{
    Action, BATCH_FRAME_OVERHEAD_BYTES, Pacer, ReceiverLimits, Session, SessionConfig, SessionEvent,
};

/// What the shipper needs of the spool: its unacknowledged batches, oldest first, and the calls
/// that acknowledge, drop and split them. The agent's SQLite spool ([`SpoolHandle`]) is the one
/// the agent uses; the fleet simulator ships from an in-memory one with the same contract.
///
/// The contract, as [`SpoolHandle`] keeps it: seqs are strictly increasing and never reused; a
/// batch stays until [`Backlog::ack`] or [`Backlog::drop_batch`] removes it; the watch of
/// [`Backlog::subscribe`] moves whenever a batch is added.
pub trait Backlog: Send + Sync + 'static {
    /// Resolves once the backlog has a spool id to announce; `Err` if it never will.
    fn available(&self) -> impl Future<Output = Result<(), SpoolError>> + Send;
    /// The statistics the agent's status reports.
    fn stats(&self) -> SpoolStats;
    /// The highest seq added so far; its current value counts as seen.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// Pack batches added from now on within these limits.
    fn set_batch_limits(
        &self,
        max_events: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<(), SpoolError>> + Send;
    /// At most `limit` of the oldest batches with a seq above `after_seq`.
    fn batches_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredBatch>, SpoolError>> + Send;
    /// Removes acknowledged batches.
    fn ack(&self, seqs: Vec<u64>) -> impl Future<Output = Result<(), SpoolError>> + Send;
    /// Removes batch `seq` and counts its events as dropped for `reason`.
    fn drop_batch(
        &self,
        seq: u64,
        reason: DropReason,
    ) -> impl Future<Output = Result<(), SpoolError>> + Send;
    /// Replaces batch `seq` with batches within the limits; returns their new seqs.
    fn split_batch(
        &self,
        seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<u64>, SpoolError>> + Send;
}

impl<B: Backlog> Backlog for Arc<B> {
    async fn available(&self) -> Result<(), SpoolError> {
        B::available(self).await
    }
    fn stats(&self) -> SpoolStats {
        B::stats(self)
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        B::subscribe(self)
    }
    async fn set_batch_limits(
        &self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(), SpoolError> {
        B::set_batch_limits(self, max_events, max_bytes).await
    }
    async fn batches_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredBatch>, SpoolError> {
        B::batches_after(self, after_seq, limit).await
    }
    async fn ack(&self, seqs: Vec<u64>) -> Result<(), SpoolError> {
        B::ack(self, seqs).await
    }
    async fn drop_batch(&self, seq: u64, reason: DropReason) -> Result<(), SpoolError> {
        B::drop_batch(self, seq, reason).await
    }
    async fn split_batch(
        &self,
        seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<u64>, SpoolError> {
        B::split_batch(self, seq, max_events, max_bytes).await
    }
}

impl Backlog for SpoolHandle {
    async fn available(&self) -> Result<(), SpoolError> {
        SpoolHandle::available(self).await
    }
    fn stats(&self) -> SpoolStats {
        SpoolHandle::stats(self)
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        SpoolHandle::subscribe(self)
    }
    async fn set_batch_limits(
        &self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(), SpoolError> {
        SpoolHandle::set_batch_limits(self, max_events, max_bytes).await
    }
    async fn batches_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredBatch>, SpoolError> {
        SpoolHandle::batches_after(self, after_seq, limit).await
    }
    async fn ack(&self, seqs: Vec<u64>) -> Result<(), SpoolError> {
        SpoolHandle::ack(self, seqs).await
    }
    async fn drop_batch(&self, seq: u64, reason: DropReason) -> Result<(), SpoolError> {
        SpoolHandle::drop_batch(self, seq, reason).await
    }
    async fn split_batch(
        &self,
        seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<u64>, SpoolError> {
        SpoolHandle::split_batch(self, seq, max_events, max_bytes).await
    }
}

/// What the shipper needs to know.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    /// The aggregators to ship to, in the order to try them; at least one.
    pub targets: Vec<Target>,
    pub client: quinn::ClientConfig,
    pub max_in_flight: u32,
    pub heartbeat_interval: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub connect_timeout: Duration,
    /// Events per second at most; 0 for no limit.
    pub catchup_events_per_sec: u32,
    /// The largest batch the spool makes, so the rate limiter's burst can hold one.
    pub max_batch_events: u32,
    /// How long to wait for outstanding acknowledgements when shutting down.
    pub shutdown_grace: Duration,
    /// The agent's labels, sent in Hello.
    pub labels: Vec<(String, String)>,
    /// Renew the certificate before it expires; `None` leaves it alone.
    pub renewal: Option<RenewalConfig>,
}

/// Why a connection attempt or session ended.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error("cannot resolve {endpoint}: {reason}")]
    Resolve { endpoint: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("no Welcome from the aggregator within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("aggregator refused the agent: {0}")]
    Refused(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("aggregator is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the certificate was renewed; reconnecting with it")]
    Renewed,
}

/// The result of one batch stream.
enum Outcome {
    Ack {
        seq: u64,
        duplicate: bool,
    },
    Reject {
        seq: u64,
        code: RejectCode,
        reason: String,
    },
    Failed {
        seq: u64,
        reason: String,
    },
}

/// Ships batches from the spool until shut down.
#[derive(Debug)]
pub struct Shipper<B = SpoolHandle> {
    config: ShipConfig,
    spool: B,
    telemetry: Arc<Telemetry>,
    host: HostFacts,
    /// Shared by every session, so a reconnect does not grant a fresh burst.
    pacer: Pacer,
    /// The client configuration: starts as `config.client`, replaced when the certificate is
    /// renewed.
    client: std::sync::Mutex<quinn::ClientConfig>,
    /// The certificate's renewal schedule, kept across connections.
    renewal: std::sync::Mutex<Option<Renewal>>,
}

impl<B: Backlog> Shipper<B> {
    pub fn new(config: ShipConfig, spool: B, telemetry: Arc<Telemetry>, host: HostFacts) -> Self {
        let pacer = Pacer::new(
            now(),
            config.catchup_events_per_sec,
            config.max_batch_events,
        );
        if let Some(r) = &config.renewal {
            telemetry.record_certificate(r.current.not_after_ns);
        }
        Shipper {
            client: std::sync::Mutex::new(config.client.clone()),
            renewal: std::sync::Mutex::new(config.renewal.clone().map(Renewal::new)),
            config,
            spool,
            telemetry,
            host,
            pacer,
        }
    }

    /// Connects, ships, and reconnects (failing over between the endpoints, with capped
    /// exponential backoff and jitter between rounds), until `shutdown` turns true. Then drains
    /// what is in flight (within the grace period) and closes the connection cleanly.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let endpoint = match bind_endpoint(&self.config.targets) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot open a UDP socket for QUIC; nothing will be shipped");
                return;
            }
        };
        self.run_on(endpoint, shutdown).await;
    }

    /// [`Shipper::run`] from a client endpoint the caller made, which several shippers may share
    /// (the fleet simulator runs thousands of agents over a few sockets).
    ///
    /// Which endpoint to connect to, and when, is decided by the pure [`Failover`]; this loop
    /// resolves names, connects and runs sessions as it says.
    pub async fn run_on(self, endpoint: quinn::Endpoint, mut shutdown: watch::Receiver<bool>) {
        let mut failover = Failover::new(
            self.config.targets.clone(),
            Backoff {
                min: self.config.reconnect_min,
                max: self.config.reconnect_max,
                jitter: true,
            },
        );
        // Why the agent is not connected, reported once the next step is known.
        let mut failure: Option<(String, String)> = None;
        while !*shutdown.borrow() {
            let Some(step) = failover.poll_action(now()) else {
                // Cannot happen: every attempt's end is reported before the next poll. Were it
                // to, counting the attempt as failed keeps the agent trying.
                failover.handle_ended(now(), Ending::Failed);
                continue;
            };
            match step {
                Step::Resolve => {
                    let resolved = tokio::select! {
                        r = resolve(failover.targets(), &endpoint) => r,
                        _ = shutdown.wait_for(|s| *s) => break,
                    };
                    let mut errors = Vec::new();
                    for (target, result) in failover.targets().iter().zip(&resolved) {
                        if let Err(e) = result {
                            let e = SessionError::Resolve {
                                endpoint: target.to_string(),
                                reason: e.clone(),
                            };
                            errors.push(e.to_string());
                        }
                    }
                    failover.handle_resolved(now(), resolved);
                    if failover.candidates().is_empty() {
                        let all: Vec<String> =
                            failover.targets().iter().map(ToString::to_string).collect();
                        failure = Some((all.join(", "), errors.join("; ")));
                    } else {
                        for error in &errors {
                            self.telemetry.emit(EndpointUnresolved { error });
                        }
                    }
                }
                Step::Wait(until) => {
                    if let Some((aggregator, error)) = failure.take() {
                        self.telemetry.emit(NotConnected {
                            aggregator: &aggregator,
                            error: &error,
                            retry_in: until.saturating_duration_since(now()),
                            next: None,
                        });
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(until.into()) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                }
                Step::Connect(candidate) => {
                    if let Some((aggregator, error)) = failure.take() {
                        self.telemetry.emit(NotConnected {
                            aggregator: &aggregator,
                            error: &error,
                            retry_in: Duration::ZERO,
                            next: Some(&candidate.to_string()),
                        });
                    }
                    let result = self
                        .session(&endpoint, &candidate, &mut failover, &mut shutdown)
                        .await;
                    let ending = match result {
                        Ok(()) => break,
                        Err(SessionError::Renewed) => Ending::Renewed,
                        Err(SessionError::Spool(e)) => {
                            failure = Some((candidate.to_string(), e.to_string()));
                            Ending::Local
                        }
                        Err(e) => {
                            failure = Some((candidate.to_string(), e.to_string()));
                            Ending::Failed
                        }
                    };
                    failover.handle_ended(now(), ending);
                }
            }
        }
        // Give the close frame a moment to reach the aggregator.
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }

    async fn connect(
        &self,
        endpoint: &quinn::Endpoint,
        target: &Candidate,
    ) -> Result<quinn::Connection, SessionError> {
        let addr = target.addr;
        let connecting = endpoint
            .connect_with(self.client(), addr, &target.server_name)
            .map_err(|e| SessionError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        match tokio::time::timeout(self.config.connect_timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(SessionError::Connect {
                addr,
                reason: e.to_string(),
            }),
            Err(_) => Err(SessionError::HandshakeTimeout(self.config.connect_timeout)),
        }
    }

    /// One connection's life. Returns Ok(()) only on shutdown.
    async fn session(
        &self,
        endpoint: &quinn::Endpoint,
        target: &Candidate,
        failover: &mut Failover,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        // A spool that could not be opened has no spool id yet: say nothing until it has one.
        tokio::select! {
            r = self.spool.available() => r?,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
        let conn = tokio::select! {
            r = self.connect(endpoint, target) => r?,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        };
        let (mut control_tx, mut control_rx) = conn
            .open_bi()
            .await
            .map_err(|e| SessionError::Refused(e.to_string()))?;
        let stats = self.spool.stats();
        let hello = Message::Hello(Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            agent_version: outpost_common::VERSION.to_owned(),
            spool_id: stats.spool_id,
            host: self.host.clone(),
            status: self.telemetry.status(&stats),
            labels: self.config.labels.clone(),
        });
        let welcome = async {
            wire::write_message(&mut control_tx, &hello)
                .await
                .map_err(|e| SessionError::Refused(e.to_string()))?;
            wire::read_message(&mut control_rx, wire::DEFAULT_MAX_FRAME_BYTES)
                .await
                .map_err(|e| SessionError::Refused(e.to_string()))
        };
        let welcome = match tokio::time::timeout(self.config.connect_timeout, welcome).await {
            Err(_) => {
                conn.close(close_code::HANDSHAKE_TIMEOUT.into(), b"no welcome");
                return Err(SessionError::HandshakeTimeout(self.config.connect_timeout));
            }
            Ok(Err(e)) => {
                // A refused certificate shows up here as a closed connection with a TLS alert.
                let reason = conn
                    .close_reason()
                    .map_or_else(|| e.to_string(), |r| r.to_string());
                return Err(SessionError::Refused(reason));
            }
            Ok(Ok(Message::Welcome(w))) => w,
            Ok(Ok(Message::Reject(r))) => {
                conn.close(close_code::NORMAL.into(), b"rejected");
                return Err(SessionError::Refused(format!("{:?}: {}", r.code, r.reason)));
            }
            Ok(Ok(other)) => {
                conn.close(close_code::UNEXPECTED_MESSAGE.into(), b"expected Welcome");
                return Err(SessionError::Protocol(format!(
                    "expected Welcome, got {}",
                    other.name()
                )));
            }
        };
        failover.handle_established(now());
        while let Some(event) = failover.poll_event() {
            match event {
                FailoverEvent::FailedOver { from, to } => self.telemetry.emit(FailedOver {
                    from: &from.to_string(),
                    to: &to.to_string(),
                }),
            }
        }
        let aggregator = target.to_string();
        self.telemetry.emit(Connected {
            aggregator: &aggregator,
            server_version: &welcome.server_version,
            max_in_flight: welcome.max_in_flight,
            max_batch_events: welcome.max_batch_events,
            max_frame_bytes: welcome.max_frame_bytes,
            backlog_batches: stats.batches,
        });
        let result = self
            .deliver(&conn, &mut control_tx, &welcome, shutdown)
            .await;
        if let Err(e) = &result {
            self.telemetry.emit(Disconnected {
                aggregator: &aggregator,
                reason: &e.to_string(),
            });
        }
        result
    }

    /// Runs one session on an established connection. Returns Ok(()) only on shutdown.
    async fn deliver(
        &self,
        conn: &quinn::Connection,
        control: &mut quinn::SendStream,
        welcome: &Welcome,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let config = SessionConfig {
            max_in_flight: self.config.max_in_flight,
            heartbeat_interval: self.config.heartbeat_interval,
            shutdown_grace: self.config.shutdown_grace,
        };
        // Subscribed before the first fetch, so no data committed after it goes unnoticed.
        let mut new_data = self.spool.subscribe();
        let mut session = Session::new(now(), &config, welcome, self.pacer.clone());
        let mut streams: JoinSet<Outcome> = JoinSet::new();
        let mut shutdown_seen = false;
        // At most one renewal at a time; a JoinSet, so that a session that ends aborts it.
        let mut renewing: JoinSet<Result<renew::Renewed, String>> = JoinSet::new();
        loop {
            while let Some(action) = self.next_action(&mut session) {
                match action {
                    Action::SetBatchLimits {
                        max_events,
                        max_bytes,
                    } => self.spool.set_batch_limits(max_events, max_bytes).await?,
                    Action::FetchBatches { after, max } => {
                        let batches = self.spool.batches_after(after, max).await?;
                        session.handle_batches(now(), batches);
                    }
                    Action::SendBatch(batch) => {
                        self.telemetry.emit(BatchSent {
                            seq: batch.seq,
                            events: batch.events,
                        });
                        let max_frame = welcome.max_frame_bytes;
                        streams.spawn(send_batch(conn.clone(), batch, max_frame));
                    }
                    Action::SplitBatch {
                        seq,
                        events,
                        bytes,
                        max_events,
                        max_bytes,
                    } => {
                        let seqs = self.spool.split_batch(seq, max_events, max_bytes).await?;
                        self.telemetry.emit(BatchSplit {
                            seq,
                            events,
                            bytes,
                            max_events,
                            max_bytes,
                            new_seqs: &seqs,
                        });
                    }
                    Action::AckSeqs(seqs) => self.spool.ack(seqs).await?,
                    Action::DropBatch { seq, reason } => self.spool.drop_batch(seq, reason).await?,
                    Action::SendHeartbeat => {
                        let msg = Message::Heartbeat(Heartbeat {
                            sent_ns: outpost_common::time::now_ns(),
                            status: self.telemetry.status(&self.spool.stats()),
                        });
                        if let Err(e) = wire::write_message(control, &msg).await {
                            session.handle_connection_lost(now(), e.to_string());
                        }
                    }
                    Action::Close { code, reason } => conn.close(code.into(), reason.as_bytes()),
                    Action::Done => return Ok(()),
                    Action::Ended(e) => return Err(e),
                }
            }
            let wake = session.poll_timeout();
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let renew_at = if renewing.is_empty() && !shutdown_seen {
                self.renewal_wait()
            } else {
                None
            };
            let renew_timer = async {
                match renew_at {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = renew_timer => {
                    if let Some(config) = self.renewal_config() {
                        renewing.spawn(renew::renew(conn.clone(), config));
                    }
                }
                Some(result) = renewing.join_next() => {
                    let result = result.unwrap_or_else(|e| Err(format!("renewal task failed: {e}")));
                    if self.renewal_finished(result) {
                        conn.close(close_code::NORMAL.into(), b"certificate renewed");
                        return Err(SessionError::Renewed);
                    }
                }
                Some(done) = streams.join_next() => {
                    // Every answer already in, so their acknowledgements share one transaction.
                    let mut next = Some(done);
                    while let Some(done) = next {
                        let outcome = done.map_err(|e| SessionError::Protocol(format!("batch task failed: {e}")))?;
                        match outcome {
                            Outcome::Ack { seq, duplicate } => session.handle_ack(now(), seq, duplicate),
                            Outcome::Reject { seq, code, reason } => session.handle_reject(now(), seq, code, reason),
                            Outcome::Failed { seq, reason } => session.handle_stream_failed(now(), seq, &reason),
                        }
                        next = streams.try_join_next();
                    }
                }
                changed = new_data.changed(), if session.wants_new_data() => {
                    if changed.is_err() {
                        return Err(SessionError::Protocol("spool closed".to_owned()));
                    }
                    session.handle_new_data(now());
                }
                reason = conn.closed() => session.handle_connection_lost(now(), reason.to_string()),
                () = stopped(shutdown), if !shutdown_seen => {
                    shutdown_seen = true;
                    session.handle_shutdown(now());
                }
                () = timer => session.handle_timeout(now()),
            }
        }
    }

    /// The client configuration to connect with.
    fn client(&self) -> quinn::ClientConfig {
        // A poisoned lock still holds a valid configuration.
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn renewal(&self) -> std::sync::MutexGuard<'_, Option<Renewal>> {
        // A poisoned lock still holds a valid schedule.
        self.renewal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long until the certificate's next renewal attempt; `None` when it is not renewed.
    fn renewal_wait(&self) -> Option<Duration> {
        let at = self.renewal().as_ref()?.next_attempt_ns();
        let wait = at.saturating_sub(outpost_common::time::now_ns());
        Some(Duration::from_nanos(u64::try_from(wait).unwrap_or(0)))
    }

    fn renewal_config(&self) -> Option<Arc<RenewalConfig>> {
        self.renewal().as_ref().map(|r| r.config.clone())
    }

    /// Records the end of a renewal attempt; returns whether the certificate was replaced (then
    /// the client configuration presents the new one).
    fn renewal_finished(&self, result: Result<renew::Renewed, String>) -> bool {
        let mut renewal = self.renewal();
        let Some(schedule) = renewal.as_mut() else {
            return false;
        };
        match result {
            Ok(renewed) => {
                self.telemetry.emit(CertificateRenewed {
                    serial: &renewed.serial,
                    not_after_ns: renewed.validity.not_after_ns,
                });
                schedule.renewed(renewed.validity);
                *self
                    .client
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = renewed.client;
                true
            }
            Err(error) => {
                let retry_in = schedule.failed(outpost_common::time::now_ns());
                self.telemetry.emit(CertificateRenewalFailed {
                    error: &error,
                    retry_in,
                    not_after_ns: schedule.config.current.not_after_ns,
                });
                false
            }
        }
    }

    /// The session's next action, after reporting what it has to report.
    fn next_action(&self, session: &mut Session) -> Option<Action> {
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::Acked {
                    seq,
                    events,
                    rtt,
                    duplicate,
                } => self.telemetry.emit(BatchAcked {
                    seq,
                    events,
                    rtt,
                    duplicate,
                }),
                SessionEvent::Rejected { seq, code, reason } => {
                    self.telemetry.emit(BatchRejected {
                        seq,
                        code,
                        reason: &reason,
                    })
                }
                SessionEvent::Draining { in_flight } => {
                    self.telemetry.emit(DrainStarted { in_flight })
                }
                SessionEvent::GraceExpired { in_flight } => {
                    self.telemetry.emit(GraceExpired { in_flight })
                }
            }
        }
        session.poll_action()
    }
}

/// The instant sessions are told, from tokio's clock (which tests may pause).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A client socket: IPv4, or dual-stack IPv6 when an endpoint is an IPv6 address.
fn bind_endpoint(targets: &[Target]) -> std::io::Result<quinn::Endpoint> {
    let v6 = targets.iter().any(|t| t.endpoint.host.contains(':'));
    let local: SocketAddr = if v6 {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0u8; 4], 0))
    };
    quinn::Endpoint::client(local)
}

/// The addresses of each target the socket of `endpoint` can reach, in order. An address
/// literal is taken as it is; names are resolved off the runtime, since that may block.
async fn resolve(
    targets: &[Target],
    endpoint: &quinn::Endpoint,
) -> Vec<Result<Vec<SocketAddr>, String>> {
    let local_v6 = endpoint.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let mut resolved = Vec::with_capacity(targets.len());
    for target in targets {
        let e = &target.endpoint;
        let addrs = match e.host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(vec![SocketAddr::new(ip, e.port)]),
            Err(_) => {
                let e = e.clone();
                match tokio::task::spawn_blocking(move || e.resolve()).await {
                    Ok(Ok(addrs)) => Ok(addrs),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        resolved.push(addrs.and_then(|a| failover::reachable(a, local_v6)));
    }
    resolved
}

/// Sends one batch on its own stream and waits for the answer.
async fn send_batch(conn: quinn::Connection, batch: StoredBatch, max_frame: u32) -> Outcome {
    let seq = batch.seq;
    let failed = |reason: String| Outcome::Failed { seq, reason };
    let frame = match batch.frame() {
        Ok(f) => f,
        Err(e) => return failed(e.to_string()),
    };
    let (mut tx, mut rx) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return failed(e.to_string()),
    };
    if let Err(e) = tx.write_all(&frame).await {
        return failed(e.to_string());
    }
    let _ = tx.finish();
    match wire::read_message(&mut rx, max_frame).await {
        Ok(Message::Ack(a)) if a.seq == seq => Outcome::Ack {
            seq,
            duplicate: a.duplicate,
        },
        Ok(Message::Reject(r)) => Outcome::Reject {
            seq,
            code: r.code,
            reason: r.reason,
        },
        Ok(other) => failed(format!("unexpected answer {}", other.name())),
        Err(e) => failed(e.to_string()),
    }
}
