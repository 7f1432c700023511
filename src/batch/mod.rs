//! Batches: many chat requests run as one job on the batch share of the
//! worker pool, each through the ordinary chat flow (reservation, run,
//! settlement, ledger row).
//!
//! - `sync`: `POST /v1/batch`, run while its client waits.
//! - this module, `files`, `runner`: the OpenAI Batch API. A batch and the
//!   state of each of its requests live in the store; `runner` drives them
//!   (`validating → in_progress → finalizing → completed`) and picks them up
//!   again after a restart.
//! - `input` checks the lines of an input file, `output` writes result lines,
//!   `task` runs one request, `fair` sizes the batch share.

pub mod fair;
pub mod files;
pub mod input;
pub mod output;
pub mod runner;
pub mod sync;
pub mod task;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::batches::{BatchProgress, BatchRow, BatchStatus, NewBatch};

/// The only endpoint a batch can target on this gateway.
pub const CHAT_ENDPOINT: &str = "/v1/chat/completions";
/// The most batches one page of `list` holds.
pub const MAX_PAGE: usize = 100;
/// The only completion window OpenAI offers, and so the only one here.
pub const COMPLETION_WINDOW: &str = "24h";
const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What the API and the runner share: the API wakes the runner when there
/// is a new batch, and stops a batch's dispatching when it is cancelled.
#[derive(Debug, Default)]
pub struct BatchControl {
    wake: Notify,
    // A std mutex: held only to insert, remove or look up a token.
    active: Mutex<HashMap<String, CancellationToken>>,
}

impl BatchControl {
    /// Tells the runner to look for batches to drive now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Stops dispatching new requests of a batch this instance drives.
    pub fn cancel(&self, batch_id: &str) {
        if let Some(token) = self.lock().get(batch_id) {
            token.cancel();
        }
    }

    /// Marks a batch as driven here; `None` when it already is.
    fn begin(&self, batch_id: &str) -> Option<CancellationToken> {
        let mut active = self.lock();
        if active.contains_key(batch_id) {
            return None;
        }
        let token = CancellationToken::new();
        active.insert(batch_id.to_string(), token.clone());
        Some(token)
    }

