//! The daemon-wide memory budget for buffered exec output.
//!
//! A buffered exec keeps up to 10 MiB of each stream until the command exits, so without a
//! global bound a few hundred concurrent calls could hold gigabytes. Every buffered exec
//! reserves the bytes it keeps from one budget (a semaphore of bytes, `Settings::
//! exec_output_budget`, 256 MiB by default). Streaming exec keeps nothing and is not counted.
//!
//! Two moments, two answers:
//! - **Before the command starts** the exec reserves a first slice ([`FIRST_SLICE`]), waiting at
//!   most [`FIRST_SLICE_WAIT`]. Without it the call answers 503 and the command never runs: the
//!   client can retry or stream, and nothing happened in the guest.
//! - **While it runs** more is taken without waiting. When the budget is spent, the output
//!   beyond what is held is dropped and flagged as truncated, as for the per-call cap: the
//!   command has run, and failing the call would hide its exit code and its effects. Waiting
//!   instead could deadlock: every running exec holding part of the budget, each waiting for
//!   more.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Reserved before a buffered exec starts: what most commands print in all.
pub const FIRST_SLICE: usize = 64 * 1024;

/// How long a buffered exec waits for its first slice. Slices come back as soon as other
/// buffered execs answer, so a burst of large answers passes within this; a budget still spent
/// after it means sustained pressure, where a quick 503 (retry, or stream) serves better than a
/// queue of held requests.
pub const FIRST_SLICE_WAIT: Duration = Duration::from_secs(2);

/// The budget was spent for longer than [`FIRST_SLICE_WAIT`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the daemon's memory for buffered exec output ({budget} bytes) is in use by other execs; \
     retry, or stream the output (Accept: application/x-ndjson)"
)]
pub struct BudgetExhausted {
    /// The whole budget, in bytes.
    pub budget: usize,
}

/// The budget; cheap to share.
#[derive(Debug, Clone)]
pub struct OutputBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl OutputBudget {
    /// A budget of `total` bytes (capped at what a semaphore can count).
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        Self { bytes: Arc::new(Semaphore::new(total)), total }
    }

    /// Bytes not reserved by anyone now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Reserves the first slice for one buffered exec, waiting at most `wait`.
    pub async fn reserve(&self, wait: Duration) -> Result<Reservation, BudgetExhausted> {
        let exhausted = || BudgetExhausted { budget: self.total };
        let slice = u32::try_from(FIRST_SLICE).map_err(|_| exhausted())?;
        let permit = tokio::time::timeout(wait, self.bytes.clone().acquire_many_owned(slice))
            .await
            .map_err(|_| exhausted())?
            // The semaphore is never closed; were it, no budget is the honest answer.
            .map_err(|_| exhausted())?;
        Ok(Reservation { bytes: self.bytes.clone(), permit, held: FIRST_SLICE })
    }
}

/// What one buffered exec holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    bytes: Arc<Semaphore>,
    permit: OwnedSemaphorePermit,
    held: usize,
}

/// Bytes taken from the budget at a time beyond the first slice, so a stream of small frames
/// does not touch the semaphore for each one.
const GROWTH_STEP: usize = 256 * 1024;

impl Reservation {
    /// How many more bytes the caller, now keeping `kept`, may keep: up to `want`, taking more
    /// from the budget without waiting when needed. Less than `want` means the budget is spent.
    pub fn room(&mut self, kept: usize, want: usize) -> usize {
        let need = kept.saturating_add(want);
        if need > self.held {
            // Round up to a step, but take only what is there when the budget runs low.
            let step = (need - self.held).max(GROWTH_STEP);
            if !self.take(step) {
                let left = self.bytes.available_permits();
                self.take((need - self.held).min(left));
            }
        }
        self.held.saturating_sub(kept).min(want)
    }

    fn take(&mut self, bytes: usize) -> bool {
        let Ok(n) = u32::try_from(bytes) else { return false };
        match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(more) => {
                self.permit.merge(more);
                self.held += bytes;
                true
            }
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => false,
        }
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }
}

/// A reservation handed to the agent client as the exec's [`engine::OutputRoom`]; the budget
/// gets its bytes back when the exec's future drops the last reference.
#[derive(Debug)]
pub struct SharedReservation(std::sync::Mutex<Reservation>);

impl SharedReservation {
    /// Shares `reservation` with one exec.
    pub fn new(reservation: Reservation) -> Arc<Self> {
        Arc::new(Self(std::sync::Mutex::new(reservation)))
    }
}

impl engine::OutputRoom for SharedReservation {
    fn room(&self, kept: usize, want: usize) -> usize {
        // One exec uses it, from one task: never contended, held for a try_acquire only.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).room(kept, want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_are_bounded_in_total_and_given_back_on_drop() {
        let budget = OutputBudget::new(FIRST_SLICE * 3);
        let mut a = budget.reserve(Duration::ZERO).await.expect("first");
        // Growth beyond the first slice comes from the same budget.
        assert_eq!(a.room(FIRST_SLICE, FIRST_SLICE), FIRST_SLICE);
        assert_eq!(budget.available(), FIRST_SLICE);
        let mut b = budget.reserve(Duration::ZERO).await.expect("second");
        assert_eq!(budget.available(), 0);
        // Spent: no growth, but what is held stays usable.
        assert_eq!(b.room(0, FIRST_SLICE * 2), FIRST_SLICE);
        assert_eq!(b.room(FIRST_SLICE, 10), 0);
        let err = budget.reserve(Duration::from_millis(50)).await.expect_err("spent");
        assert!(err.to_string().contains("retry, or stream"), "{err}");
        drop(a);
        assert_eq!(budget.available(), FIRST_SLICE * 2);
        assert_eq!(b.room(FIRST_SLICE, 10), 10);
        drop(b);
        assert_eq!(budget.available(), FIRST_SLICE * 3);
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_the_slice_given_back() {
        let budget = OutputBudget::new(FIRST_SLICE);
        let held = budget.reserve(Duration::ZERO).await.expect("first");
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(Duration::from_secs(5)).await.is_ok() })
        };
        tokio::task::yield_now().await;
        drop(held);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("in time")
                .expect("task")
        );
    }

    #[tokio::test]
    async fn growth_takes_what_is_left_when_a_step_does_not_fit() {
        let budget = OutputBudget::new(FIRST_SLICE + 1000);
        let mut r = budget.reserve(Duration::ZERO).await.expect("first");
        assert_eq!(r.room(FIRST_SLICE, 600), 600);
        assert_eq!(r.held(), FIRST_SLICE + 600);
        assert_eq!(r.room(FIRST_SLICE + 600, 600), 400);
    }
}
