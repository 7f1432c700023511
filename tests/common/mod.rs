//! Test harness: a gateway (in-process or as a real process) in front of the
//! real Claude Code CLI and the project's simulated upstream, each test on
//! its own database, port 0 everywhere, and no sleeps for readiness.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod batch_api;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ccgate::app::AppState;
use ccgate::clock::{Clock, SystemClock};
use ccgate::config::Settings;
use ccgate_sim::{SimConfig, SimHandle};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The Claude Code CLI the tests drive: `CCGATE_CLAUDE_BIN`, else the copy
/// the test script installs under `.tools/`, else `claude` on PATH.
pub fn claude_bin() -> String {
    if let Ok(bin) = std::env::var("CCGATE_CLAUDE_BIN") {
        return bin;
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/claude/node_modules/.bin/claude");
    if local.exists() {
        return local.display().to_string();
    }
    let on_path = ccgate::app::resolve_bin("claude");
    assert!(
        on_path.is_file(),
        "the Claude Code CLI is needed for these tests: run scripts/test.sh (it installs it) or set CCGATE_CLAUDE_BIN"
    );
    on_path.display().to_string()
}

/// A database of the test's own: a temp SQLite file or a fresh PostgreSQL
/// database, dropped by `cleanup`.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("ccgate.db").display());
        TestDb { url, pg_name: None, _dir: Some(dir) }
    }

    pub async fn postgres() -> TestDb {
        use sqlx::Connection;
        let admin = postgres_admin_url();
        let name = format!("ccgate_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn =
            sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL must be running for this test");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin.clone());
        TestDb { url: format!("{base}/{name}"), pg_name: Some(name), _dir: None }
    }

    pub async fn cleanup(self) {
        use sqlx::Connection;
        let Some(name) = &self.pg_name else { return };
        if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
            let _ =
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
        }
    }
}

pub struct Options {
    pub pool_size: usize,
    pub queue_limit: usize,
    pub request_timeout_secs: u64,
    pub stall_timeout_secs: u64,
    pub cli_max_retries: u32,
    pub claude_bin: Option<String>,
    pub admin_key: Option<String>,
    pub metrics_token: Option<String>,
    pub sim: SimConfig,
    /// Changes any other setting before the gateway starts.
    pub adjust: fn(&mut Settings),
}

impl Default for Options {
    fn default() -> Options {
        Options {
            pool_size: 2,
            queue_limit: 8,
            request_timeout_secs: 60,
            stall_timeout_secs: 30,
            cli_max_retries: 0,
            claude_bin: None,
            admin_key: None,
            metrics_token: None,
            sim: SimConfig::default(),
            adjust: |_| {},
        }
    }
}

/// A gateway running inside the test process.
pub struct TestApp {
    pub url: String,
    pub state: AppState,
    pub sim: SimHandle,
    pub marker: String,
    pub work_dir: tempfile::TempDir,
    stop: CancellationToken,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn settings_for(
    db_url: &str,
    sim: &SimHandle,
    work_dir: &Path,
    marker: &str,
    opts: &Options,
) -> Settings {
    let mut worker_env = BTreeMap::new();
    worker_env.insert("ANTHROPIC_BASE_URL".to_string(), sim.base_url());
    worker_env.insert("ANTHROPIC_API_KEY".to_string(), "sk-ccgate-test".to_string());
    // Lets a test find the processes this gateway started.
    worker_env.insert("CCG_TEST_MARKER".to_string(), marker.to_string());
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("address"),
        database_url: db_url.to_string(),
        claude_bin: opts.claude_bin.clone().unwrap_or_else(claude_bin),
        pool_size: opts.pool_size,
        queue_limit: opts.queue_limit,
        request_timeout_secs: opts.request_timeout_secs,
        stall_timeout_secs: opts.stall_timeout_secs,
        shutdown_grace_secs: 5,
        work_dir: work_dir.to_path_buf(),
        admin_key: opts.admin_key.clone(),
        metrics_token: opts.metrics_token.clone(),
        cli_max_retries: opts.cli_max_retries,
        worker_env,
        // The direct backend (for models `adjust` gives to `api`) calls the
        // same simulated upstream as the CLI.
        anthropic_base_url: sim.base_url(),
        anthropic_api_key: Some(ccgate::config::ApiKey::new("sk-ccgate-test")),
        ..Settings::default()
    };
    (opts.adjust)(&mut settings);
    settings
}

