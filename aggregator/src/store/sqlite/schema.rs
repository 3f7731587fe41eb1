//! The tables and their migrations. `PRAGMA user_version` counts the migrations applied; a
//! store from a newer build is refused rather than guessed at.

use std::path::Path;

use outpost_common::event::EventKind;
use rusqlite::{Connection, OptionalExtension};

use super::{open_error, stored_table};
use crate::store::StoreError;

/// Schema migrations; `PRAGMA user_version` counts how many have been applied.
const MIGRATIONS: &[&str] = &[
    SCHEMA_V1,
    SCHEMA_V2_HOST_SUMMARY,
    SCHEMA_V3_METRIC_UNIT,
    SCHEMA_V4_FIM_TRAIL,
    SCHEMA_V5_FIM_TRAIL_AHEAD,
    SCHEMA_V6_API_TOKENS,
    SCHEMA_V7_AGENT_LABELS,
    SCHEMA_V8_METRIC_SERIES,
    SCHEMA_V9_LOG_BLOCKS,
    SCHEMA_V10_LOG_LINES_IN_BLOCKS,
    SCHEMA_V11_ALERTING,
    SCHEMA_V12_ENROLLMENT,
];

pub(super) const SCHEMA_V1: &str = "
CREATE TABLE agents (
    agent_key               INTEGER PRIMARY KEY,
    agent_id                TEXT NOT NULL UNIQUE,
    spool_id                INTEGER,
    first_seen_ns           INTEGER NOT NULL,
    last_seen_ns            INTEGER NOT NULL,
    agent_version           TEXT,
    hostname                TEXT,
    os                      TEXT,
    kernel                  TEXT,
    arch                    TEXT,
    cpus                    INTEGER,
    memory_bytes            INTEGER,
    boot_time_ns            INTEGER,
    connected               INTEGER NOT NULL DEFAULT 0,
    last_disconnect_ns      INTEGER,
    last_disconnect_reason  TEXT,
    status                  TEXT,    -- latest AgentStatus, JSON
    status_received_ns      INTEGER,
    drops_changed_ns        INTEGER,
    drops_last_increase     TEXT,    -- DropCounters, JSON
    backlog_rising_since_ns INTEGER,
    clock_skew_ns           INTEGER
);
CREATE TABLE spools (
    agent_key     INTEGER NOT NULL,
    spool_id      INTEGER NOT NULL,
    low_water_seq INTEGER NOT NULL,
    last_batch_ns INTEGER NOT NULL,
    PRIMARY KEY (agent_key, spool_id)
) WITHOUT ROWID;
CREATE TABLE batches (
    agent_key   INTEGER NOT NULL,
    spool_id    INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    PRIMARY KEY (agent_key, spool_id, seq)
) WITHOUT ROWID;
CREATE TABLE metrics (
    id          INTEGER PRIMARY KEY,
    agent_key   INTEGER NOT NULL,
    time_ns     INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,     -- gauge | counter
    value       REAL,              -- NULL for NaN
    attributes  TEXT               -- JSON object, NULL when empty
);
CREATE TABLE logs (
    id          INTEGER PRIMARY KEY,
    agent_key   INTEGER NOT NULL,
    time_ns     INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    source      TEXT NOT NULL,
    severity    INTEGER,           -- syslog level: 0 emergency .. 7 debug
    body        TEXT NOT NULL,
    attributes  TEXT               -- JSON object, NULL when empty
);
CREATE TABLE fim_events (
    id          INTEGER PRIMARY KEY,
    agent_key   INTEGER NOT NULL,
    time_ns     INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    path        TEXT NOT NULL,
    change      TEXT NOT NULL,     -- created | modified | metadata_changed | deleted
    before      TEXT,              -- FileState, JSON
    after       TEXT               -- FileState, JSON
);
CREATE TABLE agent_status (
    id          INTEGER PRIMARY KEY,
    agent_key   INTEGER NOT NULL,
    time_ns     INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    status      TEXT NOT NULL      -- AgentStatus, JSON
);
";

