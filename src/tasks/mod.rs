//! Async tasks (`/v1/tasks`): long agentic work that runs in the background
//! while its client polls or follows its events.
//!
//! A task is one chat run (`chat::start`, endpoint `/v1/tasks`, with the
//! task's agent options), so the agent policy, the reservation, settlement
//! and the ledger work as for chat. What the run shows (text, tool
//! activity, its end) is appended to the task's event log in the store as
//! it happens; `GET /v1/tasks/{id}/events` replays the log from any point
//! and then follows it. A task row belongs to the instance that runs it; a
//! task whose instance is gone (crash, restart) is marked `interrupted`, and
//! a finished task's result is written once and never changed.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::chat::{self, AgentOptions, ChatEvent, ChatRequest, Message, Outcome, Role};
use crate::error::ApiError;
use crate::money::Micros;
use crate::store::tasks::{TaskEnd, TaskEvent, TaskRow};
use crate::workers::RunEnd;

/// What `POST /v1/tasks` takes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// What the agent is asked to do.
    #[schema(min_length = 1)]
    pub prompt: String,
    /// Where it works: inside one of the project's allowed roots.
    pub working_directory: Option<String>,
    /// Tools in the CLI's syntax (`Read`, `Edit`, `Bash(git *)`), within the policy.
    pub allowed_tools: Option<Vec<String>>,
    #[schema(minimum = 1)]
    pub max_turns: Option<u32>,
    /// The most the task may cost, in USD (never above the policy's `max_task_usd`).
    #[schema(exclusive_minimum = 0)]
    pub max_budget_usd: Option<f64>,
    /// A model or `auto` (the default).
    pub model: Option<String>,
    /// Continue a session returned by an earlier task or chat request.
    pub session_id: Option<String>,
    /// The project (ccgate extension; the `X-Project-Id` header does the same).
    pub project_id: Option<String>,
}

/// Cancels running tasks of this instance, and wakes event followers.
#[derive(Default)]
pub struct TaskControl {
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Bumped on every event this instance appends.
    appended: watch::Sender<u64>,
}

