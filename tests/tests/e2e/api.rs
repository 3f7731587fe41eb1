//! The HTTP API of a running aggregator, with tokens made by its CLI: the fleet as the API
//! shows it, roles, a token created through the API, revocation from the CLI taking effect at
//! once, and the operations endpoints.

use outpost_tests::{AgentOptions, Env, toml_string};
use serde_json::{Value, json};

const AGENT: &str = "api-web-1";

struct Client {
    base: String,
    http: reqwest::blocking::Client,
}

impl Client {
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let response = req.send().unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: {status} not JSON ({e}): {text}"));
        (status, value)
    }

    fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
    }
}

/// Makes a token with the CLI; answers its text.
fn token(aggregator: &outpost_tests::Aggregator, name: &str, role: &str) -> String {
    let out = aggregator.cli_ok(&["token", "create", "--name", name, "--role", role, "--json"]);
    let made: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(made["role"], role, "{made}");
    made["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{made}"))
        .to_owned()
}

#[test]
fn the_api_serves_the_fleet_to_tokens_by_role_and_revocation_is_immediate() {
    let env = Env::new("api");
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let labelled = AgentOptions {
        extra_toml: "[labels]\nenv = \"prod\"\nrole = \"web\"\n".to_owned(),
        ..AgentOptions::default()
    };
    let _agent = env.start_agent(&cert, &aggregator, labelled);
    let viewer = token(&aggregator, "dash", "viewer");
    let admin = token(&aggregator, "root", "admin");
    let api = Client {
        base: aggregator.api_url(),
        http: reqwest::blocking::Client::new(),
    };

    let (status, health) = api.call(reqwest::Method::GET, "/healthz", None, None);
    assert_eq!((status, health["status"].clone()), (200, json!("ok")));
    let ready = env.wait_for("the aggregator to be ready", || {
        match api.call(reqwest::Method::GET, "/readyz", None, None) {
            (200, body) => Ok(body),
            (status, body) => Err(format!("{status} {body}")),
        }
    });
    assert_eq!(ready["status"], "ready");

    // The agent, online, as the API lists it and details it.
    let listed = env.wait_for("the agent to be listed online", || {
        let (status, page) = api.get("/api/v1/agents?status=online", &viewer);
        let items = page["items"].as_array().cloned().unwrap_or_default();
        match items.iter().find(|e| e["agent_id"] == AGENT) {
            Some(e) if status == 200 => Ok(e.clone()),
            _ => Err(format!("{status} {page}")),
        }
    });
    assert_eq!(listed["version"], outpost_common::VERSION, "{listed}");
    // The labels of the agent's configuration, and the list filtered by one.
    assert_eq!(
        listed["labels"],
        json!({ "env": "prod", "role": "web" }),
        "{listed}"
    );
    let (_, web) = api.get("/api/v1/agents?label=role=web", &viewer);
    assert_eq!(web["items"][0]["agent_id"], AGENT, "{web}");
    let (_, db) = api.get("/api/v1/agents?label=role=db", &viewer);
    assert_eq!(db["items"], json!([]), "{db}");
    let (status, one) = api.get(&format!("/api/v1/agents/{AGENT}"), &viewer);
    assert_eq!(status, 200, "{one}");
    assert!(one["host"]["hostname"].is_string(), "{one}");
    assert!(
        one["spool"]["cap_bytes"].as_u64().is_some_and(|c| c > 0),
        "{one}"
    );
    let (_, summary) = api.get("/api/v1/agents/summary", &viewer);
    assert_eq!(summary["by_status"]["online"], 1, "{summary}");

    // The CLI over the API, as from another machine.
    let base = api.base.clone();
    let table = env.aggregator_cli_ok(&["fleet", "--url", &base, "--token", &viewer]);
    assert!(table.starts_with("AGENT"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(AGENT) && l.contains("online")),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&env.aggregator_cli_ok(&[
        "fleet", "--url", &base, "--token", &viewer, "--status", "online", "--label", "env=prod",
        "--json",
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed[0]["agent_id"], AGENT, "{listed}");
    let detail = env.aggregator_cli_ok(&["agent", AGENT, "--url", &base, "--token", &viewer]);
    assert!(
        detail
            .lines()
            .any(|l| l.starts_with("status") && l.ends_with("online")),
        "{detail}"
    );
    let missing = env.aggregator_cli(&["agent", "nobody", "--url", &base, "--token", &viewer]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no agent `nobody`"),
        "{missing:?}"
    );

    // Without a token, with the viewer's where an admin's is needed.
    let (status, body) = api.call(reqwest::Method::GET, "/api/v1/agents", None, None);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    let (status, body) = api.get("/api/v1/tokens", &viewer);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );

    // A token made through the API works at once; revoked from the CLI, it stops at once.
    let (status, made) = api.call(
        reqwest::Method::POST,
        "/api/v1/tokens",
        Some(&admin),
        Some(&json!({ "name": "bot", "role": "viewer", "expires_in": "1h" })),
    );
    assert_eq!(status, 201, "{made}");
    let bot = made["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{made}"))
        .to_owned();
    assert_eq!(api.get("/api/v1/agents/summary", &bot).0, 200);
    let revoked = aggregator.cli_ok(&["token", "revoke", "bot"]);
    assert!(revoked.contains("revoked token `bot`"), "{revoked}");
    let (status, body) = api.get("/api/v1/agents/summary", &bot);
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{body}"
    );
    let listed: Value =
        serde_json::from_str(aggregator.cli_ok(&["token", "list", "--json"]).trim())
            .unwrap_or_else(|e| panic!("{e}"));
    let bot_row = listed
        .as_array()
        .and_then(|all| all.iter().find(|t| t["name"] == "bot"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(bot_row["active"], false, "{bot_row}");
    assert!(
        !listed.to_string().contains(&bot[bot.len() - 64..]),
        "a secret is listed"
    );

    // The audit log has the refusals and the changes, with who made them.
    let (_, audit) = api.get("/api/v1/audit", &admin);
    let rows: Vec<(String, String, u64)> = audit["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .map(|e| {
            (
                e["token_name"].as_str().unwrap_or("-").to_owned(),
                e["outcome"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    for want in [
        ("-".to_owned(), "unauthorized".to_owned(), 401),
        ("dash".to_owned(), "forbidden".to_owned(), 403),
        ("root".to_owned(), "ok".to_owned(), 201),
    ] {
        assert!(rows.contains(&want), "{want:?} not in {rows:?}");
    }

    let (status, doc) = api.call(reqwest::Method::GET, "/api/v1/openapi.json", None, None);
    assert_eq!((status, doc["openapi"].clone()), (200, json!("3.1.0")));
}

/// A free TCP port on loopback, chosen by the OS (the listener is closed at once; Prometheus
/// takes the port a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() {
    let env = Env::new("api-metrics");
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let _agent = env.start_agent(&cert, &aggregator, AgentOptions::default());
    let base = aggregator.api_url();
    let http = reqwest::blocking::Client::new();
    // Some traffic first, so every family has samples.
    let viewer = token(&aggregator, "dash", "viewer");
    let metrics = env.wait_for("the agent's batches to be counted", || {
        let _ = http
            .get(format!("{base}/api/v1/agents"))
            .bearer_auth(&viewer)
            .send();
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .and_then(reqwest::blocking::Response::text)
            .map_err(|e| e.to_string())?;
        if text.contains("outpost_agents_connected 1")
            && text.contains("outpost_batches_stored_total")
            && text.contains("outpost_ingest_batch_latency_seconds_bucket")
            && text.contains("outpost_store_commit_duration_seconds_count")
            && text.contains("outpost_retention_passes_total")
            && text.contains("outpost_retention_pass_duration_seconds_count")
        {
            Ok(text)
        } else {
            Err(text)
        }
    });

    let file = env.path().join("metrics.txt");
    std::fs::write(&file, &metrics).unwrap_or_else(|e| panic!("{e}"));
    let checked = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap_or_else(|e| panic!("{e}")))
        .output()
        .unwrap_or_else(|e| panic!("promtool (Debian package prometheus): {e}"));
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus scrapes it every second; `up` turns 1 and a figure is queryable.
    let target = base.trim_start_matches("http://");
    let config = env.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: outpost\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let data = env.path().join("prometheus-data");
    let args: Vec<std::ffi::OsString> = vec![
        format!("--config.file={}", config.display()).into(),
        format!("--storage.tsdb.path={}", data.display()).into(),
        format!("--web.listen-address=127.0.0.1:{port}").into(),
    ];
    let _prometheus = env.spawn(
        "prometheus",
        std::path::Path::new("/usr/bin/prometheus"),
        &args,
    );
    let query = format!("http://127.0.0.1:{port}/api/v1/query");
    env.wait_for("Prometheus to scrape the aggregator", || {
        let answer: Value = http
            .get(&query)
            .query(&[(
                "query",
                "up{job=\"outpost\"} * on() group_left outpost_agents_connected",
            )])
            .send()
            .and_then(reqwest::blocking::Response::json)
            .map_err(|e| e.to_string())?;
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned);
        if value.as_deref() == Some("1") {
            Ok(())
        } else {
            Err(answer.to_string())
        }
    });
}

#[test]
fn the_api_serves_https_with_the_configured_certificate() {
    let env = Env::new("api-https");
    let pki = env.pki_dir();
    let aggregator = env.start_aggregator_with(outpost_tests::AggregatorOptions {
        extra: format!(
            "[api]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            pki.join("server.pem").display(),
            pki.join("server.key").display()
        ),
        ..outpost_tests::AggregatorOptions::default()
    });
    let viewer = token(&aggregator, "dash", "viewer");
    let https = aggregator.api_url().replacen("http://", "https://", 1);
    let ca = pki.join("ca.pem").display().to_string();
    // The CLI trusts the Outpost CA it is given, and the fleet (empty) comes back over TLS.
    let table = env.aggregator_cli_ok(&["fleet", "--url", &https, "--token", &viewer, "--ca", &ca]);
    assert!(table.starts_with("AGENT"), "{table}");
    // Without the CA the certificate is not trusted; plain HTTP is not answered as HTTP.
    let untrusted = env.aggregator_cli(&["fleet", "--url", &https, "--token", &viewer]);
    assert!(!untrusted.status.success(), "{untrusted:?}");
    let plain = https.replacen("https://", "http://", 1);
    let answer = reqwest::blocking::Client::new()
        .get(format!("{plain}/healthz"))
        .send()
        .map(|r| r.status().as_u16());
    assert!(
        !matches!(answer, Ok(200)),
        "plain HTTP was answered: {answer:?}"
    );
}

/// schemathesis, installed by `scripts/test` into `target/schemathesis` (or where
/// `OUTPOST_SCHEMATHESIS` points).
fn schemathesis() -> std::path::PathBuf {
    std::env::var_os("OUTPOST_SCHEMATHESIS").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis/bin/st"),
        std::path::PathBuf::from,
    )
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let st = schemathesis();
    assert!(
        st.exists(),
        "{} is missing: scripts/test installs schemathesis there (python3 -m venv target/schemathesis; \
         target/schemathesis/bin/pip install 'schemathesis>=4,<5')",
        st.display()
    );
    let env = Env::new("api-schemathesis");
    let aggregator = env.start_aggregator_with(outpost_tests::AggregatorOptions {
        // Generous limits, so the run tests the handlers rather than the rate limiter.
        extra: "[api]\nlisten = \"127.0.0.1:0\"\nrequests_per_sec_per_token = 100000\n\
                requests_per_sec_per_address = 100000\n"
            .to_owned(),
        ..outpost_tests::AggregatorOptions::default()
    });
    let cert = env.issue_agent(AGENT);
    let _agent = env.start_agent(&cert, &aggregator, AgentOptions::default());
    let admin = token(&aggregator, "schemathesis", "admin");
    let schema = format!("{}/api/v1/openapi.json", aggregator.api_url());
    // Whether a regular expression compiles is beyond what JSON Schema can state, so a query
    // that fits the schema may still be refused 400 for naming a broken one: for the operations
    // that take regular expressions, 400 counts as an expected answer to valid data. So it does
    // for a new silence, whose end must also come after its start and after now, which JSON
    // Schema cannot compare, and for a new enrollment token, whose labels' keys and endpoints
    // (`host:port`) have a syntax a map's keys and strings cannot be given there. Every other check (server errors, response schemas, refusal of
    // invalid data) stays on.
    let config = "\
[[operations]]
include-path = \"/api/v1/metrics/query\"
checks.positive_data_acceptance.expected-statuses = [200, 400, 401, 403, 404, 429]

[[operations]]
include-path = \"/api/v1/logs\"
checks.positive_data_acceptance.expected-statuses = [200, 400, 401, 403, 404, 429]

[[operations]]
include-path = \"/api/v1/alerts\"
checks.positive_data_acceptance.expected-statuses = [200, 400, 401, 403, 404, 429]

[[operations]]
include-name = \"POST /api/v1/silences\"
checks.positive_data_acceptance.expected-statuses = [201, 400, 401, 403, 404, 429]

[[operations]]
include-name = \"POST /api/v1/enrollment-tokens\"
checks.positive_data_acceptance.expected-statuses = [201, 400, 401, 403, 404, 429]
";
    std::fs::write(env.path().join("schemathesis.toml"), config)
        .unwrap_or_else(|e| panic!("writing schemathesis.toml: {e}"));
    let out = std::process::Command::new(&st)
        .args([
            "run",
            &schema,
            "--checks",
            "all",
            "--max-examples",
            "50",
            "--seed",
            "1",
        ])
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its reports and cache go in the test's directory.
        .current_dir(env.path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", st.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    let selected = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Selected: "))
        .and_then(|n| n.split_once('/'))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    assert_eq!(
        selected.0, selected.1,
        "not every operation was tested:\n{text}"
    );
}

