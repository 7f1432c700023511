//! The direct backend: a job is one `POST /v1/messages` to the Anthropic
//! Messages API, over one shared connection pool. The call streams when the
//! client does, or when the answer could take longer than the stall timeout
//! to arrive whole; otherwise it takes the whole message at once, which
//! costs less to read than its events. It retries
//! rate limits, overload, 5xx and connection errors with back-off (honouring
//! `retry-after`), but never once text has reached the caller, and never
//! past the job's deadline. It reports usage, not cost: chat prices it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rand::Rng;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::messages_request;
use super::messages_sse::{
    data_of, parse_data, ContentBlock, Delta, ErrorResponse, SseLines, StreamEvent, WholeBlock, WholeMessage,
};
use super::{send_all, Event, Job, PoolStats, RunEnd, RunReport, ThinkingPart, Worker};
use crate::chat::{Thinking, ThinkingPiece, ToolCall, ToolCallDelta};
use crate::config::ApiKey;
use crate::pricing::{PriceTable, TokenUsage};

const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Long-context variants are the base model plus this beta.
const LONG_CONTEXT_SUFFIX: &str = "[1m]";
const LONG_CONTEXT_BETA: &str = "context-1m-2025-08-07";
/// The first retry waits about this long; each later one twice as long.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Used when the price table does not know the model (it always should).
const FALLBACK_MAX_TOKENS: u64 = 4096;
/// A slow model writes about this many tokens a second. An answer that
/// could take longer than the stall timeout to write is streamed whatever
/// the client asked, so that a stalled upstream still shows as one.
const SLOW_TOKENS_PER_SEC: u64 = 20;

/// How the direct backend reaches the API.
pub struct ApiSettings {
    pub base_url: String,
    pub api_key: ApiKey,
    pub stall_timeout: Duration,
    pub max_retries: u32,
    /// Most requests at once, so at most this many idle connections are kept.
    pub max_concurrent: usize,
}

pub struct AnthropicApi {
    client: reqwest::Client,
    /// Parsed once: a URL given as text is parsed again on every request.
    messages_url: reqwest::Url,
    api_key: ApiKey,
    stall_timeout: Duration,
    max_retries: u32,
    /// Each model's largest output, the `max_tokens` of a job without a cap.
    max_output: HashMap<String, u64>,
    stats: Arc<PoolStats>,
}

