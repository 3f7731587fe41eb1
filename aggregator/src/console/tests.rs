//! The console through the aggregator's router, as a browser sees it (no socket): signing in and
//! out, sessions, CSRF, roles, headers and the pages' content.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use tempfile::TempDir;
use tower::ServiceExt;

use crate::api::tests_support::{config, register};
use crate::api::{Api, app};
use crate::store::{SqliteStore, StateStore};
use crate::tokens::{self, Role};

struct Browser {
    _dir: TempDir,
    store: Arc<SqliteStore>,
    app: Router,
    /// Token texts by role.
    viewer: String,
    operator: String,
}

/// What came back: status, headers and body.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// `name=value` of the `Set-Cookie` header setting `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// The `value` of the first `<input name=NAME>` or `<meta name=NAME>` content.
    fn field(&self, name: &str) -> String {
        for pattern in [
            format!(r#"name="{name}" value=""#),
            format!(r#"<meta name="{name}" content=""#),
        ] {
            if let Some(at) = self.body.find(&pattern) {
                let rest = &self.body[at + pattern.len()..];
                return rest[..rest.find('"').unwrap()].to_owned();
            }
        }
        panic!("no field {name} in {}", self.body)
    }
}

impl Browser {
    fn new() -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
        let now = outpost_common::time::now_ns();
        let mut texts = Vec::new();
        for (name, role) in [("watcher", Role::Viewer), ("oncall", Role::Operator)] {
            let t = tokens::create(name, role, now, None);
            store.insert_token(&t.record).unwrap();
            texts.push(t.text);
        }
        register(&store, "web-1");
        let config = config();
        let api = Api::new(store.clone(), &config);
        let app =
            app(api, &config).layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 9], 4444))));
        let operator = texts.pop().unwrap();
        let viewer = texts.pop().unwrap();
        Browser {
            _dir: dir,
            store,
            app,
            viewer,
            operator,
        }
    }

    async fn send(&self, req: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Answer {
        let mut req = Request::get(path);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Answer {
        let mut req =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let body = serde_urlencoded::to_string(form).unwrap();
        self.send(req.body(Body::from(body)).unwrap()).await
    }

    /// Signs in with `token`; answers the session cookie (`name=value`).
    async fn sign_in(&self, token: &str) -> String {
        let form = self.get("/login", None).await;
        let login_cookie = form.cookie(super::session::LOGIN_COOKIE).unwrap();
        let pair = login_cookie.split(';').next().unwrap().to_owned();
        let csrf = form.field("csrf");
        let answer = self
            .post(
                "/login",
                Some(&pair),
                &[("token", token), ("csrf", &csrf), ("next", "/fleet")],
            )
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let cookie = answer
            .cookie(super::session::COOKIE)
            .expect("a session cookie");
        cookie.split(';').next().unwrap().to_owned()
    }

    fn audit_outcomes(&self) -> Vec<(String, String)> {
        self.store
            .audit(None, 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.route, e.outcome))
            .collect()
    }
}

