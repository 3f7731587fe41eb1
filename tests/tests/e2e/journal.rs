//! The journal source on real journal files: written by `systemd-journal-remote` from the Journal
//! Export Format, read by the real `journalctl` through the agent, stored by the aggregator.
//! Every entry is stored once with its unit, severity and attributes: those written before the
//! agent started, those appended while it follows, and those written while it was killed with
//! SIGKILL, which it reads after its committed cursor once restarted.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::{Command, Stdio};

use outpost_tests::{AgentOptions, Env, StoredLog, toml_string};
use serde_json::json;

const AGENT: &str = "journal-1";

/// Writes journal files from the Journal Export Format on stdin (`scripts/test` installs it).
const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

const BOOT_ID: &str = "0f4e2b6c8a1d4e3f9b7c5a2d1e0f3a4b";

/// What entry `n` is: a unit (or none, for the kernel) and its syslog identifier, its priority.
fn unit_of(n: u32) -> Option<(&'static str, &'static str)> {
    match n % 3 {
        0 => Some(("ssh.service", "sshd")),
        1 => Some(("cron.service", "CRON")),
        _ => None,
    }
}

fn priority_of(n: u32) -> u8 {
    (n % 8) as u8
}

/// The sources the entries are stored under.
const SOURCES: [&str; 3] = ["journal:ssh.service", "journal:cron.service", "journal"];

/// Entries `numbers` in the Journal Export Format, `base_us` being entry 0's wall-clock time.
fn export(numbers: RangeInclusive<u32>, base_us: i64) -> String {
    let mut out = String::new();
    for n in numbers {
        let mut fields = vec![
            format!("__REALTIME_TIMESTAMP={}", base_us + i64::from(n) * 1000),
            format!("__MONOTONIC_TIMESTAMP={}", u64::from(n) * 1000),
            format!("_BOOT_ID={BOOT_ID}"),
            "_HOSTNAME=web-01".to_owned(),
            format!("MESSAGE=journal line {n}"),
            format!("PRIORITY={}", priority_of(n)),
        ];
        match unit_of(n) {
            Some((unit, identifier)) => fields.extend([
                format!("_SYSTEMD_UNIT={unit}"),
                format!("SYSLOG_IDENTIFIER={identifier}"),
                format!("_PID={}", 1000 + n),
                "_TRANSPORT=syslog".to_owned(),
            ]),
            None => fields.extend([
                "SYSLOG_IDENTIFIER=kernel".to_owned(),
                "_TRANSPORT=kernel".to_owned(),
            ]),
        }
        for field in fields {
            out.push_str(&field);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// Appends entries `numbers` to the journal file `path` (created if missing).
fn write_journal(path: &Path, numbers: RangeInclusive<u32>, base_us: i64) {
    assert!(
        Path::new(JOURNAL_REMOTE).exists(),
        "{JOURNAL_REMOTE} is missing: install the systemd-journal-remote package \
         (scripts/test does)"
    );
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", path.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {JOURNAL_REMOTE}: {e}"));
    let text = export(numbers, base_us);
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write to {JOURNAL_REMOTE}: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{JOURNAL_REMOTE} did not finish: {e}"));
    assert!(
        out.status.success(),
        "{JOURNAL_REMOTE} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The journal entries stored for the agent, by number; repeats kept.
fn stored(
    env: &Env,
    aggregator: &outpost_tests::Aggregator,
) -> Result<Vec<(u32, StoredLog)>, String> {
    let store = aggregator.store();
    let mut all = Vec::new();
    for source in SOURCES {
        for log in store.logs(AGENT, source)? {
            let n = log
                .body
                .strip_prefix("journal line ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("[{}] an unexpected body: {log:?}", env.name()));
            all.push((n, log));
        }
    }
    Ok(all)
}

/// Waits until entries `1..=last` are stored, failing at once on a repeat; checks each.
fn wait_stored(env: &Env, aggregator: &outpost_tests::Aggregator, last: u32, base_us: i64) {
    let logs = env.wait_for(
        &format!("journal entries 1..={last}, each stored once"),
        || {
            let logs = stored(env, aggregator)?;
            let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
            for (n, _) in &logs {
                *counts.entry(*n).or_default() += 1;
            }
            let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
            assert!(
                repeated.is_empty(),
                "[{}] entries stored more than once (entry, times): {repeated:?}\n{}",
                env.name(),
                env.diagnosis()
            );
            let want: Vec<u32> = (1..=last).collect();
            if counts.keys().copied().collect::<Vec<_>>() == want {
                Ok(logs)
            } else {
                Err(format!("stored: {:?}", counts.keys().collect::<Vec<_>>()))
            }
        },
    );
    for (n, log) in logs {
        let mut attributes = json!({
            "boot_id": BOOT_ID,
            "hostname": "web-01",
        });
        match unit_of(n) {
            Some((unit, identifier)) => {
                attributes["unit"] = json!(unit);
                attributes["identifier"] = json!(identifier);
                attributes["pid"] = json!((1000 + n).to_string());
                attributes["transport"] = json!("syslog");
            }
            None => {
                attributes["identifier"] = json!("kernel");
                attributes["transport"] = json!("kernel");
            }
        }
        assert_eq!(log.attributes, attributes, "entry {n}");
        assert_eq!(log.severity, Some(priority_of(n)), "entry {n}");
        assert_eq!(
            log.time_ns,
            (base_us + i64::from(n) * 1000) * 1000,
            "entry {n}"
        );
    }
}

#[test]
fn journal_entries_are_stored_once_across_a_kill9() {
    let env = Env::new("journal");
    let journals = env.path().join("journals");
    std::fs::create_dir(&journals).unwrap();
    // Entry times near now, so the aggregator's retention keeps them.
    let base_us = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
        - 3_600_000_000;
    write_journal(&journals.join("first.journal"), 1..=30, base_us);

    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let mut agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions {
            extra_toml: format!(
                "[journal]\nenabled = true\ndirectory = {}\nread_from = \"beginning\"\n",
                toml_string(&journals)
            ),
            ..AgentOptions::default()
        },
    );
    // What the journal held at the start.
    wait_stored(&env, &aggregator, 30, base_us);

    // Appended while the agent follows.
    write_journal(&journals.join("first.journal"), 31..=45, base_us);
    wait_stored(&env, &aggregator, 45, base_us);

    // Written, in a file of its own, while the agent is down after a SIGKILL: read after the
    // committed cursor once it is back, and nothing before it again.
    agent.kill9();
    write_journal(&journals.join("second.journal"), 46..=60, base_us);
    agent.restart();
    wait_stored(&env, &aggregator, 60, base_us);
    assert_eq!(agent.log_count("following the journal"), 2);
    assert_eq!(agent.log_count("collector failing"), 0, "{}", agent.log());
}
