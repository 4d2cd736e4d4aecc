//! One sandbox's owner: a task that alone holds the VM and changes its thermal state.
//!
//! Every thermal change (pause, stop, wake, checkpoint, destroy) is a message to the owner, which
//! handles them one at a time, so two wakes never start two QEMUs and a stop never runs beside a
//! restore. Guest operations do not run inside the owner: they take a [`Lease`] (the owner makes
//! the sandbox hot first) and talk to the agent themselves, so a long exec never blocks the
//! owner. A pause or stop waits, up to a deadline the caller gives, until no lease is out, and
//! refuses with [`EngineError::Busy`] otherwise: a running exec is never frozen under its caller
//! by the thermal manager. (A checkpoint does pause the guest for as long as its files take to
//! copy, leases or not: the guest sees a pause, never an error, as with v1.)
//! No lock is held across an `.await`; the counters the leases share are atomics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent::{ActivityInfo, AgentClient};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::error::EngineError;
use crate::net::Netns;
use crate::state::{RECORD_VERSION, SandboxRecord, Thermal};
use crate::vm::{self, BootSpec, Suspended, Vm};
use crate::volume::VolumeMount;

/// The device-state file of a cold sandbox, beside its RAM file.
pub const STATE_FILE: &str = "state";

/// State shared between the owner, its handle and the leases; atomics only.
#[derive(Debug)]
pub(crate) struct Shared {
    thermal: AtomicU8,
    /// Host-side activity cache: the last time a lease was taken or returned (ms since epoch).
    last_activity_ms: AtomicU64,
    leases: AtomicUsize,
    idle: Notify,
    /// Set by the engine when it removes the sandbox: an owner that then finds its queue closed
    /// (the destroy's caller went away before its message was sent) still cleans up.
    pub(crate) destroyed: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Shared {
    fn new(thermal: Thermal) -> Self {
        let shared = Self {
            thermal: AtomicU8::new(0),
            last_activity_ms: AtomicU64::new(now_ms()),
            leases: AtomicUsize::new(0),
            idle: Notify::new(),
            destroyed: std::sync::atomic::AtomicBool::new(false),
        };
        shared.set_thermal(thermal);
        shared
    }

    fn set_thermal(&self, t: Thermal) {
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

    fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::SeqCst);
    }

    pub(crate) fn last_activity(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.last_activity_ms.load(Ordering::SeqCst))
    }
}

/// Permission to use a hot sandbox's agent. While any lease is out the sandbox is not paused
/// or stopped; dropping it counts as activity.
#[derive(Debug)]
pub struct Lease {
    shared: Arc<Shared>,
    client: Arc<AgentClient>,
}

impl Lease {
    fn new(shared: &Arc<Shared>, client: &Arc<AgentClient>) -> Self {
        shared.leases.fetch_add(1, Ordering::SeqCst);
        shared.touch();
        Self { shared: Arc::clone(shared), client: Arc::clone(client) }
    }

    /// The sandbox's agent client.
    pub fn client(&self) -> &Arc<AgentClient> {
        &self.client
    }
}

