//! Anthropic's Messages wire format (`POST /v1/messages`), kept apart from
//! the domain types: requests map to `chat::Message`s, run reports map back
//! to a `message` object or its SSE events, and `ApiError`s to Anthropic's
//! error shape.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::chat::{Message, Role};
use crate::error::{ApiError, ErrorObject};
use crate::pricing::TokenUsage;
use crate::workers::RunReport;

#[derive(Debug, Deserialize, ToSchema)]
pub struct MessagesRequest {
    /// A Claude alias (`haiku`, `sonnet`, `opus`, `fable`, `sonnet[1m]`), a full model id, or `auto`.
    pub model: String,
    pub messages: Vec<InputMessage>,
    /// A string or an array of text blocks (`cache_control` is accepted and ignored).
    pub system: Option<Content>,
    /// Required, as in Anthropic's API.
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    /// The answer is cut at the first of these (by the gateway: the run
    /// itself goes on to its end and is billed in full).
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    /// Accepted and ignored (the CLI chooses its own sampling).
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Only an empty list: the CLI backend runs no client-side tools.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Accepted and ignored: no thinking blocks are returned.
    #[schema(value_type = Option<Object>)]
    pub thinking: Option<Value>,
    /// The project to charge (ccgate extension; the `X-Project-Id` header does the same).
    pub project_id: Option<String>,
    /// Newer Anthropic fields (`context_management`, `output_config`,
    /// `service_tier`…) are accepted and ignored.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InputMessage {
    /// `user` or `assistant`.
    pub role: String,
    pub content: Content,
}

/// Message content (and `system`): a string or a list of content blocks.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<ContentBlock>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentBlock {
    /// `text`; `thinking` blocks of earlier assistant turns are dropped;
    /// `image`, `document`, `tool_use` and `tool_result` are refused.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    /// `cache_control`, `citations` and the like: accepted and ignored.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: serde_json::Map<String, Value>,
}

impl MessagesRequest {
    /// Maps the wire request to domain messages (the system prompt first),
    /// refusing what the CLI backend cannot honour rather than dropping it.
    pub fn domain_messages(&self, max_messages: usize) -> Result<Vec<Message>, ApiError> {
        if self.max_tokens.is_none() {
            return Err(ApiError::bad_request("max_tokens: Field required", "max_tokens"));
        }
        self.conversation(max_messages)
    }

    /// The domain messages without the `max_tokens` rule (`count_tokens`
    /// takes no `max_tokens`).
    pub fn conversation(&self, max_messages: usize) -> Result<Vec<Message>, ApiError> {
        if self.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
            return Err(ApiError::bad_request(
                "client-side tools (`tools`) are not supported by the Claude Code CLI backend",
                "tools",
            ));
        }
        let forced = self.tool_choice.as_ref().and_then(|c| c.get("type")).and_then(Value::as_str);
        if matches!(forced, Some("any" | "tool")) {
            return Err(ApiError::bad_request(
                "tool_choice cannot require a tool: the Claude Code CLI backend runs no client-side tools",
                "tool_choice",
            ));
        }
        if self.messages.is_empty() {
            return Err(ApiError::bad_request("messages: at least one message is required", "messages"));
        }
        if self.messages.len() > max_messages {
            return Err(ApiError::bad_request(
                format!("too many messages: {} (at most {max_messages})", self.messages.len()),
                "messages",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        if let Some(system) = &self.system {
            let text = system_text(system)?;
            if !text.trim().is_empty() {
                messages.push(Message::new(Role::System, text));
            }
        }
        for (index, message) in self.messages.iter().enumerate() {
            messages.push(message.to_domain(index)?);
        }
        Ok(messages)
    }
}

fn system_text(system: &Content) -> Result<String, ApiError> {
    let blocks = match system {
        Content::Text(text) => return Ok(text.clone()),
        Content::Blocks(blocks) => blocks,
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        match (block.kind.as_str(), &block.text) {
            ("text", Some(text)) => parts.push(text.as_str()),
            (kind, _) => {
                return Err(ApiError::BadRequest {
                    message: format!("system[{i}]: only text blocks are allowed in `system`, not {kind:?}"),
                    param: Some(format!("system[{i}]")),
                    code: None,
                })
            }
        }
    }
    Ok(parts.join("\n"))
}

impl InputMessage {
    pub fn to_domain(&self, index: usize) -> Result<Message, ApiError> {
        let bad = |field: String, message: String| ApiError::BadRequest {
            message,
            param: Some(format!("messages[{index}]{field}")),
            code: None,
        };
        let role = match self.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(bad(
                    ".role".into(),
                    format!(
                        "messages[{index}].role {other:?} is not allowed: use user or assistant \
                         (the system prompt goes in the top-level `system` field)"
                    ),
                ))
            }
        };
        let text = match &self.content {
            Content::Text(text) => text.clone(),
            Content::Blocks(blocks) => {
                let mut parts = Vec::with_capacity(blocks.len());
                for (i, block) in blocks.iter().enumerate() {
                    let field = format!(".content[{i}]");
                    match (block.kind.as_str(), &block.text) {
                        ("text", Some(text)) => parts.push(text.as_str()),
                        ("text", None) => {
                            return Err(bad(
                                field.clone(),
                                format!("messages[{index}]{field}: a text block needs `text`"),
                            ))
                        }
                        // Earlier turns' reasoning: the CLI backend gets a
                        // transcript of what was said, not of how.
                        ("thinking" | "redacted_thinking", _) if role == Role::Assistant => {}
                        (kind, _) => {
                            return Err(bad(
                                field.clone(),
                                format!(
                                    "messages[{index}]{field}: {kind:?} blocks are not supported by the \
                                     Claude Code CLI backend (only text)"
                                ),
                            ))
                        }
                    }
                }
                parts.join("\n")
            }
        };
        if role == Role::User && text.trim().is_empty() {
            return Err(bad(".content".into(), format!("messages[{index}] is a user message with no text")));
        }
        Ok(Message::new(role, text))
    }
}

