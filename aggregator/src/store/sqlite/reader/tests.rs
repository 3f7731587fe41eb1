use outpost_common::event::{Event, FimChange};
use rusqlite::Connection;

use super::*;
use crate::store::fim_trail::BreakKind;
use crate::store::fim_trail::chained::trail;
use crate::store::sqlite::test_support::*;
use crate::store::testutil::*;
use crate::store::{EventStore, Retention};

fn fims(events: &[FimEvent]) -> Vec<Event> {
    events.iter().cloned().map(Event::Fim).collect()
}

fn paths(found: &[StoredEvent]) -> Vec<(String, String)> {
    found
        .iter()
        .map(|e| match &e.event {
            Event::Fim(f) => (e.agent_id.clone(), f.path.clone()),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn all() -> FimQuery {
    FimQuery {
        agent_id: None,
        path_prefix: None,
        change: None,
        time_ns: None,
        limit: 100,
    }
}

#[test]
fn fim_changes_are_listed_by_agent_path_prefix_change_and_time_latest_last() {
    let (_dir, store) = open();
    let mut t = trail(6);
    let names = [
        "/etc/passwd",
        "/etc/ssh/sshd_config",
        "/etc0",
        "/usr/bin/sudo",
        "/etc/",
        "/et",
    ];
    for (e, name) in t.iter_mut().zip(names) {
        e.path = name.to_owned();
    }
    t[3].change = FimChange::Deleted;
    commit(&store, &[batch("a", 1, 1, fims(&t[..4]))]);
    commit(&store, &[batch("b", 1, 1, fims(&t[4..]))]);
    let reader = SqliteReader::open(store.path()).unwrap();

    assert_eq!(reader.fim_changes(&all()).unwrap().len(), 6);
    let etc = FimQuery {
        path_prefix: Some("/etc/".to_owned()),
        ..all()
    };
    let expected = [
        ("a", "/etc/passwd"),
        ("a", "/etc/ssh/sshd_config"),
        ("b", "/etc/"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(a, p)| (a.to_string(), p.to_string()))
        .collect();
    assert_eq!(paths(&reader.fim_changes(&etc).unwrap()), expected);
    let of_b = FimQuery {
        agent_id: Some("b".to_owned()),
        ..etc.clone()
    };
    assert_eq!(paths(&reader.fim_changes(&of_b).unwrap()), expected[2..]);
    let deleted = FimQuery {
        change: Some(FimChange::Deleted),
        ..all()
    };
    assert_eq!(
        paths(&reader.fim_changes(&deleted).unwrap()),
        [("a".to_owned(), "/usr/bin/sudo".to_owned())]
    );
    // The trail's events are one nanosecond apart, from seq 1.
    let t0 = t[0].time_ns;
    let window = FimQuery {
        time_ns: Some(t0 + 1..t0 + 3),
        ..all()
    };
    let got = paths(&reader.fim_changes(&window).unwrap());
    assert_eq!(
        got,
        [
            ("a".to_owned(), names[1].to_owned()),
            ("a".to_owned(), names[2].to_owned())
        ]
    );
    // The latest two, oldest first.
    let latest = FimQuery { limit: 2, ..all() };
    assert_eq!(
        paths(&reader.fim_changes(&latest).unwrap()),
        [
            ("b".to_owned(), "/etc/".to_owned()),
            ("b".to_owned(), "/et".to_owned())
        ]
    );
    let nobody = FimQuery {
        agent_id: Some("nobody".to_owned()),
        ..all()
    };
    assert!(reader.fim_changes(&nobody).unwrap().is_empty());
    // Every field comes back.
    let listed = reader.fim_changes(&all()).unwrap();
    assert_eq!(listed[0].event, Event::Fim(t[0].clone()));
}

#[test]
fn fim_verify_passes_an_intact_trail_and_finds_a_row_edited_after_storage() {
    let (_dir, store) = open();
    let t = trail(2500);
    for (i, chunk) in t.chunks(700).enumerate() {
        commit(&store, &[batch("a", 1, i as u64, fims(chunk))]);
    }
    let reader = SqliteReader::open(store.path()).unwrap();
    let report = reader.verify_trail("a").unwrap().unwrap();
    assert_eq!(
        (report.events, report.first_seq, report.starts_late),
        (2500, Some(1), false)
    );
    assert_eq!(report.breaks, []);
    assert_eq!(reader.verify_trail("nobody").unwrap(), None);

    // Someone with access to the database rewrites where a change happened.
    Connection::open(store.path())
        .unwrap()
        .execute(
            "UPDATE fim_events SET path = '/tmp/harmless' WHERE seq = 1234",
            [],
        )
        .unwrap();
    let report = reader.verify_trail("a").unwrap().unwrap();
    let found: Vec<_> = report
        .breaks
        .iter()
        .map(|(b, path)| (b.kind, b.seq, path.as_str()))
        .collect();
    assert_eq!(found, [(BreakKind::Edit, 1234, "/tmp/harmless")]);
    // It arrived intact: nothing was recorded on ingest.
    assert_eq!(reader.recorded_trail_breaks("a").unwrap(), 0);

    // A row deleted leaves a gap.
    Connection::open(store.path())
        .unwrap()
        .execute("DELETE FROM fim_events WHERE seq = 2000", [])
        .unwrap();
    let kinds: Vec<_> = reader
        .verify_trail("a")
        .unwrap()
        .unwrap()
        .breaks
        .iter()
        .map(|(b, _)| (b.kind, b.seq))
        .collect();
    assert_eq!(kinds, [(BreakKind::Edit, 1234), (BreakKind::Gap, 2001)]);
}

#[test]
fn fim_verify_starts_from_the_first_event_retention_left() {
    let (_dir, store) = open();
    let t = trail(6);
    let day = secs(86_400);
    let mut old = batch("a", 1, 1, fims(&t[..3]));
    old.received_ns = T0;
    let mut new = batch("a", 1, 2, fims(&t[3..]));
    new.received_ns = T0 + 400 * day;
    commit(&store, &[old, new]);
    let report = store
        .enforce_retention(&Retention::default(), T0 + 400 * day)
        .unwrap();
    assert_eq!(report.fim, 3);
    // The aggregator stopped: the reader opens the store on its own.
    let path = store.path().to_owned();
    drop(store);
    let reader = SqliteReader::open(&path).unwrap();
    let report = reader.verify_trail("a").unwrap().unwrap();
    assert_eq!(
        (report.events, report.first_seq, report.starts_late),
        (3, Some(4), true)
    );
    assert_eq!(report.breaks, []);
}

#[test]
fn the_reader_sees_what_a_running_store_commits_and_refuses_other_schemas() {
    let (dir, store) = open();
    let reader = SqliteReader::open(store.path()).unwrap();
    assert!(reader.fim_changes(&all()).unwrap().is_empty());
    commit(&store, &[batch("a", 1, 1, fims(&trail(1)))]);
    assert_eq!(reader.fim_changes(&all()).unwrap().len(), 1);

    let missing = dir.path().join("missing.db");
    let err = SqliteReader::open(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.db"), "{err}");
    assert!(!missing.exists(), "a reader created {}", missing.display());

    let old = dir.path().join("old.db");
    let conn = Connection::open(&old).unwrap();
    conn.execute_batch(crate::store::sqlite::schema::SCHEMA_V1)
        .unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    let err = SqliteReader::open(&old).unwrap_err().to_string();
    assert!(err.contains("schema version 1 is older"), "{err}");
    conn.pragma_update(None, "user_version", 99).unwrap();
    let err = SqliteReader::open(&old).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    drop(store);
}

#[test]
fn a_prefix_bound_is_the_least_text_above_it() {
    assert_eq!(prefix_upper_bound("/etc/").as_deref(), Some("/etc0"));
    assert_eq!(
        prefix_upper_bound("a\u{d7ff}").as_deref(),
        Some("a\u{e000}")
    );
    assert_eq!(prefix_upper_bound("\u{10ffff}"), None);
    assert_eq!(prefix_upper_bound(""), None);
}

#[test]
fn fim_verify_walks_each_part_of_a_reset_trail_on_its_own() {
    let (_dir, store) = open();
    let before = trail(3);
    // The agent's state wiped: a new spool and a new trail from 1.
    let mut after = trail(2);
    let mut previous = outpost_common::event::CHAIN_GENESIS.to_owned();
    for e in &mut after {
        e.path = format!("/after{}", e.seq);
        e.chain = outpost_common::event::chain_hash(&previous, e);
        previous.clone_from(&e.chain);
    }
    commit(&store, &[batch("a", 1, 1, fims(&before))]);
    commit(&store, &[batch("a", 2, 1, fims(&after))]);
    let reader = SqliteReader::open(store.path()).unwrap();
    assert_eq!(reader.recorded_trail_breaks("a").unwrap(), 1);
    let report = reader.verify_trail("a").unwrap().unwrap();
    let found: Vec<_> = report
        .breaks
        .iter()
        .map(|(b, path)| (b.kind, b.seq, path.as_str()))
        .collect();
    assert_eq!(found, [(BreakKind::Reset, 1, "/after1")]);
    assert_eq!(report.events, 5);
}
