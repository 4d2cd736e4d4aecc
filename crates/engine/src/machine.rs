//! The narrow interface between the engine and a virtual machine monitor.
//!
//! The owner task and the registry drive VMs only through these two traits: a [`Backend`]
//! starts machines (a boot from the disk, a restore of saved state, a restore that moves the
//! guest to a new address), a [`Machine`] is one running VM (pause, resume, save, quit, what it
//! does on its own). QEMU is the one implementation today (`vm.rs`); another monitor
//! (Firecracker where KVM exists) is one new implementation of both, nothing else changes.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::AgentClient;

use crate::error::EngineError;
use crate::net::Netns;
use crate::vm::{BootSpec, Suspended};

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
    /// Pauses the vCPUs; memory stays.
    fn pause(&self) -> Fut<'_, Result<(), EngineError>>;
    /// Runs paused vCPUs again (and corrects the guest clock).
    fn resume(&self) -> Fut<'_, Result<(), EngineError>>;
    /// Pauses and writes the device state to `state` (RAM stays in its file). The VM is left
    /// paused and intact: on failure the caller can resume it.
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
}
