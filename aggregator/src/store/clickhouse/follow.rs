//! Following every commit of every aggregator: the `feed` table.
//!
//! Alerting in a cluster runs on one aggregator, which must see the events all of them commit.
//! The event tables are ordered for the API's queries (agent, time), not by cursor, so reading
//! them by cursor scans everything. A commit therefore also writes its batches to `feed`, one
//! compressed row per batch ordered by its first cursor, which a follower reads by cursor range
//! ([`ClickHouseStore::follow_feed`]).
//!
//! Two things make that exact without transactions:
//!
//! - **Only committed batches count.** The feed row is the first write of a commit, right after
//!   its cursors are taken; the `batches` row that makes a batch stored is the last. A follower
//!   takes a feed row only once the batch's `batches` row carries the same first cursor, and
//!   waits for it until then, so a commit that failed after its feed row (its resend gets new
//!   cursors and a new feed row) is never taken. A feed row that stays unconfirmed is waited for
//!   until its commit can no longer complete ([`abandon_ms`]: every write of a commit within
//!   the request timeout), then passed over and counted.
//! - **No commit lands behind a follower.** Cursors come from each aggregator's clock, and a
//!   commit's feed row becomes visible some time after its cursors were taken. A commit whose
//!   feed row was not written within [`FEED_DEADLINE_MS`] of its cursors fails before it writes
//!   anything else (the agent sends the batch again, with new cursors), and a follower reads only
//!   up to [`FOLLOW_LAG_MS`] behind its own clock: the deadline, and three seconds for the
//!   aggregators' clocks to differ (they must agree that closely; NTP keeps them within
//!   milliseconds).

use clickhouse::Row;
use outpost_common::event::Event;
use outpost_common::wire::{self, Codec};
use serde::{Deserialize, Serialize};

use super::cursor::{compose, parts};
use super::{ClickHouseStore, Failure, now_ms};
use crate::store::{Cursor, FollowPage, IncomingBatch, StoredEvent};

/// A commit whose feed row is not written within this long of its cursors fails.
pub(super) const FEED_DEADLINE_MS: u64 = 5_000;
/// How far behind its clock a follower reads.
pub(super) const FOLLOW_LAG_MS: u64 = FEED_DEADLINE_MS + 3_000;
const _: () = assert!(FOLLOW_LAG_MS > FEED_DEADLINE_MS);
/// Feed rows read per request at most.
const FEED_ROWS_PER_READ: u64 = 512;
/// Keys one `IN` list of the confirmation holds at most.
const KEYS_PER_QUERY: usize = 256;

#[derive(Debug, Row, Serialize)]
pub(super) struct FeedRow<'a> {
    start: u64,
    agent_id: &'a str,
    spool_id: u64,
    seq: u64,
    received_ns: i64,
    events: u32,
    codec: u8,
    raw_bytes: u32,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

#[derive(Debug, Row, Deserialize)]
struct StoredFeedRow {
    start: u64,
    agent_id: String,
    spool_id: u64,
    seq: u64,
    received_ns: i64,
    events: u32,
    codec: u8,
    raw_bytes: u32,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The feed row of a new batch: its events, then the notices the store added, from `start`.
pub(super) fn feed_row<'a>(
    batch: &'a IncomingBatch,
    notices: &[Event],
    start: Cursor,
    received_ns: i64,
) -> Result<FeedRow<'a>, Failure> {
    let mut encoded = Vec::new();
    let mut count = 0usize;
    for event in batch.events.iter().chain(notices) {
        wire::encode_event_into(event, &mut encoded).map_err(feed_error)?;
        count += 1;
    }
    let raw = wire::events_payload(count, &encoded).map_err(feed_error)?;
    let mut packer = wire::Packer::new(Codec::Zstd).map_err(feed_error)?;
    let (codec, data) = match packer.pack(&raw).map_err(feed_error)? {
        Some(packed) => (packer.codec(), packed),
        None => (Codec::None, raw.clone()),
    };
    Ok(FeedRow {
        start: start.position(),
        agent_id: &batch.agent_id,
        spool_id: batch.spool_id,
        seq: batch.seq,
        received_ns,
        events: u32::try_from(count).unwrap_or(u32::MAX),
        codec: codec.code(),
        raw_bytes: u32::try_from(raw.len()).unwrap_or(u32::MAX),
        data,
    })
}

fn feed_error(e: wire::WireError) -> Failure {
    Failure::Config(format!("encoding a batch for the feed: {e}"))
}

/// Fails a commit whose feed row landed more than [`FEED_DEADLINE_MS`] after `first`, its
/// earliest cursor, at `now_ms`.
pub(super) fn check_deadline(first: Cursor, now_ms: u64) -> Result<(), Failure> {
    let (stamped_ms, _, _) = parts(first);
    let elapsed_ms = now_ms.saturating_sub(stamped_ms);
    if elapsed_ms > FEED_DEADLINE_MS {
        return Err(Failure::Slow { elapsed_ms });
    }
    Ok(())
}

/// How long after its cursors a commit can still complete: the feed deadline, then its three
/// rounds of writes after the feed (event rows, trails, `batches`), each within the request
/// timeout, and a second to spare.
fn abandon_ms(timeout: std::time::Duration) -> u64 {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    FEED_DEADLINE_MS
        .saturating_add(timeout_ms.saturating_mul(3))
        .saturating_add(1_000)
}

