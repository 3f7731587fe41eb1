//! `/api/v1/enrollment-tokens`, `/api/v1/certificates` and `DELETE /api/v1/agents/{agent_id}`:
//! enrollment tokens, agent certificates and removing an agent, for admins (certificates for
//! viewers). Mutating calls are audited by the guard like every other.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Api, ApiError, Caller};
use crate::agents_cli::Removed;
use crate::enroll::token::{self, EnrollmentToken, TokenSpec};
use crate::pki::IssuedCert;
use crate::tokens::Role;

/// An enrollment token as lists show it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentTokenInfo {
    pub id: String,
    pub created_ns: i64,
    pub expires_ns: i64,
    /// Enrollments it allows; absent: any number until it expires.
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub labels: BTreeMap<String, String>,
    pub allow_reenroll: bool,
    pub revoked_ns: Option<i64>,
    /// `active`, `expired`, `used up` or `revoked`.
    pub state: String,
}

impl EnrollmentTokenInfo {
    fn of(t: EnrollmentToken, now_ns: i64) -> EnrollmentTokenInfo {
        EnrollmentTokenInfo {
            state: t.state(now_ns).to_owned(),
            id: t.id,
            created_ns: t.created_ns,
            expires_ns: t.expires_ns,
            max_uses: t.max_uses,
            uses: t.uses,
            labels: t.labels.into_iter().collect(),
            allow_reenroll: t.allow_reenroll,
            revoked_ns: t.revoked_ns,
        }
    }
}

/// What a new enrollment token is to be.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentTokenRequest {
    /// How long it is valid: 1 to 9999 seconds, minutes, hours or days (`24h` when absent).
    #[schema(pattern = "^[1-9][0-9]{0,3}[smhd]$")]
    pub expires_in: Option<String>,
    /// Enrollments it allows (1 when absent), at most a million.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000000)]
    #[serde(default, deserialize_with = "whole_uses")]
    pub uses: Option<u32>,
    /// Labels for every agent enrolled with it.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where agents enroll, `host:port`, tried in order; by default the server certificate's
    /// DNS names and IP addresses with the ingest port.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// It may enroll an id another live agent holds.
    #[serde(default)]
    pub allow_reenroll: bool,
}

/// Reads `uses` as JSON Schema counts integers: any whole number, `106.0` included, from 1 to a
/// million; anything else is refused as a bad request.
fn whole_uses<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let Some(n) = Option::<f64>::deserialize(d)? else {
        return Ok(None);
    };
    if n.fract() != 0.0 || !(1.0..=1_000_000.0).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "uses: {n} is not a whole number from 1 to 1000000"
        )));
    }
    Ok(Some(n as u32))
}

/// An enrollment token just created: the only time its text is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEnrollmentToken {
    /// Give it to `outpost-agent enroll`. Shown once.
    pub token: String,
    pub endpoints: Vec<String>,
    #[serde(flatten)]
    pub info: EnrollmentTokenInfo,
}

/// List enrollment tokens
#[utoipa::path(
    get,
    path = "/api/v1/enrollment-tokens",
    tag = "enrollment",
    responses(
        (status = 200, description = "Every enrollment token, newest first", body = Vec<EnrollmentTokenInfo>),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn list_enrollment_tokens(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<EnrollmentTokenInfo>>, ApiError> {
    caller.require(Role::Admin)?;
    let all = api
        .store("listing enrollment tokens", |s| s.enrollment_tokens())
        .await?;
    let now = outpost_common::time::now_ns();
    Ok(Json(
        all.into_iter()
            .map(|t| EnrollmentTokenInfo::of(t, now))
            .collect(),
    ))
}

/// Create an enrollment token
#[utoipa::path(
    post,
    path = "/api/v1/enrollment-tokens",
    tag = "enrollment",
    request_body = NewEnrollmentTokenRequest,
    responses(
        (status = 201, description = "The token, shown once", body = CreatedEnrollmentToken),
        (status = 400, description = "The request is not valid", body = super::error::ErrorBody),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin token", body = super::error::ErrorBody),
        (status = 413, description = "The body is too large", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
        (status = 503, description = "No PKI directory or ingest service to enroll at", body = super::error::ErrorBody),
    )
)]
pub async fn create_enrollment_token(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    body: Result<
        Json<serde_json::Map<String, serde_json::Value>>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Result<(StatusCode, Json<CreatedEnrollmentToken>), ApiError> {
    caller.require(Role::Admin)?;
    // An object, and only an object: serde would also read the struct from an array.
    let Json(object) = body?;
    let req: NewEnrollmentTokenRequest = serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))?;
    let now = outpost_common::time::now_ns();
    let expires_ns = super::expiry(req.expires_in.as_deref().unwrap_or("24h"), now)
        .map_err(|e| ApiError::bad_parameter("expires_in", e))?;
    let dir = api
        .tls_dir
        .clone()
        .ok_or_else(|| ApiError::unavailable("the API knows no PKI directory"))?;
    let ca_der = crate::enroll::endpoints::ca_der(&dir.join("ca.pem"))
        .map_err(|e| ApiError::unavailable(format!("{e:#}")))?;
    let endpoints = if req.endpoints.is_empty() {
        let port = api
            .ingest
            .get()
            .and_then(|i| i.local_addr().ok())
            .map(|a| a.port())
            .ok_or_else(|| ApiError::unavailable("agent ingest is not listening"))?;
        crate::enroll::endpoints::from_server_certificate(&dir.join("server.pem"), port)
            .map_err(|e| ApiError::bad_parameter("endpoints", format!("{e:#}")))?
    } else {
        req.endpoints
    };
    let made = token::create(
        TokenSpec {
            expires_ns,
            max_uses: Some(req.uses.unwrap_or(1)),
            labels: req.labels.into_iter().collect(),
            allow_reenroll: req.allow_reenroll,
            endpoints: endpoints.clone(),
            ca_der,
        },
        now,
    )
    .map_err(ApiError::bad_request)?;
    let record = made.record.clone();
    api.store("storing an enrollment token", move |s| {
        s.insert_enrollment_token(&record)
    })
    .await?;
    tracing::info!(id = %made.record.id, by = %caller.name, "enrollment token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedEnrollmentToken {
            token: made.text,
            endpoints,
            info: EnrollmentTokenInfo::of(made.record, now),
        }),
    ))
}

