//! The API's query latency over a large store: a fleet's week of host metrics and log records,
//! generated, stored through an event store's own commit, then three queries timed through the
//! HTTP API of a real aggregator on each store.
//!
//! The data ([`Shape`]): `agents` hosts, each sending a round of the default host metrics of
//! this machine's agent (every family, every point: [`crate::hostsim`]) every `metric_interval`,
//! and log lines (web server, sshd, cron, kernel, an application; about one in a hundred says
//! `timed out`) every `log_interval` on average, in compressed batches every `log_batch`, as an
//! agent with the default `[spool] compression` sends them. Each host has its own phase, so the
//! fleet's rounds are spread over time. Everything is a pure function of the shape and a host's
//! number, so the expected answers can be worked out again without the store.
//!
//! [`load`] commits the batches in time order in groups no larger than the aggregator's store
//! writer makes (512 batches, 100,000 events), running retention (and so, in the embedded store,
//! the packing of metric points into chunks) every 10 minutes of event time, and once more at the
//! end so that the store is as it is days later: every point packed.
//!
//! [`queries`] are the three requests; [`measure`] times them against running aggregators and
//! checks every answer's size against [`expected`].
//!
//! ```no_run
//! use outpost_tests::querybench::{self, Shape};
//!
//! let shape = Shape::small(outpost_common::time::now_ns());
//! let template = outpost_tests::hostsim::host_template()?;
//! let store = outpost_aggregator::store::SqliteStore::open("/tmp/q/aggregator.db".as_ref())?;
//! let report = querybench::load(&store, &shape, &template, false)?;
//! println!("{} rows", report.rows());
//! # anyhow::Ok(())
//! ```

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use outpost_aggregator::api::SCAN_PER_PAGE;
use outpost_aggregator::store::{EventStore, IncomingBatch, PackedEvents, Retention};
use outpost_common::event::{Event, LogRecord, MetricPoint, Severity};
use outpost_common::wire::{Codec, Packer, encode_events};
use serde::{Deserialize, Serialize};

use crate::hostsim::{Family, next_value};

const SEC: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SEC;
const HOUR: i64 = 3600 * SEC;
const DAY: i64 = 24 * HOUR;

/// The most batches and events one commit carries: the store writer's defaults
/// (`ingest.max_batches_per_txn`, `ingest.max_events_per_txn`).
const GROUP_BATCHES: usize = 512;
const GROUP_EVENTS: usize = 100_000;

/// How often, in event time, the loader runs retention (which packs metric points).
const RETENTION_EVERY: i64 = 10 * MINUTE;

/// What the log search looks for: in about one line in a hundred.
pub const SEARCH_TEXT: &str = "timed out";

/// Items per page of the log search.
const LOG_PAGE: usize = 100;

/// The metric the two metric queries read, and the series of each host they select.
const CPU: &str = "system.cpu.utilization";
const CPU_IDLE: &str = "match=cpu%3D&match=state%3Didle";

/// What is stored: which hosts, over which time, at which rates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub agents: usize,
    /// Event times lie in `end_ns - span_ns .. end_ns`.
    pub end_ns: i64,
    pub span_ns: i64,
    /// Time between two rounds of one host's metrics.
    pub metric_interval_ns: i64,
    /// Average time between two log lines of one host.
    pub log_interval_ns: i64,
    /// Time between two log batches of one host; a batch holds the lines since the last.
    pub log_batch_ns: i64,
}

impl Shape {
    /// A few thousand rows: 3 hosts over 6 hours (what the end-to-end test loads).
    pub fn small(now_ns: i64) -> Shape {
        Shape {
            agents: 3,
            end_ns: now_ns - now_ns.rem_euclid(MINUTE),
            span_ns: 6 * HOUR,
            metric_interval_ns: 10 * MINUTE,
            log_interval_ns: 20 * SEC,
            log_batch_ns: 5 * MINUTE,
        }
    }

    pub fn start_ns(&self) -> i64 {
        self.end_ns - self.span_ns
    }

