//! Group commit: one OS thread owns every write to the stores. It takes what is queued, applies
//! the round's registry updates in one write, commits the round's batches in one commit, answers
//! every waiter, and publishes what was newly stored on the [`feed`](super::feed).
//!
//! A durable commit costs an fsync, whatever it holds. Sessions hand their batches to
//! [`StoreWriter::commit`] and their registry updates (Hello, heartbeat, disconnect) to
//! [`StoreWriter::record`], and wait; the writer thread takes what is waiting (up to
//! [`WriterConfig`]'s limits) and handles the round at once. Under load, rounds grow and the fsync
//! is shared; when idle, a lone batch is committed at once. The bounded queues are the
//! backpressure: when the disk falls behind, `commit` waits for room instead of buffering without
//! limit.
//!
//! Batches and registry updates wait in two queues, and every round takes all the updates that
//! are waiting: an agent's Hello, which its Welcome waits for, never waits behind thousands of
//! other agents' batches (a reconnecting fleet fills the batch queue with its spooled backlog,
//! and a Hello behind it would miss the agent's connect timeout). Updates keep their order among
//! themselves; against batches, order does not matter: a batch only marks its agent seen, a
//! maximum, and updates never touch events.
//!
//! # A round
//!
//! 1. One registry write ([`StateStore::record_all`]): every waiting update in queue order (up to
//!    [`WriterConfig::max_updates_per_round`]), then a [`RegistryUpdate::Seen`] for agents with
//!    batches in the round.
//! 2. One batch commit ([`EventStore::commit_batches`]).
//! 3. Every newly stored batch is published on the feed, in order; publishing never waits.
//! 4. Every waiter gets its batch's outcome: once `commit` returns, its batch is on the feed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::feed::{self, CommittedBatch, Feed, FeedSubscriber, Publisher};
use super::{
    BatchCommit, CommitOutcome, EventStore, IncomingBatch, RegistryUpdate, StateStore, StoreError,
};

/// Limits of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// Batches waiting for the writer at most, and registry updates at most; `commit` and
    /// `record` wait for room beyond this.
    pub queue: usize,
    /// Batches in one round at most.
    pub max_batches_per_txn: usize,
    /// Registry updates in one round at most.
    pub max_updates_per_round: usize,
    /// Events in one round at most (a single larger batch still gets its own).
    pub max_events_per_txn: usize,
    /// Committed batches the feed holds for a subscriber that has not read them yet; beyond it
    /// the subscriber falls behind and catches up from the store.
    pub feed_capacity: usize,
}

impl Default for WriterConfig {
    /// Room for 1,024 waiting batches and as many updates; rounds of up to 64 batches or 50,000
    /// events, about a quarter of a second of work at the store's measured rate, and up to 4,096
    /// updates (tens of milliseconds: a fleet's Hellos after a restart go in a few rounds); a
    /// feed of 8,192 batches: a fleet's metrics arrive in bursts every interval (1,500 hosts'
    /// rounds within a few seconds), and a reader that falls behind one reads back from the
    /// store, which costs more than the feed. The feed holds batches the store already decoded,
    /// about 2 KiB each at the default rates: 16 MiB when full.
    fn default() -> Self {
        WriterConfig {
            queue: 1024,
            max_batches_per_txn: 64,
            max_updates_per_round: 4096,
            max_events_per_txn: 50_000,
            feed_capacity: 8192,
        }
    }
}

