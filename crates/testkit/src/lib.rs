//! Test support shared by the suites that run the real `lohar` in test mode (lohar's own
//! handler suites and the host client's): start it on Unix sockets in a temp dir, wait until it
//! is ready, drain its stderr, and stop it so it leaves no process behind.
// Test-only code: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to start it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options<'a> {
    /// Content of a `config.json` (token, env, init), as the config drive would give.
    pub config: Option<&'a [u8]>,
    /// Extra environment (`LOHAR_TCP_CONTROL=127.0.0.1:0`, ...).
    pub env: &'a [(&'a str, &'a str)],
    /// Show lohar's stderr lines (prefixed `[lohar]`) instead of only draining them.
    pub echo_stderr: bool,
}

/// A `lohar` process in test mode.
#[derive(Debug)]
pub struct TestLohar {
    child: Child,
    dir: Option<tempfile::TempDir>,
    /// Addresses lohar printed for its optional TCP listeners, by variable
    /// (`LOHAR_TCP_CONTROL`, `LOHAR_TCP_FORWARD`).
    pub tcp: BTreeMap<String, String>,
}

impl TestLohar {
    /// Starts `bin` in test mode with its sockets in `dir` (made writable for the guest user,
    /// uid 1000, that commands run as); returns once it printed `test mode ready`.
    pub fn start(bin: &Path, dir: tempfile::TempDir, options: Options<'_>) -> Self {
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let mut cmd = Command::new(bin);
        cmd.env("LOHAR_TEST", "1")
            .env("LOHAR_SOCK", dir.path().join("control.sock"))
            .env("LOHAR_FWD_SOCK", dir.path().join("forward.sock"))
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(config) = options.config {
            let path = dir.path().join("config.json");
            std::fs::write(&path, config).unwrap();
            cmd.env("LOHAR_CONFIG", &path);
        }
        for (k, v) in options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start lohar");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut tcp = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "lohar did not become ready");
            let line = lines.next().expect("lohar exited before it was ready").unwrap();
            if let Some((var, addr)) = line.strip_prefix("lohar: ").and_then(|l| l.split_once('='))
            {
                tcp.insert(var.to_owned(), addr.to_owned());
            }
            if line.contains("test mode ready") {
                break;
            }
            if options.echo_stderr {
                eprintln!("[lohar] {line}");
            }
        }
        // Keep draining stderr so the agent never blocks on a full pipe.
        let echo = options.echo_stderr;
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if echo {
                    eprintln!("[lohar] {line}");
                }
            }
        });
        TestLohar { child, dir: Some(dir), tcp }
    }

    /// The directory holding the sockets (and whatever the test puts there).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(tempfile::TempDir::path).unwrap()
    }

    /// The control socket.
    pub fn control(&self) -> PathBuf {
        self.dir().join("control.sock")
    }

    /// The forward socket.
    pub fn forward(&self) -> PathBuf {
        self.dir().join("forward.sock")
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the agent; returns how it exited (`None`: it had to be killed) and its directory
    /// (for a successor on the same sockets).
    pub fn stop(mut self) -> (Option<ExitStatus>, tempfile::TempDir) {
        let status = self.terminate();
        (status, self.dir.take().unwrap())
    }

    /// SIGTERM (test-mode lohar then kills every command it started and exits), SIGKILL after
    /// 10 s. Returns the exit status of a clean exit.
    fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for TestLohar {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}
