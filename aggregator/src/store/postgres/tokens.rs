//! API tokens and the audit log (tables `api_tokens` and `audit_log`).

use postgres::{Client, Row, Transaction};

use super::{BadValue, Fail, as_bigint, pg_text, unique_violation};
use crate::store::AuditEntry;
use crate::tokens::{Role, TokenRecord};

/// The columns a [`TokenRecord`] is read from.
macro_rules! columns {
    () => {
        "id, name, role, secret_sha256, created_ns, expires_ns, revoked_ns, last_used_ns"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO api_tokens (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
);

const TOKEN: &str = concat!("SELECT ", columns!(), " FROM api_tokens WHERE id = $1");

/// Newest first.
const TOKENS: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM api_tokens ORDER BY created_ns DESC, id COLLATE \"C\""
);

/// Revokes the token with the id, or failing that the one not revoked with the name; a
/// revoked token keeps its first revocation time.
const REVOKE: &str = concat!(
    "UPDATE api_tokens SET revoked_ns = coalesce(revoked_ns, $2)
     WHERE id = (SELECT id FROM api_tokens
                 WHERE id = $1 OR (name = $1 AND revoked_ns IS NULL)
                 ORDER BY id = $1 DESC LIMIT 1)
     RETURNING ",
    columns!()
);

/// Moves the last use forward, never back.
const TOUCH: &str = "UPDATE api_tokens SET last_used_ns = greatest(last_used_ns, $2) WHERE id = $1";

const APPEND_AUDIT: &str = "
INSERT INTO audit_log (time_ns, token_id, token_name, address, method, route, status, outcome)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Newest first, before an entry.
const AUDIT: &str = "
SELECT id, time_ns, token_id, token_name, address, method, route, status, outcome
FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2";

pub(super) fn insert(tx: &mut Transaction<'_>, t: &TokenRecord) -> Result<(), Fail> {
    let inserted = tx.execute(
        INSERT,
        &[
            &t.id,
            &t.name,
            &t.role.as_str(),
            &t.secret_sha256.as_slice(),
            &t.created_ns,
            &t.expires_ns,
            &t.revoked_ns,
            &t.last_used_ns,
        ],
    );
    match inserted {
        Ok(_) => Ok(()),
        Err(e) => Err(match unique_violation(&e) {
            Some("api_tokens_live_name") => Fail::Conflict(format!(
                "a token named `{}` exists already; revoke it first or choose another name",
                t.name
            )),
            Some(_) => Fail::Conflict(format!("a token with id {} exists already", t.id)),
            None => Fail::Db(e),
        }),
    }
}

pub(super) fn token(client: &mut Client, id: &str) -> Result<Option<TokenRecord>, Fail> {
    client
        .query_opt(TOKEN, &[&id])?
        .map(|row| decode(&row))
        .transpose()
}

pub(super) fn tokens(client: &mut Client) -> Result<Vec<TokenRecord>, Fail> {
    client.query(TOKENS, &[])?.iter().map(decode).collect()
}

pub(super) fn revoke(
    tx: &mut Transaction<'_>,
    id_or_name: &str,
    now_ns: i64,
) -> Result<Option<TokenRecord>, Fail> {
    tx.query_opt(REVOKE, &[&id_or_name, &now_ns])?
        .map(|row| decode(&row))
        .transpose()
}

pub(super) fn touch(client: &mut Client, id: &str, now_ns: i64) -> Result<(), Fail> {
    client.execute(TOUCH, &[&id, &now_ns])?;
    Ok(())
}

pub(super) fn append_audit(tx: &mut Transaction<'_>, entries: &[AuditEntry]) -> Result<(), Fail> {
    let insert = tx.prepare(APPEND_AUDIT)?;
    for e in entries {
        tx.execute(
            &insert,
            &[
                &e.time_ns,
                &e.token_id,
                &e.token_name,
                &pg_text(&e.address),
                &pg_text(&e.method),
                &pg_text(&e.route),
                &i32::from(e.status),
                &pg_text(&e.outcome),
            ],
        )?;
    }
    Ok(())
}

pub(super) fn audit(
    client: &mut Client,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<AuditEntry>, Fail> {
    client
        .query(AUDIT, &[&before.unwrap_or(i64::MAX), &as_bigint(limit)])?
        .iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.try_get("id")?,
                time_ns: r.try_get("time_ns")?,
                token_id: r.try_get("token_id")?,
                token_name: r.try_get("token_name")?,
                address: r.try_get("address")?,
                method: r.try_get("method")?,
                route: r.try_get("route")?,
                status: u16::try_from(r.try_get::<_, i32>("status")?)
                    .map_err(|e| BadValue::new("status", e))?,
                outcome: r.try_get("outcome")?,
            })
        })
        .collect()
}

fn decode(r: &Row) -> Result<TokenRecord, Fail> {
    let role: &str = r.try_get("role")?;
    let hash: &[u8] = r.try_get("secret_sha256")?;
    Ok(TokenRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: role.parse::<Role>().map_err(|e| BadValue::new("role", e))?,
        secret_sha256: hash
            .try_into()
            .map_err(|e| BadValue::new("secret_sha256", e))?,
        created_ns: r.try_get("created_ns")?,
        expires_ns: r.try_get("expires_ns")?,
        revoked_ns: r.try_get("revoked_ns")?,
        last_used_ns: r.try_get("last_used_ns")?,
    })
}
