//! API keys: minting, hashing and checking them, and who a request acts as.
//! Secrets are shown once, at creation; only their SHA-256 is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::store::keys::{ApiKey, KeyChange, KeyEvent};
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

/// How long a project key read from the store is trusted before it is read
/// again. A key revoked through this gateway stops working at once; one
/// revoked through another instance sharing the database, within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// The most keys the cache holds; past it, stale entries go, then all.
const KEY_CACHE_MAX: usize = 10_000;

/// Project keys by the hash of their secret, as last read from the store.
///
/// Every request with a key needs its row; reading it from the store each
/// time cost a database round trip on the request's path (through sqlx's
/// worker thread for SQLite), more than the rest of the gateway's own work.
/// A secret that names no key is remembered too, apart and for the same
/// time, so a client retrying with a wrong or deleted key costs no read
/// per request either. A key made on another instance still works here at
/// once: its secret is random and new, so no one can have presented it
/// before it existed.
pub struct KeyCache {
    ttl: Duration,
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    keys: HashMap<String, (Arc<ApiKey>, Instant)>,
    /// Hashes that named no key when read, and when. Apart from `keys`, so
    /// a flood of made-up secrets cannot push real keys out.
    unknown: HashMap<String, Instant>,
    /// Moves on every `forget`: a lookup that began before a revocation
    /// does not put back what it read (possibly the key unrevoked).
    generation: u64,
}

impl Default for KeyCache {
    fn default() -> KeyCache {
        KeyCache::new(KEY_CACHE_TTL)
    }
}

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache { ttl, state: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key and the cache's generation, which `put` needs.
    fn get(&self, hash: &str) -> (Option<Arc<ApiKey>>, u64) {
        let state = self.lock();
        let key = state.keys.get(hash).filter(|(_, read_at)| read_at.elapsed() < self.ttl);
        (key.map(|(key, _)| Arc::clone(key)), state.generation)
    }

    fn put(&self, hash: String, key: Arc<ApiKey>, generation: u64) {
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        if state.keys.len() >= KEY_CACHE_MAX {
            let ttl = self.ttl;
            state.keys.retain(|_, (_, read_at)| read_at.elapsed() < ttl);
            if state.keys.len() >= KEY_CACHE_MAX {
                state.keys.clear();
            }
        }
        state.keys.insert(hash, (key, Instant::now()));
    }

    /// Whether `hash` named no key when it was last read, within the TTL.
    fn is_unknown(&self, hash: &str) -> bool {
        self.lock().unknown.get(hash).is_some_and(|read_at| read_at.elapsed() < self.ttl)
    }

    fn put_unknown(&self, hash: String) {
        let mut state = self.lock();
        if state.unknown.len() >= KEY_CACHE_MAX {
            let ttl = self.ttl;
            state.unknown.retain(|_, read_at| read_at.elapsed() < ttl);
            if state.unknown.len() >= KEY_CACHE_MAX {
                state.unknown.clear();
            }
        }
        state.unknown.insert(hash, Instant::now());
    }

    /// Drops a key (revoked, or its project deleted) so the next request
    /// with it reads the store.
    pub fn forget(&self, key_id: &str) {
        let mut state = self.lock();
        state.generation += 1;
        state.keys.retain(|_, (key, _)| key.key_id != key_id);
    }

    /// Drops everything, for changes that may have been missed.
    pub fn forget_all(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.keys.clear();
        state.unknown.clear();
    }

    /// Drops what a change to keys touches.
    fn drop_changed(&self, change: &KeyChange) {
        match change {
            KeyChange::Revoked { key_id } => self.forget(key_id),
            KeyChange::ProjectDeleted { project_id } => self.forget_project(project_id),
        }
    }

    /// Applies what the announcements of all instances (this one's too) say.
    pub fn apply(&self, event: KeyEvent) {
        match event {
            KeyEvent::Changed(change) => self.drop_changed(&change),
            KeyEvent::Missed => self.forget_all(),
        }
    }

    /// Drops every key of a project.
    pub fn forget_project(&self, project_id: &str) {
        let mut state = self.lock();
        state.generation += 1;
        state.keys.retain(|_, (key, _)| key.project_id != project_id);
    }
}

/// Drops what `cache` keeps of the keys a change (made in the store by
/// now) touches, and tells the other instances sharing the database, so
/// they drop theirs at once. Should the announcement fail, they see the
/// change when their cached copy goes stale (`KEY_CACHE_TTL`).
pub async fn keys_changed(store: &dyn Store, cache: &KeyCache, change: KeyChange) {
    cache.drop_changed(&change);
    if let Err(e) = store.announce_key_change(&change).await {
        tracing::warn!(error = %e, ?change, "cannot tell other instances of a key change");
    }
}

