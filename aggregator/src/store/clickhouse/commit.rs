//! The commit: each batch decided once ([`crate::store::dedup`]), then written in an order that
//! makes a failure safe to retry (see the parent module).
//!
//! 1. Read the low-water marks of the batches' spools and which of their keys are stored.
//! 2. Decide each batch, repeats within the call included.
//! 3. Run each new batch's file-integrity events through its agent's trail, in commit order, and
//!    make a notice of every break.
//! 4. Take each new batch's cursors (events, then notices) from the clock.
//! 5. Write the feed rows ([`super::follow`]); then the event rows and notices, and the hosts'
//!    summaries; then the trails; then the `batches` and `spools` rows. Only then do the caches change and the breaks get logged.

use std::collections::{HashMap, HashSet};

use clickhouse::Row;
use outpost_common::event::{Event, FimEvent};
use serde::{Deserialize, Serialize};

use super::cursor::parts;
use super::rows::{Place, Rows};
use super::schema::order_key;
use super::{ClickHouseStore, Failure, WriteState, lock, now_ms};
use crate::store::dedup::{self, Admission};
use crate::store::fim_trail::{self, Arrival, Found, Held, Position, Trail};
use crate::store::{BatchCommit, CommitOutcome, Cursor, HostSummary, IncomingBatch};

/// Keys one `IN` list holds at most, so that a statement stays well inside the server's query
/// size limit (256 KiB by default).
const KEYS_PER_QUERY: usize = 256;

/// An agent's trail as this store last loaded or wrote it.
#[derive(Debug, Clone, Default)]
pub(super) struct CachedTrail {
    pub trail: Trail,
    /// The version it was stored with (a cursor); 0 when nothing was stored.
    pub version: u64,
}

/// A new batch on its way through the commit.
struct NewBatch<'b> {
    batch: &'b IncomingBatch,
    /// The spool's low-water mark once this batch is stored.
    low_water: u64,
    received_ns: i64,
    notices: Vec<Event>,
    start: Cursor,
}

#[derive(Debug, Row, Serialize)]
struct BatchRow<'a> {
    agent_id: &'a str,
    spool_id: u64,
    seq: u64,
    received_ns: i64,
    start: u64,
    events: u32,
}

#[derive(Debug, Row, Serialize)]
struct SpoolRow<'a> {
    agent_id: &'a str,
    spool_id: u64,
    low_water: u64,
    last_batch_ns: i64,
}

#[derive(Debug, Row, Serialize)]
struct TrailRow<'a> {
    agent_id: &'a str,
    version: u64,
    has_end: u8,
    end_seq: u64,
    end_chain: &'a str,
    /// JSON of the events held ahead ([`HeldJson`]).
    ahead: String,
}

#[derive(Debug, Row, Deserialize)]
struct StoredTrail {
    agent_id: String,
    version: u64,
    has_end: u8,
    end_seq: u64,
    end_chain: String,
    ahead: String,
}

/// An event held ahead of its place, as `fim_trails.ahead` keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct HeldJson {
    seq: u64,
    /// The event's place in its batch.
    row: i64,
    spool_id: u64,
    batch_seq: u64,
    event: FimEvent,
}

#[derive(Debug, Row, Serialize)]
pub(super) struct SummaryRow<'a> {
    agent_id: &'a str,
    /// 1 CPU, 2 memory, 3 filesystem.
    gauge: i8,
    mountpoint: &'a str,
    value: f64,
    time_ns: i64,
    time_order: u64,
}

/// The gauges of `host_summaries`.
pub(super) const CPU: i8 = 1;
pub(super) const MEMORY: i8 = 2;
pub(super) const FILESYSTEM: i8 = 3;

