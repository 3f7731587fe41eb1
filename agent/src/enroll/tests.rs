use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use outpost_common::enroll::{TOKEN_VERSION, ca_sha256};

use super::*;
use crate::test_ca::TestCa;

fn token(ca: &TestCa, endpoints: &[String]) -> TokenBody {
    TokenBody {
        version: TOKEN_VERSION,
        id: [1; 8],
        secret: [2; 32],
        ca_sha256: ca_sha256(&ca.der()),
        endpoints: endpoints.to_vec(),
    }
}

/// A configuration in `dir` whose TLS files are in `dir/tls`.
fn config_in(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    let tls = dir.join("tls");
    std::fs::write(
        &path,
        format!(
            "# the agent\ndata_dir = \"{d}/data\"\n\n[aggregator]\n# the CA\nca = \"{t}/ca.pem\"\n\
             cert = \"{t}/agent.pem\"\nkey = \"{t}/agent.key\"\nenroll_token = \"{d}/enroll.token\"\n{extra}",
            d = dir.display(),
            t = tls.display()
        ),
    )
    .unwrap();
    path
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn tokens_come_from_the_argument_or_a_file_and_bad_ones_say_why() {
    let ca = TestCa::new();
    let body = token(&ca, &["agg.example:4433".to_owned()]);
    let text = body.encode();
    assert_eq!(read_token(Some(&text), None).unwrap(), body);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("enroll.token");
    std::fs::write(&file, format!("{text}\n")).unwrap();
    assert_eq!(read_token(None, Some(&file)).unwrap(), body);

    let e = read_token(Some("outpost-enroll-@@"), None).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--token: not an enrollment token"),
        "{e}"
    );
    assert_eq!(e.exit_code(), exit::USAGE);
    std::fs::write(&file, "hello").unwrap();
    let e = read_token(None, Some(&file)).unwrap_err().to_string();
    assert!(e.contains("enroll.token: not an enrollment token"), "{e}");
    let e = read_token(None, Some(&dir.path().join("missing")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing: cannot read"), "{e}");
    assert!(read_token(None, None).is_err());
}

#[test]
fn the_agent_id_defaults_to_a_valid_host_name() {
    assert_eq!(
        agent_id(None, Some("web-1.example")).unwrap(),
        "web-1.example"
    );
    assert_eq!(agent_id(Some("db_2"), Some("web-1")).unwrap(), "db_2");
    let e = agent_id(None, Some("wéb")).unwrap_err().to_string();
    assert!(
        e.contains("host name `wéb` is not a valid agent id") && e.contains("--id NAME"),
        "{e}"
    );
    let e = agent_id(None, None).unwrap_err().to_string();
    assert!(e.contains("--id NAME"), "{e}");
    let e = agent_id(Some("a b"), Some("web-1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--id `a b` is not a valid agent id"), "{e}");
}

#[test]
fn an_enrolled_agent_is_not_replaced_without_force() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), "");
    let body = token(&ca, &["agg.example:4433".to_owned()]);
    Plan::new(body.clone(), "web-1".to_owned(), &path, false).unwrap();
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/agent.pem"), "x").unwrap();
    let e = Plan::new(body.clone(), "web-1".to_owned(), &path, false).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(e.exit_code(), exit::USAGE);
    Plan::new(body, "web-1".to_owned(), &path, true).unwrap();
}

#[test]
fn a_first_start_enrolls_only_when_not_enrolled_and_a_token_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), "");
    let config = crate::config::load_unenrolled(&path).unwrap();
    assert_eq!(first_start_token(&config, None), None);
    assert_eq!(
        first_start_token(&config, Some("outpost-enroll-x".to_owned())),
        Some(TokenSource::Env("outpost-enroll-x".to_owned()))
    );
    let file = dir.path().join("enroll.token");
    std::fs::write(&file, "outpost-enroll-x").unwrap();
    assert_eq!(
        first_start_token(&config, None),
        Some(TokenSource::File(file.clone()))
    );
    assert_eq!(
        first_start_token(&config, Some(" ".to_owned())),
        Some(TokenSource::File(file))
    );
    // Enrolled: a certificate, and an aggregator named.
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/agent.pem"), "x").unwrap();
    assert!(first_start_token(&config, None).is_some());
    let path = config_in(dir.path(), "endpoint = \"quic://agg.example:4433\"\n");
    let config = crate::config::load_unenrolled(&path).unwrap();
    assert_eq!(first_start_token(&config, None), None);
}

/// A stand-in aggregator: answers one enrollment with `answer(request)`.
struct Aggregator {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
}

impl Aggregator {
    fn new(ca: &TestCa, name: &str) -> Aggregator {
        let (cert, key) = ca.server(name);
        let config = tls::server_config(
            &[ca.der()],
            vec![cert],
            key,
            Vec::new(),
            &Default::default(),
        )
        .unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        Aggregator { endpoint, addr }
    }

    fn answer(
        &self,
        answer: impl FnOnce(EnrollRequest) -> EnrollResponse + Send + 'static,
    ) -> tokio::task::JoinHandle<Option<EnrollRequest>> {
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            let conn = endpoint.accept().await?.await.ok()?;
            let (mut tx, mut rx) = conn.accept_bi().await.ok()?;
            let Ok(Message::EnrollRequest(request)) =
                wire::read_message(&mut rx, wire::DEFAULT_MAX_FRAME_BYTES).await
            else {
                return None;
            };
            let response = answer(request.clone());
            wire::write_message(&mut tx, &Message::EnrollResponse(response))
                .await
                .ok()?;
            let _ = tx.finish();
            conn.closed().await;
            Some(request)
        })
    }
}

