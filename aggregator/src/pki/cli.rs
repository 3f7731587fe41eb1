//! The `pki` subcommand: parses arguments, calls the operations and tells the operator what was
//! written and what to do next.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use outpost_common::time::{format_rfc3339, now_ns};

use super::{DAY, DEFAULT_DIR, InitReport, IssuedAgent, IssuedCert, IssuedServer, RevokeReport};

/// The PKI directory argument shared by every subcommand.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DirArg {
    /// The directory holding the CA, the aggregator's certificate and agent certificates.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// `outpost-aggregator pki <command>`: the certificate authority for agents and the aggregator.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum PkiCommand {
    /// Create the CA, the aggregator's certificate and an empty revocation list.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// A DNS name or IP address agents use to reach the aggregator (repeatable);
        /// localhost, 127.0.0.1 and ::1 are always included.
        #[arg(long = "server-name", value_name = "NAME")]
        server_names: Vec<String>,
        /// Validity of the CA, in days.
        #[arg(long, value_name = "N", default_value_t = 3650, value_parser = days())]
        days: u64,
        /// Validity of the aggregator's certificate, in days (at most the CA's).
        #[arg(long, value_name = "N", default_value_t = 730, value_parser = days())]
        server_days: u64,
        /// Replace an existing CA; the old material is moved to a replaced-TIME folder.
        #[arg(long)]
        force: bool,
    },
    /// Issue a new certificate for the aggregator under the existing CA (renewal, new names).
    IssueServer {
        #[command(flatten)]
        dir: DirArg,
        /// A DNS name or IP address agents use to reach the aggregator (repeatable).
        #[arg(long = "server-name", value_name = "NAME")]
        server_names: Vec<String>,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = 730, value_parser = days())]
        days: u64,
        /// Replace the existing server certificate.
        #[arg(long)]
        force: bool,
    },
    /// Issue the certificate of one agent: agents/ID.pem and agents/ID.key.
    IssueAgent {
        /// The agent's id: 1-128 characters of A-Z a-z 0-9 . _ -
        #[arg(value_name = "ID")]
        agent_id: String,
        #[command(flatten)]
        dir: DirArg,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = 365, value_parser = days())]
        days: u64,
        /// Replace an existing certificate for this id (the old one is revoked).
        #[arg(long)]
        force: bool,
    },
    /// Revoke an agent's certificates (every one, after renewals) and rewrite crl.pem.
    Revoke {
        #[arg(value_name = "ID")]
        agent_id: String,
        #[command(flatten)]
        dir: DirArg,
        /// Why; RFC 5280 names such as key-compromise or cessation-of-operation also set the
        /// CRL reason code.
        #[arg(long, value_name = "TEXT", default_value = "unspecified")]
        reason: String,
    },
    /// List issued agent certificates with their expiry; an agent that renewed has one line
    /// per certificate not yet expired, newest first.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `pki` command, printing what it wrote (one line per file) and hints to stdout.
pub fn run(cmd: PkiCommand) -> anyhow::Result<()> {
    run_with(cmd, &mut std::io::stdout().lock(), now_ns())
}

/// [`run`] writing to `out`, with `now_ns` deciding which listed certificates show as expired.
pub fn run_with(cmd: PkiCommand, out: &mut dyn Write, now_ns: i64) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init {
            dir,
            server_names,
            days,
            server_days,
            force,
        } => {
            let report = super::init_with_server_validity(
                &dir.dir,
                &server_names,
                days_to_duration(days),
                days_to_duration(server_days.min(days)),
                force,
            )
            .with_context(|| format!("pki init in {}", dir.dir.display()))?;
            print_init(out, &report)
        }
        PkiCommand::IssueServer {
            dir,
            server_names,
            days,
            force,
        } => {
            let server =
                super::issue_server(&dir.dir, &server_names, days_to_duration(days), force)
                    .with_context(|| format!("pki issue-server in {}", dir.dir.display()))?;
            print_server(out, &server)?;
            writeln!(
                out,
                "hint: restart the aggregator to serve the new certificate; agents need no change"
            )?;
            Ok(())
        }
        PkiCommand::IssueAgent {
            agent_id,
            dir,
            days,
            force,
        } => {
            let issued = super::issue_agent(&dir.dir, &agent_id, days_to_duration(days), force)
                .with_context(|| format!("pki issue-agent {agent_id} in {}", dir.dir.display()))?;
            print_agent(out, &dir.dir, &issued)
        }
        PkiCommand::Revoke {
            agent_id,
            dir,
            reason,
        } => {
            let report = super::revoke_agent(&dir.dir, &agent_id, &reason)
                .with_context(|| format!("pki revoke {agent_id} in {}", dir.dir.display()))?;
            print_revoke(out, &dir.dir, &report)
        }
        PkiCommand::List { dir, json } => {
            let certs = super::agent_certificates(&dir.dir)
                .with_context(|| format!("pki list in {}", dir.dir.display()))?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &certs)?;
                writeln!(out)?;
                Ok(())
            } else {
                print_list(out, &dir.dir, &certs, now_ns)
            }
        }
    }
}

