//! Writing a run down: settling its reservation with what it cost, its
//! metrics and log line, and the ledger rows of requests refused before
//! they held a reservation.

use std::time::Instant;

use super::run::{cost_of, Books};
use super::ChatRequest;
use crate::app::AppState;
use crate::config::Backend;
use crate::error::ApiError;
use crate::money::Micros;
use crate::pricing::Model;
use crate::store::{Completion, LedgerEntry};
use crate::workers::{RunEnd, RunReport};

/// Settles the reservation, records metrics and rate-limit tokens, and logs
/// the run.
pub(super) async fn conclude(
    state: &AppState,
    model: &Model,
    books: Books,
    report: RunReport,
    answered_at: Instant,
) {
    conclude_as(state, model, books, report, answered_at, None).await;
}

/// `conclude`, with the ledger status replaced by `status` when given.
pub(super) async fn conclude_as(
    state: &AppState,
    model: &Model,
    books: Books,
    report: RunReport,
    answered_at: Instant,
    status: Option<&str>,
) {
    let Books { request, reservation } = books;
    let cost = cost_of(model, &report);
    let error = error_for(state, model, &report.end);
    let mut completion = match &error {
        Some(error) => completion_for(&request, error, &report, cost),
        None => completion_for_success(&request, &report, cost),
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
    if completion.cost > reservation.amount {
        let model = completion.model_used.as_deref().unwrap_or(&model.id);
        let excess = Micros(completion.cost.0 - reservation.amount.0);
        state.metrics.observe_overrun(&request.project_id, model, excess.as_usd());
        tracing::warn!(
            request_id = %request.request_id,
            project = %request.project_id,
            model,
            reserved_usd = reservation.amount.as_usd(),
            cost_usd = completion.cost.as_usd(),
            "a run cost more than its reservation; it is charged in full"
        );
    }
    if let Err(e) = state.budget.settle(reservation, completion).await {
        tracing::error!(request_id = %request.request_id, error = %e, "failed to settle a reservation");
    }
    if let Some(key_id) = &request.key_id {
        state.limiter.record_tokens(key_id, tokens).await;
    }
}

pub(super) fn error_for(state: &AppState, model: &Model, end: &RunEnd) -> Option<ApiError> {
    let settings = &state.settings;
    // The direct backend forwards the client's request, so a 400 from the
    // API is the client's to fix; the CLI builds its own requests.
    let forwarded = || settings.backend_for(&model.id, &model.aliases) == Backend::Api;
    Some(match end {
        RunEnd::Completed => return None,
        RunEnd::Failed { api_status: Some(429), message, .. } => ApiError::RateLimited {
            message: format!("the upstream API is rate-limiting: {message}"),
            retry_after_secs: None,
        },
        RunEnd::Failed { api_status: Some(400), message, .. } if forwarded() => ApiError::BadRequest {
            message: format!("the upstream API refused the request: {message}"),
            param: None,
            code: None,
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

fn completion_for_success(request: &ChatRequest, report: &RunReport, cost: Micros) -> Completion {
    Completion {
        status: "succeeded".into(),
        http_status: Some(200),
        ..base_completion(request, report, cost)
    }
}

fn completion_for(request: &ChatRequest, error: &ApiError, report: &RunReport, cost: Micros) -> Completion {
    let client_gone = report.end == RunEnd::Cancelled;
    Completion {
        status: if client_gone { "client_disconnected".into() } else { error.outcome().into() },
        // 499: nginx's "client closed request", the usual record for it.
        http_status: Some(if client_gone { 499 } else { error.status().as_u16() }),
        error_message: Some(error.to_string()),
        ..base_completion(request, report, cost)
    }
}

fn base_completion(request: &ChatRequest, report: &RunReport, cost: Micros) -> Completion {
    let usage = report.usage;
    Completion {
        finished_at_ms: 0,
        model_used: report.model.clone(),
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
