//! One alert as every rule kind keeps it: its labels, fingerprint and lifecycle state, and the
//! changes it reports.
//!
//! An alert's labels are `alertname` (the rule's name), `severity`, `host` (the agent's id, unless
//! the rule groups across hosts), the group's own labels (a series' attributes, a frequency rule's
//! `group_by` fields), and the rule's labels, which win where they share a name. Its fingerprint
//! is a hash of those labels, the same across restarts and aggregators.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use super::file::{Rule, Severity};
use super::lifecycle::{AlertState, Transition};

/// A change of one alert's state, to record and route.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub fingerprint: String,
    pub rule: String,
    pub severity: Severity,
    pub transition: Transition,
    pub labels: BTreeMap<String, String>,
    /// What the rule measured at the change (an aggregate, a count), if anything.
    pub value: Option<f64>,
    pub at_ns: i64,
}

/// One alert that is pending or firing.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    pub fingerprint: String,
    pub rule: String,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub state: AlertState,
    pub value: Option<f64>,
}

/// Alert states read back from the state store at start, by fingerprint, for the evaluators to
/// take up when they meet the same alerts again.
///
/// A restored alert keeps its state and times (a pending alert fires when its `for` ends from
/// when it began pending, not from the restart). Its rule's evaluator knows nothing of the
/// alert's condition until events arrive again (a window refills, a count restarts), so until
/// `grace_until_ns` a restored alert ignores a condition that does not hold: a restart alone
/// neither resolves nor clears it. Restored alerts no evaluator met again by then are the
/// engine's to resolve ([`Restored::take_left`]).
#[derive(Debug, Clone, Default)]
pub struct Restored {
    states: HashMap<String, AlertState>,
    grace_until_ns: i64,
}

impl Restored {
    pub fn new(states: HashMap<String, AlertState>, grace_until_ns: i64) -> Restored {
        Restored {
            states,
            grace_until_ns,
        }
    }

    /// The restored alerts nobody took up, emptying the set.
    pub fn take_left(&mut self) -> HashMap<String, AlertState> {
        std::mem::take(&mut self.states)
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Takes one restored alert out, if no group has taken it up.
    pub fn take(&mut self, fingerprint: &str) -> Option<AlertState> {
        self.states.remove(fingerprint)
    }
}

/// One alert of one rule's group.
#[derive(Debug, Clone)]
pub struct Slot {
    state: AlertState,
    /// Whether the condition held at the last evaluation.
    holds: bool,
    value: Option<f64>,
    labels: BTreeMap<String, String>,
    fingerprint: String,
    /// Set for an alert restored at start: until then a condition that does not hold is not
    /// believed (see [`Restored`]).
    grace_until_ns: i64,
}

impl Slot {
    /// The alert of `rule` for `host` (`None`: across hosts) and a group with `group_labels`.
    pub fn new(
        rule: &Rule,
        host: Option<&str>,
        group_labels: impl IntoIterator<Item = (String, String)>,
    ) -> Slot {
        let mut labels: BTreeMap<String, String> = group_labels.into_iter().collect();
        if let Some(host) = host {
            labels.insert("host".to_owned(), host.to_owned());
        }
        labels.extend(rule.labels.clone());
        labels.insert("alertname".to_owned(), rule.name.clone());
        labels.insert(
            "severity".to_owned(),
            severity_name(rule.severity).to_owned(),
        );
        let fingerprint = fingerprint(&labels);
        Slot {
            state: AlertState::Inactive,
            holds: false,
            value: None,
            labels,
            fingerprint,
            grace_until_ns: i64::MIN,
        }
    }

    /// Takes up the alert's state from `restored` if it is there.
    pub fn restore(mut self, restored: &mut Restored) -> Slot {
        if let Some(state) = restored.states.remove(&self.fingerprint) {
            self.state = state;
            self.grace_until_ns = restored.grace_until_ns;
        }
        self
    }

    /// Evaluates the condition anew (`holds`, having measured `value`) at `now_ns`.
    pub fn set(
        &mut self,
        rule: &Rule,
        holds: bool,
        value: Option<f64>,
        now_ns: i64,
    ) -> Option<Change> {
        self.holds = holds;
        self.value = value;
        self.step(rule, now_ns)
    }