/// Each host's latest CPU busy and memory used fractions and fullest filesystem, with the
/// agent's time of each ([`HostSummary`]). Columns on `agents` rather than a table of their own:
/// fleet status reads them with the registry row it reads anyway.
const SCHEMA_V2_HOST_SUMMARY: &str = "
ALTER TABLE agents ADD COLUMN cpu_busy REAL;
ALTER TABLE agents ADD COLUMN cpu_busy_ns INTEGER;
ALTER TABLE agents ADD COLUMN memory_used REAL;
ALTER TABLE agents ADD COLUMN memory_used_ns INTEGER;
ALTER TABLE agents ADD COLUMN fullest_fs_mountpoint TEXT;
ALTER TABLE agents ADD COLUMN fullest_fs REAL;
ALTER TABLE agents ADD COLUMN fullest_fs_ns INTEGER;
";

/// Rows stored before units travelled keep an empty unit.
const SCHEMA_V3_METRIC_UNIT: &str = "
ALTER TABLE metrics ADD COLUMN unit TEXT NOT NULL DEFAULT '';
";

/// Every field of a file-integrity event (protocol 5), each agent's place in its tamper-evident
/// trail, and the breaks found in it.
///
/// Rows stored before keep NULL in the new columns: no attributes listed, no move, detection
/// unknown (read back as realtime), and no place in a trail (`seq` NULL, read back as 0, which no
/// trail uses). `fim_events` is the one data table with indexes beyond its ids: file-integrity
/// changes are few next to logs and metrics, and they are read by agent and trail position, by
/// agent and time, and by path prefix.
pub(super) const SCHEMA_V4_FIM_TRAIL: &str = "
ALTER TABLE fim_events ADD COLUMN changed TEXT;      -- attribute names, JSON array; NULL when none
ALTER TABLE fim_events ADD COLUMN moved_from TEXT;
ALTER TABLE fim_events ADD COLUMN detected_by TEXT;  -- realtime | scheduled | rescan
ALTER TABLE fim_events ADD COLUMN seq INTEGER;       -- the event's place in its agent's trail
ALTER TABLE fim_events ADD COLUMN chain TEXT;        -- hex SHA-256 chaining it to the one before
CREATE INDEX fim_events_trail ON fim_events (agent_key, seq);
CREATE INDEX fim_events_agent_time ON fim_events (agent_key, time_ns);
CREATE INDEX fim_events_time ON fim_events (time_ns);
CREATE INDEX fim_events_path ON fim_events (path);
CREATE TABLE fim_trails (
    agent_key INTEGER PRIMARY KEY,
    seq       INTEGER NOT NULL,  -- the last event received
    chain     TEXT NOT NULL      -- and its chain
);
CREATE TABLE fim_trail_breaks (
    id           INTEGER PRIMARY KEY,
    agent_key    INTEGER NOT NULL,
    event_id     INTEGER NOT NULL, -- the fim_events row that showed the break
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,    -- gap | replay | edit | reset | reorder
    expected_seq INTEGER NOT NULL,
    detail       TEXT NOT NULL,
    received_ns  INTEGER NOT NULL
);
CREATE INDEX fim_trail_breaks_agent ON fim_trail_breaks (agent_key, seq);
";

/// The file-integrity events received ahead of their place in their agent's trail (a later
/// batch stored before an earlier one), held until the events before them arrive or are known
/// lost. Few rows: the events of the batches one agent has in flight at once.
const SCHEMA_V5_FIM_TRAIL_AHEAD: &str = "
CREATE TABLE fim_trail_ahead (
    agent_key INTEGER NOT NULL,
    seq       INTEGER NOT NULL,  -- the event's place in the trail
    event_id  INTEGER NOT NULL,  -- its fim_events row
    spool_id  INTEGER NOT NULL,  -- and the batch that brought it
    batch_seq INTEGER NOT NULL,
    PRIMARY KEY (agent_key, seq)
) WITHOUT ROWID;
";

