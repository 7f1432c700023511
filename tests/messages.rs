//! `POST /v1/messages` in Anthropic's wire format, end to end through the
//! real Claude Code CLI against the simulated upstream, and Claude Code
//! itself as a client of the gateway.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{claude_bin, client, sse_events, Options, TestApp, TestDb};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const ADMIN: &str = "admin-key-for-messages-tests-0123";

fn messages_body(model: &str, prompt: &str) -> Value {
    json!({"model": model, "max_tokens": 1024, "messages": [{"role": "user", "content": prompt}]})
}

/// A request as Anthropic's SDKs send it: `x-api-key` and the version headers.
fn post(app: &TestApp, path: &str, key: &str) -> reqwest::RequestBuilder {
    client()
        .post(format!("{}{path}", app.url))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31,interleaved-thinking-2025-05-14")
}

/// Status and body of an error, checked to be in Anthropic's shape.
async fn anthropic_error(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["type"], "error", "{body}");
    let kind = body["error"]["type"].as_str().expect("error.type").to_string();
    let message = body["error"]["message"].as_str().expect("error.message").to_string();
    assert!(body.get("param").is_none() && body["error"].get("param").is_none(), "no OpenAI fields: {body}");
    (status, kind, message)
}

async fn project_key(app: &TestApp, project: &str, key: Value) -> String {
    let admin = |path: String, body: Value| {
        client().post(format!("{}{path}", app.url)).bearer_auth(ADMIN).json(&body)
    };
    let created =
        admin("/admin/projects".into(), json!({"id": project, "name": project})).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let key: Value =
        admin(format!("/admin/projects/{project}/keys"), key).send().await.unwrap().json().await.unwrap();
    key["key"].as_str().expect("key secret").to_string()
}

/// The request's ledger row, once written (refusals are written in the
/// background).
async fn ledger_row(app: &TestApp, request_id: &str) -> ccgate::store::LedgerRow {
    for _ in 0..200 {
        if let Some(row) = app.state.budget.store().ledger_row(request_id).await.unwrap() {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no ledger row for {request_id}");
}

#[tokio::test]
async fn a_message_has_text_usage_cost_and_a_ledger_row() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let body = json!({
        "model": "haiku",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Answer briefly.", "cache_control": {"type": "ephemeral"}}],
        "metadata": {"user_id": "u-1"},
        "temperature": 0.2,
        "stop_sequences": ["\n\nHuman:"],
        "tools": [],
        "thinking": {"type": "disabled"},
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
            {"role": "user", "content": [{"type": "text", "text": "And of Italy?", "cache_control": {"type": "ephemeral"}}]}
        ]
    });
    let response = post(&app, "/v1/messages?beta=true", "sk-anything").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let cost: f64 = response.headers()["x-ccgate-cost-usd"].to_str().unwrap().parse().unwrap();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["id"], format!("msg_{request_id}"));
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "claude-haiku-4-5-20251001");
    assert_eq!(message["content"].as_array().map(Vec::len), Some(1));
    assert_eq!(message["content"][0]["type"], "text");
    let text = message["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("Simulated reply:"), "{text}");
    assert_eq!(message["stop_reason"], "end_turn");
    assert!(message["stop_sequence"].is_null());
    let usage = &message["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["output_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["cache_creation_input_tokens"].is_u64() && usage["cache_read_input_tokens"].is_u64());
    assert!(cost > 0.0);

    // The upstream saw the system prompt, the transcript and the new question.
    let seen = app.sim.sim.requests();
    let last = seen.last().unwrap();
    assert!(last.last_user_text.contains("And of Italy?"));
    assert!(last.last_user_text.contains("<assistant>\nParis.\n</assistant>"));
    assert!(last.body["system"].to_string().contains("Answer briefly."));

    let usage = app.wait_settled("default").await;
    assert_eq!(usage["spent_usd"].as_f64(), Some(cost));
    let row = app.state.budget.store().ledger_row(&request_id).await.unwrap().expect("ledger row");
    assert_eq!(row.endpoint, "/v1/messages");
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.model_requested.as_deref(), Some("haiku"));
    assert_eq!(row.model_used.as_deref(), Some("claude-haiku-4-5-20251001"));
    assert_eq!(row.cost.as_usd(), cost);
    app.stop().await;
}

/// Splits an SSE body into (event name, JSON data) pairs.
/// Each event's name and, for blocks and deltas, their type
/// (`content_block_start:thinking`), leaving text deltas out.
fn shape_without_text(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(name, data)| {
            let kind = data["content_block"]["type"].as_str().or(data["delta"]["type"].as_str());
            format!("{name}{}", kind.map(|k| format!(":{k}")).unwrap_or_default())
        })
        .filter(|s| !s.starts_with("content_block_delta:text_delta"))
        .collect()
}

