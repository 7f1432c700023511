//! End to end: OpenAI chat completions through the real Claude Code CLI
//! against the simulated upstream.

mod common;

use std::time::{Duration, Instant};

use common::{chat_body, client, Options, TestApp, TestDb};
use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn non_streaming_completion_has_text_usage_cost_and_a_ledger_row() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let body = json!({
        "model": "haiku",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": [{"type": "text", "text": "And of Italy?"}]}
        ]
    });
    let response = app.chat(body).await;
    assert_eq!(response.status(), 200);
    let cost: f64 = response.headers()["x-ccgate-cost-usd"].to_str().unwrap().parse().unwrap();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "claude-haiku-4-5-20251001");
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    let text = completion["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with("Simulated reply:"), "{text}");
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    let usage = &completion["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap())
    );
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
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.model_requested.as_deref(), Some("haiku"));
    assert_eq!(row.model_used.as_deref(), Some("claude-haiku-4-5-20251001"));
    assert_eq!(row.cost.as_usd(), cost);
    assert!(row.ttft_ms.is_some() && row.latency_ms.is_some());
    app.stop().await;
}

#[tokio::test]
async fn streaming_sends_chunks_while_the_model_is_still_writing() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let body = json!({
        "model": "sonnet",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Count for me [sim:words=12] [sim:delay_ms=250]"}]
    });
    let response = app.chat(body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut frames: Vec<(Instant, String)> = Vec::new();
    let mut buffer = String::new();
    let mut stream = response.bytes_stream();
    while let Some(bytes) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
        while let Some(end) = buffer.find("\n\n") {
            let frame = buffer[..end].trim().trim_start_matches("data: ").to_string();
            buffer.drain(..end + 2);
            frames.push((Instant::now(), frame));
        }
    }
    assert_eq!(frames.last().map(|f| f.1.as_str()), Some("[DONE]"));
    let chunks: Vec<(Instant, Value)> =
        frames[..frames.len() - 1].iter().map(|(t, f)| (*t, serde_json::from_str(f).unwrap())).collect();
    assert_eq!(chunks[0].1["choices"][0]["delta"]["role"], "assistant");
    let texts: Vec<(Instant, &str)> = chunks
        .iter()
        .filter_map(|(t, c)| {
            c["choices"][0]["delta"]["content"].as_str().filter(|s| !s.is_empty()).map(|s| (*t, s))
        })
        .collect();
    let joined: String = texts.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        joined, "Simulated reply: w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12",
        "text arrives once, in order"
    );
    // The sim waits 250 ms between its 3-word chunks: the first text must
    // reach the client long before the last.
    assert!(texts.len() >= 4, "{texts:?}");
    let spread = texts.last().unwrap().0 - texts[0].0;
    assert!(spread >= Duration::from_millis(600), "chunks were not streamed: spread {spread:?}");
    let finish =
        chunks.iter().find(|(_, c)| c["choices"][0]["finish_reason"] == "stop").expect("finish chunk");
    assert!(finish.1["x_ccgate"]["cost_usd"].as_f64().unwrap() > 0.0);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk.1["choices"].as_array().map(Vec::len), Some(0));
    assert!(usage_chunk.1["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_openai_errors_and_the_gateway_keeps_serving() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let url = format!("{}/v1/chat/completions", app.url);
    let raw = |body: &'static str| {
        let url = url.clone();
        async move {
            let r = client()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    // (body, status, param)
    let cases: [(&'static str, u16, Value); 9] = [
        ("{not json", 400, Value::Null),
        ("[]", 400, Value::Null),
        (r#"{"model":5,"messages":[{"role":"user","content":"hi"}]}"#, 400, json!("model")),
        (r#"{"model":"haiku"}"#, 400, Value::Null),
        (r#"{"model":"haiku","messages":[]}"#, 400, json!("messages")),
        (r#"{"model":"haiku","messages":[{"role":"robot","content":"hi"}]}"#, 400, json!("messages[0].role")),
        (r#"{"model":"haiku","messages":[{"role":"user","content":5}]}"#, 400, json!("messages[0].content")),
        (r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#, 404, json!("model")),
        (
            r#"{"model":"haiku","max_tokens":999999,"messages":[{"role":"user","content":"hi"}]}"#,
            400,
            json!("max_tokens"),
        ),
    ];
    for (body, status, param) in cases {
        let (got, error) = raw(body).await;
        assert_eq!(got, status, "{body}: {error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}: {error}");
        assert!(error["error"]["type"].is_string(), "{body}: {error}");
        if !param.is_null() {
            assert_eq!(error["error"]["param"], param, "{body}: {error}");
        }
    }
    let tools = json!({"model": "haiku", "tools": [{"type": "function", "function": {"name": "f"}}],
                       "messages": [{"role": "user", "content": "hi"}]});
    let response = app.chat(tools).await;
    assert_eq!(response.status(), 400, "tools are refused, never dropped");
    let unknown_project =
        json!({"model": "haiku", "project_id": "nope", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(app.chat(unknown_project).await.status(), 404);
    let bad_project =
        json!({"model": "haiku", "project_id": "Not Valid", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(app.chat(bad_project).await.status(), 400);

    // Still serving, and no CLI was started for any of the above.
    assert_eq!(app.sim.sim.request_count(), 0);
    let ok = app.chat(chat_body("haiku", "still there?")).await;
    assert_eq!(ok.status(), 200);
    // Every request left a ledger row, refused or not.
    app.wait_settled("default").await;
    let rows = app.state.budget.store().ledger("default", 100).await.unwrap();
    let nope = app.state.budget.store().ledger("nope", 100).await.unwrap();
    // 9 malformed, tools, unknown project, invalid project id, and the good one.
    assert_eq!(rows.len() + nope.len(), 9 + 1 + 1 + 1 + 1, "{rows:?}");
    app.stop().await;
}

#[tokio::test]
async fn upstream_errors_map_to_502_and_429() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let response = app.chat(chat_body("haiku", "fail please [sim:status=400]")).await;
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("400"), "{error}");

    let response = app.chat(chat_body("haiku", "slow down [sim:status=429]")).await;
    assert_eq!(response.status(), 429);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_exceeded", "{error}");

    let response = app.chat(chat_body("haiku", "broken [sim:status=500]")).await;
    assert_eq!(response.status(), 502);

    // Streaming requests that fail before any text get the status too.
    let mut body = chat_body("haiku", "fail please [sim:status=400]");
    body["stream"] = json!(true);
    assert_eq!(app.chat(body).await.status(), 502);

    let settled = app.wait_settled("default").await;
    assert_eq!(settled["reserved_usd"].as_f64(), Some(0.0));
    app.stop().await;
}

#[tokio::test]
async fn a_run_past_its_deadline_is_killed_with_its_whole_process_group() {
    let db = TestDb::sqlite();
    let opts = Options { request_timeout_secs: 3, stall_timeout_secs: 30, ..Options::default() };
    let app = TestApp::spawn(&db, opts).await;
    let started = Instant::now();
    let response = app.chat(chat_body("haiku", "never answer [sim:hang]")).await;
    assert_eq!(response.status(), 504);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("deadline"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(app.wait_no_workers().await, Vec::<u32>::new(), "claude processes outlived their request");
    app.stop().await;
}

#[tokio::test]
async fn a_silent_worker_is_stopped_by_the_stall_timer() {
    let db = TestDb::sqlite();
    let opts = Options { request_timeout_secs: 60, stall_timeout_secs: 2, ..Options::default() };
    let app = TestApp::spawn(&db, opts).await;
    let response = app.chat(chat_body("haiku", "hang [sim:hang]")).await;
    assert_eq!(response.status(), 504);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("no output"), "{error}");
    assert_eq!(app.wait_no_workers().await, Vec::<u32>::new());
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_stops_its_worker_and_is_recorded() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let mut body = chat_body("haiku", "long story [sim:words=300] [sim:delay_ms=200]");
    body["stream"] = json!(true);
    let request_id = "disconnect-test-1";
    let response = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .header("x-request-id", request_id)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.expect("a first chunk").unwrap();
    assert!(!first.is_empty());
    assert!(!app.worker_processes().is_empty(), "the worker should still be running");
    drop(stream);

    assert_eq!(app.wait_no_workers().await, Vec::<u32>::new());
    app.wait_settled("default").await;
    let row = app.state.budget.store().ledger_row(request_id).await.unwrap().expect("ledger row");
    assert_eq!(row.status, "client_disconnected");
    assert_eq!(row.http_status, Some(499));
    app.stop().await;
}

#[tokio::test]
async fn requests_queue_for_workers_and_a_full_queue_gets_503() {
    let db = TestDb::sqlite();
    let opts = Options { pool_size: 1, queue_limit: 1, ..Options::default() };
    let app = TestApp::spawn(&db, opts).await;
    let slow = || app.chat(chat_body("haiku", "take your time [sim:first_token_ms=1500]"));
    let (a, b, c) = tokio::join!(slow(), slow(), slow());
    let mut statuses = vec![a.status().as_u16(), b.status().as_u16(), c.status().as_u16()];
    let refused = [a, b, c].into_iter().find(|r| r.status() == 503).expect("one request over the queue");
    assert_eq!(refused.headers()["retry-after"], "1");
    let request_id = refused.headers()["x-request-id"].to_str().unwrap().to_string();
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "overloaded");
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503], "one runs, one waits, one is refused");
    // Refused before anything was reserved: its row says why, and it held nothing.
    let row = common::wait_ledger_row(app.state.budget.store().as_ref(), &request_id).await;
    assert_eq!((row.status.as_str(), row.http_status), ("overloaded", Some(503)), "{row:?}");
    assert_eq!((row.cost.0, row.reserved.0), (0, 0), "{row:?}");
    // Answers go out as soon as the CLI reports; the worker slot frees
    // once its process is cleaned up, just after.
    let mut health = Value::Null;
    for _ in 0..100 {
        health = client().get(format!("{}/health", app.url)).send().await.unwrap().json().await.unwrap();
        if health["workers"]["busy"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health["workers"]["size"], 1);
    assert_eq!(health["workers"]["busy"], 0, "{health}");
    assert_eq!(health["workers"]["queued"], 0, "{health}");
    app.stop().await;
}

#[tokio::test]
async fn a_missing_cli_gets_503_with_install_instructions() {
    let db = TestDb::sqlite();
    let opts = Options { claude_bin: Some("/nonexistent/claude".into()), ..Options::default() };
    let app = TestApp::spawn(&db, opts).await;
    let response = app.chat(chat_body("haiku", "hello")).await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("npm install"), "{error}");
    app.stop().await;
}

#[tokio::test]
async fn models_health_and_root_describe_the_gateway() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let get = |path: &str| {
        let url = format!("{}{path}", app.url);
        async move { client().get(url).send().await.unwrap() }
    };
    let models: Value = get("/v1/models").await.json().await.unwrap();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    for id in ["haiku", "sonnet", "opus", "fable", "claude-sonnet-5"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    // Anthropic's list and model fields too.
    assert_eq!(models["has_more"], false);
    assert_eq!(models["first_id"].as_str(), ids.first().copied());
    assert_eq!(models["last_id"].as_str(), ids.last().copied());
    let one: Value = get("/v1/models/sonnet%5B1m%5D").await.json().await.unwrap();
    assert_eq!(one["id"], "sonnet[1m]");
    assert_eq!(one["type"], "model");
    assert_eq!(one["display_name"], "Claude Sonnet 5 (1M context)");
    assert_eq!(one["max_input_tokens"], one["context_window"]);
    let missing = get("/v1/models/gpt-4o").await;
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["error"]["code"], "model_not_found");
    let health: Value = get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["workers"]["size"], 2);
    let root: Value = get("/").await.json().await.unwrap();
    assert_eq!(root["name"], "ccgate");
    assert_eq!(root["docs"], "/docs");
    assert_eq!(get("/docs/").await.status(), 200);
    assert_eq!(get("/redoc").await.status(), 200);
    let spec: Value = get("/openapi.json").await.json().await.unwrap();
    assert!(spec["paths"]["/v1/chat/completions"]["post"].is_object());
    assert_eq!(get("/no/such/route").await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn a_name_from_model_aliases_serves_its_model_and_is_listed() {
    fn settings(s: &mut ccgate::config::Settings) {
        s.model_aliases = [("gpt-4o-mini".to_string(), "haiku".to_string())].into();
    }
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { adjust: settings, ..Options::default() }).await;
    let models: Value =
        client().get(format!("{}/v1/models", app.url)).send().await.unwrap().json().await.unwrap();
    let listed = models["data"].as_array().unwrap().iter().find(|m| m["id"] == "gpt-4o-mini");
    assert_eq!(listed.map(|m| &m["tier"]), Some(&json!("haiku")), "{models}");

    let response = app.chat(chat_body("gpt-4o-mini", "hello")).await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["model"], "claude-haiku-4-5-20251001");
    // The CLI was given the model's own name, and the upstream saw haiku.
    assert!(app.sim.sim.requests().last().unwrap().model.contains("haiku"));
    app.wait_settled("default").await;
    let row = app.state.budget.store().ledger_row(&request_id).await.unwrap().expect("ledger row");
    assert_eq!(row.model_requested.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(row.model_used.as_deref(), Some("claude-haiku-4-5-20251001"));

    // A name the table does not know is still a 404.
    assert_eq!(app.chat(chat_body("gpt-4o", "hello")).await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_trickles_its_body_gets_408_and_oversized_bodies_get_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::sqlite();
    let adjust: fn(&mut ccgate::config::Settings) = |s| {
        s.client_body_timeout_secs = 1;
        s.max_body_bytes = 64 * 1024;
    };
    let app = TestApp::spawn(&db, Options { adjust, ..Options::default() }).await;
    let addr = app.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let big = json!({"model": "haiku", "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let response = app.chat(big).await;
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large");
    app.stop().await;
}

/// A plain request on the CLI thinks only when asked, as on the direct
/// backend (Claude Code would think on every haiku request, billed and
/// never returned), whatever its cap.
#[tokio::test]
async fn a_plain_request_on_the_cli_runs_without_thinking() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    for max_tokens in [100, 1024, 2000] {
        let mut body = chat_body("haiku", &format!("cap {max_tokens} [sim:words=3]"));
        body["max_tokens"] = json!(max_tokens);
        let response = app.chat(body).await;
        assert_eq!(response.status(), 200, "max_tokens {max_tokens}: {}", response.text().await.unwrap());
        let seen = app.sim.sim.requests();
        let upstream = &seen
            .iter()
            .rev()
            .find(|r| r.last_user_text.contains(&format!("cap {max_tokens}")))
            .unwrap()
            .body;
        assert_eq!(upstream["max_tokens"], max_tokens);
        assert_eq!(upstream["thinking"], json!({"type": "disabled"}), "max_tokens {max_tokens}");
    }
    app.stop().await;
}

/// OpenAI's `reasoning_effort` sets Claude Code's thinking budget.
#[tokio::test]
async fn reasoning_effort_sets_the_thinking_budget_on_the_cli() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let cases = [
        ("minimal", json!({"type": "disabled"})),
        ("medium", json!({"type": "enabled", "budget_tokens": 4096})),
    ];
    for (effort, sent) in cases {
        let mut body = chat_body("haiku", &format!("effort {effort} [sim:words=2]"));
        body["max_tokens"] = json!(8000);
        body["reasoning_effort"] = json!(effort);
        let response = app.chat(body).await;
        assert_eq!(response.status(), 200, "{effort}: {}", response.text().await.unwrap());
        let seen = app.sim.sim.requests();
        let upstream =
            &seen.iter().rev().find(|r| r.last_user_text.contains(&format!("effort {effort}"))).unwrap().body;
        assert_eq!(upstream["thinking"], sent, "{effort}");
    }
    let mut bad = chat_body("haiku", "hi");
    bad["reasoning_effort"] = json!("extreme");
    assert_eq!(app.chat(bad).await.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn the_responses_api_answers_text_streams_its_events_and_writes_the_ledger() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let post = |body: Value| {
        let url = format!("{}/v1/responses", app.url);
        async move { client().post(url).json(&body).send().await.unwrap() }
    };

    // A whole response: instructions and earlier turns reach the model.
    let response = post(json!({
        "model": "haiku",
        "instructions": "Answer briefly.",
        "input": [
            {"role": "user", "content": "What is the capital of France?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "And of Italy?"}]}
        ]
    }))
    .await;
    assert_eq!(response.status(), 200);
    let cost: f64 = response.headers()["x-ccgate-cost-usd"].to_str().unwrap().parse().unwrap();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["id"], format!("resp_{request_id}"));
    let text = body["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("Simulated reply:"), "{body}");
    assert_eq!(body["output"][0]["content"][0]["type"], "output_text");
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap())
    );
    let seen = app.sim.sim.requests();
    let last = seen.last().unwrap();
    assert!(last.last_user_text.contains("And of Italy?"));
    assert!(last.last_user_text.contains("Paris."));
    assert!(last.body["system"].to_string().contains("Answer briefly."));
    app.wait_settled("default").await;
    let row = app.state.budget.store().ledger_row(&request_id).await.unwrap().expect("ledger row");
    assert_eq!((row.endpoint.as_str(), row.status.as_str()), ("/v1/responses", "succeeded"));
    assert_eq!(row.cost.as_usd(), cost);

    // Streamed: the Responses API's events, in order, numbered.
    let response = post(json!({"model": "haiku", "stream": true, "input": "Count [sim:words=9]"})).await;
    assert_eq!(response.status(), 200);
    let events = common::sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let deltas = names.iter().filter(|n| **n == "response.output_text.delta").count();
    assert!(deltas >= 1, "{names:?}");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!((&data["type"], data["sequence_number"].as_u64()), (&json!(name), Some(i as u64)));
    }
    let joined: String = events.iter().filter_map(|(_, d)| d["delta"].as_str()).collect();
    assert_eq!(joined, "Simulated reply: w1 w2 w3 w4 w5 w6 w7 w8 w9");
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["output"][0]["content"][0]["text"], joined.as_str());
    assert!(completed["x_ccgate"]["cost_usd"].as_f64().unwrap() > 0.0);

    // Cut at its cap: incomplete, and why.
    let cut: Value = post(json!({"model": "haiku", "input": "x [sim:words=50]", "max_output_tokens": 8}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&cut["status"], &cut["incomplete_details"]["reason"]),
        (&json!("incomplete"), &json!("max_output_tokens"))
    );

    // What the gateway does not carry is refused, naming the field, and
    // still written down.
    let refused = [
        (json!({"model": "haiku", "input": "hi", "previous_response_id": "resp_1"}), "previous_response_id"),
        (json!({"model": "haiku", "input": "hi", "tools": [{"type": "web_search"}]}), "tools"),
        (
            json!({"model": "haiku", "input": [{"type": "function_call_output", "call_id": "c", "output": "o"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "haiku", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            "input[0].content[0]",
        ),
        (json!({"model": "haiku", "input": ""}), "input"),
        (json!({"model": "haiku", "input": 7}), "input"),
        (json!({"model": "haiku", "input": "hi", "temperature": 3}), "temperature"),
        (json!({"model": "haiku", "input": "hi", "text": {"format": {"type": "yaml"}}}), "text.format.type"),
    ];
    for (body, param) in refused {
        let response = post(body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
        // Written in the background.
        let row = common::wait_ledger_row(app.state.budget.store().as_ref(), &request_id).await;
        assert_eq!((row.endpoint.as_str(), row.http_status), ("/v1/responses", Some(400)));
    }
    app.stop().await;
}
