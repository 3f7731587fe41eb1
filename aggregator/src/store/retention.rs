//! Periodic retention on a thread of its own.
//!
//! [`EventStore::enforce_retention`] blocks on disk for as long as there is old data to delete (in
//! small chunks that let commits through), so it runs here rather than on the async runtime or
//! the writer thread. A pass runs at once when the task starts (catching up after downtime), then
//! every `interval`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use outpost_common::time::now_ns;

use super::{EventStore, Retention, RetentionReport, StoreError};

/// The running retention thread.
#[derive(Debug)]
pub struct RetentionTask {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
    progress: Arc<Progress>,
}

/// What retention has done since the aggregator started, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionFigures {
    /// Passes finished, and those that failed part-way.
    pub passes: u64,
    pub failures: u64,
    /// When the last pass finished (nanoseconds since the epoch; 0 before the first).
    pub last_pass_ns: i64,
    /// Everything the passes did, added up.
    pub done: RetentionReport,
}

/// Shared between the retention thread and readers of [`RetentionFigures`].
#[derive(Debug)]
pub struct Progress {
    passes: AtomicU64,
    failures: AtomicU64,
    last_pass_ns: AtomicI64,
    done: Mutex<RetentionReport>,
    /// Seconds each pass took.
    durations: prometheus::Histogram,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            passes: AtomicU64::default(),
            failures: AtomicU64::default(),
            last_pass_ns: AtomicI64::default(),
            done: Mutex::default(),
            durations: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "outpost_retention_pass_duration_seconds",
                    "Time each retention pass took (deleting and packing in small steps).",
                )
                .buckets(vec![0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0]),
            )
            .unwrap_or_else(|e| unreachable!("a valid histogram: {e}")),
        }
    }
}

impl Progress {
    /// The histogram of pass durations, for a metrics registry.
    pub fn histogram(&self) -> prometheus::Histogram {
        self.durations.clone()
    }

    pub fn snapshot(&self) -> RetentionFigures {
        RetentionFigures {
            passes: self.passes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_pass_ns: self.last_pass_ns.load(Ordering::Relaxed),
            done: *self.done.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    fn record(&self, result: &Result<RetentionReport, StoreError>, took: Duration) {
        match result {
            Ok(report) => {
                self.passes.fetch_add(1, Ordering::Relaxed);
                self.done
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add(report);
            }
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.last_pass_ns.store(now_ns(), Ordering::Relaxed);
        self.durations.observe(took.as_secs_f64());
    }
}

/// Starts retention on its own thread: one pass now, then one every `interval`.
///
/// Each pass's result is logged. Fails only if the OS refuses a new thread.
pub fn spawn_retention(
    store: Arc<dyn EventStore>,
    retention: Retention,
    interval: Duration,
) -> Result<RetentionTask, StoreError> {
    let (stop, stopped) = mpsc::channel();
    let progress = Arc::new(Progress::default());
    let thread_progress = Arc::clone(&progress);
    let handle = std::thread::Builder::new()
        .name("store-retention".into())
        .spawn(move || {
            loop {
                run_pass(store.as_ref(), &retention, now_ns(), &thread_progress);
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .map_err(|e| StoreError::backend("starting the retention thread", e))?;
    Ok(RetentionTask {
        stop,
        handle,
        progress,
    })
}

impl RetentionTask {
    /// A reader of what the passes did.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Stops the thread after the pass in progress (if any) and waits for it.
    pub fn stop(self) -> Result<(), StoreError> {
        // The thread may already have ended; then there is nobody to tell.
        let _ = self.stop.send(());
        self.handle
            .join()
            .map_err(|_| StoreError::backend("stopping retention", ThreadPanicked))
    }
}

/// One retention pass, logged.
fn run_pass(store: &dyn EventStore, retention: &Retention, now_ns: i64, progress: &Progress) {
    let started = std::time::Instant::now();
    let result = store.enforce_retention(retention, now_ns);
    progress.record(&result, started.elapsed());
    match result {
        Ok(report) if report.chunks == 0 => {
            tracing::debug!("Retention found nothing to delete.");
        }
        Ok(report) => tracing::info!(
            metric = report.metric,
            log = report.log,
            fim = report.fim,
            status = report.status,
            dedup_entries = report.dedup_entries,
            metric_points_packed = report.metric_points_packed,
            metric_chunks_written = report.metric_chunks_written,
            chunks = report.chunks,
            "Retention deleted old data and packed metric points."
        ),
        Err(e) => {
            tracing::warn!(error = %e, "Retention failed; it will try again at the next interval.")
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the retention thread panicked")]
struct ThreadPanicked;

#[cfg(test)]
mod tests {
    use outpost_common::event::EventKind;

    use super::*;
    use crate::store::SqliteStore;
    use crate::store::testutil::logs;

    #[test]
    fn a_pass_runs_at_start_and_stop_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
        // Received in 2023: far older than any default period today.
        store.commit_batches(&[logs("a", 1, 1, 5)]).unwrap();
        let mut fresh = logs("a", 1, 2, 3);
        fresh.received_ns = now_ns();
        store.commit_batches(&[fresh]).unwrap();

        let task = spawn_retention(
            store.clone(),
            Retention::default(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let progress = task.progress();
        task.stop().unwrap();
        assert_eq!(store.count_events(EventKind::Log, None).unwrap(), 3);
        // The pass is counted with what it did.
        let figures = progress.snapshot();
        assert_eq!((figures.passes, figures.failures), (1, 0));
        assert_eq!(figures.done.log, 5);
        assert!(figures.last_pass_ns > 0);
        assert_eq!(progress.histogram().get_sample_count(), 1);
    }
}
