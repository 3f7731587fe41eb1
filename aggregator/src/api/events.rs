//! `/api/v1/logs` and `/api/v1/fim`: stored log records and file-integrity changes, filtered,
//! oldest first, a page at a time.
//!
//! Both read the store in commit order from the cursor on and keep what matches. A page ends
//! when it holds `limit` items or after [`SCAN_PER_PAGE`] stored events were looked at,
//! whichever comes first, so a filter that matches little costs a bounded amount per request:
//! `next_cursor` then says where to go on (a page may come back short, even empty, with a
//! `next_cursor`); it is absent once everything stored so far was looked at.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::{Extension, Json};
use outpost_common::event::{Event, EventKind, Severity};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{Api, ApiError, Caller, page};
use crate::store::{Cursor, EventQuery, StoredEvent};
use crate::tokens::Role;

/// Stored events looked at for one page at most.
pub const SCAN_PER_PAGE: usize = 50_000;

/// Filters and page of the log search.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Only this agent's records.
    agent_id: Option<String>,
    /// Only records of this source (a file path, `journal`, …).
    source: Option<String>,
    /// Only records at least this severe: emergency, alert, critical, error, warning, notice,
    /// info or debug (records without a severity are left out).
    #[param(value_type = Option<String>, pattern = "^(emergency|alert|critical|error|warning|notice|info|debug)$")]
    severity: Option<String>,
    /// Only records whose body contains this text.
    contains: Option<String>,
    /// Only records whose body matches this regular expression (Rust `regex` syntax, at most 1
    /// KiB).
    #[param(max_length = 1024)]
    regex: Option<String>,
    /// Only records at or after this time (nanoseconds since the epoch, the agent's clock).
    since_ns: Option<i64>,
    /// Only records before this time.
    until_ns: Option<i64>,
    /// Items per page, 1 to 1000 (100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Where the page starts: `next_cursor` of the page before.
    #[param(pattern = "^c[0-9a-f]{1,16}$")]
    cursor: Option<String>,
}

/// Filters and page of the file-integrity changes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FimParams {
    /// Only this agent's changes.
    agent_id: Option<String>,
    /// Only paths starting with this (`/etc/` for everything below `/etc`).
    path_prefix: Option<String>,
    /// Only this kind of change.
    #[param(value_type = Option<String>, pattern = "^(created|modified|metadata_changed|deleted|moved|type_changed)$")]
    change: Option<String>,
    /// Only changes at or after this time (nanoseconds since the epoch, the agent's clock).
    since_ns: Option<i64>,
    /// Only changes before this time.
    until_ns: Option<i64>,
    /// Items per page, 1 to 1000 (100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Where the page starts: `next_cursor` of the page before.
    #[param(pattern = "^c[0-9a-f]{1,16}$")]
    cursor: Option<String>,
}

/// A page of stored events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventItems {
    /// Oldest first. Logs: `cursor`, `agent_id`, `time_ns`, `received_ns`, `source`, `severity`,
    /// `body`, `attributes`. Changes: as `outpost-aggregator fim list --json` prints them.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
    /// Where to go on; absent once everything stored so far was looked at.
    pub next_cursor: Option<String>,
}

fn cursor(text: Option<&str>) -> Result<Cursor, ApiError> {
    text.map_or(Ok(Cursor::START), |t| {
        t.parse::<Cursor>().map_err(|e| {
            ApiError::bad_parameter("cursor", format!("query parameter `cursor`: {e}"))
        })
    })
}

/// The time range of `since_ns` and `until_ns`; one that ends before it starts matches nothing.
fn time_range(since: Option<i64>, until: Option<i64>) -> Option<std::ops::Range<i64>> {
    match (since, until) {
        (None, None) => None,
        (s, u) => {
            let start = s.unwrap_or(i64::MIN);
            Some(start..u.unwrap_or(i64::MAX).max(start))
        }
    }
}

/// The page size, the cursor to start from and the time range of a request.
fn window(
    limit: Option<&str>,
    cursor_text: Option<&str>,
    since_ns: Option<i64>,
    until_ns: Option<i64>,
) -> Result<(usize, Cursor, Option<std::ops::Range<i64>>), ApiError> {
    Ok((
        page::limit(limit)?,
        cursor(cursor_text)?,
        time_range(since_ns, until_ns),
    ))
}

