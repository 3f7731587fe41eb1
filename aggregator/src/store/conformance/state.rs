//! The [`StateStore`](crate::store::StateStore) and
//! [`AlertingStore`](crate::store::alerting::AlertingStore) contracts.
//!
//! Each case takes a fresh store and checks what the traits' documentation promises, through the
//! traits only: the agent registry and its marks, the registry generation, API tokens and the
//! audit log, enrollment tokens and enrolled keys, and the alerting engine's state and outbox.

// Test code, built into the library for the end-to-end tests: as in `#[cfg(test)]` code, a panic
// is how a case reports its failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use outpost_common::event::{AgentStatus, CollectorError, DropReason, HostFacts};

use super::{Case, StateFixture};
use crate::enroll::token::{self as enrollment_token, EnrollmentToken, TokenSpec};
use crate::notify::{Message, MessageAlert, Status};
use crate::rules::engine::{Ack, AlertRecord, HistoryEntry, HistoryKind, Outcome};
use crate::rules::file::Severity;
use crate::rules::lifecycle::AlertState;
use crate::rules::matcher::{Silence, parse};
use crate::rules::route::Group;
use crate::store::alerting::{Attempt, LogQuery, OutboxState, StoredSilence};
use crate::store::testutil::{T0, hello, secs};
use crate::store::{AuditEntry, Cursor, Enrollment, RegistryUpdate, StateBackend, StoreError};
use crate::tokens::{self, Role};

/// `Case { name: "f", run: f }` for each function.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$(Case { name: stringify!($case), run: $case }),*]
    };
}

/// Every case of the state-store contract.
pub const CASES: &[Case<dyn StateFixture>] = cases![
    the_registry_follows_hello_heartbeats_batches_and_disconnects,
    one_agent_is_read_by_its_id,
    updates_apply_in_order_in_one_write,
    agents_are_sorted_by_id_in_byte_order,
    status_marks_follow_successive_statuses,
    what_an_agent_reported_reads_back_whole,
    a_removed_agent_is_hidden_until_its_next_hello,
    the_registry_generation_changes_with_every_registry_write,
    api_tokens_are_stored_listed_and_revoked_and_names_reused_once_revoked,
    a_token_use_moves_forward_only,
    the_audit_log_pages_newest_first,
    enrollment_tokens_are_stored_listed_and_revoked,
    each_enrollment_spends_a_use_and_its_key_only_once,
    alert_state_is_saved_whole_and_loaded_back,
    due_notifications_keep_each_groups_order,
    attempts_are_counted_with_their_outcome,
    the_notification_log_pages_newest_first_and_by_alert,
    alert_history_pages_newest_first_and_by_alert,
    expiry_forgets_finished_notifications_history_and_ended_silences,
];

// --- The agent registry -------------------------------------------------------------------

fn hello_at(agent_id: &str, spool_id: u64, status: AgentStatus, now_ns: i64) -> RegistryUpdate {
    RegistryUpdate::Hello {
        agent_id: agent_id.to_owned(),
        hello: hello(spool_id, status),
        now_ns,
    }
}

fn heartbeat(agent_id: &str, status: &AgentStatus, now_ns: i64) -> RegistryUpdate {
    RegistryUpdate::Heartbeat {
        agent_id: agent_id.to_owned(),
        status: status.clone(),
        now_ns,
    }
}

fn disconnect(agent_id: &str, reason: &str, now_ns: i64) -> RegistryUpdate {
    RegistryUpdate::Disconnect {
        agent_id: agent_id.to_owned(),
        reason: reason.to_owned(),
        now_ns,
    }
}

fn seen(agent_id: &str, now_ns: i64) -> RegistryUpdate {
    RegistryUpdate::Seen {
        agent_id: agent_id.to_owned(),
        now_ns,
    }
}

fn ids(store: &dyn StateBackend) -> Vec<String> {
    store
        .agents()
        .unwrap()
        .into_iter()
        .map(|a| a.agent_id)
        .collect()
}

