//! One chat request from validation to settlement: resolve the model,
//! reserve its worst-case cost, run it on the pool, and settle and record
//! it whatever happens (the settling runs in a task of its own, so it also
//! happens when the client has gone).

mod books;
pub mod content;
mod fallback;
mod plan;
pub mod prompt;
mod run;
pub mod sampling;
pub mod stop;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use crate::app::AppState;
use crate::budget::{Reservation, ReservationRequest};
use crate::error::ApiError;
use crate::money::Micros;
use crate::pricing::Model;
pub use crate::workers::ToolActivity;
use crate::workers::{Admission, Job, JobClass, RunReport};

pub use content::{
    ClientTools, Image, Thinking, ThinkingPiece, ToolCall, ToolCallDelta, ToolChoice, ToolResult, ToolSpec,
};
pub use fallback::FAILED_OVER;
pub use prompt::{Message, Role};
pub use sampling::Sampling;

pub use books::{record_later, record_refusal};
use fallback::{fallback_of, supervise, Attempt};
use plan::{choose, plan, Plan};
pub use plan::{is_auto, resolve_model};
use run::{Books, EVENT_BUFFER};

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
    /// Anthropic's `thinking` setting, for the direct backend.
    pub thinking: Option<serde_json::Value>,
    /// A JSON Schema the answer must be an instance of (OpenAI's
    /// `response_format` `json_schema`, Anthropic's `output_config`
    /// `format`): `output_config` on the direct backend, `--json-schema`
    /// on the CLI.
    pub output_schema: Option<serde_json::Value>,
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
            thinking: None,
            output_schema: None,
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
    events: mpsc::Receiver<ChatEvent>,
    /// The model answering now: `model`, or its fallback once the
    /// supervisor has switched (always before any text is sent).
    pub answering: watch::Receiver<Model>,
    /// The run's supervisor while `next_event` drives it (see `Driver`).
    driver: Driver,
}

impl Running {
    pub fn answering_model(&self) -> Model {
        self.answering.borrow().clone()
    }

    /// The run's outcome, passing over its other events (a whole answer's
    /// report holds its text); `None` when the run ended without one.
    pub async fn outcome(&mut self) -> Option<Outcome> {
        loop {
            match self.next_event().await? {
                ChatEvent::Done(outcome) => return Some(*outcome),
                ChatEvent::Text(_) | ChatEvent::ToolCall(_) | ChatEvent::Thinking(_) | ChatEvent::Tool(_) => {
                }
            }
        }
    }

    /// The run's next event, driving its supervisor meanwhile when the
    /// reader does (a request for a whole answer); `None` once the run has
    /// ended and every event was read.
    pub async fn next_event(&mut self) -> Option<ChatEvent> {
        let Running { events, driver, .. } = self;
        if let Some(supervisor) = driver.supervisor.as_mut() {
            // A panic stays the supervisor's, as it would in a task of its
            // own: its sender is dropped, so the reader sees the run end
            // without an outcome (a 500), not its connection torn down.
            let supervisor = AssertUnwindSafe(supervisor.as_mut()).catch_unwind();
            // The supervisor first: what it sends in this poll is read in
            // this same poll.
            tokio::select! {
                biased;
                ended = supervisor => {
                    if ended.is_err() {
                        tracing::error!("a run's supervisor panicked");
                    }
                }
                event = events.recv() => return event,
            }
            driver.supervisor = None;
        }
        events.recv().await
    }
}

/// A supervisor future, boxed (see `launch`).
type Supervisor = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A run's supervisor polled by the reader of its events, not by a task
/// of its own. A whole answer (the request does not stream) then comes
/// back without a hand-off between tasks, and so between threads, on each
/// side of the upstream call: the upstream request leaves from, and its
/// answer returns to, the task that serves the client's connection, as in
/// a plain proxy. Dropped before the supervisor has ended (the reader
/// stopped reading, or its client went away and the handler was dropped),
/// the supervisor goes on in a task of its own, so the run is still
/// cancelled or finished, and always settled.
///
/// Streams keep a task of their own: a client that stops reading stops
/// polling its response body, and the run's stall and deadline timers
/// must go on regardless.
struct Driver {
    /// `None` for a stream's run, and once the supervisor has ended.
    supervisor: Option<Supervisor>,
    tasks: TaskTracker,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let Some(supervisor) = self.supervisor.take() else { return };
        // Without a runtime the gateway is stopping and nothing could run
        // the supervisor; the reservation's expiry then releases its hold.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.tasks.spawn_on(supervisor, &runtime);
        }
    }
}