#[tokio::test]
async fn streaming_sends_anthropics_event_sequence_with_text_in_several_deltas() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let mut body = messages_body("sonnet", "Count for me [sim:words=12] [sim:delay_ms=100]");
    body["stream"] = json!(true);
    let response = post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut text = String::new();
    let mut stream = response.bytes_stream();
    while let Some(bytes) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
    }
    let events = sse_events(&text);
    for (name, data) in &events {
        assert_eq!(data["type"].as_str(), Some(name.as_str()), "each event names its type: {data}");
    }
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let deltas = names.iter().filter(|n| **n == "content_block_delta").count();
    assert!(deltas >= 3, "text comes in several deltas: {names:?}");
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);

    let start = &events[0].1["message"];
    assert_eq!(start["id"], format!("msg_{request_id}"));
    assert_eq!((start["type"].as_str(), start["role"].as_str()), (Some("message"), Some("assistant")));
    assert_eq!(start["model"], "claude-sonnet-5");
    assert_eq!(start["content"], json!([]));
    assert!(start["stop_reason"].is_null());
    assert_eq!(events[1].1["content_block"], json!({"type": "text", "text": ""}));
    let joined: String = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, data)| {
            assert_eq!(data["index"], 0);
            assert_eq!(data["delta"]["type"], "text_delta");
            data["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        joined, "Simulated reply: w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12",
        "text arrives once, in order"
    );
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["delta"]["stop_sequence"].is_null());
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(delta["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let cost = delta["x_ccgate"]["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0);

    app.wait_settled("default").await;
    let row = app.state.budget.store().ledger_row(&request_id).await.unwrap().expect("ledger row");
    assert_eq!((row.endpoint.as_str(), row.status.as_str()), ("/v1/messages", "succeeded"));
    assert_eq!(row.cost.as_usd(), cost);
    app.stop().await;
}

#[tokio::test]
async fn answers_are_cut_at_the_first_stop_sequence_streamed_or_not() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let mut body = messages_body("haiku", "[sim:words=12]");
    // " w5 w6" spans two of the simulator's three-word deltas.
    body["stop_sequences"] = json!(["never", " w5 w6"]);
    let message: Value =
        post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(message["content"][0]["text"], "Simulated reply: w1 w2 w3 w4");
    assert_eq!(message["stop_reason"], "stop_sequence");
    assert_eq!(message["stop_sequence"], " w5 w6");

    body["stream"] = json!(true);
    let text =
        post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap().text().await.unwrap();
    let events = sse_events(&text);
    let joined: String = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, data)| data["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(joined, "Simulated reply: w1 w2 w3 w4");
    let (name, delta) = &events[events.len() - 2];
    assert_eq!(name, "message_delta");
    assert_eq!(delta["delta"], json!({"stop_reason": "stop_sequence", "stop_sequence": " w5 w6"}));
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("message_stop"));
    app.stop().await;
}

#[tokio::test]
async fn keys_come_in_x_api_key_or_bearer_and_refusals_are_anthropic_errors() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { admin_key: Some(ADMIN.into()), ..Options::default() }).await;
    let key = project_key(&app, "team-a", json!({"name": "a"})).await;
    let body = messages_body("haiku", "hello");

    let response = post(&app, "/v1/messages", &key).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let response =
        client().post(format!("{}/v1/messages", app.url)).bearer_auth(&key).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "Authorization: Bearer works too");

    let (status, kind, _) =
        anthropic_error(post(&app, "/v1/messages", "ccg_not_a_real_key").json(&body).send().await.unwrap())
            .await;
    assert_eq!((status, kind.as_str()), (401, "authentication_error"));
    let no_key = client().post(format!("{}/v1/messages", app.url)).json(&body).send().await.unwrap();
    let (status, kind, message) = anthropic_error(no_key).await;
    assert_eq!((status, kind.as_str()), (401, "authentication_error"));
    assert!(message.contains("x-api-key"), "{message}");
    let mut other_project = body.clone();
    other_project["project_id"] = json!("team-b");
    let (status, kind, _) =
        anthropic_error(post(&app, "/v1/messages", &key).json(&other_project).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (403, "permission_error"));
    let limited = project_key(&app, "team-l", json!({"name": "l", "rpm_limit": 1})).await;
    let count = |key: String| {
        let request = post(&app, "/v1/messages/count_tokens", &key).json(&body);
        async move { request.send().await.unwrap() }
    };
    assert_eq!(count(limited.clone()).await.status(), 200);
    let refused = count(limited).await;
    assert!(refused.headers().contains_key("retry-after"));
    let (status, kind, _) = anthropic_error(refused).await;
    assert_eq!((status, kind.as_str()), (429, "rate_limit_error"));
    // Other routes keep OpenAI's shape.
    let chat = client().post(format!("{}/v1/chat/completions", app.url)).header("x-api-key", "ccg_nope");
    let chat: Value = chat.json(&json!({})).send().await.unwrap().json().await.unwrap();
    assert_eq!(chat["error"]["type"], "authentication_error");
    assert!(chat.get("type").is_none());

    app.wait_settled_as("team-a", ADMIN).await;
    let row = app.state.budget.store().ledger_row(&request_id).await.unwrap().expect("ledger row");
    assert_eq!((row.project_id.as_str(), row.endpoint.as_str()), ("team-a", "/v1/messages"));
    app.stop().await;
}

