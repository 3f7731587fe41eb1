//! The delivery session against an in-memory spool and peer, on a simulated clock: the harness
//! executes the session's actions as the driver does, and time only moves when a test moves it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use outpost_common::event::DropReason;
use outpost_common::wire::{self, RejectCode, Welcome, close_code};
use proptest::prelude::*;

use super::{
    Action, BATCH_FRAME_OVERHEAD_BYTES, Pacer, ReceiverLimits, Session, SessionConfig,
    SessionError, SessionEvent,
};
use crate::spool::StoredBatch;

/// Payload bytes per event in the in-memory spool.
const EVENT_BYTES: usize = 10;

fn welcome(max_in_flight: u32, max_batch_events: u32, max_frame_bytes: u32) -> Welcome {
    Welcome {
        protocol_version: wire::PROTOCOL_VERSION,
        server_version: "test".to_owned(),
        max_frame_bytes,
        max_batch_events,
        max_in_flight,
        heartbeat_interval_ms: 1000,
    }
}

/// A Welcome that admits every batch the tests make.
fn roomy(max_in_flight: u32) -> Welcome {
    welcome(max_in_flight, 10_000, 1 << 20)
}

fn config(max_in_flight: u32) -> SessionConfig {
    SessionConfig {
        max_in_flight,
        heartbeat_interval: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(5),
    }
}

fn stored(seq: u64, events: u32) -> StoredBatch {
    StoredBatch {
        seq,
        created_ns: 0,
        events,
        low_water_seq: 1,
        payload: vec![0; events as usize * EVENT_BYTES],
        codec: wire::Codec::None,
        raw_bytes: events as usize * EVENT_BYTES,
    }
}

/// The spool's part, in memory.
#[derive(Debug, Default)]
struct MemSpool {
    batches: BTreeMap<u64, StoredBatch>,
    last_seq: u64,
    /// Every seq acknowledged, in order.
    acked: Vec<u64>,
    /// How many ack calls the seqs came in.
    ack_calls: usize,
    dropped: Vec<u64>,
    /// Split batches, with the seqs that replaced them.
    split: BTreeMap<u64, Vec<u64>>,
    limits: Option<(usize, usize)>,
}

impl MemSpool {
    fn with(events: &[u32]) -> MemSpool {
        let mut spool = MemSpool::default();
        for &e in events {
            spool.append(e);
        }
        spool
    }

    fn append(&mut self, events: u32) -> u64 {
        self.last_seq += 1;
        self.batches
            .insert(self.last_seq, stored(self.last_seq, events));
        self.last_seq
    }

    fn batches_after(&self, after: u64, max: usize) -> Vec<StoredBatch> {
        self.batches
            .range(after + 1..)
            .take(max)
            .map(|(_, b)| b.clone())
            .collect()
    }

    fn ack(&mut self, seqs: Vec<u64>) {
        self.ack_calls += 1;
        for seq in seqs {
            assert!(!self.acked.contains(&seq), "batch {seq} acknowledged twice");
            assert!(
                self.batches.remove(&seq).is_some(),
                "batch {seq} acknowledged but not in the spool"
            );
            self.acked.push(seq);
        }
    }

    fn split(&mut self, seq: u64, max_events: usize, max_bytes: usize) -> Vec<u64> {
        let batch = self.batches.remove(&seq).expect("split of a spooled batch");
        let per_batch = max_events.min(max_bytes / EVENT_BYTES).max(1) as u32;
        let mut left = batch.events;
        let mut seqs = Vec::new();
        while left > 0 {
            let n = left.min(per_batch);
            seqs.push(self.append(n));
            left -= n;
        }
        self.split.insert(seq, seqs.clone());
        seqs
    }
}

