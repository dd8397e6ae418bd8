//! Join tokens as stored: never the token itself, only its SHA-256.

use std::collections::BTreeMap;

use rusqlite::{Connection, Row, params};

use super::{StoreError, from_json, to_json};

/// Why a join token was not accepted. The text is shown to the enrolling agent's operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the join token is not known to this coordinator")]
    Unknown,
    #[error("the join token expired")]
    Expired,
    #[error("the join token was revoked")]
    Revoked,
    #[error("the join token is used up")]
    UsedUp,
}

/// A join token as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub hash: String,
    pub role: String,
    pub labels: BTreeMap<String, String>,
    pub uses_left: u32,
    pub uses_total: u32,
    pub expires_at_ms: i64,
    pub revoked: bool,
    pub created_at_ms: i64,
    pub created_by: String,
    /// The one existing host this token may re-enroll; empty: it enrolls new hosts only.
    pub replace_host: String,
}

const COLUMNS: &str = "id, hash, role, labels, uses_left, uses_total, expires_at_ms, revoked, \
     created_at_ms, created_by, replace_host";

fn from_row(row: &Row<'_>) -> Result<TokenRecord, StoreError> {
    let labels: String = row.get("labels")?;
    Ok(TokenRecord {
        id: row.get("id")?,
        hash: row.get("hash")?,
        role: row.get("role")?,
        labels: from_json("token labels", &labels)?,
        uses_left: row.get("uses_left")?,
        uses_total: row.get("uses_total")?,
        expires_at_ms: row.get("expires_at_ms")?,
        revoked: row.get("revoked")?,
        created_at_ms: row.get("created_at_ms")?,
        created_by: row.get("created_by")?,
        replace_host: row.get("replace_host")?,
    })
}

pub fn insert(conn: &Connection, token: &TokenRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ),
        params![
            token.id,
            token.hash,
            token.role,
            to_json("token labels", &token.labels)?,
            token.uses_left,
            token.uses_total,
            token.expires_at_ms,
            token.revoked,
            token.created_at_ms,
            token.created_by,
            token.replace_host
        ],
    )?;
    Ok(())
}

pub fn list(conn: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM tokens ORDER BY created_at_ms"
    ))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(from_row(row)?);
    }
    Ok(out)
}

fn by(conn: &Connection, column: &str, value: &str) -> Result<Option<TokenRecord>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM tokens WHERE {column} = ?1"))?;
    let mut rows = stmt.query(params![value])?;
    rows.next()?.map(from_row).transpose()
}

/// Uses one use of the token with this hash (run it inside a writer job: the check and the
/// decrement are one transaction). Refuses unknown, expired, revoked and used-up tokens,
/// saying which.
pub fn redeem(
    conn: &Connection,
    hash: &str,
    now_ms: i64,
) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
    let token = match peek(conn, hash, now_ms)? {
        Ok(token) => token,
        Err(refusal) => return Ok(Err(refusal)),
    };
    use_once(conn, &token.id)?;
    Ok(Ok(TokenRecord {
        uses_left: token.uses_left - 1,
        ..token
    }))
}

/// Spends one use of a token found usable by [`peek`] (in the same transaction).
pub fn use_once(conn: &Connection, id: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0",
        params![id],
    )?;
    Ok(())
}

/// The token with this hash if it can be used now, without using it; or why not.
pub fn peek(
    conn: &Connection,
    hash: &str,
    now_ms: i64,
) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
    let Some(token) = by(conn, "hash", hash)? else {
        return Ok(Err(TokenRefusal::Unknown));
    };
    let refusal = if token.revoked {
        Some(TokenRefusal::Revoked)
    } else if token.expires_at_ms <= now_ms {
        Some(TokenRefusal::Expired)
    } else if token.uses_left == 0 {
        Some(TokenRefusal::UsedUp)
    } else {
        None
    };
    Ok(match refusal {
        Some(refusal) => Err(refusal),
        None => Ok(token),
    })
}

/// Revokes a token; returns it, or None when no token has that id.
pub fn revoke(conn: &Connection, id: &str) -> Result<Option<TokenRecord>, StoreError> {
    conn.execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", params![id])?;
    by(conn, "id", id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn token(id: &str, uses: u32, expires: i64) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            hash: format!("hash-{id}"),
            role: "worker".into(),
            labels: BTreeMap::from([("cluster".into(), "a".into())]),
            uses_left: uses,
            uses_total: uses,
            expires_at_ms: expires,
            revoked: false,
            created_at_ms: 1,
            created_by: "admin".into(),
            replace_host: String::new(),
        }
    }

    #[test]
    fn tokens_are_counted_expire_and_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let redeem = |hash: &'static str, now: i64| {
            store.write_blocking(move |c| redeem(c, hash, now)).unwrap()
        };
        store
            .write_blocking(|c| {
                insert(c, &token("a", 2, 1000))?;
                insert(c, &token("b", 1, 1000))
            })
            .unwrap();
        assert_eq!(redeem("hash-a", 10).unwrap().uses_left, 1);
        assert_eq!(redeem("hash-a", 10).unwrap().labels["cluster"], "a");
        assert_eq!(redeem("hash-a", 10), Err(TokenRefusal::UsedUp));
        assert_eq!(redeem("hash-b", 1000), Err(TokenRefusal::Expired));
        store.write_blocking(|c| revoke(c, "b")).unwrap();
        assert_eq!(redeem("hash-b", 10), Err(TokenRefusal::Revoked));
        assert_eq!(redeem("nope", 10), Err(TokenRefusal::Unknown));
    }
}
