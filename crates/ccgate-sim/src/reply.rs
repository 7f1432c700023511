//! Deciding what one request gets back (a reply, a failure or a hang) as a
//! pure function of the request, its directives and the start-up config.

use std::time::Duration;

use serde_json::Value;

use crate::config::SimConfig;
use crate::directives::Parsed;
use crate::error::ApiError;
use crate::request::MessagesRequest;
use crate::thinking::{self, Thinking};
use crate::tokens;

/// Every simulated text reply starts with this.
pub const PREFIX: &str = "Simulated reply:";
/// How many words of the prompt an echo reply repeats.
pub const ECHO_WORDS: usize = 40;
/// How much of a tool result a reply quotes.
pub const TOOL_RESULT_CHARS: usize = 200;

/// What the server will do with one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub model: String,
    pub stream: bool,
    pub input_tokens: InputTokens,
    pub timing: Timing,
    pub outcome: Outcome,
}

/// The input side of a reply's usage: tokens read fresh, and those the
/// `[sim:cache_read=N]` / `[sim:cache_write=N]` directives report as cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputTokens {
    pub fresh: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl From<u64> for InputTokens {
    fn from(fresh: u64) -> Self {
        Self { fresh, ..Self::default() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timing {
    /// Before the first content delta.
    pub first_token: Duration,
    /// Between later content deltas.
    pub between_chunks: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Fail(ApiError),
    /// Start the reply and never finish it.
    Hang,
    Reply(Reply),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub content: ReplyContent,
    pub stop_reason: StopReason,
    /// Which of the request's `stop_sequences` ended the reply.
    pub stop_sequence: Option<String>,
    /// The signed thinking before the answer, when the request asked for it.
    pub thinking: Option<Thinking>,
    /// Thinking included.
    pub output_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReplyContent {
    Text(String),
    ToolUse { id: String, name: String, input: Value },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::ToolUse => "tool_use",
        }
    }
}

/// Plans the answer to `request`, whose prompt parsed to `parsed`.
/// `first_fail_once` says whether this is the first request carrying its
/// `[sim:fail_once=KEY]` key (the only fact that needs server memory).
pub fn plan(request: &MessagesRequest, parsed: &Parsed, config: &SimConfig, first_fail_once: bool) -> Plan {
    let directives = &parsed.directives;
    let timing = Timing {
        first_token: Duration::from_millis(directives.first_token_ms.unwrap_or(config.first_token_delay_ms)),
        between_chunks: Duration::from_millis(directives.delay_ms.unwrap_or(config.default_delay_ms)),
    };
    let outcome = if let Some(code) = directives.status {
        Outcome::Fail(ApiError::simulated(code))
    } else if directives.fail_model.as_deref() == Some(request.model.as_str()) {
        Outcome::Fail(ApiError::simulated(529))
    } else if first_fail_once {
        // retry-after 0 lets a retrying client come straight back.
        Outcome::Fail(ApiError::simulated(529).with_retry_after(0))
    } else if let Some(code) = config.fail_status {
        Outcome::Fail(ApiError::simulated(code))
    } else if directives.hang || config.hang {
        Outcome::Hang
    } else {
        let mut reply = reply(request, parsed);
        if thinking::requested(request) {
            let thought = thinking::for_prompt(&parsed.text);
            reply.output_tokens += tokens::for_text(&thought.text);
            reply.thinking = Some(thought);
        }
        Outcome::Reply(reply)
    };
    Plan {
        model: request.model.clone(),
        stream: request.stream,
        input_tokens: InputTokens {
            fresh: if directives.byte_tokens {
                tokens::input_per_byte(request)
            } else {
                tokens::input(request)
            },
            cache_read: directives.cache_read.unwrap_or(0),
            cache_write: directives.cache_write.unwrap_or(0),
        },
        timing,
        outcome,
    }
}

fn reply(request: &MessagesRequest, parsed: &Parsed) -> Reply {
    // The scripted tools are used one per turn; each turn that returned a
    // tool result moves on to the next.
    let next_tool = parsed.directives.tools.get(request.tool_results_in_exchange());
    // Claude Code with `--json-schema` offers this tool and asks the model
    // to answer through it: its input is the answer.
    let pending = request.pending_tool_result();
    let structured = crate::schema::output_tool(request.tools.as_deref()).filter(|_| next_tool.is_none());
    if let (Some(schema), None) = (structured, &pending) {
        let input = crate::schema::instance(schema);
        let output_tokens = tokens::for_chars(input.to_string().chars().count());
        return tool_use(request, crate::schema::OUTPUT_TOOL.to_string(), input, output_tokens);
    }
    if let (Some(result), None) = (pending, next_tool) {
        let quoted: String = result.chars().take(TOOL_RESULT_CHARS).collect();
        return text_reply(format!("{PREFIX} tool result: {quoted}"), request);
    }
    if let Some(tool) = next_tool {
        let output_tokens =
            tokens::for_chars(tool.name.chars().count() + tool.input.to_string().chars().count());
        return tool_use(request, tool.name.clone(), tool.input.clone(), output_tokens);
    }
    if let Some(schema) = crate::schema::requested(request.output_config.as_ref()) {
        return text_reply(crate::schema::instance(schema).to_string(), request);
    }
    let words: Vec<String> = match parsed.directives.words {
        Some(n) => (1..=n).map(|i| format!("w{i}")).collect(),
        None => parsed.text.split_whitespace().take(ECHO_WORDS).map(str::to_owned).collect(),
    };
    let text = if words.is_empty() { PREFIX.to_owned() } else { format!("{PREFIX} {}", words.join(" ")) };
    text_reply(text, request)
}

/// A reply that calls `name` with `input`.
fn tool_use(request: &MessagesRequest, name: String, input: Value, output_tokens: u64) -> Reply {
    Reply {
        content: ReplyContent::ToolUse {
            // Each turn adds messages, so the count is unique within a conversation
            // and keeps the reply a function of the request alone.
            id: format!("toolu_sim_{}", request.messages.len()),
            name,
            input,
        },
        stop_reason: StopReason::ToolUse,
        stop_sequence: None,
        thinking: None,
        output_tokens: output_tokens.max(1),
    }
}

/// A text reply, ended as the model would be: before the first of the
/// request's stop sequences, or at `max_tokens`, whichever comes first.
fn text_reply(text: String, request: &MessagesRequest) -> Reply {
    let keep = request
        .max_tokens
        .filter(|max| tokens::for_text(&text) > *max)
        .map(|max| usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX));
    let stop = request
        .stop_sequences
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|at| (text[..at].chars().count(), s)))
        .min_by_key(|(at, _)| *at)
        .filter(|(at, s)| keep.is_none_or(|keep| at + s.chars().count() <= keep));
    let (text, stop_reason, stop_sequence) = match (stop, keep) {
        (Some((at, sequence)), _) => {
            (text.chars().take(at).collect(), StopReason::StopSequence, Some(sequence.clone()))
        }
        (None, Some(keep)) => (text.chars().take(keep).collect(), StopReason::MaxTokens, None),
        (None, None) => (text, StopReason::EndTurn, None),
    };
    Reply {
        output_tokens: tokens::for_text(&text),
        content: ReplyContent::Text(text),
        stop_reason,
        stop_sequence,
        thinking: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directives;
    use serde_json::json;

    fn plan_for(body: Value, config: &SimConfig) -> Plan {
        let request: MessagesRequest = serde_json::from_value(body).unwrap();
        let parsed = directives::parse(&request.last_user_text()).unwrap();
        plan(&request, &parsed, config, false)
    }

    fn user(text: &str) -> Value {
        json!({"model": "claude-x", "max_tokens": 1000, "messages": [{"role": "user", "content": text}]})
    }

    fn text_of(plan: &Plan) -> (&str, StopReason, u64) {
        match &plan.outcome {
            Outcome::Reply(Reply {
                content: ReplyContent::Text(text), stop_reason, output_tokens, ..
            }) => (text, *stop_reason, *output_tokens),
            other => panic!("expected a text reply, got {other:?}"),
        }
    }

    #[test]
    fn echoes_the_prompt() {
        let plan = plan_for(user("What is 2+2?"), &SimConfig::default());
        assert_eq!(text_of(&plan), ("Simulated reply: What is 2+2?", StopReason::EndTurn, 8));
        assert_eq!(plan.model, "claude-x");
    }

    #[test]
    fn echo_stops_after_forty_words() {
        let prompt: Vec<String> = (0..50).map(|i| format!("x{i}")).collect();
        let plan = plan_for(user(&prompt.join(" ")), &SimConfig::default());
        let (text, _, _) = text_of(&plan);
        assert_eq!(text.split_whitespace().count(), 2 + ECHO_WORDS);
        assert!(text.ends_with(" x39"));
    }

    #[test]
    fn words_directive_sets_the_length() {
        let plan = plan_for(user("[sim:words=5] ignored"), &SimConfig::default());
        assert_eq!(text_of(&plan).0, "Simulated reply: w1 w2 w3 w4 w5");
    }

    #[test]
    fn a_stop_sequence_ends_the_reply_before_it() {
        let mut body = user("[sim:words=12]");
        body["stop_sequences"] = json!(["never", "w9", " w5"]);
        let plan = plan_for(body, &SimConfig::default());
        let Outcome::Reply(reply) = &plan.outcome else { panic!("{plan:?}") };
        assert_eq!(reply.content, ReplyContent::Text("Simulated reply: w1 w2 w3 w4".into()));
        assert_eq!(
            (reply.stop_reason, reply.stop_sequence.as_deref()),
            (StopReason::StopSequence, Some(" w5"))
        );
        assert_eq!(reply.output_tokens, tokens::for_text("Simulated reply: w1 w2 w3 w4"));

        // A stop sequence past the output cap: the cap ends it first.
        let mut body = user("[sim:words=100]");
        body["max_tokens"] = json!(10);
        body["stop_sequences"] = json!(["w90"]);
        let (_, stop, tokens) = text_of(&plan_for(body, &SimConfig::default()));
        assert_eq!((stop, tokens), (StopReason::MaxTokens, 10));
    }

    #[test]
    fn max_tokens_truncates() {
        let mut body = user("[sim:words=100]");
        body["max_tokens"] = json!(10);
        let plan = plan_for(body, &SimConfig::default());
        let (text, stop, tokens) = text_of(&plan);
        assert_eq!((text.chars().count(), stop, tokens), (40, StopReason::MaxTokens, 10));
    }

    #[test]
    fn directives_override_config() {
        let config =
            SimConfig { default_delay_ms: 7, first_token_delay_ms: 9, fail_status: Some(500), hang: false };
        let failing = plan_for(user("hi"), &config);
        assert_eq!(failing.outcome, Outcome::Fail(ApiError::simulated(500)));
        assert_eq!(failing.timing.between_chunks, Duration::from_millis(7));
        let plan = plan_for(user("[sim:status=429][sim:delay_ms=1][sim:first_token_ms=2]"), &config);
        assert_eq!(plan.outcome, Outcome::Fail(ApiError::simulated(429)));
        assert_eq!(
            plan.timing,
            Timing { first_token: Duration::from_millis(2), between_chunks: Duration::from_millis(1) }
        );
    }

    #[test]
    fn fail_model_fails_only_that_model_and_cache_directives_report_usage() {
        let prompt = "[sim:fail_model=claude-x][sim:cache_read=70][sim:cache_write=9] hi";
        let failing = plan_for(user(prompt), &SimConfig::default());
        assert_eq!(failing.outcome, Outcome::Fail(ApiError::simulated(529)));
        let mut other = user(prompt);
        other["model"] = json!("claude-y");
        let answering = plan_for(other, &SimConfig::default());
        assert!(matches!(answering.outcome, Outcome::Reply(_)));
        assert_eq!((answering.input_tokens.cache_read, answering.input_tokens.cache_write), (70, 9));
    }

    #[test]
    fn several_tool_directives_are_used_one_per_turn() {
        let prompt = r#"[sim:tool=Read {"file_path":"/a"}] [sim:tool=Write {"file_path":"/b"}] copy it"#;
        let turn = |results: usize| {
            let mut messages = vec![json!({"role": "user", "content": prompt})];
            for i in 0..results {
                messages.push(json!({"role": "assistant", "content": [
                    {"type": "tool_use", "id": format!("t{i}"), "name": "X", "input": {}}]}));
                messages.push(json!({"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": format!("t{i}"), "content": format!("result {i}")}]}));
            }
            plan_for(json!({"model": "m", "messages": messages}), &SimConfig::default())
        };
        let tool_of = |plan: &Plan| match &plan.outcome {
            Outcome::Reply(Reply { content: ReplyContent::ToolUse { name, .. }, .. }) => name.clone(),
            other => panic!("expected a tool use, got {other:?}"),
        };
        assert_eq!(tool_of(&turn(0)), "Read");
        assert_eq!(tool_of(&turn(1)), "Write");
        assert_eq!(text_of(&turn(2)).0, "Simulated reply: tool result: result 1");
    }

    #[test]
    fn tool_directive_then_tool_result() {
        let first = plan_for(user(r#"[sim:tool=Read {"file_path":"/a"}] read it"#), &SimConfig::default());
        let Outcome::Reply(reply) = &first.outcome else {
            panic!("expected a reply, got {:?}", first.outcome)
        };
        assert_eq!(reply.stop_reason, StopReason::ToolUse);
        assert_eq!(
            reply.content,
            ReplyContent::ToolUse {
                id: "toolu_sim_1".into(),
                name: "Read".into(),
                input: json!({"file_path": "/a"})
            }
        );
        let second = plan_for(
            json!({"model": "m", "messages": [
                {"role": "user", "content": r#"[sim:tool=Read {"file_path":"/a"}] read it"#},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_sim_1", "name": "Read", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_sim_1", "content": "1\thello"}]}
            ]}),
            &SimConfig::default(),
        );
        assert_eq!(text_of(&second).0, "Simulated reply: tool result: 1\thello");
        assert_eq!(text_of(&second).1, StopReason::EndTurn);
    }
}
