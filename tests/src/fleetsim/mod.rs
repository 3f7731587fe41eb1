//! The fleet simulator: many agents in one process against one real aggregator (or two), in the
//! scenarios operators size a deployment by, with a loss check at the end of each.
//!
//! Each simulated agent has its own certificate (issued by the aggregator's PKI code), its own
//! QUIC connection made and driven by the agent's own shipper, its own spool (in memory, with
//! the SQLite spool's delivery contract: see [`backlog`]) and a generator of a realistic mix
//! ([`host`]): this machine's default host metrics every 10 s, Poisson log lines, occasional
//! file-integrity changes, and the shipper's heartbeats.
//!
//! A run: start the aggregator (the real `outpost-aggregator` binary, defaults but for what the
//! scenario changes, with the default rule pack of its package evaluating every event), connect the agents over `ramp`, wait until every one is connected, let it
//! settle, then measure a window of `measure` during which the scenario does its thing; then
//! stop generating, wait until every spool is empty and check the store ([`check`]).
//!
//! Events can go to a ClickHouse server started for the run instead of the embedded store, and
//! the fleet can be spread over two aggregators sharing that ClickHouse database and a
//! PostgreSQL database for their state, as a cluster runs ([`SimConfig::aggregators`]); the
//! loss check then reads the one store both wrote.
//!
//! | scenario | what happens |
//! |---|---|
//! | steady | nothing: the fleet at its rates |
//! | storm | after the window the aggregator is killed (SIGKILL) under the connected fleet, stays down for `outage` while the spools fill, and restarts: every agent reconnects and catches up; the drain time runs from the restart until every batch made before it is acknowledged |
//! | bad-network | every datagram, both ways, through an impairment proxy ([`crate::impair`]): loss, delay with jitter (which reorders), duplication |
//! | slow-disk | the aggregator runs under strace, which delays each of its `fsync`/`fdatasync` calls by `fsync_delay` |
//! | churn | a share of the agents keep restarting: stop (as on SIGTERM), stay away 1-5 s, start again, run 5-20 s |
//! | revoke | halfway through the window, a share of the agents' certificates are revoked and the aggregator told (SIGHUP): their connections are closed and their reconnects refused |

pub mod backlog;
pub mod check;
pub mod fleet;
pub mod host;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use outpost_aggregator::store::clickhouse::{ClickHouseConfig, ClickHouseStore};
use rand::{Rng, SeedableRng};

use crate::clickhouse_server::ClickHouseServer;
use crate::impair::{ImpairProxy, Impairment, ProxyStats};
use crate::postgres_server::PostgresServer;
use crate::{Aggregator, AggregatorOptions, Env};
pub use check::LossCheck;
pub use fleet::{Fleet, FleetConfig, agent_id};
pub use host::Rates;

/// The default rule pack of the aggregator's package.
const RULE_PACK: [(&str, &str); 4] = [
    (
        "agent.toml",
        include_str!("../../../packaging/rules.d/agent.toml"),
    ),
    (
        "host.toml",
        include_str!("../../../packaging/rules.d/host.toml"),
    ),
    (
        "integrity.toml",
        include_str!("../../../packaging/rules.d/integrity.toml"),
    ),
    (
        "security.toml",
        include_str!("../../../packaging/rules.d/security.toml"),
    ),
];

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Steady,
    Storm,
    BadNetwork,
    SlowDisk,
    Churn,
    Revoke,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Steady,
        Scenario::Storm,
        Scenario::BadNetwork,
        Scenario::SlowDisk,
        Scenario::Churn,
        Scenario::Revoke,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Storm => "storm",
            Scenario::BadNetwork => "bad-network",
            Scenario::SlowDisk => "slow-disk",
            Scenario::Churn => "churn",
            Scenario::Revoke => "revoke",
        }
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|x| x.name()).collect();
                format!("unknown scenario `{s}`; one of: {}", names.join(", "))
            })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub scenario: Scenario,
    pub fleet: FleetConfig,
    /// The agents' first connections are spread over this long.
    pub ramp: Duration,
    /// Time between every agent being connected and the window.
    pub settle: Duration,
    /// The measured window.
    pub measure: Duration,
    /// storm: how long the aggregator stays down.
    pub outage: Duration,
    /// bad-network: what the proxy does to datagrams.
    pub impairment: Impairment,
    /// slow-disk: the delay added to each fsync.
    pub fsync_delay: Duration,
    /// churn: the share of agents that keep restarting.
    pub churn_fraction: f64,
    /// revoke: the share of agents whose certificate is revoked.
    pub revoke_fraction: f64,
    /// How long connecting every agent, and draining every spool, may take.
    pub deadline: Duration,
    /// Whether the aggregator evaluates the default rule pack (to measure without it).
    pub rules: bool,
    /// Events go to a ClickHouse server started for the run (`[store] backend = "clickhouse"`),
    /// state stays embedded; otherwise the embedded store holds both.
    pub clickhouse: bool,
    /// Aggregators the fleet is spread over: 1, or 2 as a cluster. A cluster's aggregators share
    /// one ClickHouse database (`clickhouse` must be set), as its nodes 1 and 2, and keep their
    /// state in one PostgreSQL database on a server started for the run; they present the same
    /// server certificate. Agent `i` prefers aggregator `i % 2` and lists the other second.
    /// Alerting is off in a cluster (the aggregator does not run it with state in PostgreSQL
    /// yet), so the rule pack is not evaluated there.
    pub aggregators: usize,
}

