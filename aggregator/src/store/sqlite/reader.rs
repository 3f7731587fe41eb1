//! The store opened for reading only: what the CLI's `fim` commands use, beside a running
//! aggregator or without one.
//!
//! It opens one read-only connection and never migrates, checkpoints or writes; in WAL mode it
//! reads the last committed state while the aggregator goes on committing. A store of another
//! schema version is refused: an older one is brought up to date by starting the aggregator.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use outpost_common::event::{EventKind, FimEvent};
use rusqlite::types::ToSql;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::codec::fim_change_name;
use super::commit::cursor_of;
use super::queries::{self, columns, fim_event};
use super::{BUSY_TIMEOUT, metrics, open_error, schema};
use crate::store::fim_trail::{Verification, Verifier};
use crate::store::series::{MetricAnswer, MetricQuery, MetricQueryError, SeriesInfo, SeriesPoints};
use crate::store::{FimQuery, StoreError, StoredEvent};

/// Trail events read per page while verifying.
const TRAIL_PAGE: i64 = 1000;

/// A read-only view of the embedded store.
#[derive(Debug)]
pub struct SqliteReader {
    path: PathBuf,
    conn: Connection,
}

/// The store was written by an older build and must be migrated before it can be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "its schema version {found} is older than this build's {current}; start outpost-aggregator \
     once to bring it up to date"
)]
struct SchemaTooOld {
    found: i64,
    current: i64,
}

impl SqliteReader {
    /// Opens the store at `path` for reading; it must exist and have this build's schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = open_error(path);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        let current = schema::current_version();
        if found > current {
            return Err(StoreError::SchemaTooNew {
                location: path.display().to_string(),
                found,
                supported: current,
            });
        }
        if found < current {
            return Err(StoreError::Open {
                path: path.to_owned(),
                source: Arc::new(SchemaTooOld { found, current }),
            });
        }
        Ok(SqliteReader {
            path: path.to_owned(),
            conn,
        })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers a metric query, as the running aggregator would.
    pub fn metric_query(&self, query: &MetricQuery) -> Result<MetricAnswer, MetricQueryError> {
        metrics::metric_query(&self.conn, query)
    }

    /// Every stored point of the metric `name` (of one agent, or all), rows and chunks alike,
    /// per series: what a loss check counts.
    pub fn metric_points(
        &self,
        agent_id: Option<&str>,
        name: &str,
    ) -> Result<Vec<SeriesPoints>, StoreError> {
        metrics::all_points(&self.conn, agent_id, name)
    }

    /// Every stored point of the metric `name` of every agent, handed to `visit` one series at a
    /// time, however many series there are: what a loss check over a large fleet counts, in one
    /// pass instead of one query per agent.
    pub fn each_metric_series(
        &self,
        name: &str,
        visit: impl FnMut(SeriesInfo, Vec<(i64, f64)>),
    ) -> Result<(), StoreError> {
        metrics::each_series_points(&self.conn, None, name, usize::MAX, visit)
    }

