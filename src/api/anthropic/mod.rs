//! Anthropic's Messages wire format (`POST /v1/messages`), kept apart from
//! the domain types: requests map to `chat::Message`s here; run reports map
//! back to a `message` object or its SSE events, and `ApiError`s to
//! Anthropic's error shape, in `response`.

mod response;

pub use response::*;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::anthropic_content::{self, Piece};
use crate::chat::{ClientTools, Message, Role, Sampling};
use crate::error::ApiError;

#[derive(Debug, Deserialize, ToSchema)]
pub struct MessagesRequest {
    /// A Claude alias (`haiku`, `sonnet`, `opus`, `fable`, `sonnet[1m]`), a full model id, or `auto`.
    #[schema(min_length = 1)]
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<InputMessage>,
    /// A string or an array of text blocks (their last `cache_control` goes to
    /// the direct backend at the end of the system prompt).
    pub system: Option<Content>,
    /// Required, as in Anthropic's API.
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    /// The answer ends before the first of these. The direct backend passes
    /// them to the API; on the CLI backend the gateway cuts the answer (the
    /// run itself goes on to its end and is billed in full).
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    /// Sampling (0 to 1), passed to the direct backend; the CLI backend
    /// chooses its own sampling and ignores these.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Client tools (`name`, `description`, `input_schema`), which the client
    /// runs itself; direct (`api`) backend only. Anthropic's server tools
    /// (`web_search_20250305`, `bash_20250124`…) are refused.
    #[schema(value_type = Option<Vec<AnthropicToolShape>>)]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `any`, `tool` (with `name`) or `none`;
    /// `disable_parallel_tool_use` is accepted and ignored.
    #[schema(value_type = Option<AnthropicToolChoiceShape>)]
    pub tool_choice: Option<Value>,
    /// Extended thinking (`{"type": "enabled", "budget_tokens": N}`,
    /// `adaptive` or `disabled`), passed to the direct backend, whose
    /// `thinking` blocks come back; the CLI backend ignores it.
    #[schema(value_type = Option<ThinkingShape>)]
    pub thinking: Option<Value>,
    /// Structured output: `{"format": {"type": "json_schema", "schema":
    /// {…}}}` makes the answer's text an instance of the schema (both
    /// backends). Its other fields are ignored.
    #[schema(value_type = Option<OutputConfigShape>)]
    pub output_config: Option<Value>,
    /// The project to charge (ccgate extension; the `X-Project-Id` header does the same).
    pub project_id: Option<String>,
    /// Newer Anthropic fields (`context_management`, `service_tier`…) are
    /// accepted and ignored.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: serde_json::Map<String, Value>,
}

// The shapes of `tools`, `tool_choice`, `thinking` and `output_config` as
// the OpenAPI document shows them; the request reads those fields as JSON
// itself (`client_tools`, `thinking`, `output_schema`), so a wrong one gets
// a message that names what is wrong.

