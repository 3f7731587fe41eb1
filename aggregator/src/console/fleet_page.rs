//! `/fleet`: counts by status and the table of hosts, searched, filtered, sorted and paged on
//! the server (10,000 hosts cost one page of rows), refreshed by the script every 10 s.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use maud::{Markup, html};

use super::layout::{self, none, when};
use super::{Console, Viewer, error_page, params, query_string, respond};
use crate::fleet::{FleetEntry, HostStatus};

/// Rows per page when the request names none, and the choices offered.
const PER_PAGE: usize = 100;
const PER_PAGE_CHOICES: [usize; 3] = [50, 100, 500];

const STATUSES: [HostStatus; 4] = [
    HostStatus::Online,
    HostStatus::Degraded,
    HostStatus::Offline,
    HostStatus::NeverSeen,
];

/// The table's columns: the name in the query string and the heading.
const COLUMNS: [(&str, &str); 9] = [
    ("name", "Host"),
    ("status", "Status"),
    ("last_seen", "Last seen"),
    ("version", "Version"),
    ("cpu", "CPU"),
    ("memory", "Memory"),
    ("disk", "Fullest filesystem"),
    ("backlog", "Backlog"),
    ("alerts", "Open alerts"),
];

pub fn status_name(s: HostStatus) -> &'static str {
    match s {
        HostStatus::Online => "online",
        HostStatus::Degraded => "degraded",
        HostStatus::Offline => "offline",
        HostStatus::NeverSeen => "never_seen",
    }
}

fn status_label(s: HostStatus) -> &'static str {
    match s {
        HostStatus::Online => "online",
        HostStatus::Degraded => "degraded",
        HostStatus::Offline => "offline",
        HostStatus::NeverSeen => "never seen",
    }
}

/// What the page shows: a search, a status, an order and a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetQuery {
    pub q: String,
    pub status: Option<HostStatus>,
    pub sort: &'static str,
    pub descending: bool,
    pub page: usize,
    pub per_page: usize,
}

impl FleetQuery {
    pub fn parse(raw: Option<&str>) -> FleetQuery {
        let p = params(raw);
        let get = |k: &str| p.get(k).map(String::as_str);
        FleetQuery {
            q: get("q").unwrap_or_default().trim().to_owned(),
            status: get("status").and_then(|s| STATUSES.into_iter().find(|v| status_name(*v) == s)),
            sort: COLUMNS
                .iter()
                .map(|c| c.0)
                .find(|c| Some(*c) == get("sort"))
                .unwrap_or("name"),
            descending: get("dir") == Some("desc"),
            page: get("page")
                .and_then(|v| v.parse().ok())
                .filter(|p| *p >= 1)
                .unwrap_or(1),
            per_page: get("per")
                .and_then(|v| v.parse().ok())
                .filter(|p| PER_PAGE_CHOICES.contains(p))
                .unwrap_or(PER_PAGE),
        }
    }

    /// This query's link with some parameters changed.
    fn link(&self, sort: &str, descending: bool, page: usize) -> String {
        let status = self.status.map(status_name).unwrap_or_default();
        let page = page.to_string();
        let per = if self.per_page == PER_PAGE {
            String::new()
        } else {
            self.per_page.to_string()
        };
        let dir = if descending { "desc" } else { "" };
        let sort = if sort == "name" { "" } else { sort };
        let page = if page == "1" { "" } else { page.as_str() };
        format!(
            "/fleet?{}",
            query_string([
                ("q", self.q.as_str()),
                ("status", status),
                ("sort", sort),
                ("dir", dir),
                ("per", per.as_str()),
                ("page", page),
            ])
        )
    }
}

/// Whether an entry matches the search: every word is in its id, host name, version,
/// operating system, a label (`key=value`) or its status reason.
fn matches(e: &FleetEntry, words: &[String]) -> bool {
    words.iter().all(|w| {
        let has = |s: &str| s.to_lowercase().contains(w.as_str());
        has(&e.agent_id)
            || e.hostname.as_deref().is_some_and(has)
            || e.version.as_deref().is_some_and(has)
            || e.os.as_deref().is_some_and(has)
            || has(&e.reason)
            || e.labels.iter().any(|(k, v)| has(&format!("{k}={v}")))
    })
}

