//! The admin command line (`ccgate projects|keys|usage`) as an operator runs
//! it: the real binary against a live gateway, tables and `--json`, the key
//! secret shown once, and gateway errors as a message and a failing exit.

mod common;

use common::{chat_body, client, Options, TestApp, TestDb};
use serde_json::Value;

const ADMIN: &str = "admin-key-for-cli-tests-0123456789";

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    fn assert_ok(self) -> Run {
        assert!(self.ok, "ccgate failed: {}\n{}", self.stderr, self.stdout);
        self
    }

    fn assert_failed_with(self, message: &str) -> Run {
        assert!(!self.ok, "ccgate should have failed: {}", self.stdout);
        assert!(self.stderr.contains(message), "stderr lacks {message:?}: {}", self.stderr);
        self
    }
}

/// Runs `ccgate ARGS` with the gateway URL and admin key in the
/// environment, as an operator's shell would have them. The process runs
/// without blocking the runtime that serves the gateway.
async fn ccgate(url: &str, admin_key: Option<&str>, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgate"));
    command.args(args).env("CCGATE_URL", url).env_remove("CCGATE_ADMIN_KEY").env_remove("CCGATE_API_KEY");
    if let Some(key) = admin_key {
        command.env("CCGATE_ADMIN_KEY", key);
    }
    let output = command.output().await.expect("run the ccgate binary");
    Run {
        ok: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn line_starting<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line for {start:?} in:\n{text}"))
}

#[tokio::test]
async fn projects_keys_and_usage_round_trip() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { admin_key: Some(ADMIN.into()), ..Options::default() }).await;
    let cli = |args: &'static [&'static str]| ccgate(&app.url, Some(ADMIN), args);

    let created = cli(&[
        "projects",
        "create",
        "acme",
        "--name",
        "Acme Corp",
        "--daily-usd",
        "5",
        "--monthly-usd",
        "100",
    ])
    .await
    .assert_ok();
    assert!(created.stdout.contains("Created project acme."), "{}", created.stdout);

    let listed = cli(&["projects", "list"]).await.assert_ok();
    assert!(listed.stdout.starts_with("ID "), "a header row first: {}", listed.stdout);
    let row: Vec<&str> =
        line_starting(&listed.stdout, "acme ").split("  ").filter(|c| !c.is_empty()).collect();
    assert_eq!(
        row[..5].iter().map(|c| c.trim()).collect::<Vec<_>>(),
        ["acme", "Acme Corp", "$5.00", "none", "$100.00"]
    );
    let listed = cli(&["projects", "list", "--json"]).await.assert_ok().json();
    let acme = listed["data"].as_array().unwrap().iter().find(|p| p["id"] == "acme").expect("acme listed");
    assert_eq!(
        acme["budget"],
        serde_json::json!({"daily_usd": 5.0, "weekly_usd": null, "monthly_usd": 100.0})
    );

    // `none` removes a limit; fields not given stay as they were.
    let updated =
        cli(&["projects", "update", "acme", "--weekly-usd", "20", "--monthly-usd", "none", "--json"])
            .await
            .assert_ok()
            .json();
    assert_eq!(
        updated["budget"],
        serde_json::json!({"daily_usd": 5.0, "weekly_usd": 20.0, "monthly_usd": null})
    );
    assert_eq!(updated["name"], "Acme Corp");
    cli(&["projects", "update", "acme"]).await.assert_failed_with("nothing to change");
    let shown = cli(&["projects", "get", "acme"]).await.assert_ok();
    assert!(line_starting(&shown.stdout, "weekly limit").ends_with("$20.00"), "{}", shown.stdout);

    let created =
        cli(&["keys", "create", "--project", "acme", "--name", "ci", "--rpm", "100"]).await.assert_ok();
    let secret =
        created.stdout.split_whitespace().find(|w| w.starts_with("ccg_")).expect("the secret is printed");
    assert!(created.stdout.contains("only time the secret is shown"), "{}", created.stdout);
    let key_id =
        created.stdout.split_whitespace().find(|w| w.starts_with("key_")).expect("the key id").to_string();
    let listed = cli(&["keys", "list"]).await.assert_ok();
    let row = line_starting(&listed.stdout, &key_id);
    assert!(
        row.contains("acme") && row.contains("ci") && row.contains("active") && row.contains("100"),
        "{row}"
    );
    let listed_json = cli(&["keys", "list", "--project", "acme", "--json"]).await.assert_ok();
    assert_eq!(listed_json.json()["data"].as_array().unwrap().len(), 1);
    for output in [&listed.stdout, &listed_json.stdout] {
        assert!(!output.contains(&secret[4..]), "a listing never shows the secret: {output}");
    }

    // The key works, and its spend shows in `usage`, read with the admin key
    // or with the project key itself.
    let chat = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .bearer_auth(secret)
        .json(&chat_body("haiku", "hello from the CLI test"))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    app.wait_settled_as("acme", ADMIN).await;
    let usage = cli(&["usage", "--project", "acme"]).await.assert_ok();
    assert!(line_starting(&usage.stdout, "limit").ends_with("$5.00"), "{}", usage.stdout);
    let model_row = line_starting(&usage.stdout, "claude-");
    assert_eq!(model_row.split_whitespace().nth(1), Some("1"), "one request: {model_row}");
    let report = cli(&["usage", "--project", "acme", "--period", "week", "--json"]).await.assert_ok().json();
    assert_eq!(report["period"], "week");
    assert_eq!(report["limit_usd"], 20.0);
    assert!(report["spent_usd"].as_f64().unwrap() > 0.0, "{report}");
    let own = ccgate(&app.url, None, &["usage", "--api-key", secret, "--json"]).await.assert_ok().json();
    assert_eq!(own["project_id"], "acme");
    ccgate(&app.url, None, &["usage", "--api-key", secret, "--project", "default"])
        .await
        .assert_failed_with("cannot act for project");

    let revoked = ccgate(&app.url, Some(ADMIN), &["keys", "revoke", &key_id]).await.assert_ok();
    assert_eq!(revoked.stdout, format!("Revoked key {key_id}.\n"));
    let listed = cli(&["keys", "list", "--project", "acme"]).await.assert_ok();
    assert!(line_starting(&listed.stdout, &key_id).contains("revoked"), "{}", listed.stdout);
    let refused = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .bearer_auth(secret)
        .json(&chat_body("haiku", "after revocation"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    cli(&["keys", "revoke", "key_does_not_exist"]).await.assert_failed_with("not found");

    let deleted = cli(&["projects", "delete", "acme", "--json"]).await.assert_ok().json();
    assert_eq!(deleted, serde_json::json!({"id": "acme", "deleted": true}));
    cli(&["projects", "get", "acme"]).await.assert_failed_with(r#"project "acme" not found"#);
    app.stop().await;
}

#[tokio::test]
async fn gateway_errors_print_their_message_and_exit_non_zero() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options { admin_key: Some(ADMIN.into()), ..Options::default() }).await;

    // The flag wins over the environment.
    let wrong = ccgate(&app.url, Some(ADMIN), &["projects", "list", "--admin-key", "not-the-admin-key"])
        .await
        .assert_failed_with("invalid API key (HTTP 401, authentication_error)");
    assert_eq!(wrong.code, Some(1));
    assert!(wrong.stdout.is_empty(), "nothing on stdout: {}", wrong.stdout);
    ccgate(&app.url, None, &["keys", "list"]).await.assert_failed_with("an API key is required");
    ccgate(&app.url, Some(ADMIN), &["projects", "create", "Not Valid"])
        .await
        .assert_failed_with("invalid project id");
    ccgate(&app.url, Some(ADMIN), &["keys", "create", "--project", "nowhere"])
        .await
        .assert_failed_with(r#"project "nowhere" not found"#);

    // Mistakes caught before any request: clap's usage error (exit 2).
    let bad_limit = ccgate(&app.url, Some(ADMIN), &["projects", "create", "x", "--daily-usd", "five"])
        .await
        .assert_failed_with("not an amount in USD");
    assert_eq!(bad_limit.code, Some(2));
    ccgate(&app.url, Some(ADMIN), &["keys", "create", "--project", "x", "--expires-at", "tomorrow"])
        .await
        .assert_failed_with("RFC 3339");

    // A gateway that is not there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    ccgate(&url, Some(ADMIN), &["projects", "list"]).await.assert_failed_with("cannot reach the gateway");
    app.stop().await;
}
