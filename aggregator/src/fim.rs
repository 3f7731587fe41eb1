//! `outpost-aggregator fim`: the file-integrity changes agents reported, and a re-check of each
//! agent's tamper-evident trail.
//!
//! Both commands open the store read-only ([`SqliteReader`]), so they run beside a running
//! aggregator and never change what it stored.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use outpost_common::event::{Event, FimChange};
use outpost_common::time::{duration_ns, format_rfc3339};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Validated;
use crate::store::fim_trail::Verification;
use crate::store::sqlite::{fim_change_from_name, fim_change_name, fim_detection_name};
use crate::store::{FimQuery, SqliteReader, StoredEvent};

/// `outpost-aggregator fim <command>`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum FimCommand {
    /// List file-integrity changes, the latest last.
    List {
        /// Only this agent's changes.
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
        /// Only paths starting with this text (`/etc/` for everything below /etc).
        #[arg(long, value_name = "P")]
        path_prefix: Option<String>,
        /// Only this kind of change: created, modified, metadata_changed, deleted, moved,
        /// type_changed.
        #[arg(long, value_name = "K", value_parser = parse_change)]
        change: Option<FimChange>,
        /// Only changes at or after this time (the agent's clock): RFC 3339, or a duration ago
        /// such as `1h` or `2d 6h`.
        #[arg(long, value_name = "T", value_parser = parse_time)]
        since: Option<TimeArg>,
        /// Only changes before this time, written as for --since.
        #[arg(long, value_name = "T", value_parser = parse_time)]
        until: Option<TimeArg>,
        /// The latest this many changes (with --api: the first this many, oldest first).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
        /// Ask the aggregator's HTTP API instead of reading the store on this machine (implied
        /// by --url or --token).
        #[arg(long)]
        api: bool,
        #[command(flatten)]
        remote: crate::remote::RemoteArgs,
    },
    /// Re-walk an agent's stored trail, recomputing every chain; exits 1 when it is broken.
    Verify {
        /// The agent whose trail to check.
        agent: String,
    },
}

/// A time given on the command line: a moment, or a duration before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    At(i64),
    Ago(Duration),
}

