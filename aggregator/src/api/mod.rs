//! The HTTP API: `/api/v1` (JSON, bearer tokens, one error shape, cursor pagination), the
//! OpenAPI document generated from the handlers, and the operations endpoints (`/healthz`,
//! `/readyz`).
//!
//! Layers, outermost first: request id (`x-request-id`, made here when the client sent none,
//! echoed in the answer and in every log line of the request), tracing, the request timeout
//! (answered 503 `timeout`), and, on `/api/v1` routes, [`guard`]: the per-address rate limit,
//! the token, the per-token rate limit, then the audit of every mutating or refused call. Role
//! checks are in the handlers ([`Caller::require`]), so the OpenAPI document and the code say
//! the same. Store calls run on blocking threads. The alerting routes (`alerts`) steer the
//! running engine through its [`AlertingHandle`] and answer 503 when alerting is disabled.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tower_http::request_id::{MakeRequestId, RequestId};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::alerts::AlertingHandle;
use crate::fleet::FleetPolicy;
use crate::store::{AuditEntry, EventStore, StateStore, StoreError};
use crate::tokens::{self, Presented, Role, Verdict};

pub(crate) mod alerts;
#[cfg(test)]
mod alerts_tests;
mod enroll_api;
pub mod error;
mod events;
mod fleet;
mod fleet_view;
pub mod metrics;
mod ops;
mod page;
mod series;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_support {
    //! An API over a fresh store, for tests of its parts.
    use std::sync::Arc;

    use super::{Api, ApiConfig};
    use crate::store::{RegistryUpdate, SqliteStore, StateStore};

    /// The settings the API's tests start from.
    pub fn config() -> ApiConfig {
        ApiConfig {
            fleet: crate::fleet::FleetPolicy::default(),
            tls_dir: None,
            request_timeout: std::time::Duration::from_secs(30),
            max_body: 4096,
            requests_per_sec_per_token: 1000,
            requests_per_sec_per_address: 1000,
            secure_cookies: false,
        }
    }

    pub fn api_over(
        cache: super::fleet_view::Cache,
    ) -> (tempfile::TempDir, Arc<SqliteStore>, Arc<Api>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
        let api = Api::new(store.clone(), &config());
        let api = Arc::new(Api {
            fleet_cache: cache,
            ..Arc::try_unwrap(api).unwrap_or_else(|_| unreachable!("one owner"))
        });
        (dir, store, api)
    }

    pub fn register(store: &SqliteStore, agent_id: &str) {
        store
            .record(&RegistryUpdate::Hello {
                agent_id: agent_id.to_owned(),
                hello: crate::store::testutil::hello(1, Default::default()),
                now_ns: outpost_common::time::now_ns(),
            })
            .unwrap();
    }
}
mod tokens_api;

pub use error::ApiError;
pub use events::SCAN_PER_PAGE;
pub use tokens_api::expiry;

/// A store that holds both events and state: what the API reads.
pub trait Backend: EventStore + StateStore {}
impl<T: EventStore + StateStore> Backend for T {}

/// How often a token's `last_used` is written at most.
const TOUCH_EVERY_NS: i64 = 60 * 1_000_000_000;

/// What the handlers share.
pub struct Api {
    store: Arc<dyn Backend>,
    fleet: FleetPolicy,
    /// The PKI directory: agents with a certificate and no Hello yet are "never seen".
    tls_dir: Option<PathBuf>,
    per_token: DefaultKeyedRateLimiter<String>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    /// When each token's use was last written.
    touched: Mutex<std::collections::HashMap<String, i64>>,
    /// Set once agent ingest listens; `/readyz` needs it.
    ingest_up: AtomicBool,
    /// Audit entries that could not be written (counted, logged).
    audit_failures: AtomicU64,
    /// What `/metrics` shows.
    pub metrics: metrics::Metrics,
    /// The fleet view kept between requests.
    fleet_cache: fleet_view::Cache,
    /// The running alerting engine; `None` when `[alerting] enabled = false`.
    alerting: Option<AlertingHandle>,
    /// The running ingest service, once it listens: removing an agent reloads its CRL.
    ingest: std::sync::OnceLock<crate::ingest::IngestHandle>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("fleet", &self.fleet)
            .field("tls_dir", &self.tls_dir)
            .finish_non_exhaustive()
    }
}