impl ClickHouseStore {
    /// One commit ([`crate::store::EventStore::commit_batches`]). It marks its first cursor on
    /// the clock as in progress; the caller clears the mark afterwards.
    pub(super) async fn commit(
        &self,
        state: &mut WriteState,
        batches: &[IncomingBatch],
    ) -> Result<Vec<BatchCommit>, Failure> {
        let (marks, stored) =
            tokio::try_join!(self.stored_marks(batches), self.stored_keys(batches))?;

        // Decide, as the SQLite store does: the mark first, then the key.
        let mut pending_marks: HashMap<(&str, u64), u64> = HashMap::new();
        let mut claimed: HashSet<(&str, u64, u64)> = HashSet::new();
        let mut received = state.last_received_ns;
        let mut new = Vec::new();
        let mut answers: Vec<Option<usize>> = Vec::with_capacity(batches.len());
        for batch in batches {
            received = received.max(batch.received_ns);
            let spool = (batch.agent_id.as_str(), batch.spool_id);
            let floor = pending_marks
                .get(&spool)
                .or_else(|| marks.get(&(batch.agent_id.clone(), batch.spool_id)))
                .copied();
            let admission = dedup::admit(floor, batch.seq, batch.low_water_seq);
            let claimed_now = matches!(admission, Admission::Claim { .. })
                && !stored.contains(&(batch.agent_id.clone(), batch.spool_id, batch.seq))
                && claimed.insert((spool.0, spool.1, batch.seq));
            match admission {
                Admission::Claim { low_water }
                    if dedup::outcome(admission, claimed_now) == CommitOutcome::Stored =>
                {
                    pending_marks.insert(spool, low_water);
                    answers.push(Some(new.len()));
                    new.push(NewBatch {
                        batch,
                        low_water,
                        received_ns: received,
                        notices: Vec::new(),
                        start: Cursor::START,
                    });
                }
                _ => answers.push(None),
            }
        }
        if new.is_empty() {
            return Ok(answers.iter().map(|_| BatchCommit::Duplicate).collect());
        }

        // The trails, in commit order.
        let observed = self.load_trails(state, &new).await?;
        let mut trails: HashMap<&str, Trail> = HashMap::new();
        let mut breaks: Vec<(&str, Found)> = Vec::new();
        let mut summaries: HashMap<&str, HostSummary> = HashMap::new();
        // The trail places of the file-integrity events this commit stores, for the replay
        // check (the SQLite store finds them in its transaction).
        let mut received_here: HashSet<(&str, u64, &str)> = HashSet::new();
        for nb in &mut new {
            let batch = nb.batch;
            let agent = batch.agent_id.as_str();
            let mut summary = HostSummary::default();
            let mut found = Vec::new();
            for (idx, event) in batch.events.iter().enumerate() {
                match event {
                    Event::Fim(f) => {
                        let trail = trail_mut(&state.trails, &mut trails, agent);
                        // Rows have no id of their own here: an event's place in its batch,
                        // with the spool and batch, names its row.
                        let arrival = Arrival {
                            row: idx as i64,
                            spool_id: batch.spool_id,
                            batch_seq: batch.seq,
                        };
                        let copy = trail.needs_lookup(f)
                            && (received_here.contains(&(agent, f.seq, f.chain.as_str()))
                                || self.stored_copy(agent, f).await?);
                        found.extend(trail.receive(f, arrival, copy));
                        received_here.insert((agent, f.seq, f.chain.as_str()));
                    }
                    Event::Metric(m) => summary.observe(m),
                    Event::Log(_) | Event::Status(_) => {}
                }
            }
            let holds = trails
                .get(agent)
                .or_else(|| state.trails.get(agent).map(|c| &c.trail))
                .is_some_and(|t| !t.ahead.is_empty());
            if holds {
                let trail = trail_mut(&state.trails, &mut trails, agent);
                found.extend(trail.settle(batch.spool_id, nb.low_water));
            }
            nb.notices = found
                .iter()
                .map(|f| fim_trail::notice(agent, &f.brk, &f.path, nb.received_ns))
                .collect();
            breaks.extend(found.into_iter().map(|f| (agent, f)));
            if !summary.is_empty() {
                summaries.entry(agent).or_default().merge(&summary);
            }
        }

        // Cursors: each batch's events and notices in one block.
        let trail_version = {
            let mut clock = lock(&self.clock);
            for seen in observed {
                clock.clock.observe(seen);
            }
            let now = now_ms();
            for nb in &mut new {
                let batch = nb.batch;
                let count = batch.events.len() + nb.notices.len();
                nb.start = u64::try_from(count)
                    .ok()
                    .and_then(|count| clock.clock.take(now, count))
                    .ok_or_else(|| Failure::TooLarge {
                        agent_id: batch.agent_id.clone(),
                        spool_id: batch.spool_id,
                        seq: batch.seq,
                        events: batch.events.len(),
                        cursors: count,
                    })?;
                clock.in_flight.get_or_insert(nb.start);
            }
            if trails.is_empty() {
                0
            } else {
                clock.clock.take(now, 1).map_or(0, Cursor::position)
            }
        };

        // The feed first, within its deadline of the cursors: a follower reading behind its
        // clock must find the row before it passes the cursors, and then waits for the batches
        // to be stored (or their commit to fail).
        let feed_rows = new
            .iter()
            .map(|nb| super::follow::feed_row(nb.batch, &nb.notices, nb.start, nb.received_ns))
            .collect::<Result<Vec<_>, _>>()?;
        self.insert_rows::<super::follow::FeedRow<'static>>("feed", &feed_rows)
            .await?;
        drop(feed_rows);
        if let Some(first) = new.iter().map(|nb| nb.start).min() {
            super::follow::check_deadline(first, now_ms())?;
        }

        // The events and notices, and the hosts' summaries.
        let mut rows = Rows::default();
        for nb in &new {
            let batch = nb.batch;
            for (idx, event) in (0u32..).zip(batch.events.iter().chain(&nb.notices)) {
                let place = Place {
                    agent_id: &batch.agent_id,
                    spool_id: batch.spool_id,
                    seq: batch.seq,
                    idx,
                    cursor: nb.start.advance(idx as usize),
                    received_ns: nb.received_ns,
                };
                rows.push(place, event)?;
            }
        }
        let summary_rows = summary_rows(&summaries);
        tokio::try_join!(
            self.insert_rows::<super::rows::MetricRow<'static>>("metrics", &rows.metrics),
            self.insert_rows::<super::rows::LogRow<'static>>("logs", &rows.logs),
            self.insert_rows::<super::rows::FimRow<'static>>("fim", &rows.fim),
            self.insert_rows::<super::rows::StatusRow<'static>>("status", &rows.status),
            self.insert_rows::<SummaryRow<'static>>("host_summaries", &summary_rows),
        )?;
        drop(rows);

        // The trails, then what makes the batches stored.
        let trail_rows = trails
            .iter()
            .map(|(agent, trail)| trail_row(agent, trail, trail_version))
            .collect::<Result<Vec<_>, _>>()?;
        self.insert_rows::<TrailRow<'static>>("fim_trails", &trail_rows)
            .await?;
        let batch_rows: Vec<BatchRow<'_>> = new
            .iter()
            .map(|nb| BatchRow {
                agent_id: &nb.batch.agent_id,
                spool_id: nb.batch.spool_id,
                seq: nb.batch.seq,
                received_ns: nb.received_ns,
                start: nb.start.position(),
                events: u32::try_from(nb.batch.events.len() + nb.notices.len()).unwrap_or(u32::MAX),
            })
            .collect();
        let spool_rows: Vec<SpoolRow<'_>> = pending_marks
            .iter()
            .map(|(&(agent_id, spool_id), &low_water)| SpoolRow {
                agent_id,
                spool_id,
                low_water,
                last_batch_ns: received,
            })
            .collect();
        // The batches first: a mark that moved for a batch whose row did not land could answer
        // its resend `Duplicate` (an agent may send a mark above the batch's own seq).
        self.insert_rows::<BatchRow<'static>>("batches", &batch_rows)
            .await?;
        self.insert_rows::<SpoolRow<'static>>("spools", &spool_rows)
            .await?;

        // Stored: now the caches move and the breaks are told.
        for (agent, trail) in trails {
            state.trails.insert(
                agent.to_owned(),
                CachedTrail {
                    trail,
                    version: trail_version,
                },
            );
        }
        state.last_received_ns = received;
        for (agent_id, found) in &breaks {
            fim_trail::log_break(agent_id, found);
        }
        Ok(answers
            .into_iter()
            .map(|answer| match answer {
                Some(i) => BatchCommit::Stored {
                    start: new[i].start,
                    notices: new[i].notices.clone(),
                },
                None => BatchCommit::Duplicate,
            })
            .collect())
    }

