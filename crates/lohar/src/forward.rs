//! The forward port: after a FWD_REQ handshake the connection becomes a raw byte pipe to a
//! guest-local TCP port.

use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use proto::messages::{ForwardRequest, ForwardResponse};
use proto::{FrameType, read_frame, send_json};

use crate::auth::authenticate;
use crate::config::Agent;
use crate::conn::Conn;
use crate::reply::{errno_text, send_error};

/// How long to wait for the guest-local service to accept.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one forward connection from handshake to the end of the relay.
pub fn handle(agent: &Agent, mut conn: Conn) {
    if !authenticate(agent, &mut conn) {
        return;
    }
    let frame = loop {
        match read_frame(&mut conn) {
            // A token sent to a tokenless agent is accepted, as on the control port.
            Ok(Some(f)) if f.kind == FrameType::AUTH && agent.token.is_open() => continue,
            Ok(Some(f)) => break f,
            Ok(None) | Err(_) => return,
        }
    };
    if frame.kind != FrameType::FWD_REQ {
        send_error(&mut conn, &format!("expected FWD_REQ, got {}", frame.kind));
        return;
    }
    let reply =
        |conn: &mut Conn, resp: &ForwardResponse| send_json(conn, FrameType::FWD_RESP, resp);
    let req: ForwardRequest = match frame.json() {
        Ok(req) => req,
        Err(e) => {
            let _ = reply(&mut conn, &ForwardResponse::error(format!("bad forward request: {e}")));
            return;
        }
    };
    if req.port == 0 {
        let _ = reply(&mut conn, &ForwardResponse::error("bad forward request: port 0"));
        return;
    }
    let target = match dial(req.port) {
        Ok(target) => target,
        Err(message) => {
            let _ = reply(&mut conn, &ForwardResponse::error(message));
            return;
        }
    };
    if reply(&mut conn, &ForwardResponse::ok()).is_err() {
        return;
    }
    relay(conn, target);
}

/// Dials the service on IPv4 loopback, then IPv6 loopback (v1 missed services bound to `::1`).
fn dial(port: u16) -> Result<TcpStream, String> {
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpStream::connect_timeout(&v4, DIAL_TIMEOUT) {
        Ok(stream) => Ok(stream),
        Err(e4) => {
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, DIAL_TIMEOUT)
                .map_err(|_| format!("dial tcp {v4}: connect: {}", errno_text(&e4)))
        }
    }
}

/// Copies both ways; each direction's EOF is passed on as a half-close.
fn relay(conn: Conn, target: TcpStream) {
    let _ = target.set_nodelay(true);
    let (Ok(mut conn_in), Ok(mut target_out)) = (conn.try_clone(), target.try_clone()) else {
        return;
    };
    let upstream = std::thread::spawn(move || {
        let _ = copy(&mut conn_in, &mut target_out);
        let _ = target_out.shutdown(Shutdown::Write);
    });
    let (mut conn_out, mut target_in) = (conn, target);
    let _ = copy(&mut target_in, &mut conn_out);
    conn_out.shutdown(Shutdown::Write);
    let _ = upstream.join();
}

fn copy(from: &mut impl io::Read, to: &mut impl io::Write) -> io::Result<u64> {
    match io::copy(from, to) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(0),
        other => other,
    }
}
