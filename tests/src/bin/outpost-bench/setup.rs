//! One run's world, built before the clock starts: a temporary directory with a PKI made by the
//! aggregator's library, the aggregator's configuration, and per agent a certificate, a data
//! directory and a spool already holding its share of the events.
//!
//! ```text
//! <tmp>/tls/                  CA, server certificate, agents/<id>.pem .key
//! <tmp>/aggregator/           aggregator.db, listen.addr, log/, stderr
//! <tmp>/aggregator.toml
//! <tmp>/agents/<id>/          spool.db, log/, stderr, agent.toml
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use outpost_agent::collectors::Source;
use outpost_agent::collectors::synthetic::{self, Synthetic};
use outpost_agent::spool::{Class, Spool, SpoolConfig, Submission, SubmitOutcome};
use outpost_aggregator::pki;
use outpost_common::time::now_ns;
use tempfile::TempDir;

/// Approximate encoded size of each event: a log-like record.
pub const EVENT_BYTES: usize = 200;

/// Events per spool submission, so each becomes one batch of the agent's default size.
const SUBMISSION_EVENTS: u64 = 1000;

/// Submissions per spool transaction while pre-filling; bounds memory for a large single spool.
const SUBMISSIONS_PER_APPEND: usize = 20;

/// The spool cap, the agent's default; pre-filling fails clearly if an agent's share exceeds it.
const SPOOL_MAX_BYTES: u64 = 1 << 30;

/// The aggregator's certificate name, which the agents verify.
const SERVER_NAME: &str = "localhost";

/// The temporary directory and everything in it.
#[derive(Debug)]
pub struct World {
    pub dir: TempDir,
    pub tls: PathBuf,
    pub aggregator: AggregatorSetup,
    pub agents: Vec<AgentSetup>,
}

#[derive(Debug)]
pub struct AggregatorSetup {
    pub data_dir: PathBuf,
    pub config: PathBuf,
}

impl AggregatorSetup {
    /// Its configuration as the aggregator reads it, which names the store and `listen.addr`.
    pub fn load(&self) -> anyhow::Result<outpost_aggregator::config::Validated> {
        outpost_aggregator::config::load(&self.config)
            .with_context(|| format!("{}: invalid", self.config.display()))
    }
    pub fn stderr(&self) -> PathBuf {
        self.data_dir.join("stderr")
    }
}

#[derive(Debug)]
pub struct AgentSetup {
    pub id: String,
    pub data_dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Events pre-filled into its spool.
    pub events: u64,
    /// Their encoded payload bytes.
    pub payload_bytes: u64,
}

impl AgentSetup {
    pub fn config(&self) -> PathBuf {
        self.data_dir.join("agent.toml")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("log")
    }
    pub fn stderr(&self) -> PathBuf {
        self.data_dir.join("stderr")
    }
}

/// A TOML basic string holding `path`. JSON string escapes are a subset of TOML's, so serde_json
/// (a dependency already) quotes correctly without pulling in a TOML writer.
fn quote(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}

/// Splits `total` events over `agents` as evenly as possible (the first ones take the rest).
pub fn shares(total: u64, agents: usize) -> Vec<u64> {
    let n = agents.max(1) as u64;
    (0..n)
        .map(|i| total / n + u64::from(i < total % n))
        .collect()
}

impl World {
    /// Makes the directory under `parent` (the system's temporary directory if `None`), the PKI,
    /// the aggregator's configuration and the agents' pre-filled spools.
    pub fn build(parent: Option<&Path>, agents: usize, events_total: u64) -> anyhow::Result<World> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("outpost-bench-");
        let dir = match parent {
            Some(p) => builder.tempdir_in(p),
            None => builder.tempdir(),
        }
        .context("cannot create a temporary directory")?;
        let root = dir.path();
        let tls = root.join("tls");
        pki::init(
            &tls,
            &[SERVER_NAME.to_owned()],
            pki::DEFAULT_CA_VALIDITY,
            false,
        )
        .context("cannot create the PKI")?;
        let aggregator = AggregatorSetup {
            data_dir: root.join("aggregator"),
            config: root.join("aggregator.toml"),
        };
        write_aggregator_config(&aggregator, &tls)?;
        let mut list = Vec::with_capacity(agents);
        for (i, events) in shares(events_total, agents).into_iter().enumerate() {
            let id = format!("bench-{i:03}");
            let issued = pki::issue_agent(&tls, &id, pki::DEFAULT_AGENT_VALIDITY, false)
                .with_context(|| format!("cannot issue a certificate for {id}"))?;
            let data_dir = root.join("agents").join(&id);
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("{}: cannot create", data_dir.display()))?;
            let payload_bytes = prefill(&data_dir.join("spool.db"), events)
                .with_context(|| format!("cannot pre-fill the spool of {id}"))?;
            list.push(AgentSetup {
                id,
                data_dir,
                cert: issued.cert_path,
                key: issued.key_path,
                events,
                payload_bytes,
            });
        }
        Ok(World {
            dir,
            tls,
            aggregator,
            agents: list,
        })
    }

    /// Writes each agent's configuration, pointing at the aggregator's bound `port` on loopback.
    ///
    /// Shipping is unpaced (`catchup_events_per_sec = 0`) so the agents send as fast as the
    /// aggregator acknowledges, and the synthetic source, host metrics and file integrity are
    /// off: the spool holds all there is. (With file integrity on, every agent hashed the host's
    /// `/etc` for its first baseline during the run, and its records were counted as stored
    /// logs.)
    pub fn write_agent_configs(&self, port: u16) -> anyhow::Result<()> {
        for agent in &self.agents {
            let text = format!(
                "data_dir = {data}\n\n\
                 [aggregator]\nendpoint = \"quic://127.0.0.1:{port}\"\nserver_name = \"{SERVER_NAME}\"\n\
                 ca = {ca}\ncert = {cert}\nkey = {key}\n\n\
                 [ship]\ncatchup_events_per_sec = 0\n\n\
                 [synthetic]\nenabled = false\n\n\
                 [metrics]\nenabled = false\n\n\
                 [fim]\nenabled = false\n\n\
                 [log]\nlevel = \"info\"\ndir = {log}\n",
                data = quote(&agent.data_dir),
                ca = quote(&self.tls.join("ca.pem")),
                cert = quote(&agent.cert),
                key = quote(&agent.key),
                log = quote(&agent.log_dir()),
            );
            let path = agent.config();
            std::fs::write(&path, text)
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Ok(())
    }

    pub fn events(&self) -> u64 {
        self.agents.iter().map(|a| a.events).sum()
    }

    pub fn payload_bytes(&self) -> u64 {
        self.agents.iter().map(|a| a.payload_bytes).sum()
    }
}

