//! Enrollment and renewal over real QUIC, against an in-process ingest service: an agent with
//! only a token enrolls, its certificate then opens a session, it renews over that session;
//! and every way to get a certificate it should not have is refused.

// The helpers below are test code too (clippy's test allowances apply to cfg(test) items).
#![cfg(test)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_aggregator::enroll::token::{self, TokenSpec};
use outpost_aggregator::enroll::{EnrollConfig, Enroller};
use outpost_aggregator::ingest::{Ingest, IngestConfig, TlsFiles};
use outpost_aggregator::store::{SqliteStore, StateStore, StoreWriter, WriterConfig};
use outpost_common::enroll::{
    EnrollRequest, EnrollResponse, Issued, RenewRequest, RenewResponse, TokenBody,
};
use outpost_common::event::{AgentStatus, HostFacts};
use outpost_common::tls::{self, QuicSettings};
use outpost_common::wire::{self, Hello, Message};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(20);

fn settings() -> QuicSettings {
    QuicSettings {
        idle_timeout: Duration::from_secs(30),
        keep_alive: Some(Duration::from_secs(5)),
        max_concurrent_bidi_streams: 0,
        mtu_discovery: true,
    }
}

/// An aggregator's ingest service with enrollment, on loopback, over a fresh PKI and store.
struct Aggregator {
    dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    ca_der: Vec<u8>,
}

impl Aggregator {
    async fn start() -> Aggregator {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("tls");
        outpost_aggregator::pki::init(&pki, &[], Duration::from_secs(3600 * 24), false).unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
        let (writer, _join) =
            StoreWriter::spawn(store.clone(), store.clone(), WriterConfig::default()).unwrap();
        let enroller = Arc::new(Enroller::new(
            store.clone(),
            EnrollConfig {
                pki_dir: pki.clone(),
                // The shortest allowed, as the brief's deployments may test renewal with.
                agent_validity: Duration::from_secs(60),
                offline_after: Duration::from_secs(45),
            },
        ));
        let ingest = Ingest::bind(
            "127.0.0.1:0".parse().unwrap(),
            TlsFiles {
                ca: pki.join("ca.pem"),
                cert: pki.join("server.pem"),
                key: pki.join("server.key"),
                crl: pki.join("crl.pem"),
            },
            IngestConfig {
                max_frame_bytes: 1 << 20,
                max_batch_events: 100,
                max_in_flight: 4,
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                heartbeat_interval: Duration::from_secs(10),
                max_future_skew: Duration::from_secs(60),
                udp_receive_buffer: 1 << 20,
                max_handshakes: 256,
            },
            writer,
            Some(enroller),
            &[7u8; 72],
        )
        .unwrap();
        let addr = ingest.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(ingest.run(stop_rx, Duration::from_secs(1)));
        let ca_der = tls::load_certs(&pki.join("ca.pem")).unwrap()[0].to_vec();
        Aggregator {
            dir,
            store,
            addr,
            stop,
            task,
            ca_der,
        }
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// An enrollment token as `token create --enroll` makes it, stored.
    fn token(&self, uses: u32, expires_in_ns: i64) -> TokenBody {
        let now = outpost_common::time::now_ns();
        let made = token::create(
            TokenSpec {
                expires_ns: now + expires_in_ns,
                max_uses: Some(uses),
                labels: vec![("site".into(), "lab".into())],
                allow_reenroll: false,
                endpoints: vec![self.addr.to_string()],
                ca_der: self.ca_der.clone(),
            },
            now,
        )
        .unwrap();
        self.store.insert_enrollment_token(&made.record).unwrap();
        TokenBody::parse(&made.text).unwrap()
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(STEP, self.task).await;
    }
}

/// A signing request for `agent_id` as an agent makes it, and its key.
fn csr(agent_id: &str) -> (Vec<u8>, KeyPair) {
    csr_with(agent_id, |_| {})
}

fn csr_with(agent_id: &str, spoil: impl FnOnce(&mut CertificateParams)) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = vec![rcgen::SanType::URI(
        tls::agent_uri(agent_id).try_into().unwrap(),
    )];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    spoil(&mut p);
    (p.serialize_request(&key).unwrap().der().to_vec(), key)
}

fn request(token: &TokenBody, agent_id: &str, csr_der: Vec<u8>) -> EnrollRequest {
    EnrollRequest {
        token_id: token.id,
        secret: token.secret,
        agent_id: agent_id.to_owned(),
        csr_der,
        agent_version: "test".to_owned(),
    }
}

/// Dials `addr` as an enrolling agent pinning `ca_sha256`, with server name `localhost`.
async fn dial_enroll(addr: SocketAddr, ca_sha256: [u8; 32]) -> Result<quinn::Connection, String> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(tls::pinned_client_config(ca_sha256, &settings()).unwrap());
    let connecting = endpoint
        .connect(addr, "localhost")
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(STEP, connecting)
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())
}

