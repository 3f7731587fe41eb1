//! The ClickHouse event store against a real `clickhouse-server` (the Debian package's 18.16):
//! the conformance suite, and what only this store has: two aggregators sharing a database,
//! cursors that continue across a restart, retention by day, and a server outage.
//!
//! Each test starts its own server ([`ClickHouseServer`]); each store opens a database of its
//! own unless the test shares one on purpose.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use outpost_aggregator::store::clickhouse::{ClickHouseConfig, ClickHouseStore};
use outpost_aggregator::store::conformance::{self, EventsFixture};
use outpost_aggregator::store::fim_trail::NOTICE_SOURCE;
use outpost_aggregator::store::series::{Aggregate, Function, Matcher, MetricQuery};
use outpost_aggregator::store::{
    BatchCommit, CPU_UTILIZATION, Cursor, EventQuery, EventStore, FILESYSTEM_UTILIZATION,
    IncomingBatch, MEMORY_UTILIZATION, Retention, StoreError, StoredEvent,
};
use outpost_common::event::{
    AgentStatus, CHAIN_GENESIS, Event, EventKind, FimChange, FimDetection, FimEvent, LogRecord,
    MetricKind, MetricPoint, Severity, chain_hash,
};
use outpost_common::time::{NANOS_PER_SEC, now_ns};
use outpost_tests::clickhouse_server::ClickHouseServer;

const DAY: i64 = 86_400 * NANOS_PER_SEC;

fn config(server: &ClickHouseServer, database: &str, node: u8) -> ClickHouseConfig {
    ClickHouseConfig {
        url: server.url(),
        database: database.to_owned(),
        node,
        request_timeout: Duration::from_secs(20),
        ..ClickHouseConfig::default()
    }
}

fn open(server: &ClickHouseServer, database: &str, node: u8) -> ClickHouseStore {
    ClickHouseStore::open(&config(server, database, node))
        .unwrap_or_else(|e| panic!("opening the store: {e}\n{}", server.log_tail(30)))
}

/// A fresh store per conformance case, each in a database of its own on one server.
struct Fixture {
    server: ClickHouseServer,
}

impl EventsFixture for Fixture {
    fn fresh(&self) -> Arc<dyn EventStore> {
        Arc::new(open(&self.server, &self.server.fresh_database(), 0))
    }
}

#[test]
fn the_clickhouse_store_keeps_the_event_store_contract() {
    if conformance::events::CASES.is_empty() {
        eprintln!("the event-store conformance suite has no cases yet; nothing to run");
        return;
    }
    let fixture = Fixture {
        server: ClickHouseServer::start(),
    };
    let fixture: &dyn EventsFixture = &fixture;
    conformance::run("clickhouse", fixture, conformance::events::CASES);
}

fn log(time_ns: i64, body: &str) -> Event {
    Event::Log(LogRecord {
        time_ns,
        source: "/var/log/syslog".to_owned(),
        severity: Some(Severity::Warning),
        body: body.to_owned(),
        attributes: vec![("unit".to_owned(), "sshd.service".to_owned())],
    })
}

fn point(name: &str, attributes: &[(&str, &str)], time_ns: i64, value: f64) -> Event {
    Event::Metric(MetricPoint {
        name: name.to_owned(),
        unit: "1".to_owned(),
        attributes: attributes
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        time_ns,
        value,
        kind: MetricKind::Gauge,
    })
}

fn status(time_ns: i64) -> Event {
    Event::Status(AgentStatus {
        time_ns,
        agent_version: "1.2.3".to_owned(),
        spool_bytes: u64::MAX,
        cert_renewal_error: Some("refused".to_owned()),
        ..AgentStatus::default()
    })
}

/// A trail of `n` file-integrity events from seq 1, chained as an agent chains them.
fn trail(n: u64, time_ns: i64) -> Vec<FimEvent> {
    let mut previous = CHAIN_GENESIS.to_owned();
    (1..=n)
        .map(|seq| {
            let mut e = FimEvent {
                time_ns: time_ns + seq as i64,
                path: format!("/etc/f{seq}"),
                change: FimChange::Moved,
                changed: vec!["hash".to_owned()],
                moved_from: Some(format!("/etc/old{seq}")),
                before: None,
                after: None,
                detected_by: FimDetection::Scheduled,
                seq,
                chain: String::new(),
            };
            e.chain = chain_hash(&previous, &e);
            previous.clone_from(&e.chain);
            e
        })
        .collect()
}