fn days() -> clap::builder::RangedU64ValueParser<u64> {
    // 100 years keeps every date inside what X.509 and `time` can represent.
    clap::value_parser!(u64).range(1..=36_500)
}

fn days_to_duration(days: u64) -> Duration {
    Duration::from_secs(days.saturating_mul(DAY))
}

fn wrote(out: &mut dyn Write, path: &Path, what: &str) -> std::io::Result<()> {
    writeln!(out, "wrote {}  {what}", path.display())
}

fn until(ns: i64) -> String {
    format_rfc3339(ns)
}

fn print_init(out: &mut dyn Write, r: &InitReport) -> anyhow::Result<()> {
    if let Some(old) = &r.replaced {
        writeln!(
            out,
            "moved the previous CA and its certificates to {}",
            old.display()
        )?;
    }
    wrote(
        out,
        &r.ca_key,
        "CA private key (0600); guard it, it can mint any agent",
    )?;
    wrote(
        out,
        &r.ca_cert,
        &format!(
            "CA certificate, valid until {}; copy it to every agent",
            until(r.ca_not_after_ns)
        ),
    )?;
    print_server(out, &r.server)?;
    wrote(out, &r.crl, "revocation list (empty)")?;
    wrote(out, &r.revocations, "revocation records")?;
    writeln!(out, "created {}", r.agents_dir.display())?;
    writeln!(
        out,
        "hint: point the aggregator at {}, {}, {} and {}",
        r.ca_cert.display(),
        r.server.cert_path.display(),
        r.server.key_path.display(),
        r.crl.display()
    )?;
    writeln!(
        out,
        "hint: issue one certificate per agent: outpost-aggregator pki issue-agent <ID> --dir {}",
        r.dir.display()
    )?;
    Ok(())
}

fn print_server(out: &mut dyn Write, s: &IssuedServer) -> anyhow::Result<()> {
    wrote(out, &s.key_path, "aggregator private key (0600)")?;
    wrote(
        out,
        &s.cert_path,
        &format!(
            "aggregator certificate for {}, valid until {}",
            s.names.join(", "),
            until(s.not_after_ns)
        ),
    )?;
    Ok(())
}

fn print_agent(out: &mut dyn Write, dir: &Path, a: &IssuedAgent) -> anyhow::Result<()> {
    if let Some(old) = &a.superseded_serial_hex {
        writeln!(
            out,
            "revoked the previous certificate of {} (serial {old}) as superseded",
            a.agent_id
        )?;
        wrote(out, &dir.join("revoked.json"), "revocation records")?;
        wrote(out, &dir.join("crl.pem"), "revocation list")?;
    }
    wrote(
        out,
        &a.key_path,
        &format!("private key of agent {} (0600)", a.agent_id),
    )?;
    wrote(
        out,
        &a.cert_path,
        &format!(
            "certificate of agent {}, serial {}, valid until {}",
            a.agent_id,
            a.serial_hex,
            until(a.not_after_ns)
        ),
    )?;
    writeln!(
        out,
        "hint: copy {}, {} and {} to the agent's host (keep the key 0600, readable only by the agent)",
        dir.join("ca.pem").display(),
        a.cert_path.display(),
        a.key_path.display()
    )?;
    Ok(())
}

fn print_revoke(out: &mut dyn Write, dir: &Path, r: &RevokeReport) -> anyhow::Result<()> {
    if r.already_revoked {
        writeln!(
            out,
            "agent {} (serial {}) was already revoked",
            r.agent_id, r.serial_hex
        )?;
    } else {
        writeln!(
            out,
            "revoked agent {} (serial {})",
            r.agent_id,
            r.serials_hex.join(", ")
        )?;
    }
    wrote(out, &dir.join("revoked.json"), "revocation records")?;
    wrote(
        out,
        &r.crl_path,
        &format!(
            "revocation list number {}, {} certificate(s) revoked",
            r.crl_number, r.revoked_total
        ),
    )?;
    writeln!(
        out,
        "hint: a running aggregator reloads {} within tls.reload_interval (at once on SIGHUP), then refuses the certificate and disconnects the agent",
        r.crl_path.display()
    )?;
    Ok(())
}

fn print_list(
    out: &mut dyn Write,
    dir: &Path,
    certs: &[IssuedCert],
    now_ns: i64,
) -> anyhow::Result<()> {
    if certs.is_empty() {
        writeln!(
            out,
            "no agent certificates in {}",
            dir.join("agents").display()
        )?;
        return Ok(());
    }
    let rows: Vec<[String; 4]> = certs
        .iter()
        .map(|c| {
            [
                c.agent_id.clone(),
                c.serial_hex.clone(),
                until(c.not_after_ns),
                c.status(now_ns).to_owned(),
            ]
        })
        .collect();
    let header = ["AGENT", "SERIAL", "NOT AFTER", "STATUS"].map(String::from);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
