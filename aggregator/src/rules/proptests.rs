//! Property tests of routing and grouping ([`Dispatcher`]), silences and inhibitions, each against
//! a naive model: random alerts over a few label names and values, random route trees, matchers
//! and silences, and random sequences of alerts firing and resolving as time advances by random
//! steps.
//!
//! The models say what Alertmanager's meanings require, not how the code gets there: matchers
//! are evaluated straight from what they say (equal, not equal, or a regular expression built
//! from literals, so the model knows what it matches without a regex engine), and the dispatcher
//! is checked against a record of every group's alerts and notifications, with the earliest time
//! each notification may go and the latest by which it must have gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use proptest::prelude::*;
use proptest::sample::select;

use super::alert::{Change, fingerprint};
use super::file::Severity;
use super::lifecycle::Transition;
use super::matcher::{Inhibition, MatchOp, Matcher, Silence, silenced_by};
use super::route::{Dispatcher, Notification, Route};

const S: i64 = 1_000_000_000;

type Labels = BTreeMap<String, String>;

// Labels and matchers.

/// The label names matchers look at: those alerts have, and `dc`, which none has.
const NAMES: &[&str] = &["alertname", "host", "severity", "team", "dc"];

/// Values matchers compare with: those alerts have, the empty string, and prefixes of them, so
/// that a regular expression that is not anchored would show.
const VALUES: &[&str] = &[
    "",
    "web-1",
    "web-10",
    "web",
    "db-1",
    "high",
    "hig",
    "critical",
    "ops",
    "cpu-busy",
    "disk-full",
];

/// Prefixes regular expressions look for.
const PREFIXES: &[&str] = &["", "web", "web-1", "d", "c", "h"];

/// The labels routes group by: every label (`None`), none, or some.
const GROUP_BY: &[Option<&[&str]>] = &[
    None,
    Some(&[]),
    Some(&["alertname"]),
    Some(&["alertname", "host"]),
    Some(&["team"]),
];

/// An alert's labels: always an `alertname` and a `host`, sometimes a `severity`, and a `team`
/// that may also be present with the empty string.
fn alert_labels() -> impl Strategy<Value = Labels> {
    const ALERTNAMES: &[&str] = &["cpu-busy", "disk-full"];
    const HOSTS: &[&str] = &["web-1", "web-10", "db-1"];
    const SEVERITIES: &[Option<&str>] = &[Some("high"), Some("critical"), None];
    const TEAMS: &[Option<&str>] = &[Some("ops"), Some(""), None];
    (
        select(ALERTNAMES),
        select(HOSTS),
        select(SEVERITIES),
        select(TEAMS),
    )
        .prop_map(|(alertname, host, severity, team)| {
            let mut labels = Labels::new();
            labels.insert("alertname".to_owned(), alertname.to_owned());
            labels.insert("host".to_owned(), host.to_owned());
            if let Some(s) = severity {
                labels.insert("severity".to_owned(), s.to_owned());
            }
            if let Some(t) = team {
                labels.insert("team".to_owned(), t.to_owned());
            }
            labels
        })
}