impl AnthropicApi {
    pub fn new(
        settings: ApiSettings,
        prices: &PriceTable,
        stats: Arc<PoolStats>,
    ) -> anyhow::Result<AnthropicApi> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(settings.max_concurrent)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(settings.stall_timeout)
            .tcp_nodelay(true)
            // The API never redirects; its key is not sent anywhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let messages_url = format!("{}/v1/messages", settings.base_url.trim_end_matches('/'));
        let messages_url = reqwest::Url::parse(&messages_url)
            .map_err(|e| anyhow::anyhow!("ANTHROPIC_BASE_URL {:?} is not a URL: {e}", settings.base_url))?;
        Ok(AnthropicApi {
            client,
            messages_url,
            api_key: settings.api_key,
            stall_timeout: settings.stall_timeout,
            max_retries: settings.max_retries,
            max_output: prices.models().iter().map(|m| (m.id.clone(), m.max_output_tokens)).collect(),
            stats,
        })
    }

    fn request(&self, job: &Job, body: Bytes) -> reqwest::RequestBuilder {
        let request = self
            .client
            .post(self.messages_url.clone())
            .header("x-api-key", self.api_key.expose())
            .header("anthropic-version", ANTHROPIC_VERSION)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if job.model_id.ends_with(LONG_CONTEXT_SUFFIX) {
            return request.header("anthropic-beta", LONG_CONTEXT_BETA);
        }
        request
    }

    /// The request body, and whether it asks for a stream.
    fn body(&self, job: &Job) -> (Bytes, bool) {
        let messages = messages_request::messages(&job.messages);
        let max_tokens = job
            .max_output_tokens
            .or_else(|| self.max_output.get(&job.model_id).copied())
            .unwrap_or(FALLBACK_MAX_TOKENS);
        let stream =
            job.stream || max_tokens > self.stall_timeout.as_secs().saturating_mul(SLOW_TOKENS_PER_SEC);
        let mut body = json!({
            "model": job.model_id.trim_end_matches(LONG_CONTEXT_SUFFIX),
            "max_tokens": max_tokens,
            "stream": stream,
            "messages": messages,
        });
        match (&job.system_prompt, &job.system_cache) {
            (Some(system), Some(cache)) => {
                body["system"] = json!([{"type": "text", "text": system, "cache_control": cache}]);
            }
            (Some(system), None) => body["system"] = json!(system),
            (None, _) => {}
        }
        if let Some(tools) = &job.tools {
            messages_request::add_tools(&mut body, tools);
        }
        if let Some(thinking) = &job.thinking {
            body["thinking"] = thinking.clone();
        }
        if let Some(schema) = &job.output_schema {
            body["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
        }
        let sampling = &job.sampling;
        if let Some(temperature) = sampling.temperature {
            body["temperature"] = json!(temperature);
        }
        if let Some(top_p) = sampling.top_p {
            body["top_p"] = json!(top_p);
        }
        if let Some(top_k) = sampling.top_k {
            body["top_k"] = json!(top_k);
        }
        if !sampling.stop.is_empty() {
            body["stop_sequences"] = json!(sampling.stop);
        }
        (Bytes::from(body.to_string()), stream)
    }
}

/// How one HTTP attempt ended.
enum Attempt {
    End(RunEnd),
    /// A failure worth another try, unless text already went out.
    Retry {
        end: RunEnd,
        retry_after: Option<Duration>,
    },
}

#[async_trait]
impl Worker for AnthropicApi {
    async fn run(&self, job: Job, events: mpsc::Sender<Event>, cancel: CancellationToken) -> RunReport {
        let (body, stream) = self.body(&job);
        let mut report = RunReport::new(RunEnd::Completed);
        report.model = Some(job.model_id.clone());
        let mut retries = 0;
        let end = loop {
            let (end, retry_after) =
                match self.attempt(&job, body.clone(), stream, &events, &cancel, &mut report).await {
                    Attempt::End(end) => break end,
                    Attempt::Retry { end, retry_after } => (end, retry_after),
                };
            let answered =
                !report.text.is_empty() || !report.tool_calls.is_empty() || !report.thinking.is_empty();
            if retries >= self.max_retries || answered {
                break end;
            }
            let wait = retry_after.unwrap_or_else(|| backoff(retries));
            if tokio::time::Instant::now() + wait >= job.deadline {
                break end;
            }
            retries += 1;
            tracing::debug!(retries, wait_ms = wait.as_millis() as u64, "retrying the Messages API");
            tokio::select! {
                _ = cancel.cancelled() => break RunEnd::Cancelled,
                _ = events.closed() => break RunEnd::Cancelled,
                _ = tokio::time::sleep(wait) => {}
            }
        };
        report.end = end;
        report.num_turns = 1;
        if matches!(report.end, RunEnd::Completed | RunEnd::Failed { .. }) {
            report.finished_at = Some(Instant::now());
            let _ = events.send(Event::Finished(Box::new(report.clone()))).await;
        }
        report
    }
}

