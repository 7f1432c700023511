//! Claude Code as an agent behind the chat API: a project's agent policy
//! (`policy`), the check of a request's agent options against it, the
//! reservation a multi-turn run needs, and which project owns which CLI
//! session (`sessions`).

pub mod policy;
pub mod sessions;

use std::path::Path;

pub use policy::{AgentPlan, AgentPolicy, McpServer, PolicyError};

use crate::app::AppState;
use crate::chat::AgentOptions;
use crate::error::ApiError;
use crate::money::Micros;
use crate::pricing::{Model, TokenUsage};

/// Input tokens the CLI adds to every turn without `--bare`: its own
/// system prompt (measured at 6.7k tokens with no tools).
pub const CLI_PROMPT_TOKENS: u64 = 7_000;
/// Input tokens each enabled tool's definition adds to every turn (82k
/// characters for the 24 built-in tools, about 900 tokens each).
pub const TOKENS_PER_TOOL: u64 = 1_000;

/// The project's policy: the one stored through the admin API, else the
/// one in the settings (`agent_policies`), else none.
pub async fn policy_of(state: &AppState, project_id: &str) -> Result<Option<AgentPolicy>, ApiError> {
    if let Some(json) = state.budget.store().agent_policy(project_id).await? {
        let policy: AgentPolicy = serde_json::from_str(&json)
            .map_err(|e| ApiError::internal(format!("stored agent policy of {project_id}: {e}")))?;
        return Ok(Some(policy));
    }
    Ok(state.settings.agent_policies.get(project_id).cloned())
}

/// Checks an agentic request against its project's policy (and, when it
/// resumes a session, that the session is the project's own).
pub async fn plan(state: &AppState, project_id: &str, options: &AgentOptions) -> Result<AgentPlan, ApiError> {
    let policy = policy_of(state, project_id).await?;
    if policy.is_none() {
        return policy::check(None, options, None);
    }
    let session_dir = match &options.session_id {
        Some(id) => Some(sessions::owned(state, project_id, id).await?),
        None => None,
    };
    let plan = policy::check(policy.as_ref(), options, session_dir.as_deref())?;
    if let (Some(session_dir), Some(id)) = (&session_dir, &options.session_id) {
        // The CLI keeps sessions per directory: elsewhere it would not find it.
        if &plan.working_directory != session_dir {
            return Err(ApiError::bad_request(
                format!(
                    "session {id} was started in {}; resume it there (or leave working_directory out)",
                    session_dir.display()
                ),
                "working_directory",
            ));
        }
    }
    Ok(plan)
}

/// The reservation for a multi-turn run: every turn may read the whole
/// prompt plus the CLI's own prompt and tool definitions and write a full
/// output, for as many turns as allowed, capped by the plan's budget (which
/// the CLI also gets as `--max-budget-usd`).
pub fn reservation(model: &Model, prompt_tokens: u64, output_tokens: u64, plan: &AgentPlan) -> Micros {
    let overhead = CLI_PROMPT_TOKENS + TOKENS_PER_TOOL * plan.tools.len() as u64;
    let turn = model.cost(&TokenUsage {
        input_tokens: prompt_tokens.saturating_add(overhead),
        output_tokens,
        ..TokenUsage::default()
    });
    Micros(turn.0.saturating_mul(i64::from(plan.max_turns))).min(plan.max_budget)
}

/// The directory a plan runs in, as stored with its session.
pub fn directory_text(path: &Path) -> String {
    path.display().to_string()
}

/// Agents run on Claude Code: a model served by the direct backend cannot.
pub fn check_backend(state: &AppState, model: &Model) -> Result<(), ApiError> {
    if state.settings.backend_for(&model.id, &model.aliases) == crate::config::Backend::Api {
        return Err(ApiError::BadRequest {
            message: format!(
                "{} is served by the direct api backend, which cannot run tools; agentic requests \
                 (working_directory, allowed_tools, max_turns, session_id) need a model served by the cli backend",
                model.id
            ),
            param: Some("model".into()),
            code: None,
        });
    }
    Ok(())
}

/// The CLI's file tools. A rule naming one of them in `--allowedTools`
/// would approve it everywhere, so they are only enabled, never
/// pre-approved as such: edits are approved by one path rule for the
/// working directory (`edit_rule`), and reads outside it need a permission
/// no one can give in print mode.
pub const FILE_TOOLS: &[&str] =
    &["Read", "Write", "Edit", "MultiEdit", "NotebookEdit", "NotebookRead", "Glob", "Grep", "LS"];

/// The tools that change files, all governed by the CLI's `Edit(...)` rules.
const EDIT_TOOLS: &[&str] = &["Write", "Edit", "MultiEdit", "NotebookEdit"];

/// The rules to pre-approve (`--allowedTools`): the allowed ones but file
/// tools, and, when an editing tool is enabled, edits inside the working
/// directory only. (The CLI runs in its `default` permission mode: its
/// `acceptEdits` mode would also approve file-changing shell commands such
/// as `touch` whatever the `Bash(...)` rules say.)
pub fn pre_approved(allowed: &[String], tools: &[String], cwd: &std::path::Path) -> Vec<String> {
    let mut rules: Vec<String> = allowed
        .iter()
        .filter(|rule| {
            let name = rule.split('(').next().unwrap_or_default();
            !FILE_TOOLS.contains(&name)
        })
        .cloned()
        .collect();
    if tools.iter().any(|tool| EDIT_TOOLS.contains(&tool.as_str())) {
        rules.push(edit_rule(cwd));
    }
    rules
}