impl SimConfig {
    /// The defaults for `agents` agents in `scenario`.
    pub fn new(scenario: Scenario, agents: usize) -> SimConfig {
        SimConfig {
            scenario,
            fleet: FleetConfig {
                agents,
                rates: Rates::default(),
                agents_per_socket: 32,
                spool_cap_bytes: 64 << 20,
            },
            // Some 500 new connections a second at most, as a fleet's hosts booting would not
            // all start in the same second.
            ramp: Duration::from_millis((agents as u64 * 2).max(1000)),
            settle: Duration::from_secs(10),
            measure: Duration::from_secs(60),
            outage: Duration::from_secs(30),
            impairment: Impairment {
                loss: 0.05,
                duplicate: 0.01,
                delay: Duration::from_millis(50),
                jitter: Duration::from_millis(20),
            },
            fsync_delay: Duration::from_millis(20),
            churn_fraction: 0.2,
            revoke_fraction: 0.1,
            deadline: Duration::from_secs(600),
            rules: true,
            clickhouse: false,
            aggregators: 1,
        }
    }

    /// Checks the settings that only go together: a cluster needs the ClickHouse store, and
    /// runs the scenarios that do nothing to an aggregator.
    pub fn validate(&self) -> Result<(), String> {
        match self.aggregators {
            1 => Ok(()),
            2 if !self.clickhouse => Err(
                "two aggregators need the ClickHouse store (--store clickhouse): they share it, \
                 and their state goes to a PostgreSQL server the simulator starts; the embedded \
                 store belongs to one aggregator"
                    .to_owned(),
            ),
            2 if !matches!(self.scenario, Scenario::Steady | Scenario::Churn) => Err(format!(
                "the {} scenario acts on one aggregator; two aggregators run steady and churn",
                self.scenario
            )),
            2 => Ok(()),
            n => Err(format!("1 or 2 aggregators, not {n}")),
        }
    }
}

/// Acknowledgement latency over the window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

/// What the reconnect storm showed.
#[derive(Debug, Clone, Copy, Default)]
pub struct StormFigures {
    pub outage: Duration,
    /// Events the spools held when the aggregator came back.
    pub backlog_events: u64,
    /// From the restart until every agent was connected again.
    pub reconnected: Duration,
    /// From the restart until every batch made before it was acknowledged.
    pub drained: Duration,
    /// The aggregator's CPU over the drain, percent of one core.
    pub cpu_pct: f64,
}

/// One aggregator's own figures: from its counters over the window, and its process.
#[derive(Debug, Clone, Default)]
pub struct AggregatorFigures {
    /// Its name in the run's directory (`aggregator`, or `aggregator-1`, `aggregator-2`).
    pub name: String,
    /// Events and batches it committed in the window.
    pub events_committed: u64,
    pub batches_committed: u64,
    /// Its CPU in the window, percent of one core.
    pub cpu_pct: f64,
    /// Its peak resident set over the run.
    pub peak_rss: u64,
    /// Store commits in the window, and the seconds they took together.
    pub commits: u64,
    pub commit_secs: f64,
    /// Agent sessions it established over the run.
    pub sessions: u64,
}

impl AggregatorFigures {
    pub fn events_per_sec(&self, window: Duration) -> f64 {
        self.events_committed as f64 / window.as_secs_f64().max(1e-9)
    }

    /// Mean time of one of its store commits in the window.
    pub fn commit_mean(&self) -> Option<Duration> {
        (self.commits > 0).then(|| Duration::from_secs_f64(self.commit_secs / self.commits as f64))
    }
}