/// The CLI's `metrics`, `logs` and `fim list --api` read what a real agent sent through the API,
/// as from another machine with a viewer token.
#[test]
fn the_cli_reads_metrics_logs_and_file_changes_over_the_api() {
    const HOST: &str = "api-cli-host";
    let env = Env::new("api-cli");
    let aggregator = env.start_aggregator();
    let root = env.path().join("watched");
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{e}"));
    let cert = env.issue_agent(HOST);
    let _agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions {
            host_metrics_every_secs: Some(1),
            fim_toml: Some(format!(
                "hash_mib_per_sec = 0\n\n[[fim.paths]]\npath = {}\nmode = \"realtime\"\n",
                toml_string(&root)
            )),
            ..AgentOptions::default()
        },
    );
    let store = aggregator.store();
    env.wait_for("the file-integrity baseline", || {
        let logs = store.logs(HOST, "fim")?;
        logs.iter()
            .any(|l| l.body.starts_with("baseline complete: "))
            .then_some(())
            .ok_or(format!("{} fim log records", logs.len()))
    });
    std::fs::write(root.join("new.conf"), "x = 1\n").unwrap_or_else(|e| panic!("{e}"));
    env.wait_for("the new file's change and three CPU samples", || {
        let created = store
            .fim_events(HOST)?
            .iter()
            .any(|e| e.path.ends_with("new.conf"));
        let samples = store.metric_count("system.cpu.utilization")?;
        (created && samples >= 3 * 8)
            .then_some(())
            .ok_or(format!("change stored: {created}, {samples} CPU points"))
    });
    let viewer = token(&aggregator, "cli-viewer", "viewer");
    let base = aggregator.api_url();
    let remote = ["--url", base.as_str(), "--token", viewer.as_str()];
    let cli = |args: &[&str]| env.aggregator_cli_ok(&[args, &remote[..]].concat());

    // The host's idle CPU, one column, a row per second (once three samples are in).
    let table = env.wait_for("three rows of idle CPU from the CLI", || {
        let table = cli(&[
            "metrics",
            HOST,
            "system.cpu.utilization",
            "--match",
            "cpu=",
            "--match",
            "state=idle",
            "--since",
            "10m",
            "--step",
            "1s",
        ]);
        if table.lines().count() > 3 {
            Ok(table)
        } else {
            Err(table)
        }
    });
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("TIME") && header.contains("state=idle"),
        "{table}"
    );
    let values: Vec<f64> = lines
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert!(values.len() >= 3, "{table}");
    assert!(values.iter().all(|v| (0.0..=1.0).contains(v)), "{table}");
    let answer: Value = serde_json::from_str(&cli(&[
        "metrics",
        HOST,
        "system.cpu.utilization",
        "--match",
        "cpu=",
        "--json",
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        answer["selected"].as_u64().is_some_and(|n| n >= 2),
        "{answer}"
    );
    // A rate of a gauge is refused, naming why.
    let refused = env.aggregator_cli(
        &[
            &[
                "metrics",
                HOST,
                "system.cpu.utilization",
                "--function",
                "rate",
            ][..],
            &remote[..],
        ]
        .concat(),
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("rate and increase are for counters"),
        "{refused:?}"
    );

    // The agent's own log record of its baseline.
    let logs = cli(&[
        "logs",
        "--agent",
        HOST,
        "--source",
        "fim",
        "--contains",
        "baseline complete",
    ]);
    assert!(logs.starts_with("TIME"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains(HOST) && l.contains("baseline complete")),
        "{logs}"
    );

    // The change, as a table and as JSON.
    let changes = cli(&["fim", "list", "--agent", HOST]);
    assert!(
        changes
            .lines()
            .any(|l| l.contains("created") && l.contains("new.conf")),
        "{changes}"
    );
    let listed: Value = serde_json::from_str(&cli(&[
        "fim", "list", "--agent", HOST, "--change", "created", "--json",
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        listed.as_array().is_some_and(|a| a
            .iter()
            .any(|c| c["path"].as_str().is_some_and(|p| p.ends_with("new.conf")))),
        "{listed}"
    );
}

/// The alerting commands over the API, as an on-call engineer uses them: a rule firing on a real
/// agent's host metrics is listed, acknowledged and silenced; a reload with a broken rule file
/// is refused with its place and the rules keep running.
#[test]
fn the_cli_lists_acknowledges_and_silences_alerts_and_reloads_rules() {
    const HOST: &str = "api-alerts-host";
    let env = Env::new("api-alerts");
    let rules = env.path().join("rules.d");
    std::fs::create_dir_all(&rules).unwrap_or_else(|e| panic!("{e}"));
    // Memory in use is never zero: the rule fires on the agent's first sample.
    std::fs::write(
        rules.join("host.toml"),
        "[[rule]]\nname = \"memory-in-use\"\nkind = \"threshold\"\nseverity = \"high\"\n\
         metric = \"system.memory.usage\"\nmatch = { state = \"used\" }\nop = \">\"\nvalue = 0.0\n\n\
         [rule.annotations]\nsummary = \"Memory in use on {{ host }}\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let aggregator = env.start_aggregator_with(outpost_tests::AggregatorOptions {
        extra: format!(
            "[alerting]\nrules_dir = {}\nreload_interval = \"1h\"\n",
            toml_string(&rules)
        ),
        ..outpost_tests::AggregatorOptions::default()
    });
    let cert = env.issue_agent(HOST);
    let _agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions {
            host_metrics_every_secs: Some(1),
            ..AgentOptions::default()
        },
    );
    let viewer = token(&aggregator, "alerts-viewer", "viewer");
    let operator = token(&aggregator, "alerts-oncall", "operator");
    let admin = token(&aggregator, "alerts-admin", "admin");
    let base = aggregator.api_url();
    let as_token = |token: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--url", base.as_str(), "--token", token]);
        env.aggregator_cli(&all)
    };
    let ok = |token: &str, args: &[&str]| {
        let out = as_token(token, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let listed: Value = env.wait_for("the memory alert to fire", || {
        let text = ok(&viewer, &["alerts", "--state", "firing", "--json"]);
        let alerts: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        match alerts.as_array() {
            Some(a) if !a.is_empty() => Ok(alerts),
            _ => Err(text),
        }
    });
    let fingerprint = listed[0]["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("{listed}"))
        .to_owned();
    let table = ok(&viewer, &["alerts"]);
    let mut lines = table.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("SEVERITY") && l.ends_with("SUMMARY")),
        "{table}"
    );
    assert!(
        lines.any(|l| l.starts_with("high")
            && l.contains("memory-in-use")
            && l.contains(HOST)
            && l.ends_with(&format!("Memory in use on {HOST}"))),
        "{table}"
    );

    // A viewer may not acknowledge; the operator does, and the history says so.
    let refused = as_token(
        &viewer,
        &["alerts", "ack", &fingerprint, "--comment", "mine"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("this needs the operator role"),
        "{refused:?}"
    );
    let acked = ok(
        &operator,
        &["alerts", "ack", &fingerprint, "--comment", "looking"],
    );
    assert!(
        acked.starts_with(&format!("acknowledged memory-in-use on {HOST}")),
        "{acked}"
    );
    env.wait_for("the acknowledgement in the history", || {
        let history = ok(&viewer, &["alerts", "--history"]);
        history
            .lines()
            .any(|l| l.contains("acknowledged") && l.ends_with("by alerts-oncall: looking"))
            .then_some(())
            .ok_or(history)
    });

    // A silence for the host: listed, keeping the alert quiet, then expired.
    let added = ok(
        &operator,
        &[
            "silence",
            "add",
            &format!("host={HOST}"),
            "--duration",
            "1h",
            "--comment",
            "memory upgrade",
        ],
    );
    let id = added
        .strip_prefix("silence ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{added}"))
        .to_owned();
    env.wait_for("the silence to apply", || {
        let list = ok(&viewer, &["silence", "list"]);
        let table = ok(&viewer, &["alerts"]);
        (list
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("active"))
            && table.contains("firing, acked, silenced"))
        .then_some(())
        .ok_or(format!("{list}\n{table}"))
    });
    let expired = ok(&operator, &["silence", "expire", &id]);
    assert!(
        expired.starts_with(&format!("silence {id} expired")),
        "{expired}"
    );
    let again = as_token(&operator, &["silence", "expire", &id]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("has already ended"),
        "{again:?}"
    );

    // The rules with their alerts; a broken file fails the reload, naming its place.
    let listed = ok(&viewer, &["rules", "list"]);
    assert!(
        listed.lines().any(
            |l| l.starts_with("memory-in-use") && l.contains("threshold  high      0        1")
        ),
        "{listed}"
    );
    std::fs::write(
        rules.join("broken.toml"),
        "[[rule]]\nname = \"x\"\nkind = \"threshold\"\nseverity = \"loud\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let refused = as_token(&operator, &["rules", "reload"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("this needs the admin role"),
        "{refused:?}"
    );
    let failed = as_token(&admin, &["rules", "reload"]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("broken.toml:4:12: "),
        "{stderr}"
    );
    let listed = ok(&viewer, &["rules", "list"]);
    assert!(
        listed.lines().any(|l| l.starts_with("memory-in-use"))
            && listed.contains("failed; the rules above keep running:")
            && listed.contains("broken.toml:4:12: "),
        "{listed}"
    );
    std::fs::remove_file(rules.join("broken.toml")).unwrap_or_else(|e| panic!("{e}"));
    let reloaded = ok(&admin, &["rules", "reload"]);
    assert!(
        reloaded.starts_with("reloaded the rules from ") && reloaded.ends_with(": 1 running\n"),
        "{reloaded}"
    );
}