/// Decides who presents `token`. `admin_key` is the configured admin key.
pub async fn authenticate(
    store: &Arc<dyn Store>,
    cache: &KeyCache,
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
            let hash = hash_secret(token);
            let invalid = || ApiError::Unauthorized("invalid API key".into());
            let key = match cache.get(&hash) {
                (Some(key), _) => key,
                (None, _) if cache.is_unknown(&hash) => return Err(invalid()),
                (None, generation) => {
                    let Some(key) = store.key_by_hash(&hash).await? else {
                        cache.put_unknown(hash);
                        return Err(invalid());
                    };
                    let key = Arc::new(key);
                    cache.put(hash, Arc::clone(&key), generation);
                    key
                }
            };
            if key.revoked_at_ms.is_some() {
                return Err(ApiError::Unauthorized(format!("API key {} has been revoked", key.key_id)));
            }
            if key.expires_at_ms.is_some_and(|t| t <= now_ms) {
                return Err(ApiError::Unauthorized(format!("API key {} has expired", key.key_id)));
            }
            Ok(Caller::Project(key))
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

    fn key(key_id: &str, project_id: &str) -> Arc<ApiKey> {
        Arc::new(ApiKey {
            key_id: key_id.into(),
            project_id: project_id.into(),
            name: String::new(),
            key_hash: format!("hash-{key_id}"),
            prefix: String::new(),
            created_at_ms: 0,
            expires_at_ms: None,
            revoked_at_ms: None,
            rpm_limit: None,
            tpm_limit: None,
            max_concurrent: None,
        })
    }

    #[test]
    fn the_key_cache_keeps_a_key_for_its_ttl_only() {
        let cache = KeyCache::new(Duration::from_millis(30));
        let (missing, generation) = cache.get("h1");
        assert!(missing.is_none());
        cache.put("h1".into(), key("k1", "p"), generation);
        assert_eq!(cache.get("h1").0.unwrap().key_id, "k1");
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get("h1").0.is_none(), "a stale key is read again");
    }

    #[test]
    fn a_forgotten_key_is_read_again_and_a_lookup_from_before_does_not_bring_it_back() {
        let cache = KeyCache::new(Duration::from_secs(60));
        let (_, generation) = cache.get("h1");
        cache.put("h1".into(), key("k1", "p"), generation);
        cache.put("h2".into(), key("k2", "q"), generation);
        // A lookup begins, then the key is revoked before it puts its row.
        let (_, before_revoke) = cache.get("h1");
        cache.forget("k1");
        assert!(cache.get("h1").0.is_none());
        assert_eq!(cache.get("h2").0.unwrap().key_id, "k2", "other keys stay");
        cache.put("h1".into(), key("k1", "p"), before_revoke);
        assert!(cache.get("h1").0.is_none(), "a read from before the revocation is not kept");
        cache.forget_project("q");
        assert!(cache.get("h2").0.is_none());
    }

    #[test]
    fn the_key_cache_stays_bounded() {
        let cache = KeyCache::new(Duration::from_secs(60));
        for i in 0..KEY_CACHE_MAX + 10 {
            let (_, generation) = cache.get("");
            cache.put(format!("h{i}"), key(&format!("k{i}"), "p"), generation);
        }
        assert!(cache.lock().keys.len() <= KEY_CACHE_MAX);
        let last = KEY_CACHE_MAX + 9;
        assert_eq!(cache.get(&format!("h{last}")).0.unwrap().key_id, format!("k{last}"));
    }

    #[test]
    fn unknown_secrets_are_remembered_for_the_ttl_apart_from_keys_and_bounded() {
        let cache = KeyCache::new(Duration::from_millis(30));
        let (_, generation) = cache.get("");
        cache.put("real".into(), key("k1", "p"), generation);
        assert!(!cache.is_unknown("made-up"));
        cache.put_unknown("made-up".into());
        assert!(cache.is_unknown("made-up"));
        // A flood of made-up secrets stays bounded and leaves the keys be.
        for i in 0..KEY_CACHE_MAX + 10 {
            cache.put_unknown(format!("u{i}"));
        }
        assert!(cache.lock().unknown.len() <= KEY_CACHE_MAX);
        assert_eq!(cache.get("real").0.unwrap().key_id, "k1");
        std::thread::sleep(Duration::from_millis(40));
        assert!(!cache.is_unknown(&format!("u{}", KEY_CACHE_MAX + 9)), "read again once stale");
    }
}
