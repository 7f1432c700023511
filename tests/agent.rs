//! Claude Code as an agent behind chat completions: the project's agent
//! policy, tools that really run (the real CLI against the simulated
//! upstream, which answers with scripted `tool_use` blocks), streaming of
//! tool activity, and sessions continued with `session_id`.

mod common;

use std::path::{Path, PathBuf};

use common::{agent_body, client, put_agent_policy, Options, TestApp, TestDb};
use futures::StreamExt;
use serde_json::{json, Value};

/// A directory tree for one test: `root` (the policy's only root, with
/// `in.txt`), `outside` (beside it), and `root/link-out` (a symlink that
/// leads to `outside`).
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("in.txt"), "hello from the input file\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link-out")).unwrap();
    Tree { _dir: dir, root, outside }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn error_message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn reads_a_file_then_writes_another_inside_its_root_and_the_ledger_covers_every_turn() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    app.project_with_policy("acme",
        json!({"allowed_roots": [tree.root], "allowed_tools": ["Read", "Write"], "max_turns": 4, "max_task_usd": 0.5}),
    )
    .await;
    let read =
        format!(r#"[sim:tool=Read {{"file_path":"{}"}}] read the input"#, tree.root.join("in.txt").display());
    let response = app.chat(agent_body("acme", &read, json!({"working_directory": tree.root}))).await;
    assert_eq!(response.status(), 200);
    let header_session = response.headers()["x-ccgate-session-id"].to_str().unwrap().to_string();
    let cost: f64 = response.headers()["x-ccgate-cost-usd"].to_str().unwrap().parse().unwrap();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("hello from the input file"), "the model saw the file: {text}");
    let info = &body["x_ccgate"];
    assert_eq!(info["session_id"], header_session);
    assert_eq!(info["num_turns"], 2);
    let tools = info["tool_uses"].as_array().unwrap();
    assert_eq!(tools[0]["type"], "use");
    assert_eq!(tools[0]["name"], "Read");
    assert_eq!(tools[1]["type"], "result");
    assert_eq!(tools[1]["is_error"], false);
    assert_eq!(tools[1]["id"], tools[0]["id"]);

    // The ledger row holds what the whole two-turn run cost, within what
    // was reserved, which the policy caps.
    let requests = app.sim.sim.requests();
    assert_eq!(requests.len(), 2, "one upstream call per turn");
    app.wait_settled("acme").await;
    let row = app.state.budget.store().ledger_row(&request_id).await.unwrap().expect("ledger row");
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.cost.as_usd(), cost);
    assert!(row.reserved >= row.cost && row.reserved.as_usd() <= 0.5, "{row:?}");
    // Each turn re-reads the CLI's own prompt (thousands of tokens): both count.
    let one_turn: u64 = requests[0].body.to_string().len() as u64 / 4;
    assert!(row.input_tokens as u64 > one_turn, "input {} vs one turn ~{one_turn}", row.input_tokens);

    // The same session writes a second file from what it read.
    let out = tree.root.join("out.txt");
    let write = format!(
        r#"[sim:tool=Write {{"file_path":"{}","content":"copied: hello from the input file"}}] write it"#,
        out.display()
    );
    let response = app.chat(agent_body("acme", &write, json!({"session_id": header_session}))).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["x_ccgate"]["tool_uses"][1]["is_error"], false, "{body}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "copied: hello from the input file");
    assert_eq!(files_in(&tree.outside), Vec::<String>::new());
    app.stop().await;
}

#[tokio::test]
async fn directories_outside_the_roots_are_refused_before_anything_runs() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    app.project_with_policy(
        "acme",
        json!({"allowed_roots": [tree.root], "allowed_tools": ["Read", "Write"]}),
    )
    .await;
    let write = format!(
        r#"[sim:tool=Write {{"file_path":"{}","content":"x"}}] write"#,
        tree.outside.join("pwned.txt").display()
    );
    let dot_dot = tree.root.join("..").join("outside");
    let sibling = format!("{}-b", tree.root.display());
    std::fs::create_dir_all(&sibling).unwrap();
    for dir in [tree.outside.clone(), dot_dot, tree.root.join("link-out"), PathBuf::from(&sibling)] {
        let response = app.chat(agent_body("acme", &write, json!({"working_directory": dir}))).await;
        assert_eq!(response.status(), 403, "{}", dir.display());
        let message = error_message(&response.json().await.unwrap());
        assert!(message.contains("is outside allowed_roots"), "{message}");
    }
    let response =
        app.chat(agent_body("acme", &write, json!({"working_directory": tree.root.join("nope")}))).await;
    assert_eq!(response.status(), 400);
    assert!(app.sim.sim.requests().is_empty(), "nothing ran");

    // Inside its root, an agent that aims a write outside it, directly or
    // through a symlink, is stopped: file tools are never pre-approved, and
    // the CLI approves edits in its working directory only.
    let through_link = format!(
        r#"[sim:tool=Write {{"file_path":"{}","content":"x"}}] write"#,
        tree.root.join("link-out").join("linked.txt").display()
    );
    let secret = tree.outside.parent().unwrap().join("secret.txt");
    std::fs::write(&secret, "the secret outside").unwrap();
    let read_out = format!(r#"[sim:tool=Read {{"file_path":"{}"}}] read"#, secret.display());
    for prompt in [&write, &through_link, &read_out] {
        let response = app.chat(agent_body("acme", prompt, json!({"working_directory": tree.root}))).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["x_ccgate"]["tool_uses"][1]["is_error"], true, "{body}");
        assert!(!body.to_string().contains("the secret outside"), "{body}");
    }
    assert_eq!(files_in(&tree.outside), Vec::<String>::new(), "nothing touched outside the root");
    app.stop().await;
}

