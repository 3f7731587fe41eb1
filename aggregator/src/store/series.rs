//! Metric queries, free of any backend: which series a query selects ([`Matcher`]), and how a
//! series' points become one value per step ([`bucket`]) and series become one ([`combine`]).
//!
//! A query names one metric, optionally one agent, and attribute matchers; it covers a time range
//! (the agents' clocks) cut into steps. Within a step, each series' points are reduced by an
//! [`Aggregate`], or, for counters, by a [`Function`]: `increase` adds the rises between
//! consecutive points, counting a fall as a restart from zero (the counter was reset, so what
//! it reads is all it gained since), and `rate` is that increase per second of the step. A step
//! with no point (or, for a function, no pair of points) has no value. With `combine`, the
//! values of all selected series in each step are reduced to one series (the fleet's average CPU).

use std::ops::Range;

use outpost_common::event::{Attributes, MetricKind};
use serde::Serialize;

/// Steps one query may ask for at most (as many as Prometheus allows).
pub const MAX_STEPS: i64 = 11_000;
/// Series one query may select at most.
pub const MAX_SERIES: usize = 10_000;

/// How the points of one series within one step become one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    #[default]
    Avg,
    Min,
    Max,
    Last,
    Sum,
    Count,
}

impl Aggregate {
    pub const NAMES: &'static str = "avg, min, max, last, sum or count";

    pub fn parse(s: &str) -> Option<Aggregate> {
        Some(match s {
            "avg" => Aggregate::Avg,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "last" => Aggregate::Last,
            "sum" => Aggregate::Sum,
            "count" => Aggregate::Count,
            _ => return None,
        })
    }
}

/// What a counter's points within one step become instead of an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Increase per second.
    Rate,
    /// Increase over the step.
    Increase,
}

impl Function {
    pub fn parse(s: &str) -> Option<Function> {
        match s {
            "rate" => Some(Function::Rate),
            "increase" => Some(Function::Increase),
            _ => None,
        }
    }
}

/// How the values of several series in one step become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Combine {
    Avg,
    Min,
    Max,
    Sum,
}

impl Combine {
    pub fn parse(s: &str) -> Option<Combine> {
        match s {
            "avg" => Some(Combine::Avg),
            "min" => Some(Combine::Min),
            "max" => Some(Combine::Max),
            "sum" => Some(Combine::Sum),
            _ => None,
        }
    }
}

/// How a [`Matcher`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// A condition on one attribute: `key=value`, `key!=value`, `key=~regex`, `key!~regex`. An
/// attribute a series lacks reads as empty, so `cpu=` selects the series without `cpu` (the host
/// totals rather than each core). Regular expressions match the whole value.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub key: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<regex::Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        (&self.key, self.op, &self.value) == (&other.key, other.op, &other.value)
    }
}

impl Matcher {
    /// Parses `key=value`, `key!=value`, `key=~regex` or `key!~regex`.
    pub fn parse(text: &str) -> Result<Matcher, String> {
        let at = text
            .find(['=', '!'])
            .filter(|&i| i > 0)
            .ok_or_else(|| format!("`{text}` is not key=value, key!=value, key=~re or key!~re"))?;
        let (key, rest) = text.split_at(at);
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (MatchOp::Regex, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (MatchOp::Equal, v)
        } else {
            return Err(format!(
                "`{text}` is not key=value, key!=value, key=~re or key!~re"
            ));
        };
        Matcher::new(key, op, value).map_err(|e| format!("{e} (in `{text}`)"))
    }

    /// A matcher of `key`; a regular expression is anchored at both ends.
    pub fn new(key: &str, op: MatchOp, value: &str) -> Result<Matcher, String> {
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("`{value}` is not a regular expression: {e}"))?,
            ),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Matcher {
            key: key.to_owned(),
            op,
            value: value.to_owned(),
            regex,
        })
    }

    pub fn matches(&self, attributes: &Attributes) -> bool {
        let found = attributes
            .iter()
            .find(|(k, _)| *k == self.key)
            .map_or("", |(_, v)| v.as_str());
        self.matches_value(found)
    }

    /// Whether the attribute's value (empty when there is none) satisfies it.
    pub fn matches_value(&self, found: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => found == self.value,
            (MatchOp::NotEqual, _) => found != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(found),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(found),
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }
}

/// A metric query; [`MetricQuery::check`] before running it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricQuery {
    pub name: String,
    pub agent_id: Option<String>,
    pub matchers: Vec<Matcher>,
    /// The agents' time, nanoseconds since the epoch.
    pub range: Range<i64>,
    pub step_ns: i64,
    pub aggregate: Aggregate,
    pub function: Option<Function>,
    pub combine: Option<Combine>,
}

