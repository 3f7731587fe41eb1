//! API tokens and the audit log in SQLite (tables `api_tokens` and `audit_log`, schema 6).
//!
//! Tokens are written with `synchronous=FULL` like batches (a token shown to its owner must
//! survive a crash); audit entries with `synchronous=NORMAL` like registry updates: atomic, and
//! durable with the next commit.

use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params};

use super::WriteState;
use crate::store::{AuditEntry, StoreError};
use crate::tokens::{Role, TokenRecord};

const TOKEN_COLUMNS: &str =
    "id, name, role, secret_sha256, created_ns, expires_ns, revoked_ns, last_used_ns";

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let role: String = r.get(2)?;
    let role = role.parse::<Role>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
    })?;
    let hash: Vec<u8> = r.get(3)?;
    let secret_sha256 = <[u8; 32]>::try_from(hash.as_slice()).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Blob, Box::new(e))
    })?;
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        role,
        secret_sha256,
        created_ns: r.get(4)?,
        expires_ns: r.get(5)?,
        revoked_ns: r.get(6)?,
        last_used_ns: r.get(7)?,
    })
}

pub(super) fn token(conn: &Connection, id: &str) -> Result<Option<TokenRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1"
    ))
    .and_then(|mut s| s.query_row([id], token_row).optional())
    .map_err(|e| StoreError::backend(format!("reading API token {id}"), e))
}

pub(super) fn tokens(conn: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_ns DESC, id"
    ))
    .and_then(|mut s| s.query_map([], token_row)?.collect())
    .map_err(|e| StoreError::backend("listing API tokens", e))
}

pub(super) fn audit(
    conn: &Connection,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    conn.prepare_cached(
        "SELECT id, time_ns, token_id, token_name, address, method, route, status, outcome
         FROM audit_log WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )
    .and_then(|mut s| {
        s.query_map(
            params![
                before.unwrap_or(i64::MAX),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    time_ns: r.get(1)?,
                    token_id: r.get(2)?,
                    token_name: r.get(3)?,
                    address: r.get(4)?,
                    method: r.get(5)?,
                    route: r.get(6)?,
                    status: r.get(7)?,
                    outcome: r.get(8)?,
                })
            },
        )?
        .collect()
    })
    .map_err(|e| StoreError::backend("reading the audit log", e))
}

