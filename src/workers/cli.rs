//! Runs one prompt as a cold `claude -p` process and turns its stream-json
//! output into events. The process runs in its own process group; the whole
//! group is killed and the leader reaped on every way out of `run`, even
//! when the future is dropped.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::gate::{SpendGate, Ticket};
use super::stream_json::{parse_line, CliLine, CliResult};
use super::{send_all, AgentJob, Event, Job, PoolStats, RunEnd, RunReport, ToolActivity, Worker};
use crate::chat::ThinkingPiece;
use crate::money::Micros;
use crate::pricing::TokenUsage;

/// System prompts longer than this go through a file: Linux caps a single
/// argument at 128 KiB.
const MAX_SYSTEM_PROMPT_ARG: usize = 32 * 1024;
/// How much of the CLI's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;
/// After the result line, how long the CLI may take to exit by itself.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// The agents' `CLAUDE_CONFIG_DIR` under `work_dir`: their sessions live
/// there, apart from the operator's own.
pub const AGENT_CONFIG_DIR: &str = "agent-config";

pub struct ClaudeCli {
    bin: PathBuf,
    work_dir: PathBuf,
    pub(super) stall_timeout: Duration,
    max_retries: u32,
    extra_env: BTreeMap<String, String>,
    passthrough: Vec<String>,
    /// Where processes send their upstream calls, when the spend gate is on.
    pub(super) gate: Option<Arc<SpendGate>>,
    pub(super) stats: Arc<PoolStats>,
}

/// How a `ClaudeCli` worker runs its processes.
pub struct CliSettings {
    pub bin: PathBuf,
    pub work_dir: PathBuf,
    pub stall_timeout: Duration,
    pub max_retries: u32,
    pub extra_env: BTreeMap<String, String>,
    /// Names of further gateway variables workers inherit, besides
    /// [`INHERITED_VARS`] (never a [`is_gateway_secret`] one).
    pub passthrough: Vec<String>,
    /// The spend gate, when processes' calls go through it.
    pub gate: Option<Arc<SpendGate>>,
}

/// What a worker inherits from the gateway's environment: what the CLI and
/// Node need to run, reach the upstream (directly or through a proxy) and
/// trust its certificate. Everything else stays behind, the gateway's own
/// secrets (admin key, database URL) first of all.
pub const INHERITED_VARS: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "TZ",
    "TMPDIR",
    "TERM",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "NODE_OPTIONS",
];

/// Prefixes of inherited variables: locale settings, and the upstream's
/// URL, key, auth token and model settings.
pub const INHERITED_PREFIXES: &[&str] = &["LC_", "ANTHROPIC_", "CLAUDE_"];

/// Variables that never reach a worker, whatever the settings say: the
/// gateway's own settings and database credentials.
pub fn is_gateway_secret(name: &str) -> bool {
    name.starts_with("CCGATE_") || name == "DATABASE_URL" || name.starts_with("PG")
}

/// The gateway variables a worker inherits, from `vars` (the gateway's
/// environment): the allow-list plus `passthrough`, minus gateway secrets
/// and `CLAUDECODE` (a nested Claude Code session refuses to start while it
/// is set).
pub fn inherited_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    passthrough: &[String],
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(name, _)| {
            let Some(name) = name.to_str() else { return false };
            let allowed = INHERITED_VARS.contains(&name)
                || INHERITED_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
                || passthrough.iter().any(|p| p == name);
            allowed && name != "CLAUDECODE" && !is_gateway_secret(name)
        })
        .collect()
}

impl ClaudeCli {
    pub fn new(settings: CliSettings, stats: Arc<PoolStats>) -> ClaudeCli {
        ClaudeCli {
            bin: settings.bin,
            work_dir: settings.work_dir,
            stall_timeout: settings.stall_timeout,
            max_retries: settings.max_retries,
            extra_env: settings.extra_env,
            passthrough: settings.passthrough,
            gate: settings.gate,
            stats,
        }
    }

