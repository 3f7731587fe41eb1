//! Console sessions: an API token exchanged for a random session id kept in a cookie.
//!
//! The table is in memory: a restart signs everyone out, which costs a login and keeps no
//! credential on disk. The cookie holds 256 random bits; the table is keyed by their SHA-256,
//! so the table alone cannot be replayed. A session ends at logout, after [`IDLE`] without a
//! request, after [`LIFETIME`] in any case, or as soon as its token is revoked or expires (the
//! token is verified again on every request). Each session has its own CSRF token, which every
//! form carries and every POST must return.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::tokens::Role;

/// A session ends after this long without a request.
pub const IDLE: i64 = 60 * 60 * 1_000_000_000;
/// A session ends this long after login, used or not.
pub const LIFETIME: i64 = 12 * 60 * 60 * 1_000_000_000;
/// Sessions kept at most; logging in past it ends the least recently used one.
pub const MAX_SESSIONS: usize = 10_000;

/// The session cookie's name.
pub const COOKIE: &str = "outpost_session";
/// The cookie that carries the login form's CSRF token before there is a session.
pub const LOGIN_COOKIE: &str = "outpost_login";

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The id of the token that logged in.
    pub token_id: String,
    /// The token's name: what audit records and acknowledgements say.
    pub name: String,
    pub role: Role,
    /// What every form of this session carries.
    pub csrf: String,
    pub created_ns: i64,
    pub last_used_ns: i64,
}

impl Session {
    fn alive(&self, now_ns: i64) -> bool {
        now_ns.saturating_sub(self.last_used_ns) < IDLE
            && now_ns.saturating_sub(self.created_ns) < LIFETIME
    }
}

/// Every open session, by the hash of its cookie.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

/// 256 random bits, as cookie text.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

fn key(cookie: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cookie.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

impl Sessions {
    /// Opens a session for a token; answers the cookie's value and the session.
    pub fn open(&self, token_id: &str, name: &str, role: Role, now_ns: i64) -> (String, Session) {
        let cookie = random_token();
        let session = Session {
            token_id: token_id.to_owned(),
            name: name.to_owned(),
            role,
            csrf: random_token(),
            created_ns: now_ns,
            last_used_ns: now_ns,
        };
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, s| s.alive(now_ns));
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.last_used_ns)
                .map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(key(&cookie), session.clone());
        (cookie, session)
    }

    /// The live session of a cookie, marked used now; an ended one is forgotten.
    pub fn touch(&self, cookie: &str, now_ns: i64) -> Option<Session> {
        let k = key(cookie);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let session = open.get_mut(&k)?;
        if !session.alive(now_ns) {
            open.remove(&k);
            return None;
        }
        session.last_used_ns = now_ns;
        Some(session.clone())
    }

    /// Ends the session of a cookie.
    pub fn close(&self, cookie: &str) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key(cookie));
    }

    /// Ends every session of a token (its token was revoked or expired).
    pub fn close_token(&self, token_id: &str) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, s| s.token_id != token_id);
    }

    /// Sessions open now.
    pub fn count(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` over TLS; `None`
/// deletes it.
pub fn set_cookie(name: &str, value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!("{name}={v}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn a_session_is_found_by_its_cookie_only_and_ends_at_logout() {
        let sessions = Sessions::default();
        let (cookie, opened) = sessions.open("t1", "alice", Role::Operator, 0);
        assert_eq!(
            sessions.touch(&cookie, S),
            Some(Session {
                last_used_ns: S,
                ..opened
            })
        );
        assert_eq!(sessions.touch("not-a-cookie", S), None);
        sessions.close(&cookie);
        assert_eq!(sessions.touch(&cookie, 2 * S), None);
    }

    #[test]
    fn a_session_ends_when_idle_and_at_its_lifetime_however_used() {
        let sessions = Sessions::default();
        let (idle, _) = sessions.open("t1", "a", Role::Viewer, 0);
        assert!(sessions.touch(&idle, IDLE - 1).is_some());
        assert!(
            sessions.touch(&idle, 2 * IDLE - 2).is_some(),
            "use keeps it open"
        );
        assert_eq!(sessions.touch(&idle, 3 * IDLE), None, "idle too long");
        assert_eq!(sessions.count(), 0, "an ended session is forgotten");

        let (busy, _) = sessions.open("t1", "a", Role::Viewer, 0);
        let mut now = 0;
        while now + IDLE / 2 < LIFETIME {
            now += IDLE / 2;
            assert!(sessions.touch(&busy, now).is_some());
        }
        assert_eq!(sessions.touch(&busy, LIFETIME), None, "past its lifetime");
    }

    #[test]
    fn revoking_a_token_ends_its_sessions_and_no_other() {
        let sessions = Sessions::default();
        let (a, _) = sessions.open("t1", "a", Role::Admin, 0);
        let (b, _) = sessions.open("t1", "a", Role::Admin, 0);
        let (c, _) = sessions.open("t2", "c", Role::Viewer, 0);
        sessions.close_token("t1");
        assert_eq!(sessions.touch(&a, 1), None);
        assert_eq!(sessions.touch(&b, 1), None);
        assert!(sessions.touch(&c, 1).is_some());
    }

    #[test]
    fn every_session_has_its_own_cookie_and_csrf_token() {
        let sessions = Sessions::default();
        let (c1, s1) = sessions.open("t", "a", Role::Viewer, 0);
        let (c2, s2) = sessions.open("t", "a", Role::Viewer, 0);
        assert_ne!(c1, c2);
        assert_ne!(s1.csrf, s2.csrf);
        assert_eq!(URL_SAFE_NO_PAD.decode(&c1).unwrap().len(), 32);
    }

    #[test]
    fn past_the_cap_the_least_recently_used_session_makes_room() {
        let sessions = Sessions::default();
        let (first, _) = sessions.open("t", "a", Role::Viewer, 0);
        for i in 1..MAX_SESSIONS as i64 {
            sessions.open("t", "a", Role::Viewer, i);
        }
        assert_eq!(sessions.count(), MAX_SESSIONS);
        sessions.open("t", "a", Role::Viewer, MAX_SESSIONS as i64);
        assert_eq!(sessions.count(), MAX_SESSIONS);
        assert_eq!(sessions.touch(&first, MAX_SESSIONS as i64), None);
    }

    #[test]
    fn cookies_are_read_from_the_header_and_written_strict() {
        let header = "a=1; outpost_session=abc; other=x=y";
        assert_eq!(cookie(header, COOKIE), Some("abc"));
        assert_eq!(cookie(header, "other"), Some("x=y"));
        assert_eq!(cookie(header, "missing"), None);
        assert_eq!(
            set_cookie(COOKIE, Some("v"), true),
            "outpost_session=v; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(set_cookie(COOKIE, None, false).contains("Max-Age=0"));
        assert!(!set_cookie(COOKIE, None, false).contains("Secure"));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }
}
