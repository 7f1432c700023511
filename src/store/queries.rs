//! The SQL shared by both stores. The statements use `$N` parameters, which
//! SQLite and PostgreSQL both accept, so one body serves both databases; the
//! macro only supplies the database type, because sqlx's executor traits
//! make a generic function over databases far harder to read than this.

use crate::money::Micros;

use super::{LedgerRow, Project};

pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn project_from_row<R>(row: &R) -> Result<Project, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Project {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        limits: super::Limits {
            daily: row.try_get::<Option<i64>, _>("daily_limit_micros")?.map(Micros),
            weekly: row.try_get::<Option<i64>, _>("weekly_limit_micros")?.map(Micros),
            monthly: row.try_get::<Option<i64>, _>("monthly_limit_micros")?.map(Micros),
        },
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

pub(super) fn ledger_from_row<R>(row: &R) -> Result<LedgerRow, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(LedgerRow {
        request_id: row.try_get("request_id")?,
        project_id: row.try_get("project_id")?,
        endpoint: row.try_get("endpoint")?,
        model_requested: row.try_get("model_requested")?,
        model_used: row.try_get("model_used")?,
        status: row.try_get("status")?,
        http_status: row.try_get("http_status_i")?,
        input_tokens: row.try_get("input_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
        cost: Micros(row.try_get("cost_micros")?),
        reserved: Micros(row.try_get("reserved_micros")?),
        latency_ms: row.try_get("latency_ms")?,
        ttft_ms: row.try_get("ttft_ms")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

pub(super) const LEDGER_COLUMNS: &str = "request_id, project_id, endpoint, model_requested, model_used, status, \
     CAST(http_status AS BIGINT) AS http_status_i, input_tokens, output_tokens, cost_micros, reserved_micros, \
     latency_ms, ttft_ms, created_at_ms";

/// Implements `Store` for a type with `writer` and `reader` pools of `$db`
/// and `begin_write` and `lock_periods` methods.
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Finds the first period (day, week, month) that has no room
            /// for the reservation, to explain a refusal.
            async fn exhausted(
                &self,
                r: &$crate::store::NewReservation,
            ) -> $crate::store::StoreResult<$crate::store::ReserveOutcome> {
                for slot in &r.periods {
                    let Some(limit) = slot.limit else { continue };
                    let totals = $crate::store::Store::period_totals(self, &r.project_id, slot.kind, slot.start).await?;
                    if totals.spent.0 + totals.reserved.0 + r.amount.0 > limit.0 {
                        return Ok($crate::store::ReserveOutcome::Exhausted {
                            kind: slot.kind,
                            start: slot.start,
                            limit,
                            spent: totals.spent,
                            reserved: totals.reserved,
                        });
                    }
                }
                // Room appeared between the refused update and this read; the
                // caller is refused all the same, naming the tightest period.
                let slot = r.periods.iter().find(|s| s.limit.is_some()).unwrap_or(&r.periods[0]);
                let totals = $crate::store::Store::period_totals(self, &r.project_id, slot.kind, slot.start).await?;
                Ok($crate::store::ReserveOutcome::Exhausted {
                    kind: slot.kind,
                    start: slot.start,
                    limit: slot.limit.unwrap_or_default(),
                    spent: totals.spent,
                    reserved: totals.reserved,
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn create_project(&self, p: &$crate::store::Project) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO projects (id, name, daily_limit_micros, weekly_limit_micros, \
                     monthly_limit_micros, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&p.id)
                .bind(&p.name)
                .bind(p.limits.daily.map(|m| m.0))
                .bind(p.limits.weekly.map(|m| m.0))
                .bind(p.limits.monthly.map(|m| m.0))
                .bind(p.created_at_ms)
                .bind(p.updated_at_ms)
                .execute(&self.writer)
                .await
                .map_err(|e| $crate::store::conflict_or(e, || format!("project {:?} already exists", p.id)))?;
                Ok(())
            }

            async fn get_project(&self, id: &str) -> $crate::store::StoreResult<Option<$crate::store::Project>> {
                let row = sqlx::query("SELECT * FROM projects WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.reader)
                    .await?;
                Ok(row.map(|r| $crate::store::queries::project_from_row(&r)).transpose()?)
            }

            async fn list_projects(&self) -> $crate::store::StoreResult<Vec<$crate::store::Project>> {
                let rows = sqlx::query("SELECT * FROM projects ORDER BY id").fetch_all(&self.reader).await?;
                Ok(rows.iter().map($crate::store::queries::project_from_row).collect::<Result<_, _>>()?)
            }

            async fn update_project(&self, p: &$crate::store::Project) -> $crate::store::StoreResult<()> {
                let done = sqlx::query(
                    "UPDATE projects SET name = $1, daily_limit_micros = $2, weekly_limit_micros = $3, \
                     monthly_limit_micros = $4, updated_at_ms = $5 WHERE id = $6",
                )
                .bind(&p.name)
                .bind(p.limits.daily.map(|m| m.0))
                .bind(p.limits.weekly.map(|m| m.0))
                .bind(p.limits.monthly.map(|m| m.0))
                .bind(p.updated_at_ms)
                .bind(&p.id)
                .execute(&self.writer)
                .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound(format!("project {:?} not found", p.id)));
                }
                Ok(())
            }

            async fn delete_project(&self, id: &str) -> $crate::store::StoreResult<()> {
                let done = sqlx::query("DELETE FROM projects WHERE id = $1").bind(id).execute(&self.writer).await?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound(format!("project {id:?} not found")));
                }
                Ok(())
            }

            async fn reserve(
                &self,
                r: &$crate::store::NewReservation,
            ) -> $crate::store::StoreResult<$crate::store::ReserveOutcome> {
                let [day, week, month] = &r.periods;
                let mut tx = self.begin_write().await?;
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
                // The limit checks and the increments are one statement, so no
                // other transaction can slip in between them; it must touch
                // all three rows, or one period had no room.
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
                .bind(day.limit.map(|l| l.0))
                .bind(week.start)
                .bind(week.limit.map(|l| l.0))
                .bind(month.start)
                .bind(month.limit.map(|l| l.0))
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 3 {
                    tx.rollback().await?;
                    return self.exhausted(r).await;
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
                .bind(r.periods[0].start)
                .bind(r.periods[1].start)
                .bind(r.periods[2].start)
                .bind(&r.owner)
                .bind(r.expires_at_ms)
                .execute(&mut *tx)
                .await
                .map_err(|e| $crate::store::conflict_or(e, || format!("request {:?} already recorded", r.request_id)))?;
                tx.commit().await?;
                Ok($crate::store::ReserveOutcome::Reserved)
            }

            async fn settle(
                &self,
                request_id: &str,
                c: &$crate::store::Completion,
            ) -> $crate::store::StoreResult<bool> {
                use $crate::store::queries::to_i64;
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(
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
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(false);
                };
                let project_id: String = sqlx::Row::try_get(&row, 0)?;
                let reserved: i64 = sqlx::Row::try_get(&row, 1)?;
                let day: Option<i64> = sqlx::Row::try_get(&row, 2)?;
                let week: Option<i64> = sqlx::Row::try_get(&row, 3)?;
                let month: Option<i64> = sqlx::Row::try_get(&row, 4)?;
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

            async fn record(&self, e: &$crate::store::LedgerEntry) -> $crate::store::StoreResult<()> {
                use $crate::store::queries::to_i64;
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
                .map_err(|err| $crate::store::conflict_or(err, || format!("request {:?} already recorded", e.request_id)))?;
                Ok(())
            }

            async fn period_totals(
                &self,
                project_id: &str,
                kind: $crate::store::PeriodKind,
                start: i64,
            ) -> $crate::store::StoreResult<$crate::store::PeriodTotals> {
                let row = sqlx::query(
                    "SELECT spent_micros, reserved_micros FROM period_totals \
                     WHERE project_id = $1 AND kind = $2 AND period_start = $3",
                )
                .bind(project_id)
                .bind(kind.as_str())
                .bind(start)
                .fetch_optional(&self.reader)
                .await?;
                let Some(row) = row else { return Ok($crate::store::PeriodTotals::default()) };
                Ok($crate::store::PeriodTotals {
                    spent: $crate::money::Micros(sqlx::Row::try_get(&row, 0)?),
                    reserved: $crate::money::Micros(sqlx::Row::try_get(&row, 1)?),
                })
            }

            async fn usage_by_model(
                &self,
                project_id: &str,
                from_ms: i64,
                to_ms: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ModelUsage>> {
                let rows = sqlx::query(
                    "SELECT model_used, CAST(COUNT(*) AS BIGINT), \
                     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) FROM requests \
                     WHERE project_id = $1 AND created_at_ms >= $2 AND created_at_ms < $3 \
                     AND status <> 'in_progress' AND model_used IS NOT NULL GROUP BY 1 ORDER BY 1",
                )
                .bind(project_id)
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all(&self.reader)
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    out.push($crate::store::ModelUsage {
                        model: sqlx::Row::try_get(&row, 0)?,
                        requests: sqlx::Row::try_get::<i64, _>(&row, 1)?.max(0) as u64,
                        input_tokens: sqlx::Row::try_get::<i64, _>(&row, 2)?.max(0) as u64,
                        output_tokens: sqlx::Row::try_get::<i64, _>(&row, 3)?.max(0) as u64,
                        cost: $crate::money::Micros(sqlx::Row::try_get(&row, 4)?),
                    });
                }
                Ok(out)
            }

            async fn ledger(
                &self,
                project_id: &str,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::LedgerRow>> {
                let sql = format!(
                    "SELECT {} FROM requests WHERE project_id = $1 ORDER BY created_at_ms DESC LIMIT $2",
                    $crate::store::queries::LEDGER_COLUMNS
                );
                let rows = sqlx::query(&sql).bind(project_id).bind(limit).fetch_all(&self.reader).await?;
                Ok(rows.iter().map($crate::store::queries::ledger_from_row).collect::<Result<_, _>>()?)
            }

            async fn ledger_row(
                &self,
                request_id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::LedgerRow>> {
                let sql = format!(
                    "SELECT {} FROM requests WHERE request_id = $1",
                    $crate::store::queries::LEDGER_COLUMNS
                );
                let row = sqlx::query(&sql).bind(request_id).fetch_optional(&self.reader).await?;
                Ok(row.map(|r| $crate::store::queries::ledger_from_row(&r)).transpose()?)
            }

            async fn register_instance(
                &self,
                id: &str,
                host: &str,
                pid: i64,
                now_ms: i64,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO instances (id, host, pid, started_at_ms, heartbeat_at_ms) VALUES ($1, $2, $3, $4, $4)",
                )
                .bind(id)
                .bind(host)
                .bind(pid)
                .bind(now_ms)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn heartbeat(&self, id: &str, now_ms: i64) -> $crate::store::StoreResult<()> {
                sqlx::query("UPDATE instances SET heartbeat_at_ms = $1 WHERE id = $2")
                    .bind(now_ms)
                    .bind(id)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn remove_instance(&self, id: &str) -> $crate::store::StoreResult<()> {
                sqlx::query("DELETE FROM instances WHERE id = $1").bind(id).execute(&self.writer).await?;
                Ok(())
            }

            async fn instances(&self) -> $crate::store::StoreResult<Vec<$crate::store::InstanceRow>> {
                let rows = sqlx::query("SELECT id, host, pid, heartbeat_at_ms FROM instances")
                    .fetch_all(&self.reader)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    out.push($crate::store::InstanceRow {
                        id: sqlx::Row::try_get(&row, 0)?,
                        host: sqlx::Row::try_get(&row, 1)?,
                        pid: sqlx::Row::try_get(&row, 2)?,
                        heartbeat_at_ms: sqlx::Row::try_get(&row, 3)?,
                    });
                }
                Ok(out)
            }

            async fn abandoned_reservations(
                &self,
                dead_owners: &[String],
                now_ms: i64,
            ) -> $crate::store::StoreResult<Vec<String>> {
                let rows = sqlx::query("SELECT request_id, owner, expires_at_ms FROM requests WHERE status = 'in_progress'")
                    .fetch_all(&self.reader)
                    .await?;
                let mut out = Vec::new();
                for row in rows {
                    let id: String = sqlx::Row::try_get(&row, 0)?;
                    let owner: Option<String> = sqlx::Row::try_get(&row, 1)?;
                    let expires: Option<i64> = sqlx::Row::try_get(&row, 2)?;
                    let dead = owner.is_some_and(|o| dead_owners.contains(&o));
                    if dead || expires.is_some_and(|e| e < now_ms) {
                        out.push(id);
                    }
                }
                Ok(out)
            }
        }
    };
}

pub(super) use impl_store;
