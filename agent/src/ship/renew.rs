//! Renewing the agent's certificate before it expires.
//!
//! Past two thirds of the certificate's lifetime ([`renewal_due`]) the shipper asks for a new
//! one on its authenticated connection: a new key is made here, its CSR sent on a stream of its
//! own ([`request`]), and the certificate that comes back is checked and installed with the key
//! as a pair ([`crate::identity::install_pair`]). The shipper then reconnects with it; the old
//! certificate stays valid until it expires, and what was in flight is sent again (the
//! aggregator deduplicates). A failure is reported in the agent's status and retried with
//! backoff and jitter ([`Renewal::failed`]), never later than the certificate's expiry allows.
//!
//! The schedule is plain arithmetic on nanoseconds since the epoch, so it is tested without
//! clocks; nothing imposes a minimum lifetime: a one-minute certificate is renewed after 40 s.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use outpost_common::enroll::{Issued, RenewRequest, RenewResponse};
use outpost_common::tls::{self, QuicSettings};
use outpost_common::wire::{self, Message};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::{self, Checked, PairPaths};

/// How long the aggregator has to answer a renewal request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The first and the longest wait before retrying a failed renewal.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(600);

/// When a certificate valid from `not_before_ns` to `not_after_ns` is renewed: two thirds
/// into its lifetime.
pub fn renewal_at(not_before_ns: i64, not_after_ns: i64) -> i64 {
    let lifetime = i128::from(not_after_ns) - i128::from(not_before_ns);
    let at = i128::from(not_before_ns) + lifetime.max(0) * 2 / 3;
    i64::try_from(at).unwrap_or(i64::MAX)
}

/// Whether the certificate is due for renewal at `now_ns`.
pub fn renewal_due(not_before_ns: i64, not_after_ns: i64, now_ns: i64) -> bool {
    now_ns >= renewal_at(not_before_ns, not_after_ns)
}

/// The wait before retrying a failed renewal: the backoff's `next`, but no more than half the
/// time the certificate has left (and at least [`RETRY_MIN`]), so that a short-lived
/// certificate gets its attempts before it expires.
pub fn retry_delay(next: Duration, not_after_ns: i64, now_ns: i64) -> Duration {
    let left = u64::try_from(not_after_ns.saturating_sub(now_ns)).unwrap_or(0);
    next.min(Duration::from_nanos(left / 2)).max(RETRY_MIN)
}

/// What renewal needs to know of the agent's identity.
#[derive(Debug, Clone)]
pub struct RenewalConfig {
    pub agent_id: String,
    /// Where the key and certificate live.
    pub pair: PairPaths,
    /// The CA, to build the client configuration with the new certificate.
    pub ca: Vec<CertificateDer<'static>>,
    pub settings: QuicSettings,
    /// The validity of the certificate in use.
    pub current: Checked,
}

/// The renewal schedule of the certificate in use, across connections.
#[derive(Debug)]
pub struct Renewal {
    pub config: Arc<RenewalConfig>,
    /// When to try again after a failure, nanoseconds since the epoch.
    retry_at_ns: Option<i64>,
    backoff: ExponentialBackoff,
}

impl Renewal {
    pub fn new(config: RenewalConfig) -> Self {
        Renewal {
            config: Arc::new(config),
            retry_at_ns: None,
            backoff: backoff(),
        }
    }

    /// When the next attempt is due, nanoseconds since the epoch.
    pub fn next_attempt_ns(&self) -> i64 {
        let c = &self.config.current;
        self.retry_at_ns
            .unwrap_or_else(|| renewal_at(c.not_before_ns, c.not_after_ns))
    }

    /// Records a failed attempt at `now_ns`; returns the wait before the next.
    pub fn failed(&mut self, now_ns: i64) -> Duration {
        let next = self.backoff.next().unwrap_or(RETRY_MAX);
        let delay = retry_delay(next, self.config.current.not_after_ns, now_ns);
        self.retry_at_ns = Some(now_ns.saturating_add(outpost_common::time::duration_ns(delay)));
        delay
    }

    /// Records that the certificate was replaced by one valid for `current`.
    pub fn renewed(&mut self, current: Checked) {
        let mut config = (*self.config).clone();
        config.current = current;
        self.config = Arc::new(config);
        self.retry_at_ns = None;
        self.backoff = backoff();
    }
}

fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A certificate that replaced the old one on disk.
#[derive(Debug)]
pub struct Renewed {
    pub client: quinn::ClientConfig,
    pub validity: Checked,
    pub serial: String,
}

/// Asks for a new certificate on `conn` and installs it with its new key.
pub async fn renew(conn: quinn::Connection, config: Arc<RenewalConfig>) -> Result<Renewed, String> {
    let made = identity::new_key_and_csr(&config.agent_id).map_err(|e| e.to_string())?;
    let issued = tokio::time::timeout(REQUEST_TIMEOUT, request(&conn, made.csr_der))
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))??;
    tokio::task::spawn_blocking(move || install(&config, &made.key_pem, &issued))
        .await
        .map_err(|e| format!("installing the certificate failed: {e}"))?
}

