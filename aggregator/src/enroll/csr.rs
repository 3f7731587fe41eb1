//! What a certificate signing request may ask for.
//!
//! The aggregator signs the agent's public key and nothing else it asks: the certificate it
//! issues has the shape of every agent certificate ([`crate::pki`]: clientAuth, digitalSignature,
//! the SAN URI of the id). A request asking for more is refused rather than trimmed, so a
//! misbuilt or malicious agent learns at once that it does not get what it asked:
//!
//! - the signature must verify (the agent holds the key);
//! - the key is ECDSA P-256 or P-384, or Ed25519 (what the agents make and rustls verifies);
//! - no CA:TRUE basic constraints;
//! - key usage, if any, only digitalSignature. keyEncipherment is refused too: it serves RSA
//!   key transport in TLS 1.2 and earlier, and Outpost speaks TLS 1.3 only, with no RSA keys;
//! - extended key usage, if any, only clientAuth;
//! - subject alternative names, if any, exactly one: `urn:outpost:agent:<the id asked for>`;
//! - a common name, if any, is the id asked for;
//! - no other extension.

use outpost_common::tls;
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use rustls_pki_types::CertificateSigningRequestDer;

/// A request that passed every check: the key to certify.
#[derive(Debug)]
pub struct CheckedCsr {
    /// The public key, as the certificate will carry it.
    pub public_key: rcgen::PublicKey,
    /// SHA-256 of the key's DER: what a replay is recognised by.
    pub key_sha256: [u8; 32],
}

/// Why a request is refused; the text is sent to the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrProblem {
    #[error("the certificate signing request cannot be read: {0}")]
    Unreadable(String),
    #[error("the certificate signing request's signature does not verify")]
    BadSignature,
    #[error(
        "the certificate signing request's key is not ECDSA P-256, ECDSA P-384 or Ed25519 \
         ({0})"
    )]
    KeyType(String),
    #[error("the certificate signing request asks to be a CA (basic constraints CA:TRUE)")]
    Ca,
    #[error("the certificate signing request asks for key usages beyond digitalSignature: {0}")]
    KeyUsage(String),
    #[error("the certificate signing request asks for extended key usages beyond clientAuth: {0}")]
    ExtendedKeyUsage(String),
    #[error(
        "the certificate signing request's subject alternative names must be exactly `{wanted}` \
         (or none); it asks for {found}"
    )]
    San { wanted: String, found: String },
    #[error(
        "the certificate signing request's common name `{found}` is not the agent id asked for \
         (`{wanted}`)"
    )]
    Name { wanted: String, found: String },
    #[error("the certificate signing request asks for an extension the aggregator never grants")]
    Extension,
}

