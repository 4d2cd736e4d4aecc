//! Every sandbox's egress policy as the engine holds it, keyed by guest address: what the
//! resolver asks when a guest sends a query, what the firewall (`egress_filter`) is told when a
//! sandbox comes, goes or changes policy, and the addresses the resolver pinned.
//!
//! Writes (admit, change, remove, pin) go to nftables one at a time, in the order they were
//! asked for (a one-permit queue), so a slow `nft` never lets an older policy overwrite a newer
//! one. The map itself is a `std` mutex held only for lookups and updates, never across an
//! `.await`.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bhatti_core::Policy;
use tokio::sync::Semaphore;

use crate::egress_filter::{self, SandboxRules};
use crate::error::EngineError;
use crate::net::Netns;

/// A pin a new answer would barely extend is left alone (saves an `nft` run per lookup of a
/// popular name): only one with less than this fraction of the new duration left is renewed.
const RENEW_BELOW: f64 = 0.5;
/// Addresses one sandbox may have pinned at once: a guest asking a wildcard zone that answers
/// every name with a new address must not grow the engine's memory and its nftables set
/// without end. An answer that would pass the bound is refused.
pub(crate) const MAX_PINS: usize = 4096;
/// Names remembered per pinned address (they decide whether a pin survives a policy change);
/// past the bound a name still pins, but is not remembered, so a later change that drops the
/// remembered names drops the pin too (it closes, never opens).
const MAX_NAMES_PER_PIN: usize = 16;

/// One sandbox's network policy and pins.
#[derive(Debug)]
struct SandboxNet {
    tap: String,
    policy: Arc<Policy>,
    generation: u32,
    /// Pinned address -> until when, and the names whose answers pinned it.
    pins: HashMap<Ipv4Addr, Pin>,
}

#[derive(Debug, Clone)]
struct Pin {
    until: Instant,
    names: BTreeSet<String>,
}

/// What the resolver needs to answer a guest.
#[derive(Debug, Clone)]
pub(crate) struct Asker {
    pub(crate) policy: Arc<Policy>,
    /// The policy's generation when asked: a pin for an older one is dropped.
    pub(crate) generation: u32,
}

/// All sandboxes' policies.
#[derive(Debug)]
pub(crate) struct Policies {
    ns: Netns,
    by_ip: Mutex<HashMap<Ipv4Addr, SandboxNet>>,
    next_generation: AtomicU32,
    writes: Semaphore,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Policies {
    pub(crate) fn new(ns: Netns) -> Self {
        // Generations mark conntrack entries, which outlive a restarted daemon: starting from
        // the clock keeps a new run's generations apart from the last run's.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Self {
            ns,
            by_ip: Mutex::new(HashMap::new()),
            next_generation: AtomicU32::new(start.max(1)),
            writes: Semaphore::new(1),
        }
    }

    fn generation(&self) -> u32 {
        // Never 0: conntrack's default mark would match a fresh chain.
        loop {
            let g = self.next_generation.fetch_add(1, Ordering::SeqCst);
            if g != 0 {
                return g;
            }
        }
    }

    /// The rules of sandboxes that exist, for a fresh install of the table.
    pub(crate) fn remember(&self, tap: &str, ip: Ipv4Addr, policy: Policy) -> SandboxRules {
        let generation = self.generation();
        let rules = SandboxRules { tap: tap.to_owned(), ip, policy: policy.clone(), generation };
        let net = SandboxNet {
            tap: tap.to_owned(),
            policy: Arc::new(policy),
            generation,
            pins: HashMap::new(),
        };
        lock(&self.by_ip).insert(ip, net);
        rules
    }

    /// Every sandbox's rules as they stand (for a fresh install of the table).
    pub(crate) fn all_rules(&self) -> Vec<SandboxRules> {
        lock(&self.by_ip)
            .iter()
            .map(|(ip, net)| SandboxRules {
                tap: net.tap.clone(),
                ip: *ip,
                policy: Policy::clone(&net.policy),
                generation: net.generation,
            })
            .collect()
    }

    /// Installs a new sandbox's chain (no pins) before its QEMU starts.
    pub(crate) async fn admit(
        &self,
        tap: &str,
        ip: Ipv4Addr,
        policy: Policy,
    ) -> Result<(), EngineError> {
        let _turn = self.writes.acquire().await.map_err(|_| EngineError::ShuttingDown)?;
        let rules = self.remember(tap, ip, policy);
        let result = egress_filter::admit(&self.ns, &rules, false).await;
        if result.is_err() {
            lock(&self.by_ip).remove(&ip);
        }
        result
    }

    /// Replaces the policy of the sandbox at `ip`: pins whose names the new policy still
    /// allows stay, the others go, and connections the old policy accepted are judged anew.
    pub(crate) async fn change(&self, ip: Ipv4Addr, policy: Policy) -> Result<(), EngineError> {
        let _turn = self.writes.acquire().await.map_err(|_| EngineError::ShuttingDown)?;
        let generation = self.generation();
        let (tap, gone) = {
            let map = lock(&self.by_ip);
            let Some(net) = map.get(&ip) else { return Ok(()) };
            let gone: Vec<Ipv4Addr> = net
                .pins
                .iter()
                .filter(|(_, pin)| !still_allowed(&policy, pin))
                .map(|(addr, _)| *addr)
                .collect();
            (net.tap.clone(), gone)
        };
        let rules = SandboxRules { tap: tap.clone(), ip, policy: policy.clone(), generation };
        egress_filter::pin(&self.ns, &tap, &[], &gone).await?;
        egress_filter::admit(&self.ns, &rules, true).await?;
        if let Some(net) = lock(&self.by_ip).get_mut(&ip) {
            for addr in &gone {
                net.pins.remove(addr);
            }
            net.policy = Arc::new(policy);
            net.generation = generation;
        }
        Ok(())
    }