/// The API's settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub fleet: FleetPolicy,
    pub tls_dir: Option<PathBuf>,
    pub request_timeout: Duration,
    pub max_body: usize,
    pub requests_per_sec_per_token: u32,
    pub requests_per_sec_per_address: u32,
    /// The listener speaks TLS: the console's cookies are `Secure`.
    pub secure_cookies: bool,
}

impl Api {
    /// An API without alerting: its routes answer 503 (see [`Api::with_alerting`]).
    pub fn new(store: Arc<dyn Backend>, config: &ApiConfig) -> Arc<Api> {
        Api::with_alerting(store, None, config)
    }

    /// An API over `store` that serves alerting through `alerting` (`None` when it is
    /// disabled).
    pub fn with_alerting(
        store: Arc<dyn Backend>,
        alerting: Option<AlertingHandle>,
        config: &ApiConfig,
    ) -> Arc<Api> {
        let quota = |per_sec: u32| {
            let n = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
            Quota::per_second(n).allow_burst(n.saturating_mul(NonZeroU32::new(2).unwrap_or(n)))
        };
        Arc::new(Api {
            alerting,
            ..Api::build(
                store,
                config,
                quota(config.requests_per_sec_per_token),
                quota(config.requests_per_sec_per_address),
            )
        })
    }

    /// [`Api::new`] with the rate limits given as quotas (tests use slow ones, so that no
    /// allowance comes back while they run).
    pub fn with_quotas(
        store: Arc<dyn Backend>,
        config: &ApiConfig,
        per_token: Quota,
        per_address: Quota,
    ) -> Arc<Api> {
        Arc::new(Api::build(store, config, per_token, per_address))
    }

    fn build(
        store: Arc<dyn Backend>,
        config: &ApiConfig,
        per_token: Quota,
        per_address: Quota,
    ) -> Api {
        Api {
            store,
            fleet: config.fleet,
            tls_dir: config.tls_dir.clone(),
            per_token: RateLimiter::keyed(per_token),
            per_address: RateLimiter::keyed(per_address),
            touched: Mutex::new(std::collections::HashMap::new()),
            ingest_up: AtomicBool::new(false),
            audit_failures: AtomicU64::new(0),
            metrics: metrics::Metrics::new(),
            fleet_cache: fleet_view::Cache::default(),
            alerting: None,
            ingest: std::sync::OnceLock::new(),
        }
    }

    /// The running ingest service, for what the API asks of it (set once).
    pub fn set_ingest(&self, ingest: crate::ingest::IngestHandle) {
        let _ = self.ingest.set(ingest);
    }

    /// Agent ingest is listening (or, `false`, no longer).
    pub fn set_ingest_up(&self, up: bool) {
        self.ingest_up.store(up, Ordering::Relaxed);
    }

    /// Forgets rate-limit state of clients idle long enough to be back at full allowance.
    pub fn forget_idle_clients(&self) {
        self.per_token.retain_recent();
        self.per_address.retain_recent();
        self.per_token.shrink_to_fit();
        self.per_address.shrink_to_fit();
    }

    /// Runs `f` on the store on a blocking thread.
    pub(crate) async fn store<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce(&dyn Backend) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        blocking(what, Arc::clone(&self.store), f).await
    }
}

/// Runs `f` on `store` on a blocking thread: store calls may wait on I/O and locks.
async fn blocking<S: ?Sized + Send + Sync + 'static, T: Send + 'static>(
    what: &'static str,
    store: Arc<S>,
    f: impl FnOnce(&S) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(what, &e)),
    }
}

/// Who is calling: the token that authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// `Ok` when the caller's role includes `needed`; 403 otherwise.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(ApiError::forbidden(needed, self.role))
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Outpost aggregator API",
        description = "The fleet, its hosts, what they sent and the alerts it raised. Every \
                       /api/v1 call but this document needs `Authorization: Bearer <token>`; \
                       errors share one shape.",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(
        error::ErrorBody,
        error::ErrorDetail,
        fleet::AgentSort,
        crate::fleet::HostStatus
    )),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token from `outpost-aggregator token create`"))
                    .build(),
            ),
        );
    }
}