/// API tokens (the secret's SHA-256 only) and the audit log of the API's mutating and refused
/// calls. A name is held by at most one token not revoked.
const SCHEMA_V6_API_TOKENS: &str = "
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,      -- viewer | operator | admin
    secret_sha256 BLOB NOT NULL,
    created_ns    INTEGER NOT NULL,
    expires_ns    INTEGER,
    revoked_ns    INTEGER,
    last_used_ns  INTEGER
) WITHOUT ROWID;
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_ns IS NULL;
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY,
    time_ns    INTEGER NOT NULL,
    token_id   TEXT,                 -- NULL when no valid token was presented
    token_name TEXT,
    address    TEXT NOT NULL,        -- the client's IP address
    method     TEXT NOT NULL,
    route      TEXT NOT NULL,        -- the matched route, e.g. /api/v1/tokens/{id}
    status     INTEGER NOT NULL,     -- the HTTP status answered
    outcome    TEXT NOT NULL         -- ok | unauthorized | forbidden | rate_limited | refused
);
";

/// The labels each agent sends in its Hello (protocol 6), as a JSON object; NULL until then.
const SCHEMA_V7_AGENT_LABELS: &str = "
ALTER TABLE agents ADD COLUMN labels TEXT;
";

/// Metrics as series and points ([`super::metrics`]).
///
/// - `metric_series`: one row per agent, name, unit, kind and attributes (a JSON object in the
///   agent's order, `''` when there are none), found by that key and by name.
/// - `metric_points`: the head, one row per recent point, in the shared id sequence like every
///   event row, with an index by series and time (covering the value, so a query never visits
///   the rows).
/// - `metric_chunks`: older points, packed per series ([`super::chunk`]) by the compaction that
///   runs with retention, found by series and time range, expired by receive time.
///
/// Existing rows become series and head points with their ids, and the next compaction packs
/// them. `metrics` becomes a view of the head with the columns it had, for readers in SQL.
///
/// `logs` gains an index by agent and time, for searches of one host over a time range.
pub(super) const SCHEMA_V8_METRIC_SERIES: &str = "
CREATE TABLE metric_series (
    series_id  INTEGER PRIMARY KEY,
    agent_key  INTEGER NOT NULL,
    name       TEXT NOT NULL,
    unit       TEXT NOT NULL,
    kind       TEXT NOT NULL,     -- gauge | counter
    attributes TEXT NOT NULL      -- JSON object in the agent's order; '' when none
);
CREATE UNIQUE INDEX metric_series_key ON metric_series (agent_key, name, attributes, unit, kind);
CREATE INDEX metric_series_name ON metric_series (name, agent_key);
CREATE TABLE metric_points (
    id          INTEGER PRIMARY KEY,
    series_id   INTEGER NOT NULL,
    time_ns     INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    bucket      INTEGER NOT NULL, -- received_ns rounded down to the minute
    value       REAL              -- NULL for NaN
);
CREATE INDEX metric_points_bucket ON metric_points (bucket, series_id, time_ns, value);
CREATE TABLE metric_chunks (
    chunk_id    INTEGER PRIMARY KEY,
    series_id   INTEGER NOT NULL,
    start_ns    INTEGER NOT NULL, -- the first point's time
    end_ns      INTEGER NOT NULL, -- the last point's time
    first_id    INTEGER NOT NULL, -- the lowest event id among the points
    last_id     INTEGER NOT NULL, -- the highest
    received_ns INTEGER NOT NULL, -- the latest receive time among the points
    points      INTEGER NOT NULL,
    data        BLOB NOT NULL
);
CREATE INDEX metric_chunks_series_time ON metric_chunks (series_id, end_ns, start_ns);
CREATE INDEX metric_chunks_received ON metric_chunks (received_ns);
INSERT INTO metric_series (agent_key, name, unit, kind, attributes)
    SELECT DISTINCT agent_key, name, unit, kind, coalesce(attributes, '') FROM metrics;
INSERT INTO metric_points (id, series_id, time_ns, received_ns, bucket, value)
    SELECT m.id, s.series_id, m.time_ns, m.received_ns,
           m.received_ns - (((m.received_ns % 60000000000) + 60000000000) % 60000000000), m.value
    FROM metrics m JOIN metric_series s
      ON s.agent_key = m.agent_key AND s.name = m.name AND s.unit = m.unit AND s.kind = m.kind
     AND s.attributes = coalesce(m.attributes, '')
    ORDER BY m.id;
