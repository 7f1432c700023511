//! In-process HTTP tests: a simulator on a free port, driven with reqwest.

use std::time::{Duration, Instant};

use ccgate_sim::{spawn, SimConfig, SimHandle};
use futures::StreamExt;
use serde_json::{json, Value};

/// A Messages API body with one user turn.
fn body(prompt: &str, stream: bool) -> Value {
    json!({
        "model": "claude-haiku-4-5-20251001",
        "max_tokens": 1024,
        "stream": stream,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": prompt}],
    })
}

async fn post(sim: &SimHandle, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{}{path}", sim.base_url())).json(body).send().await.unwrap()
}

/// Splits an SSE body into `(event name, data)` pairs, checking each frame's shape.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    assert!(text.ends_with("\n\n"), "stream must end with a complete frame: {text:?}");
    text.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|frame| {
            let (event, data) = frame.split_once('\n').unwrap();
            let name = event.strip_prefix("event: ").unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name, "data type matches the event name");
            (name.to_owned(), data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

fn streamed_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, data)| data["delta"]["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn stream_sends_events_in_api_order() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let response = post(&sim, "/v1/messages?beta=true", &body("[sim:words=10] go", true)).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = sse_events(&response.text().await.unwrap());
    let mut want = vec!["message_start", "content_block_start", "ping"];
    // "Simulated reply: w1 ... w10" is 12 words: four chunks of three.
    want.extend(["content_block_delta"; 4]);
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), want);

    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_sim_"));
    assert_eq!(start["model"], "claude-haiku-4-5-20251001");
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(events[1].1["content_block"], json!({"type": "text", "text": ""}));
    let text = streamed_text(&events);
    assert_eq!(text, "Simulated reply: w1 w2 w3 w4 w5 w6 w7 w8 w9 w10");
    let end = &events[events.len() - 2].1;
    assert_eq!(end["delta"]["stop_reason"], "end_turn");
    assert_eq!(end["usage"]["output_tokens"], text.len().div_ceil(4));

    // The same request without streaming reports the same usage.
    let plain: Value =
        post(&sim, "/v1/messages", &body("[sim:words=10] go", false)).await.json().await.unwrap();
    assert_eq!(plain["usage"]["input_tokens"], start["usage"]["input_tokens"]);
    assert_eq!(plain["usage"]["output_tokens"], end["usage"]["output_tokens"]);
}

#[tokio::test]
async fn non_stream_reply_has_the_message_shape() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let response = post(&sim, "/v1/messages", &body("What is 2+2?", false)).await;
    assert_eq!(response.status(), 200);
    let mut message: Value = response.json().await.unwrap();
    assert!(message["id"].as_str().unwrap().starts_with("msg_sim_"));
    message["id"] = json!("ID");
    // system "You are terse." (14) + prompt (12) = 26 chars -> 7 tokens;
    // the reply is 29 chars -> 8 tokens.
    assert_eq!(
        message,
        json!({
            "id": "ID",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5-20251001",
            "content": [{"type": "text", "text": "Simulated reply: What is 2+2?"}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 7, "output_tokens": 8,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        })
    );
}

#[tokio::test]
async fn status_directive_returns_anthropic_errors() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    for (code, kind, retry_after) in [
        (429, "rate_limit_error", Some("1")),
        (529, "overloaded_error", Some("1")),
        (401, "authentication_error", None),
        (500, "api_error", None),
    ] {
        for stream in [true, false] {
            let response =
                post(&sim, "/v1/messages", &body(&format!("hi [sim:status={code}]"), stream)).await;
            assert_eq!(response.status().as_u16(), code);
            assert_eq!(response.headers().get("retry-after").map(|v| v.to_str().unwrap()), retry_after);
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["type"], "error");
            assert_eq!(error["error"]["type"], kind, "status {code}");
            assert!(error["error"]["message"].is_string());
        }
    }
}

#[tokio::test]
async fn fail_once_and_config_failures() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let first = post(&sim, "/v1/messages", &body("[sim:fail_once=t1] hi", false)).await;
    assert_eq!(first.status(), 529);
    assert_eq!(first.headers()["retry-after"], "0");
    let again = post(&sim, "/v1/messages", &body("[sim:fail_once=t1] hi", false)).await;
    assert_eq!(again.status(), 200);

    let failing = spawn(SimConfig { fail_status: Some(503), ..Default::default() }).await.unwrap();
    assert_eq!(post(&failing, "/v1/messages", &body("hi", true)).await.status(), 503);
    // A directive overrides the start-up failure.
    assert_eq!(post(&failing, "/v1/messages", &body("[sim:status=400]", true)).await.status(), 400);
}

#[tokio::test]
async fn max_tokens_truncates_the_reply() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let mut request = body("[sim:words=500]", false);
    request["max_tokens"] = json!(20);
    let message: Value = post(&sim, "/v1/messages", &request).await.json().await.unwrap();
    assert_eq!(message["stop_reason"], "max_tokens");
    assert_eq!(message["usage"]["output_tokens"], 20);
    assert_eq!(message["content"][0]["text"].as_str().unwrap().len(), 80);

    request["stream"] = json!(true);
    let events = sse_events(&post(&sim, "/v1/messages", &request).await.text().await.unwrap());
    assert_eq!(streamed_text(&events), message["content"][0]["text"].as_str().unwrap());
    let end = &events[events.len() - 2].1;
    assert_eq!(end["delta"]["stop_reason"], "max_tokens");
    assert_eq!(end["usage"]["output_tokens"], 20);
}

