//! Fair share: interactive requests keep flowing while a batch holds its
//! share of the pool. A test binary of its own, so no other test loads the
//! machine while it measures latency.

mod common;

use std::time::{Duration, Instant};

use common::batch_api::{ask, line, Api};
use common::{client, Options, TestApp, TestDb};
use serde_json::Value;

#[tokio::test]
async fn interactive_latency_stays_within_twice_idle_while_a_batch_holds_its_share() {
    let db = TestDb::sqlite();
    // Pool 2 at share 0.5: the batch may hold one worker; interactive
    // requests keep the other.
    let app = TestApp::spawn(&db, Options::default()).await;
    let api = Api::new(&app.url, "default");
    let interactive = |i: usize| {
        let url = format!("{}/v1/chat/completions", app.url);
        async move {
            let started = Instant::now();
            let response = client()
                .post(url)
                .json(&ask("haiku", &format!("ping {i} [sim:words=10] [sim:delay_ms=40]")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
            started.elapsed()
        }
    };
    interactive(0).await; // warm-up
    let mut idle = Vec::new();
    for i in 1..=5 {
        idle.push(interactive(i).await);
    }

    let lines: Vec<Value> = (0..40)
        // Both kinds spend their time waiting on the upstream (about 0.2 s
        // for an interactive request, 2 s for a batch one), so the figures
        // measure the pool's fair share rather than the machine's CPU: an
        // interactive request that had to queue behind batch work would
        // wait about a second more.
        .map(|i| {
            line(&format!("load-{i}"), ask("haiku", &format!("load {i} [sim:words=20] [sim:delay_ms=100]")))
        })
        .collect();
    let file_id = api.upload(&lines).await;
    let id = api.create_ok(&file_id).await["id"].as_str().unwrap().to_string();
    api.wait(&id, Duration::from_secs(60), |b| b["request_counts"]["completed"].as_u64() >= Some(1)).await;
    // The batch now holds the warm process the idle requests used; the
    // first interactive request after it starts another (not measured).
    interactive(100).await;
    let mut busy = Vec::new();
    let mut batch_held_its_slot = false;
    for i in 6..=10 {
        let health: Value =
            client().get(format!("{}/health", app.url)).send().await.unwrap().json().await.unwrap();
        let batch_busy = health["workers"]["batch_busy"].as_u64().unwrap();
        assert!(batch_busy <= 1, "the batch keeps to its share: {health}");
        batch_held_its_slot |= batch_busy == 1;
        busy.push(interactive(i).await);
    }
    let progress = api.batch(&id).await;
    assert_eq!(progress["status"], "in_progress", "the batch ran throughout: {progress}");
    assert!(batch_held_its_slot, "the batch was running while interactive requests were measured");

    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (idle, busy) = (median(idle), median(busy));
    assert!(busy <= idle * 2, "interactive median {busy:?} while the batch ran, {idle:?} idle");
    api.cancel(&id).await;
    api.wait_done(&id, Duration::from_secs(60)).await;
    app.stop().await;
}