    /// Inserts `rows` into `table` (nothing when there are none).
    async fn insert_rows<T>(&self, table: &str, rows: &[T::Value<'_>]) -> Result<(), Failure>
    where
        T: clickhouse::Row + clickhouse::RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let work = async {
            let mut insert = self.client().insert::<T>(table).await?;
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        };
        self.timed(work).await
    }

    /// The stored low-water marks of the batches' spools.
    async fn stored_marks(
        &self,
        batches: &[IncomingBatch],
    ) -> Result<HashMap<(String, u64), u64>, Failure> {
        let spools: HashSet<(&str, u64)> = batches
            .iter()
            .map(|b| (b.agent_id.as_str(), b.spool_id))
            .collect();
        let spools: Vec<_> = spools.into_iter().collect();
        let mut marks = HashMap::new();
        for chunk in spools.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "SELECT agent_id, spool_id, max(low_water) FROM spools
                 WHERE (agent_id, spool_id) IN ({})
                 GROUP BY agent_id, spool_id",
                vec!["(?, ?)"; chunk.len()].join(", ")
            );
            let mut query = self.client().query(&sql);
            for &(agent, spool) in chunk {
                query = query.bind(agent).bind(spool);
            }
            let found: Vec<(String, u64, u64)> = self.timed(query.fetch_all()).await?;
            marks.extend(found.into_iter().map(|(a, s, lw)| ((a, s), lw)));
        }
        Ok(marks)
    }

    /// Which of the batches' keys are stored.
    async fn stored_keys(
        &self,
        batches: &[IncomingBatch],
    ) -> Result<HashSet<(String, u64, u64)>, Failure> {
        let keys: HashSet<(&str, u64, u64)> = batches
            .iter()
            .map(|b| (b.agent_id.as_str(), b.spool_id, b.seq))
            .collect();
        let keys: Vec<_> = keys.into_iter().collect();
        let mut stored = HashSet::new();
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "SELECT agent_id, spool_id, seq FROM batches
                 WHERE (agent_id, spool_id, seq) IN ({})",
                vec!["(?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut query = self.client().query(&sql);
            for &(agent, spool, seq) in chunk {
                query = query.bind(agent).bind(spool).bind(seq);
            }
            let found: Vec<(String, u64, u64)> = self.timed(query.fetch_all()).await?;
            stored.extend(found);
        }
        Ok(stored)
    }

    /// Loads the stored trails this commit needs into the cache: those of agents sending
    /// file-integrity events, of agents whose trail holds events ahead, and of agents not met
    /// before. A trail another aggregator stored since this one cached it replaces the cached
    /// one. Answers the versions written by other nodes, which the clock must pass.
    async fn load_trails(
        &self,
        state: &mut WriteState,
        new: &[NewBatch<'_>],
    ) -> Result<Vec<Cursor>, Failure> {
        let mut wanted: Vec<&str> = Vec::new();
        for nb in new {
            let agent = nb.batch.agent_id.as_str();
            let needed = match state.trails.get(agent) {
                None => true,
                Some(cached) => {
                    !cached.trail.ahead.is_empty()
                        || nb.batch.events.iter().any(|e| matches!(e, Event::Fim(_)))
                }
            };
            if needed && !wanted.contains(&agent) {
                wanted.push(agent);
            }
        }
        let mut observed = Vec::new();
        for chunk in wanted.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "SELECT agent_id, version, has_end, end_seq, end_chain, ahead
                 FROM fim_trails FINAL WHERE agent_id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = self.client().query(&sql);
            for agent in chunk {
                query = query.bind(*agent);
            }
            let found: Vec<StoredTrail> = self.timed(query.fetch_all()).await?;
            for row in found {
                let (_, node, _) = parts(Cursor::from_position(row.version));
                let ours = node == self.node;
                if !ours {
                    observed.push(Cursor::from_position(row.version));
                }
                let stale = match state.trails.get(&row.agent_id) {
                    None => true,
                    // A newer version of this node's is a failed commit's: the cache is right.
                    Some(cached) => row.version > cached.version && !ours,
                };
                if stale {
                    let agent_id = row.agent_id.clone();
                    state.trails.insert(agent_id, stored_trail(row)?);
                }
            }
            for agent in chunk {
                state.trails.entry((*agent).to_owned()).or_default();
            }
        }
        Ok(observed)
    }

    /// Whether the agent has a file-integrity event with the same trail place and chain stored.
    async fn stored_copy(&self, agent_id: &str, event: &FimEvent) -> Result<bool, Failure> {
        let query = self
            .client()
            .query("SELECT count() FROM fim WHERE agent_id = ? AND fim_seq = ? AND chain = ?")
            .bind(agent_id)
            .bind(event.seq)
            .bind(event.chain.as_str());
        let n: u64 = self.timed(query.fetch_one()).await?;
        Ok(n > 0)
    }
}

