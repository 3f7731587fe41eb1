//! Enrollment and renewal carried out: the facts gathered from the store and the PKI
//! directory, the decision ([`super::decide_enrollment`], [`super::decide_renewal`]), the
//! certificate signed and recorded, the audit entry written.
//!
//! Every method blocks on the store and the files: the ingest service calls them on blocking
//! threads. A granted request is answered only after the key is recorded and the token's use
//! spent in one store write, and the certificate added to `agents/<id>.pem` (so `pki list`
//! shows it and `pki revoke` revokes it); if either fails, the agent gets a refusal and no
//! certificate.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outpost_common::enroll::{EnrollRequest, Issued, RenewRequest};
use outpost_common::tls;
use tracing::warn;

use super::{Facts, Grant, Holder, Policy, Refusal, csr, token};
use crate::store::{AuditEntry, Enrollment, StateStore, StoreError};

/// How the aggregator enrolls agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollConfig {
    /// The PKI directory: the CA that signs, and `agents/` where certificates are recorded.
    pub pki_dir: PathBuf,
    /// Validity of certificates issued by enrollment and renewal (`[enroll] agent_validity`).
    pub agent_validity: Duration,
    /// An agent heard from within this window holds its id (`[fleet] offline_after`).
    pub offline_after: Duration,
}

/// What a request came to: the certificate, or why not.
pub type Outcome = Result<Issued, Refusal>;

/// Enrolls and renews agents against a state store and a PKI directory.
pub struct Enroller {
    state: Arc<dyn StateStore>,
    config: EnrollConfig,
}

