//! `outpost-api-bench`: the HTTP API's latency on fleet-sized data, with a load client that keeps
//! requests concurrent.
//!
//! - `fleet`: registers N synthetic agents (statuses, versions, operating systems and labels
//!   varied), then times `GET /api/v1/agents/summary` and pages of a filtered list.
//! - `metrics`: stores H hosts × a span of hours of the host metrics this machine's agent sends by
//!   default (the real families and their intervals; values shaped like the real ones), through
//!   the store's commit and compaction as the aggregator runs them, then times one host's idle
//!   CPU over the span at 500 points and the fleet's average idle CPU over the last hour, and
//!   reports bytes on disk per stored point for the series layout and for the row per point of
//!   schema 7.
//!
//! - `console`: registers N agents and stores a span of hours of host metrics for H of them
//!   (as `fleet` and `metrics` do), then loads the web console's pages in headless Chromium and
//!   reports, from the browser's Performance API, time to first contentful paint, time to the
//!   complete page (the load event) and bytes per page, medians of several loads.
//!
//! The API runs in this process on loopback, built as the aggregator builds it; the load client
//! shares the machine's cores with it, as a dashboard on the same host would. Build in release:
//!
//! ```text
//! cargo build --release -p outpost-tests --bin outpost-api-bench
//! target/release/outpost-api-bench fleet --agents 100000
//! target/release/outpost-api-bench metrics --hosts 100 --hours 24
//! target/release/outpost-api-bench console --agents 10000 --hosts 100 --hours 24
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use outpost_aggregator::api::{Api, ApiConfig, app, serve};
use outpost_aggregator::fleet::FleetPolicy;
use outpost_aggregator::store::{
    EventStore, IncomingBatch, RegistryUpdate, Retention, SqliteStore, StateStore,
};
use outpost_aggregator::tokens::{self, Role};
use outpost_common::event::{AgentStatus, Event, HostFacts, MetricKind};
use outpost_common::wire::{Hello, PROTOCOL_VERSION};
use outpost_tests::hostsim::{Family, host_template, round_points};

