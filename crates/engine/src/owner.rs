//! One sandbox's owner: a task that alone holds the VM and changes its thermal state.
//!
//! Every thermal change (pause, stop, wake, checkpoint, destroy) is a message to the owner, which
//! handles them one at a time, so two wakes never start two QEMUs and a stop never runs beside a
//! restore. What each message does in each state is decided by [`step`], a pure function with
//! a table test. Guest operations do not run inside the owner: they take a [`Lease`] and talk to
//! the agent themselves, so a long exec never blocks the owner. A pause or stop waits, up to a
//! deadline the caller gives, until no lease is out, and refuses with [`EngineError::Busy`]
//! otherwise. (A checkpoint does pause the guest for as long as its files take to copy, leases
//! or not: the guest sees a pause, never an error, as with v1.)
//!
//! Between messages the owner watches its QEMU: a QEMU that exits (killed, crashed) or pauses
//! on a full disk is reported as an event at once, not at the next operation.
//!
//! Leases are cut (`Shared::cut`: every holder told why, at once) when the sandbox goes away
//! under them: its QEMU exits on its own, it is destroyed, a user stops it (a stop with a cut
//! reason, as `docker stop` stops a container whatever runs in it) or the daemon shuts down.
//! A stop without one (the thermal manager's) never cuts: it waits and refuses with `Busy`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::AgentClient;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{EngineError, GoneReason};
use crate::events::{EventKind, Events};
use crate::lease::{Lease, Shared};
use crate::machine::{Backend, BootSpec, Machine, Signal, Suspended};
use crate::net::Netns;
use crate::record::{RECORD_VERSION, SandboxRecord};
use crate::thermal::Thermal;
use crate::volume::VolumeMount;