impl TimeArg {
    /// Nanoseconds since the epoch, with `now_ns` for a duration ago.
    pub fn resolve(self, now_ns: i64) -> i64 {
        match self {
            TimeArg::At(ns) => ns,
            TimeArg::Ago(d) => now_ns.saturating_sub(duration_ns(d)),
        }
    }
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-12-01T08:00:00Z`) or a duration (`90m`).
pub fn parse_time(s: &str) -> Result<TimeArg, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos())
            .map(TimeArg::At)
            .map_err(|_| format!("`{s}` is out of range"));
    }
    humantime::parse_duration(s).map(TimeArg::Ago).map_err(|e| {
        format!("`{s}` is neither an RFC 3339 time (2026-12-01T08:00:00Z) nor a duration (1h): {e}")
    })
}

pub fn parse_change(s: &str) -> Result<FimChange, String> {
    fim_change_from_name(s).ok_or_else(|| {
        format!(
            "`{s}` is not a change; use created, modified, metadata_changed, deleted, moved or \
             type_changed"
        )
    })
}

/// Whether `cmd` goes to the HTTP API rather than the local store.
pub fn wants_api(cmd: &FimCommand) -> bool {
    match cmd {
        FimCommand::List { api, remote, .. } => {
            *api || remote.url.is_some() || remote.token.is_some()
        }
        FimCommand::Verify { .. } => false,
    }
}

/// Runs `fim list` through the HTTP API ([`wants_api`]).
pub fn run_remote(cmd: FimCommand, out: &mut impl Write, now_ns: i64) -> anyhow::Result<()> {
    let FimCommand::List {
        agent,
        path_prefix,
        change,
        since,
        until,
        limit,
        json,
        remote,
        ..
    } = cmd
    else {
        anyhow::bail!("only `fim list` can ask the API");
    };
    let remote = crate::remote::Remote::resolve(&remote)?;
    let request = crate::remote::FimRequest {
        agent_id: agent,
        path_prefix,
        change: change.map(|c| fim_change_name(c).to_owned()),
        since_ns: since.map(|t| t.resolve(now_ns)),
        until_ns: until.map(|t| t.resolve(now_ns)),
        limit,
    };
    crate::remote::fim_changes(&remote, &request, json, out)
}

/// Runs a `fim` command against the configured store, writing to `out`. Answers whether all
/// is well: `false` when `verify` found a break.
pub fn run(
    v: &Validated,
    cmd: FimCommand,
    out: &mut dyn Write,
    now_ns: i64,
) -> anyhow::Result<bool> {
    anyhow::ensure!(
        v.config.store.backend == crate::config::EventBackend::Sqlite,
        "`outpost-aggregator fim` reads the embedded store, and [store] backend is `{}`: \
         list changes through the API (GET /api/v1/fim) instead",
        v.config.store.backend.as_str()
    );
    let path = v.store_path();
    let reader = SqliteReader::open(&path)
        .with_context(|| format!("{}: cannot read the store", path.display()))?;
    match cmd {
        FimCommand::List {
            agent,
            path_prefix,
            change,
            since,
            until,
            limit,
            json,
            ..
        } => {
            let time_ns = match (since, until) {
                (None, None) => None,
                (since, until) => Some(
                    since.map_or(i64::MIN, |t| t.resolve(now_ns))
                        ..until.map_or(i64::MAX, |t| t.resolve(now_ns)),
                ),
            };
            let query = FimQuery {
                agent_id: agent,
                path_prefix,
                change,
                time_ns,
                limit,
            };
            let changes = reader.fim_changes(&query)?;
            let text = if json {
                render_json(&changes)
            } else {
                render_table(&changes)
            };
            out.write_all(text.as_bytes())?;
            Ok(true)
        }
        FimCommand::Verify { agent } => {
            let Some(report) = reader.verify_trail(&agent)? else {
                anyhow::bail!("no agent `{agent}` in the store at {}", path.display());
            };
            let recorded = reader.recorded_trail_breaks(&agent)?;
            out.write_all(render_verification(&agent, &report, recorded).as_bytes())?;
            Ok(report.breaks.is_empty())
        }
    }
}

/// The changes as a table: time, agent, change, path, the attributes that changed, where a
/// moved path came from.
pub fn render_table(changes: &[StoredEvent]) -> String {
    const HEADER: [&str; 6] = ["TIME", "AGENT", "CHANGE", "PATH", "CHANGED", "MOVED FROM"];
    let rows: Vec<Vec<String>> = changes
        .iter()
        .filter_map(|e| match &e.event {
            Event::Fim(f) => Some(vec![
                format_rfc3339(f.time_ns),
                e.agent_id.clone(),
                fim_change_name(f.change).to_owned(),
                f.path.clone(),
                if f.changed.is_empty() {
                    "-".to_owned()
                } else {
                    f.changed.join(",")
                },
                f.moved_from.clone().unwrap_or_else(|| "-".to_owned()),
            ]),
            _ => None,
        })
        .collect();
    crate::fleet::render_columns(&HEADER, &rows)
}

/// One stored change as JSON, every field included; `None` for another kind of event.
pub fn change_json(e: &StoredEvent) -> Option<serde_json::Value> {
    match &e.event {
        Event::Fim(f) => Some(json!({
            "cursor": e.cursor.to_string(),
            "agent_id": e.agent_id,
            "time_ns": f.time_ns,
            "time": format_rfc3339(f.time_ns),
            "received_ns": e.received_ns,
            "path": f.path,
            "change": fim_change_name(f.change),
            "changed": f.changed,
            "moved_from": f.moved_from,
            "before": f.before,
            "after": f.after,
            "detected_by": fim_detection_name(f.detected_by),
            "seq": f.seq,
            "chain": f.chain,
        })),
        _ => None,
    }
}

/// The changes as a JSON array, every field included.
pub fn render_json(changes: &[StoredEvent]) -> String {
    let items: Vec<serde_json::Value> = changes.iter().filter_map(change_json).collect();
    let mut text = serde_json::Value::Array(items).to_string();
    text.push('\n');
    text
}

/// What `fim verify` prints.
pub fn render_verification(agent: &str, report: &Verification, recorded: u64) -> String {
    let mut out = String::new();
    let Some(first) = report.first_seq else {
        out.push_str(&format!(
            "agent {agent}: no file-integrity events in its trail; nothing to verify\n"
        ));
        return out;
    };
    out.push_str(&format!(
        "agent {agent}: {} file-integrity events in the trail\n",
        report.events
    ));
    if report.starts_late {
        out.push_str(&format!(
            "events before seq {first} were removed by retention and cannot be checked; \
             checked from seq {first} on\n"
        ));
    } else {
        out.push_str("checked from the first event (seq 1)\n");
    }
    if !report.breaks.is_empty() {
        let header = ["BREAK", "SEQ", "EXPECTED", "PATH", "DETAIL"];
        let rows: Vec<Vec<String>> = report
            .breaks
            .iter()
            .map(|(b, path)| {
                vec![
                    b.kind.to_string(),
                    b.seq.to_string(),
                    b.expected_seq.to_string(),
                    path.clone(),
                    b.detail.clone(),
                ]
            })
            .collect();
        out.push_str(&crate::fleet::render_columns(&header, &rows));
    }
    let n = report.breaks.len();
    out.push_str(&match n {
        0 => "trail intact".to_owned(),
        1 => "trail BROKEN: 1 break".to_owned(),
        _ => format!("trail BROKEN: {n} breaks"),
    });
    if recorded > 0 {
        let plural = if recorded == 1 { "" } else { "s" };
        out.push_str(&format!(
            " ({recorded} break{plural} recorded when the events arrived)"
        ));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        const NS: i64 = 1_000_000_000;
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z"),
            Ok(TimeArg::At(1_700_000_000 * NS))
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00"),
            Ok(TimeArg::At(1_700_000_000 * NS))
        );
        assert_eq!(
            parse_time("1h"),
            Ok(TimeArg::Ago(Duration::from_secs(3600)))
        );
        assert_eq!(
            TimeArg::Ago(Duration::from_secs(10)).resolve(100 * NS),
            90 * NS
        );
        assert_eq!(TimeArg::At(5).resolve(100 * NS), 5);
        let err = parse_time("yesterday").unwrap_err();
        assert!(
            err.contains("RFC 3339") && err.contains("yesterday"),
            "{err}"
        );
        assert_eq!(parse_change("moved"), Ok(FimChange::Moved));
        assert!(
            parse_change("renamed")
                .unwrap_err()
                .contains("type_changed")
        );
    }
}
