//! The agent's internal events: what it did or suffered, each written once as a struct whose
//! `emit` logs its sentence and updates its counters.
//!
//! Emit through [`Telemetry::emit`], which also records the event's [`InternalEvent::NAME`] when
//! the telemetry records (tests). A new event goes here, beside the others, so its log line and
//! its counter are found together.

use std::time::Duration;

use outpost_common::wire::RejectCode;
use tracing::{debug, info, warn};

use crate::telemetry::{Counter, Telemetry};

pub use outpost_common::telemetry::InternalEvent;

/// A connection to the aggregator is established: its Welcome arrived.
#[derive(Debug)]
pub struct Connected<'a> {
    /// The endpoint connected to, with its address when the endpoint is a name.
    pub aggregator: &'a str,
    pub server_version: &'a str,
    pub max_in_flight: u32,
    pub max_batch_events: u32,
    pub max_frame_bytes: u32,
    pub backlog_batches: u64,
}

impl InternalEvent<Telemetry> for Connected<'_> {
    const NAME: &'static str = "connected";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::Connects, 1);
        t.record_aggregator(Some(self.aggregator));
        info!(
            aggregator = self.aggregator,
            server_version = self.server_version,
            max_in_flight = self.max_in_flight,
            max_batch_events = self.max_batch_events,
            max_frame_bytes = self.max_frame_bytes,
            backlog_batches = self.backlog_batches,
            "connected to the aggregator"
        );
    }
}

/// An established connection ended (for a reason other than the agent shutting down).
#[derive(Debug)]
pub struct Disconnected<'a> {
    /// The endpoint it was connected to.
    pub aggregator: &'a str,
    pub reason: &'a str,
}

impl InternalEvent<Telemetry> for Disconnected<'_> {
    const NAME: &'static str = "disconnected";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::Disconnects, 1);
        t.record_aggregator(None);
        info!(
            aggregator = self.aggregator,
            reason = self.reason,
            "disconnected from the aggregator"
        );
    }
}

/// No connection now: the attempt at `aggregator` failed, or its connection was lost. The
/// next attempt is at `next` at once, or after `retry_in`.
#[derive(Debug)]
pub struct NotConnected<'a> {
    /// The endpoint that failed; every endpoint when none resolved.
    pub aggregator: &'a str,
    pub error: &'a str,
    pub retry_in: Duration,
    /// The endpoint tried next, at once; `None` when the next attempt waits `retry_in`.
    pub next: Option<&'a str>,
}

impl InternalEvent<Telemetry> for NotConnected<'_> {
    const NAME: &'static str = "not_connected";

    fn emit(self, _: &Telemetry) {
        match self.next {
            Some(next) => warn!(
                aggregator = self.aggregator,
                error = self.error,
                next,
                "not connected to the aggregator; trying the next endpoint"
            ),
            None => warn!(
                aggregator = self.aggregator,
                error = self.error,
                retry_in = ?self.retry_in,
                "not connected to the aggregator"
            ),
        }
    }
}

/// The agent is connected to another aggregator endpoint than the one it was connected to
/// before (or, before its first connection, than the first one it tried). Unacknowledged
/// batches are sent again to the new one.
#[derive(Debug)]
pub struct FailedOver<'a> {
    pub from: &'a str,
    pub to: &'a str,
}

impl InternalEvent<Telemetry> for FailedOver<'_> {
    const NAME: &'static str = "failed_over";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::Failovers, 1);
        warn!(
            from = self.from,
            to = self.to,
            "failed over to another aggregator"
        );
    }
}

/// One of several aggregator endpoints did not resolve; the others are tried. (When none
/// resolves, [`NotConnected`] says so.)
#[derive(Debug)]
pub struct EndpointUnresolved<'a> {
    pub error: &'a str,
}

impl InternalEvent<Telemetry> for EndpointUnresolved<'_> {
    const NAME: &'static str = "endpoint_unresolved";

    fn emit(self, _: &Telemetry) {
        warn!(
            error = self.error,
            "an aggregator endpoint does not resolve; trying the others"
        );
    }
}

