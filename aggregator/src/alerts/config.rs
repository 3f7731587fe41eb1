//! `[alerting]` in aggregator.toml: where the rules are, the route tree, receivers, inhibitions
//! and escalations, with Alertmanager's names and defaults where it has them.
//!
//! ```toml
//! [alerting]
//! rules_dir = "rules.d"              # beside this file: /etc/outpost/rules.d
//! external_url = "https://outpost.example:9440"
//!
//! [alerting.route]                 # the root: every alert starts here
//! receiver = "ops"
//! group_by = ["alertname", "host"] # ["..."] groups by every label
//! group_wait = "30s"
//! group_interval = "5m"
//! repeat_interval = "4h"
//! routes = [
//!   { matchers = ["severity=critical"], receiver = "pager", continue = true },
//! ]
//!
//! [[alerting.receivers]]
//! name = "ops"
//! webhook = { url = "https://hooks.example/alerts" }
//!
//! [[alerting.inhibit]]             # a host down mutes that host's other alerts
//! source = ["alertname=host-down"]
//! target = ["alertname!=host-down"]
//! equal = ["host"]
//!
//! [[alerting.escalations]]         # critical alerts nobody acknowledged in 15 min page the lead
//! matchers = ["severity=critical"]
//! stages = [{ after = "15m", receiver = "lead" }]
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::notify::ReceiverConfig;
use crate::rules::engine::{Escalation, Setup, Stage};
use crate::rules::matcher::{self, Inhibition, Matcher};
use crate::rules::route::Route;

/// `[alerting]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingSection {
    pub enabled: bool,
    /// Rule files (`*.toml`); read at start, on SIGHUP, when they change and through the API.
    /// A relative path is taken from the configuration file's directory.
    pub rules_dir: PathBuf,
    /// How often `rules_dir` is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// The aggregator's address for people: links in notifications start with it.
    pub external_url: String,
    /// After a restart, how long alerts restored from the state store wait for new events
    /// before those no rule meets again resolve.
    #[serde(with = "humantime_serde")]
    pub restore_grace: Duration,
    /// A notification not delivered after trying this long is recorded as failed.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Notifications sent at once, over all receivers.
    pub max_concurrent_sends: usize,
    /// How long alert history, finished notifications and ended silences are kept.
    #[serde(with = "humantime_serde")]
    pub history_retention: Duration,
    /// With several aggregators sharing a PostgreSQL state store, one runs alerting: the holder
    /// of the alerting lease, which it renews every third of this. When it stops renewing (it
    /// died, or lost the database), another aggregator takes over after this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// No route: alerts are evaluated and recorded, and notified nowhere.
    pub route: Option<RouteConfig>,
    pub receivers: Vec<ReceiverConfig>,
    pub inhibit: Vec<InhibitConfig>,
    pub escalations: Vec<EscalationConfig>,
}

impl Default for AlertingSection {
    fn default() -> Self {
        AlertingSection {
            enabled: true,
            rules_dir: PathBuf::from("rules.d"),
            reload_interval: Duration::from_secs(10),
            external_url: "http://127.0.0.1:9440".to_owned(),
            restore_grace: Duration::from_secs(120),
            give_up_after: Duration::from_secs(24 * 3600),
            max_concurrent_sends: 8,
            history_retention: Duration::from_secs(30 * 24 * 3600),
            lease_ttl: Duration::from_secs(10),
            route: None,
            receivers: Vec::new(),
            inhibit: Vec::new(),
            escalations: Vec::new(),
        }
    }
}

/// A route of the tree; unset fields inherit the parent's (the root's: Alertmanager's defaults).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub receiver: Option<String>,
    #[serde(default)]
    pub matchers: Vec<String>,
    pub group_by: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub group_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub group_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub repeat_interval: Option<Duration>,
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitConfig {
    pub source: Vec<String>,
    pub target: Vec<String>,
    #[serde(default)]
    pub equal: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    pub matchers: Vec<String>,
    pub stages: Vec<StageConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    pub receiver: String,
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn matchers(place: &str, texts: &[String]) -> Result<Vec<Matcher>, String> {
    texts
        .iter()
        .map(|t| matcher::parse(t).map_err(|why| format!("{place}: {why}")))
        .collect()
}

impl AlertingSection {
    /// The engine's setup, every matcher parsed and every receiver named checked against
    /// `receivers`; the errors name the option.
    pub fn setup(&self) -> Result<Setup, String> {
        let names: BTreeSet<&str> = self.receivers.iter().map(|r| r.name.as_str()).collect();
        let known = |place: &str, name: &str| -> Result<(), String> {
            if names.contains(name) {
                Ok(())
            } else {
                Err(format!(
                    "{place}: no receiver is named `{name}` (alerting.receivers has: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.iter().copied().collect::<Vec<_>>().join(", ")
                    }
                ))
            }
        };
        let route = match &self.route {
            None => Route {
                receiver: String::new(),
                ..Route::root("")
            },
            Some(root) => {
                let receiver = root.receiver.clone().ok_or_else(|| {
                    "alerting.route: the root route needs a `receiver`".to_owned()
                })?;
                build_route(root, &Route::root(&receiver), "alerting.route", &known)?
            }
        };
        let inhibitions = self
            .inhibit
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let place = format!("alerting.inhibit[{i}]");
                Ok(Inhibition {
                    source: matchers(&format!("{place}.source"), &c.source)?,
                    target: matchers(&format!("{place}.target"), &c.target)?,
                    equal: c.equal.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        let escalations = self
            .escalations
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let place = format!("alerting.escalations[{i}]");
                let mut stages = Vec::new();
                let mut after = Duration::ZERO;
                for (j, s) in c.stages.iter().enumerate() {
                    known(&format!("{place}.stages[{j}].receiver"), &s.receiver)?;
                    if s.after <= after && j > 0 {
                        return Err(format!(
                            "{place}.stages[{j}].after must be later than the stage before"
                        ));
                    }
                    after = s.after;
                    stages.push(Stage {
                        after_ns: ns(s.after),
                        receiver: s.receiver.clone(),
                    });
                }
                if stages.is_empty() {
                    return Err(format!("{place}: an escalation needs at least one stage"));
                }
                Ok(Escalation {
                    matchers: matchers(&format!("{place}.matchers"), &c.matchers)?,
                    stages,
                })
            })
            .collect::<Result<_, String>>()?;
        outpost_common::config::parse_http_uri(&self.external_url)
            .map_err(|why| format!("alerting.external_url: {why}"))?;
        if self.max_concurrent_sends == 0 || self.reload_interval.is_zero() {
            return Err(
                "alerting.max_concurrent_sends and alerting.reload_interval must be above zero"
                    .into(),
            );
        }
        Ok(Setup {
            route,
            inhibitions,
            escalations,
            external_url: self.external_url.trim_end_matches('/').to_owned(),
            restore_grace_ns: ns(self.restore_grace),
        })
    }
}

