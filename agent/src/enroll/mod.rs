//! Enrollment: how an agent with nothing but a token gets its certificate.
//!
//! `outpost-agent enroll --token …` (and the first start of an agent that finds a token, see
//! [`first_start`]) makes a key on this host, sends a certificate signing request with the
//! token to the aggregator ([`outpost_common::enroll`]), checks what comes back, writes the key,
//! the certificate and the CA where the configuration names them, and rewrites the configuration
//! to ship to that aggregator ([`edit`]), keeping its comments.
//!
//! The steps are split so the decisions can be tested without a network: [`read_token`] and
//! [`agent_id`] check the input, [`request`] is the only part that talks to the aggregator, and
//! [`install`] checks the answer and writes the files.

pub mod edit;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use outpost_common::config::ConfigError;
use outpost_common::enroll::{EnrollRequest, EnrollResponse, Issued, TokenBody, check_endpoint};
use outpost_common::tls;
use outpost_common::wire::{self, Message, close_code};
use thiserror::Error;
use tracing::{error, info, warn};

use crate::config::AgentConfig;
use crate::identity::{self, IdentityError, PairPaths};

/// The environment variable that may hold an enrollment token for the first start.
pub const TOKEN_ENV: &str = "OUTPOST_ENROLL_TOKEN";

/// The largest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 16 * 1024;

/// Exit statuses of `outpost-agent enroll` (from sysexits.h), listed in its `--help`.
pub mod exit {
    /// Bad arguments, token, agent id or configuration; or already enrolled without `--force`.
    pub const USAGE: u8 = 64;
    /// The aggregator's answer cannot be trusted or used: its CA is not the token's, or the
    /// certificate is not for this agent.
    pub const PROTOCOL: u8 = 76;
    /// No endpoint of the token could be reached.
    pub const UNAVAILABLE: u8 = 69;
    /// The aggregator refused the enrollment (the reason is printed).
    pub const REFUSED: u8 = 77;
    /// The key, certificates or configuration could not be written.
    pub const CANT_CREATE: u8 = 73;
}

/// Why enrollment failed.
#[derive(Debug, Error)]
pub enum EnrollError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "{cert}: this agent is enrolled already; pass --force to replace its key and certificate"
    )]
    AlreadyEnrolled { cert: PathBuf },
    #[error("no endpoint of the token answered: {}", .0.join("; "))]
    Unreachable(Vec<String>),
    #[error("{endpoint}: the aggregator refused the enrollment: {reason}")]
    Refused { endpoint: String, reason: String },
    #[error(
        "{endpoint}: the aggregator's CA is not the one the token names: the token is for \
         another aggregator, or something is in the way"
    )]
    PinMismatch { endpoint: String },
    #[error("{endpoint}: {reason}")]
    BadAnswer { endpoint: String, reason: String },
    #[error(transparent)]
    Write(#[from] IdentityError),
}

impl EnrollError {
    /// The exit status `outpost-agent enroll` reports it with.
    pub fn exit_code(&self) -> u8 {
        match self {
            EnrollError::Usage(_)
            | EnrollError::Config(_)
            | EnrollError::AlreadyEnrolled { .. } => exit::USAGE,
            EnrollError::Unreachable(_) => exit::UNAVAILABLE,
            EnrollError::Refused { .. } => exit::REFUSED,
            EnrollError::PinMismatch { .. } | EnrollError::BadAnswer { .. } => exit::PROTOCOL,
            EnrollError::Write(_) => exit::CANT_CREATE,
        }
    }
}

/// Reads a token given as text or in a file (a file's surrounding white space is ignored).
pub fn read_token(text: Option<&str>, file: Option<&Path>) -> Result<TokenBody, EnrollError> {
    let (text, from) = match (text, file) {
        (Some(t), None) => (t.to_owned(), "--token".to_owned()),
        (None, Some(path)) => (read_token_file(path)?, path.display().to_string()),
        _ => {
            return Err(EnrollError::Usage(
                "give the enrollment token with --token or --token-file (one of them)".to_owned(),
            ));
        }
    };
    TokenBody::parse(&text).map_err(|e| EnrollError::Usage(format!("{from}: {e}")))
}

fn read_token_file(path: &Path) -> Result<String, EnrollError> {
    use std::io::Read as _;
    let err =
        |e: std::io::Error| EnrollError::Usage(format!("{}: cannot read: {e}", path.display()));
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(err)?;
    Ok(text)
}

