//! The decisions, each refusal on its own, under a simulated clock.

use outpost_common::enroll::{EnrollRequest, TokenBody};
use rcgen::KeyPair;

use super::csr::testutil;
use super::token::{self, EnrollmentToken, TokenSpec};
use super::*;

const NOW: i64 = 1_800_000_000 * 1_000_000_000;
const MINUTE: i64 = 60 * 1_000_000_000;
const POLICY: Policy = Policy {
    offline_after_ns: 45 * 1_000_000_000,
};

/// A token made a minute ago, valid for an hour, with `uses` uses, and the secret to present.
fn token(uses: Option<u32>, allow_reenroll: bool) -> (EnrollmentToken, TokenBody) {
    let made = token::create(
        TokenSpec {
            expires_ns: NOW + 60 * MINUTE,
            max_uses: uses,
            labels: vec![("site".into(), "paris".into())],
            allow_reenroll,
            endpoints: vec!["aggregator.example.net:4433".into()],
            ca_der: b"ca".to_vec(),
        },
        NOW - MINUTE,
    )
    .unwrap();
    let body = TokenBody::parse(&made.text).unwrap();
    (made.record, body)
}

fn request(body: &TokenBody, agent_id: &str, csr_der: Vec<u8>) -> EnrollRequest {
    EnrollRequest {
        token_id: body.id,
        secret: body.secret,
        agent_id: agent_id.to_owned(),
        csr_der,
        agent_version: "test".to_owned(),
    }
}

fn facts(token: EnrollmentToken) -> Facts {
    Facts {
        token: Some(token),
        holder: Holder::default(),
        key_enrolled: false,
    }
}

fn decide(request: &EnrollRequest, facts: Facts, now_ns: i64) -> Result<Grant, Refusal> {
    let csr = csr::check(&request.csr_der, &request.agent_id);
    decide_enrollment(request, csr, facts, &POLICY, now_ns)
}

#[test]
fn a_valid_token_and_request_are_granted_with_the_tokens_labels() {
    let (t, body) = token(Some(1), false);
    let req = request(&body, "web-1", testutil::good("web-1"));
    let grant = decide(&req, facts(t.clone()), NOW).unwrap();
    assert_eq!(grant.agent_id, "web-1");
    assert_eq!(grant.token_id, Some(t.id));
    assert_eq!(grant.labels, [("site".to_owned(), "paris".to_owned())]);
}

#[test]
fn an_unknown_or_forged_token_is_refused_and_says_nothing_more() {
    let (t, body) = token(None, false);
    let req = request(&body, "web-1", testutil::good("web-1"));
    let unknown = Facts {
        token: None,
        ..facts(t.clone())
    };
    assert_eq!(
        decide(&req, unknown, NOW).unwrap_err(),
        Refusal::UnknownToken
    );
    let mut forged = req.clone();
    forged.secret[31] ^= 1;
    // Even a revoked token answers "unknown" to a wrong secret.
    let revoked = EnrollmentToken {
        revoked_ns: Some(NOW - 1),
        ..t.clone()
    };
    for stored in [t, revoked] {
        assert_eq!(
            decide(&forged, facts(stored), NOW).unwrap_err(),
            Refusal::UnknownToken
        );
    }
}

#[test]
fn an_expired_token_is_refused_from_its_expiry_on() {
    let (t, body) = token(None, false);
    let req = request(&body, "web-1", testutil::good("web-1"));
    let at = t.expires_ns;
    assert!(decide(&req, facts(t.clone()), at - 1).is_ok());
    let e = decide(&req, facts(t), at).unwrap_err();
    assert_eq!(e, Refusal::TokenExpired { expires_ns: at });
    assert!(e.to_string().contains("expired at"), "{e}");
}

#[test]
fn a_used_up_token_is_refused() {
    let (t, body) = token(Some(1), false);
    let req = request(&body, "web-1", testutil::good("web-1"));
    let used = EnrollmentToken { uses: 1, ..t };
    assert_eq!(
        decide(&req, facts(used), NOW).unwrap_err(),
        Refusal::TokenUsedUp { uses: 1 }
    );
}

#[test]
fn a_revoked_token_is_refused() {
    let (t, body) = token(None, false);
    let req = request(&body, "web-1", testutil::good("web-1"));
    let revoked = EnrollmentToken {
        revoked_ns: Some(NOW - 1),
        ..t
    };
    assert_eq!(
        decide(&req, facts(revoked), NOW).unwrap_err(),
        Refusal::TokenRevoked
    );
}

