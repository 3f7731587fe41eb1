//! The [`EventStore`](crate::store::EventStore) contract.
//!
//! Every case starts from a fresh, empty store and uses fixed times (`testutil::T0` and offsets
//! from it). The cases hold a store to what the trait and its types document, and no more:
//!
//! - Cursors are compared, never read as numbers: a batch's events are consecutive from its
//!   start, and a later commit's events come after an earlier one's. Nothing is assumed about
//!   where a store's cursors begin, or about the order of batches within one commit.
//! - Retention is checked with margins: a store may remove events by their receive time
//!   exactly, or whole days by their own time, so the cases make events whose two times agree
//!   and keep them more than a day away from each period's edge.
//! - Once retention has run, metric points are read back by [`EventStore::metric_query`]: the
//!   trait does not say whether cursor reads reach points a store has packed into chunks
//!   ([`Retention::metric_chunk`]), and SQLite's do not.

use std::collections::BTreeMap;

use outpost_common::event::{
    AgentStatus, CollectorError, DropCounters, Event, EventKind, LogRecord, LogStatus, MetricKind,
    MetricPoint, Severity,
};
use outpost_common::time::duration_ns;

use super::{Case, EventsFixture};
use crate::store::CommitOutcome::{Duplicate, Stored};
use crate::store::fim_trail::NOTICE_SOURCE;
use crate::store::series::{
    Aggregate, Combine, Function, Matcher, MetricAnswer, MetricQuery, MetricQueryError,
};
use crate::store::testutil::{
    T0, batch, collection, fim, fim_chain, fim_next, gauge, log, metric, oldest_batch, point, secs,
    status_event, unpacked_batch,
};
use crate::store::{
    BatchCommit, CPU_UTILIZATION, CommitOutcome, Cursor, EventPage, EventQuery, EventStore,
    FILESYSTEM_UTILIZATION, HostSummary, IncomingBatch, MEMORY_UTILIZATION, PackedEvents,
    Retention, RetentionReport, StoredEvent,
};

/// Builds the case list from the cases' function names.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$(Case { name: stringify!($case), run: $case }),*]
    };
}

/// Every case of the event-store contract.
pub const CASES: &[Case<dyn EventsFixture>] = cases![
    // Commit: exactly once.
    a_new_batch_is_stored_and_reads_back_as_sent,
    every_kind_of_event_reads_back_equal_to_what_was_sent,
    packed_batches_read_back_equal_to_what_was_sent,
    the_same_batch_sent_again_is_a_duplicate_and_adds_nothing,
    a_repeat_within_one_call_is_a_duplicate,
    a_batch_below_its_spools_low_water_mark_is_a_duplicate,
    a_new_spool_or_another_agent_with_the_same_seq_is_new_data,
    several_agents_in_one_call_get_one_answer_each_in_order,
    a_call_with_no_batches_answers_nothing,
    // Cursors.
    a_batchs_events_have_consecutive_cursors_in_its_order,
    every_event_of_a_later_commit_comes_after_every_event_of_an_earlier_one,
    a_query_from_the_end_sees_only_what_is_committed_afterwards,
    receive_times_never_go_back_from_one_commit_to_the_next,
    // Reads.
    events_filter_by_kind,
    events_filter_by_agent,
    events_filter_by_their_own_time,
    events_from_and_until_bound_the_cursors,
    a_page_holds_at_most_the_limit_and_a_zero_limit_counts_as_one,
    paging_with_next_returns_every_event_once_then_none,
    // Host summaries.
    host_summaries_hold_each_agents_latest_cpu_memory_and_fullest_filesystem,
    late_or_resent_batches_never_roll_a_host_summary_back,
    agents_without_summarised_metrics_have_no_host_summary,
    // Metric queries.
    metric_queries_reduce_each_step_by_the_aggregate,
    rate_and_increase_count_a_counters_rises_and_its_resets,
    combine_reduces_the_selected_series_step_by_step,
    matchers_select_series_by_their_attributes,
    wrong_metric_queries_are_refused_naming_the_part,
    // Retention.
    retention_removes_events_past_their_kinds_period_and_keeps_the_rest,
    a_batch_whose_events_retention_removed_stays_a_duplicate,
    a_spool_never_replaced_stays_a_duplicate_past_the_longest_period,
    // The file-integrity trail.
    an_intact_file_integrity_trail_adds_no_notices,
    a_gap_in_the_trail_adds_a_notice_after_the_batchs_events,
    an_altered_event_adds_a_notice_and_the_trail_goes_on,
    a_duplicate_batch_leaves_the_trail_alone,
];

// Commit: exactly once.

fn a_new_batch_is_stored_and_reads_back_as_sent(f: &dyn EventsFixture) {
    let store = f.fresh();
    assert_eq!(all(&*store), []);
    let sent = received(batch("a", 1, 1, tagged(T0, 1, 3)), T0 + secs(1));
    let answers = commit(&*store, std::slice::from_ref(&sent));
    let BatchCommit::Stored { start, notices } = &answers[0] else {
        panic!("a new batch must be stored: {answers:?}")
    };
    assert_eq!(notices, &[]);
    let stored = all(&*store);
    assert_eq!(
        cursors(&stored),
        (0..3).map(|i| start.advance(i)).collect::<Vec<_>>()
    );
    for e in &stored {
        assert_eq!(
            (e.agent_id.as_str(), e.received_ns),
            ("a", T0 + secs(1)),
            "{e:?}"
        );
    }
    assert_eq!(events(&stored), sent.events);
}

fn every_kind_of_event_reads_back_equal_to_what_was_sent(f: &dyn EventsFixture) {
    let store = f.fresh();
    let first = batch("a", 1, 1, every_kind(T0));
    let second = unpacked_batch("a", 1, 2, every_kind(T0 + secs(10))[..4].to_vec());
    let starts = [store_new(&*store, &first), store_new(&*store, &second)];
    let stored = all(&*store);
    assert_eq!(stored.len(), first.events.len() + second.events.len());
    assert_eq!(at(&stored, starts[0], first.events.len()), first.events);
    assert_eq!(at(&stored, starts[1], second.events.len()), second.events);
}

fn packed_batches_read_back_equal_to_what_was_sent(f: &dyn EventsFixture) {
    let store = f.fresh();
    // Mostly log lines, a metric and a status between them: as an agent's batch of logs.
    let lines = |first: usize| -> Vec<Event> {
        let mut events: Vec<Event> = (first..first + 40).map(|i| line(T0, i)).collect();
        events.insert(2, metric(T0, 1.0));
        events.insert(5, status_event(T0));
        events
    };
    let packed = batch("a", 1, 1, lines(0));
    let plain = unpacked_batch("a", 1, 2, lines(40));
    // Mostly metrics, one log line among them.
    let mut few: Vec<Event> = (0..9).map(|i| metric(T0 + i, i as f64)).collect();
    few.push(line(T0, 80));
    let mostly_metrics = batch("a", 1, 3, few);
    for b in [&packed, &mostly_metrics] {
        assert!(b.packed.is_some(), "the case needs a packed batch: {b:?}");
        let unpacked = b.packed.as_ref().map(PackedEvents::unpack);
        assert!(
            matches!(&unpacked, Some(Ok(events)) if *events == b.events),
            "{unpacked:?}"
        );
    }
    let sent = [packed, plain, mostly_metrics];
    let starts: Vec<Cursor> = sent.iter().map(|b| store_new(&*store, b)).collect();
    let stored = all(&*store);
    assert_eq!(stored.len(), 42 + 42 + 10);
    for (b, start) in sent.iter().zip(starts) {
        assert_eq!(
            at(&stored, start, b.events.len()),
            b.events,
            "seq {}",
            b.seq
        );
    }
    // The log lines alone, in pages that end inside a batch.
    let expected: Vec<Event> = sent
        .iter()
        .flat_map(|b| b.events.iter().filter(|e| e.kind() == EventKind::Log))
        .cloned()
        .collect();
    for limit in [1, 7, 1000] {
        let query = EventQuery {
            kind: Some(EventKind::Log),
            limit,
            ..EventQuery::default()
        };
        assert_eq!(events(&every(&*store, query)), expected, "pages of {limit}");
    }
}

