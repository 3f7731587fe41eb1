//! Enrollment: how an agent with nothing but a token gets its identity, and how it renews it.
//!
//! # The token
//!
//! `outpost-enroll-<base64url>`: the base64url (no padding) of a bincode [`TokenBody`] — the
//! token's id (8 bytes, names it in lists and the audit log), its secret (32 random bytes; the
//! aggregator keeps only their SHA-256), the SHA-256 of the aggregator's CA certificate (DER),
//! and the endpoints (`host:port`) to enroll at. With the CA's hash in the token, the agent
//! verifies the aggregator on first contact with nothing else copied: the aggregator sends its
//! CA in its certificate chain, the agent checks the CA's hash against the token's, then checks
//! the server certificate against that CA and the endpoint's name as always
//! ([`crate::tls::pinned_client_config`]).
//!
//! # The conversation
//!
//! On the aggregator's QUIC port, with the ALPN [`ALPN`] and no client certificate, the agent
//! opens one bidirectional stream and sends [`Message::EnrollRequest`]: the token's id and
//! secret, the agent id it asks for and a certificate signing request (PKCS#10, DER) for a key
//! it made and keeps. The aggregator answers [`Message::EnrollResponse`]: the certificate and
//! the CA, or the reason it refused. Frames are those of [`crate::wire`].
//!
//! Renewal travels on an established, mutually authenticated connection: the agent opens a
//! stream with [`Message::RenewRequest`] (a CSR for a new key, for its own id) and gets a
//! [`Message::RenewResponse`].
//!
//! [`Message::EnrollRequest`]: crate::wire::Message::EnrollRequest
//! [`Message::EnrollResponse`]: crate::wire::Message::EnrollResponse
//! [`Message::RenewRequest`]: crate::wire::Message::RenewRequest
//! [`Message::RenewResponse`]: crate::wire::Message::RenewResponse

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The ALPN protocol of an enrollment connection.
pub const ALPN: &[u8] = b"outpost-enroll/1";

/// What every enrollment token starts with, so secret scanners can find leaked ones.
pub const TOKEN_PREFIX: &str = "outpost-enroll-";

/// The token format's version, the first field of [`TokenBody`].
pub const TOKEN_VERSION: u8 = 1;

/// Endpoints a token may carry at most.
pub const MAX_ENDPOINTS: usize = 16;

/// The longest endpoint accepted in a token.
pub const MAX_ENDPOINT_LEN: usize = 255;

/// What an enrollment token holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBody {
    pub version: u8,
    pub id: [u8; 8],
    pub secret: [u8; 32],
    /// SHA-256 of the aggregator's CA certificate, DER.
    pub ca_sha256: [u8; 32],
    /// Where to enroll: `host:port`, tried in order.
    pub endpoints: Vec<String>,
}

/// Why a text is not an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not an enrollment token: it does not start with `{TOKEN_PREFIX}`")]
    Prefix,
    #[error("not an enrollment token: {0}")]
    Malformed(String),
    #[error(
        "enrollment token version {0} is not supported (this build reads version {TOKEN_VERSION})"
    )]
    Version(u8),
    #[error("the enrollment token names no endpoint")]
    NoEndpoint,
    #[error("the enrollment token's endpoint `{0}` is not host:port")]
    Endpoint(String),
}

impl TokenBody {
    /// The token's id as it is listed: 16 hex digits.
    pub fn id_hex(&self) -> String {
        crate::tls::hex(&self.id)
    }

    /// The token as text.
    pub fn encode(&self) -> String {
        let bytes = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .unwrap_or_else(|e| unreachable!("a token body always encodes: {e}"));
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Reads a token; surrounding white space (a token file's newline) is ignored.
    pub fn parse(text: &str) -> Result<TokenBody, TokenError> {
        let rest = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Prefix)?;
        if rest.len() > 4096 {
            return Err(TokenError::Malformed("it is too long".to_owned()));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(rest)
            .map_err(|e| TokenError::Malformed(format!("bad base64: {e}")))?;
        let version = *bytes
            .first()
            .ok_or_else(|| TokenError::Malformed("it is empty".to_owned()))?;
        if version != TOKEN_VERSION {
            return Err(TokenError::Version(version));
        }
        let config = bincode::config::standard().with_limit::<8192>();
        let (body, used): (TokenBody, usize) = bincode::serde::decode_from_slice(&bytes, config)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        if used != bytes.len() {
            return Err(TokenError::Malformed("trailing bytes".to_owned()));
        }
        if body.endpoints.is_empty() {
            return Err(TokenError::NoEndpoint);
        }
        if body.endpoints.len() > MAX_ENDPOINTS {
            return Err(TokenError::Malformed(format!(
                "{} endpoints; at most {MAX_ENDPOINTS}",
                body.endpoints.len()
            )));
        }
        for e in &body.endpoints {
            check_endpoint(e)?;
        }
        Ok(body)
    }
}

/// Checks that `endpoint` is `host:port` (a name, an IPv4 address or a bracketed IPv6 one) and
/// answers its host and port.
pub fn check_endpoint(endpoint: &str) -> Result<(&str, u16), TokenError> {
    let bad = || TokenError::Endpoint(endpoint.to_owned());
    if endpoint.is_empty() || endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(bad());
    }
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            v6
        }
        None => {
            let name_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
            if !name_ok {
                return Err(bad());
            }
            host
        }
    };
    Ok((host, port))
}

