//! API keys: minting, hashing and checking them, and who a request acts as.
//! Secrets are shown once, at creation; only their SHA-256 is stored.

use std::sync::Arc;

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::store::keys::ApiKey;
use crate::store::Store;

/// Every ccgate key starts with this, so a key is recognisable in a leak
/// scan and tellable apart from another provider's key.
pub const KEY_PREFIX: &str = "ccg_";
const SECRET_LEN: usize = 40;

/// Who a request acts as.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No admin key is configured and the gateway listens on loopback: a
    /// single trusted user who may act for any project.
    Open,
    /// The admin key.
    Admin,
    /// A project key: bound to its project.
    Project(Arc<ApiKey>),
}

impl Caller {
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Caller::Project(key) => Some(&key.key_id),
            _ => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Open | Caller::Admin)
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new secret: the prefix and 40 random alphanumerics (~238 bits).
pub fn new_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let body: String = (0..SECRET_LEN).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
    format!("{KEY_PREFIX}{body}")
}

pub fn new_key_id() -> String {
    format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decides who presents `token`. `admin_key` is the configured admin key.
pub async fn authenticate(
    store: &Arc<dyn Store>,
    admin_key: Option<&str>,
    token: Option<&str>,
    now_ms: i64,
) -> Result<Caller, ApiError> {
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    if let (Some(admin), Some(token)) = (admin_key, token) {
        if constant_time_eq(admin.as_bytes(), token.as_bytes()) {
            return Ok(Caller::Admin);
        }
    }
    match (admin_key, token) {
        (_, Some(token)) if token.starts_with(KEY_PREFIX) => {
            let key = store.key_by_hash(&hash_secret(token)).await?;
            let Some(key) = key else { return Err(ApiError::Unauthorized("invalid API key".into())) };
            if key.revoked_at_ms.is_some() {
                return Err(ApiError::Unauthorized(format!("API key {} has been revoked", key.key_id)));
            }
            if key.expires_at_ms.is_some_and(|t| t <= now_ms) {
                return Err(ApiError::Unauthorized(format!("API key {} has expired", key.key_id)));
            }
            Ok(Caller::Project(Arc::new(key)))
        }
        // Open mode: clients that must send some key (the OpenAI SDKs do)
        // may send anything that is not a ccgate key.
        (None, _) => Ok(Caller::Open),
        (Some(_), Some(_)) => Err(ApiError::Unauthorized("invalid API key".into())),
        (Some(_), None) => Err(ApiError::Unauthorized(
            "an API key is required: send `Authorization: Bearer <key>` or `x-api-key: <key>`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_prefixed_and_hashed() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + SECRET_LEN);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), hash_secret(&b));
        assert!(!hash_secret(&a).contains(&a[4..]));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
