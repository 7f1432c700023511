//! The HTTP edge: routes, middleware and the OpenAPI document. Handlers are
//! thin; wire formats live here and nowhere else.

pub mod admin;
pub mod chat;
pub mod extract;
pub mod info;
pub mod openai;
pub mod usage;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_redoc::{Redoc, Servable};
use utoipa_swagger_ui::SwaggerUi;

use crate::app::AppState;
use crate::error::ApiError;
use extract::RequestId;

#[derive(OpenApi)]
#[openapi(
    info(title = "ccgate", description = "An OpenAI-compatible gateway to Claude through Claude Code, with budgets."),
    modifiers(&SecuritySchemes),
    tags(
        (name = "chat", description = "OpenAI-compatible chat completions"),
        (name = "budget", description = "Usage and budgets"),
        (name = "admin", description = "Projects and budgets (admin key)"),
        (name = "info", description = "Service information"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and their OpenAPI document, built from the same list so the
/// two cannot disagree.
pub fn routes(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::create_project, admin::list_projects))
        .routes(routes!(admin::get_project, admin::update_project, admin::delete_project))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(info::root))
        .routes(routes!(info::health))
        .routes(routes!(info::list_models))
        .routes(routes!(chat::create_chat_completion))
        .routes(routes!(usage::get_usage))
        .merge(admin)
        .split_for_parts()
}

pub fn router(state: AppState) -> Router {
    let (routes, openapi) = routes(&state);
    let max_body = state.settings.max_body_bytes;
    routes
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi.clone()))
        .merge(Redoc::with_url("/redoc", openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> Response {
    let mut response = ApiError::bad_request(
        format!("method {} is not allowed on {}", request.method(), request.uri().path()),
        None,
    )
    .into_response();
    *response.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// Gives every request an id (the caller's `x-request-id` if it is sane),
/// echoes it back, and logs the request's end.
async fn request_id(mut request: Request, next: Next) -> Response {
    let received_at = Instant::now();
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    request.extensions_mut().insert(received_at);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    tracing::info!(
        request_id = %id,
        %method,
        %path,
        status = response.status().as_u16(),
        latency_ms = received_at.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// Guards `/admin/*`: the admin key when one is set; otherwise only while
/// the gateway listens on loopback.
async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match &state.settings.admin_key {
        Some(key) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given {
                Some(given) if constant_time_eq(given.as_bytes(), key.as_bytes()) => {
                    Ok(next.run(request).await)
                }
                Some(_) => Err(ApiError::Unauthorized("the admin key is wrong".into())),
                None => Err(ApiError::Unauthorized(
                    "the admin API needs `Authorization: Bearer <admin key>`".into(),
                )),
            }
        }
        None if state.settings.listen.ip().is_loopback() => Ok(next.run(request).await),
        None => Err(ApiError::Forbidden(
            "the admin API is disabled: set admin_key (CCGATE_ADMIN_KEY) to use it on a non-loopback address"
                .into(),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
