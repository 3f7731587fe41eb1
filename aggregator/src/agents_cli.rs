//! `outpost-aggregator agents`: take an agent out of the fleet, and list agent certificates,
//! on the aggregator host (the API does the same for admins).

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Validated;
use crate::store::StateStore;

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Revoke every certificate of an agent and remove it from the fleet. A running
    /// aggregator closes its connection when it reloads the CRL (within tls.reload_interval,
    /// at once on SIGHUP or through the API's DELETE /api/v1/agents/{agent_id}).
    Remove {
        #[arg(value_name = "ID")]
        agent_id: String,
        /// Why; RFC 5280 names such as key-compromise or cessation-of-operation also set the
        /// CRL reason code.
        #[arg(long, value_name = "TEXT", default_value = "cessation-of-operation")]
        reason: String,
    },
    /// List agent certificates with their expiry, newest first per agent.
    Certs {
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
}

/// What removing an agent did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Removed {
    pub agent_id: String,
    /// The certificates revoked now (none if it had none in the PKI directory).
    pub revoked_serials: Vec<String>,
    /// It was in the fleet (registered, not removed before).
    pub removed_from_fleet: bool,
}

/// Revokes the agent's certificates in `pki_dir` and removes it from the registry. Blocks on
/// files and the store.
pub fn remove(
    pki_dir: &std::path::Path,
    store: &dyn StateStore,
    agent_id: &str,
    reason: &str,
    now_ns: i64,
) -> anyhow::Result<Removed> {
    if !outpost_common::tls::is_valid_agent_id(agent_id) {
        anyhow::bail!("invalid agent id `{agent_id}`: use 1-128 characters of A-Z a-z 0-9 . _ -");
    }
    let revoked_serials = match crate::pki::revoke_agent(pki_dir, agent_id, reason) {
        Ok(report) => report.serials_hex,
        Err(crate::pki::PkiError::NoSuchAgent { .. }) => Vec::new(),
        Err(e) => {
            return Err(e).with_context(|| format!("revoking the certificates of {agent_id}"));
        }
    };
    let removed_from_fleet = store
        .remove_agent(agent_id, now_ns)
        .with_context(|| format!("removing {agent_id} from the fleet"))?;
    if revoked_serials.is_empty() && !removed_from_fleet {
        anyhow::bail!("no agent `{agent_id}`: it has no certificate and is not in the fleet");
    }
    Ok(Removed {
        agent_id: agent_id.to_owned(),
        revoked_serials,
        removed_from_fleet,
    })
}

/// Runs an `agents` command against the configuration's PKI directory and store.
pub fn run(
    v: &Validated,
    cmd: AgentsCommand,
    out: &mut impl Write,
    now_ns: i64,
) -> anyhow::Result<()> {
    match cmd {
        AgentsCommand::Remove { agent_id, reason } => {
            let store = crate::run::open_store(v)?;
            let r = remove(
                &v.config.tls.dir,
                store.as_ref(),
                &agent_id,
                &reason,
                now_ns,
            )?;
            if r.revoked_serials.is_empty() {
                writeln!(out, "agent {agent_id} had no certificate to revoke")?;
            } else {
                writeln!(
                    out,
                    "revoked the certificates of {agent_id}: {}",
                    r.revoked_serials.join(", ")
                )?;
            }
            if r.removed_from_fleet {
                writeln!(out, "removed {agent_id} from the fleet")?;
            }
            writeln!(
                out,
                "hint: a running aggregator closes its connection when it reloads {} (within \
                 tls.reload_interval, at once on SIGHUP)",
                v.config.tls.crl().display()
            )?;
        }
        AgentsCommand::Certs { json } => {
            let certs = crate::pki::agent_certificates(&v.config.tls.dir)?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &certs)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<32}  {:<32}  {:<20}  STATUS",
                    "AGENT", "SERIAL", "NOT AFTER"
                )?;
                for c in &certs {
                    writeln!(
                        out,
                        "{:<32}  {:<32}  {:<20}  {}",
                        c.agent_id,
                        c.serial_hex,
                        outpost_common::time::format_rfc3339(c.not_after_ns),
                        c.status(now_ns)
                    )?;
                }
            }
        }
    }
    Ok(())
}
