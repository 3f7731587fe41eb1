//! Agent ingest: the QUIC listener, one session per connection, validation, and
//! acknowledgement after the store commits.
//!
//! A connection is admitted only with a client certificate issued by the agent CA and not
//! revoked; the agent's id is read from that certificate and nowhere else. The first stream is
//! the control stream (Hello → Welcome, then heartbeats); every other stream carries one batch
//! and gets one Ack or Reject. Garbage, oversized or out-of-protocol frames close that agent's
//! connection with an error code, are counted and logged (rate-limited), and never affect other
//! agents.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use outpost_common::event::Event;
use outpost_common::time::{duration_ns, now_ns};
use outpost_common::tls::{self, Identity, QuicSettings};
use outpost_common::wire::{
    self, Ack, Batch, Message, Reject, RejectCode, Welcome, WireError, close_code,
};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::store::{CommitOutcome, IncomingBatch, RegistryUpdate, StoreWriter};

/// Limits and timings of ingest.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub max_frame_bytes: u32,
    pub max_batch_events: u32,
    pub max_in_flight: u32,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_future_skew: Duration,
    /// Bytes asked for the UDP socket's receive buffer.
    pub udp_receive_buffer: usize,
}

/// Where the TLS material lives, so it can be reloaded.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub crl: PathBuf,
}

/// Ingest counters, for logs and the status API.
#[derive(Debug, Default, Serialize)]
pub struct IngestCounters {
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub frames_malformed: AtomicU64,
    pub protocol_violations: AtomicU64,
    pub batches_stored: AtomicU64,
    pub batches_duplicate: AtomicU64,
    pub batches_rejected: AtomicU64,
    pub events_stored: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Logs at most a few lines per minute for each kind of failure, counting what it suppressed.
#[derive(Debug)]
struct LogLimiter {
    limiter: DefaultKeyedRateLimiter<&'static str>,
    suppressed: Mutex<HashMap<&'static str, u64>>,
}

impl LogLimiter {
    fn new() -> Self {
        let burst = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN);
        LogLimiter {
            limiter: RateLimiter::keyed(Quota::per_minute(burst).allow_burst(burst)),
            suppressed: Mutex::new(HashMap::new()),
        }
    }

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

struct Session {
    conn: quinn::Connection,
    serial: Vec<u8>,
}

/// Shared state of the ingest service.
struct Shared {
    config: IngestConfig,
    writer: StoreWriter,
    counters: Arc<IngestCounters>,
    log_limiter: LogLimiter,
    revoked: RwLock<HashSet<Vec<u8>>>,
    sessions: Mutex<HashMap<String, Session>>,
}

/// The running ingest service.
pub struct Ingest {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tls_files: TlsFiles,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("tls_files", &self.tls_files)
            .finish_non_exhaustive()
    }
}

fn quic_settings(config: &IngestConfig) -> QuicSettings {
    QuicSettings {
        idle_timeout: config.idle_timeout,
        keep_alive: None,
        // One control stream plus the batch window.
        max_concurrent_bidi_streams: config.max_in_flight + 1,
        mtu_discovery: true,
    }
}

fn load_server_config(
    files: &TlsFiles,
    config: &IngestConfig,
) -> anyhow::Result<(quinn::ServerConfig, HashSet<Vec<u8>>)> {
    let ca = tls::load_certs(&files.ca)?;
    let chain = tls::load_certs(&files.cert)?;
    let key = tls::load_key(&files.key)?;
    let crls = tls::load_crls(&files.crl)?;
    let revoked = tls::revoked_serials(&crls)?;
    let mut server = tls::server_config(&ca, chain, key, crls, &quic_settings(config))?;
    // Stateless retry is unnecessary: every client must present a certificate anyway.
    server.migration(true);
    Ok((server, revoked))
}

