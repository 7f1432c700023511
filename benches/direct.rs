//! The direct backend under load: an open-loop load generator at fixed
//! rates against the simulated upstream alone and against ccgate's direct
//! path to the same simulator, the most each sustains (closed loop, same
//! client), ccgate's resident memory, and many concurrent streams.
//!
//!     cargo build --release --workspace --bins
//!     cargo bench --bench direct [-- --rates 250,500,1000 --secs 10 --streams 1000]
//!
//! Both servers run as their own release processes on 127.0.0.1 (port 0);
//! the generator is one thread. Requests are sent on a fixed schedule
//! whatever the answers do (open loop); latency is from each request's send
//! to the end of its response body, and the table shows how late the
//! generator sent (p99), so a generator that fell behind shows.
//!
//! Both targets are asked the same way: by default for a whole answer
//! (ccgate then asks the simulator for a whole message too); with
//! `--stream`, for a stream (ccgate then streams from the simulator).
//!
//! Beside them, whole answers only, a bare translating proxy (`bare.rs`:
//! the second HTTP hop and the JSON in and out, nothing of ccgate's) shows
//! the floor: what any gateway on this path adds on this machine.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

#[path = "direct/bare.rs"]
mod bare;

const MODEL_ID: &str = "claude-haiku-4-5-20251001";
/// Short replies: the point is what the gateway adds, not the reply's length.
const PROMPT: &str = "[sim:words=5] bench";

/// The gateway's admin key with `--key` (ignored in the open mode).
const ADMIN_KEY: &str = "bench-admin-key-0123456789";

struct Args {
    rates: Vec<u64>,
    secs: u64,
    concurrency: usize,
    streams: usize,
    log: String,
    /// Stream the rate and throughput runs' answers (both targets).
    stream: bool,
    /// The gateway's runtime worker threads (`TOKIO_WORKER_THREADS`);
    /// unset, tokio's default: one per core.
    gateway_threads: Option<usize>,
    /// Ledger rows written before the gateway starts, as a long-running
    /// gateway's database would hold (random request ids, as clients'
    /// own ids and earlier versions' ids are).
    ledger_rows: u64,
    /// Measure the bare proxy too (whole answers only).
    floor: bool,
    /// Call ccgate with a project key (an admin key set, a project and its
    /// key made through `/admin` before the runs), as deployments do,
    /// instead of in the open single-user mode.
    key: bool,
    /// With `--key`: give the key requests- and tokens-per-minute limits
    /// (too high to be reached), so each request is counted against them.
    key_limits: bool,
    /// Run the gateway on a fresh PostgreSQL database made through this
    /// server URL (dropped at the end) instead of SQLite.
    postgres: Option<String>,
    /// The gateway's `queue_limit`: requests waiting for a direct slot past
    /// `api_max_concurrent` (streams + 100) before it answers 503.
    queue_limit: usize,
}

