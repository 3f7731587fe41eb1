//! Cursors as a hybrid logical clock, unique across the aggregators sharing a database.
//!
//! A cursor is `(ms << 22) | (node << 16) | n`: the milliseconds since the epoch of the block it
//! was taken from, the aggregator's node (0..=63, [`super::ClickHouseConfig::node`]), and its
//! place in the block (0..65,536). Two aggregators with different nodes never hand out the same
//! cursor, and each hands out strictly increasing ones.
//!
//! A batch's events and notices take consecutive cursors inside one block. A batch takes the
//! rest of the current block when it fits and the clock has not moved past the block; otherwise
//! it starts a new block at `max(now_ms, last_ms + 1)`. Starting a new block whenever the
//! wall clock moves (rather than only when the block is full) keeps cursors within clock skew of
//! commit time, so across aggregators cursor order is commit-time order up to that skew. A
//! cursor seen in the store from another node ([`Clock::observe`]) moves the clock past it, as a
//! hybrid logical clock does with a message's timestamp.
//!
//! Pure: the wall clock is passed in.

use crate::store::Cursor;
use crate::store::fim_trail::MAX_AHEAD;

/// Bits of a cursor below the milliseconds: the node and the place in the block.
const MS_SHIFT: u32 = 22;
/// Bits of the place in the block.
const NODE_SHIFT: u32 = 16;
/// Cursors in one `(ms, node)` block.
pub(super) const BLOCK: u64 = 1 << NODE_SHIFT;
/// The highest node number a cursor can carry.
pub const MAX_NODE: u8 = 63;

/// Most events a batch may carry for this store (`ingest.max_batch_events` must not exceed it).
///
/// A batch's events and the notices its file-integrity trail adds share one block of 65,536
/// cursors. Receiving one event reports at most two breaks (a reorder and one more), and every
/// event held ahead of its place reports at most one when it leaves; the trail holds at most
/// [`MAX_AHEAD`] events from earlier batches. So a batch of `n` events carries at most
/// `3n + MAX_AHEAD` notices, and `n + 3n + MAX_AHEAD` must fit in a block.
pub const MAX_BATCH_EVENTS: usize = (BLOCK as usize - MAX_AHEAD) / 4;

/// The most notices a batch of `events` events can carry (see [`MAX_BATCH_EVENTS`]).
#[cfg(test)]
fn max_notices(events: usize) -> usize {
    events.saturating_mul(3).saturating_add(MAX_AHEAD)
}

/// The cursor of place `n` in block `(ms, node)`. `ms` below 2^42 (the year 2109) keeps every
/// bit.
pub(super) fn compose(ms: u64, node: u8, n: u64) -> Cursor {
    Cursor::from_position((ms << MS_SHIFT) | (u64::from(node & MAX_NODE) << NODE_SHIFT) | n)
}

/// The block and place of a cursor: `(ms, node, n)`.
pub(super) fn parts(cursor: Cursor) -> (u64, u8, u64) {
    let p = cursor.position();
    // Masked to six bits: the cast cannot lose anything.
    let node = ((p >> NODE_SHIFT) & u64::from(MAX_NODE)) as u8;
    (p >> MS_SHIFT, node, p & (BLOCK - 1))
}

/// One aggregator's clock: the block cursors are taken from and the next place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Clock {
    node: u8,
    ms: u64,
    /// The next place in block `ms`; [`BLOCK`] when it is used up.
    next: u64,
}

impl Clock {
    /// A clock for `node` that has handed out nothing yet.
    pub(super) fn new(node: u8) -> Clock {
        Clock {
            node: node & MAX_NODE,
            ms: 0,
            next: BLOCK,
        }
    }

    /// Continues after `last`, the highest cursor this node stored before.
    pub(super) fn resume(&mut self, last: Cursor) {
        let (ms, _, n) = parts(last);
        if (ms, n + 1) > (self.ms, self.next) {
            self.ms = ms;
            self.next = n + 1;
        }
    }

    /// Takes `count` consecutive cursors in one block, at wall-clock time `now_ms`; answers the
    /// first. `None` when `count` exceeds a block.
    pub(super) fn take(&mut self, now_ms: u64, count: u64) -> Option<Cursor> {
        if count > BLOCK {
            return None;
        }
        let (ms, first) = if now_ms > self.ms {
            (now_ms, 0)
        } else if self.next < BLOCK && self.next + count <= BLOCK {
            (self.ms, self.next)
        } else {
            (self.ms + 1, 0)
        };
        self.ms = ms;
        self.next = first + count;
        Some(compose(ms, self.node, first))
    }

    /// The cursor the next event would get at `now_ms`. Moves the clock up to `now_ms`, so that
    /// no cursor taken later is below the answer even if the wall clock steps back.
    pub(super) fn end(&mut self, now_ms: u64) -> Cursor {
        if now_ms > self.ms {
            self.ms = now_ms;
            self.next = 0;
        }
        if self.next < BLOCK {
            compose(self.ms, self.node, self.next)
        } else {
            compose(self.ms + 1, self.node, 0)
        }
    }

