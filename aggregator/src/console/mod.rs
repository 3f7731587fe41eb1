//! The web console: the fleet, each host, logs, file changes, alerts and rules, served by the
//! API's listener at `/`.
//!
//! Pages are HTML made on the server ([`maud`] templates: markup checked by the compiler, every
//! value escaped) from the same store and engine the API reads, with charts drawn as inline SVG
//! ([`chart`]). One small script (`assets/console.js`) adds what a page cannot do alone: the
//! fleet page's refresh and the logs page's live tail; every page works without it. Nothing is
//! loaded from anywhere else, and the Content-Security-Policy says so to the browser.
//!
//! Signing in exchanges an API token for a session cookie ([`session`]); what a session may do
//! is its token's role, checked on the server for every action (a viewer is shown no buttons it
//! may not use, and is refused if it sends the request anyway). Every form carries the session's
//! CSRF token; the login form carries one of its own, bound to a cookie.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;

use crate::api::Api;
use crate::store::AuditEntry;
use crate::tokens::{self, Presented, Role, Verdict};

mod alerts_page;
pub mod assets;
pub mod chart;
mod events_page;
mod fleet_page;
mod host_page;
pub mod layout;
mod rules_page;
pub mod session;

use layout::Flash;
use session::{Session, Sessions};

/// What the console's handlers share.
#[derive(Debug)]
pub struct Console {
    pub api: Arc<Api>,
    pub sessions: Sessions,
    /// Cookies get `Secure` (the listener speaks TLS).
    pub secure: bool,
}

/// What the browser is told it may load: this origin only, no inline script or style.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes.
pub fn routes(api: &Arc<Api>, secure: bool) -> Router {
    let console = Arc::new(Console {
        api: Arc::clone(api),
        sessions: Sessions::default(),
        secure,
    });
    let signed_in = Router::new()
        .route("/fleet", get(fleet_page::fleet))
        .route("/hosts/{agent_id}", get(host_page::host))
        .route("/logs", get(events_page::logs))
        .route("/logs/tail", get(events_page::tail))
        .route("/files", get(events_page::files))
        .route("/alerts", get(alerts_page::alerts))
        .route("/alerts/{fingerprint}/ack", post(alerts_page::acknowledge))
        .route("/silences/new", get(alerts_page::new_silence))
        .route("/silences", post(alerts_page::create_silence))
        .route("/silences/{id}/expire", post(alerts_page::expire_silence))
        .route("/rules", get(rules_page::rules))
        .route("/logout", post(logout))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&console),
            require_session,
        ));
    Router::new()
        .route("/", get(|| async { Redirect::to("/fleet") }))
        .route("/login", get(login_page).post(login))
        .route("/assets/{file}", get(asset))
        .merge(signed_in)
        .layer(axum::middleware::from_fn(headers))
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(console)
}

/// Security headers on every console answer; pages are not cached.
async fn headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/assets/");
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn asset(req: Request) -> Response {
    assets::serve(req.uri().path())
        .unwrap_or_else(|| (StatusCode::NOT_FOUND, "no such asset").into_response())
}

/// Who is signed in, for a handler (put there by [`require_session`]).
#[derive(Debug, Clone)]
pub struct Viewer {
    pub session: Session,
    pub address: String,
}

impl Viewer {
    /// Whether the session's role includes `role`.
    pub fn may(&self, role: Role) -> bool {
        self.session.role >= role
    }
}

fn client_address(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

fn cookie_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::cookie(h, name))
}

/// Lets a request through with its session, or sends the browser to the login page. The
/// session's token is checked again each time: revoking it, or its expiry, ends the session.
async fn require_session(
    State(console): State<Arc<Console>>,
    mut req: Request,
    next: Next,
) -> Response {
    let now = outpost_common::time::now_ns();
    let session =
        cookie_of(req.headers(), session::COOKIE).and_then(|c| console.sessions.touch(c, now));
    // Where to come back to after signing in: the page asked for (a form's target is not one).
    let back_to = if req.method() == axum::http::Method::GET {
        req.uri()
            .path_and_query()
            .map_or("/fleet", |p| p.as_str())
            .to_owned()
    } else {
        "/fleet".to_owned()
    };
    let to_login = |why: &str| {
        let query = serde_urlencoded::to_string([("next", back_to.as_str()), ("why", why)])
            .unwrap_or_default();
        Redirect::to(&format!("/login?{query}")).into_response()
    };
    let Some(session) = session else {
        return to_login("signed-out");
    };
    let id = session.token_id.clone();
    let token = console
        .api
        .store("reading API tokens", move |s| s.token(&id))
        .await;
    match token {
        Ok(Some(t)) if t.active(now) => {}
        Ok(_) => {
            console.sessions.close_token(&session.token_id);
            return to_login("token-ended");
        }
        Err(e) => return error_page(None, e.status, &e.message),
    }
    let address = client_address(&req);
    req.extensions_mut().insert(Viewer { session, address });
    next.run(req).await
}

