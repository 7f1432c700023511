//! Token counting: about four characters a token, the rule of thumb the real
//! API roughly follows for English text. Stream and non-stream replies use the
//! same functions, so their usage figures always agree.

use crate::request::MessagesRequest;

/// Tokens for `chars` characters: `ceil(chars / 4)`.
pub fn for_chars(chars: usize) -> u64 {
    u64::try_from(chars).unwrap_or(u64::MAX).div_ceil(4)
}

/// Tokens for a piece of text.
pub fn for_text(text: &str) -> u64 {
    for_chars(text.chars().count())
}

/// Input tokens of a request; never zero, as the real API always bills something.
pub(crate) fn input(request: &MessagesRequest) -> u64 {
    for_chars(request.text_chars()).max(1)
}

/// Input tokens at one a byte (`[sim:byte_tokens]`).
pub(crate) fn input_per_byte(request: &MessagesRequest) -> u64 {
    u64::try_from(request.text_bytes()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_characters_a_token_rounded_up() {
        for (chars, tokens) in [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2), (401, 101)] {
            assert_eq!(for_chars(chars), tokens, "{chars} chars");
        }
    }

    #[test]
    fn text_counts_characters_not_bytes() {
        assert_eq!(for_text("ééééé"), 2);
        assert_eq!(for_text("Simulated reply: What is 2+2?"), 8);
    }

    #[test]
    fn input_is_at_least_one() {
        let request: MessagesRequest =
            serde_json::from_value(serde_json::json!({"model": "m", "messages": []})).unwrap();
        assert_eq!(input(&request), 1);
    }
}