/// One run's figures. Where there are two aggregators, the aggregator figures are their sums
/// (peak RSS too; the mean commit is over all their commits), and [`SimReport::per_aggregator`]
/// has each one's.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub scenario: Scenario,
    pub agents: usize,
    /// From starting the first agent until every agent was connected.
    pub connected_in: Duration,
    pub window: Duration,
    /// Events and batches the aggregator committed in the window (its own counters).
    pub events_committed: u64,
    pub batches_committed: u64,
    pub ack: Latency,
    /// The aggregator's CPU in the window, percent of one core.
    pub aggregator_cpu_pct: f64,
    /// The aggregator's peak resident set over the run (the larger of its two lives in a storm).
    pub aggregator_peak_rss: u64,
    /// The simulator's own CPU in the window, percent of one core (it shares the machine).
    pub simulator_cpu_pct: f64,
    /// Agent sessions the aggregator established over the run.
    pub sessions: u64,
    /// Connections, handshakes and batches it refused, by reason, over the run.
    pub refused: BTreeMap<String, u64>,
    /// Mean time of one store commit in the window, from the aggregator's histogram.
    pub commit_mean: Option<Duration>,
    /// Scrapes of `/metrics` the aggregator did not answer (its API timed out): the figures
    /// taken from its counters are then missing (zero).
    pub unanswered_scrapes: u32,
    /// Times the alerting engine fell behind the live feed of committed batches and read back
    /// from the store, over the run, and the batches the feed dropped for it.
    pub rules_fell_behind: u64,
    pub feed_dropped_batches: u64,
    /// The aggregator's threads at the end of the window, by name (tokio's worker and blocking
    /// threads, the store writer, ...).
    pub aggregator_threads: BTreeMap<String, u64>,
    /// Each aggregator's figures, in the order of [`SimConfig::aggregators`].
    pub per_aggregator: Vec<AggregatorFigures>,
    /// The ClickHouse server's CPU in the window, percent of one core, when it ran.
    pub clickhouse_cpu_pct: Option<f64>,
    /// The PostgreSQL server's CPU in the window (the postmaster and every backend), percent
    /// of one core, when it ran.
    pub postgres_cpu_pct: Option<f64>,
    pub storm: Option<StormFigures>,
    pub network: Option<ProxyStats>,
    /// Agents whose certificate was revoked.
    pub revoked: usize,
    /// From stopping the generators until every spool of an agent not revoked was empty.
    pub final_drain: Duration,
    pub loss: LossCheck,
}

impl SimReport {
    pub fn events_per_sec(&self) -> f64 {
        self.events_committed as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn batches_per_sec(&self) -> f64 {
        self.batches_committed as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            f,
            "{} with {} agents{}: connected in {:.1} s; window {:.0} s",
            self.scenario,
            self.agents,
            match self.per_aggregator.len() {
                0 | 1 => String::new(),
                k => format!(" over {k} aggregators"),
            },
            self.connected_in.as_secs_f64(),
            self.window.as_secs_f64()
        )?;
        writeln!(
            f,
            "  committed {:.0} events/s in {:.0} batches/s; ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} acks)",
            self.events_per_sec(),
            self.batches_per_sec(),
            ms(self.ack.p50_us),
            ms(self.ack.p99_us),
            ms(self.ack.max_us),
            self.ack.count
        )?;
        let commit = |d: Option<Duration>| {
            d.map_or_else(
                || "-".to_owned(),
                |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
            )
        };
        writeln!(
            f,
            "  {} {:.0} % CPU, peak RSS {:.0} MiB; simulator {:.0} % CPU; mean commit {}",
            if self.per_aggregator.len() > 1 {
                "aggregators together"
            } else {
                "aggregator"
            },
            self.aggregator_cpu_pct,
            self.aggregator_peak_rss as f64 / 1048576.0,
            self.simulator_cpu_pct,
            commit(self.commit_mean)
        )?;
        if self.per_aggregator.len() > 1 {
            for a in &self.per_aggregator {
                writeln!(
                    f,
                    "    {}: committed {:.0} events/s, {:.0} % CPU, peak RSS {:.0} MiB, mean commit {}, {} sessions",
                    a.name,
                    a.events_per_sec(self.window),
                    a.cpu_pct,
                    a.peak_rss as f64 / 1048576.0,
                    commit(a.commit_mean()),
                    a.sessions
                )?;
            }
        }
        let servers: Vec<String> = [
            ("ClickHouse", self.clickhouse_cpu_pct),
            ("PostgreSQL", self.postgres_cpu_pct),
        ]
        .into_iter()
        .filter_map(|(name, cpu)| Some(format!("{name} server {:.0} % CPU", cpu?)))
        .collect();
        if !servers.is_empty() {
            writeln!(f, "  {}", servers.join("; "))?;
        }
        writeln!(
            f,
            "  sessions {}, refused {} {:?}; revoked {}",
            self.sessions,
            self.refused_total(),
            self.refused
                .iter()
                .filter(|(_, v)| **v > 0)
                .collect::<BTreeMap<_, _>>(),
            self.revoked
        )?;
        writeln!(
            f,
            "  alerting engine fell behind the feed {} times ({} batches dropped for it); aggregator threads {} {:?}",
            self.rules_fell_behind,
            self.feed_dropped_batches,
            self.aggregator_threads.values().sum::<u64>(),
            self.aggregator_threads
        )?;
        if self.unanswered_scrapes > 0 {
            writeln!(
                f,
                "  the aggregator did not answer {} scrapes of /metrics: the figures from its counters are missing",
                self.unanswered_scrapes
            )?;
        }
        if let Some(s) = &self.storm {
            writeln!(
                f,
                "  storm: down {:.0} s with {} events spooled; all reconnected {:.1} s and drained {:.1} s after the restart ({:.0} % CPU)",
                s.outage.as_secs_f64(),
                s.backlog_events,
                s.reconnected.as_secs_f64(),
                s.drained.as_secs_f64(),
                s.cpu_pct
            )?;
        }
        if let Some(n) = &self.network {
            for (way, d) in [
                ("to the aggregator", &n.to_upstream),
                ("to the agents", &n.to_client),
            ] {
                writeln!(
                    f,
                    "  network {way}: {} datagrams, {} lost, {} duplicated, {} reordered, {} overflowed",
                    d.received, d.dropped, d.duplicated, d.reordered, d.overflowed
                )?;
            }
        }
        writeln!(f, "  final drain {:.1} s", self.final_drain.as_secs_f64())?;
        write!(f, "  loss check {}", self.loss)
    }
}

