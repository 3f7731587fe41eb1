//! The alerting routes over a real store and a running engine fed through the store writer, as
//! a client sees them: roles, the alert list and its filters, acknowledging, silences, reloads
//! that fail and keep the rules running, validation, history and the notification log, and 503
//! when alerting is off.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use outpost_common::event::{Event, LogRecord};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Api;
use super::tests::{Answer, Harness, error_code, harness_from};
use super::tests_support::config;
use crate::alerts::{Alerting, AlertingSection};
use crate::rules::engine::Setup;
use crate::rules::route::Route;
use crate::store::sqlite::SqliteStore;
use crate::store::testutil::{batch, metric};
use crate::store::{StoreWriter, WriterConfig};

/// A log rule that fires at once, a lesser one, and a threshold rule that stays pending for an
/// hour.
const RULES: &str = r#"
[[rule]]
name = "disk-on-fire"
kind = "log"
severity = "critical"
pattern = "disk on fire"

[rule.annotations]
summary = "Disk on fire on {{ host }}"

[[rule]]
name = "disk-warm"
kind = "log"
severity = "low"
pattern = "disk warm"

[[rule]]
name = "memory-high"
kind = "threshold"
severity = "medium"
metric = "system.memory.usage"
op = ">"
value = 10.0
for = "1h"
"#;

/// How long a test waits for the engine to act and save.
const DEADLINE: Duration = Duration::from_secs(20);

/// A running engine over the harness's store, and the writer that feeds it.
struct Fixture {
    h: Harness,
    writer: StoreWriter,
    seq: std::sync::atomic::AtomicU64,
    rules_dir: std::path::PathBuf,
    stop: watch::Sender<bool>,
    alerting: Option<Alerting>,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let rules_dir = dir.path().join("rules.d");
        std::fs::create_dir(&rules_dir).unwrap();
        std::fs::write(rules_dir.join("disk.toml"), RULES).unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
        let (writer, _join) =
            StoreWriter::spawn(store.clone(), store.clone(), WriterConfig::default()).unwrap();
        let section = AlertingSection {
            rules_dir: rules_dir.clone(),
            // Reloads only when asked, so that the tests say when.
            reload_interval: Duration::from_secs(3600),
            ..AlertingSection::default()
        };
        // Notified at once, to a receiver that is not configured: each notification fails for
        // good on its first attempt, which the log shows.
        let setup = Setup {
            route: Route {
                group_wait_ns: 0,
                ..Route::root("nowhere")
            },
            ..Setup::default()
        };
        let (stop, stopped) = watch::channel(false);
        let alerting = crate::alerts::start(
            &section,
            setup,
            crate::notify::Receivers::from_config(&[]).unwrap(),
            store.clone(),
            &writer.feed(),
            None,
            stopped,
        )
        .await
        .unwrap();
        let handle = alerting.handle.clone();
        let h = harness_from(dir, store, &config(), |store| {
            Api::with_alerting(store, Some(handle), &config())
        });
        Fixture {
            h,
            writer,
            seq: std::sync::atomic::AtomicU64::new(1),
            rules_dir,
            stop,
            alerting: Some(alerting),
        }
    }

    /// Commits `events` from `agent` through the writer, so that the feed hands them to the
    /// engine.
    async fn send(&self, agent: &str, events: Vec<Event>) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.writer
            .commit(batch(agent, 1, seq, events))
            .await
            .unwrap();
    }

    /// `uri` as the viewer reads it, once `done` holds of the answer (the engine saves after
    /// each step; this waits for the step).
    async fn wait_for(&self, uri: &str, done: impl Fn(&Value) -> bool) -> Value {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let a = self.h.get(uri, &self.h.viewer).await;
            if a.status == StatusCode::OK && done(&a.body) {
                return a.body;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{uri}: still {} {} after {DEADLINE:?}",
                a.status,
                a.body
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(alerting) = self.alerting.take() {
            alerting.join().await;
        }
    }
}

