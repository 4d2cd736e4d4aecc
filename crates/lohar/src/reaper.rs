//! The one place that calls `waitpid`.
//!
//! v1 ran a catch-all `wait4(-1)` reaper next to per-command waits, so the reaper sometimes stole
//! a child and its waiter saw ECHILD (exit code 1). Here a single reaper thread reaps every child
//! and orphan and hands each registered child's exit code to its [`ExitWatch`] through a pipe.
//!
//! Children are spawned while holding the registry lock, and the reaper holds the same lock while
//! it calls `waitpid`. So the reaper can never reap a child between fork and registration, and
//! std's internal `waitpid` on a failed exec (which happens inside `spawn`) never races with it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};

/// Exit code reported when a child's status cannot be known.
const UNKNOWN_EXIT: i32 = 1;

struct Registered {
    notify: Option<File>,
    /// Process group to kill when the agent shuts down (test mode cleanup).
    pgid: Pid,
}

static CHILDREN: OnceLock<Mutex<HashMap<Pid, Registered>>> = OnceLock::new();

fn children() -> MutexGuard<'static, HashMap<Pid, Registered>> {
    // A poisoned registry only means a panic elsewhere; the map itself is still consistent.
    CHILDREN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Receives one child's exit code from the reaper.
#[derive(Debug)]
pub struct ExitWatch {
    pipe: File,
}

impl ExitWatch {
    /// Reads the code once [`AsFd::as_fd`] polled readable.
    pub fn read_code(&mut self) -> i32 {
        let mut bytes = [0u8; 4];
        match self.pipe.read_exact(&mut bytes) {
            Ok(()) => i32::from_be_bytes(bytes),
            Err(_) => UNKNOWN_EXIT,
        }
    }
}

impl AsFd for ExitWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }
}

/// Spawns `cmd` and registers it with the reaper. `pgid` is the child's process group (its own
/// PID when the command sets a new group or session).
pub fn spawn_watched(cmd: &mut Command) -> io::Result<(Child, ExitWatch)> {
    let (read_end, write_end): (OwnedFd, OwnedFd) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut map = children();
    let child = cmd.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    map.insert(pid, Registered { notify: Some(File::from(write_end)), pgid: pid });
    Ok((child, ExitWatch { pipe: File::from(read_end) }))
}

/// Spawns `cmd` with nobody waiting for its exit (detached exec); the reaper still reaps it.
pub fn spawn_unwatched(cmd: &mut Command) -> io::Result<Child> {
    let mut map = children();
    let child = cmd.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    map.insert(pid, Registered { notify: None, pgid: pid });
    Ok(child)
}

fn exit_code(status: WaitStatus) -> Option<(Pid, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, code)),
        WaitStatus::Signaled(pid, signal, _) => Some((pid, 128 + signal as i32)),
        _ => None,
    }
}

/// Reaps every exited child and delivers registered exit codes. Returns how many were reaped.
pub fn reap_all() -> usize {
    let mut map = children();
    let mut reaped = 0;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(status) => {
                let Some((pid, code)) = exit_code(status) else {
                    continue;
                };
                reaped += 1;
                if let Some(Registered { notify: Some(mut pipe), .. }) = map.remove(&pid) {
                    // The watcher may have gone away (connection dropped); nothing to tell then.
                    let _ = pipe.write_all(&code.to_be_bytes());
                }
            }
        }
    }
}

/// SIGKILLs the process group of every child still registered (test-mode shutdown, so tests
/// leave no processes behind).
pub fn kill_all_children() {
    let map = children();
    for reg in map.values() {
        if reg.pgid.as_raw() > 1 {
            let _ = kill(Pid::from_raw(-reg.pgid.as_raw()), Signal::SIGKILL);
        }
    }
}

/// Blocks SIGCHLD, SIGTERM and SIGINT in the calling thread. Call first thing in `main`, before
/// any thread exists, so every thread inherits the mask and only [`run`] receives them. std does
/// *not* reset the mask in spawned children: `spawn::command` clears it before exec.
pub fn block_signals() -> nix::Result<()> {
    handled_signals().thread_block()
}

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// The reaper loop: reaps on SIGCHLD, calls `on_terminate` on SIGTERM/SIGINT. Never returns
/// unless `on_terminate` exits the process.
pub fn run(on_terminate: impl Fn()) {
    let set = handled_signals();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                reap_all();
            }
            Ok(_) => on_terminate(),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}
