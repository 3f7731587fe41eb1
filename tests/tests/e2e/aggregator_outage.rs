//! The aggregator goes away (SIGTERM, then SIGKILL) while the agent produces: the agent keeps
//! spooling, and after each restart the backlog arrives, every event exactly once.

use outpost_tests::{Agent, AgentOptions, Aggregator, Env, Kind, Synthetic};

const TOTAL: u64 = 60_000;
/// Slow enough that production outlasts both outages.
const RATE: u32 = 4_000;
const AGENT: &str = "outage-1";

#[test]
fn the_backlog_of_an_aggregator_outage_arrives_exactly_once() {
    let env = Env::new("aggregator-outage");
    let mut aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions::synthetic(Synthetic::logs(TOTAL).rate(RATE)),
    );
    let store = aggregator.store();
    env.wait_stored(&store, AGENT, Kind::Log, 5_000);

    aggregator.terminate();
    outage(&env, &agent, &mut aggregator, "SIGTERM");
    let stored = store.synthetic_count(AGENT, Kind::Log).unwrap_or(0);
    env.wait_stored(&store, AGENT, Kind::Log, stored + 5_000);

    aggregator.kill9();
    outage(&env, &agent, &mut aggregator, "SIGKILL");

    let report = env.wait_exactly_once(&store, AGENT, Kind::Log, TOTAL);
    assert_eq!(
        (report.min, report.max),
        (Some(0), Some(TOTAL - 1)),
        "{report}"
    );
    assert!(agent.is_running(), "the agent survived both outages");
    assert_eq!(agent.starts(), 1);
}

/// With the aggregator down: the agent's spool must grow (the source keeps producing and
/// nothing is lost), then the aggregator comes back on the same port.
fn outage(env: &Env, agent: &Agent, aggregator: &mut Aggregator, how: &str) {
    let before = agent.spool().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        before.produced < TOTAL,
        "the source finished before the {how} outage ({before:?}); lower RATE or raise TOTAL"
    );
    env.wait_for(
        &format!("the spool to grow while the aggregator is down ({how})"),
        || {
            let now = agent.spool()?;
            if now.batches >= before.batches + 10 && now.events > before.events {
                Ok(())
            } else {
                Err(format!("{now:?} (before: {before:?})"))
            }
        },
    );
    aggregator.restart();
}
