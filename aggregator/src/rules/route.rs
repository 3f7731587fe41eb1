//! Routing and grouping with Alertmanager's meanings: a tree of routes picks each alert's
//! receivers, and alerts of one route with the same values of its `group_by` labels are notified
//! together.
//!
//! - **Routes.** An alert goes down the tree from the root: a child whose matchers it satisfies
//!   takes it (the first such child, or every one up to and including the first that does not say
//!   `continue`), recursively; a route whose children all pass it by takes it itself. Children
//!   inherit their parent's receiver, grouping and timing unless they say otherwise.
//! - **Groups.** A group's first notification waits `group_wait` after its first alert, so that
//!   alerts firing together arrive together; after that, a change to the group (an alert that
//!   fires, or resolves) is notified at most once every `group_interval`; a group that did not
//!   change is notified again every `repeat_interval` while any of its alerts fires. A group whose
//!   alerts all resolved is notified once more and then forgotten.
//!
//! [`Dispatcher`] is pure: alerts and `now` go in, notifications due come out, and
//! [`Dispatcher::next_flush_ns`] says when to ask again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::alert::Change;
use super::lifecycle::Transition;
use super::matcher::{Matcher, all_match};

/// One route of the tree, with what it inherited filled in.
#[derive(Debug, Clone)]
pub struct Route {
    pub receiver: String,
    pub matchers: Vec<Matcher>,
    /// Labels whose values make a group; `None` groups by every label (Alertmanager's `...`).
    pub group_by: Option<Vec<String>>,
    pub group_wait_ns: i64,
    pub group_interval_ns: i64,
    pub repeat_interval_ns: i64,
    /// Whether siblings after this one are tried after it took an alert.
    pub continue_matching: bool,
    pub routes: Vec<Route>,
}

impl Route {
    /// Alertmanager's defaults: group by alert name, wait 30 s, then 5 min between changes, 4 h
    /// between repeats.
    pub fn root(receiver: &str) -> Route {
        const S: i64 = 1_000_000_000;
        Route {
            receiver: receiver.to_owned(),
            matchers: Vec::new(),
            group_by: Some(vec!["alertname".to_owned()]),
            group_wait_ns: 30 * S,
            group_interval_ns: 300 * S,
            repeat_interval_ns: 4 * 3600 * S,
            continue_matching: false,
            routes: Vec::new(),
        }
    }

    /// The routes that take an alert with `labels`, by their path of child indexes from this
    /// one.
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<Vec<usize>> {
        let mut found = Vec::new();
        self.walk(labels, &mut Vec::new(), &mut found);
        found
    }

    fn walk(
        &self,
        labels: &BTreeMap<String, String>,
        path: &mut Vec<usize>,
        found: &mut Vec<Vec<usize>>,
    ) {
        let before = found.len();
        for (i, child) in self.routes.iter().enumerate() {
            if !all_match(&child.matchers, labels) {
                continue;
            }
            path.push(i);
            child.walk(labels, path, found);
            path.pop();
            if !child.continue_matching {
                break;
            }
        }
        if found.len() == before {
            found.push(path.clone());
        }
    }

    /// The route at `path` from this one.
    pub fn at(&self, path: &[usize]) -> Option<&Route> {
        path.iter().try_fold(self, |route, &i| route.routes.get(i))
    }
}

/// One alert as a group holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupedAlert {
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    /// Firing, or resolved since the group's last notification.
    pub firing: bool,
    pub since_ns: i64,
    /// Its firing was notified to the group's receiver: only then is its resolution.
    #[serde(default)]
    pub notified: bool,
}

/// A notification due: a group's alerts for its route's receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub receiver: String,
    /// The route's path in the tree and the group's label values: what identifies the group.
    pub group_key: String,
    pub group_labels: BTreeMap<String, String>,
    /// In order of their labels.
    pub alerts: Vec<GroupedAlert>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    route: Vec<usize>,
    /// The route's receiver when the group began.
    receiver: String,
    labels: BTreeMap<String, String>,
    alerts: BTreeMap<String, GroupedAlert>,
    /// When the next notification may go: `group_wait` after the first alert, then
    /// `group_interval` after each notification.
    next_ns: i64,
    /// Something changed since the last notification.
    changed: bool,
    /// When the group was last notified (none yet).
    notified_ns: Option<i64>,
}

