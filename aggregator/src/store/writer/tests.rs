use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::mpsc as std_mpsc;

use outpost_common::event::{AgentStatus, Event, EventKind};

use super::*;
use crate::store::testutil::{T0, batch, bench_batch, hello, log, logs, oldest_batch};
use crate::store::{
    AgentRecord, Cursor, EventPage, EventQuery, FeedItem, HostSummary, Retention, RetentionReport,
    SqliteStore,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Work,
    Fail,
    WrongCount,
    Panic,
}

/// A store that records the size of each group and each registry write, and can hold the
/// first commit until released.
#[derive(Debug)]
struct FakeStore {
    mode: Mode,
    groups: Mutex<Vec<usize>>,
    registry: Mutex<Vec<Vec<RegistryUpdate>>>,
    seen: Mutex<HashSet<(String, u64, u64)>>,
    next: Mutex<Cursor>,
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
        registry: Mutex::new(Vec::new()),
        seen: Mutex::new(HashSet::new()),
        next: Mutex::new(Cursor::START),
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(Some(release_rx)),
    });
    (store, entered_rx, release_tx)
}

impl EventStore for FakeStore {
    fn backend_name(&self) -> &'static str {
        "fake"
    }

    fn commit_batches(&self, batches: &[IncomingBatch]) -> Result<Vec<BatchCommit>, StoreError> {
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
        let mut next = self.next.lock().unwrap();
        Ok(batches
            .iter()
            .map(|b| {
                if seen.insert((b.agent_id.clone(), b.spool_id, b.seq)) {
                    let start = *next;
                    *next = next.advance(b.events.len());
                    BatchCommit::stored(start)
                } else {
                    BatchCommit::Duplicate
                }
            })
            .collect())
    }
    fn end(&self) -> Result<Cursor, StoreError> {
        Ok(*self.next.lock().unwrap())
    }
    fn events(&self, _: &EventQuery) -> Result<EventPage, StoreError> {
        unimplemented!()
    }
    fn host_summaries(&self) -> Result<BTreeMap<String, HostSummary>, StoreError> {
        unimplemented!()
    }
    fn metric_query(
        &self,
        _: &crate::store::series::MetricQuery,
    ) -> Result<crate::store::series::MetricAnswer, crate::store::series::MetricQueryError> {
        unimplemented!()
    }
    fn enforce_retention(&self, _: &Retention, _: i64) -> Result<RetentionReport, StoreError> {
        unimplemented!()
    }
}

impl StateStore for FakeStore {
    fn backend_name(&self) -> &'static str {
        "fake"
    }

    fn record_all(&self, updates: &[RegistryUpdate]) -> Result<(), StoreError> {
        self.registry.lock().unwrap().push(updates.to_vec());
        Ok(())
    }
    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        unimplemented!()
    }
    fn agent(&self, _: &str) -> Result<Option<AgentRecord>, StoreError> {
        unimplemented!()
    }
    fn insert_token(&self, _: &crate::tokens::TokenRecord) -> Result<(), StoreError> {
        unimplemented!()
    }
    fn token(&self, _: &str) -> Result<Option<crate::tokens::TokenRecord>, StoreError> {
        unimplemented!()
    }
    fn tokens(&self) -> Result<Vec<crate::tokens::TokenRecord>, StoreError> {
        unimplemented!()
    }
    fn revoke_token(
        &self,
        _: &str,
        _: i64,
    ) -> Result<Option<crate::tokens::TokenRecord>, StoreError> {
        unimplemented!()
    }
    fn touch_token(&self, _: &str, _: i64) -> Result<(), StoreError> {
        unimplemented!()
    }
    fn append_audit(&self, _: &[crate::store::AuditEntry]) -> Result<(), StoreError> {
        unimplemented!()
    }
    fn audit(&self, _: Option<i64>, _: usize) -> Result<Vec<crate::store::AuditEntry>, StoreError> {
        unimplemented!()
    }
    fn remove_agent(&self, _: &str, _: i64) -> Result<bool, StoreError> {
        unimplemented!()
    }
    fn insert_enrollment_token(
        &self,
        _: &crate::enroll::token::EnrollmentToken,
    ) -> Result<(), StoreError> {
        unimplemented!()
    }
    fn enrollment_token(
        &self,
        _: &str,
    ) -> Result<Option<crate::enroll::token::EnrollmentToken>, StoreError> {
        unimplemented!()
    }
    fn enrollment_tokens(&self) -> Result<Vec<crate::enroll::token::EnrollmentToken>, StoreError> {
        unimplemented!()
    }
    fn revoke_enrollment_token(
        &self,
        _: &str,
        _: i64,
    ) -> Result<Option<crate::enroll::token::EnrollmentToken>, StoreError> {
        unimplemented!()
    }
    fn key_enrolled(&self, _: &[u8; 32]) -> Result<bool, StoreError> {
        unimplemented!()
    }
    fn record_enrollment(&self, _: &crate::store::Enrollment) -> Result<(), StoreError> {
        unimplemented!()
    }
}