/// A message to the owner.
pub(crate) enum Command {
    Lease(oneshot::Sender<Result<Lease, EngineError>>),
    Pause {
        wait: Duration,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Stop {
        wait: Duration,
        /// Operations still in flight after `wait` are cut with this reason and the stop goes
        /// on (a user's stop, daemon shutdown); without one the stop refuses with `Busy`.
        cut: Option<GoneReason>,
        reply: oneshot::Sender<Result<Option<Suspended>, EngineError>>,
    },
    Start {
        /// Discard the saved memory (if any) and boot from the disk overlay.
        from_disk: bool,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Checkpoint {
        dest: crate::layout::CheckpointFiles,
        name: String,
        reply: oneshot::Sender<Result<crate::checkpoint::Captured, EngineError>>,
    },
    /// Copies the disk (overlay and image flattened) to a raw file, the VM paused meanwhile.
    SaveDisk {
        dest: std::path::PathBuf,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// Serves the running guest's root disk read-only over NBD on `socket` (the diff).
    ExportDisk {
        socket: std::path::PathBuf,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// Ends that export.
    UnexportDisk {
        socket: std::path::PathBuf,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Export(oneshot::Sender<SandboxRecord>),
    Destroy(oneshot::Sender<()>),
    /// Test support: the owner panics, as a bug in it would.
    #[cfg(feature = "test-support")]
    Panic,
}

/// What a request asks of the owner, for [`step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// Make hot (a lease, a wake).
    Wake,
    /// Start: like a wake, and a crashed sandbox boots again from its disk.
    Start,
    /// Start from the disk, discarding saved memory.
    StartFromDisk,
    Pause,
    /// Stop, refusing while leases are out (the thermal manager).
    Stop,
    /// Stop, cutting the leases that are out (a user's stop, daemon shutdown).
    StopCutting,
    Checkpoint,
    /// Copy the disk as a standalone image.
    SaveDisk,
    /// Serve the running disk read-only (the diff; a cold one is read from its file).
    ExportDisk,
    /// Not a request but news: QEMU ended on its own (killed, crashed).
    Exited,
}

/// What the owner does for a request in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Already where the request wants it.
    Nothing,
    /// `cont` a paused VM.
    Resume,
    /// Start QEMU from the saved device state and RAM.
    Restore,
    /// Boot from the disk overlay (no saved memory, or it is discarded).
    Boot,
    /// Pause the vCPUs.
    Pause,
    /// Save device state, flush, end QEMU (once no lease is out).
    Save,
    /// Cut the leases still out, then save as [`Step::Save`].
    CutAndSave,
    /// Cut every lease (the guest is gone) and mark the sandbox failed.
    MarkFailed,
    /// Capture a checkpoint.
    Capture,
    /// Pause (if hot), copy the disk, run again.
    CopyDisk,
    /// Ask the running VMM to serve its disk.
    ServeDisk,
    /// A crashed sandbox counts as stopped: the next start boots from its disk.
    MarkCold,
    /// The state does not allow it.
    WrongState,
    /// QEMU ended on its own; only a start helps.
    Crashed,
}

/// The owner's state machine: what `request` means in `thermal` (with `snapshot`: a cold
/// sandbox's memory is on disk).
pub(crate) fn step(thermal: Thermal, snapshot: bool, request: Request) -> Step {
    use Request as R;
    use Thermal as T;
    match (request, thermal) {
        (R::Wake | R::Start | R::StartFromDisk, T::Hot) => Step::Nothing,
        (R::Wake | R::Start | R::StartFromDisk, T::Warm) => Step::Resume,
        (R::Wake | R::Start, T::Cold) if snapshot => Step::Restore,
        (R::Wake | R::Start | R::StartFromDisk, T::Cold) => Step::Boot,
        (R::Wake, T::Failed) => Step::Crashed,
        (R::Start | R::StartFromDisk, T::Failed) => Step::Boot,
        (R::Pause, T::Hot) => Step::Pause,
        (R::Pause, T::Warm) => Step::Nothing,
        (R::Pause, T::Cold) => Step::WrongState,
        (R::Pause, T::Failed) => Step::Crashed,
        (R::Stop, T::Hot | T::Warm) => Step::Save,
        (R::StopCutting, T::Hot | T::Warm) => Step::CutAndSave,
        (R::Stop | R::StopCutting, T::Cold) => Step::Nothing,
        (R::Stop | R::StopCutting, T::Failed) => Step::MarkCold,
        (R::Exited, T::Hot | T::Warm) => Step::MarkFailed,
        // Nothing ran: no lease can be out.
        (R::Exited, T::Cold | T::Failed) => Step::Nothing,
        (R::Checkpoint, T::Hot | T::Warm) => Step::Capture,
        (R::Checkpoint, T::Cold) => Step::WrongState,
        (R::Checkpoint, T::Failed) => Step::Crashed,
        (R::SaveDisk, T::Hot | T::Warm) => Step::CopyDisk,
        (R::SaveDisk, T::Cold) => Step::WrongState,
        (R::SaveDisk, T::Failed) => Step::Crashed,
        (R::ExportDisk, T::Hot | T::Warm) => Step::ServeDisk,
        (R::ExportDisk, T::Cold) => Step::WrongState,
        (R::ExportDisk, T::Failed) => Step::Crashed,
    }
}

/// What a [`Step`] means for the QEMU the backend may have started ahead for this cold
/// sandbox's next wake (`vm/pool.rs`): it holds the sandbox's TAP, its disks' write locks and
/// its RAM file mapped, so anything else that touches those files ends it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ahead {
    /// Nothing touches the cold sandbox's files: it keeps waiting.
    Keep,
    /// The restore takes it (the backend's `restore` does, or starts one if none is alive).
    Take,
    /// End it first: the step boots from the disk (the saved state and RAM are discarded).
    Discard,
    /// The sandbox just went cold with its memory saved: start the next QEMU now.
    Prestart,
}

/// [`Ahead`] for each step. A destroy (not a step) always discards.
pub(crate) fn ahead(step: Step) -> Ahead {
    match step {
        Step::Restore => Ahead::Take,
        Step::Boot | Step::MarkCold => Ahead::Discard,
        // After the save succeeded (the owner's stop returns the suspension).
        Step::Save | Step::CutAndSave => Ahead::Prestart,
        Step::Nothing
        | Step::Resume
        | Step::Pause
        | Step::MarkFailed
        | Step::Capture
        | Step::CopyDisk
        | Step::ServeDisk
        | Step::WrongState
        | Step::Crashed => Ahead::Keep,
    }
}

/// Where the VM is.
enum Power {
    Hot(Box<dyn Machine>),
    Warm(Box<dyn Machine>),
    /// QEMU gone. With `snapshot`, device state and RAM are on disk and a wake restores them;
    /// without, a wake boots from the disk overlay.
    Cold {
        snapshot: bool,
    },
    /// QEMU ended on its own (killed, crashed); an explicit start boots from the disk.
    Failed(String),
}

impl Power {
    fn thermal(&self) -> Thermal {
        match self {
            Power::Hot(_) => Thermal::Hot,
            Power::Warm(_) => Thermal::Warm,
            Power::Cold { .. } => Thermal::Cold,
            Power::Failed(_) => Thermal::Failed,
        }
    }

    fn snapshot(&self) -> bool {
        matches!(self, Power::Cold { snapshot: true })
    }
}

/// What a destroyed sandbox gives back to the engine: its address and its volume claims.
#[derive(Debug, Clone)]
pub(crate) struct Giveback {
    pub(crate) pool: Arc<std::sync::Mutex<crate::ippool::IpPool>>,
    pub(crate) claims: Arc<std::sync::Mutex<crate::volume::Claims>>,
    pub(crate) bridge: String,
    pub(crate) policies: Arc<crate::netpolicy::Policies>,
}

impl Giveback {
    /// Returns the address and the claims of sandbox `id`.
    pub(crate) fn release(&self, id: &str, ip: std::net::Ipv4Addr) {
        lock(&self.claims).release(id);
        lock(&self.pool).release(ip);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who the sandbox is.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) id: String,
    pub(crate) owner: String,
}

/// The owner task's state.
pub(crate) struct Owner {
    who: Identity,
    ns: Netns,
    spec: BootSpec,
    client: Arc<AgentClient>,
    power: Power,
    shared: Arc<Shared>,
    boots: Arc<Semaphore>,
    backend: Arc<dyn Backend>,
    giveback: Giveback,
    events: Events,
}

/// The handle the registry keeps.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Command>,
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    /// Test support: the owner's queue itself.
    #[cfg(feature = "test-support")]
    pub(crate) fn tx_for_tests(&self) -> &mpsc::Sender<Command> {
        &self.tx
    }

    /// Sends a command and waits for its answer. An owner that is gone failed (it panicked):
    /// the sandbox is reported crashed.
    pub(crate) async fn ask<T>(
        &self,
        id: &str,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        let gone = || EngineError::Crashed {
            id: id.to_owned(),
            reason: lock(&self.shared.failure)
                .clone()
                .unwrap_or_else(|| "its owner task ended".to_owned()),
        };
        self.tx.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// What a new owner starts with.
pub(crate) struct Start {
    pub(crate) who: Identity,
    pub(crate) ns: Netns,
    pub(crate) spec: BootSpec,
    /// Hot with a VM; cold without.
    pub(crate) vm: Option<Box<dyn Machine>>,
    pub(crate) client: Arc<AgentClient>,
    /// For a cold start: its memory is on disk.
    pub(crate) snapshot: bool,
    pub(crate) boots: Arc<Semaphore>,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) giveback: Giveback,
    pub(crate) events: Events,
}

/// Starts the owner of a sandbox, and a supervisor that notices if it panics: the sandbox is
/// then marked failed (QEMU went with the owner's unwinding), its address and claims are given
/// back and a crash event goes out.
pub(crate) fn spawn(start: Start) -> Handle {
    let Start { who, ns, spec, vm, client, snapshot, boots, backend, giveback, events } = start;
    let power = match vm {
        Some(vm) => Power::Hot(vm),
        None => Power::Cold { snapshot },
    };
    let shared = Arc::new(Shared::new(&who.id, power.thermal()));
    if let Power::Hot(_) = power {
        shared.open(&client);
    }
    let ip = spec.ip;
    let (id, supervisor_giveback, supervisor_events) =
        (who.id.clone(), giveback.clone(), events.clone());
    let owner = Owner {
        who,
        ns,
        spec,
        client,
        power,
        shared: Arc::clone(&shared),
        boots,
        backend,
        giveback,
        events,
    };
    // A small queue: callers wait for their answer anyway.
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(owner.run(rx));
    let watched = Arc::clone(&shared);
    tokio::spawn(async move {
        let Err(e) = task.await else { return };
        if !e.is_panic() {
            return; // The runtime is shutting down.
        }
        let reason = "the sandbox's owner task failed (a bug: see the daemon's log)".to_owned();
        tracing::error!(sandbox = %id, "owner task panicked: {e}");
        *lock(&watched.failure) = Some(reason.clone());
        // QEMU went with the owner: streams on it would otherwise wait for their deadlines.
        watched.cut(GoneReason::Crashed(reason.clone()));
        watched.close();
        watched.set_thermal(Thermal::Failed);
        supervisor_giveback.release(&id, ip);
        supervisor_events.send(&id, EventKind::Crashed { reason });
    });
    Handle { tx, shared }
}

/// Waits for something the running VM does on its own; never completes without a VM.
async fn watch(power: &mut Power) -> Signal {
    match power {
        Power::Hot(vm) | Power::Warm(vm) => vm.watch().await,
        _ => std::future::pending().await,
    }
}

/// How long a cutting stop waits for the holders of cut leases to let go.
const CUT_GRACE: Duration = Duration::from_secs(2);

/// How often the console log's size is checked while QEMU runs.
const CONSOLE_CHECK: Duration = Duration::from_secs(2);

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut console = tokio::time::interval(CONSOLE_CHECK);
        console.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = rx.recv() => {
                    let Some(command) = command else { break };
                    if self.handle(command).await {
                        return;
                    }
                }
                signal = watch(&mut self.power) => self.on_signal(signal).await,
                _ = console.tick() => self.housekeeping().await,
            }
        }
        if self.shared.destroyed.load(std::sync::atomic::Ordering::SeqCst) {
            self.destroy().await;
        }
        // Otherwise the engine was dropped: the VM's QEMU is killed with it, files stay.
    }

    /// Handles one message; true when the owner is done (destroyed).
    async fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Lease(reply) => {
                let lease = self
                    .make_hot(Request::Wake)
                    .await
                    .map(|()| self.shared.lease_from_owner(&self.client));
                // A caller that gave up drops the lease here, which returns it.
                let _ = reply.send(lease);
            }
            Command::Pause { wait, reply } => {
                let _ = reply.send(self.pause(wait).await);
            }
            Command::Stop { wait, cut, reply } => {
                let stopped = self.stop(wait, cut).await;
                let saved = matches!(stopped, Ok(Some(_)));
                let _ = reply.send(stopped);
                // After the answer: the stop's caller does not wait for the next QEMU.
                if saved {
                    self.ahead(Step::Save).await;
                }
            }
            Command::Start { from_disk, reply } => {
                let request = if from_disk { Request::StartFromDisk } else { Request::Start };
                let _ = reply.send(self.make_hot(request).await);
            }
            Command::Checkpoint { dest, name, reply } => {
                let _ = reply.send(self.checkpoint(&dest, &name).await);
            }
            Command::SaveDisk { dest, reply } => {
                let _ = reply.send(self.save_disk(&dest).await);
            }
            Command::ExportDisk { socket, reply } => {
                let _ = reply.send(self.export_disk(&socket).await);
            }
            Command::UnexportDisk { socket, reply } => {
                let result = match &self.power {
                    Power::Hot(vm) | Power::Warm(vm) => vm.unexport_disk(&socket).await,
                    _ => Ok(()),
                };
                let _ = reply.send(result);
            }
            Command::Export(reply) => {
                let _ = reply.send(self.record());
            }
            Command::Destroy(reply) => {
                self.destroy().await;
                let _ = reply.send(());
                return true;
            }
            #[cfg(feature = "test-support")]
            Command::Panic => panic!("owner of {} told to panic (test support)", self.who.id),
        }
        false
    }

    async fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::Gone => {
                if let Err(e) = self.check_alive(Duration::from_secs(2)).await {
                    tracing::warn!(sandbox = %self.who.id, "{}", e.report());
                }
            }
            Signal::DiskFull => {
                if let Power::Hot(_) = self.power {
                    let Power::Hot(vm) =
                        std::mem::replace(&mut self.power, Power::Cold { snapshot: false })
                    else {
                        return;
                    };
                    self.set_power(Power::Warm(vm));
                }
                tracing::warn!(sandbox = %self.who.id, "paused by QEMU: a disk is full");
                self.events.send(&self.who.id, EventKind::DiskFull);
            }
        }
    }

    /// Keeps what the machine writes on its own (the guest's console log) bounded. File work,
    /// so on a blocking thread.
    async fn housekeeping(&self) {
        if !matches!(self.power, Power::Hot(_) | Power::Warm(_)) {
            return;
        }
        let (backend, files) = (Arc::clone(&self.backend), self.spec.files.clone());
        let done = tokio::task::spawn_blocking(move || backend.housekeeping(&files)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(sandbox = %self.who.id, "housekeeping: {}", e.report());
        }
    }

    /// Ends the sandbox for good: QEMU (its TAP goes with it), the neighbour entry, the address,
    /// the volume claims, every file. Runs in the owner, after whatever it was doing, so a boot
    /// still in progress can never recreate what this removes.
    async fn destroy(&mut self) {
        // Before QEMU goes: a stream on a killed guest would wait for its deadline.
        self.shared.cut(GoneReason::Destroyed);
        self.backend.discard(&self.spec.files).await;
        self.kill().await;
        let (files, backend) = (self.spec.files.clone(), Arc::clone(&self.backend));
        let (netns, id) = (self.ns.name().to_owned(), self.who.id.clone());
        // A boot this destroy overtook may have dropped its machine: its cgroup goes too.
        let removed = tokio::task::spawn_blocking(move || {
            crate::teardown::remove_files(&*backend, &netns, &id, &files, &files);
        })
        .await;
        if removed.is_err() {
            tracing::warn!(sandbox = %self.who.id, "removing its files did not finish");
        }
        let (giveback, ip, tap) = (&self.giveback, self.spec.ip, &self.spec.tap);
        let (bridge, policies) = (&giveback.bridge, &giveback.policies);
        crate::teardown::unplug(&self.ns, bridge, policies, &self.who.id, ip, tap).await;
        self.giveback.release(&self.who.id, self.spec.ip);
        self.events.send(&self.who.id, EventKind::Destroyed);
    }

    fn set_power(&mut self, power: Power) {
        let thermal = power.thermal();
        match &power {
            Power::Hot(vm) => self.shared.open(vm.client()),
            _ => self.shared.close(),
        }
        self.power = power;
        self.shared.set_thermal(thermal);
    }

    /// Fails with a clear message when QEMU is no longer running (killed, crashed), waiting up
    /// to `grace` for a QEMU whose QMP socket closed to finish exiting.
    async fn check_alive(&mut self, grace: Duration) -> Result<(), EngineError> {
        let (Power::Hot(vm) | Power::Warm(vm)) = &mut self.power else {
            return Ok(());
        };
        let Some(why) = vm.exited(grace).await else {
            return Ok(());
        };
        tracing::warn!(sandbox = %self.who.id, "{why}");
        if step(self.power.thermal(), self.power.snapshot(), Request::Exited) == Step::MarkFailed {
            // No TCP connection to the dead guest will ever see a FIN or RST: tell the holders.
            self.shared.cut(GoneReason::Crashed(why.clone()));
        }
        self.set_power(Power::Failed(why.clone()));
        self.events.send(&self.who.id, EventKind::Crashed { reason: why });
        self.crashed()
    }

    fn crashed(&self) -> Result<(), EngineError> {
        match &self.power {
            Power::Failed(_) => Err(self.crash_error()),
            _ => Ok(()),
        }
    }

    /// The error of a crashed sandbox, with what QEMU said.
    fn crash_error(&self) -> EngineError {
        let reason = match &self.power {
            Power::Failed(why) => why.clone(),
            _ => "its VM is not running".to_owned(),
        };
        EngineError::Crashed { id: self.who.id.clone(), reason }
    }

    fn wrong_state(&self, op: &'static str) -> EngineError {
        EngineError::WrongState { id: self.who.id.clone(), thermal: self.power.thermal(), op }
    }

    async fn make_hot(&mut self, request: Request) -> Result<(), EngineError> {
        self.check_alive(Duration::ZERO).await.or_else(|e| match request {
            Request::Wake => Err(e),
            _ => Ok(()),
        })?;
        let from = self.power.thermal();
        let started = Instant::now();
        match step(from, self.power.snapshot(), request) {
            Step::Nothing => return Ok(()),
            Step::Crashed => return self.crashed(),
            Step::Resume => {
                if let Power::Warm(vm) = &self.power {
                    vm.unpause().await?;
                }
                if let Power::Warm(vm) =
                    std::mem::replace(&mut self.power, Power::Cold { snapshot: false })
                {
                    self.set_power(Power::Hot(vm));
                }
            }
            Step::Restore | Step::Boot => {
                let planned = step(from, self.power.snapshot(), request);
                self.ahead(planned).await;
                let restore = planned == Step::Restore;
                if !restore {
                    // Booting from the disk: a saved state (if any) must never be restored
                    // over a disk the new boot changes, and the old RAM is meaningless.
                    let _ = std::fs::remove_file(self.spec.files.state());
                    if let Some(ram) = &self.spec.memory_file {
                        let _ = std::fs::remove_file(ram);
                    }
                    // A clone boots on fresh RAM of its own (its checkpoint's link went).
                    if self.spec.memory_private {
                        self.spec.memory_private = false;
                        self.spec.memory_file = Some(self.spec.files.ram());
                    }
                    self.set_power(Power::Cold { snapshot: false });
                }
                let permit = self.boots.acquire().await.map_err(|_| EngineError::ShuttingDown)?;
                let vm = if restore {
                    let state = self.spec.files.state();
                    let client = Some(Arc::clone(&self.client));
                    self.backend.restore(&self.ns, &self.spec, &state, client).await?
                } else {
                    self.backend.boot(&self.ns, &self.spec).await?
                };
                drop(permit);
                self.client = Arc::clone(vm.client());
                self.set_power(Power::Hot(vm));
                if !restore {
                    self.events.send(&self.who.id, EventKind::Started);
                    return Ok(());
                }
            }
            other => {
                debug_assert!(false, "make_hot planned {other:?}");
                return Err(self.wrong_state("wake"));
            }
        }
        let duration = started.elapsed();
        self.events.send(&self.who.id, EventKind::Woke { from, duration });
        Ok(())
    }

    /// Does what `step` means for a QEMU started ahead ([`ahead`]).
    async fn ahead(&mut self, step: Step) {
        match ahead(step) {
            Ahead::Keep | Ahead::Take => {}
            Ahead::Discard => self.backend.discard(&self.spec.files).await,
            Ahead::Prestart => {
                // A start like any other: it waits its turn among boots and restores.
                let Ok(_permit) = self.boots.acquire().await else { return };
                self.backend.prestart(&self.ns, &self.spec).await;
            }
        }
    }

    async fn pause(&mut self, wait: Duration) -> Result<(), EngineError> {
        self.check_alive(Duration::ZERO).await?;
        match step(self.power.thermal(), self.power.snapshot(), Request::Pause) {
            Step::Pause => {}
            Step::Nothing => return Ok(()),
            Step::Crashed => return self.crashed(),
            _ => return Err(self.wrong_state("pause")),
        }
        self.shared.close_when_idle(&self.who.id, wait).await?;
        if let Power::Hot(vm) = &self.power
            && let Err(e) = vm.pause().await
        {
            self.shared.reopen_if_hot();
            return Err(e);
        }
        if let Power::Hot(vm) = std::mem::replace(&mut self.power, Power::Cold { snapshot: false })
        {
            self.set_power(Power::Warm(vm));
        }
        self.events.send(&self.who.id, EventKind::Paused);
        Ok(())
    }

    async fn stop(
        &mut self,
        wait: Duration,
        cut: Option<GoneReason>,
    ) -> Result<Option<Suspended>, EngineError> {
        // A QEMU that died since the last operation: nothing runs, so this sandbox is stopped.
        let _ = self.check_alive(Duration::ZERO).await;
        let request = if cut.is_some() { Request::StopCutting } else { Request::Stop };
        let cutting = match step(self.power.thermal(), self.power.snapshot(), request) {
            Step::Save => None,
            Step::CutAndSave => cut,
            Step::MarkCold => {
                // The next start boots from the disk.
                self.ahead(Step::MarkCold).await;
                self.set_power(Power::Cold { snapshot: false });
                return Ok(None);
            }
            _ => return Ok(None),
        };
        let was_hot = matches!(self.power, Power::Hot(_));
        if let Err(busy) = self.shared.close_when_idle(&self.who.id, wait).await {
            let Some(reason) = cutting else { return Err(busy) };
            self.cut_leases(reason).await;
        }
        let state = self.spec.files.state();
        let started = Instant::now();
        let saved = match &self.power {
            Power::Hot(vm) | Power::Warm(vm) => vm.save(&self.spec, &state).await,
            _ => return Ok(None),
        };
        let saved = match saved {
            Ok(saved) => saved,
            Err(e) => {
                // Nothing is lost: the VM is paused with its memory; run it again if it ran.
                let _ = std::fs::remove_file(&state);
                if was_hot
                    && let Power::Hot(vm) = &self.power
                    && let Err(cont) = vm.unpause().await
                {
                    tracing::warn!(sandbox = %self.who.id, "resume after a failed stop: {}", cont.report());
                }
                self.shared.reopen_if_hot();
                return Err(e);
            }
        };
        let (Power::Hot(vm) | Power::Warm(vm)) =
            std::mem::replace(&mut self.power, Power::Cold { snapshot: true })
        else {
            return Ok(None);
        };
        self.set_power(Power::Cold { snapshot: true });
        // The state is saved; from here QEMU goes whatever happens, and only a failed flush to
        // the disk is an error (the wake would still work from the page cache).
        let suspended = vm.finish_stop(&self.spec, &state, started, saved).await?;
        self.events
            .send(&self.who.id, EventKind::Stopped { bytes_written: suspended.bytes_written });
        Ok(Some(suspended))
    }

    /// Tells every lease holder why its operation ends and gives them [`CUT_GRACE`] to let go:
    /// their connections close while the guest still runs, so its agent ends a cut exec's
    /// command and detaches a cut session before the memory is saved. Leases still out after
    /// that are cut all the same (their connections die with this QEMU).
    async fn cut_leases(&mut self, reason: GoneReason) {
        self.shared.cut(reason);
        if let Err(still) = self.shared.close_when_idle(&self.who.id, CUT_GRACE).await {
            self.shared.close_now();
            tracing::warn!(sandbox = %self.who.id, "stopping with operations in flight: {still}");
        }
    }

    async fn checkpoint(
        &mut self,
        dest: &crate::layout::CheckpointFiles,
        name: &str,
    ) -> Result<crate::checkpoint::Captured, EngineError> {
        self.check_alive(Duration::ZERO).await?;
        match step(self.power.thermal(), self.power.snapshot(), Request::Checkpoint) {
            Step::Capture => {}
            Step::Crashed => return Err(self.crash_error()),
            _ => return Err(self.wrong_state("take a checkpoint")),
        }
        let record = self.record();
        let (Power::Hot(vm) | Power::Warm(vm)) = &self.power else {
            return Err(self.wrong_state("take a checkpoint"));
        };
        let was_hot = matches!(self.power, Power::Hot(_));
        let result = crate::checkpoint::capture(vm.as_ref(), &self.spec, &record, dest, name).await;
        if was_hot && let Err(e) = vm.unpause().await {
            tracing::warn!(sandbox = %self.who.id, "resume after checkpoint: {}", e.report());
        }
        result
    }

    /// The disk flattened into `dest`: a hot VM is paused only for the copy (QEMU's `stop`
    /// drains and flushes its disks first), a warm one stays paused.
    async fn save_disk(&mut self, dest: &std::path::Path) -> Result<(), EngineError> {
        self.check_alive(Duration::ZERO).await?;
        match step(self.power.thermal(), self.power.snapshot(), Request::SaveDisk) {
            Step::CopyDisk => {}
            Step::Crashed => return Err(self.crash_error()),
            _ => return Err(self.wrong_state("save its disk as an image")),
        }
        let (Power::Hot(vm) | Power::Warm(vm)) = &self.power else {
            return Err(self.wrong_state("save its disk as an image"));
        };
        let was_hot = matches!(self.power, Power::Hot(_));
        if was_hot {
            vm.pause().await?;
        }
        let result = crate::disk_image::flatten(&self.spec.files.overlay(), dest).await;
        if was_hot && let Err(e) = vm.unpause().await {
            tracing::warn!(sandbox = %self.who.id, "resume after saving the disk: {}", e.report());
        }
        result
    }

    /// The running disk served read-only on `socket` (no pause: the VMM reads through the
    /// same block layer the guest writes through).
    async fn export_disk(&mut self, socket: &std::path::Path) -> Result<(), EngineError> {
        self.check_alive(Duration::ZERO).await?;
        match step(self.power.thermal(), self.power.snapshot(), Request::ExportDisk) {
            Step::ServeDisk => {}
            Step::Crashed => return Err(self.crash_error()),
            _ => return Err(self.wrong_state("serve its disk")),
        }
        let (Power::Hot(vm) | Power::Warm(vm)) = &self.power else {
            return Err(self.wrong_state("serve its disk"));
        };
        vm.export_disk(socket).await
    }

    async fn kill(&mut self) {
        if let Power::Hot(vm) | Power::Warm(vm) = &mut self.power
            && let Err(e) = vm.kill().await
        {
            tracing::warn!(sandbox = %self.who.id, "killing QEMU: {}", e.report());
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
            id: self.who.id.clone(),
            owner: self.who.owner.clone(),
            hostname: spec.guest.hostname.clone(),
            disk_size_mib: spec.disk_size_mib,
            dir: spec.files.dir().to_owned(),
            image: spec.image.clone(),
            ip: spec.ip,
            mac: crate::net::mac_text(spec.mac),
            token: spec.guest.token.clone(),
            vcpus: spec.vcpus,
            cpu_millis: spec.confine.as_ref().map(|c| c.cpu_millis),
            memory_mib: spec.memory_mib,
            env: spec.guest.env.clone(),
            init: spec.guest.init.clone(),
            volumes,
            thermal: self.power.thermal(),
            snapshot: self.power.snapshot(),
            memory_private: spec.memory_private,
            // A sandbox is always in the policy map while its owner runs; were it not, the
            // record says `deny` rather than open what no one asked for.
            net_policy: self.giveback.policies.policy(spec.ip).map_or_else(
                || bhatti_core::NetPolicy {
                    default: bhatti_core::Posture::Deny,
                    ..Default::default()
                },
                |p| p.to_net_policy(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_in_every_state() {
        use Request as R;
        use Step as S;
        use Thermal as T;
        // (request, state, memory on disk) -> step
        let table = [
            (R::Wake, T::Hot, false, S::Nothing),
            (R::Wake, T::Warm, false, S::Resume),
            (R::Wake, T::Cold, true, S::Restore),
            (R::Wake, T::Cold, false, S::Boot),
            (R::Wake, T::Failed, false, S::Crashed),
            (R::Start, T::Hot, false, S::Nothing),
            (R::Start, T::Warm, false, S::Resume),
            (R::Start, T::Cold, true, S::Restore),
            (R::Start, T::Cold, false, S::Boot),
            (R::Start, T::Failed, false, S::Boot),
            (R::StartFromDisk, T::Hot, false, S::Nothing),
            (R::StartFromDisk, T::Warm, false, S::Resume),
            (R::StartFromDisk, T::Cold, true, S::Boot),
            (R::StartFromDisk, T::Cold, false, S::Boot),
            (R::StartFromDisk, T::Failed, false, S::Boot),
            (R::Pause, T::Hot, false, S::Pause),
            (R::Pause, T::Warm, false, S::Nothing),
            (R::Pause, T::Cold, true, S::WrongState),
            (R::Pause, T::Failed, false, S::Crashed),
            (R::Stop, T::Hot, false, S::Save),
            (R::Stop, T::Warm, false, S::Save),
            (R::Stop, T::Cold, true, S::Nothing),
            (R::Stop, T::Failed, false, S::MarkCold),
            (R::StopCutting, T::Hot, false, S::CutAndSave),
            (R::StopCutting, T::Warm, false, S::CutAndSave),
            (R::StopCutting, T::Cold, true, S::Nothing),
            (R::StopCutting, T::Cold, false, S::Nothing),
            (R::StopCutting, T::Failed, false, S::MarkCold),
            (R::Exited, T::Hot, false, S::MarkFailed),
            (R::Exited, T::Warm, false, S::MarkFailed),
            (R::Exited, T::Cold, true, S::Nothing),
            (R::Exited, T::Failed, false, S::Nothing),
            (R::Checkpoint, T::Hot, false, S::Capture),
            (R::Checkpoint, T::Warm, false, S::Capture),
            (R::Checkpoint, T::Cold, true, S::WrongState),
            (R::Checkpoint, T::Failed, false, S::Crashed),
            (R::SaveDisk, T::Hot, false, S::CopyDisk),
            (R::SaveDisk, T::Warm, false, S::CopyDisk),
            (R::SaveDisk, T::Cold, true, S::WrongState),
            (R::SaveDisk, T::Failed, false, S::Crashed),
            (R::ExportDisk, T::Hot, false, S::ServeDisk),
            (R::ExportDisk, T::Warm, false, S::ServeDisk),
            (R::ExportDisk, T::Cold, true, S::WrongState),
            (R::ExportDisk, T::Failed, false, S::Crashed),
        ];
        for (request, thermal, snapshot, want) in table {
            assert_eq!(step(thermal, snapshot, request), want, "{request:?} in {thermal:?}");
        }
    }

    #[test]
    fn a_qemu_started_ahead_in_every_step() {
        use Ahead as A;
        use Step as S;
        // step -> what happens to the QEMU waiting for the cold sandbox's wake
        let table = [
            // The wake it waits for.
            (S::Restore, A::Take),
            // A boot from the disk: the state and RAM go, the TAP and disk must be free.
            (S::Boot, A::Discard),
            // A failed sandbox marked stopped: its next start boots from the disk.
            (S::MarkCold, A::Discard),
            // A stop that saved the memory: start the next QEMU.
            (S::Save, A::Prestart),
            (S::CutAndSave, A::Prestart),
            // Nothing touches a cold sandbox's files.
            (S::Nothing, A::Keep),
            (S::WrongState, A::Keep),
            (S::Crashed, A::Keep),
            // Only while a QEMU runs, when none waits.
            (S::Resume, A::Keep),
            (S::Pause, A::Keep),
            (S::MarkFailed, A::Keep),
            (S::Capture, A::Keep),
            (S::CopyDisk, A::Keep),
        ];
        for (step, want) in table {
            assert_eq!(ahead(step), want, "{step:?}");
        }
        // Each request on a cold sandbox with its memory saved (the only state with a QEMU
        // waiting): only a wake takes it, only a boot from the disk ends it.
        use Request as R;
        let cold = [
            (R::Wake, A::Take),
            (R::Start, A::Take),
            (R::StartFromDisk, A::Discard),
            (R::Pause, A::Keep),
            (R::Stop, A::Keep),
            (R::StopCutting, A::Keep),
            (R::Checkpoint, A::Keep),
            (R::SaveDisk, A::Keep),
            (R::Exited, A::Keep),
        ];
        for (request, want) in cold {
            assert_eq!(ahead(step(Thermal::Cold, true, request)), want, "{request:?} when cold");
        }
    }
}
