//! The spool's writer: one OS thread owns the [`Spool`]; everyone else holds a [`SpoolHandle`].
//!
//! SQLite work is blocking and one connection serves one thread, so a dedicated thread keeps it
//! off the async runtime. Owning the spool in one place also gives two things for free:
//!
//! - **Group commit.** The thread blocks for a command; when it is a submission, it takes every
//!   other submission already queued (up to [`GROUP_MAX_EVENTS`] events) and appends them all in
//!   one transaction, so many collectors share one fsync.
//! - **Back-pressure.** A Wait-class submission that finds the spool full is *held* by the thread
//!   and retried after an acknowledgement, a dropped batch or a split frees space, so
//!   [`SpoolHandle::submit`] simply takes longer and never returns [`SubmitOutcome::Full`]. While
//!   some are held, new Wait-class submissions queue behind them, so a large one is not starved
//!   by small ones. A held submission whose caller went away is forgotten without being written.
//!
//! The spool's statistics are published on a watch channel after every change, so readers
//! ([`SpoolHandle::stats`], the agent's status and metrics) never wait for the thread.
//!
//! When every handle is dropped the thread finishes the queued commands, answers any still-held
//! submission with [`SpoolError::ShuttingDown`], closes the spool and exits; [`SpoolJoin::join`]
//! waits for that.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use outpost_common::event::DropReason;
use outpost_common::time::now_ns;
use tokio::sync::{mpsc, oneshot, watch};

use super::plan::Decision;
use super::{
    Class, Spool, SpoolError, SpoolStats, StateRow, StoredBatch, Submission, SubmitOutcome,
};

/// How many events one group commit gathers at most, besides the submission that started it.
pub const GROUP_MAX_EVENTS: usize = 4096;

/// Commands queued for the writer before senders wait.
const QUEUE_CAPACITY: usize = 256;

/// Starts the writer thread that owns `spool`.
pub fn spawn(spool: Spool) -> (SpoolHandle, SpoolJoin) {
    let (handle, writer) = channel(spool);
    // Creating a thread fails only when the OS is out of resources at start-up; std::thread::spawn
    // panics in the same case.
    let thread = std::thread::Builder::new()
        .name("outpost-spool".to_owned())
        .spawn(move || writer.run())
        .expect("the OS can create the spool writer thread");
    (handle, SpoolJoin { thread })
}

/// A cloneable way to talk to the spool's writer thread.
#[derive(Debug, Clone)]
pub struct SpoolHandle {
    commands: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
    stats: watch::Receiver<SpoolStats>,
    group_commits: Arc<AtomicU64>,
}

impl SpoolHandle {
    /// Appends a submission; returns once it is committed.
    ///
    /// A Wait-class submission that does not fit is held by the writer until space is freed, so
    /// this never returns [`SubmitOutcome::Full`]. Dropping the future gives up a held
    /// submission without writing it.
    pub async fn submit(&self, sub: Submission) -> Result<SubmitOutcome, SpoolError> {
        self.request(|reply| Command::Submit(Pending { sub, reply }))
            .await
    }

