//! One chat request from validation to settlement: resolve the model,
//! reserve its worst-case cost, run it on the pool, and settle and record
//! it whatever happens (the settling runs in a task of its own, so it also
//! happens when the client has gone).

pub mod content;
mod fallback;
pub mod prompt;
pub mod sampling;
pub mod stop;

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::app::AppState;
use crate::budget::{Reservation, ReservationRequest};
use crate::config::Backend;
use crate::error::ApiError;
use crate::money::Micros;
use crate::pricing::Model;
use crate::store::{Completion, LedgerEntry};
pub use crate::workers::ToolActivity;
use crate::workers::{Admission, Event, Job, JobClass, RunEnd, RunReport};

pub use content::{ClientTools, Image, ToolCall, ToolCallDelta, ToolChoice, ToolResult, ToolSpec};
pub use fallback::FAILED_OVER;
pub use prompt::{Message, Role};
pub use sampling::Sampling;

use fallback::{fallback_of, overloaded_upstream, supervise, Attempt};

/// A chat request in the gateway's own terms (no wire format).
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub request_id: String,
    pub project_id: String,
    pub key_id: Option<String>,
    pub endpoint: &'static str,
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u64>,
    pub received_at: Instant,
    /// Interactive, or part of a batch (which holds a batch slot).
    pub class: JobClass,
    /// Set when the request asks Claude Code to act as an agent.
    pub agent: Option<AgentOptions>,
    /// The client's own tools (OpenAI `tools`), which the model may call.
    pub tools: Option<ClientTools>,
    /// Whether the caller takes text as it comes. When not, only tool
    /// activity and the outcome (whose report holds the whole text) are
    /// passed on: one wake-up per answer instead of one per piece of text.
    pub stream: bool,
    /// Temperature, top-p/k and stop sequences.
    pub sampling: Sampling,
}

impl ChatRequest {
    /// A request with nothing asked yet: the fields a parser fills start
    /// empty, so a request refused while parsing can still be recorded.
    pub fn new(
        request_id: String,
        project_id: String,
        key_id: Option<String>,
        endpoint: &'static str,
        received_at: Instant,
    ) -> ChatRequest {
        ChatRequest {
            request_id,
            project_id,
            key_id,
            endpoint,
            model: String::new(),
            messages: Vec::new(),
            max_tokens: None,
            received_at,
            class: JobClass::Interactive,
            agent: None,
            tools: None,
            stream: true,
            sampling: Sampling::default(),
        }
    }

    /// Whether the request uses the client's own tools (offers them, or
    /// carries calls or results), which only the direct backend can carry.
    pub fn uses_client_tools(&self) -> bool {
        self.tools.is_some() || self.messages.iter().any(Message::has_tool_use)
    }
}

/// What an agentic request asks for: the extension fields of chat
/// completions, or the fields of a task. Each is checked against the
/// project's agent policy before anything runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentOptions {
    /// Where the agent works; must lie inside one of the policy's roots.
    pub working_directory: Option<String>,
    /// Tools in the CLI's syntax (`Read`, `Edit`, `Bash(git *)`).
    pub allowed_tools: Option<Vec<String>>,
    pub max_turns: Option<u32>,
    /// A session returned by an earlier request of the same project.
    pub session_id: Option<String>,
    /// The most the whole run may cost, in USD.
    pub max_budget_usd: Option<f64>,
}

/// A run under way: text as it comes, then exactly one `Done`.
pub struct Running {
    /// The model the request was first run on.
    pub model: Model,
    /// How `"model": "auto"` chose, when it did.
    pub route: Option<RouteInfo>,
    pub events: mpsc::Receiver<ChatEvent>,
    /// The model answering now: `model`, or its fallback once the
    /// supervisor has switched (always before any text is sent).
    pub answering: watch::Receiver<Model>,
}

impl Running {
    pub fn answering_model(&self) -> Model {
        self.answering.borrow().clone()
    }
}

