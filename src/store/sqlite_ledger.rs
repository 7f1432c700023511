//! SQLite's budget writes: reservations, settlements and ledger rows, on a
//! thread of their own that owns one connection and commits in groups.
//!
//! These three writes happen for every request, and a reservation sits on
//! the request's path. Through sqlx each statement of a transaction is a
//! round trip to the connection's worker thread, so one reservation cost a
//! handful of thread switches and the single writer connection capped the
//! gateway near 2,600 of them a second. Here a whole reservation is one
//! message to this thread, and the writes that arrive while a commit is
//! being written share the next one. A caller hears back only after the
//! commit that holds its write: "reserved" still means "in the database",
//! and the limit check still runs inside the transaction that writes the
//! reservation, so concurrent requests cannot overspend.
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
//! other failure (the disk, say) rolls the whole group back and every
//! caller in it gets the error.
//!
//! Other writers (sqlx's, for everything else) take the same database lock
//! with `BEGIN IMMEDIATE`; both wait for each other through the busy timeout.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::queries::to_i64;
use super::{
    Completion, LedgerEntry, NewReservation, PeriodKind, PeriodTotals, ReserveOutcome, StoreError,
    StoreResult,
};
use crate::money::Micros;

/// The most writes one commit takes; more wait for the next.
const MAX_GROUP: usize = 256;

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
}

/// One write and the caller waiting for its answer.
struct Op {
    write: Write,
    reply: oneshot::Sender<StoreResult<Answer>>,
}

enum Write {
    Reserve(Box<NewReservation>),
    Settle(String, Box<Completion>),
    Record(Box<LedgerEntry>),
}

enum Answer {
    Reserve(ReserveOutcome),
    Settle(bool),
    Record,
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
        conn.set_prepared_statement_cache_capacity(32);
        let checkpointer = open(path)?;
        let (nudge, nudges) = mpsc::sync_channel(1);
        spawn("ccgate-checkpoint", move || checkpoint(checkpointer, nudges))?;
        let (ops, queue) = mpsc::channel();
        let wal = wal_path(path);
        spawn("ccgate-ledger", move || run(conn, queue, nudge, &wal))?;
        Ok(LedgerWriter { ops })
    }

    pub(super) async fn reserve(&self, reservation: &NewReservation) -> StoreResult<ReserveOutcome> {
        match self.write(Write::Reserve(Box::new(reservation.clone()))).await? {
            Answer::Reserve(outcome) => Ok(outcome),
            _ => Err(mismatch()),
        }
    }

    pub(super) async fn settle(&self, request_id: &str, completion: &Completion) -> StoreResult<bool> {
        match self.write(Write::Settle(request_id.to_string(), Box::new(completion.clone()))).await? {
            Answer::Settle(settled) => Ok(settled),
            _ => Err(mismatch()),
        }
    }

    pub(super) async fn record(&self, entry: &LedgerEntry) -> StoreResult<()> {
        match self.write(Write::Record(Box::new(entry.clone()))).await? {
            Answer::Record => Ok(()),
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
    conn.busy_timeout(Duration::from_secs(10))?;
    // NORMAL in WAL mode survives a process crash, as for the other
    // connections (the journal mode is the file's, set when it was opened);
    // no commit checkpoints, which would put a checkpoint's fsync on the
    // path of whichever request committed last.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;",
    )?;
    Ok(conn)
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> StoreResult<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(work)
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
fn checkpoint(conn: Connection, nudges: mpsc::Receiver<()>) {
    loop {
        let stopping =
            matches!(nudges.recv_timeout(CHECKPOINT_EVERY), Err(mpsc::RecvTimeoutError::Disconnected));
        let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1));
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

fn run(conn: Connection, queue: mpsc::Receiver<Op>, checkpoint: mpsc::SyncSender<()>, wal: &Path) {
    let mut commits = 0u64;
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        commit_group(&conn, group);
        commits += 1;
        if commits % NUDGE_EVERY == 0 {
            // A checkpoint already asked for is enough.
            let _ = checkpoint.try_send(());
        }
        if commits % WAL_CHECK_EVERY == 0 && wal_too_large(wal) {
            truncate_wal(&conn);
        }
    }
}

/// Applies a group of writes in one transaction and answers each caller
/// once the commit is known.
fn commit_group(conn: &Connection, group: Vec<Op>) {
    let fail = |group: Vec<oneshot::Sender<StoreResult<Answer>>>, message: String| {
        for reply in group {
            let _ = reply.send(Err(StoreError::Ledger(message.clone())));
        }
    };
    if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
        fail(group.into_iter().map(|op| op.reply).collect(), format!("cannot begin a ledger write: {e}"));
        return;
    }
    let mut answered = Vec::with_capacity(group.len());
    let mut broken = None;
    let mut totals = GroupTotals::default();
    for op in group {
        let answer = apply(conn, &mut totals, &op.write);
        if let Err(e) = &answer {
            if !refused_alone(e) {
                broken.get_or_insert_with(|| e.to_string());
            }
        }
        answered.push((answer, op.reply));
    }
    let committed = match broken {
        Some(error) => Err(format!("a ledger write failed: {error}")),
        None => totals
            .write_back(conn)
            .map_err(|e| format!("a ledger write failed: {e}"))
            .and_then(|()| control(conn, "COMMIT").map_err(|e| format!("the ledger commit failed: {e}"))),
    };
    if let Err(message) = committed {
        let _ = control(conn, "ROLLBACK");
        fail(answered.into_iter().map(|(_, reply)| reply).collect(), message);
        return;
    }
    for (answer, reply) in answered {
        let _ = reply.send(answer);
    }
}

fn apply(conn: &Connection, totals: &mut GroupTotals, write: &Write) -> StoreResult<Answer> {
    match write {
        Write::Reserve(r) => reserve(conn, totals, r).map(Answer::Reserve),
        Write::Settle(id, c) => settle(conn, totals, id, c).map(Answer::Settle),
        Write::Record(e) => record(conn, e).map(|()| Answer::Record),
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
                Ok(entry.insert(GroupPeriod { read, exists, spent: 0, reserved: 0 }))
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
            let created_here = !period.exists && period.reserved > 0;
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
        totals.period(conn, (r.project_id.clone(), slot.kind, slot.start))?.reserved += r.amount.0;
    }
    Ok(ReserveOutcome::Reserved)
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
