//! The lines of a batch input file: `{"custom_id", "method": "POST", "url",
//! "body"}`, one JSON object a line. A file with any bad line fails as a
//! whole, and every error names its line (1-based, blank lines counted), so
//! the file can be fixed in one pass. Bodies are checked when their request
//! runs: a bad body fails that request only.

use std::collections::HashMap;

use serde_json::Value;

/// One valid line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputLine {
    pub line: usize,
    pub custom_id: String,
    /// The request body, as compact JSON.
    pub body: String,
}

/// What is wrong with one line (or with the file, when `line` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: Option<usize>,
    pub code: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

/// Errors listed in full before the rest are only counted.
const MAX_ERRORS: usize = 100;
const MAX_CUSTOM_ID_CHARS: usize = 512;

/// Lines that hold something (blank lines are allowed and skipped).
pub fn count_lines(content: &[u8]) -> usize {
    content.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count()
}

/// Parses and checks a whole file for `endpoint`.
pub fn parse(content: &[u8], endpoint: &str) -> Result<Vec<InputLine>, Vec<LineError>> {
    let Ok(text) = std::str::from_utf8(content) else {
        return Err(vec![file_error("invalid_file", "the input file is not UTF-8 text".into())]);
    };
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.split('\n').enumerate() {
        let number = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        match parse_line(raw, number, endpoint, &seen) {
            Ok(line) => {
                seen.insert(line.custom_id.clone(), number);
                lines.push(line);
            }
            Err(error) => errors.push(error),
        }
    }
    if lines.is_empty() && errors.is_empty() {
        errors.push(file_error("empty_file", "the input file holds no requests".into()));
    }
    if errors.is_empty() {
        return Ok(lines);
    }
    if errors.len() > MAX_ERRORS {
        let more = errors.len() - MAX_ERRORS;
        errors.truncate(MAX_ERRORS);
        errors.push(file_error("too_many_errors", format!("{more} more lines have errors")));
    }
    Err(errors)
}

fn parse_line(
    raw: &str,
    line: usize,
    endpoint: &str,
    seen: &HashMap<String, usize>,
) -> Result<InputLine, LineError> {
    let error = |code, message: String, param| LineError { line: Some(line), code, message, param };
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| error("invalid_json", format!("line {line} is not valid JSON: {e}"), None))?;
    let Value::Object(mut object) = value else {
        return Err(error("invalid_request", format!("line {line} is not a JSON object"), None));
    };
    let custom_id = match object.remove("custom_id") {
        Some(Value::String(id)) if !id.is_empty() && id.chars().count() <= MAX_CUSTOM_ID_CHARS => id,
        Some(Value::String(_)) => {
            return Err(error(
                "invalid_custom_id",
                format!("line {line}: custom_id must be 1 to {MAX_CUSTOM_ID_CHARS} characters"),
                Some("custom_id"),
            ))
        }
        Some(_) => {
            return Err(error(
                "invalid_custom_id",
                format!("line {line}: custom_id must be a string"),
                Some("custom_id"),
            ))
        }
        None => {
            return Err(error(
                "missing_custom_id",
                format!("line {line} has no custom_id"),
                Some("custom_id"),
            ))
        }
    };
    if let Some(first) = seen.get(&custom_id) {
        return Err(error(
            "duplicate_custom_id",
            format!("line {line}: custom_id {custom_id:?} is already used on line {first}"),
            Some("custom_id"),
        ));
    }
    match object.get("method") {
        Some(Value::String(method)) if method == "POST" => {}
        other => {
            return Err(error(
                "invalid_method",
                format!("line {line}: method must be \"POST\", not {}", shown(other)),
                Some("method"),
            ))
        }
    }
    match object.get("url") {
        Some(Value::String(url)) if url == endpoint => {}
        other => {
            return Err(error(
                "invalid_url",
                format!("line {line}: url must be the batch's endpoint {endpoint:?}, not {}", shown(other)),
                Some("url"),
            ))
        }
    }
    let body = match object.remove("body") {
        Some(body @ Value::Object(_)) => body.to_string(),
        Some(_) => {
            return Err(error(
                "invalid_body",
                format!("line {line}: body must be a JSON object"),
                Some("body"),
            ))
        }
        None => return Err(error("missing_body", format!("line {line} has no body"), Some("body"))),
    };
    Ok(InputLine { line, custom_id, body })
}

