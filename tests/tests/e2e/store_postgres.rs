//! The PostgreSQL state store against a real server: the state-store conformance suite, and
//! what only a database shared by several aggregators shows: enrollments racing between two
//! aggregators, migrations racing at start, a schema from a newer build, a failed write that
//! leaves nothing behind, the password file, an outage the store rides out, and the store used
//! from async tasks (which block on their own runtime inside the `postgres` client).
//!
//! Each test starts its own server (the outage test stops its own), on a port the OS chose.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use outpost_aggregator::enroll::token::{self, EnrollmentToken, TokenSpec};
use outpost_aggregator::notify::{Message, MessageAlert, Status};
use outpost_aggregator::rules::engine::{AlertRecord, HistoryEntry, HistoryKind, Outcome};
use outpost_aggregator::rules::file::Severity;
use outpost_aggregator::rules::lifecycle::AlertState;
use outpost_aggregator::store::alerting::AlertingStore;
use outpost_aggregator::store::conformance::{self, StateFixture};
use outpost_aggregator::store::postgres::{PostgresConfig, PostgresStore, SCHEMA_VERSION};
use outpost_aggregator::store::{Enrollment, RegistryUpdate, StateBackend, StateStore, StoreError};
use outpost_common::event::{AgentStatus, HostFacts};
use outpost_common::wire::{Hello, PROTOCOL_VERSION};
use outpost_tests::postgres_server::{PASSWORD, PostgresServer};

/// A fixed "now": 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000_000_000;

/// A store on the database at `url`, with a small pool: tests open many.
fn open(url: &str) -> PostgresStore {
    PostgresStore::open(&config(url)).unwrap_or_else(|e| panic!("opening {url}: {e}"))
}

fn config(url: &str) -> PostgresConfig {
    PostgresConfig {
        pool_size: 2,
        ..PostgresConfig::new(url)
    }
}

/// A fresh database and store per case.
struct Fixture {
    server: PostgresServer,
}

impl StateFixture for Fixture {
    fn fresh(&self) -> Arc<dyn StateBackend> {
        Arc::new(open(&self.server.fresh_database()))
    }
}

#[test]
fn the_postgres_store_keeps_the_state_store_contract() {
    let fixture = Fixture {
        server: PostgresServer::start(),
    };
    let fixture: &dyn StateFixture = &fixture;
    conformance::run("postgres", fixture, conformance::state::CASES);
}

fn hello(agent_id: &str, agent_version: &str, now_ns: i64) -> RegistryUpdate {
    RegistryUpdate::Hello {
        agent_id: agent_id.to_owned(),
        hello: Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: agent_version.to_owned(),
            spool_id: 1,
            host: HostFacts {
                hostname: format!("{agent_id}.example"),
                ..HostFacts::default()
            },
            status: AgentStatus::default(),
            labels: Vec::new(),
        },
        now_ns,
    }
}

fn seen(agent_id: &str, now_ns: i64) -> RegistryUpdate {
    RegistryUpdate::Seen {
        agent_id: agent_id.to_owned(),
        now_ns,
    }
}

fn enrollment_token(max_uses: Option<u32>) -> EnrollmentToken {
    token::create(
        TokenSpec {
            expires_ns: i64::MAX,
            max_uses,
            labels: Vec::new(),
            allow_reenroll: false,
            endpoints: vec!["aggregator.example:4433".into()],
            ca_der: b"ca".to_vec(),
        },
        T0,
    )
    .expect("a valid token")
    .record
}

/// Runs `f(i)` for each `i` on a thread of its own, all released at once; answers in order.
fn at_once<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, f) = (&barrier, &f);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a racing thread panicked"))
            .collect()
    })
}

