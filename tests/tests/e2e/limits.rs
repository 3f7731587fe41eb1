//! The aggregator takes smaller batches than the agent makes: `[ingest] max_batch_events = 100`
//! against the agent's default of 1000. Both configurations are valid, so nothing may be lost:
//! batches spooled before the agent learnt the limit are split to fit, and batches spooled after
//! it are packed to fit.

use outpost_common::event::DropCounters;
use outpost_tests::{Agent, AgentOptions, AggregatorOptions, Env, Kind, Synthetic};

const TOTAL: u64 = 5000;
/// Spools everything while the aggregator is down, so its batches must be split.
const EARLY: &str = "limits-early";
/// Starts once the aggregator is up, so most of its batches are packed to the limit.
const LIVE: &str = "limits-live";

#[test]
fn an_aggregator_with_smaller_batches_loses_nothing() {
    let env = Env::new("limits");
    let mut aggregator = env.start_aggregator_with(AggregatorOptions {
        extra: "[ingest]\nmax_batch_events = 100\n".to_owned(),
        ..AggregatorOptions::default()
    });
    // Started once to fix the port, then stopped until the first agent has spooled everything.
    aggregator.terminate();

    let logs = Synthetic::logs(TOTAL);
    assert_eq!(logs.chunk, 500);
    let early = env.start_agent(
        &env.issue_agent(EARLY),
        &aggregator,
        AgentOptions::synthetic(logs),
    );
    // The source's checkpoint commits with its events, so they are all in the spool then.
    let spooled = env.wait_for("the first agent to spool everything", || {
        let spool = early.spool()?;
        if spool.produced == TOTAL {
            Ok(spool)
        } else {
            Err(format!("{spool:?}"))
        }
    });
    assert!(
        spooled.batches < TOTAL / 100,
        "batches are packed beyond the aggregator's limit before it is known: {spooled:?}"
    );

    aggregator.restart();
    let live = env.start_agent(
        &env.issue_agent(LIVE),
        &aggregator,
        AgentOptions::synthetic(logs),
    );
    let store = aggregator.store();
    for agent in [&early, &live] {
        // Returns only once each of 0..TOTAL is stored exactly once and nothing else is.
        env.wait_exactly_once(&store, agent.agent_id(), Kind::Log, TOTAL);
        assert_drained_without_loss(&env, agent);
    }
    assert!(
        early.log().contains("split it into smaller batches"),
        "the early agent's batches were split:\n{}",
        early.log()
    );
}

/// The agent's spool empties and counts no drop of any kind.
fn assert_drained_without_loss(env: &Env, agent: &Agent) {
    let spool = env.wait_for("the spool to drain", || {
        let spool = agent.spool()?;
        if spool.batches == 0 {
            Ok(spool)
        } else {
            Err(format!("{spool:?}"))
        }
    });
    assert_eq!(
        spool.drops,
        DropCounters::default(),
        "{}: {spool:?}",
        agent.agent_id()
    );
}