/// A batch sent as the oldest its agent held.
fn batch(agent: &str, seq: u64, events: Vec<Event>) -> IncomingBatch {
    IncomingBatch {
        agent_id: agent.to_owned(),
        spool_id: 1,
        seq,
        low_water_seq: seq,
        received_ns: now_ns(),
        events,
        packed: None,
    }
}

fn outcomes(answers: &[BatchCommit]) -> Vec<&'static str> {
    answers
        .iter()
        .map(|a| match a {
            BatchCommit::Stored { .. } => "stored",
            BatchCommit::Duplicate => "duplicate",
        })
        .collect()
}

/// Every page of `query`, following `next`.
fn every(store: &dyn EventStore, mut query: EventQuery) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    loop {
        let page = store
            .events(&query)
            .unwrap_or_else(|e| panic!("reading {query:?}: {e}"));
        all.extend(page.events);
        match page.next {
            Some(next) => query.from = next,
            None => return all,
        }
    }
}

fn events_of(stored: &[StoredEvent]) -> Vec<Event> {
    stored.iter().map(|e| e.event.clone()).collect()
}

/// Runs a statement on the server directly, as an operator would.
fn sql(server: &ClickHouseServer, statement: &str) -> String {
    let answer = reqwest::blocking::Client::new()
        .post(server.url())
        .body(statement.to_owned())
        .send()
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    let status = answer.status();
    let text = answer.text().unwrap_or_default();
    assert!(status.is_success(), "{statement}: {status}: {text}");
    text
}

#[test]
fn store_clickhouse_batches_are_stored_once_and_read_back_exactly() {
    let server = ClickHouseServer::start();
    let store = open(&server, &server.fresh_database(), 0);
    let t = now_ns() - 60 * NANOS_PER_SEC;
    let fim_events = trail(1, t);
    let first = vec![
        log(t, "Accepted publickey for deploy"),
        point("system.memory.usage", &[("state", "used")], t, f64::MAX),
        Event::Fim(fim_events[0].clone()),
        status(t),
        Event::Log(LogRecord {
            time_ns: t + 1,
            source: "journal".to_owned(),
            severity: None,
            body: "tab\there, quote ' and backslash \\ and \u{1f600}".to_owned(),
            attributes: vec![
                ("k".to_owned(), "1".to_owned()),
                ("k".to_owned(), "2".to_owned()),
            ],
        }),
    ];
    let db_trail = trail(1, t + 5);
    let second = vec![
        Event::Fim(db_trail[0].clone()),
        point("system.cpu.time", &[], t - 3 * DAY, -0.0),
    ];
    let answers = store
        .commit_batches(&[
            batch("web-1", 1, first.clone()),
            batch("web-1", 1, first.clone()),
            batch("db-1", 1, second.clone()),
        ])
        .unwrap();
    assert_eq!(outcomes(&answers), ["stored", "duplicate", "stored"]);
    let BatchCommit::Stored { start, notices } = &answers[0] else {
        unreachable!()
    };
    assert!(notices.is_empty(), "{notices:?}");
    // Sent again in a later commit, below the mark, and beside a new one.
    let again = store
        .commit_batches(&[
            batch("web-1", 1, first.clone()),
            IncomingBatch {
                low_water_seq: 0,
                ..batch("db-1", 1, second.clone())
            },
            batch("web-1", 2, vec![log(t + 2, "later")]),
        ])
        .unwrap();
    assert_eq!(outcomes(&again), ["duplicate", "duplicate", "stored"]);

    let all = every(&store, EventQuery::default());
    let mut expected = first.clone();
    expected.extend(second.clone());
    expected.push(log(t + 2, "later"));
    assert_eq!(events_of(&all), expected);
    // A batch's events have consecutive cursors from its start, and cursors grow across
    // batches and kinds.
    for (i, e) in all[..first.len()].iter().enumerate() {
        assert_eq!(e.cursor, start.advance(i));
        assert_eq!(e.agent_id, "web-1");
    }
    assert!(all.windows(2).all(|w| w[0].cursor < w[1].cursor));

    // Pages of every size, by kind, by agent, by time, and between two cursors.
    for limit in [1, 2, 3, 1000] {
        let query = EventQuery {
            limit,
            ..EventQuery::default()
        };
        assert_eq!(every(&store, query), all, "pages of {limit}");
    }
    let fim_only = every(
        &store,
        EventQuery {
            kind: Some(EventKind::Fim),
            limit: 1,
            ..EventQuery::default()
        },
    );
    assert_eq!(
        events_of(&fim_only),
        [
            Event::Fim(fim_events[0].clone()),
            Event::Fim(db_trail[0].clone())
        ]
    );
    let db = every(
        &store,
        EventQuery {
            agent_id: Some("db-1".to_owned()),
            ..EventQuery::default()
        },
    );
    assert_eq!(events_of(&db), second);
    let recent = every(
        &store,
        EventQuery {
            time_ns: Some(t + 1..t + 3),
            ..EventQuery::default()
        },
    );
    assert_eq!(recent.len(), 3, "{recent:?}");
    let window = every(
        &store,
        EventQuery {
            from: all[2].cursor,
            until: Some(all[6].cursor),
            limit: 2,
            ..EventQuery::default()
        },
    );
    assert_eq!(window, all[2..6].to_vec());
    let nobody = EventQuery {
        agent_id: Some("nobody".to_owned()),
        ..EventQuery::default()
    };
    assert!(store.events(&nobody).unwrap().events.is_empty());
    // The end: nothing stored is at or after it, and the next commit starts at or after it.
    let end = store.end().unwrap();
    assert!(end > all[all.len() - 1].cursor);
    let after_end = EventQuery {
        from: end,
        ..EventQuery::default()
    };
    assert!(store.events(&after_end).unwrap().events.is_empty());
    let later = store
        .commit_batches(&[batch("web-1", 3, vec![log(t, "after the end")])])
        .unwrap();
    let BatchCommit::Stored { start, .. } = later[0] else {
        panic!("{later:?}")
    };
    assert!(start >= end);
    assert_eq!(store.commit_batches(&[]).unwrap(), []);
    store.ping().unwrap();
}

