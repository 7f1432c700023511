//! A project's agent policy and the check of one agentic request against
//! it. Everything here is pure except the path checks, which ask the file
//! system (`canonicalize`) so that `..` and symlinks cannot lead out of a
//! root.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::chat::AgentOptions;
use crate::error::ApiError;
use crate::money::Micros;

/// What Claude Code may do for one project when a request asks it to act
/// as an agent. No policy means no tools at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AgentPolicy {
    /// Absolute directories an agent may work in (and below).
    pub allowed_roots: Vec<String>,
    /// Tools in the CLI's syntax (`Read`, `Edit`, `Bash(git *)`). A bare
    /// name allows the tool with any specifier; `Bash(git *)` allows
    /// exactly that pattern.
    pub allowed_tools: Vec<String>,
    /// Tools that never run, whatever a request asks for.
    pub denied_tools: Vec<String>,
    /// The most model turns one request may take.
    pub max_turns: u32,
    /// The most one agentic request may cost, in USD (more than 0, at most 1e6).
    #[schema(exclusive_minimum = 0, maximum = 1000000)]
    pub max_task_usd: f64,
    /// MCP servers the agent may use (none when empty).
    pub mcp_servers: Vec<McpServer>,
    /// Pass `--dangerously-skip-permissions`. Off unless set explicitly.
    pub skip_permissions: bool,
}

impl Default for AgentPolicy {
    fn default() -> AgentPolicy {
        AgentPolicy {
            allowed_roots: Vec::new(),
            allowed_tools: Vec::new(),
            denied_tools: Vec::new(),
            max_turns: 10,
            max_task_usd: 1.0,
            mcp_servers: Vec::new(),
            skip_permissions: false,
        }
    }
}

/// One MCP server, as the CLI's `--mcp-config` describes it: a command to
/// start (stdio) or a URL (HTTP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    pub name: String,
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    pub url: Option<String>,
}

/// A policy field that is not valid, named as a client would write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError { field: field.into(), message: message.into() }
}

/// The most turns a policy may allow.
const MAX_TURNS_LIMIT: u32 = 1000;

impl AgentPolicy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (i, root) in self.allowed_roots.iter().enumerate() {
            if !Path::new(root).is_absolute() {
                return Err(invalid(
                    format!("allowed_roots[{i}]"),
                    format!("{root:?} must be an absolute path"),
                ));
            }
        }
        for (field, tools) in [("allowed_tools", &self.allowed_tools), ("denied_tools", &self.denied_tools)] {
            for (i, tool) in tools.iter().enumerate() {
                ToolRule::parse(tool).map_err(|message| invalid(format!("{field}[{i}]"), message))?;
            }
        }
        if self.max_turns == 0 || self.max_turns > MAX_TURNS_LIMIT {
            return Err(invalid("max_turns", format!("must be between 1 and {MAX_TURNS_LIMIT}")));
        }
        if !(self.max_task_usd.is_finite() && self.max_task_usd > 0.0 && self.max_task_usd <= 1e6) {
            return Err(invalid("max_task_usd", "must be more than 0 and at most 1e6 USD"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, server) in self.mcp_servers.iter().enumerate() {
            let field = format!("mcp_servers[{i}]");
            let name_ok = !server.name.is_empty()
                && server.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(invalid(format!("{field}.name"), "must be letters, digits, '_' or '-'"));
            }
            if !names.insert(server.name.as_str()) {
                return Err(invalid(format!("{field}.name"), format!("{:?} is named twice", server.name)));
            }
            if server.command.is_some() == server.url.is_some() {
                return Err(invalid(field, "needs exactly one of command or url"));
            }
        }
        Ok(())
    }
}

/// A tool in the CLI's syntax: a name, and maybe a specifier in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ToolRule<'a> {
    name: &'a str,
    specifier: Option<&'a str>,
}

impl<'a> ToolRule<'a> {
    fn parse(text: &'a str) -> Result<ToolRule<'a>, String> {
        let (name, specifier) = match text.split_once('(') {
            Some((name, rest)) => match rest.strip_suffix(')') {
                Some(spec) if !spec.is_empty() => (name, Some(spec)),
                _ => return Err(format!("{text:?} must look like Name or Name(specifier)")),
            },
            None => (text, None),
        };
        // '-' for MCP servers and tools named with one (`mcp__my-docs__search`),
        // but never first: the rule goes to the CLI as an argument of its own.
        let name_ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(format!("{text:?} must look like Name or Name(specifier)"));
        }
        Ok(ToolRule { name, specifier })
    }

