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
use outpost_common::event::FimChange;
use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::lifecycle::Lifecycle;
use super::window::{Aggregate, Op};

/// How serious an alert is, most serious first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
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
    /// A log record that matches: fires with it, per host.
    Log,
    /// `count` matching log records within `within`, grouped by fields, per host or across hosts.
    Frequency,
    /// A host, one of its metrics or one of its log sources silent for `after`.
    Absence,
    /// A log record matching `first` (`count` of them), then one matching `then` with the same
    /// `key` fields, within `within`, per host.
    Sequence,
    /// A file-integrity change of a path matching `paths`, of one of the `changes`.
    Fim,
    /// Other rules' alerts on the same host: `all` firing, one of `any` firing (if it names
    /// some), none of `none` firing.
    Composite,
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
    // threshold
    #[serde(default)]
    metric: Option<Spanned<String>>,
    #[serde(default, rename = "match")]
    matches: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    aggregate: Option<Spanned<Aggregate>>,
    #[serde(default, with = "humantime_serde::option")]
    window: Option<Duration>,
    #[serde(default)]
    op: Option<Spanned<Op>>,
    #[serde(default)]
    value: Option<Spanned<f64>>,
    #[serde(default)]
    target: Option<Spanned<f64>>,
    #[serde(default)]
    min_samples: Option<Spanned<u32>>,
    // log and frequency
    #[serde(default)]
    source: Option<Spanned<String>>,
    #[serde(default)]
    pattern: Option<Spanned<String>>,
    #[serde(default)]
    fields: Option<Spanned<BTreeMap<String, String>>>,
    // frequency
    #[serde(default)]
    count: Option<Spanned<u32>>,
    #[serde(default, with = "humantime_serde::option")]
    within: Option<Duration>,
    #[serde(default)]
    group_by: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    distinct: Option<Spanned<String>>,
    #[serde(default)]
    across_hosts: Option<Spanned<bool>>,
    // absence
    #[serde(default, with = "humantime_serde::option")]
    after: Option<Duration>,
    // sequence
    #[serde(default)]
    first: Option<Spanned<MatchSpec>>,
    #[serde(default)]
    then: Option<Spanned<MatchSpec>>,
    #[serde(default)]
    key: Option<Spanned<Vec<String>>>,
    // fim
    #[serde(default)]
    paths: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    changes: Option<Spanned<Vec<Spanned<String>>>>,
    // composite
    #[serde(default)]
    all: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    any: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    none: Option<Spanned<Vec<String>>>,
    #[serde(default, rename = "for", with = "humantime_serde")]
    for_: Duration,
    #[serde(default, with = "humantime_serde::option")]
    keep_firing_for: Option<Duration>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, Spanned<String>>,
}

/// A sequence rule's `first` or `then` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    pattern: Option<Spanned<String>>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
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
    /// What a `forecast` aggregate forecasts reaching.
    pub target: Option<f64>,
    /// Samples the window must hold before the aggregate counts (at least what it needs).
    pub min_samples: usize,
}

/// Which log records a log or frequency rule counts: all of what it says must hold.
#[derive(Debug, Clone)]
pub struct LogMatch {
    /// The record's source, exactly (a file's path, `journal`).
    pub source: Option<String>,
    /// A regular expression the body must match; its named groups become fields of the record.
    pub pattern: Option<Regex>,
    /// Fields the record must have with these values: its attributes (a parser's fields) or the
    /// pattern's named groups.
    pub fields: BTreeMap<String, String>,
}

/// A frequency rule, checked.
#[derive(Debug, Clone)]
pub struct FrequencyRule {
    pub matcher: LogMatch,
    /// Matching records within `within_ns` that make the condition hold.
    pub count: u32,
    pub within_ns: i64,
    /// Fields whose values make a group (records without one of them are not counted).
    pub group_by: Vec<String>,
    /// Count the distinct values of this field rather than the records.
    pub distinct: Option<String>,
    /// One group across every host rather than one per host.
    pub across_hosts: bool,
}

