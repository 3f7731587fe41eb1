//! The plain path: agents deliver numbered events and the store holds each exactly once.

use outpost_tests::{AgentOptions, AggregatorOptions, Env, Kind, Synthetic};

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

/// Metric points move from rows into chunks while agents deliver: every point is still stored
/// exactly once, whether it is read from a row or from a chunk.
#[test]
fn metric_points_packed_into_chunks_while_arriving_are_each_stored_once() {
    let env = Env::new("delivery-packed");
    let aggregator = env.start_aggregator_with(AggregatorOptions {
        extra: "[retention]\nmetric_chunk = \"1s\"\ninterval = \"200ms\"\n".into(),
        ..AggregatorOptions::default()
    });
    let metrics = env.issue_agent("packed-metrics");
    let _a = env.start_agent(
        &metrics,
        &aggregator,
        AgentOptions::synthetic(Synthetic::metrics(TOTAL)),
    );
    let store = aggregator.store();
    let report = env.wait_exactly_once(&store, "packed-metrics", Kind::Metric, TOTAL);
    assert_eq!((report.count, report.distinct), (TOTAL, TOTAL), "{report}");
    // Everything goes into chunks once its span has passed, and stays there exactly once.
    env.wait_for("every point packed into chunks", || {
        let (rows, packed) = store.metric_layout()?;
        (rows == 0 && packed == TOTAL)
            .then_some(())
            .ok_or(format!("{rows} rows, {packed} packed"))
    });
    let report = store
        .seq_report("packed-metrics", Kind::Metric, TOTAL)
        .unwrap();
    assert_eq!((report.count, report.distinct), (TOTAL, TOTAL), "{report}");
}