#[derive(Debug)]
pub enum ChatEvent {
    Text(String),
    /// A piece of a call to one of the client's tools, as it streams.
    ToolCall(ToolCallDelta),
    /// An agent's tool activity, as it happens.
    Tool(ToolActivity),
    Done(Box<Outcome>),
}

/// How a run ended, as the client sees it.
#[derive(Debug)]
pub struct Outcome {
    pub report: RunReport,
    pub cost: Micros,
    pub error: Option<ApiError>,
}

/// Events are small; a short buffer keeps a slow client from holding more
/// than a few of them while still letting the worker run ahead a little.
const EVENT_BUFFER: usize = 64;

/// Starts a chat run. Errors returned here happened before any work
/// started, and have already been written to the ledger.
pub async fn start(state: &AppState, request: ChatRequest) -> Result<Running, ApiError> {
    if state.settings.log_prompts {
        // Only when the operator asked for it: prompts are the users' data.
        for message in &request.messages {
            tracing::info!(request_id = %request.request_id, role = ?message.role, text = %message.text, "prompt");
        }
    }
    match prepare(state, &request).await {
        Ok((model, job, reservation, route)) => {
            let mut running = launch(state, request, model, job, reservation).await?;
            running.route = route;
            Ok(running)
        }
        Err(error) => {
            record_refusal(state, &request, &error);
            Err(error)
        }
    }
}

/// The most a request may cost (what `start` would reserve), or why it
/// cannot run at all; nothing is reserved or recorded.
pub async fn estimate(state: &AppState, request: &ChatRequest) -> Result<Micros, ApiError> {
    let choice = choose(state, request).await?;
    plan(state, request, &choice).map(|plan| plan.amount)
}

/// The tier and score behind an auto-routed request.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub tier: String,
    pub score: f64,
}

/// The model a request runs on and its output cap.
struct Choice {
    model: String,
    max_tokens: Option<u64>,
    route: Option<RouteInfo>,
}

/// `auto` (or no model) asks the router; anything else is taken as named.
pub fn is_auto(model: &str) -> bool {
    model.is_empty() || model == "auto"
}

async fn choose(state: &AppState, request: &ChatRequest) -> Result<Choice, ApiError> {
    if !is_auto(&request.model) {
        return Ok(Choice { model: request.model.clone(), max_tokens: request.max_tokens, route: None });
    }
    let decision = crate::routing::decide(
        state,
        &request.project_id,
        &request.messages,
        request.max_tokens,
        request.uses_client_tools(),
    )
    .await?;
    let model = resolve_model(state, &decision.model)?;
    // The router checked the budget against this output allowance; the
    // run is held to it so the reservation matches.
    let max_tokens =
        request.max_tokens.or(Some(crate::routing::output_allowance(state, model.max_output_tokens)));
    Ok(Choice {
        model: decision.model,
        max_tokens,
        route: Some(RouteInfo { tier: decision.tier, score: decision.complexity_score }),
    })
}

/// What a request will run, and its worst-case cost.
struct Plan {
    model: Model,
    prompt: prompt::Prompt,
    amount: Micros,
    /// The bounds `amount` was priced from.
    input_tokens: u64,
    output_tokens: u64,
}

