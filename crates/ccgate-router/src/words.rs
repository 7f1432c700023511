//! Reads the words of one prose line: which open a clause (and so name the
//! task), which name a deliverable, a requirement or a domain, and whether the
//! instruction opens as a question.

use crate::lexicon::{class, classes};
use crate::scan::{Counts, Region};
use crate::tokens::is_cjk;

/// Longest word looked up in the lexicon; longer runs are identifiers or data.
const MAX_WORD: usize = 24;

/// How far the reading of the instruction's opening words has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstWords {
    None,
    /// Opened with a modal ("can", "could"); the next word decides.
    Modal,
    Done,
}

/// Reads the words of one prose line, attributing them to instruction or body.
pub(crate) fn scan_words(line: &str, region: Region, counts: &mut Counts, opening: &mut FirstWords) {
    let bytes = line.as_bytes();
    let mut clause_start = true;
    let mut prev_lead = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b >= 0x80 {
            // Scripts without spaces: count every two CJK characters as a word
            // so the length signals still see the instruction.
            let Some(c) = line[i..].chars().next() else { break };
            if is_cjk(c) && region.is_instruction(counts) {
                counts.instruction_words += 0.5;
            }
            i += c.len_utf8();
            continue;
        }
        if !is_word_byte(b) {
            match b {
                b'.' | b'?' | b'!' | b';' | b':' => {
                    clause_start = true;
                    if region.is_instruction(counts) && b != b':' && b != b';' {
                        counts.sentences += 1.0;
                    }
                }
                b',' if region.is_instruction(counts) => counts.enumerators += 1.0,
                _ => {}
            }
            i += 1;
            continue;
        }
        let instruction = region.is_instruction(counts);
        let start = i;
        while i < bytes.len() && (is_word_byte(bytes[i]) || is_joiner(bytes, i)) {
            i += 1;
        }
        let word = &bytes[start..i];
        let mut buf = [0u8; MAX_WORD];
        let classes = if word.len() <= MAX_WORD && word[0].is_ascii_alphabetic() {
            let lower = &mut buf[..word.len()];
            lower.copy_from_slice(word);
            lower.make_ascii_lowercase();
            classes(lower)
        } else {
            0
        };
        if !instruction {
            counts.body_systems_words += f64::from(u8::from(classes & class::SYSTEMS != 0));
            continue;
        }
        counts.instruction_words += 1.0;
        let opens_task = clause_start || prev_lead;
        match *opening {
            FirstWords::None => {
                *opening = if classes & class::QUESTION == 0 {
                    FirstWords::Done
                } else if classes & class::LEAD != 0 {
                    // "can"/"could"/"would": a question unless "… you" follows.
                    FirstWords::Modal
                } else {
                    counts.opens_with_question = 1.0;
                    FirstWords::Done
                };
            }
            FirstWords::Modal => {
                let polite_request =
                    [&b"you"[..], b"u", b"ya", b"someone"].iter().any(|w| word.eq_ignore_ascii_case(w));
                counts.opens_with_question = f64::from(u8::from(!polite_request));
                *opening = FirstWords::Done;
            }
            FirstWords::Done => {}
        }
        if word[0].is_ascii_digit() {
            counts.numbers += 1.0;
        }
        if word.eq_ignore_ascii_case(b"and") || word.eq_ignore_ascii_case(b"then") {
            counts.enumerators += 1.0;
        }
        tally(classes, opens_task, counts);
        prev_lead = classes & class::LEAD != 0;
        clause_start = false;
    }
}

fn tally(classes: u32, opens_task: bool, counts: &mut Counts) {
    let has = |c: u32| f64::from(u8::from(classes & c != 0));
    if opens_task {
        counts.build_verbs += has(class::BUILD);
        counts.produce_verbs += has(class::PRODUCE);
        counts.transform_verbs += has(class::TRANSFORM);
    } else {
        // A verb class in the middle of a clause is usually a noun ("the
        // design", "a build step"); only the deliverable classes count there.
        counts.heavy_nouns += has(class::HEAVY);
        counts.medium_nouns += has(class::MEDIUM);
    }
    counts.light_nouns += has(class::LIGHT);
    counts.reason_words += has(class::REASON);
    counts.constraint_words += has(class::CONSTRAINT);
    counts.systems_words += has(class::SYSTEMS);
    counts.math_words += has(class::MATH);
    counts.code_words += has(class::CODE);
    counts.hard_words += has(class::HARD);
    counts.easy_words += has(class::EASY);
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Apostrophes, hyphens, dots and pluses inside a word ("what's", "lock-free",
/// "node.js", "c++") keep it one word.
fn is_joiner(bytes: &[u8], i: usize) -> bool {
    let next_is_word = bytes.get(i + 1).is_some_and(|&n| is_word_byte(n));
    match bytes[i] {
        b'\'' | b'-' | b'.' => next_is_word,
        b'+' => i > 0 && (bytes[i - 1] == b'+' || bytes[i - 1].eq_ignore_ascii_case(&b'c')),
        _ => false,
    }
}
