//! Reserve + settle cost and throughput on SQLite and PostgreSQL.
//!
//!     cargo bench --bench budget [-- --postgres postgres://postgres@127.0.0.1:5432/postgres]
//!
//! Prints, per store: the latency of one reserve+settle pair (median and
//! p99, sequential), and the pairs per second 64 concurrent callers sustain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccgate::budget::{Budget, ReservationRequest};
use ccgate::clock::SystemClock;
use ccgate::money::Micros;
use ccgate::store::{self, Completion, Limits, Project};

const SEQUENTIAL: usize = 2_000;
const CONCURRENT_CALLERS: usize = 64;
const CONCURRENT_PAIRS: usize = 20_000;

fn request(i: usize, tag: &str) -> ReservationRequest {
    ReservationRequest {
        request_id: format!("{tag}-{i}"),
        project_id: "bench".into(),
        key_id: None,
        endpoint: "/bench".into(),
        model_requested: Some("haiku".into()),
        model_used: Some("claude-haiku-4-5-20251001".into()),
        amount: Micros(2_000),
    }
}

async fn pair(budget: &Budget, i: usize, tag: &str) {
    let reservation = budget.reserve(request(i, tag)).await.expect("reserve");
    let done = Completion { status: "succeeded".into(), cost: Micros(1_000), ..Completion::default() };
    budget.settle(reservation, done).await.expect("settle");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn bench(label: &str, url: &str) {
    let store = store::connect(url).await.expect("open store");
    let limits =
        Limits { daily: Some(Micros(1_000_000_000)), weekly: None, monthly: Some(Micros(1_000_000_000)) };
    store
        .create_project(&Project {
            id: "bench".into(),
            name: "bench".into(),
            limits,
            created_at_ms: 0,
            updated_at_ms: 0,
        })
        .await
        .expect("project");
    let budget = Budget::new(store, Arc::new(SystemClock), "bench".into(), Duration::from_secs(600));

    let mut times = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        let start = Instant::now();
        pair(&budget, i, "seq").await;
        times.push(start.elapsed());
    }
    times.sort();

    let start = Instant::now();
    let per_caller = CONCURRENT_PAIRS / CONCURRENT_CALLERS;
    let callers: Vec<_> = (0..CONCURRENT_CALLERS)
        .map(|c| {
            let budget = budget.clone();
            tokio::spawn(async move {
                for i in 0..per_caller {
                    pair(&budget, c * per_caller + i, "par").await;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }
    let elapsed = start.elapsed();
    let rate = (per_caller * CONCURRENT_CALLERS) as f64 / elapsed.as_secs_f64();
    println!(
        "{label:<11} reserve+settle sequential: median {:>6} µs  p99 {:>6} µs   |   {CONCURRENT_CALLERS} callers: {:>7.0} pairs/s",
        percentile(&times, 0.5).as_micros(),
        percentile(&times, 0.99).as_micros(),
        rate
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let postgres = args.iter().position(|a| a == "--postgres").and_then(|i| args.get(i + 1).cloned());
    let dir = tempfile::tempdir().expect("temp dir");
    bench("SQLite", &format!("sqlite://{}", dir.path().join("bench.db").display())).await;
    let admin = postgres.unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    match create_pg_database(&admin).await {
        Ok((url, name)) => {
            bench("PostgreSQL", &url).await;
            drop_pg_database(&admin, &name).await;
        }
        Err(e) => println!("PostgreSQL  skipped: {e}"),
    }
}

async fn create_pg_database(admin: &str) -> Result<(String, String), sqlx::Error> {
    use sqlx::Connection;
    let name = format!("ccgate_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    Ok((format!("{base}/{name}"), name))
}

async fn drop_pg_database(admin: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
    }
}