/// The aggregator's counters, from its `/metrics`.
#[derive(Debug, Clone, Default)]
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Both scrapes' series, the values of those in both added.
    fn plus(&self, other: &Scrape) -> Scrape {
        let mut sum = self.0.clone();
        for (k, v) in &other.0 {
            *sum.entry(k.clone()).or_default() += v;
        }
        Scrape(sum)
    }

    /// The sum of every series of `name` (all label sets).
    fn sum(&self, name: &str) -> f64 {
        self.0
            .range(name.to_owned()..)
            .take_while(|(k, _)| k.starts_with(name))
            .filter(|(k, _)| k.len() == name.len() || k[name.len()..].starts_with('{'))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Every labelled series of `name`, by the value of its one label.
    fn by_label(&self, name: &str) -> BTreeMap<String, f64> {
        let prefix = format!("{name}{{");
        self.0
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, v)| {
                let label = k[prefix.len()..].split('"').nth(1)?;
                Some((label.to_owned(), *v))
            })
            .collect()
    }
}

/// [`scrape`], or nothing (and one more in `unanswered`) when the aggregator does not answer:
/// the run goes on to its loss check, and the report says its counters are missing.
async fn scrape_or_note(http: &reqwest::Client, api: &str, unanswered: &mut u32) -> Scrape {
    scrape(http, api).await.unwrap_or_else(|_| {
        *unanswered += 1;
        Scrape::default()
    })
}

/// [`scrape_or_note`] of every aggregator, in order.
async fn scrape_all(http: &reqwest::Client, apis: &[String], unanswered: &mut u32) -> Vec<Scrape> {
    let mut all = Vec::with_capacity(apis.len());
    for api in apis {
        all.push(scrape_or_note(http, api, unanswered).await);
    }
    all
}