/// A batch was handed to the network.
#[derive(Debug)]
pub struct BatchSent {
    pub seq: u64,
    pub events: u32,
}

impl InternalEvent<Telemetry> for BatchSent {
    const NAME: &'static str = "batch_sent";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::BatchesSent, 1);
        debug!(seq = self.seq, events = self.events, "batch sent");
    }
}

/// The aggregator acknowledged a batch: it is stored centrally and leaves the spool.
#[derive(Debug)]
pub struct BatchAcked {
    pub seq: u64,
    pub events: u32,
    /// From sending the batch to its acknowledgement.
    pub rtt: Duration,
    /// The aggregator held it already (it was resent after a lost acknowledgement).
    pub duplicate: bool,
}

impl InternalEvent<Telemetry> for BatchAcked {
    const NAME: &'static str = "batch_acked";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::BatchesAcked, 1);
        t.add(Counter::EventsAcked, u64::from(self.events));
        if self.duplicate {
            t.add(Counter::BatchesDuplicate, 1);
        }
        t.record_ack_latency(self.rtt);
        debug!(seq = self.seq, rtt = ?self.rtt, duplicate = self.duplicate, "batch acknowledged");
    }
}

/// The agent's certificate was renewed: the new key and certificate are on disk and the next
/// connection presents them.
#[derive(Debug)]
pub struct CertificateRenewed<'a> {
    pub serial: &'a str,
    pub not_after_ns: i64,
}

impl InternalEvent<Telemetry> for CertificateRenewed<'_> {
    const NAME: &'static str = "certificate_renewed";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::CertRenewals, 1);
        t.record_certificate(self.not_after_ns);
        info!(
            serial = self.serial,
            not_after = %outpost_common::time::format_rfc3339(self.not_after_ns),
            "certificate renewed; reconnecting with it"
        );
    }
}

/// An attempt to renew the certificate failed; the next is in `retry_in`. The status reports
/// the error until a renewal succeeds.
#[derive(Debug)]
pub struct CertificateRenewalFailed<'a> {
    pub error: &'a str,
    pub retry_in: Duration,
    /// When the certificate in use expires.
    pub not_after_ns: i64,
}

impl InternalEvent<Telemetry> for CertificateRenewalFailed<'_> {
    const NAME: &'static str = "certificate_renewal_failed";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::CertRenewalFailures, 1);
        t.record_renewal_error(self.error.to_owned());
        warn!(
            error = self.error,
            retry_in = ?self.retry_in,
            expires = %outpost_common::time::format_rfc3339(self.not_after_ns),
            "cannot renew the certificate"
        );
    }
}

/// The aggregator refused a batch for good; its events are dropped and counted as
/// `rejected_by_aggregator`.
#[derive(Debug)]
pub struct BatchRejected<'a> {
    pub seq: u64,
    pub code: RejectCode,
    pub reason: &'a str,
}

impl InternalEvent<Telemetry> for BatchRejected<'_> {
    const NAME: &'static str = "batch_rejected";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::BatchesRejected, 1);
        warn!(
            seq = self.seq,
            code = ?self.code,
            reason = self.reason,
            "the aggregator rejected a batch permanently; dropping it"
        );
    }
}

/// A batch packed before the aggregator's limits were known was split to fit them.
#[derive(Debug)]
pub struct BatchSplit<'a> {
    pub seq: u64,
    pub events: u32,
    pub bytes: usize,
    pub max_events: usize,
    pub max_bytes: usize,
    /// The seqs of the batches that replace it, in order.
    pub new_seqs: &'a [u64],
}

impl InternalEvent<Telemetry> for BatchSplit<'_> {
    const NAME: &'static str = "batch_split";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::BatchesSplit, 1);
        info!(
            seq = self.seq,
            events = self.events,
            bytes = self.bytes,
            max_events = self.max_events,
            max_bytes = self.max_bytes,
            batches = self.new_seqs.len(),
            first_seq = self.new_seqs.first().copied().unwrap_or_default(),
            last_seq = self.new_seqs.last().copied().unwrap_or_default(),
            "batch exceeds the aggregator's limits; split it into smaller batches"
        );
    }
}

