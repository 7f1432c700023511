//! Warm workers: pre-started CLI processes reused with `/clear`, against the
//! real CLI and the simulated upstream.

mod common;

use std::time::Duration;

use ccgate::pricing::TokenUsage;
use common::{chat_body, client, metric_sample, wait_for, Options, TestApp, TestDb};
use serde_json::Value;

fn prestart_haiku(settings: &mut ccgate::config::Settings) {
    settings.warm_prestart = vec!["haiku".into()];
}

/// Waits until the gateway has `n` idle warm processes.
async fn wait_idle(app: &TestApp, n: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        last = app.health().await;
        if last["warm"]["idle"].as_u64() >= Some(n) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("warm processes never became idle: {last}");
}

/// CLI processes started so far, cold and warm (from `/metrics`).
async fn spawned(app: &TestApp) -> f64 {
    let metrics = client().get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    metric_sample(&metrics, "ccgate_worker_events_total", &["event=\"spawn\""]).expect("a spawn count")
}

async fn ask(app: &TestApp, prompt: &str) -> (String, String) {
    let response = app.chat(chat_body("haiku", prompt)).await;
    let status = response.status();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{prompt}: {body}");
    (request_id, body["choices"][0]["message"]["content"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn one_warm_process_serves_many_requests_and_each_sees_only_its_own_messages() {
    let db = TestDb::sqlite();
    let app =
        TestApp::spawn(&db, Options { pool_size: 1, adjust: prestart_haiku, ..Options::default() }).await;
    wait_idle(&app, 1).await;

    let secrets = ["alpha-7d1f", "bravo-93ac", "charlie-5be2", "delta-0c4e"];
    let mut ids = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let (id, text) = ask(&app, &format!("remember {secret} [sim:words={}]", i + 2)).await;
        assert_eq!(text.split_whitespace().count(), i + 2 + 2, "{text}");
        // The next request follows at once: it waits the few milliseconds
        // the process takes to reset rather than running cold.
        ids.push(id);
    }
    let health = app.health().await;
    assert_eq!(health["warm"]["hits"], 4, "{health}");
    assert_eq!(health["warm"]["misses"], 0, "{health}");
    assert_eq!(health["warm"]["processes"], 1, "{health}");

    // Every upstream call carried its own request and nothing of another's.
    let seen: Vec<Value> =
        app.sim.sim.requests().into_iter().filter(|r| r.model.contains("haiku")).map(|r| r.body).collect();
    assert_eq!(seen.len(), secrets.len(), "one upstream call per request");
    for (call, own) in seen.iter().zip(secrets) {
        let body = call.to_string();
        assert!(body.contains(own), "request for {own} lost its prompt");
        for other in secrets.iter().filter(|s| **s != own) {
            assert!(!body.contains(other), "the call for {own} carried {other}: {body}");
        }
    }

    // A warm process reports its running total; each request is charged
    // only what it used: its own tokens at haiku's price.
    app.wait_settled("default").await;
    let haiku = app.state.prices.resolve("haiku").unwrap().clone();
    let mut total = 0.0;
    for id in &ids {
        let row = app.state.budget.store().ledger_row(id).await.unwrap().expect("ledger row");
        assert_eq!(row.status, "succeeded");
        let own = haiku.cost(&TokenUsage {
            input_tokens: row.input_tokens as u64,
            output_tokens: row.output_tokens as u64,
            ..TokenUsage::default()
        });
        assert!(row.cost.0.abs_diff(own.0) <= 1, "request {id}: charged {:?}, used {:?}", row.cost, own);
        total += row.cost.as_usd();
    }
    let spent = app.usage("default", "day").await["spent_usd"].as_f64().unwrap();
    assert!((spent - total).abs() < 1e-9, "spent {spent}, rows {total}");
    app.stop().await;
}

#[tokio::test]
async fn a_process_is_replaced_after_its_request_quota_and_when_it_dies() {
    fn settings(s: &mut ccgate::config::Settings) {
        s.warm_prestart = vec!["haiku".into()];
        s.warm_max_requests = 2;
    }
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { pool_size: 1, adjust: settings, ..Options::default() }).await;
    wait_idle(&app, 1).await;
    let first = app.state.warm.as_ref().unwrap().idle_pids();

    for i in 0..2 {
        ask(&app, &format!("quota {i} [sim:words=2]")).await;
    }
    // Two requests used up the first process: a new one took its place.
    let health = wait_idle(&app, 1).await;
    assert_eq!(health["warm"]["processes"], 1, "{health}");
    let second = app.state.warm.as_ref().unwrap().idle_pids();
    assert_ne!(first, second, "the process was not replaced");
    assert!(common::processes_with_marker(&app.marker).iter().all(|p| !first.contains(p)));

    // A warm process that dies while idle is noticed and never used.
    for pid in &second {
        // SAFETY: plain syscall on a child process this test owns.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    wait_for(Duration::from_secs(5), || {
        second
            .iter()
            .all(|p| {
                !std::path::Path::new(&format!("/proc/{p}/cmdline")).exists()
                    || std::fs::read_to_string(format!("/proc/{p}/status"))
                        .unwrap_or_default()
                        .contains("State:\tZ")
            })
            .then_some(())
            .ok_or(())
    })
    .await
    .expect("the process died");
    let (_, text) = ask(&app, "after the death [sim:words=3]").await;
    assert_eq!(text, "Simulated reply: w1 w2 w3");
    let health = wait_idle(&app, 1).await;
    assert_eq!(health["warm"]["processes"], 1, "{health}");
    app.stop().await;
}