/// A page that says what went wrong, with its status.
pub fn error_page(session: Option<&Session>, status: StatusCode, message: &str) -> Response {
    let flash = Flash::Error(message.to_owned());
    (
        status,
        layout::page(
            status.canonical_reason().unwrap_or("Error"),
            "",
            session,
            Some(&flash),
            html! { p { a href="/fleet" { "Back to the fleet" } } },
        ),
    )
        .into_response()
}

/// A rendered page as a response.
pub fn respond(page: Html<String>) -> Response {
    page.into_response()
}

/// Refuses a form whose CSRF token is not the session's, and an action the session's role does
/// not include; writes the audit record of every action, allowed or not.
pub async fn authorize(
    console: &Console,
    viewer: &Viewer,
    csrf: &str,
    needed: Role,
    route: &str,
) -> Result<(), Response> {
    let refusal = if !session::same_secret(csrf, &viewer.session.csrf) {
        Some((
            StatusCode::FORBIDDEN,
            "forbidden",
            "This form has expired or did not come from this console; reload the page and \
             try again."
                .to_owned(),
        ))
    } else if !viewer.may(needed) {
        Some((
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "This needs the {} role; you are signed in as {}.",
                needed.as_str(),
                viewer.session.role.as_str()
            ),
        ))
    } else {
        None
    };
    let (status, outcome) = refusal
        .as_ref()
        .map_or((StatusCode::OK, "ok"), |(s, o, _)| (*s, *o));
    audit(
        console,
        Some(&viewer.session),
        &viewer.address,
        route,
        status,
        outcome,
    )
    .await;
    match refusal {
        Some((status, _, message)) => Err(error_page(Some(&viewer.session), status, &message)),
        None => Ok(()),
    }
}

/// Writes one audit record of a console action (method POST).
async fn audit(
    console: &Console,
    session: Option<&Session>,
    address: &str,
    route: &str,
    status: StatusCode,
    outcome: &str,
) {
    let entry = AuditEntry {
        id: 0,
        time_ns: outpost_common::time::now_ns(),
        token_id: session.map(|s| s.token_id.clone()),
        token_name: session.map(|s| s.name.clone()),
        address: address.to_owned(),
        method: "POST".to_owned(),
        route: format!("console {route}"),
        status: status.as_u16(),
        outcome: outcome.to_owned(),
    };
    console.api.audit(entry).await;
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    next: Option<String>,
    why: Option<String>,
}

/// Where to go after signing in: a console path only, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => n,
        _ => "/fleet",
    }
}

async fn login_page(
    State(console): State<Arc<Console>>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    let q: LoginQuery =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let flash = match q.why.as_deref() {
        Some("token-ended") => Some(Flash::Error(
            "Your token was revoked or has expired; sign in with another.".to_owned(),
        )),
        Some("signed-out") if q.next.as_deref().is_some_and(|n| n != "/fleet") => {
            Some(Flash::Error("Sign in to see this page.".to_owned()))
        }
        _ => None,
    };
    login_form(&console, q.next.as_deref(), flash.as_ref(), StatusCode::OK)
}

