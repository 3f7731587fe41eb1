//! Log, frequency, sequence and file-integrity rules evaluated over log records and file changes
//! as they are committed.
//!
//! A record is a moment: a **log** rule's alert fires with a matching record and keeps firing for
//! the rule's `keep_firing_for` (five minutes unless it says) after the last one. A **frequency**
//! rule counts matching records per group (the values of its `group_by` fields, per host or across
//! hosts) over `within`, on the records' own times, and its alert fires when the count (or the
//! number of distinct values of its `distinct` field) reaches `count`; every further record while
//! the count is there keeps it firing. A record's fields are its attributes (a parser's fields),
//! the named groups of the rule's pattern, and `host`, the agent's id (so that `distinct = "host"`
//! across hosts counts the hosts an address failed on). A **sequence** rule fires when a record
//! matching `then` follows `count` records matching `first` with the same `key` fields within
//! `within`, and uses them up. A **file-integrity** rule fires per path with a change of a path
//! (or a move from one) its globs match, of the kinds it names.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use aho_corasick::AhoCorasick;

use outpost_common::event::{FimEvent, LogRecord};

use super::alert::{Change, Evaluates, Group, Groups, Slot};
use super::file::{Condition, FrequencyRule, LogMatch, Rule, SequenceRule};
use super::lifecycle::AlertState;

impl LogMatch {
    /// The record's fields if it matches: its attributes, then the pattern's named groups.
    pub fn matches(&self, record: &LogRecord) -> Option<BTreeMap<String, String>> {
        if self.source.as_ref().is_some_and(|s| *s != record.source) {
            return None;
        }
        let mut fields: BTreeMap<String, String> = record.attributes.iter().cloned().collect();
        if let Some(pattern) = &self.pattern {
            let captures = pattern.captures(&record.body)?;
            for name in pattern.capture_names().flatten() {
                if let Some(m) = captures.name(name) {
                    fields.insert(name.to_owned(), m.as_str().to_owned());
                }
            }
        }
        let wanted = self
            .fields
            .iter()
            .all(|(k, v)| fields.get(k).is_some_and(|have| have == v));
        wanted.then_some(fields)
    }
}

/// What a frequency rule's group keeps: the times of its matching records within `within`,
/// oldest first, with the `distinct` field's value when the rule counts those.
#[derive(Debug, Default)]
pub struct Seen(VecDeque<(i64, Option<String>)>);

/// Every log and frequency rule's alerts, by rule (its index), host (none across hosts) and
/// `group_by` values.
#[derive(Debug)]
pub struct LogEvaluator {
    groups: Groups<FieldsKey, Group<Seen>>,
    candidates: Candidates,
    /// When idle groups were last forgotten.
    swept_ns: i64,
}

/// How often [`LogEvaluator::tick`] forgets idle groups when no alert changed: a look at every
/// group, so not at every step. A group kept a little longer changes nothing: counts and sequences only look within
/// their windows.
const SWEEP_EVERY_NS: i64 = 10_000_000_000;

/// Which rules a record may match, found in one pass over its body rather than one pass of
/// each rule's pattern: with a thousand rules, most records match none.
///
/// Every match of a pattern starts with one of its prefix literals, or ends with one of its
/// suffix literals, when the pattern has such a finite set (as `regex_syntax` extracts them,
/// the way the regex crate picks its own prefilters). So a record whose body holds none of a
/// rule's literals cannot match it; one Aho-Corasick search finds every literal the body holds.
/// A pattern without usable literals (`\w+ failed`, `.*`) keeps its rule a candidate for every
/// record, as does a matcher without a pattern.
#[derive(Debug)]
struct Candidates {
    /// Every literal of every pattern that has them; `None` when there are none.
    literals: Option<AhoCorasick>,
    /// The rule (its index) of each literal.
    owner: Vec<usize>,
    /// Rules that are candidates for every record.
    always: Vec<usize>,
}

/// Literals shorter than this find too much to be worth it.
const LEAST_LITERAL: usize = 3;
/// A pattern with more literals than this (a long alternation, case folding) is tried on every
/// record instead.
const MOST_LITERALS: usize = 64;