    /// Removes the sandbox at `ip` (its chain, its pins).
    pub(crate) async fn remove(&self, tap: &str, ip: Ipv4Addr) -> Result<(), EngineError> {
        let _turn = self.writes.acquire().await.map_err(|_| EngineError::ShuttingDown)?;
        lock(&self.by_ip).remove(&ip);
        egress_filter::remove(&self.ns, tap, ip).await
    }

    /// The policy of the guest at `ip`, if any sandbox has that address.
    pub(crate) fn asker(&self, ip: Ipv4Addr) -> Option<Asker> {
        lock(&self.by_ip)
            .get(&ip)
            .map(|net| Asker { policy: Arc::clone(&net.policy), generation: net.generation })
    }

    /// The policy of the guest at `ip`.
    pub(crate) fn policy(&self, ip: Ipv4Addr) -> Option<Policy> {
        lock(&self.by_ip).get(&ip).map(|net| Policy::clone(&net.policy))
    }

    /// Pins `addrs` (answered for `name`) for the guest at `ip`, for the given durations, if
    /// its policy is still the one `asker` saw and the sandbox stays within [`MAX_PINS`].
    /// Returns false when it did not pin (the caller refuses the answer).
    pub(crate) async fn pin(
        &self,
        ip: Ipv4Addr,
        asker: &Asker,
        name: &str,
        addrs: &[(Ipv4Addr, Duration)],
    ) -> Result<bool, EngineError> {
        let _turn = self.writes.acquire().await.map_err(|_| EngineError::ShuttingDown)?;
        let now = Instant::now();
        let (tap, renew) = {
            let mut map = lock(&self.by_ip);
            let Some(net) = map.get_mut(&ip) else { return Ok(false) };
            if net.generation != asker.generation {
                return Ok(false);
            }
            net.pins.retain(|_, pin| pin.until > now);
            let new = addrs.iter().filter(|(addr, _)| !net.pins.contains_key(addr)).count();
            if net.pins.len() + new > MAX_PINS {
                tracing::warn!(
                    sandbox_ip = %ip, name,
                    "resolver: the sandbox has {MAX_PINS} addresses pinned; answer refused"
                );
                return Ok(false);
            }
            let mut renew = Vec::new();
            for (addr, ttl) in addrs {
                let pin = net
                    .pins
                    .entry(*addr)
                    .or_insert_with(|| Pin { until: now, names: BTreeSet::new() });
                if pin.names.len() < MAX_NAMES_PER_PIN {
                    pin.names.insert(name.to_owned());
                }
                let left = pin.until.saturating_duration_since(now);
                if left.as_secs_f64() < ttl.as_secs_f64() * RENEW_BELOW {
                    renew.push((*addr, *ttl));
                }
            }
            (net.tap.clone(), renew)
        };
        egress_filter::pin(&self.ns, &tap, &renew, &[]).await?;
        if let Some(net) = lock(&self.by_ip).get_mut(&ip) {
            for (addr, ttl) in &renew {
                if let Some(pin) = net.pins.get_mut(addr) {
                    pin.until = now + *ttl;
                }
            }
        }
        Ok(true)
    }
}

/// Whether a pin may stay under `policy`: one of the names that pinned it is still allowed.
fn still_allowed(policy: &Policy, pin: &Pin) -> bool {
    policy.pins()
        && pin
            .names
            .iter()
            .any(|name| policy.dns(name) == bhatti_core::egress::DnsVerdict::ForwardAndPin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bhatti_core::{NetPolicy, Posture};

    fn policy(default: Posture, hosts: &[&str]) -> Policy {
        let hosts = hosts.iter().map(|s| s.to_string()).collect();
        NetPolicy { default, allow_hosts: hosts, allow_cidrs: vec![] }.check().unwrap()
    }

    fn pin(names: &[&str]) -> Pin {
        Pin { until: Instant::now(), names: names.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn a_pin_survives_a_change_only_while_one_of_its_names_is_allowed() {
        let rows: &[(&str, Policy, &[&str], bool)] = &[
            ("still allowed", policy(Posture::Deny, &["a.test"]), &["a.test"], true),
            (
                "one of two still allowed",
                policy(Posture::Deny, &["b.test"]),
                &["a.test", "b.test"],
                true,
            ),
            ("by a wildcard now", policy(Posture::Deny, &["*.test"]), &["a.test"], true),
            ("no longer allowed", policy(Posture::Deny, &["b.test"]), &["a.test"], false),
            ("deny without rules", policy(Posture::Deny, &[]), &["a.test"], false),
            // Under public nothing is pinned: the posture opens public addresses by itself.
            ("public needs no pins", policy(Posture::Public, &["a.test"]), &["a.test"], false),
        ];
        for (row, policy, names, want) in rows {
            assert_eq!(still_allowed(policy, &pin(names)), *want, "{row}");
        }
    }
}