/// What a regular expression of a matcher says, in terms the model reads without a regex
/// engine. Rendered with its literals escaped, so that it means exactly this.
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    /// One of these values, exactly.
    OneOf(Vec<&'static str>),
    /// Any value that starts with this.
    Prefix(&'static str),
}

impl Pattern {
    fn regex(&self) -> String {
        match self {
            Pattern::OneOf(values) => values
                .iter()
                .map(|v| regex::escape(v))
                .collect::<Vec<_>>()
                .join("|"),
            Pattern::Prefix(p) => format!("{}.*", regex::escape(p)),
        }
    }

    fn holds(&self, value: &str) -> bool {
        match self {
            Pattern::OneOf(values) => values.contains(&value),
            Pattern::Prefix(p) => value.starts_with(p),
        }
    }
}

/// A matcher as the model knows it.
#[derive(Clone)]
struct ModelMatcher {
    name: &'static str,
    /// Whether a value the pattern holds for is what matches (`=`, `=~`), or what does not
    /// (`!=`, `!~`).
    positive: bool,
    /// `None`: `=` or `!=` with `value`.
    pattern: Option<Pattern>,
    value: &'static str,
}

impl ModelMatcher {
    /// The model: the label's value, the empty string when the alert lacks it, compared.
    fn holds(&self, labels: &Labels) -> bool {
        let found = value(labels, self.name);
        let hit = match &self.pattern {
            None => found == self.value,
            Some(p) => p.holds(found),
        };
        hit == self.positive
    }

    fn op(&self) -> MatchOp {
        match (self.pattern.is_some(), self.positive) {
            (false, true) => MatchOp::Equal,
            (false, false) => MatchOp::NotEqual,
            (true, true) => MatchOp::Regex,
            (true, false) => MatchOp::NotRegex,
        }
    }

    fn text(&self) -> String {
        self.pattern
            .as_ref()
            .map_or_else(|| self.value.to_owned(), Pattern::regex)
    }

    /// The matcher under test.
    fn matcher(&self) -> Matcher {
        // The text is a literal, or literals escaped and joined: always a valid expression.
        Matcher::new(self.name, self.op(), &self.text()).expect("a valid matcher")
    }
}

impl fmt::Debug for ModelMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op() {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        };
        write!(f, "{}{op}{:?}", self.name, self.text())
    }
}

fn model_matcher() -> impl Strategy<Value = ModelMatcher> {
    let pattern = prop_oneof![
        Just(None),
        prop::collection::vec(select(VALUES), 1..3).prop_map(|v| Some(Pattern::OneOf(v))),
        select(PREFIXES).prop_map(|p| Some(Pattern::Prefix(p))),
    ];
    (select(NAMES), any::<bool>(), pattern, select(VALUES)).prop_map(
        |(name, positive, pattern, value)| ModelMatcher {
            name,
            positive,
            pattern,
            value,
        },
    )
}

fn all_hold(matchers: &[ModelMatcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.holds(labels))
}

fn matchers(model: &[ModelMatcher]) -> Vec<Matcher> {
    model.iter().map(ModelMatcher::matcher).collect()
}

/// The model's value of a label, the empty string when the alert lacks it.
fn value<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.get(name).map_or("", String::as_str)
}

// Silences.

/// A silence as the model knows it: its matchers, and when it starts and ends (seconds).
#[derive(Debug, Clone)]
struct ModelSilence {
    matchers: Vec<ModelMatcher>,
    starts: i64,
    ends: i64,
}

fn model_silence() -> impl Strategy<Value = ModelSilence> {
    // Some end before they start, or when they start: never in force.
    (
        prop::collection::vec(model_matcher(), 0..3),
        0i64..60,
        -10i64..80,
    )
        .prop_map(|(matchers, starts, length)| ModelSilence {
            matchers,
            starts,
            ends: starts + length,
        })
}

// Routes.

/// A route as the model knows it, its receiver named after its place in the tree.
#[derive(Debug, Clone)]
struct ModelRoute {
    receiver: String,
    matchers: Vec<ModelMatcher>,
    group_by: Option<Vec<&'static str>>,
    group_wait: i64,
    group_interval: i64,
    repeat_interval: i64,
    continue_matching: bool,
    routes: Vec<ModelRoute>,
}

fn model_route(depth: u32) -> BoxedStrategy<ModelRoute> {
    let group_by = select(GROUP_BY).prop_map(|g| g.map(<[&str]>::to_vec));
    let children = if depth == 0 {
        Just(Vec::new()).boxed()
    } else {
        prop::collection::vec(model_route(depth - 1), 0..3).boxed()
    };
    (
        prop::collection::vec(model_matcher(), 0..2),
        group_by,
        (0i64..=40, 1i64..=120, 1i64..=400),
        any::<bool>(),
        children,
    )
        .prop_map(
            |(matchers, group_by, (wait, interval, repeat), continue_matching, routes)| {
                ModelRoute {
                    receiver: String::new(),
                    matchers,
                    group_by,
                    group_wait: wait,
                    group_interval: interval,
                    repeat_interval: repeat,
                    continue_matching,
                    routes,
                }
            },
        )
        .boxed()
}