/// The `/api/v1` routes and their OpenAPI document.
fn v1(api: &Arc<Api>) -> (Router<Arc<Api>>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(utoipa_axum::routes!(fleet::list_agents))
        .routes(utoipa_axum::routes!(fleet::summary))
        .routes(utoipa_axum::routes!(fleet::agent, enroll_api::remove_agent))
        .routes(utoipa_axum::routes!(
            tokens_api::list_tokens,
            tokens_api::create_token
        ))
        .routes(utoipa_axum::routes!(tokens_api::revoke_token))
        .routes(utoipa_axum::routes!(tokens_api::audit))
        .routes(utoipa_axum::routes!(
            enroll_api::list_enrollment_tokens,
            enroll_api::create_enrollment_token
        ))
        .routes(utoipa_axum::routes!(enroll_api::revoke_enrollment_token))
        .routes(utoipa_axum::routes!(enroll_api::certificates))
        .routes(utoipa_axum::routes!(events::logs))
        .routes(utoipa_axum::routes!(events::fim))
        .routes(utoipa_axum::routes!(series::query))
        .routes(utoipa_axum::routes!(alerts::list_alerts))
        .routes(utoipa_axum::routes!(alerts::alert_history))
        .routes(utoipa_axum::routes!(alerts::alert))
        .routes(utoipa_axum::routes!(alerts::acknowledge))
        .routes(utoipa_axum::routes!(
            alerts::list_silences,
            alerts::create_silence
        ))
        .routes(utoipa_axum::routes!(alerts::expire_silence))
        .routes(utoipa_axum::routes!(alerts::rules))
        .routes(utoipa_axum::routes!(alerts::reload_rules))
        .routes(utoipa_axum::routes!(alerts::validate_rules))
        .routes(utoipa_axum::routes!(alerts::notifications))
        .split_for_parts();
    let router = router.route_layer(axum::middleware::from_fn_with_state(Arc::clone(api), guard));
    (router, doc)
}

/// The whole application: `/api/v1`, `/api/v1/openapi.json`, `/healthz`, `/readyz`, and the
/// web console at `/` ([`crate::console`]).
pub fn app(api: Arc<Api>, config: &ApiConfig) -> Router {
    let (v1, doc) = v1(&api);
    let doc = Arc::new(doc);
    let timeout = config.request_timeout;
    let middleware = tower::ServiceBuilder::new()
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            RequestIds::default(),
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("api", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(axum::error_handling::HandleErrorLayer::new(
            |_: tower::BoxError| async { ApiError::timeout() },
        ))
        .timeout(timeout);
    Router::new()
        .merge(v1)
        .merge(ops::routes(doc))
        .with_state(Arc::clone(&api))
        .merge(crate::console::routes(&api, config.secure_cookies))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&api),
            count,
        ))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                ..ApiError::bad_request(format!("{method} is not allowed on this route"))
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(config.max_body))
        .layer(middleware)
}

/// Counts and times every answered request by its route (`/metrics`).
async fn count(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().clone();
    let response = next.run(req).await;
    api.metrics.observe(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Request ids for requests that came without one: `r` and a per-process counter in hex.
#[derive(Debug, Clone, Default)]
struct RequestIds(Arc<AtomicU64>);

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("r{n:x}"))
            .ok()
            .map(RequestId::new)
    }
}

/// The client's address, as the connection gave it.
fn client_address(req: &Request) -> Option<IpAddr> {
    let extensions = req.extensions();
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| {
            extensions
                .get::<axum::extract::connect_info::MockConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        })
}

/// Authenticates, rate-limits and audits one `/api/v1` call (see the module documentation).
async fn guard(State(api): State<Arc<Api>>, mut req: Request, next: Next) -> Response {
    let address = client_address(&req);
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let (caller, response) = match authenticate(&api, address, authorization).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller.clone());
            (Some(caller), next.run(req).await)
        }
        Err(e) => (None, e.into_response()),
    };
    let status = response.status();
    let outcome = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        s if s.is_success() => "ok",
        _ => "refused",
    };
    // Every call that may change something, and every refusal of the caller itself.
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let refused_caller = matches!(outcome, "unauthorized" | "forbidden" | "rate_limited");
    if mutating || refused_caller {
        api.audit(AuditEntry {
            id: 0,
            time_ns: outpost_common::time::now_ns(),
            token_id: caller.as_ref().map(|c| c.token_id.clone()),
            token_name: caller.as_ref().map(|c| c.name.clone()),
            address: address.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
            method: method.to_string(),
            route,
            status: status.as_u16(),
            outcome: outcome.to_owned(),
        })
        .await;
    }
    response
}

