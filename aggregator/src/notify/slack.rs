//! The Slack receiver: posts to an incoming webhook a message whose `text` is the title
//! (`[FIRING:2] cpu_busy (host=web1)`, what notifications show) and whose blocks summarise each
//! alert: its summary, host, severity, since when, and links to its runbook and to Outpost.
//!
//! Slack's limits shape it: a header's text is at most 150 characters, a section's 3000, and a
//! message at most 50 blocks, so the first [`MAX_ALERT_BLOCKS`] alerts (firing first) get a
//! section each and a last line counts the others. Text is `mrkdwn`, in which `&`, `<` and `>`
//! are escaped. The incoming webhook's URL is the credential: it is a secret.

use std::path::PathBuf;
use std::time::Duration;

use outpost_common::time::format_rfc3339;
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::Check;
use super::delivery::{Failure, HttpTarget, truncate_chars};
use super::message::{Message, MessageAlert, Status};
use super::secret::Secret;
use super::text;

/// Alerts shown as their own section; the rest are counted.
pub const MAX_ALERT_BLOCKS: usize = 20;

const HEADER_MAX_CHARS: usize = 150;
const SECTION_MAX_CHARS: usize = 3000;
/// An alert's summary is cut to this before it is escaped and placed in its section, so that a
/// long one leaves the section's links whole.
const SUMMARY_MAX_CHARS: usize = 500;

/// `slack = { … }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming webhook's URL, a secret: give one of `url`, `url_file`, `url_env`.
    pub url: Option<Secret>,
    pub url_file: Option<PathBuf>,
    pub url_env: Option<String>,
    /// Post to this channel instead of the webhook's own (where the workspace allows it).
    pub channel: Option<String>,
    /// Post under this name instead of the app's.
    pub username: Option<String>,
    /// How long Slack may take to answer (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// A checked Slack receiver.
#[derive(Debug)]
pub(crate) struct Slack {
    target: HttpTarget,
    channel: Option<String>,
    username: Option<String>,
}

impl Slack {
    pub(crate) fn new(config: &SlackConfig, check: &mut Check<'_>) -> Option<Slack> {
        let url = check
            .secret(
                "url",
                config.url.as_ref(),
                config.url_file.as_ref(),
                config.url_env.as_ref(),
            )
            .and_then(|url| check.http_url("url", url.expose(), true));
        let timeout = check.timeout(config.timeout);
        Some(Slack {
            target: HttpTarget {
                url: url?,
                url_is_secret: true,
                headers: Default::default(),
                timeout: timeout?,
            },
            channel: config.channel.clone(),
            username: config.username.clone(),
        })
    }

    pub(crate) async fn send(
        &self,
        client: &reqwest::Client,
        msg: &Message,
    ) -> Result<(), Failure> {
        let body = payload(msg, self.channel.as_deref(), self.username.as_deref());
        self.target.post_json(client, &body).await
    }
}

/// The incoming-webhook message for `msg`.
pub fn payload(msg: &Message, channel: Option<&str>, username: Option<&str>) -> Value {
    let title = text::title(msg);
    let mut alerts: Vec<&MessageAlert> = msg.alerts.iter().collect();
    // Firing first; otherwise in the message's order (by labels).
    alerts.sort_by_key(|a| a.status == Status::Resolved);

    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate_chars(&title, HEADER_MAX_CHARS)},
    })];
    blocks.extend(alerts.iter().take(MAX_ALERT_BLOCKS).map(|alert| {
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate_chars(&alert_mrkdwn(alert), SECTION_MAX_CHARS)},
        })
    }));
    if alerts.len() > MAX_ALERT_BLOCKS {
        blocks.push(context(&format!(
            "…and {} more alerts",
            alerts.len() - MAX_ALERT_BLOCKS
        )));
    }
    let outpost = if msg.external_url.is_empty() {
        "Outpost".to_owned()
    } else {
        link(&msg.external_url, "Outpost")
    };
    blocks.push(context(&format!(
        "{outpost} · receiver {}",
        escape(&msg.receiver)
    )));

    let mut body = json!({"text": escape(&title), "blocks": blocks});
    if let Some(channel) = channel {
        body["channel"] = json!(channel);
    }
    if let Some(username) = username {
        body["username"] = json!(username);
    }
    body
}

/// One alert as a section's text: status, summary, host, severity, time, links.
fn alert_mrkdwn(alert: &MessageAlert) -> String {
    let (icon, when) = match (alert.status, alert.ends_at_ns) {
        (Status::Resolved, Some(ends)) => (
            ":large_green_circle:",
            format!("resolved {}", format_rfc3339(ends)),
        ),
        (Status::Resolved, None) => (":large_green_circle:", "resolved".to_owned()),
        (Status::Firing, _) => (
            ":red_circle:",
            format!("since {}", format_rfc3339(alert.starts_at_ns)),
        ),
    };
    let mut facts = Vec::new();
    for label in ["host", "severity"] {
        if let Some(value) = alert.labels.get(label) {
            facts.push(format!("{label} *{}*", escape(value)));
        }
    }
    facts.push(when);
    let mut links = Vec::new();
    if let Some(runbook) = text::runbook_url(alert) {
        links.push(link(runbook, "Runbook"));
    }
    if !alert.generator_url.is_empty() {
        links.push(link(&alert.generator_url, "Details"));
    }
    let mut mrkdwn = format!(
        "{icon} *{}*\n{}",
        escape(&truncate_chars(
            &text::alert_summary(alert),
            SUMMARY_MAX_CHARS
        )),
        facts.join(" · ")
    );
    if !links.is_empty() {
        mrkdwn.push('\n');
        mrkdwn.push_str(&links.join(" · "));
    }
    mrkdwn
}