impl Ingest {
    /// Binds the listener.
    ///
    /// `reset_key` (72 bytes) keys QUIC stateless resets and connection ids. Kept across
    /// restarts, it lets a restarted aggregator tell agents at once that their old connections
    /// are gone, instead of leaving them to wait for the idle timeout.
    pub fn bind(
        listen: std::net::SocketAddr,
        tls_files: TlsFiles,
        config: IngestConfig,
        writer: StoreWriter,
        reset_key: &[u8],
    ) -> anyhow::Result<Ingest> {
        let (server, revoked) = load_server_config(&tls_files, &config)?;
        // The first 64 bytes key the reset tokens; the next 8 key the connection-id generator,
        // whose ids must also validate after a restart for the reset to be sent at all.
        let (hmac, cid) = reset_key.split_at(reset_key.len().min(64));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hmac);
        let mut cid_key = [0u8; 8];
        for (dst, src) in cid_key.iter_mut().zip(cid) {
            *dst = *src;
        }
        let cid_key = u64::from_le_bytes(cid_key);
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(key));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let socket = std::net::UdpSocket::bind(listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (udp): {e}"))?;
        set_receive_buffer(&socket, config.udp_receive_buffer);
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (udp): {e}"))?;
        Ok(Ingest {
            endpoint,
            shared: Arc::new(Shared {
                config,
                writer,
                counters: Arc::new(IngestCounters::default()),
                log_limiter: LogLimiter::new(),
                revoked: RwLock::new(revoked),
                sessions: Mutex::new(HashMap::new()),
            }),
            tls_files,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn counters(&self) -> Arc<IngestCounters> {
        self.shared.counters.clone()
    }

    /// Reloads the TLS files (certificates and CRL): new connections use them at once, and
    /// connected agents whose certificate is now revoked are disconnected.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        let (server, revoked) = load_server_config(&self.tls_files, &self.shared.config)?;
        self.endpoint.set_server_config(Some(server));
        let count = revoked.len();
        *self
            .shared
            .revoked
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = revoked;
        let sessions = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let guard = self
            .shared
            .revoked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (agent_id, s) in sessions.iter() {
            if guard.contains(&s.serial) {
                warn!(agent_id = %agent_id, serial = %tls::hex(&s.serial), "certificate revoked; closing the agent's connection");
                s.conn
                    .close(close_code::UNAUTHORIZED.into(), b"certificate revoked");
            }
        }
        info!(revoked = count, "TLS files reloaded");
        Ok(())
    }

    /// Accepts connections until `shutdown`, then closes them and waits for the endpoint to idle.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, reload_interval: Duration) {
        let mut reload = tokio::time::interval(reload_interval);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stamp = tls_stamp(&self.tls_files);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    tokio::spawn(handle_incoming(self.shared.clone(), incoming));
                }
                _ = reload.tick() => {
                    let now = tls_stamp(&self.tls_files);
                    if now != stamp {
                        stamp = now;
                        if let Err(e) = self.reload_tls() {
                            warn!(error = %format!("{e:#}"), "cannot reload the TLS files; keeping the previous ones");
                        }
                    }
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    stamp = tls_stamp(&self.tls_files);
                    if let Err(e) = self.reload_tls() {
                        warn!(error = %format!("{e:#}"), "cannot reload the TLS files; keeping the previous ones");
                    }
                }
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        self.endpoint
            .close(close_code::SHUTDOWN.into(), b"aggregator shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
    }
}

/// Asks for a large socket receive buffer: a fleet reconnecting at once sends a burst of
/// handshakes and batches, and the kernel's default (about 200 KiB) drops datagrams, which QUIC
/// then resends only after timeouts. The kernel caps the size at `net.core.rmem_max`.
fn set_receive_buffer(socket: &std::net::UdpSocket, wanted: usize) {
    let state = match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot inspect the UDP socket; keeping its receive buffer");
            return;
        }
    };
    if let Err(e) = state.set_recv_buffer_size(socket.into(), wanted) {
        warn!(error = %e, wanted, "cannot enlarge the UDP receive buffer");
        return;
    }
    // Linux reports twice the size it grants (it counts its own bookkeeping).
    let granted = state.recv_buffer_size(socket.into()).unwrap_or(0) / 2;
    if granted < wanted {
        warn!(
            wanted,
            granted,
            "the UDP receive buffer is smaller than configured; raise net.core.rmem_max \
             (sysctl) to avoid dropped datagrams when many agents connect at once"
        );
    } else {
        debug!(granted, "UDP receive buffer set");
    }
}

