//! `outpost-bench`: end-to-end ingest throughput of the real release binaries on this machine.
//!
//! For each agent count and run, the agents' spools are pre-filled with ~200-byte log events
//! (untimed), then the aggregator and the agents are started; the clock runs from spawning the
//! first agent (t0) until the store holds every event (t1). It reports committed events/s and
//! MiB/s, acknowledgement latency from the agents' own summaries, the aggregator's CPU and peak
//! RSS, and the agents' CPU over the same window, since all share the machine's cores.
//!
//! Build first, then run (see BENCHMARKS.md):
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/outpost-bench --agents 1,10,100 --runs 3 --bin-dir target/release
//! ```

mod agent_log;
mod procs;
mod report;
mod run;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::run::Plan;

/// Exit status for usage errors (EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-bench",
    about = "Measure end-to-end ingest throughput of the Outpost release binaries on loopback",
    after_help = "Build the programs first: cargo build --release --workspace --bins"
)]
struct Cli {
    /// Numbers of concurrent agents to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    agents: Vec<usize>,
    /// Events per run, split evenly across the agents.
    #[arg(long, default_value_t = 1_000_000)]
    events_total: u64,
    /// Runs per agent count; the tables show the medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory holding the release builds of outpost-agent and outpost-aggregator.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Fail a run whose events are not all committed this many seconds after the agents start.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Where to create each run's temporary directory (default: the system's). Use a disk-backed
    /// file system: the store's fsyncs are part of what is measured.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep each run's directory (configurations, databases, logs) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Before each run, wait until the whole machine is less busy than this, in percent of one
    /// core over one second (other processes on a shared machine skew the figures).
    #[arg(long, default_value_t = 25.0)]
    quiet_below: f64,
    /// Wait at most this many seconds for the machine to quiet down, then measure anyway.
    #[arg(long, default_value_t = 300)]
    quiet_wait_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = match plan(&cli) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("outpost-bench: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match bench(&cli, &plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the arguments and that both programs have been built.
fn plan(cli: &Cli) -> anyhow::Result<Plan> {
    if cli.agents.is_empty() || cli.agents.contains(&0) || cli.runs == 0 {
        bail!("--agents needs counts of at least 1 and --runs at least 1");
    }
    if cli.agents.iter().any(|&a| a as u64 > cli.events_total) {
        bail!("--events-total must give every agent at least one event");
    }
    for name in ["outpost-agent", "outpost-aggregator"] {
        let path = cli.bin_dir.join(name);
        if !path.is_file() {
            bail!(
                "{} is missing: build the release programs first with \
                 `cargo build --release --workspace --bins`, or point --bin-dir at them",
                path.display()
            );
        }
    }
    let bin_dir = cli
        .bin_dir
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve", cli.bin_dir.display()))?;
    Ok(Plan {
        bin_dir,
        events_total: cli.events_total,
        timeout: Duration::from_secs(cli.timeout_secs),
        work_dir: cli.work_dir.clone(),
        keep: cli.keep,
        quiet_below_pct: cli.quiet_below,
        quiet_wait: Duration::from_secs(cli.quiet_wait_secs),
    })
}

/// Runs every configuration `runs` times. The runs are interleaved (1, 10, 100, 1, 10, ...)
/// so that a slow spell of a shared machine spreads over all configurations instead of
/// skewing one.
fn bench(cli: &Cli, plan: &Plan) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for run in 1..=cli.runs {
        for &agents in &cli.agents {
            let r = run::run_once(plan, agents, run)?;
            eprintln!(
                "[{agents} agents, run {run}] {:.0} events/s, {:.1} MiB/s, ack p50 {:.1} ms \
                 p99 {:.1} ms, aggregator {:.0} % CPU {:.0} MiB, agents {:.0} % CPU, \
                 others {:.0} % CPU",
                r.events_per_sec(),
                r.mib_per_sec(),
                r.ack.p50_us / 1000.0,
                r.ack.p99_us / 1000.0,
                r.aggregator_cpu_pct,
                r.aggregator_rss_mib,
                r.agents_cpu_pct,
                r.other_cpu_pct()
            );
            results.push(r);
        }
    }
    println!(
        "## Medians of {} runs, {} events of ~{} bytes per run\n",
        cli.runs,
        cli.events_total,
        setup::EVENT_BYTES
    );
    println!("{}", report::medians_table(&results));
    println!(
        "Ack latency: median over agents of each agent's p50; maximum over agents of each \
         agent's p99. CPU: percent of one core ({} cores here).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("## Every run\n");
    println!("{}", report::raw_table(&results));
    Ok(())
}