/// The trail of `agent` for this commit to change: the one it changed already, else a copy of
/// the cached one.
fn trail_mut<'p, 'k>(
    cached: &HashMap<String, CachedTrail>,
    pending: &'p mut HashMap<&'k str, Trail>,
    agent: &'k str,
) -> &'p mut Trail {
    pending.entry(agent).or_insert_with(|| {
        cached
            .get(agent)
            .map(|c| c.trail.clone())
            .unwrap_or_default()
    })
}

fn trail_row<'a>(
    agent_id: &'a str,
    trail: &'a Trail,
    version: u64,
) -> Result<TrailRow<'a>, Failure> {
    let ahead: Vec<HeldJson> = trail
        .ahead
        .iter()
        .map(|(&seq, held)| HeldJson {
            seq,
            row: held.arrival.row,
            spool_id: held.arrival.spool_id,
            batch_seq: held.arrival.batch_seq,
            event: held.event.clone(),
        })
        .collect();
    Ok(TrailRow {
        agent_id,
        version,
        has_end: u8::from(trail.end.is_some()),
        end_seq: trail.end.as_ref().map_or(0, |p| p.seq),
        end_chain: trail.end.as_ref().map_or("", |p| p.chain.as_str()),
        ahead: serde_json::to_string(&ahead)?,
    })
}

