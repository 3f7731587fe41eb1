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
//! The bookkeeping of what is in flight is the pure [`Window`]; [`Shipper::run`] only moves bytes
//! and timers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use outpost_common::config::QuicEndpoint;
use outpost_common::event::{DropReason, HostFacts};
use outpost_common::wire::{self, Heartbeat, Hello, Message, RejectCode, Welcome, close_code};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::internal_events::{
    BatchAcked, BatchRejected, BatchSent, BatchSplit, Connected, Disconnected, NotConnected,
};
use crate::spool::{SpoolError, SpoolHandle, StoredBatch};
use crate::telemetry::Telemetry;

/// Bytes a Batch frame adds around its events' payload: the `u32` length prefix (4 bytes), then
/// the bincode header of `Message::Batch`: the variant index (1 byte) and `seq`, `low_water_seq`
/// and `created_ns` as varints (at most 9 bytes each), 32 in all. The aggregator measures its
/// frame limit without the length prefix, so this leaves 4 bytes to spare.
pub const BATCH_FRAME_OVERHEAD_BYTES: usize = 32;

/// The largest batch the aggregator accepts, from its Welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverLimits {
    /// Events in one batch; at least 1.
    pub max_events: u32,
    /// Bytes of a batch's encoded events, so that its whole frame fits the frame limit.
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
        batch.events <= self.max_events && batch.payload.len() <= self.max_payload_bytes
    }
}

/// What the shipper needs to know.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    pub endpoint: QuicEndpoint,
    pub server_name: String,
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
}

/// The in-flight bookkeeping of one connection.
///
/// Call order: [`Window::room`] and [`Window::cursor`] to decide what to fetch next,
/// [`Window::handle_sent`] for each batch handed to the network, then exactly one of
/// [`Window::handle_ack`] or [`Window::handle_failed`] per sent batch.
#[derive(Debug)]
pub struct Window {
    limit: usize,
    cursor: u64,
    in_flight: BTreeMap<u64, (Instant, u32)>,
}

impl Window {
    /// A fresh window: the next fetch starts from the oldest unacknowledged batch.
    pub fn new(limit: usize) -> Self {
        Window {
            limit: limit.max(1),
            cursor: 0,
            in_flight: BTreeMap::new(),
        }
    }

