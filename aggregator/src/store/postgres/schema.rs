//! The tables and their migrations.
//!
//! `schema_version` holds one row per migration applied. [`migrate`] applies the missing ones
//! in one transaction that first takes a transaction-scoped advisory lock: of several
//! aggregators opening the same database at once, one migrates and the others, waiting on the
//! lock, then find nothing left to do. A database migrated by a newer build is refused rather
//! than guessed at.

use std::sync::Arc;

use postgres::Client;

use super::PgError;
use crate::store::StoreError;

/// Schema migrations, in order; the `n`-th is version `n`.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock migrations hold (`outpost1` in ASCII). Advisory locks are per database, so
/// stores in different databases of one server do not wait for each other.
const MIGRATION_LOCK: i64 = 0x6f75_7470_6f73_7431;

const CREATE_SCHEMA_VERSION: &str = "
CREATE TABLE IF NOT EXISTS schema_version (
    version    BIGINT PRIMARY KEY,
    applied_ns BIGINT NOT NULL
)";

/// The registry, tokens, enrollment, the audit log and the alerting engine's state. The same
/// tables as the SQLite store's, but for the registry's host facts (one JSON column) and its
/// generation (a row of its own).
const SCHEMA_V1: &str = r#"
-- Bumped by every transaction that changes what the registry answers.
CREATE TABLE registry_generation (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    value     BIGINT NOT NULL
);
INSERT INTO registry_generation (value) VALUES (0);

CREATE TABLE agents (
    agent_id                TEXT PRIMARY KEY,
    spool_id                BIGINT,           -- u64, bit for bit
    first_seen_ns           BIGINT NOT NULL,
    last_seen_ns            BIGINT NOT NULL,
    agent_version           TEXT,
    host                    TEXT,             -- HostFacts, JSON; NULL until the first Hello
    labels                  TEXT NOT NULL DEFAULT '{}', -- the latest Hello's, a JSON object
    connected               BOOLEAN NOT NULL DEFAULT FALSE,
    last_disconnect_ns      BIGINT,
    last_disconnect_reason  TEXT,
    status                  TEXT,             -- the latest AgentStatus, JSON
    status_received_ns      BIGINT,
    drops_changed_ns        BIGINT,
    drops_last_increase     TEXT,             -- DropCounters, JSON
    backlog_rising_since_ns BIGINT,
    clock_skew_ns           BIGINT,
    removed_ns              BIGINT            -- `agents remove`: hidden until its next Hello
);

-- API tokens (the secret's SHA-256 only); a name is held by at most one token not revoked.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,              -- viewer | operator | admin
    secret_sha256 BYTEA NOT NULL,
    created_ns    BIGINT NOT NULL,
    expires_ns    BIGINT,
    revoked_ns    BIGINT,
    last_used_ns  BIGINT
);
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_ns IS NULL;

CREATE TABLE audit_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time_ns    BIGINT NOT NULL,
    token_id   TEXT,                          -- NULL when no valid token was presented
    token_name TEXT,
    address    TEXT NOT NULL,
    method     TEXT NOT NULL,
    route      TEXT NOT NULL,
    status     INTEGER NOT NULL,
    outcome    TEXT NOT NULL
);

-- Enrollment tokens (their secrets' hashes), and every public key certified by enrollment or
-- renewal, so that a request is never served twice for the same key.
CREATE TABLE enrollment_tokens (
    id             TEXT PRIMARY KEY,          -- 16 hex digits
    secret_sha256  BYTEA NOT NULL,
    created_ns     BIGINT NOT NULL,
    expires_ns     BIGINT NOT NULL,
    max_uses       BIGINT,                    -- NULL: any number until it expires
    uses           BIGINT NOT NULL DEFAULT 0,
    labels         TEXT NOT NULL,             -- JSON [[key, value], ...], sorted by key
    allow_reenroll BOOLEAN NOT NULL,
    revoked_ns     BIGINT
);
CREATE TABLE enrolled_keys (
    key_sha256  BYTEA PRIMARY KEY,            -- SHA-256 of the certified public key (DER)
    agent_id    TEXT NOT NULL,
    token_id    TEXT,                         -- NULL for a renewal
    enrolled_ns BIGINT NOT NULL
);

-- The alerting engine: records, groups and silences as JSON (read and written whole), the
-- history, the notification outbox and the feed cursor evaluated up to.
CREATE TABLE alerts (
    fingerprint TEXT PRIMARY KEY,
    record      TEXT NOT NULL
);
CREATE TABLE alert_history (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    at_ns       BIGINT NOT NULL,
    entry       TEXT NOT NULL
);
CREATE INDEX alert_history_fingerprint ON alert_history (fingerprint, id);
CREATE INDEX alert_history_at ON alert_history (at_ns);
CREATE TABLE alert_groups (
    key TEXT PRIMARY KEY,
    grp TEXT NOT NULL
);
CREATE TABLE silences (
    id      TEXT PRIMARY KEY,
    ends_ns BIGINT NOT NULL,
    silence TEXT NOT NULL
);
CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    receiver        TEXT NOT NULL,
    group_key       TEXT NOT NULL,
    fingerprints    TEXT[] NOT NULL,          -- of the message's alerts, for the log by alert
    created_ns      BIGINT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ns BIGINT NOT NULL,
    last_error      TEXT,
    sent_ns         BIGINT,
    message         TEXT NOT NULL             -- notify::Message, JSON
);
CREATE INDEX outbox_pending ON outbox (next_attempt_ns, id) WHERE state = 'pending';
CREATE INDEX outbox_pending_group ON outbox (receiver, group_key, id) WHERE state = 'pending';
CREATE INDEX outbox_fingerprints ON outbox USING GIN (fingerprints);
CREATE TABLE alerting_meta (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
"#;

/// The alerting lease: which aggregator runs alerting, until when (by the server's clock), and
/// the epoch its writes carry.
const SCHEMA_V2: &str = r#"
CREATE TABLE alerting_lease (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    holder    TEXT NOT NULL,
    epoch     BIGINT NOT NULL,
    expires   TIMESTAMPTZ NOT NULL
);
"#;

/// Brings the database's schema up to [`SCHEMA_VERSION`], or refuses a newer one.
pub(super) fn migrate(client: &mut Client, database: &str) -> Result<(), StoreError> {
    let open_err = |e: postgres::Error| StoreError::OpenDatabase {
        database: database.to_owned(),
        source: Arc::new(PgError(e)),
    };
    let mut tx = client.transaction().map_err(open_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(open_err)?;
    tx.batch_execute(CREATE_SCHEMA_VERSION).map_err(open_err)?;
    let found: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .and_then(|row| row.try_get(0))
        .map_err(open_err)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            location: database.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let now_ns = outpost_common::time::now_ns();
    for (version, sql) in (1_i64..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tracing::info!(database, version, "Migrating the PostgreSQL state store.");
        tx.batch_execute(sql).map_err(open_err)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_ns) VALUES ($1, $2)",
            &[&version, &now_ns],
        )
        .map_err(open_err)?;
    }
    tx.commit().map_err(open_err)
}