    /// Whether this rule (from a policy) covers `wanted`: a bare name covers
    /// the tool with any specifier, a pattern only itself, and `mcp__<server>`
    /// every tool of that server (as the CLI reads it).
    fn covers(&self, wanted: &ToolRule<'_>) -> bool {
        let whole_server = self.specifier.is_none()
            && self.name.strip_prefix("mcp__").is_some_and(|server| !server.contains("__"))
            && wanted.name.strip_prefix(self.name).is_some_and(|tool| tool.starts_with("__"));
        whole_server
            || (self.name == wanted.name && (self.specifier.is_none() || self.specifier == wanted.specifier))
    }
}

/// What an agentic request will run with, once the policy allowed it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentPlan {
    /// The canonical working directory (inside an allowed root).
    pub working_directory: PathBuf,
    /// Built-in tool names to make available (`--tools`).
    pub tools: Vec<String>,
    /// Tool rules that run without asking (`--allowedTools`).
    pub allowed_tools: Vec<String>,
    /// Tool rules that never run (`--disallowedTools`).
    pub denied_tools: Vec<String>,
    pub max_turns: u32,
    /// The most the whole run may cost (the reservation's cap and the
    /// CLI's `--max-budget-usd`).
    pub max_budget: Micros,
    pub resume: Option<String>,
    pub skip_permissions: bool,
    pub mcp_servers: Vec<McpServer>,
}

/// Checks a request's agent options against its project's policy. The
/// working directory of a resumed session is `session_dir` when the request
/// names none. Refusals are 403s naming the rule; malformed values are 400s.
pub fn check(
    policy: Option<&AgentPolicy>,
    options: &AgentOptions,
    session_dir: Option<&Path>,
) -> Result<AgentPlan, ApiError> {
    let Some(policy) = policy else {
        return Err(ApiError::Forbidden(
            "this project has no agent policy, so agentic fields (working_directory, allowed_tools, \
             max_turns, session_id) are refused; an admin can set one with PUT /admin/projects/{id}/agent-policy"
                .into(),
        ));
    };
    let working_directory = working_directory(policy, options, session_dir)?;
    let (tools, allowed_tools) = tools(policy, options.allowed_tools.as_deref())?;
    let max_turns = match options.max_turns {
        None => policy.max_turns,
        Some(0) => return Err(ApiError::bad_request("max_turns must be at least 1", "max_turns")),
        Some(n) if n > policy.max_turns => {
            return Err(ApiError::Forbidden(format!(
                "max_turns {n} is above the project's agent policy max_turns of {}",
                policy.max_turns
            )))
        }
        Some(n) => n,
    };
    let max_usd = match options.max_budget_usd {
        None => policy.max_task_usd,
        Some(usd) if !(usd.is_finite() && usd > 0.0) => {
            return Err(ApiError::bad_request("max_budget_usd must be more than 0", "max_budget_usd"))
        }
        Some(usd) if usd > policy.max_task_usd => {
            return Err(ApiError::Forbidden(format!(
                "max_budget_usd {usd} is above the project's agent policy max_task_usd of {}",
                policy.max_task_usd
            )))
        }
        Some(usd) => usd,
    };
    Ok(AgentPlan {
        working_directory,
        tools,
        allowed_tools,
        denied_tools: policy.denied_tools.clone(),
        max_turns,
        max_budget: Micros::from_usd(max_usd),
        resume: options.session_id.clone(),
        skip_permissions: policy.skip_permissions,
        mcp_servers: policy.mcp_servers.clone(),
    })
}

/// The canonical working directory, which must lie inside an allowed root
/// once `..` and symlinks are resolved (roots are resolved too).
fn working_directory(
    policy: &AgentPolicy,
    options: &AgentOptions,
    session_dir: Option<&Path>,
) -> Result<PathBuf, ApiError> {
    let roots: Vec<PathBuf> =
        policy.allowed_roots.iter().filter_map(|root| std::fs::canonicalize(root).ok()).collect();
    let requested = match (&options.working_directory, session_dir) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(dir)) => dir.to_path_buf(),
        (None, None) => match roots.first() {
            Some(root) => root.clone(),
            None => {
                return Err(ApiError::Forbidden(format!(
                    "the project's agent policy has no usable allowed_roots {:?}, so an agent has nowhere to work",
                    policy.allowed_roots
                )))
            }
        },
    };
    if !requested.is_absolute() {
        return Err(ApiError::bad_request(
            format!("working_directory {} must be an absolute path", requested.display()),
            "working_directory",
        ));
    }
    let canonical = match std::fs::canonicalize(&requested) {
        Ok(path) if path.is_dir() => path,
        Ok(_) => {
            return Err(ApiError::bad_request(
                format!("working_directory {} is not a directory", requested.display()),
                "working_directory",
            ))
        }
        Err(_) => {
            return Err(ApiError::bad_request(
                format!("working_directory {} does not exist", requested.display()),
                "working_directory",
            ))
        }
    };
    // `Path::starts_with` compares whole components, so /srv/ab is not
    // inside /srv/a.
    if !roots.iter().any(|root| canonical.starts_with(root)) {
        return Err(ApiError::Forbidden(format!(
            "working_directory {} is outside allowed_roots {:?}",
            requested.display(),
            policy.allowed_roots
        )));
    }
    Ok(canonical)
}

