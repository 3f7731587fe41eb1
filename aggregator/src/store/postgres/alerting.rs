//! The alerting engine's state; see [`crate::store::alerting`].
//!
//! [`AlertingStore::save_alerting`] is one transaction; [`AlertingStore::load_alerting`] reads
//! in one read-only snapshot, so records, groups, silences and the cursor are of one moment.

use std::time::Duration;

use postgres::{GenericClient, Row, Transaction};

use super::{BadValue, Fail, PostgresStore, as_bigint, from_json, pg_text, to_json};
use crate::rules::engine::{AlertRecord, HistoryEntry, Outcome};
use crate::rules::matcher::Silence;
use crate::store::alerting::{
    AlertingStore, Attempt, Claim, HistoryRow, LoadedAlerting, LogQuery, OutboxEntry, OutboxState,
    StoredSilence,
};
use crate::store::{Cursor, StoreError};

/// The name of the cursor's row in `alerting_meta`.
/// Takes the lease when it is free, expired or the claimer's own; the epoch grows when it
/// changes hands. Answers the epoch and the seconds left, or nothing when another holds it.
const CLAIM_LEASE: &str = "
    INSERT INTO alerting_lease (holder, epoch, expires)
    VALUES ($1, 1, clock_timestamp() + make_interval(secs => $2))
    ON CONFLICT (singleton) DO UPDATE
       SET epoch = CASE WHEN alerting_lease.holder = EXCLUDED.holder
                        THEN alerting_lease.epoch ELSE alerting_lease.epoch + 1 END,
           holder = EXCLUDED.holder,
           expires = EXCLUDED.expires
     WHERE alerting_lease.holder = EXCLUDED.holder
        OR alerting_lease.expires <= clock_timestamp()
    RETURNING epoch, EXTRACT(EPOCH FROM expires - clock_timestamp())::float8";
const LEASE_HOLDER: &str = "
    SELECT holder, EXTRACT(EPOCH FROM expires - clock_timestamp())::float8 FROM alerting_lease";
/// Expires the lease now; its next holder gets the next epoch.
const RELEASE_LEASE: &str =
    "UPDATE alerting_lease SET expires = clock_timestamp(), epoch = epoch + 1 WHERE holder = $1";
const LEASE_EPOCH: &str = "SELECT epoch FROM alerting_lease FOR SHARE";

/// A duration of `secs` seconds; none when negative.
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
}

const CURSOR: &str = "cursor";

const PUT_ALERT: &str = "
INSERT INTO alerts (fingerprint, record) VALUES ($1, $2)
ON CONFLICT (fingerprint) DO UPDATE SET record = excluded.record";

const DELETE_ALERT: &str = "DELETE FROM alerts WHERE fingerprint = $1";

const ADD_HISTORY: &str =
    "INSERT INTO alert_history (fingerprint, at_ns, entry) VALUES ($1, $2, $3)";

/// A new notification: pending, due at once.
const ADD_OUTBOX: &str = "
INSERT INTO outbox (receiver, group_key, fingerprints, created_ns, state, next_attempt_ns, message)
VALUES ($1, $2, $3, $4, 'pending', $4, $5)";

const PUT_GROUP: &str = "INSERT INTO alert_groups (key, grp) VALUES ($1, $2)";

const PUT_SILENCE: &str = "INSERT INTO silences (id, ends_ns, silence) VALUES ($1, $2, $3)";

const PUT_CURSOR: &str = "
INSERT INTO alerting_meta (name, value) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET value = excluded.value";

const RECORDS: &str = "SELECT record FROM alerts ORDER BY fingerprint COLLATE \"C\"";

const GROUPS: &str = "SELECT key, grp FROM alert_groups";

const SILENCES: &str = "SELECT silence FROM silences ORDER BY ends_ns DESC, id COLLATE \"C\"";

const READ_CURSOR: &str = "SELECT value FROM alerting_meta WHERE name = $1";

/// The columns an [`OutboxEntry`] is read from.
macro_rules! outbox_columns {
    () => {
        "id, message, state, attempts, next_attempt_ns, last_error, sent_ns"
    };
}

