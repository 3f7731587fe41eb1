//! The one place that builds TLS configurations and reads identities from certificates.
//!
//! Every configuration uses one explicit crypto provider (ring), TLS 1.3 only, and the ALPN
//! protocol [`crate::wire::ALPN`]. The aggregator requires a client certificate issued by its CA
//! and not revoked by its CRL; the agent verifies the aggregator's certificate and name against
//! the same CA.
//!
//! The agent's identity is the SAN URI `urn:outpost:agent:<id>` of its certificate, read by
//! [`identity_from_cert`]; nothing in a payload can claim another identity.
//!
//! Test-only bypasses live in [`dangerous`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::wire::ALPN;

/// The prefix of the SAN URI that names an agent.
pub const AGENT_URI_PREFIX: &str = "urn:outpost:agent:";

/// The longest agent id accepted.
pub const MAX_AGENT_ID_LEN: usize = 128;

/// Errors building a TLS configuration or reading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read {what}: {reason}")]
    Read {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{path}: contains no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// Errors mapping a certificate to an agent identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the certificate has no SAN URI of the form {AGENT_URI_PREFIX}<id>")]
    NoAgentUri,
    #[error("the certificate names an invalid agent id `{0}` (1-128 of A-Z a-z 0-9 . _ -)")]
    InvalidAgentId(String),
    #[error("the certificate names more than one agent id")]
    Ambiguous,
}

/// Who a verified certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub agent_id: String,
    /// The certificate's serial number, big-endian, without leading zero bytes.
    pub serial: Vec<u8>,
    /// When the certificate expires, in nanoseconds since the epoch.
    pub not_after_ns: i64,
}

