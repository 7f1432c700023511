//! The complexity score: named signals, each in 0..=1, combined by a logistic
//! model whose weights live in [`Weights`] so an operator can change them.
//!
//! The score estimates how likely the request needs more than the cheapest
//! model. Only its order matters for the tier cut points, so the weights were
//! fitted (see `examples/fit_weights.rs`) on the training split of the
//! evaluation set and rounded.

use crate::config::RouterConfig;
use crate::scan::{scan, Counts};
use crate::tokens::estimate_tokens;
use crate::Message;
use serde::{Deserialize, Serialize};

/// A follow-up shorter than this many words ("yes, go ahead") borrows the
/// previous user turn's signals, since the work it approves is described there.
const TERSE_FOLLOW_UP_WORDS: f64 = 12.0;
/// How much of the previous user turn a terse follow-up borrows.
const PREVIOUS_TURN_WEIGHT: f64 = 0.75;

/// Weights of the signals (logit units) and the intercept. Positive pushes
/// towards a stronger model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Weights {
    pub bias: f64,
    /// Opens with a verb that commissions work: implement, design, prove, …
    pub build: f64,
    /// Opens with a verb that asks for writing: write, create, draft, …
    pub produce: f64,
    /// Opens with a verb that reshapes given text: summarize, translate, …
    pub transform: f64,
    /// A short question: what/who/when/how …
    pub lookup: f64,
    /// Asks for explanation, comparison or judgement.
    pub reasoning: f64,
    /// Names a large deliverable (system, proof, protocol) or a mid-sized one.
    pub deliverable: f64,
    /// Asks for a small answer (a word, a name, a one-liner) or says "quick".
    pub short_answer: f64,
    /// Requirements and constraints: enumerations, list items, must/without, numbers.
    pub requirements: f64,
    /// Several sentences or sub-questions in the instruction.
    pub multi_part: f64,
    /// Code: language names, code lines, fenced blocks.
    pub code: f64,
    /// Stack traces and compiler or runtime error output.
    pub debugging: f64,
    /// Math notation and vocabulary.
    pub math: f64,
    /// Hard engineering domains: distribution, concurrency, security, scale.
    pub systems: f64,
    /// Explicit difficulty or stakes: rigorous, production, from scratch, subtle.
    pub stakes: f64,
    /// Length of the instruction (log-scaled).
    pub instruction_length: f64,
    /// Length of everything sent (log-scaled); long pastes alone mean little.
    pub context_length: f64,
    /// Number of earlier turns (log-scaled).
    pub conversation: f64,
    /// A build verb on code, math or systems material: the hard-task pattern.
    pub build_technical: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            bias: -1.72,
            build: 1.11,
            produce: 0.56,
            transform: -0.37,
            lookup: -1.07,
            reasoning: 0.74,
            deliverable: 1.16,
            short_answer: -0.04,
            requirements: 1.27,
            multi_part: 0.65,
            code: 0.56,
            debugging: -0.11,
            math: 0.40,
            systems: 0.45,
            stakes: 0.05,
            instruction_length: 0.81,
            context_length: 0.49,
            // Not fitted (the evaluation set has no multi-turn prompts): a small prior.
            conversation: 0.30,
            build_technical: 0.50,
        }
    }
}

/// One named signal: its value in 0..=1 and what it added to the logit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    pub name: &'static str,
    pub value: f64,
    pub contribution: f64,
}

/// The complexity of a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Complexity {
    /// 0..1: the logistic of the bias plus all contributions.
    pub score: f64,
    /// Every signal, in a fixed order, including those that contributed nothing.
    pub signals: Vec<Signal>,
    /// Estimated tokens of all message texts (see [`estimate_tokens`]).
    pub text_tokens: u64,
}

impl Complexity {
    /// The signals that moved the score most, strongest first.
    pub fn top_signals(&self, n: usize) -> Vec<&Signal> {
        let mut moving: Vec<&Signal> =
            self.signals.iter().filter(|s| s.contribution.abs() >= 0.005).collect();
        moving.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
        moving.truncate(n);
        moving
    }
}

/// Saturating map of a count onto 0..1: `half` is the count that scores 0.5.
fn saturate(count: f64, half: f64) -> f64 {
    if count <= 0.0 {
        0.0
    } else {
        count / (count + half)
    }
}