/// A writer over one store that is both the event store and the state store.
fn spawn<S: EventStore + StateStore>(
    store: Arc<S>,
    config: WriterConfig,
) -> (StoreWriter, WriterJoin) {
    StoreWriter::spawn(store.clone(), store, config).unwrap()
}

async fn wait_entered(entered: std_mpsc::Receiver<()>) {
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
}

/// Waits (without sleeping) until `n` jobs are queued behind the held first commit.
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
        ..WriterConfig::default()
    }
}

async fn join(writer: StoreWriter, join: WriterJoin) {
    drop(writer);
    tokio::task::spawn_blocking(move || join.join())
        .await
        .unwrap()
        .unwrap();
}

fn seen(agent: &str, now_ns: i64) -> RegistryUpdate {
    RegistryUpdate::Seen {
        agent_id: agent.to_owned(),
        now_ns,
    }
}

fn heartbeat(agent: &str, now_ns: i64) -> RegistryUpdate {
    RegistryUpdate::Heartbeat {
        agent_id: agent.to_owned(),
        status: AgentStatus::default(),
        now_ns,
    }
}

#[tokio::test]
async fn waiting_batches_share_transactions_up_to_the_batch_limit() {
    let (store, entered, release) = gated(Mode::Work);
    let (writer, join) = spawn(store.clone(), config(4, 1000));
    let rest = (2..=11).map(|seq| logs("a", 1, seq, 1)).collect();
    let out = commit_behind_held_first(&writer, entered, release, logs("a", 1, 1, 1), rest).await;
    assert!(out.iter().all(|r| matches!(r, Ok(CommitOutcome::Stored))));
    assert_eq!(*store.groups.lock().unwrap(), vec![1, 4, 4, 2]);
    let stats = writer.stats();
    assert_eq!(
        (stats.transactions, stats.batches, stats.events),
        (4, 11, 11)
    );
    // Every answered batch and every group commit was timed.
    let [batch_latency, commit_latency, registry_latency] = writer.figures().histograms();
    assert_eq!(batch_latency.get_sample_count(), 11);
    assert_eq!(commit_latency.get_sample_count(), 4);
    assert_eq!(
        registry_latency.get_sample_count(),
        writer.stats().registry_writes
    );
    // The commit and registry-write histograms name their backend.
    use prometheus::core::Collector;
    for histogram in [&commit_latency, &registry_latency] {
        let labels = histogram.desc()[0].const_label_pairs.clone();
        assert_eq!(
            labels
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect::<Vec<_>>(),
            [("backend", "fake")]
        );
    }
    assert_eq!(
        (writer.stats().events_backend, writer.stats().state_backend),
        ("fake", "fake")
    );
    assert!(batch_latency.get_sample_sum() >= commit_latency.get_sample_sum() / 4.0);
    drop(writer);
    tokio::task::spawn_blocking(move || join.join())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_event_limit_closes_a_group_and_a_large_batch_goes_alone() {
    let (store, entered, release) = gated(Mode::Work);
    let (writer, _join) = spawn(store.clone(), config(100, 25));
    let rest = vec![
        logs("a", 1, 2, 10),
        logs("a", 1, 3, 10),
        logs("a", 1, 4, 10),
        logs("a", 1, 5, 100),
        logs("a", 1, 6, 5),
    ];
    let out = commit_behind_held_first(&writer, entered, release, logs("a", 1, 1, 1), rest).await;
    assert!(out.iter().all(|r| r.is_ok()));
    assert_eq!(*store.groups.lock().unwrap(), vec![1, 2, 1, 1, 1]);
}

#[tokio::test]
async fn duplicates_in_one_group_are_answered_as_such() {
    let (store, entered, release) = gated(Mode::Work);
    let (writer, _join) = spawn(store.clone(), config(10, 1000));
    let rest = vec![logs("a", 1, 2, 1), logs("a", 1, 1, 1), logs("a", 1, 2, 1)];
    let out: Vec<_> = commit_behind_held_first(&writer, entered, release, logs("a", 1, 1, 1), rest)
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
    let (writer, _join) = spawn(store, config(10, 1000));
    let rest = vec![logs("a", 1, 2, 1), logs("b", 1, 1, 1)];
    let out = commit_behind_held_first(&writer, entered, release, logs("a", 1, 1, 1), rest).await;
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
    let (writer, _join) = spawn(store, config(10, 1000));
    let out = commit_behind_held_first(&writer, entered, release, logs("a", 1, 1, 1), vec![]).await;
    let err = out[0].as_ref().unwrap_err();
    assert!(
        err.to_string().contains("0 outcomes for 1 batches"),
        "{err}"
    );
}

#[tokio::test]
async fn dropping_every_handle_drains_the_queue_then_ends_the_thread() {
    let (store, entered, release) = gated(Mode::Work);
    let (writer, join) = spawn(store.clone(), config(2, 1000));
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
    let (writer, join) = spawn(store, config(10, 1000));
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
    let (writer, join) = spawn(store.clone(), WriterConfig::default());
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
async fn the_registry_updates_of_a_round_are_one_registry_write() {
    const N: usize = 10;
    let (store, entered, release) = gated(Mode::Work);
    let (writer, handle) = spawn(store.clone(), config(64, 1000));
    let w = writer.clone();
    let first = tokio::spawn(async move { w.commit(logs("a", 1, 1, 1)).await });
    wait_entered(entered).await;
    let mut updates = Vec::new();
    for i in 0..N {
        let w = writer.clone();
        let agent = format!("agent-{i}");
        updates.push(tokio::spawn(async move {
            w.record(heartbeat(&agent, T0)).await
        }));
        wait_queued(&writer, i + 1).await;
    }
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    for u in updates {
        u.await.unwrap().unwrap();
    }
    let writes = store.registry.lock().unwrap().clone();
    // The first round: the "seen" of its batch; the second: all N heartbeats at once.
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert_eq!(writes[0], vec![seen("a", T0)]);
    let expected: Vec<_> = (0..N)
        .map(|i| heartbeat(&format!("agent-{i}"), T0))
        .collect();
    assert_eq!(writes[1], expected);
    let stats = writer.stats();
    assert_eq!((stats.registry_writes, stats.transactions), (2, 1));
    join(writer, handle).await;
}

#[tokio::test]
async fn updates_join_the_next_round_whatever_batches_wait_before_them() {
    let (store, entered, release) = gated(Mode::Work);
    // Rounds of one batch, so batches queued before an update would hold it back for rounds.
    let (writer, handle) = spawn(store.clone(), config(1, 1000));
    let w = writer.clone();
    let first = tokio::spawn(async move { w.commit(logs("x", 1, 1, 1)).await });
    wait_entered(entered).await;
    let mut tasks = Vec::new();
    // Queued in this order: b's heartbeat, a's batch, b's batch, a's disconnect, c's heartbeat.
    let w = writer.clone();
    tasks.push(tokio::spawn(async move {
        w.record(heartbeat("b", T0)).await.map(|_| ())
    }));
    wait_queued(&writer, 1).await;
    let w = writer.clone();
    tasks.push(tokio::spawn(async move {
        w.commit(logs("a", 1, 1, 1)).await.map(|_| ())
    }));
    wait_queued(&writer, 2).await;
    let w = writer.clone();
    tasks.push(tokio::spawn(async move {
        w.commit(logs("b", 1, 1, 1)).await.map(|_| ())
    }));
    wait_queued(&writer, 3).await;
    let w = writer.clone();
    let gone = RegistryUpdate::Disconnect {
        agent_id: "a".to_owned(),
        reason: "bye".to_owned(),
        now_ns: T0 + 1,
    };
    let gone_a = gone.clone();
    tasks.push(tokio::spawn(async move { w.record(gone_a).await }));
    wait_queued(&writer, 4).await;
    let w = writer.clone();
    tasks.push(tokio::spawn(
        async move { w.record(heartbeat("c", T0)).await },
    ));
    wait_queued(&writer, 5).await;
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let writes = store.registry.lock().unwrap().clone();
    assert_eq!(
        writes,
        vec![
            vec![seen("x", T0)],
            // Every waiting update, in their order, with the first waiting batch.
            vec![heartbeat("b", T0), gone, heartbeat("c", T0), seen("a", T0)],
            vec![seen("b", T0)],
        ]
    );
    assert_eq!(*store.groups.lock().unwrap(), vec![1, 1, 1]);
    join(writer, handle).await;
}

#[tokio::test]
async fn an_update_is_applied_while_the_batch_queue_is_full() {
    let (store, entered, release) = gated(Mode::Work);
    let (writer, handle) = spawn(
        store.clone(),
        WriterConfig {
            queue: 2,
            ..config(1, 1000)
        },
    );
    let w = writer.clone();
    let first = tokio::spawn(async move { w.commit(logs("x", 1, 1, 1)).await });
    wait_entered(entered).await;
    // Two batches fill the queue; four more wait for room.
    let mut batches = Vec::new();
    for i in 0..6 {
        let w = writer.clone();
        batches.push(tokio::spawn(async move {
            w.commit(logs(&format!("b{i}"), 1, 1, 1)).await
        }));
    }
    wait_queued(&writer, 2).await;
    let w = writer.clone();
    let update = tokio::spawn(async move { w.record(heartbeat("late", T0)).await });
    wait_queued(&writer, 3).await;
    release.send(()).unwrap();
    update.await.unwrap().unwrap();
    first.await.unwrap().unwrap();
    for b in batches {
        b.await.unwrap().unwrap();
    }
    let writes = store.registry.lock().unwrap().clone();
    // The second round holds the update, with the first of the six batches.
    assert_eq!(writes[1][0], heartbeat("late", T0), "{writes:?}");
    assert_eq!(store.groups.lock().unwrap().len(), 7);
    join(writer, handle).await;
}

#[tokio::test]
async fn registry_updates_go_through_the_writer_in_order_with_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let (writer, handle) = spawn(store.clone(), WriterConfig::default());
    writer
        .record(RegistryUpdate::Hello {
            agent_id: "a".to_owned(),
            hello: hello(7, AgentStatus::default()),
            now_ns: T0,
        })
        .await
        .unwrap();
    let mut b = logs("a", 7, 1, 2);
    b.received_ns = T0 + 3;
    writer.commit(b).await.unwrap();
    assert_eq!(store.agent("a").unwrap().unwrap().last_seen_ns, T0 + 3);
    writer
        .record(RegistryUpdate::Disconnect {
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
    join(writer, handle).await;
}

/// A batch of `n` log events whose times tell batch and place apart.
fn numbered(agent: &str, seq: u64, n: usize) -> IncomingBatch {
    let events = (0..n)
        .map(|i| log(T0 + (seq * 100 + i as u64) as i64, 10))
        .collect();
    batch(agent, 1, seq, events)
}

/// Every item until the feed ends.
async fn drain(sub: &mut FeedSubscriber) -> Vec<FeedItem> {
    let mut items = Vec::new();
    while let Some(item) = sub.recv().await.unwrap() {
        items.push(item);
    }
    items
}

#[tokio::test]
async fn a_subscriber_sees_every_committed_batch_in_order_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    // Committed before subscribing: not seen.
    let (writer, handle) = spawn(store.clone(), WriterConfig::default());
    writer.commit(numbered("a", 0, 2)).await.unwrap();
    let mut sub = writer.subscribe();
    let sent = [
        numbered("a", 1, 3),
        numbered("b", 1, 1),
        numbered("a", 1, 3), // resent
        numbered("a", 2, 2),
        numbered("b", 1, 1), // resent
    ];
    for b in &sent {
        writer.commit(b.clone()).await.unwrap();
    }
    let stats = writer.stats();
    join(writer, handle).await;
    let got: Vec<_> = drain(&mut sub)
        .await
        .into_iter()
        .map(|item| match item {
            FeedItem::Committed(b) => (b.agent_id.clone(), b.seq, b.events.clone(), b.start),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected = [&sent[0], &sent[1], &sent[3]];
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!((&g.0, g.1, &g.2), (&e.agent_id, e.seq, &e.events));
    }
    // Cursors follow each other, and match what the store reads back.
    assert_eq!(got[1].3, got[0].3.advance(3));
    assert_eq!(got[2].3, got[1].3.advance(1));
    let stored = store
        .events(&EventQuery {
            from: got[0].3,
            ..EventQuery::default()
        })
        .unwrap();
    let read_back: Vec<Event> = stored.events.into_iter().map(|e| e.event).collect();
    let published: Vec<Event> = got.iter().flat_map(|g| g.2.clone()).collect();
    assert_eq!(read_back, published);
    assert_eq!((stats.published, stats.feed_lagged), (4, 0));
    assert_eq!(sub.lagged(), 0);
}

#[tokio::test]
async fn a_slow_subscriber_lags_without_holding_up_commits_and_catches_up_from_the_store() {
    const CAPACITY: usize = 4;
    const BATCHES: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let config = WriterConfig {
        feed_capacity: CAPACITY,
        ..WriterConfig::default()
    };
    let (writer, handle) = spawn(store.clone(), config);
    let mut slow = writer.subscribe();
    // Nobody reads while all of these are committed: each commit still completes.
    let sent: Vec<_> = (1..=BATCHES).map(|seq| numbered("a", seq, 3)).collect();
    for b in &sent {
        assert_eq!(
            writer.commit(b.clone()).await.unwrap(),
            CommitOutcome::Stored
        );
    }
    // And a late duplicate, which must not show up anywhere.
    writer.commit(numbered("a", 3, 3)).await.unwrap();
    let stats = writer.stats();
    let feed = writer.feed();
    let figures = writer.figures();
    join(writer, handle).await;

    let items = drain(&mut slow).await;
    let missed = BATCHES - CAPACITY as u64;
    assert_eq!(items[0], FeedItem::FellBehind { batches: missed });
    let mut caught_up = Vec::new();
    let mut committed = Vec::new();
    for item in &items[1..] {
        match item {
            FeedItem::Missed(events) => {
                assert!(committed.is_empty(), "missed events after live ones");
                caught_up.extend(events.iter().map(|e| e.event.clone()));
            }
            FeedItem::Committed(b) => committed.push(b.seq),
            FeedItem::FellBehind { .. } => panic!("fell behind twice: {items:?}"),
        }
    }
    let expected_missed: Vec<Event> = sent[..missed as usize]
        .iter()
        .flat_map(|b| b.events.clone())
        .collect();
    assert_eq!(caught_up, expected_missed);
    assert_eq!(committed, (missed + 1..=BATCHES).collect::<Vec<_>>());
    assert_eq!(slow.lagged(), missed);
    assert_eq!(feed.lagged(), missed);
    assert_eq!(
        figures.snapshot().feed_lagged,
        missed,
        "what /metrics reads counts it"
    );
    assert_eq!(stats.published, BATCHES);
    assert_eq!(slow.seen_to(), store.end().unwrap());
}

#[tokio::test]
async fn a_subscriber_from_a_kept_cursor_reads_back_what_came_since_then_goes_on_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let (writer, handle) = spawn(store.clone(), WriterConfig::default());
    writer.commit(numbered("a", 1, 2)).await.unwrap();
    let kept = store.end().unwrap();
    writer.commit(numbered("a", 2, 3)).await.unwrap();
    writer.commit(numbered("b", 1, 1)).await.unwrap();
    // Nothing new is committed while it reads back: it must not wait for a commit.
    let mut sub = writer.feed().subscribe_from(kept);
    let Some(FeedItem::Missed(missed)) = sub.recv().await.unwrap() else {
        panic!("expected the events since the cursor")
    };
    let expected: Vec<Event> = [numbered("a", 2, 3), numbered("b", 1, 1)]
        .into_iter()
        .flat_map(|b| b.events)
        .collect();
    assert_eq!(
        missed.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        expected
    );
    writer.commit(numbered("a", 3, 1)).await.unwrap();
    let Some(FeedItem::Committed(live)) = sub.recv().await.unwrap() else {
        panic!("expected the live batch")
    };
    assert_eq!(live.seq, 3);
    // From the end: live only.
    let mut at_end = writer.feed().subscribe_from(store.end().unwrap());
    writer.commit(numbered("a", 4, 1)).await.unwrap();
    assert!(matches!(at_end.recv().await.unwrap(), Some(FeedItem::Committed(b)) if b.seq == 4));
    assert_eq!(sub.lagged(), 0);
    join(writer, handle).await;
}

#[tokio::test]
async fn a_subscriber_after_the_writer_stopped_sees_the_end() {
    let (store, _entered, release) = gated(Mode::Work);
    release.send(()).unwrap();
    let (writer, handle) = spawn(store, config(4, 100));
    writer.commit(logs("a", 1, 1, 1)).await.unwrap();
    let feed = writer.feed();
    join(writer, handle).await;
    assert_eq!(feed.subscribe().recv().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
async fn throughput_through_the_writer() {
    const AGENTS: u64 = 10;
    const BATCHES: u64 = 100;
    const EVENTS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let (writer, join) = spawn(store.clone(), WriterConfig::default());
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

#[test]
fn a_busy_agent_is_marked_seen_once_a_second_at_most() {
    let at = |agent: &str, seq: u64, received_ns: i64| IncomingBatch {
        received_ns,
        ..batch(agent, 1, seq, Vec::new())
    };
    let agents = |marks: Vec<RegistryUpdate>| -> Vec<(String, i64)> {
        marks
            .into_iter()
            .map(|m| match m {
                RegistryUpdate::Seen { agent_id, now_ns } => (agent_id, now_ns),
                other => panic!("not a mark: {other:?}"),
            })
            .collect()
    };
    let mut seen = SeenMarks::default();
    // First batches: every agent once, at its latest receive time.
    assert_eq!(
        agents(seen.marks(&[at("a", 1, T0), at("b", 1, T0 + 5), at("a", 2, T0 + 9)])),
        [("a".to_owned(), T0 + 9), ("b".to_owned(), T0 + 5)]
    );
    // Within the second: nothing more to write.
    assert!(seen.marks(&[at("a", 3, T0 + 500_000_000)]).is_empty());
    // A second after its last mark, an agent is marked again; the other is not yet due.
    assert_eq!(
        agents(seen.marks(&[
            at("a", 4, T0 + 9 + SEEN_EVERY_NS),
            at("b", 2, T0 + 4 + SEEN_EVERY_NS),
        ])),
        [("a".to_owned(), T0 + 9 + SEEN_EVERY_NS)]
    );
}

#[tokio::test]
async fn fim_trail_breaks_are_published_with_their_batch_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let (writer, handle) = spawn(store.clone(), WriterConfig::default());
    let mut sub = writer.subscribe();
    let t = crate::store::fim_trail::chained::trail(4);
    let fims = |range: std::ops::Range<usize>| t[range].iter().cloned().map(Event::Fim).collect();
    // 3 lost on the way.
    let sent = [
        oldest_batch("a", 1, 1, fims(0..2)),
        oldest_batch("a", 1, 2, fims(3..4)),
    ];
    for b in &sent {
        writer.commit(b.clone()).await.unwrap();
    }
    let stats = writer.stats();
    join(writer, handle).await;
    let got: Vec<_> = drain(&mut sub)
        .await
        .into_iter()
        .map(|item| match item {
            FeedItem::Committed(b) => b,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got[0].events, sent[0].events);
    let [event, Event::Log(notice)] = &got[1].events[..] else {
        panic!("{:?}", got[1])
    };
    assert_eq!(event, &sent[1].events[0]);
    assert_eq!(notice.source, crate::store::fim_trail::NOTICE_SOURCE);
    // What the feed said is what the store kept, cursor for cursor.
    let stored = store
        .events(&EventQuery {
            from: got[0].start,
            ..EventQuery::default()
        })
        .unwrap();
    let read_back: Vec<Event> = stored.events.into_iter().map(|e| e.event).collect();
    let published: Vec<Event> = got.iter().flat_map(|b| b.events.clone()).collect();
    assert_eq!(read_back, published);
    assert_eq!(got[1].end(), store.end().unwrap());
    assert_eq!(stats.fim_trail_breaks, 1);
}