/// One enrollment: the request on its own stream, the answer read back.
async fn enroll(addr: SocketAddr, token: &TokenBody, req: &EnrollRequest) -> EnrollResponse {
    let conn = dial_enroll(addr, token.ca_sha256).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::write_message(&mut send, &Message::EnrollRequest(req.clone()))
        .await
        .unwrap();
    send.finish().unwrap();
    let answer = tokio::time::timeout(STEP, wire::read_message(&mut recv, 1 << 20))
        .await
        .unwrap()
        .unwrap();
    conn.close(0u32.into(), b"done");
    match answer {
        Message::EnrollResponse(r) => r,
        other => panic!("expected EnrollResponse, got {}", other.name()),
    }
}

fn refused(response: EnrollResponse) -> String {
    match response {
        EnrollResponse::Refused { reason } => reason,
        EnrollResponse::Issued(i) => panic!("issued a certificate to {}", i.agent_id),
    }
}

fn issued(response: EnrollResponse) -> Issued {
    match response {
        EnrollResponse::Issued(i) => i,
        EnrollResponse::Refused { reason } => panic!("refused: {reason}"),
    }
}

/// An agent session with an issued certificate and its key: Hello answered with Welcome.
async fn session(addr: SocketAddr, issued: &Issued, key: &KeyPair) -> quinn::Connection {
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(issued.ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(tls::client_config(&ca, chain, key, &settings()).unwrap());
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = Message::Hello(Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        agent_version: "test".to_owned(),
        spool_id: 1,
        host: HostFacts {
            hostname: "enrolled".to_owned(),
            ..HostFacts::default()
        },
        status: AgentStatus {
            time_ns: outpost_common::time::now_ns(),
            ..AgentStatus::default()
        },
        labels: Vec::new(),
    });
    wire::write_message(&mut send, &hello).await.unwrap();
    let welcome = tokio::time::timeout(STEP, wire::read_message(&mut recv, 1 << 20))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(welcome, Message::Welcome(_)),
        "expected Welcome, got {}",
        welcome.name()
    );
    // Keep the control stream open: dropping its send half would end the session.
    std::mem::forget(send);
    conn
}

/// A renewal on its own stream of an established session.
async fn renew(conn: &quinn::Connection, csr_der: Vec<u8>) -> RenewResponse {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::write_message(&mut send, &Message::RenewRequest(RenewRequest { csr_der }))
        .await
        .unwrap();
    send.finish().unwrap();
    match tokio::time::timeout(STEP, wire::read_message(&mut recv, 1 << 20))
        .await
        .unwrap()
        .unwrap()
    {
        Message::RenewResponse(r) => r,
        other => panic!("expected RenewResponse, got {}", other.name()),
    }
}