impl Api {
    /// Writes one audit record; one that cannot be written is counted and logged.
    pub(crate) async fn audit(self: &Arc<Self>, entry: AuditEntry) {
        if let Err(e) = self
            .store("writing the audit log", move |s| s.append_audit(&[entry]))
            .await
        {
            self.audit_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e.message, "An API call could not be written to the audit log.");
        }
    }

    /// Takes one request from `ip`'s allowance; `Err` says how long until the next one.
    pub(crate) fn check_address(&self, ip: IpAddr) -> Result<(), Duration> {
        self.per_address.check_key(&ip).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(self.per_address.clock()))
        })
    }
}

async fn authenticate(
    api: &Arc<Api>,
    address: Option<IpAddr>,
    authorization: Option<HeaderValue>,
) -> Result<Caller, ApiError> {
    if let Some(ip) = address
        && let Err(not_until) = api.per_address.check_key(&ip)
    {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(api.per_address.clock()));
        return Err(ApiError::rate_limited("address", wait));
    }
    let Some(value) = authorization else {
        return Err(ApiError::unauthorized(
            "no token: send the header `Authorization: Bearer <token>`",
        ));
    };
    let text = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = text.and_then(Presented::parse) else {
        return Err(ApiError::unauthorized(
            "the Authorization header does not hold a bearer token of this aggregator",
        ));
    };
    let id = presented.id.clone();
    let stored = api
        .store("reading API tokens", move |s| s.token(&id))
        .await?;
    let now = outpost_common::time::now_ns();
    let record = match tokens::verify(&presented, stored, now) {
        Verdict::Valid(record) => record,
        Verdict::Unknown => return Err(ApiError::unauthorized("the token is not valid")),
        Verdict::Expired => return Err(ApiError::unauthorized("the token has expired")),
        Verdict::Revoked => return Err(ApiError::unauthorized("the token was revoked")),
    };
    if let Err(not_until) = api.per_token.check_key(&record.id) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(api.per_token.clock()));
        return Err(ApiError::rate_limited("token", wait));
    }
    let due = {
        let mut touched = api.touched.lock().unwrap_or_else(PoisonError::into_inner);
        let last = touched.get(&record.id).copied().unwrap_or(i64::MIN);
        let due = now.saturating_sub(last) >= TOUCH_EVERY_NS;
        if due {
            touched.insert(record.id.clone(), now);
        }
        due
    };
    if due {
        let id = record.id.clone();
        if let Err(e) = api
            .store("recording a token's use", move |s| s.touch_token(&id, now))
            .await
        {
            tracing::warn!(error = %e.message, "Cannot record when an API token was last used.");
        }
    }
    Ok(Caller {
        token_id: record.id,
        name: record.name,
        role: record.role,
    })
}

/// Serves `app` on `listener` (HTTPS when `tls` is given) until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    match tls {
        None => {
            axum::serve(listener, service)
                .with_graceful_shutdown(stopped)
                .await
        }
        Some(config) => {
            let handle = axum_server::Handle::new();
            let closer = handle.clone();
            tokio::spawn(async move {
                stopped.await;
                closer.graceful_shutdown(Some(Duration::from_secs(10)));
            });
            let std_listener = listener.into_std()?;
            axum_server::from_tcp_rustls(
                std_listener,
                axum_server::tls_rustls::RustlsConfig::from_config(config),
            )?
            .handle(handle)
            .serve(service)
            .await
        }
    }
}

/// The HTTPS configuration of the API from a certificate chain and its key (PEM files).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context;
    let chain = outpost_common::tls::load_certs(cert)?;
    let key_der = outpost_common::tls::load_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(outpost_common::tls::provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .context("the API's TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "api.tls_cert {} and api.tls_key {} do not make a certificate and its key",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
