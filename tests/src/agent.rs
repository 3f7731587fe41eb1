//! The agent under test, and read-only views of its spool.

use std::ffi::OsString;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use outpost_common::event::DropCounters;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::env::{AgentCert, Env, binary};
use crate::process::{Process, write_file};
use crate::toml_string;

/// The kind of synthetic events, and so the store table they land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Log records (`logs`); the source waits when the spool is full.
    Log,
    /// Metric points (`metrics`); the oldest are evicted when the spool is full.
    Metric,
}

impl Kind {
    fn config_name(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::Metric => "metric",
        }
    }
}

/// The `[synthetic]` section.
#[derive(Debug, Clone, Copy)]
pub struct Synthetic {
    pub kind: Kind,
    /// Events in total, across restarts.
    pub total: u64,
    /// Events per second; 0 for as fast as the spool takes them.
    pub rate: u32,
    /// Events per spool submission.
    pub chunk: usize,
}

impl Synthetic {
    /// `total` log events as fast as possible.
    pub fn logs(total: u64) -> Self {
        Synthetic {
            kind: Kind::Log,
            total,
            rate: 0,
            chunk: 500,
        }
    }

    /// `total` metric points as fast as possible.
    pub fn metrics(total: u64) -> Self {
        Synthetic {
            kind: Kind::Metric,
            ..Synthetic::logs(total)
        }
    }

    pub fn rate(self, rate: u32) -> Self {
        Synthetic { rate, ..self }
    }
}

/// What the test wants different from the test defaults.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    pub synthetic: Option<Synthetic>,
    /// `spool.max_bytes`, e.g. "256KiB".
    pub spool_max_bytes: Option<String>,
    /// `spool.max_batch_bytes`, e.g. "64KiB".
    pub max_batch_bytes: Option<String>,
    /// Host metrics every this many seconds; `None` turns them off so that tests which count
    /// events or drops exactly see only the synthetic source.
    pub host_metrics_every_secs: Option<u32>,
    /// The data directory (the spool's), instead of one in the test's directory.
    pub data_dir: Option<PathBuf>,
    /// `spool.reserve_bytes`, e.g. "1MiB".
    pub reserve_bytes: Option<String>,
    /// `spool.compression = "none"`: batches take the bytes of their events, so that a test
    /// which fills the spool or the disk knows when it will.
    pub uncompressed: bool,
    /// The body of the `[fim]` section (without its header; `[[fim.paths]]` tables may follow);
    /// `None` turns file integrity off, so that tests which count events see only their sources.
    pub fim_toml: Option<String>,
    /// More of `agent.toml`, appended as written (sources such as `[[logs.files]]`).
    pub extra_toml: String,
}

impl AgentOptions {
    pub fn synthetic(synthetic: Synthetic) -> Self {
        AgentOptions {
            synthetic: Some(synthetic),
            ..AgentOptions::default()
        }
    }
}

/// A running (or stopped) `outpost-agent run`; dereferences to its [`Process`] (`kill9`,
/// `terminate`, `restart`, `log`).
#[derive(Debug)]
pub struct Agent {
    process: Process,
    agent_id: String,
    data_dir: PathBuf,
    config: PathBuf,
}

/// An agent host that is not enrolled yet: its configuration names where the key, the
/// certificate and the CA go (in the test's directory) but no aggregator, and none of those
/// files exist. Made by [`Env::unenrolled_agent`]; `outpost-agent enroll` fills it in.
#[derive(Debug, Clone)]
pub struct UnenrolledAgent {
    /// The name of its files in the test's directory (`agent-<name>.toml`, …).
    pub name: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl UnenrolledAgent {
    pub(crate) fn write(env: &Env, name: &str, options: &AgentOptions) -> UnenrolledAgent {
        let tls = env.path().join(format!("agent-{name}-tls"));
        let (ca, cert, key) = (
            tls.join("ca.pem"),
            tls.join("agent.pem"),
            tls.join("agent.key"),
        );
        let aggregator = format!(
            "ca = {}\ncert = {}\nkey = {}\n",
            toml_string(&ca),
            toml_string(&cert),
            toml_string(&key)
        );
        let (config, data_dir) = write_config(env, name, &aggregator, options);
        UnenrolledAgent {
            name: name.to_owned(),
            config,
            data_dir,
            ca,
            cert,
            key,
        }
    }
}

/// Writes `agent-<name>.toml` with the test timings, the `[aggregator]` settings given (the
/// endpoint and TLS files) and `options`; returns its path and the data directory.
fn write_config(
    env: &Env,
    name: &str,
    aggregator: &str,
    options: &AgentOptions,
) -> (PathBuf, PathBuf) {
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| env.path().join(format!("agent-{name}")));
    let config = env.path().join(format!("agent-{name}.toml"));
    let mut spool = String::new();
    if let Some(b) = &options.spool_max_bytes {
        spool.push_str(&format!("max_bytes = \"{b}\"\n"));
    }
    if let Some(b) = &options.max_batch_bytes {
        spool.push_str(&format!("max_batch_bytes = \"{b}\"\n"));
    }
    if let Some(b) = &options.reserve_bytes {
        spool.push_str(&format!("reserve_bytes = \"{b}\"\n"));
    }
    if options.uncompressed {
        spool.push_str("compression = \"none\"\n");
    }
    let synthetic = options.synthetic.map_or_else(String::new, |s| {
        format!(
            "[synthetic]\nenabled = true\nkind = \"{}\"\ntotal = {}\nrate = {}\nchunk = {}\n",
            s.kind.config_name(),
            s.total,
            s.rate,
            s.chunk
        )
    });
    // A status snapshot is spooled only at start-up (an interval's first tick), so tests can
    // count them exactly; heartbeats carry the live status every second. A short idle
    // timeout lets the agent notice an aggregator killed with SIGKILL within seconds.
    let metrics = match options.host_metrics_every_secs {
        Some(secs) => format!("[metrics]\ninterval = \"{secs}s\"\n\n"),
        None => "[metrics]\nenabled = false\n\n".to_owned(),
    };
    let fim = match &options.fim_toml {
        Some(body) => format!("[fim]\n{body}\n"),
        None => "[fim]\nenabled = false\n\n".to_owned(),
    };
    let text = format!(
        "data_dir = {data}\n\n\
         [aggregator]\n{aggregator}connect_timeout = \"5s\"\n\
         keep_alive = \"1s\"\nidle_timeout = \"5s\"\n\n\
         [spool]\n{spool}\n\
         [ship]\nheartbeat_interval = \"1s\"\nreconnect_min = \"50ms\"\nreconnect_max = \"1s\"\n\
         catchup_events_per_sec = 0\n\n[status]\ninterval = \"1h\"\n\n\
         [log]\ndir = {logs}\n\n{metrics}{synthetic}\n{extra}\n{fim}",
        data = toml_string(&data_dir),
        logs = toml_string(&env.path().join(format!("agent-{name}-logs"))),
        extra = options.extra_toml,
    );
    write_file(&config, &text);
    (config, data_dir)
}