/// Orders two optional numbers with absent ones last in either direction.
fn by_number(a: Option<f64>, b: Option<f64>, descending: bool) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => {
            let o = a.total_cmp(&b);
            if descending { o.reverse() } else { o }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// The entries the query selects, in its order, and how many matched in all.
pub fn select<'a>(
    entries: &'a [FleetEntry],
    open_alerts: &HashMap<String, usize>,
    q: &FleetQuery,
) -> (Vec<&'a FleetEntry>, usize) {
    let words: Vec<String> = q.q.split_whitespace().map(str::to_lowercase).collect();
    let mut rows: Vec<&FleetEntry> = entries
        .iter()
        .filter(|e| q.status.is_none_or(|s| e.status == s) && matches(e, &words))
        .collect();
    let alerts = |e: &FleetEntry| open_alerts.get(&e.agent_id).map(|n| *n as f64);
    let d = q.descending;
    let flip = |o: Ordering| if d { o.reverse() } else { o };
    match q.sort {
        "status" => rows.sort_by(|a, b| flip(a.status.cmp(&b.status))),
        "last_seen" => rows.sort_by(|a, b| {
            by_number(
                a.last_seen_ns.map(|v| v as f64),
                b.last_seen_ns.map(|v| v as f64),
                !d,
            )
        }),
        "version" => rows.sort_by(|a, b| flip(a.version.cmp(&b.version))),
        "cpu" => rows.sort_by(|a, b| by_number(a.cpu_percent, b.cpu_percent, d)),
        "memory" => rows.sort_by(|a, b| by_number(a.memory_percent, b.memory_percent, d)),
        "disk" => rows.sort_by(|a, b| {
            by_number(
                a.fullest_filesystem.as_ref().map(|f| f.percent),
                b.fullest_filesystem.as_ref().map(|f| f.percent),
                d,
            )
        }),
        "backlog" => rows.sort_by(|a, b| {
            by_number(
                a.backlog_events.map(|v| v as f64),
                b.backlog_events.map(|v| v as f64),
                d,
            )
        }),
        "alerts" => rows.sort_by(|a, b| by_number(alerts(a), alerts(b), d)),
        // Entries come sorted by id.
        _ if d => rows.reverse(),
        _ => {}
    }
    let total = rows.len();
    let start = (q.page - 1).saturating_mul(q.per_page).min(total);
    let end = start.saturating_add(q.per_page).min(total);
    (rows[start..end].to_vec(), total)
}

/// Open (pending or firing) alerts per host, from the engine's records.
pub async fn open_alerts_by_host(console: &Console) -> HashMap<String, usize> {
    let mut by_host = HashMap::new();
    for r in super::alerts_page::records(console)
        .await
        .unwrap_or_default()
    {
        if r.resolved_ns.is_none()
            && let Some(host) = r.labels.get("host")
        {
            *by_host.entry(host.clone()).or_insert(0) += 1;
        }
    }
    by_host
}

pub async fn fleet(
    State(console): State<Arc<Console>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = FleetQuery::parse(raw.as_deref());
    let view = match console.api.fleet_view().await {
        Ok(v) => v,
        Err(e) => return error_page(Some(&viewer.session), e.status, &e.message),
    };
    let open_alerts = open_alerts_by_host(&console).await;
    let (rows, total) = select(&view.entries, &open_alerts, &q);
    let now = outpost_common::time::now_ns();
    let body = html! {
        h1 { "Fleet" }
        (counts(&view.summary.by_status, view.summary.total, &q))
        (filter_form(&q))
        div.refresh data-refresh="10" {
            p.summary aria-live="polite" {
                @if total == 0 {
                    "No host matches."
                } @else {
                    "Hosts " ((q.page - 1) * q.per_page + 1) "–" ((q.page - 1) * q.per_page + rows.len())
                    " of " (total) @if total != view.entries.len() { " matching (" (view.entries.len()) " in all)" } "."
                }
            }
            div.table-wrap {
                table #hosts {
                    caption.visually-hidden { "Hosts" }
                    thead { tr { @for (key, heading) in COLUMNS { (sort_heading(&q, key, heading)) } } }
                    tbody {
                        @for e in &rows { (row(e, open_alerts.get(&e.agent_id).copied().unwrap_or(0), now)) }
                    }
                }
            }
            (pager(&q, total))
        }
    };
    respond(layout::page(
        "Fleet",
        "fleet",
        Some(&viewer.session),
        None,
        body,
    ))
}