    /// Checks that the shape makes sense.
    pub fn check(&self) -> Result<(), String> {
        if self.agents == 0 || self.agents > 100_000 {
            return Err("agents must be 1 to 100,000".to_owned());
        }
        if self.span_ns < HOUR {
            return Err("the span must be at least an hour".to_owned());
        }
        if self.metric_interval_ns < SEC || self.log_interval_ns < SEC {
            return Err("the metric and log intervals must be at least 1 s".to_owned());
        }
        if self.log_batch_ns < self.log_interval_ns {
            return Err("a log batch must span at least one log interval".to_owned());
        }
        Ok(())
    }

    /// The id of host `a`.
    pub fn agent_id(&self, a: usize) -> String {
        format!("host-{a:04}")
    }

    /// When host `a` sends its `k`-th metric round.
    fn metric_time(&self, a: usize, k: u64) -> i64 {
        let phase = (mix(a as u64, 1) % self.metric_interval_ns.cast_unsigned()).cast_signed();
        self.start_ns() + phase + k as i64 * self.metric_interval_ns
    }

    /// When host `a` sends its `k`-th log batch (holding the lines of the `log_batch` before).
    fn log_batch_time(&self, a: usize, k: u64) -> i64 {
        let phase = (mix(a as u64, 2) % self.log_batch_ns.cast_unsigned()).cast_signed();
        self.start_ns() + phase + k as i64 * self.log_batch_ns
    }

    /// Every metric round time of host `a`, oldest first.
    fn metric_times(&self, a: usize) -> impl Iterator<Item = i64> + '_ {
        (0..)
            .map(move |k| self.metric_time(a, k))
            .take_while(|&t| t < self.end_ns)
    }

    /// The log records of host `a`'s `k`-th batch, oldest first.
    fn log_lines(&self, a: usize, k: u64) -> Vec<LogRecord> {
        let end = self.log_batch_time(a, k);
        let lines = (self.log_batch_ns / self.log_interval_ns).max(1);
        let mut rng = mix(a as u64, 3 + k);
        (0..lines)
            .map(|i| {
                // Spread over the batch's span, a little jitter each.
                let slot = self.log_batch_ns / lines;
                let jitter = (next(&mut rng) % slot.cast_unsigned().max(1)).cast_signed();
                let time_ns = end - self.log_batch_ns + i * slot + jitter;
                log_line(time_ns, &mut rng)
            })
            .filter(|l| l.time_ns < self.end_ns)
            .collect()
    }
}

