//! Deciding what one append does, without touching the database.
//!
//! The cap policy lives here as plain logic over the spool's in-memory bookkeeping: which
//! submissions are accepted, refused or left waiting, which batches are evicted to make room, how
//! accepted events are packed into batches, and which drops are counted. [`super::Spool::append`]
//! then carries the [`Plan`] out in one transaction, so a failed write leaves this bookkeeping
//! untouched. [`repack`] is the same packing for one stored batch that [`super::Spool::split_batch`]
//! cuts to smaller limits.

use std::collections::BTreeMap;

use outpost_common::event::{DropCounters, DropReason};
use outpost_common::wire;

use super::{Checkpoint, Class, StateChange, Submission, SubmitOutcome};

/// The largest batch to pack: both limits hold for every batch, and an event whose encoding alone
/// exceeds `bytes` cannot go in any batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchLimits {
    /// At least 1, at most `u32::MAX`.
    pub events: usize,
    pub bytes: usize,
}

/// The size of one stored batch, as the spool accounts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchSize {
    /// Bytes of the batch's payload.
    pub bytes: u64,
    pub events: u64,
}

/// The Drop-class batches that may still be evicted: written since the spool was opened and never
/// handed out by `batches_after`, so the aggregator cannot have them. Oldest first.
#[derive(Debug, Default)]
pub(super) struct Evictable {
    by_seq: BTreeMap<u64, BatchSize>,
    bytes: u64,
}

impl Evictable {
    pub(super) fn insert(&mut self, seq: u64, size: BatchSize) {
        if let Some(old) = self.by_seq.insert(seq, size) {
            self.bytes -= old.bytes;
        }
        self.bytes += size.bytes;
    }

    pub(super) fn remove(&mut self, seq: u64) {
        if let Some(old) = self.by_seq.remove(&seq) {
            self.bytes -= old.bytes;
        }
    }

    /// Payload bytes that evicting every candidate would free.
    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn oldest_first(&self) -> impl Iterator<Item = (u64, BatchSize)> + '_ {
        self.by_seq.iter().map(|(&seq, &size)| (seq, size))
    }

    pub(super) fn contains(&self, seq: u64) -> bool {
        self.by_seq.contains_key(&seq)
    }
}

/// A submission with each of its events encoded; its `sub` keeps no events.
#[derive(Debug, Clone)]
pub(super) struct SizedSubmission {
    pub sub: Submission,
    /// The events of `sub`, each encoded on its own ([`wire::encode_event_into`]), back to back.
    pub encoded: Vec<u8>,
    /// `sizes[i]` is the encoded size of `sub.events[i]` as a one-event list: its bytes in
    /// `encoded` plus [`wire::ONE_EVENT_LIST_PREFIX`], an upper bound of what it adds to a batch
    /// payload.
    pub sizes: Vec<usize>,
}

impl SizedSubmission {
    /// How many events it holds.
    pub fn events(&self) -> usize {
        self.sizes.len()
    }
}

/// The bytes of each event in `encoded`, given the events' `sizes` as one-event lists.
fn each_event<'a>(
    encoded: &'a [u8],
    sizes: &'a [usize],
) -> impl Iterator<Item = (&'a [u8], usize)> + 'a {
    sizes.iter().scan(0, move |at: &mut usize, &size| {
        let start = *at;
        *at += size - wire::ONE_EVENT_LIST_PREFIX;
        Some((&encoded[start..*at], size))
    })
}

/// The byte cap an append plans against, and what sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cap {
    pub bytes: u64,
    /// The disk's free space sets it, not the configuration: what it evicts or refuses is
    /// counted as [`DropReason::DiskFull`], and a Wait-class submission may not exceed it even
    /// into an empty spool.
    pub disk: bool,
}

/// What the spool holds when planning starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Holding<'a> {
    pub payload_bytes: u64,
    pub batches: u64,
    pub evictable: &'a Evictable,
}

/// The fate of one submission.
#[derive(Debug)]
pub(super) enum Decision {
    /// Settled; the outcome holds once the plan is committed.
    Done(SubmitOutcome),
    /// A Wait-class submission that does not fit, handed back untouched so it can be retried.
    Full(SizedSubmission),
}

impl Decision {
    pub(super) fn into_outcome(self) -> SubmitOutcome {
        match self {
            Decision::Done(outcome) => outcome,
            Decision::Full(_) => SubmitOutcome::Full,
        }
    }
}