/// A client tool, which the client runs itself.
#[derive(Deserialize, ToSchema)]
pub struct AnthropicToolShape {
    #[schema(min_length = 1)]
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema object for the tool's input.
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// `custom` or absent; server tools (`web_search_20250305`…) are refused.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// A prompt-cache breakpoint after the tools (direct backend).
    #[schema(value_type = Option<Object>)]
    pub cache_control: Option<Value>,
    /// Hold the model to `input_schema` exactly (direct backend).
    pub strict: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub struct AnthropicToolChoiceShape {
    /// `auto`, `any`, `tool` (with `name`) or `none`.
    #[serde(rename = "type")]
    #[schema(pattern = "^(auto|any|tool|none)$")]
    pub kind: String,
    /// The tool, for `tool`.
    pub name: Option<String>,
    /// Accepted and ignored.
    pub disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub struct ThinkingShape {
    /// `enabled`, `adaptive` or `disabled`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `enabled`: the most tokens of thinking (at least 1,024, less than `max_tokens`).
    pub budget_tokens: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
pub struct OutputConfigShape {
    pub format: Option<OutputFormatShape>,
}

/// The answer's text is an instance of `schema`.
#[derive(Deserialize, ToSchema)]
pub struct OutputFormatShape {
    /// `json_schema`.
    #[serde(rename = "type")]
    #[schema(pattern = "^json_schema$")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub schema: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InputMessage {
    /// `user` or `assistant`.
    #[schema(pattern = "^(user|assistant)$")]
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
    /// `text`; `image` and `tool_result` in user turns; `tool_use` in
    /// assistant turns (images and tools need the direct backend, except an
    /// image in the last user turn); `thinking` blocks of earlier assistant
    /// turns are dropped; `document` and other types are refused.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    /// `image`: `{"type": "base64", "media_type", "data"}` (the gateway fetches no URL).
    #[schema(value_type = Option<Object>)]
    pub source: Option<Value>,
    /// `tool_use`: the call's id.
    pub id: Option<String>,
    /// `tool_use`: the tool called.
    pub name: Option<String>,
    /// `tool_use`: the call's arguments, an object.
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// `tool_result`: the call it answers.
    pub tool_use_id: Option<String>,
    /// `tool_result`: a string, or a list of text and image blocks.
    #[schema(value_type = Option<Object>)]
    pub content: Option<Value>,
    /// `tool_result`: the tool failed (passed on to the model).
    pub is_error: Option<bool>,
    /// `thinking`: the reasoning, and the signature the API gave it.
    pub thinking: Option<String>,
    pub signature: Option<String>,
    /// `redacted_thinking`: its opaque data.
    pub data: Option<String>,
    /// `cache_control`: the turn's last one becomes a prompt-cache breakpoint
    /// at the end of the turn on the direct backend (text blocks are joined).
    /// `citations` and the like: accepted and ignored.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: serde_json::Map<String, Value>,
}

impl MessagesRequest {
    /// Maps the wire request to domain messages (the system prompt first),
    /// refusing what cannot be honoured rather than dropping it.
    pub fn domain_messages(&self, max_messages: usize) -> Result<Vec<Message>, ApiError> {
        if self.max_tokens.is_none() {
            return Err(ApiError::bad_request("max_tokens: Field required", "max_tokens"));
        }
        self.conversation(max_messages)
    }

    /// The domain messages without the `max_tokens` rule (`count_tokens`
    /// takes no `max_tokens`).
    pub fn conversation(&self, max_messages: usize) -> Result<Vec<Message>, ApiError> {
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
                let mut message = Message::new(Role::System, text);
                message.cache = last_cache_control(system);
                messages.push(message);
            }
        }
        for (index, message) in self.messages.iter().enumerate() {
            messages.push(message.to_domain(index)?);
        }
        Ok(messages)
    }

    /// The client's tools, if the request offers any (an empty list is
    /// none). Whether the model's backend can run them is checked later.
    pub fn client_tools(&self) -> Result<Option<ClientTools>, ApiError> {
        anthropic_content::client_tools(self.tools.as_deref(), self.tool_choice.as_ref())
    }

    /// The `thinking` setting, an object with a `type` (its other fields are
    /// the API's to check).
    pub fn thinking(&self) -> Result<Option<Value>, ApiError> {
        match &self.thinking {
            None | Some(Value::Null) => Ok(None),
            Some(value) if value.get("type").is_some_and(Value::is_string) => Ok(Some(value.clone())),
            Some(_) => Err(ApiError::bad_request(
                "thinking must be an object with a `type` (\"enabled\", \"adaptive\" or \"disabled\")",
                "thinking",
            )),
        }
    }

    /// The schema of `output_config.format`, when it asks for one.
    pub fn output_schema(&self) -> Result<Option<Value>, ApiError> {
        let Some(format) = self.output_config.as_ref().and_then(|c| c.get("format")) else { return Ok(None) };
        match (format.get("type").and_then(Value::as_str), format.get("schema")) {
            (Some("json_schema"), Some(schema @ Value::Object(_))) => Ok(Some(schema.clone())),
            _ => Err(ApiError::bad_request(
                "output_config.format must be {\"type\": \"json_schema\", \"schema\": {…}}",
                "output_config.format",
            )),
        }
    }

    /// Sampling and stop sequences, checked against the API's ranges.
    pub fn sampling(&self) -> Result<Sampling, ApiError> {
        let sampling = Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            stop: self.stop_sequences.clone(),
        };
        sampling.check().map_err(|(field, message)| ApiError::bad_request(message, field))?;
        Ok(sampling)
    }
}

