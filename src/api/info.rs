//! `GET /`, `GET /health` and `GET /v1/models`.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppState;
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

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
    /// ccgate extension: routing tier, context window and maximum output.
    pub tier: String,
    pub context_window: u64,
    pub max_output_tokens: u64,
    pub aliases: Vec<String>,
}

/// The models this gateway serves, in OpenAI's list format. Each model is
/// listed under its id and each of its aliases.
#[utoipa::path(get, path = "/v1/models", tag = "chat", responses((status = 200, body = ModelList)))]
pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    let mut data = Vec::new();
    for model in state.prices.models() {
        for id in std::iter::once(&model.id).chain(model.aliases.iter()) {
            data.push(ModelObject {
                id: id.clone(),
                object: "model",
                created: 0,
                owned_by: "anthropic",
                tier: model.tier.clone(),
                context_window: model.context_window,
                max_output_tokens: model.max_output_tokens,
                aliases: model.aliases.clone(),
            });
        }
    }
    Json(ModelList { object: "list", data })
}
