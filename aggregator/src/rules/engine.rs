//! The engine: every evaluator, the alerts' records, silences, inhibitions, acknowledgements,
//! escalations and the dispatcher, as one pure state machine over committed events and `now`.
//!
//! Call order: [`Engine::new`], then [`Engine::restore`] with what the state store kept (once,
//! before anything else), [`Engine::heard`] for every known agent; then [`Engine::observe`] for
//! each committed event and [`Engine::tick`] whenever [`Engine::next_wake_ns`] comes (or
//! sooner), and after either [`Engine::take`] for what to write to the state store in one
//! transaction: the alert records that changed, the history, the notifications for the outbox
//! and the dispatcher's groups. Writing all of it at once is what makes a restart neither lose
//! nor repeat a notification: a notification exists exactly when the state that caused it does.
//!
//! - **Records.** Every alert that is pending, firing, or resolved and not yet notified has an
//!   [`AlertRecord`]: its labels, annotations rendered when it fired, state and times, who
//!   acknowledged it and how far it escalated.
//! - **Silences and inhibitions** are applied to firing alerts: a suppressed alert is kept out of
//!   its notification groups, and joins them when the suppression ends while it still fires.
//! - **Escalation.** A firing alert that matches an escalation policy and is not acknowledged
//!   within a stage's delay is notified, alone, to the stage's receiver; acknowledging stops it.
//! - **Restart.** [`Engine::restore`] hands each evaluator the states of its alerts; those no
//!   evaluator met again within the restore grace are resolved (see [`Restored`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use outpost_common::event::{AgentStatus, Event, MetricKind, MetricPoint};
use serde::{Deserialize, Serialize};

use super::absence::AbsenceEvaluator;
use super::alert::{Change, Evaluates, Restored};
use super::composite::CompositeEvaluator;
use super::file::{Condition, Rule, Severity};
use super::lifecycle::{AlertState, Transition};
use super::logs::LogEvaluator;
use super::matcher::{Inhibition, Matcher, Silence, all_match};
use super::route::{self, Dispatcher, Notification, Route};
use super::template;
use super::threshold::Evaluator;
use crate::notify::{Message, MessageAlert, Status};

const S: i64 = 1_000_000_000;

/// The metric [`Engine::heartbeat`] makes of each heartbeat: how far the agent's clock is from
/// the aggregator's, in seconds, ahead or behind (the registry keeps the sign).
pub const CLOCK_SKEW: &str = "outpost.agent.clock_skew";
/// The metric of seconds until an agent's certificate expires, made from its heartbeats when
/// it reports its certificate (agents renew at two thirds of its lifetime).
pub const CERT_EXPIRES_IN: &str = "outpost.agent.certificate.expires_in";

/// How often the records take up the states the evaluators moved without a transition (a firing
/// alert whose condition held again), so that a restart restores them nearly as they were.
const REFRESH_NS: i64 = 30 * S;

/// An escalation policy: a firing alert matching `matchers` that nobody acknowledged is notified
/// to each stage's receiver once the stage's delay (from when it fired) passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    pub matchers: Vec<Matcher>,
    pub stages: Vec<Stage>,
}

/// One stage of an [`Escalation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub after_ns: i64,
    pub receiver: String,
}

/// What the engine routes by, besides the rules.
#[derive(Debug, Clone)]
pub struct Setup {
    pub route: Route,
    pub inhibitions: Vec<Inhibition>,
    pub escalations: Vec<Escalation>,
    /// The aggregator's address for people, for links in notifications.
    pub external_url: String,
    /// How long restored alerts wait to be met again by their evaluators (see [`Restored`]).
    pub restore_grace_ns: i64,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            route: Route::root("default"),
            inhibitions: Vec::new(),
            escalations: Vec::new(),
            external_url: String::new(),
            restore_grace_ns: 120 * S,
        }
    }
}

/// Who acknowledged an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub by: String,
    pub at_ns: i64,
    pub comment: String,
}

/// One alert as the engine keeps it and the state store stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub fingerprint: String,
    pub rule: String,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    /// Rendered when the alert became pending, and again when it fired.
    pub annotations: BTreeMap<String, String>,
    /// `Inactive` once resolved.
    pub state: AlertState,
    pub value: Option<f64>,
    /// When it became pending (or fired, with no `for`).
    pub active_since_ns: i64,
    pub fired_ns: Option<i64>,
    pub resolved_ns: Option<i64>,
    pub ack: Option<Ack>,
    /// Escalation stages notified so far.
    pub escalated: u32,
    /// The silences (by id) and `inhibited` keeping it from being notified; empty: notified.
    pub suppressed_by: Vec<String>,
    pub updated_ns: i64,
}

impl AlertRecord {
    pub fn firing(&self) -> bool {
        matches!(self.state, AlertState::Firing { .. })
    }
}

/// What happened to an alert, for the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    Pending,
    Fired,
    Cleared,
    Resolved,
    Acknowledged,
    Escalated,
    Silenced,
    Unsilenced,
}

impl HistoryKind {
    pub fn name(self) -> &'static str {
        match self {
            HistoryKind::Pending => "pending",
            HistoryKind::Fired => "fired",
            HistoryKind::Cleared => "cleared",
            HistoryKind::Resolved => "resolved",
            HistoryKind::Acknowledged => "acknowledged",
            HistoryKind::Escalated => "escalated",
            HistoryKind::Silenced => "silenced",
            HistoryKind::Unsilenced => "unsilenced",
        }
    }
}

/// One line of an alert's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub fingerprint: String,
    pub rule: String,
    pub kind: HistoryKind,
    pub labels: BTreeMap<String, String>,
    pub value: Option<f64>,
    pub at_ns: i64,
    /// Who acknowledged, which receiver an escalation went to, which silences: what the kind
    /// needs said.
    pub detail: String,
}