/// A batch to be written, in seq order.
#[derive(Debug)]
pub(super) struct PlannedBatch {
    pub class: Class,
    /// How many events `body` holds.
    pub events: usize,
    /// The events, each encoded on its own, back to back: [`wire::events_payload`] makes the
    /// batch's payload of them.
    pub body: Vec<u8>,
}

/// Everything one append changes.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// One per submission, in order.
    pub decisions: Vec<Decision>,
    /// Seqs of the batches to evict, oldest first.
    pub evict: Vec<u64>,
    /// The sum of the evicted batches' sizes.
    pub evicted: BatchSizeSum,
    pub batches: Vec<PlannedBatch>,
    /// Checkpoints to upsert, in submission order (a later one for the same source wins).
    pub checkpoints: Vec<Checkpoint>,
    /// State changes to apply, in submission order.
    pub state: Vec<StateChange>,
    /// Drops this append adds to the counters.
    pub drops: DropCounters,
    /// The cap held something back: a Wait-class submission waits, or Drop-class data was
    /// evicted or refused.
    pub squeezed: bool,
}

/// A running total of batch sizes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchSizeSum {
    pub batches: u64,
    pub bytes: u64,
    pub events: u64,
}

impl BatchSizeSum {
    fn add(&mut self, size: BatchSize) {
        self.batches += 1;
        self.bytes += size.bytes;
        self.events += size.events;
    }
}

impl Plan {
    /// True when carrying the plan out would change nothing on disk.
    pub(super) fn writes_nothing(&self) -> bool {
        self.evict.is_empty()
            && self.batches.is_empty()
            && self.checkpoints.is_empty()
            && self.state.is_empty()
            && self.drops.total() == 0
    }
}

/// Decides the fate of `subs`, in order, against the spool's current holding, packing batches
/// within `limits` and keeping the payload bytes under `cap`.
///
/// The byte cap is checked against the sum of the events' individual encoded sizes, which is never
/// smaller than the payload they end up in, so a committed plan keeps the payload bytes under
/// `cap` (except for the progress guarantee: a Wait-class submission into an empty spool, unless
/// the disk sets the cap).
/// Batches written by this same plan are not eviction candidates for its later submissions.
pub(super) fn plan(
    cap: Cap,
    limits: BatchLimits,
    holding: Holding<'_>,
    subs: Vec<SizedSubmission>,
) -> Plan {
    let mut planner = Planner {
        cap,
        limits,
        bytes: holding.payload_bytes,
        batches: holding.batches,
        planned_events: 0,
        evictable_bytes: holding.evictable.bytes(),
        candidates: holding.evictable.oldest_first(),
        open: Vec::new(),
        plan: Plan::default(),
    };
    for sized in subs {
        planner.decide(sized);
    }
    planner.finish()
}

/// The events of one stored batch, packed again.
#[derive(Debug)]
pub(super) struct Repacked {
    /// In the order of the events they hold; never empty.
    pub batches: Vec<PlannedBatch>,
    /// Events left out because their encoding alone exceeds the byte limit.
    pub oversized: u64,
}

/// Packs events (of one `class`, `encoded` one by one with their `sizes` as in
/// [`SizedSubmission`]) into batches within `limits`, keeping their order, exactly as an append
/// would have packed them under those limits.
pub(super) fn repack(
    class: Class,
    encoded: &[u8],
    sizes: &[usize],
    limits: BatchLimits,
) -> Repacked {
    let mut batches = Vec::new();
    let mut open = OpenBatch::new(class);
    let mut oversized = 0;
    for (event, size) in each_event(encoded, sizes) {
        if size > limits.bytes {
            oversized += 1;
            continue;
        }
        if !open.takes(size, limits) {
            batches.push(std::mem::replace(&mut open, OpenBatch::new(class)).seal());
        }
        open.push(event, size);
    }
    if open.events > 0 {
        batches.push(open.seal());
    }
    Repacked { batches, oversized }
}

struct Planner<I> {
    cap: Cap,
    limits: BatchLimits,
    /// Payload bytes held: stored, less evicted, plus the estimates of accepted events.
    bytes: u64,
    /// Stored batches, less evicted.
    batches: u64,
    planned_events: u64,
    /// Bytes the remaining candidates would free.
    evictable_bytes: u64,
    candidates: I,
    /// Batches still taking events, in the order they were opened; at most one per class.
    open: Vec<OpenBatch>,
    plan: Plan,
}

