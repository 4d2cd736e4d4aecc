//! Waking sandboxes for the public proxy: one wake per sandbox however many requests arrive
//! (single flight), and at most [`MAX_WAKES`] sandboxes waking at once, so a crowd hitting many
//! sleeping sandboxes cannot start more restores than the machine can run; beyond that a
//! request is answered 503 with `Retry-After` at once instead of queueing.
//!
//! The wake runs on a task of its own: a client that gives up does not cancel a wake other
//! requests are waiting for. The public proxy passes the server's canonical wake
//! (`lifecycle::wake`: the engine warms or restores the sandbox, the row says running).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

/// Sandboxes waking at once (v1: 10).
pub const MAX_WAKES: usize = 10;
/// How long a request waits for its sandbox's wake.
const WAKE_DEADLINE: Duration = Duration::from_secs(120);

/// Why a request's sandbox could not be woken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    /// Every wake slot is taken.
    #[error("server busy, retry shortly")]
    Busy,
    /// The wake failed (or took too long).
    #[error("sandbox unavailable")]
    Failed,
}

type Outcome = Option<Result<(), WakeError>>;

/// The wakes in flight.
#[derive(Debug)]
pub struct Wakes {
    slots: Arc<Semaphore>,
    in_flight: Arc<Mutex<HashMap<String, watch::Receiver<Outcome>>>>,
    started: AtomicU64,
}

impl Default for Wakes {
    fn default() -> Self {
        Self::new(MAX_WAKES)
    }
}

impl Wakes {
    /// At most `slots` at once.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            in_flight: Arc::default(),
            started: AtomicU64::new(0),
        }
    }

    /// Wakes started since the daemon began (one per sandbox per burst).
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Runs `wake` for `id` on a task of its own unless one for `id` is in flight (then waits
    /// for that one's outcome); [`WakeError::Busy`] at once when every slot is taken.
    pub async fn run<F>(&self, id: &str, wake: F) -> Result<(), WakeError>
    where
        F: std::future::Future<Output = bool> + Send + 'static,
    {
        let mut outcome = {
            let mut in_flight =
                self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match in_flight.get(id) {
                Some(joined) => joined.clone(),
                None => {
                    let permit =
                        Arc::clone(&self.slots).try_acquire_owned().map_err(|_| WakeError::Busy)?;
                    let (tx, rx) = watch::channel(None);
                    in_flight.insert(id.to_owned(), rx.clone());
                    self.started.fetch_add(1, Ordering::Relaxed);
                    let (in_flight, id) = (Arc::clone(&self.in_flight), id.to_owned());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let result = match tokio::time::timeout(WAKE_DEADLINE, wake).await {
                            Ok(true) => Ok(()),
                            Ok(false) => Err(WakeError::Failed),
                            Err(_) => {
                                tracing::warn!(sandbox = %id, "public proxy wake: no answer in {WAKE_DEADLINE:?}");
                                Err(WakeError::Failed)
                            }
                        };
                        // Out of the map first: a request after this sees the sandbox hot (or
                        // starts a new wake after a failure), never a finished entry.
                        in_flight
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&id);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or(Err(WakeError::Failed)),
            Err(_) => Err(WakeError::Failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_wake_per_sandbox_and_no_more_than_the_slots() {
        let wakes = Arc::new(Wakes::new(1));
        let (release, gate) = watch::channel(false);
        let slow = |ok: bool| {
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                ok
            }
        };
        // Ten requests for one sandbox share one wake (one slot).
        let joined: Vec<_> = (0..10)
            .map(|_| {
                let (wakes, wake) = (Arc::clone(&wakes), slow(true));
                tokio::spawn(async move { wakes.run("a", wake).await })
            })
            .collect();
        while wakes.started() == 0 {
            tokio::task::yield_now().await;
        }
        // Another sandbox while the only slot is taken: busy at once, no wake started.
        assert_eq!(wakes.run("b", slow(true)).await, Err(WakeError::Busy));
        release.send(true).unwrap();
        for request in joined {
            assert_eq!(request.await.unwrap(), Ok(()));
        }
        assert_eq!(wakes.started(), 1);
        // The slot is back; a failed wake fails everyone waiting on it, and the next request
        // tries again.
        assert_eq!(wakes.run("b", async { false }).await, Err(WakeError::Failed));
        assert_eq!(wakes.run("b", async { true }).await, Ok(()));
        assert_eq!(wakes.started(), 3);
    }
}
