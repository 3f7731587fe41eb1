//! Operations: `/healthz` (the process answers), `/readyz` (the event and state stores answer and
//! agent ingest listens), `/metrics` (Prometheus text format), and the OpenAPI document at
//! `/api/v1/openapi.json`. None needs a token.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{Api, ApiError};
use crate::store::{EventStore, StateStore};

pub fn routes(doc: Arc<utoipa::openapi::OpenApi>) -> Router<Arc<Api>> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move { Json(doc.as_ref().clone()) }
            }),
        )
}

async fn ready(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    // Both backends are asked, so the answer names every one that does not answer.
    let failures = api
        .store("checking the stores", |s| {
            let events = EventStore::ping(s).err().map(|e| {
                format!(
                    "the event store ({}) does not answer: {e}",
                    EventStore::backend_name(s)
                )
            });
            let state = StateStore::ping(s).err().map(|e| {
                format!(
                    "the state store ({}) does not answer: {e}",
                    StateStore::backend_name(s)
                )
            });
            Ok(events.into_iter().chain(state).collect::<Vec<_>>())
        })
        .await
        .map_err(|e| ApiError::unavailable(format!("the store does not answer: {}", e.message)))?;
    if !failures.is_empty() {
        return Err(ApiError::unavailable(failures.join("; ")));
    }
    if !api.ingest_up.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable("agent ingest is not listening"));
    }
    // The server certificate's expiry, for a probe to warn before agents stop connecting.
    let expires = api
        .ingest
        .get()
        .map(|i| i.server_certificate_not_after_ns())
        .filter(|ns| *ns > 0)
        .map(outpost_common::time::format_rfc3339);
    Ok(Json(match expires {
        Some(at) => json!({ "status": "ready", "server_certificate_not_after": at }),
        None => json!({ "status": "ready" }),
    }))
}

async fn metrics(State(api): State<Arc<Api>>) -> impl axum::response::IntoResponse {
    let text = tokio::task::spawn_blocking(move || api.metrics.render())
        .await
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
