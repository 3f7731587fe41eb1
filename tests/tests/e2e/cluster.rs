//! Aggregators as stateless front ends: two of them over one ClickHouse (events) and one
//! PostgreSQL (state), both servers started here on loopback ports with their data in the
//! test's directory. Agents are spread across the two, each streaming a numbered sequence; one
//! aggregator is killed with SIGKILL mid-run, its agents fail over to the other, and the store
//! holds every event exactly once, as the API counts it.
//!
//! Then the outages: ClickHouse stopped mid-run, and PostgreSQL stopped mid-run. Nothing is
//! acknowledged that is not stored, nothing is lost, and ingest resumes by itself when the
//! server is back, without a restart.

use outpost_tests::clickhouse_server::ClickHouseServer;
use outpost_tests::postgres_server::PostgresServer;
use outpost_tests::{
    Agent, AgentOptions, Aggregator, AggregatorOptions, Env, SeqReport, Synthetic,
};
use serde_json::Value;

/// The databases a cluster's aggregators share.
struct Backends {
    clickhouse: ClickHouseServer,
    postgres: PostgresServer,
    database: String,
    postgres_url: String,
}

impl Backends {
    fn start() -> Backends {
        let clickhouse = ClickHouseServer::start();
        let postgres = PostgresServer::start();
        let database = clickhouse.fresh_database();
        let postgres_url = postgres.fresh_database();
        Backends {
            clickhouse,
            postgres,
            database,
            postgres_url,
        }
    }

    /// An aggregator over both, as node `node` of the ClickHouse store, with alerting off.
    fn aggregator(&self, env: &Env, name: &str, node: u8) -> Aggregator {
        self.aggregator_alerting(env, name, node, "[alerting]\nenabled = false\n")
    }

    /// An aggregator over both, with `alerting` (its `[alerting]` section).
    fn aggregator_alerting(&self, env: &Env, name: &str, node: u8, alerting: &str) -> Aggregator {
        let extra = format!(
            "[store]\nbackend = \"clickhouse\"\n\n\
             [store.clickhouse]\nurl = \"{url}\"\ndatabase = \"{database}\"\nnode = {node}\n\
             request_timeout = \"5s\"\n\n\
             [state]\nbackend = \"postgres\"\n\n\
             [state.postgres]\nurl = \"{postgres}\"\nconnect_timeout = \"2s\"\n\n\
             {alerting}",
            url = self.clickhouse.url(),
            database = self.database,
            postgres = self.postgres_url,
        );
        env.start_aggregator_with(AggregatorOptions {
            extra,
            ..AggregatorOptions::named(name)
        })
    }
}

/// The API of one aggregator, with a viewer token made by the CLI (kept in PostgreSQL, so it
/// works on every aggregator of the cluster).
struct Api {
    base: String,
    token: String,
    client: reqwest::blocking::Client,
}

impl Api {
    fn new(aggregator: &Aggregator, token: &str) -> Api {
        Api {
            base: aggregator.api_url(),
            token: token.to_owned(),
            client: reqwest::blocking::Client::new(),
        }
    }

