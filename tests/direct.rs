//! The direct Anthropic API backend, backend selection and model fallback,
//! end to end against the simulated upstream.

mod common;

use std::time::{Duration, Instant};

use ccgate::config::Settings;
use ccgate::pricing::TokenUsage;
use common::{chat_body, client, metric_sample, wait_for, Options, TestApp, TestDb};
use futures::StreamExt;
use serde_json::{json, Value};

const HAIKU: &str = "claude-haiku-4-5-20251001";
const SONNET: &str = "claude-sonnet-5";
const OPUS: &str = "claude-opus-4-8";

fn haiku_direct(settings: &mut Settings) {
    settings.backends.insert("haiku".into(), "api".into());
}

fn direct_with_fallback(settings: &mut Settings) {
    settings.default_backend = "api".into();
    settings.fallback_models.insert("opus".into(), "sonnet".into());
}

async fn spawn(adjust: fn(&mut Settings)) -> (TestDb, TestApp) {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { adjust, ..Options::default() }).await;
    (db, app)
}

/// The SSE frames of a streamed response, each with when it arrived.
async fn frames(response: reqwest::Response) -> Vec<(Instant, String)> {
    let mut frames = Vec::new();
    let mut buffer = String::new();
    let mut stream = response.bytes_stream();
    while let Some(bytes) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&bytes.expect("stream bytes")));
        while let Some(end) = buffer.find("\n\n") {
            frames.push((Instant::now(), buffer[..end].trim().trim_start_matches("data: ").to_string()));
            buffer.drain(..end + 2);
        }
    }
    frames
}

async fn ledger_status(app: &TestApp, request_id: &str) -> Option<(String, Option<String>)> {
    let row = app.state.budget.store().ledger_row(request_id).await.expect("ledger");
    row.map(|r| (r.status, r.model_used))
}

#[tokio::test]
async fn direct_streaming_sends_text_in_chunks_as_it_comes() {
    let (_db, app) = spawn(haiku_direct).await;
    let mut body = chat_body("haiku", "Count [sim:words=12] [sim:delay_ms=200]");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(300);
    body["messages"] = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Count [sim:words=12] [sim:delay_ms=200]"}
    ]);
    let response = app.chat(body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ccgate-model"], HAIKU);
    let frames = frames(response).await;
    assert_eq!(frames.last().map(|f| f.1.as_str()), Some("[DONE]"));
    let chunks: Vec<(Instant, Value)> =
        frames[..frames.len() - 1].iter().map(|(t, f)| (*t, serde_json::from_str(f).unwrap())).collect();
    let texts: Vec<(Instant, String)> = chunks
        .iter()
        .filter_map(|(t, c)| {
            c["choices"][0]["delta"]["content"].as_str().filter(|s| !s.is_empty()).map(|s| (*t, s.into()))
        })
        .collect();
    let joined: String = texts.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(joined, "Simulated reply: w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12");
    assert!(texts.len() >= 4, "{texts:?}");
    let spread = texts.last().unwrap().0 - texts[0].0;
    assert!(spread >= Duration::from_millis(500), "text was not streamed: spread {spread:?}");
    assert!(chunks.iter().all(|(_, c)| c["model"] == HAIKU));

    // One request, in the Messages API's own shape: turns as messages, the
    // system prompt apart, streaming, the client's output cap.
    let seen = app.sim.sim.requests();
    assert_eq!(seen.len(), 1, "the direct backend calls the API once");
    let request = &seen[0].body;
    assert_eq!(request["model"], HAIKU);
    assert_eq!(request["stream"], true);
    assert_eq!(request["max_tokens"], 300);
    assert_eq!(request["system"], "Be brief.");
    assert_eq!(request["messages"].as_array().map(Vec::len), Some(3));
    assert_eq!(request["messages"][1], json!({"role": "assistant", "content": "Hi."}));
    assert_eq!(app.running_workers(), Vec::<u32>::new(), "no CLI process was started");
    app.stop().await;
}