fn listed_serials(pki: &Path, agent_id: &str) -> Vec<String> {
    outpost_aggregator::pki::certificates_of(pki, agent_id)
        .unwrap()
        .into_iter()
        .map(|c| c.serial_hex)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolls_opens_a_session_with_its_certificate_and_renews_over_it() {
    let agg = Aggregator::start().await;
    let token = agg.token(1, 3_600_000_000_000);
    let (der, key) = csr("web-1");
    let req = request(&token, "web-1", der);
    let cert = issued(enroll(agg.addr, &token, &req).await);
    assert_eq!(cert.agent_id, "web-1");
    assert_eq!(cert.labels, [("site".to_owned(), "lab".to_owned())]);
    let identity =
        tls::identity_from_cert(&CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap())
            .unwrap();
    assert_eq!(identity.agent_id, "web-1");
    // Valid for the configured minute (the backdating is before now, not after).
    let left = identity.not_after_ns - outpost_common::time::now_ns();
    assert!(left > 0 && left <= 61_000_000_000, "{left}");
    assert_eq!(listed_serials(&agg.pki(), "web-1"), [identity.serial_hex()]);

    // A second use of a one-use token is refused, even with a new key and id.
    let (der, _) = csr("web-2");
    let reason = refused(enroll(agg.addr, &token, &request(&token, "web-2", der)).await);
    assert!(reason.contains("used up"), "{reason}");
    // The same request again (a replay) is refused too.
    let reason = refused(enroll(agg.addr, &token, &req).await);
    assert!(
        reason.contains("used up") || reason.contains("certified before"),
        "{reason}"
    );

    // The certificate opens a session; over it the agent renews with a new key.
    let conn = session(agg.addr, &cert, &key).await;
    let (der, new_key) = csr("web-1");
    let renewed = match renew(&conn, der.clone()).await {
        RenewResponse::Issued(i) => i,
        RenewResponse::Refused { reason } => panic!("renewal refused: {reason}"),
    };
    let new_identity = tls::identity_from_cert(
        &CertificateDer::from_pem_slice(renewed.cert_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(new_identity.agent_id, "web-1");
    // Both certificates are listed, newest first, so that a revocation takes both.
    assert_eq!(
        listed_serials(&agg.pki(), "web-1"),
        [new_identity.serial_hex(), identity.serial_hex()]
    );
    // The same key again, and a request for another id, are refused; the session goes on.
    match renew(&conn, der).await {
        RenewResponse::Refused { reason } => {
            assert!(reason.contains("certified before"), "{reason}")
        }
        RenewResponse::Issued(_) => panic!("a replayed renewal was issued"),
    }
    let (other, _) = csr("db-1");
    match renew(&conn, other).await {
        RenewResponse::Refused { reason } => {
            assert!(reason.contains("urn:outpost:agent:web-1"), "{reason}");
        }
        RenewResponse::Issued(_) => panic!("a renewal for another id was issued"),
    }
    // The renewed certificate opens a session of its own.
    let _renewed_session = session(agg.addr, &renewed, &new_key).await;
    // Revoking the agent revokes both of its certificates.
    let report = outpost_aggregator::pki::revoke_agent(&agg.pki(), "web-1", "test").unwrap();
    assert_eq!(report.serials_hex.len(), 2);
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_forged_and_misbuilt_requests_get_no_certificate() {
    let agg = Aggregator::start().await;
    let expired = agg.token(5, 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (der, _) = csr("web-1");
    let reason = refused(enroll(agg.addr, &expired, &request(&expired, "web-1", der)).await);
    assert!(reason.contains("expired"), "{reason}");

    let token = agg.token(5, 3_600_000_000_000);
    let (der, _) = csr("web-1");
    let mut forged = request(&token, "web-1", der);
    forged.secret[0] ^= 1;
    let reason = refused(enroll(agg.addr, &token, &forged).await);
    assert!(reason.contains("unknown enrollment token"), "{reason}");

    let (ca, _) = csr_with("web-1", |p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    });
    let reason = refused(enroll(agg.addr, &token, &request(&token, "web-1", ca)).await);
    assert!(reason.contains("CA:TRUE"), "{reason}");

    let (extra, _) = csr_with("web-1", |p| {
        p.subject_alt_names
            .push(rcgen::SanType::DnsName("evil.example".try_into().unwrap()));
    });
    let reason = refused(enroll(agg.addr, &token, &request(&token, "web-1", extra)).await);
    assert!(reason.contains("subject alternative names"), "{reason}");

    // A good request once, then its replay with the token still usable.
    let (der, _) = csr("web-1");
    let good = request(&token, "web-1", der);
    issued(enroll(agg.addr, &token, &good).await);
    let reason = refused(enroll(agg.addr, &token, &good).await);
    // The id is now held, and the key certified: either refusal keeps the certificate away.
    assert!(
        reason.contains("certified before") || reason.contains("held by another agent"),
        "{reason}"
    );
    // None of the refusals spent a use: one enrollment so far.
    let stored = agg
        .store
        .enrollment_token(&token.id_hex())
        .unwrap()
        .unwrap();
    assert_eq!(stored.uses, 1);
    // Every request is in the audit log.
    let audit = agg.store.audit(None, 100).unwrap();
    assert!(audit.iter().filter(|e| e.method == "QUIC").count() >= 6);
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_pinning_another_ca_fails_the_handshake() {
    let agg = Aggregator::start().await;
    let mut wrong = [0u8; 32];
    wrong[0] = 1;
    let err = dial_enroll(agg.addr, wrong).await.unwrap_err();
    assert!(err.contains("CA is not the one the token names"), "{err}");
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_an_enrollment_connection_closes_it_and_admits_nothing() {
    let agg = Aggregator::start().await;
    let token = agg.token(1, 3_600_000_000_000);
    let conn = dial_enroll(agg.addr, token.ca_sha256).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0xff; 64]).await.unwrap();
    send.finish().unwrap();
    let closed = tokio::time::timeout(STEP, conn.closed()).await.unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed}"
    );
    // A Hello on an enrollment connection is not a session either.
    let conn = dial_enroll(agg.addr, token.ca_sha256).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let hello = Message::Hello(Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        agent_version: "test".to_owned(),
        spool_id: 1,
        host: HostFacts::default(),
        status: AgentStatus::default(),
        labels: Vec::new(),
    });
    wire::write_message(&mut send, &hello).await.unwrap();
    let closed = tokio::time::timeout(STEP, conn.closed()).await.unwrap();
    assert!(
        closed.to_string().contains("expected EnrollRequest"),
        "{closed}"
    );
    assert!(agg.store.agents().unwrap().is_empty());
    agg.stop().await;
}
