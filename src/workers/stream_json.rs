//! Parses the CLI's `--output-format stream-json` lines into the few facts
//! the gateway needs. Unknown line types are ignored: the CLI adds new ones
//! between versions, and none of them should break a run.

use serde::Deserialize;
use serde_json::Value;

use super::ThinkingPart;
use crate::pricing::TokenUsage;

#[derive(Debug, Clone, PartialEq)]
pub enum CliLine {
    /// `system/init`: the session and the model the CLI resolved.
    Init {
        session_id: Option<String>,
        model: Option<String>,
    },
    /// An upstream message began (one per turn).
    MessageStart {
        model: Option<String>,
        usage: TokenUsage,
    },
    TextDelta(String),
    /// A part of the model's extended thinking.
    Thinking(ThinkingPart),
    /// An upstream message ended; `output_tokens` is its final count.
    MessageDelta {
        output_tokens: Option<u64>,
        stop_reason: Option<String>,
    },
    /// A whole assistant message. Its text was normally streamed already as
    /// deltas; it matters only when no deltas came (no partial messages, or a
    /// synthetic error message).
    Assistant {
        message_id: Option<String>,
        model: Option<String>,
        text: String,
        tool_uses: Vec<ToolUse>,
    },
    /// A `user` line: what the CLI sends back to the model after running
    /// tools (one `tool_result` block per tool).
    ToolResults(Vec<ToolResult>),
    Result(CliResult),
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub tool_use_id: String,
    pub is_error: bool,
    /// The result's text (text parts joined when it came in parts).
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    pub id: String,
    pub name: String,
    pub input: Value,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CliResult {
    pub is_error: bool,
    pub subtype: String,
    pub api_error_status: Option<u16>,
    pub result: Option<String>,
    pub session_id: Option<String>,
    pub total_cost_usd: f64,
    pub usage: TokenUsage,
    pub models: Vec<String>,
    pub num_turns: u64,
    pub stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: u64,
    #[serde(default)]
    cache_creation: Option<super::messages_sse::CacheCreation>,
}

impl From<Usage> for TokenUsage {
    fn from(u: Usage) -> TokenUsage {
        TokenUsage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_tokens: u.cache_read_input_tokens,
            cache_write_tokens: u.cache_creation_input_tokens,
            cache_write_1h_tokens: u.cache_creation.and_then(|c| c.ephemeral_1h_input_tokens).unwrap_or(0),
        }
    }
}

fn usage_of(value: Option<&Value>) -> TokenUsage {
    value
        .cloned()
        .and_then(|v| serde_json::from_value::<Usage>(v).ok())
        .map(TokenUsage::from)
        .unwrap_or_default()
}

fn str_of(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Parses one line. Returns `None` for a line that is not JSON at all (the
/// CLI prints nothing else on stdout, so such a line is noise to log).
pub fn parse_line(line: &str) -> Option<CliLine> {
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    Some(match value.get("type").and_then(Value::as_str) {
        Some("system") if value.get("subtype").and_then(Value::as_str) == Some("init") => {
            CliLine::Init { session_id: str_of(&value, "session_id"), model: str_of(&value, "model") }
        }
        Some("stream_event") => value.get("event").map(parse_stream_event).unwrap_or(CliLine::Other),
        Some("assistant") => parse_assistant(value.get("message").unwrap_or(&Value::Null)),
        Some("user") => parse_tool_results(value.get("message").unwrap_or(&Value::Null)),
        Some("result") => CliLine::Result(parse_result(&value)),
        _ => CliLine::Other,
    })
}

fn parse_stream_event(event: &Value) -> CliLine {
    match event.get("type").and_then(Value::as_str) {
        Some("message_start") => {
            let message = event.get("message").unwrap_or(&Value::Null);
            CliLine::MessageStart { model: str_of(message, "model"), usage: usage_of(message.get("usage")) }
        }
        Some("content_block_start") => {
            let block = event.get("content_block").unwrap_or(&Value::Null);
            match block.get("type").and_then(Value::as_str) {
                Some("thinking") => CliLine::Thinking(ThinkingPart::Start {
                    thinking: str_of(block, "thinking").unwrap_or_default(),
                }),
                Some("redacted_thinking") => CliLine::Thinking(ThinkingPart::Redacted {
                    data: str_of(block, "data").unwrap_or_default(),
                }),
                _ => CliLine::Other,
            }
        }
        Some("content_block_delta") => {
            let delta = event.get("delta").unwrap_or(&Value::Null);
            match delta.get("type").and_then(Value::as_str) {
                Some("text_delta") => str_of(delta, "text").map_or(CliLine::Other, CliLine::TextDelta),
                Some("thinking_delta") => str_of(delta, "thinking")
                    .map_or(CliLine::Other, |t| CliLine::Thinking(ThinkingPart::Text(t))),
                Some("signature_delta") => str_of(delta, "signature")
                    .map_or(CliLine::Other, |s| CliLine::Thinking(ThinkingPart::Signature(s))),
                _ => CliLine::Other,
            }
        }
        Some("message_delta") => CliLine::MessageDelta {
            output_tokens: event.get("usage").and_then(|u| u.get("output_tokens")).and_then(Value::as_u64),
            stop_reason: event.get("delta").and_then(|d| str_of(d, "stop_reason")),
        },
        _ => CliLine::Other,
    }
}

fn parse_assistant(message: &Value) -> CliLine {
    let mut text = String::new();
    let mut tool_uses = Vec::new();
    for block in message.get("content").and_then(Value::as_array).into_iter().flatten() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => tool_uses.push(ToolUse {
                id: str_of(block, "id").unwrap_or_default(),
                name: str_of(block, "name").unwrap_or_default(),
                input: block.get("input").cloned().unwrap_or(Value::Null),
            }),
            _ => {}
        }
    }
    CliLine::Assistant { message_id: str_of(message, "id"), model: str_of(message, "model"), text, tool_uses }
}