/// What to write to the state store, all in one transaction.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Records new or changed.
    pub alerts: Vec<AlertRecord>,
    /// Fingerprints of records to delete (cleared, or resolved and notified).
    pub removed: Vec<String>,
    pub history: Vec<HistoryEntry>,
    /// Notifications for the outbox, in the order they were made.
    pub messages: Vec<Message>,
    /// The dispatcher's groups, when they changed.
    pub groups: Option<BTreeMap<String, route::Group>>,
}

impl Outcome {
    /// Adds what came after, as if both had been taken at once: a later write of a record wins
    /// over an earlier one, and over an earlier removal.
    pub fn merge(&mut self, later: Outcome) {
        for a in later.alerts {
            self.alerts.retain(|r| r.fingerprint != a.fingerprint);
            self.removed.retain(|f| *f != a.fingerprint);
            self.alerts.push(a);
        }
        for f in later.removed {
            self.alerts.retain(|r| r.fingerprint != f);
            if !self.removed.contains(&f) {
                self.removed.push(f);
            }
        }
        self.history.extend(later.history);
        self.messages.extend(later.messages);
        if later.groups.is_some() {
            self.groups = later.groups;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
            && self.removed.is_empty()
            && self.history.is_empty()
            && self.messages.is_empty()
            && self.groups.is_none()
    }
}

/// What the state store kept of the engine, to restore at start.
#[derive(Debug, Default, Clone)]
pub struct Saved {
    pub alerts: Vec<AlertRecord>,
    pub groups: BTreeMap<String, route::Group>,
    pub silences: Vec<Silence>,
}

/// Why an operator's request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no alert has fingerprint `{0}`")]
    NoAlert(String),
    #[error("alert `{0}` is not firing; only firing alerts are acknowledged")]
    NotFiring(String),
    #[error("no silence has id `{0}`")]
    NoSilence(String),
    #[error("silence `{0}` has already ended")]
    Ended(String),
    #[error("a silence must end after it starts")]
    Backwards,
    #[error("a silence needs at least one matcher")]
    NoMatchers,
}

/// The rules, evaluated; see the module documentation.
#[derive(Debug)]
pub struct Engine {
    rules: BTreeMap<String, Rule>,
    threshold: Evaluator,
    logs: LogEvaluator,
    absence: AbsenceEvaluator,
    composite: CompositeEvaluator,
    setup: Setup,
    dispatcher: Dispatcher,
    records: BTreeMap<String, AlertRecord>,
    silences: Vec<Silence>,
    /// Restored alerts not met again are resolved at this time.
    restored_until_ns: Option<i64>,
    /// Restored alerts of log, frequency, sequence and file-integrity rules, and when each ends
    /// unless a match comes first.
    moments: BTreeMap<String, i64>,
    refreshed_ns: i64,
    out: Outcome,
    /// Records changed since the last [`take`](Engine::take).
    dirty: BTreeSet<String>,
    groups_changed: bool,
}

impl Engine {
    pub fn new(rules: Vec<Rule>, setup: Setup) -> Engine {
        let dispatcher = Dispatcher::new(setup.route.clone());
        let mut engine = Engine {
            rules: BTreeMap::new(),
            threshold: Evaluator::new(Vec::new()),
            logs: LogEvaluator::new(Vec::new()),
            absence: AbsenceEvaluator::new(Vec::new()),
            composite: CompositeEvaluator::new(Vec::new()),
            setup,
            dispatcher,
            records: BTreeMap::new(),
            silences: Vec::new(),
            restored_until_ns: None,
            moments: BTreeMap::new(),
            refreshed_ns: i64::MIN,
            out: Outcome::default(),
            dirty: BTreeSet::new(),
            groups_changed: false,
        };
        engine.load_rules(rules);
        engine
    }

    fn load_rules(&mut self, rules: Vec<Rule>) {
        let kind = |pick: fn(&Condition) -> bool| -> Vec<Rule> {
            rules
                .iter()
                .filter(|r| pick(&r.condition))
                .cloned()
                .collect()
        };
        self.threshold = Evaluator::new(kind(|c| matches!(c, Condition::Threshold(_))));
        self.logs = LogEvaluator::new(kind(|c| {
            matches!(
                c,
                Condition::Log(_)
                    | Condition::Frequency(_)
                    | Condition::Sequence(_)
                    | Condition::Fim(_)
            )
        }));
        self.absence = AbsenceEvaluator::new(kind(|c| matches!(c, Condition::Absence(_))));
        self.composite = CompositeEvaluator::new(kind(|c| matches!(c, Condition::Composite(_))));
        self.rules = rules.into_iter().map(|r| (r.name.clone(), r)).collect();
    }

    /// Takes up what the state store kept: alert records, the dispatcher's groups, silences.
    /// Alerts of rules that no longer exist are resolved at once.
    pub fn restore(&mut self, saved: Saved, now_ns: i64) {
        self.dispatcher = Dispatcher::restore(self.setup.route.clone(), saved.groups);
        self.silences = saved.silences;
        self.records = saved
            .alerts
            .into_iter()
            .map(|r| (r.fingerprint.clone(), r))
            .collect();
        self.hand_back(now_ns);
    }

    /// Replaces the rules (a reload): the alerts of rules kept are handed to the new evaluators
    /// as at a restart; those of rules gone resolve.
    pub fn reload(&mut self, rules: Vec<Rule>, now_ns: i64) {
        self.load_rules(rules);
        self.hand_back(now_ns);
    }

