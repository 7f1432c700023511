//! The gateway as a real process: a graceful stop lets in-flight work
//! finish, and after `kill -9` no worker survives and a restart releases
//! what the dead process had reserved, with the ledger and totals agreeing.

mod common;

use std::time::Duration;

use ccgate::money::Micros;
use ccgate::store::{self, PeriodKind};
use chrono::Utc;
use common::{chat_body, client, processes_with_marker, wait_for, GatewayProcess, TestDb};
use serde_json::Value;

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_cleanly() {
    let db = TestDb::sqlite();
    let sim = ccgate_sim::spawn(Default::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let mut gateway = GatewayProcess::start(&db.url, &sim, &marker, work.path(), &[]);
    let url = format!("{}/v1/chat/completions", gateway.url);
    let in_flight = tokio::spawn(async move {
        client().post(url).json(&chat_body("haiku", "finish me [sim:first_token_ms=1500]")).send().await
    });
    wait_for(Duration::from_secs(10), || {
        (!processes_with_marker(&marker).is_empty()).then_some(()).ok_or(())
    })
    .await
    .expect("the request reached a worker");
    let status = tokio::task::spawn_blocking(move || gateway.terminate()).await.unwrap();
    assert!(status.success(), "the gateway exits 0 after SIGTERM: {status:?}");
    let response = in_flight.await.unwrap().expect("the in-flight request got its answer");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"].as_str().unwrap().starts_with("Simulated reply:"));
    assert!(processes_with_marker(&marker).is_empty());
    let store = store::connect(&db.url).await.unwrap();
    let rows = store.ledger("default", 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "succeeded", "settled before the process exited");
}

#[tokio::test]
async fn kill_9_leaves_no_worker_and_a_restart_releases_its_reservations() {
    let db = TestDb::sqlite();
    let sim = ccgate_sim::spawn(Default::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let mut gateway = GatewayProcess::start(&db.url, &sim, &marker, work.path(), &[]);
    // One request completes, three are in flight when the gateway dies.
    let done = client()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .header("x-request-id", "quick-one")
        .json(&chat_body("haiku", "quick one"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let store = store::connect(&db.url).await.unwrap();
    // Its settlement is written just after the answer; wait for it, so the
    // kill below cannot land in between.
    for _ in 0..200 {
        let row = store.ledger_row("quick-one").await.unwrap();
        if row.is_some_and(|r| r.status != "in_progress") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let url = format!("{}/v1/chat/completions", gateway.url);
    let pending: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                client().post(url).json(&chat_body("haiku", "slow [sim:first_token_ms=30000]")).send().await
            })
        })
        .collect();
    let day = ccgate::budget::period::bounds(PeriodKind::Day, Utc::now()).0.timestamp();
    let mut reserved = Micros(0);
    for _ in 0..200 {
        reserved = store.period_totals("default", PeriodKind::Day, day).await.unwrap().reserved;
        if reserved > Micros(0) && processes_with_marker(&marker).len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reserved > Micros(0), "requests hold reservations");

    gateway.kill9();
    for p in pending {
        assert!(p.await.unwrap().is_err(), "the connection died with the gateway");
    }
    let left = wait_for(Duration::from_secs(10), || {
        let left = processes_with_marker(&marker);
        left.is_empty().then_some(()).ok_or(left)
    })
    .await;
    assert_eq!(left, Ok(()), "no claude process outlives a killed gateway");

    let restarted = GatewayProcess::start(&db.url, &sim, &marker, work.path(), &[]);
    let usage: Value = client()
        .get(format!("{}/v1/usage?project_id=default&period=day", restarted.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["reserved_usd"].as_f64(), Some(0.0), "released at start-up: {usage}");

    let rows = store.ledger("default", 100).await.unwrap();
    assert_eq!(rows.len(), 4, "every request has exactly one row");
    assert_eq!(rows.iter().filter(|r| r.status == "interrupted").count(), 3);
    assert_eq!(rows.iter().filter(|r| r.status == "succeeded").count(), 1);
    let ledger_total: i64 = rows.iter().map(|r| r.cost.0).sum();
    let totals = store.period_totals("default", PeriodKind::Day, day).await.unwrap();
    assert_eq!(totals.spent, Micros(ledger_total), "period totals match the ledger");
    assert_eq!(totals.reserved, Micros(0));
}

#[tokio::test]
async fn the_gateway_raises_its_soft_limit_on_open_files_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;
    let db = TestDb::sqlite();
    let sim = ccgate_sim::spawn(Default::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let mut cmd = GatewayProcess::command(&db.url, &sim, &marker, work.path(), &[]);
    // SAFETY: between fork and exec only setrlimit runs, which is
    // async-signal-safe and touches no memory of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = 256.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let gateway = GatewayProcess::spawn(cmd, work.path());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gateway.child.id())).unwrap();
    let open_files: Vec<&str> =
        limits.lines().find(|l| l.starts_with("Max open files")).unwrap().split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    let (soft, hard) = (open_files[3], open_files[4]);
    assert_eq!(soft, hard, "{limits}");
    assert_ne!(soft, "256", "raised from what it was started with");
}

/// Reads one HTTP response head from `stream` (the status line).
async fn status_line(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.expect("read a response");
        assert!(n > 0, "the connection closed before a response");
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).lines().next().unwrap_or_default().to_string()
}

async fn get_health(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncWriteExt;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: ccgate\r\n\r\n").await.expect("send a request");
    status_line(stream).await
}

/// Waits (at most 10 s) for the server to close `stream`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    matches!(tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn connections_that_send_no_request_head_are_closed_after_the_idle_timeout() {
    let db = TestDb::sqlite();
    let opts = common::Options { adjust: |s| s.client_idle_timeout_secs = 1, ..Default::default() };
    let app = common::TestApp::spawn(&db, opts).await;
    let addr = app.url.trim_start_matches("http://").to_string();
    // One that never sends anything, one that sends half a head, and one
    // that made a request and then keeps its connection idle.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut partial, b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(get_health(&mut idle).await.contains("200"));
    for (name, stream) in [("silent", &mut silent), ("partial head", &mut partial), ("idle", &mut idle)] {
        assert!(closed_by_server(stream).await, "the {name} connection was closed by the gateway");
    }
    // The gateway itself goes on serving.
    let mut fresh = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(get_health(&mut fresh).await.contains("200"));
    app.stop().await;
}

