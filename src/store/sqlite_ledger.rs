//! SQLite's budget writes: reservations, settlements and ledger rows, on a
//! thread of their own that owns one connection and commits in groups.
//!
//! These three writes happen for every request, and a reservation sits on
//! the request's path. Through sqlx each statement of a transaction is a
//! round trip to the connection's worker thread, so one reservation cost a
//! handful of thread switches and the single writer connection capped the
//! gateway near 2,600 of them a second. Here a whole reservation is one
//! message to this thread, and the writes that arrive while a commit is
//! being written share the next one. The limit check runs inside the
//! transaction that writes the reservation, so concurrent requests cannot
//! overspend.
//!
//! A reservation or a settlement is answered as soon as its statements have
//! run and it is in this writer's journal (`sqlite_journal`), before the
//! commit: the commit's WAL writes are off the request's path. Both are
//! made on their caller's thread when the connection is free, so neither
//! waits for this thread to wake; this thread then commits the transaction,
//! with every write that joined it meanwhile, at its next tick (`run`).
//! Should the commit fail, the answered writes are applied again,
//! reservations unchecked, at the start of every next transaction until one
//! commits (and no reservation or settlement is answered early meanwhile);
//! should the process die first, the journal brings them back. A refusal
//! (no room, no such project, an id already recorded) is answered at once
//! too: it wrote nothing. The ledger row of a refused request is journaled
//! and answered the same way, and goes in again after a failed commit even
//! while reservations wait for one; a read of the ledger first has
//! everything answered so far committed.
//!
//! A group keeps the period totals it touches in memory (`GroupTotals`):
//! each is read once, checked and changed there by every write of the group
//! in turn, and written back once, before the commit. A group of many
//! requests of one project costs two statements each (the ledger row and
//! its project's limits) plus a handful, instead of eight and four.
//!
//! A write refused for a reason of its own (no such project, no room in the
//! budget, an id already recorded) has changed nothing when it is refused:
//! each checks before it writes, its totals change only once its ledger row
//! is written, and a constraint violation undoes only its statement. Any
//! other failure (the disk, say) rolls the whole group back: the writes
//! answered from the journal go in again with the next commit, and the
//! callers still waiting for this one get the error.
//!
//! Other writers (sqlx's, for everything else) take the same database lock
//! with `BEGIN IMMEDIATE`; each waits for the other by retrying every 200 µs
//! (`retry_soon`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::queries::to_i64;
use super::sqlite_journal::{orphans, Journal, Line, Orphan};
use super::{
    Completion, LedgerEntry, NewReservation, PeriodKind, PeriodTotals, ReserveOutcome, StoreError,
    StoreResult,
};
use crate::money::Micros;

/// How long a write waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the ledger's connection tries again for the write lock.
const RETRY_EVERY: Duration = Duration::from_micros(200);

/// The most writes one commit takes; more wait for the next.
const MAX_GROUP: usize = 256;

/// How long a transaction opened on a caller's thread stays open for
/// others to join before the writer thread commits it (see `run`).
const COMMIT_EVERY: Duration = Duration::from_millis(1);

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// WAL frames (pages) past which a checkpoint also starts the WAL over.
const RESTART_FRAMES: i64 = 4096;

/// Commits after which the writer asks for a checkpoint before its time
/// (a commit writes a handful of pages).
const NUDGE_EVERY: u64 = 256;

/// Commits between two looks at the WAL's size by the writer.
const WAL_CHECK_EVERY: u64 = 64;

/// The longest the writer waits to checkpoint a WAL past its limit.
const TRUNCATE_WAIT: Duration = Duration::from_secs(10);

/// The WAL size past which the writer checkpoints itself rather than wait
/// for the checkpointer: twice the size a restart starts it over at.
/// (The file keeps its size across restarts, so this sees only growth
/// past what restarts allow.)
const WAL_HARD_LIMIT: u64 = 2 * RESTART_FRAMES as u64 * 4096;

fn wal_too_large(wal: &Path) -> bool {
    std::fs::metadata(wal).is_ok_and(|m| m.len() > WAL_HARD_LIMIT)
}

/// The checkpointer has fallen behind (a slow disk makes its syncs slow
/// while the writes go on): the writer copies the whole WAL back and cuts
/// the file to nothing itself, holding the next writes back until it can,
/// so the WAL stays bounded whatever the disk does. It waits for a
/// checkpoint under way to end (SQLite answers busy at once meanwhile),
/// for at most `TRUNCATE_WAIT`.
fn truncate_wal(conn: &Connection) {
    let started = std::time::Instant::now();
    loop {
        let busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0));
        match busy {
            Ok(0) => return,
            Ok(_) if started.elapsed() < TRUNCATE_WAIT => std::thread::sleep(Duration::from_millis(2)),
            Ok(_) => {
                tracing::warn!("the SQLite WAL is past its limit and could not be checkpointed");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "SQLite checkpoint on the writer failed");
                return;
            }
        }
    }
}