#[test]
fn store_clickhouse_metrics_summaries_and_trail_breaks_behave_as_in_sqlite() {
    let server = ClickHouseServer::start();
    let database = server.fresh_database();
    let store = open(&server, &database, 0);
    let t = (now_ns() / NANOS_PER_SEC - 3600) * NANOS_PER_SEC;
    let s = NANOS_PER_SEC;

    // Host summaries: the latest point in agent time wins, whatever the order of arrival.
    let collection = |time_ns: i64, idle: f64, fs: &[(&str, f64)]| {
        let mut events = vec![
            point(CPU_UTILIZATION, &[("state", "idle")], time_ns, idle),
            point(
                CPU_UTILIZATION,
                &[("cpu", "cpu0"), ("state", "idle")],
                time_ns,
                0.01,
            ),
            point(
                MEMORY_UTILIZATION,
                &[("state", "used")],
                time_ns,
                1.0 - idle,
            ),
        ];
        for &(mountpoint, value) in fs {
            events.push(point(
                FILESYSTEM_UTILIZATION,
                &[("mountpoint", mountpoint)],
                time_ns,
                value,
            ));
        }
        events
    };
    store
        .commit_batches(&[batch(
            "web-1",
            1,
            collection(t + 20 * s, 0.75, &[("/", 0.5), ("/var", 0.3)]),
        )])
        .unwrap();
    store
        .commit_batches(&[batch(
            "web-1",
            2,
            collection(t + 10 * s, 0.1, &[("/home", 0.99)]),
        )])
        .unwrap();
    let summaries = store.host_summaries().unwrap();
    let web = &summaries["web-1"];
    assert_eq!(web.cpu_busy, Some((0.25, t + 20 * s)));
    assert_eq!(web.memory_used, Some((0.25, t + 20 * s)));
    assert_eq!(web.fullest_fs, Some(("/".to_owned(), 0.5, t + 20 * s)));
    assert_eq!(summaries.len(), 1);

    // A counter that resets, and gauges selected by matchers.
    let counter = |time_ns: i64, value: f64| {
        Event::Metric(MetricPoint {
            name: "system.network.io".to_owned(),
            unit: "By".to_owned(),
            attributes: vec![("device".to_owned(), "eth0".to_owned())],
            time_ns,
            value,
            kind: MetricKind::Counter,
        })
    };
    store
        .commit_batches(&[batch(
            "web-1",
            3,
            vec![
                counter(t - 10 * s, 100.0),
                counter(t, 110.0),
                counter(t + 5 * s, 130.0),
                counter(t + 10 * s, 5.0),
                counter(t + 15 * s, 25.0),
            ],
        )])
        .unwrap();
    let mut q = MetricQuery::new("system.network.io", t..t + 20 * s, 10 * s);
    q.function = Some(Function::Increase);
    let answer = store.metric_query(&q).unwrap();
    assert_eq!(answer.selected, 1);
    assert_eq!(answer.series[0].points, [(t, 30.0), (t + 10 * s, 25.0)]);
    let info = answer.series[0].series.as_ref().unwrap();
    assert_eq!((info.unit.as_str(), info.kind), ("By", MetricKind::Counter));

    let mut q = MetricQuery::new(CPU_UTILIZATION, t..t + 30 * s, 30 * s);
    q.matchers = vec![Matcher::parse("cpu=").unwrap()];
    q.aggregate = Aggregate::Max;
    let answer = store.metric_query(&q).unwrap();
    assert_eq!(answer.selected, 1);
    assert_eq!(answer.series[0].points, [(t, 0.75)]);
    q.matchers.clear();
    assert_eq!(store.metric_query(&q).unwrap().selected, 2);
    // Checked as in SQLite: functions are for counters.
    q.function = Some(Function::Rate);
    let err = store.metric_query(&q).unwrap_err().to_string();
    assert!(err.contains("rate and increase are for counters"), "{err}");

    // The file-integrity trail: a lost event is a gap, told by a notice after the batch's
    // events; a duplicate batch leaves the trail alone.
    let fim = trail(5, t);
    let first = batch(
        "web-1",
        4,
        fim[..2].iter().cloned().map(Event::Fim).collect(),
    );
    store.commit_batches(std::slice::from_ref(&first)).unwrap();
    let lost = batch("web-1", 5, vec![Event::Fim(fim[3].clone())]);
    let answers = store
        .commit_batches(&[first.clone(), lost.clone()])
        .unwrap();
    assert_eq!(outcomes(&answers), ["duplicate", "stored"]);
    let BatchCommit::Stored { start, notices } = &answers[1] else {
        unreachable!()
    };
    assert_eq!(notices.len(), 1, "{notices:?}");
    let Event::Log(notice) = &notices[0] else {
        panic!("{notices:?}")
    };
    assert_eq!(notice.source, NOTICE_SOURCE);
    assert_eq!(notice.severity, Some(Severity::Critical));
    assert!(
        notice.body.contains("1 event missing before event 4"),
        "{notice:?}"
    );
    let stored = store
        .events(&EventQuery {
            from: start.advance(1),
            limit: 1,
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(stored.events[0].event, notices[0]);
    // The trail goes on from 4 in the next commit, and after a reopen.
    let next = store
        .commit_batches(&[batch("web-1", 6, vec![Event::Fim(fim[4].clone())])])
        .unwrap();
    assert!(matches!(&next[0], BatchCommit::Stored { notices, .. } if notices.is_empty()));
    drop(store);
    let store = open(&server, &database, 0);
    let replay = store
        .commit_batches(&[batch("web-1", 7, vec![Event::Fim(fim[4].clone())])])
        .unwrap();
    let BatchCommit::Stored { notices, .. } = &replay[0] else {
        panic!("{replay:?}")
    };
    assert_eq!(notices.len(), 1);
    assert!(
        matches!(&notices[0], Event::Log(l) if l.body.contains("replayed")),
        "{notices:?}"
    );
}

#[test]
fn store_clickhouse_one_batch_through_two_aggregators_is_seen_once() {
    let server = ClickHouseServer::start();
    let database = server.fresh_database();
    let a = open(&server, &database, 1);
    let b = open(&server, &database, 2);
    let t = now_ns() - 60 * NANOS_PER_SEC;
    let one = batch(
        "web-1",
        1,
        vec![
            log(t, "one"),
            log(t + 1, "two"),
            point(CPU_UTILIZATION, &[("state", "idle")], t, 0.5),
        ],
    );
    // One after the other: the second aggregator finds it stored.
    assert_eq!(
        outcomes(&a.commit_batches(std::slice::from_ref(&one)).unwrap()),
        ["stored"]
    );
    assert_eq!(
        outcomes(&b.commit_batches(std::slice::from_ref(&one)).unwrap()),
        ["duplicate"]
    );
    // Both stored it, as when both decided before either wrote: forget the first's
    // deduplication entry, as that race would have it.
    let days = sql(
        &server,
        &format!(
            "SELECT DISTINCT partition FROM system.parts
             WHERE database = '{database}' AND table = 'batches' AND active"
        ),
    );
    for day in days.lines() {
        sql(
            &server,
            &format!("ALTER TABLE {database}.batches DROP PARTITION {day}"),
        );
    }
    assert_eq!(
        outcomes(&b.commit_batches(std::slice::from_ref(&one)).unwrap()),
        ["stored"]
    );
    let rows = sql(&server, &format!("SELECT count() FROM {database}.logs"));
    assert_eq!(rows.trim(), "4", "both copies are on disk");
    for store in [&a, &b] {
        let seen = every(store, EventQuery::default());
        assert_eq!(
            events_of(&seen),
            one.events,
            "seen once through each aggregator"
        );
        for limit in [1, 2] {
            let query = EventQuery {
                limit,
                ..EventQuery::default()
            };
            assert_eq!(every(store, query), seen, "pages of {limit}");
        }
        assert_eq!(
            store.host_summaries().unwrap()["web-1"].cpu_busy,
            Some((0.5, t))
        );
    }

    // Many batches committed through both at once: each is seen once, whichever stored it.
    let batches: Vec<IncomingBatch> = (2..40)
        .map(|seq| IncomingBatch {
            low_water_seq: 1,
            ..batch("web-2", seq, vec![log(t, &format!("batch {seq}"))])
        })
        .collect();
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        for store in [&a, &b] {
            let (barrier, batches) = (&barrier, &batches);
            scope.spawn(move || {
                barrier.wait();
                for chunk in batches.chunks(3) {
                    store.commit_batches(chunk).unwrap();
                }
            });
        }
    });
    for store in [&a, &b] {
        let seen = every(
            store,
            EventQuery {
                agent_id: Some("web-2".to_owned()),
                ..EventQuery::default()
            },
        );
        let bodies: BTreeSet<String> = seen
            .iter()
            .map(|e| match &e.event {
                Event::Log(l) => l.body.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seen.len(), batches.len(), "each once: {bodies:?}");
        assert_eq!(bodies.len(), batches.len());
    }
    // Cursors of the two nodes never collide.
    let cursors: BTreeSet<Cursor> = every(&a, EventQuery::default())
        .iter()
        .map(|e| e.cursor)
        .collect();
    assert_eq!(cursors.len(), 3 + batches.len());
}

#[test]
fn store_clickhouse_a_reopened_store_continues_after_its_last_cursor() {
    let server = ClickHouseServer::start();
    let database = server.fresh_database();
    let store = open(&server, &database, 1);
    let t = now_ns();
    let fim = trail(3, t);
    store
        .commit_batches(&[batch("web-1", 1, vec![Event::Fim(fim[0].clone())])])
        .unwrap();
    // Another aggregator (node 9) whose clock runs an hour ahead wrote the agent's trail; the
    // next commit here must pass its cursor, as a hybrid logical clock does.
    let ahead_ms = (t / 1_000_000 + 3_600_000).cast_unsigned();
    let theirs = (ahead_ms << 22) | (9 << 16) | 5;
    sql(
        &server,
        &format!(
            "INSERT INTO {database}.fim_trails (agent_id, version, has_end, end_seq, end_chain, ahead)
             VALUES ('web-1', {theirs}, 1, 1, '{}', '[]')",
            fim[0].chain
        ),
    );
    let answers = store
        .commit_batches(&[batch("web-1", 2, vec![Event::Fim(fim[1].clone())])])
        .unwrap();
    let BatchCommit::Stored { start, notices } = &answers[0] else {
        panic!("{answers:?}")
    };
    assert!(notices.is_empty(), "{notices:?}");
    assert!(*start > Cursor::START);
    let last = every(&store, EventQuery::default())
        .last()
        .map(|e| e.cursor)
        .unwrap();
    let end = store.end().unwrap();
    assert!(end > last);
    drop(store);

    // Reopened: its wall clock is an hour behind its last cursor; it continues after it.
    let store = open(&server, &database, 1);
    assert!(store.end().unwrap() > last, "the end went back");
    let answers = store
        .commit_batches(&[batch("web-1", 3, vec![Event::Fim(fim[2].clone())])])
        .unwrap();
    let BatchCommit::Stored { start, .. } = answers[0] else {
        panic!("{answers:?}")
    };
    assert!(start > last, "{start} after {last}");
    let all = every(&store, EventQuery::default());
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].cursor < w[1].cursor));
    // A store of another node starts on its own cursors.
    let other = open(&server, &database, 2);
    let answers = other
        .commit_batches(&[batch("web-3", 1, vec![log(t, "elsewhere")])])
        .unwrap();
    let BatchCommit::Stored { start, .. } = answers[0] else {
        panic!("{answers:?}")
    };
    assert!(all.iter().all(|e| e.cursor != start));

    // A database a newer build migrated is refused, naming it.
    sql(
        &server,
        &format!("INSERT INTO {database}.schema_versions VALUES (99, 0)"),
    );
    let err = ClickHouseStore::open(&config(&server, &database, 1)).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("database `{database}` at {}", server.url()))
            && message.contains("upgrade outpost-aggregator"),
        "{message}"
    );
}

