//! `POST /v1/batch`: many chat requests in one call, run in parallel on the
//! batch share of the pool, answered when all have ended.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::extract::{parse_json, Context};
use super::openai::ChatCompletion;
use crate::app::AppState;
use crate::batch::sync::{self, SyncBatch, SyncReport, SyncTask};
use crate::chat::{self, ChatRequest};
use crate::error::{ApiError, ErrorBody, ErrorObject};

#[derive(Debug, Deserialize, ToSchema)]
pub struct SyncBatchRequest {
    /// The project to charge (or the `X-Project-Id` header).
    pub project_id: Option<String>,
    /// Chat-completions requests, each with a `custom_id` (unique in the batch).
    #[schema(value_type = Vec<Object>, min_items = 1)]
    pub requests: Vec<Value>,
    /// At most this many requests at once (never more than the pool's batch share).
    #[schema(minimum = 1)]
    pub max_concurrency: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct SyncBatchResponse {
    /// The request id of the batch; each request's ledger row is `<id>-<index>`.
    pub id: String,
    /// Always `batch.result`.
    pub object: &'static str,
    /// One per request, in order.
    pub results: Vec<SyncTaskResult>,
    pub stats: SyncBatchStats,
}

#[derive(Serialize, ToSchema)]
pub struct SyncTaskResult {
    pub custom_id: Option<String>,
    /// `succeeded` or `failed`.
    pub status: &'static str,
    pub response: Option<ChatCompletion>,
    pub error: Option<ErrorObject>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SyncBatchStats {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// By the model id that ran.
    pub cost_by_model: BTreeMap<String, ModelStats>,
    /// From receiving the batch to the last request's end.
    pub wall_time_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelStats {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// Runs a batch of chat requests and answers with every result.
///
/// Each request is checked on its own (an invalid one fails with a 400-style
/// error while the rest run), then the batch against the project's budget:
/// requests that no longer fit fail with `insufficient_quota` and never run.
#[utoipa::path(
    post,
    path = "/v1/batch",
    tag = "batch",
    request_body = SyncBatchRequest,
    params(("X-Project-Id" = Option<String>, Header, description = "Project to charge (or `project_id` in the body)")),
    responses(
        (status = 200, description = "Every request's result, and totals", body = SyncBatchResponse),
        (status = 400, description = "Malformed batch", body = ErrorBody),
        (status = 404, description = "Unknown project", body = ErrorBody),
        (status = 413, description = "More than `batch_max_tasks` requests, or a body over `batch_max_body_bytes`", body = ErrorBody),
    )
)]
pub async fn run_batch(
    State(state): State<AppState>,
    ctx: Context,
    body: Body,
) -> Result<Json<SyncBatchResponse>, ApiError> {
    let mut project = ctx.project_header.clone().unwrap_or_else(|| "default".into());
    let batch = match parse(&state, &ctx, body, &mut project).await {
        Ok(batch) => batch,
        Err(error) => {
            refuse(&state, &ctx, project, &error);
            return Err(error);
        }
    };
    let report = match sync::run(&state, batch).await {
        Ok(report) => report,
        Err(error) => {
            refuse(&state, &ctx, project, &error);
            return Err(error);
        }
    };
    Ok(Json(render(ctx.request_id, report)))
}

async fn parse(
    state: &AppState,
    ctx: &Context,
    body: Body,
    project: &mut String,
) -> Result<SyncBatch, ApiError> {
    let limit = state.settings.batch_max_body_bytes;
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}"), None))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "the batch is larger than the {limit} bytes this gateway accepts (batch_max_body_bytes)"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    let body: SyncBatchRequest = parse_json(&bytes)?;
    *project = ctx.project(body.project_id.as_deref())?;
    let max_tasks = state.settings.batch_max_tasks;
    if body.requests.len() > max_tasks {
        return Err(ApiError::PayloadTooLarge(format!(
            "the batch has {} requests; at most {max_tasks} are accepted (batch_max_tasks)",
            body.requests.len()
        )));
    }
    if body.requests.is_empty() {
        return Err(ApiError::bad_request("requests must not be empty", "requests"));
    }
    if body.max_concurrency == Some(0) {
        return Err(ApiError::bad_request("max_concurrency must be at least 1", "max_concurrency"));
    }
    let tasks = body
        .requests
        .into_iter()
        .map(|mut body| {
            let custom_id = match body.as_object_mut().and_then(|o| o.remove("custom_id")) {
                Some(Value::String(id)) => Some(id),
                _ => None,
            };
            SyncTask { custom_id, body }
        })
        .collect();
    Ok(SyncBatch {
        request_id: ctx.request_id.clone(),
        project_id: project.clone(),
        key_id: ctx.key_id(),
        max_concurrency: body.max_concurrency,
        received_at: ctx.received_at,
        tasks,
    })
}

/// A batch refused as a whole still leaves its ledger row.
fn refuse(state: &AppState, ctx: &Context, project_id: String, error: &ApiError) {
    let request =
        ChatRequest::new(ctx.request_id.clone(), project_id, ctx.key_id(), sync::ENDPOINT, ctx.received_at);
    chat::record_refusal(state, &request, error);
}

fn render(id: String, report: SyncReport) -> SyncBatchResponse {
    let stats = report.stats();
    let results = report
        .results
        .into_iter()
        .map(|result| match result.end {
            Ok(success) => SyncTaskResult {
                custom_id: result.custom_id,
                status: "succeeded",
                response: Some(success.completion),
                error: None,
            },
            Err(error) => SyncTaskResult {
                custom_id: result.custom_id,
                status: "failed",
                response: None,
                error: Some(error.to_object()),
            },
        })
        .collect();
    SyncBatchResponse {
        id,
        object: "batch.result",
        results,
        stats: SyncBatchStats {
            total: stats.total,
            succeeded: stats.succeeded,
            failed: stats.failed,
            input_tokens: stats.input_tokens,
            output_tokens: stats.output_tokens,
            cost_usd: stats.cost.as_usd(),
            cost_by_model: stats
                .by_model
                .into_iter()
                .map(|(model, m)| {
                    let view = ModelStats {
                        requests: m.requests,
                        input_tokens: m.input_tokens,
                        output_tokens: m.output_tokens,
                        cost_usd: m.cost.as_usd(),
                    };
                    (model, view)
                })
                .collect(),
            wall_time_ms: report.wall_time.as_millis() as u64,
        },
    }
}
