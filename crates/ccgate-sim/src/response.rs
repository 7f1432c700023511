//! The outgoing side of the Messages API: the JSON message and the SSE events
//! a planned reply turns into.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::reply::{InputTokens, Reply, ReplyContent, Timing};

/// Words per `content_block_delta`, about what the real API sends.
const WORDS_PER_CHUNK: usize = 3;

/// A fresh message id in the API's `msg_` style.
pub fn message_id() -> String {
    format!("msg_sim_{}", Uuid::new_v4().simple())
}

/// The whole message, as a non-streaming request receives it.
pub fn message_json(id: &str, model: &str, input_tokens: InputTokens, reply: &Reply) -> Value {
    let content = match &reply.content {
        ReplyContent::Text(text) => json!({"type": "text", "text": text}),
        ReplyContent::ToolUse { id, name, input } => {
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
    };
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [content],
        "stop_reason": reply.stop_reason.as_str(),
        "stop_sequence": reply.stop_sequence,
        "usage": usage(input_tokens, reply.output_tokens),
    })
}

fn usage(input: InputTokens, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input.fresh,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": input.cache_write,
        "cache_read_input_tokens": input.cache_read,
    })
}

/// One SSE frame and how long to wait before sending it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub delay: Duration,
    pub frame: Bytes,
}

impl Step {
    fn now(event: &str, data: Value) -> Self {
        Self::after(Duration::ZERO, event, data)
    }

    fn after(delay: Duration, event: &str, data: Value) -> Self {
        Self { delay, frame: Bytes::from(format!("event: {event}\ndata: {data}\n\n")) }
    }
}

/// The events that open every stream: `message_start` (with the input usage
/// and one output token, as the real API reports) and `content_block_start`.
pub fn opening_steps(id: &str, model: &str, input_tokens: InputTokens, reply: Option<&Reply>) -> Vec<Step> {
    let block = match reply.map(|r| &r.content) {
        Some(ReplyContent::ToolUse { id, name, .. }) => {
            json!({"type": "tool_use", "id": id, "name": name, "input": {}})
        }
        _ => json!({"type": "text", "text": ""}),
    };
    vec![
        Step::now(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage(input_tokens, 1),
            }}),
        ),
        Step::now(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
    ]
}

/// Every event of a complete streamed reply, in the order the real API sends them.
pub fn reply_steps(
    id: &str,
    model: &str,
    input_tokens: InputTokens,
    reply: &Reply,
    timing: Timing,
) -> Vec<Step> {
    let mut steps = opening_steps(id, model, input_tokens, Some(reply));
    steps.push(Step::now("ping", json!({"type": "ping"})));
    let deltas: Vec<Value> = match &reply.content {
        ReplyContent::Text(text) => {
            chunks(text).into_iter().map(|chunk| json!({"type": "text_delta", "text": chunk})).collect()
        }
        ReplyContent::ToolUse { input, .. } => {
            vec![json!({"type": "input_json_delta", "partial_json": input.to_string()})]
        }
    };
    for (i, delta) in deltas.into_iter().enumerate() {
        let delay = if i == 0 { timing.first_token } else { timing.between_chunks };
        steps.push(Step::after(
            delay,
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ));
    }
    steps.push(Step::now("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    steps.push(Step::now(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason.as_str(), "stop_sequence": reply.stop_sequence},
            "usage": {"output_tokens": reply.output_tokens},
        }),
    ));
    steps.push(Step::now("message_stop", json!({"type": "message_stop"})));
    steps
}

/// How long a stream of `reply` takes, so a non-streaming answer arrives no sooner.
pub fn duration(reply: &Reply, timing: Timing) -> Duration {
    let deltas = match &reply.content {
        ReplyContent::Text(text) => chunks(text).len(),
        ReplyContent::ToolUse { .. } => 1,
    };
    let later = u32::try_from(deltas.saturating_sub(1)).unwrap_or(u32::MAX);
    timing.first_token + timing.between_chunks.saturating_mul(later)
}

/// Splits text into pieces of about three words that concatenate back to it exactly.
pub fn chunks(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut words = 0;
    for piece in text.split_inclusive(char::is_whitespace) {
        current.push_str(piece);
        if !piece.trim().is_empty() {
            words += 1;
        }
        if words == WORDS_PER_CHUNK {
            chunks.push(std::mem::take(&mut current));
            words = 0;
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::StopReason;

    #[test]
    fn chunks_are_three_words_and_lossless() {
        let text = "Simulated reply: a b\tc  d\ne f";
        let chunks = chunks(text);
        assert_eq!(chunks, ["Simulated reply: a ", "b\tc  d\n", "e f"]);
        assert_eq!(chunks.concat(), text);
        assert!(super::chunks("").is_empty());
    }

    #[test]
    fn stream_events_come_in_api_order() {
        let reply = Reply {
            content: ReplyContent::Text("Simulated reply: one two three four".into()),
            stop_reason: StopReason::EndTurn,
            stop_sequence: None,
            output_tokens: 9,
        };
        let timing =
            Timing { first_token: Duration::from_millis(50), between_chunks: Duration::from_millis(5) };
        let steps = reply_steps("msg_1", "m", 3.into(), &reply, timing);
        let names: Vec<String> = steps
            .iter()
            .map(|s| {
                let text = std::str::from_utf8(&s.frame).unwrap();
                text.lines().next().unwrap().trim_start_matches("event: ").to_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let delays: Vec<u128> = steps.iter().map(|s| s.delay.as_millis()).collect();
        assert_eq!(delays, [0, 0, 0, 50, 5, 0, 0, 0]);
        assert_eq!(duration(&reply, timing), Duration::from_millis(55));
    }
}
