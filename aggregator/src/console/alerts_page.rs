//! `/alerts`: open alerts, silences and the history; acknowledging, silencing (from a form
//! filled with an alert's labels) and ending silences, for operators and admins.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::fleet_page::urlencode;
use super::layout::{self, Flash, csrf_field, none, when};
use super::{Console, Viewer, authorize, error_page, params, respond};
use crate::alerts::NewSilence;
use crate::api::ApiError;
use crate::api::alerts::{NewSilenceRequest, refused, silence_times};
use crate::rules::alert::severity_name;
use crate::rules::engine::AlertRecord;
use crate::rules::lifecycle::AlertState;
use crate::rules::matcher;
use crate::store::alerting::{HistoryRow, LogQuery, StoredSilence};
use crate::tokens::Role;

/// History entries shown.
const HISTORY_ROWS: usize = 50;

/// The engine's alert records; `None` when alerting is disabled.
pub async fn records(console: &Console) -> Option<Vec<AlertRecord>> {
    let alerting = console.api.alerting().ok()?;
    let store = Arc::clone(alerting.store());
    match tokio::task::spawn_blocking(move || store.alert_records()).await {
        Ok(Ok(records)) => Some(records),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "The console cannot read alerts.");
            None
        }
        Err(_) => None,
    }
}

/// A rule's value as people read it: whole numbers whole, others to a precision that matters.
pub fn value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn state_name(state: AlertState) -> &'static str {
    match state {
        AlertState::Pending { .. } => "pending",
        AlertState::Firing { .. } => "firing",
        AlertState::Inactive => "resolved",
    }
}

