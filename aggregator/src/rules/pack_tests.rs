//! The default rule pack, `packaging/rules.d`: it loads whole, and each rule fires on the events
//! it is about, built as the agent and the store really make them, and stays quiet on those just
//! short of it.
//!
//! The builders of events (metric points of the agent's families, journal and auth.log records of
//! sshd and sudo, file-integrity changes, the store's trail-break notice) are `pub(crate)` so that
//! other tests can feed the pack the same events. Time is simulated: [`at`] gives the time `s`
//! seconds after [`T0`], and each test hands the evaluators the time of each event as `now`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use outpost_common::event::{
    CHAIN_GENESIS, DropReason, Event, FileKind, FileState, FimChange, FimDetection, FimEvent,
    LogRecord, MetricKind, MetricPoint, Severity as LogSeverity, chain_hash,
};

use super::alert::Change;
use super::file::{Condition, Rule, load_dir};
use super::lifecycle::Transition;
use super::{AbsenceEvaluator, Evaluator, LogEvaluator};
use crate::store::fim_trail::{BreakKind, NOTICE_SOURCE};
use crate::store::summary::{CPU_UTILIZATION, FILESYSTEM_UTILIZATION, MEMORY_UTILIZATION};

pub(crate) const S: i64 = 1_000_000_000;

/// The start of the simulated clock: 2026-12-01T10:00:00Z, so that times look like the agent's.
pub(crate) const T0: i64 = 1_796_119_200 * S;

/// `s` seconds after [`T0`].
pub(crate) fn at(s: i64) -> i64 {
    T0 + s * S
}

/// The pack's directory in the source tree.
pub(crate) fn pack_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/rules.d")
}

/// The pack's rules; panics with every error if it does not load.
pub(crate) fn pack() -> Vec<Rule> {
    load_dir(&pack_dir()).unwrap_or_else(|errors| {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("the rule pack does not load:\n{}", errors.join("\n"))
    })
}

// Metric points, as the agent's metric families send them.

fn point(
    name: &str,
    unit: &str,
    kind: MetricKind,
    attributes: &[(&str, &str)],
    time_ns: i64,
    value: f64,
) -> MetricPoint {
    MetricPoint {
        name: name.to_owned(),
        unit: unit.to_owned(),
        attributes: owned(attributes),
        time_ns,
        value,
        kind,
    }
}

/// A gauge of a share, from 0 to 1 (unit `1`).
fn share_of(name: &str, attributes: &[(&str, &str)], time_ns: i64, share: f64) -> MetricPoint {
    point(name, "1", MetricKind::Gauge, attributes, time_ns, share)
}

/// The idle share of the host's CPUs together (no `cpu` attribute).
pub(crate) fn cpu_idle(time_ns: i64, share: f64) -> MetricPoint {
    share_of(CPU_UTILIZATION, &[("state", "idle")], time_ns, share)
}

/// The idle share of one core, `cpu0`, `cpu1`, ….
pub(crate) fn core_idle(cpu: &str, time_ns: i64, share: f64) -> MetricPoint {
    share_of(
        CPU_UTILIZATION,
        &[("cpu", cpu), ("state", "idle")],
        time_ns,
        share,
    )
}

/// The share of memory used, as free(1) counts it.
pub(crate) fn memory_used(time_ns: i64, share: f64) -> MetricPoint {
    share_of(MEMORY_UTILIZATION, &[("state", "used")], time_ns, share)
}

/// A filesystem's df `Use%` as a fraction: an ext4 on `device`, mounted at `mountpoint`.
pub(crate) fn filesystem_used(
    device: &str,
    mountpoint: &str,
    time_ns: i64,
    share: f64,
) -> MetricPoint {
    let attributes = [
        ("device", device),
        ("type", "ext4"),
        ("mountpoint", mountpoint),
    ];
    share_of(FILESYSTEM_UTILIZATION, &attributes, time_ns, share)
}

/// The agent's cumulative count of events dropped for `reason`.
pub(crate) fn agent_drops(reason: DropReason, time_ns: i64, total: u64) -> MetricPoint {
    let attributes = [("reason", reason.as_str())];
    let total = total as f64;
    point(
        "outpost.agent.drops",
        "{event}",
        MetricKind::Counter,
        &attributes,
        time_ns,
        total,
    )
}

