//! Classifiers for one line of a message: is it code, a stack-trace line, a
//! list item, and how much math notation does it carry. Each is a single pass
//! over the line's bytes.

/// A bullet (`- `, `* `, `•`) or numbered (`1. `, `2) `) list item.
pub(crate) fn is_list_item(line: &str) -> bool {
    let b = line.as_bytes();
    match b.first() {
        Some(b'-' | b'*') => b.get(1) == Some(&b' '),
        Some(d) if d.is_ascii_digit() => {
            let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
            matches!(b.get(digits), Some(b'.' | b')')) && b.get(digits + 1) == Some(&b' ')
        }
        _ => line.starts_with('•'),
    }
}

/// Bytes that are common in code and rare in prose, as a lookup table.
const CODE_SYMBOLS: [bool; 256] = {
    let mut table = [false; 256];
    let symbols = b"{}()[];=<>|&_$#@\\`\"";
    let mut i = 0;
    while i < symbols.len() {
        table[symbols[i] as usize] = true;
        i += 1;
    }
    table
};

/// Code has far more brackets, operators and statement ends than prose does.
pub(crate) fn looks_like_code(line: &str) -> bool {
    let trimmed = line.trim_end();
    let body = trimmed.trim_start();
    let indented = trimmed.len() - body.len() >= 2;
    let symbols = body.bytes().filter(|&b| CODE_SYMBOLS[usize::from(b)]).count();
    let ends_like_code = body.ends_with(['{', '}', ';', ')']) || body.ends_with("):");
    symbols * 100 >= body.len() * 8 && symbols >= 2 || ends_like_code || indented && symbols >= 1
}

pub(crate) fn is_trace_line(line: &str) -> bool {
    let line = line.trim_start();
    const PREFIXES: [&str; 12] = [
        "at ",
        "File \"",
        "Traceback",
        "error[",
        "error:",
        "Caused by",
        "panicked at",
        "goroutine ",
        "fatal error",
        "npm ERR!",
        "-->",
        "Exception",
    ];
    PREFIXES.iter().any(|p| line.starts_with(p))
        || line.starts_with("==") && line.as_bytes().get(2).is_some_and(u8::is_ascii_digit)
        || line.contains("Error: ")
        || line.contains("Exception:")
}

pub(crate) fn count_math_symbols(line: &str) -> f64 {
    let mut n = 0u32;
    if line.is_ascii() {
        // Fast path for the common case: only an exponent caret can count.
        let b = line.as_bytes();
        for i in 1..b.len().saturating_sub(1) {
            let next = b[i + 1];
            n += u32::from(
                b[i] == b'^'
                    && b[i - 1].is_ascii_alphanumeric()
                    && (next.is_ascii_alphanumeric() || next == b'('),
            );
        }
        return f64::from(n);
    }
    let mut prev = ' ';
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let hit = match c {
            // An exponent (x^2, 2^61, e^(x)), not a caret underline or a regex anchor.
            '^' => {
                prev.is_ascii_alphanumeric()
                    && chars.peek().is_some_and(|n| n.is_ascii_alphanumeric() || *n == '(')
            }
            '∑' | '∫' | '√' | '≤' | '≥' | '∀' | '∃' | '∈' | '∉' | '⊂' | '⊆' | '∪' | '∩' | '∞' | '≠' | '≈'
            | '≡' => true,
            'ℝ' | 'ℕ' | 'ℤ' | 'ℚ' | 'ℂ' | '²' | '³' | '₀' | '₁' | '↦' | '⇒' | '⇔' | '∂' | '∇' | 'Σ' | 'Ω' => {
                true
            }
            'α'..='ω' => true,
            _ => false,
        };
        n += u32::from(hit);
        prev = c;
    }
    f64::from(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_classified() {
        // line, code, trace, list item
        let cases: [(&str, bool, bool, bool); 8] = [
            ("let x = compute(a, b);", true, false, false),
            ("    return Ok(value)", true, false, false),
            ("The committee approved the budget on Friday.", false, false, false),
            ("  File \"app.py\", line 42, in <module>", true, true, false),
            ("at com.acme.Billing.total(Billing.java:58)", true, true, false),
            ("KeyError: 'database_url'", false, true, false),
            ("- must support OAuth", false, false, true),
            ("12) handle retries", false, false, true),
        ];
        for (line, code, trace, item) in cases {
            assert_eq!(
                (looks_like_code(line), is_trace_line(line), is_list_item(line)),
                (code, trace, item),
                "{line}"
            );
        }
    }

    #[test]
    fn math_notation_is_counted_but_carets_elsewhere_are_not() {
        let cases = [
            ("x^2 + y^2", 2.0),
            ("2^61 - 1", 1.0),
            ("^^^^^ here", 0.0),
            ("^start$", 0.0),
            ("∀x ∈ ℝ: x² ≥ 0", 5.0),
        ];
        for (line, want) in cases {
            assert!(
                (count_math_symbols(line) - want).abs() < f64::EPSILON,
                "{line}: {}",
                count_math_symbols(line)
            );
        }
    }
}
