//! The loss check: every event a simulated agent's spool accepted is in the aggregator's store
//! exactly once, or its absence is explained by a counted drop, or (for an agent whose
//! certificate was revoked) by its batch still waiting in that agent's spool.
//!
//! Per agent and kind, against the agent's own tally:
//! - **log lines** carry their number (`sim.seq`): the stored numbers must be distinct, below
//!   the number of lines made, and as many as the lines acknowledged;
//! - **metric points**: no series may hold two points of one time, and as many points as were
//!   acknowledged must be stored;
//! - **file-integrity changes** have unique paths: as many distinct paths as changes
//!   acknowledged, no path twice; and the aggregator must have recorded no break in any trail.
//!
//! An agent whose certificate was revoked may have had a batch stored whose acknowledgement
//! never arrived (the connection was closed under it): for those, the store may hold up to the
//! events still held, and nothing twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::Context;
use outpost_aggregator::store::fim_trail::NOTICE_SOURCE;
use outpost_aggregator::store::{EventQuery, EventStore, SqliteReader};
use outpost_common::event::Event;
use rusqlite::{Connection, OpenFlags};

use super::backlog::KindCounts;
use super::fleet::Fleet;
use super::host::LOG_SOURCE;
use crate::SeqReport;

/// Problems listed in a report at most; the counts are always exact.
const LISTED: usize = 10;

/// What the loss check found.
#[derive(Debug, Clone, Default)]
pub struct LossCheck {
    pub agents: usize,
    /// Events the spools accepted, by kind.
    pub accepted: KindCounts,
    /// Events in the store, by kind (duplicates included).
    pub stored: KindCounts,
    /// Events stored more than once.
    pub duplicates: u64,
    /// Events acknowledged but not stored, or stored but never made.
    pub unexplained: u64,
    /// Events dropped by a spool and counted.
    pub dropped: KindCounts,
    /// Events still held by the spools of revoked agents.
    pub held_by_revoked: KindCounts,
    /// Breaks the aggregator recorded in file-integrity trails.
    pub trail_breaks: u64,
    /// The first problems found, per agent.
    pub problems: Vec<String>,
}

impl LossCheck {
    pub fn passed(&self) -> bool {
        self.duplicates == 0
            && self.unexplained == 0
            && self.trail_breaks == 0
            && self.problems.is_empty()
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < LISTED {
            self.problems.push(text);
        }
    }
}

impl fmt::Display for LossCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} agents; accepted {} events ({} metric points, {} log lines, {} file changes), \
             stored {}, duplicates {}, unexplained {}, dropped and counted {}, held by revoked \
             agents {}, trail breaks {}",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.agents,
            self.accepted.total(),
            self.accepted.metrics,
            self.accepted.logs,
            self.accepted.fim,
            self.stored.total(),
            self.duplicates,
            self.unexplained,
            self.dropped.total(),
            self.held_by_revoked.total(),
            self.trail_breaks,
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// A metric point's series (name, attributes) and time.
type PointKey = (String, Vec<(String, String)>, i64);

/// What one agent has in the store, read through the event-store trait.
#[derive(Debug, Default)]
struct AgentEvents {
    log_seqs: Vec<u64>,
    /// Metric points, and how many repeat a (series, time) pair.
    metric_points: u64,
    metric_repeats: u64,
    metric_seen: HashSet<PointKey>,
    /// File-integrity changes, and their distinct paths.
    fim: u64,
    fim_paths: HashSet<String>,
}

/// Checks any event store (the ClickHouse one) against every agent of `fleet`, reading every
/// stored event once through [`EventStore::events`]: what [`check`] does with the embedded
/// store's own reader. Trail breaks are the notices the store added.
pub fn check_events(store: &dyn EventStore, fleet: &Fleet) -> anyhow::Result<LossCheck> {
    let mut by_agent: HashMap<String, AgentEvents> = HashMap::new();
    let mut trail_breaks = 0;
    let mut query = EventQuery {
        limit: 10_000,
        ..EventQuery::default()
    };
    loop {
        let page = store.events(&query).context("reading the stored events")?;
        for stored in page.events {
            let agent = by_agent.entry(stored.agent_id).or_default();
            match stored.event {
                Event::Log(l) if l.source == NOTICE_SOURCE => trail_breaks += 1,
                Event::Log(l) if l.source == LOG_SOURCE => {
                    if let Some(seq) = l
                        .attributes
                        .iter()
                        .find(|(k, _)| k == "sim.seq")
                        .and_then(|(_, v)| v.parse().ok())
                    {
                        agent.log_seqs.push(seq);
                    }
                }
                Event::Metric(m) => {
                    agent.metric_points += 1;
                    if !agent.metric_seen.insert((m.name, m.attributes, m.time_ns)) {
                        agent.metric_repeats += 1;
                    }
                }
                Event::Fim(f) => {
                    agent.fim += 1;
                    agent.fim_paths.insert(f.path);
                }
                Event::Log(_) | Event::Status(_) => {}
            }
        }
        match page.next {
            Some(next) => query.from = next,
            None => break,
        }
    }
    let mut logs = HashMap::new();
    let mut metrics = HashMap::new();
    let mut fim = BTreeMap::new();
    for (id, mut agent) in by_agent {
        agent.log_seqs.sort_unstable();
        logs.insert(id.clone(), agent.log_seqs);
        metrics.insert(id.clone(), (agent.metric_points, agent.metric_repeats));
        fim.insert(id, (agent.fim, agent.fim_paths.len() as u64));
    }
    compare(fleet, &metrics, &fim, trail_breaks, |id| {
        Ok(logs.remove(id).unwrap_or_default())
    })
}