    /// The last committed checkpoint of `source`.
    pub async fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        let source = source.to_owned();
        self.request(|reply| Command::Checkpoint { source, reply })
            .await
    }

    /// The row `key` of `source`'s keyed state, as last committed.
    pub async fn state(&self, source: &str, key: &[u8]) -> Result<Option<Vec<u8>>, SpoolError> {
        let (source, key) = (source.to_owned(), key.to_vec());
        self.request(|reply| Command::State { source, key, reply })
            .await
    }

    /// See [`Spool::state_page`].
    pub async fn state_page(
        &self,
        source: &str,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<StateRow>, SpoolError> {
        let source = source.to_owned();
        self.request(|reply| Command::StatePage {
            source,
            after,
            limit,
            reply,
        })
        .await
    }

    /// See [`Spool::batches_after`].
    pub async fn batches_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredBatch>, SpoolError> {
        self.request(|reply| Command::BatchesAfter {
            after_seq,
            limit,
            reply,
        })
        .await
    }

    /// See [`Spool::ack`]. Held submissions are retried afterwards.
    pub async fn ack(&self, seqs: Vec<u64>) -> Result<(), SpoolError> {
        self.request(|reply| Command::Ack { seqs, reply }).await
    }

    /// See [`Spool::drop_batch`]. Held submissions are retried afterwards.
    pub async fn drop_batch(&self, seq: u64, reason: DropReason) -> Result<(), SpoolError> {
        self.request(|reply| Command::DropBatch { seq, reason, reply })
            .await
    }

    /// See [`Spool::split_batch`]. [`SpoolHandle::subscribe`] sees the new seqs before this
    /// returns; held submissions are retried afterwards, as a split may drop events.
    pub async fn split_batch(
        &self,
        seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<u64>, SpoolError> {
        self.request(|reply| Command::SplitBatch {
            seq,
            max_events,
            max_bytes,
            reply,
        })
        .await
    }

    /// See [`Spool::set_batch_limits`]; appends queued after this call pack to the new limits.
    pub async fn set_batch_limits(
        &self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(), SpoolError> {
        self.request(|reply| Command::SetBatchLimits {
            max_events,
            max_bytes,
            reply,
        })
        .await
    }

    /// The spool's statistics as of the last change; never waits for the writer.
    pub fn stats(&self) -> SpoolStats {
        self.stats.borrow().clone()
    }

    /// The spool's statistics, updated after every change.
    pub fn watch_stats(&self) -> watch::Receiver<SpoolStats> {
        self.stats.clone()
    }

    /// The highest seq committed so far (0 before the first batch); the shipper waits on it for
    /// new data. The current value counts as seen: read it with `borrow` before waiting.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        let mut rx = self.committed.clone();
        rx.mark_unchanged();
        rx
    }

    /// How many appends the writer has made, each one transaction at most (none when every
    /// submission in it was held); with group commit, fewer than the submissions it was given.
    pub fn group_commits(&self) -> u64 {
        self.group_commits.load(Ordering::Relaxed)
    }

    async fn request<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| SpoolError::ShuttingDown)?;
        answer.await.map_err(|_| SpoolError::ShuttingDown)?
    }
}

/// Waits for the writer thread.
#[derive(Debug)]
pub struct SpoolJoin {
    thread: JoinHandle<()>,
}

impl SpoolJoin {
    /// Blocks until the writer has drained its queue and closed the spool, which happens once
    /// every [`SpoolHandle`] is dropped.
    pub fn join(self) -> Result<(), SpoolError> {
        self.thread.join().map_err(|_| SpoolError::WriterPanicked)
    }
}

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

#[derive(Debug)]
enum Command {
    Submit(Pending),
    Checkpoint {
        source: String,
        reply: Reply<Option<Vec<u8>>>,
    },
    State {
        source: String,
        key: Vec<u8>,
        reply: Reply<Option<Vec<u8>>>,
    },
    StatePage {
        source: String,
        after: Option<Vec<u8>>,
        limit: usize,
        reply: Reply<Vec<StateRow>>,
    },
    BatchesAfter {
        after_seq: u64,
        limit: usize,
        reply: Reply<Vec<StoredBatch>>,
    },
    Ack {
        seqs: Vec<u64>,
        reply: Reply<()>,
    },
    DropBatch {
        seq: u64,
        reason: DropReason,
        reply: Reply<()>,
    },
    SplitBatch {
        seq: u64,
        max_events: usize,
        max_bytes: usize,
        reply: Reply<Vec<u64>>,
    },
    SetBatchLimits {
        max_events: usize,
        max_bytes: usize,
        reply: Reply<()>,
    },
}

#[derive(Debug)]
struct Pending {
    sub: Submission,
    reply: Reply<SubmitOutcome>,
}

/// The thread's side: the spool and what it is waiting to write.
#[derive(Debug)]
struct Writer {
    spool: Spool,
    commands: mpsc::Receiver<Command>,
    committed: watch::Sender<u64>,
    stats: watch::Sender<SpoolStats>,
    group_commits: Arc<AtomicU64>,
    /// Wait-class submissions that found the spool full, oldest first.
    held: VecDeque<Pending>,
    /// A non-submission command read while gathering a group; it runs right after the group.
    stashed: Option<Command>,
}

/// Builds a handle and the writer it talks to, without starting the thread.
fn channel(spool: Spool) -> (SpoolHandle, Writer) {
    let (commands_tx, commands) = mpsc::channel(QUEUE_CAPACITY);
    let (committed, committed_rx) = watch::channel(spool.newest_seq());
    let (stats, stats_rx) = watch::channel(spool.stats());
    let group_commits = Arc::new(AtomicU64::new(0));
    let handle = SpoolHandle {
        commands: commands_tx,
        committed: committed_rx,
        stats: stats_rx,
        group_commits: Arc::clone(&group_commits),
    };
    let writer = Writer {
        spool,
        commands,
        committed,
        stats,
        group_commits,
        held: VecDeque::new(),
        stashed: None,
    };
    (handle, writer)
}

