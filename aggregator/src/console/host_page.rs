//! `/hosts/{id}`: one host's facts and status, charts over a chosen range, its recent log lines,
//! file changes and open alerts.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use outpost_common::event::EventKind;

use super::chart::{Chart, Line, MAX_SERIES, Unit, human_bytes};
use super::events_page::{self, PAGE_ROWS};
use super::fleet_page::{status_name, urlencode};
use super::layout::{self, none, when};
use super::{Console, RANGES, Viewer, error_page, params, range, respond};
use crate::api::Backend;
use crate::store::series::{Combine, Function, MatchOp, Matcher, MetricQuery, MetricQueryError};
use crate::store::{StoreError, StoredEvent};

/// Points per chart line at most.
const POINTS: i64 = 300;
/// The least step: the agents' default collection interval.
const MIN_STEP_NS: i64 = 10_000_000_000;
/// Log lines and file changes shown on a host's page.
const HOST_ROWS: usize = 50;

/// One line of a chart as a query: its name, the metric, matchers, a counter's rate or not,
/// combined into one series or one line per value of `split_by`, and the factor on values.
struct LineQuery {
    name: &'static str,
    metric: &'static str,
    matchers: &'static [(&'static str, MatchOp, &'static str)],
    rate: bool,
    split_by: Option<&'static str>,
    scale: f64,
    /// Shown as `offset + scale * value` (`1 - idle` is busy).
    offset: f64,
}

struct ChartSpec {
    metric: &'static str,
    title: &'static str,
    unit: Unit,
    lines: &'static [LineQuery],
}

const fn line(name: &'static str, metric: &'static str) -> LineQuery {
    LineQuery {
        name,
        metric,
        matchers: &[],
        rate: false,
        split_by: None,
        scale: 1.0,
        offset: 0.0,
    }
}

/// The charts of a host page, as the agent names its metrics.
const CHARTS: [ChartSpec; 6] = [
    ChartSpec {
        metric: "cpu",
        title: "CPU busy",
        unit: Unit::Percent,
        lines: &[LineQuery {
            matchers: &[
                ("state", MatchOp::Equal, "idle"),
                ("cpu", MatchOp::Equal, ""),
            ],
            scale: -100.0,
            offset: 100.0,
            ..line("busy", "system.cpu.utilization")
        }],
    },
    ChartSpec {
        metric: "memory",
        title: "Memory used",
        unit: Unit::Percent,
        lines: &[LineQuery {
            matchers: &[("state", MatchOp::Equal, "used")],
            scale: 100.0,
            ..line("used", "system.memory.utilization")
        }],
    },
    ChartSpec {
        metric: "load",
        title: "Load average",
        unit: Unit::Number,
        lines: &[
            line("1m", "system.cpu.load_average.1m"),
            line("5m", "system.cpu.load_average.5m"),
            line("15m", "system.cpu.load_average.15m"),
        ],
    },
    ChartSpec {
        metric: "filesystem",
        title: "Filesystems used",
        unit: Unit::Percent,
        lines: &[LineQuery {
            split_by: Some("mountpoint"),
            scale: 100.0,
            ..line("used", "system.filesystem.utilization")
        }],
    },
    ChartSpec {
        metric: "disk",
        title: "Disk I/O",
        unit: Unit::BytesPerSec,
        lines: &[
            LineQuery {
                matchers: &[("direction", MatchOp::Equal, "read")],
                rate: true,
                ..line("read", "system.disk.io")
            },
            LineQuery {
                matchers: &[("direction", MatchOp::Equal, "write")],
                rate: true,
                ..line("write", "system.disk.io")
            },
        ],
    },
    ChartSpec {
        metric: "network",
        title: "Network I/O",
        unit: Unit::BytesPerSec,
        lines: &[
            LineQuery {
                matchers: &[
                    ("direction", MatchOp::Equal, "receive"),
                    ("device", MatchOp::NotEqual, "lo"),
                ],
                rate: true,
                ..line("receive", "system.network.io")
            },
            LineQuery {
                matchers: &[
                    ("direction", MatchOp::Equal, "transmit"),
                    ("device", MatchOp::NotEqual, "lo"),
                ],
                rate: true,
                ..line("transmit", "system.network.io")
            },
        ],
    },
];

