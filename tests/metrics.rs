//! `/metrics`: who may scrape it, and that its figures move with traffic.

mod common;

use common::{chat_body, client, metric_sample as sample, Options, TestApp, TestDb};
use serde_json::json;

const ADMIN: &str = "admin-key-for-metrics-0123456789";

async fn scrape(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client().get(format!("{url}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn metrics_need_the_admin_key_and_count_requests_tokens_cost_and_budget() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { admin_key: Some(ADMIN.into()), ..Options::default() }).await;
    assert_eq!(scrape(&app.url, None).await.status(), 401);
    assert_eq!(scrape(&app.url, Some("ccg_nope")).await.status(), 401);

    let created = client()
        .post(format!("{}/admin/projects", app.url))
        .bearer_auth(ADMIN)
        .json(&json!({"id": "metered", "name": "m", "budget": {"daily_usd": 10.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let key: serde_json::Value = client()
        .post(format!("{}/admin/projects/metered/keys", app.url))
        .bearer_auth(ADMIN)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    assert_eq!(scrape(&app.url, Some(&key)).await.status(), 403, "a project key cannot scrape");

    let before = scrape(&app.url, Some(ADMIN)).await.text().await.unwrap();
    let chat_route = "route=\"/v1/chat/completions\"";
    let before_count =
        sample(&before, "ccgate_http_requests_total", &[chat_route, "status=\"200\""]).unwrap_or(0.0);

    for _ in 0..2 {
        let r = client()
            .post(format!("{}/v1/chat/completions", app.url))
            .bearer_auth(&key)
            .json(&chat_body("haiku", "count me"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    app.wait_settled_as("metered", ADMIN).await;

    let response = scrape(&app.url, Some(ADMIN)).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().contains("openmetrics"));
    let text = response.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"));
    let model = "model=\"claude-haiku-4-5-20251001\"";
    let after_count =
        sample(&text, "ccgate_http_requests_total", &[chat_route, "status=\"200\"", model]).unwrap();
    assert_eq!(after_count - before_count, 2.0);
    let project = "project=\"metered\"";
    assert!(sample(&text, "ccgate_tokens_total", &[project, "direction=\"input\""]).unwrap() > 0.0);
    assert!(sample(&text, "ccgate_tokens_total", &[project, "direction=\"output\""]).unwrap() > 0.0);
    let cost = sample(&text, "ccgate_cost_usd_total", &[project]).unwrap();
    assert!(cost > 0.0);
    let remaining = sample(&text, "ccgate_budget_remaining_usd", &[project, "period=\"day\""]).unwrap();
    assert!((remaining - (10.0 - cost)).abs() < 1e-6, "remaining {remaining}, cost {cost}");
    assert_eq!(sample(&text, "ccgate_runs_total", &[model, "outcome=\"succeeded\""]), Some(2.0));
    assert_eq!(sample(&text, "ccgate_time_to_first_token_seconds_count", &[model]), Some(2.0));
    assert_eq!(sample(&text, "ccgate_gateway_overhead_seconds_count", &[]), Some(2.0));
    assert!(sample(&text, "ccgate_worker_events_total", &["event=\"spawn\""]).unwrap() >= 2.0);
    assert!(sample(&text, "ccgate_workers", &["backend=\"cli\"", "state=\"idle\""]).is_some());
    // The first request ran cold and warmed its profile; the second was warm.
    assert_eq!(sample(&text, "ccgate_warm_requests_total", &["result=\"miss\""]), Some(1.0));
    assert_eq!(sample(&text, "ccgate_warm_requests_total", &["result=\"hit\""]), Some(1.0));
    assert!(sample(&text, "ccgate_warm_processes", &["state=\"live\""]).unwrap() >= 1.0);
    assert!(!text.contains(&key[4..]) && !text.contains(ADMIN));
    app.stop().await;
}

#[tokio::test]
async fn a_metrics_token_can_scrape_and_nothing_else() {
    let db = TestDb::sqlite();
    let mut opts = Options { admin_key: Some(ADMIN.into()), ..Options::default() };
    opts.metrics_token = Some("scrape-token-0123456789".into());
    let app = TestApp::spawn(&db, opts).await;
    assert_eq!(scrape(&app.url, Some("scrape-token-0123456789")).await.status(), 200);
    let other = client()
        .get(format!("{}/admin/projects", app.url))
        .bearer_auth("scrape-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
    app.stop().await;
}
