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
/// and `ledger_reserve`, `ledger_settle`, `ledger_record`, `ledger_flush`
/// and `ledger_replay` methods (the budget writes, which each database does its
/// own way).
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
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

            async fn delete_project(&self, id: &str, now_ms: i64) -> $crate::store::StoreResult<()> {
                let mut tx = self.writer.begin().await?;
                let done = sqlx::query("DELETE FROM projects WHERE id = $1").bind(id).execute(&mut *tx).await?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound(format!("project {id:?} not found")));
                }
                // Its keys go with it: a project made again under the same
                // id must not be reachable with them.
                sqlx::query("UPDATE api_keys SET revoked_at_ms = $1 WHERE project_id = $2 AND revoked_at_ms IS NULL")
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn reserve(
                &self,
                r: &$crate::store::NewReservation,
            ) -> $crate::store::StoreResult<$crate::store::ReserveOutcome> {
                self.ledger_reserve(r).await
            }

            async fn settle(
                &self,
                request_id: &str,
                c: &$crate::store::Completion,
            ) -> $crate::store::StoreResult<bool> {
                self.ledger_settle(request_id, c).await
            }

            async fn record(&self, e: &$crate::store::LedgerEntry) -> $crate::store::StoreResult<()> {
                self.ledger_record(e).await
            }

            async fn period_totals(
                &self,
                project_id: &str,
                kind: $crate::store::PeriodKind,
                start: i64,
            ) -> $crate::store::StoreResult<$crate::store::PeriodTotals> {
                // What was answered before this read is in the database.
                self.ledger_flush().await?;
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
                // What was answered before this read is in the database.
                self.ledger_flush().await?;
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
                // What was answered before this read is in the database.
                self.ledger_flush().await?;
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
                // What was answered before this read is in the database.
                self.ledger_flush().await?;
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
                // Reservations a stopped writer answered but never committed
                // become rows first, to be found below.
                self.ledger_replay().await?;
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
