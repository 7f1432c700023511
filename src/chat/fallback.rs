//! Fallback: when a model is overloaded or rate-limited upstream (after its
//! backend's own retries) and nothing has reached the client yet, the
//! request runs again on the model `fallback_models` names, under a derived
//! request id with a reservation and ledger row of its own. The supervisor
//! here drives the attempts; `run_attempt` runs each.

use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::books::{conclude_as, record_refusal};
use super::plan::{plan, Choice};
use super::run::{outcome_of, run_attempt, Books};
use super::{admit, reservation_for, ChatEvent, ChatRequest};
use crate::app::AppState;
use crate::error::ApiError;
use crate::pricing::Model;
use crate::workers::{Admission, Job, JobClass, RunEnd};

/// One model's try at a request.
pub(super) struct Attempt {
    pub(super) model: Model,
    pub(super) admission: Admission,
    pub(super) job: Job,
    pub(super) books: Books,
    /// The class a fallback run is admitted with (kept only while the model
    /// has a fallback).
    pub(super) class: Option<JobClass>,
}

/// Runs the request on its model and, when that model is overloaded or
/// rate-limited upstream before any text went out, on its configured
/// fallback (one hop per configured fallback, never back to a model already
/// tried). Each attempt has its own reservation and ledger row.
pub(super) async fn supervise(
    state: AppState,
    mut attempt: Attempt,
    client: mpsc::Sender<ChatEvent>,
    answering: watch::Sender<Model>,
) {
    let base_id = attempt.books.request.request_id.clone();
    let mut tried = vec![attempt.model.id.clone()];
    loop {
        // An agent's run is planned for its model and may have acted already.
        let fallback = fallback_of(&state, &attempt.model)
            .filter(|m| !tried.contains(&m.id) && attempt.job.agent.is_none());
        let Attempt { model, admission, job, books, class } = attempt;
        let held =
            run_attempt(&state, &model, admission, job.clone(), &client, books, fallback.is_some()).await;
        let (Some((books, report)), Some(fallback)) = (held, fallback) else { return };
        // Settled first, so its reservation no longer counts against the
        // fallback's.
        let failed_request = books.request.clone();
        // Boxed, as is the fallback below: rare paths, kept out of the
        // supervisor's future, which every request moves.
        Box::pin(conclude_as(&state, &model, books, report.clone(), Instant::now(), Some(FAILED_OVER))).await;
        let request_id = format!("{base_id}-fb{}", tried.len());
        match Box::pin(fall_back(&state, &failed_request, request_id, &job, class, fallback)).await {
            Some(next) => {
                tracing::info!(
                    request_id = %base_id, from = %model.id, to = %next.model.id,
                    "falling back to another model"
                );
                tried.push(next.model.id.clone());
                answering.send_replace(next.model.clone());
                attempt = next;
            }
            None => {
                // The client gets the error of the model it asked for.
                let _ = client.send(ChatEvent::Done(Box::new(outcome_of(&state, &model, report)))).await;
                return;
            }
        }
    }
}

/// The ledger status of an attempt that a fallback model took over.
pub const FAILED_OVER: &str = "failed_over";

/// The model to try after `model`, if one is configured.
pub(super) fn fallback_of(state: &AppState, model: &Model) -> Option<Model> {
    std::iter::once(&model.id)
        .chain(model.aliases.iter())
        .find_map(|name| state.settings.fallback_models.get(name))
        .and_then(|name| state.prices.resolve(name).cloned())
}

/// Whether a run failed in a way another model may not.
pub(super) fn overloaded_upstream(end: &RunEnd) -> bool {
    matches!(end, RunEnd::Failed { api_status: Some(429 | 529), .. })
}

/// Admits and reserves the fallback attempt of `failed`. A refusal is
/// written to the ledger under the fallback's request id.
async fn fall_back(
    state: &AppState,
    failed: &ChatRequest,
    request_id: String,
    job: &Job,
    class: Option<JobClass>,
    model: Model,
) -> Option<Attempt> {
    let mut request = failed.clone();
    request.request_id = request_id;
    let max_tokens = job.max_output_tokens.map(|max| max.min(model.max_output_tokens));
    let choice = Choice { model: model.id.clone(), max_tokens, route: None };
    // A place in the pool, then the reservation, as for a first attempt.
    let prepared = async {
        let plan = plan(state, &request, &choice)?;
        let admission = admit(state, &plan.model, class.clone().unwrap_or(JobClass::Interactive))?;
        let reservation = state.budget.reserve(reservation_for(&request, &plan.model, plan.amount)).await?;
        Ok::<_, ApiError>((plan, admission, reservation))
    };
    let (plan, admission, reservation) = match prepared.await {
        Ok(prepared) => prepared,
        Err(error) => {
            record_refusal(state, &request, &error);
            return None;
        }
    };
    let job = Job {
        model: plan.model.cli_name().to_string(),
        model_id: plan.model.id.clone(),
        max_output_tokens: max_tokens,
        max_budget: plan.amount,
        ..job.clone()
    };
    let class = fallback_of(state, &plan.model).and(class);
    Some(Attempt { model: plan.model, admission, job, books: Books { request, reservation }, class })
}