/// The `message` object of a non-streaming response (and, empty, of
/// `message_start`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageObject {
    /// `msg_` and the request id.
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `assistant`.
    pub role: String,
    pub model: String,
    pub content: Vec<TextBlock>,
    /// `end_turn`, `max_tokens`, `stop_sequence` or `refusal` (null in `message_start`).
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TextBlock {
    /// Always `text`.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl From<TokenUsage> for Usage {
    fn from(u: TokenUsage) -> Usage {
        Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_creation_input_tokens: u.cache_write_tokens,
            cache_read_input_tokens: u.cache_read_tokens,
        }
    }
}

pub fn message_id(request_id: &str) -> String {
    format!("msg_{request_id}")
}

pub fn text_block(text: String) -> TextBlock {
    TextBlock { kind: "text".into(), text }
}

impl MessageObject {
    /// A message with no content yet, as `message_start` carries it.
    pub fn started(request_id: &str, model: String) -> MessageObject {
        MessageObject {
            id: message_id(request_id),
            kind: "message".into(),
            role: "assistant".into(),
            model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: Usage::default(),
        }
    }

    /// The message for a finished run, under the model id the CLI reported
    /// (`fallback_model` if none).
    pub fn from_report(request_id: &str, fallback_model: &str, report: RunReport) -> MessageObject {
        let model = report.model.clone().unwrap_or_else(|| fallback_model.to_string());
        MessageObject {
            content: vec![text_block(report.text)],
            stop_reason: Some(stop_reason(report.stop_reason.as_deref()).into()),
            usage: Usage::from(report.usage),
            ..MessageObject::started(request_id, model)
        }
    }
}

/// The stop reason to report for the CLI's last upstream stop reason.
pub fn stop_reason(reported: Option<&str>) -> &'static str {
    match reported {
        Some("max_tokens") => "max_tokens",
        Some("stop_sequence") => "stop_sequence",
        Some("refusal") => "refusal",
        _ => "end_turn",
    }
}

/// One server-sent event of a streamed message; the SSE event name is its `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    MessageStart {
        message: MessageObject,
    },
    ContentBlockStart {
        index: u32,
        content_block: TextBlock,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: TextDelta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: MessageDelta,
        usage: Usage,
        /// ccgate extension: the run's cost and request id.
        x_ccgate: RunCost,
    },
    MessageStop,
    Error {
        error: AnthropicErrorObject,
    },
}