impl AnthropicApi {
    async fn attempt(
        &self,
        job: &Job,
        body: Bytes,
        stream: bool,
        events: &mpsc::Sender<Event>,
        cancel: &CancellationToken,
        report: &mut RunReport,
    ) -> Attempt {
        let response = match self.within(job, events, cancel, self.request(job, body).send()).await {
            Err(done) => return done,
            Ok(Err(e)) => {
                let message = format!("cannot reach the Anthropic API: {e}");
                return Attempt::Retry { end: RunEnd::Crashed { message }, retry_after: None };
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        if status != 200 {
            return self.failed(status, response).await;
        }
        report.usage = TokenUsage::default();
        let _ = events.send(Event::Started { model: Some(job.model_id.clone()), session_id: None }).await;
        if !stream {
            return self.whole(job, response, events, cancel, report).await;
        }
        let mut stream = response.bytes_stream();
        let mut lines = SseLines::default();
        // Which tool call each content block of this message is.
        let mut tool_blocks = HashMap::new();
        loop {
            let bytes = match self.within(job, events, cancel, stream.next()).await {
                Err(done) => return done,
                Ok(None) => return broken("the stream ended before message_stop".into()),
                Ok(Some(Err(e))) => return broken(format!("the stream broke: {e}")),
                Ok(Some(Ok(bytes))) => bytes,
            };
            lines.push(&bytes);
            while let Some(line) = lines.next_line() {
                let Some(event) = data_of(&line).and_then(parse_data) else { continue };
                if let Some(done) = apply(report, &mut tool_blocks, event, events).await {
                    return done;
                }
            }
        }
    }

    /// What `work` gives within the stall timeout; `Err` with how the
    /// attempt ends when the run is cancelled, its client goes away, its
    /// deadline passes or the upstream stalls first.
    async fn within<T>(
        &self,
        job: &Job,
        events: &mpsc::Sender<Event>,
        cancel: &CancellationToken,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, Attempt> {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Attempt::End(RunEnd::Cancelled)),
            _ = events.closed() => Err(Attempt::End(RunEnd::Cancelled)),
            _ = tokio::time::sleep_until(job.deadline) => Err(Attempt::End(self.deadline())),
            done = tokio::time::timeout(self.stall_timeout, work) => {
                done.map_err(|_| Attempt::Retry { end: self.stalled(), retry_after: None })
            }
        }
    }

    /// Reads a non-streaming answer and passes its content on as a
    /// stream's events would have.
    async fn whole(
        &self,
        job: &Job,
        response: reqwest::Response,
        events: &mpsc::Sender<Event>,
        cancel: &CancellationToken,
        report: &mut RunReport,
    ) -> Attempt {
        let message = match self.within(job, events, cancel, response.bytes()).await {
            Err(done) => return done,
            Ok(Err(e)) => return broken(format!("the answer broke off: {e}")),
            Ok(Ok(bytes)) => match serde_json::from_slice::<WholeMessage>(&bytes) {
                Ok(message) => message,
                Err(e) => return broken(format!("the answer is not a message: {e}")),
            },
        };
        match apply_whole(report, message, events).await {
            Some(done) => done,
            None => Attempt::End(RunEnd::Completed),
        }
    }

    /// A non-200 answer: retried when the API says to try again later.
    async fn failed(&self, status: u16, response: reqwest::Response) -> Attempt {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|secs| secs.is_finite() && *secs >= 0.0)
            .map(Duration::from_secs_f64);
        let text = tokio::time::timeout(self.stall_timeout, response.text()).await.ok().and_then(Result::ok);
        let error =
            text.as_deref().and_then(|t| serde_json::from_str::<ErrorResponse>(t).ok()).map(|r| r.error);
        let (subtype, message) = match error {
            Some(error) => (error.kind, error.message),
            None => ("api_error".into(), text.unwrap_or_default().chars().take(500).collect()),
        };
        let end = RunEnd::Failed { api_status: Some(status), subtype, message };
        if retryable_status(status) {
            Attempt::Retry { end, retry_after }
        } else {
            Attempt::End(end)
        }
    }

    fn deadline(&self) -> RunEnd {
        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        RunEnd::Deadline
    }

    fn stalled(&self) -> RunEnd {
        self.stats.stalls.fetch_add(1, Ordering::Relaxed);
        RunEnd::Stalled
    }
}

