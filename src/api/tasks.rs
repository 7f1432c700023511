//! `/v1/tasks`: async agent tasks. A task is private to its project:
//! another project's task id is a 404.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Context, JsonBody};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::store::tasks::TaskRow;
use crate::tasks::{self, TaskRequest};

/// A task as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskObject {
    pub id: String,
    /// Always `task`.
    pub object: &'static str,
    /// `running`, `succeeded`, `failed`, `cancelled` or `interrupted`.
    pub status: String,
    pub model: Option<String>,
    /// The final text, once the task has succeeded.
    pub result: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub cost_usd: f64,
    pub num_turns: i64,
    /// Pass it as `session_id` to continue the conversation.
    pub session_id: Option<String>,
    /// Every tool the agent asked for, in order: `{type: "use", id, name, input}`.
    #[schema(value_type = Vec<Object>)]
    pub tool_uses: Vec<Value>,
    /// Unix seconds.
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The request id of its run (ledger, logs).
    pub request_id: String,
}

impl TaskObject {
    fn new(task: TaskRow, tool_uses: Vec<Value>) -> TaskObject {
        TaskObject {
            id: task.id,
            object: "task",
            status: task.status,
            model: task.model,
            result: task.result,
            error: task.error.and_then(|e| serde_json::from_str(&e).ok()),
            cost_usd: task.cost.as_usd(),
            num_turns: task.num_turns,
            session_id: task.session_id,
            tool_uses,
            created_at: task.created_at_ms / 1000,
            finished_at: task.finished_at_ms.map(|ms| ms / 1000),
            request_id: task.request_id,
        }
    }
}

async fn object(state: &AppState, task: TaskRow) -> Result<TaskObject, ApiError> {
    let uses = tasks::tool_uses(state, &task.id).await?;
    Ok(TaskObject::new(task, uses))
}

/// Starts an agent task in the background. Policy, budget and input
/// checks happen first: a refused task gets its error, not an id.
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    request_body = TaskRequest,
    responses(
        (status = 202, description = "The task is running", body = TaskObject),
        (status = 400, body = ErrorBody), (status = 403, description = "Outside the agent policy", body = ErrorBody),
        (status = 404, description = "Unknown model, project or session", body = ErrorBody),
        (status = 429, description = "Budget or rate limit", body = ErrorBody),
    )
)]
pub async fn create_task(
    State(state): State<AppState>,
    ctx: Context,
    JsonBody(body): JsonBody<TaskRequest>,
) -> Result<Response, ApiError> {
    let project = ctx.project(body.project_id.as_deref())?;
    let task =
        tasks::submit(&state, &project, ctx.key_id().as_deref(), &ctx.request_id, ctx.received_at, body)
            .await?;
    Ok((StatusCode::ACCEPTED, Json(TaskObject::new(task, Vec::new()))).into_response())
}

/// A task: status, result, cost, turns and tool uses.
#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}",
    tag = "tasks",
    params(("task_id" = String, Path), ("X-Project-Id" = Option<String>, Header, description = "The task's project")),
    responses((status = 200, body = TaskObject), (status = 404, body = ErrorBody))
)]
pub async fn get_task(
    State(state): State<AppState>,
    ctx: Context,
    Path(task_id): Path<String>,
) -> Result<Json<TaskObject>, ApiError> {
    let project = ctx.project(None)?;
    let task = tasks::get(&state, &project, &task_id).await?;
    Ok(Json(object(&state, task).await?))
}

/// Stops a running task: its worker is killed and what it spent is settled.
#[utoipa::path(
    post,
    path = "/v1/tasks/{task_id}/cancel",
    tag = "tasks",
    params(("task_id" = String, Path), ("X-Project-Id" = Option<String>, Header, description = "The task's project")),
    responses(
        (status = 200, body = TaskObject), (status = 404, body = ErrorBody),
        (status = 409, description = "The task has already ended", body = ErrorBody),
    )
)]
pub async fn cancel_task(
    State(state): State<AppState>,
    ctx: Context,
    Path(task_id): Path<String>,
) -> Result<Json<TaskObject>, ApiError> {
    let project = ctx.project(None)?;
    let task = tasks::cancel(&state, &project, &task_id).await?;
    Ok(Json(object(&state, task).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Replay from after this event (the `Last-Event-ID` header does the same).
    pub after: Option<i64>,
}

/// The task's events as server-sent events, from the start or after
/// `Last-Event-ID`, then live until the task ends. Each event has an `id`
/// (its sequence number), a type (`status`, `text`, `tool`, `done`) and
/// JSON data; the stream closes after `done`.
#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}/events",
    tag = "tasks",
    params(
        ("task_id" = String, Path), EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event"),
        ("X-Project-Id" = Option<String>, Header, description = "The task's project"),
    ),
    responses((status = 200, description = "text/event-stream"), (status = 404, body = ErrorBody))
)]
pub async fn task_events(
    State(state): State<AppState>,
    ctx: Context,
    Path(task_id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project = ctx.project(None)?;
    tasks::get(&state, &project, &task_id).await?;
    let from_header = match headers.get("last-event-id") {
        Some(value) => {
            Some(value.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).ok_or_else(|| {
                ApiError::bad_request("Last-Event-ID must be an event id (a number)", "Last-Event-ID")
            })?)
        }
        None => None,
    };
    let after = from_header.or(query.after).unwrap_or(0);
    let follow = state.task_control.follow();
    let start = Follow { state, project, task_id, after, follow, ended: false };
    let frames = stream::unfold(start, |mut at| async move {
        if at.ended {
            return None;
        }
        loop {
            let events = match tasks::events_after(&at.state, &at.task_id, at.after).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(task = %at.task_id, error = %e, "cannot read task events");
                    return None;
                }
            };
            if let Some(last) = events.last() {
                at.after = last.seq;
                at.ended = events.iter().any(|e| e.kind == "done");
                let frames: Vec<SseEvent> = events
                    .into_iter()
                    .map(|e| SseEvent::default().id(e.seq.to_string()).event(e.kind).data(e.data))
                    .collect();
                return Some((frames, at));
            }
            // Nothing new: stop if the task has ended (and wrote no `done`,
            // which only a crash between the two writes could cause).
            match tasks::get(&at.state, &at.project, &at.task_id).await {
                Ok(task) if tasks::is_final(&task.status) => return None,
                Ok(_) => {}
                Err(_) => return None,
            }
            // Woken by this instance's appends; another instance's show up
            // within a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), at.follow.changed()).await;
        }
    })
    .flat_map(|frames| stream::iter(frames.into_iter().map(Ok::<_, Infallible>)));
    Ok(Sse::new(frames).keep_alive(KeepAlive::default()).into_response())
}

struct Follow {
    state: AppState,
    project: String,
    task_id: String,
    after: i64,
    follow: tokio::sync::watch::Receiver<u64>,
    ended: bool,
}
