//! What `/metrics` shows of alerting: events evaluated, alerts pending and firing, rule reloads
//! and notification attempts by outcome. The engine and outbox tasks count; a scrape reads a
//! [`AlertingSnapshot`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use outpost_common::event::EventKind;

use crate::rules::engine::AlertRecord;
use crate::rules::lifecycle::AlertState;
use crate::store::alerting::Attempt;

fn kind_slot(kind: EventKind) -> usize {
    match kind {
        EventKind::Metric => 0,
        EventKind::Log => 1,
        EventKind::Fim => 2,
        EventKind::Status => 3,
    }
}

/// Counters and levels shared by the alerting tasks.
#[derive(Debug, Default)]
pub struct AlertingFigures {
    events_evaluated: AtomicU64,
    fell_behind: AtomicU64,
    read_back: AtomicU64,
    pending: AtomicU64,
    firing: AtomicU64,
    rules: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    sent: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    lease_terms: AtomicU64,
    passed_over: AtomicU64,
    leading: AtomicU64,
    /// When the engine last evaluated an event of each kind (by [`EventKind`]), and a
    /// heartbeat; zero: never.
    last_input_ns: [AtomicI64; 4],
    last_heartbeat_ns: AtomicI64,
    /// When the engine last stepped (every rule's time-driven transitions).
    last_step_ns: AtomicI64,
}

/// When the engine last evaluated each kind of input; zero: never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastEvaluated {
    pub metric_ns: i64,
    pub log_ns: i64,
    pub fim_ns: i64,
    pub status_ns: i64,
    pub heartbeat_ns: i64,
    pub step_ns: i64,
}

/// The figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertingSnapshot {
    pub events_evaluated: u64,
    /// Times the engine fell behind the live feed.
    pub fell_behind: u64,
    /// Events it read from the store instead of the live feed (after falling behind, or
    /// catching up at start).
    pub read_back: u64,
    pub pending: u64,
    pub firing: u64,
    pub rules: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub sent: u64,
    pub retried: u64,
    pub failed: u64,
    /// Times this aggregator took the alerting lease (with several aggregators; one always
    /// holds it otherwise).
    pub lease_terms: u64,
    /// Batches whose commit never completed, passed over by the engine following every
    /// aggregator's commits.
    pub passed_over: u64,
    /// 1 while this aggregator runs alerting (holds the lease), 0 while another does.
    pub leading: u64,
}

impl AlertingFigures {
    pub fn evaluated(&self, events: usize) {
        self.events_evaluated
            .fetch_add(events as u64, Ordering::Relaxed);
    }

    /// The engine fell behind the live feed and reads from the store.
    pub fn fell_behind(&self) {
        self.fell_behind.fetch_add(1, Ordering::Relaxed);
    }

    /// The engine evaluated `events` read from the store, not the live feed (also counted by
    /// [`Self::evaluated`]).
    pub fn read_back(&self, events: usize) {
        self.read_back.fetch_add(events as u64, Ordering::Relaxed);
    }

    /// The engine evaluated events of `kinds` at `now_ns`.
    pub fn evaluated_kinds(&self, kinds: impl IntoIterator<Item = EventKind>, now_ns: i64) {
        for kind in kinds {
            self.last_input_ns[kind_slot(kind)].store(now_ns, Ordering::Relaxed);
        }
    }

    /// The engine evaluated a heartbeat at `now_ns`.
    pub fn evaluated_heartbeat(&self, now_ns: i64) {
        self.last_heartbeat_ns.store(now_ns, Ordering::Relaxed);
    }