/// A collector failed or overran its deadline; reported in the agent's status until it
/// recovers.
#[derive(Debug)]
pub struct CollectorFailed<'a> {
    pub collector: &'a str,
    pub reason: String,
}

impl InternalEvent<Telemetry> for CollectorFailed<'_> {
    const NAME: &'static str = "collector_failed";

    fn emit(self, t: &Telemetry) {
        let (collector, reason) = (self.collector, self.reason.clone());
        if t.collector_failed(collector, self.reason) {
            warn!(collector, %reason, "collector failing");
        } else {
            debug!(collector, %reason, "collector still failing");
        }
    }
}

/// A collector that was failing works again.
#[derive(Debug)]
pub struct CollectorRecovered<'a> {
    pub collector: &'a str,
}

impl InternalEvent<Telemetry> for CollectorRecovered<'_> {
    const NAME: &'static str = "collector_recovered";

    fn emit(self, t: &Telemetry) {
        if t.collector_recovered(self.collector) {
            info!(collector = self.collector, "collector recovered");
        }
    }
}

/// A collection finished in `took`: the collector works.
#[derive(Debug)]
pub struct CollectionFinished<'a> {
    pub collector: &'a str,
    pub took: Duration,
}

impl InternalEvent<Telemetry> for CollectionFinished<'_> {
    const NAME: &'static str = "collection_finished";

    fn emit(self, t: &Telemetry) {
        t.record_collector_duration(self.collector, self.took);
        if t.collector_recovered(self.collector) {
            info!(collector = self.collector, "collector recovered");
        }
    }
}

/// A log file source read a round: what it knows of its files now.
#[derive(Debug)]
pub struct LogFilesRead<'a> {
    pub source: &'a str,
    pub files: Vec<(String, crate::collectors::logs::tailer::FileStats)>,
    pub closed: crate::collectors::logs::tailer::FileStats,
    pub redactions: Vec<(String, u64)>,
    pub open_files: usize,
}

impl InternalEvent<Telemetry> for LogFilesRead<'_> {
    const NAME: &'static str = "log_files_read";

    fn emit(self, t: &Telemetry) {
        t.record_log_source(
            self.source,
            crate::collectors::logs::files::SourceStats {
                files: self.files,
                closed: self.closed,
                redactions: self.redactions,
                open_files: self.open_files,
            },
        );
    }
}

/// Droppable samples could not be written to the spool; the spool counts them as
/// `spool_write_failed`.
#[derive(Debug)]
pub struct SamplesLost<'a> {
    /// What was lost: "metric samples", "a status snapshot".
    pub what: &'a str,
    pub events: usize,
    pub error: &'a str,
}

impl InternalEvent<Telemetry> for SamplesLost<'_> {
    const NAME: &'static str = "samples_lost";

    fn emit(self, _: &Telemetry) {
        warn!(
            events = self.events,
            error = self.error,
            "cannot spool {}; they are lost and counted as spool_write_failed",
            self.what
        );
    }
}

/// A line journalctl printed is not a journal entry: it is skipped and counted, and the journal
/// source goes on with the next line.
#[derive(Debug)]
pub struct JournalEntryMalformed<'a> {
    pub error: &'a str,
    /// The start of the line.
    pub line: &'a str,
}

impl InternalEvent<Telemetry> for JournalEntryMalformed<'_> {
    const NAME: &'static str = "journal_entry_malformed";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::JournalEntriesMalformed, 1);
        warn!(
            error = self.error,
            line = self.line,
            "skipped a line of journalctl's output that is not a journal entry"
        );
    }
}

/// A journal entry longer than `journal.max_entry_bytes` (as journalctl prints it) was skipped
/// and counted.
#[derive(Debug)]
pub struct JournalEntryTooLong {
    pub bytes: u64,
    pub max_bytes: u64,
}

