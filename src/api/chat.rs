//! `POST /v1/chat/completions`: OpenAI in, a chat run, OpenAI out.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};

use super::extract::{Context, JsonBody};
use super::openai::{
    finish_reason, AgentInfo, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChunkChoice,
    ChunkExtension, Delta, RunInfo, Usage,
};
use crate::app::AppState;
use crate::chat::{self, ChatEvent, ChatRequest, Outcome, Running, ToolActivity, ToolCallDelta};
use crate::error::{ApiError, ErrorBody};

/// Creates a chat completion, streamed or not.
///
/// The run's cost comes back in the `x-ccgate-cost-usd` header (non-streaming)
/// or in `x_ccgate.cost_usd` of the last chunk (streaming).
///
/// The extension fields `working_directory`, `allowed_tools`, `max_turns`,
/// `session_id` and `max_budget_usd` make Claude Code act as an agent under
/// the project's agent policy (403 naming the rule when it does not allow
/// the request; 404 for a session of another project). Its session id comes
/// back in `x-ccgate-session-id` and `x_ccgate.session_id`; tool activity in
/// `x_ccgate.tool_uses`, or as chunks with an empty `delta` and
/// `x_ccgate.tool` while streaming.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "chat",
    request_body = ChatCompletionRequest,
    params(("X-Project-Id" = Option<String>, Header, description = "Project to charge (or `project_id` in the body)")),
    responses(
        (status = 200, description = "A chat completion, or an SSE stream of chunks when `stream` is true", body = ChatCompletion,
         headers(("x-ccgate-cost-usd" = String, description = "What the run cost, in USD"),
                 ("x-ccgate-session-id" = String, description = "Agentic runs: the session to continue"),
                 ("x-ccgate-model" = String, description = "The model that answered (a fallback model when the requested one was overloaded)"))),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 403, description = "The project's agent policy refuses the agent fields", body = ErrorBody),
        (status = 404, description = "Unknown model, project or session", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Budget exhausted (`insufficient_quota`) or upstream rate limit", body = ErrorBody),
        (status = 502, description = "The upstream API or the CLI failed", body = ErrorBody),
        (status = 503, description = "Queue full (with Retry-After) or CLI not installed", body = ErrorBody),
        (status = 504, description = "Deadline or stall timeout", body = ErrorBody),
    )
)]
pub async fn create_chat_completion(
    State(state): State<AppState>,
    ctx: Context,
    body: Result<JsonBody<ChatCompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let (request, body) = parsed(&state, &ctx, "/v1/chat/completions", body, parse)?;
    let agentic = request.agent.is_some();
    let running = chat::start(&state, request).await?;
    let include_usage = body.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let answering = running.answering.clone();
    let route = route_header(&running);
    let mut response = if body.stream {
        stream_response(ctx.request_id, running, include_usage, agentic).await
    } else {
        complete_response(ctx.request_id, running, agentic).await
    }
    .into_response();
    answered_by(&mut response, answering.borrow().id.clone(), route);
    Ok(response)
}

/// A chat request read from its wire body by `parse`, which fills in the
/// request begun here (`endpoint`'s, for the caller's project). A request
/// refused while parsing is written to the ledger before the refusal is
/// returned.
pub(super) fn parsed<B, T>(
    state: &AppState,
    ctx: &Context,
    endpoint: &'static str,
    body: B,
    parse: impl FnOnce(&AppState, &Context, B, &mut ChatRequest) -> Result<T, ApiError>,
) -> Result<(ChatRequest, T), ApiError> {
    let mut request = ChatRequest::new(
        ctx.request_id.clone(),
        ctx.project_header.clone().unwrap_or_else(|| "default".into()),
        ctx.key_id(),
        endpoint,
        ctx.received_at,
    );
    match parse(state, ctx, body, &mut request) {
        Ok(body) => Ok((request, body)),
        Err(error) => {
            chat::record_refusal(state, &request, &error);
            Err(error)
        }
    }
}

/// Names the model that answered (`x-ccgate-model`, and the metrics
/// label), known by the time a response is built: a fallback is chosen
/// before the first text or outcome; and how `auto` chose (`route`).
pub(super) fn answered_by(response: &mut Response, model: String, route: Option<HeaderValue>) {
    if let Ok(value) = HeaderValue::from_str(&model) {
        response.headers_mut().insert("x-ccgate-model", value);
    }
    response.extensions_mut().insert(super::metrics::ModelLabel(model));
    if let Some(route) = route {
        response.headers_mut().insert("x-ccgate-route", route);
    }
}

