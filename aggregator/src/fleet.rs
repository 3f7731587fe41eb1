//! Fleet status: for every agent, online, degraded, offline or never seen, with the reason in a
//! sentence.
//!
//! Pure logic over the store's registry ([`AgentRecord`]) and the list of issued certificates,
//! with `now` passed in, so every rule is tested with fixed times. The rules (DESIGN.md, "Host
//! status"):
//!
//! - **online**: heard from within `offline_after` and nothing wrong reported;
//! - **degraded**: online, but a collector is failing, events were dropped within
//!   `degraded_window`, or the backlog has been rising for longer than `backlog_rising_for`;
//! - **offline**: silent for longer than `offline_after`, or its connection was closed and no
//!   new one has said Hello since;
//! - **never seen**: a certificate was issued but the agent never connected.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use outpost_common::event::{DropCounters, DropReason};
use outpost_common::time::{NANOS_PER_SEC, duration_ns};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::AgentRecord;

/// An agent's state as the fleet view reports it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    Online,
    Degraded,
    Offline,
    NeverSeen,
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostStatus::Online => "online",
            HostStatus::Degraded => "degraded",
            HostStatus::Offline => "offline",
            HostStatus::NeverSeen => "never seen",
        })
    }
}

/// One row of the fleet view. Serialised as-is for machines; field names are stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetEntry {
    pub agent_id: String,
    pub status: HostStatus,
    /// Why, in a sentence: "no heartbeat for 2m", "collector metrics.filesystem failing: ...".
    pub reason: String,
    pub last_seen_ns: Option<i64>,
    pub version: Option<String>,
    pub hostname: Option<String>,
    /// The operating system, from the host facts.
    pub os: Option<String>,
    /// Whether a connection is open.
    pub connected: bool,
    /// Batches in the agent's spool not yet acknowledged.
    pub backlog_batches: Option<u64>,
    /// Events in the agent's spool not yet acknowledged.
    pub backlog_events: Option<u64>,
    /// Events the agent dropped since its spool was created.
    pub drops_total: Option<u64>,
    /// Names of the collectors currently failing.
    pub failing_collectors: Vec<String>,
    /// The agent's clock minus the aggregator's (positive: agent ahead).
    pub clock_skew_ns: Option<i64>,
    /// Whether the agent's certificate is among the issued ones.
    pub certificate_issued: bool,
    /// The latest busy share of all CPUs, 0..100.
    pub cpu_percent: Option<f64>,
    /// The latest used share of memory, 0..100.
    pub memory_percent: Option<f64>,
    /// The fullest filesystem of the latest collection.
    pub fullest_filesystem: Option<FilesystemUsage>,
    /// Bytes written to the agent's log files and not read yet.
    pub log_lag_bytes: Option<u64>,
    /// The labels set in the agent's configuration.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How full one filesystem is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilesystemUsage {
    pub mountpoint: String,
    /// Used share, 0..100.
    pub percent: f64,
}

/// The thresholds of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetPolicy {
    /// Silence after which an agent is offline.
    pub offline_after: Duration,
    /// How long after its drop count last grew an agent stays degraded.
    pub degraded_window: Duration,
    /// How long the backlog must keep rising before the agent is degraded.
    pub backlog_rising_for: Duration,
}

impl Default for FleetPolicy {
    /// 45 s offline (with a 10 s heartbeat, four missed beats), 5 min for recent drops, 30 s of
    /// rising backlog.
    fn default() -> Self {
        FleetPolicy {
            offline_after: Duration::from_secs(45),
            degraded_window: Duration::from_secs(5 * 60),
            backlog_rising_for: Duration::from_secs(30),
        }
    }
}

/// The status of every agent in the registry and every issued certificate.
///
/// `issued`: agent ids that have a certificate (from the PKI directory); those never seen in the
/// registry are NeverSeen. Sorted by agent id.
pub fn fleet_status(
    agents: &[AgentRecord],
    issued: &[String],
    policy: &FleetPolicy,
    now_ns: i64,
) -> Vec<FleetEntry> {
    let issued_set: std::collections::HashSet<&str> = issued.iter().map(String::as_str).collect();
    let mut entries: BTreeMap<&str, FleetEntry> = agents
        .iter()
        .map(|a| {
            let certificate_issued = issued_set.contains(a.agent_id.as_str());
            (
                a.agent_id.as_str(),
                entry(a, certificate_issued, policy, now_ns),
            )
        })
        .collect();
    for id in issued {
        entries.entry(id).or_insert_with(|| never_seen(id));
    }
    entries.into_values().collect()
}

