//! Composite rules: other rules' alerts on the same host, combined. A composite rule holds on a
//! host when every rule of its `all` has an alert firing there, one of its `any` does (when it
//! names some), and none of its `none` does. It names rules of other kinds only, so there is no
//! cycle and no order to evaluate them in: the engine hands it what fires after the others moved.

use std::collections::BTreeSet;

use super::alert::{Change, Evaluates, Group, Groups, Slot};
use super::file::{CompositeRule, Condition, Rule};

/// A rule (its index), a host, and nothing else.
type HostKey = (usize, String, ());

/// Every composite rule's alerts.
#[derive(Debug)]
pub struct CompositeEvaluator {
    groups: Groups<HostKey, Group<()>>,
}

impl CompositeEvaluator {
    pub fn new(rules: Vec<Rule>) -> CompositeEvaluator {
        CompositeEvaluator {
            groups: Groups::new(rules),
        }
    }

    /// Evaluates every composite rule on every host where it may hold or holds now, given the
    /// alerts firing: `(rule name, host)` of each.
    pub fn evaluate(&mut self, firing: &BTreeSet<(String, String)>, now_ns: i64) -> Vec<Change> {
        let hosts: BTreeSet<&str> = firing.iter().map(|(_, host)| host.as_str()).collect();
        let mut changes = Vec::new();
        let rules = self.groups.rules.clone();
        for (index, rule) in rules.iter().enumerate() {
            let Condition::Composite(c) = &rule.condition else {
                continue;
            };
            let known: Vec<String> = self
                .groups
                .map
                .keys()
                .filter(|(i, _, ())| *i == index)
                .map(|(_, host, ())| host.clone())
                .collect();
            let candidates: BTreeSet<&str> = hosts
                .iter()
                .copied()
                .chain(known.iter().map(String::as_str))
                .collect();
            for host in candidates {
                let holds = holds(c, firing, host);
                let key = (index, host.to_owned(), ());
                let group = self.groups.map.entry(key.clone()).or_insert_with(|| {
                    Group::new(
                        (),
                        Slot::new(rule, Some(host), []).restore(&mut self.groups.restored),
                    )
                });
                changes.extend(group.alert.set(rule, holds, None, now_ns));
                self.groups.touch(&key, None);
            }
        }
        changes
    }

    /// See [`Groups::tick`].
    pub fn tick(&mut self, now_ns: i64) -> Vec<Change> {
        self.groups.tick(now_ns)
    }
}

fn holds(c: &CompositeRule, firing: &BTreeSet<(String, String)>, host: &str) -> bool {
    let fires = |name: &String| firing.contains(&(name.clone(), host.to_owned()));
    c.all.iter().all(fires)
        && (c.any.is_empty() || c.any.iter().any(fires))
        && !c.none.iter().any(fires)
}

impl Evaluates for CompositeEvaluator {
    type Key = HostKey;
    type Data = ();

    fn groups(&self) -> &Groups<HostKey, Group<()>> {
        &self.groups
    }

    fn groups_mut(&mut self) -> &mut Groups<HostKey, Group<()>> {
        &mut self.groups
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::file::parse_file;
    use crate::rules::lifecycle::Transition;

    const S: i64 = 1_000_000_000;

    const OVERLOADED: &str = "[[rule]]\nname = \"overloaded\"\nkind = \"composite\"\n\
                              severity = \"critical\"\nall = [\"cpu-busy\"]\n\
                              any = [\"memory-full\", \"swap-busy\"]\nnone = [\"maintenance\"]\n";

    fn firing(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(r, h)| ((*r).to_owned(), (*h).to_owned()))
            .collect()
    }

    #[test]
    fn all_any_and_none_combine_per_host() {
        let mut e = CompositeEvaluator::new(parse_file(Path::new("t.toml"), OVERLOADED).unwrap());
        let mut seen = Vec::new();
        // web-1: busy and swapping; web-2: busy alone; db-1: busy and full, but in maintenance.
        let now = firing(&[
            ("cpu-busy", "web-1"),
            ("swap-busy", "web-1"),
            ("cpu-busy", "web-2"),
            ("cpu-busy", "db-1"),
            ("memory-full", "db-1"),
            ("maintenance", "db-1"),
            ("swap-busy", "web-2-other"),
        ]);
        seen.extend(e.evaluate(&now, 0));
        let fired: Vec<(&str, Transition)> = seen
            .iter()
            .map(|c| (c.labels["host"].as_str(), c.transition))
            .collect();
        assert_eq!(fired, [("web-1", Transition::Fired)]);
        // web-1 stops swapping: resolved there, though nothing fires on it any more.
        let later = e.evaluate(&firing(&[("cpu-busy", "web-1")]), 10 * S);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].transition, Transition::Resolved);
        assert!(e.active().is_empty());
    }

    #[test]
    fn a_composite_of_nothing_or_of_itself_is_refused() {
        let alone = OVERLOADED
            .replace("all = [\"cpu-busy\"]\n", "")
            .replace("any = [\"memory-full\", \"swap-busy\"]\n", "");
        let err = parse_file(Path::new("t.toml"), &alone)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:1:1") && err.contains("needs `all` or `any`"),
            "{err}"
        );
        let itself = OVERLOADED.replace("[\"cpu-busy\"]", "[\"overloaded\"]");
        let err = parse_file(Path::new("t.toml"), &itself)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml:5:7") && err.contains("itself"),
            "{err}"
        );
    }
}
