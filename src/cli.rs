//! The command line: `ccgate serve`, and the admin commands (`projects`,
//! `keys`, `usage`, in `admin_cli`) that talk to a running gateway. `main`
//! only calls `run`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::admin_cli;
use crate::config::{LogFormat, Settings};

#[derive(Parser, Debug)]
#[command(name = "ccgate", version, about = "An OpenAI-compatible gateway to Claude through Claude Code")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Manage projects and their budgets on a running gateway.
    Projects(admin_cli::ProjectsArgs),
    /// Create, list and revoke project API keys on a running gateway.
    Keys(admin_cli::KeysArgs),
    /// Show a project's spend and budget for the current day, week or month.
    Usage(admin_cli::UsageArgs),
    /// Score the router on a labelled JSONL file (`{"prompt":…,"tier":…}` a line).
    RouteEval(RouteEvalArgs),
}

#[derive(Args, Debug)]
pub struct RouteEvalArgs {
    /// The labelled prompts, e.g. tests/data/route_eval.jsonl.
    pub file: PathBuf,
    /// TOML settings file, for routing weights and the price table.
    #[arg(long, env = "CCGATE_CONFIG")]
    pub config: Option<PathBuf>,
}

fn route_eval(args: RouteEvalArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref(), Vec::new(), Vec::new())?;
    let prices = match &settings.prices_file {
        Some(path) => crate::pricing::PriceTable::load(path)?,
        None => crate::pricing::PriceTable::builtin(),
    };
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    let items = ccgate_router::parse_eval_jsonl(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let report = ccgate_router::evaluate(&items, &crate::routing::tiers(&prices), &settings.routing);
    println!("{report}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML settings file (settings table in the README).
    #[arg(long, env = "CCGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// sqlite://FILE or postgres://… [default: sqlite://ccgate.db].
    #[arg(long)]
    pub database_url: Option<String>,
    /// Claude Code executable [default: claude on PATH].
    #[arg(long)]
    pub claude_bin: Option<String>,
    /// CLI processes that may run at once [default: 4].
    #[arg(long)]
    pub pool_size: Option<i64>,
    /// Requests that may wait for a worker [default: 64].
    #[arg(long)]
    pub queue_limit: Option<i64>,
    /// Request deadline in seconds [default: 300].
    #[arg(long)]
    pub request_timeout: Option<i64>,
    /// Seconds of worker silence before it is killed [default: 60].
    #[arg(long)]
    pub stall_timeout: Option<i64>,
}

impl ServeArgs {
    fn overrides(&self) -> Vec<(&'static str, toml::Value)> {
        let mut out = Vec::new();
        let mut text = |name, v: &Option<String>| {
            if let Some(v) = v {
                out.push((name, toml::Value::String(v.clone())));
            }
        };
        text("listen", &self.listen);
        text("database_url", &self.database_url);
        text("claude_bin", &self.claude_bin);
        let numbers = [
            ("pool_size", self.pool_size),
            ("queue_limit", self.queue_limit),
            ("request_timeout_secs", self.request_timeout),
            ("stall_timeout_secs", self.stall_timeout),
        ];
        for (name, value) in numbers {
            if let Some(v) = value {
                out.push((name, toml::Value::Integer(v)));
            }
        }
        out
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Projects(args) => admin_cli::projects(args).await,
        Command::Keys(args) => admin_cli::keys(args).await,
        Command::Usage(args) => admin_cli::usage(args).await,
        Command::RouteEval(args) => route_eval(args),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref(), std::env::vars(), args.overrides())?;
    let _logging = init_logging(settings.log_format).context("cannot start the logging thread")?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    let state = crate::server::build_state(settings, crate::app::AppState::system_clock()).await?;
    crate::server::run(state, listener, crate::server::shutdown_signal()).await
}

/// Logs go to stderr from a thread of their own, written in batches
/// (`log_writer`): a request's log line never waits for the pipe, nor wakes
/// a thread. Nothing is dropped (a full buffer makes writers wait instead);
/// the guard writes what is left when it is dropped.
pub fn init_logging(format: LogFormat) -> std::io::Result<crate::log_writer::LogGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CCGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = crate::log_writer::start(std::io::stderr())?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(guard)
}
