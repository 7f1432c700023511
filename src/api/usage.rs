//! `GET /v1/usage`: a project's spend in one period, by model.

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::Context;
use crate::app::AppState;
use crate::budget::PeriodUsage;
use crate::error::{ApiError, ErrorBody};
use crate::store::PeriodKind;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Defaults to `default`.
    pub project_id: Option<String>,
    /// `day`, `week` or `month` (default `day`).
    #[param(pattern = "^(day|week|month)$")]
    pub period: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub project_id: String,
    pub period: PeriodKind,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Null when the period has no limit.
    pub limit_usd: Option<f64>,
    pub spent_usd: f64,
    pub reserved_usd: f64,
    /// Null when the period has no limit.
    pub remaining_usd: Option<f64>,
    pub by_model: Vec<ModelUsageRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelUsageRow {
    pub model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

impl From<PeriodUsage> for UsageReport {
    fn from(u: PeriodUsage) -> UsageReport {
        UsageReport {
            limit_usd: u.limit.map(|l| l.as_usd()),
            remaining_usd: u.remaining().map(|r| r.as_usd()),
            spent_usd: u.spent.as_usd(),
            reserved_usd: u.reserved.as_usd(),
            by_model: u
                .by_model
                .into_iter()
                .map(|m| ModelUsageRow {
                    model: m.model,
                    requests: m.requests,
                    input_tokens: m.input_tokens,
                    output_tokens: m.output_tokens,
                    cost_usd: m.cost.as_usd(),
                })
                .collect(),
            project_id: u.project_id,
            period: u.period,
            period_start: u.period_start,
            period_end: u.period_end,
        }
    }
}

/// A project's budget and spend for the current day, week or month.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "budget",
    params(UsageQuery),
    responses(
        (status = 200, body = UsageReport),
        (status = 400, description = "Invalid period or project id", body = ErrorBody),
        (status = 404, description = "Unknown project", body = ErrorBody),
    )
)]
pub async fn get_usage(
    State(state): State<AppState>,
    ctx: Context,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    let project_id = ctx.project(query.project_id.as_deref())?;
    let period = query.period.as_deref().unwrap_or("day");
    let Some(kind) = PeriodKind::parse(period) else {
        return Err(ApiError::bad_request(
            format!("invalid period {period:?}: use day, week or month"),
            "period",
        ));
    };
    Ok(Json(state.budget.usage(&project_id, kind).await?.into()))
}
