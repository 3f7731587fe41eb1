//! The aggregator's certificate authority: `outpost-aggregator pki init | issue-server |
//! issue-agent | revoke | list`.
//!
//! One CA signs the aggregator's server certificate and every agent certificate. Agents verify
//! the aggregator against the CA and the server name; the aggregator requires a client
//! certificate from the CA that is not on its revocation list, and takes the agent's identity
//! from the certificate's SAN URI `urn:outpost:agent:<id>` (see [`outpost_common::tls`]).
//!
//! Everything lives in one directory ([`DEFAULT_DIR`]), described by [`Layout`]:
//!
//! ```text
//! ca.pem ca.key            the CA (key 0600)
//! server.pem server.key    the aggregator's certificate (key 0600)
//! crl.pem                  the revocation list, signed by the CA, regenerated from revoked.json
//! revoked.json             what was revoked: serial, agent id, time, reason; the CRL number
//! agents/<id>.pem .key     issued agent certificates (key 0600); the .pem of an agent that
//!                          enrolled or renewed holds its certificates not expired, newest
//!                          first, and there is no .key: the agent made its key and keeps it
//! replaced-<time>/         material moved aside by `init` when it replaced a CA
//! ```
//!
//! The operations are free functions taking the directory, because each one is a short
//! transaction on the files (lock, read, write atomically) with nothing worth keeping in memory
//! between them. Mutating operations hold an exclusive lock on `<dir>/.lock`; every file is
//! replaced atomically, private keys are created 0600 from the start (see `files.rs`).
//!
//! ```no_run
//! use std::path::Path;
//!
//! use outpost_aggregator::pki;
//!
//! let dir = Path::new("/etc/outpost/tls");
//! pki::init(dir, &["aggregator.example.net".into()], pki::DEFAULT_CA_VALIDITY, false)?;
//! let agent = pki::issue_agent(dir, "web-01", pki::DEFAULT_AGENT_VALIDITY, false)?;
//! println!("copy {} and {} to web-01", agent.cert_path.display(), agent.key_path.display());
//! pki::revoke_agent(dir, "web-01", "key-compromise")?;
//! # Ok::<(), pki::PkiError>(())
//! ```

mod certs;
mod cli;
mod files;
mod revocations;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_common::time::to_ns;
use outpost_common::tls;
use serde::Serialize;

use self::certs::Ca;
use self::files::{
    DIR_MODE, DirLock, KEY_MODE, PUBLIC_MODE, create_dir, read_optional, write_atomic,
    write_key_atomic,
};
use self::revocations::{Revocation, Revocations};

pub use self::cli::{DirArg, PkiCommand, run, run_with};

/// Where the PKI lives unless `--dir` says otherwise.
pub const DEFAULT_DIR: &str = "/etc/outpost/tls";

const DAY: u64 = 24 * 60 * 60;

/// Default validity of the CA: 10 years.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY);

/// Default validity of the aggregator's certificate: 2 years.
pub const DEFAULT_SERVER_VALIDITY: Duration = Duration::from_secs(730 * DAY);

/// Default validity of an agent certificate: 1 year.
pub const DEFAULT_AGENT_VALIDITY: Duration = Duration::from_secs(365 * DAY);

/// Certificates take effect this long before they are issued, so that a host whose clock is a
/// little behind the aggregator's still accepts them.
pub const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// The revocation reason recorded when `issue-agent --force` replaces a certificate.
pub const SUPERSEDED: &str = "superseded";

/// Errors of the PKI operations; each names the file or agent it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: cannot {action}: {cause}")]
    Io {
        path: PathBuf,
        action: &'static str,
        cause: io::Error,
    },
    #[error(
        "{path} already exists: refusing to replace the CA (every issued certificate would stop \
         working); pass --force to replace it, the old material is moved to replaced-<time>/"
    )]
    CaExists { path: PathBuf },
    #[error("{path} already exists; pass --force to replace it")]
    ServerExists { path: PathBuf },
    #[error(
        "{path}: agent `{agent_id}` already has a certificate; pass --force to issue a new one \
         (the old one is then revoked as superseded)"
    )]
    AgentExists { agent_id: String, path: PathBuf },
    #[error(
        "{path} is missing: there is no CA here; create one with `outpost-aggregator pki init`"
    )]
    NotInitialised { path: PathBuf },
    #[error("invalid agent id `{0}`: use 1-128 characters of A-Z a-z 0-9 . _ -")]
    InvalidAgentId(String),
    #[error("invalid server name `{0}`: give a DNS name or an IP address")]
    InvalidServerName(String),
    #[error("no certificate for agent `{agent_id}`: {path} does not exist")]
    NoSuchAgent { agent_id: String, path: PathBuf },
    #[error("{path}: unreadable: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{key} is not the key of {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("invalid validity: {0}")]
    Validity(String),
    #[error("invalid serial number `{0}` in the revocation records")]
    BadSerial(String),
    #[error("cannot {what}: {cause}")]
    Generate { what: String, cause: rcgen::Error },
}

