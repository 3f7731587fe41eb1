//! Rule files: TOML under `rules.d/`, each a list of `[[rule]]` tables, checked whole when they
//! load.
//!
//! A file that cannot be read, does not parse, or holds a rule that makes no sense is refused with
//! its path, and the line and column of what is wrong where there is one; [`load_dir`] refuses
//! the whole directory then, so that a reload with a mistake in it changes nothing and the rules
//! already running keep running.
//!
//! ```toml
//! [[rule]]
//! name = "cpu-busy"
//! kind = "threshold"
//! severity = "high"
//! metric = "system.cpu.utilization"
//! match = { state = "user" }      # attributes the series must have (all of them)
//! aggregate = "avg"               # last (default), avg, min, max, increase, rate
//! window = "5m"                   # the span aggregated, back from the newest sample
//! op = ">"                        # > >= < <= == !=
//! value = 0.9
//! for = "5m"                      # how long it must hold before firing (default 0s)
//! keep_firing_for = "0s"          # how long it keeps firing after it stopped holding
//! labels = { team = "ops" }
//! annotations = { summary = "CPU busy on {{ host }}: {{ value }}", runbook_url = "https://runbooks.example/cpu" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_common::config::{ConfigError, line_column, parse_http_uri, parse_toml};
use serde::Deserialize;
use toml::Spanned;

use super::lifecycle::Lifecycle;
use super::window::{Aggregate, Op};

/// How serious an alert is, most serious first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// A metric's window aggregate against a value, per host and series.
    Threshold,
}

/// One file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
}

/// One `[[rule]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Spanned<String>,
    kind: RuleKind,
    severity: Severity,
    metric: Spanned<String>,
    #[serde(default, rename = "match")]
    matches: BTreeMap<String, String>,
    #[serde(default)]
    aggregate: Option<Spanned<Aggregate>>,
    #[serde(default, with = "humantime_serde::option")]
    window: Option<Duration>,
    op: Op,
    value: Spanned<f64>,
    #[serde(default, rename = "for", with = "humantime_serde")]
    for_: Duration,
    #[serde(default, with = "humantime_serde")]
    keep_firing_for: Duration,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, Spanned<String>>,
}

/// A threshold rule, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdRule {
    pub metric: String,
    /// Attributes a series must have, all of them, to be watched.
    pub matches: BTreeMap<String, String>,
    pub aggregate: Aggregate,
    pub window_ns: i64,
    pub op: Op,
    pub value: f64,
}

/// A rule, checked and ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub severity: Severity,
    pub lifecycle: Lifecycle,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub threshold: ThresholdRule,
    /// The file it came from, for listings and errors.
    pub file: PathBuf,
}

/// The window of a rule whose aggregate is `last` and says none: only the newest sample counts.
const LAST_WINDOW: Duration = Duration::from_secs(0);

/// Reads and checks one rule file.
pub fn load_file(path: &Path) -> Result<Vec<Rule>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(path, &text)
}

