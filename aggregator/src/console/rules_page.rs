//! `/rules`: the rules running, each with its alerts now and when it last evaluated its input.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::layout::{self, when};
use super::{Console, Viewer, error_page, respond};
use crate::alerts::LastEvaluated;
use crate::rules::alert::severity_name;
use crate::rules::lifecycle::AlertState;

/// When a rule of `kind` last evaluated input: the newest of the inputs it watches (threshold
/// rules: metric points and heartbeats; log, frequency and sequence rules: log records;
/// file-integrity rules: changes; absence rules: anything from a host; composite rules: the
/// engine's steps). Zero: never.
pub fn last_evaluated(kind: &str, at: &LastEvaluated) -> i64 {
    match kind {
        "threshold" => at.metric_ns.max(at.heartbeat_ns),
        "log" | "frequency" | "sequence" => at.log_ns,
        "fim" => at.fim_ns,
        "absence" => at
            .metric_ns
            .max(at.log_ns)
            .max(at.fim_ns)
            .max(at.status_ns)
            .max(at.heartbeat_ns),
        _ => at.step_ns,
    }
}

/// A rule's `for` as people write it: `0s`, `5m`, `1h`.
fn for_text(seconds: f64) -> String {
    let d = std::time::Duration::from_secs_f64(seconds.max(0.0));
    if d.is_zero() {
        "0s".to_owned()
    } else {
        humantime::format_duration(d).to_string()
    }
}

pub async fn rules(
    State(console): State<Arc<Console>>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    let session = Some(&viewer.session);
    let alerting = match console.api.alerting() {
        Ok(a) => a.clone(),
        Err(e) => return error_page(session, e.status, &e.message),
    };
    let status = alerting.rules();
    let at = alerting.last_evaluated();
    let records = super::alerts_page::records(&console)
        .await
        .unwrap_or_default();
    let mut counts: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in &records {
        let c = counts.entry(r.rule.as_str()).or_default();
        match r.state {
            AlertState::Pending { .. } => c.0 += 1,
            AlertState::Firing { .. } => c.1 += 1,
            AlertState::Inactive => {}
        }
    }
    let now = outpost_common::time::now_ns();
    let body = html! {
        h1 { "Rules" }
        p {
            (status.rules.len()) " rules from " code { (status.dir) } ", loaded " (when(Some(status.loaded_ns), now)) ". "
            "The engine last stepped " (when((at.step_ns > 0).then_some(at.step_ns), now)) "."
        }
        @if let Some(errors) = &status.last_error {
            div #flash .error role="alert" {
                p { "The last reload failed " (when(status.last_error_ns, now)) "; the rules below keep running:" }
                ul { @for e in errors { li { code { (e) } } } }
            }
        }
        div.table-wrap {
            table #rules {
                thead { tr {
                    th scope="col" { "Rule" } th scope="col" { "Kind" } th scope="col" { "Severity" }
                    th scope="col" { "State" } th scope="col" { "For" } th scope="col" { "Last evaluated" }
                    th scope="col" { "File" }
                } }
                tbody {
                    @for rule in &status.rules {
                        @let (pending, firing) = counts.get(rule.name.as_str()).copied().unwrap_or_default();
                        @let state = if firing > 0 { "firing" } else if pending > 0 { "pending" } else { "ok" };
                        @let last = last_evaluated(&rule.kind, &at);
                        tr data-rule=(rule.name) data-state=(state) {
                            th scope="row" {
                                (rule.name)
                                @if let Some(s) = rule.annotations.get("summary") { br; small.muted { (s) } }
                            }
                            td { (rule.kind) }
                            td { span class={ "sev " (severity_name(rule.severity)) } { (severity_name(rule.severity)) } }
                            td {
                                span class={ "badge " (state) } { (state) }
                                @if firing > 0 { " " a href="/alerts" { (firing) " firing" } }
                                @if pending > 0 { " " (pending) " pending" }
                            }
                            td.num { (for_text(rule.for_seconds)) }
                            td { (when((last > 0).then_some(last), now)) }
                            td { code { (rule.file) } }
                        }
                    }
                }
            }
        }
    };
    respond(layout::page("Rules", "rules", session, None, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_rule_is_evaluated_by_its_own_input() {
        let at = LastEvaluated {
            metric_ns: 1,
            log_ns: 2,
            fim_ns: 3,
            status_ns: 4,
            heartbeat_ns: 5,
            step_ns: 6,
        };
        assert_eq!(last_evaluated("threshold", &at), 5);
        assert_eq!(last_evaluated("log", &at), 2);
        assert_eq!(last_evaluated("sequence", &at), 2);
        assert_eq!(last_evaluated("fim", &at), 3);
        assert_eq!(last_evaluated("absence", &at), 5);
        assert_eq!(last_evaluated("composite", &at), 6);
        assert_eq!(
            last_evaluated("threshold", &LastEvaluated::default()),
            0,
            "never"
        );
    }
}