fn the_registry_follows_hello_heartbeats_batches_and_disconnects(f: &dyn StateFixture) {
    let store = f.fresh();
    assert_eq!(store.agents().unwrap(), vec![]);
    store
        .record(&hello_at("web-1", 42, AgentStatus::default(), T0))
        .unwrap();
    let a = &store.agents().unwrap()[0];
    assert_eq!(a.agent_id, "web-1");
    assert_eq!(a.spool_id, Some(42));
    assert_eq!((a.first_seen_ns, a.last_seen_ns), (T0, T0));
    assert_eq!(a.agent_version.as_deref(), Some("1.2.3"));
    let host = a.host.as_ref().unwrap();
    assert_eq!(
        (
            host.hostname.as_str(),
            host.arch.as_str(),
            host.memory_bytes
        ),
        ("web-1.example", "x86_64", 4 << 30)
    );
    assert!(a.connected);
    assert_eq!(a.status, Some(AgentStatus::default()));
    assert_eq!(a.status_received_ns, Some(T0));
    assert_eq!(a.host_summary, None, "a state store knows no host summary");

    // A heartbeat whose clock runs 2 s ahead, with a growing backlog and new drops.
    let mut status = AgentStatus {
        time_ns: T0 + secs(12),
        backlog_batches: 5,
        collector_errors: vec![CollectorError {
            collector: "metrics.filesystem".into(),
            reason: "statvfs failed".into(),
            since_ns: T0,
        }],
        ..AgentStatus::default()
    };
    status.drops.add(DropReason::SpoolFullEvicted, 12);
    store
        .record(&heartbeat("web-1", &status, T0 + secs(10)))
        .unwrap();
    let a = &store.agents().unwrap()[0];
    assert_eq!(a.last_seen_ns, T0 + secs(10));
    assert_eq!(a.clock_skew_ns, Some(secs(2)));
    assert_eq!(a.backlog_rising_since_ns, Some(T0 + secs(10)));
    assert_eq!(a.drops_changed_ns, Some(T0 + secs(10)));
    assert_eq!(a.drops_last_increase.spool_full_evicted, 12);
    assert_eq!(a.status.as_ref(), Some(&status));
    assert_eq!(a.status_received_ns, Some(T0 + secs(10)));

    // Still rising: the start is kept; drops unchanged: their time too.
    status.backlog_batches = 9;
    store
        .record(&heartbeat("web-1", &status, T0 + secs(20)))
        .unwrap();
    let a = &store.agents().unwrap()[0];
    assert_eq!(a.backlog_rising_since_ns, Some(T0 + secs(10)));
    assert_eq!(a.drops_changed_ns, Some(T0 + secs(10)));

    store.record(&seen("web-1", T0 + secs(25))).unwrap();
    assert_eq!(store.agents().unwrap()[0].last_seen_ns, T0 + secs(25));

    store
        .record(&disconnect(
            "web-1",
            "connection lost: timed out",
            T0 + secs(30),
        ))
        .unwrap();
    let a = &store.agents().unwrap()[0];
    assert!(!a.connected);
    assert_eq!(a.last_disconnect_ns, Some(T0 + secs(30)));
    assert_eq!(
        a.last_disconnect_reason.as_deref(),
        Some("connection lost: timed out")
    );
    assert_eq!((a.first_seen_ns, a.last_seen_ns), (T0, T0 + secs(30)));

    // A heartbeat after the disconnect: connected again.
    store
        .record(&heartbeat("web-1", &status, T0 + secs(35)))
        .unwrap();
    assert!(store.agents().unwrap()[0].connected);

    // A heartbeat from an agent never registered creates its row; rows come sorted.
    store
        .record(&heartbeat("app-1", &AgentStatus::default(), T0 + secs(40)))
        .unwrap();
    assert_eq!(ids(&*store), ["app-1", "web-1"]);
    let app = store.agent("app-1").unwrap().unwrap();
    assert_eq!((app.first_seen_ns, app.spool_id), (T0 + secs(40), None));
    assert_eq!(
        (app.host.as_ref(), app.agent_version.as_ref()),
        (None, None)
    );
    assert!(app.connected);
}

fn one_agent_is_read_by_its_id(f: &dyn StateFixture) {
    let store = f.fresh();
    assert_eq!(store.agent("web-1").unwrap(), None);
    store
        .record_all(&[
            hello_at("web-1", 1, AgentStatus::default(), T0),
            hello_at("app-1", 2, AgentStatus::default(), T0),
        ])
        .unwrap();
    let a = store.agent("web-1").unwrap().unwrap();
    assert_eq!((a.agent_id.as_str(), a.spool_id), ("web-1", Some(1)));
    assert_eq!(store.agent("web").unwrap(), None);
    assert_eq!(store.agent("WEB-1").unwrap(), None);
    assert_eq!(Some(a), store.agents().unwrap().into_iter().nth(1));
}

fn updates_apply_in_order_in_one_write(f: &dyn StateFixture) {
    let store = f.fresh();
    store
        .record_all(&[
            hello_at("a", 1, AgentStatus::default(), T0),
            disconnect("a", "bye", T0 + 2),
            seen("b", T0 + 3),
            // An older "seen" never moves last_seen back.
            seen("a", T0 + 1),
        ])
        .unwrap();
    let agents = store.agents().unwrap();
    assert_eq!(agents.len(), 2);
    let (a, b) = (&agents[0], &agents[1]);
    assert!(!a.connected, "the disconnect came after the Hello");
    assert_eq!(a.last_seen_ns, T0 + 2);
    assert_eq!((b.first_seen_ns, b.last_seen_ns), (T0 + 3, T0 + 3));
    assert!(!b.connected);
    // The labels of a's Hello, none for b, which never said Hello.
    assert_eq!(
        a.labels,
        BTreeMap::from([("env".to_owned(), "prod".to_owned())])
    );
    assert!(b.labels.is_empty());
    // A later Hello replaces them.
    let mut relabelled = hello(1, AgentStatus::default());
    relabelled.labels = vec![("role".to_owned(), "db".to_owned())];
    store
        .record(&RegistryUpdate::Hello {
            agent_id: "a".to_owned(),
            hello: relabelled,
            now_ns: T0 + 4,
        })
        .unwrap();
    assert_eq!(
        store.agent("a").unwrap().unwrap().labels,
        BTreeMap::from([("role".to_owned(), "db".to_owned())])
    );
    // Nothing to record is no write and no error.
    store.record_all(&[]).unwrap();

    // The same agent several times in one write: each update sees the one before it.
    let mut status = AgentStatus {
        backlog_batches: 1,
        ..AgentStatus::default()
    };
    let first = heartbeat("c", &status, T0 + 10);
    status.backlog_batches = 2;
    let second = heartbeat("c", &status, T0 + 11);
    status.backlog_batches = 3;
    let third = heartbeat("c", &status, T0 + 12);
    store.record_all(&[first, second, third]).unwrap();
    let c = store.agent("c").unwrap().unwrap();
    assert_eq!(c.first_seen_ns, T0 + 10);
    assert_eq!(c.backlog_rising_since_ns, Some(T0 + 11));
    assert_eq!(c.status.map(|s| s.backlog_batches), Some(3));
}

