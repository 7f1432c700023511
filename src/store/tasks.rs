//! Storage of async tasks and their event logs, for both databases (the
//! same `$N` statements, like `queries`).

use async_trait::async_trait;

use super::StoreResult;
use crate::money::Micros;

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: String,
    pub project_id: String,
    pub key_id: Option<String>,
    pub request_id: String,
    pub status: String,
    pub owner: Option<String>,
    /// The task as submitted (JSON).
    pub request: String,
    pub model: Option<String>,
    pub result: Option<String>,
    /// The error object (JSON) of a task that did not succeed.
    pub error: Option<String>,
    pub cost: Micros,
    pub num_turns: i64,
    pub session_id: Option<String>,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEnd {
    pub status: String,
    pub model: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub cost: Micros,
    pub num_turns: i64,
    pub session_id: Option<String>,
    pub finished_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    pub seq: i64,
    pub kind: String,
    /// JSON.
    pub data: String,
    pub created_at_ms: i64,
}

/// Statuses a task can still leave.
pub const OPEN_STATUSES: [&str; 2] = ["queued", "running"];

#[async_trait]
pub trait TaskStore: Send + Sync {
    async fn create_task(&self, task: &TaskRow) -> StoreResult<()>;
    async fn task(&self, id: &str) -> StoreResult<Option<TaskRow>>;
    /// Ends a task that is still open; false when it had already ended (so
    /// a cancel and a finish cannot both win).
    async fn finish_task(&self, id: &str, end: &TaskEnd) -> StoreResult<bool>;
    /// Appends an event and returns its sequence number (1, 2, …). One
    /// writer per task appends, so the numbers have no gaps.
    async fn append_task_event(&self, task_id: &str, kind: &str, data: &str, now_ms: i64)
        -> StoreResult<i64>;
    async fn task_events_after(&self, task_id: &str, after: i64, limit: i64) -> StoreResult<Vec<TaskEvent>>;
    /// Marks open tasks whose owner is not a registered instance (other
    /// than `me`) as interrupted; returns their ids.
    async fn interrupt_orphaned_tasks(&self, me: &str, error: &str, now_ms: i64) -> StoreResult<Vec<String>>;
}

pub(super) fn task_from_row<R>(row: &R) -> Result<TaskRow, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(TaskRow {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        key_id: row.try_get("key_id")?,
        request_id: row.try_get("request_id")?,
        status: row.try_get("status")?,
        owner: row.try_get("owner")?,
        request: row.try_get("request")?,
        model: row.try_get("model")?,
        result: row.try_get("result")?,
        error: row.try_get("error")?,
        cost: Micros(row.try_get("cost_micros")?),
        num_turns: row.try_get("num_turns")?,
        session_id: row.try_get("session_id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

pub(super) fn event_from_row<R>(row: &R) -> Result<TaskEvent, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(TaskEvent {
        seq: row.try_get("seq")?,
        kind: row.try_get("kind")?,
        data: row.try_get("data")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// Implements `TaskStore` for a type with `writer` and `reader` pools.
macro_rules! impl_task_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::tasks::TaskStore for $store {
            async fn create_task(&self, t: &$crate::store::tasks::TaskRow) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO tasks (id, project_id, key_id, request_id, status, owner, request, model, \
                     result, error, cost_micros, num_turns, session_id, created_at_ms, finished_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .bind(&t.id)
                .bind(&t.project_id)
                .bind(&t.key_id)
                .bind(&t.request_id)
                .bind(&t.status)
                .bind(&t.owner)
                .bind(&t.request)
                .bind(&t.model)
                .bind(&t.result)
                .bind(&t.error)
                .bind(t.cost.0)
                .bind(t.num_turns)
                .bind(&t.session_id)
                .bind(t.created_at_ms)
                .bind(t.finished_at_ms)
                .execute(&self.writer)
                .await
                .map_err(|e| $crate::store::conflict_or(e, || format!("task {:?} already exists", t.id)))?;
                Ok(())
            }

            async fn task(&self, id: &str) -> $crate::store::StoreResult<Option<$crate::store::tasks::TaskRow>> {
                let row = sqlx::query("SELECT * FROM tasks WHERE id = $1").bind(id).fetch_optional(&self.reader).await?;
                Ok(row.map(|r| $crate::store::tasks::task_from_row(&r)).transpose()?)
            }

            async fn finish_task(
                &self,
                id: &str,
                end: &$crate::store::tasks::TaskEnd,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE tasks SET status = $1, model = COALESCE($2, model), result = $3, error = $4, \
                     cost_micros = $5, num_turns = $6, session_id = COALESCE($7, session_id), finished_at_ms = $8 \
                     WHERE id = $9 AND status IN ('queued', 'running')",
                )
                .bind(&end.status)
                .bind(&end.model)
                .bind(&end.result)
                .bind(&end.error)
                .bind(end.cost.0)
                .bind(end.num_turns)
                .bind(&end.session_id)
                .bind(end.finished_at_ms)
                .bind(id)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn append_task_event(
                &self,
                task_id: &str,
                kind: &str,
                data: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<i64> {
                use sqlx::Row;
                let row = sqlx::query(
                    "INSERT INTO task_events (task_id, seq, kind, data, created_at_ms) \
                     VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM task_events WHERE task_id = $1), $2, $3, $4) \
                     RETURNING seq",
                )
                .bind(task_id)
                .bind(kind)
                .bind(data)
                .bind(now_ms)
                .fetch_one(&self.writer)
                .await?;
                Ok(row.try_get("seq")?)
            }

            async fn task_events_after(
                &self,
                task_id: &str,
                after: i64,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::tasks::TaskEvent>> {
                let rows = sqlx::query(
                    "SELECT seq, kind, data, created_at_ms FROM task_events \
                     WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(task_id)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?;
                Ok(rows.iter().map($crate::store::tasks::event_from_row).collect::<Result<_, _>>()?)
            }

            async fn interrupt_orphaned_tasks(
                &self,
                me: &str,
                error: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<Vec<String>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "UPDATE tasks SET status = 'interrupted', error = $1, finished_at_ms = $2 \
                     WHERE status IN ('queued', 'running') AND (owner IS NULL OR \
                     (owner <> $3 AND owner NOT IN (SELECT id FROM instances))) RETURNING id",
                )
                .bind(error)
                .bind(now_ms)
                .bind(me)
                .fetch_all(&self.writer)
                .await?;
                Ok(rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?)
            }
        }
    };
}

pub(super) use impl_task_store;
