//! QEMU as the engine's [`Backend`]: one [`Vm`] per running guest. The jobs live in their own
//! modules: `boot` (a guest from its disk, and every QEMU start), `suspend` (pause, suspend to
//! disk, restore), `console` (the serial log), `orphans` (QEMUs left by a dead engine), `pool`
//! (QEMUs started ahead for cold wakes).

mod boot;
mod console;
mod export;
mod orphans;
mod pool;
mod suspend;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::AgentClient;
use vmm::QemuProcess;
use vmm::qmp::{Event, IoErrorAction};

pub use boot::{boot, host_tsc_khz};
pub use console::{cap_console, console_tail};
pub use orphans::kill_recorded;
pub use pool::{Pool, PoolConfig};
pub use suspend::{end_after_save, pause, unpause, restore_moved, save_device_state};
/// What the crate's own tests drive below the [`Backend`].
#[cfg(any(test, feature = "test-support"))]
pub use {
    boot::{BareBoot, bare_qemu_command, kernel_cmdline, vm_config},
    console::SERIAL_LOG_CAP,
    suspend::{process_write_bytes, restore_from_disk, suspend_to_disk},
};

use crate::error::{EngineError, io_at};
use crate::layout::SandboxFiles;
use crate::machine::{Backend, BootSpec, Fut, Machine, Saved, Signal, Suspended};
use crate::net::Netns;

/// A booted guest.
#[derive(Debug)]
pub struct Vm {
    /// The QEMU process (killed when dropped).
    pub qemu: QemuProcess,
    /// Client of the guest's agent.
    pub client: Arc<AgentClient>,
    /// Guest address (read by the crate's own tests).
    #[cfg_attr(not(feature = "test-support"), allow(dead_code))]
    pub ip: Ipv4Addr,
    /// QEMU spawn to the first successful authenticated exec (read by the crate's own tests).
    #[cfg_attr(not(feature = "test-support"), allow(dead_code))]
    pub ready_after: Duration,
    /// The VM's files.
    pub files: SandboxFiles,
    /// QMP events of this QEMU (stops, I/O errors), read by the sandbox's owner.
    pub events: tokio::sync::broadcast::Receiver<Event>,
    /// Removes the QEMU's cgroup once the QEMU (declared first, so dropped first) is gone.
    cgroup: Option<crate::jail::CgroupGuard>,
}

impl Vm {
    /// The end of the serial console (at most 16 KiB: what an error message can carry).
    pub fn serial_log(&self) -> String {
        console_tail(&self.files, console::CONSOLE_TAIL)
    }

    /// Removes the QEMU's cgroup once the QEMU is gone, and waits for it (on a blocking
    /// thread): a caller of a stop or a kill may look for it at once.
    async fn release_cgroup(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.release().await;
        }
    }

    fn new(started: boot::Started, client: Arc<AgentClient>, spec: &BootSpec, ready_after: Duration) -> Self {
        let boot::Started { qemu, cgroup } = started;
        let events = qemu.qmp.subscribe();
        let files = spec.files.clone();
        Vm { qemu, client, ip: spec.ip, ready_after, files, events, cgroup }
    }
}

/// QEMU as the engine's [`Backend`], with its pool of QEMUs started ahead for cold wakes.
#[derive(Debug, Clone)]
pub struct Qemu {
    pool: Arc<Pool>,
}

impl Qemu {
    /// The backend, with a pool sized by `pool` (capacity 0: none). Call it inside a runtime:
    /// the pool's expiry runs as a task.
    pub fn new(pool: PoolConfig) -> Self {
        Self { pool: Pool::new(pool) }
    }
}

