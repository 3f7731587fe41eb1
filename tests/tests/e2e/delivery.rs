//! The plain path: agents deliver numbered events and the store holds each exactly once.

use outpost_tests::{AgentOptions, Env, Kind, Synthetic};

const TOTAL: u64 = 20_000;

#[test]
fn every_event_is_stored_exactly_once() {
    let env = Env::new("delivery");
    let aggregator = env.start_aggregator();
    let logs = env.issue_agent("delivery-logs");
    let metrics = env.issue_agent("delivery-metrics");
    let _a = env.start_agent(
        &logs,
        &aggregator,
        AgentOptions::synthetic(Synthetic::logs(TOTAL)),
    );
    let _b = env.start_agent(
        &metrics,
        &aggregator,
        AgentOptions::synthetic(Synthetic::metrics(TOTAL)),
    );

    let store = aggregator.store();
    for (id, kind) in [
        ("delivery-logs", Kind::Log),
        ("delivery-metrics", Kind::Metric),
    ] {
        let report = env.wait_exactly_once(&store, id, kind, TOTAL);
        assert_eq!(
            (report.count, report.distinct),
            (TOTAL, TOTAL),
            "{id}: {report}"
        );
        assert_eq!(
            (report.min, report.max),
            (Some(0), Some(TOTAL - 1)),
            "{id}: {report}"
        );
    }
    // Each agent's events are filed under its own identity only.
    assert_eq!(store.synthetic_count("delivery-logs", Kind::Metric), Ok(0));
    assert_eq!(store.synthetic_count("delivery-metrics", Kind::Log), Ok(0));
}
