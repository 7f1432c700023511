//! `POST /v1/responses`: OpenAI's Responses API for text, on the same chat
//! flow (keys, budgets, routing, ledger) as chat completions. The gateway
//! keeps no responses, so `previous_response_id` and `conversation` are
//! refused; so are tools and input that is not text, which chat
//! completions carry.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::extract::{Context, JsonBody};
use crate::app::AppState;
use crate::chat::{self, ChatEvent, ChatRequest, Message, Outcome, Role, Running};
use crate::error::{ApiError, ErrorBody};
use crate::pricing::TokenUsage;
use crate::workers::RunReport;

const ENDPOINT: &str = "/v1/responses";

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResponseRequest {
    /// As for chat completions: an alias, an id, or `auto` (the default).
    pub model: Option<String>,
    /// One user message as a string, or a list of messages (`role` `user`,
    /// `assistant`, `system` or `developer`; `content` a string or
    /// `input_text`/`output_text` parts).
    #[schema(value_type = InputShape)]
    pub input: Value,
    /// The system prompt, before any system message of `input`.
    pub instructions: Option<String>,
    /// Caps the output and the budget reservation.
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<u64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stream: bool,
    /// `{"format": {"type": "text"}}` or `{"format": {"type": "json_schema",
    /// "name": …, "schema": {…}}}` (structured output, as `response_format`).
    pub text: Option<Value>,
    /// Refused when not empty: use `/v1/chat/completions` for tools.
    #[schema(value_type = Option<Vec<Object>>, max_items = 0)]
    pub tools: Option<Value>,
    /// Refused: the gateway keeps no responses to continue from.
    #[schema(value_type = Option<String>)]
    pub previous_response_id: Option<Value>,
    /// Refused: the gateway keeps no conversations.
    #[schema(value_type = Option<Object>)]
    pub conversation: Option<Value>,
    /// ccgate extension: the project to charge (or `X-Project-Id`).
    pub project_id: Option<String>,
    /// Other fields (`store`, `metadata`, `user`, `truncation`…) are accepted and ignored.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: serde_json::Map<String, Value>,
}

/// A string, or a list of messages.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum InputShape {
    Text(String),
    Messages(Vec<InputMessageShape>),
}

#[derive(Deserialize, ToSchema)]
pub struct InputMessageShape {
    /// `message` (or absent).
    #[serde(rename = "type")]
    #[schema(pattern = "^message$")]
    pub kind: Option<String>,
    #[schema(pattern = "^(user|assistant|system|developer)$")]
    pub role: String,
    /// A string, or parts `{"type": "input_text" | "output_text", "text": …}`.
    #[schema(value_type = Object)]
    pub content: Value,
}

/// A response object: what the Responses API returns, and what its stream's
/// `response.*` events carry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseObject {
    pub id: String,
    /// `response`
    pub object: &'static str,
    pub created_at: i64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: &'static str,
    pub model: String,
    pub output: Vec<OutputMessage>,
    pub usage: Option<ResponseUsage>,
    /// `{"reason": "max_output_tokens"}` when the output was cut at its cap.
    #[schema(value_type = Option<Object>)]
    pub incomplete_details: Option<Value>,
    /// `{"code", "message"}` of a failed response (streams only).
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub parallel_tool_calls: bool,
    pub tool_choice: &'static str,
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    /// ccgate extension: the request id and what the run cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_ccgate: Option<ResponseCost>,
}