impl PkiError {
    /// Wraps an I/O error with the path and what was being done, for `map_err`.
    pub(crate) fn io(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> PkiError {
        let path = path.to_owned();
        move |cause| PkiError::Io {
            path,
            action,
            cause,
        }
    }
}

/// The paths of the files in a PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Layout { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    pub fn revocations(&self) -> PathBuf {
        self.dir.join("revoked.json")
    }

    pub fn agents_dir(&self) -> PathBuf {
        self.dir.join("agents")
    }

    /// `agents/<id>.pem`. The id must be valid ([`tls::is_valid_agent_id`]); the suffix keeps
    /// even `..` a plain file name.
    pub fn agent_cert(&self, agent_id: &str) -> PathBuf {
        self.agents_dir().join(format!("{agent_id}.pem"))
    }

    /// `agents/<id>.key`; see [`Layout::agent_cert`].
    pub fn agent_key(&self, agent_id: &str) -> PathBuf {
        self.agents_dir().join(format!("{agent_id}.key"))
    }

    /// Everything `init` replaces.
    fn material(&self) -> Vec<PathBuf> {
        vec![
            self.ca_cert(),
            self.ca_key(),
            self.server_cert(),
            self.server_key(),
            self.crl(),
            self.revocations(),
            self.agents_dir(),
        ]
    }
}

/// What [`init`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub ca_serial_hex: String,
    pub ca_not_after_ns: i64,
    pub server: IssuedServer,
    pub crl: PathBuf,
    pub revocations: PathBuf,
    pub agents_dir: PathBuf,
    /// Where material of a previous CA was moved, if there was any.
    pub replaced: Option<PathBuf>,
}

/// The aggregator's certificate, as written by [`init`] or [`issue_server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedServer {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The names and addresses in its SANs.
    pub names: Vec<String>,
    pub serial_hex: String,
    pub not_after_ns: i64,
}

/// An agent certificate as written by [`issue_agent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedAgent {
    pub agent_id: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub serial_hex: String,
    pub not_after_ns: i64,
    /// The serial of the certificate this one replaced (with `force`), now revoked.
    pub superseded_serial_hex: Option<String>,
}

/// An agent certificate issued for a key the agent holds, by [`issue_agent_for_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedForKey {
    pub agent_id: String,
    pub cert_pem: String,
    /// The CA certificate, for the agent to verify the aggregator with.
    pub ca_pem: String,
    pub serial_hex: String,
    pub not_after_ns: i64,
}

/// What [`revoke_agent`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeReport {
    pub agent_id: String,
    /// The newest certificate's serial.
    pub serial_hex: String,
    /// Every certificate of the agent revoked now (after renewals an agent has several that
    /// have not expired).
    pub serials_hex: Vec<String>,
    pub crl_path: PathBuf,
    /// The number of the CRL just written.
    pub crl_number: u64,
    /// The certificate was revoked before; the CRL was rewritten all the same.
    pub already_revoked: bool,
    /// How many certificates the CRL now lists.
    pub revoked_total: usize,
}

/// An agent certificate found in `agents/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IssuedCert {
    /// The id in the certificate's SAN URI: the identity the aggregator will see.
    pub agent_id: String,
    pub serial_hex: String,
    pub not_after_ns: i64,
    pub revoked: bool,
}

impl IssuedCert {
    fn of(identity: tls::Identity, revoked: &Revocations) -> IssuedCert {
        let serial_hex = identity.serial_hex();
        IssuedCert {
            agent_id: identity.agent_id,
            revoked: revoked.contains(&serial_hex),
            serial_hex,
            not_after_ns: identity.not_after_ns,
        }
    }