/// Counters of what the writer thread did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Batch commits attempted (committed or failed).
    pub transactions: u64,
    /// Batch commits that failed; each failed every batch in it.
    pub failed_transactions: u64,
    /// Batches answered (stored, duplicate or failed).
    pub batches: u64,
    /// Events in those batches.
    pub events: u64,
    /// Registry writes attempted; one per round that had updates.
    pub registry_writes: u64,
    /// Registry writes that failed; each failed every update in it.
    pub failed_registry_writes: u64,
    /// Batches published on the feed.
    pub published: u64,
    /// Batches the feed dropped for subscribers that fell behind, over all of them.
    pub feed_lagged: u64,
    /// Breaks found in agents' file-integrity trails: the notices the store added to batches
    /// ([`BatchCommit::Stored`]), which are published on the feed with their batch.
    pub fim_trail_breaks: u64,
    /// The event store's backend ([`EventStore::backend_name`]).
    pub events_backend: &'static str,
    /// The state store's backend ([`StateStore::backend_name`]).
    pub state_backend: &'static str,
}

/// A cloneable handle to the writer thread.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    batches: mpsc::Sender<BatchJob>,
    updates: mpsc::Sender<UpdateJob>,
    stats: Arc<Counters>,
    feed: Feed,
}

/// Reads what the writer thread has done, and what its feed dropped.
#[derive(Debug, Clone)]
pub struct WriterFigures {
    counters: Arc<Counters>,
    /// For the batches it dropped for subscribers that fell behind.
    feed: Feed,
}

impl WriterFigures {
    pub fn snapshot(&self) -> WriterStats {
        WriterStats {
            feed_lagged: self.feed.lagged(),
            ..self.counters.snapshot()
        }
    }

    /// The latency histograms (batch answer, group commit, registry write), for a metrics
    /// registry.
    pub fn histograms(&self) -> [prometheus::Histogram; 3] {
        [
            self.counters.batch_latency.clone(),
            self.counters.commit_latency.clone(),
            self.counters.registry_latency.clone(),
        ]
    }
}

/// Waits for the writer thread to finish.
#[derive(Debug)]
pub struct WriterJoin {
    handle: JoinHandle<()>,
}

#[derive(Debug)]
struct BatchJob {
    batch: IncomingBatch,
    reply: oneshot::Sender<Result<CommitOutcome, StoreError>>,
}

