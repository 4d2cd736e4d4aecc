//! Execs running at once, per user (`Quotas::max_concurrent_execs`): a counter per user under
//! one short `std` mutex, and a slot that gives its place back when dropped (when the buffered
//! answer is made, or when a streamed exec's body ends). No state, no handlers here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The counters.
#[derive(Debug, Default)]
pub struct ExecSlots {
    running: Mutex<HashMap<String, u32>>,
}

/// One running exec; dropping it frees the place.
#[derive(Debug)]
pub struct ExecSlot {
    slots: Arc<ExecSlots>,
    user: String,
}

/// Refused: `used` of `max` already run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("exec limit reached ({used}/{max})")]
pub struct ExecLimit {
    /// Running now.
    pub used: u32,
    /// The quota.
    pub max: u32,
}

impl ExecSlots {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for `user` if fewer than `max` of theirs run.
    pub fn acquire(self: &Arc<Self>, user: &str, max: u32) -> Result<ExecSlot, ExecLimit> {
        let mut map = self.map();
        let used = map.get(user).copied().unwrap_or(0);
        if used >= max {
            return Err(ExecLimit { used, max });
        }
        map.insert(user.to_owned(), used + 1);
        Ok(ExecSlot { slots: Arc::clone(self), user: user.to_owned() })
    }

    /// How many of `user`'s execs run.
    pub fn running(&self, user: &str) -> u32 {
        self.map().get(user).copied().unwrap_or(0)
    }
}

impl Drop for ExecSlot {
    fn drop(&mut self) {
        let mut map = self.slots.map();
        if let Some(n) = map.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // No entry for idle users: the map holds only users with execs running.
                map.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_per_user_and_come_back_when_dropped() {
        let slots = Arc::new(ExecSlots::default());
        let a1 = slots.acquire("a", 2).unwrap();
        let _a2 = slots.acquire("a", 2).unwrap();
        assert_eq!(slots.acquire("a", 2).unwrap_err(), ExecLimit { used: 2, max: 2 });
        assert_eq!(slots.acquire("a", 2).unwrap_err().to_string(), "exec limit reached (2/2)");
        let _b = slots.acquire("b", 2).unwrap();
        drop(a1);
        assert_eq!(slots.running("a"), 1);
        let _a3 = slots.acquire("a", 2).unwrap();
        assert!(slots.acquire("z", 0).is_err(), "a quota of 0 allows none");
        drop((_a2, _a3, _b));
        assert!(slots.map().is_empty());
    }
}