    fn end(&self, batch_id: &str) {
        self.lock().remove(batch_id);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A batch and how far its requests have got.
#[derive(Debug, Clone)]
pub struct BatchInfo {
    pub batch: BatchRow,
    pub progress: BatchProgress,
}

/// What a client asks for when it creates a batch.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Option<Map<String, Value>>,
}

/// Creates a batch (status `validating`) for the runner to pick up.
pub async fn create(
    state: &AppState,
    project_id: &str,
    key_id: Option<String>,
    spec: BatchSpec,
) -> Result<BatchInfo, ApiError> {
    if spec.endpoint != CHAT_ENDPOINT {
        return Err(ApiError::bad_request(
            format!("endpoint {:?} is not supported: batches here run {CHAT_ENDPOINT}", spec.endpoint),
            "endpoint",
        ));
    }
    if spec.completion_window != COMPLETION_WINDOW {
        return Err(ApiError::bad_request(
            format!("completion_window must be {COMPLETION_WINDOW:?}, not {:?}", spec.completion_window),
            "completion_window",
        ));
    }
    check_metadata(spec.metadata.as_ref())?;
    let file = files::get(state, project_id, &spec.input_file_id).await.map_err(|_| ApiError::NotFound {
        message: format!("no file with id {:?}", spec.input_file_id),
        param: Some("input_file_id".into()),
        code: None,
    })?;
    if file.purpose != files::PURPOSE_INPUT {
        return Err(ApiError::bad_request(
            format!(
                "file {:?} has purpose {:?}; a batch needs a file uploaded with purpose \"batch\"",
                file.id, file.purpose
            ),
            "input_file_id",
        ));
    }
    let now = state.budget.now().timestamp_millis();
    let batch = NewBatch {
        id: format!("batch_{}", uuid::Uuid::new_v4().simple()),
        project_id: project_id.to_string(),
        key_id,
        endpoint: spec.endpoint,
        input_file_id: file.id,
        completion_window: spec.completion_window,
        metadata: spec.metadata.map(|m| Value::Object(m).to_string()),
        owner: state.budget.instance_id().to_string(),
        created_at_ms: now,
        expires_at_ms: now + WINDOW.as_millis() as i64,
    };
    state.budget.store().create_batch(&batch).await?;
    // Read back before the runner is woken, so the answer shows the batch
    // as created (`validating`), as OpenAI's does.
    let created = get(state, project_id, &batch.id).await?;
    state.batches.wake();
    Ok(created)
}

/// The project's batch (another project's batch is not found).
pub async fn get(state: &AppState, project_id: &str, id: &str) -> Result<BatchInfo, ApiError> {
    let store = state.budget.store();
    let batch =
        store.get_batch(id).await?.filter(|b| b.project_id == project_id).ok_or_else(|| not_found(id))?;
    let progress = store.batch_progress(id).await?;
    Ok(BatchInfo { batch, progress })
}

/// A page of `limit` (1 to `MAX_PAGE`) of the project's batches, newest
/// first, and whether more follow.
pub async fn list(
    state: &AppState,
    project_id: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<BatchInfo>, bool), ApiError> {
    let store = state.budget.store();
    let mut batches = store.list_batches(project_id, after, limit as i64 + 1).await?;
    let more = batches.len() > limit;
    batches.truncate(limit);
    let mut page = Vec::with_capacity(batches.len());
    for batch in batches {
        let progress = store.batch_progress(&batch.id).await?;
        page.push(BatchInfo { batch, progress });
    }
    Ok((page, more))
}

/// Cancels a batch: no new request starts (pending ones are marked
/// cancelled in the same transaction as the status), requests already
/// running finish and keep their results, and the batch then ends
/// `cancelled` with its output and error files.
pub async fn cancel(state: &AppState, project_id: &str, id: &str) -> Result<BatchInfo, ApiError> {
    let info = get(state, project_id, id).await?;
    match info.batch.status {
        BatchStatus::Validating | BatchStatus::InProgress => {}
        BatchStatus::Cancelling | BatchStatus::Cancelled => return Ok(info),
        other => {
            return Err(ApiError::Conflict(format!(
                "batch {id:?} is {} and can no longer be cancelled",
                other.as_str()
            )))
        }
    }
    let now = state.budget.now().timestamp_millis();
    let result = output::never_ran("batch_cancelled", "the batch was cancelled before this request started");
    if !state.budget.store().cancel_batch(id, &result, now).await? {
        // It moved on meanwhile (to finalizing, or cancelled twice at once).
        let info = get(state, project_id, id).await?;
        return match info.batch.status {
            BatchStatus::Cancelling | BatchStatus::Cancelled => Ok(info),
            other => Err(ApiError::Conflict(format!(
                "batch {id:?} is {} and can no longer be cancelled",
                other.as_str()
            ))),
        };
    }
    state.batches.cancel(id);
    state.batches.wake();
    get(state, project_id, id).await
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("no batch with id {id:?}"),
        param: Some("batch_id".into()),
        code: None,
    }
}

/// OpenAI's limits: at most 16 pairs, keys up to 64 characters, string
/// values up to 512.
fn check_metadata(metadata: Option<&Map<String, Value>>) -> Result<(), ApiError> {
    let Some(metadata) = metadata else { return Ok(()) };
    let bad = |message: String| Err(ApiError::bad_request(message, "metadata"));
    if metadata.len() > 16 {
        return bad(format!("metadata has {} keys; at most 16 are allowed", metadata.len()));
    }
    for (key, value) in metadata {
        if key.chars().count() > 64 {
            return bad(format!("metadata key {key:?} is longer than 64 characters"));
        }
        match value {
            Value::String(text) if text.chars().count() <= 512 => {}
            Value::String(_) => return bad(format!("metadata[{key:?}] is longer than 512 characters")),
            _ => return bad(format!("metadata[{key:?}] must be a string")),
        }
    }
    Ok(())
}
