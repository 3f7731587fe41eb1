//! The webhook receiver: POSTs Alertmanager's webhook JSON (version 4), so anything written for
//! Alertmanager's `webhook_config` takes Outpost's notifications unchanged.
//!
//! ```json
//! { "version": "4", "groupKey": "…", "truncatedAlerts": 0, "status": "firing",
//!   "receiver": "ops", "groupLabels": {…}, "commonLabels": {…}, "commonAnnotations": {…},
//!   "externalURL": "https://outpost.example",
//!   "alerts": [ { "status": "firing", "labels": {…}, "annotations": {…},
//!                 "startsAt": "2023-11-14T22:13:20Z", "endsAt": "0001-01-01T00:00:00Z",
//!                 "generatorURL": "…", "fingerprint": "…" } ] }
//! ```
//!
//! Times are RFC 3339 in UTC; a firing alert's `endsAt` is Go's zero time, as Alertmanager sends
//! it. With `max_alerts`, only the first alerts are sent and `truncatedAlerts` counts the rest;
//! the common labels and annotations are still those of all alerts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use outpost_common::time::format_rfc3339;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::config::Check;
use super::delivery::{Failure, HttpTarget};
use super::message::{Message, MessageAlert, Status};
use super::secret::{HeaderValueConfig, Secret};

/// Alertmanager's `endsAt` for an alert that has not ended: Go's zero `time.Time`.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `webhook = { … }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST; a secret when it carries a token (give one of `url`, `url_file`, `url_env`).
    pub url: Option<Secret>,
    pub url_file: Option<PathBuf>,
    pub url_env: Option<String>,
    /// Headers sent with every request, such as `Authorization`. Each value is a string, or
    /// `{ file = "…" }` or `{ env = "…" }`; values are treated as secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValueConfig>,
    /// How long the receiver may take to answer (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Send at most this many alerts of a group; 0 sends all.
    #[serde(default)]
    pub max_alerts: usize,
}

/// A checked webhook receiver.
#[derive(Debug)]
pub(crate) struct Webhook {
    target: HttpTarget,
    max_alerts: usize,
}

impl Webhook {
    pub(crate) fn new(config: &WebhookConfig, check: &mut Check<'_>) -> Option<Webhook> {
        let url = check
            .secret(
                "url",
                config.url.as_ref(),
                config.url_file.as_ref(),
                config.url_env.as_ref(),
            )
            .and_then(|url| check.http_url("url", url.expose(), true));
        let headers = headers(&config.headers, check);
        let timeout = check.timeout(config.timeout);
        Some(Webhook {
            target: HttpTarget {
                url: url?,
                url_is_secret: true,
                headers: headers?,
                timeout: timeout?,
            },
            max_alerts: config.max_alerts,
        })
    }

    pub(crate) async fn send(
        &self,
        client: &reqwest::Client,
        msg: &Message,
    ) -> Result<(), Failure> {
        self.target
            .post_json(client, &payload(msg, self.max_alerts))
            .await
    }
}

/// The configured headers, each value read from its source and marked sensitive.
fn headers(
    config: &BTreeMap<String, HeaderValueConfig>,
    check: &mut Check<'_>,
) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    let mut ok = true;
    for (name, value) in config {
        let field = format!("headers.{name}");
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            check.problem(&field, "is not a valid HTTP header name");
            ok = false;
            continue;
        };
        let Some(secret) = check.read_secret(&field, &value.0) else {
            ok = false;
            continue;
        };
        match HeaderValue::from_str(secret.expose()) {
            Ok(mut value) => {
                value.set_sensitive(true);
                headers.insert(header, value);
            }
            Err(_) => {
                check.problem(
                    &field,
                    "is not a valid HTTP header value (control characters?)",
                );
                ok = false;
            }
        }
    }
    ok.then_some(headers)
}

/// Alertmanager's webhook message (version 4).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    pub version: &'static str,
    pub group_key: String,
    pub truncated_alerts: usize,
    pub status: Status,
    pub receiver: String,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<WebhookAlert>,
}

/// One alert of a [`WebhookPayload`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert {
    pub status: Status,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

/// The webhook message for `msg`, with at most `max_alerts` alerts (0: all).
pub fn payload(msg: &Message, max_alerts: usize) -> WebhookPayload {
    let keep = if max_alerts == 0 {
        msg.alerts.len()
    } else {
        max_alerts.min(msg.alerts.len())
    };
    WebhookPayload {
        version: "4",
        group_key: msg.group_key.clone(),
        truncated_alerts: msg.alerts.len() - keep,
        status: msg.status(),
        receiver: msg.receiver.clone(),
        group_labels: msg.group_labels.clone(),
        common_labels: msg.common_labels(),
        common_annotations: msg.common_annotations(),
        external_url: msg.external_url.clone(),
        alerts: msg.alerts[..keep].iter().map(webhook_alert).collect(),
    }
}