/// The `cache_control` of the last block that has one: a prompt-cache
/// breakpoint, kept for the end of the joined text (the direct backend
/// sends it there; the prefix before it is the same).
fn last_cache_control(content: &Content) -> Option<Value> {
    match content {
        Content::Text(_) => None,
        Content::Blocks(blocks) => blocks.iter().rev().find_map(|b| b.other.get("cache_control").cloned()),
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
        let mut message = Message::new(role, String::new());
        match &self.content {
            Content::Text(text) => message.text = text.clone(),
            Content::Blocks(blocks) => {
                let mut texts = Vec::with_capacity(blocks.len());
                for (i, block) in blocks.iter().enumerate() {
                    match anthropic_content::piece(block, role, &format!("messages[{index}].content[{i}]"))? {
                        Piece::Text(text) => texts.push(text),
                        Piece::Image(image) => message.images.push(image),
                        Piece::Call(call) => message.tool_calls.push(call),
                        Piece::Result(result) => message.tool_results.push(result),
                        Piece::Thinking(thinking) => message.thinking.push(thinking),
                        Piece::Dropped => {}
                    }
                }
                message.text = texts.join("\n");
            }
        }
        message.cache = last_cache_control(&self.content);
        let says_nothing =
            message.text.trim().is_empty() && message.images.is_empty() && message.tool_results.is_empty();
        if role == Role::User && says_nothing {
            return Err(bad(
                ".content".into(),
                format!("messages[{index}] is a user message with no content"),
            ));
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ToolCall;
    use crate::pricing::TokenUsage;
    use crate::workers::RunReport;
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
        let mut system = Message::new(Role::System, "header\nYou are an agent.");
        system.cache = Some(json!({"type": "ephemeral"}));
        assert_eq!(messages[0], system, "the cache breakpoint is kept for the end of the system prompt");
        assert_eq!(messages[1].role, Role::User);
        assert!(messages[1].text.ends_with("</system-reminder>\n\nsay hi\n"), "{}", messages[1].text);
        assert_eq!(messages[1].cache, Some(json!({"type": "ephemeral"})));
    }

    /// An edit to a valid request body.
    type Change = fn(&mut Value);

    #[test]
    fn what_cannot_be_honoured_is_refused_with_its_place() {
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
            let request = parse(body);
            request.domain_messages(10).and(request.client_tools()).err().and_then(|e| match e {
                ApiError::BadRequest { param, .. } => param,
                _ => None,
            })
        };
        assert_eq!(base(|_| {}), None, "unsigned thinking in an earlier assistant turn is dropped");
        let cases: [(Change, &str); 11] = [
            (|b| b["max_tokens"] = Value::Null, "max_tokens"),
            (|b| b["tools"] = json!([{"type": "web_search_20250305", "name": "web_search"}]), "tools[0]"),
            (|b| b["tool_choice"] = json!({"type": "any"}), "tool_choice"),
            (
                |b| b["messages"][2]["content"] = json!([{"type": "image", "source": {}}]),
                "messages[2].content[0].source",
            ),
            (
                |b| b["messages"][2]["content"] = json!([{"type": "text", "text": "x"}, {"type": "video"}]),
                "messages[2].content[1]",
            ),
            (
                |b| b["messages"][2]["content"] = json!([{"type": "tool_result", "content": "42"}]),
                "messages[2].content[0]",
            ),
            (
                |b| b["messages"][2]["content"] = json!([{"type": "document", "source": {}}]),
                "messages[2].content[0]",
            ),
            (
                |b| b["messages"][0]["content"] = json!([{"type": "tool_use", "id": "t", "name": "x"}]),
                "messages[0].content[0]",
            ),
            (|b| b["messages"][2]["content"] = json!([]), "messages[2].content"),
            (|b| b["messages"][0]["role"] = json!("system"), "messages[0].role"),
            (|b| b["system"] = json!([{"type": "image"}]), "system[0]"),
        ];
        for (change, param) in cases {
            assert_eq!(base(change).as_deref(), Some(param));
        }
    }

    #[test]
    fn a_tool_round_trip_maps_to_calls_results_and_images() {
        let png = "iVBORw0KGgo=";
        let request = parse(json!({
            "model": "haiku",
            "max_tokens": 100,
            "tools": [{"name": "Read", "description": "Reads a file", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
                    {"type": "text", "text": "read /a"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "gone", "is_error": true},
                    {"type": "text", "text": "<system-reminder>x</system-reminder>"}
                ]}
            ]
        }));
        let messages = request.domain_messages(10).expect("accepted");
        assert_eq!(messages.len(), 3);
        assert_eq!((messages[0].text.as_str(), messages[0].images.len()), ("read /a", 1));
        assert_eq!(messages[1].text, "Reading.");
        assert_eq!(
            messages[1].tool_calls,
            [ToolCall {
                id: "toolu_1".into(),
                name: "Read".into(),
                arguments: r#"{"file_path":"/a"}"#.into()
            }]
        );
        let result = &messages[2].tool_results[0];
        assert_eq!(
            (result.tool_call_id.as_str(), result.content.as_str(), result.is_error),
            ("toolu_1", "gone", true)
        );
        assert_eq!(messages[2].text, "<system-reminder>x</system-reminder>");
        let tools = request.client_tools().expect("accepted").expect("tools");
        assert_eq!(tools.tools[0].name, "Read");
        assert_eq!(tools.choice, Some(crate::chat::ToolChoice::Auto));
    }

    #[test]
    fn tool_calls_come_back_as_tool_use_blocks_after_any_text() {
        let report_with = |text: &str| {
            let mut report = RunReport::new(crate::workers::RunEnd::Completed);
            report.text = text.into();
            report.stop_reason = Some("tool_use".into());
            report.tool_calls = vec![
                ToolCall {
                    id: "toolu_1".into(),
                    name: "Read".into(),
                    arguments: r#"{"file_path":"/a"}"#.into(),
                },
                ToolCall { id: "toolu_2".into(), name: "Now".into(), arguments: "{}".into() },
            ];
            report
        };
        let calls = [
            json!({"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a"}}),
            json!({"type": "tool_use", "id": "toolu_2", "name": "Now", "input": {}}),
        ];
        let message =
            serde_json::to_value(MessageObject::from_report("r", "m", report_with("Reading."))).unwrap();
        assert_eq!(message["content"], json!([{"type": "text", "text": "Reading."}, calls[0], calls[1]]));
        assert_eq!(message["stop_reason"], "tool_use");
        let message = serde_json::to_value(MessageObject::from_report("r", "m", report_with(""))).unwrap();
        assert_eq!(message["content"], json!(calls), "no empty text block before the calls");

        // Without calls to hand over, a run that stopped on a tool use of
        // its own (an agent's) ended its turn as far as the client knows.
        let mut report = report_with("");
        report.tool_calls.clear();
        assert_eq!(stop_reason(&report), "end_turn");
        let message = serde_json::to_value(MessageObject::from_report("r", "m", report)).unwrap();
        assert_eq!(message["content"], json!([{"type": "text", "text": ""}]));
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
        report.usage = TokenUsage {
            input_tokens: 3,
            output_tokens: 5,
            cache_read_tokens: 7,
            cache_write_tokens: 11,
            ..TokenUsage::default()
        };
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