impl std::fmt::Debug for Enroller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroller")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Enroller {
    pub fn new(state: Arc<dyn StateStore>, config: EnrollConfig) -> Enroller {
        Enroller { state, config }
    }

    /// Answers an enrollment request from `remote` at `now_ns`, and audits it.
    pub fn enroll(&self, request: &EnrollRequest, remote: IpAddr, now_ns: i64) -> Outcome {
        let token_id = tls::hex(&request.token_id);
        let outcome = self.try_enroll(request, &token_id, now_ns);
        self.audit(
            "enroll",
            &request.agent_id,
            Some(token_id),
            remote,
            now_ns,
            &outcome,
        );
        outcome
    }

    /// Answers a renewal asked on the connection of `agent_id` (from its certificate), whose
    /// certificate is `revoked` or not, and audits it.
    pub fn renew(
        &self,
        agent_id: &str,
        revoked: bool,
        request: &RenewRequest,
        remote: IpAddr,
        now_ns: i64,
    ) -> Outcome {
        let outcome = (|| {
            let csr = csr::check(&request.csr_der, agent_id);
            let key_enrolled = self.key_enrolled(&csr)?;
            let grant = super::decide_renewal(agent_id, csr, key_enrolled, revoked)?;
            // Without a token, only the key can have been taken meanwhile.
            self.issue(grant, now_ns)
                .map_err(|e| e.or(Refusal::KeyReplayed))
        })();
        self.audit("renew", agent_id, None, remote, now_ns, &outcome);
        outcome
    }

    fn try_enroll(&self, request: &EnrollRequest, token_id: &str, now_ns: i64) -> Outcome {
        let csr = csr::check(&request.csr_der, &request.agent_id);
        let facts = Facts {
            token: self.state.enrollment_token(token_id).map_err(unavailable)?,
            holder: self.holder(&request.agent_id)?,
            key_enrolled: self.key_enrolled(&csr)?,
        };
        let policy = Policy {
            offline_after_ns: i64::try_from(self.config.offline_after.as_nanos())
                .unwrap_or(i64::MAX),
        };
        let grant = super::decide_enrollment(request, csr, facts, &policy, now_ns)?;
        match self.issue(grant, now_ns) {
            Ok(issued) => Ok(issued),
            Err(Failure::Refused(refusal)) => Err(refusal),
            // The token or the key was taken between the check and the write: the token's
            // state now says which.
            Err(Failure::Conflict) => {
                let stored = self.state.enrollment_token(token_id).map_err(unavailable)?;
                Err(match token::verify(&request.secret, stored, now_ns) {
                    token::Verdict::Valid(_) => Refusal::KeyReplayed,
                    token::Verdict::Unknown => Refusal::UnknownToken,
                    token::Verdict::Expired { expires_ns } => Refusal::TokenExpired { expires_ns },
                    token::Verdict::UsedUp { uses } => Refusal::TokenUsedUp { uses },
                    token::Verdict::Revoked => Refusal::TokenRevoked,
                })
            }
        }
    }

    /// Signs the granted key, records it (spending the token's use), adds the certificate to
    /// the agent's file, and answers it.
    fn issue(&self, grant: Grant, now_ns: i64) -> Result<Issued, Failure> {
        let enrollment = Enrollment {
            key_sha256: grant.csr.key_sha256,
            agent_id: grant.agent_id.clone(),
            token_id: grant.token_id.clone(),
            now_ns,
        };
        let issued = crate::pki::issue_agent_for_key(
            &self.config.pki_dir,
            &grant.agent_id,
            &grant.csr.public_key,
            self.config.agent_validity,
            |_| self.state.record_enrollment(&enrollment),
        )
        .map_err(|e| {
            warn!(agent_id = %grant.agent_id, error = %e, "cannot issue an agent certificate");
            Failure::Refused(Refusal::Unavailable(format!(
                "its certificate authority failed: {e}"
            )))
        })?
        .map_err(|e| match e {
            StoreError::Conflict(_) => Failure::Conflict,
            other => Failure::Refused(unavailable(other)),
        })?;
        Ok(Issued {
            agent_id: issued.agent_id,
            cert_pem: issued.cert_pem,
            ca_pem: issued.ca_pem,
            labels: grant.labels,
            not_after_ns: issued.not_after_ns,
        })
    }

    fn key_enrolled(
        &self,
        csr: &Result<csr::CheckedCsr, csr::CsrProblem>,
    ) -> Result<bool, Refusal> {
        match csr {
            Ok(c) => self.state.key_enrolled(&c.key_sha256).map_err(unavailable),
            Err(_) => Ok(false),
        }
    }

    /// What the registry and the PKI directory know of `agent_id` (nothing for an invalid id,
    /// which is refused anyway and must not reach a file name).
    fn holder(&self, agent_id: &str) -> Result<Holder, Refusal> {
        if !tls::is_valid_agent_id(agent_id) {
            return Ok(Holder::default());
        }
        let last_seen_ns = self
            .state
            .agent(agent_id)
            .map_err(unavailable)?
            .map(|a| a.last_seen_ns);
        let certificate_until_ns = crate::pki::certificates_of(&self.config.pki_dir, agent_id)
            .map_err(|e| Refusal::Unavailable(format!("its certificate authority failed: {e}")))?
            .iter()
            .filter(|c| !c.revoked)
            .map(|c| c.not_after_ns)
            .max();
        Ok(Holder {
            last_seen_ns,
            certificate_until_ns,
        })
    }

    /// Appends the outcome to the audit log (`method` QUIC, `route` what and for
    /// which agent, `outcome` `ok` or `refused: <reason>`).
    fn audit(
        &self,
        what: &'static str,
        agent_id: &str,
        token_id: Option<String>,
        remote: IpAddr,
        now_ns: i64,
        outcome: &Outcome,
    ) {
        // The id is the peer's to choose: quoted and cut short before it is written anywhere.
        let shown: String = format!("{agent_id:?}").chars().take(140).collect();
        let (status, result) = match outcome {
            Ok(_) => (200, "ok".to_owned()),
            Err(refusal) => {
                let status = match refusal {
                    Refusal::Unavailable(_) => 503,
                    _ => 403,
                };
                (status, format!("refused: {refusal}"))
            }
        };
        let entry = AuditEntry {
            id: 0,
            time_ns: now_ns,
            token_id,
            token_name: None,
            address: remote.to_string(),
            method: "QUIC".to_owned(),
            route: format!("{what} {shown}"),
            status,
            outcome: result,
        };
        if let Err(e) = self.state.append_audit(&[entry]) {
            warn!(error = %e, what, "cannot write the audit entry of an enrollment");
        }
    }
}

/// Why [`Enroller::issue`] issued nothing.
#[derive(Debug)]
enum Failure {
    Refused(Refusal),
    /// The store refused the record: the key was certified, or the token's last use spent,
    /// since the decision.
    Conflict,
}

impl Failure {
    /// The refusal, with `conflict` standing for a conflict.
    fn or(self, conflict: Refusal) -> Refusal {
        match self {
            Failure::Refused(r) => r,
            Failure::Conflict => conflict,
        }
    }
}

fn unavailable(e: StoreError) -> Refusal {
    Refusal::Unavailable(format!("its store failed: {e}"))
}
