//! The journal, which lets the SQLite ledger writer answer a reservation or
//! a settlement before the commit that holds it.
//!
//! A reservation is checked and written inside the writer's transaction as
//! before; what changes is when its caller hears "reserved". Waiting for the
//! commit put about a tenth of a millisecond (the WAL's writes and locks) on
//! every request's path. Instead the writer appends the reservation to this
//! file, one `write` of one line, and answers; the commit follows. A
//! settlement is journaled the same way, so it needs no wait either, and so
//! is the ledger row of a refused request, which then survives a failed
//! commit (it is written again with the next one) as well as a crash. A line
//! is as durable as the commit would have been (the database's commits are
//! not synced either, `synchronous = NORMAL`): both survive the process
//! dying, neither a power cut.
//!
//! Each writer has its own file beside the database
//! (`<database>.reservations.<pid>-<random>`), locked with `flock` for as
//! long as the writer lives. A file whose lock is free belongs to a writer
//! that died: its lines are replayed into the database in order (those
//! already committed are found there and skipped), and it is removed. That
//! happens when a store opens the database and at every recovery pass,
//! before abandoned reservations are looked for: a reservation answered just
//! before a crash becomes an `in_progress` row, settled by its settlement's
//! line when the journal has one, and otherwise released by recovery.
//! The writer empties its own file after a commit once the file has grown,
//! since by then every line in it is in the database.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Completion, LedgerEntry, NewReservation};

/// One line of a journal: a write answered before its commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum Line {
    /// A settlement, told apart by its `settled` field (the request's id).
    Settlement {
        settled: String,
        completion: Completion,
    },
    /// A refused request's row, told apart by its `recorded` field.
    Record {
        recorded: LedgerEntry,
    },
    Reservation(NewReservation),
}

/// Size past which the writer empties its journal after a commit.
const CLEAR_AT: u64 = 1 << 20;

pub(super) struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
    line: Vec<u8>,
}

impl Journal {
    /// Creates and locks this writer's journal beside `database`.
    pub(super) fn create(database: &Path) -> std::io::Result<Journal> {
        let path = name_for(database, &format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        if !lock(&file) {
            return Err(std::io::Error::other(format!("cannot lock {}", path.display())));
        }
        Ok(Journal { file, path, len: 0, line: Vec::with_capacity(512) })
    }

    /// Appends one line, in one write.
    pub(super) fn append(&mut self, line: &Line) -> std::io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, line)?;
        self.line.push(b'\n');
        self.file.write_all(&self.line)?;
        self.len += self.line.len() as u64;
        Ok(())
    }

    /// Removes the file when the writer stops with every line committed.
    pub(super) fn remove(&self) {
        remove(&self.path);
    }

    /// Empties the file once it has grown. Only after a commit that holds
    /// every line written so far.
    pub(super) fn committed(&mut self) {
        if self.len >= CLEAR_AT {
            match self.file.set_len(0) {
                Ok(()) => self.len = 0,
                Err(e) => tracing::warn!(error = %e, "cannot empty the reservation journal"),
            }
        }
    }
}

/// A dead writer's journal, locked by this process until it is dropped.
pub(super) struct Orphan {
    pub(super) path: PathBuf,
    _file: File,
    pub(super) lines: Vec<Line>,
}

impl Orphan {
    /// Removes the file, once its lines are in the database.
    pub(super) fn remove(self) {
        remove(&self.path);
    }
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a reservation journal");
    }
}

/// The journals beside `database` that no live writer holds.
pub(super) fn orphans(database: &Path) -> Vec<Orphan> {
    let prefix = name_for(database, "");
    let (Some(dir), Some(prefix)) = (prefix.parent(), prefix.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with(prefix)) {
            continue;
        }
        let path = entry.path();
        // A file another writer holds, or one removed meanwhile, is not ours.
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else { continue };
        if !lock(&file) {
            continue;
        }
        let mut lines = Vec::new();
        for line in BufReader::new(&file).split(b'\n') {
            let Ok(line) = line else { break };
            match serde_json::from_slice::<Line>(&line) {
                Ok(line) => lines.push(line),
                // Only a line cut short by a full disk could be unreadable.
                Err(e) if !line.is_empty() => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable journal line")
                }
                Err(_) => {}
            }
        }
        found.push(Orphan { path, _file: file, lines });
    }
    found
}

fn name_for(database: &Path, suffix: &str) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".reservations.");
    name.push(suffix);
    name.into()
}

/// Takes the file's exclusive lock without waiting; false when another
/// open file (another writer, alive) holds it.
fn lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor this function borrows for the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