impl Candidates {
    fn new(rules: &[Rule]) -> Candidates {
        let mut literals: Vec<Vec<u8>> = Vec::new();
        let mut owner = Vec::new();
        let mut always = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let matchers: Vec<&LogMatch> = match &rule.condition {
                Condition::Log(m) => vec![m],
                Condition::Frequency(f) => vec![&f.matcher],
                Condition::Sequence(q) => vec![&q.first, &q.then],
                _ => continue,
            };
            for m in matchers {
                match m
                    .pattern
                    .as_ref()
                    .and_then(|p| required_literals(p.as_str()))
                {
                    Some(found) => {
                        owner.extend(std::iter::repeat_n(index, found.len()));
                        literals.extend(found);
                    }
                    None => always.push(index),
                }
            }
        }
        always.dedup();
        let literals = (!literals.is_empty())
            .then(|| AhoCorasick::new(&literals))
            .and_then(|built| {
                built
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "the log rules' prefilter could not be built; every rule is tried on every record");
                    })
                    .ok()
            });
        if literals.is_none() {
            // Without the search, every rule that has literals is a candidate too.
            always.extend(owner.iter().copied());
            always.sort_unstable();
            always.dedup();
            owner.clear();
        }
        Candidates {
            literals,
            owner,
            always,
        }
    }

    /// The rules `body` may match, in rule order.
    fn of(&self, body: &str) -> Vec<usize> {
        let mut rules = self.always.clone();
        if let Some(ac) = &self.literals {
            rules.extend(
                ac.find_overlapping_iter(body)
                    .map(|m| self.owner[m.pattern().as_usize()]),
            );
            rules.sort_unstable();
            rules.dedup();
        }
        rules
    }
}

/// Literals one of which every match of `pattern` starts (or else ends) with, if it has a
/// usable set of them.
fn required_literals(pattern: &str) -> Option<Vec<Vec<u8>>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};

    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    [ExtractKind::Prefix, ExtractKind::Suffix]
        .into_iter()
        .filter_map(|kind| {
            let seq = Extractor::new().kind(kind).extract(&hir);
            let literals = seq.literals()?;
            let usable = !literals.is_empty()
                && literals.len() <= MOST_LITERALS
                && literals.iter().all(|l| l.as_bytes().len() >= LEAST_LITERAL);
            usable.then(|| {
                literals
                    .iter()
                    .map(|l| l.as_bytes().to_vec())
                    .collect::<Vec<_>>()
            })
        })
        // Fewer, longer literals find less.
        .min_by_key(|l: &Vec<Vec<u8>>| {
            (
                l.len(),
                usize::MAX - l.iter().map(Vec::len).min().unwrap_or(0),
            )
        })
}

/// A rule (its index), a host (none across hosts) and the values of its `group_by` fields.
type FieldsKey = (usize, Option<String>, Vec<String>);

impl LogEvaluator {
    pub fn new(rules: Vec<Rule>) -> LogEvaluator {
        LogEvaluator {
            candidates: Candidates::new(&rules),
            groups: Groups::new(rules),
            swept_ns: i64::MIN,
        }
    }

