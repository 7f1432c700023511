//! Extended thinking, as the API does it: a request with `thinking` enabled
//! (or `adaptive`) gets a `thinking` block before its answer, signed; a
//! conversation that continues a tool call must hand that block back
//! unchanged at the start of the assistant turn, or the request is refused.

use serde_json::Value;

use crate::error::ApiError;
use crate::request::{Block, Content, MessagesRequest};

/// The fewest thinking tokens the API lets a request budget.
const MIN_BUDGET: u64 = 1024;

/// A thinking block of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thinking {
    pub text: String,
    pub signature: String,
}

/// Whether the request asks for thinking.
pub fn requested(request: &MessagesRequest) -> bool {
    matches!(kind(request), Some("enabled" | "adaptive"))
}

fn kind(request: &MessagesRequest) -> Option<&str> {
    request.thinking.as_ref().and_then(|t| t.get("type")).and_then(Value::as_str)
}

/// The thinking a reply to `prompt` starts with.
pub fn for_prompt(prompt: &str) -> Thinking {
    let words = prompt.split_whitespace().count();
    let text = format!("Simulated thinking: the request has {words} words.");
    Thinking { signature: signature(&text), text }
}

/// What the API checks of thinking in a request.
pub fn check(request: &MessagesRequest) -> Result<(), ApiError> {
    match kind(request) {
        None | Some("disabled" | "adaptive") => {}
        Some("enabled") => {
            let budget =
                request.thinking.as_ref().and_then(|t| t.get("budget_tokens")).and_then(Value::as_u64);
            let Some(budget) = budget.filter(|b| *b >= MIN_BUDGET) else {
                return Err(ApiError::invalid_request(format!(
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_BUDGET}"
                )));
            };
            if request.max_tokens.is_some_and(|max| budget >= max) {
                return Err(ApiError::invalid_request(
                    "`max_tokens` must be greater than `thinking.budget_tokens`",
                ));
            }
        }
        Some(other) => {
            return Err(ApiError::invalid_request(format!("thinking.type: unknown type {other:?}")))
        }
    }
    for (i, message) in request.messages.iter().enumerate() {
        for block in blocks(&message.content) {
            if let Block::Thinking { thinking, signature } = block {
                if signature.as_deref() != Some(self::signature(thinking).as_str()) {
                    return Err(ApiError::invalid_request(format!(
                        "messages.{i}.content: Invalid `signature` in `thinking` block"
                    )));
                }
            }
        }
    }
    if !requested(request) {
        return Ok(());
    }
    // The assistant turn that called a tool whose result is being returned.
    let last_assistant = request.messages.iter().rev().find(|m| m.role == "assistant");
    if let Some(turn) = last_assistant {
        let turn_blocks = blocks(&turn.content);
        let calls_tool = turn_blocks.iter().any(|b| matches!(b, Block::ToolUse { .. }));
        let starts_thinking =
            matches!(turn_blocks.first(), Some(Block::Thinking { .. } | Block::RedactedThinking));
        if calls_tool && !starts_thinking {
            return Err(ApiError::invalid_request(
                "messages: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is \
                 enabled, a final `assistant` message must start with a thinking block",
            ));
        }
    }
    Ok(())
}

fn blocks(content: &Content) -> &[Block] {
    match content {
        Content::Text(_) => &[],
        Content::Blocks(blocks) => blocks,
    }
}

/// The simulator's own signature of a thinking text (FNV-1a), so that it
/// can tell a block it wrote from one changed or made up.
fn signature(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("sim_sig_{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> MessagesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_tool_turn_must_hand_its_signed_thinking_back() {
        let thinking = for_prompt("read the file");
        let signed = json!({"type": "thinking", "thinking": thinking.text, "signature": thinking.signature});
        let call = json!({"type": "tool_use", "id": "t1", "name": "Read", "input": {}});
        let result = json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]});
        let body = |assistant: Value| {
            json!({"model": "m", "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2000},
                   "messages": [{"role": "user", "content": "read the file"},
                                {"role": "assistant", "content": assistant}, result]})
        };
        assert!(check(&request(body(json!([signed, call])))).is_ok());
        let refused = check(&request(body(json!([call])))).unwrap_err();
        assert!(refused.message.contains("must start with a thinking block"), "{refused:?}");
        let forged = json!({"type": "thinking", "thinking": "other", "signature": thinking.signature});
        assert!(check(&request(body(json!([forged, call])))).unwrap_err().message.contains("signature"));
    }

    #[test]
    fn the_budget_is_checked() {
        let with = |thinking: Value| {
            check(&request(json!({"model": "m", "max_tokens": 2000, "thinking": thinking,
                                  "messages": [{"role": "user", "content": "hi"}]})))
        };
        assert!(with(json!({"type": "enabled", "budget_tokens": 1024})).is_ok());
        assert!(with(json!({"type": "adaptive"})).is_ok());
        assert!(with(json!({"type": "disabled"})).is_ok());
        assert!(with(json!({"type": "enabled", "budget_tokens": 100})).is_err());
        assert!(with(json!({"type": "enabled", "budget_tokens": 2000})).is_err());
        assert!(with(json!({"type": "sometimes"})).is_err());
    }
}
