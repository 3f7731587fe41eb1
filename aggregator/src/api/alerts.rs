//! `/api/v1/alerts`, `/silences`, `/rules` and `/notifications`: the alerting engine as
//! operators read and steer it.
//!
//! Reads come from the state store, which holds what the engine saved after its last step (it
//! saves after every step, so a change it just accepted shows within moments). Changes go to the
//! running engine through its [`AlertingHandle`], which answers once the engine applied them or
//! refused them. With `[alerting] enabled = false` every route answers 503, so a client can tell
//! "no alerts" from "nothing is watching".

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use outpost_common::config::ConfigError;
use outpost_common::time::{format_rfc3339, now_ns};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::{Api, ApiError, Caller, page};
use crate::alerts::{AlertingError, AlertingHandle, NewSilence, RuleInfo, RulesStatus};
use crate::fim::TimeArg;
use crate::notify::{Message, Status};
use crate::rules::alert::severity_name;
use crate::rules::engine::{AlertRecord, Refused};
use crate::rules::file::Severity;
use crate::rules::lifecycle::AlertState;
use crate::rules::matcher::{self, Matcher};
use crate::store::StoreError;
use crate::store::alerting::{AlertingStore, HistoryRow, LogQuery, OutboxEntry, StoredSilence};
use crate::tokens::Role;

/// History entries `GET /alerts/{fingerprint}` shows with the alert.
const RECENT_HISTORY: usize = 50;
/// Label matchers one request may carry.
const MAX_MATCHERS: usize = 32;

impl Api {
    /// The running engine, or 503 when alerting is disabled.
    pub(crate) fn alerting(&self) -> Result<&AlertingHandle, ApiError> {
        self.alerting.as_ref().ok_or_else(|| {
            ApiError::unavailable(
                "alerting is disabled on this aggregator (`[alerting] enabled = false` in its \
                 configuration)",
            )
        })
    }
}

/// Runs `f` on the alerting part of the state store, on a blocking thread.
async fn read<T: Send + 'static>(
    alerting: &AlertingHandle,
    what: &'static str,
    f: impl FnOnce(&dyn AlertingStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    super::blocking(what, Arc::clone(alerting.store()), f).await
}

/// The answer to an engine's refusal, by what was refused.
pub(crate) fn refused(e: AlertingError) -> ApiError {
    let message = e.to_string();
    match e {
        AlertingError::Refused(r) => match r {
            Refused::NoAlert(_) | Refused::NoSilence(_) => ApiError::not_found(message),
            Refused::NotFiring(_) | Refused::Ended(_) => ApiError::conflict(message),
            Refused::Backwards => ApiError::bad_parameter("ends_at", message),
            Refused::NoMatchers => ApiError::bad_parameter("matchers", message),
        },
        AlertingError::Invalid(errors) => ApiError::unprocessable(
            "the rules do not load; the rules loaded before keep running",
            &errors,
        ),
        AlertingError::BadRequest(why) => ApiError::bad_parameter("matchers", why),
        AlertingError::Stopped | AlertingError::Elsewhere(_) | AlertingError::NoLeader => {
            ApiError::unavailable(message)
        }
    }
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStateName {
    /// Its condition holds, for less than the rule's `for` so far.
    Pending,
    Firing,
    /// Resolved; its resolution is not notified yet.
    Resolved,
}

impl AlertStateName {
    fn of(state: AlertState) -> AlertStateName {
        match state {
            AlertState::Pending { .. } => AlertStateName::Pending,
            AlertState::Firing { .. } => AlertStateName::Firing,
            AlertState::Inactive => AlertStateName::Resolved,
        }
    }
}

/// Who acknowledged an alert, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct AckView {
    /// The name of the token that acknowledged it.
    pub by: String,
    /// RFC 3339.
    pub at: String,
    pub at_ns: i64,
    pub comment: String,
}