impl Backend for Qemu {
    fn boot<'a>(
        &'a self,
        ns: &'a Netns,
        spec: &'a BootSpec,
    ) -> Fut<'a, Result<Box<dyn Machine>, EngineError>> {
        Box::pin(async move { boot(ns, spec).await.map(|vm| Box::new(vm) as Box<dyn Machine>) })
    }

    fn restore<'a>(
        &'a self,
        ns: &'a Netns,
        spec: &'a BootSpec,
        state: &'a Path,
        client: Option<Arc<AgentClient>>,
    ) -> Fut<'a, Result<Box<dyn Machine>, EngineError>> {
        Box::pin(async move {
            suspend::restore_pooled(Some(&self.pool), ns, spec, state, client)
                .await
                .map(|vm| Box::new(vm) as Box<dyn Machine>)
        })
    }

    fn prestart<'a>(&'a self, ns: &'a Netns, spec: &'a BootSpec) -> Fut<'a, ()> {
        Box::pin(self.pool.prestart(ns, spec))
    }

    fn discard<'a>(&'a self, files: &'a SandboxFiles) -> Fut<'a, ()> {
        Box::pin(self.pool.discard(files))
    }

    fn close_pool(&self) -> Fut<'_, ()> {
        Box::pin(self.pool.close())
    }

    fn restore_moved<'a>(
        &'a self,
        ns: &'a Netns,
        spec: &'a BootSpec,
        state: &'a Path,
        from: Ipv4Addr,
    ) -> Fut<'a, Result<Box<dyn Machine>, EngineError>> {
        Box::pin(async move {
            restore_moved(ns, spec, state, from).await.map(|vm| Box::new(vm) as Box<dyn Machine>)
        })
    }

    fn agent_client(&self, ns: &Netns, spec: &BootSpec) -> Arc<AgentClient> {
        boot::agent_client(ns, spec)
    }

    fn kill_recorded(&self, recorded: &SandboxFiles, started_as: &SandboxFiles) -> bool {
        // QEMU is recognised by the QMP socket on its command line.
        kill_recorded(&recorded.pid_file(), &started_as.qmp_socket())
    }

    fn settle(&self, netns: &str, id: &str) {
        crate::jail::remove_dropped(&crate::jail::cgroup_name(netns, id));
    }

    fn housekeeping(&self, files: &SandboxFiles) -> Result<(), EngineError> {
        cap_console(files).map(drop).map_err(io_at("capping", files.serial_log()))
    }

    fn prepare_host(&self, confine: bool) -> Result<(), EngineError> {
        // The TSC rate goes on every TCG guest's command line; measuring it takes 50 ms.
        host_tsc_khz();
        if confine {
            // QEMU's files for the jails and the cgroup hierarchy.
            crate::jail::hierarchy();
            crate::jail::HostFiles::get()?;
        }
        Ok(())
    }

    fn confinement(&self, confine: bool) -> String {
        if !confine {
            return "each QEMU runs unconfined (confine is off)".into();
        }
        let bounds = match crate::jail::hierarchy() {
            Some(h) => format!("bounded by {}", h.describe()),
            None => "without cgroup bounds (the host has no usable hierarchy)".into(),
        };
        format!(
            "each QEMU jailed (its own uid from {}, a private root, empty network namespace, \
             no capabilities, seccomp), {bounds}",
            crate::jail::UID_BASE
        )
    }

    fn sweep_leftovers(&self, netns: &str) -> usize {
        crate::jail::sweep_cgroups(netns).removed
    }
}

impl Machine for Vm {
    fn client(&self) -> &Arc<AgentClient> {
        &self.client
    }

    fn set_client(&mut self, client: Arc<AgentClient>) {
        self.client = client;
    }

    fn pause(&self) -> Fut<'_, Result<(), EngineError>> {
        Box::pin(pause(self))
    }

    fn unpause(&self) -> Fut<'_, Result<(), EngineError>> {
        Box::pin(unpause(self))
    }

    fn save<'a>(&'a self, spec: &'a BootSpec, state: &'a Path) -> Fut<'a, Result<Saved, EngineError>> {
        Box::pin(async move {
            let saved = save_device_state(self, spec, state).await?;
            Ok(Saved { duration: saved.duration, bytes: saved.bytes })
        })
    }

    fn finish_stop<'a>(
        self: Box<Self>,
        spec: &'a BootSpec,
        state: &'a Path,
        started: Instant,
        saved: Saved,
    ) -> Fut<'a, Result<Suspended, EngineError>> {
        Box::pin(async move {
            let saved = vmm::StateSaved { duration: saved.duration, bytes: saved.bytes };
            end_after_save(*self, spec, state, started, saved).await.map(|(s, _)| s)
        })
    }

    fn watch(&mut self) -> Fut<'_, Signal> {
        Box::pin(async move {
            let Vm { qemu, events, .. } = self;
            loop {
                tokio::select! {
                    () = qemu.qmp.gone() => return Signal::Gone,
                    event = events.recv() => match event {
                        // QEMU's default `werror=enospc` stops the guest on a full host disk.
                        Ok(Event::BlockIoError { nospace: true, action: IoErrorAction::Stop, .. }) => {
                            return Signal::DiskFull;
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            return std::future::pending().await;
                        }
                    },
                }
            }
        })
    }

    fn exited(&mut self, grace: Duration) -> Fut<'_, Option<String>> {
        Box::pin(async move {
            if !self.qemu.qmp.is_closed() && self.qemu.is_running() {
                return None;
            }
            if self.qemu.wait(grace).await.is_err() {
                // QMP closed but the process lingers: it is of no use any more.
                let _ = self.qemu.kill().await;
            }
            let stderr = self.qemu.stderr();
            Some(if stderr.trim().is_empty() {
                "QEMU exited unexpectedly".to_owned()
            } else {
                format!("QEMU exited unexpectedly: {}", stderr.trim())
            })
        })
    }

    fn kill(&mut self) -> Fut<'_, Result<(), EngineError>> {
        Box::pin(async move {
            self.qemu.kill().await?;
            self.release_cgroup().await;
            Ok(())
        })
    }

    fn export_disk<'a>(&'a self, socket: &'a Path) -> Fut<'a, Result<(), EngineError>> {
        Box::pin(export::export_root(self, socket))
    }

    fn unexport_disk<'a>(&'a self, socket: &'a Path) -> Fut<'a, Result<(), EngineError>> {
        Box::pin(export::unexport_root(self, socket))
    }
}