fn agents_are_sorted_by_id_in_byte_order(f: &dyn StateFixture) {
    let store = f.fresh();
    let mut expected =
        ["web-1", "Web-2", "a1", "a-2", "a.3", "a_4", "b", "B", "ä"].map(str::to_owned);
    let updates: Vec<RegistryUpdate> = expected.iter().map(|id| seen(id, T0)).collect();
    store.record_all(&updates).unwrap();
    expected.sort();
    assert_eq!(ids(&*store), expected);
}

fn status_marks_follow_successive_statuses(f: &dyn StateFixture) {
    let store = f.fresh();
    let at = |backlog, evicted| {
        let mut s = AgentStatus {
            backlog_batches: backlog,
            ..AgentStatus::default()
        };
        s.drops.add(DropReason::SpoolFullEvicted, evicted);
        s
    };
    // A first status: its drops are news, its backlog is not yet "rising".
    store
        .record(&hello_at("a", 1, at(10, 3), T0 + 100))
        .unwrap();
    let a = store.agent("a").unwrap().unwrap();
    assert_eq!(a.drops_changed_ns, Some(T0 + 100));
    assert_eq!(a.drops_last_increase.spool_full_evicted, 3);
    assert_eq!(a.backlog_rising_since_ns, None);

    store.record(&heartbeat("a", &at(11, 5), T0 + 200)).unwrap();
    let a = store.agent("a").unwrap().unwrap();
    assert_eq!(a.backlog_rising_since_ns, Some(T0 + 200));
    assert_eq!(a.drops_changed_ns, Some(T0 + 200));
    assert_eq!(a.drops_last_increase.spool_full_evicted, 2);

    // Level: both kept.
    store.record(&heartbeat("a", &at(11, 5), T0 + 300)).unwrap();
    let a = store.agent("a").unwrap().unwrap();
    assert_eq!(a.backlog_rising_since_ns, Some(T0 + 200));
    assert_eq!(a.drops_changed_ns, Some(T0 + 200));
    assert_eq!(a.drops_last_increase.spool_full_evicted, 2);

    // Shrinking clears the rise; counters that went down (a new spool) are no increase.
    store.record(&heartbeat("a", &at(9, 0), T0 + 400)).unwrap();
    let a = store.agent("a").unwrap().unwrap();
    assert_eq!(a.backlog_rising_since_ns, None);
    assert_eq!(a.drops_changed_ns, Some(T0 + 200));

    // A new Hello compares with the last status too: no news, no rise from a level backlog.
    store.record(&hello_at("a", 2, at(9, 0), T0 + 500)).unwrap();
    let a = store.agent("a").unwrap().unwrap();
    assert_eq!(a.backlog_rising_since_ns, None);
    assert_eq!(a.drops_changed_ns, Some(T0 + 200));
    assert_eq!(a.spool_id, Some(2));

    // A clock behind the aggregator's: a negative skew.
    let behind = AgentStatus {
        time_ns: T0 + 590,
        ..AgentStatus::default()
    };
    store.record(&heartbeat("a", &behind, T0 + 600)).unwrap();
    assert_eq!(store.agent("a").unwrap().unwrap().clock_skew_ns, Some(-10));
}

fn what_an_agent_reported_reads_back_whole(f: &dyn StateFixture) {
    let store = f.fresh();
    let mut status = AgentStatus {
        time_ns: T0,
        backlog_batches: 7,
        collector_errors: vec![CollectorError {
            collector: "logs.journal".into(),
            reason: "permission denied: «/var/log/journal» \"quoted\" \\ back".into(),
            since_ns: T0 - 1,
        }],
        ..AgentStatus::default()
    };
    status
        .drops
        .add(DropReason::SpoolFullRejected, u64::MAX / 2);
    let mut h = hello(u64::MAX, status.clone());
    h.host = HostFacts {
        hostname: "hôte-1.example".into(),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        kernel: "6.1.0-18-amd64".into(),
        arch: "aarch64".into(),
        cpus: 128,
        memory_bytes: u64::MAX,
        boot_time_ns: i64::MIN,
    };
    h.agent_version = "2.0.0-rc.1+é".into();
    h.labels = vec![
        ("zone".to_owned(), "eu-west-1a".to_owned()),
        ("env".to_owned(), "prod".to_owned()),
    ];
    store
        .record(&RegistryUpdate::Hello {
            agent_id: "web-1".to_owned(),
            hello: h.clone(),
            now_ns: i64::MAX - 1,
        })
        .unwrap();
    let a = store.agent("web-1").unwrap().unwrap();
    assert_eq!(a.spool_id, Some(u64::MAX), "a spool id keeps every bit");
    assert_eq!(a.host, Some(h.host));
    assert_eq!(a.agent_version.as_deref(), Some("2.0.0-rc.1+é"));
    assert_eq!(a.status, Some(status));
    assert_eq!(a.last_seen_ns, i64::MAX - 1);
    assert_eq!(a.clock_skew_ns, Some(T0 - (i64::MAX - 1)));
    assert_eq!(
        a.labels,
        BTreeMap::from([
            ("env".to_owned(), "prod".to_owned()),
            ("zone".to_owned(), "eu-west-1a".to_owned())
        ])
    );
}

