//! The aggregator's configuration file (`/etc/outpost/aggregator.toml`).
//!
//! Every option has a default; `packaging/aggregator.toml` lists them all with comments.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use outpost_common::config::{ConfigError, line_column, load_toml};
use outpost_common::logging::LogConfig;
use serde::Deserialize;
use toml::Spanned;

/// The whole aggregator configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Where the store lives (`aggregator.db` and its WAL files).
    pub data_dir: PathBuf,
    /// UDP address for agent ingest. Port 0 picks a free port; the bound address is written to
    /// `<data_dir>/listen.addr`.
    pub listen: Spanned<String>,
    pub tls: TlsSection,
    pub ingest: IngestSection,
    pub fleet: FleetSection,
    pub retention: RetentionSection,
    pub store: StoreSection,
    pub state: StateSection,
    pub api: ApiSection,
    pub alerting: crate::alerts::AlertingSection,
    pub enroll: EnrollSection,
    pub log: LogConfig,
}

/// `[enroll]`: agents enrolling with a token, and renewing their certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollSection {
    /// Answer enrollment connections (agents with a token from `token create --enroll`). When
    /// off, they are refused, and renewals too; certificates come from `pki issue-agent` only.
    pub enabled: bool,
    /// Validity of the certificates issued at enrollment and renewal; at least 1 minute.
    /// Agents renew before it runs out, so a short one limits how long a stolen key is worth.
    #[serde(with = "humantime_serde")]
    pub agent_validity: Duration,
}

impl Default for EnrollSection {
    fn default() -> Self {
        EnrollSection {
            enabled: true,
            agent_validity: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// `[store]`: where events are stored, and how the embedded store keeps them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite` (the default: the embedded store under `data_dir`, zero setup, one aggregator)
    /// or `clickhouse` (`[store.clickhouse]`: a ClickHouse server that several aggregators
    /// share).
    pub backend: EventBackend,
    /// `[store.clickhouse]`, read when `backend = "clickhouse"`.
    pub clickhouse: crate::store::clickhouse::ClickHouseConfig,
    /// Index the log records stored as rows by agent and time, so that a search of one host
    /// over a time range seeks instead of scanning. Records kept in blocks (those of agents that
    /// compress their batches, the default) have an index of their own, always. For rows it
    /// costs about a fifth of the rate at which they can be stored (BENCHMARKS.md). Changed at the
    /// next start (building the index over many logs takes a while).
    pub log_index: bool,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: EventBackend::Sqlite,
            clickhouse: crate::store::clickhouse::ClickHouseConfig::default(),
            log_index: true,
        }
    }
}

/// Where events are stored (`[store] backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventBackend {
    Sqlite,
    Clickhouse,
}

impl EventBackend {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventBackend::Sqlite => "sqlite",
            EventBackend::Clickhouse => "clickhouse",
        }
    }
}

/// `[state]`: where the aggregator keeps what it knows and decides (the agent registry, alert
/// state, silences, the notification outbox, API and enrollment tokens, the audit log).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSection {
    /// `sqlite` (the default: the embedded store under `data_dir`) or `postgres`
    /// (`[state.postgres]`: a PostgreSQL database that several aggregators share).
    pub backend: StateBackendKind,
    /// `[state.postgres]`, required when `backend = "postgres"`.
    pub postgres: Option<crate::store::postgres::PostgresConfig>,
}

/// Where state is kept (`[state] backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackendKind {
    #[default]
    Sqlite,
    Postgres,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            data_dir: PathBuf::from("/var/lib/outpost"),
            listen: Spanned::new(0..0, "0.0.0.0:4433".to_owned()),
            tls: TlsSection::default(),
            ingest: IngestSection::default(),
            fleet: FleetSection::default(),
            retention: RetentionSection::default(),
            store: StoreSection::default(),
            state: StateSection::default(),
            api: ApiSection::default(),
            alerting: crate::alerts::AlertingSection::default(),
            enroll: EnrollSection::default(),
            log: LogConfig::default(),
        }
    }
}

/// `[tls]`: the PKI directory made by `outpost-aggregator pki init`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Holds ca.pem, server.pem, server.key, crl.pem and agents/.
    pub dir: PathBuf,
    /// Check the TLS files (CRL, certificates) for changes this often and reload them without a
    /// restart. SIGHUP reloads at once.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            dir: PathBuf::from("/etc/outpost/tls"),
            reload_interval: Duration::from_secs(5),
        }
    }
}

impl TlsSection {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
}

