//! The boot profile (v1, agent.md 3.2 step 16): when the image has `/etc/bhatti/init.sh`, the
//! agent runs `/bin/sh /etc/bhatti/init.sh` once per boot, as root, with the exec environment
//! (defaults, then the config drive's env) and `HOME=/root`, its stdout and stderr on the
//! agent's stderr (the serial console), after the agent listens.
//!
//! It runs beside the agent in a thread of its own, so the host's readiness probe never waits
//! for it (as in v1). It gets [`TIMEOUT`]; one still running then is killed with its process
//! group (v1 killed only the shell). Something the script means to keep running (a server) is
//! started detached from it (`setsid`), so it survives the script and the timeout. Images use
//! it to start their services (`images/code-interpreter/init.sh`).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::reaper;
use crate::spawn::{self, Grouping, RunAs};

/// Where images put their boot profile.
pub const PATH: &str = "/etc/bhatti/init.sh";

/// How long the script may run (v1's 30 s).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the boot profile at `path` in the background when it exists; returns at once.
pub fn start(path: &Path, config_env: &BTreeMap<String, String>, timeout: Duration) {
    if !path.is_file() {
        return;
    }
    let path = path.to_owned();
    let env = environment(config_env);
    let started = std::thread::Builder::new()
        .name("boot-profile".into())
        .spawn(move || run(&path, &env, timeout));
    if let Err(e) = started {
        eprintln!("lohar: boot profile: cannot start a thread: {e}");
    }
}

/// The exec environment of root, the config env merged in, and `HOME=/root` over both.
fn environment(config_env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env = spawn::build_env(RunAs::Root, config_env, None);
    env.insert("HOME".into(), "/root".into());
    env
}

fn run(path: &Path, env: &BTreeMap<String, String>, timeout: Duration) {
    let started = Instant::now();
    let argv = ["/bin/sh".to_owned(), path.display().to_string()];
    // Both streams go to the agent's stderr: no pipe a background child could hold open.
    let stdout = std::io::stderr().as_fd().try_clone_to_owned();
    let spawned = spawn::command(&argv, env, Some("/"), RunAs::Root, Grouping::Session).and_then(
        |mut cmd| {
            cmd.stdin(Stdio::null()).stdout(Stdio::from(stdout?)).stderr(Stdio::inherit());
            reaper::spawn_watched(&mut cmd)
        },
    );
    let (child, mut watch) = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            eprintln!("lohar: boot profile {}: {e}", path.display());
            return;
        }
    };
    let pid = child.id();
    eprintln!("lohar: boot profile {} started (pid {pid})", path.display());
    if wait_readable(watch.as_fd().as_raw_fd(), timeout) {
        let code = watch.read_code();
        eprintln!(
            "lohar: boot profile {} exited {code} after {} ms",
            path.display(),
            started.elapsed().as_millis()
        );
        return;
    }
    // The script leads its own session, so its group is -pid.
    let pgid = i32::try_from(pid).unwrap_or(0);
    if pgid > 1 {
        let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
    }
    eprintln!(
        "lohar: boot profile {} killed: still running after {} s",
        path.display(),
        timeout.as_secs_f32()
    );
}

/// Waits up to `timeout` for `fd` to become readable (the reaper wrote the exit code).
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd on the stack for the duration of the call.
        let n = unsafe { libc::poll(&mut poll, 1, ms) };
        if n > 0 {
            return true;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_the_exec_one_with_home_root() {
        type Pairs = &'static [(&'static str, &'static str)];
        let rows: [(&str, Pairs, Pairs); 3] = [
            ("defaults", &[], &[("HOME", "/root"), ("PATH", spawn::DEFAULT_PATH)]),
            ("config env merged", &[("FOO", "bar")], &[("FOO", "bar"), ("HOME", "/root")]),
            ("HOME from the config is overridden", &[("HOME", "/x")], &[("HOME", "/root")]),
        ];
        for (name, config, want) in rows {
            let config: BTreeMap<String, String> =
                config.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            let env = environment(&config);
            for (k, v) in want {
                assert_eq!(env.get(*k).map(String::as_str), Some(*v), "{name}: {k}");
            }
        }
    }
}