/// `x-ccgate-route`: how `"model": "auto"` chose, when it did.
pub(super) fn route_header(running: &Running) -> Option<HeaderValue> {
    running.route.as_ref().and_then(|r| {
        HeaderValue::from_str(&format!("tier={}; score={:.3}; model={}", r.tier, r.score, running.model.id))
            .ok()
    })
}

fn parse(
    state: &AppState,
    ctx: &Context,
    body: Result<JsonBody<ChatCompletionRequest>, ApiError>,
    request: &mut ChatRequest,
) -> Result<ChatCompletionRequest, ApiError> {
    let JsonBody(body) = body?;
    request.project_id = ctx.project(body.project_id.as_deref())?;
    // No model, like "auto", lets the router choose.
    request.model = body.model.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| "auto".into());
    request.max_tokens = body.max_tokens();
    request.messages = body.domain_messages(state.settings.max_messages)?;
    request.agent = body.agent_options();
    request.tools = body.client_tools()?;
    request.stream = body.stream;
    request.sampling = body.sampling()?;
    request.thinking = body.thinking()?;
    request.output_schema = body.output_schema()?;
    Ok(body)
}

async fn complete_response(
    request_id: String,
    mut running: Running,
    agentic: bool,
) -> Result<Response, ApiError> {
    let mut tools = Vec::new();
    let outcome = loop {
        match running.next_event().await {
            // Text is also collected in the report; OpenAI's format has
            // no place for extended thinking (never asked for here).
            Some(ChatEvent::Text(_) | ChatEvent::ToolCall(_) | ChatEvent::Thinking(_)) => continue,
            Some(ChatEvent::Tool(activity)) => tools.push(tool_json(&activity)),
            Some(ChatEvent::Done(outcome)) => break *outcome,
            None => return Err(ApiError::internal("the run ended without an outcome")),
        }
    };
    if let Some(error) = outcome.error {
        return Err(error);
    }
    let report = outcome.report;
    let mut headers = HeaderMap::new();
    let x_ccgate = agentic.then(|| AgentInfo {
        session_id: report.session_id.clone(),
        num_turns: report.num_turns,
        tool_uses: tools,
    });
    if let Some(session) = report.session_id.as_deref().filter(|_| agentic) {
        if let Ok(value) = HeaderValue::from_str(session) {
            headers.insert("x-ccgate-session-id", value);
        }
    }
    let mut body =
        ChatCompletion::from_report(&request_id, unix_now(), &running.answering_model().id, report);
    body.x_ccgate = x_ccgate;
    if let Ok(cost) = HeaderValue::from_str(&format!("{:.6}", outcome.cost.as_usd())) {
        headers.insert("x-ccgate-cost-usd", cost);
    }
    Ok((headers, axum::Json(body)).into_response())
}

/// Streams chunks as the worker produces text. The HTTP status is decided
/// when the first text arrives: a run that fails before saying anything
/// gets a proper error status instead of a 200 stream holding an error.
async fn stream_response(
    request_id: String,
    mut running: Running,
    include_usage: bool,
    agentic: bool,
) -> Result<Response, ApiError> {
    let first = running.next_event().await;
    let meta = ChunkMeta::new(&request_id, running.answering_model().id, agentic);
    let first_frame = match first {
        Some(ChatEvent::Text(text)) => Some(text_frame(&meta, text)),
        Some(ChatEvent::Tool(activity)) => Some(tool_frame(&meta, activity)),
        Some(ChatEvent::ToolCall(delta)) => Some(tool_call_frame(&meta, delta)),
        Some(ChatEvent::Thinking(_)) => None,
        Some(ChatEvent::Done(outcome)) => {
            if let Some(error) = outcome.error {
                return Err(error);
            }
            let frames = closing_frames(&meta, *outcome, include_usage);
            return Ok(sse(stream::iter(std::iter::once(role_frame(&meta)).chain(frames))));
        }
        None => return Err(ApiError::internal("the run ended without an outcome")),
    };
    let head = stream::iter(std::iter::once(role_frame(&meta)).chain(first_frame));
    let tail = stream::unfold(Some((running, meta)), move |state| async move {
        let (mut running, meta) = state?;
        match running.next_event().await {
            Some(ChatEvent::Text(text)) => Some((vec![text_frame(&meta, text)], Some((running, meta)))),
            Some(ChatEvent::Tool(activity)) => {
                Some((vec![tool_frame(&meta, activity)], Some((running, meta))))
            }
            Some(ChatEvent::ToolCall(delta)) => {
                Some((vec![tool_call_frame(&meta, delta)], Some((running, meta))))
            }
            Some(ChatEvent::Thinking(_)) => Some((Vec::new(), Some((running, meta)))),
            Some(ChatEvent::Done(outcome)) => Some((closing_frames(&meta, *outcome, include_usage), None)),
            None => Some((
                vec![error_frame(&ApiError::internal("the run ended without an outcome")), done_frame()],
                None,
            )),
        }
    })
    .flat_map(stream::iter);
    Ok(sse(head.chain(tail)))
}