#[tokio::test]
async fn invalid_and_unsupported_requests_get_anthropic_400s_and_run_nothing() {
    let db = TestDb::sqlite();
    let app =
        TestApp::spawn(&db, Options { adjust: |s| s.max_body_bytes = 16 * 1024, ..Options::default() }).await;
    let image = json!([{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]);
    let tool_result = json!([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}]);
    // (body, text the message must contain)
    let cases = [
        (json!({"model": "haiku", "messages": [{"role": "user", "content": "hi"}]}), "max_tokens"),
        (
            json!({"model": "haiku", "max_tokens": 10, "messages": [{"role": "user", "content": image}]}),
            "fetches nothing",
        ),
        (
            json!({"model": "haiku", "max_tokens": 10, "messages": [{"role": "user", "content": tool_result}]}),
            "direct backend",
        ),
        (
            json!({"model": "haiku", "max_tokens": 10, "tools": [{"name": "calc", "input_schema": {"type": "object"}}],
                   "messages": [{"role": "user", "content": "hi"}]}),
            "direct backend",
        ),
        (
            json!({"model": "haiku", "max_tokens": 10, "tools": [{"type": "web_search_20250305", "name": "web_search"}],
                   "messages": [{"role": "user", "content": "hi"}]}),
            "\"web_search\"",
        ),
        (
            json!({"model": "haiku", "max_tokens": 10,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "video"}]}]}),
            "messages[0].content[1]",
        ),
        (
            json!({"model": "haiku", "max_tokens": 10, "messages": [{"role": "system", "content": "hi"}]}),
            "system",
        ),
        (json!({"model": "haiku", "max_tokens": "many", "messages": []}), "max_tokens"),
        (
            json!({"model": "haiku", "max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}]}),
            "max_tokens",
        ),
    ];
    for (body, needle) in cases {
        let response = post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap();
        let (status, kind, message) = anthropic_error(response).await;
        assert_eq!((status, kind.as_str()), (400, "invalid_request_error"), "{body}");
        assert!(message.contains(needle), "{message:?} should mention {needle}");
    }
    let malformed = post(&app, "/v1/messages", "sk-anything").header("content-type", "application/json");
    let (status, kind, _) = anthropic_error(malformed.body("{not json").send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (400, "invalid_request_error"));
    let (status, kind, _) = anthropic_error(
        post(&app, "/v1/messages", "sk-anything").json(&messages_body("gpt-4", "hi")).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, kind.as_str()), (404, "not_found_error"));
    let (status, kind, _) =
        anthropic_error(client().get(format!("{}/v1/messages/batches/nope", app.url)).send().await.unwrap())
            .await;
    assert_eq!((status, kind.as_str()), (404, "not_found_error"));
    let huge = messages_body("haiku", &"x".repeat(32 * 1024));
    let (status, kind, _) =
        anthropic_error(post(&app, "/v1/messages", "sk-anything").json(&huge).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (413, "request_too_large"));
    let (status, kind, _) =
        anthropic_error(client().get(format!("{}/v1/messages", app.url)).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (405, "invalid_request_error"));
    assert_eq!(app.sim.sim.request_count(), 0, "nothing ran");
    app.stop().await;
}

#[tokio::test]
async fn budget_refusals_and_upstream_failures_keep_their_status_in_anthropic_form() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    app.create_project("tiny", Some(0.000_001)).await;
    let response = post(&app, "/v1/messages", "sk-anything")
        .header("x-project-id", "tiny")
        .json(&messages_body("opus", "expensive"))
        .send()
        .await
        .unwrap();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let (status, kind, message) = anthropic_error(response).await;
    assert_eq!((status, kind.as_str()), (429, "rate_limit_error"));
    assert!(message.contains("budget"), "{message}");

    let mut body = messages_body("haiku", "slow down [sim:status=429]");
    body["stream"] = json!(true);
    let (status, kind, _) =
        anthropic_error(post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (429, "rate_limit_error"), "a stream that fails before any text");
    let (status, kind, _) = anthropic_error(
        post(&app, "/v1/messages", "sk-anything")
            .json(&messages_body("haiku", "[sim:status=500]"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, kind.as_str()), (502, "api_error"));

    let row = ledger_row(&app, &request_id).await;
    assert_eq!((row.endpoint.as_str(), row.status.as_str()), ("/v1/messages", "budget_exceeded"));
    app.stop().await;
}