    /// Moves the clock past `seen`, a cursor written by another node: every cursor taken later
    /// is above it.
    pub(super) fn observe(&mut self, seen: Cursor) {
        let (ms, _, _) = parts(seen);
        if ms >= self.ms {
            self.ms = ms;
            self.next = BLOCK;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn a_cursor_is_its_block_node_and_place() {
        let c = compose(NOW, 5, 7);
        assert_eq!(parts(c), (NOW, 5, 7));
        assert_eq!(c.position(), (NOW << 22) | (5 << 16) | 7);
        assert_eq!(parts(compose(NOW, MAX_NODE, BLOCK - 1)), (NOW, 63, 65_535));
        // Nodes order cursors of one millisecond; milliseconds order everything.
        assert!(compose(NOW, 1, 0) > compose(NOW, 0, BLOCK - 1));
        assert!(compose(NOW + 1, 0, 0) > compose(NOW, MAX_NODE, BLOCK - 1));
    }

    #[test]
    fn batches_share_a_block_until_it_is_full_or_the_clock_moves() {
        let mut clock = Clock::new(3);
        assert_eq!(clock.take(NOW, 10), Some(compose(NOW, 3, 0)));
        assert_eq!(clock.take(NOW, 5), Some(compose(NOW, 3, 10)));
        // The rest of the block is too small: the next millisecond, even if the wall clock
        // has not reached it.
        assert_eq!(clock.take(NOW, BLOCK - 15), Some(compose(NOW, 3, 15)));
        assert_eq!(clock.take(NOW, 1), Some(compose(NOW + 1, 3, 0)));
        assert_eq!(clock.take(NOW, BLOCK), Some(compose(NOW + 2, 3, 0)));
        // The wall clock moved on: a new block at its time.
        assert_eq!(clock.take(NOW + 50, 2), Some(compose(NOW + 50, 3, 0)));
        // The wall clock stepped back: the clock does not.
        assert_eq!(clock.take(NOW, 2), Some(compose(NOW + 50, 3, 2)));
        assert_eq!(clock.take(NOW, BLOCK + 1), None);
        // An empty batch takes no place.
        assert_eq!(clock.take(NOW, 0), Some(compose(NOW + 50, 3, 4)));
        assert_eq!(clock.take(NOW, 1), Some(compose(NOW + 50, 3, 4)));
    }

    #[test]
    fn the_end_is_where_the_next_event_goes_and_stays_below_what_follows() {
        let mut clock = Clock::new(0);
        let end = clock.end(NOW);
        assert_eq!(end, compose(NOW, 0, 0));
        // The wall clock steps back after the end was asked for: nothing goes below it.
        assert_eq!(clock.take(NOW - 10, 4), Some(end));
        assert_eq!(clock.end(NOW - 10), compose(NOW, 0, 4));
        clock.take(NOW, BLOCK - 4);
        assert_eq!(clock.end(NOW), compose(NOW + 1, 0, 0));
        assert_eq!(clock.take(NOW, 1), Some(compose(NOW + 1, 0, 0)));
    }

    #[test]
    fn a_reopened_clock_continues_after_its_last_cursor() {
        let mut clock = Clock::new(2);
        clock.resume(compose(NOW + 100, 2, 40));
        // Its own wall clock lags: it continues in the same block.
        assert_eq!(clock.take(NOW, 3), Some(compose(NOW + 100, 2, 41)));
        // An older cursor changes nothing.
        clock.resume(compose(NOW, 2, 9));
        assert_eq!(clock.take(NOW, 1), Some(compose(NOW + 100, 2, 44)));
        // A store with nothing of this node's: the max is 0.
        let mut fresh = Clock::new(2);
        fresh.resume(Cursor::from_position(0));
        assert_eq!(fresh.take(NOW, 1), Some(compose(NOW, 2, 0)));
    }

    #[test]
    fn a_cursor_from_another_node_moves_the_clock_past_it() {
        let mut clock = Clock::new(1);
        clock.take(NOW, 1);
        let theirs = compose(NOW + 500, 9, 3);
        clock.observe(theirs);
        let next = clock.take(NOW, 1).unwrap();
        assert!(next > theirs, "{next:?}");
        assert_eq!(next, compose(NOW + 501, 1, 0));
        // An older one changes nothing.
        clock.observe(compose(NOW, 9, 0));
        assert_eq!(clock.take(NOW, 1), Some(compose(NOW + 501, 1, 1)));
    }

    #[test]
    fn a_largest_batch_and_its_notices_fit_one_block() {
        let most = MAX_BATCH_EVENTS + max_notices(MAX_BATCH_EVENTS);
        assert!(most as u64 <= BLOCK, "{most}");
        assert_eq!(MAX_BATCH_EVENTS, 15_360);
    }

    proptest! {
        /// Whatever the wall clock does, cursors grow strictly, a batch stays in one block, and
        /// two nodes never share a cursor.
        #[test]
        fn cursors_grow_and_never_collide(
            steps in prop::collection::vec((0u64..3, -5i64..20, 0u64..40_000), 1..80)
        ) {
            let mut clocks = [Clock::new(0), Clock::new(1), Clock::new(2)];
            let mut last: [Option<Cursor>; 3] = [None; 3];
            let mut seen = std::collections::HashSet::new();
            let mut now = NOW as i64;
            for (node, jump, count) in steps {
                now += jump;
                let node = node as usize;
                let first = clocks[node].take(now as u64, count).unwrap();
                let (_, n, place) = parts(first);
                prop_assert_eq!(usize::from(n), node);
                prop_assert!(place + count <= BLOCK);
                if let Some(previous) = last[node] {
                    prop_assert!(first > previous);
                }
                for i in 0..count.min(50) {
                    prop_assert!(seen.insert(first.advance(i as usize)));
                }
                if count > 0 {
                    last[node] = Some(first.advance(count as usize - 1));
                }
            }
        }
    }
}
