//! The agent's configuration file (`/etc/outpost/agent.toml`).
//!
//! Every option has a default; `packaging/agent.toml` lists them all with comments. Loading
//! validates everything (URIs, sizes, durations, certificate paths), so a bad file fails at start-up
//! with its path, line and column rather than later at first use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use outpost_common::config::{ConfigError, QuicEndpoint, load_toml, parse_quic_uri};
use outpost_common::logging::LogConfig;
use serde::Deserialize;
use toml::Spanned;

use crate::collectors::fim::{self, Fim};
use crate::collectors::journal::{self, Journal};
use crate::collectors::logs::files::{Files, LogsConfig};
use crate::collectors::metrics::{Metrics, MetricsConfig};
use crate::collectors::self_status::{self, SelfStatus};
use crate::collectors::synthetic::{self, Synthetic};
use crate::collectors::{Source, SourceError};
use crate::ship::Target;

/// The whole agent configuration, as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Where the agent keeps its state (the spool database).
    pub data_dir: PathBuf,
    pub aggregator: AggregatorSection,
    pub spool: SpoolSection,
    pub ship: ShipSection,
    pub log: LogConfig,
    /// A generator of numbered events, for tests and benchmarks.
    pub synthetic: synthetic::Config,
    /// Host metrics and the agent's own telemetry.
    pub metrics: MetricsConfig,
    /// The history of the agent's own status.
    pub status: self_status::Config,
    /// Log sources: `[[logs.files]]`.
    pub logs: LogsConfig,
    /// The systemd journal, followed through journalctl.
    pub journal: journal::Config,
    /// File integrity: `[fim]` and `[[fim.paths]]`.
    pub fim: fim::Config,
    /// `[labels]`: free key = value pairs the aggregator keeps for the agent (`env = "prod"`),
    /// to filter the fleet by.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            data_dir: PathBuf::from("/var/lib/outpost"),
            aggregator: AggregatorSection::default(),
            spool: SpoolSection::default(),
            ship: ShipSection::default(),
            log: LogConfig::default(),
            synthetic: synthetic::Config::default(),
            metrics: MetricsConfig::default(),
            status: self_status::Config::default(),
            logs: LogsConfig::default(),
            journal: journal::Config::default(),
            fim: fim::Config::default(),
            labels: std::collections::BTreeMap::new(),
        }
    }
}

