//! The agent policy's `mcp_servers` and `skip_permissions` with the real
//! CLI: a stdio MCP server (`tests/fixtures/mcp_echo.py`, which logs its
//! start and every call to a file) that the simulated upstream asks the
//! model to call, servers outside the policy that must never start, and a
//! write that only the permission bypass allows.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{agent_body, client, wait_for, Options, TestApp, TestDb};
use serde_json::{json, Value};

const ECHO: &str = r#"[sim:tool=mcp__echo__echo {"text":"hi"}] echo it"#;

fn fixture() -> String {
    format!("{}/tests/fixtures/mcp_echo.py", env!("CARGO_MANIFEST_DIR"))
}

/// An MCP server entry that runs the echo fixture, logging to `log`.
fn echo_server(name: &str, log: &Path) -> Value {
    json!({"name": name, "command": "python3", "args": [fixture()], "env": {"MCP_ECHO_LOG": log}})
}

/// The same, for a server that takes `delay_ms` to start answering.
fn slow_echo_server(name: &str, log: &Path, delay_ms: u64) -> Value {
    let mut server = echo_server(name, log);
    server["env"]["MCP_ECHO_START_DELAY_MS"] = delay_ms.to_string().into();
    server
}

/// A temp directory holding `root` (the policy's root, the agents' working
/// directory) and the MCP servers' logs beside it.
struct Tree {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
    let root = base.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    Tree { _dir: dir, base, root }
}

/// MCP servers the CLI would start on its own if the gateway let it: one
/// in the working directory's `.mcp.json` and one in the agents' user
/// config. Returns their log files, which exist once a server starts.
fn plant_rogue_servers(app: &TestApp, tree: &Tree, name_in_project: &str) -> Vec<PathBuf> {
    let project_log = tree.base.join("project-server.log");
    let user_log = tree.base.join("user-server.log");
    let command = |log: &Path| json!({"command": "python3", "args": [fixture(), log]});
    let project = json!({"mcpServers": {name_in_project: command(&project_log)}});
    std::fs::write(tree.root.join(".mcp.json"), project.to_string()).unwrap();
    let config_dir = app.work_dir.path().join(ccgate::workers::cli::AGENT_CONFIG_DIR);
    std::fs::create_dir_all(&config_dir).unwrap();
    let user = json!({"mcpServers": {"userwide": command(&user_log)}});
    std::fs::write(config_dir.join(".claude.json"), user.to_string()).unwrap();
    vec![project_log, user_log]
}

/// The tool names the upstream was offered in its `index`th request.
fn offered_tools(app: &TestApp, index: usize) -> Vec<String> {
    app.sim.sim.requests()[index].body["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The simulated model calls the server's tool in its first answer, in
/// microseconds; the server here takes three seconds to start. The run waits
/// for the policy's servers to connect before its first call, so the tool
/// is there when the model calls it (Claude Code otherwise connects them
/// while the run goes on, and the call failed with "still connecting").
#[tokio::test]
async fn a_policy_s_mcp_server_is_called_and_no_other_server_starts() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    let rogue_logs = plant_rogue_servers(&app, &tree, "rogue");
    let log = tree.base.join("echo.log");
    app.project_with_policy(
        "acme",
        json!({"allowed_roots": [tree.root], "allowed_tools": ["Read", "mcp__echo__echo"],
               "mcp_servers": [slow_echo_server("echo", &log, 3_000)], "max_turns": 3}),
    )
    .await;

    let extra = json!({"working_directory": tree.root, "allowed_tools": ["mcp__echo__echo"]});
    let response = app.chat(agent_body("acme", ECHO, extra)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("echo: hi"), "the reply quotes the tool's result: {text}");
    let tools = &body["x_ccgate"]["tool_uses"];
    assert_eq!(tools[0]["name"], "mcp__echo__echo", "{body}");
    assert_eq!(tools[1]["is_error"], false, "{body}");
    assert_eq!(read(&log), "started\ncall: hi\n", "the server ran the call");
    assert_eq!(offered_tools(&app, 0), vec!["mcp__echo__echo".to_string()]);

    // A request that does not enable the server's tool does not start it,
    // so the model cannot call it.
    let extra = json!({"working_directory": tree.root, "allowed_tools": ["Read"]});
    let response = app.chat(agent_body("acme", ECHO, extra)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["x_ccgate"]["tool_uses"][1]["is_error"], true, "{body}");
    assert_eq!(read(&log), "started\ncall: hi\n", "the server was not started again");
    assert_eq!(offered_tools(&app, 2), vec!["Read".to_string()]);

    for rogue in &rogue_logs {
        assert!(!rogue.exists(), "{} started", rogue.display());
    }
    app.stop().await;
}

#[tokio::test]
async fn without_mcp_servers_in_the_policy_no_mcp_tool_is_offered_or_run() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    // The working directory names a server "echo", as if to supply the one
    // the policy lacks.
    let rogue_logs = plant_rogue_servers(&app, &tree, "echo");
    app.project_with_policy("plain", json!({"allowed_roots": [tree.root], "allowed_tools": ["Read"]})).await;
    let extra = json!({"working_directory": tree.root, "allowed_tools": ["mcp__echo__echo"]});
    let response = app.chat(agent_body("plain", ECHO, extra.clone())).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("tool mcp__echo__echo is not in the project's agent policy"), "{message}");
    assert!(app.sim.sim.requests().is_empty(), "nothing ran");

    // Even a policy that allows the tool's name gives no server to run it.
    app.project_with_policy(
        "named",
        json!({"allowed_roots": [tree.root], "allowed_tools": ["Read", "mcp__echo__echo"]}),
    )
    .await;
    let response = app.chat(agent_body("named", ECHO, extra)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["x_ccgate"]["tool_uses"][1]["is_error"], true, "{body}");
    let offered = offered_tools(&app, 0);
    assert!(offered.iter().all(|name| !name.starts_with("mcp__")), "{offered:?}");
    for rogue in &rogue_logs {
        assert!(!rogue.exists(), "{} started", rogue.display());
    }
    app.stop().await;
}

