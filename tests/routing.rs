//! `"model": "auto"` and `POST /v1/route`: context, complexity, budget and
//! policy through the HTTP API, and one auto-routed run through the real CLI.

mod common;

use std::collections::BTreeMap;

use common::{client, Options, TestApp, TestDb};
use serde_json::{json, Value};

async fn route(app: &TestApp, body: Value) -> (u16, Value) {
    let r = client().post(format!("{}/v1/route", app.url)).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn ask(prompt: &str) -> Value {
    json!({"messages": [{"role": "user", "content": prompt}]})
}

const HARD: &str = "Design and implement in Rust a lock-free multi-producer multi-consumer queue with \
    bounded capacity. Prove its linearizability step by step, analyse the memory ordering of every atomic \
    operation, then write property-based tests and a benchmark comparing it with a mutex-based queue. \
    Explain the ABA problem and how your design avoids it, and handle the edge cases of wrap-around.";

#[tokio::test]
async fn simple_and_hard_requests_go_to_cheap_and_strong_models_with_reasons() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let (status, easy) = route(&app, ask("What is the capital of France?")).await;
    assert_eq!(status, 200, "{easy}");
    assert_eq!(easy["tier"], "haiku");
    assert_eq!(easy["model"], "claude-haiku-4-5-20251001");
    assert!(easy["reasons"].as_array().unwrap().len() >= 4);
    assert!(easy["estimated_input_tokens"].as_u64().unwrap() > 0);
    let candidates = easy["candidates"].as_array().unwrap();
    assert!(candidates.iter().all(|c| c["fits_context"] == true && c["fits_budget"] == true));
    assert!(candidates.iter().any(|c| c["model"] == "claude-opus-4-8"));
    assert_eq!(easy["budget"]["project_id"], "default");
    assert!(easy["budget"]["remaining_usd"].is_null());

    let (status, hard) = route(&app, ask(HARD)).await;
    assert_eq!(status, 200, "{hard}");
    assert!(["opus", "fable"].contains(&hard["tier"].as_str().unwrap()), "{hard}");
    assert!(hard["complexity_score"].as_f64().unwrap() > easy["complexity_score"].as_f64().unwrap());
    // Nothing ran.
    assert_eq!(app.sim.sim.request_count(), 0);
    app.stop().await;
}

#[tokio::test]
async fn long_prompts_need_a_long_context_model_or_fail_with_context_length_exceeded() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    // About 300k tokens of prose.
    let long = "The quick brown fox jumps over the lazy dog while the band plays on. ".repeat(20_000);
    let (status, answer) = route(&app, ask(&long)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "claude-sonnet-5[1m]");
    let fits: Vec<&str> = answer["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["fits_context"] == true)
        .map(|c| c["model"].as_str().unwrap())
        .collect();
    assert_eq!(fits, vec!["claude-sonnet-5[1m]"]);

    let too_long = long.repeat(4);
    let (status, error) = route(&app, ask(&too_long)).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "context_length_exceeded");
    app.stop().await;
}

#[tokio::test]
async fn a_low_budget_moves_the_choice_down_and_never_past_what_is_left() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let (_, rich) = route(&app, ask(HARD)).await;
    let rich_tier = rich["tier"].as_str().unwrap().to_string();

    // Remaining budget too small for the strong models' output allowance.
    app.create_project("thrifty", Some(0.03)).await;
    let mut body = ask(HARD);
    body["project_id"] = json!("thrifty");
    let (status, poor) = route(&app, body.clone()).await;
    assert_eq!(status, 200, "{poor}");
    let order = ["haiku", "sonnet", "opus", "fable"];
    let level = |t: &str| order.iter().position(|o| *o == t).unwrap();
    assert!(level(poor["tier"].as_str().unwrap()) < level(&rich_tier), "{poor}");
    let chosen = poor["candidates"].as_array().unwrap().iter().find(|c| c["model"] == poor["model"]).unwrap();
    assert!(chosen["estimated_cost_usd"].as_f64().unwrap() <= 0.03);
    assert_eq!(poor["budget"]["remaining_usd"].as_f64(), Some(0.03));

    app.create_project("broke", Some(0.000001)).await;
    body["project_id"] = json!("broke");
    let (status, error) = route(&app, body).await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(error["error"]["type"], "insufficient_quota");
    app.stop().await;
}

#[tokio::test]
async fn project_policy_caps_the_tier() {
    let db = TestDb::sqlite();
    let adjust: fn(&mut ccgate::config::Settings) = |settings| {
        let policy = ccgate_router::Policy { max_tier: Some("sonnet".into()), ..Default::default() };
        settings.routing_policies = BTreeMap::from([("capped".to_string(), policy)]);
    };
    let app = TestApp::spawn(&db, Options { adjust, ..Options::default() }).await;
    app.create_project("capped", None).await;
    let mut body = ask(HARD);
    body["project_id"] = json!("capped");
    let (status, answer) = route(&app, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["tier"], "sonnet");
    app.stop().await;
}

#[tokio::test]
async fn auto_routes_then_runs_through_the_cli_and_the_ledger_keeps_both_names() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let response = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .header("x-request-id", "auto-1")
        .json(&json!({"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let route_header = response.headers()["x-ccgate-route"].to_str().unwrap().to_string();
    assert!(route_header.contains("tier=haiku") && route_header.contains("score="), "{route_header}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "claude-haiku-4-5-20251001");
    // The CLI was asked for the routed model.
    assert_eq!(app.sim.sim.requests().last().unwrap().model, "claude-haiku-4-5-20251001");
    app.wait_settled("default").await;
    let row = app.state.budget.store().ledger_row("auto-1").await.unwrap().unwrap();
    assert_eq!(row.model_requested.as_deref(), Some("auto"));
    assert_eq!(row.model_used.as_deref(), Some("claude-haiku-4-5-20251001"));

    // No model at all routes too.
    let response = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .json(&json!({"messages": [{"role": "user", "content": "Hello there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-ccgate-route"));
    app.stop().await;
}