fn args() -> Args {
    let mut args = Args {
        rates: vec![250, 500, 1000],
        secs: 10,
        concurrency: 32,
        streams: 1000,
        log: "info,sqlx=warn".into(),
        stream: false,
        gateway_threads: None,
        ledger_rows: 0,
        floor: true,
        key: false,
        key_limits: false,
        postgres: None,
        queue_limit: 4096,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rates" => args.rates = value().split(',').map(|r| r.parse().expect("rate")).collect(),
            "--secs" => args.secs = value().parse().expect("secs"),
            "--concurrency" => args.concurrency = value().parse().expect("concurrency"),
            "--streams" => args.streams = value().parse().expect("streams"),
            "--log" => args.log = value(),
            "--stream" => args.stream = true,
            "--gateway-threads" => args.gateway_threads = Some(value().parse().expect("gateway threads")),
            "--ledger-rows" => args.ledger_rows = value().parse().expect("ledger rows"),
            "--no-floor" => args.floor = false,
            "--key" => args.key = true,
            "--key-limits" => (args.key, args.key_limits) = (true, true),
            "--postgres" => args.postgres = Some(value()),
            "--queue-limit" => args.queue_limit = value().parse().expect("queue limit"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Asks the process to stop (SIGTERM) and waits for it, at most 60 s;
    /// whether it stopped by itself.
    fn stop(&mut self) -> bool {
        let Ok(pid) = i32::try_from(self.child.id()) else { return false };
        // SAFETY: plain syscall on a process this program started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The whole group: a profiler wrapping the gateway (BENCH_WRAP) too.
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: plain syscall on a group this program created.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits for the line carrying its address.
fn start(mut cmd: Command, from_stderr: bool, marker: &str) -> Server {
    cmd.stdin(Stdio::null()).process_group(0);
    if from_stderr {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = cmd.spawn().expect("start a server (did you build with --release --workspace --bins?)");
    let pipe: Box<dyn Read + Send> = if from_stderr {
        Box::new(child.stderr.take().expect("stderr"))
    } else {
        Box::new(child.stdout.take().expect("stdout"))
    };
    let mut reader = BufReader::new(pipe);
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap_or(0) > 0, "the server exited before listening");
        if let Some(rest) = line.split(marker).nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default().trim_start_matches("http://");
            break format!("http://{addr}");
        }
    };
    // Keep draining, so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    Server { child, url }
}

fn raise_fd_limit() {
    // SAFETY: plain syscalls on this process's own limits; children inherit them.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system, all threads) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: a plain query of a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 here).
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz)
}

/// Context switches so far of all of a process's threads (those alive now).
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// CPU used by each process of the benchmark over a run.
struct CpuMeter {
    pids: [u32; 3],
    start: [Duration; 3],
    switches: u64,
}

impl CpuMeter {
    /// The load generator (this process), the simulator and the proxy
    /// between them (ccgate or the bare proxy).
    fn start(sim: u32, proxy: u32) -> CpuMeter {
        let pids = [std::process::id(), sim, proxy];
        CpuMeter { pids, start: pids.map(cpu_time), switches: context_switches(proxy) }
    }

    /// The proxy's context switches per request.
    fn proxy_switches(&self, requests: f64) -> f64 {
        context_switches(self.pids[2]).saturating_sub(self.switches) as f64 / requests.max(1.0)
    }

    /// Microseconds of CPU per request for each of the three processes.
    fn per_request_us(&self, requests: f64) -> [f64; 3] {
        let mut used = [0.0; 3];
        for (i, pid) in self.pids.iter().enumerate() {
            used[i] = (cpu_time(*pid).saturating_sub(self.start[i])).as_secs_f64() * 1e6 / requests.max(1.0);
        }
        used
    }
}

/// Samples a process's RSS every 50 ms while alive; keeps the peak.
struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, stopped) = (Arc::clone(&peak_kib), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let rss = (memory_mib(pid).0 * 1024.0) as u64;
                peak.fetch_max(rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler { peak_kib, stop }
    }

    fn peak_mib(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Sim,
    /// The bare proxy (`bare.rs`).
    Bare,
    Gateway,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Sim => "sim",
            Target::Bare => "bare proxy → sim",
            Target::Gateway => "ccgate → sim",
        }
    }

    /// The proxy in front of the simulator, in "added by …".
    fn proxy(self) -> &'static str {
        if self == Target::Bare {
            "the bare proxy"
        } else {
            "ccgate"
        }
    }
}

#[derive(Clone)]
struct Endpoints {
    client: reqwest::Client,
    sim: String,
    gateway: String,
    bare: String,
    /// Whether the rate and throughput runs stream.
    stream: bool,
    /// The project key ccgate is called with (`--key`).
    key: Option<String>,
    /// Responses ccgate gave (any status), for the ledger's audit.
    answered: Arc<AtomicU64>,
}