    /// `revoked`, `expired` or `valid` at `now_ns`, for lists.
    pub fn status(&self, now_ns: i64) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.not_after_ns <= now_ns {
            "expired"
        } else {
            "valid"
        }
    }
}

/// Creates the CA, the aggregator's certificate for `server_names` (plus `localhost`,
/// 127.0.0.1 and ::1), an empty CRL and `agents/`.
///
/// `validity` is the CA's; the server certificate gets [`DEFAULT_SERVER_VALIDITY`] or less.
/// An existing CA (`ca.pem` or `ca.key`) is replaced only with `force`; whatever material was
/// there is then moved to `replaced-<time>/`, since agent certificates of the old CA are
/// worthless under the new one.
pub fn init(
    dir: &Path,
    server_names: &[String],
    validity: Duration,
    force: bool,
) -> Result<InitReport, PkiError> {
    init_with_server_validity(
        dir,
        server_names,
        validity,
        validity.min(DEFAULT_SERVER_VALIDITY),
        force,
    )
}

/// [`init`] with an explicit validity for the server certificate.
pub fn init_with_server_validity(
    dir: &Path,
    server_names: &[String],
    ca_validity: Duration,
    server_validity: Duration,
    force: bool,
) -> Result<InitReport, PkiError> {
    let layout = Layout::new(dir);
    let now = SystemTime::now();
    // Validate everything before touching the directory.
    let server = certs::server_sans(server_names)?;
    let ca_until = after(now, ca_validity)?;
    create_dir(dir, DIR_MODE)?;
    let _lock = DirLock::acquire(dir)?;
    if !force {
        for path in [layout.ca_cert(), layout.ca_key()] {
            if path.exists() {
                return Err(PkiError::CaExists { path });
            }
        }
    }
    // Mint before moving anything aside, so a failure leaves the old material in place.
    let (minted, ca) = certs::new_ca(backdated(now), ca_until)?;
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let replaced = files::archive(dir, &layout.material(), now_secs)?;
    write_atomic(&layout.ca_key(), minted.key_pem.as_bytes(), KEY_MODE)?;
    write_atomic(&layout.ca_cert(), minted.cert_pem.as_bytes(), PUBLIC_MODE)?;
    let server = write_server(&layout, &ca, server, server_validity, now)?;
    create_dir(&layout.agents_dir(), DIR_MODE)?;
    Revocations::default().commit(&layout, &ca, now)?;
    Ok(InitReport {
        dir: dir.to_owned(),
        ca_cert: layout.ca_cert(),
        ca_key: layout.ca_key(),
        ca_serial_hex: minted.serial_hex,
        ca_not_after_ns: minted.not_after_ns,
        server,
        crl: layout.crl(),
        revocations: layout.revocations(),
        agents_dir: layout.agents_dir(),
        replaced,
    })
}

/// Issues a new certificate for the aggregator under the existing CA, e.g. before the old one
/// expires or to add a name. Agents keep working: they trust the CA, not the certificate.
pub fn issue_server(
    dir: &Path,
    server_names: &[String],
    validity: Duration,
    force: bool,
) -> Result<IssuedServer, PkiError> {
    let layout = Layout::new(dir);
    let server = certs::server_sans(server_names)?;
    let (_lock, ca) = lock_and_load(&layout)?;
    if !force {
        for path in [layout.server_cert(), layout.server_key()] {
            if path.exists() {
                return Err(PkiError::ServerExists { path });
            }
        }
    }
    write_server(&layout, &ca, server, validity, SystemTime::now())
}

/// Issues the certificate of agent `agent_id`, valid from now (less [`BACKDATE`]) for
/// `validity`, but not beyond the CA's own expiry.
///
/// An existing certificate for the id is replaced only with `force`, and the replaced one is
/// then revoked (reason [`SUPERSEDED`]): otherwise it would stay valid while no listing could
/// show it any more.
pub fn issue_agent(
    dir: &Path,
    agent_id: &str,
    validity: Duration,
    force: bool,
) -> Result<IssuedAgent, PkiError> {
    let now = SystemTime::now();
    let until = after(now, validity)?;
    issue_agent_inner(dir, agent_id, backdated(now), Until::CappedAt(until), force)
}

