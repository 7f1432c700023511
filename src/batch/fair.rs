//! Fair share: batch work may hold at most `ceil(pool_size × share)` of the
//! pool's workers at once (at least one), so interactive requests always
//! find the rest. The pool enforces it with its batch slots.

/// How many workers batch work may hold at once.
pub fn share_slots(pool_size: usize, share: f64) -> usize {
    if !share.is_finite() || share <= 0.0 {
        return 1;
    }
    let slots = (pool_size as f64 * share.min(1.0)).ceil() as usize;
    slots.clamp(1, pool_size.max(1))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::share_slots;
    use crate::money::Micros;
    use crate::workers::{Event, Job, JobClass, PoolStats, RunEnd, RunReport, Worker, WorkerPool};

    #[test]
    fn share_rounds_up_and_stays_within_the_pool() {
        let cases = [
            (4, 0.5, 2),
            (2, 0.5, 1),
            (3, 0.5, 2),
            (1, 0.5, 1),
            (8, 0.25, 2),
            (8, 1.0, 8),
            (8, 0.01, 1),
            (8, 0.0, 1),
            (8, 2.0, 8),
            (5, f64::NAN, 1),
        ];
        for (size, share, slots) in cases {
            assert_eq!(share_slots(size, share), slots, "pool {size} at share {share}");
        }
    }

    /// Counts how many runs are inside it at once.
    struct CountingWorker {
        now: AtomicUsize,
        peak: AtomicUsize,
    }

    #[async_trait]
    impl Worker for CountingWorker {
        async fn run(
            &self,
            _job: Job,
            _events: mpsc::Sender<Event>,
            _cancel: CancellationToken,
        ) -> RunReport {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            RunReport::new(RunEnd::Completed)
        }
    }

    fn job() -> Job {
        Job {
            model: "haiku".into(),
            model_id: "claude-haiku-4-5-20251001".into(),
            system_prompt: None,
            system_cache: None,
            prompt: "hi".into(),
            messages: Vec::new(),
            max_output_tokens: None,
            tools: None,
            sampling: Default::default(),
            thinking: None,
            output_schema: None,
            max_budget: Micros(1),
            stream: false,
            deadline: tokio::time::Instant::now() + Duration::from_secs(30),
            agent: None,
        }
    }

    async fn batch_run(pool: Arc<WorkerPool>) -> RunEnd {
        let slot = pool.batch_slot().await;
        let admission = pool.admit(JobClass::Batch(slot)).expect("batch work needs no queue place");
        let (tx, _rx) = mpsc::channel(8);
        pool.run(admission, job(), tx, CancellationToken::new()).await.end
    }

    #[tokio::test]
    async fn batch_runs_keep_to_their_share_and_interactive_runs_pass_them() {
        let worker = Arc::new(CountingWorker { now: AtomicUsize::new(0), peak: AtomicUsize::new(0) });
        // No queue at all: batch work must not need queue places.
        let pool = Arc::new(
            WorkerPool::new(worker.clone(), 4, 0, Arc::new(PoolStats::default()))
                .with_batch_slots(share_slots(4, 0.5)),
        );
        let batch: Vec<_> = (0..10).map(|_| tokio::spawn(batch_run(Arc::clone(&pool)))).collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(pool.state().batch_busy, 2);

        // Two interactive runs start at once beside the batch and finish
        // long before it (ten 50 ms runs two at a time take 250 ms).
        let started = std::time::Instant::now();
        let runs = (0..2).map(|_| {
            let admission = pool.admit(JobClass::Interactive).expect("a place for an interactive run");
            let (tx, _rx) = mpsc::channel(8);
            pool.run(admission, job(), tx, CancellationToken::new())
        });
        for report in futures::future::join_all(runs).await {
            assert_eq!(report.end, RunEnd::Completed);
        }
        let interactive = started.elapsed();
        assert!(interactive < Duration::from_millis(200), "interactive runs waited {interactive:?}");
        assert!(!batch.iter().all(|b| b.is_finished()), "the batch was still running");

        for run in batch {
            assert_eq!(run.await.unwrap(), RunEnd::Completed);
        }
        assert_eq!(worker.peak.load(Ordering::SeqCst), 4, "batch held two workers, interactive two");
        assert_eq!(pool.state().batch_busy, 0, "every slot is back");
    }

    #[tokio::test]
    async fn alone_a_batch_uses_exactly_its_share() {
        let worker = Arc::new(CountingWorker { now: AtomicUsize::new(0), peak: AtomicUsize::new(0) });
        let pool = Arc::new(
            WorkerPool::new(worker.clone(), 4, 0, Arc::new(PoolStats::default()))
                .with_batch_slots(share_slots(4, 0.5)),
        );
        let batch: Vec<_> = (0..8).map(|_| tokio::spawn(batch_run(Arc::clone(&pool)))).collect();
        for run in batch {
            assert_eq!(run.await.unwrap(), RunEnd::Completed);
        }
        assert_eq!(worker.peak.load(Ordering::SeqCst), 2);
    }
}
