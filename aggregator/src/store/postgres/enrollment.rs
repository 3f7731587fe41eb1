//! Enrollment tokens and enrolled keys (tables `enrollment_tokens` and `enrolled_keys`).
//!
//! [`record`] is race-free between aggregators without a stricter isolation level: spending a
//! use is an `UPDATE` whose conditions PostgreSQL checks again on the row as the concurrent
//! writer that held it left it (so a token's last use goes to one enrollment only), and the key
//! is inserted under its primary key (so a concurrent insert of the same key waits for the first
//! to commit or roll back, then finds it or not).

use postgres::{Client, Row, Transaction};

use super::{BadValue, Fail, from_json, to_json};
use crate::enroll::token::EnrollmentToken;
use crate::store::Enrollment;

/// The columns an [`EnrollmentToken`] is read from.
macro_rules! columns {
    () => {
        "id, secret_sha256, created_ns, expires_ns, max_uses, uses, labels, allow_reenroll, \
         revoked_ns"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO enrollment_tokens (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);

const TOKEN: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM enrollment_tokens WHERE id = $1"
);

/// Newest first.
const TOKENS: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM enrollment_tokens ORDER BY created_ns DESC, id COLLATE \"C\""
);

/// A revoked token keeps its first revocation time.
const REVOKE: &str = concat!(
    "UPDATE enrollment_tokens SET revoked_ns = coalesce(revoked_ns, $2) WHERE id = $1
     RETURNING ",
    columns!()
);

const KEY_ENROLLED: &str = "SELECT EXISTS (SELECT 1 FROM enrolled_keys WHERE key_sha256 = $1)";

/// The checks of `enroll::token::verify` again, on the row as it is when the lock is had.
const SPEND_USE: &str = "
UPDATE enrollment_tokens SET uses = uses + 1
WHERE id = $1 AND revoked_ns IS NULL AND expires_ns > $2
  AND (max_uses IS NULL OR uses < max_uses)";

const RECORD_KEY: &str = "
INSERT INTO enrolled_keys (key_sha256, agent_id, token_id, enrolled_ns) VALUES ($1, $2, $3, $4)
ON CONFLICT (key_sha256) DO NOTHING";

pub(super) fn insert(tx: &mut Transaction<'_>, t: &EnrollmentToken) -> Result<(), Fail> {
    tx.execute(
        INSERT,
        &[
            &t.id,
            &t.secret_sha256.as_slice(),
            &t.created_ns,
            &t.expires_ns,
            &t.max_uses.map(i64::from),
            &i64::from(t.uses),
            &to_json("labels", &t.labels)?,
            &t.allow_reenroll,
            &t.revoked_ns,
        ],
    )?;
    Ok(())
}

pub(super) fn token(client: &mut Client, id: &str) -> Result<Option<EnrollmentToken>, Fail> {
    client
        .query_opt(TOKEN, &[&id])?
        .map(|row| decode(&row))
        .transpose()
}

pub(super) fn tokens(client: &mut Client) -> Result<Vec<EnrollmentToken>, Fail> {
    client.query(TOKENS, &[])?.iter().map(decode).collect()
}

pub(super) fn revoke(
    tx: &mut Transaction<'_>,
    id: &str,
    now_ns: i64,
) -> Result<Option<EnrollmentToken>, Fail> {
    tx.query_opt(REVOKE, &[&id, &now_ns])?
        .map(|row| decode(&row))
        .transpose()
}

pub(super) fn key_enrolled(client: &mut Client, key_sha256: &[u8; 32]) -> Result<bool, Fail> {
    Ok(client
        .query_one(KEY_ENROLLED, &[&key_sha256.as_slice()])?
        .try_get(0)?)
}

/// Spends the token's use (if any) and records the key, in the caller's transaction; a
/// [`Fail::Conflict`] when either was taken meanwhile, which rolls both back.
pub(super) fn record(tx: &mut Transaction<'_>, e: &Enrollment) -> Result<(), Fail> {
    if let Some(token_id) = &e.token_id
        && tx.execute(SPEND_USE, &[token_id, &e.now_ns])? == 0
    {
        return Err(Fail::Conflict(format!(
            "enrollment token {token_id} was used up, revoked or expired meanwhile"
        )));
    }
    let recorded = tx.execute(
        RECORD_KEY,
        &[
            &e.key_sha256.as_slice(),
            &e.agent_id,
            &e.token_id,
            &e.now_ns,
        ],
    )?;
    if recorded == 0 {
        return Err(Fail::Conflict(
            "this public key was certified before".to_owned(),
        ));
    }
    Ok(())
}

fn decode(r: &Row) -> Result<EnrollmentToken, Fail> {
    let hash: &[u8] = r.try_get("secret_sha256")?;
    let count = |column: &'static str, n: i64| {
        u32::try_from(n).map_err(|e| Fail::from(BadValue::new(column, e)))
    };
    Ok(EnrollmentToken {
        id: r.try_get("id")?,
        secret_sha256: hash
            .try_into()
            .map_err(|e| BadValue::new("secret_sha256", e))?,
        created_ns: r.try_get("created_ns")?,
        expires_ns: r.try_get("expires_ns")?,
        max_uses: r
            .try_get::<_, Option<i64>>("max_uses")?
            .map(|n| count("max_uses", n))
            .transpose()?,
        uses: count("uses", r.try_get("uses")?)?,
        labels: from_json("labels", r.try_get("labels")?)?,
        allow_reenroll: r.try_get("allow_reenroll")?,
        revoked_ns: r.try_get("revoked_ns")?,
    })
}
