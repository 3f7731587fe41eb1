//! One measured run: start the aggregator, start every agent at t0, watch the store until the
//! last pre-filled event is committed at t1, read the CPU and memory figures for [t0, t1], then
//! stop everything and collect the agents' acknowledgement latencies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use outpost_agent::collectors::Source;
use outpost_agent::collectors::synthetic::Synthetic;
use outpost_aggregator::store::SqliteReader;
use outpost_common::event::Event;
use rusqlite::{Connection, OpenFlags};

use crate::agent_log;
use crate::procs::{self, MachineTicks, POLL, Proc};
use crate::report::{self, AckLatency, PEAK_WINDOW, RunResult};
use crate::setup::World;

/// What every run shares.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bin_dir: PathBuf,
    pub events_total: u64,
    /// Give up a run whose events are not all committed this long after t0.
    pub timeout: Duration,
    /// Where the temporary directories go; the system's default if `None`.
    pub work_dir: Option<PathBuf>,
    /// Keep every run's directory; a failed run's is always kept.
    pub keep: bool,
    /// Start a run only once the machine's busy time over a second is below this (percent of
    /// one core), waiting at most `quiet_wait`: other work on a shared machine takes the cores
    /// the measured programs need.
    pub quiet_below_pct: f64,
    pub quiet_wait: Duration,
}

/// How long the aggregator may take to write `listen.addr`.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a SIGTERM'd program may take to shut down before it is killed. The agent waits at
/// most 5 s for outstanding acknowledgements.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// How often, in polls of the store, the children are checked for having died.
const CHECK_CHILDREN_EVERY: u32 = 10;

/// Runs `agents` agents against one aggregator once.
pub fn run_once(plan: &Plan, agents: usize, run: usize) -> anyhow::Result<RunResult> {
    eprintln!("[{agents} agents, run {run}] preparing PKI and pre-filling spools");
    let world = World::build(plan.work_dir.as_deref(), agents, plan.events_total)?;
    let result = measure(plan, &world, run);
    let root = world.dir.path().to_owned();
    if result.is_err() || plan.keep {
        let kept = world.dir.keep();
        eprintln!("[{agents} agents, run {run}] kept {}", kept.display());
    }
    result.with_context(|| format!("{agents} agents, run {run} (directory {})", root.display()))
}

