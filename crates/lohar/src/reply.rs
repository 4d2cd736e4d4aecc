//! How a handler ends a request: the outcome it leaves on the connection and the ERROR reply.
//!
//! Below every handler (exec, files, forward, session) and below the dispatcher in `server.rs`,
//! so handlers never import the server and the module graph has no cycle.

use std::io::{self, Read};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use proto::{FrameError, FrameType, write_frame};

use crate::conn::Conn;

/// What a handler left behind on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request completed and the stream is at a frame boundary: a reuse connection may
    /// carry the next request.
    Done,
    /// The connection must be closed (an ERROR was sent, a session ended, the host left).
    Close,
}

/// Sends an ERROR frame; the connection is closed afterwards, as in v1.
pub fn send_error(conn: &mut Conn, message: &str) -> Outcome {
    let _ = write_frame(conn, FrameType::ERROR, message.as_bytes());
    Outcome::Close
}

/// How long a refused request's content is drained after the ERROR (see [`refuse_content`]).
const LINGER: Duration = Duration::from_secs(2);

/// Sends ERROR for a request whose content (up to `unread` more bytes in STDIN frames) the host
/// may already be sending, without waiting for that content. Then closes gracefully: our side is
/// shut for writing (the host reads the ERROR, then EOF), and what arrives meanwhile is read and
/// dropped, at most `unread` bytes plus frame headers and at most 2 s, because closing a TCP
/// socket with unread data sends a reset that can destroy the ERROR still in flight.
pub fn refuse_content(conn: &mut Conn, message: &str, unread: u64) -> Outcome {
    if write_frame(conn, FrameType::ERROR, message.as_bytes()).is_err() {
        return Outcome::Close;
    }
    conn.shutdown(Shutdown::Write);
    // Frames of at least 1 KiB carry the content in practice (the host client sends 32 KiB);
    // allow a 5-byte header per KiB on top.
    let mut budget = unread.saturating_add(unread / 1024 * 5 + 64);
    let deadline = Instant::now() + LINGER;
    let mut buf = vec![0u8; 32 * 1024];
    while budget > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            break;
        }
        let want = buf.len().min(usize::try_from(budget).unwrap_or(usize::MAX));
        match conn.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => budget = budget.saturating_sub(n as u64),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    Outcome::Close
}

/// The outcome of sending a request's last frame: a failed write means the host is gone.
pub fn sent(result: Result<(), FrameError>) -> Outcome {
    if result.is_ok() { Outcome::Done } else { Outcome::Close }
}

/// An OS error as Go prints it: `op path: no such file or directory`. v1 clients (and the
/// host client's error classification) rely on these texts.
pub fn os_error(op: &str, path: &str, err: &io::Error) -> String {
    format!("{op} {path}: {}", errno_text(err))
}

/// The reason of an OS error in lower case, without Rust's ` (os error N)` suffix.
pub fn errno_text(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => err.to_string(),
    }
}
