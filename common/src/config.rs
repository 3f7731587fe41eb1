//! Configuration helpers shared by both programs: TOML loading with precise error locations,
//! and URI validation with fluent-uri at load time.

use std::fmt;
use std::path::{Path, PathBuf};

use fluent_uri::Uri;
use fluent_uri::component::Host;
use serde::de::DeserializeOwned;

/// A configuration file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ConfigError {
    /// An error about the file as a whole (a value out of range, a missing certificate).
    pub fn invalid(path: &Path, message: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }
}

/// Reads and parses a TOML configuration file.
///
/// Errors name the file, and for syntax or type errors the 1-based line and column.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(path, &text)
}

/// Parses TOML text that came from `path`.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = line_column(text, offset);
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })
}

/// The 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A validated `quic://host:port` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicEndpoint {
    /// The host as written: a DNS name or an IP address (without brackets).
    pub host: String,
    pub port: u16,
    /// Whether the host is an IP literal rather than a DNS name.
    pub host_is_ip: bool,
}

impl fmt::Display for QuicEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "quic://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "quic://{}:{}", self.host, self.port)
        }
    }
}

impl QuicEndpoint {
    /// Resolves the endpoint to socket addresses. This may query DNS and block: call it off the
    /// async runtime (for example in `spawn_blocking`).
    pub fn resolve(&self) -> std::io::Result<Vec<std::net::SocketAddr>> {
        use std::net::ToSocketAddrs;
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }
}

/// Parses `quic://host:port` (port defaults to 4433), rejecting anything else with a hint.
pub fn parse_quic_uri(s: &str) -> Result<QuicEndpoint, String> {
    let uri = Uri::parse(s)
        .map_err(|e| format!("`{s}` is not a valid URI ({e}); expected quic://host:port"))?;
    let scheme = uri.scheme().as_str();
    if !scheme.eq_ignore_ascii_case("quic") {
        return Err(format!(
            "`{s}` has scheme `{scheme}`; expected quic://host:port (for example quic://aggregator.example:4433)"
        ));
    }
    let Some(auth) = uri.authority() else {
        return Err(format!("`{s}` has no host; expected quic://host:port"));
    };
    if auth.has_userinfo() {
        return Err(format!("`{s}` must not carry user information"));
    }
    if !(uri.path().as_str().is_empty() || uri.path().as_str() == "/")
        || uri.query().is_some()
        || uri.fragment().is_some()
    {
        return Err(format!(
            "`{s}` must be only quic://host:port, without a path or query"
        ));
    }
    let (host, host_is_ip) = match auth.host_parsed() {
        Host::Ipv4(a) => (a.to_string(), true),
        Host::Ipv6(a) => (a.to_string(), true),
        Host::RegName(name) => (name.as_str().to_owned(), false),
        _ => return Err(format!("`{s}` has an unsupported host")),
    };
    if host.is_empty() {
        return Err(format!(
            "`{s}` has an empty host; expected quic://host:port"
        ));
    }
    let port = auth
        .port_to_u16()
        .map_err(|e| format!("`{s}` has an invalid port: {e}"))?
        .unwrap_or(4433);
    if port == 0 {
        return Err(format!("`{s}` has port 0"));
    }
    Ok(QuicEndpoint {
        host,
        port,
        host_is_ip,
    })
}

/// Validates an `http://` or `https://` URL with a host, returning it unchanged.
pub fn parse_http_uri(s: &str) -> Result<String, String> {
    let uri = Uri::parse(s).map_err(|e| format!("`{s}` is not a valid URI ({e})"))?;
    let scheme = uri.scheme().as_str();
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(format!(
            "`{s}` has scheme `{scheme}`; expected http:// or https://"
        ));
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() => Ok(s.to_owned()),
        _ => Err(format!("`{s}` has no host")),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // fields exist to be parsed
    struct Sample {
        name: String,
        #[serde(default)]
        count: u32,
    }

    #[test]
    fn parse_errors_name_file_line_and_column() {
        let p = Path::new("/etc/outpost/x.toml");
        let err = parse_toml::<Sample>(p, "name = \"a\"\ncount = \"three\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/outpost/x.toml:2:9: "), "{msg}");

        let err = parse_toml::<Sample>(p, "name = \"a\"\n\n  bogus = 1\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/outpost/x.toml:3:3: "), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");

        let err = parse_toml::<Sample>(p, "name = [\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Parse { line: 1 | 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn quic_uris_are_validated() {
        let e = parse_quic_uri("quic://agg.example:4434").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.host_is_ip),
            ("agg.example", 4434, false)
        );
        let e = parse_quic_uri("quic://127.0.0.1").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.host_is_ip),
            ("127.0.0.1", 4433, true)
        );
        let e = parse_quic_uri("quic://[::1]:9000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
        assert_eq!(e.to_string(), "quic://[::1]:9000");
        for bad in [
            "aggregator:4433",
            "http://a:1",
            "quic://",
            "quic://a:99999",
            "quic://u@a:1",
            "quic://a:1/path",
            "not a uri",
        ] {
            assert!(parse_quic_uri(bad).is_err(), "{bad} accepted");
        }
        assert!(
            parse_quic_uri("aggregator:4433")
                .unwrap_err()
                .contains("quic://host:port")
        );
    }

    #[test]
    fn http_uris_are_validated() {
        assert!(parse_http_uri("https://hooks.example/x?y=1").is_ok());
        assert!(parse_http_uri("ftp://x").is_err());
        assert!(parse_http_uri("https://").is_err());
    }
}