/// What an absence rule waits for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Silent {
    /// Anything at all from the host.
    Host,
    /// Points of this metric.
    Metric(String),
    /// Records of this log source.
    Source(String),
}

/// An absence rule, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AbsenceRule {
    pub silent: Silent,
    /// How long without arrivals makes the condition hold.
    pub after_ns: i64,
}

/// A sequence rule, checked.
#[derive(Debug, Clone)]
pub struct SequenceRule {
    pub first: LogMatch,
    pub then: LogMatch,
    /// Fields that `first` and `then` records must share (none: any two of the host's).
    pub key: Vec<String>,
    /// `first` records, at least, within `within_ns` before the `then` one.
    pub count: u32,
    pub within_ns: i64,
}

/// A file-integrity rule, checked.
#[derive(Debug, Clone)]
pub struct FimRule {
    pub paths: globset::GlobSet,
    /// The kinds of change it fires on; empty: every kind.
    pub changes: Vec<FimChange>,
}

/// A composite rule, checked: names of other rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompositeRule {
    pub all: Vec<String>,
    pub any: Vec<String>,
    pub none: Vec<String>,
}

/// What a rule's condition is.
#[derive(Debug, Clone)]
pub enum Condition {
    Threshold(ThresholdRule),
    Log(LogMatch),
    Frequency(FrequencyRule),
    Absence(AbsenceRule),
    Sequence(SequenceRule),
    Fim(FimRule),
    Composite(CompositeRule),
}

/// A rule, checked and ready to evaluate.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub severity: Severity,
    pub lifecycle: Lifecycle,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub condition: Condition,
    /// The file it came from, for listings and errors.
    pub file: PathBuf,
}

/// The window of a rule whose aggregate is `last` and says none: only the newest sample counts.
const LAST_WINDOW: Duration = Duration::from_secs(0);

/// How long a log or frequency alert keeps firing after its last match, unless the rule says: a
/// log record is a moment, and its alert resolves when no other came for this long.
pub const EVENT_KEEP_FIRING_FOR: Duration = Duration::from_secs(300);

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
    let mut rules: Vec<Rule> = Vec::with_capacity(file.rule.len());
    for spec in file.rule {
        let at = Place {
            path,
            text,
            rule_start: spec.span().start,
        };
        let spec = spec.into_inner();
        let name = spec.name.get_ref();
        if let Err(why) = check_name(name) {
            return Err(at.error(spec.name.span().start, why));
        }
        if rules.iter().any(|r| &r.name == name) {
            return Err(at.error(
                spec.name.span().start,
                format!("a second rule named `{name}` in this file"),
            ));
        }
        let condition = match spec.kind {
            RuleKind::Threshold => Condition::Threshold(threshold(&spec, &at)?),
            RuleKind::Log => {
                at.only(&spec, &["source", "pattern", "fields"])?;
                Condition::Log(log_match(&spec, &at)?)
            }
            RuleKind::Frequency => Condition::Frequency(frequency(&spec, &at)?),
            RuleKind::Absence => Condition::Absence(absence(&spec, &at)?),
            RuleKind::Sequence => Condition::Sequence(sequence(&spec, &at)?),
            RuleKind::Fim => Condition::Fim(fim(&spec, &at)?),
            RuleKind::Composite => Condition::Composite(composite(&spec, &at)?),
        };
        for (key, template) in &spec.annotations {
            super::template::check(template.get_ref()).map_err(|why| {
                at.error(
                    template.span().start,
                    format!("rule `{name}`: annotation `{key}`: {why}"),
                )
            })?;
        }
        if let Some(url) = spec.annotations.get("runbook_url") {
            parse_http_uri(url.get_ref()).map_err(|why| {
                at.error(
                    url.span().start,
                    format!("rule `{name}`: runbook_url: {why}"),
                )
            })?;
        }
        let keep_firing_for = spec.keep_firing_for.unwrap_or(match spec.kind {
            RuleKind::Threshold | RuleKind::Absence | RuleKind::Composite => Duration::ZERO,
            RuleKind::Log | RuleKind::Frequency | RuleKind::Sequence | RuleKind::Fim => {
                EVENT_KEEP_FIRING_FOR
            }
        });
        rules.push(Rule {
            name: name.clone(),
            severity: spec.severity,
            lifecycle: Lifecycle {
                for_ns: duration_ns(spec.for_),
                keep_firing_for_ns: duration_ns(keep_firing_for),
            },
            labels: spec.labels,
            annotations: spec
                .annotations
                .into_iter()
                .map(|(k, v)| (k, v.into_inner()))
                .collect(),
            condition,
            file: path.to_owned(),
        });
    }
    Ok(rules)
}

