//! A notification as the outbox keeps it and a receiver sends it: one group of alerts, for one
//! receiver, at one moment. It is written to the state store before any attempt to send it, so
//! it carries everything a receiver needs and nothing that is read again later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether an alert (or a whole message) is firing or resolved, as Alertmanager names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

/// One alert of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageAlert {
    /// Stable over the alert's life: a hash of its labels.
    pub fingerprint: String,
    pub status: Status,
    /// Includes `alertname` (the rule) and `severity`, and `host` for per-host rules.
    pub labels: BTreeMap<String, String>,
    /// Templated already: `summary`, `description`, `runbook_url` and what else the rule says.
    pub annotations: BTreeMap<String, String>,
    /// When the alert started firing.
    pub starts_at_ns: i64,
    /// When it resolved; `None` while it fires.
    pub ends_at_ns: Option<i64>,
    /// The value that made it fire, when the rule has one.
    pub value: Option<f64>,
    /// A link to the alert in the aggregator's API or console.
    pub generator_url: String,
}

/// One notification: a group's alerts for a receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The receiver's name, as the configuration gives it.
    pub receiver: String,
    /// Identifies the group over its life (the route and the group's label values); receivers
    /// that deduplicate (PagerDuty) key on it.
    pub group_key: String,
    pub group_labels: BTreeMap<String, String>,
    /// The alerts, in order of their labels.
    pub alerts: Vec<MessageAlert>,
    /// The aggregator's address for people (`[alerting] external_url`).
    pub external_url: String,
    /// 0 for a route's own notification; n for the n-th stage of an escalation, sent because
    /// nobody acknowledged the alerts in time.
    pub escalation: u32,
    /// When the notification was made.
    pub created_ns: i64,
}

impl Message {
    /// Firing if any alert fires, resolved when all resolved.
    pub fn status(&self) -> Status {
        if self.alerts.iter().any(|a| a.status == Status::Firing) {
            Status::Firing
        } else {
            Status::Resolved
        }
    }

    /// Labels every alert has with the same value.
    pub fn common_labels(&self) -> BTreeMap<String, String> {
        common(self.alerts.iter().map(|a| &a.labels))
    }

    /// Annotations every alert has with the same value.
    pub fn common_annotations(&self) -> BTreeMap<String, String> {
        common(self.alerts.iter().map(|a| &a.annotations))
    }

    /// The alerts that fire, and those that resolved.
    pub fn counts(&self) -> (usize, usize) {
        let firing = self
            .alerts
            .iter()
            .filter(|a| a.status == Status::Firing)
            .count();
        (firing, self.alerts.len() - firing)
    }
}

fn common<'a>(
    mut maps: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let Some(first) = maps.next() else {
        return BTreeMap::new();
    };
    let mut shared = first.clone();
    for map in maps {
        shared.retain(|k, v| map.get(k) == Some(v));
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(fp: &str, status: Status, labels: &[(&str, &str)]) -> MessageAlert {
        MessageAlert {
            fingerprint: fp.to_owned(),
            status,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            annotations: BTreeMap::new(),
            starts_at_ns: 1,
            ends_at_ns: None,
            value: None,
            generator_url: String::new(),
        }
    }

    #[test]
    fn status_and_common_labels_follow_the_alerts() {
        let mut m = Message {
            receiver: "ops".into(),
            group_key: "{}:{}".into(),
            group_labels: BTreeMap::new(),
            alerts: vec![
                alert(
                    "a",
                    Status::Resolved,
                    &[("alertname", "cpu"), ("host", "a")],
                ),
                alert("b", Status::Firing, &[("alertname", "cpu"), ("host", "b")]),
            ],
            external_url: String::new(),
            escalation: 0,
            created_ns: 0,
        };
        assert_eq!(m.status(), Status::Firing);
        assert_eq!(m.counts(), (1, 1));
        assert_eq!(
            m.common_labels().into_iter().collect::<Vec<_>>(),
            vec![("alertname".to_owned(), "cpu".to_owned())]
        );
        m.alerts[1].status = Status::Resolved;
        assert_eq!(m.status(), Status::Resolved);
    }
}
