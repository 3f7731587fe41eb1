//! The alerting engine's state in SQLite (schema 11); see [`crate::store::alerting`].
//!
//! Written on the write connection with `synchronous=FULL`: a notification in the outbox, and
//! the alert state that made it, survive a crash once the transaction returns.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{SqliteStore, lock};
use crate::rules::engine::{AlertRecord, HistoryEntry, Outcome};
use crate::rules::matcher::Silence;
use crate::store::alerting::{
    AlertingStore, Attempt, HistoryRow, LoadedAlerting, LogQuery, OutboxEntry, OutboxState,
    StoredSilence,
};
use crate::store::{Cursor, StoreError};

const CURSOR: &str = "cursor";

fn json<T: Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn from_json<T: DeserializeOwned>(r: &Row<'_>, column: usize) -> rusqlite::Result<T> {
    let text: String = r.get(column)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn backend(what: &str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::backend(what, e)
}

const OUTBOX_COLUMNS: &str = "id, message, state, attempts, next_attempt_ns, last_error, sent_ns";

fn outbox_row(r: &Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let state: String = r.get(2)?;
    Ok(OutboxEntry {
        id: r.get(0)?,
        message: from_json(r, 1)?,
        state: OutboxState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("outbox state `{state}`").into(),
            )
        })?,
        attempts: r.get(3)?,
        next_attempt_ns: r.get(4)?,
        last_error: r.get(5)?,
        sent_ns: r.get(6)?,
    })
}

fn save(
    tx: &Transaction<'_>,
    outcome: &Outcome,
    silences: Option<&[Silence]>,
    cursor: Option<Cursor>,
) -> rusqlite::Result<()> {
    let mut put = tx.prepare_cached(
        "INSERT INTO alerts (fingerprint, record) VALUES (?1, ?2)
         ON CONFLICT (fingerprint) DO UPDATE SET record = excluded.record",
    )?;
    for a in &outcome.alerts {
        put.execute(params![a.fingerprint, json(a)?])?;
    }
    let mut delete = tx.prepare_cached("DELETE FROM alerts WHERE fingerprint = ?1")?;
    for fingerprint in &outcome.removed {
        delete.execute([fingerprint])?;
    }
    let mut history = tx.prepare_cached(
        "INSERT INTO alert_history (fingerprint, at_ns, entry) VALUES (?1, ?2, ?3)",
    )?;
    for h in &outcome.history {
        history.execute(params![h.fingerprint, h.at_ns, json(h)?])?;
    }
    let mut outbox = tx.prepare_cached(
        "INSERT INTO outbox (receiver, group_key, created_ns, state, next_attempt_ns, message)
         VALUES (?1, ?2, ?3, 'pending', ?3, ?4)",
    )?;
    for m in &outcome.messages {
        outbox.execute(params![m.receiver, m.group_key, m.created_ns, json(m)?])?;
    }
    if let Some(groups) = &outcome.groups {
        tx.execute("DELETE FROM alert_groups", [])?;
        let mut put = tx.prepare_cached("INSERT INTO alert_groups (key, grp) VALUES (?1, ?2)")?;
        for (key, group) in groups {
            put.execute(params![key, json(group)?])?;
        }
    }
    if let Some(silences) = silences {
        tx.execute("DELETE FROM silences", [])?;
        let mut put =
            tx.prepare_cached("INSERT INTO silences (id, ends_ns, silence) VALUES (?1, ?2, ?3)")?;
        for s in silences {
            put.execute(params![s.id, s.ends_ns, json(&StoredSilence::from(s))?])?;
        }
    }
    if let Some(cursor) = cursor {
        tx.execute(
            "INSERT INTO alerting_meta (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![CURSOR, i64::try_from(cursor.position()).unwrap_or(i64::MAX)],
        )?;
    }
    Ok(())
}

fn all<T>(
    conn: &Connection,
    sql: &str,
    row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    conn.prepare_cached(sql)?.query_map([], row)?.collect()
}

