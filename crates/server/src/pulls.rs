//! The image pulls running in this daemon: their cancel switches, by task ID (memory only; a
//! restart marks the tasks failed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One running pull's switch: the blocking conversion checks the flag, the async part is
/// aborted.
#[derive(Debug)]
pub struct Running {
    /// Set to stop the conversion between entries.
    pub cancel: Arc<AtomicBool>,
    /// The job's task.
    pub abort: tokio::task::AbortHandle,
}

/// Running pulls by task ID.
#[derive(Debug, Clone, Default)]
pub struct Pulls(Arc<Mutex<HashMap<String, Running>>>);

impl Pulls {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a started pull.
    pub fn insert(&self, task: &str, running: Running) {
        self.map().insert(task.to_owned(), running);
    }

    /// Forgets a pull that ended.
    pub fn remove(&self, task: &str) {
        self.map().remove(task);
    }

    /// Stops a pull; false when none runs under that ID here.
    pub fn cancel(&self, task: &str) -> bool {
        match self.map().remove(task) {
            Some(running) => {
                running.cancel.store(true, Ordering::SeqCst);
                running.abort.abort();
                true
            }
            None => false,
        }
    }
}
