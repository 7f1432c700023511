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

/// The budget writes. Reservations rely on row locks: the three period rows
/// are locked in a fixed order, then one conditional `UPDATE` checks every
/// limit and adds the amount, so no other instance can slip in between.
impl PostgresStore {
    async fn ledger_reserve(&self, r: &NewReservation) -> StoreResult<ReserveOutcome> {
        let [day, week, month] = &r.periods;
        let mut tx = self.begin_write().await?;
        let limits = sqlx::query_as::<_, (Option<i64>, Option<i64>, Option<i64>)>(
            "SELECT daily_limit_micros, weekly_limit_micros, monthly_limit_micros FROM projects WHERE id = $1",
        )
        .bind(&r.project_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((daily, weekly, monthly)) = limits else {
            tx.rollback().await?;
            return Err(StoreError::NotFound(format!("project {:?} not found", r.project_id)));
        };
        sqlx::query(
            "INSERT INTO period_totals (project_id, kind, period_start, spent_micros, reserved_micros) \
             VALUES ($1, 'day', $2, 0, 0), ($1, 'week', $3, 0, 0), ($1, 'month', $4, 0, 0) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&r.project_id)
        .bind(day.start)
        .bind(week.start)
        .bind(month.start)
        .execute(&mut *tx)
        .await?;
        self.lock_periods(&mut tx, &r.project_id, [day.start, week.start, month.start]).await?;
        // The limit checks and the increments are one statement; it must
        // touch all three rows, or one period had no room.
        let done = sqlx::query(
            "UPDATE period_totals SET reserved_micros = reserved_micros + $1 WHERE project_id = $2 AND ( \
             (kind = 'day' AND period_start = $3 \
                AND (CAST($4 AS BIGINT) IS NULL OR spent_micros + reserved_micros + $1 <= $4)) \
             OR (kind = 'week' AND period_start = $5 \
                AND (CAST($6 AS BIGINT) IS NULL OR spent_micros + reserved_micros + $1 <= $6)) \
             OR (kind = 'month' AND period_start = $7 \
                AND (CAST($8 AS BIGINT) IS NULL OR spent_micros + reserved_micros + $1 <= $8)))",
        )
        .bind(r.amount.0)
        .bind(&r.project_id)
        .bind(day.start)
        .bind(daily)
        .bind(week.start)
        .bind(weekly)
        .bind(month.start)
        .bind(monthly)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 3 {
            tx.rollback().await?;
            return self.exhausted(r, [daily, weekly, monthly]).await;
        }
        sqlx::query(
            "INSERT INTO requests (request_id, created_at_ms, project_id, key_id, endpoint, \
             model_requested, model_used, status, reserved_micros, day_start, week_start, month_start, \
             owner, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, 'in_progress', $8, $9, $10, $11, $12, $13)",
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
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_or(e, || format!("request {:?} already recorded", r.request_id)))?;
        tx.commit().await?;
        Ok(ReserveOutcome::Reserved)
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
        let mut tx = self.begin_write().await?;
        let row = sqlx::query_as::<_, (String, i64, Option<i64>, Option<i64>, Option<i64>)>(
            "UPDATE requests SET status = $1, finished_at_ms = $2, model_used = COALESCE($3, model_used), \
             http_status = $4, error_message = $5, input_tokens = $6, output_tokens = $7, \
             cache_read_tokens = $8, cache_write_tokens = $9, cost_micros = $10, latency_ms = $11, \
             ttft_ms = $12 WHERE request_id = $13 AND status = 'in_progress' \
             RETURNING project_id, reserved_micros, day_start, week_start, month_start",
        )
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
        .bind(request_id)
        .fetch_optional(&mut *tx)
        .await?;
        // Already settled (by crash recovery, say): nothing changes.
        let Some((project_id, reserved, day, week, month)) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        if let (Some(d), Some(w), Some(m)) = (day, week, month) {
            self.lock_periods(&mut tx, &project_id, [d, w, m]).await?;
        }
        sqlx::query(
            "UPDATE period_totals SET reserved_micros = reserved_micros - $1, \
             spent_micros = spent_micros + $2 WHERE project_id = $3 AND ( \
             (kind = 'day' AND period_start = $4) OR (kind = 'week' AND period_start = $5) \
             OR (kind = 'month' AND period_start = $6))",
        )
        .bind(reserved)
        .bind(c.cost.0)
        .bind(&project_id)
        .bind(day)
        .bind(week)
        .bind(month)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
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