/// A table for people: AGENT STATUS LAST SEEN VERSION BACKLOG CPU MEM FULLEST FS REASON.
///
/// Control characters in agent-supplied text (collector errors, disconnect reasons) are shown as
/// spaces, so a hostile agent cannot drive the operator's terminal.
pub fn render_table(entries: &[FleetEntry], now_ns: i64) -> String {
    const HEADER: [&str; 10] = [
        "AGENT",
        "STATUS",
        "LAST SEEN",
        "VERSION",
        "BACKLOG",
        "LOG LAG",
        "CPU",
        "MEM",
        "FULLEST FS",
        "REASON",
    ];
    let rows: Vec<[String; 10]> = entries
        .iter()
        .map(|e| {
            [
                e.agent_id.clone(),
                e.status.to_string(),
                e.last_seen_ns.map_or_else(
                    || "never".to_owned(),
                    |t| format!("{} ago", human_duration(now_ns.saturating_sub(t))),
                ),
                e.version.clone().unwrap_or_else(|| "-".to_owned()),
                e.backlog_batches.map_or_else(|| "-".to_owned(), thousands),
                e.log_lag_bytes.map_or_else(
                    || "-".to_owned(),
                    |b| bytesize::ByteSize::b(b).display().iec().to_string(),
                ),
                e.cpu_percent.map_or_else(|| "-".to_owned(), percent),
                e.memory_percent.map_or_else(|| "-".to_owned(), percent),
                e.fullest_filesystem.as_ref().map_or_else(
                    || "-".to_owned(),
                    |f| format!("{} {}", f.mountpoint, percent(f.percent)),
                ),
                e.reason.clone(),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    render_columns(&HEADER, &rows)
}

/// A plain-text table: the header, then one line per row, columns padded to their widest cell
/// and two spaces apart, the last column unpadded. Control characters in cells print as spaces.
pub(crate) fn render_columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| printable(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = width - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Stable JSON for machines: an array of [`FleetEntry`] objects, sorted by agent id.
pub fn render_json(entries: &[FleetEntry]) -> String {
    // Plain structs with string keys, strings, integers and booleans always serialise.
    serde_json::to_string_pretty(entries).expect("fleet entries serialise to JSON")
}

fn entry(
    a: &AgentRecord,
    certificate_issued: bool,
    policy: &FleetPolicy,
    now_ns: i64,
) -> FleetEntry {
    let (status, reason) = judge(a, policy, now_ns);
    let s = a.status.as_ref();
    let summary = a.host_summary.as_ref();
    FleetEntry {
        agent_id: a.agent_id.clone(),
        status,
        reason,
        last_seen_ns: Some(a.last_seen_ns),
        version: a
            .agent_version
            .clone()
            .or_else(|| s.map(|s| s.agent_version.clone())),
        hostname: a.host.as_ref().map(|h| h.hostname.clone()),
        os: a.host.as_ref().map(|h| h.os.clone()),
        labels: a.labels.clone(),
        connected: a.connected,
        backlog_batches: s.map(|s| s.backlog_batches),
        backlog_events: s.map(|s| s.spool_events),
        log_lag_bytes: s.map(|s| s.logs.lag_bytes),
        drops_total: s.map(|s| drops_total(&s.drops)),
        failing_collectors: s
            .map(|s| {
                s.collector_errors
                    .iter()
                    .map(|e| e.collector.clone())
                    .collect()
            })
            .unwrap_or_default(),
        clock_skew_ns: a.clock_skew_ns,
        certificate_issued,
        cpu_percent: summary.and_then(|h| h.cpu_busy).map(|(f, _)| f * 100.0),
        memory_percent: summary.and_then(|h| h.memory_used).map(|(f, _)| f * 100.0),
        fullest_filesystem: summary.and_then(|h| h.fullest_fs.as_ref()).map(
            |(mountpoint, f, _)| FilesystemUsage {
                mountpoint: mountpoint.clone(),
                percent: f * 100.0,
            },
        ),
    }
}

fn never_seen(agent_id: &str) -> FleetEntry {
    FleetEntry {
        agent_id: agent_id.to_owned(),
        status: HostStatus::NeverSeen,
        reason: "certificate issued, never connected".to_owned(),
        last_seen_ns: None,
        version: None,
        hostname: None,
        os: None,
        labels: BTreeMap::new(),
        connected: false,
        backlog_batches: None,
        backlog_events: None,
        drops_total: None,
        failing_collectors: Vec::new(),
        clock_skew_ns: None,
        certificate_issued: true,
        cpu_percent: None,
        memory_percent: None,
        fullest_filesystem: None,
        log_lag_bytes: None,
    }
}

/// The status of an agent in the registry, and why.
fn judge(a: &AgentRecord, policy: &FleetPolicy, now_ns: i64) -> (HostStatus, String) {
    if !a.connected
        && let Some(at) = a.last_disconnect_ns
    {
        let ago = human_duration(now_ns.saturating_sub(at));
        let reason = match a.last_disconnect_reason.as_deref() {
            Some(r) if !r.is_empty() => format!("disconnected {ago} ago: {r}"),
            _ => format!("disconnected {ago} ago"),
        };
        return (HostStatus::Offline, reason);
    }
    let silent = now_ns.saturating_sub(a.last_seen_ns);
    if silent > duration_ns(policy.offline_after) {
        return (
            HostStatus::Offline,
            format!("no heartbeat for {}", human_duration(silent)),
        );
    }

    let mut problems = Vec::new();
    if let Some(s) = &a.status {
        for e in &s.collector_errors {
            problems.push(format!("collector {} failing: {}", e.collector, e.reason));
        }
    }
    if let Some(at) = a.drops_changed_ns
        && now_ns.saturating_sub(at) <= duration_ns(policy.degraded_window)
    {
        problems.push(drops_sentence(
            &a.drops_last_increase,
            now_ns.saturating_sub(at),
        ));
    }
    if let Some(since) = a.backlog_rising_since_ns
        && now_ns.saturating_sub(since) > duration_ns(policy.backlog_rising_for)
    {
        let batches = a.status.as_ref().map_or(0, |s| s.backlog_batches);
        problems.push(format!(
            "backlog rising for {} ({} batches)",
            human_duration(now_ns.saturating_sub(since)),
            thousands(batches)
        ));
    }
    if problems.is_empty() {
        (
            HostStatus::Online,
            format!("last heard from {} ago", human_duration(silent)),
        )
    } else {
        (HostStatus::Degraded, problems.join("; "))
    }
}

/// "12 events dropped (spool_full_evicted) 40s ago", naming the count per reason when several.
fn drops_sentence(increase: &DropCounters, ago_ns: i64) -> String {
    let parts: Vec<(u64, &str)> = DropReason::ALL
        .iter()
        .map(|&r| (increase.get(r), r.as_str()))
        .filter(|&(n, _)| n > 0)
        .collect();
    let total = drops_total(increase);
    let noun = if total == 1 { "event" } else { "events" };
    let why = match parts.as_slice() {
        [(_, reason)] => (*reason).to_owned(),
        _ => parts
            .iter()
            .map(|(n, reason)| format!("{} {reason}", thousands(*n)))
            .collect::<Vec<_>>()
            .join(", "),
    };
    format!(
        "{} {noun} dropped ({why}) {} ago",
        thousands(total),
        human_duration(ago_ns)
    )
}

/// The sum of all drop counters, saturating: the numbers come from the agent.
fn drops_total(d: &DropCounters) -> u64 {
    DropReason::ALL
        .iter()
        .fold(0u64, |sum, &r| sum.saturating_add(d.get(r)))
}

/// A coarse duration for people: "3s", "2m", "5h", "3d". Negative reads as "0s".
fn human_duration(ns: i64) -> String {
    let secs = ns.max(0) / NANOS_PER_SEC;
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..172_800 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// 12.4 as "12%", rounded to whole percent.
fn percent(p: f64) -> String {
    format!("{p:.0}%")
}

/// 3200 as "3,200".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use outpost_common::event::{AgentStatus, CollectorError, HostFacts};

    use super::*;
    use crate::store::HostSummary;

    const NOW: i64 = 1_700_000_000 * NANOS_PER_SEC;

    fn secs(n: i64) -> i64 {
        n * NANOS_PER_SEC
    }

    /// A healthy, connected agent last heard from `ago` seconds before NOW.
    fn agent(id: &str, ago: i64) -> AgentRecord {
        AgentRecord {
            agent_id: id.to_owned(),
            spool_id: Some(1),
            first_seen_ns: NOW - secs(3600),
            last_seen_ns: NOW - secs(ago),
            agent_version: Some("1.2.3".to_owned()),
            host: Some(HostFacts {
                hostname: format!("{id}.example"),
                ..HostFacts::default()
            }),
            connected: true,
            last_disconnect_ns: None,
            last_disconnect_reason: None,
            status: Some(AgentStatus {
                backlog_batches: 2,
                spool_events: 150,
                ..AgentStatus::default()
            }),
            status_received_ns: Some(NOW - secs(ago)),
            drops_changed_ns: None,
            labels: BTreeMap::new(),
            drops_last_increase: DropCounters::default(),
            backlog_rising_since_ns: None,
            clock_skew_ns: Some(0),
            host_summary: None,
        }
    }

    /// A host 12.4% busy, 43% of memory used, /var 87% full.
    fn loaded() -> HostSummary {
        HostSummary {
            cpu_busy: Some((0.124, NOW - secs(10))),
            memory_used: Some((0.43, NOW - secs(10))),
            fullest_fs: Some(("/var".to_owned(), 0.875, NOW - secs(10))),
        }
    }

    fn judge_one(a: AgentRecord) -> FleetEntry {
        fleet_status(&[a], &[], &FleetPolicy::default(), NOW).remove(0)
    }

    fn status_mut(a: &mut AgentRecord) -> &mut AgentStatus {
        a.status.as_mut().unwrap()
    }

    fn failing(collector: &str, reason: &str) -> CollectorError {
        CollectorError {
            collector: collector.to_owned(),
            reason: reason.to_owned(),
            since_ns: NOW - secs(60),
        }
    }

    #[test]
    fn heard_from_recently_is_online() {
        let e = judge_one(agent("web-1", 3));
        assert_eq!(e.status, HostStatus::Online);
        assert_eq!(e.reason, "last heard from 3s ago");
        assert_eq!(e.hostname.as_deref(), Some("web-1.example"));
        assert_eq!((e.backlog_batches, e.backlog_events), (Some(2), Some(150)));
        // Exactly at the limit still counts as heard from within it.
        assert_eq!(judge_one(agent("web-1", 45)).status, HostStatus::Online);
    }

    #[test]
    fn silent_for_longer_than_offline_after_is_offline() {
        let e = judge_one(agent("web-1", 46));
        assert_eq!(e.status, HostStatus::Offline);
        assert_eq!(e.reason, "no heartbeat for 46s");
        let e = judge_one(agent("web-1", 125));
        assert_eq!(e.reason, "no heartbeat for 2m");
    }

    #[test]
    fn a_closed_connection_is_offline_at_once_with_its_reason() {
        let mut a = agent("web-1", 5);
        a.connected = false;
        a.last_disconnect_ns = Some(NOW - secs(5));
        a.last_disconnect_reason = Some("agent shutting down".to_owned());
        let e = judge_one(a.clone());
        assert_eq!(e.status, HostStatus::Offline);
        assert_eq!(e.reason, "disconnected 5s ago: agent shutting down");
        a.last_disconnect_reason = Some(String::new());
        assert_eq!(judge_one(a).reason, "disconnected 5s ago");

        // Known only from batches (never a Hello): judged by silence alone.
        let mut a = agent("web-2", 5);
        a.connected = false;
        assert_eq!(judge_one(a).status, HostStatus::Online);
    }

    #[test]
    fn a_failing_collector_degrades() {
        let mut a = agent("web-1", 3);
        status_mut(&mut a).collector_errors =
            vec![failing("metrics.filesystem", "statvfs /mnt/nfs: timed out")];
        let e = judge_one(a);
        assert_eq!(e.status, HostStatus::Degraded);
        assert_eq!(
            e.reason,
            "collector metrics.filesystem failing: statvfs /mnt/nfs: timed out"
        );
        assert_eq!(e.failing_collectors, ["metrics.filesystem"]);
    }

    #[test]
    fn drops_degrade_within_the_window_only() {
        let mut a = agent("web-1", 3);
        a.drops_changed_ns = Some(NOW - secs(40));
        a.drops_last_increase.spool_full_evicted = 12;
        status_mut(&mut a).drops.spool_full_evicted = 1_012;
        let e = judge_one(a.clone());
        assert_eq!(e.status, HostStatus::Degraded);
        assert_eq!(e.reason, "12 events dropped (spool_full_evicted) 40s ago");
        assert_eq!(e.drops_total, Some(1_012));

        a.drops_last_increase.oversized = 1;
        assert_eq!(
            judge_one(a.clone()).reason,
            "13 events dropped (12 spool_full_evicted, 1 oversized) 40s ago"
        );

        a.drops_changed_ns = Some(NOW - secs(5 * 60));
        assert_eq!(judge_one(a.clone()).status, HostStatus::Degraded);
        a.drops_changed_ns = Some(NOW - secs(5 * 60 + 1));
        let e = judge_one(a);
        assert_eq!(e.status, HostStatus::Online);
        assert_eq!(e.drops_total, Some(1_012));
    }

    #[test]
    fn a_backlog_rising_for_too_long_degrades() {
        let mut a = agent("web-1", 3);
        status_mut(&mut a).backlog_batches = 3_200;
        a.backlog_rising_since_ns = Some(NOW - secs(30));
        assert_eq!(judge_one(a.clone()).status, HostStatus::Online);
        a.backlog_rising_since_ns = Some(NOW - secs(65));
        let e = judge_one(a);
        assert_eq!(e.status, HostStatus::Degraded);
        assert_eq!(e.reason, "backlog rising for 1m (3,200 batches)");
    }

    #[test]
    fn several_problems_are_all_named() {
        let mut a = agent("web-1", 3);
        status_mut(&mut a).collector_errors = vec![failing("logs", "permission denied")];
        a.drops_changed_ns = Some(NOW);
        a.drops_last_increase.oversized = 1;
        a.backlog_rising_since_ns = Some(NOW - secs(7200));
        assert_eq!(
            judge_one(a).reason,
            "collector logs failing: permission denied; 1 event dropped (oversized) 0s ago; \
             backlog rising for 2h (2 batches)"
        );
    }

    #[test]
    fn offline_wins_over_degraded() {
        let mut a = agent("web-1", 60);
        a.drops_changed_ns = Some(NOW - secs(60));
        a.drops_last_increase.oversized = 1;
        assert_eq!(judge_one(a).status, HostStatus::Offline);
    }

    #[test]
    fn issued_but_never_connected_is_never_seen_and_all_are_sorted() {
        let agents = [agent("web-2", 3), agent("db-1", 100)];
        let issued = ["web-2".to_owned(), "app-9".to_owned(), "app-9".to_owned()];
        let entries = fleet_status(&agents, &issued, &FleetPolicy::default(), NOW);
        let summary: Vec<_> = entries
            .iter()
            .map(|e| (e.agent_id.as_str(), e.status, e.certificate_issued))
            .collect();
        assert_eq!(
            summary,
            [
                ("app-9", HostStatus::NeverSeen, true),
                ("db-1", HostStatus::Offline, false),
                ("web-2", HostStatus::Online, true),
            ]
        );
        assert_eq!(entries[0].reason, "certificate issued, never connected");
        assert_eq!(entries[0].last_seen_ns, None);
    }

    #[test]
    fn statuses_read_as_words() {
        let words: Vec<_> = [
            HostStatus::Online,
            HostStatus::Degraded,
            HostStatus::Offline,
            HostStatus::NeverSeen,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(words, ["online", "degraded", "offline", "never seen"]);
    }

    #[test]
    fn the_table_lines_up_and_escapes_control_characters() {
        let mut odd = agent("web-1", 3);
        status_mut(&mut odd).collector_errors = vec![failing("logs", "bad\u{1b}[2Jthing\nhere")];
        status_mut(&mut odd).logs.lag_bytes = 3 * 1024 * 1024 + 300 * 1024;
        odd.host_summary = Some(HostSummary {
            fullest_fs: Some(("/srv/\u{1b}[2J".to_owned(), 1.0, NOW)),
            ..loaded()
        });
        let mut db = agent("db-1", 600);
        // Memory not reported yet.
        db.host_summary = Some(HostSummary {
            memory_used: None,
            ..loaded()
        });
        let entries = fleet_status(
            &[odd, db],
            &["new-1".to_owned()],
            &FleetPolicy::default(),
            NOW,
        );
        let table = render_table(&entries, NOW);
        let expected = "\
AGENT  STATUS      LAST SEEN  VERSION  BACKLOG  LOG LAG  CPU  MEM  FULLEST FS      REASON
db-1   offline     10m ago    1.2.3    2        0 B      12%  -    /var 88%        no heartbeat for 10m
new-1  never seen  never      -        -        -        -    -    -               certificate issued, never connected
web-1  degraded    3s ago     1.2.3    2        3.3 MiB  12%  43%  /srv/ [2J 100%  collector logs failing: bad [2Jthing here
";
        assert_eq!(table, expected);
    }

    #[test]
    fn json_is_stable() {
        let entries = fleet_status(&[], &["new-1".to_owned()], &FleetPolicy::default(), NOW);
        let expected = r#"[
  {
    "agent_id": "new-1",
    "status": "never_seen",
    "reason": "certificate issued, never connected",
    "last_seen_ns": null,
    "version": null,
    "hostname": null,
    "os": null,
    "connected": false,
    "backlog_batches": null,
    "backlog_events": null,
    "drops_total": null,
    "failing_collectors": [],
    "clock_skew_ns": null,
    "certificate_issued": true,
    "cpu_percent": null,
    "memory_percent": null,
    "fullest_filesystem": null,
    "log_lag_bytes": null,
    "labels": {}
  }
]"#;
        assert_eq!(render_json(&entries), expected);
        let online = fleet_status(&[agent("a", 1)], &[], &FleetPolicy::default(), NOW);
        assert!(render_json(&online).contains(r#""status": "online""#));
    }

    #[test]
    fn the_host_summary_is_shown_in_percent() {
        let mut a = agent("web-1", 3);
        a.host_summary = Some(HostSummary {
            cpu_busy: Some((0.25, NOW)),
            memory_used: Some((0.5, NOW)),
            fullest_fs: Some(("/var".to_owned(), 0.875, NOW)),
        });
        let e = judge_one(a);
        assert_eq!(e.cpu_percent, Some(25.0));
        assert_eq!(e.memory_percent, Some(50.0));
        assert_eq!(
            e.fullest_filesystem,
            Some(FilesystemUsage {
                mountpoint: "/var".to_owned(),
                percent: 87.5
            })
        );
        let json = render_json(&[e]);
        assert!(json.contains(r#""cpu_percent": 25.0,"#), "{json}");
        assert!(json.contains(r#""memory_percent": 50.0,"#), "{json}");
        assert!(
            json.contains(
                r#""fullest_filesystem": {
      "mountpoint": "/var",
      "percent": 87.5
    }"#
            ),
            "{json}"
        );

        let e = judge_one(agent("web-2", 3));
        assert_eq!(
            (e.cpu_percent, e.memory_percent, e.fullest_filesystem),
            (None, None, None)
        );
    }

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(human_duration(-5), "0s");
        assert_eq!(human_duration(secs(59)), "59s");
        assert_eq!(human_duration(secs(60)), "1m");
        assert_eq!(human_duration(secs(3_599)), "59m");
        assert_eq!(human_duration(secs(3_600)), "1h");
        assert_eq!(human_duration(secs(47 * 3_600)), "47h");
        assert_eq!(human_duration(secs(3 * 86_400)), "3d");
        assert_eq!(human_duration(i64::MAX), "106751d");
    }

    #[test]
    fn hostile_numbers_do_not_overflow() {
        let mut a = agent("web-1", 3);
        a.last_seen_ns = i64::MIN;
        a.drops_changed_ns = Some(i64::MIN);
        a.drops_last_increase = DropCounters {
            spool_full_evicted: u64::MAX,
            spool_full_rejected: u64::MAX,
            rejected_by_aggregator: 0,
            oversized: 0,
            spool_write_failed: u64::MAX,
            disk_full: 0,
        };
        status_mut(&mut a).drops = a.drops_last_increase.clone();
        let e = fleet_status(&[a.clone()], &[], &FleetPolicy::default(), i64::MAX).remove(0);
        assert_eq!(e.status, HostStatus::Offline);
        assert_eq!(e.drops_total, Some(u64::MAX));
        a.last_seen_ns = i64::MAX;
        a.drops_changed_ns = Some(i64::MAX);
        let e = fleet_status(&[a], &[], &FleetPolicy::default(), i64::MIN).remove(0);
        assert_eq!(e.status, HostStatus::Degraded);
        assert!(
            e.reason
                .starts_with("18,446,744,073,709,551,615 events dropped"),
            "{}",
            e.reason
        );
    }
}
