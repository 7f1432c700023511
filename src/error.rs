//! One error type for the HTTP edge. Every failure a client can see becomes
//! an OpenAI error object (`{"error":{"message","type","param","code"}}`)
//! with its status code decided in exactly one `match`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::budget::BudgetError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { message: String, param: Option<String>, code: Option<&'static str> },
    #[error("{message}")]
    NotFound { message: String, param: Option<String>, code: Option<&'static str> },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The client was too slow sending its request.
    #[error("{0}")]
    ClientTimeout(String),
    #[error("{0}")]
    InsufficientQuota(String),
    #[error("{message}")]
    RateLimited { message: String, retry_after_secs: Option<u64> },
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    CliUnavailable(String),
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    Timeout(String),
    /// Details go to the log; the client only learns that something broke.
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always present; null when no one field is at fault.
    #[schema(required = true)]
    pub param: Option<String>,
    /// Always present; null when the type says enough.
    #[schema(required = true)]
    pub code: Option<&'static str>,
}

/// Seconds a client is asked to wait after a 503 for a full queue.
const OVERLOAD_RETRY_AFTER_SECS: u64 = 1;

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: impl Into<Option<&'static str>>) -> ApiError {
        ApiError::BadRequest { message: message.into(), param: param.into().map(String::from), code: None }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::NotFound { message: message.into(), param: None, code: None }
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(error.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::InsufficientQuota(_) | ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded(_) | ApiError::CliUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error object, as sent to clients (also inside SSE streams
    /// and batch results).
    pub fn to_object(&self) -> ErrorObject {
        let (kind, code, param) = match self {
            ApiError::BadRequest { code, param, .. } => ("invalid_request_error", *code, param.clone()),
            ApiError::NotFound { code, param, .. } => ("invalid_request_error", *code, param.clone()),
            ApiError::Unauthorized(_) => ("authentication_error", Some("invalid_api_key"), None),
            ApiError::Forbidden(_) => ("permission_error", None, None),
            ApiError::Conflict(_) => ("invalid_request_error", Some("conflict"), None),
            ApiError::PayloadTooLarge(_) => ("invalid_request_error", Some("payload_too_large"), None),
            ApiError::ClientTimeout(_) => ("invalid_request_error", Some("request_timeout"), None),
            ApiError::InsufficientQuota(_) => ("insufficient_quota", Some("insufficient_quota"), None),
            ApiError::RateLimited { .. } => ("rate_limit_exceeded", Some("rate_limit_exceeded"), None),
            ApiError::Overloaded(_) => ("server_error", Some("overloaded"), None),
            ApiError::CliUnavailable(_) => ("server_error", Some("worker_unavailable"), None),
            ApiError::Upstream(_) => ("api_error", Some("upstream_error"), None),
            ApiError::Timeout(_) => ("timeout", Some("timeout"), None),
            ApiError::Internal(_) => ("server_error", None, None),
        };
        let message = match self {
            ApiError::Internal(_) => "internal error; see the gateway log for this request id".to_string(),
            other => other.to_string(),
        };
        ErrorObject { message, kind, param, code }
    }

    /// The short outcome name recorded in the ledger.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::NotFound { .. }
            | ApiError::PayloadTooLarge(_)
            | ApiError::ClientTimeout(_) => "invalid_request",
            ApiError::Unauthorized(_) | ApiError::Forbidden(_) => "denied",
            ApiError::Conflict(_) => "conflict",
            ApiError::InsufficientQuota(_) => "budget_exceeded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::CliUnavailable(_) => "worker_unavailable",
            ApiError::Upstream(_) => "upstream_error",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_secs, .. } => *retry_after_secs,
            ApiError::Overloaded(_) => Some(OVERLOAD_RETRY_AFTER_SECS),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error");
        }
        let status = self.status();
        let retry_after = self.retry_after();
        let object = self.to_object();
        let mut response = (status, axum::Json(ErrorBody { error: object.clone() })).into_response();
        // Routes that speak another wire format (`/v1/messages`) re-render
        // the error from this.
        response.extensions_mut().insert(object);
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(what) => ApiError::Conflict(what),
            other => ApiError::internal(other),
        }
    }
}

impl From<BudgetError> for ApiError {
    fn from(error: BudgetError) -> ApiError {
        match error {
            BudgetError::Exhausted { .. } => ApiError::InsufficientQuota(error.to_string()),
            BudgetError::Store(e) => e.into(),
        }
    }
}
