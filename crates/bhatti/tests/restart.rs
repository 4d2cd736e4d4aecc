//! `bhatti serve` as a real process with real VMs: killed with SIGKILL while sandboxes are hot
//! and cold, started again, every sandbox comes back usable with its files and its name; a
//! clean SIGTERM suspends everything and the next start wakes sandboxes with their memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;

fn artifacts_dir() -> PathBuf {
    std::env::var_os("BHATTI_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/bhatti".into())
}

/// One daemon configuration (data directory, namespace, port) and the processes started on it.
struct Setup {
    data: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    netns: String,
    subnet: String,
    child: Option<Child>,
}

impl Setup {
    fn new() -> Self {
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("config.yaml");
        std::fs::write(&config, "log_format: text\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pid = std::process::id();
        Setup {
            netns: format!("bhatti-r{pid}"),
            subnet: format!("10.{}.250.0/24", pid % 200 + 20),
            data,
            config,
            port,
            child: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts `bhatti serve` and waits until it answers.
    async fn start(&mut self) {
        let artifacts = artifacts_dir();
        let child = Command::new(env!("CARGO_BIN_EXE_bhatti"))
            .arg("serve")
            .env("BHATTI_CONFIG", &self.config)
            .env("BHATTI_DATA_DIR", self.data.path().join("state"))
            .env("BHATTI_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("BHATTI_NETNS", &self.netns)
            .env("BHATTI_SUBNET", &self.subnet)
            .env("BHATTI_KERNEL", artifacts.join("kernel/current/vmlinux"))
            .env("BHATTI_IMAGES_DIR", artifacts.join("images"))
            .env("BHATTI_DEFAULT_IMAGE", "test")
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

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.data.path().join(f)).unwrap_or_default();
        format!("{}\n{}", read("daemon.err"), read("daemon.log"))
    }

    fn key(&self) -> String {
        std::fs::read_to_string(self.data.path().join("state/admin.key")).unwrap().trim().to_owned()
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new().request(method, self.url(path)).bearer_auth(self.key())
    }

    fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and the exit status within the shutdown's deadline.
    fn terminate(&mut self) -> std::process::ExitStatus {
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
        let _ = Command::new("ip").args(["netns", "delete", &self.netns]).status();
    }
}

fn kill_qemus_under(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

async fn exec(s: &Setup, name: &str, cmd: &[&str]) -> api::ExecResult {
    let r = s
        .req(Method::POST, &format!("/sandboxes/{name}/exec"))
        .json(&serde_json::json!({ "cmd": cmd }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    r.json().await.unwrap()
}

async fn create(s: &Setup, name: &str) {
    let body = serde_json::json!({ "name": name, "memory_mb": 128 });
    let r = s.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

async fn write_file(s: &Setup, name: &str, path: &str, data: &str) {
    let r = s
        .req(Method::PUT, &format!("/sandboxes/{name}/files?path={path}"))
        .body(data.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn read_file(s: &Setup, name: &str, path: &str) -> String {
    let r =
        s.req(Method::GET, &format!("/sandboxes/{name}/files?path={path}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{name}:{path}");
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_loses_no_sandbox_and_a_stopped_one_keeps_memory() {
    let mut s = Setup::new();
    s.start().await;
    for name in ["hot", "cold"] {
        create(&s, name).await;
        write_file(&s, name, "/home/lohar/note.txt", &format!("kept by {name}")).await;
    }
    let r = s.req(Method::POST, "/sandboxes/cold/stop").send().await.unwrap();
    assert_eq!(r.status(), 200);

    // SIGKILL: no shutdown code runs; hot's QEMU is orphaned.
    s.kill();
    s.start().await;
    let list: Vec<api::Sandbox> =
        s.req(Method::GET, "/sandboxes").send().await.unwrap().json().await.unwrap();
    let mut names: Vec<&str> = list.iter().map(|x| x.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["cold", "hot"], "{}", s.logs());
    for name in ["hot", "cold"] {
        assert_eq!(read_file(&s, name, "/home/lohar/note.txt").await, format!("kept by {name}"));
        assert_eq!(exec(&s, name, &["echo", "alive"]).await.stdout, "alive\n");
    }

    // A process started now survives a clean stop of the daemon: SIGTERM suspends with memory.
    let r = s
        .req(Method::POST, "/sandboxes/hot/exec")
        .json(&serde_json::json!({ "cmd": ["sleep", "600"], "detach": true }))
        .send()
        .await
        .unwrap();
    let pid = r.json::<api::DetachedResult>().await.unwrap().pid;
    let status = s.terminate();
    assert!(status.success(), "{status}: {}", s.logs());
    s.start().await;
    let alive = exec(&s, "hot", &["kill", "-0", &pid.to_string()]).await;
    assert_eq!(alive.exit_code, 0, "the process did not survive: {}", s.logs());
    assert_eq!(read_file(&s, "cold", "/home/lohar/note.txt").await, "kept by cold");
    let status = s.terminate();
    assert!(status.success(), "{status}");
}