    fn command(&self, job: &Job, system_file: Option<&PathBuf>, ticket: Option<&Ticket>) -> Command {
        let mut cmd = match &job.agent {
            Some(agent) => self.agent_command(&job.model, Output::of(job), agent),
            None => self.base_command(&job.model, Output::of(job)),
        };
        if let Some(ticket) = ticket {
            through_gate(&mut cmd, ticket);
        }
        cmd.args(["--max-budget-usd", &format!("{:.6}", job.max_budget.as_usd())]);
        if let Some(schema) = &job.output_schema {
            // Claude Code offers the model a tool to answer through, checks
            // its input against the schema and prints it as the result.
            cmd.args(["--json-schema", &schema.to_string()]);
        }
        // An agent keeps the CLI's own system prompt (it explains the tools)
        // and gets the client's after it.
        let (flag, file_flag) = match job.agent {
            Some(_) => ("--append-system-prompt", "--append-system-prompt-file"),
            None => ("--system-prompt", "--system-prompt-file"),
        };
        match (&job.system_prompt, system_file) {
            (_, Some(file)) => {
                cmd.arg(file_flag).arg(file);
            }
            (Some(system), None) => {
                cmd.args([flag, system]);
            }
            (None, None) => {}
        }
        cmd
    }

    /// The CLI for an agentic job. Not `--bare` (it disables the file
    /// tools), sessions kept (for `--resume`) in a config directory of the
    /// gateway's own, only the tools and MCP servers the policy allowed, no
    /// project settings from the working directory (hooks there could run
    /// anything), and the permission bypass only when the policy says so.
    fn agent_command(&self, model: &str, output: Output, agent: &AgentJob) -> Command {
        let mut cmd = self.cli_command(model, output);
        cmd.args(["--tools", &agent.tools.join(",")]);
        if !agent.allowed_tools.is_empty() {
            cmd.arg("--allowedTools").args(&agent.allowed_tools);
        }
        if !agent.disallowed_tools.is_empty() {
            cmd.arg("--disallowedTools").args(&agent.disallowed_tools);
        }
        if agent.skip_permissions {
            cmd.args(["--permission-mode", "bypassPermissions", "--dangerously-skip-permissions"]);
        } else {
            cmd.args(["--permission-mode", "default"]);
        }
        cmd.args(["--max-turns", &agent.max_turns.to_string()]);
        if let Some(session) = &agent.resume {
            cmd.args(["--resume", session]);
        }
        if let Some(config) = &agent.mcp_config {
            // The policy's servers are connected before the first call to
            // the model: by default Claude Code waits for them a moment,
            // then goes on while they connect, and a server slow to start
            // (one fetched by npx, say) is "still connecting" when the
            // model calls its tool, which then fails.
            cmd.args(["--mcp-config", config]).env("MCP_CONNECTION_NONBLOCKING", "0");
        }
        cmd.args(["--strict-mcp-config", "--setting-sources", "user"])
            .env("CLAUDE_CONFIG_DIR", self.work_dir.join(AGENT_CONFIG_DIR))
            .current_dir(&agent.cwd);
        cmd
    }

    /// The CLI with everything every worker process shares: print mode,
    /// stream-json output, no tools, an environment built from an allow-list,
    /// its own process group, and death with the gateway.
    pub(super) fn base_command(&self, model: &str, output: Output) -> Command {
        let mut cmd = self.cli_command(model, output);
        cmd.args(["--bare", "--tools", "", "--no-session-persistence"]);
        cmd
    }

