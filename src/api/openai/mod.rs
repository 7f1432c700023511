//! OpenAI's chat-completion wire format, kept apart from the domain types:
//! the request and its mapping to the domain here, the responses in
//! `response`.

mod response;

pub use response::*;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::chat::{
    AgentOptions, ClientTools, Image, Message, Role, Sampling, ToolCall, ToolChoice, ToolResult, ToolSpec,
};
use crate::error::ApiError;

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A Claude alias (`haiku`, `sonnet`, `opus`, `fable`, `sonnet[1m]`), a full model id, a
    /// name the gateway's `model_aliases` setting adds, or `auto` (the default).
    pub model: Option<String>,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u64>,
    /// Only 1.
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
    /// Client-side tools (`[{type: "function", function: {name, description, parameters}}]`);
    /// direct (`api`) backend only.
    #[schema(value_type = Option<Vec<ToolShape>>)]
    pub tools: Option<Value>,
    /// `auto`, `none`, `required` or `{type: "function", function: {name}}`.
    #[schema(value_type = Option<ToolChoiceShape>)]
    pub tool_choice: Option<Value>,
    /// The project to charge (ccgate extension; the `X-Project-Id` header does the same).
    pub project_id: Option<String>,
    /// Agent extension: where Claude Code works (inside the project's agent
    /// policy's `allowed_roots`). Any agent field makes the request agentic.
    pub working_directory: Option<String>,
    /// Agent extension: tools in the CLI's syntax (`Read`, `Bash(git *)`),
    /// each allowed by the policy; default: the policy's `allowed_tools`.
    pub allowed_tools: Option<Vec<String>>,
    /// Agent extension: the most model turns (at most the policy's).
    #[schema(minimum = 1)]
    pub max_turns: Option<u32>,
    /// Agent extension: continue this session (from an earlier response's
    /// `x_ccgate.session_id`); only the newest user message is sent.
    pub session_id: Option<String>,
    /// Agent extension: the most the run may cost, in USD (at most the
    /// policy's `max_task_usd`).
    #[schema(exclusive_minimum = 0)]
    pub max_budget_usd: Option<f64>,
    /// Sampling temperature, 0 to 2 as in OpenAI's API; the direct backend
    /// sends it to Claude capped at 1 (Anthropic's range). The CLI backend
    /// chooses its own sampling.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    /// Nucleus sampling (direct backend only).
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// Up to 4 sequences (or one string) the answer ends before: the direct
    /// backend stops the model there; on the CLI backend the gateway cuts
    /// the answer (the run is billed in full).
    #[schema(value_type = Option<StopShape>)]
    pub stop: Option<Value>,
    /// `none`/`minimal` (no thinking), `low`, `medium` or `high`: Claude's
    /// extended thinking with a budget of 1,024, 4,096 or 16,384 tokens
    /// (less than `max_tokens`), on both backends; the thinking itself is
    /// not returned. Absent, the backend's default.
    #[schema(pattern = "^(none|minimal|low|medium|high)$")]
    pub reasoning_effort: Option<String>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type":
    /// "json_schema", "json_schema": {"name": …, "schema": {…}}}`.
    pub response_format: Option<Value>,
    /// Other OpenAI fields (`user`, `seed`, `presence_penalty`…) are accepted and ignored.
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
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    #[schema(pattern = "^(system|developer|user|assistant|tool)$")]
    pub role: String,
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    /// An assistant message's calls to the client's tools.
    pub tool_calls: Option<Vec<ToolCallWire>>,
    /// Which call a `tool` message answers.
    pub tool_call_id: Option<String>,
}

/// A tool call as OpenAI writes it, in requests and responses.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolCallWire {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text.
    #[serde(default)]
    pub arguments: String,
}

fn function_kind() -> String {
    "function".into()
}