/// Due notifications, oldest first; of one group for one receiver, the oldest pending only.
const DUE: &str = concat!(
    "SELECT ",
    outbox_columns!(),
    " FROM outbox
      WHERE state = 'pending' AND next_attempt_ns <= $1
        AND NOT EXISTS (SELECT 1 FROM outbox AS earlier
                        WHERE earlier.state = 'pending'
                          AND earlier.receiver = outbox.receiver
                          AND earlier.group_key = outbox.group_key
                          AND earlier.id < outbox.id)
      ORDER BY next_attempt_ns, id LIMIT $2"
);

const NEXT_DUE: &str = "SELECT min(next_attempt_ns) FROM outbox WHERE state = 'pending'";

/// Counts the attempt; a retry moves the next attempt, and an error is kept until the next one.
const RECORD_ATTEMPT: &str = "
UPDATE outbox SET state = $2, attempts = attempts + 1,
    next_attempt_ns = CASE WHEN $2 = 'pending' THEN $3 ELSE next_attempt_ns END,
    last_error = coalesce($4, last_error), sent_ns = $5
WHERE id = $1";

/// The notification log, newest first, of one alert or all.
const NOTIFICATIONS: &str = concat!(
    "SELECT ",
    outbox_columns!(),
    " FROM outbox WHERE id < $1 AND ($2::text IS NULL OR fingerprints @> ARRAY[$2::text])
      ORDER BY id DESC LIMIT $3"
);

const HISTORY: &str = "
SELECT id, entry FROM alert_history
WHERE id < $1 AND ($2::text IS NULL OR fingerprint = $2) ORDER BY id DESC LIMIT $3";

/// What [`AlertingStore::expire_alerting`] deletes, each before the cut-off.
const EXPIRE: [&str; 3] = [
    "DELETE FROM outbox WHERE state != 'pending' AND created_ns < $1",
    "DELETE FROM alert_history WHERE at_ns < $1",
    "DELETE FROM silences WHERE ends_ns < $1",
];

fn save(
    tx: &mut Transaction<'_>,
    outcome: &Outcome,
    silences: Option<&[Silence]>,
    cursor: Option<Cursor>,
) -> Result<(), Fail> {
    let put = tx.prepare(PUT_ALERT)?;
    for a in &outcome.alerts {
        tx.execute(&put, &[&a.fingerprint, &to_json("record", a)?])?;
    }
    let delete = tx.prepare(DELETE_ALERT)?;
    for fingerprint in &outcome.removed {
        tx.execute(&delete, &[fingerprint])?;
    }
    let history = tx.prepare(ADD_HISTORY)?;
    for h in &outcome.history {
        tx.execute(&history, &[&h.fingerprint, &h.at_ns, &to_json("entry", h)?])?;
    }
    let outbox = tx.prepare(ADD_OUTBOX)?;
    for m in &outcome.messages {
        let fingerprints: Vec<&str> = m.alerts.iter().map(|a| a.fingerprint.as_str()).collect();
        tx.execute(
            &outbox,
            &[
                &m.receiver,
                &m.group_key,
                &fingerprints,
                &m.created_ns,
                &to_json("message", m)?,
            ],
        )?;
    }
    if let Some(groups) = &outcome.groups {
        tx.execute("DELETE FROM alert_groups", &[])?;
        let put = tx.prepare(PUT_GROUP)?;
        for (key, group) in groups {
            tx.execute(&put, &[key, &to_json("grp", group)?])?;
        }
    }
    if let Some(silences) = silences {
        tx.execute("DELETE FROM silences", &[])?;
        let put = tx.prepare(PUT_SILENCE)?;
        for s in silences {
            let stored = to_json("silence", &StoredSilence::from(s))?;
            tx.execute(&put, &[&s.id, &s.ends_ns, &stored])?;
        }
    }
    if let Some(cursor) = cursor {
        let position = i64::try_from(cursor.position()).unwrap_or(i64::MAX);
        tx.execute(PUT_CURSOR, &[&CURSOR, &position])?;
    }
    Ok(())
}

