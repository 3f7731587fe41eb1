//! `/logs` (search and live tail) and `/files` (file-integrity changes): stored events, newest
//! first.
//!
//! The store reads events in commit order, oldest first, from a cursor; newest first is read
//! here in windows of cursor positions going back from the latest commit, each window twice
//! the one before, until the page is full, the range is exhausted, or a budget of events looked
//! at is spent (the page then says so). The live tail asks for what was committed after the
//! newest row it has.

use std::ops::Range;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use outpost_common::event::{Event, EventKind, FileState, LogRecord, Severity};

use super::fleet_page::urlencode;
use super::layout::{self, none, utc};
use super::{Console, RANGES, Viewer, error_page, params, range, respond};
use crate::api::Backend;
use crate::store::sqlite::fim_change_name;
use crate::store::{Cursor, EventQuery, StoreError, StoredEvent};

/// Rows a page shows at most.
pub const PAGE_ROWS: usize = 200;
/// Stored events looked at for one page at most.
pub const BUDGET: usize = 500_000;
/// Cursor positions in the first window back from the latest commit.
const FIRST_WINDOW: u64 = 4096;

/// Events found newest first, and how the search ended.
#[derive(Debug)]
pub struct Recent {
    /// Newest first.
    pub events: Vec<StoredEvent>,
    /// The latest commit when the search began: where a live tail goes on from.
    pub end: Cursor,
    /// The budget ran out before the range did: older matches may exist.
    pub cut_short: bool,
}

impl Recent {
    /// What was found, in words: how many, and whether the search stopped early.
    fn summary(&self, what: &str) -> Markup {
        html! {
            p.summary aria-live="polite" {
                @if self.events.is_empty() { "No " (what) " match." }
                @else { "The newest " (self.events.len()) " matching " (what) ", newest first." }
                @if self.cut_short {
                    " The search stopped after " (BUDGET) " stored events; narrow it to see older " (what) "."
                }
            }
        }
    }
}

/// Up to `limit` events of `kind` that `keep` accepts, newest first (see the module).
pub fn recent(
    store: &dyn Backend,
    kind: EventKind,
    agent_id: Option<String>,
    time_ns: Option<Range<i64>>,
    limit: usize,
    keep: &dyn Fn(&StoredEvent) -> bool,
) -> Result<Recent, StoreError> {
    let end = store.end()?;
    let mut found = Recent {
        events: Vec::new(),
        end,
        cut_short: false,
    };
    let mut until = end.position();
    let mut window = FIRST_WINDOW;
    let mut looked = 0;
    while until > 0 && found.events.len() < limit {
        if looked >= BUDGET {
            found.cut_short = true;
            break;
        }
        let from = until.saturating_sub(window);
        let mut query = EventQuery {
            kind: Some(kind),
            agent_id: agent_id.clone(),
            time_ns: time_ns.clone(),
            from: Cursor::from_position(from),
            until: Some(Cursor::from_position(until)),
            limit: 1000,
        };
        let mut in_window = Vec::new();
        loop {
            let page = store.events(&query)?;
            looked += page.events.len();
            in_window.extend(page.events.into_iter().filter(|e| keep(e)));
            match page.next {
                Some(next) if next.position() < until => query.from = next,
                _ => break,
            }
        }
        found
            .events
            .extend(in_window.into_iter().rev().take(limit - found.events.len()));
        until = from;
        window = window.saturating_mul(2).min(1 << 24);
    }
    Ok(found)
}

/// Events of `kind` committed from `after` on that `keep` accepts, up to `limit`, newest first,
/// and where to go on from.
pub fn since(
    store: &dyn Backend,
    kind: EventKind,
    agent_id: Option<String>,
    after: Cursor,
    limit: usize,
    keep: &dyn Fn(&StoredEvent) -> bool,
) -> Result<(Vec<StoredEvent>, Cursor), StoreError> {
    let end = store.end()?;
    let mut query = EventQuery {
        kind: Some(kind),
        agent_id,
        time_ns: None,
        from: after,
        until: Some(end),
        limit: 1000,
    };
    let mut found = Vec::new();
    let mut looked = 0;
    loop {
        let page = store.events(&query)?;
        looked += page.events.len();
        found.extend(page.events.into_iter().filter(|e| keep(e)));
        match page.next {
            Some(next) if next.position() < end.position() && looked < BUDGET => query.from = next,
            Some(next) if next.position() < end.position() => {
                // Too much at once: show the newest and go on from the latest commit.
                let skip = found.len().saturating_sub(limit);
                return Ok((found.into_iter().skip(skip).rev().collect(), end));
            }
            _ => break,
        }
    }
    let skip = found.len().saturating_sub(limit);
    Ok((found.into_iter().skip(skip).rev().collect(), end))
}