impl From<ToolCall> for ToolCallWire {
    fn from(call: ToolCall) -> ToolCallWire {
        ToolCallWire {
            id: call.id,
            kind: function_kind(),
            function: FunctionCall { name: call.name, arguments: call.arguments },
        }
    }
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
    /// For `image_url` parts: a `data:` URL (`data:image/png;base64,…`).
    pub image_url: Option<ImageUrl>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ImageUrl {
    pub url: String,
    /// Accepted and ignored.
    pub detail: Option<String>,
}

// The shapes of `tools`, `tool_choice` and `stop` as the OpenAPI document
// shows them. The request keeps those fields as JSON and reads them itself
// (`client_tools`, `sampling`), so a wrong one gets a message that names
// what is wrong rather than serde's "did not match any variant".

/// A client tool.
#[derive(Deserialize, ToSchema)]
pub struct ToolShape {
    /// Always `function`.
    #[serde(rename = "type")]
    #[schema(pattern = "^function$")]
    pub kind: String,
    pub function: FunctionShape,
}

#[derive(Deserialize, ToSchema)]
pub struct FunctionShape {
    #[schema(min_length = 1)]
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema object for the arguments (default: none).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// Hold the model to `parameters` exactly (direct backend).
    pub strict: Option<bool>,
}

/// `auto`, `none` or `required`, or one tool by name.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoiceShape {
    /// `auto`, `none` or `required`.
    Mode(String),
    Named(NamedToolShape),
}

#[derive(Deserialize, ToSchema)]
pub struct NamedToolShape {
    /// Always `function`.
    #[serde(rename = "type")]
    #[schema(pattern = "^function$")]
    pub kind: String,
    pub function: ToolNameShape,
}

#[derive(Deserialize, ToSchema)]
pub struct ToolNameShape {
    pub name: String,
}

/// One stop sequence, or a list of up to four.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopShape {
    One(String),
    Many(Vec<String>),
}

/// OpenAI's `temperature` (0 to 2, taken down to Anthropic's 1), `top_p`
/// and stop sequences in Anthropic's terms, checked and naming OpenAI's
/// fields (chat completions and the Responses API).
pub fn sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Vec<String>,
) -> Result<Sampling, ApiError> {
    if let Some(t) = temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(ApiError::bad_request(
            format!("temperature must be between 0 and 2, not {t}"),
            "temperature",
        ));
    }
    let sampling = Sampling { temperature: temperature.map(|t| t.min(1.0)), top_p, top_k: None, stop };
    sampling.check().map_err(|(field, message)| {
        ApiError::bad_request(message, if field == "stop_sequences" { "stop" } else { field })
    })?;
    Ok(sampling)
}

