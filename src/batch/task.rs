//! One request of a batch, run through the ordinary chat flow
//! (`chat::start`: reservation, run, settlement, ledger row) on a batch slot.
//! A body that cannot become a chat request fails that request alone, with
//! the 400-style error an interactive request would get.

use std::time::Instant;

use serde_json::Value;

use crate::api::openai::{ChatCompletion, ChatCompletionRequest};
use crate::app::AppState;
use crate::chat::{self, ChatRequest};
use crate::error::ApiError;
use crate::money::Micros;
use crate::pricing::TokenUsage;
use crate::workers::{BatchSlot, JobClass, RunEnd};

/// A request of a batch, before it is checked.
pub struct TaskInput<'a> {
    /// The ledger key of this attempt.
    pub request_id: String,
    pub project_id: &'a str,
    pub key_id: Option<&'a str>,
    pub endpoint: &'static str,
    /// The chat-completions body.
    pub body: &'a Value,
}

/// How a task ended.
#[derive(Debug)]
pub enum TaskEnd {
    Succeeded(Box<Success>),
    Failed(ApiError),
    /// The gateway stopped before the run ended. The task did not complete
    /// and may run again.
    Interrupted,
}

#[derive(Debug)]
pub struct Success {
    pub completion: ChatCompletion,
    /// The model id that ran.
    pub model: String,
    pub usage: TokenUsage,
    pub cost: Micros,
}

/// Turns a task's body into a chat request. A refused one already has its
/// ledger row when this returns.
pub fn parse(state: &AppState, input: TaskInput<'_>) -> Result<ChatRequest, ApiError> {
    let mut request = empty_request(&input);
    match fill(state, input.body, &mut request) {
        Ok(()) => Ok(request),
        Err(error) => {
            chat::record_refusal(state, &request, &error);
            Err(error)
        }
    }
}

/// Refuses a task for a reason found outside its body, with its ledger row.
pub fn refuse(state: &AppState, input: TaskInput<'_>, error: ApiError) -> ApiError {
    let mut request = empty_request(&input);
    request.model = input.body.get("model").and_then(Value::as_str).unwrap_or_default().to_string();
    chat::record_refusal(state, &request, &error);
    error
}

fn empty_request(input: &TaskInput<'_>) -> ChatRequest {
    ChatRequest::new(
        input.request_id.clone(),
        input.project_id.to_string(),
        input.key_id.map(str::to_string),
        input.endpoint,
        Instant::now(),
    )
}

fn fill(state: &AppState, body: &Value, request: &mut ChatRequest) -> Result<(), ApiError> {
    let body: ChatCompletionRequest = serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("invalid request body: {inner}"), None)
        } else {
            ApiError::BadRequest {
                message: format!("invalid field `{path}`: {inner}"),
                param: Some(path),
                code: None,
            }
        }
    })?;
    if body.project_id.as_deref().is_some_and(|p| p != request.project_id) {
        return Err(ApiError::bad_request(
            format!("a request of this batch can only act for project {:?}", request.project_id),
            "project_id",
        ));
    }
    // No model, like "auto", lets the router choose (as for chat completions).
    request.model = body.model.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| "auto".into());
    if body.stream {
        return Err(ApiError::bad_request("stream is not supported in a batch", "stream"));
    }
    request.stream = false;
    if body.agent_options().is_some() {
        return Err(ApiError::bad_request(
            "agent fields (working_directory, allowed_tools, max_turns, session_id, max_budget_usd) are not \
             supported in a batch",
            None,
        ));
    }
    request.max_tokens = body.max_tokens();
    request.messages = body.domain_messages(state.settings.max_messages)?;
    request.tools = body.client_tools()?;
    request.sampling = body.sampling()?;
    request.thinking = body.thinking()?;
    request.output_schema = body.output_schema()?;
    Ok(())
}

/// Runs a checked task while holding `slot`, and waits for its outcome.
pub async fn run(state: &AppState, mut request: ChatRequest, slot: BatchSlot) -> TaskEnd {
    request.class = JobClass::Batch(slot);
    // The deadline counts from here: until now the task was only queued.
    request.received_at = Instant::now();
    let request_id = request.request_id.clone();
    let mut running = match chat::start(state, request).await {
        Ok(running) => running,
        Err(error) => return TaskEnd::Failed(error),
    };
    let Some(outcome) = running.outcome().await else {
        return TaskEnd::Failed(ApiError::internal("the run ended without an outcome"));
    };
    // The answer can come before the worker is cleaned up; keep listening
    // till then, since a closed channel reads as a caller that has left.
    let model_id = running.model.id.clone();
    state.tasks.spawn(async move { while running.next_event().await.is_some() {} });
    if let Some(error) = outcome.error {
        if outcome.report.end == RunEnd::Shutdown {
            return TaskEnd::Interrupted;
        }
        return TaskEnd::Failed(error);
    }
    let model = outcome.report.model.clone().unwrap_or_else(|| model_id.clone());
    let usage = outcome.report.usage;
    let created = state.budget.now().timestamp();
    let completion = ChatCompletion::from_report(&request_id, created, &model_id, outcome.report);
    TaskEnd::Succeeded(Box::new(Success { completion, model, usage, cost: outcome.cost }))
}