fn a_removed_agent_is_hidden_until_its_next_hello(f: &dyn StateFixture) {
    let store = f.fresh();
    store
        .record_all(&[
            hello_at("a", 1, AgentStatus::default(), T0),
            hello_at("b", 1, AgentStatus::default(), T0),
        ])
        .unwrap();
    assert!(store.remove_agent("a", T0 + 1).unwrap());
    assert_eq!(ids(&*store), ["b"]);
    assert_eq!(store.agent("a").unwrap(), None);
    assert!(!store.remove_agent("a", T0 + 2).unwrap(), "already removed");
    assert!(!store.remove_agent("nobody", T0 + 2).unwrap());

    // Heartbeats, batches and disconnects do not bring it back.
    store
        .record_all(&[
            heartbeat("a", &AgentStatus::default(), T0 + 3),
            seen("a", T0 + 4),
            disconnect("a", "bye", T0 + 5),
        ])
        .unwrap();
    assert_eq!(store.agent("a").unwrap(), None);

    // Its next Hello does, with its history.
    store
        .record(&hello_at("a", 2, AgentStatus::default(), T0 + 6))
        .unwrap();
    let a = store.agent("a").unwrap().unwrap();
    assert_eq!((a.first_seen_ns, a.last_seen_ns), (T0, T0 + 6));
    assert_eq!((a.spool_id, a.connected), (Some(2), true));
    assert_eq!(ids(&*store), ["a", "b"]);
}

fn the_registry_generation_changes_with_every_registry_write(f: &dyn StateFixture) {
    let store = f.fresh();
    let Some(mut last) = store.registry_generation() else {
        // The store cannot tell: readers rebuild their view every time, which is correct.
        return;
    };
    let mut changed = |what: &str| {
        let now = store.registry_generation();
        assert_ne!(now, Some(last), "the generation after {what}");
        last = now.unwrap_or_else(|| panic!("the generation after {what} is unknown"));
    };
    store
        .record(&hello_at("a", 1, AgentStatus::default(), T0))
        .unwrap();
    changed("a Hello");
    store.record(&seen("a", T0 + 1)).unwrap();
    changed("a batch");
    store
        .record_all(&[
            heartbeat("a", &AgentStatus::default(), T0 + 2),
            disconnect("a", "bye", T0 + 3),
        ])
        .unwrap();
    changed("a heartbeat and a disconnect");
    assert!(store.remove_agent("a", T0 + 4).unwrap());
    changed("removing an agent");
}

// --- API tokens and the audit log ---------------------------------------------------------

fn api_tokens_are_stored_listed_and_revoked_and_names_reused_once_revoked(f: &dyn StateFixture) {
    let store = f.fresh();
    assert_eq!(store.tokens().unwrap(), vec![]);
    let a = tokens::create("ci", Role::Viewer, 10, Some(1_000));
    store.insert_token(&a.record).unwrap();
    let again = tokens::create("ci", Role::Admin, 11, None);
    let err = store.insert_token(&again.record).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("`ci` exists"), "{err}");
    assert_eq!(store.token(&a.record.id).unwrap(), Some(a.record.clone()));
    assert_eq!(store.token("0000000000000000").unwrap(), None);

    // Revoked by name, then by id (no change), then the name is free again.
    let revoked = store.revoke_token("ci", 60).unwrap().unwrap();
    assert_eq!(
        (revoked.id.as_str(), revoked.revoked_ns),
        (a.record.id.as_str(), Some(60))
    );
    let twice = store.revoke_token(&a.record.id, 70).unwrap().unwrap();
    assert_eq!(twice.revoked_ns, Some(60));
    assert_eq!(store.revoke_token("ci", 80).unwrap(), None);
    assert_eq!(store.revoke_token("nobody", 80).unwrap(), None);
    store.insert_token(&again.record).unwrap();

    // Newest first, revoked ones included.
    let other = tokens::create("deploy", Role::Operator, 5, None);
    store.insert_token(&other.record).unwrap();
    let listed: Vec<_> = store.tokens().unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(
        listed,
        [
            again.record.id.clone(),
            a.record.id.clone(),
            other.record.id.clone()
        ]
    );
    assert_eq!(
        store.token(&again.record.id).unwrap(),
        Some(again.record.clone())
    );
    // By name, the one not revoked is revoked, not the older one of that name.
    let revoked = store.revoke_token("ci", 90).unwrap().unwrap();
    assert_eq!(
        (revoked.id, revoked.revoked_ns),
        (again.record.id, Some(90))
    );
    assert_eq!(
        store.token(&a.record.id).unwrap().unwrap().revoked_ns,
        Some(60)
    );
}

fn a_token_use_moves_forward_only(f: &dyn StateFixture) {
    let store = f.fresh();
    let a = tokens::create("ci", Role::Viewer, 10, None);
    store.insert_token(&a.record).unwrap();
    store.touch_token(&a.record.id, 50).unwrap();
    store.touch_token(&a.record.id, 40).unwrap();
    assert_eq!(
        store.token(&a.record.id).unwrap().unwrap().last_used_ns,
        Some(50)
    );
    store.touch_token(&a.record.id, 55).unwrap();
    assert_eq!(
        store.token(&a.record.id).unwrap().unwrap().last_used_ns,
        Some(55)
    );
    // An unknown token: nothing to record, and no error.
    store.touch_token("0000000000000000", 60).unwrap();
}

