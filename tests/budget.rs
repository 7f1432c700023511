//! Budgets that cannot be overspent: the store under concurrency on SQLite
//! and PostgreSQL, the same through the gateway with the real CLI, two
//! gateway processes on one database, and calendar roll-over.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ccgate::budget::{Budget, BudgetError, ReservationRequest};
use ccgate::clock::ManualClock;
use ccgate::money::Micros;
use ccgate::store::{self, Completion, Limits, PeriodKind, Project, Store};
use chrono::{DateTime, Utc};
use common::{client, processes_with_marker, GatewayProcess, Options, TestApp, TestDb};
use serde_json::{json, Value};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

async fn project(store: &Arc<dyn Store>, id: &str, limits: Limits) {
    store
        .create_project(&Project {
            id: id.into(),
            name: id.into(),
            limits,
            created_at_ms: 0,
            updated_at_ms: 0,
        })
        .await
        .unwrap();
}

fn reservation(id: String, project: &str, amount: i64) -> ReservationRequest {
    ReservationRequest {
        request_id: id,
        project_id: project.into(),
        key_id: None,
        endpoint: "/test".into(),
        model_requested: Some("haiku".into()),
        model_used: Some("claude-haiku-4-5-20251001".into()),
        amount: Micros(amount),
    }
}

/// 64 concurrent reservations against a limit that fits exactly 5: exactly
/// 5 succeed, and spent + reserved never passes the limit.
async fn concurrent_reservations_never_overspend(url: &str) {
    let store = store::connect(url).await.unwrap();
    let limit = Micros(5 * 1_000);
    project(&store, "tight", Limits { daily: Some(limit), weekly: None, monthly: Some(Micros(1_000_000)) })
        .await;
    let budget = Budget::new(
        Arc::clone(&store),
        Arc::new(ccgate::clock::SystemClock),
        "test-instance".into(),
        Duration::from_secs(600),
    );
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(reservation(format!("r{i}"), "tight", 1_000)).await })
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => held.push(r),
            Err(BudgetError::Exhausted { period, .. }) => {
                assert_eq!(period, "daily");
                refused += 1;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(held.len(), 5);
    assert_eq!(refused, 59);
    let usage = budget.usage("tight", PeriodKind::Day).await.unwrap();
    assert_eq!((usage.spent, usage.reserved), (Micros(0), limit));

    // Settle concurrently for less than reserved; each settles exactly once.
    let settles: Vec<_> = held
        .iter()
        .cloned()
        .map(|r| {
            let budget = budget.clone();
            tokio::spawn(async move {
                let done =
                    Completion { status: "succeeded".into(), cost: Micros(700), ..Completion::default() };
                budget.settle(r, done).await.unwrap()
            })
        })
        .collect();
    for s in settles {
        assert!(s.await.unwrap());
    }
    let again = Completion { status: "succeeded".into(), cost: Micros(700), ..Completion::default() };
    assert!(!budget.settle(held[0].clone(), again).await.unwrap(), "a second settle changes nothing");
    let usage = budget.usage("tight", PeriodKind::Day).await.unwrap();
    assert_eq!((usage.spent, usage.reserved), (Micros(3_500), Micros(0)));
    let month = budget.usage("tight", PeriodKind::Month).await.unwrap();
    assert_eq!(month.spent, Micros(3_500));
    let by_model = &usage.by_model;
    assert_eq!(by_model.len(), 1);
    assert_eq!((by_model[0].requests, by_model[0].cost), (5, Micros(3_500)));
}

#[tokio::test]
async fn concurrent_reservations_never_overspend_on_sqlite() {
    let db = TestDb::sqlite();
    concurrent_reservations_never_overspend(&db.url).await;
}

#[tokio::test]
async fn concurrent_reservations_never_overspend_on_postgres() {
    let db = TestDb::postgres().await;
    concurrent_reservations_never_overspend(&db.url).await;
    db.cleanup().await;
}

