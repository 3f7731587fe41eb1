//! `process.*` for processes whose name matches the configured globs.
//!
//! CPU utilization follows OpenTelemetry: CPU time since the previous collection divided by the
//! elapsed time and by the CPUs available, so the first collection of a process has none.

use std::collections::HashMap;

use outpost_common::event::MetricPoint;

use super::{Family, Filter, Points};

/// The per-process family; keeps each process's CPU ticks for the deltas.
#[derive(Debug)]
pub struct Processes {
    names: Filter,
    /// By (pid, start time), so a reused pid is not mistaken for the old process.
    previous: HashMap<(i32, u64), (u64, i64)>,
}

impl Processes {
    pub fn new(names: Filter) -> Self {
        Processes {
            names,
            previous: HashMap::new(),
        }
    }
}

impl Family for Processes {
    fn name(&self) -> &'static str {
        "process"
    }

    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        let all = procfs::process::all_processes().map_err(|e| format!("/proc: {e}"))?;
        let ticks = procfs::ticks_per_second() as f64;
        let page = procfs::page_size();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let mut p = Points::new(now_ns);
        let mut seen = HashMap::new();
        for proc in all.flatten() {
            // Processes exit at any time: one that vanished mid-read is skipped.
            let Ok(stat) = proc.stat() else { continue };
            if !self.names.matches(&stat.comm) {
                continue;
            }
            let pid = stat.pid.to_string();
            let attrs = [
                ("process.name", stat.comm.as_str()),
                ("process.pid", pid.as_str()),
            ];
            let cpu = stat.utime + stat.stime;
            let key = (stat.pid, stat.starttime);
            if let Some((before, at)) = self.previous.get(&key) {
                let elapsed = (now_ns - at) as f64 / 1e9;
                if elapsed > 0.0 {
                    let used = cpu.saturating_sub(*before) as f64 / ticks;
                    p.gauge(
                        "process.cpu.utilization",
                        "1",
                        used / elapsed / cpus,
                        &attrs,
                    );
                }
            }
            seen.insert(key, (cpu, now_ns));
            p.gauge("process.memory.rss", "By", (stat.rss * page) as f64, &attrs);
            p.gauge(
                "process.threads",
                "{thread}",
                stat.num_threads as f64,
                &attrs,
            );
            // Another user's descriptors need privileges the agent may not have.
            if let Ok(n) = proc.fd_count() {
                p.gauge(
                    "process.open_file_descriptors",
                    "{file_descriptor}",
                    n as f64,
                    &attrs,
                );
            }
        }
        self.previous = seen;
        Ok(p.points)
    }
}
