//! A state store in PostgreSQL, for aggregators that share one fleet: the agent registry, API
//! and enrollment tokens, the audit log and the alerting engine's state ([`StateStore`] and
//! [`AlertingStore`](super::alerting::AlertingStore)), with the semantics of the embedded
//! [`SqliteStore`](super::SqliteStore).
//!
//! ```no_run
//! use outpost_aggregator::store::StateStore;
//! use outpost_aggregator::store::postgres::{PostgresConfig, PostgresStore};
//!
//! let config: PostgresConfig =
//!     toml::from_str(r#"url = "postgresql://outpost@db.example/outpost""#)?;
//! let store = PostgresStore::open(&config)?;
//! store.ping()?;
//! println!("{} agents", store.agents()?.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Shape
//!
//! - One pool of synchronous connections ([`postgres`] through [`r2d2`]). Every method takes a
//!   connection for its duration and blocks, so callers run it on a thread of their own, as the
//!   traits require. A connection is checked before it is handed out, so one broken by a server
//!   restart is replaced and the next call after the server comes back works.
//! - Writes that must be all or none run in one transaction at `READ COMMITTED`, taking row locks
//!   (`SELECT … FOR UPDATE`, or `UPDATE … WHERE` conditions PostgreSQL re-checks once a
//!   concurrent writer commits) so that several aggregators can write at once. A transaction that
//!   PostgreSQL aborts for a deadlock or a serialization failure is run again, a few times.
//! - The registry's generation is a row of its own, bumped by the transaction of every registry
//!   change, so every aggregator sharing the database answers the same number.
//! - The schema is numbered migrations ([`schema`]), applied in one transaction under an
//!   advisory lock: aggregators starting together migrate once.
//!
//! Modules: [`schema`], [`registry`] (the agent registry), [`tokens`] (API tokens and the audit
//! log), [`enrollment`], [`alerting`].
//!
//! # Values
//!
//! Times are `BIGINT` nanoseconds. `u64` values (spool ids) are stored bit for bit in `BIGINT`.
//! Nested values (host facts, statuses, alert records, messages) are JSON in `TEXT` columns:
//! read and written whole, never queried by field; JSON escapes every character, where
//! PostgreSQL's text cannot hold NUL. The few free-text columns written as they come
//! ([`pg_text`]) have a NUL replaced by U+FFFD, the only place where a value does not read back
//! exactly. Lists are sorted with `COLLATE "C"`: byte order, as SQLite sorts, whatever the
//! database's collation.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{IsolationLevel, NoTls, Transaction};
use r2d2::{ManageConnection, Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;
use serde::Deserialize;

use super::{AgentRecord, AuditEntry, Enrollment, RegistryUpdate, StateStore, StoreError};
use crate::enroll::token::EnrollmentToken;
use crate::tokens::TokenRecord;

mod alerting;
mod enrollment;
mod registry;
mod schema;
mod tokens;

pub use schema::SCHEMA_VERSION;

/// Connections kept to the database at most, unless configured.
const DEFAULT_POOL_SIZE: u32 = 8;
/// How long connecting, or waiting for a free connection, may take, unless configured.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Times a transaction aborted for a deadlock or a serialization failure is tried in all.
const MAX_ATTEMPTS: u32 = 5;

/// Where the PostgreSQL state store is, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The database: a URL (`postgresql://outpost@db.example:5432/outpost`) or libpq's
    /// `key=value` form (`host=db.example user=outpost dbname=outpost`). Required. It may carry
    /// the password, but `password_file` keeps it out of the configuration. No TLS yet: use it
    /// on a trusted network.
    pub url: String,
    /// A file holding the password, read at open; a trailing newline is not part of it.
    /// Default: none (the URL's password, if any).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Connections to the database at most, each blocking one call at a time; at least 1.
    /// Default: 8.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// How long connecting, or waiting for a free connection, may take before a call fails;
    /// more than zero. Default: 5 s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn default_pool_size() -> u32 {
    DEFAULT_POOL_SIZE
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}

