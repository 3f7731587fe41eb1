//! `/api/v1/agents`: the fleet, its counts, and one agent in detail.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Api, ApiError, Caller, page};
use crate::fleet::{FleetEntry, HostStatus};
use crate::tokens::Role;

/// Filters, order and page of the agent list. Unknown parameters are ignored.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentListParams {
    /// Only agents with this status.
    #[param(value_type = Option<HostStatus>)]
    status: Option<String>,
    /// Only agents whose operating system is this (as `os` in the agent's host facts).
    os: Option<String>,
    /// Only agents of this version.
    version: Option<String>,
    /// Only agents whose id starts with this.
    name_prefix: Option<String>,
    /// Only agents with this label, as `key=value` (`key=` for an empty value).
    #[param(pattern = "^[A-Za-z][A-Za-z0-9_.-]{0,62}=")]
    label: Option<String>,
    /// `name` (the default, A to Z) or `last_seen` (most recent first).
    #[param(value_type = Option<AgentSort>)]
    sort: Option<String>,
    /// Agents per page, 1 to 1000 (100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Where the page starts: `next_cursor` of the page before.
    #[param(pattern = "^([0-9a-f]{2})+$")]
    cursor: Option<String>,
}

/// The orders of the agent list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentSort {
    Name,
    LastSeen,
}

/// A page of agents.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentPage {
    pub items: Vec<FleetEntry>,
    /// Give it as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The fleet in counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetSummary {
    pub total: u64,
    /// Agents per status (`online`, `degraded`, `offline`, `never_seen`), every status present.
    pub by_status: BTreeMap<String, u64>,
    /// Agents per version (`unknown` when never seen).
    pub by_version: BTreeMap<String, u64>,
    /// Agents per operating system (`unknown` when never seen).
    pub by_os: BTreeMap<String, u64>,
}

/// One agent in detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub entry: FleetEntry,
    pub first_seen_ns: Option<i64>,
    /// When the agent process started, by its clock.
    pub agent_started_ns: Option<i64>,
    /// The host's facts from the agent's latest Hello.
    #[schema(value_type = Option<Object>)]
    pub host: Option<serde_json::Value>,
    /// The spool: bytes used, its cap, and events and batches not acknowledged yet.
    #[schema(value_type = Option<Object>)]
    pub spool: Option<serde_json::Value>,
    /// Events dropped since the spool was created, by reason.
    #[schema(value_type = Option<Object>)]
    pub drops: Option<serde_json::Value>,
    /// Collectors failing now, with their errors.
    #[schema(value_type = Option<Vec<Object>>)]
    pub collector_errors: Option<serde_json::Value>,
    /// The log file sources at a glance: files open, lag, bytes given up.
    #[schema(value_type = Option<Object>)]
    pub logs: Option<serde_json::Value>,
    pub last_disconnect_ns: Option<i64>,
    pub last_disconnect_reason: Option<String>,
}

fn parse_status(text: &str) -> Result<HostStatus, ApiError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        ApiError::bad_parameter(
            "status",
            format!(
                "query parameter `status`: `{text}` is not one of online, degraded, offline, never_seen"
            ),
        )
    })
}

fn parse_sort(text: Option<&str>) -> Result<AgentSort, ApiError> {
    match text {
        None | Some("name") => Ok(AgentSort::Name),
        Some("last_seen") => Ok(AgentSort::LastSeen),
        Some(other) => Err(ApiError::bad_parameter(
            "sort",
            format!("query parameter `sort`: `{other}` is not `name` or `last_seen`"),
        )),
    }
}

