//! Pseudo-terminal allocation and window size.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;
use nix::pty::{Winsize, grantpt, posix_openpt, ptsname_r, unlockpt};
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

/// Opens a PTY pair with the given window size. Both ends are close-on-exec from the moment
/// they exist (`openpty` leaves them inheritable, so every command started meanwhile on another
/// thread would inherit other sessions' terminals, and a leaked slave keeps a session from ever
/// seeing EOF). The child gets its own non-CLOEXEC copies through its stdio.
pub fn open(size: WindowSize) -> io::Result<Pty> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave_path = ptsname_r(&master)?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(slave_path)?
        .into();
    // SAFETY: the descriptor comes from posix_openpt and is owned by nobody else.
    let master = unsafe { File::from_raw_fd(master.into_raw_fd()) };
    resize(&master, size)?;
    Ok(Pty { master, slave })
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