fn broken(message: String) -> Attempt {
    Attempt::Retry { end: RunEnd::Crashed { message }, retry_after: None }
}

/// Takes a whole message's content in as its stream events would have
/// come; `Some` when the caller went away meanwhile.
async fn apply_whole(
    report: &mut RunReport,
    message: WholeMessage,
    events: &mpsc::Sender<Event>,
) -> Option<Attempt> {
    if let Some(model) = message.model {
        report.model = Some(model);
    }
    if let Some(usage) = &message.usage {
        usage.apply_to(&mut report.usage);
    }
    report.stop_reason = message.stop_reason;
    report.stop_sequence = message.stop_sequence;
    if !message.content.is_empty() {
        report.first_token_at.get_or_insert_with(Instant::now);
    }
    for block in message.content {
        let event = match block {
            WholeBlock::Text { text } => {
                report.text.push_str(&text);
                Event::Text(text)
            }
            WholeBlock::ToolUse { id, name, input } => {
                let arguments = if input.is_null() { "{}".to_string() } else { input.to_string() };
                report.tool_calls.push(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: arguments.clone(),
                });
                let index = report.tool_calls.len() - 1;
                Event::ToolCall(ToolCallDelta { index, id: Some(id), name: Some(name), arguments })
            }
            WholeBlock::Thinking { thinking, signature } => {
                report
                    .thinking
                    .push(Thinking::Text { thinking: thinking.clone(), signature: signature.clone() });
                let mut pieces = vec![ThinkingPiece::Start { redacted: None }];
                pieces.extend((!thinking.is_empty()).then_some(ThinkingPiece::Text(thinking)));
                pieces.extend((!signature.is_empty()).then_some(ThinkingPiece::Signature(signature)));
                if let Some(done) = send_thinking(events, pieces).await {
                    return Some(done);
                }
                continue;
            }
            WholeBlock::RedactedThinking { data } => {
                report.thinking.push(Thinking::Redacted { data: data.clone() });
                Event::Thinking(ThinkingPiece::Start { redacted: Some(data) })
            }
            WholeBlock::Other => continue,
        };
        if events.send(event).await.is_err() {
            return Some(Attempt::End(RunEnd::Cancelled));
        }
    }
    None
}

/// Applies one stream event; `Some` when the attempt is over.
/// `tool_blocks` maps content block indexes to tool call indexes.
async fn apply(
    report: &mut RunReport,
    tool_blocks: &mut HashMap<usize, usize>,
    event: StreamEvent,
    events: &mpsc::Sender<Event>,
) -> Option<Attempt> {
    let tool_delta = match event {
        StreamEvent::ContentBlockStart { index, content_block: ContentBlock::ToolUse { id, name } } => {
            report.first_token_at.get_or_insert_with(Instant::now);
            tool_blocks.insert(index, report.tool_calls.len());
            report.tool_calls.push(ToolCall { id: id.clone(), name: name.clone(), arguments: String::new() });
            Some(ToolCallDelta {
                index: report.tool_calls.len() - 1,
                id: Some(id),
                name: Some(name),
                arguments: String::new(),
            })
        }
        StreamEvent::ContentBlockDelta { index, delta: Delta::InputJsonDelta { partial_json } } => {
            let call = tool_blocks.get(&index).copied();
            call.and_then(|call| report.tool_calls.get_mut(call).map(|c| (call, c))).map(|(call, c)| {
                c.arguments.push_str(&partial_json);
                ToolCallDelta { index: call, id: None, name: None, arguments: partial_json }
            })
        }
        StreamEvent::ContentBlockStart { content_block: ContentBlock::Thinking { thinking }, .. } => {
            return send_thinking(events, report.think(ThinkingPart::Start { thinking })).await;
        }
        StreamEvent::ContentBlockStart { content_block: ContentBlock::RedactedThinking { data }, .. } => {
            return send_thinking(events, report.think(ThinkingPart::Redacted { data })).await;
        }
        StreamEvent::ContentBlockDelta { delta: Delta::ThinkingDelta { thinking }, .. } => {
            return send_thinking(events, report.think(ThinkingPart::Text(thinking))).await;
        }
        StreamEvent::ContentBlockDelta { delta: Delta::SignatureDelta { signature }, .. } => {
            return send_thinking(events, report.think(ThinkingPart::Signature(signature))).await;
        }
        StreamEvent::MessageStop => {
            // A call without input streamed no argument text.
            for call in report.tool_calls.iter_mut().filter(|c| c.arguments.is_empty()) {
                call.arguments = "{}".into();
            }
            return Some(Attempt::End(RunEnd::Completed));
        }
        event => return apply_other(report, event, events).await,
    };
    if let Some(delta) = tool_delta {
        if events.send(Event::ToolCall(delta)).await.is_err() {
            return Some(Attempt::End(RunEnd::Cancelled));
        }
    }
    None
}

