//! Join tokens as stored: never the token itself, only its SHA-256.

use std::collections::BTreeMap;

use super::StoreError;
use super::tx::Tx;

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

/// Uses one use of the token with this hash (inside a write: the check and the decrement are
/// one transaction). Refuses unknown, expired, revoked and used-up tokens, saying which.
pub(crate) async fn redeem(
    tx: &mut dyn Tx,
    hash: &str,
    now_ms: i64,
) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
    let token = match peek(tx, hash, now_ms).await? {
        Ok(token) => token,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if !tx.use_token(&token.id).await? {
        return Ok(Err(TokenRefusal::UsedUp));
    }
    Ok(Ok(TokenRecord {
        uses_left: token.uses_left - 1,
        ..token
    }))
}

/// The token with this hash if it can be used now, without using it; or why not.
pub(crate) async fn peek(
    tx: &mut dyn Tx,
    hash: &str,
    now_ms: i64,
) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
    let Some(token) = tx.token_by_hash(hash).await? else {
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
