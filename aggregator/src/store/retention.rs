//! Periodic retention on a thread of its own.
//!
//! [`EventStore::enforce_retention`] blocks on disk for as long as there is old data to delete (in
//! small chunks that let commits through), so it runs here rather than on the async runtime or
//! the writer thread. A pass runs at once when the task starts (catching up after downtime), then
//! every `interval`.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use outpost_common::time::now_ns;

use super::{EventStore, Retention, StoreError};

/// The running retention thread.
#[derive(Debug)]
pub struct RetentionTask {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
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
    let handle = std::thread::Builder::new()
        .name("store-retention".into())
        .spawn(move || {
            loop {
                run_pass(store.as_ref(), &retention, now_ns());
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .map_err(|e| StoreError::backend("starting the retention thread", e))?;
    Ok(RetentionTask { stop, handle })
}

impl RetentionTask {
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
fn run_pass(store: &dyn EventStore, retention: &Retention, now_ns: i64) {
    match store.enforce_retention(retention, now_ns) {
        Ok(report) if report.chunks == 0 => {
            tracing::debug!("Retention found nothing to delete.");
        }
        Ok(report) => tracing::info!(
            metric = report.metric,
            log = report.log,
            fim = report.fim,
            status = report.status,
            dedup_entries = report.dedup_entries,
            chunks = report.chunks,
            "Retention deleted old data."
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
        task.stop().unwrap();
        assert_eq!(store.count_events(EventKind::Log, None).unwrap(), 3);
    }
}
