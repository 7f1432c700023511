//! SQLite, the embedded default. Writes go through a single connection (the
//! "one writer path") and open with `BEGIN IMMEDIATE`, so a transaction holds
//! the write lock from its first statement and never fails half-way with
//! "database is locked"; reads use their own pool, which WAL lets run
//! alongside the writer.

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::agents::impl_agent_store;
use super::batches::impl_batch_store;
use super::keys::impl_key_store;
use super::queries::impl_store;
use super::sqlite_ledger::{retry_soon, LedgerWriter};
use super::tasks::impl_task_store;
use super::{Completion, LedgerEntry, NewReservation, ReserveOutcome, StoreResult};

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Reservations, settlements and ledger rows: the writes every request
    /// makes, on a thread of their own (see `sqlite_ledger`).
    ledger: LedgerWriter,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    pub async fn connect(url: &str) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode survives a process crash; only an OS crash can
            // lose the last commits, and never corrupts the file.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // The ledger writer's checkpointer thread does them all.
            .pragma("wal_autocheckpoint", "0");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .after_connect(|conn, _| Box::pin(retry_soon_on(conn)))
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let ledger = LedgerWriter::start(options.get_filename())?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| Box::pin(retry_soon_on(conn)))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader, ledger })
    }

    async fn begin_write(&self) -> Result<Transaction<'_, Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    async fn ledger_reserve(&self, reservation: &NewReservation) -> StoreResult<ReserveOutcome> {
        self.ledger.reserve(reservation).await
    }

    async fn ledger_settle(&self, request_id: &str, completion: &Completion) -> StoreResult<bool> {
        self.ledger.settle(request_id, completion).await
    }

    async fn ledger_record(&self, entry: &LedgerEntry) -> StoreResult<()> {
        self.ledger.record(entry).await
    }

    async fn ledger_flush(&self) -> StoreResult<()> {
        self.ledger.flush().await
    }

    async fn ledger_replay(&self) -> StoreResult<()> {
        self.ledger.replay().await.map(drop)
    }

    /// Nothing: SQLite cannot tell other processes (they read a key again
    /// after `auth::KEY_CACHE_TTL`).
    async fn announce(&self, _change: &super::keys::KeyChange) -> StoreResult<()> {
        Ok(())
    }

    async fn follow_key_changes(&self) -> StoreResult<Option<super::keys::KeyChanges>> {
        Ok(None)
    }
}

/// Gives one of sqlx's connections the ledger connection's wait for another
/// connection's write lock (`sqlite_ledger::retry_soon`: a retry every
/// 200 µs, up to 10 s) in place of SQLite's busy timeout. The busy timeout
/// sleeps in growing steps (1, 2, 5 … 100 ms), and the ledger takes the
/// lock for a commit every few hundred microseconds under load, so an
/// admin write or a batch's could sleep tens of milliseconds past the
/// moment the lock was free, again and again.
async fn retry_soon_on(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the handle is an open connection, locked for this call so no
    // statement runs on it meanwhile. The `Connection` made from it does not
    // close it when dropped, and the busy handler is a plain function that
    // holds no state of that `Connection`.
    let raw = unsafe { rusqlite::Connection::from_handle(handle.as_raw_handle().as_ptr()) };
    raw.and_then(|raw| raw.busy_handler(Some(retry_soon)))
        .map_err(|e| sqlx::Error::Configuration(Box::new(e)))
}

impl_batch_store!(SqliteStore, Sqlite);
impl_key_store!(SqliteStore);
impl_task_store!(SqliteStore);
impl_agent_store!(SqliteStore);
impl_store!(SqliteStore, Sqlite);

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite keeps one wait per connection: installing a busy handler
    /// clears the busy timeout, which `PRAGMA busy_timeout` then reads as 0.
    #[tokio::test]
    async fn sqlx_connections_wait_for_the_lock_with_the_ledgers_retry() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("busy.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        for pool in [&store.writer, &store.reader] {
            let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(pool).await.unwrap();
            assert_eq!(timeout, 0, "a busy timeout replaced the retry handler");
        }
        // Without the handler, sqlx's busy timeout is in force.
        let plain = SqlitePoolOptions::new().connect_with(SqliteConnectOptions::from_str(&url).unwrap());
        let timeout: i64 =
            sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&plain.await.unwrap()).await.unwrap();
        assert!(timeout > 0);
    }
}