fn the_same_batch_sent_again_is_a_duplicate_and_adds_nothing(f: &dyn EventsFixture) {
    let store = f.fresh();
    let first = batch("a", 1, 1, tagged(T0, 1, 3));
    store_new(&*store, &first);
    let before = all(&*store);
    // Sent again later, as after a reconnect: acknowledged again, stored once.
    let again = received(first.clone(), T0 + secs(60));
    assert_eq!(
        commit(&*store, std::slice::from_ref(&again)),
        [BatchCommit::Duplicate]
    );
    assert_eq!(all(&*store), before);
    // The key decides, not the content: whatever a batch with a stored key carries is not stored.
    let other_content = batch("a", 1, 1, tagged(T0 + secs(5), 9, 2));
    assert_eq!(commit(&*store, &[other_content]), [BatchCommit::Duplicate]);
    assert_eq!(all(&*store), before);
    // The next batch is new.
    let next = batch("a", 1, 2, tagged(T0, 2, 1));
    let start = store_new(&*store, &next);
    let stored = all(&*store);
    assert_eq!(stored.len(), 4);
    assert_eq!(at(&stored, start, 1), next.events);
}

fn a_repeat_within_one_call_is_a_duplicate(f: &dyn EventsFixture) {
    let store = f.fresh();
    let one = batch("a", 1, 1, tagged(T0, 1, 2));
    let two = batch("a", 1, 2, tagged(T0, 2, 3));
    let group = [
        one.clone(),
        one.clone(),
        two.clone(),
        one.clone(),
        two.clone(),
    ];
    let answers = commit(&*store, &group);
    assert_eq!(
        outcomes(&answers),
        [Stored, Duplicate, Stored, Duplicate, Duplicate]
    );
    let stored = all(&*store);
    assert_eq!(stored.len(), 5);
    assert_eq!(at(&stored, start_of(&answers[0]), 2), one.events);
    assert_eq!(at(&stored, start_of(&answers[2]), 3), two.events);
}

fn a_batch_below_its_spools_low_water_mark_is_a_duplicate(f: &dyn EventsFixture) {
    let store = f.fresh();
    // Batch 5, sent when batch 4 was the oldest the agent held: 1 to 3 are never sent again.
    let fifth = with_low_water(batch("a", 1, 5, tagged(T0, 5, 1)), 4);
    store_new(&*store, &fifth);
    // Below the mark: a duplicate, though never seen; at the mark: new.
    let answers = commit(
        &*store,
        &[
            batch("a", 1, 3, tagged(T0, 3, 1)),
            batch("a", 1, 0, tagged(T0, 0, 1)),
            batch("a", 1, 4, tagged(T0, 4, 1)),
        ],
    );
    assert_eq!(outcomes(&answers), [Duplicate, Duplicate, Stored]);
    // A batch sent before the mark rose, delivered late, does not lower it.
    let late = with_low_water(batch("a", 1, 7, tagged(T0, 7, 1)), 1);
    store_new(&*store, &late);
    let answers = commit(&*store, &[batch("a", 1, 2, tagged(T0, 2, 1))]);
    assert_eq!(outcomes(&answers), [Duplicate]);
    let mut bodies = log_bodies(&all(&*store));
    bodies.sort();
    assert_eq!(
        bodies,
        ["batch 4 event 0", "batch 5 event 0", "batch 7 event 0"]
    );
}

fn a_new_spool_or_another_agent_with_the_same_seq_is_new_data(f: &dyn EventsFixture) {
    let store = f.fresh();
    for seq in 1..=3 {
        store_new(
            &*store,
            &with_low_water(batch("a", 1, seq, tagged(T0, seq, 1)), seq),
        );
    }
    // The agent's spool was recreated: its numbers start again, under a mark of their own.
    let new_spool = batch("a", 2, 1, tagged(T0, 11, 2));
    let other_agent = batch("b", 1, 1, tagged(T0, 21, 3));
    let answers = commit(&*store, &[new_spool.clone(), other_agent.clone()]);
    assert_eq!(outcomes(&answers), [Stored, Stored]);
    let again = commit(
        &*store,
        &[
            new_spool.clone(),
            other_agent.clone(),
            batch("a", 1, 1, vec![]),
        ],
    );
    assert_eq!(outcomes(&again), [Duplicate, Duplicate, Duplicate]);
    let of = |agent: &str| {
        every(
            &*store,
            EventQuery {
                agent_id: Some(agent.to_owned()),
                ..EventQuery::default()
            },
        )
    };
    assert_eq!(of("a").len(), 3 + 2);
    assert_eq!(events(&of("b")), other_agent.events);
    let stored = all(&*store);
    assert_eq!(at(&stored, start_of(&answers[0]), 2), new_spool.events);
}

fn several_agents_in_one_call_get_one_answer_each_in_order(f: &dyn EventsFixture) {
    let store = f.fresh();
    store_new(&*store, &batch("a", 1, 1, tagged(T0, 1, 1)));
    let group = [
        batch("a", 1, 2, tagged(T0, 2, 2)),
        batch("a", 1, 1, tagged(T0, 1, 1)), // stored by an earlier call
        batch("b", 1, 1, tagged(T0, 101, 3)),
        batch("a", 1, 2, tagged(T0, 2, 2)), // stored earlier in this call
        batch("a", 1, 3, tagged(T0, 3, 4)),
        batch("c", 7, 1, every_kind(T0)),
    ];
    let answers = commit(&*store, &group);
    assert_eq!(
        outcomes(&answers),
        [Stored, Duplicate, Stored, Duplicate, Stored, Stored]
    );
    let stored = all(&*store);
    assert_eq!(stored.len(), 1 + 2 + 3 + 4 + group[5].events.len());
    for (b, answer) in group.iter().zip(&answers) {
        if let BatchCommit::Stored { start, notices } = answer {
            assert_eq!(notices, &[]);
            let got = stored_at(&stored, *start, b.events.len());
            assert!(got.iter().all(|e| e.agent_id == b.agent_id), "{got:?}");
            assert_eq!(events(&got), b.events, "{} seq {}", b.agent_id, b.seq);
        }
    }
}

fn a_call_with_no_batches_answers_nothing(f: &dyn EventsFixture) {
    let store = f.fresh();
    assert_eq!(commit(&*store, &[]), []);
    store_new(&*store, &batch("a", 1, 1, tagged(T0, 1, 1)));
    assert_eq!(commit(&*store, &[]), []);
    assert_eq!(all(&*store).len(), 1);
}

// Cursors.

fn a_batchs_events_have_consecutive_cursors_in_its_order(f: &dyn EventsFixture) {
    let store = f.fresh();
    let group = [
        batch("a", 1, 1, tagged(T0, 1, 5)),
        batch("b", 1, 1, every_kind(T0)),
        batch("a", 1, 2, tagged(T0, 2, 1)),
        batch("c", 1, 1, tagged(T0, 3, 12)),
    ];
    let answers = commit(&*store, &group);
    let stored = all(&*store);
    assert_eq!(stored.len(), 5 + group[1].events.len() + 1 + 12);
    for (b, answer) in group.iter().zip(&answers) {
        let start = start_of(answer);
        let got = stored_at(&stored, start, b.events.len());
        assert_eq!(events(&got), b.events, "{} seq {}", b.agent_id, b.seq);
        // The batch's span holds nothing else.
        let span = EventQuery {
            from: start,
            until: Some(start.advance(b.events.len())),
            ..EventQuery::default()
        };
        assert_eq!(every(&*store, span), got);
    }
}

