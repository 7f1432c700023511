//! The incoming side of the Messages API: request types and the text the
//! simulator reads out of them.

use serde::Deserialize;
use serde_json::Value;

/// Text blocks the CLI adds to a user turn besides the user's words: its
/// reminders, and its notes about local commands such as `/clear`.
const CLI_NOTES: [&str; 3] = ["<system-reminder>", "<local-command-", "<command-"];
/// How a reminder ends.
const REMINDER_END: &str = "</system-reminder>";

/// A `POST /v1/messages` (or `/count_tokens`) body. Unknown fields are ignored,
/// as the simulator only needs what shapes its reply and its token counts.
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub system: Option<Content>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// The reply stops before the first of these it would contain.
    #[serde(default)]
    pub stop_sequences: Vec<String>,
    /// `{"type": "enabled", "budget_tokens": N}`, `adaptive` or `disabled`.
    #[serde(default)]
    pub thinking: Option<Value>,
    /// `{"format": {"type": "json_schema", "schema": {…}}}`: the reply is
    /// an instance of the schema.
    #[serde(default)]
    pub output_config: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

/// Message content (and `system`): a bare string or a list of blocks.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    ToolUse {
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        #[serde(default)]
        content: Option<Content>,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    /// Its `data` is opaque: nothing to count or check.
    RedactedThinking,
    /// Images, documents and anything newer: they carry no text to count or echo.
    #[serde(other)]
    Other,
}

impl Content {
    /// Text of every text block, joined by newlines.
    pub fn text(&self) -> String {
        match self {
            Content::Text(text) => text.clone(),
            Content::Blocks(blocks) => joined(blocks.iter().filter_map(Block::as_text)),
        }
    }

    fn blocks(&self) -> &[Block] {
        match self {
            Content::Text(_) => &[],
            Content::Blocks(blocks) => blocks,
        }
    }

    /// The user's own words: text blocks minus the CLI's own notes.
    fn prompt_text(&self) -> String {
        match self {
            Content::Text(text) => joined(own_words(text).into_iter()),
            Content::Blocks(blocks) => joined(blocks.iter().filter_map(Block::as_text).filter_map(own_words)),
        }
    }
}

/// The user's words in one text: none if it is one of the CLI's notes, and
/// without the reminders at its head, which a gateway that merges a turn's
/// text blocks puts in the same text as the words.
fn own_words(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(reminder) = rest.trim_start().strip_prefix(CLI_NOTES[0]) {
        let end = reminder.find(REMINDER_END)?;
        rest = reminder[end + REMINDER_END.len()..].trim_start();
        if rest.is_empty() {
            return None;
        }
    }
    let is_note = CLI_NOTES.iter().any(|note| rest.trim_start().starts_with(note));
    (!is_note).then_some(rest)
}

impl Block {
    fn as_text(&self) -> Option<&str> {
        match self {
            Block::Text { text } => Some(text),
            _ => None,
        }
    }
}

impl MessagesRequest {
    /// The prompt the reply answers: the text of the last user message,
    /// without system reminders. A user turn that only returns tool results has
    /// no such text, so the search goes back to the user turn that started the
    /// exchange; its directives then keep applying to the whole agent run.
    pub fn last_user_text(&self) -> String {
        self.messages
            .iter()
            .rev()
            .filter(|message| message.role == "user")
            .map(|message| message.content.prompt_text())
            .find(|text| !text.trim().is_empty())
            .unwrap_or_default()
    }

    /// Text of the first `tool_result` block when the conversation ends with a
    /// user turn returning tool results, i.e. when the model must now read them.
    pub fn pending_tool_result(&self) -> Option<String> {
        let last = self.messages.last().filter(|message| message.role == "user")?;
        last.content.blocks().iter().find_map(|block| match block {
            Block::ToolResult { content } => Some(content.as_ref().map(Content::text).unwrap_or_default()),
            _ => None,
        })
    }

    /// How many user turns have returned tool results since the last user
    /// turn with words of its own (the one that started this exchange).
    pub fn tool_results_in_exchange(&self) -> usize {
        let has_result =
            |m: &&Message| m.content.blocks().iter().any(|b| matches!(b, Block::ToolResult { .. }));
        self.messages
            .iter()
            .rev()
            .filter(|m| m.role == "user")
            .take_while(|m| has_result(m) && m.content.prompt_text().trim().is_empty())
            .count()
    }

