//! `outpost-aggregator token`: API tokens and enrollment tokens made, listed and revoked on the
//! aggregator host (the API does the same for admins, from anywhere).

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Validated;
use crate::enroll::token::{self as enroll_token, TokenSpec};
use crate::store::StateStore;
use crate::tokens::{self, Role};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (shown this once; only its hash is kept): an API token, or
    /// with --enroll an enrollment token for agents.
    #[command(after_help = ENROLL_HELP)]
    Create {
        /// A name for lists and the audit log: 1 to 64 letters, digits, `.`, `_` or `-`
        /// (API tokens).
        #[arg(long, required_unless_present = "enroll", conflicts_with = "enroll")]
        name: Option<String>,
        /// viewer (reads), operator (also acknowledges and silences) or admin (also manages
        /// tokens and rules) (API tokens).
        #[arg(long, required_unless_present = "enroll", conflicts_with = "enroll")]
        role: Option<Role>,
        /// How long it is valid (`90d`, `12h`); API tokens: forever when not given;
        /// enrollment tokens: 24h when not given.
        #[arg(long)]
        expires: Option<String>,
        /// Make an enrollment token: an agent given it asks for its certificate itself.
        #[arg(long)]
        enroll: bool,
        /// Enrollments the token allows (1 when not given).
        #[arg(long, value_name = "N", requires = "enroll", value_parser = clap::value_parser!(u32).range(1..))]
        uses: Option<u32>,
        /// A label for every agent enrolled with it, key=value (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", requires = "enroll")]
        labels: Vec<String>,
        /// Where agents enroll, host:port (repeatable, tried in order); by default every DNS
        /// name and IP address of the server certificate with the listen port.
        #[arg(long = "endpoint", value_name = "HOST:PORT", requires = "enroll")]
        endpoints: Vec<String>,
        /// Allow enrolling an id another live agent holds (replacing a host, recovering a lost
        /// key); that agent's certificates stay valid until revoked.
        #[arg(long, requires = "enroll")]
        allow_reenroll: bool,
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// List the tokens, API and enrollment, newest first (never their secrets).
    List {
        /// Print JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: by id, or by the name of an API token not revoked.
    Revoke { token: String },
}

const ENROLL_HELP: &str = "\
Enrollment tokens (--enroll) carry where to enroll and the SHA-256 of the CA (read from
ca.pem in [tls] dir), so an agent needs nothing else: `outpost-agent enroll TOKEN`. Without
--endpoint, the endpoints are the server certificate's DNS names and IP addresses (loopback
ones only when there is nothing else) with the port of `listen`; a name agents cannot reach
must be replaced with --endpoint. The token is shown once; only the hash of its secret is kept.";

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
            enroll: true,
            expires,
            uses,
            labels,
            endpoints,
            allow_reenroll,
            json,
            ..
        } => {
            let expires_ns = crate::api::expiry(expires.as_deref().unwrap_or("24h"), now_ns)
                .map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
            let labels = labels
                .iter()
                .map(|l| enroll_token::parse_label(l))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("--label: {e}"))?;
            let ca_der = crate::enroll::endpoints::ca_der(&v.config.tls.ca())?;
            let endpoints = if endpoints.is_empty() {
                crate::enroll::endpoints::from_server_certificate(
                    &v.config.tls.cert(),
                    v.listen.port(),
                )?
            } else {
                endpoints
            };
            let made = enroll_token::create(
                TokenSpec {
                    expires_ns,
                    max_uses: Some(uses.unwrap_or(1)),
                    labels,
                    allow_reenroll,
                    endpoints: endpoints.clone(),
                    ca_der,
                },
                now_ns,
            )
            .map_err(anyhow::Error::msg)?;
            store.insert_enrollment_token(&made.record)?;
            let r = &made.record;
            if json {
                let value = serde_json::json!({
                    "token": made.text, "id": r.id, "kind": "enroll",
                    "expires_ns": r.expires_ns, "max_uses": r.max_uses,
                    "labels": r.labels, "endpoints": endpoints,
                    "allow_reenroll": r.allow_reenroll,
                });
                writeln!(out, "{value}")?;
            } else {
                writeln!(out, "{}", made.text)?;
                eprintln!(
                    "enrollment token {} for {}, {} use(s), expires {}: shown once, keep it safe",
                    r.id,
                    endpoints.join(", "),
                    r.max_uses.map_or("any".to_owned(), |n| n.to_string()),
                    outpost_common::time::format_rfc3339(r.expires_ns)
                );
            }
        }
        TokenCommand::Create {
            name,
            role,
            expires,
            json,
            ..
        } => {
            // Invariant: clap requires both without --enroll.
            let (Some(name), Some(role)) = (name, role) else {
                anyhow::bail!("--name and --role are required for an API token");
            };
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
            let enrollment = store.enrollment_tokens()?;
            if json {
                let items: Vec<serde_json::Value> = all
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "id": t.id, "name": t.name, "role": t.role,
                            "created_ns": t.created_ns, "expires_ns": t.expires_ns,
                            "revoked_ns": t.revoked_ns, "last_used_ns": t.last_used_ns,
                            "active": t.active(now_ns), "kind": "api",
                        })
                    })
                    .chain(enrollment.iter().map(|t| {
                        serde_json::json!({
                            "id": t.id, "kind": "enroll", "created_ns": t.created_ns,
                            "expires_ns": t.expires_ns, "revoked_ns": t.revoked_ns,
                            "uses": t.uses, "max_uses": t.max_uses, "labels": t.labels,
                            "allow_reenroll": t.allow_reenroll, "active": t.active(now_ns),
                            "state": t.state(now_ns),
                        })
                    }))
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
                if !enrollment.is_empty() {
                    writeln!(out)?;
                    writeln!(
                        out,
                        "{:<16}  {:<6}  {:<8}  {:<7}  {:<20}  LABELS",
                        "ENROLLMENT ID", "KIND", "STATE", "USES", "EXPIRES"
                    )?;
                }
                for t in &enrollment {
                    let uses = match t.max_uses {
                        Some(max) => format!("{}/{max}", t.uses),
                        None => t.uses.to_string(),
                    };
                    let labels: Vec<String> =
                        t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let kind = if t.allow_reenroll {
                        "enroll+"
                    } else {
                        "enroll"
                    };
                    writeln!(
                        out,
                        "{:<16}  {:<6}  {:<8}  {:<7}  {:<20}  {}",
                        t.id,
                        kind,
                        t.state(now_ns),
                        uses,
                        time(Some(t.expires_ns), "never"),
                        labels.join(",")
                    )?;
                }
            }
        }
        TokenCommand::Revoke { token } => {
            if let Some(t) = store
                .revoke_enrollment_token(&token, now_ns)
                .with_context(|| format!("revoking enrollment token `{token}`"))?
            {
                writeln!(out, "revoked enrollment token {}", t.id)?;
                return Ok(());
            }
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