#[test]
fn store_clickhouse_retention_drops_old_days_and_keeps_recent_ones() {
    let server = ClickHouseServer::start();
    let database = server.fresh_database();
    let store = open(&server, &database, 0);
    let now = now_ns();
    // Logs are kept 14 days, metrics 30, and deduplication entries as long as the longest
    // period (a year).
    let old = IncomingBatch {
        received_ns: now - 400 * DAY,
        ..batch(
            "web-1",
            1,
            vec![
                log(now - 20 * DAY, "older than the period by more than a day"),
                log(now - 13 * DAY, "younger than the period"),
                point("system.memory.usage", &[], now - 20 * DAY, 1.0),
                status(now - 9 * DAY),
            ],
        )
    };
    let new = batch("web-1", 2, vec![log(now, "today"), status(now)]);
    store.commit_batches(&[old.clone(), new]).unwrap();
    let report = store.enforce_retention(&Retention::default(), now).unwrap();
    assert_eq!(report.log, 1, "{report:?}");
    assert_eq!(report.status, 1, "{report:?}");
    assert_eq!(report.metric, 0, "{report:?}");
    assert_eq!(report.dedup_entries, 1, "{report:?}");
    let bodies: Vec<String> = every(&store, EventQuery::default())
        .iter()
        .filter_map(|e| match &e.event {
            Event::Log(l) => Some(l.body.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, ["younger than the period", "today"]);
    let kinds: Vec<EventKind> = every(&store, EventQuery::default())
        .iter()
        .map(|e| e.event.kind())
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Log,
            EventKind::Metric,
            EventKind::Log,
            EventKind::Status
        ]
    );
    // A second pass finds nothing more.
    let again = store.enforce_retention(&Retention::default(), now).unwrap();
    assert_eq!(again.deleted_events() + again.dedup_entries, 0, "{again:?}");
    // The batch's deduplication entry went with its day; its low-water mark still answers a
    // resend below it.
    assert_eq!(
        outcomes(
            &store
                .commit_batches(&[IncomingBatch {
                    low_water_seq: 3,
                    ..batch("web-1", 3, vec![])
                }])
                .unwrap()
        ),
        ["stored"]
    );
    assert_eq!(
        outcomes(&store.commit_batches(&[old]).unwrap()),
        ["duplicate"]
    );
}

