//! A simulated agent's spool, in memory, with the SQLite spool's delivery contract.
//!
//! What the shipper relies on holds here as it does on disk ([`Backlog`]): seqs strictly
//! increase and are never reused; a batch stays until acknowledged or dropped, so every session
//! sends the unacknowledged ones again; batches are packed within the limits the aggregator's
//! Welcome sets, encoded and compressed (zstd, the agent's default) exactly as the agent encodes
//! them. What it leaves out is the disk: nothing survives the simulator's own process, and one
//! submission makes its own batches (the agent's writer may also pack submissions that arrive
//! together into one batch).
//!
//! It also keeps what the loss check and the report need: how many events of each kind were
//! accepted, acknowledged, dropped (counted, by kind) or are still held, and the time from
//! handing a batch to the shipper until its acknowledgement.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hdrhistogram::Histogram;
use outpost_agent::ship::Backlog;
use outpost_agent::spool::{SpoolError, SpoolStats, StoredBatch};
use outpost_common::event::{DropCounters, DropReason, Event};
use outpost_common::wire::{self, Codec, Packer};
use tokio::sync::watch;

/// Events of each kind the simulator makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub metrics: u64,
    pub logs: u64,
    pub fim: u64,
}

impl KindCounts {
    pub fn of(events: &[Event]) -> KindCounts {
        let mut c = KindCounts::default();
        for e in events {
            match e {
                Event::Metric(_) => c.metrics += 1,
                Event::Log(_) => c.logs += 1,
                Event::Fim(_) => c.fim += 1,
                _ => {}
            }
        }
        c
    }

    pub fn total(&self) -> u64 {
        self.metrics + self.logs + self.fim
    }

    pub fn add(&mut self, other: &KindCounts) {
        self.metrics += other.metrics;
        self.logs += other.logs;
        self.fim += other.fim;
    }
}

/// Acknowledgement latency of the whole simulated fleet: from handing a batch to the shipper
/// until the aggregator's acknowledgement reached the spool, in microseconds.
#[derive(Debug)]
pub struct AckLatency {
    histogram: Mutex<Histogram<u64>>,
}

/// The largest latency recorded: an hour, in microseconds.
const LATENCY_MAX_US: u64 = 3_600_000_000;

impl AckLatency {
    pub fn new() -> Arc<AckLatency> {
        Arc::new(AckLatency {
            histogram: Mutex::new(Self::empty()),
        })
    }

    fn empty() -> Histogram<u64> {
        // Constant, valid bounds: 1 µs to an hour, three significant digits.
        Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
            .unwrap_or_else(|e| panic!("histogram bounds: {e}"))
    }

    fn lock(&self) -> MutexGuard<'_, Histogram<u64>> {
        self.histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, micros: u64) {
        self.lock()
            .saturating_record(micros.clamp(1, LATENCY_MAX_US));
    }

    /// What was recorded since the last call, and starts again from nothing.
    pub fn take(&self) -> Histogram<u64> {
        std::mem::replace(&mut *self.lock(), Self::empty())
    }
}

/// One batch held until acknowledged.
#[derive(Debug)]
struct Held {
    batch: StoredBatch,
    counts: KindCounts,
    /// When the shipper last read it to send.
    sent: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    next_seq: u64,
    batches: BTreeMap<u64, Held>,
    max_events: usize,
    max_bytes: usize,
    cap_bytes: u64,
    payload_bytes: u64,
    events: u64,
    drops: DropCounters,
    accepted: KindCounts,
    acked: KindCounts,
    dropped: KindCounts,
}

/// The in-memory spool of one simulated agent.
#[derive(Debug)]
pub struct MemoryBacklog {
    spool_id: u64,
    inner: Mutex<Inner>,
    committed: watch::Sender<u64>,
    latency: Arc<AckLatency>,
}

thread_local! {
    /// One zstd context per thread, as the agent keeps one per spool.
    static PACKER: std::cell::RefCell<Option<Packer>> = const { std::cell::RefCell::new(None) };
}