impl InternalEvent<Telemetry> for JournalEntryTooLong {
    const NAME: &'static str = "journal_entry_too_long";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::JournalEntriesTooLong, 1);
        warn!(
            bytes = self.bytes,
            max_bytes = self.max_bytes,
            "skipped a journal entry longer than journal.max_entry_bytes"
        );
    }
}

/// Shutdown began on an established connection: nothing more is sent, and the acknowledgements of
/// the `in_flight` batches are awaited until the grace period ends.
#[derive(Debug)]
pub struct DrainStarted {
    pub in_flight: usize,
}

impl InternalEvent<Telemetry> for DrainStarted {
    const NAME: &'static str = "drain_started";

    fn emit(self, _: &Telemetry) {
        info!(
            in_flight = self.in_flight,
            "shutting down: waiting for outstanding acknowledgements"
        );
    }
}

/// The shutdown grace period ended with `in_flight` batches unanswered; they stay in the spool
/// and are sent again after the restart.
#[derive(Debug)]
pub struct GraceExpired {
    pub in_flight: usize,
}

impl InternalEvent<Telemetry> for GraceExpired {
    const NAME: &'static str = "grace_expired";

    fn emit(self, _: &Telemetry) {
        warn!(
            in_flight = self.in_flight,
            "grace period over; unacknowledged batches stay in the spool"
        );
    }
}

/// The disk under the spool has no room left beyond the reserve: Wait-class sources pause,
/// droppable samples are dropped as `disk_full`, acknowledgements still commit.
#[derive(Debug)]
pub struct SpoolDiskFull<'a> {
    pub message: &'a str,
}

impl InternalEvent<Telemetry> for SpoolDiskFull<'_> {
    const NAME: &'static str = "spool_disk_full";

    fn emit(self, _: &Telemetry) {
        warn!(
            trouble = self.message,
            "the spool's disk is full; sources paused, samples dropped until space returns"
        );
    }
}

/// The disk under the spool has room again.
#[derive(Debug)]
pub struct SpoolDiskRecovered;

impl InternalEvent<Telemetry> for SpoolDiskRecovered {
    const NAME: &'static str = "spool_disk_recovered";

    fn emit(self, _: &Telemetry) {
        info!("the spool's disk has room again; sources resume");
    }
}

/// The spool cannot be opened or written: its directory is read-only or gone.
#[derive(Debug)]
pub struct SpoolUnavailable<'a> {
    pub message: &'a str,
}

impl InternalEvent<Telemetry> for SpoolUnavailable<'_> {
    const NAME: &'static str = "spool_unavailable";

    fn emit(self, _: &Telemetry) {
        warn!(
            trouble = self.message,
            "the spool cannot be written; retrying, sources paused, samples dropped"
        );
    }
}

/// The spool can be written again after being read-only or unavailable.
#[derive(Debug)]
pub struct SpoolAvailable;

impl InternalEvent<Telemetry> for SpoolAvailable {
    const NAME: &'static str = "spool_available";

    fn emit(self, _: &Telemetry) {
        info!("the spool can be written again; sources resume");
    }
}

/// The spool's reserve file was deleted so that a write (an acknowledgement) could commit.
#[derive(Debug)]
pub struct ReserveReleased<'a> {
    pub path: &'a std::path::Path,
    pub bytes: u64,
}

impl InternalEvent<Telemetry> for ReserveReleased<'_> {
    const NAME: &'static str = "reserve_released";

    fn emit(self, _: &Telemetry) {
        warn!(
            reserve = %self.path.display(),
            bytes = self.bytes,
            "out of disk space: released the spool's reserve so acknowledgements can commit"
        );
    }
}

/// The spool's reserve file was written again, the disk having room for it.
#[derive(Debug)]
pub struct ReserveRestored<'a> {
    pub path: &'a std::path::Path,
    pub bytes: u64,
}

