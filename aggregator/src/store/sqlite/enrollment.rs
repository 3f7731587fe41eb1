//! Enrollment tokens and enrolled keys in SQLite (tables `enrollment_tokens` and
//! `enrolled_keys`, schema 12).
//!
//! Written with `synchronous=FULL` like API tokens: a token shown to its owner, and a use
//! spent on a certificate already sent, must survive a crash.

use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};

use super::WriteState;
use crate::enroll::token::EnrollmentToken;
use crate::store::{Enrollment, StoreError};

const COLUMNS: &str = "id, secret_sha256, created_ns, expires_ns, max_uses, uses, labels, \
                       allow_reenroll, revoked_ns";

fn conversion(column: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Blob, Box::new(e))
}

fn token_row(r: &Row<'_>) -> rusqlite::Result<EnrollmentToken> {
    let hash: Vec<u8> = r.get(1)?;
    let secret_sha256 = <[u8; 32]>::try_from(hash.as_slice()).map_err(|e| conversion(1, e))?;
    let labels: String = r.get(6)?;
    let labels: Vec<(String, String)> =
        serde_json::from_str(&labels).map_err(|e| conversion(6, e))?;
    Ok(EnrollmentToken {
        id: r.get(0)?,
        secret_sha256,
        created_ns: r.get(2)?,
        expires_ns: r.get(3)?,
        max_uses: r.get(4)?,
        uses: r.get(5)?,
        labels,
        allow_reenroll: r.get(7)?,
        revoked_ns: r.get(8)?,
    })
}

pub(super) fn token(conn: &Connection, id: &str) -> Result<Option<EnrollmentToken>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM enrollment_tokens WHERE id = ?1"
    ))
    .and_then(|mut s| s.query_row([id], token_row).optional())
    .map_err(|e| StoreError::backend(format!("reading enrollment token {id}"), e))
}

pub(super) fn tokens(conn: &Connection) -> Result<Vec<EnrollmentToken>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM enrollment_tokens ORDER BY created_ns DESC, id"
    ))
    .and_then(|mut s| s.query_map([], token_row)?.collect())
    .map_err(|e| StoreError::backend("listing enrollment tokens", e))
}

pub(super) fn key_enrolled(conn: &Connection, key_sha256: &[u8; 32]) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM enrolled_keys WHERE key_sha256 = ?1)")
        .and_then(|mut s| s.query_row([key_sha256.as_slice()], |r| r.get(0)))
        .map_err(|e| StoreError::backend("looking up an enrolled key", e))
}

