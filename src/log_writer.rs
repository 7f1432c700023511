//! Where log lines go: a buffer that a thread of its own writes to stderr
//! every `FLUSH_EVERY`.
//!
//! A request logs two lines. Handing each line to a writer thread through a
//! channel (as `tracing-appender` does) wakes that thread for nearly every
//! line, and on a busy two-core machine the wake-ups cost more than the
//! writing: the logging thread took 7.6% of the gateway's CPU at 1,000
//! requests/s. Here a line is appended to a shared buffer under a mutex
//! (no wake-up), and the thread writes whatever has gathered in one `write`
//! per interval. Nothing is dropped: a writer finding the buffer full waits
//! for the thread to empty it. Dropping the `LogGuard` writes what is left.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Size past which the thread is woken at once; twice this, writers wait.
const WAKE_AT: usize = 1 << 20;

/// The writer handed to `tracing_subscriber::fmt`.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Writes what is left, and stops the thread, when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The thread waits here for its interval, a full buffer or the stop.
    wake: Condvar,
    /// Writers wait here for room.
    room: Condvar,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    stopping: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the thread that writes the buffered lines to `out`.
pub fn start(out: impl Write + Send + 'static) -> std::io::Result<(BatchedWriter, LogGuard)> {
    let shared = Arc::new(Shared { state: Mutex::default(), wake: Condvar::new(), room: Condvar::new() });
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new().name("ccgate-log".into()).spawn(move || flush_loop(&shared, out))?
    };
    Ok((BatchedWriter { shared: Arc::clone(&shared) }, LogGuard { shared, thread: Some(thread) }))
}

fn flush_loop(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::new();
    loop {
        let mut state = shared.lock();
        if !state.stopping && state.buffer.len() < WAKE_AT {
            state = shared.wake.wait_timeout(state, FLUSH_EVERY).unwrap_or_else(PoisonError::into_inner).0;
        }
        let stopping = state.stopping;
        std::mem::swap(&mut state.buffer, &mut spare);
        drop(state);
        shared.room.notify_all();
        if !spare.is_empty() {
            // Nowhere to report a failure to write the log.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
        }
        if stopping {
            return;
        }
    }
}

/// One log line being written: it holds the buffer's lock until dropped,
/// so the lines of two threads never interleave.
pub struct LineWriter<'a> {
    state: MutexGuard<'a, State>,
    shared: &'a Shared,
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        let mut state = self.shared.lock();
        while state.buffer.len() >= 2 * WAKE_AT && !state.stopping {
            state = self.shared.room.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        LineWriter { state, shared: &self.shared }
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.state.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if self.state.buffer.len() >= WAKE_AT {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_of_every_thread_arrives_whole_by_the_time_the_guard_is_dropped() {
        let sink = Sink::default();
        let (writer, guard) = start(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        // A line in several writes, as a formatter makes it.
                        let mut line = writer.make_writer();
                        write!(line, "thread {t} ").unwrap();
                        writeln!(line, "line {i} {}", "x".repeat(600)).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8_000, "every line, none lost or merged");
        for t in 0..4 {
            let mine: Vec<&str> =
                lines.iter().filter(|l| l.starts_with(&format!("thread {t} "))).copied().collect();
            assert_eq!(mine.len(), 2_000);
            for (i, line) in mine.iter().enumerate() {
                assert_eq!(*line, format!("thread {t} line {i} {}", "x".repeat(600)), "in order, whole");
            }
        }
    }

    #[test]
    fn a_line_reaches_the_output_within_the_interval_without_the_guard() {
        let sink = Sink::default();
        let (writer, _guard) = start(sink.clone()).unwrap();
        writeln!(writer.make_writer(), "hello").unwrap();
        let started = std::time::Instant::now();
        while sink.0.lock().unwrap().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "the line never arrived");
            std::thread::yield_now();
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hello\n");
    }
}