#[derive(Debug)]
struct UpdateJob {
    update: Box<RegistryUpdate>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The writer thread's ends of the two queues.
struct Queues {
    batches: mpsc::Receiver<BatchJob>,
    updates: mpsc::Receiver<UpdateJob>,
}

/// The first job a wait for work returned.
enum First {
    Batch(BatchJob),
    Update(UpdateJob),
}

impl Queues {
    /// Waits for a job in either queue; updates first. `None` once both queues are closed and
    /// empty.
    async fn next(&mut self) -> Option<First> {
        tokio::select! {
            biased;
            Some(job) = self.updates.recv() => Some(First::Update(job)),
            Some(job) = self.batches.recv() => Some(First::Batch(job)),
            else => None,
        }
    }
}

#[derive(Debug)]
struct Counters {
    /// Seconds from a batch's hand-over to the writer to its answer: the wait in the queue
    /// and the commit, which is what acknowledging it waits for.
    batch_latency: prometheus::Histogram,
    /// Seconds each group commit took in the event store.
    commit_latency: prometheus::Histogram,
    /// Seconds each registry write took in the state store.
    registry_latency: prometheus::Histogram,
    events_backend: &'static str,
    state_backend: &'static str,
    transactions: AtomicU64,
    failed_transactions: AtomicU64,
    batches: AtomicU64,
    events: AtomicU64,
    registry_writes: AtomicU64,
    failed_registry_writes: AtomicU64,
    published: AtomicU64,
    fim_trail_breaks: AtomicU64,
}

/// The stores the writer thread writes to.
struct Stores {
    events: Arc<dyn EventStore>,
    state: Arc<dyn StateStore>,
}

/// Buckets of the latency histograms, in seconds: a millisecond to ten seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

impl Counters {
    /// Counters for a writer over these backends (named on the commit and registry-write
    /// histograms, as the `backend` label).
    fn new(events_backend: &'static str, state_backend: &'static str) -> Counters {
        let labelled = |name: &str, help: &str, backend: Option<&str>| {
            let mut opts =
                prometheus::HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            if let Some(backend) = backend {
                opts = opts.const_label("backend", backend);
            }
            prometheus::Histogram::with_opts(opts)
                .unwrap_or_else(|e| unreachable!("a valid histogram: {e}"))
        };
        let histogram = |name: &str, help: &str| labelled(name, help, None);
        Counters {
            batch_latency: histogram(
                "outpost_ingest_batch_latency_seconds",
                "Time from a batch's hand-over to the store writer to its answer (queue and commit).",
            ),
            commit_latency: labelled(
                "outpost_store_commit_duration_seconds",
                "Time each group commit of batches took in the event store, by backend.",
                Some(events_backend),
            ),
            registry_latency: labelled(
                "outpost_state_write_duration_seconds",
                "Time each registry write took in the state store, by backend.",
                Some(state_backend),
            ),
            events_backend,
            state_backend,
            transactions: AtomicU64::default(),
            failed_transactions: AtomicU64::default(),
            batches: AtomicU64::default(),
            events: AtomicU64::default(),
            registry_writes: AtomicU64::default(),
            failed_registry_writes: AtomicU64::default(),
            published: AtomicU64::default(),
            fim_trail_breaks: AtomicU64::default(),
        }
    }
}

impl StoreWriter {
    /// Spawns a dedicated OS thread that owns every write to `events` and `state` (the same
    /// store may be both). `queue` bounds pending jobs (backpressure). Limits of zero are
    /// treated as one.
    ///
    /// The thread ends once every `StoreWriter` is dropped and the queue is drained; the feed
    /// ends with it. Fails if the event store cannot say where its events end.
    pub fn spawn(
        events: Arc<dyn EventStore>,
        state: Arc<dyn StateStore>,
        config: WriterConfig,
    ) -> Result<(StoreWriter, WriterJoin), StoreError> {
        let end = events.end()?;
        let (publisher, feed) = feed::channel(Arc::clone(&events), config.feed_capacity, end);
        let (batches, batches_rx) = mpsc::channel(config.queue.max(1));
        let (updates, updates_rx) = mpsc::channel(config.queue.max(1));
        let queues = Queues {
            batches: batches_rx,
            updates: updates_rx,
        };
        let stats = Arc::new(Counters::new(events.backend_name(), state.backend_name()));
        let thread_stats = Arc::clone(&stats);
        let stores = Stores { events, state };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(&stores, queues, config, &thread_stats, &publisher))
            .map_err(|e| StoreError::backend("starting the store writer thread", e))?;
        let writer = StoreWriter {
            batches,
            updates,
            stats,
            feed,
        };
        Ok((writer, WriterJoin { handle }))
    }

