//! One linear pass over a message that counts what the complexity signals are
//! made from: the task's verbs and objects, its requirements, and its domain.
//!
//! A message is split into the *instruction* (the first paragraph, capped,
//! plus a short closing paragraph) and the *body* (whatever was pasted in
//! between). What is being asked is read from the instruction only, so a long
//! pasted article does not look like a long list of requirements; domain
//! evidence (code, stack traces, math) is read from everything.

use crate::lines::{count_math_symbols, is_list_item, is_trace_line, looks_like_code};
use crate::words::{scan_words, FirstWords};

/// Words of the first paragraph read as instruction; the rest is pasted material.
const MAX_INSTRUCTION_WORDS: u32 = 150;
/// A closing paragraph up to this long is read as a question about the paste.
const MAX_CLOSING_WORDS: usize = 60;

/// Raw counts from one message. Body-region domain hits are kept apart so the
/// signal layer can weigh them less.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Counts {
    pub instruction_words: f64,
    pub build_verbs: f64,
    pub produce_verbs: f64,
    pub transform_verbs: f64,
    /// 1 when the instruction opens with a question word.
    pub opens_with_question: f64,
    pub reason_words: f64,
    pub heavy_nouns: f64,
    pub medium_nouns: f64,
    pub light_nouns: f64,
    pub constraint_words: f64,
    pub enumerators: f64,
    pub list_items: f64,
    pub numbers: f64,
    pub sentences: f64,
    pub systems_words: f64,
    pub body_systems_words: f64,
    pub math_words: f64,
    pub math_symbols: f64,
    pub code_words: f64,
    pub code_lines: f64,
    pub trace_lines: f64,
    pub hard_words: f64,
    pub easy_words: f64,
}

impl Counts {
    /// Adds `other` scaled by `weight`; used to fold an earlier turn into a
    /// terse follow-up such as "yes, do that".
    pub fn add_scaled(&mut self, other: &Counts, weight: f64) {
        macro_rules! fold {
            ($($f:ident),*) => { $( self.$f += other.$f * weight; )* };
        }
        fold!(
            instruction_words,
            build_verbs,
            produce_verbs,
            transform_verbs,
            reason_words,
            heavy_nouns,
            medium_nouns,
            light_nouns,
            constraint_words,
            enumerators,
            list_items,
            numbers,
            sentences,
            systems_words,
            body_systems_words,
            math_words,
            math_symbols,
            code_words,
            code_lines,
            trace_lines,
            hard_words,
            easy_words
        );
    }
}

/// Where the instruction's two parts are: the end of the first paragraph, and
/// the start of a closing paragraph (the text's length when there is none).
/// Reads only the first paragraph and the last line, not the whole text.
fn instruction_ranges(text: &str) -> (usize, usize) {
    let mut first_end = text.len();
    let mut offset = 0;
    let mut in_paragraph = false;
    for line in text.split_inclusive('\n') {
        let blank = line.trim().is_empty();
        if blank && in_paragraph {
            first_end = offset;
            break;
        }
        in_paragraph |= !blank;
        offset += line.len();
    }
    // Only a single short line after a blank line reads as a closing question;
    // a short block of several lines is more likely the tail of the paste.
    let body = text.trim_end();
    let last_line = body.rfind('\n').map_or(0, |i| i + 1);
    let before = &body[..last_line];
    let gap = &before[before.trim_end().len()..];
    let after_blank_line = !before.trim().is_empty() && gap.matches('\n').count() >= 2;
    let words = body[last_line..].split_whitespace().count();
    let closing = after_blank_line && last_line >= first_end && words <= MAX_CLOSING_WORDS;
    (first_end, if closing { last_line } else { text.len() })
}

/// Body text read after the instruction; beyond it only the tail is read.
const BODY_HEAD_BYTES: usize = 32 * 1024;
/// Body text read at the end of a long message (where a closing question and
/// the last lines of a trace usually are).
const BODY_TAIL_BYTES: usize = 16 * 1024;
/// The instruction never reaches past this, whatever the first paragraph's length.
const OPENING_BYTES: usize = 4 * 1024;

/// The middle of a very long message that [`scan`] skips: the domain signals
/// saturate long before, and skipping keeps a 100k-token paste well under a
/// millisecond. `None` when the message is short enough to read whole.
fn skipped_middle(text: &str, first_end: usize) -> Option<(usize, usize)> {
    let line_start_after =
        |at: usize| text.as_bytes().get(at..)?.iter().position(|&b| b == b'\n').map(|p| at + p + 1);
    let from = line_start_after(first_end.min(OPENING_BYTES) + BODY_HEAD_BYTES)?;
    let to = line_start_after(text.len().checked_sub(BODY_TAIL_BYTES)?)?;
    (to > from).then_some((from, to))
}

/// Counts one message's text.
pub(crate) fn scan(text: &str) -> Counts {
    let (first_end, closing_start) = instruction_ranges(text);
    let mut scanner = Scanner {
        first_end,
        closing_start,
        counts: Counts::default(),
        in_fence: false,
        opening: FirstWords::None,
    };
    match skipped_middle(text, first_end) {
        None => scanner.read(text, 0),
        Some((from, to)) => {
            scanner.read(&text[..from], 0);
            // Carry the fence state across the skipped part.
            scanner.in_fence ^= text[from..to].matches("```").count() % 2 == 1;
            scanner.read(&text[to..], to);
        }
    }
    scanner.counts
}

/// State carried from line to line.
struct Scanner {
    first_end: usize,
    closing_start: usize,
    counts: Counts,
    in_fence: bool,
    opening: FirstWords,
}

impl Scanner {
    /// Reads `text`, which starts at byte `base` of the message.
    fn read(&mut self, text: &str, base: usize) {
        let mut offset = base;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            self.read_line(line, start);
        }
    }

    fn read_line(&mut self, line: &str, start: usize) {
        let counts = &mut self.counts;
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            self.in_fence = !self.in_fence;
            counts.code_lines += 1.0;
            return;
        }
        if trimmed.is_empty() {
            return;
        }
        let region = match (self.in_fence, start < self.first_end, start >= self.closing_start) {
            (true, _, _) | (false, false, false) => Region::Body,
            (false, true, _) => Region::Opening,
            (false, false, true) => Region::Closing,
        };
        let instruction = region.is_instruction(counts);
        counts.math_symbols += count_math_symbols(trimmed);
        if is_trace_line(trimmed) {
            counts.trace_lines += 1.0;
        }
        if self.in_fence || looks_like_code(line) {
            counts.code_lines += 1.0;
            if !instruction {
                return;
            }
        }
        if instruction && is_list_item(trimmed) {
            counts.list_items += 1.0;
        }
        scan_words(trimmed, region, counts, &mut self.opening);
    }
}

/// Where a line sits in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Region {
    /// The first paragraph: read as instruction up to a word cap.
    Opening,
    /// A short last paragraph: read as instruction.
    Closing,
    /// Pasted material.
    Body,
}

impl Region {
    pub(crate) fn is_instruction(self, counts: &Counts) -> bool {
        match self {
            Region::Opening => counts.instruction_words < f64::from(MAX_INSTRUCTION_WORDS),
            Region::Closing => true,
            Region::Body => false,
        }
    }
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