    /// Says that the condition, which held for a moment (a log record), no longer does: the
    /// alert keeps firing for the rule's `keep_firing_for`. No change by itself.
    pub fn release(&mut self) {
        self.holds = false;
    }

    pub fn state(&self) -> AlertState {
        self.state
    }

    fn step(&mut self, rule: &Rule, now_ns: i64) -> Option<Change> {
        if !self.holds && now_ns < self.grace_until_ns {
            return None;
        }
        let (state, transition) = rule.lifecycle.step(self.state, self.holds, now_ns);
        self.state = state;
        transition.map(|transition| Change {
            fingerprint: self.fingerprint.clone(),
            rule: rule.name.clone(),
            severity: rule.severity,
            transition,
            labels: self.labels.clone(),
            value: self.value,
            at_ns: now_ns,
        })
    }

    fn next_change_ns(&self, rule: &Rule) -> Option<i64> {
        let in_grace = !self.holds && self.state != AlertState::Inactive;
        match rule.lifecycle.next_change_ns(self.state, self.holds) {
            Some(at) if in_grace => Some(at.max(self.grace_until_ns)),
            None if in_grace && self.grace_until_ns != i64::MIN => Some(self.grace_until_ns),
            other => other,
        }
    }
}

/// A group of a rule: its alert, and what the rule keeps to evaluate it (`data`).
#[derive(Debug)]
pub struct Group<T> {
    pub data: T,
    pub alert: Slot,
    /// When the group is filed in its [`Groups`]' timers: when time alone may change it.
    due: Option<i64>,
}

impl<T> Group<T> {
    pub fn new(data: T, alert: Slot) -> Group<T> {
        Group {
            data,
            alert,
            due: None,
        }
    }
}

/// What every evaluator answers from its groups.
pub trait Evaluates {
    type Key: GroupKey;
    type Data;

    fn groups(&self) -> &Groups<Self::Key, Group<Self::Data>>;

    /// The same, to change: restoring alerts at start.
    fn groups_mut(&mut self) -> &mut Groups<Self::Key, Group<Self::Data>>;

    /// See [`Groups::next_change_ns`].
    fn next_change_ns(&self) -> Option<i64> {
        self.groups().next_change_ns()
    }

    /// See [`Groups::active`].
    fn active(&self) -> Vec<ActiveAlert> {
        self.groups().active()
    }
}

/// A group's key, which starts with its rule's index.
pub trait GroupKey: Eq + Hash + Ord + Clone {
    fn rule(&self) -> usize;
}

impl<A: Eq + Hash + Ord + Clone, B: Eq + Hash + Ord + Clone> GroupKey for (usize, A, B) {
    fn rule(&self) -> usize {
        self.0
    }
}

/// The rules of an evaluator and their groups, each with its alert.
///
/// A fleet has many groups (a rule's alert per host and series) and few of them wait on time (a
/// pending alert's `for`, a firing one's `keep_firing_for`, a host about to fall silent). The
/// groups that do are filed by when, so that [`Groups::tick`] and [`Groups::next_change_ns`]
/// look at those alone instead of every group at every step: after any change to a group, its
/// evaluator calls [`Groups::touch`].
#[derive(Debug)]
pub struct Groups<K, G> {
    /// Shared, so that an evaluator can walk its rules while it changes its groups.
    pub rules: std::sync::Arc<Vec<Rule>>,
    pub map: HashMap<K, G>,
    /// Alerts restored at start that no group has taken up yet.
    pub restored: Restored,
    /// The groups that time alone may change, by when.
    timers: BTreeSet<(i64, K)>,
}

impl<K: GroupKey, T> Groups<K, Group<T>> {
    pub fn new(rules: Vec<Rule>) -> Self {
        Groups {
            rules: std::sync::Arc::new(rules),
            map: HashMap::new(),
            restored: Restored::default(),
            timers: BTreeSet::new(),
        }
    }

    /// Files group `key` anew after a change to it: under its alert's next change by time
    /// alone, or under `also` (a time of the evaluator's own, such as when a host falls silent)
    /// if that is sooner; under nothing if neither.
    pub fn touch(&mut self, key: &K, also: Option<i64>) {
        let Some(g) = self.map.get_mut(key) else {
            return;
        };
        let own = g.alert.next_change_ns(&self.rules[key.rule()]);
        let due = match (own, also) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if due != g.due {
            if let Some(old) = g.due {
                self.timers.remove(&(old, key.clone()));
            }
            if let Some(at) = due {
                self.timers.insert((at, key.clone()));
            }
            g.due = due;
        }
    }

