//! Tests of the synchronous spool: unit tests of the cap policy and durability, and a model-based
//! property test of random operation sequences.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use outpost_common::event::{Event, LogRecord};
use proptest::prelude::*;
use tempfile::TempDir;

use super::*;

const MAX_BATCH_EVENTS: usize = 4;
const MAX_BATCH_BYTES: usize = 400;
const NOW: i64 = 1_700_000_000_000_000_000;

/// A log event whose `time_ns` carries a unique id, with a body of `body` bytes.
fn event(id: u64, body: usize) -> Event {
    Event::Log(LogRecord {
        time_ns: i64::try_from(id).unwrap(),
        source: "test".to_owned(),
        severity: None,
        body: "x".repeat(body),
        attributes: Vec::new(),
    })
}

fn id_of(event: &Event) -> u64 {
    u64::try_from(event.time_ns()).unwrap()
}

fn ids(batch: &StoredBatch) -> Vec<u64> {
    batch.events().unwrap().iter().map(id_of).collect()
}

fn encoded_size(event: &Event) -> usize {
    wire::encode_events(std::slice::from_ref(event))
        .unwrap()
        .len()
}

/// A small reserve, so that the many spools of these tests write little.
const RESERVE_BYTES: u64 = 64 * 1024;

fn config(path: &Path, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        path: path.to_path_buf(),
        max_bytes,
        max_batch_events: MAX_BATCH_EVENTS,
        max_batch_bytes: MAX_BATCH_BYTES,
        reserve_bytes: RESERVE_BYTES,
        free_space: Arc::new(Statvfs),
        compression: Codec::None,
    }
}

fn db(dir: &TempDir) -> PathBuf {
    dir.path().join("spool.db")
}

fn sub(class: Class, events: Vec<Event>, checkpoint: Option<(&str, &[u8])>) -> Submission {
    Submission {
        events,
        checkpoints: checkpoint
            .map(|(source, value)| Checkpoint::new(source, value))
            .into_iter()
            .collect(),
        state: Vec::new(),
        class,
    }
}

/// `n` events with ids from `first`, each with a 100-byte body.
fn events(first: u64, n: u64) -> Vec<Event> {
    (first..first + n).map(|id| event(id, 100)).collect()
}

fn append_one(spool: &mut Spool, sub: Submission) -> SubmitOutcome {
    let outcomes = spool.append(vec![sub], NOW).unwrap();
    assert_eq!(outcomes.len(), 1);
    outcomes[0]
}

/// Copies the database and its write-ahead log as they are on disk now, without closing the
/// spool: what a power cut would leave behind.
fn crash_image(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let wal = |p: &Path| PathBuf::from(format!("{}-wal", p.display()));
    if wal(from).exists() {
        std::fs::copy(wal(from), wal(to)).unwrap();
    }
}

#[test]
fn a_new_spool_starts_at_seq_one_and_keeps_its_id() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 10_000)).unwrap();
    let stats = spool.stats();
    assert_eq!(
        (stats.next_seq, stats.low_water_seq, stats.batches),
        (1, 1, 0)
    );
    assert_ne!(spool.spool_id(), 0);
    let id = spool.spool_id();
    append_one(&mut spool, sub(Class::Wait, events(1, 1), None));
    drop(spool);

    let spool = Spool::open(config(&db(&dir), 10_000)).unwrap();
    assert_eq!(spool.spool_id(), id);
    assert_eq!(spool.stats().next_seq, 2);
    assert_eq!(spool.stats().low_water_seq, 1);
    assert!(spool.stats().file_bytes > 0);
}

#[test]
fn events_are_packed_within_the_limits_and_classes_never_mix() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    let subs = vec![
        sub(Class::Wait, events(1, 6), Some(("a", b"1"))),
        sub(Class::Drop, events(100, 3), None),
        sub(Class::Wait, events(10, 3), Some(("a", b"2"))),
    ];
    let outcomes = spool.append(subs, NOW).unwrap();
    assert_eq!(
        outcomes,
        [
            SubmitOutcome::Committed { events: 6 },
            SubmitOutcome::Committed { events: 3 },
            SubmitOutcome::Committed { events: 3 },
        ]
    );
    let batches = spool.peek();
    let seqs: Vec<u64> = batches.iter().map(|(b, _)| b.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let mut wait_ids = Vec::new();
    let mut drop_ids = Vec::new();
    for (batch, class) in &batches {
        let batch_ids = ids(batch);
        assert!(batch_ids.len() <= MAX_BATCH_EVENTS, "{batch_ids:?}");
        assert!(batch.payload.len() <= MAX_BATCH_BYTES);
        assert_eq!(batch.events as usize, batch_ids.len());
        assert_eq!(batch.created_ns, NOW);
        let (mine, theirs) = match class {
            Class::Wait => (&mut wait_ids, 1..100),
            Class::Drop => (&mut drop_ids, 100..200),
        };
        assert!(
            batch_ids.iter().all(|id| theirs.contains(id)),
            "{batch_ids:?}"
        );
        mine.extend(batch_ids);
    }
    assert_eq!(wait_ids, [1, 2, 3, 4, 5, 6, 10, 11, 12]);
    assert_eq!(drop_ids, [100, 101, 102]);
    assert_eq!(spool.checkpoint("a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(spool.stats().events, 12);
    let decoded = batches[0].0.events().unwrap();
    assert_eq!(
        decoded,
        events(1, 3)
            .into_iter()
            .take(decoded.len())
            .collect::<Vec<_>>()
    );
}

#[test]
fn an_oversized_event_is_counted_and_the_rest_commits() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    let huge = event(2, MAX_BATCH_BYTES);
    assert!(encoded_size(&huge) > MAX_BATCH_BYTES);
    let outcome = append_one(
        &mut spool,
        sub(
            Class::Wait,
            vec![event(1, 10), huge, event(3, 10)],
            Some(("a", b"x")),
        ),
    );
    assert_eq!(outcome, SubmitOutcome::Committed { events: 2 });
    assert_eq!(spool.stats().drops.oversized, 1);
    assert_eq!(ids(&spool.peek()[0].0), [1, 3]);
    assert_eq!(spool.checkpoint("a").unwrap(), Some(b"x".to_vec()));
}

#[test]
fn a_full_wait_submission_writes_nothing_and_commits_after_an_ack() {
    let dir = TempDir::new().unwrap();
    let one = encoded_size(&event(1, 100)) as u64;
    let mut spool = Spool::open(config(&db(&dir), 3 * one)).unwrap();
    let first = append_one(
        &mut spool,
        sub(Class::Wait, events(1, 2), Some(("a", b"1"))),
    );
    assert_eq!(first, SubmitOutcome::Committed { events: 2 });
    let before = spool.stats();

    let late = sub(
        Class::Wait,
        vec![event(3, 100), event(4, 100), event(5, MAX_BATCH_BYTES)],
        Some(("a", b"2")),
    );
    assert_eq!(append_one(&mut spool, late.clone()), SubmitOutcome::Full);
    assert_eq!(spool.stats(), before, "a full submission counts nothing");
    assert_eq!(spool.checkpoint("a").unwrap(), Some(b"1".to_vec()));

    let seqs: Vec<u64> = spool
        .batches_after(0, 10)
        .unwrap()
        .iter()
        .map(|b| b.seq)
        .collect();
    spool.ack(&seqs).unwrap();
    assert_eq!(
        append_one(&mut spool, late),
        SubmitOutcome::Committed { events: 2 }
    );
    assert_eq!(spool.checkpoint("a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(spool.stats().drops.oversized, 1);
}

#[test]
fn a_wait_submission_larger_than_the_cap_enters_an_empty_spool() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 10)).unwrap();
    let outcome = append_one(&mut spool, sub(Class::Wait, events(1, 3), None));
    assert_eq!(outcome, SubmitOutcome::Committed { events: 3 });
    assert!(spool.stats().payload_bytes > 10);
    assert_eq!(
        append_one(&mut spool, sub(Class::Wait, events(4, 1), None)),
        SubmitOutcome::Full
    );
    assert_eq!(
        append_one(&mut spool, sub(Class::Wait, Vec::new(), Some(("a", b"0")))),
        SubmitOutcome::Committed { events: 0 },
        "a submission without events always fits"
    );
}

#[test]
fn a_drop_submission_evicts_the_oldest_batches_never_handed_out() {
    let dir = TempDir::new().unwrap();
    let one = encoded_size(&event(1, 100)) as u64;
    let mut spool = Spool::open(config(&db(&dir), 3 * one)).unwrap();
    for id in 1..=3 {
        append_one(&mut spool, sub(Class::Drop, events(id, 1), None));
    }
    let handed_out = spool.batches_after(0, 1).unwrap();
    assert_eq!(handed_out[0].seq, 1);

    let outcome = append_one(
        &mut spool,
        sub(Class::Drop, events(4, 1), Some(("m", b"4"))),
    );
    assert_eq!(outcome, SubmitOutcome::Committed { events: 1 });
    let left: Vec<u64> = spool.peek().iter().flat_map(|(b, _)| ids(b)).collect();
    assert_eq!(left, [1, 3, 4], "batch 2 is the oldest never handed out");
    assert_eq!(spool.stats().drops.spool_full_evicted, 1);
    assert_eq!(spool.checkpoint("m").unwrap(), Some(b"4".to_vec()));
    assert!(spool.stats().payload_bytes <= 3 * one);
}

