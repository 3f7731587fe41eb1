//! `outpost-aggregator status`: the fleet at a glance.

use outpost_common::time::now_ns;

use crate::config::Validated;
use crate::fleet::{self, FleetPolicy};
use crate::pki;
use crate::store::{self, EventStore, StateStore};

/// Reads the registry and the issued certificates and renders the fleet's status.
pub fn render(v: &Validated, json: bool) -> anyhow::Result<String> {
    let store = crate::run::open_store(v)?;
    let mut agents = store.agents()?;
    store::join_host_summaries(&mut agents, store.host_summaries()?);
    let issued: Vec<String> = match pki::issued_agents(&v.config.tls.dir) {
        Ok(certs) => certs
            .into_iter()
            .filter(|c| !c.revoked)
            .map(|c| c.agent_id)
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot list issued certificates; never-seen agents are not shown");
            Vec::new()
        }
    };
    let f = &v.config.fleet;
    let policy = FleetPolicy {
        offline_after: f.offline_after,
        degraded_window: f.degraded_window,
        backlog_rising_for: f.backlog_rising_for,
    };
    let now = now_ns();
    let entries = fleet::fleet_status(&agents, &issued, &policy, now);
    Ok(if json {
        fleet::render_json(&entries)
    } else {
        fleet::render_table(&entries, now)
    })
}