#[tokio::test]
async fn a_denied_tool_never_runs() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    app.project_with_policy("acme",
        json!({"allowed_roots": [tree.root], "allowed_tools": ["Read", "Bash(git *)"], "denied_tools": ["Bash"]}),
    )
    .await;
    let marker = tree.root.join("pwned");
    let bash = format!(r#"[sim:tool=Bash {{"command":"touch {}"}}] run it"#, marker.display());
    for tools in [json!(["Bash"]), json!(["Bash(git *)"]), json!(["Read", "Bash(touch *)"])] {
        let response = app.chat(agent_body("acme", &bash, json!({"allowed_tools": tools}))).await;
        assert_eq!(response.status(), 403, "{tools}");
        let message = error_message(&response.json().await.unwrap());
        assert!(message.contains("is denied by the project's agent policy"), "{message}");
    }
    assert!(app.sim.sim.requests().is_empty());

    // With the policy's own tools, Bash is not even offered to the model, so
    // a model that calls it anyway gets an error and nothing runs.
    let response = app.chat(agent_body("acme", &bash, json!({"max_turns": 3}))).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["x_ccgate"]["tool_uses"][0]["name"], "Bash");
    assert_eq!(body["x_ccgate"]["tool_uses"][1]["is_error"], true, "{body}");
    assert!(!marker.exists(), "the denied tool ran");
    let offered: Vec<String> = app.sim.sim.requests()[0].body["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["name"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    assert_eq!(offered, vec!["Read".to_string()]);

    // `Bash(git *)` allows git and nothing else: a file-changing command in
    // the working directory is not approved either.
    app.project_with_policy(
        "gitonly",
        json!({"allowed_roots": [tree.root], "allowed_tools": ["Read", "Write", "Bash(git *)"]}),
    )
    .await;
    let response = app
        .chat(agent_body(
            "gitonly",
            &bash,
            json!({"allowed_tools": ["Bash(git *)", "Write"], "max_turns": 3}),
        ))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["x_ccgate"]["tool_uses"][1]["is_error"], true, "{body}");
    assert!(!marker.exists(), "a command outside Bash(git *) ran");
    app.stop().await;
}

