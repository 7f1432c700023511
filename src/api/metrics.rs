//! `GET /metrics`: Prometheus metrics, for the admin key or the metrics token.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::store::PeriodKind;

/// Marks a request that presented the configured metrics token.
#[derive(Debug, Clone, Copy)]
pub struct MetricsToken;

/// Prometheus metrics in OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "info",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("admin_key" = [])))]
pub async fn metrics(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let allowed = request.extensions().get::<MetricsToken>().is_some()
        || request.extensions().get::<Caller>().is_some_and(Caller::is_admin);
    if !allowed {
        return Err(ApiError::Forbidden("metrics need the admin key or the metrics token".into()));
    }
    let mut budgets = Vec::new();
    for project in state.budget.store().list_projects().await? {
        for kind in PeriodKind::ALL {
            if project.limits.get(kind).is_none() {
                continue;
            }
            let usage = state.budget.usage(&project.id, kind).await?;
            if let Some(remaining) = usage.remaining() {
                budgets.push((project.id.clone(), kind.as_str(), remaining.as_usd()));
            }
        }
    }
    let mut pools = vec![("cli", state.pool.state())];
    if let Some(api) = &state.api_pool {
        pools.push(("api", api.state()));
    }
    let warm = state.warm.as_ref().map(|warm| warm.state());
    let text = state.metrics.render(&pools, state.pool.stats(), warm.as_ref(), &budgets);
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response())
}

/// Model label a handler leaves on its response for the request counter.
#[derive(Debug, Clone)]
pub struct ModelLabel(pub String);

/// Counts requests by route, method, status and model, and times them.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let model = response.extensions().get::<ModelLabel>().map(|m| m.0.clone()).unwrap_or_default();
    let labels = crate::metrics::RequestLabels {
        route: route.clone(),
        method,
        status: response.status().as_u16(),
        model,
    };
    state.metrics.requests.get_or_create(&labels).inc();
    state
        .metrics
        .request_seconds
        .get_or_create(&crate::metrics::RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}
