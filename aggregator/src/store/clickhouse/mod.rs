//! An [`EventStore`] in ClickHouse, over its HTTP interface, for fleets whose events outgrow one
//! machine; several aggregators may share one database.
//!
//! It runs on the ClickHouse of the Debian packages (18.16) as on current releases: rows travel
//! as RowBinary without the server checking their types, queries bind their values in the client
//! (no server-side parameters), and the schema keeps to what both accept ([`schema`]).
//!
//! ```no_run
//! use outpost_aggregator::store::EventStore;
//! use outpost_aggregator::store::clickhouse::{ClickHouseConfig, ClickHouseStore};
//!
//! let store = ClickHouseStore::open(&ClickHouseConfig::default())?;
//! store.ping()?;
//! let end = store.end()?;
//! # Ok::<(), outpost_aggregator::store::StoreError>(())
//! ```
//!
//! # Exactly once without transactions
//!
//! ClickHouse has no transactions; see [`ClickHouseStore`] for how a commit keeps each batch once
//! without them, and where that differs from the [`EventStore`] contract.
//!
//! # Cursors
//!
//! Cursors come from a hybrid logical clock ([`cursor`]): unique across aggregators (each has its
//! own [`ClickHouseConfig::node`]), strictly increasing per store. Across aggregators, cursor
//! order is commit-time order up to the skew between their clocks: a reader following cursors
//! (`next`) can pass over a commit of an aggregator whose clock lags by more than the time
//! between its reads. A store's reads stop before the cursors of its own commit in progress, so
//! they never see half of it; they see other aggregators' commits up to the current millisecond
//! of its own clock.
//!
//! # Retention
//!
//! Events are dropped a UTC day of their own time (the agent's clock) at a time, not by receive
//! time: every event older than its kind's period by more than a day is gone, none younger than
//! the period is lost. Deduplication entries go with the day they were received, after the
//! longest period.
//!
//! The trait is synchronous and called from plain threads; the store runs its requests on a
//! small tokio runtime of its own. Calling it from an async task panics.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use super::series::{MetricAnswer, MetricQuery, MetricQueryError};
use super::{
    BatchCommit, Cursor, EventPage, EventQuery, EventStore, HostSummary, IncomingBatch, Retention,
    RetentionReport, StoreError,
};

mod commit;
mod cursor;
mod follow;
mod queries;
mod retention;
mod rows;
mod schema;

pub use cursor::{MAX_BATCH_EVENTS, MAX_NODE};
pub use rows::BadRow;

/// `[store.clickhouse]`: where the ClickHouse event store lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// The server's HTTP interface, `http://` or `https://`. Default `http://127.0.0.1:8123`.
    pub url: String,
    /// The database holding the tables, created if missing: letters, digits and underscores.
    /// Default `outpost`.
    pub database: String,
    /// The user to connect as. Default `default`.
    pub user: String,
    /// A file holding the user's password (trailing newlines are ignored). Default: none, no
    /// password.
    pub password_file: Option<PathBuf>,
    /// This aggregator's number among those sharing the database, 0 to 63: it is part of every
    /// cursor the aggregator hands out, so it must differ between them. Default 0.
    pub node: u8,
    /// How long one request to the server may take before the operation fails. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".to_owned(),
            database: "outpost".to_owned(),
            user: "default".to_owned(),
            password_file: None,
            node: 0,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a request to the server failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error(transparent)]
    Server(#[from] clickhouse::error::Error),
    #[error("no answer within {0:?} (store.clickhouse.request_timeout)")]
    TimedOut(Duration),
    #[error(transparent)]
    Row(#[from] BadRow),
    #[error("encoding a row: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(
        "batch from agent {agent_id} spool {spool_id} seq {seq} needs {cursors} cursors, more \
         than the {block} of one block (its {events} events are over the store's limit of \
         {limit})",
        block = cursor::BLOCK,
        limit = MAX_BATCH_EVENTS
    )]
    TooLarge {
        agent_id: String,
        spool_id: u64,
        seq: u64,
        events: usize,
        cursors: usize,
    },
    #[error("{0}")]
    Config(String),
    #[error(
        "the commit reached its feed row {elapsed_ms} ms after taking its cursors, over the {} ms \
         an aggregator following every commit allows; refused, so that the agent sends the \
         batches again",
        follow::FEED_DEADLINE_MS
    )]
    Slow { elapsed_ms: u64 },
}

