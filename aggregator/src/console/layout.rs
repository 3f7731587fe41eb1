//! The page every console view sits in: head, navigation, who is signed in, messages.

use axum::response::Html;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::assets;
use super::session::Session;
use crate::tokens::Role;

/// The sections in the navigation, with their paths.
const NAV: [(&str, &str); 6] = [
    ("fleet", "/fleet"),
    ("logs", "/logs"),
    ("file changes", "/files"),
    ("alerts", "/alerts"),
    ("rules", "/rules"),
    ("api", "/api/v1/openapi.json"),
];

/// A message shown above a page: what an action did, or why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flash {
    Ok(String),
    Error(String),
}

/// A whole page: `title`, the navigation with `section` marked, and `body`.
pub fn page(
    title: &str,
    section: &str,
    session: Option<&Session>,
    flash: Option<&Flash>,
    body: Markup,
) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta name="color-scheme" content="light dark";
                    @if let Some(s) = session { meta name="csrf-token" content=(s.csrf); }
                    title { (title) " · Outpost" }
                    link rel="icon" href="data:,";
                    link rel="stylesheet" href=(assets::CSS.path());
                    script src=(assets::JS.path()) defer {}
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header.top {
                        a.brand href="/fleet" { "Outpost" }
                        @if session.is_some() {
                            nav aria-label="Sections" {
                                ul {
                                    @for (name, path) in NAV {
                                        li {
                                            @if name == section {
                                                a href=(path) aria-current="page" { (name) }
                                            } @else {
                                                a href=(path) { (name) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        @if let Some(s) = session {
                            form #logout method="post" action="/logout" {
                                (csrf_field(s))
                                span.who { (s.name) " · " (role_name(s.role)) }
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                    main #main {
                        @match flash {
                            Some(Flash::Ok(m)) => p #flash .ok role="status" { (m) },
                            Some(Flash::Error(m)) => p #flash .error role="alert" { (m) },
                            None => {}
                        }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

/// The hidden field every form of a session carries.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

pub fn role_name(role: Role) -> &'static str {
    role.as_str()
}

/// `ns` as `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn utc(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "—".to_owned(),
    }
}

/// How long before `now_ns` `ns` was: `12s`, `5m`, `3h`, `2d`.
pub fn ago(ns: i64, now_ns: i64) -> String {
    let s = (now_ns - ns).max(0) / 1_000_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A time as a `<time>` element: when, in UTC, and how long ago.
pub fn when(ns: Option<i64>, now_ns: i64) -> Markup {
    match ns {
        Some(ns) => {
            let text = utc(ns);
            html! { time datetime=(text.replace(' ', "T") + "Z") title={ (text) " UTC" } { (ago(ns, now_ns)) " ago" } }
        }
        None => html! { span.muted { "never" } },
    }
}

/// A pre-escaped non-breaking space, for empty cells.
pub fn none() -> Markup {
    PreEscaped("<span class=\"muted\">–</span>".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_utc_and_as_ages() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_764_745_200_123_000_000), "2025-12-03 07:00:00");
        let s = 1_000_000_000;
        assert_eq!(ago(0, 59 * s), "59s");
        assert_eq!(ago(0, 61 * s), "1m");
        assert_eq!(ago(0, 7200 * s), "2h");
        assert_eq!(ago(0, 3 * 86_400 * s), "3d");
        assert_eq!(ago(10 * s, 0), "0s", "a time ahead of now is now");
    }

    #[test]
    fn a_page_for_a_session_carries_its_csrf_token_and_marks_its_section() {
        let session = Session {
            token_id: "t".into(),
            name: "alice <admin>".into(),
            role: Role::Viewer,
            csrf: "CSRF123".into(),
            created_ns: 0,
            last_used_ns: 0,
        };
        let html = page("Fleet", "fleet", Some(&session), None, html! { p { "x" } }).0;
        assert!(html.contains(r#"<meta name="csrf-token" content="CSRF123">"#));
        assert!(html.contains(r#"<a href="/fleet" aria-current="page">fleet</a>"#));
        assert!(html.contains("alice &lt;admin&gt;"), "names are escaped");
        let signed_out = page("Sign in", "", None, None, html! {}).0;
        assert!(!signed_out.contains("csrf-token"));
        assert!(!signed_out.contains("<nav"));
    }
}
