//! Tests of the PKI operations against real files, rustls's verifiers and a QUIC handshake.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use clap::Parser;
use outpost_common::time::now_ns;
use outpost_common::tls::QuicSettings;
use proptest::prelude::*;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tempfile::TempDir;
use x509_parser::extensions::GeneralName;

use super::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A temporary directory with an initialised PKI in `<tmp>/tls`.
fn fresh() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    init(
        &dir,
        &names(&["agg.example.net", "10.0.0.5"]),
        DEFAULT_CA_VALIDITY,
        false,
    )
    .unwrap();
    (tmp, dir)
}

/// Every file under `dir` (but the lock) with its content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.file_name().unwrap() != ".lock" {
                out.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn cert(path: &Path) -> CertificateDer<'static> {
    tls::load_certs(path).unwrap().remove(0)
}

fn roots(dir: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for ca in tls::load_certs(&Layout::new(dir).ca_cert()).unwrap() {
        roots.add(ca).unwrap();
    }
    Arc::new(roots)
}

/// Verifies an agent's certificate as the aggregator's TLS configuration does.
fn verify_agent(dir: &Path, agent_id: &str) -> Result<(), rustls::Error> {
    let layout = Layout::new(dir);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(dir), tls::provider())
        .with_crls(tls::load_crls(&layout.crl()).unwrap())
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .unwrap();
    verifier
        .verify_client_cert(&cert(&layout.agent_cert(agent_id)), &[], UnixTime::now())
        .map(|_| ())
}

/// Verifies the aggregator's certificate for `name` as an agent does.
fn verify_server(dir: &Path, name: &str) -> Result<(), rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(dir), tls::provider())
        .build()
        .unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(
            &cert(&Layout::new(dir).server_cert()),
            &[],
            &name,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

/// The aggregator's QUIC configuration built from the directory's files.
fn server_config(dir: &Path) -> Result<quinn::ServerConfig, tls::TlsError> {
    let layout = Layout::new(dir);
    tls::server_config(
        &tls::load_certs(&layout.ca_cert())?,
        tls::load_certs(&layout.server_cert())?,
        tls::load_key(&layout.server_key())?,
        tls::load_crls(&layout.crl())?,
        &QuicSettings::default(),
    )
}

/// The QUIC configuration of agent `agent_id` built from the directory's files.
fn client_config(dir: &Path, agent_id: &str) -> Result<quinn::ClientConfig, tls::TlsError> {
    let layout = Layout::new(dir);
    tls::client_config(
        &tls::load_certs(&layout.ca_cert())?,
        tls::load_certs(&layout.agent_cert(agent_id))?,
        tls::load_key(&layout.agent_key(agent_id))?,
        &QuicSettings::default(),
    )
}

/// The serials, in hex, that `crl.pem` revokes.
fn crl_serials(dir: &Path) -> HashSet<String> {
    let crls = tls::load_crls(&Layout::new(dir).crl()).unwrap();
    tls::revoked_serials(&crls)
        .unwrap()
        .iter()
        .map(|s| tls::hex(s))
        .collect()
}

/// The CRL number of `crl.pem`.
fn crl_number(dir: &Path) -> String {
    let crls = tls::load_crls(&Layout::new(dir).crl()).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(crls[0].as_ref()).unwrap();
    crl.crl_number().unwrap().to_string()
}

fn is_revoked(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    )
}

#[test]
fn init_writes_every_file_with_its_mode() {
    let (_tmp, dir) = fresh();
    let layout = Layout::new(&dir);
    for key in [layout.ca_key(), layout.server_key()] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    for public in [
        layout.ca_cert(),
        layout.server_cert(),
        layout.crl(),
        layout.revocations(),
    ] {
        assert_eq!(mode(&public), 0o644, "{}", public.display());
    }
    assert!(layout.agents_dir().is_dir());
    assert!(crl_serials(&dir).is_empty());
    assert_eq!(crl_number(&dir), "1");
    // No temporary files are left behind.
    assert!(
        snapshot(&dir)
            .keys()
            .all(|p| !p.to_string_lossy().ends_with(".tmp"))
    );
}