/// Checks `der` as a request for agent `agent_id` (already known valid).
pub fn check(der: &[u8], agent_id: &str) -> Result<CheckedCsr, CsrProblem> {
    let parsed =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
            .map_err(|e| match e {
                rcgen::Error::InvalidCertificationRequestSignature => CsrProblem::BadSignature,
                rcgen::Error::UnsupportedExtension => CsrProblem::Extension,
                rcgen::Error::UnsupportedSignatureAlgorithm => {
                    CsrProblem::KeyType("an unsupported algorithm".to_owned())
                }
                other => CsrProblem::Unreadable(other.to_string()),
            })?;
    let alg = parsed.public_key.algorithm();
    if ![
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ]
    .contains(&alg)
    {
        return Err(CsrProblem::KeyType(format!("{alg:?}")));
    }
    let p = &parsed.params;
    if matches!(p.is_ca, IsCa::Ca(_)) {
        return Err(CsrProblem::Ca);
    }
    let extra_usages: Vec<String> = p
        .key_usages
        .iter()
        .filter(|u| **u != KeyUsagePurpose::DigitalSignature)
        .map(|u| format!("{u:?}"))
        .collect();
    if !extra_usages.is_empty() {
        return Err(CsrProblem::KeyUsage(extra_usages.join(", ")));
    }
    let extra_ekus: Vec<String> = p
        .extended_key_usages
        .iter()
        .filter(|u| **u != ExtendedKeyUsagePurpose::ClientAuth)
        .map(|u| format!("{u:?}"))
        .collect();
    if !extra_ekus.is_empty() {
        return Err(CsrProblem::ExtendedKeyUsage(extra_ekus.join(", ")));
    }
    let wanted = tls::agent_uri(agent_id);
    let san_ok = match p.subject_alt_names.as_slice() {
        [] => true,
        [SanType::URI(uri)] => uri.as_str() == wanted,
        _ => false,
    };
    if !san_ok {
        let found: Vec<String> = p
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => format!("URI `{}`", u.as_str()),
                SanType::DnsName(d) => format!("DNS `{}`", d.as_str()),
                SanType::Rfc822Name(e) => format!("email `{}`", e.as_str()),
                SanType::IpAddress(ip) => format!("IP {ip}"),
                SanType::OtherName(_) => "an other name".to_owned(),
                _ => "an unknown name".to_owned(),
            })
            .collect();
        return Err(CsrProblem::San {
            wanted,
            found: found.join(", "),
        });
    }
    if let Some(cn) = p.distinguished_name.get(&rcgen::DnType::CommonName) {
        let found = match cn {
            rcgen::DnValue::Utf8String(s) => s.clone(),
            rcgen::DnValue::PrintableString(s) => s.as_str().to_owned(),
            rcgen::DnValue::Ia5String(s) => s.as_str().to_owned(),
            other => format!("{other:?}"),
        };
        if found != agent_id {
            return Err(CsrProblem::Name {
                wanted: agent_id.to_owned(),
                found,
            });
        }
    }
    let key_sha256 = super::token::sha256(parsed.public_key.der_bytes());
    Ok(CheckedCsr {
        public_key: parsed.public_key,
        key_sha256,
    })
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Requests made the way an agent makes them, and ways to spoil them.
    use rcgen::{CertificateParams, KeyPair};

    /// A request for `agent_id` as the agent makes it: a new P-256 key, the SAN URI, clientAuth.
    pub fn params(agent_id: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, agent_id);
        p.subject_alt_names = vec![rcgen::SanType::URI(
            outpost_common::tls::agent_uri(agent_id).try_into().unwrap(),
        )];
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p
    }

    /// The DER of a request with `params`, signed by `key`.
    pub fn der(params: &CertificateParams, key: &KeyPair) -> Vec<u8> {
        params.serialize_request(key).unwrap().der().to_vec()
    }

    /// A good request for `agent_id` with a new key.
    pub fn good(agent_id: &str) -> Vec<u8> {
        der(&params(agent_id), &KeyPair::generate().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, KeyPair};

    use super::testutil::{der, good, params};
    use super::*;

    fn problem(p: rcgen::CertificateParams) -> CsrProblem {
        check(&der(&p, &KeyPair::generate().unwrap()), "web-1").unwrap_err()
    }

    #[test]
    fn a_request_as_agents_make_it_passes_and_its_key_is_recognised() {
        let key = KeyPair::generate().unwrap();
        let checked = check(&der(&params("web-1"), &key), "web-1").unwrap();
        assert_eq!(
            checked.key_sha256,
            super::super::token::sha256(key.der_bytes())
        );
        // Without SAN, name or usages, too: the aggregator sets them.
        let bare = rcgen::CertificateParams::default();
        let mut bare = bare;
        bare.distinguished_name = rcgen::DistinguishedName::new();
        assert!(check(&der(&bare, &key), "web-1").is_ok());
        // Ed25519 and P-384 keys are fine.
        for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let key = KeyPair::generate_for(alg).unwrap();
            assert!(check(&der(&params("web-1"), &key), "web-1").is_ok());
        }
    }

    #[test]
    fn a_request_whose_signature_does_not_verify_is_refused() {
        let mut bytes = good("web-1");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert_eq!(
            check(&bytes, "web-1").unwrap_err(),
            CsrProblem::BadSignature
        );
        assert!(matches!(
            check(b"garbage", "web-1").unwrap_err(),
            CsrProblem::Unreadable(_)
        ));
    }

    #[test]
    fn a_request_to_be_a_ca_is_refused() {
        let mut p = params("web-1");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        assert_eq!(problem(p), CsrProblem::Ca);
        // CA:FALSE said out loud is fine.
        let mut p = params("web-1");
        p.is_ca = IsCa::ExplicitNoCa;
        assert!(check(&der(&p, &KeyPair::generate().unwrap()), "web-1").is_ok());
    }

    #[test]
    fn key_usages_beyond_digital_signature_are_refused_key_encipherment_included() {
        for usage in [
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ] {
            let mut p = params("web-1");
            p.key_usages.push(usage);
            assert!(matches!(problem(p), CsrProblem::KeyUsage(_)), "{usage:?}");
        }
    }

    #[test]
    fn extended_key_usages_beyond_client_auth_are_refused() {
        let mut p = params("web-1");
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        assert!(matches!(problem(p), CsrProblem::ExtendedKeyUsage(_)));
        let mut p = params("web-1");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        assert!(matches!(problem(p), CsrProblem::ExtendedKeyUsage(_)));
    }

    #[test]
    fn any_san_but_the_agents_own_uri_is_refused() {
        let mut extra = params("web-1");
        extra
            .subject_alt_names
            .push(rcgen::SanType::DnsName("evil.example".try_into().unwrap()));
        let mut other = params("web-1");
        other.subject_alt_names = vec![rcgen::SanType::URI(
            outpost_common::tls::agent_uri("db-1").try_into().unwrap(),
        )];
        let mut ip = params("web-1");
        ip.subject_alt_names = vec![rcgen::SanType::IpAddress([10, 0, 0, 1].into())];
        for p in [extra, other, ip] {
            let e = problem(p);
            assert!(matches!(e, CsrProblem::San { .. }), "{e}");
            assert!(e.to_string().contains("urn:outpost:agent:web-1"), "{e}");
        }
    }

    #[test]
    fn a_common_name_that_is_not_the_id_asked_for_is_refused() {
        let mut p = params("web-1");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "not an id!");
        assert!(matches!(problem(p), CsrProblem::Name { .. }));
        // A request made for another id, checked for this one.
        assert!(check(&good("db-1"), "web-1").is_err());
    }
}
