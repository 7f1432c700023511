//! Two reference scorers the evaluation compares against: plain word count,
//! and a keyword scorer in the style of LiteLLM's rule-based complexity router
//! (weighted keyword-list dimensions plus a token-count dimension).
//!
//! They exist only to be measured against; routing never uses them.

/// Number of whitespace-separated words: longer prompt, stronger model.
pub fn word_count_score(text: &str) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "word counts are far below 2^52")]
    let words = text.split_whitespace().count() as f64;
    words
}

const CODE_WORDS: &[&str] = &[
    "function",
    "class",
    "def",
    "const",
    "import",
    "return",
    "async",
    "await",
    "exception",
    "error",
    "debug",
    "api",
    "endpoint",
    "database",
    "sql",
    "query",
    "schema",
    "algorithm",
    "implement",
    "refactor",
    "optimize",
    "python",
    "javascript",
    "typescript",
    "java",
    "rust",
    "golang",
    "react",
    "node",
    "docker",
    "kubernetes",
    "git",
    "commit",
    "branch",
];
const REASONING_WORDS: &[&str] = &[
    "step by step",
    "think through",
    "reason through",
    "analyze",
    "break down",
    "explain your reasoning",
    "show your work",
    "think carefully",
    "evaluate",
    "pros and cons",
    "compare and contrast",
    "logical",
    "deduce",
    "infer",
    "prove",
    "derive",
];
const TECHNICAL_WORDS: &[&str] = &[
    "architecture",
    "distributed",
    "scalable",
    "microservice",
    "machine learning",
    "neural network",
    "encryption",
    "authentication",
    "performance",
    "latency",
    "throughput",
    "benchmark",
    "concurrency",
    "parallel",
    "thread",
    "memory",
    "cpu",
    "gpu",
    "optimization",
    "protocol",
    "tcp",
    "http",
    "websocket",
    "container",
    "orchestration",
];
const SIMPLE_WORDS: &[&str] = &[
    "what is",
    "what's",
    "define",
    "definition of",
    "who is",
    "who was",
    "when did",
    "when was",
    "where is",
    "how many",
    "how much",
    "yes or no",
    "true or false",
    "simple",
    "brief",
    "short",
    "quick",
    "hello",
    "hi",
    "hey",
    "thanks",
    "thank you",
];

/// Keyword-list score: a weighted sum of dimension scores, as LiteLLM's
/// `complexity_router` computes it with its default weights.
pub fn keyword_score(text: &str) -> f64 {
    let lower = text.to_lowercase();
    let tokens = crate::tokens::estimate_tokens(text);
    let token_dim = match tokens {
        0..15 => -1.0,
        15..=400 => 0.0,
        _ => 1.0,
    };
    let code = match matches(&lower, CODE_WORDS) {
        0 => 0.0,
        1 => 0.5,
        _ => 1.0,
    };
    let reasoning = match matches(&lower, REASONING_WORDS) {
        0 => 0.0,
        1 => 0.7,
        _ => 1.0,
    };
    let technical = match matches(&lower, TECHNICAL_WORDS) {
        0 | 1 => 0.0,
        2 | 3 => 0.5,
        _ => 1.0,
    };
    let simple = if matches(&lower, SIMPLE_WORDS) > 0 { -1.0 } else { 0.0 };
    let multi_step = if has_multi_step(&lower) { 0.5 } else { 0.0 };
    let questions = if lower.matches('?').count() > 3 { 0.5 } else { 0.0 };
    0.10 * token_dim
        + 0.30 * code
        + 0.25 * reasoning
        + 0.25 * technical
        + 0.05 * simple
        + 0.03 * multi_step
        + 0.02 * questions
}

/// How many of `keywords` occur in `lower` as whole words or phrases.
fn matches(lower: &str, keywords: &[&str]) -> usize {
    keywords.iter().filter(|k| contains_word(lower, k)).count()
}

fn contains_word(haystack: &str, needle: &str) -> bool {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    haystack.match_indices(needle).any(|(at, _)| {
        !is_word(haystack[..at].chars().next_back()) && !is_word(haystack[at + needle.len()..].chars().next())
    })
}

/// "first … then", "step 2", or a numbered item "1. ".
fn has_multi_step(lower: &str) -> bool {
    let first_then = lower.find("first").is_some_and(|i| lower[i..].contains("then"));
    let step_n = lower
        .match_indices("step ")
        .any(|(i, m)| lower[i + m.len()..].chars().next().is_some_and(|c| c.is_ascii_digit()));
    let numbered = lower.as_bytes().windows(3).any(|w| w[0].is_ascii_digit() && w[1] == b'.' && w[2] == b' ');
    first_then || step_n || numbered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_score_as_designed() {
        assert!((word_count_score("one two  three\nfour") - 4.0).abs() < f64::EPSILON);
        let cases: [(&str, f64); 4] = [
            // short (-0.10) + simple (-0.05)
            ("what is rust?", -0.10 + 0.30 * 0.5 - 0.05),
            ("hello", -0.10 - 0.05),
            // code x2 (0.30) + reasoning x1 (0.25*0.7) + short (-0.10)
            ("implement it in python, step by step", -0.10 + 0.30 + 0.25 * 0.7 + 0.03 * 0.0),
            ("first do x then y", -0.10 + 0.03 * 0.5),
        ];
        for (text, want) in cases {
            assert!((keyword_score(text) - want).abs() < 1e-9, "{text}: {}", keyword_score(text));
        }
    }

    #[test]
    fn keywords_match_whole_words_only() {
        let cases = [
            ("the git repo", "git", true),
            ("digital", "git", false),
            ("git", "git", true),
            ("hi!", "hi", true),
            ("this", "hi", false),
        ];
        for (hay, needle, want) in cases {
            assert_eq!(contains_word(hay, needle), want, "{hay} / {needle}");
        }
    }
}