impl TestApp {
    pub async fn spawn(db: &TestDb, opts: Options) -> TestApp {
        TestApp::spawn_with_clock(db, opts, Arc::new(SystemClock)).await
    }

    pub async fn spawn_with_clock(db: &TestDb, opts: Options, clock: Arc<dyn Clock>) -> TestApp {
        let sim = ccgate_sim::spawn(opts.sim.clone()).await.expect("start the simulated upstream");
        let work_dir = tempfile::tempdir().expect("temp dir");
        let marker = uuid::Uuid::new_v4().simple().to_string();
        let settings = settings_for(&db.url, &sim, work_dir.path(), &marker, &opts);
        let state = ccgate::server::build_state(settings, clock).await.expect("gateway state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let join =
            tokio::spawn(ccgate::server::run(
                state.clone(),
                listener,
                async move { stopped.cancelled().await },
            ));
        TestApp { url, state, sim, marker, work_dir, stop, join }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.join.await.expect("server task").expect("server stopped cleanly");
    }

    pub async fn chat(&self, body: Value) -> reqwest::Response {
        client().post(format!("{}/v1/chat/completions", self.url)).json(&body).send().await.expect("request")
    }

    /// Live processes started by this gateway's workers, except warm ones
    /// waiting idle for their next request, and unreaped children of this
    /// test process (whichever gateway of it left them: a zombie has no
    /// environment to tell), so poll it until a gateway has reaped its own.
    pub fn worker_processes(&self) -> Vec<u32> {
        let idle = self.state.warm.as_ref().map(|warm| warm.idle_pids()).unwrap_or_default();
        processes_with_marker(&self.marker).into_iter().filter(|pid| !idle.contains(pid)).collect()
    }

    /// Running processes of this gateway's workers, idle warm ones
    /// included; never another gateway's, so a test can check at once
    /// that its gateway started none.
    pub fn running_workers(&self) -> Vec<u32> {
        running_with_marker(&self.marker)
    }

    pub async fn health(&self) -> Value {
        client().get(format!("{}/health", self.url)).send().await.expect("health").json().await.expect("json")
    }

    /// Waits until no worker process of this gateway is left (bounded).
    pub async fn wait_no_workers(&self) -> Vec<u32> {
        wait_for(Duration::from_secs(10), || {
            let left = self.worker_processes();
            left.is_empty().then_some(()).ok_or(left)
        })
        .await
        .err()
        .unwrap_or_default()
    }

    pub async fn usage(&self, project: &str, period: &str) -> Value {
        self.usage_as(project, period, None).await
    }

    pub async fn usage_as(&self, project: &str, period: &str, key: Option<&str>) -> Value {
        let mut request = client().get(format!("{}/v1/usage?project_id={project}&period={period}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.expect("usage").json().await.expect("usage json")
    }

    /// Waits until the project has nothing reserved (every run settled).
    pub async fn wait_settled(&self, project: &str) -> Value {
        self.wait_settled_inner(project, None).await
    }

    pub async fn wait_settled_as(&self, project: &str, key: &str) -> Value {
        self.wait_settled_inner(project, Some(key)).await
    }

    async fn wait_settled_inner(&self, project: &str, key: Option<&str>) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            last = self.usage_as(project, "day", key).await;
            if last["reserved_usd"].as_f64() == Some(0.0) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("reservations never settled: {last}");
    }

    /// Creates a project and gives it an agent policy.
    pub async fn project_with_policy(&self, project: &str, policy: Value) {
        self.create_project(project, None).await;
        let response = put_agent_policy(&self.url, project, &policy).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    }

    pub async fn create_project(&self, id: &str, daily_usd: Option<f64>) {
        let response = client()
            .post(format!("{}/admin/projects", self.url))
            .json(&json!({"id": id, "name": id, "budget": {"daily_usd": daily_usd}}))
            .send()
            .await
            .expect("create project");
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap_or_default());
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("client")
}

/// Running processes that carry `marker` in their environment (workers of
/// the gateway that has it), the gateway process itself left out.
pub fn running_with_marker(marker: &str) -> Vec<u32> {
    let needle = format!("CCG_TEST_MARKER={marker}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                !cmdline.split(|b| *b == 0).next().unwrap_or_default().ends_with(b"/ccgate")
            }
        })
        .collect()
}

