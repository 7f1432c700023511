//! The worker pool: at most `size` runs at once, at most `queue_limit`
//! waiting, and a clean "no" (not a hang) past that. Batch work holds one of
//! `batch_slots` besides, so it never takes more than its share of the pool.

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
    /// Calls the spend gate refused for want of budget.
    pub gate_refusals: AtomicU64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolState {
    pub size: usize,
    pub busy: usize,
    pub idle: usize,
    pub queued: usize,
    pub queue_limit: usize,
    /// Most batch runs at once (the pool's batch share).
    pub batch_slots: usize,
    /// Batch runs holding a batch slot now.
    pub batch_busy: usize,
}

/// Which kind of work a run is, for the pool's fair share.
#[derive(Debug, Clone)]
pub enum JobClass {
    /// A client is waiting: it takes a queue place, refused at once when
    /// the queue is full.
    Interactive,
    /// Part of a batch, holding a batch slot: it is bounded by the slots
    /// rather than by queue places, so a batch never fills the queue that
    /// interactive requests need.
    Batch(BatchSlot),
}

/// One of the pool's batch slots. The batch runner awaits one before it
/// reserves a task's budget (so a task never waits for a worker while its
/// deadline runs), and the slot is freed when the task's run ends.
#[derive(Clone)]
pub struct BatchSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for BatchSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchSlot")
    }
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
    _place: Option<OwnedSemaphorePermit>,
    _batch: Option<BatchSlot>,
}

pub struct WorkerPool {
    worker: Arc<dyn Worker>,
    size: usize,
    queue_limit: usize,
    /// One permit per worker slot.
    slots: Arc<Semaphore>,
    /// One permit per slot plus one per queue place.
    places: Arc<Semaphore>,
    /// One permit per batch slot.
    batch: Arc<Semaphore>,
    batch_slots: usize,
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
            batch: Arc::new(Semaphore::new(size)),
            batch_slots: size,
            queued: AtomicUsize::new(0),
            stats,
            shutdown: CancellationToken::new(),
        }
    }

    /// Bounds batch work to `slots` runs at once (at least one).
    pub fn with_batch_slots(mut self, slots: usize) -> WorkerPool {
        let slots = slots.clamp(1, self.size);
        self.batch = Arc::new(Semaphore::new(slots));
        self.batch_slots = slots;
        self
    }

    /// Waits for a batch slot (first come, first served).
    pub async fn batch_slot(&self) -> BatchSlot {
        // The semaphore is never closed, so acquiring cannot fail; if it
        // ever were, running without a slot would be the safe side of it.
        match Arc::clone(&self.batch).acquire_owned().await {
            Ok(permit) => BatchSlot { _permit: Arc::new(permit) },
            Err(_) => std::future::pending().await,
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
            batch_slots: self.batch_slots,
            batch_busy: self.batch_slots - self.batch.available_permits().min(self.batch_slots),
        }
    }

    /// Takes a place in the pool, or says at once that there is none. A
    /// batch run needs no place: its batch slot already bounds it.
    pub fn admit(&self, class: JobClass) -> Result<Admission, QueueFull> {
        if let JobClass::Batch(slot) = class {
            return Ok(Admission { _place: None, _batch: Some(slot) });
        }
        Arc::clone(&self.places)
            .try_acquire_owned()
            .map(|place| Admission { _place: Some(place), _batch: None })
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
        };
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let Some(slot) = slot else {
            let end = if self.shutdown.is_cancelled() {
                RunEnd::Shutdown
            } else if cancel.is_cancelled() {
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