impl Identity {
    /// The serial number in colon-free lower-case hex, for logs.
    pub fn serial_hex(&self) -> String {
        hex(&self.serial)
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` is a valid agent id: 1–128 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The SAN URI that names agent `id`.
pub fn agent_uri(id: &str) -> String {
    format!("{AGENT_URI_PREFIX}{id}")
}

fn trim_serial(raw: &[u8]) -> Vec<u8> {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].to_vec()
}

/// Reads the agent identity from a (verified) leaf certificate.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Result<Identity, IdentityError> {
    use x509_parser::extensions::GeneralName;

    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let mut found: Option<String> = None;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(id) = uri.strip_prefix(AGENT_URI_PREFIX)
            {
                if !is_valid_agent_id(id) {
                    return Err(IdentityError::InvalidAgentId(id.to_owned()));
                }
                if found.as_deref().is_some_and(|f| f != id) {
                    return Err(IdentityError::Ambiguous);
                }
                found = Some(id.to_owned());
            }
        }
    }
    let agent_id = found.ok_or(IdentityError::NoAgentUri)?;
    let not_after_ns = cert
        .validity()
        .not_after
        .timestamp()
        .saturating_mul(1_000_000_000);
    Ok(Identity {
        agent_id,
        serial: trim_serial(cert.raw_serial()),
        not_after_ns,
    })
}

/// Reads the identity from a quinn connection's peer certificate chain.
pub fn identity_from_connection(conn: &quinn::Connection) -> Result<Identity, IdentityError> {
    let chain = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(IdentityError::NoCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    identity_from_cert(leaf)
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |reason: String| TlsError::Read {
        path: path.to_owned(),
        what: "certificates",
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        what: "private key",
        reason: e.to_string(),
    })
}

/// Reads the CRLs in a PEM file; a missing file means no revocations.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let read_err = |reason: String| TlsError::Read {
        path: path.to_owned(),
        what: "revocation list",
        reason,
    };
    CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| read_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))
}

/// The serial numbers (trimmed as in [`Identity::serial`]) that the CRLs revoke.
pub fn revoked_serials(
    crls: &[CertificateRevocationListDer<'_>],
) -> Result<HashSet<Vec<u8>>, TlsError> {
    let mut out = HashSet::new();
    for crl in crls {
        let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
            .map_err(|e| TlsError::Config(format!("unparsable revocation list: {e}")))?;
        for revoked in parsed.iter_revoked_certificates() {
            out.insert(trim_serial(revoked.raw_serial()));
        }
    }
    Ok(out)
}

/// The one crypto provider Outpost uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::Config(format!("CA certificate rejected: {e}")))?;
    }
    Ok(roots)
}

/// QUIC transport settings shared by both sides.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    /// Close a connection silent for this long (the smaller of both sides' values applies).
    pub idle_timeout: Duration,
    /// Send keep-alives this often; `None` for none (the aggregator relies on the agent's).
    pub keep_alive: Option<Duration>,
    /// Bidirectional streams the peer may open at once.
    pub max_concurrent_bidi_streams: u32,
    /// Probe for a larger path MTU; turn off on tunnels that drop large packets.
    pub mtu_discovery: bool,
}

impl Default for QuicSettings {
    fn default() -> Self {
        QuicSettings {
            idle_timeout: Duration::from_secs(60),
            keep_alive: None,
            max_concurrent_bidi_streams: 64,
            mtu_discovery: true,
        }
    }
}

fn transport(settings: &QuicSettings) -> Result<Arc<quinn::TransportConfig>, TlsError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout)
        .map_err(|e| TlsError::Config(format!("idle timeout: {e}")))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(settings.keep_alive);
    t.max_concurrent_bidi_streams(settings.max_concurrent_bidi_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    if !settings.mtu_discovery {
        t.mtu_discovery_config(None);
    }
    Ok(Arc::new(t))
}

/// The aggregator's QUIC server configuration: requires a client certificate issued by `ca` and
/// not revoked by `crls`.
pub fn server_config(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    settings: &QuicSettings,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone());
    if !crls.is_empty() {
        verifier = verifier
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    // A client without a certificate completes the handshake only to enroll
    // ([`crate::enroll::ALPN`]); the aggregator refuses it anything else.
    let verifier = verifier
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    // The CA travels with the server's certificate, so that an enrolling agent can check it
    // against the hash its token pins.
    let mut chain = chain;
    for cert in ca {
        if !chain.contains(cert) {
            chain.push(cert.clone());
        }
    }
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("server certificate: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec(), crate::enroll::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(settings)?);
    Ok(config)
}

/// The agent's QUIC client configuration: presents `chain`/`key` and trusts only `ca`.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    settings: &QuicSettings,
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("agent certificate: {e}")))?;
    finish_client(tls, settings)
}

fn finish_client(
    mut tls: rustls::ClientConfig,
    settings: &QuicSettings,
) -> Result<quinn::ClientConfig, TlsError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(settings)?);
    Ok(config)
}

/// Whether an established connection is an enrollment one ([`crate::enroll::ALPN`]).
pub fn is_enrollment(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == crate::enroll::ALPN)
}

/// The client configuration of an enrolling agent: no certificate, ALPN
/// [`crate::enroll::ALPN`], and the aggregator verified against the CA whose SHA-256 the token
/// pins — taken from the chain the aggregator sends — and the endpoint's name.
pub fn pinned_client_config(
    ca_sha256: [u8; 32],
    settings: &QuicSettings,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCa {
        pin: ca_sha256,
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![crate::enroll::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(settings)?);
    Ok(config)
}

/// Verifies a server against the CA in its own chain whose hash is pinned: the pin replaces
/// the root store, and everything else (signatures, validity, key usage, the name) is checked
/// as for any server.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| crate::enroll::ca_sha256(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the aggregator's CA is not the one the token names (their SHA-256 differ): \
                     the token is for another aggregator, or something is in the way"
                        .to_owned(),
                )
            })?;
        let roots =
            roots(&[ca.clone().into_owned()]).map_err(|e| rustls::Error::General(e.to_string()))?;
        let others: Vec<CertificateDer<'_>> =
            intermediates.iter().filter(|c| *c != ca).cloned().collect();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?
        .verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Configurations no deployment should use; they exist so tests can play a misbehaving peer.
pub mod dangerous {
    use super::*;

    /// A client configuration that presents no certificate at all.
    pub fn client_config_without_certificate(
        ca: &[CertificateDer<'static>],
        settings: &QuicSettings,
    ) -> Result<quinn::ClientConfig, TlsError> {
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth();
        finish_client(tls, settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_sans(sans: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*s).unwrap()))
            .collect();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0, 0x12, 0x34]));
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identity_comes_from_the_san_uri() {
        let id = identity_from_cert(&cert_with_sans(&["urn:outpost:agent:web-01.prod"])).unwrap();
        assert_eq!(id.agent_id, "web-01.prod");
        assert_eq!(id.serial_hex(), "1234");
        assert!(id.not_after_ns > 0);
    }

    #[test]
    fn bad_identities_are_refused() {
        assert_eq!(
            identity_from_cert(&cert_with_sans(&["https://x"])),
            Err(IdentityError::NoAgentUri)
        );
        assert_eq!(
            identity_from_cert(&cert_with_sans(&["urn:outpost:agent:a/b"])),
            Err(IdentityError::InvalidAgentId("a/b".into()))
        );
        assert_eq!(
            identity_from_cert(&cert_with_sans(&[
                "urn:outpost:agent:a",
                "urn:outpost:agent:b"
            ])),
            Err(IdentityError::Ambiguous)
        );
        assert!(matches!(
            identity_from_cert(&CertificateDer::from(vec![1, 2, 3])),
            Err(IdentityError::Unparsable(_))
        ));
    }

    #[test]
    fn agent_ids_are_checked() {
        assert!(is_valid_agent_id("a"));
        assert!(is_valid_agent_id(&"x".repeat(128)));
        assert!(!is_valid_agent_id(&"x".repeat(129)));
        assert!(!is_valid_agent_id(""));
        assert!(!is_valid_agent_id("a b"));
        assert!(!is_valid_agent_id("ä"));
    }
}