    /// What plain and agentic processes share: print mode, stream-json,
    /// the model, a clean environment, their own process group, and death
    /// with the gateway.
    fn cli_command(&self, model: &str, output: Output) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"])
            .arg("--include-partial-messages")
            .args(["--model", model]);
        // Workers start from an empty environment: the gateway's own
        // settings (admin key, database URL) are not the worker's business.
        cmd.env_clear()
            .envs(inherited_env(std::env::vars_os(), &self.passthrough))
            .env("DISABLE_TELEMETRY", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_MAX_RETRIES", self.max_retries.to_string())
            .envs(&self.extra_env);
        if let Some(max) = output.max_tokens {
            cmd.env("CLAUDE_CODE_MAX_OUTPUT_TOKENS", max.to_string());
        }
        if let Some(budget) = output.thinking_budget() {
            cmd.env("MAX_THINKING_TOKENS", budget.to_string());
        }
        cmd.current_dir(&self.work_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches only the child. It
        // makes the kernel kill the CLI if the gateway dies without a chance
        // to clean up (kill -9), so no worker outlives its gateway.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Points a process's upstream calls at its address on the spend gate
/// (over the upstream the environment named), and keeps them off any
/// HTTP proxy: the gate is on loopback.
pub(super) fn through_gate(cmd: &mut Command, ticket: &Ticket) {
    let no_proxy = cmd
        .as_std()
        .get_envs()
        .filter(|(name, _)| *name == "NO_PROXY" || *name == "no_proxy")
        .filter_map(|(_, value)| value.and_then(OsStr::to_str).filter(|v| !v.is_empty()))
        .last()
        .map(|v| format!("{v},127.0.0.1"))
        .unwrap_or_else(|| "127.0.0.1".into());
    cmd.env("ANTHROPIC_BASE_URL", ticket.base_url()).env("NO_PROXY", &no_proxy).env("no_proxy", &no_proxy);
}

/// The smallest thinking budget the Messages API accepts.
pub(super) const MIN_THINKING_BUDGET: u64 = 1024;

/// What a CLI process is told about its output: the cap, and the thinking
/// the request asked for (Anthropic's `thinking`: `disabled` is a budget of
/// 0, `enabled` its `budget_tokens`, `adaptive` leaves it to the CLI). A
/// plain run that asks for none thinks not at all, as on the direct
/// backend: Claude Code would otherwise think on every haiku request,
/// billed as output and never returned. An agent keeps Claude Code's own
/// default. Part of a warm process's profile, as it goes in its environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(super) struct Output {
    pub(super) max_tokens: Option<u64>,
    pub(super) thinking: Option<u64>,
}

impl Output {
    /// A plain request's, with no cap and no thinking asked for.
    pub(super) const PLAIN: Output = Output { max_tokens: None, thinking: Some(0) };

    pub(super) fn of(job: &Job) -> Output {
        let thinking = match &job.thinking {
            Some(t) => match t.get("type").and_then(|k| k.as_str()) {
                Some("disabled") => Some(0),
                Some("enabled") => t.get("budget_tokens").and_then(serde_json::Value::as_u64),
                _ => None,
            },
            None if job.agent.is_none() => Some(0),
            None => None,
        };
        Output { max_tokens: job.max_output_tokens, thinking }
    }

    /// `MAX_THINKING_TOKENS` for the process, when it must be set. The CLI
    /// gives thinking a budget of the output cap less one, and the API takes
    /// no budget under 1,024 tokens: under a smaller cap every request would
    /// be refused, so no thinking.
    fn thinking_budget(self) -> Option<u64> {
        if self.max_tokens.is_some_and(|max| max <= MIN_THINKING_BUDGET) {
            return Some(0);
        }
        self.thinking
    }
}

/// Why an agent with `skip_permissions` cannot run here, and what to change.
pub const BYPASS_AS_ROOT: &str = "the project's agent policy sets skip_permissions, but Claude Code refuses \
     --dangerously-skip-permissions (bypassPermissions) when run as root, and the gateway runs as root: \
     run the gateway as an unprivileged user, or, if its workers run in a container or sandbox, \
     set IS_SANDBOX=1 in worker_env";

/// Whether the CLI would refuse the permission bypass with this command:
/// as root it prints a line to stderr and exits, unless told it runs in a
/// sandbox (`IS_SANDBOX=1`, or `CLAUDE_CODE_BUBBLEWRAP`). Workers start from
/// an empty environment, so the command's variables are all they get.
fn bypass_refused(cmd: &Command) -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let env: Vec<EnvEntry<'_>> = cmd.as_std().get_envs().collect();
    refuses_bypass(uid, &env)
}

/// A variable a command sets (`Some`) or removes (`None`).
type EnvEntry<'a> = (&'a OsStr, Option<&'a OsStr>);

fn refuses_bypass(uid: u32, env: &[EnvEntry<'_>]) -> bool {
    let value = |name: &str| env.iter().rev().find(|(k, _)| *k == name).and_then(|(_, v)| *v);
    let sandbox = value("IS_SANDBOX").is_some_and(|v| v == "1");
    let bubblewrap = value("CLAUDE_CODE_BUBBLEWRAP").is_some_and(|v| !v.is_empty());
    uid == 0 && !sandbox && !bubblewrap
}

/// Kills the process group and reaps the leader when dropped, so that no
/// exit path (including a dropped future) leaves a process behind.
pub(super) struct Group {
    child: Option<Child>,
    pgid: Option<i32>,
    stats: Arc<PoolStats>,
}

impl Group {
    pub(super) fn new(child: Child, stats: Arc<PoolStats>) -> Group {
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        Group { child: Some(child), pgid, stats }
    }

    /// The process group's id (the leader's pid), while it is alive.
    pub(super) fn pid(&self) -> Option<i32> {
        self.pgid
    }

    /// Whether the leader has exited (without waiting for it).
    pub(super) fn has_exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: plain syscall. The leader is not reaped yet (we still
            // own its Child), so the group id cannot have been reused.
            if unsafe { libc::killpg(pgid, libc::SIGKILL) } == 0 {
                self.stats.killed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(super) async fn finish(&mut self) {
        self.kill();
        if let Some(mut child) = self.child.take() {
            // Bounded: SIGKILL cannot be ignored, so this returns promptly.
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
        // Dropping the Child hands it to tokio's orphan reaper.
    }
}

pub(super) struct RunState {
    pub(super) report: RunReport,
    /// Whether the upstream message now streaming sent text deltas, so its
    /// whole `assistant` line is not emitted a second time.
    deltas_in_message: bool,
    pub(super) stream_usage: TokenUsage,
    /// The result line's text, as the CLI printed it.
    result: Option<String>,
}

impl RunState {
    pub(super) fn new() -> RunState {
        RunState {
            report: RunReport::new(RunEnd::Crashed { message: String::new() }),
            deltas_in_message: false,
            stream_usage: TokenUsage::default(),
            result: None,
        }
    }
}

#[async_trait]
impl Worker for ClaudeCli {
    async fn run(&self, job: Job, events: mpsc::Sender<Event>, cancel: CancellationToken) -> RunReport {
        let system_file = match &job.system_prompt {
            Some(s) if s.len() > MAX_SYSTEM_PROMPT_ARG => {
                let path = self.work_dir.join(format!("system-{}.txt", uuid::Uuid::new_v4().simple()));
                if let Err(e) = tokio::fs::write(&path, s).await {
                    return RunReport::new(RunEnd::Crashed {
                        message: format!("cannot write system prompt: {e}"),
                    });
                }
                Some(path)
            }
            _ => None,
        };
        let report = self.run_process(&job, system_file.as_ref(), events, cancel).await;
        if let Some(path) = system_file {
            let _ = tokio::fs::remove_file(path).await;
        }
        report
    }
}

impl ClaudeCli {
    async fn run_process(
        &self,
        job: &Job,
        system_file: Option<&PathBuf>,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> RunReport {
        let ticket = self.gate.as_ref().map(|gate| gate.ticket());
        let mut command = self.command(job, system_file, ticket.as_ref());
        if job.agent.as_ref().is_some_and(|agent| agent.skip_permissions) && bypass_refused(&command) {
            self.stats.spawn_failures.fetch_add(1, Ordering::Relaxed);
            return RunReport::new(RunEnd::SpawnFailed {
                not_installed: false,
                message: BYPASS_AS_ROOT.into(),
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                self.stats.spawn_failures.fetch_add(1, Ordering::Relaxed);
                let not_installed =
                    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied);
                return RunReport::new(RunEnd::SpawnFailed {
                    not_installed,
                    message: format!("cannot start {}: {e}", self.bin.display()),
                });
            }
        };
        self.stats.spawned.fetch_add(1, Ordering::Relaxed);
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let mut group = Group::new(child, Arc::clone(&self.stats));

        let stderr_tail = tokio::spawn(async move {
            let mut tail = Vec::new();
            let Some(mut stderr) = stderr else { return String::new() };
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
            String::from_utf8_lossy(&tail).trim().to_string()
        });

        let (Some(mut stdin), Some(stdout)) = (stdin, stdout) else {
            group.finish().await;
            return RunReport::new(RunEnd::Crashed { message: "the CLI's pipes were not opened".into() });
        };
        let mut lines = BufReader::new(stdout).lines();
        let conversation = Conversation {
            stdin: &mut stdin,
            lines: &mut lines,
            stall_timeout: self.stall_timeout,
            stats: &self.stats,
            ticket: ticket.as_ref(),
        };
        let (state, end) = conversation.run(job, &events, &cancel).await;
        // End of input: the CLI exits by itself once it has answered.
        drop(stdin);
        let finished_normally = matches!(end, RunEnd::Completed | RunEnd::Failed { .. });
        if finished_normally {
            let mut report = state.report.clone();
            report.end = end.clone();
            let _ = events.send(Event::Finished(Box::new(report))).await;
            // Let the CLI exit on its own for a moment (it closes stdout when
            // it does); the group is killed right after either way.
            let _ = tokio::time::timeout(EXIT_GRACE, async {
                while let Ok(Some(_)) = lines.next_line().await {}
            })
            .await;
        }
        group.finish().await;
        let stderr =
            tokio::time::timeout(Duration::from_secs(1), stderr_tail).await.ok().and_then(Result::ok);

        let mut report = state.report;
        report.end = match end {
            RunEnd::Crashed { .. } => RunEnd::Crashed {
                message: match stderr.filter(|s| !s.is_empty()) {
                    Some(s) => format!("the CLI exited without a result: {s}"),
                    None => "the CLI exited without a result".into(),
                },
            },
            other => other,
        };
        if report.reported_cost.is_none() || report.usage == TokenUsage::default() {
            report.usage = state.stream_usage;
        }
        report
    }
}

/// One request and its answer over a CLI's stream-json stdin and stdout.
pub(super) struct Conversation<'a> {
    pub(super) stdin: &'a mut ChildStdin,
    pub(super) lines: &'a mut Lines<BufReader<ChildStdout>>,
    pub(super) stall_timeout: Duration,
    pub(super) stats: &'a PoolStats,
    /// The process's pass through the spend gate, when it has one: the
    /// conversation opens its run there, for as long as it lasts.
    pub(super) ticket: Option<&'a Ticket>,
}

impl Conversation<'_> {
    /// Sends the job's prompt as a user message and reads until its result,
    /// the deadline, a stall, the caller leaving, or the CLI dying.
    pub(super) async fn run(
        self,
        job: &Job,
        events: &mpsc::Sender<Event>,
        cancel: &CancellationToken,
    ) -> (RunState, RunEnd) {
        let mut state = RunState::new();
        let gate = self.ticket.map(|ticket| ticket.open(job.max_budget));
        let message = serde_json::json!({
            "type": "user",
            "message": {"role": "user", "content": user_content(job)},
        })
        .to_string();
        // The CLI prints nothing before it has read the whole message, so
        // writing it first cannot deadlock against a full stdout pipe.
        let written = tokio::select! {
            written = write_line(self.stdin, &message) => written.is_ok(),
            _ = tokio::time::sleep_until(job.deadline) => false,
        };
        if !written {
            return (state, RunEnd::Crashed { message: String::new() });
        }
        // Set when the reply hit its output cap: how much text and how
        // many thinking blocks it had by then.
        let mut capped_at: Option<(usize, usize)> = None;
        let structured = job.output_schema.is_some();
        let end = loop {
            let line = tokio::select! {
                biased;
                _ = cancel.cancelled() => break RunEnd::Cancelled,
                _ = events.closed() => break RunEnd::Cancelled,
                _ = tokio::time::sleep_until(job.deadline) => {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    break RunEnd::Deadline;
                }
                line = tokio::time::timeout(self.stall_timeout, self.lines.next_line()) => line,
            };
            let line = match line {
                Err(_) => {
                    self.stats.stalls.fetch_add(1, Ordering::Relaxed);
                    break RunEnd::Stalled;
                }
                Ok(Ok(Some(line))) => line,
                // End of output without a result: the CLI died or quit.
                Ok(Ok(None)) | Ok(Err(_)) => break RunEnd::Crashed { message: String::new() },
            };
            let Some(parsed) = parse_line(&line) else {
                tracing::debug!(line = %line, "ignoring a non-JSON line from the CLI");
                continue;
            };
            let step = match apply(&mut state, parsed) {
                // A structured answer is the tool input the CLI prints as
                // its result (below), not the model's words around it, nor
                // (but for an agent's) its call of the tool.
                Step::Emit(Event::Text(_)) if structured => Step::Continue,
                Step::Tools(_) if structured && job.agent.is_none() => Step::Continue,
                step => step,
            };
            let step = match step {
                Step::Tools(activity) => {
                    if !send_all(events, activity.into_iter().map(Event::Tool)).await {
                        break RunEnd::Cancelled;
                    }
                    Step::Continue
                }
                other => other,
            };
            if capped_at.is_none() && state.report.stop_reason.as_deref() == Some("max_tokens") {
                // The reply reached its output cap. The CLI would ask the
                // model to go on (up to three more calls, past what was
                // reserved, which the spend gate refuses) and then fail;
                // OpenAI clients expect the text so far with finish_reason
                // "length". An interrupt ends the turn, and the result line
                // after it still has the cost.
                capped_at = Some((state.report.text.len(), state.report.thinking.len()));
                let interrupt =
                    r#"{"type":"control_request","request_id":"cap","request":{"subtype":"interrupt"}}"#;
                if write_line(self.stdin, interrupt).await.is_err() {
                    break RunEnd::Crashed { message: String::new() };
                }
            }
            match step {
                Step::Continue | Step::Tools(_) => {}
                // A continuation the CLI began before the interrupt landed
                // is not part of the reply.
                Step::Emit(Event::Text(_)) | Step::Thinking(_) if capped_at.is_some() => {}
                Step::Thinking(pieces) => {
                    if !send_all(events, pieces.into_iter().map(Event::Thinking)).await {
                        break RunEnd::Cancelled;
                    }
                }
                Step::Emit(event) => {
                    if events.send(event).await.is_err() {
                        break RunEnd::Cancelled;
                    }
                }
                Step::Done(RunEnd::Failed { .. }) if capped_at.is_some() => {
                    state.report.stop_reason = Some("max_tokens".into());
                    break RunEnd::Completed;
                }
                Step::Done(end) => break end,
            }
        };
        if let Some((text, thinking)) = capped_at {
            state.report.text.truncate(text);
            state.report.thinking.truncate(thinking);
        }
        if structured && end == RunEnd::Completed {
            // The JSON the CLI checked against the schema.
            let json = state.result.take().unwrap_or_default();
            state.report.first_token_at.get_or_insert_with(Instant::now);
            state.report.text.clone_from(&json);
            // A client that left by now misses only this; the run is done.
            let _ = events.send(Event::Text(json)).await;
        }
        let end = match end {
            // The CLI saw the gate's refusal as an upstream error.
            RunEnd::Failed { .. } if gate.as_ref().is_some_and(|gate| gate.refused()) => RunEnd::Failed {
                api_status: None,
                subtype: "error_max_budget_usd".into(),
                message: "its next call to the model could have cost more than what was left of the \
                          request's reservation"
                    .into(),
            },
            other => other,
        };
        (state, end)
    }
}

/// The content of the one user message a run sends: the prompt, after the
/// last user turn's images as image blocks when it has any (earlier turns
/// travel as text, so chat refuses images there for this backend).
fn user_content(job: &Job) -> serde_json::Value {
    let images = job.messages.last().map(|m| m.images.as_slice()).unwrap_or_default();
    if images.is_empty() {
        return serde_json::json!(job.prompt);
    }
    let mut blocks: Vec<serde_json::Value> = images
        .iter()
        .map(|image| {
            serde_json::json!({"type": "image", "source": {
                "type": "base64", "media_type": image.media_type, "data": image.data_base64,
            }})
        })
        .collect();
    if !job.prompt.is_empty() {
        blocks.push(serde_json::json!({"type": "text", "text": job.prompt}));
    }
    serde_json::Value::Array(blocks)
}

pub(super) async fn write_line(stdin: &mut ChildStdin, line: &str) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    stdin.write_all(&bytes).await?;
    stdin.flush().await
}

pub(super) enum Step {
    Continue,
    Emit(Event),
    /// Pieces of the model's thinking, in order.
    Thinking(Vec<ThinkingPiece>),
    /// An agent's tool uses or results, in order.
    Tools(Vec<ToolActivity>),
    Done(RunEnd),
}

pub(super) fn apply(state: &mut RunState, line: CliLine) -> Step {
    let report = &mut state.report;
    match line {
        CliLine::Init { session_id, model } => {
            report.session_id = session_id.clone();
            report.model = model.clone();
            Step::Emit(Event::Started { model, session_id })
        }
        CliLine::MessageStart { model, usage } => {
            state.deltas_in_message = false;
            if let Some(model) = model {
                report.model = Some(model);
            }
            state.stream_usage.input_tokens += usage.input_tokens;
            state.stream_usage.cache_read_tokens += usage.cache_read_tokens;
            state.stream_usage.cache_write_tokens += usage.cache_write_tokens;
            Step::Continue
        }
        CliLine::TextDelta(text) => {
            state.deltas_in_message = true;
            report.first_token_at.get_or_insert_with(Instant::now);
            report.text.push_str(&text);
            Step::Emit(Event::Text(text))
        }
        CliLine::Thinking(part) => Step::Thinking(report.think(part)),
        CliLine::MessageDelta { output_tokens, stop_reason } => {
            state.stream_usage.output_tokens += output_tokens.unwrap_or(0);
            if stop_reason.is_some() {
                report.stop_reason = stop_reason;
            }
            Step::Continue
        }
        CliLine::Assistant { model, text, tool_uses, .. } => {
            let synthetic = model.as_deref() == Some("<synthetic>");
            if !tool_uses.is_empty() {
                // The CLI prints a message's blocks one line at a time, and
                // a tool use's text (if any) came as deltas already.
                return Step::Tools(
                    tool_uses
                        .into_iter()
                        .map(|t| ToolActivity::Use { id: t.id, name: t.name, input: t.input })
                        .collect(),
                );
            }
            if state.deltas_in_message || synthetic || text.is_empty() {
                return Step::Continue;
            }
            report.first_token_at.get_or_insert_with(Instant::now);
            report.text.push_str(&text);
            Step::Emit(Event::Text(text))
        }
        CliLine::ToolResults(results) => Step::Tools(
            results
                .into_iter()
                .map(|r| ToolActivity::Result { id: r.tool_use_id, is_error: r.is_error, content: r.content })
                .collect(),
        ),
        CliLine::Result(result) => {
            state.result = result.result.clone();
            Step::Done(finish(report, result))
        }
        CliLine::Other => Step::Continue,
    }
}

fn finish(report: &mut RunReport, result: CliResult) -> RunEnd {
    report.finished_at = Some(Instant::now());
    report.reported_cost = Some(Micros::from_usd(result.total_cost_usd));
    report.usage = result.usage;
    report.num_turns = result.num_turns;
    if result.session_id.is_some() {
        report.session_id = result.session_id;
    }
    if report.stop_reason.is_none() {
        report.stop_reason = result.stop_reason;
    }
    if report.model.is_none() {
        report.model = result.models.into_iter().next();
    }
    if !result.is_error {
        // Without partial messages the result text is the only copy.
        if report.text.is_empty() {
            report.text = result.result.unwrap_or_default();
        }
        return RunEnd::Completed;
    }
    RunEnd::Failed {
        api_status: result.api_error_status,
        message: result.result.unwrap_or_else(|| format!("the CLI reported {}", result.subtype)),
        subtype: result.subtype,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permission_bypass_is_refused_as_root_outside_a_sandbox() {
        let os = |s: &'static str| OsStr::new(s);
        // (uid, environment, refused)
        let cases: Vec<(u32, Vec<EnvEntry<'_>>, bool)> = vec![
            (0, vec![], true),
            (0, vec![(os("IS_SANDBOX"), Some(os("1")))], false),
            (0, vec![(os("IS_SANDBOX"), Some(os("true")))], true),
            (0, vec![(os("IS_SANDBOX"), Some(os("1"))), (os("IS_SANDBOX"), None)], true),
            (0, vec![(os("CLAUDE_CODE_BUBBLEWRAP"), Some(os("1")))], false),
            (1000, vec![], false),
        ];
        for (uid, env, refused) in cases {
            assert_eq!(refuses_bypass(uid, &env), refused, "{uid} {env:?}");
        }
    }

    fn agent(skip_permissions: bool) -> AgentJob {
        AgentJob {
            cwd: std::env::temp_dir(),
            tools: vec!["Read".into()],
            allowed_tools: vec![],
            disallowed_tools: vec![],
            max_turns: 2,
            resume: None,
            skip_permissions,
            mcp_config: None,
        }
    }

    #[test]
    fn only_a_policy_s_skip_permissions_bypasses_permissions() {
        let cli = ClaudeCli::new(
            CliSettings {
                bin: "claude".into(),
                work_dir: std::env::temp_dir(),
                stall_timeout: Duration::from_secs(1),
                max_retries: 0,
                extra_env: BTreeMap::new(),
                passthrough: vec![],
                gate: None,
            },
            Arc::default(),
        );
        let args = |cmd: Command| -> Vec<String> {
            cmd.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect()
        };
        let bypass = |args: &[String]| {
            args.iter().any(|a| a == "--dangerously-skip-permissions" || a == "bypassPermissions")
        };
        let plain = args(cli.base_command("haiku", Output::default()));
        assert!(!bypass(&plain), "{plain:?}");
        let careful = args(cli.agent_command("haiku", Output::default(), &agent(false)));
        assert!(!bypass(&careful), "{careful:?}");
        assert!(careful.windows(2).any(|w| w == ["--permission-mode", "default"]), "{careful:?}");
        let skipping = args(cli.agent_command("haiku", Output::default(), &agent(true)));
        assert!(skipping.windows(2).any(|w| w == ["--permission-mode", "bypassPermissions"]), "{skipping:?}");
        assert!(skipping.iter().any(|a| a == "--dangerously-skip-permissions"), "{skipping:?}");
    }

    #[test]
    fn workers_inherit_only_the_allow_list() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("LC_ALL", "C.UTF-8"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
            ("CLAUDE_CONFIG_DIR", "/cfg"),
            ("https_proxy", "http://proxy:3128"),
            ("AWS_REGION", "eu-west-1"),
            ("CCGATE_ADMIN_KEY", "admin-secret"),
            ("CCGATE_DATABASE_URL", "postgres://x"),
            ("DATABASE_URL", "postgres://y"),
            ("PGPASSWORD", "pw"),
            ("SOME_OTHER_SECRET", "s"),
            ("CLAUDECODE", "1"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        // Passthrough adds names, but never the gateway's own.
        let passthrough = ["AWS_REGION".to_string(), "PGPASSWORD".to_string()];
        let kept: Vec<String> = inherited_env(vars, &passthrough)
            .into_iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            kept,
            [
                "PATH",
                "HOME",
                "LC_ALL",
                "ANTHROPIC_BASE_URL",
                "CLAUDE_CONFIG_DIR",
                "https_proxy",
                "AWS_REGION"
            ]
        );
    }
}
