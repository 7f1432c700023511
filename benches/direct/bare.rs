//! The floor: the least any gateway on this path could cost. A bare
//! translating proxy with nothing of ccgate's in it (no keys, budget,
//! ledger, logs, metrics or limits): it parses an OpenAI chat request,
//! sends the Anthropic request to the same simulator with the same HTTP
//! client settings as ccgate's direct backend, parses the whole answer and
//! returns an OpenAI chat completion. It runs as its own process, as ccgate
//! does, on Tokio's multi-threaded runtime with axum and reqwest.
//!
//! Measured beside ccgate, it shows how much of what ccgate adds is the
//! second HTTP hop itself, which no gateway can avoid, and how much is
//! ccgate's own work.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::MODEL_ID;

#[derive(Clone)]
struct Upstream {
    client: reqwest::Client,
    messages: reqwest::Url,
}

/// Serves the proxy on 127.0.0.1 (port 0) in front of `upstream`, printing
/// `addr=HOST:PORT` on stderr once it listens; never returns.
pub fn serve(upstream: &str) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(4096)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let messages = format!("{upstream}/v1/messages").parse().expect("upstream url");
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .with_state(Upstream { client, messages });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        eprintln!("addr={}", listener.local_addr().expect("address"));
        axum::serve(listener, app.into_make_service()).await.expect("serve");
    });
    std::process::exit(0)
}

async fn chat(State(upstream): State<Upstream>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let upstream_body = json!({
        "model": MODEL_ID,
        "max_tokens": request["max_tokens"].as_u64().unwrap_or(1000),
        "messages": request["messages"],
    });
    let sent = upstream
        .client
        .post(upstream.messages.clone())
        .header("x-api-key", "sk-bench")
        .header("anthropic-version", "2023-06-01")
        .header(header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&upstream_body).expect("serialize"))
        .send()
        .await;
    let answer = match sent {
        Ok(response) => response.bytes().await.ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()),
        Err(_) => None,
    };
    let Some(answer) = answer else {
        return (StatusCode::BAD_GATEWAY, "upstream failed").into_response();
    };
    let completion = json!({
        "id": answer["id"],
        "object": "chat.completion",
        "model": answer["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer["content"][0]["text"]},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": answer["usage"]["input_tokens"],
            "completion_tokens": answer["usage"]["output_tokens"],
        },
    });
    ([(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(&completion).expect("serialize"))
        .into_response()
}
