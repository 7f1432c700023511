//! Storage of API keys and rate-limit windows, for both databases (the same
//! `$N` statements, like `queries`).

use async_trait::async_trait;

use super::StoreResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key_id: String,
    pub project_id: String,
    pub name: String,
    pub key_hash: String,
    pub prefix: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub max_concurrent: Option<i64>,
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn create_key(&self, key: &ApiKey) -> StoreResult<()>;
    async fn key_by_hash(&self, hash: &str) -> StoreResult<Option<ApiKey>>;
    async fn key_by_id(&self, key_id: &str) -> StoreResult<Option<ApiKey>>;
    async fn list_keys(&self, project_id: Option<&str>) -> StoreResult<Vec<ApiKey>>;
    /// Marks a key revoked; false when there is no such key.
    async fn revoke_key(&self, key_id: &str, now_ms: i64) -> StoreResult<bool>;
    /// Adds `amount` to a window if the total stays within `limit`; returns
    /// the new total, or `None` when it would not fit.
    async fn take_from_window(
        &self,
        key_id: &str,
        kind: &str,
        window_start: i64,
        amount: i64,
        limit: i64,
    ) -> StoreResult<Option<i64>>;
    /// Adds `amount` to a window unconditionally (tokens used after the fact).
    async fn add_to_window(
        &self,
        key_id: &str,
        kind: &str,
        window_start: i64,
        amount: i64,
    ) -> StoreResult<()>;
    async fn window_used(&self, key_id: &str, kind: &str, window_start: i64) -> StoreResult<i64>;
    /// Tells every instance sharing the database (their `key_changes`)
    /// that keys changed. Nothing on SQLite, which has no way to tell.
    async fn announce_key_change(&self, change: &KeyChange) -> StoreResult<()>;
    /// The key changes every instance announces, from now on; `None` on
    /// SQLite.
    async fn key_changes(&self) -> StoreResult<Option<KeyChanges>>;
}

/// A change to keys that instances keeping keys in memory must drop them for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    Revoked { key_id: String },
    ProjectDeleted { project_id: String },
}

/// The channel key changes are announced on (PostgreSQL's `NOTIFY`).
pub(super) const KEY_CHANGES_CHANNEL: &str = "ccgate_key_changes";

impl KeyChange {
    pub(super) fn payload(&self) -> String {
        match self {
            KeyChange::Revoked { key_id } => format!("key:{key_id}"),
            KeyChange::ProjectDeleted { project_id } => format!("project:{project_id}"),
        }
    }

    fn parse(payload: &str) -> Option<KeyChange> {
        match payload.split_once(':')? {
            ("key", id) => Some(KeyChange::Revoked { key_id: id.to_string() }),
            ("project", id) => Some(KeyChange::ProjectDeleted { project_id: id.to_string() }),
            _ => None,
        }
    }
}

/// What a follower of key changes learns next.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyEvent {
    Changed(KeyChange),
    /// The connection was lost (and made again): changes announced
    /// meanwhile were missed.
    Missed,
}

/// Key changes as they are announced (PostgreSQL's `LISTEN`).
pub struct KeyChanges(pub(super) sqlx::postgres::PgListener);

impl KeyChanges {
    pub async fn next(&mut self) -> KeyEvent {
        loop {
            match self.0.try_recv().await {
                Ok(Some(notice)) => match KeyChange::parse(notice.payload()) {
                    Some(change) => return KeyEvent::Changed(change),
                    None => tracing::warn!(payload = notice.payload(), "an unknown key change was announced"),
                },
                Ok(None) => return KeyEvent::Missed,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow key changes; trying again in a second");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    return KeyEvent::Missed;
                }
            }
        }
    }
}

pub(super) fn key_from_row<R>(row: &R) -> Result<ApiKey, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ApiKey {
        key_id: row.try_get("key_id")?,
        project_id: row.try_get("project_id")?,
        name: row.try_get("name")?,
        key_hash: row.try_get("key_hash")?,
        prefix: row.try_get("prefix")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        rpm_limit: row.try_get("rpm_limit")?,
        tpm_limit: row.try_get("tpm_limit")?,
        max_concurrent: row.try_get("max_concurrent")?,
    })
}

