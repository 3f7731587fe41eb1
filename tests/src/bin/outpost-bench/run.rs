//! One measured run: start the aggregator, start every agent at t0, watch the store until the
//! last pre-filled event is committed at t1, read the CPU and memory figures for [t0, t1], then
//! stop everything and collect the agents' acknowledgement latencies.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rusqlite::{Connection, OpenFlags};

use crate::procs::{self, MachineTicks, POLL, Proc};
use crate::report::{AckLatency, RunResult, ShipperSummary, parse_shipper_summary};
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
    world.write_agent_configs(&addr)?;
    let probe = StoreProbe::open(&agg_config.store_path())?;
    ensure!(
        probe.committed()? == 0,
        "the store is not empty before the agents start"
    );
    let agg_pid = aggregator[0].pid();
    let agent_bin = plan.bin_dir.join("outpost-agent");

    let background = wait_for_quiet(plan, &format!("[{n} agents, run {run}]"))?;
    eprintln!("[{n} agents, run {run}] aggregator on {addr}; starting agents");
    let own_pid = i32::try_from(std::process::id()).context("pid out of range")?;
    let own_ticks0 = procs::process_ticks(own_pid)?;
    let agg_ticks0 = procs::process_ticks(agg_pid)?;
    let agg_threads0 = procs::thread_ticks(agg_pid)?;
    let machine0 = MachineTicks::now()?;
    let t0 = Instant::now();
    let mut agents = Vec::with_capacity(n);
    for a in &world.agents {
        agents.push(Proc::spawn(
            format!("agent {}", a.id),
            &agent_bin,
            &a.config(),
            a.stderr(),
        )?);
    }

    let mut first_commit = None;
    let mut polls = 0u32;
    let t1 = loop {
        let committed = probe.committed()?;
        let now = Instant::now();
        if committed > 0 && first_commit.is_none() {
            first_commit = Some(now - t0);
        }
        if committed >= expected {
            break now;
        }
        if now - t0 > plan.timeout {
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
    };
    let window = t1 - t0;
    let agg_ticks1 = procs::process_ticks(agg_pid)?;
    let agg_threads1 = procs::thread_ticks(agg_pid)?;
    let machine1 = MachineTicks::now()?;
    let own_ticks1 = procs::process_ticks(own_pid)?;
    // The agents started at or after t0, so everything they used so far lies in the window.
    let mut agent_ticks = 0;
    for p in &agents {
        agent_ticks += procs::process_ticks(p.pid())?;
    }
    let peak_rss = procs::peak_rss_bytes(agg_pid)?;

    eprintln!(
        "[{n} agents, run {run}] {expected} events committed in {:.2} s; stopping",
        window.as_secs_f64()
    );
    let killed = procs::terminate(&mut agents, STOP_GRACE);
    ensure!(
        killed.is_empty(),
        "did not stop on SIGTERM: {}",
        killed.join(", ")
    );
    let summaries = world
        .agents
        .iter()
        .map(|a| read_summary(&a.log_dir()).with_context(|| format!("agent {}", a.id)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stored = probe.count()?;
    let unique = probe.unique()?;
    drop(probe);
    let killed = procs::terminate(&mut aggregator, STOP_GRACE);
    ensure!(killed.is_empty(), "the aggregator did not stop on SIGTERM");
    ensure!(
        stored == expected && unique == expected,
        "the store holds {stored} log rows ({unique} distinct events); {expected} were sent"
    );

    Ok(RunResult {
        agents: n,
        run,
        events: expected,
        payload_bytes: world.payload_bytes(),
        elapsed: window,
        first_commit: first_commit.unwrap_or(window),
        ack: AckLatency::over_agents(&summaries),
        aggregator_cpu_pct: procs::ticks_pct(agg_ticks1.saturating_sub(agg_ticks0), window),
        aggregator_threads_pct: procs::thread_delta_pct(&agg_threads0, &agg_threads1, window),
        aggregator_rss_mib: peak_rss as f64 / (1024.0 * 1024.0),
        agents_cpu_pct: procs::ticks_pct(agent_ticks, window),
        bench_cpu_pct: procs::ticks_pct(own_ticks1.saturating_sub(own_ticks0), window),
        background_pct: background,
        machine_busy_pct: procs::ticks_pct(machine1.busy.saturating_sub(machine0.busy), window),
        machine_iowait_pct: procs::ticks_pct(
            machine1.iowait.saturating_sub(machine0.iowait),
            window,
        ),
    })
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

/// Reads the `shipper summary` line from an agent's log files (`outpost-agent.log.<date>`).
fn read_summary(log_dir: &Path) -> anyhow::Result<ShipperSummary> {
    let entries = std::fs::read_dir(log_dir)
        .with_context(|| format!("{}: cannot list", log_dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("outpost-agent"))
        })
        .collect();
    // Date-stamped names sort in time order, so the last summary is in the last file read.
    paths.sort();
    let mut text = String::new();
    for p in &paths {
        text.push_str(
            &std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?,
        );
    }
    parse_shipper_summary(&text).with_context(|| {
        format!(
            "{}: no complete `shipper summary` line in the agent's log",
            log_dir.display()
        )
    })
}

/// A read-only connection to the aggregator's store, which runs in WAL mode, so reading never
/// blocks its commits.
struct StoreProbe {
    conn: Connection,
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
        Ok(StoreProbe { conn })
    }

    /// Log rows committed so far. The store only appends to `logs` during a run (retention keeps
    /// 14 days; the events are minutes old), so the largest rowid is the row count, found in
    /// one B-tree descent where `count(*)` would scan the table on every poll.
    fn committed(&self) -> anyhow::Result<u64> {
        self.one("SELECT coalesce(max(id), 0) FROM logs")
    }

    /// Log rows, counted.
    fn count(&self) -> anyhow::Result<u64> {
        self.one("SELECT count(*) FROM logs")
    }

    /// Distinct events: the body carries the agent's event number, so a duplicate shows here.
    fn unique(&self) -> anyhow::Result<u64> {
        self.one("SELECT count(*) FROM (SELECT DISTINCT agent_key, body FROM logs)")
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