impl AgentConfig {
    /// The labels as the agent sends them in Hello: sorted by key.
    pub fn label_pairs(&self) -> Vec<(String, String)> {
        self.labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// `[aggregator]`: where to send and how to authenticate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorSection {
    /// `quic://host:port` of the aggregator. This or `endpoints` is required: the agent does
    /// not start without an aggregator.
    pub endpoint: Option<Spanned<String>>,
    /// Several aggregators behind one service, in the order to try them, instead of
    /// `endpoint`: `["quic://a:4433", "quic://b:4433"]`. The agent ships to one at a time, stays
    /// with the one that works, and on connection loss fails over to the next (every address a
    /// name resolves to counts as an endpoint of its own); once all have failed it backs off
    /// like a reconnect (`ship.reconnect_min`, `ship.reconnect_max`). Batches not acknowledged
    /// are sent again to the next one, so failing over loses nothing.
    pub endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    /// The name to verify on the aggregator's certificate, for every endpoint. By default each
    /// endpoint verifies its own host (so with one endpoint, or several on one host, that host).
    pub server_name: Option<String>,
    /// The CA that issued the aggregator's certificate (and this agent's).
    pub ca: PathBuf,
    /// This agent's certificate; its SAN URI `urn:outpost:agent:<id>` is the agent's identity.
    pub cert: PathBuf,
    /// This agent's private key.
    pub key: PathBuf,
    /// Keep-alive interval; must be well under the idle timeout.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Close the connection after this long without any packet.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Give up a connection attempt (handshake and Welcome) after this long.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Probe for a larger path MTU. Turn off on tunnels that drop large packets.
    pub mtu_discovery: bool,
    /// An enrollment token (`outpost-enroll-…`) to enroll with when the agent starts without a
    /// certificate; removed once the agent is enrolled, as it is a secret. The environment
    /// variable `OUTPOST_ENROLL_TOKEN`, holding a token, is used before this file.
    pub enroll_token: PathBuf,
}

impl Default for AggregatorSection {
    fn default() -> Self {
        AggregatorSection {
            endpoint: None,
            endpoints: None,
            server_name: None,
            ca: PathBuf::from("/etc/outpost/tls/ca.pem"),
            cert: PathBuf::from("/etc/outpost/tls/agent.pem"),
            key: PathBuf::from("/etc/outpost/tls/agent.key"),
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            mtu_discovery: true,
            enroll_token: PathBuf::from("/etc/outpost/enroll.token"),
        }
    }
}

/// `[spool]`: the local buffer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Cap on unacknowledged data. When full, log sources pause and metrics drop their oldest
    /// samples; every drop is counted and reported.
    pub max_bytes: ByteSize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Most bytes in one batch; also the largest single event accepted.
    pub max_batch_bytes: ByteSize,
    /// A file of this size (`spool.reserve` in the data directory) is kept written beside the
    /// spool and deleted when the disk runs out of space, so that acknowledgements can still
    /// be committed and the backlog drains; it is written again once the disk has room for it
    /// twice over. The spool never grows into the free space this holds back: on a full disk
    /// log sources pause and metric samples are dropped (counted as `disk_full`). 0 turns the
    /// reserve off.
    pub reserve_bytes: ByteSize,
    /// How batches are compressed, in the spool and on the wire.
    pub compression: Compression,
}

/// `[spool] compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Not at all.
    None,
    /// Zstandard at its fastest level.
    #[default]
    Zstd,
}

impl Compression {
    /// The wire's codec for it.
    pub fn codec(self) -> outpost_common::wire::Codec {
        match self {
            Compression::None => outpost_common::wire::Codec::None,
            Compression::Zstd => outpost_common::wire::Codec::Zstd,
        }
    }
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            max_bytes: ByteSize::gib(1),
            max_batch_events: 1000,
            max_batch_bytes: ByteSize::mib(1),
            reserve_bytes: ByteSize::b(crate::spool::DEFAULT_RESERVE_BYTES),
            compression: Compression::default(),
        }
    }
}

/// `[ship]`: how batches travel to the aggregator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShipSection {
    /// Batches sent but not yet acknowledged, at most (the aggregator may lower it). Each waits
    /// for the aggregator's commit, an fsync: with 8, a backlog of log lines drained 15-20 %
    /// slower than with 32 on loopback, more so over a longer round trip.
    pub max_in_flight: u32,
    /// How often to send a heartbeat with the agent's status.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// First delay before reconnecting; doubles (with jitter) up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// After a reconnect, ship a backlog at no more than this many events per second (0: no limit),
    /// so a fleet coming back from an outage does not flatten the aggregator.
    pub catchup_events_per_sec: u32,
}

impl Default for ShipSection {
    fn default() -> Self {
        ShipSection {
            max_in_flight: 32,
            heartbeat_interval: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            catchup_events_per_sec: 50_000,
        }
    }
}

/// A loaded and validated configuration.
#[derive(Debug, Clone)]
pub struct Validated {
    pub config: AgentConfig,
    /// The aggregator endpoints, in the order to try them, each with the name to verify on its
    /// certificate; at least one.
    pub targets: Vec<Target>,
    pub path: PathBuf,
}

impl Validated {
    /// The aggregator endpoints, as a log line names them: `quic://a:4433, quic://b:4433`.
    pub fn aggregators(&self) -> String {
        let uris: Vec<String> = self.targets.iter().map(ToString::to_string).collect();
        uris.join(", ")
    }