    /// Takes one committed record of `agent_id`'s; returns the alerts it changed.
    pub fn observe(&mut self, agent_id: &str, record: &LogRecord, now_ns: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        let rules = self.groups.rules.clone();
        for index in self.candidates.of(&record.body) {
            let rule = &rules[index];
            let change = match &rule.condition {
                Condition::Log(matcher) => {
                    if matcher.matches(record).is_none() {
                        continue;
                    }
                    let key = (index, Some(agent_id.to_owned()), Vec::new());
                    let group = self.groups.map.entry(key.clone()).or_insert_with(|| {
                        Group::new(
                            Seen::default(),
                            Slot::new(rule, Some(agent_id), []).restore(&mut self.groups.restored),
                        )
                    });
                    let change = group.alert.set(rule, true, None, now_ns);
                    group.alert.release();
                    self.groups.touch(&key, None);
                    change
                }
                Condition::Frequency(f) => {
                    let Some(mut fields) = f.matcher.matches(record) else {
                        continue;
                    };
                    fields
                        .entry("host".to_owned())
                        .or_insert_with(|| agent_id.to_owned());
                    let Some(values) = f
                        .group_by
                        .iter()
                        .map(|name| fields.get(name).cloned())
                        .collect::<Option<Vec<String>>>()
                    else {
                        continue;
                    };
                    let distinct = match &f.distinct {
                        None => None,
                        Some(name) => match fields.get(name) {
                            Some(value) => Some(value.clone()),
                            None => continue,
                        },
                    };
                    let host = (!f.across_hosts).then(|| agent_id.to_owned());
                    let key = (index, host, values);
                    let group = self.groups.map.entry(key.clone()).or_insert_with_key(
                        |(_, host, values)| {
                            Group::new(
                                Seen::default(),
                                Slot::new(
                                    rule,
                                    host.as_deref(),
                                    f.group_by.iter().cloned().zip(values.iter().cloned()),
                                )
                                .restore(&mut self.groups.restored),
                            )
                        },
                    );
                    let count = group.data.count(f, record.time_ns, distinct);
                    let holds = count >= u64::from(f.count);
                    let change = group.alert.set(rule, holds, Some(count as f64), now_ns);
                    group.alert.release();
                    self.groups.touch(&key, None);
                    change
                }
                Condition::Sequence(q) => {
                    let Some(change) =
                        sequence_step(&mut self.groups, index, rule, q, agent_id, record, now_ns)
                    else {
                        continue;
                    };
                    Some(change)
                }
                Condition::Threshold(_)
                | Condition::Absence(_)
                | Condition::Fim(_)
                | Condition::Composite(_) => continue,
            };
            changes.extend(change);
        }
        changes
    }

    /// Takes one committed file-integrity change of `agent_id`'s; returns the alerts it changed.
    /// An alert per host and path: it fires with the change and resolves after the rule's
    /// `keep_firing_for`.
    pub fn observe_fim(&mut self, agent_id: &str, event: &FimEvent, now_ns: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        let rules = self.groups.rules.clone();
        for (index, rule) in rules.iter().enumerate() {
            let Condition::Fim(f) = &rule.condition else {
                continue;
            };
            let kind_wanted = f.changes.is_empty() || f.changes.contains(&event.change);
            let path_wanted = f.paths.is_match(&event.path)
                || event
                    .moved_from
                    .as_ref()
                    .is_some_and(|from| f.paths.is_match(from));
            if !(kind_wanted && path_wanted) {
                continue;
            }
            let key = (index, Some(agent_id.to_owned()), vec![event.path.clone()]);
            let group = self.groups.map.entry(key.clone()).or_insert_with(|| {
                Group::new(
                    Seen::default(),
                    Slot::new(
                        rule,
                        Some(agent_id),
                        [("path".to_owned(), event.path.clone())],
                    )
                    .restore(&mut self.groups.restored),
                )
            });
            changes.extend(group.alert.set(rule, true, None, now_ns));
            group.alert.release();
            self.groups.touch(&key, None);
        }
        changes
    }

    /// Applies what time alone changes by `now_ns` (firing alerts whose `keep_firing_for` ran
    /// out since their last match resolve), and forgets groups that have nothing left to count
    /// or report.
    pub fn tick(&mut self, now_ns: i64) -> Vec<Change> {
        let changes = self.groups.tick(now_ns);
        // Alerts that just resolved leave their groups idle: forget those at once.
        if changes.is_empty() && now_ns < self.swept_ns.saturating_add(SWEEP_EVERY_NS) {
            return changes;
        }
        self.swept_ns = now_ns;
        self.groups.retain(|rule, _, g| {
            let idle = g.alert.state() == AlertState::Inactive;
            let window_over = match &rule.condition {
                Condition::Frequency(f) => g
                    .data
                    .0
                    .back()
                    .is_none_or(|&(t, _)| t < now_ns.saturating_sub(f.within_ns)),
                // The `first` records wait for their `then` one as long as `within`.
                Condition::Sequence(q) => g
                    .data
                    .0
                    .back()
                    .is_none_or(|&(t, _)| t < now_ns.saturating_sub(q.within_ns)),
                _ => true,
            };
            !(idle && window_over)
        });
        changes
    }
}

