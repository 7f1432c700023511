//! The Messages API request body for a chat: each turn's text, images,
//! tool calls (`tool_use`) and tool results (`tool_result`) as content
//! blocks, and the client's tools with the tool choice.

use serde_json::{json, Value};

use crate::chat::{ClientTools, Image, Message, Role, Thinking, ToolChoice, ToolResult};

/// The `messages` of a request. A turn of text alone keeps the plain string
/// form; anything else becomes content blocks.
pub fn messages(turns: &[Message]) -> Vec<Value> {
    turns
        .iter()
        .map(|m| {
            let role = if m.role == Role::Assistant { "assistant" } else { "user" };
            json!({"role": role, "content": content(m)})
        })
        .collect()
}

fn content(message: &Message) -> Value {
    if message.images.is_empty()
        && !message.has_tool_use()
        && message.cache.is_none()
        && message.thinking.is_empty()
    {
        return json!(message.text);
    }
    // An assistant turn starts with its thinking, handed back as it came;
    // tool results come first in a user turn, as the API requires; the
    // text goes after the images it talks about.
    let mut blocks: Vec<Value> = message.thinking.iter().map(thinking_block).collect();
    blocks.extend(message.tool_results.iter().map(tool_result));
    blocks.extend(message.images.iter().map(image_block));
    // The API refuses empty text blocks.
    if !message.text.is_empty() {
        blocks.push(json!({"type": "text", "text": message.text}));
    }
    blocks.extend(
        message
            .tool_calls
            .iter()
            .map(|call| json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input()})),
    );
    // A cache breakpoint marks the end of the turn: its last block.
    if let (Some(cache), Some(last)) = (&message.cache, blocks.last_mut()) {
        last["cache_control"] = cache.clone();
    }
    Value::Array(blocks)
}

/// A `tool_result` block: its text as a plain string unless the tool also
/// returned images; `is_error` only when set, as the API's default is false.
fn tool_result(result: &ToolResult) -> Value {
    let content = if result.images.is_empty() {
        json!(result.content)
    } else {
        let text = (!result.content.is_empty()).then(|| json!({"type": "text", "text": result.content}));
        Value::Array(text.into_iter().chain(result.images.iter().map(image_block)).collect())
    };
    let mut block = json!({"type": "tool_result", "tool_use_id": result.tool_call_id, "content": content});
    if result.is_error {
        block["is_error"] = json!(true);
    }
    block
}

fn thinking_block(thinking: &Thinking) -> Value {
    match thinking {
        Thinking::Text { thinking, signature } => {
            json!({"type": "thinking", "thinking": thinking, "signature": signature})
        }
        Thinking::Redacted { data } => json!({"type": "redacted_thinking", "data": data}),
    }
}

fn image_block(image: &Image) -> Value {
    json!({"type": "image", "source": {
        "type": "base64", "media_type": image.media_type, "data": image.data_base64,
    }})
}

