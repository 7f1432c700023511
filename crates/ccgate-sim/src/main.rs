//! `ccgate-sim`: serves the simulated Anthropic Messages API until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use ccgate_sim::SimConfig;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// A simulated Anthropic Messages API for tests, benchmarks and offline use.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "CCGATE_SIM_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Delay between stream chunks, in milliseconds.
    #[arg(long, env = "CCGATE_SIM_DELAY_MS", default_value_t = 0)]
    delay_ms: u64,
    /// Delay before the first stream chunk, in milliseconds.
    #[arg(long, env = "CCGATE_SIM_FIRST_TOKEN_DELAY_MS", default_value_t = 0)]
    first_token_delay_ms: u64,
    /// Fail every /v1/messages request with this HTTP status (400-599).
    #[arg(long, env = "CCGATE_SIM_FAIL_STATUS", value_parser = clap::value_parser!(u16).range(400..=599))]
    fail_status: Option<u16>,
    /// Make every reply hang after its opening events.
    #[arg(long, env = "CCGATE_SIM_HANG")]
    hang: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries only the "listening" line scripts read.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = SimConfig {
        default_delay_ms: args.delay_ms,
        first_token_delay_ms: args.first_token_delay_ms,
        fail_status: args.fail_status,
        hang: args.hang,
    };
    let handle = ccgate_sim::spawn_on(args.listen, config).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ccgate-sim listening on {}", handle.base_url()).context("writing to stdout")?;
    stdout.flush().context("flushing stdout")?;
    drop(stdout);
    wait_for_stop_signal().await?;
    tracing::info!("stopping");
    handle.shutdown().await
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT"),
        _ = term.recv() => Ok(()),
    }
}