fn every_event_of_a_later_commit_comes_after_every_event_of_an_earlier_one(f: &dyn EventsFixture) {
    let store = f.fresh();
    let commits = [
        vec![
            batch("a", 1, 1, tagged(T0, 1, 3)),
            batch("b", 1, 1, vec![metric(T0, 1.0)]),
        ],
        vec![
            batch("b", 1, 2, every_kind(T0)),
            batch("a", 1, 1, tagged(T0, 1, 3)),
            batch("c", 1, 1, tagged(T0, 1, 2)),
        ],
        vec![batch("c", 1, 2, vec![status_event(T0)])],
        vec![
            batch("a", 1, 2, tagged(T0 - secs(60), 2, 2)),
            batch("d", 1, 1, tagged(T0, 1, 1)),
        ],
    ];
    let mut spans: Vec<(Cursor, Cursor)> = Vec::new();
    for group in &commits {
        let answers = commit(&*store, group);
        let mut lowest = None::<Cursor>;
        let mut highest = None::<Cursor>;
        for (b, answer) in group.iter().zip(&answers) {
            let BatchCommit::Stored { start, .. } = answer else {
                continue;
            };
            let last = start.advance(b.events.len() - 1);
            lowest = Some(lowest.map_or(*start, |l| l.min(*start)));
            highest = Some(highest.map_or(last, |h| h.max(last)));
        }
        spans.push((
            lowest.expect("each commit stores a batch"),
            highest.expect("each commit stores a batch"),
        ));
    }
    for pair in spans.windows(2) {
        assert!(pair[0].1 < pair[1].0, "commits overlap: {spans:?}");
    }
    let stored = all(&*store);
    assert_eq!(stored.len(), 3 + 1 + 6 + 2 + 1 + 2 + 1);
    // Read back in cursor order ([`every`] checks it), so commit by commit.
    let commit_of = |c: Cursor| spans.iter().position(|&(lo, hi)| lo <= c && c <= hi);
    let order: Vec<Option<usize>> = stored.iter().map(|e| commit_of(e.cursor)).collect();
    assert!(order.iter().all(Option::is_some), "{order:?}");
    assert!(order.is_sorted(), "{order:?}");
}

fn a_query_from_the_end_sees_only_what_is_committed_afterwards(f: &dyn EventsFixture) {
    let store = f.fresh();
    let from = |c: Cursor| EventQuery {
        from: c,
        ..EventQuery::default()
    };
    let empty = end(&*store);
    assert_eq!(every(&*store, from(empty)), []);

    let first = [
        batch("a", 1, 1, tagged(T0, 1, 3)),
        batch("b", 1, 1, every_kind(T0)),
    ];
    commit(&*store, &first);
    let after_first = end(&*store);
    let stored = all(&*store);
    assert_eq!(stored.len(), 3 + first[1].events.len());
    assert!(
        stored.iter().all(|e| e.cursor >= empty),
        "{empty:?} {stored:?}"
    );
    assert!(
        stored.iter().all(|e| e.cursor < after_first),
        "{after_first:?}"
    );
    assert_eq!(every(&*store, from(empty)), stored);
    assert_eq!(every(&*store, from(after_first)), []);

    // Duplicates only: nothing to see from the end.
    commit(&*store, &first);
    assert_eq!(every(&*store, from(after_first)), []);

    let second = batch("c", 1, 1, tagged(T0, 2, 4));
    let start = store_new(&*store, &second);
    assert!(start >= after_first, "{start:?} before {after_first:?}");
    let seen = every(&*store, from(after_first));
    assert_eq!(events(&seen), second.events);
    assert_eq!(every(&*store, from(end(&*store))), []);
    assert_eq!(all(&*store).len(), stored.len() + 4);
}

fn receive_times_never_go_back_from_one_commit_to_the_next(f: &dyn EventsFixture) {
    let store = f.fresh();
    store_new(
        &*store,
        &received(batch("a", 1, 1, tagged(T0, 1, 1)), T0 + secs(10)),
    );
    // The aggregator's clock stepped back before the next batch arrived.
    store_new(&*store, &received(batch("a", 1, 2, tagged(T0, 2, 1)), T0));
    store_new(
        &*store,
        &received(batch("b", 1, 1, tagged(T0, 3, 1)), T0 + secs(20)),
    );
    let times: Vec<i64> = all(&*store).iter().map(|e| e.received_ns).collect();
    assert_eq!(times.len(), 3);
    assert_eq!(times[0], T0 + secs(10));
    assert!(times[1] >= T0 + secs(10), "{times:?}");
    assert_eq!(times[2], T0 + secs(20));
}

// Reads.

fn events_filter_by_kind(f: &dyn EventsFixture) {
    let store = f.fresh();
    for (seq, agent) in [(1, "a"), (2, "b"), (3, "c")] {
        let t = T0 + secs(seq as i64);
        store_new(&*store, &batch(agent, 1, seq, every_kind(t)));
    }
    let stored = all(&*store);
    for kind in EventKind::ALL {
        let query = EventQuery {
            kind: Some(kind),
            ..EventQuery::default()
        };
        let expected: Vec<StoredEvent> = stored
            .iter()
            .filter(|e| e.event.kind() == kind)
            .cloned()
            .collect();
        assert!(!expected.is_empty(), "{kind:?}");
        assert_eq!(every(&*store, query), expected, "{kind:?}");
    }
}

fn events_filter_by_agent(f: &dyn EventsFixture) {
    let store = f.fresh();
    for seq in 0..6u64 {
        let agent = ["a", "b", "ab"][seq as usize % 3];
        store_new(&*store, &batch(agent, 1, seq, tagged(T0, seq, 2)));
    }
    let stored = all(&*store);
    for agent in ["a", "b", "ab"] {
        let query = EventQuery {
            agent_id: Some(agent.to_owned()),
            ..EventQuery::default()
        };
        let expected: Vec<StoredEvent> = stored
            .iter()
            .filter(|e| e.agent_id == agent)
            .cloned()
            .collect();
        assert_eq!(expected.len(), 4, "{agent}");
        assert_eq!(every(&*store, query), expected, "{agent}");
    }
    let nobody = EventQuery {
        agent_id: Some("nobody".to_owned()),
        ..EventQuery::default()
    };
    let page = page(&*store, &nobody);
    assert_eq!((page.events, page.next), (vec![], None));
}

fn events_filter_by_their_own_time(f: &dyn EventsFixture) {
    let store = f.fresh();
    // One second apart in the agents' time, received much later: the filter is on their own time.
    for seq in 0..10u64 {
        let t = T0 + secs(seq as i64);
        let agent = if seq % 2 == 0 { "a" } else { "b" };
        let events = vec![log(t, 10), metric(t, seq as f64), status_event(t)];
        store_new(
            &*store,
            &received(batch(agent, 1, seq, events), T0 + secs(86_400)),
        );
    }
    let window = T0 + secs(3)..T0 + secs(7);
    let query = EventQuery {
        time_ns: Some(window.clone()),
        ..EventQuery::default()
    };
    let times: Vec<i64> = every(&*store, query)
        .iter()
        .map(|e| e.event.time_ns())
        .collect();
    // The range holds its start, not its end.
    let expected: Vec<i64> = (3..7).flat_map(|s| [T0 + secs(s); 3]).collect();
    assert_eq!(times, expected);
    // With an agent and a kind.
    let one_host = EventQuery {
        kind: Some(EventKind::Log),
        agent_id: Some("a".to_owned()),
        time_ns: Some(window),
        limit: 1,
        ..EventQuery::default()
    };
    let got = every(&*store, one_host);
    let times: Vec<i64> = got.iter().map(|e| e.event.time_ns()).collect();
    assert_eq!(times, [T0 + secs(4), T0 + secs(6)]);
    assert!(
        got.iter()
            .all(|e| e.event.kind() == EventKind::Log && e.agent_id == "a")
    );
    let nothing = EventQuery {
        time_ns: Some(T0 + secs(10)..T0 + secs(20)),
        ..EventQuery::default()
    };
    assert_eq!(every(&*store, nothing), []);
}

fn events_from_and_until_bound_the_cursors(f: &dyn EventsFixture) {
    let store = f.fresh();
    for seq in 0..5u64 {
        let agent = if seq % 2 == 0 { "a" } else { "b" };
        store_new(
            &*store,
            &batch(agent, 1, seq, vec![log(T0, 5), metric(T0, 1.0)]),
        );
    }
    let stored = all(&*store);
    assert_eq!(stored.len(), 10);
    // `from` is the first cursor considered, `until` the first left out.
    let window = |from: usize, until: usize, limit: usize| EventQuery {
        from: stored[from].cursor,
        until: Some(stored[until].cursor),
        limit,
        ..EventQuery::default()
    };
    for limit in [1, 3, 100] {
        assert_eq!(every(&*store, window(3, 7, limit)), stored[3..7], "{limit}");
    }
    assert_eq!(every(&*store, window(4, 4, 10)), []);
    let from_only = EventQuery {
        from: stored[6].cursor,
        ..EventQuery::default()
    };
    assert_eq!(every(&*store, from_only), stored[6..]);
    let until_only = EventQuery {
        until: Some(stored[2].cursor),
        ..EventQuery::default()
    };
    assert_eq!(every(&*store, until_only), stored[..2]);
    // With a filter too.
    let logs_between = EventQuery {
        kind: Some(EventKind::Log),
        ..window(1, 9, 2)
    };
    let expected: Vec<StoredEvent> = stored[1..9]
        .iter()
        .filter(|e| e.event.kind() == EventKind::Log)
        .cloned()
        .collect();
    assert_eq!(every(&*store, logs_between), expected);
    let past_the_end = EventQuery {
        from: stored[9].cursor.advance(1),
        ..EventQuery::default()
    };
    assert_eq!(every(&*store, past_the_end), []);
}