impl PostgresConfig {
    /// A configuration for `url` with every default.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            password_file: None,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Checks what can be checked without the server or the password file: the URL parses and
    /// the numbers are in range. [`PostgresStore::open`] checks the same first.
    pub fn validate(&self) -> Result<(), String> {
        self.client_config()?;
        if self.pool_size == 0 {
            return Err("pool_size must be at least 1".to_owned());
        }
        if self.connect_timeout.is_zero() {
            return Err("connect_timeout must be more than zero".to_owned());
        }
        Ok(())
    }

    /// The URL parsed, with the connect timeout. Its error never repeats the URL, which may
    /// hold a password.
    fn client_config(&self) -> Result<postgres::Config, String> {
        let mut config: postgres::Config = self
            .url
            .parse()
            .map_err(|e| format!("url is not a PostgreSQL URL or connection string: {e}"))?;
        config.connect_timeout(self.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("outpost-aggregator");
        }
        Ok(config)
    }
}

/// The PostgreSQL state store. Cheap to share behind an `Arc`; every method blocks.
pub struct PostgresStore {
    pool: Pool<Manager>,
    /// Which database, for messages: see [`describe`].
    database: String,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.database)
            .field("pool", &self.pool.state())
            .finish()
    }
}

/// The password file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the password file {}: {source}", path.display())]
struct PasswordFileError {
    path: PathBuf,
    source: std::io::Error,
}

/// A configuration value out of range.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InvalidConfig(String);

impl PostgresStore {
    /// Connects, creates or migrates the schema ([`schema`]), and makes the pool.
    ///
    /// Fails with [`StoreError::OpenDatabase`] naming the database and server (never the
    /// password) when the configuration is invalid, the password file unreadable or the server
    /// refuses, and with [`StoreError::SchemaTooNew`] when a newer build migrated the database.
    pub fn open(config: &PostgresConfig) -> Result<PostgresStore, StoreError> {
        let unknown = || "the PostgreSQL database its url names".to_owned();
        let invalid = |database: String, why: String| StoreError::OpenDatabase {
            database,
            source: Arc::new(InvalidConfig(why)),
        };
        let mut client_config = config
            .client_config()
            .map_err(|why| invalid(unknown(), why))?;
        let database = describe(&client_config);
        config
            .validate()
            .map_err(|why| invalid(database.clone(), why))?;
        if let Some(path) = &config.password_file {
            client_config.password(read_password(path).map_err(|e| StoreError::OpenDatabase {
                database: database.clone(),
                source: Arc::new(e),
            })?);
        }
        let open_err = |e: postgres::Error| StoreError::OpenDatabase {
            database: database.clone(),
            source: Arc::new(PgError(e)),
        };

        // One connection of its own first: a wrong password or an unknown database fails here
        // at once with the server's answer, not after the pool's timeout.
        let mut client = client_config.connect(NoTls).map_err(open_err)?;
        schema::migrate(&mut client, &database)?;
        drop(client);

        let pool = Pool::builder()
            .max_size(config.pool_size)
            .min_idle(Some(1))
            .connection_timeout(config.connect_timeout)
            .error_handler(Box::new(LogConnectErrors {
                database: database.clone(),
            }))
            .build_unchecked(Manager(PostgresConnectionManager::new(
                client_config,
                NoTls,
            )));
        Ok(PostgresStore { pool, database })
    }

    /// Which database on which server, as whom: for messages and `/readyz`.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Checks that the database answers, at the cost of one round trip on a pooled connection
    /// (for `/readyz`). Blocks up to the connect timeout when it does not.
    pub fn ping(&self) -> Result<(), StoreError> {
        let context = || format!("checking the {}", self.database);
        let mut conn = self
            .pool
            .get()
            .map_err(|e| StoreError::backend(context(), e))?;
        conn.simple_query("SELECT 1")
            .map(drop)
            .map_err(|e| StoreError::backend(context(), PgError(e)))
    }