/// One log line of a host at `time_ns`: a mix of what hosts log.
fn log_line(time_ns: i64, rng: &mut u64) -> LogRecord {
    const USERS: [&str; 6] = ["root", "deploy", "alice", "bob", "backup", "git"];
    const PATHS: [&str; 5] = ["orders", "items", "users", "carts", "search"];
    let r = next(rng);
    let ip = |rng: &mut u64| {
        let n = next(rng);
        format!("10.{}.{}.{}", n % 256, (n >> 8) % 256, (n >> 16) % 254 + 1)
    };
    let user = USERS[(r >> 8) as usize % USERS.len()];
    let path = PATHS[(r >> 12) as usize % PATHS.len()];
    let n = next(rng);
    let (source, severity, body, attributes): (&str, Severity, String, Vec<(String, String)>) =
        match r % 100 {
            0..=29 => (
                "/var/log/nginx/access.log",
                Severity::Info,
                format!(
                    "{} - - \"GET /api/v1/{path}/{} HTTP/1.1\" {} {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\"",
                    ip(rng),
                    n % 100_000,
                    [200, 200, 200, 304, 404, 500][(n >> 20) as usize % 6],
                    (n >> 24) % 50_000
                ),
                Vec::new(),
            ),
            30..=44 => (
                "journal",
                Severity::Info,
                format!("Started Session {} of User {user}.", n % 100_000),
                vec![("systemd.unit".into(), "systemd-logind.service".into())],
            ),
            45..=54 => (
                "journal",
                Severity::Info,
                format!(
                    "Accepted publickey for {user} from {} port {} ssh2: ED25519 SHA256:{:016x}",
                    ip(rng),
                    n % 60_000 + 1024,
                    next(rng)
                ),
                vec![("systemd.unit".into(), "ssh.service".into())],
            ),
            55..=59 => (
                "journal",
                Severity::Warning,
                format!(
                    "Failed password for invalid user {user}{} from 203.0.113.{} port {} ssh2",
                    n % 100,
                    (n >> 8) % 254 + 1,
                    (n >> 16) % 60_000 + 1024
                ),
                vec![("systemd.unit".into(), "ssh.service".into())],
            ),
            60..=69 => (
                "/var/log/syslog",
                Severity::Info,
                format!(
                    "CRON[{}]: ({user}) CMD (run-parts /etc/cron.hourly)",
                    n % 32_768
                ),
                Vec::new(),
            ),
            70..=79 => (
                "/var/log/app/app.log",
                Severity::Info,
                format!(
                    "request {:016x} {path} completed in {} ms status=200",
                    next(rng),
                    n % 900 + 3
                ),
                Vec::new(),
            ),
            80..=89 => (
                "/var/log/kern.log",
                Severity::Warning,
                format!(
                    "[UFW BLOCK] IN=eth0 OUT= MAC= SRC={} DST=10.0.0.5 LEN=60 TOS=0x00 PROTO=TCP SPT={} DPT={}",
                    ip(rng),
                    n % 60_000 + 1024,
                    [22, 23, 3389, 5432, 6379][(n >> 20) as usize % 5]
                ),
                Vec::new(),
            ),
            90..=97 => (
                "/var/log/app/app.log",
                Severity::Debug,
                format!(
                    "cache refresh of {path} took {} ms ({} keys)",
                    n % 400 + 1,
                    (n >> 12) % 90_000
                ),
                Vec::new(),
            ),
            98 => (
                "/var/log/nginx/error.log",
                Severity::Error,
                format!(
                    "upstream timed out (110: Connection timed out) while reading response header from upstream, client: {}, server: _, request: \"GET /api/v1/{path}/{} HTTP/1.1\"",
                    ip(rng),
                    n % 100_000
                ),
                Vec::new(),
            ),
            _ => (
                "/var/log/kern.log",
                Severity::Error,
                format!(
                    "Out of memory: Killed process {} (java) total-vm:{}kB, anon-rss:{}kB",
                    n % 4_000_000,
                    (n >> 8) % 9_000_000,
                    (n >> 32) % 4_000_000
                ),
                Vec::new(),
            ),
        };
    LogRecord {
        time_ns,
        source: source.to_owned(),
        severity: Some(severity),
        body,
        attributes,
    }
}

/// SplitMix64 of `x` and a salt: a well-spread number per host and purpose.
fn mix(x: u64, salt: u64) -> u64 {
    let mut z = x
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The next number of a SplitMix64 stream.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix(*state, 0)
}

/// One host's generator state.
struct Host {
    metric_k: u64,
    log_k: u64,
    seq: u64,
    values: Vec<Vec<f64>>,
    rng: u64,
}

