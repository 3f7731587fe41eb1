//! `system.processes.count`, `system.uptime` and `system.pressure.*` (PSI).

use std::collections::BTreeMap;
use std::io::Read;

use outpost_common::event::MetricPoint;
use procfs::process::Stat;
use procfs::{Current, FromRead};

use super::{Family, Points};

/// The system family.
#[derive(Debug, Default)]
pub struct System;

impl Family for System {
    fn name(&self) -> &'static str {
        "system"
    }

    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        let mut p = Points::new(now_ns);
        let uptime = procfs::Uptime::current().map_err(|e| format!("/proc/uptime: {e}"))?;
        p.gauge("system.uptime", "s", uptime.uptime, &[]);
        for (status, n) in process_counts()? {
            p.gauge(
                "system.processes.count",
                "{process}",
                n as f64,
                &[("status", status)],
            );
        }
        pressure(&mut p);
        Ok(p.points)
    }
}

/// Processes (not threads) by state, from each `/proc/<pid>/stat`.
///
/// This is the family's main cost, a read per process, so each read is one `open`, one `read`
/// into a reused buffer and one `close`, parsed by `procfs`, rather than the directory handle
/// and `stat` call that `procfs::process::Process` makes per process to learn its owner, and the
/// `stat` and `lseek` calls of reading a whole file, none of which is needed here.
fn process_counts() -> Result<BTreeMap<&'static str, u64>, String> {
    let mut counts = BTreeMap::new();
    for s in [
        "running", "sleeping", "blocked", "stopped", "zombie", "idle",
    ] {
        counts.insert(s, 0);
    }
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    let mut path = std::path::PathBuf::from("/proc");
    // The line is at most ~1.2 KB: a 64-byte command name and 51 numbers.
    let mut buf = vec![0u8; 4096];
    for entry in dir {
        let entry = entry.map_err(|e| format!("/proc: {e}"))?;
        let name = entry.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        path.push(&name);
        path.push("stat");
        // A process can exit between listing and reading: it is simply not counted.
        let read = std::fs::File::open(&path).and_then(|mut f| f.read(&mut buf));
        path.pop();
        path.pop();
        let stat = read.ok().and_then(|n| Stat::from_read(&buf[..n]).ok());
        if let Some(stat) = stat {
            *counts.entry(status(stat.state)).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// The OpenTelemetry status of a kernel process state letter.
pub fn status(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "blocked",
        'T' | 't' => "stopped",
        'Z' => "zombie",
        'I' => "idle",
        'X' | 'x' => "dead",
        'W' => "paging",
        _ => "unknown",
    }
}

/// PSI averages in percent, as the kernel reports them, read directly rather than through
/// procfs, which drops the `full` line of `/proc/pressure/cpu` (Linux 5.13 and later). Absent
/// before Linux 4.20 or with `psi=0`, in which case nothing is emitted.
fn pressure(p: &mut Points) {
    for resource in ["cpu", "memory", "io"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/pressure/{resource}")) else {
            continue;
        };
        let name = format!("system.pressure.{resource}");
        for (kind, window, value) in parse_pressure(&text) {
            p.gauge(&name, "%", value, &[("type", kind), ("window", window)]);
        }
    }
}

/// `(type, window, percent)` from lines like `some avg10=1.00 avg60=0.50 avg300=0.10 total=42`.
fn parse_pressure(text: &str) -> Vec<(&str, &'static str, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(kind @ ("some" | "full")) = fields.next() else {
            continue;
        };
        for field in fields {
            let window = match field.split_once('=') {
                Some(("avg10", v)) => ("10s", v),
                Some(("avg60", v)) => ("60s", v),
                _ => continue,
            };
            if let Ok(v) = window.1.parse() {
                out.push((kind, window.0, v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pressure_lines_are_parsed() {
        let text = "some avg10=1.50 avg60=0.25 avg300=0.10 total=42\n\
                    full avg10=0.00 avg60=2.00 avg300=0.00 total=7\n";
        assert_eq!(
            super::parse_pressure(text),
            [
                ("some", "10s", 1.5),
                ("some", "60s", 0.25),
                ("full", "10s", 0.0),
                ("full", "60s", 2.0)
            ]
        );
        assert!(super::parse_pressure("nonsense avg10=1\n").is_empty());
    }

    #[test]
    fn a_zombie_child_is_counted() {
        // A child that has exited and not been waited for stays a zombie until `wait`, a state
        // that holds still while the test counts (a running test thread's state does not).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while procfs::process::Process::new(pid)
            .unwrap()
            .stat()
            .unwrap()
            .state
            != 'Z'
        {
            assert!(
                std::time::Instant::now() < deadline,
                "child {pid} never exited"
            );
            std::thread::yield_now();
        }
        let counts = super::process_counts().unwrap();
        child.wait().unwrap();
        assert!(
            counts.get("zombie") >= Some(&1),
            "the zombie child is missing from {counts:?}"
        );
    }

    #[test]
    fn kernel_states_map_to_statuses() {
        assert_eq!(super::status('R'), "running");
        assert_eq!(super::status('D'), "blocked");
        assert_eq!(super::status('t'), "stopped");
        assert_eq!(super::status('?'), "unknown");
    }
}
