//! PostgreSQL, for several gateway instances sharing one set of budgets.
//! Reservations rely on row locks taken by the conditional `UPDATE` in
//! `queries`: under READ COMMITTED a waiting update re-checks its condition
//! against the committed row, so concurrent instances cannot overspend.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};

use super::queries::impl_store;
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
}

impl_store!(PostgresStore, Postgres);