/// [`issue_agent`] with an exact validity period, not capped by the CA's; tests use it to mint
/// expired or not-yet-valid certificates.
pub fn issue_agent_with_validity(
    dir: &Path,
    agent_id: &str,
    not_before: SystemTime,
    not_after: SystemTime,
    force: bool,
) -> Result<IssuedAgent, PkiError> {
    issue_agent_inner(dir, agent_id, not_before, Until::Exactly(not_after), force)
}

/// Revokes the certificate in `agents/<id>.pem`: records it in `revoked.json` and rewrites
/// `crl.pem` with a higher CRL number. Revoking twice keeps one record and still rewrites the
/// CRL.
///
/// `reason` is free text; the RFC 5280 names (`key-compromise`, `superseded`,
/// `cessation-of-operation`, `affiliation-changed`, `privilege-withdrawn`, `ca-compromise`)
/// also set the CRL's reason code.
pub fn revoke_agent(dir: &Path, agent_id: &str, reason: &str) -> Result<RevokeReport, PkiError> {
    check_agent_id(agent_id)?;
    let layout = Layout::new(dir);
    let (_lock, ca) = lock_and_load(&layout)?;
    let cert_path = layout.agent_cert(agent_id);
    let serials: Vec<String> = cert_identities(&cert_path)?
        .iter()
        .map(tls::Identity::serial_hex)
        .collect();
    let Some(serial_hex) = serials.first().cloned() else {
        return Err(PkiError::NoSuchAgent {
            agent_id: agent_id.to_owned(),
            path: cert_path,
        });
    };
    let now = SystemTime::now();
    let mut list = Revocations::load(&layout.revocations())?;
    let mut added = false;
    for serial in &serials {
        added |= list.add(Revocation {
            serial_hex: serial.clone(),
            agent_id: agent_id.to_owned(),
            revoked_ns: to_ns(now),
            reason: reason.to_owned(),
        });
    }
    list.commit(&layout, &ca, now)?;
    Ok(RevokeReport {
        agent_id: agent_id.to_owned(),
        serial_hex,
        serials_hex: serials,
        crl_path: layout.crl(),
        crl_number: list.crl_number,
        already_revoked: !added,
        revoked_total: list.revoked.len(),
    })
}

/// Issues a certificate for agent `agent_id` and the key of its signing request (enrollment,
/// renewal), valid from now for `validity`, but not beyond the CA's expiry; backdated by
/// [`BACKDATE`] or a tenth of `validity`, whichever is shorter. Agents renew two thirds into a
/// certificate's lifetime counted from its start: a whole hour's backdate on a certificate of
/// a few minutes would put that point in the past, and the agent would renew again at once,
/// over and over.
///
/// Under the directory's lock: signs, then calls `commit` (the caller records the enrollment
/// in its store; an `Err` stops here and nothing is written), then adds the certificate to
/// `agents/<id>.pem`, newest first, dropping the certificates there that expired or were
/// revoked. Older certificates not expired stay, so that [`revoke_agent`] revokes them too.
pub fn issue_agent_for_key<E>(
    dir: &Path,
    agent_id: &str,
    key: &impl rcgen::PublicKeyData,
    validity: Duration,
    commit: impl FnOnce(&IssuedForKey) -> Result<(), E>,
) -> Result<Result<IssuedForKey, E>, PkiError> {
    check_agent_id(agent_id)?;
    let layout = Layout::new(dir);
    let now = SystemTime::now();
    let until = after(now, validity)?;
    let (_lock, ca) = lock_and_load(&layout)?;
    let not_after = until.min(SystemTime::from(ca.not_after));
    let backdate = BACKDATE.min(validity / 10);
    let not_before = now.checked_sub(backdate).unwrap_or(now);
    let minted = certs::agent_for_key(&ca, agent_id, key, not_before, not_after)?;
    let ca_path = layout.ca_cert();
    let ca_pem = read_optional(&ca_path)?.ok_or(PkiError::NotInitialised { path: ca_path })?;
    let issued = IssuedForKey {
        agent_id: agent_id.to_owned(),
        cert_pem: minted.cert_pem,
        ca_pem,
        serial_hex: minted.serial_hex,
        not_after_ns: minted.not_after_ns,
    };
    if let Err(e) = commit(&issued) {
        return Ok(Err(e));
    }
    let cert_path = layout.agent_cert(agent_id);
    let revoked = Revocations::load(&layout.revocations())?;
    let now_ns = to_ns(now);
    let mut bundle = issued.cert_pem.clone();
    if let Some(pem) = read_optional(&cert_path)? {
        // An unreadable old file is replaced, as `issue-agent --force` does.
        let kept = certs::pem_certificates(&cert_path, &pem).unwrap_or_default();
        for der in kept {
            let Ok(identity) = tls::identity_from_cert(&der) else {
                continue;
            };
            if identity.not_after_ns > now_ns && !revoked.contains(&identity.serial_hex()) {
                bundle.push_str(&pem_of(&der));
            }
        }
    }
    create_dir(&layout.agents_dir(), DIR_MODE)?;
    write_atomic(&cert_path, bundle.as_bytes(), PUBLIC_MODE)?;
    Ok(Ok(issued))
}

