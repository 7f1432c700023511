//! The HTTP edge: routes, middleware and the OpenAPI document. Handlers are
//! thin; wire formats live here and nowhere else.

pub mod admin;
pub mod agent_policy;
pub mod anthropic;
pub mod anthropic_content;
pub mod batch;
pub mod batches;
pub mod chat;
pub mod extract;
pub mod files;
pub mod info;
pub mod keys;
pub mod message_blocks;
pub mod messages;
pub mod metrics;
pub mod openai;
mod openapi;
pub mod responses;
pub mod route;
pub mod tasks;
pub mod usage;

use std::time::{Duration, Instant};

use tower_http::timeout::RequestBodyTimeoutLayer;

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

use futures::StreamExt;

use crate::app::AppState;
use crate::auth::{self, Caller};
use crate::error::ApiError;
use extract::RequestId;

#[derive(OpenApi)]
#[openapi(
    info(title = "ccgate", description = "An OpenAI- and Anthropic-compatible gateway to Claude through Claude Code, with budgets."),
    modifiers(&SecuritySchemes),
    // Named in a stream's description only (`ResponseSseEvent.data`).
    components(schemas(responses::ResponseEvent)),
    tags(
        (name = "chat", description = "OpenAI-compatible chat completions"),
        (name = "messages", description = "Anthropic-compatible messages (`POST /v1/messages`)"),
        (name = "budget", description = "Usage and budgets"),
        (name = "batch", description = "Batches: POST /v1/batch, and OpenAI's Files and Batch APIs"),
        (name = "tasks", description = "Async agent tasks, with their events as SSE"),
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
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::create_project, admin::list_projects))
        .routes(routes!(admin::get_project, admin::update_project, admin::delete_project))
        .routes(routes!(keys::create_key, keys::list_project_keys))
        .routes(routes!(keys::list_keys))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(agent_policy::put_agent_policy, agent_policy::get_agent_policy))
        .route_layer(middleware::from_fn(require_admin));
    // Uploads enforce `batch_max_body_bytes` themselves, as the parts stream in.
    let uploads = OpenApiRouter::new()
        .routes(routes!(files::create_file, files::list_files))
        .layer(DefaultBodyLimit::disable());
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(info::root))
        .routes(routes!(info::health))
        .routes(routes!(info::list_models))
        .routes(routes!(info::get_model))
        .routes(routes!(metrics::metrics))
        .routes(routes!(chat::create_chat_completion))
        .routes(routes!(messages::create_message))
        .routes(routes!(responses::create_response))
        .routes(routes!(messages::count_tokens))
        .routes(routes!(route::route))
        .routes(routes!(usage::get_usage))
        .routes(routes!(batch::run_batch))
        .routes(routes!(tasks::create_task))
        .routes(routes!(tasks::get_task))
        .routes(routes!(tasks::cancel_task))
        .routes(routes!(tasks::task_events))
        .routes(routes!(batches::create_batch, batches::list_batches))
        .routes(routes!(batches::get_batch))
        .routes(routes!(batches::cancel_batch))
        .routes(routes!(files::get_file, files::delete_file))
        .routes(routes!(files::get_file_content))
        .merge(uploads)
        .merge(admin)
        .split_for_parts();
    // After the routes are in: it describes every operation.
    openapi::CommonResponses.modify(&mut document);
    (router, document)
}

pub fn router(state: AppState) -> Router {
    let (routes, openapi) = routes();
    let max_body = state.settings.max_body_bytes;
    routes
        .route_layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi.clone()))
        .merge(Redoc::with_url("/redoc", openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        // A client that trickles its body holds a connection and memory;
        // it gets a 408 instead.
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(state.settings.client_body_timeout_secs)))
        .layer(middleware::from_fn(json_rejections))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        // Outside authentication, so its refusals get the Anthropic shape too.
        .layer(middleware::from_fn(messages::anthropic_errors))
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

/// Axum's own refusals (a path segment that is not UTF-8, a query string
/// that does not parse, an unsupported media type) are plain text; they
/// become the same JSON error object as every other refusal, with their
/// status kept.
async fn json_rejections(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("refused").to_string();
    }
    let error = match status {
        axum::http::StatusCode::NOT_FOUND => ApiError::not_found(message),
        axum::http::StatusCode::REQUEST_TIMEOUT => ApiError::ClientTimeout(message),
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
        status if status.is_server_error() => ApiError::internal(message),
        _ => ApiError::bad_request(message, None),
    };
    let mut response = error.into_response();
    *response.status_mut() = status;
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
        .unwrap_or_else(new_request_id);
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

/// A request id of the gateway's own: a UUID of version 7, which starts
/// with the time, so the ledger's index on request ids grows at its end (a
/// commit of many rows writes one or two of its pages, where random ids
/// wrote one page each).
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Paths anyone may read without a key.
fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/health" | "/openapi.json" | "/redoc")
        || path == "/docs"
        || path.starts_with("/docs/")
}

/// Deny by default: every route but the public ones needs a key (or the
/// open single-user mode), and project keys pass their rate limits here.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let headers = request.headers();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::to_string);
    if let (Some(expected), Some(given)) = (&state.settings.metrics_token, &token) {
        if request.uri().path() == "/metrics" && auth::constant_time_eq(expected.as_bytes(), given.as_bytes())
        {
            request.extensions_mut().insert(metrics::MetricsToken);
            return next.run(request).await;
        }
    }
    let now_ms = state.budget.now().timestamp_millis();
    let caller = match auth::authenticate(
        state.budget.store(),
        &state.keys,
        state.settings.admin_key.as_deref(),
        token.as_deref(),
        now_ms,
    )
    .await
    {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let mut limit_headers = axum::http::HeaderMap::new();
    let mut permit = None;
    if let Caller::Project(key) = &caller {
        if request.uri().path().starts_with("/v1/") {
            match state.limiter.admit(key).await {
                Ok(admitted) => {
                    limit_headers = admitted.headers;
                    permit = admitted.permit;
                }
                Err(refused) => {
                    let mut response = refused.error.into_response();
                    response.headers_mut().extend(refused.headers);
                    return response;
                }
            }
        }
    }
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    response.headers_mut().extend(limit_headers);
    match permit {
        // The concurrency permit lives as long as the body: a stream counts
        // as in flight until its last chunk.
        Some(permit) => response.map(|body| {
            axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _held = &permit;
                chunk
            }))
        }),
        None => response,
    }
}

/// Guards `/admin/*`: the admin key, or the open single-user mode (which
/// only exists on loopback).
async fn require_admin(request: Request, next: Next) -> Result<Response, ApiError> {
    match request.extensions().get::<Caller>() {
        Some(caller) if caller.is_admin() => Ok(next.run(request).await),
        Some(Caller::Project(_)) => {
            Err(ApiError::Forbidden("the admin API needs the admin key, not a project key".into()))
        }
        _ => Err(ApiError::Unauthorized("the admin API needs `Authorization: Bearer <admin key>`".into())),
    }
}
