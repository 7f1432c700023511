//! SQLite, the embedded default. Writes go through a single connection (the
//! "one writer path") and open with `BEGIN IMMEDIATE`, so a transaction holds
//! the write lock from its first statement and never fails half-way with
//! "database is locked"; reads use their own pool, which WAL lets run
//! alongside the writer.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::agents::impl_agent_store;
use super::batches::impl_batch_store;
use super::keys::impl_key_store;
use super::queries::impl_store;
use super::sqlite_ledger::LedgerWriter;
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
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // The ledger writer's checkpointer thread does them all.
            .pragma("wal_autocheckpoint", "0");
        let writer = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        MIGRATOR.run(&writer).await?;
        let ledger = LedgerWriter::start(options.get_filename())?;
        let reader =
            SqlitePoolOptions::new().max_connections(4).connect_with(options.read_only(true)).await?;
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
}

impl_batch_store!(SqliteStore, Sqlite);
impl_key_store!(SqliteStore);
impl_task_store!(SqliteStore);
impl_agent_store!(SqliteStore);
impl_store!(SqliteStore, Sqlite);
