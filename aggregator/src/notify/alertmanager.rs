//! The Alertmanager receiver: forwards a message's alerts to an Alertmanager, which then groups,
//! silences and notifies by its own configuration. It POSTs to `<url>/api/v2/alerts` a JSON array
//! of postable alerts, as Prometheus does:
//!
//! ```json
//! [ { "labels": {…}, "annotations": {…}, "startsAt": "2023-11-14T22:13:20Z",
//!     "endsAt": "2023-11-14T22:23:20Z", "generatorURL": "…" } ]
//! ```
//!
//! A resolved alert's `endsAt` is when it resolved, which tells Alertmanager it is over. A firing
//! alert's `endsAt` says until when Alertmanager should believe it without hearing again:
//! Prometheus sends its send time plus four times its resend interval. Outpost sends again only
//! when the route notifies (group interval, repeat interval), so the default leaves `endsAt` out
//! and Alertmanager applies its `resolve_timeout` (5 minutes by default); set `valid_for` to
//! about four times the route's `repeat_interval` to keep the alerts active between
//! notifications.

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_common::time::{duration_ns, format_rfc3339};
use serde::{Deserialize, Serialize};

use super::config::Check;
use super::delivery::{Failure, HttpTarget};
use super::message::{Message, MessageAlert, Status};

/// The path alerts are posted to, below the configured URL.
pub const ALERTS_PATH: &str = "api/v2/alerts";

/// `alertmanager = { … }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// The Alertmanager's address, with its route prefix if it has one
    /// (`http://127.0.0.1:9093`, `https://am.example/alertmanager`).
    pub url: String,
    /// How long a firing alert stays active in Alertmanager without another notification
    /// (its `endsAt`). Unset: Alertmanager's `resolve_timeout`.
    #[serde(default, with = "humantime_serde")]
    pub valid_for: Option<Duration>,
    /// How long the Alertmanager may take to answer (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// A checked Alertmanager receiver.
#[derive(Debug)]
pub(crate) struct Alertmanager {
    target: HttpTarget,
    valid_for: Option<Duration>,
}

impl Alertmanager {
    pub(crate) fn new(config: &AlertmanagerConfig, check: &mut Check<'_>) -> Option<Alertmanager> {
        let url = check
            .http_url("url", &config.url, false)
            .and_then(|mut url| {
                if url.query().is_some() {
                    check.problem("url", format!("`{}` must not have a query", config.url));
                    return None;
                }
                let path = format!("{}/{ALERTS_PATH}", url.path().trim_end_matches('/'));
                url.set_path(&path);
                Some(url)
            });
        if config.valid_for.is_some_and(|d| d.is_zero()) {
            check.problem("valid_for", "must be more than zero");
        }
        let timeout = check.timeout(config.timeout);
        Some(Alertmanager {
            target: HttpTarget {
                url: url?,
                url_is_secret: false,
                headers: Default::default(),
                timeout: timeout?,
            },
            valid_for: config.valid_for.filter(|d| !d.is_zero()),
        })
    }

    pub(crate) async fn send(
        &self,
        client: &reqwest::Client,
        msg: &Message,
    ) -> Result<(), Failure> {
        let alerts = payload(msg, self.valid_for, outpost_common::time::now_ns());
        self.target.post_json(client, &alerts).await
    }
}

/// An alert as Alertmanager's API v2 takes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// Left out when empty: the API wants a URI there.
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
}

/// The alerts of `msg` to post at `now_ns`; firing ones end `valid_for` after `now_ns`, or
/// carry no end when it is `None`.
pub fn payload(msg: &Message, valid_for: Option<Duration>, now_ns: i64) -> Vec<PostableAlert> {
    msg.alerts
        .iter()
        .map(|alert| postable(alert, msg.created_ns, valid_for, now_ns))
        .collect()
}