async fn prepare(
    state: &AppState,
    request: &ChatRequest,
) -> Result<(Model, Job, Reservation, Option<RouteInfo>), ApiError> {
    // Checked first: an agentic request the policy refuses costs nothing.
    let agent = match &request.agent {
        Some(options) => Some(crate::agent::plan(state, &request.project_id, options).await?),
        None => None,
    };
    let choice = choose(state, request).await?;
    let Plan { model, prompt, mut amount, input_tokens, output_tokens } = plan(state, request, &choice)?;
    if let Some(agent) = &agent {
        crate::agent::check_backend(state, &model)?;
        amount = crate::agent::reservation(&model, input_tokens, output_tokens, agent);
    }
    let reservation = state.budget.reserve(reservation_for(request, &model, amount)).await?;
    let deadline = tokio::time::Instant::from_std(request.received_at)
        + Duration::from_secs(state.settings.request_timeout_secs);
    let job = Job {
        model: model.cli_name().to_string(),
        model_id: model.id.clone(),
        system_prompt: prompt.system,
        system_cache: request
            .messages
            .iter()
            .rev()
            .filter(|m| m.role == Role::System)
            .find_map(|m| m.cache.clone()),
        prompt: prompt.prompt,
        messages: request.messages.iter().filter(|m| m.role != Role::System).cloned().collect(),
        max_output_tokens: choice.max_tokens,
        tools: request.tools.clone(),
        sampling: request.sampling.clone(),
        max_budget: amount,
        deadline,
        agent: agent.as_ref().map(crate::agent::job),
    };
    let job = match &agent {
        Some(agent) => crate::agent::prompt_for(job, agent, &request.messages),
        None => job,
    };
    Ok((model, job, reservation, choice.route))
}

fn reservation_for(request: &ChatRequest, model: &Model, amount: Micros) -> ReservationRequest {
    ReservationRequest {
        request_id: request.request_id.clone(),
        project_id: request.project_id.clone(),
        key_id: request.key_id.clone(),
        endpoint: request.endpoint.to_string(),
        model_requested: Some(request.model.clone()),
        model_used: Some(model.id.clone()),
        amount,
    }
}

fn plan(state: &AppState, request: &ChatRequest, choice: &Choice) -> Result<Plan, ApiError> {
    let model = resolve_model(state, &choice.model)?;
    let prompt =
        prompt::build(&request.messages).map_err(|e| ApiError::bad_request(e.to_string(), "messages"))?;
    if let Some(max) = choice.max_tokens {
        if max == 0 || max > model.max_output_tokens {
            return Err(ApiError::bad_request(
                format!("max_tokens must be between 1 and {} for {}", model.max_output_tokens, model.id),
                "max_tokens",
            ));
        }
    }
    check_content(state, request, &model)?;
    let input_bound = prompt::token_upper_bound(&prompt.prompt)
        + prompt.system.as_deref().map(prompt::token_upper_bound).unwrap_or(0)
        + state.settings.prompt_overhead_tokens
        + content::token_upper_bound(&request.messages, request.tools.as_ref());
    let output_bound = choice.max_tokens.unwrap_or(model.max_output_tokens);
    if input_bound.saturating_add(output_bound) > model.context_window {
        return Err(ApiError::BadRequest {
            message: format!(
                "this request may need {} tokens of input and {output_bound} of output, more than the \
                 {} tokens of {}'s context window",
                input_bound, model.context_window, model.id
            ),
            param: Some("messages".into()),
            code: Some("context_length_exceeded"),
        });
    }
    let amount = model.cost(&crate::pricing::TokenUsage {
        input_tokens: input_bound,
        output_tokens: output_bound,
        ..Default::default()
    });
    Ok(Plan { model, prompt, amount, input_tokens: input_bound, output_tokens: output_bound })
}

