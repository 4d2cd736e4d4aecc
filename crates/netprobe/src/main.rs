//! `netprobe connect ADDR:PORT N`: opens N TCP connections one after another and prints each
//! connect's duration in microseconds, one per line.
//!
//! `netprobe dns SERVER[:PORT] NAME N`: asks SERVER N times for NAME's A record over UDP and
//! prints each round trip in microseconds; an answer that is not a NOERROR response to the
//! query sent is an error (it only checks the header: the tests time the path, the resolver's
//! own tests check what it answers).
//!
//! Lives in the test image (`images/rootfs/build-test`); the engine's egress benchmark runs it
//! inside guests.
#![forbid(unsafe_code)]

use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["connect", addr, n] => parse(addr, n).and_then(|(addr, n)| connect(addr, n)),
        ["dns", server, name, n] => {
            let server =
                if server.contains(':') { server.to_string() } else { format!("{server}:53") };
            parse(&server, n).and_then(|(server, n)| dns(server, name, n))
        }
        _ => Err(io::Error::other("usage: netprobe connect ADDR:PORT N | dns SERVER NAME N")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(addr: &str, n: &str) -> io::Result<(SocketAddr, u32)> {
    let addr = addr.parse().map_err(|_| io::Error::other(format!("bad address {addr:?}")))?;
    let n = n.parse().map_err(|_| io::Error::other(format!("bad count {n:?}")))?;
    Ok((addr, n))
}

fn connect(addr: SocketAddr, n: u32) -> io::Result<()> {
    for _ in 0..n {
        let started = Instant::now();
        let stream = TcpStream::connect_timeout(&addr, DEADLINE)?;
        println!("{}", started.elapsed().as_micros());
        drop(stream);
    }
    Ok(())
}

/// A one-question A query with recursion desired.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dns(server: SocketAddr, name: &str, n: u32) -> io::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(DEADLINE))?;
    let mut buf = [0u8; 1500];
    for i in 0..n {
        let id = (i as u16).wrapping_mul(7919).wrapping_add(1);
        let started = Instant::now();
        socket.send(&query(id, name))?;
        let got = socket.recv(&mut buf)?;
        let took = started.elapsed();
        // ID, QR bit, RCODE 0.
        if got < 12 || buf[..2] != id.to_be_bytes() || buf[2] & 0x80 == 0 || buf[3] & 0x0f != 0 {
            return Err(io::Error::other(format!(
                "bad answer to query {i} (rcode {})",
                buf[3] & 0x0f
            )));
        }
        println!("{}", took.as_micros());
    }
    Ok(())
}