#[test]
fn init_makes_a_ca_and_a_server_certificate_that_rustls_accepts() {
    let (_tmp, dir) = fresh();
    let layout = Layout::new(&dir);

    let ca = cert(&layout.ca_cert());
    let (_, ca) = x509_parser::parse_x509_certificate(ca.as_ref()).unwrap();
    assert!(ca.basic_constraints().unwrap().unwrap().value.ca);
    let usage = ca.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign());

    let server = cert(&layout.server_cert());
    let (_, server) = x509_parser::parse_x509_certificate(server.as_ref()).unwrap();
    assert!(
        server
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
    let sans: Vec<String> = server
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(ip) => format!("{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(sans.len(), 5, "{sans:?}");
    assert!(sans.contains(&"agg.example.net".to_owned()));
    assert!(sans.contains(&"localhost".to_owned()));

    for name in [
        "agg.example.net",
        "localhost",
        "10.0.0.5",
        "127.0.0.1",
        "::1",
    ] {
        verify_server(&dir, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify_server(&dir, "other.example.net").is_err());

    server_config(&dir).unwrap();
}

#[test]
fn a_second_init_without_force_fails_and_changes_nothing() {
    let (_tmp, dir) = fresh();
    issue_agent(&dir, "web-01", DEFAULT_AGENT_VALIDITY, false).unwrap();
    let before = snapshot(&dir);
    let err = init(&dir, &[], DEFAULT_CA_VALIDITY, false).unwrap_err();
    assert!(matches!(err, PkiError::CaExists { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("ca.pem") && text.contains("--force"),
        "{text}"
    );
    assert_eq!(snapshot(&dir), before);

    // A CA key alone also counts as a CA.
    fs::remove_file(Layout::new(&dir).ca_cert()).unwrap();
    let err = init(&dir, &[], DEFAULT_CA_VALIDITY, false).unwrap_err();
    assert!(err.to_string().contains("ca.key"), "{err}");
}

#[test]
fn init_with_force_replaces_the_ca_and_moves_the_old_material_aside() {
    let (_tmp, dir) = fresh();
    let layout = Layout::new(&dir);
    issue_agent(&dir, "web-01", DEFAULT_AGENT_VALIDITY, false).unwrap();
    let old_ca = fs::read(layout.ca_cert()).unwrap();
    let old_key = fs::read(layout.ca_key()).unwrap();

    let report = init(&dir, &[], DEFAULT_CA_VALIDITY, true).unwrap();
    assert_ne!(fs::read(layout.ca_cert()).unwrap(), old_ca);
    let replaced = report.replaced.unwrap();
    assert_eq!(fs::read(replaced.join("ca.pem")).unwrap(), old_ca);
    assert_eq!(fs::read(replaced.join("ca.key")).unwrap(), old_key);
    assert_eq!(mode(&replaced.join("ca.key")), 0o600);
    assert!(replaced.join("agents").join("web-01.pem").exists());
    // Certificates of the old CA are gone from the live directory.
    assert!(issued_agents(&dir).unwrap().is_empty());
    assert_eq!(crl_number(&dir), "1");
}

#[test]
fn bad_server_names_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    for bad in ["", "not a name", "exa mple.com"] {
        let err = init(&dir, &names(&[bad]), DEFAULT_CA_VALIDITY, false).unwrap_err();
        assert!(
            matches!(err, PkiError::InvalidServerName(_)),
            "{bad}: {err}"
        );
    }
    assert!(!dir.exists());
}

#[test]
fn an_issued_agent_certificate_is_accepted_and_names_the_agent() {
    let (_tmp, dir) = fresh();
    let layout = Layout::new(&dir);
    let issued = issue_agent(&dir, "web-01.prod", DEFAULT_AGENT_VALIDITY, false).unwrap();
    assert_eq!(issued.cert_path, layout.agent_cert("web-01.prod"));
    assert_eq!(issued.key_path, layout.agent_key("web-01.prod"));
    assert_eq!(mode(&issued.key_path), 0o600);
    assert_eq!(mode(&issued.cert_path), 0o644);
    assert_eq!(issued.superseded_serial_hex, None);

    let der = cert(&issued.cert_path);
    let identity = tls::identity_from_cert(&der).unwrap();
    assert_eq!(identity.agent_id, "web-01.prod");
    assert_eq!(identity.serial_hex(), issued.serial_hex);
    assert_eq!(identity.not_after_ns, issued.not_after_ns);
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    assert!(
        parsed
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth
    );

    verify_agent(&dir, "web-01.prod").unwrap();
    client_config(&dir, "web-01.prod").unwrap();
}

#[test]
fn invalid_agent_ids_are_refused_and_write_nothing() {
    let (_tmp, dir) = fresh();
    let before = snapshot(&dir);
    let long = "x".repeat(129);
    for bad in ["", "a b", "a/b", "../etc", "ä", long.as_str()] {
        let err = issue_agent(&dir, bad, DEFAULT_AGENT_VALIDITY, false).unwrap_err();
        assert!(matches!(err, PkiError::InvalidAgentId(_)), "{bad}: {err}");
        assert!(err.to_string().contains("A-Z a-z 0-9"), "{err}");
        assert!(matches!(
            revoke_agent(&dir, bad, "x").unwrap_err(),
            PkiError::InvalidAgentId(_)
        ));
    }
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn an_existing_agent_certificate_needs_force_and_is_then_revoked() {
    let (_tmp, dir) = fresh();
    let first = issue_agent(&dir, "db-1", DEFAULT_AGENT_VALIDITY, false).unwrap();
    let before = snapshot(&dir);
    let err = issue_agent(&dir, "db-1", DEFAULT_AGENT_VALIDITY, false).unwrap_err();
    assert!(matches!(err, PkiError::AgentExists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(snapshot(&dir), before);

    let second = issue_agent(&dir, "db-1", DEFAULT_AGENT_VALIDITY, true).unwrap();
    assert_ne!(second.serial_hex, first.serial_hex);
    assert_eq!(second.superseded_serial_hex, Some(first.serial_hex.clone()));
    assert_eq!(crl_serials(&dir), HashSet::from([first.serial_hex]));
    verify_agent(&dir, "db-1").unwrap();
    let listed = issued_agents(&dir).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].serial_hex, second.serial_hex);
    assert!(!listed[0].revoked);
}

#[test]
fn revoking_puts_the_serial_in_the_crl_and_keeps_earlier_ones() {
    let (_tmp, dir) = fresh();
    let a = issue_agent(&dir, "a", DEFAULT_AGENT_VALIDITY, false).unwrap();
    let b = issue_agent(&dir, "b", DEFAULT_AGENT_VALIDITY, false).unwrap();
    let c = issue_agent(&dir, "c", DEFAULT_AGENT_VALIDITY, false).unwrap();

    let first = revoke_agent(&dir, "a", "key-compromise").unwrap();
    assert_eq!(first.serial_hex, a.serial_hex);
    assert!(!first.already_revoked);
    assert_eq!(crl_serials(&dir), HashSet::from([a.serial_hex.clone()]));
    assert_eq!(crl_number(&dir), first.crl_number.to_string());
    assert_eq!(mode(&first.crl_path), 0o644);

    let second = revoke_agent(&dir, "b", "host decommissioned").unwrap();
    assert!(second.crl_number > first.crl_number);
    assert_eq!(second.revoked_total, 2);
    assert_eq!(
        crl_serials(&dir),
        HashSet::from([a.serial_hex.clone(), b.serial_hex.clone()])
    );
    assert_eq!(crl_number(&dir), second.crl_number.to_string());

    assert!(is_revoked(&verify_agent(&dir, "a").unwrap_err()));
    assert!(is_revoked(&verify_agent(&dir, "b").unwrap_err()));
    verify_agent(&dir, "c").unwrap();
    assert!(!crl_serials(&dir).contains(&c.serial_hex));

    // Revoking again keeps one record and still rewrites the CRL.
    let again = revoke_agent(&dir, "a", "again").unwrap();
    assert!(again.already_revoked);
    assert_eq!(again.revoked_total, 2);
    assert!(again.crl_number > second.crl_number);
    let records = Revocations::load(&Layout::new(&dir).revocations()).unwrap();
    assert_eq!(records.revoked.len(), 2);
    assert_eq!(records.revoked[0].reason, "key-compromise");
    assert_eq!(records.revoked[1].agent_id, "b");
}

#[test]
fn an_expired_certificate_can_be_minted_and_is_refused() {
    let (_tmp, dir) = fresh();
    let not_before = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let not_after = UNIX_EPOCH + Duration::from_secs(1_600_086_400);
    let issued = issue_agent_with_validity(&dir, "old", not_before, not_after, false).unwrap();
    assert_eq!(issued.not_after_ns, 1_600_086_400 * 1_000_000_000);
    assert!(issued.not_after_ns < now_ns());
    let err = verify_agent(&dir, "old").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err}"
    );
    // An empty or reversed period is refused.
    let err = issue_agent_with_validity(&dir, "x", not_after, not_before, false).unwrap_err();
    assert!(matches!(err, PkiError::Validity(_)), "{err}");
    assert!(!Layout::new(&dir).agent_cert("x").exists());
}

#[test]
fn agent_validity_is_capped_by_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let report = init(&dir, &[], Duration::from_secs(10 * DAY), false).unwrap();
    assert_eq!(report.server.not_after_ns, report.ca_not_after_ns);
    let issued = issue_agent(&dir, "a", DEFAULT_AGENT_VALIDITY, false).unwrap();
    assert_eq!(issued.not_after_ns, report.ca_not_after_ns);
    let err = issue_agent(&dir, "b", Duration::MAX, false).unwrap_err();
    assert!(matches!(err, PkiError::Validity(_)), "{err}");
}

#[test]
fn issued_agents_lists_certificates_with_revoked_flags() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(issued_agents(tmp.path()).unwrap().is_empty());

    let (_tmp, dir) = fresh();
    let b = issue_agent(&dir, "b", DEFAULT_AGENT_VALIDITY, false).unwrap();
    let a = issue_agent(&dir, "a", DEFAULT_AGENT_VALIDITY, false).unwrap();
    revoke_agent(&dir, "b", "superseded").unwrap();
    // Files other than certificates are ignored.
    fs::write(Layout::new(&dir).agents_dir().join("notes.txt"), "x").unwrap();
    let listed = issued_agents(&dir).unwrap();
    assert_eq!(
        listed,
        vec![
            IssuedCert {
                agent_id: "a".into(),
                serial_hex: a.serial_hex,
                not_after_ns: a.not_after_ns,
                revoked: false,
            },
            IssuedCert {
                agent_id: "b".into(),
                serial_hex: b.serial_hex,
                not_after_ns: b.not_after_ns,
                revoked: true,
            },
        ]
    );

    fs::write(Layout::new(&dir).agent_cert("broken"), "not pem").unwrap();
    let err = issued_agents(&dir).unwrap_err();
    assert!(err.to_string().contains("broken.pem"), "{err}");
}

