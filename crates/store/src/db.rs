//! Opening the database: the file, its pragmas, the migrations.
//!
//! * `journal_mode = WAL`: readers never block the writer and the writer never blocks readers,
//!   which is what lets the CLI open the daemon's file while the daemon runs.
//! * `synchronous = FULL`: every commit fsyncs the WAL before it returns. The store promises
//!   that an acknowledged write survives; with `NORMAL` a WAL database stays consistent but can
//!   lose the last transactions on power loss (they are only fsynced at checkpoints). The cost
//!   is one fsync per write transaction, measured in the README.
//! * `foreign_keys = ON`: ownership and attachments are enforced by the database too.
//! * `busy_timeout`: a writer waits this long for another process's write lock before failing
//!   with [`StoreError::Busy`](crate::StoreError::Busy); every write transaction starts with
//!   `BEGIN IMMEDIATE`, so it never needs to upgrade a read lock (which the timeout cannot help).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{Result, StoreError};
use crate::migrations;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a write waits for another connection's write lock.
    pub busy_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        // v1's value.
        Options { busy_timeout: Duration::from_secs(5) }
    }
}

/// One connection to the state database. Reads take `&self`, writes `&mut self` (so a
/// connection handed out for reads cannot write; see [`crate::AsyncStore`]).
///
/// Not `Sync`: one thread at a time. Several `Store`s (threads, processes) may open the same
/// file.
pub struct Store {
    pub(crate) conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating it 0600 if needed) and migrates the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &Options::default())
    }

    /// [`Store::open`] with options.
    pub fn open_with(path: impl AsRef<Path>, options: &Options) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // Created here (only when missing) so it is private from the first byte; SQLite gives
        // the -wal and -shm files the database file's permissions. An existing file is never
        // opened by other means: closing any descriptor of it drops every POSIX lock this
        // process holds on it, SQLite's included, and another connection could then reset the
        // WAL under this process's feet (found by the CLI's key-rotation test).
        match std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(StoreError::Io { op: "creating", path, error }),
        }
        // Every failure names the file, so no caller has to add it (and none repeats it).
        Self::connect(&path, options)
            .map_err(|error| StoreError::Open { path: path.clone(), error: Box::new(error) })
    }

    /// Connects to the existing file at `path`, sets the pragmas and migrates.
    fn connect(path: &Path, options: &Options) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(options.busy_timeout)?;
        // journal_mode is persistent in the file; the others are per connection.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store { conn, path: path.to_path_buf() };
        migrations::migrate(&mut store.conn)?;
        Ok(store)
    }

    /// Opens a second connection to the same file (the async store's reader).
    pub fn reopen(&self, options: &Options) -> Result<Self> {
        Self::open_with(&self.path, options)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32> {
        migrations::version(&self.conn)
    }

    /// A write transaction holding the write lock from its first statement.
    pub(crate) fn write_tx(&mut self) -> Result<Transaction<'_>> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Runs SQLite's own consistency check; `Ok(())` when the file is sound.
    pub fn integrity_check(&self) -> Result<()> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let problems: Vec<String> =
            stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<_>>()?;
        if problems == ["ok"] {
            return Ok(());
        }
        Err(crate::StoreError::Invalid(format!("integrity check: {}", problems.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn opens_with_the_chosen_pragmas_and_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        let pragma = |name: &str| -> String {
            store
                .conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
        assert_eq!(pragma("synchronous"), "Integer(2)", "FULL");
        assert_eq!(pragma("foreign_keys"), "Integer(1)");
        assert_eq!(pragma("busy_timeout"), "Integer(5000)");
        assert_eq!(store.schema_version().unwrap(), migrations::SCHEMA_VERSION);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        store.integrity_check().unwrap();
    }

    #[test]
    fn reopening_keeps_the_data_and_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        store.conn.execute("INSERT INTO events (ts, type) VALUES (1, 'x')", []).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        let n: i64 = store.conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
        assert_eq!(store.schema_version().unwrap(), migrations::SCHEMA_VERSION);
    }
}