#[tokio::test]
async fn periods_roll_over_on_utc_day_week_and_month_boundaries() {
    let db = TestDb::sqlite();
    let store = store::connect(&db.url).await.unwrap();
    let usd = |n: i64| Micros(n * 1_000_000);
    project(&store, "p", Limits { daily: Some(usd(1)), weekly: Some(usd(2)), monthly: Some(usd(3)) }).await;
    let clock = ManualClock::new(at("2026-11-29T23:00:00Z")); // a Sunday
    let budget =
        Budget::new(Arc::clone(&store), Arc::new(clock.clone()), "i".into(), Duration::from_secs(600));
    let mut n = 0;
    let mut spend = |budget: Budget| {
        n += 1;
        let id = format!("req{n}");
        async move {
            let r = budget.reserve(reservation(id, "p", 1_000_000)).await?;
            let done =
                Completion { status: "succeeded".into(), cost: Micros(1_000_000), ..Completion::default() };
            budget.settle(r, done).await?;
            Ok::<(), BudgetError>(())
        }
    };
    spend(budget.clone()).await.unwrap();
    let refused = spend(budget.clone()).await.unwrap_err();
    assert!(
        refused.to_string().contains("daily") && refused.to_string().contains("2026-11-30T00:00:00"),
        "{refused}"
    );

    clock.set(at("2026-11-30T00:00:00Z")); // Monday: new day and week, same month
    spend(budget.clone()).await.unwrap();
    let month = budget.usage("p", PeriodKind::Month).await.unwrap();
    assert_eq!((month.period_start, month.spent), (at("2026-11-01T00:00:00Z"), usd(2)));
    let week = budget.usage("p", PeriodKind::Week).await.unwrap();
    assert_eq!(
        (week.period_start, week.period_end, week.spent),
        (at("2026-11-30T00:00:00Z"), at("2026-12-07T00:00:00Z"), usd(1))
    );

    clock.set(at("2026-12-01T00:00:00Z")); // new day and month, same week
    spend(budget.clone()).await.unwrap();
    let month = budget.usage("p", PeriodKind::Month).await.unwrap();
    assert_eq!((month.period_start, month.spent), (at("2026-12-01T00:00:00Z"), usd(1)));
    let week = budget.usage("p", PeriodKind::Week).await.unwrap();
    assert_eq!(week.spent, usd(2), "the week spans November and December");

    clock.set(at("2026-12-02T09:00:00Z")); // new day, but the week is spent
    let refused = spend(budget.clone()).await.unwrap_err();
    assert!(
        refused.to_string().contains("weekly") && refused.to_string().contains("2026-12-07T00:00:00"),
        "{refused}"
    );
    let day = budget.usage("p", PeriodKind::Day).await.unwrap();
    assert_eq!((day.spent, day.reserved, day.remaining()), (usd(0), usd(0), Some(usd(1))));
}

/// Learns what one request of this shape reserves, from its ledger row.
async fn reservation_for(app: &TestApp, body: &Value) -> Micros {
    let response = client()
        .post(format!("{}/v1/chat/completions", app.url))
        .header("x-request-id", "probe")
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.wait_settled("default").await;
    app.state.budget.store().ledger_row("probe").await.unwrap().expect("probe row").reserved
}

