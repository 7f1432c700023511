//! The gateway's own threads beside the runtime's (the SQLite ledger's
//! writer and checkpointer).
//!
//! Such a thread is woken by a request's thread (a reservation's commit is
//! handed to the ledger's writer) and then works for tens of microseconds.
//! As an ordinary thread it preempted its waker on the waker's CPU: the
//! request that had just reserved waited for the commit it had handed
//! over, 20-30 µs at 1,000 requests/s (docs/BENCHMARKS.md). Under
//! `SCHED_BATCH` it no longer preempts on wake-up; it runs on a CPU that
//! is free, or when its waker yields or its slice ends, at the same share
//! of the CPU as before.

/// Marks the calling thread as background work (`SCHED_BATCH`). Best
/// effort: where the scheduler refuses, the thread stays as it was.
pub fn background() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's (pid 0) own policy from a valid
    // parameter; no memory is shared.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot mark a thread as background work");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_background_thread_runs_under_sched_batch() {
        let policy = std::thread::spawn(|| {
            super::background();
            // SAFETY: reads the calling thread's own policy.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .expect("thread");
        assert_eq!(policy, libc::SCHED_BATCH);
        // The caller's thread is left as it was.
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