    fn get(&self, path: &str) -> Result<(u16, Value), String> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = response.status().as_u16();
        let body = response.json().map_err(|e| format!("GET {path}: {e}"))?;
        Ok((status, body))
    }

    /// The synthetic numbers of `agent_id`'s stored log records, as the API lists them.
    fn seq_report(&self, agent_id: &str, total: u64) -> Result<SeqReport, String> {
        let mut seqs = Vec::new();
        let mut mismatched = Vec::new();
        let mut cursor = String::new();
        loop {
            let path =
                format!("/api/v1/logs?agent_id={agent_id}&source=synthetic&limit=1000{cursor}");
            let (status, page) = self.get(&path)?;
            if status != 200 {
                return Err(format!("GET {path}: {status} {page}"));
            }
            for item in page["items"].as_array().into_iter().flatten() {
                let seq = item["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|pair| pair[0] == "synthetic.seq")
                    .and_then(|pair| pair[1].as_str()?.parse::<u64>().ok());
                match seq {
                    Some(seq) => {
                        seqs.push(seq);
                        let body = item["body"].as_str().unwrap_or_default();
                        if !body.contains(&format!("{seq:012}")) {
                            mismatched.push(seq);
                        }
                    }
                    None => mismatched.push(u64::MAX),
                }
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        seqs.sort_unstable();
        Ok(SeqReport::new(&seqs, total, mismatched))
    }
}

fn viewer_token(aggregator: &Aggregator) -> String {
    let out = aggregator.cli_ok(&[
        "token", "create", "--name", "viewer", "--role", "viewer", "--json",
    ]);
    let made: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    made["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {made}"))
        .to_owned()
}

/// Waits until the API counts every number of `agent_id` once and the agent's spool is empty
/// with nothing dropped.
fn wait_exactly_once(env: &Env, api: &Api, agent: &Agent, agent_id: &str, total: u64) {
    let report = env.wait_for_every(
        std::time::Duration::from_millis(500),
        &format!("every event of {agent_id} stored once, as the API counts it"),
        || {
            let report = api.seq_report(agent_id, total)?;
            if report.distinct == total {
                Ok(report)
            } else {
                Err(report.to_string())
            }
        },
    );
    assert!(report.is_exact(), "{agent_id}: {report}");
    let spool = env.wait_for(&format!("{agent_id}'s spool to drain"), || {
        let spool = agent.spool()?;
        if spool.produced == total && spool.batches == 0 {
            Ok(spool)
        } else {
            Err(format!("{spool:?}"))
        }
    });
    assert_eq!(spool.drops.total(), 0, "{agent_id}: {spool:?}");
}

const TOTAL: u64 = 20_000;
/// Slow enough that the agents are still producing when the first aggregator dies.
const RATE: u32 = 2_000;

#[test]
fn two_aggregators_share_one_store_and_a_killed_ones_agents_lose_nothing_and_repeat_nothing() {
    let env = Env::new("cluster");
    let backends = Backends::start();
    let mut a = backends.aggregator(&env, "aggregator-a", 1);
    let b = backends.aggregator(&env, "aggregator-b", 2);
    let token = viewer_token(&b);
    // Two agents prefer a, two prefer b.
    let names = ["spread-1", "spread-2", "spread-3", "spread-4"];
    let agents: Vec<Agent> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let cert = env.issue_agent(name);
            let order: [&Aggregator; 2] = if i % 2 == 0 { [&a, &b] } else { [&b, &a] };
            env.start_agent_with_all(
                &cert,
                &order,
                AgentOptions::synthetic(Synthetic::logs(TOTAL).rate(RATE)),
            )
        })
        .collect();
    let api_b = Api::new(&b, &token);
    {
        // Both aggregators answer for the one store: a's API sees what b stored, and the
        // other way round.
        let api_a = Api::new(&a, &token);
        env.wait_for("events of every agent visible through both APIs", || {
            for name in names {
                for api in [&api_a, &api_b] {
                    let report = api.seq_report(name, TOTAL)?;
                    if report.distinct < 1_000 {
                        return Err(format!("{name} through {}: {report}", api.base));
                    }
                }
            }
            Ok(())
        });
        let (status, ready) = api_a.get("/readyz").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "{ready}");
    }
    a.kill9();
    for (agent, name) in agents.iter().zip(names) {
        wait_exactly_once(&env, &api_b, agent, name, TOTAL);
    }
    // The agents that preferred a failed over to b; those on b never moved.
    for (i, (agent, name)) in agents.iter().zip(names).enumerate() {
        let failovers = agent.log_count("failed over to another aggregator");
        if i % 2 == 0 {
            assert!(failovers >= 1, "{name} never failed over: {}", agent.log());
        }
    }
    let (status, ready) = api_b.get("/readyz").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "{ready}");
}

/// The outage test's agent produces for a minute: through both outages.
const OUTAGE_TOTAL: u64 = 30_000;
const OUTAGE_RATE: u32 = 500;