/// Open alerts as a table; operators get acknowledge and silence controls.
pub fn alert_table(records: &[AlertRecord], id: &str, viewer: &Viewer, now: i64) -> Markup {
    let operator = viewer.may(Role::Operator);
    html! {
        @if records.is_empty() {
            p.muted #(id) { "No open alert." }
        } @else {
            div.table-wrap {
                table.alerts id=(id) {
                    thead { tr {
                        th scope="col" { "State" } th scope="col" { "Severity" } th scope="col" { "Alert" }
                        th scope="col" { "Host" } th scope="col" { "Since" } th scope="col" { "Value" }
                        th scope="col" { "Notified" }
                        @if operator { th scope="col" { "Actions" } }
                    } }
                    tbody {
                        @for r in records {
                            @let state = state_name(r.state);
                            tr data-fingerprint=(r.fingerprint) data-rule=(r.rule) data-state=(state) class=[r.ack.is_some().then_some("acked")] {
                                td { span class={ "badge " (state) } { (state) } }
                                td { span class={ "sev " (severity_name(r.severity)) } { (severity_name(r.severity)) } }
                                td {
                                    strong { (r.rule) }
                                    @if let Some(s) = r.annotations.get("summary") { br; (s) }
                                    @if let Some(a) = &r.ack {
                                        br; small.ack { "acknowledged by " (a.by) " " (when(Some(a.at_ns), now)) @if !a.comment.is_empty() { ": " (a.comment) } }
                                    }
                                }
                                td { @if let Some(h) = r.labels.get("host") { a href={ "/hosts/" (urlencode(h)) } { (h) } } @else { (none()) } }
                                td { (when(Some(r.active_since_ns), now)) }
                                td.num { @match r.value { Some(v) => (value(v)), None => (none()) } }
                                td {
                                    @if state == "pending" { span.muted { "not yet" } }
                                    @else if r.suppressed_by.is_empty() { "yes" }
                                    @else { small { "no: " (r.suppressed_by.join(", ")) } }
                                }
                                @if operator {
                                    td { div.actions {
                                        @if r.ack.is_none() && state == "firing" {
                                            form.ack method="post" action={ "/alerts/" (urlencode(&r.fingerprint)) "/ack" } {
                                                (csrf_field(&viewer.session))
                                                button type="submit" { "Acknowledge" }
                                            }
                                        }
                                        a.silence href={ "/silences/new?fingerprint=" (urlencode(&r.fingerprint)) } { "Silence…" }
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn silence_table(silences: &[StoredSilence], viewer: &Viewer, now: i64) -> Markup {
    let operator = viewer.may(Role::Operator);
    html! {
        @if silences.is_empty() {
            p.muted #silences { "No silence in force or to come." }
        } @else {
            div.table-wrap {
                table #silences {
                    thead { tr {
                        th scope="col" { "Matchers" } th scope="col" { "From" } th scope="col" { "Until (UTC)" }
                        th scope="col" { "By" } th scope="col" { "Why" }
                        @if operator { th scope="col" { "Actions" } }
                    } }
                    tbody {
                        @for s in silences {
                            tr data-silence-id=(s.id) {
                                td { @for m in &s.matchers { code { (m) } " " } }
                                td { @if s.starts_ns > now { "from " (layout::utc(s.starts_ns)) } @else { (when(Some(s.starts_ns), now)) } }
                                td { (layout::utc(s.ends_ns)) }
                                td { (s.author) }
                                td { (s.comment) }
                                @if operator {
                                    td {
                                        form.expire method="post" action={ "/silences/" (urlencode(&s.id)) "/expire" } {
                                            (csrf_field(&viewer.session))
                                            button type="submit" { "End now" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn history_table(rows: &[HistoryRow]) -> Markup {
    html! {
        div.table-wrap {
            table #alert-history {
                thead { tr { th scope="col" { "Time (UTC)" } th scope="col" { "What" } th scope="col" { "Alert" } th scope="col" { "Host" } th scope="col" { "Detail" } } }
                tbody {
                    @for r in rows {
                        tr {
                            td { (layout::utc(r.entry.at_ns)) }
                            td { (r.entry.kind.name()) }
                            td { (r.entry.rule) }
                            td { @if let Some(h) = r.entry.labels.get("host") { (h) } @else { (none()) } }
                            td { (r.entry.detail) }
                        }
                    }
                }
            }
        }
    }
}

/// A message passed along a redirect, as `?ok=` or `?error=`.
fn flash_of(raw: Option<&str>) -> Option<Flash> {
    let p = params(raw);
    p.get("error")
        .map(|m| Flash::Error(m.clone()))
        .or_else(|| p.get("ok").map(|m| Flash::Ok(m.clone())))
}

fn back_to_alerts(flash: Result<String, String>) -> Response {
    let (key, message) = match &flash {
        Ok(m) => ("ok", m.as_str()),
        Err(m) => ("error", m.as_str()),
    };
    Redirect::to(&format!(
        "/alerts?{}",
        super::query_string([(key, message)])
    ))
    .into_response()
}

pub async fn alerts(
    State(console): State<Arc<Console>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Response {
    let session = Some(&viewer.session);
    let alerting = match console.api.alerting() {
        Ok(a) => a.clone(),
        Err(e) => return error_page(session, e.status, &e.message),
    };
    let host = params(raw.as_deref()).get("host").cloned();
    let store = Arc::clone(alerting.store());
    let read = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((
            store.alert_records()?,
            store.stored_silences()?,
            store.alert_history(&LogQuery {
                fingerprint: None,
                before: None,
                limit: HISTORY_ROWS,
            })?,
        ))
    })
    .await;
    let (mut records, silences, history) = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let e = ApiError::from(e);
            return error_page(session, e.status, &e.message);
        }
        Err(e) => {
            let e = ApiError::internal("reading alerts", &e);
            return error_page(session, e.status, &e.message);
        }
    };
    let now = outpost_common::time::now_ns();
    records.retain(|r| {
        host.as_ref()
            .is_none_or(|h| r.labels.get("host") == Some(h))
    });
    records.sort_by(|a, b| {
        (a.severity, a.active_since_ns, &a.fingerprint).cmp(&(
            b.severity,
            b.active_since_ns,
            &b.fingerprint,
        ))
    });
    let silences: Vec<StoredSilence> = silences.into_iter().filter(|s| s.ends_ns > now).collect();
    let flash = flash_of(raw.as_deref());
    let body = html! {
        h1 { "Alerts" @if let Some(h) = &host { " on " (h) } }
        section aria-labelledby="active-h" {
            h2 #active-h { "Open" }
            (alert_table(&records, "active-alerts", &viewer, now))
        }
        section aria-labelledby="silences-h" {
            h2 #silences-h { "Silences" }
            (silence_table(&silences, &viewer, now))
        }
        section aria-labelledby="history-h" {
            h2 #history-h { "History" }
            (history_table(&history))
        }
    };
    respond(layout::page(
        "Alerts",
        "alerts",
        session,
        flash.as_ref(),
        body,
    ))
}

/// The engine, for an action only operators may take with this session's form; the refusal
/// page otherwise.
async fn engine_for(
    console: &Console,
    viewer: &Viewer,
    csrf: &str,
    route: &str,
) -> Result<crate::alerts::AlertingHandle, Response> {
    authorize(console, viewer, csrf, Role::Operator, route).await?;
    console
        .api
        .alerting()
        .cloned()
        .map_err(|e| error_page(Some(&viewer.session), e.status, &e.message))
}

#[derive(Debug, Deserialize)]
pub struct AckForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    comment: String,
}

pub async fn acknowledge(
    State(console): State<Arc<Console>>,
    Extension(viewer): Extension<Viewer>,
    Path(fingerprint): Path<String>,
    axum::Form(form): axum::Form<AckForm>,
) -> Response {
    let alerting =
        match engine_for(&console, &viewer, &form.csrf, "/alerts/{fingerprint}/ack").await {
            Ok(a) => a,
            Err(refusal) => return refusal,
        };
    match alerting
        .acknowledge(&fingerprint, &viewer.session.name, form.comment.trim())
        .await
    {
        Ok(record) => {
            tracing::info!(fingerprint = %fingerprint, by = %viewer.session.name, "Alert acknowledged in the console.");
            back_to_alerts(Ok(format!("Acknowledged {}.", record.rule)))
        }
        Err(e) => back_to_alerts(Err(refused(e).message)),
    }
}

/// `/silences/new?fingerprint=FP`: the silence form, filled with the alert's labels.
pub async fn new_silence(
    State(console): State<Arc<Console>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Response {
    let session = Some(&viewer.session);
    if !viewer.may(Role::Operator) {
        return error_page(
            session,
            StatusCode::FORBIDDEN,
            &format!(
                "Silencing needs the operator role; you are signed in as {}.",
                viewer.session.role.as_str()
            ),
        );
    }
    let p = params(raw.as_deref());
    let fingerprint = p.get("fingerprint").cloned();
    let alert = match &fingerprint {
        Some(fp) => records(&console)
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|r| &r.fingerprint == fp),
        None => None,
    };
    let matchers = alert
        .as_ref()
        .map_or_else(String::new, |a| prefill(&a.labels));
    silence_form(
        &viewer,
        alert.as_ref(),
        &matchers,
        "2h",
        "",
        None,
        StatusCode::OK,
    )
}

/// An alert's labels as matchers, one per line, in the syntax the form reads back.
pub fn prefill(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .filter_map(|(k, v)| {
            matcher::Matcher::new(k, matcher::MatchOp::Equal, v)
                .ok()
                .map(|m| matcher::render(&m))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn silence_form(
    viewer: &Viewer,
    alert: Option<&AlertRecord>,
    matchers: &str,
    duration: &str,
    comment: &str,
    flash: Option<&Flash>,
    status: StatusCode,
) -> Response {
    let body = html! {
        h1 { "New silence" }
        @if let Some(a) = alert { p { "For alert " strong { (a.rule) } ". Alerts matching every line are not notified until the silence ends; they stay listed." } }
        form #silence method="post" action="/silences" {
            (csrf_field(&viewer.session))
            label for="matchers" { "Matchers, one per line (" code { "name=\"value\"" } ", " code { "!=" } ", " code { "=~" } ", " code { "!~" } ")" }
            textarea #matchers name="matchers" rows="6" required spellcheck="false" { (matchers) }
            label for="duration" { "For how long (" code { "30m" } ", " code { "2h" } ", " code { "1d" } ") or until (RFC 3339)" }
            input #duration type="text" name="duration" value=(duration) required;
            label for="comment" { "Why" }
            input #comment type="text" name="comment" value=(comment) required placeholder="maintenance window, known issue…";
            button type="submit" { "Create silence" }
            " " a href="/alerts" { "Cancel" }
        }
    };
    (
        status,
        layout::page("New silence", "alerts", Some(&viewer.session), flash, body),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct SilenceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    matchers: String,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    comment: String,
}

pub async fn create_silence(
    State(console): State<Arc<Console>>,
    Extension(viewer): Extension<Viewer>,
    axum::Form(form): axum::Form<SilenceForm>,
) -> Response {
    let alerting = match engine_for(&console, &viewer, &form.csrf, "/silences").await {
        Ok(a) => a,
        Err(refusal) => return refusal,
    };
    let again = |message: String| {
        silence_form(
            &viewer,
            None,
            &form.matchers,
            &form.duration,
            &form.comment,
            Some(&Flash::Error(message)),
            StatusCode::BAD_REQUEST,
        )
    };
    let matchers: Vec<String> = form
        .matchers
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if matchers.is_empty() {
        return again("A silence needs at least one matcher.".to_owned());
    }
    if form.comment.trim().is_empty() {
        return again("Say why: a silence needs a comment.".to_owned());
    }
    let request = NewSilenceRequest {
        matchers: matchers.clone(),
        starts_at: None,
        ends_at: form.duration.trim().to_owned(),
        comment: form.comment.trim().to_owned(),
    };
    let now = outpost_common::time::now_ns();
    let (starts_ns, ends_ns) = match silence_times(&request, now) {
        Ok(t) => t,
        Err(e) => return again(e.message),
    };
    match alerting
        .add_silence(NewSilence {
            matchers,
            starts_ns,
            ends_ns,
            author: viewer.session.name.clone(),
            comment: request.comment,
        })
        .await
    {
        Ok(stored) => {
            tracing::info!(id = %stored.id, by = %viewer.session.name, "Silence added in the console.");
            back_to_alerts(Ok(format!(
                "Silence {} created, until {} UTC.",
                stored.id,
                layout::utc(stored.ends_ns)
            )))
        }
        Err(e) => again(refused(e).message),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn expire_silence(
    State(console): State<Arc<Console>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<CsrfOnly>,
) -> Response {
    let alerting = match engine_for(&console, &viewer, &form.csrf, "/silences/{id}/expire").await {
        Ok(a) => a,
        Err(refusal) => return refusal,
    };
    match alerting.expire_silence(&id).await {
        Ok(s) => back_to_alerts(Ok(format!("Silence {} ended.", s.id))),
        Err(e) => back_to_alerts(Err(refused(e).message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_plainly() {
        assert_eq!(value(875_798_528.0), "875798528");
        assert_eq!(value(4.08), "4.080");
        assert_eq!(value(1234.5678), "1234.6");
    }

    #[test]
    fn an_alerts_labels_prefill_matchers_that_parse_back_to_them() {
        let labels = [
            ("alertname".to_owned(), "disk-full".to_owned()),
            ("host".to_owned(), "web \"1\"".to_owned()),
        ]
        .into();
        let text = prefill(&labels);
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            let m = matcher::parse(line).unwrap();
            assert_eq!(
                labels.get(&m.key).map(String::as_str),
                Some(m.value.as_str()),
                "{line}"
            );
        }
    }
}
