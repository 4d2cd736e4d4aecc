//! Booting one guest: a qcow2 overlay over the base image, a config drive, a TAP in the engine's
//! namespace, QEMU, and the agent client waiting until the guest answers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::{AgentClient, Endpoint};
use proto::guest::GuestConfig;
use tokio::process::Command;
use vmm::{Accel, Accelerator, Disk, DiskFormat, NetDevice, QemuProcess, VmConfig};

use crate::error::EngineError;
use crate::layout::SandboxFiles;
use crate::machine::{Backend, Fut, Machine, Saved, Signal};
use crate::net::Netns;
use crate::run::run;

/// The serial console is rotated once it passes this size (the guest writes it, so it must
/// not grow without bound): the newest part moves to `serial.log.1`, the log starts again.
pub const SERIAL_LOG_CAP: u64 = 1024 * 1024;
/// How much of the console an error message carries.
const CONSOLE_TAIL: u64 = 16 * 1024;

/// The descriptor number QEMU sees for the TAP.
const TAP_FD: i32 = 3;

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
    pub accel: Accel,
    /// Host caching of the disks.
    pub disk_cache: vmm::DiskCache,
    /// How long to wait for the agent.
    pub ready_timeout: Duration,
    /// Confine QEMU (see `jail`); `None` only for benchmark baselines.
    pub confine: Option<crate::jail::Confinement>,
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
    /// QEMU spawn to the first successful authenticated exec.
    pub ready_after: Duration,
    /// The VM's files.
    pub files: SandboxFiles,
    /// QMP events of this QEMU (stops, I/O errors), read by the sandbox's owner.
    pub events: tokio::sync::broadcast::Receiver<vmm::qmp::Event>,
    /// Removes the QEMU's cgroup once the QEMU (declared first, so dropped first) is gone.
    _cgroup: Option<crate::jail::CgroupGuard>,
}

impl Vm {
    /// The end of the serial console (at most 16 KiB: what an error message can carry).
    pub fn serial_log(&self) -> String {
        console_tail(&self.files, CONSOLE_TAIL)
    }
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

/// The last `max` bytes of the serial console (the rotated generation included).
pub fn console_tail(files: &SandboxFiles, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let tail = |path: PathBuf, max: u64| -> Vec<u8> {
        let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(len.saturating_sub(max))).is_ok() {
            let _ = file.take(max).read_to_end(&mut buf);
        }
        buf
    };
    let newest = tail(files.serial_log(), max);
    let rest = max.saturating_sub(newest.len() as u64);
    let mut text = if rest > 0 { tail(files.serial_log_old(), rest) } else { Vec::new() };
    text.extend_from_slice(&newest);
    String::from_utf8_lossy(&text).into_owned()
}

/// Keeps the console log bounded: past [`SERIAL_LOG_CAP`], its newest 64 KiB move to the old
/// generation and the log is truncated (QEMU appends, so it goes on writing at the new end).
pub fn cap_console(files: &SandboxFiles) -> std::io::Result<bool> {
    let len = std::fs::metadata(files.serial_log()).map(|m| m.len()).unwrap_or(0);
    if len <= SERIAL_LOG_CAP {
        return Ok(false);
    }
    std::fs::write(
        files.serial_log_old(),
        console_tail(&SandboxFiles::new(files.dir()), 64 * 1024),
    )?;
    std::fs::OpenOptions::new().write(true).open(files.serial_log())?.set_len(0)?;
    Ok(true)
}

/// The host TSC rate in kHz, for guests under TCG, which read the host's TSC but cannot
/// calibrate against it in time and fall back to a 10 ms jiffies clock. From a stable source:
/// the kernel's own `tsc_freq_khz` where it exists, else measured once against
/// CLOCK_MONOTONIC_RAW (the "cpu MHz" line of /proc/cpuinfo follows frequency scaling and is
/// not the TSC rate).
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .or_else(measure_tsc_khz)
    })
}

