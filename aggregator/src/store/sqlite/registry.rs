//! The agent registry: one row per agent, changed by [`RegistryUpdate`]s, read by fleet status.
//!
//! All the updates of one writer round are applied in one transaction with
//! `synchronous=NORMAL`: atomic, and durable with the next batch commit (see the parent module).

use std::collections::HashMap;

use outpost_common::event::{AgentStatus, HostFacts};
use rusqlite::{Connection, Row, Transaction, TransactionBehavior, params};

use super::codec::{from_json_column, to_json};
use super::{Pending, WriteState};
use crate::store::marks::{StatusMarks, clock_skew_ns};
use crate::store::{AgentRecord, RegistryUpdate, StoreError};

impl WriteState {
    /// Applies every update in one transaction, in order.
    pub(super) fn record_all(&mut self, updates: &[RegistryUpdate]) -> Result<(), StoreError> {
        let WriteState {
            conn, agent_keys, ..
        } = self;
        let mut pending = Pending::default();
        let result = (|| {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for update in updates {
                let now_ns = update.now_ns();
                let key = agent_key(&tx, agent_keys, &mut pending, update.agent_id(), now_ns)?;
                apply(&tx, key, update)?;
            }
            tx.commit()
        })();
        // Batch commits go back to full durability whatever happened above.
        let restored = conn.pragma_update(None, "synchronous", "FULL");
        let first = &updates[0];
        let context = || {
            format!(
                "recording {} registry updates (the first about agent {})",
                updates.len(),
                first.agent_id()
            )
        };
        result.map_err(|e| StoreError::backend(context(), e))?;
        restored.map_err(|e| StoreError::backend(context(), e))?;
        agent_keys.extend(pending.agent_keys);
        Ok(())
    }
}

impl WriteState {
    /// Takes the agent out of the fleet ([`crate::store::StateStore::remove_agent`]).
    pub(super) fn remove_agent(&mut self, agent_id: &str, now_ns: i64) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "UPDATE agents SET removed_ns = ?2, connected = 0
                 WHERE agent_id = ?1 AND removed_ns IS NULL",
                params![agent_id, now_ns],
            )
            .map(|changed| changed > 0)
            .map_err(|e| StoreError::backend(format!("removing agent {agent_id}"), e))
    }
}

/// An agent's labels as a JSON object, key to value.
fn labels_json(labels: &[(String, String)]) -> rusqlite::Result<String> {
    let map: std::collections::BTreeMap<&str, &str> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    super::codec::to_json(&map)
}

/// Applies one update to the agent's row.
fn apply(tx: &Transaction<'_>, key: i64, update: &RegistryUpdate) -> rusqlite::Result<()> {
    match update {
        RegistryUpdate::Hello { hello, now_ns, .. } => {
            let h = &hello.host;
            tx.prepare_cached(
                "UPDATE agents SET spool_id = ?2, agent_version = ?3, hostname = ?4, os = ?5,
                    kernel = ?6, arch = ?7, cpus = ?8, memory_bytes = ?9, boot_time_ns = ?10,
                    labels = ?11, removed_ns = NULL
                 WHERE agent_key = ?1",
            )?
            .execute(params![
                key,
                hello.spool_id.cast_signed(),
                hello.agent_version,
                h.hostname,
                h.os,
                h.kernel,
                h.arch,
                h.cpus,
                h.memory_bytes.cast_signed(),
                h.boot_time_ns,
                labels_json(&hello.labels)?,
            ])?;
            apply_status(tx, key, &hello.status, *now_ns)
        }
        RegistryUpdate::Heartbeat { status, now_ns, .. } => apply_status(tx, key, status, *now_ns),
        RegistryUpdate::Disconnect { reason, now_ns, .. } => {
            tx.prepare_cached(
                "UPDATE agents SET connected = 0, last_disconnect_ns = ?2,
                    last_disconnect_reason = ?3, last_seen_ns = max(last_seen_ns, ?2)
                 WHERE agent_key = ?1",
            )?
            .execute(params![key, now_ns, reason])?;
            Ok(())
        }
        RegistryUpdate::Seen { now_ns, .. } => {
            tx.prepare_cached(
                "UPDATE agents SET last_seen_ns = max(last_seen_ns, ?2) WHERE agent_key = ?1",
            )?
            .execute(params![key, now_ns])?;
            Ok(())
        }
    }
}