impl WriteState {
    pub(super) fn insert_token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        let result = self.conn.execute(
            &format!(
                "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                t.id,
                t.name,
                t.role.as_str(),
                t.secret_sha256.as_slice(),
                t.created_ns,
                t.expires_ns,
                t.revoked_ns,
                t.last_used_ns
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Conflict(format!(
                    "a token named `{}` exists already; revoke it first or choose another name",
                    t.name
                )))
            }
            Err(e) => Err(StoreError::backend(
                format!("storing API token {}", t.name),
                e,
            )),
        }
    }

    pub(super) fn revoke_token(
        &mut self,
        id_or_name: &str,
        now_ns: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let context = || format!("revoking API token {id_or_name}");
        let tx = self
            .conn
            .transaction()
            .map_err(|e| StoreError::backend(context(), e))?;
        let found = tx
            .query_row(
                "SELECT id FROM api_tokens WHERE id = ?1
                 UNION ALL
                 SELECT id FROM (SELECT id FROM api_tokens WHERE name = ?1 AND revoked_ns IS NULL)
                 LIMIT 1",
                [id_or_name],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| StoreError::backend(context(), e))?;
        let Some(id) = found else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE api_tokens SET revoked_ns = ?2 WHERE id = ?1 AND revoked_ns IS NULL",
            params![id, now_ns],
        )
        .map_err(|e| StoreError::backend(context(), e))?;
        let record = token(&tx, &id)?;
        tx.commit().map_err(|e| StoreError::backend(context(), e))?;
        Ok(record)
    }

    pub(super) fn touch_token(&mut self, id: &str, now_ns: i64) -> Result<(), StoreError> {
        self.normal(|conn| {
            conn.execute(
                "UPDATE api_tokens SET last_used_ns = max(coalesce(last_used_ns, ?2), ?2)
                 WHERE id = ?1",
                params![id, now_ns],
            )
            .map(drop)
        })
        .map_err(|e| StoreError::backend(format!("recording the use of API token {id}"), e))
    }

    pub(super) fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        self.normal(|conn| {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO audit_log
                        (time_ns, token_id, token_name, address, method, route, status, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for e in entries {
                    insert.execute(params![
                        e.time_ns,
                        e.token_id,
                        e.token_name,
                        e.address,
                        e.method,
                        e.route,
                        e.status,
                        e.outcome
                    ])?;
                }
            }
            tx.commit()
        })
        .map_err(|e| StoreError::backend(format!("appending {} audit entries", entries.len()), e))
    }

    /// Runs `f` with `synchronous=NORMAL`, then puts `FULL` back.
    fn normal<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = f(&mut self.conn);
        let restored = self.conn.pragma_update(None, "synchronous", "FULL");
        let value = result?;
        restored?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::open;
    use crate::store::{AuditEntry, StateStore, StoreError};
    use crate::tokens::{self, Role};

    #[test]
    fn tokens_are_stored_listed_revoked_and_their_names_reused_only_once_revoked() {
        let (_dir, store) = open();
        let a = tokens::create("ci", Role::Viewer, 10, Some(1_000));
        store.insert_token(&a.record).unwrap();
        let again = tokens::create("ci", Role::Admin, 11, None);
        let err = store.insert_token(&again.record).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert!(err.to_string().contains("`ci` exists"), "{err}");
        assert_eq!(store.token(&a.record.id).unwrap(), Some(a.record.clone()));
        assert_eq!(store.token("0000000000000000").unwrap(), None);

        store.touch_token(&a.record.id, 50).unwrap();
        store.touch_token(&a.record.id, 40).unwrap();
        assert_eq!(
            store.token(&a.record.id).unwrap().unwrap().last_used_ns,
            Some(50)
        );

        // Revoked by name, then by id (no change), then the name is free again.
        let revoked = store.revoke_token("ci", 60).unwrap().unwrap();
        assert_eq!(
            (revoked.id.as_str(), revoked.revoked_ns),
            (a.record.id.as_str(), Some(60))
        );
        let twice = store.revoke_token(&a.record.id, 70).unwrap().unwrap();
        assert_eq!(twice.revoked_ns, Some(60));
        assert_eq!(store.revoke_token("ci", 80).unwrap(), None);
        store.insert_token(&again.record).unwrap();
        let listed: Vec<_> = store.tokens().unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(listed, [again.record.id.clone(), a.record.id.clone()]);
    }

    #[test]
    fn the_audit_log_pages_newest_first() {
        let (_dir, store) = open();
        let entry = |i: i64| AuditEntry {
            id: 0,
            time_ns: i,
            token_id: None,
            token_name: (i % 2 == 0).then(|| "ci".to_owned()),
            address: "127.0.0.1".to_owned(),
            method: "POST".to_owned(),
            route: "/api/v1/tokens".to_owned(),
            status: 401,
            outcome: "unauthorized".to_owned(),
        };
        store
            .append_audit(&(1..=5).map(entry).collect::<Vec<_>>())
            .unwrap();
        let first = store.audit(None, 2).unwrap();
        assert_eq!(first.iter().map(|e| e.time_ns).collect::<Vec<_>>(), [5, 4]);
        let next = store.audit(Some(first[1].id), 10).unwrap();
        assert_eq!(
            next.iter().map(|e| e.time_ns).collect::<Vec<_>>(),
            [3, 2, 1]
        );
        assert_eq!(next[1].token_name.as_deref(), Some("ci"));
        assert_eq!(
            next[2],
            AuditEntry {
                id: next[2].id,
                ..entry(1)
            }
        );
    }
}
