//! `POST /v1/messages` (and `/v1/messages/count_tokens`): Anthropic's
//! Messages API in, a chat run, Anthropic out. Same keys, budgets, routing
//! and ledger as chat completions; errors in Anthropic's shape.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};

use super::anthropic::{
    self, AnthropicErrorBody, MessageDelta, MessageObject, MessagesRequest, RunCost, StreamEvent, TokenCount,
    Usage,
};
use super::extract::{Context, JsonBody};
use super::message_blocks::BlockWriter;
use crate::app::AppState;
use crate::chat::{self, ChatEvent, ChatRequest, Outcome, Running};
use crate::error::{ApiError, ErrorObject};

/// Creates a message, streamed or not (Anthropic's Messages API).
///
/// The run's cost comes back in the `x-ccgate-cost-usd` header (non-streaming)
/// or in `x_ccgate.cost_usd` of the `message_delta` event (streaming).
/// Errors use Anthropic's shape, `{"type":"error","error":{"type","message"}}`.
#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "messages",
    request_body = MessagesRequest,
    params(
        ("x-api-key" = Option<String>, Header, description = "The API key (or `Authorization: Bearer`)"),
        ("anthropic-version" = Option<String>, Header, description = "Accepted and ignored"),
        ("anthropic-beta" = Option<String>, Header, description = "Accepted and ignored"),
        ("X-Project-Id" = Option<String>, Header, description = "Project to charge (or `project_id` in the body)"),
    ),
    responses(
        (status = 200, description = "A message, or an SSE stream of message events when `stream` is true", body = MessageObject,
         headers(("x-ccgate-cost-usd" = String, description = "What the run cost, in USD"))),
        (status = 400, description = "Invalid request (`invalid_request_error`)", body = AnthropicErrorBody),
        (status = 401, description = "Missing or invalid key (`authentication_error`)", body = AnthropicErrorBody),
        (status = 404, description = "Unknown model (`not_found_error`)", body = AnthropicErrorBody),
        (status = 413, description = "Body too large (`request_too_large`)", body = AnthropicErrorBody),
        (status = 429, description = "Budget exhausted or rate limited (`rate_limit_error`)", body = AnthropicErrorBody),
        (status = 502, description = "The upstream API or the CLI failed (`api_error`)", body = AnthropicErrorBody),
        (status = 503, description = "Queue full (`overloaded_error`, with Retry-After) or CLI not installed", body = AnthropicErrorBody),
        (status = 504, description = "Deadline or stall timeout (`timeout_error`)", body = AnthropicErrorBody),
    )
)]
pub async fn create_message(
    State(state): State<AppState>,
    ctx: Context,
    body: Result<JsonBody<MessagesRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let (request, body) = super::chat::parsed(&state, &ctx, "/v1/messages", body, parse)?;
    let running = chat::start(&state, request).await?;
    let model = super::metrics::ModelLabel(running.model.id.clone());
    let route = super::chat::route_header(&running);
    let mut response = if body.stream {
        stream_response(ctx.request_id, running).await
    } else {
        complete_response(ctx.request_id, running).await
    }?;
    response.extensions_mut().insert(model);
    if let Some(route) = route {
        response.headers_mut().insert("x-ccgate-route", route);
    }
    Ok(response)
}

fn parse(
    state: &AppState,
    ctx: &Context,
    body: Result<JsonBody<MessagesRequest>, ApiError>,
    request: &mut ChatRequest,
) -> Result<MessagesRequest, ApiError> {
    let JsonBody(body) = body?;
    request.project_id = ctx.project(body.project_id.as_deref())?;
    request.model = body.model.clone();
    request.max_tokens = body.max_tokens;
    request.messages = body.domain_messages(state.settings.max_messages)?;
    request.tools = body.client_tools()?;
    request.stream = body.stream;
    request.sampling = body.sampling()?;
    request.thinking = body.thinking()?;
    request.output_schema = body.output_schema()?;
    Ok(body)
}

/// Counts a request's input tokens with the gateway's own estimate (no
/// tokenizer): the system prompt and message text, a few tokens of framing
/// per message, and an upper bound for images, tool calls, tool results
/// and tool definitions. A run's reported usage also includes the prompt
/// the CLI adds of its own, which this does not count.
#[utoipa::path(
    post,
    path = "/v1/messages/count_tokens",
    tag = "messages",
    request_body = MessagesRequest,
    responses(
        (status = 200, description = "The estimated input tokens", body = TokenCount),
        (status = 400, description = "Invalid request", body = AnthropicErrorBody),
        (status = 404, description = "Unknown model", body = AnthropicErrorBody),
    )
)]
pub async fn count_tokens(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<MessagesRequest>,
) -> Result<axum::Json<TokenCount>, ApiError> {
    let messages = body.conversation(state.settings.max_messages)?;
    let tools = body.client_tools()?;
    if !chat::is_auto(&body.model) {
        chat::resolve_model(&state, &body.model)?;
    }
    let text: u64 = messages.iter().map(|m| ccgate_router::estimate_tokens(&m.text)).sum();
    let framing = messages.len() as u64 * ccgate_router::MESSAGE_FRAMING_TOKENS;
    let content = chat::content::token_estimate(&messages, tools.as_ref());
    Ok(axum::Json(TokenCount { input_tokens: text + framing + content }))
}