#[test]
fn two_aggregators_enrolling_at_once_certify_a_key_once_and_spend_a_use_once() {
    let server = PostgresServer::start();
    let url = server.fresh_database();
    let aggregators = [open(&url), open(&url)];
    let unlimited = enrollment_token(None);
    aggregators[0].insert_enrollment_token(&unlimited).unwrap();

    // The same key certified by both at once, again and again: one wins each time.
    const ROUNDS: u8 = 20;
    for round in 0..ROUNDS {
        let results = at_once(2, |i| {
            aggregators[i].record_enrollment(&Enrollment {
                key_sha256: [round; 32],
                agent_id: format!("web-{round}"),
                token_id: Some(unlimited.id.clone()),
                now_ns: T0,
            })
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        for r in &results {
            assert!(
                matches!(r, Ok(()) | Err(StoreError::Conflict(_))),
                "round {round}: {r:?}"
            );
        }
        assert!(aggregators[1].key_enrolled(&[round; 32]).unwrap());
    }
    // The losers' uses were rolled back with their keys.
    let used = aggregators[1].enrollment_token(&unlimited.id).unwrap();
    assert_eq!(used.map(|t| t.uses), Some(u32::from(ROUNDS)));

    // Eight enrollments of different keys racing for a token's last three uses.
    let limited = enrollment_token(Some(3));
    aggregators[1].insert_enrollment_token(&limited).unwrap();
    let results = at_once(8, |i| {
        aggregators[i % 2].record_enrollment(&Enrollment {
            key_sha256: [100 + i as u8; 32],
            agent_id: format!("db-{i}"),
            token_id: Some(limited.id.clone()),
            now_ns: T0,
        })
    });
    let won: Vec<usize> = (0..8).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(won.len(), 3, "{results:?}");
    for (i, r) in results.iter().enumerate() {
        let key = [100 + i as u8; 32];
        assert_eq!(
            aggregators[0].key_enrolled(&key).unwrap(),
            r.is_ok(),
            "{r:?}"
        );
        if let Err(e) = r {
            assert!(e.to_string().contains("used up"), "{e}");
        }
    }
    let used = aggregators[0].enrollment_token(&limited.id).unwrap();
    assert_eq!(used.map(|t| t.uses), Some(3), "never over-spent");
}

#[test]
fn aggregators_opening_a_new_database_at_once_migrate_it_once() {
    let server = PostgresServer::start();
    let url = server.fresh_database();
    let stores = at_once(4, |_| PostgresStore::open(&config(&url)));
    let stores: Vec<PostgresStore> = stores
        .into_iter()
        .map(|s| s.unwrap_or_else(|e| panic!("a concurrent open failed: {e}")))
        .collect();

    let mut admin = server.connect(&url);
    let versions: Vec<(i64, i64)> = admin
        .query(
            "SELECT version, count(*) FROM schema_version GROUP BY version ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected: Vec<(i64, i64)> = (1..=SCHEMA_VERSION).map(|v| (v, 1)).collect();
    assert_eq!(versions, expected, "each migration applied once");

    // They share one registry.
    stores[0].record(&hello("web-1", "1.0.0", T0)).unwrap();
    for store in &stores {
        let ids: Vec<String> = store
            .agents()
            .unwrap()
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        assert_eq!(ids, ["web-1"]);
    }
    // And opening it again later migrates nothing.
    drop(open(&url));
    let count: i64 = admin
        .query_one("SELECT count(*) FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, SCHEMA_VERSION);
}

#[test]
fn a_database_migrated_by_a_newer_build_is_refused() {
    let server = PostgresServer::start();
    let url = server.fresh_database();
    drop(open(&url));
    let mut admin = server.connect(&url);
    admin
        .execute(
            "INSERT INTO schema_version (version, applied_ns) VALUES ($1, 0)",
            &[&(SCHEMA_VERSION + 1)],
        )
        .unwrap();

    let err = PostgresStore::open(&config(&url)).expect_err("a newer schema");
    let message = err.to_string();
    match err {
        StoreError::SchemaTooNew {
            found, supported, ..
        } => assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION)),
        other => panic!("not SchemaTooNew: {other}"),
    }
    let database = url.rsplit('/').next().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "database `{database}` on 127.0.0.1:{}",
            server.port()
        )),
        "{message}"
    );
    assert!(message.contains("upgrade outpost-aggregator"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");
}

#[test]
fn a_failed_write_leaves_nothing_behind() {
    let server = PostgresServer::start();
    let url = server.fresh_database();
    let store = open(&url);
    store.record(&hello("a", "1.0.0", T0)).unwrap();
    let generation = store.registry_generation();
    assert!(generation.is_some(), "the database keeps a generation");

    // The database refuses the second agent's Hello, in the middle of the round.
    let mut admin = server.connect(&url);
    admin
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'refused by test trigger'; END $$;
             CREATE TRIGGER refuse_version BEFORE UPDATE ON agents FOR EACH ROW
                 WHEN (NEW.agent_version = 'refused') EXECUTE FUNCTION refuse();
             CREATE TRIGGER refuse_key BEFORE INSERT ON enrolled_keys FOR EACH ROW
                 EXECUTE FUNCTION refuse();
             CREATE TRIGGER refuse_notification BEFORE INSERT ON outbox FOR EACH ROW
                 EXECUTE FUNCTION refuse();",
        )
        .unwrap();
    let before = store.agents().unwrap();
    let err = store
        .record_all(&[seen("a", T0 + 10), hello("b", "refused", T0 + 10)])
        .expect_err("the trigger refuses");
    let message = err.to_string();
    assert!(
        message.contains("recording 2 registry updates (the first about agent a)"),
        "{message}"
    );
    assert!(matches!(err, StoreError::Backend { .. }), "{message}");
    assert_eq!(
        store.agents().unwrap(),
        before,
        "neither a seen nor b registered"
    );
    assert_eq!(store.registry_generation(), generation);

    // An enrollment whose key cannot be recorded spends no use.
    let t = enrollment_token(Some(1));
    store.insert_enrollment_token(&t).unwrap();
    let err = store
        .record_enrollment(&Enrollment {
            key_sha256: [1; 32],
            agent_id: "a".to_owned(),
            token_id: Some(t.id.clone()),
            now_ns: T0,
        })
        .expect_err("the trigger refuses");
    assert!(
        err.to_string()
            .contains("recording the enrollment of agent a"),
        "{err}"
    );
    assert_eq!(
        store.enrollment_token(&t.id).unwrap().map(|t| t.uses),
        Some(0)
    );

    // An alerting outcome whose notification cannot be queued leaves no record nor history.
    let outcome = Outcome {
        alerts: vec![alert_record("f1")],
        history: vec![HistoryEntry {
            fingerprint: "f1".into(),
            rule: "cpu".into(),
            kind: HistoryKind::Fired,
            labels: BTreeMap::new(),
            value: None,
            at_ns: T0,
            detail: String::new(),
        }],
        messages: vec![notification("f1")],
        ..Outcome::default()
    };
    store
        .save_alerting(&outcome, None, None)
        .expect_err("the trigger refuses");
    assert_eq!(store.alert_records().unwrap(), vec![]);
    assert!(store.load_alerting().unwrap().saved.alerts.is_empty());
    let everything = outpost_aggregator::store::alerting::LogQuery {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.alert_history(&everything).unwrap(), vec![]);
}

