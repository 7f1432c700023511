//! The spend gate: Claude Code workers reach the Messages API through the
//! gateway, which lets each call of a run go only when its worst case fits
//! in what is left of the run's reservation.
//!
//! Claude Code decides by itself how many calls a run makes: an agent's
//! turns, its side calls, and up to three continuation calls after a reply
//! reaches its output cap. Its own `--max-budget-usd` is checked only after
//! each call (and over a warm process's whole life), so a run could end one
//! call past what was reserved for it. Here every worker process gets a
//! loopback base URL of its own (`ANTHROPIC_BASE_URL`, a secret in its
//! path), and its calls are forwarded to the real upstream with their
//! headers and bodies as they came. Each answer's usage is read as it
//! passes, so the gate knows what the run has spent so far.
//!
//! A run's first call goes as it is: the reservation was priced from the
//! same request. Every later call goes only with a `max_tokens` small
//! enough that its input, at an upper bound of its tokens and the highest
//! input price it can be charged, plus its whole output fit in what is left
//! (the calls still under way counted at their worst); when not even one
//! token of output would fit, it is refused with a 400, which the CLI does
//! not retry, and the run ends at its spending cap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::gate_meter::Meter;
pub use super::gate_run::GateRun;
use super::gate_run::{
    input_estimate, input_rate, lower_max_tokens, price_model, Admission, Admitted, Call, Shape,
};
use super::PoolStats;
use crate::money::Micros;
use crate::pricing::PriceTable;

/// The largest call body the gate takes (images travel base64 inside it).
const MAX_CALL_BYTES: usize = 64 * 1024 * 1024;

/// Forwards worker processes' calls to the upstream API.
pub struct SpendGate {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    upstream: String,
    stats: Arc<PoolStats>,
    client: reqwest::Client,
    prices: Arc<PriceTable>,
    /// Each live worker process's secret, and the run it serves now.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// One worker process's place at the gate.
#[derive(Default)]
struct Slot {
    run: Mutex<Option<Arc<GateRun>>>,
}

/// A worker process's pass through the gate: its base URL, and the run it
/// serves. Dropped with the process.
pub struct Ticket {
    token: String,
    base_url: String,
    slot: Arc<Slot>,
    shared: Weak<Shared>,
}

impl SpendGate {
    /// Listens on a loopback port of its own, forwarding to `upstream`
    /// (the base URL the workers would otherwise have called).
    /// Needs a Tokio runtime, where it serves.
    pub fn start(
        upstream: &str,
        prices: Arc<PriceTable>,
        stats: Arc<PoolStats>,
    ) -> anyhow::Result<SpendGate> {
        let runtime = tokio::runtime::Handle::try_current()?;
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            // The API never redirects; a worker's key goes nowhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            stats,
            client,
            prices,
            slots: Mutex::default(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let router = axum::Router::new()
            .route("/gate/{token}/{*path}", axum::routing::any(forward))
            .layer(DefaultBodyLimit::max(MAX_CALL_BYTES))
            .with_state(Arc::clone(&shared));
        let stop = CancellationToken::new();
        let stopped = stop.clone().cancelled_owned();
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!(error = %e, "the spend gate cannot listen");
                    return;
                }
            };
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
                tracing::error!(error = %e, "the spend gate stopped serving");
            }
        });
        Ok(SpendGate { addr, shared, stop })
    }

    /// A new worker process's pass: its own secret and base URL.
    pub fn ticket(&self) -> Ticket {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let slot = Arc::new(Slot::default());
        lock(&self.shared.slots).insert(token.clone(), Arc::clone(&slot));
        Ticket {
            base_url: format!("http://{}/gate/{token}", self.addr),
            token,
            slot,
            shared: Arc::downgrade(&self.shared),
        }
    }
}

impl Drop for SpendGate {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Ticket {
    /// What the process is given as `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Starts a run of `limit` on this process: its calls are held to it
    /// until the `OpenRun` is dropped, and refused from then on.
    pub fn open(&self, limit: Micros) -> OpenRun<'_> {
        let run = Arc::new(GateRun::new(limit));
        *lock(&self.slot.run) = Some(Arc::clone(&run));
        OpenRun { ticket: self, run }
    }
}

/// A run open on a worker process's ticket, closed when dropped (on every
/// way out of the conversation that opened it).
pub struct OpenRun<'a> {
    ticket: &'a Ticket,
    run: Arc<GateRun>,
}

impl std::ops::Deref for OpenRun<'_> {
    type Target = GateRun;

    fn deref(&self) -> &GateRun {
        &self.run
    }
}