impl Writer {
    fn run(mut self) {
        while let Some(command) = self.next_command() {
            self.held.retain(|p| !p.reply.is_closed());
            match command {
                Command::Submit(first) => {
                    let group = self.gather(first);
                    self.submit(group);
                }
                Command::Checkpoint { source, reply } => {
                    let _ = reply.send(self.spool.checkpoint(&source));
                }
                Command::State { source, key, reply } => {
                    let _ = reply.send(self.spool.state(&source, &key));
                }
                Command::StatePage {
                    source,
                    after,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(self.spool.state_page(&source, after.as_deref(), limit));
                }
                Command::BatchesAfter {
                    after_seq,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(self.spool.batches_after(after_seq, limit));
                }
                Command::Ack { seqs, reply } => {
                    let result = self.spool.ack(&seqs);
                    self.answer_and_retry(reply, result);
                }
                Command::DropBatch { seq, reason, reply } => {
                    let result = self.spool.drop_batch(seq, reason);
                    self.answer_and_retry(reply, result);
                }
                Command::SplitBatch {
                    seq,
                    max_events,
                    max_bytes,
                    reply,
                } => {
                    let result = self.spool.split_batch(seq, max_events, max_bytes);
                    self.answer_and_retry(reply, result);
                }
                Command::SetBatchLimits {
                    max_events,
                    max_bytes,
                    reply,
                } => {
                    self.spool.set_batch_limits(max_events, max_bytes);
                    let _ = reply.send(Ok(()));
                }
            }
            self.publish();
        }
        for pending in self.held.drain(..) {
            let _ = pending.reply.send(Err(SpoolError::ShuttingDown));
        }
    }

    /// The next command, or `None` once every handle is gone and the queue is drained.
    fn next_command(&mut self) -> Option<Command> {
        self.stashed
            .take()
            .or_else(|| self.commands.blocking_recv())
    }

