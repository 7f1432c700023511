//! Worker environment hygiene: a worker started by a real gateway process
//! sees none of the gateway's secrets (admin key, database URL, key hashes,
//! unrelated variables), yet has what it needs to reach the upstream.

mod common;

use std::time::Duration;

use common::{chat_body, client, processes_with_marker, wait_for, GatewayProcess, TestDb};
use serde_json::{json, Value};

const ADMIN: &str = "hygiene-admin-key-0123456789";

async fn admin_post(url: &str, path: &str, body: Value) -> Value {
    let response =
        client().post(format!("{url}{path}")).bearer_auth(ADMIN).json(&body).send().await.expect("admin");
    assert_eq!(response.status(), 201, "{path}");
    response.json().await.unwrap()
}

/// `/proc/<pid>/environ` as `NAME=value` entries.
fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect()
}

#[tokio::test]
async fn workers_never_see_the_gateways_secrets() {
    let db = TestDb::sqlite();
    let sim = ccgate_sim::spawn(Default::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let other_secret = format!("other-secret-{}", uuid::Uuid::new_v4().simple());
    let env_db_url = "postgres://ccgate:db-password-7f3a@127.0.0.1:1/ccgate";
    let env = [
        ("CCGATE_ADMIN_KEY", ADMIN),
        ("CCGATE_DATABASE_URL", db.url.as_str()),
        ("DATABASE_URL", env_db_url),
        ("PGPASSWORD", "pg-password-9c1e"),
        ("SOME_OTHER_SECRET", other_secret.as_str()),
    ];
    let gateway = GatewayProcess::start(&db.url, &sim, &marker, work.path(), &env);
    admin_post(&gateway.url, "/admin/projects", json!({"id": "clean", "name": "clean"})).await;
    let created = admin_post(&gateway.url, "/admin/projects/clean/keys", json!({"name": "k"})).await;
    let key = created["key"].as_str().unwrap().to_string();

    let url = format!("{}/v1/chat/completions", gateway.url);
    let in_flight = tokio::spawn({
        let key = key.clone();
        async move {
            client()
                .post(url)
                .bearer_auth(key)
                .json(&chat_body("haiku", "[sim:first_token_ms=1500] hi"))
                .send()
                .await
        }
    });
    // The worker running the request (warm or cold) carries the marker.
    let pids = wait_for(Duration::from_secs(15), || {
        let pids = processes_with_marker(&marker);
        (!pids.is_empty()).then_some(pids).ok_or(())
    })
    .await
    .expect("a worker runs the request");

    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    let hashes: Vec<String> =
        sqlx::query_scalar("SELECT key_hash FROM api_keys").fetch_all(&pool).await.unwrap();
    assert_eq!(hashes.len(), 1);
    let forbidden_names = ["CCGATE_", "DATABASE_URL=", "PGPASSWORD=", "SOME_OTHER_SECRET="];
    let forbidden_values = [
        ADMIN,
        db.url.as_str(),
        env_db_url,
        "pg-password-9c1e",
        other_secret.as_str(),
        hashes[0].as_str(),
        &key[4..],
    ];
    for pid in &pids {
        let vars = environ(*pid);
        assert!(!vars.is_empty(), "the environment of worker {pid} is readable");
        for var in &vars {
            for name in forbidden_names {
                assert!(!var.starts_with(name), "worker {pid} has {var}");
            }
            for value in forbidden_values {
                assert!(!var.contains(value), "worker {pid} has a secret in {var}");
            }
        }
        // Workers call the upstream through the gateway's spend gate, on
        // loopback, at an address of their own.
        let base = vars.iter().find_map(|v| v.strip_prefix("ANTHROPIC_BASE_URL=")).expect("a base URL");
        assert!(base.starts_with("http://127.0.0.1:") && base.contains("/gate/"), "{vars:?}");
        assert!(vars.iter().any(|v| v.starts_with("HOME=")), "{vars:?}");
    }
    // And the worker still does its job with that environment: its call
    // reached the simulated upstream through the gate.
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"].as_str().unwrap().starts_with("Simulated reply:"));
    pool.close().await;
}
