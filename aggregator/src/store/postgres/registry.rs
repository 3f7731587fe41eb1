//! The agent registry: one row per agent, changed by [`RegistryUpdate`]s, read by fleet status.
//!
//! [`record_all`] applies a round of updates in one transaction and few round trips whatever
//! its size: it registers the agents not seen before, locks every row the round touches (in
//! agent order, so that two aggregators' rounds cannot deadlock), applies the updates in Rust
//! ([`AgentRow::apply`], the same rules as the SQLite store's SQL), writes the rows back with one
//! statement and bumps the registry generation last, so the row every round locks is held for
//! the commit only.

use std::collections::BTreeMap;

use outpost_common::event::AgentStatus;
use postgres::{Client, Row, Transaction};

use super::{BadValue, Fail, from_json, pg_text, to_json};
use crate::store::marks::{StatusMarks, clock_skew_ns};
use crate::store::{AgentRecord, RegistryUpdate};

/// The registry's generation.
pub(super) const GENERATION: &str = "SELECT value FROM registry_generation";

/// Bumped by every transaction that changes what the registry answers.
const BUMP_GENERATION: &str = "UPDATE registry_generation SET value = value + 1";

/// The columns an [`AgentRow`] is read from, in [`decode`]'s order.
macro_rules! columns {
    () => {
        "agent_id, spool_id, first_seen_ns, last_seen_ns, agent_version, host, labels, \
         connected, last_disconnect_ns, last_disconnect_reason, status, status_received_ns, \
         drops_changed_ns, drops_last_increase, backlog_rising_since_ns, clock_skew_ns, \
         removed_ns"
    };
}

/// Registers the agents of a round not seen before, first seen at their first update's time.
const REGISTER: &str = "
INSERT INTO agents (agent_id, first_seen_ns, last_seen_ns)
SELECT agent_id, now_ns, now_ns FROM unnest($1::text[], $2::bigint[]) AS new (agent_id, now_ns)
ON CONFLICT (agent_id) DO NOTHING";

/// The rows a round changes, locked until it commits.
const LOCK: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM agents WHERE agent_id = ANY ($1) ORDER BY agent_id FOR UPDATE"
);

/// The rows as the round leaves them.
const WRITE_BACK: &str = "
UPDATE agents AS a SET
    spool_id = u.spool_id, last_seen_ns = u.last_seen_ns, agent_version = u.agent_version,
    host = u.host, labels = u.labels, connected = u.connected,
    last_disconnect_ns = u.last_disconnect_ns, last_disconnect_reason = u.last_disconnect_reason,
    status = u.status, status_received_ns = u.status_received_ns,
    drops_changed_ns = u.drops_changed_ns, drops_last_increase = u.drops_last_increase,
    backlog_rising_since_ns = u.backlog_rising_since_ns, clock_skew_ns = u.clock_skew_ns,
    removed_ns = u.removed_ns
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
            $7::boolean[], $8::bigint[], $9::text[], $10::text[], $11::bigint[],
            $12::bigint[], $13::text[], $14::bigint[], $15::bigint[], $16::bigint[])
    AS u (agent_id, spool_id, last_seen_ns, agent_version, host, labels, connected,
          last_disconnect_ns, last_disconnect_reason, status, status_received_ns,
          drops_changed_ns, drops_last_increase, backlog_rising_since_ns, clock_skew_ns,
          removed_ns)
WHERE a.agent_id = u.agent_id";

/// Every agent in the fleet, or the one asked for, in byte order of their ids.
const AGENTS: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM agents WHERE ($1::text IS NULL OR agent_id = $1) AND removed_ns IS NULL
      ORDER BY agent_id COLLATE \"C\""
);

const REMOVE: &str = "
UPDATE agents SET removed_ns = $2, connected = FALSE
WHERE agent_id = $1 AND removed_ns IS NULL";