/// Each row's first column, a JSON value.
fn json_rows<T: serde::de::DeserializeOwned>(
    client: &mut impl GenericClient,
    sql: &str,
    column: &'static str,
) -> Result<Vec<T>, Fail> {
    client
        .query(sql, &[])?
        .iter()
        .map(|row| Ok(from_json(column, row.try_get(0)?)?))
        .collect()
}

fn load(tx: &mut Transaction<'_>) -> Result<LoadedAlerting, Fail> {
    let mut loaded = LoadedAlerting::default();
    loaded.saved.alerts = json_rows(tx, RECORDS, "record")?;
    for row in tx.query(GROUPS, &[])? {
        let key: String = row.try_get("key")?;
        let group = from_json("grp", row.try_get("grp")?)?;
        loaded.saved.groups.insert(key, group);
    }
    for stored in json_rows::<StoredSilence>(tx, SILENCES, "silence")? {
        let silence = stored
            .to_silence()
            .map_err(|why| Fail::Conflict(format!("silence {} in the store: {why}", stored.id)))?;
        loaded.saved.silences.push(silence);
    }
    loaded.cursor = tx
        .query_opt(READ_CURSOR, &[&CURSOR])?
        .map(|row| row.try_get::<_, i64>(0))
        .transpose()?
        .map(|v| Cursor::from_position(u64::try_from(v).unwrap_or(0)));
    Ok(loaded)
}

fn outbox_row(r: &Row) -> Result<OutboxEntry, Fail> {
    let state: &str = r.try_get("state")?;
    Ok(OutboxEntry {
        id: r.try_get("id")?,
        message: from_json("message", r.try_get("message")?)?,
        state: OutboxState::parse(state)
            .ok_or_else(|| BadValue::new("state", format!("`{state}` is not an outbox state")))?,
        attempts: u32::try_from(r.try_get::<_, i32>("attempts")?)
            .map_err(|e| BadValue::new("attempts", e))?,
        next_attempt_ns: r.try_get("next_attempt_ns")?,
        last_error: r.try_get("last_error")?,
        sent_ns: r.try_get("sent_ns")?,
    })
}

/// The `id` bound, fingerprint and limit of a [`LogQuery`].
fn page(query: &LogQuery) -> (i64, Option<&str>, i64) {
    (
        query.before.unwrap_or(i64::MAX),
        query.fingerprint.as_deref(),
        as_bigint(query.limit.max(1)),
    )
}

impl AlertingStore for PostgresStore {
    fn load_alerting(&self) -> Result<LoadedAlerting, StoreError> {
        self.snapshot(|| "reading the alerting engine's state".to_owned(), load)
    }

    fn save_alerting(
        &self,
        outcome: &Outcome,
        silences: Option<&[Silence]>,
        cursor: Option<Cursor>,
    ) -> Result<(), StoreError> {
        let context = || {
            format!(
                "saving alert state ({} records, {} removed, {} notifications)",
                outcome.alerts.len(),
                outcome.removed.len(),
                outcome.messages.len()
            )
        };
        self.write(context, |tx| save(tx, outcome, silences, cursor))
    }

    fn claim_alerting(&self, holder: &str, ttl: Duration) -> Result<Claim, StoreError> {
        let holder = pg_text(holder);
        self.write(
            || format!("claiming the alerting lease for {holder}"),
            |tx| {
                let claimed = tx.query_opt(CLAIM_LEASE, &[&holder.as_ref(), &ttl.as_secs_f64()])?;
                if let Some(row) = claimed {
                    return Ok(Claim::Held {
                        epoch: row.try_get(0)?,
                        remaining: seconds(row.try_get(1)?),
                    });
                }
                let row = tx.query_one(LEASE_HOLDER, &[])?;
                Ok(Claim::Taken {
                    holder: row.try_get(0)?,
                    remaining: seconds(row.try_get(1)?),
                })
            },
        )
    }

    fn release_alerting(&self, holder: &str) -> Result<(), StoreError> {
        let holder = pg_text(holder);
        self.write(
            || format!("releasing the alerting lease of {holder}"),
            |tx| {
                tx.execute(RELEASE_LEASE, &[&holder.as_ref()])?;
                Ok(())
            },
        )
    }