/// `raw` compressed the way the agent's spool stores it, when that makes it smaller.
fn pack(raw: Vec<u8>) -> (Vec<u8>, Codec) {
    PACKER.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Packer::new(Codec::Zstd).ok();
        }
        match cell.as_mut().map(|p| p.pack(&raw)) {
            Some(Ok(Some(packed))) => (packed, Codec::Zstd),
            _ => (raw, Codec::None),
        }
    })
}

impl MemoryBacklog {
    /// An empty spool with a fresh random spool id, keeping at most `cap_bytes` of payload.
    pub fn new(cap_bytes: u64, latency: Arc<AckLatency>) -> MemoryBacklog {
        MemoryBacklog {
            spool_id: rand::random_range(1..=u64::MAX),
            inner: Mutex::new(Inner {
                next_seq: 1,
                batches: BTreeMap::new(),
                max_events: outpost_agent::spool::DEFAULT_MAX_BATCH_EVENTS,
                max_bytes: outpost_agent::spool::DEFAULT_MAX_BATCH_BYTES,
                cap_bytes,
                payload_bytes: 0,
                events: 0,
                drops: DropCounters::default(),
                accepted: KindCounts::default(),
                acked: KindCounts::default(),
                dropped: KindCounts::default(),
            }),
            committed: watch::Sender::new(0),
            latency,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one submission's events as batches within the current limits. When the spool is
    /// full the whole submission is refused and counted as dropped
    /// ([`DropReason::SpoolFullRejected`]), as the agent's spool refuses droppable data it
    /// cannot make room for.
    pub fn append(&self, events: Vec<Event>, created_ns: i64) {
        if events.is_empty() {
            return;
        }
        let counts = KindCounts::of(&events);
        let (max_events, max_bytes) = {
            let inner = self.lock();
            (inner.max_events, inner.max_bytes)
        };
        let encoded = pack_events(&events, max_events, max_bytes);
        let mut inner = self.lock();
        inner.accepted.add(&counts);
        let bytes: u64 = encoded.iter().map(|b| b.0.len() as u64).sum();
        if inner.payload_bytes + bytes > inner.cap_bytes {
            inner
                .drops
                .add(DropReason::SpoolFullRejected, counts.total());
            inner.dropped.add(&counts);
            return;
        }
        for packed in encoded {
            Self::insert(&mut inner, packed, created_ns);
        }
        let last = inner.next_seq - 1;
        drop(inner);
        self.committed.send_replace(last);
    }

    /// Adds one packed batch under the next seq; returns that seq.
    fn insert(inner: &mut Inner, packed: Packed, created_ns: i64) -> u64 {
        let (payload, codec, raw_bytes, (counts, events)) = packed;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.payload_bytes += payload.len() as u64;
        inner.events += u64::from(events);
        inner.batches.insert(
            seq,
            Held {
                batch: StoredBatch {
                    seq,
                    created_ns,
                    events,
                    low_water_seq: 0,
                    payload,
                    codec,
                    raw_bytes,
                },
                counts,
                sent: None,
            },
        );
        seq
    }

    fn remove(inner: &mut Inner, seq: u64) -> Option<Held> {
        let held = inner.batches.remove(&seq)?;
        inner.payload_bytes -= held.batch.payload.len() as u64;
        inner.events -= u64::from(held.batch.events);
        Some(held)
    }

    /// Events accepted, acknowledged, dropped (counted) and still held, by kind.
    pub fn tally(&self) -> Tally {
        let inner = self.lock();
        let mut held = KindCounts::default();
        for h in inner.batches.values() {
            held.add(&h.counts);
        }
        Tally {
            accepted: inner.accepted,
            acked: inner.acked,
            dropped: inner.dropped,
            held,
            held_batches: inner.batches.len() as u64,
        }
    }

    /// The creation time of the oldest batch not yet acknowledged.
    pub fn oldest_ns(&self) -> Option<i64> {
        self.lock()
            .batches
            .values()
            .next()
            .map(|h| h.batch.created_ns)
    }
}

/// [`MemoryBacklog::tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub accepted: KindCounts,
    pub acked: KindCounts,
    pub dropped: KindCounts,
    pub held: KindCounts,
    pub held_batches: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.accepted.add(&other.accepted);
        self.acked.add(&other.acked);
        self.dropped.add(&other.dropped);
        self.held.add(&other.held);
        self.held_batches += other.held_batches;
    }
}