#[test]
fn outages_of_clickhouse_and_of_postgres_lose_nothing_and_ingest_resumes_by_itself() {
    let env = Env::new("cluster-outage");
    let mut backends = Backends::start();
    let aggregator = backends.aggregator(&env, "aggregator", 0);
    let token = viewer_token(&aggregator);
    let api = Api::new(&aggregator, &token);
    let cert = env.issue_agent("outage-1");
    let agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions::synthetic(Synthetic::logs(OUTAGE_TOTAL).rate(OUTAGE_RATE)),
    );
    env.wait_for("the first events stored", || {
        let report = api.seq_report("outage-1", OUTAGE_TOTAL)?;
        (report.distinct >= 1_000)
            .then_some(())
            .ok_or_else(|| report.to_string())
    });

    // ClickHouse goes away: batches are refused, not acknowledged, and stay in the spool.
    backends.clickhouse.stop();
    env.wait_for("/readyz to name the event store", || {
        let (status, body) = api.get("/readyz")?;
        let message = body.to_string();
        (status == 503 && message.contains("event store (clickhouse)"))
            .then_some(())
            .ok_or(format!("{status} {message}"))
    });
    let held = env.wait_for("the agent to hold batches the store refused", || {
        let spool = agent.spool()?;
        if spool.batches > 0 {
            Ok(spool)
        } else {
            Err(format!("{spool:?}"))
        }
    });
    assert!(
        held.produced < OUTAGE_TOTAL,
        "the source finished during the outage: {held:?}"
    );
    backends.clickhouse.restart();
    env.wait_for("/readyz to answer again", || {
        let (status, body) = api.get("/readyz")?;
        (status == 200)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    });

    // PostgreSQL goes away: the registry cannot be written, and the API's tokens cannot be
    // read; events still reach ClickHouse.
    backends.postgres.stop();
    env.wait_for("/readyz to name the state store", || {
        let response =
            reqwest::blocking::get(format!("{}/readyz", api.base)).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().map_err(|e| e.to_string())?;
        (status == 503 && text.contains("state store (postgres)"))
            .then_some(())
            .ok_or(format!("{status} {text}"))
    });
    backends.postgres.restart();
    wait_exactly_once(&env, &api, &agent, "outage-1", OUTAGE_TOTAL);
    // The batches of the ClickHouse outage were refused, counted against the backend, and
    // stored when they came again; the aggregator never stopped.
    let metrics = reqwest::blocking::get(format!("{}/metrics", api.base))
        .and_then(reqwest::blocking::Response::text)
        .unwrap_or_else(|e| panic!("/metrics: {e}"));
    let failed: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("outpost_store_failed_transactions_total{backend=\"clickhouse\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no failed-transaction count for clickhouse in {metrics}"));
    assert!(failed >= 1.0, "{metrics}");
    assert!(aggregator.is_running(), "{}", aggregator.log());
    assert_eq!(agent.starts(), 1);
}

/// A rule that holds from an agent's first memory point, and fires after holding 40 s: long
/// enough to be pending when its aggregator dies.
const PENDING_RULE: &str = r#"
[[rule]]
name = "memory-in-use"
kind = "threshold"
severity = "info"
metric = "system.memory.usage"
match = { state = "used" }
op = ">"
value = 0
for = "40s"
"#;

/// `/metrics` of `aggregator`, as text.
fn metrics(aggregator: &Aggregator) -> Result<String, String> {
    reqwest::blocking::get(format!("{}/metrics", aggregator.api_url()))
        .and_then(reqwest::blocking::Response::text)
        .map_err(|e| format!("/metrics: {e}"))
}

/// Whether `aggregator` says it runs alerting.
fn leads(aggregator: &Aggregator) -> Result<bool, String> {
    let text = metrics(aggregator)?;
    Ok(text.lines().any(|l| l == "outpost_alerting_leader 1"))
}

/// The memory alert as the API lists it (from the shared state store), if there is one.
fn memory_alert(api: &Api) -> Result<Option<Value>, String> {
    let (status, page) = api.get("/api/v1/alerts")?;
    if status != 200 {
        return Err(format!("/api/v1/alerts: {status} {page}"));
    }
    Ok(page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["rule"] == "memory-in-use")
        .cloned())
}

