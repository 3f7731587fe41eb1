//! API tokens: what they look like, what they may do, and how a presented one is checked.
//!
//! A token is `outpost_<id>_<secret>`: `id` (16 hex digits) names it in lists, logs and the audit
//! log, `secret` (64 hex digits, 256 random bits) proves it. Only the SHA-256 of the secret is
//! stored, so the token is shown once, when it is created, and a copy of the database does not
//! hold one. With 256 random bits a fast hash is enough (a slow one protects guessable
//! passwords, not random keys). A presented secret is compared with the stored hash in constant
//! time.
//!
//! Pure: records in, verdicts out, `now` passed in.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// What every token starts with, so secret scanners can find leaked ones.
pub const PREFIX: &str = "outpost_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// What a token may do. Each role may do what the ones before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the fleet, metrics, logs, file changes and alerts.
    Viewer,
    /// Also acknowledges alerts and manages silences.
    Operator,
    /// Also manages tokens and rules, and reads the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a role (viewer, operator or admin)"))
    }
}

/// A stored token: everything but the secret, of which only the hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret.
    pub secret_sha256: [u8; 32],
    pub created_ns: i64,
    pub expires_ns: Option<i64>,
    pub revoked_ns: Option<i64>,
    pub last_used_ns: Option<i64>,
}

impl TokenRecord {
    /// Whether it can still be used at `now_ns`.
    pub fn active(&self, now_ns: i64) -> bool {
        self.revoked_ns.is_none() && self.expires_ns.is_none_or(|e| now_ns < e)
    }
}

/// A token just made: its record to store and the text to show once.
#[derive(Debug)]
pub struct NewToken {
    pub record: TokenRecord,
    pub text: String,
}

/// Makes a token named `name` with `role`, valid until `expires_ns` if given.
pub fn create(name: &str, role: Role, now_ns: i64, expires_ns: Option<i64>) -> NewToken {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let (id, secret) = (hex(&id), hex(&secret));
    NewToken {
        text: format!("{PREFIX}{id}_{secret}"),
        record: TokenRecord {
            id,
            name: name.to_owned(),
            role,
            secret_sha256: sha256(secret.as_bytes()),
            created_ns: now_ns,
            expires_ns,
            revoked_ns: None,
            last_used_ns: None,
        },
    }
}

/// Checks a token name: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a token name: use 1 to 64 letters, digits, `.`, `_` or `-`"
        ))
    }
}

/// A presented token taken apart: its id and its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub id: String,
    secret: String,
}

impl Presented {
    /// Parses `outpost_<id>_<secret>`; `None` when it is not shaped like a token.
    pub fn parse(text: &str) -> Option<Presented> {
        let rest = text.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let hex_of = |s: &str, bytes: usize| {
            s.len() == bytes * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        (hex_of(id, ID_BYTES) && hex_of(secret, SECRET_BYTES)).then(|| Presented {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// What checking a presented token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A token in force, of this record.
    Valid(TokenRecord),
    /// No such token, or the secret does not match: the caller is told nothing more.
    Unknown,
    Expired,
    Revoked,
}

/// Checks `presented` against the record stored under its id (`None`: no such id) at `now_ns`.
///
/// An expired or revoked token is told apart only once its secret matched, so a guess learns
/// nothing about which ids exist.
pub fn verify(presented: &Presented, stored: Option<TokenRecord>, now_ns: i64) -> Verdict {
    let Some(record) = stored else {
        return Verdict::Unknown;
    };
    let matches: bool = sha256(presented.secret.as_bytes())
        .ct_eq(&record.secret_sha256)
        .into();
    if !matches {
        return Verdict::Unknown;
    }
    if record.revoked_ns.is_some() {
        Verdict::Revoked
    } else if record.expires_ns.is_some_and(|e| now_ns >= e) {
        Verdict::Expired
    } else {
        Verdict::Valid(record)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    outpost_common::event::hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_parses_and_verifies_until_it_expires_or_is_revoked() {
        let t = create("ci-bot", Role::Operator, 100, Some(200));
        assert!(t.text.starts_with("outpost_"), "{}", t.text);
        assert_eq!(t.text.len(), PREFIX.len() + 16 + 1 + 64);
        let presented = Presented::parse(&t.text).unwrap();
        assert_eq!(presented.id, t.record.id);
        assert_eq!(
            verify(&presented, Some(t.record.clone()), 150),
            Verdict::Valid(t.record.clone())
        );
        assert_eq!(
            verify(&presented, Some(t.record.clone()), 200),
            Verdict::Expired
        );
        let revoked = TokenRecord {
            revoked_ns: Some(120),
            ..t.record.clone()
        };
        assert_eq!(verify(&presented, Some(revoked), 150), Verdict::Revoked);
        assert_eq!(verify(&presented, None, 150), Verdict::Unknown);
        // Two tokens never share an id or a secret.
        let other = create("ci-bot", Role::Operator, 100, None);
        assert_ne!(other.record.id, t.record.id);
        assert_ne!(other.record.secret_sha256, t.record.secret_sha256);
    }

    #[test]
    fn a_wrong_secret_says_nothing_about_the_token() {
        let t = create("a", Role::Admin, 0, Some(10));
        let mut text = t.text.clone();
        let last = text.pop().unwrap();
        text.push(if last == '0' { '1' } else { '0' });
        let forged = Presented::parse(&text).unwrap();
        // Not "expired" nor "revoked": a guess learns nothing.
        assert_eq!(
            verify(&forged, Some(t.record.clone()), 50),
            Verdict::Unknown
        );
        let revoked = TokenRecord {
            revoked_ns: Some(1),
            ..t.record
        };
        assert_eq!(verify(&forged, Some(revoked), 5), Verdict::Unknown);
    }

    #[test]
    fn only_token_shaped_text_parses() {
        let id = "0123456789abcdef";
        let secret = "ab".repeat(32);
        assert!(Presented::parse(&format!("outpost_{id}_{secret}")).is_some());
        for bad in [
            String::new(),
            format!("{id}_{secret}"),
            format!("outpost_{id}{secret}"),
            format!("outpost_{}_{secret}", &id[1..]),
            format!("outpost_{id}_{}", &secret[1..]),
            format!("outpost_{id}_{}", secret.to_uppercase()),
            format!("outpost_{id}_{secret}_"),
            format!("Bearer outpost_{id}_{secret}"),
        ] {
            assert_eq!(Presented::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .contains("viewer, operator or admin")
        );
        assert!(check_name("ci-bot.prod_1").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