/// Stores `status` as the agent's latest and updates the marks derived from the change.
fn apply_status(
    tx: &Transaction<'_>,
    key: i64,
    status: &AgentStatus,
    now_ns: i64,
) -> rusqlite::Result<()> {
    let (prev, marks) = tx
        .prepare_cached(
            "SELECT status, drops_changed_ns, drops_last_increase, backlog_rising_since_ns
             FROM agents WHERE agent_key = ?1",
        )?
        .query_row([key], |r| {
            // A previous value that no longer parses is treated as absent, not as an error:
            // it is replaced right here.
            let prev = r
                .get::<_, Option<String>>(0)?
                .and_then(|s| serde_json::from_str::<AgentStatus>(&s).ok());
            let marks = StatusMarks {
                drops_changed_ns: r.get(1)?,
                drops_last_increase: r
                    .get::<_, Option<String>>(2)?
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or_default(),
                backlog_rising_since_ns: r.get(3)?,
            };
            Ok((prev, marks))
        })?;
    let marks = marks.advance(prev.as_ref(), status, now_ns);
    tx.prepare_cached(
        "UPDATE agents SET status = ?2, status_received_ns = ?3, drops_changed_ns = ?4,
            drops_last_increase = ?5, backlog_rising_since_ns = ?6, clock_skew_ns = ?7,
            connected = 1, last_seen_ns = max(last_seen_ns, ?3)
         WHERE agent_key = ?1",
    )?
    .execute(params![
        key,
        to_json(status)?,
        now_ns,
        marks.drops_changed_ns,
        to_json(&marks.drops_last_increase)?,
        marks.backlog_rising_since_ns,
        clock_skew_ns(status, now_ns),
    ])?;
    Ok(())
}

/// The agent's key, registering it (first seen at `now_ns`) if it is new.
pub(super) fn agent_key(
    tx: &Transaction<'_>,
    committed: &HashMap<String, i64>,
    pending: &mut Pending,
    agent_id: &str,
    now_ns: i64,
) -> rusqlite::Result<i64> {
    if let Some(&key) = committed
        .get(agent_id)
        .or_else(|| pending.agent_keys.get(agent_id))
    {
        return Ok(key);
    }
    tx.prepare_cached(
        "INSERT INTO agents (agent_id, first_seen_ns, last_seen_ns) VALUES (?1, ?2, ?2)
         ON CONFLICT (agent_id) DO NOTHING",
    )?
    .execute(params![agent_id, now_ns])?;
    let key = tx
        .prepare_cached("SELECT agent_key FROM agents WHERE agent_id = ?1")?
        .query_row([agent_id], |r| r.get(0))?;
    pending.agent_keys.insert(agent_id.to_owned(), key);
    Ok(key)
}

/// Registry rows sorted by agent id: all of them, or the one of `agent_id`.
pub(super) fn agents(
    conn: &Connection,
    agent_id: Option<&str>,
) -> Result<Vec<AgentRecord>, StoreError> {
    let result = (|| {
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, spool_id, first_seen_ns, last_seen_ns, agent_version,
                hostname, os, kernel, arch, cpus, memory_bytes, boot_time_ns, connected,
                last_disconnect_ns, last_disconnect_reason, status, status_received_ns,
                drops_changed_ns, drops_last_increase, backlog_rising_since_ns, clock_skew_ns,
                labels
             FROM agents WHERE (?1 IS NULL OR agent_id = ?1) AND removed_ns IS NULL
             ORDER BY agent_id",
        )?;
        let rows = stmt.query_map([agent_id], agent_from_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })();
    result.map_err(|e| match agent_id {
        None => StoreError::backend("reading the agent registry", e),
        Some(id) => StoreError::backend(format!("reading agent {id} from the registry"), e),
    })
}