/// The step that cuts `span_ns` into at most [`POINTS`] steps, never below [`MIN_STEP_NS`].
pub fn step_for(span_ns: i64) -> i64 {
    (span_ns / POINTS).max(MIN_STEP_NS)
}

/// The lines of one chart.
fn chart_lines(
    store: &dyn Backend,
    agent_id: &str,
    spec: &ChartSpec,
    range: std::ops::Range<i64>,
    step_ns: i64,
) -> Result<(Vec<Line>, usize), StoreError> {
    let mut lines = Vec::new();
    let mut left_out = 0;
    for q in spec.lines {
        let mut query = MetricQuery::new(q.metric, range.clone(), step_ns);
        query.agent_id = Some(agent_id.to_owned());
        for (key, op, value) in q.matchers {
            match Matcher::new(key, *op, value) {
                Ok(m) => query.matchers.push(m),
                Err(e) => tracing::error!(error = %e, "a console chart's matcher does not parse"),
            }
        }
        if q.rate {
            query.function = Some(Function::Rate);
        }
        if q.split_by.is_none() {
            query.combine = Some(Combine::Sum);
        }
        let answer = match store.metric_query(&query) {
            Ok(a) => a,
            Err(MetricQueryError::Store(e)) => return Err(e),
            Err(MetricQueryError::Query(e)) => {
                tracing::error!(error = %e, metric = q.metric, "a console chart's query is refused");
                continue;
            }
        };
        for s in answer.series {
            if lines.len() == MAX_SERIES {
                left_out += 1;
                continue;
            }
            let name = match (q.split_by, &s.series) {
                (Some(key), Some(info)) => info
                    .attributes
                    .iter()
                    .find(|(k, _)| k == key)
                    .map_or_else(|| q.name.to_owned(), |(_, v)| v.clone()),
                _ => q.name.to_owned(),
            };
            let points = s
                .points
                .iter()
                .map(|&(t, v)| (t, q.offset + q.scale * v))
                .collect();
            lines.push(Line { name, points });
        }
    }
    Ok((lines, left_out))
}

/// What the host page reads from the store.
struct HostData {
    record: Option<crate::store::AgentRecord>,
    charts: Vec<(Vec<Line>, usize)>,
    logs: Vec<StoredEvent>,
    changes: Vec<StoredEvent>,
}

