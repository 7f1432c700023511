//! The durable batch runner. Each gateway instance runs one loop that
//! claims the unfinished batches with no live owner (its own new ones, and
//! those a stopped or crashed instance left) and drives each:
//!
//! - `validating`: check the input file; write one `pending` row per request
//!   and move to `in_progress` in one transaction, or fail with line errors.
//! - `in_progress`: requests left `running` by a process that died never
//!   completed, so they go back to `pending`; then each pending request is
//!   claimed (`pending → running` under a fresh request id) once a batch slot
//!   of the pool serving its model is free, and run. Its result and its end state are one statement, so a
//!   request that completed is never run again and its result is never lost.
//! - `finalizing` / `cancelling`: write the output and error files and end
//!   the batch, in one transaction.
//!
//! At shutdown no new request starts; running ones may finish within the
//! grace period, and those killed after it go back to `pending` for the next
//! instance.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::input::{self, LineError};
use super::output;
use super::task::{self, TaskEnd, TaskInput};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::store::batches::{
    BatchRow, BatchStatus, ClaimedRequest, NewBatchRequest, NewFile, RequestResult, TaskStatus,
};
use crate::store::StoreResult;
use crate::workers::BatchSlot;

/// The endpoint recorded in the ledger for requests of durable batches.
pub const ENDPOINT: &str = "/v1/batches";

/// Starts the runner; it returns once `stop` is cancelled and the requests
/// it started have ended.
pub fn spawn(state: &AppState, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(run(state.clone(), stop))
}

