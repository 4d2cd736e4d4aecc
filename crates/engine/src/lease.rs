//! Leases: permission to use a hot sandbox's agent, and the state the owner shares with them.
//!
//! The owner task alone changes a sandbox's thermal state; everyone else reads [`Shared`]
//! without queueing behind it. A lease is taken either from the owner (which wakes the sandbox
//! first) or, when the sandbox is already hot, directly through the gate (`try_lease`): the
//! gate is a small mutex held only to count leases, never across an `.await`. A pause or stop
//! closes the gate once no lease is out, so no lease can slip in between the owner's check and
//! the VM's pause.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent::AgentClient;
use tokio::sync::Notify;

use crate::error::EngineError;
use crate::thermal::Thermal;

/// The lease count and whether new leases may be taken without the owner.
#[derive(Debug, Default)]
struct Gate {
    /// Open while the sandbox is hot and no pause or stop is under way.
    open: bool,
    leases: usize,
    /// The agent client of the running VM (replaced on every cold wake).
    client: Option<Arc<AgentClient>>,
}

/// State shared between the owner, the registry and the leases.
#[derive(Debug)]
pub(crate) struct Shared {
    /// A mirror of the owner's power state for readers; only the owner writes it
    /// (`Owner::set_power`), so it has one source of truth.
    thermal: AtomicU8,
    /// Host-side activity: the last time a lease was taken or returned (ms since epoch).
    last_activity_ms: AtomicU64,
    gate: Mutex<Gate>,
    idle: Notify,
    /// Set by the engine when it removes the sandbox: an owner that then finds its queue closed
    /// (the destroy's caller went away before its message was sent) still cleans up.
    pub(crate) destroyed: AtomicBool,
    /// Why the owner task ended abnormally (it panicked), if it did.
    pub(crate) failure: Mutex<Option<String>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(thermal: Thermal) -> Self {
        let shared = Self {
            thermal: AtomicU8::new(0),
            last_activity_ms: AtomicU64::new(now_ms()),
            gate: Mutex::new(Gate::default()),
            idle: Notify::new(),
            destroyed: AtomicBool::new(false),
            failure: Mutex::new(None),
        };
        shared.set_thermal(thermal);
        shared
    }

    /// Only the owner calls this (and the supervisor of a failed owner).
    pub(crate) fn set_thermal(&self, t: Thermal) {
        let v = match t {
            Thermal::Hot => 0,
            Thermal::Warm => 1,
            Thermal::Cold => 2,
            Thermal::Failed => 3,
        };
        self.thermal.store(v, Ordering::SeqCst);
    }

    pub(crate) fn thermal(&self) -> Thermal {
        match self.thermal.load(Ordering::SeqCst) {
            0 => Thermal::Hot,
            1 => Thermal::Warm,
            2 => Thermal::Cold,
            _ => Thermal::Failed,
        }
    }

    pub(crate) fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::SeqCst);
    }

    pub(crate) fn last_activity(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.last_activity_ms.load(Ordering::SeqCst))
    }

    /// Guest operations in flight.
    pub(crate) fn leases(&self) -> usize {
        lock(&self.gate).leases
    }

    /// Opens the gate for a VM that just became hot with `client`.
    pub(crate) fn open(&self, client: &Arc<AgentClient>) {
        let mut gate = lock(&self.gate);
        gate.open = true;
        gate.client = Some(Arc::clone(client));
    }

    /// Closes the gate (the VM is no longer hot).
    pub(crate) fn close(&self) {
        let mut gate = lock(&self.gate);
        gate.open = false;
        gate.client = None;
    }

    /// A lease if the sandbox is hot and no pause or stop is under way; never waits.
    pub(crate) fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        let mut gate = lock(&self.gate);
        let client = gate.client.clone().filter(|_| gate.open)?;
        gate.leases += 1;
        drop(gate);
        self.touch();
        Some(Lease { shared: Arc::clone(self), client })
    }

    /// A lease handed out by the owner, which has just made the sandbox hot.
    pub(crate) fn lease_from_owner(self: &Arc<Self>, client: &Arc<AgentClient>) -> Lease {
        lock(&self.gate).leases += 1;
        self.touch();
        Lease { shared: Arc::clone(self), client: Arc::clone(client) }
    }

    /// Waits up to `wait` until no lease is out, then closes the gate so none is taken until
    /// the owner opens it again. Refuses with [`EngineError::Busy`] when leases remain.
    pub(crate) async fn close_when_idle(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let in_flight = {
                let mut gate = lock(&self.gate);
                if gate.leases == 0 {
                    gate.open = false;
                    return Ok(());
                }
                gate.leases
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(EngineError::Busy { id: id.to_owned(), in_flight });
            }
        }
    }

    /// Closes the gate whatever is in flight (daemon shutdown).
    pub(crate) fn close_now(&self) {
        lock(&self.gate).open = false;
    }

    /// Reopens the gate after a pause or stop that did not happen, if the VM is still hot.
    pub(crate) fn reopen_if_hot(&self) {
        if self.thermal() == Thermal::Hot {
            let mut gate = lock(&self.gate);
            gate.open = gate.client.is_some();
        }
    }
}