/// Checks the rule file `text`, which came from `path`.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Rule>, ConfigError> {
    let file: RuleFile = parse_toml(path, text)?;
    let at = |offset: usize, message: String| {
        let (line, column) = line_column(text, offset);
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    };
    let mut rules: Vec<Rule> = Vec::with_capacity(file.rule.len());
    for spec in file.rule {
        let start = spec.span().start;
        let spec = spec.into_inner();
        let name = spec.name.get_ref();
        if let Err(why) = check_name(name) {
            return Err(at(spec.name.span().start, why));
        }
        if rules.iter().any(|r| &r.name == name) {
            return Err(at(
                spec.name.span().start,
                format!("a second rule named `{name}` in this file"),
            ));
        }
        if spec.metric.get_ref().is_empty() {
            return Err(at(spec.metric.span().start, "`metric` is empty".to_owned()));
        }
        let value = *spec.value.get_ref();
        if !value.is_finite() {
            return Err(at(
                spec.value.span().start,
                format!("`value` must be a finite number, not {value}"),
            ));
        }
        let aggregate = spec
            .aggregate
            .as_ref()
            .map_or(Aggregate::Last, |a| *a.get_ref());
        let window = match (aggregate, spec.window) {
            (Aggregate::Last, window) => window.unwrap_or(LAST_WINDOW),
            (_, Some(window)) if !window.is_zero() => window,
            (_, _) => {
                let offset = spec.aggregate.as_ref().map_or(start, |a| a.span().start);
                return Err(at(
                    offset,
                    format!(
                        "rule `{name}`: aggregate `{}` needs a `window` longer than zero",
                        aggregate_name(aggregate)
                    ),
                ));
            }
        };
        if let Some(url) = spec.annotations.get("runbook_url") {
            parse_http_uri(url.get_ref()).map_err(|why| {
                at(
                    url.span().start,
                    format!("rule `{name}`: runbook_url: {why}"),
                )
            })?;
        }
        let RuleKind::Threshold = spec.kind;
        rules.push(Rule {
            name: name.clone(),
            severity: spec.severity,
            lifecycle: Lifecycle {
                for_ns: duration_ns(spec.for_),
                keep_firing_for_ns: duration_ns(spec.keep_firing_for),
            },
            labels: spec.labels,
            annotations: spec
                .annotations
                .into_iter()
                .map(|(k, v)| (k, v.into_inner()))
                .collect(),
            threshold: ThresholdRule {
                metric: spec.metric.into_inner(),
                matches: spec.matches,
                aggregate,
                window_ns: duration_ns(window),
                op: spec.op,
                value,
            },
            file: path.to_owned(),
        });
    }
    Ok(rules)
}

