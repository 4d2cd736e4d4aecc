//! Output pipes after the command exits: `poll` with a deadline, the bounded drain, and the
//! hand-off of pipes that are still open.
//!
//! A command's background children (`sh -c 'server &'`) inherit its stdout and stderr, so the
//! pipes reach EOF only when the last of them exits, which for a dev server is never. The exec
//! and session pumps therefore stop at the command's own exit plus [`EXIT_DRAIN`], and whatever
//! pipe is still open then goes to [`discard_until_eof`], so the background child can keep
//! writing (closing the read end would kill it with SIGPIPE on its next write).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// How long output is still read after the command exited. Output the command wrote before it
/// exited is already in the pipe, and reading a pipe that holds data is a matter of
/// microseconds, so this bound only matters when a background child keeps the pipe open: then
/// it is added to every such exec's latency. 200 ms covers output still in flight from a child
/// that exits together with the command (a pipeline's last stage under a loaded 2-core guest
/// under TCG) and stays well below what a person or an agent notices as a hang.
pub const EXIT_DRAIN: Duration = Duration::from_millis(200);

/// The `poll` timeout in milliseconds until `deadline`; -1 (wait forever) without one.
pub fn timeout_ms(deadline: Option<Instant>) -> libc::c_int {
    match deadline {
        None => -1,
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            // Round up, so a deadline 0.4 ms away does not become a busy loop of 0 ms polls.
            libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
        }
    }
}

/// True once `deadline` has passed.
pub fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|at| Instant::now() >= at)
}

/// Polls the present candidates (fd, events) for at most `timeout_ms` (-1: no limit) and returns
/// each slot's `revents` (0 for absent slots and on timeout). Raw `poll(2)` because nix's flag
/// type drops bits it does not name, such as POLLRDHUP, which would turn a hang-up into a busy
/// loop.
pub fn poll_slots<const N: usize>(
    candidates: [Option<(RawFd, libc::c_short)>; N],
    timeout_ms: libc::c_int,
) -> [libc::c_short; N] {
    // A fixed array on the stack: this runs once per chunk of output.
    let mut slots = [None; N];
    let mut fds = [libc::pollfd { fd: -1, events: 0, revents: 0 }; N];
    let mut used = 0;
    for (slot, candidate) in candidates.into_iter().enumerate() {
        if let Some((fd, events)) = candidate {
            slots[slot] = Some(used);
            fds[used] = libc::pollfd { fd, events, revents: 0 };
            used += 1;
        }
    }
    // SAFETY: the first `used` entries of `fds` are valid pollfd structs for the duration of the
    // call, and every descriptor in them is owned by the caller and open.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), used as libc::nfds_t, timeout_ms) };
    if rc < 0 && std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
        // Not expected with valid descriptors; avoid a hot loop if it ever happens.
        std::thread::sleep(Duration::from_millis(1));
    }
    slots.map(|slot| slot.map_or(0, |i| fds[i].revents))
}

/// Reads and drops whatever still arrives on `pipes` until each reaches EOF, on a thread of its
/// own, so background children that inherited them never block on a full pipe or die of
/// SIGPIPE. The thread ends when the last writer closes its end; it costs one small stack per
/// exec that left a background child holding its output.
pub fn discard_until_eof(pipes: Vec<File>) {
    if pipes.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .stack_size(64 * 1024)
        .spawn(move || discard(pipes));
    // If no thread can be started (the guest is out of memory or threads), the pipes are
    // closed on return and a background child that writes again gets SIGPIPE: the EXIT must
    // not wait for it either way.
    drop(spawned);
}

fn discard(mut pipes: Vec<File>) {
    let mut buf = [0u8; 4096];
    while !pipes.is_empty() {
        let mut fds: Vec<libc::pollfd> = pipes
            .iter()
            .map(|p| libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: `fds` holds valid pollfd structs for open descriptors owned by `pipes`.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let mut keep = Vec::with_capacity(pipes.len());
        for (mut pipe, fd) in pipes.into_iter().zip(&fds) {
            let open = fd.revents == 0
                || match pipe.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock),
                };
            if open {
                keep.push(pipe);
            }
        }
        pipes = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_the_deadline() {
        assert_eq!(timeout_ms(None), -1);
        assert!(!passed(None));
        let soon = Instant::now() + Duration::from_millis(150);
        assert!((1..=150).contains(&timeout_ms(Some(soon))));
        let past = Instant::now() - Duration::from_millis(5);
        assert_eq!(timeout_ms(Some(past)), 0);
        assert!(passed(Some(past)));
    }

    #[test]
    fn poll_with_a_timeout_returns_empty_slots() {
        let (reader, _writer) = std::io::pipe().expect("pipe");
        let started = Instant::now();
        let [ready] = poll_slots([Some((reader.as_raw_fd(), libc::POLLIN))], 20);
        assert_eq!(ready, 0);
        assert!(started.elapsed() >= Duration::from_millis(15));
    }
}
