//! Absence rules: a host silent for `after`, or a metric or log source of a host that stopped
//! arriving.
//!
//! What counts is arrival on the aggregator's clock (`now` when an event is observed), not the
//! events' own times: a host whose clock is off is still heard. Only what was heard once is
//! watched; the engine seeds each host's last arrival from the registry when it starts
//! ([`AbsenceEvaluator::heard`]), so that a host that went silent while the aggregator was down
//! is still found. A silent group's condition starts to hold at its last arrival plus `after`;
//! it stops holding with the next arrival. A group is filed for its first arrival plus `after`
//! and not again at each arrival (a host sends many events a second): when that time comes,
//! [`AbsenceEvaluator::tick`] files it for its last arrival plus `after`, so
//! `next_change_ns` may name a time at which nothing changes, never one after a change.

use outpost_common::event::Event;

use super::alert::{Change, Evaluates, Group, Groups, Slot};
use super::file::{AbsenceRule, Condition, Rule, Silent};

/// A rule (its index), a host, and the metric or source (empty for the host itself).
type SilentKey = (usize, String, String);

/// Every absence rule's alerts.
#[derive(Debug)]
pub struct AbsenceEvaluator {
    /// Each group's data is its last arrival.
    groups: Groups<SilentKey, Group<i64>>,
}

impl AbsenceEvaluator {
    pub fn new(rules: Vec<Rule>) -> AbsenceEvaluator {
        AbsenceEvaluator {
            groups: Groups::new(rules),
        }
    }

    /// Takes one committed event of `agent_id`'s, which arrived at `now_ns`.
    pub fn observe(&mut self, agent_id: &str, event: &Event, now_ns: i64) -> Vec<Change> {
        let (metric, source) = match event {
            Event::Metric(m) => (Some(m.name.as_str()), None),
            Event::Log(l) => (None, Some(l.source.as_str())),
            Event::Fim(_) | Event::Status(_) => (None, None),
        };
        let mut changes = Vec::new();
        let rules = self.groups.rules.clone();
        for (index, rule) in rules.iter().enumerate() {
            let Condition::Absence(a) = &rule.condition else {
                continue;
            };
            let what = match &a.silent {
                Silent::Host => "",
                Silent::Metric(name) if metric == Some(name.as_str()) => name.as_str(),
                Silent::Source(name) if source == Some(name.as_str()) => name.as_str(),
                Silent::Metric(_) | Silent::Source(_) => continue,
            };
            let key = (index, agent_id.to_owned(), what.to_owned());
            let new = !self.groups.map.contains_key(&key);
            let group = self.groups.map.entry(key.clone()).or_insert_with(|| {
                Group::new(
                    now_ns,
                    Slot::new(rule, Some(agent_id), silent_label(a, what))
                        .restore(&mut self.groups.restored),
                )
            });
            group.data = group.data.max(now_ns);
            let change = group.alert.set(rule, false, None, now_ns);
            // A group already filed keeps its time: when it comes, the tick files it again
            // for the last arrival plus `after`, so an arrival costs no refiling.
            if new || change.is_some() {
                let at = falls_silent(a, group);
                self.groups.touch(&key, at);
            }
            changes.extend(change);
        }
        changes
    }

    /// Says that `agent_id` was last heard at `last_ns` (from the registry, at start): its
    /// host-level absence rules watch it from then on.
    pub fn heard(&mut self, agent_id: &str, last_ns: i64) {
        let rules = self.groups.rules.clone();
        for (index, rule) in rules.iter().enumerate() {
            let Condition::Absence(a) = &rule.condition else {
                continue;
            };
            if a.silent != Silent::Host {
                continue;
            }
            let key = (index, agent_id.to_owned(), String::new());
            let group = self.groups.map.entry(key.clone()).or_insert_with(|| {
                Group::new(
                    last_ns,
                    Slot::new(rule, Some(agent_id), []).restore(&mut self.groups.restored),
                )
            });
            let at = falls_silent(a, group);
            self.groups.touch(&key, at);
        }
    }

    /// Evaluates the groups filed for `now_ns` or before: those silent for `after` hold, and
    /// their alerts move.
    pub fn tick(&mut self, now_ns: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        for key in self.groups.due(now_ns) {
            let rule = &self.groups.rules[key.0];
            let Condition::Absence(a) = &rule.condition else {
                continue;
            };
            let Some(g) = self.groups.map.get_mut(&key) else {
                continue;
            };
            let silent_ns = now_ns.saturating_sub(g.data);
            let holds = silent_ns >= a.after_ns;
            changes.extend(
                g.alert
                    .set(rule, holds, Some(silent_ns as f64 / 1e9), now_ns),
            );
            let at = falls_silent(a, g);
            self.groups.touch(&key, at);
        }
        changes.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        changes
    }
}