// Log records, as the agent's journal reader and syslog file parser make them.

/// A program that logs: its systemd unit, its name (the journal's SYSLOG_IDENTIFIER and _COMM,
/// syslog's tag) and its pid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Program {
    pub unit: &'static str,
    pub name: &'static str,
    pub pid: u32,
    /// Whether its syslog lines carry the pid after the tag (`sshd[811]:`, but `sudo:`).
    pub tags_pid: bool,
}

/// sshd as Debian and Ubuntu run it.
pub(crate) const SSHD: Program = Program {
    unit: "ssh.service",
    name: "sshd",
    pid: 811,
    tags_pid: true,
};

/// sudo, run from a login session.
pub(crate) const SUDO: Program = Program {
    unit: "session-4.scope",
    name: "sudo",
    pid: 2201,
    tags_pid: false,
};

impl Program {
    /// A journal entry of the program on `host`: source `journal:<unit>`, MESSAGE the body,
    /// PRIORITY the severity, and the fields the journal reader keeps as attributes.
    pub(crate) fn journal(
        &self,
        host: &str,
        time_ns: i64,
        severity: LogSeverity,
        message: &str,
    ) -> LogRecord {
        let attributes = [
            ("unit", self.unit),
            ("identifier", self.name),
            ("pid", &self.pid.to_string()),
            ("boot_id", "5a5dbe6ad4b34ab0b7a2e5e3f4a0b1c2"),
            ("hostname", host),
            ("comm", self.name),
            ("transport", "syslog"),
        ];
        LogRecord {
            time_ns,
            source: format!("journal:{}", self.unit),
            severity: Some(severity),
            body: message.to_owned(),
            attributes: owned(&attributes),
        }
    }

