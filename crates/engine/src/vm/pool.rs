//! QEMUs started ahead for cold wakes (issue 24, item 5): when a sandbox goes cold, its next
//! QEMU is started at once, waiting with `-incoming defer` on the sandbox's own files (its RAM
//! file mapped, its disks opened and locked, its TAP on the bridge, its cgroup and jail), so the
//! wake that comes later skips the process start and the QMP handshake and only loads the
//! device state and runs it (`migrate-incoming`, `cont`).
//!
//! A QEMU's command line names the sandbox's files, so a pooled QEMU belongs to one sandbox: the
//! pool keeps at most `capacity` of them (the most recently suspended sandboxes; the oldest is
//! ended when a new one comes) for at most `ttl` each, counted against nobody's quota. Whoever
//! is about to touch a cold sandbox's files (a destroy, a boot from its disk) first calls
//! [`Pool::discard`], which returns once that QEMU is gone: the owner decides when
//! (`owner::ahead`). A pooled QEMU that died meanwhile is never used: the wake starts a QEMU as
//! it would without the pool.
//!
//! The pool holds no lock across an await: a QEMU being ended stays listed under `ending` until
//! it is gone, and a [`Pool::take`] or [`Pool::discard`] for that sandbox waits for it (its TAP
//! and its disks' locks are free only then).
//!
//! Restores of checkpoints (a create from a shape snapshot, a fork) could be served the same
//! way once their files are copy-on-write clones made ahead (a slot directory renamed to the
//! sandbox's); [`Incoming`] is where such a QEMU would be handed to `start_incoming`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::boot::{Started, start_qemu};
use crate::error::EngineError;
use crate::layout::SandboxFiles;
use crate::machine::BootSpec;
use crate::net::Netns;

/// How the pool is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Sandboxes that may have a QEMU waiting at once (0: no pool).
    pub capacity: usize,
    /// How long one may wait before it is ended.
    pub ttl: Duration,
}

/// One QEMU waiting for its sandbox's wake.
#[derive(Debug)]
struct Slot {
    /// The sandbox's QMP socket: the path the QEMU was started with (unique on the host).
    key: PathBuf,
    started: Started,
    at: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Oldest first.
    slots: Vec<Slot>,
    /// QEMUs being ended, by key; the sender drops once the QEMU and its cgroup are gone.
    ending: BTreeMap<PathBuf, watch::Receiver<()>>,
    closed: bool,
}

/// Pre-started QEMUs for cold wakes, at most `capacity` of them.
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    state: Mutex<State>,
}

/// What a restore starts from: a QEMU the pool started ahead, or a TAP to start one on.
#[derive(Debug)]
pub(super) enum Incoming {
    Pooled(Box<Started>),
    Tap(std::os::fd::OwnedFd),
}

impl From<std::os::fd::OwnedFd> for Incoming {
    fn from(tap: std::os::fd::OwnedFd) -> Self {
        Incoming::Tap(tap)
    }
}

impl Incoming {
    /// The sandbox's pooled QEMU if `pool` has one alive, else its TAP (opened on the bridge,
    /// the neighbour entry set) to start one on.
    pub(super) async fn take_or_open(
        pool: Option<&Pool>,
        ns: &Netns,
        spec: &BootSpec,
    ) -> Result<Self, EngineError> {
        ns.set_neighbour(&spec.bridge, spec.ip, spec.mac).await?;
        if let Some(pool) = pool
            && let Some(started) = pool.take(&spec.files).await
        {
            return Ok(Incoming::Pooled(Box::new(started)));
        }
        Ok(Incoming::Tap(ns.open_tap(&spec.tap, &spec.bridge).await?))
    }

    /// Whether the pool started this QEMU ahead.
    pub(super) fn is_pooled(&self) -> bool {
        matches!(self, Incoming::Pooled(_))
    }