#[tokio::test]
async fn demand_warms_a_new_profile() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { pool_size: 2, ..Options::default() }).await;
    assert_eq!(app.health().await["warm"]["processes"], 0);

    // Nothing is warm: the first request runs cold and warms its profile.
    ask(&app, "first [sim:words=2]").await;
    wait_idle(&app, 1).await;
    ask(&app, "second [sim:words=2]").await;
    let health = app.health().await;
    assert_eq!((health["warm"]["misses"].as_u64(), health["warm"]["hits"].as_u64()), (Some(1), Some(1)));

    // A different system prompt is a different profile.
    let body = serde_json::json!({"model": "haiku", "messages": [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "third [sim:words=2]"}]});
    assert_eq!(app.chat(body).await.status(), 200);
    let health = wait_idle(&app, 2).await;
    assert_eq!(health["warm"]["profiles"], 2, "{health}");
    assert_eq!(health["warm"]["misses"], 2, "{health}");
    app.stop().await;
}

/// A response schema is part of a process's profile (`--json-schema` is
/// fixed at its start): structured requests are served warm, each
/// answered with its own schema's JSON, and a plain one never lands on
/// their process.
#[tokio::test]
async fn a_response_schema_is_a_profile_of_its_own() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { pool_size: 2, ..Options::default() }).await;
    let schema = serde_json::json!({"type": "object", "additionalProperties": false, "required": ["city"],
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}});
    let structured = |prompt: &str| {
        let mut body = chat_body("haiku", prompt);
        body["response_format"] =
            serde_json::json!({"type": "json_schema", "json_schema": {"name": "place", "schema": schema}});
        body
    };
    for (n, prompt) in ["where first", "where second", "where third"].into_iter().enumerate() {
        let response = app.chat(structured(prompt)).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        let answer: Value = serde_json::from_str(content).expect("the answer is JSON");
        assert_eq!(answer, serde_json::json!({"city": "w1", "population": 1}));
        // The first runs cold and warms the profile; the others are hits.
        let health = wait_idle(&app, 1).await;
        assert_eq!(health["warm"]["hits"].as_u64(), Some(n as u64), "{health}");
    }
    // A plain request has a profile of its own, and a plain answer.
    let (_, plain) = ask(&app, "plain [sim:words=2]").await;
    assert_eq!(plain, "Simulated reply: w1 w2");
    let health = wait_idle(&app, 2).await;
    assert_eq!(health["warm"]["profiles"], 2, "{health}");
    app.stop().await;
}

#[tokio::test]
async fn idle_processes_are_retired() {
    fn settings(s: &mut ccgate::config::Settings) {
        s.warm_idle_secs = 1;
    }
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { pool_size: 2, adjust: settings, ..Options::default() }).await;
    ask(&app, "first [sim:words=2]").await;
    // A process for the profile starts, then, left idle, is retired.
    let mut seen = false;
    let mut last = Value::Null;
    for _ in 0..600 {
        last = app.health().await;
        let processes = last["warm"]["processes"].as_u64().unwrap();
        seen |= processes > 0 || last["warm"]["idle"].as_u64() > Some(0);
        if seen && processes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "no warm process started: {last}");
    assert_eq!(last["warm"]["processes"], 0, "{last}");
    let left = app.wait_no_workers().await;
    assert!(left.is_empty(), "processes left: {left:?}");
    app.stop().await;
}