/// `[ingest]`: limits on what agents may send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    /// Largest frame accepted; larger length prefixes close the connection before any allocation.
    pub max_frame_bytes: ByteSize,
    /// Most events in one batch.
    pub max_batch_events: u32,
    /// Batch streams one agent may have open at once.
    pub max_in_flight: u32,
    /// An agent must complete Hello within this time after the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Close connections silent for this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Batches waiting for the store, across all agents; beyond it agents wait (back-pressure).
    /// Registry updates (Hello, heartbeat, disconnect) wait apart, in a queue of the same size,
    /// and are taken first.
    pub queue: usize,
    /// Most batches and events committed in one store transaction (group commit).
    pub max_batches_per_txn: usize,
    pub max_events_per_txn: usize,
    /// Events stamped further in the future than this (relative to receipt) are invalid.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Receive buffer asked for the UDP socket, so bursts (a fleet reconnecting) are not
    /// dropped. The kernel caps it at `net.core.rmem_max`; a warning says when it did.
    pub udp_receive_buffer: ByteSize,
    /// TLS handshakes in progress at most; a connection beyond it is refused at once and its
    /// agent retries after its backoff.
    pub max_handshakes: usize,
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            max_frame_bytes: ByteSize::mib(8),
            max_batch_events: 10_000,
            max_in_flight: 32,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            queue: 4096,
            max_batches_per_txn: 512,
            max_events_per_txn: 100_000,
            max_future_skew: Duration::from_secs(24 * 3600),
            udp_receive_buffer: ByteSize::mib(4),
            max_handshakes: 256,
        }
    }
}

/// `[fleet]`: how host status is judged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// Expected heartbeat interval, told to agents.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// An agent not heard from for this long is offline.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// Drops within this window make a host degraded.
    #[serde(with = "humantime_serde")]
    pub degraded_window: Duration,
    /// A backlog rising for longer than this makes a host degraded.
    #[serde(with = "humantime_serde")]
    pub backlog_rising_for: Duration,
}

impl Default for FleetSection {
    fn default() -> Self {
        FleetSection {
            heartbeat_interval: Duration::from_secs(10),
            offline_after: Duration::from_secs(45),
            degraded_window: Duration::from_secs(300),
            backlog_rising_for: Duration::from_secs(60),
        }
    }
}

/// `[retention]`: how long each kind of data is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    #[serde(with = "humantime_serde")]
    pub metric: Duration,
    /// Metric points are packed into one chunk per series for each span this long of receive
    /// time, once it has passed (see `store::Retention::metric_chunk`).
    #[serde(with = "humantime_serde")]
    pub metric_chunk: Duration,
    #[serde(with = "humantime_serde")]
    pub log: Duration,
    #[serde(with = "humantime_serde")]
    pub fim: Duration,
    #[serde(with = "humantime_serde")]
    pub status: Duration,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RetentionSection {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        RetentionSection {
            metric: Duration::from_secs(30 * DAY),
            metric_chunk: Duration::from_secs(30 * 60),
            log: Duration::from_secs(14 * DAY),
            fim: Duration::from_secs(365 * DAY),
            status: Duration::from_secs(7 * DAY),
            interval: Duration::from_secs(60),
        }
    }
}

/// `[api]`: the HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub enabled: bool,
    /// TCP address of the API. Port 0 picks a free port; the bound address is written to
    /// `<data_dir>/api.addr`.
    pub listen: Spanned<String>,
    /// Serve HTTPS with this certificate chain (PEM) and key; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A request taking longer is answered 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest request body accepted.
    pub max_body: ByteSize,
    /// Requests a second one token may make, with bursts of twice as many.
    pub requests_per_sec_per_token: u32,
    /// Requests a second one client address may make (with or without a token).
    pub requests_per_sec_per_address: u32,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            enabled: true,
            listen: Spanned::new(0..0, "127.0.0.1:9440".to_owned()),
            tls_cert: None,
            tls_key: None,
            request_timeout: Duration::from_secs(30),
            max_body: ByteSize::kib(256),
            requests_per_sec_per_token: 50,
            requests_per_sec_per_address: 100,
        }
    }
}

/// A loaded and validated configuration.
#[derive(Debug, Clone)]
pub struct Validated {
    pub config: AggregatorConfig,
    /// The alerting engine's routes, inhibitions and escalations, checked.
    pub alerting: crate::rules::engine::Setup,
    pub listen: SocketAddr,
    /// The API's address.
    pub api_listen: SocketAddr,
    pub path: PathBuf,
}

impl Validated {
    pub fn store_path(&self) -> PathBuf {
        self.config.data_dir.join("aggregator.db")
    }
    pub fn listen_file(&self) -> PathBuf {
        self.config.data_dir.join("listen.addr")
    }
    /// Where the API's bound address is written.
    pub fn api_listen_file(&self) -> PathBuf {
        self.config.data_dir.join("api.addr")
    }
}