const SEC: i64 = 1_000_000_000;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-api-bench",
    about = "Time the HTTP API on fleet-sized data"
)]
struct Cli {
    #[command(subcommand)]
    what: What,
    /// Where to create the store (default: a temporary directory of the system's).
    #[arg(long, global = true)]
    work_dir: Option<PathBuf>,
    /// Timed requests per measured query.
    #[arg(long, global = true, default_value_t = 2000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, global = true, default_value_t = 8)]
    concurrency: usize,
    /// Times each measurement is repeated; the medians are reported.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Summary and filtered list pages over a registry of synthetic agents.
    Fleet {
        #[arg(long, default_value_t = 100_000)]
        agents: usize,
        /// Heartbeats recorded per second while requests run (a fleet of `agents` beating every
        /// 10 s sends agents/10), in rounds of a tenth of a second, as the store writer would.
        #[arg(long, default_value_t = 10_000)]
        heartbeats_per_sec: usize,
    },
    /// Series queries over stored default host metrics, and bytes per point.
    Metrics {
        #[arg(long, default_value_t = 100)]
        hosts: usize,
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        /// Hosts whose points also go into a store of schema 7's layout, for bytes per point.
        #[arg(long, default_value_t = 2)]
        old_layout_hosts: usize,
    },
    /// The web console's pages in headless Chromium over a registry of synthetic agents and
    /// stored metrics of some of them.
    Console {
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        /// Agents (the first ones) with stored metrics.
        #[arg(long, default_value_t = 100)]
        hosts: usize,
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        /// Loads of each page; the medians are reported.
        #[arg(long, default_value_t = 5)]
        loads: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = match &cli.work_dir {
        Some(d) => tempfile::Builder::new()
            .prefix("outpost-api-bench-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("outpost-api-bench-")
            .tempdir()?,
    };
    let store = Arc::new(SqliteStore::open(&dir.path().join("aggregator.db"))?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.what {
        What::Fleet {
            agents,
            heartbeats_per_sec,
        } => {
            let started = Instant::now();
            let now = outpost_common::time::now_ns();
            register(&store, agents, now)?;
            println!(
                "registered {agents} agents in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let beating = heartbeats(store.clone(), agents, heartbeats_per_sec, stop.clone());
            let queries = fleet_queries();
            let result = runtime.block_on(measure(&store, &cli, &queries));
            stop.store(true, Ordering::Relaxed);
            let beats = beating
                .join()
                .map_err(|_| anyhow::anyhow!("the heartbeat thread panicked"))??;
            println!("{beats} heartbeats recorded while requests ran");
            result?;
        }
        What::Metrics {
            hosts,
            hours,
            old_layout_hosts,
        } => {
            let span_ns = (hours * 3600.0 * SEC as f64) as i64;
            let end = outpost_common::time::now_ns();
            let start = end - span_ns;
            let template = host_template()?;
            println!(
                "{} points per host per collection round ({} series)",
                template.iter().map(|t| t.points.len()).sum::<usize>(),
                template.iter().map(|t| t.points.len()).sum::<usize>()
            );
            let started = Instant::now();
            let stored = fill_metrics(&store, &template, hosts, start, end, &|h| {
                format!("host-{h:03}")
            })?;
            let took = started.elapsed().as_secs_f64();
            println!(
                "stored {stored} points in {took:.0} s ({:.0} points/s, commit and compaction)",
                stored as f64 / took
            );
            let new_bytes = settled_bytes(store.path())?;
            let old_path = dir.path().join("schema7.db");
            let old_points = fill_old_layout(&old_path, &template, old_layout_hosts, start, end)?;
            let old_bytes = settled_bytes(&old_path)?;
            let per_new = new_bytes as f64 / stored as f64;
            let per_old = old_bytes as f64 / old_points as f64;
            println!(
                "bytes on disk per point: series layout {per_new:.2} ({new_bytes} bytes, {stored} points); \
                 schema 7 rows {per_old:.2} ({old_bytes} bytes, {old_points} points, {old_layout_hosts} hosts); ratio {:.1}x",
                per_old / per_new
            );
            let queries = metric_queries(hosts, start, end);
            runtime.block_on(measure(&store, &cli, &queries))?;
        }
        What::Console {
            agents,
            hosts,
            hours,
            loads,
        } => {
            let end = outpost_common::time::now_ns();
            let started = Instant::now();
            register(&store, agents, end)?;
            let span_ns = (hours * 3600.0 * SEC as f64) as i64;
            let stored =
                fill_metrics(&store, &host_template()?, hosts, end - span_ns, end, &|h| {
                    format!("host-{h:06}")
                })?;
            println!(
                "registered {agents} agents and stored {stored} metric points of {hosts} of them in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            let (base, token, _stop) = runtime.block_on(start_api(&store))?;
            console_pages(dir.path(), &base, &token, loads);
        }
    }
    Ok(())
}

/// Signs in to the console at `base` with `token` and loads each page `loads` times, printing
/// the medians of first contentful paint, load event and bytes.
fn console_pages(dir: &Path, base: &str, token: &str, loads: usize) {
    let browser = outpost_tests::Browser::start(dir);
    browser.goto(&format!("{base}/login"));
    browser.fill("#login input[name=token]", token);
    browser.submit("#login");
    browser.wait_for_path("/fleet");
    let pages = [
        ("fleet: first 100 hosts by name", "/fleet".to_owned()),
        (
            "fleet: 100 busiest hosts",
            "/fleet?sort=cpu&dir=desc".to_owned(),
        ),
        (
            "fleet: search `role=web`, offline",
            "/fleet?q=role%3Dweb&status=offline".to_owned(),
        ),
        (
            "host: charts over 24 h",
            "/hosts/host-000042?range=24h".to_owned(),
        ),
        (
            "host: charts over 1 h",
            "/hosts/host-000042?range=1h".to_owned(),
        ),
        ("logs: last hour", "/logs".to_owned()),
    ];
    println!(
        "| page | first contentful paint ms | complete (load event) ms | bytes transferred | bytes compressed (page + assets) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, path) in pages {
        let mut fcp = Vec::new();
        let mut load = Vec::new();
        let mut transfer = Vec::new();
        let mut encoded = Vec::new();
        for _ in 0..loads {
            browser.goto(&format!("{base}{path}"));
            let t = browser.timing();
            fcp.push(t.first_contentful_paint_ms);
            load.push(t.load_ms);
            transfer.push(t.transfer_bytes as f64);
            encoded.push(t.encoded_body_bytes as f64);
        }
        browser.assert_clean(base);
        println!(
            "| {name} (`{path}`) | {:.0} | {:.0} | {:.0} | {:.0} |",
            median(&mut fcp),
            median(&mut load),
            median(&mut transfer),
            median(&mut encoded)
        );
    }
}

/// A named request path to time.
struct Query {
    name: String,
    paths: Vec<String>,
}

/// Registers `n` agents: a Hello and a heartbeat each, spread over statuses (most online, some
/// silent for a day, some never heard from since an old Hello), 3 versions, 2 operating systems
/// and 2 roles.
fn register(store: &SqliteStore, n: usize, now: i64) -> anyhow::Result<()> {
    let mut updates = Vec::with_capacity(2000);
    for i in 0..n {
        let agent_id = format!("host-{i:06}");
        let seen = match i % 10 {
            0 => now - 86_400 * SEC,
            _ => now - (i % 30) as i64 * SEC,
        };
        let version = ["0.1.0", "0.1.1", "0.2.0"][i % 3].to_owned();
        let status = AgentStatus {
            time_ns: seen,
            agent_version: version.clone(),
            started_ns: seen - 3600 * SEC,
            spool_cap_bytes: 1 << 30,
            ..AgentStatus::default()
        };
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: version,
            spool_id: i as u64 + 1,
            host: HostFacts {
                hostname: agent_id.clone(),
                os: ["Debian GNU/Linux 13", "Ubuntu 24.04"][i % 2].to_owned(),
                kernel: "6.12.0".to_owned(),
                arch: "x86_64".to_owned(),
                cpus: 4,
                memory_bytes: 8 << 30,
                boot_time_ns: seen - 86_400 * SEC,
            },
            status: status.clone(),
            labels: vec![("role".to_owned(), ["web", "db"][i % 2].to_owned())],
        };
        updates.push(RegistryUpdate::Hello {
            agent_id: agent_id.clone(),
            hello,
            now_ns: seen,
        });
        updates.push(RegistryUpdate::Heartbeat {
            agent_id,
            status,
            now_ns: seen,
        });
        if updates.len() >= 2000 {
            store.record_all(&updates)?;
            updates.clear();
        }
    }
    store.record_all(&updates)?;
    Ok(())
}

fn fleet_queries() -> Vec<Query> {
    vec![
        Query {
            name: "summary".into(),
            paths: vec!["/api/v1/agents/summary".into()],
        },
        Query {
            name: "list page (status=online, label role=web, 100 by name, pages 1-20)".into(),
            paths: Vec::new(),
        },
    ]
}

/// Records heartbeats of the registered agents in turn, `per_sec` a second in rounds of a tenth
/// of a second, until `stop`; answers how many.
fn heartbeats(
    store: Arc<SqliteStore>,
    agents: usize,
    per_sec: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    std::thread::spawn(move || {
        let per_round = per_sec / 10;
        let mut next = 0usize;
        let mut done = 0u64;
        let mut round = Instant::now();
        while !stop.load(Ordering::Relaxed) && per_round > 0 {
            let now = outpost_common::time::now_ns();
            let updates: Vec<RegistryUpdate> = (0..per_round)
                .map(|k| {
                    let i = (next + k) % agents;
                    RegistryUpdate::Heartbeat {
                        agent_id: format!("host-{i:06}"),
                        status: AgentStatus {
                            time_ns: now,
                            agent_version: ["0.1.0", "0.1.1", "0.2.0"][i % 3].to_owned(),
                            spool_cap_bytes: 1 << 30,
                            ..AgentStatus::default()
                        },
                        now_ns: now,
                    }
                })
                .collect();
            store.record_all(&updates)?;
            next = (next + per_round) % agents;
            done += per_round as u64;
            round += Duration::from_millis(100);
            if let Some(wait) = round.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(done)
    })
}

/// The API over `store` on loopback; answers its base URL and a viewer token.
async fn start_api(
    store: &Arc<SqliteStore>,
) -> anyhow::Result<(String, String, tokio::sync::watch::Sender<bool>)> {
    let now = outpost_common::time::now_ns();
    let viewer = tokens::create("bench", Role::Viewer, now, None);
    store.insert_token(&viewer.record)?;
    let config = ApiConfig {
        fleet: FleetPolicy {
            offline_after: Duration::from_secs(45),
            degraded_window: Duration::from_secs(300),
            backlog_rising_for: Duration::from_secs(60),
        },
        tls_dir: None,
        request_timeout: Duration::from_secs(30),
        max_body: 1 << 20,
        requests_per_sec_per_token: 1_000_000,
        requests_per_sec_per_address: 1_000_000,
        secure_cookies: false,
    };
    let api = Api::new(store.clone(), &config);
    api.set_ingest_up(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(serve(listener, app(api, &config), None, stop));
    Ok((base, viewer.text, stop_tx))
}

/// Times every query `cli.runs` times with `cli.concurrency` requests in flight, and prints
/// p50, p99 and max of each run and their medians.
async fn measure(store: &Arc<SqliteStore>, cli: &Cli, queries: &[Query]) -> anyhow::Result<()> {
    let (base, token, _stop) = start_api(store).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(cli.concurrency)
        .build()?;
    for q in queries {
        let paths = if q.paths.is_empty() {
            list_pages(&http, &base, &token, 20).await?
        } else {
            q.paths.clone()
        };
        // Warm: once each. The first request of all builds the fleet view: what every request
        // cost before views were kept.
        for (i, p) in paths.iter().enumerate() {
            let started = Instant::now();
            get(&http, &base, &token, p).await?;
            if i == 0 {
                println!(
                    "{}: first request {:.1} ms",
                    q.name,
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
        }
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        for run in 0..cli.runs {
            let h = load(&http, &base, &token, &paths, cli.requests, cli.concurrency).await?;
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{}: run {}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests, {} in flight)",
                q.name,
                run + 1,
                ms(0.5),
                ms(0.99),
                h.max() as f64 / 1000.0,
                h.len(),
                cli.concurrency
            );
            p50s.push(ms(0.5));
            p99s.push(ms(0.99));
        }
        println!(
            "{}: median p50 {:.2} ms, median p99 {:.2} ms",
            q.name,
            median(&mut p50s),
            median(&mut p99s)
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn get(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let r = http
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await?;
    let status = r.status();
    let body: serde_json::Value = r.json().await?;
    if !status.is_success() {
        bail!("{path}: {status}: {body}");
    }
    Ok(body)
}

/// The paths of the first `pages` pages of the filtered list, following each page's cursor.
async fn list_pages(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    pages: usize,
) -> anyhow::Result<Vec<String>> {
    let first = "/api/v1/agents?status=online&label=role=web&sort=name&limit=100".to_owned();
    let mut out = vec![first.clone()];
    let mut path = first.clone();
    while out.len() < pages {
        let page = get(http, base, token, &path).await?;
        let Some(next) = page["next_cursor"].as_str() else {
            break;
        };
        path = format!("{first}&cursor={next}");
        out.push(path.clone());
    }
    Ok(out)
}

/// `total` requests over `paths` in turn, `concurrency` at a time; the latency histogram (µs).
async fn load(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    paths: &[String],
    total: usize,
    concurrency: usize,
) -> anyhow::Result<Histogram<u64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, base, token, paths, next) = (
            http.clone(),
            base.to_owned(),
            token.to_owned(),
            paths.to_vec(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(h);
                }
                let started = Instant::now();
                get(&http, &base, &token, &paths[i % paths.len()]).await?;
                h.record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX))?;
            }
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok(all)
}

/// The hosts' values of the template, moving round by round.
struct Rounds<'t> {
    template: &'t [Family],
    /// Per host, per family, per point: the last value.
    values: Vec<Vec<Vec<f64>>>,
    rngs: Vec<u64>,
    /// The shortest family interval: one round.
    tick: i64,
}

impl<'t> Rounds<'t> {
    fn new(template: &'t [Family], hosts: usize) -> Self {
        Rounds {
            template,
            values: (0..hosts)
                .map(|_| template.iter().map(|f| vec![0.0; f.points.len()]).collect())
                .collect(),
            rngs: (0..hosts as u64).map(|h| h * 7919 + 1).collect(),
            tick: template
                .iter()
                .map(|f| f.interval_ns)
                .min()
                .unwrap_or(10 * SEC),
        }
    }

    /// Host `h`'s points of the round at `t`.
    fn host(&mut self, h: usize, t: i64) -> Vec<Event> {
        round_points(self.template, &mut self.values[h], &mut self.rngs[h], t)
    }
}

/// Stores `hosts` × `start..end` of the template through commit and compaction, host `h` as
/// agent `agent_id(h)`; the points.
fn fill_metrics(
    store: &SqliteStore,
    template: &[Family],
    hosts: usize,
    start: i64,
    end: i64,
    agent_id: &dyn Fn(usize) -> String,
) -> anyhow::Result<u64> {
    let mut rounds = Rounds::new(template, hosts);
    let retention = Retention::default();
    let mut stored = 0u64;
    let mut seq = 0u64;
    let mut next_pass = start + 60 * SEC;
    let mut t = start - start.rem_euclid(rounds.tick);
    while t < end {
        seq += 1;
        let batches: Vec<IncomingBatch> = (0..hosts)
            .map(|h| {
                let events = rounds.host(h, t);
                stored += events.len() as u64;
                IncomingBatch {
                    agent_id: agent_id(h),
                    spool_id: 1,
                    seq,
                    low_water_seq: seq,
                    received_ns: t + SEC / 2,
                    events,
                    packed: None,
                }
            })
            .collect();
        for group in batches.chunks(64) {
            store.commit_batches(group)?;
        }
        // Retention runs every minute, on the simulated clock.
        if t >= next_pass {
            store.enforce_retention(&retention, t)?;
            next_pass += 60 * SEC;
        }
        t += rounds.tick;
    }
    // The last spans pack too once their time has passed.
    store.enforce_retention(&retention, end + 2 * 3600 * SEC)?;
    Ok(stored)
}

/// Schema 7's metric rows (one per point, the name and attributes repeated on each), with the
/// same points for `hosts` hosts: the layout the series replaced.
fn fill_old_layout(
    path: &Path,
    template: &[Family],
    hosts: usize,
    start: i64,
    end: i64,
) -> anyhow::Result<u64> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE metrics (
            id INTEGER PRIMARY KEY, agent_key INTEGER NOT NULL, time_ns INTEGER NOT NULL,
            received_ns INTEGER NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, value REAL,
            attributes TEXT, unit TEXT NOT NULL DEFAULT '');",
    )?;
    let mut rounds = Rounds::new(template, hosts);
    let mut stored = 0u64;
    let mut t = start - start.rem_euclid(rounds.tick);
    while t < end {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO metrics (agent_key, time_ns, received_ns, name, kind, value, attributes, unit)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for h in 0..hosts {
                for e in rounds.host(h, t) {
                    let Event::Metric(m) = e else { continue };
                    let attributes = (!m.attributes.is_empty()).then(|| {
                        serde_json::Value::Object(
                            m.attributes
                                .iter()
                                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                                .collect(),
                        )
                        .to_string()
                    });
                    let kind = if m.kind == MetricKind::Counter {
                        "counter"
                    } else {
                        "gauge"
                    };
                    insert.execute(rusqlite::params![
                        h as i64 + 1,
                        m.time_ns,
                        m.time_ns + SEC / 2,
                        m.name,
                        kind,
                        m.value,
                        attributes,
                        m.unit
                    ])?;
                    stored += 1;
                }
            }
        }
        tx.commit()?;
        t += rounds.tick;
    }
    Ok(stored)
}

/// The database's size once its log is checkpointed into it.
fn settled_bytes(path: &Path) -> anyhow::Result<u64> {
    let conn = rusqlite::Connection::open(path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(std::fs::metadata(path)?.len())
}

fn metric_queries(hosts: usize, start: i64, end: i64) -> Vec<Query> {
    let hour = 3600 * SEC;
    vec![
        Query {
            name: format!("one host's idle CPU over the whole span at 500 points ({} hosts, one per request)", hosts.min(20)),
            paths: (0..hosts.min(20))
                .map(|h| {
                    format!(
                        "/api/v1/metrics/query?name=system.cpu.utilization&agent_id=host-{h:03}&match=cpu%3D&match=state%3Didle&since_ns={start}&until_ns={end}&points=500"
                    )
                })
                .collect(),
        },
        Query {
            name: "the fleet's average idle CPU over the last hour (60 steps)".into(),
            paths: vec![format!(
                "/api/v1/metrics/query?name=system.cpu.utilization&match=cpu%3D&match=state%3Didle&since_ns={}&until_ns={end}&step=1m&combine=avg",
                end - hour
            )],
        },
    ]
}
