//! Harness for real-VM tests: a private network namespace per test, the cached kernel and test
//! image, and a booted QEMU microvm reached by the real agent client over TCP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use engine::machine::BootSpec;
use engine::net::Netns;
use proto::guest::GuestConfig;

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

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a bridge, deleted (with every TAP in it) when dropped, also when the
/// test panics.
pub struct TestNet {
    pub ns: Netns,
    pub subnet: u8,
    _guard: NetnsGuard,
}

impl TestNet {
    pub async fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("bhatti-t{}-{n}", std::process::id());
        let ns = Netns::create(&name).await.unwrap();
        // Addresses exist only inside the namespace; the subnet just has to differ per test net.
        let subnet = ((std::process::id() + n) % 200 + 20) as u8;
        // The guard exists before anything else can fail, so the namespace is always deleted.
        let net = TestNet { _guard: NetnsGuard(ns.name().to_owned()), ns, subnet };
        net.ns.setup_bridge("br0", net.gateway(), 24).await.unwrap();
        net
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 1)
    }

    pub fn guest_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, host)
    }
}

/// Deletes a network namespace (and every TAP and bridge in it) when dropped, also when the test
/// panics.
pub struct NetnsGuard(pub String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

pub struct BootedVm {
    pub vm: engine::vm::Vm,
    /// Removed when the test ends.
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for BootedVm {
    type Target = engine::vm::Vm;
    fn deref(&self) -> &Self::Target {
        &self.vm
    }
}

impl std::ops::DerefMut for BootedVm {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.vm
    }
}

pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Boots the test image as guest `host` on `net` and waits for the agent.
pub async fn boot(net: &TestNet, host: u8, memory_mib: u32) -> BootedVm {
    boot_with(net, host, memory_mib, GuestConfig::default()).await
}

/// Like [`boot`], with extra config drive content (the token and hostname are set here).
pub async fn boot_with(net: &TestNet, host: u8, memory_mib: u32, guest: GuestConfig) -> BootedVm {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_for(net, host, memory_mib, guest, dir.path(), false);
    let vm = match engine::vm::boot(&net.ns, &spec).await {
        Ok(vm) => vm,
        Err(e) => panic!("boot failed: {e}"),
    };
    if std::env::var_os("BHATTI_TEST_SERIAL").is_some() {
        eprintln!("{}", vm.serial_log());
    }
    BootedVm { vm, dir }
}

/// The boot spec the tests use for guest `host` on `net`, files under `dir`.
pub fn spec_for(
    net: &TestNet,
    host: u8,
    memory_mib: u32,
    mut guest: GuestConfig,
    dir: &std::path::Path,
    memory_file: bool,
) -> BootSpec {
    guest.hostname = format!("vm{host}");
    guest.token = TOKEN.into();
    let (kernel, image) = artifacts();
    BootSpec {
        kernel,
        image,
        files: engine::layout::SandboxFiles::new(dir),
        disk_size_mib: None,
        disk_cache: vmm::DiskCache::default(),
        memory_mib,
        memory_file: memory_file.then(|| dir.join("ram")),
        memory_private: false,
        vcpus: 1,
        guest,
        volumes: Vec::new(),
        ip: net.guest_ip(host),
        gateway: net.gateway(),
        prefix: 24,
        bridge: "br0".into(),
        tap: format!("tap{host}"),
        mac: [0x52, 0x54, 0x00, 0x00, net.subnet, host],
        accel: vmm::Accel::Auto,
        ready_timeout: Duration::from_secs(60),
        free_page_reporting: true,
        confine: Some(engine::jail::Confinement {
            cpu_millis: 1000,
            cgroup: engine::jail::cgroup_name(net.ns.name(), &format!("vm{host}")),
        }),
    }
}

/// p-th percentile (nearest rank) of a sample.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// An engine in its own namespace and data directory, both removed when dropped.
pub struct TestEngine {
    pub engine: engine::Engine,
    pub image: PathBuf,
    pub config: engine::EngineConfig,
    // Dropped after the engine (fields drop in order): QEMUs die before the namespace goes.
    pub data: tempfile::TempDir,
    _guard: NetnsGuard,
}

impl std::ops::Deref for TestEngine {
    type Target = engine::Engine;
    fn deref(&self) -> &engine::Engine {
        &self.engine
    }
}

impl TestEngine {
    /// A test engine from an engine started some other way (its namespace guard and data
    /// directory taken over).
    pub fn from_parts(
        engine: engine::Engine,
        config: engine::EngineConfig,
        data: tempfile::TempDir,
        guard: NetnsGuard,
    ) -> Self {
        TestEngine { engine, image: artifacts().1, config, data, _guard: guard }
    }

    /// Its parts, for a test that restarts the engine on the same namespace and data.
    pub fn into_parts(
        self,
    ) -> (engine::Engine, engine::EngineConfig, tempfile::TempDir, NetnsGuard) {
        (self.engine, self.config, self.data, self._guard)
    }

    /// A sandbox's directory, as the engine's layout names it.
    pub fn dir_of(&self, id: &str) -> PathBuf {
        engine::layout::DataDir::new(self.data.path()).sandbox(id).dir().to_owned()
    }
}

/// The config of a test engine: its own namespace, a /24, one boot at a time.
pub fn engine_config(data: &std::path::Path) -> (engine::EngineConfig, NetnsGuard) {
    let (kernel, _) = artifacts();
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let netns = format!("bhatti-e{}-{n}", std::process::id());
    let guard = NetnsGuard(netns.clone());
    let config = engine::EngineConfig {
        netns,
        subnet: format!("10.{}.{}.0/24", std::process::id() % 200 + 20, n % 250).parse().unwrap(),
        max_concurrent_boots: 1,
        ..engine::EngineConfig::new(data.to_owned(), kernel)
    };
    (config, guard)
}

pub async fn test_engine() -> TestEngine {
    test_engine_with(|_| {}).await
}

/// A test engine with a changed config.
pub async fn test_engine_with(change: impl FnOnce(&mut engine::EngineConfig)) -> TestEngine {
    let data = tempfile::tempdir().unwrap();
    let (mut config, guard) = engine_config(data.path());
    change(&mut config);
    let engine = engine::Engine::new(config.clone()).await.unwrap();
    TestEngine { engine, image: artifacts().1, config, data, _guard: guard }
}

/// A small sandbox of the test image.
pub fn small(name: &str) -> engine::CreateSpec {
    let mut spec = engine::CreateSpec::new(name, artifacts().1);
    spec.memory_mib = 128;
    spec
}

/// Bytes written so far to the block device holding `path` (from /sys/dev/block/*/stat), to
/// measure what an operation cost the disk. `None` where the device has no stat file.
/// Bytes written to the block device holding `path` (its `/sys/dev/block/<dev>/stat`). A
/// measurement that is not available fails the test: it never passes on a zero.
pub fn disk_written_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).unwrap().dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let file = format!("/sys/dev/block/{major}:{minor}/stat");
    let stat = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("measurement unavailable: {file}: {e}"));
    let sectors: u64 = stat.split_whitespace().nth(6).and_then(|s| s.parse().ok()).unwrap();
    sectors * 512
}

/// Bytes this test process caused to be written (`/proc/self/io`); fails the test when the
/// kernel does not account them.
pub fn own_write_bytes() -> u64 {
    engine::vm::process_write_bytes(std::process::id())
        .expect("measurement unavailable: /proc/self/io has no write_bytes")
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50, p95, p99 of a sample (nearest rank).
pub fn p50_95_99(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (percentile(&sorted, 50.0), percentile(&sorted, 95.0), percentile(&sorted, 99.0))
}

/// Starts a long `sleep` in sandbox `name` that outlives the request; returns its PID, to check
/// later that the process survived whatever the test did to the sandbox.
pub async fn start_sleeper(e: &engine::Engine, name: &str) -> i64 {
    let mut sleeper = agent::ExecRequest::command(["sleep", "600"]);
    sleeper.output_file = Some("/tmp/sleeper.log".into());
    e.exec_detached(name, &sleeper).await.unwrap().pid
}

/// Whether process `pid` still runs in sandbox `name` (waking the sandbox if needed).
pub async fn process_alive(e: &engine::Engine, name: &str, pid: i64) -> bool {
    e.exec(name, &["kill", "-0", &pid.to_string()]).await.unwrap().exit_code == 0
}
