//! One accepted connection, over TCP (production) or a Unix socket (test mode).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A stream socket of either family; the handlers do not care which.
#[derive(Debug)]
pub enum Conn {
    /// Guest TCP listener (ports 1024/1025).
    Tcp(TcpStream),
    /// Test-mode Unix socket listener.
    Unix(UnixStream),
}

impl Conn {
    /// A second handle to the same socket (for a writer thread or a shutdown handle).
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    /// Shuts the socket down for every handle; a blocked reader on a clone wakes up.
    pub fn shutdown(&self, how: Shutdown) {
        // Ignored: the only failure is "not connected", which is the state we want anyway.
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        };
    }

    /// Sets or clears the read deadline.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(timeout),
            Conn::Unix(s) => s.set_read_timeout(timeout),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Tcp(s) => s.as_fd(),
            Conn::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// One place in a bounded count of connections, given back when dropped.
#[derive(Debug)]
pub struct CountSlot<'a>(&'a AtomicUsize);

impl<'a> CountSlot<'a> {
    /// Takes a place if fewer than `limit` are taken.
    pub fn take(counter: &'a AtomicUsize, limit: usize) -> Option<Self> {
        // Counted before the check, so concurrent takers cannot both see room for one.
        let slot = CountSlot(counter);
        (counter.fetch_add(1, Ordering::SeqCst) < limit).then_some(slot)
    }
}

impl Drop for CountSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