/// `ln(1 + x) / ln(1 + full)`, capped at 1.
fn log_scale(x: f64, full: f64) -> f64 {
    ((1.0 + x.max(0.0)).ln() / (1.0 + full).ln()).min(1.0)
}

/// Scores `messages` (the whole conversation; the last user turn is the ask).
/// Linear in the total text length.
pub fn complexity(messages: &[Message], cfg: &RouterConfig) -> Complexity {
    let text_tokens: u64 = messages.iter().map(|m| estimate_tokens(m.text)).sum();
    let mut users = messages.iter().rev().filter(|m| m.role.eq_ignore_ascii_case("user"));
    let mut counts = users.next().map(|m| scan(m.text)).unwrap_or_default();
    if counts.instruction_words < TERSE_FOLLOW_UP_WORDS {
        if let Some(previous) = users.next() {
            counts.add_scaled(&scan(previous.text), PREVIOUS_TURN_WEIGHT);
        }
    }
    let earlier_turns =
        messages.iter().filter(|m| !m.role.eq_ignore_ascii_case("system")).count().saturating_sub(1);
    let values = signal_values(&counts, text_tokens, earlier_turns);
    let w = &cfg.weights;
    let weights = [
        w.build,
        w.produce,
        w.transform,
        w.lookup,
        w.reasoning,
        w.deliverable,
        w.short_answer,
        w.requirements,
        w.multi_part,
        w.code,
        w.debugging,
        w.math,
        w.systems,
        w.stakes,
        w.instruction_length,
        w.context_length,
        w.conversation,
        w.build_technical,
    ];
    let mut logit = w.bias;
    let signals = SIGNAL_NAMES
        .iter()
        .zip(values)
        .zip(weights)
        .map(|((&name, value), weight)| {
            let contribution = value * weight;
            logit += contribution;
            Signal { name, value, contribution }
        })
        .collect();
    Complexity { score: 1.0 / (1.0 + (-logit).exp()), signals, text_tokens }
}

/// Signal names in the order [`complexity`] reports them.
pub const SIGNAL_NAMES: [&str; 18] = [
    "build",
    "produce",
    "transform",
    "lookup",
    "reasoning",
    "deliverable",
    "short_answer",
    "requirements",
    "multi_part",
    "code",
    "debugging",
    "math",
    "systems",
    "stakes",
    "instruction_length",
    "context_length",
    "conversation",
    "build_technical",
];

fn signal_values(c: &Counts, text_tokens: u64, earlier_turns: usize) -> [f64; 18] {
    let build = saturate(c.build_verbs, 1.0);
    let code = saturate(c.code_words + c.code_lines * 0.5, 2.0);
    let math = saturate(c.math_words + c.math_symbols, 2.0);
    let systems = saturate(c.systems_words + c.body_systems_words * 0.2, 1.5);
    // Short questions are lookups; a long one ("what should we do, given …")
    // is not, so the signal fades with the instruction's length.
    let lookup = c.opens_with_question / (1.0 + c.instruction_words / 20.0);
    let requirements = saturate(
        c.constraint_words + c.list_items + c.numbers * 0.5 + (c.enumerators - 1.0).max(0.0) * 0.5,
        4.0,
    );
    #[expect(clippy::cast_precision_loss, reason = "token and turn counts are far below 2^52")]
    let (tokens, turns) = (text_tokens as f64, earlier_turns as f64);
    [
        build,
        saturate(c.produce_verbs, 1.0),
        saturate(c.transform_verbs, 1.0),
        lookup,
        saturate(c.reason_words, 1.0),
        saturate(c.heavy_nouns + c.medium_nouns * 0.5, 1.0),
        saturate(c.light_nouns + c.easy_words, 1.0),
        requirements,
        saturate((c.sentences - 1.0).max(0.0), 2.0),
        code,
        saturate(c.trace_lines, 2.0),
        math,
        systems,
        saturate(c.hard_words, 1.0),
        log_scale(c.instruction_words, 300.0),
        log_scale(tokens, 100_000.0),
        log_scale(turns, 20.0),
        build * code.max(math).max(systems),
    ]
}

#[cfg(test)]
#[path = "complexity_tests.rs"]
mod tests;