/// A tree of up to three levels, its receivers named after their paths (`r`, `r.0`, `r.0.1`).
fn model_tree() -> impl Strategy<Value = ModelRoute> {
    model_route(2).prop_map(|mut root| {
        name_receivers(&mut root, "r".to_owned());
        // The root takes every alert: what it says of matchers is not read.
        root.matchers.clear();
        root
    })
}

fn name_receivers(route: &mut ModelRoute, name: String) {
    for (i, child) in route.routes.iter_mut().enumerate() {
        name_receivers(child, format!("{name}.{i}"));
    }
    route.receiver = name;
}

impl ModelRoute {
    /// The route under test.
    fn route(&self) -> Route {
        Route {
            receiver: self.receiver.clone(),
            matchers: matchers(&self.matchers),
            group_by: self
                .group_by
                .as_ref()
                .map(|g| g.iter().map(|n| (*n).to_owned()).collect()),
            group_wait_ns: self.group_wait * S,
            group_interval_ns: self.group_interval * S,
            repeat_interval_ns: self.repeat_interval * S,
            continue_matching: self.continue_matching,
            routes: self.routes.iter().map(ModelRoute::route).collect(),
        }
    }

    /// The routes that take an alert: the children whose matchers hold, in order, up to the first
    /// that does not continue, each taking it itself when none of its own children does.
    fn takers<'a>(&'a self, labels: &Labels, out: &mut Vec<&'a ModelRoute>) {
        let before = out.len();
        for child in &self.routes {
            if all_hold(&child.matchers, labels) {
                child.takers(labels, out);
                if !child.continue_matching {
                    break;
                }
            }
        }
        if out.len() == before {
            out.push(self);
        }
    }

    /// Every route of the tree from this one, by receiver.
    fn every<'a>(&'a self, out: &mut BTreeMap<String, &'a ModelRoute>) {
        out.insert(self.receiver.clone(), self);
        for child in &self.routes {
            child.every(out);
        }
    }

    /// An alert's group labels on this route: the `group_by` labels it has, or all of them.
    fn group_labels(&self, labels: &Labels) -> Labels {
        match &self.group_by {
            None => labels.clone(),
            Some(names) => labels
                .iter()
                .filter(|(k, _)| names.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

// The dispatcher's model.

/// One group as the model follows it, from its first alert until a notification leaves it with
/// none firing.
#[derive(Debug, Default)]
struct ModelGroup {
    /// Every alert routed to the group, by fingerprint: whether it fires now.
    firing: BTreeMap<String, bool>,
    /// When the group began: the first alert that fired since it last ended (or ever).
    began: Option<i64>,
    /// Since when the group has news (see [`ModelGroup::has_news`]); none while it has none.
    news_since: Option<i64>,
    /// The last notification since the group began.
    notified: Option<i64>,
    /// An alert fired or resolved since the last notification.
    changed: bool,
    /// The alerts notified as firing and not notified as resolved since.
    told_firing: BTreeSet<String>,
}

impl ModelGroup {
    /// An alert fires that was not told as firing, or one told as firing has resolved: a
    /// notification is owed.
    fn has_news(&self) -> bool {
        self.firing
            .iter()
            .any(|(fp, &on)| on != self.told_firing.contains(fp))
    }

    fn any_firing(&self) -> bool {
        self.firing.values().any(|&on| on)
    }
}

/// The alerts, the route tree, and every group, by receiver and group labels.
struct Model<'a> {
    alerts: &'a [Labels],
    firing: Vec<bool>,
    tree: &'a ModelRoute,
    routes: BTreeMap<String, &'a ModelRoute>,
    groups: BTreeMap<(String, Labels), ModelGroup>,
}

impl<'a> Model<'a> {
    fn new(tree: &'a ModelRoute, alerts: &'a [Labels]) -> Model<'a> {
        let mut routes = BTreeMap::new();
        tree.every(&mut routes);
        Model {
            alerts,
            firing: vec![false; alerts.len()],
            tree,
            routes,
            groups: BTreeMap::new(),
        }
    }

    fn takers(&self, labels: &Labels) -> Vec<&'a ModelRoute> {
        let tree = self.tree;
        let mut out = Vec::new();
        tree.takers(labels, &mut out);
        out
    }

    /// Alert `i` fires if it did not, or resolves if it fired, at `now`: the change to hand the
    /// dispatcher.
    fn toggle(&mut self, i: usize, now: i64) -> Change {
        let alerts = self.alerts;
        let labels = &alerts[i];
        let fires = !self.firing[i];
        self.firing[i] = fires;
        let fp = fingerprint(labels);
        for route in self.takers(labels) {
            let key = (route.receiver.clone(), route.group_labels(labels));
            let group = self.groups.entry(key).or_default();
            if fires && group.began.is_none() {
                group.began = Some(now);
            }
            let had_news = group.has_news();
            group.firing.insert(fp.clone(), fires);
            group.news_since = match (had_news, group.has_news()) {
                (_, false) => None,
                (false, true) => Some(now),
                (true, true) => group.news_since,
            };
            group.changed = true;
        }
        Change {
            fingerprint: fp,
            rule: labels["alertname"].clone(),
            severity: Severity::High,
            transition: if fires {
                Transition::Fired
            } else {
                Transition::Resolved
            },
            labels: labels.clone(),
            value: None,
            at_ns: now * S,
        }
    }

    /// Checks one notification sent at `now` and records it.
    fn notified(&mut self, now: i64, n: &Notification) -> Result<(), TestCaseError> {
        let Some(&route) = self.routes.get(&n.receiver) else {
            return Err(TestCaseError::fail(format!("unknown receiver: {n:?}")));
        };
        prop_assert!(!n.alerts.is_empty(), "an empty notification: {n:?}");
        for a in &n.alerts {
            prop_assert_eq!(&a.fingerprint, &fingerprint(&a.labels));
            prop_assert_eq!(&route.group_labels(&a.labels), &n.group_labels, "{:?}", n);
            let takers = self.takers(&a.labels);
            prop_assert!(
                takers.iter().any(|r| r.receiver == n.receiver),
                "{:?} does not take {:?}",
                n.receiver,
                a.labels
            );
        }
        let key = (n.receiver.clone(), n.group_labels.clone());
        let Some(group) = self.groups.get_mut(&key) else {
            return Err(TestCaseError::fail(format!(
                "a notification for a group that never had an alert: {n:?}"
            )));
        };
        let Some(began) = group.began else {
            return Err(TestCaseError::fail(format!(
                "a notification at {now} s for a group that ended: {n:?}"
            )));
        };
        match group.notified {
            None => prop_assert!(
                now >= began + route.group_wait,
                "first notification at {} s of a group begun at {} s, group_wait {} s: {:?}",
                now,
                began,
                route.group_wait,
                n
            ),
            Some(last) => prop_assert!(
                now - last >= route.group_interval,
                "notified at {} s and again at {} s, group_interval {} s: {:?}",
                last,
                now,
                route.group_interval,
                n
            ),
        }
        if !group.changed {
            let last = group.notified.unwrap_or(began);
            prop_assert!(
                now - last >= route.repeat_interval && group.any_firing(),
                "repeated at {} s after {} s without a change, repeat_interval {} s: {:?}",
                now,
                last,
                route.repeat_interval,
                n
            );
        }
        let sent = |firing: bool| -> BTreeSet<String> {
            n.alerts
                .iter()
                .filter(|a| a.firing == firing)
                .map(|a| a.fingerprint.clone())
                .collect()
        };
        let firing: BTreeSet<String> = group
            .firing
            .iter()
            .filter(|(_, on)| **on)
            .map(|(fp, _)| fp.clone())
            .collect();
        prop_assert_eq!(
            sent(true),
            firing.clone(),
            "the firing alerts of the group: {:?}",
            n
        );
        let resolved: BTreeSet<String> = group
            .told_firing
            .iter()
            .filter(|fp| !group.firing[*fp])
            .cloned()
            .collect();
        prop_assert_eq!(
            sent(false),
            resolved,
            "resolved alerts are those told as firing, told as resolved once: {:?}",
            n
        );
        group.told_firing = firing;
        group.notified = Some(now);
        group.changed = false;
        group.news_since = None;
        if !group.any_firing() {
            *group = ModelGroup {
                firing: std::mem::take(&mut group.firing),
                ..ModelGroup::default()
            };
        }
        Ok(())
    }

    /// After a flush at `now`, no group is owed a notification: news waits at most `group_wait`
    /// in a group never notified and `group_interval` after a notification, and a group with
    /// alerts firing is repeated by `repeat_interval` (and `group_interval`) after its last.
    fn nothing_overdue(&self, now: i64) -> Result<(), TestCaseError> {
        for ((receiver, labels), group) in &self.groups {
            let route = self.routes[receiver];
            let due = match (group.notified, group.news_since) {
                (None, Some(since)) => Some(since + route.group_wait),
                (None, None) => None,
                (Some(last), Some(_)) => Some(last + route.group_interval),
                (Some(last), None) if group.any_firing() => {
                    Some(last + route.group_interval.max(route.repeat_interval))
                }
                (Some(_), None) => None,
            };
            prop_assert!(
                due.is_none_or(|due| now < due),
                "{} {:?} was due at {:?} s and is still not notified at {} s: {:?}",
                receiver,
                labels,
                due,
                now,
                group
            );
        }
        Ok(())
    }
}