/// The batches of the whole shape, in time order, in groups the size of a writer's commit;
/// `sink` gets each group and the event time it was made at.
pub fn generate(
    shape: &Shape,
    template: &[Family],
    mut sink: impl FnMut(Vec<IncomingBatch>, i64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut hosts: Vec<Host> = (0..shape.agents)
        .map(|a| Host {
            metric_k: 0,
            log_k: 0,
            seq: 0,
            values: template.iter().map(|f| vec![0.0; f.points.len()]).collect(),
            rng: mix(a as u64, 4),
        })
        .collect();
    let agent_ids: Vec<String> = (0..shape.agents).map(|a| shape.agent_id(a)).collect();
    let mut packer = Packer::new(Codec::Zstd).context("starting zstd")?;
    let mut group: Vec<IncomingBatch> = Vec::new();
    let mut group_events = 0;
    let mut tick = shape.start_ns();
    while tick < shape.end_ns {
        let tick_end = (tick + MINUTE).min(shape.end_ns);
        for (a, host) in hosts.iter_mut().enumerate() {
            loop {
                let t = shape.metric_time(a, host.metric_k);
                if t >= tick_end {
                    break;
                }
                host.metric_k += 1;
                let mut events = Vec::new();
                for (fi, f) in template.iter().enumerate() {
                    for (pi, p) in f.points.iter().enumerate() {
                        let v = next_value(p, host.values[fi][pi], &mut host.rng);
                        host.values[fi][pi] = v;
                        events.push(Event::Metric(MetricPoint {
                            time_ns: t,
                            value: v,
                            ..p.clone()
                        }));
                    }
                }
                host.seq += 1;
                push(
                    &mut group,
                    &mut group_events,
                    batch(&agent_ids[a], host.seq, t, events, None),
                    tick_end,
                    &mut sink,
                )?;
            }
            loop {
                let t = shape.log_batch_time(a, host.log_k);
                if t >= tick_end {
                    break;
                }
                let events: Vec<Event> = shape
                    .log_lines(a, host.log_k)
                    .into_iter()
                    .map(Event::Log)
                    .collect();
                host.log_k += 1;
                if events.is_empty() {
                    continue;
                }
                let packed = pack(&mut packer, &events)?;
                host.seq += 1;
                push(
                    &mut group,
                    &mut group_events,
                    batch(&agent_ids[a], host.seq, t, events, packed),
                    tick_end,
                    &mut sink,
                )?;
            }
        }
        tick = tick_end;
    }
    if !group.is_empty() {
        sink(group, shape.end_ns)?;
    }
    Ok(())
}

/// Adds `b` to the group, handing the group to `sink` first when `b` would not fit.
fn push(
    group: &mut Vec<IncomingBatch>,
    events: &mut usize,
    b: IncomingBatch,
    now_ns: i64,
    sink: &mut impl FnMut(Vec<IncomingBatch>, i64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !group.is_empty()
        && (group.len() == GROUP_BATCHES || *events + b.events.len() > GROUP_EVENTS)
    {
        sink(std::mem::take(group), now_ns)?;
        *events = 0;
    }
    *events += b.events.len();
    group.push(b);
    Ok(())
}

fn batch(
    agent_id: &str,
    seq: u64,
    sent_ns: i64,
    events: Vec<Event>,
    packed: Option<PackedEvents>,
) -> IncomingBatch {
    IncomingBatch {
        agent_id: agent_id.to_owned(),
        spool_id: 1,
        seq,
        low_water_seq: seq,
        received_ns: sent_ns + SEC / 2,
        events,
        packed,
    }
}

/// `events` encoded and compressed as an agent does (`None` if that would not make them smaller).
fn pack(packer: &mut Packer, events: &[Event]) -> anyhow::Result<Option<PackedEvents>> {
    let raw = encode_events(events).context("encoding a log batch")?;
    Ok(packer
        .pack(&raw)
        .context("compressing a log batch")?
        .map(|data| PackedEvents {
            codec: Codec::Zstd,
            raw_bytes: u32::try_from(raw.len()).unwrap_or(u32::MAX),
            data,
        }))
}

/// What [`load`] stored, and how long it took.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub metric_points: u64,
    pub logs: u64,
    pub batches: u64,
    pub commits: u64,
    /// Seconds committing (and, concurrently, generating).
    pub commit_secs: f64,
    /// Seconds in retention passes (packing metric points, in the embedded store).
    pub retention_secs: f64,
    /// The whole load.
    pub total_secs: f64,
}

impl LoadReport {
    pub fn rows(&self) -> u64 {
        self.metric_points + self.logs
    }
}

/// Stores the whole shape in `store` through its commit, with retention every 10 minutes of
/// event time and once more after the end; batches are made on a thread of their own while the
/// store commits. With `progress`, a line on stderr now and then.
pub fn load(
    store: &dyn EventStore,
    shape: &Shape,
    template: &[Family],
    progress: bool,
) -> anyhow::Result<LoadReport> {
    shape.check().map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let retention = Retention::default();
    let mut report = LoadReport::default();
    let (tx, rx) = mpsc::sync_channel::<(Vec<IncomingBatch>, i64)>(4);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let maker = scope.spawn(move || {
            generate(shape, template, |group, now| {
                tx.send((group, now))
                    .map_err(|_| anyhow::anyhow!("the loader stopped"))
            })
        });
        let mut next_retention = shape.start_ns() + RETENTION_EVERY;
        let mut next_report = Instant::now() + Duration::from_secs(30);
        for (group, now) in rx {
            let t = Instant::now();
            let answers = store.commit_batches(&group).context("committing a group")?;
            report.commit_secs += t.elapsed().as_secs_f64();
            report.commits += 1;
            for (b, answer) in group.iter().zip(&answers) {
                if answer.outcome() != outpost_aggregator::store::CommitOutcome::Stored {
                    bail!(
                        "batch {} of {} was not stored: {answer:?}",
                        b.seq,
                        b.agent_id
                    );
                }
                report.batches += 1;
                for e in &b.events {
                    match e {
                        Event::Metric(_) => report.metric_points += 1,
                        _ => report.logs += 1,
                    }
                }
            }
            if now >= next_retention {
                let t = Instant::now();
                store
                    .enforce_retention(&retention, now)
                    .context("running retention")?;
                report.retention_secs += t.elapsed().as_secs_f64();
                next_retention = now + RETENTION_EVERY;
            }
            if progress && Instant::now() >= next_report {
                next_report += Duration::from_secs(30);
                let done = (now - shape.start_ns()) as f64 / shape.span_ns as f64;
                eprintln!(
                    "  {:5.1} % of the span, {} rows, {:.0} rows/s",
                    done * 100.0,
                    report.rows(),
                    report.rows() as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        maker
            .join()
            .map_err(|_| anyhow::anyhow!("the batch maker panicked"))??;
        Ok(())
    })?;
    // Days later, every point is packed.
    let t = Instant::now();
    store
        .enforce_retention(&retention, shape.end_ns + 2 * retention_chunk(&retention))
        .context("running retention after the end")?;
    report.retention_secs += t.elapsed().as_secs_f64();
    report.total_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

fn retention_chunk(retention: &Retention) -> i64 {
    i64::try_from(retention.metric_chunk.as_nanos()).unwrap_or(HOUR)
}

/// One of the three queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One host's idle CPU over the whole span at 500 points.
    HostCpu,
    /// The fleet's average idle CPU over the last hour, a step a minute.
    FleetCpu,
    /// The first page of log records containing [`SEARCH_TEXT`] over the last day (or the whole
    /// span, when shorter), the whole fleet's.
    LogSearch,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::HostCpu, Kind::FleetCpu, Kind::LogSearch];

    pub fn describe(self, shape: &Shape) -> String {
        match self {
            Kind::HostCpu => format!(
                "one host's CPU over {} at 500 points",
                span_text(shape.span_ns)
            ),
            Kind::FleetCpu => format!(
                "the fleet's CPU ({} hosts) over 1 h, step 1 m",
                shape.agents
            ),
            Kind::LogSearch => format!(
                "log search `{SEARCH_TEXT}`, whole fleet, last {}, first page of {LOG_PAGE}",
                span_text(log_range(shape).end - log_range(shape).start)
            ),
        }
    }
}

fn span_text(ns: i64) -> String {
    if ns % DAY == 0 {
        format!("{} d", ns / DAY)
    } else {
        format!("{} h", ns / HOUR)
    }
}

/// A request: its path, and the host it is about (for [`Kind::HostCpu`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub kind: Kind,
    pub path: String,
    pub host: Option<usize>,
}

