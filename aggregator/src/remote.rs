//! The CLI over the HTTP API, so the fleet can be read from any machine with a token:
//! `outpost-aggregator fleet` and `outpost-aggregator agent <id>`.
//!
//! Where to connect and with which token: `--url` and `--token`, else `OUTPOST_URL` and
//! `OUTPOST_TOKEN`, else the file `OUTPOST_CLI_CONFIG` or `~/.config/outpost/cli.toml` (`url`,
//! `token`, optional `ca`), which must not be readable by others since it holds a token. The URL
//! defaults to `http://127.0.0.1:9440`. `--ca` (or `ca`) names a PEM CA to trust for HTTPS besides
//! the system's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::Deserialize;
use serde_json::Value;

use crate::fleet::{self, FleetEntry, HostStatus};

/// Where the API is and the token to use.
#[derive(Debug, Clone, Default, Args)]
pub struct RemoteArgs {
    /// The API's base URL (default http://127.0.0.1:9440; env OUTPOST_URL).
    #[arg(long)]
    pub url: Option<String>,
    /// An API token (env OUTPOST_TOKEN). Prefer the environment or the CLI file: a token on the
    /// command line shows in the process list.
    #[arg(long)]
    pub token: Option<String>,
    /// A PEM CA certificate to trust for HTTPS.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

/// The CLI file: `~/.config/outpost/cli.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliFile {
    url: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
}

/// A client of one aggregator's API.
#[derive(Debug)]
pub struct Remote {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

const DEFAULT_URL: &str = "http://127.0.0.1:9440";

impl Remote {
    /// Resolves the URL, token and CA from the flags, the environment and the CLI file.
    pub fn resolve(args: &RemoteArgs) -> anyhow::Result<Remote> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let file_path = env("OUTPOST_CLI_CONFIG")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config/outpost/cli.toml")));
        let file = match &file_path {
            Some(path) if path.exists() => read_cli_file(path)?,
            _ => CliFile::default(),
        };
        let base = args
            .url
            .clone()
            .or_else(|| env("OUTPOST_URL"))
            .or(file.url)
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let token = args
            .token
            .clone()
            .or_else(|| env("OUTPOST_TOKEN"))
            .or(file.token)
            .ok_or_else(|| {
                anyhow!(
                    "no API token: give --token, set OUTPOST_TOKEN, or put `token = \"...\"` in {} \
                 (make one with `outpost-aggregator token create --name NAME --role viewer`)",
                    file_path.map_or_else(
                        || "~/.config/outpost/cli.toml".to_owned(),
                        |p| p.display().to_string()
                    )
                )
            })?;
        let ca = args.ca.clone().or(file.ca);
        Remote::new(&base, &token, ca.as_deref())
    }

    pub fn new(base: &str, token: &str, ca: Option<&Path>) -> anyhow::Result<Remote> {
        let url =
            fluent_uri::Uri::parse(base).map_err(|e| anyhow!("`{base}` is not a URL: {e}"))?;
        match url.scheme().as_str() {
            "http" | "https" => {}
            other => bail!("`{base}`: the API is reached over http or https, not {other}"),
        }
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("outpost-aggregator/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("{}: cannot read the CA", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Remote {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: builder.build().context("cannot set up the HTTP client")?,
        })
    }

    /// GET `path` with `query`; the answer's JSON, or the API's error as a sentence.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .query(query)
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("cannot reach the API at {url}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .with_context(|| format!("{url}: the answer ({status}) is not JSON"))?;
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        bail!("{url}: {status}: {message}")
    }
}

fn read_cli_file(path: &Path) -> anyhow::Result<CliFile> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{}: holds a token but others may read it (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    outpost_common::config::load_toml(path).map_err(anyhow::Error::from)
}

/// `fleet`: every agent, paged through, as a table or JSON.
pub fn fleet(
    remote: &Remote,
    status: Option<HostStatus>,
    label: Option<&str>,
    json: bool,
    out: &mut impl Write,
    now_ns: i64,
) -> anyhow::Result<()> {
    let status_text = status.map(|s| {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    });
    let mut entries: Vec<FleetEntry> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "1000")];
        if let Some(s) = &status_text {
            query.push(("status", s));
        }
        if let Some(l) = label {
            query.push(("label", l));
        }
        if let Some(c) = &cursor {
            query.push(("cursor", c));
        }
        let page = remote.get("/api/v1/agents", &query)?;
        let items: Vec<FleetEntry> = serde_json::from_value(page["items"].clone())
            .context("the agent list is not what this CLI understands")?;
        entries.extend(items);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let text = if json {
        fleet::render_json(&entries) + "\n"
    } else {
        fleet::render_table(&entries, now_ns)
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// `agent <id>`: one agent in detail.
pub fn agent(
    remote: &Remote,
    agent_id: &str,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut path = String::from("/api/v1/agents/");
    path.extend(url_escape(agent_id));
    let detail = remote.get(&path, &[])?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&detail)?)?;
        return Ok(());
    }
    let Value::Object(fields) = detail else {
        bail!("the agent's detail is not an object");
    };
    let width = fields.keys().map(String::len).max().unwrap_or(0);
    for (key, value) in fields {
        let shown = match value {
            Value::Null => "-".to_owned(),
            Value::String(s) => fleet::printable(&s),
            other => fleet::printable(&other.to_string()),
        };
        writeln!(out, "{key:<width$}  {shown}")?;
    }
    Ok(())
}

/// `id` with every byte but unreserved ones percent-encoded, for a path segment.
fn url_escape(id: &str) -> impl Iterator<Item = String> + '_ {
    id.bytes().map(|b| {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            char::from(b).to_string()
        } else {
            format!("%{b:02X}")
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_cli_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cli.toml");
        std::fs::write(&path, "url = \"http://10.0.0.1:9440\"\ntoken = \"t\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_cli_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = read_cli_file(&path).unwrap();
        assert_eq!(f.url.as_deref(), Some("http://10.0.0.1:9440"));
        assert_eq!(f.token.as_deref(), Some("t"));
    }

    #[test]
    fn urls_must_be_http_and_ids_are_escaped() {
        assert!(
            Remote::new("ftp://x", "t", None)
                .unwrap_err()
                .to_string()
                .contains("not ftp")
        );
        assert!(Remote::new("not a url", "t", None).is_err());
        assert!(Remote::new("https://agg.example:9440/", "t", None).is_ok());
        assert_eq!(url_escape("web 1/x").collect::<String>(), "web%201%2Fx");
    }
}
