//! Threshold rules evaluated over metric points as they are committed: one alert per rule, host
//! and series.
//!
//! A point of a watched series updates the series' [`Window`]; the rule's aggregate of it against
//! its value says whether the condition holds, and the alert's [`Lifecycle`] takes it from there.
//! [`Evaluator::tick`] applies what time alone changes (a pending alert whose `for` passed while
//! its condition held, a firing one whose `keep_firing_for` ran out), so an alert fires when its
//! `for` ends rather than with the series' next point; [`Evaluator::next_change_ns`] says when to
//! tick. Nothing here reads a clock: `now` is handed in.
//!
//! An alert's labels are those of [`alert`](super::alert), with the series' attributes.

use std::collections::HashMap;

use outpost_common::event::MetricPoint;

use super::alert::{Change, Evaluates, Group, Groups, Slot};
use super::file::{Condition, Rule};
use super::window::Window;

/// Every threshold rule's alerts, by rule (its index), host and series attributes (sorted).
#[derive(Debug)]
pub struct Evaluator {
    groups: Groups<SeriesKey, Group<Window>>,
    /// The rules (their indices) watching each metric, so that a point is checked against
    /// those alone.
    by_metric: HashMap<String, Vec<usize>>,
}

/// A rule (its index), a host and a series' attributes.
type SeriesKey = (usize, String, Vec<(String, String)>);

impl Evaluator {
    pub fn new(rules: Vec<Rule>) -> Evaluator {
        let mut by_metric: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, rule) in rules.iter().enumerate() {
            if let Condition::Threshold(t) = &rule.condition {
                by_metric.entry(t.metric.clone()).or_default().push(index);
            }
        }
        Evaluator {
            groups: Groups::new(rules),
            by_metric,
        }
    }

    /// Takes one committed point of `agent_id`'s; returns the alerts it changed.
    pub fn observe(&mut self, agent_id: &str, point: &MetricPoint, now_ns: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        let Some(watching) = self.by_metric.get(&point.name) else {
            return changes;
        };
        // The key is made once per point; each watching rule only sets its index in it.
        let mut key: Option<SeriesKey> = None;
        for &index in watching {
            let rule = &self.groups.rules[index];
            let Condition::Threshold(t) = &rule.condition else {
                continue;
            };
            let watched = t
                .matches
                .iter()
                .all(|(k, v)| point.attributes.iter().any(|(pk, pv)| pk == k && pv == v));
            if !watched {
                continue;
            }
            let key = key.get_or_insert_with(|| {
                let mut attributes = point.attributes.clone();
                attributes.sort();
                (index, agent_id.to_owned(), attributes)
            });
            key.0 = index;
            let group = match self.groups.map.get_mut(&*key) {
                Some(group) => group,
                None => {
                    let group = Group::new(
                        Window::default(),
                        Slot::new(rule, Some(&key.1), key.2.iter().cloned())
                            .restore(&mut self.groups.restored),
                    );
                    self.groups.map.entry(key.clone()).or_insert(group)
                }
            };
            group.data.push(point.time_ns, point.value, t.window_ns);
            let value = group.data.measure(t.aggregate, t.min_samples, t.target);
            let holds = value.is_some_and(|v| t.op.holds(v, t.value));
            changes.extend(group.alert.set(rule, holds, value, now_ns));
            self.groups.touch(key, None);
        }
        changes
    }

    /// See [`Groups::tick`].
    pub fn tick(&mut self, now_ns: i64) -> Vec<Change> {
        self.groups.tick(now_ns)
    }
}

impl Evaluates for Evaluator {
    type Key = SeriesKey;
    type Data = Window;

    fn groups(&self) -> &Groups<SeriesKey, Group<Window>> {
        &self.groups
    }