/// The tool names to enable and the rules to allow: those the request asks
/// for (each covered by the policy and not denied), else all the policy's.
fn tools(policy: &AgentPolicy, requested: Option<&[String]>) -> Result<(Vec<String>, Vec<String>), ApiError> {
    // Policies are validated when they are stored or loaded.
    fn parse_all(rules: &[String]) -> Vec<ToolRule<'_>> {
        rules.iter().filter_map(|r| ToolRule::parse(r).ok()).collect()
    }
    let allowed = parse_all(&policy.allowed_tools);
    let denied = parse_all(&policy.denied_tools);
    let wanted: Vec<&String> = match requested {
        Some(list) => list.iter().collect(),
        None => policy.allowed_tools.iter().collect(),
    };
    let mut names: Vec<String> = Vec::new();
    let mut rules = Vec::new();
    for text in wanted {
        let rule = ToolRule::parse(text).map_err(|message| ApiError::BadRequest {
            message: format!("allowed_tools: {message}"),
            param: Some("allowed_tools".into()),
            code: None,
        })?;
        let is_denied = denied.iter().any(|d| d.covers(&rule));
        if is_denied && requested.is_none() {
            continue;
        }
        if is_denied {
            // Named as the request wrote it.
            return Err(ApiError::Forbidden(format!("tool {text} is denied by the project's agent policy")));
        }
        if !allowed.iter().any(|a| a.covers(&rule)) {
            if requested.is_none() {
                continue;
            }
            return Err(ApiError::Forbidden(format!(
                "tool {text} is not in the project's agent policy allowed_tools {:?}",
                policy.allowed_tools
            )));
        }
        if !names.iter().any(|n| n == rule.name) {
            names.push(rule.name.to_string());
        }
        rules.push(text.clone());
    }
    Ok((names, rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(roots: &[&str], allowed: &[&str], denied: &[&str]) -> AgentPolicy {
        AgentPolicy {
            allowed_roots: roots.iter().map(|s| s.to_string()).collect(),
            allowed_tools: allowed.iter().map(|s| s.to_string()).collect(),
            denied_tools: denied.iter().map(|s| s.to_string()).collect(),
            ..AgentPolicy::default()
        }
    }

    fn at(dir: &Path) -> AgentOptions {
        AgentOptions { working_directory: Some(dir.display().to_string()), ..AgentOptions::default() }
    }

    #[test]
    fn no_policy_refuses_everything() {
        let err = check(None, &AgentOptions::default(), None).unwrap_err();
        assert_eq!(err.status(), 403);
        assert!(err.to_string().contains("no agent policy"), "{err}");
    }

    #[test]
    fn working_directories_are_checked_after_resolving_dot_dot_and_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        for dir in ["a/inner", "ab", "outside"] {
            std::fs::create_dir_all(base.join(dir)).unwrap();
        }
        std::fs::write(base.join("a/file.txt"), "x").unwrap();
        std::os::unix::fs::symlink(base.join("outside"), base.join("a/link-out")).unwrap();
        std::os::unix::fs::symlink(base.join("a/inner"), base.join("outside/link-in")).unwrap();
        let root = base.join("a").display().to_string();
        let with_slash = format!("{root}/");
        // (root as configured, requested directory, expected status or 200)
        let cases: Vec<(&str, PathBuf, u16)> = vec![
            (&root, base.join("a"), 200),
            (&root, base.join("a/inner"), 200),
            (&with_slash, base.join("a/inner"), 200),
            (&root, base.join("a/inner/../inner"), 200),
            (&root, base.join("a/../outside"), 403),
            (&root, base.join("a/inner/../../outside"), 403),
            (&root, base.join("ab"), 403),
            (&root, base.join("a/link-out"), 403),
            (&root, base.join("outside/link-in"), 200),
            (&root, base.join("a/missing"), 400),
            (&root, base.join("a/file.txt"), 400),
            (&root, PathBuf::from("relative/dir"), 400),
        ];
        for (root, dir, expected) in cases {
            let policy = policy(&[root], &[], &[]);
            let got = check(Some(&policy), &at(&dir), None);
            match got {
                Ok(plan) => {
                    assert_eq!(expected, 200, "{} was allowed under {root}", dir.display());
                    assert_eq!(plan.working_directory, std::fs::canonicalize(&dir).unwrap());
                }
                Err(err) => {
                    assert_eq!(err.status().as_u16(), expected, "{} under {root}: {err}", dir.display());
                    if expected == 403 {
                        assert!(err.to_string().contains("outside allowed_roots"), "{err}");
                    }
                }
            }
        }
    }

    #[test]
    fn without_a_directory_the_session_s_or_the_first_root_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(base.join("s")).unwrap();
        let policy = policy(&[base.to_str().unwrap()], &[], &[]);
        let plan = check(Some(&policy), &AgentOptions::default(), None).unwrap();
        assert_eq!(plan.working_directory, base);
        let plan = check(Some(&policy), &AgentOptions::default(), Some(&base.join("s"))).unwrap();
        assert_eq!(plan.working_directory, base.join("s"));
        let err = check(Some(&policy), &AgentOptions::default(), Some(Path::new("/"))).unwrap_err();
        assert_eq!(err.status(), 403);
    }

    #[test]
    fn tools_must_be_allowed_and_not_denied() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_str().unwrap();
        let policy = policy(&[root], &["Read", "Write", "Bash(git *)", "Edit"], &["Bash", "Edit"]);
        // (requested, Ok((tools, rules)) or Err(status, words in the message))
        type Expected = Result<(Vec<&'static str>, Vec<&'static str>), (u16, &'static str)>;
        let cases: Vec<(Option<Vec<&str>>, Expected)> = vec![
            (None, Ok((vec!["Read", "Write"], vec!["Read", "Write"]))),
            (Some(vec!["Read"]), Ok((vec!["Read"], vec!["Read"]))),
            (Some(vec![]), Ok((vec![], vec![]))),
            (Some(vec!["Read(src/**)"]), Ok((vec!["Read"], vec!["Read(src/**)"]))),
            (Some(vec!["Bash"]), Err((403, "tool Bash is denied"))),
            (Some(vec!["Bash(git *)"]), Err((403, "tool Bash(git *) is denied"))),
            (Some(vec!["Edit"]), Err((403, "tool Edit is denied"))),
            (Some(vec!["WebFetch"]), Err((403, "tool WebFetch is not in"))),
            (Some(vec!["Read", "Glob"]), Err((403, "tool Glob is not in"))),
            (Some(vec!["Read("]), Err((400, "Name or Name(specifier)"))),
        ];
        for (requested, expected) in cases {
            let options = AgentOptions {
                allowed_tools: requested.clone().map(|v| v.into_iter().map(String::from).collect()),
                ..AgentOptions::default()
            };
            let got = check(Some(&policy), &options, None);
            match (got, expected) {
                (Ok(plan), Ok((tools, rules))) => {
                    assert_eq!(plan.tools, tools, "{requested:?}");
                    assert_eq!(plan.allowed_tools, rules, "{requested:?}");
                    assert_eq!(plan.denied_tools, vec!["Bash", "Edit"]);
                }
                (Err(err), Err((status, words))) => {
                    assert_eq!(err.status().as_u16(), status, "{requested:?}: {err}");
                    assert!(err.to_string().contains(words), "{requested:?}: {err}");
                }
                (got, expected) => panic!("{requested:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_pattern_in_the_policy_allows_exactly_that_pattern() {
        let tmp = tempfile::tempdir().unwrap();
        let policy = policy(&[tmp.path().to_str().unwrap()], &["Bash(git *)"], &[]);
        let ask = |tools: &[&str]| AgentOptions {
            allowed_tools: Some(tools.iter().map(|s| s.to_string()).collect()),
            ..AgentOptions::default()
        };
        let plan = check(Some(&policy), &ask(&["Bash(git *)"]), None).unwrap();
        assert_eq!((plan.tools, plan.allowed_tools), (vec!["Bash".into()], vec!["Bash(git *)".into()]));
        for other in ["Bash", "Bash(rm *)", "Bash(git*)"] {
            let err = check(Some(&policy), &ask(&[other]), None).unwrap_err();
            assert_eq!(err.status(), 403, "{other}");
        }
    }

    #[test]
    fn a_server_rule_covers_each_of_its_tools() {
        let tmp = tempfile::tempdir().unwrap();
        let policy = policy(
            &[tmp.path().to_str().unwrap()],
            &["mcp__docs", "mcp__web__fetch", "mcp__my-notes"],
            &["mcp__bad"],
        );
        // (requested tool, allowed)
        let cases = [
            ("mcp__my-notes__find-note", true),
            ("mcp__my-notes-old__find", false),
            ("mcp__docs__search", true),
            ("mcp__docs", true),
            ("mcp__docs_v2__search", false),
            ("mcp__docsearch", false),
            ("mcp__web__fetch", true),
            ("mcp__web__post", false),
            ("mcp__web", false),
        ];
        for (tool, allowed) in cases {
            let options =
                AgentOptions { allowed_tools: Some(vec![tool.to_string()]), ..AgentOptions::default() };
            assert_eq!(check(Some(&policy), &options, None).is_ok(), allowed, "{tool}");
        }
        let mut with_bad = policy.clone();
        with_bad.allowed_tools.push("mcp__bad__x".into());
        let options =
            AgentOptions { allowed_tools: Some(vec!["mcp__bad__x".into()]), ..AgentOptions::default() };
        let err = check(Some(&with_bad), &options, None).unwrap_err();
        assert!(err.to_string().contains("is denied"), "{err}");
        // A rule that could pass for one of the CLI's options is refused.
        for rule in ["-p", "--dangerously-skip-permissions", "-x(y)"] {
            assert!(ToolRule::parse(rule).is_err(), "{rule}");
        }
    }

    #[test]
    fn turns_and_budget_stay_within_the_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = policy(&[tmp.path().to_str().unwrap()], &[], &[]);
        p.max_turns = 5;
        p.max_task_usd = 0.5;
        let plan = check(Some(&p), &AgentOptions::default(), None).unwrap();
        assert_eq!((plan.max_turns, plan.max_budget), (5, Micros::from_usd(0.5)));
        // (max_turns, max_budget_usd, Ok((turns, usd)) or Err(status))
        type Case = (Option<u32>, Option<f64>, Result<(u32, f64), u16>);
        let cases: Vec<Case> = vec![
            (Some(3), Some(0.25), Ok((3, 0.25))),
            (Some(5), Some(0.5), Ok((5, 0.5))),
            (Some(6), None, Err(403)),
            (Some(0), None, Err(400)),
            (None, Some(0.75), Err(403)),
            (None, Some(-1.0), Err(400)),
        ];
        for (turns, usd, expected) in cases {
            let options = AgentOptions { max_turns: turns, max_budget_usd: usd, ..AgentOptions::default() };
            match (check(Some(&p), &options, None), expected) {
                (Ok(plan), Ok((t, u))) => {
                    assert_eq!((plan.max_turns, plan.max_budget), (t, Micros::from_usd(u)))
                }
                (Err(err), Err(status)) => {
                    assert_eq!(err.status().as_u16(), status, "{turns:?} {usd:?}: {err}")
                }
                (got, expected) => panic!("{turns:?} {usd:?}: got {got:?}, expected {expected:?}"),
            }
        }
        assert!(!plan.skip_permissions);
    }

    #[test]
    fn validation_names_the_bad_field() {
        let cases: Vec<(AgentPolicy, &str)> = vec![
            (policy(&["relative"], &[], &[]), "allowed_roots[0]"),
            (policy(&["/srv", "srv/b"], &[], &[]), "allowed_roots[1]"),
            (policy(&[], &["Read", "Bash("], &[]), "allowed_tools[1]"),
            (policy(&[], &[], &["rm -rf"]), "denied_tools[0]"),
            (AgentPolicy { max_turns: 0, ..AgentPolicy::default() }, "max_turns"),
            (AgentPolicy { max_task_usd: f64::NAN, ..AgentPolicy::default() }, "max_task_usd"),
            (AgentPolicy { max_task_usd: 0.0, ..AgentPolicy::default() }, "max_task_usd"),
            (
                AgentPolicy {
                    mcp_servers: vec![McpServer {
                        name: "docs".into(),
                        command: None,
                        args: vec![],
                        env: Default::default(),
                        url: None,
                    }],
                    ..AgentPolicy::default()
                },
                "mcp_servers[0]",
            ),
        ];
        for (policy, field) in cases {
            let err = policy.validate().unwrap_err();
            assert_eq!(err.field, field, "{policy:?}: {err}");
        }
        assert_eq!(
            policy(&["/srv/a/"], &["Read", "Bash(git *)", "mcp__docs__search"], &["Bash"]).validate(),
            Ok(())
        );
    }
}
