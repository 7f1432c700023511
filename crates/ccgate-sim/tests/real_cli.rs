//! The real Claude Code CLI against the simulator. The CLI comes from
//! `CCGATE_CLAUDE_BIN`, else `claude` on `PATH`; without either these tests fail.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ccgate_sim::{spawn, SimConfig, SimHandle};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Longest a single CLI run may take before the test gives up on it.
const CLI_DEADLINE: Duration = Duration::from_secs(120);

fn claude_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CCGATE_CLAUDE_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "CCGATE_CLAUDE_BIN={} is not a file", bin.display());
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("claude"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "these tests run the real Claude Code CLI: set CCGATE_CLAUDE_BIN to its path \
             (e.g. /work/tools/claude/node_modules/.bin/claude) or put `claude` on PATH"
        )
    })
}

/// Runs the CLI in `cwd` with a private `HOME`, feeding `prompt` on stdin, and
/// returns its stream-json lines.
async fn run_cli(sim: &SimHandle, cwd: &Path, args: &[&str], prompt: &str) -> Vec<Value> {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(claude_bin())
        .args(["-p", "--output-format", "stream-json", "--verbose", "--model", "haiku"])
        .args(["--no-session-persistence"])
        .args(args)
        .current_dir(cwd)
        // A clean environment: no CLAUDECODE, no user ANTHROPIC_* settings.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("DISABLE_TELEMETRY", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(prompt.as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(CLI_DEADLINE, child.wait_with_output())
        .await
        .expect("the CLI finishes within its deadline")
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "CLI failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn result_line(lines: &[Value]) -> &Value {
    let last = lines.last().expect("the CLI printed something");
    assert_eq!(last["type"], "result", "last line is the result: {last}");
    last
}

#[tokio::test]
async fn real_cli_streams_a_simulated_reply() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let args = ["--include-partial-messages", "--bare", "--tools", ""];
    let lines = run_cli(&sim, cwd.path(), &args, "What is 2+2?").await;

    let result = result_line(&lines);
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["result"], "Simulated reply: What is 2+2?");
    assert!(result["usage"]["input_tokens"].as_u64().unwrap() > 0, "{result}");
    assert!(result["usage"]["output_tokens"].as_u64().unwrap() > 0, "{result}");
    let deltas = lines
        .iter()
        .filter(|line| line["type"] == "stream_event" && line["event"]["type"] == "content_block_delta")
        .count();
    assert!(deltas >= 2, "partial messages carry the streamed chunks");

    let requests = sim.sim.requests();
    assert_eq!(requests.len(), 1, "one upstream call: {requests:?}");
    assert!(requests[0].stream);
    assert_eq!(requests[0].last_user_text.trim(), "What is 2+2?");
}

#[tokio::test]
async fn real_cli_runs_a_scripted_tool_call() {
    let sim = spawn(SimConfig::default()).await.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let file = cwd.path().join("a.txt");
    std::fs::write(&file, "hello from the file\n").unwrap();
    let prompt = format!("[sim:tool=Read {{\"file_path\":{}}}] read it", Value::from(file.to_str().unwrap()));
    // Not --bare: bare mode disables the file tools.
    let args = ["--tools", "Read", "--allowedTools", "Read", "--permission-mode", "acceptEdits"];
    let lines = run_cli(&sim, cwd.path(), &args, &prompt).await;

    let result = result_line(&lines);
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(result["num_turns"], 2, "{result}");
    let text = result["result"].as_str().unwrap();
    assert!(text.starts_with("Simulated reply: tool result:"), "{text}");
    assert!(text.contains("hello from the file"), "{text}");

    let requests = sim.sim.requests();
    assert_eq!(requests.len(), 2, "a tool call and the turn after it");
    let last_message = requests[1].body["messages"].as_array().unwrap().last().unwrap().clone();
    let tool_result = &last_message["content"][0];
    assert_eq!(tool_result["type"], "tool_result");
    assert_eq!(tool_result["tool_use_id"], "toolu_sim_1");
}