/// Passes pieces of thinking on; `Some` when the caller is gone.
async fn send_thinking(events: &mpsc::Sender<Event>, pieces: Vec<ThinkingPiece>) -> Option<Attempt> {
    let sent = send_all(events, pieces.into_iter().map(Event::Thinking)).await;
    (!sent).then_some(Attempt::End(RunEnd::Cancelled))
}

/// Applies a stream event that is not part of a tool call.
async fn apply_other(
    report: &mut RunReport,
    event: StreamEvent,
    events: &mpsc::Sender<Event>,
) -> Option<Attempt> {
    match event {
        StreamEvent::MessageStart { message } => {
            if let Some(model) = message.model {
                report.model = Some(model);
            }
            if let Some(usage) = message.usage {
                usage.apply_to(&mut report.usage);
            }
        }
        StreamEvent::ContentBlockDelta { delta: Delta::TextDelta { text }, .. } => {
            report.first_token_at.get_or_insert_with(Instant::now);
            report.text.push_str(&text);
            if events.send(Event::Text(text)).await.is_err() {
                return Some(Attempt::End(RunEnd::Cancelled));
            }
        }
        StreamEvent::MessageDelta { delta, usage } => {
            if delta.stop_reason.is_some() {
                report.stop_reason = delta.stop_reason;
            }
            if delta.stop_sequence.is_some() {
                report.stop_sequence = delta.stop_sequence;
            }
            if let Some(usage) = usage {
                usage.apply_to(&mut report.usage);
            }
        }
        StreamEvent::MessageStop => return Some(Attempt::End(RunEnd::Completed)),
        StreamEvent::Error { error } => {
            // An error inside a 200 stream: the status its type stands for.
            let status = match error.kind.as_str() {
                "overloaded_error" => 529,
                "rate_limit_error" => 429,
                "timeout_error" => 504,
                _ => 500,
            };
            let end =
                RunEnd::Failed { api_status: Some(status), subtype: error.kind, message: error.message };
            return Some(Attempt::Retry { end, retry_after: None });
        }
        StreamEvent::ContentBlockStart { .. }
        | StreamEvent::ContentBlockDelta { .. }
        | StreamEvent::Other => {}
    }
    None
}

fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504 | 529)
}

/// Exponential back-off with jitter: half to all of `base × 2^retry`.
fn backoff(retry: u32) -> Duration {
    let full = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(retry)).min(BACKOFF_MAX);
    full.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for retry in 0..20 {
            let wait = backoff(retry);
            let full = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(retry)).min(BACKOFF_MAX);
            assert!(wait >= full / 2 && wait <= full, "retry {retry}: {wait:?}");
        }
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for status in [429, 500, 502, 503, 504, 529] {
            assert!(retryable_status(status), "{status}");
        }
        for status in [400, 401, 403, 404, 413] {
            assert!(!retryable_status(status), "{status}");
        }
    }
}
