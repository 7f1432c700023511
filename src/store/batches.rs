//! Storage of batches: their files, their state, and the state and result of
//! each of their requests, for both databases (the same `$N` statements, like
//! `queries`). A request's result is written by the statement that ends it,
//! which only matches a row still `running` under the same request id: a
//! finished request can be neither lost nor finished twice.

use async_trait::async_trait;

use super::StoreResult;
use crate::money::Micros;

/// Where a batch is in its life. `validating → in_progress → finalizing →
/// completed`; the others end it early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Failed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Failed => "failed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<BatchStatus> {
        BatchStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Completed, failed, expired or cancelled: nothing more will happen.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Completed | BatchStatus::Failed | BatchStatus::Expired | BatchStatus::Cancelled
        )
    }
}

/// Where one request of a batch is: `pending → running → succeeded |
/// failed`, or `cancelled` / `expired` without having run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone)]
pub struct NewFile {
    pub id: String,
    pub project_id: String,
    pub purpose: String,
    pub filename: String,
    pub content: Vec<u8>,
    pub created_at_ms: i64,
}

/// A file's description, without its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub id: String,
    pub project_id: String,
    pub purpose: String,
    pub filename: String,
    pub bytes: i64,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: String,
    pub project_id: String,
    pub key_id: Option<String>,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    /// JSON object, as given.
    pub metadata: Option<String>,
    /// The instance that will drive it.
    pub owner: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    pub id: String,
    pub project_id: String,
    pub key_id: Option<String>,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub owner: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// JSON array of validation errors, when validation failed.
    pub errors: Option<String>,
    pub metadata: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub in_progress_at_ms: Option<i64>,
    pub finalizing_at_ms: Option<i64>,
    pub completed_at_ms: Option<i64>,
    pub failed_at_ms: Option<i64>,
    pub expired_at_ms: Option<i64>,
    pub cancelling_at_ms: Option<i64>,
    pub cancelled_at_ms: Option<i64>,
}

/// How many of a batch's requests are in each state, and what the finished
/// ones used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchProgress {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub expired: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Micros,
}

impl BatchProgress {
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.succeeded + self.failed + self.cancelled + self.expired
    }
}

#[derive(Debug, Clone)]
pub struct NewBatchRequest {
    pub line_no: i64,
    pub custom_id: String,
    /// The request body (JSON), as it was in the input file.
    pub body: String,
}

/// A request taken to run (its body is `request_body`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRequest {
    pub line_no: i64,
    pub custom_id: String,
}

