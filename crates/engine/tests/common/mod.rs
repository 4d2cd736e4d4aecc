//! Harness for real-VM tests: a private network namespace per test, the cached kernel and test
//! image, and a booted QEMU microvm reached by the real agent client over TCP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agent::{AgentClient, Endpoint};
use engine::net::Netns;
use proto::guest::GuestConfig;
use vmm::{Disk, DiskFormat, NetDevice, QemuProcess, VmConfig};

pub fn data_dir() -> PathBuf {
    std::env::var_os("BHATTI_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/bhatti"))
}

/// The cached guest kernel and test image (built by `images/kernel/build` and
/// `images/rootfs/build-test`, which `scripts/test` runs first).
pub fn artifacts() -> (PathBuf, PathBuf) {
    let kernel = data_dir().join("kernel/current/vmlinux");
    let image = data_dir().join("images/test/current/rootfs.ext4");
    assert!(kernel.exists(), "{} missing: run images/kernel/build", kernel.display());
    assert!(image.exists(), "{} missing: run images/rootfs/build-test", image.display());
    (kernel, image)
}

/// The host TSC rate in kHz. Under TCG the guest often fails to calibrate its TSC and falls back
/// to a 10 ms jiffies clock; telling it the rate fixes that.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz")?.split(':').nth(1)?.trim().parse().ok())?;
    Some((mhz * 1000.0) as u64)
}

pub fn kernel_cmdline(ip: Ipv4Addr, gateway: Ipv4Addr) -> String {
    let mut cmdline = format!(
        "console=ttyS0 reboot=t panic=-1 root=/dev/vda rw rootfstype=ext4 init=/usr/local/bin/lohar \
         ip={ip}::{gateway}:255.255.255.0::eth0:off no_timer_check tsc=reliable lpj=5000000 \
         mitigations=off quiet loglevel=1"
    );
    if let Some(khz) = host_tsc_khz() {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    if vmm::Accel::Auto.resolve().ok() == Some(vmm::Accelerator::Tcg) {
        // QEMU's emulated APIC timer runs at 1 GHz: 10,000,000 ticks per jiffy at HZ=100.
        // Giving it skips a 100 ms calibration against the PIT. (Under KVM the rate differs.)
        cmdline.push_str(" lapic_timer_period=10000000");
    }
    cmdline.push_str(" 8250.nr_uarts=1");
    cmdline
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a bridge, deleted (with every TAP in it) when dropped, also when the
/// test panics.
pub struct TestNet {
    pub ns: Netns,
    pub subnet: u8,
}

impl TestNet {
    pub async fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("bhatti-t{}-{n}", std::process::id());
        let ns = Netns::create(&name).await.unwrap();
        // Addresses exist only inside the namespace; the subnet just has to differ per test net.
        let subnet = ((std::process::id() + n) % 200 + 20) as u8;
        ns.setup_bridge("br0", Ipv4Addr::new(10, subnet, 0, 1), 24).await.unwrap();
        TestNet { ns, subnet }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 1)
    }

    pub fn guest_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, host)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "delete", self.ns.name()]).status();
    }
}

pub struct BootedVm {
    pub qemu: QemuProcess,
    pub client: AgentClient,
    pub dir: tempfile::TempDir,
    pub ip: Ipv4Addr,
    /// QEMU spawn to the first successful authenticated exec.
    pub ready_after: Duration,
}

impl BootedVm {
    pub fn serial_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serial.log")).unwrap_or_default()
    }
}

pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Boots the test image as guest `host` on `net` and waits for the agent.
pub async fn boot(net: &TestNet, host: u8, memory_mib: u32) -> BootedVm {
    let (kernel, image) = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("root.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&image)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(status.success());
    let config_drive = dir.path().join("config.ext4");
    let guest =
        GuestConfig { hostname: format!("vm{host}"), token: TOKEN.into(), ..Default::default() };
    engine::configdrive::build(&guest, &config_drive).await.unwrap();
    let tap = net.ns.open_tap(&format!("tap{host}"), "br0").await.unwrap();
    let ip = net.guest_ip(host);
    let mut cfg = VmConfig::new(
        kernel,
        kernel_cmdline(ip, net.gateway()),
        dir.path().join("serial.log"),
        dir.path().join("qmp.sock"),
    );
    cfg.memory.size_mib = memory_mib;
    cfg.disks.push(Disk { path: overlay, format: DiskFormat::Qcow2, read_only: false });
    cfg.disks.push(Disk { path: config_drive, format: DiskFormat::Raw, read_only: true });
    cfg.net =
        Some(NetDevice { tap_fd: 3, mac: format!("52:54:00:00:{:02x}:{host:02x}", net.subnet) });
    let qemu = QemuProcess::start(&cfg, Some(tap), Duration::from_secs(10)).await.unwrap();
    let endpoint = Endpoint::TcpInNetns {
        netns: net.ns.path().to_owned(),
        control: SocketAddr::new(IpAddr::V4(ip), 1024),
        forward: SocketAddr::new(IpAddr::V4(ip), 1025),
    };
    let client = AgentClient::new(endpoint, Some(TOKEN.into()));
    let ready = client.wait_ready(Duration::from_secs(60)).await;
    let ready_after = qemu.spawned_at.elapsed();
    let vm = BootedVm { qemu, client, dir, ip, ready_after };
    if std::env::var_os("BHATTI_TEST_SERIAL").is_some() {
        eprintln!("{}", vm.serial_log());
    }
    if let Err(e) = ready {
        panic!(
            "agent not ready: {e}\nserial log:\n{}\nqemu stderr:\n{}",
            vm.serial_log(),
            vm.qemu.stderr()
        );
    }
    vm
}

/// p-th percentile (nearest rank) of a sample.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

pub fn now() -> Instant {
    Instant::now()
}
