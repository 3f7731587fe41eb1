//! The tamper-evident trail of each agent's file-integrity events, checked as events arrive and
//! walked again on demand, free of any backend.
//!
//! An agent numbers its FIM events from 1 without gaps (`seq`) and chains each to the one before
//! (`chain`, see [`chain_hash`]). The store keeps a [`Trail`] per agent and hands it every new
//! event with [`Trail::receive`], then, after each of the agent's batches, the spool's low-water
//! mark with [`Trail::settle`]. A [`Break`] is recorded and reported, never a reason to drop the
//! event: the event is stored all the same.
//!
//! Batches of one agent can be stored out of order (several are in flight at once, and a batch
//! sent again after a reconnect can arrive after later ones), so an event that arrives ahead of
//! its place is held, not taken for a gap. It is checked once the events before it arrive, or
//! reported as a gap once the agent's low-water mark shows they never will: the mark is the
//! oldest batch the agent still holds, so every batch below it was acknowledged, and so stored,
//! before the batch carrying the mark was sent.
//!
//! [`verify`] walks a stored trail again, recomputing every chain, to find events altered or
//! removed after they were stored.

use std::collections::BTreeMap;
use std::fmt;

use outpost_common::event::{CHAIN_GENESIS, Event, FimEvent, LogRecord, Severity, chain_hash};

/// The `source` of the log record the store adds for every break, so log rules can alert on it.
pub const NOTICE_SOURCE: &str = "outpost.fim.trail";

/// At most this many events are held ahead of an agent's trail; past it the oldest held event is
/// reported as a gap at once, so an agent that sends only events far ahead cannot make the store
/// hold them without bound.
pub const MAX_AHEAD: usize = 4096;

/// Where an agent's trail stands: the last event in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub chain: String,
}

impl Position {
    fn of(event: &FimEvent) -> Position {
        Position {
            seq: event.seq,
            chain: event.chain.clone(),
        }
    }
}

/// Where an event was stored: the id of its row and the batch that brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The store's id of the event's row.
    pub row: i64,
    pub spool_id: u64,
    pub batch_seq: u64,
}

/// An event received ahead of its place, waiting for the events before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub arrival: Arrival,
    pub event: FimEvent,
}

/// A break found, with the row of the event that showed it and that event's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub row: i64,
    pub path: String,
    pub brk: Break,
}

/// One agent's trail: its end and the events held ahead of it, by `seq`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trail {
    /// The last event in its place; `None` before the first.
    pub end: Option<Position>,
    pub ahead: BTreeMap<u64, Held>,
    /// The spool, batch and `seq` of the last event received (not stored: a batch is received
    /// within one commit).
    pub last_received: Option<(u64, u64, u64)>,
}

impl Trail {
    /// Whether [`Trail::receive`] needs to know if a copy of `event` is stored already: only
    /// for an event at or before the trail's end.
    pub fn needs_lookup(&self, event: &FimEvent) -> bool {
        event.seq <= self.end_seq()
    }

    fn end_seq(&self) -> u64 {
        self.end.as_ref().map_or(0, |p| p.seq)
    }

    /// Receives an event stored at `arrival`; answers the breaks found, at it or at held events
    /// it let into their places. `stored_before` says whether an event of the agent with the
    /// same `seq` and `chain` is stored already (see [`Trail::needs_lookup`]).
    ///
    /// Each break is reported once and the trail goes on: after an edit the next event is
    /// expected to chain to the edited one's own `chain` (the agent chained it so), after a reset
    /// to follow the new trail. A replayed event leaves the trail where it was, since moving it
    /// back would report every event after it again.
    pub fn receive(
        &mut self,
        event: &FimEvent,
        arrival: Arrival,
        stored_before: bool,
    ) -> Vec<Found> {
        let mut found = self.check_batch_order(event, arrival);
        found.extend(self.take(event, arrival, stored_before));
        found
    }

