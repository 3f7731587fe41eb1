//! The agent's own counters, and the [`AgentStatus`] built from them for heartbeats.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_common::event::{AgentStatus, CollectorError};
use outpost_common::time::now_ns;

use crate::spool::SpoolStats;

/// Counters shared by the shipper and collectors. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub started_ns: i64,
    pub batches_sent: AtomicU64,
    pub batches_acked: AtomicU64,
    pub events_acked: AtomicU64,
    pub batches_duplicate: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    collector_errors: Mutex<Vec<CollectorError>>,
    /// How long each collector's last successful collection took, in seconds.
    collector_durations: Mutex<BTreeMap<String, f64>>,
    /// Time from sending a batch to its acknowledgement, in microseconds.
    ack_latency_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

/// Percentiles of the acknowledgement latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Telemetry {
    pub fn new() -> Self {
        Telemetry {
            started_ns: now_ns(),
            ..Telemetry::default()
        }
    }

    /// Records that `collector` is failing, replacing an earlier report of the same collector.
    pub fn collector_failed(&self, collector: &str, reason: String) {
        let mut errors = self.errors();
        match errors.iter_mut().find(|e| e.collector == collector) {
            Some(e) => e.reason = reason,
            None => errors.push(CollectorError {
                collector: collector.to_owned(),
                reason,
                since_ns: now_ns(),
            }),
        }
    }

    /// Records the round-trip time of one acknowledged batch.
    pub fn record_ack_latency(&self, rtt: std::time::Duration) {
        let mut h = self
            .ack_latency_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if h.is_none() {
            // Three significant digits from 1 µs to an hour; these bounds are valid, so this
            // never stays None in practice.
            *h = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).ok();
        }
        if let Some(h) = h.as_mut() {
            let us = u64::try_from(rtt.as_micros())
                .unwrap_or(u64::MAX)
                .clamp(1, 3_600_000_000);
            h.saturating_record(us);
        }
    }

    /// The acknowledgement latency so far, if any batch was acknowledged.
    pub fn ack_latency(&self) -> Option<LatencySummary> {
        let h = self
            .ack_latency_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| LatencySummary {
                count: h.len(),
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
            })
    }

    /// Records that `collector` works again.
    pub fn collector_recovered(&self, collector: &str) {
        self.errors().retain(|e| e.collector != collector);
    }

    /// The collectors failing now.
    pub fn collector_errors(&self) -> Vec<CollectorError> {
        self.errors().clone()
    }

    /// Records how long a successful collection of `collector` took.
    pub fn record_collector_duration(&self, collector: &str, took: std::time::Duration) {
        // A panic while holding this lock cannot leave the map inconsistent: recover it.
        self.collector_durations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(collector.to_owned(), took.as_secs_f64());
    }

    /// The last collection time of every collector that succeeded at least once, in seconds.
    pub fn collector_durations(&self) -> Vec<(String, f64)> {
        self.collector_durations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    fn errors(&self) -> std::sync::MutexGuard<'_, Vec<CollectorError>> {
        // A panic while holding this lock cannot leave the Vec inconsistent: recover it.
        self.collector_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The agent's status now, from these counters and the spool's.
    pub fn status(&self, spool: &SpoolStats) -> AgentStatus {
        AgentStatus {
            time_ns: now_ns(),
            agent_version: outpost_common::VERSION.to_owned(),
            started_ns: self.started_ns,
            spool_bytes: spool.file_bytes,
            spool_events: spool.events,
            backlog_batches: spool.batches,
            spool_cap_bytes: spool.cap_bytes,
            batches_sent: self.batches_sent.load(Ordering::Relaxed),
            batches_acked: self.batches_acked.load(Ordering::Relaxed),
            events_acked: self.events_acked.load(Ordering::Relaxed),
            drops: spool.drops.clone(),
            collector_errors: self.errors().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_errors_are_replaced_and_cleared() {
        let t = Telemetry::new();
        t.collector_failed("metrics.fs", "timeout".into());
        t.collector_failed("metrics.fs", "timeout again".into());
        t.collector_failed("logs", "EACCES".into());
        let errs = t.errors().clone();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].reason, "timeout again");
        t.collector_recovered("metrics.fs");
        assert_eq!(t.collector_errors().len(), 1);
    }

    #[test]
    fn collector_durations_keep_the_last_value() {
        let t = Telemetry::new();
        assert!(t.collector_durations().is_empty());
        t.record_collector_duration("metrics.cpu", std::time::Duration::from_millis(3));
        t.record_collector_duration("metrics.cpu", std::time::Duration::from_millis(5));
        assert_eq!(
            t.collector_durations(),
            vec![("metrics.cpu".to_owned(), 0.005)]
        );
    }

    #[test]
    fn ack_latency_percentiles() {
        let t = Telemetry::new();
        assert_eq!(t.ack_latency(), None);
        for ms in 1..=100 {
            t.record_ack_latency(std::time::Duration::from_millis(ms));
        }
        let s = t.ack_latency().unwrap();
        assert_eq!(s.count, 100);
        assert!((49_000..=51_000).contains(&s.p50_us), "{s:?}");
        assert!((98_000..=100_100).contains(&s.p99_us), "{s:?}");
    }
}