    /// Queue one batch; resolves after the commit that contains it.
    ///
    /// Waits for room when the queue is full. Fails with the commit's error (every batch in it
    /// fails alike; the agent retries), or [`StoreError::WriterStopped`] if the thread is gone.
    pub async fn commit(&self, batch: IncomingBatch) -> Result<CommitOutcome, StoreError> {
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        self.batches
            .send(BatchJob { batch, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        let outcome = answer.await.map_err(|_| StoreError::WriterStopped)?;
        self.stats
            .batch_latency
            .observe(started.elapsed().as_secs_f64());
        outcome
    }

    /// Queue a registry update; resolves once it is applied, with the next round (it does not
    /// wait behind queued batches).
    pub async fn record(&self, update: RegistryUpdate) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.updates
            .send(UpdateJob {
                update: Box::new(update),
                reply,
            })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// A subscriber to every batch committed from now on ([`feed`](super::feed)).
    pub fn subscribe(&self) -> FeedSubscriber {
        self.feed.subscribe()
    }

    /// A handle to subscribe later without keeping the writer alive.
    pub fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// Jobs (batches and updates) queued and not yet taken by the writer thread.
    pub fn queued(&self) -> usize {
        let waiting = |max: usize, room: usize| max - room;
        waiting(self.batches.max_capacity(), self.batches.capacity())
            + waiting(self.updates.max_capacity(), self.updates.capacity())
    }

    /// A reader of [`StoreWriter::stats`] that does not keep the writer running, as a handle
    /// does (the writer stops once every handle is gone).
    pub fn figures(&self) -> WriterFigures {
        WriterFigures {
            counters: Arc::clone(&self.stats),
            feed: self.feed.clone(),
        }
    }

    /// What the writer thread has done so far.
    pub fn stats(&self) -> WriterStats {
        self.figures().snapshot()
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
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WriterStats {
            transactions: get(&self.transactions),
            failed_transactions: get(&self.failed_transactions),
            batches: get(&self.batches),
            events: get(&self.events),
            registry_writes: get(&self.registry_writes),
            failed_registry_writes: get(&self.failed_registry_writes),
            published: get(&self.published),
            feed_lagged: 0,
            fim_trail_breaks: get(&self.fim_trail_breaks),
            events_backend: self.events_backend,
            state_backend: self.state_backend,
        }
    }
}

/// The batches of one round, in queue order.
#[derive(Debug, Default)]
struct Round {
    jobs: Vec<BatchJob>,
    events: usize,
}

impl Round {
    /// Whether `job` may join: within the event limit (a round's first batch always joins).
    fn admits(&self, job: &BatchJob, max_events: usize) -> bool {
        self.jobs.is_empty() || self.events.saturating_add(job.batch.events.len()) <= max_events
    }

    fn push(&mut self, job: BatchJob) {
        self.events += job.batch.events.len();
        self.jobs.push(job);
    }
}

/// The writer thread: gather a round, handle it, until both queues close and are empty.
fn run(
    stores: &Stores,
    mut queues: Queues,
    config: WriterConfig,
    stats: &Counters,
    publisher: &Publisher,
) {
    let max_batches = config.max_batches_per_txn.max(1);
    let max_updates = config.max_updates_per_round.max(1);
    let max_events = config.max_events_per_txn.max(1);
    // Waiting on two queues from a plain thread; the queues need no timers or I/O.
    let waiter = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "The store writer cannot wait for work; it stops.");
            return;
        }
    };
    // A batch taken from the queue that did not fit the previous round.
    let mut held: Option<BatchJob> = None;
    let mut seen = SeenMarks::default();
    loop {
        let mut updates = Vec::new();
        let mut round = Round::default();
        if let Some(job) = held.take() {
            round.push(job);
        } else {
            match waiter.block_on(queues.next()) {
                None => return,
                Some(First::Update(job)) => updates.push(job),
                Some(First::Batch(job)) => round.push(job),
            }
        }
        while updates.len() < max_updates {
            let Ok(job) = queues.updates.try_recv() else {
                break;
            };
            updates.push(job);
        }
        while round.jobs.len() < max_batches {
            let Ok(job) = queues.batches.try_recv() else {
                break;
            };
            if !round.admits(&job, max_events) {
                held = Some(job);
                break;
            }
            round.push(job);
        }
        handle_round(stores, updates, round, &mut seen, stats, publisher);
    }
}