fn a_page_holds_at_most_the_limit_and_a_zero_limit_counts_as_one(f: &dyn EventsFixture) {
    let store = f.fresh();
    store_new(&*store, &batch("a", 1, 1, tagged(T0, 1, 6)));
    store_new(&*store, &batch("b", 1, 1, tagged(T0, 2, 4)));
    let stored = all(&*store);
    assert_eq!(stored.len(), 10);
    let page = |limit: usize| {
        page(
            &*store,
            &EventQuery {
                limit,
                ..EventQuery::default()
            },
        )
    };
    let four = page(4);
    assert_eq!(four.events, stored[..4]);
    let next = four.next.expect("a full page has a next page");
    assert!(
        next > stored[3].cursor && next <= stored[4].cursor,
        "{next:?}"
    );
    let zero = page(0);
    assert_eq!(zero.events, stored[..1]);
    let next = zero.next.expect("a page of one, full");
    assert!(
        next > stored[0].cursor && next <= stored[1].cursor,
        "{next:?}"
    );
    assert_eq!(page(1).events, stored[..1]);
    let whole = page(11);
    assert_eq!((whole.events, whole.next), (stored.clone(), None));
    assert_eq!(
        every(
            &*store,
            EventQuery {
                limit: 0,
                ..EventQuery::default()
            }
        ),
        stored
    );
}

fn paging_with_next_returns_every_event_once_then_none(f: &dyn EventsFixture) {
    let store = f.fresh();
    for seq in 0..8u64 {
        let t = T0 + secs(seq as i64);
        let mut events: Vec<Event> = (0..30).map(|i| line(t, i)).collect();
        events.insert(3, metric(t, seq as f64));
        events.insert(10, status_event(t));
        store_new(
            &*store,
            &batch(["a", "b"][seq as usize % 2], 1, seq, events),
        );
    }
    let whole = page(
        &*store,
        &EventQuery {
            limit: 10_000,
            ..EventQuery::default()
        },
    );
    assert_eq!(whole.next, None);
    assert_eq!(whole.events.len(), 8 * 32);
    let logs_of_b: Vec<StoredEvent> = whole
        .events
        .iter()
        .filter(|e| e.agent_id == "b" && e.event.kind() == EventKind::Log)
        .cloned()
        .collect();
    assert_eq!(logs_of_b.len(), 4 * 30);
    for limit in [1, 2, 7, 30, 32, 1000] {
        let query = EventQuery {
            limit,
            ..EventQuery::default()
        };
        assert_eq!(every(&*store, query), whole.events, "pages of {limit}");
        let query = EventQuery {
            kind: Some(EventKind::Log),
            agent_id: Some("b".to_owned()),
            limit,
            ..EventQuery::default()
        };
        assert_eq!(
            every(&*store, query),
            logs_of_b,
            "b's logs in pages of {limit}"
        );
    }
    // Paging by hand: one page after another until `next` is `None`, then more arrive.
    let mut query = EventQuery {
        limit: 50,
        ..EventQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = page(&*store, &query);
        seen.extend(page.events);
        match page.next {
            Some(next) => query.from = next,
            None => break,
        }
    }
    assert_eq!(seen, whole.events);
    // Tailing: from just after the last event seen, what arrives later.
    let last = seen.last().map(|e| e.cursor).expect("events were seen");
    let more = batch("a", 1, 100, tagged(T0, 100, 3));
    store_new(&*store, &more);
    query.from = last.advance(1);
    assert_eq!(events(&every(&*store, query)), more.events);
}

// Host summaries.

fn host_summaries_hold_each_agents_latest_cpu_memory_and_fullest_filesystem(f: &dyn EventsFixture) {
    let store = f.fresh();
    let (t1, t2) = (T0 + secs(10), T0 + secs(20));
    // Two collections in one call, the newer first; and another agent.
    let newer = batch(
        "a",
        1,
        1,
        collection(t2, 0.75, 0.5, &[("/", 0.625), ("/var", 0.375)]),
    );
    let older = batch(
        "a",
        1,
        2,
        collection(t1, 0.25, 0.875, &[("/", 0.5), ("/var", 0.875)]),
    );
    let other = batch("b", 1, 1, collection(t1, 0.5, 0.25, &[("/data", 0.75)]));
    commit(&*store, &[newer, older, other]);
    let summaries = host_summaries(&*store);
    assert_eq!(
        summaries.keys().collect::<Vec<_>>(),
        ["a", "b"],
        "{summaries:?}"
    );
    assert_eq!(
        summaries["a"],
        HostSummary {
            cpu_busy: Some((0.25, t2)),
            memory_used: Some((0.5, t2)),
            fullest_fs: Some(("/".to_owned(), 0.625, t2)),
        }
    );
    assert_eq!(
        summaries["b"],
        HostSummary {
            cpu_busy: Some((0.5, t1)),
            memory_used: Some((0.25, t1)),
            fullest_fs: Some(("/data".to_owned(), 0.75, t1)),
        }
    );
    // A newer collection in a later call replaces the values, each on its own.
    let t3 = T0 + secs(30);
    store_new(
        &*store,
        &batch(
            "a",
            1,
            3,
            vec![gauge(CPU_UTILIZATION, &[("state", "idle")], t3, 0.5)],
        ),
    );
    assert_eq!(
        host_summaries(&*store)["a"],
        HostSummary {
            cpu_busy: Some((0.5, t3)),
            memory_used: Some((0.5, t2)),
            fullest_fs: Some(("/".to_owned(), 0.625, t2)),
        }
    );
}

fn late_or_resent_batches_never_roll_a_host_summary_back(f: &dyn EventsFixture) {
    let store = f.fresh();
    let (t1, t2) = (T0 + secs(10), T0 + secs(20));
    let first = batch("a", 1, 1, collection(t1, 0.25, 0.875, &[("/home", 0.875)]));
    let second = batch("a", 1, 2, collection(t2, 0.75, 0.5, &[("/", 0.625)]));
    store_new(&*store, &first);
    store_new(&*store, &second);
    let latest = HostSummary {
        cpu_busy: Some((0.25, t2)),
        memory_used: Some((0.5, t2)),
        fullest_fs: Some(("/".to_owned(), 0.625, t2)),
    };
    assert_eq!(host_summaries(&*store)["a"], latest);
    // The first batch sent again: a duplicate, and the summary stays.
    let resent = received(first, T0 + secs(60));
    assert_eq!(
        commit(&*store, std::slice::from_ref(&resent)),
        [BatchCommit::Duplicate]
    );
    assert_eq!(host_summaries(&*store)["a"], latest);
    // A batch of older points delivered late: new, stored, and the summary stays.
    let late = batch(
        "a",
        1,
        3,
        collection(T0, 0.0, 1.0, &[("/", 1.0), ("/srv", 1.0)]),
    );
    store_new(&*store, &late);
    assert_eq!(host_summaries(&*store)["a"], latest);
    // A late point of the latest collection joins it: the fullest filesystem of that time wins.
    let joins = batch(
        "a",
        1,
        4,
        vec![gauge(
            FILESYSTEM_UTILIZATION,
            &[("mountpoint", "/srv")],
            t2,
            0.75,
        )],
    );
    store_new(&*store, &joins);
    assert_eq!(
        host_summaries(&*store)["a"],
        HostSummary {
            fullest_fs: Some(("/srv".to_owned(), 0.75, t2)),
            ..latest
        }
    );
}