    /// A reorder when `event` comes after a later one of its own batch.
    fn check_batch_order(&mut self, event: &FimEvent, a: Arrival) -> Vec<Found> {
        let previous = self
            .last_received
            .replace((a.spool_id, a.batch_seq, event.seq));
        match previous {
            Some((spool, batch, seq))
                if spool == a.spool_id && batch == a.batch_seq && event.seq < seq =>
            {
                vec![Found {
                    row: a.row,
                    path: event.path.clone(),
                    brk: Break {
                        kind: BreakKind::Reorder,
                        seq: event.seq,
                        expected_seq: seq.saturating_add(1),
                        detail: format!(
                            "event {} came after event {seq} in the same batch: the batch was \
                             rearranged on the way",
                            event.seq
                        ),
                    },
                }]
            }
            _ => Vec::new(),
        }
    }

    fn take(&mut self, event: &FimEvent, arrival: Arrival, stored_before: bool) -> Vec<Found> {
        let expected_seq = self.end_seq().saturating_add(1);
        let mut found = Vec::new();
        let mut report = |brk: Option<Break>| {
            found.extend(brk.map(|brk| Found {
                row: arrival.row,
                path: event.path.clone(),
                brk,
            }));
        };
        if event.seq > expected_seq {
            match self.ahead.get(&event.seq) {
                Some(held) => report(Some(replay(
                    event,
                    expected_seq,
                    if held.event.chain == event.chain {
                        "a copy of an event already received ahead of its place"
                    } else {
                        "not the event already received at that place"
                    },
                ))),
                None => {
                    self.ahead.insert(
                        event.seq,
                        Held {
                            arrival,
                            event: event.clone(),
                        },
                    );
                    if self.ahead.len() > MAX_AHEAD {
                        return self.fill_first_gap();
                    }
                }
            }
            return found;
        }
        report(check(self.end.as_ref(), event, stored_before));
        match found.first().map(|f| f.brk.kind) {
            Some(BreakKind::Replay) => return found,
            Some(BreakKind::Reset) => {
                // The events held ahead belonged to the wiped trail.
                self.ahead.clear();
            }
            _ => {}
        }
        self.end = Some(Position::of(event));
        found.extend(self.let_in());
        found
    }

    /// The agent's batches below `low_water` in spool `spool_id` are all stored: every event
    /// held ahead that came in a batch at or below it (or from another spool, which the agent
    /// no longer sends from) is past waiting for, and the events missing before it are reported
    /// as a gap.
    pub fn settle(&mut self, spool_id: u64, low_water: u64) -> Vec<Found> {
        let mut found = Vec::new();
        while let Some((_, held)) = self.ahead.first_key_value() {
            let a = held.arrival;
            if a.spool_id == spool_id && a.batch_seq > low_water {
                break;
            }
            found.extend(self.fill_first_gap());
        }
        found
    }

    /// Takes the first held event as the trail's next, reporting the events missing before it.
    fn fill_first_gap(&mut self) -> Vec<Found> {
        let Some((_, held)) = self.ahead.pop_first() else {
            return Vec::new();
        };
        let brk = check(self.end.as_ref(), &held.event, false);
        self.end = Some(Position::of(&held.event));
        let mut found: Vec<Found> = brk
            .map(|brk| Found {
                row: held.arrival.row,
                path: held.event.path,
                brk,
            })
            .into_iter()
            .collect();
        found.extend(self.let_in());
        found
    }

    /// Moves the trail through the held events that now follow its end.
    fn let_in(&mut self) -> Vec<Found> {
        let mut found = Vec::new();
        while let Some(held) = self.ahead.remove(&self.end_seq().saturating_add(1)) {
            if let Some(brk) = check(self.end.as_ref(), &held.event, false) {
                found.push(Found {
                    row: held.arrival.row,
                    path: held.event.path.clone(),
                    brk,
                });
            }
            self.end = Some(Position::of(&held.event));
        }
        found
    }
}

