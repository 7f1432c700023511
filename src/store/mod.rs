//! Persistence. The only module that speaks SQL: one `Store` trait, with a
//! SQLite and a PostgreSQL implementation chosen from the URL scheme, each
//! with its own migrations. Storage writes what it is given: ids, times and
//! amounts are decided by the domain code that calls it.

pub mod agents;
pub mod batches;
pub mod keys;
mod postgres;
mod queries;
mod sqlite;
mod sqlite_journal;
mod sqlite_ledger;
pub mod tasks;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::money::Micros;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Ledger(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url {0:?}: use sqlite://FILE or postgres://…")]
    UnsupportedUrl(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The three calendar periods a budget can limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    Day,
    Week,
    Month,
}

impl PeriodKind {
    pub const ALL: [PeriodKind; 3] = [PeriodKind::Day, PeriodKind::Week, PeriodKind::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Day => "day",
            PeriodKind::Week => "week",
            PeriodKind::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<PeriodKind> {
        PeriodKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub daily: Option<Micros>,
    pub weekly: Option<Micros>,
    pub monthly: Option<Micros>,
}

impl Limits {
    pub fn get(&self, kind: PeriodKind) -> Option<Micros> {
        match kind {
            PeriodKind::Day => self.daily,
            PeriodKind::Week => self.weekly,
            PeriodKind::Month => self.monthly,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub limits: Limits,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One period a reservation counts against, by its start (unix seconds).
/// Its limit is the project's, read in the transaction that reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodSlot {
    pub kind: PeriodKind,
    pub start: i64,
}

/// A ledger row written when a request starts; it doubles as the budget
/// reservation until it is settled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewReservation {
    pub request_id: String,
    pub created_at_ms: i64,
    pub project_id: String,
    pub key_id: Option<String>,
    pub endpoint: String,
    pub model_requested: Option<String>,
    pub model_used: Option<String>,
    pub amount: Micros,
    /// Always day, week and month, in that order: the fixed order is also
    /// the lock order, so concurrent reservations cannot deadlock.
    pub periods: [PeriodSlot; 3],
    pub owner: String,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved,
    /// The first period (in day, week, month order) that could not take it.
    Exhausted {
        kind: PeriodKind,
        start: i64,
        limit: Micros,
        spent: Micros,
        reserved: Micros,
    },
}

/// The end of a request: what it cost and how it went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Completion {
    pub finished_at_ms: i64,
    pub model_used: Option<String>,
    pub status: String,
    pub http_status: Option<u16>,
    pub error_message: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost: Micros,
    pub latency_ms: Option<u64>,
    pub ttft_ms: Option<u64>,
}

/// A ledger row for a request that never held a reservation (refused
/// before it could: bad input, unknown project, over budget…).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub request_id: String,
    pub created_at_ms: i64,
    pub project_id: String,
    pub key_id: Option<String>,
    pub endpoint: String,
    pub model_requested: Option<String>,
    pub completion: Completion,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodTotals {
    pub spent: Micros,
    pub reserved: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelUsage {
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Micros,
}

/// A ledger row as read back, for request logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub request_id: String,
    pub project_id: String,
    pub endpoint: String,
    pub model_requested: Option<String>,
    pub model_used: Option<String>,
    pub status: String,
    pub http_status: Option<i64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: Micros,
    pub reserved: Micros,
    pub latency_ms: Option<i64>,
    pub ttft_ms: Option<i64>,
    pub created_at_ms: i64,
}

#[async_trait]
pub trait Store:
    agents::AgentStore + batches::BatchStore + keys::KeyStore + tasks::TaskStore + Send + Sync + 'static
{
    async fn create_project(&self, project: &Project) -> StoreResult<()>;
    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>>;
    async fn list_projects(&self) -> StoreResult<Vec<Project>>;
    async fn update_project(&self, project: &Project) -> StoreResult<()>;
    /// Deletes a project and revokes its keys; its ledger stays.
    async fn delete_project(&self, id: &str, now_ms: i64) -> StoreResult<()>;

    /// Atomically adds `amount` to the reserved total of every period of the
    /// project, unless that would take any limited period past the limit the
    /// project has at that moment, and writes the request's ledger row. All
    /// or nothing; `NotFound` when the project does not exist.
    async fn reserve(&self, reservation: &NewReservation) -> StoreResult<ReserveOutcome>;
    /// Turns a reservation into spend: the ledger row takes its outcome, and
    /// each period trades the reserved amount for the actual cost. Returns
    /// false when the row was already settled (by crash recovery, say), in
    /// which case nothing changes.
    async fn settle(&self, request_id: &str, completion: &Completion) -> StoreResult<bool>;
    async fn record(&self, entry: &LedgerEntry) -> StoreResult<()>;

    async fn period_totals(
        &self,
        project_id: &str,
        kind: PeriodKind,
        start: i64,
    ) -> StoreResult<PeriodTotals>;
    async fn usage_by_model(
        &self,
        project_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> StoreResult<Vec<ModelUsage>>;
    async fn ledger(&self, project_id: &str, limit: i64) -> StoreResult<Vec<LedgerRow>>;
    async fn ledger_row(&self, request_id: &str) -> StoreResult<Option<LedgerRow>>;

    async fn register_instance(&self, id: &str, host: &str, pid: i64, now_ms: i64) -> StoreResult<()>;
    async fn heartbeat(&self, id: &str, now_ms: i64) -> StoreResult<()>;
    async fn remove_instance(&self, id: &str) -> StoreResult<()>;
    /// Instances other than `except` whose heartbeat is older than `stale_before_ms`.
    async fn instances(&self) -> StoreResult<Vec<InstanceRow>>;
    /// In-progress rows whose owner is in `dead_owners` or that expired
    /// before `now_ms`.
    async fn abandoned_reservations(&self, dead_owners: &[String], now_ms: i64) -> StoreResult<Vec<String>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub heartbeat_at_ms: i64,
}

/// Whether `url` names a SQLite database (which one gateway owns) rather
/// than a PostgreSQL one (which several may share).
pub fn is_sqlite_url(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Opens the store named by the URL and brings its schema up to date.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    if is_sqlite_url(url) {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}

/// Maps a unique-key violation to a conflict naming the thing.
fn conflict_or(error: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what()),
        _ => StoreError::Database(error),
    }
}
