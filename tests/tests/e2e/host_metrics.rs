//! Host metrics end to end: an agent with the metrics collector on ships the OpenTelemetry host
//! metrics, the store keeps them, and `status` shows the host's CPU, memory and fullest
//! filesystem.

use std::time::Duration;

use outpost_tests::{AgentOptions, Env};

#[test]
fn host_metrics_reach_the_store_and_status_shows_cpu_memory_and_the_fullest_filesystem() {
    let env = Env::new("host-metrics");
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent("metrics-host");
    let options = AgentOptions {
        host_metrics_every_secs: Some(1),
        ..AgentOptions::default()
    };
    let _agent = env.start_agent(&cert, &aggregator, options);

    let entry = env.wait_for_every(
        Duration::from_millis(250),
        "status to show CPU, memory and the fullest filesystem",
        || {
            let e = aggregator
                .agent_status("metrics-host")
                .ok_or("metrics-host is not listed")?;
            let complete = e["cpu_percent"].is_number()
                && e["memory_percent"].is_number()
                && e["fullest_filesystem"]["mountpoint"].is_string();
            if complete { Ok(e) } else { Err(e.to_string()) }
        },
    );
    let cpu = entry["cpu_percent"].as_f64().unwrap();
    let memory = entry["memory_percent"].as_f64().unwrap();
    let fs = entry["fullest_filesystem"]["percent"].as_f64().unwrap();
    for (what, v) in [("cpu", cpu), ("memory", memory), ("filesystem", fs)] {
        assert!(
            (0.0..=100.0).contains(&v),
            "{what} {v} out of range: {entry}"
        );
    }
    assert!(memory > 0.0, "a running host uses some memory: {entry}");

    // Every metric family the issue names arrives under its OpenTelemetry name and unit.
    let names = [
        ("system.cpu.utilization", "1"),
        ("system.cpu.load_average.1m", "{thread}"),
        ("system.memory.usage", "By"),
        ("system.paging.usage", "By"),
        ("system.filesystem.usage", "By"),
        ("system.filesystem.inodes.usage", "{inode}"),
        ("system.disk.io", "By"),
        ("system.network.io", "By"),
        ("system.processes.count", "{process}"),
        ("system.uptime", "s"),
        ("outpost.agent.memory.rss", "By"),
        ("outpost.agent.spool.events", "{event}"),
    ];
    env.wait_for("every metric family to be stored", || {
        let missing: Vec<&str> = names
            .iter()
            .map(|&(n, _)| n)
            .filter(|n| aggregator.store().metric_count(n).unwrap_or(0) == 0)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    });
    for (name, unit) in names {
        assert_eq!(
            aggregator.store().metric_units(name).unwrap(),
            [unit],
            "{name}"
        );
    }
}
