//! A small HTTP client for a running gateway: builds URLs from path
//! segments (so ids are always escaped), sends the key as a bearer token,
//! and turns the gateway's OpenAI error objects into `ClientError::Gateway`.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Long enough for a slow database, short enough that a hung gateway does
/// not hang a script.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid gateway URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the gateway at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The gateway answered with an error; `message` is the OpenAI error's.
    #[error("{message} (HTTP {status}{})", kind.as_deref().map(|k| format!(", {k}")).unwrap_or_default())]
    Gateway { status: u16, message: String, kind: Option<String> },
    #[error("unreadable reply from {url}: {reason}")]
    Decode { url: String, reason: String },
}

pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: Option<String>,
}

impl Client {
    /// `base_url` is the gateway's root (`http://host:port`, or a path
    /// prefix behind a proxy); `key` is sent as `Authorization: Bearer`.
    pub fn new(base_url: &str, key: Option<String>) -> Result<Client, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl { url: base_url.to_string(), reason: reason.into() };
        let base = Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad("use http://HOST:PORT or https://HOST"));
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("ccgate-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(&chain(&e)))?;
        Ok(Client { http, base, key: key.filter(|k| !k.is_empty()) })
    }

    pub async fn get(&self, path: &[&str], query: &[(&str, &str)]) -> Result<Value, ClientError> {
        self.send(Method::GET, path, query, None).await
    }

    pub async fn post(&self, path: &[&str], body: &Value) -> Result<Value, ClientError> {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn patch(&self, path: &[&str], body: &Value) -> Result<Value, ClientError> {
        self.send(Method::PATCH, path, &[], Some(body)).await
    }

    /// Sends a DELETE; success carries no body (204).
    pub async fn delete(&self, path: &[&str]) -> Result<(), ClientError> {
        self.send(Method::DELETE, path, &[], None).await.map(drop)
    }

    fn url(&self, path: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        // `new` refused URLs that cannot be a base, so segments exist.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(path);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Returns the reply's JSON (`Value::Null` for an empty body).
    async fn send(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = self.url(path, query);
        let mut request = self.http.request(method, url.clone());
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: self.base.to_string(), reason: chain(&e) })?;
        let status = response.status();
        let decode = |reason: String| ClientError::Decode { url: url.to_string(), reason };
        let bytes = response.bytes().await.map_err(|e| decode(chain(&e)))?;
        if !status.is_success() {
            return Err(gateway_error(status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()))
    }
}

/// The OpenAI error object's message, or what the body says if it is not
/// one (a proxy's error page, say).
fn gateway_error(status: StatusCode, body: &[u8]) -> ClientError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let text = |field: &str| error.and_then(|e| e.get(field)).and_then(Value::as_str).map(str::to_string);
    let message = text("message").unwrap_or_else(|| {
        let body = String::from_utf8_lossy(body);
        let body = body.trim();
        match body.is_empty() {
            true => status.canonical_reason().unwrap_or("error").to_string(),
            false => body.chars().take(300).collect(),
        }
    });
    ClientError::Gateway { status: status.as_u16(), message, kind: text("type") }
}

/// An error with its causes, which for reqwest is where the useful part
/// ("Connection refused") is.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_segments_and_keep_a_base_path() {
        let client = Client::new("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(
            client.url(&["admin", "projects", "a/b?c"], &[]).as_str(),
            "http://127.0.0.1:8080/admin/projects/a%2Fb%3Fc"
        );
        let client = Client::new("https://gw.example/ccgate/", None).unwrap();
        assert_eq!(
            client.url(&["v1", "usage"], &[("project_id", "acme"), ("period", "day")]).as_str(),
            "https://gw.example/ccgate/v1/usage?project_id=acme&period=day"
        );
        assert!(Client::new("localhost:8080", None).is_err());
        assert!(Client::new("ftp://host", None).is_err());
    }

    #[test]
    fn gateway_errors_carry_the_openai_message() {
        let body = br#"{"error":{"message":"invalid API key","type":"authentication_error","param":null,"code":"invalid_api_key"}}"#;
        let error = gateway_error(StatusCode::UNAUTHORIZED, body);
        assert_eq!(error.to_string(), "invalid API key (HTTP 401, authentication_error)");
        let error = gateway_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(error.to_string(), "<html>bad gateway</html> (HTTP 502)");
        let error = gateway_error(StatusCode::NOT_FOUND, b"");
        assert_eq!(error.to_string(), "Not Found (HTTP 404)");
    }
}