/// What is wrong with a query, and which of its parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    /// The part: `name`, `range`, `step`, `function`, `match`, … (the API's parameter names).
    pub part: &'static str,
    pub message: String,
}

impl QueryError {
    pub fn new(part: &'static str, message: impl Into<String>) -> Self {
        QueryError {
            part,
            message: message.into(),
        }
    }
}

impl MetricQuery {
    /// Every series of `name` over `range`, averaged per step of `step_ns`.
    pub fn new(name: &str, range: Range<i64>, step_ns: i64) -> MetricQuery {
        MetricQuery {
            name: name.to_owned(),
            agent_id: None,
            matchers: Vec::new(),
            range,
            step_ns,
            aggregate: Aggregate::Avg,
            function: None,
            combine: None,
        }
    }

    /// Checks what can be checked before reading: a name, a range that does not end before it
    /// starts, a step above zero, and at most [`MAX_STEPS`] steps.
    pub fn check(&self) -> Result<(), QueryError> {
        if self.name.is_empty() {
            return Err(QueryError::new("name", "a metric name is required"));
        }
        if self.range.end < self.range.start {
            return Err(QueryError::new("range", "the range ends before it starts"));
        }
        if self.step_ns <= 0 {
            return Err(QueryError::new("step", "the step must be above zero"));
        }
        let steps = self.steps();
        if steps > MAX_STEPS {
            return Err(QueryError::new(
                "step",
                format!(
                    "{steps} steps asked; at most {MAX_STEPS}: widen the step or narrow the range"
                ),
            ));
        }
        Ok(())
    }

    /// How many steps the range holds (the last may be cut short by the range's end).
    pub fn steps(&self) -> i64 {
        let span = i128::from(self.range.end) - i128::from(self.range.start);
        let steps = (span + i128::from(self.step_ns) - 1) / i128::from(self.step_ns.max(1));
        i64::try_from(steps).unwrap_or(i64::MAX)
    }

    /// Checks the query against a selected series' kind: functions are for counters.
    pub fn check_kind(&self, kind: MetricKind) -> Result<(), QueryError> {
        match (self.function, kind) {
            (Some(_), MetricKind::Gauge) => Err(QueryError::new(
                "function",
                format!(
                    "rate and increase are for counters; `{}` is a gauge (use an aggregate)",
                    self.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Where a series' points must be read from: one step before the range for functions, so
    /// the first step has the point before it.
    pub fn read_range(&self) -> Range<i64> {
        let start = match self.function {
            Some(_) => self.range.start.saturating_sub(self.step_ns),
            None => self.range.start,
        };
        start..self.range.end
    }

    /// The start of the step holding `time_ns` (which must lie in the range).
    fn step_of(&self, time_ns: i64) -> (usize, i64) {
        let index = (i128::from(time_ns) - i128::from(self.range.start)) / i128::from(self.step_ns);
        let start = i128::from(self.range.start) + index * i128::from(self.step_ns);
        (index as usize, start as i64)
    }
}

/// One series a query selected.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SeriesInfo {
    pub agent_id: String,
    pub name: String,
    pub unit: String,
    #[schema(value_type = String)]
    #[serde(serialize_with = "kind_name")]
    pub kind: MetricKind,
    /// In the agent's order.
    #[schema(value_type = Vec<Vec<String>>)]
    pub attributes: Attributes,
}

fn kind_name<S: serde::Serializer>(k: &MetricKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match k {
        MetricKind::Gauge => "gauge",
        MetricKind::Counter => "counter",
    })
}

/// One series of an answer: the series and its step values, or, with `combine`, the values of
/// all selected series together.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QueriedSeries {
    /// Absent when the query combined every selected series into this one.
    pub series: Option<SeriesInfo>,
    /// `[time_ns, value]`, one pair per step with a value, oldest first; each value covers
    /// `time_ns` up to the next step.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub points: Vec<(i64, f64)>,
}

/// What a metric query found.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MetricAnswer {
    pub step_ns: i64,
    /// How many series the query selected.
    pub selected: usize,
    pub series: Vec<QueriedSeries>,
}

/// Why a metric query has no answer: the query (the caller's fault) or the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetricQueryError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A series and every point of it: time and value, by time.
pub type SeriesPoints = (SeriesInfo, Vec<(i64, f64)>);

/// Running figures of one step.
#[derive(Debug, Clone, Copy)]
struct Acc {
    sum: f64,
    count: u64,
    min: f64,
    max: f64,
    last: f64,
}

impl Acc {
    fn new(v: f64) -> Self {
        Acc {
            sum: v,
            count: 1,
            min: v,
            max: v,
            last: v,
        }
    }

