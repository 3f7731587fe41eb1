//! The PagerDuty receiver: Events API v2 alert events, one PagerDuty alert per group.
//!
//! While any alert of the group fires it sends `trigger` (again on each notification, which
//! PagerDuty folds into the open alert); once all resolved it sends `resolve`. Both carry the
//! same `dedup_key`, the SHA-256 of the group key in hex (as Alertmanager derives it), so it is
//! stable over the group's life and across restarts, and within PagerDuty's 255 characters.
//!
//! A trigger's `payload`: `summary` is the title (`[FIRING:2] cpu_busy (host=web1)`, cut to
//! PagerDuty's 1024 characters); `source` the common `host` label, else the hosts involved;
//! `severity` the most severe of the firing alerts' `severity` labels mapped onto PagerDuty's
//! four (critical → critical, high → error, medium → warning, low and info → info; PagerDuty's
//! own names pass through; anything else, or none, is `error`, Alertmanager's default);
//! `custom_details` the alerts in plain text with their counts. `links` are the alerts'
//! runbooks. The routing key is a secret.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use outpost_common::time::format_rfc3339;
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::Check;
use super::delivery::{Failure, HttpTarget, truncate_chars};
use super::message::{Message, Status};
use super::secret::Secret;
use super::text;

/// The Events API v2 endpoint.
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

const SUMMARY_MAX_CHARS: usize = 1024;
const SOURCE_MAX_CHARS: usize = 255;
/// Keeps an event well under PagerDuty's 512 KB with hundreds of alerts.
const DETAILS_MAX_CHARS: usize = 100_000;

/// `pagerduty = { … }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The integration's routing key, a secret: give one of `routing_key`, `routing_key_file`,
    /// `routing_key_env`.
    pub routing_key: Option<Secret>,
    pub routing_key_file: Option<PathBuf>,
    pub routing_key_env: Option<String>,
    /// The Events API endpoint (default [`DEFAULT_URL`]).
    pub url: Option<String>,
    /// How long PagerDuty may take to answer (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// A checked PagerDuty receiver.
#[derive(Debug)]
pub(crate) struct PagerDuty {
    target: HttpTarget,
    routing_key: Secret,
}

impl PagerDuty {
    pub(crate) fn new(config: &PagerDutyConfig, check: &mut Check<'_>) -> Option<PagerDuty> {
        let routing_key = check.secret(
            "routing_key",
            config.routing_key.as_ref(),
            config.routing_key_file.as_ref(),
            config.routing_key_env.as_ref(),
        );
        let url = check.http_url("url", config.url.as_deref().unwrap_or(DEFAULT_URL), false);
        let timeout = check.timeout(config.timeout);
        Some(PagerDuty {
            target: HttpTarget {
                url: url?,
                url_is_secret: false,
                headers: Default::default(),
                timeout: timeout?,
            },
            routing_key: routing_key?,
        })
    }

    pub(crate) async fn send(
        &self,
        client: &reqwest::Client,
        msg: &Message,
    ) -> Result<(), Failure> {
        let event = event(msg, self.routing_key.expose());
        self.target.post_json(client, &event).await
    }
}

/// The alert event for `msg`: `trigger` while any alert fires, else `resolve`.
pub fn event(msg: &Message, routing_key: &str) -> Value {
    let dedup_key = dedup_key(&msg.group_key);
    if msg.status() == Status::Resolved {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    let (firing, resolved) = msg.counts();
    let common = msg.common_labels();
    let mut payload = json!({
        "summary": truncate_chars(&text::title(msg), SUMMARY_MAX_CHARS),
        "source": source(msg),
        "severity": severity(msg),
        "timestamp": format_rfc3339(msg.created_ns),
        "custom_details": {
            "firing": truncate_chars(&text::alerts_text(msg, Status::Firing), DETAILS_MAX_CHARS),
            "resolved": truncate_chars(&text::alerts_text(msg, Status::Resolved), DETAILS_MAX_CHARS),
            "num_firing": firing,
            "num_resolved": resolved,
            "group_labels": msg.group_labels,
            "escalation": msg.escalation,
        },
    });
    if let Some(alertname) = common.get("alertname") {
        payload["class"] = json!(alertname);
    }
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": payload,
        "client": "Outpost",
        "links": links(msg),
    });
    if !msg.external_url.is_empty() {
        event["client_url"] = json!(msg.external_url);
    }
    event
}

/// The hex SHA-256 of the group key.
pub fn dedup_key(group_key: &str) -> String {
    outpost_common::tls::hex(
        ring::digest::digest(&ring::digest::SHA256, group_key.as_bytes()).as_ref(),
    )
}

/// PagerDuty's severity for an alert's `severity` label.
pub fn map_severity(label: Option<&str>) -> &'static str {
    match label.map(str::to_ascii_lowercase).as_deref() {
        Some("critical") => "critical",
        Some("high" | "error") => "error",
        Some("medium" | "warning") => "warning",
        Some("low" | "info") => "info",
        _ => "error",
    }
}

/// The most severe mapping among the firing alerts.
fn severity(msg: &Message) -> &'static str {
    const ORDER: [&str; 4] = ["info", "warning", "error", "critical"];
    msg.alerts
        .iter()
        .filter(|a| a.status == Status::Firing)
        .map(|a| map_severity(a.labels.get("severity").map(String::as_str)))
        .max_by_key(|s| ORDER.iter().position(|o| o == s))
        .unwrap_or("error")
}