fn agents_without_summarised_metrics_have_no_host_summary(f: &dyn EventsFixture) {
    let store = f.fresh();
    assert_eq!(host_summaries(&*store), Default::default());
    // Logs, other metrics, per-core CPU, memory not `used`, a filesystem without a mountpoint:
    // none of them is summarised.
    let unsummarised = vec![
        log(T0, 10),
        metric(T0, 1.0),
        gauge(
            CPU_UTILIZATION,
            &[("cpu", "cpu0"), ("state", "idle")],
            T0,
            0.5,
        ),
        gauge(MEMORY_UTILIZATION, &[("state", "free")], T0, 0.5),
        gauge(FILESYSTEM_UTILIZATION, &[("device", "/dev/sda1")], T0, 0.5),
        status_event(T0),
    ];
    store_new(&*store, &batch("quiet", 1, 1, unsummarised));
    store_new(
        &*store,
        &batch(
            "busy",
            1,
            1,
            vec![gauge(CPU_UTILIZATION, &[("state", "idle")], T0, 0.75)],
        ),
    );
    let summaries = host_summaries(&*store);
    assert_eq!(
        summaries.keys().collect::<Vec<_>>(),
        ["busy"],
        "{summaries:?}"
    );
    assert_eq!(
        summaries["busy"],
        HostSummary {
            cpu_busy: Some((0.25, T0)),
            ..HostSummary::default()
        }
    );
}

// Metric queries.

fn metric_queries_reduce_each_step_by_the_aggregate(f: &dyn EventsFixture) {
    let store = f.fresh();
    let temp = |agent: &str, seq: u64, points: &[(i64, f64)]| {
        let events = points
            .iter()
            .map(|&(s, v)| gauge("app.temperature", &[("sensor", "x")], T0 + secs(s), v))
            .collect();
        batch(agent, 1, seq, events)
    };
    // Two batches, the later points first; points before and at the end of the range; and
    // another agent's series of the same name.
    store_new(
        &*store,
        &temp("a", 1, &[(20, 2.0), (35, 10.0), (90, 100.0)]),
    );
    store_new(&*store, &temp("a", 2, &[(-1, 100.0), (0, 1.0), (10, 3.0)]));
    store_new(&*store, &temp("b", 1, &[(0, 50.0)]));
    let mut query = MetricQuery::new("app.temperature", T0..T0 + secs(90), secs(30));
    query.agent_id = Some("a".to_owned());
    for (aggregate, first, second) in [
        (Aggregate::Avg, 2.0, 10.0),
        (Aggregate::Min, 1.0, 10.0),
        (Aggregate::Max, 3.0, 10.0),
        (Aggregate::Last, 2.0, 10.0),
        (Aggregate::Sum, 6.0, 10.0),
        (Aggregate::Count, 3.0, 1.0),
    ] {
        query.aggregate = aggregate;
        let answer = ask(&*store, &query);
        assert_eq!(
            (answer.step_ns, answer.selected),
            (secs(30), 1),
            "{answer:?}"
        );
        assert_eq!(answer.series.len(), 1, "{answer:?}");
        let series = &answer.series[0];
        let info = series.series.as_ref().expect("not combined");
        assert_eq!(
            (
                info.agent_id.as_str(),
                info.name.as_str(),
                info.unit.as_str()
            ),
            ("a", "app.temperature", "1")
        );
        assert_eq!(info.kind, MetricKind::Gauge);
        assert_eq!(info.attributes, [("sensor".to_owned(), "x".to_owned())]);
        // The third step has no point, so no value.
        assert_eq!(
            series.points,
            [(T0, first), (T0 + secs(30), second)],
            "{aggregate:?}"
        );
    }
    // Without an agent, both agents' series.
    query.agent_id = None;
    query.aggregate = Aggregate::Max;
    let answer = ask(&*store, &query);
    assert_eq!(answer.selected, 2);
    assert_eq!(
        by_agent(&answer),
        [
            ("a".to_owned(), vec![(T0, 3.0), (T0 + secs(30), 10.0)]),
            ("b".to_owned(), vec![(T0, 50.0)]),
        ]
    );
}

fn rate_and_increase_count_a_counters_rises_and_its_resets(f: &dyn EventsFixture) {
    let store = f.fresh();
    // 100 before the range, rising, reset to 5, rising again.
    let points = [(-10, 100.0), (0, 110.0), (5, 130.0), (10, 5.0), (15, 25.0)];
    let events = points
        .iter()
        .map(|&(s, v)| counter("net.bytes", T0 + secs(s), v))
        .collect();
    store_new(&*store, &batch("a", 1, 1, events));
    let mut query = MetricQuery::new("net.bytes", T0..T0 + secs(20), secs(10));
    query.function = Some(Function::Increase);
    let answer = ask(&*store, &query);
    assert_eq!(answer.selected, 1);
    assert_eq!(
        answer.series[0].series.as_ref().map(|s| s.kind),
        Some(MetricKind::Counter)
    );
    // The fall counts as a restart from zero: 5 gained, then 20.
    assert_eq!(answer.series[0].points, [(T0, 30.0), (T0 + secs(10), 25.0)]);
    query.function = Some(Function::Rate);
    let answer = ask(&*store, &query);
    assert_eq!(answer.series[0].points, [(T0, 3.0), (T0 + secs(10), 2.5)]);
    // A range that starts mid-way takes the point before it.
    let mut late = MetricQuery::new("net.bytes", T0 + secs(10)..T0 + secs(20), secs(10));
    late.function = Some(Function::Increase);
    let answer = ask(&*store, &late);
    assert_eq!(answer.series[0].points, [(T0 + secs(10), 25.0)]);
}

fn combine_reduces_the_selected_series_step_by_step(f: &dyn EventsFixture) {
    let store = f.fresh();
    let load = |agent: &str, points: &[(i64, f64)]| {
        let events = points
            .iter()
            .map(|&(s, v)| gauge("app.load", &[], T0 + secs(s), v))
            .collect();
        batch(agent, 1, 1, events)
    };
    commit(
        &*store,
        &[
            load("a", &[(0, 1.0), (10, 4.0)]),
            load("b", &[(0, 3.0), (20, 5.0)]),
        ],
    );
    let mut query = MetricQuery::new("app.load", T0..T0 + secs(30), secs(10));
    for (how, expected) in [
        (Combine::Avg, [2.0, 4.0, 5.0]),
        (Combine::Sum, [4.0, 4.0, 5.0]),
        (Combine::Min, [1.0, 4.0, 5.0]),
        (Combine::Max, [3.0, 4.0, 5.0]),
    ] {
        query.combine = Some(how);
        let answer = ask(&*store, &query);
        assert_eq!(answer.selected, 2, "{how:?}");
        assert_eq!(answer.series.len(), 1, "{how:?}: {answer:?}");
        assert_eq!(answer.series[0].series, None, "{how:?}");
        assert_eq!(
            answer.series[0].points,
            [
                (T0, expected[0]),
                (T0 + secs(10), expected[1]),
                (T0 + secs(20), expected[2])
            ],
            "{how:?}"
        );
    }
    // One agent: its series alone.
    query.agent_id = Some("b".to_owned());
    query.combine = Some(Combine::Sum);
    let answer = ask(&*store, &query);
    assert_eq!(answer.selected, 1);
    assert_eq!(answer.series[0].points, [(T0, 3.0), (T0 + secs(20), 5.0)]);
}