/// `running_with_marker`, and every unreaped child of this test process
/// (a zombie has lost its environment, so it cannot tell whose it is).
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let zombies = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.contains("State:\tZ") && status.lines().any(|l| l == format!("PPid:\t{me}"))
    });
    let mut pids = running_with_marker(marker);
    pids.extend(zombies);
    pids
}

/// Polls `check` until it succeeds or `limit` passes; returns the last failure.
pub async fn wait_for<T, E>(limit: Duration, mut check: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Sets a project's agent policy through the admin API.
pub async fn put_agent_policy(url: &str, project: &str, policy: &Value) -> reqwest::Response {
    client()
        .put(format!("{url}/admin/projects/{project}/agent-policy"))
        .json(policy)
        .send()
        .await
        .expect("put agent policy")
}

/// An agentic chat request for a project: haiku, one user message, and the
/// agent fields in `extra`.
pub fn agent_body(project: &str, prompt: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "haiku",
        "project_id": project,
        "messages": [{"role": "user", "content": prompt}],
    });
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        body[key] = value;
    }
    body
}

pub fn chat_body(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

/// A request's ledger row once it is no longer in progress (a settled
/// run or a refusal), polled for at most 5 s.
pub async fn wait_ledger_row(store: &dyn ccgate::store::Store, request_id: &str) -> ccgate::store::LedgerRow {
    for _ in 0..100 {
        if let Some(row) = store.ledger_row(request_id).await.unwrap() {
            if row.status != "in_progress" {
                return row;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no settled ledger row for {request_id}");
}

/// A gateway run as its own process (for crash and shutdown tests).
pub struct GatewayProcess {
    pub child: Child,
    pub url: String,
    pub stderr_log: PathBuf,
}

impl GatewayProcess {
    pub fn start(
        db_url: &str,
        sim: &SimHandle,
        marker: &str,
        work_dir: &Path,
        extra: &[(&str, &str)],
    ) -> GatewayProcess {
        GatewayProcess::spawn(GatewayProcess::command(db_url, sim, marker, work_dir, extra), work_dir)
    }

    /// The command `start` runs, for a test to change before `spawn`.
    pub fn command(
        db_url: &str,
        sim: &SimHandle,
        marker: &str,
        work_dir: &Path,
        extra: &[(&str, &str)],
    ) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ccgate"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            db_url,
            "--claude-bin",
            &claude_bin(),
        ])
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("ANTHROPIC_API_KEY", "sk-ccgate-test")
        .env("CCG_TEST_MARKER", marker)
        // Workers inherit only an allow-list: the marker must be named.
        .env("CCGATE_WORKER_ENV_PASSTHROUGH", "CCG_TEST_MARKER")
        .env("CCGATE_WORK_DIR", work_dir)
        .env("CCGATE_CLI_MAX_RETRIES", "0")
        .env("CCGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts `cmd` and waits for the gateway to listen.
    pub fn spawn(mut cmd: Command, work_dir: &Path) -> GatewayProcess {
        let log = work_dir.join(format!("gateway-{}.log", uuid::Uuid::new_v4().simple()));
        let mut child = cmd.spawn().expect("start the gateway binary");
        let stderr = child.stderr.take().expect("stderr");
        let mut reader = BufReader::new(stderr);
        let mut url = None;
        let mut seen = String::new();
        let mut line = String::new();
        while url.is_none() {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("the gateway exited before listening:\n{seen}");
            }
            seen.push_str(&line);
            if let Some(rest) = line.split("addr=").nth(1) {
                url = rest.split_whitespace().next().map(|a| format!("http://{a}"));
            }
        }
        // Keep draining stderr into a file so the gateway never blocks on it.
        let mut file = std::fs::File::create(&log).expect("log file");
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut reader, &mut file);
        });
        GatewayProcess { child, url: url.unwrap_or_default(), stderr_log: log }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for the gateway")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first `/metrics` sample whose line starts with `prefix`
/// and contains every `needle`.
pub fn metric_sample(text: &str, prefix: &str, needles: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A whole SSE stream's frames as (event name, data) pairs.
pub fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|frame| !frame.trim().is_empty())
        .map(|frame| {
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            let data = field("data:");
            (field("event:"), serde_json::from_str(&data).unwrap_or_else(|_| panic!("bad data: {frame}")))
        })
        .collect()
}