#[test]
fn a_threshold_alert_pending_on_a_killed_aggregator_fires_once_from_the_other() {
    let env = Env::new("cluster-alerting");
    let backends = Backends::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the webhook receiver");
    let receiver = crate::alerting::Receiver::start(&runtime);
    let rules_dir = env.path().join("cluster-rules.d");
    std::fs::create_dir_all(&rules_dir).expect("the rules directory");
    std::fs::write(rules_dir.join("memory.toml"), PENDING_RULE).expect("the rule file");
    let alerting = format!(
        "[alerting]\nrules_dir = {rules}\nlease_ttl = \"6s\"\nrestore_grace = \"60s\"\n\
         route = {{ receiver = \"hook\", group_by = [\"alertname\"], group_wait = \"0s\", \
         group_interval = \"1s\", repeat_interval = \"1h\" }}\n\
         receivers = [{{ name = \"hook\", webhook = {{ url = \"http://{addr}/hook\", timeout = \"5s\" }} }}]\n",
        rules = outpost_tests::toml_string(&rules_dir),
        addr = receiver.addr,
    );
    let mut a = backends.aggregator_alerting(&env, "aggregator-a", 1, &alerting);
    env.wait_for("aggregator a to run alerting", || {
        leads(&a)?.then_some(()).ok_or_else(|| "not yet".to_owned())
    });
    let b = backends.aggregator_alerting(&env, "aggregator-b", 2, &alerting);
    let token = viewer_token(&b);
    let api_b = Api::new(&b, &token);
    assert!(
        !leads(&b).unwrap_or_else(|e| panic!("{e}")),
        "one holder at a time"
    );

    let cert = env.issue_agent("web-1");
    let _agent = env.start_agent_with_all(
        &cert,
        &[&a, &b],
        AgentOptions {
            host_metrics_every_secs: Some(1),
            ..AgentOptions::default()
        },
    );
    // Pending on a, as b reads it from the shared state store.
    let pending = env.wait_for(
        "the memory alert pending on aggregator a",
        || match memory_alert(&api_b)? {
            Some(alert) if alert["state"] == "pending" => Ok(alert),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(pending["labels"]["host"], "web-1");
    let since_ns = pending["since_ns"].as_i64().expect("since_ns");
    assert_eq!(
        crate::alerting::count(&receiver.delivered(), "memory-in-use", "firing"),
        0,
        "40 s have not passed"
    );
    a.kill9();

    // b takes the lease over, restores the pending alert with the time it began, follows the
    // agent (now on b) and fires it once.
    env.wait_for("aggregator b to take alerting over", || {
        leads(&b)?.then_some(()).ok_or_else(|| "not yet".to_owned())
    });
    let fired = env.wait_for(
        "the memory alert to fire from aggregator b",
        || match memory_alert(&api_b)? {
            Some(alert) if alert["state"] == "firing" => Ok(alert),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(
        fired["since_ns"].as_i64(),
        Some(since_ns),
        "the alert kept the time it became pending on a: {fired}"
    );
    // Its one notification is sent, and none waits: nothing more can come of it.
    env.wait_for("the firing notification to be sent", || {
        let (status, page) = api_b.get("/api/v1/notifications")?;
        if status != 200 {
            return Err(format!("/api/v1/notifications: {status} {page}"));
        }
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let sent = items.iter().filter(|n| n["state"] == "sent").count();
        let waiting = items.iter().filter(|n| n["state"] == "pending").count();
        if sent >= 1 && waiting == 0 {
            Ok(())
        } else {
            Err(format!("{page}"))
        }
    });
    let delivered = receiver.delivered();
    assert_eq!(
        crate::alerting::count(&delivered, "memory-in-use", "firing"),
        1,
        "fired exactly once: {delivered:?}"
    );
    let text = metrics(&b).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.lines()
            .any(|l| l == "outpost_alerting_lease_terms_total 1"),
        "b took the lease once:\n{text}"
    );
}
