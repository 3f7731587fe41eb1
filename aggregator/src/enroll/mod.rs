//! Enrollment and renewal: who gets an agent certificate, decided without I/O.
//!
//! An agent with nothing but an enrollment token ([`token`]) asks for a certificate for a key
//! it made ([`outpost_common::enroll`] describes the conversation). [`decide_enrollment`] weighs
//! the request against what the aggregator knows — the stored token, whether another live agent
//! holds the id, whether the key was certified before — at `now`, and answers [`Grant`] or
//! [`Refusal`]; [`decide_renewal`] does the same for an agent asking, on its authenticated
//! connection, for a certificate for a new key. The checks, in the order they are made, so that
//! a caller without a valid token learns nothing else:
//!
//! 1. the token: known and its secret right, not revoked, not expired, not used up;
//! 2. the agent id: valid ([`outpost_common::tls::is_valid_agent_id`]);
//! 3. the signing request ([`csr`]): signature, key type, nothing asked beyond an agent
//!    certificate's shape;
//! 4. the key: never certified before (a replayed request is refused);
//! 5. the id: not held by another live agent — one heard from within the offline window, or
//!    holding a certificate neither expired nor revoked — unless the token allows re-enrollment.
//!
//! [`service`] gathers those facts from the store and the PKI directory, signs, records and
//! audits; the ingest service (`ingest::enrollment`) only carries the frames.

pub mod csr;
pub mod endpoints;
pub mod service;
pub mod token;

use outpost_common::enroll::EnrollRequest;
use outpost_common::tls;

pub use csr::{CheckedCsr, CsrProblem};
pub use service::{EnrollConfig, Enroller, Outcome};
pub use token::EnrollmentToken;

/// What the aggregator knows of an agent id, for the "held by a live agent" check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holder {
    /// When the registry last heard from an agent with this id (`None`: not registered, or
    /// removed).
    pub last_seen_ns: Option<i64>,
    /// The latest expiry among the id's certificates that are not revoked (`None`: none).
    pub certificate_until_ns: Option<i64>,
}

/// Everything [`decide_enrollment`] weighs besides the request.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The token stored under the request's token id.
    pub token: Option<EnrollmentToken>,
    pub holder: Holder,
    /// The request's key was certified before.
    pub key_enrolled: bool,
}

/// The rules of enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// An agent heard from within this window is live (`[fleet] offline_after`).
    pub offline_after_ns: i64,
}

/// A certificate to issue.
#[derive(Debug)]
pub struct Grant {
    pub agent_id: String,
    pub csr: CheckedCsr,
    /// The token whose use this spends; `None` for a renewal.
    pub token_id: Option<String>,
    /// Labels from the token, sorted by key.
    pub labels: Vec<(String, String)>,
}

/// Why no certificate is issued. The text is sent to the agent and written to the audit log:
/// it names what is wrong and what to do, and never more than the caller may know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown enrollment token, or a wrong secret: check the token you were given")]
    UnknownToken,
    #[error("the enrollment token expired at {}: ask for a new one", outpost_common::time::format_rfc3339(*expires_ns))]
    TokenExpired { expires_ns: i64 },
    #[error("the enrollment token is used up ({uses} uses): ask for a new one")]
    TokenUsedUp { uses: u32 },
    #[error("the enrollment token was revoked: ask for a new one")]
    TokenRevoked,
    #[error("invalid agent id `{0}`: use 1-128 characters of A-Z a-z 0-9 . _ -")]
    InvalidAgentId(String),
    #[error(
        "agent id `{agent_id}` is held by another agent ({why}): choose another id, or enroll \
         with a token made with --allow-reenroll"
    )]
    IdHeld { agent_id: String, why: String },
    #[error(transparent)]
    Csr(#[from] CsrProblem),
    #[error("this public key was certified before: make a new key for every request")]
    KeyReplayed,
    #[error("the connection's certificate is revoked")]
    CertificateRevoked,
    #[error("the aggregator cannot issue a certificate now ({0}); try again later")]
    Unavailable(String),
    #[error(
        "this aggregator does not enroll or renew agents ([enroll] enabled = false): ask its \
         operator for a certificate"
    )]
    Disabled,
    #[error("a renewal is already in progress on this connection")]
    RenewalInProgress,
}

