//! `system.cpu.*` from `/proc/stat` and `/proc/loadavg`.
//!
//! Utilization is the share of each state in the ticks elapsed since the previous collection,
//! so the first collection has none. Guest time is already counted in `user` by the kernel and
//! is not added again.

use outpost_common::event::MetricPoint;
use procfs::{CpuTime, Current, CurrentSI, KernelStats, LoadAverage};

use super::{Family, Points};

/// The cpu family; keeps the previous `/proc/stat` sample for the deltas.
#[derive(Debug, Default)]
pub struct Cpu {
    previous: Option<KernelStats>,
}

impl Family for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        let stats = KernelStats::current().map_err(|e| format!("/proc/stat: {e}"))?;
        let load = LoadAverage::current().map_err(|e| format!("/proc/loadavg: {e}"))?;
        let mut p = Points::new(now_ns);
        if let Some(prev) = &self.previous {
            utilization(&mut p, &prev.total, &stats.total, None);
            // The kernel lists online CPUs in order; cpuN lines keep their index.
            for (i, (a, b)) in prev.cpu_time.iter().zip(&stats.cpu_time).enumerate() {
                utilization(&mut p, a, b, Some(&format!("cpu{i}")));
            }
        }
        p.gauge(
            "system.cpu.load_average.1m",
            "{thread}",
            f64::from(load.one),
            &[],
        );
        p.gauge(
            "system.cpu.load_average.5m",
            "{thread}",
            f64::from(load.five),
            &[],
        );
        p.gauge(
            "system.cpu.load_average.15m",
            "{thread}",
            f64::from(load.fifteen),
            &[],
        );
        p.gauge(
            "system.cpu.logical.count",
            "{cpu}",
            stats.cpu_time.len() as f64,
            &[],
        );
        self.previous = Some(stats);
        Ok(p.points)
    }
}

/// The states of one CPU line, those the kernel reports.
fn states(t: &CpuTime) -> Vec<(&'static str, u64)> {
    let mut s = vec![
        ("user", t.user),
        ("nice", t.nice),
        ("system", t.system),
        ("idle", t.idle),
    ];
    let optional = [
        ("iowait", t.iowait),
        ("irq", t.irq),
        ("softirq", t.softirq),
        ("steal", t.steal),
    ];
    s.extend(optional.into_iter().filter_map(|(n, v)| v.map(|v| (n, v))));
    s
}

fn utilization(p: &mut Points, before: &CpuTime, after: &CpuTime, cpu: Option<&str>) {
    // Counters can step back (iowait on some kernels): count such a step as zero.
    let deltas: Vec<(&str, u64)> = states(before)
        .into_iter()
        .zip(states(after))
        .map(|((n, a), (_, b))| (n, b.saturating_sub(a)))
        .collect();
    let total: u64 = deltas.iter().map(|(_, d)| d).sum();
    if total == 0 {
        return;
    }
    for (state, d) in deltas {
        let value = d as f64 / total as f64;
        match cpu {
            Some(cpu) => p.gauge(
                "system.cpu.utilization",
                "1",
                value,
                &[("cpu", cpu), ("state", state)],
            ),
            None => p.gauge("system.cpu.utilization", "1", value, &[("state", state)]),
        }
    }
}