/// Refuses images and client tools that the model's backend cannot carry,
/// and images over the size limit, rather than dropping them.
fn check_content(state: &AppState, request: &ChatRequest, model: &Model) -> Result<(), ApiError> {
    let max = state.settings.max_image_bytes;
    // Images a tool returned count too.
    let mut images = request
        .messages
        .iter()
        .flat_map(|m| m.images.iter().chain(m.tool_results.iter().flat_map(|r| &r.images)));
    if let Some(image) = images.find(|i| i.size > max) {
        return Err(ApiError::PayloadTooLarge(format!(
            "an image is {} bytes decoded, more than the {max} bytes allowed (max_image_bytes)",
            image.size
        )));
    }
    if state.settings.backend_for(&model.id, &model.aliases) == Backend::Api {
        return Ok(());
    }
    if request.uses_client_tools() {
        return Err(ApiError::bad_request(
            format!(
                "client-side tool calling (`tools`, tool calls and tool results: OpenAI's `tool_calls` and \
                 `tool` messages, Anthropic's `tool_use` and `tool_result` blocks) is not supported by the \
                 Claude Code CLI backend that serves {}; serve the model on the direct backend \
                 (backends = {{ {} = \"api\" }}) to use it",
                model.id,
                model.aliases.first().unwrap_or(&model.id)
            ),
            "tools",
        ));
    }
    // The CLI takes one user message per run: earlier turns go as a text
    // transcript, which cannot hold an image.
    let last_user = request.messages.iter().rposition(|m| m.role == Role::User);
    let earlier_image =
        request.messages.iter().enumerate().any(|(i, m)| !m.images.is_empty() && Some(i) != last_user);
    if earlier_image {
        return Err(ApiError::bad_request(
            format!(
                "the Claude Code CLI backend that serves {} takes images only in the last user message; \
                 use the direct backend for images in earlier turns",
                model.id
            ),
            "messages",
        ));
    }
    Ok(())
}