/// How a request ended, as written to its row.
#[derive(Debug, Clone)]
pub struct RequestResult {
    /// `Succeeded` or `Failed`.
    pub status: TaskStatus,
    pub http_status: Option<u16>,
    /// The JSON the output or error file carries for it.
    pub result: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequestRow {
    pub line_no: i64,
    pub custom_id: String,
    pub status: TaskStatus,
    pub request_id: Option<String>,
    pub result: Option<String>,
}

#[async_trait]
pub trait BatchStore: Send + Sync {
    async fn create_file(&self, file: &NewFile) -> StoreResult<()>;
    /// The project's file, or `None` (another project's file is `None` too).
    async fn get_file(&self, project_id: &str, id: &str) -> StoreResult<Option<FileRow>>;
    /// Newest first; `after` is the id of the last file of the previous page.
    async fn list_files(
        &self,
        project_id: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<FileRow>>;
    async fn file_content(&self, project_id: &str, id: &str) -> StoreResult<Option<Vec<u8>>>;
    async fn delete_file(&self, project_id: &str, id: &str) -> StoreResult<bool>;

    async fn create_batch(&self, batch: &NewBatch) -> StoreResult<()>;
    async fn get_batch(&self, id: &str) -> StoreResult<Option<BatchRow>>;
    /// Newest first; `after` is the id of the last batch of the previous page.
    async fn list_batches(
        &self,
        project_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<BatchRow>>;
    async fn batch_progress(&self, id: &str) -> StoreResult<BatchProgress>;
    /// Makes `owner` the owner of every unfinished batch that is its own or
    /// whose owner is no longer a registered instance; returns their ids.
    async fn claim_batches(&self, owner: &str) -> StoreResult<Vec<String>>;
    /// Moves a batch from `from` to `to`, stamping `to`'s time; false when
    /// it was no longer in `from`.
    async fn set_batch_status(
        &self,
        id: &str,
        from: BatchStatus,
        to: BatchStatus,
        now_ms: i64,
    ) -> StoreResult<bool>;
    /// `validating → in_progress` together with the batch's request rows,
    /// in one transaction; false when it was no longer validating.
    async fn start_batch(&self, id: &str, requests: &[NewBatchRequest], now_ms: i64) -> StoreResult<bool>;
    /// `validating → failed`, with the validation errors (JSON).
    async fn fail_batch(&self, id: &str, errors: &str, now_ms: i64) -> StoreResult<bool>;
    /// `validating | in_progress → cancelling`, and every pending request
    /// becomes `cancelled` with `result`, in one transaction.
    async fn cancel_batch(&self, id: &str, result: &str, now_ms: i64) -> StoreResult<bool>;
    /// Ends the batch in `status` with its output files, in one transaction;
    /// false when it was not finalizing or cancelling any more.
    async fn finish_batch(
        &self,
        id: &str,
        status: BatchStatus,
        files: &[NewFile],
        output_file_id: Option<&str>,
        error_file_id: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<bool>;

    /// Puts back to `pending` the requests of a batch left `running` (by a
    /// process that died or stopped); returns how many.
    async fn requeue_running(&self, batch_id: &str) -> StoreResult<u64>;
    /// Line numbers of the pending requests, in order.
    async fn pending_requests(&self, batch_id: &str) -> StoreResult<Vec<i64>>;
    /// The body of one of a batch's requests, whatever its state.
    async fn request_body(&self, batch_id: &str, line_no: i64) -> StoreResult<Option<String>>;
    /// `pending → running` under `request_id`; `None` when it was not pending.
    async fn claim_request(
        &self,
        batch_id: &str,
        line_no: i64,
        request_id: &str,
        now_ms: i64,
    ) -> StoreResult<Option<ClaimedRequest>>;
    /// `running → succeeded | failed` with its result; false when the row
    /// was not running under `request_id` (nothing is written then).
    async fn finish_request(
        &self,
        batch_id: &str,
        line_no: i64,
        request_id: &str,
        result: &RequestResult,
        now_ms: i64,
    ) -> StoreResult<bool>;
    /// `running → pending` (its run was interrupted before it ended).
    async fn release_request(&self, batch_id: &str, line_no: i64, request_id: &str) -> StoreResult<bool>;
    /// Ends every request in `from` as `to` with `result`; returns how many.
    async fn close_requests(
        &self,
        batch_id: &str,
        from: TaskStatus,
        to: TaskStatus,
        result: &str,
        now_ms: i64,
    ) -> StoreResult<u64>;
    /// Every request of the batch, in line order.
    async fn batch_requests(&self, batch_id: &str) -> StoreResult<Vec<BatchRequestRow>>;
}

pub(super) fn file_from_row<R>(row: &R) -> Result<FileRow, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(FileRow {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        purpose: row.try_get("purpose")?,
        filename: row.try_get("filename")?,
        bytes: row.try_get("bytes")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

pub(super) fn batch_from_row<R>(row: &R) -> Result<BatchRow, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get("status")?;
    Ok(BatchRow {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        key_id: row.try_get("key_id")?,
        endpoint: row.try_get("endpoint")?,
        input_file_id: row.try_get("input_file_id")?,
        completion_window: row.try_get("completion_window")?,
        status: BatchStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown batch status {status:?}").into()))?,
        owner: row.try_get("owner")?,
        output_file_id: row.try_get("output_file_id")?,
        error_file_id: row.try_get("error_file_id")?,
        errors: row.try_get("errors")?,
        metadata: row.try_get("metadata")?,
        created_at_ms: row.try_get("created_at_ms")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        in_progress_at_ms: row.try_get("in_progress_at_ms")?,
        finalizing_at_ms: row.try_get("finalizing_at_ms")?,
        completed_at_ms: row.try_get("completed_at_ms")?,
        failed_at_ms: row.try_get("failed_at_ms")?,
        expired_at_ms: row.try_get("expired_at_ms")?,
        cancelling_at_ms: row.try_get("cancelling_at_ms")?,
        cancelled_at_ms: row.try_get("cancelled_at_ms")?,
    })
}

pub(super) fn task_status(text: &str) -> Result<TaskStatus, sqlx::Error> {
    TaskStatus::parse(text)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown request status {text:?}").into()))
}

pub(super) const FILE_COLUMNS: &str = "id, project_id, purpose, filename, bytes, created_at_ms";

/// Stamps the time column of the status a batch moves to (`$2` the new
/// status, `$4` the time).
pub(super) const STAMP_STATUS_TIME: &str = "\
     in_progress_at_ms = CASE WHEN $2 = 'in_progress' THEN $4 ELSE in_progress_at_ms END, \
     finalizing_at_ms = CASE WHEN $2 = 'finalizing' THEN $4 ELSE finalizing_at_ms END, \
     completed_at_ms = CASE WHEN $2 = 'completed' THEN $4 ELSE completed_at_ms END, \
     failed_at_ms = CASE WHEN $2 = 'failed' THEN $4 ELSE failed_at_ms END, \
     expired_at_ms = CASE WHEN $2 = 'expired' THEN $4 ELSE expired_at_ms END, \
     cancelling_at_ms = CASE WHEN $2 = 'cancelling' THEN $4 ELSE cancelling_at_ms END, \
     cancelled_at_ms = CASE WHEN $2 = 'cancelled' THEN $4 ELSE cancelled_at_ms END";

/// Rows per multi-row INSERT: far below SQLite's and PostgreSQL's limits on
/// bound parameters (three per row).
pub(super) const INSERT_CHUNK: usize = 500;

/// Writes one batch file; shared by `create_file` and the batch-creating transaction.
pub(super) const INSERT_FILE: &str =
    "INSERT INTO batch_files (id, project_id, purpose, filename, bytes, content, \
     created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Implements `BatchStore` for a type with `writer` and `reader` pools of
/// `$db` and a `begin_write` method.
macro_rules! impl_batch_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::batches::BatchStore for $store {
            async fn create_file(&self, f: &$crate::store::batches::NewFile) -> $crate::store::StoreResult<()> {
                sqlx::query($crate::store::batches::INSERT_FILE)
                .bind(&f.id)
                .bind(&f.project_id)
                .bind(&f.purpose)
                .bind(&f.filename)
                .bind(i64::try_from(f.content.len()).unwrap_or(i64::MAX))
                .bind(&f.content)
                .bind(f.created_at_ms)
                .execute(&self.writer)
                .await
                .map_err(|e| $crate::store::conflict_or(e, || format!("file {:?} already exists", f.id)))?;
                Ok(())
            }

            async fn get_file(
                &self,
                project_id: &str,
                id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::batches::FileRow>> {
                let sql = format!(
                    "SELECT {} FROM batch_files WHERE id = $1 AND project_id = $2",
                    $crate::store::batches::FILE_COLUMNS
                );
                let row = sqlx::query(&sql).bind(id).bind(project_id).fetch_optional(&self.reader).await?;
                Ok(row.map(|r| $crate::store::batches::file_from_row(&r)).transpose()?)
            }

            async fn list_files(
                &self,
                project_id: &str,
                purpose: Option<&str>,
                after: Option<&str>,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::batches::FileRow>> {
                let sql = format!(
                    "SELECT {} FROM batch_files f WHERE project_id = $1 \
                     AND (CAST($2 AS TEXT) IS NULL OR purpose = $2) \
                     AND (CAST($3 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM batch_files a WHERE a.id = $3 \
                        AND (f.created_at_ms < a.created_at_ms OR (f.created_at_ms = a.created_at_ms AND f.id < a.id)))) \
                     ORDER BY created_at_ms DESC, id DESC LIMIT $4",
                    $crate::store::batches::FILE_COLUMNS
                );
                let rows = sqlx::query(&sql)
                    .bind(project_id)
                    .bind(purpose)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.reader)
                    .await?;
                Ok(rows.iter().map($crate::store::batches::file_from_row).collect::<Result<_, _>>()?)
            }

            async fn file_content(
                &self,
                project_id: &str,
                id: &str,
            ) -> $crate::store::StoreResult<Option<Vec<u8>>> {
                let row = sqlx::query("SELECT content FROM batch_files WHERE id = $1 AND project_id = $2")
                    .bind(id)
                    .bind(project_id)
                    .fetch_optional(&self.reader)
                    .await?;
                Ok(row.map(|r| sqlx::Row::try_get(&r, 0)).transpose()?)
            }

            async fn delete_file(&self, project_id: &str, id: &str) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query("DELETE FROM batch_files WHERE id = $1 AND project_id = $2")
                    .bind(id)
                    .bind(project_id)
                    .execute(&self.writer)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn create_batch(&self, b: &$crate::store::batches::NewBatch) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO batches (id, project_id, key_id, endpoint, input_file_id, completion_window, \
                     status, owner, metadata, created_at_ms, expires_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'validating', $7, $8, $9, $10)",
                )
                .bind(&b.id)
                .bind(&b.project_id)
                .bind(&b.key_id)
                .bind(&b.endpoint)
                .bind(&b.input_file_id)
                .bind(&b.completion_window)
                .bind(&b.owner)
                .bind(&b.metadata)
                .bind(b.created_at_ms)
                .bind(b.expires_at_ms)
                .execute(&self.writer)
                .await
                .map_err(|e| $crate::store::conflict_or(e, || format!("batch {:?} already exists", b.id)))?;
                Ok(())
            }

            async fn get_batch(
                &self,
                id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::batches::BatchRow>> {
                let row = sqlx::query("SELECT * FROM batches WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.reader)
                    .await?;
                Ok(row.map(|r| $crate::store::batches::batch_from_row(&r)).transpose()?)
            }

            async fn list_batches(
                &self,
                project_id: &str,
                after: Option<&str>,
                limit: i64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::batches::BatchRow>> {
                let rows = sqlx::query(
                    "SELECT * FROM batches b WHERE project_id = $1 \
                     AND (CAST($2 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM batches a WHERE a.id = $2 \
                        AND (b.created_at_ms < a.created_at_ms OR (b.created_at_ms = a.created_at_ms AND b.id < a.id)))) \
                     ORDER BY created_at_ms DESC, id DESC LIMIT $3",
                )
                .bind(project_id)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?;
                Ok(rows.iter().map($crate::store::batches::batch_from_row).collect::<Result<_, _>>()?)
            }

            async fn batch_progress(
                &self,
                id: &str,
            ) -> $crate::store::StoreResult<$crate::store::batches::BatchProgress> {
                use $crate::store::batches::TaskStatus;
                let rows = sqlx::query(
                    "SELECT status, CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) \
                     FROM batch_requests WHERE batch_id = $1 GROUP BY status",
                )
                .bind(id)
                .fetch_all(&self.reader)
                .await?;
                let mut progress = $crate::store::batches::BatchProgress::default();
                for row in rows {
                    let status: String = sqlx::Row::try_get(&row, 0)?;
                    let count = sqlx::Row::try_get::<i64, _>(&row, 1)?.max(0) as u64;
                    progress.input_tokens += sqlx::Row::try_get::<i64, _>(&row, 2)?.max(0) as u64;
                    progress.output_tokens += sqlx::Row::try_get::<i64, _>(&row, 3)?.max(0) as u64;
                    progress.cost = progress.cost.saturating_add($crate::money::Micros(sqlx::Row::try_get(&row, 4)?));
                    match $crate::store::batches::task_status(&status)? {
                        TaskStatus::Pending => progress.pending = count,
                        TaskStatus::Running => progress.running = count,
                        TaskStatus::Succeeded => progress.succeeded = count,
                        TaskStatus::Failed => progress.failed = count,
                        TaskStatus::Cancelled => progress.cancelled = count,
                        TaskStatus::Expired => progress.expired = count,
                    }
                }
                Ok(progress)
            }

            async fn claim_batches(&self, owner: &str) -> $crate::store::StoreResult<Vec<String>> {
                let rows = sqlx::query(
                    "UPDATE batches SET owner = $1 \
                     WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling') \
                     AND (owner IS NULL OR owner = $1 OR owner NOT IN (SELECT id FROM instances)) RETURNING id",
                )
                .bind(owner)
                .fetch_all(&self.writer)
                .await?;
                Ok(rows.iter().map(|r| sqlx::Row::try_get(r, 0)).collect::<Result<_, _>>()?)
            }

            async fn set_batch_status(
                &self,
                id: &str,
                from: $crate::store::batches::BatchStatus,
                to: $crate::store::batches::BatchStatus,
                now_ms: i64,
            ) -> $crate::store::StoreResult<bool> {
                let sql = format!(
                    "UPDATE batches SET status = $2, {} WHERE id = $1 AND status = $3",
                    $crate::store::batches::STAMP_STATUS_TIME
                );
                let done = sqlx::query(&sql)
                    .bind(id)
                    .bind(to.as_str())
                    .bind(from.as_str())
                    .bind(now_ms)
                    .execute(&self.writer)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn start_batch(
                &self,
                id: &str,
                requests: &[$crate::store::batches::NewBatchRequest],
                now_ms: i64,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(
                    "UPDATE batches SET status = 'in_progress', in_progress_at_ms = $2 \
                     WHERE id = $1 AND status = 'validating'",
                )
                .bind(id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                for chunk in requests.chunks($crate::store::batches::INSERT_CHUNK) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO batch_requests (batch_id, line_no, custom_id, body, status) ",
                    );
                    insert.push_values(chunk, |mut row, r| {
                        row.push_bind(id).push_bind(r.line_no).push_bind(&r.custom_id).push_bind(&r.body);
                        row.push("'pending'");
                    });
                    insert.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn fail_batch(&self, id: &str, errors: &str, now_ms: i64) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE batches SET status = 'failed', errors = $2, failed_at_ms = $3 \
                     WHERE id = $1 AND status = 'validating'",
                )
                .bind(id)
                .bind(errors)
                .bind(now_ms)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn cancel_batch(&self, id: &str, result: &str, now_ms: i64) -> $crate::store::StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(
                    "UPDATE batches SET status = 'cancelling', cancelling_at_ms = $2 \
                     WHERE id = $1 AND status IN ('validating', 'in_progress')",
                )
                .bind(id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                sqlx::query(
                    "UPDATE batch_requests SET status = 'cancelled', result = $2, finished_at_ms = $3 \
                     WHERE batch_id = $1 AND status = 'pending'",
                )
                .bind(id)
                .bind(result)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn finish_batch(
                &self,
                id: &str,
                status: $crate::store::batches::BatchStatus,
                files: &[$crate::store::batches::NewFile],
                output_file_id: Option<&str>,
                error_file_id: Option<&str>,
                now_ms: i64,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                let sql = format!(
                    "UPDATE batches SET status = $2, {}, output_file_id = $5, error_file_id = $6 \
                     WHERE id = $1 AND status IN ($3, 'cancelling')",
                    $crate::store::batches::STAMP_STATUS_TIME
                );
                let done = sqlx::query(&sql)
                    .bind(id)
                    .bind(status.as_str())
                    .bind($crate::store::batches::BatchStatus::Finalizing.as_str())
                    .bind(now_ms)
                    .bind(output_file_id)
                    .bind(error_file_id)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                for f in files {
                    sqlx::query($crate::store::batches::INSERT_FILE)
                    .bind(&f.id)
                    .bind(&f.project_id)
                    .bind(&f.purpose)
                    .bind(&f.filename)
                    .bind(i64::try_from(f.content.len()).unwrap_or(i64::MAX))
                    .bind(&f.content)
                    .bind(f.created_at_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn requeue_running(&self, batch_id: &str) -> $crate::store::StoreResult<u64> {
                let done = sqlx::query(
                    "UPDATE batch_requests SET status = 'pending', request_id = NULL \
                     WHERE batch_id = $1 AND status = 'running'",
                )
                .bind(batch_id)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected())
            }

            async fn pending_requests(&self, batch_id: &str) -> $crate::store::StoreResult<Vec<i64>> {
                let rows = sqlx::query(
                    "SELECT line_no FROM batch_requests WHERE batch_id = $1 AND status = 'pending' ORDER BY line_no",
                )
                .bind(batch_id)
                .fetch_all(&self.reader)
                .await?;
                Ok(rows.iter().map(|r| sqlx::Row::try_get(r, 0)).collect::<Result<_, _>>()?)
            }

            async fn request_body(
                &self,
                batch_id: &str,
                line_no: i64,
            ) -> $crate::store::StoreResult<Option<String>> {
                let row = sqlx::query("SELECT body FROM batch_requests WHERE batch_id = $1 AND line_no = $2")
                    .bind(batch_id)
                    .bind(line_no)
                    .fetch_optional(&self.reader)
                    .await?;
                Ok(row.map(|r| sqlx::Row::try_get(&r, 0)).transpose()?)
            }

            async fn claim_request(
                &self,
                batch_id: &str,
                line_no: i64,
                request_id: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<Option<$crate::store::batches::ClaimedRequest>> {
                let row = sqlx::query(
                    "UPDATE batch_requests SET status = 'running', request_id = $3, started_at_ms = $4, \
                     attempts = attempts + 1 WHERE batch_id = $1 AND line_no = $2 AND status = 'pending' \
                     RETURNING custom_id",
                )
                .bind(batch_id)
                .bind(line_no)
                .bind(request_id)
                .bind(now_ms)
                .fetch_optional(&self.writer)
                .await?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some($crate::store::batches::ClaimedRequest {
                    line_no,
                    custom_id: sqlx::Row::try_get(&row, 0)?,
                }))
            }

            async fn finish_request(
                &self,
                batch_id: &str,
                line_no: i64,
                request_id: &str,
                r: &$crate::store::batches::RequestResult,
                now_ms: i64,
            ) -> $crate::store::StoreResult<bool> {
                use $crate::store::queries::to_i64;
                let done = sqlx::query(
                    "UPDATE batch_requests SET status = $4, http_status = $5, result = $6, input_tokens = $7, \
                     output_tokens = $8, cost_micros = $9, finished_at_ms = $10 \
                     WHERE batch_id = $1 AND line_no = $2 AND request_id = $3 AND status = 'running'",
                )
                .bind(batch_id)
                .bind(line_no)
                .bind(request_id)
                .bind(r.status.as_str())
                .bind(r.http_status.map(i64::from))
                .bind(&r.result)
                .bind(to_i64(r.input_tokens))
                .bind(to_i64(r.output_tokens))
                .bind(r.cost.0)
                .bind(now_ms)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn release_request(
                &self,
                batch_id: &str,
                line_no: i64,
                request_id: &str,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE batch_requests SET status = 'pending', request_id = NULL \
                     WHERE batch_id = $1 AND line_no = $2 AND request_id = $3 AND status = 'running'",
                )
                .bind(batch_id)
                .bind(line_no)
                .bind(request_id)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn close_requests(
                &self,
                batch_id: &str,
                from: $crate::store::batches::TaskStatus,
                to: $crate::store::batches::TaskStatus,
                result: &str,
                now_ms: i64,
            ) -> $crate::store::StoreResult<u64> {
                let done = sqlx::query(
                    "UPDATE batch_requests SET status = $3, result = $4, finished_at_ms = $5 \
                     WHERE batch_id = $1 AND status = $2",
                )
                .bind(batch_id)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(result)
                .bind(now_ms)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected())
            }

            async fn batch_requests(
                &self,
                batch_id: &str,
            ) -> $crate::store::StoreResult<Vec<$crate::store::batches::BatchRequestRow>> {
                let rows = sqlx::query(
                    "SELECT line_no, custom_id, status, request_id, result FROM batch_requests \
                     WHERE batch_id = $1 ORDER BY line_no",
                )
                .bind(batch_id)
                .fetch_all(&self.reader)
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let status: String = sqlx::Row::try_get(&row, 2)?;
                    out.push($crate::store::batches::BatchRequestRow {
                        line_no: sqlx::Row::try_get(&row, 0)?,
                        custom_id: sqlx::Row::try_get(&row, 1)?,
                        status: $crate::store::batches::task_status(&status)?,
                        request_id: sqlx::Row::try_get(&row, 3)?,
                        result: sqlx::Row::try_get(&row, 4)?,
                    });
                }
                Ok(out)
            }
        }
    };
}

pub(super) use impl_batch_store;