    /// Whether this aggregator runs alerting now.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(u64::from(leading), Ordering::Relaxed);
    }

    /// This aggregator took the alerting lease.
    pub fn took_lease(&self) {
        self.lease_terms.fetch_add(1, Ordering::Relaxed);
    }

    /// The engine passed over `batches` whose commit never completed.
    pub fn passed_over(&self, batches: u64) {
        self.passed_over.fetch_add(batches, Ordering::Relaxed);
    }

    /// The engine stepped at `now_ns`.
    pub fn stepped(&self, now_ns: i64) {
        self.last_step_ns.store(now_ns, Ordering::Relaxed);
    }

    pub fn last_evaluated(&self) -> LastEvaluated {
        let at = |kind| self.last_input_ns[kind_slot(kind)].load(Ordering::Relaxed);
        LastEvaluated {
            metric_ns: at(EventKind::Metric),
            log_ns: at(EventKind::Log),
            fim_ns: at(EventKind::Fim),
            status_ns: at(EventKind::Status),
            heartbeat_ns: self.last_heartbeat_ns.load(Ordering::Relaxed),
            step_ns: self.last_step_ns.load(Ordering::Relaxed),
        }
    }

    pub fn rules_loaded(&self, rules: usize) {
        self.rules.store(rules as u64, Ordering::Relaxed);
    }

    /// Counts a reload: `Ok(rules)` when it took, `Err` when the previous rules kept running.
    pub fn reloaded(&self, result: Result<usize, ()>) {
        match result {
            Ok(rules) => {
                self.reloads.fetch_add(1, Ordering::Relaxed);
                self.rules_loaded(rules);
            }
            Err(()) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes the levels of pending and firing alerts from every record the engine holds.
    pub fn alerts<'a>(&self, records: impl Iterator<Item = &'a AlertRecord>) {
        let (mut pending, mut firing) = (0, 0);
        for r in records {
            match r.state {
                AlertState::Pending { .. } => pending += 1,
                AlertState::Firing { .. } => firing += 1,
                AlertState::Inactive => {}
            }
        }
        self.pending.store(pending, Ordering::Relaxed);
        self.firing.store(firing, Ordering::Relaxed);
    }

    /// Counts one attempt to send a notification by its outcome.
    pub fn attempted(&self, attempt: &Attempt) {
        let counter = match attempt {
            Attempt::Sent { .. } => &self.sent,
            Attempt::Retry { .. } => &self.retried,
            Attempt::Failed { .. } => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> AlertingSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AlertingSnapshot {
            events_evaluated: get(&self.events_evaluated),
            fell_behind: get(&self.fell_behind),
            read_back: get(&self.read_back),
            pending: get(&self.pending),
            firing: get(&self.firing),
            rules: get(&self.rules),
            reloads: get(&self.reloads),
            reload_failures: get(&self.reload_failures),
            sent: get(&self.sent),
            retried: get(&self.retried),
            failed: get(&self.failed),
            lease_terms: get(&self.lease_terms),
            passed_over: get(&self.passed_over),
            leading: get(&self.leading),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_attempts_reloads_read_backs_and_alert_states() {
        let f = AlertingFigures::default();
        f.rules_loaded(16);
        f.evaluated(10);
        f.evaluated(5);
        f.fell_behind();
        f.read_back(5);
        f.reloaded(Ok(17));
        f.reloaded(Err(()));
        f.attempted(&Attempt::Sent { at_ns: 1 });
        f.attempted(&Attempt::Retry {
            retry_at_ns: 2,
            error: "503".to_owned(),
        });
        f.attempted(&Attempt::Failed {
            error: "400".to_owned(),
        });
        f.attempted(&Attempt::Sent { at_ns: 3 });
        f.took_lease();
        f.set_leading(true);
        f.passed_over(2);
        let s = f.snapshot();
        assert_eq!(
            s,
            AlertingSnapshot {
                events_evaluated: 15,
                fell_behind: 1,
                read_back: 5,
                pending: 0,
                firing: 0,
                rules: 17,
                reloads: 1,
                reload_failures: 1,
                sent: 2,
                retried: 1,
                failed: 1,
                lease_terms: 1,
                passed_over: 2,
                leading: 1,
            }
        );
    }
}
