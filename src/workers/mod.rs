//! Workers run one prompt each and report what happened. They know nothing
//! of HTTP, budgets or projects: a `Job` goes in, `Event`s stream out, and a
//! `RunReport` says how it ended. Whatever happens, a worker's processes are
//! gone when `run` returns.

pub mod anthropic;
pub mod cli;
pub mod gate;
mod gate_meter;
mod gate_run;
pub mod messages_request;
pub mod messages_sse;
pub mod pool;
pub mod stream_json;
pub mod warm;

use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::chat::ThinkingPiece;
use crate::money::Micros;
use crate::pricing::TokenUsage;

pub use pool::{Admission, BatchSlot, JobClass, PoolState, PoolStats, QueueFull, WorkerPool};

/// One prompt to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// What the CLI is given as `--model` (an alias or id).
    pub model: String,
    /// The model's full id, as the Anthropic API names it.
    pub model_id: String,
    pub system_prompt: Option<String>,
    /// Anthropic's `cache_control` for the end of the system prompt, when
    /// the client set one (the direct backend only).
    pub system_cache: Option<serde_json::Value>,
    /// The whole prompt as one text (earlier turns as a transcript): what
    /// the CLI reads on stdin.
    pub prompt: String,
    /// The conversation turn by turn (no system messages), for backends
    /// that take messages.
    pub messages: Vec<crate::chat::Message>,
    pub max_output_tokens: Option<u64>,
    /// The client's own tools, for backends that can offer them.
    pub tools: Option<crate::chat::ClientTools>,
    /// Sampling and stop sequences, for backends that take them.
    pub sampling: crate::chat::Sampling,
    /// Anthropic's `thinking` setting, for backends that take it.
    pub thinking: Option<serde_json::Value>,
    /// A JSON Schema the answer must be an instance of, for backends that
    /// take one.
    pub output_schema: Option<serde_json::Value>,
    /// The CLI's own spending cap for the run (`--max-budget-usd`).
    pub max_budget: Micros,
    /// Whether the client takes the answer piece by piece; a backend may
    /// fetch the whole answer at once when it does not.
    pub stream: bool,
    /// The run is killed at this instant, queueing included.
    pub deadline: tokio::time::Instant,
    /// Set when Claude Code acts as an agent: tools, a working directory,
    /// maybe a session to resume. Such jobs always run cold on the CLI.
    pub agent: Option<AgentJob>,
}

/// How an agentic job runs, already checked against its project's policy.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentJob {
    /// The canonical working directory (the process's current directory).
    pub cwd: std::path::PathBuf,
    /// Built-in tools to enable (`--tools`); empty enables none.
    pub tools: Vec<String>,
    /// Tool rules that run without asking (`--allowedTools`).
    pub allowed_tools: Vec<String>,
    /// Tool rules that never run (`--disallowedTools`).
    pub disallowed_tools: Vec<String>,
    pub max_turns: u32,
    /// A session to continue (`--resume`).
    pub resume: Option<String>,
    /// Bypass permission checks; only when the policy says so.
    pub skip_permissions: bool,
    /// `--mcp-config` JSON (`{"mcpServers":{…}}`), when servers are allowed.
    pub mcp_config: Option<String>,
}

/// What a run shows while it is under way.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        model: Option<String>,
        session_id: Option<String>,
    },
    Text(String),
    /// A piece of a call the model makes to one of the client's tools.
    ToolCall(crate::chat::ToolCallDelta),
    /// A piece of the model's extended thinking.
    Thinking(crate::chat::ThinkingPiece),
    /// An agent used a tool, or got its result.
    Tool(ToolActivity),
    /// The CLI printed its result. Sent before the process is cleaned up,
    /// so the client need not wait for that; `run` returns the same report.
    Finished(Box<RunReport>),
}

