//! Booting one guest: a qcow2 overlay over the base image, a config drive, a TAP in the engine's
//! namespace, QEMU (jailed, in its cgroup), and the agent client waiting until the guest answers.
//! Also what every start shares with the restores in `suspend`: the VMM configuration, the
//! start itself, the agent client, the kernel command line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use agent::{AgentClient, Endpoint};
use tokio::process::Command;
use vmm::{Accelerator, Balloon, Disk, DiskFormat, NetDevice, QemuProcess, VmConfig};

use super::Vm;
use crate::error::{EngineError, io_at};
use crate::layout::SandboxFiles;
use crate::machine::BootSpec;
use crate::net::{Netns, mac_text};
use crate::run::run;

/// The descriptor number QEMU sees for the TAP.
const TAP_FD: i32 = 3;

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
        "console=ttyS0 reboot=t panic=-1 root=/dev/vda rw rootfstype=ext4 rootflags=discard \
         init=/usr/local/bin/lohar \
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

/// Boots a guest and waits until its agent runs `true`. On failure the error carries the
/// console log; QEMU is killed.
pub async fn boot(ns: &Netns, spec: &BootSpec) -> Result<Vm, EngineError> {
    let dir = spec.files.dir();
    std::fs::create_dir_all(dir).map_err(io_at("creating", dir))?;
    // Console logs and the config drive are the owner's business only.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io_at("setting the mode of", dir))?;
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
        std::fs::rename(&partial, &overlay).map_err(io_at("renaming", &partial))?;
    }
    let config_drive = spec.files.config_drive();
    crate::configdrive::build(&spec.guest, &config_drive).await?;
    ns.set_neighbour(&spec.bridge, spec.ip, spec.mac).await?;
    let tap = ns.open_tap(&spec.tap, &spec.bridge).await?;
    let mut started = start_qemu(spec, false, tap).await?;
    let client = agent_client(ns, spec);
    // A guest that can never answer (its kernel panicked, its init died: QEMU exits, as
    // `panic=-1` and `-no-reboot` make it) fails at once instead of after `ready_timeout`.
    let ready = tokio::select! {
        ready = client.wait_ready(spec.ready_timeout) => Ok(ready),
        // A little longer than the agent's deadline, so a guest that neither answers nor
        // exits is reported as not ready (with its console), not as a VMM timeout.
        exited = started.qemu.wait(spec.ready_timeout + Duration::from_secs(5)) => Err(exited),
    };
    let ready_after = started.qemu.spawned_at.elapsed();
    let vm = Vm::new(started, client, spec, ready_after);
    match ready {
        Ok(Ok(_)) => Ok(vm),
        Ok(Err(source)) => Err(EngineError::NotReady { source, console: vm.serial_log() }),
        Err(Ok(status)) => {
            Err(EngineError::GuestExited { status: status.to_string(), console: vm.serial_log() })
        }
        // QEMU's exit could not be awaited (or outlived the same deadline the agent had).
        Err(Err(e)) => Err(e.into()),
    }
}

/// The VMM configuration of a boot spec (what [`boot`] and the restores start QEMU with). A
/// confined spec's files are handed to its jail's uid and its cgroup is made here: blocking
/// file-system work (`start_qemu` runs it on a blocking thread).
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
    cfg.memory.private = spec.memory_private;
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
    // Every VM has the balloon (never inflated) for free page reporting: a guest reports the
    // 4 MiB blocks it freed about 2 s later and QEMU punches them out of the RAM file.
    cfg.balloon = Some(Balloon { free_page_reporting: spec.free_page_reporting });
    // Every VM, booted or restored, has a virtio-rng fed by the host's /dev/urandom (part of
    // the clone contract: fresh entropy). A state saved before the device existed still loads:
    // it is the last device, and a device the state does not mention is simply left unprobed.
    cfg.rng = true;
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

pub(super) fn agent_client(ns: &Netns, spec: &BootSpec) -> Arc<AgentClient> {
    Arc::new(client_at(ns, spec, spec.ip, None))
}