#[tokio::test]
async fn the_memory_budget_bounds_the_warm_processes_and_a_profile_seen_once_displaces_none() {
    fn settings(s: &mut ccgate::config::Settings) {
        // Room for one process: a second profile in demand replaces the first.
        s.warm_memory_mb = 400;
    }
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { pool_size: 2, adjust: settings, ..Options::default() }).await;
    ask(&app, "one [sim:words=2]").await;
    wait_idle(&app, 1).await;

    // Sonnet once, cold: haiku's process stays, and serves the next haiku
    // request. No process starts for sonnet (`spawned` counts every CLI
    // process: the cold run is the only one).
    let before = spawned(&app).await;
    let response = app.chat(chat_body("sonnet", "two [sim:words=2]")).await;
    assert_eq!(response.status(), 200);
    ask(&app, "three [sim:words=2]").await;
    let health = wait_idle(&app, 1).await;
    assert_eq!(health["warm"]["hits"], 1, "{health}");
    assert_eq!(spawned(&app).await, before + 1.0, "{health}");

    // Sonnet again: now in demand, it takes the one room.
    let response = app.chat(chat_body("sonnet", "four [sim:words=2]")).await;
    assert_eq!(response.status(), 200);
    let mut last = Value::Null;
    for _ in 0..600 {
        last = app.health().await;
        if last["warm"]["idle"] == 1 && last["warm"]["misses"] == 3 && last["warm"]["processes"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["warm"]["processes"], 1, "{last}");
    assert!(last["warm"]["resident_bytes"].as_u64().unwrap() <= 400 * 1024 * 1024, "{last}");
    // The one warm process is now sonnet's.
    let response = app.chat(chat_body("sonnet", "five [sim:words=2]")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.health().await["warm"]["hits"], 2);
    app.stop().await;
}

#[tokio::test]
async fn a_reply_that_reaches_max_tokens_ends_with_length_and_is_charged_exactly() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { pool_size: 1, ..Options::default() }).await;
    let body = |prompt: &str| {
        serde_json::json!({"model": "haiku", "max_tokens": 5,
        "messages": [{"role": "user", "content": prompt}]})
    };
    // Warm the profile (model, output cap) first.
    assert_eq!(app.chat(body("warm up [sim:words=2]")).await.status(), 200);
    wait_idle(&app, 1).await;
    app.sim.sim.clear();

    let response = app.chat(body("a long one [sim:words=50]")).await;
    let status = response.status();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let completion: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{completion}");
    assert_eq!(completion["choices"][0]["finish_reason"], "length", "{completion}");
    let text = completion["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with("Simulated reply: w1") && !text.contains("w50"), "{text}");
    assert_eq!(app.health().await["warm"]["hits"], 1);

    // Whatever ran is charged exactly: the growth of the process's total,
    // which matches the usage the CLI reported at haiku's price.
    app.wait_settled("default").await;
    let row = app.state.budget.store().ledger_row(&request_id).await.unwrap().expect("ledger row");
    let haiku = app.state.prices.resolve("haiku").unwrap().clone();
    let own = haiku.cost(&TokenUsage {
        input_tokens: row.input_tokens as u64,
        output_tokens: row.output_tokens as u64,
        ..TokenUsage::default()
    });
    assert!(row.cost.0.abs_diff(own.0) <= 1, "charged {:?}, used {:?}", row.cost, own);
    // The CLI asks the model to go on after a reply reaches its cap; the
    // spend gate refused those calls (the first used the output reserved),
    // so only the first reached the upstream.
    let calls = app.sim.sim.requests();
    assert_eq!(calls.len(), 1, "{:#?}", calls.iter().map(|c| &c.last_user_text).collect::<Vec<_>>());

    // The process was interrupted, not killed: it serves the next request.
    wait_idle(&app, 1).await;
    assert_eq!(app.chat(body("after [sim:words=2]")).await.status(), 200);
    assert_eq!(app.health().await["warm"]["hits"], 2);
    app.stop().await;
}