    fn save_alerting_fenced(
        &self,
        epoch: i64,
        outcome: &Outcome,
        silences: Option<&[Silence]>,
        cursor: Option<Cursor>,
    ) -> Result<(), StoreError> {
        let context = || {
            format!(
                "saving alert state at lease epoch {epoch} ({} records, {} removed, {} \
                 notifications)",
                outcome.alerts.len(),
                outcome.removed.len(),
                outcome.messages.len()
            )
        };
        self.write(context, |tx| {
            // Shared: a claim waits for this transaction, and its holder then reads what it
            // wrote.
            let current: Option<i64> = tx
                .query_opt(LEASE_EPOCH, &[])?
                .map(|row| row.try_get(0))
                .transpose()?;
            if current != Some(epoch) {
                return Err(Fail::LeaseLost(epoch));
            }
            save(tx, outcome, silences, cursor)
        })
    }

    fn due_notifications(&self, now_ns: i64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read(
            || "reading due notifications".to_owned(),
            |client| {
                client
                    .query(DUE, &[&now_ns, &as_bigint(limit.max(1))])?
                    .iter()
                    .map(outbox_row)
                    .collect()
            },
        )
    }

    fn next_notification_ns(&self) -> Result<Option<i64>, StoreError> {
        self.read(
            || "reading the next notification's time".to_owned(),
            |client| Ok(client.query_one(NEXT_DUE, &[])?.try_get(0)?),
        )
    }

    fn record_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError> {
        let (state, next, error, sent) = match attempt {
            Attempt::Sent { at_ns } => (OutboxState::Sent, *at_ns, None, Some(*at_ns)),
            Attempt::Retry { retry_at_ns, error } => {
                (OutboxState::Pending, *retry_at_ns, Some(error), None)
            }
            Attempt::Failed { error } => (OutboxState::Failed, 0, Some(error), None),
        };
        let error = error.map(|e| pg_text(e));
        self.read(
            || format!("recording notification {id}"),
            |client| {
                client.execute(
                    RECORD_ATTEMPT,
                    &[&id, &state.as_str(), &next, &error, &sent],
                )?;
                Ok(())
            },
        )
    }

    fn notifications(&self, query: &LogQuery) -> Result<Vec<OutboxEntry>, StoreError> {
        let (before, fingerprint, limit) = page(query);
        self.read(
            || "listing notifications".to_owned(),
            |client| {
                client
                    .query(NOTIFICATIONS, &[&before, &fingerprint, &limit])?
                    .iter()
                    .map(outbox_row)
                    .collect()
            },
        )
    }

    fn alert_history(&self, query: &LogQuery) -> Result<Vec<HistoryRow>, StoreError> {
        let (before, fingerprint, limit) = page(query);
        self.read(
            || "listing alert history".to_owned(),
            |client| {
                client
                    .query(HISTORY, &[&before, &fingerprint, &limit])?
                    .iter()
                    .map(|row| {
                        Ok(HistoryRow {
                            id: row.try_get("id")?,
                            entry: from_json::<HistoryEntry>("entry", row.try_get("entry")?)?,
                        })
                    })
                    .collect()
            },
        )
    }

    fn alert_records(&self) -> Result<Vec<AlertRecord>, StoreError> {
        self.read(
            || "reading alert records".to_owned(),
            |client| json_rows(client, RECORDS, "record"),
        )
    }

    fn stored_silences(&self) -> Result<Vec<StoredSilence>, StoreError> {
        self.read(
            || "reading silences".to_owned(),
            |client| json_rows(client, SILENCES, "silence"),
        )
    }

    fn expire_alerting(&self, cutoff_ns: i64) -> Result<u64, StoreError> {
        self.write(
            || format!("expiring alert history before {cutoff_ns}"),
            |tx| {
                let mut deleted = 0;
                for sql in EXPIRE {
                    deleted += tx.execute(sql, &[&cutoff_ns])?;
                }
                Ok(deleted)
            },
        )
    }
}