fn webhook_alert(alert: &MessageAlert) -> WebhookAlert {
    WebhookAlert {
        status: alert.status,
        labels: alert.labels.clone(),
        annotations: alert.annotations.clone(),
        starts_at: format_rfc3339(alert.starts_at_ns),
        ends_at: alert
            .ends_at_ns
            .map_or_else(|| ZERO_TIME.to_owned(), format_rfc3339),
        generator_url: alert.generator_url.clone(),
        fingerprint: alert.fingerprint.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::notify::delivery::Retry;
    use crate::notify::testutil::{HttpServer, Reply, firing_message, receivers, resolved};

    #[test]
    fn payload_is_alertmanagers_webhook_message() {
        let body = serde_json::to_value(payload(&firing_message(), 0)).expect("json");
        assert_eq!(
            body,
            json!({
                "version": "4",
                "groupKey": "{}:{alertname=\"cpu_busy\"}",
                "truncatedAlerts": 0,
                "status": "firing",
                "receiver": "ops",
                "groupLabels": {"alertname": "cpu_busy"},
                "commonLabels": {"alertname": "cpu_busy", "host": "web1"},
                "commonAnnotations": {"runbook_url": "https://runbooks.example/cpu"},
                "externalURL": "https://outpost.example",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {"alertname": "cpu_busy", "cpu": "0", "host": "web1", "severity": "critical"},
                        "annotations": {
                            "description": "CPU 0 of web1 has been above 90% for 5 minutes",
                            "runbook_url": "https://runbooks.example/cpu",
                            "summary": "CPU 0 busy on web1"
                        },
                        "startsAt": "2023-11-14T22:13:20Z",
                        "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "https://outpost.example/alerts/a1",
                        "fingerprint": "a1"
                    },
                    {
                        "status": "firing",
                        "labels": {"alertname": "cpu_busy", "cpu": "1", "host": "web1", "severity": "high"},
                        "annotations": {
                            "description": "CPU 1 of web1 has been above 90% for 5 minutes",
                            "runbook_url": "https://runbooks.example/cpu",
                            "summary": "CPU 1 busy on web1"
                        },
                        "startsAt": "2023-11-14T22:13:50Z",
                        "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "https://outpost.example/alerts/a2",
                        "fingerprint": "a2"
                    }
                ]
            })
        );
    }

    #[test]
    fn resolved_alerts_carry_their_end_and_max_alerts_truncates() {
        let body = serde_json::to_value(payload(&resolved(&firing_message()), 1)).expect("json");
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["truncatedAlerts"], 1);
        assert_eq!(body["alerts"].as_array().map(Vec::len), Some(1));
        assert_eq!(body["alerts"][0]["status"], "resolved");
        assert_eq!(body["alerts"][0]["endsAt"], "2023-11-14T22:23:20Z");
        // Common labels are those of all alerts, as Alertmanager computes them before truncating.
        assert_eq!(
            body["commonLabels"],
            json!({"alertname": "cpu_busy", "host": "web1"})
        );
        assert_eq!(payload(&firing_message(), 5).truncated_alerts, 0);
    }

    fn config(base: &str, extra: &str) -> String {
        format!(
            r#"
            [[receivers]]
            name = "ops"
            webhook = {{ url = "{base}/hook?token=t0ps3cret", headers = {{ X-Team = "ops", Authorization = "Bearer abc123" }}{extra} }}
            "#
        )
    }

    #[tokio::test]
    async fn delivers_the_payload_with_the_headers() {
        let mut server = HttpServer::start(|_| Reply::Status(200)).await;
        let receivers = receivers(&config(&server.base, ""));
        let msg = firing_message();
        receivers.deliver(&msg).await.expect("delivered");
        let request = server.next().await;
        assert_eq!(request.path, "/hook");
        assert_eq!(request.headers["x-team"], "ops");
        assert_eq!(request.headers["authorization"], "Bearer abc123");
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(
            request.body,
            serde_json::to_value(payload(&msg, 0)).expect("json")
        );
    }

    #[tokio::test]
    async fn server_errors_and_throttling_are_retryable_client_errors_not() {
        let replies = [
            Reply::Status(500),
            Reply::RetryAfter(429, "7"),
            Reply::Status(400),
        ];
        let mut server = HttpServer::start(move |n| replies[n.min(2)].clone()).await;
        let receivers = receivers(&config(&server.base, ""));
        let msg = firing_message();

        let e = receivers.deliver(&msg).await.expect_err("500 fails");
        assert_eq!(e.retry(), Retry::Backoff);
        assert_eq!(e.receiver(), "ops");
        assert!(e.to_string().contains("500 Internal Server Error"), "{e}");
        let e = receivers.deliver(&msg).await.expect_err("429 fails");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        let e = receivers.deliver(&msg).await.expect_err("400 fails");
        assert_eq!(e.retry(), Retry::Never);
        assert!(!e.is_retryable());
        for _ in 0..3 {
            server.next().await;
        }
    }

    #[tokio::test]
    async fn no_answer_within_the_timeout_is_retryable() {
        let server = HttpServer::start(|_| Reply::Hang).await;
        let receivers = receivers(&config(&server.base, r#", timeout = "200ms""#));
        let e = receivers
            .deliver(&firing_message())
            .await
            .expect_err("times out");
        assert_eq!(e.retry(), Retry::Backoff);
        assert_eq!(e.to_string(), "receiver `ops`: no answer within 200ms");
    }

    #[tokio::test]
    async fn errors_never_show_the_url_or_headers() {
        // Nothing listens on the port once the probe listener is gone.
        let port = crate::notify::testutil::free_port();
        let receivers = receivers(&config(&format!("http://127.0.0.1:{port}"), ""));
        let e = receivers
            .deliver(&firing_message())
            .await
            .expect_err("refused");
        assert!(e.is_retryable());
        let text = format!("{e} {e:?}");
        assert!(text.contains("cannot connect"), "{text}");
        for secret in ["t0ps3cret", "127.0.0.1", "abc123"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(!format!("{receivers:?}").contains("t0ps3cret"));
        assert!(!format!("{receivers:?}").contains("abc123"));
    }
}
