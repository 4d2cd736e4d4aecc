//! The daemon as a real process for the tests: `Setup` (a data directory, a namespace, a
//! port), `start` waits until it answers, and `Drop` kills what a failed test left.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod e2b;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;

pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("BHATTI_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/bhatti".into())
}

/// One daemon configuration (data directory, namespace, port) and the processes started on it.
pub struct Setup {
    pub data: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub netns: String,
    /// The namespace the daemon's uplink leads into: the tests' stand-in for the host, so a
    /// test daemon never touches the machine's own network.
    pub wan_netns: String,
    pub subnet: String,
    pub child: Option<Child>,
}

impl Setup {
    pub fn new() -> Self {
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("config.yaml");
        // Upstream DNS on the wan namespace's loopback: nothing there, and nothing leaves it.
        // No rate limits to speak of: the suites run bursts of commands (the limits are tested
        // in crates/server's tenancy.rs).
        std::fs::write(
            &config,
            "log_format: text\ndns_upstreams: ['127.0.0.1:53']\nrate_limits: {create: {burst: 1000000, per_minute: 1000000}, exec: {burst: 1000000, per_minute: 1000000}, read: {burst: 1000000, per_minute: 1000000}}\n",
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pid = std::process::id();
        Setup {
            netns: format!("bhatti-r{pid}"),
            wan_netns: format!("bhatti-w{pid}"),
            subnet: format!("10.{}.250.0/24", pid % 200 + 20),
            data,
            config,
            port,
            child: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `bhatti serve` on this setup's configuration (not started).
    pub fn serve_command(&self) -> Command {
        let artifacts = artifacts_dir();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bhatti"));
        cmd.arg("serve")
            .env("BHATTI_CONFIG", &self.config)
            .env("BHATTI_DATA_DIR", self.data.path().join("state"))
            .env("BHATTI_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("BHATTI_NETNS", &self.netns)
            .env("BHATTI_EGRESS_NETNS", &self.wan_netns)
            .env("BHATTI_SUBNET", &self.subnet)
            .env("BHATTI_KERNEL", artifacts.join("kernel/current/vmlinux"))
            .env("BHATTI_IMAGES_DIR", artifacts.join("images"))
            .env("BHATTI_DEFAULT_IMAGE", "test");
        cmd
    }

    /// Starts `bhatti serve` and waits until it answers.
    pub async fn start(&mut self) {
        let child = self
            .serve_command()
            .stdout(std::fs::File::create(self.data.path().join("daemon.log")).unwrap())
            .stderr(std::fs::File::create(self.data.path().join("daemon.err")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(self.url("/health")).await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited ({status}): {}", self.logs());
            }
            assert!(Instant::now() < deadline, "the daemon never answered: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.data.path().join(f)).unwrap_or_default();
        format!("{}\n{}", read("daemon.err"), read("daemon.log"))
    }

    pub fn key(&self) -> String {
        std::fs::read_to_string(self.data.path().join("state/admin.key")).unwrap().trim().to_owned()
    }

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new().request(method, self.url(path)).bearer_auth(self.key())
    }

    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and the exit status within the shutdown's deadline.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Kills what a failed test left: the daemon, QEMUs whose command line names this test's data
/// directory (ours alone), the namespace.
impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_qemus_under(self.data.path());
        // The daemon was killed, so nothing removed its sandboxes' cgroups. A QEMU just killed
        // may still be leaving its cgroup: bounded retries.
        for _ in 0..500 {
            if engine::remove_leftover_cgroups(&self.netns).left == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).status();
        let _ = Command::new("ip").args(["netns", "delete", &self.wan_netns]).status();
    }
}

/// SIGKILLs every QEMU whose command line names `dir` and waits (up to 5 s) until they are gone.
pub fn kill_qemus_under(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    let mut killed = Vec::new();
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed.push(pid);
        }
    }
    // Gone, or a zombie nobody has reaped yet (it has left its cgroups already).
    let gone = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'))
        })
    };
    for _ in 0..500 {
        if killed.iter().all(gone) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// What one `bhatti` run gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
}

/// `bhatti <args>` as a user runs it (the CLI test files share it): with the daemon's URL and key, a private HOME, no terminal.
pub fn bhatti(s: &Setup, args: &[&str]) -> Run {
    let home = s.data.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cli_config = s.data.path().join("cli.yaml");
    std::fs::write(&cli_config, "").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bhatti"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BHATTI_") || k == "SUDO_USER" || k == "XDG_CACHE_HOME" {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .env("BHATTI_CONFIG", &cli_config)
        .env("BHATTI_URL", s.url(""))
        .env("BHATTI_TOKEN", s.key())
        .env("HOME", &home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
