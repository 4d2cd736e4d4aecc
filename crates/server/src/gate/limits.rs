//! The public proxy's rate limits (v1's numbers, host.md 1.4): a global bucket, one per client
//! IP and one per alias, token buckets refilled continuously.
//!
//! Better than v1 in two ways: a request is charged to all its buckets or to none (v1 spent the
//! earlier tiers' tokens on a request a later tier refused), and the global and per-client tiers
//! are checked before the alias is looked up (v1 looked every unknown alias up in SQLite first,
//! so a flood of made-up aliases was never limited). The per-client and per-alias maps are
//! bounded LRUs: the least recently seen key is forgotten first (and starts again full, which
//! only ever errs towards letting a forgotten client through).
//!
//! `Bucket` is pure (the caller passes the time); the `Limiter` holds the maps under one
//! short `std` mutex, never across an `.await`.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

/// A bucket's shape: how many tokens it holds, how many come back per minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Capacity (a burst).
    pub burst: f64,
    /// Refill per minute.
    pub per_minute: f64,
}

/// v1: global burst 10,000, 10,000 per minute.
pub const GLOBAL: Rate = Rate { burst: 10_000.0, per_minute: 10_000.0 };
/// v1: per client IP burst 500, 1,500 per minute.
pub const PER_CLIENT: Rate = Rate { burst: 500.0, per_minute: 1_500.0 };
/// v1: per alias burst 2,000, 5,000 per minute.
pub const PER_ALIAS: Rate = Rate { burst: 2_000.0, per_minute: 5_000.0 };
/// Keys each map remembers (v1: 10,000).
pub const MAX_KEYS: usize = 10_000;

/// A token bucket.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self { tokens: rate.burst, at: now }
    }

    /// Refills for the time since the last look.
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_minute / 60.0).min(rate.burst);
        self.at = now;
    }

    /// Whether a token is there now (refilling first).
    fn ready(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= 1.0
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// Takes a token if one is there now (refilling first); else how long until one is (the
    /// API's per-user limits answer it as `Retry-After`).
    pub fn try_take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        if self.ready(rate, now) {
            self.take();
            return Ok(());
        }
        let per_sec = rate.per_minute / 60.0;
        if per_sec <= 0.0 {
            return Err(Duration::MAX);
        }
        Err(Duration::from_secs_f64(((1.0 - self.tokens) / per_sec).max(0.0)))
    }
}

/// The three tiers.
#[derive(Debug)]
pub struct Limiter {
    inner: Mutex<Tiers>,
    rates: [Rate; 3],
}

#[derive(Debug)]
struct Tiers {
    global: Bucket,
    clients: LruCache<IpAddr, Bucket>,
    aliases: LruCache<String, Bucket>,
}

/// Which tier refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Everyone together.
    Global,
    /// This client.
    Client,
    /// This alias.
    Alias,
}

impl Limiter {
    /// v1's rates.
    pub fn new() -> Self {
        Self::with_rates(GLOBAL, PER_CLIENT, PER_ALIAS, MAX_KEYS)
    }

