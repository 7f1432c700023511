//! Parsing of the `[sim:...]` directives a prompt can carry to steer one reply.
//!
//! A directive that starts with `[sim:` but cannot be understood is an error
//! rather than plain text: a typo in a test prompt should fail loudly, not
//! silently fall back to the default behaviour.

use serde_json::Value;

/// Prefix that opens every directive.
const OPEN: &str = "[sim:";
/// Largest `[sim:words=N]` accepted; keeps one reply to a few megabytes.
pub const MAX_WORDS: u64 = 1_000_000;
/// Largest delay accepted, in milliseconds (ten minutes).
pub const MAX_DELAY_MS: u64 = 600_000;
/// Largest cache token count a directive may report.
pub const MAX_CACHE_TOKENS: u64 = 10_000_000;

/// Everything the directives in one prompt asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directives {
    /// `[sim:words=N]`: reply with exactly N numbered words.
    pub words: Option<u64>,
    /// `[sim:status=CODE]`: fail with this HTTP status.
    pub status: Option<u16>,
    /// `[sim:delay_ms=N]`: delay between stream chunks.
    pub delay_ms: Option<u64>,
    /// `[sim:first_token_ms=N]`: delay before the first chunk.
    pub first_token_ms: Option<u64>,
    /// `[sim:hang]`: never finish the reply.
    pub hang: bool,
    /// `[sim:fail_once=KEY]`: the first request carrying KEY is overloaded.
    pub fail_once: Option<String>,
    /// `[sim:tool=NAME {json}]`: answer with a `tool_use` block. Several
    /// are used in order, one per turn: the first tool, then (once its
    /// result is back) the second, and so on, then a text reply.
    pub tools: Vec<ToolCall>,
    /// `[sim:cache_read=N]`: report N input tokens as read from the cache.
    pub cache_read: Option<u64>,
    /// `[sim:cache_write=N]`: report N input tokens as written to the cache.
    pub cache_write: Option<u64>,
    /// `[sim:byte_tokens]`: count the request's input at one token per
    /// byte of its text, the most a byte-level tokenizer ever gives (dense
    /// punctuation, rare scripts), instead of one per four characters.
    /// All of the request's text counts so, a client's system prompt and
    /// tools too (and through the Claude Code CLI, the CLI's own prompt,
    /// which real tokenizers read as ordinary English).
    pub byte_tokens: bool,
    /// `[sim:fail_model=MODEL]`: requests for MODEL (its full id) are
    /// overloaded (529); other models answer, so a client can fall back.
    pub fail_model: Option<String>,
}

/// A scripted tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// Always a JSON object.
    pub input: Value,
}

/// A prompt split into its directives and the text around them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub directives: Directives,
    /// The prompt with every directive removed (each replaced by a space).
    pub text: String,
}

/// A directive that could not be understood; the message names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectiveError(pub String);

impl std::fmt::Display for DirectiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DirectiveError {}

/// Splits `prompt` into its directives and the remaining text.
pub fn parse(prompt: &str) -> Result<Parsed, DirectiveError> {
    let mut parsed = Parsed::default();
    let mut rest = prompt;
    while let Some(start) = rest.find(OPEN) {
        parsed.text.push_str(&rest[..start]);
        parsed.text.push(' ');
        let body = &rest[start + OPEN.len()..];
        let consumed = parse_one(body, &mut parsed.directives)?;
        rest = &body[consumed..];
    }
    parsed.text.push_str(rest);
    Ok(parsed)
}

/// Parses one directive whose text (after `[sim:`) starts `body`, and returns
/// how many bytes of `body` it used, closing `]` included.
fn parse_one(body: &str, into: &mut Directives) -> Result<usize, DirectiveError> {
    if let Some(tool) = body.strip_prefix("tool=") {
        let (call, used) = parse_tool(tool)?;
        into.tools.push(call);
        return Ok("tool=".len() + used);
    }
    let Some(end) = body.find(']') else {
        return Err(bad(body, "no closing `]`"));
    };
    let inner = &body[..end];
    let (key, value) = match inner.split_once('=') {
        Some((key, value)) => (key.trim(), Some(value.trim())),
        None => (inner.trim(), None),
    };
    match (key, value) {
        ("words", Some(v)) => into.words = Some(number(inner, v, MAX_WORDS)?),
        ("delay_ms", Some(v)) => into.delay_ms = Some(number(inner, v, MAX_DELAY_MS)?),
        ("first_token_ms", Some(v)) => into.first_token_ms = Some(number(inner, v, MAX_DELAY_MS)?),
        ("status", Some(v)) => into.status = Some(status(inner, v)?),
        ("hang", None) => into.hang = true,
        ("byte_tokens", None) => into.byte_tokens = true,
        ("fail_once", Some(v)) if !v.is_empty() => into.fail_once = Some(v.to_owned()),
        ("cache_read", Some(v)) => into.cache_read = Some(number(inner, v, MAX_CACHE_TOKENS)?),
        ("cache_write", Some(v)) => into.cache_write = Some(number(inner, v, MAX_CACHE_TOKENS)?),
        ("fail_model", Some(v)) if !v.is_empty() => into.fail_model = Some(v.to_owned()),
        _ => return Err(bad(inner, "unknown directive or missing value")),
    }
    Ok(end + 1)
}

