//! WAL checkpoints on a thread of their own, off the commit path.
//!
//! By default SQLite checkpoints inside the commit that takes the log past 1,000 pages: that
//! commit copies the log into the database file and fsyncs it before it returns, so the batches
//! in it are acknowledged late and the next group waits. Profiles of a throughput run put a third
//! of the store writer's time there. Instead, the writer's commits nudge a checkpointer thread,
//! which runs `PASSIVE` checkpoints on a connection of its own: they block neither the writer
//! nor readers, and the writer starts the log again from its beginning at its first commit after a
//! checkpoint has caught up with it.
//!
//! The log stays bounded even if the checkpointer falls behind (a slow disk, a long read
//! transaction holding old pages): past [`Policy::backstop_pages`] the committing connection
//! checkpoints itself, as SQLite would have.
//!
//! Durability is unchanged: commits still fsync the log (`synchronous = FULL`), and a checkpoint
//! fsyncs the database file before the log may be reused.

use std::ffi::c_int;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, MAIN_DB};

use super::{BUSY_TIMEOUT, open_error};
use crate::store::StoreError;

/// When checkpoints run, in pages of the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Policy {
    /// A commit that leaves at least this many pages in the log nudges the checkpointer.
    pub nudge_pages: c_int,
    /// A commit that leaves at least this many pages in the log checkpoints them itself.
    pub backstop_pages: c_int,
}

impl Default for Policy {
    /// SQLite's own interval for the nudge (about 4 MiB of log with 4 KiB pages); 64 MiB for the
    /// backstop.
    fn default() -> Policy {
        Policy {
            nudge_pages: 1_000,
            backstop_pages: 16_384,
        }
    }
}

/// What checkpointing has done, for tests and metrics.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Nudges commits gave the checkpointer thread (a nudge given while one waits is not counted).
    pub nudges: AtomicU64,
    /// Checkpoints the checkpointer thread ran.
    pub background: AtomicU64,
    /// Checkpoints a commit ran itself because the log reached the backstop.
    pub inline: AtomicU64,
}

/// The checkpointer thread. It ends once the writer connection it was installed on is closed
/// (dropping its hook, the thread's only nudger), and is joined on drop, so it must be dropped
/// after that connection.
#[derive(Debug)]
pub(super) struct Checkpointer {
    handle: Option<JoinHandle<()>>,
    #[cfg_attr(not(test), expect(dead_code, reason = "read by tests"))]
    pub counts: Arc<Counts>,
}

