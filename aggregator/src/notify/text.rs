//! The words every human-facing receiver shares, so an e-mail's subject, a Slack message's text
//! and a PagerDuty summary read the same: a title in Alertmanager's style,
//! `[FIRING:2] cpu_busy (host=web1)`, and a plain-text account of each alert.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use outpost_common::time::format_rfc3339;

use super::message::{Message, MessageAlert, Status};

/// `[FIRING:<n firing>] <group label values> (<other common labels>)`, or `[RESOLVED] …` when
/// all resolved, as Alertmanager's default subject; ` [escalation n]` is added for an
/// escalation's notification.
pub fn title(msg: &Message) -> String {
    let mut title = match msg.status() {
        Status::Firing => format!("[FIRING:{}]", msg.counts().0),
        Status::Resolved => "[RESOLVED]".to_owned(),
    };
    let common = msg.common_labels();
    let grouped: Vec<&str> = msg.group_labels.values().map(String::as_str).collect();
    title.push(' ');
    if grouped.is_empty() {
        title.push_str(common.get("alertname").map_or("alerts", String::as_str));
    } else {
        title.push_str(&grouped.join(" "));
    }
    let others: Vec<String> = common
        .iter()
        .filter(|(k, _)| !msg.group_labels.contains_key(*k))
        .filter(|(k, _)| !(msg.group_labels.is_empty() && *k == "alertname"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !others.is_empty() {
        let _ = write!(title, " ({})", others.join(" "));
    }
    if msg.escalation > 0 {
        let _ = write!(title, " [escalation {}]", msg.escalation);
    }
    title
}

/// One line saying what an alert is about: its `summary` annotation, or else its rule and host.
pub fn alert_summary(alert: &MessageAlert) -> String {
    if let Some(summary) = alert.annotations.get("summary") {
        return summary.clone();
    }
    let rule = alert
        .labels
        .get("alertname")
        .map_or("alert", String::as_str);
    match alert.labels.get("host") {
        Some(host) => format!("{rule} on {host}"),
        None => rule.to_owned(),
    }
}

/// The alert's `runbook_url` annotation when it is an http(s) URL, for receivers that link it.
pub fn runbook_url(alert: &MessageAlert) -> Option<&str> {
    alert
        .annotations
        .get("runbook_url")
        .map(String::as_str)
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
}

/// An alert in plain text: its summary and times, then its labels, annotations and value.
///
/// ```text
/// CPU busy on web1
///   started 2023-11-14T22:13:20Z
///   labels: alertname=cpu_busy host=web1 severity=high
///   summary: CPU busy on web1
///   value: 97.5
///   source: https://outpost.example/alerts/1
/// ```
pub fn alert_text(alert: &MessageAlert) -> String {
    let mut text = alert_summary(alert);
    let _ = write!(text, "\n  started {}", format_rfc3339(alert.starts_at_ns));
    if let Some(ends) = alert.ends_at_ns {
        let _ = write!(text, ", resolved {}", format_rfc3339(ends));
    }
    let _ = write!(text, "\n  labels: {}", pairs(&alert.labels));
    for (name, value) in &alert.annotations {
        let _ = write!(text, "\n  {name}: {value}");
    }
    if let Some(value) = alert.value {
        let _ = write!(text, "\n  value: {value}");
    }
    if !alert.generator_url.is_empty() {
        let _ = write!(text, "\n  source: {}", alert.generator_url);
    }
    text
}

/// The accounts of the alerts with `status`, a blank line between them.
pub fn alerts_text(msg: &Message, status: Status) -> String {
    msg.alerts
        .iter()
        .filter(|a| a.status == status)
        .map(alert_text)
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// `k=v k=v`, in the map's order.
pub fn pairs(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testutil::{firing_message, resolved};

    #[test]
    fn title_follows_alertmanager_subject() {
        let mut msg = firing_message();
        assert_eq!(title(&msg), "[FIRING:2] cpu_busy (host=web1)");
        msg.alerts[0].status = Status::Resolved;
        assert_eq!(title(&msg), "[FIRING:1] cpu_busy (host=web1)");
        let mut msg = resolved(&firing_message());
        assert_eq!(title(&msg), "[RESOLVED] cpu_busy (host=web1)");
        msg.group_labels.clear();
        msg.escalation = 2;
        assert_eq!(
            title(&msg),
            "[RESOLVED] cpu_busy (host=web1) [escalation 2]"
        );
    }

    #[test]
    fn alert_text_lists_times_labels_and_annotations() {
        let msg = resolved(&firing_message());
        assert_eq!(
            alert_text(&msg.alerts[0]),
            "CPU 0 busy on web1\n  started 2023-11-14T22:13:20Z, resolved 2023-11-14T22:23:20Z\n  \
             labels: alertname=cpu_busy cpu=0 host=web1 severity=critical\n  \
             description: CPU 0 of web1 has been above 90% for 5 minutes\n  \
             runbook_url: https://runbooks.example/cpu\n  summary: CPU 0 busy on web1\n  \
             value: 97.5\n  source: https://outpost.example/alerts/a1"
        );
        let mut bare = msg.alerts[1].clone();
        bare.annotations.clear();
        assert_eq!(alert_summary(&bare), "cpu_busy on web1");
        assert_eq!(runbook_url(&bare), None);
    }
}
