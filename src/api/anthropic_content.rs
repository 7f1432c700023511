//! Anthropic's content blocks and client tools in domain terms: `text`,
//! `image`, `tool_use`, `tool_result` and signed `thinking` blocks become a
//! message's text, images, tool calls, tool results and thinking; `tools`
//! and `tool_choice` become `ClientTools`. Whether the model's backend can
//! carry them is decided later, in `chat::plan`.

use serde_json::Value;

use super::anthropic::ContentBlock;
use crate::chat::{ClientTools, Image, Role, Thinking, ToolCall, ToolChoice, ToolResult, ToolSpec};
use crate::error::ApiError;

/// A 400 naming the field at `place` (such as `messages[3].content[1]`).
fn bad(place: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest {
        message: format!("{place}: {message}"),
        param: Some(place.to_string()),
        code: None,
    }
}

/// What one content block adds to its message.
#[derive(Debug, PartialEq)]
pub enum Piece<'a> {
    Text(&'a str),
    Image(Image),
    Call(ToolCall),
    Result(ToolResult),
    /// An assistant turn's reasoning, handed back to the direct backend.
    Thinking(Thinking),
    /// Thinking without a signature: the API would refuse it back, and the
    /// model needs what was said, not how.
    Dropped,
}

/// Reads one block of a message from `role`; `place` names it in errors.
pub fn piece<'a>(block: &'a ContentBlock, role: Role, place: &str) -> Result<Piece<'a>, ApiError> {
    let in_user_turns = |kind: &str| bad(place, format!("{kind:?} blocks belong in user messages"));
    match (block.kind.as_str(), role) {
        ("text", _) => match &block.text {
            Some(text) => Ok(Piece::Text(text)),
            None => Err(bad(place, "a text block needs `text`")),
        },
        ("thinking", Role::Assistant) => match (&block.thinking, &block.signature) {
            (Some(thinking), Some(signature)) => Ok(Piece::Thinking(Thinking::Text {
                thinking: thinking.clone(),
                signature: signature.clone(),
            })),
            _ => Ok(Piece::Dropped),
        },
        ("redacted_thinking", Role::Assistant) => match &block.data {
            Some(data) => Ok(Piece::Thinking(Thinking::Redacted { data: data.clone() })),
            None => Err(bad(place, "a redacted_thinking block needs `data`")),
        },
        ("image", Role::User) => image(block.source.as_ref(), place).map(Piece::Image),
        ("tool_result", Role::User) => tool_result(block, place).map(Piece::Result),
        ("tool_use", Role::Assistant) => tool_call(block, place).map(Piece::Call),
        (kind @ ("image" | "tool_result"), _) => Err(in_user_turns(kind)),
        ("tool_use", _) => Err(bad(place, "\"tool_use\" blocks belong in assistant messages")),
        ("document", _) => Err(bad(place, "\"document\" blocks are not supported (send the text instead)")),
        (kind, _) => Err(bad(
            place,
            format!(
                "{kind:?} blocks are not supported here (text, image, tool_use, tool_result, and \
                 thinking in assistant turns are)"
            ),
        )),
    }
}

/// An image block's `source`: base64 data only, as the gateway fetches nothing.
fn image(source: Option<&Value>, place: &str) -> Result<Image, ApiError> {
    let source_place = format!("{place}.source");
    let Some(source) = source else { return Err(bad(place, "an image block needs `source`")) };
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {}
        Some(kind) => {
            return Err(bad(
                &source_place,
                format!(
                    "image sources of type {kind:?} are not supported: send the image as \
                     {{\"type\": \"base64\", \"media_type\", \"data\"}} (the gateway fetches nothing)"
                ),
            ))
        }
        None => return Err(bad(&source_place, "an image source needs `type` (\"base64\")")),
    }
    let field = |name: &str| source.get(name).and_then(Value::as_str);
    let (Some(media_type), Some(data)) = (field("media_type"), field("data")) else {
        return Err(bad(&source_place, "a base64 image source needs `media_type` and `data`"));
    };
    Image::from_base64(media_type, data).map_err(|e| bad(&source_place, e))
}

fn tool_call(block: &ContentBlock, place: &str) -> Result<ToolCall, ApiError> {
    let (Some(id), Some(name)) = (&block.id, &block.name) else {
        return Err(bad(place, "a tool_use block needs `id` and `name`"));
    };
    let arguments = match &block.input {
        None | Some(Value::Null) => "{}".to_string(),
        Some(input @ Value::Object(_)) => input.to_string(),
        Some(_) => {
            return Err(bad(&format!("{place}.input"), "a tool_use block's `input` must be an object"))
        }
    };
    Ok(ToolCall { id: id.clone(), name: name.clone(), arguments })
}