/// One server-sent event of a streamed response, as OpenAPI 3.2 describes
/// an event stream's items.
#[derive(Serialize, ToSchema)]
pub struct ResponseSseEvent {
    /// The event's name: its data's `type`.
    #[schema(pattern = "^response[.]")]
    pub event: String,
    /// A `ResponseEvent` (in this document's schemas) as JSON.
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

/// The data of one event of a streamed response; the SSE event's name is
/// its `type`. Events that open or end the response carry it; the text
/// comes in `response.output_text.delta` events' `delta`.
#[derive(Serialize, ToSchema)]
pub struct ResponseEvent {
    /// `response.created`, `response.in_progress`, `response.output_item.added`,
    /// `response.content_part.added`, `response.output_text.delta`,
    /// `response.output_text.done`, `response.content_part.done`,
    /// `response.output_item.done`, then `response.completed`,
    /// `response.incomplete` or `response.failed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// 0, 1, 2… in the order sent.
    pub sequence_number: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseObject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseCost {
    pub request_id: String,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputMessage {
    /// `message`
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub status: &'static str,
    /// `assistant`
    pub role: &'static str,
    pub content: Vec<OutputText>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutputText {
    /// `output_text`
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseUsage {
    /// All input, cached or not.
    pub input_tokens: u64,
    #[schema(value_type = Object)]
    pub input_tokens_details: Value,
    pub output_tokens: u64,
    #[schema(value_type = Object)]
    pub output_tokens_details: Value,
    pub total_tokens: u64,
}

impl From<&TokenUsage> for ResponseUsage {
    fn from(u: &TokenUsage) -> ResponseUsage {
        let input = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens;
        ResponseUsage {
            input_tokens: input,
            input_tokens_details: json!({"cached_tokens": u.cache_read_tokens}),
            output_tokens: u.output_tokens,
            output_tokens_details: json!({"reasoning_tokens": 0}),
            total_tokens: input + u.output_tokens,
        }
    }
}

/// Creates a response, streamed or not.
///
/// Text in, text out, on the same keys, budgets, routing and ledger as chat
/// completions (the ledger's endpoint is `/v1/responses`). Streamed, it
/// sends the Responses API's events (`response.created`,
/// `response.output_text.delta`… `response.completed`). The run's cost
/// comes back in `x-ccgate-cost-usd` (whole responses) and in
/// `x_ccgate.cost_usd` of the final response.
#[utoipa::path(
    post,
    path = "/v1/responses",
    tag = "chat",
    request_body = ResponseRequest,
    params(("X-Project-Id" = Option<String>, Header, description = "Project to charge (or `project_id` in the body)")),
    responses(
        (status = 200, description = "A response, or an SSE stream of response events when `stream` is true",
         content((ResponseObject = "application/json"), (ResponseSseEvent = "text/event-stream")),
         headers(("x-ccgate-cost-usd" = String, description = "What the run cost, in USD"),
                 ("x-ccgate-model" = String, description = "The model that answered"))),
        (status = 400, description = "Invalid request, or a field the gateway does not carry here", body = ErrorBody),
        (status = 404, description = "Unknown model or project", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Budget exhausted (`insufficient_quota`) or upstream rate limit", body = ErrorBody),
        (status = 502, description = "The upstream API or the CLI failed", body = ErrorBody),
        (status = 503, description = "Queue full (with Retry-After) or CLI not installed", body = ErrorBody),
        (status = 504, description = "Deadline or stall timeout", body = ErrorBody),
    )
)]
pub async fn create_response(
    State(state): State<AppState>,
    ctx: Context,
    body: Result<JsonBody<ResponseRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let (request, body) = super::chat::parsed(&state, &ctx, ENDPOINT, body, parse)?;
    let running = chat::start(&state, request).await?;
    let answering = running.answering.clone();
    let route = super::chat::route_header(&running);
    let mut response = if body.stream {
        stream_response(&ctx.request_id, &body, running).await
    } else {
        whole_response(&ctx.request_id, &body, running).await
    }
    .into_response();
    super::chat::answered_by(&mut response, answering.borrow().id.clone(), route);
    Ok(response)
}

fn parse(
    state: &AppState,
    ctx: &Context,
    body: Result<JsonBody<ResponseRequest>, ApiError>,
    request: &mut ChatRequest,
) -> Result<ResponseRequest, ApiError> {
    let JsonBody(body) = body?;
    request.project_id = ctx.project(body.project_id.as_deref())?;
    if body.previous_response_id.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request(
            "previous_response_id is not supported: the gateway keeps no responses; send the conversation in `input`",
            "previous_response_id",
        ));
    }
    if body.conversation.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request(
            "conversation is not supported: the gateway keeps no conversations; send them in `input`",
            "conversation",
        ));
    }
    if body.tools.as_ref().is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|t| !t.is_empty())) {
        return Err(ApiError::bad_request(
            "tools are not supported on /v1/responses; use /v1/chat/completions for tool calling",
            "tools",
        ));
    }
    request.model = body.model.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| "auto".into());
    request.max_tokens = body.max_output_tokens;
    if body.max_output_tokens == Some(0) {
        return Err(ApiError::bad_request("max_output_tokens must be at least 1", "max_output_tokens"));
    }
    request.messages = messages(&body, state.settings.max_messages)?;
    request.stream = body.stream;
    request.sampling = super::openai::sampling(body.temperature, body.top_p, Vec::new())?;
    request.output_schema = output_schema(body.text.as_ref())?;
    Ok(body)
}