    /// A line the program wrote to /var/log/auth.log (through rsyslog) on `host`, read with the
    /// syslog parser: the body is the text after the tag's colon, leading blanks trimmed, and
    /// there is no severity (the file's lines carry no priority).
    pub(crate) fn auth_log(&self, host: &str, time_ns: i64, message: &str) -> LogRecord {
        let pid = self.pid.to_string();
        let mut attributes = vec![("host", host), ("app", self.name)];
        if self.tags_pid {
            attributes.push(("pid", &pid));
        }
        LogRecord {
            time_ns,
            source: "/var/log/auth.log".to_owned(),
            severity: None,
            body: message.trim_start().to_owned(),
            attributes: owned(&attributes),
        }
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// sshd's message for a wrong password, `invalid user` when the account does not exist.
pub(crate) fn failed_password(user: &str, invalid: bool, src_ip: &str, port: u16) -> String {
    let invalid = if invalid { "invalid user " } else { "" };
    format!("Failed password for {invalid}{user} from {src_ip} port {port} ssh2")
}

/// sshd's message for a login with a password.
pub(crate) fn accepted_password(user: &str, src_ip: &str, port: u16) -> String {
    format!("Accepted password for {user} from {src_ip} port {port} ssh2")
}

/// sshd's message for a login with a key, which names the key after the protocol.
pub(crate) fn accepted_publickey(user: &str, src_ip: &str, port: u16) -> String {
    format!(
        "Accepted publickey for {user} from {src_ip} port {port} ssh2: ED25519 \
         SHA256:Nq3JHeCPAD3uA2MNn6Zxrrq3DgwHHPjEOQJmOdbBv7Q"
    )
}

/// PAM's message when sudo asked `user` for a password and got a wrong one.
pub(crate) fn sudo_pam_failure(user: &str) -> String {
    format!(
        "pam_unix(sudo:auth): authentication failure; logname={user} uid=1000 euid=0 \
         tty=/dev/pts/0 ruser={user} rhost=  user={user}"
    )
}

/// sudo's own message after `attempts` wrong passwords, with its usual padding.
pub(crate) fn sudo_incorrect_passwords(user: &str, attempts: u32) -> String {
    let plural = if attempts == 1 { "" } else { "s" };
    format!(
        "   {user} : {attempts} incorrect password attempt{plural} ; TTY=pts/0 ; \
         PWD=/home/{user} ; USER=root ; COMMAND=/usr/bin/id"
    )
}

/// sudo's message for a command it ran.
pub(crate) fn sudo_command(user: &str) -> String {
    format!("   {user} : TTY=pts/0 ; PWD=/home/{user} ; USER=root ; COMMAND=/usr/bin/id")
}

// File integrity.

/// A root-owned configuration file as the integrity monitor records it, `version` telling its
/// contents apart.
fn config_file(time_ns: i64, version: u8) -> Box<FileState> {
    Box::new(FileState {
        kind: FileKind::File,
        size: 2_800 + u64::from(version),
        mode: 0o100_644,
        uid: 0,
        gid: 0,
        mtime_ns: time_ns,
        ctime_ns: time_ns,
        inode: 1_318_000 + u64::from(version),
        device: 0x803,
        nlink: 1,
        link_target: None,
        xattrs: None,
        hash: Some(format!("sha256:{}", format!("{version:02x}").repeat(32))),
        too_large_to_hash: false,
    })
}

/// A realtime file-integrity event of `path`, the first of its agent's trail (chained as the
/// agent chains it); `moved_from` for a move.
pub(crate) fn fim_event(
    time_ns: i64,
    path: &str,
    change: FimChange,
    moved_from: Option<&str>,
) -> FimEvent {
    let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect();
    let before = config_file(time_ns - 3_600 * S, 1);
    let after = config_file(time_ns, 2);
    let (before, after, changed) = match change {
        FimChange::Created => (None, Some(after), Vec::new()),
        FimChange::Deleted => (Some(before), None, Vec::new()),
        FimChange::Modified => (
            Some(before),
            Some(after),
            names(&["size", "mtime", "ctime", "inode", "hash"]),
        ),
        FimChange::MetadataChanged => {
            let after = Box::new(FileState {
                mode: 0o100_666,
                ..(*before).clone()
            });
            (Some(before), Some(after), names(&["mode"]))
        }
        FimChange::Moved => (Some(before), Some(after), names(&["ctime"])),
        FimChange::TypeChanged => {
            let link = Box::new(FileState {
                kind: FileKind::Symlink,
                link_target: Some("/tmp/x".to_owned()),
                hash: None,
                ..(*after).clone()
            });
            (
                Some(before),
                Some(link),
                names(&["kind", "link_target", "hash"]),
            )
        }
    };
    let mut event = FimEvent {
        time_ns,
        path: path.to_owned(),
        change,
        changed,
        moved_from: moved_from.map(str::to_owned),
        before,
        after,
        detected_by: FimDetection::Realtime,
        seq: 1,
        chain: String::new(),
    };
    event.chain = chain_hash(CHAIN_GENESIS, &event);
    event
}

/// The critical record the store adds to `agent`'s logs, received at `time_ns`, for a break of
/// its file-integrity trail found at event `seq` (of `/etc/passwd`) where `expected_seq` was due.
pub(crate) fn trail_notice(
    agent: &str,
    time_ns: i64,
    kind: BreakKind,
    seq: u64,
    expected_seq: u64,
) -> LogRecord {
    let path = "/etc/passwd";
    LogRecord {
        time_ns,
        source: NOTICE_SOURCE.to_owned(),
        severity: Some(LogSeverity::Critical),
        body: format!(
            "file-integrity trail of agent {agent} broken at event {seq} ({path}): {kind}: \
             expected event {expected_seq}"
        ),
        attributes: owned(&[
            ("kind", kind.as_str()),
            ("seq", &seq.to_string()),
            ("expected_seq", &expected_seq.to_string()),
            ("path", path),
        ]),
    }
}

// Running the pack.

/// The alerts of `rule` that fired among `changes`: when (seconds after [`T0`]), with their
/// labels.
fn fired(changes: &[Change], rule: &str) -> Vec<(i64, BTreeMap<String, String>)> {
    changes
        .iter()
        .filter(|c| c.rule == rule && c.transition == Transition::Fired)
        .map(|c| ((c.at_ns - T0) / S, c.labels.clone()))
        .collect()
}

/// An alert's labels: `alertname`, `severity` and `team` of the rule, and `pairs`.
fn labels(
    rule: &str,
    severity: &str,
    team: &str,
    pairs: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let fixed = [("alertname", rule), ("severity", severity), ("team", team)];
    fixed
        .iter()
        .chain(pairs)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The pack's threshold rules over `host`'s points: every `every` seconds from 0 to `until`,
/// the points `series` gives for that second, each observed then, and a tick.
fn run_metrics(
    host: &str,
    every: i64,
    until: i64,
    series: impl Fn(i64) -> Vec<MetricPoint>,
) -> Vec<Change> {
    let mut e = Evaluator::new(pack());
    let mut changes = Vec::new();
    for t in (0..=until).step_by(every as usize) {
        for p in series(t) {
            changes.extend(e.observe(host, &p, at(t)));
        }
        changes.extend(e.tick(at(t)));
    }
    changes
}

/// The pack's log rules over `(host, record)` pairs, each observed at its own time.
fn run_logs(records: &[(&str, LogRecord)]) -> Vec<Change> {
    let mut e = LogEvaluator::new(pack());
    let mut changes = Vec::new();
    for (host, record) in records {
        changes.extend(e.observe(host, record, record.time_ns));
    }
    changes
}

/// The rules' names, in the order the pack loads them (its files by name).
const NAMES: [&str; 17] = [
    "agent-dropping-data",
    "agent-clock-skew",
    "agent-certificate-expiring",
    "host-down",
    "cpu-busy",
    "memory-full",
    "filesystem-full",
    "inodes-full",
    "filesystem-full-soon",
    "accounts-changed",
    "sudoers-changed",
    "sshd-config-changed",
    "fim-trail-broken",
    "ssh-brute-force",
    "ssh-failures-across-hosts",
    "ssh-login-after-failures",
    "sudo-auth-failure",
];

#[test]
fn the_pack_loads_whole_and_every_rule_says_who_owns_it_and_where_its_runbook_is() {
    let rules = pack();
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, NAMES);
    for rule in &rules {
        let team = rule.labels.get("team").map(String::as_str);
        assert!(
            matches!(team, Some("ops" | "security")),
            "{}: team {team:?}",
            rule.name
        );
        for key in ["summary", "description"] {
            assert!(
                rule.annotations.contains_key(key),
                "{}: no {key}",
                rule.name
            );
        }
        assert_eq!(
            rule.annotations["runbook_url"],
            format!("https://outpost.example/runbooks#{}", rule.name)
        );
    }
    // The three rules about failed SSH logins read them alike.
    let failures: Vec<&str> = rules
        .iter()
        .filter_map(|r| match &r.condition {
            Condition::Frequency(f) => f.matcher.pattern.as_ref().map(regex::Regex::as_str),
            Condition::Sequence(q) => q.first.pattern.as_ref().map(regex::Regex::as_str),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 3);
    assert!(failures.iter().all(|p| *p == failures[0]), "{failures:#?}");
}

#[test]
fn host_down_fires_two_minutes_after_the_last_event_and_not_for_a_host_still_talking() {
    let mut e = AbsenceEvaluator::new(pack());
    let metric = |t| Event::Metric(memory_used(at(t), 0.4));
    let mut changes = Vec::new();
    for t in 0..=300 {
        // web-1 stops after 60 s; web-2 talks every 10 s throughout.
        if t % 10 == 0 {
            if t <= 60 {
                changes.extend(e.observe("web-1", &metric(t), at(t)));
            }
            changes.extend(e.observe("web-2", &metric(t), at(t)));
        }
        changes.extend(e.tick(at(t)));
    }
    assert_eq!(
        fired(&changes, "host-down"),
        [(
            180,
            labels("host-down", "critical", "ops", &[("host", "web-1")])
        )]
    );
}

#[test]
fn cpu_busy_fires_after_five_minutes_under_10_percent_idle_and_a_dip_starts_over() {
    let busy = run_metrics("web-1", 10, 400, |t| vec![cpu_idle(at(t), 0.05)]);
    let want = labels(
        "cpu-busy",
        "high",
        "ops",
        &[("host", "web-1"), ("state", "idle")],
    );
    assert_eq!(fired(&busy, "cpu-busy"), [(300, want)]);
    // 88 % busy is not over 90 %.
    let nearly = run_metrics("web-1", 10, 600, |t| vec![cpu_idle(at(t), 0.12)]);
    assert!(fired(&nearly, "cpu-busy").is_empty());
    // One quieter sample at 200 s: pending again from 210 s, not firing by 500 s.
    let dip = run_metrics("web-1", 10, 500, |t| {
        vec![cpu_idle(at(t), if t == 200 { 0.5 } else { 0.05 })]
    });
    assert!(fired(&dip, "cpu-busy").is_empty());
}

#[test]
fn cpu_busy_fires_for_a_core_busy_on_its_own_with_its_cpu_label() {
    let changes = run_metrics("web-1", 10, 300, |t| {
        vec![
            cpu_idle(at(t), 0.6),
            core_idle("cpu3", at(t), 0.0),
            core_idle("cpu0", at(t), 0.8),
        ]
    });
    let want = labels(
        "cpu-busy",
        "high",
        "ops",
        &[("host", "web-1"), ("cpu", "cpu3"), ("state", "idle")],
    );
    assert_eq!(fired(&changes, "cpu-busy"), [(300, want)]);
}

#[test]
fn memory_full_fires_after_five_minutes_over_90_percent_used() {
    let full = run_metrics("db-1", 10, 400, |t| vec![memory_used(at(t), 0.95)]);
    let want = labels(
        "memory-full",
        "high",
        "ops",
        &[("host", "db-1"), ("state", "used")],
    );
    assert_eq!(fired(&full, "memory-full"), [(300, want)]);
    let short = run_metrics("db-1", 10, 600, |t| vec![memory_used(at(t), 0.88)]);
    assert!(fired(&short, "memory-full").is_empty());
}

#[test]
fn filesystem_full_fires_per_mountpoint_under_10_percent_free() {
    let changes = run_metrics("web-1", 10, 400, |t| {
        vec![
            filesystem_used("/dev/sda1", "/", at(t), 0.89),
            filesystem_used("/dev/sdb1", "/var", at(t), 0.93),
        ]
    });
    let want = labels(
        "filesystem-full",
        "high",
        "ops",
        &[
            ("host", "web-1"),
            ("device", "/dev/sdb1"),
            ("type", "ext4"),
            ("mountpoint", "/var"),
        ],
    );
    assert_eq!(fired(&changes, "filesystem-full"), [(300, want)]);
}

#[test]
fn inodes_full_fires_per_mountpoint_under_10_percent_of_inodes_free() {
    let inodes = |mountpoint: &str, time_ns: i64, share: f64| {
        let mut p = filesystem_used("/dev/sdb1", mountpoint, time_ns, share);
        p.name = "system.filesystem.inodes.utilization".to_owned();
        p
    };
    let changes = run_metrics("web-1", 10, 400, |t| {
        vec![inodes("/", at(t), 0.5), inodes("/var", at(t), 0.95)]
    });
    let fired = fired(&changes, "inodes-full");
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].0, 300);
    assert_eq!(fired[0].1["mountpoint"], "/var");
}

#[test]
fn agent_clock_skew_fires_after_a_minute_more_than_30_s_off_either_way() {
    use crate::rules::engine::{Engine, HistoryKind, Setup};
    use outpost_common::event::AgentStatus;
    let mut e = Engine::new(pack(), Setup::default());
    let mut fired_at = Vec::new();
    for t in 0..=200 {
        // web-1's clock is 45 s behind; web-2's 20 s ahead, within bounds.
        for (host, skew) in [("web-1", -45), ("web-2", 20)] {
            let status = AgentStatus {
                time_ns: at(t + skew),
                ..AgentStatus::default()
            };
            e.heartbeat(host, &status, at(t));
        }
        e.tick(at(t));
        for h in e.take().history {
            if h.kind == HistoryKind::Fired && h.rule == "agent-clock-skew" {
                fired_at.push((h.at_ns, h.labels["host"].clone(), h.value));
            }
        }
    }
    assert_eq!(fired_at, [(at(60), "web-1".to_owned(), Some(45.0))]);
}

#[test]
fn filesystem_full_soon_fires_when_the_trend_fills_it_within_a_day() {
    // One sample a minute for three hours, from 80 % used, growing by `per_hour`.
    let growing = |per_hour: f64| {
        run_metrics("web-1", 60, 3 * 3600, move |t| {
            let used = 0.80 + per_hour * t as f64 / 3600.0;
            vec![filesystem_used("/dev/sdb1", "/var", at(t), used)]
        })
    };
    // Full in 20 hours: the sixtieth sample (59 min) makes it pending, and it fires an hour
    // later.
    let want = labels(
        "filesystem-full-soon",
        "high",
        "ops",
        &[
            ("host", "web-1"),
            ("device", "/dev/sdb1"),
            ("type", "ext4"),
            ("mountpoint", "/var"),
        ],
    );
    assert_eq!(
        fired(&growing(0.01), "filesystem-full-soon"),
        [(119 * 60, want)]
    );
    // Full in 40 hours, or never (flat, however full).
    assert!(fired(&growing(0.005), "filesystem-full-soon").is_empty());
    let flat = run_metrics("web-1", 60, 3 * 3600, |t| {
        vec![filesystem_used("/dev/sdb1", "/var", at(t), 0.95)]
    });
    assert!(fired(&flat, "filesystem-full-soon").is_empty());
    assert_eq!(fired(&flat, "filesystem-full").len(), 1);
}

#[test]
fn agent_dropping_data_fires_per_reason_on_an_increase_and_resolves_a_quarter_hour_later() {
    // Spool evictions go from 3 to 5 at 30 min; rejections stay at 7.
    let changes = run_metrics("web-1", 10, 3600, |t| {
        let evicted = if t < 1800 { 3 } else { 5 };
        vec![
            agent_drops(DropReason::SpoolFullEvicted, at(t), evicted),
            agent_drops(DropReason::SpoolFullRejected, at(t), 7),
        ]
    });
    let want = labels(
        "agent-dropping-data",
        "high",
        "ops",
        &[("host", "web-1"), ("reason", "spool_full_evicted")],
    );
    assert_eq!(fired(&changes, "agent-dropping-data"), [(1800, want)]);
    let drops: Vec<(i64, Transition, Option<f64>)> = changes
        .iter()
        .filter(|c| c.rule == "agent-dropping-data")
        .map(|c| ((c.at_ns - T0) / S, c.transition, c.value))
        .collect();
    assert_eq!(
        drops,
        [
            (1800, Transition::Fired, Some(2.0)),
            (2700, Transition::Resolved, Some(0.0))
        ]
    );
}

/// `n` wrong passwords for `user` from `src_ip` on `host`, `every` seconds from `from`, as the
/// journal has them.
fn failures<'a>(
    host: &'a str,
    src_ip: &str,
    from: i64,
    every: i64,
    n: i64,
) -> Vec<(&'a str, LogRecord)> {
    (0..n)
        .map(|i| {
            let t = at(from + i * every);
            let message = failed_password("admin", true, src_ip, 52_311 + i as u16);
            (host, SSHD.journal(host, t, LogSeverity::Info, &message))
        })
        .collect()
}