fn build_route(
    c: &RouteConfig,
    parent: &Route,
    place: &str,
    known: &dyn Fn(&str, &str) -> Result<(), String>,
) -> Result<Route, String> {
    let receiver = c
        .receiver
        .clone()
        .unwrap_or_else(|| parent.receiver.clone());
    known(&format!("{place}.receiver"), &receiver)?;
    let group_by = match &c.group_by {
        None => parent.group_by.clone(),
        Some(names) if names.iter().any(|n| n == "...") => None,
        Some(names) => Some(names.clone()),
    };
    let mut route = Route {
        receiver,
        matchers: matchers(&format!("{place}.matchers"), &c.matchers)?,
        group_by,
        group_wait_ns: c.group_wait.map_or(parent.group_wait_ns, ns),
        group_interval_ns: c.group_interval.map_or(parent.group_interval_ns, ns),
        repeat_interval_ns: c.repeat_interval.map_or(parent.repeat_interval_ns, ns),
        continue_matching: c.continue_matching,
        routes: Vec::new(),
    };
    if route.group_interval_ns <= 0 || route.repeat_interval_ns <= 0 {
        return Err(format!(
            "{place}: group_interval and repeat_interval must be above zero"
        ));
    }
    for (i, child) in c.routes.iter().enumerate() {
        let child = build_route(child, &route, &format!("{place}.routes[{i}]"), known)?;
        route.routes.push(child);
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> AlertingSection {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn children_inherit_and_refer_to_known_receivers() {
        let s = section(
            r#"
            route = { receiver = "ops", group_wait = "0s", routes = [
                { matchers = ["severity=critical"], receiver = "pager", group_by = ["..."] },
                { matchers = ["team=~\"db|web\""] },
            ] }
            receivers = [
                { name = "ops", webhook = { url = "http://127.0.0.1:1/hook" } },
                { name = "pager", webhook = { url = "http://127.0.0.1:1/page" } },
            ]
            "#,
        );
        let setup = s.setup().unwrap();
        assert_eq!(setup.route.group_wait_ns, 0);
        let [critical, team] = &setup.route.routes[..] else {
            panic!("{:?}", setup.route.routes)
        };
        assert_eq!(critical.receiver, "pager");
        assert_eq!(critical.group_by, None);
        assert_eq!(critical.group_wait_ns, 0, "inherited");
        assert_eq!(team.receiver, "ops");
        assert_eq!(team.group_by, Some(vec!["alertname".to_owned()]));
    }

    #[test]
    fn mistakes_are_named_by_their_option() {
        let hook = r#"receivers = [{ name = "ops", webhook = { url = "http://127.0.0.1:1/" } }]"#;
        for (text, expected) in [
            (
                format!("route = {{ receiver = \"nobody\" }}\n{hook}"),
                "alerting.route.receiver: no receiver is named `nobody`",
            ),
            (
                format!(
                    "route = {{ receiver = \"ops\", routes = [{{ matchers = [\"a=~(\"] }}] }}\n{hook}"
                ),
                "alerting.route.routes[0].matchers",
            ),
            (
                format!("inhibit = [{{ source = [\"bad\"], target = [] }}]\n{hook}"),
                "alerting.inhibit[0].source",
            ),
            (
                format!(
                    "escalations = [{{ matchers = [], stages = [{{ after = \"1m\", receiver = \"x\" }}] }}]\n{hook}"
                ),
                "alerting.escalations[0].stages[0].receiver",
            ),
            (
                format!("route = {{}}\n{hook}"),
                "the root route needs a `receiver`",
            ),
        ] {
            let err = section(&text).setup().unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }
}