/// Modification times of the TLS files, to notice changes.
fn tls_stamp(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key, &files.crl]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

async fn handle_incoming(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            bump(&shared.counters.connections_refused);
            if let Some(suppressed) = shared.log_limiter.check("handshake") {
                warn!(%remote, reason = %e, suppressed, "refused a connection: TLS handshake failed");
            }
            return;
        }
    };
    let identity = match tls::identity_from_connection(&conn) {
        Ok(id) => id,
        Err(e) => {
            bump(&shared.counters.connections_refused);
            if let Some(suppressed) = shared.log_limiter.check("identity") {
                warn!(%remote, reason = %e, suppressed, "refused a connection: no agent identity in the certificate");
            }
            conn.close(close_code::UNAUTHORIZED.into(), e.to_string().as_bytes());
            return;
        }
    };
    let revoked = shared
        .revoked
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&identity.serial);
    if revoked {
        bump(&shared.counters.connections_refused);
        warn!(%remote, agent_id = %identity.agent_id, serial = %identity.serial_hex(), "refused a connection: certificate revoked");
        conn.close(close_code::UNAUTHORIZED.into(), b"certificate revoked");
        return;
    }
    bump(&shared.counters.connections_accepted);
    let reason = session(&shared, &conn, &identity, remote).await;
    // A connection replaced by a newer one from the same agent must not mark the agent as
    // disconnected: the newer session is the agent's current state.
    let current = {
        let mut sessions = shared
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = sessions
            .get(&identity.agent_id)
            .is_none_or(|s| s.conn.stable_id() == conn.stable_id());
        if current {
            sessions.remove(&identity.agent_id);
        }
        current
    };
    info!(agent_id = %identity.agent_id, %remote, %reason, "agent disconnected");
    if current {
        let update = RegistryUpdate::Disconnect {
            agent_id: identity.agent_id.clone(),
            reason,
            now_ns: now_ns(),
        };
        if let Err(e) = shared.writer.record(update).await {
            warn!(agent_id = %identity.agent_id, error = %e, "cannot record the disconnect");
        }
    }
}

