//! Listeners, the per-connection handshake (connection limit, auth, hello) and request dispatch.

use std::io::{self, Read};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proto::limits::{AUTH_TIMEOUT_SECS, MAX_CONTROL_CONNECTIONS};
use proto::messages::{
    ExecRequest, FEATURE_REUSE, FileReadRequest, FileWriteRequest, Hello, KillRequest, PathRequest,
    SetNet, SetTime,
};
use proto::payload::encode_exit;
use proto::{Frame, FrameType, read_frame, send_json, write_frame};

use crate::config::Agent;
use crate::conn::Conn;
use crate::session::{self, Kind};
use crate::{activity, exec, files, forward};

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

/// A listening socket of either family.
#[derive(Debug)]
pub enum Listener {
    /// Guest TCP listener.
    Tcp(TcpListener),
    /// Test-mode Unix listener.
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept()?;
                // Frames are small and latency-bound; never wait for Nagle.
                stream.set_nodelay(true)?;
                Ok(Conn::Tcp(stream))
            }
            Listener::Unix(l) => Ok(Conn::Unix(l.accept()?.0)),
        }
    }
}

/// Which port a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Exec, sessions, files, activity.
    Control,
    /// Port forwarding.
    Forward,
}

/// Accepts connections forever, one thread each.
pub fn serve(agent: Arc<Agent>, listener: Listener, port: Port) {
    let control_conns = Arc::new(AtomicUsize::new(0));
    let mut backoff = Duration::from_millis(1);
    loop {
        let conn = match listener.accept() {
            Ok(conn) => {
                backoff = Duration::from_millis(1);
                conn
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning (v1 retried immediately).
                eprintln!("lohar: accept: {e}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        let agent = Arc::clone(&agent);
        let counter = Arc::clone(&control_conns);
        let spawned =
            std::thread::Builder::new().name("lohar-conn".into()).spawn(move || match port {
                Port::Control => handle_control(&agent, conn, &counter),
                Port::Forward => forward::handle(&agent, conn),
            });
        if let Err(e) = spawned {
            eprintln!("lohar: cannot start connection thread: {e}");
        }
    }
}

/// Counts a control connection for as long as it lives.
struct ConnSlot<'a>(&'a AtomicUsize);

impl Drop for ConnSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn handle_control(agent: &Agent, mut conn: Conn, counter: &AtomicUsize) {
    let _slot = ConnSlot(counter);
    if counter.fetch_add(1, Ordering::SeqCst) >= MAX_CONTROL_CONNECTIONS {
        send_error(&mut conn, "connection limit exceeded");
        return;
    }
    if !authenticate(agent, &mut conn) {
        return;
    }
    request_loop(agent, &mut conn);
}

/// Constant-time comparison, so the time to reject a token says nothing about its prefix.
fn tokens_match(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Longest AUTH payload accepted (v1 tokens are 32 hex characters). Checked before anything is
/// allocated, so an unauthenticated peer cannot make the agent allocate a 1 MiB frame.
const MAX_TOKEN_LEN: usize = 256;
/// Connections allowed to be in the auth phase at once, both ports together (the forward port
/// has no other cap, as in v1).
const MAX_PENDING_AUTH: usize = 64;

static PENDING_AUTH: AtomicUsize = AtomicUsize::new(0);

/// Requires the AUTH frame within 5 s when the agent has a token. Sends `auth required` and
/// returns false on a missing, late, oversized or wrong token. The 5 s are a deadline for the
/// whole frame (v1's absolute read deadline), not an idle timeout that a peer trickling one byte
/// at a time could stretch forever.
pub fn authenticate(agent: &Agent, conn: &mut Conn) -> bool {
    let token = agent.config.token.as_bytes();
    if token.is_empty() {
        return true;
    }
    let _pending = ConnSlot(&PENDING_AUTH);
    if PENDING_AUTH.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_AUTH {
        send_error(conn, "connection limit exceeded");
        return false;
    }
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

fn request_loop(agent: &Agent, conn: &mut Conn) {
    let mut reuse = false;
    loop {
        let frame = match read_frame(conn) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        match frame.kind {
            FrameType::HELLO => {
                let requested: Hello = frame.json().unwrap_or_default();
                reuse = requested.features.iter().any(|f| f == FEATURE_REUSE);
                let granted = if reuse { vec![FEATURE_REUSE.to_owned()] } else { Vec::new() };
                let ack = Hello { version: 1, features: granted };
                if send_json(conn, FrameType::HELLO_ACK, &ack).is_err() {
                    return;
                }
                continue;
            }
            // Leftovers of the previous request on a reused connection.
            FrameType::STDIN | FrameType::RESIZE | FrameType::KILL if reuse => continue,
            // A client that authenticates to an agent without a token is not an error (v1
            // answered "unexpected frame type 0x11").
            FrameType::AUTH if agent.config.token.is_empty() => continue,
            _ => {}
        }
        match dispatch(agent, conn, &frame) {
            Outcome::Done if reuse => continue,
            _ => return,
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    frame: &Frame,
    prefix: &str,
    conn: &mut Conn,
) -> Result<T, Outcome> {
    frame.json().map_err(|e| send_error(conn, &format!("{prefix}: {e}")))
}

fn dispatch(agent: &Agent, conn: &mut Conn, frame: &Frame) -> Outcome {
    match frame.kind {
        FrameType::EXEC_REQ => {
            activity::touch();
            match decode::<ExecRequest>(frame, "bad exec request", conn) {
                Ok(req) => exec_request(agent, conn, &req),
                Err(outcome) => outcome,
            }
        }
        FrameType::EXEC_LIST_REQ => {
            outcome(send_json(conn, FrameType::EXEC_LIST_RESP, &agent.sessions.list()))
        }
        FrameType::ACTIVITY_REQ => {
            outcome(send_json(conn, FrameType::ACTIVITY_RESP, &agent.sessions.activity()))
        }
        FrameType::SET_TIME => match frame.json::<SetTime>() {
            Err(e) => send_error(conn, &format!("bad request: {e}")),
            Ok(_) if !agent.may_set_clock() => {
                send_error(conn, "set time: refused in test mode (it would set the host's clock)")
            }
            Ok(time) => match set_clock(time.unix_nanos) {
                Ok(()) => outcome(write_frame(conn, FrameType::EXIT, &encode_exit(0))),
                Err(e) => send_error(conn, &format!("set time: {e}")),
            },
        },
        FrameType::SET_NET => match frame.json::<SetNet>() {
            Err(e) => send_error(conn, &format!("bad request: {e}")),
            Ok(_) if !agent.may_configure_network() => send_error(
                conn,
                "set net: refused in test mode (it would change the host's interfaces)",
            ),
            Ok(req) => match crate::netif::parse_mac(&req.mac) {
                None => send_error(conn, &format!("set net: bad MAC {:?}", req.mac)),
                Some(_) if !(8..=30).contains(&req.prefix) => {
                    send_error(conn, &format!("set net: bad prefix {}", req.prefix))
                }
                Some(mac) => {
                    let sent = write_frame(conn, FrameType::EXIT, &encode_exit(0));
                    crate::netif::move_interface_later(req, mac);
                    outcome(sent)
                }
            },
        },
        FrameType::EXEC_KILL => match frame.json::<KillRequest>() {
            Ok(req) if agent.sessions.kill(&req.session_id) => {
                outcome(write_frame(conn, FrameType::EXIT, &encode_exit(0)))
            }
            Ok(_) => send_error(conn, "session not found"),
            Err(_) => send_error(conn, "bad kill request"),
        },
        FrameType::FILE_READ_REQ => {
            activity::touch();
            match decode::<FileReadRequest>(frame, "bad request", conn) {
                Ok(req) => files::read(conn, &req),
                Err(outcome) => outcome,
            }
        }
        FrameType::FILE_WRITE_REQ => {
            activity::touch();
            match decode::<FileWriteRequest>(frame, "bad request", conn) {
                Ok(req) => files::write(conn, &req),
                Err(outcome) => outcome,
            }
        }
        FrameType::FILE_STAT_REQ => match decode::<PathRequest>(frame, "bad request", conn) {
            Ok(req) => files::stat(conn, &req),
            Err(outcome) => outcome,
        },
        FrameType::FILE_LS_REQ => match decode::<PathRequest>(frame, "bad request", conn) {
            Ok(req) => files::list(conn, &req),
            Err(outcome) => outcome,
        },
        other => send_error(conn, &format!("unexpected frame type {other}")),
    }
}

fn exec_request(agent: &Agent, conn: &mut Conn, req: &ExecRequest) -> Outcome {
    if let Some(id) = &req.session_id {
        return session::attach(agent, conn, id, req.if_detached.unwrap_or(false));
    }
    if req.argv.is_empty() {
        return send_error(conn, "empty argv");
    }
    if req.detach == Some(true) {
        exec::run_detached(agent, conn, req)
    } else if req.tty == Some(true) {
        session::create(agent, conn, req, Kind::Tty)
    } else if req.session == Some(true) {
        session::create(agent, conn, req, Kind::Piped)
    } else {
        exec::run(agent, conn, req)
    }
}

/// Sets CLOCK_REALTIME (the guest's clock stands still while the VM is paused or suspended).
fn set_clock(unix_nanos: u64) -> nix::Result<()> {
    use nix::sys::time::TimeSpec;
    let ts = TimeSpec::new((unix_nanos / 1_000_000_000) as _, (unix_nanos % 1_000_000_000) as _);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
}

fn outcome(result: Result<(), proto::FrameError>) -> Outcome {
    if result.is_ok() { Outcome::Done } else { Outcome::Close }
}