    /// A pooled connection, waiting up to the connect timeout for one.
    fn conn(&self) -> Result<PooledConnection<Manager>, Fail> {
        self.pool.get().map_err(Fail::Pool)
    }

    /// Runs `read` on a pooled connection.
    fn read<T>(
        &self,
        context: impl FnOnce() -> String,
        read: impl FnOnce(&mut postgres::Client) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let result = self.conn().and_then(|mut conn| read(&mut conn));
        result.map_err(|fail| fail.with_context(context()))
    }

    /// Runs `body` in one `READ COMMITTED` transaction and commits it; runs it again when
    /// PostgreSQL aborts it for a deadlock or a serialization failure. A [`Fail::Conflict`]
    /// rolls it back and is answered as [`StoreError::Conflict`].
    fn write<T>(
        &self,
        context: impl FnOnce() -> String,
        body: impl FnMut(&mut Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        self.transaction(IsolationLevel::ReadCommitted, false, body)
            .map_err(|fail| fail.with_context(context()))
    }

    /// Runs `body` in one read-only `REPEATABLE READ` transaction: several statements that see
    /// the database at one moment.
    fn snapshot<T>(
        &self,
        context: impl FnOnce() -> String,
        body: impl FnMut(&mut Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        self.transaction(IsolationLevel::RepeatableRead, true, body)
            .map_err(|fail| fail.with_context(context()))
    }

    fn transaction<T>(
        &self,
        isolation: IsolationLevel,
        read_only: bool,
        mut body: impl FnMut(&mut Transaction<'_>) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let mut conn = self.conn()?;
        let mut attempt = 1;
        loop {
            let result = (|| {
                let mut tx = conn
                    .build_transaction()
                    .isolation_level(isolation)
                    .read_only(read_only)
                    .start()?;
                let value = body(&mut tx)?;
                tx.commit()?;
                Ok(value)
            })();
            match result {
                Err(Fail::Db(e)) if attempt < MAX_ATTEMPTS && retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "A state store transaction was aborted; running it again.");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// The registry generation as the database holds it.
    fn read_generation(&self) -> Result<u64, StoreError> {
        self.read(
            || "reading the registry generation".to_owned(),
            |client| {
                let row = client.query_one(registry::GENERATION, &[])?;
                Ok(row.try_get::<_, i64>(0)?.cast_unsigned())
            },
        )
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing a connection blocks on its own runtime, which panics on a thread that drives
        // async tasks: there the connections are closed on a thread of their own.
        if tokio::runtime::Handle::try_current().is_ok() {
            let pool = self.pool.clone();
            let closing = std::thread::Builder::new()
                .name("pg-close".to_owned())
                .spawn(move || drop(pool));
            if let Err(e) = closing {
                tracing::warn!(error = %e, "Cannot start a thread to close the state store's connections.");
            }
        }
    }
}

impl StateStore for PostgresStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn ping(&self) -> Result<(), StoreError> {
        PostgresStore::ping(self)
    }

    fn record_all(&self, updates: &[RegistryUpdate]) -> Result<(), StoreError> {
        let Some(first) = updates.first() else {
            return Ok(());
        };
        let context = || {
            format!(
                "recording {} registry updates (the first about agent {})",
                updates.len(),
                first.agent_id()
            )
        };
        self.write(context, |tx| registry::record_all(tx, updates))
    }

    /// Reads the generation from the database, where every aggregator's registry changes bump
    /// it. Called on a thread that drives async tasks (the API's fleet view does), it blocks
    /// in place on a multi-threaded runtime, and answers `None` on a single-threaded one, where
    /// it cannot block.
    fn registry_generation(&self) -> Option<u64> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let read = || match self.read_generation() {
            Ok(generation) => Some(generation),
            Err(e) => {
                tracing::debug!(error = %e, "Cannot read the registry generation; the fleet view will be rebuilt.");
                None
            }
        };
        match Handle::try_current() {
            Err(_) => read(),
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(read)
            }
            Ok(_) => None,
        }
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.read(
            || "reading the agent registry".to_owned(),
            |client| registry::agents(client, None),
        )
    }

    fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.read(
            || format!("reading agent {agent_id} from the registry"),
            |client| Ok(registry::agents(client, Some(agent_id))?.into_iter().next()),
        )
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.write(
            || format!("storing API token {}", token.name),
            |tx| tokens::insert(tx, token),
        )
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read(
            || format!("reading API token {id}"),
            |client| tokens::token(client, id),
        )
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|| "listing API tokens".to_owned(), tokens::tokens)
    }