/// Every agent certificate in `agents/`, by agent id and newest first, each flagged if revoked:
/// after renewals, an agent has several.
pub fn agent_certificates(dir: &Path) -> Result<Vec<IssuedCert>, PkiError> {
    let layout = Layout::new(dir);
    let revoked = Revocations::load(&layout.revocations())?;
    let mut out = Vec::new();
    for path in agent_files(&layout)? {
        for identity in cert_identities(&path)? {
            out.push(IssuedCert::of(identity, &revoked));
        }
    }
    out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    Ok(out)
}

/// The certificates of one agent, newest first, each flagged if revoked; none when it has
/// no file.
pub fn certificates_of(dir: &Path, agent_id: &str) -> Result<Vec<IssuedCert>, PkiError> {
    check_agent_id(agent_id)?;
    let layout = Layout::new(dir);
    let revoked = Revocations::load(&layout.revocations())?;
    Ok(cert_identities(&layout.agent_cert(agent_id))?
        .into_iter()
        .map(|identity| IssuedCert::of(identity, &revoked))
        .collect())
}

/// The `.pem` files in `agents/` (none when it does not exist).
fn agent_files(layout: &Layout) -> Result<Vec<PathBuf>, PkiError> {
    let agents_dir = layout.agents_dir();
    let entries = match fs::read_dir(&agents_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PkiError::io(&agents_dir, "list")(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(PkiError::io(&agents_dir, "list"))?.path();
        if path.extension().is_some_and(|ext| ext == "pem") {
            out.push(path);
        }
    }
    Ok(out)
}

fn pem_of(der: &rustls_pki_types::CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The agent certificates in `agents/`, sorted by agent id, each flagged if revoked. A
/// directory without `agents/` has none. Fleet status uses it to show agents never seen.
///
/// Reads only, without the lock, so it works for a user that may not write the directory;
/// atomic replacement means it never sees half a file.
pub fn issued_agents(dir: &Path) -> Result<Vec<IssuedCert>, PkiError> {
    let layout = Layout::new(dir);
    let revoked = Revocations::load(&layout.revocations())?;
    let mut out = Vec::new();
    for path in agent_files(&layout)? {
        // Invariant: the entry was just listed; a concurrent removal reads as absent.
        let Some(identity) = cert_identity(&path)? else {
            continue;
        };
        out.push(IssuedCert::of(identity, &revoked));
    }
    out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    Ok(out)
}

/// When a certificate issued with [`issue_agent_inner`] ends.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// At this time or at the CA's expiry, whichever comes first.
    CappedAt(SystemTime),
    /// At exactly this time.
    Exactly(SystemTime),
}

fn issue_agent_inner(
    dir: &Path,
    agent_id: &str,
    not_before: SystemTime,
    until: Until,
    force: bool,
) -> Result<IssuedAgent, PkiError> {
    check_agent_id(agent_id)?;
    let layout = Layout::new(dir);
    let (_lock, ca) = lock_and_load(&layout)?;
    let not_after = match until {
        Until::Exactly(t) => t,
        Until::CappedAt(t) => t.min(SystemTime::from(ca.not_after)),
    };
    let cert_path = layout.agent_cert(agent_id);
    let key_path = layout.agent_key(agent_id);
    if !force {
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(PkiError::AgentExists {
                    agent_id: agent_id.to_owned(),
                    path: path.clone(),
                });
            }
        }
    }
    // Mint first: a bad validity must not revoke the certificate it would have replaced.
    let minted = certs::new_agent(&ca, agent_id, not_before, not_after)?;
    create_dir(&layout.agents_dir(), DIR_MODE)?;
    // Revoke the replaced certificate before overwriting it: after a crash in between, the
    // old file is still there, already revoked, and a rerun simply replaces it. An unreadable
    // old file cannot be revoked and is just replaced.
    // After renewals the file holds several certificates: every one is superseded.
    let superseded: Vec<String> = cert_identities(&cert_path)
        .unwrap_or_default()
        .iter()
        .map(tls::Identity::serial_hex)
        .collect();
    if !superseded.is_empty() {
        let now = SystemTime::now();
        let mut list = Revocations::load(&layout.revocations())?;
        for serial_hex in &superseded {
            list.add(Revocation {
                serial_hex: serial_hex.clone(),
                agent_id: agent_id.to_owned(),
                revoked_ns: to_ns(now),
                reason: SUPERSEDED.to_owned(),
            });
        }
        list.commit(&layout, &ca, now)?;
    }
    let superseded = superseded.into_iter().next();
    write_key_atomic(&key_path, minted.key_pem.as_bytes())?;
    write_atomic(&cert_path, minted.cert_pem.as_bytes(), PUBLIC_MODE)?;
    Ok(IssuedAgent {
        agent_id: agent_id.to_owned(),
        cert_path,
        key_path,
        serial_hex: minted.serial_hex,
        not_after_ns: minted.not_after_ns,
        superseded_serial_hex: superseded,
    })
}