/// A client of the agent at `ip`, through `device` only when given.
pub(super) fn client_at(ns: &Netns, spec: &BootSpec, ip: Ipv4Addr, device: Option<&str>) -> AgentClient {
    let endpoint = Endpoint::TcpInNetns {
        netns: ns.path().to_owned(),
        control: SocketAddr::new(IpAddr::V4(ip), proto::limits::CONTROL_PORT),
        forward: SocketAddr::new(IpAddr::V4(ip), proto::limits::FORWARD_PORT),
        device: device.map(str::to_owned),
    };
    let token = Some(spec.guest.token.clone()).filter(|t| !t.is_empty());
    AgentClient::new(endpoint, token)
}

/// A started QEMU and its cgroup's guard, dropped in that order: the QEMU is gone before its
/// cgroup is removed.
#[derive(Debug)]
pub(super) struct Started {
    pub(super) qemu: QemuProcess,
    pub(super) cgroup: Option<crate::jail::CgroupGuard>,
}

/// Starts QEMU for `spec` (a boot, or a restore when `incoming`), records its pid and bounds its
/// vCPUs. The cgroup `vm_config` makes is removed again when the start fails here or the VM ends
/// later.
pub(super) async fn start_qemu(
    spec: &BootSpec,
    incoming: bool,
    tap: std::os::fd::OwnedFd,
) -> Result<Started, EngineError> {
    let owned = spec.clone();
    // Handing the files to the jail's uid and making the cgroup are file-system work, so off
    // the async threads. The guard is made on that thread too: should this future be dropped
    // meanwhile, the task's result (the guard) is dropped with it and the cgroup goes.
    let (mut cfg, cgroup) = tokio::task::spawn_blocking(move || {
        let cfg = vm_config(&owned)?;
        let name = cfg.jail.as_ref().and_then(crate::jail::cgroup_of);
        Ok::<_, EngineError>((cfg, name.map(crate::jail::CgroupGuard::new)))
    })
    .await??;
    cfg.incoming = incoming;
    if incoming {
        // A restore offers reporting whatever this engine boots with: a guest that negotiated
        // it cannot load into a QEMU without it ("Features ... unsupported"), while a guest
        // that did not (or a state saved before the balloon existed) loads either way.
        cfg.balloon = Some(Balloon { free_page_reporting: true });
    }
    let qemu = QemuProcess::start(&cfg, Some(tap), Duration::from_secs(10)).await?;
    record_pid(&spec.files, qemu.pid);
    if let (Some(cgroup), Some(confinement)) = (&cgroup, &spec.confine) {
        crate::jail::bound_vcpus(&qemu, cgroup.name(), confinement.cpu_millis).await?;
    }
    Ok(Started { qemu, cgroup })
}

fn record_pid(files: &SandboxFiles, pid: u32) {
    if let Err(e) = std::fs::write(files.pid_file(), format!("{pid}\n")) {
        tracing::warn!("cannot record QEMU's pid in {}: {e}", files.dir().display());
    }
}

/// What a bare QEMU boot (a baseline for the engine's create: no overlay, no RAM file, no QMP)
/// is made of.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug)]
pub struct BareBoot<'a> {
    /// Guest kernel.
    pub kernel: &'a std::path::Path,
    /// Root image, used with `snapshot=on` (never written).
    pub image: &'a std::path::Path,
    /// A config drive (lohar serves nothing without its token).
    pub config_drive: &'a std::path::Path,
    /// Where the console goes.
    pub serial_log: &'a std::path::Path,
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
    fn the_tsc_rate_comes_from_a_stable_source() {
        // Two reads agree exactly (measured once, cached) and the rate is plausible.
        let khz = host_tsc_khz().expect("x86_64 hosts have a TSC");
        assert_eq!(host_tsc_khz(), Some(khz));
        assert!((500_000..10_000_000).contains(&khz), "{khz} kHz");
    }
}