/// One session between the in-memory spool and a peer that answers when a test says so.
struct Sim {
    start: Instant,
    now: Instant,
    config: SessionConfig,
    welcome: Welcome,
    pacer: Pacer,
    spool: MemSpool,
    session: Session,
    /// Sent and not answered yet, in the order sent.
    peer: Vec<u64>,
    /// Every batch sent, with when (since `start`) and its event count, across sessions.
    sent: Vec<(Duration, u64, u32)>,
    /// Every seq fetched, across sessions.
    fetched: BTreeSet<u64>,
    heartbeats: Vec<Duration>,
    events: Vec<SessionEvent>,
    /// Every action executed, by kind, in order.
    log: Vec<&'static str>,
    closed: Option<(u32, &'static str)>,
    end: Option<Result<(), SessionError>>,
    /// The spool has new data the session was not told about yet.
    notify: bool,
}

impl Sim {
    fn new(spool: MemSpool, config: SessionConfig, welcome: Welcome) -> Sim {
        Sim::paced(spool, config, welcome, |_| Pacer::unlimited())
    }

    fn paced(
        spool: MemSpool,
        config: SessionConfig,
        welcome: Welcome,
        pacer: impl FnOnce(Instant) -> Pacer,
    ) -> Sim {
        let start = Instant::now();
        let pacer = pacer(start);
        let session = Session::new(start, &config, &welcome, pacer.clone());
        let mut sim = Sim {
            start,
            now: start,
            config,
            welcome,
            pacer,
            spool,
            session,
            peer: Vec::new(),
            sent: Vec::new(),
            fetched: BTreeSet::new(),
            heartbeats: Vec::new(),
            events: Vec::new(),
            log: Vec::new(),
            closed: None,
            end: None,
            notify: false,
        };
        sim.drive();
        sim
    }

    /// Executes every action, as the driver does, and tells the session about new data once it
    /// waits for it (as the spool's watch channel does).
    fn drive(&mut self) {
        loop {
            while let Some(event) = self.session.poll_event() {
                self.events.push(event);
            }
            let Some(action) = self.session.poll_action() else {
                if self.notify && self.session.wants_new_data() {
                    self.notify = false;
                    self.session.handle_new_data(self.now);
                    continue;
                }
                return;
            };
            assert!(self.end.is_none(), "{action:?} after the session ended");
            self.execute(action);
            assert!(self.session.in_flight() <= self.session.limit());
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::SetBatchLimits {
                max_events,
                max_bytes,
            } => {
                self.log.push("set_batch_limits");
                self.spool.limits = Some((max_events, max_bytes));
            }
            Action::FetchBatches { after, max } => {
                self.log.push("fetch");
                let batches = self.spool.batches_after(after, max);
                assert!(batches.len() <= max);
                self.fetched.extend(batches.iter().map(|b| b.seq));
                self.session.handle_batches(self.now, batches);
            }
            Action::SendBatch(batch) => {
                self.log.push("send");
                self.sent
                    .push((self.now - self.start, batch.seq, batch.events));
                self.peer.push(batch.seq);
                assert!(
                    self.peer.len() <= self.session.limit(),
                    "{} batches in flight, limit {}",
                    self.peer.len(),
                    self.session.limit()
                );
            }
            Action::SplitBatch {
                seq,
                max_events,
                max_bytes,
                ..
            } => {
                self.log.push("split");
                self.spool.split(seq, max_events, max_bytes);
            }
            Action::AckSeqs(seqs) => {
                self.log.push("ack");
                self.spool.ack(seqs);
            }
            Action::DropBatch { seq, reason } => {
                self.log.push("drop");
                assert_eq!(reason, DropReason::RejectedByAggregator);
                assert!(self.spool.batches.remove(&seq).is_some());
                self.spool.dropped.push(seq);
            }
            Action::SendHeartbeat => {
                self.log.push("heartbeat");
                self.heartbeats.push(self.now - self.start);
            }
            Action::Close { code, reason } => {
                self.log.push("close");
                self.closed = Some((code, reason));
            }
            Action::Done => {
                self.log.push("done");
                self.end = Some(Ok(()));
            }
            Action::Ended(e) => {
                self.log.push("ended");
                self.end = Some(Err(e));
            }
        }
    }

