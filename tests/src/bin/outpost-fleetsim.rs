//! `outpost-fleetsim`: many simulated agents against one real aggregator (or two), in a
//! scenario, with a loss check at the end (see `outpost_tests::fleetsim`).
//!
//! Build first, then run (see BENCHMARKS.md):
//!
//! ```text
//! cargo build --release --workspace --bins
//! TMPDIR=/var/tmp target/release/outpost-fleetsim --agents 1000 --scenario steady
//! TMPDIR=/var/tmp target/release/outpost-fleetsim --agents 1000 --store clickhouse --aggregators 2
//! ```
//!
//! The aggregator is the `outpost-aggregator` next to this program. Each run gets a fresh
//! directory under `$TMPDIR` (PKI, configuration, store, logs), removed afterwards unless
//! `OUTPOST_E2E_KEEP` is set or the run failed. Exits non-zero when a run fails or its loss check
//! does not pass.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use outpost_tests::Env;
use outpost_tests::fleetsim::{self, Scenario, SimConfig, SimReport};
use outpost_tests::impair::Impairment;

/// Thousands of agents on a few threads, each packing and compressing its own batches: a
/// threaded allocator leaves more of the machine to the aggregator it measures.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for usage errors (EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-fleetsim",
    about = "Run simulated agents against a real aggregator and check that nothing is lost",
    after_help = "Build the programs first: cargo build --release --workspace --bins"
)]
struct Cli {
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// steady, storm, bad-network, slow-disk, churn or revoke; comma-separated for several.
    #[arg(long, value_delimiter = ',', default_value = "steady")]
    scenario: Vec<Scenario>,
    /// Runs of each scenario.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// The measured window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    measure: Duration,
    /// Time between every agent being connected and the window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    settle: Duration,
    /// Spread of the first connections (default: 2 ms per agent, at least 1 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    ramp: Option<Duration>,
    /// How often each agent sends a round of its host metrics (the agent collects every 10 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    metrics_interval: Duration,
    /// Log lines per second per agent, on average.
    #[arg(long, default_value_t = 1.0)]
    log_rate: f64,
    /// File-integrity changes per hour per agent, on average.
    #[arg(long, default_value_t = 6.0)]
    fim_per_hour: f64,
    /// Agents sharing one client UDP socket.
    #[arg(long, default_value_t = 32)]
    agents_per_socket: usize,
    /// storm: how long the aggregator stays down.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    outage: Duration,
    /// bad-network: share of datagrams lost, each way.
    #[arg(long, default_value_t = 0.05)]
    loss: f64,
    /// bad-network: share of datagrams duplicated, each way.
    #[arg(long, default_value_t = 0.01)]
    duplicate: f64,
    /// bad-network: delay of every datagram, each way.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "50ms")]
    delay: Duration,
    /// bad-network: extra delay, uniform from 0 to this (it reorders datagrams).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20ms")]
    jitter: Duration,
    /// slow-disk: delay added to each of the aggregator's fsyncs.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20ms")]
    fsync_delay: Duration,
    /// churn: share of agents that keep restarting.
    #[arg(long, default_value_t = 0.2)]
    churn: f64,
    /// revoke: share of agents whose certificate is revoked mid-window.
    #[arg(long, default_value_t = 0.1)]
    revoke: f64,
    /// Run the aggregator without the default rule pack.
    #[arg(long)]
    no_rules: bool,
    /// The aggregator's event store: `sqlite` (the embedded default) or `clickhouse` (a
    /// ClickHouse server the simulator starts on loopback, as the tests do).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "clickhouse"])]
    store: String,
    /// Aggregators the agents are spread over: 1, or 2 sharing the ClickHouse store (needs
    /// `--store clickhouse`) and a PostgreSQL server for their state, with alerting off (so no
    /// rule pack); steady and churn only.
    #[arg(long, default_value_t = 1)]
    aggregators: usize,
    /// How long connecting every agent, and draining every spool, may take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    deadline: Duration,
}