/// Runs one agent's connection; returns why it ended.
async fn session(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    identity: &Identity,
    remote: std::net::SocketAddr,
) -> String {
    let agent_id = identity.agent_id.as_str();
    let cfg = &shared.config;
    let handshake = async {
        let (tx, mut rx) = conn
            .accept_bi()
            .await
            .map_err(|e| (close_code::NORMAL, e.to_string()))?;
        let msg = wire::read_message(&mut rx, cfg.max_frame_bytes)
            .await
            .map_err(|e| (e.close_code(), e.to_string()))?;
        Ok::<_, (u32, String)>((tx, rx, msg))
    };
    let (mut ctl_tx, ctl_rx, hello) =
        match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
            Err(_) => {
                conn.close(close_code::HANDSHAKE_TIMEOUT.into(), b"no Hello in time");
                return "no Hello within the handshake timeout".to_owned();
            }
            Ok(Err((code, reason))) => {
                if code != close_code::NORMAL {
                    bump(&shared.counters.frames_malformed);
                    violation(shared, agent_id, remote, "malformed Hello", &reason);
                }
                conn.close(code.into(), reason.as_bytes());
                return format!("handshake failed: {reason}");
            }
            Ok(Ok((tx, rx, Message::Hello(h)))) => (tx, rx, h),
            Ok(Ok((_, _, other))) => {
                bump(&shared.counters.protocol_violations);
                let reason = format!("expected Hello, got {}", other.name());
                violation(shared, agent_id, remote, "protocol violation", &reason);
                conn.close(close_code::UNEXPECTED_MESSAGE.into(), reason.as_bytes());
                return reason;
            }
        };
    if hello.protocol_version != wire::PROTOCOL_VERSION {
        let reason = format!(
            "protocol version {} is not supported (this aggregator speaks {})",
            hello.protocol_version,
            wire::PROTOCOL_VERSION
        );
        let reject = Message::Reject(Reject {
            seq: 0,
            code: RejectCode::VersionMismatch,
            reason: reason.clone(),
        });
        let _ = wire::write_message(&mut ctl_tx, &reject).await;
        let _ = ctl_tx.finish();
        conn.close(close_code::VERSION_MISMATCH.into(), reason.as_bytes());
        return reason;
    }
    if let Err(reason) = validate_hello(&hello) {
        bump(&shared.counters.protocol_violations);
        violation(shared, agent_id, remote, "invalid Hello", &reason);
        let reject = Message::Reject(Reject {
            seq: 0,
            code: RejectCode::Invalid,
            reason: reason.clone(),
        });
        let _ = wire::write_message(&mut ctl_tx, &reject).await;
        let _ = ctl_tx.finish();
        conn.close(close_code::UNEXPECTED_MESSAGE.into(), reason.as_bytes());
        return format!("invalid Hello: {reason}");
    }
    let spool_id = hello.spool_id;
    {
        let update = RegistryUpdate::Hello {
            agent_id: agent_id.to_owned(),
            hello: hello.clone(),
            now_ns: now_ns(),
        };
        let recorded = shared.writer.record(update).await;
        if recorded.is_err() {
            let reason = "store unavailable; try again later".to_owned();
            let reject = Message::Reject(Reject {
                seq: 0,
                code: RejectCode::Unavailable,
                reason: reason.clone(),
            });
            let _ = wire::write_message(&mut ctl_tx, &reject).await;
            conn.close(close_code::NORMAL.into(), reason.as_bytes());
            warn!(agent_id, ?recorded, "cannot record the agent's Hello");
            return reason;
        }
    }
    let welcome = Message::Welcome(Welcome {
        protocol_version: wire::PROTOCOL_VERSION,
        server_version: outpost_common::VERSION.to_owned(),
        max_frame_bytes: cfg.max_frame_bytes,
        max_batch_events: cfg.max_batch_events,
        max_in_flight: cfg.max_in_flight,
        heartbeat_interval_ms: u32::try_from(cfg.heartbeat_interval.as_millis())
            .unwrap_or(u32::MAX),
    });
    if let Err(e) = wire::write_message(&mut ctl_tx, &welcome).await {
        return format!("cannot send Welcome: {e}");
    }
    if let Some(old) = shared
        .sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            agent_id.to_owned(),
            Session {
                conn: conn.clone(),
                serial: identity.serial.clone(),
            },
        )
    {
        warn!(
            agent_id,
            "a new connection replaces an existing one for this agent"
        );
        old.conn.close(
            close_code::REPLACED.into(),
            b"replaced by a newer connection",
        );
    }
    info!(
        agent_id,
        %remote,
        version = %hello.agent_version,
        hostname = %hello.host.hostname,
        backlog_batches = hello.status.backlog_batches,
        "agent connected"
    );

    let control = control_loop(
        shared.clone(),
        conn.clone(),
        agent_id.to_owned(),
        remote,
        ctl_rx,
    );
    let control = tokio::spawn(control);
    let reason = loop {
        match conn.accept_bi().await {
            Ok((tx, rx)) => {
                tokio::spawn(batch_stream(
                    shared.clone(),
                    conn.clone(),
                    agent_id.to_owned(),
                    spool_id,
                    remote,
                    tx,
                    rx,
                ));
            }
            Err(e) => break e.to_string(),
        }
    };
    control.abort();
    drop(ctl_tx);
    reason
}

fn violation(
    shared: &Shared,
    agent_id: &str,
    remote: std::net::SocketAddr,
    what: &'static str,
    reason: &str,
) {
    if let Some(suppressed) = shared.log_limiter.check(what) {
        warn!(agent_id, %remote, %reason, suppressed, "{what}; closing the connection");
    }
}

