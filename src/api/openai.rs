//! OpenAI's chat-completion wire format, kept apart from the domain types.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::chat::{AgentOptions, Message, Role, ToolActivity};
use crate::error::ApiError;
use crate::pricing::TokenUsage;
use crate::workers::RunReport;

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A Claude alias (`haiku`, `sonnet`, `opus`, `fable`, `sonnet[1m]`) or a full model id.
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub n: Option<u32>,
    #[schema(value_type = Option<Object>)]
    pub tools: Option<Value>,
    /// The project to charge (ccgate extension; the `X-Project-Id` header does the same).
    pub project_id: Option<String>,
    /// Agent extension: where Claude Code works (inside the project's agent
    /// policy's `allowed_roots`). Any agent field makes the request agentic.
    pub working_directory: Option<String>,
    /// Agent extension: tools in the CLI's syntax (`Read`, `Bash(git *)`),
    /// each allowed by the policy; default: the policy's `allowed_tools`.
    pub allowed_tools: Option<Vec<String>>,
    /// Agent extension: the most model turns (at most the policy's).
    pub max_turns: Option<u32>,
    /// Agent extension: continue this session (from an earlier response's
    /// `x_ccgate.session_id`); only the newest user message is sent.
    pub session_id: Option<String>,
    /// Agent extension: the most the run may cost, in USD (at most the
    /// policy's `max_task_usd`).
    pub max_budget_usd: Option<f64>,
    /// Other OpenAI fields (temperature, top_p, stop, user…) are accepted and ignored.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub tool_calls: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl ChatCompletionRequest {
    /// The agent options, when any agent field is present.
    pub fn agent_options(&self) -> Option<AgentOptions> {
        let options = AgentOptions {
            working_directory: self.working_directory.clone(),
            allowed_tools: self.allowed_tools.clone(),
            max_turns: self.max_turns,
            session_id: self.session_id.clone(),
            max_budget_usd: self.max_budget_usd,
        };
        (options != AgentOptions::default()).then_some(options)
    }

    pub fn max_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Maps the wire messages to domain messages, refusing what the CLI
    /// backend cannot carry rather than dropping it.
    pub fn domain_messages(&self, max_messages: usize) -> Result<Vec<Message>, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("only n = 1 is supported", "n"));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(ApiError::bad_request(
                "client-side tool calling (`tools`) is not supported by the Claude Code CLI backend",
                "tools",
            ));
        }
        if self.messages.is_empty() {
            return Err(ApiError::bad_request("messages must not be empty", "messages"));
        }
        if self.messages.len() > max_messages {
            return Err(ApiError::bad_request(
                format!("too many messages: {} (at most {max_messages})", self.messages.len()),
                "messages",
            ));
        }
        self.messages.iter().enumerate().map(|(i, m)| m.to_domain(i)).collect()
    }
}

impl ChatMessage {
    pub fn to_domain(&self, index: usize) -> Result<Message, ApiError> {
        let param = |field: &str| Some(format!("messages[{index}].{field}"));
        let role = match self.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::BadRequest {
                    message: format!(
                        "messages[{index}].role {other:?} is not supported here: use system, developer, user or assistant"
                    ),
                    param: param("role"),
                    code: None,
                })
            }
        };
        if self.tool_calls.is_some() {
            return Err(ApiError::BadRequest {
                message: "tool_calls in messages are not supported by the Claude Code CLI backend".into(),
                param: param("tool_calls"),
                code: None,
            });
        }
        let text = match &self.content {
            None => String::new(),
            Some(MessageContent::Text(text)) => text.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(t)) => {
                            if !text.is_empty() {
                                text.push('\n');
                            }
                            text.push_str(t);
                        }
                        ("text", None) => {
                            return Err(ApiError::BadRequest {
                                message: format!("messages[{index}].content: a text part needs `text`"),
                                param: param("content"),
                                code: None,
                            })
                        }
                        (kind, _) => {
                            return Err(ApiError::BadRequest {
                                message: format!(
                                    "messages[{index}].content: {kind:?} parts are not supported by the Claude Code CLI backend"
                                ),
                                param: param("content"),
                                code: None,
                            })
                        }
                    }
                }
                text
            }
        };
        if role == Role::User && text.trim().is_empty() {
            return Err(ApiError::BadRequest {
                message: format!("messages[{index}] is a user message with no text"),
                param: param("content"),
                code: None,
            });
        }
        Ok(Message { role, text })
    }
}

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
                message: AssistantMessage { role: "assistant".into(), content: report.text },
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
