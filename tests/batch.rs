//! Batches end to end with the real Claude Code CLI against the simulated
//! upstream: `POST /v1/batch` (results, failures, the budget check, limits),
//! the OpenAI Files and Batch APIs (validation, partial failures, cancel,
//! privacy, paging) and durability across `kill -9`. Fair share is in
//! tests/fair_share.rs, a binary of its own so nothing else loads the
//! machine while it measures.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ccgate::store;
use ccgate::store::batches::TaskStatus;
use common::batch_api::{ask, line, multipart, Api, CHAT};
use common::{client, processes_with_marker, wait_ledger_row, Options, TestApp, TestDb};
use serde_json::{json, Value};

fn reply_text(response_body: &Value) -> &str {
    response_body["choices"][0]["message"]["content"].as_str().unwrap_or_default()
}

/// How many upstream requests carried `marker` in their prompt.
fn upstream_count(requests: &[ccgate_sim::RecordedRequest], marker: &str) -> usize {
    requests.iter().filter(|r| r.last_user_text.contains(marker)).count()
}

#[tokio::test]
async fn sync_batch_reports_every_task_and_a_failure_never_fails_the_others() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let body = json!({
        "max_concurrency": 8,
        "requests": [
            {"custom_id": "a1", "model": "haiku", "max_tokens": 200, "messages": [{"role": "user", "content": "alpha one"}]},
            {"custom_id": "a2", "model": "sonnet", "messages": [{"role": "user", "content": "beta two"}]},
            {"custom_id": "no-messages", "model": "haiku"},
            {"custom_id": "bad-model", "model": "gpt-9", "messages": [{"role": "user", "content": "never runs"}]},
            {"custom_id": "upstream", "model": "haiku", "messages": [{"role": "user", "content": "fails [sim:status=500]"}]},
            {"model": "haiku", "messages": [{"role": "user", "content": "no id"}]},
            {"custom_id": "a1", "model": "haiku", "messages": [{"role": "user", "content": "same id"}]},
            {"custom_id": "routed", "model": "auto", "messages": [{"role": "user", "content": "gamma three"}]},
        ]
    });
    let response = client().post(format!("{}/v1/batch", app.url)).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let batch_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let out: Value = response.json().await.unwrap();
    assert_eq!(out["object"], "batch.result");
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 8, "one result per task, in order");
    let ids: Vec<&str> = results.iter().map(|r| r["custom_id"].as_str().unwrap_or("-")).collect();
    assert_eq!(ids, ["a1", "a2", "no-messages", "bad-model", "upstream", "-", "a1", "routed"]);

    for (i, text, model) in
        [(0, "alpha one", "claude-haiku-4-5-20251001"), (1, "beta two", "claude-sonnet-5")]
    {
        assert_eq!(results[i]["status"], "succeeded", "{}", results[i]);
        assert!(results[i]["error"].is_null());
        let completion = &results[i]["response"];
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["model"], model);
        assert_eq!(reply_text(completion), format!("Simulated reply: {text}"));
    }
    // "auto" lets the router pick the model.
    assert_eq!(results[7]["status"], "succeeded", "{}", results[7]);
    assert_eq!(reply_text(&results[7]["response"]), "Simulated reply: gamma three");
    let error = |i: usize| &results[i]["error"];
    for result in &results[2..7] {
        assert_eq!(result["status"], "failed", "{result}");
        assert!(result["response"].is_null());
    }
    assert_eq!(error(2)["type"], "invalid_request_error");
    assert!(error(2)["message"].as_str().unwrap().contains("messages"), "{}", error(2));
    assert_eq!(error(3)["code"], "model_not_found");
    assert_eq!(error(4)["code"], "upstream_error");
    assert_eq!(error(5)["param"], "custom_id");
    assert_eq!(error(6)["param"], "custom_id");
    assert!(error(6)["message"].as_str().unwrap().contains("earlier request"));

    let stats = &out["stats"];
    assert_eq!(
        (stats["total"].as_u64(), stats["succeeded"].as_u64(), stats["failed"].as_u64()),
        (Some(8), Some(3), Some(5))
    );
    assert!(stats["input_tokens"].as_u64().unwrap() > 0 && stats["output_tokens"].as_u64().unwrap() > 0);
    let by_model = stats["cost_by_model"].as_object().unwrap();
    assert!((2..=3).contains(&by_model.len()), "{stats}");
    let summed: f64 = by_model.values().map(|m| m["cost_usd"].as_f64().unwrap()).sum();
    assert!((summed - stats["cost_usd"].as_f64().unwrap()).abs() < 1e-9);
    assert!(stats["wall_time_ms"].as_u64().unwrap() > 0);

    // Only the valid tasks reached the upstream; every task has its ledger row.
    let seen = app.sim.sim.requests();
    assert_eq!(upstream_count(&seen, "alpha one"), 1);
    assert_eq!(upstream_count(&seen, "beta two"), 1);
    assert_eq!(
        upstream_count(&seen, "never runs")
            + upstream_count(&seen, "no id")
            + upstream_count(&seen, "same id"),
        0
    );
    let store = app.state.budget.store();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let row = wait_ledger_row(store.as_ref(), &format!("{batch_id}-{i}")).await;
        assert_eq!(row.endpoint, "/v1/batch");
        statuses.push(row.status);
    }
    assert_eq!(statuses[..2], ["succeeded", "succeeded"]);
    assert_eq!(statuses[2..4], ["invalid_request", "invalid_request"]);
    assert_eq!(statuses[4], "upstream_error");
    assert_eq!(statuses[7], "succeeded");
    // The project paid for what succeeded (and for the failed run, if
    // the CLI reported a cost for it).
    let usage = app.wait_settled("default").await;
    assert!(usage["spent_usd"].as_f64().unwrap() >= stats["cost_usd"].as_f64().unwrap() - 1e-9, "{usage}");
    app.stop().await;
}