#[tokio::test]
async fn a_good_token_signs_in_with_a_strict_http_only_cookie_and_reaches_the_page_asked_for() {
    let b = Browser::new();
    let signed_out = b.get("/hosts/web-1?range=6h", None).await;
    assert_eq!(signed_out.status, StatusCode::SEE_OTHER);
    assert!(
        signed_out
            .location()
            .starts_with("/login?next=%2Fhosts%2Fweb-1%3Frange%3D6h"),
        "{}",
        signed_out.location()
    );

    let form = b.get("/login", None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.body
            .contains(r#"<form id="login" method="post" action="/login">"#)
    );
    let login_cookie = form.cookie(super::session::LOGIN_COOKIE).unwrap();
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
    let pair = login_cookie.split(';').next().unwrap().to_owned();
    let csrf = form.field("csrf");
    let answer = b
        .post(
            "/login",
            Some(&pair),
            &[
                ("token", &b.viewer),
                ("csrf", &csrf),
                ("next", "/hosts/web-1"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location(), "/hosts/web-1");
    let session = answer.cookie(super::session::COOKIE).unwrap();
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Strict")
            && session.contains("Path=/"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "no TLS here");
    assert!(
        answer
            .cookie(super::session::LOGIN_COOKIE)
            .unwrap()
            .contains("Max-Age=0")
    );
    let cookie = session.split(';').next().unwrap();
    let fleet = b.get("/fleet", Some(cookie)).await;
    assert_eq!(fleet.status, StatusCode::OK);
    assert!(
        fleet.body.contains(r#"data-agent-id="web-1""#),
        "{}",
        fleet.body
    );
    assert!(
        fleet
            .body
            .contains(r#"<span class="who">watcher · viewer</span>"#)
    );
    assert!(
        b.audit_outcomes()
            .contains(&("console /login".to_owned(), "ok".to_owned()))
    );
}

#[tokio::test]
async fn sign_in_refuses_a_bad_token_a_missing_form_token_and_never_redirects_off_site() {
    let b = Browser::new();
    let form = b.get("/login", None).await;
    let pair = form
        .cookie(super::session::LOGIN_COOKIE)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = form.field("csrf");

    let forged = format!("{}x", b.viewer);
    let bad = b
        .post(
            "/login",
            Some(&pair),
            &[("token", &forged), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.body.contains("not a valid API token"));
    assert!(bad.cookie(super::session::COOKIE).is_none());
    assert!(
        b.audit_outcomes()
            .contains(&("console /login".to_owned(), "unauthorized".to_owned()))
    );

    let no_csrf = b
        .post(
            "/login",
            Some(&pair),
            &[("token", &b.viewer), ("csrf", "guess")],
        )
        .await;
    assert_eq!(no_csrf.status, StatusCode::FORBIDDEN);
    let no_cookie = b
        .post("/login", None, &[("token", &b.viewer), ("csrf", &csrf)])
        .await;
    assert_eq!(
        no_cookie.status,
        StatusCode::FORBIDDEN,
        "the form token must match its cookie"
    );

    for next in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let answer = b
            .post(
                "/login",
                Some(&pair),
                &[("token", &b.viewer), ("csrf", &csrf), ("next", next)],
            )
            .await;
        assert_eq!(answer.location(), "/fleet", "{next}");
    }
}

#[tokio::test]
async fn a_viewer_sees_no_controls_and_is_refused_the_actions_an_operator_may_take() {
    let b = Browser::new();
    let viewer = b.sign_in(&b.viewer).await;
    let page = b.get("/fleet", Some(&viewer)).await;
    let csrf = page.field("csrf-token");
    for (path, form) in [
        ("/alerts/abc/ack", vec![("csrf", csrf.as_str())]),
        (
            "/silences",
            vec![
                ("csrf", csrf.as_str()),
                ("matchers", "host=\"web-1\""),
                ("duration", "1h"),
                ("comment", "x"),
            ],
        ),
        ("/silences/abc/expire", vec![("csrf", csrf.as_str())]),
    ] {
        let answer = b.post(path, Some(&viewer), &form).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            answer.body.contains("needs the operator role"),
            "{}",
            answer.body
        );
    }
    let form = b.get("/silences/new?fingerprint=abc", Some(&viewer)).await;
    assert_eq!(form.status, StatusCode::FORBIDDEN);
    let refused = b.audit_outcomes();
    assert!(
        refused.contains(&(
            "console /alerts/{fingerprint}/ack".to_owned(),
            "forbidden".to_owned()
        )),
        "{refused:?}"
    );

    // An operator's form without its session's token is refused too, whatever the role.
    let operator = b.sign_in(&b.operator).await;
    let answer = b
        .post(
            "/alerts/abc/ack",
            Some(&operator),
            &[("csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.body.contains("did not come from this console"));
    // With it, the request reaches the engine (disabled here).
    let own = b.get("/fleet", Some(&operator)).await.field("csrf-token");
    let answer = b
        .post(
            "/alerts/abc/ack",
            Some(&operator),
            &[("csrf", own.as_str())],
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn logout_and_a_revoked_token_end_the_session() {
    let b = Browser::new();
    let cookie = b.sign_in(&b.operator).await;
    let csrf = b.get("/fleet", Some(&cookie)).await.field("csrf-token");
    let out = b.post("/logout", Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/login");
    assert!(
        out.cookie(super::session::COOKIE)
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        b.get("/fleet", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );

    let cookie = b.sign_in(&b.viewer).await;
    assert_eq!(b.get("/fleet", Some(&cookie)).await.status, StatusCode::OK);
    b.store
        .revoke_token("watcher", outpost_common::time::now_ns())
        .unwrap();
    let answer = b.get("/fleet", Some(&cookie)).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert!(answer.location().contains("why=token-ended"));
}

#[tokio::test]
async fn pages_forbid_other_origins_and_assets_are_cached_by_content() {
    let b = Browser::new();
    let cookie = b.sign_in(&b.viewer).await;
    for path in ["/fleet", "/hosts/web-1", "/logs", "/files", "/login"] {
        let page = b.get(path, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        let csp = page
            .headers
            .get(header::CONTENT_SECURITY_POLICY)
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self'"),
            "{csp}"
        );
        assert_eq!(page.headers.get(header::X_FRAME_OPTIONS).unwrap(), "DENY");
        assert_eq!(page.headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
        assert!(!page.body.contains("<script>"), "{path}: no inline script");
        assert!(!page.body.contains(" style="), "{path}: no inline style");
        assert!(
            !page.body.contains("http://") && !page.body.contains("https://"),
            "{path}: no other origin"
        );
    }
    let css = b.get(super::assets::CSS.path(), None).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(
        css.headers
            .get(header::CONTENT_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(
        css.headers
            .get(header::CACHE_CONTROL)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    // Compressed when the browser says it can read it.
    let req = Request::get(super::assets::CSS.path())
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Body::empty())
        .unwrap();
    let gz = b.send(req).await;
    assert_eq!(gz.headers.get(header::CONTENT_ENCODING).unwrap(), "gzip");
}

#[tokio::test]
async fn the_host_page_draws_every_chart_and_an_unknown_host_is_not_found() {
    let b = Browser::new();
    let cookie = b.sign_in(&b.viewer).await;
    let page = b.get("/hosts/web-1?range=15m", Some(&cookie)).await;
    for metric in ["cpu", "memory", "load", "filesystem", "disk", "network"] {
        assert!(
            page.body.contains(&format!(r#"data-metric="{metric}""#)),
            "{metric}"
        );
    }
    assert!(
        page.body
            .contains(r#"<a href="?range=15m" aria-current="true">15m</a>"#)
    );
    let missing = b.get("/hosts/nobody", Some(&cookie)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("No host `nobody`"));
}