#[test]
fn operations_without_a_ca_say_how_to_create_one() {
    let tmp = tempfile::tempdir().unwrap();
    let err = issue_agent(tmp.path(), "a", DEFAULT_AGENT_VALIDITY, false).unwrap_err();
    assert!(matches!(err, PkiError::NotInitialised { .. }), "{err}");
    assert!(err.to_string().contains("pki init"), "{err}");
    assert!(matches!(
        revoke_agent(tmp.path(), "a", "x").unwrap_err(),
        PkiError::NotInitialised { .. }
    ));

    let (_tmp, dir) = fresh();
    let err = revoke_agent(&dir, "nobody", "x").unwrap_err();
    assert!(matches!(err, PkiError::NoSuchAgent { .. }), "{err}");
    assert!(err.to_string().contains("nobody.pem"), "{err}");
}

#[test]
fn a_ca_key_that_does_not_match_the_certificate_is_refused() {
    let (_tmp, dir) = fresh();
    let other = rcgen::KeyPair::generate().unwrap();
    fs::write(Layout::new(&dir).ca_key(), other.serialize_pem()).unwrap();
    let err = issue_agent(&dir, "a", DEFAULT_AGENT_VALIDITY, false).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    fs::write(Layout::new(&dir).ca_key(), "garbage").unwrap();
    let err = issue_agent(&dir, "a", DEFAULT_AGENT_VALIDITY, false).unwrap_err();
    assert!(matches!(err, PkiError::Unreadable { .. }), "{err}");
}