impl Checkpointer {
    /// Turns off `writer`'s own checkpoints at 1,000 pages, opens the checkpointer's connection
    /// to the database at `path` and starts its thread.
    pub fn install(
        writer: &mut Connection,
        path: &Path,
        policy: Policy,
    ) -> Result<Checkpointer, StoreError> {
        let open_err = open_error(path);
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        let counts = Arc::new(Counts::default());
        let (nudge, nudged) = sync_channel(1);
        let thread_counts = Arc::clone(&counts);
        let thread_path = path.to_owned();
        let handle = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(&conn, &thread_path, &nudged, &thread_counts))
            .map_err(|e| StoreError::backend("starting the checkpoint thread", e))?;
        let hook_counts = Arc::clone(&counts);
        let hook_path = path.to_owned();
        // Replaces SQLite's own hook, which `wal_autocheckpoint` installs.
        writer
            .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: c_int| {
                after_commit(wal, pages, policy, &nudge, &hook_counts, &hook_path);
                Ok(())
            }))
            .map_err(open_err)?;
        Ok(Checkpointer {
            handle: Some(handle),
            counts,
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Called by SQLite after each commit of the writer, with the pages now in the log. Errors are
/// logged, never returned: the commit has already happened, and an error here would make it look
/// failed.
fn after_commit(
    wal: &mut rusqlite::hooks::Wal,
    pages: c_int,
    policy: Policy,
    nudge: &SyncSender<()>,
    counts: &Counts,
    path: &Path,
) {
    if pages >= policy.backstop_pages {
        match wal.checkpoint() {
            Ok(()) => {
                counts.inline.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    store = %path.display(),
                    pages,
                    "the write-ahead log reached its backstop; the commit checkpointed it itself"
                );
            }
            Err(error) => tracing::warn!(
                store = %path.display(),
                pages,
                %error,
                "cannot checkpoint the write-ahead log; it keeps growing until a checkpoint succeeds"
            ),
        }
    } else if pages >= policy.nudge_pages {
        match nudge.try_send(()) {
            Ok(()) => {
                counts.nudges.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(())) => {}
            // The thread is gone (it only ends when this hook is dropped, or if it panicked):
            // the backstop still bounds the log.
            Err(TrySendError::Disconnected(())) => {}
        }
    }
}

fn run(conn: &Connection, path: &Path, nudged: &Receiver<()>, counts: &Counts) {
    while nudged.recv().is_ok() {
        match conn.wal_checkpoint_v2(Some(MAIN_DB), CheckpointMode::PASSIVE) {
            Ok((log, done)) => {
                counts.background.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(store = %path.display(), log, done, "checkpointed");
            }
            Err(error) => tracing::warn!(
                store = %path.display(),
                %error,
                "cannot checkpoint the write-ahead log; the next commit past the threshold tries again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::EventStore;
    use crate::store::sqlite::SqliteStore;
    use crate::store::testutil::{batch, log};
    use outpost_common::event::EventKind;

    fn wal_bytes(store_path: &Path) -> u64 {
        let mut wal = store_path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(PathBuf::from(wal)).map_or(0, |m| m.len())
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    /// Commits far more than the backstop's worth of log: the checkpointer keeps up, so the log
    /// file stays near the nudge size and commits never had to checkpoint themselves; every row
    /// is in the database file once the store is closed.
    #[test]
    fn the_checkpointer_keeps_the_log_small_off_the_commit_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let policy = Policy {
            nudge_pages: 64,
            backstop_pages: 100_000,
        };
        let store = SqliteStore::open_with(&path, policy).unwrap();
        let mut largest_wal = 0;
        let mut seq = 0;
        for round in 0..40 {
            let events = (0..200).map(|i| log(round * 1000 + i, 1000)).collect();
            seq += 1;
            store.commit_batches(&[batch("a", 1, seq, events)]).unwrap();
            // Wait for the nudge this commit gave (if it gave one) to be served, so the next
            // commit can start the log again.
            let counts = &store.checkpointer.counts;
            wait_for("the checkpointer", || {
                counts.background.load(Ordering::Relaxed) == counts.nudges.load(Ordering::Relaxed)
            });
            largest_wal = largest_wal.max(wal_bytes(&path));
        }
        let counts = &store.checkpointer.counts;
        assert!(counts.background.load(Ordering::Relaxed) > 0);
        assert_eq!(counts.inline.load(Ordering::Relaxed), 0);
        // 40 commits of ~200 KiB each would make a log of ~8 MiB without checkpoints; with
        // them it holds about two commits past the nudge.
        assert!(
            largest_wal < 2 * 1024 * 1024,
            "the log grew to {largest_wal} bytes"
        );
        assert_eq!(store.count_events(EventKind::Log, None).unwrap(), 40 * 200);
    }

    /// With no checkpointer running (a nudge goes nowhere), commits checkpoint the log themselves
    /// at the backstop.
    #[test]
    fn commits_checkpoint_themselves_at_the_backstop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let policy = Policy {
            nudge_pages: 1_000_000,
            backstop_pages: 64,
        };
        let store = SqliteStore::open_with(&path, policy).unwrap();
        for seq in 1..=20 {
            let events = (0..200).map(|i| log(seq * 1000 + i, 1000)).collect();
            store
                .commit_batches(&[batch("a", 1, seq as u64, events)])
                .unwrap();
        }
        let counts = &store.checkpointer.counts;
        assert!(counts.inline.load(Ordering::Relaxed) > 0);
        assert_eq!(counts.background.load(Ordering::Relaxed), 0);
        assert!(
            wal_bytes(&path) < 2 * 1024 * 1024,
            "the log grew to {} bytes",
            wal_bytes(&path)
        );
    }
}