    /// The groups filed at or before `now_ns`, soonest first.
    pub fn due(&self, now_ns: i64) -> Vec<K> {
        self.timers
            .iter()
            .take_while(|(at, _)| *at <= now_ns)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// Keeps the groups for which `keep` (given the group's rule) says so, unfiling the others.
    pub fn retain(&mut self, mut keep: impl FnMut(&Rule, &K, &mut Group<T>) -> bool) {
        let (rules, timers) = (&self.rules, &mut self.timers);
        self.map.retain(|key, g| {
            let kept = keep(&rules[key.rule()], key, g);
            if !kept && let Some(at) = g.due {
                timers.remove(&(at, key.clone()));
            }
            kept
        });
    }

    /// Applies what time alone changes by `now_ns` (a pending alert whose `for` passed while its
    /// condition held, a firing one whose `keep_firing_for` ran out), in order of fingerprint.
    pub fn tick(&mut self, now_ns: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        for key in self.due(now_ns) {
            let rule = &self.rules[key.rule()];
            if let Some(g) = self.map.get_mut(&key)
                && g.alert.next_change_ns(rule).is_some_and(|at| at <= now_ns)
            {
                changes.extend(g.alert.step(rule, now_ns));
            }
            self.touch(&key, None);
        }
        changes.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        changes
    }

    /// When [`tick`](Self::tick) next has something to do, if the conditions stay as they are.
    pub fn next_change_ns(&self) -> Option<i64> {
        #[cfg(debug_assertions)]
        self.check_filed();
        self.timers.first().map(|(at, _)| *at)
    }

    /// Checks that no group's alert changes by time before the group is filed for: a change
    /// to a group that was not followed by [`Groups::touch`]. Every group is looked at, so only
    /// builds with debug assertions (the tests) do it.
    #[cfg(debug_assertions)]
    fn check_filed(&self) {
        for (key, g) in &self.map {
            let own = g.alert.next_change_ns(&self.rules[key.rule()]);
            assert!(
                own.is_none_or(|at| g.due.is_some_and(|due| due <= at)),
                "a group changes at {own:?} but is filed for {:?}: it was not touched",
                g.due
            );
            if let Some(at) = g.due {
                assert!(self.timers.contains(&(at, key.clone())));
            }
        }
    }

    /// The alerts pending or firing, in order of fingerprint.
    pub fn active(&self) -> Vec<ActiveAlert> {
        let mut active: Vec<ActiveAlert> = self
            .slots()
            .filter(|(_, slot)| slot.state != AlertState::Inactive)
            .map(|(rule, slot)| ActiveAlert {
                fingerprint: slot.fingerprint.clone(),
                rule: rule.name.clone(),
                severity: rule.severity,
                labels: slot.labels.clone(),
                state: slot.state,
                value: slot.value,
            })
            .collect();
        active.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        active
    }

    fn slots(&self) -> impl Iterator<Item = (&Rule, &Slot)> {
        self.map
            .iter()
            .map(|(key, g)| (&self.rules[key.rule()], &g.alert))
    }
}

/// The first 16 hex digits of the SHA-256 of the labels, each `name=value` and a NUL, in order of
/// name.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, value) in labels {
        ctx.update(name.as_bytes());
        ctx.update(b"=");
        ctx.update(value.as_bytes());
        ctx.update(b"\0");
    }
    ctx.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::High => "high",
        Severity::Medium => "medium",
        Severity::Low => "low",
        Severity::Info => "info",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_depends_on_every_label_and_on_nothing_else() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let a = fingerprint(&labels(&[("alertname", "x"), ("host", "web-1")]));
        assert_eq!(a.len(), 16);
        assert_eq!(
            a,
            fingerprint(&labels(&[("host", "web-1"), ("alertname", "x")]))
        );
        assert_ne!(
            a,
            fingerprint(&labels(&[("alertname", "x"), ("host", "web-2")]))
        );
        // Where a name ends and its value begins is part of the hash.
        assert_ne!(
            fingerprint(&labels(&[("ab", "c")])),
            fingerprint(&labels(&[("a", "bc")]))
        );
    }
}