fn the_audit_log_pages_newest_first(f: &dyn StateFixture) {
    let store = f.fresh();
    assert_eq!(store.audit(None, 10).unwrap(), vec![]);
    let entry = |i: i64| AuditEntry {
        id: 0,
        time_ns: i,
        token_id: (i % 3 == 0).then(|| "0123456789abcdef".to_owned()),
        token_name: (i % 2 == 0).then(|| "ci".to_owned()),
        address: "127.0.0.1".to_owned(),
        method: "POST".to_owned(),
        route: "/api/v1/tokens".to_owned(),
        status: 401,
        outcome: "unauthorized".to_owned(),
    };
    store
        .append_audit(&(1..=3).map(entry).collect::<Vec<_>>())
        .unwrap();
    store
        .append_audit(&(4..=5).map(entry).collect::<Vec<_>>())
        .unwrap();
    store.append_audit(&[]).unwrap();
    let first = store.audit(None, 2).unwrap();
    assert_eq!(first.iter().map(|e| e.time_ns).collect::<Vec<_>>(), [5, 4]);
    assert!(first[0].id > first[1].id, "newer entries have higher ids");
    let next = store.audit(Some(first[1].id), 10).unwrap();
    assert_eq!(
        next.iter().map(|e| e.time_ns).collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert_eq!(next[1].token_name.as_deref(), Some("ci"));
    for e in first.iter().chain(&next) {
        assert_eq!(
            *e,
            AuditEntry {
                id: e.id,
                ..entry(e.time_ns)
            }
        );
    }
    assert_eq!(store.audit(Some(next[2].id), 10).unwrap(), vec![]);
}

// --- Enrollment ---------------------------------------------------------------------------

fn enrollment_token(max_uses: Option<u32>, expires_ns: i64, created_ns: i64) -> EnrollmentToken {
    enrollment_token::create(
        TokenSpec {
            expires_ns,
            max_uses,
            labels: vec![
                ("site".into(), "paris".into()),
                ("rack".into(), "r12".into()),
            ],
            allow_reenroll: true,
            endpoints: vec!["a.example:4433".into()],
            ca_der: b"ca".to_vec(),
        },
        created_ns,
    )
    .unwrap()
    .record
}

fn enrollment(key: u8, token_id: Option<&str>, now_ns: i64) -> Enrollment {
    Enrollment {
        key_sha256: [key; 32],
        agent_id: format!("web-{key}"),
        token_id: token_id.map(str::to_owned),
        now_ns,
    }
}

fn enrollment_tokens_are_stored_listed_and_revoked(f: &dyn StateFixture) {
    let store = f.fresh();
    assert_eq!(store.enrollment_tokens().unwrap(), vec![]);
    let a = enrollment_token(Some(2), 1_000, 10);
    let mut b = enrollment_token(None, 2_000, 20);
    b.allow_reenroll = false;
    store.insert_enrollment_token(&a).unwrap();
    store.insert_enrollment_token(&b).unwrap();
    assert_eq!(store.enrollment_token(&a.id).unwrap(), Some(a.clone()));
    assert_eq!(store.enrollment_token(&b.id).unwrap(), Some(b.clone()));
    assert_eq!(store.enrollment_token("0000000000000000").unwrap(), None);
    assert_eq!(
        store.enrollment_tokens().unwrap(),
        vec![b.clone(), a.clone()]
    );

    let revoked = store.revoke_enrollment_token(&a.id, 50).unwrap().unwrap();
    assert_eq!(
        revoked,
        EnrollmentToken {
            revoked_ns: Some(50),
            ..a.clone()
        }
    );
    // Revoking twice keeps the first time; an unknown id is none.
    let twice = store.revoke_enrollment_token(&a.id, 60).unwrap().unwrap();
    assert_eq!(twice.revoked_ns, Some(50));
    assert_eq!(store.revoke_enrollment_token("nope", 60).unwrap(), None);
    // A revoked token enrolls nobody, even if asked directly.
    let err = store
        .record_enrollment(&enrollment(1, Some(&a.id), 70))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(!store.key_enrolled(&[1; 32]).unwrap(), "all or none");
    assert_eq!(store.enrollment_token(&a.id).unwrap().unwrap().uses, 0);
}

fn each_enrollment_spends_a_use_and_its_key_only_once(f: &dyn StateFixture) {
    let store = f.fresh();
    let t = enrollment_token(Some(2), 1_000, 10);
    store.insert_enrollment_token(&t).unwrap();
    store
        .record_enrollment(&enrollment(1, Some(&t.id), 100))
        .unwrap();
    assert!(store.key_enrolled(&[1; 32]).unwrap());
    assert!(!store.key_enrolled(&[2; 32]).unwrap());
    // The same key again: refused, and the use is not spent.
    let err = store
        .record_enrollment(&enrollment(1, Some(&t.id), 110))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("certified before"), "{err}");
    assert_eq!(store.enrollment_token(&t.id).unwrap().unwrap().uses, 1);
    store
        .record_enrollment(&enrollment(2, Some(&t.id), 120))
        .unwrap();
    let used = store.enrollment_token(&t.id).unwrap().unwrap();
    assert_eq!((used.uses, used.used_up()), (2, true));
    // Used up: refused, and the key is not recorded.
    let err = store
        .record_enrollment(&enrollment(3, Some(&t.id), 130))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("used up"), "{err}");
    assert!(!store.key_enrolled(&[3; 32]).unwrap());
    // Renewals spend no token; a key renewed is certified like an enrolled one.
    store.record_enrollment(&enrollment(3, None, 140)).unwrap();
    assert!(store.key_enrolled(&[3; 32]).unwrap());
    let err = store
        .record_enrollment(&enrollment(3, None, 150))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // Expired (at its expiry time already), and unknown.
    let old = enrollment_token(None, 1_000, 10);
    store.insert_enrollment_token(&old).unwrap();
    let err = store
        .record_enrollment(&enrollment(4, Some(&old.id), 1_000))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    store
        .record_enrollment(&enrollment(4, Some(&old.id), 999))
        .unwrap();
    let err = store
        .record_enrollment(&enrollment(5, Some("0000000000000000"), 100))
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // A token with no limit counts its uses.
    assert_eq!(store.enrollment_token(&old.id).unwrap().unwrap().uses, 1);
}

// --- The alerting engine ------------------------------------------------------------------

fn record(fingerprint: &str) -> AlertRecord {
    AlertRecord {
        fingerprint: fingerprint.into(),
        rule: "cpu".into(),
        severity: Severity::High,
        labels: [("host".to_owned(), "a".to_owned())].into(),
        annotations: [("summary".to_owned(), "CPU at 93 %".to_owned())].into(),
        state: AlertState::Firing {
            since_ns: 5,
            last_held_ns: 6,
        },
        value: Some(0.93),
        active_since_ns: 1,
        fired_ns: Some(5),
        resolved_ns: None,
        ack: None,
        escalated: 0,
        suppressed_by: Vec::new(),
        updated_ns: 6,
    }
}

