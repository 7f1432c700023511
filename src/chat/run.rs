//! One attempt at a run: the worker's events pass through the stop
//! sequences to the client, and the books are settled the moment the
//! worker reports its outcome, while the worker is cleaned up behind them.

use std::time::Instant;

use tokio::sync::mpsc;

use super::books::{conclude, error_for};
use super::fallback::overloaded_upstream;
use super::{stop, ChatEvent, ChatRequest, Outcome};
use crate::app::AppState;
use crate::budget::Reservation;
use crate::money::Micros;
use crate::pricing::Model;
use crate::workers::{Admission, Event, Job, RunReport};

/// Events are small; a short buffer keeps a slow client from holding more
/// than a few of them while still letting the worker run ahead a little.
pub(super) const EVENT_BUFFER: usize = 64;

pub(super) fn cost_of(model: &Model, report: &RunReport) -> Micros {
    report.reported_cost.unwrap_or_else(|| model.cost(&report.usage))
}

pub(super) fn outcome_of(state: &AppState, model: &Model, report: RunReport) -> Outcome {
    Outcome { error: error_for(state, model, &report.end), cost: cost_of(model, &report), report }
}

/// What must be written down when a run ends: its request and reservation.
pub(super) struct Books {
    pub(super) request: ChatRequest,
    pub(super) reservation: Reservation,
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
pub(super) async fn run_attempt(
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
    // Boxed: a rare path, kept out of the supervisor's future.
    Box::pin(conclude(state, model, books, report, Instant::now())).await;
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
        Event::Thinking(piece) => {
            // Reasoning is the start of an answer: no fallback after it.
            flow.text_sent = true;
            !flow.stream || client.send(ChatEvent::Thinking(piece)).await.is_ok()
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
                let (tasks, state, model) = (state.tasks.clone(), state.clone(), model.clone());
                // Boxed, as the supervisor is: a settlement's future is large.
                tasks.spawn(Box::pin(
                    async move { conclude(&state, &model, books, report, answered_at).await },
                ));
            }
            delivered
        }
    }
}
