//! Group commit: one OS thread owns every write to the store and puts the batches of many agents
//! that arrive together into one transaction.
//!
//! Registry updates ([`StoreWriter::record`]: Hello, heartbeat, disconnect) travel the same
//! queue and are applied with the group they arrive in, before its batches.
//!
//! A durable commit costs an fsync, whatever it holds. Sessions hand their batches to
//! [`StoreWriter::commit`] and wait; the writer thread takes the first waiting batch, adds whatever
//! else is already queued (up to [`WriterConfig`]'s limits), commits once and answers every
//! waiter. Under load, transactions grow and the fsync is shared; when idle, a lone batch is
//! committed at once. The bounded queue is the backpressure: when the disk falls behind,
//! `commit` waits for room instead of buffering without limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::{CommitOutcome, IncomingBatch, RegistryUpdate, Store, StoreError};

/// Limits of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// Batches waiting for the writer at most; `commit` waits for room beyond this.
    pub queue: usize,
    /// Batches in one transaction at most.
    pub max_batches_per_txn: usize,
    /// Events in one transaction at most (a single larger batch still gets its own).
    pub max_events_per_txn: usize,
}

impl Default for WriterConfig {
    /// Room for 1,024 waiting batches; transactions of up to 64 batches or 50,000 events, about a
    /// quarter of a second of work at the store's measured rate.
    fn default() -> Self {
        WriterConfig {
            queue: 1024,
            max_batches_per_txn: 64,
            max_events_per_txn: 50_000,
        }
    }
}

/// Counters of what the writer thread did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions attempted (committed or failed).
    pub transactions: u64,
    /// Transactions that failed; each failed every batch in it.
    pub failed_transactions: u64,
    /// Batches answered (stored, duplicate or failed).
    pub batches: u64,
    /// Events in those batches.
    pub events: u64,
}

/// A cloneable handle to the writer thread.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<Job>,
    stats: Arc<Counters>,
}

/// Waits for the writer thread to finish.
#[derive(Debug)]
pub struct WriterJoin {
    handle: JoinHandle<()>,
}

