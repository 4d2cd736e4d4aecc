//! Baselines measured in the same run: an [`engine::Engine`] in this process on its own
//! namespace (the daemon's work without HTTP), and the same kernel and image booted by a bare
//! QEMU command line (the floor a create is compared to).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::{AgentClient, Endpoint};
use anyhow::Context;

use crate::daemon::kill_processes_naming;

/// Token of the bare QEMU's config drive (lohar serves only with one).
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Deadline of every engine call the runner makes.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// The in-process engine; its QEMUs and namespace go when dropped.
pub struct Baseline {
    // Dropped first: the engine's QEMUs die before the namespace goes.
    pub engine: engine::Engine,
    pub config: engine::EngineConfig,
    pub artifacts: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Baseline {
    pub async fn new(artifacts: &Path) -> anyhow::Result<Baseline> {
        Self::with(artifacts, "be", 250, |_| {}).await
    }

    /// An in-process engine with a changed config, on a namespace (`bhatti-<tag><pid>`) and a
    /// /24 (third octet `octet`) of its own, so it can run beside [`Baseline::new`]'s.
    pub async fn with(
        artifacts: &Path,
        tag: &str,
        octet: u8,
        change: impl FnOnce(&mut engine::EngineConfig),
    ) -> anyhow::Result<Baseline> {
        let dir = tempfile::Builder::new().prefix("bhatti-bench-engine-").tempdir()?;
        let pid = std::process::id();
        let mut config = engine::EngineConfig {
            netns: format!("bhatti-{tag}{pid}"),
            subnet: format!("10.{}.{octet}.0/24", pid % 100 + 20)
                .parse()
                .map_err(|e| anyhow::anyhow!("subnet: {e:?}"))?,
            ..engine::EngineConfig::new(
                dir.path().join("engine"),
                artifacts.join("kernel/current/vmlinux"),
            )
        };
        change(&mut config);
        let engine = tokio::time::timeout(DEADLINE, engine::Engine::new(config.clone()))
            .await
            .context("engine start timed out")??;
        Ok(Baseline { engine, config, artifacts: artifacts.to_owned(), dir })
    }

    /// The directory of an engine sandbox.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        engine::layout::DataDir::new(&self.config.data_dir).sandbox(id).dir().to_owned()
    }

    /// Runs `argv` as root in the guest; a non-zero exit is an error.
    pub async fn exec_root(&self, id: &str, argv: &[&str]) -> anyhow::Result<()> {
        let mut req = agent::ExecRequest::command(argv.iter().copied());
        req.user = Some("root".into());
        let out = Self::call(self.engine.exec_request(id, &req, DEADLINE)).await?;
        anyhow::ensure!(
            out.exit_code == 0,
            "exit {}: {}",
            out.exit_code,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub fn image(&self, name: &str) -> PathBuf {
        self.artifacts.join("images").join(name).join("current/rootfs.ext4")
    }

    pub fn spec(&self, id: &str, memory_mib: u32) -> engine::CreateSpec {
        let mut spec = engine::CreateSpec::new(id, self.image("test"));
        spec.memory_mib = memory_mib;
        spec
    }

    /// Runs one engine call under the runner's deadline.
    pub async fn call<T, E: std::error::Error + Send + Sync + 'static>(
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> anyhow::Result<T> {
        Ok(tokio::time::timeout(DEADLINE, f).await.context("timed out")??)
    }

    pub async fn exec(&self, id: &str, argv: &[&str]) -> anyhow::Result<()> {
        let out = Self::call(self.engine.exec(id, argv)).await?;
        anyhow::ensure!(out.exit_code == 0, "exit {}", out.exit_code);
        Ok(())
    }

    /// QEMU's VmRSS (MiB) of an engine sandbox.
    pub fn qemu_rss_mib(&self, id: &str) -> anyhow::Result<f64> {
        let dir = engine::layout::DataDir::new(&self.config.data_dir).sandbox(id).dir().to_owned();
        crate::daemon::qemu_rss_mib(&dir.join("qemu.pid"))
    }

    /// Boots the test image with a hand-written QEMU command line (the image with
    /// `snapshot=on`, anonymous RAM, a config drive holding only the token) on a TAP in the
    /// engine's namespace; returns spawn -> agent ready in ms. The same command line as
    /// `crates/engine/tests/create_vs_bare.rs`.
    pub async fn bare_boot(&self, run: usize, memory_mib: u32) -> anyhow::Result<f64> {
        let kernel = self.artifacts.join("kernel/current/vmlinux");
        let image = self.image("test");
        let gateway = self.config.subnet.gateway();
        let ip = Ipv4Addr::from(u32::from(gateway) + 240);
        // One TAP name, MAC and address for every bare boot, each admitted and removed again: a
        // new MAC on a reused address leaves the namespace's neighbour entry pointing at the
        // old one, and boots then wait seconds for it to expire.
        let _ = run;
        let tap_name = "tapbare".to_owned();
        let mac = [0x52, 0x54, 0x00, 0xee, 0x00, 0x00];
        let port = engine::isolation::Port { tap: tap_name.clone(), mac, ip, group: 1 };
        Self::call(engine::isolation::admit(self.engine.netns(), &port)).await?;
        let tap = Self::call(self.engine.netns().open_tap(&tap_name, &self.config.bridge)).await?;
        let dir = tempfile::tempdir_in(self.dir.path())?;
        let drive = dir.path().join("config.ext4");
        let guest = proto::guest::GuestConfig { token: TOKEN.into(), ..Default::default() };
        Self::call(engine::configdrive::build(&guest, &drive)).await?;
        let accel = vmm::Accel::Auto.resolve().map_err(|e| anyhow::anyhow!("{e}"))?;
        let cmdline = engine::vm::kernel_cmdline(ip, gateway, 24, accel);
        let serial = dir.path().join("serial.log");
        let mut cmd = engine::vm::bare_qemu_command(&engine::vm::BareBoot {
            kernel: &kernel,
            image: &image,
            config_drive: &drive,
            serial_log: &serial,
            cmdline: &cmdline,
            memory_mib,
            accel,
            mac,
            tap_fd: tap.as_raw_fd(),
        });
        let client = AgentClient::new(
            Endpoint::TcpInNetns {
                netns: self.engine.netns().path().to_owned(),
                control: SocketAddr::new(IpAddr::V4(ip), 1024),
                forward: SocketAddr::new(IpAddr::V4(ip), 1025),
                device: None,
            },
            Some(TOKEN.into()),
        );
        let t = Instant::now();
        let mut child = cmd.spawn().context("spawning qemu-system-x86_64")?;
        drop(tap);
        let ready = client.wait_ready(Duration::from_secs(120)).await;
        let took = crate::report::ms(t.elapsed());
        let _ = child.kill().await;
        let _ = child.wait().await;
        let _ = Self::call(engine::isolation::remove(self.engine.netns(), &tap_name)).await;
        ready.map_err(|e| anyhow::anyhow!("bare QEMU never became ready: {e}"))?;
        Ok(took)
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        kill_processes_naming(self.dir.path());
        let _ =
            std::process::Command::new("ip").args(["netns", "delete", &self.config.netns]).status();
    }
}
