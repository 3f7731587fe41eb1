//! The alerting commands, over the HTTP API like the other remote commands ([`crate::remote`]:
//! the same `--url`, `--token` and `--ca`, environment and CLI file): `alerts` (the alerts now,
//! or their history), `alerts ack`, `silence add|list|expire` and `rules list|reload`. The API
//! decides and words every refusal; the commands print it and exit non-zero.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::fleet::render_columns;
use crate::remote::{Remote, RemoteArgs, cell, collect, present, url_escape};

/// `alerts`: the alerts now, or with `--history` what happened to them.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub command: Option<AlertsCommand>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Only alerts in this state: pending, firing, or resolved (not yet notified).
    #[arg(long, conflicts_with = "history")]
    pub state: Option<String>,
    /// The alerts' history instead, newest first.
    #[arg(long)]
    pub history: bool,
    /// With --history: at most this many entries.
    #[arg(long, value_name = "N", default_value_t = 100, requires = "history")]
    pub limit: usize,
    /// Print JSON for machines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Acknowledge a firing alert: its escalation stops (needs an operator token).
    Ack {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The alert's fingerprint, as `alerts` lists it.
        fingerprint: String,
        /// What is being done about it.
        #[arg(long)]
        comment: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SilenceCommand {
    /// Keep alerts matching every MATCHER from being notified for a while (needs an operator
    /// token).
    #[command(group(clap::ArgGroup::new("end").required(true).args(["duration", "until"])))]
    Add {
        #[command(flatten)]
        remote: RemoteArgs,
        /// Label matchers, all to hold: name=value, name!=value, name=~regex, name!~regex.
        #[arg(required = true, value_name = "MATCHER")]
        matchers: Vec<String>,
        /// How long from its start: 2h, 30m, 1d.
        #[arg(long)]
        duration: Option<String>,
        /// When it ends, RFC 3339 (2026-12-01T08:00:00Z).
        #[arg(long, value_name = "T")]
        until: Option<String>,
        /// When it starts, RFC 3339 (now).
        #[arg(long, value_name = "T")]
        start: Option<String>,
        /// Why, for whoever wonders later why alerts went unnotified.
        #[arg(long)]
        comment: String,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// The silences: active, pending and recently expired.
    List {
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// End a silence now (needs an operator token).
    Expire {
        #[command(flatten)]
        remote: RemoteArgs,
        /// The silence's id, as `silence list` shows it.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// The rules running, with their pending and firing alerts and the last reload's errors.
    List {
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Read the rule files again (needs an admin token); a file with a mistake changes nothing
    /// and is reported with its line and column.
    Reload {
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// Runs `alerts` and `alerts ack`.
pub fn alerts(args: AlertsArgs, out: &mut impl Write) -> anyhow::Result<()> {
    if let Some(AlertsCommand::Ack {
        remote,
        fingerprint,
        comment,
    }) = args.command
    {
        let remote = Remote::resolve(&remote)?;
        let path = format!(
            "/api/v1/alerts/{}/ack",
            url_escape(&fingerprint).collect::<String>()
        );
        let alert = remote.post(&path, &json!({ "comment": comment }))?;
        writeln!(
            out,
            "acknowledged {} on {} ({})",
            cell(&alert["rule"]),
            cell(&alert["labels"]["host"]),
            cell(&alert["fingerprint"])
        )?;
        return Ok(());
    }
    let remote = Remote::resolve(&args.remote)?;
    if args.history {
        let (items, _) = collect(
            &remote,
            "/api/v1/alerts/history",
            &[],
            None,
            args.limit.max(1),
        )?;
        return print(out, args.json, &Value::Array(items), render_history);
    }
    let query = present([("state", args.state)]);
    let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let list = remote.get("/api/v1/alerts", &query)?;
    print(out, args.json, &list["items"], render_alerts)
}

/// Runs `silence add`, `silence list` and `silence expire`.
pub fn silence(command: SilenceCommand, out: &mut impl Write) -> anyhow::Result<()> {
    match command {
        SilenceCommand::Add {
            remote,
            matchers,
            duration,
            until,
            start,
            comment,
            json,
        } => {
            let remote = Remote::resolve(&remote)?;
            let mut body = json!({
                "matchers": matchers,
                // clap requires one of the two.
                "ends_at": duration.or(until).unwrap_or_default(),
                "comment": comment,
            });
            if let Some(start) = start {
                body["starts_at"] = Value::String(start);
            }
            let made = remote.post("/api/v1/silences", &body)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&made)?)?;
            } else {
                writeln!(
                    out,
                    "silence {} added: {} from {} until {}",
                    cell(&made["id"]),
                    joined(&made["matchers"]),
                    cell(&made["starts_at"]),
                    cell(&made["ends_at"])
                )?;
            }
            Ok(())
        }
        SilenceCommand::List { remote, json } => {
            let list = Remote::resolve(&remote)?.get("/api/v1/silences", &[])?;
            print(out, json, &list["items"], render_silences)
        }
        SilenceCommand::Expire { remote, id } => {
            let path = format!("/api/v1/silences/{}", url_escape(&id).collect::<String>());
            let ended = Remote::resolve(&remote)?.delete(&path)?;
            writeln!(
                out,
                "silence {} expired at {}",
                cell(&ended["id"]),
                cell(&ended["ends_at"])
            )?;
            Ok(())
        }
    }
}

/// Runs `rules list` and `rules reload`.
pub fn rules(command: RulesCommand, out: &mut impl Write) -> anyhow::Result<()> {
    match command {
        RulesCommand::List { remote, json } => {
            let status = Remote::resolve(&remote)?.get("/api/v1/rules", &[])?;
            print(out, json, &status, render_rules)
        }
        RulesCommand::Reload { remote } => {
            let status = Remote::resolve(&remote)?.post("/api/v1/rules/reload", &json!({}))?;
            let count = status["rules"].as_array().map_or(0, Vec::len);
            writeln!(
                out,
                "reloaded the rules from {}: {count} running",
                cell(&status["dir"])
            )?;
            Ok(())
        }
    }
}

/// `value` as pretty JSON, or as `render` makes it for people.
fn print(
    out: &mut impl Write,
    json: bool,
    value: &Value,
    render: fn(&Value) -> String,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    } else {
        out.write_all(render(value).as_bytes())?;
    }
    Ok(())
}

/// The strings of an array, comma-separated.
fn joined(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A number field for a table, `-` when absent.
fn number(v: &Value) -> String {
    if v.is_number() {
        v.to_string()
    } else {
        "-".to_owned()
    }
}

/// The alert list as a table: what fires where, since when, and the fingerprint to acknowledge
/// it by.
fn render_alerts(items: &Value) -> String {
    let items = items.as_array().map_or(&[][..], Vec::as_slice);
    if items.is_empty() {
        return "no alerts\n".to_owned();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|a| {
            let mut state = cell(&a["state"]);
            if a["ack"].is_object() {
                state.push_str(", acked");
            }
            let suppressed = a["suppressed_by"].as_array().map_or(&[][..], Vec::as_slice);
            if suppressed.iter().any(|s| s == "inhibited") {
                state.push_str(", inhibited");
            } else if !suppressed.is_empty() {
                state.push_str(", silenced");
            }
            vec![
                cell(&a["severity"]),
                state,
                cell(&a["rule"]),
                cell(&a["labels"]["host"]),
                cell(&a["since"]),
                cell(&a["fingerprint"]),
                cell(&a["annotations"]["summary"]),
            ]
        })
        .collect();
    render_columns(
        &[
            "SEVERITY",
            "STATE",
            "RULE",
            "HOST",
            "SINCE",
            "FINGERPRINT",
            "SUMMARY",
        ],
        &rows,
    )
}

/// Alert history as a table, newest first.
fn render_history(items: &Value) -> String {
    let items = items.as_array().map_or(&[][..], Vec::as_slice);
    if items.is_empty() {
        return "no alert history\n".to_owned();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            vec![
                cell(&e["at"]),
                cell(&e["kind"]),
                cell(&e["rule"]),
                cell(&e["labels"]["host"]),
                cell(&e["fingerprint"]),
                cell(&e["detail"]),
            ]
        })
        .collect();
    render_columns(
        &["TIME", "EVENT", "RULE", "HOST", "FINGERPRINT", "DETAIL"],
        &rows,
    )
}

/// The silences as a table.
fn render_silences(items: &Value) -> String {
    let items = items.as_array().map_or(&[][..], Vec::as_slice);
    if items.is_empty() {
        return "no silences\n".to_owned();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                cell(&s["id"]),
                cell(&s["state"]),
                joined(&s["matchers"]),
                cell(&s["starts_at"]),
                cell(&s["ends_at"]),
                cell(&s["author"]),
                cell(&s["comment"]),
            ]
        })
        .collect();
    render_columns(
        &[
            "ID", "STATE", "MATCHERS", "STARTS", "ENDS", "AUTHOR", "COMMENT",
        ],
        &rows,
    )
}

/// The rules as a table, then the last reload's errors when it failed.
fn render_rules(status: &Value) -> String {
    let rules = status["rules"].as_array().map_or(&[][..], Vec::as_slice);
    let mut out = if rules.is_empty() {
        format!("no rules in {}\n", cell(&status["dir"]))
    } else {
        let rows: Vec<Vec<String>> = rules
            .iter()
            .map(|r| {
                vec![
                    cell(&r["name"]),
                    cell(&r["kind"]),
                    cell(&r["severity"]),
                    number(&r["pending"]),
                    number(&r["firing"]),
                    cell(&r["file"]),
                ]
            })
            .collect();
        render_columns(
            &["RULE", "KIND", "SEVERITY", "PENDING", "FIRING", "FILE"],
            &rows,
        )
    };
    if let Some(errors) = status["last_error"].as_array() {
        let at = status["last_error_ns"]
            .as_i64()
            .map_or_else(|| "-".to_owned(), outpost_common::time::format_rfc3339);
        out.push_str(&format!(
            "\nthe last reload ({at}) failed; the rules above keep running:\n"
        ));
        for e in errors {
            out.push_str(&format!("  {}\n", cell(e)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn alerts_read_as_a_table_with_what_keeps_them_quiet() {
        let items = json!([
            { "severity": "critical", "state": "firing", "rule": "disk-full",
              "labels": { "host": "web-1" }, "since": "2026-01-01T00:00:00Z",
              "fingerprint": "0123456789abcdef", "annotations": { "summary": "Disk\nfull" },
              "ack": { "by": "oncall" }, "suppressed_by": ["s1"] },
            { "severity": "low", "state": "pending", "rule": "fleet-quiet", "labels": {},
              "since": "2026-01-01T00:01:00Z", "fingerprint": "fedcba9876543210",
              "annotations": {}, "ack": null, "suppressed_by": ["inhibited"] },
        ]);
        let table = render_alerts(&items);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("SEVERITY  STATE"), "{table}");
        assert!(
            lines[1].starts_with("critical  firing, acked, silenced  disk-full    web-1")
                && lines[1].ends_with("0123456789abcdef  Disk full"),
            "{table}"
        );
        assert!(
            lines[2].contains("pending, inhibited") && lines[2].contains("  -  "),
            "{table}"
        );
        assert_eq!(render_alerts(&json!([])), "no alerts\n");
    }

    #[test]
    fn rules_list_their_alerts_and_the_last_reloads_errors() {
        let status = json!({
            "dir": "/etc/outpost/rules.d",
            "rules": [{ "name": "cpu", "kind": "threshold", "severity": "high", "pending": 1,
                        "firing": 2, "file": "/etc/outpost/rules.d/host.toml" }],
            "loaded_ns": 0,
            "last_error": ["/etc/outpost/rules.d/bad.toml:3:8: unknown variant `x`"],
            "last_error_ns": 0,
        });
        let text = render_rules(&status);
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("cpu   threshold  high      1        2")),
            "{text}"
        );
        assert!(
            text.contains(
                "the last reload (1970-01-01T00:00:00Z) failed; the rules above keep running:\n  \
                 /etc/outpost/rules.d/bad.toml:3:8: unknown variant `x`\n"
            ),
            "{text}"
        );
        let none = json!({ "dir": "rules.d", "rules": [], "last_error": null });
        assert_eq!(render_rules(&none), "no rules in rules.d\n");
    }

    #[test]
    fn silences_and_history_read_as_tables() {
        let silences = json!([{ "id": "ab12", "state": "active", "matchers": ["host=\"web-1\"",
            "team=\"db\""], "starts_at": "S", "ends_at": "E", "author": "oncall",
            "comment": "disk swap" }]);
        let table = render_silences(&silences);
        assert!(
            table.lines().nth(1).is_some_and(
                |l| l.contains("host=\"web-1\",team=\"db\"") && l.ends_with("disk swap")
            ),
            "{table}"
        );
        let history = json!([{ "at": "T", "kind": "acknowledged", "rule": "cpu",
            "labels": { "host": "h" }, "fingerprint": "f", "detail": "by oncall: on it" }]);
        assert!(render_history(&history).ends_with("by oncall: on it\n"));
        assert_eq!(render_silences(&json!([])), "no silences\n");
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, Subcommand)]
    enum Command {
        Alerts(AlertsArgs),
        #[command(subcommand)]
        Silence(SilenceCommand),
    }

    #[test]
    fn a_silence_needs_an_end_and_alerts_ack_takes_its_own_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["x"], args].concat());
        assert!(parse(&["silence", "add", "host=a", "--comment", "c"]).is_err());
        assert!(
            parse(&[
                "silence",
                "add",
                "host=a",
                "--duration",
                "1h",
                "--until",
                "T",
                "--comment",
                "c"
            ])
            .is_err()
        );
        let Command::Silence(SilenceCommand::Add {
            matchers, duration, ..
        }) = parse(&[
            "silence",
            "add",
            "host=a",
            "team=~db.*",
            "--duration",
            "2h",
            "--comment",
            "c",
        ])
        .unwrap()
        .command
        else {
            panic!("not silence add");
        };
        assert_eq!((matchers.len(), duration.as_deref()), (2, Some("2h")));
        let Command::Alerts(args) = parse(&[
            "alerts",
            "ack",
            "0123",
            "--comment",
            "on it",
            "--url",
            "http://a:1",
        ])
        .unwrap()
        .command
        else {
            panic!("not alerts");
        };
        assert!(matches!(
            args.command,
            Some(AlertsCommand::Ack { ref remote, .. }) if remote.url.as_deref() == Some("http://a:1")
        ));
        assert!(parse(&["alerts", "--state", "firing", "--history"]).is_err());
        assert!(parse(&["alerts", "--state", "firing"]).is_ok());
        assert!(parse(&["alerts", "--limit", "5"]).is_err());
        assert!(parse(&["alerts", "--history", "--limit", "5", "--json"]).is_ok());
    }
}