fn silences(conn: &Connection) -> rusqlite::Result<Vec<StoredSilence>> {
    all(
        conn,
        "SELECT silence FROM silences ORDER BY ends_ns DESC, id",
        |r| from_json(r, 0),
    )
}

fn records(conn: &Connection) -> rusqlite::Result<Vec<AlertRecord>> {
    all(
        conn,
        "SELECT record FROM alerts ORDER BY fingerprint",
        |r| from_json(r, 0),
    )
}

fn load(conn: &Connection) -> Result<LoadedAlerting, StoreError> {
    let mut loaded = LoadedAlerting::default();
    loaded.saved.alerts = records(conn).map_err(backend("reading alert records"))?;
    loaded.saved.groups = all(conn, "SELECT key, grp FROM alert_groups", |r| {
        Ok((r.get(0)?, from_json(r, 1)?))
    })
    .map_err(backend("reading notification groups"))?
    .into_iter()
    .collect();
    for stored in silences(conn).map_err(backend("reading silences"))? {
        let silence = stored.to_silence().map_err(|why| {
            StoreError::Conflict(format!("silence {} in the store: {why}", stored.id))
        })?;
        loaded.saved.silences.push(silence);
    }
    loaded.cursor = conn
        .query_row(
            "SELECT value FROM alerting_meta WHERE name = ?1",
            [CURSOR],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map_err(backend("reading the alerting cursor"))?
        .map(|v| Cursor::from_position(u64::try_from(v).unwrap_or(0)));
    Ok(loaded)
}

/// `WHERE` for a [`LogQuery`] over a table with `id` and `fingerprint`, and its limit.
fn page(query: &LogQuery) -> (i64, Option<String>, i64) {
    (
        query.before.unwrap_or(i64::MAX),
        query.fingerprint.clone(),
        i64::try_from(query.limit.max(1)).unwrap_or(i64::MAX),
    )
}

impl AlertingStore for SqliteStore {
    fn load_alerting(&self) -> Result<LoadedAlerting, StoreError> {
        load(&lock(&self.read))
    }

    fn save_alerting(
        &self,
        outcome: &Outcome,
        silences: Option<&[Silence]>,
        cursor: Option<Cursor>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock_write();
        let tx = state
            .conn
            .transaction()
            .map_err(backend("saving alert state"))?;
        save(&tx, outcome, silences, cursor).map_err(backend("saving alert state"))?;
        tx.commit().map_err(backend("committing alert state"))
    }

    fn due_notifications(&self, now_ns: i64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        lock(&self.read)
            .prepare_cached(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox
                 WHERE state = 'pending' AND next_attempt_ns <= ?1
                   AND NOT EXISTS (SELECT 1 FROM outbox AS earlier
                                   WHERE earlier.state = 'pending'
                                     AND earlier.receiver = outbox.receiver
                                     AND earlier.group_key = outbox.group_key
                                     AND earlier.id < outbox.id)
                 ORDER BY next_attempt_ns, id LIMIT ?2"
            ))
            .and_then(|mut s| {
                s.query_map(
                    params![now_ns, i64::try_from(limit.max(1)).unwrap_or(i64::MAX)],
                    outbox_row,
                )?
                .collect()
            })
            .map_err(backend("reading due notifications"))
    }

    fn next_notification_ns(&self) -> Result<Option<i64>, StoreError> {
        lock(&self.read)
            .query_row(
                "SELECT min(next_attempt_ns) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
            .map_err(backend("reading the next notification's time"))
    }

    fn record_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError> {
        let (state, next, error, sent) = match attempt {
            Attempt::Sent { at_ns } => (OutboxState::Sent, *at_ns, None, Some(*at_ns)),
            Attempt::Retry { retry_at_ns, error } => (
                OutboxState::Pending,
                *retry_at_ns,
                Some(error.as_str()),
                None,
            ),
            Attempt::Failed { error } => (OutboxState::Failed, 0, Some(error.as_str()), None),
        };
        self.lock_write()
            .conn
            .execute(
                "UPDATE outbox SET state = ?2, attempts = attempts + 1,
                    next_attempt_ns = CASE WHEN ?2 = 'pending' THEN ?3 ELSE next_attempt_ns END,
                    last_error = coalesce(?4, last_error), sent_ns = ?5
                 WHERE id = ?1",
                params![id, state.as_str(), next, error, sent],
            )
            .map(drop)
            .map_err(|e| StoreError::backend(format!("recording notification {id}"), e))
    }

    fn notifications(&self, query: &LogQuery) -> Result<Vec<OutboxEntry>, StoreError> {
        let (before, fingerprint, limit) = page(query);
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id < ?1
               AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(message, '$.alerts')
                                           WHERE json_extract(value, '$.fingerprint') = ?2))
             ORDER BY id DESC LIMIT ?3"
        );
        lock(&self.read)
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(params![before, fingerprint, limit], outbox_row)?
                    .collect()
            })
            .map_err(backend("listing notifications"))
    }

    fn alert_history(&self, query: &LogQuery) -> Result<Vec<HistoryRow>, StoreError> {
        let (before, fingerprint, limit) = page(query);
        lock(&self.read)
            .prepare_cached(
                "SELECT id, entry FROM alert_history
                 WHERE id < ?1 AND (?2 IS NULL OR fingerprint = ?2) ORDER BY id DESC LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![before, fingerprint, limit], |r| {
                    Ok(HistoryRow {
                        id: r.get(0)?,
                        entry: from_json::<HistoryEntry>(r, 1)?,
                    })
                })?
                .collect()
            })
            .map_err(backend("listing alert history"))
    }

    fn alert_records(&self) -> Result<Vec<AlertRecord>, StoreError> {
        records(&lock(&self.read)).map_err(backend("reading alert records"))
    }

    fn stored_silences(&self) -> Result<Vec<StoredSilence>, StoreError> {
        silences(&lock(&self.read)).map_err(backend("reading silences"))
    }

    fn expire_alerting(&self, cutoff_ns: i64) -> Result<u64, StoreError> {
        let mut state = self.lock_write();
        let tx = state
            .conn
            .transaction()
            .map_err(backend("expiring alert history"))?;
        let mut n = 0;
        for sql in [
            "DELETE FROM outbox WHERE state != 'pending' AND created_ns < ?1",
            "DELETE FROM alert_history WHERE at_ns < ?1",
            "DELETE FROM silences WHERE ends_ns < ?1",
        ] {
            n += tx
                .execute(sql, [cutoff_ns])
                .map_err(backend("expiring alert history"))? as u64;
        }
        tx.commit().map_err(backend("expiring alert history"))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::notify::{Message, MessageAlert, Status};
    use crate::rules::engine::HistoryKind;
    use crate::rules::file::Severity;
    use crate::rules::lifecycle::AlertState;
    use crate::rules::matcher::parse;

    fn record(fp: &str) -> AlertRecord {
        AlertRecord {
            fingerprint: fp.into(),
            rule: "cpu".into(),
            severity: Severity::High,
            labels: [("host".to_owned(), "a".to_owned())].into(),
            annotations: BTreeMap::new(),
            state: AlertState::Firing {
                since_ns: 5,
                last_held_ns: 6,
            },
            value: Some(0.5),
            active_since_ns: 1,
            fired_ns: Some(5),
            resolved_ns: None,
            ack: None,
            escalated: 0,
            suppressed_by: Vec::new(),
            updated_ns: 6,
        }
    }

    fn message(fp: &str, at: i64) -> Message {
        Message {
            receiver: "ops".into(),
            group_key: format!("{{}}:{{fp={fp:?}}}"),
            group_labels: BTreeMap::new(),
            alerts: vec![MessageAlert {
                fingerprint: fp.into(),
                status: Status::Firing,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                starts_at_ns: at,
                ends_at_ns: None,
                value: None,
                generator_url: String::new(),
            }],
            external_url: String::new(),
            escalation: 0,
            created_ns: at,
        }
    }

    #[test]
    fn an_outcome_is_saved_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        assert!(store.load_alerting().unwrap().cursor.is_none());
        let outcome = Outcome {
            alerts: vec![record("f1"), record("f2")],
            removed: Vec::new(),
            history: vec![HistoryEntry {
                fingerprint: "f1".into(),
                rule: "cpu".into(),
                kind: HistoryKind::Fired,
                labels: BTreeMap::new(),
                value: None,
                at_ns: 5,
                detail: String::new(),
            }],
            messages: vec![message("f1", 10), message("f2", 20)],
            groups: Some(BTreeMap::new()),
        };
        let silence = Silence {
            id: "s".into(),
            matchers: vec![parse("host=~\"a|b\"").unwrap()],
            starts_ns: 0,
            ends_ns: 100,
            author: "ann".into(),
            comment: "c".into(),
        };
        store
            .save_alerting(
                &outcome,
                Some(std::slice::from_ref(&silence)),
                Some(Cursor::from_position(42)),
            )
            .unwrap();
        store
            .save_alerting(
                &Outcome {
                    removed: vec!["f2".into()],
                    ..Outcome::default()
                },
                None,
                None,
            )
            .unwrap();
        let loaded = store.load_alerting().unwrap();
        assert_eq!(loaded.cursor, Some(Cursor::from_position(42)));
        assert_eq!(loaded.saved.alerts, vec![record("f1")]);
        assert_eq!(loaded.saved.silences, vec![silence]);

        // The outbox: due in order, retried later, then sent.
        let due = store.due_notifications(15, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].message, message("f1", 10));
        store
            .record_attempt(
                due[0].id,
                &Attempt::Retry {
                    retry_at_ns: 30,
                    error: "503".into(),
                },
            )
            .unwrap();
        let due: Vec<i64> = store
            .due_notifications(25, 10)
            .unwrap()
            .iter()
            .map(|e| e.message.created_ns)
            .collect();
        assert_eq!(due, [20]);
        assert_eq!(store.next_notification_ns().unwrap(), Some(20));
        let first = store
            .notifications(&LogQuery {
                fingerprint: Some("f1".into()),
                limit: 10,
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].attempts, first[0].last_error.as_deref()),
            (1, Some("503"))
        );
        store
            .record_attempt(first[0].id, &Attempt::Sent { at_ns: 31 })
            .unwrap();
        let log = store
            .notifications(&LogQuery {
                limit: 10,
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(
            log.iter().map(|e| e.state).collect::<Vec<_>>(),
            [OutboxState::Pending, OutboxState::Sent]
        );
        assert_eq!(log[1].sent_ns, Some(31));
        let history = store
            .alert_history(&LogQuery {
                limit: 5,
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].entry.kind, HistoryKind::Fired);
        // A group's later notification waits for its earlier one.
        let later = message("f2", 26);
        store
            .save_alerting(
                &Outcome {
                    messages: vec![later],
                    ..Outcome::default()
                },
                None,
                None,
            )
            .unwrap();
        let due: Vec<i64> = store
            .due_notifications(40, 10)
            .unwrap()
            .iter()
            .map(|e| e.message.created_ns)
            .collect();
        assert_eq!(due, [20]);
        let f2 = store.due_notifications(40, 10).unwrap()[0].id;
        store
            .record_attempt(
                f2,
                &Attempt::Failed {
                    error: "400".into(),
                },
            )
            .unwrap();
        let due: Vec<i64> = store
            .due_notifications(40, 10)
            .unwrap()
            .iter()
            .map(|e| e.message.created_ns)
            .collect();
        assert_eq!(due, [26]);
        // Finished notifications, history and ended silences go; pending ones stay.
        assert_eq!(store.expire_alerting(1000).unwrap(), 4);
        assert_eq!(
            store
                .notifications(&LogQuery {
                    limit: 10,
                    ..LogQuery::default()
                })
                .unwrap()
                .len(),
            1
        );
    }
}