#[tokio::test]
async fn past_max_connections_a_new_connection_waits_for_a_place() {
    let db = TestDb::sqlite();
    let opts = common::Options { adjust: |s| s.max_connections = 1, ..Default::default() };
    let app = common::TestApp::spawn(&db, opts).await;
    let addr = app.url.trim_start_matches("http://").to_string();
    let mut first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(get_health(&mut first).await.contains("200"));
    // The kernel completes the second connection, but the gateway does not
    // take it while the first holds the only place.
    let mut second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(500), get_health(&mut second)).await;
    assert!(waiting.is_err(), "the second connection was served beside the first");
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(10), status_line(&mut second)).await;
    assert!(served.expect("served once the first closed").contains("200"));
    app.stop().await;
}

#[tokio::test]
async fn the_idle_timeout_never_cuts_a_request_under_way() {
    let db = TestDb::sqlite();
    let opts = common::Options { adjust: |s| s.client_idle_timeout_secs = 1, ..Default::default() };
    let app = common::TestApp::spawn(&db, opts).await;
    // A whole answer that takes twice the idle timeout to start...
    let slow = app.chat(chat_body("haiku", "think first [sim:first_token_ms=2200]")).await;
    assert_eq!(slow.status(), 200);
    let body: Value = slow.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"].as_str().unwrap().contains("think first"));
    // ...and a stream that goes on for twice as long (ten chunks of three
    // words, 250 ms apart).
    let mut stream_body = chat_body("haiku", "[sim:words=30] [sim:delay_ms=250] a long stream");
    stream_body["stream"] = true.into();
    let streamed = app.chat(stream_body).await;
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "the stream ran to its end: {text}");
    assert!(text.contains("w30"), "with every word: {text}");
    app.stop().await;
}