fn issue(ca: &TestCa, request: &EnrollRequest, labels: Vec<(String, String)>) -> EnrollResponse {
    let cert_pem = ca.sign(&request.csr_der, time::OffsetDateTime::now_utc(), 60);
    EnrollResponse::Issued(Issued {
        agent_id: request.agent_id.clone(),
        cert_pem,
        ca_pem: ca.pem(),
        labels,
        not_after_ns: 0,
    })
}

#[tokio::test]
async fn enrollment_writes_the_identity_and_points_the_configuration_at_the_aggregator() {
    let ca = Arc::new(TestCa::new());
    let aggregator = Aggregator::new(&ca, "localhost");
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), "");
    // The first endpoint answers nothing; the second is the aggregator.
    let endpoints = vec![
        "localhost:9".to_owned(),
        format!("localhost:{}", aggregator.addr.port()),
    ];
    let mut plan = Plan::new(token(&ca, &endpoints), "web-1".to_owned(), &path, false).unwrap();
    plan.config.aggregator.connect_timeout = Duration::from_secs(2);
    let issuer = ca.clone();
    let served =
        aggregator.answer(move |r| issue(&issuer, &r, vec![("env".to_owned(), "prod".to_owned())]));
    let endpoint = enroll(&plan).await.unwrap();
    assert_eq!(endpoint, endpoints[1]);
    let request = served.await.unwrap().unwrap();
    assert_eq!((request.token_id, request.secret), ([1; 8], [2; 32]));
    assert_eq!(request.agent_id, "web-1");

    let tls_dir = dir.path().join("tls");
    let key = tls_dir.join("agent.key");
    assert_eq!(mode(&key), identity::key_access().0);
    assert_eq!(mode(&tls_dir.join("agent.pem")), 0o644);
    assert_eq!(mode(&tls_dir.join("ca.pem")), 0o644);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# the agent\n") && text.contains("# the CA\n"),
        "{text}"
    );
    let v = crate::config::load(&path).unwrap();
    assert_eq!(
        v.aggregators(),
        endpoints[1].replace("localhost", "quic://localhost")
    );
    assert_eq!(v.targets[0].server_name, "localhost");
    assert_eq!(v.config.labels["env"], "prod");
    crate::config::check_tls_files(&v).unwrap();

    // Enrolled now: a second enrollment needs --force.
    let e = Plan::new(token(&ca, &endpoints), "web-1".to_owned(), &path, false).unwrap_err();
    assert!(matches!(e, EnrollError::AlreadyEnrolled { .. }), "{e}");
}

#[tokio::test]
async fn a_refusal_a_foreign_ca_and_a_certificate_for_someone_else_are_told_apart() {
    let ca = Arc::new(TestCa::new());
    let aggregator = Aggregator::new(&ca, "127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), "");
    let endpoints = vec![format!("127.0.0.1:{}", aggregator.addr.port())];
    let plan = Plan::new(token(&ca, &endpoints), "web-1".to_owned(), &path, false).unwrap();

    aggregator.answer(|_| EnrollResponse::Refused {
        reason: "token expired".to_owned(),
    });
    let e = enroll(&plan).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("refused the enrollment: token expired"),
        "{e}"
    );
    assert_eq!(e.exit_code(), exit::REFUSED);

    let issuer = ca.clone();
    aggregator.answer(move |mut r| {
        r.agent_id = "web-2".to_owned();
        issue(&issuer, &r, Vec::new())
    });
    let e = enroll(&plan).await.unwrap_err();
    assert!(e.to_string().contains("not `web-1`"), "{e}");
    assert_eq!(e.exit_code(), exit::PROTOCOL);

    // A token for another CA: the handshake fails and says so.
    let other = TestCa::new();
    let foreign = Plan::new(token(&other, &endpoints), "web-1".to_owned(), &path, false).unwrap();
    let _served = aggregator.answer(|_| unreachable!("the agent stops at the handshake"));
    let e = enroll(&foreign).await.unwrap_err();
    assert!(matches!(e, EnrollError::PinMismatch { .. }), "{e}");
    assert!(e.to_string().contains("another aggregator"), "{e}");
    assert_eq!(e.exit_code(), exit::PROTOCOL);

    // Nothing was written.
    assert!(!dir.path().join("tls").exists());
    assert!(crate::config::load(&path).is_err());
}

#[test]
fn a_ca_that_is_not_the_tokens_is_refused_before_anything_is_written() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let path = config_in(dir.path(), "");
    let plan = Plan::new(
        token(&ca, &["a.example:1".to_owned()]),
        "web-1".to_owned(),
        &path,
        false,
    )
    .unwrap();
    let made = identity::new_key_and_csr("web-1").unwrap();
    let request = EnrollRequest {
        token_id: [1; 8],
        secret: [2; 32],
        agent_id: "web-1".to_owned(),
        csr_der: made.csr_der,
        agent_version: String::new(),
    };
    let EnrollResponse::Issued(issued) = issue(&other, &request, Vec::new()) else {
        unreachable!()
    };
    let e = install(&plan, "a.example:1", &made.key_pem, &issued).unwrap_err();
    assert!(matches!(e, EnrollError::PinMismatch { .. }), "{e}");
    assert!(!dir.path().join("tls").exists());
}
