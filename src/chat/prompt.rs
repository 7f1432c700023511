//! Turns a chat (system, user and assistant messages) into one CLI run:
//! system messages become the system prompt, earlier turns a transcript,
//! and the last user message the request itself.

use std::fmt::Write;

use super::content::{Image, ToolCall, ToolResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub text: String,
    /// Images attached to a user turn.
    pub images: Vec<Image>,
    /// Calls an assistant turn made to the client's tools.
    pub tool_calls: Vec<ToolCall>,
    /// The client's answers to tool calls, carried by a user turn.
    pub tool_results: Vec<ToolResult>,
    /// Anthropic's `cache_control` for the end of this turn (a prompt-cache
    /// breakpoint), when the client set one; the direct backend puts it on
    /// the turn's last block. The CLI caches on its own.
    pub cache: Option<serde_json::Value>,
    /// The reasoning an assistant turn began with, handed back as it came
    /// (the direct backend only; the CLI gets what was said, not how).
    pub thinking: Vec<super::Thinking>,
}

impl Message {
    /// A message of text alone.
    pub fn new(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            text: text.into(),
            images: Vec::new(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
            cache: None,
            thinking: Vec::new(),
        }
    }

    /// Whether the message uses client-side tools (calls or results).
    pub fn has_tool_use(&self) -> bool {
        !self.tool_calls.is_empty() || !self.tool_results.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub system: Option<String>,
    pub prompt: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PromptError {
    #[error("messages must contain at least one user message")]
    NoUserMessage,
    #[error("the last message must come from the user (it is an assistant message)")]
    EndsWithAssistant,
}

pub fn build(messages: &[Message]) -> Result<Prompt, PromptError> {
    let system: Vec<&str> =
        messages.iter().filter(|m| m.role == Role::System).map(|m| m.text.as_str()).collect();
    let turns: Vec<&Message> = messages.iter().filter(|m| m.role != Role::System).collect();
    let Some((last, earlier)) = turns.split_last() else { return Err(PromptError::NoUserMessage) };
    if last.role == Role::Assistant {
        return Err(PromptError::EndsWithAssistant);
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    if earlier.is_empty() {
        return Ok(Prompt { system, prompt: last.text.clone() });
    }
    // The CLI takes one prompt per run, so earlier turns travel as a tagged
    // transcript that the model can tell apart from the new request.
    let mut prompt = String::with_capacity(messages.iter().map(|m| m.text.len() + 32).sum());
    prompt.push_str("The conversation so far:\n\n<conversation>\n");
    for turn in earlier {
        let tag = if turn.role == Role::User { "user" } else { "assistant" };
        let _ = write!(prompt, "<{tag}>\n{}\n</{tag}>\n", turn.text);
    }
    prompt.push_str("</conversation>\n\nReply to the user's latest message:\n\n");
    prompt.push_str(&last.text);
    Ok(Prompt { system, prompt })
}

/// An upper bound on the tokens of a text, for budget reservations: one
/// token per byte of UTF-8. A tokenizer over bytes gives each token at
/// least one byte, so no text beats it: not dense punctuation, not base64
/// or hex, not a rare script that falls back to single bytes. Ordinary
/// text takes a quarter to a half of it (English prose about four bytes a
/// token, code three, CJK about three), and a reservation is released down
/// to the actual cost at settlement, so the margin only shows when a
/// budget is nearly spent.
pub fn token_upper_bound(text: &str) -> u64 {
    text.len() as u64
}

/// An estimate of the tokens of a text that over-counts ordinary text:
/// one token per 2.5 bytes of UTF-8. For checks that must not refuse
/// ordinary requests (a context window) and for what a run's first call
/// holds at the spend gate while under way; punctuation-dense text can
/// beat it.
pub fn token_estimate(text: &str) -> u64 {
    token_estimate_of_len(text.len())
}

/// `token_estimate` of a text `len` bytes long.
pub fn token_estimate_of_len(len: usize) -> u64 {
    (len as u64 * 2).div_ceil(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: Role, text: &str) -> Message {
        Message::new(role, text)
    }

    #[test]
    fn a_single_user_message_is_the_prompt() {
        let p = build(&[m(Role::User, "hello")]).unwrap();
        assert_eq!(p, Prompt { system: None, prompt: "hello".into() });
    }

    #[test]
    fn system_messages_become_the_system_prompt() {
        let p =
            build(&[m(Role::System, "be brief"), m(Role::System, "be kind"), m(Role::User, "hi")]).unwrap();
        assert_eq!(p.system.as_deref(), Some("be brief\n\nbe kind"));
        assert_eq!(p.prompt, "hi");
    }

    #[test]
    fn earlier_turns_become_a_transcript_in_order() {
        let p = build(&[
            m(Role::System, "sys"),
            m(Role::User, "first question"),
            m(Role::Assistant, "first answer"),
            m(Role::User, "second question"),
        ])
        .unwrap();
        let q1 = p.prompt.find("<user>\nfirst question\n</user>").unwrap();
        let a1 = p.prompt.find("<assistant>\nfirst answer\n</assistant>").unwrap();
        let q2 = p.prompt.rfind("second question").unwrap();
        assert!(q1 < a1 && a1 < q2, "{}", p.prompt);
        assert!(p.prompt.ends_with("second question"));
        assert!(!p.prompt.contains("sys"));
    }

    #[test]
    fn refuses_chats_without_a_final_user_message() {
        assert_eq!(build(&[]), Err(PromptError::NoUserMessage));
        assert_eq!(build(&[m(Role::System, "s")]), Err(PromptError::NoUserMessage));
        assert_eq!(
            build(&[m(Role::User, "q"), m(Role::Assistant, "a")]),
            Err(PromptError::EndsWithAssistant)
        );
    }

    #[test]
    fn token_estimate_never_undercounts_common_text() {
        // (text, tokens a real tokenizer gives at most)
        let cases = [("hello world", 2), ("日本語のテキスト", 8), ("fn main() { println!(\"hi\"); }", 12)];
        for (text, tokens) in cases {
            assert!(token_estimate(text) >= tokens, "{text}");
        }
    }

    #[test]
    fn token_bound_is_one_token_per_byte_which_dense_text_reaches() {
        // Punctuation that a tokenizer may split into one token each beats
        // the estimate, never the bound.
        let dense = "{};".repeat(100);
        assert!(token_estimate(&dense) < 300);
        assert_eq!(token_upper_bound(&dense), 300);
        assert_eq!(token_upper_bound("日本語"), 9);
    }
}
