//! `GET /`, `GET /health`, `GET /v1/models` and `GET /v1/models/{model}`.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::chat::resolve_model;
use crate::error::{ApiError, ErrorBody};
use crate::pricing::Model;
use crate::workers::warm::WarmState;
use crate::workers::PoolState;

#[derive(Serialize, ToSchema)]
pub struct RootInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub docs: &'static str,
    pub redoc: &'static str,
    pub openapi: &'static str,
    pub health: &'static str,
}

/// Names the service and links to its documentation.
#[utoipa::path(get, path = "/", tag = "info", responses((status = 200, body = RootInfo)))]
pub async fn root() -> Json<RootInfo> {
    Json(RootInfo {
        name: "ccgate",
        version: env!("CARGO_PKG_VERSION"),
        docs: "/docs",
        redoc: "/redoc",
        openapi: "/openapi.json",
        health: "/health",
    })
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` while the gateway serves requests.
    pub status: &'static str,
    pub version: &'static str,
    pub workers: PoolState,
    /// Pre-started CLI processes (absent when `warm_pool` is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm: Option<WarmState>,
    /// The direct (Messages API) backend's pool, when a model uses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_workers: Option<PoolState>,
    /// The backend of models not named in `backends` (`cli` or `api`).
    pub default_backend: String,
}

/// Liveness and the worker pool's state.
#[utoipa::path(get, path = "/health", tag = "info", responses((status = 200, body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        workers: state.pool.state(),
        warm: state.warm.as_ref().map(|warm| warm.state()),
        api_workers: state.api_pool.as_ref().map(|pool| pool.state()),
        default_backend: state.settings.default_backend.clone(),
    })
}

/// OpenAI's model list and Anthropic's in one object: each SDK reads the
/// fields it knows (`object`/`data` and `data`/`has_more`/`first_id`/
/// `last_id`).
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
    /// Anthropic's paging: the whole list is always one page.
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// A model as both OpenAI's (`id`, `object`, `created`, `owned_by`) and
/// Anthropic's (`id`, `type`, `display_name`, `created_at`,
/// `max_input_tokens`, `max_tokens`) model objects describe it.
#[derive(Serialize, ToSchema)]
pub struct ModelObject {
    /// The name it is listed under: the model's id or one of its aliases.
    pub id: String,
    /// `model` (OpenAI).
    pub object: &'static str,
    /// Unknown: 0 (OpenAI).
    pub created: i64,
    pub owned_by: &'static str,
    /// `model` (Anthropic).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub display_name: String,
    /// Unknown: the epoch (Anthropic).
    pub created_at: &'static str,
    /// The context window (Anthropic's name for it).
    pub max_input_tokens: u64,
    /// The most output a request may ask for (Anthropic's name for it).
    pub max_tokens: u64,
    /// ccgate extension: routing tier, context window and maximum output.
    pub tier: String,
    pub context_window: u64,
    pub max_output_tokens: u64,
    pub aliases: Vec<String>,
}

impl ModelObject {
    fn of(model: &Model, name: &str) -> ModelObject {
        ModelObject {
            id: name.to_string(),
            object: "model",
            created: 0,
            owned_by: "anthropic",
            kind: "model",
            display_name: model.display_name.clone(),
            created_at: "1970-01-01T00:00:00Z",
            max_input_tokens: model.context_window,
            max_tokens: model.max_output_tokens,
            tier: model.tier.clone(),
            context_window: model.context_window,
            max_output_tokens: model.max_output_tokens,
            aliases: model.aliases.clone(),
        }
    }
}

/// The models this gateway serves, in OpenAI's list format (which
/// Anthropic's SDK reads too). Each model is listed under its id and each
/// of its aliases.
#[utoipa::path(get, path = "/v1/models", tag = "chat", responses((status = 200, body = ModelList)))]
pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    let data: Vec<ModelObject> = state
        .prices
        .models()
        .iter()
        .flat_map(|model| {
            std::iter::once(&model.id).chain(model.aliases.iter()).map(|name| ModelObject::of(model, name))
        })
        .collect();
    let (first_id, last_id) = (data.first().map(|m| m.id.clone()), data.last().map(|m| m.id.clone()));
    Json(ModelList { object: "list", data, has_more: false, first_id, last_id })
}

/// One model, by id or alias (OpenAI's and Anthropic's `models.retrieve`).
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "chat",
    params(("model" = String, Path, description = "A model id or alias")),
    responses(
        (status = 200, body = ModelObject),
        (status = 404, description = "No such model is served here", body = ErrorBody),
    )
)]
pub async fn get_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let model = resolve_model(&state, &name)?;
    Ok(Json(ModelObject::of(&model, &name)))
}
