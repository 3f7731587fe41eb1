//! The configured receivers, checked at load and ready to send.

use std::collections::{BTreeMap, BTreeSet};

use super::alertmanager::Alertmanager;
use super::config::{Check, ConfigProblem, ReceiverConfig, ReceiversError};
use super::delivery::{DeliveryError, Failure};
use super::email::Email;
use super::message::Message;
use super::pagerduty::PagerDuty;
use super::slack::Slack;
use super::webhook::Webhook;

/// Every configured receiver by name, and the one HTTP client they share (rustls with ring and
/// the webpki roots; redirects are not followed, so a moved endpoint is a clear error rather than
/// a POST silently turned into a GET).
///
/// Its `Debug` shows no secret.
#[derive(Debug)]
pub struct Receivers {
    http: reqwest::Client,
    receivers: BTreeMap<String, Receiver>,
}

#[derive(Debug)]
struct Receiver {
    kind: Kind,
    /// Kept out of every error message (see [`DeliveryError`]). Not shown by `Debug`.
    secrets: Secrets,
}

#[derive(Debug)]
enum Kind {
    Webhook(Webhook),
    Slack(Slack),
    PagerDuty(PagerDuty),
    Email(Email),
    Alertmanager(Alertmanager),
}

/// A receiver's secret values, for scrubbing messages.
struct Secrets(Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secrets>", self.0.len())
    }
}

impl Receivers {
    /// Checks the receivers and reads their secrets (files now, environment variables from the
    /// process's environment). Every problem is reported, each naming its receiver and field.
    ///
    /// Needs no async runtime: call it while loading the configuration.
    pub fn from_config(configs: &[ReceiverConfig]) -> Result<Receivers, ReceiversError> {
        Receivers::from_config_with_env(configs, &|name| std::env::var(name).ok())
    }

    /// [`Receivers::from_config`] with `env` looking up environment variables.
    pub fn from_config_with_env(
        configs: &[ReceiverConfig],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Receivers, ReceiversError> {
        let mut problems = Vec::new();
        let mut receivers = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for config in configs {
            let name = config.name.as_str();
            let entry_problem = |field: Option<&str>, message: String| ConfigProblem {
                receiver: Some(name.to_owned()),
                field: field.map(str::to_owned),
                message,
            };
            if name.trim().is_empty() {
                problems.push(ConfigProblem {
                    receiver: None,
                    field: None,
                    message: "a receiver has an empty `name`".to_owned(),
                });
                continue;
            }
            if !seen.insert(name) {
                problems.push(entry_problem(
                    Some("name"),
                    "another receiver has the same name".to_owned(),
                ));
                continue;
            }
            let kinds = config.kinds();
            let [table] = kinds[..] else {
                let message = if kinds.is_empty() {
                    "says nowhere to send: give one of `webhook`, `slack`, `pagerduty`, `email` \
                     or `alertmanager`"
                        .to_owned()
                } else {
                    format!(
                        "gives {}: a receiver sends one way only",
                        kinds.join(" and ")
                    )
                };
                problems.push(entry_problem(None, message));
                continue;
            };
            let mut check = Check::new(name, table, env);
            let kind = build(config, &mut check);
            problems.append(&mut check.problems);
            if let Some(kind) = kind {
                let secrets = Secrets(std::mem::take(&mut check.secrets));
                receivers.insert(name.to_owned(), Receiver { kind, secrets });
            }
        }
        if !problems.is_empty() {
            return Err(ReceiversError(problems));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("outpost-aggregator/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                ReceiversError(vec![ConfigProblem {
                    receiver: None,
                    field: None,
                    message: format!("cannot set up the HTTP client for receivers: {e}"),
                }])
            })?;
        Ok(Receivers { http, receivers })
    }

    /// The receivers' names, in order; routes may name only these.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.receivers.keys().map(String::as_str)
    }

    /// Whether a receiver of this name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.receivers.contains_key(name)
    }

    /// Sends `msg` to its receiver (`msg.receiver`), once. The error says whether to try again
    /// and when (see [`DeliveryError::retry`]); a receiver that is no longer configured is a
    /// permanent failure.
    pub async fn deliver(&self, msg: &Message) -> Result<(), DeliveryError> {
        let Some(receiver) = self.receivers.get(&msg.receiver) else {
            let failure = Failure::permanent("no receiver of this name is configured");
            return Err(DeliveryError::new(&msg.receiver, failure, &[]));
        };
        let result = match &receiver.kind {
            Kind::Webhook(r) => r.send(&self.http, msg).await,
            Kind::Slack(r) => r.send(&self.http, msg).await,
            Kind::PagerDuty(r) => r.send(&self.http, msg).await,
            Kind::Email(r) => r.send(msg).await,
            Kind::Alertmanager(r) => r.send(&self.http, msg).await,
        };
        result.map_err(|failure| DeliveryError::new(&msg.receiver, failure, &receiver.secrets.0))
    }
}

/// The receiver of the one table `config` gives.
fn build(config: &ReceiverConfig, check: &mut Check<'_>) -> Option<Kind> {
    if let Some(c) = &config.webhook {
        Webhook::new(c, check).map(Kind::Webhook)
    } else if let Some(c) = &config.slack {
        Slack::new(c, check).map(Kind::Slack)
    } else if let Some(c) = &config.pagerduty {
        PagerDuty::new(c, check).map(Kind::PagerDuty)
    } else if let Some(c) = &config.email {
        Email::new(c, check).map(Kind::Email)
    } else {
        config
            .alertmanager
            .as_ref()
            .and_then(|c| Alertmanager::new(c, check))
            .map(Kind::Alertmanager)
    }
}