#[test]
fn a_drop_submission_that_cannot_fit_is_refused_without_evicting() {
    let dir = TempDir::new().unwrap();
    let one = encoded_size(&event(1, 100)) as u64;
    let mut spool = Spool::open(config(&db(&dir), 3 * one)).unwrap();
    append_one(&mut spool, sub(Class::Wait, events(1, 2), None));
    append_one(&mut spool, sub(Class::Drop, events(3, 1), None));

    let outcome = append_one(
        &mut spool,
        sub(Class::Drop, events(4, 2), Some(("m", b"x"))),
    );
    assert_eq!(outcome, SubmitOutcome::Rejected { events: 2 });
    let stats = spool.stats();
    assert_eq!(stats.drops.spool_full_rejected, 2);
    assert_eq!(
        stats.drops.spool_full_evicted, 0,
        "evicting one would not have made room"
    );
    assert_eq!(stats.events, 3);
    assert_eq!(spool.checkpoint("m").unwrap(), Some(b"x".to_vec()));
}

#[test]
fn batches_present_at_open_are_never_evicted() {
    let dir = TempDir::new().unwrap();
    let one = encoded_size(&event(1, 100)) as u64;
    let mut spool = Spool::open(config(&db(&dir), one)).unwrap();
    append_one(&mut spool, sub(Class::Drop, events(1, 1), None));
    drop(spool);

    let mut spool = Spool::open(config(&db(&dir), one)).unwrap();
    let outcome = append_one(&mut spool, sub(Class::Drop, events(2, 1), None));
    assert_eq!(outcome, SubmitOutcome::Rejected { events: 1 });
    assert_eq!(ids(&spool.peek()[0].0), [1]);
}

#[test]
fn a_seq_is_never_reused_after_everything_was_acked_and_the_spool_reopened() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    append_one(&mut spool, sub(Class::Wait, events(1, 6), None));
    let seqs: Vec<u64> = spool.peek().iter().map(|(b, _)| b.seq).collect();
    assert_eq!(seqs, [1, 2]);
    spool.ack(&seqs).unwrap();
    spool.ack(&[99]).unwrap();
    assert_eq!(
        spool.stats().low_water_seq,
        3,
        "empty: low water is next_seq"
    );
    drop(spool);

    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    assert_eq!(spool.stats().batches, 0);
    append_one(&mut spool, sub(Class::Wait, events(7, 1), None));
    assert_eq!(spool.peek()[0].0.seq, 3);
    assert_eq!(spool.stats().low_water_seq, 3);
}

#[test]
fn dropped_batches_are_counted_and_the_count_survives_a_reopen() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    append_one(&mut spool, sub(Class::Wait, events(1, 3), None));
    spool
        .drop_batch(1, DropReason::RejectedByAggregator)
        .unwrap();
    spool
        .drop_batch(42, DropReason::RejectedByAggregator)
        .unwrap();
    assert_eq!(spool.stats().drops.rejected_by_aggregator, 3);
    assert_eq!(spool.stats().events, 0);
    drop(spool);
    let spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    assert_eq!(spool.stats().drops.rejected_by_aggregator, 3);
    assert_eq!(spool.stats().low_water_seq, 2);
}

#[test]
fn appends_committed_before_a_crash_are_all_there() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    for round in 0..5u64 {
        let value = round.to_be_bytes();
        append_one(
            &mut spool,
            sub(Class::Wait, events(round * 10, 3), Some(("log", &value))),
        );
    }
    spool
        .drop_batch(1, DropReason::RejectedByAggregator)
        .unwrap();
    let expected = spool.peek();
    let stats = spool.stats();

    let image = dir.path().join("crashed.db");
    crash_image(&db(&dir), &image);
    let mut recovered = Spool::open(config(&image, 100_000)).unwrap();
    assert_eq!(recovered.peek(), expected);
    assert_eq!(
        recovered.checkpoint("log").unwrap(),
        Some(4u64.to_be_bytes().to_vec())
    );
    let after = recovered.stats();
    assert_eq!(
        (
            after.spool_id,
            after.next_seq,
            after.events,
            after.drops,
            after.low_water_seq
        ),
        (
            stats.spool_id,
            stats.next_seq,
            stats.events,
            stats.drops,
            stats.low_water_seq
        )
    );
    append_one(&mut recovered, sub(Class::Wait, events(99, 1), None));
    assert_eq!(recovered.peek().last().unwrap().0.seq, stats.next_seq);
}

#[test]
fn a_failed_transaction_leaves_the_spool_as_it_was() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    let one = encoded_size(&event(1, 100)) as u64;
    let mut spool = Spool::open(config(&path, 110 * one)).unwrap();
    append_one(
        &mut spool,
        sub(Class::Drop, events(1, 20), Some(("m", b"1"))),
    );
    let before = spool.stats();
    let batches = spool.peek();

    // Simulate a full disk: the file may not grow by another page.
    let pages: i64 = spool
        .conn
        .pragma_query_value(None, "page_count", |row| row.get(0))
        .unwrap();
    spool
        .conn
        .pragma_update(None, "max_page_count", pages)
        .unwrap();
    let big = sub(Class::Drop, events(100, 100), Some(("m", b"2")));
    let err = spool.append(vec![big.clone()], NOW).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", path.display())),
        "{err}"
    );
    assert!(matches!(err, SpoolError::Sqlite { .. }), "{err:?}");
    // A Wait-class source keeps its events and retries: nothing is counted as lost.
    let wait = sub(Class::Wait, events(300, 50), Some(("w", b"1")));
    spool.append(vec![wait], NOW).unwrap_err();
    assert_eq!(spool.stats().next_seq, before.next_seq);
    // The droppable samples are given up, and counted: the disk (so SQLite says) is full.
    let mut lost = before.drops.clone();
    lost.add(DropReason::DiskFull, 100);
    assert_eq!(spool.trouble().map(|t| t.kind), Some(TroubleKind::DiskFull));
    assert_eq!(
        (spool.stats().events, spool.stats().drops.clone()),
        (before.events, lost)
    );
    assert_eq!(spool.peek(), batches);
    assert_eq!(spool.checkpoint("m").unwrap(), Some(b"1".to_vec()));
    assert!(batches.iter().all(|(b, _)| spool.evictable.contains(b.seq)));

    spool
        .conn
        .pragma_update(None, "max_page_count", 1_000_000)
        .unwrap();
    assert_eq!(
        append_one(&mut spool, big),
        SubmitOutcome::Committed { events: 100 }
    );
    let old_left: Vec<(StoredBatch, Class)> = spool
        .peek()
        .into_iter()
        .filter(|(b, _)| b.seq < before.next_seq)
        .collect();
    assert!(old_left.len() < batches.len(), "room was made by evicting");
    assert_eq!(
        old_left,
        batches[batches.len() - old_left.len()..],
        "the oldest went first"
    );
    let left_events: u64 = old_left.iter().map(|(b, _)| u64::from(b.events)).sum();
    assert_eq!(spool.stats().drops.spool_full_evicted, 20 - left_events);
    // The count of the failed write was saved with the next transaction.
    let drops = spool.stats().drops.clone();
    drop(spool);
    let spool = Spool::open(config(&path, 110 * one)).unwrap();
    assert_eq!(spool.stats().drops, drops);
    assert_eq!(drops.disk_full, 100);
}

#[test]
fn a_spool_of_the_first_schema_is_migrated_and_keeps_its_data() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    {
        let mut spool = Spool::open(config(&path, 100_000)).unwrap();
        append_one(
            &mut spool,
            sub(Class::Wait, events(1, 3), Some(("a", b"7"))),
        );
    }
    // Take the file back to version 1: the table without the newest counter.
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE old AS SELECT id, spool_id, next_seq, spool_full_evicted,
                 spool_full_rejected, rejected_by_aggregator, oversized FROM spool;
             DROP TABLE spool;
             ALTER TABLE old RENAME TO spool;
             DROP TABLE source_state;
             ALTER TABLE batches DROP COLUMN codec;
             ALTER TABLE batches DROP COLUMN raw_bytes;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let mut spool = Spool::open(config(&path, 100_000)).unwrap();
    assert_eq!(spool.stats().events, 3);
    assert_eq!(spool.stats().drops, DropCounters::default());
    assert_eq!(spool.checkpoint("a").unwrap(), Some(b"7".to_vec()));
    assert_eq!(
        append_one(&mut spool, sub(Class::Wait, events(4, 1), None)),
        SubmitOutcome::Committed { events: 1 }
    );
    drop(spool);
    let version: i64 = Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(
        Spool::open(config(&path, 100_000)).unwrap().stats().events,
        4
    );
}