fn agent_from_row(r: &Row<'_>) -> rusqlite::Result<AgentRecord> {
    let host = match r.get::<_, Option<String>>(5)? {
        Some(hostname) => Some(HostFacts {
            hostname,
            os: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
            kernel: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
            arch: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
            cpus: r.get::<_, Option<u32>>(9)?.unwrap_or_default(),
            memory_bytes: r
                .get::<_, Option<i64>>(10)?
                .unwrap_or_default()
                .cast_unsigned(),
            boot_time_ns: r.get::<_, Option<i64>>(11)?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(AgentRecord {
        agent_id: r.get(0)?,
        spool_id: r.get::<_, Option<i64>>(1)?.map(i64::cast_unsigned),
        first_seen_ns: r.get(2)?,
        last_seen_ns: r.get(3)?,
        agent_version: r.get(4)?,
        host,
        connected: r.get(12)?,
        last_disconnect_ns: r.get(13)?,
        last_disconnect_reason: r.get(14)?,
        status: from_json_column(r, 15)?,
        status_received_ns: r.get(16)?,
        drops_changed_ns: r.get(17)?,
        drops_last_increase: from_json_column(r, 18)?.unwrap_or_default(),
        backlog_rising_since_ns: r.get(19)?,
        clock_skew_ns: r.get(20)?,
        labels: from_json_column(r, 21)?.unwrap_or_default(),
        host_summary: None,
    })
}

#[cfg(test)]
mod tests {
    use outpost_common::event::{CollectorError, DropReason};

    use super::*;
    use crate::store::StateStore;
    use crate::store::sqlite::test_support::*;
    use crate::store::testutil::*;

    #[test]
    fn the_registry_follows_hello_heartbeats_batches_and_disconnects() {
        let (_dir, store) = open();
        record_hello(&store, "web-1", &hello(42, AgentStatus::default()), T0).unwrap();
        let a = &store.agents().unwrap()[0];
        assert_eq!(a.agent_id, "web-1");
        assert_eq!(a.spool_id, Some(42));
        assert_eq!((a.first_seen_ns, a.last_seen_ns), (T0, T0));
        assert_eq!(a.agent_version.as_deref(), Some("1.2.3"));
        let host = a.host.as_ref().unwrap();
        assert_eq!(
            (
                host.hostname.as_str(),
                host.arch.as_str(),
                host.memory_bytes
            ),
            ("web-1.example", "x86_64", 4 << 30)
        );
        assert!(a.connected);
        assert_eq!(a.status, Some(AgentStatus::default()));

        // A heartbeat whose clock runs 2 s ahead, with a growing backlog and new drops.
        let mut status = AgentStatus {
            time_ns: T0 + secs(12),
            backlog_batches: 5,
            collector_errors: vec![CollectorError {
                collector: "metrics.filesystem".into(),
                reason: "statvfs failed".into(),
                since_ns: T0,
            }],
            ..AgentStatus::default()
        };
        status.drops.add(DropReason::SpoolFullEvicted, 12);
        record_heartbeat(&store, "web-1", &status, T0 + secs(10)).unwrap();
        let a = &store.agents().unwrap()[0];
        assert_eq!(a.last_seen_ns, T0 + secs(10));
        assert_eq!(a.clock_skew_ns, Some(secs(2)));
        assert_eq!(a.backlog_rising_since_ns, Some(T0 + secs(10)));
        assert_eq!(a.drops_changed_ns, Some(T0 + secs(10)));
        assert_eq!(a.drops_last_increase.spool_full_evicted, 12);
        assert_eq!(a.status.as_ref(), Some(&status));

        // Still rising: the start is kept; drops unchanged: their time too.
        status.backlog_batches = 9;
        record_heartbeat(&store, "web-1", &status, T0 + secs(20)).unwrap();
        let a = &store.agents().unwrap()[0];
        assert_eq!(a.backlog_rising_since_ns, Some(T0 + secs(10)));
        assert_eq!(a.drops_changed_ns, Some(T0 + secs(10)));

        let seen = RegistryUpdate::Seen {
            agent_id: "web-1".to_owned(),
            now_ns: T0 + secs(25),
        };
        store.record(&seen).unwrap();
        assert_eq!(store.agents().unwrap()[0].last_seen_ns, T0 + secs(25));

        record_disconnect(&store, "web-1", "connection lost: timed out", T0 + secs(30)).unwrap();
        let a = &store.agents().unwrap()[0];
        assert!(!a.connected);
        assert_eq!(a.last_disconnect_ns, Some(T0 + secs(30)));
        assert_eq!(
            a.last_disconnect_reason.as_deref(),
            Some("connection lost: timed out")
        );
        assert_eq!((a.first_seen_ns, a.last_seen_ns), (T0, T0 + secs(30)));

        // A heartbeat from an agent never registered creates its row; rows come sorted.
        record_heartbeat(&store, "app-1", &AgentStatus::default(), T0 + secs(40)).unwrap();
        let ids: Vec<_> = store
            .agents()
            .unwrap()
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        assert_eq!(ids, ["app-1", "web-1"]);
    }

    #[test]
    fn one_agent_is_read_by_its_id() {
        let (_dir, store) = open();
        assert_eq!(store.agent("web-1").unwrap(), None);
        record_hello(&store, "web-1", &hello(1, AgentStatus::default()), T0).unwrap();
        record_hello(&store, "app-1", &hello(2, AgentStatus::default()), T0).unwrap();
        let a = store.agent("web-1").unwrap().unwrap();
        assert_eq!((a.agent_id.as_str(), a.spool_id), ("web-1", Some(1)));
        assert_eq!(store.agent("web").unwrap(), None);
    }

    use std::collections::BTreeMap;

    #[test]
    fn many_updates_apply_in_order_in_one_write() {
        let (_dir, store) = open();
        let hello_a = RegistryUpdate::Hello {
            agent_id: "a".to_owned(),
            hello: hello(1, AgentStatus::default()),
            now_ns: T0,
        };
        let gone_a = RegistryUpdate::Disconnect {
            agent_id: "a".to_owned(),
            reason: "bye".to_owned(),
            now_ns: T0 + 2,
        };
        let seen_b = RegistryUpdate::Seen {
            agent_id: "b".to_owned(),
            now_ns: T0 + 3,
        };
        // An older "seen" never moves last_seen back.
        let late_a = RegistryUpdate::Seen {
            agent_id: "a".to_owned(),
            now_ns: T0 + 1,
        };
        store
            .record_all(&[hello_a, gone_a, seen_b, late_a])
            .unwrap();
        let agents = store.agents().unwrap();
        assert_eq!(agents.len(), 2);
        let (a, b) = (&agents[0], &agents[1]);
        assert!(!a.connected);
        assert_eq!(a.last_seen_ns, T0 + 2);
        assert_eq!((b.first_seen_ns, b.last_seen_ns), (T0 + 3, T0 + 3));
        assert!(!b.connected);
        // The labels of a's Hello, none for b, which never said Hello.
        assert_eq!(
            a.labels,
            BTreeMap::from([("env".to_owned(), "prod".to_owned())])
        );
        assert!(b.labels.is_empty());
        // A later Hello replaces them.
        let mut relabelled = hello(1, AgentStatus::default());
        relabelled.labels = vec![("role".to_owned(), "db".to_owned())];
        store
            .record(&RegistryUpdate::Hello {
                agent_id: "a".to_owned(),
                hello: relabelled,
                now_ns: T0 + 4,
            })
            .unwrap();
        assert_eq!(
            store.agent("a").unwrap().unwrap().labels,
            BTreeMap::from([("role".to_owned(), "db".to_owned())])
        );
        store.record_all(&[]).unwrap();
    }

    #[test]
    fn a_failed_registry_write_changes_nothing_and_batches_stay_durable() {
        let (_dir, store) = open();
        let admin = rusqlite::Connection::open(store.path()).unwrap();
        admin
            .execute_batch(
                "CREATE TRIGGER boom BEFORE UPDATE OF agent_version ON agents
                 BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;",
            )
            .unwrap();
        let seen = RegistryUpdate::Seen {
            agent_id: "a".to_owned(),
            now_ns: T0,
        };
        let hello_b = RegistryUpdate::Hello {
            agent_id: "b".to_owned(),
            hello: hello(1, AgentStatus::default()),
            now_ns: T0,
        };
        let err = store.record_all(&[seen, hello_b]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("recording 2 registry updates"), "{msg}");
        assert!(msg.contains("refused by test trigger"), "{msg}");
        assert_eq!(store.agents().unwrap(), vec![]);
        // The write connection is back to full durability for batches.
        let sync: i64 = store
            .lock_write()
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        commit(&store, &[logs("a", 1, 1, 1)]);
    }
}