/// Whether a path is served in Anthropic's format (its errors included).
pub fn is_anthropic_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// Renders every error of the Anthropic routes (the auth and rate-limit
/// middleware's, body-parse failures, unknown sub-paths) in Anthropic's
/// shape, keeping the status and headers `ApiError` chose.
pub async fn anthropic_errors(request: Request, next: Next) -> Response {
    if !is_anthropic_path(request.uri().path()) {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let Some(error) = response.extensions().get::<ErrorObject>().cloned() else { return response };
    let (mut parts, _) = response.into_parts();
    let body = AnthropicErrorBody::new(parts.status.as_u16(), &error);
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(bytes))
}

async fn complete_response(request_id: String, mut running: Running) -> Result<Response, ApiError> {
    // Text is also collected in the report.
    let Some(outcome) = running.outcome().await else {
        return Err(ApiError::internal("the run ended without an outcome"));
    };
    if let Some(error) = outcome.error {
        return Err(error);
    }
    let body = MessageObject::from_report(&request_id, &running.model.id, outcome.report);
    let mut headers = HeaderMap::new();
    if let Ok(cost) = HeaderValue::from_str(&format!("{:.6}", outcome.cost.as_usd())) {
        headers.insert("x-ccgate-cost-usd", cost);
    }
    Ok((headers, axum::Json(body)).into_response())
}

/// Streams Anthropic's event sequence as the worker produces text and
/// tool calls. As for chat completions, the HTTP status is decided when the
/// first of them arrives, so a run that fails before saying anything gets an
/// error status.
async fn stream_response(request_id: String, mut running: Running) -> Result<Response, ApiError> {
    let mut blocks = BlockWriter::new();
    let mut head = vec![StreamEvent::MessageStart {
        message: MessageObject::started(&request_id, running.model.id.clone()),
    }];
    match running.next_event().await {
        Some(ChatEvent::Done(outcome)) => {
            if let Some(error) = outcome.error {
                return Err(error);
            }
            head.extend(closing_events(&request_id, *outcome, &mut blocks));
            return Ok(sse(stream::iter(head)));
        }
        Some(event) => head.extend(content_events(&mut blocks, event)),
        None => return Err(ApiError::internal("the run ended without an outcome")),
    }
    let tail = stream::unfold(Some((running, blocks)), move |state| {
        let request_id = request_id.clone();
        async move {
            let (mut running, mut blocks) = state?;
            match running.next_event().await {
                Some(ChatEvent::Done(outcome)) => {
                    Some((closing_events(&request_id, *outcome, &mut blocks), None))
                }
                Some(event) => Some((content_events(&mut blocks, event), Some((running, blocks)))),
                None => {
                    Some((vec![error_event(&ApiError::internal("the run ended without an outcome"))], None))
                }
            }
        }
    })
    .flat_map(stream::iter);
    Ok(sse(stream::iter(head).chain(tail)))
}

/// The events for text or a piece of a tool call (`Done` is the caller's).
fn content_events(blocks: &mut BlockWriter, event: ChatEvent) -> Vec<StreamEvent> {
    match event {
        ChatEvent::Text(text) => blocks.text(text),
        ChatEvent::ToolCall(delta) => blocks.tool_call(delta),
        ChatEvent::Thinking(piece) => blocks.thinking(piece),
        // An agent's own tool activity: no agent runs on this endpoint.
        ChatEvent::Tool(_) | ChatEvent::Done(_) => Vec::new(),
    }
}

fn sse(events: impl Stream<Item = StreamEvent> + Send + 'static) -> Response {
    let frames = events.map(|event| {
        let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".into());
        Ok::<_, Infallible>(SseEvent::default().event(event.name()).data(data))
    });
    Sse::new(frames).into_response()
}

fn error_event(error: &ApiError) -> StreamEvent {
    let object = error.to_object();
    StreamEvent::Error { error: anthropic::error_object(error.status().as_u16(), object.message) }
}

fn closing_events(request_id: &str, outcome: Outcome, blocks: &mut BlockWriter) -> Vec<StreamEvent> {
    if let Some(error) = &outcome.error {
        // The stream already said 200: Anthropic's clients raise on an
        // `error` event, and nothing follows it.
        return vec![error_event(error)];
    }
    let report = outcome.report;
    let mut events = blocks.finish();
    let stop_reason = anthropic::stop_reason(&report);
    events.extend([
        StreamEvent::MessageDelta {
            delta: MessageDelta { stop_reason, stop_sequence: report.stop_sequence.clone() },
            usage: Usage::from(report.usage),
            x_ccgate: RunCost { request_id: request_id.to_string(), cost_usd: outcome.cost.as_usd() },
        },
        StreamEvent::MessageStop,
    ]);
    events
}
