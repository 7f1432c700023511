//! Async agent tasks (`/v1/tasks`): background runs of the real CLI with
//! tools, their event log over SSE (resumable), cancel, and restarts.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{client, processes_with_marker, put_agent_policy, GatewayProcess, Options, TestApp, TestDb};
use serde_json::{json, Value};

async fn allow_tools(url: &str, project: &str, root: &Path) {
    let policy = json!({
        "allowed_roots": [root],
        "allowed_tools": ["Read", "Write"],
        "denied_tools": ["Bash"],
        "max_turns": 5,
        "max_task_usd": 1.0,
    });
    let response = put_agent_policy(url, project, &policy).await;
    assert!(response.status().is_success(), "{}", response.text().await.unwrap_or_default());
}

async fn submit(url: &str, body: Value) -> Value {
    let response = client().post(format!("{url}/v1/tasks")).json(&body).send().await.expect("submit");
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap_or_default());
    response.json().await.expect("task json")
}

async fn task(url: &str, id: &str) -> Value {
    client().get(format!("{url}/v1/tasks/{id}")).send().await.expect("get").json().await.expect("json")
}

async fn wait_final(url: &str, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..1200 {
        last = task(url, id).await;
        if !matches!(last["status"].as_str(), Some("running" | "queued")) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the task never ended: {last}");
}

/// The SSE stream, read to its end: (id, event, data) triples.
async fn events(url: &str, id: &str, last_event_id: Option<i64>) -> Vec<(i64, String, Value)> {
    let mut request = client().get(format!("{url}/v1/tasks/{id}/events"));
    if let Some(last) = last_event_id {
        request = request.header("last-event-id", last.to_string());
    }
    let response = request.send().await.expect("events");
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("event stream");
    let mut out = Vec::new();
    for frame in body.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let field = |name: &str| {
            frame.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()))
        };
        let (Some(id), Some(event), Some(data)) = (field("id"), field("event"), field("data")) else {
            continue;
        };
        out.push((id.parse().unwrap(), event, serde_json::from_str(&data).unwrap()));
    }
    out
}