#[tokio::test]
async fn a_stream_that_fails_after_its_first_text_ends_with_an_error_event() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { request_timeout_secs: 6, ..Options::default() }).await;
    // About 17 deltas 700 ms apart: the deadline falls mid-answer.
    let mut body = messages_body("haiku", "[sim:words=50] [sim:delay_ms=700]");
    body["stream"] = json!(true);
    let response = post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names[..4],
        ["message_start", "content_block_start", "ping", "content_block_delta"],
        "{names:?}"
    );
    assert!(!names.contains(&"message_stop"), "{names:?}");
    let (name, error) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "timeout_error");
    app.wait_settled("default").await;
    let row = ledger_row(&app, &request_id).await;
    assert_eq!((row.endpoint.as_str(), row.status.as_str()), ("/v1/messages", "timeout"));
    app.stop().await;
}

#[tokio::test]
async fn auto_routes_like_chat_completions_and_count_tokens_estimates() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let response = post(&app, "/v1/messages", "sk-anything")
        .json(&messages_body("auto", "What is the capital of France?"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let route = response.headers()["x-ccgate-route"].to_str().unwrap().to_string();
    assert!(route.starts_with("tier=haiku;"), "{route}");
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["model"], "claude-haiku-4-5-20251001");

    let count = |text: String| {
        let request = post(&app, "/v1/messages/count_tokens", "sk-anything")
            .json(&json!({"model": "haiku", "system": "Be brief.", "messages": [{"role": "user", "content": text}]}));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["input_tokens"].as_u64().expect("input_tokens")
        }
    };
    let short = count("hello".into()).await;
    let long = count("hello there, how are you doing today? ".repeat(50)).await;
    // "Be brief." and "hello" are a handful of tokens, plus framing.
    assert!((4..20).contains(&short), "{short}");
    assert!(long > short + 300, "{long} vs {short}");
    let (status, kind, _) = anthropic_error(
        post(&app, "/v1/messages/count_tokens", "sk-anything")
            .json(&json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, kind.as_str()), (404, "not_found_error"));
    app.stop().await;
}

/// Claude Code itself, pointed at the gateway with `ANTHROPIC_BASE_URL`,
/// gets its answer through the gateway's own (nested) CLI workers.
#[tokio::test]
async fn claude_code_works_with_the_gateway_as_its_api() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { admin_key: Some(ADMIN.into()), ..Options::default() }).await;
    let key = project_key(&app, "cli-users", json!({"name": "cli"})).await;
    let output = run_claude_code(
        &app,
        &key,
        &["--bare", "--tools", ""],
        app.work_dir.path(),
        "say hi\n",
        Duration::from_secs(90),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));

    // The gateway's worker asked the simulated upstream, with the sim's key.
    let seen = app.sim.sim.requests();
    assert_eq!(seen.len(), 1, "one upstream call, from the gateway's worker");
    assert!(seen[0].body["messages"].to_string().contains("say hi"));
    assert_eq!(seen[0].model, "claude-haiku-4-5-20251001");
    app.wait_settled_as("cli-users", ADMIN).await;
    let rows = app.state.budget.store().ledger("cli-users", 10).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].endpoint, "/v1/messages");
    assert_eq!(rows[0].status, "succeeded");
    assert_eq!(rows[0].model_requested.as_deref(), Some("claude-haiku-4-5-20251001"));
    // The simulator echoes the user's words without the reminders heading
    // them: the client's reminder travels in the prompt the gateway's worker
    // sends, ahead of "say hi".
    assert_eq!(stdout.trim(), "Simulated reply: say hi");
    app.stop().await;
}

fn haiku_direct(settings: &mut ccgate::config::Settings) {
    settings.backends.insert("haiku".into(), "api".into());
}

/// A gateway whose haiku is served by the direct backend.
async fn direct_app(admin_key: Option<&str>) -> (TestDb, TestApp) {
    let db = TestDb::sqlite();
    let options =
        Options { adjust: haiku_direct, admin_key: admin_key.map(String::from), ..Options::default() };
    let app = TestApp::spawn(&db, options).await;
    (db, app)
}