#[tokio::test]
async fn usage_and_cost_in_the_ledger_are_usage_times_price_with_cache_priced_apart() {
    let (db, app) = spawn(haiku_direct).await;
    let response = app
        .chat(chat_body("haiku", "cached [sim:cache_read=4000] [sim:cache_write=300] [sim:words=20]"))
        .await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let cost: f64 = response.headers()["x-ccgate-cost-usd"].to_str().unwrap().parse().unwrap();
    let completion: Value = response.json().await.unwrap();
    // The body reports no model default: the upstream request had no cap, so
    // it asked for the model's largest output.
    assert_eq!(app.sim.sim.requests()[0].body["max_tokens"], 32000);
    app.wait_settled("default").await;

    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let (input, output, cache_read, cache_write, cost_micros): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_micros \
         FROM requests WHERE request_id = ?",
    )
    .bind(&request_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((cache_read, cache_write), (4000, 300));
    let usage = TokenUsage {
        input_tokens: (input - cache_read - cache_write) as u64,
        output_tokens: output as u64,
        cache_read_tokens: cache_read as u64,
        cache_write_tokens: cache_write as u64,
        ..TokenUsage::default()
    };
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0, "{usage:?}");
    let haiku = app.state.prices.resolve("haiku").unwrap().clone();
    let expected = haiku.cost(&usage);
    assert_eq!(cost_micros, expected.0);
    assert_eq!(cost, expected.as_usd());
    // Cache reads cost a tenth of input, writes 1.25 times: not the same as fresh input.
    let all_fresh = haiku.cost(&TokenUsage {
        input_tokens: input as u64,
        output_tokens: output as u64,
        ..TokenUsage::default()
    });
    assert_ne!(expected, all_fresh);
    assert_eq!(completion["usage"]["prompt_tokens"], input);
    assert_eq!(ledger_status(&app, &request_id).await, Some(("succeeded".into(), Some(HAIKU.into()))));
    app.stop().await;
}

#[tokio::test]
async fn the_upstream_call_streams_when_the_client_does_or_the_answer_could_be_long() {
    let (_db, app) = spawn(haiku_direct).await;
    let prompt = "whole [sim:cache_read=4000] [sim:cache_write=300] [sim:words=7]";
    let ask = |max_tokens: u64, stream: bool| {
        let mut body = chat_body("haiku", prompt);
        body["max_tokens"] = json!(max_tokens);
        body["stream"] = json!(stream);
        body
    };
    // A small cap and no stream: the whole message in one answer. A cap
    // that could take longer than the stall timeout (60 s at 20 tokens/s):
    // a stream, whatever the client asked.
    let mut answers = Vec::new();
    for max_tokens in [500, 5000] {
        let response = app.chat(ask(max_tokens, false)).await;
        assert_eq!(response.status(), 200);
        let cost = response.headers()["x-ccgate-cost-usd"].to_str().unwrap().to_string();
        let completion: Value = response.json().await.unwrap();
        answers.push((completion["choices"][0].clone(), completion["usage"].clone(), cost));
    }
    assert_eq!(answers[0], answers[1], "a whole message reads as its stream does");
    assert_eq!(answers[0].0["message"]["content"], "Simulated reply: w1 w2 w3 w4 w5 w6 w7");
    assert_eq!(answers[0].0["finish_reason"], "stop");
    assert!(answers[0].1["prompt_tokens"].as_u64().unwrap() > 4300, "{:?}", answers[0].1);
    let streamed = app.chat(ask(500, true)).await;
    assert_eq!(streamed.status(), 200);
    let frames = frames(streamed).await;
    assert_eq!(frames.last().map(|f| f.1.as_str()), Some("[DONE]"));

    let streams: Vec<bool> = app.sim.sim.requests().iter().map(|r| r.stream).collect();
    assert_eq!(streams, [false, true, true]);
    app.wait_settled("default").await;
    app.stop().await;
}