/// When a group whose alert is inactive falls silent: its last arrival plus `after`. A group
/// whose alert is pending or firing has its alert's own timing.
fn falls_silent(a: &AbsenceRule, g: &Group<i64>) -> Option<i64> {
    (g.alert.state() == super::lifecycle::AlertState::Inactive)
        .then(|| g.data.saturating_add(a.after_ns))
}

/// The label that says what fell silent: `metric` or `source`, none for the host.
fn silent_label(a: &AbsenceRule, what: &str) -> Vec<(String, String)> {
    match &a.silent {
        Silent::Host => Vec::new(),
        Silent::Metric(_) => vec![("metric".to_owned(), what.to_owned())],
        Silent::Source(_) => vec![("source".to_owned(), what.to_owned())],
    }
}

impl Evaluates for AbsenceEvaluator {
    type Key = SilentKey;
    type Data = i64;

    fn groups(&self) -> &Groups<SilentKey, Group<i64>> {
        &self.groups
    }

    fn groups_mut(&mut self) -> &mut Groups<SilentKey, Group<i64>> {
        &mut self.groups
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use outpost_common::event::{LogRecord, MetricKind, MetricPoint};

    use super::*;
    use crate::rules::file::parse_file;
    use crate::rules::lifecycle::Transition;

    const S: i64 = 1_000_000_000;

    const HOST_DOWN: &str = "[[rule]]\nname = \"host-down\"\nkind = \"absence\"\n\
                             severity = \"critical\"\nafter = \"2m\"\n";

    fn evaluator(text: &str) -> AbsenceEvaluator {
        AbsenceEvaluator::new(parse_file(Path::new("test.toml"), text).unwrap())
    }

    fn load(t: i64) -> Event {
        Event::Metric(MetricPoint {
            name: "system.cpu.load_average.1m".to_owned(),
            unit: "1".to_owned(),
            attributes: vec![],
            time_ns: t * S,
            value: 0.5,
            kind: MetricKind::Gauge,
        })
    }

    fn line(source: &str) -> Event {
        Event::Log(LogRecord {
            time_ns: 0,
            source: source.to_owned(),
            severity: None,
            body: "x".to_owned(),
            attributes: vec![],
        })
    }

    #[test]
    fn a_host_silent_for_two_minutes_fires_and_its_next_event_resolves_it() {
        let mut e = evaluator(HOST_DOWN);
        // The agent's clock is an hour behind: arrival is what counts.
        for t in (0..=30).step_by(10) {
            assert!(e.observe("web-1", &load(t - 3600), t * S).is_empty());
        }
        // Filed at the first arrival plus two minutes; that look files it again for the last.
        assert_eq!(e.next_change_ns(), Some(120 * S));
        assert!(e.tick(120 * S).is_empty());
        assert_eq!(e.next_change_ns(), Some(150 * S));
        assert!(e.tick(149 * S).is_empty());
        let fired = e.tick(150 * S);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].transition, Transition::Fired);
        assert_eq!(fired[0].labels["host"], "web-1");
        assert_eq!(fired[0].value, Some(120.0));
        assert_eq!(e.active().len(), 1);
        assert_eq!(e.next_change_ns(), None);
        let back = e.observe("web-1", &load(200), 200 * S);
        assert_eq!(back[0].transition, Transition::Resolved);
        assert_eq!(e.next_change_ns(), Some(320 * S));
    }

    #[test]
    fn a_host_seeded_from_the_registry_is_watched_before_it_says_anything() {
        let mut e = evaluator(HOST_DOWN);
        e.heard("db-1", 10 * S);
        assert_eq!(e.next_change_ns(), Some(130 * S));
        assert_eq!(e.tick(130 * S)[0].labels["host"], "db-1");
    }

    #[test]
    fn a_metric_or_a_source_that_stops_is_an_alert_of_its_own() {
        let text = "[[rule]]\nname = \"load-gone\"\nkind = \"absence\"\nseverity = \"low\"\n\
                    after = \"1m\"\nmetric = \"system.cpu.load_average.1m\"\n\
                    [[rule]]\nname = \"auth-log-gone\"\nkind = \"absence\"\nseverity = \"low\"\n\
                    after = \"1m\"\nsource = \"/var/log/auth.log\"\n";
        let mut e = evaluator(text);
        e.observe("web-1", &load(0), 0);
        e.observe("web-1", &line("/var/log/auth.log"), 0);
        // Other sources keep nothing alive.
        e.observe("web-1", &line("/var/log/syslog"), 50 * S);
        e.observe("web-1", &load(50), 50 * S);
        let fired = e.tick(60 * S);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].rule, "auth-log-gone");
        assert_eq!(fired[0].labels["source"], "/var/log/auth.log");
        assert_eq!(e.next_change_ns(), Some(110 * S));
        // Both keys together are refused.
        let both = text.replace(
            "after = \"1m\"\nsource",
            "after = \"1m\"\nmetric = \"m\"\nsource",
        );
        let err = parse_file(Path::new("test.toml"), &both)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.toml:13:10") && err.contains("not both"),
            "{err}"
        );
    }
}