impl Endpoints {
    fn request(&self, target: Target, prompt: &str, stream: bool) -> reqwest::RequestBuilder {
        match target {
            Target::Sim => self
                .client
                .post(format!("{}/v1/messages", self.sim))
                .header("x-api-key", "sk-bench")
                .header("anthropic-version", "2023-06-01")
                .json(&json!({"model": MODEL_ID, "max_tokens": 1000, "stream": stream,
                              "messages": [{"role": "user", "content": prompt}]})),
            Target::Gateway | Target::Bare => {
                let request = self
                    .client
                    .post(format!(
                        "{}/v1/chat/completions",
                        if target == Target::Bare { &self.bare } else { &self.gateway }
                    ))
                    .json(&json!({"model": "haiku", "max_tokens": 1000, "stream": stream,
                            "messages": [{"role": "user", "content": prompt}]}));
                match (&self.key, target) {
                    (Some(key), Target::Gateway) => request.bearer_auth(key),
                    _ => request,
                }
            }
        }
    }

    /// One whole request, its body read to the end. `Err` on any failure.
    async fn one(&self, target: Target, prompt: &str, stream: bool) -> Result<String, String> {
        let response = self.request(target, prompt, stream).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        if target == Target::Gateway {
            self.answered.fetch_add(1, Ordering::Relaxed);
        }
        if status != 200 {
            return Err(format!("{status}: {body}"));
        }
        Ok(body)
    }
}

struct RunStats {
    latencies: Vec<Duration>,
    /// How late the generator sent (p99), to show it kept its schedule.
    late_p99: Duration,
    errors: usize,
    /// The kinds of error seen (the text before any digit), with counts.
    error_kinds: std::collections::BTreeMap<String, usize>,
    achieved_rps: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The sum and count of ccgate's `gateway_overhead_seconds` histogram: the
/// time spent in the gateway around each run (validation, reservation,
/// queue, answer dispatch), apart from the HTTP hops.
async fn overhead_totals(endpoints: &Endpoints) -> (f64, f64) {
    let metrics = endpoints.client.get(format!("{}/metrics", endpoints.gateway)).bearer_auth(ADMIN_KEY);
    let text = match metrics.send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("ccgate_gateway_overhead_seconds_sum"), value("ccgate_gateway_overhead_seconds_count"))
}

/// A project with a budget and a key of its own, made through `/admin`;
/// the key's secret.
async fn project_key(endpoints: &Endpoints, limits: bool) -> String {
    let admin = |path: &str, body: Value| {
        endpoints.client.post(format!("{}{path}", endpoints.gateway)).bearer_auth(ADMIN_KEY).json(&body)
    };
    let budget = json!({"id": "bench", "budget": {"daily_usd": 1000000.0}});
    let created = admin("/admin/projects", budget).send().await.expect("create the bench project");
    assert_eq!(
        created.status(),
        201,
        "create the bench project: {}",
        created.text().await.unwrap_or_default()
    );
    let key = match limits {
        true => json!({"name": "bench", "rpm_limit": 1_000_000_000, "tpm_limit": 1_000_000_000_000i64}),
        false => json!({"name": "bench"}),
    };
    let key = admin("/admin/projects/bench/keys", key).send().await.expect("create a key");
    assert_eq!(key.status(), 201, "create the bench key");
    let key: Value = key.json().await.expect("the key's JSON");
    key["key"].as_str().expect("the key's secret").to_string()
}