/// Implements `KeyStore` for a type with `writer` and `reader` pools and
/// `announce` and `follow_key_changes` methods (each database's own).
macro_rules! impl_key_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::keys::KeyStore for $store {
            async fn create_key(&self, k: &$crate::store::keys::ApiKey) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO api_keys (key_id, project_id, name, key_hash, prefix, created_at_ms, expires_at_ms, \
                     revoked_at_ms, rpm_limit, tpm_limit, max_concurrent) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&k.key_id)
                .bind(&k.project_id)
                .bind(&k.name)
                .bind(&k.key_hash)
                .bind(&k.prefix)
                .bind(k.created_at_ms)
                .bind(k.expires_at_ms)
                .bind(k.revoked_at_ms)
                .bind(k.rpm_limit)
                .bind(k.tpm_limit)
                .bind(k.max_concurrent)
                .execute(&self.writer)
                .await
                .map_err(|e| $crate::store::conflict_or(e, || format!("key {:?} already exists", k.key_id)))?;
                Ok(())
            }

            async fn key_by_hash(
                &self,
                hash: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::keys::ApiKey>> {
                let row = sqlx::query("SELECT * FROM api_keys WHERE key_hash = $1")
                    .bind(hash)
                    .fetch_optional(&self.reader)
                    .await?;
                Ok(row.map(|r| $crate::store::keys::key_from_row(&r)).transpose()?)
            }

            async fn key_by_id(
                &self,
                key_id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::keys::ApiKey>> {
                let row = sqlx::query("SELECT * FROM api_keys WHERE key_id = $1")
                    .bind(key_id)
                    .fetch_optional(&self.reader)
                    .await?;
                Ok(row.map(|r| $crate::store::keys::key_from_row(&r)).transpose()?)
            }

            async fn list_keys(
                &self,
                project_id: Option<&str>,
            ) -> $crate::store::StoreResult<Vec<$crate::store::keys::ApiKey>> {
                let rows = sqlx::query(
                    "SELECT * FROM api_keys WHERE (CAST($1 AS TEXT) IS NULL OR project_id = $1) \
                     ORDER BY created_at_ms, key_id",
                )
                .bind(project_id)
                .fetch_all(&self.reader)
                .await?;
                Ok(rows.iter().map($crate::store::keys::key_from_row).collect::<Result<_, _>>()?)
            }

            async fn revoke_key(&self, key_id: &str, now_ms: i64) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE key_id = $2",
                )
                .bind(now_ms)
                .bind(key_id)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn take_from_window(
                &self,
                key_id: &str,
                kind: &str,
                window_start: i64,
                amount: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Option<i64>> {
                if amount > limit {
                    return Ok(None);
                }
                let row = sqlx::query(
                    "INSERT INTO rate_windows (key_id, kind, window_start, used) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (key_id, kind, window_start) DO UPDATE SET used = rate_windows.used + $4 \
                     WHERE rate_windows.used + $4 <= $5 RETURNING used",
                )
                .bind(key_id)
                .bind(kind)
                .bind(window_start)
                .bind(amount)
                .bind(limit)
                .fetch_optional(&self.writer)
                .await?;
                Ok(row.map(|r| sqlx::Row::try_get(&r, 0)).transpose()?)
            }

            async fn add_to_window(
                &self,
                key_id: &str,
                kind: &str,
                window_start: i64,
                amount: i64,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO rate_windows (key_id, kind, window_start, used) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (key_id, kind, window_start) DO UPDATE SET used = rate_windows.used + $4",
                )
                .bind(key_id)
                .bind(kind)
                .bind(window_start)
                .bind(amount)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn window_used(&self, key_id: &str, kind: &str, window_start: i64) -> $crate::store::StoreResult<i64> {
                let row = sqlx::query(
                    "SELECT used FROM rate_windows WHERE key_id = $1 AND kind = $2 AND window_start = $3",
                )
                .bind(key_id)
                .bind(kind)
                .bind(window_start)
                .fetch_optional(&self.reader)
                .await?;
                Ok(row.map(|r| sqlx::Row::try_get(&r, 0)).transpose()?.unwrap_or(0))
            }

            async fn announce_key_change(
                &self,
                change: &$crate::store::keys::KeyChange,
            ) -> $crate::store::StoreResult<()> {
                self.announce(change).await
            }

            async fn key_changes(
                &self,
            ) -> $crate::store::StoreResult<Option<$crate::store::keys::KeyChanges>> {
                self.follow_key_changes().await
            }
        }
    };
}

pub(super) use impl_key_store;