    /// The spool database's path.
    pub fn spool_path(&self) -> PathBuf {
        self.config.data_dir.join("spool.db")
    }
}

/// Loads and validates `path`.
pub fn load(path: &Path) -> Result<Validated, ConfigError> {
    let config: AgentConfig = load_toml(path)?;
    validate(path, None, config)
}

/// Loads `path` without requiring an aggregator, as before enrollment: only its syntax, its
/// types and the log settings are checked.
pub fn load_unenrolled(path: &Path) -> Result<AgentConfig, ConfigError> {
    let config: AgentConfig = load_toml(path)?;
    config
        .log
        .validate()
        .map_err(|m| ConfigError::invalid(path, m))?;
    Ok(config)
}

/// Validates `text`, the content `path` is about to get.
pub fn check_text(path: &Path, text: &str) -> Result<Validated, ConfigError> {
    let config: AgentConfig = outpost_common::config::parse_toml(path, text)?;
    validate(path, Some(text), config)
}

fn located(
    path: &Path,
    text: Option<&str>,
    span: std::ops::Range<usize>,
    message: String,
) -> ConfigError {
    let (line, column) = text.map_or((1, 1), |t| {
        outpost_common::config::line_column(t, span.start)
    });
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

/// Validates `config`, read from `path`; `text` is its content when it is not (yet) the file's,
/// for locating errors.
fn validate(
    path: &Path,
    text: Option<&str>,
    config: AgentConfig,
) -> Result<Validated, ConfigError> {
    let invalid = |m: String| ConfigError::invalid(path, m);
    outpost_common::wire::check_labels(&config.label_pairs())
        .map_err(|m| invalid(format!("labels: {m}")))?;
    let text = text
        .map(str::to_owned)
        .or_else(|| std::fs::read_to_string(path).ok());
    let targets = targets(path, text.as_deref(), &config.aggregator)?;
    let a = &config.aggregator;
    if a.keep_alive.is_zero() || a.keep_alive >= a.idle_timeout {
        return Err(invalid(format!(
            "aggregator.keep_alive ({}) must be above zero and below idle_timeout ({})",
            humantime::format_duration(a.keep_alive),
            humantime::format_duration(a.idle_timeout)
        )));
    }
    if a.connect_timeout.is_zero() {
        return Err(invalid(
            "aggregator.connect_timeout must be above zero".to_owned(),
        ));
    }
    let s = &config.spool;
    if s.max_batch_events == 0 || s.max_batch_events > 100_000 {
        return Err(invalid(
            "spool.max_batch_events must be between 1 and 100000".to_owned(),
        ));
    }
    if s.max_batch_bytes.as_u64() < 1024 || s.max_batch_bytes.as_u64() > 4 * 1024 * 1024 {
        return Err(invalid(
            "spool.max_batch_bytes must be between 1 KiB and 4 MiB".to_owned(),
        ));
    }
    if s.max_bytes < s.max_batch_bytes {
        return Err(invalid(
            "spool.max_bytes must be at least spool.max_batch_bytes".to_owned(),
        ));
    }
    let sh = &config.ship;
    if sh.max_in_flight == 0 || sh.max_in_flight > 1024 {
        return Err(invalid(
            "ship.max_in_flight must be between 1 and 1024".to_owned(),
        ));
    }
    if sh.heartbeat_interval.is_zero() {
        return Err(invalid(
            "ship.heartbeat_interval must be above zero".to_owned(),
        ));
    }
    if sh.reconnect_min.is_zero() || sh.reconnect_min > sh.reconnect_max {
        return Err(invalid(
            "ship.reconnect_min must be above zero and at most ship.reconnect_max".to_owned(),
        ));
    }
    config.log.validate().map_err(invalid)?;
    // Each source's constructor is its validation: build them once here, so a configuration
    // that loads is one the agent can run.
    let source = |e: SourceError| invalid(e.to_string());
    if config.synthetic.enabled {
        Synthetic::new(config.synthetic.clone()).map_err(source)?;
    }
    Metrics::new(config.metrics.clone()).map_err(source)?;
    SelfStatus::new(config.status.clone()).map_err(source)?;
    let mut names = std::collections::BTreeSet::new();
    for files in &config.logs.files {
        let name = files.source_name();
        if !names.insert(name.clone()) {
            return Err(invalid(format!(
                "logs.files: two sources are named `{name}`; give each a distinct `name`"
            )));
        }
        Files::new(files.clone()).map_err(source)?;
    }
    Journal::new(config.journal.clone()).map_err(source)?;
    Fim::new(crate::sources::fim_config(&config)).map_err(source)?;
    Ok(Validated {
        targets,
        path: path.to_owned(),
        config,
    })
}

/// The endpoints `[aggregator]` of `path` names (`endpoint`, or the list `endpoints`), each
/// validated, with the name to verify on its certificate; `text` is the file's content, to
/// locate errors.
fn targets(
    path: &Path,
    text: Option<&str>,
    a: &AggregatorSection,
) -> Result<Vec<Target>, ConfigError> {
    let at = |span, message| located(path, text, span, message);
    let uris: Vec<(String, &Spanned<String>)> = match (&a.endpoint, &a.endpoints) {
        (None, None) => {
            return Err(ConfigError::invalid(
                path,
                "no aggregator configured: set `endpoint = \"quic://HOST:4433\"` in [aggregator] \
                 (or `endpoints = [\"quic://HOST1:4433\", \"quic://HOST2:4433\"]` to fail over \
                 between several), and ca, cert, key; the agent does not start without one",
            ));
        }
        (Some(_), Some(list)) => {
            return Err(at(
                list.span(),
                "aggregator.endpoints: set either `endpoint` or `endpoints`, not both".to_owned(),
            ));
        }
        (Some(one), None) => vec![("aggregator.endpoint".to_owned(), one)],
        (None, Some(list)) if list.get_ref().is_empty() => {
            return Err(at(
                list.span(),
                "aggregator.endpoints: the list is empty; name at least one quic://HOST:PORT"
                    .to_owned(),
            ));
        }
        (None, Some(list)) => list
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, uri)| (format!("aggregator.endpoints[{i}]"), uri))
            .collect(),
    };
    let mut parsed: Vec<(String, QuicEndpoint)> = Vec::with_capacity(uris.len());
    for (key, uri) in uris {
        let endpoint =
            parse_quic_uri(uri.get_ref()).map_err(|m| at(uri.span(), format!("{key}: {m}")))?;
        let same = |(_, e): &&(String, QuicEndpoint)| {
            e.port == endpoint.port && e.host.eq_ignore_ascii_case(&endpoint.host)
        };
        if let Some((first, _)) = parsed.iter().find(same) {
            return Err(at(
                uri.span(),
                format!("{key}: {endpoint} is listed already, as {first}; list each endpoint once"),
            ));
        }
        parsed.push((key, endpoint));
    }
    let mut targets = Vec::with_capacity(parsed.len());
    for (_, endpoint) in parsed {
        let server_name = a
            .server_name
            .clone()
            .unwrap_or_else(|| endpoint.host.clone());
        if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            return Err(ConfigError::invalid(
                path,
                format!(
                    "aggregator.server_name `{server_name}` is not a valid DNS name or IP address"
                ),
            ));
        }
        targets.push(Target {
            endpoint,
            server_name,
        });
    }
    Ok(targets)
}