fn matchers_select_series_by_their_attributes(f: &dyn EventsFixture) {
    let store = f.fresh();
    let series: [&[(&str, &str)]; 4] = [
        &[("state", "idle")],
        &[("cpu", "0"), ("state", "idle")],
        &[("cpu", "1"), ("state", "user")],
        &[("state", "user")],
    ];
    let events = series
        .iter()
        .map(|attributes| gauge(CPU_UTILIZATION, attributes, T0, 0.5))
        .collect();
    store_new(&*store, &batch("a", 1, 1, events));
    let selected = |matchers: &[&str]| -> Vec<String> {
        let mut query = MetricQuery::new(CPU_UTILIZATION, T0..T0 + secs(10), secs(10));
        query.matchers = matchers
            .iter()
            .map(|m| Matcher::parse(m).expect("a matcher"))
            .collect();
        let answer = ask(&*store, &query);
        let mut names: Vec<String> = answer
            .series
            .iter()
            .map(|s| {
                let info = s.series.as_ref().expect("not combined");
                assert_eq!(s.points, [(T0, 0.5)], "{info:?}");
                info.attributes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        assert_eq!(answer.selected, names.len());
        names.sort();
        names
    };
    let totals = ["state=idle", "state=user"];
    let cores = ["cpu=0,state=idle", "cpu=1,state=user"];
    let idle = ["cpu=0,state=idle", "state=idle"];
    let user = ["cpu=1,state=user", "state=user"];
    assert_eq!(selected(&[]).len(), 4);
    // An attribute a series lacks reads as empty.
    assert_eq!(selected(&["cpu="]), totals);
    assert_eq!(selected(&["cpu!="]), cores);
    assert_eq!(selected(&["state=idle"]), idle);
    assert_eq!(selected(&["state!=idle"]), user);
    // Regular expressions match the whole value.
    assert_eq!(selected(&["cpu=~[0-9]+"]), cores);
    assert_eq!(selected(&["state=~id"]), Vec::<String>::new());
    assert_eq!(selected(&["state=~id.*"]), idle);
    assert_eq!(selected(&["state!~id.*"]), user);
    assert_eq!(selected(&["state!~u"]).len(), 4);
    // Every matcher must hold.
    assert_eq!(selected(&["state=idle", "cpu!="]), ["cpu=0,state=idle"]);
    assert_eq!(
        selected(&["state=idle", "state=user"]),
        Vec::<String>::new()
    );
}

fn wrong_metric_queries_are_refused_naming_the_part(f: &dyn EventsFixture) {
    let store = f.fresh();
    store_new(
        &*store,
        &batch(
            "a",
            1,
            1,
            vec![
                gauge("app.load", &[], T0, 1.0),
                counter("net.bytes", T0, 10.0),
            ],
        ),
    );
    let refused = |query: &MetricQuery| -> &'static str {
        match store.metric_query(query) {
            Err(MetricQueryError::Query(e)) => e.part,
            other => panic!("{query:?} should be refused as a query: {other:?}"),
        }
    };
    let fine = MetricQuery::new("app.load", T0..T0 + secs(60), secs(10));
    assert_eq!(ask(&*store, &fine).selected, 1);
    let unnamed = MetricQuery {
        name: String::new(),
        ..fine.clone()
    };
    assert_eq!(refused(&unnamed), "name");
    #[allow(clippy::reversed_empty_ranges)] // the point of the check
    let backwards = MetricQuery {
        range: T0 + secs(60)..T0,
        ..fine.clone()
    };
    assert_eq!(refused(&backwards), "range");
    let no_step = MetricQuery {
        step_ns: 0,
        ..fine.clone()
    };
    assert_eq!(refused(&no_step), "step");
    let too_many_steps = MetricQuery {
        range: T0..T0 + secs(20_000),
        step_ns: secs(1),
        ..fine.clone()
    };
    assert_eq!(refused(&too_many_steps), "step");
    // Rate and increase are for counters.
    let rate_of_a_gauge = MetricQuery {
        function: Some(Function::Rate),
        ..fine.clone()
    };
    assert_eq!(refused(&rate_of_a_gauge), "function");
    let rate_of_a_counter = MetricQuery {
        name: "net.bytes".to_owned(),
        ..rate_of_a_gauge
    };
    assert_eq!(ask(&*store, &rate_of_a_counter).selected, 1);
    // A name nobody sends selects nothing; that is no error.
    let nothing = MetricQuery {
        name: "nobody.sends.this".to_owned(),
        ..fine
    };
    let answer = ask(&*store, &nothing);
    assert_eq!((answer.selected, answer.series), (0, vec![]));
}

// Retention.

fn retention_removes_events_past_their_kinds_period_and_keeps_the_rest(f: &dyn EventsFixture) {
    let store = f.fresh();
    // Metrics 30 days, logs 14, file-integrity changes 365, agent status 7.
    let retention = Retention::default();
    let now = T0 + days(40);
    // One event of each kind per age, made and received at the same time, oldest first. No age
    // lies within a day before or two days after a period's end, where stores may differ.
    let ages = [33, 28, 17, 12, 10, 5];
    let mut previous: Option<Event> = None;
    for (i, &age) in ages.iter().enumerate() {
        let t = now - days(age);
        let change = match &previous {
            None => fim(t),
            Some(p) => fim_next(p, t),
        };
        previous = Some(change.clone());
        let events = vec![metric(t, age as f64), log(t, 20), change, status_event(t)];
        store_new(&*store, &received(batch("a", 1, i as u64 + 1, events), t));
    }
    let period = |kind: EventKind| (retention.for_kind(kind).as_secs() / 86_400) as i64;
    let gone = |kind: EventKind, age: i64| {
        if age > period(kind) + 2 {
            true
        } else if age < period(kind) - 1 {
            false
        } else {
            panic!("{age} days lies too close to the {kind:?} period")
        }
    };
    let report = retain(&*store, &retention, now);
    for kind in EventKind::ALL {
        let old = ages.iter().filter(|&&age| gone(kind, age)).count() as u64;
        assert!(
            report.deleted(kind) >= old,
            "{kind:?}: {old} old events, {report:?}"
        );
    }
    let kept = |kind: EventKind| -> Vec<i64> {
        ages.iter()
            .filter(|&&age| !gone(kind, age))
            .map(|&age| now - days(age))
            .collect()
    };
    for kind in [EventKind::Log, EventKind::Fim, EventKind::Status] {
        let query = EventQuery {
            kind: Some(kind),
            ..EventQuery::default()
        };
        let left: Vec<i64> = every(&*store, query)
            .iter()
            .map(|e| e.event.time_ns())
            .collect();
        assert_eq!(left, kept(kind), "{kind:?}");
    }
    assert_eq!(kept(EventKind::Fim).len(), ages.len());
    // Metric points by query: one a day.
    let mut query = MetricQuery::new("system.memory.usage", now - days(40)..now, days(1));
    query.aggregate = Aggregate::Count;
    let answer = ask(&*store, &query);
    let points: Vec<(i64, f64)> = answer
        .series
        .iter()
        .flat_map(|s| s.points.clone())
        .collect();
    let expected: Vec<(i64, f64)> = kept(EventKind::Metric)
        .into_iter()
        .map(|t| (t, 1.0))
        .collect();
    assert_eq!(points, expected);
    let metrics = EventQuery {
        kind: Some(EventKind::Metric),
        ..EventQuery::default()
    };
    let oldest_kept = now - days(30);
    assert!(
        every(&*store, metrics)
            .iter()
            .all(|e| e.event.time_ns() > oldest_kept),
        "an expired metric point is still read"
    );
    // A second pass at the same time finds the same events left.
    retain(&*store, &retention, now);
    assert_eq!(
        all(&*store)
            .iter()
            .filter(|e| e.event.kind() == EventKind::Log)
            .count(),
        kept(EventKind::Log).len()
    );
}

fn a_batch_whose_events_retention_removed_stays_a_duplicate(f: &dyn EventsFixture) {
    let store = f.fresh();
    let now = T0 + days(40);
    let first = received(batch("a", 1, 1, tagged(T0, 1, 2)), T0);
    let second = received(batch("a", 1, 2, tagged(T0 + secs(1), 2, 2)), T0 + secs(1));
    // Sent once the first had been acknowledged: 2 is the oldest the agent still held.
    let third = with_low_water(
        received(batch("a", 1, 3, tagged(T0 + days(30), 3, 2)), T0 + days(30)),
        2,
    );
    for b in [&first, &second, &third] {
        store_new(&*store, b);
    }
    // Logs are kept 14 days: the first two batches' events go, the third's stay.
    let report = retain(&*store, &Retention::default(), now);
    assert!(report.log >= 4, "{report:?}");
    assert_eq!(events(&all(&*store)), third.events);
    // Sent again now: below the mark (its entry may be forgotten), at the mark and above it
    // (their entries kept): all duplicates, and nothing comes back.
    let resent = [first, second, third].map(|b| received(b, now));
    for b in &resent {
        assert_eq!(
            commit(&*store, std::slice::from_ref(b)),
            [BatchCommit::Duplicate],
            "seq {}",
            b.seq
        );
    }
    assert_eq!(outcomes(&commit(&*store, &resent)), [Duplicate; 3]);
    assert_eq!(events(&all(&*store)), resent[2].events);
    // A second pass, and still.
    retain(&*store, &Retention::default(), now);
    assert_eq!(outcomes(&commit(&*store, &resent)), [Duplicate; 3]);
    // New batches are stored.
    let fourth = received(batch("a", 1, 4, tagged(now, 4, 1)), now);
    store_new(&*store, &fourth);
    assert_eq!(
        events(&all(&*store)),
        [resent[2].events.clone(), fourth.events].concat()
    );
}

fn a_spool_never_replaced_stays_a_duplicate_past_the_longest_period(f: &dyn EventsFixture) {
    let store = f.fresh();
    let retention = Retention::default();
    // The agent's only spool: retention may forget the entries of spools replaced longer ago
    // than the longest period, and of none else but those below a low-water mark.
    let first = received(batch("a", 1, 1, tagged(T0, 1, 2)), T0);
    let second = received(batch("a", 1, 2, tagged(T0, 2, 2)), T0);
    commit(&*store, &[first.clone(), second.clone()]);
    let long_after = T0 + duration_ns(retention.longest()) + days(3);
    let report = retain(&*store, &retention, long_after);
    assert!(report.log >= 4, "{report:?}");
    assert_eq!(all(&*store), []);
    let resent = [first, second].map(|b| received(b, long_after));
    assert_eq!(outcomes(&commit(&*store, &resent)), [Duplicate; 2]);
    assert_eq!(all(&*store), []);
}

// The file-integrity trail.

fn an_intact_file_integrity_trail_adds_no_notices(f: &dyn EventsFixture) {
    let store = f.fresh();
    let t = fim_chain(6, T0);
    let mut answers = commit(
        &*store,
        &[
            batch("a", 1, 1, t[..2].to_vec()),
            batch("a", 1, 2, vec![log(T0, 3), t[2].clone()]),
            // Another agent's trail starts at 1 on its own.
            batch("b", 1, 1, t[..1].to_vec()),
        ],
    );
    answers.extend(commit(&*store, &[batch("a", 1, 3, t[3..].to_vec())]));
    // Batches in flight at once, stored out of order: the later one waits for the earlier.
    let in_flight =
        |seq: u64, events: &[Event]| with_low_water(batch("c", 1, seq, events.to_vec()), 1);
    answers.extend(commit(&*store, &[in_flight(2, &t[2..4])]));
    answers.extend(commit(&*store, &[in_flight(1, &t[..2])]));
    answers.extend(commit(&*store, &[oldest_batch("c", 1, 3, t[4..].to_vec())]));
    for answer in &answers {
        assert!(
            matches!(answer, BatchCommit::Stored { notices, .. } if notices.is_empty()),
            "{answer:?}"
        );
    }
    let stored = all(&*store);
    assert_eq!(notices_in(&stored), []);
    let fims = stored
        .iter()
        .filter(|e| e.event.kind() == EventKind::Fim)
        .count();
    assert_eq!(fims, 6 + 1 + 6);
}

fn a_gap_in_the_trail_adds_a_notice_after_the_batchs_events(f: &dyn EventsFixture) {
    let store = f.fresh();
    let t = fim_chain(5, T0);
    store_new(&*store, &oldest_batch("a", 1, 1, t[..2].to_vec()));
    // Event 3 never comes; 4 arrives in the oldest batch the agent holds, so 3 is lost.
    let gap = oldest_batch("a", 1, 2, vec![log(T0, 20), t[3].clone()]);
    let answers = commit(&*store, std::slice::from_ref(&gap));
    let BatchCommit::Stored { start, notices } = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_notice(&notices[0]);
    let stored = all(&*store);
    // The event is stored all the same, and the notice right after the batch's events.
    let got = stored_at(&stored, *start, 3);
    assert_eq!(events(&got), [gap.events.clone(), notices.clone()].concat());
    assert!(got.iter().all(|e| e.agent_id == "a"), "{got:?}");
    assert_eq!(notices_in(&stored), *notices);
    // The trail goes on from the event after the gap.
    store_new(&*store, &oldest_batch("a", 1, 3, t[4..].to_vec()));
    let fims: Vec<Event> = all(&*store)
        .into_iter()
        .filter(|e| e.event.kind() == EventKind::Fim)
        .map(|e| e.event)
        .collect();
    assert_eq!(fims, [&t[..2], &t[3..]].concat());
}

fn an_altered_event_adds_a_notice_and_the_trail_goes_on(f: &dyn EventsFixture) {
    let store = f.fresh();
    let t = fim_chain(4, T0);
    store_new(&*store, &oldest_batch("a", 1, 1, t[..1].to_vec()));
    // Event 2 altered on the way; the next follows it as the agent chained it.
    let Event::Fim(mut altered) = t[1].clone() else {
        unreachable!("a trail holds file-integrity events")
    };
    altered.path = "/etc/shadow".to_owned();
    let edited = oldest_batch("a", 1, 2, vec![Event::Fim(altered), t[2].clone()]);
    let answers = commit(&*store, std::slice::from_ref(&edited));
    let BatchCommit::Stored { start, notices } = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_notice(&notices[0]);
    let stored = all(&*store);
    let got = stored_at(&stored, *start, 3);
    assert_eq!(
        events(&got),
        [edited.events.clone(), notices.clone()].concat()
    );
    assert!(got.iter().all(|e| e.agent_id == "a"), "{got:?}");
    let logs = EventQuery {
        kind: Some(EventKind::Log),
        ..EventQuery::default()
    };
    assert_eq!(events(&every(&*store, logs)), *notices);
    store_new(&*store, &oldest_batch("a", 1, 3, t[3..].to_vec()));
    assert_eq!(notices_in(&all(&*store)).len(), 1);
}

fn a_duplicate_batch_leaves_the_trail_alone(f: &dyn EventsFixture) {
    let store = f.fresh();
    let t = fim_chain(4, T0);
    let first = oldest_batch("a", 1, 1, t[..2].to_vec());
    store_new(&*store, &first);
    // Sent again: a duplicate, and no replay is reported.
    assert_eq!(
        commit(&*store, std::slice::from_ref(&first)),
        [BatchCommit::Duplicate]
    );
    // A batch with a stored key carrying the next event, were it checked, would move the trail
    // on and make that event a replay when it comes; and a repeat in the same call.
    let stale_key = batch("a", 1, 1, t[2..3].to_vec());
    let next = oldest_batch("a", 1, 2, t[2..3].to_vec());
    let answers = commit(&*store, &[stale_key, next.clone(), next]);
    assert_eq!(outcomes(&answers), [Duplicate, Stored, Duplicate]);
    assert_eq!(answers[1], BatchCommit::stored(start_of(&answers[1])));
    store_new(&*store, &oldest_batch("a", 1, 3, t[3..].to_vec()));
    let stored = all(&*store);
    assert_eq!(notices_in(&stored), []);
    assert_eq!(events(&stored), t);
}

// Helpers.

fn days(n: i64) -> i64 {
    secs(n * 86_400)
}

/// Commits `batches` in one call, which must succeed with one answer per batch.
fn commit(store: &dyn EventStore, batches: &[IncomingBatch]) -> Vec<BatchCommit> {
    let answers = store
        .commit_batches(batches)
        .unwrap_or_else(|e| panic!("committing {} batches: {e}", batches.len()));
    assert_eq!(
        answers.len(),
        batches.len(),
        "one answer per batch: {answers:?}"
    );
    answers
}

/// Commits one batch that must be new and break no trail; answers its first cursor.
fn store_new(store: &dyn EventStore, batch: &IncomingBatch) -> Cursor {
    let answers = commit(store, std::slice::from_ref(batch));
    match &answers[0] {
        BatchCommit::Stored { start, notices } if notices.is_empty() => *start,
        other => panic!(
            "{} spool {} seq {} should be stored without notices: {other:?}",
            batch.agent_id, batch.spool_id, batch.seq
        ),
    }
}

fn end(store: &dyn EventStore) -> Cursor {
    store.end().unwrap_or_else(|e| panic!("end(): {e}"))
}

fn page(store: &dyn EventStore, query: &EventQuery) -> EventPage {
    store
        .events(query)
        .unwrap_or_else(|e| panic!("{query:?}: {e}"))
}

fn host_summaries(store: &dyn EventStore) -> BTreeMap<String, HostSummary> {
    store
        .host_summaries()
        .unwrap_or_else(|e| panic!("host_summaries(): {e}"))
}

fn ask(store: &dyn EventStore, query: &MetricQuery) -> MetricAnswer {
    store
        .metric_query(query)
        .unwrap_or_else(|e| panic!("{query:?}: {e}"))
}

fn retain(store: &dyn EventStore, retention: &Retention, now_ns: i64) -> RetentionReport {
    store
        .enforce_retention(retention, now_ns)
        .unwrap_or_else(|e| panic!("retention at {now_ns}: {e}"))
}

fn outcomes(answers: &[BatchCommit]) -> Vec<CommitOutcome> {
    answers.iter().map(BatchCommit::outcome).collect()
}

fn start_of(answer: &BatchCommit) -> Cursor {
    match answer {
        BatchCommit::Stored { start, .. } => *start,
        BatchCommit::Duplicate => panic!("a duplicate has no cursors"),
    }
}

fn received(batch: IncomingBatch, received_ns: i64) -> IncomingBatch {
    IncomingBatch {
        received_ns,
        ..batch
    }
}

fn with_low_water(batch: IncomingBatch, low_water_seq: u64) -> IncomingBatch {
    IncomingBatch {
        low_water_seq,
        ..batch
    }
}

/// Every event matching `query`, following `next` from page to page, checking what each page
/// promises: at most `limit` events (one for zero), in cursor order within `from..until`, and a
/// `next` only after a full page, beyond its last event.
fn every(store: &dyn EventStore, mut query: EventQuery) -> Vec<StoredEvent> {
    let limit = query.limit.max(1);
    let mut found: Vec<StoredEvent> = Vec::new();
    for _ in 0..10_000 {
        let page = page(store, &query);
        assert!(
            page.events.len() <= limit,
            "{} events in a page of {limit}",
            page.events.len()
        );
        let full = page.events.len() == limit;
        for e in page.events {
            assert!(e.cursor >= query.from, "{e:?} before {:?}", query.from);
            if let Some(until) = query.until {
                assert!(e.cursor < until, "{e:?} not before {until:?}");
            }
            if let Some(previous) = found.last() {
                assert!(previous.cursor < e.cursor, "{e:?} after {previous:?}");
            }
            found.push(e);
        }
        let Some(next) = page.next else {
            return found;
        };
        let last = found.last().map(|e| e.cursor);
        assert!(
            last.is_some_and(|last| next > last),
            "`next` {next:?} must follow the page's last event {last:?}"
        );
        assert!(full, "`next` {next:?} after a page that was not full");
        query.from = next;
    }
    panic!("{query:?} has more than 10,000 pages");
}

/// Every stored event, fleet-wide, of every kind.
fn all(store: &dyn EventStore) -> Vec<StoredEvent> {
    every(store, EventQuery::default())
}

fn events(stored: &[StoredEvent]) -> Vec<Event> {
    stored.iter().map(|e| e.event.clone()).collect()
}

fn cursors(stored: &[StoredEvent]) -> Vec<Cursor> {
    stored.iter().map(|e| e.cursor).collect()
}

/// The stored events at the `n` cursors from `start`, each of which must hold one.
fn stored_at(stored: &[StoredEvent], start: Cursor, n: usize) -> Vec<StoredEvent> {
    (0..n)
        .map(|i| {
            let cursor = start.advance(i);
            stored
                .iter()
                .find(|e| e.cursor == cursor)
                .cloned()
                .unwrap_or_else(|| panic!("nothing stored at {cursor:?} ({i} from {start:?})"))
        })
        .collect()
}

/// The events at the `n` cursors from `start`.
fn at(stored: &[StoredEvent], start: Cursor, n: usize) -> Vec<Event> {
    events(&stored_at(stored, start, n))
}

/// `n` log records of batch `seq`, told apart by their bodies, a nanosecond apart from `time_ns`.
fn tagged(time_ns: i64, seq: u64, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::Log(LogRecord {
                time_ns: time_ns + i as i64,
                source: "/var/log/app.log".to_owned(),
                severity: Some(Severity::Info),
                body: format!("batch {seq} event {i}"),
                attributes: vec![("seq".to_owned(), seq.to_string())],
            })
        })
        .collect()
}

