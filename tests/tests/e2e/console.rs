//! The web console in a real browser, against a real aggregator and agent: an operator signs in,
//! finds the host online, its charts drawn from the agent's metrics, a log line the test wrote,
//! acknowledges and silences a firing alert; a viewer sees no such controls and is refused when
//! it sends the forms anyway. After every page: no error in the browser's console and no request
//! to another host. Screenshots of the main pages go to `docs/screenshots/`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use outpost_tests::{AgentOptions, Aggregator, AggregatorOptions, Browser, Env, toml_string};
use serde_json::{Value, json};

const AGENT: &str = "console-web-1";
const RULE: &str = "memory-in-use";

/// Memory in use is never zero: the rule fires on the agent's first sample, and keeps firing.
const RULES: &str = r#"
[[rule]]
name = "memory-in-use"
kind = "threshold"
severity = "high"
metric = "system.memory.usage"
match = { state = "used" }
op = ">"
value = 0
for = "0s"
annotations = { summary = "{{ host }} uses {{ value }} bytes of memory" }
"#;

/// Reloading a page to see new data: once a second is plenty.
const RELOAD: Duration = Duration::from_secs(1);

/// Where the console's screenshots are kept, in the repository.
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
}

/// Makes a token with the CLI; answers its text.
fn token(aggregator: &Aggregator, name: &str, role: &str) -> String {
    let out = aggregator.cli_ok(&["token", "create", "--name", name, "--role", role, "--json"]);
    let made: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    made["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{made}"))
        .to_owned()
}

/// GET on the API with a token; the answer as JSON.
fn api_get(base: &str, path: &str, token: &str) -> Value {
    let response = reqwest::blocking::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status();
    let text = response.text().unwrap_or_default();
    assert!(status.is_success(), "{path}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
}

/// Fails the test unless the only errors the page logged are its own HTTP status (an answer
/// the test asked for, such as a refusal), and it sent nothing to another host.
fn assert_clean_but_status(browser: &Browser, base: &str, status: u16) {
    let problems = browser.problems(base);
    let expected = format!("status of {status}");
    assert!(
        problems.foreign_requests.is_empty()
            && problems
                .errors
                .iter()
                .all(|e| e.message.contains(&expected)),
        "the page {} is not clean (but for its {status}):\n{problems}",
        browser.current_url()
    );
}

/// What every page of a session must be: carrying the session's CSRF token for its forms,
/// with no error in the browser's console and no request to another host.
fn signed_in_page_ok(browser: &Browser, base: &str) {
    let csrf = browser.attr("meta[name=csrf-token]", "content");
    assert!(
        csrf.is_some_and(|c| c.len() >= 16),
        "{}: no CSRF token in the page",
        browser.current_url()
    );
    browser.assert_clean(base);
}

/// Signs in on the login page with `token`; lands on the fleet.
fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/login"));
    browser.wait_for("form#login");
    assert_eq!(browser.count("form#login button[type=submit]"), 1);
    browser.assert_clean(base);
    browser.fill("form#login input[name=token]", token);
    browser.submit("form#login");
    browser.wait_for_path("/fleet");
    signed_in_page_ok(browser, base);
}

/// Signs out with the header's button; lands on the login page.
fn sign_out(browser: &Browser, base: &str) {
    browser.submit("form#logout");
    browser.wait_for_path("/login");
    browser.wait_for("form#login");
    assert_eq!(browser.count("meta[name=csrf-token]"), 0);
    browser.assert_clean(base);
}

/// Builds a form posting to `action` with the session's CSRF token (from the page's meta) and
/// `fields`, and submits it: what a person could do with the browser's tools, so that only the
/// role decides the answer.
fn force_post(browser: &Browser, action: &str, fields: &[(&str, &str)]) {
    let fields: Vec<Value> = fields.iter().map(|(k, v)| json!([k, v])).collect();
    browser.execute_with(
        "const form = document.createElement('form');
         form.method = 'post';
         form.action = arguments[0];
         const add = (name, value) => {
             const input = document.createElement('input');
             input.type = 'hidden';
             input.name = name;
             input.value = value;
             form.appendChild(input);
         };
         add('csrf', document.querySelector('meta[name=csrf-token]').content);
         for (const [name, value] of arguments[1]) { add(name, value); }
         document.body.appendChild(form);
         form.submit();",
        vec![json!(action), Value::Array(fields)],
    );
    browser.wait_for_path(action);
}