    /// The QEMU waiting for the state: the pooled one, or one started now.
    pub(super) async fn start(self, spec: &BootSpec) -> Result<Started, EngineError> {
        match self {
            Incoming::Pooled(started) => Ok(*started),
            Incoming::Tap(tap) => start_qemu(spec, true, tap).await,
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// A pool (empty); with a capacity, a task ends QEMUs that waited longer than `ttl`.
    pub fn new(config: PoolConfig) -> Arc<Self> {
        let pool = Arc::new(Self { config, state: Mutex::new(State::default()) });
        if config.capacity > 0 {
            let weak = Arc::downgrade(&pool);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(expire(weak, config.ttl));
            }
        }
        pool
    }

    /// Starts the next QEMU of a sandbox that just went cold (its state saved in `spec.files`),
    /// ending the oldest pooled one beyond the capacity. Best effort: a QEMU that cannot start
    /// here is logged, and the wake starts one as it would without the pool.
    pub async fn prestart(&self, ns: &Netns, spec: &BootSpec) {
        if self.config.capacity == 0 || lock(&self.state).closed {
            return;
        }
        // At most one per sandbox (the owner never asks twice, but its files allow no second).
        self.discard(&spec.files).await;
        let t0 = Instant::now();
        let started = async {
            ns.set_neighbour(&spec.bridge, spec.ip, spec.mac).await?;
            let tap = ns.open_tap(&spec.tap, &spec.bridge).await?;
            start_qemu(spec, true, tap).await
        }
        .await;
        let started = match started {
            Ok(started) => started,
            Err(e) => {
                tracing::warn!(dir = %spec.files.dir().display(), "no QEMU started ahead: {}", e.report());
                return;
            }
        };
        tracing::debug!(
            dir = %spec.files.dir().display(), pid = started.qemu.pid, took = ?t0.elapsed(),
            rss_kib = ?started.qemu.rss_kib(), "QEMU started ahead for the next wake"
        );
        let key = spec.files.qmp_socket();
        let evicted = {
            let mut state = lock(&self.state);
            if state.closed {
                vec![Slot { key, started, at: t0 }]
            } else {
                state.slots.push(Slot { key, started, at: t0 });
                let over = state.slots.len().saturating_sub(self.config.capacity);
                state.slots.drain(..over).collect()
            }
        };
        self.end_all(evicted).await;
    }

    /// The pooled QEMU of the sandbox whose files are `files`, if one waits and still runs.
    /// One that died is ended (reaped, its cgroup removed) and `None` returned.
    pub(super) async fn take(&self, files: &SandboxFiles) -> Option<Started> {
        let mut slot = self.remove(&files.qmp_socket()).await?;
        let alive = slot.started.qemu.is_running() && !slot.started.qemu.qmp.is_closed();
        if alive {
            tracing::debug!(pid = slot.started.qemu.pid, waited = ?slot.at.elapsed(), "wake takes a pooled QEMU");
            return Some(slot.started);
        }
        tracing::warn!(dir = %files.dir().display(), "a pooled QEMU died while it waited: starting a new one");
        end(slot.started).await;
        None
    }

    /// Ends the sandbox's pooled QEMU, if any, and returns once it is gone: its TAP, its disks'
    /// locks and its RAM file mapping are free.
    pub async fn discard(&self, files: &SandboxFiles) {
        if let Some(slot) = self.remove(&files.qmp_socket()).await {
            end(slot.started).await;
        }
    }

    /// Ends every pooled QEMU and starts none after (engine shutdown).
    pub async fn close(&self) {
        let (slots, ending) = {
            let mut state = lock(&self.state);
            state.closed = true;
            (std::mem::take(&mut state.slots), state.ending.values().cloned().collect::<Vec<_>>())
        };
        self.end_all(slots).await;
        for mut gone in ending {
            while gone.changed().await.is_ok() {}
        }
    }

    /// Removes the slot of `key`, first waiting for one of its QEMUs being ended.
    async fn remove(&self, key: &Path) -> Option<Slot> {
        loop {
            let mut gone = {
                let mut state = lock(&self.state);
                match state.ending.get(key) {
                    Some(gone) => gone.clone(),
                    None => {
                        let at = state.slots.iter().position(|s| s.key == key)?;
                        return Some(state.slots.remove(at));
                    }
                }
            };
            while gone.changed().await.is_ok() {}
        }
    }

    /// Ends `slots`, each listed under `ending` (all of them before the first is ended) until
    /// it is gone.
    async fn end_all(&self, slots: Vec<Slot>) {
        let mut listed = Vec::with_capacity(slots.len());
        {
            let mut state = lock(&self.state);
            for slot in slots {
                let (tx, rx) = watch::channel(());
                state.ending.insert(slot.key.clone(), rx);
                listed.push((slot, tx));
            }
        }
        for (slot, tx) in listed {
            end(slot.started).await;
            lock(&self.state).ending.remove(&slot.key);
            drop(tx);
        }
    }

    /// Ends the QEMUs that waited longer than the TTL.
    async fn expire_old(&self) {
        let old = {
            let mut state = lock(&self.state);
            let ttl = self.config.ttl;
            let (old, keep) = std::mem::take(&mut state.slots).into_iter().partition(|s| s.at.elapsed() >= ttl);
            state.slots = keep;
            old
        };
        self.end_all(old).await;
    }
}

/// Kills a pooled QEMU, reaps it and removes its cgroup.
async fn end(mut started: Started) {
    if let Err(e) = started.qemu.kill().await {
        tracing::warn!(pid = started.qemu.pid, "ending a pooled QEMU: {e}");
    }
    if let Some(cgroup) = started.cgroup.take() {
        cgroup.release().await;
    }
}

/// Every second (or every `ttl`, if shorter), ends the QEMUs that waited too long, until the
/// pool is dropped.
async fn expire(pool: Weak<Pool>, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl.min(Duration::from_secs(1)).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.expire_old().await;
    }
}