/// A notification of `fingerprints` to `receiver`, in group `group`.
fn message(receiver: &str, group: &str, fingerprints: &[&str], created_ns: i64) -> Message {
    Message {
        receiver: receiver.into(),
        group_key: format!("{{0}}:{{group={group:?}}}"),
        group_labels: [("group".to_owned(), group.to_owned())].into(),
        alerts: fingerprints
            .iter()
            .map(|fp| MessageAlert {
                fingerprint: (*fp).into(),
                status: Status::Firing,
                labels: [("host".to_owned(), "a".to_owned())].into(),
                annotations: BTreeMap::new(),
                starts_at_ns: created_ns,
                ends_at_ns: None,
                value: Some(1.5),
                generator_url: "https://outpost.example/alerts".into(),
            })
            .collect(),
        external_url: "https://outpost.example".into(),
        escalation: 0,
        created_ns,
    }
}

fn history(fingerprint: &str, kind: HistoryKind, at_ns: i64) -> HistoryEntry {
    HistoryEntry {
        fingerprint: fingerprint.into(),
        rule: "cpu".into(),
        kind,
        labels: [("host".to_owned(), "a".to_owned())].into(),
        value: Some(0.5),
        at_ns,
        detail: String::new(),
    }
}

fn silence(id: &str, ends_ns: i64) -> Silence {
    Silence {
        id: id.into(),
        matchers: vec![
            parse("host=~\"a|b\"").unwrap(),
            parse("env!=\"dev\"").unwrap(),
        ],
        starts_ns: 0,
        ends_ns,
        author: "ann".into(),
        comment: "maintenance".into(),
    }
}

/// A dispatcher's group, as the engine would save it.
fn group(receiver: &str, fingerprint: &str) -> Group {
    serde_json::from_value(serde_json::json!({
        "route": [0, 1],
        "receiver": receiver,
        "labels": {"host": "a"},
        "alerts": {
            fingerprint: {
                "fingerprint": fingerprint,
                "labels": {"host": "a"},
                "firing": true,
                "since_ns": 5,
                "notified": true,
            }
        },
        "next_ns": 100,
        "changed": false,
        "notified_ns": 50,
    }))
    .unwrap()
}

/// Saves `messages` and nothing else.
fn enqueue(store: &dyn StateBackend, messages: Vec<Message>) {
    let outcome = Outcome {
        messages,
        ..Outcome::default()
    };
    store.save_alerting(&outcome, None, None).unwrap();
}

/// The `created_ns` of each due notification.
fn due(store: &dyn StateBackend, now_ns: i64, limit: usize) -> Vec<i64> {
    store
        .due_notifications(now_ns, limit)
        .unwrap()
        .iter()
        .map(|e| e.message.created_ns)
        .collect()
}

fn everything(limit: usize) -> LogQuery {
    LogQuery {
        limit,
        ..LogQuery::default()
    }
}

fn alert_state_is_saved_whole_and_loaded_back(f: &dyn StateFixture) {
    let store = f.fresh();
    let loaded = store.load_alerting().unwrap();
    assert_eq!(loaded.cursor, None, "nothing evaluated yet");
    assert!(loaded.saved.alerts.is_empty() && loaded.saved.groups.is_empty());
    assert!(loaded.saved.silences.is_empty());

    let mut acked = record("f2");
    acked.ack = Some(Ack {
        by: "ann".into(),
        at_ns: 7,
        comment: "looking".into(),
    });
    acked.suppressed_by = vec!["s1".into()];
    let outcome = Outcome {
        alerts: vec![record("f1"), acked.clone(), record("f3")],
        removed: Vec::new(),
        history: vec![history("f1", HistoryKind::Fired, 5)],
        messages: vec![message("ops", "g", &["f1"], 10)],
        groups: Some(BTreeMap::from([
            ("g1".to_owned(), group("ops", "f1")),
            ("g2".to_owned(), group("dev", "f2")),
        ])),
    };
    let silences = [silence("s1", 100), silence("s2", 200)];
    store
        .save_alerting(&outcome, Some(&silences), Some(Cursor::from_position(42)))
        .unwrap();

    // A later outcome: one record changed, one removed, the groups, silences and cursor kept
    // when not given.
    let mut changed = record("f1");
    changed.state = AlertState::Inactive;
    changed.resolved_ns = Some(9);
    store
        .save_alerting(
            &Outcome {
                alerts: vec![changed.clone()],
                removed: vec!["f3".into(), "never-saved".into()],
                ..Outcome::default()
            },
            None,
            None,
        )
        .unwrap();
    let loaded = store.load_alerting().unwrap();
    assert_eq!(loaded.cursor, Some(Cursor::from_position(42)));
    assert_eq!(loaded.saved.alerts, vec![changed.clone(), acked.clone()]);
    assert_eq!(store.alert_records().unwrap(), vec![changed, acked]);
    let groups: BTreeMap<_, _> = loaded
        .saved
        .groups
        .iter()
        .map(|(k, g)| (k.clone(), serde_json::to_value(g).unwrap()))
        .collect();
    assert_eq!(
        groups,
        BTreeMap::from([
            (
                "g1".to_owned(),
                serde_json::to_value(group("ops", "f1")).unwrap()
            ),
            (
                "g2".to_owned(),
                serde_json::to_value(group("dev", "f2")).unwrap()
            ),
        ])
    );
    // Silences come back latest end first, as stored.
    assert_eq!(
        loaded.saved.silences,
        vec![silence("s2", 200), silence("s1", 100)]
    );
    assert_eq!(
        store.stored_silences().unwrap(),
        vec![
            StoredSilence::from(&silence("s2", 200)),
            StoredSilence::from(&silence("s1", 100))
        ]
    );

    // Groups and silences given replace the stored ones whole; an empty list clears them.
    store
        .save_alerting(
            &Outcome {
                groups: Some(BTreeMap::from([("g3".to_owned(), group("ops", "f9"))])),
                ..Outcome::default()
            },
            Some(&[]),
            Some(Cursor::from_position(u64::MAX >> 1)),
        )
        .unwrap();
    let loaded = store.load_alerting().unwrap();
    assert_eq!(loaded.saved.groups.keys().collect::<Vec<_>>(), ["g3"]);
    assert!(loaded.saved.silences.is_empty());
    assert!(store.stored_silences().unwrap().is_empty());
    assert_eq!(loaded.cursor, Some(Cursor::from_position(u64::MAX >> 1)));
}