/// Where in a file a rule is, for its errors.
struct Place<'a> {
    path: &'a Path,
    text: &'a str,
    rule_start: usize,
}

impl Place<'_> {
    fn error(&self, offset: usize, message: String) -> ConfigError {
        let (line, column) = line_column(self.text, offset);
        ConfigError::Parse {
            path: self.path.to_owned(),
            line,
            column,
            message,
        }
    }

    /// An error at the rule's table, for what has no place of its own (a missing key).
    fn rule_error(&self, spec: &RuleSpec, message: &str) -> ConfigError {
        self.error(
            self.rule_start,
            format!("rule `{}`: {message}", spec.name.get_ref()),
        )
    }

    /// Refuses the kind-specific keys of `spec` other than `allowed`, which its kind does not use.
    fn only(&self, spec: &RuleSpec, allowed: &[&str]) -> Result<(), ConfigError> {
        let given: [(&str, Option<usize>); 25] = [
            ("metric", spec.metric.as_ref().map(|v| v.span().start)),
            ("match", spec.matches.as_ref().map(|v| v.span().start)),
            ("aggregate", spec.aggregate.as_ref().map(|v| v.span().start)),
            ("window", spec.window.map(|_| self.rule_start)),
            ("op", spec.op.as_ref().map(|v| v.span().start)),
            ("value", spec.value.as_ref().map(|v| v.span().start)),
            ("target", spec.target.as_ref().map(|v| v.span().start)),
            (
                "min_samples",
                spec.min_samples.as_ref().map(|v| v.span().start),
            ),
            ("source", spec.source.as_ref().map(|v| v.span().start)),
            ("pattern", spec.pattern.as_ref().map(|v| v.span().start)),
            ("fields", spec.fields.as_ref().map(|v| v.span().start)),
            ("count", spec.count.as_ref().map(|v| v.span().start)),
            ("within", spec.within.map(|_| self.rule_start)),
            ("group_by", spec.group_by.as_ref().map(|v| v.span().start)),
            ("distinct", spec.distinct.as_ref().map(|v| v.span().start)),
            (
                "across_hosts",
                spec.across_hosts.as_ref().map(|v| v.span().start),
            ),
            ("after", spec.after.map(|_| self.rule_start)),
            ("first", spec.first.as_ref().map(|v| v.span().start)),
            ("then", spec.then.as_ref().map(|v| v.span().start)),
            ("key", spec.key.as_ref().map(|v| v.span().start)),
            ("paths", spec.paths.as_ref().map(|v| v.span().start)),
            ("changes", spec.changes.as_ref().map(|v| v.span().start)),
            ("all", spec.all.as_ref().map(|v| v.span().start)),
            ("any", spec.any.as_ref().map(|v| v.span().start)),
            ("none", spec.none.as_ref().map(|v| v.span().start)),
        ];
        let stray = given
            .iter()
            .find(|(key, at)| at.is_some() && !allowed.contains(key));
        match stray {
            Some((key, Some(offset))) => Err(self.error(
                *offset,
                format!(
                    "rule `{}`: `{key}` does not apply to a {} rule",
                    spec.name.get_ref(),
                    kind_name(spec.kind)
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn threshold(spec: &RuleSpec, at: &Place<'_>) -> Result<ThresholdRule, ConfigError> {
    at.only(
        spec,
        &[
            "metric",
            "match",
            "aggregate",
            "window",
            "op",
            "value",
            "target",
            "min_samples",
        ],
    )?;
    let name = spec.name.get_ref();
    let metric = spec
        .metric
        .as_ref()
        .ok_or_else(|| at.rule_error(spec, "a threshold rule needs `metric`"))?;
    if metric.get_ref().is_empty() {
        return Err(at.error(metric.span().start, "`metric` is empty".to_owned()));
    }
    let op = spec
        .op
        .as_ref()
        .ok_or_else(|| at.rule_error(spec, "a threshold rule needs `op`"))?;
    let value = spec
        .value
        .as_ref()
        .ok_or_else(|| at.rule_error(spec, "a threshold rule needs `value`"))?;
    if !value.get_ref().is_finite() {
        return Err(at.error(
            value.span().start,
            format!("`value` must be a finite number, not {}", value.get_ref()),
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
            let offset = spec
                .aggregate
                .as_ref()
                .map_or(at.rule_start, |a| a.span().start);
            return Err(at.error(
                offset,
                format!(
                    "rule `{name}`: aggregate `{}` needs a `window` longer than zero",
                    aggregate_name(aggregate)
                ),
            ));
        }
    };
    let target = match (aggregate, &spec.target) {
        (Aggregate::Forecast, Some(t)) if t.get_ref().is_finite() => Some(*t.get_ref()),
        (Aggregate::Forecast, Some(t)) => {
            return Err(at.error(
                t.span().start,
                format!("rule `{name}`: `target` must be a finite number"),
            ));
        }
        (Aggregate::Forecast, None) => {
            return Err(at.rule_error(spec, "aggregate `forecast` needs a `target`"));
        }
        (_, Some(t)) => {
            return Err(at.error(
                t.span().start,
                format!(
                    "rule `{name}`: `target` applies to aggregate `forecast` only, not `{}`",
                    aggregate_name(aggregate)
                ),
            ));
        }
        (_, None) => None,
    };
    let min_samples = spec
        .min_samples
        .as_ref()
        .map_or(0, |m| *m.get_ref() as usize)
        .max(aggregate.least_samples());
    Ok(ThresholdRule {
        metric: metric.get_ref().clone(),
        matches: spec
            .matches
            .as_ref()
            .map(|m| m.get_ref().clone())
            .unwrap_or_default(),
        aggregate,
        window_ns: duration_ns(window),
        op: *op.get_ref(),
        value: *value.get_ref(),
        target,
        min_samples,
    })
}

fn log_match(spec: &RuleSpec, at: &Place<'_>) -> Result<LogMatch, ConfigError> {
    let pattern = match &spec.pattern {
        None => None,
        Some(p) => Some(compile(spec, at, p)?),
    };
    let matcher = LogMatch {
        source: spec.source.as_ref().map(|s| s.get_ref().clone()),
        pattern,
        fields: spec
            .fields
            .as_ref()
            .map(|f| f.get_ref().clone())
            .unwrap_or_default(),
    };
    if matcher.source.is_none() && matcher.pattern.is_none() && matcher.fields.is_empty() {
        return Err(at.rule_error(
            spec,
            "a log rule needs `source`, `pattern` or `fields` (it would match every record)",
        ));
    }
    Ok(matcher)
}

fn frequency(spec: &RuleSpec, at: &Place<'_>) -> Result<FrequencyRule, ConfigError> {
    at.only(
        spec,
        &[
            "source",
            "pattern",
            "fields",
            "count",
            "within",
            "group_by",
            "distinct",
            "across_hosts",
        ],
    )?;
    let matcher = log_match(spec, at)?;
    let count = spec
        .count
        .as_ref()
        .ok_or_else(|| at.rule_error(spec, "a frequency rule needs `count`"))?;
    if *count.get_ref() == 0 {
        return Err(at.error(count.span().start, "`count` must be at least 1".to_owned()));
    }
    let within = spec
        .within
        .filter(|w| !w.is_zero())
        .ok_or_else(|| at.rule_error(spec, "a frequency rule needs `within`, longer than zero"))?;
    let group_by = spec
        .group_by
        .as_ref()
        .map(|g| g.get_ref().clone())
        .unwrap_or_default();
    Ok(FrequencyRule {
        matcher,
        count: *count.get_ref(),
        within_ns: duration_ns(within),
        group_by,
        distinct: spec.distinct.as_ref().map(|d| d.get_ref().clone()),
        across_hosts: spec.across_hosts.as_ref().is_some_and(|a| *a.get_ref()),
    })
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
    errors.extend(unknown_names(&rules));
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

/// The composite rules that name a rule the set does not have, or another composite rule.
fn unknown_names(rules: &[Rule]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for rule in rules {
        let Condition::Composite(c) = &rule.condition else {
            continue;
        };
        for name in c.all.iter().chain(&c.any).chain(&c.none) {
            let why = match rules.iter().find(|r| &r.name == name) {
                None => "no rule has that name",
                Some(r) if matches!(r.condition, Condition::Composite(_)) => {
                    "it is a composite rule itself, and composites combine other kinds only"
                }
                Some(_) => continue,
            };
            errors.push(ConfigError::invalid(
                &rule.file,
                format!("rule `{}` names `{name}`: {why}", rule.name),
            ));
        }
    }
    errors
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

fn kind_name(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::Threshold => "threshold",
        RuleKind::Log => "log",
        RuleKind::Frequency => "frequency",
        RuleKind::Absence => "absence",
        RuleKind::Sequence => "sequence",
        RuleKind::Fim => "fim",
        RuleKind::Composite => "composite",
    }
}

fn composite(spec: &RuleSpec, at: &Place<'_>) -> Result<CompositeRule, ConfigError> {
    at.only(spec, &["all", "any", "none"])?;
    let names = |given: &Option<Spanned<Vec<String>>>| -> Result<Vec<String>, ConfigError> {
        let Some(given) = given else {
            return Ok(Vec::new());
        };
        for name in given.get_ref() {
            if name == spec.name.get_ref() {
                return Err(at.error(
                    given.span().start,
                    format!("rule `{name}` cannot depend on itself"),
                ));
            }
            check_name(name).map_err(|why| at.error(given.span().start, why))?;
        }
        Ok(given.get_ref().clone())
    };
    let rule = CompositeRule {
        all: names(&spec.all)?,
        any: names(&spec.any)?,
        none: names(&spec.none)?,
    };
    if rule.all.is_empty() && rule.any.is_empty() {
        return Err(at.rule_error(
            spec,
            "a composite rule needs `all` or `any` (with `none` alone it would hold everywhere)",
        ));
    }
    Ok(rule)
}

fn sequence(spec: &RuleSpec, at: &Place<'_>) -> Result<SequenceRule, ConfigError> {
    at.only(spec, &["first", "then", "key", "count", "within"])?;
    let side = |which: &str, given: &Option<Spanned<MatchSpec>>| {
        let given = given
            .as_ref()
            .ok_or_else(|| at.rule_error(spec, &format!("a sequence rule needs `{which}`")))?;
        let m = given.get_ref();
        let pattern = match &m.pattern {
            None => None,
            Some(p) => Some(compile(spec, at, p)?),
        };
        let matcher = LogMatch {
            source: m.source.clone(),
            pattern,
            fields: m.fields.clone(),
        };
        if matcher.source.is_none() && matcher.pattern.is_none() && matcher.fields.is_empty() {
            return Err(at.error(
                given.span().start,
                format!(
                    "rule `{}`: `{which}` needs `source`, `pattern` or `fields`",
                    spec.name.get_ref()
                ),
            ));
        }
        Ok(matcher)
    };
    let first = side("first", &spec.first)?;
    let then = side("then", &spec.then)?;
    let within = spec
        .within
        .filter(|w| !w.is_zero())
        .ok_or_else(|| at.rule_error(spec, "a sequence rule needs `within`, longer than zero"))?;
    let count = match &spec.count {
        Some(c) if *c.get_ref() == 0 => {
            return Err(at.error(c.span().start, "`count` must be at least 1".to_owned()));
        }
        Some(c) => *c.get_ref(),
        None => 1,
    };
    Ok(SequenceRule {
        first,
        then,
        key: spec
            .key
            .as_ref()
            .map(|k| k.get_ref().clone())
            .unwrap_or_default(),
        count,
        within_ns: duration_ns(within),
    })
}

fn fim(spec: &RuleSpec, at: &Place<'_>) -> Result<FimRule, ConfigError> {
    at.only(spec, &["paths", "changes"])?;
    let paths = spec
        .paths
        .as_ref()
        .filter(|p| !p.get_ref().is_empty())
        .ok_or_else(|| at.rule_error(spec, "a fim rule needs `paths`, one glob at least"))?;
    let mut set = globset::GlobSetBuilder::new();
    for glob in paths.get_ref() {
        let glob = globset::GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| {
                at.error(
                    paths.span().start,
                    format!("rule `{}`: `{glob}`: {e}", spec.name.get_ref()),
                )
            })?;
        set.add(glob);
    }
    let paths = set
        .build()
        .map_err(|e| at.error(paths.span().start, e.to_string()))?;
    let mut changes = Vec::new();
    for change in spec.changes.iter().flat_map(|c| c.get_ref()) {
        let parsed =
            crate::store::sqlite::fim_change_from_name(change.get_ref()).ok_or_else(|| {
                at.error(
                    change.span().start,
                    format!(
                        "rule `{}`: unknown change `{}`; expected created, modified, \
                     metadata_changed, deleted, moved or type_changed",
                        spec.name.get_ref(),
                        change.get_ref()
                    ),
                )
            })?;
        changes.push(parsed);
    }
    Ok(FimRule { paths, changes })
}

fn compile(
    spec: &RuleSpec,
    at: &Place<'_>,
    pattern: &Spanned<String>,
) -> Result<Regex, ConfigError> {
    Regex::new(pattern.get_ref()).map_err(|e| {
        at.error(
            pattern.span().start,
            format!(
                "rule `{}`: `pattern` is not a regular expression: {e}",
                spec.name.get_ref()
            ),
        )
    })
}

fn absence(spec: &RuleSpec, at: &Place<'_>) -> Result<AbsenceRule, ConfigError> {
    at.only(spec, &["after", "metric", "source"])?;
    let after = spec
        .after
        .filter(|a| !a.is_zero())
        .ok_or_else(|| at.rule_error(spec, "an absence rule needs `after`, longer than zero"))?;
    let silent = match (&spec.metric, &spec.source) {
        (None, None) => Silent::Host,
        (Some(metric), None) => Silent::Metric(metric.get_ref().clone()),
        (None, Some(source)) => Silent::Source(source.get_ref().clone()),
        (Some(_), Some(source)) => {
            return Err(at.error(
                source.span().start,
                format!(
                    "rule `{}`: an absence rule waits for a `metric` or a `source`, not both",
                    spec.name.get_ref()
                ),
            ));
        }
    };
    Ok(AbsenceRule {
        silent,
        after_ns: duration_ns(after),
    })
}

fn aggregate_name(aggregate: Aggregate) -> &'static str {
    match aggregate {
        Aggregate::Last => "last",
        Aggregate::Avg => "avg",
        Aggregate::Min => "min",
        Aggregate::Max => "max",
        Aggregate::Increase => "increase",
        Aggregate::Rate => "rate",
        Aggregate::Delta => "delta",
        Aggregate::Slope => "slope",
        Aggregate::Forecast => "forecast",
        Aggregate::Zscore => "zscore",
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

    /// Each text is refused with an error of the test file that holds `place` (`:line:column:`)
    /// and `what`.
    fn refused(cases: &[(String, &str, &str)]) {
        for (text, place, what) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                err.starts_with("rules.d/test.toml:") && err.contains(place) && err.contains(what),
                "{place} {what}: {err}"
            );
        }
    }

    fn threshold_of(rule: &Rule) -> &ThresholdRule {
        match &rule.condition {
            Condition::Threshold(t) => t,
            other => panic!("{other:?}"),
        }
    }

    /// SSH brute force, as the default rule pack says it.
    pub(crate) const BRUTE_FORCE: &str = r#"
[[rule]]
name = "ssh-brute-force"
kind = "frequency"
severity = "high"
source = "journal"
pattern = 'Failed password for (invalid user )?(?P<user>\S+) from (?P<address>\S+)'
fields = { app = "sshd" }
count = 8
within = "120s"
group_by = ["address"]
"#;

    #[test]
    fn log_and_frequency_rules_load_and_resolve_after_five_quiet_minutes_by_default() {
        let rules = parse(BRUTE_FORCE).unwrap();
        let Condition::Frequency(f) = &rules[0].condition else {
            panic!("{:?}", rules[0].condition);
        };
        assert_eq!((f.count, f.within_ns), (8, 120_000_000_000));
        assert_eq!(f.group_by, ["address"]);
        assert!(!f.across_hosts && f.distinct.is_none());
        assert_eq!(f.matcher.source.as_deref(), Some("journal"));
        assert_eq!(f.matcher.fields["app"], "sshd");
        assert!(
            f.matcher
                .pattern
                .as_ref()
                .unwrap()
                .is_match("Failed password for invalid user admin from 203.0.113.7 port 4242 ssh2")
        );
        assert_eq!(
            rules[0].lifecycle.keep_firing_for_ns,
            duration_ns(EVENT_KEEP_FIRING_FOR)
        );
        let log = parse(
            "[[rule]]\nname = \"passwd\"\nkind = \"log\"\nseverity = \"critical\"\n\
             pattern = \"passwd changed\"\nkeep_firing_for = \"1m\"\n",
        )
        .unwrap();
        assert!(matches!(log[0].condition, Condition::Log(_)));
        assert_eq!(log[0].lifecycle.keep_firing_for_ns, 60_000_000_000);
    }

    /// A filesystem full within a day at the rate of the last six hours.
    pub(crate) const FULL_SOON: &str = r#"
[[rule]]
name = "filesystem-full-soon"
kind = "threshold"
severity = "high"
metric = "system.filesystem.utilization"
aggregate = "forecast"
target = 1.0
window = "6h"
min_samples = 6
op = "<"
value = 86400
"#;

    #[test]
    fn a_forecast_needs_its_target_and_only_a_forecast_takes_one() {
        let rules = parse(FULL_SOON).unwrap();
        let t = threshold_of(&rules[0]);
        assert_eq!(
            (t.aggregate, t.target, t.min_samples),
            (Aggregate::Forecast, Some(1.0), 6)
        );
        // Fewer than the aggregate needs is raised to it.
        let z = parse(
            &CPU.replace("\"avg\"", "\"zscore\"")
                .replace("value = 0.9", "value = 3\nmin_samples = 2"),
        )
        .unwrap();
        assert_eq!(threshold_of(&z[0]).min_samples, 10);
        // FULL_SOON's lines: 2 `[[rule]]`, 7 aggregate, 8 target.
        let cases = [
            (
                FULL_SOON.replace("target = 1.0\n", ""),
                ":2:1:",
                "needs a `target`",
            ),
            (
                FULL_SOON.replace("\"forecast\"", "\"slope\""),
                ":8:10:",
                "applies to aggregate `forecast` only",
            ),
            (
                FULL_SOON.replace("target = 1.0", "target = inf"),
                ":8:10:",
                "finite",
            ),
        ];
        refused(&cases);
    }

    #[test]
    fn a_key_of_another_kind_or_a_missing_one_is_refused_where_it_is() {
        let cases = [
            // BRUTE_FORCE's lines: 2 `[[rule]]`, 3 name, 4 kind, 6 source, 7 pattern, 9 count.
            (BRUTE_FORCE.replace("count = 8", "value = 8"), ":9:9:", "`value` does not apply to a frequency rule"),
            (BRUTE_FORCE.replace("count = 8\n", ""), ":2:1:", "needs `count`"),
            (BRUTE_FORCE.replace("count = 8", "count = 0"), ":9:9:", "at least 1"),
            (BRUTE_FORCE.replace("within = \"120s\"\n", ""), ":2:1:", "needs `within`"),
            (BRUTE_FORCE.replace("(?P<user>", "(?P<user"), ":7:11:", "not a regular expression"),
            (
                BRUTE_FORCE
                    .replace("source = \"journal\"\n", "")
                    .replace("pattern = 'Failed password for (invalid user )?(?P<user>\\S+) from (?P<address>\\S+)'\n", "")
                    .replace("fields = { app = \"sshd\" }\n", ""),
                ":2:1:",
                "would match every record",
            ),
            (CPU.replace("metric = ", "source = "), ":6:10:", "`source` does not apply to a threshold rule"),
            (CPU.replace("op = \">\"\n", ""), ":2:1:", "needs `op`"),
        ];
        refused(&cases);
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
            threshold_of(r),
            &ThresholdRule {
                metric: "system.cpu.utilization".to_owned(),
                matches: [("state".to_owned(), "user".to_owned())].into(),
                aggregate: Aggregate::Avg,
                window_ns: 300_000_000_000,
                op: Op::Gt,
                value: 0.9,
                target: None,
                min_samples: 1,
            }
        );
        // The least a rule says: the newest sample against a value, firing at once.
        let least = parse(
            "[[rule]]\nname = \"load\"\nkind = \"threshold\"\nseverity = \"low\"\n\
             metric = \"system.cpu.load_average.1m\"\nop = \">=\"\nvalue = 8\n",
        )
        .unwrap();
        assert_eq!(threshold_of(&least[0]).aggregate, Aggregate::Last);
        assert_eq!(threshold_of(&least[0]).window_ns, 0);
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
                CPU.replace("\"threshold\"", "\"anomaly\""),
                ":4:8:",
                "unknown variant `anomaly`",
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
        refused(&cases);
    }

    /// The errors of a directory that is refused.
    fn refused_dir(dir: &Path) -> Vec<String> {
        load_dir(dir)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
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

        // A composite may name rules of other files, not unknown ones or composites.
        write(
            "15-both.toml",
            "[[rule]]\nname = \"both-busy\"\nkind = \"composite\"\nseverity = \"high\"\n\
             all = [\"cpu-busy\", \"mem-busy\"]\n",
        );
        assert_eq!(load_dir(dir.path()).unwrap().len(), 3);
        write(
            "16-bad-composites.toml",
            "[[rule]]\nname = \"ghost\"\nkind = \"composite\"\nseverity = \"high\"\n\
             any = [\"nobody\", \"both-busy\"]\n",
        );
        let errors = refused_dir(dir.path());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("16-bad-composites.toml") && errors[0].contains("`nobody`: no rule")
        );
        assert!(errors[1].contains("`both-busy`: it is a composite rule itself"));
        std::fs::remove_file(dir.path().join("16-bad-composites.toml")).unwrap();

        // One bad file, and one name used twice: nothing loads, and both are said.
        write("30-bad.toml", "[[rule]]\nname = 1\n");
        write("40-again.toml", CPU);
        let errors = refused_dir(dir.path());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("30-bad.toml:2:8"), "{errors:?}");
        assert!(
            errors[1].contains("40-again.toml") && errors[1].contains("10-cpu.toml"),
            "{errors:?}"
        );
    }
}