/// Parses a socket address option, locating the error in the file.
fn socket_address(
    path: &Path,
    option: &str,
    value: &Spanned<String>,
    example: &str,
) -> Result<SocketAddr, ConfigError> {
    value.get_ref().parse::<SocketAddr>().map_err(|e| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let (line, column) = line_column(&text, value.span().start);
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message: format!(
                "{option}: `{}` is not a socket address ({e}); expected e.g. \"{example}\"",
                value.get_ref()
            ),
        }
    })
}

/// Loads and validates `path`.
pub fn load(path: &Path) -> Result<Validated, ConfigError> {
    let mut config: AggregatorConfig = load_toml(path)?;
    if config.alerting.rules_dir.is_relative() {
        let beside = path.parent().unwrap_or(Path::new("."));
        config.alerting.rules_dir = beside.join(&config.alerting.rules_dir);
    }
    let invalid = |m: String| ConfigError::invalid(path, m);
    let listen = socket_address(path, "listen", &config.listen, "0.0.0.0:4433")?;
    let api_listen = socket_address(path, "api.listen", &config.api.listen, "127.0.0.1:9440")?;
    let i = &config.ingest;
    if i.max_frame_bytes.as_u64() < 64 * 1024 || i.max_frame_bytes.as_u64() > 256 * 1024 * 1024 {
        return Err(invalid(
            "ingest.max_frame_bytes must be between 64 KiB and 256 MiB".into(),
        ));
    }
    if i.max_batch_events == 0 || i.max_in_flight == 0 || i.max_in_flight > 1024 {
        return Err(invalid("ingest.max_batch_events must be at least 1 and ingest.max_in_flight between 1 and 1024".into()));
    }
    if i.max_handshakes == 0 {
        return Err(invalid("ingest.max_handshakes must be at least 1".into()));
    }
    if i.queue == 0 || i.max_batches_per_txn == 0 || i.max_events_per_txn == 0 {
        return Err(invalid(
            "ingest.queue, max_batches_per_txn and max_events_per_txn must be at least 1".into(),
        ));
    }
    if i.handshake_timeout.is_zero() || i.idle_timeout.is_zero() {
        return Err(invalid(
            "ingest.handshake_timeout and ingest.idle_timeout must be above zero".into(),
        ));
    }
    if config.enroll.agent_validity < Duration::from_secs(60) {
        return Err(invalid(format!(
            "enroll.agent_validity must be at least 1 minute (found {})",
            humantime::format_duration(config.enroll.agent_validity)
        )));
    }
    let f = &config.fleet;
    if f.heartbeat_interval.is_zero() || f.offline_after <= f.heartbeat_interval {
        return Err(invalid(format!(
            "fleet.offline_after ({}) must be longer than fleet.heartbeat_interval ({})",
            humantime::format_duration(f.offline_after),
            humantime::format_duration(f.heartbeat_interval)
        )));
    }
    if config.retention.interval.is_zero()
        || config.retention.metric_chunk.is_zero()
        || config.tls.reload_interval.is_zero()
    {
        return Err(invalid(
            "retention.interval, retention.metric_chunk and tls.reload_interval must be above zero"
                .into(),
        ));
    }
    let a = &config.api;
    if a.tls_cert.is_some() != a.tls_key.is_some() {
        return Err(invalid(
            "api.tls_cert and api.tls_key go together: set both for HTTPS, or neither".into(),
        ));
    }
    if a.request_timeout.is_zero()
        || a.max_body.as_u64() == 0
        || a.requests_per_sec_per_token == 0
        || a.requests_per_sec_per_address == 0
    {
        return Err(invalid(
            "api.request_timeout, max_body, requests_per_sec_per_token and \
             requests_per_sec_per_address must be above zero"
                .into(),
        ));
    }
    check_backends(&config).map_err(invalid)?;
    config.log.validate().map_err(invalid)?;
    let alerting = config.alerting.setup().map_err(invalid)?;
    crate::notify::Receivers::from_config(&config.alerting.receivers)
        .map_err(|e| invalid(format!("alerting.receivers: {e}")))?;
    Ok(Validated {
        alerting,
        listen,
        api_listen,
        path: path.to_owned(),
        config,
    })
}