/// Counts TSC ticks over 50 ms of CLOCK_MONOTONIC_RAW, rounded to 1 MHz (the invariant TSC
/// runs at a fixed rate; the rounding hides the measurement's own jitter).
#[cfg(target_arch = "x86_64")]
fn measure_tsc_khz() -> Option<u64> {
    use nix::time::{ClockId, clock_gettime};
    let raw = || clock_gettime(ClockId::CLOCK_MONOTONIC_RAW).ok();
    let ns = |t: nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
    let (t0, c0) = (raw()?, rdtsc());
    std::thread::sleep(Duration::from_millis(50));
    let (t1, c1) = (raw()?, rdtsc());
    let elapsed_ns = ns(t1) - ns(t0);
    if elapsed_ns <= 0 || c1 <= c0 {
        return None;
    }
    let khz = (i128::from(c1 - c0) * 1_000_000 / elapsed_ns) as u64;
    Some((khz + 500) / 1000 * 1000)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_tsc_khz() -> Option<u64> {
    None
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The kernel command line for a guest at `ip` behind `gateway`.
pub fn kernel_cmdline(ip: Ipv4Addr, gateway: Ipv4Addr, prefix: u8, accel: Accelerator) -> String {
    let mask = crate::net::prefix_to_mask(prefix);
    let mut cmdline = format!(
        "console=ttyS0 reboot=t panic=-1 root=/dev/vda rw rootfstype=ext4 init=/usr/local/bin/lohar \
         ip={ip}::{gateway}:{mask}::eth0:off no_timer_check tsc=reliable lpj=5000000 \
         mitigations=off quiet loglevel=1 8250.nr_uarts=1"
    );
    // Under KVM the guest calibrates its TSC itself (and KVM may scale it); only TCG needs it.
    if accel == Accelerator::Tcg
        && let Some(khz) = host_tsc_khz()
    {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    if accel == Accelerator::Tcg {
        // QEMU's emulated APIC timer runs at 1 GHz: 10,000,000 ticks per jiffy at HZ=100.
        // Giving it skips a 100 ms calibration against the PIT. (Under KVM the rate differs.)
        cmdline.push_str(" lapic_timer_period=10000000");
    }
    cmdline
}

pub(crate) fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Boots a guest and waits until its agent runs `true`. On failure the error carries the
/// console log; QEMU is killed.
pub async fn boot(ns: &Netns, spec: &BootSpec) -> Result<Vm, EngineError> {
    let dir = spec.files.dir();
    std::fs::create_dir_all(dir)?;
    // Console logs and the config drive are the owner's business only.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let overlay = spec.files.overlay();
    // A sandbox booted again (after a crash or a daemon restart) keeps its disk.
    if !overlay.exists() {
        let partial = spec.files.overlay_partial();
        let mut create = Command::new("qemu-img");
        create
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&spec.image)
            .arg(&partial);
        // The overlay's virtual size: the guest grows its root filesystem to fill it at boot.
        if let Some(mib) = spec.disk_size_mib {
            create.arg(format!("{mib}M"));
        }
        run(&mut create, Duration::from_secs(30)).await?;
        std::fs::rename(&partial, &overlay)?;
    }
    let config_drive = spec.files.config_drive();
    crate::configdrive::build(&spec.guest, &config_drive).await?;
    ns.set_neighbour(&spec.bridge, spec.ip, spec.mac).await?;
    let tap = ns.open_tap(&spec.tap, &spec.bridge).await?;
    let started = start_qemu(spec, &vm_config(spec)?, tap).await?;
    let client = agent_client(ns, spec);
    let ready = client.wait_ready(spec.ready_timeout).await;
    let ready_after = started.qemu.spawned_at.elapsed();
    let vm = Vm::new(started, client, spec, ready_after);
    match ready {
        Ok(_) => Ok(vm),
        Err(source) => Err(EngineError::NotReady { source, console: vm.serial_log() }),
    }
}

/// The VMM configuration of a boot spec (what [`boot`] and the restores start QEMU with). A
/// confined spec's files are handed to its jail's uid here.
pub fn vm_config(spec: &BootSpec) -> Result<VmConfig, EngineError> {
    let accel = spec.accel.resolve()?;
    let mut cfg = VmConfig::new(
        spec.kernel.clone(),
        kernel_cmdline(spec.ip, spec.gateway, spec.prefix, accel),
        spec.files.serial_log(),
        spec.files.qmp_socket(),
    );
    cfg.accel = spec.accel;
    cfg.disk_cache = spec.disk_cache;
    cfg.memory.size_mib = spec.memory_mib;
    cfg.memory.file = spec.memory_file.clone();
    cfg.vcpus = spec.vcpus;
    cfg.disks.push(Disk {
        path: spec.files.overlay(),
        format: DiskFormat::Qcow2,
        read_only: false,
    });
    cfg.disks.push(Disk {
        path: spec.files.config_drive(),
        format: DiskFormat::Raw,
        read_only: true,
    });
    for volume in &spec.volumes {
        cfg.disks.push(Disk {
            path: volume.path.clone(),
            format: DiskFormat::Raw,
            read_only: volume.read_only,
        });
    }
    cfg.net = Some(NetDevice { tap_fd: TAP_FD, mac: mac_text(spec.mac) });
    if let Some(confinement) = &spec.confine {
        let host = crate::jail::HostFiles::get()?;
        cfg.qemu = host.qemu.clone();
        // The volumes are the disks after the overlay and the config drive.
        let sandbox = crate::jail::Sandbox {
            ip: spec.ip,
            files: &spec.files,
            kernel: &spec.kernel,
            image: &spec.image,
            volumes: cfg.disks.get(2..).unwrap_or_default(),
            memory_mib: spec.memory_mib,
        };
        let jail = crate::jail::prepare(&sandbox, confinement, accel, host)?;
        cfg.jail = Some(jail);
    }
    Ok(cfg)
}

pub(crate) fn agent_client(ns: &Netns, spec: &BootSpec) -> Arc<AgentClient> {
    Arc::new(client_at(ns, spec, spec.ip, None))
}

/// A client of the agent at `ip`, through `device` only when given.
fn client_at(ns: &Netns, spec: &BootSpec, ip: Ipv4Addr, device: Option<&str>) -> AgentClient {
    let endpoint = Endpoint::TcpInNetns {
        netns: ns.path().to_owned(),
        control: SocketAddr::new(IpAddr::V4(ip), proto::limits::CONTROL_PORT),
        forward: SocketAddr::new(IpAddr::V4(ip), proto::limits::FORWARD_PORT),
        device: device.map(str::to_owned),
    };
    let token = Some(spec.guest.token.clone()).filter(|t| !t.is_empty());
    AgentClient::new(endpoint, token)
}

/// Starts QEMU for a restore on `tap`, loads `state` and runs the guest. The state file is
/// consumed once the guest runs (its RAM moves on, so loading the state again would corrupt it):
/// it is removed right after `cont`.
async fn start_incoming(
    spec: &BootSpec,
    tap: std::os::fd::OwnedFd,
    state: &Path,
) -> Result<(Started, [Duration; 3]), EngineError> {
    let t0 = Instant::now();
    let mut cfg = vm_config(spec)?;
    cfg.incoming = true;
    let mut run = start_qemu(spec, &cfg, tap).await?;
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

/// A started QEMU and its cgroup's guard, dropped in that order: the QEMU is gone before its
/// cgroup is removed.
#[derive(Debug)]
struct Started {
    qemu: QemuProcess,
    cgroup: Option<crate::jail::CgroupGuard>,
}

/// Starts QEMU for `spec` (boot or restore), records its pid and bounds its vCPUs. The cgroup
/// `vm_config` made is removed again when the start fails here or the VM ends later.
async fn start_qemu(
    spec: &BootSpec,
    cfg: &VmConfig,
    tap: std::os::fd::OwnedFd,
) -> Result<Started, EngineError> {
    let name = cfg.jail.as_ref().and_then(crate::jail::cgroup_of);
    let cgroup = name.clone().map(crate::jail::CgroupGuard::new);
    let qemu = QemuProcess::start(cfg, Some(tap), Duration::from_secs(10)).await?;
    record_pid(&spec.files, qemu.pid);
    if let (Some(name), Some(confinement)) = (&name, &spec.confine) {
        crate::jail::bound_vcpus(&qemu, name, confinement.cpu_millis).await?;
    }
    Ok(Started { qemu, cgroup })
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
        return Err(EngineError::Tool {
            tool: "suspend".into(),
            message: "the VM has no memory file".into(),
        });
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
        tracing::warn!("QEMU did not take quit after a save: {e}");
    }
    if vm.qemu.wait(Duration::from_secs(10)).await.is_err() {
        vm.qemu.kill().await?;
    }
    // Only pages the guest dirtied since the last flush are written; still seconds on a slow
    // disk with a big guest, so off the async threads. The disk and the writable volumes are
    // flushed too: a cold sandbox must survive a power loss with what its guest wrote.
    let (ram, state_path) = (spec.memory_file.clone(), state.to_owned());
    let mut disks = vec![spec.files.overlay()];
    disks.extend(spec.volumes.iter().filter(|v| !v.read_only).map(|v| v.path.clone()));
    let (fsync, disk_fsync) =
        tokio::task::spawn_blocking(move || -> std::io::Result<(Duration, Duration)> {
            let t0 = Instant::now();
            if let Some(ram) = ram {
                std::fs::File::open(ram)?.sync_data()?;
            }
            std::fs::File::open(&state_path)?.sync_all()?;
            let memory = t0.elapsed();
            for disk in disks {
                std::fs::File::open(disk)?.sync_data()?;
            }
            Ok((memory, t0.elapsed() - memory))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
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

/// Starts QEMU again from a suspended VM's RAM file and device state, on a new TAP, and waits
/// until the agent answers.
///
/// Pass the client `suspend_to_disk` returned: its pooled connections were open when the state
/// was saved, and they work again after the restore (the host side lives in the namespace, the
/// guest side in the restored RAM). A connection opened after a restore is slow under TCG: the
/// new QEMU starts with an empty translation cache and a new connection runs guest code paths
/// (SYN, accept, a new agent thread) that an open one does not.
pub async fn resume_from_disk(
    ns: &Netns,
    spec: &BootSpec,
    state: &Path,
    client: Option<Arc<AgentClient>>,
) -> Result<Vm, EngineError> {
    let t0 = Instant::now();
    ns.set_neighbour(&spec.bridge, spec.ip, spec.mac).await?;
    let tap = ns.open_tap(&spec.tap, &spec.bridge).await?;
    let t_tap = t0.elapsed();
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
        ready = ?t0.elapsed(),
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
pub async fn resume_moved(
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

/// Warm: pauses the vCPUs; memory stays.
pub async fn pause(vm: &Vm) -> Result<(), EngineError> {
    Ok(vm.qemu.qmp.stop(Duration::from_secs(5)).await?)
}

/// Wakes a paused VM and corrects its clock, which stood still while it was paused.
pub async fn resume(vm: &Vm) -> Result<(), EngineError> {
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

impl Vm {
    fn new(started: Started, client: Arc<AgentClient>, spec: &BootSpec, ready_after: Duration) -> Self {
        let Started { qemu, cgroup } = started;
        let events = qemu.qmp.subscribe();
        let files = spec.files.clone();
        Vm { qemu, client, ip: spec.ip, ready_after, files, events, _cgroup: cgroup }
    }
}

fn record_pid(files: &SandboxFiles, pid: u32) {
    if let Err(e) = std::fs::write(files.pid_file(), format!("{pid}\n")) {
        tracing::warn!("cannot record QEMU's pid in {}: {e}", files.dir().display());
    }
}

/// Whether a QEMU command line (NUL-separated arguments) is the one of the sandbox whose QMP
/// socket is `qmp_socket`: one argument must name exactly that socket (a sandbox whose
/// directory name is a prefix of another's does not match the other's QEMU).
fn is_sandbox_qemu(cmdline: &[u8], qmp_socket: &Path) -> bool {
    let wanted = format!("unix:{},", qmp_socket.display());
    cmdline.split(|b| *b == 0).any(|arg| arg.starts_with(wanted.as_bytes()))
}

/// Kills the QEMU recorded in a sandbox directory if it is still running *and* is that
/// sandbox's: its command line must name the sandbox's QMP socket (a recycled PID belongs to
/// someone else and is left alone). Returns whether one was killed. Blocks up to 1 s while the
/// process goes: call it from a blocking thread.
pub fn kill_orphan(files: &SandboxFiles) -> bool {
    kill_recorded(&files.pid_file(), &files.qmp_socket())
}

/// [`kill_orphan`] for a directory that was moved: the pid from `pid_file`, the QEMU matched by
/// the QMP socket it was started with.
pub fn kill_recorded(pid_file: &Path, qmp_socket: &Path) -> bool {
    let Some(pid) =
        std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return false;
    };
    if pid <= 1 {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !is_sandbox_qemu(&cmdline, qmp_socket) {
        return false;
    }
    let killed =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            .is_ok();
    // It is not our child any more (its parent died), so init reaps it; wait until it is gone.
    for _ in 0..200 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.is_empty() || state.contains(") Z") {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    killed
}

/// QEMU as the engine's [`Backend`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Qemu;

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
            resume_from_disk(ns, spec, state, client).await.map(|vm| Box::new(vm) as Box<dyn Machine>)
        })
    }

    fn restore_moved<'a>(
        &'a self,
        ns: &'a Netns,
        spec: &'a BootSpec,
        state: &'a Path,
        from: Ipv4Addr,
    ) -> Fut<'a, Result<Box<dyn Machine>, EngineError>> {
        Box::pin(async move {
            resume_moved(ns, spec, state, from).await.map(|vm| Box::new(vm) as Box<dyn Machine>)
        })
    }
}

impl Machine for Vm {
    fn client(&self) -> &Arc<AgentClient> {
        &self.client
    }

    fn pause(&self) -> Fut<'_, Result<(), EngineError>> {
        Box::pin(pause(self))
    }

    fn resume(&self) -> Fut<'_, Result<(), EngineError>> {
        Box::pin(resume(self))
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
                        Ok(vmm::qmp::Event::BlockIoError {
                            nospace: true,
                            action: vmm::qmp::IoErrorAction::Stop,
                            ..
                        }) => return Signal::DiskFull,
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
        Box::pin(async move { Ok(self.qemu.kill().await?) })
    }

}

/// What a bare QEMU boot (a baseline for the engine's create: no overlay, no RAM file, no QMP)
/// is made of.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug)]
pub struct BareBoot<'a> {
    /// Guest kernel.
    pub kernel: &'a Path,
    /// Root image, used with `snapshot=on` (never written).
    pub image: &'a Path,
    /// A config drive (lohar serves nothing without its token).
    pub config_drive: &'a Path,
    /// Where the console goes.
    pub serial_log: &'a Path,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM.
    pub memory_mib: u32,
    /// TCG or KVM.
    pub accel: Accelerator,
    /// Guest MAC.
    pub mac: [u8; 6],
    /// The TAP, passed as descriptor 3; keep it open until the command is spawned.
    pub tap_fd: std::os::fd::RawFd,
}

