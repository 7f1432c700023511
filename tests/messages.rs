//! `POST /v1/messages` in Anthropic's wire format, end to end through the
//! real Claude Code CLI against the simulated upstream, and Claude Code
//! itself as a client of the gateway.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{claude_bin, client, Options, TestApp, TestDb};
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
    assert_eq!(response.status(), 200);
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
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|frame| !frame.trim().is_empty())
        .map(|frame| {
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            let data = field("data:");
            (field("event:"), serde_json::from_str(&data).unwrap_or_else(|_| panic!("bad data: {frame}")))
        })
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
    let image =
        json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]);
    let tool_result = json!([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}]);
    // (body, text the message must contain)
    let cases = [
        (json!({"model": "haiku", "messages": [{"role": "user", "content": "hi"}]}), "max_tokens"),
        (
            json!({"model": "haiku", "max_tokens": 10, "messages": [{"role": "user", "content": image}]}),
            "\"image\"",
        ),
        (
            json!({"model": "haiku", "max_tokens": 10, "messages": [{"role": "user", "content": tool_result}]}),
            "\"tool_result\"",
        ),
        (
            json!({"model": "haiku", "max_tokens": 10, "tools": [{"name": "calc", "input_schema": {"type": "object"}}],
                   "messages": [{"role": "user", "content": "hi"}]}),
            "tools",
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
    let home = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(claude_bin());
    command
        .args(["-p", "--bare", "--tools", "", "--model", "haiku", "--no-session-persistence"])
        .current_dir(app.work_dir.path())
        // Only this client talks to the gateway; the gateway's workers get
        // their upstream from `worker_env`, never from the client.
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", &app.url)
        .env("ANTHROPIC_API_KEY", &key)
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start the Claude Code CLI");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"say hi\n").await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the CLI finished")
        .unwrap();
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
    // The simulator echoes the words of the last user text block unless the
    // block starts with a system reminder; the client's reminder heads the
    // prompt the gateway's worker sends, so the echo is empty.
    assert_eq!(stdout.trim(), "Simulated reply:");
    app.stop().await;
}