/// Revoke an enrollment token
///
/// Revoking a revoked token changes nothing; agents it enrolled keep their certificates.
#[utoipa::path(
    delete,
    path = "/api/v1/enrollment-tokens/{id}",
    tag = "enrollment",
    params(("id" = String, Path, description = "The token's id (16 hex digits)")),
    responses(
        (status = 200, description = "The token, revoked", body = EnrollmentTokenInfo),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin token", body = super::error::ErrorBody),
        (status = 404, description = "No such token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
    )
)]
pub async fn revoke_enrollment_token(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<EnrollmentTokenInfo>, ApiError> {
    caller.require(Role::Admin)?;
    let now = outpost_common::time::now_ns();
    let which = id.clone();
    let revoked = api
        .store("revoking an enrollment token", move |s| {
            s.revoke_enrollment_token(&which, now)
        })
        .await?;
    let Some(record) = revoked else {
        return Err(ApiError::not_found(format!("no enrollment token `{id}`")));
    };
    tracing::info!(id = %record.id, by = %caller.name, "enrollment token revoked");
    Ok(Json(EnrollmentTokenInfo::of(record, now)))
}

/// List agent certificates
///
/// Every agent certificate in the PKI directory with its expiry, newest first per agent
/// (after renewals an agent has several).
#[utoipa::path(
    get,
    path = "/api/v1/certificates",
    tag = "enrollment",
    responses(
        (status = 200, description = "The agent certificates", body = Vec<IssuedCert>),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
        (status = 503, description = "No PKI directory", body = super::error::ErrorBody),
    )
)]
pub async fn certificates(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<IssuedCert>>, ApiError> {
    caller.require(Role::Viewer)?;
    let dir = api
        .tls_dir
        .clone()
        .ok_or_else(|| ApiError::unavailable("the API knows no PKI directory"))?;
    let certs = tokio::task::spawn_blocking(move || crate::pki::agent_certificates(&dir))
        .await
        .map_err(|e| ApiError::internal("listing certificates", &e))?
        .map_err(|e| ApiError::internal("listing certificates", &e))?;
    Ok(Json(certs))
}

/// Remove an agent
///
/// Revokes every certificate of the agent, closes its connection at once and removes it from
/// the fleet (until it says Hello again with a valid certificate).
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{agent_id}",
    tag = "enrollment",
    params(("agent_id" = String, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "What was revoked and removed", body = Removed),
        (status = 401, description = "No valid token", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin token", body = super::error::ErrorBody),
        (status = 404, description = "No such agent", body = super::error::ErrorBody),
        (status = 429, description = "Too many requests", body = super::error::ErrorBody),
        (status = 503, description = "No PKI directory", body = super::error::ErrorBody),
    )
)]
pub async fn remove_agent(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(agent_id): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    caller.require(Role::Admin)?;
    let dir = api
        .tls_dir
        .clone()
        .ok_or_else(|| ApiError::unavailable("the API knows no PKI directory"))?;
    let store = Arc::clone(&api.store);
    let id = agent_id.clone();
    let now = outpost_common::time::now_ns();
    let removed = tokio::task::spawn_blocking(move || {
        crate::agents_cli::remove(&dir, store.as_ref(), &id, "cessation-of-operation", now)
    })
    .await
    .map_err(|e| ApiError::internal("removing an agent", &e))?
    .map_err(|e| ApiError::not_found(format!("{e:#}")))?;
    // The new CRL takes effect now: the agent's connection is closed at once.
    if let Some(ingest) = api.ingest.get()
        && let Err(e) = ingest.reload_tls()
    {
        tracing::warn!(error = %format!("{e:#}"), "cannot reload the TLS files after removing an agent");
    }
    tracing::info!(agent_id = %agent_id, by = %caller.name, "agent removed");
    Ok(Json(removed))
}