/// The critical log record a store adds after a batch's events for a break found in it, so log
/// rules and queries see the break as they see the agent's logs.
pub fn notice(agent_id: &str, b: &Break, path: &str, received_ns: i64) -> Event {
    Event::Log(LogRecord {
        time_ns: received_ns,
        source: NOTICE_SOURCE.to_owned(),
        severity: Some(Severity::Critical),
        body: format!(
            "file-integrity trail of agent {agent_id} broken at event {} ({path}): {}: {}",
            b.seq, b.kind, b.detail
        ),
        attributes: vec![
            ("kind".to_owned(), b.kind.as_str().to_owned()),
            ("seq".to_owned(), b.seq.to_string()),
            ("expected_seq".to_owned(), b.expected_seq.to_string()),
            ("path".to_owned(), path.to_owned()),
        ],
    })
}

/// Logs a break once the commit that stored its event holds (so a failed commit retried does
/// not log it twice).
pub fn log_break(agent_id: &str, found: &Found) {
    let b = &found.brk;
    tracing::warn!(
        agent_id,
        seq = b.seq,
        expected_seq = b.expected_seq,
        kind = %b.kind,
        path = found.path.as_str(),
        detail = %b.detail,
        "An agent's file-integrity trail is broken; the event is stored and the break recorded."
    );
}

/// How a trail broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakKind {
    /// Events are missing before this one: lost on the way, or deleted.
    Gap,
    /// The event's place lies at or before the trail's end: sent again, or out of order.
    Replay,
    /// The event is in its place but its chain does not match: it was altered.
    Edit,
    /// The trail started again at 1 after a longer one: the agent's state was wiped.
    Reset,
    /// The event came after a later one of the same batch: the agent writes a batch's events in
    /// order, so they were rearranged on the way. (Batches themselves may be stored in any
    /// order; that is no break.)
    Reorder,
}

impl BreakKind {
    /// Every kind.
    pub const ALL: [BreakKind; 5] = [
        BreakKind::Gap,
        BreakKind::Replay,
        BreakKind::Edit,
        BreakKind::Reset,
        BreakKind::Reorder,
    ];