/// Sends `rate` requests a second for `secs` seconds on schedule, whatever
/// the answers do.
async fn open_loop(endpoints: &Endpoints, target: Target, rate: u64, secs: u64) -> RunStats {
    let total = rate * secs;
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at).await;
        let endpoints = endpoints.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let result = endpoints.one(target, PROMPT, endpoints.stream).await;
            result.map(|_| (sent.elapsed(), sent.saturating_duration_since(at)))
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut lateness = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    let mut error_kinds = std::collections::BTreeMap::new();
    for task in tasks {
        match task.await {
            Ok(Ok((latency, late))) => {
                latencies.push(latency);
                lateness.push(late);
            }
            Ok(Err(e)) => {
                errors += 1;
                // Up to the first number past the status: counts and ports vary.
                let cut =
                    e.char_indices().skip(4).find(|(_, c)| c.is_ascii_digit()).map_or(e.len(), |(i, _)| i);
                *error_kinds.entry(e[..cut].chars().take(90).collect()).or_default() += 1;
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    lateness.sort();
    RunStats {
        achieved_rps: latencies.len() as f64 / elapsed,
        late_p99: percentile(&lateness, 0.99),
        latencies,
        errors,
        error_kinds,
    }
}

/// `concurrency` callers, each sending its next request as soon as the last
/// one is answered, for `secs` seconds: the most the target sustains.
async fn closed_loop(endpoints: &Endpoints, target: Target, concurrency: usize, secs: u64) -> (f64, usize) {
    let end = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..concurrency {
        let endpoints = endpoints.clone();
        callers.push(tokio::spawn(async move {
            let (mut done, mut errors) = (0usize, 0usize);
            while Instant::now() < end {
                match endpoints.one(target, PROMPT, endpoints.stream).await {
                    Ok(_) => done += 1,
                    Err(_) => errors += 1,
                }
            }
            (done, errors)
        }));
    }
    let (mut done, mut errors) = (0, 0);
    for caller in callers {
        let (d, e) = caller.await.unwrap_or((0, 1));
        done += d;
        errors += e;
    }
    (done as f64 / started.elapsed().as_secs_f64(), errors)
}

/// Opens `n` streaming requests through the gateway at once and counts
/// those that did not end with the whole text and `[DONE]`.
async fn concurrent_streams(endpoints: &Endpoints, n: usize) -> (usize, usize, Duration) {
    let prompt = "[sim:words=150] [sim:delay_ms=40] stream";
    let expected_tail = "w150";
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (endpoints, barrier) = (endpoints.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let body = endpoints.one(Target::Gateway, prompt, true).await?;
            let text: String = body
                .split("\n\n")
                .filter_map(|frame| frame.trim().strip_prefix("data: "))
                .filter_map(|data| serde_json::from_str::<Value>(data).ok())
                .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
                .collect();
            if body.trim_end().ends_with("data: [DONE]") && text.trim_end().ends_with(expected_tail) {
                Ok(())
            } else {
                Err("incomplete stream".to_string())
            }
        }));
    }
    let mut ok = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(error) = first_error {
        println!("first failure: {}", error.chars().take(300).collect::<String>());
    }
    (ok, n - ok, started.elapsed())
}

/// Creates the database (the gateway's migrations) and writes `rows`
/// settled ledger rows into it, spread over the last day.
fn prefill(database: &Path, rows: u64) {
    let started = Instant::now();
    let url = format!("sqlite://{}", database.display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async { drop(ccgate::store::connect(&url).await.expect("create the database")) });
    let mut conn = rusqlite::Connection::open(database).expect("open the database");
    let tx = conn.transaction().expect("begin");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO requests (request_id, created_at_ms, finished_at_ms, project_id, endpoint, \
                 model_requested, model_used, status, http_status, input_tokens, output_tokens, cost_micros) \
                 VALUES (?1, ?2, ?2, 'default', '/v1/chat/completions', 'haiku', \
                 'claude-haiku-4-5-20251001', 'succeeded', 200, 20, 10, 60)",
            )
            .expect("prepare");
        let now_ms = chrono::Utc::now().timestamp_millis();
        for i in 0..rows {
            let at = now_ms - 86_400_000 + (i * 86_400_000 / rows) as i64;
            insert.execute(rusqlite::params![uuid::Uuid::new_v4().to_string(), at]).expect("insert");
        }
    }
    tx.commit().expect("commit");
    let size = std::fs::metadata(database).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "ledger prefilled: {rows} rows, {:.0} MiB, in {:.1} s",
        size as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
}