fn read_tool() -> Value {
    json!({"name": "Read", "description": "Reads a file",
           "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}})
}

const READ_PROMPT: &str = r#"read it [sim:tool=Read {"file_path": "/srv/notes.txt"}]"#;

/// Prompt caching is what makes long agent sessions affordable: the
/// client's `cache_control` breakpoints reach the upstream on the system
/// prompt, on the tool they follow and at the end of their turn.
#[tokio::test]
async fn cache_breakpoints_reach_the_upstream() {
    let (_db, app) = direct_app(None).await;
    let ephemeral = json!({"type": "ephemeral"});
    let mut tool = read_tool();
    tool["cache_control"] = ephemeral.clone();
    let body = json!({
        "model": "haiku", "max_tokens": 50,
        "system": [{"type": "text", "text": "You read files."},
                   {"type": "text", "text": "Be brief.", "cache_control": ephemeral}],
        "tools": [tool],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a long document"},
                                         {"type": "text", "text": "[sim:words=2] sum it up",
                                          "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
        ],
    });
    let response = post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    let upstream = &app.sim.sim.requests()[0].body;
    assert_eq!(
        upstream["system"],
        json!([{"type": "text", "text": "You read files.\nBe brief.", "cache_control": ephemeral}])
    );
    assert_eq!(upstream["tools"][0]["cache_control"], ephemeral);
    assert_eq!(
        upstream["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "a long document\n[sim:words=2] sum it up",
                                             "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}])
    );

    // Without breakpoints, nothing is added.
    let plain = messages_body("haiku", "[sim:words=2] hi");
    let response = post(&app, "/v1/messages", "sk-anything").json(&plain).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(!app.sim.sim.requests()[1].body.to_string().contains("cache_control"));
}

#[tokio::test]
async fn tool_calls_come_back_as_tool_use_blocks_and_their_results_reach_the_upstream() {
    let (_db, app) = direct_app(None).await;
    let mut body = messages_body("haiku", READ_PROMPT);
    body["tools"] = json!([read_tool()]);
    body["tool_choice"] = json!({"type": "auto", "disable_parallel_tool_use": true});
    let response = post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["stop_reason"], "tool_use");
    let content = message["content"].as_array().expect("content");
    assert_eq!(content.len(), 1, "no empty text block before the call: {message}");
    assert_eq!(content[0]["type"], "tool_use");
    assert_eq!(content[0]["name"], "Read");
    assert_eq!(content[0]["input"], json!({"file_path": "/srv/notes.txt"}));
    let call_id = content[0]["id"].as_str().expect("tool_use id").to_string();
    let first = &app.sim.sim.requests()[0].body;
    assert_eq!(first["tools"], json!([read_tool()]), "the tools reach the upstream as sent");
    assert_eq!(first["tool_choice"], json!({"type": "auto"}));

    // The client ran the tool (and it failed): the result goes back with the call.
    let mut follow_up = body.clone();
    follow_up["messages"] = json!([
        {"role": "user", "content": READ_PROMPT},
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call_id, "is_error": true,
             "content": [{"type": "text", "text": "File does not exist."}]}
        ]}
    ]);
    let response = post(&app, "/v1/messages", "sk-anything").json(&follow_up).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["stop_reason"], "end_turn");
    assert_eq!(
        answer["content"],
        json!([{"type": "text", "text": "Simulated reply: tool result: File does not exist."}])
    );
    let second = &app.sim.sim.requests()[1].body;
    assert_eq!(
        second["messages"][1]["content"],
        json!([{"type": "tool_use", "id": call_id, "name": "Read", "input": {"file_path": "/srv/notes.txt"}}])
    );
    assert_eq!(
        second["messages"][2]["content"],
        json!([{"type": "tool_result", "tool_use_id": call_id, "content": "File does not exist.", "is_error": true}])
    );
    app.stop().await;
}

#[tokio::test]
async fn a_streamed_tool_call_is_a_tool_use_block_with_input_json_deltas() {
    let (_db, app) = direct_app(None).await;
    let mut body = messages_body("haiku", READ_PROMPT);
    body["tools"] = json!([read_tool()]);
    body["tool_choice"] = json!({"type": "tool", "name": "Read"});
    body["stream"] = json!(true);
    let response = post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let deltas = names.iter().filter(|n| **n == "content_block_delta").count();
    assert!(deltas >= 1, "{names:?}");
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    let start = &events[1].1;
    assert_eq!(start["index"], 0);
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert_eq!(start["content_block"]["name"], "Read");
    assert_eq!(start["content_block"]["input"], json!({}));
    assert!(start["content_block"]["id"].as_str().is_some_and(|id| !id.is_empty()), "{start}");
    let input: String = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, data)| {
            assert_eq!(data["index"], 0);
            assert_eq!(data["delta"]["type"], "input_json_delta");
            data["delta"]["partial_json"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&input).unwrap(), json!({"file_path": "/srv/notes.txt"}));
    assert_eq!(events[names.len() - 2].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(app.sim.sim.requests()[0].body["tool_choice"], json!({"type": "tool", "name": "Read"}));
    app.stop().await;
}

