//! The public proxy's gate, the part the daemon's state holds: the route cache, the rate
//! limits, the wakes in flight and the counters. No routes and no state here (the handlers in
//! `public` use this; this uses neither them nor the state).

pub mod limits;
pub mod routes;
pub mod wakes;

use std::sync::atomic::{AtomicU64, Ordering};

/// The public proxy's state: routes, limits, wakes, counters.
#[derive(Debug, Default)]
pub struct Public {
    /// Alias -> sandbox port.
    pub routes: routes::Routes,
    /// Rate limits.
    pub limits: limits::Limiter,
    /// Wakes in flight.
    pub wakes: wakes::Wakes,
    pub(crate) counters: Counters,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) busy: AtomicU64,
}

/// What the public proxy has done since the daemon started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicStats {
    /// Requests for an alias.
    pub requests: u64,
    /// Answered 429.
    pub rate_limited: u64,
    /// Answered 503 (no wake slot).
    pub busy: u64,
    /// Wakes started (one per sandbox per burst of requests).
    pub wakes: u64,
    /// Routes remembered.
    pub routes_cached: usize,
}

impl Public {
    /// The counters.
    pub fn stats(&self) -> PublicStats {
        PublicStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            rate_limited: self.counters.rate_limited.load(Ordering::Relaxed),
            busy: self.counters.busy.load(Ordering::Relaxed),
            wakes: self.wakes.started(),
            routes_cached: self.routes.len(),
        }
    }
}