#[tokio::test]
async fn an_overloaded_upstream_with_retry_after_is_retried_and_succeeds() {
    let (_db, app) = spawn(haiku_direct).await;
    let response = app.chat(chat_body("haiku", "[sim:fail_once=direct-retry-1] [sim:words=3]")).await;
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["choices"][0]["message"]["content"], "Simulated reply: w1 w2 w3");
    let seen = app.sim.sim.requests();
    assert_eq!(seen.len(), 2, "one 529, then the retry");

    // Streaming: the retry happens before any text, so the client sees only success.
    let mut body = chat_body("haiku", "[sim:fail_once=direct-retry-2] [sim:words=3]");
    body["stream"] = json!(true);
    let response = app.chat(body).await;
    assert_eq!(response.status(), 200);
    let frames = frames(response).await;
    assert!(frames.iter().any(|(_, f)| f.contains("w2 w3")), "{frames:?}");
    assert!(!frames.iter().any(|(_, f)| f.contains("\"error\"")), "{frames:?}");
    assert_eq!(app.sim.sim.requests().len(), 4);
    app.stop().await;
}

#[tokio::test]
async fn retries_give_up_with_the_upstream_error_and_honour_retry_after() {
    fn one_retry(settings: &mut Settings) {
        haiku_direct(settings);
        settings.api_max_retries = 1;
    }
    let (_db, app) = spawn(one_retry).await;
    let started = Instant::now();
    let response = app.chat(chat_body("haiku", "slow down [sim:status=429]")).await;
    assert_eq!(response.status(), 429);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_exceeded", "{error}");
    assert_eq!(app.sim.sim.requests().len(), 2, "the first try and one retry");
    // The simulator says `retry-after: 1`.
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());

    let response = app.chat(chat_body("haiku", "busy [sim:status=529]")).await;
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("529"), "{error}");
    assert_eq!(app.sim.sim.requests().len(), 4);

    // A client error is final: no retry. The request was the client's, as
    // sent, so the API's refusal is a 400 for the client.
    let response = app.chat(chat_body("haiku", "bad [sim:status=400]")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(app.sim.sim.requests().len(), 5);
    app.wait_settled("default").await;
    app.stop().await;
}