#[test]
fn one_submission_commits_many_checkpoints_and_state_changes_with_its_events() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    let put = |key: &[u8], value: &[u8]| StateChange::Put {
        source: "fim".to_owned(),
        key: key.to_vec(),
        value: value.to_vec(),
    };
    let first = Submission {
        events: events(1, 2),
        checkpoints: vec![Checkpoint::new("x", *b"1"), Checkpoint::new("y", *b"1")],
        state: vec![
            put(b"/etc/a", b"A1"),
            put(b"/etc/b", b"B1"),
            put(b"/etc/c", b"C1"),
        ],
        class: Class::Wait,
    };
    assert_eq!(
        append_one(&mut spool, first),
        SubmitOutcome::Committed { events: 2 }
    );
    let second = Submission {
        events: events(3, 1),
        checkpoints: vec![Checkpoint::new("x", *b"2"), Checkpoint::new("x", *b"3")],
        state: vec![
            put(b"/etc/a", b"A2"),
            StateChange::Delete {
                source: "fim".to_owned(),
                key: b"/etc/b".to_vec(),
            },
            StateChange::Delete {
                source: "fim".to_owned(),
                key: b"/etc/missing".to_vec(),
            },
        ],
        class: Class::Wait,
    };
    append_one(&mut spool, second);
    drop(spool);

    let spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    assert_eq!(spool.checkpoint("x").unwrap(), Some(b"3".to_vec()));
    assert_eq!(spool.checkpoint("y").unwrap(), Some(b"1".to_vec()));
    assert_eq!(spool.state("fim", b"/etc/a").unwrap(), Some(b"A2".to_vec()));
    assert_eq!(spool.state("fim", b"/etc/b").unwrap(), None);
    assert_eq!(spool.state("other", b"/etc/a").unwrap(), None);
    let page = spool.state_page("fim", None, 1).unwrap();
    assert_eq!(page, [(b"/etc/a".to_vec(), b"A2".to_vec())]);
    let rest = spool.state_page("fim", Some(b"/etc/a"), 10).unwrap();
    assert_eq!(rest, [(b"/etc/c".to_vec(), b"C1".to_vec())]);
}

#[test]
fn a_full_wait_submission_leaves_its_state_changes_unwritten() {
    let dir = TempDir::new().unwrap();
    let one = encoded_size(&event(1, 100)) as u64;
    let mut spool = Spool::open(config(&db(&dir), 2 * one)).unwrap();
    append_one(&mut spool, sub(Class::Wait, events(1, 2), None));
    let late = Submission {
        events: events(3, 1),
        state: vec![StateChange::Put {
            source: "fim".to_owned(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }],
        ..Submission::default()
    };
    assert_eq!(append_one(&mut spool, late), SubmitOutcome::Full);
    assert_eq!(spool.state("fim", b"k").unwrap(), None);
}

#[test]
fn errors_name_the_file() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = Spool::open(config(&path, 1)).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", path.display())),
        "{err}"
    );

    let mut bad = config(&dir.path().join("other.db"), 1);
    bad.max_batch_events = 0;
    let err = Spool::open(bad).unwrap_err();
    assert!(err.to_string().contains("max_batch_events"), "{err}");
}

/// The seqs, classes, event ids and creation times of every stored batch, checking each batch's
/// count and payload against the spool's accounting.
fn contents(spool: &Spool) -> Vec<(u64, Class, Vec<u64>, i64)> {
    let batches = spool.peek();
    let stats = spool.stats();
    let payload: u64 = batches.iter().map(|(b, _)| b.payload.len() as u64).sum();
    let events: u64 = batches.iter().map(|(b, _)| u64::from(b.events)).sum();
    assert_eq!(
        (stats.payload_bytes, stats.events, stats.batches),
        (payload, events, batches.len() as u64),
        "accounting"
    );
    let oldest = batches.first().map(|(b, _)| b.seq);
    assert_eq!(stats.low_water_seq, oldest.unwrap_or(stats.next_seq));
    batches
        .iter()
        .map(|(b, class)| {
            assert_eq!(b.events as usize, ids(b).len());
            (b.seq, *class, ids(b), b.created_ns)
        })
        .collect()
}

#[test]
fn a_split_batch_keeps_its_events_in_order_within_the_new_limits() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    let small: Vec<Event> = (1..=8).map(|id| event(id, 50)).collect();
    let size = encoded_size(&small[0]);
    assert!(4 * size <= MAX_BATCH_BYTES);
    spool
        .append(vec![sub(Class::Wait, small, None)], NOW + 5)
        .unwrap();
    assert_eq!(
        contents(&spool),
        [
            (1, Class::Wait, vec![1, 2, 3, 4], NOW + 5),
            (2, Class::Wait, vec![5, 6, 7, 8], NOW + 5),
        ]
    );
    let payload_before = spool.stats().payload_bytes;

    assert_eq!(spool.split_batch(1, 3, usize::MAX).unwrap(), [3, 4]);
    assert_eq!(
        contents(&spool),
        [
            (2, Class::Wait, vec![5, 6, 7, 8], NOW + 5),
            (3, Class::Wait, vec![1, 2, 3], NOW + 5),
            (4, Class::Wait, vec![4], NOW + 5),
        ]
    );
    let stats = spool.stats();
    assert_eq!((stats.next_seq, stats.low_water_seq), (5, 2));
    assert!(
        stats.payload_bytes > payload_before,
        "each new batch carries its own count"
    );

    // The byte limit: two events fit, a third does not.
    let seqs = spool.split_batch(2, 100, 2 * size + 1).unwrap();
    assert_eq!(seqs, [5, 6]);
    let after = contents(&spool);
    assert_eq!(
        after
            .iter()
            .map(|(seq, _, ids, _)| (*seq, ids.clone()))
            .collect::<Vec<_>>(),
        [
            (3, vec![1, 2, 3]),
            (4, vec![4]),
            (5, vec![5, 6]),
            (6, vec![7, 8])
        ]
    );
    assert!(
        spool
            .peek()
            .iter()
            .filter(|(b, _)| b.seq >= 5)
            .all(|(b, _)| b.payload.len() <= 2 * size + 1)
    );
    let stats = spool.stats();
    assert_eq!((stats.next_seq, stats.low_water_seq), (7, 3));
    assert_eq!(stats.drops.total(), 0);

    // Unknown seqs change nothing.
    assert_eq!(spool.split_batch(2, 1, 1).unwrap(), Vec::<u64>::new());
    assert_eq!(spool.split_batch(0, 1, 1).unwrap(), Vec::<u64>::new());
    assert_eq!(spool.stats(), stats);

    // All of it is on disk, and seqs keep counting from there.
    drop(spool);
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    assert_eq!(contents(&spool), after);
    assert_eq!(
        SpoolStats {
            file_bytes: 0,
            ..spool.stats()
        },
        SpoolStats {
            file_bytes: 0,
            ..stats
        }
    );
    append_one(&mut spool, sub(Class::Wait, events(9, 1), None));
    assert_eq!(spool.peek().last().unwrap().0.seq, 7);
}

#[test]
fn a_split_drops_an_event_too_large_on_its_own_and_counts_it() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    let batch = vec![event(1, 10), event(2, 200), event(3, 10)];
    let limit = encoded_size(&batch[1]) - 1;
    assert!(2 * encoded_size(&batch[0]) <= limit);
    append_one(&mut spool, sub(Class::Drop, batch, None));

    assert_eq!(spool.split_batch(1, 4, limit).unwrap(), [2]);
    assert_eq!(contents(&spool), [(2, Class::Drop, vec![1, 3], NOW)]);
    assert_eq!(spool.stats().drops.oversized, 1);
    assert_eq!(spool.stats().events, 2);
    drop(spool);
    let spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    assert_eq!(spool.stats().drops.oversized, 1);
    assert_eq!(contents(&spool), [(2, Class::Drop, vec![1, 3], NOW)]);
}

#[test]
fn a_split_of_only_oversized_events_leaves_no_batch() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    append_one(&mut spool, sub(Class::Wait, events(1, 3), None));
    append_one(&mut spool, sub(Class::Wait, events(4, 1), None));
    assert_eq!(spool.split_batch(1, 4, 10).unwrap(), Vec::<u64>::new());
    assert_eq!(contents(&spool), [(2, Class::Wait, vec![4], NOW)]);
    let stats = spool.stats();
    assert_eq!((stats.drops.oversized, stats.low_water_seq), (3, 2));
    assert_eq!(stats.next_seq, 3, "no seq was taken");
}