    fn revoke_token(
        &self,
        id_or_name: &str,
        now_ns: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.write(
            || format!("revoking API token {id_or_name}"),
            |tx| tokens::revoke(tx, id_or_name, now_ns),
        )
    }

    fn touch_token(&self, id: &str, now_ns: i64) -> Result<(), StoreError> {
        self.read(
            || format!("recording the use of API token {id}"),
            |client| tokens::touch(client, id, now_ns),
        )
    }

    fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write(
            || format!("appending {} audit entries", entries.len()),
            |tx| tokens::append_audit(tx, entries),
        )
    }

    fn audit(&self, before: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(
            || "reading the audit log".to_owned(),
            |client| tokens::audit(client, before, limit),
        )
    }

    fn remove_agent(&self, agent_id: &str, now_ns: i64) -> Result<bool, StoreError> {
        self.write(
            || format!("removing agent {agent_id}"),
            |tx| registry::remove_agent(tx, agent_id, now_ns),
        )
    }

    fn insert_enrollment_token(&self, token: &EnrollmentToken) -> Result<(), StoreError> {
        self.write(
            || format!("storing enrollment token {}", token.id),
            |tx| enrollment::insert(tx, token),
        )
    }

    fn enrollment_token(&self, id: &str) -> Result<Option<EnrollmentToken>, StoreError> {
        self.read(
            || format!("reading enrollment token {id}"),
            |client| enrollment::token(client, id),
        )
    }

    fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>, StoreError> {
        self.read(
            || "listing enrollment tokens".to_owned(),
            enrollment::tokens,
        )
    }

    fn revoke_enrollment_token(
        &self,
        id: &str,
        now_ns: i64,
    ) -> Result<Option<EnrollmentToken>, StoreError> {
        self.write(
            || format!("revoking enrollment token {id}"),
            |tx| enrollment::revoke(tx, id, now_ns),
        )
    }

    fn key_enrolled(&self, key_sha256: &[u8; 32]) -> Result<bool, StoreError> {
        self.read(
            || "looking up an enrolled key".to_owned(),
            |client| enrollment::key_enrolled(client, key_sha256),
        )
    }

    fn record_enrollment(&self, e: &Enrollment) -> Result<(), StoreError> {
        self.write(
            || format!("recording the enrollment of agent {}", e.agent_id),
            |tx| enrollment::record(tx, e),
        )
    }
}

/// What went wrong inside a call, before the call gives it its context.
#[derive(Debug)]
enum Fail {
    /// The server refused a statement, or the connection broke.
    Db(postgres::Error),
    /// No connection could be had within the connect timeout.
    Pool(r2d2::Error),
    /// A stored value does not read back, or a value does not fit its column.
    Value(BadValue),
    /// The write would break a rule of the data; the transaction is rolled back.
    Conflict(String),
    /// The alerting lease is no longer at this epoch; the transaction is rolled back.
    LeaseLost(i64),
}

impl Fail {
    fn with_context(self, context: String) -> StoreError {
        match self {
            Fail::Db(e) => StoreError::backend(context, PgError(e)),
            Fail::Pool(e) => StoreError::backend(context, e),
            Fail::Value(e) => StoreError::backend(context, e),
            Fail::Conflict(message) => StoreError::Conflict(message),
            Fail::LeaseLost(epoch) => StoreError::LeaseLost { epoch },
        }
    }
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<BadValue> for Fail {
    fn from(e: BadValue) -> Self {
        Fail::Value(e)
    }
}

/// A value that does not read back from its column, or does not fit it.
#[derive(Debug, thiserror::Error)]
#[error("column {column}: {why}")]
struct BadValue {
    column: &'static str,
    why: String,
}

impl BadValue {
    fn new(column: &'static str, why: impl fmt::Display) -> BadValue {
        BadValue {
            column,
            why: why.to_string(),
        }
    }
}

/// Whether PostgreSQL aborted the transaction for a conflict with another one, so running it
/// again may succeed.
fn retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::T_R_DEADLOCK_DETECTED)
    )
}