fn postable(
    alert: &MessageAlert,
    created_ns: i64,
    valid_for: Option<Duration>,
    now_ns: i64,
) -> PostableAlert {
    let ends_at_ns = match alert.status {
        // A resolved alert always has its end; the message's time stands in should it not.
        Status::Resolved => Some(alert.ends_at_ns.unwrap_or(created_ns)),
        Status::Firing => valid_for.map(|d| now_ns.saturating_add(duration_ns(d))),
    };
    PostableAlert {
        labels: alert.labels.clone(),
        annotations: alert.annotations.clone(),
        starts_at: format_rfc3339(alert.starts_at_ns),
        ends_at: ends_at_ns.map(format_rfc3339),
        generator_url: alert.generator_url.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use serde_json::{Value, json};

    use super::*;
    use crate::notify::testutil::{
        Process, find_program, firing_message, free_port, receivers, resolved, wait_for,
    };

    const S: i64 = 1_000_000_000;

    #[test]
    fn firing_alerts_end_only_when_valid_for_says() {
        let msg = firing_message();
        let body = serde_json::to_value(payload(&msg, None, 1_700_000_100 * S)).expect("json");
        assert_eq!(
            body[0],
            json!({
                "labels": {"alertname": "cpu_busy", "cpu": "0", "host": "web1", "severity": "critical"},
                "annotations": {
                    "description": "CPU 0 of web1 has been above 90% for 5 minutes",
                    "runbook_url": "https://runbooks.example/cpu",
                    "summary": "CPU 0 busy on web1"
                },
                "startsAt": "2023-11-14T22:13:20Z",
                "generatorURL": "https://outpost.example/alerts/a1"
            })
        );
        assert_eq!(body.as_array().map(Vec::len), Some(2));
        let ends = payload(&msg, Some(Duration::from_secs(3600)), 1_700_000_100 * S);
        assert_eq!(ends[1].ends_at.as_deref(), Some("2023-11-14T23:15:00Z"));
    }

    #[test]
    fn resolved_alerts_end_when_they_resolved() {
        let mut msg = resolved(&firing_message());
        msg.alerts[1].generator_url.clear();
        let alerts = payload(&msg, Some(Duration::from_secs(3600)), 1_800_000_000 * S);
        assert_eq!(alerts[0].ends_at.as_deref(), Some("2023-11-14T22:23:20Z"));
        let second = serde_json::to_value(&alerts[1]).expect("json");
        assert!(second.get("generatorURL").is_none());
    }

    #[test]
    fn the_alerts_path_goes_below_the_configured_prefix() {
        for (url, expected) in [
            (
                "http://127.0.0.1:9093",
                "http://127.0.0.1:9093/api/v2/alerts",
            ),
            (
                "https://am.example/alertmanager/",
                "https://am.example/alertmanager/api/v2/alerts",
            ),
        ] {
            let r = receivers(&format!(
                "[[receivers]]\nname = \"am\"\nalertmanager = {{ url = \"{url}\" }}"
            ));
            assert!(format!("{r:?}").contains(expected), "{r:?}");
        }
    }

    /// A real Alertmanager on loopback with one receiver that sends nothing.
    struct RealAlertmanager {
        base: String,
        http: reqwest::Client,
        _process: Process,
        _dir: tempfile::TempDir,
    }

    impl RealAlertmanager {
        async fn start() -> RealAlertmanager {
            let program = find_program("prometheus-alertmanager").unwrap_or_else(|| {
                panic!(
                    "prometheus-alertmanager is not installed: run scripts/test, which installs \
                     the Debian package prometheus-alertmanager"
                )
            });
            let dir = tempfile::tempdir().expect("tempdir");
            let config = dir.path().join("alertmanager.yml");
            std::fs::write(
                &config,
                "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n",
            )
            .expect("write the Alertmanager configuration");
            let port = free_port();
            let mut process = Process::spawn(
                Command::new(program)
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.path={}",
                        dir.path().join("data").display()
                    ))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg("--cluster.listen-address="),
                &dir.path().join("alertmanager.log"),
            );
            let base = format!("http://127.0.0.1:{port}");
            let http = reqwest::Client::new();
            wait_for("Alertmanager to be ready", || {
                process.assert_running();
                let (http, url) = (http.clone(), format!("{base}/-/ready"));
                async move {
                    let response = http.get(url).send().await.ok()?;
                    response.status().is_success().then_some(())
                }
            })
            .await;
            RealAlertmanager {
                base,
                http,
                _process: process,
                _dir: dir,
            }
        }

        /// The active alerts named `cpu_busy`, as `GET /api/v2/alerts` lists them.
        async fn cpu_busy_alerts(&self) -> Option<Vec<Value>> {
            let response = self
                .http
                .get(format!("{}/api/v2/alerts", self.base))
                .query(&[("filter", "alertname=\"cpu_busy\"")])
                .send()
                .await
                .ok()?;
            response.json::<Vec<Value>>().await.ok()
        }
    }

    #[tokio::test]
    async fn forwarded_alerts_appear_in_a_real_alertmanager_and_resolve() {
        let am = RealAlertmanager::start().await;
        let receivers = receivers(&format!(
            "[[receivers]]\nname = \"am\"\nalertmanager = {{ url = \"{}\", valid_for = \"1h\" }}",
            am.base
        ));
        let now = outpost_common::time::now_ns();
        let mut msg = firing_message();
        msg.receiver = "am".into();
        for alert in &mut msg.alerts {
            alert.starts_at_ns = now - 60 * S;
        }
        receivers.deliver(&msg).await.expect("forwarded");

        let alerts = wait_for("both alerts to be active", || async {
            am.cpu_busy_alerts()
                .await
                .filter(|a| a.len() == 2 && a.iter().all(|a| a["status"]["state"] == "active"))
        })
        .await;
        let mut cpus: Vec<&str> = alerts
            .iter()
            .map(|a| a["labels"]["cpu"].as_str().unwrap_or_default())
            .collect();
        cpus.sort_unstable();
        assert_eq!(cpus, ["0", "1"]);
        for alert in &alerts {
            assert_eq!(alert["labels"]["alertname"], "cpu_busy");
            assert_eq!(alert["labels"]["host"], "web1");
            assert_eq!(
                alert["annotations"]["runbook_url"],
                "https://runbooks.example/cpu"
            );
            assert_eq!(alert["status"]["state"], "active");
            // valid_for = 1h: Alertmanager keeps them well past its 5-minute resolve_timeout.
            let ends = alert["endsAt"].as_str().unwrap_or_default();
            let ends = humantime::parse_rfc3339_weak(&ends[..19]).expect("endsAt is RFC 3339");
            let ends_ns = outpost_common::time::to_ns(ends);
            assert!(ends_ns > now + 50 * 60 * S, "{alert}");
        }

        let mut done = resolved(&msg);
        for alert in &mut done.alerts {
            alert.ends_at_ns = Some(outpost_common::time::now_ns() - S);
        }
        receivers
            .deliver(&done)
            .await
            .expect("resolution forwarded");
        wait_for("the alerts to be resolved", || async {
            am.cpu_busy_alerts().await.filter(Vec::is_empty)
        })
        .await;
    }
}