/// `instructions`, then `input`, as domain messages.
fn messages(body: &ResponseRequest, max_messages: usize) -> Result<Vec<Message>, ApiError> {
    let mut messages = Vec::new();
    if let Some(instructions) = body.instructions.as_deref().filter(|i| !i.trim().is_empty()) {
        messages.push(Message::new(Role::System, instructions));
    }
    match &body.input {
        Value::String(text) if !text.trim().is_empty() => {
            messages.push(Message::new(Role::User, text.clone()))
        }
        Value::String(_) => return Err(ApiError::bad_request("input must not be empty", "input")),
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::bad_request("input must not be empty", "input"))
        }
        Value::Array(items) if items.len() > max_messages => {
            return Err(ApiError::bad_request(
                format!("too many input items: {} (at most {max_messages})", items.len()),
                "input",
            ))
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                messages.push(input_message(i, item)?);
            }
        }
        _ => return Err(ApiError::bad_request("input must be a string or a list of messages", "input")),
    }
    Ok(messages)
}

fn input_message(index: usize, item: &Value) -> Result<Message, ApiError> {
    let bad = |message: String, field: &str| ApiError::BadRequest {
        message,
        param: Some(if field.is_empty() {
            format!("input[{index}]")
        } else {
            format!("input[{index}].{field}")
        }),
        code: None,
    };
    let Some(item) = item.as_object() else {
        return Err(bad(format!("input[{index}] must be a message object"), ""));
    };
    match item.get("type").and_then(Value::as_str) {
        None | Some("message") => {}
        Some(other) => {
            return Err(bad(
                format!(
                    "input[{index}] is a {other:?} item, which /v1/responses does not carry; \
                     only messages (use /v1/chat/completions for tools)"
                ),
                "type",
            ))
        }
    }
    let role = match item.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system" | "developer") => Role::System,
        _ => {
            return Err(bad(
                format!("input[{index}].role must be user, assistant, system or developer"),
                "role",
            ))
        }
    };
    let text = match item.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("input_text" | "output_text" | "text"), Some(piece)) => text.push_str(piece),
                    (kind, _) => {
                        return Err(bad(
                            format!(
                                "input[{index}].content[{j}] ({}) is not text; /v1/responses carries \
                                 input_text and output_text parts (images go to /v1/chat/completions)",
                                kind.unwrap_or("no type")
                            ),
                            &format!("content[{j}]"),
                        ))
                    }
                }
            }
            text
        }
        _ => {
            return Err(bad(format!("input[{index}].content must be a string or a list of parts"), "content"))
        }
    };
    if role == Role::User && text.trim().is_empty() {
        return Err(bad(format!("input[{index}] is a user message with no text"), "content"));
    }
    Ok(Message::new(role, text))
}

/// The schema of `text.format` `json_schema`, if asked for.
fn output_schema(text: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.filter(|t| !t.is_null()).and_then(|t| t.get("format")) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text" | "json_object") => Ok(None),
        Some("json_schema") => match format.get("schema") {
            Some(schema @ Value::Object(_)) => Ok(Some(schema.clone())),
            _ => Err(ApiError::bad_request(
                "text.format.schema must be a JSON Schema object",
                "text.format.schema",
            )),
        },
        _ => Err(ApiError::bad_request(
            "text.format.type must be text, json_object or json_schema",
            "text.format.type",
        )),
    }
}