/// One alert: pending, firing, or resolved and not notified yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    /// Stable over the alert's life: a hash of its labels.
    pub fingerprint: String,
    pub rule: String,
    #[schema(pattern = "^(critical|high|medium|low|info)$")]
    pub severity: &'static str,
    /// `alertname`, `severity`, `host` (for per-host rules) and the rule's own.
    pub labels: BTreeMap<String, String>,
    /// Rendered when it became pending and again when it fired: `summary`, `description`, …
    pub annotations: BTreeMap<String, String>,
    pub state: AlertStateName,
    /// When it became pending (or fired, for a rule without `for`), RFC 3339.
    pub since: String,
    pub since_ns: i64,
    pub fired_at: Option<String>,
    pub fired_ns: Option<i64>,
    pub resolved_at: Option<String>,
    pub resolved_ns: Option<i64>,
    /// The value that made it fire, when the rule has one.
    pub value: Option<f64>,
    pub ack: Option<AckView>,
    /// The silences (by id) and `inhibited` keeping it from being notified.
    pub suppressed_by: Vec<String>,
    /// Escalation stages notified so far.
    pub escalated: u32,
}

impl AlertView {
    fn of(r: AlertRecord) -> AlertView {
        AlertView {
            severity: severity_name(r.severity),
            state: AlertStateName::of(r.state),
            since: format_rfc3339(r.active_since_ns),
            since_ns: r.active_since_ns,
            fired_at: r.fired_ns.map(format_rfc3339),
            fired_ns: r.fired_ns,
            resolved_at: r.resolved_ns.map(format_rfc3339),
            resolved_ns: r.resolved_ns,
            ack: r.ack.map(|a| AckView {
                by: a.by,
                at: format_rfc3339(a.at_ns),
                at_ns: a.at_ns,
                comment: a.comment,
            }),
            fingerprint: r.fingerprint,
            rule: r.rule,
            labels: r.labels,
            annotations: r.annotations,
            value: r.value,
            suppressed_by: r.suppressed_by,
            escalated: r.escalated,
        }
    }
}

/// Filters of the alert list. Unknown parameters are ignored.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertParams {
    /// Only alerts in this state.
    #[param(value_type = Option<AlertStateName>)]
    state: Option<AlertStateName>,
    /// Only alerts of this severity.
    #[param(value_type = Option<String>, pattern = "^(critical|high|medium|low|info)$")]
    severity: Option<Severity>,
    /// Only alerts of this rule.
    rule: Option<String>,
    /// Only alerts of this host (their `host` label).
    host: Option<String>,
}

/// The label matchers of the alert list (read from the raw query string, since they repeat).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes the parameter for the OpenAPI document; read by `matchers`
pub struct MatcherParams {
    /// Label matchers, repeatable, all to hold: `name=value`, `name!=value`, `name=~regex`,
    /// `name!~regex` (regular expressions match the whole value; a label an alert lacks reads as
    /// empty). At most 32.
    #[param(style = Form, explode, inline, max_items = 32)]
    matcher: Option<Vec<LabelMatcherText>>,
}

/// A label matcher as text: a name, an operator (`=`, `!=`, `=~`, `!~`) and a value, which may be
/// in double quotes. Every operator holds `=`; what else makes one valid (a label name's
/// characters, a regular expression that compiles) JSON Schema cannot say.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(pattern = "=")]
#[allow(dead_code)] // describes matchers for the OpenAPI document; read by `matcher::parse`
pub struct LabelMatcherText(String);

/// The `matcher` parameters of a query string.
fn matchers(raw: Option<&str>) -> Result<Vec<Matcher>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("the query string does not parse: {e}")))?;
    let texts: Vec<String> = pairs
        .into_iter()
        .filter(|(key, _)| key == "matcher")
        .map(|(_, value)| value)
        .collect();
    if texts.len() > MAX_MATCHERS {
        return Err(ApiError::bad_parameter(
            "matcher",
            format!("query parameter `matcher`: at most {MAX_MATCHERS}"),
        ));
    }
    texts
        .iter()
        .map(|t| {
            matcher::parse(t).map_err(|e| {
                ApiError::bad_parameter("matcher", format!("query parameter `matcher`: {e}"))
            })
        })
        .collect()
}

