//! One test's world: a temporary directory, a PKI made with the real CLI, the processes started
//! in it, and condition waits that explain themselves on timeout.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::process::{self, Process, Shared};
use crate::{
    Agent, AgentOptions, Aggregator, AggregatorOptions, Kind, SeqReport, Store, UnenrolledAgent,
};

/// How long a condition may take before the test fails: generous, since the whole suite shares
/// two cores with a debug build.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// Pause between two polls of a condition. Polling, not synchronisation: the condition decides.
const POLL: Duration = Duration::from_millis(50);

/// Calls `check` every `poll` until it answers `Ok`; past [`DEADLINE`], hands its last `Err` to
/// `timed_out`, which fails the test.
pub(crate) fn poll_until<T>(
    poll: Duration,
    mut check: impl FnMut() -> Result<T, String>,
    timed_out: impl FnOnce(String) -> T,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= DEADLINE => return timed_out(last),
            Err(_) => std::thread::sleep(poll),
        }
    }
}

/// Log lines of each process shown when a wait times out.
const TAIL_LINES: usize = 15;

/// The path of one of the workspace's binaries, next to the test executable.
///
/// A test executable lives in `target/<profile>/deps/`; the binaries in `target/<profile>/`.
/// Panics with the command to run if the binary was not built.
pub fn binary(name: &str) -> PathBuf {
    let exe =
        std::env::current_exe().unwrap_or_else(|e| panic!("cannot find the test executable: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: the end-to-end tests run the real programs; build them first with \
         `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// An agent certificate issued by `pki issue-agent`.
#[derive(Debug, Clone)]
pub struct AgentCert {
    pub agent_id: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
struct Inner {
    name: String,
    /// Taken when the world goes: removed, or kept for inspection.
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    processes: Mutex<Vec<Weak<Shared>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let dir = self.dir.take();
        let keep = std::env::var_os("OUTPOST_E2E_KEEP").is_some();
        if (std::thread::panicking() || keep)
            && let Some(dir) = dir
        {
            let kept = dir.keep();
            eprintln!(
                "[{}] the test's files are kept in {}",
                self.name,
                kept.display()
            );
        }
    }
}

/// A test's temporary world. Cheap to clone; the directory goes when the last clone does
/// (kept if the test failed, or always with `OUTPOST_E2E_KEEP` set).
#[derive(Debug, Clone)]
pub struct Env {
    inner: Arc<Inner>,
}

impl Env {
    /// A fresh directory with a PKI (`<dir>/pki`) made by `outpost-aggregator pki init`.
    pub fn new(name: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix(&format!("outpost-e2e-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let path = dir.path().to_owned();
        let env = Env {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                dir: Some(dir),
                path,
                processes: Mutex::new(Vec::new()),
            }),
        };
        env.pki_init(&env.pki_dir());
        env
    }

    /// The test's name, as given to [`Env::new`].
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The temporary directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The aggregator's PKI directory.
    pub fn pki_dir(&self) -> PathBuf {
        self.path().join("pki")
    }

    /// Runs `outpost-aggregator pki init --dir <dir>`; used for the main PKI and for foreign CAs.
    pub fn pki_init(&self, dir: &Path) {
        self.aggregator_cli_ok(&["pki", "init", "--dir", &dir.display().to_string()]);
    }

    /// Runs `outpost-aggregator pki issue-agent <id>` in the main PKI.
    pub fn issue_agent(&self, agent_id: &str) -> AgentCert {
        self.issue_agent_in(&self.pki_dir(), agent_id)
    }

    /// Runs `outpost-aggregator pki issue-agent <id>` in the PKI at `dir`.
    pub fn issue_agent_in(&self, dir: &Path, agent_id: &str) -> AgentCert {
        let d = dir.display().to_string();
        self.aggregator_cli_ok(&["pki", "issue-agent", agent_id, "--dir", &d]);
        AgentCert {
            agent_id: agent_id.to_owned(),
            ca: dir.join("ca.pem"),
            cert: dir.join("agents").join(format!("{agent_id}.pem")),
            key: dir.join("agents").join(format!("{agent_id}.key")),
        }
    }

    /// Runs `outpost-aggregator pki revoke <id>` in the main PKI.
    pub fn revoke(&self, agent_id: &str) {
        let d = self.pki_dir().display().to_string();
        self.aggregator_cli_ok(&[
            "pki",
            "revoke",
            agent_id,
            "--dir",
            &d,
            "--reason",
            "key-compromise",
        ]);
    }

    /// Runs `outpost-aggregator <args>` to completion.
    pub fn aggregator_cli(&self, args: &[&str]) -> std::process::Output {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        process::run_to_end(&binary("outpost-aggregator"), &args)
    }

    /// Runs `outpost-agent <args>` to completion.
    pub fn agent_cli(&self, args: &[&str]) -> std::process::Output {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        process::run_to_end(&binary("outpost-agent"), &args)
    }

    /// Runs `outpost-aggregator <args>`, failing the test unless it succeeds; returns stdout.
    pub fn aggregator_cli_ok(&self, args: &[&str]) -> String {
        let out = self.aggregator_cli(args);
        assert!(
            out.status.success(),
            "outpost-aggregator {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts an aggregator with the test timings.
    pub fn start_aggregator(&self) -> Aggregator {
        Aggregator::start(self, AggregatorOptions::default())
    }

    pub fn start_aggregator_with(&self, options: AggregatorOptions) -> Aggregator {
        Aggregator::start(self, options)
    }

    /// Starts an agent with `cert` that ships to `aggregator`.
    pub fn start_agent(
        &self,
        cert: &AgentCert,
        aggregator: &Aggregator,
        options: AgentOptions,
    ) -> Agent {
        Agent::start(self, cert, &[aggregator.addr().port()], options)
    }

    /// Starts an agent with `cert` configured with every aggregator of `aggregators`, in that
    /// order (`[aggregator] endpoints`), to fail over between them.
    pub fn start_agent_with_all(
        &self,
        cert: &AgentCert,
        aggregators: &[&Aggregator],
        options: AgentOptions,
    ) -> Agent {
        let ports: Vec<u16> = aggregators.iter().map(|a| a.addr().port()).collect();
        Agent::start(self, cert, &ports, options)
    }

    /// Writes the configuration of an agent host that is not enrolled yet (see
    /// [`UnenrolledAgent`]); `options` as for [`Env::start_agent`].
    pub fn unenrolled_agent(&self, name: &str, options: AgentOptions) -> UnenrolledAgent {
        UnenrolledAgent::write(self, name, &options)
    }

    /// Runs `outpost-agent --config <host's config> enroll <args>` to completion.
    pub fn enroll(&self, host: &UnenrolledAgent, args: &[&str]) -> std::process::Output {
        let config = host.config.display().to_string();
        let mut all = vec!["--config", config.as_str(), "enroll"];
        all.extend_from_slice(args);
        self.agent_cli(&all)
    }

    /// Starts `outpost-agent run` on `host`'s configuration as it is (enrolled or not, the
    /// agent enrolling at start with a token); `agent_id` is the id it has or will get.
    pub fn start_agent_from_config(&self, host: &UnenrolledAgent, agent_id: &str) -> Agent {
        Agent::run(
            self,
            &host.name,
            agent_id,
            host.config.clone(),
            host.data_dir.clone(),
        )
    }

    /// Starts a process whose output goes to `<dir>/<name>.log`, and remembers it for diagnoses.
    pub fn spawn(&self, name: &str, program: &Path, args: &[OsString]) -> Process {
        let p = Process::start(name, program, args, self.path().join(format!("{name}.log")));
        self.inner
            .processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(p.shared()));
        p
    }

    /// Polls `check` until it returns `Ok`, or fails the test after [`DEADLINE`] with `what`, the
    /// last `Err` (a description of the state seen) and the end of every process's log.
    pub fn wait_for<T>(&self, what: &str, check: impl FnMut() -> Result<T, String>) -> T {
        self.wait_for_every(POLL, what, check)
    }

    /// [`Env::wait_for`] polling every `poll`, for checks that cost more than a file read.
    pub fn wait_for_every<T>(
        &self,
        poll: Duration,
        what: &str,
        check: impl FnMut() -> Result<T, String>,
    ) -> T {
        poll_until(poll, check, |last| {
            panic!(
                "[{}] timed out after {DEADLINE:?} waiting for {what}\nlast seen: {last}\n{}",
                self.name(),
                self.diagnosis()
            )
        })
    }

    /// Waits until the store holds at least `target` synthetic events of `agent_id` (repeats
    /// included); returns how many it holds.
    pub fn wait_stored(&self, store: &Store, agent_id: &str, kind: Kind, target: u64) -> u64 {
        let what = format!("{target} synthetic events of {agent_id} stored");
        self.wait_for_every(Duration::from_millis(100), &what, || {
            let stored = store.synthetic_count(agent_id, kind)?;
            if stored >= target {
                Ok(stored)
            } else {
                Err(format!("{stored} stored"))
            }
        })
    }

    /// Waits until the store holds every synthetic event `0..total` of `agent_id` exactly once.
    ///
    /// Fails at once if anything is stored twice or out of range: that cannot heal.
    pub fn wait_exactly_once(
        &self,
        store: &Store,
        agent_id: &str,
        kind: Kind,
        total: u64,
    ) -> SeqReport {
        let what = format!("the {total} synthetic events of {agent_id}, each stored once");
        let mut polls = 0u32;
        self.wait_for_every(Duration::from_millis(250), &what, || {
            polls += 1;
            let count = store.synthetic_count(agent_id, kind)?;
            // The full report loads every number: only when complete, and now and then for the
            // diagnosis and to catch a repeat early.
            if count < total && !polls.is_multiple_of(8) {
                return Err(format!("{count} rows stored"));
            }
            let report = store.seq_report(agent_id, kind, total)?;
            assert!(
                report.is_clean(),
                "[{}] the store holds what it must not: {report}\n{}",
                self.name(),
                self.diagnosis()
            );
            if report.is_exact() {
                return Ok(report);
            }
            assert!(
                count < total,
                "[{}] {count} rows stored but not each of 0..{total} once: {report}",
                self.name()
            );
            Err(report.to_string())
        })
    }

    /// [`Env::wait_for`] with a plain condition.
    pub fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        self.wait_for(what, || {
            if cond() {
                Ok(())
            } else {
                Err("condition false".to_owned())
            }
        });
    }

    /// The state and the end of the log of every process started in this world.
    pub fn diagnosis(&self) -> String {
        let processes = self
            .inner
            .processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for p in processes.iter().filter_map(Weak::upgrade) {
            let _ = writeln!(
                out,
                "--- {} ({}), log {}:\n{}",
                p.name,
                p.state(),
                p.log_path.display(),
                p.tail(TAIL_LINES)
            );
        }
        out
    }
}