    fn groups_mut(&mut self) -> &mut Groups<SeriesKey, Group<Window>> {
        &mut self.groups
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use outpost_common::event::MetricKind;

    use super::*;
    use crate::rules::file::parse_file;
    use crate::rules::lifecycle::{AlertState, Transition};

    const S: i64 = 1_000_000_000;

    fn rules(text: &str) -> Vec<Rule> {
        parse_file(Path::new("test.toml"), text).unwrap()
    }

    fn cpu(state: &str, t: i64, value: f64) -> MetricPoint {
        MetricPoint {
            name: "system.cpu.utilization".to_owned(),
            unit: "1".to_owned(),
            attributes: vec![
                ("cpu".to_owned(), "total".to_owned()),
                ("state".to_owned(), state.to_owned()),
            ],
            time_ns: t * S,
            value,
            kind: MetricKind::Gauge,
        }
    }

    /// The rules file's example, over 30 s and for 60 s, with a label that shares a name with
    /// an attribute.
    fn busy() -> String {
        crate::rules::file::tests::CPU
            .replace("\"5m\"\nop", "\"30s\"\nop")
            .replace("for = \"5m\"", "for = \"60s\"")
            .replace("team = \"ops\"", "team = \"ops\", cpu = \"any\"")
    }

    fn transitions(changes: &[Change]) -> Vec<(i64, Transition)> {
        changes
            .iter()
            .map(|c| (c.at_ns / S, c.transition))
            .collect()
    }

    #[test]
    fn a_busy_series_fires_when_for_ends_and_resolves_when_its_average_drops() {
        let mut e = Evaluator::new(rules(&busy()));
        let mut seen = Vec::new();
        // Busy from 0 s, every 10 s; the tick fires it at 60 s, between two points.
        for t in (0..=50).step_by(10) {
            seen.extend(e.observe("web-1", &cpu("user", t, 0.95), t * S));
            // Other states and hosts' idle series change nothing.
            seen.extend(e.observe("web-1", &cpu("idle", t, 0.01), t * S));
            seen.extend(e.observe("web-2", &cpu("user", t, 0.10), t * S));
        }
        assert_eq!(e.next_change_ns(), Some(60 * S));
        assert!(e.tick(59 * S).is_empty());
        seen.extend(e.tick(60 * S));
        // At 70 s the window (40 s to 70 s) averages 0.8: resolved at once (no keep_firing_for).
        for t in (70..=100).step_by(10) {
            seen.extend(e.observe("web-1", &cpu("user", t, 0.5), t * S));
        }
        assert_eq!(
            transitions(&seen),
            [
                (0, Transition::Pending),
                (60, Transition::Fired),
                (70, Transition::Resolved)
            ]
        );
        let fired = &seen[1];
        assert_eq!(fired.value, Some(0.95));
        let labels: Vec<(&str, &str)> = fired
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("alertname", "cpu-busy"),
                ("cpu", "any"),
                ("host", "web-1"),
                ("severity", "high"),
                ("state", "user"),
                ("team", "ops"),
            ]
        );
        assert!(e.active().is_empty());
    }

    #[test]
    fn each_host_and_series_is_an_alert_of_its_own_with_a_stable_fingerprint() {
        let text = busy()
            .replace("match = { state = \"user\" }\n", "")
            .replace("for = \"60s\"", "for = \"0s\"");
        let mut e = Evaluator::new(rules(&text));
        let mut seen = e.observe("web-1", &cpu("user", 0, 0.95), 0);
        seen.extend(e.observe("web-1", &cpu("system", 0, 0.97), 0));
        seen.extend(e.observe("web-2", &cpu("user", 0, 0.99), 0));
        assert_eq!(seen.len(), 3);
        let fingerprints: std::collections::BTreeSet<&str> =
            seen.iter().map(|c| c.fingerprint.as_str()).collect();
        assert_eq!(fingerprints.len(), 3, "{fingerprints:?}");
        let active = e.active();
        assert_eq!(active.len(), 3);
        assert!(
            active
                .iter()
                .all(|a| matches!(a.state, AlertState::Firing { .. }))
        );
        // The same rule and series in a new evaluator (a restart) has the same fingerprint.
        let mut again = Evaluator::new(rules(&text));
        let same = again.observe("web-1", &cpu("user", 5, 0.95), 5 * S);
        assert_eq!(same[0].fingerprint, seen[0].fingerprint);
        assert_eq!(seen[0].fingerprint.len(), 16);
    }

    #[test]
    fn a_counter_rate_rule_needs_two_points_before_it_can_hold() {
        let text = r#"
[[rule]]
name = "rx-errors"
kind = "threshold"
severity = "medium"
metric = "system.network.errors"
aggregate = "rate"
window = "1m"
op = ">="
value = 1
"#;
        let mut e = Evaluator::new(rules(text));
        let point = |t: i64, v: f64| MetricPoint {
            name: "system.network.errors".to_owned(),
            unit: "{error}".to_owned(),
            attributes: vec![("device".to_owned(), "eth0".to_owned())],
            time_ns: t * S,
            value: v,
            kind: MetricKind::Counter,
        };
        assert!(e.observe("db-1", &point(0, 1000.0), 0).is_empty());
        assert!(e.observe("db-1", &point(10, 1005.0), 10 * S).is_empty());
        let fired = e.observe("db-1", &point(20, 1030.0), 20 * S);
        assert_eq!(transitions(&fired), [(20, Transition::Fired)]);
        assert_eq!(fired[0].value, Some(1.5));
    }
}