impl Refusal {
    /// A short name for logs and the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::UnknownToken => "unknown_token",
            Refusal::TokenExpired { .. } => "token_expired",
            Refusal::TokenUsedUp { .. } => "token_used_up",
            Refusal::TokenRevoked => "token_revoked",
            Refusal::InvalidAgentId(_) => "invalid_agent_id",
            Refusal::IdHeld { .. } => "id_held",
            Refusal::Csr(_) => "bad_csr",
            Refusal::KeyReplayed => "key_replayed",
            Refusal::CertificateRevoked => "certificate_revoked",
            Refusal::Unavailable(_) => "unavailable",
            Refusal::Disabled => "disabled",
            Refusal::RenewalInProgress => "renewal_in_progress",
        }
    }
}

/// Decides an enrollment request at `now_ns`; `csr` is [`csr::check`] of its request (made
/// first, since the key's hash is needed to gather `facts`).
pub fn decide_enrollment(
    request: &EnrollRequest,
    csr: Result<CheckedCsr, CsrProblem>,
    facts: Facts,
    policy: &Policy,
    now_ns: i64,
) -> Result<Grant, Refusal> {
    let token = match token::verify(&request.secret, facts.token, now_ns) {
        token::Verdict::Valid(t) => t,
        token::Verdict::Unknown => return Err(Refusal::UnknownToken),
        token::Verdict::Expired { expires_ns } => return Err(Refusal::TokenExpired { expires_ns }),
        token::Verdict::UsedUp { uses } => return Err(Refusal::TokenUsedUp { uses }),
        token::Verdict::Revoked => return Err(Refusal::TokenRevoked),
    };
    // The token's id came from the request; the record's is the same by construction.
    if !tls::is_valid_agent_id(&request.agent_id) {
        return Err(Refusal::InvalidAgentId(request.agent_id.clone()));
    }
    let csr = csr?;
    if facts.key_enrolled {
        return Err(Refusal::KeyReplayed);
    }
    if !token.allow_reenroll
        && let Some(why) = held(&facts.holder, policy, now_ns)
    {
        return Err(Refusal::IdHeld {
            agent_id: request.agent_id.clone(),
            why,
        });
    }
    Ok(Grant {
        agent_id: request.agent_id.clone(),
        csr,
        token_id: Some(token.id),
        labels: token.labels,
    })
}

/// Decides a renewal asked on the authenticated connection of `agent_id` (from its
/// certificate): `csr` is [`csr::check`] of the request for that id, `key_enrolled` whether its
/// key was certified before, `revoked` whether the connection's certificate is revoked now.
pub fn decide_renewal(
    agent_id: &str,
    csr: Result<CheckedCsr, CsrProblem>,
    key_enrolled: bool,
    revoked: bool,
) -> Result<Grant, Refusal> {
    if revoked {
        return Err(Refusal::CertificateRevoked);
    }
    let csr = csr?;
    if key_enrolled {
        return Err(Refusal::KeyReplayed);
    }
    Ok(Grant {
        agent_id: agent_id.to_owned(),
        csr,
        token_id: None,
        labels: Vec::new(),
    })
}

/// Why the id counts as held by a live agent, if it does.
fn held(holder: &Holder, policy: &Policy, now_ns: i64) -> Option<String> {
    if let Some(seen) = holder.last_seen_ns
        && now_ns.saturating_sub(seen) < policy.offline_after_ns
    {
        return Some(format!(
            "heard from at {}",
            outpost_common::time::format_rfc3339(seen)
        ));
    }
    if let Some(until) = holder.certificate_until_ns
        && until > now_ns
    {
        return Some(format!(
            "it has a certificate valid until {}",
            outpost_common::time::format_rfc3339(until)
        ));
    }
    None
}

#[cfg(test)]
mod tests;