fn handle_round(
    stores: &Stores,
    update_jobs: Vec<UpdateJob>,
    round: Round,
    seen: &mut SeenMarks,
    stats: &Counters,
    publisher: &Publisher,
) {
    let (mut updates, update_replies): (Vec<_>, Vec<_>) = update_jobs
        .into_iter()
        .map(|job| (*job.update, job.reply))
        .unzip();
    let (batches, replies): (Vec<_>, Vec<_>) = round
        .jobs
        .into_iter()
        .map(|job| (job.batch, job.reply))
        .unzip();
    updates.extend(seen.marks(&batches));
    if record_updates(stores.state.as_ref(), &updates, update_replies, stats) {
        publisher.publish_registry(&updates);
    }
    if batches.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let answers = commit_batches(stores.events.as_ref(), &batches);
    stats
        .commit_latency
        .observe(started.elapsed().as_secs_f64());
    stats.transactions.fetch_add(1, Ordering::Relaxed);
    stats
        .batches
        .fetch_add(replies.len() as u64, Ordering::Relaxed);
    stats
        .events
        .fetch_add(round.events as u64, Ordering::Relaxed);
    let answers = match answers {
        Ok(answers) => answers,
        Err(e) => {
            stats.failed_transactions.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, batches = replies.len(), "A group commit failed; its batches will be retried by their agents.");
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };
    // Published before anyone is answered: once `commit` returns, the batch is on the feed.
    for (batch, answer) in batches.into_iter().zip(&answers) {
        if let BatchCommit::Stored { start, notices } = answer {
            // The store's notices have the cursors right after the batch's events.
            let mut events = batch.events;
            events.extend_from_slice(notices);
            stats
                .fim_trail_breaks
                .fetch_add(notices.len() as u64, Ordering::Relaxed);
            publisher.publish(CommittedBatch {
                agent_id: batch.agent_id,
                spool_id: batch.spool_id,
                seq: batch.seq,
                received_ns: batch.received_ns,
                start: *start,
                events,
            });
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
    }
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A waiter that gave up (its connection closed) no longer needs the answer.
        let _ = reply.send(Ok(answer.outcome()));
    }
}

/// How often an agent sending batches is marked seen in the registry, at most. Fleet status counts
/// an agent offline after tens of seconds of silence, so a mark a second is plenty; one per round
/// would add a registry write to every commit of a busy aggregator.
const SEEN_EVERY_NS: i64 = 1_000_000_000;

/// When each agent was last marked seen, to mark it again only every [`SEEN_EVERY_NS`].
#[derive(Debug, Default)]
struct SeenMarks {
    marked: HashMap<String, i64>,
}

impl SeenMarks {
    /// One [`RegistryUpdate::Seen`] per agent with batches whose latest receive time is at least
    /// [`SEEN_EVERY_NS`] past its last mark (or that was never marked), at that time.
    fn marks(&mut self, batches: &[IncomingBatch]) -> Vec<RegistryUpdate> {
        let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
        for b in batches {
            let t = latest.entry(&b.agent_id).or_insert(b.received_ns);
            *t = (*t).max(b.received_ns);
        }
        let mut marks = Vec::new();
        for (agent_id, now_ns) in latest {
            let due = self
                .marked
                .get(agent_id)
                .is_none_or(|&last| now_ns.saturating_sub(last) >= SEEN_EVERY_NS);
            if due {
                self.marked.insert(agent_id.to_owned(), now_ns);
                marks.push(RegistryUpdate::Seen {
                    agent_id: agent_id.to_owned(),
                    now_ns,
                });
            }
        }
        marks
    }
}

/// The round's one registry write; every waiting update gets its result. Whether it was applied.
fn record_updates(
    state: &dyn StateStore,
    updates: &[RegistryUpdate],
    replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    stats: &Counters,
) -> bool {
    if updates.is_empty() {
        return false;
    }
    stats.registry_writes.fetch_add(1, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let result = state.record_all(updates);
    stats
        .registry_latency
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        stats.failed_registry_writes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, updates = updates.len(), "A registry write failed.");
    }
    for reply in replies {
        let _ = reply.send(result.clone());
    }
    result.is_ok()
}

/// Commits the batches, checking that the store answered for each.
fn commit_batches(
    events: &dyn EventStore,
    batches: &[IncomingBatch],
) -> Result<Vec<BatchCommit>, StoreError> {
    let answers = events.commit_batches(batches)?;
    if answers.len() == batches.len() {
        Ok(answers)
    } else {
        Err(StoreError::backend(
            "committing a group of batches",
            OutcomeCountMismatch {
                batches: batches.len(),
                outcomes: answers.len(),
            },
        ))
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
mod tests;