#[test]
fn store_clickhouse_an_outage_fails_commits_clearly_and_the_store_recovers() {
    let mut server = ClickHouseServer::start();
    let database = server.fresh_database();
    let store = open(&server, &database, 0);
    let t = now_ns();
    store
        .commit_batches(&[batch("web-1", 1, vec![log(t, "before")])])
        .unwrap();
    server.stop();
    let during = batch("web-1", 2, vec![log(t, "during"), status(t)]);
    let err = store
        .commit_batches(std::slice::from_ref(&during))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("committing 1 batches (the first from agent web-1 spool 1 seq 2)")
            && err.contains(&format!("database `{database}` at {}", server.url())),
        "{err}"
    );
    assert!(store.ping().is_err());
    assert!(store.events(&EventQuery::default()).is_err());

    server.restart();
    store.ping().unwrap();
    assert_eq!(
        outcomes(&store.commit_batches(std::slice::from_ref(&during)).unwrap()),
        ["stored"]
    );
    assert_eq!(
        outcomes(&store.commit_batches(&[during]).unwrap()),
        ["duplicate"]
    );
    let bodies: Vec<String> = every(&store, EventQuery::default())
        .iter()
        .filter_map(|e| match &e.event {
            Event::Log(l) => Some(l.body.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, ["before", "during"]);
}

#[test]
#[ignore = "benchmark; run with -- --ignored --nocapture"]
fn store_clickhouse_commit_throughput() {
    const BATCH: usize = 1000;
    const PER_COMMIT: usize = 10;
    const COMMITS: usize = 50;
    let server = ClickHouseServer::start();
    let store = open(&server, &server.fresh_database(), 0);
    let t = now_ns();
    let line = |i: usize| {
        log(
            t + i as i64,
            &format!(
                "{i:>10} sshd[1234]: Accepted publickey for deploy from 10.0.0.1 port 52144 ssh2 \
                 (session 8812734): RSA SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"
            ),
        )
    };
    let groups: Vec<Vec<IncomingBatch>> = (0..COMMITS)
        .map(|c| {
            (0..PER_COMMIT)
                .map(|b| {
                    let seq = (c * PER_COMMIT + b) as u64;
                    IncomingBatch {
                        low_water_seq: 0,
                        ..batch("bench", seq, (0..BATCH).map(line).collect())
                    }
                })
                .collect()
        })
        .collect();
    let started = std::time::Instant::now();
    for group in &groups {
        store.commit_batches(group).unwrap();
    }
    let elapsed = started.elapsed();
    let n = COMMITS * PER_COMMIT * BATCH;
    println!(
        "{n} log events, {BATCH} a batch, {PER_COMMIT} batches a commit: {:.0} events/s \
         ({:.1} ms per commit)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / COMMITS as f64
    );
    let started = std::time::Instant::now();
    let read = every(
        &store,
        EventQuery {
            limit: 10_000,
            ..EventQuery::default()
        },
    );
    assert_eq!(read.len(), n);
    println!(
        "read back in pages of 10,000: {:.0} events/s",
        n as f64 / started.elapsed().as_secs_f64()
    );
    // Tailing: a page of the latest 100 still reads the table under FINAL.
    let started = std::time::Instant::now();
    let tail = store
        .events(&EventQuery {
            from: read[n - 100].cursor,
            limit: 100,
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(tail.events.len(), 100);
    println!(
        "a page of the latest 100 of {n}: {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

#[test]
fn store_clickhouse_a_failed_commits_rows_collapse_with_the_resent_batch() {
    let server = ClickHouseServer::start();
    let database = server.fresh_database();
    let store = open(&server, &database, 0);
    let t = now_ns();
    let fim = trail(2, t);
    store
        .commit_batches(&[batch("web-1", 1, vec![Event::Fim(fim[0].clone())])])
        .unwrap();
    // The last writes of the commit fail: its event rows and trail are written, its batch row
    // is not (the table lost a column the insert names; reads do not need it).
    sql(
        &server,
        &format!("ALTER TABLE {database}.batches DROP COLUMN events"),
    );
    let failing = batch(
        "web-1",
        2,
        vec![log(t, "first try"), Event::Fim(fim[1].clone())],
    );
    let err = store
        .commit_batches(std::slice::from_ref(&failing))
        .unwrap_err()
        .to_string();
    assert!(err.contains("committing 1 batches"), "{err}");
    sql(
        &server,
        &format!("ALTER TABLE {database}.batches ADD COLUMN events UInt32"),
    );
    // Unlike a transaction, the rows written are visible until the batch comes again.
    let seen = every(&store, EventQuery::default());
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Sent again: stored, its rows collapse with the first try's, and the trail goes on from
    // where the last successful commit left it (no replay reported).
    let answers = store
        .commit_batches(std::slice::from_ref(&failing))
        .unwrap();
    let BatchCommit::Stored { start, notices } = &answers[0] else {
        panic!("{answers:?}")
    };
    assert!(notices.is_empty(), "{notices:?}");
    let seen = every(&store, EventQuery::default());
    let mut expected = vec![Event::Fim(fim[0].clone())];
    expected.extend(failing.events.clone());
    assert_eq!(events_of(&seen), expected);
    assert_eq!(seen[1].cursor, *start, "read at the resent batch's cursors");
    // Pages whose window holds the first try's copies come out short, but none is missed or
    // read twice.
    for limit in [1, 2, 3] {
        let paged = every(
            &store,
            EventQuery {
                limit,
                ..EventQuery::default()
            },
        );
        assert_eq!(paged, seen, "pages of {limit}");
    }
    assert_eq!(
        outcomes(&store.commit_batches(&[failing]).unwrap()),
        ["duplicate"]
    );
}

/// A cursor's position, from its token (`c` and hex digits).
fn position(cursor: Cursor) -> u64 {
    let token = cursor.to_string();
    u64::from_str_radix(token.trim_start_matches('c'), 16)
        .expect("a cursor token is c and hex digits")
}

/// The aggregator that runs alerting follows every aggregator's commits through the feed: each
/// committed event once, in cursor order, a repeat of a batch not at all, and a commit that
/// died after writing its feed row (no `batches` row) waited for, then passed over.
#[test]
fn store_clickhouse_a_follower_sees_every_commit_of_every_aggregator_once() {
    let server = ClickHouseServer::start();
    let database = server.fresh_database();
    let a = open(&server, &database, 1);
    let b = open(&server, &database, 2);
    let follower = ClickHouseStore::open(&ClickHouseConfig {
        request_timeout: Duration::from_secs(2),
        ..config(&server, &database, 3)
    })
    .unwrap();
    let from = follower.end().unwrap();
    let t = now_ns();
    let mut expected = BTreeSet::new();
    for seq in 1..=10u64 {
        for (store, agent) in [(&a, "web-a"), (&b, "web-b")] {
            let bodies: Vec<String> = (0..3).map(|i| format!("{agent} {seq} {i}")).collect();
            expected.extend(bodies.iter().cloned());
            let one = batch(agent, seq, bodies.iter().map(|body| log(t, body)).collect());
            assert_eq!(
                outcomes(&store.commit_batches(std::slice::from_ref(&one)).unwrap()),
                ["stored"]
            );
            // Sent again, to the other aggregator: stored once, followed once.
            let other = if std::ptr::eq(store, &a) { &b } else { &a };
            assert_eq!(
                outcomes(&other.commit_batches(std::slice::from_ref(&one)).unwrap()),
                ["duplicate"]
            );
        }
    }
    // A commit that wrote its feed row and died before its `batches` row.
    let ghost = position(a.end().unwrap());
    sql(
        &server,
        &format!(
            "INSERT INTO {database}.feed (start, agent_id, spool_id, seq, received_ns, events, \
             codec, raw_bytes, data) VALUES ({ghost}, 'ghost', 1, 1, 0, 1, 0, 0, '')"
        ),
    );
    let after = log(t, "after the ghost");
    expected.insert("after the ghost".to_owned());
    a.commit_batches(&[batch("web-a", 11, vec![after])])
        .unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (mut next, mut seen, mut passed_over) = (from, Vec::new(), 0);
    while (seen.len() < expected.len() || passed_over == 0) && std::time::Instant::now() < deadline
    {
        // Small pages: a page stops at whole batches.
        let page = follower.follow(next, 4).unwrap();
        assert!(page.next >= next, "the follower never goes back");
        passed_over += page.passed_over;
        let idle = page.events.is_empty();
        seen.extend(page.events);
        next = page.next;
        if idle {
            // The follower reads seconds behind the clocks: poll until it has caught up.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let bodies: Vec<String> = seen
        .iter()
        .map(|e| match &e.event {
            Event::Log(l) => l.body.clone(),
            other => panic!("not a log record: {other:?}"),
        })
        .collect();
    assert_eq!(bodies.len(), expected.len(), "each event once: {bodies:?}");
    assert_eq!(bodies.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(
        seen.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "in cursor order"
    );
    assert_eq!(
        passed_over, 1,
        "the commit that never completed is passed over once"
    );
    assert!(seen.iter().all(|e| e.agent_id != "ghost"));
}
