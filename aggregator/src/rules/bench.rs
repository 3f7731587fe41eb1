//! How fast the engine evaluates the default rule pack (`packaging/rules.d`) over a realistic
//! mix of committed events: `cargo test --release -p outpost-aggregator rules::bench -- --ignored
//! --nocapture`. BENCHMARKS.md holds the figures.
//!
//! The mix, per host and simulated second: 30 metric points (host metrics as the agent sends
//! them every 10 s, spread over the seconds: CPU states, memory, filesystems, network), 20 log
//! records (most match no rule; one in ten is an sshd failure, which the frequency, across-hosts
//! and sequence rules all look at) and a file-integrity change now and then. The engine ticks once
//! per simulated second, as the aggregator does.

use std::path::Path;
use std::time::Instant;

use outpost_common::event::{
    Event, FimChange, FimDetection, FimEvent, LogRecord, MetricKind, MetricPoint,
    Severity as LogSeverity,
};

use super::engine::{Engine, Setup};

const S: i64 = 1_000_000_000;

fn point(name: &str, attributes: &[(&str, &str)], t: i64, value: f64) -> Event {
    Event::Metric(MetricPoint {
        name: name.to_owned(),
        unit: "1".to_owned(),
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        time_ns: t,
        value,
        kind: MetricKind::Gauge,
    })
}

fn log(t: i64, body: String) -> Event {
    Event::Log(LogRecord {
        time_ns: t,
        source: "/var/log/auth.log".to_owned(),
        severity: Some(LogSeverity::Info),
        body,
        attributes: Vec::new(),
    })
}

/// One simulated second of one host's events.
fn second(host: usize, s: i64, events: &mut Vec<Event>) {
    let t = s * S;
    let load = 0.2 + 0.1 * ((s + host as i64) % 7) as f64 / 7.0;
    for state in ["user", "system", "idle"] {
        events.push(point(
            "system.cpu.utilization",
            &[("state", state)],
            t,
            load,
        ));
    }
    events.push(point(
        "system.memory.utilization",
        &[("state", "used")],
        t,
        0.5,
    ));
    for mount in ["/", "/var", "/home"] {
        events.push(point(
            "system.filesystem.utilization",
            &[("mountpoint", mount), ("device", "sda1")],
            t,
            0.4 + (s % 600) as f64 * 1e-5,
        ));
    }
    for i in 0..23 {
        events.push(point(
            "system.network.io",
            &[
                ("device", "eth0"),
                ("direction", if i % 2 == 0 { "receive" } else { "transmit" }),
            ],
            t,
            (s * 1000 + i) as f64,
        ));
    }
    for i in 0..20 {
        let body = if i % 10 == 0 {
            format!(
                "Failed password for invalid user admin from 198.51.100.{} port {} ssh2",
                (s + i) % 250,
                40000 + i
            )
        } else {
            format!("pam_unix(cron:session): session opened for user root(uid=0) by (uid=0) {i}")
        };
        events.push(log(t, body));
    }
    if s % 60 == host as i64 % 60 {
        events.push(Event::Fim(FimEvent {
            time_ns: t,
            path: "/etc/hosts".to_owned(),
            change: FimChange::Modified,
            changed: vec!["content".to_owned()],
            moved_from: None,
            before: None,
            after: None,
            detected_by: FimDetection::Scheduled,
            seq: s as u64,
            chain: String::new(),
        }));
    }
}

/// `count` generated rules of every kind the pack has, as an operator's own would add to it:
/// thresholds on metrics the mix sends (with thresholds it never crosses) and on metrics it does
/// not send, log and frequency rules on patterns, and file-integrity rules on other paths.
fn generated(count: usize) -> String {
    let mut text = String::new();
    for i in 0..count {
        let rule = match i % 8 {
            0 => format!(
                "kind = \"threshold\"\nmetric = \"system.cpu.utilization\"\n\
                 match = {{ state = \"user\" }}\naggregate = \"avg\"\nwindow = \"5m\"\n\
                 op = \">\"\nvalue = {}\nfor = \"1m\"\n",
                0.95 + (i % 40) as f64 / 1000.0
            ),
            1 => format!(
                "kind = \"threshold\"\nmetric = \"system.filesystem.utilization\"\n\
                 match = {{ mountpoint = \"/srv/{i}\" }}\nop = \">\"\nvalue = 0.9\n"
            ),
            2 | 3 => format!(
                "kind = \"threshold\"\nmetric = \"app.requests.errors.{i}\"\n\
                 aggregate = \"rate\"\nwindow = \"1m\"\nop = \">\"\nvalue = 10\n"
            ),
            4 => format!(
                "kind = \"log\"\npattern = 'service{i}\\[\\d+\\]: fatal error (?P<code>\\w+)'\n"
            ),
            5 => format!("kind = \"log\"\nsource = \"/var/log/app{i}.log\"\npattern = 'panic'\n"),
            6 => format!(
                "kind = \"frequency\"\npattern = 'upstream{i} timed out .* client: (?P<client>\\S+)'\n\
                 count = 5\nwithin = \"1m\"\ngroup_by = [\"client\"]\n"
            ),
            _ => format!("kind = \"fim\"\npaths = [\"/srv/app{i}/**\"]\n"),
        };
        text.push_str(&format!(
            "[[rule]]\nname = \"generated-{i}\"\nseverity = \"low\"\n{rule}\n"
        ));
    }
    text
}

/// Runs the mix through `rules` and prints events per second of engine time.
fn run(what: &str, rules: Vec<super::Rule>) {
    const HOSTS: usize = 100;
    const SECONDS: i64 = 300;
    let rule_count = rules.len();
    let mut engine = Engine::new(rules, Setup::default());
    let hosts: Vec<String> = (0..HOSTS).map(|h| format!("host-{h:04}")).collect();
    let mut batch = Vec::new();
    let mut events = 0u64;
    let mut busy = std::time::Duration::ZERO;
    for s in 0..SECONDS {
        for (h, host) in hosts.iter().enumerate() {
            batch.clear();
            second(h, s, &mut batch);
            let started = Instant::now();
            for event in &batch {
                engine.observe(host, event, s * S);
            }
            busy += started.elapsed();
            events += batch.len() as u64;
        }
        let started = Instant::now();
        engine.tick(s * S);
        let _ = engine.take();
        busy += started.elapsed();
    }
    let rate = events as f64 / busy.as_secs_f64();
    println!(
        "{what} ({rule_count} rules), {HOSTS} hosts, {SECONDS} s simulated: {events} events \
         in {:.3} s of engine time = {rate:.0} events/s",
        busy.as_secs_f64()
    );
    assert!(events > 0);
}

fn pack() -> Vec<super::Rule> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/rules.d");
    super::load_dir(&dir).expect("the default pack loads")
}

#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn default_pack_throughput() {
    run("default pack", pack());
}

#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn default_pack_and_generated_throughput() {
    let mut rules = pack();
    let text = generated(1000);
    rules.extend(
        super::file::parse_file(Path::new("generated.toml"), &text)
            .unwrap_or_else(|e| panic!("the generated rules load: {e}")),
    );
    run("default pack and 1,000 generated rules", rules);
}

#[test]
fn generated_rules_load() {
    let rules = super::file::parse_file(Path::new("generated.toml"), &generated(16))
        .unwrap_or_else(|e| panic!("the generated rules load: {e}"));
    assert_eq!(rules.len(), 16);
}