/// Applies every update in order ([`crate::store::StateStore::record_all`]).
pub(super) fn record_all(tx: &mut Transaction<'_>, updates: &[RegistryUpdate]) -> Result<(), Fail> {
    let mut first_seen: BTreeMap<&str, i64> = BTreeMap::new();
    for update in updates {
        first_seen
            .entry(update.agent_id())
            .or_insert(update.now_ns());
    }
    let (ids, times): (Vec<&str>, Vec<i64>) = first_seen.into_iter().unzip();
    tx.execute(REGISTER, &[&ids, &times])?;
    let mut rows = BTreeMap::new();
    for row in tx.query(LOCK, &[&ids])? {
        let row = decode(&row, Decode::Lenient)?;
        rows.insert(row.record.agent_id.clone(), row);
    }
    for update in updates {
        let row = rows.get_mut(update.agent_id()).ok_or_else(|| {
            BadValue::new(
                "agent_id",
                format!(
                    "agent {} is missing after registering it",
                    update.agent_id()
                ),
            )
        })?;
        row.apply(update);
    }
    write_back(tx, rows.values())?;
    tx.execute(BUMP_GENERATION, &[])?;
    Ok(())
}

/// Registry rows sorted by agent id: all of them, or the one of `agent_id`.
pub(super) fn agents(
    client: &mut Client,
    agent_id: Option<&str>,
) -> Result<Vec<AgentRecord>, Fail> {
    client
        .query(AGENTS, &[&agent_id])?
        .iter()
        .map(|row| decode(row, Decode::Strict).map(|r| r.record))
        .collect()
}

/// Takes the agent out of the fleet ([`crate::store::StateStore::remove_agent`]).
pub(super) fn remove_agent(
    tx: &mut Transaction<'_>,
    agent_id: &str,
    now_ns: i64,
) -> Result<bool, Fail> {
    let removed = tx.execute(REMOVE, &[&agent_id, &now_ns])? > 0;
    if removed {
        tx.execute(BUMP_GENERATION, &[])?;
    }
    Ok(removed)
}

/// An agent's row: what the registry answers, and whether it was taken out of the fleet.
#[derive(Debug, Clone, PartialEq)]
struct AgentRow {
    record: AgentRecord,
    removed_ns: Option<i64>,
}

impl AgentRow {
    /// Applies one update (the rules of [`crate::store::StateStore::record_all`]).
    fn apply(&mut self, update: &RegistryUpdate) {
        let r = &mut self.record;
        r.last_seen_ns = r.last_seen_ns.max(update.now_ns());
        match update {
            RegistryUpdate::Hello { hello, now_ns, .. } => {
                r.spool_id = Some(hello.spool_id);
                r.agent_version = Some(hello.agent_version.clone());
                r.host = Some(hello.host.clone());
                r.labels = hello.labels.iter().cloned().collect();
                self.removed_ns = None;
                apply_status(r, &hello.status, *now_ns);
            }
            RegistryUpdate::Heartbeat { status, now_ns, .. } => apply_status(r, status, *now_ns),
            RegistryUpdate::Disconnect { reason, now_ns, .. } => {
                r.connected = false;
                r.last_disconnect_ns = Some(*now_ns);
                r.last_disconnect_reason = Some(reason.clone());
            }
            RegistryUpdate::Seen { .. } => {}
        }
    }
}

/// Takes `status` as the agent's latest, with the marks derived from the change.
fn apply_status(r: &mut AgentRecord, status: &AgentStatus, now_ns: i64) {
    let marks = StatusMarks {
        drops_changed_ns: r.drops_changed_ns,
        drops_last_increase: std::mem::take(&mut r.drops_last_increase),
        backlog_rising_since_ns: r.backlog_rising_since_ns,
    }
    .advance(r.status.as_ref(), status, now_ns);
    r.drops_changed_ns = marks.drops_changed_ns;
    r.drops_last_increase = marks.drops_last_increase;
    r.backlog_rising_since_ns = marks.backlog_rising_since_ns;
    r.status = Some(status.clone());
    r.status_received_ns = Some(now_ns);
    r.clock_skew_ns = Some(clock_skew_ns(status, now_ns));
    r.connected = true;
}

