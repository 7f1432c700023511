//! `/admin/projects/{id}/agent-policy`: set and read a project's agent
//! policy. A stored policy wins over one from the settings.

use axum::extract::{Path, State};
use axum::Json;

use super::extract::JsonBody;
use crate::agent::AgentPolicy;
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};

/// Sets a project's agent policy (replacing any before it). Fields left
/// out take their defaults: no roots, no tools, 10 turns, 1 USD a task, no
/// MCP servers, permissions checked.
#[utoipa::path(put, path = "/admin/projects/{id}/agent-policy", tag = "admin", params(("id" = String, Path)),
    request_body = AgentPolicy,
    responses((status = 200, body = AgentPolicy), (status = 400, description = "A field is invalid (named)", body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn put_agent_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(policy): JsonBody<AgentPolicy>,
) -> Result<Json<AgentPolicy>, ApiError> {
    super::admin::load(&state, &id).await?;
    policy.validate().map_err(|e| ApiError::BadRequest {
        message: format!("{}: {}", e.field, e.message),
        param: Some(e.field),
        code: None,
    })?;
    let json = serde_json::to_string(&policy).map_err(ApiError::internal)?;
    let now = state.budget.now().timestamp_millis();
    state.budget.store().put_agent_policy(&id, &json, now).await?;
    Ok(Json(policy))
}

/// Reads a project's agent policy (stored, else from the settings).
#[utoipa::path(get, path = "/admin/projects/{id}/agent-policy", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = AgentPolicy), (status = 404, description = "No such project, or no policy", body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn get_agent_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AgentPolicy>, ApiError> {
    super::admin::load(&state, &id).await?;
    match crate::agent::policy_of(&state, &id).await? {
        Some(policy) => Ok(Json(policy)),
        None => Err(ApiError::not_found(format!("project {id:?} has no agent policy"))),
    }
}
