//! The worker pool: at most `size` runs at once, at most `queue_limit`
//! waiting, and a clean "no" (not a hang) past that.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{Event, Job, RunEnd, RunReport, Worker};

/// Counters the workers and the pool keep, read by `/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub spawned: AtomicU64,
    pub killed: AtomicU64,
    pub timeouts: AtomicU64,
    pub stalls: AtomicU64,
    pub spawn_failures: AtomicU64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolState {
    pub size: usize,
    pub busy: usize,
    pub idle: usize,
    pub queued: usize,
    pub queue_limit: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("all {size} workers are busy and {queued} requests are already waiting")]
pub struct QueueFull {
    pub size: usize,
    pub queued: usize,
}

/// A place in the pool (running or queued), taken before a run starts so a
/// full pool refuses at once.
pub struct Admission {
    _place: OwnedSemaphorePermit,
}

pub struct WorkerPool {
    worker: Arc<dyn Worker>,
    size: usize,
    queue_limit: usize,
    /// One permit per worker slot.
    slots: Arc<Semaphore>,
    /// One permit per slot plus one per queue place.
    places: Arc<Semaphore>,
    queued: AtomicUsize,
    stats: Arc<PoolStats>,
    shutdown: CancellationToken,
}

impl WorkerPool {
    pub fn new(
        worker: Arc<dyn Worker>,
        size: usize,
        queue_limit: usize,
        stats: Arc<PoolStats>,
    ) -> WorkerPool {
        WorkerPool {
            worker,
            size,
            queue_limit,
            slots: Arc::new(Semaphore::new(size)),
            places: Arc::new(Semaphore::new(size + queue_limit)),
            queued: AtomicUsize::new(0),
            stats,
            shutdown: CancellationToken::new(),
        }
    }

    pub fn stats(&self) -> &Arc<PoolStats> {
        &self.stats
    }

    pub fn state(&self) -> PoolState {
        let busy = self.size - self.slots.available_permits().min(self.size);
        PoolState {
            size: self.size,
            busy,
            idle: self.size - busy,
            queued: self.queued.load(Ordering::Relaxed),
            queue_limit: self.queue_limit,
        }
    }

    /// Takes a place in the pool, or says at once that there is none.
    pub fn admit(&self) -> Result<Admission, QueueFull> {
        Arc::clone(&self.places)
            .try_acquire_owned()
            .map(|place| Admission { _place: place })
            .map_err(|_| QueueFull { size: self.size, queued: self.queued.load(Ordering::Relaxed) })
    }

    /// A token that is cancelled when the gateway's grace period runs out.
    pub fn run_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Ends every run still going (after the shutdown grace period).
    pub fn kill_all(&self) {
        self.shutdown.cancel();
    }

    /// Waits for a free worker (until the job's deadline) and runs the job.
    pub async fn run(
        &self,
        admission: Admission,
        job: Job,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> RunReport {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let slot = tokio::select! {
            slot = Arc::clone(&self.slots).acquire_owned() => slot.ok(),
            _ = tokio::time::sleep_until(job.deadline) => None,
            _ = cancel.cancelled() => None,
            _ = events.closed() => None,
        };
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let Some(slot) = slot else {
            let end = if self.shutdown.is_cancelled() {
                RunEnd::Shutdown
            } else if cancel.is_cancelled() || events.is_closed() {
                RunEnd::Cancelled
            } else {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                RunEnd::Deadline
            };
            return RunReport::new(end);
        };
        let mut report = self.worker.run(job, events, cancel).await;
        if report.end == RunEnd::Cancelled && self.shutdown.is_cancelled() {
            report.end = RunEnd::Shutdown;
        }
        drop(slot);
        drop(admission);
        report
    }
}