async fn control_loop(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    agent_id: String,
    remote: std::net::SocketAddr,
    mut rx: quinn::RecvStream,
) {
    loop {
        match wire::read_message(&mut rx, shared.config.max_frame_bytes).await {
            Ok(Message::Heartbeat(hb)) => {
                let received = now_ns();
                let skew = hb.sent_ns.saturating_sub(received);
                debug!(agent_id = %agent_id, skew_ms = skew / 1_000_000, "heartbeat");
                let update = RegistryUpdate::Heartbeat {
                    agent_id: agent_id.clone(),
                    status: hb.status,
                    now_ns: received,
                };
                if let Err(e) = shared.writer.record(update).await {
                    warn!(agent_id = %agent_id, error = %e, "cannot record a heartbeat");
                }
            }
            Ok(other) => {
                let reason = format!("unexpected {} on the control stream", other.name());
                return close_unexpected(&shared, &conn, &agent_id, remote, &reason);
            }
            Err(WireError::EndOfStream) => return,
            Err(WireError::Io(_)) => return, // the connection went away; the session notices
            Err(e) => return close_malformed(&shared, &conn, &agent_id, remote, &e),
        }
    }
}

/// Closes a connection that sent a well-formed message out of protocol; counts and logs it.
fn close_unexpected(
    shared: &Shared,
    conn: &quinn::Connection,
    agent_id: &str,
    remote: std::net::SocketAddr,
    reason: &str,
) {
    bump(&shared.counters.protocol_violations);
    violation(shared, agent_id, remote, "protocol violation", reason);
    conn.close(close_code::UNEXPECTED_MESSAGE.into(), reason.as_bytes());
}

/// Closes a connection that sent an undecodable or oversized frame; counts and logs it.
fn close_malformed(
    shared: &Shared,
    conn: &quinn::Connection,
    agent_id: &str,
    remote: std::net::SocketAddr,
    e: &WireError,
) {
    bump(&shared.counters.frames_malformed);
    let reason = e.to_string();
    violation(shared, agent_id, remote, "malformed frame", &reason);
    conn.close(e.close_code().into(), reason.as_bytes());
}

async fn batch_stream(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    agent_id: String,
    spool_id: u64,
    remote: std::net::SocketAddr,
    mut tx: quinn::SendStream,
    mut rx: quinn::RecvStream,
) {
    let batch = match wire::read_message(&mut rx, shared.config.max_frame_bytes).await {
        Ok(Message::Batch(b)) => b,
        Ok(other) => {
            let reason = format!("expected Batch, got {}", other.name());
            return close_unexpected(&shared, &conn, &agent_id, remote, &reason);
        }
        Err(WireError::Io(_)) => return,
        Err(e) => return close_malformed(&shared, &conn, &agent_id, remote, &e),
    };
    let seq = batch.seq;
    let received_ns = now_ns();
    let answer = if let Err(reason) = validate_batch(&batch, &shared.config, received_ns) {
        bump(&shared.counters.batches_rejected);
        if let Some(suppressed) = shared.log_limiter.check("invalid batch") {
            warn!(agent_id = %agent_id, seq, %reason, suppressed, "rejected an invalid batch");
        }
        Message::Reject(Reject {
            seq,
            code: RejectCode::Invalid,
            reason,
        })
    } else {
        let events = batch.events.len() as u64;
        let incoming = IncomingBatch {
            agent_id: agent_id.clone(),
            spool_id,
            seq,
            low_water_seq: batch.low_water_seq,
            received_ns,
            events: batch.events,
        };
        match shared.writer.commit(incoming).await {
            Ok(CommitOutcome::Stored) => {
                bump(&shared.counters.batches_stored);
                shared
                    .counters
                    .events_stored
                    .fetch_add(events, Ordering::Relaxed);
                Message::Ack(Ack {
                    seq,
                    duplicate: false,
                })
            }
            Ok(CommitOutcome::Duplicate) => {
                bump(&shared.counters.batches_duplicate);
                Message::Ack(Ack {
                    seq,
                    duplicate: true,
                })
            }
            Err(e) => {
                if let Some(suppressed) = shared.log_limiter.check("store") {
                    warn!(agent_id = %agent_id, seq, error = %e, suppressed, "cannot store a batch; the agent will retry");
                }
                Message::Reject(Reject {
                    seq,
                    code: RejectCode::Unavailable,
                    reason: format!("store unavailable: {e}"),
                })
            }
        }
    };
    if wire::write_message(&mut tx, &answer).await.is_ok() {
        let _ = tx.finish();
    }
}