/// The groups of every route, and when each is due.
#[derive(Debug)]
pub struct Dispatcher {
    tree: Route,
    groups: BTreeMap<String, Group>,
}

impl Dispatcher {
    pub fn new(tree: Route) -> Dispatcher {
        Dispatcher {
            tree,
            groups: BTreeMap::new(),
        }
    }

    /// Takes an alert's change (fired or resolved; pending alerts are not notified).
    pub fn add(&mut self, change: &Change, now_ns: i64) {
        let firing = match change.transition {
            Transition::Fired => true,
            Transition::Resolved => false,
            Transition::Pending | Transition::Cleared => return,
        };
        for path in self.tree.matching(&change.labels) {
            let Some(route) = self.tree.at(&path) else {
                continue;
            };
            let group_labels: BTreeMap<String, String> = match &route.group_by {
                None => change.labels.clone(),
                Some(names) => names
                    .iter()
                    .filter_map(|n| change.labels.get(n).map(|v| (n.clone(), v.clone())))
                    .collect(),
            };
            let key = group_key(&path, &group_labels);
            if !firing {
                self.resolve(&key, &change.fingerprint, change.at_ns);
                continue;
            }
            let notified = self
                .groups
                .get(&key)
                .and_then(|g| g.alerts.get(&change.fingerprint))
                .is_some_and(|a| a.notified);
            let wait = route.group_wait_ns;
            let group = self.groups.entry(key).or_insert_with(|| Group {
                route: path.clone(),
                receiver: route.receiver.clone(),
                labels: group_labels,
                alerts: BTreeMap::new(),
                next_ns: now_ns.saturating_add(wait),
                changed: false,
                notified_ns: None,
            });
            group.alerts.insert(
                change.fingerprint.clone(),
                GroupedAlert {
                    fingerprint: change.fingerprint.clone(),
                    labels: change.labels.clone(),
                    firing,
                    since_ns: change.at_ns,
                    notified,
                },
            );
            group.changed = true;
        }
    }

    /// An alert of the group at `key` resolved: notified as resolved if its firing was;
    /// otherwise it leaves the group without a word (it fired and resolved between two
    /// notifications), and a group left with nothing to say is dropped.
    fn resolve(&mut self, key: &str, fingerprint: &str, at_ns: i64) {
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        let Some(alert) = group.alerts.get_mut(fingerprint) else {
            return;
        };
        if alert.notified {
            alert.firing = false;
            alert.since_ns = at_ns;
            group.changed = true;
            return;
        }
        group.alerts.remove(fingerprint);
        group.changed = group.alerts.values().any(|a| a.firing != a.notified);
        if group.alerts.is_empty() {
            self.groups.remove(key);
        }
    }

    /// The notifications due at `now_ns`, in order of group; each group's resolved alerts are
    /// then dropped, and groups left with none forgotten.
    pub fn flush(&mut self, now_ns: i64) -> Vec<Notification> {
        let mut due = Vec::new();
        for (key, group) in &mut self.groups {
            let Some(route) = self.tree.at(&group.route) else {
                continue;
            };
            let any_firing = group.alerts.values().any(|a| a.firing);
            let repeat = group.notified_ns.is_some_and(|at| {
                any_firing && now_ns.saturating_sub(at) >= route.repeat_interval_ns
            });
            if now_ns < group.next_ns || !(group.changed || repeat) || group.alerts.is_empty() {
                continue;
            }
            let mut alerts: Vec<GroupedAlert> = group.alerts.values().cloned().collect();
            alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
            due.push(Notification {
                receiver: route.receiver.clone(),
                group_key: key.clone(),
                group_labels: group.labels.clone(),
                alerts,
            });
            group.alerts.retain(|_, a| a.firing);
            for alert in group.alerts.values_mut() {
                alert.notified = true;
            }
            group.changed = false;
            group.notified_ns = Some(now_ns);
            group.next_ns = now_ns.saturating_add(route.group_interval_ns);
        }
        self.groups.retain(|_, g| !g.alerts.is_empty() || g.changed);
        due
    }