/// The aggregator's `/metrics`, asked up to five times a second apart: a loaded aggregator may
/// answer a scrape late.
async fn scrape(http: &reqwest::Client, api: &str) -> anyhow::Result<Scrape> {
    let mut tries = 0;
    loop {
        match scrape_once(http, api).await {
            Ok(s) => return Ok(s),
            Err(e) if tries >= 4 => return Err(e),
            Err(_) => tries += 1,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn scrape_once(http: &reqwest::Client, api: &str) -> anyhow::Result<Scrape> {
    let text = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("GET /metrics")?
        .text()
        .await?;
    Ok(Scrape(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    ))
}

/// The process doing the aggregator's work: the aggregator itself, or its only child when it
/// runs under a wrapper.
fn aggregator_pid(aggregator: &Aggregator) -> anyhow::Result<i32> {
    let pid = i32::try_from(aggregator.pid().context("the aggregator is not running")?)?;
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    match children.split_whitespace().next() {
        Some(child) if aggregator_wrapped(aggregator) => Ok(child.parse()?),
        _ => Ok(pid),
    }
}

fn aggregator_wrapped(aggregator: &Aggregator) -> bool {
    aggregator
        .pid()
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .is_some_and(|c| c.trim() == "strace")
}

/// CPU clock ticks (user + system) of process `pid`.
fn ticks(pid: i32) -> anyhow::Result<u64> {
    let stat = procfs::process::Process::new(pid)?.stat()?;
    Ok(stat.utime + stat.stime)
}

fn all_ticks(pids: &[i32]) -> anyhow::Result<Vec<u64>> {
    pids.iter().map(|&pid| ticks(pid)).collect()
}

/// CPU clock ticks of process `root` and every process under it, with those of the children
/// already reaped (which the kernel adds to their parent's): a server's whole CPU, however
/// many processes it starts and ends (PostgreSQL's backends).
fn tree_ticks(root: i32) -> anyhow::Result<u64> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut own: HashMap<i32, u64> = HashMap::new();
    for process in procfs::process::all_processes()? {
        // Processes come and go while the list is read.
        let Ok(stat) = process.and_then(|p| p.stat()) else {
            continue;
        };
        let reaped = u64::try_from(stat.cutime + stat.cstime).unwrap_or(0);
        own.insert(stat.pid, stat.utime + stat.stime + reaped);
        children.entry(stat.ppid).or_default().push(stat.pid);
    }
    anyhow::ensure!(own.contains_key(&root), "process {root} is not running");
    let mut total = 0;
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        total += own.get(&pid).copied().unwrap_or(0);
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    Ok(total)
}

fn own_ticks() -> anyhow::Result<u64> {
    let stat = procfs::process::Process::myself()?.stat()?;
    Ok(stat.utime + stat.stime)
}

/// The threads of process `pid` by name, with a trailing number dropped ("store-writer", the
/// runtime's threads under the program's name, ...); empty when /proc cannot tell.
fn threads_by_name(pid: i32) -> BTreeMap<String, u64> {
    let mut names = BTreeMap::new();
    let Ok(tasks) = procfs::process::Process::new(pid).and_then(|p| p.tasks()) else {
        return names;
    };
    for task in tasks.flatten() {
        if let Ok(stat) = task.stat() {
            let name = stat.comm.trim_end_matches(|c: char| c.is_ascii_digit());
            *names.entry(name.to_owned()).or_default() += 1;
        }
    }
    names
}

/// Peak resident set (VmHWM) of process `pid`, in bytes.
fn peak_rss(pid: i32) -> anyhow::Result<u64> {
    let status = procfs::process::Process::new(pid)?.status()?;
    Ok(status.vmhwm.unwrap_or(0) * 1024)
}

fn cpu_pct(ticks: u64, over: Duration) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64 / over.as_secs_f64().max(1e-9) * 100.0
}

/// Waits until `cond` holds, checking every 100 ms, for at most `deadline`; `what` names it in
/// the error.
async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        if cond().await? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            bail!("{what}: not within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the aggregators have at least `n` agents connected together.
async fn connected(http: &reqwest::Client, apis: &[String], n: usize) -> anyhow::Result<bool> {
    let mut total = 0.0;
    for api in apis {
        // Polled until a deadline: a scrape that fails is asked again.
        match scrape_once(http, api).await {
            Ok(s) => total += s.sum("outpost_agents_connected"),
            Err(_) => return Ok(false),
        }
    }
    Ok(total >= n as f64)
}

/// Runs `config` in `env` (whose PKI the aggregator uses) and reports; blocking.
pub fn run(env: &Env, config: &SimConfig) -> anyhow::Result<SimReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the simulator's runtime")?;
    runtime.block_on(run_async(env, config))
}

async fn run_async(env: &Env, config: &SimConfig) -> anyhow::Result<SimReport> {
    let n = config.fleet.agents;
    if n == 0 {
        bail!("a fleet needs at least one agent");
    }
    config.validate().map_err(anyhow::Error::msg)?;
    let cluster = config.aggregators > 1;
    let template = Arc::new(tokio::task::block_in_place(crate::hostsim::host_template)?);
    let mut metric_names: Vec<String> = template
        .iter()
        .flat_map(|f| f.points.iter().map(|p| p.name.clone()))
        .collect();
    metric_names.sort();
    metric_names.dedup();
    let pki = env.pki_dir();
    tokio::task::block_in_place(|| fleet::issue_certificates(&pki, n))?;

    // The rule pack the aggregator's package installs, evaluated over every event (alerting is
    // off in a cluster: see `SimConfig::aggregators`).
    let rules = env.path().join("rules.d");
    std::fs::create_dir_all(&rules).with_context(|| format!("creating {}", rules.display()))?;
    for (name, text) in RULE_PACK.iter().filter(|_| config.rules && !cluster) {
        std::fs::write(rules.join(name), text)
            .with_context(|| format!("writing {}", rules.join(name).display()))?;
    }
    let mut options = AggregatorOptions {
        heartbeat_interval: Duration::from_secs(10),
        offline_after: Duration::from_secs(45),
        reload_interval: Duration::from_secs(5),
        ..AggregatorOptions::default()
    };
    if config.scenario == Scenario::SlowDisk {
        let delay = format!(
            "inject=fsync,fdatasync:delay_enter={}us",
            config.fsync_delay.as_micros()
        );
        options.wrapper = [
            "strace",
            "-f",
            "-qq",
            "--seccomp-bpf",
            "-o",
            "/dev/null",
            "-e",
            "trace=fsync,fdatasync",
            "-e",
            &delay,
        ]
        .iter()
        .map(OsString::from)
        .collect();
    }
    // The servers live as long as the run.
    let clickhouse = if config.clickhouse {
        let server = tokio::task::block_in_place(ClickHouseServer::start);
        let store = ClickHouseConfig {
            url: server.url(),
            database: server.fresh_database(),
            ..Default::default()
        };
        Some((server, store))
    } else {
        None
    };
    let postgres = if cluster {
        let server = tokio::task::block_in_place(PostgresServer::start);
        let url = tokio::task::block_in_place(|| server.fresh_database());
        Some((server, url))
    } else {
        None
    };
    // One after the other: the first makes the schemas in the shared databases.
    let mut aggregators = Vec::with_capacity(config.aggregators);
    for i in 0..config.aggregators {
        let mut o = options.clone();
        // A cluster's aggregators are ClickHouse nodes 1, 2, ...; the loss check reads as 0.
        let node = if cluster {
            o.name = format!("aggregator-{}", i + 1);
            u8::try_from(i + 1)?
        } else {
            0
        };
        o.extra = stores_toml(
            clickhouse.as_ref().map(|(_, store)| store),
            postgres.as_ref().map(|(_, url)| url.as_str()),
            node,
        );
        aggregators.push(tokio::task::block_in_place(|| env.start_aggregator_with(o)));
    }
    let mut apis: Vec<String> = aggregators
        .iter()
        .map(|a| tokio::task::block_in_place(|| a.api_url()))
        .collect();
    let http = reqwest::Client::new();

    let proxy = if config.scenario == Scenario::BadNetwork {
        Some(ImpairProxy::start(aggregators[0].addr(), config.impairment, 0x0de1_a7ed).await?)
    } else {
        None
    };
    let targets = proxy.as_ref().map_or_else(
        || aggregators.iter().map(Aggregator::addr).collect(),
        |p| vec![p.local_addr()],
    );
    let fleet = Fleet::new(&config.fleet, &pki, template, targets)?;

    // Connect the fleet.
    let started = Instant::now();
    let step = config.ramp / u32::try_from(n).unwrap_or(u32::MAX);
    for i in 0..n {
        fleet.start(i);
        tokio::time::sleep_until((started + step * u32::try_from(i).unwrap_or(0)).into()).await;
    }
    wait_until("every agent connected", config.deadline, || {
        connected(&http, &apis, n)
    })
    .await?;
    let connected_in = started.elapsed();
    tokio::time::sleep(config.settle).await;

    // The window.
    let mut unanswered = 0;
    let mut pids = aggregators
        .iter()
        .map(aggregator_pid)
        .collect::<anyhow::Result<Vec<i32>>>()?;
    let servers = [
        clickhouse.as_ref().and_then(|(s, _)| s.pid()),
        postgres.as_ref().and_then(|(s, _)| s.pid()),
    ]
    .map(|pid| pid.and_then(|p| i32::try_from(p).ok()));
    let before = scrape_all(&http, &apis, &mut unanswered).await;
    let agg0 = all_ticks(&pids)?;
    let own0 = own_ticks()?;
    let servers0 = servers.map(|pid| pid.map(tree_ticks).transpose());
    let _ = fleet.latency.take();
    let window_start = Instant::now();
    let fleet = Arc::new(tokio::sync::RwLock::new(fleet));
    let mut revoked = 0;
    let action = {
        let fleet = fleet.clone();
        let (scenario, measure, fraction) =
            (config.scenario, config.measure, config.churn_fraction);
        tokio::spawn(async move {
            if scenario == Scenario::Churn {
                churn(&fleet, fraction, window_start + measure).await;
            }
        })
    };
    if config.scenario == Scenario::Revoke {
        tokio::time::sleep(config.measure / 2).await;
        let count = ((n as f64 * config.revoke_fraction).round() as usize).clamp(1, n);
        let f = fleet.read().await;
        // Every tenth agent (or so), spread over the sockets.
        let stride = n / count;
        for a in f.agents.iter().step_by(stride.max(1)).take(count) {
            tokio::task::block_in_place(|| {
                outpost_aggregator::pki::revoke_agent(&pki, &a.id, "key-compromise")
            })
            .with_context(|| format!("revoking {}", a.id))?;
            a.revoked.store(true, Ordering::Relaxed);
            revoked += 1;
        }
        drop(f);
        for a in &aggregators {
            a.hangup();
        }
    }
    tokio::time::sleep_until((window_start + config.measure).into()).await;
    let _ = action.await;
    let window = window_start.elapsed();
    let after = scrape_all(&http, &apis, &mut unanswered).await;
    let agg1 = all_ticks(&pids)?;
    let own1 = own_ticks()?;
    let servers1 = servers.map(|pid| pid.map(tree_ticks).transpose());
    let mut aggregator_threads = BTreeMap::new();
    for &pid in &pids {
        for (name, count) in threads_by_name(pid) {
            *aggregator_threads.entry(name).or_default() += count;
        }
    }
    let ack = Latency::of(&fleet.read().await.latency.take());
    let mut peaks = pids
        .iter()
        .map(|&pid| peak_rss(pid))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let count = |s: &Scrape, name| s.sum(name) as u64;

    // The storm (one aggregator: see `SimConfig::validate`).
    let storm = if config.scenario == Scenario::Storm {
        let aggregator = &mut aggregators[0];
        aggregator.kill9();
        let down = Instant::now();
        tokio::time::sleep(config.outage).await;
        let backlog_events = {
            let (live, _) = fleet.read().await.tally();
            live.held.total()
        };
        tokio::task::block_in_place(|| aggregator.restart());
        // The API listens on a port of the system's choosing, new at each start.
        apis[0] = tokio::task::block_in_place(|| aggregator.api_url());
        let restart_ns = outpost_common::time::now_ns();
        let restarted = Instant::now();
        let outage = restarted - down;
        pids[0] = aggregator_pid(aggregator)?;
        let t0 = ticks(pids[0])?;
        let reconnected = wait_until(
            "every agent connected after the restart",
            config.deadline,
            || connected(&http, &apis, n),
        )
        .await?;
        let f = fleet.clone();
        let drained = wait_until("the storm's backlog drained", config.deadline, || {
            let f = f.clone();
            async move {
                Ok(f.read()
                    .await
                    .oldest_held_ns()
                    .is_none_or(|t| t >= restart_ns))
            }
        })
        .await?;
        let cpu = cpu_pct(ticks(pids[0])? - t0, restarted.elapsed());
        Some(StormFigures {
            outage,
            backlog_events,
            reconnected,
            drained: drained.max(reconnected),
            cpu_pct: cpu,
        })
    } else {
        None
    };

    // The end: stop generating, drain, stop the agents, check.
    fleet.write().await.stop_generating().await;
    let f = fleet.clone();
    let final_drain = wait_until("every spool drained", config.deadline, || {
        let f = f.clone();
        async move { Ok(f.read().await.tally().0.held_batches == 0) }
    })
    .await?;
    fleet.read().await.stop_all().await;
    let end = scrape_all(&http, &apis, &mut unanswered).await;
    // The counters over the run: in a storm, the aggregator's first life (up to `after`) and
    // its second, which started from zero.
    let over_run: Vec<Scrape> = if storm.is_some() {
        after.iter().zip(&end).map(|(a, e)| a.plus(e)).collect()
    } else {
        end.clone()
    };
    let total = |name| over_run.iter().map(|s| count(s, name)).sum::<u64>();
    let rules_fell_behind = total("outpost_rule_feed_fell_behind_total");
    let feed_dropped_batches = total("outpost_feed_dropped_batches_total");
    let sessions = total("outpost_agent_sessions_total");
    let mut refused = BTreeMap::<String, u64>::new();
    for s in &over_run {
        for (reason, v) in s.by_label("outpost_ingest_refused_total") {
            *refused.entry(reason).or_default() += v as u64;
        }
    }
    for (peak, &pid) in peaks.iter_mut().zip(&pids) {
        *peak = (*peak).max(peak_rss(pid)?);
    }
    let db = aggregators[0].data_dir().join("aggregator.db");
    let loss = {
        let f = fleet.read().await;
        tokio::task::block_in_place(|| match &clickhouse {
            Some((_, store)) => {
                let store = ClickHouseStore::open(store)
                    .context("opening the ClickHouse store for the loss check")?;
                check::check_events(&store, &f)
            }
            None => check::check(&db, &f, &metric_names),
        })?
    };
    let per_aggregator: Vec<AggregatorFigures> = aggregators
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let delta = |name| count(&after[i], name).saturating_sub(count(&before[i], name));
            let sum_delta = |name| after[i].sum(name) - before[i].sum(name);
            AggregatorFigures {
                name: a.name().to_owned(),
                events_committed: delta("outpost_events_stored_total"),
                batches_committed: delta("outpost_batches_stored_total"),
                cpu_pct: cpu_pct(agg1[i].saturating_sub(agg0[i]), window),
                peak_rss: peaks[i],
                commits: delta("outpost_store_commit_duration_seconds_count"),
                commit_secs: sum_delta("outpost_store_commit_duration_seconds_sum").max(0.0),
                sessions: count(&over_run[i], "outpost_agent_sessions_total"),
            }
        })
        .collect();
    let [clickhouse_cpu_pct, postgres_cpu_pct] =
        [0, 1].map(|i| match (&servers0[i], &servers1[i]) {
            (Ok(Some(t0)), Ok(Some(t1))) => Some(cpu_pct(t1.saturating_sub(*t0), window)),
            _ => None,
        });
    let commits: u64 = per_aggregator.iter().map(|a| a.commits).sum();
    let commit_secs: f64 = per_aggregator.iter().map(|a| a.commit_secs).sum();
    Ok(SimReport {
        scenario: config.scenario,
        agents: n,
        connected_in,
        window,
        events_committed: per_aggregator.iter().map(|a| a.events_committed).sum(),
        batches_committed: per_aggregator.iter().map(|a| a.batches_committed).sum(),
        ack,
        aggregator_cpu_pct: per_aggregator.iter().map(|a| a.cpu_pct).sum(),
        aggregator_peak_rss: per_aggregator.iter().map(|a| a.peak_rss).sum(),
        simulator_cpu_pct: cpu_pct(own1 - own0, window),
        sessions,
        refused,
        commit_mean: (commits > 0).then(|| Duration::from_secs_f64(commit_secs / commits as f64)),
        unanswered_scrapes: unanswered,
        rules_fell_behind,
        feed_dropped_batches,
        aggregator_threads,
        per_aggregator,
        clickhouse_cpu_pct,
        postgres_cpu_pct,
        storm,
        network: proxy.as_ref().map(ImpairProxy::stats),
        revoked,
        final_drain,
        loss,
    })
}