#[test]
fn the_server_certificate_can_be_renewed_under_the_same_ca() {
    let (_tmp, dir) = fresh();
    let layout = Layout::new(&dir);
    let before = fs::read(layout.server_cert()).unwrap();
    let err = issue_server(
        &dir,
        &names(&["new.example.net"]),
        DEFAULT_SERVER_VALIDITY,
        false,
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::ServerExists { .. }), "{err}");
    assert_eq!(fs::read(layout.server_cert()).unwrap(), before);

    let renewed = issue_server(
        &dir,
        &names(&["new.example.net"]),
        DEFAULT_SERVER_VALIDITY,
        true,
    )
    .unwrap();
    assert_eq!(
        renewed.names,
        names(&["new.example.net", "localhost", "127.0.0.1", "::1"])
    );
    assert_eq!(mode(&renewed.key_path), 0o600);
    verify_server(&dir, "new.example.net").unwrap();
    assert!(verify_server(&dir, "agg.example.net").is_err());
}

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(subcommand)]
    pki: PkiCommand,
}

fn run_cli(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("pki").chain(args.iter().copied()))?;
    let mut out = Vec::new();
    run_with(cli.pki, &mut out, now_ns())?;
    Ok(String::from_utf8(out)?)
}

#[test]
fn the_cli_prints_one_line_per_file_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let d = dir.to_str().unwrap();

    let out = run_cli(&["init", "--dir", d, "--server-name", "agg.example.net"]).unwrap();
    for file in [
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
        "crl.pem",
        "revoked.json",
    ] {
        let line = format!("wrote {}", dir.join(file).display());
        assert_eq!(out.matches(&line).count(), 1, "{file} in:\n{out}");
    }
    assert!(out.contains("hint: "), "{out}");

    let err = run_cli(&["init", "--dir", d]).unwrap_err();
    assert!(format!("{err:#}").contains("--force"), "{err:#}");

    let out = run_cli(&["issue-agent", "web-01", "--dir", d, "--days", "30"]).unwrap();
    assert!(out.contains(&format!(
        "wrote {}",
        dir.join("agents/web-01.key").display()
    )));
    assert!(out.contains(&format!(
        "wrote {}",
        dir.join("agents/web-01.pem").display()
    )));
    run_cli(&["issue-agent", "web-02", "--dir", d]).unwrap();
    let out = run_cli(&["issue-agent", "web-02", "--dir", d, "--force"]).unwrap();
    assert!(
        out.contains("revoked the previous certificate of web-02"),
        "{out}"
    );
    assert!(out.contains(&format!("wrote {}", dir.join("crl.pem").display())));

    let out = run_cli(&["revoke", "web-02", "--dir", d, "--reason", "key-compromise"]).unwrap();
    assert!(out.contains("revoked agent web-02"), "{out}");
    assert!(out.contains(&format!("wrote {}", dir.join("crl.pem").display())));

    let out = run_cli(&["list", "--dir", d]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("AGENT"));
    assert!(lines[1].starts_with("web-01") && lines[1].ends_with("valid"));
    assert!(lines[2].starts_with("web-02") && lines[2].ends_with("revoked"));

    let out = run_cli(&["list", "--dir", d, "--json"]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[1]["agent_id"], "web-02");
    assert_eq!(json[1]["revoked"], true);

    assert!(run_cli(&["issue-agent", "x", "--dir", d, "--days", "0"]).is_err());
    assert!(run_cli(&["issue-agent", "bad id", "--dir", d]).is_err());
}

