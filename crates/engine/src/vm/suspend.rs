//! Thermal changes of a running guest: pause and unpause (warm), suspend to disk (cold: device
//! state saved, RAM in its file, QEMU gone) and the restores that wake it, also under a new
//! address (a sandbox created from a checkpoint beside its source).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::AgentClient;

use super::Vm;
use super::boot::{Started, agent_client, client_at};
use crate::error::{EngineError, Precondition, io_at};
use crate::machine::{BootSpec, Suspended};
use crate::net::{Netns, mac_text};

/// Warm: pauses the vCPUs; memory stays.
pub async fn pause(vm: &Vm) -> Result<(), EngineError> {
    Ok(vm.qemu.qmp.stop(Duration::from_secs(5)).await?)
}

/// Wakes a paused VM and corrects its clock, which stood still while it was paused.
pub async fn unpause(vm: &Vm) -> Result<(), EngineError> {
    vm.qemu.qmp.cont(Duration::from_secs(5)).await?;
    correct_clock(&vm.client).await;
    Ok(())
}

/// Sets the guest clock to the host's. Best effort: an agent without the extension keeps its
/// (late) clock, which is what v1 guests did.
async fn correct_clock(client: &AgentClient) {
    if let Err(e) = client.set_time(std::time::SystemTime::now()).await {
        tracing::debug!("guest clock not corrected: {e}");
    }
}

/// Bytes a process caused to be written to storage (`write_bytes` of `/proc/<pid>/io`).
pub fn process_write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok())
}

/// Cold: pauses the VM, saves its device state to `state` (RAM stays in its memory file),
/// flushes both to disk and ends QEMU, which frees the guest's memory.
#[cfg(any(test, feature = "test-support"))]
pub async fn suspend_to_disk(
    vm: Vm,
    spec: &BootSpec,
    state: &Path,
) -> Result<(Suspended, Arc<AgentClient>), EngineError> {
    let start = Instant::now();
    let saved = save_device_state(&vm, spec, state).await?;
    end_after_save(vm, spec, state, start, saved).await
}

/// First half of a suspend: pauses the vCPUs and writes the device state. The VM is left paused
/// and intact, so a failure here (a full disk, a bad path) loses nothing: the caller can `cont`.
pub async fn save_device_state(
    vm: &Vm,
    spec: &BootSpec,
    state: &Path,
) -> Result<vmm::StateSaved, EngineError> {
    if spec.memory_file.is_none() {
        return Err(EngineError::Precondition(Precondition::NoMemoryFile));
    }
    vm.qemu.qmp.stop(Duration::from_secs(5)).await?;
    Ok(vm.qemu.save_state(state, Duration::from_secs(30)).await?)
}

/// Second half of a suspend: QEMU quits and the RAM file and state reach the disk.
pub async fn end_after_save(
    mut vm: Vm,
    spec: &BootSpec,
    state: &Path,
    started: Instant,
    saved: vmm::StateSaved,
) -> Result<(Suspended, Arc<AgentClient>), EngineError> {
    // Read before QEMU goes: the page-cache writes its guest caused are accounted to it.
    let qemu_written = process_write_bytes(vm.qemu.pid);
    // The state is complete: QEMU goes now, politely or not (quitting flushes its own caches
    // into the host's page cache).
    if let Err(e) = vm.qemu.qmp.quit(Duration::from_secs(5)).await {
        tracing::warn!("QEMU did not take quit after a save: {}", crate::error::Report(&e));
    }
    if vm.qemu.wait(Duration::from_secs(10)).await.is_err() {
        vm.qemu.kill().await?;
    }
    vm.release_cgroup().await;
    // Only pages the guest dirtied since the last flush are written; still seconds on a slow
    // disk with a big guest, so off the async threads. The disk and the writable volumes are
    // flushed too: a cold sandbox must survive a power loss with what its guest wrote.
    let (ram, state_path) = (spec.memory_file.clone(), state.to_owned());
    let mut disks = vec![spec.files.overlay()];
    disks.extend(spec.volumes.iter().filter(|v| !v.read_only).map(|v| v.path.clone()));
    let (fsync, disk_fsync) =
        tokio::task::spawn_blocking(move || -> Result<(Duration, Duration), EngineError> {
            let flush = |path: &Path, all: bool| {
                std::fs::File::open(path)
                    .and_then(|f| if all { f.sync_all() } else { f.sync_data() })
                    .map_err(io_at("flushing", path))
            };
            let t0 = Instant::now();
            if let Some(ram) = ram {
                flush(&ram, false)?;
            }
            flush(&state_path, true)?;
            let memory = t0.elapsed();
            for disk in disks {
                flush(&disk, false)?;
            }
            Ok((memory, t0.elapsed() - memory))
        })
        .await??;
    let suspended = Suspended {
        total: started.elapsed(),
        save: saved.duration,
        fsync,
        disk_fsync,
        state_bytes: saved.bytes,
        bytes_written: qemu_written.map(|b| b + saved.bytes),
    };
    Ok((suspended, vm.client))
}