fn counts(
    by_status: &std::collections::BTreeMap<String, u64>,
    total: u64,
    q: &FleetQuery,
) -> Markup {
    html! {
        ul #counts aria-label="Hosts by status" {
            li data-status="all" {
                a href="/fleet" aria-current=[q.status.is_none().then_some("true")] {
                    span.count { (total) } " hosts"
                }
            }
            @for s in STATUSES {
                @let n = by_status.get(status_name(s)).copied().unwrap_or(0);
                li data-status=(status_name(s)) {
                    a href={ "/fleet?status=" (status_name(s)) }
                        aria-current=[(q.status == Some(s)).then_some("true")] {
                        span.count { (n) } " " (status_label(s))
                    }
                }
            }
        }
    }
}

fn filter_form(q: &FleetQuery) -> Markup {
    html! {
        form #fleet-filter.filters method="get" action="/fleet" role="search" {
            label { "Search " input type="search" name="q" value=(q.q) placeholder="host, label, version…"; }
            label { "Status "
                select name="status" {
                    option value="" selected[q.status.is_none()] { "any" }
                    @for s in STATUSES {
                        option value=(status_name(s)) selected[q.status == Some(s)] { (status_label(s)) }
                    }
                }
            }
            label { "Per page "
                select name="per" {
                    @for n in PER_PAGE_CHOICES { option value=(n) selected[q.per_page == n] { (n) } }
                }
            }
            @if q.sort != "name" { input type="hidden" name="sort" value=(q.sort); }
            @if q.descending { input type="hidden" name="dir" value="desc"; }
            button type="submit" { "Filter" }
        }
    }
}

fn sort_heading(q: &FleetQuery, key: &str, heading: &str) -> Markup {
    let current = q.sort == key;
    let sort = current.then_some(if q.descending {
        "descending"
    } else {
        "ascending"
    });
    // A first click sorts names A–Z and numbers highest first.
    let descending = if current {
        !q.descending
    } else {
        !matches!(key, "name" | "status" | "version")
    };
    html! {
        th scope="col" aria-sort=[sort] {
            a href=(q.link(key, descending, 1)) { (heading) }
        }
    }
}

fn percent(v: Option<f64>) -> Markup {
    match v {
        Some(v) => html! {
            meter min="0" max="100" low="70" high="90" optimum="0" value=(format!("{v:.1}")) {}
            " " span.num { (format!("{v:.0} %")) }
        },
        None => none(),
    }
}

fn row(e: &FleetEntry, alerts: usize, now: i64) -> Markup {
    let status = status_name(e.status);
    html! {
        tr data-agent-id=(e.agent_id) {
            th scope="row" {
                a.host-link href={ "/hosts/" (urlencode(&e.agent_id)) } { (e.agent_id) }
                @if let Some(h) = &e.hostname { @if h != &e.agent_id { br; small.muted { (h) } } }
            }
            td.status data-status=(status) data-label="Status" {
                span class={ "badge " (status) } { (status_label(e.status)) }
                @if !e.reason.is_empty() { br; small { (e.reason) } }
            }
            td data-label="Last seen" { (when(e.last_seen_ns, now)) }
            td data-label="Version" { @if let Some(v) = &e.version { (v) } @else { (none()) } }
            td data-label="CPU" { (percent(e.cpu_percent)) }
            td data-label="Memory" { (percent(e.memory_percent)) }
            td data-label="Fullest filesystem" {
                @if let Some(f) = &e.fullest_filesystem {
                    (percent(Some(f.percent))) " " small.muted { (f.mountpoint) }
                } @else { (none()) }
            }
            td.num data-label="Backlog" {
                @match e.backlog_events { Some(n) => (n), None => (none()) }
            }
            td.num data-label="Open alerts" {
                @if alerts > 0 { a.alerts-count href={ "/alerts?host=" (urlencode(&e.agent_id)) } { (alerts) } } @else { "0" }
            }
        }
    }
}

fn pager(q: &FleetQuery, total: usize) -> Markup {
    let pages = total.div_ceil(q.per_page).max(1);
    html! {
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if q.page > 1 { a rel="prev" href=(q.link(q.sort, q.descending, q.page - 1)) { "← previous" } }
                span { "page " (q.page.min(pages)) " of " (pages) }
                @if q.page < pages { a rel="next" href=(q.link(q.sort, q.descending, q.page + 1)) { "next →" } }
            }
        }
    }
}

