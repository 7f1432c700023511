//! PostgreSQL, for several gateway instances sharing one set of budgets.
//! Reservations rely on row locks taken by the conditional `UPDATE` in
//! `queries`: under READ COMMITTED a waiting update re-checks its condition
//! against the committed row, so concurrent instances cannot overspend.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};

use super::agents::impl_agent_store;
use super::batches::impl_batch_store;
use super::keys::impl_key_store;
use super::queries::impl_store;
use super::tasks::impl_task_store;
use super::StoreResult;

pub struct PostgresStore {
    writer: PgPool,
    reader: PgPool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl PostgresStore {
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        // One pool serves both roles: PostgreSQL has no single-writer limit.
        Ok(PostgresStore { writer: pool.clone(), reader: pool })
    }

    async fn begin_write(&self) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
        self.writer.begin().await
    }

    /// Locks a project's three period rows in one fixed order before they
    /// are updated: a multi-row UPDATE locks rows in whatever order its scan
    /// meets them, and two such orders can deadlock.
    async fn lock_periods(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        project_id: &str,
        [day, week, month]: [i64; 3],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "SELECT 1 FROM period_totals WHERE project_id = $1 AND ((kind = 'day' AND period_start = $2) \
             OR (kind = 'week' AND period_start = $3) OR (kind = 'month' AND period_start = $4)) \
             ORDER BY kind FOR UPDATE",
        )
        .bind(project_id)
        .bind(day)
        .bind(week)
        .bind(month)
        .fetch_all(&mut **tx)
        .await?;
        Ok(())
    }
}

impl_batch_store!(PostgresStore, Postgres);
impl_key_store!(PostgresStore);
impl_task_store!(PostgresStore);
impl_agent_store!(PostgresStore);
impl_store!(PostgresStore, Postgres);
