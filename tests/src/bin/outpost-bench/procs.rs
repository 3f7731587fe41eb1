//! The processes a run starts, and what `/proc` says about them and about the machine.
//!
//! CPU is read as clock ticks (`utime + stime`, 100 per second on Linux), before and after the
//! measured window, so the figures cover exactly [t0, t1] and need no sampling thread.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use procfs::process::Process;
use procfs::{CurrentSI, KernelStats};

/// How often waiting loops look again. Waiting here is for other processes (an exit, a file
/// they write), which offer nothing to block on; every such loop also has a deadline.
pub const POLL: Duration = Duration::from_millis(10);

/// A program the benchmark started, with the file its stderr goes to.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `program --config <config> run`, stdout discarded, stderr to `stderr`.
    ///
    /// The child stays in the benchmark's process group, so a Ctrl-C at the terminal stops it
    /// too (gracefully: both programs treat SIGINT like SIGTERM).
    pub fn spawn(
        name: String,
        program: &Path,
        config: &Path,
        stderr: PathBuf,
    ) -> anyhow::Result<Proc> {
        let file = File::create(&stderr)
            .with_context(|| format!("{}: cannot create", stderr.display()))?;
        let child = Command::new(program)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("{name}: cannot start {}", program.display()))?;
        Ok(Proc {
            name,
            child,
            stderr,
            status: None,
        })
    }

    pub fn pid(&self) -> i32 {
        // Linux pids fit in an i32 (pid_max is at most 2^22).
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// The exit status if the process has ended (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Fails if the process has ended, quoting the end of its stderr.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(status) => bail!(
                "the {} exited unexpectedly ({status}); its stderr ends with:\n{}",
                self.name,
                self.stderr_tail(20)
            ),
        }
    }

    /// The last `lines` lines of the process's stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn signal(&self, signal: Signal) {
        if self.status.is_none() {
            // The child is not reaped yet, so its pid cannot have been reused.
            let _ = kill(Pid::from_raw(self.pid()), signal);
        }
    }
}

impl Drop for Proc {
    /// On an error path nothing else stops the child: kill it rather than leave it running.
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends SIGTERM to every process, waits up to `grace` for all of them to exit, then kills the
/// rest. Returns the processes that had to be killed, by name.
pub fn terminate(procs: &mut [Proc], grace: Duration) -> Vec<String> {
    for p in procs.iter() {
        p.signal(Signal::SIGTERM);
    }
    let start = Instant::now();
    while start.elapsed() < grace && procs.iter_mut().any(|p| p.exited().is_none()) {
        std::thread::sleep(POLL);
    }
    let mut killed = Vec::new();
    for p in procs.iter_mut() {
        if p.exited().is_none() {
            p.signal(Signal::SIGKILL);
            let _ = p.child.wait();
            killed.push(p.name.clone());
        }
    }
    killed
}

/// Waits until `path` holds a non-empty line and returns it, while `owner` keeps running.
pub fn wait_for_line(path: &Path, owner: &mut Proc, deadline: Duration) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return Ok(text.trim().to_owned());
        }
        owner.ensure_running()?;
        if start.elapsed() > deadline {
            bail!(
                "{}: not written by the {} within {deadline:?}",
                path.display(),
                owner.name
            );
        }
        std::thread::sleep(POLL);
    }
}

/// CPU clock ticks (user + system) a process has used since it started.
pub fn process_ticks(pid: i32) -> anyhow::Result<u64> {
    let stat = Process::new(pid)
        .and_then(|p| p.stat())
        .with_context(|| format!("/proc/{pid}/stat: cannot read"))?;
    Ok(stat.utime + stat.stime)
}

/// CPU clock ticks per thread name of a process. Threads of one name (a runtime's workers) are
/// added up; a thread that ended in between is missing from later snapshots.
pub fn thread_ticks(pid: i32) -> anyhow::Result<BTreeMap<String, u64>> {
    let tasks = Process::new(pid)
        .and_then(|p| p.tasks())
        .with_context(|| format!("/proc/{pid}/task: cannot read"))?;
    let mut by_name = BTreeMap::new();
    for task in tasks.flatten() {
        if let Ok(stat) = task.stat() {
            *by_name.entry(stat.comm).or_insert(0) += stat.utime + stat.stime;
        }
    }
    Ok(by_name)
}

/// The peak resident set size (VmHWM) of a process, in bytes.
pub fn peak_rss_bytes(pid: i32) -> anyhow::Result<u64> {
    let status = Process::new(pid)
        .and_then(|p| p.status())
        .with_context(|| format!("/proc/{pid}/status: cannot read"))?;
    status
        .vmhwm
        .map(|kib| kib * 1024)
        .with_context(|| format!("/proc/{pid}/status: no VmHWM"))
}

/// The machine's CPU time, summed over all cores, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    /// Running anything: user, nice, system, interrupts, stolen by the hypervisor.
    pub busy: u64,
    /// Idle with I/O outstanding.
    pub iowait: u64,
}

