//! The agent-wide "last activity" clock the host's thermal manager polls.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static LAST_ACTIVITY_UNIX: AtomicI64 = AtomicI64::new(0);

/// Current time in Unix seconds (0 if the clock is before 1970).
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Records activity now: exec requests, file reads and writes, and session input.
pub fn touch() {
    LAST_ACTIVITY_UNIX.store(now_unix(), Ordering::Relaxed);
}

/// Last recorded activity, Unix seconds; 0 if nothing has happened yet.
pub fn last() -> i64 {
    LAST_ACTIVITY_UNIX.load(Ordering::Relaxed)
}