#[test]
fn split_batches_are_evictable_only_if_the_original_was() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    append_one(&mut spool, sub(Class::Drop, events(1, 2), None));
    append_one(&mut spool, sub(Class::Wait, events(3, 2), None));
    assert!(spool.evictable.contains(1));

    // Never handed out: its parts may go as it could have.
    assert_eq!(spool.split_batch(1, 1, usize::MAX).unwrap(), [3, 4]);
    assert!(!spool.evictable.contains(1));
    assert!(spool.evictable.contains(3) && spool.evictable.contains(4));

    // Handed out: possibly delivered, so neither it nor its parts are ever evicted.
    let handed: Vec<u64> = spool
        .batches_after(2, 1)
        .unwrap()
        .iter()
        .map(|b| b.seq)
        .collect();
    assert_eq!(handed, [3]);
    assert_eq!(spool.split_batch(3, 1, usize::MAX).unwrap(), [5]);
    assert!(!spool.evictable.contains(5));
    assert!(spool.evictable.contains(4));

    // Wait-class data is never evictable.
    assert_eq!(spool.split_batch(2, 1, usize::MAX).unwrap(), [6, 7]);
    assert!(!spool.evictable.contains(6) && !spool.evictable.contains(7));
}

#[test]
fn an_undecodable_batch_is_dropped_as_oversized_when_split() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    append_one(&mut spool, sub(Class::Wait, events(1, 3), None));
    append_one(&mut spool, sub(Class::Wait, events(4, 1), None));
    // Same length, so the spool's byte count stays true; 0xff starts no valid length.
    let garbage = vec![0xff_u8; spool.peek()[0].0.payload.len()];
    spool
        .conn
        .execute("UPDATE batches SET payload = ?1 WHERE seq = 1", [garbage])
        .unwrap();
    assert!(wire::decode_events(&spool.peek()[0].0.payload).is_err());

    assert_eq!(
        spool.split_batch(1, 1, usize::MAX).unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(contents(&spool), [(2, Class::Wait, vec![4], NOW)]);
    assert_eq!(spool.stats().drops.oversized, 3);
    drop(spool);
    let spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    assert_eq!(spool.stats().drops.oversized, 3);
}

#[test]
fn batch_limits_lower_packing_and_can_be_restored() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 100_000)).unwrap();
    let counts = |spool: &Spool, from: u64| -> Vec<usize> {
        spool
            .peek()
            .iter()
            .filter(|(b, _)| b.seq >= from)
            .map(|(b, _)| ids(b).len())
            .collect()
    };
    spool.set_batch_limits(2, usize::MAX);
    append_one(&mut spool, sub(Class::Wait, events(1, 5), None));
    assert_eq!(counts(&spool, 1), [2, 2, 1]);

    // Never above the configured limits.
    spool.set_batch_limits(usize::MAX, usize::MAX);
    let small: Vec<Event> = (10..16).map(|id| event(id, 10)).collect();
    append_one(&mut spool, sub(Class::Wait, small, None));
    assert_eq!(counts(&spool, 4), [MAX_BATCH_EVENTS, 2]);

    // A lower byte limit packs fewer events, and an event over it is oversized.
    let size = encoded_size(&event(1, 50));
    spool.set_batch_limits(MAX_BATCH_EVENTS, size);
    let mixed = vec![event(20, 50), event(21, 50), event(22, 100)];
    let outcome = append_one(&mut spool, sub(Class::Wait, mixed, None));
    assert_eq!(outcome, SubmitOutcome::Committed { events: 2 });
    assert_eq!(counts(&spool, 6), [1, 1]);
    assert_eq!(spool.stats().drops.oversized, 1);

    // Zero is taken as one.
    spool.set_batch_limits(0, usize::MAX);
    append_one(&mut spool, sub(Class::Wait, events(30, 2), None));
    assert_eq!(counts(&spool, 8), [1, 1]);
}

// ---------------------------------------------------------------------------------------------
// Model-based property test.

const MODEL_CAP: u64 = 1500;
const SOURCES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
struct SubSpec {
    class: Class,
    bodies: Vec<usize>,
    checkpoint: Option<usize>,
    /// A row of source `a`'s keyed state to put (true) or delete (false).
    state: Option<(u8, bool)>,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<SubSpec>),
    BatchesAfter {
        after: prop::sample::Index,
        limit: usize,
    },
    Ack(Vec<prop::sample::Index>),
    DropBatch(prop::sample::Index),
    /// Splits a batch to these limits, as the shipper does when the aggregator's are lower.
    Split {
        pick: prop::sample::Index,
        max_events: usize,
        max_bytes: usize,
    },
    Reopen,
    Crash,
}