#[tokio::test]
async fn images_reach_the_upstream_and_count_toward_the_token_estimate() {
    let (_db, app) = direct_app(None).await;
    let png = "iVBORw0KGgo=";
    let content = json!([
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
        {"type": "text", "text": "what is this?"}
    ]);
    let body =
        json!({"model": "haiku", "max_tokens": 100, "messages": [{"role": "user", "content": content}]});
    let response = post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let upstream = &app.sim.sim.requests()[0].body;
    assert_eq!(upstream["messages"][0]["content"], content, "the image goes upstream as sent");

    let count = |body: Value| {
        let request = post(&app, "/v1/messages/count_tokens", "sk-anything").json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()["input_tokens"].as_u64().expect("input_tokens")
        }
    };
    let text_only =
        count(json!({"model": "haiku", "messages": [{"role": "user", "content": "what is this?"}]})).await;
    let with_image = count(body.clone()).await;
    let mut with_tools = body;
    with_tools["tools"] = json!([read_tool()]);
    let with_tools = count(with_tools).await;
    assert!(with_image >= text_only + 1000, "an image counts: {with_image} vs {text_only}");
    assert!(with_tools > with_image, "tool definitions count: {with_tools} vs {with_image}");
    app.stop().await;
}

#[tokio::test]
async fn the_cli_backend_refuses_tools_and_tool_blocks_naming_the_direct_backend() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let mut with_tools = messages_body("haiku", "hi");
    with_tools["tools"] = json!([read_tool()]);
    let mut with_call = messages_body("haiku", "hi");
    with_call["messages"] = json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]}
    ]);
    for body in [with_tools, with_call] {
        let response = post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap();
        let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
        let (status, kind, message) = anthropic_error(response).await;
        assert_eq!((status, kind.as_str()), (400, "invalid_request_error"), "{body}");
        assert!(message.contains("CLI backend") && message.contains("direct backend"), "{message}");
        let row = ledger_row(&app, &request_id).await;
        assert_eq!((row.endpoint.as_str(), row.status.as_str()), ("/v1/messages", "invalid_request"));
    }
    assert_eq!(app.sim.sim.request_count(), 0, "nothing ran");
    app.stop().await;
}

/// Claude Code with its tools on, as users run it (not `--bare`), pointed at
/// the gateway: the model (the simulated upstream, through the direct
/// backend) asks for `Read`, Claude Code reads the file itself and sends the
/// result back through the gateway. `--allowedTools Read` lets it read
/// without asking.
#[tokio::test]
async fn claude_code_runs_its_own_tools_through_the_gateway() {
    let (_db, app) = direct_app(Some(ADMIN)).await;
    let key = project_key(&app, "cli-tools", json!({"name": "cli"})).await;
    let project = tempfile::tempdir().unwrap();
    let notes = project.path().join("notes.txt");
    std::fs::write(&notes, "the launch code is 4711\n").unwrap();
    let prompt = format!("read it [sim:tool=Read {}]\n", json!({"file_path": notes.to_str().unwrap()}));
    let output = run_claude_code(
        &app,
        &key,
        &["--allowedTools", "Read"],
        project.path(),
        &prompt,
        Duration::from_secs(120),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));

    // Two upstream calls, both from the direct backend: the tool use, then
    // the answer to Claude Code's tool result holding the file's content.
    let seen = app.sim.sim.requests();
    assert_eq!(seen.len(), 2, "{:?}", seen.iter().map(|r| &r.body).collect::<Vec<_>>());
    // Claude Code's prompt-cache breakpoints reach the upstream too.
    for request in &seen {
        assert!(request.body["system"][0]["cache_control"].is_object(), "{}", request.body["system"]);
        assert!(
            request.body["messages"].to_string().contains("cache_control"),
            "{}",
            request.body["messages"]
        );
    }
    let offered: Vec<&str> = seen[0].body["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    for tool in ["Read", "Edit", "Bash"] {
        assert!(offered.contains(&tool), "Claude Code's own tools reach the upstream: {offered:?}");
    }
    let messages = seen[1].body["messages"].as_array().expect("messages");
    let call = messages[messages.len() - 2]["content"]
        .as_array()
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_use"))
        .expect("the assistant's tool_use went back upstream");
    assert_eq!(call["name"], "Read");
    // Claude Code asks for thinking; the signed block the upstream gave it
    // went back first in the tool call's turn (the upstream checks it).
    assert_eq!(seen[0].body["thinking"]["type"], "enabled", "{}", seen[0].body["thinking"]);
    let turn = &messages[messages.len() - 2]["content"][0];
    assert_eq!(turn["type"], "thinking", "{turn}");
    assert!(turn["signature"].as_str().is_some_and(|s| s.starts_with("sim_sig_")), "{turn}");
    let result = messages.last().unwrap()["content"]
        .as_array()
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_result"))
        .expect("a tool_result block");
    assert_eq!(result["tool_use_id"], call["id"]);
    assert!(result["content"].to_string().contains("the launch code is 4711"), "{result}");
    assert!(stdout.contains("Simulated reply: tool result:") && stdout.contains("4711"), "{stdout}");
    assert_eq!(app.running_workers(), Vec::<u32>::new(), "no CLI worker of the gateway's ran");

    app.wait_settled_as("cli-tools", ADMIN).await;
    let rows = app.state.budget.store().ledger("cli-tools", 10).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!((row.endpoint.as_str(), row.status.as_str()), ("/v1/messages", "succeeded"));
        assert_eq!(row.model_used.as_deref(), Some("claude-haiku-4-5-20251001"));
    }
    app.stop().await;
}