fn shown(value: Option<&Value>) -> String {
    value.map(Value::to_string).unwrap_or_else(|| "missing".into())
}

fn file_error(code: &'static str, message: String) -> LineError {
    LineError { line: None, code, message, param: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "/v1/chat/completions";

    fn line(custom_id: &str) -> String {
        format!(
            r#"{{"custom_id":"{custom_id}","method":"POST","url":"{URL}","body":{{"model":"haiku","messages":[{{"role":"user","content":"hi"}}]}}}}"#
        )
    }

    #[test]
    fn valid_lines_keep_their_numbers_and_bodies() {
        let file = format!("{}\n\n{}\n", line("a"), line("b"));
        let lines = parse(file.as_bytes(), URL).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].line, lines[0].custom_id.as_str()), (1, "a"));
        assert_eq!((lines[1].line, lines[1].custom_id.as_str()), (3, "b"), "blank lines count");
        let body: Value = serde_json::from_str(&lines[1].body).unwrap();
        assert_eq!(body["model"], "haiku");
        assert_eq!(count_lines(file.as_bytes()), 2);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let cases: [(&str, &str, &str); 9] = [
            ("{not json", "invalid_json", ""),
            ("[1, 2]", "invalid_request", ""),
            (r#"{"method":"POST","url":"/v1/chat/completions","body":{}}"#, "missing_custom_id", "custom_id"),
            (
                r#"{"custom_id":7,"method":"POST","url":"/v1/chat/completions","body":{}}"#,
                "invalid_custom_id",
                "custom_id",
            ),
            (&line("a"), "duplicate_custom_id", "custom_id"),
            (
                r#"{"custom_id":"g","method":"GET","url":"/v1/chat/completions","body":{}}"#,
                "invalid_method",
                "method",
            ),
            (r#"{"custom_id":"u","method":"POST","url":"/v1/embeddings","body":{}}"#, "invalid_url", "url"),
            (
                r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":"hi"}"#,
                "invalid_body",
                "body",
            ),
            (r#"{"custom_id":"m","method":"POST","url":"/v1/chat/completions"}"#, "missing_body", "body"),
        ];
        let mut file = line("a");
        for (bad, _, _) in &cases {
            file.push('\n');
            file.push_str(bad);
        }
        let errors = parse(file.as_bytes(), URL).unwrap_err();
        assert_eq!(errors.len(), cases.len());
        for (i, ((_, code, param), error)) in cases.iter().zip(&errors).enumerate() {
            assert_eq!(error.line, Some(i + 2), "{error:?}");
            assert_eq!(error.code, *code, "{error:?}");
            assert_eq!(error.param.unwrap_or(""), *param, "{error:?}");
            assert!(error.message.contains(&format!("line {}", i + 2)), "{error:?}");
        }
        assert!(errors[4].message.contains("already used on line 1"), "{:?}", errors[4]);
    }

    #[test]
    fn empty_and_non_utf8_files_fail_as_a_whole() {
        assert_eq!(parse(b"\n \n", URL).unwrap_err()[0].code, "empty_file");
        assert_eq!(parse(b"\xff\xfe", URL).unwrap_err()[0].code, "invalid_file");
    }

    #[test]
    fn the_error_list_is_capped() {
        let file = "x\n".repeat(150);
        let errors = parse(file.as_bytes(), URL).unwrap_err();
        assert_eq!(errors.len(), MAX_ERRORS + 1);
        assert_eq!(errors[MAX_ERRORS].message, "50 more lines have errors");
    }
}