/// The common `host`, else the hosts of the alerts, else `outpost`.
fn source(msg: &Message) -> String {
    if let Some(host) = msg.common_labels().get("host") {
        return truncate_chars(host, SOURCE_MAX_CHARS);
    }
    let hosts: BTreeSet<&str> = msg
        .alerts
        .iter()
        .filter_map(|a| a.labels.get("host").map(String::as_str))
        .collect();
    if hosts.is_empty() {
        return "outpost".to_owned();
    }
    truncate_chars(
        &hosts.into_iter().collect::<Vec<_>>().join(", "),
        SOURCE_MAX_CHARS,
    )
}

/// One link per distinct runbook, named after the rule.
fn links(msg: &Message) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    msg.alerts
        .iter()
        .filter_map(|a| {
            let href = text::runbook_url(a)?;
            seen.insert(href).then(|| {
                let rule = a.labels.get("alertname").map_or("alert", String::as_str);
                json!({"href": href, "text": format!("Runbook: {rule}")})
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testutil::{
        HttpServer, Reply, firing_message, receivers_with_env, resolved,
    };

    #[test]
    fn trigger_event_follows_the_events_api() {
        let msg = firing_message();
        let key = dedup_key(&msg.group_key);
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        let firing_text = text::alerts_text(&msg, Status::Firing);
        assert_eq!(
            event(&msg, "R0UTINGKEY"),
            json!({
                "routing_key": "R0UTINGKEY",
                "event_action": "trigger",
                "dedup_key": key,
                "payload": {
                    "summary": "[FIRING:2] cpu_busy (host=web1)",
                    "source": "web1",
                    "severity": "critical",
                    "timestamp": "2023-11-14T22:14:20Z",
                    "class": "cpu_busy",
                    "custom_details": {
                        "firing": firing_text,
                        "resolved": "",
                        "num_firing": 2,
                        "num_resolved": 0,
                        "group_labels": {"alertname": "cpu_busy"},
                        "escalation": 0,
                    },
                },
                "client": "Outpost",
                "client_url": "https://outpost.example",
                "links": [{"href": "https://runbooks.example/cpu", "text": "Runbook: cpu_busy"}],
            })
        );
        assert!(firing_text.starts_with("CPU 0 busy on web1\n"));
        assert!(firing_text.contains("\n\nCPU 1 busy on web1\n"));
    }

    #[test]
    fn resolve_event_has_the_same_dedup_key() {
        let msg = firing_message();
        assert_eq!(
            event(&resolved(&msg), "K"),
            json!({"routing_key": "K", "event_action": "resolve", "dedup_key": dedup_key(&msg.group_key)})
        );
        assert_ne!(dedup_key("a"), dedup_key("b"));
    }

    #[test]
    fn severities_map_and_the_worst_firing_one_wins() {
        let cases = [
            (Some("critical"), "critical"),
            (Some("High"), "error"),
            (Some("medium"), "warning"),
            (Some("warning"), "warning"),
            (Some("low"), "info"),
            (Some("info"), "info"),
            (Some("whatever"), "error"),
            (None, "error"),
        ];
        for (label, expected) in cases {
            assert_eq!(map_severity(label), expected, "{label:?}");
        }
        let mut msg = firing_message();
        msg.alerts[0].status = Status::Resolved;
        assert_eq!(severity(&msg), "error");
        msg.alerts[1].labels.insert("severity".into(), "low".into());
        msg.alerts[1].labels.insert("host".into(), "web2".into());
        assert_eq!(severity(&msg), "info");
        assert_eq!(source(&msg), "web1, web2");
    }

    #[test]
    fn summary_is_cut_to_pagerdutys_limit() {
        let mut msg = firing_message();
        msg.group_labels.insert("long".into(), "z".repeat(2000));
        let summary = event(&msg, "K")["payload"]["summary"]
            .as_str()
            .map(|s| s.chars().count());
        assert_eq!(summary, Some(SUMMARY_MAX_CHARS));
    }

    #[tokio::test]
    async fn triggers_then_resolves_with_the_same_dedup_key() {
        let mut server = HttpServer::start(|_| Reply::Status(202)).await;
        let env = |name: &str| (name == "PD_KEY").then(|| "k3y-from-env".to_owned());
        let receivers = receivers_with_env(
            &format!(
                r#"
                [[receivers]]
                name = "pager"
                pagerduty = {{ routing_key_env = "PD_KEY", url = "{}/v2/enqueue", timeout = "5s" }}
                "#,
                server.base
            ),
            &env,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut msg = firing_message();
        msg.receiver = "pager".into();
        receivers.deliver(&msg).await.expect("trigger delivered");
        receivers
            .deliver(&resolved(&msg))
            .await
            .expect("resolve delivered");
        let trigger = server.next().await;
        let resolve = server.next().await;
        assert_eq!(trigger.path, "/v2/enqueue");
        assert_eq!(trigger.body["event_action"], "trigger");
        assert_eq!(trigger.body["routing_key"], "k3y-from-env");
        assert_eq!(resolve.body["event_action"], "resolve");
        assert_eq!(resolve.body["dedup_key"], trigger.body["dedup_key"]);
        assert_eq!(trigger.body, event(&msg, "k3y-from-env"));
        assert!(!format!("{receivers:?}").contains("k3y-from-env"));
    }
}