/// List agents
///
/// The fleet, one page at a time, filtered and sorted.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "fleet",
    params(AgentListParams),
    responses(
        (status = 200, description = "A page of agents", body = AgentPage),
        (status = 400, description = "A parameter is not valid", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn list_agents(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<AgentListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AgentPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(p) = params?;
    let status = p.status.as_deref().map(parse_status).transpose()?;
    let sort = parse_sort(p.sort.as_deref())?;
    let limit = page::limit(p.limit.as_deref())?;
    let label = p
        .label
        .as_deref()
        .map(|l| {
            l.split_once('=').ok_or_else(|| {
                ApiError::bad_parameter(
                    "label",
                    format!("query parameter `label`: `{l}` is not `key=value`"),
                )
            })
        })
        .transpose()?;
    let view = api.fleet_view().await?;
    let matches = |e: &FleetEntry| {
        status.is_none_or(|s| e.status == s)
            && p.os.as_ref().is_none_or(|os| e.os.as_ref() == Some(os))
            && p.version
                .as_ref()
                .is_none_or(|v| e.version.as_ref() == Some(v))
            && p.name_prefix
                .as_ref()
                .is_none_or(|n| e.agent_id.starts_with(n.as_str()))
            && label.is_none_or(|(k, v)| e.labels.get(k).is_some_and(|have| have == v))
    };
    let after = p.cursor.as_deref().map(page::decode).transpose()?;
    // Both orders are kept sorted by their keys: the page starts at the first key after the
    // cursor, found by bisection, and reads on until it holds one more than asked.
    let ordered: Vec<(&str, &FleetEntry)> = match sort {
        AgentSort::Name => {
            let from = after.as_deref().map_or(0, |a| {
                view.entries.partition_point(|e| e.agent_id.as_str() <= a)
            });
            view.entries[from..]
                .iter()
                .filter(|e| matches(e))
                .take(limit + 1)
                .map(|e| (e.agent_id.as_str(), e))
                .collect()
        }
        AgentSort::LastSeen => {
            let from = after.as_deref().map_or(0, |a| {
                view.by_last_seen.partition_point(|(k, _)| k.as_str() <= a)
            });
            view.by_last_seen[from..]
                .iter()
                .map(|(k, i)| (k.as_str(), &view.entries[*i]))
                .filter(|(_, e)| matches(e))
                .take(limit + 1)
                .collect()
        }
    };
    let next_cursor = (ordered.len() > limit).then(|| page::encode(ordered[limit - 1].0));
    let items = ordered
        .into_iter()
        .take(limit)
        .map(|(_, e)| e.clone())
        .collect();
    Ok(Json(AgentPage { items, next_cursor }))
}

/// Fleet summary
///
/// How many agents there are, by status, version and operating system.
#[utoipa::path(
    get,
    path = "/api/v1/agents/summary",
    tag = "fleet",
    responses(
        (status = 200, description = "The counts", body = FleetSummary),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn summary(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<FleetSummary>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(api.fleet_view().await?.summary.clone()))
}

pub(super) fn status_name(s: HostStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One agent
///
/// An agent's status with its reason, host facts, latest host metrics, spool, drops by reason,
/// failing collectors, clock skew and log lag.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}",
    tag = "fleet",
    params(("agent_id" = String, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "The agent", body = AgentDetail),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 404, description = "No such agent", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn agent(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(agent_id): Path<String>,
) -> Result<Json<AgentDetail>, ApiError> {
    caller.require(Role::Viewer)?;
    let view = api.fleet_view().await?;
    let Some(entry) = view.entry(&agent_id).cloned() else {
        return Err(ApiError::not_found(format!("no agent `{agent_id}`")));
    };
    let id = agent_id.clone();
    let record = api.store("reading an agent", move |s| s.agent(&id)).await?;
    let json = |v: Option<serde_json::Value>| v.filter(|v| !v.is_null());
    let status = record.as_ref().and_then(|r| r.status.as_ref());
    Ok(Json(AgentDetail {
        entry,
        first_seen_ns: record.as_ref().map(|r| r.first_seen_ns),
        agent_started_ns: status.map(|s| s.started_ns),
        host: json(
            record
                .as_ref()
                .and_then(|r| serde_json::to_value(&r.host).ok()),
        ),
        spool: status.map(|s| {
            serde_json::json!({
                "bytes": s.spool_bytes,
                "cap_bytes": s.spool_cap_bytes,
                "events": s.spool_events,
                "batches": s.backlog_batches,
            })
        }),
        drops: json(status.and_then(|s| serde_json::to_value(&s.drops).ok())),
        collector_errors: json(status.and_then(|s| serde_json::to_value(&s.collector_errors).ok())),
        logs: json(status.and_then(|s| serde_json::to_value(&s.logs).ok())),
        last_disconnect_ns: record.as_ref().and_then(|r| r.last_disconnect_ns),
        last_disconnect_reason: record.and_then(|r| r.last_disconnect_reason),
    }))
}
