//! The live web-shell connections (`web_shell.rs`), per sandbox: the cap, and revocation
//! closing them. A module of its own so the daemon's state holds it without depending on the
//! routes (which depend on authentication, which depends on the state).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Live web-shell connections one sandbox may have (v1: 5).
pub const MAX_PER_SANDBOX: usize = 5;

/// The live web-shell connections, per sandbox: the cap, and revocation closing them.
#[derive(Debug, Default)]
pub struct WebShells {
    live: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    count: usize,
    /// Cancelled (and replaced) by a revocation: every connection admitted before it holds it.
    revoked: CancellationToken,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Slot {
    shells: Arc<WebShells>,
    id: String,
    revoked: CancellationToken,
}

impl Slot {
    /// Completes when the sandbox's token is revoked.
    pub async fn revoked(&self) {
        self.revoked.cancelled().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut live = self.shells.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = live.get_mut(&self.id) {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                live.remove(&self.id);
            }
        }
    }
}

impl WebShells {
    /// A place for one more connection to sandbox `id`, or `None` when it has
    /// [`MAX_PER_SANDBOX`].
    pub fn admit(self: &Arc<Self>, id: &str) -> Option<Slot> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = live
            .entry(id.to_owned())
            .or_insert_with(|| Entry { count: 0, revoked: CancellationToken::new() });
        if entry.count >= MAX_PER_SANDBOX {
            return None;
        }
        entry.count += 1;
        Some(Slot { shells: self.clone(), id: id.to_owned(), revoked: entry.revoked.clone() })
    }

    /// Closes every connection to sandbox `id` admitted so far; returns how many there were.
    pub fn revoke(&self, id: &str) -> usize {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match live.get_mut(id) {
            Some(entry) => {
                entry.revoked.cancel();
                entry.revoked = CancellationToken::new();
                entry.count
            }
            None => 0,
        }
    }

    /// Live connections to sandbox `id`.
    pub fn live(&self, id: &str) -> usize {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.get(id).map_or(0, |e| e.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    #[tokio::test]
    async fn the_tracker_caps_each_sandbox_and_revocation_ends_those_admitted() {
        let shells = Arc::new(WebShells::default());
        let mut slots: Vec<Slot> =
            (0..MAX_PER_SANDBOX).map(|_| shells.admit("a").unwrap()).collect();
        assert!(shells.admit("a").is_none(), "a sixth is refused");
        let other = shells.admit("b").expect("another sandbox has its own places");
        slots.pop();
        let again = shells.admit("a").expect("a slot freed is taken again");
        assert_eq!(shells.live("a"), MAX_PER_SANDBOX);
        assert_eq!(shells.revoke("a"), MAX_PER_SANDBOX);
        timeout(Duration::from_secs(1), again.revoked()).await.expect("revocation reaches it");
        assert!(!other.revoked.is_cancelled(), "another sandbox's are untouched");
        drop(again);
        slots.pop();
        // Those admitted after a revocation are not revoked by it.
        let fresh = shells.admit("a").expect("a place freed by the revoked one");
        assert!(!fresh.revoked.is_cancelled());
        assert_eq!(shells.revoke("nothing"), 0);
    }
}