/// A packed batch: payload, codec, payload length before compression, and its (kinds, events).
type Packed = (Vec<u8>, Codec, usize, (KindCounts, u32));

/// `events` cut into batches of at most `max_events` events and about `max_bytes` bytes,
/// encoded as the agent's spool encodes them.
fn pack_events(events: &[Event], max_events: usize, max_bytes: usize) -> Vec<Packed> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = (start + max_events.max(1)).min(events.len());
        let raw = loop {
            // Encoding plain events into memory cannot fail.
            let raw = wire::encode_events(&events[start..end]).unwrap_or_default();
            if raw.len() <= max_bytes || end - start == 1 {
                break raw;
            }
            end = start + (end - start).div_ceil(2);
        };
        let raw_bytes = raw.len();
        let (payload, codec) = pack(raw);
        let chunk = &events[start..end];
        // At most `max_events`, which the limits keep within u32.
        let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        out.push((payload, codec, raw_bytes, (KindCounts::of(chunk), n)));
        start = end;
    }
    out
}

impl Backlog for MemoryBacklog {
    async fn available(&self) -> Result<(), SpoolError> {
        Ok(())
    }

    fn stats(&self) -> SpoolStats {
        let inner = self.lock();
        let low_water_seq = inner
            .batches
            .keys()
            .next()
            .copied()
            .unwrap_or(inner.next_seq);
        SpoolStats {
            spool_id: self.spool_id,
            payload_bytes: inner.payload_bytes,
            file_bytes: 0,
            events: inner.events,
            batches: inner.batches.len() as u64,
            cap_bytes: inner.cap_bytes,
            drops: inner.drops.clone(),
            low_water_seq,
            next_seq: inner.next_seq,
            trouble: None,
        }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        let mut rx = self.committed.subscribe();
        rx.mark_unchanged();
        rx
    }

    async fn set_batch_limits(
        &self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        inner.max_events = max_events.clamp(1, u32::MAX as usize);
        inner.max_bytes = max_bytes;
        Ok(())
    }

    async fn batches_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredBatch>, SpoolError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let low_water_seq = inner
            .batches
            .keys()
            .next()
            .copied()
            .unwrap_or(inner.next_seq);
        Ok(inner
            .batches
            .range_mut(after_seq.saturating_add(1)..)
            .take(limit)
            .map(|(_, held)| {
                held.sent = Some(now);
                StoredBatch {
                    low_water_seq,
                    ..held.batch.clone()
                }
            })
            .collect())
    }

    async fn ack(&self, seqs: Vec<u64>) -> Result<(), SpoolError> {
        let now = Instant::now();
        let mut inner = self.lock();
        for seq in seqs {
            if let Some(held) = Self::remove(&mut inner, seq) {
                inner.acked.add(&held.counts);
                if let Some(sent) = held.sent {
                    let us =
                        u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    self.latency.record(us);
                }
            }
        }
        Ok(())
    }

    async fn drop_batch(&self, seq: u64, reason: DropReason) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        if let Some(held) = Self::remove(&mut inner, seq) {
            inner.drops.add(reason, u64::from(held.batch.events));
            inner.dropped.add(&held.counts);
        }
        Ok(())
    }

    async fn split_batch(
        &self,
        seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<u64>, SpoolError> {
        let mut inner = self.lock();
        let Some(held) = Self::remove(&mut inner, seq) else {
            return Ok(Vec::new());
        };
        let events = held.batch.events().map_err(|e| SpoolError::Encode {
            path: "memory".into(),
            source: Arc::new(e),
        })?;
        let seqs: Vec<u64> = pack_events(&events, max_events, max_bytes)
            .into_iter()
            .map(|packed| Self::insert(&mut inner, packed, held.batch.created_ns))
            .collect();
        let last = inner.next_seq - 1;
        drop(inner);
        self.committed.send_replace(last);
        Ok(seqs)
    }
}

