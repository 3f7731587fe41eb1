//! `/api/v1/metrics/query`: a metric's series, one value per step ([`crate::store::series`]).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{Api, ApiError, Caller};
use crate::store::series::{
    Aggregate, Combine, Function, MAX_STEPS, Matcher, MetricAnswer, MetricQuery, MetricQueryError,
};
use crate::tokens::Role;

/// Steps when the request names neither `step` nor `points`.
const DEFAULT_POINTS: i64 = 300;
/// The range when the request names no start: the hour before its end.
const DEFAULT_RANGE_NS: i64 = 3_600_000_000_000;
/// Matchers one query may carry.
const MAX_MATCHERS: usize = 32;

/// An attribute matcher: `key=value`, `key!=value`, `key=~regex` or `key!~regex`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(pattern = "^[^=!]+(=~|!~|!=|=).*$")]
#[allow(dead_code)] // describes the parameter for the OpenAPI document
pub struct MatcherText(String);

/// The parameters of a metric query (read from the raw query string, so that `match` can repeat).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes the parameters for the OpenAPI document; parsed by `parse`
pub struct MetricParams {
    /// The metric, e.g. `system.cpu.utilization`.
    #[param(min_length = 1, max_length = 256)]
    name: String,
    /// Only this agent's series.
    agent_id: Option<String>,
    /// Attribute matchers, repeatable: `key=value`, `key!=value`, `key=~regex`, `key!~regex`
    /// (regular expressions match the whole value; an attribute a series lacks reads as empty,
    /// so `cpu=` selects series without `cpu`). At most 32.
    #[serde(rename = "match")]
    #[param(rename = "match", style = Form, explode, inline, max_items = 32)]
    matchers: Option<Vec<MatcherText>>,
    /// Start of the range, nanoseconds since the epoch on the agents' clocks (an hour before its
    /// end).
    since_ns: Option<i64>,
    /// End of the range, exclusive (now). A range that ends before it starts is empty.
    until_ns: Option<i64>,
    /// The least length of a step: a number and a unit (`10s`, `5m`, `1h`). Widened when the
    /// range would otherwise hold more than `points` steps; the answer's `step_ns` is the step
    /// used.
    #[param(pattern = "^[1-9][0-9]{0,8}(ns|us|ms|s|m|h|d)$")]
    step: Option<String>,
    /// The most steps to cut the range into, 1 to 11000 (300 without `step`, 11000 with it).
    #[param(minimum = 1, maximum = 11000)]
    points: Option<u32>,
    /// How a series' points within a step become one value (avg).
    #[param(pattern = "^(avg|min|max|last|sum|count)$")]
    aggregate: Option<String>,
    /// For counters, instead of `aggregate`: `increase` over each step, counting a fall as a
    /// reset, or `rate`, that increase per second.
    #[param(pattern = "^(rate|increase)$")]
    function: Option<String>,
    /// Reduce every selected series to one, step by step.
    #[param(pattern = "^(avg|min|max|sum)$")]
    combine: Option<String>,
}