/// The log search's filters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogFilter {
    pub host: String,
    pub source: String,
    pub severity: Option<Severity>,
    /// Words that must all be in the body, any case.
    pub q: String,
    pub range: &'static str,
}

impl LogFilter {
    pub fn parse(raw: Option<&str>) -> LogFilter {
        let p = params(raw);
        let get = |k: &str| p.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        LogFilter {
            host: get("host"),
            source: get("source"),
            severity: Severity::ALL
                .into_iter()
                .find(|s| Some(s.as_str()) == p.get("severity").map(String::as_str)),
            q: get("q"),
            range: range(p.get("range").map(String::as_str), "1h").0,
        }
    }

    /// Whether a record passes the filters other than host and time.
    pub fn keeps(&self, record: &LogRecord) -> bool {
        let words: Vec<String> = self.q.split_whitespace().map(str::to_lowercase).collect();
        let body = record.body.to_lowercase();
        (self.source.is_empty() || record.source.contains(self.source.as_str()))
            // Severities are ordered most severe first.
            && self.severity.is_none_or(|min| record.severity.is_some_and(|s| s <= min))
            && words.iter().all(|w| body.contains(w.as_str()))
    }

    fn host(&self) -> Option<String> {
        (!self.host.is_empty()).then(|| self.host.clone())
    }
}

/// The time range of a named range ending now; `None` for all time.
pub fn time_range(name: &str, now_ns: i64) -> Option<Range<i64>> {
    let (_, span) = range(Some(name), "1h");
    (span != i64::MAX).then(|| now_ns.saturating_sub(span)..i64::MAX)
}

pub fn severity_name(s: Option<Severity>) -> &'static str {
    s.map_or("none", Severity::as_str)
}

/// One log record as a table row.
pub fn log_row(e: &StoredEvent, show_host: bool) -> Markup {
    let Event::Log(l) = &e.event else {
        return html! {};
    };
    let severity = severity_name(l.severity);
    html! {
        tr.log data-severity=(severity) data-cursor=(e.cursor.to_string()) {
            td.time { time datetime=(outpost_common::time::format_rfc3339(l.time_ns)) { (utc(l.time_ns)) } }
            @if show_host { td { a href={ "/hosts/" (urlencode(&e.agent_id)) } { (e.agent_id) } } }
            td.source { (l.source) }
            td { span class={ "sev " (severity) } { (severity) } }
            td.body { (l.body) }
        }
    }
}

fn log_table(events: &[StoredEvent], id: &str, show_host: bool) -> Markup {
    html! {
        div.table-wrap {
            table.logs id=(id) {
                thead { tr {
                    th scope="col" { "Time (UTC)" }
                    @if show_host { th scope="col" { "Host" } }
                    th scope="col" { "Source" } th scope="col" { "Severity" } th scope="col" { "Message" }
                } }
                tbody { @for e in events { (log_row(e, show_host)) } }
            }
        }
    }
}

/// The recent log lines of one host, for its page.
pub fn host_logs(events: &[StoredEvent]) -> Markup {
    log_table(events, "host-logs", false)
}

fn severity_options(selected: Option<Severity>) -> Markup {
    html! {
        option value="" selected[selected.is_none()] { "any" }
        @for s in Severity::ALL {
            option value=(s.as_str()) selected[selected == Some(s)] { (s.as_str()) " or worse" }
        }
    }
}

fn range_options(selected: &str, skip_all: bool) -> Markup {
    html! {
        @for (name, _) in RANGES {
            @if !(skip_all && name == "all") {
                option value=(name) selected[name == selected] { "last " (name) }
            }
        }
    }
}