pub(super) struct LedgerWriter {
    /// Dropped with the store, which ends the writer thread, and with it
    /// the checkpointer.
    ops: mpsc::Sender<Op>,
    /// The connection and its open transaction, which a reservation uses
    /// on its caller's thread when the writer thread is not using it.
    writer: Arc<Mutex<Writer>>,
}

/// One write and the caller waiting for its answer.
struct Op {
    write: Write,
    reply: Reply,
}

type Reply = oneshot::Sender<StoreResult<Answer>>;

enum Write {
    Reserve(Box<NewReservation>),
    Settle(String, Box<Completion>),
    Record(Box<LedgerEntry>),
    /// Replays the journals of writers that are gone.
    Replay,
    /// Commits what callers wrote on their own threads; answered once
    /// everything answered before it is in the database.
    Commit,
    /// A caller opened a transaction while this thread slept: it is
    /// committed within `COMMIT_EVERY` (answered at once).
    Wake,
}

enum Answer {
    Reserve(ReserveOutcome),
    Settle(bool),
    Record,
    Replayed(usize),
}

impl LedgerWriter {
    /// Opens its own connection to the database file (already migrated) and
    /// starts the writer thread, which ends when the store is dropped.
    pub(super) fn start(path: &Path) -> StoreResult<LedgerWriter> {
        if path.as_os_str().is_empty() || path == Path::new(":memory:") {
            return Err(StoreError::UnsupportedUrl(format!(
                "{}: ccgate keeps its SQLite database in a file (sqlite://FILE)",
                path.display()
            )));
        }
        let conn = open(path)?;
        conn.busy_handler(Some(retry_soon))?;
        conn.set_prepared_statement_cache_capacity(32);
        let journal = Journal::create(path)
            .map_err(|e| StoreError::Ledger(format!("cannot create the reservation journal: {e}")))?;
        let checkpointer = open(path)?;
        let (nudge, nudges) = mpsc::sync_channel(1);
        let database = std::fs::File::open(path)
            .map_err(|e| StoreError::Ledger(format!("cannot open {}: {e}", path.display())))?;
        spawn("ccgate-checkpoint", move || checkpoint(checkpointer, database, nudges))?;
        let mut writer = Writer {
            conn,
            journal,
            open: false,
            asleep: true,
            totals: GroupTotals::default(),
            broken: None,
            journaled: Vec::new(),
            pending: Vec::new(),
            replayed: Vec::new(),
            database: path.to_owned(),
        };
        // Before any reservation is checked, what stopped writers answered
        // is counted.
        let (reply, mut replayed) = oneshot::channel();
        writer.commit_group(vec![Op { write: Write::Replay, reply }]);
        if let Ok(Err(e)) = replayed.try_recv() {
            return Err(e);
        }
        let writer = Arc::new(Mutex::new(writer));
        let (ops, queue) = mpsc::channel();
        let thread = Arc::clone(&writer);
        let wal = wal_path(path);
        spawn("ccgate-ledger", move || run(&thread, queue, nudge, &wal))?;
        Ok(LedgerWriter { ops, writer })
    }

    /// Reserves on the caller's thread when the connection is free (no
    /// thread switch either way, the commit left to the writer thread);
    /// otherwise through the writer thread's queue.
    pub(super) async fn reserve(&self, reservation: &NewReservation) -> StoreResult<ReserveOutcome> {
        let inline = self.inline(|writer| writer.reserve_open(reservation))?;
        if let Some(answer) = inline {
            return answer;
        }
        match self.write(Write::Reserve(Box::new(reservation.clone()))).await? {
            Answer::Reserve(outcome) => Ok(outcome),
            _ => Err(mismatch()),
        }
    }

    /// Settles on the caller's thread when the connection is free, as
    /// `reserve` does; otherwise through the queue.
    pub(super) async fn settle(&self, request_id: &str, completion: &Completion) -> StoreResult<bool> {
        let inline = self.inline(|writer| writer.settle_open(request_id, completion))?;
        if let Some(answer) = inline {
            return answer;
        }
        match self.write(Write::Settle(request_id.to_string(), Box::new(completion.clone()))).await? {
            Answer::Settle(settled) => Ok(settled),
            _ => Err(mismatch()),
        }
    }