fn bins() -> (PathBuf, PathBuf) {
    let gateway = PathBuf::from(env!("CARGO_BIN_EXE_ccgate"));
    let sim = gateway.parent().unwrap_or(Path::new(".")).join("ccgate-sim");
    assert!(
        sim.is_file(),
        "{} is missing: run `cargo build --release --workspace --bins` first",
        sim.display()
    );
    (gateway, sim)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--bare-proxy") {
        bare::serve(argv.get(2).expect("--bare-proxy needs the upstream's URL"));
    }
    let args = args();
    raise_fd_limit();
    let (gateway_bin, sim_bin) = bins();
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("bench.db");
    if args.ledger_rows > 0 {
        prefill(&database, args.ledger_rows);
    }
    let postgres = args.postgres.as_deref().map(PgDatabase::create);
    let database_url = match &postgres {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", database.display()),
    };

    let mut sim_cmd = Command::new(&sim_bin);
    sim_cmd.args(["--listen", "127.0.0.1:0"]).env("RUST_LOG", "warn");
    let sim = start(sim_cmd, false, "listening on ");

    // BENCH_WRAP runs the gateway under a profiler, e.g. "heaptrack -o /tmp/gw".
    let wrap: Vec<String> =
        std::env::var("BENCH_WRAP").unwrap_or_default().split_whitespace().map(str::to_owned).collect();
    let mut gw_cmd = match wrap.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(&gateway_bin);
            cmd
        }
        None => Command::new(&gateway_bin),
    };
    gw_cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(&database_url)
        .env("ANTHROPIC_BASE_URL", &sim.url)
        .env("ANTHROPIC_API_KEY", "sk-bench")
        .env("CCGATE_DEFAULT_BACKEND", "api")
        .env("CCGATE_API_MAX_CONCURRENT", (args.streams + 100).to_string())
        .env("CCGATE_QUEUE_LIMIT", args.queue_limit.to_string())
        .env("MALLOC_ARENA_MAX", std::env::var("BENCH_ARENAS").unwrap_or("8".into()))
        .env("CCGATE_WORK_DIR", dir.path().join("work"))
        .env("CCGATE_LOG", format!("{},ccgate::server=info", args.log));
    if let Some(threads) = args.gateway_threads {
        gw_cmd.env("TOKIO_WORKER_THREADS", threads.to_string());
    }
    if args.key {
        gw_cmd.env("CCGATE_ADMIN_KEY", ADMIN_KEY);
    }
    let gateway = start(gw_cmd, true, "addr=");
    let gateway_pid = gateway.child.id();
    let sim_pid = sim.child.id();
    let floor = args.floor && !args.stream;
    let bare = floor.then(|| {
        let mut cmd = Command::new(std::env::current_exe().expect("this benchmark's path"));
        cmd.args(["--bare-proxy", &sim.url]);
        start(cmd, true, "addr=")
    });
    let targets: Vec<Target> = if floor {
        vec![Target::Sim, Target::Bare, Target::Gateway]
    } else {
        vec![Target::Sim, Target::Gateway]
    };
    // The proxy between the generator and the simulator, whose CPU is counted.
    let middle = |target: Target| match (target, &bare) {
        (Target::Bare, Some(bare)) => bare.child.id(),
        _ => gateway_pid,
    };

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let responses = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.streams + 100)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        let endpoints = Endpoints {
            client,
            sim: sim.url.clone(),
            gateway: gateway.url.clone(),
            bare: bare.as_ref().map(|b| b.url.clone()).unwrap_or_default(),
            stream: args.stream,
            key: None,
            answered: Arc::default(),
        };
        let endpoints = match args.key {
            true => Endpoints { key: Some(project_key(&endpoints, args.key_limits).await), ..endpoints },
            false => endpoints,
        };
        for &target in &targets {
            for _ in 0..200 {
                endpoints.one(target, PROMPT, endpoints.stream).await.expect("warm-up request");
            }
        }
        let (rss, _) = memory_mib(gateway_pid);
        println!("ccgate (pid {gateway_pid}) RSS after warm-up: {rss:.1} MiB\n");
        println!("Its database: {}.", if postgres.is_some() { "PostgreSQL" } else { "SQLite" });
        match args.key {
            true => println!(
                "ccgate is called with a project key (its project has a daily budget{}).\n",
                if args.key_limits { "; the key has requests- and tokens-per-minute limits" } else { "" }
            ),
            false => println!("ccgate is called in its open single-user mode (no keys).\n"),
        }

        let mut inside = Vec::new();
        let answers = if args.stream { "streamed answers" } else { "whole answers" };
        println!("## Open loop ({} s per rate, {answers}; latency from send to end of body)\n", args.secs);
        println!(
            "| rate/s | target | achieved/s | errors | p50 ms | p99 ms | max ms | sent late p99 ms | CPU µs/request (sim / proxy) | proxy context switches/request | proxy peak RSS MiB |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        let mut errors_seen = Vec::new();
        for &rate in &args.rates {
            let mut p = Vec::new();
            for &target in &targets {
                let sampler = RssSampler::start(middle(target));
                let before = overhead_totals(&endpoints).await;
                let cpu = CpuMeter::start(sim_pid, middle(target));
                let stats = open_loop(&endpoints, target, rate, args.secs).await;
                let [_, sim_cpu, proxy_cpu] = cpu.per_request_us(stats.latencies.len() as f64);
                let switches = cpu.proxy_switches(stats.latencies.len() as f64);
                let after = overhead_totals(&endpoints).await;
                if target == Target::Gateway && after.1 > before.1 {
                    inside.push((rate, 1000.0 * (after.0 - before.0) / (after.1 - before.1)));
                }
                let (p50, p99) = (percentile(&stats.latencies, 0.5), percentile(&stats.latencies, 0.99));
                let max = stats.latencies.last().copied().unwrap_or_default();
                let name = target.name();
                println!(
                    "| {rate} | {name} | {:.0} | {} | {:.3} | {:.3} | {:.1} | {:.2} | {sim_cpu:.1} / {proxy_cpu:.1} | {switches:.2} | {:.1} |",
                    stats.achieved_rps,
                    stats.errors,
                    ms(p50),
                    ms(p99),
                    ms(max),
                    ms(stats.late_p99),
                    sampler.peak_mib()
                );
                p.push((target, p50, p99));
                errors_seen.extend(stats.error_kinds.into_iter().map(|(kind, n)| (rate, name, kind, n)));
            }
            let (_, sim_p50, sim_p99) = p[0];
            for &(target, p50, p99) in &p[1..] {
                println!(
                    "| {rate} | **added by {}** | | | **{:.3}** | **{:.3}** | | | | | |",
                    target.proxy(),
                    ms(p50.saturating_sub(sim_p50)),
                    ms(p99.saturating_sub(sim_p99))
                );
            }
        }

        for (rate, mean) in inside {
            println!("\nAt {rate}/s, time inside ccgate around each run (gateway_overhead_seconds): mean {mean:.3} ms");
        }
        for (rate, target, kind, count) in errors_seen {
            println!("\nAt {rate}/s, {target}: {count} × {kind}");
        }

        println!("\n## Closed loop, {} callers, {} s, {answers} (max throughput)\n", args.concurrency, args.secs);
        println!("CPU per request: user + system time of each process over the run, divided by the requests answered.\n");
        println!("| target | requests/s | errors | CPU µs/request: generator / sim / proxy | proxy context switches/request | proxy peak RSS MiB |");
        println!("|---|---|---|---|---|---|");
        let mut max = Vec::new();
        for &target in &targets {
            let sampler = RssSampler::start(middle(target));
            let cpu = CpuMeter::start(sim_pid, middle(target));
            let started = Instant::now();
            let (rps, errors) = closed_loop(&endpoints, target, args.concurrency, args.secs).await;
            let answered = rps * started.elapsed().as_secs_f64();
            let [generator, sim, proxy] = cpu.per_request_us(answered);
            let switches = cpu.proxy_switches(answered);
            let name = target.name();
            println!(
                "| {name} | {rps:.0} | {errors} | {generator:.1} / {sim:.1} / {proxy:.1} | {switches:.2} | {:.1} |",
                sampler.peak_mib()
            );
            max.push(rps);
        }
        if floor {
            println!("\nThe bare proxy sustains {:.0}% of the simulator's maximum.", 100.0 * max[1] / max[0]);
        }
        println!("\nccgate sustains {:.0}% of the simulator's maximum.\n", 100.0 * max[max.len() - 1] / max[0]);

        let sampler = RssSampler::start(gateway_pid);
        let busy = Arc::new(AtomicU64::new(0));
        let watcher = {
            let (client, url, busy) = (endpoints.client.clone(), endpoints.gateway.clone(), Arc::clone(&busy));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let Ok(response) = client.get(format!("{url}/health")).send().await else { continue };
                    let Ok(health) = response.json::<Value>().await else { continue };
                    busy.fetch_max(health["api_workers"]["busy"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
            })
        };
        let (ok, dropped, took) = concurrent_streams(&endpoints, args.streams).await;
        watcher.abort();
        println!("## {} concurrent streams through ccgate\n", args.streams);
        println!(
            "completed {ok}, dropped {dropped}, in {:.1} s; at most {} upstream streams at once; ccgate peak RSS {:.1} MiB",
            took.as_secs_f64(),
            busy.load(Ordering::Relaxed),
            sampler.peak_mib()
        );
        let (rss, hwm) = memory_mib(gateway_pid);
        let threads = std::fs::read_to_string(format!("/proc/{gateway_pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:").map(|t| t.trim().to_string()))
            .unwrap_or_default();
        println!("ccgate at the end: VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB, {threads} threads");
        endpoints.answered.load(Ordering::Relaxed)
    });
    let mut gateway = gateway;
    let stopped = gateway.stop();
    audit_ledger(&database_url, &database, responses, stopped);
    drop(postgres);
}