/// What every response object of one request shares.
struct Shell {
    id: String,
    message_id: String,
    request_id: String,
    created_at: i64,
    model: String,
    instructions: Option<String>,
    max_output_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
}

impl Shell {
    fn new(request_id: &str, model: String, body: &ResponseRequest) -> Shell {
        Shell {
            id: format!("resp_{request_id}"),
            message_id: format!("msg_{request_id}"),
            request_id: request_id.to_string(),
            created_at: chrono::Utc::now().timestamp(),
            model,
            instructions: body.instructions.clone(),
            max_output_tokens: body.max_output_tokens,
            temperature: body.temperature,
            top_p: body.top_p,
        }
    }

    fn object(&self, status: &'static str, output: Vec<OutputMessage>) -> ResponseObject {
        ResponseObject {
            id: self.id.clone(),
            object: "response",
            created_at: self.created_at,
            status,
            model: self.model.clone(),
            output,
            usage: None,
            incomplete_details: None,
            error: None,
            instructions: self.instructions.clone(),
            max_output_tokens: self.max_output_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            parallel_tool_calls: false,
            tool_choice: "auto",
            tools: Vec::new(),
            x_ccgate: None,
        }
    }

    fn message(&self, status: &'static str, text: Option<String>) -> OutputMessage {
        OutputMessage {
            kind: "message",
            id: self.message_id.clone(),
            status,
            role: "assistant",
            content: text.map(output_text).into_iter().collect(),
        }
    }

    /// The finished response of a run that succeeded.
    fn finished(&self, outcome: &Outcome) -> ResponseObject {
        let report: &RunReport = &outcome.report;
        let cut = report.stop_reason.as_deref() == Some("max_tokens");
        let status = if cut { "incomplete" } else { "completed" };
        let mut object = self.object(status, vec![self.message(status, Some(report.text.clone()))]);
        object.model = report.model.clone().unwrap_or_else(|| self.model.clone());
        object.usage = Some(ResponseUsage::from(&report.usage));
        object.incomplete_details = cut.then(|| json!({"reason": "max_output_tokens"}));
        object.x_ccgate =
            Some(ResponseCost { request_id: self.request_id.clone(), cost_usd: outcome.cost.as_usd() });
        object
    }
}

fn output_text(text: String) -> OutputText {
    OutputText { kind: "output_text", text, annotations: Vec::new() }
}

async fn whole_response(
    request_id: &str,
    body: &ResponseRequest,
    mut running: Running,
) -> Result<Response, ApiError> {
    // The report holds the whole text.
    let Some(outcome) = running.outcome().await else {
        return Err(ApiError::internal("the run ended without an outcome"));
    };
    let shell = Shell::new(request_id, running.answering_model().id, body);
    if let Some(error) = outcome.error {
        return Err(error);
    }
    let mut headers = HeaderMap::new();
    if let Ok(cost) = HeaderValue::from_str(&format!("{:.6}", outcome.cost.as_usd())) {
        headers.insert("x-ccgate-cost-usd", cost);
    }
    Ok((headers, axum::Json(shell.finished(&outcome))).into_response())
}

