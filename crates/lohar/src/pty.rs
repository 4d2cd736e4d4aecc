//! Pseudo-terminal allocation and window size.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::pty::{Winsize, openpty};
use proto::payload::WindowSize;

/// A PTY pair: the agent keeps `master`, the child gets `slave` as stdio.
#[derive(Debug)]
pub struct Pty {
    /// Agent side.
    pub master: File,
    /// Child side; the agent must drop its copy after spawning or EOF never arrives.
    pub slave: OwnedFd,
}

fn winsize(size: WindowSize) -> Winsize {
    Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 }
}

/// Opens a PTY pair with the given window size.
pub fn open(size: WindowSize) -> io::Result<Pty> {
    let pair = openpty(Some(&winsize(size)), None)?;
    Ok(Pty { master: File::from(pair.master), slave: pair.slave })
}

/// Applies a new window size to the terminal behind `master`.
pub fn resize(master: &File, size: WindowSize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points at a live,
    // properly initialised value for the duration of the call.
    let rc =
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ as _, &ws as *const Winsize) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
