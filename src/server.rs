//! Running the gateway: open the store, recover what a crashed instance
//! left, serve HTTP, and stop cleanly (finish in-flight work within the
//! grace period, then kill what is left).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{resolve_bin, AppState};
use crate::clock::Clock;
use crate::config::Settings;
use crate::store;

/// Opens the store and builds the state for these settings.
pub async fn build_state(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<AppState> {
    let store = store::connect(&settings.database_url)
        .await
        .with_context(|| format!("cannot open the database {}", redact(&settings.database_url)))?;
    AppState::new(settings, store, clock)
}

/// Serves on `listener` until `shutdown` completes, then drains.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = Arc::clone(&state.settings);
    state.budget.register().await?;
    let released = state.budget.recover(Duration::from_secs(settings.instance_ttl_secs)).await?;
    if released > 0 {
        tracing::warn!(released, "released reservations left by a gateway instance that stopped");
    }
    let interrupted = crate::tasks::recover(&state).await?;
    if interrupted > 0 {
        tracing::warn!(interrupted, "marked tasks of a gateway instance that stopped as interrupted");
    }
    let maintenance = CancellationToken::new();
    spawn_maintenance(&state, maintenance.clone());
    follow_key_changes(&state, maintenance.clone()).await;
    raise_open_files_limit();
    warn_about_setup(&state, &listener);

    let stopping = CancellationToken::new();
    let stop = stopping.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    // After the grace period, whatever still runs is killed, which ends
    // the open streams and lets the server finish.
    let pools: Vec<_> = state.pools().cloned().collect();
    let grace = Duration::from_secs(settings.shutdown_grace_secs);
    let grace_stop = stopping.clone();
    tokio::spawn(async move {
        grace_stop.cancelled().await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "stopping: no new connections; in-flight requests may finish"
        );
        tokio::time::sleep(grace).await;
        pools.iter().for_each(|pool| pool.kill_all());
    });
    // Batches (new ones, and those a stopped or crashed instance left) run
    // in the background until the stop.
    let batches = crate::batch::runner::spawn(&state, stopping.clone());

    let app = crate::api::router(state.clone());
    let server_stop = stopping.clone();
    serve_connections(listener, app, &settings, server_stop).await;

    // Running batch requests may finish within the grace period; the ones
    // killed after it go back to pending, for the next start.
    if let Err(e) = batches.await {
        tracing::error!(error = %e, "the batch runner failed");
    }
    state.pools().for_each(|pool| pool.kill_all());
    if let Some(warm) = &state.warm {
        warm.close();
    }
    state.tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), state.tasks.wait()).await.is_err() {
        tracing::error!("background tasks did not finish within 10 s of shutdown");
    }
    maintenance.cancel();
    state.budget.deregister().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Where the store can tell (PostgreSQL), drops what this instance keeps
/// of keys as soon as any instance revokes one or deletes its project.
/// Listening when this returns; until `stop`.
async fn follow_key_changes(state: &AppState, stop: CancellationToken) {
    let mut changes = match state.budget.store().key_changes().await {
        Ok(Some(changes)) => changes,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow key changes; keys revoked elsewhere stop working here within 5 s");
            return;
        }
    };
    let state = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = changes.next() => state.keys.apply(event),
            }
        }
    });
}

fn spawn_maintenance(state: &AppState, stop: CancellationToken) {
    let budget = state.budget.clone();
    let state = state.clone();
    let ttl = Duration::from_secs(state.settings.instance_ttl_secs);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ttl / 3);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = budget.heartbeat().await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
            match budget.recover(ttl).await {
                Ok(0) => {}
                Ok(released) => tracing::warn!(released, "released reservations of a stopped instance"),
                Err(e) => tracing::warn!(error = %e, "reservation recovery failed"),
            }
            if let Err(e) = crate::tasks::recover(&state).await {
                tracing::warn!(error = %e, "task recovery failed");
            }
        }
    });
}

