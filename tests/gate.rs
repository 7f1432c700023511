//! The spend gate over HTTP, in front of the simulated upstream: a run's
//! first call goes as asked, a later one with the output that fits in what
//! is left, one that cannot fit is refused; calls from a process with no
//! run, or from an address the gate never gave, go nowhere.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ccgate::money::Micros;
use ccgate::pricing::PriceTable;
use ccgate::workers::gate::{SpendGate, Ticket};
use ccgate::workers::PoolStats;
use serde_json::{json, Value};

const HAIKU: &str = "claude-haiku-4-5-20251001";

fn call(max_tokens: u64, text: &str) -> Vec<u8> {
    let call = json!({"model": HAIKU, "max_tokens": max_tokens, "stream": true,
        "messages": [{"role": "user", "content": text}]});
    serde_json::to_vec(&call).unwrap()
}

/// The input tokens a streamed answer's `message_start` reports.
fn first_input_tokens(stream: &str) -> i64 {
    let start = stream
        .lines()
        .find(|l| l.contains("message_start") && l.starts_with("data:"))
        .expect("message_start");
    let event: Value = serde_json::from_str(start.trim_start_matches("data:").trim()).unwrap();
    event["message"]["usage"]["input_tokens"].as_i64().expect("input_tokens")
}

/// A Messages call as a worker sends it.
async fn send(url: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-api-key", "sk-worker")
        .header("anthropic-version", "2023-06-01")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn post(url: &str, body: Vec<u8>) -> (u16, String) {
    let response = send(url, body).await;
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A later call of the conversation `question` began: the answer, then a
/// tool result of 6,000 bytes of punctuation (a token a byte, as the
/// upstream counts it here).
fn dense_follow_up(question: Value) -> Vec<u8> {
    let result = format!("{} [sim:byte_tokens] [sim:words=2]", "{};".repeat(2_000));
    let call = json!({"model": HAIKU, "max_tokens": 10, "stream": true, "messages": [
        question, {"role": "assistant", "content": "w1 w2"}, {"role": "user", "content": result}]});
    serde_json::to_vec(&call).unwrap()
}

/// The simulated upstream, a gate in front of it, and one worker's ticket
/// with its Messages address.
async fn one_worker() -> (ccgate_sim::SimHandle, SpendGate, Ticket, String) {
    let sim = ccgate_sim::spawn(Default::default()).await.unwrap();
    let gate =
        SpendGate::start(&sim.base_url(), Arc::new(PriceTable::builtin()), Arc::new(PoolStats::default()))
            .unwrap();
    let ticket = gate.ticket();
    let url = format!("{}/v1/messages", ticket.base_url());
    (sim, gate, ticket, url)
}

#[tokio::test]
async fn later_calls_get_the_output_that_fits_and_one_that_cannot_fit_is_refused() {
    let sim = ccgate_sim::spawn(Default::default()).await.unwrap();
    let stats = Arc::new(PoolStats::default());
    let gate =
        SpendGate::start(&sim.base_url(), Arc::new(PriceTable::builtin()), Arc::clone(&stats)).unwrap();
    let ticket = gate.ticket();
    let url = format!("{}/v1/messages", ticket.base_url());

    // A process with no run open makes no call.
    let (status, body) = post(&url, call(100, "before any run")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(sim.sim.requests().len(), 0);

    // haiku: 1 µ$ an input token, 5 µ$ an output token.
    let limit = 3_000;
    let run = ticket.open(Micros(limit));
    // The first call goes as asked, though its worst case (32,000 tokens
    // of output) is far past the limit: the reservation was priced from it.
    let (status, body) = post(&url, call(32_000, "first [sim:words=5]")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("message_stop") && body.contains("w5"), "passed on whole: {body}");
    assert_eq!(sim.sim.requests()[0].body["max_tokens"], 32_000);
    // What it cost, read from its usage as it passed.
    let spent = run.spent().0;
    assert!(spent > 0 && spent < 500, "{spent}");

    // The second gets what is left after its input in output tokens: what
    // the first read (its usage) plus a token a byte of its one message,
    // which the first did not send.
    let read = first_input_tokens(&body);
    let second = call(32_000, "second [sim:words=5]");
    let message = json!({"role": "user", "content": "second [sim:words=5]"}).to_string();
    let input = read + message.len() as i64;
    let fits = (limit - spent - input) / 5;
    let (status, body) = post(&url, second).await;
    assert_eq!(status, 200, "{body}");
    let sent = &sim.sim.requests()[1].body;
    assert_eq!(sent["max_tokens"], fits, "{sent}");
    assert_eq!(sent["messages"][0]["content"], "second [sim:words=5]");
    assert!(!run.refused());

    // Input alone past what is left: refused, never sent.
    let (status, body) = post(&url, call(10, &"x".repeat(10_000))).await;
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"]["message"].as_str().unwrap().contains("spending cap"), "{body}");
    assert!(run.refused());
    assert_eq!(stats.gate_refusals.load(Ordering::Relaxed), 1);
    assert_eq!(sim.sim.requests().len(), 2);
    assert!(run.spent().0 <= limit);

    // Once the run is over, the process's calls go nowhere again.
    drop(run);
    assert_eq!(post(&url, call(10, "after")).await.0, 400);
    // An address the gate never gave.
    let stranger = url.replace(ticket.base_url().rsplit('/').next().unwrap(), "not-a-worker");
    assert_eq!(post(&stranger, call(10, "who")).await.0, 404);
    drop(ticket);
    assert_eq!(post(&url, call(10, "gone")).await.0, 404);
    assert_eq!(sim.sim.requests().len(), 2);
}

/// A later call's input is bounded by what an earlier call of the run read
/// plus a token a byte of what it adds: a dense tool result, which a token
/// per 2.5 bytes of the call would under-count, cannot take the run past
/// its allowance. (Here the upstream counts a token a byte.)
#[tokio::test]
async fn a_later_call_with_dense_new_input_cannot_pass_the_allowance() {
    let (sim, _gate, ticket, url) = one_worker().await;
    let question = json!({"role": "user", "content": "read the file [sim:byte_tokens] [sim:words=2]"});
    let first = json!({"model": HAIKU, "max_tokens": 10, "stream": true, "messages": [question]});
    // haiku: 1 µ$ an input token, 5 µ$ an output token. After the first
    // call, room for 4,000 input tokens.
    let run = ticket.open(Micros(10_000_000));
    let (status, body) = post(&url, serde_json::to_vec(&first).unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let limit = run.spent().0 + 4_000;
    drop(run);
    let run = ticket.open(Micros(limit));
    assert_eq!(post(&url, serde_json::to_vec(&first).unwrap()).await.0, 200);

    // A tool result of 6,000 bytes of punctuation: about 2,500 tokens at a
    // token per 2.5 bytes of the call, which would fit; 6,000 and more as
    // the upstream counts it, which would not.
    let second = dense_follow_up(question);
    assert!((second.len() as i64 * 2) / 5 < 4_000 - 50, "the estimate would have let it go");
    let (status, body) = post(&url, second).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("spending cap"), "{body}");
    assert!(run.refused());
    assert_eq!(sim.sim.requests().len(), 2, "never sent");
    assert!(run.spent().0 <= limit);
}

/// A call made while another of its run is under way and none has
/// finished has nothing to bound its input by: it waits for the one under
/// way, and is then bounded by what that read, so dense input cannot pass
/// on an estimate. (Here the upstream counts a token a byte.)
#[tokio::test]
async fn a_call_made_while_the_first_is_under_way_waits_and_is_bounded_by_it() {
    let (sim, _gate, ticket, url) = one_worker().await;
    // The first call answers slowly: its head comes at once, its text
    // after 300 ms.
    let question = json!({"role": "user", "content": "read the file [sim:byte_tokens] [sim:words=2] [sim:first_token_ms=300]"});
    let first = json!({"model": HAIKU, "max_tokens": 10, "stream": true, "messages": [question]});
    // haiku: 1 µ$ an input token, 5 µ$ an output token; the first call
    // reads about 80 tokens and writes 2. The limit leaves room for about
    // 4,000 more input tokens.
    let run = ticket.open(Micros(4_200));
    let head = send(&url, serde_json::to_vec(&first).unwrap()).await;
    assert_eq!(head.status(), 200);
    let first_body = tokio::spawn(head.text());
    // Under way now (its answer's head is here), not finished. A second
    // call, with 6,000 bytes of punctuation after the same question: about
    // 2,500 tokens at a token per 2.5 bytes, which would fit; 6,000 and
    // more as the upstream counts it, which would not.
    let second = dense_follow_up(question);
    assert!((second.len() as i64 * 2) / 5 < 4_000 - 100, "the estimate would have let it go");
    // Refused: decided once the first had finished, by what that read.
    let refused = send(&url, second).await;
    let first_body = first_body.await.unwrap().unwrap();
    assert!(first_body.contains("message_stop"), "{first_body}");
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("spending cap"));
    assert!(run.refused());
    assert_eq!(sim.sim.requests().len(), 1, "never sent");
    assert!(run.spent().0 <= 4_200, "{}", run.spent().0);
}
