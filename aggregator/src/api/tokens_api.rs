//! `/api/v1/tokens` and `/api/v1/audit`: token management and the audit log, for admins.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Api, ApiError, Caller, page};
use crate::store::AuditEntry;
use crate::tokens::{self, Role, TokenRecord};

/// A token as lists show it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_ns: i64,
    pub expires_ns: Option<i64>,
    pub revoked_ns: Option<i64>,
    pub last_used_ns: Option<i64>,
    /// Neither revoked nor expired.
    pub active: bool,
}

impl TokenInfo {
    fn of(t: TokenRecord, now_ns: i64) -> TokenInfo {
        TokenInfo {
            active: t.active(now_ns),
            id: t.id,
            name: t.name,
            role: t.role,
            created_ns: t.created_ns,
            expires_ns: t.expires_ns,
            revoked_ns: t.revoked_ns,
            last_used_ns: t.last_used_ns,
        }
    }
}

/// A page of tokens, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPage {
    pub items: Vec<TokenInfo>,
    pub next_cursor: Option<String>,
}

/// Page of a list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 1000 (100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Where the page starts: `next_cursor` of the page before.
    #[param(pattern = "^([0-9a-f]{2})+$")]
    cursor: Option<String>,
}

/// Page of the audit log.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Entries per page, 1 to 1000 (100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Where the page starts: `next_cursor` of the page before.
    #[param(pattern = "^(3[0-9]){1,18}$")]
    cursor: Option<String>,
}

/// List tokens
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    params(PageParams),
    responses(
        (status = 200, description = "A page of tokens, newest first", body = TokenPage),
        (status = 400, description = "A parameter is not valid", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn list_tokens(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TokenPage>, ApiError> {
    caller.require(Role::Admin)?;
    let Query(p) = params?;
    let limit = page::limit(p.limit.as_deref())?;
    let all = api.store("listing tokens", |s| s.tokens()).await?;
    let key = |t: &TokenRecord| format!("{}:{}", page::newest_first(Some(t.created_ns)), t.id);
    let (items, next_cursor) = page::page(all, key, p.cursor.as_deref(), limit)?;
    let now = outpost_common::time::now_ns();
    Ok(Json(TokenPage {
        items: items.into_iter().map(|t| TokenInfo::of(t, now)).collect(),
        next_cursor,
    }))
}

/// What a new token is to be.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    /// 1 to 64 letters, digits, `.`, `_` or `-`; unique among tokens not revoked.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    pub role: Role,
    /// How long it is valid: 1 to 9999 seconds, minutes, hours or days, e.g. `90d` or `12h`;
    /// forever when absent.
    #[schema(pattern = "^[1-9][0-9]{0,3}[smhd]$")]
    pub expires_in: Option<String>,
}

/// A token just created: the only time its text is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// Send it as `Authorization: Bearer <token>`. Shown once.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// Create a token
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body = NewTokenRequest,
    responses(
        (status = 201, description = "The token, shown once", body = CreatedToken),
        (status = 400, description = "The request is not valid", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin token", body = super::error::ErrorBody),
        (status = 409, description = "A token not revoked has this name", body = super::error::ErrorBody),
        (status = 413, description = "The body is too large", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn create_token(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    caller.require(Role::Admin)?;
    let Json(req) = body?;
    tokens::check_name(&req.name).map_err(|e| ApiError::bad_parameter("name", e))?;
    let now = outpost_common::time::now_ns();
    let expires_ns = req
        .expires_in
        .as_deref()
        .map(|text| expiry(text, now))
        .transpose()
        .map_err(|e| ApiError::bad_parameter("expires_in", e))?;
    let made = tokens::create(&req.name, req.role, now, expires_ns);
    let record = made.record.clone();
    api.store("storing a token", move |s| s.insert_token(&record))
        .await?;
    tracing::info!(token = %made.record.name, id = %made.record.id, role = %made.record.role, by = %caller.name, "API token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: made.text,
            info: TokenInfo::of(made.record, now),
        }),
    ))
}

/// When a token given `text` (`90d`) of validity from `now_ns` expires.
pub fn expiry(text: &str, now_ns: i64) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a validity such as 90d or 12h (1 to 9999 s, m, h or d)");
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number
        .parse()
        .ok()
        .filter(|n| {
            (1..=9999).contains(n)
                && !number.starts_with('0')
                && number.bytes().all(|b| b.is_ascii_digit())
        })
        .ok_or_else(bad)?;
    let d = humantime::parse_duration(&format!("{n}{unit}")).map_err(|_| bad())?;
    if !matches!(unit, "s" | "m" | "h" | "d") {
        return Err(bad());
    }
    let ns = i64::try_from(d.as_nanos()).map_err(|_| format!("`{text}` is too long"))?;
    now_ns
        .checked_add(ns)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Revoke a token
///
/// By id, or by the name of a token not revoked. Revoking a revoked token changes nothing.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "The token's id, or the name of a token not revoked")),
    responses(
        (status = 200, description = "The token, revoked", body = TokenInfo),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin token", body = super::error::ErrorBody),
        (status = 404, description = "No such token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn revoke_token(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(token): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    caller.require(Role::Admin)?;
    let now = outpost_common::time::now_ns();
    let which = token.clone();
    let revoked = api
        .store("revoking a token", move |s| s.revoke_token(&which, now))
        .await?;
    let Some(record) = revoked else {
        return Err(ApiError::not_found(format!("no token `{token}`")));
    };
    tracing::info!(token = %record.name, id = %record.id, by = %caller.name, "API token revoked");
    Ok(Json(TokenInfo::of(record, now)))
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

/// The audit log
///
/// Every call that changed something or was refused (401, 403, 429), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "tokens",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of the audit log", body = AuditPage),
        (status = 400, description = "A parameter is not valid", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn audit(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(Role::Admin)?;
    let Query(p) = params?;
    let limit = page::limit(p.limit.as_deref())?;
    let before = page::id_cursor(p.cursor.as_deref())?;
    let (items, next_cursor) = api
        .store("reading the audit log", move |s| {
            page::below(
                before,
                limit,
                |e: &AuditEntry| e.id,
                |_| true,
                |b, n| s.audit(b, n),
            )
        })
        .await?;
    Ok(Json(AuditPage { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validities_are_a_number_and_a_unit() {
        const DAY: i64 = 86_400 * 1_000_000_000;
        assert_eq!(expiry("90d", 5), Ok(5 + 90 * DAY));
        assert_eq!(expiry("12h", 0), Ok(12 * 3600 * 1_000_000_000));
        assert_eq!(expiry("9999s", 0), Ok(9999 * 1_000_000_000));
        for bad in [
            "", "0d", "05d", "+5d", "10000d", "1 h", "1w", "d", "1.5h", "-1d", "1hh",
        ] {
            assert!(expiry(bad, 0).is_err(), "{bad}");
        }
    }
}