#[test]
fn ssh_brute_force_fires_on_the_eighth_failure_within_two_minutes() {
    let want = |host| {
        let pairs = [("host", host), ("src_ip", "203.0.113.7")];
        labels("ssh-brute-force", "high", "security", &pairs)
    };
    // Every 15 s: the eighth, at 105 s, fires.
    let eight = run_logs(&failures("web-1", "203.0.113.7", 0, 15, 8));
    assert_eq!(fired(&eight, "ssh-brute-force"), [(105, want("web-1"))]);
    let seven = run_logs(&failures("web-1", "203.0.113.7", 0, 15, 7));
    assert!(fired(&seven, "ssh-brute-force").is_empty());
    // Every 20 s: never more than seven within two minutes.
    let slow = run_logs(&failures("web-1", "203.0.113.7", 0, 20, 8));
    assert!(fired(&slow, "ssh-brute-force").is_empty());
    // The same from /var/log/auth.log, a real user and a wrong one alike.
    let lines: Vec<(&str, LogRecord)> = (0..8)
        .map(|i| {
            let message = failed_password(["root", "alice"][i % 2], false, "203.0.113.7", 40_000);
            ("db-1", SSHD.auth_log("db-1", at(i as i64 * 10), &message))
        })
        .collect();
    assert_eq!(
        fired(&run_logs(&lines), "ssh-brute-force"),
        [(70, want("db-1"))]
    );
}