DROP TABLE metrics;
CREATE VIEW metrics (id, agent_key, time_ns, received_ns, name, kind, value, attributes, unit) AS
    SELECT p.id, s.agent_key, p.time_ns, p.received_ns, s.name, s.kind, p.value,
           nullif(s.attributes, ''), s.unit
    FROM metric_points p JOIN metric_series s ON s.series_id = p.series_id;
CREATE INDEX logs_agent_time ON logs (agent_key, time_ns);
";

/// Log bodies kept as the agent compressed them: a batch that arrived compressed and holds log
/// records is stored once as a block, and its log rows keep an empty body and the block's id.
/// Event `block + i` is the batch's `i`-th event. A row stored before, or from a batch that did
/// not arrive compressed, keeps its body and no block.
pub(super) const SCHEMA_V9_LOG_BLOCKS: &str = "
CREATE TABLE log_blocks (
    id          INTEGER PRIMARY KEY, -- the id of the batch's first event
    events      INTEGER NOT NULL,    -- events in the batch: ids id .. id + events - 1
    received_ns INTEGER NOT NULL,
    codec       INTEGER NOT NULL,    -- 0 none, 1 zstd
    raw_bytes   INTEGER NOT NULL,    -- the event list's length once decompressed
    data        BLOB NOT NULL
);
ALTER TABLE logs ADD COLUMN block INTEGER;
";

/// Log records kept in a block have no row of their own: a block carries what finding its
/// records takes (agent, how many, their time range), before its data so that a scan need not
/// read past it. The rows of schema 9's blocks move into them; the index finds one agent's
/// blocks over a time range.
pub(super) const SCHEMA_V10_LOG_LINES_IN_BLOCKS: &str = "
CREATE TABLE log_blocks_v10 (
    id          INTEGER PRIMARY KEY, -- the id of the batch's first event
    events      INTEGER NOT NULL,    -- events in the batch: ids id .. id + events - 1
    agent_key   INTEGER NOT NULL,
    logs        INTEGER NOT NULL,    -- log records among them
    min_time_ns INTEGER NOT NULL,    -- the log records' time range
    max_time_ns INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    codec       INTEGER NOT NULL,    -- 0 none, 1 zstd
    raw_bytes   INTEGER NOT NULL,    -- the event list's length once decompressed
    data        BLOB NOT NULL
);
INSERT INTO log_blocks_v10
    (id, events, agent_key, logs, min_time_ns, max_time_ns, received_ns, codec, raw_bytes, data)
SELECT b.id, b.events, r.agent_key, r.logs, r.min_time_ns, r.max_time_ns, b.received_ns, b.codec,
       b.raw_bytes, b.data
FROM log_blocks b JOIN (
    SELECT block, min(agent_key) AS agent_key, count(*) AS logs, min(time_ns) AS min_time_ns,
           max(time_ns) AS max_time_ns
    FROM logs WHERE block IS NOT NULL GROUP BY block
) r ON r.block = b.id;
DELETE FROM logs WHERE block IS NOT NULL;
DROP TABLE log_blocks;
ALTER TABLE log_blocks_v10 RENAME TO log_blocks;
ALTER TABLE logs DROP COLUMN block;
CREATE INDEX log_blocks_agent_time ON log_blocks (agent_key, max_time_ns);
";

