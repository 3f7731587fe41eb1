//! `outpost-querybench`: API query latency over a large store, ClickHouse beside the embedded
//! SQLite store (see `outpost_tests::querybench` for the data and the queries).
//!
//! Loading is the slow part, so it is kept: the data directory holds the shape (`shape.json`),
//! the SQLite store (`sqlite/`), the ClickHouse server's files (`clickhouse/`) and what each load
//! took (`<store>.load.json`). A run loads each store not loaded yet, then starts a real
//! `outpost-aggregator` (the one next to this program) on each store and times the three queries
//! through its HTTP API.
//!
//! ```text
//! cargo build --release -p outpost-aggregator -p outpost-tests --bin outpost-aggregator --bin outpost-querybench
//! TMPDIR=/var/tmp target/release/outpost-querybench --data-dir /var/tmp/outpost-querybench --load-only
//! TMPDIR=/var/tmp target/release/outpost-querybench --data-dir /var/tmp/outpost-querybench --query-only
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use outpost_aggregator::store::SqliteStore;
use outpost_aggregator::store::clickhouse::{ClickHouseConfig, ClickHouseStore};
use outpost_tests::clickhouse_server::ClickHouseServer;
use outpost_tests::querybench::{self, LoadReport, Shape, Target, Timing};
use outpost_tests::{AggregatorOptions, Env, toml_string};
use serde::{Deserialize, Serialize};

/// Exit status for usage errors (EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// The ClickHouse database the events go to.
const DATABASE: &str = "outpost_bench";

/// How long one request may take, to the API and from the aggregator to ClickHouse.
const REQUEST_TIMEOUT: &str = "30m";

