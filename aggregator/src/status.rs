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
        let mut text = fleet::render_table(&entries, now);
        if let Some(line) = server_certificate_line(&v.config.tls.cert(), now) {
            text.push_str(&line);
        }
        text
    })
}

/// `server certificate: valid until …` (or expired), from the file the aggregator serves.
fn server_certificate_line(path: &std::path::Path, now_ns: i64) -> Option<String> {
    let chain = outpost_common::tls::load_certs(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    let not_after = cert
        .validity()
        .not_after
        .timestamp()
        .saturating_mul(1_000_000_000);
    let at = outpost_common::time::format_rfc3339(not_after);
    Some(if not_after <= now_ns {
        format!("\nserver certificate: EXPIRED at {at}; agents cannot connect (pki issue-server)\n")
    } else {
        format!("\nserver certificate: valid until {at}\n")
    })
}