#[cfg(test)]
mod tests {
    use outpost_common::event::{LogRecord, Severity};

    use super::*;

    fn log(n: u64) -> Event {
        Event::Log(LogRecord {
            time_ns: 1,
            source: "sim".to_owned(),
            severity: Some(Severity::Info),
            body: format!("line {n} of a simulated host's log, long enough to compress a little"),
            attributes: vec![("sim.seq".to_owned(), n.to_string())],
        })
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
            .block_on(f)
    }

    #[test]
    fn batches_stay_until_acknowledged_and_come_back_in_order() {
        block_on(async {
            let b = MemoryBacklog::new(1 << 20, AckLatency::new());
            let mut seen = b.subscribe();
            b.append((0..5).map(log).collect(), 10);
            b.append((5..8).map(log).collect(), 20);
            assert!(seen.has_changed().unwrap_or(false), "the shipper is told");
            assert_eq!(*seen.borrow_and_update(), 2);
            let first = b.batches_after(0, 10).await.unwrap_or_default();
            assert_eq!(first.iter().map(|x| x.seq).collect::<Vec<_>>(), [1, 2]);
            assert_eq!(first[0].events().unwrap_or_default().len(), 5);
            b.ack(vec![1]).await.unwrap_or(());
            // The next session starts from 0 and gets what is left, with the low-water mark.
            let again = b.batches_after(0, 10).await.unwrap_or_default();
            assert_eq!(again.iter().map(|x| x.seq).collect::<Vec<_>>(), [2]);
            assert_eq!(again[0].low_water_seq, 2);
            let t = b.tally();
            assert_eq!((t.accepted.logs, t.acked.logs, t.held.logs), (8, 5, 3));
            assert_eq!(b.stats().next_seq, 3);
        });
    }

    #[test]
    fn limits_split_batches_and_seqs_are_never_reused() {
        block_on(async {
            let b = MemoryBacklog::new(1 << 20, AckLatency::new());
            b.set_batch_limits(2, 1 << 20).await.unwrap_or(());
            b.append((0..5).map(log).collect(), 1);
            let all = b.batches_after(0, 10).await.unwrap_or_default();
            assert_eq!(all.iter().map(|x| x.events).collect::<Vec<_>>(), [2, 2, 1]);
            let new = b.split_batch(1, 1, 1 << 20).await.unwrap_or_default();
            assert_eq!(new, [4, 5]);
            let after = b.batches_after(0, 10).await.unwrap_or_default();
            assert_eq!(
                after.iter().map(|x| x.seq).collect::<Vec<_>>(),
                [2, 3, 4, 5]
            );
            assert_eq!(b.tally().held.logs, 5, "a split keeps every event");
        });
    }

    #[test]
    fn a_full_spool_refuses_and_counts_and_a_drop_is_counted() {
        block_on(async {
            let b = MemoryBacklog::new(1, AckLatency::new());
            b.append((0..3).map(log).collect(), 1);
            let t = b.tally();
            assert_eq!((t.accepted.logs, t.dropped.logs, t.held_batches), (3, 3, 0));
            assert_eq!(b.stats().drops.get(DropReason::SpoolFullRejected), 3);

            let b = MemoryBacklog::new(1 << 20, AckLatency::new());
            b.append((0..3).map(log).collect(), 1);
            b.drop_batch(1, DropReason::RejectedByAggregator)
                .await
                .unwrap_or(());
            assert_eq!(b.tally().dropped.logs, 3);
            assert_eq!(b.stats().drops.get(DropReason::RejectedByAggregator), 3);
        });
    }

    #[test]
    fn acknowledgements_are_timed_from_the_send() {
        block_on(async {
            let latency = AckLatency::new();
            let b = MemoryBacklog::new(1 << 20, latency.clone());
            b.append(vec![log(0)], 1);
            b.append(vec![log(1)], 1);
            let _ = b.batches_after(0, 1).await;
            b.ack(vec![1, 2]).await.unwrap_or(());
            // Only the batch that was sent has a latency.
            assert_eq!(latency.take().len(), 1);
            assert_eq!(latency.take().len(), 0, "take starts again");
        });
    }
}