fn arb_sub() -> impl Strategy<Value = SubSpec> {
    let class = prop_oneof![Just(Class::Wait), Just(Class::Drop)];
    let body = prop_oneof![9 => 0usize..150, 1 => Just(MAX_BATCH_BYTES)];
    (
        class,
        prop::collection::vec(body, 0..8),
        prop::option::of(0..SOURCES.len()),
        prop::option::of((0u8..4, any::<bool>())),
    )
        .prop_map(|(class, bodies, checkpoint, state)| SubSpec {
            class,
            bodies,
            checkpoint,
            state,
        })
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(arb_sub(), 1..4).prop_map(Op::Append),
        2 => (any::<prop::sample::Index>(), 1usize..6)
            .prop_map(|(after, limit)| Op::BatchesAfter { after, limit }),
        2 => prop::collection::vec(any::<prop::sample::Index>(), 0..4).prop_map(Op::Ack),
        1 => any::<prop::sample::Index>().prop_map(Op::DropBatch),
        2 => (
            any::<prop::sample::Index>(),
            1usize..6,
            prop_oneof![1 => 0usize..80, 3 => 80usize..MAX_BATCH_BYTES + 50],
        )
            .prop_map(|(pick, max_events, max_bytes)| Op::Split {
                pick,
                max_events,
                max_bytes,
            }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

/// What the spool should hold, kept independently of the spool's own bookkeeping.
#[derive(Debug, Default)]
struct Model {
    next_id: u64,
    /// The highest seq ever seen; new batches must come above it.
    max_seq: u64,
    /// seq -> (class, event ids): the unacknowledged batches.
    batches: BTreeMap<u64, (Class, Vec<u64>)>,
    /// Event id -> its encoded size on its own.
    sizes: BTreeMap<u64, usize>,
    /// Seqs written since the spool was (re)opened.
    session: BTreeSet<u64>,
    /// Seqs handed out by `batches_after` since the spool was (re)opened.
    handed_out: BTreeSet<u64>,
    checkpoints: BTreeMap<String, Vec<u8>>,
    /// Source `a`'s keyed state.
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    drops: DropCounters,
    accepted: u64,
    acked: u64,
    /// Accepted events a split dropped as oversized.
    split_dropped: u64,
    checkpoint_version: u64,
}

impl Model {
    fn events(&self) -> u64 {
        self.batches.values().map(|(_, ids)| ids.len() as u64).sum()
    }

    /// Drop-class batches that may be evicted, oldest first.
    fn evictable(&self) -> Vec<u64> {
        self.batches
            .iter()
            .filter(|(seq, (class, _))| {
                *class == Class::Drop
                    && self.session.contains(seq)
                    && !self.handed_out.contains(seq)
            })
            .map(|(&seq, _)| seq)
            .collect()
    }

    fn pick(&self, index: &prop::sample::Index) -> u64 {
        let seqs: Vec<u64> = self.batches.keys().copied().collect();
        if seqs.is_empty() {
            self.max_seq + 1
        } else {
            seqs[index.index(seqs.len())]
        }
    }

    fn reopened(&mut self) {
        self.session.clear();
        self.handed_out.clear();
    }
}

fn model_append(spool: &mut Spool, model: &mut Model, specs: &[SubSpec]) {
    struct Expect {
        class: Class,
        kept: Vec<u64>,
        oversized: u64,
        checkpoint: Option<Checkpoint>,
        state: Vec<StateChange>,
    }
    let mut subs = Vec::new();
    let mut expects = Vec::new();
    for spec in specs {
        let mut kept = Vec::new();
        let mut events = Vec::new();
        for &body in &spec.bodies {
            model.next_id += 1;
            let e = event(model.next_id, body);
            let size = encoded_size(&e);
            if size <= MAX_BATCH_BYTES {
                kept.push(model.next_id);
            }
            model.sizes.insert(model.next_id, size);
            events.push(e);
        }
        model.checkpoint_version += 1;
        let checkpoint = spec.checkpoint.map(|i| Checkpoint {
            source: SOURCES[i].to_owned(),
            value: model.checkpoint_version.to_be_bytes().to_vec(),
        });
        let state: Vec<StateChange> = spec
            .state
            .map(|(key, put)| {
                let (source, key) = ("a".to_owned(), vec![key]);
                if put {
                    let value = model.checkpoint_version.to_be_bytes().to_vec();
                    StateChange::Put { source, key, value }
                } else {
                    StateChange::Delete { source, key }
                }
            })
            .into_iter()
            .collect();
        expects.push(Expect {
            class: spec.class,
            oversized: (events.len() - kept.len()) as u64,
            kept,
            checkpoint: checkpoint.clone(),
            state: state.clone(),
        });
        subs.push(Submission {
            events,
            checkpoints: checkpoint.into_iter().collect(),
            state,
            class: spec.class,
        });
    }
    let bytes_before = spool.stats().payload_bytes;
    let was_empty = model.batches.is_empty();
    let evictable = model.evictable();

    // A distinct creation time per append, so a split can be seen to keep it.
    let now = NOW + i64::try_from(model.next_id).unwrap();
    let outcomes = spool.append(subs, now).unwrap();
    assert_eq!(outcomes.len(), specs.len());

    let after: BTreeMap<u64, (Class, Vec<u64>)> = spool
        .peek()
        .into_iter()
        .map(|(batch, class)| {
            assert!(batch.payload.len() <= MAX_BATCH_BYTES);
            assert!((batch.events as usize) <= MAX_BATCH_EVENTS);
            (batch.seq, (class, ids(&batch)))
        })
        .collect();

    // Evicted batches: the oldest evictable ones, never one handed out or present at open.
    let removed: Vec<u64> = model
        .batches
        .keys()
        .filter(|seq| !after.contains_key(seq))
        .copied()
        .collect();
    assert_eq!(removed, evictable[..removed.len()], "eviction order");
    for seq in &removed {
        let (_, ids) = model.batches.remove(seq).unwrap();
        model
            .drops
            .add(DropReason::SpoolFullEvicted, ids.len() as u64);
    }

    let mut expected_ids: BTreeMap<u64, Class> = BTreeMap::new();
    for (expect, outcome) in expects.into_iter().zip(outcomes) {
        match outcome {
            SubmitOutcome::Full => {
                assert_eq!(
                    expect.class,
                    Class::Wait,
                    "only Wait-class submissions wait"
                );
                assert!(
                    !was_empty || !expected_ids.is_empty(),
                    "an empty spool takes any Wait-class submission"
                );
                continue;
            }
            SubmitOutcome::Committed { events } => {
                assert_eq!(events, expect.kept.len() as u64);
                model.accepted += events;
                expected_ids.extend(expect.kept.iter().map(|&id| (id, expect.class)));
            }
            SubmitOutcome::Rejected { events } => {
                assert_eq!(
                    expect.class,
                    Class::Drop,
                    "only Drop-class submissions are refused"
                );
                assert_eq!(events, expect.kept.len() as u64);
                model.drops.add(DropReason::SpoolFullRejected, events);
            }
        }
        model.drops.add(DropReason::Oversized, expect.oversized);
        if let Some(cp) = expect.checkpoint {
            model.checkpoints.insert(cp.source, cp.value);
        }
        for change in expect.state {
            match change {
                StateChange::Put { key, value, .. } => model.state.insert(key, value),
                StateChange::Delete { key, .. } => model.state.remove(&key),
            };
        }
    }

    // New batches: above every seq ever seen, holding exactly the accepted events, one class each.
    let mut got_ids: BTreeMap<u64, Class> = BTreeMap::new();
    for (&seq, (class, ids)) in after.range(model.max_seq + 1..) {
        for id in ids {
            assert_eq!(
                expected_ids.get(id),
                Some(class),
                "event {id} in batch {seq}"
            );
            got_ids.insert(*id, *class);
        }
        model.batches.insert(seq, (*class, ids.clone()));
        model.session.insert(seq);
    }
    assert_eq!(got_ids, expected_ids);
    if let Some(&newest) = after.keys().next_back() {
        model.max_seq = model.max_seq.max(newest);
    }

    let bytes_after = spool.stats().payload_bytes;
    assert!(
        bytes_after <= MODEL_CAP || bytes_after <= bytes_before || was_empty,
        "cap: {bytes_before} -> {bytes_after}"
    );
}

fn model_split(
    spool: &mut Spool,
    model: &mut Model,
    pick: &prop::sample::Index,
    max_events: usize,
    max_bytes: usize,
) {
    let seq = model.pick(pick);
    let original = spool.peek().into_iter().find(|(b, _)| b.seq == seq);
    let new = spool.split_batch(seq, max_events, max_bytes).unwrap();
    let Some((original, class)) = original else {
        assert!(new.is_empty(), "unknown seq {seq} split into {new:?}");
        return;
    };
    let (_, ids_before) = model.batches.remove(&seq).unwrap();
    let (kept, dropped): (Vec<u64>, Vec<u64>) = ids_before
        .iter()
        .partition(|id| model.sizes[id] <= max_bytes);
    model.drops.add(DropReason::Oversized, dropped.len() as u64);
    model.split_dropped += dropped.len() as u64;

    // New batches: fresh seqs above every seq ever seen, holding the kept events in order.
    let after: BTreeMap<u64, (StoredBatch, Class)> = spool
        .peek()
        .into_iter()
        .map(|(batch, class)| (batch.seq, (batch, class)))
        .collect();
    let fresh: Vec<u64> = after.range(model.max_seq + 1..).map(|(&s, _)| s).collect();
    assert_eq!(new, fresh, "split {seq}");
    let mut got = Vec::new();
    for new_seq in &new {
        let (batch, new_class) = &after[new_seq];
        assert_eq!(*new_class, class);
        assert_eq!(batch.created_ns, original.created_ns);
        assert!(batch.events >= 1);
        assert!(batch.events as usize <= max_events);
        assert!(batch.payload.len() <= max_bytes);
        got.extend(ids(batch));
        model.batches.insert(*new_seq, (class, ids(batch)));
        // Evictable exactly when the original was.
        if model.session.contains(&seq) {
            model.session.insert(*new_seq);
        }
        if model.handed_out.contains(&seq) {
            model.handed_out.insert(*new_seq);
        }
        model.max_seq = *new_seq;
    }
    assert_eq!(got, kept, "split {seq}");
}

fn check(spool: &Spool, model: &Model) {
    let held: BTreeMap<u64, (Class, Vec<u64>)> = spool
        .peek()
        .into_iter()
        .map(|(batch, class)| (batch.seq, (class, ids(&batch))))
        .collect();
    assert_eq!(held, model.batches);
    let stats = spool.stats();
    let payload: u64 = spool
        .peek()
        .iter()
        .map(|(b, _)| b.payload.len() as u64)
        .sum();
    assert_eq!(stats.payload_bytes, payload);
    assert_eq!(stats.events, model.events());
    assert_eq!(stats.batches, model.batches.len() as u64);
    assert_eq!(stats.drops, model.drops);
    assert!(stats.next_seq > model.max_seq);
    let oldest = model.batches.keys().next().copied();
    assert_eq!(stats.low_water_seq, oldest.unwrap_or(stats.next_seq));
    // Every accepted event is acknowledged, still held, or counted as dropped after acceptance.
    assert_eq!(
        model.accepted,
        model.acked
            + stats.events
            + stats.drops.spool_full_evicted
            + stats.drops.rejected_by_aggregator
            + model.split_dropped
    );
    for source in SOURCES {
        assert_eq!(
            spool.checkpoint(source).unwrap().as_ref(),
            model.checkpoints.get(source),
            "checkpoint {source}"
        );
    }
    let state: BTreeMap<_, _> = spool
        .state_page("a", None, usize::MAX)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(state, model.state, "keyed state of source a");
    assert!(spool.state_page("b", None, 10).unwrap().is_empty());
}

fn run_model(ops: Vec<Op>) {
    let dir = TempDir::new().unwrap();
    let mut path = db(&dir);
    let mut spool = Spool::open(config(&path, MODEL_CAP)).unwrap();
    let spool_id = spool.spool_id();
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append(specs) => model_append(&mut spool, &mut model, &specs),
            Op::BatchesAfter { after, limit } => {
                let mut candidates: Vec<u64> = vec![0];
                candidates.extend(model.batches.keys());
                let after = candidates[after.index(candidates.len())];
                let got: Vec<u64> = spool
                    .batches_after(after, limit)
                    .unwrap()
                    .iter()
                    .map(|b| b.seq)
                    .collect();
                let want: Vec<u64> = model
                    .batches
                    .range(after + 1..)
                    .map(|(&s, _)| s)
                    .take(limit)
                    .collect();
                assert_eq!(got, want);
                model.handed_out.extend(got);
            }
            Op::Ack(picks) => {
                let mut seqs: Vec<u64> = picks.iter().map(|p| model.pick(p)).collect();
                seqs.push(model.max_seq + 7);
                spool.ack(&seqs).unwrap();
                for seq in seqs {
                    if let Some((_, ids)) = model.batches.remove(&seq) {
                        model.acked += ids.len() as u64;
                    }
                }
            }
            Op::DropBatch(pick) => {
                let seq = model.pick(&pick);
                spool
                    .drop_batch(seq, DropReason::RejectedByAggregator)
                    .unwrap();
                if let Some((_, ids)) = model.batches.remove(&seq) {
                    model
                        .drops
                        .add(DropReason::RejectedByAggregator, ids.len() as u64);
                }
            }
            Op::Split {
                pick,
                max_events,
                max_bytes,
            } => model_split(&mut spool, &mut model, &pick, max_events, max_bytes),
            Op::Reopen | Op::Crash => {
                let before = spool.stats();
                if matches!(op, Op::Crash) {
                    let image = dir.path().join(format!("crash-{step}.db"));
                    crash_image(&path, &image);
                    path = image;
                }
                drop(spool);
                spool = Spool::open(config(&path, MODEL_CAP)).unwrap();
                let after = spool.stats();
                assert_eq!(after.spool_id, spool_id);
                assert_eq!(
                    SpoolStats {
                        file_bytes: 0,
                        ..after
                    },
                    SpoolStats {
                        file_bytes: 0,
                        ..before
                    }
                );
                model.reopened();
            }
        }
        check(&spool, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_spool_behaves_like_its_model(ops in prop::collection::vec(arb_op(), 1..40)) {
        run_model(ops);
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput figure.

/// A log event of about 200 encoded bytes.
fn log_line(id: u64) -> Event {
    Event::Log(LogRecord {
        time_ns: NOW + i64::try_from(id).unwrap(),
        source: "/var/log/syslog".to_owned(),
        severity: Some(outpost_common::event::Severity::Info),
        body: format!("{id:>10} {}", "y".repeat(158)),
        attributes: Vec::new(),
    })
}

fn log_submission(round: u64, per: u64) -> Submission {
    let events = (round * per..(round + 1) * per).map(log_line).collect();
    Submission::new(Class::Wait, events)
        .with_checkpoint(Checkpoint::new("/var/log/syslog", round.to_be_bytes()))
}

#[test]
#[ignore = "prints a throughput figure: cargo test --release -p outpost-agent --lib -- --ignored --nocapture throughput"]
fn append_throughput() {
    const PER: u64 = 500;
    const ROUNDS: u64 = 200;
    let dir = TempDir::new().unwrap();
    let size = encoded_size(&log_line(0));
    let mut spool = Spool::open(SpoolConfig::new(db(&dir), 1 << 40)).unwrap();
    let subs: Vec<Submission> = (0..ROUNDS).map(|r| log_submission(r, PER)).collect();
    let start = std::time::Instant::now();
    for sub in subs {
        spool.append(vec![sub], NOW).unwrap();
    }
    let direct = start.elapsed();
    assert_eq!(spool.stats().events, PER * ROUNDS);
    println!(
        "direct: {} events of {size} bytes in submissions of {PER}: {:.0} events/s",
        PER * ROUNDS,
        (PER * ROUNDS) as f64 / direct.as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let dir = TempDir::new().unwrap();
    let (handle, join) = spawn(Spool::open(SpoolConfig::new(db(&dir), 1 << 40)).unwrap());
    const SUBMITTERS: u64 = 4;
    let start = std::time::Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..SUBMITTERS)
            .map(|s| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    for r in 0..ROUNDS / SUBMITTERS {
                        handle
                            .submit(log_submission(s * ROUNDS + r, PER))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let writer = start.elapsed();
    let stats = handle.stats();
    assert_eq!(stats.events, PER * ROUNDS);
    println!(
        "writer, {SUBMITTERS} submitters: {:.0} events/s in {} group commits",
        (PER * ROUNDS) as f64 / writer.as_secs_f64(),
        handle.group_commits()
    );
    drop(handle);
    join.join().unwrap();
}

fn synchronous(spool: &Spool) -> i64 {
    spool
        .conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .unwrap()
}

#[test]
fn only_acknowledgements_commit_without_an_fsync() {
    const FULL: i64 = 2;
    const NORMAL: i64 = 1;
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(config(&db(&dir), 10_000)).unwrap();
    assert_eq!(synchronous(&spool), FULL);
    append_one(&mut spool, sub(Class::Drop, events(1, 2), None));
    append_one(&mut spool, sub(Class::Drop, events(3, 2), None));
    let seqs: Vec<u64> = spool
        .batches_after(0, 10)
        .unwrap()
        .iter()
        .map(|b| b.seq)
        .collect();
    assert_eq!(seqs, [1, 2]);

    spool.ack(&[1]).unwrap();
    assert_eq!(synchronous(&spool), NORMAL);
    assert_eq!(
        spool.stats().batches,
        1,
        "the acknowledged batch is deleted"
    );

    // Every other change waits for the disk again, and takes the deletion with it.
    append_one(
        &mut spool,
        sub(Class::Wait, events(5, 1), Some(("log", b"5"))),
    );
    assert_eq!(synchronous(&spool), FULL);
    spool.ack(&[3]).unwrap();
    spool
        .drop_batch(2, DropReason::RejectedByAggregator)
        .unwrap();
    assert_eq!(synchronous(&spool), FULL);
    spool.ack(&[]).unwrap();
    let split = spool.split_batch(99, 1, MAX_BATCH_BYTES).unwrap();
    assert!(split.is_empty());
    assert_eq!(synchronous(&spool), FULL);

    drop(spool);
    let reopened = Spool::open(config(&db(&dir), 10_000)).unwrap();
    assert_eq!(reopened.stats().batches, 0);
    assert_eq!(synchronous(&reopened), FULL);
}

// The disk under the spool: the effective cap, the reserve, trouble, and giving space back.

/// A disk of a set capacity holding the spool's directory: what its files take is not free.
#[derive(Debug)]
pub(super) struct FakeDisk {
    dir: PathBuf,
    capacity: std::sync::atomic::AtomicU64,
}

impl FakeDisk {
    pub(super) fn new(dir: &Path, capacity: u64) -> Arc<FakeDisk> {
        Arc::new(FakeDisk {
            dir: dir.to_path_buf(),
            capacity: std::sync::atomic::AtomicU64::new(capacity),
        })
    }

    /// Bytes the files in the directory take.
    pub(super) fn used(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    /// Makes the disk just large enough to leave `free` bytes free now.
    pub(super) fn leave_free(&self, free: u64) {
        self.capacity
            .store(self.used() + free, std::sync::atomic::Ordering::SeqCst);
    }
}

impl FreeSpace for FakeDisk {
    fn available(&self, _: &Path) -> std::io::Result<u64> {
        let capacity = self.capacity.load(std::sync::atomic::Ordering::SeqCst);
        Ok(capacity.saturating_sub(self.used()))
    }
}

/// A reporter that keeps what it hears.
#[derive(Debug, Default, Clone)]
pub(super) struct Heard(Arc<std::sync::Mutex<Vec<DiskEvent>>>);

impl Heard {
    pub(super) fn take(&self) -> Vec<DiskEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// What was heard, by kind: "trouble: disk full", "recovered: disk full", "reserve
    /// released"…, leaving out vacuums, which acknowledgements cause in passing.
    pub(super) fn names(&self) -> Vec<String> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                DiskEvent::Trouble(t) => Some(format!("trouble: {}", t.kind.as_str())),
                DiskEvent::Recovered { kind } => Some(format!("recovered: {}", kind.as_str())),
                DiskEvent::ReserveReleased { .. } => Some("reserve released".to_owned()),
                DiskEvent::ReserveRestored { .. } => Some("reserve restored".to_owned()),
                DiskEvent::Vacuumed { .. } => None,
            })
            .collect()
    }
}

impl DiskReporter for Heard {
    fn report(&self, event: DiskEvent) {
        self.0.lock().unwrap().push(event);
    }
}

/// Plenty of room: the reserve is written at open, and nothing is in trouble.
const ROOMY: u64 = 1 << 40;

fn open_on(dir: &TempDir, max_bytes: u64, disk: &Arc<FakeDisk>) -> (Spool, Heard) {
    let mut spool = Spool::open(SpoolConfig {
        free_space: disk.clone(),
        ..config(&db(dir), max_bytes)
    })
    .unwrap();
    let heard = Heard::default();
    spool.set_reporter(Box::new(heard.clone()));
    (spool, heard)
}

fn page_count(spool: &Spool) -> i64 {
    spool
        .conn
        .pragma_query_value(None, "page_count", |row| row.get(0))
        .unwrap()
}

/// Free space that leaves some room beyond the reserve and the write-ahead log's room.
const TIGHT: u64 = 2 * 1024 * 1024;

#[test]
fn appends_stop_before_the_disk_is_full() {
    let dir = TempDir::new().unwrap();
    let disk = FakeDisk::new(dir.path(), ROOMY);
    let (mut spool, heard) = open_on(&dir, 1 << 30, &disk);
    assert_eq!(
        std::fs::metadata(dir.path().join("spool.reserve"))
            .unwrap()
            .len(),
        RESERVE_BYTES,
        "the reserve is written at open"
    );
    let (free_pages, _) = spool.free_pages();
    let room = free_pages * spool.page_size();
    disk.leave_free(TIGHT);
    let capacity = disk.used() + TIGHT;

    let mut committed = 0;
    let outcome = loop {
        let big = (committed..committed + 4)
            .map(|id| event(id, 300))
            .collect();
        match append_one(&mut spool, sub(Class::Wait, big, None)) {
            SubmitOutcome::Committed { events } => committed += events,
            other => break other,
        }
    };
    assert_eq!(outcome, SubmitOutcome::Full);
    assert!(committed > 0);
    assert!(
        disk.used() <= capacity,
        "the disk was never filled: {} > {capacity}",
        disk.used()
    );
    let payload = spool.stats().payload_bytes;
    assert!(
        payload <= TIGHT / 2 + room,
        "{payload} payload bytes on {TIGHT} free"
    );
    let trouble = spool.stats().trouble.unwrap();
    assert_eq!(trouble.kind, TroubleKind::DiskFull);
    assert!(
        trouble.message.starts_with("disk full: ")
            && trouble.message.contains(&dir.path().display().to_string())
            && trouble.message.contains("B free on ")
            && trouble.message.ends_with("sources paused, samples dropped"),
        "{}",
        trouble.message
    );
    // Once in the state, a further refusal is no news.
    let big = (0..8).map(|id| event(id, 300)).collect();
    assert_eq!(
        append_one(&mut spool, sub(Class::Wait, big, None)),
        SubmitOutcome::Full
    );
    assert_eq!(heard.names(), ["trouble: disk full"]);

    // An empty spool on a full disk takes nothing either: the disk, not the cap, is the limit.
    let all: Vec<u64> = spool.peek().iter().map(|(b, _)| b.seq).collect();
    spool.ack(&all).unwrap();
    disk.leave_free(0);
    assert_eq!(
        append_one(&mut spool, sub(Class::Wait, events(200, 4), None)),
        SubmitOutcome::Full
    );

    // Room again: the state is left once, and Wait sources go on.
    disk.leave_free(ROOMY);
    spool.recheck();
    assert_eq!(spool.trouble(), None);
    assert_eq!(
        append_one(&mut spool, sub(Class::Wait, events(200, 4), None)),
        SubmitOutcome::Committed { events: 4 }
    );
    assert_eq!(heard.names(), ["recovered: disk full"]);
}

#[test]
fn samples_on_a_full_disk_evict_the_oldest_and_count_them_as_disk_full() {
    let dir = TempDir::new().unwrap();
    let disk = FakeDisk::new(dir.path(), ROOMY);
    let (mut spool, _) = open_on(&dir, 1 << 30, &disk);
    for first in [0, 8, 16] {
        append_one(&mut spool, sub(Class::Drop, events(first, 8), None));
    }
    let held = spool.stats().payload_bytes;
    // No room beyond the database's own free pages: new samples replace the oldest.
    disk.leave_free(0);
    let (free_pages, _) = spool.free_pages();
    let room = free_pages * spool.page_size();
    for round in 0..5 {
        let outcome = append_one(
            &mut spool,
            sub(Class::Drop, events(24 + round * 4, 4), None),
        );
        assert_eq!(outcome, SubmitOutcome::Committed { events: 4 });
    }
    let stats = spool.stats();
    assert!(stats.payload_bytes <= held + room, "{stats:?}");
    assert!(stats.drops.disk_full > 0, "{:?}", stats.drops);
    assert_eq!(
        stats.drops.spool_full_evicted + stats.drops.spool_full_rejected,
        0
    );
    assert_eq!(stats.events + stats.drops.disk_full, 44);
    assert_eq!(stats.trouble.unwrap().kind, TroubleKind::DiskFull);
    let kept: Vec<u64> = spool.peek().iter().flat_map(|(b, _)| ids(b)).collect();
    assert_eq!(kept.last(), Some(&43), "the newest are kept: {kept:?}");
    assert_eq!(kept.len() as u64, stats.events);
}

#[test]
fn acknowledgements_commit_on_a_full_disk_and_the_reserve_comes_back() {
    let dir = TempDir::new().unwrap();
    let disk = FakeDisk::new(dir.path(), ROOMY);
    let (mut spool, heard) = open_on(&dir, 1 << 30, &disk);
    let reserve = dir.path().join("spool.reserve");
    append_one(
        &mut spool,
        sub(Class::Wait, events(0, 8), Some(("log", b"8"))),
    );
    let sent: Vec<u64> = spool
        .batches_after(0, 10)
        .unwrap()
        .iter()
        .map(|b| b.seq)
        .collect();
    // The database may not grow by a single page: SQLite says the disk is full.
    let pages = page_count(&spool);
    spool
        .conn
        .pragma_update(None, "max_page_count", pages)
        .unwrap();
    let samples = sub(Class::Drop, events(100, 40), Some(("m", b"1")));
    let err = spool.append(vec![samples], NOW).unwrap_err();
    assert_eq!(err.trouble(), Some(TroubleKind::DiskFull), "{err}");
    assert!(!reserve.exists(), "the reserve was released");
    assert_eq!(spool.stats().drops.disk_full, 40);
    assert_eq!(spool.trouble().unwrap().kind, TroubleKind::DiskFull);
    assert_eq!(heard.names(), ["reserve released", "trouble: disk full"]);

    // Acknowledgements and checkpoints still commit.
    disk.leave_free(0);
    spool.ack(&sent).unwrap();
    assert_eq!(spool.stats().batches, 0);
    assert_eq!(
        append_one(
            &mut spool,
            sub(Class::Drop, Vec::new(), Some(("log", b"9")))
        ),
        SubmitOutcome::Committed { events: 0 }
    );
    assert_eq!(spool.checkpoint("log").unwrap(), Some(b"9".to_vec()));

    // Not enough room for the reserve twice over: it stays away.
    disk.leave_free(RESERVE_BYTES);
    spool.recheck();
    assert!(!reserve.exists());
    assert!(spool.trouble().is_some());
    // Room again: the reserve is written back, with real blocks, and the state is left.
    disk.leave_free(ROOMY);
    spool.recheck();
    let meta = std::fs::metadata(&reserve).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(meta.len(), RESERVE_BYTES);
    assert!(meta.blocks() * 512 >= RESERVE_BYTES);
    assert_eq!(spool.trouble(), None);
    assert_eq!(heard.names(), ["reserve restored", "recovered: disk full"]);
}

/// A spool on `disk` holding 40 batches of 100 events of 1,000 bytes, a few MiB.
fn backlog_of_forty_batches(dir: &TempDir, disk: &Arc<FakeDisk>) -> Spool {
    let mut spool = Spool::open(SpoolConfig {
        free_space: disk.clone(),
        max_batch_events: 100,
        max_batch_bytes: 64 * 1024,
        ..config(&db(dir), 1 << 30)
    })
    .unwrap();
    for round in 0..40 {
        let big: Vec<Event> = (0..100).map(|i| event(round * 100 + i, 1000)).collect();
        append_one(&mut spool, sub(Class::Wait, big, None));
    }
    spool
}

#[test]
fn the_files_shrink_after_a_drain() {
    let dir = TempDir::new().unwrap();
    let disk = FakeDisk::new(dir.path(), ROOMY);
    let mut spool = backlog_of_forty_batches(&dir, &disk);
    let heard = Heard::default();
    spool.set_reporter(Box::new(heard.clone()));
    let full = spool.stats().file_bytes;
    assert!(full > 4_000_000, "{full} bytes");
    let sent = spool.batches_after(0, usize::MAX).unwrap();
    let (first, rest) = sent.split_at(sent.len() * 3 / 4);
    for batch in first {
        spool.ack(&[batch.seq]).unwrap();
    }
    // A quarter of the backlog is still there: giving pages back now would copy it to the
    // front of the file, and again at every later step of the drain.
    assert!(
        !heard
            .take()
            .iter()
            .any(|e| matches!(e, DiskEvent::Vacuumed { .. })),
        "vacuumed in the middle of a drain"
    );
    for batch in rest {
        spool.ack(&[batch.seq]).unwrap();
    }
    let drained = spool.stats().file_bytes;
    assert!(
        drained < full / 4,
        "{drained} bytes on disk after the drain, {full} before"
    );
    let vacuums = heard.take();
    assert!(
        vacuums.iter().any(
            |e| matches!(e, DiskEvent::Vacuumed { file_bytes_before, file_bytes_after, .. } if file_bytes_after < file_bytes_before)
        ),
        "{vacuums:?}"
    );
    // The spool goes on as before.
    assert_eq!(
        append_one(&mut spool, sub(Class::Wait, events(1, 1), None)),
        SubmitOutcome::Committed { events: 1 }
    );
}

#[test]
fn a_backlog_drained_while_the_disk_was_full_gives_its_pages_back_once_there_is_room() {
    let dir = TempDir::new().unwrap();
    let disk = FakeDisk::new(dir.path(), ROOMY);
    let mut spool = backlog_of_forty_batches(&dir, &disk);
    let full = spool.stats().file_bytes;
    // The disk fills: the next submission waits and the spool says so.
    disk.leave_free(0);
    let waiting = sub(Class::Wait, events(10_000, 100), None);
    assert_eq!(append_one(&mut spool, waiting), SubmitOutcome::Full);
    assert_eq!(spool.trouble().map(|t| t.kind), Some(TroubleKind::DiskFull));
    // The whole backlog is acknowledged at once while the disk is full: one small step back.
    let sent: Vec<u64> = spool
        .batches_after(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|b| b.seq)
        .collect();
    spool.ack(&sent).unwrap();
    assert!(
        spool.stats().file_bytes > full / 2,
        "{}",
        spool.stats().file_bytes
    );
    // Room again, and no acknowledgement to come: the recheck gives the pages back.
    disk.leave_free(ROOMY);
    spool.recheck();
    assert_eq!(spool.trouble(), None);
    let drained = spool.stats().file_bytes;
    assert!(drained < full / 4, "{drained} bytes after, {full} before");
}

#[test]
fn a_spool_without_auto_vacuum_is_migrated_on_open() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    {
        let mut spool = Spool::open(config(&path, 100_000)).unwrap();
        append_one(
            &mut spool,
            sub(Class::Wait, events(1, 3), Some(("a", b"7"))),
        );
    }
    // Take the file back to version 3: no auto-vacuum, no disk_full counter.
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA auto_vacuum = NONE; VACUUM;
             ALTER TABLE spool DROP COLUMN disk_full;
             ALTER TABLE batches DROP COLUMN codec;
             ALTER TABLE batches DROP COLUMN raw_bytes;
             PRAGMA user_version = 3;",
        )
        .unwrap();
        let mode: i64 = conn
            .pragma_query_value(None, "auto_vacuum", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, 0);
    }
    let spool = Spool::open(config(&path, 100_000)).unwrap();
    assert_eq!(spool.stats().events, 3);
    let mode: i64 = spool
        .conn
        .pragma_query_value(None, "auto_vacuum", |row| row.get(0))
        .unwrap();
    assert_eq!(mode, 2, "incremental");
    let version: i64 = spool
        .conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(spool.checkpoint("a").unwrap(), Some(b"7".to_vec()));
}

#[test]
fn a_write_that_overruns_a_tight_disk_holds_wait_sources_instead_of_failing_them() {
    let dir = TempDir::new().unwrap();
    let disk = FakeDisk::new(dir.path(), ROOMY);
    let (mut spool, heard) = open_on(&dir, 1 << 30, &disk);
    append_one(
        &mut spool,
        sub(Class::Wait, events(0, 4), Some(("log", b"4"))),
    );
    // The disk sets the cap, which lets the next write through; SQLite then finds no room.
    disk.leave_free(TIGHT);
    let pages = page_count(&spool);
    spool
        .conn
        .pragma_update(None, "max_page_count", pages)
        .unwrap();
    let wait = sub(Class::Wait, events(4, 40), Some(("log", b"44")));
    let samples = sub(Class::Drop, events(100, 40), None);
    let outcomes = spool.append(vec![wait, samples], NOW).unwrap();
    assert_eq!(
        outcomes,
        [SubmitOutcome::Full, SubmitOutcome::Rejected { events: 40 }]
    );
    let stats = spool.stats();
    assert_eq!((stats.events, stats.drops.disk_full), (4, 40));
    assert_eq!(spool.checkpoint("log").unwrap(), Some(b"4".to_vec()));
    assert_eq!(heard.names(), ["reserve released", "trouble: disk full"]);
}

/// Log lines much alike, as a file's are: zstd takes them in a fraction of their bytes.
fn log_lines(first: u64, n: u64) -> Vec<Event> {
    (first..first + n)
        .map(|id| {
            Event::Log(LogRecord {
                time_ns: i64::try_from(id).unwrap(),
                source: "/var/log/app.log".to_owned(),
                severity: None,
                body: format!(
                    "GET /api/v1/items/{id:010} status=200 {}",
                    "abcdef".repeat(20)
                ),
                attributes: Vec::new(),
            })
        })
        .collect()
}

fn zstd_config(path: &Path, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        compression: Codec::Zstd,
        max_batch_events: 1000,
        max_batch_bytes: 1 << 20,
        ..config(path, max_bytes)
    }
}

