//! What an enrollment token carries besides its secret, read from the PKI directory: the CA
//! to pin, and the endpoints to enroll at when the operator names none.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use x509_parser::extensions::GeneralName;

/// The DER of the CA certificate in `path` (`ca.pem`), whose hash the token pins.
pub fn ca_der(path: &Path) -> anyhow::Result<Vec<u8>> {
    outpost_common::tls::load_certs(path)?
        .into_iter()
        .next()
        .map(|c| c.to_vec())
        .with_context(|| format!("{}: no certificate", path.display()))
}

/// The server certificate's DNS names and IP addresses (`path`, `server.pem`) with the ingest
/// `port`: loopback ones only when there is nothing else, since an agent elsewhere would dial
/// itself. An error when the certificate names none.
pub fn from_server_certificate(path: &Path, port: u16) -> anyhow::Result<Vec<String>> {
    let chain = outpost_common::tls::load_certs(path)?;
    let leaf = chain
        .first()
        .with_context(|| format!("{}: no certificate", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: cannot parse the certificate: {e}", path.display()))?;
    let mut names: Vec<(bool, String)> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            let endpoint = match name {
                GeneralName::DNSName(dns) => Some((
                    dns.eq_ignore_ascii_case("localhost"),
                    format!("{dns}:{port}"),
                )),
                GeneralName::IPAddress(bytes) => ip_of(bytes).map(|ip| match ip {
                    IpAddr::V6(v6) => (ip.is_loopback(), format!("[{v6}]:{port}")),
                    IpAddr::V4(v4) => (ip.is_loopback(), format!("{v4}:{port}")),
                }),
                _ => None,
            };
            names.extend(endpoint);
        }
    }
    let (loopback, others): (Vec<_>, Vec<_>) = names.into_iter().partition(|(lo, _)| *lo);
    let chosen: Vec<String> = if others.is_empty() { loopback } else { others }
        .into_iter()
        .map(|(_, e)| e)
        .take(outpost_common::enroll::MAX_ENDPOINTS)
        .collect();
    if chosen.is_empty() {
        anyhow::bail!(
            "{}: the server certificate names no DNS name or IP address to enroll at; give the \
             endpoints (host:port) explicitly",
            path.display()
        );
    }
    Ok(chosen)
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_come_from_the_server_certificate_loopback_last_resort() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["agg.example.net".to_owned(), "10.0.0.5".to_owned()];
        crate::pki::init(dir.path(), &names, crate::pki::DEFAULT_CA_VALIDITY, false).unwrap();
        let found = from_server_certificate(&dir.path().join("server.pem"), 4433).unwrap();
        assert_eq!(found, ["agg.example.net:4433", "10.0.0.5:4433"]);
        let local = tempfile::tempdir().unwrap();
        crate::pki::init(local.path(), &[], crate::pki::DEFAULT_CA_VALIDITY, false).unwrap();
        let found = from_server_certificate(&local.path().join("server.pem"), 9).unwrap();
        assert_eq!(found, ["localhost:9", "127.0.0.1:9", "[::1]:9"]);
        assert_eq!(
            ca_der(&dir.path().join("ca.pem")).unwrap(),
            outpost_common::tls::load_certs(&dir.path().join("ca.pem")).unwrap()[0].to_vec()
        );
    }
}