struct OpenBatch {
    class: Class,
    events: usize,
    body: Vec<u8>,
    /// Sum of the events' individual sizes.
    bytes: usize,
}

impl OpenBatch {
    fn new(class: Class) -> OpenBatch {
        OpenBatch {
            class,
            events: 0,
            body: Vec::new(),
            bytes: 0,
        }
    }

    /// Whether an event of `size` encoded bytes still fits; an empty batch takes any event within
    /// the byte limit.
    fn takes(&self, size: usize, limits: BatchLimits) -> bool {
        self.events < limits.events && self.bytes + size <= limits.bytes
    }

    fn push(&mut self, event: &[u8], size: usize) {
        self.events += 1;
        self.body.extend_from_slice(event);
        self.bytes += size;
    }

    fn seal(self) -> PlannedBatch {
        PlannedBatch {
            class: self.class,
            events: self.events,
            body: self.body,
        }
    }
}

impl<I: Iterator<Item = (u64, BatchSize)>> Planner<I> {
    fn decide(&mut self, sized: SizedSubmission) {
        let max_event = self.limits.bytes;
        let kept = sized.sizes.iter().filter(|&&s| s <= max_event).count() as u64;
        let oversized = sized.sizes.len() as u64 - kept;
        let needed: u64 = sized
            .sizes
            .iter()
            .filter(|&&s| s <= max_event)
            .map(|&s| s as u64)
            .sum();
        let fits = needed == 0 || self.bytes.saturating_add(needed) <= self.cap.bytes;
        let spool_empty = self.batches == 0 && self.planned_events == 0;
        if !fits {
            self.plan.squeezed = true;
        }
        let accept = match sized.sub.class {
            _ if fits => true,
            Class::Wait if spool_empty && !self.cap.disk => true,
            Class::Wait => {
                self.plan.decisions.push(Decision::Full(sized));
                return;
            }
            Class::Drop => self.make_room(needed),
        };
        self.plan.drops.add(DropReason::Oversized, oversized);
        let SizedSubmission {
            sub,
            encoded,
            sizes,
        } = sized;
        self.plan.checkpoints.extend(sub.checkpoints);
        self.plan.state.extend(sub.state);
        let outcome = if accept {
            for (event, size) in each_event(&encoded, &sizes) {
                if size <= max_event {
                    self.push(sub.class, event, size);
                }
            }
            self.bytes += needed;
            self.planned_events += kept;
            SubmitOutcome::Committed { events: kept }
        } else {
            let reason = if self.cap.disk {
                DropReason::DiskFull
            } else {
                DropReason::SpoolFullRejected
            };
            self.plan.drops.add(reason, kept);
            SubmitOutcome::Rejected { events: kept }
        };
        self.plan.decisions.push(Decision::Done(outcome));
    }

    /// Evicts the oldest candidates until `needed` more bytes fit, if evicting can achieve that at
    /// all; otherwise evicts nothing, since losing old data would not save the new.
    fn make_room(&mut self, needed: u64) -> bool {
        let max = self.cap.bytes;
        let reason = if self.cap.disk {
            DropReason::DiskFull
        } else {
            DropReason::SpoolFullEvicted
        };
        if (self.bytes.saturating_sub(self.evictable_bytes)).saturating_add(needed) > max {
            return false;
        }
        while self.bytes.saturating_add(needed) > max {
            // The check above guarantees the remaining candidates free enough bytes.
            let Some((seq, size)) = self.candidates.next() else {
                return false;
            };
            self.plan.evict.push(seq);
            self.plan.evicted.add(size);
            self.plan.drops.add(reason, size.events);
            self.bytes -= size.bytes;
            self.evictable_bytes -= size.bytes;
            self.batches -= 1;
        }
        true
    }

    fn push(&mut self, class: Class, event: &[u8], size: usize) {
        let at = match self.open.iter().position(|b| b.class == class) {
            Some(at) if self.open[at].takes(size, self.limits) => at,
            found => {
                if let Some(at) = found {
                    let full = self.open.remove(at);
                    self.plan.batches.push(full.seal());
                }
                self.open.push(OpenBatch::new(class));
                self.open.len() - 1
            }
        };
        self.open[at].push(event, size);
    }

    fn finish(mut self) -> Plan {
        for batch in std::mem::take(&mut self.open) {
            self.plan.batches.push(batch.seal());
        }
        self.plan
    }
}