impl Evaluates for LogEvaluator {
    type Key = FieldsKey;
    type Data = Seen;

    fn groups(&self) -> &Groups<FieldsKey, Group<Seen>> {
        &self.groups
    }

    fn groups_mut(&mut self) -> &mut Groups<FieldsKey, Group<Seen>> {
        &mut self.groups
    }
}

/// A sequence rule's step for one record: a `first` record is remembered under its key, and a
/// `then` record preceded by `count` of them within `within` holds the condition (and uses them
/// up, so that the next `then` needs new `first` ones).
fn sequence_step(
    groups: &mut Groups<FieldsKey, Group<Seen>>,
    index: usize,
    rule: &Rule,
    q: &SequenceRule,
    agent_id: &str,
    record: &LogRecord,
    now_ns: i64,
) -> Option<Change> {
    let keyed = |fields: BTreeMap<String, String>| -> Option<Vec<String>> {
        q.key.iter().map(|k| fields.get(k).cloned()).collect()
    };
    let mut change = None;
    if let Some(values) = q.then.matches(record).and_then(keyed)
        && let key = (index, Some(agent_id.to_owned()), values)
        && let Some(group) = groups.map.get_mut(&key)
    {
        let earliest = record.time_ns.saturating_sub(q.within_ns);
        let before = group
            .data
            .0
            .iter()
            .filter(|&&(t, _)| t >= earliest && t <= record.time_ns)
            .count();
        if before >= q.count as usize {
            group.data.0.clear();
            change = group.alert.set(rule, true, Some(before as f64), now_ns);
            group.alert.release();
            groups.touch(&key, None);
        }
    }
    if let Some(values) = q.first.matches(record).and_then(keyed) {
        let key = (index, Some(agent_id.to_owned()), values);
        let group = groups
            .map
            .entry(key.clone())
            .or_insert_with_key(|(_, host, values)| {
                Group::new(
                    Seen::default(),
                    Slot::new(
                        rule,
                        host.as_deref(),
                        q.key.iter().cloned().zip(values.iter().cloned()),
                    )
                    .restore(&mut groups.restored),
                )
            });
        group.data.remember(record.time_ns, None, q.within_ns);
        // A restored alert taken up here may wait on time.
        groups.touch(&key, None);
    }
    change
}

impl Seen {
    /// Remembers a record at `time_ns` (with its `distinct` field's value), forgetting those more
    /// than `within_ns` older than the newest.
    fn remember(&mut self, time_ns: i64, value: Option<String>, within_ns: i64) {
        let at = self.0.partition_point(|&(t, _)| t <= time_ns);
        self.0.insert(at, (time_ns, value));
        let newest = self.0.back().map_or(time_ns, |&(t, _)| t);
        let oldest_kept = newest.saturating_sub(within_ns);
        while self.0.front().is_some_and(|&(t, _)| t < oldest_kept) {
            self.0.pop_front();
        }
    }