    fn take_answer(&mut self, seq: u64) {
        let at = self.peer.iter().position(|&s| s == seq);
        self.peer
            .remove(at.expect("an answer for a batch the peer holds"));
    }

    fn ack(&mut self, seq: u64) {
        self.take_answer(seq);
        self.session.handle_ack(self.now, seq, false);
        self.drive();
    }

    fn reject(&mut self, seq: u64, code: RejectCode) {
        self.take_answer(seq);
        self.session
            .handle_reject(self.now, seq, code, format!("{code:?} for {seq}"));
        self.drive();
    }

    fn append(&mut self, events: u32) -> u64 {
        let seq = self.spool.append(events);
        self.notify = true;
        self.drive();
        seq
    }

    /// Moves the clock to `since_start` after the start and lets the session act.
    fn at(&mut self, since_start: Duration) {
        self.now = self.now.max(self.start + since_start);
        self.session.handle_timeout(self.now);
        self.drive();
    }

    /// Jumps to the session's next timeout; returns it (since the start).
    fn jump(&mut self) -> Duration {
        let at = self.session.poll_timeout().expect("a timeout");
        self.now = self.now.max(at);
        self.session.handle_timeout(self.now);
        self.drive();
        at - self.start
    }

    fn shutdown(&mut self) {
        self.session.handle_shutdown(self.now);
        self.drive();
    }

    fn lose_connection(&mut self) {
        self.session
            .handle_connection_lost(self.now, "peer went away".to_owned());
        self.drive();
    }

    /// A new connection: a new session on the same spool and pacer; the old streams are gone.
    fn reconnect(&mut self) {
        assert!(self.end.is_some(), "reconnect while the session runs");
        self.peer.clear();
        self.closed = None;
        self.end = None;
        self.session = Session::new(self.now, &self.config, &self.welcome, self.pacer.clone());
        self.drive();
    }

    /// Seqs sent, from the `from`-th send on.
    fn sent_seqs(&self, from: usize) -> Vec<u64> {
        self.sent[from..].iter().map(|&(_, seq, _)| seq).collect()
    }

