//! The PID 1 boot sequence inside the VM: mounts, config drive, hostname and DNS, volumes, the
//! agent's listeners, the boot profile (`/etc/bhatti/init.sh`), the init session, the reaper,
//! and power-off.
//!
//! Phase timings are printed on the console (`lohar: boot +12ms mounts_done`) so slow phases
//! show up in the serial log of every boot.

use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use proto::guest::GuestConfig;
use proto::limits::{CONTROL_PORT, FORWARD_PORT};

use crate::config::chain;
use crate::config::{self, Agent, ConfigError, Mode};
use crate::guest_setup::{self, DEFAULT_HOSTNAME, FALLBACK_RESOLV_CONF};
use crate::server::{self, Listener, Port};
use crate::spawn::DEFAULT_PATH;
use crate::{boot_profile, netif, reaper, rootfs, session};

/// Where the config drive appears (the second virtio-blk disk).
const CONFIG_DEVICE: &str = "/dev/vdb";
const CONFIG_MOUNT: &str = "/run/bhatti/config";

struct BootLog {
    start: Instant,
}

impl BootLog {
    fn phase(&self, name: &str) {
        eprintln!("lohar: boot +{}ms {name}", self.start.elapsed().as_millis());
    }
}

fn mkdir(path: &str, mode: u32) {
    let _ = std::fs::DirBuilder::new().recursive(true).mode(mode).create(path);
}

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    mkdir(target, 0o755);
    match mount(Some(source), target, Some(fstype), flags, data) {
        // Already mounted (the kernel mounts devtmpfs itself with DEVTMPFS_MOUNT).
        Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
        Err(e) => eprintln!("lohar: mount {fstype} on {target}: {e}"),
    }
}

/// Runs the agent as PID 1. Never returns.
pub fn run() -> ! {
    let log = BootLog { start: Instant::now() };
    if let Err(e) = reaper::block_signals() {
        eprintln!("lohar: cannot block signals: {e}");
    }
    // SAFETY: no other thread exists yet, so nothing can read the environment concurrently.
    unsafe {
        std::env::set_var("PATH", DEFAULT_PATH);
        std::env::set_var("HOME", "/root");
    }
    mount_early();
    if let Ok(uptime) = std::fs::read_to_string("/proc/uptime") {
        eprintln!(
            "lohar: started at guest uptime {}s",
            uptime.split_whitespace().next().unwrap_or("?")
        );
    }
    log.phase("mounts_done");
    let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu +memory +io +pids");
    if let Err(e) = netif::bring_up("lo") {
        eprintln!("lohar: lo up: {e}");
    }
    log.phase("lo_up");
    mkdir("/run/systemd/system", 0o755);
    mkdir("/run/bhatti", 0o755);

    grow_root();
    log.phase("rootfs_grown");

    let (config, refusal) = match config::decide(Mode::Vm, false, read_config_drive()) {
        Ok(config) => (config, None),
        Err(refusal) => (GuestConfig::default(), Some(refusal)),
    };
    apply_config(&config);
    log.phase("config_applied");
    check_network();
    log.phase("network_done");

    let agent = Arc::new(Agent::new(config, Mode::Vm));
    match refusal {
        None => serve(&agent, &log),
        // Fail closed: without a token anyone who reaches the guest could run commands. PID 1
        // goes on (reaping, power-off on SIGTERM); the host sees a guest that never gets ready.
        Some(refusal) => eprintln!(
            "lohar: refusing to serve on ports {CONTROL_PORT} and {FORWARD_PORT}: {refusal}"
        ),
    }
    reaper::run(power_off);
    power_off();
    // `power_off` only returns if the kernel refused; PID 1 must never exit.
    loop {
        std::thread::park();
    }
}

fn mount_early() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nosuid, None);
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None);
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, None);
    let _ =
        std::fs::set_permissions("/dev/fuse", std::os::unix::fs::PermissionsExt::from_mode(0o666));
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    );
    mount_fs("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"));
    mount_fs("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"));
    mount_fs("tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"));
    mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None);
    mount_fs("binfmt_misc", "/proc/sys/fs/binfmt_misc", "binfmt_misc", nosuid, None);
}

/// Grows the root filesystem to fill its disk (the host may have grown the disk since the
/// image was made). A failure is only reported: the guest works with the smaller filesystem.
fn grow_root() {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let Some(device) = rootfs::root_device(&read("/proc/cmdline"), &read("/proc/self/mountinfo"))
    else {
        eprintln!("lohar: cannot grow the root filesystem: {}", rootfs::GrowError::NoDevice);
        return;
    };
    let started = Instant::now();
    match rootfs::grow(Path::new("/"), &device) {
        Ok(Some(growth)) => eprintln!(
            "lohar: root filesystem grown from {} to {} blocks in {} ms",
            growth.from,
            growth.to,
            started.elapsed().as_millis()
        ),
        Ok(None) => {}
        Err(e) => eprintln!(
            "lohar: cannot grow the root filesystem on {}: {}",
            device.display(),
            chain(&e)
        ),
    }
}

