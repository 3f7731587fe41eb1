//! `system.processes.count`, `system.uptime` and `system.pressure.*` (PSI).

use std::collections::BTreeMap;

use outpost_common::event::MetricPoint;
use procfs::Current;

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
        p.gauge("system.uptime", uptime.uptime, &[]);
        for (status, n) in process_counts()? {
            p.gauge("system.processes.count", n as f64, &[("status", status)]);
        }
        pressure(&mut p);
        Ok(p.points)
    }
}

/// Processes (not threads) by state, from each `/proc/<pid>/stat`.
fn process_counts() -> Result<BTreeMap<&'static str, u64>, String> {
    let mut counts = BTreeMap::new();
    for s in [
        "running", "sleeping", "blocked", "stopped", "zombie", "idle",
    ] {
        counts.insert(s, 0);
    }
    let all = procfs::process::all_processes().map_err(|e| format!("/proc: {e}"))?;
    // A process can exit between listing and reading: it is simply not counted.
    for stat in all.flatten().filter_map(|p| p.stat().ok()) {
        *counts.entry(status(stat.state)).or_insert(0) += 1;
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

/// PSI averages in percent, as the kernel reports them; absent before Linux 4.20 or when
/// disabled (`psi=0`), in which case nothing is emitted.
fn pressure(p: &mut Points) {
    let mut emit = |resource: &str, kind: &str, r: &procfs::PressureRecord| {
        let name = format!("system.pressure.{resource}");
        p.gauge(
            &name,
            f64::from(r.avg10),
            &[("type", kind), ("window", "10s")],
        );
        p.gauge(
            &name,
            f64::from(r.avg60),
            &[("type", kind), ("window", "60s")],
        );
    };
    if let Ok(c) = procfs::CpuPressure::current() {
        emit("cpu", "some", &c.some);
    }
    if let Ok(m) = procfs::MemoryPressure::current() {
        emit("memory", "some", &m.some);
        emit("memory", "full", &m.full);
    }
    if let Ok(io) = procfs::IoPressure::current() {
        emit("io", "some", &io.some);
        emit("io", "full", &io.full);
    }
}