impl WriteState {
    pub(super) fn insert_enrollment_token(
        &mut self,
        t: &EnrollmentToken,
    ) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&t.labels)
            .map_err(|e| StoreError::backend(format!("storing enrollment token {}", t.id), e))?;
        self.conn
            .execute(
                &format!(
                    "INSERT INTO enrollment_tokens ({COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    t.id,
                    t.secret_sha256.as_slice(),
                    t.created_ns,
                    t.expires_ns,
                    t.max_uses,
                    t.uses,
                    labels,
                    t.allow_reenroll,
                    t.revoked_ns
                ],
            )
            .map(drop)
            .map_err(|e| StoreError::backend(format!("storing enrollment token {}", t.id), e))
    }

    pub(super) fn revoke_enrollment_token(
        &mut self,
        id: &str,
        now_ns: i64,
    ) -> Result<Option<EnrollmentToken>, StoreError> {
        let context = || format!("revoking enrollment token {id}");
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StoreError::backend(context(), e))?;
        tx.execute(
            "UPDATE enrollment_tokens SET revoked_ns = ?2 WHERE id = ?1 AND revoked_ns IS NULL",
            params![id, now_ns],
        )
        .map_err(|e| StoreError::backend(context(), e))?;
        let record = token(&tx, id)?;
        tx.commit().map_err(|e| StoreError::backend(context(), e))?;
        Ok(record)
    }

    /// Spends the token's use (if any) and records the key, in one transaction; refuses with
    /// [`StoreError::Conflict`] when either was taken meanwhile.
    pub(super) fn record_enrollment(&mut self, e: &Enrollment) -> Result<(), StoreError> {
        let context = || format!("recording the enrollment of agent {}", e.agent_id);
        let tx = self
            .conn
            .transaction()
            .map_err(|err| StoreError::backend(context(), err))?;
        if let Some(token_id) = &e.token_id {
            // The checks of `enroll::token::verify` again, inside the transaction: two agents
            // enrolling at once with a token's last use cannot both have it.
            let spent = tx
                .execute(
                    "UPDATE enrollment_tokens SET uses = uses + 1
                     WHERE id = ?1 AND revoked_ns IS NULL AND expires_ns > ?2
                       AND (max_uses IS NULL OR uses < max_uses)",
                    params![token_id, e.now_ns],
                )
                .map_err(|err| StoreError::backend(context(), err))?;
            if spent == 0 {
                return Err(StoreError::Conflict(format!(
                    "enrollment token {token_id} was used up, revoked or expired meanwhile"
                )));
            }
        }
        let inserted = tx.execute(
            "INSERT INTO enrolled_keys (key_sha256, agent_id, token_id, enrolled_ns)
             VALUES (?1, ?2, ?3, ?4)",
            params![e.key_sha256.as_slice(), e.agent_id, e.token_id, e.now_ns],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::Conflict(
                    "this public key was certified before".to_owned(),
                ));
            }
            Err(err) => return Err(StoreError::backend(context(), err)),
        }
        tx.commit()
            .map_err(|err| StoreError::backend(context(), err))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::open;
    use crate::enroll::token::{self, EnrollmentToken, TokenSpec};
    use crate::store::{Enrollment, StateStore, StoreError};

    fn made(max_uses: Option<u32>, expires_ns: i64) -> EnrollmentToken {
        token::create(
            TokenSpec {
                expires_ns,
                max_uses,
                labels: vec![("site".into(), "paris".into())],
                allow_reenroll: true,
                endpoints: vec!["a.example:4433".into()],
                ca_der: b"ca".to_vec(),
            },
            10,
        )
        .unwrap()
        .record
    }

    fn enrollment(key: u8, token_id: Option<&str>, now_ns: i64) -> Enrollment {
        Enrollment {
            key_sha256: [key; 32],
            agent_id: "web-1".to_owned(),
            token_id: token_id.map(str::to_owned),
            now_ns,
        }
    }

    #[test]
    fn enrollment_tokens_are_stored_listed_and_revoked() {
        let (_dir, store) = open();
        let a = made(Some(2), 1_000);
        let b = made(None, 2_000);
        store.insert_enrollment_token(&a).unwrap();
        store.insert_enrollment_token(&b).unwrap();
        assert_eq!(store.enrollment_token(&a.id).unwrap(), Some(a.clone()));
        assert_eq!(store.enrollment_token("0000000000000000").unwrap(), None);
        assert_eq!(store.enrollment_tokens().unwrap().len(), 2);
        let revoked = store.revoke_enrollment_token(&a.id, 50).unwrap().unwrap();
        assert_eq!(revoked.revoked_ns, Some(50));
        // Revoking twice keeps the first time; an unknown id is none.
        let twice = store.revoke_enrollment_token(&a.id, 60).unwrap().unwrap();
        assert_eq!(twice.revoked_ns, Some(50));
        assert_eq!(store.revoke_enrollment_token("nope", 60).unwrap(), None);
        // A revoked token enrolls nobody, even if asked directly.
        let err = store
            .record_enrollment(&enrollment(1, Some(&a.id), 70))
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    }

    #[test]
    fn each_enrollment_spends_a_use_and_its_key_only_once() {
        let (_dir, store) = open();
        let t = made(Some(2), 1_000);
        store.insert_enrollment_token(&t).unwrap();
        store
            .record_enrollment(&enrollment(1, Some(&t.id), 100))
            .unwrap();
        assert!(store.key_enrolled(&[1; 32]).unwrap());
        assert!(!store.key_enrolled(&[2; 32]).unwrap());
        // The same key again: refused, and the use is not spent.
        let err = store
            .record_enrollment(&enrollment(1, Some(&t.id), 110))
            .unwrap_err();
        assert!(err.to_string().contains("certified before"), "{err}");
        assert_eq!(store.enrollment_token(&t.id).unwrap().unwrap().uses, 1);
        store
            .record_enrollment(&enrollment(2, Some(&t.id), 120))
            .unwrap();
        let used = store.enrollment_token(&t.id).unwrap().unwrap();
        assert_eq!((used.uses, used.used_up()), (2, true));
        // Used up.
        let err = store
            .record_enrollment(&enrollment(3, Some(&t.id), 130))
            .unwrap_err();
        assert!(err.to_string().contains("used up"), "{err}");
        // Renewals spend no token.
        store.record_enrollment(&enrollment(3, None, 140)).unwrap();
        // Expired.
        let old = made(None, 1_000);
        store.insert_enrollment_token(&old).unwrap();
        assert!(
            store
                .record_enrollment(&enrollment(4, Some(&old.id), 1_000))
                .is_err()
        );
    }
}