pub async fn host(
    State(console): State<Arc<Console>>,
    Extension(viewer): Extension<Viewer>,
    Path(agent_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let session = Some(&viewer.session);
    let view = match console.api.fleet_view().await {
        Ok(v) => v,
        Err(e) => return error_page(session, e.status, &e.message),
    };
    let Some(entry) = view.entry(&agent_id).cloned() else {
        return error_page(
            session,
            StatusCode::NOT_FOUND,
            &format!("No host `{agent_id}` in the fleet."),
        );
    };
    let p = params(raw.as_deref());
    let (range_name, span) = range(p.get("range").map(String::as_str), "1h");
    let (range_name, span) = if span == i64::MAX {
        ("30d", RANGES[5].1)
    } else {
        (range_name, span)
    };
    let now = outpost_common::time::now_ns();
    let window = now - span..now;
    let step = step_for(span);
    let id = agent_id.clone();
    let w = window.clone();
    let data = console
        .api
        .store("reading a host", move |s| {
            let record = s.agent(&id)?;
            let charts = CHARTS
                .iter()
                .map(|spec| chart_lines(s, &id, spec, w.clone(), step))
                .collect::<Result<Vec<_>, _>>()?;
            let logs = events_page::recent(
                s,
                EventKind::Log,
                Some(id.clone()),
                Some(w.start..i64::MAX),
                HOST_ROWS.min(PAGE_ROWS),
                &|_| true,
            )?
            .events;
            let changes = events_page::recent(
                s,
                EventKind::Fim,
                Some(id.clone()),
                Some(w.start..i64::MAX),
                HOST_ROWS,
                &|_| true,
            )?
            .events;
            Ok(HostData {
                record,
                charts,
                logs,
                changes,
            })
        })
        .await;
    let data = match data {
        Ok(d) => d,
        Err(e) => return error_page(session, e.status, &e.message),
    };
    let alerts: Vec<_> = super::alerts_page::records(&console)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.resolved_ns.is_none() && r.labels.get("host") == Some(&agent_id))
        .collect();
    let host = data.record.as_ref().and_then(|r| r.host.as_ref());
    let status = data.record.as_ref().and_then(|r| r.status.as_ref());
    let body = html! {
        h1 { (agent_id) }
        div.host-head {
            p.status {
                span class={ "badge " (status_name(entry.status)) } { (status_name(entry.status).replace('_', " ")) }
                @if !entry.reason.is_empty() { " " (entry.reason) }
                " · last seen " (when(entry.last_seen_ns, now))
            }
            dl.facts {
                dt { "Host name" } dd { @if let Some(h) = host { (h.hostname) } @else { (none()) } }
                dt { "System" } dd { @if let Some(h) = host { (h.os) " · " (h.kernel) " · " (h.arch) } @else { (none()) } }
                dt { "CPUs" } dd { @if let Some(h) = host { (h.cpus) } @else { (none()) } }
                dt { "Memory" } dd { @if let Some(h) = host { (human_bytes(h.memory_bytes as f64)) } @else { (none()) } }
                dt { "Booted" } dd { @if let Some(h) = host { (when(Some(h.boot_time_ns), now)) } @else { (none()) } }
                dt { "Agent" } dd { @if let Some(v) = &entry.version { (v) } @else { (none()) } }
                dt { "Labels" } dd {
                    @if entry.labels.is_empty() { (none()) }
                    @for (k, v) in &entry.labels { code.label { (k) "=" (v) } " " }
                }
                dt { "Spool" } dd {
                    @if let Some(s) = status {
                        (s.spool_events) " events in " (s.backlog_batches) " batches not yet acknowledged · "
                        (human_bytes(s.spool_bytes as f64)) " of " (human_bytes(s.spool_cap_bytes as f64))
                    } @else { (none()) }
                }
                dt { "Dropped" } dd { @match entry.drops_total { Some(n) => { (n) " events" }, None => { (none()) } } }
                @if !entry.failing_collectors.is_empty() {
                    dt { "Failing" } dd.error { (entry.failing_collectors.join(", ")) }
                }
            }
        }
        section aria-labelledby="charts-h" {
            h2 #charts-h { "Metrics" }
            nav.ranges aria-label="Range" {
                @for (name, _) in RANGES.iter().take(6) {
                    @if *name == range_name {
                        a href={ "?range=" (name) } aria-current="true" { (name) }
                    } @else {
                        a href={ "?range=" (name) } { (name) }
                    }
                }
            }
            div.charts {
                @for (spec, (lines, left_out)) in CHARTS.iter().zip(data.charts) {
                    (Chart {
                        metric: spec.metric,
                        title: spec.title,
                        unit: spec.unit,
                        range: window.clone(),
                        step_ns: step,
                        lines,
                        left_out,
                    }.render())
                }
            }
        }
        section aria-labelledby="alerts-h" {
            h2 #alerts-h { "Open alerts" }
            (super::alerts_page::alert_table(&alerts, "host-alerts", &viewer, now))
        }
        section aria-labelledby="logs-h" {
            h2 #logs-h { "Recent log lines" }
            p { a href={ "/logs?host=" (urlencode(&agent_id)) "&range=" (range_name) } { "Search this host's logs" } }
            (events_page::host_logs(&data.logs))
        }
        section aria-labelledby="fim-h" {
            h2 #fim-h { "File changes" }
            (events_page::fim_table(&data.changes, "host-fim", false))
        }
    };
    respond(layout::page(&agent_id, "fleet", session, None, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_cut_a_range_into_at_most_300_and_never_below_the_collection_interval() {
        const M: i64 = 60_000_000_000;
        assert_eq!(step_for(15 * M), MIN_STEP_NS);
        assert_eq!(step_for(24 * 60 * M), 288_000_000_000);
        assert!(30 * 24 * 60 * M / step_for(30 * 24 * 60 * M) <= POINTS);
    }
}
