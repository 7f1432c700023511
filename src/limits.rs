//! Rate limits per project key: requests per minute and tokens per minute in
//! fixed one-minute windows, and concurrent requests per instance.
//!
//! On PostgreSQL the windows are kept in the store, so instances sharing
//! the database share them. On SQLite, where one gateway owns the
//! database, they are kept in this process's memory (`LocalWindows`):
//! written to the database they cost two or three write transactions per
//! request, which on SQLite's single writer capped a gateway with limited
//! keys near 900 requests a second. A restart starts the current minute's
//! counts over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::store::keys::ApiKey;
use crate::store::{Store, StoreResult};

const WINDOW_MS: i64 = 60_000;

/// Limits that apply to a key: its own, else the configured defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub concurrent: Option<i64>,
}

pub struct RateLimiter {
    store: Arc<dyn Store>,
    windows: Windows,
    clock: Arc<dyn Clock>,
    defaults: KeyLimits,
    /// One semaphore per key with a concurrency limit. A std mutex: it is
    /// held only to look up or insert, never across an await.
    concurrency: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Whether a key has a tokens-per-minute limit, as seen when it was
    /// admitted (a key's limits never change): the tokens of a key without
    /// one are not written down, which would cost a database write per
    /// request for nothing.
    counts_tokens: Mutex<HashMap<String, bool>>,
}

/// What a request was allowed, with the headers that describe it.
pub struct Admitted {
    pub headers: HeaderMap,
    /// Held while the request (and its response body) lives.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// A refusal, with the same headers.
pub struct Refused {
    pub error: ApiError,
    pub headers: HeaderMap,
}

impl RateLimiter {
    /// `shared_windows`: keep the windows in the store, for instances that
    /// share it; otherwise in memory.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        defaults: KeyLimits,
        shared_windows: bool,
    ) -> RateLimiter {
        let windows = match shared_windows {
            true => Windows::Store(Arc::clone(&store)),
            false => Windows::Local(LocalWindows::default()),
        };
        RateLimiter {
            store,
            windows,
            clock,
            defaults,
            concurrency: Mutex::new(HashMap::new()),
            counts_tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits_for(&self, key: &ApiKey) -> KeyLimits {
        KeyLimits {
            rpm: key.rpm_limit.or(self.defaults.rpm),
            tpm: key.tpm_limit.or(self.defaults.tpm),
            concurrent: key.max_concurrent.or(self.defaults.concurrent),
        }
    }

    fn window(&self) -> (i64, u64) {
        let now = self.clock.now_ms();
        let start = now - now.rem_euclid(WINDOW_MS);
        let reset_secs = ((start + WINDOW_MS - now) as u64).div_ceil(1000);
        (start, reset_secs)
    }

    /// Counts one request against the key's limits, or refuses it.
    pub async fn admit(&self, key: &ApiKey) -> Result<Admitted, Refused> {
        let limits = self.limits_for(key);
        self.remember_token_limit(&key.key_id, limits.tpm.is_some());
        let (window, reset) = self.window();
        let mut headers = HeaderMap::new();
        let internal = |e: crate::store::StoreError, headers: &HeaderMap| Refused {
            error: ApiError::internal(e),
            headers: headers.clone(),
        };

        if let Some(tpm) = limits.tpm {
            let used =
                self.windows.used(&key.key_id, "tpm", window).await.map_err(|e| internal(e, &headers))?;
            set_headers(&mut headers, "tokens", tpm, (tpm - used).max(0), reset);
            if used >= tpm {
                return Err(Refused {
                    error: ApiError::RateLimited {
                        message: format!(
                            "key {} used its {tpm} tokens per minute; retry in {reset} s",
                            key.key_id
                        ),
                        retry_after_secs: Some(reset),
                    },
                    headers,
                });
            }
        }
        if let Some(rpm) = limits.rpm {
            let taken = self
                .windows
                .take(&key.key_id, "rpm", window, 1, rpm)
                .await
                .map_err(|e| internal(e, &headers))?;
            set_headers(&mut headers, "requests", rpm, taken.map(|t| rpm - t).unwrap_or(0), reset);
            if taken.is_none() {
                return Err(Refused {
                    error: ApiError::RateLimited {
                        message: format!(
                            "key {} made its {rpm} requests this minute; retry in {reset} s",
                            key.key_id
                        ),
                        retry_after_secs: Some(reset),
                    },
                    headers,
                });
            }
        }
        let permit = match limits.concurrent {
            None => None,
            Some(max) => {
                let semaphore = {
                    let mut map = self.concurrency.lock().unwrap_or_else(|e| e.into_inner());
                    Arc::clone(map.entry(key.key_id.clone()).or_insert_with(|| {
                        Arc::new(Semaphore::new(usize::try_from(max.max(0)).unwrap_or(0)))
                    }))
                };
                match semaphore.try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        return Err(Refused {
                            error: ApiError::RateLimited {
                                message: format!("key {} already has {max} requests in flight", key.key_id),
                                retry_after_secs: Some(1),
                            },
                            headers,
                        })
                    }
                }
            }
        };
        Ok(Admitted { headers, permit })
    }

    fn remember_token_limit(&self, key_id: &str, limited: bool) {
        let mut known = self.counts_tokens.lock().unwrap_or_else(|e| e.into_inner());
        if !known.contains_key(key_id) {
            known.insert(key_id.to_string(), limited);
        }
    }