/// Accepts and serves HTTP/1 connections until `stop`, then lets each
/// finish its request under way and waits for them all.
///
/// What `axum::serve` does, plus two bounds it lacks: a connection that
/// has not sent a whole request head within `client_idle_timeout_secs`
/// (when it opens, or idle between requests) is closed, so stalled and
/// forgotten keep-alive connections do not pile up; and at most
/// `max_connections` are held at once (more wait in the kernel's backlog),
/// so a flood of connections cannot grow the gateway's memory without
/// bound (about 16 KB each, idle).
async fn serve_connections(
    listener: TcpListener,
    app: axum::Router,
    settings: &Settings,
    stop: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(settings.client_idle_timeout_secs));
    let http = Arc::new(http);
    let room = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    // Each connection holds a receiver; the loop waits for all to be gone.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    loop {
        let place = tokio::select! {
            place = Arc::clone(&room).acquire_owned() => place.expect("the semaphore is never closed"),
            _ = stop.cancelled() => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of files or memory for a moment (EMFILE, ENOBUFS):
                    // back off rather than spin, as axum::serve does.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // TCP_NODELAY: a stream is many small writes, and with Nagle's
        // algorithm each waits for the last to be acknowledged, which the
        // client's delayed acknowledgement holds back by up to 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        // A clone of the router is an `Arc`'s; its routes are built once.
        // (axum::serve given the `Router` itself rebuilt them for every
        // connection, tens of kilobytes each with the inline OpenAPI
        // documents, which a thousand open streams made tens of megabytes.)
        let service = TowerToHyperService::new(app.clone());
        let (http, stop, open) = (Arc::clone(&http), stop.clone(), open_rx.clone());
        tokio::spawn(async move {
            let connection = http.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    // Finish the request under way, then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop((place, open));
        });
    }
    drop(open_rx);
    drop(listener);
    open_tx.closed().await;
}

/// Below this many open files a busy gateway may run out of them.
const FEW_OPEN_FILES: u64 = 4096;

/// Raises the process's soft limit on open files to its hard limit, as
/// servers do: every client connection and every upstream call holds a
/// file descriptor, and a soft limit of 1,024 (a common default) would make
/// the gateway refuse connections at about 500 requests in flight on the
/// direct backend. Warns when even the hard limit is low.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into a struct this function owns.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    // No process may hold more than `nr_open` files, whatever the limit says.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = limit.rlim_max.min(ceiling);
    let mut open_files = limit.rlim_cur;
    if open_files < target {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads a valid struct; raising the soft limit up to
        // the hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(from = open_files, to = target, "raised the limit on open files");
            open_files = target;
        } else {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot raise the limit on open files");
        }
    }
    if open_files < FEW_OPEN_FILES {
        tracing::warn!(
            open_files,
            "the limit on open files is low: each client connection and each upstream call holds \
             one; raise it (ulimit -n, or LimitNOFILE= under systemd)"
        );
    }
}

fn warn_about_setup(state: &AppState, listener: &TcpListener) {
    let settings = &state.settings;
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%addr, pool_size = settings.pool_size, queue_limit = settings.queue_limit, "ccgate listening");
    if settings.admin_key.is_none() {
        if settings.listen.ip().is_loopback() {
            tracing::warn!(
                "no admin key is set: /admin is open to anyone who can reach this loopback address"
            );
        } else {
            tracing::warn!(
                "no admin key is set: /admin is disabled because the gateway listens beyond loopback"
            );
        }
    }
    let bin = resolve_bin(&settings.claude_bin);
    if !bin.is_file() {
        tracing::warn!(
            claude_bin = %bin.display(),
            "the Claude Code CLI was not found; chat requests will get 503 until it is installed \
             (npm install -g @anthropic-ai/claude-code) or claude_bin points at it"
        );
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Hides the password in a database URL for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_string(),
    }
}