fn due_notifications_keep_each_groups_order(f: &dyn StateFixture) {
    let store = f.fresh();
    assert_eq!(store.next_notification_ns().unwrap(), None);
    assert!(store.due_notifications(i64::MAX, 10).unwrap().is_empty());
    enqueue(
        &*store,
        vec![
            message("ops", "a", &["f1"], 10),
            message("ops", "b", &["f2"], 20),
        ],
    );
    // Due from their creation, oldest first; entered pending with no attempt.
    assert_eq!(due(&*store, 9, 10), Vec::<i64>::new());
    assert_eq!(due(&*store, 15, 10), [10]);
    assert_eq!(due(&*store, 25, 10), [10, 20]);
    assert_eq!(due(&*store, 25, 1), [10], "at most the limit");
    assert_eq!(due(&*store, 25, 0), [10], "a limit of zero counts as one");
    let first = &store.due_notifications(15, 10).unwrap()[0];
    assert_eq!(first.message, message("ops", "a", &["f1"], 10));
    assert_eq!(
        (first.state, first.attempts, first.next_attempt_ns),
        (OutboxState::Pending, 0, 10)
    );
    assert_eq!((first.last_error.as_ref(), first.sent_ns), (None, None));
    assert_eq!(store.next_notification_ns().unwrap(), Some(10));

    // Group a's first waits for a retry: the group's later one waits behind it, even when due,
    // while the same group for another receiver, and other groups, go on.
    store
        .record_attempt(
            first.id,
            &Attempt::Retry {
                retry_at_ns: 40,
                error: "503".into(),
            },
        )
        .unwrap();
    enqueue(
        &*store,
        vec![
            message("ops", "a", &["f1"], 26),
            message("pager", "a", &["f1"], 27),
        ],
    );
    assert_eq!(due(&*store, 30, 10), [20, 27]);
    assert_eq!(store.next_notification_ns().unwrap(), Some(20));
    // Due again: the retried one comes first, still alone of its group.
    assert_eq!(due(&*store, 45, 10), [20, 27, 10]);

    // Once it fails for good, the group's next one is due.
    store
        .record_attempt(
            first.id,
            &Attempt::Failed {
                error: "400".into(),
            },
        )
        .unwrap();
    assert_eq!(due(&*store, 45, 10), [20, 26, 27]);
    // Sent ones leave the queue too.
    for e in store.due_notifications(45, 10).unwrap() {
        store
            .record_attempt(e.id, &Attempt::Sent { at_ns: 46 })
            .unwrap();
    }
    assert_eq!(due(&*store, i64::MAX, 10), Vec::<i64>::new());
    assert_eq!(store.next_notification_ns().unwrap(), None);
}

fn attempts_are_counted_with_their_outcome(f: &dyn StateFixture) {
    let store = f.fresh();
    enqueue(&*store, vec![message("ops", "a", &["f1"], 10)]);
    let id = store.due_notifications(10, 1).unwrap()[0].id;
    let entry = |id: i64| {
        store
            .notifications(&everything(10))
            .unwrap()
            .into_iter()
            .find(|e| e.id == id)
            .unwrap()
    };
    store
        .record_attempt(
            id,
            &Attempt::Retry {
                retry_at_ns: 30,
                error: "503 Service Unavailable".into(),
            },
        )
        .unwrap();
    let e = entry(id);
    assert_eq!(
        (e.state, e.attempts, e.next_attempt_ns),
        (OutboxState::Pending, 1, 30)
    );
    assert_eq!(e.last_error.as_deref(), Some("503 Service Unavailable"));
    assert_eq!(store.next_notification_ns().unwrap(), Some(30));
    store
        .record_attempt(
            id,
            &Attempt::Retry {
                retry_at_ns: 60,
                error: "connection refused".into(),
            },
        )
        .unwrap();
    store
        .record_attempt(id, &Attempt::Sent { at_ns: 61 })
        .unwrap();
    let e = entry(id);
    assert_eq!(
        (e.state, e.attempts, e.sent_ns),
        (OutboxState::Sent, 3, Some(61))
    );
    assert_eq!(
        e.last_error.as_deref(),
        Some("connection refused"),
        "the last failure is kept once sent"
    );
    assert_eq!(e.message, message("ops", "a", &["f1"], 10));

    enqueue(&*store, vec![message("ops", "b", &["f2"], 70)]);
    let id = store.due_notifications(70, 1).unwrap()[0].id;
    store
        .record_attempt(
            id,
            &Attempt::Failed {
                error: "404".into(),
            },
        )
        .unwrap();
    let e = entry(id);
    assert_eq!(
        (e.state, e.attempts, e.last_error.as_deref(), e.sent_ns),
        (OutboxState::Failed, 1, Some("404"), None)
    );
    assert_eq!(store.next_notification_ns().unwrap(), None);
}

