//! `/v1/batches`: OpenAI's Batch API over batch files. A batch is private to
//! its project: another project's batch id is a 404.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Context, JsonBody};
use crate::app::AppState;
use crate::batch::{self, BatchInfo, BatchSpec};
use crate::error::{ApiError, ErrorBody};

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateBatchRequest {
    /// A file uploaded with purpose `batch`.
    #[schema(min_length = 1)]
    pub input_file_id: String,
    /// Must be `/v1/chat/completions`.
    #[schema(pattern = "^/v1/chat/completions$")]
    pub endpoint: String,
    /// Must be `24h`.
    #[schema(pattern = "^24h$")]
    pub completion_window: String,
    /// Up to 16 string pairs, returned as given.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// The project (ccgate extension; the `X-Project-Id` header does the same).
    pub project_id: Option<String>,
    /// Other OpenAI fields (`output_expires_after`) are accepted and ignored.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchObject {
    pub id: String,
    /// Always `batch`.
    pub object: &'static str,
    pub endpoint: String,
    pub errors: Option<BatchErrors>,
    pub input_file_id: String,
    pub completion_window: String,
    /// `validating`, `in_progress`, `finalizing`, `completed`, `failed`,
    /// `expired`, `cancelling` or `cancelled`.
    pub status: &'static str,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// Unix seconds, like every time below.
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    pub usage: BatchUsage,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchErrors {
    pub object: &'static str,
    /// `{code, message, param, line}`, `line` counting from 1.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
}

/// `total = completed + failed + cancelled + expired + still to run`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    /// Requests that succeeded.
    pub completed: u64,
    /// Requests that ran and failed.
    pub failed: u64,
    /// Requests that never ran because the batch was cancelled (ccgate extension).
    pub cancelled: u64,
    /// Requests that never ran because the batch expired (ccgate extension).
    pub expired: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchUsage {
    pub input_tokens: u64,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u64,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u64,
    /// What the batch's succeeded requests cost, in USD (ccgate extension).
    pub cost_usd: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchList {
    pub object: &'static str,
    pub data: Vec<BatchObject>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchListQuery {
    /// The id of the last batch of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

impl From<BatchInfo> for BatchObject {
    fn from(info: BatchInfo) -> BatchObject {
        let (b, p) = (info.batch, info.progress);
        let secs = |ms: i64| ms.div_euclid(1000);
        let errors = b.errors.as_deref().and_then(|e| serde_json::from_str::<Vec<Value>>(e).ok());
        BatchObject {
            object: "batch",
            errors: errors.map(|data| BatchErrors { object: "list", data }),
            status: b.status.as_str(),
            created_at: secs(b.created_at_ms),
            in_progress_at: b.in_progress_at_ms.map(secs),
            expires_at: Some(secs(b.expires_at_ms)),
            finalizing_at: b.finalizing_at_ms.map(secs),
            completed_at: b.completed_at_ms.map(secs),
            failed_at: b.failed_at_ms.map(secs),
            expired_at: b.expired_at_ms.map(secs),
            cancelling_at: b.cancelling_at_ms.map(secs),
            cancelled_at: b.cancelled_at_ms.map(secs),
            request_counts: RequestCounts {
                total: p.total(),
                completed: p.succeeded,
                failed: p.failed,
                cancelled: p.cancelled,
                expired: p.expired,
            },
            usage: BatchUsage {
                input_tokens: p.input_tokens,
                input_tokens_details: InputTokensDetails { cached_tokens: 0 },
                output_tokens: p.output_tokens,
                output_tokens_details: OutputTokensDetails { reasoning_tokens: 0 },
                total_tokens: p.input_tokens + p.output_tokens,
                cost_usd: p.cost.as_usd(),
            },
            metadata: b.metadata.as_deref().and_then(|m| serde_json::from_str(m).ok()),
            id: b.id,
            endpoint: b.endpoint,
            input_file_id: b.input_file_id,
            completion_window: b.completion_window,
            output_file_id: b.output_file_id,
            error_file_id: b.error_file_id,
        }
    }
}

/// Creates a batch from an uploaded file; it starts `validating` and runs
/// in the background, durably (a restart picks it up where it stopped).
#[utoipa::path(
    post,
    path = "/v1/batches",
    tag = "batch",
    request_body = CreateBatchRequest,
    params(("X-Project-Id" = Option<String>, Header, description = "The batch's project (or `project_id` in the body)")),
    responses(
        (status = 200, body = BatchObject),
        (status = 400, description = "Unsupported endpoint or window, bad metadata, or not a batch file", body = ErrorBody),
        (status = 404, description = "No such input file in this project", body = ErrorBody),
    )
)]
pub async fn create_batch(
    State(state): State<AppState>,
    ctx: Context,
    body: Result<JsonBody<CreateBatchRequest>, ApiError>,
) -> Result<Json<BatchObject>, ApiError> {
    let JsonBody(body) = body?;
    let project = ctx.project(body.project_id.as_deref())?;
    let spec = BatchSpec {
        input_file_id: body.input_file_id,
        endpoint: body.endpoint,
        completion_window: body.completion_window,
        metadata: body.metadata,
    };
    Ok(Json(batch::create(&state, &project, ctx.key_id(), spec).await?.into()))
}

/// A batch, with its request counts.
#[utoipa::path(
    get,
    path = "/v1/batches/{batch_id}",
    tag = "batch",
    params(("batch_id" = String, Path), ("X-Project-Id" = Option<String>, Header, description = "The batch's project")),
    responses((status = 200, body = BatchObject), (status = 404, description = "No such batch in this project", body = ErrorBody))
)]
pub async fn get_batch(
    State(state): State<AppState>,
    ctx: Context,
    Path(batch_id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let project = ctx.project(None)?;
    Ok(Json(batch::get(&state, &project, &batch_id).await?.into()))
}

/// The project's batches, newest first.
#[utoipa::path(
    get,
    path = "/v1/batches",
    tag = "batch",
    params(BatchListQuery, ("X-Project-Id" = Option<String>, Header, description = "The project")),
    responses((status = 200, body = BatchList), (status = 400, body = ErrorBody))
)]
pub async fn list_batches(
    State(state): State<AppState>,
    ctx: Context,
    Query(query): Query<BatchListQuery>,
) -> Result<Json<BatchList>, ApiError> {
    let limit = super::extract::page_size(query.limit, 20, batch::MAX_PAGE)?;
    let project = ctx.project(None)?;
    let (page, has_more) = batch::list(&state, &project, query.after.as_deref(), limit).await?;
    let data: Vec<BatchObject> = page.into_iter().map(BatchObject::from).collect();
    Ok(Json(BatchList {
        object: "list",
        first_id: data.first().map(|b| b.id.clone()),
        last_id: data.last().map(|b| b.id.clone()),
        data,
        has_more,
    }))
}

/// Cancels a batch: no new request starts; running ones finish and keep
/// their results; the batch ends `cancelled` (through `cancelling`).
#[utoipa::path(
    post,
    path = "/v1/batches/{batch_id}/cancel",
    tag = "batch",
    params(("batch_id" = String, Path), ("X-Project-Id" = Option<String>, Header, description = "The batch's project")),
    responses(
        (status = 200, body = BatchObject),
        (status = 404, description = "No such batch in this project", body = ErrorBody),
        (status = 409, description = "The batch has already ended", body = ErrorBody),
    )
)]
pub async fn cancel_batch(
    State(state): State<AppState>,
    ctx: Context,
    Path(batch_id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let project = ctx.project(None)?;
    Ok(Json(batch::cancel(&state, &project, &batch_id).await?.into()))
}