fn alert_record(fingerprint: &str) -> AlertRecord {
    AlertRecord {
        fingerprint: fingerprint.into(),
        rule: "cpu".into(),
        severity: Severity::High,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        state: AlertState::Firing {
            since_ns: T0,
            last_held_ns: T0,
        },
        value: None,
        active_since_ns: T0,
        fired_ns: Some(T0),
        resolved_ns: None,
        ack: None,
        escalated: 0,
        suppressed_by: Vec::new(),
        updated_ns: T0,
    }
}

fn notification(fingerprint: &str) -> Message {
    Message {
        receiver: "ops".into(),
        group_key: "{0}:{}".into(),
        group_labels: BTreeMap::new(),
        alerts: vec![MessageAlert {
            fingerprint: fingerprint.into(),
            status: Status::Firing,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            starts_at_ns: T0,
            ends_at_ns: None,
            value: None,
            generator_url: String::new(),
        }],
        external_url: String::new(),
        escalation: 0,
        created_ns: T0,
    }
}

#[test]
fn aggregators_sharing_a_database_share_its_registry_generation() {
    let server = PostgresServer::start();
    let url = server.fresh_database();
    let (a, b) = (open(&url), open(&url));
    let start = b.registry_generation().expect("a generation");
    assert_eq!(a.registry_generation(), Some(start));
    a.record(&hello("web-1", "1.0.0", T0)).unwrap();
    let after = b.registry_generation().expect("a generation");
    assert_ne!(after, start, "b sees a's write");
    assert_eq!(a.registry_generation(), Some(after));
    assert!(b.remove_agent("web-1", T0 + 1).unwrap());
    assert_ne!(a.registry_generation(), Some(after), "a sees b's removal");
}

