//! `outpost-aggregator status --json`: an agent is online while it runs (heartbeats keep it so
//! past `offline_after`), offline once it stops or falls silent, and a certificate issued to an
//! agent that never connected shows as never seen.

use std::time::Duration;

use outpost_tests::{AgentOptions, Aggregator, Env};
use serde_json::Value;

/// Every status poll runs the CLI; no need to hurry it.
const POLL: Duration = Duration::from_millis(250);
/// `fleet.offline_after` of the test aggregator.
const OFFLINE_AFTER_NS: i64 = 5_000_000_000;

fn entry(aggregator: &Aggregator, id: &str) -> Result<Value, String> {
    aggregator
        .agent_status(id)
        .ok_or_else(|| format!("{id} is not listed"))
}

fn wait_status(env: &Env, aggregator: &Aggregator, id: &str, status: &str) -> Value {
    env.wait_for_every(POLL, &format!("{id} to be {status}"), || {
        let e = entry(aggregator, id)?;
        if e["status"] == status {
            Ok(e)
        } else {
            Err(e.to_string())
        }
    })
}

#[test]
fn status_follows_agents_online_offline_and_never_seen() {
    let env = Env::new("status");
    let aggregator = env.start_aggregator();
    let stopped = env.issue_agent("status-stopped");
    let killed = env.issue_agent("status-killed");
    env.issue_agent("status-never");
    let mut stopped_agent = env.start_agent(&stopped, &aggregator, AgentOptions::default());
    let mut killed_agent = env.start_agent(&killed, &aggregator, AgentOptions::default());

    let never = entry(&aggregator, "status-never").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(never["status"], "never_seen", "{never}");
    assert_eq!(never["last_seen_ns"], Value::Null, "{never}");
    assert_eq!(never["certificate_issued"], true, "{never}");
    assert_eq!(
        never["reason"], "certificate issued, never connected",
        "{never}"
    );

    let first = wait_status(&env, &aggregator, "status-stopped", "online");
    assert_eq!(first["connected"], true, "{first}");
    assert_eq!(first["certificate_issued"], true, "{first}");
    assert_eq!(first["version"], outpost_common::VERSION, "{first}");
    wait_status(&env, &aggregator, "status-killed", "online");

    // Heartbeats keep it online for longer than offline_after.
    let since = first["last_seen_ns"]
        .as_i64()
        .unwrap_or_else(|| panic!("{first}"));
    env.wait_for_every(
        POLL,
        "heartbeats to carry the agent past offline_after",
        || {
            let e = entry(&aggregator, "status-stopped")?;
            assert_eq!(e["status"], "online", "a heartbeating agent went {e}");
            let seen = e["last_seen_ns"].as_i64().unwrap_or(since);
            if seen - since > OFFLINE_AFTER_NS {
                Ok(())
            } else {
                Err(e.to_string())
            }
        },
    );

    // Stopped cleanly: offline at once, with the reason.
    stopped_agent.terminate();
    let e = wait_status(&env, &aggregator, "status-stopped", "offline");
    assert_eq!(e["connected"], false, "{e}");
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("disconnected"), "{e}");
    assert!(reason.contains("agent shutting down"), "{e}");

    // Killed: offline once it has been silent for offline_after (or its connection timed out).
    killed_agent.kill9();
    let e = wait_status(&env, &aggregator, "status-killed", "offline");
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("no heartbeat for") || reason.contains("timed out"),
        "{e}"
    );

    // And the one that never came still never did.
    let never = entry(&aggregator, "status-never").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(never["status"], "never_seen", "{never}");
}