/// A `tool_result`: its content is a string or a list of text and image
/// blocks, whose texts are joined.
fn tool_result(block: &ContentBlock, place: &str) -> Result<ToolResult, ApiError> {
    let Some(id) = block.tool_use_id.as_ref().filter(|id| !id.is_empty()) else {
        return Err(bad(place, "a tool_result block needs `tool_use_id`"));
    };
    let mut result = ToolResult::text(id.clone(), String::new());
    result.is_error = block.is_error.unwrap_or(false);
    let blocks = match &block.content {
        None | Some(Value::Null) => return Ok(result),
        Some(Value::String(text)) => {
            result.content = text.clone();
            return Ok(result);
        }
        Some(Value::Array(blocks)) => blocks,
        Some(_) => {
            return Err(bad(
                &format!("{place}.content"),
                "must be a string or a list of text and image blocks",
            ))
        }
    };
    let mut texts = Vec::with_capacity(blocks.len());
    for (i, inner) in blocks.iter().enumerate() {
        let inner_place = format!("{place}.content[{i}]");
        match (inner.get("type").and_then(Value::as_str), inner.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(text)) => texts.push(text),
            (Some("image"), _) => result.images.push(image(inner.get("source"), &inner_place)?),
            (Some("text"), None) => return Err(bad(&inner_place, "a text block needs `text`")),
            (kind, _) => {
                return Err(bad(
                    &inner_place,
                    format!(
                        "a tool result holds only text and image blocks, not {}",
                        kind.unwrap_or("untyped")
                    ),
                ))
            }
        }
    }
    result.content = texts.join("\n");
    Ok(result)
}

/// The client's tools, if the request offers any (an empty list is none).
pub fn client_tools(
    tools: Option<&[Value]>,
    choice: Option<&Value>,
) -> Result<Option<ClientTools>, ApiError> {
    let choice = match choice {
        None | Some(Value::Null) => None,
        Some(value) => Some(tool_choice(value)?),
    };
    let tools: Vec<ToolSpec> = tools
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, t)| tool_spec(i, t))
        .collect::<Result<_, _>>()?;
    if tools.is_empty() {
        if matches!(choice, Some(ToolChoice::Required | ToolChoice::Named(_))) {
            return Err(bad("tool_choice", "it requires a tool but `tools` is empty"));
        }
        return Ok(None);
    }
    if let Some(ToolChoice::Named(name)) = &choice {
        if !tools.iter().any(|t| &t.name == name) {
            return Err(bad("tool_choice", format!("names {name:?}, which is not in `tools`")));
        }
    }
    Ok(Some(ClientTools { tools, choice }))
}