#[derive(Debug)]
pub enum ChatEvent {
    Text(String),
    /// A piece of a call to one of the client's tools, as it streams.
    ToolCall(ToolCallDelta),
    /// A piece of the model's extended thinking (direct backend).
    Thinking(ThinkingPiece),
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

/// Starts a chat run. Errors returned here happened before any work
/// started, and have already been written to the ledger.
pub async fn start(state: &AppState, mut request: ChatRequest) -> Result<Running, ApiError> {
    if state.settings.log_prompts {
        // Only when the operator asked for it: prompts are the users' data.
        for message in &request.messages {
            tracing::info!(request_id = %request.request_id, role = ?message.role, text = %message.text, "prompt");
        }
    }
    match prepare(state, &mut request).await {
        Ok(prepared) => {
            let route = prepared.route.clone();
            let mut running = launch(state, request, prepared);
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

/// What a request needs to run, all of it taken: its place in the pool,
/// then its reservation.
struct Prepared {
    model: Model,
    job: Job,
    admission: Admission,
    /// The class a fallback attempt is admitted with, when the model has one.
    retry_class: Option<JobClass>,
    reservation: Reservation,
    route: Option<RouteInfo>,
}

async fn prepare(state: &AppState, request: &mut ChatRequest) -> Result<Prepared, ApiError> {
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
    // The pool's place first: a gateway past its queue refuses at the cost
    // of a ledger row, without reserving and releasing first, which would
    // spend on refusals the time the admitted requests need. The admission
    // holds a batch run's slot, so the slot is free as soon as the run ends
    // (not when its settlement is written); a run that may fall back keeps a
    // copy of its class for the next model.
    let class = std::mem::replace(&mut request.class, JobClass::Interactive);
    let retry_class = fallback_of(state, &model).is_some().then(|| class.clone());
    let admission = admit(state, &model, class)?;
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
        thinking: request.thinking.clone(),
        output_schema: request.output_schema.clone(),
        max_budget: amount,
        stream: request.stream,
        deadline,
        agent: agent.as_ref().map(crate::agent::job),
    };
    let job = match &agent {
        Some(agent) => crate::agent::prompt_for(job, agent, &request.messages),
        None => job,
    };
    Ok(Prepared { model, job, admission, retry_class, reservation, route: choice.route })
}

/// A place in the pool that runs `model`, or 503 at once when its queue
/// is full.
fn admit(state: &AppState, model: &Model, class: JobClass) -> Result<Admission, ApiError> {
    state.pool_for(model).admit(class).map_err(|full| ApiError::Overloaded(format!("{full}; retry shortly")))
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

fn launch(state: &AppState, request: ChatRequest, prepared: Prepared) -> Running {
    let Prepared { model, job, admission, retry_class, reservation, .. } = prepared;
    let stream = request.stream;
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
    // Boxed: the supervisor's future is large (the whole run), and a task
    // moves its future into place and its output over it; a box moves as a
    // pointer.
    let supervisor: Supervisor = Box::pin(supervise(supervisor_state, attempt, client_tx, answering_tx));
    let supervisor = if stream {
        state.tasks.spawn(supervisor);
        None
    } else {
        Some(supervisor)
    };
    let driver = Driver { supervisor, tasks: state.tasks.clone() };
    Running { model, route: None, events: client_rx, answering: answering_rx, driver }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::PriceTable;

    /// A run whose supervisor is `supervisor`, driven by its reader.
    fn driven(supervisor: Supervisor, events: mpsc::Receiver<ChatEvent>, tasks: &TaskTracker) -> Running {
        let model = PriceTable::builtin().resolve("haiku").expect("haiku").clone();
        let (_, answering) = watch::channel(model.clone());
        let driver = Driver { supervisor: Some(supervisor), tasks: tasks.clone() };
        Running { model, route: None, events, answering, driver }
    }

    #[tokio::test]
    async fn the_reader_drives_the_supervisor_and_reads_what_it_sent() {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let supervisor = Box::pin(async move {
            tx.send(ChatEvent::Text("one".into())).await.expect("send");
            tokio::task::yield_now().await;
            tx.send(ChatEvent::Text("two".into())).await.expect("send");
        });
        let tasks = TaskTracker::new();
        let mut running = driven(supervisor, rx, &tasks);
        let mut texts = Vec::new();
        while let Some(event) = running.next_event().await {
            if let ChatEvent::Text(text) = event {
                texts.push(text);
            }
        }
        assert_eq!(texts, ["one", "two"]);
        assert!(tasks.is_empty(), "nothing was handed to a task");
    }

    #[tokio::test]
    async fn a_reader_dropped_early_hands_the_supervisor_to_a_task_that_finishes_it() {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let (finished_tx, finished_rx) = tokio::sync::oneshot::channel();
        let supervisor = Box::pin(async move {
            tx.send(ChatEvent::Text("first".into())).await.expect("send");
            // Waits for the reader to go, as a run's supervisor notices its
            // client has left, then finishes its work.
            tx.closed().await;
            let _ = finished_tx.send(());
        });
        let tasks = TaskTracker::new();
        let mut running = driven(supervisor, rx, &tasks);
        assert!(matches!(running.next_event().await, Some(ChatEvent::Text(_))));
        drop(running);
        assert_eq!(tasks.len(), 1, "the supervisor goes on in a task");
        tokio::time::timeout(Duration::from_secs(10), finished_rx)
            .await
            .expect("the handed-over supervisor finished")
            .expect("it ran to its end");
    }

    #[tokio::test]
    async fn a_panicking_supervisor_ends_the_run_without_an_outcome() {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let supervisor = Box::pin(async move {
            let _sender = tx;
            panic!("a bug in the supervisor");
        });
        let tasks = TaskTracker::new();
        let mut running = driven(supervisor, rx, &tasks);
        assert!(running.next_event().await.is_none());
        assert!(running.driver.supervisor.is_none());
    }
}