/// What the ledger holds once the gateway has stopped, against what the
/// generator was told: every response (refusals too) has its row, no
/// reservation is left, and the period totals are the sum of the rows.
fn audit_ledger(url: &str, sqlite: &Path, responses: u64, stopped: bool) {
    const ROWS: &str =
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'in_progress' THEN 1 ELSE 0 END), 0), \
         CAST(COALESCE(SUM(cost_micros), 0) AS BIGINT) FROM requests WHERE endpoint = '/v1/chat/completions'";
    const TOTALS: &str = "SELECT CAST(COALESCE(SUM(spent_micros), 0) AS BIGINT), \
         CAST(COALESCE(SUM(reserved_micros), 0) AS BIGINT) FROM period_totals WHERE kind = 'day'";
    let ((rows, open, cost), (spent, reserved)): ((i64, i64, i64), (i64, i64)) = if url.starts_with("sqlite:")
    {
        let conn = rusqlite::Connection::open(sqlite).expect("open the ledger");
        (
            conn.query_row(ROWS, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).expect("ledger rows"),
            conn.query_row(TOTALS, [], |r| Ok((r.get(0)?, r.get(1)?))).expect("period totals"),
        )
    } else {
        use sqlx::Connection;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect to the ledger");
            let rows = sqlx::query_as(ROWS).fetch_one(&mut conn).await.expect("ledger rows");
            let totals = sqlx::query_as(TOTALS).fetch_one(&mut conn).await.expect("period totals");
            (rows, totals)
        })
    };
    let whole = stopped && rows == responses as i64 && open == 0 && reserved == 0 && spent == cost;
    println!(
        "\n## Ledger\n\nccgate gave {responses} responses to chat completions (any status) and {}; its ledger \
         then held {rows} rows for them ({open} still reserved), {:.4} USD charged in the rows and {:.4} USD \
         spent and {:.4} USD reserved in the day's totals: {}.",
        if stopped { "stopped when asked" } else { "**did not stop when asked** (killed)" },
        cost as f64 / 1e6,
        spent as f64 / 1e6,
        reserved as f64 / 1e6,
        if whole { "every response recorded, settled and summed" } else { "**NOT all recorded, settled and summed**" }
    );
}

/// A PostgreSQL database of the benchmark's own, dropped with this.
struct PgDatabase {
    server: String,
    name: String,
    url: String,
}

impl PgDatabase {
    /// `server`: a URL naming the server and a database to connect to
    /// (e.g. `postgres://postgres@127.0.0.1:5432/postgres`).
    fn create(server: &str) -> PgDatabase {
        let name = format!("ccgate_bench_{}", std::process::id());
        pg_execute(server, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        pg_execute(server, &format!("CREATE DATABASE {name}"));
        let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
        PgDatabase { server: server.to_string(), url: format!("{base}/{name}"), name }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        pg_execute(&self.server, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn pg_execute(server: &str, sql: &str) {
    use sqlx::Connection;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(server).await.expect("connect to PostgreSQL");
        sqlx::query(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}