/// The ClickHouse event store.
///
/// # Exactly once without transactions
///
/// ClickHouse has no transactions, so [`EventStore::commit_batches`] orders its writes instead:
/// it decides each batch from the `batches` and `spools` tables (and repeats within the call),
/// then writes the new batches' feed rows (for [`EventStore::follow`], see [`follow`]), their
/// event rows and notices, then the file-integrity trails, then the `batches` and `spools` rows
/// last. A batch is stored once its `batches` row is. An event is
/// identified by its batch and its place in it, which is the `ReplacingMergeTree` key of every
/// event table, and every read is `FINAL`, so copies of one event are read once (the copy with
/// the highest cursor). Hence:
///
/// - **Deviation from the contract**: a commit that fails answers `Err` and acknowledges
///   nothing, but rows it wrote before failing may be visible (the trait says nothing was
///   stored) until the agent sends the batch again, whose rows then collapse with them (same
///   key, and the resend's cursors). Notices are the exception: a resend may find other breaks,
///   and a notice of the failed commit that the resend does not write again stays. A reader
///   that followed cursors past the failed commit's rows sees the resent ones again;
///   [`EventStore::follow`] does not, as it takes only batches whose `batches` row is written.
/// - Two aggregators that store the same batch at once both answer `Stored`; queries see its
///   events once.
/// - The trail state written by a failed commit is ignored by the store that wrote it (its
///   cache only moves with commits that succeed); a store reopened right after such a failure
///   loads it, and may report the resent batch's file-integrity events as replayed.
#[derive(Debug)]
pub struct ClickHouseStore {
    client: clickhouse::Client,
    /// `Some` until dropped: taken to shut it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
    /// The server's URL without credentials, for messages.
    server: String,
    database: String,
    timeout: Duration,
    node: u8,
    clock: Mutex<ClockState>,
    /// Held for a whole commit: commits of one store run one at a time.
    write: Mutex<WriteState>,
}

/// The cursor clock and the commit in progress.
#[derive(Debug)]
struct ClockState {
    clock: cursor::Clock,
    /// The first cursor of the commit writing now: reads stop before it.
    in_flight: Option<Cursor>,
}

/// What commits remember between them. Changed only after a commit succeeded.
#[derive(Debug, Default)]
struct WriteState {
    /// Each agent's file-integrity trail as last loaded or written, with its version.
    trails: HashMap<String, commit::CachedTrail>,
    /// The highest receive time stored; later batches are clamped up to it.
    last_received_ns: i64,
}

/// Worker threads of the store's runtime: they drive the HTTP connections; the callers' threads
/// run the requests themselves.
const WORKER_THREADS: usize = 2;