/// Writes the rows back in one statement, a column an array.
fn write_back<'a>(
    tx: &mut Transaction<'_>,
    rows: impl ExactSizeIterator<Item = &'a AgentRow>,
) -> Result<(), Fail> {
    let n = rows.len();
    let mut agent_id = Vec::with_capacity(n);
    let mut spool_id = Vec::with_capacity(n);
    let mut last_seen_ns = Vec::with_capacity(n);
    let mut agent_version = Vec::with_capacity(n);
    let mut host = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    let mut connected = Vec::with_capacity(n);
    let mut last_disconnect_ns = Vec::with_capacity(n);
    let mut last_disconnect_reason = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut status_received_ns = Vec::with_capacity(n);
    let mut drops_changed_ns = Vec::with_capacity(n);
    let mut drops_last_increase = Vec::with_capacity(n);
    let mut backlog_rising_since_ns = Vec::with_capacity(n);
    let mut clock_skew_ns = Vec::with_capacity(n);
    let mut removed_ns = Vec::with_capacity(n);
    for row in rows {
        let r = &row.record;
        agent_id.push(r.agent_id.as_str());
        spool_id.push(r.spool_id.map(u64::cast_signed));
        last_seen_ns.push(r.last_seen_ns);
        agent_version.push(r.agent_version.as_deref().map(pg_text));
        host.push(r.host.as_ref().map(|h| to_json("host", h)).transpose()?);
        labels.push(to_json("labels", &r.labels)?);
        connected.push(r.connected);
        last_disconnect_ns.push(r.last_disconnect_ns);
        last_disconnect_reason.push(r.last_disconnect_reason.as_deref().map(pg_text));
        status.push(
            r.status
                .as_ref()
                .map(|s| to_json("status", s))
                .transpose()?,
        );
        status_received_ns.push(r.status_received_ns);
        drops_changed_ns.push(r.drops_changed_ns);
        drops_last_increase.push(to_json("drops_last_increase", &r.drops_last_increase)?);
        backlog_rising_since_ns.push(r.backlog_rising_since_ns);
        clock_skew_ns.push(r.clock_skew_ns);
        removed_ns.push(row.removed_ns);
    }
    tx.execute(
        WRITE_BACK,
        &[
            &agent_id,
            &spool_id,
            &last_seen_ns,
            &agent_version,
            &host,
            &labels,
            &connected,
            &last_disconnect_ns,
            &last_disconnect_reason,
            &status,
            &status_received_ns,
            &drops_changed_ns,
            &drops_last_increase,
            &backlog_rising_since_ns,
            &clock_skew_ns,
            &removed_ns,
        ],
    )?;
    Ok(())
}

/// How a JSON value that does not parse is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    /// As an error: what is read is answered.
    Strict,
    /// As absent: what is read is about to be replaced, and one bad row must not stop a round
    /// of updates about the whole fleet.
    Lenient,
}

/// A row of [`columns!`].
fn decode(row: &Row, mode: Decode) -> Result<AgentRow, Fail> {
    fn json<T: serde::de::DeserializeOwned>(
        row: &Row,
        column: &'static str,
        mode: Decode,
    ) -> Result<Option<T>, Fail> {
        let Some(text) = row.try_get::<_, Option<&str>>(column)? else {
            return Ok(None);
        };
        match (from_json(column, text), mode) {
            (Ok(value), _) => Ok(Some(value)),
            (Err(_), Decode::Lenient) => Ok(None),
            (Err(e), Decode::Strict) => Err(e.into()),
        }
    }
    let record = AgentRecord {
        agent_id: row.try_get("agent_id")?,
        spool_id: row
            .try_get::<_, Option<i64>>("spool_id")?
            .map(i64::cast_unsigned),
        first_seen_ns: row.try_get("first_seen_ns")?,
        last_seen_ns: row.try_get("last_seen_ns")?,
        agent_version: row.try_get("agent_version")?,
        host: json(row, "host", mode)?,
        connected: row.try_get("connected")?,
        last_disconnect_ns: row.try_get("last_disconnect_ns")?,
        last_disconnect_reason: row.try_get("last_disconnect_reason")?,
        status: json(row, "status", mode)?,
        status_received_ns: row.try_get("status_received_ns")?,
        drops_changed_ns: row.try_get("drops_changed_ns")?,
        drops_last_increase: json(row, "drops_last_increase", mode)?.unwrap_or_default(),
        backlog_rising_since_ns: row.try_get("backlog_rising_since_ns")?,
        clock_skew_ns: row.try_get("clock_skew_ns")?,
        labels: json(row, "labels", mode)?.unwrap_or_default(),
        host_summary: None,
    };
    Ok(AgentRow {
        record,
        removed_ns: row.try_get("removed_ns")?,
    })
}