/// The most stop sequences OpenAI's API takes.
const MAX_STOP: usize = 4;

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

    /// `reasoning_effort` as Anthropic's `thinking` setting.
    pub fn thinking(&self) -> Result<Option<Value>, ApiError> {
        let budget: u64 = match self.reasoning_effort.as_deref() {
            None => return Ok(None),
            Some("none" | "minimal") => return Ok(Some(serde_json::json!({"type": "disabled"}))),
            Some("low") => 1024,
            Some("medium") => 4096,
            Some("high") => 16384,
            Some(other) => {
                return Err(ApiError::bad_request(
                    format!("reasoning_effort must be none, minimal, low, medium or high, not {other:?}"),
                    "reasoning_effort",
                ))
            }
        };
        // The budget must stay under the output cap, and the API takes none
        // under 1,024 tokens.
        let budget = self.max_tokens().map_or(budget, |max| budget.min(max.saturating_sub(1)));
        Ok(Some(if budget < 1024 {
            serde_json::json!({"type": "disabled"})
        } else {
            serde_json::json!({"type": "enabled", "budget_tokens": budget})
        }))
    }

    /// The schema of `response_format` `json_schema`. `json_object` asks
    /// for none: Anthropic's API has no JSON mode, and OpenAI's requires
    /// the messages to ask for JSON themselves, which is what the model
    /// then follows.
    pub fn output_schema(&self) -> Result<Option<Value>, ApiError> {
        let Some(format) = &self.response_format else { return Ok(None) };
        match format.get("type").and_then(Value::as_str) {
            Some("text" | "json_object") => Ok(None),
            Some("json_schema") => match format.pointer("/json_schema/schema") {
                Some(schema @ Value::Object(_)) => Ok(Some(schema.clone())),
                _ => Err(ApiError::bad_request(
                    "response_format.json_schema.schema must be a JSON Schema object",
                    "response_format.json_schema.schema",
                )),
            },
            _ => Err(ApiError::bad_request(
                "response_format.type must be text, json_object or json_schema",
                "response_format.type",
            )),
        }
    }

    /// Sampling and stop sequences in Anthropic's terms, checked.
    pub fn sampling(&self) -> Result<Sampling, ApiError> {
        let stop = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(list)) if list.len() <= MAX_STOP => {
                list.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>().ok_or_else(
                    || ApiError::bad_request("stop must be a string or a list of strings", "stop"),
                )?
            }
            Some(Value::Array(_)) => {
                return Err(ApiError::bad_request(format!("stop takes at most {MAX_STOP} sequences"), "stop"))
            }
            Some(_) => {
                return Err(ApiError::bad_request("stop must be a string or a list of strings", "stop"))
            }
        };
        sampling(self.temperature, self.top_p, stop)
    }

    /// Maps the wire messages to domain messages, refusing what cannot be
    /// carried rather than dropping it. Consecutive `tool` messages become
    /// one user turn of tool results.
    pub fn domain_messages(&self, max_messages: usize) -> Result<Vec<Message>, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("only n = 1 is supported", "n"));
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
        let mut messages: Vec<Message> = Vec::with_capacity(self.messages.len());
        for (i, wire) in self.messages.iter().enumerate() {
            let message = wire.to_domain(i)?;
            match messages.last_mut() {
                Some(last)
                    if wire.role == "tool" && !last.tool_results.is_empty() && last.text.is_empty() =>
                {
                    last.tool_results.extend(message.tool_results);
                }
                _ => messages.push(message),
            }
        }
        Ok(messages)
    }

    /// The client's tools, if the request offers any (an empty list is none).
    pub fn client_tools(&self) -> Result<Option<ClientTools>, ApiError> {
        let choice = match &self.tool_choice {
            None | Some(Value::Null) => None,
            Some(value) => Some(tool_choice(value)?),
        };
        let tools = match &self.tools {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(tools)) => {
                tools.iter().enumerate().map(|(i, t)| tool_spec(i, t)).collect::<Result<_, _>>()?
            }
            Some(_) => return Err(ApiError::bad_request("tools must be a list of functions", "tools")),
        };
        if tools.is_empty() {
            if matches!(choice, Some(ToolChoice::Required | ToolChoice::Named(_))) {
                return Err(ApiError::bad_request(
                    "tool_choice names a tool but `tools` is empty",
                    "tool_choice",
                ));
            }
            return Ok(None);
        }
        if let Some(ToolChoice::Named(name)) = &choice {
            if !tools.iter().any(|t: &ToolSpec| &t.name == name) {
                return Err(ApiError::bad_request(
                    format!("tool_choice names {name:?}, which is not in `tools`"),
                    "tool_choice",
                ));
            }
        }
        Ok(Some(ClientTools { tools, choice }))
    }
}

fn tool_spec(index: usize, tool: &Value) -> Result<ToolSpec, ApiError> {
    let bad = |message: &str| ApiError::BadRequest {
        message: format!("tools[{index}]: {message}"),
        param: Some(format!("tools[{index}]")),
        code: None,
    };
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(bad("only tools of type \"function\" are supported"));
    }
    let function = tool.get("function").ok_or_else(|| bad("a function tool needs `function`"))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("a function needs a `name`"))?;
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(p) if p.is_object() => p.clone(),
        Some(_) => return Err(bad("`parameters` must be a JSON schema object")),
    };
    Ok(ToolSpec {
        cache: None,
        name: name.to_string(),
        description: function.get("description").and_then(Value::as_str).map(String::from),
        parameters,
        strict: function.get("strict").and_then(Value::as_bool).unwrap_or(false),
    })
}

fn tool_choice(value: &Value) -> Result<ToolChoice, ApiError> {
    let named = value
        .get("function")
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .filter(|_| value.get("type").and_then(Value::as_str) == Some("function"));
    match (value.as_str(), named) {
        (Some("auto"), _) => Ok(ToolChoice::Auto),
        (Some("none"), _) => Ok(ToolChoice::None),
        (Some("required"), _) => Ok(ToolChoice::Required),
        (None, Some(name)) => Ok(ToolChoice::Named(name.to_string())),
        _ => Err(ApiError::bad_request(
            "tool_choice must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": …}}",
            "tool_choice",
        )),
    }
}