#[derive(Debug)]
enum Job {
    Batch {
        batch: IncomingBatch,
        reply: oneshot::Sender<Result<CommitOutcome, StoreError>>,
    },
    Registry {
        update: Box<RegistryUpdate>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Job {
    /// Events the job adds to a group.
    fn events(&self) -> usize {
        match self {
            Job::Batch { batch, .. } => batch.events.len(),
            Job::Registry { .. } => 0,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    failed_transactions: AtomicU64,
    batches: AtomicU64,
    events: AtomicU64,
}

impl StoreWriter {
    /// Spawns a dedicated OS thread that owns commits. `queue` bounds pending batches
    /// (backpressure). Limits of zero are treated as one.
    ///
    /// The thread ends once every `StoreWriter` is dropped and the queue is drained.
    pub fn spawn(store: Arc<dyn Store>, config: WriterConfig) -> (StoreWriter, WriterJoin) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let stats = Arc::new(Counters::default());
        let thread_stats = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(store.as_ref(), rx, config, &thread_stats));
        let handle = match handle {
            Ok(h) => h,
            // Only fails when the OS refuses a new thread; without the writer the aggregator
            // cannot store anything, so there is nothing sensible to carry on with.
            Err(e) => panic!("cannot start the store writer thread: {e}"),
        };
        (StoreWriter { tx, stats }, WriterJoin { handle })
    }

    /// Queue one batch; resolves after the transaction that contains it has committed.
    ///
    /// Waits for room when the queue is full. Fails with the transaction's error (every batch in
    /// it fails alike; the agent retries), or [`StoreError::WriterStopped`] if the thread is gone.
    pub async fn commit(&self, batch: IncomingBatch) -> Result<CommitOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job::Batch { batch, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Queue a registry update; resolves once it is applied, with the group it joined.
    pub async fn record(&self, update: RegistryUpdate) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job::Registry {
                update: Box::new(update),
                reply,
            })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Batches queued and not yet taken by the writer thread.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// What the writer thread has done so far.
    pub fn stats(&self) -> WriterStats {
        self.stats.snapshot()
    }
}

impl WriterJoin {
    /// Blocks until the writer thread has drained its queue and ended, which happens once every
    /// [`StoreWriter`] is dropped. Call it off the async runtime (after it, or in
    /// `spawn_blocking`).
    pub fn join(self) -> Result<(), StoreError> {
        self.handle.join().map_err(|_| StoreError::WriterPanicked)
    }
}

impl Counters {
    fn snapshot(&self) -> WriterStats {
        WriterStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            failed_transactions: self.failed_transactions.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }
}

/// The writer thread: group, commit, answer, until the channel closes and is empty.
fn run(store: &dyn Store, mut rx: mpsc::Receiver<Job>, config: WriterConfig, stats: &Counters) {
    let max_batches = config.max_batches_per_txn.max(1);
    let max_events = config.max_events_per_txn.max(1);
    // A job taken from the queue that did not fit the previous group.
    let mut held: Option<Job> = None;
    loop {
        let Some(first) = held.take().or_else(|| rx.blocking_recv()) else {
            return;
        };
        let mut events = first.events();
        let mut group = vec![first];
        while group.len() < max_batches {
            let Ok(job) = rx.try_recv() else { break };
            let n = job.events();
            if events.saturating_add(n) > max_events {
                held = Some(job);
                break;
            }
            events += n;
            group.push(job);
        }
        commit_group(store, group, events, stats);
    }
}

fn commit_group(store: &dyn Store, group: Vec<Job>, events: usize, stats: &Counters) {
    let mut batches = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    for job in group {
        match job {
            Job::Batch { batch, reply } => {
                batches.push(batch);
                replies.push(reply);
            }
            Job::Registry { update, reply } => {
                let _ = reply.send(apply_registry(store, &update));
            }
        }
    }
    if batches.is_empty() {
        return;
    }
    let result = store.commit_batches(&batches).and_then(|outcomes| {
        if outcomes.len() == replies.len() {
            Ok(outcomes)
        } else {
            Err(StoreError::backend(
                "committing a group of batches",
                OutcomeCountMismatch {
                    batches: replies.len(),
                    outcomes: outcomes.len(),
                },
            ))
        }
    });
    stats.transactions.fetch_add(1, Ordering::Relaxed);
    stats
        .batches
        .fetch_add(replies.len() as u64, Ordering::Relaxed);
    stats.events.fetch_add(events as u64, Ordering::Relaxed);
    match result {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A waiter that gave up (its connection closed) no longer needs the answer.
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            stats.failed_transactions.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, batches = replies.len(), "A group commit failed; its batches will be retried by their agents.");
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn apply_registry(store: &dyn Store, update: &RegistryUpdate) -> Result<(), StoreError> {
    match update {
        RegistryUpdate::Hello {
            agent_id,
            hello,
            now_ns,
        } => store.record_hello(agent_id, hello, *now_ns),
        RegistryUpdate::Heartbeat {
            agent_id,
            status,
            now_ns,
        } => store.record_heartbeat(agent_id, status, *now_ns),
        RegistryUpdate::Disconnect {
            agent_id,
            reason,
            now_ns,
        } => store.record_disconnect(agent_id, reason, *now_ns),
    }
}

/// A store answered a different number of outcomes than it was given batches: a bug in the
/// store, reported as a failed commit rather than acknowledging the wrong batches.
#[derive(Debug, thiserror::Error)]
#[error("the store returned {outcomes} outcomes for {batches} batches")]
struct OutcomeCountMismatch {
    batches: usize,
    outcomes: usize,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::mpsc as std_mpsc;

    use outpost_common::event::{AgentStatus, EventKind};
    use outpost_common::wire::Hello;

    use super::*;
    use crate::store::testutil::{bench_batch, logs};
    use crate::store::{AgentRecord, Retention, RetentionReport, SqliteStore};

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Mode {
        Work,
        Fail,
        WrongCount,
        Panic,
    }

    /// A store that records the size of each group and can hold the first commit until released.
    #[derive(Debug)]
    struct FakeStore {
        mode: Mode,
        groups: Mutex<Vec<usize>>,
        seen: Mutex<HashSet<(String, u64, u64)>>,
        /// Told when the first commit starts; the first commit then waits for `release`.
        entered: Mutex<Option<std_mpsc::Sender<()>>>,
        release: Mutex<Option<std_mpsc::Receiver<()>>>,
    }

    /// The fake store, a way to wait for the first commit to start, and a way to let it go on.
    fn gated(mode: Mode) -> (Arc<FakeStore>, std_mpsc::Receiver<()>, std_mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = std_mpsc::channel();
        let (release_tx, release_rx) = std_mpsc::channel();
        let store = Arc::new(FakeStore {
            mode,
            groups: Mutex::new(Vec::new()),
            seen: Mutex::new(HashSet::new()),
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(Some(release_rx)),
        });
        (store, entered_rx, release_tx)
    }

    impl Store for FakeStore {
        fn commit_batches(
            &self,
            batches: &[IncomingBatch],
        ) -> Result<Vec<CommitOutcome>, StoreError> {
            if let Some(entered) = self.entered.lock().unwrap().take() {
                entered.send(()).unwrap();
                self.release.lock().unwrap().take().unwrap().recv().unwrap();
            }
            self.groups.lock().unwrap().push(batches.len());
            match self.mode {
                Mode::Work => {}
                Mode::Fail => {
                    return Err(StoreError::backend(
                        "committing",
                        std::io::Error::other("disk on fire"),
                    ));
                }
                Mode::WrongCount => return Ok(Vec::new()),
                Mode::Panic => panic!("store bug"),
            }
            let mut seen = self.seen.lock().unwrap();
            Ok(batches
                .iter()
                .map(|b| {
                    if seen.insert((b.agent_id.clone(), b.spool_id, b.seq)) {
                        CommitOutcome::Stored
                    } else {
                        CommitOutcome::Duplicate
                    }
                })
                .collect())
        }
        fn record_hello(&self, _: &str, _: &Hello, _: i64) -> Result<(), StoreError> {
            unimplemented!()
        }
        fn record_heartbeat(&self, _: &str, _: &AgentStatus, _: i64) -> Result<(), StoreError> {
            unimplemented!()
        }
        fn record_disconnect(&self, _: &str, _: &str, _: i64) -> Result<(), StoreError> {
            unimplemented!()
        }
        fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
            unimplemented!()
        }
        fn enforce_retention(&self, _: &Retention, _: i64) -> Result<RetentionReport, StoreError> {
            unimplemented!()
        }
        fn count_events(&self, _: EventKind, _: Option<&str>) -> Result<u64, StoreError> {
            unimplemented!()
        }
    }

    async fn wait_entered(entered: std_mpsc::Receiver<()>) {
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
    }

    /// Waits (without sleeping) until `n` batches are queued behind the held first commit.
    async fn wait_queued(writer: &StoreWriter, n: usize) {
        while writer.queued() < n {
            tokio::task::yield_now().await;
        }
    }

    /// Commits `batches` from tasks of their own, after the first commit is held, and returns
    /// the outcomes of all of them in order.
    async fn commit_behind_held_first(
        writer: &StoreWriter,
        entered: std_mpsc::Receiver<()>,
        release: std_mpsc::Sender<()>,
        first: IncomingBatch,
        batches: Vec<IncomingBatch>,
    ) -> Vec<Result<CommitOutcome, StoreError>> {
        let w = writer.clone();
        let mut tasks = vec![tokio::spawn(async move { w.commit(first).await })];
        wait_entered(entered).await;
        let n = batches.len();
        for b in batches {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move { w.commit(b).await }));
            // One at a time, so the queue's order is the order given.
            wait_queued(writer, tasks.len() - 1).await;
        }
        wait_queued(writer, n).await;
        release.send(()).unwrap();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    fn config(max_batches: usize, max_events: usize) -> WriterConfig {
        WriterConfig {
            queue: 64,
            max_batches_per_txn: max_batches,
            max_events_per_txn: max_events,
        }
    }

    #[tokio::test]
    async fn waiting_batches_share_transactions_up_to_the_batch_limit() {
        let (store, entered, release) = gated(Mode::Work);
        let (writer, join) = StoreWriter::spawn(store.clone(), config(4, 1000));
        let rest = (2..=11).map(|seq| logs("a", 1, seq, 1)).collect();
        let out =
            commit_behind_held_first(&writer, entered, release, logs("a", 1, 1, 1), rest).await;
        assert!(out.iter().all(|r| matches!(r, Ok(CommitOutcome::Stored))));
        assert_eq!(*store.groups.lock().unwrap(), vec![1, 4, 4, 2]);
        let stats = writer.stats();
        assert_eq!(
            (stats.transactions, stats.batches, stats.events),
            (4, 11, 11)
        );
        drop(writer);
        tokio::task::spawn_blocking(move || join.join())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn the_event_limit_closes_a_group_and_a_large_batch_goes_alone() {
        let (store, entered, release) = gated(Mode::Work);
        let (writer, _join) = StoreWriter::spawn(store.clone(), config(100, 25));
        let rest = vec![
            logs("a", 1, 2, 10),
            logs("a", 1, 3, 10),
            logs("a", 1, 4, 10),
            logs("a", 1, 5, 100),
            logs("a", 1, 6, 5),
        ];
        let out =
            commit_behind_held_first(&writer, entered, release, logs("a", 1, 1, 1), rest).await;
        assert!(out.iter().all(|r| r.is_ok()));
        assert_eq!(*store.groups.lock().unwrap(), vec![1, 2, 1, 1, 1]);
    }

    #[tokio::test]
    async fn duplicates_in_one_group_are_answered_as_such() {
        let (store, entered, release) = gated(Mode::Work);
        let (writer, _join) = StoreWriter::spawn(store.clone(), config(10, 1000));
        let rest = vec![logs("a", 1, 2, 1), logs("a", 1, 1, 1), logs("a", 1, 2, 1)];
        let out: Vec<_> =
            commit_behind_held_first(&writer, entered, release, logs("a", 1, 1, 1), rest)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        use CommitOutcome::{Duplicate, Stored};
        assert_eq!(out, vec![Stored, Stored, Duplicate, Duplicate]);
        assert_eq!(*store.groups.lock().unwrap(), vec![1, 3]);
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_batch_in_it() {
        let (store, entered, release) = gated(Mode::Fail);
        let (writer, _join) = StoreWriter::spawn(store, config(10, 1000));
        let rest = vec![logs("a", 1, 2, 1), logs("b", 1, 1, 1)];
        let out =
            commit_behind_held_first(&writer, entered, release, logs("a", 1, 1, 1), rest).await;
        for r in out {
            let err = r.unwrap_err();
            assert!(err.to_string().contains("disk on fire"), "{err}");
        }
        let stats = writer.stats();
        assert_eq!((stats.transactions, stats.failed_transactions), (2, 2));
    }

    #[tokio::test]
    async fn a_store_answering_the_wrong_number_of_outcomes_is_an_error() {
        let (store, entered, release) = gated(Mode::WrongCount);
        let (writer, _join) = StoreWriter::spawn(store, config(10, 1000));
        let out =
            commit_behind_held_first(&writer, entered, release, logs("a", 1, 1, 1), vec![]).await;
        let err = out[0].as_ref().unwrap_err();
        assert!(
            err.to_string().contains("0 outcomes for 1 batches"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn dropping_every_handle_drains_the_queue_then_ends_the_thread() {
        let (store, entered, release) = gated(Mode::Work);
        let (writer, join) = StoreWriter::spawn(store.clone(), config(2, 1000));
        let w = writer.clone();
        let first = tokio::spawn(async move { w.commit(logs("a", 1, 1, 1)).await });
        wait_entered(entered).await;
        let mut rest = Vec::new();
        for seq in 2..=4 {
            let w = writer.clone();
            rest.push(tokio::spawn(
                async move { w.commit(logs("a", 1, seq, 1)).await },
            ));
        }
        wait_queued(&writer, 3).await;
        drop(writer);
        release.send(()).unwrap();
        // Each task drops its handle when its commit is answered; the thread ends after the last.
        tokio::task::spawn_blocking(move || join.join())
            .await
            .unwrap()
            .unwrap();
        assert!(first.await.unwrap().is_ok());
        for t in rest {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(store.groups.lock().unwrap().iter().sum::<usize>(), 4);
    }

    #[tokio::test]
    async fn a_panicking_store_stops_the_writer_and_every_waiter_hears_of_it() {
        let (store, entered, release) = gated(Mode::Panic);
        let (writer, join) = StoreWriter::spawn(store, config(10, 1000));
        let out = commit_behind_held_first(
            &writer,
            entered,
            release,
            logs("a", 1, 1, 1),
            vec![logs("a", 1, 2, 1)],
        )
        .await;
        for r in out {
            assert!(matches!(r, Err(StoreError::WriterStopped)), "{r:?}");
        }
        assert!(matches!(
            writer.commit(logs("a", 1, 3, 1)).await,
            Err(StoreError::WriterStopped)
        ));
        let joined = tokio::task::spawn_blocking(move || join.join())
            .await
            .unwrap();
        assert!(matches!(joined, Err(StoreError::WriterPanicked)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_into_sqlite_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
        let (writer, join) = StoreWriter::spawn(store.clone(), WriterConfig::default());
        let mut tasks = Vec::new();
        for agent in ["a", "b", "c", "d"] {
            for seq in 0..25 {
                let w = writer.clone();
                // Every batch is sent twice, as an agent resending after a lost ack would.
                for _ in 0..2 {
                    let w = w.clone();
                    tasks.push(tokio::spawn(async move {
                        w.commit(logs(agent, 1, seq, 3)).await
                    }));
                }
            }
        }
        let mut stored = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() == CommitOutcome::Stored {
                stored += 1;
            }
        }
        assert_eq!(stored, 100);
        assert_eq!(store.count_events(EventKind::Log, None).unwrap(), 300);
        let stats = writer.stats();
        assert_eq!((stats.batches, stats.events), (200, 600));
        drop(writer);
        tokio::task::spawn_blocking(move || join.join())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn registry_updates_go_through_the_writer_in_order_with_batches() {
        use crate::store::testutil::{T0, hello};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
        let (writer, join) = StoreWriter::spawn(store.clone(), WriterConfig::default());
        let update = |u| {
            let w = writer.clone();
            async move { w.record(u).await }
        };
        update(RegistryUpdate::Hello {
            agent_id: "a".to_owned(),
            hello: hello(7, AgentStatus::default()),
            now_ns: T0,
        })
        .await
        .unwrap();
        writer.commit(logs("a", 7, 1, 2)).await.unwrap();
        update(RegistryUpdate::Disconnect {
            agent_id: "a".to_owned(),
            reason: "bye".to_owned(),
            now_ns: T0 + 5,
        })
        .await
        .unwrap();
        let agents = store.agents().unwrap();
        assert_eq!(agents.len(), 1);
        let a = &agents[0];
        assert_eq!((a.spool_id, a.connected), (Some(7), false));
        assert_eq!(a.last_disconnect_reason.as_deref(), Some("bye"));
        assert_eq!(store.count_events(EventKind::Log, Some("a")).unwrap(), 2);
        drop(writer);
        tokio::task::spawn_blocking(move || join.join())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark; run with --release -- --ignored --nocapture"]
    async fn throughput_through_the_writer() {
        const AGENTS: u64 = 10;
        const BATCHES: u64 = 100;
        const EVENTS: usize = 1000;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
        let (writer, join) = StoreWriter::spawn(store.clone(), WriterConfig::default());
        let payload: Vec<_> = (0..AGENTS)
            .map(|a| {
                (0..BATCHES)
                    .map(|seq| bench_batch(&format!("agent-{a}"), seq, EVENTS))
                    .collect::<Vec<_>>()
            })
            .collect();
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for batches in payload {
            let w = writer.clone();
            // Each agent has one batch in flight at a time.
            tasks.push(tokio::spawn(async move {
                for b in batches {
                    w.commit(b).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed();
        let n = AGENTS * BATCHES * EVENTS as u64;
        assert_eq!(store.count_events(EventKind::Log, None).unwrap(), n);
        let stats = writer.stats();
        println!(
            "{n} events from {AGENTS} agents through the writer: {:.0} events/s, \
             {} transactions ({:.1} batches each)",
            n as f64 / elapsed.as_secs_f64(),
            stats.transactions,
            stats.batches as f64 / stats.transactions as f64
        );
        drop(writer);
        tokio::task::spawn_blocking(move || join.join())
            .await
            .unwrap()
            .unwrap();
    }
}
