//! Alerting end to end: a real agent's host metrics trip a threshold rule and the SSH failures it
//! tails from a log file trip a brute-force rule; a webhook receiver in the test gets
//! Alertmanager's webhook JSON (version 4) for firing and resolved; an inhibited alert is never
//! notified; and an aggregator killed with SIGKILL while a notification waits for its receiver
//! delivers it exactly once after the restart, without notifying again what it had notified.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use outpost_tests::{AgentOptions, AggregatorOptions, Env, toml_string};
use serde_json::Value;

/// One POST the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Received {
    body: Value,
    team_header: Option<String>,
    answered: u16,
}

/// A webhook receiver on loopback: records every request and answers with `status`.
#[derive(Clone)]
pub(crate) struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    pub(crate) addr: SocketAddr,
}

impl Receiver {
    pub(crate) fn start(runtime: &tokio::runtime::Runtime) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a step of the test");
        let addr = listener.local_addr().expect("a step of the test");
        let state = (got.clone(), status.clone());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(state);
        runtime.spawn(async move { axum::serve(listener, app).await });
        Receiver { got, status, addr }
    }

    pub(crate) fn delivered(&self) -> Vec<Value> {
        self.got
            .lock()
            .expect("a step of the test")
            .iter()
            .filter(|r| r.answered == 200)
            .map(|r| r.body.clone())
            .collect()
    }

    fn attempts(&self) -> usize {
        self.got.lock().expect("the receiver's record").len()
    }
}

type Shared = (Arc<Mutex<Vec<Received>>>, Arc<AtomicU16>);

async fn record(
    State((got, status)): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let answered = status.load(Ordering::SeqCst);
    got.lock().expect("the receiver's record").push(Received {
        body,
        team_header: headers
            .get("x-team")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        answered,
    });
    StatusCode::from_u16(answered).expect("a step of the test")
}