impl ClickHouseStore {
    /// Connects, creates the database and tables if missing, migrates them, and continues the
    /// cursors after the highest this node stored.
    pub fn open(config: &ClickHouseConfig) -> Result<ClickHouseStore, StoreError> {
        let server = redact(&config.url);
        let database = config.database.clone();
        let failed = |source: Failure| StoreError::OpenDatabase {
            database: format!("database {database} at {server}"),
            source: Arc::new(source),
        };
        if !schema::valid_database_name(&config.database) {
            return Err(failed(Failure::Config(format!(
                "`{}` is not a database name this store uses (letters, digits and underscores, \
                 not starting with a digit)",
                config.database
            ))));
        }
        if config.node > MAX_NODE {
            return Err(failed(Failure::Config(format!(
                "node {} is out of range (0 to {MAX_NODE})",
                config.node
            ))));
        }
        let mut client = clickhouse::Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            .with_validation(false);
        if let Some(path) = &config.password_file {
            let password = std::fs::read_to_string(path).map_err(|e| {
                failed(Failure::Config(format!(
                    "reading the password file {}: {e}",
                    path.display()
                )))
            })?;
            client = client.with_password(password.trim_end_matches(['\n', '\r']));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("outpost-clickhouse")
            .enable_all()
            .build()
            .map_err(|e| failed(Failure::Config(format!("starting its runtime: {e}"))))?;
        let mut store = ClickHouseStore {
            client,
            runtime: Some(runtime),
            server: server.clone(),
            database: database.clone(),
            timeout: config.request_timeout,
            node: config.node,
            clock: Mutex::new(ClockState {
                clock: cursor::Clock::new(config.node),
                in_flight: None,
            }),
            write: Mutex::new(WriteState::default()),
        };
        let opened = store.block_on(store.prepare());
        let (client, last_cursor, last_received_ns) = match opened {
            Ok(found) => found,
            Err(OpenError::Failure(e)) => return Err(failed(e)),
            Err(OpenError::TooNew(found)) => {
                return Err(StoreError::SchemaTooNew {
                    location: store.place(),
                    found: i64::from(found),
                    supported: i64::from(schema::SCHEMA_VERSION),
                });
            }
        };
        store.client = client;
        lock(&store.clock).clock.resume(last_cursor);
        lock(&store.write).last_received_ns = last_received_ns;
        Ok(store)
    }

    /// Whether the server answers (for `/readyz`): one trivial query.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.run(|| "pinging".to_owned(), async {
            self.timed(self.client.query("SELECT 1").fetch_one::<u8>())
                .await?;
            Ok(())
        })
    }

    /// The server and database, for messages: "ClickHouse database `outpost` at http://…".
    pub fn place(&self) -> String {
        format!("ClickHouse database `{}` at {}", self.database, self.server)
    }

    /// This store's node number.
    pub fn node(&self) -> u8 {
        self.node
    }

    /// Creates and migrates the schema; answers the client bound to the database, the highest
    /// cursor of this node, and the highest receive time stored.
    async fn prepare(&self) -> Result<(clickhouse::Client, Cursor, i64), OpenError> {
        let db = &self.database;
        self.execute(&format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
            .await?;
        self.execute(&schema::versions_table(db)).await?;
        let client = self.client.clone().with_database(db);
        let found: u32 = self
            .timed(
                client
                    .query("SELECT toUInt32(max(version)) FROM schema_versions")
                    .fetch_one(),
            )
            .await?;
        if found > schema::SCHEMA_VERSION {
            return Err(OpenError::TooNew(found));
        }
        for (version, statements) in schema::MIGRATIONS {
            if found >= version {
                continue;
            }
            for statement in statements(db) {
                self.execute(&statement).await?;
            }
            self.timed(
                client
                    .query("INSERT INTO schema_versions (version, applied_ns) VALUES (?, ?)")
                    .bind(version)
                    .bind(outpost_common::time::now_ns())
                    .execute(),
            )
            .await?;
        }
        // Current releases refuse an insert touching more than 100 partitions (days) unless
        // told otherwise; 18.16 has no such limit and no such setting.
        let limited: u64 = self
            .timed(
                client
                    .query(
                        "SELECT count() FROM system.settings \
                         WHERE name = 'max_partitions_per_insert_block'",
                    )
                    .fetch_one(),
            )
            .await?;
        let client = if limited > 0 {
            client.with_setting("max_partitions_per_insert_block", "0")
        } else {
            client
        };
        let last_cursor = self.timed(queries::last_cursor(&client, self.node)).await?;
        let last_received_ns: i64 = self
            .timed(
                client
                    .query("SELECT toInt64(max(received_ns)) FROM batches")
                    .fetch_one(),
            )
            .await?;
        Ok((client, last_cursor, last_received_ns))
    }

    /// Runs a statement that answers nothing.
    async fn execute(&self, sql: &str) -> Result<(), Failure> {
        self.timed(self.client.query(sql).execute()).await
    }

    /// Awaits one request, failing after the request timeout.
    async fn timed<T, E: Into<Failure>>(
        &self,
        request: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(answer) => answer.map_err(Into::into),
            Err(_) => Err(Failure::TimedOut(self.timeout)),
        }
    }

    /// Runs `work` on the store's runtime from the calling thread, naming what was being done
    /// and where when it fails.
    fn run<T>(
        &self,
        doing: impl FnOnce() -> String,
        work: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, StoreError> {
        self.block_on(work)
            .map_err(|e| StoreError::backend(format!("{} in the {}", doing(), self.place()), e))
    }

    fn block_on<F: Future>(&self, work: F) -> F::Output {
        match &self.runtime {
            Some(runtime) => runtime.block_on(work),
            // Taken only by `drop`.
            None => unreachable!("the store's runtime is gone before the store"),
        }
    }

    /// The client bound to the database.
    fn client(&self) -> &clickhouse::Client {
        &self.client
    }

    /// Where reads stop: the first cursor of this store's commit in progress; otherwise the
    /// start of the next millisecond, so that a read sees what every aggregator committed up to
    /// now (and the clock moves there, so that the next commit lands at or after it).
    fn horizon(&self) -> Cursor {
        let mut state = lock(&self.clock);
        match state.in_flight {
            Some(first) => first,
            None => state.clock.end(now_ms().saturating_add(1)),
        }
    }
}

impl Drop for ClickHouseStore {
    fn drop(&mut self) {
        // Without blocking: a store may be dropped on an async task's thread.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl EventStore for ClickHouseStore {
    fn backend_name(&self) -> &'static str {
        "clickhouse"
    }

    fn ping(&self) -> Result<(), StoreError> {
        ClickHouseStore::ping(self)
    }

    fn commit_batches(&self, batches: &[IncomingBatch]) -> Result<Vec<BatchCommit>, StoreError> {
        let Some(first) = batches.first() else {
            return Ok(Vec::new());
        };
        let mut state = lock(&self.write);
        let result = {
            // Reads stop before the commit's cursors until it ends, however it ends.
            let _in_flight = InFlight(&self.clock);
            self.block_on(self.commit(&mut state, batches))
        };
        result.map_err(|e| {
            StoreError::backend(
                format!(
                    "committing {} batches (the first from agent {} spool {} seq {}) to the {}",
                    batches.len(),
                    first.agent_id,
                    first.spool_id,
                    first.seq,
                    self.place()
                ),
                e,
            )
        })
    }