impl<T> Leased<T> {
    /// The value and its lease, for callers that take the value apart (a session split into
    /// reader and writer); the sandbox stays hot while the lease lives.
    pub fn into_parts(self) -> (T, Lease) {
        (self.inner, self._lease)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.touch();
        if self.shared.leases.fetch_sub(1, Ordering::SeqCst) == 1 {
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

/// What the engine knows about a sandbox's use.
#[derive(Debug, Clone)]
pub struct Activity {
    /// Thermal state.
    pub thermal: Thermal,
    /// Last host-side use (a lease taken or returned).
    pub last_host_activity: SystemTime,
    /// Guest operations in flight.
    pub in_flight: usize,
    /// The agent's own view (last exec or stdin, sessions); only asked when hot, never wakes.
    pub agent: Option<ActivityInfo>,
}

/// A message to the owner.
pub(crate) enum Command {
    Lease(oneshot::Sender<Result<Lease, EngineError>>),
    Pause {
        wait: Duration,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Stop {
        wait: Duration,
        /// Stop even if operations are still in flight after `wait` (daemon shutdown).
        force: bool,
        reply: oneshot::Sender<Result<Option<Suspended>, EngineError>>,
    },
    Start {
        /// Discard the saved memory (if any) and boot from the disk overlay.
        from_disk: bool,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Activity(oneshot::Sender<Activity>),
    Checkpoint {
        dest: PathBuf,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Export(oneshot::Sender<SandboxRecord>),
    Destroy(oneshot::Sender<()>),
}

/// Where the VM is.
enum Power {
    Hot(Vm),
    Warm(Vm),
    /// QEMU gone. With `snapshot`, device state and RAM are on disk and a wake restores them;
    /// without, a wake boots from the disk overlay.
    Cold {
        snapshot: bool,
    },
    /// QEMU ended on its own (killed, crashed); an explicit start boots from the disk.
    Failed(String),
}

/// What a destroyed sandbox gives back to the engine: its address and its volume claims.
#[derive(Debug, Clone)]
pub(crate) struct Giveback {
    pub(crate) pool: Arc<std::sync::Mutex<crate::ippool::IpPool>>,
    pub(crate) claims: Arc<std::sync::Mutex<crate::volume::Claims>>,
    pub(crate) bridge: String,
}

/// The owner task's state.
pub(crate) struct Owner {
    pub(crate) name: String,
    pub(crate) ns: Netns,
    pub(crate) spec: BootSpec,
    pub(crate) client: Arc<AgentClient>,
    power: Power,
    shared: Arc<Shared>,
    boots: Arc<Semaphore>,
    giveback: Giveback,
}

/// The handle the registry keeps.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Command>,
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    /// Sends a command and waits for its answer.
    pub(crate) async fn ask<T>(
        &self,
        name: &str,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        let gone = || EngineError::NotFound(name.to_owned());
        self.tx.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// Starts the owner of a sandbox that is hot (`vm` given) or cold (files on disk).
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    name: String,
    ns: Netns,
    spec: BootSpec,
    vm: Option<Vm>,
    client: Arc<AgentClient>,
    snapshot: bool,
    boots: Arc<Semaphore>,
    giveback: Giveback,
) -> Handle {
    let (power, thermal) = match vm {
        Some(vm) => (Power::Hot(vm), Thermal::Hot),
        None => (Power::Cold { snapshot }, Thermal::Cold),
    };
    let shared = Arc::new(Shared::new(thermal));
    let owner =
        Owner { name, ns, spec, client, power, shared: Arc::clone(&shared), boots, giveback };
    // A small queue: callers wait for their answer anyway.
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(owner.run(rx));
    Handle { tx, shared }
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(command) = rx.recv().await {
            match command {
                Command::Lease(reply) => {
                    let lease =
                        self.ensure_hot().await.map(|()| Lease::new(&self.shared, &self.client));
                    // A caller that gave up drops the lease here, which returns it.
                    let _ = reply.send(lease);
                }
                Command::Pause { wait, reply } => {
                    let _ = reply.send(self.pause(wait).await);
                }
                Command::Stop { wait, force, reply } => {
                    let _ = reply.send(self.stop(wait, force).await);
                }
                Command::Start { from_disk, reply } => {
                    let discard = from_disk && matches!(self.power, Power::Cold { .. });
                    if discard {
                        let _ = std::fs::remove_file(self.spec.dir.join(STATE_FILE));
                    }
                    if discard || matches!(self.power, Power::Failed(_)) {
                        self.set_power(Power::Cold { snapshot: false });
                    }
                    let _ = reply.send(self.ensure_hot().await);
                }
                Command::Activity(reply) => {
                    let _ = reply.send(self.activity().await);
                }
                Command::Checkpoint { dest, reply } => {
                    let _ = reply.send(self.checkpoint(&dest).await);
                }
                Command::Export(reply) => {
                    let _ = reply.send(self.record());
                }
                Command::Destroy(reply) => {
                    self.destroy().await;
                    let _ = reply.send(());
                    return;
                }
            }
        }
        if self.shared.destroyed.load(Ordering::SeqCst) {
            self.destroy().await;
        }
        // Otherwise the engine was dropped: the VM's QEMU is killed with it, files stay.
    }

    /// Ends the sandbox for good: QEMU (its TAP goes with it), the neighbour entry, the address,
    /// the volume claims, every file. Runs in the owner, after whatever it was doing, so a boot
    /// still in progress can never recreate what this removes.
    async fn destroy(&mut self) {
        self.kill().await;
        let dir = self.spec.dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            vm::kill_orphan(&dir);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await;
        if let Ok(Err(e)) | Err(e) = removed.map_err(std::io::Error::other) {
            tracing::warn!(sandbox = %self.name, "removing its directory: {e}");
        }
        if let Err(e) = self.ns.delete_neighbour(&self.giveback.bridge, self.spec.ip).await {
            tracing::warn!(sandbox = %self.name, "{e}");
        }
        lock(&self.giveback.claims).release(&self.name);
        lock(&self.giveback.pool).release(self.spec.ip);
    }

    fn set_power(&mut self, power: Power) {
        let thermal = match power {
            Power::Hot(_) => Thermal::Hot,
            Power::Warm(_) => Thermal::Warm,
            Power::Cold { .. } => Thermal::Cold,
            Power::Failed(_) => Thermal::Failed,
        };
        self.power = power;
        self.shared.set_thermal(thermal);
    }

    /// Fails with a clear message when QEMU is no longer running (killed, crashed).
    fn check_alive(&mut self) -> Result<(), EngineError> {
        let (Power::Hot(vm) | Power::Warm(vm)) = &mut self.power else {
            return Ok(());
        };
        if vm.qemu.is_running() {
            return Ok(());
        }
        let stderr = vm.qemu.stderr();
        let why = if stderr.trim().is_empty() {
            "QEMU exited unexpectedly".to_owned()
        } else {
            format!("QEMU exited unexpectedly: {}", stderr.trim())
        };
        tracing::warn!(sandbox = %self.name, "{why}");
        self.set_power(Power::Failed(why));
        self.crashed()
    }

    fn crashed(&self) -> Result<(), EngineError> {
        match &self.power {
            Power::Failed(why) => {
                Err(EngineError::Crashed { name: self.name.clone(), reason: why.clone() })
            }
            _ => Ok(()),
        }
    }

    async fn ensure_hot(&mut self) -> Result<(), EngineError> {
        self.check_alive()?;
        match &self.power {
            Power::Hot(_) => Ok(()),
            Power::Warm(vm) => {
                vm::resume(vm).await?;
                let Power::Warm(vm) =
                    std::mem::replace(&mut self.power, Power::Cold { snapshot: false })
                else {
                    return Ok(());
                };
                self.set_power(Power::Hot(vm));
                Ok(())
            }
            Power::Cold { snapshot } => {
                let snapshot = *snapshot;
                let permit = self
                    .boots
                    .acquire()
                    .await
                    .map_err(|_| EngineError::Refused("the engine is shutting down".into()))?;
                let vm = if snapshot {
                    let state = self.spec.dir.join(STATE_FILE);
                    vm::resume_from_disk(
                        &self.ns,
                        &self.spec,
                        &state,
                        Some(Arc::clone(&self.client)),
                    )
                    .await?
                } else {
                    // Booting from the disk: the old RAM is meaningless, start from a clean file.
                    if let Some(ram) = &self.spec.memory_file {
                        let _ = std::fs::remove_file(ram);
                    }
                    vm::boot(&self.ns, &self.spec).await?
                };
                drop(permit);
                self.client = Arc::clone(&vm.client);
                self.set_power(Power::Hot(vm));
                Ok(())
            }
            Power::Failed(_) => self.crashed(),
        }
    }

    /// Waits until no lease is out, up to `wait`.
    async fn wait_idle(&self, wait: Duration) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let in_flight = self.shared.leases.load(Ordering::SeqCst);
            if in_flight == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(EngineError::Busy { name: self.name.clone(), in_flight });
            }
        }
    }

    async fn pause(&mut self, wait: Duration) -> Result<(), EngineError> {
        self.check_alive()?;
        match &self.power {
            Power::Hot(_) => {}
            Power::Warm(_) => return Ok(()),
            Power::Cold { .. } => {
                return Err(EngineError::Refused(format!("sandbox {:?} is cold", self.name)));
            }
            Power::Failed(_) => return self.crashed(),
        }
        self.wait_idle(wait).await?;
        if let Power::Hot(vm) = &self.power {
            vm::pause(vm).await?;
        }
        if let Power::Hot(vm) = std::mem::replace(&mut self.power, Power::Cold { snapshot: false })
        {
            self.set_power(Power::Warm(vm));
        }
        Ok(())
    }

    async fn stop(
        &mut self,
        wait: Duration,
        force: bool,
    ) -> Result<Option<Suspended>, EngineError> {
        // A QEMU that died since the last operation: nothing runs, so this sandbox is stopped.
        let _ = self.check_alive();
        let was_hot = match &self.power {
            Power::Hot(_) => true,
            Power::Warm(_) => false,
            Power::Cold { .. } => return Ok(None),
            Power::Failed(_) => {
                // The next start boots from the disk.
                self.set_power(Power::Cold { snapshot: false });
                return Ok(None);
            }
        };
        if let Err(busy) = self.wait_idle(wait).await {
            if !force {
                return Err(busy);
            }
            tracing::warn!(sandbox = %self.name, "stopping with operations in flight: {busy}");
        }
        let state = self.spec.dir.join(STATE_FILE);
        let started = Instant::now();
        let saved = match &self.power {
            Power::Hot(vm) | Power::Warm(vm) => vm::save_device_state(vm, &self.spec, &state).await,
            _ => return Ok(None),
        };
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                // Nothing is lost: the VM is paused with its memory; run it again if it ran.
                let _ = std::fs::remove_file(&state);
                if was_hot
                    && let Power::Hot(vm) = &self.power
                    && let Err(cont) = vm::resume(vm).await
                {
                    tracing::warn!(sandbox = %self.name, "resume after a failed stop: {cont}");
                }
                return Err(e);
            }
        };
        let (Power::Hot(vm) | Power::Warm(vm)) =
            std::mem::replace(&mut self.power, Power::Cold { snapshot: true })
        else {
            return Ok(None);
        };
        self.shared.set_thermal(Thermal::Cold);
        // The state is saved; from here QEMU goes whatever happens, and only a failed flush to
        // the disk is an error (the wake would still work from the page cache).
        let (suspended, _client) =
            vm::end_after_save(vm, &self.spec, &state, started, saved).await?;
        Ok(Some(suspended))
    }