#[test]
fn a_compressing_spool_stores_and_hands_out_fewer_bytes_for_the_same_events() {
    let dir = TempDir::new().unwrap();
    let path = db(&dir);
    let mut spool = Spool::open(zstd_config(&path, 10_000_000)).unwrap();
    let lines = log_lines(1, 100);
    let raw = wire::encode_events(&lines).unwrap();
    append_one(
        &mut spool,
        sub(Class::Wait, lines.clone(), Some(("a", b"100"))),
    );
    let batches = spool.batches_after(0, 10).unwrap();
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    assert_eq!(batch.codec, Codec::Zstd);
    assert_eq!(batch.raw_bytes, raw.len());
    assert!(
        batch.payload.len() * 4 < raw.len(),
        "{} bytes stored for {}",
        batch.payload.len(),
        raw.len()
    );
    assert_eq!(batch.events().unwrap(), lines);
    // The cap counts what is stored.
    assert_eq!(spool.stats().payload_bytes, batch.payload.len() as u64);

    // After a restart, a spool that no longer compresses still reads what it wrote, and counts
    // the same bytes.
    drop(spool);
    let plain_config = SpoolConfig {
        compression: Codec::None,
        ..zstd_config(&path, 10_000_000)
    };
    let mut spool = Spool::open(plain_config).unwrap();
    assert_eq!(spool.stats().payload_bytes, batch.payload.len() as u64);
    let again = spool.batches_after(0, 10).unwrap();
    assert_eq!(again[0].events().unwrap(), lines);
    append_one(&mut spool, sub(Class::Wait, log_lines(101, 5), None));
    let plain = &spool.batches_after(1, 10).unwrap()[0];
    assert_eq!(plain.codec, Codec::None);
    assert_eq!(plain.raw_bytes, plain.payload.len());
    assert_eq!(ids(plain), (101..=105).collect::<Vec<_>>());
    spool.ack(&[1, 2]).unwrap();
    assert_eq!(spool.stats().payload_bytes, 0);
    assert_eq!(spool.checkpoint("a").unwrap(), Some(b"100".to_vec()));
}