impl TaskControl {
    /// A receiver that sees every append of this instance.
    pub fn follow(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    fn bump(&self) {
        self.appended.send_modify(|n| *n += 1);
    }

    fn cancel(&self, id: &str) -> bool {
        match self.running.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// Statuses a task can end in.
pub fn is_final(status: &str) -> bool {
    !crate::store::tasks::OPEN_STATUSES.contains(&status)
}

/// Starts a task. Refusals (policy, budget, bad input) come back at once,
/// before anything runs; otherwise the task runs in the background.
pub async fn submit(
    state: &AppState,
    project_id: &str,
    key_id: Option<&str>,
    request_id: &str,
    received_at: std::time::Instant,
    task: TaskRequest,
) -> Result<TaskRow, ApiError> {
    if task.prompt.trim().is_empty() {
        return Err(ApiError::bad_request("prompt must not be empty", "prompt"));
    }
    if let Some(usd) = task.max_budget_usd {
        if !(usd.is_finite() && usd > 0.0) {
            return Err(ApiError::bad_request("max_budget_usd must be a positive number", "max_budget_usd"));
        }
    }
    let id = format!("task_{}", uuid::Uuid::new_v4().simple());
    let mut chat = ChatRequest::new(
        request_id.to_string(),
        project_id.to_string(),
        key_id.map(str::to_string),
        "/v1/tasks",
        received_at,
    );
    chat.model = task.model.clone().unwrap_or_else(|| "auto".into());
    chat.messages = vec![Message::new(Role::User, task.prompt.clone())];
    chat.agent = Some(AgentOptions {
        working_directory: task.working_directory.clone(),
        allowed_tools: task.allowed_tools.clone(),
        max_turns: task.max_turns,
        session_id: task.session_id.clone(),
        max_budget_usd: task.max_budget_usd,
    });
    let running = chat::start(state, chat).await?;
    let row = TaskRow {
        id: id.clone(),
        project_id: project_id.to_string(),
        key_id: key_id.map(str::to_string),
        request_id: request_id.to_string(),
        status: "running".into(),
        owner: Some(state.budget.instance_id().to_string()),
        request: serde_json::to_string(&task).unwrap_or_default(),
        model: Some(running.model.id.clone()),
        result: None,
        error: None,
        cost: Micros::ZERO,
        num_turns: 0,
        session_id: None,
        created_at_ms: state.budget.now().timestamp_millis(),
        finished_at_ms: None,
    };
    let store = state.budget.store();
    if let Err(e) = store.create_task(&row).await {
        // The run has started and will be settled; without its row the
        // client could never see it, so it is stopped.
        drop(running);
        return Err(e.into());
    }
    let cancel = CancellationToken::new();
    state.task_control.running.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), cancel.clone());
    let follower = state.clone();
    state.tasks.spawn(async move { follow(&follower, &id, running, cancel).await });
    Ok(row)
}

/// Writes the run's events to the task's log until it ends or is cancelled.
async fn follow(state: &AppState, id: &str, mut running: chat::Running, cancel: CancellationToken) {
    append(state, id, "status", json!({"status": "running", "model": running.model.id})).await;
    let outcome = loop {
        let event = tokio::select! {
            event = running.next_event() => event,
            _ = cancel.cancelled() => break None,
        };
        match event {
            Some(ChatEvent::Text(text)) => append(state, id, "text", json!({ "text": text })).await,
            Some(ChatEvent::Tool(activity)) => append(state, id, "tool", json!(activity)).await,
            // Tasks carry no client-side tools, so the model cannot call
            // one, and run on the CLI, which sends no thinking.
            Some(ChatEvent::ToolCall(_) | ChatEvent::Thinking(_)) => {}
            Some(ChatEvent::Done(outcome)) => break Some(*outcome),
            None => break None,
        }
    };
    // Dropping the run's receiver makes its supervisor kill the worker (if
    // it still runs) and settle what it spent.
    drop(running);
    let now = state.budget.now().timestamp_millis();
    let end = match &outcome {
        Some(outcome) => end_of(outcome, now),
        None => cancelled(now),
    };
    match state.budget.store().finish_task(id, &end).await {
        Ok(true) => {
            let mut data = json!({
                "status": end.status,
                "cost_usd": end.cost.as_usd(),
                "num_turns": end.num_turns,
                "session_id": end.session_id,
            });
            if let Some(error) = &end.error {
                data["error"] = serde_json::from_str(error).unwrap_or(Value::Null);
            }
            append(state, id, "done", data).await;
        }
        Ok(false) => {}
        Err(e) => tracing::error!(task = %id, error = %e, "failed to record a task's end"),
    }
    state.task_control.running.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
}

fn end_of(outcome: &Outcome, now: i64) -> TaskEnd {
    let report = &outcome.report;
    let (status, error) = match (&outcome.error, &report.end) {
        (None, _) => ("succeeded", None),
        (Some(_), RunEnd::Shutdown) => {
            ("interrupted", Some(error_json("interrupted", "the gateway stopped while the task ran")))
        }
        (Some(error), _) => ("failed", Some(error_json(error.outcome(), &error.to_string()))),
    };
    TaskEnd {
        status: status.into(),
        model: report.model.clone(),
        result: (!report.text.is_empty()).then(|| report.text.clone()),
        error,
        cost: outcome.cost,
        num_turns: i64::try_from(report.num_turns).unwrap_or(i64::MAX),
        session_id: report.session_id.clone(),
        finished_at_ms: now,
    }
}

/// The end of a task stopped by its client.
fn cancelled(now_ms: i64) -> TaskEnd {
    TaskEnd {
        status: "cancelled".into(),
        model: None,
        result: None,
        error: Some(error_json("cancelled", "the task was cancelled")),
        cost: Micros::ZERO,
        num_turns: 0,
        session_id: None,
        finished_at_ms: now_ms,
    }
}

fn error_json(code: &str, message: &str) -> String {
    json!({"code": code, "message": message}).to_string()
}

async fn append(state: &AppState, id: &str, kind: &str, data: Value) {
    let now = state.budget.now().timestamp_millis();
    if let Err(e) = state.budget.store().append_task_event(id, kind, &data.to_string(), now).await {
        tracing::error!(task = %id, error = %e, "failed to record a task event");
    }
    state.task_control.bump();
}

/// A task of the project, or 404.
pub async fn get(state: &AppState, project_id: &str, id: &str) -> Result<TaskRow, ApiError> {
    match state.budget.store().task(id).await? {
        Some(task) if task.project_id == project_id => Ok(task),
        _ => Err(ApiError::NotFound {
            message: format!("no task {id:?} in project {project_id:?}"),
            param: None,
            code: Some("task_not_found"),
        }),
    }
}

/// The task's events after `after`, in order.
pub async fn events_after(state: &AppState, id: &str, after: i64) -> Result<Vec<TaskEvent>, ApiError> {
    Ok(state.budget.store().task_events_after(id, after, 500).await?)
}

/// Tool uses recorded for a task, in order.
pub async fn tool_uses(state: &AppState, id: &str) -> Result<Vec<Value>, ApiError> {
    let mut uses = Vec::new();
    let mut after = 0;
    loop {
        let events = events_after(state, id, after).await?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        uses.extend(
            events
                .iter()
                .filter(|e| e.kind == "tool")
                .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
                .filter(|v| v["type"] == "use"),
        );
    }
    Ok(uses)
}

/// Stops a running task. The worker is killed; what it spent is settled.
pub async fn cancel(state: &AppState, project_id: &str, id: &str) -> Result<TaskRow, ApiError> {
    let task = get(state, project_id, id).await?;
    if is_final(&task.status) {
        return Err(ApiError::Conflict(format!("task {id:?} has already ended ({})", task.status)));
    }
    if !state.task_control.cancel(id) {
        // Running on another instance: end the row here; that instance's
        // follower finds it ended and stops writing.
        let end = cancelled(state.budget.now().timestamp_millis());
        if state.budget.store().finish_task(id, &end).await? {
            append(state, id, "done", json!({"status": "cancelled"})).await;
        }
    }
    // The follower records the end; wait for it, briefly.
    let mut follow = state.task_control.follow();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let task = get(state, project_id, id).await?;
        if is_final(&task.status) {
            return Ok(task);
        }
        if tokio::time::timeout_at(deadline, follow.changed()).await.is_err() {
            return Ok(task);
        }
    }
}

/// Marks tasks left open by instances that are gone as interrupted.
pub async fn recover(state: &AppState) -> anyhow::Result<usize> {
    let now = state.budget.now().timestamp_millis();
    let error = error_json("interrupted", "the gateway stopped while the task ran");
    let ids = state.budget.store().interrupt_orphaned_tasks(state.budget.instance_id(), &error, now).await?;
    for id in &ids {
        append(
            state,
            id,
            "done",
            json!({"status": "interrupted", "error": serde_json::from_str::<Value>(&error)?}),
        )
        .await;
    }
    Ok(ids.len())
}