/// The agent id to ask for: `given`, or else the host name; either must be a valid agent id.
pub fn agent_id(given: Option<&str>, host_name: Option<&str>) -> Result<String, EnrollError> {
    if let Some(id) = given {
        if !tls::is_valid_agent_id(id) {
            return Err(EnrollError::Usage(format!(
                "--id `{id}` is not a valid agent id: 1-{} of A-Z a-z 0-9 . _ -",
                tls::MAX_AGENT_ID_LEN
            )));
        }
        return Ok(id.to_owned());
    }
    match host_name {
        Some(name) if tls::is_valid_agent_id(name) => Ok(name.to_owned()),
        Some(name) => Err(EnrollError::Usage(format!(
            "the host name `{name}` is not a valid agent id (1-{} of A-Z a-z 0-9 . _ -): \
             name the agent with --id NAME",
            tls::MAX_AGENT_ID_LEN
        ))),
        None => Err(EnrollError::Usage(
            "the host name cannot be read: name the agent with --id NAME".to_owned(),
        )),
    }
}

/// This host's name, the default agent id.
pub fn host_name() -> Option<String> {
    sysinfo::System::host_name().ok().filter(|n| !n.is_empty())
}

/// Everything an enrollment needs, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub token: TokenBody,
    pub agent_id: String,
    /// The configuration file to rewrite, and what it holds now (the defaults when it does not
    /// exist yet).
    pub config_path: PathBuf,
    pub config: AgentConfig,
    /// Replace an identity that exists.
    pub force: bool,
}

impl Plan {
    /// Reads the configuration (which need not name an aggregator yet) and refuses to replace
    /// an identity without `force`.
    pub fn new(
        token: TokenBody,
        agent_id: String,
        config_path: &Path,
        force: bool,
    ) -> Result<Plan, EnrollError> {
        let config = if config_path.exists() {
            crate::config::load_unenrolled(config_path)?
        } else {
            AgentConfig::default()
        };
        let a = &config.aggregator;
        if !force && (a.cert.exists() || a.key.exists()) {
            return Err(EnrollError::AlreadyEnrolled {
                cert: a.cert.clone(),
            });
        }
        Ok(Plan {
            token,
            agent_id,
            config_path: config_path.to_owned(),
            config,
            force,
        })
    }

    fn settings(&self) -> tls::QuicSettings {
        let a = &self.config.aggregator;
        tls::QuicSettings {
            idle_timeout: a.idle_timeout,
            keep_alive: Some(a.keep_alive),
            max_concurrent_bidi_streams: 0,
            mtu_discovery: a.mtu_discovery,
        }
    }
}

/// Enrolls: makes a key, asks the token's endpoints in turn, and installs what the first to
/// answer issues. Returns the endpoint that issued the certificate.
pub async fn enroll(plan: &Plan) -> Result<String, EnrollError> {
    let made = identity::new_key_and_csr(&plan.agent_id)?;
    let request = EnrollRequest {
        token_id: plan.token.id,
        secret: plan.token.secret,
        agent_id: plan.agent_id.clone(),
        csr_der: made.csr_der,
        agent_version: outpost_common::VERSION.to_owned(),
    };
    let (endpoint, issued) = request_any(plan, &request).await?;
    install(plan, &endpoint, &made.key_pem, &issued)?;
    Ok(endpoint)
}

/// Asks each endpoint of the token in order until one answers; a refusal ends the search (the
/// others hold the same token register).
async fn request_any(
    plan: &Plan,
    request: &EnrollRequest,
) -> Result<(String, Issued), EnrollError> {
    let client = tls::pinned_client_config(plan.token.ca_sha256, &plan.settings())
        .map_err(|e| EnrollError::Usage(e.to_string()))?;
    let timeout = plan.config.aggregator.connect_timeout;
    let mut failures = Vec::new();
    for endpoint in &plan.token.endpoints {
        match ask(endpoint, &client, request, timeout).await {
            Ok(EnrollResponse::Issued(issued)) => return Ok((endpoint.clone(), issued)),
            Ok(EnrollResponse::Refused { reason }) => {
                return Err(EnrollError::Refused {
                    endpoint: endpoint.clone(),
                    reason,
                });
            }
            Err(Failure::Pin) => {
                return Err(EnrollError::PinMismatch {
                    endpoint: endpoint.clone(),
                });
            }
            Err(Failure::Other(reason)) => failures.push(format!("{endpoint}: {reason}")),
        }
    }
    Err(EnrollError::Unreachable(failures))
}

/// Why one endpoint gave no answer.
#[derive(Debug)]
enum Failure {
    /// The aggregator's CA is not the token's.
    Pin,
    Other(String),
}