/// Checks the store at `db` against every agent of `fleet`. Call it once the spools of the
/// agents not revoked are empty.
pub fn check(db: &Path, fleet: &Fleet, metric_names: &[String]) -> anyhow::Result<LossCheck> {
    let reader = SqliteReader::open(db).with_context(|| format!("opening {}", db.display()))?;
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))?;
    // Metric points per agent: how many, and how many repeat a (series, time) pair. One pass per
    // metric over every agent's series.
    let mut metric_points: HashMap<String, (u64, u64)> = HashMap::new();
    for name in metric_names {
        reader
            .each_metric_series(name, |info, points| {
                let entry = metric_points.entry(info.agent_id).or_default();
                let mut times = HashSet::with_capacity(points.len());
                for (t, _) in &points {
                    entry.0 += 1;
                    if !times.insert(*t) {
                        entry.1 += 1;
                    }
                }
            })
            .with_context(|| format!("reading the points of {name}"))?;
    }
    let fim = fim_counts(&conn)?;
    let trail_breaks = conn
        .query_row("SELECT count(*) FROM fim_trail_breaks", [], |r| {
            r.get::<_, i64>(0)
        })
        .context("counting trail breaks")?
        .unsigned_abs();
    compare(fleet, &metric_points, &fim, trail_breaks, |id| {
        let stored = reader
            .logs(id, LOG_SOURCE)
            .with_context(|| format!("reading the log lines of {id}"))?;
        let mut seqs: Vec<u64> = stored
            .iter()
            .filter_map(|e| match &e.event {
                Event::Log(l) => l
                    .attributes
                    .iter()
                    .find(|(k, _)| k == "sim.seq")
                    .and_then(|(_, v)| v.parse().ok()),
                _ => None,
            })
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    })
}

/// Compares what the store holds with every agent's own tally: metric points and repeats,
/// file-integrity changes and distinct paths, per agent; each agent's log numbers from
/// `log_seqs` (sorted).
fn compare(
    fleet: &Fleet,
    metric_points: &HashMap<String, (u64, u64)>,
    fim: &BTreeMap<String, (u64, u64)>,
    trail_breaks: u64,
    mut log_seqs: impl FnMut(&str) -> anyhow::Result<Vec<u64>>,
) -> anyhow::Result<LossCheck> {
    let mut out = LossCheck {
        agents: fleet.agents.len(),
        trail_breaks,
        ..LossCheck::default()
    };
    for agent in &fleet.agents {
        let tally = agent.backlog.tally();
        let revoked = agent.revoked.load(Ordering::Relaxed);
        out.accepted.add(&tally.accepted);
        out.dropped.add(&tally.dropped);
        if revoked {
            out.held_by_revoked.add(&tally.held);
        } else if tally.held.total() > 0 {
            out.unexplained += tally.held.total();
            out.problem(format!(
                "{}: {} events still in its spool at the check",
                agent.id,
                tally.held.total()
            ));
        }
        // How many of each kind the store must hold: at least the acknowledged, at most those
        // plus what a revoked agent still holds.
        let range = |acked: u64, held: u64| (acked, if revoked { acked + held } else { acked });

        // Log lines.
        let seqs = log_seqs(&agent.id)?;
        let report = SeqReport::new(&seqs, tally.accepted.logs, Vec::new());
        out.stored.logs += report.count;
        out.duplicates += report.count - report.distinct;
        out.unexplained += report.out_of_range;
        let (low, high) = range(tally.acked.logs, tally.held.logs);
        if report.distinct < low || report.distinct > high || report.repeated_count > 0 {
            out.unexplained += outside(report.distinct, low, high);
            out.problem(format!(
                "{}: log lines: {} acknowledged, {} held, {} dropped; the store: {report}",
                agent.id, tally.acked.logs, tally.held.logs, tally.dropped.logs
            ));
        }

        // Metric points.
        let (count, repeats) = metric_points.get(&agent.id).copied().unwrap_or_default();
        out.stored.metrics += count;
        out.duplicates += repeats;
        let (low, high) = range(tally.acked.metrics, tally.held.metrics);
        let distinct = count - repeats;
        if distinct < low || distinct > high || repeats > 0 {
            out.unexplained += outside(distinct, low, high);
            out.problem(format!(
                "{}: metric points: {} acknowledged, {} held; the store has {count}, {repeats} of \
                 them repeating a series' time",
                agent.id, tally.acked.metrics, tally.held.metrics
            ));
        }

        // File-integrity changes.
        let (count, distinct) = fim.get(&agent.id).copied().unwrap_or_default();
        out.stored.fim += count;
        out.duplicates += count - distinct;
        let (low, high) = range(tally.acked.fim, tally.held.fim);
        if distinct < low || distinct > high || count > distinct {
            out.unexplained += outside(distinct, low, high);
            out.problem(format!(
                "{}: file changes: {} acknowledged, {} held; the store has {count}, {distinct} \
                 distinct paths",
                agent.id, tally.acked.fim, tally.held.fim
            ));
        }
    }
    Ok(out)
}

/// How far `n` is outside `low..=high`.
fn outside(n: u64, low: u64, high: u64) -> u64 {
    low.saturating_sub(n) + n.saturating_sub(high)
}

/// Per agent: file-integrity changes stored, and distinct paths among them.
fn fim_counts(conn: &Connection) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT a.agent_id, count(*), count(DISTINCT f.path)
         FROM fim_events f JOIN agents a USING (agent_key) GROUP BY a.agent_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (
                r.get::<_, i64>(1)?.unsigned_abs(),
                r.get::<_, i64>(2)?.unsigned_abs(),
            ),
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
