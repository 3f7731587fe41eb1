//! The agent's own counters, and the [`AgentStatus`] built from them for heartbeats.
//!
//! Counters change only through internal events ([`crate::internal_events`]): each event's
//! `emit` writes its log line and updates the counters it concerns, and [`Telemetry::emit`]
//! records its name when the telemetry was made with [`Telemetry::recording`], so tests can
//! assert on what happened.

use std::collections::BTreeMap;
use std::sync::Mutex;

use outpost_common::event::{AgentStatus, CollectorError};
use outpost_common::telemetry::Recorder;
use outpost_common::time::now_ns;

use crate::internal_events::InternalEvent;
use crate::spool::SpoolStats;

/// The collector name under which the agent's status reports the spool's trouble.
pub const SPOOL_COLLECTOR: &str = "spool";

/// Counters shared by the shipper and collectors. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Telemetry {
    pub started_ns: i64,
    counters: AtomicCounters,
    collector_errors: Mutex<Vec<CollectorError>>,
    /// How long each collector's last successful collection took, in seconds.
    collector_durations: Mutex<BTreeMap<String, f64>>,
    /// Each log file source's files, by source name.
    log_sources: Mutex<BTreeMap<String, crate::collectors::logs::files::SourceStats>>,
    /// Time from sending a batch to its acknowledgement, in microseconds.
    ack_latency_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
    /// The certificate in use and the last renewal error.
    certificate: Mutex<CertificateStatus>,
    /// The aggregator endpoint connected to now.
    aggregator: Mutex<Option<String>>,
    recorder: Recorder,
}

outpost_common::counters! {
    /// The agent's counters at one moment; each counts since the agent started.
    pub struct Counters;
    pub enum Counter;
    struct AtomicCounters;
    {
        /// Batches handed to the network.
        batches_sent => BatchesSent,
        /// Batches the aggregator acknowledged (stored, or held already).
        batches_acked => BatchesAcked,
        /// Events in the acknowledged batches.
        events_acked => EventsAcked,
        /// Acknowledgements of batches the aggregator already held (resent after a lost ack).
        batches_duplicate => BatchesDuplicate,
        /// Batches the aggregator refused for good; their events are counted as dropped.
        batches_rejected => BatchesRejected,
        /// Batches split to fit the aggregator's limits.
        batches_split => BatchesSplit,
        /// Connections established (Welcome received).
        connects => Connects,
        /// Established connections that ended.
        disconnects => Disconnects,
        /// Connections established to another aggregator endpoint than the one before.
        failovers => Failovers,
        /// Lines of journalctl's output that were not journal entries, skipped.
        journal_entries_malformed => JournalEntriesMalformed,
        /// Journal entries longer than `journal.max_entry_bytes`, skipped.
        journal_entries_too_long => JournalEntriesTooLong,
        /// Paths the file-integrity scans looked at.
        fim_paths_scanned => FimPathsScanned,
        /// Bytes of file content the file-integrity monitor hashed.
        fim_bytes_hashed => FimBytesHashed,
        /// File-integrity events produced.
        fim_events => FimEvents,
        /// Full file-integrity scans finished: the initial baseline and scheduled scans.
        fim_scans => FimScans,
        /// File-integrity rescans finished: at start, and of subtrees whose notifications were lost.
        fim_rescans => FimRescans,
        /// Paths a file-integrity scan could not read (their baseline was kept).
        fim_unreadable => FimUnreadable,
        /// Certificates renewed.
        cert_renewals => CertRenewals,
        /// Attempts to renew the certificate that failed.
        cert_renewal_failures => CertRenewalFailures,
    }
}

