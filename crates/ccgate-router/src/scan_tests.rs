use super::*;

#[test]
fn instruction_is_first_paragraph_and_a_single_line_closing_question() {
    let cases: [(&str, &str, &str); 7] = [
        // text, expected instruction head, expected closing ("" = none)
        ("\n\nLeading blanks\n\nthen a question?", "\n\nLeading blanks\n", "then a question?"),
        ("Windows\r\n\r\nlines\r\n\r\nok?\r\n", "Windows\r\n", "ok?\r\n"),
        ("Ask:\n\nline a\n\nline b\nline c", "Ask:\n", ""),
        ("Summarize this.\n\nPara one.\n\nPara two.", "Summarize this.\n", "Para two."),
        ("Fix it:\n\nline a\nline b", "Fix it:\n", ""),
        ("One paragraph only\nstill the same one", "One paragraph only\nstill the same one", ""),
        ("Pasted log\n\nwhat went wrong?\n", "Pasted log\n", "what went wrong?\n"),
    ];
    for (text, head, closing) in cases {
        let (first_end, closing_start) = instruction_ranges(text);
        assert_eq!(&text[..first_end], head, "{text:?}");
        assert_eq!(&text[closing_start..], closing, "{text:?}");
    }
}

#[test]
fn task_verbs_count_only_where_they_open_a_clause() {
    // text, build verbs, produce verbs, transform verbs, heavy nouns
    let cases: [(&str, f64, f64, f64, f64); 6] = [
        ("Implement a parser.", 1.0, 0.0, 0.0, 0.0),
        ("The design doc is late.", 0.0, 0.0, 0.0, 1.0),
        ("Please design the system, then prove it terminates.", 2.0, 0.0, 0.0, 1.0),
        ("Can you write a story?", 0.0, 1.0, 0.0, 0.0),
        ("Summarize this; translate it too.", 0.0, 0.0, 2.0, 0.0),
        ("I need you to build a compiler", 1.0, 0.0, 0.0, 1.0),
    ];
    for (text, build, produce, transform, heavy) in cases {
        let c = scan(text);
        assert_eq!(
            (c.build_verbs, c.produce_verbs, c.transform_verbs, c.heavy_nouns),
            (build, produce, transform, heavy),
            "{text}"
        );
    }
}

#[test]
fn questions_are_told_apart_from_polite_requests() {
    let cases = [
        ("What is a monad?", 1.0),
        ("Can dogs eat grapes?", 1.0),
        ("Can you build me a parser?", 0.0),
        ("could u explain this", 0.0),
        ("Write a haiku.", 0.0),
        ("how do I reverse a list", 1.0),
    ];
    for (text, want) in cases {
        assert!((scan(text).opens_with_question - want).abs() < f64::EPSILON, "{text}");
    }
}

#[test]
fn pasted_material_does_not_count_as_instruction() {
    let text =
        "Summarize this:\n\nWe must implement and design the new distributed system.\nIt must never fail.\n";
    let c = scan(text);
    assert!((c.instruction_words - 2.0).abs() < f64::EPSILON, "{c:?}");
    assert_eq!((c.build_verbs, c.constraint_words), (0.0, 0.0));
    assert!((c.body_systems_words - 1.0).abs() < f64::EPSILON, "domain words still count in the body");
}

#[test]
fn domain_evidence_is_counted() {
    // text, code lines, trace lines, math symbols
    let cases: [(&str, f64, f64, f64); 5] = [
        ("fix:\n\n```\nfn main() {}\n```", 3.0, 0.0, 0.0),
        ("why?\n\nTraceback (most recent call last):\n  File \"a.py\", line 1\nKeyError: 'x'", 2.0, 3.0, 0.0),
        ("Show that x^2 ≥ 0 for all x ∈ ℝ", 0.0, 0.0, 4.0),
        ("error[E0502]: cannot borrow\n   ^^^^^ here", 0.0, 1.0, 0.0),
        ("What is 2+2?", 0.0, 0.0, 0.0),
    ];
    for (text, code, trace, math) in cases {
        let c = scan(text);
        assert_eq!((c.code_lines, c.trace_lines, c.math_symbols), (code, trace, math), "{text:?}");
    }
}

#[test]
fn requirements_and_structure_are_counted() {
    let text = "Build an API:\n- must support OAuth\n- handle 10k rps\n1. without downtime";
    let c = scan(text);
    assert_eq!(c.list_items, 3.0);
    assert_eq!(c.constraint_words, 4.0, "must, support, handle, without");
    assert_eq!(c.numbers, 2.0, "10k and 1");
}

#[test]
fn scripts_without_spaces_still_have_length() {
    let c = scan("请帮我设计一个系统架构");
    assert!(c.instruction_words >= 5.0, "{c:?}");
}

#[test]
fn a_very_long_message_is_read_at_both_ends_only() {
    let filler = "The quarterly report covers revenue, churn and hiring plans in detail.\n".repeat(2_000);
    let text = format!(
        "Find the deadlock:\n\n```\n{filler}```\n{filler}\nTraceback (most recent call last):\n\nwhat is wrong?"
    );
    let (first_end, _) = instruction_ranges(&text);
    let (from, to) = skipped_middle(&text, first_end).expect("long enough to skip");
    assert!(from > BODY_HEAD_BYTES && to < text.len() - BODY_TAIL_BYTES / 2, "{from}..{to}");
    let c = scan(&text);
    assert_eq!(c.trace_lines, 1.0, "the tail is read");
    // Head: the opening fence and every fenced line after it; the closing fence
    // is in the skipped middle, so the tail's prose must not count as code.
    let head_lines = text[..from].lines().count() as f64;
    // (+1: the tail's "Traceback (…):" line ends like code.)
    assert_eq!(c.code_lines, head_lines - 2.0 + 1.0, "only the instruction's two lines are not code");
    assert!(c.body_systems_words == 0.0 && c.instruction_words < 10.0, "{c:?}");
    // The closing question is still the instruction.
    assert!((c.opens_with_question - 0.0).abs() < f64::EPSILON);
    assert!(skipped_middle("short text\n", 0).is_none());
}
