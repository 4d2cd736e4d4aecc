//! Leases: permission to use a hot sandbox's agent, and the state the owner shares with them.
//!
//! The owner task alone changes a sandbox's thermal state; everyone else reads [`Shared`]
//! without queueing behind it. A lease is taken either from the owner (which wakes the sandbox
//! first) or, when the sandbox is already hot, directly through the gate (`try_lease`): the
//! gate is a small mutex held only to count leases, never across an `.await`. A pause or stop
//! closes the gate once no lease is out, so no lease can slip in between the owner's check and
//! the VM's pause.
//!
//! A sandbox that goes away under its leases (its QEMU dies, it is destroyed, a user stops it,
//! the daemon shuts down) *cuts* them: every lease out sees the reason at once through a watch
//! channel, and the engine's guest operations, streams and sessions select on it, so they end
//! with [`EngineError::Gone`] instead of waiting on a guest that will never answer (a TCP
//! connection to a dead guest sees no FIN or RST, only its deadline). Each cut starts a new
//! channel: leases taken after it (a wake after a stop) are not cut by an old reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent::{AgentClient, ExecEvent, ExecStream};
use tokio::sync::{Notify, watch};

use crate::error::{EngineError, GoneReason};
use crate::thermal::Thermal;

/// The lease count and whether new leases may be taken without the owner.
#[derive(Debug)]
struct Gate {
    /// Open while the sandbox is hot and no pause or stop is under way.
    open: bool,
    leases: usize,
    /// The agent client of the running VM (replaced on every cold wake).
    client: Option<Arc<AgentClient>>,
    /// Where a cut is announced to the leases out; replaced by a fresh one at each cut.
    cut: watch::Sender<Option<GoneReason>>,
}

impl Gate {
    fn new() -> Self {
        Self { open: false, leases: 0, client: None, cut: watch::Sender::new(None) }
    }
}

