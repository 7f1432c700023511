//! Anthropic's Messages responses: the `message` object, its content
//! blocks, the SSE events of a stream, usage, and the error shape.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::chat::{Thinking, ToolCall};
use crate::error::ErrorObject;
use crate::pricing::TokenUsage;
use crate::workers::RunReport;

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
    /// The text (when there is any, or nothing else), then the calls to
    /// the client's tools.
    pub content: Vec<OutputBlock>,
    /// `end_turn`, `max_tokens`, `stop_sequence`, `tool_use` or `refusal`
    /// (null in `message_start`).
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    pub usage: Usage,
}

/// A block of the answer: text, or a call to one of the client's tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputBlock {
    /// Extended thinking (direct backend), with the signature the API
    /// checks when it is handed back.
    Thinking {
        thinking: String,
        signature: String,
    },
    RedactedThinking {
        data: String,
    },
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        /// The call's arguments (`{}` when a streamed block starts).
        #[schema(value_type = Object)]
        input: Value,
    },
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

/// A tool call as a `tool_use` block.
pub fn tool_use_block(call: &ToolCall) -> OutputBlock {
    OutputBlock::ToolUse { id: call.id.clone(), name: call.name.clone(), input: call.input() }
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
        let stop_reason = stop_reason(&report);
        // Anthropic sends no empty text block before tool calls.
        let text = (!report.text.is_empty() || report.tool_calls.is_empty())
            .then_some(OutputBlock::Text { text: report.text });
        let calls = report.tool_calls.iter().map(tool_use_block);
        let thinking = report.thinking.iter().map(|t| match t {
            Thinking::Text { thinking, signature } => {
                OutputBlock::Thinking { thinking: thinking.clone(), signature: signature.clone() }
            }
            Thinking::Redacted { data } => OutputBlock::RedactedThinking { data: data.clone() },
        });
        MessageObject {
            content: thinking.chain(text).chain(calls).collect(),
            stop_reason: Some(stop_reason.into()),
            stop_sequence: report.stop_sequence.clone(),
            usage: Usage::from(report.usage),
            ..MessageObject::started(request_id, model)
        }
    }
}

/// The stop reason to report for the last upstream stop reason of a run.
/// `tool_use` only with calls to hand the client: an agent run (the CLI
/// backend) can end on a tool use of its own.
pub fn stop_reason(report: &RunReport) -> &'static str {
    match report.stop_reason.as_deref() {
        Some("max_tokens") => "max_tokens",
        Some("stop_sequence") => "stop_sequence",
        Some("refusal") => "refusal",
        Some("tool_use") if !report.tool_calls.is_empty() => "tool_use",
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
        content_block: OutputBlock,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
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

/// More of a block: text, or a piece of a tool call's input as JSON text.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    TextDelta { text: String },
    InputJsonDelta { partial_json: String },
    ThinkingDelta { thinking: String },
    SignatureDelta { signature: String },
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