/// The log search's time range.
fn log_range(shape: &Shape) -> std::ops::Range<i64> {
    (shape.end_ns - DAY).max(shape.start_ns())..shape.end_ns
}

/// The request of `kind` for run `run`: the host query asks about another host each run.
pub fn query(shape: &Shape, kind: Kind, run: usize) -> Query {
    let end = shape.end_ns;
    match kind {
        Kind::HostCpu => {
            let host = (run * 97 + 13) % shape.agents;
            Query {
                kind,
                path: format!(
                    "/api/v1/metrics/query?name={CPU}&agent_id={}&{CPU_IDLE}&since_ns={}&until_ns={end}&points=500",
                    shape.agent_id(host),
                    shape.start_ns()
                ),
                host: Some(host),
            }
        }
        Kind::FleetCpu => Query {
            kind,
            path: format!(
                "/api/v1/metrics/query?name={CPU}&{CPU_IDLE}&since_ns={}&until_ns={end}&step=1m&combine=avg",
                end - HOUR
            ),
            host: None,
        },
        Kind::LogSearch => {
            let range = log_range(shape);
            Query {
                kind,
                path: format!(
                    "/api/v1/logs?contains={}&since_ns={}&until_ns={}&limit={LOG_PAGE}",
                    SEARCH_TEXT.replace(' ', "%20"),
                    range.start,
                    range.end
                ),
                host: None,
            }
        }
    }
}