/// The `[store]`, `[state]` and `[alerting]` sections of an aggregator over `clickhouse` (as
/// its node `node`) and `postgres`; empty for the embedded store.
fn stores_toml(clickhouse: Option<&ClickHouseConfig>, postgres: Option<&str>, node: u8) -> String {
    let mut toml = String::new();
    if let Some(store) = clickhouse {
        toml += &format!(
            "[store]\nbackend = \"clickhouse\"\n\n[store.clickhouse]\nurl = \"{}\"\n\
             database = \"{}\"\nnode = {node}\n\n",
            store.url, store.database
        );
    }
    if let Some(url) = postgres {
        // Alerting does not run with state in PostgreSQL yet: the aggregator refuses it.
        toml += &format!(
            "[state]\nbackend = \"postgres\"\n\n[state.postgres]\nurl = \"{url}\"\n\n\
             [alerting]\nenabled = false\n"
        );
    }
    toml
}

/// Restarts a share of the agents over and over until `until`: stop as on SIGTERM, stay away
/// 1-5 s, start again, run 5-20 s.
async fn churn(fleet: &Arc<tokio::sync::RwLock<Fleet>>, fraction: f64, until: Instant) {
    let n = fleet.read().await.agents.len();
    let count = ((n as f64 * fraction).round() as usize).clamp(1, n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in (0..n).step_by((n / count).max(1)).take(count) {
        let fleet = fleet.clone();
        tasks.spawn(async move {
            let mut rng = rand::rngs::SmallRng::from_os_rng();
            // Staggered, so the churners do not move in step.
            let first = Duration::from_millis(rng.random_range(0..5000));
            tokio::time::sleep_until((Instant::now() + first).min(until).into()).await;
            // Ends started, so that its spool drains afterwards.
            let until_or =
                |d: Duration| tokio::time::sleep_until((Instant::now() + d).min(until).into());
            while Instant::now() < until {
                fleet.read().await.stop(i).await;
                until_or(Duration::from_millis(rng.random_range(1000..5000))).await;
                fleet.read().await.start(i);
                until_or(Duration::from_millis(rng.random_range(5000..20000))).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
