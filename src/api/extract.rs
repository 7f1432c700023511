//! Extractors that turn every client mistake into an OpenAI-shaped error:
//! malformed JSON names the field, an oversized body is a 413.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::auth::Caller;
use crate::error::ApiError;

/// A JSON body parsed with the failing field's path in the error.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the request body is larger than this gateway accepts".into())
            } else if is_timeout(&rejection) {
                ApiError::ClientTimeout("the request body did not arrive in time".into())
            } else {
                ApiError::bad_request(format!("cannot read the request body: {rejection}"), None)
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn is_timeout(rejection: &axum::extract::rejection::BytesRejection) -> bool {
    use std::error::Error;
    let mut source: Option<&(dyn Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() || error.to_string().contains("timed out") {
            return true;
        }
        source = error.source();
    }
    false
}

/// Parses a request body, which must be a JSON object (serde would also
/// take an array for a struct, field by field in order).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the request body must be a JSON object", None));
    }
    // Most bodies are valid: parse them plainly, and only a body that fails
    // a second time with the failing field's path tracked, for the message.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::bad_request(format!("the request body is not valid JSON: {inner}"), None)
        } else {
            ApiError::BadRequest {
                message: format!("invalid field `{path}`: {inner}"),
                param: Some(path),
                code: None,
            }
        }
    })
}

/// Who is asking and under which id: set by the request-id middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Request facts every handler may want.
#[derive(Debug, Clone)]
pub struct Context {
    pub request_id: String,
    pub received_at: Instant,
    /// From the `X-Project-Id` header, if sent.
    pub project_header: Option<String>,
    pub caller: Caller,
}

impl<S: Send + Sync> FromRequestParts<S> for Context {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let request_id =
            parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_else(super::new_request_id);
        let received_at = parts.extensions.get::<Instant>().copied().unwrap_or_else(Instant::now);
        let project_header = match parts.headers.get("x-project-id") {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .filter(|id| valid_project_id(id))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "the X-Project-Id header is not a project id: use 1 to 64 of a-z, 0-9, _ and -",
                            "X-Project-Id",
                        )
                    })?
                    .to_string(),
            ),
        };
        // Only the public routes (`/`, `/health`, the docs) run without the
        // auth middleware, and they do not act for a project.
        let caller = parts.extensions.get::<Caller>().cloned().unwrap_or(Caller::Open);
        Ok(Context { request_id, received_at, project_header, caller })
    }
}

impl Context {
    /// The project a request acts for: the body's `project_id`, else the
    /// `X-Project-Id` header, else `default`, checked for shape.
    ///
    /// A project key always acts for its own project; naming another is a
    /// 403, so a key can never read or spend another project's anything.
    pub fn project(&self, from_body: Option<&str>) -> Result<String, ApiError> {
        let asked = from_body.or(self.project_header.as_deref());
        if let Caller::Project(key) = &self.caller {
            if let Some(asked) = asked.filter(|a| *a != key.project_id) {
                return Err(ApiError::Forbidden(format!(
                    "this API key belongs to project {:?} and cannot act for project {asked:?}",
                    key.project_id
                )));
            }
            return Ok(key.project_id.clone());
        }
        let project = asked.unwrap_or("default").to_string();
        check_project_id(&project, "project_id")?;
        Ok(project)
    }

    pub fn key_id(&self) -> Option<String> {
        self.caller.key_id().map(str::to_string)
    }
}

/// A list's page size: `default` when not given, else 1 to `max`.
pub fn page_size(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit must be 1 to {max}, not {n}"), "limit")),
    }
}

/// Checks a project id against `[a-z0-9_-]{1,64}`.
pub fn valid_project_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub fn check_project_id(id: &str, param: &'static str) -> Result<(), ApiError> {
    if valid_project_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            format!("invalid project id {id:?}: use 1 to 64 of a-z, 0-9, _ and -"),
            param,
        ))
    }
}