#[test]
fn ssh_brute_force_takes_the_address_sshd_wrote_not_one_in_the_user_name() {
    let records: Vec<(&str, LogRecord)> = (0..8)
        .map(|i| {
            let message = failed_password("x from 192.0.2.1 port 1", true, "203.0.113.7", 52_311);
            (
                "web-1",
                SSHD.journal("web-1", at(i), LogSeverity::Info, &message),
            )
        })
        .collect();
    let changes = run_logs(&records);
    let [(_, labels)] = &fired(&changes, "ssh-brute-force")[..] else {
        panic!("{changes:#?}");
    };
    assert_eq!(labels["src_ip"], "203.0.113.7");
}

#[test]
fn ssh_failures_across_hosts_fire_on_the_third_host_within_ten_minutes() {
    let spread = |every: i64| -> Vec<(&str, LogRecord)> {
        ["web-1", "web-2", "db-1"]
            .into_iter()
            .enumerate()
            .flat_map(|(i, host)| failures(host, "198.51.100.23", i as i64 * every, 5, 2))
            .collect()
    };
    let want = labels(
        "ssh-failures-across-hosts",
        "high",
        "security",
        &[("src_ip", "198.51.100.23")],
    );
    let three = run_logs(&spread(100));
    assert_eq!(fired(&three, "ssh-failures-across-hosts"), [(200, want)]);
    // Two hosts are not three, however many failures.
    let two = run_logs(&spread(100)[..4]);
    assert!(fired(&two, "ssh-failures-across-hosts").is_empty());
    // Three hosts over 16 minutes: never three within ten.
    let slow = run_logs(&spread(480));
    assert!(fired(&slow, "ssh-failures-across-hosts").is_empty());
}

