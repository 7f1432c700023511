//! HTTP routes: thin handlers that plan a reply through `Sim` and render it as
//! the real API would (JSON message or SSE stream).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::json;

use crate::error::ApiError;
use crate::reply::{Outcome, Plan};
use crate::response::{self, Step};
use crate::state::Sim;

/// The real API accepts request bodies up to 32 MB.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// All routes of the simulated API.
pub fn router(sim: Sim) -> Router {
    Router::new()
        .route("/v1/messages", post(create_message))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .fallback(unknown_path)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(log_request))
        .with_state(sim)
}

async fn create_message(State(sim): State<Sim>, body: Result<Bytes, BytesRejection>) -> Response {
    match body.map_err(body_error).and_then(|body| sim.plan_message(&body)) {
        Ok(plan) => render(&sim, plan).await,
        Err(err) => err.into_response(),
    }
}

async fn count_tokens(State(sim): State<Sim>, body: Result<Bytes, BytesRejection>) -> Response {
    match body.map_err(body_error).and_then(|body| sim.count_tokens(&body)) {
        Ok(input_tokens) => Json(json!({"input_tokens": input_tokens})).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn unknown_path() -> ApiError {
    ApiError::not_found("Not Found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

/// Logs each request at debug level, so `RUST_LOG=ccgate_sim=debug` shows
/// what a client (such as the CLI) calls besides `/v1/messages`.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    tracing::debug!(%method, %uri, status = response.status().as_u16(), "request");
    response
}

fn body_error(rejection: BytesRejection) -> ApiError {
    ApiError::new(rejection.status(), rejection.body_text())
}

async fn render(sim: &Sim, plan: Plan) -> Response {
    let id = response::message_id();
    match (plan.outcome, plan.stream) {
        (Outcome::Fail(err), _) => err.into_response(),
        (Outcome::Hang, true) => {
            let steps = response::opening_steps(&id, &plan.model, plan.input_tokens);
            sse(sim, steps, true)
        }
        (Outcome::Hang, false) => {
            let _open = sim.reply_guard();
            sim.shutdown_signal().await;
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ccgate-sim: shutting down").into_response()
        }
        (Outcome::Reply(reply), true) => {
            let steps = response::reply_steps(&id, &plan.model, plan.input_tokens, &reply, plan.timing);
            sse(sim, steps, false)
        }
        (Outcome::Reply(reply), false) => {
            // Take as long as the stream would, but no longer than the server lives.
            let wait = response::duration(&reply, plan.timing);
            if !wait.is_zero() {
                let _open = sim.reply_guard();
                let _ = tokio::time::timeout(wait, sim.shutdown_signal()).await;
            }
            Json(response::message_json(&id, &plan.model, plan.input_tokens, &reply)).into_response()
        }
    }
}

/// An SSE response sending `steps` at their pace, then either ending or, when
/// `hang` is set, staying open. It also ends at shutdown; a client that goes
/// away drops it.
fn sse(sim: &Sim, steps: Vec<Step>, hang: bool) -> Response {
    let guard = sim.reply_guard();
    let events = futures::stream::iter(steps).then(move |step| async move {
        if step.delay > Duration::ZERO {
            tokio::time::sleep(step.delay).await;
        }
        Ok::<_, Infallible>(step.frame)
    });
    let tail = if hang { futures::stream::pending().boxed() } else { futures::stream::empty().boxed() };
    let body = events.chain(tail).take_until(sim.shutdown_signal()).map(move |frame| {
        let _open = &guard;
        frame
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