/// Every rule of the `*.toml` files in `dir` (other files are left alone), in the order of the
/// files' names; or, if any file is refused, every file's error and no rules at all. A missing
/// directory holds no rules.
pub fn load_dir(dir: &Path) -> Result<Vec<Rule>, Vec<ConfigError>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(vec![ConfigError::Read {
                path: dir.to_owned(),
                source,
            }]);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut rules: Vec<Rule> = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match load_file(&file) {
            Ok(loaded) => {
                for rule in loaded {
                    if let Some(first) = rules.iter().find(|r| r.name == rule.name) {
                        errors.push(ConfigError::invalid(
                            &file,
                            format!(
                                "rule `{}` is also defined in {}",
                                rule.name,
                                first.file.display()
                            ),
                        ));
                    } else {
                        rules.push(rule);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

/// Rule names are what alerts are known by in the API, the CLI and notifications: 1–128 of
/// `[A-Za-z0-9._-]`.
fn check_name(name: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 128 || !name.chars().all(fine) {
        return Err(format!(
            "rule name `{name}`: use 1 to 128 letters, digits, `.`, `_` or `-`"
        ));
    }
    Ok(())
}

fn aggregate_name(aggregate: Aggregate) -> &'static str {
    match aggregate {
        Aggregate::Last => "last",
        Aggregate::Avg => "avg",
        Aggregate::Min => "min",
        Aggregate::Max => "max",
        Aggregate::Increase => "increase",
        Aggregate::Rate => "rate",
    }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const CPU: &str = r#"
[[rule]]
name = "cpu-busy"
kind = "threshold"
severity = "high"
metric = "system.cpu.utilization"
match = { state = "user" }
aggregate = "avg"
window = "5m"
op = ">"
value = 0.9
for = "5m"
labels = { team = "ops" }
annotations = { summary = "CPU busy on {{ host }}", runbook_url = "https://runbooks.example/cpu" }
"#;

    fn parse(text: &str) -> Result<Vec<Rule>, String> {
        parse_file(Path::new("rules.d/test.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_threshold_rule_loads_with_its_defaults_filled_in() {
        let rules = parse(CPU).unwrap();
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!((r.name.as_str(), r.severity), ("cpu-busy", Severity::High));
        assert_eq!(r.lifecycle.for_ns, 300_000_000_000);
        assert_eq!(r.lifecycle.keep_firing_for_ns, 0);
        assert_eq!(r.labels["team"], "ops");
        assert_eq!(
            r.threshold,
            ThresholdRule {
                metric: "system.cpu.utilization".to_owned(),
                matches: [("state".to_owned(), "user".to_owned())].into(),
                aggregate: Aggregate::Avg,
                window_ns: 300_000_000_000,
                op: Op::Gt,
                value: 0.9,
            }
        );
        // The least a rule says: the newest sample against a value, firing at once.
        let least = parse(
            "[[rule]]\nname = \"load\"\nkind = \"threshold\"\nseverity = \"low\"\n\
             metric = \"system.cpu.load_average.1m\"\nop = \">=\"\nvalue = 8\n",
        )
        .unwrap();
        assert_eq!(least[0].threshold.aggregate, Aggregate::Last);
        assert_eq!(least[0].threshold.window_ns, 0);
        assert_eq!(least[0].lifecycle, Lifecycle::default());
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn mistakes_are_refused_with_the_file_line_and_column() {
        // CPU's lines: 2 `[[rule]]`, 3 name, 4 kind, 5 severity, … 8 aggregate, 9 window, 10 op,
        // 11 value, 12 for, 14 annotations.
        let cases = [
            (
                CPU.replace("for = ", "fore = "),
                ":12:1:",
                "unknown field `fore`",
            ),
            (
                CPU.replace("\"high\"", "\"urgent\""),
                ":5:12:",
                "unknown variant `urgent`",
            ),
            (
                CPU.replace("\"threshold\"", "\"sequence\""),
                ":4:8:",
                "unknown variant `sequence`",
            ),
            (
                CPU.replace("\">\"", "\"=>\""),
                ":10:6:",
                "unknown variant `=>`",
            ),
            (
                CPU.replace("\"cpu-busy\"", "\"cpu busy\""),
                ":3:8:",
                "rule name `cpu busy`",
            ),
            (
                CPU.replace("window = \"5m\"\n", ""),
                ":8:13:",
                "needs a `window`",
            ),
            (
                CPU.replace("\"5m\"\nop", "\"0s\"\nop"),
                ":8:13:",
                "needs a `window`",
            ),
            (
                CPU.replace("\"5m\"\nop", "\"five minutes\"\nop"),
                ":9:10:",
                "expected a duration",
            ),
            (
                CPU.replace("value = 0.9", "value = nan"),
                ":11:9:",
                "finite",
            ),
            (
                CPU.replace("https://runbooks", "runbooks"),
                ":14:67:",
                "runbook_url",
            ),
            (
                format!("{CPU}{CPU}"),
                ":17:8:",
                "a second rule named `cpu-busy`",
            ),
            ("[[rule]\n".to_owned(), ":1:8:", "unclosed array table"),
        ];
        for (text, place, what) in cases {
            let err = parse(&text).unwrap_err();
            assert!(
                err.starts_with("rules.d/test.toml:") && err.contains(place) && err.contains(what),
                "{place} {what}: {err}"
            );
        }
    }

    #[test]
    fn a_directory_loads_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        assert!(load_dir(&dir.path().join("missing")).unwrap().is_empty());
        write("10-cpu.toml", CPU);
        write("20-mem.toml", &CPU.replace("cpu-busy", "mem-busy"));
        write("README", "not a rule file");
        let names: Vec<String> = load_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["cpu-busy", "mem-busy"]);

        // One bad file, and one name used twice: nothing loads, and both are said.
        write("30-bad.toml", "[[rule]]\nname = 1\n");
        write("40-again.toml", CPU);
        let errors: Vec<String> = load_dir(dir.path())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("30-bad.toml:2:8"), "{errors:?}");
        assert!(
            errors[1].contains("40-again.toml") && errors[1].contains("10-cpu.toml"),
            "{errors:?}"
        );
    }
}
