//! The fleet simulator in every scenario, small: twenty agents with the agent's own shipper and
//! their own certificates against the real aggregator. Each run ends with the loss check: every
//! event the simulated spools accepted is in the store exactly once (or counted as dropped, or
//! still held by an agent whose certificate was revoked). The ClickHouse runs check the store
//! through ClickHouse, with one aggregator and with two sharing it.

use std::time::Duration;

use outpost_tests::Env;
use outpost_tests::fleetsim::{self, Scenario, SimConfig, SimReport};

/// Few, at modest rates: these tests share the machine with the rest of the suite.
const AGENTS: usize = 20;

/// A short run of `scenario` at rates raised so that every kind of event occurs in seconds.
fn run(scenario: Scenario) -> SimReport {
    run_on(scenario, false, 1)
}

/// [`run`], with events in a ClickHouse server when `clickhouse`, over `aggregators`.
fn run_on(scenario: Scenario, clickhouse: bool, aggregators: usize) -> SimReport {
    let env = Env::new(&format!("fleetsim-{scenario}"));
    let mut config = SimConfig::new(scenario, AGENTS);
    config.clickhouse = clickhouse;
    config.aggregators = aggregators;
    config.fleet.rates.metrics_interval = Duration::from_secs(2);
    config.fleet.rates.log_lines_per_sec = 3.0;
    config.fleet.rates.fim_per_hour = 1800.0;
    config.fleet.agents_per_socket = 8;
    config.ramp = Duration::from_secs(1);
    config.settle = Duration::from_secs(1);
    config.measure = Duration::from_secs(6);
    config.outage = Duration::from_secs(4);
    config.deadline = Duration::from_secs(120);
    let report = fleetsim::run(&env, &config)
        .unwrap_or_else(|e| panic!("{scenario}: {e:#}\n{}", env.diagnosis()));
    eprintln!("{report}");
    let loss = &report.loss;
    assert!(loss.passed(), "{scenario}: {loss}");
    assert!(
        loss.accepted.metrics > 0 && loss.accepted.logs > 0 && loss.accepted.fim > 0,
        "{scenario}: every kind of event was made: {loss}"
    );
    assert!(report.events_committed > 0, "{report}");
    report
}

#[test]
fn steady_state_loses_nothing() {
    let r = run(Scenario::Steady);
    assert_eq!(r.loss.dropped.total(), 0, "{r}");
    assert_eq!(r.sessions, AGENTS as u64, "one session per agent: {r}");
    assert_eq!(
        (r.rules_fell_behind, r.feed_dropped_batches),
        (0, 0),
        "the alerting engine kept up with the live feed: {r}"
    );
    assert!(
        r.aggregator_threads.contains_key("store-writer"),
        "the aggregator's threads are listed by name: {r}"
    );
}

#[test]
fn steady_state_into_clickhouse_loses_nothing() {
    // The loss check reads every event back through the ClickHouse store.
    let r = run_on(Scenario::Steady, true, 1);
    assert_eq!(r.loss.dropped.total(), 0, "{r}");
    assert_eq!(r.loss.duplicates, 0, "{r}");
    assert_eq!(r.sessions, AGENTS as u64, "one session per agent: {r}");
}

#[test]
fn steady_state_over_two_aggregators_into_one_clickhouse_loses_nothing() {
    // One loss check over the store both aggregators wrote.
    let r = run_on(Scenario::Steady, true, 2);
    assert_eq!(r.loss.dropped.total(), 0, "{r}");
    assert_eq!(r.loss.duplicates, 0, "{r}");
    assert_eq!(r.per_aggregator.len(), 2, "{r}");
    for a in &r.per_aggregator {
        assert_eq!(
            a.sessions,
            AGENTS as u64 / 2,
            "half the agents on {}: {r}",
            a.name
        );
        assert!(a.events_committed > 0, "{} stored events: {r}", a.name);
    }
    assert_eq!(
        r.events_committed,
        r.per_aggregator
            .iter()
            .map(|a| a.events_committed)
            .sum::<u64>(),
        "{r}"
    );
    assert!(
        r.clickhouse_cpu_pct.is_some() && r.postgres_cpu_pct.is_some(),
        "both servers' CPU is measured: {r}"
    );
}

#[test]
fn two_aggregators_need_the_clickhouse_store() {
    let mut config = SimConfig::new(Scenario::Steady, AGENTS);
    config.aggregators = 2;
    let refused = config.validate().expect_err("two aggregators on SQLite");
    assert!(refused.contains("--store clickhouse"), "{refused}");
    config.clickhouse = true;
    assert_eq!(config.validate(), Ok(()));
    config.scenario = Scenario::Storm;
    let refused = config.validate().expect_err("a storm over two aggregators");
    assert!(refused.contains("storm"), "{refused}");
}

#[test]
fn a_reconnect_storm_catches_up_and_loses_nothing() {
    let r = run(Scenario::Storm);
    let storm = r.storm.unwrap_or_else(|| panic!("no storm figures: {r}"));
    assert!(
        storm.backlog_events > 0,
        "the spools filled while it was down: {r}"
    );
    assert!(
        r.sessions >= 2 * AGENTS as u64,
        "every agent connected again: {r}"
    );
}

#[test]
fn a_bad_network_loses_nothing() {
    let r = run(Scenario::BadNetwork);
    let net = r
        .network
        .unwrap_or_else(|| panic!("no network figures: {r}"));
    for (way, d) in [
        ("to the aggregator", &net.to_upstream),
        ("to the agents", &net.to_client),
    ] {
        assert!(d.dropped > 0, "datagrams were lost {way}: {net:?}");
        assert!(d.duplicated > 0, "datagrams were duplicated {way}: {net:?}");
        assert!(d.reordered > 0, "datagrams were reordered {way}: {net:?}");
    }
}

#[test]
fn a_slow_disk_slows_commits_and_loses_nothing() {
    let r = run(Scenario::SlowDisk);
    let mean = r
        .commit_mean
        .unwrap_or_else(|| panic!("no commit figures: {r}"));
    assert!(
        mean >= Duration::from_millis(20),
        "each commit waited for the delayed fsync: {r}"
    );
}

#[test]
fn churning_agents_lose_nothing() {
    let r = run(Scenario::Churn);
    assert!(r.sessions > AGENTS as u64, "agents reconnected: {r}");
}

#[test]
fn revoked_agents_are_cut_off_and_nothing_is_lost() {
    let r = run(Scenario::Revoke);
    assert_eq!(r.revoked, AGENTS / 10, "a tenth of the fleet: {r}");
    assert!(
        r.refused.get("revoked").copied().unwrap_or(0) >= (AGENTS / 10) as u64,
        "their connections were closed: {r}"
    );
    assert!(
        r.refused.get("connection").copied().unwrap_or(0) > 0,
        "their reconnects were refused: {r}"
    );
}