#[test]
fn the_cli_defaults_to_the_system_directory() {
    let cli = Cli::try_parse_from(["pki", "list"]).unwrap();
    assert_eq!(
        cli.pki,
        PkiCommand::List {
            dir: DirArg {
                dir: PathBuf::from(DEFAULT_DIR)
            },
            json: false
        }
    );
}

/// An operation of the model test.
#[derive(Debug, Clone)]
enum Op {
    Issue { agent: usize, force: bool },
    Revoke { agent: usize },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, any::<bool>()).prop_map(|(agent, force)| Op::Issue { agent, force }),
        (0..3usize).prop_map(|agent| Op::Revoke { agent }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random issue/reissue/revoke sequences against a model of which serials are current and
    /// which are revoked: the CRL, the records and the listing always agree with the model.
    #[test]
    fn revocations_follow_a_model(ops in prop::collection::vec(arb_op(), 1..8)) {
        let (_tmp, dir) = fresh();
        let ids = ["a", "b", "c"];
        let mut current: HashMap<&str, String> = HashMap::new();
        let mut revoked: HashSet<String> = HashSet::new();
        for op in ops {
            match op {
                Op::Issue { agent, force } => {
                    let id = ids[agent];
                    match issue_agent(&dir, id, DEFAULT_AGENT_VALIDITY, force) {
                        Ok(issued) => {
                            prop_assert!(force || !current.contains_key(id));
                            if let Some(old) = current.insert(id, issued.serial_hex) {
                                prop_assert_eq!(issued.superseded_serial_hex, Some(old.clone()));
                                revoked.insert(old);
                            }
                        }
                        Err(PkiError::AgentExists { .. }) => {
                            prop_assert!(!force && current.contains_key(id));
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Revoke { agent } => {
                    let id = ids[agent];
                    match revoke_agent(&dir, id, "test") {
                        Ok(report) => {
                            prop_assert_eq!(Some(&report.serial_hex), current.get(id));
                            prop_assert_eq!(report.already_revoked, revoked.contains(&report.serial_hex));
                            revoked.insert(report.serial_hex);
                        }
                        Err(PkiError::NoSuchAgent { .. }) => prop_assert!(!current.contains_key(id)),
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
            }
            prop_assert_eq!(&crl_serials(&dir), &revoked);
            let listed = issued_agents(&dir).unwrap();
            prop_assert_eq!(listed.len(), current.len());
            for cert in listed {
                prop_assert_eq!(Some(&cert.serial_hex), current.get(cert.agent_id.as_str()));
                prop_assert_eq!(cert.revoked, revoked.contains(&cert.serial_hex));
            }
        }
    }
}

/// Connects as `agent_id` and echoes one stream; the error if the aggregator refuses.
async fn echo_as(
    dir: &Path,
    agent_id: &str,
    server: std::net::SocketAddr,
) -> anyhow::Result<Vec<u8>> {
    let config = client_config(dir, agent_id)?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let conn = endpoint.connect_with(config, server, "localhost")?.await?;
    // A refused client certificate may surface only here, at the first stream operation.
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(agent_id.as_bytes()).await?;
    send.finish()?;
    let echoed = recv.read_to_end(1024).await?;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(echoed)
}

#[tokio::test]
async fn a_quic_handshake_accepts_an_issued_agent_and_refuses_a_revoked_one() {
    let (_tmp, dir) = fresh();
    issue_agent(&dir, "good", DEFAULT_AGENT_VALIDITY, false).unwrap();
    issue_agent(&dir, "bad", DEFAULT_AGENT_VALIDITY, false).unwrap();
    revoke_agent(&dir, "bad", "key-compromise").unwrap();
    let config = server_config(&dir).unwrap();
    let server = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();

    // The aggregator's side: two connection attempts, in order; echo one stream on each that
    // completes the handshake, and report whom it saw or why it refused.
    let accepting = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let Some(incoming) = server.accept().await else {
                break;
            };
            match incoming.await {
                Ok(conn) => {
                    let id = tls::identity_from_connection(&conn).map(|i| i.agent_id);
                    if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let data = recv.read_to_end(1024).await.unwrap_or_default();
                        let _ = send.write_all(&data).await;
                        let _ = send.finish();
                    }
                    conn.closed().await;
                    seen.push(id.map_err(|e| e.to_string()));
                }
                Err(e) => seen.push(Err(e.to_string())),
            }
        }
        seen
    });

    let limit = Duration::from_secs(30);
    let good = tokio::time::timeout(limit, echo_as(&dir, "good", addr))
        .await
        .unwrap();
    assert_eq!(good.unwrap(), b"good");
    let bad = tokio::time::timeout(limit, echo_as(&dir, "bad", addr))
        .await
        .unwrap();
    assert!(bad.is_err(), "a revoked agent got through: {bad:?}");

    let seen = tokio::time::timeout(limit, accepting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], Ok("good".to_owned()));
    assert!(
        seen[1].as_ref().is_err_and(|e| e.contains("Revoked")),
        "{seen:?}"
    );
}