fn line(body: &str) -> Event {
    Event::Log(LogRecord {
        time_ns: outpost_common::time::now_ns(),
        source: "/var/log/syslog".to_owned(),
        severity: None,
        body: body.to_owned(),
        attributes: Vec::new(),
    })
}

fn items(v: &Value) -> &Vec<Value> {
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {v}"))
}

/// The alerts of the list in order, as `rule@host state`.
fn listed(v: &Value) -> Vec<String> {
    items(v)
        .iter()
        .map(|a| {
            format!(
                "{}@{} {}",
                a["rule"].as_str().unwrap(),
                a["labels"]["host"].as_str().unwrap_or("-"),
                a["state"].as_str().unwrap()
            )
        })
        .collect()
}

/// Raises, in order: a low alert on web-2, critical ones on web-1 and web-3, and a pending one
/// on web-1; answers the fingerprint of web-1's critical alert once all four are listed.
async fn raise_alerts(f: &Fixture) -> String {
    f.send("web-2", vec![line("the disk warm again")]).await;
    f.wait_for("/api/v1/alerts", |v| items(v).len() == 1).await;
    f.send("web-1", vec![line("disk on fire!")]).await;
    f.wait_for("/api/v1/alerts", |v| items(v).len() == 2).await;
    f.send("web-3", vec![line("disk on fire, too")]).await;
    f.send("web-1", vec![metric(outpost_common::time::now_ns(), 1e9)])
        .await;
    let all = f.wait_for("/api/v1/alerts", |v| items(v).len() == 4).await;
    items(&all)[0]["fingerprint"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn alerts_are_listed_most_severe_first_filtered_and_acknowledged_by_operators() {
    let f = Fixture::start().await;
    let fp = raise_alerts(&f).await;
    let h = &f.h;
    let all = h.get("/api/v1/alerts", &h.viewer).await;
    assert_eq!(
        listed(&all.body),
        [
            "disk-on-fire@web-1 firing",
            "disk-on-fire@web-3 firing",
            "memory-high@web-1 pending",
            "disk-warm@web-2 firing",
        ]
    );
    let first = &items(&all.body)[0];
    assert_eq!(first["severity"], "critical");
    assert_eq!(first["annotations"]["summary"], "Disk on fire on web-1");
    assert_eq!(first["labels"]["alertname"], "disk-on-fire");
    let since_ns = first["since_ns"].as_i64().unwrap();
    assert_eq!(
        first["since"],
        outpost_common::time::format_rfc3339(since_ns)
    );
    assert!(
        first["fired_ns"].is_i64() && first["fired_at"].is_string(),
        "{first}"
    );
    assert_eq!(first["ack"], Value::Null);

    for (query, want) in [
        ("state=pending", vec!["memory-high@web-1 pending"]),
        ("severity=low", vec!["disk-warm@web-2 firing"]),
        (
            "rule=disk-on-fire&host=web-3",
            vec!["disk-on-fire@web-3 firing"],
        ),
        (
            "matcher=host%3D~%22web-%5B12%5D%22&matcher=severity!%3Dmedium",
            vec!["disk-on-fire@web-1 firing", "disk-warm@web-2 firing"],
        ),
        ("host=db-1", vec![]),
    ] {
        let a = h.get(&format!("/api/v1/alerts?{query}"), &h.viewer).await;
        assert_eq!(a.status, StatusCode::OK, "{query}: {}", a.body);
        assert_eq!(listed(&a.body), want, "{query}");
    }
    for (query, parameter) in [
        ("state=loud", "state"),
        ("severity=urgent", "severity"),
        ("matcher=host", "matcher"),
        ("matcher=host%3D~%22(%22", "matcher"),
    ] {
        let a = h.get(&format!("/api/v1/alerts?{query}"), &h.viewer).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {}", a.body);
        assert_eq!(
            a.body["error"]["details"]["parameter"], parameter,
            "{query}"
        );
    }

    // One alert with its history; an unknown one is 404.
    let one = h.get(&format!("/api/v1/alerts/{fp}"), &h.viewer).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.body);
    assert_eq!(one.body["fingerprint"], fp.as_str());
    assert_eq!(one.body["history"][0]["kind"], "fired", "{}", one.body);
    let unknown = h.get("/api/v1/alerts/0000000000000000", &h.viewer).await;
    assert_eq!(
        (unknown.status, error_code(&unknown)),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // A viewer may not acknowledge; an operator may, once, and only a firing alert.
    let ack = |token: &str, fp: &str| {
        let (token, uri) = (token.to_owned(), format!("/api/v1/alerts/{fp}/ack"));
        async move {
            h.call(
                Method::POST,
                &uri,
                Some(&token),
                Some(json!({ "comment": "on it" })),
            )
            .await
        }
    };
    let refused = ack(&h.viewer, &fp).await;
    assert_eq!(
        (refused.status, error_code(&refused)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let acked = ack(&h.operator, &fp).await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.body);
    assert_eq!(acked.body["ack"]["by"], "oncall");
    assert_eq!(acked.body["ack"]["comment"], "on it");
    assert!(acked.body["ack"]["at"].is_string());
    let detail = f
        .wait_for(&format!("/api/v1/alerts/{fp}"), |v| v["ack"].is_object())
        .await;
    assert_eq!(detail["history"][0]["kind"], "acknowledged", "{detail}");
    assert_eq!(detail["history"][0]["detail"], "by oncall: on it");
    let pending = h.get("/api/v1/alerts?state=pending", &h.viewer).await;
    let pending_fp = items(&pending.body)[0]["fingerprint"].as_str().unwrap();
    let not_firing = ack(&h.operator, pending_fp).await;
    assert_eq!(
        (not_firing.status, error_code(&not_firing)),
        (StatusCode::CONFLICT, "conflict"),
        "{}",
        not_firing.body
    );
    let unknown = ack(&h.admin, "0000000000000000").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let bad = h
        .call(
            Method::POST,
            &format!("/api/v1/alerts/{fp}/ack"),
            Some(&h.operator),
            Some(json!({ "comments": "typo" })),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);

    // The history, a page at a time, and one alert's.
    let page = h.get("/api/v1/alerts/history?limit=2", &h.viewer).await;
    assert_eq!(items(&page.body).len(), 2, "{}", page.body);
    let next = page.body["next_cursor"].as_str().unwrap();
    let rest = h
        .get(
            &format!("/api/v1/alerts/history?limit=1000&cursor={next}"),
            &h.viewer,
        )
        .await;
    assert!(items(&rest.body)[0]["id"].as_i64() < items(&page.body)[1]["id"].as_i64());
    let own = h
        .get(
            &format!("/api/v1/alerts/history?fingerprint={fp}"),
            &h.viewer,
        )
        .await;
    let kinds: Vec<&str> = items(&own.body)
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["acknowledged", "fired"]);

    // Acknowledging changes something: audited with who did it; so is the viewer's refusal.
    let audit = h.audit();
    for want in [
        (
            Some("oncall"),
            "/api/v1/alerts/{fingerprint}/ack",
            200,
            "ok",
        ),
        (
            Some("oncall"),
            "/api/v1/alerts/{fingerprint}/ack",
            409,
            "refused",
        ),
        (
            Some("dash"),
            "/api/v1/alerts/{fingerprint}/ack",
            403,
            "forbidden",
        ),
    ] {
        assert!(
            audit.iter().any(|(name, method, route, status, outcome)| {
                name.as_deref() == want.0
                    && method == "POST"
                    && route == want.1
                    && *status == want.2
                    && outcome == want.3
            }),
            "{want:?} not in {audit:?}"
        );
    }
    f.stop().await;
}

#[tokio::test]
async fn operators_add_and_expire_silences_that_suppress_matching_alerts() {
    let f = Fixture::start().await;
    let fp = raise_alerts(&f).await;
    let h = &f.h;
    let new = json!({ "matchers": ["host=web-1", "alertname=~\"disk-.*\""], "ends_at": "2h",
                      "comment": "replacing the disk" });
    let refused = h
        .call(
            Method::POST,
            "/api/v1/silences",
            Some(&h.viewer),
            Some(new.clone()),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let made = h
        .call(
            Method::POST,
            "/api/v1/silences",
            Some(&h.operator),
            Some(new),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    assert_eq!(made.body["author"], "oncall");
    assert_eq!(made.body["state"], "active");
    assert_eq!(
        made.body["matchers"],
        json!(["host=\"web-1\"", "alertname=~\"disk-.*\""])
    );
    let span = made.body["ends_ns"].as_i64().unwrap() - made.body["starts_ns"].as_i64().unwrap();
    assert_eq!(span, 2 * 3600 * 1_000_000_000);
    let id = made.body["id"].as_str().unwrap().to_owned();

    // Listed, and the matching alert is kept from notifications (the pending one on web-1 is
    // not matched: its alertname is memory-high).
    let listed = f
        .wait_for("/api/v1/silences", |v| {
            items(v).iter().any(|s| s["id"] == id.as_str())
        })
        .await;
    assert_eq!(items(&listed)[0]["comment"], "replacing the disk");
    f.wait_for(&format!("/api/v1/alerts/{fp}"), |v| {
        v["suppressed_by"] == json!([id.as_str()])
    })
    .await;

    // Bad requests say what is wrong.
    let now = outpost_common::time::now_ns();
    let at = |ns: i64| outpost_common::time::format_rfc3339(ns);
    for (body, parameter, says) in [
        (
            json!({ "matchers": ["host~web-1"], "ends_at": "1h", "comment": "x" }),
            "matchers",
            "not a matcher",
        ),
        (
            json!({ "matchers": ["host=~\"(\""], "ends_at": "1h", "comment": "x" }),
            "matchers",
            "",
        ),
        (
            json!({ "matchers": [], "ends_at": "1h", "comment": "x" }),
            "matchers",
            "matchers",
        ),
        (
            json!({ "matchers": ["host=a"], "ends_at": "soon", "comment": "x" }),
            "ends_at",
            "soon",
        ),
        (
            json!({ "matchers": ["host=a"], "starts_at": at(now + 7200 * 1_000_000_000),
                    "ends_at": at(now + 3600 * 1_000_000_000), "comment": "x" }),
            "ends_at",
            "before it starts",
        ),
        (
            json!({ "matchers": ["host=a"], "starts_at": at(now - 7200 * 1_000_000_000),
                    "ends_at": "1h", "comment": "x" }),
            "ends_at",
            "ended already",
        ),
        (
            json!({ "matchers": ["host=a"], "starts_at": "1h", "ends_at": "2h", "comment": "x" }),
            "starts_at",
            "RFC 3339",
        ),
        (
            json!({ "matchers": ["host=a"], "ends_at": "1h", "comment": " " }),
            "comment",
            "comment",
        ),
    ] {
        let a = h
            .call(
                Method::POST,
                "/api/v1/silences",
                Some(&h.operator),
                Some(body.clone()),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert_eq!(a.body["error"]["details"]["parameter"], parameter, "{body}");
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let no_end = h
        .call(
            Method::POST,
            "/api/v1/silences",
            Some(&h.operator),
            Some(json!({ "matchers": ["host=a"], "comment": "x" })),
        )
        .await;
    assert_eq!(no_end.status, StatusCode::BAD_REQUEST);

    // Expired by an operator: then no longer suppressing; a second time, 409; unknown, 404.
    let uri = format!("/api/v1/silences/{id}");
    let refused = h.call(Method::DELETE, &uri, Some(&h.viewer), None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let expired = h.call(Method::DELETE, &uri, Some(&h.operator), None).await;
    assert_eq!(expired.status, StatusCode::OK, "{}", expired.body);
    assert_eq!(expired.body["state"], "expired");
    let again = h.call(Method::DELETE, &uri, Some(&h.operator), None).await;
    assert_eq!(
        (again.status, error_code(&again)),
        (StatusCode::CONFLICT, "conflict")
    );
    let unknown = h
        .call(
            Method::DELETE,
            "/api/v1/silences/nope",
            Some(&h.operator),
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    f.wait_for(&format!("/api/v1/alerts/{fp}"), |v| {
        v["suppressed_by"] == json!([])
    })
    .await;
    f.wait_for("/api/v1/silences", |v| items(v)[0]["state"] == "expired")
        .await;
    f.stop().await;
}

/// A POST of `text` as a rule file to validate.
async fn validate(h: &Harness, token: &str, text: &str) -> Answer {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/rules/validate")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "text/plain")
        .body(Body::from(text.to_owned()))
        .unwrap();
    h.answer(req).await
}

#[tokio::test]
async fn a_bad_rule_file_fails_the_reload_and_the_rules_before_keep_running() {
    let f = Fixture::start().await;
    raise_alerts(&f).await;
    let h = &f.h;
    let rules = h.get("/api/v1/rules", &h.viewer).await;
    assert_eq!(rules.status, StatusCode::OK, "{}", rules.body);
    let counts = |v: &Value| -> Vec<(String, u64, u64)> {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_owned(),
                    r["pending"].as_u64().unwrap(),
                    r["firing"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let mut got = counts(&rules.body);
    got.sort();
    assert_eq!(
        got,
        [
            ("disk-on-fire".to_owned(), 0, 2),
            ("disk-warm".to_owned(), 0, 1),
            ("memory-high".to_owned(), 1, 0),
        ]
    );
    assert_eq!(rules.body["last_error"], Value::Null);
    assert_eq!(rules.body["rules"][0]["kind"], "log");

    // Only an admin reloads.
    for token in [&h.viewer, &h.operator] {
        let a = h
            .call(Method::POST, "/api/v1/rules/reload", Some(token), None)
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
    }
    let reloaded = h
        .call(Method::POST, "/api/v1/rules/reload", Some(&h.admin), None)
        .await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.body);
    assert_eq!(reloaded.body["rules"].as_array().unwrap().len(), 3);

    // A file with a mistake: 422 naming its place; the three rules keep running.
    std::fs::write(
        f.rules_dir.join("zz-bad.toml"),
        "[[rule]]\nname = \"oops\"\nkind = \"nonsense\"\nseverity = \"high\"\n",
    )
    .unwrap();
    let failed = h
        .call(Method::POST, "/api/v1/rules/reload", Some(&h.admin), None)
        .await;
    assert_eq!(
        (failed.status, error_code(&failed)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
        "{}",
        failed.body
    );
    let error = failed.body["error"]["details"]["errors"][0]
        .as_str()
        .unwrap();
    assert!(error.contains("zz-bad.toml:3:8: "), "{error}");
    let after = h.get("/api/v1/rules", &h.viewer).await;
    assert_eq!(after.body["rules"].as_array().unwrap().len(), 3);
    assert_eq!(after.body["last_error"], json!([error]));
    assert!(after.body["last_error_ns"].is_i64());

    // Validation checks a text without loading it.
    let valid = validate(h, &h.admin, RULES).await;
    assert_eq!(valid.status, StatusCode::OK, "{}", valid.body);
    assert_eq!(valid.body["valid"], true);
    assert_eq!(valid.body["rules"][2]["name"], "memory-high");
    assert_eq!(valid.body["rules"][2]["kind"], "threshold");
    assert_eq!(valid.body["rules"][2]["for_seconds"], 3600.0);
    assert_eq!(valid.body["rules"][2]["file"], "request.toml");
    let invalid = validate(h, &h.admin, "[[rule]]\nname = \"x\"\nkind = 7\n").await;
    assert_eq!(invalid.status, StatusCode::OK, "{}", invalid.body);
    assert_eq!(invalid.body["valid"], false);
    assert_eq!(
        (
            invalid.body["error"]["line"].clone(),
            invalid.body["error"]["column"].clone()
        ),
        (json!(3), json!(8)),
        "{}",
        invalid.body
    );
    assert!(
        invalid.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("request.toml:3:8: "),
        "{}",
        invalid.body
    );
    let empty = validate(h, &h.admin, "").await;
    assert_eq!(
        (
            empty.status,
            empty.body["valid"].clone(),
            empty.body["rules"].clone()
        ),
        (StatusCode::OK, json!(true), json!([]))
    );
    let refused = validate(h, &h.operator, RULES).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let after = h.get("/api/v1/rules", &h.viewer).await;
    assert_eq!(after.body["rules"].as_array().unwrap().len(), 3);
    f.stop().await;
}

#[tokio::test]
async fn notifications_are_logged_with_their_outcome_and_paged() {
    let f = Fixture::start().await;
    let fp = raise_alerts(&f).await;
    let h = &f.h;
    // One notification per alert name fired (grouped by it): disk-on-fire and disk-warm.
    let log = f
        .wait_for("/api/v1/notifications", |v| {
            items(v).len() >= 2 && items(v).iter().all(|n| n["state"] == "failed")
        })
        .await;
    let first = &items(&log)[0];
    assert_eq!(first["receiver"], "nowhere");
    assert_eq!(first["status"], "firing");
    assert_eq!(first["attempts"], 1);
    assert!(
        first["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no receiver of this name")),
        "{first}"
    );
    assert_eq!(first["sent_at"], Value::Null);
    let total = items(&log).len();
    let mine = h
        .get(
            &format!("/api/v1/notifications?fingerprint={fp}"),
            &h.viewer,
        )
        .await;
    assert!(
        items(&mine.body).iter().all(|n| n["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["fingerprint"] == fp.as_str())),
        "{}",
        mine.body
    );
    assert!(!items(&mine.body).is_empty());
    let elsewhere = h
        .get("/api/v1/notifications?receiver=pager", &h.viewer)
        .await;
    assert_eq!(items(&elsewhere.body).len(), 0);
    // Page by page, newest first, through the receiver's notifications.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/notifications?receiver=nowhere&limit=1".to_owned();
    loop {
        let page = h.get(&uri, &h.viewer).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        seen.extend(items(&page.body).iter().map(|n| n["id"].as_i64().unwrap()));
        match page.body["next_cursor"].as_str() {
            Some(next) => {
                uri = format!("/api/v1/notifications?receiver=nowhere&limit=1&cursor={next}");
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), total);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
    let bad = h.get("/api/v1/notifications?cursor=zz", &h.viewer).await;
    assert_eq!(bad.body["error"]["details"]["parameter"], "cursor");
    f.stop().await;
}

#[tokio::test]
async fn every_alerting_route_answers_503_when_alerting_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let h = harness_from(dir, store, &config(), |store| Api::new(store, &config()));
    for (method, uri, token, body) in [
        (Method::GET, "/api/v1/alerts", &h.viewer, None),
        (Method::GET, "/api/v1/alerts/history", &h.viewer, None),
        (
            Method::GET,
            "/api/v1/alerts/0123456789abcdef",
            &h.viewer,
            None,
        ),
        (
            Method::POST,
            "/api/v1/alerts/0123456789abcdef/ack",
            &h.operator,
            Some(json!({ "comment": "x" })),
        ),
        (Method::GET, "/api/v1/silences", &h.viewer, None),
        (
            Method::POST,
            "/api/v1/silences",
            &h.operator,
            Some(json!({ "matchers": ["a=b"], "ends_at": "1h", "comment": "x" })),
        ),
        (Method::DELETE, "/api/v1/silences/x", &h.operator, None),
        (Method::GET, "/api/v1/rules", &h.viewer, None),
        (Method::POST, "/api/v1/rules/reload", &h.admin, None),
        (Method::GET, "/api/v1/notifications", &h.viewer, None),
    ] {
        let a = h.call(method.clone(), uri, Some(token), body).await;
        assert_eq!(
            (a.status, error_code(&a)),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            "{method} {uri}"
        );
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("alerting is disabled"), "{message}");
    }
    let a = validate(&h, &h.admin, RULES).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    // A viewer is still refused what a viewer may never do.
    let a = h
        .call(Method::POST, "/api/v1/rules/reload", Some(&h.viewer), None)
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}