#[cfg(test)]
mod tests {
    use outpost_common::event::DropReason;

    use super::*;
    use crate::store::testutil::{T0, hello, secs};

    fn new_row(agent_id: &str, now_ns: i64) -> AgentRow {
        AgentRow {
            record: AgentRecord {
                agent_id: agent_id.to_owned(),
                spool_id: None,
                first_seen_ns: now_ns,
                last_seen_ns: now_ns,
                agent_version: None,
                host: None,
                connected: false,
                last_disconnect_ns: None,
                last_disconnect_reason: None,
                status: None,
                status_received_ns: None,
                drops_changed_ns: None,
                drops_last_increase: Default::default(),
                backlog_rising_since_ns: None,
                clock_skew_ns: None,
                labels: BTreeMap::new(),
                host_summary: None,
            },
            removed_ns: None,
        }
    }

    #[test]
    fn updates_follow_the_rules_of_the_registry() {
        let mut row = new_row("web-1", T0);
        let mut status = AgentStatus {
            time_ns: T0 + secs(3),
            backlog_batches: 2,
            ..AgentStatus::default()
        };
        row.apply(&RegistryUpdate::Hello {
            agent_id: "web-1".to_owned(),
            hello: hello(7, status.clone()),
            now_ns: T0,
        });
        let r = &row.record;
        assert_eq!((r.spool_id, r.connected), (Some(7), true));
        assert_eq!(r.clock_skew_ns, Some(secs(3)));
        assert_eq!(
            r.backlog_rising_since_ns, None,
            "a first status is not rising"
        );

        status.backlog_batches = 3;
        status.drops.add(DropReason::SpoolFullEvicted, 4);
        row.apply(&RegistryUpdate::Heartbeat {
            agent_id: "web-1".to_owned(),
            status: status.clone(),
            now_ns: T0 + secs(10),
        });
        let r = &row.record;
        assert_eq!(r.backlog_rising_since_ns, Some(T0 + secs(10)));
        assert_eq!(r.drops_changed_ns, Some(T0 + secs(10)));
        assert_eq!(r.drops_last_increase.spool_full_evicted, 4);

        // An update that arrives late never moves last_seen back.
        row.removed_ns = Some(T0 + secs(11));
        row.apply(&RegistryUpdate::Disconnect {
            agent_id: "web-1".to_owned(),
            reason: "bye".to_owned(),
            now_ns: T0 + secs(5),
        });
        let r = &row.record;
        assert_eq!((r.connected, r.last_seen_ns), (false, T0 + secs(10)));
        assert_eq!(r.last_disconnect_ns, Some(T0 + secs(5)));
        // A heartbeat does not bring a removed agent back; a Hello does.
        row.apply(&RegistryUpdate::Heartbeat {
            agent_id: "web-1".to_owned(),
            status: status.clone(),
            now_ns: T0 + secs(12),
        });
        assert_eq!(row.removed_ns, Some(T0 + secs(11)));
        row.apply(&RegistryUpdate::Hello {
            agent_id: "web-1".to_owned(),
            hello: hello(8, status),
            now_ns: T0 + secs(13),
        });
        assert_eq!(row.removed_ns, None);
        assert_eq!(row.record.spool_id, Some(8));
    }
}
