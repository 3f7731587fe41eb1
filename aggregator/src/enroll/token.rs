//! Enrollment tokens as the aggregator keeps them: what a token allows, and how a presented one
//! is checked.
//!
//! The token's text ([`outpost_common::enroll::TokenBody`]) carries an 8-byte id and a 32-byte
//! random secret; only the secret's SHA-256 is stored, so the text is shown once and a copy of
//! the database enrolls nobody. As for API tokens ([`crate::tokens`]), 256 random bits need no
//! slow hash, and a presented secret is compared with the stored hash in constant time.
//!
//! Pure: records in, verdicts out, `now` passed in.

use outpost_common::enroll::{TOKEN_VERSION, TokenBody};
use rand::RngCore;
use subtle::ConstantTimeEq;

/// A stored enrollment token: everything but the secret, of which only the hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// 16 hex digits: the token body's 8-byte id.
    pub id: String,
    /// SHA-256 of the 32-byte secret.
    pub secret_sha256: [u8; 32],
    pub created_ns: i64,
    /// Enrollment tokens always expire: a forgotten one must not stay a way in.
    pub expires_ns: i64,
    /// Enrollments it allows; `None`: any number until it expires.
    pub max_uses: Option<u32>,
    /// Enrollments it was used for so far.
    pub uses: u32,
    /// Labels given to every agent enrolled with it, sorted by key (checked with
    /// [`outpost_common::wire::check_labels`]).
    pub labels: Vec<(String, String)>,
    /// It may enroll an id another live agent holds (to replace a host, or recover a lost key).
    pub allow_reenroll: bool,
    pub revoked_ns: Option<i64>,
}

impl EnrollmentToken {
    /// Whether it may still enroll an agent at `now_ns`.
    pub fn active(&self, now_ns: i64) -> bool {
        self.revoked_ns.is_none() && now_ns < self.expires_ns && !self.used_up()
    }

    /// Whether every use it allows is spent.
    pub fn used_up(&self) -> bool {
        self.max_uses.is_some_and(|max| self.uses >= max)
    }

    /// `active`, `expired`, `used up` or `revoked`, for lists.
    pub fn state(&self, now_ns: i64) -> &'static str {
        if self.revoked_ns.is_some() {
            "revoked"
        } else if now_ns >= self.expires_ns {
            "expired"
        } else if self.used_up() {
            "used up"
        } else {
            "active"
        }
    }
}

/// What a new enrollment token is to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub expires_ns: i64,
    pub max_uses: Option<u32>,
    pub labels: Vec<(String, String)>,
    pub allow_reenroll: bool,
    /// Where agents enroll: `host:port`, checked with [`outpost_common::enroll::check_endpoint`].
    pub endpoints: Vec<String>,
    /// The aggregator's CA certificate (DER), whose hash the token pins.
    pub ca_der: Vec<u8>,
}

/// A token just made: its record to store and the text to show once.
#[derive(Debug)]
pub struct NewEnrollmentToken {
    pub record: EnrollmentToken,
    pub text: String,
}

/// Makes an enrollment token, after checking its labels and endpoints.
pub fn create(mut spec: TokenSpec, now_ns: i64) -> Result<NewEnrollmentToken, String> {
    spec.labels.sort();
    outpost_common::wire::check_labels(&spec.labels)?;
    if spec.endpoints.is_empty() {
        return Err("an enrollment token needs at least one endpoint (host:port)".to_owned());
    }
    if spec.endpoints.len() > outpost_common::enroll::MAX_ENDPOINTS {
        return Err(format!(
            "{} endpoints; a token holds at most {}",
            spec.endpoints.len(),
            outpost_common::enroll::MAX_ENDPOINTS
        ));
    }
    for e in &spec.endpoints {
        outpost_common::enroll::check_endpoint(e).map_err(|e| e.to_string())?;
    }
    if spec.max_uses == Some(0) {
        return Err("a token allowing 0 uses enrolls nobody; give --uses 1 or more".to_owned());
    }
    if spec.expires_ns <= now_ns {
        return Err("the token would expire before it is made".to_owned());
    }
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let body = TokenBody {
        version: TOKEN_VERSION,
        id,
        secret,
        ca_sha256: outpost_common::enroll::ca_sha256(&spec.ca_der),
        endpoints: spec.endpoints,
    };
    Ok(NewEnrollmentToken {
        text: body.encode(),
        record: EnrollmentToken {
            id: body.id_hex(),
            secret_sha256: sha256(&secret),
            created_ns: now_ns,
            expires_ns: spec.expires_ns,
            max_uses: spec.max_uses,
            uses: 0,
            labels: spec.labels,
            allow_reenroll: spec.allow_reenroll,
            revoked_ns: None,
        },
    })
}

