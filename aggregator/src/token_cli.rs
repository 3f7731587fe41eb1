//! `outpost-aggregator token`: API tokens made, listed and revoked on the aggregator host (the
//! API does the same for admins, from anywhere).

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Validated;
use crate::store::StateStore;
use crate::tokens::{self, Role};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (shown this once; only its hash is kept).
    Create {
        /// A name for lists and the audit log: 1 to 64 letters, digits, `.`, `_` or `-`.
        #[arg(long)]
        name: String,
        /// viewer (reads), operator (also acknowledges and silences) or admin (also manages
        /// tokens and rules).
        #[arg(long)]
        role: Role,
        /// How long it is valid (`90d`, `12h`); forever when not given.
        #[arg(long)]
        expires: Option<String>,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// List the tokens, newest first (never their secrets).
    List {
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id, or by the name of a token not revoked.
    Revoke { token: String },
}

/// Runs a token command against the store named by the configuration.
pub fn run(
    v: &Validated,
    cmd: TokenCommand,
    out: &mut impl Write,
    now_ns: i64,
) -> anyhow::Result<()> {
    let store = crate::run::open_store(v)?;
    match cmd {
        TokenCommand::Create {
            name,
            role,
            expires,
            json,
        } => {
            tokens::check_name(&name).map_err(anyhow::Error::msg)?;
            let expires_ns = expires
                .as_deref()
                .map(|text| crate::api::expiry(text, now_ns))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
            let made = tokens::create(&name, role, now_ns, expires_ns);
            store.insert_token(&made.record)?;
            if json {
                let value = serde_json::json!({
                    "token": made.text,
                    "id": made.record.id,
                    "name": made.record.name,
                    "role": made.record.role,
                    "expires_ns": made.record.expires_ns,
                });
                writeln!(out, "{value}")?;
            } else {
                writeln!(out, "{}", made.text)?;
                let until = made.record.expires_ns.map_or_else(
                    || "never expires".to_owned(),
                    |e| format!("expires {}", outpost_common::time::format_rfc3339(e)),
                );
                eprintln!(
                    "token `{}` ({}, id {}), {until}: shown once, keep it safe",
                    made.record.name, made.record.role, made.record.id
                );
            }
        }
        TokenCommand::List { json } => {
            let all = store.tokens()?;
            if json {
                let items: Vec<serde_json::Value> = all
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "id": t.id, "name": t.name, "role": t.role,
                            "created_ns": t.created_ns, "expires_ns": t.expires_ns,
                            "revoked_ns": t.revoked_ns, "last_used_ns": t.last_used_ns,
                            "active": t.active(now_ns),
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(items))?;
            } else {
                writeln!(
                    out,
                    "{:<16}  {:<24}  {:<8}  {:<8}  {:<20}  LAST USED",
                    "ID", "NAME", "ROLE", "STATE", "EXPIRES"
                )?;
                let time = |t: Option<i64>, none: &str| {
                    t.map_or_else(|| none.to_owned(), outpost_common::time::format_rfc3339)
                };
                for t in &all {
                    let state = if t.revoked_ns.is_some() {
                        "revoked"
                    } else if t.active(now_ns) {
                        "active"
                    } else {
                        "expired"
                    };
                    writeln!(
                        out,
                        "{:<16}  {:<24}  {:<8}  {:<8}  {:<20}  {}",
                        t.id,
                        t.name,
                        t.role,
                        state,
                        time(t.expires_ns, "never"),
                        time(t.last_used_ns, "never")
                    )?;
                }
            }
        }
        TokenCommand::Revoke { token } => {
            let revoked = store
                .revoke_token(&token, now_ns)
                .with_context(|| format!("revoking token `{token}`"))?;
            match revoked {
                Some(t) => writeln!(out, "revoked token `{}` (id {})", t.name, t.id)?,
                None => anyhow::bail!(
                    "no token `{token}` (give its id, or the name of a token not revoked)"
                ),
            }
        }
    }
    Ok(())
}