/// The name of the unique constraint `e` violated, if that is what it is.
fn unique_violation(e: &postgres::Error) -> Option<&str> {
    if e.code() != Some(&SqlState::UNIQUE_VIOLATION) {
        return None;
    }
    e.as_db_error().and_then(|db| db.constraint())
}

/// A JSON column's text as a value.
fn from_json<T: serde::de::DeserializeOwned>(
    column: &'static str,
    text: &str,
) -> Result<T, BadValue> {
    serde_json::from_str(text).map_err(|e| BadValue::new(column, e))
}

/// A value as a JSON column's text.
fn to_json<T: serde::Serialize>(column: &'static str, value: &T) -> Result<String, BadValue> {
    serde_json::to_string(value).map_err(|e| BadValue::new(column, e))
}

/// Free text as PostgreSQL can keep it: its `text` cannot hold NUL, which becomes U+FFFD.
fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// A count or limit as a `BIGINT`.
fn as_bigint(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// "PostgreSQL database `outpost` on db.example:5432 as `outpost`": what the configuration
/// names, without the password.
fn describe(config: &postgres::Config) -> String {
    use postgres::config::Host;
    let ports = config.get_ports();
    let port = |i: usize| match ports {
        [] => 5432,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(5432),
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            Host::Tcp(name) => format!("{name}:{}", port(i)),
            Host::Unix(dir) => format!("{} (port {})", dir.display(), port(i)),
        })
        .chain(
            config
                .get_hostaddrs()
                .iter()
                .skip(config.get_hosts().len())
                .enumerate()
                .map(|(i, addr)| format!("{addr}:{}", port(i))),
        )
        .collect();
    let hosts = if hosts.is_empty() {
        "no host".to_owned()
    } else {
        hosts.join(", ")
    };
    let user = config.get_user().unwrap_or("(no user)");
    let dbname = config.get_dbname().unwrap_or(user);
    format!("PostgreSQL database `{dbname}` on {hosts} as `{user}`")
}

/// The password in `path`, without a trailing newline.
fn read_password(path: &std::path::Path) -> Result<String, PasswordFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError {
        path: path.to_owned(),
        source,
    })?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    Ok(line.strip_suffix('\r').unwrap_or(line).to_owned())
}

/// `postgres`' connections, with errors that say what the server said.
#[derive(Debug)]
struct Manager(PostgresConnectionManager<NoTls>);

impl ManageConnection for Manager {
    type Connection = postgres::Client;
    type Error = PgError;

    fn connect(&self) -> Result<postgres::Client, PgError> {
        self.0.connect().map_err(PgError)
    }

    /// One round trip: a connection the server dropped (it restarted) is found here and
    /// replaced, rather than failing the call that would have used it.
    fn is_valid(&self, client: &mut postgres::Client) -> Result<(), PgError> {
        self.0.is_valid(client).map_err(PgError)
    }

    fn has_broken(&self, client: &mut postgres::Client) -> bool {
        self.0.has_broken(client)
    }
}

