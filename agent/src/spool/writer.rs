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
//!   by small ones; one with no events (only checkpoints or state) takes no room and is committed
//!   at once. A held submission whose caller went away is forgotten without being written.
//!
//! The spool's statistics are published on a watch channel after every change, so readers
//! ([`SpoolHandle::stats`], the agent's status and metrics) never wait for the thread.
//!
//! - **A full disk.** While the spool is in trouble ([`Spool::trouble`]) the thread also wakes
//!   every [`RECHECK_INTERVAL`] to look at the disk again ([`Spool::recheck`]) and retry the held
//!   submissions, since space can come back without any acknowledgement (an operator deleting a
//!   file).
//! - **A spool that cannot be opened** (a read-only or vanished data directory): started with
//!   [`spawn_reopening`], the thread retries opening with capped exponential backoff. Meanwhile
//!   Wait-class submissions and every other command wait for it, Drop-class submissions are
//!   answered [`SubmitOutcome::Rejected`] and counted as [`DropReason::SpoolWriteFailed`], and the
//!   statistics carry spool id 0 and the trouble ([`SpoolStats::unavailable`]); the shipper waits
//!   for a real spool id before it says anything to the aggregator.
//!
//! When every handle is dropped the thread finishes the queued commands, answers any still-held
//! submission with [`SpoolError::ShuttingDown`], closes the spool and exits; [`SpoolJoin::join`]
//! waits for that.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use outpost_common::event::DropReason;
use outpost_common::time::now_ns;
use tokio::sync::{mpsc, oneshot, watch};

use super::plan::{Decision, SizedSubmission};
use super::{
    Class, DiskEvent, DiskReporter, Prepared, Spool, SpoolError, SpoolStats, StateRow, StoredBatch,
    Submission, SubmitOutcome, Trouble, TroubleKind,
};

/// How many events one group commit gathers at most, besides the submission that started it.
pub const GROUP_MAX_EVENTS: usize = 4096;

/// Commands queued for the writer before senders wait.
const QUEUE_CAPACITY: usize = 256;

/// How often the writer looks at the disk again while the spool is in trouble.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the writer thread that owns `spool`.
pub fn spawn(spool: Spool) -> (SpoolHandle, SpoolJoin) {
    let (handle, writer) = channel(spool);
    (handle, start_thread(move || writer.run()))
}

/// How to open a spool that could not be opened at start-up, and how often to try.
pub struct Reopen {
    /// Opens the spool, or says why not: the trouble and a sentence naming the path and cause.
    pub open: Box<dyn FnMut() -> Result<Spool, (TroubleKind, String)> + Send>,
    /// Why the first attempt failed.
    pub first_error: (TroubleKind, String),
    /// The configured cap, for the statistics meanwhile.
    pub cap_bytes: u64,
    /// Hears that the spool is unavailable and when it is available again; the opened spool
    /// reports to it too.
    pub reporter: Arc<dyn DiskReporter + Sync>,
    /// The first wait between attempts; it doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl std::fmt::Debug for Reopen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopen")
            .field("first_error", &self.first_error)
            .field("cap_bytes", &self.cap_bytes)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .finish_non_exhaustive()
    }
}

/// Starts the writer thread for a spool that could not be opened yet: it retries opening with
/// backoff and serves commands as the module documentation says meanwhile.
pub fn spawn_reopening(reopen: Reopen) -> (SpoolHandle, SpoolJoin) {
    let (kind, message) = reopen.first_error.clone();
    let trouble = Trouble {
        kind,
        message,
        since_ns: now_ns(),
    };
    reopen.reporter.report(DiskEvent::Trouble(trouble.clone()));
    let (handle, ends) = handle(0, SpoolStats::unavailable(reopen.cap_bytes, trouble));
    let WriterEnds {
        commands,
        committed,
        stats,
        group_commits,
    } = ends;
    let opening = Opening {
        reopen,
        commands,
        committed,
        stats,
        group_commits,
        deferred: VecDeque::new(),
        lost: 0,
    };
    (handle, start_thread(move || opening.run()))
}

