//! The CLI over the HTTP API, so the fleet can be read from any machine with a token:
//! `outpost-aggregator fleet`, `agent <id>`, `metrics <id> <name>`, `logs` and `fim list --api`
//! (and the alerting commands of [`crate::alerts_cli`]).
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
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
        self.answer(&url, self.http.get(&url).query(query))
    }

    /// POST `body` (JSON) to `path`; the answer's JSON, or the API's error.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.answer(&url, self.http.post(&url).json(body))
    }

    /// DELETE `path`; the answer's JSON, or the API's error.
    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.answer(&url, self.http.delete(&url))
    }

    /// Sends `request` with the token; a success's JSON, else the API's error as a sentence,
    /// with each of the problems it lists (`details.errors`, such as a rule file's) on a line.
    fn answer(
        &self,
        url: &str,
        request: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<Value> {
        let response = request
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
        let mut text = format!("{url}: {status}: {message}");
        for problem in body["error"]["details"]["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            text.push_str("\n  ");
            text.push_str(problem);
        }
        bail!(text)
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

/// What `metrics` asks the API ([`crate::api`]'s `/api/v1/metrics/query`).
#[derive(Debug, Clone, Default)]
pub struct MetricsRequest {
    pub agent_id: String,
    pub name: String,
    pub since_ns: i64,
    pub until_ns: i64,
    pub matchers: Vec<String>,
    pub step: Option<String>,
    pub points: Option<u32>,
    pub aggregate: Option<String>,
    pub function: Option<String>,
}

/// `metrics <id> <name>`: one host's series of a metric, a column per series and a row per step.
pub fn metrics(
    remote: &Remote,
    r: &MetricsRequest,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (since, until) = (r.since_ns.to_string(), r.until_ns.to_string());
    let points = r.points.map(|p| p.to_string());
    let mut query: Vec<(&str, &str)> = vec![
        ("name", &r.name),
        ("agent_id", &r.agent_id),
        ("since_ns", &since),
        ("until_ns", &until),
    ];
    query.extend(r.matchers.iter().map(|m| ("match", m.as_str())));
    for (key, value) in [
        ("step", &r.step),
        ("points", &points),
        ("aggregate", &r.aggregate),
        ("function", &r.function),
    ] {
        if let Some(v) = value {
            query.push((key, v));
        }
    }
    let answer = remote.get("/api/v1/metrics/query", &query)?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(());
    }
    out.write_all(render_series(&answer).as_bytes())?;
    Ok(())
}

/// A metric answer as a table: a row per step time, a column per series (named by its
/// attributes, with the unit).
fn render_series(answer: &Value) -> String {
    let series = answer["series"].as_array().cloned().unwrap_or_default();
    if series.is_empty() {
        return "no series match\n".to_owned();
    }
    let mut header = vec!["TIME".to_owned()];
    let mut by_time: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
    for (column, s) in series.iter().enumerate() {
        let info = &s["series"];
        let attributes: Vec<String> = info["attributes"]
            .as_array()
            .map(|pairs| {
                pairs
                    .iter()
                    .map(|p| {
                        format!(
                            "{}={}",
                            p[0].as_str().unwrap_or(""),
                            p[1].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut name = if attributes.is_empty() {
            info["name"].as_str().unwrap_or("all").to_owned()
        } else {
            attributes.join(",")
        };
        if let Some(unit) = info["unit"].as_str().filter(|u| !u.is_empty() && *u != "1") {
            name = format!("{name} ({unit})");
        }
        header.push(fleet::printable(&name));
        for point in s["points"].as_array().into_iter().flatten() {
            let (Some(t), Some(v)) = (point[0].as_i64(), point[1].as_f64()) else {
                continue;
            };
            let row = by_time
                .entry(t)
                .or_insert_with(|| vec!["-".to_owned(); series.len()]);
            row[column] = format_value(v);
        }
    }
    let rows: Vec<Vec<String>> = by_time
        .into_iter()
        .map(|(t, values)| {
            let mut row = vec![outpost_common::time::format_rfc3339(t)];
            row.extend(values);
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    fleet::render_columns(&header, &rows)
}

/// A value with up to six significant decimals, no trailing zeros.
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let text = format!("{v:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Pages through a list of the API (`items`, `next_cursor`) until `limit` items or its end.
/// Answers the items and where to go on, if anywhere.
pub(crate) fn collect(
    remote: &Remote,
    path: &str,
    query: &[(&str, String)],
    from: Option<String>,
    limit: usize,
) -> anyhow::Result<(Vec<Value>, Option<String>)> {
    let mut items = Vec::new();
    let mut cursor = from;
    loop {
        let want = (limit - items.len()).min(1000).to_string();
        let mut q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        q.push(("limit", &want));
        if let Some(c) = &cursor {
            q.push(("cursor", c));
        }
        let page = remote.get(path, &q)?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if items.len() >= limit || cursor.is_none() {
            return Ok((items, cursor));
        }
    }
}

/// A text field of an API item for a table: `-` when absent, control characters blanked.
pub(crate) fn cell(v: &Value) -> String {
    v.as_str().map_or_else(|| "-".to_owned(), fleet::printable)
}

/// The query parameters that have a value.
pub(crate) fn present<const N: usize>(
    pairs: [(&'static str, Option<String>); N],
) -> Vec<(&'static str, String)> {
    pairs
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key, v)))
        .collect()
}

/// The filters of `logs`.
#[derive(Debug, Clone, Default)]
pub struct LogsRequest {
    pub agent_id: Option<String>,
    pub source: Option<String>,
    pub severity: Option<String>,
    pub contains: Option<String>,
    pub regex: Option<String>,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub cursor: Option<String>,
    pub limit: usize,
}

/// `logs`: stored log records, oldest first, at most `limit`; says how to go on when there is
/// more.
pub fn logs(
    remote: &Remote,
    r: &LogsRequest,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let query = present([
        ("agent_id", r.agent_id.clone()),
        ("source", r.source.clone()),
        ("severity", r.severity.clone()),
        ("contains", r.contains.clone()),
        ("regex", r.regex.clone()),
        ("since_ns", r.since_ns.map(|t| t.to_string())),
        ("until_ns", r.until_ns.map(|t| t.to_string())),
    ]);
    let (items, next) = collect(
        remote,
        "/api/v1/logs",
        &query,
        r.cursor.clone(),
        r.limit.max(1),
    )?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "items": items, "next_cursor": next })
            )?
        )?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                i["time_ns"]
                    .as_i64()
                    .map_or_else(|| "-".to_owned(), outpost_common::time::format_rfc3339),
                cell(&i["agent_id"]),
                cell(&i["source"]),
                cell(&i["severity"]),
                cell(&i["body"]),
            ]
        })
        .collect();
    out.write_all(
        fleet::render_columns(&["TIME", "AGENT", "SOURCE", "SEVERITY", "BODY"], &rows).as_bytes(),
    )?;
    if let Some(next) = next {
        writeln!(out, "(more: --cursor {next})")?;
    }
    Ok(())
}

/// The filters of `fim list --api`.
#[derive(Debug, Clone, Default)]
pub struct FimRequest {
    pub agent_id: Option<String>,
    pub path_prefix: Option<String>,
    pub change: Option<String>,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub limit: usize,
}

/// `fim list --api`: file-integrity changes through the API, oldest first, at most `limit`.
pub fn fim_changes(
    remote: &Remote,
    r: &FimRequest,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let query = present([
        ("agent_id", r.agent_id.clone()),
        ("path_prefix", r.path_prefix.clone()),
        ("change", r.change.clone()),
        ("since_ns", r.since_ns.map(|t| t.to_string())),
        ("until_ns", r.until_ns.map(|t| t.to_string())),
    ]);
    let (items, next) = collect(remote, "/api/v1/fim", &query, None, r.limit.max(1))?;
    if json {
        writeln!(out, "{}", Value::Array(items))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let changed = i["changed"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map_or_else(
                    || "-".to_owned(),
                    |a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                );
            vec![
                cell(&i["time"]),
                cell(&i["agent_id"]),
                cell(&i["change"]),
                cell(&i["path"]),
                changed,
                cell(&i["moved_from"]),
            ]
        })
        .collect();
    out.write_all(
        fleet::render_columns(
            &["TIME", "AGENT", "CHANGE", "PATH", "CHANGED", "MOVED FROM"],
            &rows,
        )
        .as_bytes(),
    )?;
    if next.is_some() {
        writeln!(out, "(more changes: narrow the filters or raise --limit)")?;
    }
    Ok(())
}

/// `id` with every byte but unreserved ones percent-encoded, for a path segment.
pub(crate) fn url_escape(id: &str) -> impl Iterator<Item = String> + '_ {
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
    fn series_render_as_a_column_each_with_a_row_per_step() {
        let answer = serde_json::json!({
            "step_ns": 10_000_000_000_i64,
            "selected": 2,
            "series": [
                { "series": { "agent_id": "a", "name": "m", "unit": "By", "kind": "gauge",
                              "attributes": [["state", "used"]] },
                  "points": [[0, 1024.0], [10_000_000_000_i64, 2048.5]] },
                { "series": { "agent_id": "a", "name": "m", "unit": "1", "kind": "gauge",
                              "attributes": [] },
                  "points": [[10_000_000_000_i64, 0.333_333_333]] },
            ],
        });
        let table = render_series(&answer);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0].starts_with("TIME")
                && lines[0].contains("state=used (By)")
                && lines[0].ends_with('m'),
            "{table}"
        );
        assert!(
            lines[1].starts_with("1970-01-01T00:00:00Z")
                && lines[1].contains("1024")
                && lines[1].ends_with('-'),
            "{table}"
        );
        assert!(
            lines[2].contains("2048.5") && lines[2].ends_with("0.333333"),
            "{table}"
        );
        let none = serde_json::json!({ "step_ns": 1, "selected": 0, "series": [] });
        assert_eq!(render_series(&none), "no series match\n");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
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