impl ChatMessage {
    pub fn to_domain(&self, index: usize) -> Result<Message, ApiError> {
        let param = |field: &str| Some(format!("messages[{index}].{field}"));
        let bad =
            |message: String, field: &str| ApiError::BadRequest { message, param: param(field), code: None };
        let role = match self.role.as_str() {
            "system" | "developer" => Role::System,
            // A tool's result goes back to the model in a user turn.
            "user" | "tool" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(bad(
                    format!(
                        "messages[{index}].role {other:?} is not supported here: use system, developer, user, assistant or tool"
                    ),
                    "role",
                ))
            }
        };
        let tool_calls: Vec<ToolCall> = match (&self.tool_calls, role) {
            (None, _) => Vec::new(),
            (Some(calls), Role::Assistant) => calls
                .iter()
                .map(|c| ToolCall {
                    id: c.id.clone(),
                    name: c.function.name.clone(),
                    arguments: c.function.arguments.clone(),
                })
                .collect(),
            (Some(_), _) => {
                return Err(bad(
                    format!("messages[{index}]: only assistant messages carry tool_calls"),
                    "tool_calls",
                ))
            }
        };
        let mut images = Vec::new();
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
                            return Err(bad(
                                format!("messages[{index}].content: a text part needs `text`"),
                                "content",
                            ))
                        }
                        ("image_url", _) if role == Role::User && self.role == "user" => {
                            let Some(image) = &part.image_url else {
                                return Err(bad(
                                    format!(
                                        "messages[{index}].content: an image_url part needs `image_url.url`"
                                    ),
                                    "content",
                                ));
                            };
                            let image = Image::from_data_url(&image.url)
                                .map_err(|e| bad(format!("messages[{index}].content: {e}"), "content"))?;
                            images.push(image);
                        }
                        ("image_url", _) => {
                            return Err(bad(
                                format!("messages[{index}].content: only user messages may carry images"),
                                "content",
                            ))
                        }
                        (kind, _) => {
                            return Err(bad(
                                format!("messages[{index}].content: {kind:?} parts are not supported"),
                                "content",
                            ))
                        }
                    }
                }
                text
            }
        };
        if self.role == "tool" {
            let Some(id) = self.tool_call_id.clone().filter(|id| !id.is_empty()) else {
                return Err(bad(
                    format!("messages[{index}]: a tool message needs `tool_call_id`"),
                    "tool_call_id",
                ));
            };
            let mut message = Message::new(Role::User, String::new());
            message.tool_results.push(ToolResult::text(id, text));
            return Ok(message);
        }
        if role == Role::User && text.trim().is_empty() && images.is_empty() {
            return Err(bad(format!("messages[{index}] is a user message with no text"), "content"));
        }
        let mut message = Message::new(role, text);
        message.images = images;
        message.tool_calls = tool_calls;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatCompletionRequest {
        serde_json::from_value(body).expect("a valid request")
    }

    #[test]
    fn sampling_takes_openai_ranges_and_a_stop_string_or_list() {
        let sampling = |extra: Value| {
            let mut body =
                serde_json::json!({"model": "haiku", "messages": [{"role": "user", "content": "hi"}]});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            request(body).sampling().map_err(|e| e.to_object().param)
        };
        assert_eq!(sampling(serde_json::json!({})), Ok(Sampling::default()));
        let got = sampling(serde_json::json!({"temperature": 1.6, "top_p": 0.9, "stop": "END"})).unwrap();
        assert_eq!(got.temperature, Some(1.0), "OpenAI's 0-2 is capped at Claude's 1");
        assert_eq!((got.top_p, got.stop), (Some(0.9), vec!["END".to_string()]));
        assert_eq!(sampling(serde_json::json!({"stop": ["a", "b"]})).unwrap().stop, ["a", "b"]);
        assert_eq!(sampling(serde_json::json!({"stop": null})).unwrap().stop, Vec::<String>::new());
        for (bad, field) in [
            (serde_json::json!({"temperature": 2.5}), "temperature"),
            (serde_json::json!({"temperature": -1}), "temperature"),
            (serde_json::json!({"top_p": 1.5}), "top_p"),
            (serde_json::json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (serde_json::json!({"stop": [1]}), "stop"),
            (serde_json::json!({"stop": {"x": 1}}), "stop"),
            (serde_json::json!({"stop": [""]}), "stop"),
        ] {
            assert_eq!(sampling(bad.clone()), Err(Some(field.to_string())), "{bad}");
        }
    }

    #[test]
    fn reasoning_effort_becomes_a_thinking_budget_under_the_cap() {
        let thinking = |effort: &str, max: Option<u64>| {
            let mut body = serde_json::json!({"model": "haiku", "reasoning_effort": effort,
                                              "messages": [{"role": "user", "content": "hi"}]});
            if let Some(max) = max {
                body["max_tokens"] = serde_json::json!(max);
            }
            request(body).thinking().map_err(|e| e.to_object().param)
        };
        let enabled = |n: u64| Ok(Some(serde_json::json!({"type": "enabled", "budget_tokens": n})));
        let disabled = Ok(Some(serde_json::json!({"type": "disabled"})));
        assert_eq!(thinking("minimal", None), disabled);
        assert_eq!(thinking("none", Some(5000)), disabled);
        assert_eq!(thinking("low", None), enabled(1024));
        assert_eq!(thinking("medium", Some(8000)), enabled(4096));
        assert_eq!(thinking("high", Some(8000)), enabled(7999));
        assert_eq!(thinking("low", Some(1000)), disabled, "no budget fits under a small cap");
        assert_eq!(thinking("extreme", None), Err(Some("reasoning_effort".to_string())));
    }

    #[test]
    fn tool_messages_in_a_row_make_one_turn_of_results() {
        let body = request(serde_json::json!({"model": "haiku", "messages": [
            {"role": "user", "content": "weather in Paris and Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Oslo\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "rain"}]},
            {"role": "user", "content": "thanks"},
        ]}));
        let messages = body.domain_messages(100).unwrap();
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[1].role, Role::Assistant);
        assert_eq!(messages[1].tool_calls.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["c1", "c2"]);
        assert_eq!(messages[2].role, Role::User);
        assert_eq!(
            messages[2].tool_results,
            [ToolResult::text("c1", "sunny"), ToolResult::text("c2", "rain"),]
        );
        assert_eq!(messages[3], Message::new(Role::User, "thanks"));
    }

    #[test]
    fn image_parts_become_images_of_user_messages_only() {
        let image =
            serde_json::json!({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}});
        let body = request(serde_json::json!({"model": "haiku", "messages": [
            {"role": "user", "content": [image, {"type": "text", "text": "what is it?"}]},
        ]}));
        let messages = body.domain_messages(10).unwrap();
        assert_eq!(messages[0].text, "what is it?");
        assert_eq!(messages[0].images.len(), 1);
        assert_eq!(messages[0].images[0].media_type, "image/jpeg");
        let only_image = request(serde_json::json!({"model": "haiku", "messages": [
            {"role": "user", "content": [image]},
        ]}));
        assert_eq!(
            only_image.domain_messages(10).unwrap()[0].images.len(),
            1,
            "an image alone is a question"
        );
        for role in ["assistant", "system"] {
            let body = request(serde_json::json!({"model": "haiku", "messages": [
                {"role": role, "content": [image]}, {"role": "user", "content": "hi"},
            ]}));
            assert!(body.domain_messages(10).is_err(), "{role}");
        }
    }

    #[test]
    fn tool_choices_are_read() {
        let tools = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
        let cases = [
            (serde_json::json!("auto"), ToolChoice::Auto),
            (serde_json::json!("none"), ToolChoice::None),
            (serde_json::json!("required"), ToolChoice::Required),
            (
                serde_json::json!({"type": "function", "function": {"name": "f"}}),
                ToolChoice::Named("f".into()),
            ),
        ];
        for (choice, expected) in cases {
            let body = request(
                serde_json::json!({"model": "haiku", "messages": [], "tools": tools, "tool_choice": choice}),
            );
            let parsed = body.client_tools().unwrap().unwrap();
            assert_eq!(parsed.choice, Some(expected));
            assert_eq!(parsed.tools[0].parameters, serde_json::json!({"type": "object", "properties": {}}));
        }
        let none = request(serde_json::json!({"model": "haiku", "messages": [], "tools": []}));
        assert_eq!(none.client_tools().unwrap(), None, "an empty list offers no tools");
    }
}