/// Field limits for stored events.
const MAX_NAME: usize = 256;
const MAX_UNIT: usize = 64;
const MAX_ATTRS: usize = 64;
const MAX_ATTR_KEY: usize = 256;
const MAX_ATTR_VALUE: usize = 4096;
const MAX_BODY: usize = 256 * 1024;
const MAX_PATH: usize = 4096;
/// 2000-01-01T00:00:00Z: anything earlier is a broken clock.
const MIN_TIME_NS: i64 = 946_684_800 * 1_000_000_000;

/// Checks the text fields of a Hello (the numbers cannot be out of range in a harmful way).
pub fn validate_hello(hello: &wire::Hello) -> Result<(), String> {
    check_len("agent version", &hello.agent_version, MAX_NAME)?;
    let h = &hello.host;
    for (what, value) in [
        ("hostname", &h.hostname),
        ("os", &h.os),
        ("kernel", &h.kernel),
        ("arch", &h.arch),
    ] {
        check_len(what, value, MAX_NAME)?;
    }
    validate_event(&Event::Status(hello.status.clone()))
}

/// Checks every field of a batch; returns the first problem found.
pub fn validate_batch(
    batch: &Batch,
    config: &IngestConfig,
    received_ns: i64,
) -> Result<(), String> {
    if batch.seq == 0 {
        return Err("seq 0 is not valid".to_owned());
    }
    if batch.events.is_empty() {
        return Err("batch has no events".to_owned());
    }
    if batch.events.len() > config.max_batch_events as usize {
        return Err(format!(
            "{} events exceed the limit of {}",
            batch.events.len(),
            config.max_batch_events
        ));
    }
    let latest = received_ns.saturating_add(duration_ns(config.max_future_skew));
    for (i, event) in batch.events.iter().enumerate() {
        let t = event.time_ns();
        if !(MIN_TIME_NS..=latest).contains(&t) {
            return Err(format!(
                "event {i}: timestamp {t} is outside [2000-01-01, receipt + {}]",
                humantime::format_duration(config.max_future_skew)
            ));
        }
        validate_event(event).map_err(|e| format!("event {i}: {e}"))?;
    }
    Ok(())
}

fn check_len(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{what} is {} bytes, more than {max}", s.len()));
    }
    Ok(())
}

fn check_attrs(attrs: &[(String, String)]) -> Result<(), String> {
    if attrs.len() > MAX_ATTRS {
        return Err(format!("{} attributes, more than {MAX_ATTRS}", attrs.len()));
    }
    for (k, v) in attrs {
        if k.is_empty() {
            return Err("empty attribute name".to_owned());
        }
        check_len("attribute name", k, MAX_ATTR_KEY)?;
        check_len("attribute value", v, MAX_ATTR_VALUE)?;
    }
    Ok(())
}