    /// The lower-case name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Gap => "gap",
            BreakKind::Replay => "replay",
            BreakKind::Edit => "edit",
            BreakKind::Reset => "reset",
            BreakKind::Reorder => "reorder",
        }
    }

    /// The kind of a name from [`BreakKind::as_str`].
    pub fn from_name(name: &str) -> Option<BreakKind> {
        BreakKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A break in a trail, found at the event with `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub kind: BreakKind,
    /// The `seq` of the event that showed the break.
    pub seq: u64,
    /// The `seq` the trail expected there.
    pub expected_seq: u64,
    /// What happened, in a sentence.
    pub detail: String,
}

/// Checks an event against the trail's end `last` (`None` before the first event), for an event
/// at or before its place: one ahead of it is a gap here. `stored_before` says whether a copy
/// of the event is stored already, which tells an old event sent again apart from a new trail
/// starting at 1; it matters only at or before the trail's end.
fn check(last: Option<&Position>, event: &FimEvent, stored_before: bool) -> Option<Break> {
    let last_seq = last.map_or(0, |p| p.seq);
    let expected_seq = last_seq.saturating_add(1);
    let broken = |kind, detail: String| {
        Some(Break {
            kind,
            seq: event.seq,
            expected_seq,
            detail,
        })
    };
    if event.seq == expected_seq {
        let previous = last.map_or(CHAIN_GENESIS, |p| p.chain.as_str());
        if chain_hash(previous, event) == event.chain {
            return None;
        }
        return broken(
            BreakKind::Edit,
            format!(
                "event {} does not match its chain: it was altered after the agent recorded it",
                event.seq
            ),
        );
    }
    if event.seq > expected_seq {
        let missing = event.seq - expected_seq;
        let plural = if missing == 1 { "" } else { "s" };
        return broken(
            BreakKind::Gap,
            format!(
                "{missing} event{plural} missing before event {} (expected {expected_seq})",
                event.seq
            ),
        );
    }
    // At or before the trail's end.
    let copy = stored_before;
    if event.seq == 1 && !copy {
        return broken(
            BreakKind::Reset,
            format!(
                "the trail started again at 1 after {last_seq} events: the agent's state was wiped"
            ),
        );
    }
    let what = if copy {
        "a copy of the stored event"
    } else {
        "not the stored event"
    };
    Some(replay(event, expected_seq, what))
}

fn replay(event: &FimEvent, expected_seq: u64, what: &str) -> Break {
    Break {
        kind: BreakKind::Replay,
        seq: event.seq,
        expected_seq,
        detail: format!(
            "event {} came again when event {expected_seq} was expected ({what}): replayed",
            event.seq
        ),
    }
}

/// What [`verify`] found in a stored trail.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verification {
    /// Events walked.
    pub events: u64,
    /// The first stored `seq`, when there is one.
    pub first_seq: Option<u64>,
    /// The trail does not start at 1: the older part was removed (by retention) and cannot be
    /// checked; the walk starts from the first stored event's own chain.
    pub starts_late: bool,
    /// Every break, in trail order, with the path of the event that showed it.
    pub breaks: Vec<(Break, String)>,
}

/// Walks a stored trail in `seq` order (equal `seq`s in storage order), recomputing every chain
/// from [`CHAIN_GENESIS`] when the trail starts at 1, or from the first event's own chain when
/// its beginning was removed.
///
/// Unlike [`check`], which knows only the trail's end, this sees the whole trail: an event
/// stored twice at one place is a replay, a missing place a gap, and a chain that does not
/// follow from the event before it an edit (of that event, or of the one before it: a stored
/// event changed after storage breaks its own link and, if its `chain` was changed to match,
/// the next one's).
///
/// A reset splits the trail in parts, each numbered from 1 again; the caller walks each part in
/// `seq` order and calls [`Verifier::restart`] between them, which reports the reset once and
/// checks the next part from the genesis. (Walked as one, the parts would show as every event
/// stored twice.)
///
/// Call order: [`Verifier::push`] for every event of a part, in order, [`Verifier::restart`]
/// before each further part, then [`Verifier::finish`]; the trail never has to be held in memory
/// at once.
#[derive(Debug, Default)]
pub struct Verifier {
    report: Verification,
    last: Option<Position>,
    /// A new part begins with the next event.
    restarting: bool,
}

impl Verifier {
    pub fn new() -> Self {
        Verifier::default()
    }

    /// The trail started again (the store recorded a reset when the next event arrived): the
    /// next event begins a new part, numbered from 1 and chained from the genesis. Nothing
    /// happens before the first event: a part removed whole by retention cannot be checked.
    pub fn restart(&mut self) {
        self.restarting = self.last.is_some();
    }

    /// Checks the next event of the trail.
    pub fn push(&mut self, event: &FimEvent) {
        let report = &mut self.report;
        report.events += 1;
        if self.restarting {
            self.restarting = false;
            let before = self.last.take().map_or(0, |p| p.seq);
            report.breaks.push((
                Break {
                    kind: BreakKind::Reset,
                    seq: event.seq,
                    expected_seq: before.saturating_add(1),
                    detail: format!(
                        "the trail started again after event {before}: the agent's state was wiped"
                    ),
                },
                event.path.clone(),
            ));
            let found = if event.seq == 1 {
                (chain_hash(CHAIN_GENESIS, event) != event.chain).then(|| edit(event, 1))
            } else {
                check(None, event, false)
            };
            if let Some(b) = found {
                report.breaks.push((b, event.path.clone()));
            }
            self.last = Some(Position {
                seq: event.seq,
                chain: event.chain.clone(),
            });
            return;
        }
        let Some(previous) = &self.last else {
            report.first_seq = Some(event.seq);
            if event.seq == 1 {
                if chain_hash(CHAIN_GENESIS, event) != event.chain {
                    report.breaks.push((edit(event, 1), event.path.clone()));
                }
            } else {
                report.starts_late = true;
            }
            self.last = Some(Position {
                seq: event.seq,
                chain: event.chain.clone(),
            });
            return;
        };
        let expected_seq = previous.seq.saturating_add(1);
        let found = if event.seq == expected_seq {
            (chain_hash(&previous.chain, event) != event.chain).then(|| edit(event, expected_seq))
        } else if event.seq > expected_seq {
            check(Some(previous), event, false)
        } else {
            Some(Break {
                kind: BreakKind::Replay,
                seq: event.seq,
                expected_seq,
                detail: format!(
                    "event {} is stored again after event {}",
                    event.seq, previous.seq
                ),
            })
        };
        if let Some(b) = found {
            report.breaks.push((b, event.path.clone()));
        }
        if event.seq >= expected_seq {
            self.last = Some(Position {
                seq: event.seq,
                chain: event.chain.clone(),
            });
        }
    }

    /// What the walk found.
    pub fn finish(self) -> Verification {
        self.report
    }
}

/// Verifies a whole trail at once ([`Verifier`]).
pub fn verify<'a>(events: impl IntoIterator<Item = &'a FimEvent>) -> Verification {
    let mut verifier = Verifier::new();
    for event in events {
        verifier.push(event);
    }
    verifier.finish()
}

fn edit(event: &FimEvent, expected_seq: u64) -> Break {
    Break {
        kind: BreakKind::Edit,
        seq: event.seq,
        expected_seq,
        detail: format!(
            "event {} does not match its chain: it, or the event before it, was altered",
            event.seq
        ),
    }
}

/// Builds chained events for tests.
#[cfg(test)]
pub(crate) mod chained {
    use outpost_common::event::{FimChange, FimDetection};

    use super::*;

    /// An event at `seq` about `path`, not yet chained.
    pub(crate) fn unchained(seq: u64, path: &str) -> FimEvent {
        FimEvent {
            time_ns: 1_700_000_000_000_000_000 + i64::try_from(seq).unwrap_or(0),
            path: path.to_owned(),
            change: FimChange::Modified,
            changed: vec!["hash".to_owned()],
            moved_from: None,
            before: None,
            after: None,
            detected_by: FimDetection::Realtime,
            seq,
            chain: String::new(),
        }
    }

    /// A trail of `n` events from seq 1, each chained to the one before, paths `/etc/f<seq>`.
    pub(crate) fn trail(n: u64) -> Vec<FimEvent> {
        let mut previous = CHAIN_GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let mut e = unchained(seq, &format!("/etc/f{seq}"));
                e.chain = chain_hash(&previous, &e);
                previous.clone_from(&e.chain);
                e
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::chained::trail;
    use super::*;

    /// Feeds events to a [`Trail`] as the store does, one batch each, every batch the oldest
    /// the agent holds; answers the breaks.
    fn receive(events: &[FimEvent]) -> Vec<Break> {
        let batches: Vec<Batch> = (1..)
            .zip(events)
            .map(|(seq, e)| Batch {
                spool: 1,
                seq,
                low_water: seq,
                events: vec![e.clone()],
            })
            .collect();
        deliver(&batches).into_iter().map(|f| f.brk).collect()
    }

    struct Batch {
        spool: u64,
        seq: u64,
        low_water: u64,
        events: Vec<FimEvent>,
    }

    fn batch(seq: u64, low_water: u64, events: &[FimEvent]) -> Batch {
        Batch {
            spool: 1,
            seq,
            low_water,
            events: events.to_vec(),
        }
    }

    /// Feeds batches to a [`Trail`] in the order given, as the store does; answers what was
    /// found. Rows are numbered from 1 in the order of arrival.
    fn deliver(batches: &[Batch]) -> Vec<Found> {
        let mut trail = Trail::default();
        let mut seen: Vec<(u64, String)> = Vec::new();
        let mut found = Vec::new();
        let mut row = 0;
        for b in batches {
            for e in &b.events {
                row += 1;
                let arrival = Arrival {
                    row,
                    spool_id: b.spool,
                    batch_seq: b.seq,
                };
                let copy = trail.needs_lookup(e) && seen.contains(&(e.seq, e.chain.clone()));
                found.extend(trail.receive(e, arrival, copy));
                seen.push((e.seq, e.chain.clone()));
            }
            found.extend(trail.settle(b.spool, b.low_water));
        }
        found
    }

    fn found(found: &[Found]) -> Vec<(BreakKind, u64, u64, i64)> {
        found
            .iter()
            .map(|f| (f.brk.kind, f.brk.seq, f.brk.expected_seq, f.row))
            .collect()
    }

    #[test]
    fn batches_stored_out_of_order_break_nothing() {
        let t = trail(9);
        // Batches 1..4 in flight at once (low-water 1), stored 3, 1, 4, 2.
        let order = [
            batch(3, 1, &t[4..6]),
            batch(1, 1, &t[..2]),
            batch(4, 1, &t[6..9]),
            batch(2, 1, &t[2..4]),
        ];
        assert_eq!(found(&deliver(&order)), []);
        // Edits are still found in events let in late, at their own rows.
        let mut edited = t.clone();
        edited[5].path = "/etc/elsewhere".to_owned();
        let order = [
            batch(3, 1, &edited[4..6]),
            batch(1, 1, &edited[..2]),
            batch(2, 1, &edited[2..4]),
        ];
        assert_eq!(found(&deliver(&order)), [(BreakKind::Edit, 6, 6, 2)]);
    }

    #[test]
    fn a_gap_is_told_once_the_low_water_mark_shows_the_events_cannot_come() {
        let t = trail(8);
        // 3 and 4 never come; 5 and 6 arrive in batch 3 while batch 2 may still be in flight.
        let mut batches = vec![batch(1, 1, &t[..2]), batch(3, 2, &t[4..6])];
        assert_eq!(found(&deliver(&batches)), []);
        // A batch with the mark still at 2: nothing yet.
        batches.push(batch(4, 2, &t[6..7]));
        assert_eq!(found(&deliver(&batches)), []);
        // The mark passes batch 2 without 3 and 4: one gap at 5, and 6 and 7 follow it.
        batches.push(batch(5, 3, &[]));
        let gap = deliver(&batches);
        assert_eq!(found(&gap), [(BreakKind::Gap, 5, 3, 3)]);
        assert!(gap[0].brk.detail.contains("2 events missing"), "{gap:?}");
        assert_eq!(gap[0].path, "/etc/f5");
        // Then the trail goes on from 7.
        batches.push(batch(6, 6, &t[7..8]));
        assert_eq!(found(&deliver(&batches)), [(BreakKind::Gap, 5, 3, 3)]);

        // A batch that is itself the oldest held shows a gap inside or before it at once.
        let lost_inside = [batch(1, 1, &[t[0].clone(), t[2].clone()])];
        assert_eq!(found(&deliver(&lost_inside)), [(BreakKind::Gap, 3, 2, 2)]);
        // A trail first seen far along: the start is missing.
        assert_eq!(
            found(&deliver(&[batch(7, 7, &t[3..5])])),
            [(BreakKind::Gap, 4, 1, 1)]
        );
    }

    #[test]
    fn held_events_settle_when_the_agent_sends_from_another_spool_or_hold_too_many() {
        let t = trail(6);
        let mut batches = vec![batch(1, 1, &t[..1]), batch(3, 1, &t[3..4])];
        batches.push(Batch {
            spool: 2,
            seq: 1,
            low_water: 1,
            events: t[4..6].to_vec(),
        });
        assert_eq!(found(&deliver(&batches)), [(BreakKind::Gap, 4, 2, 2)]);

        let mut held = Trail::default();
        let far = trail(MAX_AHEAD as u64 + 3);
        let arrival = |row| Arrival {
            row,
            spool_id: 1,
            batch_seq: 9,
        };
        let mut found = Vec::new();
        for (row, e) in (1..).zip(&far[2..]) {
            found.extend(held.receive(e, arrival(row), false));
        }
        // Past the bound, the oldest held is taken as the next with the gap before it, and
        // every held event after it follows.
        assert_eq!(
            found
                .iter()
                .map(|f| (f.brk.kind, f.brk.seq))
                .collect::<Vec<_>>(),
            [(BreakKind::Gap, 3)]
        );
        assert!(held.ahead.is_empty());
        assert_eq!(held.end.map(|p| p.seq), Some(MAX_AHEAD as u64 + 3));
    }

    #[test]
    fn events_rearranged_within_a_batch_are_a_reorder_and_still_checked_in_place() {
        let t = trail(5);
        let swapped = [
            batch(1, 1, &t[..1]),
            batch(2, 2, &[t[2].clone(), t[1].clone(), t[3].clone()]),
            batch(3, 3, &t[4..5]),
        ];
        let got = deliver(&swapped);
        // Told once, at the event that came late; no gap, edit or replay.
        assert_eq!(found(&got), [(BreakKind::Reorder, 2, 4, 3)]);
        assert!(got[0].brk.detail.contains("same batch"), "{got:?}");
        // Across batches the same order is no break.
        let across = [
            batch(1, 1, &t[..1]),
            batch(3, 2, &t[2..3]),
            batch(2, 2, &t[1..2]),
        ];
        assert_eq!(found(&deliver(&across)), []);
    }

    #[test]
    fn an_event_held_ahead_sent_again_is_a_replay_and_a_reset_drops_what_was_held() {
        let t = trail(6);
        let batches = [
            batch(1, 1, &t[..2]),
            batch(3, 1, &t[4..5]),
            batch(4, 1, &t[4..5]),
        ];
        let got = deliver(&batches);
        assert_eq!(found(&got), [(BreakKind::Replay, 5, 3, 4)]);
        assert!(got[0].brk.detail.contains("a copy"), "{got:?}");

        let mut restarted = trail(2);
        for e in &mut restarted {
            e.path = format!("/new{}", e.seq);
        }
        let mut previous = CHAIN_GENESIS.to_owned();
        for e in &mut restarted {
            e.chain = chain_hash(&previous, e);
            previous.clone_from(&e.chain);
        }
        let batches = [
            batch(1, 1, &t[..3]),
            batch(3, 1, &t[4..5]),
            batch(4, 1, &restarted),
            batch(5, 5, &[]),
        ];
        assert_eq!(found(&deliver(&batches)), [(BreakKind::Reset, 1, 4, 5)]);
    }

    fn kinds(breaks: &[Break]) -> Vec<(BreakKind, u64, u64)> {
        breaks
            .iter()
            .map(|b| (b.kind, b.seq, b.expected_seq))
            .collect()
    }

    #[test]
    fn an_intact_trail_has_no_break() {
        assert_eq!(receive(&trail(5)), []);
        assert_eq!(verify(&trail(5)).breaks, []);
    }

    #[test]
    fn each_break_is_told_once_and_the_trail_goes_on() {
        let t = trail(10);
        // 3 and 4 lost: one gap, then the trail goes on from 5.
        let lost: Vec<_> = t
            .iter()
            .filter(|e| ![3, 4].contains(&e.seq))
            .cloned()
            .collect();
        let breaks = receive(&lost);
        assert_eq!(kinds(&breaks), [(BreakKind::Gap, 5, 3)]);
        assert!(breaks[0].detail.contains("2 events missing"), "{breaks:?}");

        // 6 altered on the way: an edit, and 7 (chained to 6 as sent) is fine.
        let mut edited = t.clone();
        edited[5].path = "/etc/elsewhere".to_owned();
        assert_eq!(kinds(&receive(&edited)), [(BreakKind::Edit, 6, 6)]);

        // 4 sent again after 6, and 5 and 7 swapped: replays that leave the trail where it was.
        let mut order: Vec<_> = t[..6].to_vec();
        order.push(t[3].clone());
        order.extend([t[7].clone(), t[6].clone(), t[8].clone()]);
        let breaks = receive(&order);
        assert_eq!(
            kinds(&breaks),
            [
                (BreakKind::Replay, 4, 7),
                (BreakKind::Gap, 8, 7),
                (BreakKind::Replay, 7, 9)
            ]
        );
        assert!(breaks[0].detail.contains("a copy of the stored event"));
        assert!(breaks[2].detail.contains("not the stored event"));

        // The agent's state wiped: a new trail from 1, told once, then followed.
        let mut wiped = t[..4].to_vec();
        let mut previous = CHAIN_GENESIS.to_owned();
        for mut e in trail(3) {
            e.path = format!("/new{}", e.seq);
            e.chain = chain_hash(&previous, &e);
            previous.clone_from(&e.chain);
            wiped.push(e);
        }
        let breaks = receive(&wiped);
        assert_eq!(kinds(&breaks), [(BreakKind::Reset, 1, 5)]);
        assert!(breaks[0].detail.contains("after 4 events"), "{breaks:?}");

        // Event 1 itself sent again is a replay, not a reset.
        let again = vec![t[0].clone(), t[1].clone(), t[0].clone(), t[2].clone()];
        assert_eq!(kinds(&receive(&again)), [(BreakKind::Replay, 1, 3)]);

        // The first event seen already far along: the start is missing.
        assert_eq!(kinds(&receive(&t[3..5])), [(BreakKind::Gap, 4, 1)]);
    }

    #[test]
    fn verify_finds_edits_gaps_and_doubles_and_says_when_the_start_is_gone() {
        let t = trail(8);
        let mut stored = t.clone();
        stored[2].path = "/etc/changed".to_owned();
        stored.remove(5);
        stored.insert(6, t[6].clone());
        let report = verify(&stored);
        assert_eq!(report.events, 8);
        assert!(!report.starts_late);
        let found: Vec<_> = report
            .breaks
            .iter()
            .map(|(b, path)| (b.kind, b.seq, path.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (BreakKind::Edit, 3, "/etc/changed"),
                (BreakKind::Gap, 7, "/etc/f7"),
                (BreakKind::Replay, 7, "/etc/f7"),
            ]
        );

        // Retention removed the start: checked from the first event kept.
        let report = verify(&t[3..]);
        assert_eq!((report.first_seq, report.starts_late), (Some(4), true));
        assert_eq!(report.breaks, []);
        let mut first_altered = t.clone();
        first_altered[0].path = "/etc/changed".to_owned();
        assert_eq!(
            verify(&first_altered)
                .breaks
                .iter()
                .map(|(b, _)| (b.kind, b.seq))
                .collect::<Vec<_>>(),
            [(BreakKind::Edit, 1)]
        );
        assert_eq!(verify(&[]), Verification::default());
    }

    #[test]
    fn verify_checks_each_part_of_a_reset_trail_on_its_own() {
        let old = trail(4);
        let mut new = trail(3);
        new[2].path = "/etc/changed".to_owned();
        let mut verifier = Verifier::new();
        // A reset recorded before anything left by retention changes nothing.
        verifier.restart();
        old.iter().for_each(|e| verifier.push(e));
        verifier.restart();
        new[1..].iter().for_each(|e| verifier.push(e));
        let report = verifier.finish();
        assert_eq!((report.events, report.starts_late), (6, false));
        let found: Vec<_> = report
            .breaks
            .iter()
            .map(|(b, _)| (b.kind, b.seq, b.expected_seq))
            .collect();
        assert_eq!(
            found,
            [
                (BreakKind::Reset, 2, 5),
                (BreakKind::Gap, 2, 1),
                (BreakKind::Edit, 3, 3)
            ]
        );
    }

    #[test]
    fn break_kinds_have_names_that_read_back() {
        for k in BreakKind::ALL {
            assert_eq!(BreakKind::from_name(k.as_str()), Some(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!(BreakKind::from_name("order"), None);
    }
}