/// The aggregator runs with its shipped defaults, except where it listens, keeps data and logs.
fn write_aggregator_config(a: &AggregatorSetup, tls: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("{}: cannot create", a.data_dir.display()))?;
    let text = format!(
        "data_dir = {data}\nlisten = \"127.0.0.1:0\"\n\n[tls]\ndir = {tls}\n\n\
         [log]\nlevel = \"info\"\ndir = {log}\n",
        data = quote(&a.data_dir),
        tls = quote(tls),
        log = quote(&a.data_dir.join("log")),
    );
    std::fs::write(&a.config, text).with_context(|| format!("{}: cannot write", a.config.display()))
}

/// Writes events `0..events` (about [`EVENT_BYTES`] each) into a new spool at `path`, in
/// submissions of [`SUBMISSION_EVENTS`] Wait-class events, and returns their payload bytes.
pub fn prefill(path: &Path, events: u64) -> anyhow::Result<u64> {
    let source = Synthetic::new(synthetic::Config {
        size: EVENT_BYTES,
        kind: synthetic::Kind::Log,
        ..synthetic::Config::default()
    })?;
    let mut spool = Spool::open(SpoolConfig::new(path, SPOOL_MAX_BYTES))?;
    let mut next = 0;
    while next < events {
        let mut subs = Vec::with_capacity(SUBMISSIONS_PER_APPEND);
        let mut submitted = 0;
        while subs.len() < SUBMISSIONS_PER_APPEND && next < events {
            let n = SUBMISSION_EVENTS.min(events - next);
            let batch = (next..next + n).map(|i| source.event(i)).collect();
            subs.push(Submission::new(Class::Wait, batch));
            next += n;
            submitted += n;
        }
        let committed: u64 = spool
            .append(subs, now_ns())?
            .into_iter()
            .map(|o| match o {
                SubmitOutcome::Committed { events } => events,
                SubmitOutcome::Full | SubmitOutcome::Rejected { .. } => 0,
            })
            .sum();
        ensure!(
            committed == submitted,
            "{}: only {committed} of {submitted} events fit (the spool holds at most {} MiB): \
             spread the events over more agents",
            path.display(),
            SPOOL_MAX_BYTES >> 20
        );
    }
    let stats = spool.stats();
    ensure!(
        stats.events == events,
        "{}: the spool holds {} events, {events} were written",
        path.display(),
        stats.events
    );
    Ok(stats.payload_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        assert_eq!(shares(10, 3), vec![4, 3, 3]);
        assert_eq!(shares(1_000_000, 100).iter().sum::<u64>(), 1_000_000);
        assert_eq!(shares(5, 1), vec![5]);
    }

    #[test]
    fn prefill_writes_numbered_batches_of_a_thousand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let bytes = prefill(&path, 2500).unwrap();
        let mut spool = Spool::open(SpoolConfig::new(&path, SPOOL_MAX_BYTES)).unwrap();
        let batches = spool.batches_after(0, 100).unwrap();
        let sizes: Vec<u32> = batches.iter().map(|b| b.events).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
        let total: usize = batches.iter().map(|b| b.payload.len()).sum();
        assert_eq!(total as u64, bytes);
        let per_event = bytes as f64 / 2500.0;
        assert!((150.0..=260.0).contains(&per_event), "{per_event}");
        let last = batches[2].events().unwrap();
        let outpost_common::event::Event::Log(l) = &last[499] else {
            panic!("log expected")
        };
        assert!(l.body.contains("000000002499"), "{}", l.body);
    }

    #[test]
    fn configs_name_the_port_the_pki_and_no_pacing() {
        let world = World::build(None, 2, 10).unwrap();
        world.write_agent_configs(4567).unwrap();
        assert_eq!(world.events(), 10);
        let agent = outpost_agent::config::load(&world.agents[1].config()).unwrap();
        assert_eq!(agent.aggregators(), "quic://127.0.0.1:4567");
        assert_eq!(agent.targets[0].server_name, SERVER_NAME);
        assert_eq!(agent.config.ship.catchup_events_per_sec, 0);
        assert!(!agent.config.synthetic.enabled);
        assert_eq!(
            agent.spool_path(),
            world.agents[1].data_dir.join("spool.db")
        );
        outpost_agent::config::check_tls_files(&agent).unwrap();
        let agg = world.aggregator.load().unwrap();
        assert_eq!(agg.config.data_dir, world.aggregator.data_dir);
        assert_eq!(agg.listen.port(), 0);
        outpost_aggregator::config::check_tls_files(&agg).unwrap();
    }
}
