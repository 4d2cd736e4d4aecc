//! The API's per-user rate limits (host.md 1.4): one token bucket per user and class, v1's
//! numbers, the public proxy's `Bucket` (`gate::limits`). The classifier and the buckets are
//! pure (the caller passes the method, the path and the time); the middleware that applies
//! them is `rate_limit.rs`. No state, no handlers here.
//!
//! **Classes** (v1's code, not its docs: host.md calls out that v1's bench README put destroy
//! with creates and file reads with execs, while the classifier and its test make both "read";
//! we follow the code):
//! - create: `POST /sandboxes`; also `POST /snapshots/:name/resume` (ours: it boots a VM too);
//! - exec: `POST /sandboxes/:id/exec`, `PUT /sandboxes/:id/files`, `/sandboxes/:id/ws` and
//!   `/sandboxes/:id/exec/ws`;
//! - read: everything else, `DELETE /sandboxes/:id`, `GET .../files` and `POST /secrets` included.
//!
//! v1 matched substrings (`/exec`, `/files`, `/ws` anywhere in the path), so a sandbox named
//! `exec-box` or a proxied path ending in `/ws` changed class; we match the route's segments.
//!
//! **The map** holds at most `max_users` users (v1: 10,000); when full the least recently seen
//! is forgotten (v1 scanned for the oldest last access: the same choice), and comes back with
//! full buckets, which only ever errs towards letting a forgotten user through.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::gate::limits::Bucket;
pub use crate::gate::limits::Rate;

/// A request's rate class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Creating sandboxes.
    Create,
    /// Running things in a guest.
    Exec,
    /// Everything else.
    Read,
}

impl Class {
    fn index(self) -> usize {
        match self {
            Class::Create => 0,
            Class::Exec => 1,
            Class::Read => 2,
        }
    }

    /// The name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Create => "create",
            Class::Exec => "exec",
            Class::Read => "read",
        }
    }
}

/// The class of a request (pure).
pub fn classify(method: &str, path: &str) -> Class {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    match (method, segments.as_slice()) {
        ("POST", ["sandboxes"])
        | ("POST", ["snapshots", _, "resume"])
        | ("POST", ["sandboxes", _, "fork"]) => Class::Create,
        ("POST", ["sandboxes", _, "exec"])
        | ("PUT", ["sandboxes", _, "files"])
        | (_, ["sandboxes", _, "ws"])
        | (_, ["sandboxes", _, "exec", "ws"]) => Class::Exec,
        _ => Class::Read,
    }
}

/// The three classes' buckets and the map's bound (config keys `rate_limits.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Creates: v1 burst 10, 30 a minute.
    pub create: Rate,
    /// Execs: v1 burst 30, 600 a minute.
    pub exec: Rate,
    /// Reads: v1 burst 60, 1,200 a minute.
    pub read: Rate,
    /// Users remembered (v1: 10,000).
    pub max_users: usize,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            create: Rate { burst: 10.0, per_minute: 30.0 },
            exec: Rate { burst: 30.0, per_minute: 600.0 },
            read: Rate { burst: 60.0, per_minute: 1200.0 },
            max_users: 10_000,
        }
    }
}

impl Rates {
    fn of(&self, class: Class) -> Rate {
        match class {
            Class::Create => self.create,
            Class::Exec => self.exec,
            Class::Read => self.read,
        }
    }
}

/// Seconds a refused client waits (`Retry-After`): the time to the next token, rounded up, at
/// least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs().saturating_add(u64::from(wait.subsec_nanos() > 0));
    secs.clamp(1, 24 * 3600)
}

/// Per-user buckets.
#[derive(Debug)]
pub struct UserLimits {
    rates: Rates,
    users: Mutex<LruCache<String, [Bucket; 3]>>,
    refused: AtomicU64,
}

impl Default for UserLimits {
    fn default() -> Self {
        Self::new(Rates::default())
    }
}

impl UserLimits {
    /// Buckets of these rates.
    pub fn new(rates: Rates) -> Self {
        let cap = NonZeroUsize::new(rates.max_users).unwrap_or(NonZeroUsize::MIN);
        Self { rates, users: Mutex::new(LruCache::new(cap)), refused: AtomicU64::new(0) }
    }

    /// Charges one request of `class` to `user`; refused: how long until a token is there.
    pub fn check(&self, user: &str, class: Class, now: Instant) -> Result<(), Duration> {
        let rates = self.rates;
        let mut users = self.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let buckets = users.get_or_insert_mut(user.to_owned(), || {
            [
                Bucket::full(rates.create, now),
                Bucket::full(rates.exec, now),
                Bucket::full(rates.read, now),
            ]
        });
        let got = buckets[class.index()].try_take(rates.of(class), now);
        drop(users);
        if got.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        got
    }

