//! `POST /v1/route`: what `"model": "auto"` would choose, and why, without
//! running anything.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{Context, JsonBody};
use super::openai::ChatMessage;
use super::usage::UsageReport;
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::money::Micros;
use crate::store::PeriodKind;

#[derive(Debug, Deserialize, ToSchema)]
pub struct RouteBody {
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    pub project_id: Option<String>,
    pub max_tokens: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RouteAnswer {
    /// The model id that would run.
    pub model: String,
    pub tier: String,
    /// 0 (trivial) to 1 (hardest).
    pub complexity_score: f64,
    pub estimated_input_tokens: u64,
    /// One line per factor (context, complexity, budget, policy) and the choice.
    pub reasons: Vec<String>,
    pub candidates: Vec<CandidateView>,
    pub budget: BudgetStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CandidateView {
    pub model: String,
    pub tier: String,
    pub estimated_cost_usd: f64,
    pub fits_context: bool,
    pub fits_budget: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetStatus {
    pub project_id: String,
    /// The tightest remaining amount over the limited periods; null when unlimited.
    pub remaining_usd: Option<f64>,
    /// Each period as `GET /v1/usage` reports it.
    pub periods: Vec<UsageReport>,
}

/// Chooses a model for a request as `"model": "auto"` would, and explains it.
#[utoipa::path(post, path = "/v1/route", tag = "chat", request_body = RouteBody,
    responses((status = 200, body = RouteAnswer),
              (status = 400, description = "Invalid request, or too long for every model (`context_length_exceeded`)", body = ErrorBody),
              (status = 404, description = "Unknown project", body = ErrorBody),
              (status = 429, description = "No model fits the remaining budget (`insufficient_quota`)", body = ErrorBody)))]
pub async fn route(
    State(state): State<AppState>,
    ctx: Context,
    JsonBody(body): JsonBody<RouteBody>,
) -> Result<Json<RouteAnswer>, ApiError> {
    let project_id = ctx.project(body.project_id.as_deref())?;
    if body.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty", "messages"));
    }
    let messages =
        body.messages.iter().enumerate().map(|(i, m)| m.to_domain(i)).collect::<Result<Vec<_>, _>>()?;
    let uses_client_tools = messages.iter().any(crate::chat::Message::has_tool_use);
    let mut periods = Vec::new();
    for kind in PeriodKind::ALL {
        periods.push(state.budget.usage(&project_id, kind).await?);
    }
    let decision =
        crate::routing::decide(&state, &project_id, &messages, body.max_tokens, uses_client_tools).await?;
    let model = crate::chat::resolve_model(&state, &decision.model)?;
    let remaining = periods.iter().filter_map(|p| p.remaining()).min();
    Ok(Json(RouteAnswer {
        model: model.id,
        tier: decision.tier,
        complexity_score: decision.complexity_score,
        estimated_input_tokens: decision.estimated_input_tokens,
        reasons: decision.reasons,
        candidates: decision
            .candidates
            .into_iter()
            .map(|c| CandidateView {
                model: state.prices.resolve(&c.model).map(|m| m.id.clone()).unwrap_or(c.model),
                tier: c.tier,
                estimated_cost_usd: Micros(c.estimated_cost_micro_usd as i64).as_usd(),
                fits_context: c.fits_context,
                fits_budget: c.fits_budget,
            })
            .collect(),
        budget: BudgetStatus {
            project_id,
            remaining_usd: remaining.map(Micros::as_usd),
            periods: periods.into_iter().map(UsageReport::from).collect(),
        },
    }))
}
