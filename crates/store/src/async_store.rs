//! The daemon's handle: store calls run on two dedicated connection threads, never on the
//! async runtime's workers.
//!
//! A writer thread owns the one connection that writes (SQLite takes one writer at a time
//! anyway, so queueing here costs nothing and keeps lock waits out of the busy timeout); a
//! reader thread owns a second connection, so a name lookup never waits behind a write's
//! fsync (WAL readers see the last commit). The type system keeps the reader read-only: its
//! closures get `&Store`, and only `&mut Store` methods write.
//!
//! Chosen over `spawn_blocking` around a mutex by measurement (README): the dedicated thread
//! wins on p99 and never grows tokio's blocking pool under load.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::db::{Options, Store};
use crate::error::{Result, StoreError};

type WriteJob = Box<dyn FnOnce(&mut Store) + Send>;
type ReadJob = Box<dyn FnOnce(&Store) + Send>;

/// The async store. Cheap to clone; the threads end when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct AsyncStore {
    writer: mpsc::Sender<WriteJob>,
    reader: mpsc::Sender<ReadJob>,
    deadline: Duration,
}

impl AsyncStore {
    /// Opens (and migrates) the database and starts the connection threads. Blocking: call
    /// it before serving, or from `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>, options: &Options) -> Result<Self> {
        let writer = Store::open_with(path, options)?;
        let reader = writer.reopen(options)?;
        Self::from_stores(writer, reader, options.busy_timeout * 2)
    }

    /// Builds the handle from two open connections; a call waits at most `deadline` for its
    /// answer (then [`StoreError::Unavailable`]: its effect is unknown, it may still commit).
    pub fn from_stores(mut writer: Store, reader: Store, deadline: Duration) -> Result<Self> {
        let (wtx, wrx) = mpsc::channel::<WriteJob>();
        let (rtx, rrx) = mpsc::channel::<ReadJob>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                for job in wrx {
                    job(&mut writer);
                }
            })
            .map_err(|error| StoreError::Spawn { thread: "store-writer", error })?;
        std::thread::Builder::new()
            .name("store-reader".into())
            .spawn(move || {
                for job in rrx {
                    job(&reader);
                }
            })
            .map_err(|error| StoreError::Spawn { thread: "store-reader", error })?;
        Ok(AsyncStore { writer: wtx, reader: rtx, deadline })
    }

    /// Runs `f` on the writer connection.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |s| {
            // A panicking call must not take the thread with it: the caller sees it as
            // "unavailable" (its reply is dropped) and the next call runs.
            if let Ok(r) = std::panic::catch_unwind(AssertUnwindSafe(|| f(s))) {
                let _ = tx.send(r);
            }
        });
        self.writer.send(job).map_err(|_| StoreError::Unavailable("store is closed"))?;
        self.wait(rx).await
    }

    /// Runs `f` on the reader connection.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |s| {
            if let Ok(r) = std::panic::catch_unwind(AssertUnwindSafe(|| f(s))) {
                let _ = tx.send(r);
            }
        });
        self.reader.send(job).map_err(|_| StoreError::Unavailable("store is closed"))?;
        self.wait(rx).await
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Unavailable("store call panicked")),
            Err(_) => Err(StoreError::Unavailable("store call passed its deadline")),
        }
    }
}