#[derive(Debug, Parser)]
#[command(
    name = "outpost-querybench",
    about = "Time API queries over a large store, ClickHouse beside SQLite",
    after_help = "Build first: cargo build --release -p outpost-aggregator -p outpost-tests \
                  --bin outpost-aggregator --bin outpost-querybench"
)]
struct Cli {
    /// Where the stores and the shape are kept between runs.
    #[arg(long)]
    data_dir: PathBuf,
    /// Stores to load and query: sqlite, clickhouse, or both (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,clickhouse", value_parser = ["sqlite", "clickhouse"])]
    store: Vec<String>,
    /// Load the stores not loaded yet, and stop.
    #[arg(long, conflicts_with = "query_only")]
    load_only: bool,
    /// Only time the queries (every store must be loaded).
    #[arg(long)]
    query_only: bool,
    /// Hosts (ignored once the data directory has a shape).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Days of event time, ending when the first load starts.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Time between two rounds of one host's metrics.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "680s")]
    metric_interval: Duration,
    /// Average time between two log lines of one host.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    log_interval: Duration,
    /// Time between two log batches of one host.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    log_batch: Duration,
    /// Measured requests per query and store, after one warm-up request.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// What a load left, kept beside the store.
#[derive(Debug, Serialize, Deserialize)]
struct Loaded {
    report: LoadReport,
    /// The store's files once the load ended.
    bytes: u64,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Usage>().is_some() => {
            eprintln!("outpost-querybench: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("outpost-querybench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A usage error (exit status 64).
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn run(cli: &Cli) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("creating {}", cli.data_dir.display()))?;
    let shape = shape(cli)?;
    println!(
        "shape: {} hosts, {} days ending {}, metrics every {:?}, a log line every {:?} in batches every {:?}",
        shape.agents,
        shape.span_ns / 86_400_000_000_000,
        shape.end_ns,
        Duration::from_nanos(shape.metric_interval_ns.cast_unsigned()),
        Duration::from_nanos(shape.log_interval_ns.cast_unsigned()),
        Duration::from_nanos(shape.log_batch_ns.cast_unsigned()),
    );
    if !cli.query_only {
        let mut template = None;
        for store in &cli.store {
            if loaded(cli, store)?.is_some() {
                println!("{store}: loaded before");
                continue;
            }
            if template.is_none() {
                template = Some(outpost_tests::hostsim::host_template()?);
            }
            let template = template.as_deref().unwrap_or_default();
            println!(
                "{store}: loading ({} points per host round)",
                template.iter().map(|f| f.points.len()).sum::<usize>()
            );
            let done = match store.as_str() {
                "sqlite" => load_sqlite(cli, &shape, template)?,
                _ => load_clickhouse(cli, &shape, template)?,
            };
            print_load(store, &done);
            std::fs::write(
                cli.data_dir.join(format!("{store}.load.json")),
                serde_json::to_string_pretty(&done)?,
            )?;
        }
    }
    if cli.load_only {
        return Ok(());
    }
    let mut loads = Vec::new();
    for store in &cli.store {
        match loaded(cli, store)? {
            Some(l) => loads.push((store.clone(), l)),
            None => {
                return Err(Usage(format!(
                    "{store} is not loaded in {}: run without --query-only first",
                    cli.data_dir.display()
                ))
                .into());
            }
        }
    }
    query(cli, &shape, &loads)
}

/// The shape kept in the data directory, or a new one from the options.
fn shape(cli: &Cli) -> anyhow::Result<Shape> {
    let path = cli.data_dir.join("shape.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        return serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()));
    }
    if cli.query_only {
        return Err(Usage(format!("nothing loaded in {} yet", cli.data_dir.display())).into());
    }
    let now = outpost_common::time::now_ns();
    let shape = Shape {
        agents: cli.agents,
        end_ns: now - now.rem_euclid(60_000_000_000),
        span_ns: i64::from(cli.days) * 86_400_000_000_000,
        metric_interval_ns: nanos(cli.metric_interval),
        log_interval_ns: nanos(cli.log_interval),
        log_batch_ns: nanos(cli.log_batch),
    };
    shape.check().map_err(Usage)?;
    std::fs::write(&path, serde_json::to_string_pretty(&shape)?)?;
    Ok(shape)
}

fn loaded(cli: &Cli, store: &str) -> anyhow::Result<Option<Loaded>> {
    let path = cli.data_dir.join(format!("{store}.load.json"));
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    Ok(Some(
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
    ))
}

fn load_sqlite(
    cli: &Cli,
    shape: &Shape,
    template: &[outpost_tests::hostsim::Family],
) -> anyhow::Result<Loaded> {
    let dir = cli.data_dir.join("sqlite");
    // A load that did not finish leaves a store that is no use.
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("aggregator.db");
    let report = {
        let store = SqliteStore::open(&path)?;
        querybench::load(&store, shape, template, true)?
    };
    // The size once the log is checkpointed into the database.
    let conn = rusqlite::Connection::open(&path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    Ok(Loaded {
        report,
        bytes: dir_bytes(&dir),
    })
}

fn clickhouse_config(server: &ClickHouseServer) -> ClickHouseConfig {
    ClickHouseConfig {
        url: server.url(),
        database: DATABASE.to_owned(),
        request_timeout: Duration::from_secs(1800),
        ..ClickHouseConfig::default()
    }
}

fn load_clickhouse(
    cli: &Cli,
    shape: &Shape,
    template: &[outpost_tests::hostsim::Family],
) -> anyhow::Result<Loaded> {
    let server = ClickHouseServer::start_in(&cli.data_dir.join("clickhouse"));
    // A load that did not finish leaves a database that is no use.
    clickhouse_sql(&server, &format!("DROP DATABASE IF EXISTS {DATABASE}"))?;
    let report = {
        let store = ClickHouseStore::open(&clickhouse_config(&server))?;
        querybench::load(&store, shape, template, true)?
    };
    Ok(Loaded {
        report,
        bytes: clickhouse_bytes(&server)?,
    })
}

/// The bytes of the benchmark's database: its active parts. (Parts replaced by a merge stay on
/// disk for minutes, so the directory's size overstates it for a while after a load.)
fn clickhouse_bytes(server: &ClickHouseServer) -> anyhow::Result<u64> {
    clickhouse_sql(
        server,
        &format!("SELECT sum(bytes) FROM system.parts WHERE database = '{DATABASE}' AND active"),
    )?
    .trim()
    .parse()
    .context("reading the size of the parts")
}

/// Runs one statement on the server; its output.
fn clickhouse_sql(server: &ClickHouseServer, sql: &str) -> anyhow::Result<String> {
    let answer = reqwest::blocking::Client::new()
        .post(server.url())
        .body(sql.to_owned())
        .send()?;
    let status = answer.status();
    let text = answer.text()?;
    if !status.is_success() {
        bail!("ClickHouse: {sql}: {status}: {text}");
    }
    Ok(text)
}

/// Bytes allocated to the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn print_load(store: &str, l: &Loaded) {
    let r = &l.report;
    println!(
        "{store}: {} rows ({} metric points, {} log records) in {} batches, {} commits: \
         {:.0} s ({:.0} rows/s; commits {:.0} s, retention and packing {:.0} s); {:.2} GB on disk ({:.1} bytes per row)",
        r.rows(),
        r.metric_points,
        r.logs,
        r.batches,
        r.commits,
        r.total_secs,
        r.rows() as f64 / r.total_secs,
        r.commit_secs,
        r.retention_secs,
        l.bytes as f64 / 1e9,
        l.bytes as f64 / r.rows() as f64
    );
}

/// Starts an aggregator on each store and times the queries.
fn query(cli: &Cli, shape: &Shape, loads: &[(String, Loaded)]) -> anyhow::Result<()> {
    for (store, l) in loads {
        print_load(store, l);
    }
    let env = Env::new("querybench");
    let api = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"{REQUEST_TIMEOUT}\"\n\
         requests_per_sec_per_token = 10000\nrequests_per_sec_per_address = 10000\n\n"
    );
    let mut server = None;
    let mut aggregators = Vec::new();
    for (store, _) in loads {
        let options = match store.as_str() {
            "sqlite" => AggregatorOptions {
                data_dir: Some(cli.data_dir.join("sqlite")),
                extra: api.clone(),
                ..AggregatorOptions::named("sqlite")
            },
            _ => {
                let s = ClickHouseServer::start_in(&cli.data_dir.join("clickhouse"));
                wait_for_merges(&s)?;
                println!(
                    "clickhouse: {:.2} GB in active parts now that merges are done",
                    clickhouse_bytes(&s)? as f64 / 1e9
                );
                let extra = format!(
                    "{api}[store]\nbackend = \"clickhouse\"\n\n[store.clickhouse]\nurl = {}\n\
                     database = \"{DATABASE}\"\nrequest_timeout = \"{REQUEST_TIMEOUT}\"\n",
                    toml_string(Path::new(&s.url())),
                );
                server = Some(s);
                AggregatorOptions {
                    extra,
                    ..AggregatorOptions::named("clickhouse")
                }
            }
        };
        let aggregator = env.start_aggregator_with(options);
        // A store kept between runs keeps the tokens of earlier ones: a new name each run.
        let name = format!("querybench-{}", outpost_common::time::now_ns());
        let made: serde_json::Value = serde_json::from_str(&aggregator.cli_ok(&[
            "token", "create", "--name", &name, "--role", "viewer", "--json",
        ]))?;
        let token = made["token"]
            .as_str()
            .context("`token create --json` printed no token")?
            .to_owned();
        aggregators.push((store.clone(), aggregator, token));
    }
    let targets: Vec<Target> = aggregators
        .iter()
        .map(|(name, a, token)| Target {
            name: name.clone(),
            base_url: a.api_url(),
            token: token.clone(),
        })
        .collect();
    let started = Instant::now();
    let timings = querybench::measure(shape, &targets, cli.runs, Duration::from_secs(1800))?;
    println!(
        "timed in {:.0} s; every answer held the values expected",
        started.elapsed().as_secs_f64()
    );
    for t in &timings {
        println!(
            "{} on {}: warm-up {:.1} ms, runs {} ms; values per answer {:?}",
            t.kind.describe(shape),
            t.target,
            ms(t.warm_up),
            t.runs
                .iter()
                .map(|d| format!("{:.1}", ms(*d)))
                .collect::<Vec<_>>()
                .join(", "),
            t.sizes
        );
    }
    println!("\n{}", table(shape, &timings));
    drop(aggregators);
    drop(server);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Blocks until the server merges nothing (after a load it goes on merging parts for a while),
/// so that the queries do not share the cores with merges.
fn wait_for_merges(server: &ClickHouseServer) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let merging: u64 = clickhouse_sql(server, "SELECT count() FROM system.merges")?
            .trim()
            .parse()
            .context("counting merges")?;
        if merging == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("ClickHouse still merges after an hour");
        }
        // Polling a condition, not a delay: it decides when to go on.
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// One Markdown row per query: each store's median and largest time, and the ratio of medians.
fn table(shape: &Shape, timings: &[Timing]) -> String {
    let mut out = String::from(
        "| query | SQLite median (max) | ClickHouse median (max) | SQLite / ClickHouse |\n|---|--:|--:|--:|\n",
    );
    for kind in querybench::Kind::ALL {
        let of = |name: &str| timings.iter().find(|t| t.kind == kind && t.target == name);
        let cell = |t: Option<&Timing>| {
            t.map_or("-".to_owned(), |t| {
                format!("{:.1} ms ({:.1})", ms(t.median()), ms(t.max()))
            })
        };
        let ratio = match (of("sqlite"), of("clickhouse")) {
            (Some(s), Some(c)) => format!("{:.2}", ms(s.median()) / ms(c.median())),
            _ => "-".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {ratio} |\n",
            kind.describe(shape),
            cell(of("sqlite")),
            cell(of("clickhouse"))
        ));
    }
    out
}