impl MachineTicks {
    pub fn now() -> anyhow::Result<MachineTicks> {
        let t = KernelStats::current()
            .context("/proc/stat: cannot read")?
            .total;
        let opt = |v: Option<u64>| v.unwrap_or(0);
        Ok(MachineTicks {
            busy: t.user + t.nice + t.system + opt(t.irq) + opt(t.softirq) + opt(t.steal),
            iowait: opt(t.iowait),
        })
    }
}

/// Datagrams the kernel dropped on the UDP socket bound to `port` because its receive buffer
/// was full (the `drops` column of `/proc/net/udp`); `None` if no such socket is listed.
pub fn udp_socket_drops(port: u16) -> anyhow::Result<Option<u64>> {
    let table = std::fs::read_to_string("/proc/net/udp").context("/proc/net/udp: cannot read")?;
    Ok(socket_drops(&table, port))
}

/// Reads the `drops` column of the row whose local address has `port` in `/proc/net/udp` text
/// (addresses are `HEXIP:HEXPORT`, `drops` is the last column).
fn socket_drops(table: &str, port: u16) -> Option<u64> {
    let wanted = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1)?;
        if !local.ends_with(&wanted) {
            return None;
        }
        line.split_whitespace().last()?.parse().ok()
    })
}

/// UDP datagrams the machine received (`InDatagrams` in `/proc/net/snmp`), all sockets.
pub fn udp_datagrams_in() -> anyhow::Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").context("/proc/net/snmp: cannot read")?;
    snmp_field(&snmp, "Udp", "InDatagrams").context("/proc/net/snmp: no Udp InDatagrams")
}

/// A field of `/proc/net/snmp`, where each protocol has a line of names then a line of values.
fn snmp_field(snmp: &str, protocol: &str, field: &str) -> Option<u64> {
    let prefix = format!("{protocol}:");
    let mut rows = snmp.lines().filter(|l| l.starts_with(&prefix));
    let names = rows.next()?;
    let values = rows.next()?;
    let i = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Clock ticks as a percentage of one core over `window`.
pub fn ticks_pct(ticks: u64, window: Duration) -> f64 {
    let per_sec = procfs::ticks_per_second() as f64;
    ticks as f64 / per_sec / window.as_secs_f64().max(1e-9) * 100.0
}

/// What grew between two thread snapshots, per name, as a percentage of one core.
pub fn thread_delta_pct(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    window: Duration,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, &t)| {
            let base = before.get(name).copied().unwrap_or(0);
            (name.clone(), ticks_pct(t.saturating_sub(base), window))
        })
        .filter(|(_, pct)| *pct > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_deltas_cover_new_threads_and_skip_idle_ones() {
        let per_sec = procfs::ticks_per_second();
        let before = BTreeMap::from([("writer".to_owned(), 10), ("idle".to_owned(), 5)]);
        let after = BTreeMap::from([
            ("writer".to_owned(), 10 + per_sec),
            ("idle".to_owned(), 5),
            ("new".to_owned(), per_sec / 2),
        ]);
        let d = thread_delta_pct(&before, &after, Duration::from_secs(2));
        assert_eq!(d.len(), 2, "{d:?}");
        assert!((d["writer"] - 50.0).abs() < 1e-9);
        assert!((d["new"] - 25.0).abs() < 1e-9);
    }

    #[test]
    fn udp_drops_are_read_from_the_socket_row() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                     \x20 12: 0100007F:A9C7 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1234 2 0000000000000000 317\n\
                     \x20 40: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0\n";
        assert_eq!(socket_drops(table, 0xA9C7), Some(317));
        assert_eq!(socket_drops(table, 68), Some(0));
        assert_eq!(socket_drops(table, 4433), None);
    }

    #[test]
    fn snmp_fields_are_found_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 144225 153 8217 152614 8216\n";
        assert_eq!(snmp_field(snmp, "Udp", "InDatagrams"), Some(144225));
        assert_eq!(snmp_field(snmp, "Udp", "RcvbufErrors"), Some(8216));
        assert_eq!(snmp_field(snmp, "Udp", "Nope"), None);
        assert_eq!(snmp_field(snmp, "Tcp", "InDatagrams"), None);
        assert!(udp_datagrams_in().is_ok());
    }

    #[test]
    fn this_process_can_be_measured() {
        let pid = std::process::id() as i32;
        assert!(peak_rss_bytes(pid).unwrap() > 0);
        // Burn a little CPU so the tick counters have something to show.
        let start = process_ticks(pid).unwrap();
        let mut x = 0u64;
        while process_ticks(pid).unwrap() == start {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        assert!(x != 1);
        assert!(!thread_ticks(pid).unwrap().is_empty());
        let m = MachineTicks::now().unwrap();
        assert!(m.busy > 0);
    }
}