/// Starts QEMU for a restore on `tap`, loads `state` and runs the guest. The state file is
/// consumed once the guest runs (its RAM moves on, so loading the state again would corrupt it):
/// it is removed right after `cont`.
async fn start_incoming(
    spec: &BootSpec,
    tap: impl Into<super::pool::Incoming>,
    state: &Path,
) -> Result<(Started, [Duration; 3]), EngineError> {
    let t0 = Instant::now();
    let mut run = tap.into().start(spec).await?;
    let qemu = &mut run.qemu;
    let started = t0.elapsed();
    if let Err(source) = qemu.load_state(state, Duration::from_secs(30)).await {
        // QEMU ends on a state it cannot load; what it printed says why.
        let _ = qemu.wait(Duration::from_secs(2)).await;
        let stderr = qemu.stderr().trim().to_owned();
        return Err(EngineError::Restore { source, stderr });
    }
    let loaded = t0.elapsed();
    let cont = qemu.qmp.cont(Duration::from_secs(5)).await;
    // Consumed even when `cont` only timed out: the guest may have run, and its RAM with it.
    if let Err(e) = std::fs::remove_file(state) {
        tracing::warn!("removing the consumed state {}: {e}", state.display());
    }
    cont?;
    Ok((run, [started, loaded, t0.elapsed()]))
}

/// Starts QEMU again from a suspended VM's RAM file and device state, on a new TAP, and waits
/// until the agent answers.
///
/// Pass the client `suspend_to_disk` returned: its pooled connections were open when the state
/// was saved, and they work again after the restore (the host side lives in the namespace, the
/// guest side in the restored RAM). A connection opened after a restore is slow under TCG: the
/// new QEMU starts with an empty translation cache and a new connection runs guest code paths
/// (SYN, accept, a new agent thread) that an open one does not.
#[cfg(any(test, feature = "test-support"))]
pub async fn restore_from_disk(
    ns: &Netns,
    spec: &BootSpec,
    state: &Path,
    client: Option<Arc<AgentClient>>,
) -> Result<Vm, EngineError> {
    restore_pooled(None, ns, spec, state, client).await
}