/// The part of the pinned verifier's error that says the CA is not the token's
/// ([`tls::pinned_client_config`]); it reaches the agent only as text inside the handshake error.
const PIN_MISMATCH_TEXT: &str = "not the one the token names";

/// Sends the request to one endpoint (`host:port`) and reads the answer, all within `timeout`.
async fn ask(
    endpoint: &str,
    client: &quinn::ClientConfig,
    request: &EnrollRequest,
    timeout: Duration,
) -> Result<EnrollResponse, Failure> {
    let (host, port) = check_endpoint(endpoint).map_err(|e| Failure::Other(e.to_string()))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Failure::Other(format!("cannot resolve: {e}")))?
        .collect();
    // As the shipper does: a name with an IPv4 address is reached over IPv4.
    let addr = *addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .ok_or_else(|| Failure::Other("resolves to no address".to_owned()))?;
    let local = if addr.is_ipv6() {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0u8; 4], 0))
    };
    let quic = quinn::Endpoint::client(local)
        .map_err(|e| Failure::Other(format!("cannot open a UDP socket: {e}")))?;
    let conversation = async {
        let conn = quic
            .connect_with(client.clone(), addr, host)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
        wire::write_message(&mut tx, &Message::EnrollRequest(request.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tx.finish();
        let answer = wire::read_message(&mut rx, wire::DEFAULT_MAX_FRAME_BYTES)
            .await
            .map_err(|e| {
                conn.close_reason()
                    .map_or_else(|| e.to_string(), |r| r.to_string())
            });
        conn.close(close_code::NORMAL.into(), b"");
        match answer? {
            Message::EnrollResponse(r) => Ok(r),
            other => Err(format!(
                "answered {} to an enrollment request",
                other.name()
            )),
        }
    };
    let result = tokio::time::timeout(timeout, conversation).await;
    // Let the close reach the aggregator.
    let _ = tokio::time::timeout(Duration::from_secs(1), quic.wait_idle()).await;
    match result {
        Err(_) => Err(Failure::Other(format!("no answer within {timeout:?}"))),
        Ok(Err(reason)) if reason.contains(PIN_MISMATCH_TEXT) => Err(Failure::Pin),
        Ok(Err(reason)) => Err(Failure::Other(reason)),
        Ok(Ok(answer)) => Ok(answer),
    }
}

/// Checks what `endpoint` issued and installs it: the key and certificate (as a pair), the CA,
/// then the configuration.
pub fn install(
    plan: &Plan,
    endpoint: &str,
    key_pem: &str,
    issued: &Issued,
) -> Result<(), EnrollError> {
    let bad = |reason: String| EnrollError::BadAnswer {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let ca = identity::first_certificate(&issued.ca_pem)
        .map_err(|e| bad(format!("the CA it sent is not usable: {e}")))?;
    if outpost_common::enroll::ca_sha256(&ca) != plan.token.ca_sha256 {
        return Err(EnrollError::PinMismatch {
            endpoint: endpoint.to_owned(),
        });
    }
    if issued.agent_id != plan.agent_id {
        return Err(bad(format!(
            "it issued a certificate for the agent `{}`, not `{}`",
            issued.agent_id, plan.agent_id
        )));
    }
    identity::check_issued(&plan.agent_id, key_pem, &issued.cert_pem)
        .map_err(|e| bad(e.to_string()))?;
    let (host, port) = check_endpoint(endpoint).map_err(|e| bad(e.to_string()))?;
    let labels: Vec<(String, String)> = issued.labels.clone();
    wire::check_labels(&labels).map_err(|e| bad(format!("labels: {e}")))?;
    let a = &plan.config.aggregator;
    // Checked before anything is written, so a configuration that would not load is not left
    // with new files beside it.
    let update = edit::Update {
        endpoint: if host.contains(':') {
            format!("quic://[{host}]:{port}")
        } else {
            format!("quic://{host}:{port}")
        },
        server_name: host.to_owned(),
        ca: edit::path_text(&a.ca),
        cert: edit::path_text(&a.cert),
        key: edit::path_text(&a.key),
        labels,
    };
    let old_text = match std::fs::read_to_string(&plan.config_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: plan.config_path.clone(),
                source,
            }
            .into());
        }
    };
    let new_text =
        edit::apply(&old_text, &update).map_err(|m| ConfigError::invalid(&plan.config_path, m))?;
    crate::config::check_text(&plan.config_path, &new_text)?;

    for dir in [&a.ca, &a.cert, &a.key].iter().filter_map(|p| p.parent()) {
        create_dir(dir)?;
    }
    let pair = PairPaths {
        key: a.key.clone(),
        cert: a.cert.clone(),
    };
    identity::recover_pair(&pair)?;
    identity::install_pair(&pair, key_pem, &issued.cert_pem)?;
    identity::write_atomic(&a.ca, issued.ca_pem.as_bytes(), identity::PUBLIC_MODE, None)?;
    write_config(&plan.config_path, &new_text)
}

fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| IdentityError::Io {
            path: dir.to_owned(),
            action: "create directory",
            source,
        })
}

/// Replaces the configuration atomically, keeping its mode and group (a new one gets the key's
/// access: the agent's group may read it, others not).
fn write_config(path: &Path, text: &str) -> Result<(), EnrollError> {
    use std::os::unix::fs::MetadataExt;
    let (mode, group) = match std::fs::metadata(path) {
        Ok(m) => (m.mode() & 0o7777, Some(m.gid())),
        Err(_) => identity::key_access(),
    };
    if let Some(gid) = group {
        match identity::write_atomic(path, text.as_bytes(), mode, Some(gid)) {
            Ok(()) => return Ok(()),
            // Not allowed to give the file that group (not root, not a member): keep the mode.
            Err(e) => warn!(
                error = %e,
                "cannot keep the configuration's group; check that the agent can still read it"
            ),
        }
    }
    Ok(identity::write_atomic(path, text.as_bytes(), mode, None)?)
}

/// Where a first start finds its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// In the environment variable [`TOKEN_ENV`].
    Env(String),
    /// In this file, removed once enrolled.
    File(PathBuf),
}

/// The token a first start enrolls with: only when the agent is not enrolled yet (no
/// certificate, or no aggregator named: an enrollment interrupted before the configuration was
/// written), from the environment, else from `[aggregator] enroll_token` if that file exists.
pub fn first_start_token(config: &AgentConfig, env: Option<String>) -> Option<TokenSource> {
    let a = &config.aggregator;
    if a.cert.exists() && (a.endpoint.is_some() || a.endpoints.is_some()) {
        return None;
    }
    match env.filter(|t| !t.trim().is_empty()) {
        Some(t) => Some(TokenSource::Env(t)),
        None => a
            .enroll_token
            .exists()
            .then(|| TokenSource::File(a.enroll_token.clone())),
    }
}

/// Backoff between enrollment attempts at first start: the first and the longest wait.
const FIRST_START_RETRY_MIN: Duration = Duration::from_secs(2);
const FIRST_START_RETRY_MAX: Duration = Duration::from_secs(300);

/// Enrolls at the first start, until it succeeds or SIGTERM/SIGINT arrives (then an error).
/// Failures are logged and retried with capped exponential backoff and jitter, so a wrong token
/// or an unreachable aggregator does not make the service crash-loop; the token is read again
/// at each attempt, so fixing the file is enough. Once enrolled, a token file is removed.
pub fn first_start(config_path: &Path, source: TokenSource) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut signals = outpost_common::shutdown::Signals::install()?;
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(FIRST_START_RETRY_MIN)
            .with_max_delay(FIRST_START_RETRY_MAX)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            info!(config = %config_path.display(), "no certificate yet: enrolling with the token");
            match first_start_attempt(config_path, &source).await {
                Ok(endpoint) => {
                    info!(aggregator = %endpoint, "enrolled");
                    break;
                }
                Err(e) => {
                    let retry_in = backoff.next().unwrap_or(FIRST_START_RETRY_MAX);
                    error!(error = %e, retry_in = ?retry_in, "enrollment failed");
                    tokio::select! {
                        () = tokio::time::sleep(retry_in) => {}
                        () = signals.recv() => anyhow::bail!("stopped before enrolling"),
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    if let TokenSource::File(path) = &source {
        match std::fs::remove_file(path) {
            Ok(()) => info!(token = %path.display(), "enrollment token removed"),
            Err(e) => warn!(
                token = %path.display(),
                error = %e,
                "cannot remove the enrollment token; remove it by hand, it is a secret"
            ),
        }
    }
    Ok(())
}

async fn first_start_attempt(
    config_path: &Path,
    source: &TokenSource,
) -> Result<String, EnrollError> {
    let token = match source {
        TokenSource::Env(text) => {
            TokenBody::parse(text).map_err(|e| EnrollError::Usage(format!("{TOKEN_ENV}: {e}")))?
        }
        TokenSource::File(path) => read_token(None, Some(path))?,
    };
    let id = agent_id(None, host_name().as_deref())?;
    // Replacing is right here: the agent only gets here when it is not (fully) enrolled.
    let plan = Plan::new(token, id, config_path, true)?;
    enroll(&plan).await
}