/// Sends a renewal request on a stream of its own and reads the answer.
async fn request(conn: &quinn::Connection, csr_der: Vec<u8>) -> Result<Issued, String> {
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let msg = Message::RenewRequest(RenewRequest { csr_der });
    wire::write_message(&mut tx, &msg)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tx.finish();
    match wire::read_message(&mut rx, wire::DEFAULT_MAX_FRAME_BYTES)
        .await
        .map_err(|e| e.to_string())?
    {
        Message::RenewResponse(RenewResponse::Issued(issued)) => Ok(issued),
        Message::RenewResponse(RenewResponse::Refused { reason }) => {
            Err(format!("the aggregator refused: {reason}"))
        }
        other => Err(format!("answered {} to a renewal request", other.name())),
    }
}

/// Checks the issued certificate against the new key, replaces the pair on disk, and builds
/// the client configuration that presents it.
fn install(config: &RenewalConfig, key_pem: &str, issued: &Issued) -> Result<Renewed, String> {
    let validity = identity::check_issued(&config.agent_id, key_pem, &issued.cert_pem)
        .map_err(|e| e.to_string())?;
    let cert = identity::first_certificate(&issued.cert_pem)?;
    let serial = tls::identity_from_cert(&cert)
        .map(|i| i.serial_hex())
        .unwrap_or_default();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let client = tls::client_config(&config.ca, vec![cert], key, &config.settings)
        .map_err(|e| e.to_string())?;
    identity::install_pair(&config.pair, key_pem, &issued.cert_pem).map_err(|e| e.to_string())?;
    Ok(Renewed {
        client,
        validity,
        serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        // A one-minute certificate is renewed after 40 s: no minimum gets in the way.
        assert_eq!(renewal_at(100 * S, 160 * S), 140 * S);
        assert!(!renewal_due(100 * S, 160 * S, 140 * S - 1));
        assert!(renewal_due(100 * S, 160 * S, 140 * S));
        // A year-long one after eight months; an expired one at once.
        let year = 365 * 86_400 * S;
        assert_eq!(renewal_at(0, year), year / 3 * 2);
        assert!(renewal_due(0, 60 * S, 61 * S));
        // Nonsense validity (after before before) is due at once rather than never.
        assert!(renewal_due(100 * S, 50 * S, 100 * S));
        // The far ends do not overflow.
        let far = renewal_at(i64::MIN, i64::MAX);
        assert!(far > i64::MAX / 3 - 1 && far < i64::MAX / 3 + 1, "{far}");
        assert!(renewal_due(0, i64::MAX, i64::MAX));
    }

    #[test]
    fn retries_back_off_but_come_before_the_expiry() {
        assert_eq!(
            retry_delay(Duration::from_secs(8), 1000 * S, 0),
            Duration::from_secs(8)
        );
        // 20 s left: no wait beyond 10 s, whatever the backoff says.
        assert_eq!(
            retry_delay(Duration::from_secs(600), 60 * S, 40 * S),
            Duration::from_secs(10)
        );
        // Expired or about to: the shortest wait, not zero (no busy loop).
        assert_eq!(
            retry_delay(Duration::from_secs(600), 60 * S, 70 * S),
            RETRY_MIN
        );
    }

    #[test]
    fn the_schedule_follows_failures_and_starts_over_once_renewed() {
        let dir = std::path::PathBuf::from("/nonexistent");
        let mut r = Renewal::new(RenewalConfig {
            agent_id: "web-1".to_owned(),
            pair: PairPaths {
                key: dir.join("agent.key"),
                cert: dir.join("agent.pem"),
            },
            ca: Vec::new(),
            settings: QuicSettings::default(),
            current: Checked {
                not_before_ns: 0,
                not_after_ns: 3600 * S,
            },
        });
        assert_eq!(r.next_attempt_ns(), 2400 * S);
        let mut previous = Duration::ZERO;
        let mut now = 2400 * S;
        for _ in 0..4 {
            let wait = r.failed(now);
            assert!(
                wait >= RETRY_MIN && wait <= Duration::from_secs(600),
                "{wait:?}"
            );
            assert_eq!(
                r.next_attempt_ns(),
                now + outpost_common::time::duration_ns(wait)
            );
            now = r.next_attempt_ns();
            // Backoff with jitter: each wait is at least about the previous one.
            assert!(
                wait.as_secs_f64() >= previous.as_secs_f64() * 0.99,
                "{wait:?} {previous:?}"
            );
            previous = wait;
        }
        r.renewed(Checked {
            not_before_ns: 3000 * S,
            not_after_ns: 6000 * S,
        });
        assert_eq!(r.next_attempt_ns(), 5000 * S);
        // The backoff starts over: the first wait is the shortest again (plus jitter).
        assert!(r.failed(5000 * S) < RETRY_MIN * 2);
    }
}
