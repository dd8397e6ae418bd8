//! Join tokens: made from 256 random bits, shown once, stored only as their SHA-256.

use sha2::{Digest, Sha256};

/// Every token starts with this, so a leaked one is easy to recognise (and to scan for).
pub const TOKEN_PREFIX: &str = "pcj_";

/// A new token: the secret text for the operator, its public id, and the hash to store.
pub struct NewToken {
    pub secret: String,
    pub id: String,
    pub hash: String,
}

/// Makes a new token.
pub fn generate() -> NewToken {
    let id = hex::encode(rand::random::<[u8; 4]>());
    let secret = format!(
        "{TOKEN_PREFIX}{id}_{}",
        hex::encode(rand::random::<[u8; 32]>())
    );
    let hash = hash(&secret);
    NewToken { secret, id, hash }
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_only_their_hash_is_kept() {
        let a = generate();
        let b = generate();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(TOKEN_PREFIX) && a.secret.contains(&a.id));
        assert_eq!(a.hash, hash(&a.secret));
        assert!(!a.hash.contains(&a.secret[TOKEN_PREFIX.len() + 9..]));
    }
}