#[test]
fn an_invalid_agent_id_is_refused() {
    let (t, body) = token(None, false);
    for bad in ["", "web 1", "../etc", &"x".repeat(129)] {
        let req = request(&body, bad, testutil::good("web-1"));
        let e = decide(&req, facts(t.clone()), NOW).unwrap_err();
        if bad == "../etc" {
            // `/` is not an id character.
            assert!(matches!(e, Refusal::InvalidAgentId(_)), "{e}");
        } else {
            assert_eq!(e, Refusal::InvalidAgentId(bad.to_owned()));
        }
    }
}

#[test]
fn an_id_held_by_a_live_agent_is_refused_unless_the_token_allows_reenrollment() {
    let (t, body) = token(None, false);
    let req = request(&body, "web-1", testutil::good("web-1"));
    let seen_recently = Holder {
        last_seen_ns: Some(NOW - 10 * 1_000_000_000),
        certificate_until_ns: None,
    };
    let with_certificate = Holder {
        last_seen_ns: Some(NOW - 60 * MINUTE),
        certificate_until_ns: Some(NOW + MINUTE),
    };
    for holder in [seen_recently, with_certificate] {
        let held = Facts {
            holder,
            ..facts(t.clone())
        };
        let e = decide(&req, held.clone(), NOW).unwrap_err();
        assert!(matches!(e, Refusal::IdHeld { .. }), "{e}");
        assert!(e.to_string().contains("--allow-reenroll"), "{e}");
        let (reenroll, body) = token(None, true);
        let req = request(&body, "web-1", testutil::good("web-1"));
        let allowed = Facts {
            token: Some(reenroll),
            ..held
        };
        assert!(decide(&req, allowed, NOW).is_ok());
    }
    // Offline for longer than the window, and its certificate expired: free again.
    let gone = Facts {
        holder: Holder {
            last_seen_ns: Some(NOW - POLICY.offline_after_ns),
            certificate_until_ns: Some(NOW),
        },
        ..facts(t)
    };
    assert!(decide(&req, gone, NOW).is_ok());
}

#[test]
fn a_bad_signing_request_is_refused_with_what_is_wrong() {
    let (t, body) = token(None, false);
    let mut ca = testutil::params("web-1");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let mut san = testutil::params("web-1");
    san.subject_alt_names
        .push(rcgen::SanType::DnsName("extra.example".try_into().unwrap()));
    let mut usage = testutil::params("web-1");
    usage
        .key_usages
        .push(rcgen::KeyUsagePurpose::KeyEncipherment);
    let mut eku = testutil::params("web-1");
    eku.extended_key_usages
        .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    for (params, kind) in [
        (ca, "CA:TRUE"),
        (san, "subject alternative names"),
        (usage, "key usages"),
        (eku, "extended key usages"),
    ] {
        let der = testutil::der(&params, &KeyPair::generate().unwrap());
        let req = request(&body, "web-1", der);
        let e = decide(&req, facts(t.clone()), NOW).unwrap_err();
        assert!(matches!(e, Refusal::Csr(_)), "{e}");
        assert!(e.to_string().contains(kind), "{kind}: {e}");
    }
    // A request made for another id.
    let req = request(&body, "web-1", testutil::good("db-1"));
    assert!(matches!(
        decide(&req, facts(t.clone()), NOW).unwrap_err(),
        Refusal::Csr(_)
    ));
    // A signature that does not verify.
    let mut der = testutil::good("web-1");
    let last = der.len() - 1;
    der[last] ^= 1;
    let req = request(&body, "web-1", der);
    assert_eq!(
        decide(&req, facts(t), NOW).unwrap_err(),
        Refusal::Csr(CsrProblem::BadSignature)
    );
}

#[test]
fn a_replayed_request_is_refused() {
    let (t, body) = token(None, false);
    let req = request(&body, "web-1", testutil::good("web-1"));
    let replayed = Facts {
        key_enrolled: true,
        ..facts(t)
    };
    assert_eq!(
        decide(&req, replayed, NOW).unwrap_err(),
        Refusal::KeyReplayed
    );
}

#[test]
fn a_renewal_is_granted_for_a_new_key_of_the_connections_own_id_only() {
    let check = |der: &[u8]| csr::check(der, "web-1");
    let grant = decide_renewal("web-1", check(&testutil::good("web-1")), false, false).unwrap();
    assert_eq!((grant.agent_id.as_str(), grant.token_id), ("web-1", None));
    assert!(matches!(
        decide_renewal("web-1", check(&testutil::good("db-1")), false, false),
        Err(Refusal::Csr(_))
    ));
    assert_eq!(
        decide_renewal("web-1", check(&testutil::good("web-1")), true, false).unwrap_err(),
        Refusal::KeyReplayed
    );
    assert_eq!(
        decide_renewal("web-1", check(&testutil::good("web-1")), false, true).unwrap_err(),
        Refusal::CertificateRevoked
    );
}