fn the_notification_log_pages_newest_first_and_by_alert(f: &dyn StateFixture) {
    let store = f.fresh();
    enqueue(
        &*store,
        vec![
            message("ops", "a", &["f1"], 10),
            message("ops", "b", &["f2", "f1"], 20),
            message("ops", "c", &["f2"], 30),
            message("pager", "a", &["f1", "f3"], 40),
        ],
    );
    let created = |query: &LogQuery| -> Vec<i64> {
        store
            .notifications(query)
            .unwrap()
            .iter()
            .map(|e| e.message.created_ns)
            .collect()
    };
    assert_eq!(created(&everything(10)), [40, 30, 20, 10]);
    assert_eq!(
        created(&everything(0)),
        [40],
        "a limit of zero counts as one"
    );
    let page = store.notifications(&everything(2)).unwrap();
    assert!(
        page[0].id > page[1].id,
        "newer notifications have higher ids"
    );
    let rest = LogQuery {
        before: Some(page[1].id),
        ..everything(10)
    };
    assert_eq!(created(&rest), [20, 10]);
    let of = |fingerprint: &str| LogQuery {
        fingerprint: Some(fingerprint.into()),
        ..everything(10)
    };
    assert_eq!(created(&of("f1")), [40, 20, 10]);
    assert_eq!(created(&of("f2")), [30, 20]);
    assert_eq!(created(&of("f3")), [40]);
    assert_eq!(
        created(&of("f")),
        Vec::<i64>::new(),
        "whole fingerprints only"
    );
    let f1_before = LogQuery {
        before: Some(page[0].id),
        limit: 1,
        ..of("f1")
    };
    assert_eq!(created(&f1_before), [20]);
}

fn alert_history_pages_newest_first_and_by_alert(f: &dyn StateFixture) {
    let store = f.fresh();
    let entries = vec![
        history("f1", HistoryKind::Pending, 1),
        history("f1", HistoryKind::Fired, 2),
        history("f2", HistoryKind::Fired, 3),
        history("f1", HistoryKind::Acknowledged, 4),
        history("f1", HistoryKind::Resolved, 5),
    ];
    store
        .save_alerting(
            &Outcome {
                history: entries[..3].to_vec(),
                ..Outcome::default()
            },
            None,
            None,
        )
        .unwrap();
    store
        .save_alerting(
            &Outcome {
                history: entries[3..].to_vec(),
                ..Outcome::default()
            },
            None,
            None,
        )
        .unwrap();
    let all = store.alert_history(&everything(10)).unwrap();
    let mut newest_first = entries.clone();
    newest_first.reverse();
    assert_eq!(
        all.iter().map(|h| h.entry.clone()).collect::<Vec<_>>(),
        newest_first
    );
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    let at = |query: &LogQuery| -> Vec<i64> {
        store
            .alert_history(query)
            .unwrap()
            .iter()
            .map(|h| h.entry.at_ns)
            .collect()
    };
    assert_eq!(at(&everything(0)), [5]);
    let f1 = LogQuery {
        fingerprint: Some("f1".into()),
        ..everything(2)
    };
    assert_eq!(at(&f1), [5, 4]);
    let f1_rest = LogQuery {
        before: Some(all[1].id),
        ..f1.clone()
    };
    assert_eq!(at(&f1_rest), [2, 1]);
    let f2 = LogQuery {
        fingerprint: Some("f2".into()),
        ..everything(10)
    };
    assert_eq!(at(&f2), [3]);
}

fn expiry_forgets_finished_notifications_history_and_ended_silences(f: &dyn StateFixture) {
    let store = f.fresh();
    store
        .save_alerting(
            &Outcome {
                alerts: vec![record("f1")],
                history: vec![
                    history("f1", HistoryKind::Fired, 5),
                    history("f1", HistoryKind::Resolved, 500),
                ],
                messages: vec![
                    message("ops", "a", &["f1"], 10),
                    message("ops", "b", &["f1"], 20),
                    message("ops", "c", &["f1"], 30),
                    message("ops", "d", &["f1"], 600),
                ],
                ..Outcome::default()
            },
            Some(&[silence("s1", 100), silence("s2", 2_000)]),
            None,
        )
        .unwrap();
    let due = store.due_notifications(30, 10).unwrap();
    store
        .record_attempt(due[0].id, &Attempt::Sent { at_ns: 31 })
        .unwrap();
    store
        .record_attempt(
            due[1].id,
            &Attempt::Failed {
                error: "400".into(),
            },
        )
        .unwrap();
    // Before 450: the sent and the failed notification (not the pending ones, however old),
    // the history entry at 5 and the silence that ended at 100.
    assert_eq!(store.expire_alerting(450).unwrap(), 4);
    let left: Vec<i64> = store
        .notifications(&everything(10))
        .unwrap()
        .iter()
        .map(|e| e.message.created_ns)
        .collect();
    assert_eq!(left, [600, 30], "pending and recent ones stay");
    let history_left: Vec<i64> = store
        .alert_history(&everything(10))
        .unwrap()
        .iter()
        .map(|h| h.entry.at_ns)
        .collect();
    assert_eq!(history_left, [500]);
    assert_eq!(
        store.stored_silences().unwrap(),
        vec![StoredSilence::from(&silence("s2", 2_000))]
    );
    assert_eq!(
        store.alert_records().unwrap(),
        vec![record("f1")],
        "records stay"
    );
    assert_eq!(
        store.expire_alerting(450).unwrap(),
        0,
        "nothing left to forget"
    );
}
