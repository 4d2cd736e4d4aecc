//! The narrow interface between the engine and a virtual machine monitor, and the vocabulary
//! both sides speak ([`BootSpec`], [`VolumeDisk`], [`Suspended`], [`Signal`], [`Saved`]).
//!
//! The owner task and the registry drive VMs only through these two traits: a [`Backend`]
//! starts machines (a boot from the disk, a restore of saved state, a restore that moves the
//! guest to a new address) and looks after what machines leave on the host (orphans of a dead
//! engine, console logs, leftover cgroups); a [`Machine`] is one running VM (pause, unpause,
//! save, quit, what it does on its own). QEMU is the one implementation today (`vm/`), which
//! depends on this module and never the reverse; another monitor (Firecracker where KVM
//! exists) is one new implementation of both, nothing else changes.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::AgentClient;
use proto::guest::GuestConfig;

use crate::error::EngineError;
use crate::layout::SandboxFiles;
use crate::net::Netns;

/// Everything needed to boot one guest. Debug leaves out the config drive (token, env values).
#[derive(Clone)]
pub struct BootSpec {
    /// Guest kernel (vmlinux).
    pub kernel: PathBuf,
    /// Base root filesystem image (ext4, never written).
    pub image: PathBuf,
    /// This VM's files (overlay, config drive, sockets, console log) in its own directory.
    pub files: SandboxFiles,
    /// Grow the overlay to this size (MiB) when it is made; the guest grows its filesystem.
    pub disk_size_mib: Option<u32>,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Keep guest RAM in this file (shared mapping) so the VM can be suspended to disk by
    /// saving device state only; `None` for anonymous memory.
    pub memory_file: Option<PathBuf>,
    /// Map `memory_file` privately and read-only (`share=off`): a clone's RAM is its
    /// checkpoint's file, copy-on-write; the file never changes. Its saved state holds the
    /// RAM the guest wrote (QEMU's `x-ignore-shared` skips only shared RAM).
    pub memory_private: bool,
    /// vCPUs.
    pub vcpus: u8,
    /// Config drive content (token, hostname, env, init, ...).
    pub guest: GuestConfig,
    /// Persistent volumes, attached after the config drive (`/dev/vdc`, `/dev/vdd`, ...); the
    /// config drive's `volumes` must name the same devices (see [`guest_device`]).
    pub volumes: Vec<VolumeDisk>,
    /// Guest address on the bridge.
    pub ip: Ipv4Addr,
    /// Bridge address (the guest's gateway).
    pub gateway: Ipv4Addr,
    /// Subnet prefix length.
    pub prefix: u8,
    /// Bridge to attach the TAP to.
    pub bridge: String,
    /// TAP device name (unique in the namespace).
    pub tap: String,
    /// Guest MAC.
    pub mac: [u8; 6],
    /// Accelerator request.
    pub accel: vmm::Accel,
    /// Host caching of the disks.
    pub disk_cache: vmm::DiskCache,
    /// How long to wait for the agent.
    pub ready_timeout: Duration,
    /// A boot gives the guest a balloon device with free page reporting (see `vm::boot`); a
    /// restore always offers it, whatever the saved guest had.
    pub free_page_reporting: bool,
    /// Confine QEMU (see `jail`); `None` only for benchmark baselines.
    pub confine: Option<crate::jail::Confinement>,
}

impl std::fmt::Debug for BootSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootSpec")
            .field("dir", &self.files.dir())
            .field("image", &self.image)
            .field("memory_mib", &self.memory_mib)
            .field("vcpus", &self.vcpus)
            .field("ip", &self.ip)
            .field("tap", &self.tap)
            .field("volumes", &self.volumes)
            .field("confine", &self.confine)
            .finish_non_exhaustive()
    }
}

/// A volume's backing file as the VMM sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    /// The ext4 image.
    pub path: PathBuf,
    /// Attached read-only (the guest mounts it read-only too).
    pub read_only: bool,
}

/// The guest device of the `index`-th volume: the root disk is `vda`, the config drive `vdb`.
pub fn guest_device(index: usize) -> String {
    let letter = (b'c' + u8::try_from(index).unwrap_or(u8::MAX).min(23)) as char;
    format!("/dev/vd{letter}")
}

/// What suspending to disk cost.
#[derive(Debug, Clone, Copy)]
pub struct Suspended {
    /// `stop` through QEMU's exit, including every flush.
    pub total: Duration,
    /// The device-state migration alone.
    pub save: Duration,
    /// Flushing the RAM file and the state file to disk.
    pub fsync: Duration,
    /// Flushing the disk overlay and the writable volumes to disk.
    pub disk_fsync: Duration,
    /// Size of the device state.
    pub state_bytes: u64,
    /// Bytes this QEMU caused to be written since it started (its `/proc/<pid>/io`
    /// `write_bytes`: RAM pages dirtied since the last flush, disk writes), plus the state;
    /// `None` where the kernel does not account I/O per task.
    pub bytes_written: Option<u64>,
}

/// A boxed future, so the traits can be used as objects.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a running machine did on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The monitor process ended (killed, crashed, the guest powered off).
    Gone,
    /// The monitor paused the guest because a disk is full on the host.
    DiskFull,
}

/// What saving device state produced.
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    /// How long the save took.
    pub duration: Duration,
    /// Size of the device state.
    pub bytes: u64,
}