/// An agent's tool activity, in the order it happens.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolActivity {
    /// The model asked for a tool (`input` as it gave it).
    Use { id: String, name: String, input: serde_json::Value },
    /// The tool's outcome, as sent back to the model.
    Result { id: String, is_error: bool, content: String },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    Completed,
    /// The CLI reported an error (`is_error`), maybe from the upstream API.
    Failed {
        api_status: Option<u16>,
        subtype: String,
        message: String,
    },
    Deadline,
    Stalled,
    /// The caller went away (client disconnect).
    Cancelled,
    /// The gateway is stopping and the grace period is over.
    Shutdown,
    /// The CLI could not be started at all.
    SpawnFailed {
        not_installed: bool,
        message: String,
    },
    /// The CLI exited without a result line.
    Crashed {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub end: RunEnd,
    /// The model id the CLI resolved and reported.
    pub model: Option<String>,
    pub session_id: Option<String>,
    pub text: String,
    /// Calls the model made to the client's tools, in order.
    pub tool_calls: Vec<crate::chat::ToolCall>,
    pub usage: TokenUsage,
    /// The cost the CLI reported, if it got as far as a result.
    pub reported_cost: Option<Micros>,
    pub stop_reason: Option<String>,
    /// The stop sequence the upstream stopped at (direct backend).
    pub stop_sequence: Option<String>,
    /// The model's extended thinking, in order.
    pub thinking: Vec<crate::chat::Thinking>,
    pub num_turns: u64,
    pub started_at: Instant,
    pub first_token_at: Option<Instant>,
    /// When the CLI printed its result line.
    pub finished_at: Option<Instant>,
}

impl RunReport {
    pub fn new(end: RunEnd) -> RunReport {
        RunReport {
            end,
            model: None,
            session_id: None,
            text: String::new(),
            tool_calls: Vec::new(),
            usage: TokenUsage::default(),
            reported_cost: None,
            stop_reason: None,
            stop_sequence: None,
            thinking: Vec::new(),
            num_turns: 0,
            started_at: Instant::now(),
            first_token_at: None,
            finished_at: None,
        }
    }

    /// Adds a part of the model's thinking, as a stream delivers it, to the
    /// report; returns the pieces to pass on.
    pub fn think(&mut self, part: ThinkingPart) -> Vec<ThinkingPiece> {
        use crate::chat::Thinking;
        match part {
            ThinkingPart::Start { thinking } => {
                self.first_token_at.get_or_insert_with(Instant::now);
                self.thinking.push(Thinking::Text { thinking: thinking.clone(), signature: String::new() });
                let mut pieces = vec![ThinkingPiece::Start { redacted: None }];
                pieces.extend((!thinking.is_empty()).then_some(ThinkingPiece::Text(thinking)));
                pieces
            }
            ThinkingPart::Redacted { data } => {
                self.first_token_at.get_or_insert_with(Instant::now);
                self.thinking.push(Thinking::Redacted { data: data.clone() });
                vec![ThinkingPiece::Start { redacted: Some(data) }]
            }
            ThinkingPart::Text(piece) => {
                if let Some(Thinking::Text { thinking, .. }) = self.thinking.last_mut() {
                    thinking.push_str(&piece);
                }
                vec![ThinkingPiece::Text(piece)]
            }
            ThinkingPart::Signature(piece) => {
                if let Some(Thinking::Text { signature, .. }) = self.thinking.last_mut() {
                    signature.push_str(&piece);
                }
                vec![ThinkingPiece::Signature(piece)]
            }
        }
    }
}

/// Sends events in order; false once the caller is gone.
pub(super) async fn send_all(events: &mpsc::Sender<Event>, all: impl IntoIterator<Item = Event>) -> bool {
    for event in all {
        if events.send(event).await.is_err() {
            return false;
        }
    }
    true
}

/// A part of a thinking block as the Messages API streams it (and the CLI
/// passes its events on): a block's start, a redacted block, or a delta.
#[derive(Debug, Clone, PartialEq)]
pub enum ThinkingPart {
    Start { thinking: String },
    Redacted { data: String },
    Text(String),
    Signature(String),
}

#[async_trait]
pub trait Worker: Send + Sync + 'static {
    /// Runs the job to its end. Events go to `events`; if that channel closes
    /// the caller is gone and the run stops as if cancelled.
    async fn run(&self, job: Job, events: mpsc::Sender<Event>, cancel: CancellationToken) -> RunReport;
}
