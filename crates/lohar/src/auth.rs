//! The AUTH handshake both ports start with when the agent holds a token.

use std::io::{self, Read};
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use proto::FrameType;
use proto::limits::AUTH_TIMEOUT_SECS;

use crate::config::Agent;
use crate::conn::{Conn, CountSlot};
use crate::reply::send_error;
use crate::token::MAX_TOKEN_LEN;

/// Connections allowed to be in the auth phase at once, both ports together (the forward port
/// has no other cap, as in v1).
const MAX_PENDING_AUTH: usize = 64;

static PENDING_AUTH: AtomicUsize = AtomicUsize::new(0);

/// Constant-time comparison, so the time to reject a token says nothing about its prefix.
fn tokens_match(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Requires the AUTH frame within 5 s when the agent has a token. Sends `auth required` and
/// returns false on a missing, late, oversized or wrong token. The 5 s are a deadline for the
/// whole frame (v1's absolute read deadline), not an idle timeout that a peer trickling one byte
/// at a time could stretch forever.
pub fn authenticate(agent: &Agent, conn: &mut Conn) -> bool {
    let token = agent.token.current();
    if token.is_empty() {
        return true;
    }
    let token = token.as_bytes();
    let Some(_pending) = CountSlot::take(&PENDING_AUTH, MAX_PENDING_AUTH) else {
        send_error(conn, "connection limit exceeded");
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(AUTH_TIMEOUT_SECS);
    let ok = read_auth_frame(conn, deadline).is_ok_and(|given| tokens_match(&given, token));
    if !ok {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        send_error(conn, "auth required");
        return false;
    }
    conn.set_read_timeout(None).is_ok()
}

/// Reads one AUTH frame by `deadline`; returns its payload.
fn read_auth_frame(conn: &mut Conn, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 5];
    read_exact_by(conn, &mut header, deadline)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if header[4] != FrameType::AUTH.0 || len == 0 || len > 1 + MAX_TOKEN_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not an AUTH frame"));
    }
    let mut payload = vec![0u8; len - 1];
    read_exact_by(conn, &mut payload, deadline)?;
    Ok(payload)
}

fn read_exact_by(conn: &mut Conn, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(tokens_match(b"abc", b"abc"));
        assert!(!tokens_match(b"abd", b"abc"));
        assert!(!tokens_match(b"ab", b"abc"));
        assert!(!tokens_match(b"", b"abc"));
    }
}