/// What checking a presented token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A token that may enroll now.
    Valid(EnrollmentToken),
    /// No such token, or the secret does not match: the caller is told nothing more.
    Unknown,
    Expired {
        expires_ns: i64,
    },
    UsedUp {
        uses: u32,
    },
    Revoked,
}

/// Checks a presented secret against the record stored under the token's id (`None`: no such
/// id) at `now_ns`.
///
/// Whether the token is expired, used up or revoked is told only once its secret matched, so
/// a guess learns nothing about which ids exist.
pub fn verify(secret: &[u8; 32], stored: Option<EnrollmentToken>, now_ns: i64) -> Verdict {
    let Some(record) = stored else {
        return Verdict::Unknown;
    };
    let matches: bool = sha256(secret).ct_eq(&record.secret_sha256).into();
    if !matches {
        Verdict::Unknown
    } else if record.revoked_ns.is_some() {
        Verdict::Revoked
    } else if now_ns >= record.expires_ns {
        Verdict::Expired {
            expires_ns: record.expires_ns,
        }
    } else if record.used_up() {
        Verdict::UsedUp { uses: record.uses }
    } else {
        Verdict::Valid(record)
    }
}

/// Parses `key=value` (a `--label`).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not a label: write key=value"))?;
    Ok((k.to_owned(), v.to_owned()))
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TokenSpec {
        TokenSpec {
            expires_ns: 1_000,
            max_uses: Some(2),
            labels: vec![
                ("site".into(), "paris".into()),
                ("env".into(), "prod".into()),
            ],
            allow_reenroll: false,
            endpoints: vec!["aggregator.example.net:4433".into()],
            ca_der: b"ca".to_vec(),
        }
    }

    #[test]
    fn a_created_token_reads_back_and_verifies_until_expired_used_up_or_revoked() {
        let made = create(spec(), 10).unwrap();
        let body = TokenBody::parse(&made.text).unwrap();
        assert_eq!(body.id_hex(), made.record.id);
        assert_eq!(body.ca_sha256, outpost_common::enroll::ca_sha256(b"ca"));
        assert_eq!(body.endpoints, ["aggregator.example.net:4433"]);
        // Labels are kept sorted.
        assert_eq!(made.record.labels[0].0, "env");
        let r = made.record.clone();
        assert_eq!(
            verify(&body.secret, Some(r.clone()), 500),
            Verdict::Valid(r.clone())
        );
        assert_eq!(
            verify(&body.secret, Some(r.clone()), 1_000),
            Verdict::Expired { expires_ns: 1_000 }
        );
        let used = EnrollmentToken {
            uses: 2,
            ..r.clone()
        };
        assert_eq!(
            verify(&body.secret, Some(used.clone()), 500),
            Verdict::UsedUp { uses: 2 }
        );
        assert_eq!(used.state(500), "used up");
        let revoked = EnrollmentToken {
            revoked_ns: Some(20),
            ..r.clone()
        };
        assert_eq!(
            verify(&body.secret, Some(revoked.clone()), 500),
            Verdict::Revoked
        );
        // A wrong secret learns nothing, whatever the token's state.
        let mut forged = body.secret;
        forged[0] ^= 1;
        for record in [r, used, revoked] {
            assert_eq!(verify(&forged, Some(record), 500), Verdict::Unknown);
        }
        assert_eq!(verify(&body.secret, None, 500), Verdict::Unknown);
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let bad_label = TokenSpec {
            labels: vec![("1x".into(), "v".into())],
            ..spec()
        };
        assert!(create(bad_label, 0).unwrap_err().contains("label `1x`"));
        let none = TokenSpec {
            endpoints: vec![],
            ..spec()
        };
        assert!(create(none, 0).unwrap_err().contains("endpoint"));
        let bad = TokenSpec {
            endpoints: vec!["no-port".into()],
            ..spec()
        };
        assert!(create(bad, 0).unwrap_err().contains("no-port"));
        let zero = TokenSpec {
            max_uses: Some(0),
            ..spec()
        };
        assert!(create(zero, 0).unwrap_err().contains("0 uses"));
        assert!(create(spec(), 1_000).is_err());
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_label("ab").is_err());
    }
}
