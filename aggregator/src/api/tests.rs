//! The API through its router, as a client sees it (no socket): auth, roles, pagination,
//! parameters, rate limits, the audit log and the OpenAPI document.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode};
use governor::Quota;
use outpost_common::event::{AgentStatus, Event, LogRecord, Severity};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

use super::*;
use crate::store::sqlite::SqliteStore;
use crate::store::testutil::hello;
use crate::store::{RegistryUpdate, StateStore};
use crate::tokens::{self, Role};

/// An API over a fresh store, with a token of each role; shared with the other API tests.
pub(super) struct Harness {
    _dir: TempDir,
    pub(super) store: Arc<SqliteStore>,
    app: Router,
    pub(super) admin: String,
    pub(super) operator: String,
    pub(super) viewer: String,
}

use super::tests_support::config;

fn harness_with(config: &ApiConfig) -> Harness {
    harness_limited(config, None)
}

/// A harness whose rate limits are `quotas` (per token, per address) instead of the config's.
fn harness_limited(config: &ApiConfig, quotas: Option<(Quota, Quota)>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    harness_from(dir, store, config, |store| match quotas {
        Some((token, address)) => Api::with_quotas(store, config, token, address),
        None => Api::new(store, config),
    })
}

/// A harness over `store` (in `dir`), its API made by `make` once the tokens are stored.
pub(super) fn harness_from(
    dir: TempDir,
    store: Arc<SqliteStore>,
    config: &ApiConfig,
    make: impl FnOnce(Arc<SqliteStore>) -> Arc<Api>,
) -> Harness {
    let now = outpost_common::time::now_ns();
    let mut made = Vec::new();
    for (name, role) in [
        ("root", Role::Admin),
        ("oncall", Role::Operator),
        ("dash", Role::Viewer),
    ] {
        let t = tokens::create(name, role, now, None);
        store.insert_token(&t.record).unwrap();
        made.push(t.text);
    }
    let api = make(store.clone());
    api.set_ingest_up(true);
    let app = app(api, config).layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 7], 5555))));
    Harness {
        _dir: dir,
        store,
        app,
        admin: made[0].clone(),
        operator: made[1].clone(),
        viewer: made[2].clone(),
    }
}

fn harness() -> Harness {
    harness_with(&config())
}

pub(super) struct Answer {
    pub(super) status: StatusCode,
    headers: axum::http::HeaderMap,
    pub(super) body: Value,
}

impl Harness {
    pub(super) async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.answer(req).await
    }

    /// The answer to `req`, its body read as JSON.
    pub(super) async fn answer(&self, req: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub(super) async fn get(&self, uri: &str, token: &str) -> Answer {
        self.call(Method::GET, uri, Some(token), None).await
    }

    fn register(&self, agent_id: &str, seen_ns: i64) {
        self.store
            .record(&RegistryUpdate::Hello {
                agent_id: agent_id.to_owned(),
                hello: hello(1, AgentStatus::default()),
                now_ns: seen_ns,
            })
            .unwrap();
    }

    pub(super) fn audit(&self) -> Vec<(Option<String>, String, String, u16, String)> {
        let mut all = self.store.audit(None, 1000).unwrap();
        all.reverse();
        all.into_iter()
            .map(|e| (e.token_name, e.method, e.route, e.status, e.outcome))
            .collect()
    }
}

/// The error shape, with its code.
pub(super) fn error_code(a: &Answer) -> &str {
    a.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {}", a.body))
}

