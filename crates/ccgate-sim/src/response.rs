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
    let thinking = reply
        .thinking
        .as_ref()
        .map(|t| json!({"type": "thinking", "thinking": t.text, "signature": t.signature}));
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": thinking.into_iter().chain([content]).collect::<Vec<_>>(),
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

/// The events that open a stream that never finishes: `message_start` and
/// an empty text block's `content_block_start`.
pub fn opening_steps(id: &str, model: &str, input_tokens: InputTokens) -> Vec<Step> {
    vec![
        message_start(id, model, input_tokens),
        Step::now(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ]
}

/// `message_start`, with the input usage and one output token, as the real
/// API reports.
fn message_start(id: &str, model: &str, input_tokens: InputTokens) -> Step {
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
    )
}

/// Every event of a complete streamed reply, in the order the real API sends them.
pub fn reply_steps(
    id: &str,
    model: &str,
    input_tokens: InputTokens,
    reply: &Reply,
    timing: Timing,
) -> Vec<Step> {
    let mut steps = vec![message_start(id, model, input_tokens)];
    let block_start = |index: usize, block: Value| {
        Step::now(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        )
    };
    let block_delta = |delay: Duration, index: usize, delta: Value| {
        Step::after(
            delay,
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    };
    let block_stop =
        |index: usize| Step::now("content_block_stop", json!({"type": "content_block_stop", "index": index}));
    let mut index = 0;
    let mut first_delay = timing.first_token;
    if let Some(thinking) = &reply.thinking {
        steps.push(block_start(0, json!({"type": "thinking", "thinking": "", "signature": ""})));
        steps.push(Step::now("ping", json!({"type": "ping"})));
        steps.push(block_delta(first_delay, 0, json!({"type": "thinking_delta", "thinking": thinking.text})));
        steps.push(block_delta(
            Duration::ZERO,
            0,
            json!({"type": "signature_delta", "signature": thinking.signature}),
        ));
        steps.push(block_stop(0));
        index = 1;
        first_delay = timing.between_chunks;
    }
    steps.push(block_start(
        index,
        match &reply.content {
            ReplyContent::ToolUse { id, name, .. } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": {}})
            }
            ReplyContent::Text(_) => json!({"type": "text", "text": ""}),
        },
    ));
    if index == 0 {
        steps.push(Step::now("ping", json!({"type": "ping"})));
    }
    let deltas: Vec<Value> = match &reply.content {
        ReplyContent::Text(text) => {
            chunks(text).into_iter().map(|chunk| json!({"type": "text_delta", "text": chunk})).collect()
        }
        ReplyContent::ToolUse { input, .. } => {
            vec![json!({"type": "input_json_delta", "partial_json": input.to_string()})]
        }
    };
    for (i, delta) in deltas.into_iter().enumerate() {
        let delay = if i == 0 { first_delay } else { timing.between_chunks };
        steps.push(block_delta(delay, index, delta));
    }
    steps.push(block_stop(index));
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
    fn thinking_comes_first_as_block_zero_with_its_signature() {
        let reply = Reply {
            content: ReplyContent::Text("Simulated reply: one".into()),
            stop_reason: StopReason::EndTurn,
            stop_sequence: None,
            thinking: Some(crate::thinking::for_prompt("one")),
            output_tokens: 20,
        };
        let steps = reply_steps("msg_1", "m", 3.into(), &reply, Timing::default());
        let data: Vec<Value> = steps
            .iter()
            .map(|s| {
                let text = std::str::from_utf8(&s.frame).unwrap();
                serde_json::from_str(text.lines().nth(1).unwrap().trim_start_matches("data: ")).unwrap()
            })
            .collect();
        let kinds: Vec<String> = data
            .iter()
            .map(|d| {
                let delta = d["delta"]["type"].as_str().or(d["content_block"]["type"].as_str());
                format!(
                    "{}{}",
                    d["type"].as_str().unwrap(),
                    delta.map(|k| format!(":{k}")).unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start:thinking",
                "ping",
                "content_block_delta:thinking_delta",
                "content_block_delta:signature_delta",
                "content_block_stop",
                "content_block_start:text",
                "content_block_delta:text_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(data[4]["delta"]["signature"], reply.thinking.as_ref().unwrap().signature.as_str());
        assert_eq!((data[6]["index"].as_u64(), data[7]["index"].as_u64()), (Some(1), Some(1)));
        let message = message_json("msg_1", "m", 3.into(), &reply);
        assert_eq!(message["content"][0]["type"], "thinking");
        assert_eq!(message["content"][1]["text"], "Simulated reply: one");
    }

    #[test]
    fn stream_events_come_in_api_order() {
        let reply = Reply {
            content: ReplyContent::Text("Simulated reply: one two three four".into()),
            stop_reason: StopReason::EndTurn,
            stop_sequence: None,
            thinking: None,
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