    /// The groups as they stand, to keep in the state store: a restart that restores them
    /// neither notifies a group again before its interval nor forgets what it notified.
    pub fn snapshot(&self) -> BTreeMap<String, Group> {
        self.groups.clone()
    }

    /// A dispatcher over `tree` with the groups of an earlier [`snapshot`](Self::snapshot).
    /// Groups whose route is no longer in the tree, or now goes to another receiver, are
    /// dropped: their alerts join the new routes' groups when they next change.
    pub fn restore(tree: Route, groups: BTreeMap<String, Group>) -> Dispatcher {
        let groups = groups
            .into_iter()
            .filter(|(_, g)| tree.at(&g.route).is_some_and(|r| r.receiver == g.receiver))
            .collect();
        Dispatcher { tree, groups }
    }

    /// Takes an alert out of every group without notifying its going (it was silenced or
    /// inhibited while firing); it comes back with the next [`add`](Self::add).
    pub fn forget(&mut self, fingerprint: &str) {
        for group in self.groups.values_mut() {
            group.alerts.remove(fingerprint);
        }
        self.groups.retain(|_, g| !g.alerts.is_empty());
    }

    /// Whether a group still holds the alert (firing, or resolved and not yet notified).
    pub fn holds(&self, fingerprint: &str) -> bool {
        self.groups
            .values()
            .any(|g| g.alerts.contains_key(fingerprint))
    }

    /// When [`flush`](Self::flush) next has something to send, if nothing else arrives.
    pub fn next_flush_ns(&self) -> Option<i64> {
        self.groups
            .values()
            .filter_map(|g| {
                let route = self.tree.at(&g.route)?;
                if g.changed {
                    return Some(g.next_ns);
                }
                let firing = g.alerts.values().any(|a| a.firing);
                let repeat = g
                    .notified_ns
                    .filter(|_| firing)?
                    .saturating_add(route.repeat_interval_ns);
                Some(repeat.max(g.next_ns))
            })
            .min()
    }

    /// The receivers every alert with `labels` would go to, for `rules test` and the API.
    pub fn receivers(&self, labels: &BTreeMap<String, String>) -> BTreeSet<String> {
        self.tree
            .matching(labels)
            .iter()
            .filter_map(|p| self.tree.at(p))
            .map(|r| r.receiver.clone())
            .collect()
    }
}

