//! `POST /v1/batch`: a batch run while its client waits. Every task is
//! checked first, then the batch as a whole against the budget (in order:
//! the tasks that no longer fit fail with `insufficient_quota` and never
//! run), and the rest run in parallel on the batch share of the pool, at
//! most `max_concurrency` at once. One task's failure never fails another.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::Value;

use super::task::{self, Success, TaskEnd, TaskInput};
use crate::app::AppState;
use crate::chat::{self, ChatRequest};
use crate::error::ApiError;
use crate::money::Micros;
use crate::store::StoreError;

pub const ENDPOINT: &str = "/v1/batch";

/// A batch as its client sent it, in the gateway's terms.
pub struct SyncBatch {
    pub request_id: String,
    pub project_id: String,
    pub key_id: Option<String>,
    /// At most this many tasks at once (never more than the batch share).
    pub max_concurrency: Option<usize>,
    pub received_at: Instant,
    pub tasks: Vec<SyncTask>,
}

pub struct SyncTask {
    pub custom_id: Option<String>,
    /// The task's chat-completions fields.
    pub body: Value,
}

pub struct TaskResult {
    pub custom_id: Option<String>,
    pub end: Result<Box<Success>, ApiError>,
}

pub struct SyncReport {
    /// In the order of the tasks.
    pub results: Vec<TaskResult>,
    pub wall_time: Duration,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Micros,
    pub by_model: BTreeMap<String, ModelStats>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Micros,
}

impl SyncReport {
    /// Totals over the tasks that ran to a success (failed runs are charged
    /// in the ledger too, but carry no usage here).
    pub fn stats(&self) -> Stats {
        let mut stats = Stats { total: self.results.len() as u64, ..Stats::default() };
        for result in &self.results {
            let Ok(success) = &result.end else {
                stats.failed += 1;
                continue;
            };
            stats.succeeded += 1;
            let input = success.usage.input_tokens
                + success.usage.cache_read_tokens
                + success.usage.cache_write_tokens;
            stats.input_tokens += input;
            stats.output_tokens += success.usage.output_tokens;
            stats.cost = stats.cost.saturating_add(success.cost);
            let model = stats.by_model.entry(success.model.clone()).or_default();
            model.requests += 1;
            model.input_tokens += input;
            model.output_tokens += success.usage.output_tokens;
            model.cost = model.cost.saturating_add(success.cost);
        }
        stats
    }
}

/// Runs a whole batch and reports every task. An error here refuses the
/// batch as a whole (an unknown project), before any task ran.
pub async fn run(state: &AppState, batch: SyncBatch) -> Result<SyncReport, ApiError> {
    let project = batch.project_id.as_str();
    if state.budget.store().get_project(project).await?.is_none() {
        return Err(StoreError::NotFound(format!("project {project:?} not found")).into());
    }
    let mut ends: Vec<Option<Result<Box<Success>, ApiError>>> = Vec::with_capacity(batch.tasks.len());
    let mut checked: Vec<(usize, ChatRequest)> = Vec::new();
    let mut seen = HashSet::new();
    for (index, task) in batch.tasks.iter().enumerate() {
        let input = TaskInput {
            request_id: format!("{}-{index}", batch.request_id),
            project_id: project,
            key_id: batch.key_id.as_deref(),
            endpoint: ENDPOINT,
            body: &task.body,
        };
        let custom_id_error = match &task.custom_id {
            None => Some(format!("requests[{index}] needs a custom_id (a string)")),
            Some(id) if !seen.insert(id.as_str()) => {
                Some(format!("requests[{index}]: custom_id {id:?} is used by an earlier request"))
            }
            Some(_) => None,
        };
        if let Some(message) = custom_id_error {
            ends.push(Some(Err(task::refuse(state, input, ApiError::bad_request(message, "custom_id")))));
            continue;
        }
        match task::parse(state, input) {
            Ok(request) => {
                checked.push((index, request));
                ends.push(None);
            }
            Err(error) => ends.push(Some(Err(error))),
        }
    }

    let runnable = fit_budget(state, project, checked, &mut ends).await?;
    // Each request waits for a slot of the pool that serves its model.
    let concurrency = batch.max_concurrency.unwrap_or(usize::MAX).clamp(1, state.most_batch_slots());
    let finished: Vec<(usize, TaskEnd)> = stream::iter(runnable)
        .map(|(index, request)| async move {
            let slot = state.pool_for_name(&request.model).batch_slot().await;
            (index, task::run(state, request, slot).await)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (index, end) in finished {
        ends[index] = Some(match end {
            TaskEnd::Succeeded(success) => Ok(success),
            TaskEnd::Failed(error) => Err(error),
            TaskEnd::Interrupted => {
                Err(ApiError::Overloaded("the gateway stopped before this request finished".into()))
            }
        });
    }
    let results = batch
        .tasks
        .into_iter()
        .zip(ends)
        .map(|(task, end)| TaskResult {
            custom_id: task.custom_id,
            end: end.unwrap_or_else(|| Err(ApiError::internal("a batch task never ran"))),
        })
        .collect();
    Ok(SyncReport { results, wall_time: batch.received_at.elapsed() })
}

/// Keeps the tasks whose worst-case costs, added up in order, fit what the
/// project has left; the others fail with `insufficient_quota` (and a
/// ledger row) without running. Tasks the price table refuses (an unknown
/// model, a context too long) fail here too, with their own error.
async fn fit_budget(
    state: &AppState,
    project: &str,
    checked: Vec<(usize, ChatRequest)>,
    ends: &mut [Option<Result<Box<Success>, ApiError>>],
) -> Result<Vec<(usize, ChatRequest)>, ApiError> {
    let headroom = state.budget.headroom(project).await?;
    let mut committed = Micros::ZERO;
    let mut runnable = Vec::with_capacity(checked.len());
    for (index, request) in checked {
        let amount = match chat::estimate(state, &request).await {
            Ok(amount) => amount,
            Err(error) => {
                chat::record_refusal(state, &request, &error);
                ends[index] = Some(Err(error));
                continue;
            }
        };
        if let Some((remaining, limit)) = headroom {
            if committed.saturating_add(amount) > remaining {
                let error = ApiError::InsufficientQuota(format!(
                    "project {project:?} cannot cover this request of the batch: it has {remaining} left of \
                     its {limit} limit, the requests before it in this batch may cost up to {committed}, and \
                     this one up to {amount}; it did not run"
                ));
                chat::record_refusal(state, &request, &error);
                ends[index] = Some(Err(error));
                continue;
            }
        }
        committed = committed.saturating_add(amount);
        runnable.push((index, request));
    }
    Ok(runnable)
}