impl InternalEvent<Telemetry> for ReserveRestored<'_> {
    const NAME: &'static str = "reserve_restored";

    fn emit(self, _: &Telemetry) {
        info!(
            reserve = %self.path.display(),
            bytes = self.bytes,
            "the spool's reserve is in place again"
        );
    }
}

/// Free pages of the spool were given back to the filesystem after acknowledgements.
#[derive(Debug)]
pub struct SpoolVacuumed {
    pub pages: u64,
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
}

impl InternalEvent<Telemetry> for SpoolVacuumed {
    const NAME: &'static str = "spool_vacuumed";

    fn emit(self, _: &Telemetry) {
        debug!(
            pages = self.pages,
            file_bytes_before = self.file_bytes_before,
            file_bytes_after = self.file_bytes_after,
            "gave the spool's free pages back to the filesystem"
        );
    }
}

/// Turns the spool's disk reports into the events above.
#[derive(Debug, Clone)]
pub struct SpoolReporter(pub std::sync::Arc<Telemetry>);

impl crate::spool::DiskReporter for SpoolReporter {
    fn report(&self, event: crate::spool::DiskEvent) {
        use crate::spool::{DiskEvent, TroubleKind};
        let t = &self.0;
        match event {
            DiskEvent::Trouble(trouble) if trouble.kind == TroubleKind::DiskFull => {
                t.emit(SpoolDiskFull {
                    message: &trouble.message,
                });
            }
            DiskEvent::Trouble(trouble) => t.emit(SpoolUnavailable {
                message: &trouble.message,
            }),
            DiskEvent::Recovered {
                kind: TroubleKind::DiskFull,
            } => t.emit(SpoolDiskRecovered),
            DiskEvent::Recovered { .. } => t.emit(SpoolAvailable),
            DiskEvent::ReserveReleased { path, bytes } => {
                t.emit(ReserveReleased { path: &path, bytes })
            }
            DiskEvent::ReserveRestored { path, bytes } => {
                t.emit(ReserveRestored { path: &path, bytes })
            }
            DiskEvent::Vacuumed {
                pages,
                file_bytes_before,
                file_bytes_after,
            } => t.emit(SpoolVacuumed {
                pages,
                file_bytes_before,
                file_bytes_after,
            }),
        }
    }
}

/// Which kind of file-integrity scan finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FimScanKind {
    /// The initial baseline: no events.
    Baseline,
    /// A scheduled full scan.
    Scheduled,
    /// A full scan at start, or a subtree whose notifications were lost.
    Rescan,
    /// Paths reported by the watcher.
    Realtime,
}

/// A file-integrity scan (or a round of realtime checks) finished.
#[derive(Debug)]
pub struct FimScanFinished {
    pub kind: FimScanKind,
    pub paths: u64,
    pub bytes_hashed: u64,
    pub events: u64,
    pub unreadable: u64,
    pub took: Duration,
}

impl InternalEvent<Telemetry> for FimScanFinished {
    const NAME: &'static str = "fim_scan_finished";

    fn emit(self, t: &Telemetry) {
        t.add(Counter::FimPathsScanned, self.paths);
        t.add(Counter::FimBytesHashed, self.bytes_hashed);
        t.add(Counter::FimEvents, self.events);
        t.add(Counter::FimUnreadable, self.unreadable);
        match self.kind {
            FimScanKind::Baseline | FimScanKind::Scheduled => t.add(Counter::FimScans, 1),
            FimScanKind::Rescan => t.add(Counter::FimRescans, 1),
            FimScanKind::Realtime => {}
        }
        if self.kind == FimScanKind::Realtime {
            debug!(
                paths = self.paths,
                events = self.events,
                "fim: realtime changes checked"
            );
        } else {
            info!(
                kind = ?self.kind,
                paths = self.paths,
                bytes_hashed = self.bytes_hashed,
                events = self.events,
                unreadable = self.unreadable,
                took_s = self.took.as_secs_f64(),
                "fim: scan finished"
            );
        }
    }
}