/// A group's key: the route's path, then its labels, as `{0/1}:{name="value",...}`.
fn group_key(path: &[usize], labels: &BTreeMap<String, String>) -> String {
    let path: Vec<String> = path.iter().map(usize::to_string).collect();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}:{{{}}}", path.join("/"), labels.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Severity;
    use crate::rules::matcher::parse;

    const S: i64 = 1_000_000_000;

    fn change(alertname: &str, host: &str, transition: Transition, at_s: i64) -> Change {
        let labels: BTreeMap<String, String> = [
            ("alertname", alertname),
            ("host", host),
            (
                "severity",
                if alertname == "disk-full" {
                    "critical"
                } else {
                    "high"
                },
            ),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        Change {
            fingerprint: crate::rules::alert::fingerprint(&labels),
            rule: alertname.to_owned(),
            severity: Severity::High,
            transition,
            labels,
            value: None,
            at_ns: at_s * S,
        }
    }

    /// Critical alerts to the pager and on (continue); database hosts to the DBAs, the rest to
    /// ops.
    fn tree() -> Route {
        let mut root = Route::root("nobody");
        let mut pager = Route::root("pager");
        pager.matchers = vec![parse("severity=critical").unwrap()];
        pager.continue_matching = true;
        let mut dba = Route::root("dba");
        dba.matchers = vec![parse("host=~db-.*").unwrap()];
        dba.group_wait_ns = 0;
        root.routes = vec![pager, dba, Route::root("ops")];
        root
    }

    fn hosts(n: &Notification) -> Vec<(&str, bool)> {
        n.alerts
            .iter()
            .map(|a| (a.labels["host"].as_str(), a.firing))
            .collect()
    }

    #[test]
    fn the_first_matching_child_takes_an_alert_and_continue_lets_the_next_try() {
        let d = Dispatcher::new(tree());
        let labels = |a: &str, h: &str| change(a, h, Transition::Fired, 0).labels;
        let receivers =
            |a: &str, h: &str| -> Vec<String> { d.receivers(&labels(a, h)).into_iter().collect() };
        assert_eq!(receivers("cpu-busy", "web-1"), ["ops"]);
        assert_eq!(receivers("cpu-busy", "db-1"), ["dba"]);
        assert_eq!(receivers("disk-full", "web-1"), ["ops", "pager"]);
        assert_eq!(receivers("disk-full", "db-1"), ["dba", "pager"]);
        // A tree whose children all pass an alert by keeps it at the root.
        let mut narrow = tree();
        narrow.routes.truncate(2);
        let d = Dispatcher::new(narrow);
        assert_eq!(
            d.receivers(&labels("cpu-busy", "web-1"))
                .into_iter()
                .collect::<Vec<_>>(),
            ["nobody"]
        );
    }

    #[test]
    fn alerts_firing_together_wait_for_group_wait_and_arrive_together() {
        let mut d = Dispatcher::new(tree());
        d.add(&change("cpu-busy", "web-1", Transition::Fired, 0), 0);
        d.add(&change("cpu-busy", "web-2", Transition::Fired, 10), 10 * S);
        // Pending alerts are not notified.
        d.add(
            &change("cpu-busy", "web-3", Transition::Pending, 10),
            10 * S,
        );
        assert_eq!(d.next_flush_ns(), Some(30 * S));
        assert!(d.flush(29 * S).is_empty());
        let sent = d.flush(30 * S);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].receiver, "ops");
        assert_eq!(sent[0].group_labels["alertname"], "cpu-busy");
        assert_eq!(hosts(&sent[0]), [("web-1", true), ("web-2", true)]);
        // Nothing changed: nothing until the repeat interval.
        assert!(d.flush(400 * S).is_empty());
        assert_eq!(d.next_flush_ns(), Some(30 * S + 4 * 3600 * S));
        assert_eq!(d.flush(30 * S + 4 * 3600 * S).len(), 1);
    }

    #[test]
    fn a_change_waits_for_group_interval_and_a_resolved_group_is_told_once_then_forgotten() {
        let mut d = Dispatcher::new(tree());
        d.add(&change("cpu-busy", "web-1", Transition::Fired, 0), 0);
        assert_eq!(d.flush(30 * S).len(), 1);
        d.add(
            &change("cpu-busy", "web-1", Transition::Resolved, 60),
            60 * S,
        );
        // Changes wait for group_interval after the last notification: 30 s + 5 min.
        assert_eq!(d.next_flush_ns(), Some(330 * S));
        assert!(d.flush(329 * S).is_empty());
        let sent = d.flush(330 * S);
        assert_eq!(hosts(&sent[0]), [("web-1", false)]);
        assert_eq!(d.next_flush_ns(), None);
        assert!(d.flush(100_000 * S).is_empty());
        // Resolved before it was ever notified: nothing at all.
        d.add(&change("cpu-busy", "web-9", Transition::Resolved, 0), 0);
        assert!(d.flush(1_000_000 * S).is_empty());
    }

    #[test]
    fn a_route_without_group_wait_notifies_at_once_per_group() {
        let mut d = Dispatcher::new(tree());
        d.add(&change("cpu-busy", "db-1", Transition::Fired, 0), 0);
        d.add(&change("disk-full", "db-1", Transition::Fired, 0), 0);
        let sent = d.flush(0);
        // The DBAs get two groups (by alert name) at once; the pager waits its 30 s.
        let receivers: Vec<(&str, &str)> = sent
            .iter()
            .map(|n| (n.receiver.as_str(), n.group_labels["alertname"].as_str()))
            .collect();
        assert_eq!(receivers, [("dba", "cpu-busy"), ("dba", "disk-full")]);
        assert_eq!(d.flush(30 * S)[0].receiver, "pager");
    }
}