    /// Hands the active records to the evaluators of their rules, and resolves those whose rule
    /// is gone.
    fn hand_back(&mut self, now_ns: i64) {
        let grace = now_ns.saturating_add(self.setup.restore_grace_ns);
        let mut per_kind: [HashMap<String, AlertState>; 4] = Default::default();
        let mut gone = Vec::new();
        for r in self.records.values() {
            if r.state == AlertState::Inactive {
                continue;
            }
            match self.rules.get(&r.rule).map(|rule| &rule.condition) {
                Some(Condition::Threshold(_)) => &mut per_kind[0],
                Some(
                    Condition::Log(_)
                    | Condition::Frequency(_)
                    | Condition::Sequence(_)
                    | Condition::Fim(_),
                ) => &mut per_kind[1],
                Some(Condition::Absence(_)) => &mut per_kind[2],
                Some(Condition::Composite(_)) => &mut per_kind[3],
                None => {
                    gone.push(r.fingerprint.clone());
                    continue;
                }
            }
            .insert(r.fingerprint.clone(), r.state);
        }
        let [threshold, logs, absence, composite] = per_kind;
        // A log record is a moment: an alert of one ends `keep_firing_for` after the last
        // match, whether or not the aggregator restarted since, and needs no grace.
        self.moments = logs
            .iter()
            .map(|(fingerprint, state)| {
                let keep = self
                    .records
                    .get(fingerprint)
                    .and_then(|r| self.rules.get(&r.rule))
                    .map_or(0, |r| r.lifecycle.keep_firing_for_ns);
                let at = match state {
                    AlertState::Firing { last_held_ns, .. } => last_held_ns.saturating_add(keep),
                    _ => grace,
                };
                (fingerprint.clone(), at)
            })
            .collect();
        self.threshold.groups_mut().restored = Restored::new(threshold, grace);
        self.logs.groups_mut().restored = Restored::new(logs, i64::MIN);
        self.absence.groups_mut().restored = Restored::new(absence, grace);
        self.composite.groups_mut().restored = Restored::new(composite, grace);
        self.restored_until_ns = Some(grace);
        for fingerprint in gone {
            self.end(&fingerprint, now_ns, "its rule was removed");
        }
    }

    /// Says `agent_id` was last heard at `last_ns` (from the registry at start), so that absence
    /// rules watch agents that never send again.
    pub fn heard(&mut self, agent_id: &str, last_ns: i64) {
        self.absence.heard(agent_id, last_ns);
    }

    /// Takes one committed event of `agent_id`'s.
    pub fn observe(&mut self, agent_id: &str, event: &Event, now_ns: i64) {
        let mut changes = self.absence.observe(agent_id, event, now_ns);
        match event {
            Event::Metric(point) => changes.extend(self.threshold.observe(agent_id, point, now_ns)),
            Event::Log(record) => changes.extend(self.logs.observe(agent_id, record, now_ns)),
            Event::Fim(fim) => changes.extend(self.logs.observe_fim(agent_id, fim, now_ns)),
            Event::Status(_) => {}
        }
        if !changes.is_empty() {
            self.apply(changes, now_ns);
            self.compose(now_ns);
        }
    }

    /// Takes an agent's heartbeat, received at `now_ns`: the host was heard from (absence
    /// rules), and its clock's distance from the aggregator's becomes a point of the metric
    /// [`CLOCK_SKEW`] (seconds, either way) for threshold rules, and the time its certificate
    /// has left one of [`CERT_EXPIRES_IN`].
    pub fn heartbeat(&mut self, agent_id: &str, status: &AgentStatus, now_ns: i64) {
        let event = Event::Status(status.clone());
        let mut changes = self.absence.observe(agent_id, &event, now_ns);
        let skew = crate::store::marks::clock_skew_ns(status, now_ns);
        let point = MetricPoint {
            name: CLOCK_SKEW.to_owned(),
            unit: "s".to_owned(),
            attributes: Vec::new(),
            time_ns: now_ns,
            value: (skew as f64 / 1e9).abs(),
            kind: MetricKind::Gauge,
        };
        changes.extend(self.threshold.observe(agent_id, &point, now_ns));
        if status.cert_not_after_ns > 0 {
            let point = MetricPoint {
                name: CERT_EXPIRES_IN.to_owned(),
                value: status.cert_not_after_ns.saturating_sub(now_ns) as f64 / 1e9,
                ..point
            };
            changes.extend(self.threshold.observe(agent_id, &point, now_ns));
        }
        if !changes.is_empty() {
            self.apply(changes, now_ns);
            self.compose(now_ns);
        }
    }

    /// Applies what time alone changes, then sends what is due.
    pub fn tick(&mut self, now_ns: i64) {
        let mut changes = self.threshold.tick(now_ns);
        changes.extend(self.logs.tick(now_ns));
        changes.extend(self.absence.tick(now_ns));
        changes.extend(self.composite.tick(now_ns));
        self.apply(changes, now_ns);
        self.compose(now_ns);
        let ended: Vec<String> = self
            .moments
            .iter()
            .filter(|&(_, &at)| at <= now_ns)
            .map(|(fingerprint, _)| fingerprint.clone())
            .collect();
        for fingerprint in ended {
            self.moments.remove(&fingerprint);
            if self.logs.groups_mut().restored.take(&fingerprint).is_some() {
                self.end(&fingerprint, now_ns, "no match since a restart or reload");
            }
        }
        if self.restored_until_ns.is_some_and(|at| at <= now_ns) {
            self.restored_until_ns = None;
            self.end_unmet(now_ns);
        }
        self.suppress(now_ns);
        self.escalate(now_ns);
        if now_ns.saturating_sub(self.refreshed_ns) >= REFRESH_NS {
            self.refresh(now_ns);
        }
        let due = self.dispatcher.flush(now_ns);
        self.groups_changed |= !due.is_empty();
        for n in due {
            let message = self.message(n, now_ns);
            self.out.messages.push(message);
        }
    }

    /// When [`tick`](Self::tick) next has something to do if no event arrives. Silences start
    /// and end on the tick after their time: a running engine ticks at least once a second.
    pub fn next_wake_ns(&self) -> Option<i64> {
        let escalation = self
            .records
            .values()
            .filter_map(|r| self.next_stage(r).map(|(at, _, _)| at));
        [
            self.threshold.next_change_ns(),
            self.logs.next_change_ns(),
            self.absence.next_change_ns(),
            self.composite.next_change_ns(),
            self.dispatcher.next_flush_ns(),
            self.restored_until_ns,
        ]
        .into_iter()
        .flatten()
        .chain(self.moments.values().copied())
        .chain(escalation)
        .min()
    }