    /// Runs a write on the caller's thread when the connection is free and
    /// the write may be answered early (`None` otherwise; see
    /// `Writer::now`). The writer thread learns of a transaction the write
    /// opened, to commit it; the writes that join it before the thread wakes
    /// share that commit.
    fn inline<T>(
        &self,
        write: impl FnOnce(&mut Writer) -> StoreResult<T>,
    ) -> StoreResult<Option<StoreResult<T>>> {
        let Some((answer, wake)) = self.writer.try_lock().ok().and_then(|mut writer| {
            let (answer, opened) = writer.now(write)?;
            // Awake, the writer thread commits it at its next tick.
            Some((answer, opened && std::mem::take(&mut writer.asleep)))
        }) else {
            return Ok(None);
        };
        if wake {
            let (reply, _) = oneshot::channel();
            self.ops.send(Op { write: Write::Wake, reply }).map_err(|_| stopped())?;
        }
        Ok(Some(answer))
    }

    pub(super) async fn record(&self, entry: &LedgerEntry) -> StoreResult<()> {
        match self.write(Write::Record(Box::new(entry.clone()))).await? {
            Answer::Record => Ok(()),
            _ => Err(mismatch()),
        }
    }

    /// Returns once every write answered so far is in the database, so a
    /// read that follows sees it.
    pub(super) async fn flush(&self) -> StoreResult<()> {
        // Nothing open and nothing pending: everything answered is in the
        // database already, and the read needs no trip to the writer thread.
        if self.writer.try_lock().is_ok_and(|writer| !writer.open && writer.answers_early()) {
            return Ok(());
        }
        self.write(Write::Commit).await.map(drop)
    }

    /// Replays the journals of writers that are gone (see `sqlite_journal`);
    /// how many reservations that wrote.
    pub(super) async fn replay(&self) -> StoreResult<usize> {
        match self.write(Write::Replay).await? {
            Answer::Replayed(count) => Ok(count),
            _ => Err(mismatch()),
        }
    }