#[test]
fn a_compressed_batch_too_large_for_the_receiver_is_split_by_its_size_before_compression() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(zstd_config(&db(&dir), 10_000_000)).unwrap();
    let lines = log_lines(1, 60);
    append_one(&mut spool, sub(Class::Wait, lines.clone(), None));
    let batch = spool.batches_after(0, 1).unwrap().remove(0);
    assert_eq!(batch.codec, Codec::Zstd);
    // Small enough compressed, too large before: split by the decoded size.
    let limit = batch.raw_bytes / 3;
    assert!(batch.payload.len() < limit);
    let seqs = spool.split_batch(batch.seq, 1000, limit).unwrap();
    assert!(seqs.len() >= 3, "{seqs:?}");
    let mut back = Vec::new();
    for part in spool.batches_after(batch.seq, 100).unwrap() {
        assert!(part.raw_bytes <= limit, "{} > {limit}", part.raw_bytes);
        back.extend(part.events().unwrap());
    }
    assert_eq!(back, lines);
    assert_eq!(spool.stats().events, 60);
}

#[test]
fn a_damaged_compressed_batch_is_dropped_as_oversized_when_split() {
    let dir = TempDir::new().unwrap();
    let mut spool = Spool::open(zstd_config(&db(&dir), 10_000_000)).unwrap();
    append_one(&mut spool, sub(Class::Wait, log_lines(1, 50), None));
    let stored = spool.peek()[0].0.payload.len();
    let garbage = vec![0x5a_u8; stored];
    spool
        .conn
        .execute("UPDATE batches SET payload = ?1 WHERE seq = 1", [garbage])
        .unwrap();
    assert!(spool.peek()[0].0.events().is_err());
    assert_eq!(spool.split_batch(1, 1, 100).unwrap(), Vec::<u64>::new());
    assert_eq!(spool.stats().drops.oversized, 50);
    assert_eq!(spool.stats().payload_bytes, 0);
}
