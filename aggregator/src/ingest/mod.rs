//! Agent ingest: the QUIC listener, one session per connection, validation, and
//! acknowledgement after the store commits.
//!
//! A connection is admitted only with a client certificate issued by the agent CA and not
//! revoked; the agent's id is read from that certificate and nowhere else. The one exception
//! is an enrollment connection (ALPN [`outpost_common::enroll::ALPN`], with or without a
//! certificate): it is answered one enrollment request and closed, never admitted as a
//! session. A connection without a certificate on the agent ALPN is refused. The first stream is
//! the control stream (Hello → Welcome, then heartbeats); every other stream carries one batch
//! and gets one Ack or Reject. Garbage, oversized or out-of-protocol frames close that agent's
//! connection with an error code, are counted and logged (rate-limited), and never affect other
//! agents.
//!
//! The parts, in the order a connection meets them:
//!
//! - this module: [`Ingest`] binds the listener and accepts connections, refusing those without
//!   a valid, unrevoked agent certificate;
//! - `enrollment`: the async side of an enrollment connection (the decision is
//!   [`crate::enroll`]'s);
//! - `connection`: the async driver of one connection, which only moves frames between the
//!   QUIC streams and the session, runs its timer and hands its work to the store writer;
//! - [`session`]: the protocol of one connection as a state machine without I/O (Hello, Welcome,
//!   heartbeats, batches, Acks and Rejects, timeouts, closing);
//! - [`sessions`]: the current connection of each agent, so a newer connection replaces an
//!   older one;
//! - [`validation`]: the bounds on what an agent may send;
//! - `tls`: the server configuration, reloaded when the files change.

mod connection;
mod enrollment;
pub mod session;
pub mod sessions;
mod tls;
pub mod validation;

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use outpost_common::tls as common_tls;
use outpost_common::wire::close_code;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, warn};

use crate::enroll::Enroller;
use crate::internal_events::{
    ConnectionRefused, Counters, IngestSummary, Refusal, SummaryGate, Telemetry,
};
use crate::store::StoreWriter;
use connection::SessionHandle;
use sessions::{ConnectionId, Sessions};

pub use tls::TlsFiles;
pub use validation::{validate_batch, validate_event, validate_hello};

/// Limits and timings of ingest.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub max_frame_bytes: u32,
    pub max_batch_events: u32,
    pub max_in_flight: u32,
    /// An agent must say Hello within this time after the TLS handshake.
    pub handshake_timeout: Duration,
    /// Connections silent for this long are closed (by QUIC, and by the session when no
    /// heartbeat or batch arrives).
    pub idle_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_future_skew: Duration,
    /// Bytes asked for the UDP socket's receive buffer.
    pub udp_receive_buffer: usize,
    /// TLS handshakes in progress at most ([`Ingest::run`]).
    pub max_handshakes: usize,
}

/// How often the ingest summary is written, when a counter moved.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Shared state of the ingest service.
#[derive(Debug)]
struct Shared {
    config: Arc<IngestConfig>,
    writer: StoreWriter,
    telemetry: Arc<Telemetry>,
    /// Serials on the CRL; replaced only while holding `sessions` (lock order: sessions, then
    /// revoked).
    revoked: RwLock<HashSet<Vec<u8>>>,
    sessions: Mutex<Sessions<SessionHandle>>,
    next_connection: AtomicU64,
    /// Answers enrollments and renewals; `None` when `[enroll] enabled = false`.
    enroller: Option<Arc<Enroller>>,
    /// When the server certificate in use expires, nanoseconds since the epoch.
    server_not_after_ns: AtomicI64,
    /// A permit per handshake in progress, up to `config.max_handshakes`.
    handshakes: Arc<Semaphore>,
}

impl Shared {
    fn sessions(&self) -> MutexGuard<'_, Sessions<SessionHandle>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(serial)
    }
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

