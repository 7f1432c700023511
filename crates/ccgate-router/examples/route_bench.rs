//! Times `route()` on a short and a very long prompt.
//!
//!     cargo run --release -p ccgate-router --example route_bench [-- ITERATIONS]
//!
//! Targets: p99 ≤ 100 µs for ~100 tokens, ≤ 5 ms for ~100k tokens.

use ccgate_router::{default_tiers, estimate_tokens, route, Message, Policy, RouteRequest, RouterConfig};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SHORT: &str = "Write a Python function that parses ISO 8601 durations like 'P3DT4H12M' into seconds. \
    Handle weeks and fractional seconds, raise ValueError on malformed input, and include pytest tests \
    covering the edge cases. Keep it under 60 lines and explain any tricky parts of the regex you use.";

/// A realistic long request: an instruction, a large pasted code base and log, a closing question.
fn long_prompt(target_tokens: u64) -> String {
    let chunk =
        "fn handle(req: &Request) -> Result<Response, Error> {\n    let user = db.find(req.user_id)?;\n    \
                 if user.quota < req.cost { return Err(Error::Quota); }\n}\n\
                 2024-05-02 03:12:15,003 ERROR [w-3] Job 4411 failed: upstream returned 502 after 3 retries\n\
                 The service processes billing events and writes them to Postgres in batches of 500.\n";
    let mut text = String::from("Find why billing totals drift under load in this service:\n\n");
    while estimate_tokens(&text) < target_tokens {
        text.push_str(chunk);
    }
    text.push_str("\nWhat is the root cause and how do we fix it without downtime?");
    text
}

fn time(label: &str, text: &str, iterations: usize) {
    let tiers = default_tiers();
    let cfg = RouterConfig::default();
    let policy = Policy::default();
    let messages =
        [Message { role: "system", text: "You are a careful engineer." }, Message { role: "user", text }];
    let req = RouteRequest {
        messages: &messages,
        max_tokens: Some(4096),
        overhead_tokens: 200,
        remaining_budget_micro_usd: Some(3_000_000),
        budget_limit_micro_usd: Some(10_000_000),
    };
    for _ in 0..iterations / 10 {
        let _ = black_box(route(black_box(&req), &tiers, &policy, &cfg));
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(iterations);
    let mut last = None;
    for _ in 0..iterations {
        let start = Instant::now();
        let d = black_box(route(black_box(&req), &tiers, &policy, &cfg));
        samples.push(start.elapsed());
        last = Some(d);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let tokens = last.and_then(Result::ok).map_or(0, |d| d.estimated_input_tokens);
    println!(
        "{label:<14} {tokens:>8} tokens  {iterations} runs  median {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn main() {
    let iterations = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2_000);
    time("short prompt", SHORT, iterations);
    time("100k prompt", &long_prompt(100_000), iterations);
}