/// State shared between the owner, the registry and the leases.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The sandbox's ID (for the errors of cut leases).
    id: String,
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
    pub(crate) fn new(id: &str, thermal: Thermal) -> Self {
        let shared = Self {
            id: id.to_owned(),
            thermal: AtomicU8::new(0),
            last_activity_ms: AtomicU64::new(now_ms()),
            gate: Mutex::new(Gate::new()),
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
        let cut = gate.cut.subscribe();
        drop(gate);
        self.touch();
        Some(Lease { shared: Arc::clone(self), client, cut })
    }

    /// A lease handed out by the owner, which has just made the sandbox hot.
    pub(crate) fn lease_from_owner(self: &Arc<Self>, client: &Arc<AgentClient>) -> Lease {
        let mut gate = lock(&self.gate);
        gate.leases += 1;
        let cut = gate.cut.subscribe();
        drop(gate);
        self.touch();
        Lease { shared: Arc::clone(self), client: Arc::clone(client), cut }
    }

    /// Cuts every lease out: each is told `reason` at once (what its operation ends with) and
    /// the gate closes, so nothing new is admitted until the owner opens it again. The leases
    /// still count until their holders drop them. Leases taken later listen to a fresh
    /// channel. Idempotent enough: a second cut tells only leases taken since the first.
    pub(crate) fn cut(&self, reason: GoneReason) {
        let told = {
            let mut gate = lock(&self.gate);
            gate.open = false;
            std::mem::replace(&mut gate.cut, watch::Sender::new(None))
        };
        // Outside the lock: waking the holders runs no code of theirs, but keep it short.
        told.send_replace(Some(reason));
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
    /// Says why, once the sandbox went away under this lease.
    cut: watch::Receiver<Option<GoneReason>>,
}

impl Lease {
    /// The sandbox's agent client.
    pub fn client(&self) -> &Arc<AgentClient> {
        &self.client
    }

    /// Resolves once this lease is cut (the sandbox crashed, was destroyed, was stopped by a
    /// user, or the daemon shuts down) with the error the operation should end with
    /// ([`EngineError::Gone`]); pending for as long as the lease is good. Owned (`'static`), so
    /// a caller can select on it beside a borrow of the lease's stream or session.
    pub fn ended(&self) -> impl Future<Output = EngineError> + Send + 'static {
        let mut cut = self.cut.clone();
        let id = self.shared.id.clone();
        async move {
            let reason = match cut.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone(),
                // The sender went without a word: only a dropped engine does that, and then
                // nothing will cut this lease.
                Err(_) => None,
            };
            match reason {
                Some(reason) => EngineError::Gone { id, reason },
                None => std::future::pending().await,
            }
        }
    }

    /// Why this lease was cut, if it was.
    pub fn cut_reason(&self) -> Option<GoneReason> {
        self.cut.borrow().clone()
    }

    /// Runs a guest operation unless the lease is cut first: then the operation is dropped
    /// (its connection closes) and the cut's error returned at once.
    pub(crate) async fn run<T, E>(
        &self,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<T, EngineError>
    where
        E: Into<EngineError>,
    {
        tokio::select! {
            // A lease cut before the operation began fails it without touching the guest.
            biased;
            gone = self.ended() => Err(gone),
            done = op => done.map_err(Into::into),
        }
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
/// carries its lease. A cut lease ends it: [`Leased::next`] of an exec stream answers
/// [`EngineError::Gone`], a forwarded byte stream fails its reads and writes; a session's
/// holder selects on [`Lease::ended`] (see [`Leased::into_parts`]).
pub struct Leased<T> {
    inner: T,
    lease: Lease,
    /// The cut as a byte stream's reads and writes poll it: one each, so a reader and a writer
    /// in two tasks (a split stream) each keep their own waker (see [`Cut`]).
    read_cut: Cut,
    write_cut: Cut,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Leased<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leased").field("inner", &self.inner).field("lease", &self.lease).finish()
    }
}

impl<T> Leased<T> {
    pub(crate) fn new(inner: T, lease: Lease) -> Self {
        Self { inner, lease, read_cut: Cut::Waiting(None), write_cut: Cut::Waiting(None) }
    }

    /// The value and its lease, for callers that take the value apart (a session split into
    /// reader and writer); the sandbox stays hot while the lease lives, and the caller selects
    /// on [`Lease::ended`] to learn that the sandbox went away.
    pub fn into_parts(self) -> (T, Lease) {
        (self.inner, self.lease)
    }

    /// The lease this value carries.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

/// The cut's error as an IO error, if `lease` was cut; registers the waker otherwise.
fn poll_cut(cut: &mut Cut, lease: &Lease, cx: &mut Context<'_>) -> Option<std::io::Error> {
    let aborted = |message: &str| {
        Some(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, message.to_owned()))
    };
    match cut {
        Cut::Done(message) => aborted(message),
        Cut::Waiting(ended) => {
            let ended = ended.get_or_insert_with(|| Mutex::new(Box::pin(lease.ended())));
            let ended = ended.get_mut().unwrap_or_else(|e| e.into_inner());
            match ended.as_mut().poll(cx) {
                Poll::Pending => None,
                Poll::Ready(gone) => {
                    let message = gone.to_string();
                    *cut = Cut::Done(message.clone());
                    aborted(&message)
                }
            }
        }
    }
}

/// A byte stream's view of its lease's cut, polled from `poll_read` or `poll_write`. The future is
/// boxed once, on first poll, and kept in a `Mutex` only so that `Leased` stays `Sync` (it is
/// reached through `&mut self`, never locked); a finished one is replaced by its message, as a
/// finished future must not be polled again.
enum Cut {
    Waiting(Option<Mutex<Pin<Box<dyn Future<Output = EngineError> + Send>>>>),
    Done(String),
}

impl Leased<ExecStream> {
    /// The next event of the exec; `None` after its exit or an error. A cut lease ends it at
    /// once with [`EngineError::Gone`] (the exec's connection closes when this is dropped).
    /// Cancel-safe, as the agent's own `next`.
    pub async fn next(&mut self) -> Option<Result<ExecEvent, EngineError>> {
        tokio::select! {
            biased;
            gone = self.lease.ended() => Some(Err(gone)),
            event = self.inner.next() => event.map(|e| e.map_err(EngineError::from)),
        }
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
        // A dead guest never answers: without the cut a read would wait forever.
        let this = &mut *self;
        if let Some(gone) = poll_cut(&mut this.read_cut, &this.lease, cx) {
            return Poll::Ready(Err(gone));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Leased<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if let Some(gone) = poll_cut(&mut this.write_cut, &this.lease, cx) {
            return Poll::Ready(Err(gone));
        }
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
        let shared = Arc::new(Shared::new("a", Thermal::Cold));
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

    #[tokio::test]
    async fn a_cut_tells_every_lease_out_and_none_taken_later() {
        let shared = Arc::new(Shared::new("a", Thermal::Hot));
        shared.open(&client());
        let (first, second) = (shared.try_lease().unwrap(), shared.try_lease().unwrap());
        let pending = first.run(std::future::pending::<Result<(), EngineError>>());
        let waiting = tokio::spawn(second.ended());
        // Not cut: an operation runs as long as it takes.
        assert!(tokio::time::timeout(Duration::from_millis(20), first.ended()).await.is_err());
        shared.cut(GoneReason::Destroyed);
        let gone = tokio::time::timeout(Duration::from_secs(5), pending).await.unwrap();
        assert!(matches!(gone, Err(EngineError::Gone { reason: GoneReason::Destroyed, .. })));
        let gone = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(gone.kind(), crate::ErrorKind::Gone);
        assert_eq!(first.cut_reason(), Some(GoneReason::Destroyed));
        assert!(shared.try_lease().is_none(), "a cut closes the gate");
        // Cut leases still count until their holders let go.
        assert_eq!(shared.leases(), 2);
        drop((first, second));
        // The owner opens the gate again (a wake after a stop): new leases are not cut.
        shared.open(&client());
        let later = shared.try_lease().unwrap();
        assert_eq!(later.cut_reason(), None);
        let ok = later.run(async { Ok::<_, EngineError>(7) }).await.unwrap();
        assert_eq!(ok, 7);
    }
}
