//! `system.memory.*` and `system.paging.usage` from `/proc/meminfo`.
//!
//! `used` is `MemTotal - MemFree - Buffers - cached`, with `cached = Cached + SReclaimable`,
//! as `free(1)` from procps-ng computes it. `available` is the kernel's `MemAvailable`; it
//! overlaps the other states, so the states other than `available` sum to the total.

use outpost_common::event::MetricPoint;
use procfs::{Current, Meminfo};

use super::{Family, Points};

/// The memory family.
#[derive(Debug, Default)]
pub struct Memory;

impl Family for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        let m = Meminfo::current().map_err(|e| format!("/proc/meminfo: {e}"))?;
        let mut p = Points::new(now_ns);
        let cached = m.cached + m.s_reclaimable.unwrap_or(0);
        let used = m
            .mem_total
            .saturating_sub(m.mem_free)
            .saturating_sub(m.buffers)
            .saturating_sub(cached);
        let mut states = vec![
            ("used", used),
            ("free", m.mem_free),
            ("cached", cached),
            ("buffered", m.buffers),
        ];
        if let Some(a) = m.mem_available {
            states.push(("available", a));
        }
        for (state, bytes) in states {
            p.gauge(
                "system.memory.usage",
                "By",
                bytes as f64,
                &[("state", state)],
            );
            if m.mem_total > 0 {
                p.gauge(
                    "system.memory.utilization",
                    "1",
                    bytes as f64 / m.mem_total as f64,
                    &[("state", state)],
                );
            }
        }
        let swap_used = m.swap_total.saturating_sub(m.swap_free);
        p.gauge(
            "system.paging.usage",
            "By",
            swap_used as f64,
            &[("state", "used")],
        );
        p.gauge(
            "system.paging.usage",
            "By",
            m.swap_free as f64,
            &[("state", "free")],
        );
        Ok(p.points)
    }
}