#[tokio::test]
async fn an_overloaded_model_falls_back_and_the_ledger_has_both_attempts() {
    let (_db, app) = spawn(direct_with_fallback).await;
    let response = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .header("x-request-id", "fallback-direct-1")
        .json(&chat_body("opus", "[sim:fail_model=claude-opus-4-8] [sim:words=4]"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ccgate-model"], SONNET);
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["model"], SONNET);
    assert_eq!(completion["choices"][0]["message"]["content"], "Simulated reply: w1 w2 w3 w4");
    let models: Vec<String> = app.sim.sim.requests().into_iter().map(|r| r.model).collect();
    // Opus was tried and retried (api_max_retries = 2) before the fallback.
    assert_eq!(models, [OPUS, OPUS, OPUS, SONNET]);

    app.wait_settled("default").await;
    let store = app.state.budget.store();
    let first = store.ledger_row("fallback-direct-1").await.unwrap().expect("first attempt");
    assert_eq!(first.status, "failed_over");
    assert_eq!(first.model_used.as_deref(), Some(OPUS));
    assert_eq!(first.http_status, Some(502));
    let second = store.ledger_row("fallback-direct-1-fb1").await.unwrap().expect("fallback attempt");
    assert_eq!(second.status, "succeeded");
    assert_eq!(second.model_requested.as_deref(), Some("opus"));
    assert_eq!(second.model_used.as_deref(), Some(SONNET));
    assert!(second.cost.0 > 0);

    // Streaming: every chunk names the model that answered.
    let mut body = chat_body("opus", "[sim:fail_model=claude-opus-4-8] [sim:words=4]");
    body["stream"] = json!(true);
    let response = app.chat(body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ccgate-model"], SONNET);
    let frames = frames(response).await;
    let chunks: Vec<Value> =
        frames.iter().filter(|(_, f)| f != "[DONE]").map(|(_, f)| serde_json::from_str(f).unwrap()).collect();
    assert!(!chunks.is_empty() && chunks.iter().all(|c| c["model"] == SONNET), "{chunks:?}");

    // So does every response object of a Responses API stream.
    let response = client()
        .post(format!("{}/v1/responses", app.url))
        .json(&json!({"model": "opus", "stream": true, "input": "[sim:fail_model=claude-opus-4-8] [sim:words=4]"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ccgate-model"], SONNET);
    let events = common::sse_events(&response.text().await.unwrap());
    let objects: Vec<&Value> = events.iter().filter_map(|(_, data)| data.get("response")).collect();
    assert_eq!(objects.len(), 3, "{events:?}");
    assert!(objects.iter().all(|r| r["model"] == SONNET), "{objects:?}");
    app.stop().await;
}

#[tokio::test]
async fn fallback_works_on_the_cli_backend_too() {
    fn cli_with_fallback(settings: &mut Settings) {
        settings.fallback_models.insert("opus".into(), "sonnet".into());
    }
    let (_db, app) = spawn(cli_with_fallback).await;
    let response = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .header("x-request-id", "fallback-cli-1")
        .json(&chat_body("opus", "[sim:fail_model=claude-opus-4-8] [sim:words=4]"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let completion: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{completion}");
    assert_eq!(completion["model"], SONNET);
    assert!(completion["choices"][0]["message"]["content"].as_str().unwrap().contains("w1 w2 w3 w4"));
    app.wait_settled("default").await;
    assert_eq!(ledger_status(&app, "fallback-cli-1").await, Some(("failed_over".into(), Some(OPUS.into()))));
    assert_eq!(
        ledger_status(&app, "fallback-cli-1-fb1").await,
        Some(("succeeded".into(), Some(SONNET.into())))
    );
    assert_eq!(app.wait_no_workers().await, Vec::<u32>::new());
    app.stop().await;
}

#[tokio::test]
async fn a_fallback_refused_by_the_budget_leaves_the_client_the_original_error() {
    // Sonnet falls back to the dearer opus, which the budget cannot cover.
    fn sonnet_to_opus(settings: &mut Settings) {
        settings.default_backend = "api".into();
        settings.api_max_retries = 0;
        settings.fallback_models.insert("sonnet".into(), "opus".into());
    }
    let (_db, app) = spawn(sonnet_to_opus).await;
    app.create_project("tight", Some(0.02)).await;
    let mut body = chat_body("sonnet", "[sim:status=529] [sim:words=4]");
    body["max_tokens"] = json!(1000);
    body["project_id"] = json!("tight");
    let response = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .header("x-request-id", "fallback-budget-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("529"), "{error}");
    assert_eq!(app.sim.sim.requests().len(), 1, "opus was never called");
    app.wait_settled("tight").await;
    assert_eq!(ledger_status(&app, "fallback-budget-1").await.map(|r| r.0), Some("failed_over".into()));
    // The refusal row is written in the background.
    let mut refused = None;
    for _ in 0..100 {
        refused = ledger_status(&app, "fallback-budget-1-fb1").await;
        if refused.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused.map(|r| r.0), Some("budget_exceeded".into()));
    app.stop().await;
}

#[tokio::test]
async fn direct_requests_are_reserved_and_settled_like_cli_ones() {
    let (_db, app) = spawn(haiku_direct).await;
    app.create_project("small", Some(0.05)).await;
    let mut body = chat_body("haiku", "[sim:words=10]");
    body["project_id"] = json!("small");
    body["max_tokens"] = json!(1000);
    let response = app.chat(body.clone()).await;
    assert_eq!(response.status(), 200);
    let cost: f64 = response.headers()["x-ccgate-cost-usd"].to_str().unwrap().parse().unwrap();
    let usage = app.wait_settled("small").await;
    assert_eq!(usage["spent_usd"].as_f64(), Some(cost));

    // A request whose worst case does not fit is refused before it reaches
    // the upstream, and leaves a ledger row.
    body["max_tokens"] = json!(20000);
    let calls = app.sim.sim.request_count();
    let response = app.chat(body).await;
    assert_eq!(response.status(), 429);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "insufficient_quota", "{error}");
    assert_eq!(app.sim.sim.request_count(), calls);
    let usage = app.wait_settled("small").await;
    assert_eq!(usage["spent_usd"].as_f64(), Some(cost));
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_ends_the_upstream_request() {
    let (_db, app) = spawn(haiku_direct).await;
    let mut body = chat_body("haiku", "long [sim:words=400] [sim:delay_ms=50]");
    body["stream"] = json!(true);
    let response = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .header("x-request-id", "direct-disconnect-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.expect("a first chunk").unwrap();
    assert!(!first.is_empty());
    assert_eq!(app.sim.sim.open_replies(), 1, "the upstream stream is open while the client reads");
    drop(stream);

    upstream_ends_and_is_recorded_as_left(&app, "direct-disconnect-1").await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_before_a_whole_answer_ends_the_upstream_request() {
    // A whole answer's run is driven by the handler itself; once the client
    // is gone it must still end, upstream and in the ledger.
    let (_db, app) = spawn(haiku_direct).await;
    let body = chat_body("haiku", "slow [sim:first_token_ms=30000]");
    let request = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .header("x-request-id", "direct-leaves-whole-1")
        .json(&body)
        .send();
    let request = tokio::spawn(request);
    assert_eq!(open_replies_become(&app, 1).await, Ok(()), "the upstream request never opened");
    assert!(!request.is_finished(), "the answer cannot have come yet");
    // The client gives up: its connection closes.
    request.abort();

    upstream_ends_and_is_recorded_as_left(&app, "direct-leaves-whole-1").await;
    app.stop().await;
}

/// Waits until the simulator has `n` replies open.
async fn open_replies_become(app: &TestApp, n: usize) -> Result<(), usize> {
    wait_for(Duration::from_secs(10), || match app.sim.sim.open_replies() {
        open if open == n => Ok(()),
        open => Err(open),
    })
    .await
}

/// After its client left: the upstream request ends, and the ledger says so.
async fn upstream_ends_and_is_recorded_as_left(app: &TestApp, request_id: &str) {
    assert_eq!(open_replies_become(app, 0).await, Ok(()), "the upstream request outlived its client");
    app.wait_settled("default").await;
    assert_eq!(ledger_status(app, request_id).await.map(|r| r.0), Some("client_disconnected".into()));
}

#[tokio::test]
async fn health_shows_the_direct_pool_and_bad_backend_settings_stop_start_up() {
    fn sized(settings: &mut Settings) {
        haiku_direct(settings);
        settings.api_max_concurrent = 300;
    }
    let (_db, app) = spawn(sized).await;
    let health: Value =
        client().get(format!("{}/health", app.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["api_workers"]["size"], 300);
    assert_eq!(health["workers"]["size"], 2);
    assert_eq!(health["default_backend"], "cli");
    let settings_json = serde_json::to_string(&health).unwrap();
    assert!(!settings_json.contains("sk-ccgate-test"));
    app.stop().await;

    let db = TestDb::sqlite();
    let sim = ccgate_sim::spawn(Default::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    for (adjust, setting) in [
        (
            (|s: &mut Settings| {
                s.fallback_models.insert("opus".into(), "gpt-4o".into());
            }) as fn(&mut Settings),
            "fallback_models",
        ),
        (
            |s: &mut Settings| {
                s.backends.insert("haikuu".into(), "api".into());
            },
            "backends",
        ),
    ] {
        let opts = Options { adjust, ..Options::default() };
        let settings = common::settings_for(&db.url, &sim, work.path(), "m", &opts);
        let error = ccgate::server::build_state(settings, ccgate::app::AppState::system_clock())
            .await
            .err()
            .expect("start-up must fail");
        assert!(error.to_string().contains(setting), "{error}");
    }
}

#[tokio::test]
async fn a_hung_upstream_is_cut_at_the_deadline_and_its_connection_closed() {
    let db = TestDb::sqlite();
    let opts = Options {
        request_timeout_secs: 2,
        stall_timeout_secs: 30,
        adjust: haiku_direct,
        ..Options::default()
    };
    let app = TestApp::spawn(&db, opts).await;
    let started = Instant::now();
    let response = app.chat(chat_body("haiku", "never answer [sim:hang]")).await;
    assert_eq!(response.status(), 504);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("deadline"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let open = wait_for(Duration::from_secs(10), || match app.sim.sim.open_replies() {
        0 => Ok(()),
        n => Err(n),
    })
    .await;
    assert_eq!(open, Ok(()), "the hung upstream request was left open");
    app.wait_settled("default").await;
    app.stop().await;
}

/// The CLI pool at its smallest (one batch slot), haiku on the direct
/// backend (256 batch slots of its 512).
fn haiku_direct_small_cli_pool(settings: &mut Settings) {
    haiku_direct(settings);
    settings.pool_size = 1;
}

/// Waits until the simulated upstream has `n` replies open at once.
async fn wait_open_replies(app: &TestApp, n: usize) -> Result<(), usize> {
    wait_for(Duration::from_secs(20), || match app.sim.sim.open_replies() {
        open if open >= n => Ok(()),
        open => Err(open),
    })
    .await
}

#[tokio::test]
async fn a_batch_on_the_direct_backend_runs_on_its_slots_not_the_cli_pools() {
    let (_db, app) = spawn(haiku_direct_small_cli_pool).await;
    let requests: Vec<Value> = (0..4)
        .map(|i| json!({"custom_id": format!("h{i}"), "model": "haiku",
                        "messages": [{"role": "user", "content": format!("wait {i} [sim:first_token_ms=3000]")}]}))
        .collect();
    let url = format!("{}/v1/batch", app.url);
    let batch = tokio::spawn(async move {
        client().post(url).json(&json!({"requests": requests, "max_concurrency": 4})).send().await
    });
    // With the CLI pool's one batch slot, one would run at a time.
    assert_eq!(wait_open_replies(&app, 4).await, Ok(()), "the batch's requests did not run at once");
    assert_eq!(app.running_workers(), Vec::<u32>::new(), "no CLI process was started");
    let report: Value = batch.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(report["stats"]["succeeded"], 4, "{report}");

    // The OpenAI Batch API's runner takes its slots the same way.
    let api = common::batch_api::Api::new(&app.url, "default");
    let lines: Vec<Value> = (0..4)
        .map(|i| {
            common::batch_api::line(
                &format!("b{i}"),
                common::batch_api::ask("haiku", &format!("hold {i} [sim:first_token_ms=3000]")),
            )
        })
        .collect();
    let file_id = api.upload(&lines).await;
    let id = api.create_ok(&file_id).await["id"].as_str().unwrap().to_string();
    assert_eq!(wait_open_replies(&app, 4).await, Ok(()), "the batch's requests did not run at once");
    let done = api.wait_done(&id, Duration::from_secs(30)).await;
    assert_eq!(done["request_counts"]["completed"], 4, "{done}");
    app.stop().await;
}

/// A request with prompt-cache markers may have its whole input written to
/// the cache, which costs more than fresh input: its reservation prices the
/// input at the cache-write price (1.25 times the input price for the
/// default five minutes, twice for an hour). A run that still costs more
/// than it reserved (here the upstream reports a million cache writes) is
/// charged in full and counted in `ccgate_reservation_overrun_usd`.
#[tokio::test]
async fn cache_markers_reserve_cache_write_prices_and_overruns_are_counted() {
    let (_db, app) = spawn(haiku_direct).await;
    let reserved = |marker: Option<Value>, id: &'static str| {
        let mut system = json!({"type": "text", "text": "Answer briefly, in plain words, and nothing else."});
        if let Some(marker) = marker {
            system["cache_control"] = marker;
        }
        let body = json!({"model": "haiku", "max_tokens": 100, "system": [system],
            "messages": [{"role": "user", "content": "Hello there [sim:words=3]"}]});
        let app = &app;
        async move {
            let response = client()
                .post(format!("{}/v1/messages", app.url))
                .header("x-request-id", id)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            app.wait_settled("default").await;
            app.state.budget.store().ledger_row(id).await.unwrap().expect("ledger row").reserved.0
        }
    };
    let plain = reserved(None, "plain").await;
    let five_minutes = reserved(Some(json!({"type": "ephemeral"})), "five-minutes").await;
    let one_hour = reserved(Some(json!({"type": "ephemeral", "ttl": "1h"})), "one-hour").await;
    let haiku = app.state.prices.resolve("haiku").unwrap().clone();
    let output = haiku.cost(&TokenUsage { output_tokens: 100, ..TokenUsage::default() }).0;
    let input = plain - output;
    assert!(input > 0);
    assert!((five_minutes - (output + input * 5 / 4)).abs() <= 1, "{plain} {five_minutes}");
    assert!((one_hour - (output + input * 2)).abs() <= 1, "{plain} {one_hour}");

    let body = chat_body("haiku", "Hi [sim:cache_write=1000000]");
    let response =
        client().post(format!("{}/v1/chat/completions", app.url)).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cost: f64 = response.headers()["x-ccgate-cost-usd"].to_str().unwrap().parse().unwrap();
    assert!(cost > 1.25, "a million five-minute cache writes on haiku: {cost}");
    app.wait_settled("default").await;
    let metrics = client().get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    let overrun =
        metric_sample(&metrics, "ccgate_reservation_overrun_usd_total", &[HAIKU]).expect("an overrun sample");
    assert!(overrun > 1.0 && overrun < cost, "overrun {overrun} of a {cost} run");
    app.stop().await;
}

/// Input that a tokenizer splits into a token per byte (dense punctuation,
/// rare scripts, base64) used to beat the reservation's bound of a token
/// per 2.5 bytes, so a run could cost more than it reserved and a project
/// end past its limit. The reservation now counts a token per byte, which
/// nothing beats: here the upstream counts exactly that, every run costs
/// less than it reserved, and the limit holds.
#[tokio::test]
async fn input_at_a_token_per_byte_stays_within_its_reservation_and_the_limit() {
    let (_db, app) = spawn(haiku_direct).await;
    let limit = 0.05;
    app.create_project("dense", Some(limit)).await;
    // About 20,000 tokens at a token a byte: $0.02 of input on haiku, so
    // two runs fit under the limit and a third would pass it.
    let prompt = format!("{} [sim:byte_tokens] [sim:words=3]", "{};".repeat(6_667));
    let mut statuses = Vec::new();
    for i in 0..4 {
        let mut body = chat_body("haiku", &prompt);
        body["project_id"] = json!("dense");
        body["max_tokens"] = json!(10);
        let id = format!("dense-{i}");
        let response = client()
            .post(format!("{}/v1/chat/completions", app.url))
            .header("x-request-id", &id)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        statuses.push(status);
        app.wait_settled("dense").await;
        let row = app.state.budget.store().ledger_row(&id).await.unwrap().expect("ledger row");
        if status == 200 {
            assert_eq!(row.status, "succeeded");
            assert!(row.input_tokens > 20_000, "the upstream counted a token a byte: {row:?}");
            assert!(
                row.cost.0 <= row.reserved.0,
                "cost {:?} within its reservation {:?}",
                row.cost,
                row.reserved
            );
        }
    }
    assert_eq!(statuses, [200, 200, 429, 429], "two runs fit, the third would pass the limit");
    let usage = app.wait_settled("dense").await;
    let spent = usage["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.04 && spent <= limit, "spent {spent} of {limit}: {usage}");
    let metrics = client().get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    let overrun = metric_sample(&metrics, "ccgate_reservation_overrun_usd_total", &[HAIKU]);
    assert_eq!(overrun, None, "no run cost more than it reserved");
    app.stop().await;
}

/// The text of a streamed chat completion, its chunks' contents joined.
async fn streamed_text(response: reqwest::Response) -> String {
    frames(response)
        .await
        .iter()
        .filter_map(|(_, frame)| serde_json::from_str::<Value>(frame).ok())
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

/// A chat completion request asking for JSON that follows `schema`.
fn asking_for(model: &str, schema: &Value) -> Value {
    let mut body = chat_body(model, "Who is it?");
    body["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}});
    body
}

/// A whole answer's completion, and its content read as JSON.
async fn json_answer(response: reqwest::Response) -> (Value, Value) {
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.unwrap();
    let content = completion["choices"][0]["message"]["content"].as_str().unwrap();
    let answer = serde_json::from_str(content).expect("the answer is JSON");
    (completion, answer)
}

/// Structured output: OpenAI's `response_format` `json_schema` and
/// Anthropic's `output_config.format` go upstream as `output_config` (on
/// the CLI, as Claude Code's `--json-schema`), and the answer is the
/// instance the model gave; `json_object` asks for no schema; a malformed
/// format is a 400 naming the field.
#[tokio::test]
async fn a_json_schema_goes_upstream_and_the_answer_is_its_instance() {
    let (_db, app) = spawn(haiku_direct).await;
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["name", "age"],
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}});
    let mut body = asking_for("haiku", &schema);
    let (_, answer) = json_answer(app.chat(body.clone()).await).await;
    assert_eq!(answer, json!({"name": "w1", "age": 1}));
    let sent = &app.sim.sim.requests()[0].body;
    assert_eq!(sent["output_config"], json!({"format": {"type": "json_schema", "schema": schema}}));

    // Streamed, the same JSON arrives in pieces.
    body["stream"] = json!(true);
    let streamed = streamed_text(app.chat(body.clone()).await).await;
    assert_eq!(serde_json::from_str::<Value>(&streamed).unwrap(), answer);

    // Anthropic's format, on /v1/messages.
    let messages = client()
        .post(format!("{}/v1/messages", app.url))
        .json(&json!({"model": "haiku", "max_tokens": 100, "messages": [{"role": "user", "content": "Who?"}],
            "output_config": {"format": {"type": "json_schema", "schema": schema}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(messages.status(), 200);
    let message: Value = messages.json().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(message["content"][0]["text"].as_str().unwrap()).unwrap(),
        answer
    );

    // json_object: no schema to send (the prompt asks for JSON itself).
    let mut plain = chat_body("haiku", "Reply in JSON");
    plain["response_format"] = json!({"type": "json_object"});
    assert_eq!(app.chat(plain).await.status(), 200);
    assert!(app.sim.sim.requests().last().unwrap().body.get("output_config").is_none());

    let sent_before = app.sim.sim.requests().len();
    for (format, param) in [
        (json!({"type": "json_schema", "json_schema": {"name": "x"}}), "response_format.json_schema.schema"),
        (json!({"type": "xml"}), "response_format.type"),
    ] {
        let mut bad = chat_body("haiku", "x");
        bad["response_format"] = format;
        let refused = app.chat(bad).await;
        assert_eq!(refused.status(), 400);
        let error: Value = refused.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    assert_eq!(app.sim.sim.requests().len(), sent_before, "nothing refused went upstream");

    // Sonnet is on the CLI here: Claude Code gets the schema
    // (`--json-schema`), the model answers through the tool it offers,
    // and the answer, streamed or not, is the JSON it checked.
    let mut on_cli = asking_for("sonnet", &schema);
    let (completion, on_cli_answer) = json_answer(app.chat(on_cli.clone()).await).await;
    assert_eq!(completion["model"], SONNET);
    assert_eq!(on_cli_answer, answer);
    let offered = app.sim.sim.requests().last().unwrap().body["tools"].to_string();
    assert!(offered.contains("StructuredOutput") && offered.contains("\"age\""), "{offered}");
    on_cli["stream"] = json!(true);
    let streamed = streamed_text(app.chat(on_cli).await).await;
    assert_eq!(serde_json::from_str::<Value>(&streamed).unwrap(), answer);
    app.wait_settled("default").await;
    app.stop().await;
}
