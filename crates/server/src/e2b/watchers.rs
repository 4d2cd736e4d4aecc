//! envd's polled watchers (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`), per
//! sandbox: each is a guest watch (lohar's WATCH extension) drained by a task of its own into
//! a bounded buffer that `GetWatcherEvents` empties. A watcher ends when it is removed, when its
//! guest watch ends (the sandbox was killed, paused or crashed: its lease was cut), or when
//! nobody polled it for [`IDLE_EXPIRY`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Watchers one sandbox may have at once (each holds a guest connection; lohar serves 50).
pub const MAX_PER_SANDBOX: usize = 16;
/// Events one watcher holds between polls; later ones are dropped (and logged) until polled.
pub const MAX_BUFFERED: usize = 4096;
/// A watcher nobody polled for this long is dropped.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(600);

/// One event as envd reports it: the name relative to the watched directory, and its
/// `EVENT_TYPE_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Relative name.
    pub name: String,
    /// `EVENT_TYPE_CREATE`, ...
    pub kind: &'static str,
}

/// One watcher's state, shared by its task and the handlers.
#[derive(Debug)]
pub struct Watcher {
    sandbox: String,
    inner: Mutex<Inner>,
    /// Aborts the draining task (which drops the guest watch).
    stop: tokio::sync::Notify,
}

#[derive(Debug)]
struct Inner {
    events: VecDeque<Event>,
    dropped: u64,
    polled: Instant,
}

impl Watcher {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Buffers an event; false when the buffer is full and it was dropped.
    pub fn push(&self, event: Event) -> bool {
        let mut inner = self.inner();
        if inner.events.len() >= MAX_BUFFERED {
            inner.dropped += 1;
            return false;
        }
        inner.events.push_back(event);
        true
    }

    /// Takes every buffered event, and marks the watcher polled.
    pub fn take(&self) -> Vec<Event> {
        let mut inner = self.inner();
        inner.polled = Instant::now();
        inner.dropped = 0;
        inner.events.drain(..).collect()
    }

    /// True when nobody polled it for `IDLE_EXPIRY`.
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.inner().polled) >= IDLE_EXPIRY
    }

    /// Resolves when the watcher was removed.
    pub async fn stopped(&self) {
        self.stop.notified().await
    }
}

/// Why a watcher could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the sandbox has {MAX_PER_SANDBOX} watchers already")]
pub struct TooMany;

/// The watchers, by ID.
#[derive(Debug, Default)]
pub struct Registry {
    watchers: Mutex<HashMap<String, Arc<Watcher>>>,
}

impl Registry {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Watcher>>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new watcher of `sandbox` under a fresh ID.
    pub fn insert(&self, sandbox: &str) -> Result<(String, Arc<Watcher>), TooMany> {
        let mut map = self.map();
        if map.values().filter(|w| w.sandbox == sandbox).count() >= MAX_PER_SANDBOX {
            return Err(TooMany);
        }
        let id = crate::names::random_hex(16);
        let watcher = Arc::new(Watcher {
            sandbox: sandbox.to_owned(),
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                dropped: 0,
                polled: Instant::now(),
            }),
            stop: tokio::sync::Notify::new(),
        });
        map.insert(id.clone(), Arc::clone(&watcher));
        Ok((id, watcher))
    }

    /// The watcher `id` of `sandbox` (another sandbox's is not found).
    pub fn get(&self, sandbox: &str, id: &str) -> Option<Arc<Watcher>> {
        self.map().get(id).filter(|w| w.sandbox == sandbox).cloned()
    }

    /// Removes watcher `id` of `sandbox` and stops its task; false when there was none.
    pub fn remove(&self, sandbox: &str, id: &str) -> bool {
        let mut map = self.map();
        match map.get(id) {
            Some(w) if w.sandbox == sandbox => {
                w.stop.notify_one();
                map.remove(id);
                true
            }
            _ => false,
        }
    }

    /// Forgets `id` whatever its sandbox (its task ended).
    pub fn forget(&self, id: &str) {
        self.map().remove(id);
    }

    /// How many watchers `sandbox` has.
    pub fn count(&self, sandbox: &str) -> usize {
        self.map().values().filter(|w| w.sandbox == sandbox).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str) -> Event {
        Event { name: name.into(), kind: "EVENT_TYPE_CREATE" }
    }

    #[test]
    fn per_sandbox_bound_and_isolation() {
        let r = Registry::default();
        let mut ids = Vec::new();
        for _ in 0..MAX_PER_SANDBOX {
            ids.push(r.insert("a").unwrap().0);
        }
        assert_eq!(r.insert("a").unwrap_err(), TooMany);
        // Another sandbox has its own bound and cannot see a's watchers.
        let (b, _) = r.insert("b").unwrap();
        assert!(r.get("b", &ids[0]).is_none());
        assert!(!r.remove("b", &ids[0]));
        assert!(r.get("b", &b).is_some());
        assert!(r.remove("a", &ids[0]));
        assert!(r.get("a", &ids[0]).is_none());
        assert_eq!(r.count("a"), MAX_PER_SANDBOX - 1);
        assert!(r.insert("a").is_ok());
    }

    #[test]
    fn the_buffer_is_bounded_and_taking_empties_it() {
        let r = Registry::default();
        let (_, w) = r.insert("a").unwrap();
        for i in 0..MAX_BUFFERED {
            assert!(w.push(ev(&i.to_string())));
        }
        assert!(!w.push(ev("one too many")));
        let taken = w.take();
        assert_eq!(taken.len(), MAX_BUFFERED);
        assert_eq!(taken[0], ev("0"));
        assert!(w.take().is_empty());
        assert!(w.push(ev("again")));
    }

    #[test]
    fn expiry_counts_from_the_last_poll() {
        let r = Registry::default();
        let (_, w) = r.insert("a").unwrap();
        let now = Instant::now();
        assert!(!w.expired(now));
        assert!(w.expired(now + IDLE_EXPIRY));
        w.take();
        assert!(!w.expired(Instant::now() + IDLE_EXPIRY / 2));
    }
}