#[tokio::test]
async fn sync_batch_is_checked_against_the_budget_before_anything_runs() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    // Each task may cost up to 602 input tokens ($1/M) + 200 output ($5/M)
    // on haiku: $0.001602. Three fit in $0.005, the fourth does not.
    app.create_project("tight", Some(0.005)).await;
    let requests: Vec<Value> = (1..=5)
        .map(|i| {
            json!({"custom_id": format!("t{i}"), "model": "haiku", "max_tokens": 200,
                         "messages": [{"role": "user", "content": format!("task {i}")}]})
        })
        .collect();
    let response = client()
        .post(format!("{}/v1/batch", app.url))
        .json(&json!({"project_id": "tight", "requests": requests}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let out: Value = response.json().await.unwrap();
    let statuses: Vec<&str> =
        out["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["succeeded", "succeeded", "succeeded", "failed", "failed"]);
    for result in &out["results"].as_array().unwrap()[3..] {
        assert_eq!(result["error"]["type"], "insufficient_quota", "{result}");
        assert_eq!(result["error"]["code"], "insufficient_quota");
    }
    let seen = app.sim.sim.requests();
    assert_eq!(upstream_count(&seen, "task 4") + upstream_count(&seen, "task 5"), 0, "they never ran");
    let usage = app.wait_settled("tight").await;
    assert!(usage["spent_usd"].as_f64().unwrap() <= 0.005);
    app.stop().await;
}

fn small_limits(settings: &mut ccgate::config::Settings) {
    settings.batch_max_tasks = 3;
    settings.batch_max_body_bytes = 4000;
    settings.batch_max_file_lines = 3;
}

#[tokio::test]
async fn batch_uploads_and_bodies_are_limited_by_their_own_setting_not_max_body_bytes() {
    let db = TestDb::sqlite();
    let small_bodies = |settings: &mut ccgate::config::Settings| settings.max_body_bytes = 1000;
    let app = TestApp::spawn(&db, Options { adjust: small_bodies, ..Options::default() }).await;
    let api = Api::new(&app.url, "default");
    let prompt = "y".repeat(3000);
    let file_id = api.upload(&[line("big", ask("haiku", &prompt))]).await;
    assert!(file_id.starts_with("file-"));
    // A /v1/batch body past max_body_bytes is fine too (refused here only
    // because its model does not exist, so nothing runs).
    let body = json!({"requests": [{"custom_id": "big", "model": "nope", "messages": [{"role": "user", "content": prompt}]}]});
    let response = client().post(format!("{}/v1/batch", app.url)).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let out: Value = response.json().await.unwrap();
    assert_eq!(out["results"][0]["error"]["code"], "model_not_found");
    // Chat requests keep the general limit.
    let chat = app.chat(json!({"model": "haiku", "messages": [{"role": "user", "content": prompt}]})).await;
    assert_eq!(chat.status(), 413);
    app.stop().await;
}

#[tokio::test]
async fn batch_limits_answer_413_naming_the_setting() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { adjust: small_limits, ..Options::default() }).await;
    let task = |i: usize, prompt: &str| json!({"custom_id": format!("c{i}"), "model": "haiku", "messages": [{"role": "user", "content": prompt}]});
    let post = |body: Value| client().post(format!("{}/v1/batch", app.url)).json(&body).send();

    let too_many =
        post(json!({"requests": (0..4).map(|i| task(i, "hi")).collect::<Vec<_>>()})).await.unwrap();
    assert_eq!(too_many.status(), 413);
    let error: Value = too_many.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("batch_max_tasks"), "{error}");

    let too_big = post(json!({"requests": [task(0, &"x".repeat(5000))]})).await.unwrap();
    assert_eq!(too_big.status(), 413);
    let error: Value = too_big.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("batch_max_body_bytes"), "{error}");

    let api = Api::new(&app.url, "default");
    let lines: String = (0..4).map(|i| format!("{}\n", line(&format!("c{i}"), ask("haiku", "hi")))).collect();
    let response = api.upload_raw(lines.as_bytes()).await;
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("batch_max_file_lines"), "{error}");
    let response = api.upload_raw("x".repeat(5000).as_bytes()).await;
    assert_eq!(response.status(), 413);

    let bad_purpose = multipart("f.jsonl", b"{}", "fine-tune");
    let response =
        api.post("/v1/files").header("content-type", bad_purpose.0).body(bad_purpose.1).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(app.sim.sim.requests().is_empty(), "nothing ran");
    app.stop().await;
}