/// The command lines of this gateway's live CLI workers.
fn worker_command_lines(app: &TestApp) -> Vec<String> {
    app.worker_processes()
        .into_iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|line| line.contains("--permission-mode"))
        .collect()
}

/// Runs `body` and returns the response with the command line its worker
/// had while it ran (the first turn is slowed down to look at it).
async fn chat_seeing_command_line(app: &TestApp, body: Value) -> (Value, String) {
    let request = client().post(format!("{}/v1/chat/completions", app.url)).json(&body).send();
    let running = tokio::spawn(request);
    let seen =
        wait_for(Duration::from_secs(30), || worker_command_lines(app).pop().ok_or("no worker running yet"))
            .await
            .expect("a worker ran");
    let response = running.await.unwrap().expect("response");
    assert_eq!(response.status(), 200);
    (response.json().await.unwrap(), seen)
}

#[tokio::test]
async fn skip_permissions_lets_a_write_outside_the_working_directory_run_and_nothing_else_does() {
    let db = TestDb::sqlite();
    let opts = Options {
        adjust: |settings| {
            settings.worker_env.insert("IS_SANDBOX".into(), "1".into());
        },
        ..Options::default()
    };
    let app = TestApp::spawn(&db, opts).await;
    let tree = tree();
    let policy = |skip: bool| json!({"allowed_roots": [tree.root], "allowed_tools": ["Write"], "max_turns": 3, "skip_permissions": skip});
    app.project_with_policy("careful", policy(false)).await;
    app.project_with_policy("trusting", policy(true)).await;
    // The agent works in root/sub and writes to root: inside the policy's
    // root, outside the edits the working directory's rule approves.
    let out = tree.root.join("out.txt");
    let write = format!(
        r#"[sim:first_token_ms=3000] [sim:tool=Write {{"file_path":"{}","content":"written"}}] write"#,
        out.display()
    );
    let extra = json!({"working_directory": tree.root.join("sub")});

    let (body, command) = chat_seeing_command_line(&app, agent_body("careful", &write, extra.clone())).await;
    assert!(command.contains("--permission-mode default"), "{command}");
    assert!(!command.contains("--dangerously-skip-permissions"), "{command}");
    assert!(!command.contains("bypassPermissions"), "{command}");
    assert_eq!(body["x_ccgate"]["tool_uses"][1]["is_error"], true, "{body}");
    assert!(!out.exists(), "the write ran without the bypass");

    app.wait_no_workers().await;
    let (body, command) = chat_seeing_command_line(&app, agent_body("trusting", &write, extra)).await;
    assert!(
        command.contains("--permission-mode bypassPermissions --dangerously-skip-permissions"),
        "{command}"
    );
    assert_eq!(body["x_ccgate"]["tool_uses"][1]["is_error"], false, "{body}");
    assert_eq!(read(&out), "written");
    app.stop().await;
}

#[tokio::test]
async fn skip_permissions_as_root_outside_a_sandbox_is_refused_naming_the_cause() {
    let db = TestDb::sqlite();
    let app = TestApp::spawn(&db, Options::default()).await;
    let tree = tree();
    app.project_with_policy(
        "trusting",
        json!({"allowed_roots": [tree.root], "allowed_tools": ["Read"], "skip_permissions": true}),
    )
    .await;
    let response = app.chat(agent_body("trusting", "hi", json!({"working_directory": tree.root}))).await;
    // SAFETY: getuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::getuid() } == 0;
    if !as_root {
        // Not root: the CLI accepts the bypass and the run goes ahead.
        assert_eq!(response.status(), 200);
        return app.stop().await;
    }
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for words in ["skip_permissions", "as root", "IS_SANDBOX=1", "worker_env"] {
        assert!(message.contains(words), "{words:?} missing from {message}");
    }
    assert_eq!(body["error"]["code"], "worker_unavailable");
    assert!(app.sim.sim.requests().is_empty(), "nothing ran");
    assert_eq!(app.wait_no_workers().await, Vec::<u32>::new());
    app.stop().await;
}