    /// Other rates (tests).
    pub fn with_rates(global: Rate, client: Rate, alias: Rate, keys: usize) -> Self {
        let keys = NonZeroUsize::new(keys).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Mutex::new(Tiers {
                global: Bucket::full(global, Instant::now()),
                clients: LruCache::new(keys),
                aliases: LruCache::new(keys),
            }),
            rates: [global, client, alias],
        }
    }

    fn tiers(&self) -> std::sync::MutexGuard<'_, Tiers> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Before the alias is looked up: charges the global tier and the client's, both or
    /// neither.
    pub fn check_client(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Limited> {
        let [global_rate, client_rate, _] = self.rates;
        let mut tiers = self.tiers();
        let Tiers { global, clients, .. } = &mut *tiers;
        if !global.ready(global_rate, now) {
            return Err(Limited::Global);
        }
        if let Some(ip) = client {
            let bucket = clients.get_or_insert_mut(ip, || Bucket::full(client_rate, now));
            if !bucket.ready(client_rate, now) {
                return Err(Limited::Client);
            }
            bucket.take();
        }
        global.take();
        Ok(())
    }

    /// Once the alias is known to exist: charges its tier.
    pub fn check_alias(&self, alias: &str, now: Instant) -> Result<(), Limited> {
        let rate = self.rates[2];
        let mut tiers = self.tiers();
        let bucket = tiers.aliases.get_or_insert_mut(alias.to_owned(), || Bucket::full(rate, now));
        if !bucket.ready(rate, now) {
            return Err(Limited::Alias);
        }
        bucket.take();
        Ok(())
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a refused client should wait (v1: 1 s).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: Rate = Rate { burst: 2.0, per_minute: 60.0 };
    const BIG: Rate = Rate { burst: 1_000.0, per_minute: 60_000.0 };

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, n]))
    }

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let limiter = Limiter::with_rates(BIG, TINY, BIG, 8);
        assert_eq!(limiter.check_client(ip(1), t0), Ok(()));
        assert_eq!(limiter.check_client(ip(1), t0), Ok(()));
        assert_eq!(limiter.check_client(ip(1), t0), Err(Limited::Client));
        // Another client has its own bucket.
        assert_eq!(limiter.check_client(ip(2), t0), Ok(()));
        // One token a second comes back.
        assert_eq!(
            limiter.check_client(ip(1), t0 + Duration::from_millis(500)),
            Err(Limited::Client)
        );
        assert_eq!(limiter.check_client(ip(1), t0 + Duration::from_secs(1)), Ok(()));
        // Never more than the burst, however long the wait.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(limiter.check_client(ip(1), later), Ok(()));
        assert_eq!(limiter.check_client(ip(1), later), Ok(()));
        assert_eq!(limiter.check_client(ip(1), later), Err(Limited::Client));
    }

    #[test]
    fn a_refused_request_costs_the_other_tiers_nothing() {
        let t0 = Instant::now();
        // The global tier holds 3; client 1 is limited to 2.
        let limiter = Limiter::with_rates(Rate { burst: 3.0, per_minute: 0.0 }, TINY, BIG, 8);
        assert_eq!(limiter.check_client(ip(1), t0), Ok(()));
        assert_eq!(limiter.check_client(ip(1), t0), Ok(()));
        // Refused by its own tier: the global token stays for someone else (v1 spent it).
        assert_eq!(limiter.check_client(ip(1), t0), Err(Limited::Client));
        assert_eq!(limiter.check_client(ip(2), t0), Ok(()));
        assert_eq!(limiter.check_client(ip(3), t0), Err(Limited::Global));
    }

    #[test]
    fn aliases_are_limited_on_their_own_and_the_maps_stay_bounded() {
        let t0 = Instant::now();
        let limiter = Limiter::with_rates(BIG, BIG, TINY, 2);
        assert_eq!(limiter.check_alias("app", t0), Ok(()));
        assert_eq!(limiter.check_alias("app", t0), Ok(()));
        assert_eq!(limiter.check_alias("app", t0), Err(Limited::Alias));
        assert_eq!(limiter.check_alias("other", t0), Ok(()));
        // A third alias pushes the least recently used ("app") out: it starts full again.
        assert_eq!(limiter.check_alias("third", t0), Ok(()));
        assert_eq!(limiter.tiers().aliases.len(), 2);
        assert_eq!(limiter.check_alias("app", t0), Ok(()));
        // Unix-socket clients (no address) are charged to the global tier only.
        assert_eq!(limiter.check_client(None, t0), Ok(()));
        assert_eq!(limiter.tiers().clients.len(), 0);
    }

    #[test]
    fn v1s_numbers_fit_a_dev_servers_page_loads_and_cap_an_alias() {
        // v1's TestPublicRateLimiter_ViteDevReload / _LargeViteApp: a dev server's page of 150
        // modules reloads three times within the 500 burst; the fourth runs out; 20 s of
        // refill (1,500 a minute) give a whole load again.
        let t0 = Instant::now();
        let limiter = Limiter::new();
        let load =
            |at: Instant| (0..150).filter(|_| limiter.check_client(ip(9), at).is_ok()).count();
        assert_eq!([load(t0), load(t0), load(t0)], [150, 150, 150]);
        assert_eq!(load(t0), 50);
        assert_eq!(load(t0 + Duration::from_secs(20)), 150);
        // v1's TestPublicRateLimiter_PerAliasAggregate: many clients share one alias's 2,000.
        let passed = (0..3_000).filter(|_| limiter.check_alias("app", t0).is_ok()).count();
        assert_eq!(passed, 2_000);
        // v1's TestPublicRateLimiter_PerIPIsolation: 500 each, the 501st refused.
        let other = (0..501).filter(|_| limiter.check_client(ip(10), t0).is_ok()).count();
        assert_eq!(other, 500);
    }
}