/// The three queries of run `run`.
pub fn queries(shape: &Shape, run: usize) -> Vec<Query> {
    Kind::ALL.iter().map(|&k| query(shape, k, run)).collect()
}

/// How many values an answer holds: the points of a metric answer's series, the items of a page
/// of logs.
pub fn answer_size(kind: Kind, answer: &serde_json::Value) -> Result<usize, String> {
    let count = |v: &serde_json::Value| v.as_array().map(Vec::len);
    match kind {
        Kind::HostCpu | Kind::FleetCpu => {
            let series = answer["series"]
                .as_array()
                .ok_or_else(|| format!("no `series` in {answer}"))?;
            if series.len() != 1 {
                return Err(format!("{} series, expected one", series.len()));
            }
            count(&series[0]["points"]).ok_or_else(|| format!("no points in {answer}"))
        }
        Kind::LogSearch => count(&answer["items"]).ok_or_else(|| format!("no `items` in {answer}")),
    }
}

/// How many values the answer to `q` must hold, given the step the answer used (metric
/// queries).
pub fn expected(shape: &Shape, q: &Query, step_ns: i64) -> usize {
    let buckets = |range: std::ops::Range<i64>, times: &mut dyn Iterator<Item = i64>| {
        let mut seen: Vec<i64> = times
            .filter(|t| range.contains(t))
            .map(|t| (t - range.start) / step_ns.max(1))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    };
    match q.kind {
        Kind::HostCpu => {
            let host = q.host.unwrap_or(0);
            buckets(
                shape.start_ns()..shape.end_ns,
                &mut shape.metric_times(host),
            )
        }
        Kind::FleetCpu => buckets(
            shape.end_ns - HOUR..shape.end_ns,
            &mut (0..shape.agents).flat_map(|a| shape.metric_times(a)),
        ),
        Kind::LogSearch => expected_log_page(shape),
    }
}

/// The first page of the log search as the API makes it: the records in range, in commit
/// order, until a page is full or [`SCAN_PER_PAGE`] records were looked at.
fn expected_log_page(shape: &Shape) -> usize {
    let range = log_range(shape);
    // Commit order: by the minute each batch was sent in, then by host, then within the batch.
    let mut batches: Vec<(i64, usize, u64)> = Vec::new();
    for a in 0..shape.agents {
        let mut k = 0;
        loop {
            let t = shape.log_batch_time(a, k);
            if t >= shape.end_ns {
                break;
            }
            // Lines are never older than their batch's span.
            if t >= range.start {
                let minute = (t - shape.start_ns()) / MINUTE;
                batches.push((minute, a, k));
            }
            k += 1;
        }
    }
    batches.sort_unstable();
    let (mut looked, mut found) = (0, 0);
    for (_, a, k) in batches {
        for line in shape.log_lines(a, k) {
            if !range.contains(&line.time_ns) {
                continue;
            }
            looked += 1;
            if line.body.contains(SEARCH_TEXT) {
                found += 1;
                if found == LOG_PAGE {
                    return found;
                }
            }
            if looked == SCAN_PER_PAGE {
                return found;
            }
        }
    }
    found
}