pub async fn logs(
    State(console): State<Arc<Console>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Response {
    let filter = LogFilter::parse(raw.as_deref());
    let now = outpost_common::time::now_ns();
    let f = filter.clone();
    let found = console
        .api
        .store("searching logs", move |s| {
            recent(
                s,
                EventKind::Log,
                f.host(),
                time_range(f.range, now),
                PAGE_ROWS,
                &|e| matches!(&e.event, Event::Log(l) if f.keeps(l)),
            )
        })
        .await;
    let found = match found {
        Ok(f) => f,
        Err(e) => return error_page(Some(&viewer.session), e.status, &e.message),
    };
    let body = html! {
        h1 { "Logs" }
        form #log-search.filters method="get" action="/logs" role="search" {
            label { "Host " input type="text" name="host" value=(filter.host) placeholder="agent id"; }
            label { "Source " input type="text" name="source" value=(filter.source) placeholder="/var/log/syslog, journal…"; }
            label { "Severity " select name="severity" { (severity_options(filter.severity)) } }
            label { "Text " input type="search" name="q" value=(filter.q) placeholder="words in the message"; }
            label { "Range " select name="range" { (range_options(filter.range, false)) } }
            button type="submit" { "Search" }
            label.live { input #live type="checkbox" data-tail={ "/logs/tail?" (raw.as_deref().unwrap_or("")) } data-cursor=(found.end.to_string()); " live" }
        }
        (found.summary("log lines"))
        (log_table(&found.events, "logs", true))
    };
    respond(layout::page(
        "Logs",
        "logs",
        Some(&viewer.session),
        None,
        body,
    ))
}

/// `/logs/tail?cursor=C&…filters`: rows committed since `C`, newest first, and the cursor to ask
/// from next in `x-next-cursor`.
pub async fn tail(State(console): State<Arc<Console>>, RawQuery(raw): RawQuery) -> Response {
    let filter = LogFilter::parse(raw.as_deref());
    let after = params(raw.as_deref())
        .get("cursor")
        .and_then(|c| c.parse::<Cursor>().ok());
    let Some(after) = after else {
        return (
            StatusCode::BAD_REQUEST,
            "`cursor` is missing or not a cursor",
        )
            .into_response();
    };
    let f = filter.clone();
    let found = console
        .api
        .store("tailing logs", move |s| {
            since(
                s,
                EventKind::Log,
                f.host(),
                after,
                PAGE_ROWS,
                &|e| matches!(&e.event, Event::Log(l) if f.keeps(l)),
            )
        })
        .await;
    match found {
        Ok((events, next)) => {
            let rows = html! { @for e in &events { (log_row(e, true)) } };
            let mut response = axum::response::Html(rows.into_string()).into_response();
            if let Ok(v) = HeaderValue::from_str(&next.to_string()) {
                response.headers_mut().insert("x-next-cursor", v);
            }
            response
        }
        Err(e) => (e.status, e.message).into_response(),
    }
}

/// What the file changes page filters by.
#[derive(Debug, Clone, Default)]
struct FileFilter {
    host: String,
    path: String,
    range: &'static str,
}

fn state_summary(s: Option<&FileState>) -> Markup {
    match s {
        None => none(),
        Some(s) => html! {
            dl.state {
                dt { "size" } dd { (s.size) }
                dt { "mode" } dd { (format!("{:o}", s.mode & 0o7777)) }
                dt { "owner" } dd { (s.uid) ":" (s.gid) }
                dt { "modified" } dd { (utc(s.mtime_ns)) }
                @if let Some(h) = &s.hash { dt { "hash" } dd.hash title=(h) { (h.get(..20).unwrap_or(h)) "…" } }
                @if let Some(t) = &s.link_target { dt { "target" } dd { (t) } }
            }
        },
    }
}

/// File-integrity changes as a table with before and after.
pub fn fim_table(events: &[StoredEvent], id: &str, show_host: bool) -> Markup {
    html! {
        div.table-wrap {
            table.fim id=(id) {
                thead { tr {
                    th scope="col" { "Time (UTC)" }
                    @if show_host { th scope="col" { "Host" } }
                    th scope="col" { "Path" } th scope="col" { "Change" }
                    th scope="col" { "Before" } th scope="col" { "After" }
                } }
                tbody {
                    @for e in events {
                        @if let Event::Fim(f) = &e.event {
                            tr.change data-change=(fim_change_name(f.change)) {
                                td.time { (utc(f.time_ns)) }
                                @if show_host { td { a href={ "/hosts/" (urlencode(&e.agent_id)) } { (e.agent_id) } } }
                                td.path {
                                    (f.path)
                                    @if let Some(from) = &f.moved_from { br; small { "from " (from) } }
                                }
                                td {
                                    span class={ "change " (fim_change_name(f.change)) } { (fim_change_name(f.change)) }
                                    @if !f.changed.is_empty() { br; small { (f.changed.join(", ")) } }
                                }
                                td { (state_summary(f.before.as_deref())) }
                                td { (state_summary(f.after.as_deref())) }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn files(
    State(console): State<Arc<Console>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = params(raw.as_deref());
    let filter = FileFilter {
        host: p.get("host").cloned().unwrap_or_default(),
        path: p.get("path").cloned().unwrap_or_default(),
        range: range(p.get("range").map(String::as_str), "24h").0,
    };
    let now = outpost_common::time::now_ns();
    let f = filter.clone();
    let found = console
        .api
        .store("reading file changes", move |s| {
            recent(
                s,
                EventKind::Fim,
                (!f.host.is_empty()).then(|| f.host.clone()),
                time_range(f.range, now),
                PAGE_ROWS,
                &|e| matches!(&e.event, Event::Fim(c) if c.path.starts_with(f.path.as_str())),
            )
        })
        .await;
    let found = match found {
        Ok(f) => f,
        Err(e) => return error_page(Some(&viewer.session), e.status, &e.message),
    };
    let body = html! {
        h1 { "File changes" }
        form #fim-search.filters method="get" action="/files" role="search" {
            label { "Host " input type="text" name="host" value=(filter.host) placeholder="agent id"; }
            label { "Path " input type="text" name="path" value=(filter.path) placeholder="/etc/"; }
            label { "Range " select name="range" { (range_options(filter.range, false)) } }
            button type="submit" { "Search" }
        }
        (found.summary("changes"))
        (fim_table(&found.events, "fim", true))
    };
    respond(layout::page(
        "File changes",
        "file changes",
        Some(&viewer.session),
        None,
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil;
    use crate::store::{EventStore, SqliteStore};

    fn log(body: &str, severity: Option<Severity>) -> Event {
        let Event::Log(record) = testutil::log(0, 0) else {
            unreachable!()
        };
        Event::Log(LogRecord {
            severity,
            body: body.to_owned(),
            ..record
        })
    }

    fn record(body: &str, severity: Option<Severity>, source: &str) -> LogRecord {
        let Event::Log(record) = log(body, severity) else {
            unreachable!()
        };
        LogRecord {
            source: source.to_owned(),
            ..record
        }
    }

    /// Commits `events` from `agent` in batches of 500.
    fn commit(store: &SqliteStore, agent: &str, events: Vec<Event>, first_seq: u64) {
        let batches: Vec<_> = events
            .chunks(500)
            .enumerate()
            .map(|(i, c)| testutil::batch(agent, 1, first_seq + i as u64, c.to_vec()))
            .collect();
        store.commit_batches(&batches).unwrap();
    }

    #[test]
    fn filters_read_their_parameters_and_keep_what_matches() {
        let f = LogFilter::parse(Some(
            "host=h1&source=syslog&severity=warning&q=Disk+FULL&range=6h",
        ));
        assert_eq!(
            (f.host.as_str(), f.source.as_str(), f.range),
            ("h1", "syslog", "6h")
        );
        assert_eq!(f.severity, Some(Severity::Warning));
        let rec = record;
        assert!(f.keeps(&rec(
            "the disk is full",
            Some(Severity::Error),
            "/var/log/syslog"
        )));
        assert!(
            !f.keeps(&rec(
                "the disk is full",
                Some(Severity::Info),
                "/var/log/syslog"
            )),
            "too mild"
        );
        assert!(
            !f.keeps(&rec("the disk is full", None, "/var/log/syslog")),
            "no severity"
        );
        assert!(
            !f.keeps(&rec("disk ok", Some(Severity::Error), "/var/log/syslog")),
            "a word missing"
        );
        assert!(
            !f.keeps(&rec("disk full", Some(Severity::Error), "journal")),
            "another source"
        );
        assert_eq!(LogFilter::parse(Some("range=forever")).range, "1h");
    }

    #[test]
    fn recent_reads_newest_first_across_windows_and_the_tail_goes_on_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        // More events than the first window holds, in several batches.
        let n = FIRST_WINDOW as usize * 3 + 17;
        let events: Vec<Event> = (0..n)
            .map(|i| log(&format!("line {i}"), Some(Severity::Info)))
            .collect();
        commit(&store, "h1", events, 1);
        let all = |_: &StoredEvent| true;
        let found = recent(&store, EventKind::Log, None, None, 10, &all).unwrap();
        let bodies: Vec<String> = found
            .events
            .iter()
            .map(|e| match &e.event {
                Event::Log(l) => l.body.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(bodies[0], format!("line {}", n - 1));
        assert_eq!(bodies[9], format!("line {}", n - 10));
        assert!(!found.cut_short);
        // A filter that matches only the oldest line reaches back through every window.
        let first = |e: &StoredEvent| matches!(&e.event, Event::Log(l) if l.body == "line 0");
        let found = recent(&store, EventKind::Log, None, None, 10, &first).unwrap();
        assert_eq!(found.events.len(), 1);
        // Nothing for another host.
        let other = recent(&store, EventKind::Log, Some("h2".into()), None, 10, &all).unwrap();
        assert!(other.events.is_empty());
        // The tail: nothing new, then exactly what came after.
        let (none_new, at) = since(&store, EventKind::Log, None, found.end, 10, &all).unwrap();
        assert!(none_new.is_empty());
        assert_eq!(at, found.end);
        commit(
            &store,
            "h1",
            vec![log("new 1", None), log("new 2", None)],
            100,
        );
        let (new, next) = since(&store, EventKind::Log, None, at, 10, &all).unwrap();
        let bodies: Vec<&str> = new
            .iter()
            .map(|e| match &e.event {
                Event::Log(l) => l.body.as_str(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(bodies, ["new 2", "new 1"]);
        assert_eq!(next, store.end().unwrap());
    }
}
