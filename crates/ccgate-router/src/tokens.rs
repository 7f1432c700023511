//! Token estimation without a tokenizer: one pass over the text, costing each
//! word, digit, symbol and line break by how BPE tokenizers usually split them.
//!
//! The constants were fitted against the only Claude tokenizer that is public
//! (the one the Anthropic Python SDK shipped up to 0.38) on prose, code, logs
//! and non-English text; see `docs/ROUTING.md` for the measured error. All
//! arithmetic is in milli-tokens so it stays integer and order-independent.

/// A word of up to this many letters is usually one token.
const SHORT_WORD_LETTERS: u64 = 6;
/// Each further letter adds 1/6 of a token (long words split into pieces).
const MILLI_PER_EXTRA_LETTER: u64 = 1000 / 6;
/// Accented and other non-ASCII letters split into byte-level pieces.
const MILLI_PER_NON_ASCII_LETTER: u64 = 1500;
const MILLI_PER_DIGIT: u64 = 750;
const MILLI_PER_SYMBOL: u64 = 700;
const MILLI_PER_NEWLINE: u64 = 500;
/// Only runs of spaces cost anything: a single space merges into the next word.
const MILLI_PER_EXTRA_SPACE: u64 = 100;
const MILLI_PER_CJK: u64 = 800;
const MILLI_PER_OTHER: u64 = 2000;

/// Cost of each ASCII byte that is not a letter; letters are costed per word.
const ASCII_MILLI: [u64; 128] = {
    let mut table = [MILLI_PER_SYMBOL; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = match b as u8 {
            b'0'..=b'9' => MILLI_PER_DIGIT,
            b'\n' => MILLI_PER_NEWLINE,
            b' ' => 0,
            b'\t' | b'\r' | 0x0b | 0x0c => MILLI_PER_EXTRA_SPACE,
            _ => MILLI_PER_SYMBOL,
        };
        b += 1;
    }
    table
};

/// Estimated number of tokens in `text`, rounded up. Linear time, no allocation.
pub fn estimate_tokens(text: &str) -> u64 {
    let mut milli: u64 = 0;
    let mut letters: u64 = 0;
    let mut non_ascii_letters: u64 = 0;
    let mut prev_space = false;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // ASCII is costed byte by byte from a table; only other characters
        // pay for UTF-8 decoding and Unicode classification.
        let (cost, is_space) = if b.is_ascii() {
            i += 1;
            if b.is_ascii_alphabetic() {
                letters += 1;
                prev_space = false;
                continue;
            }
            let space = b == b' ';
            (if space && prev_space { MILLI_PER_EXTRA_SPACE } else { ASCII_MILLI[usize::from(b)] }, space)
        } else {
            let Some(c) = text[i..].chars().next() else { break };
            i += c.len_utf8();
            if c.is_alphabetic() && !is_cjk(c) {
                letters += 1;
                non_ascii_letters += 1;
                prev_space = false;
                continue;
            }
            let cost = match c {
                c if c.is_whitespace() => MILLI_PER_EXTRA_SPACE,
                c if is_cjk(c) => MILLI_PER_CJK,
                _ => MILLI_PER_OTHER,
            };
            (cost, false)
        };
        if letters > 0 {
            milli += word_milli(letters, non_ascii_letters);
            letters = 0;
            non_ascii_letters = 0;
        }
        milli += cost;
        prev_space = is_space;
    }
    if letters > 0 {
        milli += word_milli(letters, non_ascii_letters);
    }
    milli.div_ceil(1000)
}

fn word_milli(letters: u64, non_ascii_letters: u64) -> u64 {
    1000 + letters.saturating_sub(SHORT_WORD_LETTERS) * MILLI_PER_EXTRA_LETTER
        + non_ascii_letters * MILLI_PER_NON_ASCII_LETTER
}

/// Han, kana and Hangul: scripts written without spaces, about one token a character.
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3000}'..='\u{9fff}' | '\u{ac00}'..='\u{d7af}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_by_kind_of_text() {
        let cases: [(&str, u64); 9] = [
            ("", 0),
            ("hi", 1),
            ("What is the capital of Australia?", 8),
            ("internationalization", 4),
            ("12345", 4),
            ("fn main() {}", 5),
            ("a\nb", 3),
            ("日本語", 3),
            ("Über", 3),
        ];
        for (text, want) in cases {
            assert_eq!(estimate_tokens(text), want, "{text:?}");
        }
    }

    #[test]
    fn grows_linearly_with_repetition() {
        // Rounding up happens once per call, so 100 copies cost 100 × (one − 1) to 100 × one.
        let one = estimate_tokens("The quick brown fox jumps over the lazy dog. ");
        let hundred = estimate_tokens(&"The quick brown fox jumps over the lazy dog. ".repeat(100));
        assert!(hundred > (one - 1) * 100 && hundred <= one * 100, "{one} vs {hundred}");
    }
}