/// Checks the `[store]` and `[state]` backends' settings (what can be checked without the
/// servers).
fn check_backends(config: &AggregatorConfig) -> Result<(), String> {
    use crate::store::clickhouse::{MAX_BATCH_EVENTS, MAX_NODE};
    if config.store.backend == EventBackend::Clickhouse {
        let ch = &config.store.clickhouse;
        if ch.node > MAX_NODE {
            return Err(format!(
                "store.clickhouse.node must be between 0 and {MAX_NODE} (found {})",
                ch.node
            ));
        }
        if config.ingest.max_batch_events as usize > MAX_BATCH_EVENTS {
            return Err(format!(
                "ingest.max_batch_events ({}) is above the {MAX_BATCH_EVENTS} events a batch \
                 may have in the ClickHouse store",
                config.ingest.max_batch_events
            ));
        }
    }
    match (config.state.backend, &config.state.postgres) {
        (StateBackendKind::Postgres, None) => Err(
            "state.backend = \"postgres\" needs [state.postgres] with its url \
             (url = \"postgresql://outpost@db.example:5432/outpost\")"
                .to_owned(),
        ),
        // The aggregator running alerting follows every aggregator's commits, which only a
        // shared event store holds.
        (StateBackendKind::Postgres, Some(_))
            if config.alerting.enabled && config.store.backend == EventBackend::Sqlite =>
        {
            Err(
                "alerting with state.backend = \"postgres\" needs store.backend = \
                 \"clickhouse\": the aggregator that runs alerting evaluates every \
                 aggregator's events, which only a shared event store holds (or set \
                 [alerting] enabled = false)"
                    .to_owned(),
            )
        }
        (StateBackendKind::Postgres, Some(_))
            if config.alerting.enabled && config.alerting.lease_ttl < Duration::from_secs(3) =>
        {
            Err(format!(
                "alerting.lease_ttl must be at least 3s (found {})",
                humantime::format_duration(config.alerting.lease_ttl)
            ))
        }
        (StateBackendKind::Postgres, Some(pg)) => {
            pg.validate().map_err(|e| format!("state.postgres: {e}"))
        }
        (StateBackendKind::Sqlite, _) => Ok(()),
    }
}