/// Parses `NAME {json}]` or `NAME]`. The JSON is read with a real JSON parser
/// so a `]` inside a string value does not end the directive early.
fn parse_tool(body: &str) -> Result<(ToolCall, usize), DirectiveError> {
    let name_len = body.find(|c: char| c.is_whitespace() || c == ']' || c == '{').unwrap_or(body.len());
    let name = &body[..name_len];
    if name.is_empty() {
        return Err(bad(body, "tool directive needs a tool name"));
    }
    let after_name = &body[name_len..];
    let json_start = after_name.len() - after_name.trim_start().len();
    let json = &after_name[json_start..];
    let (input, json_len) = if json.starts_with('{') {
        let mut values = serde_json::Deserializer::from_str(json).into_iter::<Value>();
        match values.next() {
            Some(Ok(value)) => (value, values.byte_offset()),
            Some(Err(err)) => return Err(bad(body, &format!("tool input is not JSON: {err}"))),
            None => return Err(bad(body, "tool input is missing")),
        }
    } else {
        (Value::Object(Default::default()), 0)
    };
    let tail = &json[json_len..];
    let close = tail.len() - tail.trim_start().len();
    if !tail[close..].starts_with(']') {
        return Err(bad(body, "tool directive must end with `]` after the JSON input"));
    }
    let used = name_len + json_start + json_len + close + 1;
    let call = ToolCall { name: name.to_owned(), input };
    Ok((call, used))
}

fn number(inner: &str, value: &str, max: u64) -> Result<u64, DirectiveError> {
    match value.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(bad(inner, &format!("expected a whole number up to {max}"))),
    }
}

fn status(inner: &str, value: &str) -> Result<u16, DirectiveError> {
    match value.parse::<u16>() {
        Ok(code @ 400..=599) => Ok(code),
        _ => Err(bad(inner, "expected an HTTP error status from 400 to 599")),
    }
}

fn bad(text: &str, why: &str) -> DirectiveError {
    // Quote only the start of the directive: the rest of the prompt can be long.
    let shown: String = text.chars().take(60).collect();
    DirectiveError(format!("ccgate-sim: bad directive `[sim:{shown}`: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_prompt_has_no_directives() {
        let parsed = parse("What is 2+2?").unwrap();
        assert_eq!(parsed.directives, Directives::default());
        assert_eq!(parsed.text, "What is 2+2?");
    }

    #[test]
    fn value_directives_are_read_and_removed() {
        let cases: &[(&str, Directives)] = &[
            ("[sim:words=12] go", Directives { words: Some(12), ..Default::default() }),
            ("x [sim:status=529]", Directives { status: Some(529), ..Default::default() }),
            (
                "[sim:delay_ms=5][sim:first_token_ms=100]",
                Directives { delay_ms: Some(5), first_token_ms: Some(100), ..Default::default() },
            ),
            ("a [sim:hang] b", Directives { hang: true, ..Default::default() }),
            ("[sim:byte_tokens] ;;", Directives { byte_tokens: true, ..Default::default() }),
            ("[sim:fail_once=abc-1]", Directives { fail_once: Some("abc-1".into()), ..Default::default() }),
            (
                "[sim:cache_read=100][sim:cache_write=20]",
                Directives { cache_read: Some(100), cache_write: Some(20), ..Default::default() },
            ),
            (
                "[sim:fail_model=claude-opus-4-8]",
                Directives { fail_model: Some("claude-opus-4-8".into()), ..Default::default() },
            ),
        ];
        for (prompt, want) in cases {
            let parsed = parse(prompt).unwrap();
            assert_eq!(&parsed.directives, want, "prompt {prompt:?}");
            assert!(!parsed.text.contains("[sim:"), "prompt {prompt:?}");
        }
        assert_eq!(parse("a [sim:hang] b").unwrap().text.split_whitespace().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn tool_directive_reads_json_with_brackets_inside() {
        let parsed = parse(r#"[sim:tool=Read {"file_path":"/tmp/x]y/a.txt","n":[1,2]}] read it"#).unwrap();
        let tool = parsed.directives.tools[0].clone();
        assert_eq!(tool.name, "Read");
        assert_eq!(tool.input, json!({"file_path": "/tmp/x]y/a.txt", "n": [1, 2]}));
        assert_eq!(parsed.text.trim(), "read it");
    }

    #[test]
    fn tool_directive_without_input_gets_empty_object() {
        let parsed = parse("[sim:tool=Glob] now").unwrap();
        let tool = parsed.directives.tools[0].clone();
        assert_eq!(tool.name, "Glob");
        assert_eq!(tool.input, json!({}));
        assert_eq!(parsed.text.trim(), "now");
    }

    #[test]
    fn bad_directives_are_errors() {
        for prompt in [
            "[sim:word=5]",
            "[sim:words=many]",
            "[sim:words=5",
            "[sim:status=200]",
            "[sim:status=abc]",
            "[sim:hang=1]",
            "[sim:fail_once=]",
            "[sim:fail_model=]",
            "[sim:cache_read=x]",
            "[sim:tool= {}]",
            "[sim:tool=Read {\"a\":}]",
            "[sim:tool=Read {\"a\":1} extra]",
            "[sim:delay_ms=99999999999]",
        ] {
            let err = parse(prompt).unwrap_err();
            assert!(err.0.starts_with("ccgate-sim: bad directive"), "{prompt:?}: {err}");
        }
    }
}
