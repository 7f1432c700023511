//! The content blocks of a streamed message, in the order Anthropic's
//! stream has them: each thinking, text or `tool_use` block is started,
//! filled with deltas and stopped before the next one starts, indexes
//! counting up from 0. (Stop sequences were applied before: `chat::stop`.)

use serde_json::json;

use super::anthropic::{BlockDelta, OutputBlock, StreamEvent};
use crate::chat::{ThinkingPiece, ToolCallDelta};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Thinking,
    Text,
    ToolUse,
}

#[derive(Debug, Default)]
pub struct BlockWriter {
    /// The block being filled, and its index.
    open: Option<(Kind, u32)>,
    /// How many blocks have been started.
    started: u32,
}

impl BlockWriter {
    pub fn new() -> BlockWriter {
        BlockWriter::default()
    }

    /// The events for the next piece of text.
    pub fn text(&mut self, text: String) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        self.send_text(text, &mut events);
        events
    }

    /// The events for a piece of a tool call: its first piece (with id and
    /// name) ends the block before it and starts a `tool_use` block; later
    /// pieces add to its input.
    pub fn tool_call(&mut self, delta: ToolCallDelta) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        if let (Some(id), Some(name)) = (delta.id, delta.name) {
            self.close(&mut events);
            self.start(Kind::ToolUse, OutputBlock::ToolUse { id, name, input: json!({}) }, &mut events);
        }
        if let Some((Kind::ToolUse, index)) = self.open.filter(|_| !delta.arguments.is_empty()) {
            events.push(StreamEvent::ContentBlockDelta {
                index,
                delta: BlockDelta::InputJsonDelta { partial_json: delta.arguments },
            });
        }
        events
    }

    /// The events for a piece of extended thinking: its start ends the
    /// block before it and starts a `thinking` block (or a whole
    /// `redacted_thinking` one); text and signature come as deltas.
    pub fn thinking(&mut self, piece: ThinkingPiece) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        let delta = match piece {
            ThinkingPiece::Start { redacted } => {
                self.close(&mut events);
                let block = match redacted {
                    Some(data) => OutputBlock::RedactedThinking { data },
                    None => OutputBlock::Thinking { thinking: String::new(), signature: String::new() },
                };
                self.start(Kind::Thinking, block, &mut events);
                return events;
            }
            ThinkingPiece::Text(thinking) => BlockDelta::ThinkingDelta { thinking },
            ThinkingPiece::Signature(signature) => BlockDelta::SignatureDelta { signature },
        };
        if let Some((Kind::Thinking, index)) = self.open {
            events.push(StreamEvent::ContentBlockDelta { index, delta });
        }
        events
    }

    /// The events that end the content: the open block's stop. An answer
    /// with no content at all gets one empty text block, as the API sends.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        if self.started == 0 {
            self.start(Kind::Text, OutputBlock::Text { text: String::new() }, &mut events);
        }
        self.close(&mut events);
        events
    }

    fn send_text(&mut self, text: String, events: &mut Vec<StreamEvent>) {
        if text.is_empty() {
            return;
        }
        let index = match self.open {
            Some((Kind::Text, index)) => index,
            _ => {
                self.close(events);
                self.start(Kind::Text, OutputBlock::Text { text: String::new() }, events)
            }
        };
        events.push(StreamEvent::ContentBlockDelta { index, delta: BlockDelta::TextDelta { text } });
    }

    /// Starts a block; the first one is followed by a `ping`, where the API
    /// sends it.
    fn start(&mut self, kind: Kind, block: OutputBlock, events: &mut Vec<StreamEvent>) -> u32 {
        let index = self.started;
        self.started += 1;
        self.open = Some((kind, index));
        events.push(StreamEvent::ContentBlockStart { index, content_block: block });
        if index == 0 {
            events.push(StreamEvent::Ping);
        }
        index
    }

    fn close(&mut self, events: &mut Vec<StreamEvent>) {
        if let Some((_, index)) = self.open.take() {
            events.push(StreamEvent::ContentBlockStop { index });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn call(index: usize, id: Option<&str>, arguments: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.map(String::from),
            name: id.map(|_| "Read".to_string()),
            arguments: arguments.into(),
        }
    }

    /// The events as compact JSON, to compare whole sequences.
    fn wire(events: Vec<StreamEvent>) -> Vec<Value> {
        events.iter().map(|e| serde_json::to_value(e).unwrap()).collect()
    }

    #[test]
    fn text_then_tool_calls_get_blocks_in_order() {
        let mut writer = BlockWriter::new();
        let mut events = writer.text("Reading".into());
        events.extend(writer.text(" it.".into()));
        events.extend(writer.tool_call(call(0, Some("t1"), "")));
        events.extend(writer.tool_call(call(0, None, "{\"file_path\":")));
        events.extend(writer.tool_call(call(0, None, "\"/a\"}")));
        events.extend(writer.tool_call(call(1, Some("t2"), "{}")));
        events.extend(writer.finish());
        let text = |index: u32, text: &str| json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}});
        let json_piece = |index: u32, piece: &str| json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": piece}});
        let tool = |index: u32, id: &str| {
            json!({"type": "content_block_start", "index": index,
                   "content_block": {"type": "tool_use", "id": id, "name": "Read", "input": {}}})
        };
        let stop = |index: u32| json!({"type": "content_block_stop", "index": index});
        assert_eq!(
            wire(events),
            [
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "ping"}),
                text(0, "Reading"),
                text(0, " it."),
                stop(0),
                tool(1, "t1"),
                json_piece(1, "{\"file_path\":"),
                json_piece(1, "\"/a\"}"),
                stop(1),
                tool(2, "t2"),
                json_piece(2, "{}"),
                stop(2),
            ]
        );
    }

    #[test]
    fn a_call_without_text_is_block_zero_and_an_empty_answer_one_empty_text_block() {
        let mut writer = BlockWriter::new();
        let mut events = writer.tool_call(call(0, Some("t1"), ""));
        events.extend(writer.finish());
        let names: Vec<Value> = wire(events).into_iter().map(|e| e["type"].clone()).collect();
        assert_eq!(names, ["content_block_start", "ping", "content_block_stop"]);

        let mut writer = BlockWriter::new();
        assert_eq!(
            wire(writer.finish()),
            [
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "ping"}),
                json!({"type": "content_block_stop", "index": 0}),
            ]
        );
    }
}