    /// Number of characters of all text the model would read: system prompt,
    /// every message block, and the JSON of the tool definitions.
    pub fn text_chars(&self) -> usize {
        self.text_len(|text| text.chars().count())
    }

    /// Bytes (UTF-8) of the same text as `text_chars`.
    pub fn text_bytes(&self) -> usize {
        self.text_len(str::len)
    }

    fn text_len(&self, len: fn(&str) -> usize) -> usize {
        let system = self.system.as_ref().map_or(0, |c| content_len(c, len));
        let messages: usize = self.messages.iter().map(|m| content_len(&m.content, len)).sum();
        let tools = self.tools.as_ref().map_or(0, |tools| tools.iter().map(|t| json_len(t, len)).sum());
        system + messages + tools
    }
}

fn content_len(content: &Content, len: fn(&str) -> usize) -> usize {
    match content {
        Content::Text(text) => len(text),
        Content::Blocks(blocks) => blocks.iter().map(|b| block_len(b, len)).sum(),
    }
}

fn block_len(block: &Block, len: fn(&str) -> usize) -> usize {
    match block {
        Block::Text { text } => len(text),
        Block::ToolUse { name, input } => len(name) + json_len(input, len),
        Block::ToolResult { content } => content.as_ref().map_or(0, |c| content_len(c, len)),
        Block::Thinking { thinking, .. } => len(thinking),
        Block::RedactedThinking => 0,
        Block::Other => 0,
    }
}

fn json_len(value: &Value, len: fn(&str) -> usize) -> usize {
    len(&value.to_string())
}

fn joined<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    parts.collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> MessagesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn last_user_text_skips_system_reminders() {
        let req = request(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "old question"},
                {"role": "assistant", "content": "old answer"},
                {"role": "user", "content": [
                    {"type": "text", "text": "<system-reminder>\nbe nice\n</system-reminder>"},
                    {"type": "text", "text": "What is 2+2?"}
                ]}
            ]
        }));
        assert_eq!(req.last_user_text(), "What is 2+2?");
        assert_eq!(req.pending_tool_result(), None);
    }

    #[test]
    fn reminders_merged_into_the_words_block_are_cut_off() {
        let req = request(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\na\n</system-reminder>\n<system-reminder>b</system-reminder>\n\nread it [sim:words=2]"},
                {"type": "text", "text": "<system-reminder>never closed"}
            ]}]
        }));
        assert_eq!(req.last_user_text(), "read it [sim:words=2]");
    }

    #[test]
    fn last_user_text_skips_the_notes_a_cleared_session_carries() {
        let req = request(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "<local-command-caveat>Caveat: generated by local commands</local-command-caveat>"},
                    {"type": "text", "text": "<command-name>/clear</command-name>"},
                    {"type": "text", "text": "<command-message>clear</command-message>"},
                    {"type": "text", "text": "<local-command-stdout></local-command-stdout>"},
                    {"type": "text", "text": "the real question"}
                ]}
            ]
        }));
        assert_eq!(req.last_user_text(), "the real question");
    }

    #[test]
    fn tool_result_turn_falls_back_to_the_prompt() {
        let req = request(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "[sim:tool=Read {}] read it"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "file body"}]},
                    {"type": "text", "text": "<system-reminder>x</system-reminder>"}
                ]}
            ]
        }));
        assert_eq!(req.last_user_text(), "[sim:tool=Read {}] read it");
        assert_eq!(req.pending_tool_result().as_deref(), Some("file body"));
    }

    #[test]
    fn text_chars_counts_system_messages_and_tools() {
        let tools = json!([{"name": "t", "input_schema": {}}]);
        let req = request(json!({
            "model": "m",
            "system": [{"type": "text", "text": "abcd"}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "héllo"},
                    {"type": "image", "source": {"type": "base64", "data": "AAAA"}}
                ]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "ab", "input": {"k": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "xyz"}]}
            ],
            "tools": tools
        }));
        let tools_len = tools[0].to_string().len();
        // 4 system + 5 text + (2 + 7) tool_use + 3 tool_result + tools JSON
        assert_eq!(req.text_chars(), 4 + 5 + 9 + 3 + tools_len);
        // "héllo" is five characters and six bytes.
        assert_eq!(req.text_bytes(), 4 + 6 + 9 + 3 + tools_len);
    }

    #[test]
    fn missing_model_or_messages_is_rejected() {
        assert!(serde_json::from_value::<MessagesRequest>(json!({"messages": []})).is_err());
        assert!(serde_json::from_value::<MessagesRequest>(json!({"model": "m"})).is_err());
    }
}