    fn end(&self) -> Result<Cursor, StoreError> {
        Ok(lock(&self.clock).clock.end(now_ms()))
    }

    fn events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        let until = self.horizon();
        self.run(
            || format!("reading events ({query:?})"),
            self.read_events(query, until),
        )
    }

    fn follow(&self, from: Cursor, limit: usize) -> Result<super::FollowPage, StoreError> {
        self.run(
            || format!("following the commits from {from}"),
            self.follow_feed(from, limit),
        )
    }

    fn host_summaries(
        &self,
    ) -> Result<std::collections::BTreeMap<String, HostSummary>, StoreError> {
        self.run(
            || "reading the hosts' summaries".to_owned(),
            self.read_host_summaries(),
        )
    }

    fn metric_query(&self, query: &MetricQuery) -> Result<MetricAnswer, MetricQueryError> {
        self.block_on(self.query_metrics(query))
    }

    fn enforce_retention(
        &self,
        retention: &Retention,
        now_ns: i64,
    ) -> Result<RetentionReport, StoreError> {
        self.run(
            || "enforcing retention".to_owned(),
            self.enforce(retention, now_ns),
        )
    }
}

/// Clears the commit in progress from the clock when dropped.
struct InFlight<'a>(&'a Mutex<ClockState>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.0).in_flight = None;
    }
}

/// Why the store could not be opened.
#[derive(Debug)]
enum OpenError {
    Failure(Failure),
    /// The schema version found.
    TooNew(u32),
}

impl From<Failure> for OpenError {
    fn from(e: Failure) -> Self {
        OpenError::Failure(e)
    }
}

/// The wall clock in milliseconds since the epoch (0 before it).
fn now_ms() -> u64 {
    u64::try_from(outpost_common::time::now_ns() / 1_000_000).unwrap_or(0)
}

/// `url` without the user and password it may carry.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Locks a mutex, recovering it if a holder panicked: the caches change only after a commit
/// succeeded, so what it guards is consistent either way.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_has_its_defaults_and_refuses_unknown_fields() {
        let parsed: ClickHouseConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, ClickHouseConfig::default());
        assert_eq!(parsed.url, "http://127.0.0.1:8123");
        assert_eq!(parsed.request_timeout, Duration::from_secs(30));
        let parsed: ClickHouseConfig = toml::from_str(
            "url = \"https://ch.example:8443\"\nnode = 7\nrequest_timeout = \"5s\"\n\
             password_file = \"/etc/outpost/ch.pass\"",
        )
        .unwrap();
        assert_eq!(parsed.node, 7);
        assert_eq!(parsed.request_timeout, Duration::from_secs(5));
        let err = toml::from_str::<ClickHouseConfig>("nodes = 1").unwrap_err();
        assert!(err.to_string().contains("unknown field `nodes`"), "{err}");
    }

    #[test]
    fn messages_never_show_a_password_in_the_url() {
        assert_eq!(
            redact("http://user:secret@ch.example:8123/?x=1"),
            "http://ch.example:8123/?x=1"
        );
        assert_eq!(redact("http://127.0.0.1:8123"), "http://127.0.0.1:8123");
        assert_eq!(redact("http://h/p@q"), "http://h/p@q");
        assert_eq!(redact("no scheme"), "no scheme");
    }

    #[test]
    fn bad_settings_are_refused_before_connecting_and_name_the_server() {
        let config = ClickHouseConfig {
            url: "http://u:pw@127.0.0.1:1".to_owned(),
            node: 64,
            ..ClickHouseConfig::default()
        };
        let err = ClickHouseStore::open(&config).unwrap_err().to_string();
        assert!(err.contains("node 64 is out of range"), "{err}");
        assert!(err.contains("127.0.0.1:1") && !err.contains("pw"), "{err}");
        let config = ClickHouseConfig {
            database: "out-post".to_owned(),
            ..ClickHouseConfig::default()
        };
        let err = ClickHouseStore::open(&config).unwrap_err().to_string();
        assert!(err.contains("`out-post` is not a database name"), "{err}");
        let config = ClickHouseConfig {
            password_file: Some(PathBuf::from("/nonexistent/ch.pass")),
            ..ClickHouseConfig::default()
        };
        let err = ClickHouseStore::open(&config).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ch.pass"), "{err}");
    }

    #[test]
    fn an_unreachable_server_fails_to_open_with_a_clear_error() {
        let config = ClickHouseConfig {
            // Port 1 on loopback: refused at once.
            url: "http://127.0.0.1:1".to_owned(),
            request_timeout: Duration::from_secs(5),
            ..ClickHouseConfig::default()
        };
        let err = ClickHouseStore::open(&config).unwrap_err().to_string();
        assert!(
            err.contains("database outpost at http://127.0.0.1:1"),
            "{err}"
        );
    }
}