    /// How many more batches may be sent now.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.in_flight.len())
    }

    /// Fetch batches with a seq above this.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn handle_sent(&mut self, seq: u64, events: u32, now: Instant) {
        self.cursor = self.cursor.max(seq);
        self.in_flight.insert(seq, (now, events));
    }

    /// An acknowledgement: returns the round-trip time and event count, or `None` for a seq that
    /// was not in flight (an answer to a stream we no longer track).
    pub fn handle_ack(&mut self, seq: u64, now: Instant) -> Option<(Duration, u32)> {
        self.in_flight
            .remove(&seq)
            .map(|(sent, events)| (now.saturating_duration_since(sent), events))
    }

    /// The batch was not acknowledged (rejected or its stream failed).
    pub fn handle_failed(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }
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
pub struct Shipper {
    config: ShipConfig,
    spool: SpoolHandle,
    telemetry: Arc<Telemetry>,
    host: HostFacts,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Shipper {
    pub fn new(
        config: ShipConfig,
        spool: SpoolHandle,
        telemetry: Arc<Telemetry>,
        host: HostFacts,
    ) -> Self {
        let limiter = NonZeroU32::new(config.catchup_events_per_sec).map(|rate| {
            let burst = NonZeroU32::new(config.max_batch_events.max(rate.get())).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Shipper {
            config,
            spool,
            telemetry,
            host,
            limiter,
        }
    }

    /// Connects, ships, and reconnects with capped exponential backoff and jitter, until
    /// `shutdown` turns true. Then drains what is in flight (within the grace period) and closes
    /// the connection cleanly.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let endpoint = match bind_endpoint(&self.config.endpoint) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot open a UDP socket for QUIC; nothing will be shipped");
                return;
            }
        };
        let backoff_builder = ExponentialBuilder::new()
            .with_min_delay(self.config.reconnect_min)
            .with_max_delay(self.config.reconnect_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        let mut backoff = backoff_builder.build();
        while !*shutdown.borrow() {
            let result = self.session(&endpoint, &mut shutdown).await;
            match result {
                Ok(()) => break,
                Err(e) => {
                    let established =
                        matches!(e, SessionError::Lost(_) | SessionError::Unavailable(_));
                    if established {
                        // The connection worked; start the next wait from the bottom.
                        backoff = backoff_builder.build();
                    }
                    let delay = backoff.next().unwrap_or(self.config.reconnect_max);
                    self.telemetry.emit(NotConnected {
                        error: &e.to_string(),
                        retry_in: delay,
                    });
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                }
            }
        }
        // Give the close frame a moment to reach the aggregator.
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }

    async fn connect(&self, endpoint: &quinn::Endpoint) -> Result<quinn::Connection, SessionError> {
        let target = self.config.endpoint.clone();
        let addrs = tokio::task::spawn_blocking(move || target.resolve())
            .await
            .map_err(|e| SessionError::Resolve {
                endpoint: self.config.endpoint.to_string(),
                reason: e.to_string(),
            })?
            .map_err(|e| SessionError::Resolve {
                endpoint: self.config.endpoint.to_string(),
                reason: e.to_string(),
            })?;
        let local_v6 = endpoint.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv6() == local_v6)
            .or(addrs.first())
            .copied()
            .ok_or_else(|| SessionError::Resolve {
                endpoint: self.config.endpoint.to_string(),
                reason: "no addresses".to_owned(),
            })?;
        let connecting = endpoint
            .connect_with(self.config.client.clone(), addr, &self.config.server_name)
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
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        // A spool that could not be opened has no spool id yet: say nothing until it has one.
        tokio::select! {
            r = self.spool.available() => r?,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
        let conn = tokio::select! {
            r = self.connect(endpoint) => r?,
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
        self.telemetry.emit(Connected {
            aggregator: &self.config.endpoint.to_string(),
            server_version: &welcome.server_version,
            max_in_flight: welcome.max_in_flight,
            max_batch_events: welcome.max_batch_events,
            max_frame_bytes: welcome.max_frame_bytes,
            backlog_batches: stats.batches,
        });
        let limit = self.config.max_in_flight.min(welcome.max_in_flight.max(1)) as usize;
        let result = self
            .deliver(&conn, &mut control_tx, limit, &welcome, shutdown)
            .await;
        if let Err(e) = &result {
            self.telemetry.emit(Disconnected {
                reason: &e.to_string(),
            });
        }
        match &result {
            Ok(()) => conn.close(close_code::NORMAL.into(), b"agent shutting down"),
            Err(SessionError::Unavailable(_)) => {
                conn.close(close_code::NORMAL.into(), b"backing off")
            }
            Err(_) => {}
        }
        result
    }

    async fn deliver(
        &self,
        conn: &quinn::Connection,
        control: &mut quinn::SendStream,
        limit: usize,
        welcome: &Welcome,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let max_frame = welcome.max_frame_bytes;
        let receiver = ReceiverLimits::from_welcome(welcome);
        let max_events = receiver.max_events as usize;
        self.spool
            .set_batch_limits(max_events, receiver.max_payload_bytes)
            .await?;
        let mut window = Window::new(limit);
        let mut streams: JoinSet<Outcome> = JoinSet::new();
        let mut new_data = self.spool.subscribe();
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await; // Hello carried the first status.
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Vec<u64>>();
        let mut exhausted = false;
        loop {
            let stopping = *shutdown.borrow();
            if window.room() > 0 && !exhausted && !stopping {
                let batches = self
                    .spool
                    .batches_after(window.cursor(), window.room())
                    .await?;
                exhausted = batches.is_empty();
                for batch in batches {
                    if !receiver.admit(&batch) {
                        // Its events come back under new seqs above every existing one, so a
                        // later fetch past the cursor finds them.
                        let seqs = self
                            .spool
                            .split_batch(batch.seq, max_events, receiver.max_payload_bytes)
                            .await?;
                        self.telemetry.emit(BatchSplit {
                            seq: batch.seq,
                            events: batch.events,
                            bytes: batch.payload.len(),
                            max_events,
                            max_bytes: receiver.max_payload_bytes,
                            new_seqs: &seqs,
                        });
                        continue;
                    }
                    self.pace(batch.events).await;
                    window.handle_sent(batch.seq, batch.events, Instant::now());
                    self.telemetry.emit(BatchSent {
                        seq: batch.seq,
                        events: batch.events,
                    });
                    streams.spawn(send_batch(conn.clone(), batch, max_frame));
                }
                continue;
            }
            let stopping = *shutdown.borrow();
            if stopping && window.in_flight() == 0 {
                return Ok(());
            }
            tokio::select! {
                Some(done) = streams.join_next() => {
                    let outcome = done.map_err(|e| SessionError::Protocol(format!("batch task failed: {e}")))?;
                    self.handle_outcome(outcome, &mut window, &ack_tx).await?;
                    exhausted = false;
                }
                Some(seqs) = ack_rx.recv() => {
                    // Collect every ack already waiting and delete them in one spool transaction.
                    let mut all = seqs;
                    while let Ok(more) = ack_rx.try_recv() {
                        all.extend(more);
                    }
                    self.spool.ack(all).await?;
                }
                changed = new_data.changed(), if exhausted => {
                    if changed.is_err() {
                        return Err(SessionError::Protocol("spool closed".to_owned()));
                    }
                    exhausted = false;
                }
                _ = heartbeat.tick() => {
                    let stats = self.spool.stats();
                    let msg = Message::Heartbeat(Heartbeat {
                        sent_ns: outpost_common::time::now_ns(),
                        status: self.telemetry.status(&stats),
                    });
                    wire::write_message(control, &msg).await.map_err(|e| SessionError::Lost(e.to_string()))?;
                }
                reason = conn.closed() => {
                    return Err(SessionError::Lost(reason.to_string()));
                }
                () = stopped(shutdown), if !stopping => {
                    info!(in_flight = window.in_flight(), "shutting down: waiting for outstanding acknowledgements");
                    let grace = tokio::time::sleep(self.config.shutdown_grace);
                    tokio::pin!(grace);
                    while window.in_flight() > 0 {
                        tokio::select! {
                            Some(done) = streams.join_next() => {
                                if let Ok(outcome) = done {
                                    self.handle_outcome(outcome, &mut window, &ack_tx).await?;
                                }
                            }
                            () = &mut grace => {
                                warn!(in_flight = window.in_flight(), "grace period over; unacknowledged batches stay in the spool");
                                break;
                            }
                        }
                    }
                    let mut all = Vec::new();
                    while let Ok(more) = ack_rx.try_recv() {
                        all.extend(more);
                    }
                    if !all.is_empty() {
                        self.spool.ack(all).await?;
                    }
                    return Ok(());
                }
            }
        }
    }

    async fn handle_outcome(
        &self,
        outcome: Outcome,
        window: &mut Window,
        acks: &mpsc::UnboundedSender<Vec<u64>>,
    ) -> Result<(), SessionError> {
        match outcome {
            Outcome::Ack { seq, duplicate } => {
                if let Some((rtt, events)) = window.handle_ack(seq, Instant::now()) {
                    self.telemetry.emit(BatchAcked {
                        seq,
                        events,
                        rtt,
                        duplicate,
                    });
                    // The receiver lives as long as this session's loop.
                    let _ = acks.send(vec![seq]);
                }
                Ok(())
            }
            Outcome::Reject { seq, code, reason } => {
                window.handle_failed(seq);
                if code.is_retryable() {
                    return Err(SessionError::Unavailable(reason));
                }
                self.telemetry.emit(BatchRejected {
                    seq,
                    code,
                    reason: &reason,
                });
                self.spool
                    .drop_batch(seq, DropReason::RejectedByAggregator)
                    .await?;
                Ok(())
            }
            Outcome::Failed { seq, reason } => {
                window.handle_failed(seq);
                Err(SessionError::Lost(format!("batch {seq}: {reason}")))
            }
        }
    }

    async fn pace(&self, events: u32) {
        if let (Some(limiter), Some(n)) = (&self.limiter, NonZeroU32::new(events)) {
            // n never exceeds the burst, which holds the largest batch; if it did, skip pacing.
            let _ = limiter.until_n_ready(n).await;
        }
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn bind_endpoint(target: &QuicEndpoint) -> std::io::Result<quinn::Endpoint> {
    let v6 = target.host.contains(':');
    let local: SocketAddr = if v6 {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0u8; 4], 0))
    };
    quinn::Endpoint::client(local)
}

/// Sends one batch on its own stream and waits for the answer.
async fn send_batch(conn: quinn::Connection, batch: StoredBatch, max_frame: u32) -> Outcome {
    let seq = batch.seq;
    let failed = |reason: String| Outcome::Failed { seq, reason };
    let frame = match wire::encode_batch_frame(
        seq,
        batch.low_water_seq,
        batch.created_ns,
        &batch.payload,
    ) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_tracks_room_cursor_and_latency() {
        let t0 = Instant::now();
        let mut w = Window::new(2);
        assert_eq!((w.room(), w.cursor()), (2, 0));
        w.handle_sent(5, 10, t0);
        w.handle_sent(6, 20, t0);
        assert_eq!((w.room(), w.cursor()), (0, 6));
        let later = t0 + Duration::from_millis(7);
        assert_eq!(w.handle_ack(6, later), Some((Duration::from_millis(7), 20)));
        assert_eq!(
            w.handle_ack(6, later),
            None,
            "a second ack for the same seq is ignored"
        );
        assert_eq!(w.room(), 1);
        w.handle_failed(5);
        assert_eq!((w.room(), w.in_flight(), w.cursor()), (2, 0, 6));
    }

    fn welcome(max_frame_bytes: u32, max_batch_events: u32) -> Welcome {
        Welcome {
            protocol_version: wire::PROTOCOL_VERSION,
            server_version: "test".to_owned(),
            max_frame_bytes,
            max_batch_events,
            max_in_flight: 8,
            heartbeat_interval_ms: 1000,
        }
    }

    fn stored(events: u32, payload_bytes: usize) -> StoredBatch {
        StoredBatch {
            seq: 1,
            created_ns: 0,
            events,
            low_water_seq: 1,
            payload: vec![0; payload_bytes],
        }
    }

    #[test]
    fn the_frame_overhead_covers_the_largest_batch_header() {
        let payload = [7u8; 10];
        for (seq, low_water, created_ns) in [
            (u64::MAX, u64::MAX, i64::MIN),
            (u64::MAX, u64::MAX, i64::MAX),
            (1, 1, 0),
        ] {
            let frame = wire::encode_batch_frame(seq, low_water, created_ns, &payload).unwrap();
            assert!(
                frame.len() - payload.len() <= BATCH_FRAME_OVERHEAD_BYTES,
                "{} bytes of overhead",
                frame.len() - payload.len()
            );
        }
    }

    #[test]
    fn receiver_limits_admit_only_batches_whose_frame_fits() {
        let limits = ReceiverLimits::from_welcome(&welcome(64 * 1024, 100));
        let max_payload = 64 * 1024 - BATCH_FRAME_OVERHEAD_BYTES;
        assert_eq!(limits.max_payload_bytes, max_payload);
        assert!(limits.admit(&stored(100, max_payload)));
        assert!(!limits.admit(&stored(101, 10)));
        assert!(!limits.admit(&stored(1, max_payload + 1)));

        let zero = ReceiverLimits::from_welcome(&welcome(10, 0));
        assert_eq!((zero.max_events, zero.max_payload_bytes), (1, 0));
        assert!(!zero.admit(&stored(1, 1)));
    }

    #[test]
    fn a_new_window_resends_from_the_oldest() {
        let mut w = Window::new(4);
        w.handle_sent(9, 1, Instant::now());
        let fresh = Window::new(4);
        assert_eq!(fresh.cursor(), 0);
        assert_eq!(w.cursor(), 9);
    }
}