#[tokio::test]
async fn a_conversation_continues_over_three_requests() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    app.project_with_policy("acme", json!({"allowed_roots": [tree.root], "allowed_tools": ["Read"]})).await;
    let mut session: Option<String> = None;
    for (turn, word) in ["alpha", "bravo", "charlie"].into_iter().enumerate() {
        let extra = match &session {
            None => json!({"working_directory": tree.root}),
            Some(id) => json!({"session_id": id}),
        };
        let response = app.chat(agent_body("acme", &format!("remember the word {word}"), extra)).await;
        assert_eq!(response.status(), 200, "turn {turn}");
        let body: Value = response.json().await.unwrap();
        let id = body["x_ccgate"]["session_id"].as_str().expect("a session id").to_string();
        if let Some(previous) = &session {
            assert_eq!(&id, previous, "the same session goes on");
        }
        session = Some(id);
        // The upstream sees every earlier turn of the conversation.
        let seen = app.sim.sim.requests().last().unwrap().body["messages"].to_string();
        for earlier in ["alpha", "bravo", "charlie"].iter().take(turn + 1) {
            assert!(
                seen.contains(&format!("remember the word {earlier}")),
                "turn {turn} lacks {earlier}: {seen}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn another_project_cannot_resume_a_session() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    let policy = json!({"allowed_roots": [tree.root], "allowed_tools": ["Read"]});
    app.project_with_policy("alpha", policy.clone()).await;
    app.project_with_policy("beta", policy).await;
    let key_of = |project: &'static str| {
        let url = app.url.clone();
        async move {
            let created: Value = client()
                .post(format!("{url}/admin/projects/{project}/keys"))
                .json(&json!({"name": "k"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            created["key"].as_str().unwrap().to_string()
        }
    };
    let (alpha, beta) = (key_of("alpha").await, key_of("beta").await);
    let chat = |key: String, body: Value| {
        let url = app.url.clone();
        async move {
            client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = json!({"model": "haiku", "messages": [{"role": "user", "content": "hi"}], "max_turns": 2});
    let response = chat(alpha.clone(), first).await;
    assert_eq!(response.status(), 200);
    let session = response.headers()["x-ccgate-session-id"].to_str().unwrap().to_string();
    let resume =
        json!({"model": "haiku", "messages": [{"role": "user", "content": "again"}], "session_id": session});
    let response = chat(beta, resume.clone()).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "session_not_found");
    let response = chat(alpha, resume).await;
    assert_eq!(response.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn without_a_policy_there_is_no_agent_and_plain_chat_stays_tool_free() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    app.create_project("acme", None).await;
    let response =
        client().get(format!("{}/admin/projects/acme/agent-policy", app.url)).send().await.unwrap();
    assert_eq!(response.status(), 404);
    for extra in
        [json!({"working_directory": tree.root}), json!({"allowed_tools": ["Read"]}), json!({"max_turns": 1})]
    {
        let response = app.chat(agent_body("acme", "hi", extra.clone())).await;
        assert_eq!(response.status(), 403, "{extra}");
        let message = error_message(&response.json().await.unwrap());
        assert!(message.contains("no agent policy"), "{message}");
    }
    assert!(app.sim.sim.requests().is_empty());

    // Bad policies are refused, naming the field; a good one reads back.
    let response = put_agent_policy(&app.url, "acme", &json!({"allowed_roots": ["relative/dir"]})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "allowed_roots[0]");
    let response = put_agent_policy(&app.url, "nobody", &json!({})).await;
    assert_eq!(response.status(), 404);
    let policy = json!({"allowed_roots": [tree.root], "allowed_tools": ["Read", "Write"], "denied_tools": ["Bash"],
        "max_turns": 3, "max_task_usd": 0.25, "mcp_servers": [], "skip_permissions": false});
    assert_eq!(put_agent_policy(&app.url, "acme", &policy).await.status(), 200);
    let read: Value = client()
        .get(format!("{}/admin/projects/acme/agent-policy", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read, policy);

    // A plain request of a project with a policy still has no tools.
    let response = app.chat(agent_body("acme", "hi", json!({}))).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("x_ccgate").is_none(), "{body}");
    let seen = &app.sim.sim.requests()[0].body;
    assert!(seen["tools"].as_array().is_none_or(Vec::is_empty), "{}", seen["tools"]);

    // Batches run no agents: a request with agent fields fails on its own.
    let batch = json!({"project_id": "acme", "requests": [
        {"custom_id": "a", "model": "haiku", "messages": [{"role": "user", "content": "hi"}], "max_turns": 2}]});
    let result: Value = client()
        .post(format!("{}/v1/batch", app.url))
        .json(&batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["results"][0]["status"], "failed", "{result}");
    assert!(result["results"][0]["error"]["message"].as_str().unwrap().contains("not supported in a batch"));
    assert_eq!(app.sim.sim.requests().len(), 1);

    // A project deleted and made again starts without the old policy.
    let deleted = client().delete(format!("{}/admin/projects/acme", app.url)).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    app.create_project("acme", None).await;
    let response =
        client().get(format!("{}/admin/projects/acme/agent-policy", app.url)).send().await.unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn streaming_shows_tool_activity_as_empty_delta_chunks() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    app.project_with_policy("acme", json!({"allowed_roots": [tree.root], "allowed_tools": ["Read"]})).await;
    let read = format!(r#"[sim:tool=Read {{"file_path":"{}"}}] read"#, tree.root.join("in.txt").display());
    let mut body = agent_body("acme", &read, json!({"working_directory": tree.root}));
    body["stream"] = json!(true);
    let response = app.chat(body).await;
    assert_eq!(response.status(), 200);
    let mut raw = String::new();
    let mut stream = response.bytes_stream();
    while let Some(bytes) = stream.next().await {
        raw.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
    }
    let frames: Vec<&str> =
        raw.split("\n\n").map(|f| f.trim().trim_start_matches("data: ")).filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> =
        frames[..frames.len() - 1].iter().map(|f| serde_json::from_str(f).unwrap()).collect();
    let tools: Vec<&Value> = chunks.iter().filter(|c| !c["x_ccgate"]["tool"].is_null()).collect();
    assert_eq!(tools.len(), 2, "{raw}");
    for chunk in &tools {
        assert_eq!(chunk["choices"][0]["delta"], json!({}), "plain clients see nothing");
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
    assert_eq!(tools[0]["x_ccgate"]["tool"]["type"], "use");
    assert_eq!(tools[0]["x_ccgate"]["tool"]["name"], "Read");
    assert_eq!(tools[1]["x_ccgate"]["tool"]["type"], "result");
    assert!(tools[1]["x_ccgate"]["tool"]["content"].as_str().unwrap().contains("hello from the input file"));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(text.contains("tool result:"), "{text}");
    let last = chunks.iter().find(|c| c["choices"][0]["finish_reason"] == "stop").expect("finish chunk");
    assert!(last["x_ccgate"]["session_id"].as_str().is_some_and(|s| !s.is_empty()), "{last}");
    assert_eq!(last["x_ccgate"]["num_turns"], 2);
    app.stop().await;
}

#[tokio::test]
async fn a_model_on_the_direct_backend_cannot_run_an_agent() {
    let db = TestDb::sqlite();
    let opts = Options {
        adjust: |settings| {
            settings.backends.insert("haiku".into(), "api".into());
        },
        ..Options::default()
    };
    let app = TestApp::spawn(&db, opts).await;
    let tree = tree();
    app.project_with_policy("acme", json!({"allowed_roots": [tree.root], "allowed_tools": ["Read"]})).await;
    let response = app.chat(agent_body("acme", "hi", json!({"working_directory": tree.root}))).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(error_message(&body).contains("direct api backend"), "{body}");
    assert_eq!(body["error"]["param"], "model");
    assert!(app.sim.sim.requests().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn policies_and_sessions_are_kept_in_postgres_too() {
    use ccgate::store::agents::AgentSession;
    let db = TestDb::postgres().await;
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    let policy = json!({"allowed_roots": [tree.root], "allowed_tools": ["Read"], "max_turns": 2});
    app.project_with_policy("acme", policy.clone()).await;
    // Replacing a policy keeps one row.
    let policy = json!({"allowed_roots": [tree.root], "allowed_tools": ["Read", "Write"], "max_turns": 3});
    assert_eq!(put_agent_policy(&app.url, "acme", &policy).await.status(), 200);
    let read: Value = client()
        .get(format!("{}/admin/projects/acme/agent-policy", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["allowed_tools"], policy["allowed_tools"]);
    assert_eq!(read["max_turns"], 3);

    let response = app.chat(agent_body("acme", "hi", json!({"max_turns": 2}))).await;
    assert_eq!(response.status(), 200);
    let session = response.headers()["x-ccgate-session-id"].to_str().unwrap().to_string();
    let store = app.state.budget.store();
    let stored = store.agent_session(&session).await.unwrap().expect("session row");
    assert_eq!(stored.project_id, "acme");
    assert_eq!(stored.working_directory, tree.root.display().to_string());
    // Another project touching the same id never takes it over.
    let intruder = AgentSession { project_id: "other".into(), last_used_ms: i64::MAX, ..stored.clone() };
    store.touch_agent_session(&intruder).await.unwrap();
    assert_eq!(store.agent_session(&session).await.unwrap(), Some(stored));
    app.stop().await;
    db.cleanup().await;
}

/// Claude Code checks its own `--max-budget-usd` only after each turn, so
/// an agent could start a turn it cannot pay for. Its calls go through the
/// spend gate instead, which refuses a turn whose worst case no longer
/// fits in what is left of the reservation: the run stops at its cap, and
/// what it cost stays within what was reserved.
#[tokio::test]
async fn an_agent_turn_that_could_cost_more_than_is_left_is_never_sent() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    // Room for the first turn (about 7,500 tokens of haiku input) and not
    // for a second one's input: what the first read plus what is new.
    app.project_with_policy(
        "acme",
        json!({"allowed_roots": [tree.root], "allowed_tools": ["Read"], "max_turns": 5, "max_task_usd": 0.012}),
    )
    .await;
    let path = tree.root.join("in.txt").display().to_string();
    let prompt = format!(
        r#"[sim:tool=Read {{"file_path":"{path}"}}] [sim:tool=Read {{"file_path":"{path}"}}] read it twice"#
    );
    let response = app.chat(agent_body("acme", &prompt, json!({"working_directory": tree.root}))).await;
    let status = response.status();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(error_message(&body).contains("spending cap"), "{body}");

    assert_eq!(app.sim.sim.requests().len(), 1, "the second turn never reached the upstream");
    app.wait_settled("acme").await;
    let row = app.state.budget.store().ledger_row(&request_id).await.unwrap().expect("ledger row");
    assert!(row.cost.0 > 0 && row.cost <= row.reserved, "{row:?}");
    let metrics = client().get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    let refused = common::metric_sample(&metrics, "ccgate_worker_events_total", &["gate_refusal"]);
    assert_eq!(refused, Some(1.0), "{metrics}");
    app.stop().await;
}