fn measure(plan: &Plan, world: &World, run: usize) -> anyhow::Result<RunResult> {
    let n = world.agents.len();
    let label = format!("[{n} agents, run {run}]");
    let expected = world.events();
    let agg_config = world.aggregator.load()?;
    let mut aggregator = vec![Proc::spawn(
        "aggregator".to_owned(),
        &plan.bin_dir.join("outpost-aggregator"),
        &world.aggregator.config,
        world.aggregator.stderr(),
    )?];
    let addr = procs::wait_for_line(
        &agg_config.listen_file(),
        &mut aggregator[0],
        START_DEADLINE,
    )?;
    let port: u16 = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("`{addr}` in listen.addr is not a socket address"))?;
    world.write_agent_configs(port)?;
    let mut probe = StoreProbe::open(&agg_config.store_path())?;
    ensure!(
        probe.committed()? == 0,
        "the store is not empty before the agents start"
    );
    let background = wait_for_quiet(plan, &label)?;

    eprintln!("{label} aggregator on {addr}; starting agents");
    let agg_pid = aggregator[0].pid();
    let before = Snapshot::take(agg_pid)?;
    let mut agents = Vec::with_capacity(n);
    for a in &world.agents {
        let name = format!("agent {}", a.id);
        agents.push(Proc::spawn(
            name,
            &plan.bin_dir.join("outpost-agent"),
            &a.config(),
            a.stderr(),
        )?);
    }
    let samples = wait_until_committed(
        plan,
        &mut probe,
        expected,
        before.at,
        &mut aggregator,
        &mut agents,
    )?;
    let after = Snapshot::take(agg_pid)?;
    // The agents started at or after t0, so everything they used so far lies in the window.
    let mut agent_ticks = 0;
    for p in &agents {
        agent_ticks += procs::process_ticks(p.pid())?;
    }
    // The socket is new and nothing reached it before t0, so its whole count lies in the window.
    let udp_drops = procs::udp_socket_drops(port)?
        .with_context(|| format!("no UDP socket on port {port} in /proc/net/udp"))?;
    let peak_rss = procs::peak_rss_bytes(agg_pid)?;
    // t1 is the poll that saw the last event; the CPU window ends with the counters read just
    // after it, a fraction of a millisecond later.
    let window = after.at - before.at;
    let elapsed = samples.last().map_or(window, |&(t, _)| t);
    eprintln!(
        "{label} {expected} events committed in {:.2} s; stopping",
        elapsed.as_secs_f64()
    );

    let killed = procs::terminate(&mut agents, STOP_GRACE);
    ensure!(
        killed.is_empty(),
        "did not stop on SIGTERM: {}",
        killed.join(", ")
    );
    let logs = world
        .agents
        .iter()
        .map(|a| agent_log::read(&a.log_dir()).with_context(|| format!("agent {}", a.id)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let summaries: Vec<_> = logs.iter().map(|l| l.summary).collect();
    let connects: Vec<_> = logs.iter().map(|l| l.connect).collect();
    let (stored, unique) = (
        probe.count()?,
        probe.unique(world.agents.iter().map(|a| a.id.as_str()))?,
    );
    drop(probe);
    let killed = procs::terminate(&mut aggregator, STOP_GRACE);
    ensure!(killed.is_empty(), "the aggregator did not stop on SIGTERM");
    ensure!(
        stored == expected && unique == expected,
        "the store holds {stored} log records ({unique} distinct events); {expected} were sent"
    );

    let pct = |ticks: u64| procs::ticks_pct(ticks, window);
    Ok(RunResult {
        agents: n,
        run,
        events: expected,
        payload_bytes: world.payload_bytes(),
        elapsed,
        first_commit: samples
            .iter()
            .find(|&&(_, count)| count > 0)
            .map_or(elapsed, |&(t, _)| t),
        peak_events_per_sec: report::peak_rate(&samples, PEAK_WINDOW),
        ack: AckLatency::over_agents(&summaries),
        connect_p50: report::median_duration(&connects),
        connect_max: connects.iter().max().copied().unwrap_or_default(),
        aggregator_cpu_pct: pct(after.aggregator.saturating_sub(before.aggregator)),
        aggregator_threads_pct: procs::thread_delta_pct(&before.threads, &after.threads, window),
        aggregator_rss_mib: peak_rss as f64 / (1024.0 * 1024.0),
        agents_cpu_pct: pct(agent_ticks),
        bench_cpu_pct: pct(after.own.saturating_sub(before.own)),
        background_pct: background,
        machine_busy_pct: pct(after.machine.busy.saturating_sub(before.machine.busy)),
        machine_iowait_pct: pct(after.machine.iowait.saturating_sub(before.machine.iowait)),
        udp_drops,
        udp_datagrams_in: after.udp_in.saturating_sub(before.udp_in),
    })
}

/// Polls the store until it holds `expected` events, failing if a child dies or the plan's
/// timeout passes. Returns every poll's time since `t0` and the count it saw.
fn wait_until_committed(
    plan: &Plan,
    probe: &mut StoreProbe,
    expected: u64,
    t0: Instant,
    aggregator: &mut [Proc],
    agents: &mut [Proc],
) -> anyhow::Result<Vec<(Duration, u64)>> {
    let mut samples = Vec::new();
    let mut polls = 0u32;
    loop {
        let committed = probe.committed()?;
        samples.push((t0.elapsed(), committed));
        if committed >= expected {
            return Ok(samples);
        }
        if t0.elapsed() > plan.timeout {
            bail!(
                "only {committed} of {expected} events committed {:?} after the agents started; \
                 see the logs under the run's directory",
                plan.timeout
            );
        }
        polls += 1;
        if polls.is_multiple_of(CHECK_CHILDREN_EVERY) {
            for p in aggregator.iter_mut().chain(agents.iter_mut()) {
                p.ensure_running()?;
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Counters read at t0 and again at t1; the figures of a run are their differences. They only
/// grow, except the kernel's iowait, which may step back on tickless kernels: differences
/// saturate at zero.
#[derive(Debug)]
struct Snapshot {
    at: Instant,
    /// This benchmark's own CPU ticks.
    own: u64,
    aggregator: u64,
    threads: BTreeMap<String, u64>,
    machine: MachineTicks,
    udp_in: u64,
}

impl Snapshot {
    fn take(aggregator_pid: i32) -> anyhow::Result<Snapshot> {
        let own_pid = i32::try_from(std::process::id()).context("pid out of range")?;
        Ok(Snapshot {
            own: procs::process_ticks(own_pid)?,
            aggregator: procs::process_ticks(aggregator_pid)?,
            threads: procs::thread_ticks(aggregator_pid)?,
            machine: MachineTicks::now()?,
            udp_in: procs::udp_datagrams_in()?,
            at: Instant::now(),
        })
    }
}

/// Waits until the machine is quiet (see [`Plan::quiet_below_pct`]) and returns its busy
/// percentage over the last second measured. Proceeds with a warning once `quiet_wait` is over.
fn wait_for_quiet(plan: &Plan, label: &str) -> anyhow::Result<f64> {
    const SAMPLE: Duration = Duration::from_secs(1);
    let start = Instant::now();
    let mut said = false;
    loop {
        let before = MachineTicks::now()?;
        let t = Instant::now();
        std::thread::sleep(SAMPLE);
        let after = MachineTicks::now()?;
        let busy = procs::ticks_pct(after.busy.saturating_sub(before.busy), t.elapsed());
        if busy < plan.quiet_below_pct {
            return Ok(busy);
        }
        if start.elapsed() >= plan.quiet_wait {
            eprintln!(
                "{label} warning: the machine is still {busy:.0} % busy after {:?}; measuring anyway",
                plan.quiet_wait
            );
            return Ok(busy);
        }
        if !said {
            eprintln!(
                "{label} the machine is {busy:.0} % busy (other processes); waiting for it to \
                 drop below {:.0} %",
                plan.quiet_below_pct
            );
            said = true;
        }
    }
}

/// A read-only connection to the aggregator's store, which runs in WAL mode, so reading never
/// blocks its commits.
struct StoreProbe {
    path: PathBuf,
    conn: Connection,
    /// The largest log id counted so far, and the records counted up to it.
    seen_id: i64,
    seen_rows: u64,
}

impl StoreProbe {
    fn open(path: &Path) -> anyhow::Result<StoreProbe> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("{}: cannot open read-only", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .with_context(|| format!("{}: cannot set a busy timeout", path.display()))?;
        Ok(StoreProbe {
            path: path.to_owned(),
            conn,
            seen_id: 0,
            seen_rows: 0,
        })
    }

    /// Log records committed so far, as rows of `logs` or in `log_blocks`. The store only
    /// appends during a run (retention keeps 14 days; the events are minutes old), so each poll
    /// counts only what lies above the largest id seen before, in one range scan of each table,
    /// and adds it to the running count. (Ids are shared by every data table, so the largest
    /// id is not a count.)
    fn committed(&mut self) -> anyhow::Result<u64> {
        let sql = "SELECT (SELECT count(*) FROM logs WHERE id > ?1)
                        + (SELECT coalesce(sum(logs), 0) FROM log_blocks WHERE id > ?1),
                          max((SELECT coalesce(max(id), 0) FROM logs),
                              (SELECT coalesce(max(id), 0) FROM log_blocks))";
        let (new, max): (i64, i64) = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([self.seen_id], |row| Ok((row.get(0)?, row.get(1)?))))
            .with_context(|| format!("cannot query the store: {sql}"))?;
        if new > 0 {
            self.seen_rows +=
                u64::try_from(new).with_context(|| format!("{sql} returned {new}"))?;
            self.seen_id = max;
        }
        Ok(self.seen_rows)
    }

    /// Log records, counted.
    fn count(&self) -> anyhow::Result<u64> {
        self.one(
            "SELECT (SELECT count(*) FROM logs)
                  + (SELECT coalesce(sum(logs), 0) FROM log_blocks)",
        )
    }

    /// Distinct events of `agents`: each carries the agent's event number in its attribute
    /// `synthetic.seq`, so a duplicate shows here. Read through the aggregator's own reader,
    /// which decodes the blocks.
    fn unique<'a>(&self, agents: impl Iterator<Item = &'a str>) -> anyhow::Result<u64> {
        let reader = SqliteReader::open(&self.path)
            .with_context(|| format!("{}: cannot open the store", self.path.display()))?;
        let mut unique = 0;
        for agent in agents {
            let records = reader
                .logs(agent, Synthetic::NAME)
                .with_context(|| format!("reading the logs of {agent}"))?;
            let seqs: std::collections::HashSet<Option<String>> = records
                .into_iter()
                .map(|e| match e.event {
                    Event::Log(l) => l
                        .attributes
                        .into_iter()
                        .find(|(k, _)| k == "synthetic.seq")
                        .map(|(_, v)| v),
                    _ => None,
                })
                .collect();
            unique += seqs.len() as u64;
        }
        Ok(unique)
    }

    fn one(&self, sql: &str) -> anyhow::Result<u64> {
        let v: i64 = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([], |row| row.get(0)))
            .with_context(|| format!("cannot query the store: {sql}"))?;
        u64::try_from(v).with_context(|| format!("{sql} returned {v}"))
    }
}