    /// Every log record of `agent_id` from `source`, in storage order, rows and blocks alike:
    /// what a loss check reads.
    pub fn logs(&self, agent_id: &str, source: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let context = || format!("reading the logs of {agent_id} from {source}");
        let Some(key) = self
            .agent_key(agent_id)
            .map_err(|e| StoreError::backend(context(), e))?
        else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT e.id, a.agent_id, e.time_ns, e.received_ns, {columns}
             FROM logs e JOIN agents a USING (agent_key)
             WHERE e.agent_key = ?1 AND e.source = ?2 ORDER BY e.id",
            columns = columns(EventKind::Log),
        );
        let mut found = self
            .conn
            .prepare(&sql)
            .and_then(|mut s| {
                s.query_map(params![key, source], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        queries::stored_event(EventKind::Log, r)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| StoreError::backend(context(), e))?;
        let scan = queries::BlockScan {
            ids: 0..i64::MAX,
            agent_key: Some(key),
            time_ns: None,
            source: Some(source),
            limit: usize::MAX,
        };
        found.extend(
            queries::block_logs(&self.conn, &scan)
                .map_err(|e| StoreError::backend(context(), e))?,
        );
        found.sort_by_key(|(id, _)| *id);
        Ok(found.into_iter().map(|(_, e)| e).collect())
    }

    /// The latest `query.limit` file-integrity changes matching `query`, oldest first (by the
    /// agent's time, then storage order).
    pub fn fim_changes(&self, query: &FimQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let context = || format!("listing file-integrity changes ({query:?})");
        let mut conditions: Vec<&str> = Vec::new();
        let mut values: Vec<Box<dyn ToSql>> = Vec::new();
        if let Some(agent_id) = &query.agent_id {
            match self
                .agent_key(agent_id)
                .map_err(|e| StoreError::backend(context(), e))?
            {
                Some(key) => {
                    conditions.push("e.agent_key = ?");
                    values.push(Box::new(key));
                }
                None => return Ok(Vec::new()),
            }
        }
        if let Some(prefix) = query.path_prefix.as_deref().filter(|p| !p.is_empty()) {
            // The range lets the path index find the rows; the comparison makes it exact.
            conditions.push("e.path >= ? AND substr(e.path, 1, length(?)) = ?");
            values
                .extend([prefix, prefix, prefix].map(|p| Box::new(p.to_owned()) as Box<dyn ToSql>));
            if let Some(above) = prefix_upper_bound(prefix) {
                conditions.push("e.path < ?");
                values.push(Box::new(above));
            }
        }
        if let Some(change) = query.change {
            conditions.push("e.change = ?");
            values.push(Box::new(fim_change_name(change)));
        }
        if let Some(Range { start, end }) = query.time_ns {
            conditions.push("e.time_ns >= ? AND e.time_ns < ?");
            values.push(Box::new(start));
            values.push(Box::new(end));
        }
        values.push(Box::new(
            i64::try_from(query.limit.max(1)).unwrap_or(i64::MAX),
        ));
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT e.id, a.agent_id, e.time_ns, e.received_ns, {columns}
             FROM fim_events e JOIN agents a USING (agent_key)
             {filter}
             ORDER BY e.time_ns DESC, e.id DESC LIMIT ?",
            columns = columns(EventKind::Fim),
        );
        let rows = self.conn.prepare(&sql).and_then(|mut s| {
            s.query_map(rusqlite::params_from_iter(values.iter()), stored_fim)?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
        let mut rows = rows.map_err(|e| StoreError::backend(context(), e))?;
        rows.reverse();
        Ok(rows)
    }

    /// Walks the agent's stored trail in `seq` order, recomputing every chain
    /// ([`Verifier`]); `None` when no agent of that id is registered. Rows stored before the
    /// trail existed (schema 4) have no place in it and are left out.
    ///
    /// The resets recorded on arrival split the trail into parts, each walked on its own from
    /// the event that began it. (A reset row deleted from `fim_trail_breaks` only makes the two
    /// parts show as one with every event stored twice, still broken.)
    pub fn verify_trail(&self, agent_id: &str) -> Result<Option<Verification>, StoreError> {
        let context = || format!("verifying the file-integrity trail of agent {agent_id}");
        let Some(key) = self
            .agent_key(agent_id)
            .map_err(|e| StoreError::backend(context(), e))?
        else {
            return Ok(None);
        };
        let resets: Vec<i64> = self
            .conn
            .prepare_cached(
                "SELECT event_id FROM fim_trail_breaks WHERE agent_key = ?1 AND kind = 'reset'
                 ORDER BY event_id",
            )
            .and_then(|mut s| {
                s.query_map([key], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(|e| StoreError::backend(context(), e))?;
        let sql = format!(
            "SELECT e.id, a.agent_id, e.time_ns, e.received_ns, {columns}
             FROM fim_events e JOIN agents a USING (agent_key)
             WHERE e.agent_key = ?1 AND e.seq IS NOT NULL AND e.id >= ?2 AND e.id < ?3
               AND (e.seq, e.id) > (?4, ?5)
             ORDER BY e.seq, e.id LIMIT ?6",
            columns = columns(EventKind::Fim),
        );
        let mut verifier = Verifier::new();
        let starts = std::iter::once(i64::MIN).chain(resets.iter().copied());
        let ends = resets.iter().copied().chain(std::iter::once(i64::MAX));
        for (part, (first_id, end_id)) in starts.zip(ends).enumerate() {
            if part > 0 {
                verifier.restart();
            }
            // Seqs are stored as signed integers; a trail counts up from 1, far below the sign.
            let mut after = (i64::MIN, i64::MIN);
            loop {
                let page = self
                    .conn
                    .prepare_cached(&sql)
                    .and_then(|mut s| {
                        let args = params![key, first_id, end_id, after.0, after.1, TRAIL_PAGE];
                        s.query_map(args, |r| {
                            Ok((r.get::<_, i64>(0)?, fim_event(r, r.get(2)?, 4)?))
                        })?
                        .collect::<rusqlite::Result<Vec<(i64, FimEvent)>>>()
                    })
                    .map_err(|e| StoreError::backend(context(), e))?;
                for (_, event) in &page {
                    verifier.push(event);
                }
                match page.last() {
                    Some((id, event)) if page.len() as i64 == TRAIL_PAGE => {
                        after = (event.seq.cast_signed(), *id);
                    }
                    _ => break,
                }
            }
        }
        Ok(Some(verifier.finish()))
    }

    /// How many breaks were recorded when the agent's events arrived.
    pub fn recorded_trail_breaks(&self, agent_id: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM fim_trail_breaks
                 WHERE agent_key = (SELECT agent_key FROM agents WHERE agent_id = ?1)",
                [agent_id],
                |r| r.get::<_, i64>(0),
            )
            .map(i64::cast_unsigned)
            .map_err(|e| {
                StoreError::backend(format!("counting the trail breaks of agent {agent_id}"), e)
            })
    }

    fn agent_key(&self, agent_id: &str) -> rusqlite::Result<Option<i64>> {
        self.conn
            .prepare_cached("SELECT agent_key FROM agents WHERE agent_id = ?1")?
            .query_row([agent_id], |r| r.get(0))
            .optional()
    }
}

fn stored_fim(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        cursor: cursor_of(r.get(0)?),
        agent_id: r.get(1)?,
        received_ns: r.get(3)?,
        event: outpost_common::event::Event::Fim(fim_event(r, r.get(2)?, 4)?),
    })
}

/// The least text above every text starting with `prefix`: its last character replaced by the
/// next one. UTF-8 sorts as code points do, so `prefix <= path < bound` holds exactly for the
/// paths that start with `prefix`. `None` when no character follows the last.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars = prefix.chars();
    let last = chars.next_back()?;
    let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32)?;
    let mut bound = chars.as_str().to_owned();
    bound.push(next);
    Some(bound)
}

#[cfg(test)]
mod tests;