#[tokio::test]
async fn a_task_runs_its_tools_in_the_background_and_its_events_replay_from_any_point() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    allow_tools(&app.url, "default", &root_path).await;
    let target = root_path.join("note.txt");
    let prompt = format!(
        r#"[sim:tool=Write {{"file_path":"{}","content":"written by a task"}}] write the note"#,
        target.display()
    );

    let created = submit(
        &app.url,
        json!({"prompt": prompt, "working_directory": root_path, "allowed_tools": ["Write"], "max_turns": 3, "model": "haiku"}),
    )
    .await;
    assert_eq!(created["object"], "task");
    assert_eq!(created["status"], "running");
    let id = created["id"].as_str().unwrap().to_string();

    // Following the events from the start sees the whole run, then the end.
    let all = events(&app.url, &id, None).await;
    let kinds: Vec<&str> = all.iter().map(|(_, kind, _)| kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"status"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    assert!(all.iter().any(|(_, k, d)| k == "tool" && d["type"] == "use" && d["name"] == "Write"), "{all:?}");
    assert!(all.iter().any(|(_, k, d)| k == "tool" && d["type"] == "result"), "{all:?}");
    assert!(all.iter().any(|(_, k, _)| k == "text"), "{all:?}");
    let ids: Vec<i64> = all.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "ids are 1, 2, 3, …");

    // The tool really ran, inside the allowed directory.
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "written by a task");

    let done = wait_final(&app.url, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["result"].as_str().unwrap().starts_with("Simulated reply:"), "{done}");
    assert!(done["num_turns"].as_i64().unwrap() >= 2, "{done}");
    assert!(done["cost_usd"].as_f64().unwrap() > 0.0, "{done}");
    assert_eq!(done["tool_uses"][0]["name"], "Write", "{done}");

    // Resuming after event 2 replays exactly the rest.
    let rest = events(&app.url, &id, Some(2)).await;
    assert_eq!(rest.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(), ids[2..].to_vec());

    // The ledger has the run, under the tasks endpoint.
    app.wait_settled("default").await;
    let row =
        app.state.budget.store().ledger_row(done["request_id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(row.endpoint, "/v1/tasks");
    assert_eq!(row.cost.as_usd(), done["cost_usd"].as_f64().unwrap());

    // Another project cannot see it.
    let other = client()
        .get(format!("{}/v1/tasks/{id}", app.url))
        .header("x-project-id", "someone-else")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_task_stops_its_worker_and_says_so() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    allow_tools(&app.url, "default", &root_path).await;
    let created = submit(
        &app.url,
        json!({"prompt": "think for a long time [sim:hang]", "working_directory": root_path, "model": "haiku"}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    // Cancel once the upstream call is under way.
    common::wait_for(Duration::from_secs(30), || {
        app.sim.sim.requests().iter().any(|r| r.last_user_text.contains("long time")).then_some(()).ok_or(())
    })
    .await
    .expect("the task reached the upstream");

    let response = client().post(format!("{}/v1/tasks/{id}/cancel", app.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let left = app.wait_no_workers().await;
    assert!(left.is_empty(), "worker processes left: {left:?}");

    let all = events(&app.url, &id, None).await;
    assert_eq!(
        all.last().map(|(_, k, d)| (k.as_str(), d["status"].clone())),
        Some(("done", json!("cancelled")))
    );
    let again = client().post(format!("{}/v1/tasks/{id}/cancel", app.url)).send().await.unwrap();
    assert_eq!(again.status(), 409);
    // What it spent is settled and recorded.
    app.wait_settled("default").await;
    let row = app
        .state
        .budget
        .store()
        .ledger_row(cancelled["request_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(row.status, "in_progress");
    app.stop().await;
}

#[tokio::test]
async fn a_restart_marks_a_running_task_interrupted_and_keeps_finished_results() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("ccgate.db").display());
    let sim = ccgate_sim::spawn(ccgate_sim::SimConfig::default()).await.unwrap();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let root_path = dir.path().canonicalize().unwrap();

    let mut first = GatewayProcess::start(&db_url, &sim, &marker, dir.path(), &[]);
    allow_tools(&first.url, "default", &root_path).await;
    let finished = submit(
        &first.url,
        json!({"prompt": "quick one [sim:words=3]", "working_directory": root_path, "model": "haiku"}),
    )
    .await;
    let finished_id = finished["id"].as_str().unwrap().to_string();
    let done = wait_final(&first.url, &finished_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let hanging = submit(
        &first.url,
        json!({"prompt": "never ends [sim:hang]", "working_directory": root_path, "model": "haiku"}),
    )
    .await;
    let hanging_id = hanging["id"].as_str().unwrap().to_string();
    common::wait_for(Duration::from_secs(30), || {
        sim.sim.requests().iter().any(|r| r.last_user_text.contains("never ends")).then_some(()).ok_or(())
    })
    .await
    .expect("the task reached the upstream");

    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = GatewayProcess::start(&db_url, &sim, &marker, dir.path(), &[]);
    let interrupted = task(&second.url, &hanging_id).await;
    assert_eq!(interrupted["status"], "interrupted", "{interrupted}");
    assert_eq!(interrupted["error"]["code"], "interrupted", "{interrupted}");
    let all = events(&second.url, &hanging_id, None).await;
    assert_eq!(
        all.last().map(|(_, k, d)| (k.as_str(), d["status"].clone())),
        Some(("done", json!("interrupted")))
    );

    // The finished one is as it was.
    let kept = task(&second.url, &finished_id).await;
    assert_eq!(
        (kept["status"].clone(), kept["result"].clone()),
        (done["status"].clone(), done["result"].clone())
    );
    drop(second);
    let left = common::wait_for(Duration::from_secs(10), || {
        let left = processes_with_marker(&marker);
        left.is_empty().then_some(()).ok_or(left)
    })
    .await;
    assert!(left.is_ok(), "processes left: {left:?}");
}

#[tokio::test]
async fn a_task_reads_a_file_and_writes_another_and_is_refused_outside_its_roots() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    allow_tools(&app.url, "default", &root_path).await;
    let source = root_path.join("in.txt");
    let target = root_path.join("out.txt");
    std::fs::write(&source, "the source text").unwrap();
    let prompt = format!(
        r#"[sim:tool=Read {{"file_path":"{}"}}] [sim:tool=Write {{"file_path":"{}","content":"copied"}}] copy it"#,
        source.display(),
        target.display()
    );
    let created = submit(
        &app.url,
        json!({"prompt": prompt, "working_directory": root_path, "allowed_tools": ["Read", "Write"], "model": "haiku"}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let done = wait_final(&app.url, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let names: Vec<&str> =
        done["tool_uses"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Read", "Write"], "{done}");
    assert!(done["num_turns"].as_i64().unwrap() >= 3, "{done}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "copied");
    let all = events(&app.url, &id, None).await;
    assert!(
        all.iter().any(|(_, k, d)| k == "tool"
            && d["type"] == "result"
            && d["content"].to_string().contains("the source text")),
        "the Read result reached the events: {all:?}"
    );

    // Aimed outside the roots: refused before anything runs, nothing touched.
    let outside = tempfile::tempdir().unwrap();
    let calls = app.sim.sim.requests().len();
    let response = client()
        .post(format!("{}/v1/tasks", app.url))
        .json(&json!({"prompt": "write there", "working_directory": outside.path(), "allowed_tools": ["Write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("allowed_roots"), "{error}");
    assert_eq!(app.sim.sim.requests().len(), calls, "nothing reached the upstream");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    app.stop().await;
}