#[test]
fn ssh_login_after_failures_fires_on_a_login_from_an_address_that_failed_three_times() {
    let login = |t, message: String| ("web-1", SSHD.auth_log("web-1", at(t), &message));
    let failed = |t| login(t, failed_password("alice", false, "203.0.113.7", 50_000));
    let want = labels(
        "ssh-login-after-failures",
        "critical",
        "security",
        &[("host", "web-1"), ("src_ip", "203.0.113.7")],
    );
    let records = [
        failed(0),
        failed(10),
        failed(20),
        login(30, accepted_password("alice", "203.0.113.7", 50_004)),
    ];
    let changes = run_logs(&records);
    assert_eq!(
        fired(&changes, "ssh-login-after-failures"),
        [(30, want.clone())]
    );
    assert_eq!(
        changes
            .iter()
            .find(|c| c.rule == "ssh-login-after-failures")
            .unwrap()
            .value,
        Some(3.0)
    );
    // A key works as well as a password.
    let mut by_key = records.clone();
    by_key[3] = login(30, accepted_publickey("alice", "203.0.113.7", 50_004));
    assert_eq!(
        fired(&run_logs(&by_key), "ssh-login-after-failures"),
        [(30, want)]
    );
    // Two failures, a login from another address, failures on another host: nothing.
    let two = [
        failed(0),
        failed(10),
        login(30, accepted_password("alice", "203.0.113.7", 50_004)),
    ];
    assert!(fired(&run_logs(&two), "ssh-login-after-failures").is_empty());
    let mut elsewhere = records.clone();
    elsewhere[3] = login(30, accepted_password("alice", "198.51.100.4", 50_004));
    assert!(fired(&run_logs(&elsewhere), "ssh-login-after-failures").is_empty());
    let mut other_host = records;
    for (host, record) in &mut other_host[..3] {
        *host = "web-2";
        *record = SSHD.auth_log("web-2", record.time_ns, &record.body);
    }
    assert!(fired(&run_logs(&other_host), "ssh-login-after-failures").is_empty());
}