pub fn resolve_model(state: &AppState, name: &str) -> Result<Model, ApiError> {
    state.prices.resolve(name).cloned().ok_or_else(|| ApiError::NotFound {
        message: format!(
            "the model {name:?} does not exist or is not served here; see GET /v1/models (for example: {})",
            state
                .prices
                .models()
                .iter()
                .filter_map(|m| m.aliases.first().cloned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        param: Some("model".into()),
        code: Some("model_not_found"),
    })
}

async fn launch(
    state: &AppState,
    mut request: ChatRequest,
    model: Model,
    job: Job,
    reservation: Reservation,
) -> Result<Running, ApiError> {
    // The admission holds a batch run's slot, so the slot is free as soon as
    // the run ends (not when its settlement is written); a run that may fall
    // back keeps a copy of it for the next model.
    let class = std::mem::replace(&mut request.class, JobClass::Interactive);
    let retry_class = fallback_of(state, &model).is_some().then(|| class.clone());
    let admission = match state.pool_for(&model).admit(class) {
        Ok(admission) => admission,
        Err(full) => {
            let error = ApiError::Overloaded(format!("{full}; retry shortly"));
            let completion =
                completion_for(&request, &error, RunReport::new(RunEnd::Cancelled), Micros::ZERO);
            settle_later(state, reservation, completion);
            return Err(error);
        }
    };
    let (client_tx, client_rx) = mpsc::channel(EVENT_BUFFER);
    let (answering_tx, answering_rx) = watch::channel(model.clone());
    let supervisor_state = state.clone();
    let attempt = Attempt {
        model: model.clone(),
        admission,
        job,
        books: Books { request, reservation },
        class: retry_class,
    };
    state.tasks.spawn(async move {
        supervise(supervisor_state, attempt, client_tx, answering_tx).await;
    });
    Ok(Running { model, route: None, events: client_rx, answering: answering_rx })
}

fn cost_of(model: &Model, report: &RunReport) -> Micros {
    report.reported_cost.unwrap_or_else(|| model.cost(&report.usage))
}

fn outcome_of(state: &AppState, model: &Model, report: RunReport) -> Outcome {
    Outcome { error: error_for(state, &report.end), cost: cost_of(model, &report), report }
}

/// What must be written down when a run ends: its request and reservation.
struct Books {
    request: ChatRequest,
    reservation: Reservation,
}

/// What one attempt's events have done so far.
struct Flow {
    books: Option<Books>,
    text_sent: bool,
    /// Whether an upstream overload before any text is held back (for a
    /// fallback) instead of going to the client.
    may_fall_back: bool,
    /// An agentic run's working directory, stored with its session.
    agent_dir: Option<String>,
    /// Whether text and tool-call pieces go to the client as they come.
    stream: bool,
    /// The request's stop sequences over the answer.
    cut: stop::AnswerCut,
}

/// Runs one attempt, passing text to the client, and the outcome as soon as
/// the worker has reported it; the books are settled at that same moment,
/// while the worker is cleaned up behind them. A client that goes away
/// cancels the run. Returns the books and report, with nothing sent or
/// settled, when the run failed upstream (429/529) before any text and
/// `may_fall_back`.
async fn run_attempt(
    state: &AppState,
    model: &Model,
    admission: Admission,
    job: Job,
    client: &mpsc::Sender<ChatEvent>,
    books: Books,
    may_fall_back: bool,
) -> Option<(Books, RunReport)> {
    let pool = state.pool_for(model);
    let (worker_tx, mut worker_rx) = mpsc::channel(EVENT_BUFFER);
    let agent_dir = job.agent.as_ref().map(|agent| crate::agent::directory_text(&agent.cwd));
    let cancel = pool.run_token();
    let run = pool.run(admission, job, worker_tx, cancel.clone());
    tokio::pin!(run);
    let stream = books.request.stream;
    let cut = stop::AnswerCut::new(&books.request.sampling.stop);
    let mut flow = Flow { books: Some(books), text_sent: false, may_fall_back, agent_dir, stream, cut };
    let report = loop {
        tokio::select! {
            report = &mut run => break report,
            Some(event) = worker_rx.recv() => {
                if !deliver(state, model, client, &mut flow, event).await {
                    cancel.cancel();
                }
            }
            _ = client.closed(), if !cancel.is_cancelled() => cancel.cancel(),
        }
    };
    while let Ok(event) = worker_rx.try_recv() {
        deliver(state, model, client, &mut flow, event).await;
    }
    let books = flow.books?;
    if flow.may_fall_back && !flow.text_sent && overloaded_upstream(&report.end) && !client.is_closed() {
        return Some((books, report));
    }
    // The run ended without a result line (killed, timed out, crashed).
    let _ = client.send(ChatEvent::Done(Box::new(outcome_of(state, model, report.clone())))).await;
    conclude(state, model, books, report, Instant::now()).await;
    None
}

/// Passes one worker event on; false when the client is gone.
async fn deliver(
    state: &AppState,
    model: &Model,
    client: &mpsc::Sender<ChatEvent>,
    flow: &mut Flow,
    event: Event,
) -> bool {
    match event {
        Event::Started { .. } => true,
        Event::Text(text) => {
            flow.text_sent = true;
            let text = flow.cut.text(&text);
            !flow.stream || text.is_empty() || client.send(ChatEvent::Text(text)).await.is_ok()
        }
        Event::ToolCall(delta) => {
            // A tool call is an answer: no fallback once it went out.
            flow.text_sent = true;
            let Some(held) = flow.cut.tool_call(&delta) else { return true };
            if !flow.stream {
                return true;
            }
            if !held.is_empty() && client.send(ChatEvent::Text(held)).await.is_err() {
                return false;
            }
            client.send(ChatEvent::ToolCall(delta)).await.is_ok()
        }
        Event::Tool(activity) => {
            // A tool has acted: retrying elsewhere would act twice.
            flow.text_sent = true;
            client.send(ChatEvent::Tool(activity)).await.is_ok()
        }
        Event::Finished(report)
            if flow.may_fall_back && !flow.text_sent && overloaded_upstream(&report.end) =>
        {
            // Held back: the supervisor decides once the run has ended.
            true
        }
        Event::Finished(report) => {
            let mut report = *report;
            let held = flow.cut.finish(&mut report);
            if flow.stream && !held.is_empty() {
                // A client gone by now misses only this; the books are settled below.
                let _ = client.send(ChatEvent::Text(held)).await;
            }
            if let (Some(dir), Some(session), Some(books)) =
                (&flow.agent_dir, &report.session_id, &flow.books)
            {
                // Before the client learns the id, so its next request finds it.
                crate::agent::sessions::remember(state, &books.request.project_id, session, dir).await;
            }
            let delivered = client
                .send(ChatEvent::Done(Box::new(outcome_of(state, model, report.clone()))))
                .await
                .is_ok();
            let answered_at = Instant::now();
            if let Some(books) = flow.books.take() {
                let (state, model) = (state.clone(), model.clone());
                state
                    .tasks
                    .clone()
                    .spawn(async move { conclude(&state, &model, books, report, answered_at).await });
            }
            delivered
        }
    }
}

/// Settles the reservation, records metrics and rate-limit tokens, and logs
/// the run.
async fn conclude(state: &AppState, model: &Model, books: Books, report: RunReport, answered_at: Instant) {
    conclude_as(state, model, books, report, answered_at, None).await;
}

/// `conclude`, with the ledger status replaced by `status` when given.
async fn conclude_as(
    state: &AppState,
    model: &Model,
    books: Books,
    report: RunReport,
    answered_at: Instant,
    status: Option<&str>,
) {
    let Books { request, reservation } = books;
    let cost = cost_of(model, &report);
    let error = error_for(state, &report.end);
    let mut completion = match &error {
        Some(error) => completion_for(&request, error, report.clone(), cost),
        None => completion_for_success(&request, report.clone(), cost),
    };
    if let Some(status) = status {
        completion.status = status.to_string();
    }
    let tokens = completion.input_tokens + completion.output_tokens;
    // What the gateway adds: from arrival to the worker's start, and from
    // the CLI's result line to the answer leaving (queue wait included).
    let overhead = report.finished_at.map(|done| {
        report.started_at.saturating_duration_since(request.received_at)
            + answered_at.saturating_duration_since(done)
    });
    state.metrics.observe_run(
        &request.project_id,
        completion.model_used.as_deref().unwrap_or(&model.id),
        &completion.status,
        answered_at.saturating_duration_since(request.received_at),
        report.first_token_at.map(|t| t.saturating_duration_since(request.received_at)),
        overhead,
        completion.input_tokens,
        completion.output_tokens,
        completion.cost.as_usd(),
    );
    tracing::info!(
        request_id = %request.request_id,
        project = %request.project_id,
        key_id = request.key_id.as_deref().unwrap_or("-"),
        model = completion.model_used.as_deref().unwrap_or("-"),
        outcome = %completion.status,
        status = completion.http_status.unwrap_or(0),
        input_tokens = completion.input_tokens,
        output_tokens = completion.output_tokens,
        cost_usd = completion.cost.as_usd(),
        latency_ms = completion.latency_ms.unwrap_or(0),
        ttft_ms = completion.ttft_ms.unwrap_or(0),
        "run finished"
    );
    if let Err(e) = state.budget.settle(reservation, completion).await {
        tracing::error!(request_id = %request.request_id, error = %e, "failed to settle a reservation");
    }
    if let Some(key_id) = &request.key_id {
        state.limiter.record_tokens(key_id, tokens).await;
    }
}

fn error_for(state: &AppState, end: &RunEnd) -> Option<ApiError> {
    let settings = &state.settings;
    Some(match end {
        RunEnd::Completed => return None,
        RunEnd::Failed { api_status: Some(429), message, .. } => ApiError::RateLimited {
            message: format!("the upstream API is rate-limiting: {message}"),
            retry_after_secs: None,
        },
        RunEnd::Failed { api_status: Some(status), message, .. } => {
            ApiError::Upstream(format!("the upstream API answered {status}: {message}"))
        }
        RunEnd::Failed { subtype, message, .. } if subtype == "error_max_turns" => ApiError::Upstream(
            format!("the agent used all its turns (max_turns) before finishing: {message}"),
        ),
        RunEnd::Failed { subtype, message, .. } if subtype == "error_max_budget_usd" => {
            ApiError::Upstream(format!("the run reached its spending cap and was stopped: {message}"))
        }
        RunEnd::Failed { message, .. } => {
            ApiError::Upstream(format!("Claude Code reported an error: {message}"))
        }
        RunEnd::Deadline => ApiError::Timeout(format!(
            "the request did not finish within its deadline of {} seconds",
            settings.request_timeout_secs
        )),
        RunEnd::Stalled => ApiError::Timeout(format!(
            "the worker produced no output for {} seconds and was stopped",
            settings.stall_timeout_secs
        )),
        RunEnd::Cancelled => ApiError::Timeout("the client closed the connection".into()),
        RunEnd::Shutdown => ApiError::Overloaded("the gateway is shutting down".into()),
        RunEnd::SpawnFailed { not_installed: true, message } => ApiError::CliUnavailable(format!(
            "{message}. Install the Claude Code CLI with `npm install -g @anthropic-ai/claude-code` \
             (or set claude_bin / CCGATE_CLAUDE_BIN to its path)"
        )),
        RunEnd::SpawnFailed { message, .. } => ApiError::CliUnavailable(message.clone()),
        RunEnd::Crashed { message } => ApiError::Upstream(message.clone()),
    })
}

fn completion_for_success(request: &ChatRequest, report: RunReport, cost: Micros) -> Completion {
    Completion {
        status: "succeeded".into(),
        http_status: Some(200),
        ..base_completion(request, report, cost)
    }
}

fn completion_for(request: &ChatRequest, error: &ApiError, report: RunReport, cost: Micros) -> Completion {
    let client_gone = report.end == RunEnd::Cancelled;
    Completion {
        status: if client_gone { "client_disconnected".into() } else { error.outcome().into() },
        // 499: nginx's "client closed request", the usual record for it.
        http_status: Some(if client_gone { 499 } else { error.status().as_u16() }),
        error_message: Some(error.to_string()),
        ..base_completion(request, report, cost)
    }
}

fn base_completion(request: &ChatRequest, report: RunReport, cost: Micros) -> Completion {
    let usage = report.usage;
    Completion {
        finished_at_ms: 0,
        model_used: report.model,
        status: String::new(),
        http_status: None,
        error_message: None,
        input_tokens: usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
        output_tokens: usage.output_tokens,
        cache_read_tokens: usage.cache_read_tokens,
        cache_write_tokens: usage.cache_write_tokens,
        cost,
        latency_ms: Some(request.received_at.elapsed().as_millis() as u64),
        ttft_ms: report
            .first_token_at
            .map(|t| t.saturating_duration_since(request.received_at).as_millis() as u64),
    }
}

fn settle_later(state: &AppState, reservation: Reservation, completion: Completion) {
    let budget = state.budget.clone();
    state.tasks.spawn(async move {
        if let Err(e) = budget.settle(reservation, completion).await {
            tracing::error!(error = %e, "failed to settle a reservation");
        }
    });
}

/// Writes the ledger row of a request refused before it held a reservation.
pub fn record_refusal(state: &AppState, request: &ChatRequest, error: &ApiError) {
    let entry = LedgerEntry {
        request_id: request.request_id.clone(),
        created_at_ms: state.budget.now().timestamp_millis(),
        project_id: request.project_id.clone(),
        key_id: request.key_id.clone(),
        endpoint: request.endpoint.to_string(),
        model_requested: Some(request.model.clone()).filter(|m| !m.is_empty()),
        completion: Completion {
            status: error.outcome().into(),
            http_status: Some(error.status().as_u16()),
            error_message: Some(error.to_string()),
            latency_ms: Some(request.received_at.elapsed().as_millis() as u64),
            ..Completion::default()
        },
    };
    record_later(state, entry);
}

pub fn record_later(state: &AppState, entry: LedgerEntry) {
    let budget = state.budget.clone();
    state.tasks.spawn(async move {
        if let Err(e) = budget.record(entry).await {
            tracing::error!(error = %e, "failed to write a ledger row");
        }
    });
}
