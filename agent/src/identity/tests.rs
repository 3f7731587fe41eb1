use std::os::unix::fs::PermissionsExt;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::*;
use crate::test_ca::TestCa;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A key and the certificate the test CA issued for it.
fn pair(ca: &TestCa, id: &str) -> (String, String) {
    let made = new_key_and_csr(id).unwrap();
    let cert = ca.sign(&made.csr_der, time::OffsetDateTime::now_utc(), 60);
    (made.key_pem, cert)
}

#[test]
fn the_request_names_the_agent_for_client_authentication_only() {
    let made = new_key_and_csr("web-1").unwrap();
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&made.csr_der)
            .unwrap();
    let mut seen = (false, false, false, false);
    for ext in csr.requested_extensions().unwrap() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                assert_eq!(
                    san.general_names,
                    [GeneralName::URI("urn:outpost:agent:web-1")]
                );
                seen.0 = true;
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(!bc.ca);
                seen.1 = true;
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty());
                seen.2 = true;
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ku.digital_signature() && !ku.key_cert_sign());
                seen.3 = true;
            }
            _ => {}
        }
    }
    assert_eq!(seen, (true, true, true, true));
    // The request is signed by the key it carries, an ECDSA P-256 one.
    csr.verify_signature().unwrap();
    let key = KeyPair::from_pem(&made.key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    assert_eq!(
        csr.certification_request_info
            .subject_pki
            .subject_public_key
            .data
            .as_ref(),
        key.der_bytes()
    );
}

#[test]
fn an_issued_certificate_must_name_the_agent_and_be_for_its_key() {
    let ca = TestCa::new();
    let (key, cert) = pair(&ca, "web-1");
    let checked = check_issued("web-1", &key, &cert).unwrap();
    assert_eq!(checked.not_after_ns - checked.not_before_ns, 60_000_000_000);
    let e = check_issued("web-2", &key, &cert).unwrap_err().to_string();
    assert!(e.contains("names the agent `web-1`, not `web-2`"), "{e}");
    let (other_key, _) = pair(&ca, "web-1");
    let e = check_issued("web-1", &other_key, &cert)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not for the key"), "{e}");
    let e = check_issued("web-1", &key, "junk").unwrap_err().to_string();
    assert!(e.contains("no PEM certificate"), "{e}");
}

#[test]
fn atomic_writes_have_their_mode_from_the_start_and_leave_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    let cert = dir.path().join("agent.pem");
    write_atomic(&key, b"secret", KEY_MODE, None).unwrap();
    write_atomic(&cert, b"public", PUBLIC_MODE, None).unwrap();
    assert_eq!((mode(&key), mode(&cert)), (0o600, 0o644));
    // A temporary file left by a crash is replaced, and a rewrite keeps the mode asked for.
    fs::write(dir.path().join("agent.key.tmp"), b"torn").unwrap();
    write_atomic(&key, b"secret 2", KEY_MODE, None).unwrap();
    assert_eq!(fs::read(&key).unwrap(), b"secret 2");
    assert_eq!(mode(&key), 0o600);
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["agent.key", "agent.pem"]);
    // The group of the key, when one is given, is set (our own group is always allowed).
    let gid = nix::unistd::getegid().as_raw();
    write_atomic(&key, b"secret 3", GROUP_KEY_MODE, Some(gid)).unwrap();
    assert_eq!(mode(&key), 0o640);
    assert_eq!(
        std::os::unix::fs::MetadataExt::gid(&fs::metadata(&key).unwrap()),
        gid
    );
    // Errors name the file.
    let e = write_atomic(&dir.path().join("no/such/dir/x"), b"", KEY_MODE, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no/such/dir/x.tmp: cannot create"), "{e}");
}

#[test]
fn the_key_is_group_readable_only_when_the_group_exists() {
    let (mode, group) = key_access();
    match nix::unistd::Group::from_name(KEY_GROUP).unwrap() {
        Some(g) => assert_eq!((mode, group), (0o640, Some(g.gid.as_raw()))),
        None => assert_eq!((mode, group), (0o600, None)),
    }
}

/// Whether the key and certificate on disk are a pair.
fn on_disk_pair(paths: &PairPaths) -> Option<(String, String)> {
    let key = fs::read_to_string(&paths.key).ok()?;
    let cert = fs::read_to_string(&paths.cert).ok()?;
    let der = first_certificate(&cert).ok()?;
    key_matches(&key, &der).then_some((key, cert))
}

#[test]
fn a_crash_at_any_point_of_a_replacement_leaves_a_matching_pair() {
    let ca = TestCa::new();
    let (old_key, old_cert) = pair(&ca, "web-1");
    let (new_key, new_cert) = pair(&ca, "web-1");
    for done in 0..=PAIR_STEPS.len() {
        // A crash inside a write leaves at most a temporary file: try both.
        for torn_write in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let paths = PairPaths {
                key: dir.path().join("agent.key"),
                cert: dir.path().join("agent.pem"),
            };
            install_pair(&paths, &old_key, &old_cert).unwrap();
            for step in &PAIR_STEPS[..done] {
                pair_step(&paths, *step, &new_key, &new_cert).unwrap();
            }
            if torn_write {
                fs::write(dir.path().join("agent.key.new.tmp"), "torn").unwrap();
                fs::write(dir.path().join("agent.pem.new.tmp"), "torn").unwrap();
            }
            let recovery = recover_pair(&paths).unwrap();
            let (key, cert) = on_disk_pair(&paths)
                .unwrap_or_else(|| panic!("no matching pair after {done} steps"));
            // Once the new certificate is written the new pair wins; before, the old one stays.
            let new_complete = done >= 2;
            if new_complete {
                assert_eq!((key, cert), (new_key.clone(), new_cert.clone()), "{done}");
            } else {
                assert_eq!((key, cert), (old_key.clone(), old_cert.clone()), "{done}");
            }
            // Temporary files are removed silently: they never held a whole file.
            let expected = match done {
                1 => Recovery::Undone,
                2 | 3 => Recovery::Finished,
                _ => Recovery::Clean,
            };
            assert_eq!(recovery, expected, "after {done} steps");
            assert_eq!(mode(&paths.key) & 0o077, key_access().0 & 0o077);
            let mut names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["agent.key", "agent.pem"], "after {done} steps");
            // Recovering again changes nothing.
            assert_eq!(recover_pair(&paths).unwrap(), Recovery::Clean);
        }
    }
}

#[test]
fn a_new_certificate_that_does_not_match_its_key_is_discarded() {
    let ca = TestCa::new();
    let (old_key, old_cert) = pair(&ca, "web-1");
    let (_, stray_cert) = pair(&ca, "web-1");
    let dir = tempfile::tempdir().unwrap();
    let paths = PairPaths {
        key: dir.path().join("agent.key"),
        cert: dir.path().join("agent.pem"),
    };
    install_pair(&paths, &old_key, &old_cert).unwrap();
    fs::write(dir.path().join("agent.pem.new"), &stray_cert).unwrap();
    assert_eq!(recover_pair(&paths).unwrap(), Recovery::Undone);
    assert_eq!(on_disk_pair(&paths).unwrap(), (old_key, old_cert));
    assert!(!dir.path().join("agent.pem.new").exists());
}