/// One client tool. Anthropic's server tools (`web_search_20250305`,
/// `bash_20250124`…) run on Anthropic's side or need a harness the gateway
/// does not have, so they are refused by name rather than dropped.
fn tool_spec(index: usize, tool: &Value) -> Result<ToolSpec, ApiError> {
    let place = format!("tools[{index}]");
    let name = tool.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
    if let Some(kind) = tool.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
        return Err(bad(
            &place,
            format!(
                "{} is an Anthropic server tool (type {kind:?}), which ccgate cannot run; \
                 offer client tools (name, description, input_schema) only",
                name.map_or_else(|| "this".to_string(), |n| format!("{n:?}"))
            ),
        ));
    }
    let Some(name) = name else { return Err(bad(&place, "a tool needs a `name`")) };
    let parameters = match tool.get("input_schema") {
        Some(schema @ Value::Object(_)) => schema.clone(),
        _ => {
            return Err(bad(
                &format!("{place}.input_schema"),
                "a tool needs `input_schema`, a JSON schema object",
            ))
        }
    };
    Ok(ToolSpec {
        cache: tool.get("cache_control").cloned(),
        name: name.to_string(),
        description: tool.get("description").and_then(Value::as_str).map(String::from),
        parameters,
        strict: tool.get("strict").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// `auto`, `any`, `tool` (with `name`) or `none`; `disable_parallel_tool_use`
/// is accepted and ignored (the client gets every call the model makes).
fn tool_choice(value: &Value) -> Result<ToolChoice, ApiError> {
    let name = value.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
    match (value.get("type").and_then(Value::as_str), name) {
        (Some("auto"), _) => Ok(ToolChoice::Auto),
        (Some("any"), _) => Ok(ToolChoice::Required),
        (Some("none"), _) => Ok(ToolChoice::None),
        (Some("tool"), Some(name)) => Ok(ToolChoice::Named(name.to_string())),
        (Some("tool"), None) => Err(bad("tool_choice", "{\"type\": \"tool\"} needs the tool's `name`")),
        _ => Err(bad("tool_choice", "must be {\"type\": …} with auto, any, tool (and `name`) or none")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn block(value: Value) -> ContentBlock {
        serde_json::from_value(value).expect("a content block")
    }

    fn param(error: ApiError) -> Option<String> {
        match error {
            ApiError::BadRequest { param, .. } => param,
            _ => None,
        }
    }

    const PNG: &str = "iVBORw0KGgo=";

    #[test]
    fn blocks_map_to_text_images_calls_and_results() {
        let image =
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/PNG", "data": PNG}});
        let cases = [
            (
                json!({"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}),
                Role::User,
                Piece::Text("hi"),
            ),
            (
                json!({"type": "thinking", "thinking": "hm", "signature": "s"}),
                Role::Assistant,
                Piece::Thinking(Thinking::Text { thinking: "hm".into(), signature: "s".into() }),
            ),
            (
                json!({"type": "redacted_thinking", "data": "x"}),
                Role::Assistant,
                Piece::Thinking(Thinking::Redacted { data: "x".into() }),
            ),
            (
                image.clone(),
                Role::User,
                Piece::Image(Image { media_type: "image/png".into(), data_base64: PNG.into(), size: 8 }),
            ),
            (
                json!({"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a"}}),
                Role::Assistant,
                Piece::Call(ToolCall {
                    id: "toolu_1".into(),
                    name: "Read".into(),
                    arguments: r#"{"file_path":"/a"}"#.into(),
                }),
            ),
            (
                json!({"type": "tool_use", "id": "toolu_2", "name": "Now"}),
                Role::Assistant,
                Piece::Call(ToolCall { id: "toolu_2".into(), name: "Now".into(), arguments: "{}".into() }),
            ),
            (
                json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "1\thello"}),
                Role::User,
                Piece::Result(ToolResult::text("toolu_1", "1\thello")),
            ),
            (
                json!({"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true,
                       "content": [{"type": "text", "text": "no such file"}, {"type": "text", "text": "at /a"}]}),
                Role::User,
                Piece::Result(ToolResult {
                    is_error: true,
                    ..ToolResult::text("toolu_1", "no such file\nat /a")
                }),
            ),
            (
                json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "shot"}, image]}),
                Role::User,
                Piece::Result(ToolResult {
                    images: vec![Image { media_type: "image/png".into(), data_base64: PNG.into(), size: 8 }],
                    ..ToolResult::text("toolu_1", "shot")
                }),
            ),
            (
                json!({"type": "tool_result", "tool_use_id": "toolu_1"}),
                Role::User,
                Piece::Result(ToolResult::text("toolu_1", "")),
            ),
        ];
        for (wire, role, expected) in cases {
            let wire_block = block(wire.clone());
            assert_eq!(
                piece(&wire_block, role, "messages[0].content[0]").expect("accepted"),
                expected,
                "{wire}"
            );
        }
    }

    #[test]
    fn blocks_that_cannot_be_carried_are_refused_with_their_place() {
        let cases = [
            (json!({"type": "text"}), Role::User, "messages[1].content[2]"),
            (json!({"type": "thinking", "thinking": "hm"}), Role::User, "messages[1].content[2]"),
            (json!({"type": "document", "source": {}}), Role::User, "messages[1].content[2]"),
            (json!({"type": "server_tool_use", "id": "s"}), Role::Assistant, "messages[1].content[2]"),
            (
                json!({"type": "image", "source": {"type": "base64"}}),
                Role::Assistant,
                "messages[1].content[2]",
            ),
            (json!({"type": "tool_use", "id": "t", "name": "x"}), Role::User, "messages[1].content[2]"),
            (json!({"type": "tool_result", "tool_use_id": "t"}), Role::Assistant, "messages[1].content[2]"),
            (json!({"type": "image"}), Role::User, "messages[1].content[2]"),
            (
                json!({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}),
                Role::User,
                "messages[1].content[2].source",
            ),
            (
                json!({"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": "AAAA"}}),
                Role::User,
                "messages[1].content[2].source",
            ),
            (
                json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "*"}}),
                Role::User,
                "messages[1].content[2].source",
            ),
            (json!({"type": "tool_use", "name": "x"}), Role::Assistant, "messages[1].content[2]"),
            (
                json!({"type": "tool_use", "id": "t", "name": "x", "input": [1]}),
                Role::Assistant,
                "messages[1].content[2].input",
            ),
            (json!({"type": "tool_result", "content": "x"}), Role::User, "messages[1].content[2]"),
            (
                json!({"type": "tool_result", "tool_use_id": "t", "content": 3}),
                Role::User,
                "messages[1].content[2].content",
            ),
            (
                json!({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}),
                Role::User,
                "messages[1].content[2].content[0]",
            ),
            (
                json!({"type": "tool_result", "tool_use_id": "t",
                       "content": [{"type": "text", "text": "a"}, {"type": "image", "source": {"type": "url", "url": "u"}}]}),
                Role::User,
                "messages[1].content[2].content[1].source",
            ),
        ];
        for (wire, role, place) in cases {
            let wire_block = block(wire.clone());
            let error = piece(&wire_block, role, "messages[1].content[2]").expect_err("refused");
            let message = error.to_string();
            assert!(message.starts_with(place), "{wire}: {message}");
            assert_eq!(param(error).as_deref(), Some(place), "{wire}");
        }
    }

    #[test]
    fn tools_and_choices_map_to_client_tools() {
        let tools = [
            json!({"name": "get_weather", "description": "By city", "input_schema": {"type": "object"},
                   "cache_control": {"type": "ephemeral"}, "strict": true}),
            json!({"type": "custom", "name": "Read", "input_schema": {"type": "object", "properties": {}}}),
        ];
        let choices = [
            (None, None),
            (Some(json!({"type": "auto", "disable_parallel_tool_use": true})), Some(ToolChoice::Auto)),
            (Some(json!({"type": "any"})), Some(ToolChoice::Required)),
            (Some(json!({"type": "none"})), Some(ToolChoice::None)),
            (Some(json!({"type": "tool", "name": "Read"})), Some(ToolChoice::Named("Read".into()))),
        ];
        for (wire, choice) in choices {
            let mapped = client_tools(Some(&tools), wire.as_ref()).expect("accepted").expect("some tools");
            assert_eq!(mapped.choice, choice, "{wire:?}");
            assert_eq!(
                mapped.tools,
                [
                    ToolSpec {
                        name: "get_weather".into(),
                        description: Some("By city".into()),
                        parameters: json!({"type": "object"}),
                        cache: Some(json!({"type": "ephemeral"})),
                        strict: true,
                    },
                    ToolSpec {
                        name: "Read".into(),
                        description: None,
                        parameters: json!({"type": "object", "properties": {}}),
                        cache: None,
                        strict: false,
                    },
                ]
            );
        }
        assert_eq!(client_tools(Some(&[]), Some(&json!({"type": "auto"}))).unwrap(), None, "no tools");
        assert_eq!(client_tools(None, None).unwrap(), None);
    }

    #[test]
    fn server_tools_and_bad_choices_are_refused_by_name() {
        let read = json!({"name": "Read", "input_schema": {"type": "object"}});
        let cases = [
            (
                vec![read.clone(), json!({"type": "web_search_20250305", "name": "web_search"})],
                None,
                "tools[1]",
                "\"web_search\"",
            ),
            (vec![json!({"type": "bash_20250124", "name": "bash"})], None, "tools[0]", "bash_20250124"),
            (vec![json!({"input_schema": {}})], None, "tools[0]", "name"),
            (vec![json!({"name": "x"})], None, "tools[0].input_schema", "input_schema"),
            (vec![], Some(json!({"type": "any"})), "tool_choice", "empty"),
            (vec![read.clone()], Some(json!({"type": "tool", "name": "Write"})), "tool_choice", "\"Write\""),
            (vec![read.clone()], Some(json!({"type": "tool"})), "tool_choice", "name"),
            (vec![read], Some(json!("auto")), "tool_choice", "auto"),
        ];
        for (tools, choice, place, needle) in cases {
            let error = client_tools(Some(&tools), choice.as_ref()).expect_err("refused");
            let message = error.to_string();
            assert!(message.contains(needle), "{message}");
            assert_eq!(param(error).as_deref(), Some(place), "{message}");
        }
    }
}