/// Query a metric
///
/// A metric's series for one host or the fleet, selected by attribute matchers, over a time
/// range cut into steps: per step, an aggregate of each series' points, or a counter's rate or
/// increase with resets handled; optionally all series combined into one. Steps without data
/// are left out.
#[utoipa::path(
    get,
    path = "/api/v1/metrics/query",
    tag = "metrics",
    params(MetricParams),
    responses(
        (status = 200, description = "The series, a value per step", body = MetricAnswer),
        (status = 400, description = "A parameter is not valid", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn query(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<MetricAnswer>, ApiError> {
    caller.require(Role::Viewer)?;
    let query = parse(raw.as_deref().unwrap_or(""), outpost_common::time::now_ns())?;
    let store = Arc::clone(&api.store);
    let answer = tokio::task::spawn_blocking(move || store.metric_query(&query))
        .await
        .map_err(|e| ApiError::internal("querying metrics", &e))?;
    match answer {
        Ok(answer) => Ok(Json(answer)),
        Err(MetricQueryError::Query(e)) => Err(ApiError::bad_parameter(e.part, e.message)),
        Err(MetricQueryError::Store(e)) => Err(e.into()),
    }
}

/// The query a request's query string asks for, at `now_ns`.
pub(crate) fn parse(raw: &str, now_ns: i64) -> Result<MetricQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::bad_request(format!("the query string does not parse: {e}")))?;
    let mut one = std::collections::BTreeMap::new();
    let mut matchers = Vec::new();
    for (key, value) in pairs {
        if key == "match" {
            if matchers.len() == MAX_MATCHERS {
                return Err(ApiError::bad_parameter(
                    "match",
                    format!("query parameter `match`: at most {MAX_MATCHERS}"),
                ));
            }
            matchers.push(Matcher::parse(&value).map_err(|e| {
                ApiError::bad_parameter("match", format!("query parameter `match`: {e}"))
            })?);
        } else if one.insert(key.clone(), value).is_some() {
            return Err(ApiError::bad_parameter(
                param_name(&key),
                format!("query parameter `{key}` is given more than once"),
            ));
        }
    }
    let get = |key: &str| one.get(key).map(String::as_str);
    let number = |key: &'static str| -> Result<Option<i64>, ApiError> {
        get(key)
            .map(|t| {
                t.parse::<i64>().map_err(|_| {
                    ApiError::bad_parameter(
                        key,
                        format!("query parameter `{key}`: `{t}` is not a whole number"),
                    )
                })
            })
            .transpose()
    };
    let choice = |key: &'static str, names: &str, pick: &dyn Fn(&str) -> bool| match get(key) {
        Some(t) if !pick(t) => Err(ApiError::bad_parameter(
            key,
            format!("query parameter `{key}`: `{t}` is not one of {names}"),
        )),
        other => Ok(other),
    };
    let name = get("name").unwrap_or("");
    if name.is_empty() || name.len() > 256 {
        return Err(ApiError::bad_parameter(
            "name",
            "query parameter `name`: a metric name of 1 to 256 bytes is required",
        ));
    }
    let until = number("until_ns")?.unwrap_or(now_ns);
    let since = number("since_ns")?.unwrap_or(until.saturating_sub(DEFAULT_RANGE_NS));
    // A range that ends before it starts holds nothing.
    let until = until.max(since);
    let least_step = match get("step") {
        None => None,
        Some(text) => {
            let d = humantime::parse_duration(text).map_err(|e| {
                ApiError::bad_parameter(
                    "step",
                    format!("query parameter `step`: `{text}` is not a duration ({e})"),
                )
            })?;
            if d.is_zero() {
                return Err(ApiError::bad_parameter(
                    "step",
                    format!("query parameter `step`: `{text}` must be above zero"),
                ));
            }
            Some(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        }
    };
    let most_steps = match get("points") {
        Some(t) => t
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_STEPS).contains(n))
            .ok_or_else(|| {
                ApiError::bad_parameter(
                    "points",
                    format!(
                        "query parameter `points`: `{t}` is not a number from 1 to {MAX_STEPS}"
                    ),
                )
            })?,
        None if least_step.is_some() => MAX_STEPS,
        None => DEFAULT_POINTS,
    };
    // The least step that cuts the range into at most `most_steps` steps, or the step asked
    // for if it is wider.
    let span = i128::from(until) - i128::from(since);
    let fitting = i64::try_from((span + i128::from(most_steps) - 1) / i128::from(most_steps))
        .unwrap_or(i64::MAX)
        .max(1);
    let step_ns = least_step.unwrap_or(1).max(fitting);
    let aggregate = choice("aggregate", Aggregate::NAMES, &|t| {
        Aggregate::parse(t).is_some()
    })?
    .and_then(Aggregate::parse)
    .unwrap_or_default();
    let function = choice("function", "rate or increase", &|t| {
        Function::parse(t).is_some()
    })?
    .and_then(Function::parse);
    let combine = choice("combine", "avg, min, max or sum", &|t| {
        Combine::parse(t).is_some()
    })?
    .and_then(Combine::parse);
    Ok(MetricQuery {
        name: name.to_owned(),
        agent_id: get("agent_id").map(str::to_owned),
        matchers,
        range: since..until,
        step_ns,
        aggregate,
        function,
        combine,
    })
}

