//! The spool overflows while the aggregator is down: metric samples evict the oldest, every
//! eviction is counted, the counts survive a restart of the agent and reach the aggregator.
//! Stored plus dropped is everything produced, and exactly the numbers not stored are counted
//! as dropped.

use outpost_tests::{AgentOptions, Env, Kind, Synthetic};

const TOTAL: u64 = 40_000;
const AGENT: &str = "cap-1";

#[test]
fn an_overflowing_spool_counts_exactly_what_it_drops() {
    let env = Env::new("spool-cap");
    // Started once to fix the port the agent will use, then stopped before the agent starts.
    let mut aggregator = env.start_aggregator();
    aggregator.terminate();

    let cert = env.issue_agent(AGENT);
    let mut agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions {
            spool_max_bytes: Some("256KiB".to_owned()),
            max_batch_bytes: Some("64KiB".to_owned()),
            uncompressed: true,
            ..AgentOptions::synthetic(Synthetic::metrics(TOTAL))
        },
    );
    // Both the checkpoint and the log say the source is done.
    let produced = env.wait_for("the source to produce everything", || {
        let spool = agent.spool()?;
        let said = agent.log().contains("synthetic source reached its total");
        if spool.produced == TOTAL && said {
            Ok(spool)
        } else {
            Err(format!("{spool:?}, said so in the log: {said}"))
        }
    });
    assert!(
        produced.drops.total() > 0,
        "the spool must have overflowed: {produced:?}"
    );

    // A clean stop with nothing to talk to, and a start with a full spool, lose no count.
    agent.terminate();
    agent.restart();
    aggregator.restart();
    let store = aggregator.store();
    // Drained: nothing left in the spool, and the last heartbeat says so.
    let status = env.wait_for("the backlog to drain and a heartbeat to report it", || {
        let spool = agent.spool()?;
        let status = store.latest_status(AGENT)?.ok_or("no status yet")?;
        if spool.batches == 0 && status["backlog_batches"] == 0 && status["spool_events"] == 0 {
            Ok(status)
        } else {
            Err(format!("spool {spool:?}, reported {status}"))
        }
    });

    let spool = agent.spool().unwrap_or_else(|e| panic!("{e}"));
    let reported: outpost_common::event::DropCounters =
        serde_json::from_value(status["drops"].clone()).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(
        reported, spool.drops,
        "the aggregator knows the agent's drop counters"
    );
    assert!(
        reported.spool_full_evicted > 0,
        "metrics evict the oldest: {reported:?}"
    );
    assert_eq!(
        reported.rejected_by_aggregator + reported.oversized,
        0,
        "{reported:?}"
    );

    let report = store
        .seq_report(AGENT, Kind::Metric, TOTAL)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.is_clean(), "{report}");
    assert!(report.distinct > 0, "some samples must survive: {report}");
    // The status snapshot spooled at each start is droppable too; count its fate separately.
    let snapshots = u64::from(agent.starts());
    let snapshots_dropped = snapshots - store.status_count(AGENT).unwrap_or_else(|e| panic!("{e}"));
    let dropped_samples = reported.total() - snapshots_dropped;
    assert_eq!(
        report.distinct + dropped_samples,
        TOTAL,
        "stored + dropped = produced ({report}; drops {reported:?}, snapshot dropped: {snapshots_dropped})"
    );
    assert_eq!(
        report.missing, dropped_samples,
        "exactly the missing numbers were counted: {report}"
    );

    // The operator sees it too.
    let entry = aggregator
        .agent_status(AGENT)
        .unwrap_or_else(|| panic!("{AGENT} not in status"));
    assert_eq!(entry["drops_total"], reported.total(), "{entry}");
    assert_eq!(entry["status"], "degraded", "{entry}");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("dropped (spool_full_evicted)"), "{entry}");
}