    /// Whether a key's tokens count against a limit. A key not admitted
    /// since the gateway started (a batch resumed after a restart) is read
    /// from the store once.
    async fn counts_tokens(&self, key_id: &str) -> bool {
        if self.defaults.tpm.is_some() {
            return true;
        }
        let known = self.counts_tokens.lock().unwrap_or_else(|e| e.into_inner()).get(key_id).copied();
        if let Some(limited) = known {
            return limited;
        }
        match self.store.key_by_id(key_id).await {
            Ok(Some(key)) => {
                self.remember_token_limit(key_id, key.tpm_limit.is_some());
                key.tpm_limit.is_some()
            }
            // Counted when in doubt: a window too full is safer than none.
            _ => true,
        }
    }

    /// Adds the tokens a finished request used to its key's window, when
    /// the key has a tokens-per-minute limit.
    pub async fn record_tokens(&self, key_id: &str, tokens: u64) {
        if !self.counts_tokens(key_id).await {
            return;
        }
        let (window, _) = self.window();
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        if let Err(e) = self.windows.add(key_id, "tpm", window, tokens).await {
            tracing::warn!(error = %e, "failed to record token usage for rate limits");
        }
    }
}

/// Where the windows are kept (see the module's note).
enum Windows {
    Store(Arc<dyn Store>),
    Local(LocalWindows),
}

impl Windows {
    async fn used(&self, key_id: &str, kind: &'static str, window: i64) -> StoreResult<i64> {
        match self {
            Windows::Store(store) => store.window_used(key_id, kind, window).await,
            Windows::Local(local) => Ok(local.used(key_id, kind, window)),
        }
    }

    async fn take(
        &self,
        key_id: &str,
        kind: &'static str,
        window: i64,
        amount: i64,
        limit: i64,
    ) -> StoreResult<Option<i64>> {
        match self {
            Windows::Store(store) => store.take_from_window(key_id, kind, window, amount, limit).await,
            Windows::Local(local) => Ok(local.take(key_id, kind, window, amount, limit)),
        }
    }

    async fn add(&self, key_id: &str, kind: &'static str, window: i64, amount: i64) -> StoreResult<()> {
        match self {
            Windows::Store(store) => store.add_to_window(key_id, kind, window, amount).await,
            Windows::Local(local) => {
                local.add(key_id, kind, window, amount);
                Ok(())
            }
        }
    }
}

/// Windows kept in memory: each key's current minute per kind, the same
/// arithmetic as the store's `take_from_window`, `add_to_window` and
/// `window_used`.
#[derive(Default)]
struct LocalWindows {
    windows: Mutex<HashMap<WindowId, Window>>,
}

/// A key's id and the window's kind (`rpm`, `tpm`).
type WindowId = (String, &'static str);

/// The window's start and the amount used in it.
type Window = (i64, i64);

impl LocalWindows {
    fn with<T>(&self, key_id: &str, kind: &'static str, window: i64, f: impl FnOnce(&mut i64) -> T) -> T {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let entry = windows.entry((key_id.to_string(), kind)).or_insert((window, 0));
        if entry.0 != window {
            // A new minute; a clock stepping back also starts over.
            *entry = (window, 0);
        }
        f(&mut entry.1)
    }

    fn used(&self, key_id: &str, kind: &'static str, window: i64) -> i64 {
        self.with(key_id, kind, window, |used| *used)
    }

    /// Adds `amount` if the total stays within `limit`: the new total, or
    /// `None` (nothing added).
    fn take(&self, key_id: &str, kind: &'static str, window: i64, amount: i64, limit: i64) -> Option<i64> {
        self.with(key_id, kind, window, |used| {
            let total = used.saturating_add(amount);
            (total <= limit).then(|| {
                *used = total;
                total
            })
        })
    }

    fn add(&self, key_id: &str, kind: &'static str, window: i64, amount: i64) {
        self.with(key_id, kind, window, |used| *used = used.saturating_add(amount));
    }
}

fn set_headers(headers: &mut HeaderMap, what: &str, limit: i64, remaining: i64, reset_secs: u64) {
    let pairs = [
        (format!("x-ratelimit-limit-{what}"), limit.to_string()),
        (format!("x-ratelimit-remaining-{what}"), remaining.to_string()),
        (format!("x-ratelimit-reset-{what}"), format!("{reset_secs}s")),
    ];
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (axum::http::HeaderName::try_from(name), HeaderValue::from_str(&value))
        {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_windows_take_within_the_limit_and_start_over_each_minute() {
        let windows = LocalWindows::default();
        assert_eq!(windows.take("k", "rpm", 0, 1, 2), Some(1));
        assert_eq!(windows.take("k", "rpm", 0, 1, 2), Some(2));
        assert_eq!(windows.take("k", "rpm", 0, 1, 2), None, "over the limit");
        assert_eq!(windows.used("k", "rpm", 0), 2, "a refusal adds nothing");
        assert_eq!(windows.take("other", "rpm", 0, 1, 2), Some(1), "each key has its own");
        assert_eq!(windows.used("k", "tpm", 0), 0, "and each kind");
        assert_eq!(windows.take("k", "rpm", WINDOW_MS, 1, 2), Some(1), "a new minute");
        windows.add("k", "tpm", WINDOW_MS, 500);
        windows.add("k", "tpm", WINDOW_MS, i64::MAX);
        assert_eq!(windows.used("k", "tpm", WINDOW_MS), i64::MAX);
        assert_eq!(windows.used("k", "tpm", 2 * WINDOW_MS), 0);
    }
}