fn start_thread(body: impl FnOnce() + Send + 'static) -> SpoolJoin {
    // Creating a thread fails only when the OS is out of resources at start-up; std::thread::spawn
    // panics in the same case.
    let thread = std::thread::Builder::new()
        .name("outpost-spool".to_owned())
        .spawn(body)
        .expect("the OS can create the spool writer thread");
    SpoolJoin { thread }
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
        self.submit_prepared(sub.prepare()).await
    }

    /// [`submit`](Self::submit) of a submission prepared where its events were made.
    pub async fn submit_prepared(&self, prepared: Prepared) -> Result<SubmitOutcome, SpoolError> {
        self.request(|reply| Command::Submit(Incoming { prepared, reply }))
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

    /// Resolves once the spool is open (at once unless it was started with
    /// [`spawn_reopening`]); `Err` if the writer is gone.
    pub async fn available(&self) -> Result<(), SpoolError> {
        let mut stats = self.stats.clone();
        stats
            .wait_for(SpoolStats::is_available)
            .await
            .map(drop)
            .map_err(|_| SpoolError::ShuttingDown)
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
    Submit(Incoming),
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
    sub: SizedSubmission,
    reply: Reply<SubmitOutcome>,
}

/// A submission as it arrives, its events encoded or not.
#[derive(Debug)]
struct Incoming {
    prepared: Prepared,
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
    /// Waits for commands with a deadline while the spool is in trouble; made when first needed.
    timer: Option<tokio::runtime::Runtime>,
    next_recheck: Instant,
}

/// What wakes the writer.
enum Wake {
    Command(Command),
    /// Time to look at the disk again.
    Recheck,
    /// Every handle is gone and the queue is drained.
    Closed,
}

/// The writer's ends of what a [`SpoolHandle`] talks through.
struct WriterEnds {
    commands: mpsc::Receiver<Command>,
    committed: watch::Sender<u64>,
    stats: watch::Sender<SpoolStats>,
    group_commits: Arc<AtomicU64>,
}

/// A handle, and the ends its writer keeps, starting from `newest` seq and `stats`.
fn handle(newest: u64, stats: SpoolStats) -> (SpoolHandle, WriterEnds) {
    let (commands_tx, commands) = mpsc::channel(QUEUE_CAPACITY);
    let (committed, committed_rx) = watch::channel(newest);
    let (stats, stats_rx) = watch::channel(stats);
    let group_commits = Arc::new(AtomicU64::new(0));
    let handle = SpoolHandle {
        commands: commands_tx,
        committed: committed_rx,
        stats: stats_rx,
        group_commits: Arc::clone(&group_commits),
    };
    let ends = WriterEnds {
        commands,
        committed,
        stats,
        group_commits,
    };
    (handle, ends)
}

/// Builds a handle and the writer it talks to, without starting the thread.
fn channel(spool: Spool) -> (SpoolHandle, Writer) {
    let (handle, ends) = handle(spool.newest_seq(), spool.stats());
    let WriterEnds {
        commands,
        committed,
        stats,
        group_commits,
    } = ends;
    let writer = Writer {
        spool,
        commands,
        committed,
        stats,
        group_commits,
        held: VecDeque::new(),
        stashed: None,
        timer: None,
        next_recheck: Instant::now(),
    };
    (handle, writer)
}

impl Writer {
    fn run(mut self) {
        loop {
            match self.wake() {
                Wake::Command(command) => self.handle(command),
                Wake::Recheck => self.recheck(),
                Wake::Closed => break,
            }
        }
        for pending in self.held.drain(..) {
            let _ = pending.reply.send(Err(SpoolError::ShuttingDown));
        }
    }

    /// The next command; while the spool is in trouble, also the time to look at the disk again.
    fn wake(&mut self) -> Wake {
        if let Some(command) = self.stashed.take() {
            return Wake::Command(command);
        }
        if self.spool.trouble().is_none() {
            return self
                .commands
                .blocking_recv()
                .map_or(Wake::Closed, Wake::Command);
        }
        let now = Instant::now();
        if now >= self.next_recheck {
            self.next_recheck = now + RECHECK_INTERVAL;
            return Wake::Recheck;
        }
        let Some(timer) = timer(&mut self.timer) else {
            return self
                .commands
                .blocking_recv()
                .map_or(Wake::Closed, Wake::Command);
        };
        let deadline = tokio::time::Instant::from_std(self.next_recheck);
        match timer
            .block_on(async { tokio::time::timeout_at(deadline, self.commands.recv()).await })
        {
            Ok(Some(command)) => Wake::Command(command),
            Ok(None) => Wake::Closed,
            Err(_) => self.wake(),
        }
    }

    /// Looks at the disk again and retries the held submissions, which may fit now.
    fn recheck(&mut self) {
        self.held.retain(|p| !p.reply.is_closed());
        self.spool.recheck();
        self.publish();
        if !self.held.is_empty() {
            let held = self.held.drain(..).collect();
            self.append(held);
        }
        self.publish();
    }

    fn handle(&mut self, command: Command) {
        self.held.retain(|p| !p.reply.is_closed());
        match command {
            Command::Submit(first) => {
                if let Some(first) = self.accept(first) {
                    let group = self.gather(first);
                    self.submit(group);
                }
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

    /// A submission whose events were encoded, ready to append; one whose events could not be
    /// is answered with the error.
    fn accept(&mut self, incoming: Incoming) -> Option<Pending> {
        match incoming.prepared.into_sized(&self.spool.config.path) {
            Ok(sub) => Some(Pending {
                sub,
                reply: incoming.reply,
            }),
            Err(e) => {
                let _ = incoming.reply.send(Err(e));
                None
            }
        }
    }

    /// Takes the submissions queued behind `first`, stopping at any other command.
    fn gather(&mut self, first: Pending) -> Vec<Pending> {
        let mut events = first.sub.events();
        let mut group = vec![first];
        while events < GROUP_MAX_EVENTS {
            match self.commands.try_recv() {
                Ok(Command::Submit(next)) => {
                    if let Some(next) = self.accept(next) {
                        events += next.sub.events();
                        group.push(next);
                    }
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
            // A submission with no events takes no room: it never waits behind held ones (a
            // log source records the files it opened while its lines wait for space).
            let (wait, others): (Vec<_>, Vec<_>) = group
                .into_iter()
                .partition(|p| p.sub.sub.class == Class::Wait && p.sub.events() > 0);
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

/// A current-thread runtime for waiting with a deadline on the writer's own thread, made once;
/// `None` if the OS cannot make one, and the writer then waits without a deadline.
fn timer(slot: &mut Option<tokio::runtime::Runtime>) -> Option<&tokio::runtime::Runtime> {
    if slot.is_none() {
        *slot = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok();
    }
    slot.as_ref()
}

/// The writer thread before its spool could be opened.
struct Opening {
    reopen: Reopen,
    commands: mpsc::Receiver<Command>,
    committed: watch::Sender<u64>,
    stats: watch::Sender<SpoolStats>,
    group_commits: Arc<AtomicU64>,
    /// Commands that wait for the spool, in order.
    deferred: VecDeque<Command>,
    /// Drop-class events given up meanwhile.
    lost: u64,
}

impl Opening {
    fn run(mut self) {
        let mut timer_slot = None;
        let mut delay = self.reopen.retry_min;
        let mut last_error = self.reopen.first_error.clone();
        let spool = loop {
            let deadline = Instant::now() + delay;
            delay = (delay * 2).min(self.reopen.retry_max);
            if !self.wait_until(deadline, &mut timer_slot) {
                // Every handle is gone: the deferred commands are answered with ShuttingDown as
                // their replies drop.
                return;
            }
            match (self.reopen.open)() {
                Ok(spool) => break spool,
                Err(error) => {
                    if error != last_error {
                        let (kind, message) = error.clone();
                        let trouble = Trouble {
                            kind,
                            message,
                            since_ns: now_ns(),
                        };
                        self.reopen
                            .reporter
                            .report(DiskEvent::Trouble(trouble.clone()));
                        self.stats.send_modify(|s| s.trouble = Some(trouble));
                        last_error = error;
                    }
                }
            }
        };
        self.reopen
            .reporter
            .report(DiskEvent::Recovered { kind: last_error.0 });
        let mut spool = spool;
        spool.set_reporter(Box::new(SharedReporter(self.reopen.reporter.clone())));
        spool.count_lost(DropReason::SpoolWriteFailed, self.lost);
        let mut writer = Writer {
            spool,
            commands: self.commands,
            committed: self.committed,
            stats: self.stats,
            group_commits: self.group_commits,
            held: VecDeque::new(),
            stashed: None,
            timer: timer_slot,
            next_recheck: Instant::now(),
        };
        writer.publish();
        for command in self.deferred {
            writer.handle(command);
        }
        writer.run();
    }

    /// Takes commands until `deadline`; false once every handle is gone.
    fn wait_until(
        &mut self,
        deadline: Instant,
        timer_slot: &mut Option<tokio::runtime::Runtime>,
    ) -> bool {
        loop {
            let command = match timer(timer_slot) {
                Some(timer) => {
                    let deadline = tokio::time::Instant::from_std(deadline);
                    match timer.block_on(async {
                        tokio::time::timeout_at(deadline, self.commands.recv()).await
                    }) {
                        Ok(Some(command)) => command,
                        Ok(None) => return false,
                        Err(_) => return true,
                    }
                }
                // Without a timer, each command is a reason to try again.
                None => match self.commands.blocking_recv() {
                    Some(command) => {
                        self.defer(command);
                        return true;
                    }
                    None => return false,
                },
            };
            self.defer(command);
        }
    }

    fn defer(&mut self, command: Command) {
        match command {
            Command::Submit(incoming) if incoming.prepared.class() == Some(Class::Drop) => {
                let events = incoming.prepared.events() as u64;
                self.lost += events;
                let lost = self.lost;
                self.stats
                    .send_modify(|s| s.drops.spool_write_failed = lost);
                let _ = incoming.reply.send(Ok(SubmitOutcome::Rejected { events }));
            }
            other => self.deferred.push_back(other),
        }
    }
}

/// The reporter the opening thread was given, handed on to the spool it opened.
#[derive(Debug)]
struct SharedReporter(Arc<dyn DiskReporter + Sync>);

impl DiskReporter for SharedReporter {
    fn report(&self, event: DiskEvent) {
        self.0.report(event);
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
            sub: wait_sub(1, 1, "a")
                .prepare()
                .into_sized(std::path::Path::new("spool.db"))
                .unwrap(),
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

    #[tokio::test]
    async fn a_full_disk_holds_wait_submissions_until_space_returns() {
        use crate::spool::tests::{FakeDisk, Heard};
        let dir = TempDir::new().unwrap();
        let disk = FakeDisk::new(dir.path(), 1 << 40);
        let mut spool = Spool::open(SpoolConfig {
            reserve_bytes: 64 * 1024,
            free_space: disk.clone(),
            ..SpoolConfig::new(dir.path().join("spool.db"), 1 << 30)
        })
        .unwrap();
        let heard = Heard::default();
        spool.set_reporter(Box::new(heard.clone()));
        let (handle, join) = spawn(spool);
        disk.leave_free(0);
        let mut blocked = Box::pin(handle.submit(wait_sub(1, 8, "a")));
        assert!(still_pending(&mut blocked).await);
        let mut stats = handle.watch_stats();
        let trouble = stats
            .wait_for(|s| s.trouble.is_some())
            .await
            .unwrap()
            .trouble
            .clone()
            .unwrap();
        assert_eq!(trouble.kind, TroubleKind::DiskFull);
        assert!(still_pending(&mut blocked).await);
        // Metric samples are refused meanwhile, counted as disk_full.
        let samples = Submission::new(Class::Drop, vec![log(50, 100)]);
        assert_eq!(
            handle.submit(samples).await.unwrap(),
            SubmitOutcome::Rejected { events: 1 }
        );
        assert_eq!(handle.stats().drops.disk_full, 1);

        // An operator frees space: no acknowledgement comes, the writer looks again by itself.
        disk.leave_free(1 << 40);
        assert_eq!(
            blocked.await.unwrap(),
            SubmitOutcome::Committed { events: 8 }
        );
        stats.wait_for(|s| s.trouble.is_none()).await.unwrap();
        assert_eq!(
            heard.names(),
            ["trouble: disk full", "recovered: disk full"]
        );
        drop(handle);
        join.join().unwrap();
    }

    #[tokio::test]
    async fn a_spool_that_cannot_be_opened_yet_is_waited_for() {
        use std::sync::atomic::AtomicBool;

        use crate::spool::tests::Heard;
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("spool.db");
        let usable = Arc::new(AtomicBool::new(false));
        let open = {
            let (usable, path) = (usable.clone(), path.clone());
            move || {
                if usable.load(Ordering::SeqCst) {
                    Spool::open(SpoolConfig::new(&path, 1 << 30))
                        .map_err(|e| (TroubleKind::Unavailable, e.to_string()))
                } else {
                    Err((TroubleKind::ReadOnly, "read-only: try later".to_owned()))
                }
            }
        };
        let heard = Heard::default();
        let (handle, join) = spawn_reopening(Reopen {
            open: Box::new(open),
            first_error: (TroubleKind::ReadOnly, "read-only: try later".to_owned()),
            cap_bytes: 1 << 30,
            reporter: Arc::new(heard.clone()),
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(50),
        });
        let stats = handle.stats();
        assert_eq!(stats.spool_id, 0, "no garbage identity");
        assert!(!stats.is_available());
        assert_eq!(stats.trouble.unwrap().message, "read-only: try later");

        // Sources wait, or drop and count; reads wait too.
        let mut blocked = Box::pin(handle.submit(wait_sub(1, 8, "a")));
        let samples = Submission::new(Class::Drop, vec![log(50, 100), log(51, 100)]);
        assert_eq!(
            handle.submit(samples).await.unwrap(),
            SubmitOutcome::Rejected { events: 2 }
        );
        let mut checkpoint = Box::pin(handle.checkpoint("a"));
        assert!(still_pending(&mut blocked).await);
        assert!(still_pending(&mut checkpoint).await);

        usable.store(true, Ordering::SeqCst);
        handle.available().await.unwrap();
        assert_eq!(
            blocked.await.unwrap(),
            SubmitOutcome::Committed { events: 8 }
        );
        // Commands run in order: the read queued after the submission sees it.
        assert_eq!(checkpoint.await.unwrap(), Some(1i64.to_be_bytes().to_vec()));
        let stats = handle.stats();
        assert_ne!(stats.spool_id, 0);
        assert_eq!(stats.trouble, None);
        assert_eq!(stats.drops.spool_write_failed, 2);
        assert_eq!(
            heard.names(),
            ["trouble: read-only", "recovered: read-only"]
        );
        drop(handle);
        join.join().unwrap();
    }
}
