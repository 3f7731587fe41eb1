//! A child process with its output in files, killed when dropped.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a process may take to stop after SIGTERM before the test fails.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// What the harness's diagnosis needs to know about a process, shared with [`crate::Env`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    /// stdout and stderr both go here (appended across restarts).
    pub(crate) log_path: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Shared {
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// "running (pid 123)", "exited: exit status: 1" or "stopped".
    pub(crate) fn state(&self) -> String {
        match self.child().as_mut() {
            None => "stopped by the test".to_owned(),
            Some(c) => match c.try_wait() {
                Ok(None) => format!("running (pid {})", c.id()),
                Ok(Some(status)) => format!("exited: {status}"),
                Err(e) => format!("unknown: {e}"),
            },
        }
    }

    /// The last `lines` lines of the log.
    pub(crate) fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A program run by a test: started at creation, restartable, killed on drop.
#[derive(Debug)]
pub struct Process {
    shared: Arc<Shared>,
    program: PathBuf,
    args: Vec<OsString>,
    starts: u32,
}

impl Process {
    /// Starts `program args`, with stdout and stderr appended to `log_path`.
    pub(crate) fn start(name: &str, program: &Path, args: &[OsString], log_path: PathBuf) -> Self {
        let mut p = Process {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                log_path,
                child: Mutex::new(None),
            }),
            program: program.to_owned(),
            args: args.to_vec(),
            starts: 0,
        };
        p.spawn();
        p
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    fn spawn(&mut self) {
        let mut child = self.shared.child();
        assert!(
            child.is_none(),
            "{}: started while still running",
            self.shared.name
        );
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.shared.log_path)
            .unwrap_or_else(|e| panic!("{}: cannot open: {e}", self.shared.log_path.display()));
        // A marker makes restarts visible in the log; writing it is best effort.
        let _ = writeln!(log, "=== harness: start #{} ===", self.starts);
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: cannot clone: {e}", self.shared.log_path.display()));
        // In a process group of its own, so that killing it also ends what it started (a
        // program run under a wrapper such as strace).
        let spawned = Command::new(&self.program)
            .args(&self.args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        *child = Some(spawned);
    }

    /// Starts the process again with the same arguments; it must have been stopped.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.shared
            .child()
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL to it and its process group, then reap. A process that already exited is just
    /// reaped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.shared.child().take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.shared.child().as_ref().map(std::process::Child::id)
    }

    /// SIGHUP: the agent reloads its configuration. Fails the test if the process is not
    /// running.
    pub fn hangup(&self) {
        let pid = self
            .shared
            .child()
            .as_ref()
            .map(std::process::Child::id)
            .unwrap_or_else(|| panic!("{}: hangup() while not running", self.shared.name));
        let pid = i32::try_from(pid).unwrap_or_else(|e| panic!("pid out of range: {e}"));
        if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGHUP) {
            panic!("{}: cannot send SIGHUP to {pid}: {e}", self.shared.name);
        }
    }

    /// SIGTERM, then wait for the exit; fails the test unless the process stops in time and
    /// cleanly (graceful shutdown is part of what is tested).
    pub fn terminate(&mut self) {
        let status = self.terminate_status();
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; its log ends:\n{}",
            self.shared.name,
            self.shared.tail(30)
        );
    }

    /// SIGTERM, then wait for the exit and return its status; fails the test if the process does
    /// not stop in time.
    pub fn terminate_status(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGTERM)
    }

    /// Sends `signal`, then waits for the exit and returns its status; fails the test if the
    /// process does not stop in time. For programs that stop on another signal than SIGTERM
    /// (PostgreSQL shuts down at once on SIGINT, and waits for its clients on SIGTERM).
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        let Some(mut c) = self.shared.child().take() else {
            panic!("{}: stopped while not running", self.shared.name);
        };
        let pid = i32::try_from(c.id()).unwrap_or_else(|e| panic!("pid out of range: {e}"));
        if let Err(e) = kill(Pid::from_raw(pid), signal) {
            panic!("{}: cannot send {signal} to {pid}: {e}", self.shared.name);
        }
        let start = Instant::now();
        loop {
            match c.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if start.elapsed() < STOP_DEADLINE => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!(
                        "{} did not stop within {STOP_DEADLINE:?} of {signal}; its log ends:\n{}",
                        self.shared.name,
                        self.shared.tail(30)
                    );
                }
                Err(e) => panic!("{}: cannot wait: {e}", self.shared.name),
            }
        }
    }

    /// Everything the process wrote so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.shared.log_path).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    pub fn log_path(&self) -> &Path {
        &self.shared.log_path
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a program to completion, with its output captured.
pub(crate) fn run_to_end(program: &Path, args: &[OsString]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// Creates (truncates) a file, failing the test with its path on error.
pub(crate) fn write_file(path: &Path, text: &str) {
    let mut f =
        File::create(path).unwrap_or_else(|e| panic!("{}: cannot create: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("{}: cannot write: {e}", path.display()));
}