fn write_server(
    layout: &Layout,
    ca: &Ca,
    (names, sans): (Vec<String>, Vec<rcgen::SanType>),
    validity: Duration,
    now: SystemTime,
) -> Result<IssuedServer, PkiError> {
    let until = after(now, validity)?.min(SystemTime::from(ca.not_after));
    let common_name = names.first().map_or("localhost", String::as_str);
    let minted = certs::new_server(ca, sans, common_name, backdated(now), until)?;
    write_key_atomic(&layout.server_key(), minted.key_pem.as_bytes())?;
    write_atomic(
        &layout.server_cert(),
        minted.cert_pem.as_bytes(),
        PUBLIC_MODE,
    )?;
    Ok(IssuedServer {
        cert_path: layout.server_cert(),
        key_path: layout.server_key(),
        names,
        serial_hex: minted.serial_hex,
        not_after_ns: minted.not_after_ns,
    })
}

fn check_agent_id(agent_id: &str) -> Result<(), PkiError> {
    if tls::is_valid_agent_id(agent_id) {
        Ok(())
    } else {
        Err(PkiError::InvalidAgentId(agent_id.to_owned()))
    }
}

/// Locks an initialised directory and loads its CA.
fn lock_and_load(layout: &Layout) -> Result<(DirLock, Ca), PkiError> {
    if !layout.ca_cert().exists() {
        return Err(PkiError::NotInitialised {
            path: layout.ca_cert(),
        });
    }
    let lock = DirLock::acquire(layout.dir())?;
    let ca = certs::load_ca(layout)?;
    Ok((lock, ca))
}

/// The identity in an agent certificate file; `None` if the file does not exist.
fn cert_identity(path: &Path) -> Result<Option<tls::Identity>, PkiError> {
    let Some(pem) = read_optional(path)? else {
        return Ok(None);
    };
    let der = certs::pem_certificate(path, &pem)?;
    tls::identity_from_cert(&der)
        .map(Some)
        .map_err(|e| PkiError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// The identities of every certificate in an agent's file, newest first; none if the file
/// does not exist.
fn cert_identities(path: &Path) -> Result<Vec<tls::Identity>, PkiError> {
    let Some(pem) = read_optional(path)? else {
        return Ok(Vec::new());
    };
    certs::pem_certificates(path, &pem)?
        .iter()
        .map(|der| {
            tls::identity_from_cert(der).map_err(|e| PkiError::Unreadable {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
}

fn after(now: SystemTime, validity: Duration) -> Result<SystemTime, PkiError> {
    now.checked_add(validity)
        .ok_or_else(|| PkiError::Validity(format!("{} days is too long", validity.as_secs() / DAY)))
}

fn backdated(now: SystemTime) -> SystemTime {
    now.checked_sub(BACKDATE).unwrap_or(now)
}

#[cfg(test)]
mod tests;