impl StreamEvent {
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::Ping => "ping",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Error { .. } => "error",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TextDelta {
    /// Always `text_delta`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct MessageDelta {
    pub stop_reason: &'static str,
    pub stop_sequence: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunCost {
    pub request_id: String,
    /// What the run cost, in USD.
    pub cost_usd: f64,
}

/// `POST /v1/messages/count_tokens` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenCount {
    /// The gateway's estimate of the input tokens (no tokenizer; see the README).
    pub input_tokens: u64,
}

/// Anthropic's error body: `{"type":"error","error":{"type","message"}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AnthropicErrorBody {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub error: AnthropicErrorObject,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnthropicErrorObject {
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `request_too_large`, `rate_limit_error`,
    /// `api_error`, `timeout_error` or `overloaded_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

impl AnthropicErrorBody {
    /// The Anthropic form of an error the gateway rendered with `status`.
    /// Anthropic's error types follow the status code, so this one mapping
    /// covers every `ApiError`.
    pub fn new(status: u16, error: &ErrorObject) -> AnthropicErrorBody {
        AnthropicErrorBody { kind: "error".into(), error: error_object(status, error.message.clone()) }
    }
}

pub fn error_object(status: u16, message: String) -> AnthropicErrorObject {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    AnthropicErrorObject { kind: kind.into(), message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> MessagesRequest {
        serde_json::from_value(body).expect("request")
    }

    #[test]
    fn claude_code_requests_map_to_a_system_prompt_and_the_user_text() {
        // The shape Claude Code sends (trimmed).
        let request = parse(json!({
            "model": "claude-opus-4-8",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\ncontext\n</system-reminder>\n"},
                {"type": "text", "text": "say hi\n", "cache_control": {"type": "ephemeral"}}
            ]}],
            "system": [
                {"type": "text", "text": "header"},
                {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}
            ],
            "tools": [],
            "metadata": {"user_id": "u"},
            "max_tokens": 64000,
            "thinking": {"type": "adaptive"},
            "context_management": {"edits": []},
            "output_config": {"effort": "high"},
            "stream": true
        }));
        let messages = request.domain_messages(10).expect("accepted");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0], Message::new(Role::System, "header\nYou are an agent."));
        assert_eq!(messages[1].role, Role::User);
        assert!(messages[1].text.ends_with("</system-reminder>\n\nsay hi\n"), "{}", messages[1].text);
    }

    /// An edit to a valid request body.
    type Change = fn(&mut Value);

    #[test]
    fn what_the_backend_cannot_honour_is_refused_with_its_place() {
        let base = |change: Change| {
            let mut body = json!({
                "model": "haiku",
                "max_tokens": 10,
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "a"}]},
                    {"role": "user", "content": "q2"}
                ]
            });
            change(&mut body);
            parse(body).domain_messages(10).err().and_then(|e| match e {
                ApiError::BadRequest { param, .. } => param,
                _ => None,
            })
        };
        assert_eq!(base(|_| {}), None, "thinking in an earlier assistant turn is dropped");
        let cases: [(Change, &str); 7] = [
            (|b| b["max_tokens"] = Value::Null, "max_tokens"),
            (|b| b["tools"] = json!([{"name": "x", "input_schema": {}}]), "tools"),
            (|b| b["tool_choice"] = json!({"type": "any"}), "tool_choice"),
            (
                |b| b["messages"][2]["content"] = json!([{"type": "image", "source": {}}]),
                "messages[2].content[0]",
            ),
            (
                |b| b["messages"][2]["content"] = json!([{"type": "tool_result", "tool_use_id": "t"}]),
                "messages[2].content[0]",
            ),
            (|b| b["messages"][0]["role"] = json!("system"), "messages[0].role"),
            (|b| b["system"] = json!([{"type": "image"}]), "system[0]"),
        ];
        for (change, param) in cases {
            assert_eq!(base(change).as_deref(), Some(param));
        }
    }

    #[test]
    fn error_types_follow_the_status_code() {
        let object = |status| error_object(status, String::new()).kind;
        let cases = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (408, "invalid_request_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "timeout_error"),
        ];
        for (status, kind) in cases {
            assert_eq!(object(status), kind, "{status}");
        }
    }

    #[test]
    fn reports_map_to_a_message_with_anthropic_usage() {
        let mut report = RunReport::new(crate::workers::RunEnd::Completed);
        report.text = "hello".into();
        report.stop_reason = Some("max_tokens".into());
        report.usage =
            TokenUsage { input_tokens: 3, output_tokens: 5, cache_read_tokens: 7, cache_write_tokens: 11 };
        let message = serde_json::to_value(MessageObject::from_report("r1", "claude-haiku", report)).unwrap();
        assert_eq!(
            message,
            json!({
                "id": "msg_r1", "type": "message", "role": "assistant", "model": "claude-haiku",
                "content": [{"type": "text", "text": "hello"}],
                "stop_reason": "max_tokens", "stop_sequence": null,
                "usage": {"input_tokens": 3, "output_tokens": 5,
                          "cache_creation_input_tokens": 11, "cache_read_input_tokens": 7}
            })
        );
    }
}