/// The CLI's rule for edits anywhere under `dir` (an absolute path is
/// written with a leading `//` in its rules).
fn edit_rule(dir: &std::path::Path) -> String {
    format!("Edit(/{}/**)", dir.display().to_string().trim_end_matches('/'))
}

/// The worker's part of a plan.
pub fn job(plan: &AgentPlan) -> crate::workers::AgentJob {
    crate::workers::AgentJob {
        cwd: plan.working_directory.clone(),
        tools: plan.tools.clone(),
        allowed_tools: pre_approved(&plan.allowed_tools, &plan.tools, &plan.working_directory),
        disallowed_tools: plan.denied_tools.clone(),
        max_turns: plan.max_turns,
        resume: plan.resume.clone(),
        skip_permissions: plan.skip_permissions,
        mcp_config: mcp_config(&servers_in_use(&plan.mcp_servers, &plan.tools)),
    }
}

/// The policy's MCP servers that some enabled tool names (`mcp__<server>`
/// or `mcp__<server>__<tool>`). The CLI offers every tool of every server
/// it is given, whatever `--tools` says, and `--dangerously-skip-permissions`
/// would run them all: so a server no enabled tool names is not started.
fn servers_in_use(servers: &[McpServer], tools: &[String]) -> Vec<McpServer> {
    let names_server = |tool: &str, server: &str| {
        tool.strip_prefix("mcp__")
            .and_then(|rest| rest.strip_prefix(server))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("__"))
    };
    servers.iter().filter(|s| tools.iter().any(|t| names_server(t, &s.name))).cloned().collect()
}

/// `--mcp-config` JSON for the allowed servers, or none.
fn mcp_config(servers: &[McpServer]) -> Option<String> {
    if servers.is_empty() {
        return None;
    }
    let entries: serde_json::Map<String, serde_json::Value> = servers
        .iter()
        .map(|s| {
            let config = match (&s.command, &s.url) {
                (Some(command), _) => serde_json::json!({"command": command, "args": s.args, "env": s.env}),
                (None, url) => serde_json::json!({"type": "http", "url": url}),
            };
            (s.name.clone(), config)
        })
        .collect();
    Some(serde_json::json!({ "mcpServers": entries }).to_string())
}

/// A resumed session already holds the earlier turns: the CLI gets only
/// the newest user message.
pub fn prompt_for(
    mut job: crate::workers::Job,
    plan: &AgentPlan,
    messages: &[crate::chat::Message],
) -> crate::workers::Job {
    if plan.resume.is_some() {
        if let Some(last) = messages.iter().rev().find(|m| m.role == crate::chat::Role::User) {
            job.prompt = last.text.clone();
        }
    }
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_tools_are_enabled_but_never_pre_approved() {
        let cwd = std::path::Path::new("/srv/acme/repo");
        let cases: &[(&[&str], &[&str])] = &[
            (&["Read", "Write", "Edit"], &["Edit(//srv/acme/repo/**)"]),
            (&["Read(src/**)", "Write(//etc/**)"], &["Edit(//srv/acme/repo/**)"]),
            (&["Bash(git *)", "Read", "WebFetch"], &["Bash(git *)", "WebFetch"]),
            (&["mcp__docs__search", "Grep"], &["mcp__docs__search"]),
            (&[], &[]),
        ];
        for (allowed, expected) in cases {
            let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
            // The enabled tools are the rules' names.
            let tools: Vec<String> =
                allowed.iter().map(|r| r.split('(').next().unwrap().to_string()).collect();
            assert_eq!(pre_approved(&allowed, &tools, cwd), *expected, "{allowed:?}");
        }
    }

    #[test]
    fn only_servers_an_enabled_tool_names_are_started() {
        let server = |name: &str| McpServer {
            name: name.into(),
            command: Some("mcp".into()),
            args: vec![],
            env: Default::default(),
            url: None,
        };
        let servers = vec![server("docs"), server("docs_v2"), server("web")];
        // (enabled tools, servers started)
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&["Read", "Bash"], &[]),
            (&["mcp__docs__search"], &["docs"]),
            (&["mcp__docs"], &["docs"]),
            (&["mcp__docs_v2__search"], &["docs_v2"]),
            (&["mcp__docsearch"], &[]),
            (&["mcp__web__fetch", "Read", "mcp__docs__a"], &["docs", "web"]),
            (&["mcp__other__x"], &[]),
        ];
        for (tools, expected) in cases {
            let tools: Vec<String> = tools.iter().map(|s| s.to_string()).collect();
            let started: Vec<String> = servers_in_use(&servers, &tools).into_iter().map(|s| s.name).collect();
            assert_eq!(started, *expected, "{tools:?}");
        }
    }

    #[test]
    fn mcp_servers_become_a_strict_config_of_their_own() {
        assert_eq!(mcp_config(&[]), None);
        let servers = vec![
            McpServer {
                name: "docs".into(),
                command: Some("docs-mcp".into()),
                args: vec!["--ro".into()],
                env: Default::default(),
                url: None,
            },
            McpServer {
                name: "web".into(),
                command: None,
                args: vec![],
                env: Default::default(),
                url: Some("http://127.0.0.1:9/mcp".into()),
            },
        ];
        let config: serde_json::Value = serde_json::from_str(&mcp_config(&servers).unwrap()).unwrap();
        assert_eq!(
            config,
            serde_json::json!({"mcpServers": {
                "docs": {"command": "docs-mcp", "args": ["--ro"], "env": {}},
                "web": {"type": "http", "url": "http://127.0.0.1:9/mcp"}
            }})
        );
    }
}