fn config(cli: &Cli, scenario: Scenario) -> Result<SimConfig, String> {
    if cli.agents == 0 || cli.runs == 0 || cli.agents_per_socket == 0 {
        return Err("--agents, --runs and --agents-per-socket must be at least 1".to_owned());
    }
    for (name, v) in [("--churn", cli.churn), ("--revoke", cli.revoke)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("{name} must be between 0 and 1"));
        }
    }
    if !(cli.log_rate >= 0.0 && cli.fim_per_hour >= 0.0) {
        return Err("--log-rate and --fim-per-hour must not be negative".to_owned());
    }
    if cli.metrics_interval < Duration::from_secs(1) {
        return Err("--metrics-interval must be at least 1s".to_owned());
    }
    let mut c = SimConfig::new(scenario, cli.agents);
    c.fleet.rates.metrics_interval = cli.metrics_interval;
    c.fleet.rates.log_lines_per_sec = cli.log_rate;
    c.fleet.rates.fim_per_hour = cli.fim_per_hour;
    c.fleet.agents_per_socket = cli.agents_per_socket;
    c.measure = cli.measure;
    c.settle = cli.settle;
    if let Some(r) = cli.ramp {
        c.ramp = r;
    }
    c.outage = cli.outage;
    c.impairment = Impairment {
        loss: cli.loss,
        duplicate: cli.duplicate,
        delay: cli.delay,
        jitter: cli.jitter,
    };
    c.impairment.validate()?;
    c.fsync_delay = cli.fsync_delay;
    c.churn_fraction = cli.churn;
    c.revoke_fraction = cli.revoke;
    c.deadline = cli.deadline;
    c.rules = !cli.no_rules;
    c.clickhouse = cli.store == "clickhouse";
    c.aggregators = cli.aggregators;
    c.validate()?;
    Ok(c)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let configs: Result<Vec<SimConfig>, String> =
        cli.scenario.iter().map(|&s| config(&cli, s)).collect();
    let configs = match configs {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outpost-fleetsim: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut reports: Vec<SimReport> = Vec::new();
    let mut failed = false;
    for run in 1..=cli.runs {
        for c in &configs {
            let env = Env::new(&format!("fleetsim-{}-{}", c.scenario, c.fleet.agents));
            eprintln!(
                "[{} × {}, run {run}] in {}",
                c.scenario,
                c.fleet.agents,
                env.path().display()
            );
            match fleetsim::run(&env, c) {
                Ok(r) => {
                    println!("{r}\n");
                    failed |= !r.loss.passed();
                    reports.push(r);
                }
                Err(e) => {
                    eprintln!("outpost-fleetsim: {} run {run}: {e:#}", c.scenario);
                    eprintln!("{}", env.diagnosis());
                    failed = true;
                }
            }
        }
    }
    println!("{}", table(&reports));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The median of `values` (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One Markdown row per scenario and agent count: medians over its runs.
fn table(reports: &[SimReport]) -> String {
    let mut out = String::from(
        "| scenario | agents | aggregators | runs | events/s committed | batches/s | ack p50 ms | ack p99 ms | ack max ms | aggregator CPU % | each aggregator's CPU % | aggregator peak RSS MiB | ClickHouse CPU % | PostgreSQL CPU % | simulator CPU % | sessions | refused | storm drained s | final drain s | loss check |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    let mut keys: Vec<(Scenario, usize)> = reports.iter().map(|r| (r.scenario, r.agents)).collect();
    keys.dedup();
    keys.sort_by_key(|(s, n)| (Scenario::ALL.iter().position(|x| x == s), *n));
    keys.dedup();
    for (scenario, agents) in keys {
        let rs: Vec<&SimReport> = reports
            .iter()
            .filter(|r| r.scenario == scenario && r.agents == agents)
            .collect();
        let m = |f: &dyn Fn(&SimReport) -> f64| median(rs.iter().map(|r| f(r)).collect());
        let storm = m(&|r| r.storm.map_or(f64::NAN, |s| s.drained.as_secs_f64()));
        let optional = |v: f64| {
            if v.is_nan() {
                "-".to_owned()
            } else {
                format!("{v:.0}")
            }
        };
        let aggregators = rs.first().map_or(1, |r| r.per_aggregator.len());
        let each: Vec<String> = (0..aggregators)
            .map(|i| {
                optional(m(&|r| {
                    r.per_aggregator.get(i).map_or(f64::NAN, |a| a.cpu_pct)
                }))
            })
            .collect();
        out.push_str(&format!(
            "| {scenario} | {agents} | {aggregators} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {} |\n",
            rs.len(),
            m(&|r| r.events_per_sec()),
            m(&|r| r.batches_per_sec()),
            m(&|r| r.ack.p50_us as f64 / 1000.0),
            m(&|r| r.ack.p99_us as f64 / 1000.0),
            m(&|r| r.ack.max_us as f64 / 1000.0),
            m(&|r| r.aggregator_cpu_pct),
            each.join(" + "),
            m(&|r| r.aggregator_peak_rss as f64 / 1048576.0),
            optional(m(&|r| r.clickhouse_cpu_pct.unwrap_or(f64::NAN))),
            optional(m(&|r| r.postgres_cpu_pct.unwrap_or(f64::NAN))),
            m(&|r| r.simulator_cpu_pct),
            m(&|r| r.sessions as f64),
            m(&|r| r.refused_total() as f64),
            if storm.is_nan() { "-".to_owned() } else { format!("{storm:.1}") },
            m(&|r| r.final_drain.as_secs_f64()),
            match (
                rs.iter().all(|r| r.loss.passed()),
                rs.iter().any(|r| r.unanswered_scrapes > 0),
            ) {
                (true, false) => "passed",
                (true, true) => "passed (the aggregator's counters are missing)",
                (false, _) => "FAILED",
            },
        ));
    }
    out
}