impl Drop for OpenRun<'_> {
    fn drop(&mut self) {
        let mut open = lock(&self.ticket.slot.run);
        // Only this run: a later one opened on the ticket stays.
        if open.as_ref().is_some_and(|run| Arc::ptr_eq(run, &self.run)) {
            *open = None;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.slots).remove(&self.token);
        }
    }
}

/// Headers that belong to one connection, or that the gate sets itself.
/// `accept-encoding` stays behind so that answers come uncompressed, as
/// the gate reads their usage.
fn forwarded(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "proxy-connection"
            | "accept-encoding"
    )
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    Path((token, path)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(slot) = lock(&shared.slots).get(&token).cloned() else {
        return refusal(StatusCode::NOT_FOUND, "ccgate: no worker process has this address");
    };
    let mut url = format!("{}/{path}", shared.upstream);
    if let Some(query) = uri.query() {
        url.push('?');
        url.push_str(query);
    }
    let metered = method == Method::POST && path == "v1/messages";
    let (body, admitted) = if metered {
        let Some(run) = lock(&slot.run).clone() else {
            return refusal(StatusCode::BAD_REQUEST, "ccgate: this worker process is not serving a request");
        };
        match gate(&shared.prices, run, body).await {
            Ok((body, admitted)) => (body, Some(admitted)),
            Err(NotSent::Refused) => {
                shared.stats.gate_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return refusal(StatusCode::BAD_REQUEST, REFUSED);
            }
            Err(NotSent::Unreadable(message)) => return refusal(StatusCode::BAD_REQUEST, message),
        }
    } else {
        (body, None)
    };
    let mut request = shared.client.request(method, &url).body(body);
    for (name, value) in headers.iter().filter(|(name, _)| forwarded(name)) {
        request = request.header(name, value);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            if let Some(admitted) = admitted {
                admitted.unbilled();
            }
            tracing::warn!(error = %e, "the spend gate cannot reach the upstream API");
            return refusal(StatusCode::BAD_GATEWAY, &format!("ccgate: cannot reach the upstream API: {e}"));
        }
    };
    let status = response.status();
    let mut answer = Response::builder().status(status.as_u16());
    for (name, value) in response.headers().iter().filter(|(name, _)| forwarded(name)) {
        answer = answer.header(name.as_str(), value.as_bytes());
    }
    let body = match admitted {
        Some(admitted) if status.is_success() => {
            let json = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            Body::from_stream(Meter::new(response.bytes_stream(), json, admitted))
        }
        Some(admitted) => {
            // An answer other than a success is not billed.
            admitted.unbilled();
            Body::from_stream(response.bytes_stream())
        }
        None => Body::from_stream(response.bytes_stream()),
    };
    answer.body(body).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// What the CLI is told when a call of its run does not fit.
const REFUSED: &str = "ccgate: this call could cost more than what is left of the request's reservation; \
                       the run has reached its spending cap";

/// Why a Messages call is not sent.
enum NotSent {
    /// Its worst case does not fit in what is left of its run's reservation.
    Refused,
    /// The gate cannot price it.
    Unreadable(&'static str),
}

/// Admits a Messages call of `run`: the body to send (its `max_tokens`
/// maybe lowered) and the call as admitted, whose shape bounds the run's
/// later calls once its usage is read; or why it is not sent.
async fn gate(prices: &PriceTable, run: Arc<GateRun>, body: Bytes) -> Result<(Bytes, Admitted), NotSent> {
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let head = parsed
        .as_ref()
        .and_then(|call| Some((call["model"].as_str()?.to_string(), call["max_tokens"].as_u64()?)));
    let (Some(mut parsed), Some((name, asked))) = (parsed, head) else {
        return Err(NotSent::Unreadable("ccgate: a Messages call needs a model and max_tokens"));
    };
    let Some(model) = price_model(prices, &name) else {
        return Err(NotSent::Unreadable("ccgate: the price table is empty"));
    };
    let call = Call {
        model,
        input_tokens: input_estimate(&parsed, body.len()),
        rate: input_rate(&body),
        max_tokens: asked,
    };
    let shape = Shape::of(&parsed);
    let (body, worst) = match run.admit(&call, &shape).await {
        Admission::Refuse => return Err(NotSent::Refused),
        Admission::Pass { max_tokens, worst } if max_tokens == asked => (body, worst),
        Admission::Pass { max_tokens, worst } => {
            lower_max_tokens(&mut parsed, max_tokens);
            (Bytes::from(parsed.to_string()), worst)
        }
    };
    Ok((body, Admitted { run, model: model.clone(), worst, shape }))
}

/// An error in the Messages API's shape.
fn refusal(status: StatusCode, message: &str) -> Response {
    let kind = match status {
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::BAD_GATEWAY => "api_error",
        _ => "invalid_request_error",
    };
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, axum::Json(body)).into_response()
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