/// One running VM.
pub trait Machine: Send + Sync + std::fmt::Debug {
    /// The client of the guest's agent.
    fn client(&self) -> &Arc<AgentClient>;
    /// Replaces the client (the guest's agent took a new token).
    fn set_client(&mut self, client: Arc<AgentClient>);
    /// Pauses the vCPUs; memory stays.
    fn pause(&self) -> Fut<'_, Result<(), EngineError>>;
    /// Runs paused vCPUs again (and corrects the guest clock).
    fn unpause(&self) -> Fut<'_, Result<(), EngineError>>;
    /// Pauses and writes the device state to `state` (RAM stays in its file). The VM is left
    /// paused and intact: on failure the caller can unpause it.
    fn save<'a>(&'a self, spec: &'a BootSpec, state: &'a Path) -> Fut<'a, Result<Saved, EngineError>>;
    /// After a save: ends the monitor and flushes memory, state, disk and volumes to the host
    /// disk.
    fn finish_stop<'a>(
        self: Box<Self>,
        spec: &'a BootSpec,
        state: &'a Path,
        started: Instant,
        saved: Saved,
    ) -> Fut<'a, Result<Suspended, EngineError>>;
    /// Completes when the machine does something on its own; never without a cause.
    fn watch(&mut self) -> Fut<'_, Signal>;
    /// Why the monitor ended, if it did (waiting up to `grace` for one that is on its way out).
    fn exited(&mut self, grace: Duration) -> Fut<'_, Option<String>>;
    /// Ends the monitor at once.
    fn kill(&mut self) -> Fut<'_, Result<(), EngineError>>;
    /// Serves the root disk read-only over NBD (export name `root`) on the Unix socket
    /// `socket`, as the guest sees it now (the filesystem diff reads it while the guest runs).
    fn export_disk<'a>(&'a self, socket: &'a Path) -> Fut<'a, Result<(), EngineError>>;
    /// Ends what [`Machine::export_disk`] started.
    fn unexport_disk<'a>(&'a self, socket: &'a Path) -> Fut<'a, Result<(), EngineError>>;
}

/// Starts machines.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Boots a guest from its disk and returns once its agent answers.
    fn boot<'a>(&'a self, ns: &'a Netns, spec: &'a BootSpec) -> Fut<'a, Result<Box<dyn Machine>, EngineError>>;
    /// Restores saved device state and RAM (consuming the state file) and returns once the
    /// agent answers; `client` is the agent client from before the save, whose pooled
    /// connections survive the restore.
    fn restore<'a>(
        &'a self,
        ns: &'a Netns,
        spec: &'a BootSpec,
        state: &'a Path,
        client: Option<Arc<AgentClient>>,
    ) -> Fut<'a, Result<Box<dyn Machine>, EngineError>>;
    /// Restores saved state whose guest has the address `from` (another guest still holds it)
    /// and moves the guest to `spec`'s address before it joins the bridge.
    fn restore_moved<'a>(
        &'a self,
        ns: &'a Netns,
        spec: &'a BootSpec,
        state: &'a Path,
        from: Ipv4Addr,
    ) -> Fut<'a, Result<Box<dyn Machine>, EngineError>>;
    /// Starts ahead the monitor the next [`Backend::restore`] of this sandbox (just suspended,
    /// its state in `spec.files`) will take, if the backend keeps a pool of them (`vm/pool.rs`);
    /// returns at once otherwise. Best effort: a failure is logged and the restore starts one.
    fn prestart<'a>(&'a self, ns: &'a Netns, spec: &'a BootSpec) -> Fut<'a, ()>;
    /// Ends the monitor started ahead for the sandbox of `files`, if any, and returns once it is
    /// gone: before anything else touches a cold sandbox's files (a destroy, a boot from disk).
    fn discard<'a>(&'a self, files: &'a SandboxFiles) -> Fut<'a, ()>;
    /// Ends every monitor started ahead and starts none after (engine shutdown).
    fn close_pool(&self) -> Fut<'_, ()>;
    /// The client of the agent of the guest `spec` describes (its address and token), for a
    /// sandbox that has no running machine yet (a cold one, recovered or stopped).
    fn agent_client(&self, ns: &Netns, spec: &BootSpec) -> Arc<AgentClient>;
    /// Kills the monitor whose pid is recorded in `recorded`'s directory if it still runs
    /// *and* was started with `started_as`'s files (a recycled pid is someone else's and is left
    /// alone); the directory may have moved since (a create cut short moves it aside). Returns
    /// whether one was killed. Blocks (up to about a second while the process goes): call it
    /// from a blocking thread.
    fn kill_recorded(&self, recorded: &SandboxFiles, started_as: &SandboxFiles) -> bool;
    /// Finishes, now, what dropped machines of the sandbox `id` of the engine on `netns` left
    /// for blocking threads to remove (their cgroups), so a caller that gives the sandbox's
    /// resources back knows they are gone. Call it once the sandbox's monitor is gone (after
    /// [`Backend::kill_recorded`]). Blocking.
    fn settle(&self, netns: &str, id: &str);
    /// [`Backend::kill_recorded`] for a directory that never moved: the monitor an engine that
    /// died left running for this sandbox. Blocking, as that is.
    fn kill_orphan(&self, files: &SandboxFiles) -> bool {
        self.kill_recorded(files, files)
    }
    /// Keeps the files a running machine writes on its own bounded (the console log the guest
    /// writes). Brief file work; run by the owner between messages.
    fn housekeeping(&self, files: &SandboxFiles) -> Result<(), EngineError>;
    /// Host probes done once when an engine starts, so the first boot does not pay for them and
    /// a host that cannot run confined machines fails at start, not at the first create.
    /// Blocking: call it from a blocking thread.
    fn prepare_host(&self, confine: bool) -> Result<(), EngineError>;
    /// How machines are confined (`confine` is the engine's setting), in a sentence for the
    /// daemon's start log.
    fn confinement(&self, confine: bool) -> String;
    /// Removes what the machines of an earlier engine on `netns` left on the host (their
    /// cgroups) and returns how many it removed. Blocking: call it from a blocking thread.
    fn sweep_leftovers(&self, netns: &str) -> usize;
}