#[test]
fn sudo_auth_failure_fires_on_pam_s_and_sudo_s_messages_not_on_a_command_run() {
    let journal = |severity, message: &str| SUDO.journal("web-1", at(0), severity, message);
    let file = |message: &str| SUDO.auth_log("web-1", at(0), message);
    let want = labels(
        "sudo-auth-failure",
        "medium",
        "security",
        &[("host", "web-1")],
    );
    let firing = [
        journal(LogSeverity::Notice, &sudo_pam_failure("alice")),
        journal(LogSeverity::Alert, &sudo_incorrect_passwords("alice", 3)),
        file(&sudo_incorrect_passwords("alice", 1)),
        file(&sudo_pam_failure("bob")),
    ];
    for record in firing {
        let changes = run_logs(&[("web-1", record.clone())]);
        let got = fired(&changes, "sudo-auth-failure");
        assert_eq!(got, [(0, want.clone())], "{record:?}");
    }
    let sshd_pam = "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh \
                    ruser= rhost=203.0.113.7  user=root";
    let quiet = [
        file(&sudo_command("alice")),
        journal(
            LogSeverity::Info,
            "pam_unix(sudo:session): session opened for user root(uid=0) by alice(uid=1000)",
        ),
        SSHD.auth_log("web-1", at(0), sshd_pam),
    ];
    for record in quiet {
        let changes = run_logs(&[("web-1", record.clone())]);
        assert!(
            fired(&changes, "sudo-auth-failure").is_empty(),
            "{record:?}"
        );
    }
}