/// The agent's certificate as its status reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateStatus {
    /// When it expires, nanoseconds since the epoch; 0 when unknown.
    pub not_after_ns: i64,
    /// Why the last renewal attempt failed, until one succeeds.
    pub renewal_error: Option<String>,
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

    /// Telemetry that also records the name of every event emitted, for tests.
    pub fn recording() -> Self {
        Telemetry {
            recorder: Recorder::recording(),
            ..Telemetry::new()
        }
    }

    /// Emits an internal event: its log line and counters, and its name when recording.
    pub fn emit<E: InternalEvent<Self>>(&self, event: E) {
        self.recorder.record(E::NAME);
        event.emit(self);
    }

    /// The names of the events emitted so far (empty unless made with [`Telemetry::recording`]).
    pub fn recorded(&self) -> Vec<&'static str> {
        self.recorder.names()
    }

    /// Adds `n` to a counter. Only internal events call this.
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        self.counters.add(counter, n);
    }

    /// Every counter now.
    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    /// Records that `collector` is failing, replacing an earlier report of the same collector;
    /// returns whether this is news (it was not failing, or failed for another reason).
    pub(crate) fn collector_failed(&self, collector: &str, reason: String) -> bool {
        let mut errors = self.errors();
        match errors.iter_mut().find(|e| e.collector == collector) {
            Some(e) if e.reason == reason => false,
            Some(e) => {
                e.reason = reason;
                true
            }
            None => {
                errors.push(CollectorError {
                    collector: collector.to_owned(),
                    reason,
                    since_ns: now_ns(),
                });
                true
            }
        }
    }

    /// Records that `collector` works again; returns whether it was failing.
    pub(crate) fn collector_recovered(&self, collector: &str) -> bool {
        let mut errors = self.errors();
        let before = errors.len();
        errors.retain(|e| e.collector != collector);
        errors.len() != before
    }

    /// Records the round-trip time of one acknowledged batch.
    pub(crate) fn record_ack_latency(&self, rtt: std::time::Duration) {
        let mut h = self
            .ack_latency_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if h.is_none() {
            // Two significant digits (1 %) from 1 µs to an hour: 26 KiB, where three took 184.
            // These bounds are valid, so this never stays None in practice.
            *h = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2).ok();
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

    /// Records the certificate in use (at start, and when renewed, which clears the last
    /// renewal error).
    pub(crate) fn record_certificate(&self, not_after_ns: i64) {
        *self.cert() = CertificateStatus {
            not_after_ns,
            renewal_error: None,
        };
    }

    /// Records why a renewal attempt failed.
    pub(crate) fn record_renewal_error(&self, error: String) {
        self.cert().renewal_error = Some(error);
    }

    /// The certificate in use and the last renewal error.
    pub fn certificate(&self) -> CertificateStatus {
        self.cert().clone()
    }

    fn cert(&self) -> std::sync::MutexGuard<'_, CertificateStatus> {
        // A panic while holding this lock cannot leave the status inconsistent: recover it.
        self.certificate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the aggregator endpoint connected to now; `None` when disconnected.
    pub(crate) fn record_aggregator(&self, aggregator: Option<&str>) {
        *self
            .aggregator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = aggregator.map(str::to_owned);
    }

    /// The aggregator endpoint the agent is connected to now (with its address when the
    /// endpoint is a name), if any.
    pub fn aggregator(&self) -> Option<String> {
        // A panic while holding this lock cannot leave an Option inconsistent: recover it.
        self.aggregator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The collectors failing now.
    pub fn collector_errors(&self) -> Vec<CollectorError> {
        self.errors().clone()
    }

    /// Forgets a stopped source: its errors, its durations and (a log file source) its files.
    pub(crate) fn forget_collector(&self, collector: &str, log_source: Option<&str>) {
        self.errors().retain(|e| e.collector != collector);
        self.collector_durations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(collector);
        if let Some(source) = log_source {
            self.log_sources
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(source);
        }
    }

    /// Replaces what is known of the log file source `source`.
    pub(crate) fn record_log_source(
        &self,
        source: &str,
        stats: crate::collectors::logs::files::SourceStats,
    ) {
        self.log_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(source.to_owned(), stats);
    }

    /// Every log file source's files, by source name.
    pub fn log_sources(&self) -> BTreeMap<String, crate::collectors::logs::files::SourceStats> {
        self.log_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Bytes written to log files and not read yet, all sources together.
    pub fn log_lag_bytes(&self) -> u64 {
        self.log_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .flat_map(|s| s.files.iter().map(|(_, f)| f.lag()))
            .sum()
    }

    /// Records how long a successful collection of `collector` took.
    pub(crate) fn record_collector_duration(&self, collector: &str, took: std::time::Duration) {
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
        let c = self.counters();
        let cert = self.certificate();
        AgentStatus {
            time_ns: now_ns(),
            agent_version: outpost_common::VERSION.to_owned(),
            started_ns: self.started_ns,
            spool_bytes: spool.file_bytes,
            spool_events: spool.events,
            backlog_batches: spool.batches,
            spool_cap_bytes: spool.cap_bytes,
            batches_sent: c.batches_sent,
            batches_acked: c.batches_acked,
            events_acked: c.events_acked,
            drops: spool.drops.clone(),
            collector_errors: self.collector_errors_with(spool),
            logs: self.log_status(),
            cert_not_after_ns: cert.not_after_ns,
            cert_renewal_error: cert.renewal_error,
        }
    }

    /// The log file sources at a glance: files, lag, bytes lost, the files furthest behind.
    fn log_status(&self) -> outpost_common::event::LogStatus {
        /// Files named in a status at most.
        const LAGGING: usize = 5;
        let mut s = outpost_common::event::LogStatus::default();
        let mut lagging = Vec::new();
        for source in self.log_sources().values() {
            s.files_open += source.open_files as u64;
            s.lost_bytes += source.closed.lost.iter().sum::<u64>();
            for (path, f) in &source.files {
                s.lag_bytes += f.lag();
                s.lost_bytes += f.lost.iter().sum::<u64>();
                if f.lag() > 0 {
                    lagging.push((path.clone(), f.lag()));
                }
            }
        }
        lagging.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        lagging.truncate(LAGGING);
        s.lagging = lagging;
        s
    }

    /// The failing collectors, with the spool's trouble as a collector named `spool`, so the
    /// aggregator shows the host degraded with its reason until the trouble clears.
    fn collector_errors_with(&self, spool: &SpoolStats) -> Vec<CollectorError> {
        let mut errors = self.errors().clone();
        if let Some(trouble) = &spool.trouble {
            errors.push(CollectorError {
                collector: SPOOL_COLLECTOR.to_owned(),
                reason: trouble.message.clone(),
                since_ns: trouble.since_ns,
            });
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::internal_events::{BatchAcked, CollectorFailed, CollectorRecovered};

    #[test]
    fn the_status_sums_the_log_sources_and_names_the_files_furthest_behind() {
        use crate::collectors::logs::files::SourceStats;
        use crate::collectors::logs::tailer::FileStats;
        let t = Telemetry::new();
        let file = |size, offset, lost| FileStats {
            size,
            offset,
            lost: [lost, 0, 0],
            ..FileStats::default()
        };
        let mut files: Vec<(String, FileStats)> = (0..8)
            .map(|i| (format!("/var/log/app{i}.log"), file(1000 + i, 1000, 0)))
            .collect();
        files.push(("/var/log/caught-up.log".to_owned(), file(500, 500, 64)));
        t.record_log_source(
            "app",
            SourceStats {
                files,
                closed: file(0, 0, 100),
                redactions: Vec::new(),
                open_files: 9,
            },
        );
        let trouble = crate::spool::Trouble {
            kind: crate::spool::TroubleKind::Unavailable,
            message: String::new(),
            since_ns: 0,
        };
        let logs = t.status(&SpoolStats::unavailable(1, trouble)).logs;
        assert_eq!(logs.files_open, 9);
        assert_eq!(logs.lag_bytes, (0..8).sum::<u64>());
        assert_eq!(logs.lost_bytes, 164);
        assert_eq!(
            logs.lagging,
            [7, 6, 5, 4, 3]
                .map(|i| (format!("/var/log/app{i}.log"), i))
                .to_vec()
        );
    }

    #[test]
    fn collector_errors_are_replaced_and_cleared() {
        let t = Telemetry::recording();
        let failed = |collector: &'static str, reason: &str| CollectorFailed {
            collector,
            reason: reason.to_owned(),
        };
        t.emit(failed("metrics.fs", "timeout"));
        t.emit(failed("metrics.fs", "timeout again"));
        t.emit(failed("logs", "EACCES"));
        let errs = t.collector_errors();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].reason, "timeout again");
        t.emit(CollectorRecovered {
            collector: "metrics.fs",
        });
        assert_eq!(t.collector_errors().len(), 1);
        assert_eq!(
            t.recorded(),
            [
                "collector_failed",
                "collector_failed",
                "collector_failed",
                "collector_recovered"
            ]
        );
    }

    #[test]
    fn the_spools_trouble_is_reported_as_a_failing_collector_named_spool() {
        use crate::spool::{SpoolStats, Trouble, TroubleKind};
        let t = Telemetry::new();
        let message = "disk full: 0 B free on /var/lib/outpost; sources paused, samples dropped";
        let stats = SpoolStats::unavailable(
            1 << 30,
            Trouble {
                kind: TroubleKind::DiskFull,
                message: message.to_owned(),
                since_ns: 42,
            },
        );
        let errors = t.status(&stats).collector_errors;
        assert_eq!(
            errors,
            [CollectorError {
                collector: "spool".to_owned(),
                reason: message.to_owned(),
                since_ns: 42,
            }]
        );
        let healthy = SpoolStats {
            trouble: None,
            ..stats
        };
        assert!(t.status(&healthy).collector_errors.is_empty());
    }

    #[test]
    fn the_connection_names_its_aggregator_and_failovers_are_counted() {
        use crate::internal_events::{Connected, Disconnected, FailedOver};
        let t = Telemetry::recording();
        assert_eq!(t.aggregator(), None);
        let connected = |aggregator| Connected {
            aggregator,
            server_version: "test",
            max_in_flight: 32,
            max_batch_events: 1000,
            max_frame_bytes: 1 << 20,
            backlog_batches: 0,
        };
        t.emit(connected("quic://a:4433"));
        assert_eq!(t.aggregator().as_deref(), Some("quic://a:4433"));
        t.emit(Disconnected {
            aggregator: "quic://a:4433",
            reason: "connection lost",
        });
        assert_eq!(t.aggregator(), None);
        t.emit(FailedOver {
            from: "quic://a:4433",
            to: "quic://b:4433",
        });
        t.emit(connected("quic://b:4433"));
        assert_eq!(t.aggregator().as_deref(), Some("quic://b:4433"));
        let c = t.counters();
        assert_eq!((c.connects, c.disconnects, c.failovers), (2, 1, 1));
        assert_eq!(
            t.recorded(),
            ["connected", "disconnected", "failed_over", "connected"]
        );
    }

    #[test]
    fn collector_durations_keep_the_last_value() {
        let t = Telemetry::new();
        assert!(t.collector_durations().is_empty());
        t.record_collector_duration("metrics.cpu", Duration::from_millis(3));
        t.record_collector_duration("metrics.cpu", Duration::from_millis(5));
        assert_eq!(
            t.collector_durations(),
            vec![("metrics.cpu".to_owned(), 0.005)]
        );
    }

    #[test]
    fn acknowledgements_count_and_time_batches() {
        let t = Telemetry::new();
        assert_eq!(t.ack_latency(), None);
        for ms in 1..=100 {
            t.emit(BatchAcked {
                seq: ms,
                events: 10,
                rtt: Duration::from_millis(ms),
                duplicate: ms % 10 == 0,
            });
        }
        let s = t.ack_latency().unwrap();
        assert_eq!(s.count, 100);
        assert!((49_000..=51_000).contains(&s.p50_us), "{s:?}");
        assert!((98_000..=100_100).contains(&s.p99_us), "{s:?}");
        let c = t.counters();
        assert_eq!(
            (c.batches_acked, c.events_acked, c.batches_duplicate),
            (100, 1000, 10)
        );
    }
}