/// `(alertname, status)` of each alert of each delivered notification.
fn alerts_of(delivered: &[Value]) -> Vec<(String, String)> {
    delivered
        .iter()
        .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                a["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

pub(crate) fn count(delivered: &[Value], alertname: &str, status: &str) -> usize {
    alerts_of(delivered)
        .iter()
        .filter(|(n, s)| n == alertname && s == status)
        .count()
}

const RULES: &str = r#"
[[rule]]
name = "memory-in-use"
kind = "threshold"
severity = "info"
metric = "system.memory.usage"
match = { state = "used" }
op = ">"
value = 0
annotations = { summary = "{{ host }} uses {{ value }} bytes" }

[[rule]]
name = "ssh-brute-force"
kind = "frequency"
severity = "high"
source = "SOURCE"
pattern = 'Failed password for (invalid user )?\S+ from (?P<src_ip>[0-9.]+) port'
count = 8
within = "120s"
group_by = ["src_ip"]
keep_firing_for = "2s"
annotations = { summary = "SSH brute force from {{ labels.src_ip }} on {{ host }}" }

[[rule]]
name = "muted-marker"
kind = "log"
severity = "low"
source = "SOURCE"
pattern = 'outpost-muted-marker'
"#;

fn failure(n: u32) -> String {
    format!(
        "Dec  1 10:00:{n:02} web-1 sshd[4242]: Failed password for invalid user admin from 203.0.113.7 port {} ssh2\n",
        52000 + n
    )
}

#[test]
fn rules_notify_firing_and_resolved_inhibit_and_survive_a_kill_with_a_notification_pending() {
    let env = Env::new("alerting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a step of the test");
    let receiver = Receiver::start(&runtime);
    let log = env.path().join("auth.log");
    std::fs::write(&log, "").expect("a step of the test");
    let rules_dir = env.path().join("rules.d");
    std::fs::create_dir_all(&rules_dir).expect("a step of the test");
    let source = log.display().to_string();
    std::fs::write(
        rules_dir.join("test.toml"),
        RULES.replace("SOURCE", &source),
    )
    .expect("a step of the test");
    let extra = format!(
        "[alerting]\nexternal_url = \"http://outpost.example:9440\"\nreload_interval = \"200ms\"\nrestore_grace = \"3s\"\n\
         route = {{ receiver = \"hook\", group_by = [\"alertname\"], group_wait = \"0s\", \
         group_interval = \"1s\", repeat_interval = \"1h\" }}\n\
         receivers = [{{ name = \"hook\", webhook = {{ url = \"http://{addr}/hook\", headers = {{ X-Team = \"ops\" }}, timeout = \"5s\" }} }}]\n\
         inhibit = [{{ source = [\"alertname=memory-in-use\"], target = [\"alertname=muted-marker\"], equal = [\"host\"] }}]\n",
        addr = receiver.addr
    );
    let mut aggregator = env.start_aggregator_with(AggregatorOptions {
        extra,
        ..AggregatorOptions::default()
    });
    let cert = env.issue_agent("web-1");
    let _agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions {
            host_metrics_every_secs: Some(1),
            extra_toml: format!(
                "[[logs.files]]\ninclude = [{}]\nread_from = \"beginning\"\n",
                toml_string(&log)
            ),
            ..AgentOptions::default()
        },
    );

    // The threshold rule fires on the agent's first memory point.
    env.wait_until("the threshold alert to be notified", || {
        count(&receiver.delivered(), "memory-in-use", "firing") >= 1
    });
    let first = receiver.delivered()[0].clone();
    assert_eq!(first["version"], "4");
    assert_eq!(first["status"], "firing");
    assert_eq!(first["receiver"], "hook");
    assert_eq!(first["groupLabels"]["alertname"], "memory-in-use");
    assert_eq!(first["externalURL"], "http://outpost.example:9440");
    let alert = &first["alerts"][0];
    assert_eq!(alert["labels"]["host"], "web-1");
    assert_eq!(alert["labels"]["severity"], "info");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("web-1 uses ")),
        "{alert}"
    );
    assert!(
        alert["generatorURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://outpost.example:9440/")),
        "{alert}"
    );
    assert_eq!(
        receiver.got.lock().expect("the receiver's record")[0]
            .team_header
            .as_deref(),
        Some("ops")
    );

    // Seven failures do not fire the brute-force rule; the eighth does, and two seconds with no
    // more resolve it. The inhibited marker fires too, and is never notified.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("a step of the test");
    for n in 0..7 {
        file.write_all(failure(n).as_bytes())
            .expect("a step of the test");
    }
    file.write_all(b"Dec  1 10:00:30 web-1 app: outpost-muted-marker\n")
        .expect("a step of the test");
    file.flush().expect("a step of the test");
    let store = aggregator.store();
    env.wait_until("the agent's log lines to be stored", || {
        store.logs("web-1", &source).is_ok_and(|l| l.len() == 8)
    });
    file.write_all(failure(7).as_bytes())
        .expect("a step of the test");
    file.flush().expect("a step of the test");
    env.wait_until(
        "the brute-force alert to be notified firing and resolved",
        || {
            let d = receiver.delivered();
            count(&d, "ssh-brute-force", "firing") >= 1
                && count(&d, "ssh-brute-force", "resolved") >= 1
        },
    );
    let delivered = receiver.delivered();
    let firing = delivered
        .iter()
        .find(|n| n["groupLabels"]["alertname"] == "ssh-brute-force" && n["status"] == "firing")
        .expect("a step of the test");
    assert_eq!(firing["alerts"][0]["labels"]["src_ip"], "203.0.113.7");
    assert_eq!(
        firing["alerts"][0]["annotations"]["summary"],
        "SSH brute force from 203.0.113.7 on web-1"
    );
    let resolved = delivered
        .iter()
        .find(|n| n["groupLabels"]["alertname"] == "ssh-brute-force" && n["status"] == "resolved")
        .expect("a step of the test");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(count(&delivered, "muted-marker", "firing"), 0);
    assert_eq!(count(&delivered, "ssh-brute-force", "firing"), 1);

    // The receiver fails; a new burst fires the brute-force rule again, and its notification
    // waits in the outbox, retried. The aggregator is killed meanwhile.
    receiver.status.store(503, Ordering::SeqCst);
    let attempts_before = receiver.attempts();
    for n in 10..18 {
        file.write_all(failure(n).as_bytes())
            .expect("a step of the test");
    }
    file.flush().expect("a step of the test");
    env.wait_until("a notification to be refused by the receiver", || {
        receiver.got.lock().expect("the receiver's record")[attempts_before..]
            .iter()
            .any(|r| r.answered == 503 && r.body["groupLabels"]["alertname"] == "ssh-brute-force")
    });
    // /metrics counts the refused attempt and the firing alerts.
    let metrics_url = format!("{}/metrics", aggregator.api_url());
    env.wait_until("/metrics to count the retried notification", || {
        let text = reqwest::blocking::get(&metrics_url)
            .and_then(reqwest::blocking::Response::text)
            .unwrap_or_default();
        sample(
            &text,
            "outpost_notification_attempts_total{outcome=\"retry\"}",
        ) >= 1.0
            && sample(
                &text,
                "outpost_notification_attempts_total{outcome=\"sent\"}",
            ) >= 3.0
            && sample(&text, "outpost_alerts{state=\"firing\"}") >= 1.0
            && sample(&text, "outpost_rules_loaded") >= 3.0
            && sample(&text, "outpost_rule_events_evaluated_total") >= 8.0
    });
    aggregator.kill9();
    receiver.status.store(200, Ordering::SeqCst);
    aggregator.restart();
    env.wait_until(
        "the pending notification to be delivered after the restart",
        || count(&receiver.delivered(), "ssh-brute-force", "firing") >= 2,
    );
    env.wait_until("the second burst's alert to resolve", || {
        count(&receiver.delivered(), "ssh-brute-force", "resolved") >= 2
    });
    // Give the restarted aggregator every chance to repeat itself: another notification of
    // something else must come after, and the counts must not have grown.
    file.write_all(failure(40).as_bytes())
        .expect("a step of the test");
    file.flush().expect("a step of the test");
    env.wait_until("the last line to be stored", || {
        store.logs("web-1", &source).is_ok_and(|l| l.len() == 18)
    });
    let delivered = receiver.delivered();
    let by_alert: BTreeMap<(String, String), usize> =
        alerts_of(&delivered)
            .into_iter()
            .fold(BTreeMap::new(), |mut m, k| {
                *m.entry(k).or_default() += 1;
                m
            });
    assert_eq!(
        by_alert.get(&("ssh-brute-force".into(), "firing".into())),
        Some(&2),
        "{by_alert:?}"
    );
    assert_eq!(
        by_alert.get(&("memory-in-use".into(), "firing".into())),
        Some(&1),
        "the restart notified a firing alert again: {by_alert:?}"
    );
    assert_eq!(count(&delivered, "muted-marker", "firing"), 0);
}