fn context(mrkdwn: &str) -> Value {
    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn}]})
}

/// `<url|text>`; a `|` in the URL would end it early, so it is percent-encoded.
fn link(url: &str, label: &str) -> String {
    format!("<{}|{}>", escape(&url.replace('|', "%7C")), escape(label))
}

/// Escapes the three characters `mrkdwn` gives meaning to.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testutil::{HttpServer, Reply, firing_message, receivers, resolved};

    #[test]
    fn payload_has_a_title_and_a_section_per_alert() {
        let mut msg = firing_message();
        msg.alerts[1].status = Status::Resolved;
        msg.alerts[1].ends_at_ns = Some(1_700_000_600 * 1_000_000_000);
        msg.alerts[1]
            .annotations
            .insert("summary".into(), "CPU <1> & more".into());
        let body = payload(&msg, Some("#alerts"), Some("outpost"));
        assert_eq!(
            body,
            json!({
                "text": "[FIRING:1] cpu_busy (host=web1)",
                "channel": "#alerts",
                "username": "outpost",
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": "[FIRING:1] cpu_busy (host=web1)"}},
                    {"type": "section", "text": {"type": "mrkdwn", "text":
                        ":red_circle: *CPU 0 busy on web1*\nhost *web1* · severity *critical* · since 2023-11-14T22:13:20Z\n\
                         <https://runbooks.example/cpu|Runbook> · <https://outpost.example/alerts/a1|Details>"}},
                    {"type": "section", "text": {"type": "mrkdwn", "text":
                        ":large_green_circle: *CPU &lt;1&gt; &amp; more*\nhost *web1* · severity *high* · resolved 2023-11-14T22:23:20Z\n\
                         <https://runbooks.example/cpu|Runbook> · <https://outpost.example/alerts/a2|Details>"}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "<https://outpost.example|Outpost> · receiver ops"}]}
                ]
            })
        );
    }

    #[test]
    fn many_alerts_are_counted_and_long_texts_cut() {
        let mut msg = firing_message();
        let template = msg.alerts[0].clone();
        msg.alerts = (0..MAX_ALERT_BLOCKS + 5)
            .map(|i| {
                let mut a = template.clone();
                a.labels.insert("cpu".into(), i.to_string());
                a.annotations.insert("summary".into(), "x".repeat(4000));
                a
            })
            .collect();
        msg.group_labels.insert("long".into(), "y".repeat(200));
        let body = payload(&msg, None, None);
        let blocks = body["blocks"].as_array().expect("blocks");
        assert_eq!(blocks.len(), 1 + MAX_ALERT_BLOCKS + 2);
        assert!(body.get("channel").is_none() && body.get("username").is_none());
        let header = blocks[0]["text"]["text"].as_str().expect("header");
        assert_eq!(header.chars().count(), HEADER_MAX_CHARS);
        assert!(header.ends_with('…'));
        let section = blocks[1]["text"]["text"].as_str().expect("section");
        let summary = format!("*{}…*", "x".repeat(SUMMARY_MAX_CHARS - 1));
        assert!(section.contains(&summary), "{section}");
        assert!(section.ends_with("|Details>"), "{section}");
        assert_eq!(
            blocks[MAX_ALERT_BLOCKS + 1]["elements"][0]["text"],
            "…and 5 more alerts"
        );
    }

    #[tokio::test]
    async fn delivers_to_the_webhook_and_hides_its_url() {
        let mut server = HttpServer::start(|n| Reply::Status(if n == 0 { 200 } else { 404 })).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let url_file = dir.path().join("slack-url");
        let url = format!("{}/services/T000/B000/XXXXsecretXXXX", server.base);
        std::fs::write(&url_file, format!("{url}\n")).expect("write");
        let receivers = receivers(&format!(
            r##"
            [[receivers]]
            name = "chat"
            slack = {{ url_file = "{}", channel = "#alerts" }}
            "##,
            url_file.display()
        ));
        let mut msg = firing_message();
        msg.receiver = "chat".into();
        receivers.deliver(&msg).await.expect("delivered");
        let request = server.next().await;
        assert_eq!(request.path, "/services/T000/B000/XXXXsecretXXXX");
        assert_eq!(request.body, payload(&msg, Some("#alerts"), None));

        let e = receivers
            .deliver(&resolved(&msg))
            .await
            .expect_err("404 fails");
        assert!(!e.is_retryable());
        assert!(
            e.to_string()
                .starts_with("receiver `chat`: answered 404 Not Found"),
            "{e}"
        );
        assert!(!format!("{e:?}").contains("XXXXsecretXXXX"));
        assert!(!format!("{receivers:?}").contains("XXXXsecretXXXX"));
        server.next().await;
    }
}