fn validate_event(event: &Event) -> Result<(), String> {
    match event {
        Event::Metric(m) => {
            if m.name.is_empty() {
                return Err("empty metric name".to_owned());
            }
            check_len("metric name", &m.name, MAX_NAME)?;
            check_len("metric unit", &m.unit, MAX_UNIT)?;
            check_attrs(&m.attributes)?;
            if !m.value.is_finite() {
                return Err(format!("metric {} has a non-finite value", m.name));
            }
        }
        Event::Log(l) => {
            check_len("log source", &l.source, MAX_PATH)?;
            check_len("log body", &l.body, MAX_BODY)?;
            check_attrs(&l.attributes)?;
        }
        Event::Fim(f) => {
            if f.path.is_empty() {
                return Err("empty file path".to_owned());
            }
            check_len("file path", &f.path, MAX_PATH)?;
        }
        Event::Status(s) => {
            check_len("agent version", &s.agent_version, MAX_NAME)?;
            if s.collector_errors.len() > MAX_ATTRS {
                return Err("too many collector errors".to_owned());
            }
            for e in &s.collector_errors {
                check_len("collector name", &e.collector, MAX_NAME)?;
                check_len("collector error", &e.reason, MAX_ATTR_VALUE)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use outpost_common::event::{LogRecord, MetricKind, MetricPoint};

    use super::*;

    fn cfg() -> IngestConfig {
        IngestConfig {
            max_frame_bytes: 1 << 20,
            max_batch_events: 3,
            max_in_flight: 4,
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            max_future_skew: Duration::from_secs(60),
            udp_receive_buffer: 1 << 20,
        }
    }

    const NOW: i64 = 1_800_000_000 * 1_000_000_000;

    fn log(time_ns: i64, body: &str) -> Event {
        Event::Log(LogRecord {
            time_ns,
            source: "f".into(),
            severity: None,
            body: body.into(),
            attributes: vec![],
        })
    }

    fn batch(events: Vec<Event>) -> Batch {
        Batch {
            seq: 1,
            low_water_seq: 1,
            created_ns: NOW,
            events,
        }
    }

    #[test]
    fn valid_batches_pass() {
        assert_eq!(
            validate_batch(&batch(vec![log(NOW, "x"), log(NOW - 1, "y")]), &cfg(), NOW),
            Ok(())
        );
    }

    #[test]
    fn every_limit_is_enforced() {
        let c = cfg();
        let cases = [
            (batch(vec![]), "no events"),
            (batch(vec![log(NOW, ""); 4]), "exceed the limit"),
            (batch(vec![log(NOW + 61 * 1_000_000_000, "")]), "timestamp"),
            (batch(vec![log(5, "")]), "timestamp"),
            (batch(vec![log(NOW, &"x".repeat(MAX_BODY + 1))]), "log body"),
            (
                batch(vec![Event::Metric(MetricPoint {
                    name: "m".into(),
                    unit: "1".into(),
                    attributes: vec![],
                    time_ns: NOW,
                    value: f64::NAN,
                    kind: MetricKind::Gauge,
                })]),
                "non-finite",
            ),
            (
                batch(vec![Event::Metric(MetricPoint {
                    name: "m".into(),
                    unit: "x".repeat(MAX_UNIT + 1),
                    attributes: vec![],
                    time_ns: NOW,
                    value: 1.0,
                    kind: MetricKind::Gauge,
                })]),
                "metric unit",
            ),
            (
                batch(vec![Event::Metric(MetricPoint {
                    name: "m".into(),
                    unit: "1".into(),
                    attributes: vec![(String::new(), "v".into())],
                    time_ns: NOW,
                    value: 1.0,
                    kind: MetricKind::Gauge,
                })]),
                "empty attribute",
            ),
        ];
        for (b, want) in cases {
            let err = validate_batch(&b, &c, NOW).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
        let mut b = batch(vec![log(NOW, "")]);
        b.seq = 0;
        assert!(validate_batch(&b, &c, NOW).is_err());
    }

    #[test]
    fn hello_fields_are_bounded() {
        let mut hello = wire::Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            agent_version: "1.0".into(),
            spool_id: 1,
            host: Default::default(),
            status: Default::default(),
        };
        assert_eq!(validate_hello(&hello), Ok(()));
        hello.host.hostname = "h".repeat(MAX_NAME + 1);
        assert!(validate_hello(&hello).unwrap_err().contains("hostname"));
    }

    #[test]
    fn log_limiter_suppresses_and_counts() {
        let l = LogLimiter::new();
        for _ in 0..20 {
            assert_eq!(l.check("k"), Some(0));
        }
        assert_eq!(l.check("k"), None);
        assert_eq!(l.check("other"), Some(0));
    }
}