/// The value of the sample `series` (name and labels, as written) in a /metrics text; 0 when it
/// is not there.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `path` if it is an executable file, else the first `name` on PATH.
fn program(name: &str, path: &str) -> std::path::PathBuf {
    let fixed = std::path::PathBuf::from(path);
    if fixed.is_file() {
        return fixed;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run scripts/test, which installs it"))
}

#[test]
fn an_alert_reaches_a_real_smtp_server_and_a_real_alertmanager() {
    let env = Env::new("alerting-receivers");
    // An SMTP server that keeps what it receives in a maildir.
    let smtp_port = free_port();
    let maildir = env.path().join("maildir");
    let _smtp = env.spawn(
        "smtpd",
        &program("python3", "/usr/bin/python3"),
        &[
            "-m".into(),
            "aiosmtpd".into(),
            "-n".into(),
            "-l".into(),
            format!("127.0.0.1:{smtp_port}").into(),
            "-c".into(),
            "aiosmtpd.handlers.Mailbox".into(),
            maildir.clone().into(),
        ],
    );
    // Alertmanager with one receiver that sends nowhere: the test reads its API.
    let am_port = free_port();
    let am_config = env.path().join("alertmanager.yml");
    std::fs::write(
        &am_config,
        "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n",
    )
    .expect("a step of the test");
    let _alertmanager = env.spawn(
        "alertmanager",
        &program(
            "prometheus-alertmanager",
            "/usr/bin/prometheus-alertmanager",
        ),
        &[
            format!("--config.file={}", am_config.display()).into(),
            format!("--storage.path={}", env.path().join("am-data").display()).into(),
            format!("--web.listen-address=127.0.0.1:{am_port}").into(),
            "--cluster.listen-address=".into(),
        ],
    );
    let rules_dir = env.path().join("rules.d");
    std::fs::create_dir_all(&rules_dir).expect("a step of the test");
    let rule = RULES.split("[[rule]]").nth(1).expect("a step of the test");
    std::fs::write(rules_dir.join("memory.toml"), format!("[[rule]]{rule}"))
        .expect("a step of the test");
    // Both receivers get the alert: the first child route continues to the second.
    let extra = format!(
        "[alerting]\nreload_interval = \"200ms\"\n\
         route = {{ receiver = \"am\", group_wait = \"0s\", group_interval = \"1s\", routes = [\
           {{ matchers = [\"alertname=memory-in-use\"], receiver = \"mail\", continue = true }},\
           {{ matchers = [\"alertname=memory-in-use\"], receiver = \"am\" }}] }}\n\
         receivers = [\
           {{ name = \"mail\", email = {{ smtp = \"127.0.0.1:{smtp_port}\", from = \"outpost@example.com\", to = [\"ops@example.com\"], starttls = \"none\" }} }},\
           {{ name = \"am\", alertmanager = {{ url = \"http://127.0.0.1:{am_port}\" }} }}]\n"
    );
    let aggregator = env.start_aggregator_with(AggregatorOptions {
        extra,
        ..AggregatorOptions::default()
    });
    let cert = env.issue_agent("web-1");
    let _agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions {
            host_metrics_every_secs: Some(1),
            ..AgentOptions::default()
        },
    );
    let mail = env.wait_for("the alert's e-mail", || {
        let new = maildir.join("new");
        let entry = std::fs::read_dir(&new)
            .map_err(|e| format!("{}: {e}", new.display()))?
            .flatten()
            .next()
            .ok_or("no message yet")?;
        std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())
    });
    let mail = mail.replace("\r\n", "\n");
    assert!(
        mail.lines()
            .any(|l| l.starts_with("Subject: [FIRING:1] memory-in-use")),
        "{mail}"
    );
    assert!(mail.contains("web-1 uses "), "{mail}");
    let http = reqwest::blocking::Client::new();
    let alerts: Value = env.wait_for("the alert in Alertmanager", || {
        let alerts: Value = http
            .get(format!("http://127.0.0.1:{am_port}/api/v2/alerts"))
            .send()
            .and_then(|r| r.json())
            .map_err(|e| e.to_string())?;
        let found = alerts.as_array().is_some_and(|a| {
            a.iter().any(|alert| {
                alert["labels"]["alertname"] == "memory-in-use"
                    && alert["labels"]["host"] == "web-1"
            })
        });
        if found {
            Ok(alerts)
        } else {
            Err(format!("not yet: {alerts}"))
        }
    });
    let alert = alerts
        .as_array()
        .expect("a step of the test")
        .iter()
        .find(|a| a["labels"]["alertname"] == "memory-in-use")
        .expect("a step of the test");
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    assert_eq!(alert["labels"]["severity"], "info");
}
