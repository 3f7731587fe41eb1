//! `outpost-aggregator fim list` and `fim verify` against a store prepared through the store's
//! own API, read while the aggregator runs on it: changes are listed with every field and by
//! filter, a trail intact on arrival verifies, a trail with an event lost on the way is
//! reported (and was told as a critical log record when it arrived), and an event edited in the
//! database after storage makes `fim verify` fail.

use std::path::Path;
use std::process::Output;

use outpost_aggregator::store::{EventStore, IncomingBatch, SqliteStore};
use outpost_common::event::{CHAIN_GENESIS, Event, FimChange, FimDetection, FimEvent, chain_hash};
use outpost_common::time::{NANOS_PER_SEC, now_ns};
use outpost_tests::{Aggregator, Env};
use serde_json::Value;

/// A trail of FIM events from seq 1 for `(path, change, moved_from)`, chained as an agent
/// chains them, at the given times.
fn trail(changes: &[(&str, FimChange, Option<&str>, i64)]) -> Vec<FimEvent> {
    let mut previous = CHAIN_GENESIS.to_owned();
    changes
        .iter()
        .zip(1..)
        .map(|(&(path, change, moved_from, time_ns), seq)| {
            let mut e = FimEvent {
                time_ns,
                path: path.to_owned(),
                change,
                changed: if change == FimChange::MetadataChanged {
                    vec!["mode".to_owned(), "uid".to_owned()]
                } else {
                    Vec::new()
                },
                moved_from: moved_from.map(str::to_owned),
                before: None,
                after: None,
                detected_by: FimDetection::Realtime,
                seq,
                chain: String::new(),
            };
            e.chain = chain_hash(&previous, &e);
            previous.clone_from(&e.chain);
            e
        })
        .collect()
}

/// A batch sent as the oldest its agent held (every batch before it stored), as one is when the
/// agent sends one batch at a time.
fn batch(agent: &str, seq: u64, events: &[FimEvent]) -> IncomingBatch {
    IncomingBatch {
        agent_id: agent.to_owned(),
        spool_id: 1,
        seq,
        low_water_seq: seq,
        received_ns: now_ns(),
        events: events.iter().cloned().map(Event::Fim).collect(),
        packed: None,
    }
}

