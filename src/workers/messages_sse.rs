//! The Anthropic Messages API's answers: the streaming format, server-sent
//! events whose `data:` lines are JSON objects tagged by `type` (`SseLines`
//! splits a byte stream into lines whatever the chunking; `parse_data` reads
//! one event), and the whole message a non-streaming request receives
//! (`WholeMessage`).

use bytes::{Buf, BytesMut};
use serde::Deserialize;

use crate::pricing::TokenUsage;

/// Splits bytes into lines (without `\n` or `\r\n`), keeping a partial
/// line until the rest arrives.
#[derive(Default)]
pub struct SseLines {
    buffer: BytesMut,
}

impl SseLines {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete line, if one has arrived.
    pub fn next_line(&mut self) -> Option<String> {
        let end = self.buffer.iter().position(|b| *b == b'\n')?;
        let mut line = self.buffer.split_to(end);
        self.buffer.advance(1);
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        Some(String::from_utf8_lossy(&line).into_owned())
    }
}

/// The JSON of a `data:` line, or `None` for any other line (event names,
/// comments, blank separators).
pub fn data_of(line: &str) -> Option<&str> {
    line.strip_prefix("data:").map(str::trim_start)
}

/// The stream events the backend acts on; the rest are `Other`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        #[serde(default)]
        index: usize,
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: usize,
        delta: Delta,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<Usage>,
    },
    MessageStop,
    Error {
        error: ErrorBody,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize, PartialEq)]