/// Runs the real Claude Code CLI with ccgate as its API (`-p`, haiku, the
/// prompt on stdin) and waits for it. Only this client talks to the
/// gateway: the gateway's own workers get their upstream from
/// `worker_env`, never from the client.
async fn run_claude_code(
    app: &TestApp,
    key: &str,
    flags: &[&str],
    cwd: &std::path::Path,
    prompt: &str,
    timeout: Duration,
) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(claude_bin());
    command
        .args(["-p", "--model", "haiku", "--no-session-persistence"])
        .args(flags)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", &app.url)
        .env("ANTHROPIC_API_KEY", key)
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start the Claude Code CLI");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(prompt.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(timeout, child.wait_with_output()).await.expect("the CLI finished").unwrap()
}

#[tokio::test]
async fn sampling_and_stop_sequences_reach_the_direct_backend_which_stops_there() {
    let (_db, app) = direct_app(None).await;
    let mut body = messages_body("haiku", "[sim:words=12]");
    body["stop_sequences"] = json!(["never", " w5 w6"]);
    body["temperature"] = json!(0.25);
    body["top_p"] = json!(0.8);
    body["top_k"] = json!(20);
    let message: Value =
        post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(message["content"][0]["text"], "Simulated reply: w1 w2 w3 w4");
    assert_eq!(
        (&message["stop_reason"], &message["stop_sequence"]),
        (&json!("stop_sequence"), &json!(" w5 w6"))
    );
    let upstream = &app.sim.sim.requests()[0].body;
    assert_eq!(upstream["stop_sequences"], json!(["never", " w5 w6"]));
    assert_eq!(
        (&upstream["temperature"], &upstream["top_p"], &upstream["top_k"]),
        (&json!(0.25), &json!(0.8), &json!(20))
    );
    // Stopped by the model, so billed for the shorter answer.
    assert!(message["usage"]["output_tokens"].as_u64() < Some(10), "{message}");

    body["stream"] = json!(true);
    let text =
        post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap().text().await.unwrap();
    let events = sse_events(&text);
    let (name, delta) = &events[events.len() - 2];
    assert_eq!(name, "message_delta");
    assert_eq!(delta["delta"], json!({"stop_reason": "stop_sequence", "stop_sequence": " w5 w6"}));

    for (field, value) in [("temperature", json!(1.5)), ("top_p", json!(0)), ("top_k", json!(0))] {
        let mut bad = messages_body("haiku", "hi");
        bad[field] = value;
        let (status, kind, message) =
            anthropic_error(post(&app, "/v1/messages", "sk-anything").json(&bad).send().await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (400, "invalid_request_error"), "{field}: {message}");
        assert!(message.contains(field), "{message}");
    }
    app.stop().await;
}