fn login_form(
    console: &Console,
    next: Option<&str>,
    flash: Option<&Flash>,
    status: StatusCode,
) -> Response {
    let csrf = session::random_token();
    let body = html! {
        section.login {
            h1 { "Sign in" }
            p { "Paste an API token (" code { "outpost-aggregator token create --name NAME --role viewer" } "). "
                "Viewers look; operators also acknowledge and silence alerts." }
            form #login method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(safe_next(next));
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password"
                    required autofocus spellcheck="false";
                button type="submit" { "Sign in" }
            }
        }
    };
    let cookie = session::set_cookie(session::LOGIN_COOKIE, Some(&csrf), console.secure);
    (
        status,
        [(header::SET_COOKIE, cookie)],
        layout::page("Sign in", "", None, flash, body),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

async fn login(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let address = peer.ip().to_string();
    let refuse = |message: &str, status: StatusCode| {
        login_form(
            &console,
            None,
            Some(&Flash::Error(message.to_owned())),
            status,
        )
    };
    if let Err(wait) = console.api.check_address(peer.ip()) {
        return refuse(
            &format!(
                "Too many attempts from this address; try again in {} s.",
                wait.as_secs().max(1)
            ),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let Ok(axum::Form(form)) = form else {
        return refuse(
            "The sign-in form did not arrive whole.",
            StatusCode::BAD_REQUEST,
        );
    };
    let expected = cookie_of(&headers, session::LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !session::same_secret(&form.csrf, expected) {
        return refuse(
            "The sign-in form has expired; try again.",
            StatusCode::FORBIDDEN,
        );
    }
    let now = outpost_common::time::now_ns();
    let verdict = match Presented::parse(form.token.trim()) {
        None => Verdict::Unknown,
        Some(presented) => {
            let id = presented.id.clone();
            match console
                .api
                .store("reading API tokens", move |s| s.token(&id))
                .await
            {
                Ok(stored) => tokens::verify(&presented, stored, now),
                Err(e) => return refuse(&e.message, e.status),
            }
        }
    };
    let record = match verdict {
        Verdict::Valid(record) => record,
        refused => {
            let why = match refused {
                Verdict::Expired => "That token has expired.",
                Verdict::Revoked => "That token was revoked.",
                _ => "That is not a valid API token of this aggregator.",
            };
            audit(
                &console,
                None,
                &address,
                "/login",
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            )
            .await;
            console.api.metrics.console_login(false);
            return refuse(why, StatusCode::UNAUTHORIZED);
        }
    };
    let (cookie, session) = console
        .sessions
        .open(&record.id, &record.name, record.role, now);
    audit(
        &console,
        Some(&session),
        &address,
        "/login",
        StatusCode::OK,
        "ok",
    )
    .await;
    console.api.metrics.console_login(true);
    let mut response = Redirect::to(safe_next(form.next.as_deref())).into_response();
    let h = response.headers_mut();
    for value in [
        session::set_cookie(session::COOKIE, Some(&cookie), console.secure),
        session::set_cookie(session::LOGIN_COOKIE, None, console.secure),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.append(header::SET_COOKIE, v);
        }
    }
    response
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(console): State<Arc<Console>>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if let Err(refused) = authorize(&console, &viewer, &form.csrf, Role::Viewer, "/logout").await {
        return refused;
    }
    if let Some(cookie) = cookie_of(&headers, session::COOKIE) {
        console.sessions.close(cookie);
    }
    (
        [(
            header::SET_COOKIE,
            session::set_cookie(session::COOKIE, None, console.secure),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

/// A query string's parameters, the last of each name winning (unknown ones are ignored).
pub fn params(raw: Option<&str>) -> BTreeMap<String, String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or(""))
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// A query string from pairs, empty values left out.
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let kept: Vec<(&str, &str)> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

/// The ranges the console offers, by name, in nanoseconds.
pub const RANGES: [(&str, i64); 7] = [
    ("15m", 15 * 60 * 1_000_000_000),
    ("1h", 3600 * 1_000_000_000),
    ("6h", 6 * 3600 * 1_000_000_000),
    ("24h", 86_400 * 1_000_000_000),
    ("7d", 7 * 86_400 * 1_000_000_000),
    ("30d", 30 * 86_400 * 1_000_000_000),
    ("all", i64::MAX),
];

/// The range named `name`, or the one named `default`.
pub fn range(name: Option<&str>, default: &'static str) -> (&'static str, i64) {
    RANGES
        .iter()
        .find(|(n, _)| Some(*n) == name)
        .or_else(|| RANGES.iter().find(|(n, _)| *n == default))
        .copied()
        .unwrap_or(RANGES[1])
}

#[cfg(test)]
mod tests;
