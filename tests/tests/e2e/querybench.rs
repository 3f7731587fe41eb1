//! The query benchmark's loader and its three queries, small: a few thousand rows through each
//! store's commit, then the real aggregator on each answers the queries over HTTP with exactly
//! the values the data implies (`outpost-querybench` runs the same code over 100 million rows).

use std::time::Duration;

use outpost_aggregator::store::SqliteStore;
use outpost_aggregator::store::clickhouse::{ClickHouseConfig, ClickHouseStore};
use outpost_tests::clickhouse_server::ClickHouseServer;
use outpost_tests::querybench::{self, Kind, Shape, Target};
use outpost_tests::{AggregatorOptions, Env, toml_string};

/// The API section of both aggregators: loopback on a free port.
const API: &str = "[api]\nlisten = \"127.0.0.1:0\"\n\n";

#[test]
fn querybench_loads_both_stores_and_the_api_answers_its_queries_with_what_was_loaded() {
    let env = Env::new("querybench");
    let shape = Shape::small(outpost_common::time::now_ns());
    let template = outpost_tests::hostsim::host_template().expect("the host metric template");
    let per_round: usize = template.iter().map(|f| f.points.len()).sum();

    // The embedded store, in the data directory its aggregator will use.
    let sqlite_dir = env.path().join("sqlite");
    std::fs::create_dir_all(&sqlite_dir).expect("creating the store's directory");
    let loaded = {
        let store = SqliteStore::open(&sqlite_dir.join("aggregator.db")).expect("opening SQLite");
        querybench::load(&store, &shape, &template, false).expect("loading SQLite")
    };
    let rounds = (shape.span_ns / shape.metric_interval_ns) as u64 * shape.agents as u64;
    assert_eq!(
        loaded.metric_points,
        rounds * per_round as u64,
        "{loaded:?}"
    );
    assert!(
        (2_000..20_000).contains(&loaded.logs),
        "a few thousand log records: {loaded:?}"
    );

    let server = ClickHouseServer::start();
    let database = server.fresh_database();
    let into_clickhouse = {
        let store = ClickHouseStore::open(&ClickHouseConfig {
            url: server.url(),
            database: database.clone(),
            ..ClickHouseConfig::default()
        })
        .expect("opening ClickHouse");
        querybench::load(&store, &shape, &template, false).expect("loading ClickHouse")
    };
    assert_eq!(
        (into_clickhouse.metric_points, into_clickhouse.logs),
        (loaded.metric_points, loaded.logs),
        "the same data in both stores"
    );

    let sqlite = env.start_aggregator_with(AggregatorOptions {
        data_dir: Some(sqlite_dir),
        extra: API.to_owned(),
        ..AggregatorOptions::named("sqlite")
    });
    let clickhouse = env.start_aggregator_with(AggregatorOptions {
        extra: format!(
            "{API}[store]\nbackend = \"clickhouse\"\n\n[store.clickhouse]\nurl = {}\ndatabase = \"{database}\"\n",
            toml_string(std::path::Path::new(&server.url()))
        ),
        ..AggregatorOptions::named("clickhouse")
    });
    let targets: Vec<Target> = [("sqlite", &sqlite), ("clickhouse", &clickhouse)]
        .into_iter()
        .map(|(name, aggregator)| {
            let made: serde_json::Value = serde_json::from_str(&aggregator.cli_ok(&[
                "token", "create", "--name", "bench", "--role", "viewer", "--json",
            ]))
            .expect("token create --json prints JSON");
            Target {
                name: name.to_owned(),
                base_url: aggregator.api_url(),
                token: made["token"].as_str().expect("a token").to_owned(),
            }
        })
        .collect();

    // Every answer is checked against what the data implies; a mismatch is an error.
    let timings = querybench::measure(&shape, &targets, 2, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.diagnosis()));
    assert_eq!(timings.len(), 3 * targets.len());
    for t in &timings {
        assert_eq!(t.runs.len(), 2, "{t:?}");
        let least = match t.kind {
            // One host's rounds over 6 hours, one a step.
            Kind::HostCpu => (shape.span_ns / shape.metric_interval_ns) as usize,
            // Three hosts' rounds over the last hour, at most one a minute each.
            Kind::FleetCpu => 3,
            // About one line in a hundred matches, of some thousands.
            Kind::LogSearch => 5,
        };
        assert!(
            t.sizes.iter().all(|&n| n >= least),
            "{} on {}: {:?}",
            t.kind.describe(&shape),
            t.target,
            t.sizes
        );
    }
}
