//! QEMUs an engine did not start in this life: ones a dead engine left running, or one a
//! create cut short left dying. Each is recognised by its recorded pid *and* its command line,
//! so a recycled pid is never killed.

use std::path::Path;
use std::time::Duration;

/// Whether a QEMU command line (NUL-separated arguments) is the one of the sandbox whose QMP
/// socket is `qmp_socket`: one argument must name exactly that socket (a sandbox whose
/// directory name is a prefix of another's does not match the other's QEMU).
fn is_sandbox_qemu(cmdline: &[u8], qmp_socket: &Path) -> bool {
    let wanted = format!("unix:{},", qmp_socket.display());
    cmdline.split(|b| *b == 0).any(|arg| arg.starts_with(wanted.as_bytes()))
}

/// Kills the QEMU whose pid is in `pid_file` if it is still running *and* is the sandbox's
/// whose QMP socket is `qmp_socket`: its command line must name that socket (a recycled pid
/// belongs to someone else and is left alone). The pid file may be in a directory that moved
/// since; the socket is the path QEMU was started with. Returns whether one was killed. Blocks
/// up to 1 s while the process goes: call it from a blocking thread.
pub fn kill_recorded(pid_file: &Path, qmp_socket: &Path) -> bool {
    let recorded =
        std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok());
    // No pid file: the engine died between spawning QEMU and recording its pid (QEMU waits,
    // paused, for a parent that is gone). Its command line still names the socket.
    let pid = match recorded {
        Some(pid) => pid,
        None => match find_by_socket(qmp_socket) {
            Some(pid) => pid,
            None => return false,
        },
    };
    if pid <= 1 {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !is_sandbox_qemu(&cmdline, qmp_socket) {
        return false;
    }
    let killed =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            .is_ok();
    // It is not our child any more (its parent died), so init reaps it; wait until it is gone.
    for _ in 0..200 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.is_empty() || state.contains(") Z") {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    killed
}

/// The process whose command line names exactly `qmp_socket` (one sandbox's QEMU), by a scan
/// of /proc: only for a QEMU whose pid was never recorded.
fn find_by_socket(qmp_socket: &Path) -> Option<i32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        is_sandbox_qemu(&cmdline, qmp_socket).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_matches_its_own_socket_only() {
        let cmd = b"qemu-system-x86_64\0-qmp\0unix:/d/sandboxes/abc/qmp.sock,server=on,wait=off\0";
        assert!(is_sandbox_qemu(cmd, Path::new("/d/sandboxes/abc/qmp.sock")));
        // A directory whose name is a prefix of another's is not the other.
        assert!(!is_sandbox_qemu(cmd, Path::new("/d/sandboxes/ab/qmp.sock")));
        assert!(!is_sandbox_qemu(cmd, Path::new("/d/sandboxes/abc/qmp")));
        assert!(!is_sandbox_qemu(b"", Path::new("/d/sandboxes/abc/qmp.sock")));
    }
}