impl Ingest {
    /// Binds the listener; enrollments and renewals go to `enroller` (`None`: refused).
    ///
    /// `reset_key` (72 bytes) keys QUIC stateless resets and connection ids. Kept across
    /// restarts, it lets a restarted aggregator tell agents at once that their old connections
    /// are gone, instead of leaving them to wait for the idle timeout.
    pub fn bind(
        listen: std::net::SocketAddr,
        tls_files: TlsFiles,
        config: IngestConfig,
        writer: StoreWriter,
        enroller: Option<Arc<Enroller>>,
        reset_key: &[u8],
    ) -> anyhow::Result<Ingest> {
        let loaded = tls::load_server_config(&tls_files, &config)?;
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
            Some(loaded.server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (udp): {e}"))?;
        Ok(Ingest {
            endpoint,
            shared: Arc::new(Shared {
                handshakes: Arc::new(Semaphore::new(config.max_handshakes.max(1))),
                config: Arc::new(config),
                writer,
                telemetry: Arc::new(Telemetry::new()),
                revoked: RwLock::new(loaded.revoked),
                sessions: Mutex::new(Sessions::default()),
                next_connection: AtomicU64::new(1),
                enroller,
                server_not_after_ns: AtomicI64::new(loaded.server_not_after_ns),
            }),
            tls_files,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Ingest's telemetry, which outlives the service (for `/metrics`).
    pub fn telemetry(&self) -> Arc<Telemetry> {
        Arc::clone(&self.shared.telemetry)
    }

    /// What ingest has done so far.
    pub fn counters(&self) -> Counters {
        self.shared.telemetry.counters()
    }

    /// A handle that outlives [`Ingest::run`]'s borrow: for the API to reload the TLS files
    /// (closing revoked agents' connections at once) and to read the server certificate's
    /// expiry.
    pub fn handle(&self) -> IngestHandle {
        IngestHandle {
            endpoint: self.endpoint.clone(),
            shared: Arc::clone(&self.shared),
            tls_files: self.tls_files.clone(),
        }
    }

    /// Accepts connections until `shutdown`, then closes them and waits for the endpoint to idle.
    ///
    /// Reloads the TLS files when they change (checked every `reload_interval`) or on SIGHUP,
    /// and writes the ingest summary every minute when something happened, and at the end.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, reload_interval: Duration) {
        let mut reload = tokio::time::interval(reload_interval);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut summary = tokio::time::interval_at(
            tokio::time::Instant::now() + SUMMARY_INTERVAL,
            SUMMARY_INTERVAL,
        );
        summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gate = SummaryGate::default();
        let mut stamp = self.tls_files.stamp();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    self.accept(incoming);
                }
                _ = reload.tick() => {
                    let now = self.tls_files.stamp();
                    if now != stamp {
                        stamp = now;
                        // A failure is logged and counted; the previous files stay in use.
                        let _ = self.reload_tls();
                    }
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    stamp = self.tls_files.stamp();
                    let _ = self.reload_tls();
                }
                _ = summary.tick() => {
                    let counters = self.counters();
                    if gate.changed(counters) {
                        let sessions = self.shared.sessions().len();
                        let fim_trail_breaks = self.shared.writer.stats().fim_trail_breaks;
                        self.shared.telemetry.emit(IngestSummary { counters, sessions, fim_trail_breaks, last: false });
                    }
                }
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        self.endpoint
            .close(close_code::SHUTDOWN.into(), b"aggregator shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
        self.shared.telemetry.emit(IngestSummary {
            counters: self.counters(),
            sessions: self.shared.sessions().len(),
            fim_trail_breaks: self.shared.writer.stats().fim_trail_breaks,
            last: true,
        });
    }
}

impl Ingest {
    /// Starts the handshake of a new connection, or refuses it at once when
    /// `max_handshakes` are already in progress.
    ///
    /// A fleet reconnecting at once (after an aggregator restart) brings thousands of handshakes
    /// within seconds. Started all together they share the CPU, each takes longer than the
    /// agents' connect timeout, and they all fail and start again: the work is wasted and the
    /// fleet does not come back. Bounded, those in progress finish quickly; the others are told
    /// at once (a refusal costs one datagram, no cryptography) and retry after their backoff.
    fn accept(&self, incoming: quinn::Incoming) {
        match Arc::clone(&self.shared.handshakes).try_acquire_owned() {
            Ok(permit) => {
                let id = ConnectionId(self.shared.next_connection.fetch_add(1, Ordering::Relaxed));
                tokio::spawn(admit(self.shared.clone(), incoming, id, permit));
            }
            Err(_) => {
                let remote = incoming.remote_address();
                incoming.refuse();
                self.shared.telemetry.emit(ConnectionRefused {
                    remote,
                    refusal: Refusal::Busy {
                        limit: self.shared.config.max_handshakes,
                    },
                });
            }
        }
    }
}

/// What the API may ask of the running ingest service.
#[derive(Clone)]
pub struct IngestHandle {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tls_files: TlsFiles,
}

impl std::fmt::Debug for IngestHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestHandle")
            .field("tls_files", &self.tls_files)
            .finish_non_exhaustive()
    }
}

impl IngestHandle {
    /// Reloads the TLS files now ([`Ingest::reload_tls`]).
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        tls::reload(&self.endpoint, &self.shared, &self.tls_files)
    }

    /// The address ingest listens on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.endpoint.local_addr()
    }

    /// When the server certificate in use expires, nanoseconds since the epoch.
    pub fn server_certificate_not_after_ns(&self) -> i64 {
        self.shared.server_not_after_ns.load(Ordering::Relaxed)
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

/// Completes the handshake of an incoming connection and checks the agent's certificate; an
/// admitted connection is then driven until it ends. An enrollment connection is answered
/// instead, and never admitted.
async fn admit(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    id: ConnectionId,
    handshake: OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let telemetry = &shared.telemetry;
    let handshaken = incoming.await;
    drop(handshake);
    let conn = match handshaken {
        Ok(c) => c,
        Err(e) => {
            let error = e.to_string();
            telemetry.emit(ConnectionRefused {
                remote,
                refusal: Refusal::HandshakeFailed { error: &error },
            });
            return;
        }
    };
    if common_tls::is_enrollment(&conn) {
        return enrollment::serve(shared, conn, remote).await;
    }
    let identity = match common_tls::identity_from_connection(&conn) {
        Ok(identity) => identity,
        Err(e) => {
            let error = e.to_string();
            telemetry.emit(ConnectionRefused {
                remote,
                refusal: Refusal::NoIdentity { error: &error },
            });
            conn.close(close_code::UNAUTHORIZED.into(), error.as_bytes());
            return;
        }
    };
    if shared.is_revoked(&identity.serial) {
        telemetry.emit(ConnectionRefused {
            remote,
            refusal: Refusal::Revoked {
                agent_id: &identity.agent_id,
                serial: &identity.serial_hex(),
            },
        });
        conn.close(close_code::UNAUTHORIZED.into(), b"certificate revoked");
        return;
    }
    debug!(agent_id = %identity.agent_id, %remote, connection = id.0, "connection admitted");
    connection::drive(shared, conn, identity, remote, id).await;
}

#[cfg(test)]
pub(crate) fn test_config() -> IngestConfig {
    IngestConfig {
        max_frame_bytes: 1 << 20,
        max_batch_events: 3,
        max_in_flight: 2,
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        heartbeat_interval: Duration::from_secs(10),
        max_future_skew: Duration::from_secs(60),
        udp_receive_buffer: 1 << 20,
        max_handshakes: 256,
    }
}