impl Agent {
    /// Starts an agent shipping to the aggregators on loopback `ports`: `endpoint` for one,
    /// `endpoints` for several.
    pub(crate) fn start(
        env: &Env,
        cert: &AgentCert,
        ports: &[u16],
        options: AgentOptions,
    ) -> Agent {
        let id = &cert.agent_id;
        let uris: Vec<String> = ports
            .iter()
            .map(|port| format!("\"quic://127.0.0.1:{port}\""))
            .collect();
        let endpoints = match uris.as_slice() {
            [one] => format!("endpoint = {one}"),
            all => format!("endpoints = [{}]", all.join(", ")),
        };
        let aggregator = format!(
            "{endpoints}\nserver_name = \"localhost\"\n\
             ca = {ca}\ncert = {cert}\nkey = {key}\n",
            ca = toml_string(&cert.ca),
            cert = toml_string(&cert.cert),
            key = toml_string(&cert.key),
        );
        let (config, data_dir) = write_config(env, id, &aggregator, &options);
        Agent::run(env, id, id, config, data_dir)
    }

    /// Starts `outpost-agent --config <config> run` as the process `agent-<name>`, with the
    /// configuration as it is.
    pub(crate) fn run(
        env: &Env,
        name: &str,
        agent_id: &str,
        config: PathBuf,
        data_dir: PathBuf,
    ) -> Agent {
        let args: Vec<OsString> = vec!["--config".into(), config.clone().into(), "run".into()];
        let process = env.spawn(&format!("agent-{name}"), &binary("outpost-agent"), &args);
        Agent {
            process,
            agent_id: agent_id.to_owned(),
            data_dir,
            config,
        }
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The spool database.
    pub fn spool_path(&self) -> PathBuf {
        self.data_dir.join("spool.db")
    }

    /// Bytes of the spool database and its write-ahead log on disk.
    pub fn spool_file_bytes(&self) -> u64 {
        ["spool.db", "spool.db-wal"]
            .iter()
            .filter_map(|name| std::fs::metadata(self.data_dir.join(name)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// The spool's state, read through a read-only connection; `Err` while it does not exist yet.
    pub fn spool(&self) -> Result<SpoolView, String> {
        SpoolView::read(&self.spool_path())
    }
}

impl Deref for Agent {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// The agent's spool as a read-only reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolView {
    /// Unacknowledged batches.
    pub batches: u64,
    /// Events in them.
    pub events: u64,
    /// The seq the next batch gets.
    pub next_seq: u64,
    /// Events the synthetic source has handed over so far (its checkpoint).
    pub produced: u64,
    pub drops: DropCounters,
}

impl SpoolView {
    fn read(path: &Path) -> Result<SpoolView, String> {
        let fail = |e: rusqlite::Error| format!("{}: {e}", path.display());
        if !path.exists() {
            return Err(format!("{} does not exist yet", path.display()));
        }
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        let (next_seq, drops) = conn
            .query_row(
                "SELECT next_seq, spool_full_evicted, spool_full_rejected, rejected_by_aggregator,
                        oversized, spool_write_failed, disk_full FROM spool WHERE id = 1",
                [],
                |r| {
                    let n = |i| r.get::<_, i64>(i).map(i64::cast_unsigned);
                    Ok((
                        n(0)?,
                        DropCounters {
                            spool_full_evicted: n(1)?,
                            spool_full_rejected: n(2)?,
                            rejected_by_aggregator: n(3)?,
                            oversized: n(4)?,
                            spool_write_failed: n(5)?,
                            disk_full: n(6)?,
                        },
                    ))
                },
            )
            .map_err(fail)?;
        let (batches, events) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(events), 0) FROM batches",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?.cast_unsigned(),
                        r.get::<_, i64>(1)?.cast_unsigned(),
                    ))
                },
            )
            .map_err(fail)?;
        let produced = conn
            .query_row(
                "SELECT value FROM checkpoints WHERE source = 'synthetic'",
                [],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map_err(fail)?
            .map_or(0, |v| {
                let mut b = [0u8; 8];
                let n = v.len().min(8);
                b[..n].copy_from_slice(&v[..n]);
                u64::from_le_bytes(b)
            });
        Ok(SpoolView {
            batches,
            events,
            next_seq,
            produced,
            drops,
        })
    }
}