/// An aggregator's API to time.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub base_url: String,
    pub token: String,
}

/// The latencies of one query on one target.
#[derive(Debug, Clone)]
pub struct Timing {
    pub kind: Kind,
    pub target: String,
    /// The warm-up request (run 0), not counted.
    pub warm_up: Duration,
    pub runs: Vec<Duration>,
    /// Values in the answers (points or items), of the warm-up and each run.
    pub sizes: Vec<usize>,
}

impl Timing {
    pub fn median(&self) -> Duration {
        let mut v = self.runs.clone();
        v.sort_unstable();
        match v.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2,
        }
    }

    pub fn max(&self) -> Duration {
        self.runs.iter().copied().max().unwrap_or_default()
    }
}

/// Times each query on every target: a warm-up request, then `runs` measured ones, the targets
/// taking turns request by request. Every answer's size is checked against [`expected`]; the
/// first that differs is an error.
pub fn measure(
    shape: &Shape,
    targets: &[Target],
    runs: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Timing>> {
    let http = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()?;
    let mut out = Vec::new();
    for kind in Kind::ALL {
        let mut timings: Vec<Timing> = targets
            .iter()
            .map(|t| Timing {
                kind,
                target: t.name.clone(),
                warm_up: Duration::ZERO,
                runs: Vec::new(),
                sizes: Vec::new(),
            })
            .collect();
        for run in 0..=runs {
            let q = query(shape, kind, run);
            for (target, timing) in targets.iter().zip(&mut timings) {
                let started = Instant::now();
                let answer: serde_json::Value = {
                    let r = http
                        .get(format!("{}{}", target.base_url, q.path))
                        .bearer_auth(&target.token)
                        .send()
                        .with_context(|| format!("{}: {}", target.name, q.path))?;
                    let status = r.status();
                    let text = r.text()?;
                    if !status.is_success() {
                        bail!("{}: {}: {status}: {text}", target.name, q.path);
                    }
                    serde_json::from_str(&text)
                        .with_context(|| format!("{}: {}: not JSON", target.name, q.path))?
                };
                let took = started.elapsed();
                let size = answer_size(kind, &answer)
                    .map_err(|e| anyhow::anyhow!("{}: {}: {e}", target.name, q.path))?;
                let want = expected(shape, &q, answer["step_ns"].as_i64().unwrap_or(1));
                if size != want {
                    bail!(
                        "{}: {}: {size} values in the answer, {want} expected",
                        target.name,
                        q.path
                    );
                }
                if run == 0 {
                    timing.warm_up = took;
                } else {
                    timing.runs.push(took);
                }
                timing.sizes.push(size);
            }
        }
        out.extend(timings);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_send_at_their_own_phase_within_the_span() {
        let shape = Shape::small(1_700_000_000 * SEC);
        let times: Vec<i64> = shape.metric_times(1).collect();
        assert_eq!(times.len() as i64, shape.span_ns / shape.metric_interval_ns);
        assert!(
            times
                .iter()
                .all(|t| (shape.start_ns()..shape.end_ns).contains(t))
        );
        assert_ne!(shape.metric_time(0, 0), shape.metric_time(1, 0));
    }

    #[test]
    fn log_lines_are_varied_and_about_one_in_a_hundred_is_searched_for() {
        let shape = Shape {
            agents: 1,
            span_ns: 7 * DAY,
            ..Shape::small(1_700_000_000 * SEC)
        };
        let lines: Vec<LogRecord> = (0..200).flat_map(|k| shape.log_lines(0, k)).collect();
        assert_eq!(lines.len(), 200 * 15);
        let found = lines
            .iter()
            .filter(|l| l.body.contains(SEARCH_TEXT))
            .count();
        assert!((5..=80).contains(&found), "{found} of {}", lines.len());
        let sources: std::collections::BTreeSet<&str> =
            lines.iter().map(|l| l.source.as_str()).collect();
        assert!(sources.len() >= 5, "{sources:?}");
        assert_eq!(
            shape.log_lines(0, 7),
            shape.log_lines(0, 7),
            "a pure function"
        );
    }
}