pub struct StartMessage {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Delta {
    TextDelta {
        text: String,
    },
    /// A piece of a tool call's input, as JSON text.
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Other,
}

/// The block a `content_block_start` opens; tool calls and thinking matter
/// here (text arrives in deltas).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    ToolUse {
        id: String,
        name: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    RedactedThinking {
        data: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct MessageDeltaBody {
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
}

/// Usage as the API reports it. `message_delta` carries cumulative counts,
/// so a field present there replaces the one from `message_start`.
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    /// How the cache writes split by lifetime.
    pub cache_creation: Option<CacheCreation>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct CacheCreation {
    pub ephemeral_1h_input_tokens: Option<u64>,
}

impl Usage {
    pub fn apply_to(&self, usage: &mut TokenUsage) {
        let fields = [
            (self.input_tokens, &mut usage.input_tokens),
            (self.output_tokens, &mut usage.output_tokens),
            (self.cache_read_input_tokens, &mut usage.cache_read_tokens),
            (self.cache_creation_input_tokens, &mut usage.cache_write_tokens),
            (
                self.cache_creation.as_ref().and_then(|c| c.ephemeral_1h_input_tokens),
                &mut usage.cache_write_1h_tokens,
            ),
        ];
        for (reported, field) in fields {
            if let Some(value) = reported {
                *field = value;
            }
        }
    }
}

/// The answer to a non-streaming request: the same content the events of a
/// stream carry, all at once.
#[derive(Debug, Deserialize, PartialEq)]
pub struct WholeMessage {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub content: Vec<WholeBlock>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WholeBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: serde_json::Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    RedactedThinking {
        data: String,
    },
    #[serde(other)]
    Other,
}

/// The API's error object, in an error response body or an `error` event.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ErrorBody {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
}

/// `{"type":"error","error":{…}}`, the body of a failed request.
#[derive(Debug, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

pub fn parse_data(data: &str) -> Option<StreamEvent> {
    serde_json::from_str(data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_survive_any_chunking() {
        let text = "event: ping\r\ndata: {\"type\":\"ping\"}\n\nevent: message_stop\ndata: {}\n\n";
        for size in 1..text.len() {
            let mut lines = SseLines::default();
            let mut seen = Vec::new();
            for chunk in text.as_bytes().chunks(size) {
                lines.push(chunk);
                while let Some(line) = lines.next_line() {
                    seen.push(line);
                }
            }
            assert_eq!(
                seen,
                ["event: ping", "data: {\"type\":\"ping\"}", "", "event: message_stop", "data: {}", ""],
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn events_and_usage_are_read() {
        let start = r#"{"type":"message_start","message":{"id":"m","model":"claude-x","usage":
            {"input_tokens":12,"output_tokens":1,"cache_read_input_tokens":30,"cache_creation_input_tokens":4}}}"#;
        let Some(StreamEvent::MessageStart { message }) = parse_data(start) else { panic!("not a start") };
        let mut usage = TokenUsage::default();
        if let Some(start_usage) = &message.usage {
            start_usage.apply_to(&mut usage);
        }
        assert_eq!(message.model.as_deref(), Some("claude-x"));
        let delta =
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#;
        let Some(StreamEvent::MessageDelta { delta, usage: Some(later) }) = parse_data(delta) else {
            panic!("not a delta")
        };
        later.apply_to(&mut usage);
        assert_eq!(delta.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            usage,
            TokenUsage {
                input_tokens: 12,
                output_tokens: 9,
                cache_read_tokens: 30,
                cache_write_tokens: 4,
                ..TokenUsage::default()
            }
        );
        let text = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#;
        assert_eq!(
            parse_data(text),
            Some(StreamEvent::ContentBlockDelta { index: 0, delta: Delta::TextDelta { text: "hi".into() } })
        );
        let json_delta = r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#;
        assert_eq!(
            parse_data(json_delta),
            Some(StreamEvent::ContentBlockDelta {
                index: 1,
                delta: Delta::InputJsonDelta { partial_json: "{\"a\"".into() }
            })
        );
        let tool_start = r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}"#;
        assert_eq!(
            parse_data(tool_start),
            Some(StreamEvent::ContentBlockStart {
                index: 1,
                content_block: ContentBlock::ToolUse { id: "toolu_1".into(), name: "get_weather".into() }
            })
        );
        let text_start =
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
        assert_eq!(
            parse_data(text_start),
            Some(StreamEvent::ContentBlockStart { index: 0, content_block: ContentBlock::Other })
        );
        let thinking =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"x"}}"#;
        assert_eq!(
            parse_data(thinking),
            Some(StreamEvent::ContentBlockDelta {
                index: 0,
                delta: Delta::ThinkingDelta { thinking: "x".into() }
            })
        );
        let signature =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"s"}}"#;
        assert_eq!(
            parse_data(signature),
            Some(StreamEvent::ContentBlockDelta {
                index: 0,
                delta: Delta::SignatureDelta { signature: "s".into() }
            })
        );
        let redacted = r#"{"type":"content_block_start","index":0,"content_block":{"type":"redacted_thinking","data":"d"}}"#;
        assert_eq!(
            parse_data(redacted),
            Some(StreamEvent::ContentBlockStart {
                index: 0,
                content_block: ContentBlock::RedactedThinking { data: "d".into() }
            })
        );
        let citations =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}"#;
        assert_eq!(
            parse_data(citations),
            Some(StreamEvent::ContentBlockDelta { index: 0, delta: Delta::Other })
        );
        assert_eq!(parse_data(r#"{"type":"ping"}"#), Some(StreamEvent::Other));
        let error = r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#;
        assert_eq!(
            parse_data(error),
            Some(StreamEvent::Error {
                error: ErrorBody { kind: "overloaded_error".into(), message: "busy".into() }
            })
        );
        assert_eq!(parse_data("not json"), None);
        assert_eq!(data_of("data: {}"), Some("{}"));
        assert_eq!(data_of("event: ping"), None);
    }

    /// The API splits cache writes by lifetime; an hour's cost more.
    #[test]
    fn one_hour_cache_writes_are_read_apart() {
        let usage: Usage = serde_json::from_str(
            r#"{"input_tokens":3,"output_tokens":4,"cache_creation_input_tokens":700,
                "cache_creation":{"ephemeral_5m_input_tokens":300,"ephemeral_1h_input_tokens":400}}"#,
        )
        .expect("parses");
        let mut read = TokenUsage::default();
        usage.apply_to(&mut read);
        assert_eq!((read.cache_write_tokens, read.cache_write_1h_tokens), (700, 400));
    }

    #[test]
    fn a_whole_message_is_read() {
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"thinking","thinking":"hm","signature":"sig"},
                       {"type":"redacted_thinking","data":"d"},
                       {"type":"text","text":"hi","citations":null},
                       {"type":"tool_use","id":"toolu_1","name":"f","input":{"a":1}},
                       {"type":"server_tool_use","id":"srv","name":"web_search","input":{}}],
            "stop_reason":"tool_use","stop_sequence":null,
            "usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":5}}"#;
        let message: WholeMessage = serde_json::from_str(body).expect("parses");
        assert_eq!(message.model.as_deref(), Some("claude-x"));
        assert_eq!(
            message.content,
            [
                WholeBlock::Thinking { thinking: "hm".into(), signature: "sig".into() },
                WholeBlock::RedactedThinking { data: "d".into() },
                WholeBlock::Text { text: "hi".into() },
                WholeBlock::ToolUse {
                    id: "toolu_1".into(),
                    name: "f".into(),
                    input: serde_json::json!({"a": 1})
                },
                WholeBlock::Other,
            ]
        );
        assert_eq!(message.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!(message.stop_sequence, None);
        let mut usage = TokenUsage::default();
        message.usage.expect("usage").apply_to(&mut usage);
        assert_eq!(
            usage,
            TokenUsage {
                input_tokens: 3,
                output_tokens: 4,
                cache_read_tokens: 5,
                cache_write_tokens: 0,
                ..TokenUsage::default()
            }
        );
    }
}