/// SHA-256 of a certificate's DER, as tokens pin it.
pub fn ca_sha256(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The agent's request to enroll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The token's id and secret (the rest of the token is the agent's business).
    pub token_id: [u8; 8],
    pub secret: [u8; 32],
    /// The agent id asked for.
    pub agent_id: String,
    /// PKCS#10 certificate signing request, DER.
    #[serde(with = "serde_bytes")]
    pub csr_der: Vec<u8>,
    pub agent_version: String,
}

/// The aggregator's answer to an [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnrollResponse {
    Issued(Issued),
    /// Refused; the reason is meant for the operator running the agent.
    Refused {
        reason: String,
    },
}

/// A certificate issued to an agent, at enrollment or renewal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issued {
    pub agent_id: String,
    /// The agent's certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Labels the token gives the agent (enrollment only), sorted by key.
    pub labels: Vec<(String, String)>,
    /// When the certificate expires, nanoseconds since the epoch.
    pub not_after_ns: i64,
}

/// The agent's request for a new certificate, on its authenticated connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// PKCS#10 certificate signing request for a new key, DER.
    #[serde(with = "serde_bytes")]
    pub csr_der: Vec<u8>,
}

/// The aggregator's answer to a [`RenewRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RenewResponse {
    Issued(Issued),
    Refused { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> TokenBody {
        TokenBody {
            version: TOKEN_VERSION,
            id: [1, 2, 3, 4, 5, 6, 7, 8],
            secret: [9; 32],
            ca_sha256: [7; 32],
            endpoints: vec![
                "aggregator.example.net:4433".to_owned(),
                "[::1]:4433".to_owned(),
            ],
        }
    }

    #[test]
    fn a_token_reads_back_as_written() {
        let text = body().encode();
        assert!(text.starts_with(TOKEN_PREFIX));
        // Safe to paste into a shell unquoted.
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(TokenBody::parse(&format!("{text}\n")).unwrap(), body());
        assert_eq!(body().id_hex(), "0102030405060708");
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        assert_eq!(TokenBody::parse("outpost_abc_def"), Err(TokenError::Prefix));
        assert!(matches!(
            TokenBody::parse("outpost-enroll-!!!"),
            Err(TokenError::Malformed(_))
        ));
        let mut text = body().encode();
        text.truncate(text.len() - 10);
        assert!(matches!(
            TokenBody::parse(&text),
            Err(TokenError::Malformed(_))
        ));
        let future = TokenBody {
            version: 9,
            ..body()
        };
        assert_eq!(
            TokenBody::parse(&future.encode()),
            Err(TokenError::Version(9))
        );
        let none = TokenBody {
            endpoints: Vec::new(),
            ..body()
        };
        assert_eq!(
            TokenBody::parse(&none.encode()),
            Err(TokenError::NoEndpoint)
        );
        let bad = TokenBody {
            endpoints: vec!["no port".to_owned()],
            ..body()
        };
        assert_eq!(
            TokenBody::parse(&bad.encode()),
            Err(TokenError::Endpoint("no port".to_owned()))
        );
    }

    #[test]
    fn endpoints_are_host_and_port() {
        assert_eq!(check_endpoint("a.example:1"), Ok(("a.example", 1)));
        assert_eq!(check_endpoint("10.0.0.1:4433"), Ok(("10.0.0.1", 4433)));
        assert_eq!(check_endpoint("[::1]:4433"), Ok(("::1", 4433)));
        for bad in [
            "",
            "host",
            "host:0",
            "host:99999",
            ":4433",
            "a b:1",
            "[zz]:1",
            "::1:4433",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