#[test]
fn the_password_comes_from_the_password_file() {
    let server = PostgresServer::start();
    let url = server.fresh_database();
    let database = url.rsplit('/').next().unwrap_or_default().to_owned();
    let without_password = format!(
        "postgresql://postgres@127.0.0.1:{}/{database}",
        server.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    let with_file = |password: &str| {
        std::fs::write(&password_file, password).unwrap();
        PostgresStore::open(&PostgresConfig {
            password_file: Some(password_file.clone()),
            ..config(&without_password)
        })
    };

    let store = with_file(&format!("{PASSWORD}\n")).expect("the right password");
    store.ping().unwrap();
    assert_eq!(
        store.database(),
        format!(
            "PostgreSQL database `{database}` on 127.0.0.1:{} as `postgres`",
            server.port()
        )
    );

    let err = with_file("not-the-password\n").expect_err("a wrong password");
    let message = err.to_string();
    assert!(matches!(err, StoreError::OpenDatabase { .. }), "{message}");
    assert!(
        message.contains(&format!("database `{database}`")),
        "{message}"
    );
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(!message.contains("not-the-password"), "{message}");

    let err = PostgresStore::open(&config(&without_password)).expect_err("no password");
    assert!(matches!(err, StoreError::OpenDatabase { .. }), "{err}");
}

#[test]
fn the_store_rides_out_a_server_restart() {
    let mut server = PostgresServer::start();
    let url = server.fresh_database();
    let store = PostgresStore::open(&PostgresConfig {
        connect_timeout: Duration::from_secs(1),
        ..config(&url)
    })
    .unwrap();
    store.record(&hello("web-1", "1.0.0", T0)).unwrap();
    store.ping().unwrap();

    server.stop();
    let err = store.agents().expect_err("the server is down");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Backend { .. }), "{message}");
    assert!(
        message.starts_with("reading the agent registry: "),
        "{message}"
    );
    let err = store
        .record(&seen("web-1", T0 + 1))
        .expect_err("the server is down");
    assert!(
        err.to_string()
            .starts_with("recording 1 registry updates (the first about agent web-1): "),
        "{err}"
    );
    let err = store.ping().expect_err("the server is down");
    assert!(err.to_string().contains(store.database()), "{err}");
    assert_eq!(store.registry_generation(), None, "the store cannot tell");

    // Back: the very next call works, on the same store.
    server.restart();
    let agents = store.agents().unwrap_or_else(|e| {
        panic!(
            "the first call after the restart: {e}; the server's log ends:\n{}",
            server.log_tail()
        )
    });
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].last_seen_ns, T0, "the failed write left nothing");
    store.record(&seen("web-1", T0 + 2)).unwrap();
    store.ping().unwrap();
    assert!(store.registry_generation().is_some());
}