    async fn activity(&mut self) -> Activity {
        let _ = self.check_alive();
        let agent = match &self.power {
            Power::Hot(vm) => vm.client.activity().await.ok(),
            _ => None,
        };
        Activity {
            thermal: self.shared.thermal(),
            last_host_activity: self.shared.last_activity(),
            in_flight: self.shared.leases.load(Ordering::SeqCst),
            agent,
        }
    }

    async fn checkpoint(&mut self, dest: &Path) -> Result<(), EngineError> {
        self.check_alive()?;
        let (vm, was_hot) = match &self.power {
            Power::Hot(vm) => (vm, true),
            Power::Warm(vm) => (vm, false),
            Power::Cold { .. } | Power::Failed(_) => {
                return Err(EngineError::Refused(format!(
                    "sandbox {:?} is not running; start it before taking a checkpoint",
                    self.name
                )));
            }
        };
        let record = self.record();
        let result = crate::checkpoint::capture(vm, &self.spec, &record, dest).await;
        if was_hot && let Err(e) = vm::resume(vm).await {
            tracing::warn!(sandbox = %self.name, "resume after checkpoint: {e}");
        }
        result
    }

    async fn kill(&mut self) {
        if let Power::Hot(vm) | Power::Warm(vm) = &mut self.power
            && let Err(e) = vm.qemu.kill().await
        {
            tracing::warn!(sandbox = %self.name, "killing QEMU: {e}");
        }
        self.set_power(Power::Cold { snapshot: false });
    }

    fn record(&self) -> SandboxRecord {
        let spec = &self.spec;
        let volumes = spec
            .volumes
            .iter()
            .zip(&spec.guest.volumes)
            .map(|(disk, guest)| VolumeMount {
                path: disk.path.clone(),
                mount: guest.mount.clone(),
                read_only: disk.read_only,
            })
            .collect();
        SandboxRecord {
            version: RECORD_VERSION,
            name: self.name.clone(),
            dir: spec.dir.clone(),
            image: spec.image.clone(),
            ip: spec.ip,
            mac: vm::mac_text(spec.mac),
            token: spec.guest.token.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            env: spec.guest.env.clone(),
            init: spec.guest.init.clone(),
            volumes,
            thermal: self.shared.thermal(),
            snapshot: matches!(self.power, Power::Cold { snapshot: true }),
        }
    }
}