    fn add(&mut self, v: f64) {
        self.sum += v;
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
    }

    fn value(&self, a: Aggregate) -> f64 {
        match a {
            Aggregate::Avg => self.sum / self.count as f64,
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::Last => self.last,
            Aggregate::Sum => self.sum,
            Aggregate::Count => self.count as f64,
        }
    }
}

/// One value per step of `query` from one series' `points` (time, value), sorted by time; points
/// before the range serve only as the predecessor for a function. Steps without a value are left
/// out; each value is reported at its step's start. Values that are not finite are skipped.
pub fn bucket(points: &[(i64, f64)], query: &MetricQuery) -> Vec<(i64, f64)> {
    let mut steps: Vec<Option<(i64, Acc)>> = Vec::new();
    let mut put = |time_ns: i64, v: f64| {
        let (index, start) = query.step_of(time_ns);
        if steps.len() <= index {
            steps.resize(index + 1, None);
        }
        match &mut steps[index] {
            Some((_, acc)) => acc.add(v),
            slot @ None => *slot = Some((start, Acc::new(v))),
        }
    };
    let mut previous: Option<f64> = None;
    for &(time_ns, v) in points {
        if !v.is_finite() || time_ns >= query.range.end {
            continue;
        }
        let inside = time_ns >= query.range.start;
        match query.function {
            None if inside => put(time_ns, v),
            None => {}
            Some(_) => {
                if let (Some(before), true) = (previous, inside) {
                    // A fall is a reset: the counter restarted from zero and gained `v` since.
                    put(time_ns, if v >= before { v - before } else { v });
                }
                previous = Some(v);
            }
        }
    }
    let seconds = query.step_ns as f64 / 1e9;
    steps
        .into_iter()
        .flatten()
        .map(|(start, acc)| {
            let v = match query.function {
                None => acc.value(query.aggregate),
                Some(Function::Increase) => acc.sum,
                Some(Function::Rate) => acc.sum / seconds,
            };
            (start, v)
        })
        .collect()
}

/// The step values of several series reduced to one per step, in time order.
pub fn combine(series: &[Vec<(i64, f64)>], how: Combine) -> Vec<(i64, f64)> {
    let mut by_step: std::collections::BTreeMap<i64, Acc> = std::collections::BTreeMap::new();
    for points in series {
        for &(t, v) in points {
            by_step
                .entry(t)
                .and_modify(|acc| acc.add(v))
                .or_insert_with(|| Acc::new(v));
        }
    }
    let aggregate = match how {
        Combine::Avg => Aggregate::Avg,
        Combine::Min => Aggregate::Min,
        Combine::Max => Aggregate::Max,
        Combine::Sum => Aggregate::Sum,
    };
    by_step
        .into_iter()
        .map(|(t, acc)| (t, acc.value(aggregate)))
        .collect()
}

/// The answer to `query` from its selected series, each with its points bucketed
/// ([`bucket`]): the series one by one, or combined into one ([`MetricQuery::combine`]).
pub fn answer(query: &MetricQuery, answered: Vec<(SeriesInfo, Vec<(i64, f64)>)>) -> MetricAnswer {
    let selected = answered.len();
    let series = match query.combine {
        None => answered
            .into_iter()
            .map(|(info, points)| QueriedSeries {
                series: Some(info),
                points,
            })
            .collect(),
        Some(how) => {
            let all: Vec<_> = answered.into_iter().map(|(_, p)| p).collect();
            vec![QueriedSeries {
                series: None,
                points: combine(&all, how),
            }]
        }
    };
    MetricAnswer {
        step_ns: query.step_ns,
        selected,
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn query(range: Range<i64>, step: i64) -> MetricQuery {
        MetricQuery::new("m", range, step)
    }

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn matchers_parse_and_select_with_absent_attributes_read_as_empty() {
        let total = attrs(&[("state", "idle")]);
        let core = attrs(&[("cpu", "3"), ("state", "idle")]);
        let m = |t: &str| Matcher::parse(t).unwrap();
        assert!(m("state=idle").matches(&total) && m("state=idle").matches(&core));
        assert!(m("cpu=").matches(&total) && !m("cpu=").matches(&core));
        assert!(m("cpu!=").matches(&core) && !m("cpu!=").matches(&total));
        assert!(m("state=~id.*").matches(&total) && !m("state=~d").matches(&total));
        assert!(m("state!~user|system").matches(&total));
        assert!(!m("state!~idle").matches(&total));
        assert!(m("a=b=c").value == "b=c");
        for bad in ["", "=x", "state", "!x", "s!x", "s=~("] {
            let err = Matcher::parse(bad).unwrap_err();
            assert!(
                err.contains(&format!("`{bad}`")) || err.contains("regular"),
                "{err}"
            );
        }
    }

    #[test]
    fn queries_are_checked_before_reading() {
        assert!(query(0..10 * S, S).check().is_ok());
        #[allow(clippy::reversed_empty_ranges)] // the point of the check
        let backwards = 10..0;
        assert_eq!(query(backwards, S).check().unwrap_err().part, "range");
        assert_eq!(query(0..10, 0).check().unwrap_err().part, "step");
        let err = query(0..20_000 * S, S).check().unwrap_err();
        assert_eq!(err.part, "step");
        assert!(err.message.contains("20000 steps"), "{err}");
        assert!(query(i64::MIN..i64::MAX, i64::MAX).check().is_ok());
        let mut q = query(0..S, S);
        q.name.clear();
        assert_eq!(q.check().unwrap_err().part, "name");
        q = query(0..S, S);
        q.function = Some(Function::Rate);
        assert_eq!(
            q.check_kind(MetricKind::Gauge).unwrap_err().part,
            "function"
        );
        assert!(q.check_kind(MetricKind::Counter).is_ok());
        assert_eq!(q.read_range(), -S..S);
        assert_eq!(query(0..7 * S, 2 * S).steps(), 4);
    }

    #[test]
    fn points_fold_into_steps_by_each_aggregate_leaving_empty_steps_out() {
        let points = [
            (0, 1.0),
            (S, 3.0),
            (2 * S, 2.0),
            (5 * S, 10.0),
            (6 * S, f64::NAN),
            (9 * S, 7.0),
            (10 * S, 99.0),
        ];
        let mut q = query(0..10 * S, 3 * S);
        for (aggregate, expected) in [
            (Aggregate::Avg, [2.0, 10.0, 7.0]),
            (Aggregate::Min, [1.0, 10.0, 7.0]),
            (Aggregate::Max, [3.0, 10.0, 7.0]),
            (Aggregate::Last, [2.0, 10.0, 7.0]),
            (Aggregate::Sum, [6.0, 10.0, 7.0]),
            (Aggregate::Count, [3.0, 1.0, 1.0]),
        ] {
            q.aggregate = aggregate;
            let got = bucket(&points, &q);
            assert_eq!(
                got,
                [(0, expected[0]), (3 * S, expected[1]), (9 * S, expected[2])],
                "{aggregate:?}"
            );
        }
        // A range that starts mid-way reports at its own step boundaries.
        let q = query(S..4 * S, 2 * S);
        assert_eq!(bucket(&points, &q), [(S, 2.5)]);
    }

    #[test]
    fn rate_and_increase_count_a_fall_as_a_reset_and_use_the_point_before_the_range() {
        // A counter: 100 before the range, then rising, reset to 5, rising again.
        let points = [
            (-S, 100.0),
            (0, 110.0),
            (5 * S, 130.0),
            (10 * S, 5.0),
            (15 * S, 25.0),
        ];
        let mut q = query(0..20 * S, 10 * S);
        q.function = Some(Function::Increase);
        assert_eq!(bucket(&points, &q), [(0, 30.0), (10 * S, 25.0)]);
        q.function = Some(Function::Rate);
        assert_eq!(bucket(&points, &q), [(0, 3.0), (10 * S, 2.5)]);
        // Without a point before it, the first step only counts from its first point.
        q.function = Some(Function::Increase);
        assert_eq!(bucket(&points[1..], &q), [(0, 20.0), (10 * S, 25.0)]);
        // A single point makes no increase.
        assert!(bucket(&points[2..3], &q).is_empty());
    }

    #[test]
    fn series_combine_step_by_step() {
        let a = vec![(0, 1.0), (10, 4.0)];
        let b = vec![(0, 3.0), (20, 5.0)];
        let both = [a, b];
        assert_eq!(
            combine(&both, Combine::Avg),
            [(0, 2.0), (10, 4.0), (20, 5.0)]
        );
        assert_eq!(
            combine(&both, Combine::Sum),
            [(0, 4.0), (10, 4.0), (20, 5.0)]
        );
        assert_eq!(
            combine(&both, Combine::Min),
            [(0, 1.0), (10, 4.0), (20, 5.0)]
        );
        assert_eq!(
            combine(&both, Combine::Max),
            [(0, 3.0), (10, 4.0), (20, 5.0)]
        );
        assert!(combine(&[], Combine::Avg).is_empty());
    }
}