/// Paths, each with a change of it.
type PathChanges = &'static [(&'static str, FimChange)];

/// The pack's file-integrity rules over one event of `host`'s, observed at its own time.
fn run_fim(host: &str, event: &FimEvent) -> Vec<Change> {
    LogEvaluator::new(pack()).observe_fim(host, event, event.time_ns)
}

#[test]
fn each_watched_file_fires_its_own_rule_per_path_and_other_files_fire_none() {
    // Each rule, its severity, and changes of paths it watches.
    let watched: [(&str, &str, PathChanges); 3] = [
        (
            "accounts-changed",
            "medium",
            &[
                ("/etc/passwd", FimChange::Modified),
                ("/etc/shadow", FimChange::Modified),
                ("/etc/group", FimChange::MetadataChanged),
            ],
        ),
        (
            "sudoers-changed",
            "high",
            &[
                ("/etc/sudoers", FimChange::Modified),
                ("/etc/sudoers.d/90-cloud-init-users", FimChange::Created),
            ],
        ),
        (
            "sshd-config-changed",
            "high",
            &[
                ("/etc/ssh/sshd_config", FimChange::TypeChanged),
                (
                    "/etc/ssh/sshd_config.d/50-cloud-init.conf",
                    FimChange::Deleted,
                ),
            ],
        ),
    ];
    for (rule, severity, paths) in watched {
        for &(path, change) in paths {
            let changes = run_fim("web-1", &fim_event(at(5), path, change, None));
            let rules: Vec<&str> = changes.iter().map(|c| c.rule.as_str()).collect();
            assert_eq!(rules, [rule], "{path}");
            let pairs = [("host", "web-1"), ("path", path)];
            let want = labels(rule, severity, "security", &pairs);
            assert_eq!(fired(&changes, rule), [(5, want)], "{path}");
        }
    }
    // useradd and visudo write a copy and rename it over the file: a move onto it.
    for (from, to, rule) in [
        ("/etc/passwd+", "/etc/passwd", "accounts-changed"),
        ("/etc/sudoers.tmp", "/etc/sudoers", "sudoers-changed"),
    ] {
        let moved = fim_event(at(5), to, FimChange::Moved, Some(from));
        assert_eq!(fired(&run_fim("web-1", &moved), rule).len(), 1, "{from}");
    }
    for path in [
        "/etc/hosts",
        "/etc/passwd-",
        "/etc/sudoers.tmp",
        "/etc/ssh/ssh_config",
    ] {
        let event = fim_event(at(5), path, FimChange::Created, None);
        assert!(run_fim("web-1", &event).is_empty(), "{path}");
    }
}

#[test]
fn fim_trail_broken_fires_on_the_store_s_notice_and_on_no_other_critical_record() {
    let notice = trail_notice("web-1", at(0), BreakKind::Gap, 42, 40);
    let want = labels(
        "fim-trail-broken",
        "critical",
        "security",
        &[("host", "web-1")],
    );
    assert_eq!(
        fired(&run_logs(&[("web-1", notice)]), "fim-trail-broken"),
        [(0, want)]
    );
    let oops = LogRecord {
        time_ns: at(0),
        source: "journal".to_owned(),
        severity: Some(LogSeverity::Critical),
        body: "EXT4-fs error (device sda1): ext4_find_entry:1455: inode #2".to_owned(),
        attributes: owned(&[("identifier", "kernel"), ("transport", "kernel")]),
    };
    assert!(run_logs(&[("web-1", oops)]).is_empty());
}