/// The index of logs by agent and time, as schema 8 creates it; `[store] log_index = false`
/// drops it and `true` makes it again.
/// The alerting engine's state (`store::alerting`): records as JSON (read whole, written whole,
/// never queried by field), history, the dispatcher's groups, silences, the outbox and the feed
/// cursor evaluated up to.
const SCHEMA_V11_ALERTING: &str = "
CREATE TABLE alerts (
    fingerprint TEXT PRIMARY KEY,
    record      TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE alert_history (
    id          INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    at_ns       INTEGER NOT NULL,
    entry       TEXT NOT NULL
);
CREATE INDEX alert_history_fingerprint ON alert_history (fingerprint, id);
CREATE TABLE alert_groups (
    key   TEXT PRIMARY KEY,
    grp   TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE silences (
    id      TEXT PRIMARY KEY,
    ends_ns INTEGER NOT NULL,
    silence TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    receiver        TEXT NOT NULL,
    group_key       TEXT NOT NULL,
    created_ns      INTEGER NOT NULL,
    state           TEXT NOT NULL,      -- pending | sent | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ns INTEGER NOT NULL,
    last_error      TEXT,
    sent_ns         INTEGER,
    message         TEXT NOT NULL
);
CREATE INDEX outbox_pending ON outbox (next_attempt_ns) WHERE state = 'pending';
CREATE INDEX outbox_pending_group ON outbox (receiver, group_key, id) WHERE state = 'pending';
CREATE TABLE alerting_meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Enrollment (`store::sqlite::enrollment`): the tokens (only their secrets' hashes), and the
/// hash of every public key certified by enrollment or renewal, so that a request is never
/// served twice for the same key; and agents removed from the fleet.
const SCHEMA_V12_ENROLLMENT: &str = "
CREATE TABLE enrollment_tokens (
    id             TEXT PRIMARY KEY,   -- 16 hex digits
    secret_sha256  BLOB NOT NULL,
    created_ns     INTEGER NOT NULL,
    expires_ns     INTEGER NOT NULL,
    max_uses       INTEGER,            -- NULL: any number until it expires
    uses           INTEGER NOT NULL DEFAULT 0,
    labels         TEXT NOT NULL,      -- JSON [[key, value], ...], sorted by key
    allow_reenroll INTEGER NOT NULL,
    revoked_ns     INTEGER
) WITHOUT ROWID;
CREATE TABLE enrolled_keys (
    key_sha256  BLOB PRIMARY KEY,      -- SHA-256 of the certified public key (DER)
    agent_id    TEXT NOT NULL,
    token_id    TEXT,                  -- NULL for a renewal
    enrolled_ns INTEGER NOT NULL
) WITHOUT ROWID;
-- `agents remove`: out of the fleet until the agent says Hello again. The row stays, since
-- stored events refer to its key.
ALTER TABLE agents ADD COLUMN removed_ns INTEGER;
";

pub(super) const LOG_INDEX: &str = "CREATE INDEX logs_agent_time ON logs (agent_key, time_ns);";

/// The schema version this build writes and reads.
pub(super) fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = open_error(path);
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew {
            location: path.display().to_string(),
            found,
            supported,
        });
    }
    if found == supported {
        return Ok(());
    }
    let tx = conn.transaction().map_err(open_err)?;
    for sql in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
        tx.execute_batch(sql).map_err(open_err)?;
    }
    tx.pragma_update(None, "user_version", supported)
        .map_err(open_err)?;
    tx.commit().map_err(open_err)
}

/// The highest receive time in any data table (the last row of each, by the id invariant).
pub(super) fn last_received_ns(conn: &Connection) -> rusqlite::Result<i64> {
    let mut last = i64::MIN;
    for sql in [
        "SELECT max(received_ns) FROM metric_chunks",
        "SELECT received_ns FROM log_blocks ORDER BY id DESC LIMIT 1",
    ] {
        let ns: Option<i64> = conn.query_row(sql, [], |r| r.get(0)).optional()?.flatten();
        last = last.max(ns.unwrap_or(i64::MIN));
    }
    for kind in EventKind::ALL {
        let sql = format!(
            "SELECT received_ns FROM {} ORDER BY id DESC LIMIT 1",
            stored_table(kind)
        );
        if let Some(ns) = conn
            .query_row(&sql, [], |r| r.get::<_, i64>(0))
            .optional()?
        {
            last = last.max(ns);
        }
    }
    Ok(last)
}

