//! Listeners, the per-connection handshake (connection limit, auth, hello) and request dispatch.

use std::io;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use proto::limits::MAX_CONTROL_CONNECTIONS;
use proto::messages::{
    ExecRequest, FEATURE_PROCS, FEATURE_REUSE, FEATURE_WATCH, FileReadRequest, FileWriteRequest,
    Hello, KillRequest, PathRequest, SetIdentity, SetNet, SetTime, WatchRequest,
};
use proto::payload::encode_exit;
use proto::{Frame, FrameType, read_frame, send_json, write_frame};

use crate::auth::authenticate;
use crate::config::Agent;
use crate::conn::{Conn, CountSlot};
use crate::reply::{Outcome, send_error, sent};
use crate::session::{self, Kind};
use crate::{activity, exec, files, forward, identity, watch};

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

fn handle_control(agent: &Agent, mut conn: Conn, counter: &AtomicUsize) {
    let Some(_slot) = CountSlot::take(counter, MAX_CONTROL_CONNECTIONS) else {
        send_error(&mut conn, "connection limit exceeded");
        return;
    };
    if !authenticate(agent, &mut conn) {
        return;
    }
    request_loop(agent, &mut conn);
}

fn request_loop(agent: &Agent, conn: &mut Conn) {
    let mut reuse = false;
    let mut watch = false;
    loop {
        let frame = match read_frame(conn) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        match frame.kind {
            FrameType::HELLO => {
                let requested: Hello = frame.json().unwrap_or_default();
                reuse = requested.features.iter().any(|f| f == FEATURE_REUSE);
                watch = requested.features.iter().any(|f| f == FEATURE_WATCH);
                let procs = requested.features.iter().any(|f| f == FEATURE_PROCS);
                let granted =
                    [(reuse, FEATURE_REUSE), (watch, FEATURE_WATCH), (procs, FEATURE_PROCS)]
                        .into_iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, name)| name.to_owned())
                        .collect();
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
            FrameType::AUTH if agent.token.is_open() => continue,
            // A watch takes the connection over until the host closes it.
            FrameType::WATCH_REQ if watch => {
                match decode::<WatchRequest>(&frame, "bad request", conn) {
                    Ok(req) => watch::watch(conn, &req),
                    Err(outcome) => outcome,
                };
                return;
            }
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
            sent(send_json(conn, FrameType::EXEC_LIST_RESP, &agent.sessions.list()))
        }
        FrameType::ACTIVITY_REQ => {
            sent(send_json(conn, FrameType::ACTIVITY_RESP, &agent.sessions.activity()))
        }
        FrameType::SET_TIME => match frame.json::<SetTime>() {
            Err(e) => send_error(conn, &format!("bad request: {e}")),
            Ok(_) if !agent.may_set_clock() => {
                send_error(conn, "set time: refused in test mode (it would set the host's clock)")
            }
            Ok(time) => match set_clock(time.unix_nanos) {
                Ok(()) => sent(write_frame(conn, FrameType::EXIT, &encode_exit(0))),
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
                    let answered = write_frame(conn, FrameType::EXIT, &encode_exit(0));
                    crate::netif::move_interface_later(req, mac);
                    sent(answered)
                }
            },
        },
        FrameType::SET_IDENTITY => match frame.json::<SetIdentity>() {
            Err(e) => send_error(conn, &format!("bad request: {e}")),
            Ok(req) => match set_identity(agent, &req) {
                Err(failure) => send_error(conn, &failure.to_string()),
                Ok(()) => sent(write_frame(conn, FrameType::EXIT, &encode_exit(0))),
            },
        },
        FrameType::EXEC_KILL => match frame.json::<KillRequest>() {
            Ok(req) => match kill_signal(req.signal) {
                None => send_error(conn, "bad kill request: unknown signal"),
                Some(signal) if agent.sessions.kill(&req.session_id, signal) => {
                    sent(write_frame(conn, FrameType::EXIT, &encode_exit(0)))
                }
                Some(_) => send_error(conn, "session not found"),
            },
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

/// The signal of an EXEC_KILL: SIGKILL when none is named (v1), `None` for a number that is no
/// signal.
fn kill_signal(number: Option<i32>) -> Option<nix::sys::signal::Signal> {
    match number {
        None => Some(nix::sys::signal::Signal::SIGKILL),
        Some(n) => nix::sys::signal::Signal::try_from(n).ok(),
    }
}

fn exec_request(agent: &Agent, conn: &mut Conn, req: &ExecRequest) -> Outcome {
    if let Some(id) = &req.session_id {
        let (if_detached, stderr) = (req.if_detached.unwrap_or(false), req.stderr == Some(true));
        return session::attach(&agent.sessions, conn, id, if_detached, stderr);
    }
    if req.argv.is_empty() {
        return send_error(conn, "empty argv");
    }
    if req.detach == Some(true) {
        exec::run_detached(agent, conn, req)
    } else if req.tty == Some(true) {
        session::create(&agent.sessions, &agent.config, conn, req, Kind::Tty)
    } else if req.session == Some(true) {
        session::create(&agent.sessions, &agent.config, conn, req, Kind::Piped)
    } else {
        exec::run(agent, conn, req)
    }
}

/// Validates every field of a SET_IDENTITY, then applies them in order (token last).
fn set_identity(agent: &Agent, req: &SetIdentity) -> Result<(), identity::Failure> {
    let plan = identity::validate(req)?;
    let target = agent.identity_target();
    let target = match (target, req.hostname.is_some() || req.machine_id.is_some()) {
        (Some(target), _) => target,
        // Test mode without a directory to write into: only the token can be renewed.
        (None, false) => identity::Target { root: "/nonexistent".into(), live: false },
        (None, true) => {
            let field = if req.machine_id.is_some() { "machine_id" } else { "hostname" };
            return Err(identity::Failure {
                field,
                why: "refused in test mode without LOHAR_IDENTITY_ROOT".into(),
            });
        }
    };
    identity::apply(&plan, &target, &agent.token)
}

/// Sets CLOCK_REALTIME (the guest's clock stands still while the VM is paused or suspended).
fn set_clock(unix_nanos: u64) -> nix::Result<()> {
    use nix::sys::time::TimeSpec;
    let ts = TimeSpec::new((unix_nanos / 1_000_000_000) as _, (unix_nanos % 1_000_000_000) as _);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
}