#[tokio::test]
async fn request_log_records_every_message_request() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let mut first = body("hello", true);
    first["messages"] = json!([{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
        {"type": "text", "text": "hello there"}
    ]}]);
    post(&sim, "/v1/messages?beta=true", &first).await.text().await.unwrap();
    post(&sim, "/v1/messages", &body("[sim:status=500] second", false)).await;
    post(&sim, "/v1/messages/count_tokens", &body("not logged", false)).await;

    assert_eq!(sim.sim.request_count(), 2);
    let log = sim.sim.requests();
    assert_eq!(log[0].model, "claude-haiku-4-5-20251001");
    assert!(log[0].stream);
    assert_eq!(log[0].last_user_text, "hello there");
    assert_eq!(log[0].body, first);
    assert!(!log[1].stream);
    assert_eq!(log[1].last_user_text, "[sim:status=500] second");
    sim.sim.clear();
    assert_eq!(sim.sim.request_count(), 0);
}

#[tokio::test]
async fn tool_directive_streams_a_tool_use_block() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let prompt = r#"[sim:tool=Read {"file_path":"/tmp/a.txt"}] read it"#;
    let events = sse_events(&post(&sim, "/v1/messages", &body(prompt, true)).await.text().await.unwrap());
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "tool_use", "id": "toolu_sim_1", "name": "Read", "input": {}})
    );
    let delta = &events[3].1["delta"];
    assert_eq!(delta["type"], "input_json_delta");
    let input: Value = serde_json::from_str(delta["partial_json"].as_str().unwrap()).unwrap();
    assert_eq!(input, json!({"file_path": "/tmp/a.txt"}));
    assert_eq!(events[5].1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn count_tokens_and_bad_requests() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let counted: Value =
        post(&sim, "/v1/messages/count_tokens", &body("What is 2+2?", false)).await.json().await.unwrap();
    assert_eq!(counted, json!({"input_tokens": 7}));

    let client = reqwest::Client::new();
    let malformed = client
        .post(format!("{}/v1/messages", sim.base_url()))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let error: Value = malformed.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");

    let missing_model = post(&sim, "/v1/messages", &json!({"messages": []})).await;
    assert_eq!(missing_model.status(), 400);
    let bad_directive = post(&sim, "/v1/messages", &body("[sim:wrods=3]", false)).await;
    assert_eq!(bad_directive.status(), 400);

    let unknown = client.get(format!("{}/v1/models", sim.base_url())).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let error: Value = unknown.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn delays_slow_the_stream() {
    let sim = spawn(SimConfig { first_token_delay_ms: 150, ..Default::default() }).await.unwrap();
    let started = Instant::now();
    let text =
        post(&sim, "/v1/messages", &body("[sim:words=8][sim:delay_ms=40]", true)).await.text().await.unwrap();
    // 150 ms before the first of four deltas, 40 ms before each of the other three.
    assert!(started.elapsed() >= Duration::from_millis(270), "{:?}", started.elapsed());
    assert_eq!(sse_events(&text).len(), 10);
}

#[tokio::test]
async fn hung_stream_stays_open_until_shutdown() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let response = post(&sim, "/v1/messages", &body("[sim:hang]", true)).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = String::new();
    while !received.contains("content_block_start") {
        let chunk = stream.next().await.unwrap().unwrap();
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let more = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(more.is_err(), "a hung stream must send nothing more, got {more:?}");
    assert_eq!(names(&sse_events(&received)), ["message_start", "content_block_start"]);

    tokio::time::timeout(Duration::from_secs(5), sim.shutdown())
        .await
        .expect("shutdown ends hung streams promptly")
        .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap();
    assert!(rest.is_none(), "stream ends at shutdown, got {rest:?}");
}

#[tokio::test]
async fn cache_directives_and_fail_model_show_on_the_wire() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let prompt = "[sim:cache_read=500] [sim:cache_write=40] [sim:fail_model=claude-opus-4-8] hi";
    let response = post(&sim, "/v1/messages", &body(prompt, true)).await;
    assert_eq!(response.status(), 200, "haiku is not the failing model");
    let events = sse_events(&response.text().await.unwrap());
    let usage = &events[0].1["message"]["usage"];
    assert_eq!(
        (usage["cache_read_input_tokens"].as_u64(), usage["cache_creation_input_tokens"].as_u64()),
        (Some(500), Some(40))
    );
    assert!(usage["input_tokens"].as_u64().unwrap() > 0);

    let mut opus = body(prompt, true);
    opus["model"] = json!("claude-opus-4-8");
    let response = post(&sim, "/v1/messages", &opus).await;
    assert_eq!(response.status(), 529);
    assert_eq!(response.headers()["retry-after"], "1");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn open_replies_are_counted_until_the_client_leaves() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let response = post(&sim, "/v1/messages", &body("[sim:words=300] [sim:delay_ms=50]", true)).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    stream.next().await.expect("a first frame").unwrap();
    assert_eq!(sim.sim.open_replies(), 1);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.sim.open_replies() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.sim.open_replies(), 0, "the stream outlived its client");
}

#[tokio::test]
async fn a_whole_message_being_waited_for_is_an_open_reply() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let url = format!("{}/v1/messages", sim.base_url());
    let request = reqwest::Client::new().post(url).json(&body("[sim:first_token_ms=500] slow", false)).send();
    let asked = tokio::spawn(request);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.sim.open_replies() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sim.sim.open_replies(), 1, "the reply being waited for was not counted");
    let response = asked.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(sim.sim.open_replies(), 0);
}
