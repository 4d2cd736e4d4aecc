//! The daemon's forwards (`forward.rs`), in memory: by sandbox, bounded. A module of its own so
//! the daemon's state holds it without depending on the routes (which depend on
//! authentication, which depends on the state).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

/// Forwards one sandbox may hold.
pub const MAX_PER_SANDBOX: usize = 16;
/// Forwards the daemon holds in all.
pub const MAX_TOTAL: usize = 256;
/// Live connections one forward relays at once.
pub const MAX_CONNECTIONS: usize = 64;

pub use crate::forward_error::ForwardError;

/// One forward's listener task and what a list shows of it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) guest_port: u16,
    pub(crate) host_port: u16,
    pub(crate) created_at: store::Timestamp,
    pub(crate) connections: Arc<AtomicU64>,
    /// Aborting it drops the listener and its `JoinSet`, which aborts every connection (and
    /// drops their leases).
    pub(crate) task: JoinHandle<()>,
}

impl Entry {
    pub(crate) fn to_api(&self, sandbox_id: &str) -> api::Forward {
        api::Forward {
            sandbox_id: sandbox_id.to_owned(),
            guest_port: self.guest_port,
            host_port: self.host_port,
            address: format!("127.0.0.1:{}", self.host_port),
            connections: self.connections.load(Ordering::Relaxed),
            created_at: crate::times::rfc3339(self.created_at),
        }
    }
}

/// The daemon's forwards, by sandbox ID (a std mutex, never held across an await).
#[derive(Debug, Clone, Default)]
pub struct Forwards {
    inner: Arc<Mutex<HashMap<String, Vec<Entry>>>>,
}

impl Forwards {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        // A panic while held leaves a map that is still consistent (each change is one call).
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn check_room(
        map: &HashMap<String, Vec<Entry>>,
        sandbox_id: &str,
    ) -> Result<(), ForwardError> {
        if map.get(sandbox_id).map_or(0, Vec::len) >= MAX_PER_SANDBOX {
            return Err(ForwardError::Limit { max: MAX_PER_SANDBOX, scope: "per sandbox" });
        }
        if map.values().map(Vec::len).sum::<usize>() >= MAX_TOTAL {
            return Err(ForwardError::Limit { max: MAX_TOTAL, scope: "in all" });
        }
        Ok(())
    }

    /// A sandbox's forwards, by host port.
    pub fn list(&self, sandbox_id: &str) -> Vec<api::Forward> {
        let map = self.lock();
        let mut out: Vec<api::Forward> =
            map.get(sandbox_id).into_iter().flatten().map(|e| e.to_api(sandbox_id)).collect();
        out.sort_by_key(|f| f.host_port);
        out
    }

    /// Closes a sandbox's forwards and their connections; returns how many.
    pub fn close_sandbox(&self, sandbox_id: &str) -> usize {
        let entries = self.lock().remove(sandbox_id).unwrap_or_default();
        for e in &entries {
            e.task.abort();
        }
        entries.len()
    }

    /// Closes every forward (daemon shutdown).
    pub fn close_all(&self) {
        let all: Vec<Entry> = self.lock().drain().flat_map(|(_, v)| v).collect();
        for e in &all {
            e.task.abort();
        }
    }
}
