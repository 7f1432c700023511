//! OpenAI's chat-completion responses: the completion, its chunks when
//! streamed, usage, and the finish reason for an upstream stop reason.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::ToolCallWire;
use crate::chat::{ToolActivity, ToolCall, ToolCallDelta};
use crate::pricing::TokenUsage;
use crate::workers::RunReport;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
    pub system_fingerprint: Option<String>,
    /// ccgate extension on agentic runs: the session, turns and tool activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_ccgate: Option<AgentInfo>,
}

/// What an agentic run did, beside its text.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentInfo {
    /// Pass it as `session_id` to continue the conversation.
    pub session_id: Option<String>,
    pub num_turns: u64,
    /// Every tool use and tool result, in order (`type` is `use` or `result`).
    #[schema(value_type = Vec<Object>)]
    pub tool_uses: Vec<serde_json::Value>,
}

impl ChatCompletion {
    /// The completion for a finished run: its text, stop reason and usage,
    /// under the model id the CLI reported (`fallback_model` if none).
    pub fn from_report(
        request_id: &str,
        created: i64,
        fallback_model: &str,
        report: RunReport,
    ) -> ChatCompletion {
        ChatCompletion {
            id: format!("chatcmpl-{request_id}"),
            object: "chat.completion",
            created,
            model: report.model.clone().unwrap_or_else(|| fallback_model.to_string()),
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage::from_reply(report.text, report.tool_calls),
                finish_reason: finish_reason(report.stop_reason.as_deref()),
                logprobs: None,
            }],
            usage: Usage::from(report.usage),
            system_fingerprint: None,
            x_ccgate: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: String,
    pub logprobs: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
    /// Calls to the client's tools (then `finish_reason` is `tool_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallWire>,
}

impl AssistantMessage {
    pub fn from_reply(text: String, tool_calls: Vec<ToolCall>) -> AssistantMessage {
        AssistantMessage {
            role: "assistant".into(),
            content: text,
            tool_calls: tool_calls.into_iter().map(ToolCallWire::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl From<TokenUsage> for Usage {
    fn from(u: TokenUsage) -> Usage {
        let prompt = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens;
        Usage {
            prompt_tokens: prompt,
            completion_tokens: u.output_tokens,
            total_tokens: prompt + u.output_tokens,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// ccgate extension: the run's cost and request id on the last chunk;
    /// on an agent's tool chunks (whose `delta` is empty), `{"tool": …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub x_ccgate: Option<ChunkExtension>,
}

/// The `x_ccgate` object of a chunk.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ChunkExtension {
    Run(RunInfo),
    /// An agent used a tool or got its result.
    Tool {
        tool: ToolActivity,
    },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
    pub logprobs: Option<Value>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallChunk>>,
}

/// A piece of a tool call in a streamed chunk: the first piece of a call
/// has its id, type and name; later ones add to its arguments.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolCallChunk {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionChunk,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionChunk {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

impl From<ToolCallDelta> for ToolCallChunk {
    fn from(delta: ToolCallDelta) -> ToolCallChunk {
        ToolCallChunk {
            index: delta.index,
            kind: delta.id.is_some().then_some("function"),
            id: delta.id,
            function: FunctionChunk { name: delta.name, arguments: delta.arguments },
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunInfo {
    pub request_id: String,
    /// What the run cost, in USD (the CLI's `total_cost_usd`).
    pub cost_usd: f64,
    /// Agentic runs: the session to continue with `session_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Agentic runs: how many model turns the run took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<u64>,
}

/// OpenAI's finish reason for an Anthropic stop reason.
pub fn finish_reason(stop_reason: Option<&str>) -> String {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
    .to_string()
}