/// The `data-points` of the host page's chart of `metric`.
fn points(browser: &Browser, metric: &str) -> usize {
    browser
        .attr(&format!("svg.chart[data-metric={metric}]"), "data-points")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the {metric} chart has no data-points"))
}

#[test]
fn an_operator_and_a_viewer_use_the_console_in_a_real_browser() {
    let env = Env::new("console");
    let log = env.path().join("app.log");
    std::fs::write(&log, "").unwrap_or_else(|e| panic!("{e}"));
    let source = log.display().to_string();
    let rules = env.path().join("rules.d");
    std::fs::create_dir_all(&rules).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(rules.join("console.toml"), RULES).unwrap_or_else(|e| panic!("{e}"));
    let aggregator = env.start_aggregator_with(AggregatorOptions {
        extra: "[alerting]\nreload_interval = \"200ms\"\n".to_owned(),
        ..AggregatorOptions::default()
    });
    let cert = env.issue_agent(AGENT);
    let _agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions {
            host_metrics_every_secs: Some(1),
            extra_toml: format!(
                "[labels]\nenv = \"prod\"\n\n[[logs.files]]\ninclude = [{}]\nread_from = \"beginning\"\n",
                toml_string(&log)
            ),
            ..AgentOptions::default()
        },
    );
    let viewer = token(&aggregator, "console-viewer", "viewer");
    let operator = token(&aggregator, "console-operator", "operator");
    let base = aggregator.api_url();
    let mut browser = Browser::start(env.path());
    {
        let env = env.clone();
        browser.diagnose_with(move || env.diagnosis());
    }
    let shots = screenshots();

    // Signed out, the console sends the browser to the login page; a bad token is refused
    // there, with a message.
    browser.goto(&format!("{base}/"));
    browser.wait_for_path("/login");
    browser.assert_clean(&base);
    browser.fill("form#login input[name=token]", "not-a-token");
    browser.submit("form#login");
    let refused = browser.wait_for("#flash.error").text();
    assert!(!refused.is_empty());
    assert_eq!(browser.current_path(), "/login");
    assert_eq!(browser.status(), 401);
    assert_clean_but_status(&browser, &base, 401);

    // The operator signs in and finds the host online.
    sign_in(&browser, &base, &operator);
    let row = format!("table#hosts tr[data-agent-id=\"{AGENT}\"]");
    browser.wait_every(RELOAD, "the host online on the fleet page", || {
        browser.refresh();
        let status = browser.attr(&format!("{row} td.status"), "data-status");
        let online = browser.try_text("#counts [data-status=online] .count");
        match (status.as_deref(), online.as_deref()) {
            (Some("online"), Some("1")) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    signed_in_page_ok(&browser, &base);
    let timing = browser.timing();
    eprintln!("[console] /fleet: {timing:?}");
    assert_eq!(
        browser
            .attr(&format!("{row} a.host-link"), "href")
            .as_deref(),
        Some(format!("/hosts/{AGENT}").as_str())
    );
    browser.screenshot(&shots.join("fleet.png"));

    // The search form: a word of the host's and its status keep it; another word does not.
    browser.fill("form#fleet-filter input[name=q]", "env=prod");
    browser.select("form#fleet-filter select[name=status]", "online");
    browser.submit("form#fleet-filter");
    browser.wait_for(&row);
    assert!(browser.current_url().contains("status=online"));
    signed_in_page_ok(&browser, &base);
    browser.fill("form#fleet-filter input[name=q]", "no-such-host-anywhere");
    browser.submit("form#fleet-filter");
    browser.wait("the search to leave no host", || {
        match browser.count("table#hosts tbody tr") {
            0 => Ok(()),
            n => Err(format!("{n} rows")),
        }
    });
    signed_in_page_ok(&browser, &base);

    // The fleet at phone width.
    browser.goto(&format!("{base}/fleet"));
    browser.set_window_size(390, 844);
    browser.wait_for(&row);
    browser.screenshot(&shots.join("fleet-phone.png"));
    browser.set_window_size(1280, 900);
    signed_in_page_ok(&browser, &base);

    // A log line the agent ships, found by the logs page's search, newest first.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap_or_else(|e| panic!("{e}"));
    let store = aggregator.store();
    for (n, line) in [
        "console-check first line of the test",
        "console-check second line of the test",
    ]
    .iter()
    .enumerate()
    {
        writeln!(file, "{line}").unwrap_or_else(|e| panic!("{e}"));
        file.flush().unwrap_or_else(|e| panic!("{e}"));
        env.wait_until("the line to be stored", || {
            store.logs(AGENT, &source).is_ok_and(|l| l.len() == n + 1)
        });
    }

    // The host page: facts, charts drawn from the agent's metrics, its recent log lines.
    browser.goto(&format!("{base}/fleet"));
    browser.click(&format!("{row} a.host-link"));
    browser.wait_for_path(&format!("/hosts/{AGENT}"));
    signed_in_page_ok(&browser, &base);
    browser.goto(&format!("{base}/hosts/{AGENT}?range=15m"));
    for metric in ["cpu", "memory", "load", "filesystem", "disk", "network"] {
        assert_eq!(
            browser.count(&format!("svg.chart[data-metric={metric}]")),
            1,
            "the {metric} chart"
        );
    }
    browser.wait_every(RELOAD, "the memory chart to draw points", || {
        browser.refresh();
        // Two points make a line: a chart worth a screenshot.
        match points(&browser, "memory") {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} points")),
        }
    });
    signed_in_page_ok(&browser, &base);
    let timing = browser.timing();
    eprintln!("[console] /hosts/{AGENT}: {timing:?}");
    for metric in ["cpu", "memory", "load", "filesystem", "disk", "network"] {
        let css = format!("svg.chart[data-metric={metric}]");
        if points(&browser, metric) == 0 {
            assert!(
                browser
                    .text(&format!("figure:has({css})"))
                    .contains("no data"),
                "the empty {metric} chart says so"
            );
        }
    }
    let logs = browser.text("#host-logs");
    assert!(
        logs.contains("console-check second line of the test"),
        "{logs}"
    );
    assert!(browser.count("#host-logs tr.log[data-severity]") >= 2);
    assert_eq!(browser.count("#host-fim"), 1);
    assert_eq!(browser.count("#host-alerts"), 1);
    // Tall enough to show every chart.
    browser.set_window_size(1280, 1500);
    browser.screenshot(&shots.join("host.png"));
    browser.set_window_size(1280, 900);

    // The logs page: a search by host, source and words finds both lines, newest first.
    browser.goto(&format!("{base}/logs"));
    browser.fill("form#log-search input[name=host]", AGENT);
    browser.fill("form#log-search input[name=source]", &source);
    browser.select("form#log-search select[name=severity]", "");
    browser.fill("form#log-search input[name=q]", "console-check");
    browser.select("form#log-search select[name=range]", "15m");
    browser.submit("form#log-search");
    browser.wait_for("table#logs tbody tr.log");
    assert!(browser.current_url().contains("q=console-check"));
    let bodies: Vec<String> = browser
        .find_all("table#logs tbody tr.log td.body")
        .iter()
        .map(|b| b.text())
        .collect();
    assert_eq!(
        bodies,
        vec![
            "console-check second line of the test",
            "console-check first line of the test"
        ]
    );
    signed_in_page_ok(&browser, &base);

    // The alerts page: the rule's alert, firing, with the operator's controls.
    let alert_row = format!("table#active-alerts tr[data-rule={RULE}]");
    browser.goto(&format!("{base}/alerts"));
    browser.wait_every(RELOAD, "the alert to fire", || {
        browser.refresh();
        match browser.try_find(&format!("{alert_row}[data-state=firing]")) {
            Some(_) => Ok(()),
            None => Err(browser.try_text("#active-alerts").unwrap_or_default()),
        }
    });
    signed_in_page_ok(&browser, &base);
    let fingerprint = browser
        .attr(&alert_row, "data-fingerprint")
        .unwrap_or_else(|| panic!("the alert's row has no fingerprint"));
    let alert_row = format!("table#active-alerts tr[data-fingerprint=\"{fingerprint}\"]");
    assert_eq!(browser.count(&format!("{alert_row} form.ack")), 1);
    assert_eq!(
        browser
            .attr(&format!("{alert_row} a.silence"), "href")
            .as_deref(),
        Some(format!("/silences/new?fingerprint={fingerprint}").as_str())
    );

    // Acknowledged from its form: the row says so, and so does the API.
    browser.submit(&format!("{alert_row} form.ack"));
    browser.wait_for_path("/alerts");
    browser.wait_for(&format!("{alert_row}.acked"));
    assert_eq!(browser.count("#flash.ok"), 1);
    assert_eq!(browser.count(&format!("{alert_row} form.ack")), 0);
    signed_in_page_ok(&browser, &base);
    let detail = api_get(&base, &format!("/api/v1/alerts/{fingerprint}"), &operator);
    assert_eq!(detail["ack"]["by"], "console-operator", "{detail}");

    // Silenced from the form its link opens, filled with the alert's labels.
    browser.click(&format!("{alert_row} a.silence"));
    browser.wait_for_path("/silences/new");
    browser.wait_for("form#silence");
    let matchers = browser
        .execute("return document.querySelector('form#silence textarea[name=matchers]').value");
    let matchers = matchers.as_str().unwrap_or_default().to_owned();
    let lines: Vec<&str> = matchers.lines().collect();
    assert!(
        lines.contains(&format!("alertname=\"{RULE}\"").as_str())
            && lines.contains(&format!("host=\"{AGENT}\"").as_str()),
        "{matchers}"
    );
    assert_eq!(
        browser
            .attr("form#silence input[name=duration]", "value")
            .as_deref(),
        Some("2h")
    );
    signed_in_page_ok(&browser, &base);
    browser.fill("form#silence input[name=comment]", "memory upgrade tonight");
    browser.submit("form#silence");
    browser.wait_for_path("/alerts");
    browser.wait_for("table#silences tr[data-silence-id]");
    assert_eq!(browser.count("#flash.ok"), 1);
    let silence = browser.text("table#silences tr[data-silence-id]");
    assert!(
        silence.contains(&format!("host=\"{AGENT}\""))
            && silence.contains("memory upgrade tonight"),
        "{silence}"
    );
    signed_in_page_ok(&browser, &base);
    browser.screenshot(&shots.join("alerts.png"));
    let silences = api_get(&base, "/api/v1/silences", &operator);
    assert_eq!(
        silences["items"].as_array().map(Vec::len),
        Some(1),
        "{silences}"
    );

    // The rules page lists the rule.
    browser.goto(&format!("{base}/rules"));
    browser.wait_for(&format!("table#rules tr[data-rule={RULE}]"));
    signed_in_page_ok(&browser, &base);

    // Signing out ends the session: the console sends the browser back to the login page.
    sign_out(&browser, &base);
    browser.goto(&format!("{base}/alerts"));
    browser.wait_for_path("/login");
    browser.assert_clean(&base);

    // A viewer sees the alert and the silence, but no control to change them.
    sign_in(&browser, &base, &viewer);
    browser.goto(&format!("{base}/alerts"));
    browser.wait_for(&alert_row);
    assert_eq!(browser.count("table#active-alerts form.ack"), 0);
    assert_eq!(browser.count("table#active-alerts a.silence"), 0);
    assert_eq!(browser.count("table#silences tr[data-silence-id] form"), 0);
    signed_in_page_ok(&browser, &base);

    // ...and sending the forms anyway is refused, with the session's own CSRF token: only the
    // role decides.
    force_post(
        &browser,
        &format!("/alerts/{fingerprint}/ack"),
        &[("comment", "not mine to do")],
    );
    browser.wait_for("#flash.error");
    assert_eq!(browser.status(), 403);
    assert_clean_but_status(&browser, &base, 403);
    browser.goto(&format!("{base}/alerts"));
    force_post(
        &browser,
        "/silences",
        &[
            ("matchers", &format!("host=\"{AGENT}\"")),
            ("duration", "1h"),
            ("comment", "not mine to do"),
        ],
    );
    browser.wait_for("#flash.error");
    assert_eq!(browser.status(), 403);
    assert_clean_but_status(&browser, &base, 403);
    browser.goto(&format!("{base}/silences/new?fingerprint={fingerprint}"));
    assert_eq!(browser.status(), 403);
    assert_eq!(browser.count("form#silence"), 0);
    assert_clean_but_status(&browser, &base, 403);
    let silences = api_get(&base, "/api/v1/silences", &viewer);
    assert_eq!(
        silences["items"].as_array().map(Vec::len),
        Some(1),
        "{silences}"
    );
    sign_out(&browser, &base);
}