/// Reads `kind` events from `from` on, keeping those `keep` turns into items, until `limit`
/// items or [`SCAN_PER_PAGE`] events looked at.
async fn scan(
    api: &Arc<Api>,
    mut query: EventQuery,
    limit: usize,
    keep: impl Fn(&StoredEvent) -> Option<Value> + Send + 'static,
) -> Result<EventItems, ApiError> {
    api.store("searching stored events", move |s| {
        let mut items = Vec::new();
        let mut looked = 0;
        loop {
            query.limit = 1000.min(SCAN_PER_PAGE - looked).max(1);
            let page = s.events(&query)?;
            for e in &page.events {
                looked += 1;
                if let Some(item) = keep(e) {
                    items.push(item);
                    if items.len() == limit {
                        return Ok(EventItems {
                            items,
                            next_cursor: Some(e.cursor.advance(1).to_string()),
                        });
                    }
                }
            }
            let Some(next) = page.next else {
                return Ok(EventItems {
                    items,
                    next_cursor: None,
                });
            };
            query.from = next;
            if looked >= SCAN_PER_PAGE {
                return Ok(EventItems {
                    items,
                    next_cursor: Some(next.to_string()),
                });
            }
        }
    })
    .await
}

/// Search logs
///
/// Stored log records of the fleet or one agent, filtered by source, severity, text or regular
/// expression and time, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/logs",
    tag = "events",
    params(LogParams),
    responses(
        (status = 200, description = "A page of log records", body = EventItems),
        (status = 400, description = "A parameter is not valid", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn logs(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<LogParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventItems>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(p) = params?;
    let (limit, from, time_ns) = window(
        p.limit.as_deref(),
        p.cursor.as_deref(),
        p.since_ns,
        p.until_ns,
    )?;
    let severity = p
        .severity
        .as_deref()
        .map(|s| {
            Severity::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
                ApiError::bad_parameter(
                    "severity",
                    format!("query parameter `severity`: `{s}` is not a severity (emergency … debug)"),
                )
            })
        })
        .transpose()?;
    let regex = p
        .regex
        .as_deref()
        .map(|r| {
            regex::RegexBuilder::new(r)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    ApiError::bad_parameter("regex", format!("query parameter `regex`: {e}"))
                })
        })
        .transpose()?;
    if p.regex.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err(ApiError::bad_parameter(
            "regex",
            "query parameter `regex` is longer than 1 KiB",
        ));
    }
    let query = EventQuery {
        kind: Some(EventKind::Log),
        agent_id: p.agent_id.clone(),
        time_ns,
        from,
        until: None,
        limit: 1000,
    };
    let (source, contains) = (p.source, p.contains);
    let page = scan(&api, query, limit, move |e| {
        let Event::Log(l) = &e.event else { return None };
        let keep = source.as_ref().is_none_or(|s| &l.source == s)
            // Severities are ordered most severe first.
            && severity.is_none_or(|min| l.severity.is_some_and(|s| s <= min))
            && contains.as_ref().is_none_or(|c| l.body.contains(c.as_str()))
            && regex.as_ref().is_none_or(|r| r.is_match(&l.body));
        keep.then(|| {
            json!({
                "cursor": e.cursor.to_string(),
                "agent_id": e.agent_id,
                "time_ns": l.time_ns,
                "received_ns": e.received_ns,
                "source": l.source,
                "severity": l.severity.map(Severity::as_str),
                "body": l.body,
                "attributes": l.attributes,
            })
        })
    })
    .await?;
    Ok(Json(page))
}

/// File-integrity changes
///
/// Stored changes of the fleet or one agent, filtered by path prefix, kind of change and time,
/// oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/fim",
    tag = "events",
    params(FimParams),
    responses(
        (status = 200, description = "A page of changes", body = EventItems),
        (status = 400, description = "A parameter is not valid", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn fim(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<FimParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventItems>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(p) = params?;
    let (limit, from, time_ns) = window(
        p.limit.as_deref(),
        p.cursor.as_deref(),
        p.since_ns,
        p.until_ns,
    )?;
    let change = p
        .change
        .as_deref()
        .map(|c| {
            crate::fim::parse_change(c).map_err(|e| {
                ApiError::bad_parameter("change", format!("query parameter `change`: {e}"))
            })
        })
        .transpose()?;
    let query = EventQuery {
        kind: Some(EventKind::Fim),
        agent_id: p.agent_id.clone(),
        time_ns,
        from,
        until: None,
        limit: 1000,
    };
    let prefix = p.path_prefix;
    let page = scan(&api, query, limit, move |e| {
        let Event::Fim(f) = &e.event else { return None };
        let keep = prefix
            .as_ref()
            .is_none_or(|p| f.path.starts_with(p.as_str()))
            && change.is_none_or(|c| f.change == c);
        keep.then(|| crate::fim::change_json(e)).flatten()
    })
    .await?;
    Ok(Json(page))
}