    async fn write(&self, write: Write) -> StoreResult<Answer> {
        let (reply, answer) = oneshot::channel();
        self.ops.send(Op { write, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn open(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // NORMAL in WAL mode survives a process crash, as for the other
    // connections (the journal mode is the file's, set when it was opened);
    // no commit checkpoints, which would put a checkpoint's fsync on the
    // path of whichever request committed last.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;",
    )?;
    Ok(conn)
}

/// The ledger connection's wait for another connection's write lock: a
/// retry every `RETRY_EVERY`, up to `BUSY_TIMEOUT`. SQLite's own busy
/// timeout sleeps in growing steps (1, 2, 5, 10 … 100 ms), so a writer that
/// met a short write of another connection a few times in a row slept for
/// tens or hundreds of milliseconds after the lock was free, and every
/// reservation queued behind it waited as long.
pub(super) fn retry_soon(attempt: i32) -> bool {
    let waited = RETRY_EVERY * u32::try_from(attempt).unwrap_or(0);
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(RETRY_EVERY);
    true
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> StoreResult<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            crate::threads::background();
            work()
        })
        .map(drop)
        .map_err(|e| StoreError::Ledger(format!("cannot start the {name} thread: {e}")))
}

/// Copies the WAL back into the database file every `CHECKPOINT_EVERY`, or
/// sooner when the writer has committed `NUDGE_EVERY` times, on its own
/// connection: writers go on appending meanwhile (a passive checkpoint never
/// waits for them), so the fsync a checkpoint makes is on no request's path.
/// Once more when the writer stops.
///
/// Under steady writes a passive checkpoint never catches up with the last
/// frame, and SQLite only starts the WAL over from its beginning once one
/// has; so when the WAL has grown past `RESTART_FRAMES`, a restarting
/// checkpoint follows the passive one. It holds writers back while it copies
/// what the passive pass left (little) and syncs, about a millisecond, and
/// the next commit writes from the start of the file again: the WAL file
/// stays about `RESTART_FRAMES` pages long instead of growing for as long as
/// the writes go on. (A truncating checkpoint would also shrink the file,
/// but freeing its blocks held writers back for tens of milliseconds.)
///
/// A passive pass that does not reach the WAL's end does not sync the
/// database file, so the pages it copied stayed dirty until the restarting
/// checkpoint synced them all while holding writers back: 18 ms when
/// request ids were random on a ledger of a million rows (each commit
/// dirtied index pages all over the file). The database file is synced
/// after every passive pass instead, here, on no request's path.
fn checkpoint(conn: Connection, database: std::fs::File, nudges: mpsc::Receiver<()>) {
    loop {
        let stopping =
            matches!(nudges.recv_timeout(CHECKPOINT_EVERY), Err(mpsc::RecvTimeoutError::Disconnected));
        let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1));
        if frames.is_ok() {
            if let Err(e) = database.sync_data() {
                tracing::warn!(error = %e, "cannot sync the SQLite database file");
            }
        }
        let result = match frames {
            Ok(frames) if frames > RESTART_FRAMES => {
                conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            }
            other => other.map(drop),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
        if stopping {
            return;
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Ledger("the ledger writer has stopped".into())
}

fn mismatch() -> StoreError {
    StoreError::Ledger("the ledger writer answered another kind of write".into())
}

fn wal_path(database: &Path) -> std::path::PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

/// The connection and the transaction open on it, shared by the writer
/// thread and the writes made on their callers' threads.
struct Writer {
    conn: Connection,
    journal: Journal,
    /// Whether a transaction is open (`BEGIN IMMEDIATE` done, no commit yet).
    open: bool,
    /// Whether the writer thread sleeps until it is sent something (no
    /// transaction was open or committed in its last tick): a caller that
    /// opens one then wakes it. Read and written under the writer's lock.
    asleep: bool,
    /// The open transaction's period totals.
    totals: GroupTotals,
    /// A write of the open transaction failed for a reason not its own:
    /// the transaction will be rolled back.
    broken: Option<String>,
    /// Writes of the open transaction already answered.
    journaled: Vec<Line>,
    /// Writes answered early whose transaction then failed: applied again
    /// first thing in every transaction until one commits, and no
    /// reservation or settlement is answered early meanwhile.
    pending: Vec<Line>,
    /// Dead writers' journals replayed by the open transaction, removed
    /// once it commits.
    replayed: Vec<Orphan>,
    database: std::path::PathBuf,
}

/// The writer thread: applies each group of writes sent to it, answering
/// reservations and settlements at once (from the journal), and commits the
/// open transaction with every write that joined it since it was opened.
///
/// Callers write on their own threads when the connection is free
/// (`LedgerWriter::inline`), and this thread commits what they wrote at
/// ticks `COMMIT_EVERY` apart for as long as there is any; after a tick
/// with nothing to commit it sleeps, and the first caller to open a
/// transaction then wakes it. So under load a reservation or a settlement
/// wakes no thread, and the writes of a millisecond share one commit
/// (each commit writes its pages to the WAL, and each wake-up cost its
/// caller a thread switch). The writes committed at a tick were answered
/// already, from the journal, so the wait costs their callers nothing.
/// Writes sent through the queue (the connection was busy, a commit
/// failed, or a read waits for everything answered to be committed) are
/// committed as soon as they arrive.
///
/// The open transaction holds SQLite's write lock until its tick; the
/// gateway's other writes (sqlx's connection) wait for it, retrying every
/// 200 µs (`retry_soon`). Before they retried that way, SQLite's busy
/// handler slept in growing steps, and a 2 ms window kept them out for
/// seconds at the maximum throughput.
fn run(writer: &Mutex<Writer>, queue: mpsc::Receiver<Op>, checkpoint: mpsc::SyncSender<()>, wal: &Path) {
    let lock = || writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut commits = 0u64;
    // Whether the last tick committed something (or a caller woke this
    // thread): while it did, the thread ticks rather than sleeps.
    let mut ticking = false;
    loop {
        // Decided under the writer's lock, under which a caller opens a
        // transaction and reads whether to wake this thread.
        let sleep = {
            let mut writer = lock();
            writer.asleep = !writer.open && !ticking;
            writer.asleep
        };
        let received = if sleep {
            queue.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            queue.recv_timeout(COMMIT_EVERY)
        };
        let mut group = match received {
            // A caller opened a transaction: it is committed at the tick.
            Ok(Op { write: Write::Wake, .. }) => {
                ticking = true;
                continue;
            }
            Ok(op) => vec![op],
            Err(mpsc::RecvTimeoutError::Timeout) => Vec::new(),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let mut writer = lock();
        ticking = writer.commit_group(group);
        if ticking {
            commits += 1;
            if commits % NUDGE_EVERY == 0 {
                // A checkpoint already asked for is enough.
                let _ = checkpoint.try_send(());
            }
            if commits % WAL_CHECK_EVERY == 0 && wal_too_large(wal) {
                truncate_wal(&writer.conn);
            }
        }
    }
    // The store is gone: what callers wrote since the last tick is
    // committed, and a journal whose every line is committed goes.
    let mut writer = lock();
    writer.commit_group(Vec::new());
    if !writer.open && writer.pending.is_empty() {
        writer.journal.remove();
    }
}

impl Writer {
    /// Opens a transaction unless one is open, writing the pending
    /// reservations first. Without `wait`, gives up at once when another
    /// connection holds the write lock (a caller's thread must not block on
    /// it for the busy timeout).
    fn begin(&mut self, wait: bool) -> rusqlite::Result<()> {
        if self.open {
            return Ok(());
        }
        if wait {
            control(&self.conn, "BEGIN IMMEDIATE")?;
        } else {
            self.conn.busy_timeout(Duration::ZERO)?;
            let begun = control(&self.conn, "BEGIN IMMEDIATE");
            self.conn.busy_handler(Some(retry_soon))?;
            begun?;
        }
        self.open = true;
        for line in &self.pending {
            if let Err(e) = reapply(&self.conn, &mut self.totals, line) {
                self.broken.get_or_insert_with(|| e.to_string());
            }
        }
        Ok(())
    }

    /// Whether a reservation may be answered before its commit.
    fn answers_early(&self) -> bool {
        self.pending.is_empty() && self.broken.is_none()
    }

    /// A write made on the caller's thread, in the open transaction (opened
    /// if need be, which the second value says); `None` when it must go
    /// through the queue (a failed transaction's writes are not written
    /// again yet, or another connection holds the write lock).
    fn now<T>(
        &mut self,
        write: impl FnOnce(&mut Writer) -> StoreResult<T>,
    ) -> Option<(StoreResult<T>, bool)> {
        if !self.answers_early() {
            return None;
        }
        let opened = !self.open;
        if self.begin(false).is_err() {
            return None;
        }
        Some((write(self), opened))
    }

    /// A reservation in the open transaction, journaled when reserved.
    fn reserve_open(&mut self, reservation: &NewReservation) -> StoreResult<ReserveOutcome> {
        let answer = reserve(&self.conn, &mut self.totals, reservation);
        self.note_failure(&answer);
        if matches!(answer, Ok(ReserveOutcome::Reserved)) {
            self.journal_now(Line::Reservation(reservation.clone()))?;
        }
        answer
    }

    /// A settlement in the open transaction, journaled when it settled.
    fn settle_open(&mut self, request_id: &str, completion: &Completion) -> StoreResult<bool> {
        let answer = settle(&self.conn, &mut self.totals, request_id, completion);
        self.note_failure(&answer);
        if matches!(answer, Ok(true)) {
            self.journal_now(Line::Settlement {
                settled: request_id.to_string(),
                completion: completion.clone(),
            })?;
        }
        answer
    }

    /// Journals a write made on its caller's thread. One that cannot be
    /// journaled cannot be answered before the commit, so it is undone with
    /// its transaction.
    fn journal_now(&mut self, line: Line) -> StoreResult<()> {
        self.journal_answered(line).map_err(|e| {
            self.broken = Some(format!("cannot write to the ledger's journal: {e}"));
            StoreError::Ledger(format!("the ledger cannot take writes: {e}"))
        })
    }

    /// A write that failed for a reason not its own dooms the transaction.
    fn note_failure<T>(&mut self, answer: &StoreResult<T>) {
        if let Err(e) = answer {
            if !refused_alone(e) {
                self.broken.get_or_insert_with(|| e.to_string());
            }
        }
    }

    /// Journals a write about to be answered before its commit, and keeps
    /// it with the open transaction.
    fn journal_answered(&mut self, line: Line) -> std::io::Result<()> {
        self.journal.append(&line)?;
        self.journaled.push(line);
        Ok(())
    }

    /// Applies a group of writes in the open transaction (or a new one) and
    /// commits it. Reservations, settlements and refusals are answered as
    /// they are applied, when the journal holds them; the other writes once
    /// the commit is known. False when there was nothing to commit.
    fn commit_group(&mut self, group: Vec<Op>) -> bool {
        let mut waiting = Vec::with_capacity(group.len());
        // A read waits for the writes answered before a failed commit too.
        if !self.pending.is_empty() || group.iter().any(|op| !matches!(op.write, Write::Commit | Write::Wake))
        {
            if let Err(e) = self.begin(true) {
                let message = format!("cannot begin a ledger write: {e}");
                for op in group {
                    let _ = op.reply.send(Err(StoreError::Ledger(message.clone())));
                }
                return false;
            }
        }
        for Op { write, reply } in group {
            let answer = self.apply(&write);
            self.note_failure(&answer);
            // A refused request's row checks nothing, so it is answered
            // from the journal even while earlier writes are pending: if
            // this commit fails too, it is written again with theirs.
            let recorded = matches!((&write, &answer), (Write::Record(_), Ok(_)));
            if recorded || self.answers_early() {
                let line = match (write, &answer) {
                    (Write::Record(entry), Ok(_)) => Some(Line::Record { recorded: *entry }),
                    (Write::Reserve(r), Ok(Answer::Reserve(ReserveOutcome::Reserved))) => {
                        Some(Line::Reservation(*r))
                    }
                    (Write::Settle(id, c), Ok(Answer::Settle(true))) => {
                        Some(Line::Settlement { settled: id, completion: *c })
                    }
                    // A refusal wrote nothing, whatever the commit does.
                    (Write::Reserve(_) | Write::Settle(..), _)
                    | (Write::Record(_), Err(StoreError::Conflict(_))) => {
                        let _ = reply.send(answer);
                        continue;
                    }
                    _ => None,
                };
                if let Some(line) = line {
                    match self.journal_answered(line) {
                        Ok(()) => {
                            let _ = reply.send(answer);
                            continue;
                        }
                        // Answered after the commit instead.
                        Err(e) => tracing::warn!(error = %e, "cannot write to the ledger's journal"),
                    }
                }
            }
            waiting.push((answer, reply));
        }
        self.commit(waiting)
    }

    /// Commits the open transaction, then answers the writes that waited
    /// for it. False when nothing was open.
    fn commit(&mut self, waiting: Vec<(StoreResult<Answer>, Reply)>) -> bool {
        if !self.open {
            for (answer, reply) in waiting {
                let _ = reply.send(answer);
            }
            return false;
        }
        let totals = std::mem::take(&mut self.totals);
        let committed = match self.broken.take() {
            Some(error) => Err(format!("a ledger write failed: {error}")),
            None => {
                totals.write_back(&self.conn).map_err(|e| format!("a ledger write failed: {e}")).and_then(
                    |()| control(&self.conn, "COMMIT").map_err(|e| format!("the ledger commit failed: {e}")),
                )
            }
        };
        self.open = false;
        let journaled = std::mem::take(&mut self.journaled);
        if let Err(message) = committed {
            let _ = control(&self.conn, "ROLLBACK");
            // Their callers are running: they go in again next time.
            self.pending.extend(journaled);
            self.replayed.clear();
            tracing::error!(pending = self.pending.len(), error = %message, "a ledger group was rolled back");
            for (_, reply) in waiting {
                let _ = reply.send(Err(StoreError::Ledger(message.clone())));
            }
            return true;
        }
        self.pending.clear();
        // Every line of the journal is in the database now.
        self.journal.committed();
        for orphan in self.replayed.drain(..) {
            orphan.remove();
        }
        for (answer, reply) in waiting {
            let _ = reply.send(answer);
        }
        true
    }

    fn apply(&mut self, write: &Write) -> StoreResult<Answer> {
        let (conn, totals) = (&self.conn, &mut self.totals);
        match write {
            Write::Reserve(r) => reserve(conn, totals, r).map(Answer::Reserve),
            Write::Settle(id, c) => settle(conn, totals, id, c).map(Answer::Settle),
            Write::Record(e) => record(conn, e).map(|()| Answer::Record),
            Write::Replay => {
                let mut written = 0;
                for orphan in orphans(&self.database) {
                    for line in &orphan.lines {
                        written += usize::from(reapply(conn, totals, line)?);
                    }
                    self.replayed.push(orphan);
                }
                if written > 0 {
                    tracing::warn!(written, "writes of a stopped gateway recovered from its journal");
                }
                Ok(Answer::Replayed(written))
            }
            Write::Commit | Write::Wake => Ok(Answer::Record),
        }
    }
}

/// A project's period: (project, kind, period start).
type PeriodKey = (String, PeriodKind, i64);

/// The period totals a group has touched: as read at their first use, and
/// what the group's writes have added since.
#[derive(Default)]
struct GroupTotals {
    periods: HashMap<PeriodKey, GroupPeriod>,
}

struct GroupPeriod {
    read: PeriodTotals,
    /// Whether the row was there when read (else a reservation creates it).
    exists: bool,
    /// Whether a reservation of the group added to it (its settlement may
    /// follow in the same group).
    reserved_here: bool,
    spent: i64,
    reserved: i64,
}

impl GroupTotals {
    fn period(&mut self, conn: &Connection, key: PeriodKey) -> StoreResult<&mut GroupPeriod> {
        use std::collections::hash_map::Entry;
        match self.periods.entry(key) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => {
                let (project_id, kind, start) = entry.key();
                let read = period_totals(conn, project_id, *kind, *start)?;
                let (exists, read) = match read {
                    Some(read) => (true, read),
                    None => (false, PeriodTotals::default()),
                };
                Ok(entry.insert(GroupPeriod { read, exists, reserved_here: false, spent: 0, reserved: 0 }))
            }
        }
    }

    /// The totals as they stand in this group so far.
    fn current(&mut self, conn: &Connection, key: PeriodKey) -> StoreResult<PeriodTotals> {
        let period = self.period(conn, key)?;
        Ok(PeriodTotals {
            spent: Micros(period.read.spent.0 + period.spent),
            reserved: Micros(period.read.reserved.0 + period.reserved),
        })
    }

    /// Writes what the group added, one statement per period it changed.
    /// A row is created only by a reservation; a settlement of a period
    /// with no row (none should exist) changes nothing, as an `UPDATE`.
    fn write_back(&self, conn: &Connection) -> StoreResult<()> {
        let mut upsert = conn.prepare_cached(
            "INSERT INTO period_totals (project_id, kind, period_start, spent_micros, reserved_micros) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (project_id, kind, period_start) \
             DO UPDATE SET spent_micros = spent_micros + excluded.spent_micros, \
             reserved_micros = reserved_micros + excluded.reserved_micros",
        )?;
        let mut update = conn.prepare_cached(
            "UPDATE period_totals SET spent_micros = spent_micros + ?4, reserved_micros = reserved_micros + ?5 \
             WHERE project_id = ?1 AND kind = ?2 AND period_start = ?3",
        )?;
        for ((project_id, kind, start), period) in &self.periods {
            if period.spent == 0 && period.reserved == 0 {
                continue;
            }
            let created_here = !period.exists && period.reserved_here;
            let statement = if period.exists || created_here { &mut upsert } else { &mut update };
            statement.execute(params![project_id, kind.as_str(), start, period.spent, period.reserved])?;
        }
        Ok(())
    }
}

/// Whether a write's error left the transaction as it was (see the module
/// comment), so the rest of its group may still commit.
fn refused_alone(error: &StoreError) -> bool {
    matches!(error, StoreError::NotFound(_) | StoreError::Conflict(_))
}

/// Runs a transaction-control statement, parsed once per connection.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn reserve(conn: &Connection, totals: &mut GroupTotals, r: &NewReservation) -> StoreResult<ReserveOutcome> {
    let limits = conn
        .prepare_cached(
            "SELECT daily_limit_micros, weekly_limit_micros, monthly_limit_micros FROM projects WHERE id = ?1",
        )?
        .query_row([&r.project_id], |row| {
            Ok([row.get::<_, Option<i64>>(0)?, row.get::<_, Option<i64>>(1)?, row.get::<_, Option<i64>>(2)?])
        })
        .optional()?;
    let Some(limits) = limits else {
        return Err(StoreError::NotFound(format!("project {:?} not found", r.project_id)));
    };
    // The check and the writes below are in one transaction that holds the
    // database's write lock: nothing can change the totals in between.
    for (slot, limit) in r.periods.iter().zip(limits) {
        let Some(limit) = limit else { continue };
        let now = totals.current(conn, (r.project_id.clone(), slot.kind, slot.start))?;
        if now.spent.0 + now.reserved.0 + r.amount.0 > limit {
            return Ok(ReserveOutcome::Exhausted {
                kind: slot.kind,
                start: slot.start,
                limit: Micros(limit),
                spent: now.spent,
                reserved: now.reserved,
            });
        }
    }
    write_reservation(conn, totals, r)?;
    Ok(ReserveOutcome::Reserved)
}

/// Applies again a write answered before its commit (by a transaction that
/// then failed, or by a writer that stopped before its commit): a
/// reservation without a limit check (its request ran), a settlement if its
/// row is still in progress, a refused request's row unless it is there.
/// False when the write was in the database already.
fn reapply(conn: &Connection, totals: &mut GroupTotals, line: &Line) -> StoreResult<bool> {
    match line {
        Line::Reservation(reservation) => force(conn, totals, reservation),
        Line::Settlement { settled, completion } => settle(conn, totals, settled, completion),
        Line::Record { recorded } => match record(conn, recorded) {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        },
    }
}

/// Writes a reservation without a limit check. False when its row is there
/// already.
fn force(conn: &Connection, totals: &mut GroupTotals, r: &NewReservation) -> StoreResult<bool> {
    match write_reservation(conn, totals, r) {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A reservation's ledger row, then its periods' reserved totals.
fn write_reservation(conn: &Connection, totals: &mut GroupTotals, r: &NewReservation) -> StoreResult<()> {
    // The ledger row first: a request id already recorded is refused by
    // this statement alone (SQLite undoes just the statement), before the
    // totals change.
    conn.prepare_cached(
        "INSERT INTO requests (request_id, created_at_ms, project_id, key_id, endpoint, model_requested, \
         model_used, status, reserved_micros, day_start, week_start, month_start, owner, expires_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'in_progress', ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        r.request_id,
        r.created_at_ms,
        r.project_id,
        r.key_id,
        r.endpoint,
        r.model_requested,
        r.model_used,
        r.amount.0,
        r.periods[0].start,
        r.periods[1].start,
        r.periods[2].start,
        r.owner,
        r.expires_at_ms,
    ])
    .map_err(|e| conflict_or(e, || format!("request {:?} already recorded", r.request_id)))?;
    for slot in &r.periods {
        let period = totals.period(conn, (r.project_id.clone(), slot.kind, slot.start))?;
        period.reserved += r.amount.0;
        period.reserved_here = true;
    }
    Ok(())
}

/// A period's row, if it has one.
fn period_totals(
    conn: &Connection,
    project_id: &str,
    kind: PeriodKind,
    start: i64,
) -> StoreResult<Option<PeriodTotals>> {
    let totals = conn
        .prepare_cached(
            "SELECT spent_micros, reserved_micros FROM period_totals \
             WHERE project_id = ?1 AND kind = ?2 AND period_start = ?3",
        )?
        .query_row(params![project_id, kind.as_str(), start], |row| {
            Ok(PeriodTotals { spent: Micros(row.get(0)?), reserved: Micros(row.get(1)?) })
        })
        .optional()?;
    Ok(totals)
}

fn settle(
    conn: &Connection,
    totals: &mut GroupTotals,
    request_id: &str,
    c: &Completion,
) -> StoreResult<bool> {
    let row = conn
        .prepare_cached(
            "UPDATE requests SET status = ?1, finished_at_ms = ?2, model_used = COALESCE(?3, model_used), \
             http_status = ?4, error_message = ?5, input_tokens = ?6, output_tokens = ?7, \
             cache_read_tokens = ?8, cache_write_tokens = ?9, cost_micros = ?10, latency_ms = ?11, \
             ttft_ms = ?12 WHERE request_id = ?13 AND status = 'in_progress' \
             RETURNING project_id, reserved_micros, day_start, week_start, month_start",
        )?
        .query_row(
            params![
                c.status,
                c.finished_at_ms,
                c.model_used,
                c.http_status,
                c.error_message,
                to_i64(c.input_tokens),
                to_i64(c.output_tokens),
                to_i64(c.cache_read_tokens),
                to_i64(c.cache_write_tokens),
                c.cost.0,
                c.latency_ms.map(to_i64),
                c.ttft_ms.map(to_i64),
                request_id,
            ],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    [
                        row.get::<_, Option<i64>>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                    ],
                ))
            },
        )
        .optional()?;
    // Already settled (by crash recovery, say): nothing changes.
    let Some((project_id, reserved, starts)) = row else { return Ok(false) };
    for (kind, start) in PeriodKind::ALL.into_iter().zip(starts) {
        if let Some(start) = start {
            let period = totals.period(conn, (project_id.clone(), kind, start))?;
            period.reserved -= reserved;
            period.spent += c.cost.0;
        }
    }
    Ok(true)
}

fn record(conn: &Connection, e: &LedgerEntry) -> StoreResult<()> {
    let c = &e.completion;
    conn.prepare_cached(
        "INSERT INTO requests (request_id, created_at_ms, finished_at_ms, project_id, key_id, endpoint, \
         model_requested, model_used, status, http_status, error_message, input_tokens, output_tokens, \
         cost_micros, latency_ms, ttft_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        e.request_id,
        e.created_at_ms,
        c.finished_at_ms,
        e.project_id,
        e.key_id,
        e.endpoint,
        e.model_requested,
        c.model_used,
        c.status,
        c.http_status,
        c.error_message,
        to_i64(c.input_tokens),
        to_i64(c.output_tokens),
        c.cost.0,
        c.latency_ms.map(to_i64),
        c.ttft_ms.map(to_i64),
    ])
    .map_err(|err| conflict_or(err, || format!("request {:?} already recorded", e.request_id)))?;
    Ok(())
}

fn conflict_or(error: rusqlite::Error, what: impl FnOnce() -> String) -> StoreError {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::Conflict(what()),
        _ => StoreError::from(error),
    }
}