    /// Requests refused since the daemon started (for metrics).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Users remembered now.
    pub fn users(&self) -> usize {
        self.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_table() {
        // v1's TestClassifyRequest rows, then ours.
        let table = [
            ("create", "POST", "/sandboxes", Class::Create),
            ("create, trailing slash", "POST", "/sandboxes/", Class::Create),
            ("list", "GET", "/sandboxes", Class::Read),
            ("destroy is read (v1's code, not its docs)", "DELETE", "/sandboxes/abc", Class::Read),
            ("exec", "POST", "/sandboxes/abc/exec", Class::Exec),
            ("file write", "PUT", "/sandboxes/abc/files", Class::Exec),
            ("file read is read (v1's code)", "GET", "/sandboxes/abc/files", Class::Read),
            ("file stat", "HEAD", "/sandboxes/abc/files", Class::Read),
            ("tty socket", "GET", "/sandboxes/abc/ws", Class::Exec),
            ("piped socket", "GET", "/sandboxes/abc/exec/ws", Class::Exec),
            ("secret set is read (v1)", "POST", "/secrets", Class::Read),
            ("templates", "POST", "/templates", Class::Read),
            ("publish", "POST", "/sandboxes/abc/publish", Class::Read),
            ("stop", "POST", "/sandboxes/abc/stop", Class::Read),
            ("snapshot resume boots a VM (ours)", "POST", "/snapshots/s1/resume", Class::Create),
            ("a fork makes sandboxes (ours)", "POST", "/sandboxes/abc/fork", Class::Create),
            (
                "a sandbox named exec-box (v1: exec)",
                "POST",
                "/sandboxes/exec-box/stop",
                Class::Read,
            ),
            ("a sandbox named ws", "GET", "/sandboxes/ws", Class::Read),
            ("a proxied /ws path (v1: exec)", "GET", "/sandboxes/abc/proxy/80/ws", Class::Read),
            ("exec by GET is not an exec", "GET", "/sandboxes/abc/exec", Class::Read),
            ("double slashes", "POST", "//sandboxes//abc//exec", Class::Exec),
        ];
        for (name, method, path, want) in table {
            assert_eq!(classify(method, path), want, "{name}");
        }
    }

    #[test]
    fn retry_after_table() {
        let table = [
            ("no wait still says 1", Duration::ZERO, 1),
            ("under a second", Duration::from_millis(300), 1),
            ("a second exactly", Duration::from_secs(1), 1),
            ("rounded up", Duration::from_millis(1001), 2),
            ("two seconds (create at 30/min)", Duration::from_secs(2), 2),
            ("never refilling is capped", Duration::MAX, 24 * 3600),
        ];
        for (name, wait, want) in table {
            assert_eq!(retry_after_secs(wait), want, "{name}");
        }
    }

    #[test]
    fn v1s_numbers_per_user_and_class() {
        let t0 = Instant::now();
        let limits = UserLimits::default();
        let run = |user: &str, class: Class, n: usize, at: Instant| {
            (0..n).filter(|_| limits.check(user, class, at).is_ok()).count()
        };
        // v1's TestRateLimiting: rapid creates hit the limit after the burst of 10.
        assert_eq!(run("u1", Class::Create, 15, t0), 10);
        // Refused: the next token comes in 2 s (30 a minute).
        let wait = limits.check("u1", Class::Create, t0).unwrap_err();
        assert_eq!(retry_after_secs(wait), 2);
        // Other classes and other users have their own buckets.
        assert_eq!(run("u1", Class::Exec, 40, t0), 30);
        assert_eq!(run("u1", Class::Read, 100, t0), 60);
        assert_eq!(run("u2", Class::Create, 10, t0), 10);
        // Refill: 600 execs a minute is 10 a second.
        assert_eq!(run("u1", Class::Exec, 40, t0 + Duration::from_secs(1)), 10);
        assert_eq!(run("u1", Class::Create, 5, t0 + Duration::from_secs(2)), 1);
        assert!(limits.refused() >= 5 + 1 + 10 + 40);
    }

    #[test]
    fn the_map_is_bounded_and_forgets_the_least_recent() {
        let t0 = Instant::now();
        let tiny = Rate { burst: 1.0, per_minute: 0.0 };
        let limits = UserLimits::new(Rates { create: tiny, exec: tiny, read: tiny, max_users: 3 });
        for u in ["a", "b", "c"] {
            assert!(limits.check(u, Class::Read, t0).is_ok());
        }
        assert!(limits.check("a", Class::Read, t0).is_err(), "a is spent (and now most recent)");
        // d pushes out b, the least recently seen; a (just seen) stays spent.
        assert!(limits.check("d", Class::Read, t0).is_ok());
        assert_eq!(limits.users(), 3);
        assert!(limits.check("a", Class::Read, t0).is_err());
        assert!(limits.check("b", Class::Read, t0).is_ok(), "b was forgotten: full again");
        for n in 0..1000 {
            let _ = limits.check(&format!("flood{n}"), Class::Read, t0);
        }
        assert_eq!(limits.users(), 3);
    }
}