    /// Adds a record at `time_ns` and counts the group's records (or distinct values) within
    /// `within` of the newest.
    fn count(&mut self, f: &FrequencyRule, time_ns: i64, distinct: Option<String>) -> u64 {
        self.remember(time_ns, distinct, f.within_ns);
        let seen = &self.0;
        if f.distinct.is_some() {
            let values: BTreeSet<&str> = seen.iter().filter_map(|(_, v)| v.as_deref()).collect();
            values.len() as u64
        } else {
            seen.len() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::file::parse_file;
    use crate::rules::file::tests::BRUTE_FORCE;
    use crate::rules::lifecycle::Transition;

    const S: i64 = 1_000_000_000;

    fn evaluator(text: &str) -> LogEvaluator {
        LogEvaluator::new(parse_file(Path::new("test.toml"), text).unwrap())
    }

    fn sshd(t: i64, body: &str) -> LogRecord {
        LogRecord {
            time_ns: t * S,
            source: "journal".to_owned(),
            severity: None,
            body: body.to_owned(),
            attributes: vec![("app".to_owned(), "sshd".to_owned())],
        }
    }

    fn failed(t: i64, user: &str, address: &str) -> LogRecord {
        sshd(
            t,
            &format!("Failed password for {user} from {address} port 52044 ssh2"),
        )
    }

    fn transitions(changes: &[Change]) -> Vec<(i64, Transition, Option<f64>)> {
        changes
            .iter()
            .map(|c| (c.at_ns / S, c.transition, c.value))
            .collect()
    }

    #[test]
    fn eight_failures_from_one_address_within_two_minutes_fire_once_per_address() {
        let mut e = evaluator(BRUTE_FORCE);
        let mut seen = Vec::new();
        for i in 0..10 {
            let t = i * 10;
            seen.extend(e.observe("web-1", &failed(t, "root", "203.0.113.7"), t * S));
            // Another address, and a success, count for nothing here.
            seen.extend(
                e.observe("web-1", &failed(t, "root", "198.51.100.2"), t * S)
                    .into_iter()
                    .filter(|c| c.labels["address"] != "198.51.100.2"),
            );
            seen.extend(e.observe(
                "web-1",
                &sshd(t, "Accepted password for root from 203.0.113.7"),
                t * S,
            ));
        }
        // The eighth failure (at 70 s) fires; the ninth and tenth keep it firing.
        assert_eq!(transitions(&seen), [(70, Transition::Fired, Some(8.0))]);
        let fired = &seen[0];
        assert_eq!(fired.labels["address"], "203.0.113.7");
        assert_eq!(fired.labels["host"], "web-1");
        assert!(!fired.labels.contains_key("user"), "{:?}", fired.labels);
        // The other address fired too: two alerts.
        assert_eq!(e.active().len(), 2);
        // Five quiet minutes after the last failure (90 s), both resolve.
        assert_eq!(e.next_change_ns(), Some(390 * S));
        assert!(e.tick(389 * S).is_empty());
        let resolved = e.tick(390 * S);
        assert_eq!(resolved.len(), 2);
        assert!(
            resolved
                .iter()
                .all(|c| c.transition == Transition::Resolved)
        );
        assert!(e.active().is_empty());
        assert!(e.groups.map.is_empty(), "idle groups are forgotten");
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_reach_the_count() {
        let mut e = evaluator(BRUTE_FORCE);
        // One failure every 20 s: at most 7 within any 120 s (0 s and 120 s both count).
        for i in 0..30 {
            let t = i * 20;
            assert!(
                e.observe("web-1", &failed(t, "root", "203.0.113.7"), t * S)
                    .is_empty(),
                "{t}"
            );
        }
    }

    #[test]
    fn one_address_failing_on_many_hosts_is_one_alert_across_them() {
        let text = BRUTE_FORCE.replace("ssh-brute-force", "ssh-spray").replace(
            "count = 8",
            "count = 3\ndistinct = \"host\"\nacross_hosts = true",
        );
        let mut e = evaluator(&text);
        let mut seen = Vec::new();
        for (i, host) in ["web-1", "web-2", "web-2", "db-1"].iter().enumerate() {
            let t = i as i64;
            seen.extend(e.observe(host, &failed(t, "admin", "203.0.113.7"), t * S));
        }
        assert_eq!(transitions(&seen), [(3, Transition::Fired, Some(3.0))]);
        assert!(!seen[0].labels.contains_key("host"), "{:?}", seen[0].labels);
    }

    /// Failed logins, then a success, from the same address, as the default rule pack says it.
    const GUESSED: &str = r#"
[[rule]]
name = "ssh-login-after-failures"
kind = "sequence"
severity = "critical"
first = { source = "journal", pattern = 'Failed password for \S+ from (?P<address>\S+)' }
then = { source = "journal", pattern = 'Accepted \S+ for \S+ from (?P<address>\S+)' }
key = ["address"]
count = 3
within = "10m"
"#;

    #[test]
    fn failures_then_a_success_from_the_same_address_fire_and_are_used_up() {
        let mut e = evaluator(GUESSED);
        let accepted = |t: i64, address: &str| {
            sshd(
                t,
                &format!("Accepted password for root from {address} port 4242 ssh2"),
            )
        };
        let mut seen = Vec::new();
        for t in 0..3 {
            seen.extend(e.observe("web-1", &failed(t * 10, "root", "203.0.113.7"), t * 10 * S));
        }
        // Another address's success, and the same address's success on another host: nothing.
        seen.extend(e.observe("web-1", &accepted(40, "198.51.100.2"), 40 * S));
        seen.extend(e.observe("web-2", &accepted(40, "203.0.113.7"), 40 * S));
        seen.extend(e.observe("web-1", &accepted(50, "203.0.113.7"), 50 * S));
        // The failures were used: a second success alone is nothing.
        seen.extend(e.observe("web-1", &accepted(60, "203.0.113.7"), 60 * S));
        assert_eq!(transitions(&seen), [(50, Transition::Fired, Some(3.0))]);
        assert_eq!(seen[0].labels["address"], "203.0.113.7");
        // Failures older than `within` before the success do not count.
        let mut late = evaluator(GUESSED);
        for t in 0..3 {
            late.observe("web-1", &failed(t, "root", "203.0.113.7"), t * S);
        }
        assert!(
            late.observe("web-1", &accepted(601, "203.0.113.7"), 601 * S)
                .is_empty()
        );
    }

    #[test]
    fn a_change_to_a_watched_path_fires_per_path_of_the_kinds_the_rule_names() {
        use outpost_common::event::{FimChange, FimDetection, FimEvent};
        let text = "[[rule]]\nname = \"accounts\"\nkind = \"fim\"\nseverity = \"high\"\n\
                    paths = [\"/etc/passwd\", \"/etc/shadow\", \"/etc/sudoers.d/*\"]\n\
                    changes = [\"modified\", \"created\", \"moved\"]\n";
        let mut e = evaluator(text);
        let change = |path: &str, change: FimChange, moved_from: Option<&str>| FimEvent {
            time_ns: 0,
            path: path.to_owned(),
            change,
            changed: vec![],
            moved_from: moved_from.map(str::to_owned),
            before: None,
            after: None,
            detected_by: FimDetection::Realtime,
            seq: 0,
            chain: String::new(),
        };
        // Not below sudoers.d's direct children; not a path it watches; moved away from one it
        // does.
        let changes = [
            ("/etc/passwd", FimChange::Modified, None),
            ("/etc/passwd", FimChange::MetadataChanged, None),
            ("/etc/sudoers.d/90-admins", FimChange::Created, None),
            ("/etc/sudoers.d/a/b", FimChange::Created, None),
            ("/etc/hosts", FimChange::Modified, None),
            ("/tmp/shadow", FimChange::Moved, Some("/etc/shadow")),
        ];
        let mut seen = Vec::new();
        for (t, (path, kind, from)) in (0..).zip(changes) {
            seen.extend(e.observe_fim("web-1", &change(path, kind, from), t * S));
        }
        let paths: Vec<(&str, i64)> = seen
            .iter()
            .map(|c| (c.labels["path"].as_str(), c.at_ns / S))
            .collect();
        assert_eq!(
            paths,
            [
                ("/etc/passwd", 0),
                ("/etc/sudoers.d/90-admins", 2),
                ("/tmp/shadow", 5)
            ]
        );
        let bad = text.replace("\"moved\"]", "\"renamed\"]");
        let err = parse_file(Path::new("test.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.toml:6:35") && err.contains("unknown change `renamed`"),
            "{err}"
        );
    }

    #[test]
    fn a_log_rule_fires_with_each_match_and_resolves_after_its_quiet_time() {
        let text = "[[rule]]\nname = \"sudo-auth\"\nkind = \"log\"\nseverity = \"medium\"\n\
                    pattern = 'sudo: .*authentication failure'\nkeep_firing_for = \"1m\"\n";
        let mut e = evaluator(text);
        let record = |t: i64| {
            sshd(
                t,
                "sudo: pam_unix(sudo:auth): authentication failure; user=bob",
            )
        };
        let mut seen = e.observe("web-1", &record(0), 0);
        seen.extend(e.observe("web-1", &record(30), 30 * S));
        seen.extend(e.observe("web-1", &sshd(40, "sudo: session opened"), 40 * S));
        assert_eq!(e.next_change_ns(), Some(90 * S));
        seen.extend(e.tick(90 * S));
        seen.extend(e.observe("web-1", &record(100), 100 * S));
        assert_eq!(
            transitions(&seen),
            [
                (0, Transition::Fired, None),
                (90, Transition::Resolved, None),
                (100, Transition::Fired, None)
            ]
        );
    }
}

#[cfg(test)]
mod candidate_tests {
    use std::path::Path;

    use super::*;
    use crate::rules::file::parse_file;

    const RULES: &str = r#"
[[rule]]
name = "panic"
kind = "log"
severity = "high"
pattern = 'panic: (?P<what>\w+)'

[[rule]]
name = "by-field"
kind = "log"
severity = "low"
fields = { app = "cron" }

[[rule]]
name = "ssh-after"
kind = "sequence"
severity = "high"
key = ["ip"]
within = "5m"
[rule.first]
pattern = 'Failed .* from (?P<ip>\S+)'
[rule.then]
pattern = 'Accepted .* from (?P<ip>\S+)'

[[rule]]
name = "fim"
kind = "fim"
severity = "low"
paths = ["/etc/passwd"]
"#;

    #[test]
    fn candidates_are_the_rules_whose_pattern_matches_and_those_without_one() {
        let rules = parse_file(Path::new("test.toml"), RULES).unwrap();
        let c = Candidates::new(&rules);
        assert!(c.literals.is_some());
        // The field-only rule is a candidate for every record; the file-integrity one never.
        assert_eq!(c.of("nothing to see"), vec![1]);
        assert_eq!(c.of("panic: oops"), vec![0, 1]);
        assert_eq!(c.of("Failed password from 10.0.0.1"), vec![1, 2]);
        assert_eq!(c.of("Accepted key from 10.0.0.1"), vec![1, 2]);
        // The literal alone makes a candidate; the rule's pattern still decides.
        assert_eq!(c.of("panic: "), vec![0, 1]);
    }

    #[test]
    fn literals_are_prefixes_or_suffixes_and_patterns_without_them_match_everything() {
        let lits = |p| {
            required_literals(p).map(|l| {
                l.into_iter()
                    .map(|b| String::from_utf8(b).unwrap())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            lits(r"panic: (?P<what>\w+)"),
            Some(vec!["panic: ".to_owned()])
        );
        assert_eq!(
            lits(r"\w+ failed to start"),
            Some(vec![" failed to start".to_owned()])
        );
        let both = lits(r"Failed (?:password|publickey) for").unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(lits(r".*"), None);
        assert_eq!(lits(r"\d+"), None);
        // Too short to be worth it.
        assert_eq!(lits(r"ab\d+cd"), None);
    }

    #[test]
    fn a_rule_without_a_pattern_still_matches_on_fields() {
        let rules = parse_file(Path::new("test.toml"), RULES).unwrap();
        let mut e = LogEvaluator::new(rules);
        let record = LogRecord {
            time_ns: 1,
            source: "journal".to_owned(),
            severity: None,
            body: "(root) CMD (run-parts /etc/cron.hourly)".to_owned(),
            attributes: vec![("app".to_owned(), "cron".to_owned())],
        };
        let changes = e.observe("h1", &record, 1);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].labels.get("alertname").map(String::as_str),
            Some("by-field")
        );
    }
}
