//! Access control: keys bind requests to their project, revoked and
//! expired keys are refused, rate limits answer 429 with headers (shared by
//! instances on PostgreSQL), and logs never carry key material.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ccgate::clock::ManualClock;
use chrono::{DateTime, Utc};
use common::{chat_body, client, GatewayProcess, Options, TestApp, TestDb};
use serde_json::{json, Value};

const ADMIN: &str = "admin-key-for-tests-0123456789";

fn with_admin() -> Options {
    Options { admin_key: Some(ADMIN.into()), ..Options::default() }
}

async fn admin_post(app_url: &str, path: &str, body: Value) -> Value {
    let response = client()
        .post(format!("{app_url}{path}"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("admin request");
    assert_eq!(response.status(), 201, "{path}");
    response.json().await.unwrap()
}

async fn project_with_key(app_url: &str, project: &str, key: Value) -> (String, String) {
    admin_post(app_url, "/admin/projects", json!({"id": project, "name": project})).await;
    let created = admin_post(app_url, &format!("/admin/projects/{project}/keys"), key).await;
    (created["key_id"].as_str().unwrap().to_string(), created["key"].as_str().unwrap().to_string())
}

async fn chat_as(url: &str, key: &str, body: Value) -> reqwest::Response {
    client().post(format!("{url}/v1/chat/completions")).bearer_auth(key).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn a_project_key_cannot_read_or_spend_another_projects_anything() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, with_admin()).await;
    let (_, key_a) = project_with_key(&app.url, "team-a", json!({"name": "a"})).await;
    let (_, key_b) = project_with_key(&app.url, "team-b", json!({"name": "b"})).await;

    // A spends on A, whatever it names.
    let response = chat_as(&app.url, &key_a, chat_body("haiku", "hello from A")).await;
    assert_eq!(response.status(), 200);
    let mut body = chat_body("haiku", "spend B's money");
    body["project_id"] = json!("team-b");
    let response = chat_as(&app.url, &key_a, body).await;
    assert_eq!(response.status(), 403);
    let response = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .header("x-api-key", &key_a)
        .header("x-project-id", "team-b")
        .json(&chat_body("haiku", "via header"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    let usage = |key: String, project: &'static str| {
        let url = format!("{}/v1/usage?project_id={project}&period=day", app.url);
        async move { client().get(url).bearer_auth(key).send().await.unwrap() }
    };
    assert_eq!(usage(key_a.clone(), "team-b").await.status(), 403);
    app.wait_settled_as("team-a", ADMIN).await;
    let own: Value = usage(key_a.clone(), "team-a").await.json().await.unwrap();
    assert!(own["spent_usd"].as_f64().unwrap() > 0.0);
    let other: Value = usage(key_b.clone(), "team-b").await.json().await.unwrap();
    assert_eq!(other["spent_usd"].as_f64(), Some(0.0), "B paid nothing for A's requests");

    // Project keys are not admin keys.
    let response =
        client().get(format!("{}/admin/projects", app.url)).bearer_auth(&key_a).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response = client().get(format!("{}/admin/keys", app.url)).bearer_auth(ADMIN).send().await.unwrap();
    let listed: Value = response.json().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(&key_a[4..]), "secrets are never listed");
    app.stop().await;
}

#[tokio::test]
async fn missing_wrong_revoked_and_expired_keys_get_401() {
    let db = TestDb::sqlite();
    let clock = ManualClock::new(Utc::now());
    let app = TestApp::spawn_with_clock(&db, with_admin(), Arc::new(clock.clone())).await;
    let expires = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (key_id, key) = project_with_key(&app.url, "p", json!({"name": "k", "expires_at": expires})).await;

    let no_key = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .json(&chat_body("haiku", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let error: Value = no_key.json().await.unwrap();
    assert_eq!(error["error"]["type"], "authentication_error");
    assert_eq!(chat_as(&app.url, "ccg_not_a_real_key", chat_body("haiku", "x")).await.status(), 401);
    assert_eq!(chat_as(&app.url, "sk-something-else", chat_body("haiku", "x")).await.status(), 401);
    assert_eq!(chat_as(&app.url, &key, chat_body("haiku", "works")).await.status(), 200);

    // Public routes need no key.
    for path in ["/", "/health", "/openapi.json", "/docs/", "/redoc"] {
        assert_eq!(client().get(format!("{}{path}", app.url)).send().await.unwrap().status(), 200, "{path}");
    }

    clock.set(
        DateTime::parse_from_rfc3339(&expires).unwrap().with_timezone(&Utc) + chrono::Duration::seconds(1),
    );
    let expired = chat_as(&app.url, &key, chat_body("haiku", "too late")).await;
    assert_eq!(expired.status(), 401);
    assert!(expired.text().await.unwrap().contains("expired"));

    let (key_id2, key2) = project_with_key_again(&app.url, "p").await;
    assert_eq!(chat_as(&app.url, &key2, chat_body("haiku", "fine")).await.status(), 200);
    let revoked =
        client().delete(format!("{}/admin/keys/{key_id2}", app.url)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(revoked.status(), 204);
    let refused = chat_as(&app.url, &key2, chat_body("haiku", "revoked")).await;
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("revoked"));
    let missing =
        client().delete(format!("{}/admin/keys/nope", app.url)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_ne!(key_id, key_id2);
    app.stop().await;
}

async fn project_with_key_again(app_url: &str, project: &str) -> (String, String) {
    let created =
        admin_post(app_url, &format!("/admin/projects/{project}/keys"), json!({"name": "second"})).await;
    (created["key_id"].as_str().unwrap().to_string(), created["key"].as_str().unwrap().to_string())
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test]
async fn each_rate_limit_answers_429_with_its_headers() {
    let db = TestDb::sqlite();
    // A fixed clock keeps every request in one minute window.
    let app = TestApp::spawn_with_clock(&db, with_admin(), Arc::new(ManualClock::new(Utc::now()))).await;

    let (_, rpm_key) = project_with_key(&app.url, "rpm", json!({"rpm_limit": 2})).await;
    for remaining in ["1", "0"] {
        let ok = chat_as(&app.url, &rpm_key, chat_body("haiku", "count me")).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(header(&ok, "x-ratelimit-limit-requests"), "2");
        assert_eq!(header(&ok, "x-ratelimit-remaining-requests"), remaining);
        assert!(header(&ok, "x-ratelimit-reset-requests").ends_with('s'));
    }
    let over = chat_as(&app.url, &rpm_key, chat_body("haiku", "one too many")).await;
    assert_eq!(over.status(), 429);
    assert!(header(&over, "retry-after").parse::<u64>().unwrap() <= 60);
    assert_eq!(header(&over, "x-ratelimit-remaining-requests"), "0");
    let error: Value = over.json().await.unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_exceeded");

    let (_, tpm_key) = project_with_key(&app.url, "tpm", json!({"tpm_limit": 50})).await;
    let first = chat_as(&app.url, &tpm_key, chat_body("haiku", "use tokens")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "50");
    app.wait_settled_as("tpm", ADMIN).await;
    // The first request used more than 50 tokens (the CLI's own prompt alone is more).
    let mut over = chat_as(&app.url, &tpm_key, chat_body("haiku", "more tokens")).await;
    for _ in 0..50 {
        if over.status() == 429 {
            break;
        }
        // The token count lands just after the response; retry briefly.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        over = chat_as(&app.url, &tpm_key, chat_body("haiku", "more tokens")).await;
    }
    assert_eq!(over.status(), 429);
    assert_eq!(header(&over, "x-ratelimit-remaining-tokens"), "0");
    assert!(header(&over, "retry-after").parse::<u64>().is_ok());

    let (_, one_key) = project_with_key(&app.url, "conc", json!({"max_concurrent": 1})).await;
    let slow = chat_body("haiku", "hold the slot [sim:first_token_ms=1500]");
    let first = {
        let (url, key, body) = (app.url.clone(), one_key.clone(), slow.clone());
        tokio::spawn(async move { chat_as(&url, &key, body).await })
    };
    // The first holds the key's only slot once its call reached the upstream.
    let started = common::wait_for(std::time::Duration::from_secs(30), || {
        app.sim
            .sim
            .requests()
            .iter()
            .any(|r| r.last_user_text.contains("hold the slot"))
            .then_some(())
            .ok_or(())
    })
    .await;
    assert!(started.is_ok(), "the first request never reached a worker");
    let b = chat_as(&app.url, &one_key, slow.clone()).await;
    let a = first.await.unwrap();
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 429);
    assert_eq!(header(&b, "retry-after"), "1");
    // Once the first is done, the slot is free again.
    assert_eq!(chat_as(&app.url, &one_key, chat_body("haiku", "now")).await.status(), 200);
    app.stop().await;
}

async fn usage_as(url: &str, key: &str) -> reqwest::Response {
    client().get(format!("{url}/v1/usage")).bearer_auth(key).send().await.unwrap()
}

async fn admin_delete(url: &str, path: &str) -> u16 {
    client().delete(format!("{url}{path}")).bearer_auth(ADMIN).send().await.unwrap().status().as_u16()
}

/// Waits up to 2 s (well within `KEY_CACHE_TTL`) for `key` to be refused
/// as revoked.
async fn refused_soon(url: &str, key: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let response = usage_as(url, key).await;
        if response.status() == 401 {
            assert!(response.text().await.unwrap().contains("revoked"));
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} still takes a revoked key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keys are kept in memory for a few seconds; a key revoked, or whose
/// project is deleted, through one instance must not keep working on
/// another sharing the database for those seconds.
#[tokio::test]
async fn a_key_revoked_or_whose_project_is_deleted_stops_working_on_every_instance_at_once() {
    let db = TestDb::postgres().await;
    let first = TestApp::spawn(&db, with_admin()).await;
    let second = TestApp::spawn(&db, with_admin()).await;
    let (key_id, key) = project_with_key(&first.url, "shared", json!({"name": "k"})).await;
    // The second instance reads the key, and keeps it.
    assert_eq!(usage_as(&second.url, &key).await.status(), 200);
    assert_eq!(admin_delete(&first.url, &format!("/admin/keys/{key_id}")).await, 204);
    // Well within the cache's 5 s, the second refuses it (the change
    // reaches it as the first announces it, a moment after the answer).
    refused_soon(&second.url, &key).await;

    // A deleted project's keys are revoked with it, on every instance, and
    // a project made again under its id is not reachable with them.
    let (_, other) = project_with_key(&first.url, "gone", json!({"name": "k"})).await;
    assert_eq!(usage_as(&second.url, &other).await.status(), 200);
    assert_eq!(admin_delete(&first.url, "/admin/projects/gone").await, 204);
    admin_post(&first.url, "/admin/projects", json!({"id": "gone", "name": "again"})).await;
    refused_soon(&first.url, &other).await;
    refused_soon(&second.url, &other).await;

    // A change an instance cannot have heard (made in the database behind
    // the gateways' backs, as one lost while a listening connection was
    // down would be): once the connections are lost and made again, the
    // instances drop every key they keep, and read this one as it is.
    let (_, third) = project_with_key(&first.url, "quiet", json!({"name": "k"})).await;
    assert_eq!(usage_as(&second.url, &third).await.status(), 200);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE api_keys SET revoked_at_ms = 1 WHERE project_id = 'quiet'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(usage_as(&second.url, &third).await.status(), 200, "kept, as nothing was announced");
    let cut = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(cut.len(), 2, "one listening connection per instance");
    refused_soon(&second.url, &third).await;
    first.stop().await;
    second.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn request_limits_are_shared_by_instances_on_postgres() {
    let db = TestDb::postgres().await;
    // One fixed instant for both, so the four requests share one minute window.
    let clock = ManualClock::new(Utc::now());
    let first = TestApp::spawn_with_clock(&db, with_admin(), Arc::new(clock.clone())).await;
    let second = TestApp::spawn_with_clock(&db, with_admin(), Arc::new(clock)).await;
    let (_, key) = project_with_key(&first.url, "shared", json!({"rpm_limit": 3})).await;
    let mut statuses = Vec::new();
    for url in [&first.url, &second.url, &first.url, &second.url] {
        statuses.push(chat_as(url, &key, chat_body("haiku", "shared window")).await.status().as_u16());
    }
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429],
        "the fourth request of the minute is refused, wherever it lands"
    );
    first.stop().await;
    second.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn logs_never_contain_key_material_or_prompts() {
    let db = TestDb::sqlite();
    let sim = ccgate_sim::spawn(Default::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let env = [("CCGATE_ADMIN_KEY", ADMIN), ("CCGATE_LOG", "debug")];
    let mut gateway = GatewayProcess::start(&db.url, &sim, &marker, work.path(), &env);
    let (_, key) = project_with_key(&gateway.url, "logged", json!({"name": "k"})).await;
    let secret_prompt = "the launch code is tangerine-42";
    assert_eq!(chat_as(&gateway.url, &key, chat_body("haiku", secret_prompt)).await.status(), 200);
    assert_eq!(chat_as(&gateway.url, "ccg_wrong_key_material", chat_body("haiku", "x")).await.status(), 401);
    let status = tokio::task::spawn_blocking(move || {
        let status = gateway.terminate();
        (status, gateway)
    })
    .await
    .unwrap();
    assert!(status.0.success());
    let log = std::fs::read_to_string(&status.1.stderr_log).unwrap();
    assert!(log.contains("request"), "the log has request lines: {log}");
    assert!(log.contains("logged"), "request lines name the project");
    for secret in [ADMIN, &key[4..], "wrong_key_material", "tangerine-42"] {
        assert!(!log.contains(secret), "the log contains {secret:?}");
    }
}
