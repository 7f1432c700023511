//! Property tests: no input, however malformed, makes the request parsers
//! or the CLI output parser panic.

use ccgate::api::extract::parse_json;
use ccgate::api::openai::ChatCompletionRequest;
use ccgate::workers::stream_json::parse_line;
use proptest::prelude::*;

/// JSON-ish text built from the pieces real requests are made of, so the
/// generator reaches deep into the structure instead of failing at byte 1.
fn jsonish() -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"model\"".to_string()),
        Just("\"messages\"".to_string()),
        Just("\"role\"".to_string()),
        Just("\"content\"".to_string()),
        Just("\"user\"".to_string()),
        Just("\"system\"".to_string()),
        Just("\"type\"".to_string()),
        Just("\"text\"".to_string()),
        Just("\"stream\"".to_string()),
        Just("\"max_tokens\"".to_string()),
        Just("\"tools\"".to_string()),
        Just("\"n\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("-1".to_string()),
        Just("1e309".to_string()),
        Just("18446744073709551616".to_string()),
        "\"[^\"\\\\]{0,12}\"".prop_map(|s| s),
        any::<u32>().prop_map(|n| n.to_string()),
    ];
    prop::collection::vec(atoms, 0..60).prop_map(|parts| parts.concat())
}

fn valid_request_variant() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("haiku"), Just(""), Just("x".repeat(300).leak() as &str)],
        prop_oneof![Just("user"), Just("assistant"), Just("system"), Just("tool"), Just("")],
        ".{0,40}",
        prop::option::of(any::<i64>()),
        any::<bool>(),
    )
        .prop_map(|(model, role, text, max_tokens, stream)| {
            serde_json::json!({
                "model": model,
                "messages": [{"role": role, "content": text}],
                "max_tokens": max_tokens,
                "stream": stream,
            })
            .to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn chat_request_parsing_never_panics(body in prop_oneof![jsonish(), valid_request_variant(), ".{0,200}"]) {
        if let Ok(request) = parse_json::<ChatCompletionRequest>(body.as_bytes()) {
            let _ = request.domain_messages(16);
            let _ = request.max_tokens();
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_json::<ChatCompletionRequest>(&bytes);
        let _ = parse_line(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn cli_line_parsing_never_panics(line in prop_oneof![jsonish(), ".{0,200}"]) {
        let _ = parse_line(&line);
        let wrapped = format!("{{\"type\":\"stream_event\",\"event\":{line}}}");
        let _ = parse_line(&wrapped);
        let result = format!("{{\"type\":\"result\",\"usage\":{line},\"modelUsage\":{line}}}");
        let _ = parse_line(&result);
    }
}