    /// Takes the submissions queued behind `first`, stopping at any other command.
    fn gather(&mut self, first: Pending) -> Vec<Pending> {
        let mut events = first.sub.events.len();
        let mut group = vec![first];
        while events < GROUP_MAX_EVENTS {
            match self.commands.try_recv() {
                Ok(Command::Submit(next)) => {
                    events += next.sub.events.len();
                    group.push(next);
                }
                Ok(other) => {
                    self.stashed = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        group
    }

    fn submit(&mut self, group: Vec<Pending>) {
        let group = if self.held.is_empty() {
            group
        } else {
            let (wait, others): (Vec<_>, Vec<_>) =
                group.into_iter().partition(|p| p.sub.class == Class::Wait);
            self.held.extend(wait);
            others
        };
        self.append(group);
    }

    /// Publishes the change, answers, then retries the held submissions if space may be free.
    fn answer_and_retry<T>(&mut self, reply: Reply<T>, result: Result<T, SpoolError>) {
        let freed = result.is_ok();
        self.publish();
        let _ = reply.send(result);
        if freed && !self.held.is_empty() {
            let held = self.held.drain(..).collect();
            self.append(held);
        }
    }

    /// Appends `group` in one transaction and answers each submitter; those that do not fit are
    /// held, in order.
    fn append(&mut self, group: Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        let (subs, replies): (Vec<_>, Vec<_>) = group.into_iter().map(|p| (p.sub, p.reply)).unzip();
        self.group_commits.fetch_add(1, Ordering::Relaxed);
        let result = self.spool.append_keeping_full(subs, now_ns());
        // Whoever hears back sees statistics that include their submission.
        self.publish();
        match result {
            Ok(decisions) => {
                for (decision, reply) in decisions.into_iter().zip(replies) {
                    match decision {
                        Decision::Done(outcome) => {
                            let _ = reply.send(Ok(outcome));
                        }
                        Decision::Full(sub) => self.held.push_back(Pending { sub, reply }),
                    }
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Tells subscribers the statistics and the newest committed seq, where they changed; in
    /// that order, so whoever wakes for a new seq reads statistics that include it.
    fn publish(&self) {
        let stats = self.spool.stats();
        self.stats.send_if_modified(|seen| {
            let changed = *seen != stats;
            if changed {
                *seen = stats;
            }
            changed
        });
        let newest = self.spool.newest_seq();
        self.committed.send_if_modified(|seen| {
            let changed = *seen != newest;
            *seen = newest;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use outpost_common::event::{Event, LogRecord};
    use tempfile::TempDir;

    use super::*;
    use crate::spool::{Checkpoint, SpoolConfig};

    fn log(id: i64, body: usize) -> Event {
        Event::Log(LogRecord {
            time_ns: id,
            source: "test".to_owned(),
            severity: None,
            body: "x".repeat(body),
            attributes: Vec::new(),
        })
    }

    fn wait_sub(first: i64, n: i64, source: &str) -> Submission {
        let events = (first..first + n).map(|id| log(id, 100)).collect();
        Submission::new(Class::Wait, events)
            .with_checkpoint(Checkpoint::new(source, first.to_be_bytes()))
    }

    fn open(dir: &TempDir, max_bytes: u64) -> Spool {
        Spool::open(SpoolConfig::new(dir.path().join("spool.db"), max_bytes)).unwrap()
    }

    /// Polls `fut` once; true if it is still pending.
    async fn still_pending<F: Future>(fut: &mut Pin<Box<F>>) -> bool {
        tokio::select! {
            biased;
            _ = fut.as_mut() => false,
            () = std::future::ready(()) => true,
        }
    }

    #[tokio::test]
    async fn queued_submissions_share_one_transaction() {
        let dir = TempDir::new().unwrap();
        let (handle, writer) = channel(open(&dir, 1 << 30));
        let submitters = 40;
        let tasks: Vec<_> = (0..submitters)
            .map(|i| {
                let handle = handle.clone();
                tokio::spawn(
                    async move { handle.submit(wait_sub(i * 10, 5, &format!("s{i}"))).await },
                )
            })
            .collect();
        // Let every submitter queue its command before the writer starts.
        while handle.commands.capacity() > QUEUE_CAPACITY - submitters as usize {
            tokio::task::yield_now().await;
        }
        let thread = std::thread::spawn(move || writer.run());
        for task in tasks {
            assert_eq!(
                task.await.unwrap().unwrap(),
                SubmitOutcome::Committed { events: 5 }
            );
        }
        assert_eq!(handle.group_commits(), 1);
        let stats = handle.stats();
        assert_eq!(stats.events, 5 * submitters as u64);
        assert_eq!(
            handle.checkpoint("s7").await.unwrap(),
            Some(70i64.to_be_bytes().to_vec())
        );
        drop(handle);
        thread.join().unwrap();
    }

    /// Fills the spool with a first submission, then returns a second one the writer holds.
    async fn held_submission(
        handle: &SpoolHandle,
    ) -> Pin<Box<impl Future<Output = Result<SubmitOutcome, SpoolError>> + '_>> {
        let first = handle.submit(wait_sub(1, 8, "a")).await.unwrap();
        assert_eq!(first, SubmitOutcome::Committed { events: 8 });
        let mut blocked = Box::pin(handle.submit(wait_sub(100, 8, "a")));
        assert!(still_pending(&mut blocked).await);
        // Commands run in order, so once this answers, the writer has seen and held it.
        assert_eq!(
            handle.checkpoint("a").await.unwrap(),
            Some(1i64.to_be_bytes().to_vec())
        );
        assert_eq!(handle.stats().events, 8);
        assert!(still_pending(&mut blocked).await);
        blocked
    }

    async fn ack_everything(handle: &SpoolHandle) {
        let sent = handle.batches_after(0, usize::MAX).await.unwrap();
        handle
            .ack(sent.iter().map(|b| b.seq).collect())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_full_wait_submission_blocks_until_an_ack_frees_space() {
        let dir = TempDir::new().unwrap();
        let (handle, join) = spawn(open(&dir, 1000));
        let mut committed = handle.subscribe();
        assert_eq!(*committed.borrow(), 0);

        let blocked = held_submission(&handle).await;
        committed.changed().await.unwrap();
        assert_eq!(*committed.borrow_and_update(), 1);
        let checkpoint = handle.checkpoint("a").await.unwrap();
        assert_eq!(checkpoint, Some(1i64.to_be_bytes().to_vec()));

        ack_everything(&handle).await;
        let outcome = blocked.await.unwrap();
        assert_eq!(outcome, SubmitOutcome::Committed { events: 8 });
        committed.changed().await.unwrap();
        assert_eq!(*committed.borrow(), 2);
        let checkpoint = handle.checkpoint("a").await.unwrap();
        assert_eq!(checkpoint, Some(100i64.to_be_bytes().to_vec()));
        assert_eq!(handle.stats().events, 8);
        drop(handle);
        join.join().unwrap();
    }

    #[tokio::test]
    async fn a_held_submission_whose_caller_left_is_never_written() {
        let dir = TempDir::new().unwrap();
        let (handle, join) = spawn(open(&dir, 1000));
        drop(held_submission(&handle).await);

        ack_everything(&handle).await;
        let stats = handle.stats();
        assert_eq!((stats.events, stats.batches), (0, 0));
        let checkpoint = handle.checkpoint("a").await.unwrap();
        assert_eq!(checkpoint, Some(1i64.to_be_bytes().to_vec()));
        drop(handle);
        join.join().unwrap();
    }

    #[test]
    fn held_submissions_hear_of_the_shutdown() {
        let dir = TempDir::new().unwrap();
        let (handle, mut writer) = channel(open(&dir, 1000));
        let (reply, mut answer) = oneshot::channel();
        writer.held.push_back(Pending {
            sub: wait_sub(1, 1, "a"),
            reply,
        });
        drop(handle);
        writer.run();
        assert!(matches!(
            answer.try_recv(),
            Ok(Err(SpoolError::ShuttingDown))
        ));
    }

    fn event_counts(batches: &[StoredBatch]) -> Vec<u32> {
        batches.iter().map(|b| b.events).collect()
    }

    #[tokio::test]
    async fn splits_and_batch_limits_go_through_the_writer() {
        let dir = TempDir::new().unwrap();
        let (handle, join) = spawn(open(&dir, 1 << 30));
        let mut committed = handle.subscribe();
        let outcome = handle.submit(wait_sub(1, 10, "a")).await.unwrap();
        assert_eq!(outcome, SubmitOutcome::Committed { events: 10 });
        let sent = handle.batches_after(0, 10).await.unwrap();
        assert_eq!(event_counts(&sent), [10]);

        let seqs = handle.split_batch(1, 3, usize::MAX).await.unwrap();
        assert_eq!(seqs, [2, 3, 4, 5]);
        assert!(
            committed.has_changed().unwrap(),
            "the new seqs are announced"
        );
        assert_eq!(*committed.borrow_and_update(), 5);
        let parts = handle.batches_after(1, 10).await.unwrap();
        assert_eq!(event_counts(&parts), [3, 3, 3, 1]);
        assert!(handle.split_batch(99, 3, 100).await.unwrap().is_empty());

        handle.set_batch_limits(4, usize::MAX).await.unwrap();
        handle.submit(wait_sub(20, 10, "a")).await.unwrap();
        let lowered = handle.batches_after(5, 10).await.unwrap();
        assert_eq!(event_counts(&lowered), [4, 4, 2]);

        handle
            .set_batch_limits(usize::MAX, usize::MAX)
            .await
            .unwrap();
        handle.submit(wait_sub(40, 10, "a")).await.unwrap();
        let restored = handle.batches_after(8, 10).await.unwrap();
        assert_eq!(event_counts(&restored), [10]);
        drop(handle);
        join.join().unwrap();
    }

    #[tokio::test]
    async fn a_split_that_drops_oversized_events_lets_a_held_submission_in() {
        let dir = TempDir::new().unwrap();
        let (handle, join) = spawn(open(&dir, 1000));
        let blocked = held_submission(&handle).await;
        // Every event of the first submission is larger than 50 bytes on its own.
        assert!(handle.split_batch(1, 100, 50).await.unwrap().is_empty());
        assert_eq!(
            blocked.await.unwrap(),
            SubmitOutcome::Committed { events: 8 }
        );
        let stats = handle.stats();
        assert_eq!((stats.events, stats.drops.oversized), (8, 8));
        drop(handle);
        join.join().unwrap();
    }

    #[tokio::test]
    async fn drop_class_submissions_pass_held_ones() {
        let dir = TempDir::new().unwrap();
        let (handle, join) = spawn(open(&dir, 1000));
        let mut blocked = held_submission(&handle).await;
        let metrics = Submission::new(Class::Drop, vec![log(200, 10)]);
        let outcome = handle.submit(metrics).await.unwrap();
        assert_eq!(outcome, SubmitOutcome::Committed { events: 1 });
        assert_eq!(handle.stats().events, 9);
        assert!(still_pending(&mut blocked).await);
        drop(blocked);
        drop(handle);
        join.join().unwrap();
    }
}