/// The alerts, most severe first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    /// Most severe first, then oldest first.
    pub items: Vec<AlertView>,
}

/// List alerts
///
/// Pending and firing alerts, and resolved ones whose resolution is not notified yet, filtered
/// by state, severity, rule, host and label matchers; most severe first, then oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    params(AlertParams, MatcherParams),
    responses(
        (status = 200, description = "The alerts", body = AlertList),
        (status = 400, description = "A parameter is not valid", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn list_alerts(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<AlertParams>, QueryRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Json<AlertList>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(p) = params?;
    let matchers = matchers(raw.as_deref())?;
    let alerting = api.alerting()?;
    let mut records = read(alerting, "reading alerts", |s| s.alert_records()).await?;
    records.retain(|r| {
        p.state.is_none_or(|s| AlertStateName::of(r.state) == s)
            && p.severity.is_none_or(|s| r.severity == s)
            && p.rule.as_ref().is_none_or(|rule| &r.rule == rule)
            && p.host
                .as_ref()
                .is_none_or(|h| r.labels.get("host") == Some(h))
            && matcher::all_match(&matchers, &r.labels)
    });
    // Severities are ordered most severe first.
    records.sort_by(|a, b| {
        (a.severity, a.active_since_ns, &a.fingerprint).cmp(&(
            b.severity,
            b.active_since_ns,
            &b.fingerprint,
        ))
    });
    Ok(Json(AlertList {
        items: records.into_iter().map(AlertView::of).collect(),
    }))
}

/// One line of an alert's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryItem {
    /// Its place in the history; newer entries have higher ids.
    pub id: i64,
    pub fingerprint: String,
    pub rule: String,
    #[schema(
        pattern = "^(pending|fired|cleared|resolved|acknowledged|escalated|silenced|unsilenced)$"
    )]
    pub kind: &'static str,
    pub labels: BTreeMap<String, String>,
    pub value: Option<f64>,
    /// RFC 3339.
    pub at: String,
    pub at_ns: i64,
    /// Who acknowledged, which receiver an escalation went to, which silences.
    pub detail: String,
}

impl HistoryItem {
    fn of(row: HistoryRow) -> HistoryItem {
        let e = row.entry;
        HistoryItem {
            id: row.id,
            kind: e.kind.name(),
            at: format_rfc3339(e.at_ns),
            at_ns: e.at_ns,
            fingerprint: e.fingerprint,
            rule: e.rule,
            labels: e.labels,
            value: e.value,
            detail: e.detail,
        }
    }
}

/// One alert with its recent history.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertDetail {
    #[serde(flatten)]
    pub alert: AlertView,
    /// Its latest history entries (at most 50), newest first.
    pub history: Vec<HistoryItem>,
}

/// One alert
///
/// An alert that is pending, firing, or resolved and not notified yet, with its recent history.
#[utoipa::path(
    get,
    path = "/api/v1/alerts/{fingerprint}",
    tag = "alerts",
    params(("fingerprint" = String, Path, description = "The alert's fingerprint")),
    responses(
        (status = 200, description = "The alert", body = AlertDetail),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such alert (now)", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn alert(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    UrlPath(fingerprint): UrlPath<String>,
) -> Result<Json<AlertDetail>, ApiError> {
    caller.require(Role::Viewer)?;
    let alerting = api.alerting()?;
    let wanted = fingerprint.clone();
    let (record, history) = read(alerting, "reading an alert", move |s| {
        let Some(record) = s
            .alert_records()?
            .into_iter()
            .find(|r| r.fingerprint == wanted)
        else {
            return Ok((None, Vec::new()));
        };
        let history = s.alert_history(&LogQuery {
            fingerprint: Some(wanted),
            before: None,
            limit: RECENT_HISTORY,
        })?;
        Ok((Some(record), history))
    })
    .await?;
    let Some(record) = record else {
        return Err(ApiError::not_found(format!(
            "no alert has fingerprint `{fingerprint}` (it may have resolved and been notified)"
        )));
    };
    Ok(Json(AlertDetail {
        alert: AlertView::of(record),
        history: history.into_iter().map(HistoryItem::of).collect(),
    }))
}