fn sse(frames: impl Stream<Item = SseEvent> + Send + 'static) -> Response {
    Sse::new(frames.map(Ok::<_, Infallible>)).into_response()
}

struct ChunkMeta {
    id: String,
    request_id: String,
    created: i64,
    model: String,
    /// Agentic runs close with their session id and turns.
    agentic: bool,
}

impl ChunkMeta {
    fn new(request_id: &str, model: String, agentic: bool) -> ChunkMeta {
        ChunkMeta {
            id: format!("chatcmpl-{request_id}"),
            request_id: request_id.into(),
            created: unix_now(),
            model,
            agentic,
        }
    }

    fn chunk(&self, delta: Delta, finish_reason: Option<String>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason, logprobs: None }],
            usage: None,
            x_ccgate: None,
        }
    }
}

fn json_frame<T: serde::Serialize>(value: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_else(|_| "{}".into()))
}

fn role_frame(meta: &ChunkMeta) -> SseEvent {
    json_frame(
        &meta.chunk(Delta { role: Some("assistant"), content: Some(String::new()), tool_calls: None }, None),
    )
}

fn text_frame(meta: &ChunkMeta, text: String) -> SseEvent {
    json_frame(&meta.chunk(Delta { role: None, content: Some(text), tool_calls: None }, None))
}

fn tool_call_frame(meta: &ChunkMeta, delta: ToolCallDelta) -> SseEvent {
    json_frame(&meta.chunk(Delta { tool_calls: Some(vec![delta.into()]), ..Delta::default() }, None))
}

/// A tool use or result as a chunk plain OpenAI clients skip: an empty
/// delta, the activity in `x_ccgate.tool`.
fn tool_frame(meta: &ChunkMeta, activity: ToolActivity) -> SseEvent {
    let mut chunk = meta.chunk(Delta::default(), None);
    chunk.x_ccgate = Some(ChunkExtension::Tool { tool: activity });
    json_frame(&chunk)
}

fn tool_json(activity: &ToolActivity) -> serde_json::Value {
    serde_json::to_value(activity).unwrap_or_default()
}

fn error_frame(error: &ApiError) -> SseEvent {
    json_frame(&ErrorBody { error: error.to_object() })
}

fn done_frame() -> SseEvent {
    SseEvent::default().data("[DONE]")
}

fn closing_frames(meta: &ChunkMeta, outcome: Outcome, include_usage: bool) -> Vec<SseEvent> {
    if let Some(error) = &outcome.error {
        // The stream already said 200; the SDKs raise on an `error` object.
        return vec![error_frame(error), done_frame()];
    }
    let report = &outcome.report;
    let info = RunInfo {
        request_id: meta.request_id.clone(),
        cost_usd: outcome.cost.as_usd(),
        session_id: report.session_id.clone().filter(|_| meta.agentic),
        num_turns: meta.agentic.then_some(report.num_turns),
    };
    let mut last = meta.chunk(Delta::default(), Some(finish_reason(report.stop_reason.as_deref())));
    last.x_ccgate = Some(ChunkExtension::Run(info.clone()));
    let mut frames = vec![json_frame(&last)];
    if include_usage {
        let mut usage_chunk = meta.chunk(Delta::default(), None);
        usage_chunk.choices.clear();
        usage_chunk.usage = Some(Usage::from(outcome.report.usage));
        usage_chunk.x_ccgate = Some(ChunkExtension::Run(info));
        frames.push(json_frame(&usage_chunk));
    }
    frames.push(done_frame());
    frames
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}
