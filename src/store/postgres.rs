//! PostgreSQL, for several gateway instances sharing one set of budgets.
//! Reservations and settlements are the functions `ccgate_reserve` and
//! `ccgate_settle` (migration 0006): one round trip each, which locks the
//! project's period rows in one fixed order, checks every limit under the
//! locks and writes, so concurrent instances cannot overspend.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use super::agents::impl_agent_store;
use super::batches::impl_batch_store;
use super::keys::{impl_key_store, KeyChange, KeyChanges, KEY_CHANGES_CHANNEL};
use super::queries::{impl_store, to_i64};
use super::tasks::impl_task_store;
use super::{
    conflict_or, Completion, LedgerEntry, NewReservation, PeriodKind, ReserveOutcome, Store, StoreError,
    StoreResult,
};
use crate::money::Micros;

pub struct PostgresStore {
    writer: PgPool,
    reader: PgPool,
    /// The pool key-change listeners take their connection from, apart
    /// from the others so that one held for good takes none of theirs.
    listen: PgPool,
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
        // As `PgListener::connect` makes its own: one connection, held for good.
        let listen = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy(url)?;
        // One pool serves both roles: PostgreSQL has no single-writer limit.
        Ok(PostgresStore { writer: pool.clone(), reader: pool, listen })
    }

    async fn begin_write(&self) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
        self.writer.begin().await
    }

    async fn announce(&self, change: &KeyChange) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(KEY_CHANGES_CHANNEL)
            .bind(change.payload())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// A listener on a connection of its own (not the pool's), listening
    /// when this returns.
    async fn follow_key_changes(&self) -> StoreResult<Option<KeyChanges>> {
        let mut listener = PgListener::connect_with(&self.listen).await?;
        listener.listen(KEY_CHANGES_CHANNEL).await?;
        Ok(Some(KeyChanges(listener)))
    }
}

/// The budget writes, each one call of a function the migrations define
/// (the locking and checks are there).
impl PostgresStore {
    async fn ledger_reserve(&self, r: &NewReservation) -> StoreResult<ReserveOutcome> {
        let [day, week, month] = &r.periods;
        let outcome: String = sqlx::query_scalar(
            "SELECT ccgate_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&r.request_id)
        .bind(r.created_at_ms)
        .bind(&r.project_id)
        .bind(&r.key_id)
        .bind(&r.endpoint)
        .bind(&r.model_requested)
        .bind(&r.model_used)
        .bind(r.amount.0)
        .bind(day.start)
        .bind(week.start)
        .bind(month.start)
        .bind(&r.owner)
        .bind(r.expires_at_ms)
        .fetch_one(&self.writer)
        .await
        .map_err(|e| conflict_or(e, || format!("request {:?} already recorded", r.request_id)))?;
        match outcome.as_str() {
            "reserved" => Ok(ReserveOutcome::Reserved),
            "not_found" => Err(StoreError::NotFound(format!("project {:?} not found", r.project_id))),
            _ => {
                let limits = sqlx::query_as::<_, (Option<i64>, Option<i64>, Option<i64>)>(
                    "SELECT daily_limit_micros, weekly_limit_micros, monthly_limit_micros FROM projects \
                     WHERE id = $1",
                )
                .bind(&r.project_id)
                .fetch_optional(&self.reader)
                .await?
                .unwrap_or_default();
                self.exhausted(r, [limits.0, limits.1, limits.2]).await
            }
        }
    }

    /// Finds the first period (day, week, month) that has no room for the
    /// reservation, to explain a refusal.
    async fn exhausted(&self, r: &NewReservation, limits: [Option<i64>; 3]) -> StoreResult<ReserveOutcome> {
        let mut first_limited = None;
        for (slot, limit) in r.periods.iter().zip(limits) {
            let Some(limit) = limit.map(Micros) else { continue };
            let totals = self.period_totals(&r.project_id, slot.kind, slot.start).await?;
            first_limited.get_or_insert((slot, limit, totals));
            if totals.spent.0 + totals.reserved.0 + r.amount.0 > limit.0 {
                return Ok(exhausted(slot.kind, slot.start, limit, totals));
            }
        }
        // Room appeared between the refused update and this read; the caller
        // is refused all the same, naming the first limited period.
        let (slot, limit, totals) = match first_limited {
            Some(found) => found,
            None => (&r.periods[0], Micros::ZERO, Default::default()),
        };
        Ok(exhausted(slot.kind, slot.start, limit, totals))
    }

    async fn ledger_settle(&self, request_id: &str, c: &Completion) -> StoreResult<bool> {
        let settled: bool = sqlx::query_scalar(
            "SELECT ccgate_settle($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(request_id)
        .bind(&c.status)
        .bind(c.finished_at_ms)
        .bind(&c.model_used)
        .bind(c.http_status.map(i32::from))
        .bind(&c.error_message)
        .bind(to_i64(c.input_tokens))
        .bind(to_i64(c.output_tokens))
        .bind(to_i64(c.cache_read_tokens))
        .bind(to_i64(c.cache_write_tokens))
        .bind(c.cost.0)
        .bind(c.latency_ms.map(to_i64))
        .bind(c.ttft_ms.map(to_i64))
        .fetch_one(&self.writer)
        .await?;
        Ok(settled)
    }

    /// Nothing to do: every write here is answered after its commit.
    async fn ledger_replay(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Nothing to do, as for `ledger_replay`.
    async fn ledger_flush(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn ledger_record(&self, e: &LedgerEntry) -> StoreResult<()> {
        let c = &e.completion;
        sqlx::query(
            "INSERT INTO requests (request_id, created_at_ms, finished_at_ms, project_id, key_id, endpoint, \
             model_requested, model_used, status, http_status, error_message, input_tokens, output_tokens, \
             cost_micros, latency_ms, ttft_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&e.request_id)
        .bind(e.created_at_ms)
        .bind(c.finished_at_ms)
        .bind(&e.project_id)
        .bind(&e.key_id)
        .bind(&e.endpoint)
        .bind(&e.model_requested)
        .bind(&c.model_used)
        .bind(&c.status)
        .bind(c.http_status.map(i32::from))
        .bind(&c.error_message)
        .bind(to_i64(c.input_tokens))
        .bind(to_i64(c.output_tokens))
        .bind(c.cost.0)
        .bind(c.latency_ms.map(to_i64))
        .bind(c.ttft_ms.map(to_i64))
        .execute(&self.writer)
        .await
        .map_err(|err| conflict_or(err, || format!("request {:?} already recorded", e.request_id)))?;
        Ok(())
    }
}

fn exhausted(kind: PeriodKind, start: i64, limit: Micros, totals: super::PeriodTotals) -> ReserveOutcome {
    ReserveOutcome::Exhausted { kind, start, limit, spent: totals.spent, reserved: totals.reserved }
}

impl_batch_store!(PostgresStore, Postgres);
impl_key_store!(PostgresStore);
impl_task_store!(PostgresStore);
impl_agent_store!(PostgresStore);
impl_store!(PostgresStore, Postgres);
