//! A running QEMU process and its QMP connection.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::accel::Accelerator;
use crate::cmdline::qemu_args;
use crate::config::VmConfig;
use crate::error::VmmError;
use crate::qmp::Qmp;

/// QEMU output kept for error messages.
const STDERR_KEEP: usize = 16 * 1024;

/// A QEMU process. Dropping it kills QEMU.
#[derive(Debug)]
pub struct QemuProcess {
    child: Child,
    /// The negotiated QMP session.
    pub qmp: Qmp,
    /// QEMU's PID.
    pub pid: u32,
    /// The accelerator in use.
    pub accel: Accelerator,
    /// When the process was spawned.
    pub spawned_at: Instant,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl QemuProcess {
    /// Starts QEMU and connects QMP, within `timeout`. `tap` is passed to QEMU as the descriptor
    /// number in `cfg.net`.
    pub async fn start(
        cfg: &VmConfig,
        tap: Option<OwnedFd>,
        timeout: Duration,
    ) -> Result<Self, VmmError> {
        if !cfg.kernel.exists() {
            return Err(VmmError::Missing { what: "kernel", path: cfg.kernel.clone() });
        }
        for disk in &cfg.disks {
            if !disk.path.exists() {
                return Err(VmmError::Missing { what: "disk image", path: disk.path.clone() });
            }
        }
        let accel = cfg.accel.resolve()?;
        // Encoded before the fork: the child may only make system calls.
        let jail =
            cfg.jail.as_ref().map(crate::jail::Jail::plan).transpose().map_err(VmmError::Jail)?;
        let _ = std::fs::remove_file(&cfg.qmp_socket);
        let mut cmd = Command::new(&cfg.qemu);
        cmd.args(qemu_args(cfg, accel))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let (Some(tap), Some(net)) = (tap.as_ref(), cfg.net.as_ref()) {
            let (src, dst) = (tap.as_raw_fd(), net.tap_fd);
            // SAFETY: runs in the forked child before exec and only calls dup2/fcntl, which are
            // async-signal-safe, on descriptors that stay open across the fork.
            unsafe {
                cmd.pre_exec(move || {
                    if src == dst {
                        // Same number: only clear close-on-exec.
                        if libc::fcntl(dst, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(src, dst) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(plan) = jail {
            // SAFETY: runs in the forked child before exec (after the TAP is in place) and
            // makes only system calls on the plan, which was prepared before the fork.
            unsafe {
                cmd.pre_exec(move || plan.enter());
            }
        }
        let spawned_at = Instant::now();
        let binary = cfg.qemu.display().to_string();
        let confined = cfg.jail.is_some();
        let mut child = cmd.spawn().map_err(|source| {
            // The child's confinement steps fail with nothing but an errno; say where it happened.
            if confined { VmmError::Jail(source) } else { VmmError::Spawn { binary, source } }
        })?;
        drop(tap);
        let pid = child.id().unwrap_or(0);
        // Off the async threads and alongside QEMU's own start-up (see `Jail::cgroup_procs`).
        let joining = cfg.jail.as_ref().filter(|_| cfg.joins_cgroups_after_spawn()).map(|jail| {
            let procs = jail.cgroup_procs.clone();
            tokio::task::spawn_blocking(move || crate::jail::join_cgroups(pid, &procs))
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let keep = Arc::clone(&stderr);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut kept = keep.lock().unwrap_or_else(|e| e.into_inner());
                    kept.extend_from_slice(&buf[..n]);
                    let excess = kept.len().saturating_sub(STDERR_KEEP);
                    kept.drain(..excess);
                }
            });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let qmp = loop {
            if let Some(status) = child.try_wait()? {
                // Give the stderr reader a moment to collect QEMU's last words.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(VmmError::EarlyExit {
                    status: status.to_string(),
                    output: text(&stderr),
                });
            }
            if cfg.qmp_socket.exists() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match Qmp::connect(&cfg.qmp_socket, left).await {
                    Ok(qmp) => break qmp,
                    // Not listening yet, or closed during the greeting: try again.
                    Err(VmmError::Connect { .. } | VmmError::Io(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(VmmError::Timeout { op: "QEMU start".into(), after: timeout });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        if let Some(joining) = joining {
            let joined = joining.await.map_err(|e| std::io::Error::other(e.to_string()));
            if let Err(e) = joined.and_then(|r| r) {
                let _ = child.start_kill();
                return Err(VmmError::Jail(e));
            }
            if !cfg.start_paused && !cfg.incoming {
                qmp.cont(timeout).await?;
            }
        }
        Ok(Self { child, qmp, pid, accel, spawned_at, stderr })
    }

    /// What QEMU printed on stderr (the last 16 KiB).
    pub fn stderr(&self) -> String {
        text(&self.stderr)
    }

    /// Waits for QEMU to exit on its own.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, VmmError> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| VmmError::Timeout { op: "QEMU exit".into(), after: timeout })?
            .map_err(VmmError::Io)
    }

    /// SIGKILLs QEMU and reaps it.
    pub async fn kill(&mut self) -> Result<(), VmmError> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().await?;
        }
        Ok(())
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
    }
}

impl Drop for QemuProcess {
    /// Kills QEMU and reaps it before returning (bounded to 1 s), so no zombie outlives us even
    /// when the runtime that would reap it in the background is shutting down.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.start_kill();
            for _ in 0..200 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}