fn parse_tool_results(message: &Value) -> CliLine {
    let results: Vec<ToolResult> = message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|block| ToolResult {
            tool_use_id: str_of(block, "tool_use_id").unwrap_or_default(),
            is_error: block.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            content: match block.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            },
        })
        .collect();
    if results.is_empty() {
        CliLine::Other
    } else {
        CliLine::ToolResults(results)
    }
}

fn parse_result(value: &Value) -> CliResult {
    let models = value
        .get("modelUsage")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    CliResult {
        is_error: value.get("is_error").and_then(Value::as_bool).unwrap_or(true),
        subtype: str_of(value, "subtype").unwrap_or_default(),
        api_error_status: value
            .get("api_error_status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok()),
        result: str_of(value, "result"),
        session_id: str_of(value, "session_id"),
        total_cost_usd: value.get("total_cost_usd").and_then(Value::as_f64).unwrap_or(0.0),
        usage: usage_of(value.get("usage")),
        models,
        num_turns: value.get("num_turns").and_then(Value::as_u64).unwrap_or(0),
        stop_reason: str_of(value, "stop_reason"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/claude-cli");

    fn fixture(name: &str) -> Vec<CliLine> {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{name}"))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        text.lines().filter(|l| !l.trim().is_empty()).map(|l| parse_line(l).expect("JSON line")).collect()
    }

    fn result_of(lines: &[CliLine]) -> CliResult {
        match lines.last() {
            Some(CliLine::Result(r)) => r.clone(),
            other => panic!("last line is not a result: {other:?}"),
        }
    }

    #[test]
    fn parses_a_plain_stream() {
        let lines = fixture("cli-stream-json.jsonl");
        assert_eq!(
            lines[0],
            CliLine::Init {
                session_id: Some("ed38ed90-b34a-43c8-a8d4-207556c4fd81".into()),
                model: Some("claude-sonnet-5".into())
            }
        );
        assert!(matches!(&lines[1], CliLine::Assistant { text, .. } if text.starts_with("MOCK REPLY to:")));
        let result = result_of(&lines);
        assert!(!result.is_error);
        assert_eq!(result.subtype, "success");
        assert_eq!(result.total_cost_usd, 0.00081);
        assert_eq!(result.usage.input_tokens, 120);
        assert_eq!(result.usage.output_tokens, 30);
        assert_eq!(result.models, vec!["claude-sonnet-5".to_string()]);
        assert_eq!(result.num_turns, 1);
    }

    #[test]
    fn partial_messages_give_deltas_that_add_up_to_the_result() {
        let lines = fixture("cli-stream-json-partial.jsonl");
        let streamed: String = lines
            .iter()
            .filter_map(|l| match l {
                CliLine::TextDelta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        let result = result_of(&lines);
        assert_eq!(Some(streamed), result.result);
        assert!(lines
            .iter()
            .any(|l| matches!(l, CliLine::MessageStart { usage, .. } if usage.input_tokens == 120)));
        assert!(lines.iter().any(
            |l| matches!(l, CliLine::MessageDelta { output_tokens: Some(30), stop_reason: Some(s) } if s == "end_turn")
        ));
    }

    #[test]
    fn upstream_error_is_judged_by_is_error_not_subtype() {
        let lines = fixture("cli-stream-json-api-error-400.jsonl");
        let result = result_of(&lines);
        assert_eq!(result.subtype, "success");
        assert!(result.is_error);
        assert_eq!(result.api_error_status, Some(400));
        assert_eq!(result.result.as_deref(), Some("API Error: 400 mock invalid_request_error"));
        assert!(lines
            .iter()
            .any(|l| matches!(l, CliLine::Assistant { model: Some(m), .. } if m == "<synthetic>")));
    }

    #[test]
    fn error_results_still_carry_their_cost() {
        let text = std::fs::read_to_string(format!("{FIXTURES}/cli-json-error-max-budget.json")).unwrap();
        let Some(CliLine::Result(result)) = parse_line(&text) else { panic!("not a result") };
        assert!(result.is_error);
        assert_eq!(result.subtype, "error_max_budget_usd");
        assert_eq!(result.total_cost_usd, 0.00135);
        assert_eq!(result.result, None);
    }

    /// Lines Claude Code 2.1.197 printed with `MAX_THINKING_TOKENS` set
    /// (session fields left out).
    #[test]
    fn thinking_blocks_are_parsed_from_stream_events() {
        let lines = [
            r#"{"type":"stream_event","event":{"content_block":{"signature":"","thinking":"","type":"thinking"},"index":0,"type":"content_block_start"}}"#,
            r#"{"type":"stream_event","event":{"delta":{"thinking":"Simulated thinking.","type":"thinking_delta"},"index":0,"type":"content_block_delta"}}"#,
            r#"{"type":"stream_event","event":{"delta":{"signature":"sim_sig_0830","type":"signature_delta"},"index":0,"type":"content_block_delta"}}"#,
            r#"{"type":"stream_event","event":{"content_block":{"data":"opaque","type":"redacted_thinking"},"index":1,"type":"content_block_start"}}"#,
            r#"{"type":"stream_event","event":{"content_block":{"text":"","type":"text"},"index":2,"type":"content_block_start"}}"#,
        ];
        let parsed: Vec<CliLine> = lines.iter().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!(
            parsed,
            [
                CliLine::Thinking(ThinkingPart::Start { thinking: String::new() }),
                CliLine::Thinking(ThinkingPart::Text("Simulated thinking.".into())),
                CliLine::Thinking(ThinkingPart::Signature("sim_sig_0830".into())),
                CliLine::Thinking(ThinkingPart::Redacted { data: "opaque".into() }),
                CliLine::Other,
            ]
        );
    }

    #[test]
    fn json_success_output_is_a_result() {
        let text = std::fs::read_to_string(format!("{FIXTURES}/cli-json-success.json")).unwrap();
        let Some(CliLine::Result(result)) = parse_line(&text) else { panic!("not a result") };
        assert!(!result.is_error);
        assert_eq!(result.total_cost_usd, 0.00027);
    }

    #[test]
    fn tool_uses_and_their_results_are_parsed() {
        let assistant = r#"{"type":"assistant","message":{"id":"m1","model":"claude-haiku-4-5-20251001","content":[{"type":"tool_use","id":"toolu_1","name":"Read","input":{"file_path":"/a"}}]}}"#;
        let Some(CliLine::Assistant { tool_uses, text, .. }) = parse_line(assistant) else { panic!() };
        assert_eq!(text, "");
        assert_eq!(
            tool_uses,
            vec![ToolUse {
                id: "toolu_1".into(),
                name: "Read".into(),
                input: serde_json::json!({"file_path": "/a"})
            }]
        );
        let cases = [
            (
                r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_1","type":"tool_result","content":"1\thello"}]}}"#,
                Some(("toolu_1", false, "1\thello")),
            ),
            (
                r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t2","is_error":true,"content":[{"type":"text","text":"denied"},{"type":"text","text":"again"}]}]}}"#,
                Some(("t2", true, "denied\nagain")),
            ),
            (r#"{"type":"user","message":{"content":"plain text"}}"#, None),
            (r#"{"type":"user"}"#, None),
        ];
        for (line, expected) in cases {
            match (parse_line(line), expected) {
                (Some(CliLine::ToolResults(results)), Some((id, is_error, content))) => assert_eq!(
                    results,
                    vec![ToolResult { tool_use_id: id.into(), is_error, content: content.into() }]
                ),
                (Some(CliLine::Other), None) => {}
                (got, expected) => panic!("{line}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn tolerates_noise_and_unknown_lines() {
        assert_eq!(parse_line("not json"), None);
        assert_eq!(parse_line("{\"type\":\"system\",\"subtype\":\"status\"}"), Some(CliLine::Other));
        assert_eq!(parse_line("{\"type\":\"brand_new\"}"), Some(CliLine::Other));
        assert_eq!(parse_line("{}"), Some(CliLine::Other));
        // A result missing every field is an error with no cost, not a panic.
        let Some(CliLine::Result(r)) = parse_line("{\"type\":\"result\"}") else { panic!() };
        assert!(r.is_error);
        assert_eq!(r.total_cost_usd, 0.0);
    }
}
