//! `outpost.agent.*`: what the agent itself costs and how its pipeline is doing.

use std::collections::BTreeMap;
use std::sync::Arc;

use outpost_common::event::{DropReason, MetricPoint};

use super::{Family, Points};
use crate::spool::SpoolStats;
use crate::telemetry::Telemetry;

/// Reads the spool's statistics from a blocking thread.
pub type SpoolStatsFn = Box<dyn Fn() -> Result<SpoolStats, String> + Send>;

/// Where the agent family reads the agent's state; what is absent is not reported.
#[derive(Default)]
pub struct Sources {
    pub telemetry: Option<Arc<Telemetry>>,
    pub spool: Option<SpoolStatsFn>,
}

impl Sources {
    /// Only the process's own CPU and memory.
    pub fn none() -> Self {
        Sources::default()
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("telemetry", &self.telemetry.is_some())
            .field("spool", &self.spool.is_some())
            .finish()
    }
}

/// The agent family.
#[derive(Debug)]
pub struct Agent {
    sources: Sources,
}

impl Agent {
    pub fn new(sources: Sources) -> Self {
        Agent { sources }
    }
}

impl Family for Agent {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        let mut p = Points::new(now_ns);
        let stat = procfs::process::Process::myself()
            .and_then(|me| me.stat())
            .map_err(|e| format!("/proc/self/stat: {e}"))?;
        let cpu_seconds = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
        p.counter("outpost.agent.cpu.time", "s", cpu_seconds, &[]);
        let rss = stat.rss * procfs::page_size();
        p.gauge("outpost.agent.memory.rss", "By", rss as f64, &[]);
        if let Some(spool) = &self.sources.spool {
            let s = spool()?;
            p.gauge("outpost.agent.spool.bytes", "By", s.file_bytes as f64, &[]);
            p.gauge(
                "outpost.agent.spool.events",
                "{event}",
                s.events as f64,
                &[],
            );
            for reason in DropReason::ALL {
                p.counter(
                    "outpost.agent.drops",
                    "{event}",
                    s.drops.get(reason) as f64,
                    &[("reason", reason.as_str())],
                );
            }
        }
        if let Some(t) = &self.sources.telemetry {
            telemetry(&mut p, t);
        }
        Ok(p.points)
    }
}

fn telemetry(p: &mut Points, t: &Telemetry) {
    let counters = t.counters();
    let sent = counters.batches_sent as f64;
    p.counter("outpost.agent.batches.sent", "{batch}", sent, &[]);
    let acked = counters.batches_acked as f64;
    p.counter("outpost.agent.batches.acked", "{batch}", acked, &[]);
    let skipped = "outpost.agent.journal.skipped";
    let malformed = counters.journal_entries_malformed as f64;
    p.counter(skipped, "{entry}", malformed, &[("reason", "malformed")]);
    let too_long = counters.journal_entries_too_long as f64;
    p.counter(skipped, "{entry}", too_long, &[("reason", "too_long")]);
    if let Some(l) = t.ack_latency() {
        let seconds = |us: u64| us as f64 / 1e6;
        let latency = "outpost.agent.send.latency";
        p.gauge(latency, "s", seconds(l.p50_us), &[("quantile", "0.5")]);
        p.gauge(latency, "s", seconds(l.p99_us), &[("quantile", "0.99")]);
    }
    // Every collector seen is reported, 0 when healthy, so a recovery shows as a drop to 0.
    let mut errors: BTreeMap<String, f64> = BTreeMap::new();
    for (collector, seconds) in t.collector_durations() {
        p.gauge(
            "outpost.agent.collector.duration",
            "s",
            seconds,
            &[("collector", &collector)],
        );
        errors.insert(collector, 0.0);
    }
    for e in t.collector_errors() {
        errors.insert(e.collector, 1.0);
    }
    for (collector, n) in errors {
        p.gauge(
            "outpost.agent.collector.errors",
            "{error}",
            n,
            &[("collector", &collector)],
        );
    }
}
