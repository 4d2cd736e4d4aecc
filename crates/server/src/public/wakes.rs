//! Waking sandboxes for the public proxy: one wake per sandbox however many requests arrive
//! (single flight), and at most [`MAX_WAKES`] sandboxes waking at once, so a crowd hitting many
//! sleeping sandboxes cannot start more restores than the machine can run; beyond that a
//! request is answered 503 with `Retry-After` at once instead of queueing.
//!
//! The wake runs on a task of its own: a client that gives up does not cancel a wake other
//! requests are waiting for. It is the server's canonical wake (`lifecycle::wake`: the engine
//! warms or restores the sandbox, the row says running).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::state::AppState;

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

    /// Wakes `sandbox` (already known not to be hot), or joins the wake in flight.
    pub async fn wake(&self, state: &AppState, sandbox: store::Sandbox) -> Result<(), WakeError> {
        let mut outcome = {
            let mut in_flight =
                self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match in_flight.get(&sandbox.id) {
                Some(joined) => joined.clone(),
                None => {
                    let permit =
                        Arc::clone(&self.slots).try_acquire_owned().map_err(|_| WakeError::Busy)?;
                    let (tx, rx) = watch::channel(None);
                    in_flight.insert(sandbox.id.clone(), rx.clone());
                    self.started.fetch_add(1, Ordering::Relaxed);
                    let (state, in_flight) = (state.clone(), Arc::clone(&self.in_flight));
                    tokio::spawn(async move {
                        let _permit = permit;
                        let woke = tokio::time::timeout(
                            WAKE_DEADLINE,
                            crate::lifecycle::wake(&state, &sandbox),
                        )
                        .await;
                        let result = match woke {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => {
                                tracing::warn!(sandbox = %sandbox.id, "public proxy wake: {e}");
                                Err(WakeError::Failed)
                            }
                            Err(_) => {
                                tracing::warn!(sandbox = %sandbox.id, "public proxy wake: no answer in {WAKE_DEADLINE:?}");
                                Err(WakeError::Failed)
                            }
                        };
                        // Out of the map first: a request after this sees the sandbox hot (or
                        // starts a new wake after a failure), never a finished entry.
                        in_flight
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&sandbox.id);
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