fn log_bodies(stored: &[StoredEvent]) -> Vec<String> {
    stored
        .iter()
        .filter_map(|e| match &e.event {
            Event::Log(l) => Some(l.body.clone()),
            _ => None,
        })
        .collect()
}

/// A log line that compresses well beside its neighbours.
fn line(time_ns: i64, i: usize) -> Event {
    Event::Log(LogRecord {
        time_ns,
        source: "/var/log/nginx/access.log".to_owned(),
        severity: Some(Severity::Warning),
        body: format!("GET /api/v1/items/{i:06} status=503 upstream timed out"),
        attributes: vec![("line".to_owned(), i.to_string())],
    })
}

fn counter(name: &str, time_ns: i64, value: f64) -> Event {
    Event::Metric(MetricPoint {
        kind: MetricKind::Counter,
        unit: "By".to_owned(),
        ..point(name, &[("direction", "receive")], time_ns, value)
    })
}

/// One event of every kind and then some, with fields set that a store might lose: attributes
/// out of alphabetical order, a log record without severity or attributes, a counter, a status
/// with nested values.
fn every_kind(t: i64) -> Vec<Event> {
    let status = AgentStatus {
        time_ns: t + 5,
        agent_version: "1.2.3".to_owned(),
        started_ns: t - secs(3600),
        spool_bytes: 1 << 20,
        spool_events: 120,
        backlog_batches: 3,
        spool_cap_bytes: 1 << 30,
        batches_sent: 40,
        batches_acked: 37,
        events_acked: 4000,
        drops: DropCounters {
            oversized: 2,
            disk_full: 1,
            ..DropCounters::default()
        },
        collector_errors: vec![CollectorError {
            collector: "metrics.filesystem".to_owned(),
            reason: "statvfs /mnt/nfs: timed out".to_owned(),
            since_ns: t - secs(60),
        }],
        logs: LogStatus {
            files_open: 4,
            lag_bytes: 512,
            lost_bytes: 0,
            lagging: vec![("/var/log/syslog".to_owned(), 512)],
        },
        cert_not_after_ns: t + days(90),
        cert_renewal_error: Some("the aggregator refused the renewal".to_owned()),
    };
    vec![
        gauge(
            "system.filesystem.usage",
            &[
                ("state", "used"),
                ("mountpoint", "/"),
                ("device", "/dev/sda1"),
            ],
            t,
            123_456_789.0,
        ),
        counter("system.network.io", t + 1, 98_765.0),
        log(t + 2, 40),
        Event::Log(LogRecord {
            time_ns: t + 3,
            source: "journal".to_owned(),
            severity: None,
            body: "ünïcødé, \"quotes\", a \\ and\na second line".to_owned(),
            attributes: vec![],
        }),
        crate::store::testutil::fim(t + 4),
        Event::Status(status),
    ]
}

/// Asserts that `event` is a notice of a break in a file-integrity trail.
fn assert_notice(event: &Event) {
    match event {
        Event::Log(l) if l.source == NOTICE_SOURCE => {
            assert_eq!(l.severity, Some(Severity::Critical), "{l:?}");
        }
        other => panic!("not a notice of a broken trail: {other:?}"),
    }
}

/// The notices of broken trails among `stored`.
fn notices_in(stored: &[StoredEvent]) -> Vec<Event> {
    stored
        .iter()
        .filter(|e| matches!(&e.event, Event::Log(l) if l.source == NOTICE_SOURCE))
        .map(|e| e.event.clone())
        .collect()
}

/// Each series' points by agent, sorted by agent.
fn by_agent(answer: &MetricAnswer) -> Vec<(String, Vec<(i64, f64)>)> {
    let mut series: Vec<(String, Vec<(i64, f64)>)> = answer
        .series
        .iter()
        .map(|s| {
            let info = s.series.as_ref().expect("not combined");
            (info.agent_id.clone(), s.points.clone())
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    series
}