#[test]
fn the_store_can_be_asked_its_generation_and_dropped_on_async_tasks() {
    let server = PostgresServer::start();
    let url = server.fresh_database();
    let store = Arc::new(open(&url));
    store.record(&hello("web-1", "1.0.0", T0)).unwrap();
    let expected = store.registry_generation();
    assert!(expected.is_some());

    // The API's fleet view asks from an async task: a worker of the multi-threaded runtime
    // blocks in place for it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let on_task = Arc::clone(&store);
    let generation = runtime
        .block_on(runtime.spawn(async move { on_task.registry_generation() }))
        .expect("the task ran");
    assert_eq!(generation, expected);

    // A single-threaded runtime cannot block: the store cannot tell, and says so.
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let on_task = Arc::clone(&store);
    assert_eq!(
        single.block_on(async move { on_task.registry_generation() }),
        None
    );

    // The last reference dropped on a worker: its connections close without blocking it.
    runtime
        .block_on(runtime.spawn(async move { drop(store) }))
        .expect("dropping the store on a task does not panic");
}

/// The alerting lease: one holder at a time, renewed by its holder, taken by another only once
/// it expires (with the next epoch), given up at once on release; a write at an epoch that
/// passed writes nothing, and its answer says so.
#[test]
fn one_aggregator_at_a_time_holds_the_alerting_lease_and_writes_fenced_by_it() {
    use outpost_aggregator::store::alerting::Claim;
    let server = PostgresServer::start();
    let url = server.fresh_database();
    let (a, b) = (open(&url), open(&url));
    let long = Duration::from_secs(60);
    let Claim::Held { epoch: first, .. } = a.claim_alerting("a", long).unwrap() else {
        panic!("a free lease is taken");
    };
    match b.claim_alerting("b", long).unwrap() {
        Claim::Taken { holder, remaining } => {
            assert_eq!(holder, "a");
            assert!(remaining > Duration::from_secs(50), "{remaining:?}");
        }
        held => panic!("b took a held lease: {held:?}"),
    }
    assert!(
        matches!(a.claim_alerting("a", long).unwrap(), Claim::Held { epoch, .. } if epoch == first),
        "renewing keeps the epoch"
    );
    let outcome = |fingerprint: &str| Outcome {
        alerts: vec![alert_record(fingerprint)],
        messages: vec![Message {
            group_key: fingerprint.to_owned(),
            ..notification(fingerprint)
        }],
        ..Outcome::default()
    };
    a.save_alerting_fenced(first, &outcome("by-a"), None, None)
        .unwrap();

    // a stops renewing: a short lease runs out, and b takes it with the next epoch.
    a.claim_alerting("a", Duration::from_millis(300)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let second = loop {
        match b.claim_alerting("b", long).unwrap() {
            Claim::Held { epoch, .. } => break epoch,
            Claim::Taken { .. } => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lease never expired"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert!(second > first);
    // a, which still believes it holds the lease, writes nothing.
    let e = a
        .save_alerting_fenced(first, &outcome("late-a"), None, None)
        .unwrap_err();
    assert!(
        matches!(e, StoreError::LeaseLost { epoch } if epoch == first),
        "{e}"
    );
    assert!(
        e.to_string().contains("passed to another aggregator"),
        "{e}"
    );
    b.save_alerting_fenced(second, &outcome("by-b"), None, None)
        .unwrap();
    let records: Vec<String> = b
        .alert_records()
        .unwrap()
        .into_iter()
        .map(|r| r.fingerprint)
        .collect();
    assert_eq!(records, ["by-a", "by-b"]);
    let queued = b.due_notifications(i64::MAX, 10).unwrap();
    assert_eq!(
        queued.len(),
        2,
        "one notification each, none from the late write"
    );
    assert!(
        matches!(a.claim_alerting("a", long).unwrap(), Claim::Taken { holder, .. } if holder == "b")
    );

    // Released: a takes it at once, with a newer epoch than b's.
    b.release_alerting("b").unwrap();
    match a.claim_alerting("a", long).unwrap() {
        Claim::Held { epoch, .. } => assert!(epoch > second),
        taken => panic!("a released lease is free: {taken:?}"),
    }
    assert!(matches!(
        b.save_alerting_fenced(second, &outcome("after-release"), None, None),
        Err(StoreError::LeaseLost { .. })
    ));
}