fn stored_trail(row: StoredTrail) -> Result<CachedTrail, Failure> {
    let ahead: Vec<HeldJson> = if row.ahead.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&row.ahead)?
    };
    Ok(CachedTrail {
        trail: Trail {
            end: (row.has_end != 0).then_some(Position {
                seq: row.end_seq,
                chain: row.end_chain,
            }),
            ahead: ahead
                .into_iter()
                .map(|h| {
                    let held = Held {
                        arrival: Arrival {
                            row: h.row,
                            spool_id: h.spool_id,
                            batch_seq: h.batch_seq,
                        },
                        event: h.event,
                    };
                    (h.seq, held)
                })
                .collect(),
            last_received: None,
        },
        version: row.version,
    })
}

/// The rows of `host_summaries` for what this commit's metric points say.
fn summary_rows<'a>(summaries: &'a HashMap<&'a str, HostSummary>) -> Vec<SummaryRow<'a>> {
    let mut rows = Vec::new();
    for (&agent_id, s) in summaries {
        let row = |gauge, mountpoint, value, time_ns| SummaryRow {
            agent_id,
            gauge,
            mountpoint,
            value,
            time_ns,
            time_order: order_key(time_ns),
        };
        if let Some((value, time_ns)) = s.cpu_busy {
            rows.push(row(CPU, "", value, time_ns));
        }
        if let Some((value, time_ns)) = s.memory_used {
            rows.push(row(MEMORY, "", value, time_ns));
        }
        if let Some((mountpoint, value, time_ns)) = &s.fullest_fs {
            rows.push(row(FILESYSTEM, mountpoint, *value, *time_ns));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fim_trail::chained::trail;

    #[test]
    fn a_trail_reads_back_as_it_was_written() {
        let t = trail(5);
        let mut written = Trail::default();
        for (row, e) in (0..).zip(&t[..2]) {
            written.receive(
                e,
                Arrival {
                    row,
                    spool_id: 1,
                    batch_seq: 1,
                },
                false,
            );
        }
        written.receive(
            &t[4],
            Arrival {
                row: 3,
                spool_id: 1,
                batch_seq: 2,
            },
            false,
        );
        assert_eq!(written.ahead.len(), 1);
        let row = trail_row("a", &written, 77).unwrap();
        let stored = StoredTrail {
            agent_id: row.agent_id.to_owned(),
            version: row.version,
            has_end: row.has_end,
            end_seq: row.end_seq,
            end_chain: row.end_chain.to_owned(),
            ahead: row.ahead.clone(),
        };
        let read = stored_trail(stored).unwrap();
        assert_eq!(read.version, 77);
        assert_eq!(read.trail.end, written.end);
        assert_eq!(read.trail.ahead, written.ahead);
        // Not stored: received within one commit only.
        assert_eq!(read.trail.last_received, None);

        let nothing = Trail::default();
        let empty = trail_row("b", &nothing, 1).unwrap();
        assert_eq!((empty.has_end, empty.ahead.as_str()), (0, "[]"));
    }

    #[test]
    fn a_host_summary_is_a_row_per_gauge() {
        let summary = HostSummary {
            cpu_busy: Some((0.25, 10)),
            memory_used: None,
            fullest_fs: Some(("/var".to_owned(), 0.9, 11)),
        };
        let summaries = HashMap::from([("a", summary)]);
        let rows = summary_rows(&summaries);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.gauge, r.mountpoint, r.value, r.time_ns))
            .collect();
        assert_eq!(got, [(CPU, "", 0.25, 10), (FILESYSTEM, "/var", 0.9, 11)]);
        assert!(rows[0].time_order < rows[1].time_order);
    }
}