/// The id the next event row gets: one above the highest id of any data table, of a chunk or
/// of a log block's events.
pub(super) fn next_event_id(conn: &Connection) -> rusqlite::Result<i64> {
    let mut last: i64 = 0;
    for sql in [
        "SELECT max(last_id) FROM metric_chunks",
        "SELECT max(id + events - 1) FROM log_blocks",
    ] {
        let max: Option<i64> = conn.query_row(sql, [], |r| r.get(0))?;
        last = last.max(max.unwrap_or(0));
    }
    for kind in EventKind::ALL {
        let max: Option<i64> = conn.query_row(
            &format!("SELECT max(id) FROM {}", stored_table(kind)),
            [],
            |r| r.get(0),
        )?;
        last = last.max(max.unwrap_or(0));
    }
    Ok(last.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::sqlite::test_support::*;
    use crate::store::testutil::*;
    use crate::store::{CPU_UTILIZATION as CPU, EventStore, HostSummary, StateStore};

    #[test]
    fn a_store_of_the_first_schema_gains_the_host_summary_and_units() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO agents (agent_id, first_seen_ns, last_seen_ns, hostname)
                 VALUES ('old', ?1, ?1, 'old.example')",
                [T0],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO metrics (agent_key, time_ns, received_ns, name, kind, value)
                 VALUES (1, ?1, ?1, 'old.metric', 'gauge', 1.0)",
                [T0],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert_eq!(version, 12);
        let units = |store: &SqliteStore| -> Vec<(String, String)> {
            let conn = Connection::open(store.path()).unwrap();
            let mut q = conn
                .prepare("SELECT DISTINCT name, unit FROM metrics ORDER BY name")
                .unwrap();
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(units(&store), [("old.metric".to_owned(), String::new())]);
        let agents = store.agents().unwrap();
        assert_eq!(agents[0].agent_id, "old");
        assert_eq!(agents[0].host_summary, None);

        let t = T0 + secs(5);
        store
            .commit_batches(&[batch("old", 1, 1, collection(t, 0.5, 0.25, &[("/", 0.5)]))])
            .unwrap();
        let after = units(&store);
        assert!(after.contains(&("old.metric".to_owned(), String::new())));
        assert!(
            after.contains(&(CPU.to_owned(), "1".to_owned())),
            "{after:?}"
        );
        let expected = HostSummary {
            cpu_busy: Some((0.5, t)),
            memory_used: Some((0.25, t)),
            fullest_fs: Some(("/".to_owned(), 0.5, t)),
        };
        assert_eq!(summary(&store, "old"), Some(expected.clone()));
        // A reopen of the migrated store migrates nothing and keeps the data.
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(summary(&store, "old"), Some(expected));
    }

    #[test]
    fn a_store_of_the_third_schema_keeps_its_fim_rows_and_stores_every_field_after() {
        use outpost_common::event::{Event, FimDetection};

        use crate::store::EventQuery;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let Event::Fim(old) = fim(T0) else {
            unreachable!()
        };
        {
            let conn = Connection::open(&path).unwrap();
            for sql in [SCHEMA_V1, SCHEMA_V2_HOST_SUMMARY, SCHEMA_V3_METRIC_UNIT] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute(
                "INSERT INTO agents (agent_id, first_seen_ns, last_seen_ns) VALUES ('old', ?1, ?1)",
                [T0],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO fim_events (id, agent_key, time_ns, received_ns, path, change, before, after)
                 VALUES (1, 1, ?1, ?1, ?2, 'modified', ?3, ?4)",
                rusqlite::params![
                    T0,
                    old.path,
                    serde_json::to_string(&old.before).unwrap(),
                    serde_json::to_string(&old.after).unwrap(),
                ],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let read = |store: &SqliteStore| -> Vec<Event> {
            let query = EventQuery {
                kind: Some(EventKind::Fim),
                ..EventQuery::default()
            };
            let page = store.events(&query).unwrap();
            page.events.into_iter().map(|e| e.event).collect()
        };
        // The old row reads back with what it had, and defaults for what it never had.
        let as_stored_before = outpost_common::event::FimEvent {
            changed: Vec::new(),
            detected_by: FimDetection::Realtime,
            seq: 0,
            chain: String::new(),
            ..old.clone()
        };
        assert_eq!(read(&store), [Event::Fim(as_stored_before.clone())]);

        let new = outpost_common::event::FimEvent {
            change: outpost_common::event::FimChange::Moved,
            moved_from: Some("/etc/passwd-".to_owned()),
            detected_by: FimDetection::Rescan,
            seq: 7,
            ..old
        };
        store
            .commit_batches(&[batch("old", 1, 1, vec![Event::Fim(new.clone())])])
            .unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            read(&store),
            [Event::Fim(as_stored_before), Event::Fim(new)]
        );
        let indexes: Vec<String> = Connection::open(&path)
            .unwrap()
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'fim_events' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            indexes,
            [
                "fim_events_agent_time",
                "fim_events_path",
                "fim_events_time",
                "fim_events_trail"
            ]
        );
    }

    /// A store at `path` of the first `version` migrations, holding agent `agent` (key 1).
    fn store_of_schema(path: &Path, version: usize, agent: &str) -> Connection {
        let conn = Connection::open(path).unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version as i64)
            .unwrap();
        conn.execute(
            "INSERT INTO agents (agent_id, first_seen_ns, last_seen_ns) VALUES (?1, ?2, ?2)",
            rusqlite::params![agent, T0],
        )
        .unwrap();
        conn
    }

    /// The bodies of the first page of log records, in storage order.
    fn log_bodies(store: &SqliteStore) -> Vec<String> {
        let page = store
            .events(&crate::store::EventQuery {
                kind: Some(EventKind::Log),
                ..crate::store::EventQuery::default()
            })
            .unwrap();
        page.events
            .into_iter()
            .map(|e| match e.event {
                outpost_common::event::Event::Log(l) => l.body,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_store_of_the_seventh_schema_keeps_its_metric_rows_as_series_and_points() {
        use crate::store::series::{Aggregate, MetricQuery};
        use crate::store::testutil::point;
        use outpost_common::event::Event;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let conn = store_of_schema(&path, 7, "old");
            let mut insert = conn
                .prepare(
                    "INSERT INTO metrics (id, agent_key, time_ns, received_ns, name, unit, kind, value, attributes)
                     VALUES (?1, 1, ?2, ?2, ?3, '1', 'gauge', ?4, ?5)",
                )
                .unwrap();
            for i in 0..10_i64 {
                let t = T0 + secs(10 * i);
                insert
                    .execute(rusqlite::params![
                        2 * i + 1,
                        t,
                        CPU,
                        0.5,
                        r#"{"state":"idle"}"#
                    ])
                    .unwrap();
                insert
                    .execute(rusqlite::params![
                        2 * i + 2,
                        t,
                        "old.metric",
                        i as f64,
                        None::<String>
                    ])
                    .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM metric_series"), 2);
        assert_eq!(count("SELECT count(*) FROM metric_points"), 20);
        assert_eq!(count("SELECT max(id) FROM metric_points"), 20);
        // The view still reads as the old table did.
        assert_eq!(
            count("SELECT count(*) FROM metrics WHERE attributes IS NULL AND name = 'old.metric'"),
            10
        );
        let answer = store
            .metric_query(&MetricQuery {
                name: "old.metric".into(),
                agent_id: Some("old".into()),
                matchers: Vec::new(),
                range: T0..T0 + secs(100),
                step_ns: secs(100),
                aggregate: Aggregate::Sum,
                function: None,
                combine: None,
            })
            .unwrap();
        assert_eq!(answer.series[0].points, [(T0, 45.0)]);
        // New points go on after the old ids and join the old series.
        let outcome = store
            .commit_batches(&[batch(
                "old",
                1,
                1,
                vec![Event::Metric(point(
                    CPU,
                    &[("state", "idle")],
                    T0 + secs(100),
                    0.75,
                ))],
            )])
            .unwrap();
        assert_eq!(
            outcome[0],
            crate::store::BatchCommit::stored(crate::store::Cursor::from_position(21))
        );
        assert_eq!(count("SELECT count(*) FROM metric_series"), 2);
    }

    #[test]
    fn a_store_of_the_eighth_schema_keeps_its_log_rows_and_puts_new_bodies_in_blocks() {
        use crate::store::IncomingBatch;
        use outpost_common::event::{Event, LogRecord};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let conn = store_of_schema(&path, 8, "a");
            conn.execute(
                "INSERT INTO logs (id, agent_key, time_ns, received_ns, source, severity, body)
                 VALUES (1, 1, ?1, ?1, '/var/log/old.log', 6, 'written before blocks')",
                [T0],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let line = |i: i64| {
            Event::Log(LogRecord {
                time_ns: T0 + i,
                source: "/var/log/new.log".into(),
                severity: None,
                body: format!("a new line, number {i:04}, much like the others"),
                attributes: vec![],
            })
        };
        let events: Vec<Event> = (0..20).map(line).collect();
        let batch = IncomingBatch {
            packed: pack(&events),
            ..batch("a", 1, 1, events.clone())
        };
        store.commit_batches(&[batch]).unwrap();
        let bodies = log_bodies(&store);
        let mut expected = vec!["written before blocks".to_owned()];
        expected.extend(events.iter().map(|e| match e {
            Event::Log(l) => l.body.clone(),
            _ => unreachable!(),
        }));
        assert_eq!(bodies, expected);
        let blocks: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM log_blocks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(blocks, 1);
    }

    #[test]
    fn a_store_of_the_ninth_schema_moves_its_block_rows_into_the_blocks() {
        use outpost_common::event::{Event, LogRecord};

        let line = |i: i64| {
            Event::Log(LogRecord {
                time_ns: T0 + 100 - i,
                source: "/var/log/app.log".into(),
                severity: None,
                body: format!("line {i:04} of a batch kept as a block by schema 9"),
                attributes: vec![],
            })
        };
        // Events 2..=6 of the store: a block and its rows with no body, as schema 9 kept them,
        // after a row of its own; and a block whose rows are all gone.
        let events: Vec<Event> = (0..5).map(line).collect();
        let packed = pack(&events).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let conn = store_of_schema(&path, 9, "a");
            conn.execute(
                "INSERT INTO logs (id, agent_key, time_ns, received_ns, source, severity, body)
                 VALUES (1, 1, ?1, ?1, '/var/log/app.log', 6, 'a row of its own')",
                [T0],
            )
            .unwrap();
            let block = "INSERT INTO log_blocks (id, events, received_ns, codec, raw_bytes, data)
                         VALUES (?1, 5, ?2, ?3, ?4, ?5)";
            for id in [2, 100] {
                conn.execute(
                    block,
                    rusqlite::params![id, T0, packed.codec.code(), packed.raw_bytes, packed.data],
                )
                .unwrap();
            }
            for (i, e) in events.iter().enumerate() {
                conn.execute(
                    "INSERT INTO logs (id, agent_key, time_ns, received_ns, source, body, block)
                     VALUES (?1, 1, ?2, ?3, '/var/log/app.log', '', 2)",
                    rusqlite::params![2 + i as i64, e.time_ns(), T0],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM logs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        let block: (i64, i64, i64, i64, i64) = conn
            .query_row(
                "SELECT id, agent_key, logs, min_time_ns, max_time_ns FROM log_blocks",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(block, (2, 1, 5, T0 + 96, T0 + 100));
        let bodies = log_bodies(&store);
        let mut expected = vec!["a row of its own".to_owned()];
        expected
            .extend((0..5).map(|i| format!("line {i:04} of a batch kept as a block by schema 9")));
        assert_eq!(bodies, expected);
    }

    #[test]
    fn a_store_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
            "{err}"
        );
        let err = SqliteStore::open(&dir.path().join("missing/store.db")).unwrap_err();
        assert!(err.to_string().contains("missing/store.db"), "{err}");
    }

    #[test]
    fn the_next_event_id_follows_every_table() {
        let (_dir, store) = open();
        let conn = Connection::open(store.path()).unwrap();
        assert_eq!(next_event_id(&conn).unwrap(), 1);
        conn.execute(
            "INSERT INTO fim_events (id, agent_key, time_ns, received_ns, path, change)
             VALUES (41, 1, 0, 0, '/etc/passwd', 'modified')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO logs (id, agent_key, time_ns, received_ns, source, body)
             VALUES (7, 1, 0, 0, '', '')",
            [],
        )
        .unwrap();
        assert_eq!(next_event_id(&conn).unwrap(), 42);
        // A block holds the ids of its events.
        conn.execute(
            "INSERT INTO log_blocks (id, events, agent_key, logs, min_time_ns, max_time_ns,
                received_ns, codec, raw_bytes, data)
             VALUES (50, 10, 1, 0, 0, 0, 0, 0, 0, x'')",
            [],
        )
        .unwrap();
        assert_eq!(next_event_id(&conn).unwrap(), 60);
    }
}