/// [`restore_from_disk`] with the QEMU `pool` started ahead for this sandbox, if it has one.
pub(super) async fn restore_pooled(
    pool: Option<&super::pool::Pool>,
    ns: &Netns,
    spec: &BootSpec,
    state: &Path,
    client: Option<Arc<AgentClient>>,
) -> Result<Vm, EngineError> {
    let t0 = Instant::now();
    let tap = super::pool::Incoming::take_or_open(pool, ns, spec).await?;
    let (t_tap, pooled) = (t0.elapsed(), tap.is_pooled());
    let (started, [t_qemu, t_load, t_cont]) = start_incoming(spec, tap, state).await?;
    let client = client.unwrap_or_else(|| agent_client(ns, spec));
    // The clock correction doubles as the readiness probe (one round trip instead of two): a
    // pooled connection answers as soon as the guest runs. An agent error (a v1 agent without
    // the extension) still means it answers. Anything else: probe with new connections.
    let ready = match client.set_time(std::time::SystemTime::now()).await {
        Ok(()) | Err(agent::AgentError::Agent(_)) => Ok(()),
        Err(_) => match client.wait_ready(spec.ready_timeout).await {
            Ok(_) => {
                correct_clock(&client).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    // Under TCG nearly all of the time after `cont` is the new QEMU translating guest code again.
    tracing::debug!(
        tap = ?t_tap, qemu = ?(t_tap + t_qemu), load = ?(t_tap + t_load), cont = ?(t_tap + t_cont),
        ready = ?t0.elapsed(), pooled,
        "restored from disk"
    );
    let ready_after = started.qemu.spawned_at.elapsed();
    let vm = Vm::new(started, client, spec, ready_after);
    match ready {
        Ok(()) => Ok(vm),
        Err(source) => Err(EngineError::NotReady { source, console: vm.serial_log() }),
    }
}

/// Resumes saved state whose guest has the address `from` (a checkpoint whose source still
/// runs with it) and moves the guest to `spec.ip` and `spec.mac` before it joins the bridge.
///
/// The restored guest first gets a TAP of its own outside the bridge, wearing the bridge's MAC
/// (the guest addresses its gateway by that MAC, learnt before the checkpoint). The host reaches
/// it there with sockets bound to that TAP, sends SET_NET, and only then attaches the TAP to
/// the bridge: the two guests never share the bridge under one address.
pub async fn restore_moved(
    ns: &Netns,
    spec: &BootSpec,
    state: &Path,
    from: Ipv4Addr,
) -> Result<Vm, EngineError> {
    let bridge_mac = ns.mac(&spec.bridge).await?;
    let tap = ns.open_isolated_tap(&spec.tap, bridge_mac).await?;
    let (started, _) = start_incoming(spec, tap, state).await?;
    let private = client_at(ns, spec, from, Some(&spec.tap));
    let target = proto::messages::SetNet {
        ip: spec.ip,
        prefix: spec.prefix,
        gateway: spec.gateway,
        mac: mac_text(spec.mac),
    };
    // Moved only once the guest answers at its new address, still on the private link: until
    // then it may send as the source (its old connections closing), and a frame with the
    // source's MAC on the bridge would teach the bridge the wrong port.
    let confirm = client_at(ns, spec, spec.ip, Some(&spec.tap));
    let moved = async {
        private.wait_ready(spec.ready_timeout).await?;
        private.set_net(&target).await?;
        drop(private);
        confirm.wait_ready(spec.ready_timeout).await
    }
    .await;
    if let Err(source) = moved {
        let failed = Vm::new(started, Arc::new(confirm), spec, Duration::ZERO);
        return Err(EngineError::NotReady { source, console: failed.serial_log() });
    }
    drop(confirm);
    let o = spec.ip.octets();
    // The TAP's own MAC only has to differ from everything on the bridge.
    ns.join_bridge(&spec.tap, &spec.bridge, [0xfe, 0x54, 0x00, o[1], o[2], o[3]]).await?;
    ns.set_neighbour(&spec.bridge, spec.ip, spec.mac).await?;
    let client = agent_client(ns, spec);
    let ready = client.wait_ready(spec.ready_timeout).await;
    let ready_after = started.qemu.spawned_at.elapsed();
    let vm = Vm::new(started, client, spec, ready_after);
    match ready {
        Ok(_) => {
            correct_clock(&vm.client).await;
            Ok(vm)
        }
        Err(source) => Err(EngineError::NotReady { source, console: vm.serial_log() }),
    }
}