/// Adds the client's tools and tool choice to a request body.
pub fn add_tools(body: &mut Value, tools: &ClientTools) {
    body["tools"] = tools
        .tools
        .iter()
        .map(|t| {
            let mut tool = json!({"name": t.name, "input_schema": t.parameters});
            if let Some(description) = &t.description {
                tool["description"] = json!(description);
            }
            if let Some(cache) = &t.cache {
                tool["cache_control"] = cache.clone();
            }
            if t.strict {
                tool["strict"] = json!(true);
            }
            tool
        })
        .collect();
    if let Some(choice) = &tools.choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Named(name) => json!({"type": "tool", "name": name}),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{ToolCall, ToolSpec};

    #[test]
    fn turns_map_to_content_blocks() {
        let mut question = Message::new(Role::User, "what is in it?");
        question.images.push(Image {
            media_type: "image/png".into(),
            data_base64: "iVBORw==".into(),
            size: 4,
        });
        let mut call = Message::new(Role::Assistant, "");
        call.tool_calls.push(ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        });
        let mut results = Message::new(Role::User, "");
        results.tool_results.push(ToolResult::text("call_1", "sunny"));
        let mut failed = ToolResult::text("call_2", "no such city");
        failed.is_error = true;
        results.tool_results.push(failed);
        let mapped = messages(&[Message::new(Role::User, "hi"), question, call, results]);
        assert_eq!(
            Value::Array(mapped),
            json!([
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="}},
                    {"type": "text", "text": "what is in it?"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "no such city", "is_error": true},
                ]},
            ])
        );
    }

    #[test]
    fn images_a_tool_returned_follow_its_text() {
        let mut turn = Message::new(Role::User, "");
        let mut result = ToolResult::text("t1", "a chart");
        result.images.push(Image { media_type: "image/gif".into(), data_base64: "R0lG".into(), size: 3 });
        turn.tool_results.push(result);
        turn.tool_results.push(ToolResult { content: String::new(), ..turn.tool_results[0].clone() });
        let mapped = messages(&[turn]);
        let image =
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"}});
        assert_eq!(
            mapped[0]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "a chart"}, image]},
                {"type": "tool_result", "tool_use_id": "t1", "content": [image]},
            ])
        );
    }

    #[test]
    fn tool_arguments_that_are_not_an_object_are_kept() {
        for (arguments, input) in [("", json!({})), ("not json", json!({"arguments": "not json"}))] {
            let mut call = Message::new(Role::Assistant, "calling");
            call.tool_calls.push(ToolCall { id: "c".into(), name: "f".into(), arguments: arguments.into() });
            let mapped = messages(&[call]);
            assert_eq!(mapped[0]["content"][1]["input"], input, "{arguments:?}");
            assert_eq!(mapped[0]["content"][0], json!({"type": "text", "text": "calling"}));
        }
    }

    #[test]
    fn tools_and_choices_map_to_anthropics() {
        let spec = ToolSpec {
            name: "get_weather".into(),
            description: Some("Weather by city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            cache: None,
            strict: false,
        };
        let cases = [
            (None, None),
            (Some(ToolChoice::Auto), Some(json!({"type": "auto"}))),
            (Some(ToolChoice::None), Some(json!({"type": "none"}))),
            (Some(ToolChoice::Required), Some(json!({"type": "any"}))),
            (
                Some(ToolChoice::Named("get_weather".into())),
                Some(json!({"type": "tool", "name": "get_weather"})),
            ),
        ];
        for (choice, expected) in cases {
            let mut body = json!({});
            add_tools(&mut body, &ClientTools { tools: vec![spec.clone()], choice: choice.clone() });
            assert_eq!(
                body["tools"],
                json!([{"name": "get_weather", "description": "Weather by city", "input_schema": spec.parameters}])
            );
            assert_eq!(body.get("tool_choice").cloned(), expected, "{choice:?}");
        }
        // A strict tool stays strict.
        let mut body = json!({});
        let strict = ToolSpec { strict: true, ..spec };
        add_tools(&mut body, &ClientTools { tools: vec![strict], choice: None });
        assert_eq!(body["tools"][0]["strict"], true);
    }

    #[test]
    fn cache_breakpoints_go_on_the_last_block_of_their_turn_and_on_their_tool() {
        let ephemeral = json!({"type": "ephemeral"});
        let mut cached = Message::new(Role::User, "the long document");
        cached.cache = Some(ephemeral.clone());
        let mut results = Message::new(Role::User, "");
        results.tool_results.push(ToolResult::text("toolu_1", "42"));
        results.cache = Some(json!({"type": "ephemeral", "ttl": "1h"}));
        let mapped = messages(&[cached, Message::new(Role::Assistant, "ok"), results]);
        assert_eq!(
            Value::Array(mapped),
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "the long document", "cache_control": ephemeral},
                ]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42",
                     "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                ]},
            ])
        );
        let tool = |name: &str, cache: Option<Value>| ToolSpec {
            name: name.into(),
            description: None,
            parameters: json!({"type": "object"}),
            cache,
            strict: false,
        };
        let mut body = json!({});
        add_tools(
            &mut body,
            &ClientTools { tools: vec![tool("a", None), tool("b", Some(ephemeral.clone()))], choice: None },
        );
        assert_eq!(body["tools"][0].get("cache_control"), None);
        assert_eq!(body["tools"][1]["cache_control"], ephemeral);
    }
}
