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
    let failovers = counters.failovers as f64;
    p.counter("outpost.agent.failovers", "{failover}", failovers, &[]);
    let skipped = "outpost.agent.journal.skipped";
    let malformed = counters.journal_entries_malformed as f64;
    p.counter(skipped, "{entry}", malformed, &[("reason", "malformed")]);
    let too_long = counters.journal_entries_too_long as f64;
    p.counter(skipped, "{entry}", too_long, &[("reason", "too_long")]);
    let fim = [
        (
            "outpost.agent.fim.paths_scanned",
            "{path}",
            counters.fim_paths_scanned,
        ),
        (
            "outpost.agent.fim.bytes_hashed",
            "By",
            counters.fim_bytes_hashed,
        ),
        ("outpost.agent.fim.events", "{event}", counters.fim_events),
        ("outpost.agent.fim.scans", "{scan}", counters.fim_scans),
        ("outpost.agent.fim.rescans", "{scan}", counters.fim_rescans),
        (
            "outpost.agent.fim.unreadable",
            "{path}",
            counters.fim_unreadable,
        ),
    ];
    for (name, unit, n) in fim {
        p.counter(name, unit, n as f64, &[]);
    }
    let cert = t.certificate();
    if cert.not_after_ns != 0 {
        let seconds = cert.not_after_ns as f64 / 1e9;
        p.gauge("outpost.agent.certificate.not_after", "s", seconds, &[]);
    }
    let renewals = "outpost.agent.certificate.renewals";
    p.counter(
        renewals,
        "{renewal}",
        counters.cert_renewals as f64,
        &[("result", "ok")],
    );
    let failures = counters.cert_renewal_failures as f64;
    p.counter(renewals, "{renewal}", failures, &[("result", "failed")]);
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
    log_files(p, t);
}

/// `outpost.agent.logs.*`: per source, and per open file (counters of a file start at its
/// opening; a source's totals include the files it closed).
fn log_files(p: &mut Points, t: &Telemetry) {
    use crate::collectors::logs::tailer::{FileStats, Loss};
    for (source, s) in t.log_sources() {
        let mut total = s.closed.clone();
        for (path, f) in &s.files {
            let attrs = [("source", source.as_str()), ("path", path.as_str())];
            p.counter(
                "outpost.agent.logs.file.read",
                "By",
                f.bytes_read as f64,
                &attrs,
            );
            p.gauge("outpost.agent.logs.file.lag", "By", f.lag() as f64, &attrs);
            add(&mut total, f);
        }
        let src = [("source", source.as_str())];
        p.gauge(
            "outpost.agent.logs.open_files",
            "{file}",
            s.open_files as f64,
            &src,
        );
        p.counter(
            "outpost.agent.logs.read",
            "By",
            total.bytes_read as f64,
            &src,
        );
        p.counter(
            "outpost.agent.logs.records",
            "{record}",
            total.records as f64,
            &src,
        );
        p.counter(
            "outpost.agent.logs.rotations",
            "{rotation}",
            total.rotations as f64,
            &src,
        );
        let lag: u64 = s.files.iter().map(|(_, f)| f.lag()).sum();
        p.gauge("outpost.agent.logs.lag", "By", lag as f64, &src);
        for (loss, bytes) in Loss::ALL.iter().zip(total.lost) {
            p.counter(
                "outpost.agent.logs.lost",
                "By",
                bytes as f64,
                &[("source", source.as_str()), ("reason", loss.as_str())],
            );
        }
        for (rule, n) in &s.redactions {
            p.counter(
                "outpost.agent.logs.redactions",
                "{replacement}",
                *n as f64,
                &[("source", source.as_str()), ("rule", rule.as_str())],
            );
        }
    }

    fn add(total: &mut FileStats, f: &FileStats) {
        total.bytes_read += f.bytes_read;
        total.records += f.records;
        total.rotations += f.rotations;
        for (t, l) in total.lost.iter_mut().zip(f.lost) {
            *t += l;
        }
    }
}
