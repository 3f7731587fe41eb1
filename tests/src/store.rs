//! Read-only queries on the aggregator's store (SQLite in WAL mode: a read-only connection reads
//! consistently while the aggregator writes).

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_aggregator::store::SqliteReader;
use outpost_common::event::{Event, LogRecord, Severity};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// The key of agent `?1` in the store's tables.
const AGENT_KEY: &str = "(SELECT agent_key FROM agents WHERE agent_id = ?1)";

use crate::{Kind, SeqReport};

/// The aggregator's `aggregator.db`. Every query opens a fresh read-only connection, so it
/// sees the latest commit. Queries return `Err` with a description while the file is not
/// there yet, so they can be polled by [`crate::Env::wait_for`].
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub(crate) fn new(path: PathBuf) -> Self {
        Store { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<Connection, String> {
        if !self.path.exists() {
            return Err(format!("{} does not exist yet", self.path.display()));
        }
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| self.error(e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| self.error(e))?;
        Ok(conn)
    }

    /// The aggregator's own reader of the store, which reads what it keeps packed (metric
    /// chunks, log blocks) as well as rows.
    fn reader(&self) -> Result<SqliteReader, String> {
        if !self.path.exists() {
            return Err(format!("{} does not exist yet", self.path.display()));
        }
        SqliteReader::open(&self.path).map_err(|e| e.to_string())
    }

    fn error(&self, e: rusqlite::Error) -> String {
        format!("{}: {e}", self.path.display())
    }

    /// The number of every stored synthetic event of `agent_id` (a log's `synthetic.seq`
    /// attribute, a metric point's value), sorted, repeats kept, and the numbers of events that
    /// do not carry theirs as they should (a log body without it, a value not a whole number).
    fn seqs(&self, agent_id: &str, kind: Kind) -> Result<(Vec<u64>, Vec<u64>), String> {
        if kind == Kind::Metric {
            return self.metric_seqs(agent_id);
        }
        let mut seqs = Vec::new();
        let mut mismatched = Vec::new();
        for record in self.log_records(agent_id, "synthetic")? {
            let seq = record
                .attributes
                .iter()
                .find(|(k, _)| k == "synthetic.seq")
                .and_then(|(_, v)| v.parse::<u64>().ok());
            match seq {
                Some(seq) => {
                    seqs.push(seq);
                    if !record.body.contains(&format!("{seq:012}")) {
                        mismatched.push(seq);
                    }
                }
                // Not one the agent made: reported as a mismatch of no number.
                None => mismatched.push(u64::MAX),
            }
        }
        seqs.sort_unstable();
        Ok((seqs, mismatched))
    }

    /// The log records of `agent_id` from `source`, in storage order, read through the
    /// aggregator's own reader so that bodies kept in blocks are read as well.
    fn log_records(&self, agent_id: &str, source: &str) -> Result<Vec<LogRecord>, String> {
        let reader = self.reader()?;
        let stored = reader.logs(agent_id, source).map_err(|e| e.to_string())?;
        Ok(stored
            .into_iter()
            .filter_map(|e| match e.event {
                Event::Log(record) => Some(record),
                _ => None,
            })
            .collect())
    }

    /// [`Store::seqs`] of the synthetic counter (point `n` has the value `n`), read through the
    /// aggregator's own reader so that points already packed into chunks are counted with those
    /// still in rows.
    fn metric_seqs(&self, agent_id: &str) -> Result<(Vec<u64>, Vec<u64>), String> {
        let reader = self.reader()?;
        let series = reader
            .metric_points(Some(agent_id), "synthetic.counter")
            .map_err(|e| e.to_string())?;
        // Point `n` is the value `n`; a value that is not a whole number is not one the agent
        // made, and is reported by its integer part.
        let mut seqs = Vec::new();
        let mut mismatched = Vec::new();
        for (_, points) in series {
            for (_, value) in points {
                let seq = value as u64;
                seqs.push(seq);
                if value.fract() != 0.0 || value < 0.0 {
                    mismatched.push(seq);
                }
            }
        }
        seqs.sort_unstable();
        Ok((seqs, mismatched))
    }

    /// What the store holds of `agent_id`'s synthetic events, against the expected `0..total`.
    pub fn seq_report(&self, agent_id: &str, kind: Kind, total: u64) -> Result<SeqReport, String> {
        let (seqs, mismatched) = self.seqs(agent_id, kind)?;
        Ok(SeqReport::new(&seqs, total, mismatched))
    }

    /// What `stores` hold together of `agent_id`'s synthetic events, against the expected
    /// `0..total`: an event stored in two of them counts as a repeat.
    pub fn union_seq_report(
        stores: &[&Store],
        agent_id: &str,
        kind: Kind,
        total: u64,
    ) -> Result<SeqReport, String> {
        let mut all = Vec::new();
        let mut all_mismatched = Vec::new();
        for store in stores {
            let (seqs, mismatched) = store.seqs(agent_id, kind)?;
            all.extend(seqs);
            all_mismatched.extend(mismatched);
        }
        all.sort_unstable();
        Ok(SeqReport::new(&all, total, all_mismatched))
    }

    /// How many synthetic events of `agent_id` are stored (repeats included).
    pub fn synthetic_count(&self, agent_id: &str, kind: Kind) -> Result<u64, String> {
        match kind {
            Kind::Log => Ok(self.log_records(agent_id, "synthetic")?.len() as u64),
            Kind::Metric => Ok(self.metric_seqs(agent_id)?.0.len() as u64),
        }
    }

    /// The log records of `agent_id` from `source`, oldest first: body, severity and attributes
    /// (a JSON object, `{}` when there are none).
    pub fn logs(&self, agent_id: &str, source: &str) -> Result<Vec<StoredLog>, String> {
        let records = self.log_records(agent_id, source)?;
        Ok(records
            .into_iter()
            .map(|record| StoredLog {
                severity: record
                    .severity
                    .and_then(|s| Severity::ALL.iter().position(|&level| level == s))
                    .map(|level| level as u8),
                attributes: serde_json::Value::Object(
                    record
                        .attributes
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect(),
                ),
                time_ns: record.time_ns,
                body: record.body,
            })
            .collect())
    }

    /// How many status snapshots of `agent_id` are stored.
    pub fn status_count(&self, agent_id: &str) -> Result<u64, String> {
        self.count(
            "SELECT count(*) FROM agent_status
              WHERE agent_key = (SELECT agent_key FROM agents WHERE agent_id = ?1)",
            agent_id,
        )
    }

    /// Rows of every event table that belong to `agent_id`.
    pub fn all_events(&self, agent_id: &str) -> Result<u64, String> {
        let mut total = self.count(
            &format!(
                "SELECT coalesce(sum(c.points), 0) FROM metric_chunks c JOIN metric_series s USING (series_id)
                  WHERE s.agent_key = {AGENT_KEY}"
            ),
            agent_id,
        )?;
        total += self.count(
            &format!("SELECT coalesce(sum(logs), 0) FROM log_blocks WHERE agent_key = {AGENT_KEY}"),
            agent_id,
        )?;
        for table in ["metrics", "logs", "fim_events", "agent_status"] {
            total += self.count(
                &format!(
                    "SELECT count(*) FROM {table}
                      WHERE agent_key = (SELECT agent_key FROM agents WHERE agent_id = ?1)"
                ),
                agent_id,
            )?;
        }
        Ok(total)
    }

    /// The file-integrity events of `agent_id`, in the order stored: path, change
    /// (`created`, `modified`, …), and the states before and after (JSON, `Null` when absent).
    pub fn fim_events(&self, agent_id: &str) -> Result<Vec<StoredFim>, String> {
        let conn = self.open()?;
        let mut stmt = conn
            .prepare(
                "SELECT path, change, before, after, changed, moved_from, detected_by, seq FROM fim_events
                  WHERE agent_key = (SELECT agent_key FROM agents WHERE agent_id = ?1)
                  ORDER BY id",
            )
            .map_err(|e| self.error(e))?;
        let json = |s: Option<String>| {
            s.and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        let rows = stmt
            .query_map([agent_id], |r| {
                Ok(StoredFim {
                    path: r.get(0)?,
                    change: r.get(1)?,
                    before: json(r.get(2)?),
                    after: json(r.get(3)?),
                    changed: r
                        .get::<_, Option<String>>(4)?
                        .and_then(|s| serde_json::from_str(&s).ok())
                        .unwrap_or_default(),
                    moved_from: r.get(5)?,
                    detected_by: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                    seq: r.get::<_, Option<i64>>(7)?.unwrap_or(0).cast_unsigned(),
                })
            })
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(e))
    }

    /// How many metric points named `name` are stored, from any agent.
    pub fn metric_count(&self, name: &str) -> Result<u64, String> {
        self.count(
            "SELECT (SELECT count(*) FROM metrics WHERE name = ?1)
                  + (SELECT coalesce(sum(c.points), 0) FROM metric_chunks c
                       JOIN metric_series s USING (series_id) WHERE s.name = ?1)",
            name,
        )
    }

    /// Metric points stored as rows (the head), and packed into chunks.
    pub fn metric_layout(&self) -> Result<(u64, u64), String> {
        let conn = self.open()?;
        conn.query_row(
            "SELECT (SELECT count(*) FROM metric_points),
                    (SELECT coalesce(sum(points), 0) FROM metric_chunks)",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?.cast_unsigned(),
                    r.get::<_, i64>(1)?.cast_unsigned(),
                ))
            },
        )
        .map_err(|e| self.error(e))
    }

    /// The distinct units stored with metric points named `name`.
    pub fn metric_units(&self, name: &str) -> Result<Vec<String>, String> {
        let conn = self.open()?;
        let mut q = conn
            .prepare("SELECT DISTINCT unit FROM metric_series WHERE name = ?1 ORDER BY unit")
            .map_err(|e| self.error(e))?;
        q.query_map([name], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(|e| self.error(e))
    }

    /// Whether the registry has ever heard of `agent_id`.
    pub fn knows_agent(&self, agent_id: &str) -> Result<bool, String> {
        Ok(self.count("SELECT count(*) FROM agents WHERE agent_id = ?1", agent_id)? > 0)
    }

    /// Dedup entries (stored batches) of `agent_id`.
    pub fn batches(&self, agent_id: &str) -> Result<u64, String> {
        self.count(
            "SELECT count(*) FROM batches
              WHERE agent_key = (SELECT agent_key FROM agents WHERE agent_id = ?1)",
            agent_id,
        )
    }

    /// The agent's latest status (from its last heartbeat or Hello), as JSON.
    pub fn latest_status(&self, agent_id: &str) -> Result<Option<serde_json::Value>, String> {
        let conn = self.open()?;
        let text: Option<Option<String>> = conn
            .query_row(
                "SELECT status FROM agents WHERE agent_id = ?1",
                [agent_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.error(e))?;
        text.flatten()
            .map(|t| {
                serde_json::from_str(&t).map_err(|e| format!("agents.status of {agent_id}: {e}"))
            })
            .transpose()
    }

    fn count(&self, sql: &str, agent_id: &str) -> Result<u64, String> {
        let conn = self.open()?;
        conn.query_row(sql, [agent_id], |r| r.get::<_, i64>(0))
            .map(i64::cast_unsigned)
            .map_err(|e| self.error(e))
    }
}

/// One stored log record, as [`Store::logs`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLog {
    pub body: String,
    pub severity: Option<u8>,
    pub attributes: serde_json::Value,
    pub time_ns: i64,
}

/// A file-integrity event as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFim {
    pub path: String,
    pub change: String,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
    /// The names of the attributes that changed.
    pub changed: Vec<String>,
    pub moved_from: Option<String>,
    /// `realtime`, `scheduled` or `rescan`.
    pub detected_by: String,
    pub seq: u64,
}