/// Checks that the TLS files exist and build a server configuration.
pub fn check_tls_files(v: &Validated) -> Result<(), ConfigError> {
    let t = &v.config.tls;
    let fail = |e: outpost_common::tls::TlsError| ConfigError::invalid(&v.path, e);
    let ca = outpost_common::tls::load_certs(&t.ca()).map_err(fail)?;
    let chain = outpost_common::tls::load_certs(&t.cert()).map_err(fail)?;
    let key = outpost_common::tls::load_key(&t.key()).map_err(fail)?;
    let crls = outpost_common::tls::load_crls(&t.crl()).map_err(fail)?;
    outpost_common::tls::server_config(&ca, chain, key, crls, &Default::default()).map_err(fail)?;
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
    fn empty_file_is_all_defaults() {
        let v = load(write("").path()).unwrap();
        assert_eq!(v.listen.port(), 4433);
        assert_eq!(v.config.fleet.offline_after, Duration::from_secs(45));
        assert_eq!(
            v.config.tls.crl(),
            PathBuf::from("/etc/outpost/tls/crl.pem")
        );
    }

    #[test]
    fn errors_are_located() {
        let e = load(write("data_dir = \"/x\"\nlisten = \"nope\"\n").path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:10: listen: `nope`"), "{e}");
        let e = load(write("[fleet]\noffline_after = 45\n").path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:17"), "{e}");
        let e = load(write("[ingest]\nmax_handshakes = 0\n").path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ingest.max_handshakes must be at least 1"),
            "{e}"
        );
        let e = load(write("[ingest]\nmax_frame = 1\n").path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:1: unknown field `max_frame`"), "{e}");
        let e = load(write("[fleet]\noffline_after = \"5s\"\n").path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("offline_after"), "{e}");
    }

    #[test]
    fn the_example_config_is_valid_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/aggregator.toml");
        let v = load(&path).unwrap();
        let d = AggregatorConfig::default();
        assert_eq!(v.listen.to_string(), *d.listen.get_ref());
        assert_eq!(v.config.ingest.max_frame_bytes, d.ingest.max_frame_bytes);
        assert_eq!(v.config.ingest.queue, d.ingest.queue);
        assert_eq!(v.config.fleet.offline_after, d.fleet.offline_after);
        assert_eq!(v.config.retention.log, d.retention.log);
        assert_eq!(v.config.ingest.max_future_skew, d.ingest.max_future_skew);
        assert_eq!(
            v.config.ingest.udp_receive_buffer,
            d.ingest.udp_receive_buffer
        );
        assert_eq!(v.config.ingest.max_handshakes, d.ingest.max_handshakes);
        assert_eq!(v.api_listen.to_string(), *d.api.listen.get_ref());
        assert_eq!(v.config.api.max_body, d.api.max_body);
        assert_eq!(v.config.api.request_timeout, d.api.request_timeout);
        assert_eq!(v.config.enroll.agent_validity, d.enroll.agent_validity);
        assert_eq!(v.config.enroll.enabled, d.enroll.enabled);
        assert_eq!(
            v.config.api.requests_per_sec_per_token,
            d.api.requests_per_sec_per_token
        );
    }

    #[test]
    fn api_options_are_checked() {
        let e = load(write("[api]\nlisten = \"localhost\"\n").path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:10: api.listen: `localhost`"), "{e}");
        let e = load(write("[api]\ntls_cert = \"/x.pem\"\n").path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("go together"), "{e}");
        let e = load(write("[api]\nrequests_per_sec_per_token = 0\n").path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("above zero"), "{e}");
    }

    #[test]
    fn the_enrolled_certificates_validity_is_at_least_a_minute() {
        let v = load(write("[enroll]\nagent_validity = \"1m\"\n").path()).unwrap();
        assert_eq!(v.config.enroll.agent_validity, Duration::from_secs(60));
        let e = load(write("[enroll]\nagent_validity = \"59s\"\n").path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("enroll.agent_validity must be at least 1 minute"),
            "{e}"
        );
    }

    #[test]
    fn store_and_metric_packing_options_are_read_and_checked() {
        let v =
            load(write("[store]\nlog_index = false\n[retention]\nmetric_chunk = \"1h\"\n").path())
                .unwrap();
        assert!(!v.config.store.log_index);
        assert_eq!(v.config.retention.metric_chunk, Duration::from_secs(3600));
        assert!(AggregatorConfig::default().store.log_index);
        let e = load(write("[retention]\nmetric_chunk = \"0s\"\n").path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retention.metric_chunk") && e.contains("above zero"),
            "{e}"
        );
        let e = load(write("[store]\nlog_indexes = true\n").path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_indexes"), "{e}");
    }

    #[test]
    fn backends_are_embedded_by_default_and_the_others_are_checked() {
        let v = load(write("").path()).unwrap();
        assert_eq!(v.config.store.backend, EventBackend::Sqlite);
        assert_eq!(v.config.state.backend, StateBackendKind::Sqlite);
        let err = |text: &str| load(write(text).path()).unwrap_err().to_string();
        let e = err("[state]\nbackend = \"postgres\"\n");
        assert!(e.contains("needs [state.postgres]"), "{e}");
        let e = err("[store]\nbackend = \"cassandra\"\n");
        assert!(e.contains("cassandra") && e.contains("clickhouse"), "{e}");
        let e = err("[store]\nbackend = \"clickhouse\"\n[store.clickhouse]\nnode = 64\n");
        assert!(e.contains("store.clickhouse.node"), "{e}");
        let e = err("[store]\nbackend = \"clickhouse\"\n[ingest]\nmax_batch_events = 1000000\n");
        assert!(e.contains("ingest.max_batch_events"), "{e}");
        let e = err(
            "[state]\nbackend = \"postgres\"\n[state.postgres]\nurl = \"postgresql://a@b:c/d\"\n[alerting]\nenabled = false\n",
        );
        assert!(e.contains("state.postgres"), "{e}");
        let e = err(
            "[state]\nbackend = \"postgres\"\n[state.postgres]\nurl = \"postgresql://a@b/d\"\n",
        );
        assert!(
            e.contains("store.backend = \"clickhouse\"") && e.contains("enabled = false"),
            "{e}"
        );
        let cluster = "[store]\nbackend = \"clickhouse\"\n[store.clickhouse]\nurl = \"http://ch:8123\"\nnode = 3\n\
                       [state]\nbackend = \"postgres\"\n[state.postgres]\nurl = \"postgresql://outpost@db:5432/outpost\"\n";
        let e = err(&format!("{cluster}[alerting]\nlease_ttl = \"1s\"\n"));
        assert!(e.contains("alerting.lease_ttl must be at least 3s"), "{e}");
        let v = load(write(cluster).path()).unwrap();
        assert!(v.config.alerting.enabled);
        assert_eq!(v.config.alerting.lease_ttl, Duration::from_secs(10));
        assert_eq!(v.config.store.backend, EventBackend::Clickhouse);
        assert_eq!(v.config.store.clickhouse.node, 3);
        assert_eq!(v.config.store.clickhouse.url, "http://ch:8123");
        assert_eq!(v.config.state.backend, StateBackendKind::Postgres);
        assert!(v.config.state.postgres.is_some());
    }
}
