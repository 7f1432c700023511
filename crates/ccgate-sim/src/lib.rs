//! A simulated Anthropic Messages API.
//!
//! Tests, benchmarks and offline users point the Claude Code CLI (or any
//! Messages API client) at it. Replies are deterministic functions of the
//! request, and `[sim:...]` directives in the prompt ask for long replies,
//! slow streams, failures, hangs or tool calls; see `directives`.

mod api;
mod config;
pub mod directives;
mod error;
mod reply;
mod request;
mod response;
mod schema;
mod state;
mod thinking;
pub mod tokens;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use api::router;
pub use config::SimConfig;
pub use reply::{ECHO_WORDS, PREFIX, TOOL_RESULT_CHARS};
pub use state::{RecordedRequest, Sim};

/// How long `SimHandle::shutdown` waits for open connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running simulator; dropping it stops the server.
#[derive(Debug)]
pub struct SimHandle {
    pub addr: SocketAddr,
    pub sim: Sim,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// Starts a simulator on `127.0.0.1` with a free port.
pub async fn spawn(config: SimConfig) -> anyhow::Result<SimHandle> {
    spawn_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
}

/// Starts a simulator on `addr` (port 0 picks a free port).
pub async fn spawn_on(addr: SocketAddr, config: SimConfig) -> anyhow::Result<SimHandle> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let sim = Sim::new(config);
    let app = router(sim.clone());
    let stop = sim.shutdown_signal();
    // As a real API server: each stream event goes out as it is written
    // (TCP_NODELAY), not held back by Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop).await });
    Ok(SimHandle { addr, sim, server: Some(server) })
}

impl SimHandle {
    /// `http://ADDR:PORT`, the value for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits (a few seconds at most) for it to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.sim.begin_shutdown();
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(joined) => joined.context("server task failed")?.context("server failed"),
            Err(_) => {
                server.abort();
                anyhow::bail!("server did not stop within {SHUTDOWN_GRACE:?}")
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        // Slow and hung replies end at this signal, so the graceful shutdown
        // it starts completes promptly even with clients still connected.
        self.sim.begin_shutdown();
    }
}