#[test]
fn a_short_certificate_is_backdated_by_a_tenth_of_its_validity_so_its_renewal_lies_ahead() {
    let (_tmp, dir) = fresh();
    let key = rcgen::KeyPair::generate().unwrap();
    let before = now_ns();
    let issued = issue_agent_for_key(&dir, "web-1", &key, Duration::from_secs(60), |_| {
        Ok::<(), ()>(())
    })
    .unwrap()
    .unwrap();
    let der = <CertificateDer<'_> as rustls_pki_types::pem::PemObject>::from_pem_slice(
        issued.cert_pem.as_bytes(),
    )
    .unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let not_before = parsed.validity().not_before.timestamp() * 1_000_000_000;
    let not_after = parsed.validity().not_after.timestamp() * 1_000_000_000;
    // Six seconds back, not an hour: two thirds into the lifetime is still to come.
    assert!(
        before - not_before <= 7_000_000_000,
        "{before} {not_before}"
    );
    let renewal = not_before + (not_after - not_before) * 2 / 3;
    assert!(
        renewal > before + 30_000_000_000,
        "renewal {renewal}, issued {before}"
    );
    // A long one keeps the hour, for hosts whose clock is a little behind.
    let long = issue_agent_for_key(&dir, "web-2", &key, DEFAULT_AGENT_VALIDITY, |_| {
        Ok::<(), ()>(())
    })
    .unwrap()
    .unwrap();
    let der = <CertificateDer<'_> as rustls_pki_types::pem::PemObject>::from_pem_slice(
        long.cert_pem.as_bytes(),
    )
    .unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let not_before = parsed.validity().not_before.timestamp() * 1_000_000_000;
    assert!(before - not_before >= 3_599_000_000_000);
}