/// The hand-written QEMU command line of a bare boot, for the benchmarks' and tests' baseline:
/// one definition, so both measure the same thing.
#[cfg(any(test, feature = "test-support"))]
pub fn bare_qemu_command(b: &BareBoot<'_>) -> Command {
    let accel = match b.accel {
        Accelerator::Kvm => "kvm",
        Accelerator::Tcg => "tcg,tb-size=64",
    };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "microvm,acpi=off,x-option-roms=off", "-accel", accel])
        .args(["-cpu", "max", "-m", &format!("{}M", b.memory_mib), "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-kernel"])
        .arg(b.kernel)
        .args(["-append", b.cmdline, "-serial"])
        .arg(format!("file:{}", b.serial_log.display()))
        .arg("-drive")
        .arg(format!("id=root,file={},format=raw,if=none,snapshot=on", b.image.display()))
        .args(["-device", "virtio-blk-device,drive=root", "-drive"])
        .arg(format!("id=cfg,file={},format=raw,if=none,read-only=on", b.config_drive.display()))
        .args(["-device", "virtio-blk-device,drive=cfg"])
        .args(["-netdev", "tap,id=n0,fd=3,vhost=off", "-device"])
        .arg(format!("virtio-net-device,netdev=n0,mac={}", mac_text(b.mac)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let fd = b.tap_fd;
    // SAFETY: runs in the forked child before exec and only calls dup2, which is
    // async-signal-safe, on a descriptor that stays open across the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_matches_its_own_socket_only() {
        let cmd = b"qemu-system-x86_64\0-qmp\0unix:/d/sandboxes/abc/qmp.sock,server=on,wait=off\0";
        assert!(is_sandbox_qemu(cmd, Path::new("/d/sandboxes/abc/qmp.sock")));
        // A directory whose name is a prefix of another's is not the other.
        assert!(!is_sandbox_qemu(cmd, Path::new("/d/sandboxes/ab/qmp.sock")));
        assert!(!is_sandbox_qemu(cmd, Path::new("/d/sandboxes/abc/qmp")));
        assert!(!is_sandbox_qemu(b"", Path::new("/d/sandboxes/abc/qmp.sock")));
    }

    #[test]
    fn the_console_is_capped_and_its_tail_survives() {
        let dir = tempfile::tempdir().unwrap();
        let files = SandboxFiles::new(dir.path());
        std::fs::write(files.serial_log(), b"boot line\n").unwrap();
        assert!(!cap_console(&files).unwrap());
        let big = vec![b'x'; SERIAL_LOG_CAP as usize + 10];
        let mut content = big.clone();
        content.extend_from_slice(b"last words\n");
        std::fs::write(files.serial_log(), &content).unwrap();
        assert!(cap_console(&files).unwrap());
        assert_eq!(std::fs::metadata(files.serial_log()).unwrap().len(), 0);
        assert!(std::fs::metadata(files.serial_log_old()).unwrap().len() <= 64 * 1024);
        assert!(console_tail(&files, 100).ends_with("last words\n"));
    }

    #[test]
    fn the_tsc_rate_comes_from_a_stable_source() {
        // Two reads agree exactly (measured once, cached) and the rate is plausible.
        let khz = host_tsc_khz().expect("x86_64 hosts have a TSC");
        assert_eq!(host_tsc_khz(), Some(khz));
        assert!((500_000..10_000_000).contains(&khz), "{khz} kHz");
    }
}