impl ClickHouseStore {
    /// [`crate::store::EventStore::follow`]: committed events from `from`, up to about `limit`
    /// (whole batches), and where to continue.
    pub(super) async fn follow_feed(
        &self,
        from: Cursor,
        limit: usize,
    ) -> Result<FollowPage, Failure> {
        let now = now_ms();
        let horizon = compose(now.saturating_sub(FOLLOW_LAG_MS), 0, 0);
        if horizon <= from {
            return Ok(FollowPage {
                events: Vec::new(),
                next: from,
                passed_over: 0,
            });
        }
        let rows: Vec<StoredFeedRow> = self
            .timed(
                self.client()
                    .query(
                        "SELECT start, agent_id, spool_id, seq, received_ns, events, codec, \
                         raw_bytes, data FROM feed WHERE start >= ? AND start < ? \
                         ORDER BY start LIMIT ?",
                    )
                    .bind(from.position())
                    .bind(horizon.position())
                    .bind(FEED_ROWS_PER_READ)
                    .fetch_all(),
            )
            .await?;
        let full = rows.len() as u64 == FEED_ROWS_PER_READ;
        let confirmed = self.confirmed(&rows).await?;
        let abandon_before = now.saturating_sub(abandon_ms(self.timeout));
        let mut page = FollowPage {
            events: Vec::new(),
            next: if full {
                rows.last()
                    .map_or(horizon, |r| Cursor::from_position(r.start).advance(1))
            } else {
                horizon
            },
            passed_over: 0,
        };
        let mut last_start = None;
        for row in rows {
            // A row written twice (a retried insert) is one batch.
            if last_start == Some(row.start) {
                continue;
            }
            last_start = Some(row.start);
            let start = Cursor::from_position(row.start);
            if !confirmed.contains(&(row.agent_id.clone(), row.spool_id, row.seq, row.start)) {
                if parts(start).0 < abandon_before {
                    page.passed_over += 1;
                    continue;
                }
                // Its commit may still complete: wait for it.
                page.next = start;
                break;
            }
            if page.events.len() >= limit.max(1) {
                page.next = start;
                break;
            }
            let codec = Codec::from_code(i64::from(row.codec)).ok_or_else(|| {
                Failure::Config(format!(
                    "feed row at cursor {} has unknown codec {}",
                    row.start, row.codec
                ))
            })?;
            let events = wire::decode_packed_events(codec, &row.data, row.raw_bytes as usize)
                .map_err(|e| {
                    Failure::Config(format!(
                        "feed row at cursor {} (agent {} spool {} seq {}) does not decode: {e}",
                        row.start, row.agent_id, row.spool_id, row.seq
                    ))
                })?;
            debug_assert_eq!(events.len(), row.events as usize);
            page.events.extend(
                events
                    .into_iter()
                    .enumerate()
                    .map(|(i, event)| StoredEvent {
                        cursor: start.advance(i),
                        agent_id: row.agent_id.clone(),
                        received_ns: row.received_ns,
                        event,
                    }),
            );
        }
        Ok(page)
    }

    /// Which of `rows` belong to stored batches: `(agent, spool, seq, start)` of each whose
    /// `batches` row carries the same first cursor.
    async fn confirmed(
        &self,
        rows: &[StoredFeedRow],
    ) -> Result<std::collections::HashSet<(String, u64, u64, u64)>, Failure> {
        let mut confirmed = std::collections::HashSet::new();
        for chunk in rows.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "SELECT agent_id, spool_id, seq, start FROM batches
                 WHERE (agent_id, spool_id, seq) IN ({})",
                vec!["(?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut query = self.client().query(&sql);
            for row in chunk {
                query = query
                    .bind(row.agent_id.as_str())
                    .bind(row.spool_id)
                    .bind(row.seq);
            }
            let found: Vec<(String, u64, u64, u64)> = self.timed(query.fetch_all()).await?;
            confirmed.extend(found);
        }
        Ok(confirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_past_the_feed_deadline_fails() {
        let first = compose(1_000_000, 3, 7);
        assert!(check_deadline(first, 1_000_000).is_ok());
        assert!(check_deadline(first, 1_000_000 + FEED_DEADLINE_MS).is_ok());
        assert!(matches!(
            check_deadline(first, 1_000_001 + FEED_DEADLINE_MS),
            Err(Failure::Slow { elapsed_ms }) if elapsed_ms == FEED_DEADLINE_MS + 1
        ));
        // A clock ahead of the wall clock (it passed another node's cursors) is not late.
        assert!(check_deadline(first, 999_000).is_ok());
    }

    #[test]
    fn followers_wait_out_the_longest_commit() {
        let timeout = std::time::Duration::from_secs(30);
        assert!(abandon_ms(timeout) > FEED_DEADLINE_MS + 3 * 30_000);
    }

    #[test]
    fn a_feed_row_carries_the_events_and_notices_compressed() {
        use crate::store::testutil::{batch, log, metric, secs};
        let batch = batch(
            "agent-1",
            9,
            4,
            vec![metric(secs(1), 0.5), log(secs(2), 40), metric(secs(3), 1.5)],
        );
        let notice = log(secs(4), 10);
        let row = feed_row(&batch, std::slice::from_ref(&notice), compose(5, 1, 0), 77).unwrap();
        assert_eq!(row.events, 4);
        let codec = Codec::from_code(i64::from(row.codec)).unwrap();
        let events = wire::decode_packed_events(codec, &row.data, row.raw_bytes as usize).unwrap();
        let mut expected = batch.events.clone();
        expected.push(notice);
        assert_eq!(events, expected);
    }
}