/// Filter and page of the alert history.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Only this alert's entries.
    fingerprint: Option<String>,
    /// Entries per page, 1 to 1000 (100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Where the page starts: `next_cursor` of the page before.
    #[param(pattern = "^(3[0-9]){1,18}$")]
    cursor: Option<String>,
}

/// A page of alert history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub items: Vec<HistoryItem>,
    /// Give it as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Alert history
///
/// What happened to alerts (pending, fired, resolved, acknowledged, escalated, silenced, …),
/// newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/alerts/history",
    tag = "alerts",
    params(HistoryParams),
    responses(
        (status = 200, description = "A page of history", body = HistoryPage),
        (status = 400, description = "A parameter is not valid", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn alert_history(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(p) = params?;
    let limit = page::limit(p.limit.as_deref())?;
    let before = page::id_cursor(p.cursor.as_deref())?;
    let alerting = api.alerting()?;
    let fingerprint = p.fingerprint;
    let (rows, next_cursor) = read(alerting, "reading alert history", move |s| {
        page::below(
            before,
            limit,
            |r: &HistoryRow| r.id,
            |_| true,
            |before, limit| {
                s.alert_history(&LogQuery {
                    fingerprint: fingerprint.clone(),
                    before,
                    limit,
                })
            },
        )
    })
    .await?;
    Ok(Json(HistoryPage {
        items: rows.into_iter().map(HistoryItem::of).collect(),
        next_cursor,
    }))
}

/// An acknowledgement.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Why, for the history and whoever looks next.
    pub comment: String,
}

/// Acknowledge an alert
///
/// Marks a firing alert as being handled: its escalation stops. The acknowledgement carries the
/// token's name. Needs an operator or admin token.
#[utoipa::path(
    post,
    path = "/api/v1/alerts/{fingerprint}/ack",
    tag = "alerts",
    params(("fingerprint" = String, Path, description = "The alert's fingerprint")),
    request_body = AckRequest,
    responses(
        (status = 200, description = "The alert, acknowledged", body = AlertView),
        (status = 400, description = "The request is not valid", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an operator or admin token", body = ErrorBody),
        (status = 404, description = "No such alert", body = ErrorBody),
        (status = 409, description = "The alert is not firing", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn acknowledge(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    UrlPath(fingerprint): UrlPath<String>,
    body: Result<Json<AckRequest>, JsonRejection>,
) -> Result<Json<AlertView>, ApiError> {
    caller.require(Role::Operator)?;
    let Json(req) = body?;
    let record = api
        .alerting()?
        .acknowledge(&fingerprint, &caller.name, &req.comment)
        .await
        .map_err(refused)?;
    tracing::info!(%fingerprint, rule = %record.rule, by = %caller.name, "Alert acknowledged.");
    Ok(Json(AlertView::of(record)))
}

/// Whether a silence applies now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SilenceState {
    /// It starts later.
    Pending,
    Active,
    Expired,
}

/// A silence: alerts matching all its matchers are not notified while it lasts.
#[derive(Debug, Serialize, ToSchema)]
pub struct SilenceView {
    pub id: String,
    /// As `name="value"`, `name!="value"`, `name=~"regex"` or `name!~"regex"`.
    pub matchers: Vec<String>,
    /// RFC 3339.
    pub starts_at: String,
    pub starts_ns: i64,
    /// RFC 3339.
    pub ends_at: String,
    pub ends_ns: i64,
    /// The name of the token that made it.
    pub author: String,
    pub comment: String,
    pub state: SilenceState,
}

impl SilenceView {
    fn of(s: StoredSilence, now_ns: i64) -> SilenceView {
        let state = if now_ns < s.starts_ns {
            SilenceState::Pending
        } else if now_ns < s.ends_ns {
            SilenceState::Active
        } else {
            SilenceState::Expired
        };
        SilenceView {
            starts_at: format_rfc3339(s.starts_ns),
            ends_at: format_rfc3339(s.ends_ns),
            id: s.id,
            matchers: s.matchers,
            starts_ns: s.starts_ns,
            ends_ns: s.ends_ns,
            author: s.author,
            comment: s.comment,
            state,
        }
    }
}

/// The silences.
#[derive(Debug, Serialize, ToSchema)]
pub struct SilenceList {
    /// Active first, then pending, then expired; within each, the latest to start first.
    pub items: Vec<SilenceView>,
}

/// List silences
///
/// Every silence kept: active, pending, and expired ones until the history retention forgets
/// them.
#[utoipa::path(
    get,
    path = "/api/v1/silences",
    tag = "alerts",
    responses(
        (status = 200, description = "The silences", body = SilenceList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn list_silences(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SilenceList>, ApiError> {
    caller.require(Role::Viewer)?;
    let alerting = api.alerting()?;
    let stored = read(alerting, "reading silences", |s| s.stored_silences()).await?;
    let now = now_ns();
    let mut items: Vec<SilenceView> = stored
        .into_iter()
        .map(|s| SilenceView::of(s, now))
        .collect();
    let rank = |s: SilenceState| match s {
        SilenceState::Active => 0,
        SilenceState::Pending => 1,
        SilenceState::Expired => 2,
    };
    items.sort_by(|a, b| {
        (rank(a.state), b.starts_ns, &a.id).cmp(&(rank(b.state), a.starts_ns, &b.id))
    });
    Ok(Json(SilenceList { items }))
}

/// A new silence.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSilenceRequest {
    /// Label matchers, all to hold: `name=value`, `name!=value`, `name=~regex`, `name!~regex`
    /// (the value may be in double quotes). At most 32.
    #[schema(value_type = Vec<LabelMatcherText>, min_items = 1, max_items = 32)]
    pub matchers: Vec<String>,
    /// When it starts, RFC 3339; now when absent.
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
    /// When it ends: RFC 3339, or a duration from its start such as `2h` or `30m`.
    #[schema(min_length = 1)]
    pub ends_at: String,
    /// Why: required, for whoever wonders later why alerts went unnotified.
    #[schema(min_length = 1)]
    pub comment: String,
}

/// When a silence asked for as `req` starts and ends, at `now_ns`.
pub(crate) fn silence_times(req: &NewSilenceRequest, now_ns: i64) -> Result<(i64, i64), ApiError> {
    let starts = match req.starts_at.as_deref() {
        None => now_ns,
        Some(text) => match crate::fim::parse_time(text) {
            Ok(TimeArg::At(ns)) => ns,
            _ => {
                return Err(ApiError::bad_parameter(
                    "starts_at",
                    format!("`{text}` is not an RFC 3339 time such as 2026-12-01T08:00:00Z"),
                ));
            }
        },
    };
    let ends = match crate::fim::parse_time(&req.ends_at) {
        Ok(TimeArg::At(ns)) => ns,
        Ok(TimeArg::Ago(d)) => starts.saturating_add(outpost_common::time::duration_ns(d)),
        Err(why) => return Err(ApiError::bad_parameter("ends_at", why)),
    };
    if ends <= starts {
        return Err(ApiError::bad_parameter(
            "ends_at",
            format!(
                "the silence would end ({}) before it starts ({})",
                format_rfc3339(ends),
                format_rfc3339(starts)
            ),
        ));
    }
    if ends <= now_ns {
        return Err(ApiError::bad_parameter(
            "ends_at",
            format!(
                "the silence would have ended already ({})",
                format_rfc3339(ends)
            ),
        ));
    }
    Ok((starts, ends))
}

/// Add a silence
///
/// Alerts matching all its matchers are not notified from its start to its end; they are kept,
/// listed and acknowledged as usual. Its author is the token's name. Needs an operator or admin
/// token.
#[utoipa::path(
    post,
    path = "/api/v1/silences",
    tag = "alerts",
    request_body = NewSilenceRequest,
    responses(
        (status = 201, description = "The silence", body = SilenceView),
        (status = 400, description = "The request is not valid: a matcher, a time, the comment", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an operator or admin token", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn create_silence(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewSilenceRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<SilenceView>), ApiError> {
    caller.require(Role::Operator)?;
    let Json(req) = body?;
    if req.matchers.is_empty() || req.matchers.len() > MAX_MATCHERS {
        return Err(ApiError::bad_parameter(
            "matchers",
            format!("a silence needs 1 to {MAX_MATCHERS} matchers"),
        ));
    }
    if req.comment.trim().is_empty() {
        return Err(ApiError::bad_parameter(
            "comment",
            "a silence needs a comment saying why",
        ));
    }
    let now = now_ns();
    let (starts_ns, ends_ns) = silence_times(&req, now)?;
    let alerting = api.alerting()?;
    let stored = alerting
        .add_silence(NewSilence {
            matchers: req.matchers,
            starts_ns,
            ends_ns,
            author: caller.name.clone(),
            comment: req.comment,
        })
        .await
        .map_err(refused)?;
    tracing::info!(id = %stored.id, matchers = ?stored.matchers, by = %caller.name, "Silence added.");
    Ok((StatusCode::CREATED, Json(SilenceView::of(stored, now))))
}

/// Expire a silence
///
/// Ends a silence now; its alerts are notified from the engine's next step if they still fire.
/// Needs an operator or admin token.
#[utoipa::path(
    delete,
    path = "/api/v1/silences/{id}",
    tag = "alerts",
    params(("id" = String, Path, description = "The silence's id")),
    responses(
        (status = 200, description = "The silence, ended", body = SilenceView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an operator or admin token", body = ErrorBody),
        (status = 404, description = "No such silence", body = ErrorBody),
        (status = 409, description = "The silence has already ended", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn expire_silence(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<SilenceView>, ApiError> {
    caller.require(Role::Operator)?;
    let stored = api.alerting()?.expire_silence(&id).await.map_err(refused)?;
    tracing::info!(%id, by = %caller.name, "Silence expired.");
    Ok(Json(SilenceView::of(stored, now_ns())))
}

/// A rule, with its alerts now.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    #[serde(flatten)]
    pub rule: RuleInfo,
    /// Its alerts pending now.
    pub pending: u64,
    /// Its alerts firing now.
    pub firing: u64,
}

/// The rules running, and how the last attempt to load them went.
#[derive(Debug, Serialize, ToSchema)]
pub struct RulesView {
    /// Where the rule files are.
    pub dir: String,
    pub rules: Vec<RuleView>,
    /// When the rules running now were loaded.
    pub loaded_ns: i64,
    /// The errors (`file:line:column: message`) of the last load, when it failed after the one
    /// that succeeded: the rules listed keep running.
    pub last_error: Option<Vec<String>>,
    pub last_error_ns: Option<i64>,
}

/// `status` with each rule's pending and firing alerts, counted from the stored records.
async fn rules_view(alerting: &AlertingHandle, status: RulesStatus) -> Result<RulesView, ApiError> {
    let records = read(alerting, "reading alerts", |s| s.alert_records()).await?;
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &records {
        let c = counts.entry(r.rule.clone()).or_default();
        match AlertStateName::of(r.state) {
            AlertStateName::Pending => c.0 += 1,
            AlertStateName::Firing => c.1 += 1,
            AlertStateName::Resolved => {}
        }
    }
    Ok(RulesView {
        dir: status.dir,
        rules: status
            .rules
            .into_iter()
            .map(|rule| {
                let (pending, firing) = counts.get(&rule.name).copied().unwrap_or_default();
                RuleView {
                    rule,
                    pending,
                    firing,
                }
            })
            .collect(),
        loaded_ns: status.loaded_ns,
        last_error: status.last_error,
        last_error_ns: status.last_error_ns,
    })
}

/// List rules
///
/// The rules running, each with its pending and firing alerts, and the errors of the last
/// reload if it failed.
#[utoipa::path(
    get,
    path = "/api/v1/rules",
    tag = "rules",
    responses(
        (status = 200, description = "The rules", body = RulesView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn rules(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<RulesView>, ApiError> {
    caller.require(Role::Viewer)?;
    let alerting = api.alerting()?;
    Ok(Json(rules_view(alerting, alerting.rules()).await?))
}

/// Reload rules
///
/// Reads the rule files again. When one does not load, nothing changes: the rules loaded before
/// keep running, and the answer lists every error with its file, line and column. Needs an admin
/// token.
#[utoipa::path(
    post,
    path = "/api/v1/rules/reload",
    tag = "rules",
    responses(
        (status = 200, description = "The rules now running", body = RulesView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 422, description = "The rules do not load; `details.errors` says where", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn reload_rules(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<RulesView>, ApiError> {
    caller.require(Role::Admin)?;
    let alerting = api.alerting()?;
    let status = alerting.reload().await.map_err(refused)?;
    tracing::info!(rules = status.rules.len(), by = %caller.name, "Rules reloaded through the API.");
    Ok(Json(rules_view(alerting, status).await?))
}

/// What is wrong with a rule file.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleFileError {
    /// The whole error, `request.toml:LINE:COLUMN: what` where it has a place.
    pub message: String,
    /// 1-based, when the error has a place.
    pub line: Option<usize>,
    /// 1-based, in characters, when the error has a place.
    pub column: Option<usize>,
}

/// What a rule file holds, or why it does not load.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleValidation {
    /// Whether the file would load.
    pub valid: bool,
    /// Its rules, when it loads (their `file` is `request.toml`).
    pub rules: Vec<RuleInfo>,
    pub error: Option<RuleFileError>,
}

/// Validate a rule file
///
/// Checks a rule file's TOML text, sent as the body, as a reload would check it, without loading
/// anything: answers its rules, or the error with its line and column. A file whose composite
/// rules name rules of other files is checked alone, so only a reload tells whether those exist.
/// Needs an admin token.
#[utoipa::path(
    post,
    path = "/api/v1/rules/validate",
    tag = "rules",
    request_body(
        content = Option<String>,
        content_type = "text/plain",
        description = "A rule file's TOML text; an empty text is a file without rules"
    ),
    responses(
        (status = 200, description = "Whether the file is valid, its rules or its error", body = RuleValidation),
        (status = 400, description = "The body is not UTF-8", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn validate_rules(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RuleValidation>, ApiError> {
    caller.require(Role::Admin)?;
    let body = body?;
    api.alerting()?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not UTF-8 text: {e}")))?;
    let answer = match crate::rules::file::parse_file(Path::new("request.toml"), text) {
        Ok(rules) => RuleValidation {
            valid: true,
            rules: rules.iter().map(RuleInfo::of).collect(),
            error: None,
        },
        Err(e) => {
            let (line, column) = match &e {
                ConfigError::Parse { line, column, .. } => (Some(*line), Some(*column)),
                _ => (None, None),
            };
            RuleValidation {
                valid: false,
                rules: Vec::new(),
                error: Some(RuleFileError {
                    message: e.to_string(),
                    line,
                    column,
                }),
            }
        }
    };
    Ok(Json(answer))
}

/// One alert of a notification.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotifiedAlert {
    pub fingerprint: String,
    #[schema(pattern = "^(firing|resolved)$")]
    pub status: &'static str,
    pub labels: BTreeMap<String, String>,
}

/// One notification: a group's alerts for one receiver, and how sending it went.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    /// Its place in the log; newer notifications have higher ids.
    pub id: i64,
    pub receiver: String,
    /// Identifies the group over its life.
    pub group_key: String,
    /// Firing if any of its alerts fires.
    #[schema(pattern = "^(firing|resolved)$")]
    pub status: &'static str,
    /// 0 for a route's notification; n for the n-th stage of an escalation.
    pub escalation: u32,
    pub alerts: Vec<NotifiedAlert>,
    /// `pending` (not sent yet, or to be tried again), `sent` or `failed`.
    #[schema(pattern = "^(pending|sent|failed)$")]
    pub state: &'static str,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was made, RFC 3339.
    pub created_at: String,
    pub created_ns: i64,
    /// When the next attempt is due, while pending.
    pub next_attempt_ns: Option<i64>,
    /// When the receiver confirmed it, RFC 3339.
    pub sent_at: Option<String>,
    pub sent_ns: Option<i64>,
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Firing => "firing",
        Status::Resolved => "resolved",
    }
}

impl NotificationView {
    fn of(e: OutboxEntry) -> NotificationView {
        let pending = e.state == crate::store::alerting::OutboxState::Pending;
        let status = status_name(e.message.status());
        let Message {
            receiver,
            group_key,
            alerts,
            escalation,
            created_ns,
            ..
        } = e.message;
        NotificationView {
            id: e.id,
            status,
            receiver,
            group_key,
            escalation,
            alerts: alerts
                .into_iter()
                .map(|a| NotifiedAlert {
                    fingerprint: a.fingerprint,
                    status: status_name(a.status),
                    labels: a.labels,
                })
                .collect(),
            state: e.state.as_str(),
            attempts: e.attempts,
            last_error: e.last_error,
            created_at: format_rfc3339(created_ns),
            created_ns,
            next_attempt_ns: pending.then_some(e.next_attempt_ns),
            sent_at: e.sent_ns.map(format_rfc3339),
            sent_ns: e.sent_ns,
        }
    }
}

/// Filters and page of the notification log.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationParams {
    /// Only notifications that carry this alert.
    fingerprint: Option<String>,
    /// Only notifications for this receiver.
    receiver: Option<String>,
    /// Notifications per page, 1 to 1000 (100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Where the page starts: `next_cursor` of the page before.
    #[param(pattern = "^(3[0-9]){1,18}$")]
    cursor: Option<String>,
}

/// A page of the notification log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationView>,
    /// Where to go on; absent on the last page. With `receiver`, a page may come back short
    /// (even empty) with a `next_cursor`: each page looks at a bounded number of notifications.
    pub next_cursor: Option<String>,
}

/// The notification log
///
/// Every notification made, newest first: its receiver, alerts, state, attempts, last error and
/// when it was sent.
#[utoipa::path(
    get,
    path = "/api/v1/notifications",
    tag = "alerts",
    params(NotificationParams),
    responses(
        (status = 200, description = "A page of notifications", body = NotificationPage),
        (status = 400, description = "A parameter is not valid", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Alerting is disabled", body = ErrorBody),
    )
)]
pub async fn notifications(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<NotificationParams>, QueryRejection>,
) -> Result<Json<NotificationPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(p) = params?;
    let limit = page::limit(p.limit.as_deref())?;
    let before = page::id_cursor(p.cursor.as_deref())?;
    let alerting = api.alerting()?;
    let (fingerprint, receiver) = (p.fingerprint, p.receiver);
    let (entries, next_cursor) = read(alerting, "reading notifications", move |s| {
        page::below(
            before,
            limit,
            |e: &OutboxEntry| e.id,
            |e| receiver.as_ref().is_none_or(|r| &e.message.receiver == r),
            |before, limit| {
                s.notifications(&LogQuery {
                    fingerprint: fingerprint.clone(),
                    before,
                    limit,
                })
            },
        )
    })
    .await?;
    Ok(Json(NotificationPage {
        items: entries.into_iter().map(NotificationView::of).collect(),
        next_cursor,
    }))
}