/// The parameter a repeated key is reported as: its own name when it is one of ours.
fn param_name(key: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "name",
        "agent_id",
        "since_ns",
        "until_ns",
        "step",
        "points",
        "aggregate",
        "function",
        "combine",
    ];
    KNOWN.into_iter().find(|k| *k == key).unwrap_or("query")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;
    const S: i64 = 1_000_000_000;

    fn bad(raw: &str) -> (String, String) {
        let e = parse(raw, NOW).unwrap_err();
        let body = e.body();
        (
            body["error"]["details"]["parameter"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            body["error"]["message"].as_str().unwrap_or("").to_owned(),
        )
    }

    #[test]
    fn defaults_are_the_last_hour_in_three_hundred_steps_averaged() {
        // Every duration the documented pattern allows parses.
        for step in ["1ns", "999999999d", "5us", "7ms", "10s", "5m", "1h", "30d"] {
            assert!(parse(&format!("name=m&step={step}"), NOW).is_ok(), "{step}");
        }
        let q = parse("name=system.cpu.utilization", NOW).unwrap();
        assert_eq!(q.range, NOW - 3600 * S..NOW);
        assert_eq!(q.step_ns, 12 * S);
        assert_eq!(q.aggregate, Aggregate::Avg);
        assert_eq!(
            (q.function, q.combine, q.agent_id.as_deref()),
            (None, None, None)
        );
        assert!(q.check().is_ok());
    }

    #[test]
    fn every_parameter_is_read_and_match_repeats() {
        let q = parse(
            "name=system.network.io&agent_id=web-1&match=direction%3Dreceive&match=device%21~lo%7Cdocker.*\
             &since_ns=0&until_ns=86400000000000&points=500&function=rate&combine=sum&aggregate=max",
            NOW,
        )
        .unwrap();
        assert_eq!(q.agent_id.as_deref(), Some("web-1"));
        assert_eq!(q.matchers.len(), 2);
        assert_eq!(q.matchers[1].value, "lo|docker.*");
        assert_eq!(q.range, 0..86_400 * S);
        // 86,400 s in at most 500 steps: 172.8 s each.
        assert_eq!(q.step_ns, 172_800_000_000);
        assert_eq!(q.function, Some(Function::Rate));
        assert_eq!(q.combine, Some(Combine::Sum));
        assert_eq!(q.aggregate, Aggregate::Max);
        let q = parse("name=m&step=5m&since_ns=-10&until_ns=10", NOW).unwrap();
        assert_eq!((q.step_ns, q.range), (300 * S, -10..10));
        // A step is widened to fit the most steps; both may be given.
        let q = parse(
            "name=m&step=1s&points=10&since_ns=0&until_ns=100000000000",
            NOW,
        )
        .unwrap();
        assert_eq!(q.step_ns, 10 * S);
        let q = parse(
            "name=m&step=1ns&since_ns=-9223372036854775808&until_ns=9223372036854775807",
            NOW,
        )
        .unwrap();
        assert!(q.check().is_ok(), "{}", q.step_ns);
        // A range that ends before it starts is empty.
        let q = parse("name=m&since_ns=10&until_ns=5", NOW).unwrap();
        assert_eq!(q.range, 10..10);
        assert!(q.check().is_ok());
    }

    #[test]
    fn bad_parameters_are_named() {
        for (raw, parameter, says) in [
            ("", "name", "required"),
            ("name=", "name", "required"),
            ("name=m&name=n", "name", "more than once"),
            ("name=m&since_ns=x", "since_ns", "whole number"),
            ("name=m&step=0s", "step", "above zero"),
            ("name=m&step=fast", "step", "not a duration"),
            ("name=m&points=0", "points", "from 1 to 11000"),
            ("name=m&points=11001", "points", "from 1 to 11000"),
            ("name=m&aggregate=median", "aggregate", "median"),
            ("name=m&function=deriv", "function", "deriv"),
            ("name=m&combine=last", "combine", "last"),
            ("name=m&match=nokey", "match", "nokey"),
            ("name=m&match=a%3D~(", "match", "regular expression"),
        ] {
            let (p, message) = bad(raw);
            assert_eq!(p, parameter, "{raw}: {message}");
            assert!(message.contains(says), "{raw}: {message}");
        }
        let many = (0..33)
            .map(|i| format!("match=k{i}%3Dv"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(bad(&format!("name=m&{many}")).0, "match");
    }
}