/// A [`postgres::Error`] displayed with its cause: alone it reads "db error" or "error
/// connecting to server", and the pool keeps only the text of the last one.
#[derive(Debug)]
struct PgError(postgres::Error);

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::error::Error as _;
        match self.0.source() {
            Some(cause) => write!(f, "{}: {cause}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Its cause is in its text already.
impl std::error::Error for PgError {}

/// Reports the connections the pool could not make (it tries again in the background) or found
/// broken (it makes another).
#[derive(Debug)]
struct LogConnectErrors {
    database: String,
}

impl r2d2::HandleError<PgError> for LogConnectErrors {
    fn handle_error(&self, error: PgError) {
        tracing::warn!(database = %self.database, error = %error, "A connection to the PostgreSQL state store failed; the pool will make another.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_has_defaults_and_refuses_unknown_fields() {
        let config: PostgresConfig = toml::from_str(r#"url = "postgresql://outpost@db/outpost""#)
            .expect("a URL alone is a configuration");
        assert_eq!(
            config,
            PostgresConfig::new("postgresql://outpost@db/outpost")
        );
        assert_eq!(
            (config.pool_size, config.connect_timeout),
            (8, Duration::from_secs(5))
        );
        let config: PostgresConfig = toml::from_str(
            r#"
            url = "host=db user=outpost"
            password_file = "/etc/outpost/pg.password"
            pool_size = 2
            connect_timeout = "250ms"
            "#,
        )
        .expect("every field");
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        assert_eq!(config.validate(), Ok(()));
        let err = toml::from_str::<PostgresConfig>("url = \"x\"\npassword = \"secret\"")
            .expect_err("an unknown field");
        assert!(
            err.to_string().contains("unknown field `password`"),
            "{err}"
        );
        assert!(toml::from_str::<PostgresConfig>("pool_size = 1").is_err());
    }

    #[test]
    fn invalid_configurations_are_refused_without_echoing_the_url() {
        let mut config = PostgresConfig::new("postgresql://outpost:s3cret@db:notaport/outpost");
        let err = config.validate().expect_err("a bad port");
        assert!(!err.contains("s3cret"), "{err}");
        config.url = "postgresql://outpost@db/outpost".to_owned();
        config.pool_size = 0;
        assert_eq!(
            config.validate(),
            Err("pool_size must be at least 1".to_owned())
        );
        config.pool_size = 1;
        config.connect_timeout = Duration::ZERO;
        let err = PostgresStore::open(&config).expect_err("a zero timeout");
        assert!(matches!(err, StoreError::OpenDatabase { .. }), "{err}");
        assert!(err.to_string().contains("connect_timeout"), "{err}");
        assert!(
            err.to_string().contains("database `outpost` on db:5432"),
            "{err}"
        );
    }

    #[test]
    fn the_database_is_described_without_its_password() {
        let describe_url = |url: &str| describe(&url.parse().expect("a valid URL"));
        assert_eq!(
            describe_url("postgresql://outpost:s3cret@db.example:6543/fleet"),
            "PostgreSQL database `fleet` on db.example:6543 as `outpost`"
        );
        assert_eq!(
            describe_url("host=a,b port=5433 user=outpost password=s3cret"),
            "PostgreSQL database `outpost` on a:5433, b:5433 as `outpost`"
        );
        assert_eq!(
            describe_url("host=/run/postgresql user=outpost dbname=x"),
            "PostgreSQL database `x` on /run/postgresql (port 5432) as `outpost`"
        );
    }

    #[test]
    fn the_password_file_loses_its_trailing_newline_and_its_error_names_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("password");
        for (text, password) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("two words \n\n", "two words \n"),
        ] {
            std::fs::write(&path, text).expect("writing the password file");
            assert_eq!(
                read_password(&path).expect("readable"),
                password,
                "{text:?}"
            );
        }
        let mut config = PostgresConfig::new("postgresql://outpost@127.0.0.1:9/outpost");
        config.password_file = Some(dir.path().join("missing"));
        let err = PostgresStore::open(&config).expect_err("no password file");
        let message = err.to_string();
        assert!(matches!(err, StoreError::OpenDatabase { .. }), "{message}");
        assert!(
            message.contains("reading the password file") && message.contains("missing"),
            "{message}"
        );
    }

    #[test]
    fn nul_is_the_only_character_changed_in_free_text() {
        assert!(matches!(pg_text("plain ✓"), Cow::Borrowed("plain ✓")));
        assert_eq!(pg_text("a\0b"), "a\u{FFFD}b");
    }
}