/// Permission to use a hot sandbox's agent. While any lease is out the sandbox is not paused
/// or stopped (unless the daemon shuts down); dropping it counts as activity.
#[derive(Debug)]
pub struct Lease {
    shared: Arc<Shared>,
    client: Arc<AgentClient>,
}

impl Lease {
    /// The sandbox's agent client.
    pub fn client(&self) -> &Arc<AgentClient> {
        &self.client
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.touch();
        let mut gate = lock(&self.shared.gate);
        gate.leases = gate.leases.saturating_sub(1);
        let idle = gate.leases == 0;
        drop(gate);
        if idle {
            self.shared.idle.notify_waiters();
        }
    }
}

/// A value that needs the sandbox hot for as long as it lives (a stream, a session): it
/// carries its lease.
#[derive(Debug)]
pub struct Leased<T> {
    inner: T,
    _lease: Lease,
}

impl<T> Leased<T> {
    pub(crate) fn new(inner: T, lease: Lease) -> Self {
        Self { inner, _lease: lease }
    }

    /// The value and its lease, for callers that take the value apart (a session split into
    /// reader and writer); the sandbox stays hot while the lease lives.
    pub fn into_parts(self) -> (T, Lease) {
        (self.inner, self._lease)
    }
}

impl<T> std::ops::Deref for Leased<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> std::ops::DerefMut for Leased<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

/// A leased byte stream (a forwarded port) is itself a byte stream.
impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Leased<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Leased<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the engine knows about a sandbox's use, read without waking or queueing.
#[derive(Debug, Clone)]
pub struct Activity {
    /// Thermal state.
    pub thermal: Thermal,
    /// Last host-side use (a lease taken or returned).
    pub last_host_activity: SystemTime,
    /// Guest operations in flight.
    pub in_flight: usize,
    /// The agent's own view (last exec or stdin, sessions); only when the sandbox is hot, and
    /// only asked by [`crate::Engine::activity`].
    pub agent: Option<agent::ActivityInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Arc<AgentClient> {
        Arc::new(AgentClient::new(
            agent::Endpoint::Unix {
                control: "/nonexistent".into(),
                forward: "/nonexistent".into(),
            },
            None,
        ))
    }

    #[tokio::test]
    async fn the_gate_admits_leases_only_while_hot_and_open() {
        let shared = Arc::new(Shared::new(Thermal::Cold));
        assert!(shared.try_lease().is_none(), "cold: no lease without the owner");
        shared.set_thermal(Thermal::Hot);
        shared.open(&client());
        let lease = shared.try_lease().expect("hot and open");
        assert_eq!(shared.leases(), 1);
        // A pause waits for the lease, then closes the gate.
        let busy = shared.close_when_idle("a", Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(busy.kind(), crate::ErrorKind::Busy);
        let waiter = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { shared.close_when_idle("a", Duration::from_secs(10)).await })
        };
        drop(lease);
        waiter.await.unwrap().unwrap();
        assert_eq!(shared.leases(), 0);
        assert!(shared.try_lease().is_none(), "closed while pausing");
        shared.reopen_if_hot();
        assert!(shared.try_lease().is_some(), "reopened after a pause that did not happen");
    }
}