fn cli(env: &Env, aggregator: &Aggregator, args: &[&str]) -> Output {
    let config = aggregator.config_path().display().to_string();
    let mut all = vec!["--config", config.as_str()];
    all.extend_from_slice(args);
    env.aggregator_cli(&all)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_ok(env: &Env, aggregator: &Aggregator, args: &[&str]) -> String {
    let out = cli(env, aggregator, args);
    assert!(
        out.status.success(),
        "fim {args:?} failed ({}):\n{}{}",
        out.status,
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

fn list_json(env: &Env, aggregator: &Aggregator, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["fim", "list", "--json"];
    all.extend_from_slice(args);
    let text = cli_ok(env, aggregator, &all);
    match serde_json::from_str(&text) {
        Ok(Value::Array(items)) => items,
        other => panic!("fim list --json printed {other:?}:\n{text}"),
    }
}

fn paths(items: &[Value]) -> Vec<&str> {
    items.iter().filter_map(|i| i["path"].as_str()).collect()
}

/// Prepares the store the aggregator will open: web-1's trail arrives intact, db-1's loses its
/// third event on the way.
fn prepare_store(path: &Path, recent: i64, old: i64) {
    let store = SqliteStore::open(path).unwrap_or_else(|e| panic!("{e}"));
    let web = trail(&[
        ("/etc/passwd", FimChange::Modified, None, old),
        (
            "/etc/ssh/sshd_config",
            FimChange::MetadataChanged,
            None,
            recent,
        ),
        (
            "/etc/ssh/sshd_config.d/10-root.conf",
            FimChange::Created,
            None,
            recent + 1,
        ),
        (
            "/usr/bin/sudo",
            FimChange::Moved,
            Some("/tmp/sudo"),
            recent + 2,
        ),
    ]);
    let db = trail(&[
        (
            "/etc/postgresql/pg_hba.conf",
            FimChange::Modified,
            None,
            recent,
        ),
        (
            "/etc/postgresql/postgresql.conf",
            FimChange::Modified,
            None,
            recent + 1,
        ),
        ("/etc/cron.d/backup", FimChange::Deleted, None, recent + 2),
        (
            "/etc/cron.d/exfiltrate",
            FimChange::Created,
            None,
            recent + 3,
        ),
    ]);
    let batches = [
        batch("web-1", 1, &web[..2]),
        batch("web-1", 2, &web[2..]),
        batch("db-1", 1, &db[..2]),
        batch("db-1", 2, &db[3..]),
    ];
    store
        .commit_batches(&batches)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn fim_list_and_verify_read_the_trail_while_the_aggregator_runs() {
    let env = Env::new("fim_trail");
    let data_dir = env.path().join("aggregator");
    std::fs::create_dir_all(&data_dir).unwrap_or_else(|e| panic!("{e}"));
    let now = now_ns();
    let (recent, old) = (now - 600 * NANOS_PER_SEC, now - 3 * 3600 * NANOS_PER_SEC);
    let store_path = data_dir.join("aggregator.db");
    prepare_store(&store_path, recent, old);
    let aggregator = env.start_aggregator();

    // Every change, oldest first, every field.
    let all = list_json(&env, &aggregator, &[]);
    assert_eq!(all.len(), 7, "{all:?}");
    assert_eq!(paths(&all)[0], "/etc/passwd");
    let moved = all
        .iter()
        .find(|i| i["change"] == "moved")
        .unwrap_or_else(|| panic!("no move in {all:?}"));
    assert_eq!(moved["agent_id"], "web-1", "{moved}");
    assert_eq!(moved["moved_from"], "/tmp/sudo", "{moved}");
    assert_eq!(moved["seq"], 4, "{moved}");
    assert_eq!(moved["detected_by"], "realtime", "{moved}");
    assert_eq!(moved["chain"].as_str().map(str::len), Some(64), "{moved}");

    // Filters: agent and path prefix, change, time, limit.
    let ssh = list_json(
        &env,
        &aggregator,
        &["--agent", "web-1", "--path-prefix", "/etc/ssh/"],
    );
    assert_eq!(
        paths(&ssh),
        [
            "/etc/ssh/sshd_config",
            "/etc/ssh/sshd_config.d/10-root.conf"
        ]
    );
    let metadata = list_json(&env, &aggregator, &["--change", "metadata_changed"]);
    assert_eq!(metadata.len(), 1, "{metadata:?}");
    assert_eq!(metadata[0]["changed"], serde_json::json!(["mode", "uid"]));
    let last_hour = list_json(&env, &aggregator, &["--agent", "web-1", "--since", "1h"]);
    assert_eq!(last_hour.len(), 3, "{last_hour:?}");
    let before = outpost_common::time::format_rfc3339(recent);
    let older = list_json(&env, &aggregator, &["--until", &before]);
    assert_eq!(paths(&older), ["/etc/passwd"]);
    let latest = list_json(&env, &aggregator, &["--limit", "2"]);
    assert_eq!(
        paths(&latest),
        ["/usr/bin/sudo", "/etc/cron.d/exfiltrate"],
        "{latest:?}"
    );

    // The human table.
    let table = cli_ok(&env, &aggregator, &["fim", "list", "--agent", "web-1"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    for word in ["TIME", "AGENT", "CHANGE", "PATH", "CHANGED", "MOVED FROM"] {
        assert!(lines[0].contains(word), "{table}");
    }
    assert!(
        lines[2].contains("metadata_changed") && lines[2].contains("mode,uid"),
        "{table}"
    );
    assert!(
        lines[4].contains("moved") && lines[4].ends_with("/tmp/sudo"),
        "{table}"
    );
    let bad = cli(&env, &aggregator, &["fim", "list", "--change", "renamed"]);
    assert!(!bad.status.success(), "{}", stdout(&bad));

    // web-1 arrived intact and is intact.
    let intact = cli_ok(&env, &aggregator, &["fim", "verify", "web-1"]);
    assert!(intact.contains("4 file-integrity events"), "{intact}");
    assert!(intact.contains("trail intact"), "{intact}");

    // db-1 lost an event on the way: verify reports the gap and fails, and the break was
    // recorded and told as a critical log record when the events arrived.
    let gap = cli(&env, &aggregator, &["fim", "verify", "db-1"]);
    assert_eq!(gap.status.code(), Some(1), "{}", stdout(&gap));
    let text = stdout(&gap);
    assert!(
        text.contains("gap") && text.contains("/etc/cron.d/exfiltrate"),
        "{text}"
    );
    assert!(
        text.contains("1 break recorded when the events arrived"),
        "{text}"
    );
    let conn = rusqlite::Connection::open(&store_path).unwrap_or_else(|e| panic!("{e}"));
    let notice: (i64, String) = conn
        .query_row(
            "SELECT severity, body FROM logs WHERE source = 'outpost.fim.trail'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or_else(|e| panic!("no trail notice: {e}"));
    assert_eq!(notice.0, 2, "critical: {notice:?}");
    assert!(
        notice.1.contains("db-1") && notice.1.contains("gap"),
        "{notice:?}"
    );

    // Someone rewrites where web-1's change happened, in the database itself.
    let changed = conn
        .execute(
            "UPDATE fim_events SET path = '/tmp/nothing-to-see'
             WHERE seq = 3 AND agent_key = (SELECT agent_key FROM agents WHERE agent_id = 'web-1')",
            [],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(changed, 1);
    let edited = cli(&env, &aggregator, &["fim", "verify", "web-1"]);
    assert_eq!(edited.status.code(), Some(1), "{}", stdout(&edited));
    let text = stdout(&edited);
    let row = text
        .lines()
        .find(|l| l.starts_with("edit"))
        .unwrap_or_else(|| panic!("no edit reported:\n{text}"));
    assert!(
        row.contains(" 3 ") && row.contains("/tmp/nothing-to-see"),
        "{text}"
    );
    assert!(text.contains("trail BROKEN: 1 break"), "{text}");

    let unknown = cli(&env, &aggregator, &["fim", "verify", "nobody"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no agent `nobody`"),
        "{unknown:?}"
    );
    assert!(aggregator.is_running(), "{}", aggregator.log());
}