/// Listens on the control and forward ports, then starts the boot profile and the init
/// session.
fn serve(agent: &Arc<Agent>, log: &BootLog) {
    for (port, which) in [(CONTROL_PORT, Port::Control), (FORWARD_PORT, Port::Forward)] {
        match TcpListener::bind(("0.0.0.0", port)) {
            Ok(listener) => {
                let agent = Arc::clone(agent);
                std::thread::spawn(move || server::serve(agent, Listener::Tcp(listener), which));
            }
            Err(e) => eprintln!("lohar: listen on port {port}: {e}"),
        }
    }
    log.phase("tcp_listen");
    eprintln!("lohar: ready");
    write_config_env(&agent.config);
    boot_profile::start(Path::new(boot_profile::PATH), &agent.config.env, boot_profile::TIMEOUT);
    if !agent.config.init.is_empty()
        && let Err(e) = session::start_init(&agent.sessions, &agent.config)
    {
        eprintln!("lohar: init session: {e}");
    }
}

/// Reads `config.json` from the config drive, then unmounts and removes it: the token and env
/// are plaintext and must not stay readable.
fn read_config_drive() -> Result<GuestConfig, ConfigError> {
    if !Path::new(CONFIG_DEVICE).exists() {
        return Err(ConfigError::Missing(CONFIG_DEVICE.to_owned()));
    }
    mkdir(CONFIG_MOUNT, 0o700);
    if let Err(source) =
        mount(Some(CONFIG_DEVICE), CONFIG_MOUNT, Some("ext4"), MsFlags::MS_RDONLY, None::<&str>)
    {
        let _ = std::fs::remove_dir(CONFIG_MOUNT);
        return Err(ConfigError::Mount { device: CONFIG_DEVICE.to_owned(), source });
    }
    let config = crate::config::load(&Path::new(CONFIG_MOUNT).join("config.json"));
    if let Err(e) = umount2(CONFIG_MOUNT, MntFlags::MNT_DETACH) {
        eprintln!("lohar: unmount config drive: {e}");
    }
    let _ = std::fs::remove_dir(CONFIG_MOUNT);
    config
}

fn apply_config(config: &GuestConfig) {
    let hostname = if config.hostname.is_empty() { DEFAULT_HOSTNAME } else { &config.hostname };
    if let Err(e) = nix::unistd::sethostname(hostname) {
        eprintln!("lohar: sethostname: {e}");
    }
    if let Err(e) = guest_setup::write_hostname_files(Path::new("/"), hostname) {
        eprintln!("lohar: hostname files: {e}");
    }
    let resolv = guest_setup::build_resolv_conf(&config.dns_internal, &config.dns);
    let resolv = if resolv.is_empty() { FALLBACK_RESOLV_CONF.to_owned() } else { resolv };
    if let Err(e) = guest_setup::write_resolv_conf(Path::new("/"), &resolv) {
        eprintln!("lohar: resolv.conf: {e}");
    }
    for (path, file) in &config.files {
        if let Err(e) = guest_setup::write_file(Path::new("/"), path, file) {
            eprintln!("lohar: config file {e}");
        }
    }
    for volume in &config.volumes {
        if let Err(e) = guest_setup::mount_volume(volume) {
            eprintln!("lohar: volume: {e}");
        }
    }
}

/// The kernel configures the interface from `ip=` (CONFIG_IP_PNP) before init runs; say so on
/// the console if it did not, since the host will not reach the agent then.
fn check_network() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(ip) = netif::parse_kernel_ip(&cmdline) else {
        eprintln!("lohar: no ip= on the kernel command line; networking left alone");
        return;
    };
    let carrier = std::fs::read_to_string(format!("/sys/class/net/{}/operstate", ip.device))
        .unwrap_or_default();
    eprintln!("lohar: {} is {} with {}", ip.device, carrier.trim(), ip.client);
}

/// Config env for unit files (`EnvironmentFile=`), readable by root only (v1 wrote it 0644,
/// exposing secrets to every user in the guest).
fn write_config_env(config: &GuestConfig) {
    if config.env.is_empty() {
        return;
    }
    let text: String = config.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open("/run/bhatti/config-env")
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if let Err(e) = written {
        eprintln!("lohar: config-env: {e}");
    }
}

/// SIGTERM/SIGINT: stop every process, flush the disks, power off.
fn power_off() {
    eprintln!("lohar: powering off");
    // From PID 1, kill(-1) signals every other process; give them a moment to exit cleanly.
    let _ =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let _ =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::Signal::SIGKILL);
    nix::unistd::sync();
    // A microvm without ACPI has no power-off device: RB_POWER_OFF only halts the vCPU and QEMU
    // keeps running. The engine boots with `reboot=t` and runs QEMU with `-no-reboot`, so a
    // restart (a triple fault) makes QEMU exit: that is our power-off.
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    eprintln!("lohar: power off: {e}");
}