    fn spooled(&self) -> Vec<u64> {
        self.spool.batches.keys().copied().collect()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_window_is_the_smaller_of_both_limits() {
    let sim = Sim::new(MemSpool::with(&[1; 10]), config(8), roomy(3));
    assert_eq!(sim.sent_seqs(0), [1, 2, 3]);
    let sim = Sim::new(MemSpool::with(&[1; 10]), config(2), roomy(8));
    assert_eq!(sim.sent_seqs(0), [1, 2]);
    let sim = Sim::new(MemSpool::with(&[1; 10]), config(2), roomy(0));
    assert_eq!(sim.sent_seqs(0), [1], "a Welcome's 0 is taken as 1");
}

#[test]
fn an_ack_frees_room_and_the_next_batch_goes() {
    let mut sim = Sim::new(MemSpool::with(&[1; 5]), config(2), roomy(8));
    assert_eq!(sim.sent_seqs(0), [1, 2]);
    sim.ack(2);
    assert_eq!(sim.sent_seqs(0), [1, 2, 3]);
    assert_eq!(sim.spool.acked, [2]);
    assert_eq!(sim.spooled(), [1, 3, 4, 5]);
}

#[test]
fn acks_measure_the_round_trip_and_a_second_ack_is_ignored() {
    let mut sim = Sim::new(MemSpool::with(&[7, 9]), config(8), roomy(8));
    sim.at(ms(7));
    sim.ack(2);
    sim.session.handle_ack(sim.now, 2, true);
    sim.session.handle_ack(sim.now, 99, false);
    sim.drive();
    assert_eq!(
        sim.events,
        [SessionEvent::Acked {
            seq: 2,
            events: 9,
            rtt: ms(7),
            duplicate: false
        }]
    );
    assert_eq!(
        (sim.spool.acked.as_slice(), sim.spool.ack_calls),
        (&[2][..], 1)
    );
    assert_eq!(sim.session.in_flight(), 1);
}

#[test]
fn acks_received_between_polls_reach_the_spool_in_one_call() {
    let mut sim = Sim::new(MemSpool::with(&[1; 4]), config(8), roomy(8));
    assert_eq!(sim.sent_seqs(0), [1, 2, 3, 4]);
    for seq in [3, 1, 4] {
        sim.take_answer(seq);
        sim.session.handle_ack(sim.now, seq, false);
    }
    sim.drive();
    assert_eq!(sim.spool.ack_calls, 1);
    assert_eq!(sim.spool.acked, [3, 1, 4]);
    assert_eq!(sim.spooled(), [2]);
    assert_eq!(
        sim.events
            .iter()
            .filter(|e| matches!(e, SessionEvent::Acked { .. }))
            .count(),
        3
    );
}

#[test]
fn the_window_is_refilled_before_an_acknowledgement_reaches_the_spool() {
    let mut sim = Sim::new(MemSpool::with(&[1; 3]), config(2), roomy(8));
    assert_eq!(sim.sent_seqs(0), [1, 2]);
    sim.take_answer(1);
    sim.session.handle_ack(sim.now, 1, false);
    // The window has room for one: fetching and sending the next batch comes first, and the
    // acknowledgement waits for whatever else arrives meanwhile.
    assert!(
        matches!(
            sim.session.poll_action(),
            Some(Action::FetchBatches { after: 2, max: 1 })
        ),
        "the refill comes first"
    );
    assert!(matches!(
        sim.session.poll_action(),
        Some(Action::AckSeqs(seqs)) if seqs == [1]
    ));
    assert!(sim.session.poll_action().is_none());
}

#[test]
fn acknowledgements_reach_the_spool_before_the_session_ends() {
    let mut sim = Sim::new(MemSpool::with(&[1; 2]), config(2), roomy(8));
    assert_eq!(sim.sent_seqs(0), [1, 2]);
    sim.take_answer(1);
    sim.session.handle_ack(sim.now, 1, false);
    sim.session
        .handle_connection_lost(sim.now, "gone".to_owned());
    assert!(matches!(
        sim.session.poll_action(),
        Some(Action::AckSeqs(seqs)) if seqs == [1]
    ));
    assert!(matches!(
        sim.session.poll_action(),
        Some(Action::Ended(SessionError::Lost(_)))
    ));
}

#[test]
fn a_new_session_resends_every_unacknowledged_batch_from_the_oldest() {
    let mut sim = Sim::new(MemSpool::with(&[1; 5]), config(3), roomy(8));
    assert_eq!(sim.sent_seqs(0), [1, 2, 3]);
    sim.ack(1);
    assert_eq!(sim.sent_seqs(0), [1, 2, 3, 4]);
    sim.lose_connection();
    assert!(
        matches!(sim.end, Some(Err(SessionError::Lost(_)))),
        "{:?}",
        sim.end
    );
    assert_eq!(sim.closed, None, "a lost connection is not closed again");
    assert_eq!(sim.spool.acked, [1]);
    assert_eq!(sim.spooled(), [2, 3, 4, 5]);

    let before = sim.sent.len();
    sim.reconnect();
    assert_eq!(sim.sent_seqs(before), [2, 3, 4]);
    sim.ack(2);
    assert_eq!(sim.sent_seqs(before), [2, 3, 4, 5]);
}

#[test]
fn acks_received_before_the_connection_broke_still_reach_the_spool() {
    let mut sim = Sim::new(MemSpool::with(&[1; 3]), config(8), roomy(8));
    sim.take_answer(1);
    sim.session.handle_ack(sim.now, 1, false);
    sim.take_answer(2);
    sim.session.handle_stream_failed(sim.now, 2, "reset");
    sim.drive();
    assert_eq!(sim.spool.acked, [1]);
    match &sim.end {
        Some(Err(SessionError::Lost(reason))) => assert_eq!(reason, "batch 2: reset"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.log.last(), Some(&"ended"));
    assert_eq!(sim.spooled(), [2, 3]);
}

#[test]
fn batches_larger_than_the_receiver_takes_are_split_before_they_are_sent() {
    // 4 events at most per batch; 10-event batches are split into 4 + 4 + 2.
    let mut sim = Sim::new(
        MemSpool::with(&[10, 3, 10]),
        config(8),
        welcome(8, 4, 1 << 20),
    );
    let max_payload = (1 << 20) - BATCH_FRAME_OVERHEAD_BYTES;
    assert_eq!(sim.spool.limits, Some((4, max_payload)));
    assert_eq!(sim.log[0], "set_batch_limits");
    assert_eq!(sim.spool.split[&1], [4, 5, 6]);
    assert_eq!(sim.spool.split[&3], [7, 8, 9]);
    assert_eq!(sim.sent_seqs(0), [2, 4, 5, 6, 7, 8, 9]);
    let events: Vec<u32> = sim.sent.iter().map(|&(_, _, e)| e).collect();
    assert_eq!(events, [3, 4, 4, 2, 4, 4, 2]);
    for seq in sim.sent_seqs(0) {
        sim.ack(seq);
    }
    assert!(sim.spooled().is_empty());
    assert_eq!(sim.spool.acked.len(), 7);
}

#[test]
fn batches_larger_than_the_receivers_frame_are_split_by_bytes() {
    // Room for 2 events' payload in a frame.
    let frame = (BATCH_FRAME_OVERHEAD_BYTES + 2 * EVENT_BYTES) as u32;
    let sim = Sim::new(MemSpool::with(&[5]), config(8), welcome(8, 100, frame));
    assert_eq!(sim.spool.split[&1], [2, 3, 4]);
    let events: Vec<u32> = sim.sent.iter().map(|&(_, _, e)| e).collect();
    assert_eq!(events, [2, 2, 1]);
}

#[test]
fn a_retryable_reject_ends_the_session_and_the_batch_stays() {
    let mut sim = Sim::new(MemSpool::with(&[1; 4]), config(3), roomy(8));
    sim.take_answer(1);
    sim.session.handle_ack(sim.now, 1, false);
    sim.reject(2, RejectCode::Unavailable);
    assert!(
        matches!(&sim.end, Some(Err(SessionError::Unavailable(r))) if r == "Unavailable for 2"),
        "{:?}",
        sim.end
    );
    assert_eq!(sim.closed, Some((close_code::NORMAL, "backing off")));
    assert_eq!(sim.log[sim.log.len() - 3..], ["ack", "close", "ended"]);
    assert_eq!(sim.spool.acked, [1]);
    assert!(sim.spool.dropped.is_empty());
    assert_eq!(sim.spooled(), [2, 3, 4]);
    assert_eq!(sim.session.poll_timeout(), None);

    let before = sim.sent.len();
    sim.reconnect();
    assert_eq!(sim.sent_seqs(before), [2, 3, 4]);
}

#[test]
fn a_final_reject_drops_the_batch_and_delivery_goes_on() {
    let mut sim = Sim::new(MemSpool::with(&[1; 4]), config(2), roomy(8));
    sim.reject(1, RejectCode::Invalid);
    assert_eq!(sim.spool.dropped, [1]);
    assert_eq!(
        sim.events,
        [SessionEvent::Rejected {
            seq: 1,
            code: RejectCode::Invalid,
            reason: "Invalid for 1".to_owned()
        }]
    );
    assert!(sim.end.is_none());
    assert_eq!(sim.sent_seqs(0), [1, 2, 3]);
    sim.ack(2);
    assert_eq!(sim.spooled(), [3, 4]);
}

#[test]
fn heartbeats_are_due_at_each_interval_and_not_before() {
    let mut sim = Sim::new(MemSpool::default(), config(8), roomy(8));
    let interval = sim.config.heartbeat_interval;
    assert_eq!(sim.session.poll_timeout(), Some(sim.start + interval));
    sim.at(interval - Duration::from_nanos(1));
    assert!(sim.heartbeats.is_empty());
    assert_eq!(sim.jump(), interval);
    assert_eq!(sim.heartbeats, [interval]);
    assert_eq!(sim.session.poll_timeout(), Some(sim.start + 2 * interval));
    // A late wake-up counts the next interval from when the heartbeat went.
    sim.at(2 * interval + ms(300));
    assert_eq!(sim.heartbeats, [interval, 2 * interval + ms(300)]);
    assert_eq!(
        sim.session.poll_timeout(),
        Some(sim.start + 3 * interval + ms(300))
    );
}

#[test]
fn new_data_is_fetched_once_the_spool_had_nothing() {
    let mut sim = Sim::new(MemSpool::default(), config(8), roomy(8));
    assert!(sim.session.wants_new_data());
    assert!(sim.sent.is_empty());
    let seq = sim.append(3);
    assert_eq!(sim.sent_seqs(0), [seq]);
}

#[test]
fn shutdown_waits_for_the_acks_in_flight_within_the_grace_period() {
    let mut sim = Sim::new(MemSpool::with(&[1; 5]), config(3), roomy(8));
    sim.shutdown();
    assert_eq!(sim.events, [SessionEvent::Draining { in_flight: 3 }]);
    assert_eq!(
        sim.session.poll_timeout(),
        Some(sim.start + sim.config.shutdown_grace)
    );
    sim.ack(1);
    sim.append(1);
    assert_eq!(
        sim.sent_seqs(0),
        [1, 2, 3],
        "nothing new is sent while draining"
    );
    sim.at(ms(4_999));
    assert!(sim.heartbeats.is_empty() && sim.end.is_none());
    sim.ack(3);
    sim.ack(2);
    assert!(matches!(sim.end, Some(Ok(()))));
    assert_eq!(
        sim.closed,
        Some((close_code::NORMAL, "agent shutting down"))
    );
    assert_eq!(sim.spool.acked, [1, 3, 2]);
    assert_eq!(sim.spooled(), [4, 5, 6]);
    assert_eq!(sim.session.poll_timeout(), None);
}

#[test]
fn shutdown_with_nothing_in_flight_ends_at_once() {
    let mut sim = Sim::new(MemSpool::default(), config(3), roomy(8));
    sim.shutdown();
    assert!(matches!(sim.end, Some(Ok(()))));
    assert_eq!(sim.log[sim.log.len() - 2..], ["close", "done"]);
}

#[test]
fn when_the_grace_period_ends_unacknowledged_batches_stay_in_the_spool() {
    let mut sim = Sim::new(MemSpool::with(&[1; 5]), config(3), roomy(8));
    sim.at(ms(1_000));
    sim.shutdown();
    sim.ack(2);
    assert_eq!(sim.jump(), ms(6_000));
    assert_eq!(
        sim.events[1..],
        [
            SessionEvent::Acked {
                seq: 2,
                events: 1,
                rtt: ms(1_000),
                duplicate: false
            },
            SessionEvent::GraceExpired { in_flight: 2 }
        ]
    );
    assert!(matches!(sim.end, Some(Ok(()))));
    assert_eq!(
        sim.closed,
        Some((close_code::NORMAL, "agent shutting down"))
    );
    assert_eq!(sim.spool.acked, [2]);
    assert_eq!(sim.spooled(), [1, 3, 4, 5]);
    // A late answer changes nothing.
    sim.session.handle_ack(sim.now, 1, false);
    assert!(sim.session.poll_action().is_none());
}

#[test]
fn pacing_holds_sends_to_the_configured_rate() {
    // 100 events a second with a burst of 100: two 50-event batches at once, then one every
    // half second.
    let mut sim = Sim::paced(MemSpool::with(&[50; 6]), config(8), roomy(8), |start| {
        Pacer::new(start, 100, 100)
    });
    assert_eq!(sim.sent_seqs(0), [1, 2]);
    assert_eq!(sim.session.poll_timeout(), Some(sim.start + ms(500)));
    sim.at(ms(499));
    assert_eq!(sim.sent.len(), 2, "not before it is due");
    for _ in 0..4 {
        sim.jump();
    }
    let times: Vec<Duration> = sim.sent.iter().map(|&(t, _, _)| t).collect();
    assert_eq!(
        times,
        [ms(0), ms(0), ms(500), ms(1_000), ms(1_500), ms(2_000)]
    );
    assert_eq!(sim.sent_seqs(0), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        sim.session.poll_timeout(),
        Some(sim.start + sim.config.heartbeat_interval)
    );
}

#[test]
fn the_pacer_keeps_its_budget_across_reconnects() {
    let mut sim = Sim::paced(MemSpool::with(&[100; 3]), config(8), roomy(8), |start| {
        Pacer::new(start, 100, 100)
    });
    assert_eq!(sim.sent_seqs(0), [1]);
    sim.lose_connection();
    sim.reconnect();
    assert_eq!(sim.sent_seqs(0), [1], "no fresh burst after a reconnect");
    assert_eq!(sim.jump(), ms(1_000));
    assert_eq!(sim.sent_seqs(0), [1, 1]);
}

#[test]
fn a_batch_larger_than_the_burst_goes_unpaced() {
    let pacer = Pacer::new(Instant::now(), 10, 10);
    let now = Instant::now();
    assert_eq!(pacer.check(now, 11), Ok(()));
    assert_eq!(pacer.check(now, 10), Ok(()));
    assert!(pacer.check(now, 10).is_err());
    assert_eq!(Pacer::unlimited().check(now, u32::MAX), Ok(()));
}

#[test]
fn the_frame_overhead_covers_the_largest_batch_header() {
    let payload = [7u8; 10];
    for (seq, low_water, created_ns) in [
        (u64::MAX, u64::MAX, i64::MIN),
        (u64::MAX, u64::MAX, i64::MAX),
        (1, 1, 0),
    ] {
        let frame = wire::encode_batch_frame(seq, low_water, created_ns, &payload).unwrap();
        let packed = wire::encode_packed_batch_frame(
            seq,
            low_water,
            created_ns,
            wire::Codec::Zstd,
            u32::MAX,
            &payload,
        )
        .unwrap();
        for frame in [frame, packed] {
            assert!(
                frame.len() - payload.len() <= BATCH_FRAME_OVERHEAD_BYTES,
                "{} bytes of overhead",
                frame.len() - payload.len()
            );
        }
    }
}

#[test]
fn receiver_limits_admit_only_batches_whose_frame_fits() {
    let limits = ReceiverLimits::from_welcome(&welcome(8, 100, 64 * 1024));
    let max_payload = 64 * 1024 - BATCH_FRAME_OVERHEAD_BYTES;
    assert_eq!(limits.max_payload_bytes, max_payload);
    let batch = |events, bytes| StoredBatch {
        payload: vec![0; bytes],
        raw_bytes: bytes,
        ..stored(1, events)
    };
    assert!(limits.admit(&batch(100, max_payload)));
    assert!(!limits.admit(&batch(101, 10)));
    assert!(!limits.admit(&batch(1, max_payload + 1)));
    // A compressed batch is judged by its size before compression, what the aggregator decodes.
    let packed = |raw_bytes| StoredBatch {
        payload: vec![0; 10],
        codec: wire::Codec::Zstd,
        raw_bytes,
        ..stored(1, 100)
    };
    assert!(limits.admit(&packed(max_payload)));
    assert!(!limits.admit(&packed(max_payload + 1)));

    let zero = ReceiverLimits::from_welcome(&welcome(8, 0, 10));
    assert_eq!((zero.max_events, zero.max_payload_bytes), (1, 0));
    assert!(!zero.admit(&batch(1, 1)));
}

/// One step of the random delivery interleavings.
#[derive(Debug, Clone)]
enum Step {
    /// The peer acknowledges its `n`-th outstanding batch (modulo how many it holds).
    Ack(usize),
    /// The peer repeats an answer for a batch already answered.
    RepeatAck(usize),
    RejectFinal(usize),
    RejectRetryable(usize),
    /// A batch of this many events is spooled.
    Append(u32),
    /// Time passes.
    Wait(u64),
    LoseConnection,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => any::<usize>().prop_map(Step::Ack),
        1 => any::<usize>().prop_map(Step::RepeatAck),
        1 => any::<usize>().prop_map(Step::RejectFinal),
        1 => any::<usize>().prop_map(Step::RejectRetryable),
        3 => (1u32..30).prop_map(Step::Append),
        2 => (0u64..1_500).prop_map(Step::Wait),
        1 => Just(Step::LoseConnection),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the interleaving: never more than the window in flight, nothing acknowledged
    /// twice, and at the end every batch fetched was acknowledged, dropped, split, or is still in
    /// the spool.
    #[test]
    fn delivery_keeps_its_invariants(
        initial in proptest::collection::vec(1u32..30, 0..12),
        steps in proptest::collection::vec(step(), 1..80),
        agent_window in 1u32..6,
        aggregator_window in 0u32..6,
        max_batch_events in 5u32..40,
        rate in prop_oneof![Just(0u32), 20u32..200],
    ) {
        let mut sim = Sim::paced(
            MemSpool::with(&initial),
            config(agent_window),
            welcome(aggregator_window, max_batch_events, 1 << 20),
            |start| Pacer::new(start, rate, 30),
        );
        let mut answered: Vec<u64> = Vec::new();
        for step in steps {
            let pick = |n: usize, of: &[u64]| of[n % of.len()];
            match step {
                Step::Ack(n) if !sim.peer.is_empty() => {
                    let seq = pick(n, &sim.peer);
                    sim.ack(seq);
                    answered.push(seq);
                }
                Step::RepeatAck(n) if !answered.is_empty() => {
                    let seq = pick(n, &answered);
                    sim.session.handle_ack(sim.now, seq, true);
                    sim.drive();
                }
                Step::RejectFinal(n) if !sim.peer.is_empty() => {
                    let seq = pick(n, &sim.peer);
                    sim.reject(seq, RejectCode::Invalid);
                    answered.push(seq);
                }
                Step::RejectRetryable(n) if !sim.peer.is_empty() => {
                    let seq = pick(n, &sim.peer);
                    sim.reject(seq, RejectCode::Unavailable);
                }
                Step::Append(events) => {
                    sim.append(events);
                }
                Step::Wait(millis) => {
                    let to = sim.now - sim.start + ms(millis);
                    sim.at(to);
                }
                Step::LoseConnection => sim.lose_connection(),
                _ => {}
            }
            prop_assert!(sim.session.in_flight() <= sim.session.limit());
            prop_assert!(sim.peer.len() <= sim.session.limit());
            if sim.end.is_some() {
                sim.reconnect();
            }
            prop_assert_eq!(sim.session.limit(), agent_window.min(aggregator_window).max(1) as usize);
        }
        sim.shutdown();
        while sim.end.is_none() {
            sim.jump();
        }

        let acked: BTreeSet<u64> = sim.spool.acked.iter().copied().collect();
        prop_assert_eq!(acked.len(), sim.spool.acked.len(), "acknowledged twice");
        for seq in &sim.fetched {
            let fates = [
                acked.contains(seq),
                sim.spool.dropped.contains(seq),
                sim.spool.split.contains_key(seq),
                sim.spool.batches.contains_key(seq),
            ];
            prop_assert_eq!(fates.iter().filter(|&&f| f).count(), 1, "batch {}: {:?}", seq, fates);
        }
        for &(_, _, events) in &sim.sent {
            prop_assert!(events <= max_batch_events);
        }
    }
}