#[tokio::test]
async fn every_kind_of_bad_token_is_refused_401_and_audited() {
    let h = harness();
    let now = outpost_common::time::now_ns();
    let expired = tokens::create("old", Role::Admin, now - 10, Some(now - 1));
    h.store.insert_token(&expired.record).unwrap();
    let revoked = tokens::create("gone", Role::Admin, now, None);
    h.store.insert_token(&revoked.record).unwrap();
    h.store.revoke_token("gone", now).unwrap();
    let mut forged = h.admin.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'a' { 'b' } else { 'a' });

    let none = h.call(Method::GET, "/api/v1/agents", None, None).await;
    assert_eq!(
        (none.status, error_code(&none)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert!(
        none.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    for (token, says) in [
        ("not-a-token", "does not hold a bearer token"),
        (forged.as_str(), "not valid"),
        (expired.text.as_str(), "expired"),
        (revoked.text.as_str(), "revoked"),
    ] {
        let a = h.get("/api/v1/agents", token).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{token}");
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{token}: {message}");
    }
    // "Basic" is not a bearer token either.
    let req = Request::builder()
        .uri("/api/v1/agents")
        .header("authorization", format!("Basic {}", h.admin))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        h.app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let audit = h.audit();
    assert_eq!(audit.len(), 6, "{audit:?}");
    assert!(
        audit
            .iter()
            .all(|(name, method, route, status, outcome)| name.is_none()
                && method == "GET"
                && route == "/api/v1/agents"
                && *status == 401
                && outcome == "unauthorized")
    );
    // The valid token works, and a read that succeeds is not audited.
    assert_eq!(
        h.get("/api/v1/agents", &h.viewer).await.status,
        StatusCode::OK
    );
    assert_eq!(h.audit().len(), 6);
}

#[tokio::test]
async fn roles_limit_what_a_token_may_do_and_refusals_are_audited() {
    let h = harness();
    for token in [&h.viewer, &h.operator, &h.admin] {
        assert_eq!(
            h.get("/api/v1/agents/summary", token).await.status,
            StatusCode::OK
        );
    }
    for token in [&h.viewer, &h.operator] {
        let a = h.get("/api/v1/tokens", token).await;
        assert_eq!(
            (a.status, error_code(&a)),
            (StatusCode::FORBIDDEN, "forbidden")
        );
        assert_eq!(a.body["error"]["details"]["required_role"], "admin");
    }
    let create = json!({ "name": "ci", "role": "viewer", "expires_in": "1h" });
    let a = h
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&h.operator),
            Some(create.clone()),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = h
        .call(Method::POST, "/api/v1/tokens", Some(&h.admin), Some(create))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let made = a.body["token"].as_str().unwrap().to_owned();
    assert_eq!(a.body["role"], "viewer");
    assert!(a.body["expires_ns"].as_i64().is_some());
    // The new token reads, and is listed without its secret.
    assert_eq!(h.get("/api/v1/agents", &made).await.status, StatusCode::OK);
    let list = h.get("/api/v1/tokens", &h.admin).await;
    assert_eq!(list.body["items"][0]["name"], "ci");
    assert!(!list.body.to_string().contains(&made[made.len() - 64..]));
    // Revoked by name, it no longer works.
    let a = h
        .call(Method::DELETE, "/api/v1/tokens/ci", Some(&h.admin), None)
        .await;
    assert_eq!(
        (a.status, a.body["active"].clone()),
        (StatusCode::OK, json!(false))
    );
    assert_eq!(
        h.get("/api/v1/agents", &made).await.status,
        StatusCode::UNAUTHORIZED
    );
    let a = h
        .call(
            Method::DELETE,
            "/api/v1/tokens/nobody",
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(
        (a.status, error_code(&a)),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let audit = h.audit();
    let want: Vec<(Option<String>, String, String, u16, String)> = vec![
        (
            Some("dash".into()),
            "GET".into(),
            "/api/v1/tokens".into(),
            403,
            "forbidden".into(),
        ),
        (
            Some("oncall".into()),
            "GET".into(),
            "/api/v1/tokens".into(),
            403,
            "forbidden".into(),
        ),
        (
            Some("oncall".into()),
            "POST".into(),
            "/api/v1/tokens".into(),
            403,
            "forbidden".into(),
        ),
        (
            Some("root".into()),
            "POST".into(),
            "/api/v1/tokens".into(),
            201,
            "ok".into(),
        ),
        (
            Some("root".into()),
            "DELETE".into(),
            "/api/v1/tokens/{id}".into(),
            200,
            "ok".into(),
        ),
        (
            None,
            "GET".into(),
            "/api/v1/agents".into(),
            401,
            "unauthorized".into(),
        ),
        (
            Some("root".into()),
            "DELETE".into(),
            "/api/v1/tokens/{id}".into(),
            404,
            "refused".into(),
        ),
    ];
    assert_eq!(audit, want);
    // Admins read it, newest first, a page at a time.
    let first = h.get("/api/v1/audit?limit=4", &h.admin).await;
    assert_eq!(first.body["items"][0]["route"], "/api/v1/tokens/{id}");
    assert_eq!(first.body["items"].as_array().unwrap().len(), 4);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let rest = h
        .get(&format!("/api/v1/audit?limit=4&cursor={cursor}"), &h.admin)
        .await;
    // The first page's own reading was not audited (a read that succeeded).
    assert_eq!(
        rest.body["items"].as_array().unwrap().len(),
        3,
        "{}",
        rest.body
    );
    assert_eq!(rest.body["next_cursor"], Value::Null);
}

#[tokio::test]
async fn bad_requests_name_what_is_wrong() {
    let h = harness();
    for (uri, parameter) in [
        ("/api/v1/agents?limit=0", "limit"),
        ("/api/v1/agents?limit=abc", "limit"),
        ("/api/v1/agents?status=sleepy", "status"),
        ("/api/v1/agents?sort=size", "sort"),
        ("/api/v1/agents?label=env", "label"),
        ("/api/v1/agents?cursor=zz", "cursor"),
        ("/api/v1/tokens?limit=5000", "limit"),
        ("/api/v1/audit?cursor=61", "cursor"),
    ] {
        let a = h.get(uri, &h.admin).await;
        assert_eq!(
            (a.status, error_code(&a)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{uri}"
        );
        assert_eq!(
            a.body["error"]["details"]["parameter"], parameter,
            "{uri}: {}",
            a.body
        );
    }
    for (body, parameter) in [
        (json!({ "name": "a b", "role": "viewer" }), Some("name")),
        (
            json!({ "name": "ok", "role": "viewer", "expires_in": "soon" }),
            Some("expires_in"),
        ),
        (json!({ "name": "ok", "role": "root" }), None),
        (json!({ "name": "ok", "role": "viewer", "extra": 1 }), None),
    ] {
        let a = h
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(&h.admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        if let Some(p) = parameter {
            assert_eq!(a.body["error"]["details"]["parameter"], p, "{body}");
        }
    }
    // Too large a body, a name taken, an unknown route, a wrong method: all in the one shape.
    let big = json!({ "name": "x".repeat(5000), "role": "viewer" });
    let a = h
        .call(Method::POST, "/api/v1/tokens", Some(&h.admin), Some(big))
        .await;
    assert_eq!(
        (a.status, error_code(&a)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let taken = json!({ "name": "dash", "role": "viewer" });
    let a = h
        .call(Method::POST, "/api/v1/tokens", Some(&h.admin), Some(taken))
        .await;
    assert_eq!(
        (a.status, error_code(&a)),
        (StatusCode::CONFLICT, "conflict")
    );
    let a = h.get("/api/v1/nothing", &h.admin).await;
    assert_eq!(
        (a.status, error_code(&a)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let a = h
        .call(Method::PUT, "/api/v1/agents", Some(&h.admin), None)
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("PUT"));
    let a = h.get("/api/v1/agents/nobody", &h.viewer).await;
    assert_eq!(
        (a.status, error_code(&a)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // Every answer carries a request id; one the client sent is kept.
    assert!(a.headers.get("x-request-id").is_some());
    let req = Request::builder()
        .uri("/healthz")
        .header("x-request-id", "client-42")
        .body(Body::empty())
        .unwrap();
    let response = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-42");
}

#[tokio::test]
async fn agent_pages_follow_each_other_across_inserts_filters_and_orders() {
    let h = harness();
    let now = outpost_common::time::now_ns();
    for (i, id) in ["db-1", "db-2", "web-1", "web-2", "web-3"]
        .iter()
        .enumerate()
    {
        h.register(id, now - i64::try_from(i).unwrap() * 1_000_000_000);
    }
    let ids = |a: &Answer| -> Vec<String> {
        a.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["agent_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = h.get("/api/v1/agents?limit=2", &h.viewer).await;
    assert_eq!(ids(&first), ["db-1", "db-2"]);
    // Agents added before and after the cursor between two pages.
    h.register("aaa", now);
    h.register("web-0", now);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = h
        .get(
            &format!("/api/v1/agents?limit=2&cursor={cursor}"),
            &h.viewer,
        )
        .await;
    assert_eq!(ids(&second), ["web-0", "web-1"]);
    let cursor = second.body["next_cursor"].as_str().unwrap();
    let third = h
        .get(
            &format!("/api/v1/agents?limit=2&cursor={cursor}"),
            &h.viewer,
        )
        .await;
    assert_eq!(ids(&third), ["web-2", "web-3"]);
    assert_eq!(third.body["next_cursor"], Value::Null);

    let web = h
        .get(
            "/api/v1/agents?name_prefix=web-&sort=last_seen&limit=3",
            &h.viewer,
        )
        .await;
    assert_eq!(ids(&web), ["web-0", "web-1", "web-2"]);
    let online = h
        .get(
            "/api/v1/agents?status=online&os=Debian%20GNU/Linux%2012",
            &h.viewer,
        )
        .await;
    assert_eq!(ids(&online).len(), 7);
    let none = h.get("/api/v1/agents?status=offline", &h.viewer).await;
    assert_eq!(ids(&none), Vec::<String>::new());
    // Labels from the agents' Hello filter the list and show in every entry.
    let prod = h
        .get("/api/v1/agents?label=env=prod&limit=2", &h.viewer)
        .await;
    assert_eq!(ids(&prod), ["aaa", "db-1"]);
    assert_eq!(prod.body["items"][0]["labels"], json!({ "env": "prod" }));
    let dev = h.get("/api/v1/agents?label=env=dev", &h.viewer).await;
    assert_eq!(ids(&dev), Vec::<String>::new());

    let summary = h.get("/api/v1/agents/summary", &h.viewer).await;
    assert_eq!(summary.body["total"], 7);
    assert_eq!(
        summary.body["by_status"],
        json!({ "online": 7, "degraded": 0, "offline": 0, "never_seen": 0 })
    );
    assert_eq!(summary.body["by_version"], json!({ "1.2.3": 7 }));
    let one = h.get("/api/v1/agents/web-1", &h.viewer).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    assert_eq!(one.body["agent_id"], "web-1");
    assert_eq!(one.body["status"], "online");
    assert_eq!(one.body["host"]["os"], "Debian GNU/Linux 12");
    assert_eq!(one.body["spool"]["batches"], 0);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    // One request an hour with bursts of 2: no allowance comes back while the test runs.
    let slow = || Quota::per_hour(NonZeroU32::MIN).allow_burst(NonZeroU32::new(2).unwrap());
    let plenty = Quota::per_second(NonZeroU32::new(1000).unwrap());
    let h = harness_limited(&config(), Some((slow(), plenty)));
    // The burst, then refusals.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(h.get("/api/v1/agents/summary", &h.viewer).await.status);
    }
    assert_eq!(statuses[..2], [StatusCode::OK, StatusCode::OK]);
    let refused = h.get("/api/v1/agents/summary", &h.viewer).await;
    assert_eq!(
        (refused.status, error_code(&refused)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The next allowance comes back within the hour.
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(refused.body["error"]["details"]["limit"], "token");
    // Another token is not held back by this one.
    assert_eq!(
        h.get("/api/v1/agents/summary", &h.admin).await.status,
        StatusCode::OK
    );
    assert!(
        h.audit()
            .iter()
            .any(|(name, .., outcome)| name.is_none() && outcome == "rate_limited")
    );

    let by_address = harness_limited(&config(), Some((plenty, slow())));
    let mut last = StatusCode::OK;
    for _ in 0..3 {
        last = by_address
            .call(Method::GET, "/api/v1/agents", None, None)
            .await
            .status;
    }
    assert_eq!(
        last,
        StatusCode::TOO_MANY_REQUESTS,
        "unauthenticated callers are limited by address"
    );
}

#[tokio::test]
async fn health_readiness_and_the_openapi_document_need_no_token() {
    let h = harness();
    let a = h.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (a.status, a.body["status"].clone()),
        (StatusCode::OK, json!("ok"))
    );
    let a = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let doc = h
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
}

fn log_line(time_ns: i64, source: &str, severity: Option<Severity>, body: &str) -> Event {
    Event::Log(LogRecord {
        time_ns,
        source: source.to_owned(),
        severity,
        body: body.to_owned(),
        attributes: Vec::new(),
    })
}

#[tokio::test]
async fn logs_and_file_changes_are_searched_and_paged_in_commit_order() {
    use crate::store::EventStore;
    use crate::store::testutil::{T0, batch};
    let h = harness();
    let t = crate::store::fim_trail::chained::trail(3);
    h.store
        .commit_batches(&[
            batch(
                "web-1",
                1,
                1,
                vec![
                    log_line(
                        T0,
                        "/var/log/auth.log",
                        Some(Severity::Warning),
                        "Failed password for root from 10.0.0.9",
                    ),
                    log_line(
                        T0 + 1,
                        "/var/log/auth.log",
                        Some(Severity::Info),
                        "Accepted publickey for deploy",
                    ),
                    log_line(
                        T0 + 2,
                        "journal",
                        Some(Severity::Error),
                        "Failed to start nginx.service",
                    ),
                    log_line(T0 + 3, "journal", None, "no severity here"),
                    Event::Fim(t[0].clone()),
                    Event::Fim(t[1].clone()),
                ],
            ),
            batch(
                "db-1",
                1,
                1,
                vec![log_line(
                    T0 + 4,
                    "/var/log/auth.log",
                    Some(Severity::Critical),
                    "Failed password for admin",
                )],
            ),
        ])
        .unwrap();
    let bodies = |a: &Answer| -> Vec<String> {
        a.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["body"].as_str().unwrap_or("-").to_owned())
            .collect()
    };
    let failed = h.get("/api/v1/logs?contains=Failed", &h.viewer).await;
    assert_eq!(failed.status, StatusCode::OK, "{}", failed.body);
    assert_eq!(bodies(&failed).len(), 3);
    assert_eq!(failed.body["next_cursor"], Value::Null);
    let warn = h
        .get(
            "/api/v1/logs?severity=warning&source=/var/log/auth.log",
            &h.viewer,
        )
        .await;
    assert_eq!(
        bodies(&warn),
        [
            "Failed password for root from 10.0.0.9",
            "Failed password for admin"
        ]
    );
    assert_eq!(warn.body["items"][1]["agent_id"], "db-1");
    assert_eq!(warn.body["items"][1]["severity"], "critical");
    let re = h
        .get(
            "/api/v1/logs?agent_id=web-1&regex=%5EFailed%20(to%7Cpassword)",
            &h.viewer,
        )
        .await;
    assert_eq!(bodies(&re).len(), 2, "{}", re.body);
    let timed = h
        .get(
            &format!("/api/v1/logs?since_ns={}&until_ns={}", T0 + 1, T0 + 3),
            &h.viewer,
        )
        .await;
    assert_eq!(
        bodies(&timed),
        [
            "Accepted publickey for deploy",
            "Failed to start nginx.service"
        ]
    );

    // Pages follow each other, and a record stored in between comes on the next page.
    let first = h.get("/api/v1/logs?limit=2", &h.viewer).await;
    assert_eq!(bodies(&first).len(), 2);
    h.store
        .commit_batches(&[batch(
            "web-1",
            1,
            2,
            vec![log_line(T0 + 9, "journal", Some(Severity::Info), "late")],
        )])
        .unwrap();
    let mut seen = bodies(&first);
    let mut cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    loop {
        let next = h
            .get(&format!("/api/v1/logs?limit=2&cursor={cursor}"), &h.viewer)
            .await;
        seen.extend(bodies(&next));
        match next.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("late"));

    let fim = h
        .get("/api/v1/fim?agent_id=web-1&path_prefix=/etc/f", &h.viewer)
        .await;
    let paths: Vec<&str> = fim.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/etc/f1", "/etc/f2"]);
    assert_eq!(fim.body["items"][0]["change"], "modified");
    let none = h.get("/api/v1/fim?change=deleted", &h.viewer).await;
    assert_eq!(none.body["items"], json!([]));
    // A range that ends before it starts matches nothing.
    let inverted = h
        .get("/api/v1/logs?since_ns=10&until_ns=5", &h.viewer)
        .await;
    assert_eq!(
        (inverted.status, inverted.body["items"].clone()),
        (StatusCode::OK, json!([]))
    );

    for (uri, parameter) in [
        ("/api/v1/logs?severity=loud", "severity"),
        ("/api/v1/logs?regex=(", "regex"),
        ("/api/v1/logs?cursor=abc", "cursor"),
        ("/api/v1/fim?change=renamed", "change"),
    ] {
        let a = h.get(uri, &h.viewer).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}: {}", a.body);
        assert_eq!(a.body["error"]["details"]["parameter"], parameter, "{uri}");
    }
}

#[tokio::test]
async fn metric_queries_answer_series_per_step_and_name_bad_parameters() {
    use crate::store::EventStore;
    use crate::store::testutil::{T0, batch, point};
    let h = harness();
    for (agent, busy) in [("web-1", 0.25), ("web-2", 0.75)] {
        let events = (0..6)
            .flat_map(|i| {
                let t = T0 + i * 10_000_000_000;
                [
                    Event::Metric(point(
                        "system.cpu.utilization",
                        &[("state", "idle")],
                        t,
                        1.0 - busy,
                    )),
                    Event::Metric(point(
                        "system.cpu.utilization",
                        &[("cpu", "0"), ("state", "idle")],
                        t,
                        0.0,
                    )),
                ]
            })
            .collect();
        h.store
            .commit_batches(&[batch(agent, 1, 1, events)])
            .unwrap();
    }
    let base = format!(
        "/api/v1/metrics/query?name=system.cpu.utilization&match=cpu%3D&since_ns={T0}&until_ns={}",
        T0 + 60_000_000_000
    );
    let one = h
        .get(&format!("{base}&agent_id=web-1&step=30s"), &h.viewer)
        .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    assert_eq!(one.body["selected"], 1);
    assert_eq!(one.body["step_ns"], 30_000_000_000_i64);
    let series = &one.body["series"][0];
    assert_eq!(series["series"]["agent_id"], "web-1");
    assert_eq!(series["series"]["kind"], "gauge");
    assert_eq!(series["series"]["attributes"], json!([["state", "idle"]]));
    assert_eq!(
        series["points"],
        json!([[T0, 0.75], [T0 + 30_000_000_000, 0.75]])
    );
    let fleet = h
        .get(&format!("{base}&points=1&combine=avg"), &h.viewer)
        .await;
    assert_eq!(fleet.status, StatusCode::OK, "{}", fleet.body);
    assert_eq!(fleet.body["selected"], 2);
    assert_eq!(fleet.body["series"][0]["series"], Value::Null);
    assert_eq!(fleet.body["series"][0]["points"], json!([[T0, 0.5]]));

    for (query, parameter) in [
        ("name=system.cpu.utilization&function=rate", "function"),
        ("name=m&points=0", "points"),
        ("name=m&match=%3D", "match"),
        ("agent_id=web-1", "name"),
    ] {
        let a = h
            .get(&format!("/api/v1/metrics/query?{query}"), &h.viewer)
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {}", a.body);
        assert_eq!(
            a.body["error"]["details"]["parameter"], parameter,
            "{query}"
        );
    }
    let a = h.call(Method::GET, &base, None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_without_a_token() {
    let h = harness();
    h.get("/api/v1/agents", &h.viewer).await;
    h.get("/api/v1/agents/nobody", &h.viewer).await;
    h.call(Method::GET, "/api/v1/agents", None, None).await;
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for line in [
        r#"outpost_api_requests_total{method="GET",route="/api/v1/agents",status="200"} 1"#,
        r#"outpost_api_requests_total{method="GET",route="/api/v1/agents",status="401"} 1"#,
        r#"outpost_api_requests_total{method="GET",route="/api/v1/agents/{agent_id}",status="404"} 1"#,
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert!(
        text.contains("# TYPE outpost_api_request_duration_seconds histogram"),
        "{text}"
    );
}

#[tokio::test]
async fn readiness_says_what_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let api = Api::new(store, &config());
    let app = app(api, &config());
    let req = Request::builder()
        .uri("/readyz")
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("agent ingest is not listening"));
}

/// Every route the router serves under /api/v1 is in the OpenAPI document with the same
/// methods, so the document cannot drift from the code.
#[tokio::test]
async fn every_api_route_is_in_the_openapi_document() {
    let h = harness();
    let doc = h
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .body;
    let paths = doc["paths"].as_object().unwrap();
    let served = [
        ("/api/v1/agents", "get"),
        ("/api/v1/agents/summary", "get"),
        ("/api/v1/agents/{agent_id}", "get"),
        ("/api/v1/agents/{agent_id}", "delete"),
        ("/api/v1/enrollment-tokens", "get"),
        ("/api/v1/enrollment-tokens", "post"),
        ("/api/v1/enrollment-tokens/{id}", "delete"),
        ("/api/v1/certificates", "get"),
        ("/api/v1/tokens", "get"),
        ("/api/v1/tokens", "post"),
        ("/api/v1/tokens/{id}", "delete"),
        ("/api/v1/audit", "get"),
        ("/api/v1/logs", "get"),
        ("/api/v1/fim", "get"),
        ("/api/v1/metrics/query", "get"),
        ("/api/v1/alerts", "get"),
        ("/api/v1/alerts/history", "get"),
        ("/api/v1/alerts/{fingerprint}", "get"),
        ("/api/v1/alerts/{fingerprint}/ack", "post"),
        ("/api/v1/silences", "get"),
        ("/api/v1/silences", "post"),
        ("/api/v1/silences/{id}", "delete"),
        ("/api/v1/rules", "get"),
        ("/api/v1/rules/reload", "post"),
        ("/api/v1/rules/validate", "post"),
        ("/api/v1/notifications", "get"),
    ];
    let documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(move |m| (path.clone(), m.clone()))
        })
        .collect();
    let mut want: Vec<(String, String)> = served
        .iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    want.sort();
    let mut got = documented.clone();
    got.sort();
    assert_eq!(got, want);
    // And each documented route answers (401 without a token, not 404 or 405).
    for (path, method) in documented {
        let uri = path
            .replace("{agent_id}", "web-1")
            .replace("{id}", "x")
            .replace("{fingerprint}", "0123456789abcdef");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let a = h.call(method.clone(), &uri, None, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
}
