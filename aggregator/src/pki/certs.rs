//! Building certificates with rcgen: the CA, the aggregator's server certificate and agent
//! certificates, shaped so that rustls/webpki and [`outpost_common::tls`] accept them.
//!
//! - CA: basic constraints `CA:TRUE, pathlen:0` (it signs only leaves), key usages keyCertSign,
//!   cRLSign and digitalSignature.
//! - Server: serverAuth EKU, digitalSignature, SANs for every name agents may dial.
//! - Agent: clientAuth EKU, digitalSignature, SAN URI `urn:outpost:agent:<id>`; with a key made
//!   here (`pki issue-agent`) or for the key of an agent's signing request (enrollment, renewal).
//!
//! Keys are ECDSA P-256. Serial numbers are 16 random bytes with the top bit clear and the
//! second-highest set, so they are positive, have no leading zero byte, and their hex is the
//! same whether read raw or trimmed as [`outpost_common::tls::Identity::serial`] does.

use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use outpost_common::tls;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;

use super::files::read_optional;
use super::{Layout, PkiError};

/// The CA as loaded from `ca.pem` and `ca.key`, ready to sign.
pub(super) struct Ca {
    pub(super) issuer: Issuer<'static, KeyPair>,
    pub(super) not_after: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuer's Debug already leaves the key out.
        f.debug_struct("Ca")
            .field("issuer", &self.issuer)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A freshly generated key and the PEM of its certificate.
#[derive(Debug)]
pub(super) struct Minted {
    pub(super) cert_pem: String,
    /// Empty for a certificate of a key the agent holds ([`agent_for_key`]).
    pub(super) key_pem: String,
    pub(super) serial_hex: String,
    pub(super) not_after_ns: i64,
}

/// Generates a new self-signed CA valid from `not_before` to `not_after`.
pub(super) fn new_ca(
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(Minted, Ca), PkiError> {
    let (not_before, not_after) = validity(not_before, not_after)?;
    let mut params = base_params(not_before, not_after);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Outpost");
    // The creation date tells an old CA from its replacement; part of the random serial makes
    // every CA's name unique, so a certificate from a foreign CA is reported as an unknown
    // issuer rather than as a bad signature from ours.
    let serial = serial_hex(&params);
    dn.push(
        DnType::CommonName,
        format!(
            "Outpost CA {} {}",
            not_before.date(),
            serial.get(..12).unwrap_or(&serial)
        ),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(gen_err("generate the CA key"))?;
    let cert = params.self_signed(&key).map_err(gen_err("sign the CA"))?;
    let minted = Minted {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial_hex: serial_hex(&params),
        not_after_ns: to_ns(not_after),
    };
    Ok((
        minted,
        Ca {
            issuer: Issuer::new(params, key),
            not_after,
        },
    ))
}

/// Loads the CA from the directory, checking that the key belongs to the certificate.
pub(super) fn load_ca(layout: &Layout) -> Result<Ca, PkiError> {
    let cert_path = layout.ca_cert();
    let key_path = layout.ca_key();
    let cert_pem = read_optional(&cert_path)?.ok_or_else(|| PkiError::NotInitialised {
        path: cert_path.clone(),
    })?;
    let key_pem = read_optional(&key_path)?.ok_or_else(|| PkiError::NotInitialised {
        path: key_path.clone(),
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Unreadable {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let der = pem_certificate(&cert_path, &cert_pem)?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| PkiError::Unreadable {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if parsed.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key)
    {
        return Err(PkiError::KeyMismatch {
            key: key_path,
            cert: cert_path,
        });
    }
    let not_after = parsed.validity().not_after.to_datetime();
    let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::Unreadable {
        path: cert_path,
        reason: e.to_string(),
    })?;
    Ok(Ca { issuer, not_after })
}

/// Issues the aggregator's certificate for `names` (already validated by [`server_sans`]).
pub(super) fn new_server(
    ca: &Ca,
    sans: Vec<SanType>,
    common_name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Minted, PkiError> {
    let mut params = leaf_params(common_name, not_before, not_after)?;
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sign_leaf(ca, params, "the server certificate")
}

/// Issues the certificate of agent `id` (already validated), with a new key.
pub(super) fn new_agent(
    ca: &Ca,
    id: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Minted, PkiError> {
    let params = agent_params(id, not_before, not_after)?;
    sign_leaf(ca, params, "the agent certificate")
}

/// Issues the certificate of agent `id` (already validated) for a key the agent holds: the
/// same shape as [`new_agent`]'s, and no private key (it never leaves the agent).
pub(super) fn agent_for_key(
    ca: &Ca,
    id: &str,
    key: &impl PublicKeyData,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Minted, PkiError> {
    let params = agent_params(id, not_before, not_after)?;
    let cert = params
        .signed_by(key, &ca.issuer)
        .map_err(gen_err(format!("sign the certificate of agent {id}")))?;
    Ok(Minted {
        cert_pem: cert.pem(),
        key_pem: String::new(),
        serial_hex: serial_hex(&params),
        not_after_ns: to_ns(params.not_after),
    })
}

/// An agent certificate: clientAuth, digitalSignature, the SAN URI of its id.
fn agent_params(
    id: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = leaf_params(&format!("outpost agent {id}"), not_before, not_after)?;
    let uri = rcgen::string::Ia5String::try_from(tls::agent_uri(id))
        .map_err(|e| PkiError::InvalidAgentId(format!("{id} ({e})")))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// Every certificate of a PEM file, in order.
pub(super) fn pem_certificates(
    path: &Path,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Turns the requested server names into SANs: each must be a DNS name or an IP address;
/// `localhost`, 127.0.0.1 and ::1 are always added. Duplicates are dropped, order kept.
pub(super) fn server_sans(names: &[String]) -> Result<(Vec<String>, Vec<SanType>), PkiError> {
    let mut kept: Vec<String> = Vec::new();
    let always = ["localhost", "127.0.0.1", "::1"].map(String::from);
    for name in names.iter().chain(always.iter()) {
        let name = name.trim();
        if ServerName::try_from(name).is_err() {
            return Err(PkiError::InvalidServerName(name.to_owned()));
        }
        if !kept.iter().any(|k| k.eq_ignore_ascii_case(name)) {
            kept.push(name.to_owned());
        }
    }
    let sans = kept
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => rcgen::string::Ia5String::try_from(name.as_str())
                .map(SanType::DnsName)
                .map_err(|_| PkiError::InvalidServerName(name.clone())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((kept, sans))
}

/// Reads the single certificate of a PEM file produced by this module.
pub(super) fn pem_certificate(path: &Path, pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Converts a time to what X.509 can carry: whole seconds, from 1970 to 9999.
pub(super) fn to_asn1(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or_else(|| PkiError::Validity("a time before 1970".into()))?;
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| PkiError::Validity(format!("{secs} s after 1970 is out of range: {e}")))
}

/// Nanoseconds since the epoch, saturating.
pub(super) fn to_ns(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// A new random serial number (see the module documentation for its shape).
fn new_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn serial_hex(params: &CertificateParams) -> String {
    params
        .serial_number
        .as_ref()
        .map(|s| tls::hex(&s.to_bytes()))
        .unwrap_or_default()
}

fn validity(
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let (from, to) = (to_asn1(not_before)?, to_asn1(not_after)?);
    if to <= from {
        return Err(PkiError::Validity(format!(
            "not after ({to}) must be later than not before ({from})"
        )));
    }
    Ok((from, to))
}

fn base_params(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(new_serial());
    params
}

fn leaf_params(
    common_name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let (not_before, not_after) = validity(not_before, not_after)?;
    let mut params = base_params(not_before, not_after);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Outpost");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn sign_leaf(ca: &Ca, params: CertificateParams, what: &str) -> Result<Minted, PkiError> {
    let key = KeyPair::generate().map_err(gen_err(format!("generate the key of {what}")))?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(gen_err(format!("sign {what}")))?;
    Ok(Minted {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial_hex: serial_hex(&params),
        not_after_ns: to_ns(params.not_after),
    })
}

/// Wraps an rcgen error with what was being done, for `map_err`.
pub(super) fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |cause| PkiError::Generate { what, cause }
}