/// Checks that the TLS files the configuration names can be read and used.
pub fn check_tls_files(v: &Validated) -> Result<(), ConfigError> {
    let a = &v.config.aggregator;
    let fail = |e: outpost_common::tls::TlsError| ConfigError::invalid(&v.path, e);
    let ca = outpost_common::tls::load_certs(&a.ca).map_err(fail)?;
    let chain = outpost_common::tls::load_certs(&a.cert).map_err(fail)?;
    let key = outpost_common::tls::load_key(&a.key).map_err(fail)?;
    let identity = outpost_common::tls::identity_from_cert(&chain[0])
        .map_err(|e| ConfigError::invalid(&v.path, format!("{}: {e}", a.cert.display())))?;
    outpost_common::tls::client_config(&ca, chain, key, &Default::default()).map_err(fail)?;
    tracing::debug!(agent_id = %identity.agent_id, "certificate names this agent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let f = write("[aggregator]\nendpoint = \"quic://agg.example:4433\"\n");
        let v = load(f.path()).unwrap();
        assert_eq!(v.targets.len(), 1);
        assert_eq!(v.targets[0].server_name, "agg.example");
        assert_eq!(v.config.ship.max_in_flight, 32);
        assert_eq!(v.config.spool.max_bytes, ByteSize::gib(1));
    }

    #[test]
    fn labels_are_sent_sorted_and_bad_ones_refused() {
        let base = "[aggregator]\nendpoint = \"quic://agg.example:4433\"\n";
        let f = write(&format!("{base}[labels]\nrole = \"web\"\nenv = \"prod\"\n"));
        let v = load(f.path()).unwrap();
        assert_eq!(
            v.config.label_pairs(),
            [
                ("env".to_owned(), "prod".to_owned()),
                ("role".to_owned(), "web".to_owned())
            ]
        );
        let f = write(&format!("{base}[labels]\n\"1st\" = \"x\"\n"));
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains("labels: label `1st`"), "{e}");
        let f = write(&format!("{base}[labels]\nenv = 3\n"));
        assert!(load(f.path()).is_err());
    }

    #[test]
    fn spool_compression_is_zstd_unless_turned_off_and_a_bad_one_is_located() {
        let base = "[aggregator]\nendpoint = \"quic://agg.example:4433\"\n";
        let v = load(write(base).path()).unwrap();
        assert_eq!(v.config.spool.compression, Compression::Zstd);
        assert_eq!(
            v.config.spool.compression.codec(),
            outpost_common::wire::Codec::Zstd
        );
        let f = write(&format!("{base}[spool]\ncompression = \"none\"\n"));
        let v = load(f.path()).unwrap();
        assert_eq!(
            v.config.spool.compression.codec(),
            outpost_common::wire::Codec::None
        );
        let f = write(&format!("{base}[spool]\ncompression = \"gzip\"\n"));
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains(":4:15") && e.contains("zstd"), "{e}");
    }

    #[test]
    fn missing_endpoint_says_what_to_do() {
        let f = write("data_dir = \"/tmp/x\"\n");
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains("no aggregator configured"), "{e}");
    }

    #[test]
    fn bad_endpoint_is_located() {
        let f = write("[aggregator]\n\nendpoint = \"aggregator:4433\"\n");
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains(":3:12: aggregator.endpoint"), "{e}");
        assert!(e.contains("quic://host:port"), "{e}");
    }

    #[test]
    fn endpoints_are_tried_in_order_and_each_verifies_its_own_host() {
        let f = write(
            "[aggregator]\nendpoints = [\"quic://a.example:4433\", \"quic://b.example\", \
             \"quic://[::1]:5000\"]\n",
        );
        let v = load(f.path()).unwrap();
        let names: Vec<(String, &str)> = v
            .targets
            .iter()
            .map(|t| (t.to_string(), t.server_name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("quic://a.example:4433".to_owned(), "a.example"),
                ("quic://b.example:4433".to_owned(), "b.example"),
                ("quic://[::1]:5000".to_owned(), "::1"),
            ]
        );
        assert_eq!(
            v.aggregators(),
            "quic://a.example:4433, quic://b.example:4433, quic://[::1]:5000"
        );
        // One host on several ports: that host, the first endpoint's.
        let f = write(
            "[aggregator]\nendpoints = [\"quic://agg.example:4433\", \"quic://agg.example:4434\"]\n",
        );
        let v = load(f.path()).unwrap();
        assert!(v.targets.iter().all(|t| t.server_name == "agg.example"));
        // A server_name applies to every endpoint.
        let f = write(
            "[aggregator]\nendpoints = [\"quic://10.0.0.1\", \"quic://10.0.0.2\"]\n\
             server_name = \"agg.example\"\n",
        );
        let v = load(f.path()).unwrap();
        assert!(v.targets.iter().all(|t| t.server_name == "agg.example"));
        assert_eq!(v.targets[1].endpoint.port, 4433);
        // One endpoint is a list of one.
        let f = write("[aggregator]\nendpoints = [\"quic://agg.example:4433\"]\n");
        let v = load(f.path()).unwrap();
        assert_eq!(v.aggregators(), "quic://agg.example:4433");
        assert_eq!(v.targets[0].server_name, "agg.example");
    }

    #[test]
    fn endpoint_and_endpoints_together_are_refused_at_the_list() {
        let f = write("[aggregator]\nendpoint = \"quic://a:1\"\nendpoints = [\"quic://b:1\"]\n");
        let e = load(f.path()).unwrap_err().to_string();
        assert!(
            e.contains(":3:13: aggregator.endpoints: set either `endpoint` or `endpoints`"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_list_of_endpoints_is_refused() {
        let f = write("[aggregator]\nendpoints = []\n");
        let e = load(f.path()).unwrap_err().to_string();
        assert!(
            e.contains(":2:13: aggregator.endpoints: the list is empty"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_entry_of_endpoints_is_located_and_named() {
        let f =
            write("[aggregator]\nendpoints = [\n  \"quic://a:4433\",\n  \"http://b:4433\",\n]\n");
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains(":4:3: aggregator.endpoints[1]: "), "{e}");
        assert!(e.contains("expected quic://host:port"), "{e}");
        let f = write("[aggregator]\nendpoints = \"quic://a:4433\"\n");
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains(":2:13"), "{e}");
    }

    #[test]
    fn an_endpoint_listed_twice_is_refused() {
        // The port defaults to 4433 and host names are not case-sensitive.
        let f = write(
            "[aggregator]\nendpoints = [\"quic://agg.example\", \"quic://b:4433\", \
             \"quic://AGG.example:4433\"]\n",
        );
        let e = load(f.path()).unwrap_err().to_string();
        assert!(
            e.contains(
                ":2:53: aggregator.endpoints[2]: quic://AGG.example:4433 is listed already, \
                 as aggregator.endpoints[0]"
            ),
            "{e}"
        );
        // The same host on another port is another endpoint.
        let f = write(
            "[aggregator]\nendpoints = [\"quic://agg.example\", \"quic://agg.example:4434\"]\n",
        );
        assert_eq!(load(f.path()).unwrap().targets.len(), 2);
    }

    #[test]
    fn a_bad_server_name_is_refused_for_a_list_too() {
        let f = write(
            "[aggregator]\nendpoints = [\"quic://a:1\", \"quic://b:1\"]\nserver_name = \"a b\"\n",
        );
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains("aggregator.server_name `a b`"), "{e}");
    }

    #[test]
    fn unknown_and_mistyped_fields_are_located() {
        let f = write("[aggregator]\nendpoint = \"quic://a:1\"\n[ship]\nmax_inflight = 3\n");
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains(":4:1: unknown field `max_inflight`"), "{e}");
        let f = write("[spool]\nmax_bytes = \"lots\"\n");
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains(":2:13"), "{e}");
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let f = write("[aggregator]\nendpoint = \"quic://a:1\"\nkeep_alive = \"2m\"\n");
        assert!(
            load(f.path())
                .unwrap_err()
                .to_string()
                .contains("keep_alive")
        );
        let f = write("[aggregator]\nendpoint = \"quic://a:1\"\n[log]\nlevel = \"=\"\n");
        assert!(
            load(f.path())
                .unwrap_err()
                .to_string()
                .contains("log.level")
        );
    }

    #[test]
    fn the_example_config_lists_valid_options_with_their_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // As shipped, the agent refuses to start until an aggregator is named.
        assert!(
            load(&path)
                .unwrap_err()
                .to_string()
                .contains("no aggregator configured")
        );
        // The commented list of endpoints is valid on its own.
        let f = write(&text.replace("#endpoints = ", "endpoints = "));
        assert_eq!(load(f.path()).unwrap().targets.len(), 2);
        let f = write(&text.replace("#endpoint = ", "endpoint = "));
        let v = load(f.path()).unwrap();
        let d = AgentConfig::default();
        assert_eq!(v.config.spool.max_bytes, d.spool.max_bytes);
        assert_eq!(v.config.spool.reserve_bytes, d.spool.reserve_bytes);
        assert_eq!(v.config.ship.heartbeat_interval, d.ship.heartbeat_interval);
        assert_eq!(v.config.ship.reconnect_min, d.ship.reconnect_min);
        assert_eq!(v.config.aggregator.idle_timeout, d.aggregator.idle_timeout);
        assert_eq!(v.config.synthetic.enabled, d.synthetic.enabled);
        assert_eq!(v.config.status.interval, d.status.interval);
        let (m, dm) = (&v.config.metrics, &d.metrics);
        assert_eq!(
            (m.enabled, m.interval, m.deadline),
            (dm.enabled, dm.interval, dm.deadline)
        );
        let families = |c: &crate::collectors::metrics::MetricsConfig| {
            c.families(crate::collectors::metrics::agent::Sources::none())
                .unwrap()
                .iter()
                .map(|s| (s.family.name(), s.interval))
                .collect::<Vec<_>>()
        };
        assert_eq!(families(m), families(dm));
        assert_eq!(v.config.fim, d.fim);
        // The commented list of pseudo filesystems is the default list.
        let f = write(
            &text
                .replace("#endpoint = ", "endpoint = ")
                .replace("#exclude_types = ", "exclude_types = "),
        );
        let listed = load(f.path())
            .unwrap()
            .config
            .metrics
            .filesystem
            .exclude_types;
        let defaults = crate::collectors::metrics::defaults::FILESYSTEM_EXCLUDE_TYPES;
        assert_eq!(listed.unwrap(), defaults);
        // The commented [fim] options are the defaults, and the example path entry is valid.
        let f = write(
            &text
                .replace("#endpoint = ", "endpoint = ")
                .replace("#skip_fs_types = ", "skip_fs_types = ")
                .replace("#[[fim.paths]]", "[[fim.paths]]")
                .replace("#path = ", "path = ")
                .replace("#recursive = ", "recursive = ")
                .replace("#exclude = [\"/etc", "exclude = [\"/etc")
                .replace("#mode = \"scheduled\"", "mode = \"scheduled\"")
                .replace("#compare = ", "compare = ")
                .replace("#hash = ", "hash = ")
                .replace("#hash_algorithm = ", "hash_algorithm = ")
                .replace("#max_hash_size = ", "max_hash_size = ")
                .replace("#always_hash = ", "always_hash = "),
        );
        let fim = load(f.path()).unwrap().config.fim;
        assert_eq!(fim.skip_fs_types, d.fim.skip_fs_types);
        let path = crate::collectors::fim::PathConfig {
            path: "/etc".into(),
            exclude: vec!["/etc/*.swp".to_owned(), "**/cache".to_owned()],
            ..Default::default()
        };
        assert_eq!(fim.paths, [path]);
    }

    #[test]
    fn bad_metrics_options_are_refused() {
        let f =
            write("[aggregator]\nendpoint = \"quic://a:1\"\n[metrics.disk]\ninclude = [\"[\"]\n");
        let e = load(f.path()).unwrap_err().to_string();
        assert!(e.contains("metrics.disk.include: glob `[`"), "{e}");
    }
}