    /// What changed since the last call, to write in one transaction.
    pub fn take(&mut self) -> Outcome {
        let mut out = std::mem::take(&mut self.out);
        if std::mem::take(&mut self.groups_changed) {
            out.groups = Some(self.dispatcher.snapshot());
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        // Resolved alerts are kept until their groups notified them.
        dirty.extend(
            self.records
                .values()
                .filter(|r| r.state == AlertState::Inactive)
                .map(|r| r.fingerprint.clone()),
        );
        for fingerprint in dirty {
            match self.records.get(&fingerprint) {
                Some(r)
                    if r.state == AlertState::Inactive && !self.dispatcher.holds(&fingerprint) =>
                {
                    self.records.remove(&fingerprint);
                    out.removed.push(fingerprint);
                }
                Some(r) => out.alerts.push(r.clone()),
                None => out.removed.push(fingerprint),
            }
        }
        out
    }

    /// Every alert the engine keeps, by fingerprint.
    pub fn alerts(&self) -> impl Iterator<Item = &AlertRecord> {
        self.records.values()
    }

    pub fn alert(&self, fingerprint: &str) -> Option<&AlertRecord> {
        self.records.get(fingerprint)
    }

    pub fn silences(&self) -> &[Silence] {
        &self.silences
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    /// The receivers an alert with `labels` would be notified to.
    pub fn receivers(&self, labels: &BTreeMap<String, String>) -> BTreeSet<String> {
        self.dispatcher.receivers(labels)
    }

    /// An operator acknowledges a firing alert: its escalation stops.
    pub fn acknowledge(
        &mut self,
        fingerprint: &str,
        by: &str,
        comment: &str,
        now_ns: i64,
    ) -> Result<AlertRecord, Refused> {
        let record = self
            .records
            .get_mut(fingerprint)
            .ok_or_else(|| Refused::NoAlert(fingerprint.to_owned()))?;
        if !record.firing() {
            return Err(Refused::NotFiring(fingerprint.to_owned()));
        }
        record.ack = Some(Ack {
            by: by.to_owned(),
            at_ns: now_ns,
            comment: comment.to_owned(),
        });
        record.updated_ns = now_ns;
        let record = record.clone();
        self.note(
            &record,
            HistoryKind::Acknowledged,
            now_ns,
            if comment.is_empty() {
                format!("by {by}")
            } else {
                format!("by {by}: {comment}")
            },
        );
        Ok(record)
    }

    /// Adds a silence (or replaces the one with its id). It applies from the next tick.
    pub fn add_silence(&mut self, silence: Silence, now_ns: i64) -> Result<(), Refused> {
        if silence.matchers.is_empty() {
            return Err(Refused::NoMatchers);
        }
        if silence.ends_ns <= silence.starts_ns {
            return Err(Refused::Backwards);
        }
        if silence.ends_ns <= now_ns {
            return Err(Refused::Ended(silence.id));
        }
        self.silences.retain(|s| s.id != silence.id);
        self.silences.push(silence);
        Ok(())
    }

    /// Ends a silence now; its alerts are notified from the next tick if they still fire.
    pub fn expire_silence(&mut self, id: &str, now_ns: i64) -> Result<Silence, Refused> {
        let silence = self
            .silences
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| Refused::NoSilence(id.to_owned()))?;
        if silence.ends_ns <= now_ns {
            return Err(Refused::Ended(id.to_owned()));
        }
        silence.ends_ns = now_ns.max(silence.starts_ns);
        Ok(silence.clone())
    }

    /// Records the evaluators' changes, and routes those that notify.
    fn apply(&mut self, changes: Vec<Change>, now_ns: i64) {
        for c in changes {
            let annotations = self
                .rules
                .get(&c.rule)
                .map(|r| template::render_all(&r.annotations, &c.labels, c.value))
                .unwrap_or_default();
            let record = self
                .records
                .entry(c.fingerprint.clone())
                .or_insert_with(|| AlertRecord {
                    fingerprint: c.fingerprint.clone(),
                    rule: c.rule.clone(),
                    severity: c.severity,
                    labels: c.labels.clone(),
                    annotations: BTreeMap::new(),
                    state: AlertState::Inactive,
                    value: None,
                    active_since_ns: c.at_ns,
                    fired_ns: None,
                    resolved_ns: None,
                    ack: None,
                    escalated: 0,
                    suppressed_by: Vec::new(),
                    updated_ns: c.at_ns,
                });
            record.value = c.value;
            record.updated_ns = c.at_ns;
            let kind = match c.transition {
                Transition::Pending => {
                    *record = AlertRecord {
                        state: AlertState::Pending { since_ns: c.at_ns },
                        active_since_ns: c.at_ns,
                        annotations,
                        fired_ns: None,
                        resolved_ns: None,
                        ack: None,
                        escalated: 0,
                        suppressed_by: Vec::new(),
                        ..record.clone()
                    };
                    HistoryKind::Pending
                }
                Transition::Fired => {
                    if record.state == AlertState::Inactive {
                        record.active_since_ns = c.at_ns;
                    }
                    record.state = AlertState::Firing {
                        since_ns: c.at_ns,
                        last_held_ns: c.at_ns,
                    };
                    record.annotations = annotations;
                    record.fired_ns = Some(c.at_ns);
                    record.resolved_ns = None;
                    record.ack = None;
                    record.escalated = 0;
                    HistoryKind::Fired
                }
                Transition::Cleared => {
                    record.state = AlertState::Inactive;
                    HistoryKind::Cleared
                }
                Transition::Resolved => {
                    record.state = AlertState::Inactive;
                    record.resolved_ns = Some(c.at_ns);
                    HistoryKind::Resolved
                }
            };
            let record = record.clone();
            self.note(&record, kind, c.at_ns, String::new());
            match c.transition {
                Transition::Fired => {
                    let by = self.suppressors(&record.labels, now_ns);
                    if by.is_empty() {
                        self.dispatcher.add(&c, now_ns);
                    } else {
                        self.set_suppressed(&record.fingerprint, by, now_ns);
                    }
                }
                Transition::Resolved => self.dispatcher.add(&c, now_ns),
                Transition::Pending | Transition::Cleared => {}
            }
            if matches!(c.transition, Transition::Fired | Transition::Resolved) {
                self.groups_changed = true;
            }
        }
    }

    /// Ends an alert no evaluator holds any more: resolves it if it fired, drops it if pending.
    fn end(&mut self, fingerprint: &str, now_ns: i64, why: &str) {
        let Some(record) = self.records.get(fingerprint).cloned() else {
            return;
        };
        let transition = match record.state {
            AlertState::Inactive => return,
            AlertState::Pending { .. } => Transition::Cleared,
            AlertState::Firing { .. } => Transition::Resolved,
        };
        self.apply(
            vec![Change {
                fingerprint: record.fingerprint.clone(),
                rule: record.rule.clone(),
                severity: record.severity,
                transition,
                labels: record.labels.clone(),
                value: record.value,
                at_ns: now_ns,
            }],
            now_ns,
        );
        if let Some(last) = self.out.history.last_mut() {
            last.detail = why.to_owned();
        }
    }

    /// Resolves the restored alerts no evaluator met again within the grace.
    fn end_unmet(&mut self, now_ns: i64) {
        let mut unmet: Vec<String> = Vec::new();
        unmet.extend(self.threshold.groups_mut().restored.take_left().into_keys());
        unmet.extend(self.logs.groups_mut().restored.take_left().into_keys());
        unmet.extend(self.absence.groups_mut().restored.take_left().into_keys());
        unmet.extend(self.composite.groups_mut().restored.take_left().into_keys());
        unmet.sort();
        for fingerprint in unmet {
            self.end(
                &fingerprint,
                now_ns,
                "not seen again after a restart or reload",
            );
        }
    }

    /// Evaluates composite rules over what fires now.
    fn compose(&mut self, now_ns: i64) {
        if self
            .rules
            .values()
            .all(|r| !matches!(r.condition, Condition::Composite(_)))
        {
            return;
        }
        let firing: BTreeSet<(String, String)> = self
            .records
            .values()
            .filter(|r| r.firing())
            .filter_map(|r| Some((r.rule.clone(), r.labels.get("host")?.clone())))
            .collect();
        let changes = self.composite.evaluate(&firing, now_ns);
        self.apply(changes, now_ns);
    }

    /// The silences and inhibitions keeping an alert with `labels` from being notified.
    fn suppressors(&self, labels: &BTreeMap<String, String>, now_ns: i64) -> Vec<String> {
        let mut by: Vec<String> = super::matcher::silenced_by(&self.silences, labels, now_ns)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if !self.setup.inhibitions.is_empty() {
            let firing: Vec<BTreeMap<String, String>> = self
                .records
                .values()
                .filter(|r| r.firing())
                .map(|r| r.labels.clone())
                .collect();
            if self
                .setup
                .inhibitions
                .iter()
                .any(|i| i.inhibits(labels, &firing))
            {
                by.push("inhibited".to_owned());
            }
        }
        by
    }

    fn set_suppressed(&mut self, fingerprint: &str, by: Vec<String>, now_ns: i64) {
        let Some(record) = self.records.get_mut(fingerprint) else {
            return;
        };
        if record.suppressed_by == by {
            return;
        }
        let was = !record.suppressed_by.is_empty();
        record.suppressed_by = by.clone();
        let record = record.clone();
        match (was, by.is_empty()) {
            (false, false) => {
                self.note(&record, HistoryKind::Silenced, now_ns, by.join(", "));
            }
            (true, true) => self.note(&record, HistoryKind::Unsilenced, now_ns, String::new()),
            _ => {
                self.dirty.insert(record.fingerprint.clone());
            }
        }
    }

    /// Applies silences and inhibitions to what fires: newly suppressed alerts leave their
    /// groups, alerts no longer suppressed join them.
    fn suppress(&mut self, now_ns: i64) {
        let firing: Vec<(String, BTreeMap<String, String>, bool)> = self
            .records
            .values()
            .filter(|r| r.firing())
            .map(|r| {
                (
                    r.fingerprint.clone(),
                    r.labels.clone(),
                    r.suppressed_by.is_empty(),
                )
            })
            .collect();
        for (fingerprint, labels, notified) in firing {
            let by = self.suppressors(&labels, now_ns);
            match (notified, by.is_empty()) {
                (true, false) => {
                    self.dispatcher.forget(&fingerprint);
                    self.groups_changed = true;
                }
                (false, true) => {
                    let Some(r) = self.records.get(&fingerprint) else {
                        continue;
                    };
                    let change = Change {
                        fingerprint: fingerprint.clone(),
                        rule: r.rule.clone(),
                        severity: r.severity,
                        transition: Transition::Fired,
                        labels: labels.clone(),
                        value: r.value,
                        at_ns: r.fired_ns.unwrap_or(now_ns),
                    };
                    self.dispatcher.add(&change, now_ns);
                    self.groups_changed = true;
                }
                _ => {}
            }
            self.set_suppressed(&fingerprint, by, now_ns);
        }
    }

    /// The next escalation stage of a record, if it has one: when, which stage (1-based) and to
    /// whom.
    fn next_stage(&self, r: &AlertRecord) -> Option<(i64, u32, String)> {
        if !r.firing() || r.ack.is_some() || !r.suppressed_by.is_empty() {
            return None;
        }
        let policy = self
            .setup
            .escalations
            .iter()
            .find(|e| all_match(&e.matchers, &r.labels))?;
        let stage = policy.stages.get(r.escalated as usize)?;
        Some((
            r.fired_ns?.saturating_add(stage.after_ns),
            r.escalated + 1,
            stage.receiver.clone(),
        ))
    }

    fn escalate(&mut self, now_ns: i64) {
        let due: Vec<(String, u32, String)> = self
            .records
            .values()
            .filter_map(|r| {
                let (at, stage, receiver) = self.next_stage(r)?;
                (at <= now_ns).then(|| (r.fingerprint.clone(), stage, receiver))
            })
            .collect();
        for (fingerprint, stage, receiver) in due {
            let Some(record) = self.records.get_mut(&fingerprint) else {
                continue;
            };
            record.escalated = stage;
            let record = record.clone();
            self.note(
                &record,
                HistoryKind::Escalated,
                now_ns,
                format!("stage {stage}: {receiver}"),
            );
            let message = Message {
                receiver,
                group_key: format!("escalation:{fingerprint}:{stage}"),
                group_labels: BTreeMap::new(),
                alerts: vec![self.message_alert(&record, true)],
                external_url: self.setup.external_url.clone(),
                escalation: stage,
                created_ns: now_ns,
            };
            self.out.messages.push(message);
        }
    }

    /// Takes up the states the evaluators moved without a transition.
    fn refresh(&mut self, now_ns: i64) {
        self.refreshed_ns = now_ns;
        let active = self
            .threshold
            .active()
            .into_iter()
            .chain(self.logs.active())
            .chain(self.absence.active())
            .chain(self.composite.active());
        for a in active {
            if let Some(r) = self.records.get_mut(&a.fingerprint)
                && r.state != a.state
                && r.state != AlertState::Inactive
            {
                r.state = a.state;
                r.value = a.value;
                self.dirty.insert(a.fingerprint);
            }
        }
    }

    fn note(&mut self, record: &AlertRecord, kind: HistoryKind, at_ns: i64, detail: String) {
        self.dirty.insert(record.fingerprint.clone());
        self.out.history.push(HistoryEntry {
            fingerprint: record.fingerprint.clone(),
            rule: record.rule.clone(),
            kind,
            labels: record.labels.clone(),
            value: record.value,
            at_ns,
            detail,
        });
    }

    fn message_alert(&self, r: &AlertRecord, firing: bool) -> MessageAlert {
        MessageAlert {
            fingerprint: r.fingerprint.clone(),
            status: if firing {
                Status::Firing
            } else {
                Status::Resolved
            },
            labels: r.labels.clone(),
            annotations: r.annotations.clone(),
            starts_at_ns: r.fired_ns.unwrap_or(r.active_since_ns),
            ends_at_ns: if firing { None } else { r.resolved_ns },
            value: r.value,
            generator_url: format!(
                "{}/api/v1/alerts/{}",
                self.setup.external_url.trim_end_matches('/'),
                r.fingerprint
            ),
        }
    }

    fn message(&self, n: Notification, now_ns: i64) -> Message {
        let alerts = n
            .alerts
            .iter()
            .map(|g| match self.records.get(&g.fingerprint) {
                Some(r) => self.message_alert(r, g.firing),
                None => MessageAlert {
                    fingerprint: g.fingerprint.clone(),
                    status: if g.firing {
                        Status::Firing
                    } else {
                        Status::Resolved
                    },
                    labels: g.labels.clone(),
                    annotations: BTreeMap::new(),
                    starts_at_ns: g.since_ns,
                    ends_at_ns: (!g.firing).then_some(now_ns),
                    value: None,
                    generator_url: String::new(),
                },
            })
            .collect();
        Message {
            receiver: n.receiver,
            group_key: n.group_key,
            group_labels: n.group_labels,
            alerts,
            external_url: self.setup.external_url.clone(),
            escalation: 0,
            created_ns: now_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use outpost_common::event::{MetricKind, MetricPoint};

    use super::*;
    use crate::rules::file::parse_file;
    use crate::rules::matcher::parse;

    /// `for` 1 min, fires at once otherwise; the value is templated into the summary.
    const RULES: &str = r#"
[[rule]]
name = "cpu-busy"
kind = "threshold"
severity = "high"
metric = "cpu"
op = ">"
value = 0.9
for = "1m"
annotations = { summary = "CPU busy on {{ host }}: {{ value }}" }

[[rule]]
name = "host-down"
kind = "absence"
severity = "critical"
after = "2m"
"#;

    /// The state store, as far as the engine's outcomes go: what [`Engine::take`] said to write.
    #[derive(Default)]
    struct Store {
        saved: Saved,
        messages: Vec<Message>,
        history: Vec<HistoryEntry>,
    }

    impl Store {
        fn write(&mut self, out: Outcome) {
            for a in out.alerts {
                self.saved.alerts.retain(|r| r.fingerprint != a.fingerprint);
                self.saved.alerts.push(a);
            }
            self.saved
                .alerts
                .retain(|r| !out.removed.contains(&r.fingerprint));
            if let Some(groups) = out.groups {
                self.saved.groups = groups;
            }
            self.messages.extend(out.messages);
            self.history.extend(out.history);
        }
    }

    fn setup() -> Setup {
        let mut route = Route::root("ops");
        route.group_wait_ns = 10 * S;
        route.group_interval_ns = 60 * S;
        Setup {
            route,
            ..Setup::default()
        }
    }

    fn engine(setup: Setup) -> Engine {
        Engine::new(parse_file(Path::new("t.toml"), RULES).unwrap(), setup)
    }

    fn cpu(t: i64, value: f64) -> Event {
        Event::Metric(MetricPoint {
            name: "cpu".into(),
            unit: "1".into(),
            attributes: Vec::new(),
            time_ns: t * S,
            value,
            kind: MetricKind::Gauge,
        })
    }

    /// Runs the engine from second `from` to `to` (inclusive), `host` sending a CPU point of
    /// `value` every 10 s and the engine ticking every second, as the aggregator does; writes
    /// every outcome to `store`.
    fn run(e: &mut Engine, store: &mut Store, host: &str, from: i64, to: i64, value: Option<f64>) {
        for t in from..=to {
            if let Some(v) = value
                && t % 10 == 0
            {
                e.observe(host, &cpu(t, v), t * S);
            }
            e.tick(t * S);
            store.write(e.take());
        }
    }

    fn statuses(messages: &[Message]) -> Vec<(String, Status, usize)> {
        messages
            .iter()
            .map(|m| (m.receiver.clone(), m.status(), m.alerts.len()))
            .collect()
    }

    #[test]
    fn an_alert_goes_pending_fires_and_resolves_with_one_notification_each() {
        let mut e = engine(setup());
        let mut store = Store::default();
        run(&mut e, &mut store, "web-1", 0, 50, Some(0.95));
        assert!(store.messages.is_empty());
        assert!(matches!(
            store.saved.alerts[0].state,
            AlertState::Pending { since_ns: 0 }
        ));
        run(&mut e, &mut store, "web-1", 51, 100, Some(0.95));
        // Fired at 60 s, notified after the group's 10 s wait.
        assert_eq!(
            statuses(&store.messages),
            [("ops".into(), Status::Firing, 1)]
        );
        let m = &store.messages[0];
        assert_eq!(m.created_ns, 70 * S);
        assert_eq!(
            m.alerts[0].annotations["summary"],
            "CPU busy on web-1: 0.95"
        );
        assert_eq!(m.alerts[0].starts_at_ns, 60 * S);
        assert_eq!(m.alerts[0].labels["alertname"], "cpu-busy");
        run(&mut e, &mut store, "web-1", 101, 200, Some(0.5));
        assert_eq!(
            statuses(&store.messages),
            [
                ("ops".into(), Status::Firing, 1),
                ("ops".into(), Status::Resolved, 1)
            ]
        );
        assert_eq!(store.messages[1].alerts[0].ends_at_ns, Some(110 * S));
        // Notified and resolved: nothing is kept.
        assert!(store.saved.alerts.is_empty(), "{:?}", store.saved.alerts);
        let kinds: Vec<HistoryKind> = store.history.iter().map(|h| h.kind).collect();
        assert_eq!(
            kinds,
            [
                HistoryKind::Pending,
                HistoryKind::Fired,
                HistoryKind::Resolved
            ]
        );
    }

    #[test]
    fn a_restart_restores_alerts_without_notifying_them_again() {
        let mut e = engine(setup());
        let mut store = Store::default();
        run(&mut e, &mut store, "web-1", 0, 100, Some(0.95));
        assert_eq!(store.messages.len(), 1);
        // A pending alert too: it began at 90 s.
        run(&mut e, &mut store, "web-2", 90, 100, Some(0.95));
        drop(e);
        let mut e = engine(setup());
        e.restore(store.saved.clone(), 130 * S);
        // The windows refill; nothing is notified again while the condition holds, and the
        // pending alert fires a minute after it began pending, before the restart.
        for t in 130..=400 {
            if t % 10 == 0 {
                e.observe("web-1", &cpu(t, 0.95), t * S);
                e.observe("web-2", &cpu(t, 0.95), t * S);
            }
            e.tick(t * S);
            store.write(e.take());
        }
        let fired: Vec<&HistoryEntry> = store
            .history
            .iter()
            .filter(|h| h.kind == HistoryKind::Fired)
            .collect();
        assert_eq!(fired.len(), 2);
        assert_eq!(fired[1].labels["host"], "web-2");
        assert_eq!(fired[1].at_ns, 150 * S);
        assert_eq!(store.messages.len(), 2, "{:#?}", statuses(&store.messages));
        assert_eq!(store.messages[1].alerts.len(), 2);
        assert_eq!(store.messages[1].alerts[0].status, Status::Firing);
    }

    #[test]
    fn restored_alerts_no_evaluator_meets_again_resolve_after_the_grace() {
        let mut e = engine(setup());
        let mut store = Store::default();
        run(&mut e, &mut store, "web-1", 0, 100, Some(0.95));
        let mut e = engine(setup());
        e.restore(store.saved.clone(), 200 * S);
        // The host sends nothing: within the grace the alert stands.
        run(&mut e, &mut store, "web-1", 200, 319, None);
        assert_eq!(store.messages.len(), 1);
        run(&mut e, &mut store, "web-1", 320, 400, None);
        assert_eq!(
            statuses(&store.messages)[1],
            ("ops".into(), Status::Resolved, 1)
        );
        let resolved = store
            .history
            .iter()
            .find(|h| h.kind == HistoryKind::Resolved)
            .unwrap();
        assert_eq!(resolved.at_ns, 320 * S);
        assert!(resolved.detail.contains("restart"), "{}", resolved.detail);
    }

    #[test]
    fn a_silence_keeps_an_alert_quiet_and_its_expiry_lets_it_be_notified() {
        let mut e = engine(setup());
        let mut store = Store::default();
        e.add_silence(
            Silence {
                id: "s1".into(),
                matchers: vec![parse("host=web-1").unwrap()],
                starts_ns: 0,
                ends_ns: 1000 * S,
                author: "ann".into(),
                comment: "maintenance".into(),
            },
            0,
        )
        .unwrap();
        run(&mut e, &mut store, "web-1", 0, 200, Some(0.95));
        assert!(store.messages.is_empty());
        let record = &store.saved.alerts[0];
        assert_eq!(record.suppressed_by, ["s1"]);
        e.expire_silence("s1", 200 * S).unwrap();
        assert_eq!(
            e.expire_silence("s1", 201 * S),
            Err(Refused::Ended("s1".into()))
        );
        run(&mut e, &mut store, "web-1", 201, 260, Some(0.95));
        assert_eq!(
            statuses(&store.messages),
            [("ops".into(), Status::Firing, 1)]
        );
        // Notified from when it fired, not from when the silence ended.
        assert_eq!(store.messages[0].alerts[0].starts_at_ns, 60 * S);
        assert!(
            e.add_silence(
                Silence {
                    id: "s2".into(),
                    matchers: Vec::new(),
                    starts_ns: 0,
                    ends_ns: 1,
                    author: String::new(),
                    comment: String::new(),
                },
                0
            )
            .is_err()
        );
    }

    #[test]
    fn an_inhibition_mutes_a_hosts_alerts_while_the_host_is_down() {
        let mut s = setup();
        s.inhibitions.push(Inhibition {
            source: vec![parse("alertname=host-down").unwrap()],
            target: vec![parse("severity!=critical").unwrap()],
            equal: vec!["host".into()],
        });
        let mut e = engine(s);
        let mut store = Store::default();
        // web-2 went silent long ago; web-1 is busy.
        e.heard("web-2", 0);
        e.heard("web-1", 0);
        for t in 0..=300 {
            if t % 10 == 0 && t <= 100 {
                e.observe("web-2", &cpu(t, 0.95), t * S);
            }
            if t % 10 == 0 {
                e.observe("web-1", &cpu(t, 0.95), t * S);
            }
            e.tick(t * S);
            store.write(e.take());
        }
        // web-2: host-down fires at 220 s; its cpu alert, firing since 60 s, was notified
        // before; web-1's cpu alert was notified; nothing is muted that was not inhibited.
        let down = store
            .saved
            .alerts
            .iter()
            .find(|r| r.rule == "host-down")
            .unwrap();
        assert_eq!(down.labels["host"], "web-2");
        let inhibited: Vec<&AlertRecord> = store
            .saved
            .alerts
            .iter()
            .filter(|r| r.suppressed_by == ["inhibited"])
            .collect();
        assert_eq!(inhibited.len(), 1);
        assert_eq!(inhibited[0].labels["host"], "web-2");
        assert_eq!(inhibited[0].rule, "cpu-busy");
    }

    #[test]
    fn an_unacknowledged_alert_escalates_and_an_acknowledged_one_stops() {
        let mut s = setup();
        s.escalations.push(Escalation {
            matchers: vec![parse("alertname=cpu-busy").unwrap()],
            stages: vec![
                Stage {
                    after_ns: 60 * S,
                    receiver: "pager".into(),
                },
                Stage {
                    after_ns: 120 * S,
                    receiver: "boss".into(),
                },
            ],
        });
        let mut e = engine(s);
        let mut store = Store::default();
        run(&mut e, &mut store, "web-1", 0, 130, Some(0.95));
        let receivers: Vec<&str> = store.messages.iter().map(|m| m.receiver.as_str()).collect();
        assert_eq!(receivers, ["ops", "pager"]);
        assert_eq!(store.messages[1].escalation, 1);
        assert_eq!(store.messages[1].created_ns, 120 * S);
        let fp = store.messages[1].alerts[0].fingerprint.clone();
        assert_eq!(
            e.acknowledge("nope", "ann", "", 130 * S),
            Err(Refused::NoAlert("nope".into()))
        );
        let acked = e.acknowledge(&fp, "ann", "on it", 131 * S).unwrap();
        assert_eq!(acked.ack.as_ref().unwrap().by, "ann");
        run(&mut e, &mut store, "web-1", 131, 400, Some(0.95));
        assert_eq!(store.messages.len(), 2, "{:?}", statuses(&store.messages));
        assert!(
            store
                .history
                .iter()
                .any(|h| h.kind == HistoryKind::Acknowledged)
        );
    }

    #[test]
    fn a_restored_log_alert_ends_when_its_keep_firing_for_does_not_at_the_grace() {
        const LOG_RULE: &str = r#"
[[rule]]
name = "oops"
kind = "log"
severity = "low"
pattern = "oops"
keep_firing_for = "30s"
"#;
        let oops = |t: i64| {
            Event::Log(outpost_common::event::LogRecord {
                time_ns: t * S,
                source: "app".into(),
                severity: None,
                body: "oops".into(),
                attributes: Vec::new(),
            })
        };
        let rules = || parse_file(Path::new("t.toml"), LOG_RULE).unwrap();
        let mut e = Engine::new(rules(), setup());
        let mut store = Store::default();
        e.observe("web-1", &oops(0), 0);
        run(&mut e, &mut store, "web-1", 0, 15, None);
        assert_eq!(
            statuses(&store.messages),
            [("ops".into(), Status::Firing, 1)]
        );
        // Restarted at 20 s: no match since 0 s, so it resolves at 30 s, not after the grace.
        let mut e = Engine::new(rules(), setup());
        e.restore(store.saved.clone(), 20 * S);
        assert_eq!(e.next_wake_ns(), Some(30 * S));
        run(&mut e, &mut store, "web-1", 20, 60, None);
        let resolved = store
            .history
            .iter()
            .find(|h| h.kind == HistoryKind::Resolved)
            .unwrap();
        assert_eq!(resolved.at_ns, 30 * S);
        // Restarted again while firing, a new match keeps it firing without a notification.
        e.observe("web-1", &oops(100), 100 * S);
        run(&mut e, &mut store, "web-1", 100, 115, None);
        let mut e = Engine::new(rules(), setup());
        e.restore(store.saved.clone(), 120 * S);
        e.observe("web-1", &oops(125), 125 * S);
        run(&mut e, &mut store, "web-1", 120, 200, None);
        let kinds: Vec<HistoryKind> = store.history.iter().map(|h| h.kind).collect();
        use HistoryKind::{Fired, Resolved};
        assert_eq!(kinds, [Fired, Resolved, Fired, Resolved]);
        assert_eq!(store.history[3].at_ns, 155 * S);
        // The resolution at 30 s waited for the group's interval (to 70 s) and was overtaken by
        // the firing at 100 s, as Alertmanager's would be.
        let sent: Vec<Status> = store.messages.iter().map(Message::status).collect();
        assert_eq!(sent, [Status::Firing, Status::Firing, Status::Resolved]);
    }

    #[test]
    fn a_reload_without_a_rule_resolves_its_alerts() {
        let mut e = engine(setup());
        let mut store = Store::default();
        run(&mut e, &mut store, "web-1", 0, 100, Some(0.95));
        let only_absence = RULES.split("[[rule]]").nth(2).unwrap();
        e.reload(
            parse_file(Path::new("t.toml"), &format!("[[rule]]{only_absence}")).unwrap(),
            101 * S,
        );
        run(&mut e, &mut store, "web-1", 101, 200, Some(0.95));
        assert_eq!(
            statuses(&store.messages)[1],
            ("ops".into(), Status::Resolved, 1)
        );
        assert_eq!(e.rules().count(), 1);
    }
}
