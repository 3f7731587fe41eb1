//! A raw QUIC client that plays a misbehaving agent: no certificate, garbage frames, oversized
//! length prefixes, messages out of protocol.

use std::net::SocketAddr;
use std::time::Duration;

use outpost_common::event::{AgentStatus, HostFacts};
use outpost_common::tls::{self, QuicSettings};
use outpost_common::wire::{self, Hello, Message, Welcome};
use quinn::{ConnectionError, RecvStream, SendStream};

use crate::AgentCert;

/// How long any single step of the raw client may take.
const STEP: Duration = Duration::from_secs(30);

fn settings() -> QuicSettings {
    QuicSettings {
        idle_timeout: Duration::from_secs(30),
        keep_alive: Some(Duration::from_secs(5)),
        max_concurrent_bidi_streams: 0,
        mtu_discovery: true,
    }
}

/// A client configuration presenting `cert`, as a real agent would.
pub fn client_with_certificate(cert: &AgentCert) -> quinn::ClientConfig {
    let ca = tls::load_certs(&cert.ca).unwrap_or_else(|e| panic!("{e}"));
    let chain = tls::load_certs(&cert.cert).unwrap_or_else(|e| panic!("{e}"));
    let key = tls::load_key(&cert.key).unwrap_or_else(|e| panic!("{e}"));
    tls::client_config(&ca, chain, key, &settings()).unwrap_or_else(|e| panic!("{e}"))
}

/// A client configuration that trusts `ca` but presents no certificate.
pub fn client_without_certificate(ca: &std::path::Path) -> quinn::ClientConfig {
    let ca = tls::load_certs(ca).unwrap_or_else(|e| panic!("{e}"));
    tls::dangerous::client_config_without_certificate(&ca, &settings())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `f` on a fresh multi-threaded runtime (quinn needs I/O and timers).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"))
        .block_on(f)
}

/// One raw connection to the aggregator. Must be used inside [`block_on`].
#[derive(Debug)]
pub struct RawClient {
    endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

impl RawClient {
    /// Completes the QUIC and TLS handshake (which can succeed on the client even when the server
    /// refuses the certificate: that surfaces at the first stream operation).
    pub async fn connect(
        addr: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<RawClient, String> {
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| format!("cannot bind a client socket: {e}"))?;
        let connecting = endpoint
            .connect_with(config, addr, "localhost")
            .map_err(|e| format!("cannot connect: {e}"))?;
        let conn = tokio::time::timeout(STEP, connecting)
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| format!("handshake failed: {e}"))?;
        Ok(RawClient { endpoint, conn })
    }

    /// Opens the control stream, says Hello and reads the answer, which must be Welcome.
    pub async fn hello(&self) -> Result<(SendStream, RecvStream, Welcome), String> {
        let step = async {
            let (mut tx, mut rx) = self
                .conn
                .open_bi()
                .await
                .map_err(|e| format!("open_bi: {e}"))?;
            wire::write_message(&mut tx, &hello_message())
                .await
                .map_err(|e| format!("sending Hello: {e}"))?;
            match wire::read_message(&mut rx, wire::DEFAULT_MAX_FRAME_BYTES).await {
                Ok(Message::Welcome(w)) => Ok((tx, rx, w)),
                Ok(other) => Err(format!("expected Welcome, got {}", other.name())),
                Err(e) => Err(format!("reading Welcome: {e}")),
            }
        };
        tokio::time::timeout(STEP, step)
            .await
            .map_err(|_| "no answer to Hello in time".to_owned())?
    }

    /// Opens a new stream, writes `bytes` and finishes it. Returns the stream's receive side.
    pub async fn send_on_new_stream(&self, bytes: &[u8]) -> Result<RecvStream, String> {
        let (mut tx, rx) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| format!("open_bi: {e}"))?;
        tx.write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let _ = tx.finish();
        Ok(rx)
    }

    /// Waits until the aggregator closes the connection; returns how.
    pub async fn closed(&self) -> Result<ConnectionError, String> {
        tokio::time::timeout(STEP, self.conn.closed())
            .await
            .map_err(|_| "the connection stayed open".to_owned())
    }

    /// Closes the connection and lets the close reach the peer.
    pub async fn finish(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// The application error code of a connection the peer closed, if it closed it that way.
pub fn application_code(e: &ConnectionError) -> Option<u32> {
    match e {
        ConnectionError::ApplicationClosed(c) => u32::try_from(c.error_code.into_inner()).ok(),
        _ => None,
    }
}

/// A plausible Hello, as an agent with an empty spool would send it.
pub fn hello_message() -> Message {
    Message::Hello(Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        agent_version: "e2e-raw-client".to_owned(),
        spool_id: rand::random_range(1..=u64::MAX),
        host: HostFacts {
            hostname: "raw-client".to_owned(),
            ..HostFacts::default()
        },
        status: AgentStatus {
            time_ns: outpost_common::time::now_ns(),
            ..AgentStatus::default()
        },
        labels: Vec::new(),
    })
}

/// The frame of `msg`, length prefix included.
pub fn frame(msg: &Message) -> Vec<u8> {
    wire::encode(msg).unwrap_or_else(|e| panic!("cannot encode {}: {e}", msg.name()))
}

/// A client configuration presenting `cert` whose handshake stops when the aggregator's
/// certificate arrives: it says so on `entered`, then waits for `release` before checking the
/// certificate as an agent would. Meanwhile the aggregator counts the handshake as in progress.
pub fn client_that_stalls(
    cert: &AgentCert,
    entered: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
) -> quinn::ClientConfig {
    use std::sync::{Arc, Mutex};

    use quinn::crypto::rustls::QuicClientConfig;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct Stalling {
        inner: Arc<WebPkiServerVerifier>,
        gate: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
    }

    impl ServerCertVerifier for Stalling {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((entered, release)) = gate {
                let _ = entered.send(());
                let _ = release.recv();
            }
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    let provider = tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for ca in tls::load_certs(&cert.ca).unwrap_or_else(|e| panic!("{e}")) {
        roots.add(ca).unwrap_or_else(|e| panic!("the CA: {e}"));
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap_or_else(|e| panic!("a verifier: {e}"));
    let chain = tls::load_certs(&cert.cert).unwrap_or_else(|e| panic!("{e}"));
    let key = tls::load_key(&cert.key).unwrap_or_else(|e| panic!("{e}"));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| panic!("{e}"))
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Stalling {
            inner,
            gate: Mutex::new(Some((entered, release))),
        }))
        .with_client_auth_cert(chain, key)
        .unwrap_or_else(|e| panic!("the agent certificate: {e}"));
    config.alpn_protocols = vec![wire::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(config).unwrap_or_else(|e| panic!("{e}"));
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_uni_streams(0u32.into());
    client.transport_config(Arc::new(transport));
    client
}