/// A budget that fits exactly N requests, hit by 20×N at once.
async fn gateway_admits_exactly_what_the_budget_fits(db: &TestDb) {
    const N: usize = 3;
    let opts = Options { pool_size: N, queue_limit: 20 * N, ..Options::default() };
    let app = TestApp::spawn(db, opts).await;
    // Runs take 3 s, so every reservation below is tried while the
    // admitted ones are still in flight.
    let mut body = json!({"model": "haiku", "max_tokens": 200,
        "messages": [{"role": "user", "content": "budget test [sim:first_token_ms=3000]"}]});
    let each = reservation_for(&app, &body).await;
    let limit_usd = Micros(each.0 * N as i64).as_usd();
    app.create_project("exact", Some(limit_usd)).await;
    body["project_id"] = json!("exact");
    let requests = (0..20 * N).map(|_| app.chat(body.clone()));
    let responses = futures::future::join_all(requests).await;
    let mut ok = 0;
    for r in responses {
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                let error: Value = r.json().await.unwrap();
                assert_eq!(error["error"]["type"], "insufficient_quota", "{error}");
                let message = error["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains("exact") && message.contains("daily") && message.contains("resets"),
                    "{message}"
                );
            }
            other => panic!("unexpected status {other}: {}", r.text().await.unwrap_or_default()),
        }
    }
    assert_eq!(ok, N, "exactly the requests the budget fits run");
    let usage = app.wait_settled("exact").await;
    assert!(usage["spent_usd"].as_f64().unwrap() <= limit_usd);
    assert!(usage["spent_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(usage["limit_usd"].as_f64(), Some(limit_usd));
    assert_eq!(usage["by_model"][0]["requests"], json!(N), "usage counts the requests that ran");
    let rows = app.state.budget.store().ledger("exact", 1000).await.unwrap();
    assert_eq!(rows.len(), 20 * N, "refused requests are in the ledger too");
    assert_eq!(rows.iter().filter(|r| r.status == "budget_exceeded").count(), 19 * N);
    assert_eq!(app.sim.sim.request_count(), N + 1, "refused requests never reached a worker");
    app.stop().await;
}

#[tokio::test]
async fn gateway_admits_exactly_what_the_budget_fits_on_sqlite() {
    gateway_admits_exactly_what_the_budget_fits(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn gateway_admits_exactly_what_the_budget_fits_on_postgres() {
    let db = TestDb::postgres().await;
    gateway_admits_exactly_what_the_budget_fits(&db).await;
    db.cleanup().await;
}

#[tokio::test]
async fn two_gateway_processes_share_one_postgres_budget_exactly() {
    const N: usize = 4;
    let db = TestDb::postgres().await;
    let sim = ccgate_sim::spawn(Default::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let env = [("CCGATE_POOL_SIZE", "4"), ("CCGATE_QUEUE_LIMIT", "100")];
    let a = GatewayProcess::start(&db.url, &sim, &marker, work.path(), &env);
    let b = GatewayProcess::start(&db.url, &sim, &marker, work.path(), &env);
    let body = json!({"model": "haiku", "max_tokens": 100, "project_id": "shared",
        "messages": [{"role": "user", "content": "shared budget [sim:first_token_ms=3000]"}]});
    // The reservation is a pure function of the request and the price
    // table; an unlimited probe project learns it.
    let probe = json!({"id": "probe", "name": "probe"});
    assert_eq!(
        client().post(format!("{}/admin/projects", a.url)).json(&probe).send().await.unwrap().status(),
        201
    );
    let mut probe_body = body.clone();
    probe_body["project_id"] = json!("probe");
    let r = client()
        .post(format!("{}/v1/chat/completions", a.url))
        .header("x-request-id", "probe-1")
        .json(&probe_body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let store = store::connect(&db.url).await.unwrap();
    let mut reserved = Micros(0);
    for _ in 0..100 {
        if let Some(row) = store.ledger_row("probe-1").await.unwrap() {
            if row.status != "in_progress" {
                reserved = row.reserved;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reserved > Micros(0));
    let limit = Micros(reserved.0 * N as i64);
    let create = json!({"id": "shared", "name": "shared", "budget": {"daily_usd": limit.as_usd()}});
    assert_eq!(
        client().post(format!("{}/admin/projects", b.url)).json(&create).send().await.unwrap().status(),
        201
    );

    let requests = (0..20 * N).map(|i| {
        let url = if i % 2 == 0 { &a.url } else { &b.url };
        client().post(format!("{url}/v1/chat/completions")).json(&body).send()
    });
    let statuses: Vec<u16> =
        futures::future::join_all(requests).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), N, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 19 * N, "{statuses:?}");

    let day_start = ccgate::budget::period::bounds(PeriodKind::Day, Utc::now()).0.timestamp();
    let mut totals = store.period_totals("shared", PeriodKind::Day, day_start).await.unwrap();
    for _ in 0..100 {
        if totals.reserved == Micros(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        totals = store.period_totals("shared", PeriodKind::Day, day_start).await.unwrap();
    }
    assert_eq!(totals.reserved, Micros(0));
    assert!(totals.spent <= limit && totals.spent > Micros(0));
    drop((a, b));
    assert!(common::wait_for(Duration::from_secs(10), || processes_with_marker(&marker)
        .is_empty()
        .then_some(())
        .ok_or(()))
    .await
    .is_ok());
    db.cleanup().await;
}

/// Under steady writes a passive checkpoint never reaches the last frame,
/// so without a restarting checkpoint the WAL would grow for as long as the
/// writes go on (hundreds of MB in this test); it is started over instead
/// once it passes 4,096 pages (16 MiB).
#[tokio::test]
async fn the_sqlite_wal_stays_bounded_under_steady_writes() {
    let db = TestDb::sqlite();
    let store = store::connect(&db.url).await.unwrap();
    project(&store, "steady", Limits::default()).await;
    let budget = Budget::new(
        Arc::clone(&store),
        Arc::new(ccgate::clock::SystemClock),
        "test-instance".into(),
        Duration::from_secs(600),
    );
    let wal = std::path::PathBuf::from(format!("{}-wal", db.url.trim_start_matches("sqlite://")));
    let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    // One write after another (no shared commits), for well over a
    // checkpoint period: far more than 16 MiB of WAL frames in all.
    let started = std::time::Instant::now();
    let mut written = 0;
    let mut largest = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let held = budget.reserve(reservation(format!("r{written}"), "steady", 1_000)).await.unwrap();
        let completion =
            Completion { status: "succeeded".into(), cost: Micros(500), ..Completion::default() };
        assert!(budget.settle(held, completion).await.unwrap());
        written += 1;
        largest = largest.max(wal_size());
    }
    // The file keeps its largest size (a restart writes over it from the
    // start): a few checkpoint passes' worth past 16 MiB at most.
    let limit = 64 * 1024 * 1024;
    assert!(largest <= limit, "the WAL reached {largest} bytes in {written} reserve+settle pairs");
    let day = ccgate::budget::period::bounds(PeriodKind::Day, Utc::now()).0.timestamp();
    let totals = store.period_totals("steady", PeriodKind::Day, day).await.unwrap();
    assert_eq!(totals.spent, Micros(500 * written), "every settlement is in the totals");
    assert_eq!(totals.reserved, Micros(0));
}

/// Writes that arrive together share a commit on SQLite (and run as one
/// function call each on PostgreSQL); one refused for a reason of its own
/// (an id already recorded, an unknown project) changes nothing and does
/// not take the others down with it.
#[tokio::test]
async fn a_refused_write_among_concurrent_ones_is_refused_alone_on_sqlite() {
    refused_alone(&TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_refused_write_among_concurrent_ones_is_refused_alone_on_postgres() {
    let db = TestDb::postgres().await;
    refused_alone(&db).await;
    db.cleanup().await;
}

async fn refused_alone(db: &TestDb) {
    let store = store::connect(&db.url).await.unwrap();
    project(&store, "shared", Limits::default()).await;
    let budget = Budget::new(
        Arc::clone(&store),
        Arc::new(ccgate::clock::SystemClock),
        "test-instance".into(),
        Duration::from_secs(600),
    );
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let budget = budget.clone();
            // Two requests share an id; two name a project that does not exist.
            let id = if i < 2 { "twice".to_string() } else { format!("r{i}") };
            let project = if (2..4).contains(&i) { "nowhere" } else { "shared" };
            tokio::spawn(async move { budget.reserve(reservation(id, project, 1_000)).await })
        })
        .collect();
    let mut reserved = 0;
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => reserved += 1,
            Err(BudgetError::Store(e)) => refused.push(e.to_string()),
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    }
    assert_eq!(reserved, 37, "{refused:?}");
    assert_eq!(refused.iter().filter(|e| e.contains("already recorded")).count(), 1, "{refused:?}");
    assert_eq!(refused.iter().filter(|e| e.contains("not found")).count(), 2, "{refused:?}");
    let day = ccgate::budget::period::bounds(PeriodKind::Day, Utc::now()).0.timestamp();
    let totals = store.period_totals("shared", PeriodKind::Day, day).await.unwrap();
    assert_eq!(totals.reserved, Micros(37 * 1_000), "exactly the reservations that were granted");
    assert_eq!(store.ledger("shared", 100).await.unwrap().len(), 37);
}

/// A SQLite store (and its file's path) with project "p" limited to 10,000
/// micro-dollars a day, and a budget over it run by `instance`.
async fn sqlite_budget(instance: &str) -> (TestDb, String, Arc<dyn Store>, Budget) {
    let db = TestDb::sqlite();
    let path = db.url.strip_prefix("sqlite://").unwrap().to_string();
    let store = store::connect(&db.url).await.unwrap();
    project(&store, "p", Limits { daily: Some(Micros(10_000)), weekly: None, monthly: None }).await;
    let clock = Arc::new(ccgate::clock::SystemClock);
    let budget = Budget::new(Arc::clone(&store), clock, instance.into(), Duration::from_secs(600));
    (db, path, store, budget)
}

/// A journal line of a dead writer: a reservation of project "p", already
/// past its expiry.
fn journaled_reservation(id: &str, amount: i64, now: chrono::DateTime<Utc>) -> String {
    serde_json::to_string(&store::NewReservation {
        request_id: id.into(),
        created_at_ms: now.timestamp_millis(),
        project_id: "p".into(),
        key_id: None,
        endpoint: "/v1/chat/completions".into(),
        model_requested: Some("haiku".into()),
        model_used: Some("claude-haiku-4-5-20251001".into()),
        amount: Micros(amount),
        periods: PeriodKind::ALL.map(|kind| store::PeriodSlot {
            kind,
            start: ccgate::budget::period::bounds(kind, now).0.timestamp(),
        }),
        owner: "dead-instance".into(),
        expires_at_ms: now.timestamp_millis() - 1,
    })
    .unwrap()
}

/// A reservation the SQLite writer answered before its commit, when the
/// writer died in between, is in its journal: the next store to open the
/// database (or a recovery pass) writes it as a ledger row, counts it
/// against the limit, and recovery then charges it in full. Lines already
/// committed are not written twice, and a live writer's journal is left
/// alone.
#[tokio::test]
async fn a_dead_writers_journal_brings_back_its_uncommitted_reservations() {
    let (db, path, store, budget) = sqlite_budget("live").await;
    let committed = budget.reserve(reservation("committed-1".into(), "p", 2_000)).await.unwrap();

    // What a writer that died would have left: a committed reservation and
    // one it answered but never committed (already past its expiry).
    let now = Utc::now();
    let line = |id: &str, amount: i64| journaled_reservation(id, amount, now);
    let orphan = format!("{path}.reservations.dead-1");
    std::fs::write(&orphan, format!("{}\n{}\n", line("committed-1", 2_000), line("orphan-1", 5_000)))
        .unwrap();
    let live: Vec<_> = std::fs::read_dir(std::path::Path::new(&path).parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path().display().to_string())
        .filter(|p| p.contains(".reservations.") && *p != orphan)
        .collect();
    assert_eq!(live.len(), 1, "the live store keeps its own journal: {live:?}");

    // A second store on the same database replays the dead writer's journal
    // as it opens, and leaves the live one's alone.
    let second = store::connect(&db.url).await.unwrap();
    assert!(!std::path::Path::new(&orphan).exists(), "a replayed journal is removed");
    assert!(std::path::Path::new(&live[0]).exists(), "a live writer's journal is not touched");
    let day = ccgate::budget::period::bounds(PeriodKind::Day, now).0.timestamp();
    let totals = second.period_totals("p", PeriodKind::Day, day).await.unwrap();
    assert_eq!((totals.spent, totals.reserved), (Micros(0), Micros(7_000)), "counted once each");
    let row = second.ledger_row("orphan-1").await.unwrap().expect("the answered reservation has its row");
    assert_eq!((row.status.as_str(), row.reserved), ("in_progress", Micros(5_000)));
    assert_eq!(second.ledger("p", 10).await.unwrap().len(), 2, "the committed one is not written twice");

    // It holds its place in the budget until recovery charges it in full.
    let refused = budget.reserve(reservation("too-much".into(), "p", 4_000)).await;
    assert!(matches!(refused, Err(BudgetError::Exhausted { .. })), "{refused:?}");
    let fits = budget.reserve(reservation("fits".into(), "p", 3_000)).await.unwrap();
    assert_eq!(budget.recover(Duration::from_secs(60)).await.unwrap(), 1);
    let row = store.ledger_row("orphan-1").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.cost), ("interrupted", Micros(5_000)));
    let totals = store.period_totals("p", PeriodKind::Day, day).await.unwrap();
    assert_eq!((totals.spent, totals.reserved), (Micros(5_000), Micros(5_000)));
    for held in [committed, fits] {
        let done = Completion { status: "succeeded".into(), cost: Micros(1_000), ..Completion::default() };
        assert!(budget.settle(held, done).await.unwrap());
    }
    let totals = store.period_totals("p", PeriodKind::Day, day).await.unwrap();
    assert_eq!((totals.spent, totals.reserved), (Micros(7_000), Micros(0)));
}

/// A reservation made while another connection holds SQLite's write lock
/// does not hold its caller's runtime thread for the busy timeout: it goes
/// through the writer thread, which waits for the lock, and is answered
/// once the lock is free.
#[tokio::test]
async fn a_reservation_waits_for_another_writer_off_the_runtime_thread() {
    let (_db, path, _, budget) = sqlite_budget("i").await;
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let task = tokio::spawn({
        let budget = budget.clone();
        async move { budget.reserve(reservation("r1".into(), "p", 1_000)).await }
    });
    // This test's runtime has one thread: the reservation runs here, up to
    // where it waits.
    let started = std::time::Instant::now();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(started.elapsed() < Duration::from_secs(5), "the runtime thread waited on the lock");
    assert!(!task.is_finished(), "no answer while the lock is held");
    other.execute_batch("COMMIT").unwrap();
    let held = task.await.unwrap().expect("reserved once the lock was free");
    let done = Completion { status: "succeeded".into(), cost: Micros(400), ..Completion::default() };
    assert!(budget.settle(held, done).await.unwrap());
    let usage = budget.usage("p", PeriodKind::Day).await.unwrap();
    assert_eq!((usage.spent, usage.reserved), (Micros(400), Micros(0)));
}

/// A settlement the SQLite writer answered before its commit is in its
/// journal too: when the writer died before the commit, replaying the
/// journal settles the request at what it really cost, not the full
/// reservation that recovery would otherwise charge. A settlement of a row
/// already settled changes nothing, and a refused request's row is written
/// once however often its line appears.
#[tokio::test]
async fn a_dead_writers_journal_brings_back_its_uncommitted_settlements() {
    let (db, path, _, budget) = sqlite_budget("live").await;
    let now = Utc::now();
    let day = ccgate::budget::period::bounds(PeriodKind::Day, now).0.timestamp();
    // Settled and committed here; the dead writer's journal settles it again.
    let settled = budget.reserve(reservation("settled-1".into(), "p", 1_000)).await.unwrap();
    let done = Completion { status: "succeeded".into(), cost: Micros(300), ..Completion::default() };
    assert!(budget.settle(settled, done.clone()).await.unwrap());

    let reservation_line = journaled_reservation("orphan-2", 5_000, now);
    let settlement_line = |id: &str, cost: i64| {
        let completion = Completion {
            finished_at_ms: now.timestamp_millis(),
            status: "succeeded".into(),
            http_status: Some(200),
            input_tokens: 12,
            output_tokens: 34,
            cost: Micros(cost),
            ..Completion::default()
        };
        serde_json::json!({ "settled": id, "completion": completion }).to_string()
    };
    let record_line = serde_json::json!({ "recorded": store::LedgerEntry {
        request_id: "refused-2".into(),
        created_at_ms: now.timestamp_millis(),
        project_id: "p".into(),
        key_id: None,
        endpoint: "/v1/chat/completions".into(),
        model_requested: None,
        completion: Completion { status: "rejected".into(), http_status: Some(429), ..Completion::default() },
    }})
    .to_string();
    let orphan = format!("{path}.reservations.dead-2");
    let journal = [
        reservation_line,
        settlement_line("orphan-2", 1_234),
        settlement_line("settled-1", 900),
        record_line.clone(),
        record_line,
    ]
    .join("\n");
    std::fs::write(&orphan, journal + "\n").unwrap();

    let second = store::connect(&db.url).await.unwrap();
    assert!(!std::path::Path::new(&orphan).exists(), "a replayed journal is removed");
    let row = second.ledger_row("orphan-2").await.unwrap().expect("the reservation has its row");
    assert_eq!((row.status.as_str(), row.cost, row.output_tokens), ("succeeded", Micros(1_234), 34));
    let row = second.ledger_row("settled-1").await.unwrap().unwrap();
    assert_eq!(row.cost, Micros(300), "a row settled already keeps its settlement");
    let row = second.ledger_row("refused-2").await.unwrap().expect("a refused request's row is written once");
    assert_eq!((row.status.as_str(), row.http_status), ("rejected", Some(429)));
    let totals = second.period_totals("p", PeriodKind::Day, day).await.unwrap();
    assert_eq!((totals.spent, totals.reserved), (Micros(1_534), Micros(0)));
    assert_eq!(budget.recover(Duration::from_secs(60)).await.unwrap(), 0, "nothing left to recover");
}

/// A commit that fails (here a trigger refuses every write of the period
/// totals, which each commit makes) loses nothing answered before it: the
/// reservation and a refused request's row were answered from the journal,
/// and both are written again by the next commit that succeeds.
#[tokio::test]
async fn writes_answered_before_a_failed_commit_are_written_by_the_next_one() {
    let (_db, path, store, budget) = sqlite_budget("live").await;
    let sql = rusqlite::Connection::open(&path).unwrap();
    sql.execute_batch(
        "CREATE TABLE fail_commits (x INTEGER);
         INSERT INTO fail_commits VALUES (1);
         CREATE TRIGGER fail_insert BEFORE INSERT ON period_totals WHEN EXISTS (SELECT 1 FROM fail_commits)
           BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
         CREATE TRIGGER fail_update BEFORE UPDATE ON period_totals WHEN EXISTS (SELECT 1 FROM fail_commits)
           BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .unwrap();
    let kept = budget.reserve(reservation("kept-1".into(), "p", 1_000)).await.unwrap();
    let refused = store::LedgerEntry {
        request_id: "refused-1".into(),
        created_at_ms: Utc::now().timestamp_millis(),
        project_id: "p".into(),
        key_id: None,
        endpoint: "/v1/chat/completions".into(),
        model_requested: Some("opus".into()),
        completion: Completion {
            status: "rejected".into(),
            http_status: Some(429),
            error_message: Some("over budget".into()),
            ..Completion::default()
        },
    };
    budget.record(refused).await.expect("a refusal's row is answered although its commit fails");
    // Reads wait for a commit, which fails as long as the trigger does.
    assert!(store.ledger_row("kept-1").await.is_err());

    sql.execute("DELETE FROM fail_commits", []).unwrap();
    let row = store.ledger_row("kept-1").await.unwrap().expect("the reservation is written");
    assert_eq!(row.status, "in_progress");
    let row = store.ledger_row("refused-1").await.unwrap().expect("the refusal's row is written");
    assert_eq!((row.status.as_str(), row.http_status), ("rejected", Some(429)));
    let day = ccgate::budget::period::bounds(PeriodKind::Day, Utc::now()).0.timestamp();
    let totals = store.period_totals("p", PeriodKind::Day, day).await.unwrap();
    assert_eq!((totals.spent, totals.reserved), (Micros(0), Micros(1_000)));

    let done = Completion { status: "succeeded".into(), cost: Micros(300), ..Completion::default() };
    assert!(budget.settle(kept, done).await.unwrap());
    let totals = store.period_totals("p", PeriodKind::Day, day).await.unwrap();
    assert_eq!((totals.spent, totals.reserved), (Micros(300), Micros(0)));
}
