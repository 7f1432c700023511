//! The simulator's shared state: configuration, the request log, the memory
//! behind `[sim:fail_once=KEY]`, and the signal that ends slow or hung replies.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::SimConfig;
use crate::directives;
use crate::error::ApiError;
use crate::reply::{self, Plan};
use crate::request::MessagesRequest;
use crate::tokens;

/// One `POST /v1/messages` request as the simulator received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The `model` field, or empty when it was missing.
    pub model: String,
    pub stream: bool,
    /// The whole JSON body.
    pub body: Value,
    /// The prompt the reply answered (see `MessagesRequest::last_user_text`).
    pub last_user_text: String,
}

/// A handle on the simulator's state; clones share it.
#[derive(Debug, Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: SimConfig,
    // std mutexes: each critical section is a push or a copy, never across an await.
    log: Mutex<Vec<RecordedRequest>>,
    fail_once_seen: Mutex<HashSet<String>>,
    /// Replies still being sent (a stream) or waited for (a whole message).
    open_replies: AtomicUsize,
    shutdown: watch::Sender<bool>,
}

/// Counts one open reply for as long as it lives; the response body (or
/// the handler waiting to send a whole message) owns it, so a client that
/// goes away ends the count with it.
#[derive(Debug)]
pub(crate) struct ReplyGuard(Sim);

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        self.0.inner.open_replies.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                config,
                log: Mutex::default(),
                fail_once_seen: Mutex::default(),
                open_replies: AtomicUsize::new(0),
                shutdown,
            }),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    /// Every `/v1/messages` request with a JSON body received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.log).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.inner.log).len()
    }

    /// Replies still being streamed or waited for (a client that disconnects
    /// ends its own).
    pub fn open_replies(&self) -> usize {
        self.inner.open_replies.load(Ordering::Relaxed)
    }

    pub(crate) fn reply_guard(&self) -> ReplyGuard {
        self.inner.open_replies.fetch_add(1, Ordering::Relaxed);
        ReplyGuard(self.clone())
    }

    /// Forgets the request log and which `fail_once` keys were seen.
    pub fn clear(&self) {
        lock(&self.inner.log).clear();
        lock(&self.inner.fail_once_seen).clear();
    }

    /// Ends every delayed or hung reply now and lets the server stop.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Resolves once `begin_shutdown` has been called.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.shutdown.subscribe();
        async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    /// Records a `/v1/messages` body and plans its answer.
    pub(crate) fn plan_message(&self, body: &[u8]) -> Result<Plan, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| ApiError::invalid_request(format!("request body is not valid JSON: {err}")))?;
        let request = MessagesRequest::deserialize(&value);
        let last_user_text = request.as_ref().map(MessagesRequest::last_user_text).unwrap_or_default();
        tracing::debug!(
            model = value["model"].as_str().unwrap_or_default(),
            stream = value["stream"].as_bool().unwrap_or(false),
            prompt = %last_user_text.chars().take(80).collect::<String>(),
            "message request"
        );
        self.record(RecordedRequest {
            model: value["model"].as_str().unwrap_or_default().to_owned(),
            stream: value["stream"].as_bool().unwrap_or(false),
            body: value,
            last_user_text: last_user_text.clone(),
        });
        let request = request.map_err(|err| ApiError::invalid_request(err.to_string()))?;
        if request.max_tokens == Some(0) {
            return Err(ApiError::invalid_request("max_tokens: must be at least 1"));
        }
        crate::thinking::check(&request)?;
        let parsed = directives::parse(&last_user_text).map_err(|err| ApiError::invalid_request(err.0))?;
        let first_fail_once = parsed
            .directives
            .fail_once
            .as_ref()
            .is_some_and(|key| lock(&self.inner.fail_once_seen).insert(key.clone()));
        Ok(reply::plan(&request, &parsed, &self.inner.config, first_fail_once))
    }

    /// Input tokens of a `/v1/messages/count_tokens` body.
    pub(crate) fn count_tokens(&self, body: &[u8]) -> Result<u64, ApiError> {
        let request: MessagesRequest = serde_json::from_slice(body)
            .map_err(|err| ApiError::invalid_request(format!("invalid request body: {err}")))?;
        Ok(tokens::input(&request))
    }

    fn record(&self, request: RecordedRequest) {
        lock(&self.inner.log).push(request);
    }
}

/// A panic while holding one of these locks cannot leave the data half-changed
/// (every update is a single push, insert or clear), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Outcome;
    use serde_json::json;

    fn body(text: &str) -> Vec<u8> {
        json!({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": text}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn fail_once_fails_only_the_first_request_with_a_key() {
        let sim = Sim::new(SimConfig::default());
        let first = sim.plan_message(&body("[sim:fail_once=k1] hi")).unwrap();
        let Outcome::Fail(err) = first.outcome else { panic!("expected a failure, got {:?}", first.outcome) };
        assert_eq!((err.status.as_u16(), err.retry_after), (529, Some(0)));
        let second = sim.plan_message(&body("[sim:fail_once=k1] hi")).unwrap();
        assert!(matches!(second.outcome, Outcome::Reply(_)));
        let other_key = sim.plan_message(&body("[sim:fail_once=k2] hi")).unwrap();
        assert!(matches!(other_key.outcome, Outcome::Fail(_)));
        sim.clear();
        assert_eq!(sim.request_count(), 0);
        let after_clear = sim.plan_message(&body("[sim:fail_once=k1] hi")).unwrap();
        assert!(matches!(after_clear.outcome, Outcome::Fail(_)));
    }

    #[test]
    fn invalid_bodies_are_400_and_json_ones_are_logged() {
        let sim = Sim::new(SimConfig::default());
        assert_eq!(sim.plan_message(b"{not json").unwrap_err().status.as_u16(), 400);
        assert_eq!(sim.plan_message(br#"{"messages": []}"#).unwrap_err().status.as_u16(), 400);
        assert_eq!(sim.plan_message(&body("[sim:nope]")).unwrap_err().status.as_u16(), 400);
        let logged = sim.requests();
        assert_eq!(logged.len(), 2);
        assert_eq!(logged[0].model, "");
        assert_eq!(logged[1].last_user_text, "[sim:nope]");
    }
}