/// One step of a run: time moves on by `advance` seconds, then these alerts (by index) fire if
/// they did not and resolve if they did.
#[derive(Debug, Clone)]
struct Step {
    advance: i64,
    toggle: Vec<usize>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (0i64..=90, prop::collection::vec(0usize..8, 0..3))
        .prop_map(|(advance, toggle)| Step { advance, toggle });
    prop::collection::vec(step, 1..40)
}

/// Runs the dispatcher through `steps`, then through quiet steps long enough for everything owed
/// to be sent, checking each flush against the model. Each step flushes before and after its
/// changes, as a driver that flushes whenever it is woken does.
fn run(tree: &ModelRoute, alerts: &[Labels], steps: &[Step]) -> Result<(), TestCaseError> {
    let mut dispatcher = Dispatcher::new(tree.route());
    let mut model = Model::new(tree, alerts);
    let quiet = Step {
        advance: 500,
        toggle: Vec::new(),
    };
    let mut now = 0;
    let mut next = None;
    for step in steps.iter().chain(std::iter::repeat_n(&quiet, 3)) {
        now += step.advance;
        let early = dispatcher.flush(now * S);
        prop_assert!(
            early.is_empty() || next.is_some_and(|at| at <= now * S),
            "flush at {} s sent {:?} though next_flush_ns said {:?}",
            now,
            early,
            next
        );
        for n in &early {
            model.notified(now, n)?;
        }
        for &i in &step.toggle {
            let change = model.toggle(i % alerts.len(), now);
            dispatcher.add(&change, now * S);
        }
        for n in &dispatcher.flush(now * S) {
            model.notified(now, n)?;
        }
        model.nothing_overdue(now)?;
        next = dispatcher.next_flush_ns();
        prop_assert!(
            next.is_none_or(|at| at > now * S),
            "next_flush_ns {:?} right after a flush at {} s",
            next,
            now
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The receivers of an alert are those of the routes that take it: children whose matchers
    /// hold, in order, up to the first that does not continue, recursively; a route whose
    /// children all pass the alert by takes it itself.
    #[test]
    fn receivers_are_those_of_the_routes_that_take_the_alert(
        tree in model_tree(),
        alerts in prop::collection::vec(alert_labels(), 1..6),
    ) {
        let dispatcher = Dispatcher::new(tree.route());
        for labels in &alerts {
            let mut takers = Vec::new();
            tree.takers(labels, &mut takers);
            let want: BTreeSet<String> = takers.iter().map(|r| r.receiver.clone()).collect();
            prop_assert_eq!(dispatcher.receivers(labels), want, "{:?}", labels);
        }
    }

    /// Grouping against the model, whatever the alerts do and however time moves: every
    /// notification goes to a receiver whose route takes each of its alerts, which share the
    /// group's `group_by` values; it holds exactly the group's firing alerts, and as resolved
    /// exactly those told as firing before and resolved since (so each resolution is told once,
    /// and only after the firing was); a group's first notification comes no earlier than
    /// `group_wait` after its first alert, later ones at least `group_interval` apart, and one
    /// without a change only after `repeat_interval` and while something fires. Nothing owed
    /// is late: news within `group_wait` of a new group or `group_interval` of the last
    /// notification, a repeat by `repeat_interval`. `next_flush_ns` is never later than the
    /// next flush that sends something, and always after the flush just made.
    #[test]
    fn grouping_notifies_what_the_model_owes_when_it_owes_it(
        tree in model_tree(),
        alerts in prop::collection::btree_set(alert_labels(), 1..5),
        steps in steps(),
    ) {
        let alerts: Vec<Labels> = alerts.into_iter().collect();
        run(&tree, &alerts, &steps)?;
    }

    /// A silence silences an alert exactly while it is in force, from its start until (not at)
    /// its end, and when its labels satisfy every matcher (a label the alert lacks reading as the
    /// empty string, a regular expression matching the whole value); `silenced_by` names those
    /// silences in their order.
    #[test]
    fn silences_silence_what_the_model_says_while_in_force(
        silences in prop::collection::vec(model_silence(), 0..5),
        alerts in prop::collection::vec(alert_labels(), 1..5),
        advances in prop::collection::vec(0i64..20, 1..12),
    ) {
        let under_test: Vec<Silence> = silences
            .iter()
            .enumerate()
            .map(|(i, s)| Silence {
                id: format!("s{i}"),
                matchers: matchers(&s.matchers),
                starts_ns: s.starts * S,
                ends_ns: s.ends * S,
                author: "ops".to_owned(),
                comment: "maintenance".to_owned(),
            })
            .collect();
        let mut now = 0;
        for advance in advances {
            now += advance;
            for labels in &alerts {
                let want: Vec<String> = silences
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.starts <= now && now < s.ends && all_hold(&s.matchers, labels))
                    .map(|(i, _)| format!("s{i}"))
                    .collect();
                let got = silenced_by(&under_test, labels, now * S);
                prop_assert_eq!(got, want, "at {} s, {:?}", now, labels);
            }
        }
    }

    /// As alerts fire and resolve, an alert is inhibited exactly when it satisfies the target
    /// matchers and another firing alert (never itself) satisfies the source matchers and has
    /// the same value of every `equal` label (a label neither has, or one has empty and the
    /// other lacks, being equal) — unless both match both sides.
    #[test]
    fn inhibitions_inhibit_what_the_model_says(
        source in prop::collection::vec(model_matcher(), 0..3),
        target in prop::collection::vec(model_matcher(), 0..3),
        equal in prop::collection::vec(select(NAMES), 0..3),
        alerts in prop::collection::btree_set(alert_labels(), 1..6),
        toggles in prop::collection::vec(0usize..8, 1..12),
    ) {
        let alerts: Vec<Labels> = alerts.into_iter().collect();
        let inhibition = Inhibition {
            source: matchers(&source),
            target: matchers(&target),
            equal: equal.iter().map(|n| (*n).to_owned()).collect(),
        };
        let mut on = vec![false; alerts.len()];
        for i in toggles {
            let i = i % alerts.len();
            on[i] = !on[i];
            let firing: Vec<Labels> = alerts
                .iter()
                .zip(&on)
                .filter(|(_, on)| **on)
                .map(|(l, _)| l.clone())
                .collect();
            for labels in &alerts {
                let both_sides = all_hold(&source, labels);
                let want = all_hold(&target, labels)
                    && firing.iter().any(|other| {
                        other != labels
                            && all_hold(&source, other)
                            && !(both_sides && all_hold(&target, other))
                            && equal.iter().all(|n| value(other, n) == value(labels, n))
                    });
                prop_assert_eq!(
                    inhibition.inhibits(labels, &firing),
                    want,
                    "{:?} with {:?} firing",
                    labels,
                    firing
                );
            }
        }
    }
}