async fn run(state: AppState, stop: CancellationToken) {
    let drivers = TaskTracker::new();
    // Batches orphaned by an instance on another host are found as soon as
    // its heartbeat is stale, like its reservations.
    let every = Duration::from_secs((state.settings.instance_ttl_secs / 3).max(1));
    loop {
        match state.budget.store().claim_batches(state.budget.instance_id()).await {
            Ok(ids) => {
                for id in ids {
                    let Some(cancel) = state.batches.begin(&id) else { continue };
                    drivers.spawn(drive(state.clone(), id, cancel, stop.clone()));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for batches to run"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = state.batches.woken() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
    drivers.close();
    drivers.wait().await;
}

async fn drive(state: AppState, id: String, cancel: CancellationToken, stop: CancellationToken) {
    if let Err(e) = drive_batch(&state, &id, &cancel, &stop).await {
        tracing::error!(batch_id = %id, error = %e, "batch stopped on a database error; it will be picked up again");
    }
    state.batches.end(&id);
}

async fn drive_batch(
    state: &AppState,
    id: &str,
    cancel: &CancellationToken,
    stop: &CancellationToken,
) -> StoreResult<()> {
    let store = state.budget.store();
    while !stop.is_cancelled() {
        let Some(batch) = store.get_batch(id).await? else { return Ok(()) };
        match batch.status {
            BatchStatus::Validating => validate(state, &batch).await?,
            BatchStatus::InProgress => {
                dispatch(state, &batch, cancel, stop).await?;
                let progress = store.batch_progress(id).await?;
                if stop.is_cancelled() || progress.pending + progress.running > 0 {
                    // Stopping, or cancelled (the loop sees `cancelling`
                    // next), or requests were handed back: look again.
                    continue;
                }
                store
                    .set_batch_status(id, BatchStatus::InProgress, BatchStatus::Finalizing, now_ms(state))
                    .await?;
            }
            BatchStatus::Finalizing | BatchStatus::Cancelling => finalize(state, &batch).await?,
            BatchStatus::Completed | BatchStatus::Failed | BatchStatus::Expired | BatchStatus::Cancelled => {
                return Ok(())
            }
        }
    }
    Ok(())
}

async fn validate(state: &AppState, batch: &BatchRow) -> StoreResult<()> {
    let store = state.budget.store();
    let Some(content) = store.file_content(&batch.project_id, &batch.input_file_id).await? else {
        let error = LineError {
            line: None,
            code: "file_not_found",
            message: format!("the input file {:?} was deleted", batch.input_file_id),
            param: Some("input_file_id"),
        };
        store.fail_batch(&batch.id, &errors_json(&[error]), now_ms(state)).await?;
        return Ok(());
    };
    // Parsing up to 50,000 JSON lines is CPU work: keep it off the async threads.
    let endpoint = batch.endpoint.clone();
    let parsed =
        tokio::task::spawn_blocking(move || input::parse(&content, &endpoint)).await.unwrap_or_else(|e| {
            Err(vec![LineError { line: None, code: "invalid_file", message: e.to_string(), param: None }])
        });
    let max_lines = state.settings.batch_max_file_lines;
    let lines = match parsed {
        Ok(lines) if lines.len() > max_lines => {
            let error = LineError {
                line: None,
                code: "too_many_requests",
                message: format!("the file has {} requests; a batch may hold {max_lines}", lines.len()),
                param: None,
            };
            store.fail_batch(&batch.id, &errors_json(&[error]), now_ms(state)).await?;
            return Ok(());
        }
        Ok(lines) => lines,
        Err(errors) => {
            tracing::info!(batch_id = %batch.id, errors = errors.len(), "batch input failed validation");
            store.fail_batch(&batch.id, &errors_json(&errors), now_ms(state)).await?;
            return Ok(());
        }
    };
    let requests: Vec<NewBatchRequest> = lines
        .into_iter()
        .map(|l| NewBatchRequest { line_no: l.line as i64, custom_id: l.custom_id, body: l.body })
        .collect();
    if store.start_batch(&batch.id, &requests, now_ms(state)).await? {
        tracing::info!(batch_id = %batch.id, requests = requests.len(), "batch in progress");
    }
    Ok(())
}

/// OpenAI's batch error objects: `{code, message, param, line}`.
fn errors_json(errors: &[LineError]) -> String {
    Value::Array(
        errors
            .iter()
            .map(|e| json!({"code": e.code, "message": e.message, "param": e.param, "line": e.line}))
            .collect(),
    )
    .to_string()
}

/// The facts every request of a batch shares.
struct BatchFacts {
    id: String,
    project_id: String,
    key_id: Option<String>,
}

/// Runs the batch's pending requests, one per free batch slot, until none
/// is left, the batch is cancelled or expires, or the gateway stops; then
/// waits for the requests it started.
async fn dispatch(
    state: &AppState,
    batch: &BatchRow,
    cancel: &CancellationToken,
    stop: &CancellationToken,
) -> StoreResult<()> {
    let store = state.budget.store();
    let requeued = store.requeue_running(&batch.id).await?;
    if requeued > 0 {
        tracing::warn!(batch_id = %batch.id, requeued, "requests interrupted by a stop will run again");
    }
    let facts = Arc::new(BatchFacts {
        id: batch.id.clone(),
        project_id: batch.project_id.clone(),
        key_id: batch.key_id.clone(),
    });
    let in_flight = TaskTracker::new();
    let result = start_pending(state, batch, &facts, &in_flight, cancel, stop).await;
    in_flight.close();
    in_flight.wait().await;
    result
}

async fn start_pending(
    state: &AppState,
    batch: &BatchRow,
    facts: &Arc<BatchFacts>,
    in_flight: &TaskTracker,
    cancel: &CancellationToken,
    stop: &CancellationToken,
) -> StoreResult<()> {
    let store = state.budget.store();
    for line in store.pending_requests(&batch.id).await? {
        if now_ms(state) >= batch.expires_at_ms {
            let result = output::never_ran(
                "batch_expired",
                "this request could not be run before the batch's completion window ended",
            );
            let expired = store
                .close_requests(&batch.id, TaskStatus::Pending, TaskStatus::Expired, &result, now_ms(state))
                .await?;
            tracing::warn!(batch_id = %batch.id, expired, "batch expired");
            return Ok(());
        }
        // The body was checked to be a JSON object when the batch was
        // validated (anything else is refused when it is parsed to run).
        let body: Value = store
            .request_body(&batch.id, line)
            .await?
            .and_then(|body| serde_json::from_str(&body).ok())
            .unwrap_or(Value::Null);
        // A slot of the pool that serves the request's model: a batch on
        // the direct backend is bounded by that backend's share, not the
        // CLI pool's.
        let pool = state.pool_for_name(body.get("model").and_then(Value::as_str).unwrap_or("auto"));
        let slot = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = stop.cancelled() => return Ok(()),
            slot = pool.batch_slot() => slot,
        };
        let request_id = format!("{}-{line}-{}", batch.id, &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let Some(claimed) = store.claim_request(&batch.id, line, &request_id, now_ms(state)).await? else {
            // Someone else ended it (a cancel through another instance).
            let still_running =
                store.get_batch(&batch.id).await?.is_some_and(|b| b.status == BatchStatus::InProgress);
            if still_running {
                continue;
            }
            return Ok(());
        };
        in_flight.spawn(run_request(state.clone(), Arc::clone(facts), claimed, body, request_id, slot));
    }
    Ok(())
}

async fn run_request(
    state: AppState,
    batch: Arc<BatchFacts>,
    claimed: ClaimedRequest,
    body: Value,
    request_id: String,
    slot: BatchSlot,
) {
    let input = TaskInput {
        request_id: request_id.clone(),
        project_id: &batch.project_id,
        key_id: batch.key_id.as_deref(),
        endpoint: ENDPOINT,
        body: &body,
    };
    let end = match task::parse(&state, input) {
        Ok(request) => task::run(&state, request, slot).await,
        Err(error) => TaskEnd::Failed(error),
    };
    let store = state.budget.store();
    let result = match end {
        TaskEnd::Interrupted => {
            if let Err(e) = store.release_request(&batch.id, claimed.line_no, &request_id).await {
                tracing::warn!(batch_id = %batch.id, line = claimed.line_no, error = %e, "cannot hand a request back; the next start will");
            }
            return;
        }
        TaskEnd::Succeeded(success) => RequestResult {
            status: TaskStatus::Succeeded,
            http_status: Some(200),
            result: output::response(&request_id, 200, &success.completion),
            input_tokens: success.usage.input_tokens
                + success.usage.cache_read_tokens
                + success.usage.cache_write_tokens,
            output_tokens: success.usage.output_tokens,
            cost: success.cost,
        },
        TaskEnd::Failed(error) => failed(&request_id, &error),
    };
    record(&state, &batch.id, claimed.line_no, &request_id, &result).await;
}

fn failed(request_id: &str, error: &ApiError) -> RequestResult {
    let status = error.status().as_u16();
    RequestResult {
        status: TaskStatus::Failed,
        http_status: Some(status),
        result: output::response(request_id, status, &ErrorBody { error: error.to_object() }),
        input_tokens: 0,
        output_tokens: 0,
        cost: Default::default(),
    }
}

/// Writes a request's result, retrying a failing database a few times: a
/// result that cannot be written leaves the row `running`, and the request
/// runs again after the next start.
async fn record(state: &AppState, batch_id: &str, line_no: i64, request_id: &str, result: &RequestResult) {
    let store = state.budget.store();
    for attempt in 1..=3u64 {
        match store.finish_request(batch_id, line_no, request_id, result, now_ms(state)).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(%batch_id, line_no, %request_id, "a request's result came after it was taken over; dropped");
                return;
            }
            Err(e) => {
                tracing::error!(%batch_id, line_no, attempt, error = %e, "cannot write a batch result");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}

/// Ends a batch that has nothing left to run: `cancelled` if it was being
/// cancelled, else `expired` if some requests ran out of time, else
/// `completed`, with its output and error files.
async fn finalize(state: &AppState, batch: &BatchRow) -> StoreResult<()> {
    let store = state.budget.store();
    let status = if batch.status == BatchStatus::Cancelling {
        // Rows still `running` here were interrupted by a stop while the
        // batch was being cancelled; they never completed and will not run.
        let result = output::never_ran(
            "batch_cancelled",
            "the batch was cancelled while this request was interrupted by a gateway restart; it did not run again",
        );
        store
            .close_requests(&batch.id, TaskStatus::Running, TaskStatus::Cancelled, &result, now_ms(state))
            .await?;
        let result =
            output::never_ran("batch_cancelled", "the batch was cancelled before this request started");
        store
            .close_requests(&batch.id, TaskStatus::Pending, TaskStatus::Cancelled, &result, now_ms(state))
            .await?;
        BatchStatus::Cancelled
    } else if store.batch_progress(&batch.id).await?.expired > 0 {
        BatchStatus::Expired
    } else {
        BatchStatus::Completed
    };
    let rows = store.batch_requests(&batch.id).await?;
    let (output_lines, error_lines) = output::files(&rows);
    let now = now_ms(state);
    let file = |kind: &str, content: String| NewFile {
        id: format!("file-{}", uuid::Uuid::new_v4().simple()),
        project_id: batch.project_id.clone(),
        purpose: super::files::PURPOSE_OUTPUT.into(),
        filename: format!("{}_{kind}.jsonl", batch.id),
        content: content.into_bytes(),
        created_at_ms: now,
    };
    let output_file = output_lines.map(|c| file("output", c));
    let error_file = error_lines.map(|c| file("error", c));
    let output_id = output_file.as_ref().map(|f| f.id.clone());
    let error_id = error_file.as_ref().map(|f| f.id.clone());
    let files: Vec<NewFile> = output_file.into_iter().chain(error_file).collect();
    if store.finish_batch(&batch.id, status, &files, output_id.as_deref(), error_id.as_deref(), now).await? {
        tracing::info!(batch_id = %batch.id, status = status.as_str(), requests = rows.len(), "batch finished");
    }
    Ok(())
}

fn now_ms(state: &AppState) -> i64 {
    state.budget.now().timestamp_millis()
}
