//! Anthropic-style error responses: `{"type":"error","error":{"type","message"}}`
//! with the status and error type the real API pairs together.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error the simulator answers with, real or simulated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for a `retry-after` header, when one is sent.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// The failure a `[sim:status=CODE]` directive or `--fail-status` asks for.
    /// Rate limits and overload come with `retry-after: 1` as the real API's do.
    pub fn simulated(code: u16) -> Self {
        // Directive parsing and the CLI only let 400..=599 through; anything
        // else still becomes a well-formed 500 rather than a panic.
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = matches!(status.as_u16(), 429 | 529).then_some(1);
        Self {
            status,
            message: format!("ccgate-sim: simulated {} {}", status.as_u16(), error_type(status)),
            retry_after,
        }
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The error `type` string for this status.
    pub fn error_type(&self) -> &'static str {
        error_type(self.status)
    }
}

/// Maps a status to the error type the Anthropic API uses for it.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ if status.is_client_error() => "invalid_request_error",
        _ => "api_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "error",
            "error": {"type": self.error_type(), "message": self.message},
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_anthropic_error_types() {
        for (code, kind, retry) in [
            (400, "invalid_request_error", None),
            (401, "authentication_error", None),
            (403, "permission_error", None),
            (404, "not_found_error", None),
            (413, "request_too_large", None),
            (429, "rate_limit_error", Some(1)),
            (500, "api_error", None),
            (503, "api_error", None),
            (529, "overloaded_error", Some(1)),
        ] {
            let err = ApiError::simulated(code);
            assert_eq!(err.status.as_u16(), code);
            assert_eq!(err.error_type(), kind, "status {code}");
            assert_eq!(err.retry_after, retry, "status {code}");
        }
    }
}