/// Extended thinking on the direct backend: the upstream's signed thinking
/// block comes back first, streamed or not, and a client that continues a
/// tool call hands it back unchanged; the simulated upstream, like the
/// API, refuses the continuation otherwise and checks the signature. With
/// the default stall timeout (60 s) the cap is small enough that a
/// non-streaming request takes the whole message from the upstream, and a
/// streaming one streams.
#[tokio::test]
async fn extended_thinking_comes_back_signed_and_goes_back_with_the_tool_result() {
    let db = TestDb::sqlite();
    let app =
        TestApp::spawn(&db, Options { adjust: haiku_direct, stall_timeout_secs: 60, ..Options::default() })
            .await;
    let mut body = messages_body("haiku", READ_PROMPT);
    body["max_tokens"] = json!(1100);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    body["tools"] = json!([read_tool()]);
    let response = post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.unwrap();
    let kinds: Vec<&str> =
        message["content"].as_array().unwrap().iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["thinking", "tool_use"], "{message}");
    let thinking = &message["content"][0];
    assert!(thinking["thinking"].as_str().is_some_and(|t| t.starts_with("Simulated thinking")), "{thinking}");
    assert!(thinking["signature"].as_str().is_some_and(|s| s.starts_with("sim_sig_")), "{thinking}");
    assert_eq!(app.sim.sim.requests()[0].body["thinking"], json!({"type": "enabled", "budget_tokens": 1024}));

    let call_id = message["content"][1]["id"].as_str().unwrap().to_string();
    let mut follow_up = body.clone();
    follow_up["messages"] = json!([
        {"role": "user", "content": READ_PROMPT},
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "42"}]}
    ]);
    let response = post(&app, "/v1/messages", "sk-anything").json(&follow_up).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["content"][1], json!({"type": "text", "text": "Simulated reply: tool result: 42"}));
    let handed_back = &app.sim.sim.requests()[1].body["messages"][1]["content"][0];
    assert_eq!(handed_back, thinking, "the thinking block goes back first, unchanged");

    // Streamed: the thinking block first, with its text and signature as deltas.
    follow_up["stream"] = json!(true);
    let text = post(&app, "/v1/messages", "sk-anything")
        .json(&follow_up)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    let shape = shape_without_text(&events);
    assert_eq!(
        shape,
        [
            "message_start",
            "content_block_start:thinking",
            "ping",
            "content_block_delta:thinking_delta",
            "content_block_delta:signature_delta",
            "content_block_stop",
            "content_block_start:text",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let signature = events.iter().find_map(|(_, d)| d["delta"]["signature"].as_str()).unwrap();
    assert!(signature.starts_with("sim_sig_"));
    assert_eq!(events[6].1["index"], 1, "the text is block 1");

    // Without its thinking block the continuation is refused upstream.
    let mut bare = follow_up.clone();
    bare["stream"] = json!(false);
    bare["messages"][1]["content"] = json!([message["content"][1]]);
    let (status, kind, error) =
        anthropic_error(post(&app, "/v1/messages", "sk-anything").json(&bare).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (400, "invalid_request_error"), "{error}");
    assert!(error.contains("must start with a thinking block"), "{error}");
    let streamed: Vec<bool> = app.sim.sim.requests().iter().map(|r| r.stream).collect();
    assert_eq!(streamed, [false, false, true, false], "whole messages unless the client streams");
    app.stop().await;
}

/// On the CLI backend the request's `thinking` becomes Claude Code's own
/// setting: `disabled` (or none) turns its thinking off, `enabled` sets its
/// budget, `adaptive` leaves it to Claude Code, which budgets the output cap
/// less one; under a cap too small for the API's smallest budget (1,024
/// tokens, which the simulated upstream enforces too), off. The thinking
/// Claude Code passes on comes back signed, whole or streamed.
#[tokio::test]
async fn the_cli_backend_passes_the_thinking_setting_to_claude_code_and_returns_its_thinking() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let disabled = json!({"type": "disabled"});
    let cases = [
        (Some(json!({"type": "disabled"})), 4000, disabled.clone()),
        (None, 4000, disabled.clone()),
        (
            Some(json!({"type": "enabled", "budget_tokens": 2000})),
            4000,
            json!({"type": "enabled", "budget_tokens": 2000}),
        ),
        (Some(json!({"type": "adaptive"})), 4000, json!({"type": "enabled", "budget_tokens": 3999})),
        (Some(json!({"type": "adaptive"})), 1024, disabled),
    ];
    for (i, (asked, max_tokens, sent)) in cases.into_iter().enumerate() {
        let mut body = messages_body("haiku", &format!("think {i} [sim:words=2]"));
        body["max_tokens"] = json!(max_tokens);
        if let Some(asked) = asked {
            body["thinking"] = asked;
        }
        let response = post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let message: Value = response.json().await.unwrap();
        let seen = app.sim.sim.requests();
        let upstream =
            &seen.iter().rev().find(|r| r.last_user_text.contains(&format!("think {i}"))).unwrap().body;
        assert_eq!(upstream["thinking"], sent, "case {i}");
        assert_eq!(upstream["max_tokens"], max_tokens);
        let kinds: Vec<&str> =
            message["content"].as_array().unwrap().iter().map(|b| b["type"].as_str().unwrap()).collect();
        if sent["type"] == "enabled" {
            assert_eq!(kinds, ["thinking", "text"], "case {i}: {message}");
            let thinking = &message["content"][0];
            assert!(
                thinking["thinking"].as_str().is_some_and(|t| t.starts_with("Simulated thinking")),
                "{thinking}"
            );
            assert!(thinking["signature"].as_str().is_some_and(|s| s.starts_with("sim_sig_")), "{thinking}");
        } else {
            assert_eq!(kinds, ["text"], "case {i}: {message}");
        }
    }

    // Streamed: the thinking block first, its text and signature as deltas.
    let mut body = messages_body("haiku", "think streamed [sim:words=2]");
    body["max_tokens"] = json!(4000);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 2000});
    body["stream"] = json!(true);
    let text =
        post(&app, "/v1/messages", "sk-anything").json(&body).send().await.unwrap().text().await.unwrap();
    let events = sse_events(&text);
    let shape: Vec<String> = shape_without_text(&events).into_iter().filter(|s| s != "ping").collect();
    assert_eq!(
        shape,
        [
            "message_start",
            "content_block_start:thinking",
            "content_block_delta:thinking_delta",
            "content_block_delta:signature_delta",
            "content_block_stop",
            "content_block_start:text",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{text}"
    );
    let thought: String = events.iter().filter_map(|(_, d)| d["delta"]["thinking"].as_str()).collect();
    assert!(thought.starts_with("Simulated thinking"), "{thought}");
    app.stop().await;
}