/// `s` as one path segment.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, status: HostStatus, cpu: Option<f64>) -> FleetEntry {
        FleetEntry {
            agent_id: id.into(),
            status,
            reason: String::new(),
            last_seen_ns: None,
            version: Some("1.0".into()),
            hostname: Some(format!("{id}.example")),
            os: None,
            connected: false,
            backlog_batches: None,
            backlog_events: None,
            drops_total: None,
            failing_collectors: vec![],
            clock_skew_ns: None,
            certificate_issued: true,
            cpu_percent: cpu,
            memory_percent: None,
            fullest_filesystem: None,
            log_lag_bytes: None,
            labels: [("role".to_owned(), "db".to_owned())].into(),
        }
    }

    fn ids(rows: &[&FleetEntry]) -> Vec<String> {
        rows.iter().map(|e| e.agent_id.clone()).collect()
    }

    #[test]
    fn the_query_reads_its_parameters_and_ignores_bad_ones() {
        let q = FleetQuery::parse(Some(
            "q=+web+&status=offline&sort=cpu&dir=desc&page=3&per=500",
        ));
        assert_eq!(q.q, "web");
        assert_eq!(q.status, Some(HostStatus::Offline));
        assert_eq!(
            (q.sort, q.descending, q.page, q.per_page),
            ("cpu", true, 3, 500)
        );
        let bad = FleetQuery::parse(Some("status=sleeping&sort=evil&page=0&per=7&dir=up"));
        assert_eq!(bad, FleetQuery::parse(None));
        assert_eq!((bad.sort, bad.page, bad.per_page), ("name", 1, PER_PAGE));
    }

    #[test]
    fn search_filters_sorts_and_pages() {
        let entries = vec![
            entry("a", HostStatus::Online, Some(10.0)),
            entry("b", HostStatus::Offline, None),
            entry("c", HostStatus::Online, Some(90.0)),
            entry("web-1", HostStatus::Degraded, Some(50.0)),
        ];
        let alerts = HashMap::from([("b".to_owned(), 2)]);
        let q = |raw: &str| FleetQuery::parse(Some(raw));
        assert_eq!(
            ids(&select(&entries, &alerts, &q("")).0),
            ["a", "b", "c", "web-1"]
        );
        assert_eq!(
            ids(&select(&entries, &alerts, &q("status=online")).0),
            ["a", "c"]
        );
        assert_eq!(ids(&select(&entries, &alerts, &q("q=WEB")).0), ["web-1"]);
        assert_eq!(
            ids(&select(&entries, &alerts, &q("q=role%3Ddb+c")).0),
            ["c"],
            "every word"
        );
        // Numbers highest first with absent ones last, either way.
        assert_eq!(
            ids(&select(&entries, &alerts, &q("sort=cpu&dir=desc")).0),
            ["c", "web-1", "a", "b"]
        );
        assert_eq!(
            ids(&select(&entries, &alerts, &q("sort=cpu")).0),
            ["a", "web-1", "c", "b"]
        );
        assert_eq!(
            ids(&select(&entries, &alerts, &q("sort=alerts&dir=desc")).0)[0],
            "b"
        );
        assert_eq!(
            ids(&select(&entries, &alerts, &q("dir=desc")).0),
            ["web-1", "c", "b", "a"]
        );
        let many: Vec<FleetEntry> = (0..250)
            .map(|i| entry(&format!("h{i:03}"), HostStatus::Online, None))
            .collect();
        let (page, total) = select(&many, &alerts, &q("per=50&page=5"));
        assert_eq!(total, 250);
        assert_eq!(ids(&page).first().map(String::as_str), Some("h200"));
        assert_eq!(page.len(), 50);
        let (past, _) = select(&many, &alerts, &q("page=99"));
        assert!(
            past.is_empty(),
            "a page past the end is empty, not an error"
        );
    }

    #[test]
    fn links_keep_the_query_and_path_segments_are_escaped() {
        let q = FleetQuery::parse(Some("q=a b&status=online&per=50"));
        assert_eq!(
            q.link("cpu", true, 2),
            "/fleet?q=a+b&status=online&sort=cpu&dir=desc&per=50&page=2"
        );
        assert_eq!(urlencode("a/b c"), "a%2Fb%20c");
    }
}