#[tokio::test]
async fn a_batch_file_runs_to_completion_with_partial_failures_joined_on_custom_id() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let api = Api::new(&app.url, "default");
    let good = ["red fox", "blue whale", "green frog", "grey owl"];
    let mut lines: Vec<Value> =
        good.iter().enumerate().map(|(i, p)| line(&format!("ok-{i}"), ask("haiku", p))).collect();
    lines.insert(2, line("unknown-model", ask("gpt-9", "never runs")));
    lines.push(line("upstream-400", ask("haiku", "refused [sim:status=400]")));
    let file_id = api.upload(&lines).await;

    let created = api.create_ok(&file_id).await;
    assert_eq!(created["object"], "batch");
    assert_eq!(created["status"], "validating");
    assert_eq!(created["endpoint"], CHAT);
    assert_eq!(created["input_file_id"], file_id.as_str());
    let id = created["id"].as_str().unwrap().to_string();

    let done = api.wait_done(&id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    for stamp in ["created_at", "in_progress_at", "finalizing_at", "completed_at", "expires_at"] {
        assert!(done[stamp].as_i64().is_some(), "{stamp} is set: {done}");
    }
    assert!(done["failed_at"].is_null() && done["cancelled_at"].is_null());
    let counts = &done["request_counts"];
    assert_eq!(
        (counts["total"].as_u64(), counts["completed"].as_u64(), counts["failed"].as_u64()),
        (Some(6), Some(4), Some(2))
    );
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);

    let output = api.lines(&done["output_file_id"]).await;
    let errors = api.lines(&done["error_file_id"]).await;
    assert_eq!(output.len(), 4);
    assert_eq!(errors.len(), 2);
    let mut seen = BTreeSet::new();
    for out in &output {
        let custom_id = out["custom_id"].as_str().unwrap();
        assert!(seen.insert(custom_id.to_string()), "{custom_id} twice");
        let i: usize = custom_id.trim_start_matches("ok-").parse().unwrap();
        assert_eq!(out["response"]["status_code"], 200);
        assert!(out["error"].is_null());
        assert!(out["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(reply_text(&out["response"]["body"]), format!("Simulated reply: {}", good[i]));
    }
    let by_id: BTreeMap<&str, &Value> =
        errors.iter().map(|e| (e["custom_id"].as_str().unwrap(), e)).collect();
    assert_eq!(by_id["unknown-model"]["response"]["status_code"], 404);
    assert_eq!(by_id["unknown-model"]["response"]["body"]["error"]["code"], "model_not_found");
    assert_eq!(by_id["upstream-400"]["response"]["status_code"], 502);
    assert_eq!(by_id["upstream-400"]["response"]["body"]["error"]["code"], "upstream_error");
    seen.extend(by_id.keys().map(|k| k.to_string()));
    assert_eq!(seen.len(), 6, "every custom_id exactly once across both files");

    // Each good request ran once, and the output files are the project's.
    let requests = app.sim.sim.requests();
    for prompt in good {
        assert_eq!(upstream_count(&requests, prompt), 1, "{prompt}");
    }
    let file: Value = api
        .get(&format!("/v1/files/{}", done["output_file_id"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(file["purpose"], "batch_output");
    let ledger = app.state.budget.store().ledger("default", 100).await.unwrap();
    assert_eq!(
        ledger.iter().filter(|r| r.endpoint == "/v1/batches").count(),
        6,
        "one ledger row per request"
    );
    app.wait_settled("default").await;

    // A finished batch cannot be cancelled.
    assert_eq!(api.cancel(&id).await.status(), 409);
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_file_fails_validation_with_line_numbers_and_batches_page() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let api = Api::new(&app.url, "default");
    let content = [
        line("a", ask("haiku", "fine")).to_string(),
        "{\"custom_id\": \"b\", oops".to_string(),
        line("a", ask("haiku", "again")).to_string(),
        json!({"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {}}).to_string(),
        json!({"custom_id": "d", "method": "GET", "url": CHAT, "body": {}}).to_string(),
    ]
    .join("\n");
    let response = api.upload_raw(content.as_bytes()).await;
    assert_eq!(response.status(), 200);
    let file_id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(api.create_ok(&file_id).await["id"].as_str().unwrap().to_string());
        // Distinct creation times, so newest-first has one answer.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failed = api.wait_done(&ids[0], Duration::from_secs(30)).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["failed_at"].as_i64().is_some());
    let errors = failed["errors"]["data"].as_array().unwrap();
    let found: Vec<(u64, &str)> =
        errors.iter().map(|e| (e["line"].as_u64().unwrap(), e["code"].as_str().unwrap())).collect();
    assert_eq!(
        found,
        [(2, "invalid_json"), (3, "duplicate_custom_id"), (4, "invalid_url"), (5, "invalid_method")]
    );
    assert!(errors[1]["message"].as_str().unwrap().contains("line 1"), "names the first use");
    assert_eq!(failed["request_counts"]["total"], 0);

    // Newest first, `limit` and `after` page through them.
    for id in &ids {
        api.wait_done(id, Duration::from_secs(30)).await;
    }
    let page: Value = api.get("/v1/batches?limit=2").send().await.unwrap().json().await.unwrap();
    let first: Vec<&str> =
        page["data"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(first, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(page["has_more"], true);
    let after = page["last_id"].as_str().unwrap();
    let rest: Value =
        api.get(&format!("/v1/batches?limit=2&after={after}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["id"], ids[0].as_str());
    assert_eq!(rest["has_more"], false);

    // Other mistakes are refused at once.
    let wrong = api
        .post("/v1/batches")
        .json(&json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    let missing = api.create("file-nope").await;
    assert_eq!(missing.status(), 404);
    assert!(app.sim.sim.requests().is_empty(), "nothing ran");
    app.stop().await;
}

#[tokio::test]
async fn files_and_batches_are_private_to_their_project() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    app.create_project("alpha", None).await;
    app.create_project("beta", None).await;
    let alpha = Api::new(&app.url, "alpha");
    let beta = Api::new(&app.url, "beta");
    // A file that fails validation: a batch, but no CLI run.
    let file_id =
        alpha.upload(&[json!({"custom_id": "x", "method": "POST", "url": "/nope", "body": {}})]).await;
    let batch_id = alpha.create_ok(&file_id).await["id"].as_str().unwrap().to_string();
    alpha.wait_done(&batch_id, Duration::from_secs(30)).await;

    for path in [
        format!("/v1/files/{file_id}"),
        format!("/v1/files/{file_id}/content"),
        format!("/v1/batches/{batch_id}"),
    ] {
        assert_eq!(beta.get(&path).send().await.unwrap().status(), 404, "{path}");
        assert_eq!(alpha.get(&path).send().await.unwrap().status(), 200, "{path}");
    }
    assert_eq!(beta.create(&file_id).await.status(), 404);
    assert_eq!(beta.cancel(&batch_id).await.status(), 404);
    let deleted = client()
        .delete(format!("{}/v1/files/{file_id}", app.url))
        .header("x-project-id", "beta")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 404);
    let listed: Value = beta.get("/v1/batches").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 0);
    let files: Value = beta.get("/v1/files").send().await.unwrap().json().await.unwrap();
    assert_eq!(files["data"].as_array().unwrap().len(), 0);

    let deleted: Value = client()
        .delete(format!("{}/v1/files/{file_id}", app.url))
        .header("x-project-id", "alpha")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deleted, json!({"id": file_id, "object": "file", "deleted": true}));
    assert_eq!(alpha.get(&format!("/v1/files/{file_id}")).send().await.unwrap().status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn cancel_stops_new_work_at_once_and_running_work_finishes() {
    let db = TestDb::sqlite();
    // Pool 2 at share 0.5: one batch request at a time.
    let app = TestApp::spawn(&db, Options::default()).await;
    let api = Api::new(&app.url, "default");
    let lines: Vec<Value> = (0..8)
        .map(|i| line(&format!("job-{i}"), ask("haiku", &format!("job-{i} marker [sim:first_token_ms=700]"))))
        .collect();
    let file_id = api.upload(&lines).await;
    let id = api.create_ok(&file_id).await["id"].as_str().unwrap().to_string();
    // Cancel while the second request runs.
    api.wait(&id, Duration::from_secs(60), |b| b["request_counts"]["completed"].as_u64() >= Some(1)).await;
    let response = api.cancel(&id).await;
    assert_eq!(response.status(), 200);
    let cancelling: Value = response.json().await.unwrap();
    assert!(["cancelling", "cancelled"].contains(&cancelling["status"].as_str().unwrap()), "{cancelling}");
    let at_cancel = app.sim.sim.requests().len();

    let done = api.wait_done(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["cancelling_at"].as_i64().is_some() && done["cancelled_at"].as_i64().is_some());
    let counts = &done["request_counts"];
    let (completed, failed, cancelled) = (
        counts["completed"].as_u64().unwrap(),
        counts["failed"].as_u64().unwrap(),
        counts["cancelled"].as_u64().unwrap(),
    );
    assert_eq!(completed + failed + cancelled, 8, "{counts}");
    assert_eq!(failed, 0, "the running request was let finish: {counts}");
    assert!(cancelled >= 5, "{counts}");
    // Nothing started after the cancel: what ran was under way by then.
    assert!(app.sim.sim.requests().len() <= at_cancel + 1, "no new request started after the cancel");
    assert_eq!(app.sim.sim.requests().len() as u64, completed);

    let output = api.lines(&done["output_file_id"]).await;
    let errors = api.lines(&done["error_file_id"]).await;
    assert_eq!(output.len() as u64, completed);
    assert_eq!(errors.len() as u64, cancelled);
    let requests = app.sim.sim.requests();
    for e in &errors {
        assert_eq!(e["error"]["code"], "batch_cancelled");
        assert!(e["response"].is_null());
        let custom_id = e["custom_id"].as_str().unwrap();
        assert_eq!(upstream_count(&requests, &format!("{custom_id} marker")), 0, "{custom_id} never ran");
    }
    for o in &output {
        let custom_id = o["custom_id"].as_str().unwrap();
        assert_eq!(upstream_count(&requests, &format!("{custom_id} marker")), 1);
    }
    // Cancelling again changes nothing.
    let again: Value = api.cancel(&id).await.json().await.unwrap();
    assert_eq!(again["status"], "cancelled");
    app.wait_settled("default").await;
    app.stop().await;
}

#[tokio::test]
async fn a_killed_gateway_resumes_its_batch_and_runs_no_completed_request_twice() {
    let db = TestDb::sqlite();
    let sim = ccgate_sim::spawn(Default::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    // Pool 4 at share 0.5: two batch requests at a time.
    let env = [("CCGATE_POOL_SIZE", "4")];
    let mut gateway = common::GatewayProcess::start(&db.url, &sim, &marker, work.path(), &env);
    let api = Api::new(&gateway.url, "default");
    let n = 14;
    let lines: Vec<Value> = (0..n)
        .map(|i| {
            line(&format!("item-{i:03}"), ask("haiku", &format!("item-{i:03} [sim:first_token_ms=400]")))
        })
        .collect();
    let file_id = api.upload(&lines).await;
    let id = api.create_ok(&file_id).await["id"].as_str().unwrap().to_string();
    api.wait(&id, Duration::from_secs(120), |b| b["request_counts"]["completed"].as_u64() >= Some(4)).await;

    gateway.kill9();
    let store = store::connect(&db.url).await.unwrap();
    let before = store.batch_requests(&id).await.unwrap();
    let done_before: Vec<String> =
        before.iter().filter(|r| r.status == TaskStatus::Succeeded).map(|r| r.custom_id.clone()).collect();
    let running_before: Vec<String> =
        before.iter().filter(|r| r.status == TaskStatus::Running).map(|r| r.custom_id.clone()).collect();
    assert!(done_before.len() >= 4 && done_before.len() < n, "killed mid-batch: {} done", done_before.len());
    common::wait_for(Duration::from_secs(10), || {
        processes_with_marker(&marker).is_empty().then_some(()).ok_or(())
    })
    .await
    .expect("no worker outlives the killed gateway");

    let restarted = common::GatewayProcess::start(&db.url, &sim, &marker, work.path(), &env);
    let api = Api::new(&restarted.url, "default");
    let done = api.wait_done(&id, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"].as_u64(), Some(n as u64), "{done}");

    let output = api.lines(&done["output_file_id"]).await;
    let errors = api.lines(&done["error_file_id"]).await;
    assert!(errors.is_empty(), "{errors:?}");
    let mut seen = BTreeMap::new();
    for o in output.iter().chain(&errors) {
        *seen.entry(o["custom_id"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, i32> = (0..n).map(|i| (format!("item-{i:03}"), 1)).collect();
    assert_eq!(seen, expected, "every custom_id exactly once across the output and error files");
    for o in &output {
        let custom_id = o["custom_id"].as_str().unwrap();
        assert_eq!(reply_text(&o["response"]["body"]), format!("Simulated reply: {custom_id}"));
    }
    let requests = sim.sim.requests();
    for custom_id in &done_before {
        assert_eq!(
            upstream_count(&requests, custom_id),
            1,
            "{custom_id} completed before the kill and never ran again"
        );
    }
    for custom_id in &running_before {
        assert!(
            (1..=2).contains(&upstream_count(&requests, custom_id)),
            "{custom_id} ran again at most once"
        );
    }

    // The books agree: nothing is left reserved, and the killed runs were
    // released as interrupted (charged their whole reservation). A run
    // whose result was written just before the kill, but not yet settled,
    // is among those too.
    // (The last result is written before its run is settled: wait for it.)
    let mut usage = Value::Null;
    for _ in 0..100 {
        usage = client()
            .get(format!("{}/v1/usage?project_id=default&period=day", restarted.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if usage["reserved_usd"].as_f64() == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(usage["reserved_usd"].as_f64(), Some(0.0), "{usage}");
    let ledger = store.ledger("default", 1000).await.unwrap();
    assert!(ledger.iter().all(|r| r.status != "in_progress"));
    let settled = ledger.iter().filter(|r| r.status == "succeeded" || r.status == "interrupted").count();
    assert!(settled >= n, "{settled} settled rows for {n} requests");
    drop(restarted);
}

#[tokio::test]
async fn batches_run_on_postgres() {
    let db = TestDb::postgres().await;
    let app = TestApp::spawn(&db, Options::default()).await;
    let api = Api::new(&app.url, "default");
    let lines: Vec<Value> =
        ["one", "two", "three"].iter().map(|p| line(p, ask("haiku", &format!("pg {p}")))).collect();
    let file_id = api.upload(&lines).await;
    let first = api.create_ok(&file_id).await["id"].as_str().unwrap().to_string();
    let done = api.wait_done(&first, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 3);
    let output = api.lines(&done["output_file_id"]).await;
    let ids: BTreeSet<&str> = output.iter().map(|o| o["custom_id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["one", "two", "three"]));

    let invalid =
        api.upload(&[json!({"custom_id": "x", "method": "POST", "url": "/nope", "body": {}})]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = api.create_ok(&invalid).await["id"].as_str().unwrap().to_string();
    assert_eq!(api.wait_done(&second, Duration::from_secs(30)).await["status"], "failed");
    let page: Value = api.get("/v1/batches?limit=1").send().await.unwrap().json().await.unwrap();
    assert_eq!(page["data"][0]["id"], second.as_str());
    let after = page["last_id"].as_str().unwrap();
    let rest: Value =
        api.get(&format!("/v1/batches?after={after}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(rest["data"][0]["id"], first.as_str());
    assert_eq!(rest["has_more"], false);
    app.stop().await;
    db.cleanup().await;
}