/// The Responses API's event stream. As for chat completions, a run that
/// fails before its first text gets an error status, not a stream.
async fn stream_response(
    request_id: &str,
    body: &ResponseRequest,
    mut running: Running,
) -> Result<Response, ApiError> {
    let first = loop {
        match running.next_event().await {
            Some(ChatEvent::Text(text)) => break text,
            Some(ChatEvent::ToolCall(_) | ChatEvent::Thinking(_) | ChatEvent::Tool(_)) => continue,
            Some(ChatEvent::Done(outcome)) => {
                if let Some(error) = outcome.error {
                    return Err(error);
                }
                let mut events = Events::new(Shell::new(request_id, running.answering_model().id, body));
                let frames =
                    events.opening().into_iter().chain(events.closing(Some(*outcome))).collect::<Vec<_>>();
                return Ok(sse(stream::iter(frames)));
            }
            None => return Err(ApiError::internal("the run ended without an outcome")),
        }
    };
    // Known by now: a fallback is chosen before the first text.
    let mut events = Events::new(Shell::new(request_id, running.answering_model().id, body));
    let mut head = events.opening();
    head.push(events.delta(first));
    let tail = stream::unfold(Some((running, events)), |state| async move {
        let (mut running, mut events) = state?;
        match running.next_event().await {
            Some(ChatEvent::Text(text)) => {
                let frame = events.delta(text);
                Some((vec![frame], Some((running, events))))
            }
            Some(ChatEvent::ToolCall(_) | ChatEvent::Thinking(_) | ChatEvent::Tool(_)) => {
                Some((Vec::new(), Some((running, events))))
            }
            Some(ChatEvent::Done(outcome)) => Some((events.closing(Some(*outcome)), None)),
            None => Some((events.closing(None), None)),
        }
    })
    .flat_map(stream::iter);
    Ok(sse(stream::iter(head).chain(tail)))
}

fn sse(frames: impl futures::Stream<Item = SseEvent> + Send + 'static) -> Response {
    Sse::new(frames.map(Ok::<_, Infallible>)).into_response()
}

/// The events of one streamed response, numbered in order.
struct Events {
    shell: Shell,
    sequence: u64,
    text: String,
}

impl Events {
    fn new(shell: Shell) -> Events {
        Events { shell, sequence: 0, text: String::new() }
    }

    fn event(&mut self, kind: &str, mut data: Value) -> SseEvent {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        SseEvent::default().event(kind).data(data.to_string())
    }

    /// The response and its one message, opened.
    fn opening(&mut self) -> Vec<SseEvent> {
        let open = self.shell.object("in_progress", Vec::new());
        let item = self.shell.message("in_progress", None);
        let (id, part) = (self.shell.message_id.clone(), output_text(String::new()));
        vec![
            self.event("response.created", json!({"response": open})),
            self.event("response.in_progress", json!({"response": open})),
            self.event("response.output_item.added", json!({"output_index": 0, "item": item})),
            self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "part": part}),
            ),
        ]
    }

    fn delta(&mut self, text: String) -> SseEvent {
        self.text.push_str(&text);
        let id = self.shell.message_id.clone();
        self.event(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": []}),
        )
    }

    /// The text, part and message closed, then the response completed,
    /// incomplete (cut at its cap) or failed.
    fn closing(&mut self, outcome: Option<Outcome>) -> Vec<SseEvent> {
        let id = self.shell.message_id.clone();
        let finished = match &outcome {
            Some(outcome) if outcome.error.is_none() => Ok(self.shell.finished(outcome)),
            Some(outcome) => Err(outcome.error.as_ref().map(ApiError::to_object)),
            None => Err(None),
        };
        let status = match &finished {
            Ok(response) => response.status,
            Err(_) => "incomplete",
        };
        let text = self.text.clone();
        let mut frames = vec![
            self.event(
                "response.output_text.done",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            ),
            self.event(
                "response.content_part.done",
                json!({"item_id": id, "output_index": 0, "content_index": 0, "part": output_text(text.clone())}),
            ),
            self.event(
                "response.output_item.done",
                json!({"output_index": 0, "item": self.shell.message(status, Some(text.clone()))}),
            ),
        ];
        frames.push(match finished {
            Ok(response) => {
                let kind = if response.status == "incomplete" {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                self.event(kind, json!({"response": response}))
            }
            Err(error) => {
                let (code, message) = match error {
                    Some(error) => (error.code.unwrap_or(error.kind).to_string(), error.message),
                    None => ("server_error".to_string(), "the run ended without an outcome".to_string()),
                };
                let mut failed =
                    self.shell.object("failed", vec![self.shell.message("incomplete", Some(text))]);
                failed.error = Some(json!({"code": code, "message": message}));
                self.event("response.failed", json!({"response": failed}))
            }
        });
        frames
    }
}
