//! Forwarding a guest's query to the host's name servers and bringing the answer back.
//!
//! The query goes out with an ID of our own (the guest's is put back on the answer), over UDP
//! from a fresh socket (a fresh random source port per query), to each upstream in order with
//! a deadline each; a truncated answer is asked again over TCP. Upstream sockets are made in
//! the namespace the uplink leads into: the daemon's own, or, in the tests, a namespace that
//! stands for the host.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

use crate::net::Netns;

/// How long one upstream may take to answer.
pub const UPSTREAM_DEADLINE: Duration = Duration::from_secs(2);
/// The largest answer relayed (UDP with EDNS rarely exceeds 4 KiB; TCP answers are capped here
/// too: a guest's resolver asks again over TCP only for answers larger than its UDP buffer).
pub const MAX_ANSWER: usize = 16 * 1024;

/// Where upstream sockets come from.
#[derive(Debug, Clone)]
pub enum SocketSource {
    /// The daemon's own namespace.
    Here,
    /// Another namespace: sockets are made by a thread living in it.
    Netns(Arc<Factory>),
}

impl SocketSource {
    /// Sockets from the namespace `ns` (a thread that enters it once and stays).
    pub fn netns(ns: &Netns) -> io::Result<Self> {
        Ok(Self::Netns(Arc::new(Factory::start(ns)?)))
    }

    async fn udp(&self) -> io::Result<UdpSocket> {
        let std = match self {
            Self::Here => std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?,
            Self::Netns(factory) => factory.udp().await?,
        };
        std.set_nonblocking(true)?;
        UdpSocket::from_std(std)
    }

    async fn tcp(&self) -> io::Result<TcpSocket> {
        match self {
            Self::Here => TcpSocket::new_v4(),
            Self::Netns(factory) => {
                let std = factory.tcp().await?;
                std.set_nonblocking(true)?;
                Ok(TcpSocket::from_std_stream(std))
            }
        }
    }
}

enum Want {
    Udp(tokio::sync::oneshot::Sender<io::Result<std::net::UdpSocket>>),
    Tcp(tokio::sync::oneshot::Sender<io::Result<std::net::TcpStream>>),
}

/// A thread inside a namespace that makes sockets there (a socket keeps the namespace it was
/// made in): one `setns` for its whole life, not one thread per query.
pub struct Factory {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<Want>>,
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Factory")
    }
}

impl Factory {
    fn start(ns: &Netns) -> io::Result<Self> {
        let path = ns.path().to_owned();
        let (tx, rx) = std::sync::mpsc::channel::<Want>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("dns-upstream".into()).spawn(move || {
            let entered = std::fs::File::open(&path).and_then(|f| {
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if !ok {
                return;
            }
            // Ends when the factory (the sender) is dropped.
            while let Ok(want) = rx.recv() {
                match want {
                    Want::Udp(reply) => {
                        let _ = reply.send(std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)));
                    }
                    Want::Tcp(reply) => {
                        let _ = reply.send(unconnected_tcp());
                    }
                }
            }
        })?;
        ready_rx.recv().map_err(|_| io::Error::other("socket thread died"))??;
        Ok(Self { tx: std::sync::Mutex::new(tx) })
    }

    fn send(&self, want: Want) -> io::Result<()> {
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(want)
            .map_err(|_| io::Error::other("socket thread gone"))
    }

    async fn udp(&self) -> io::Result<std::net::UdpSocket> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Want::Udp(tx))?;
        rx.await.map_err(|_| io::Error::other("socket thread gone"))?
    }

    async fn tcp(&self) -> io::Result<std::net::TcpStream> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Want::Tcp(tx))?;
        rx.await.map_err(|_| io::Error::other("socket thread gone"))?
    }
}

/// An unconnected IPv4 TCP socket, as a `TcpStream` (the type tokio adopts a socket from).
fn unconnected_tcp() -> io::Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    Ok(socket.into())
}

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream answered in time.
    #[error("no upstream name server answered ({0})")]
    NoAnswer(String),
    /// Nothing to ask.
    #[error("no upstream name servers are configured")]
    NoUpstreams,
}

/// The upstream name servers and how to reach them.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// In the order they are tried.
    pub servers: Vec<SocketAddr>,
    /// Where their sockets are made.
    pub sockets: SocketSource,
}

impl Upstreams {
    /// Asks the upstreams `query` (a whole DNS message) and returns their answer, the query's
    /// own ID restored.
    pub async fn forward(&self, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        if self.servers.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        if query.len() < 12 {
            return Err(ForwardError::NoAnswer("query too short".into()));
        }
        let guest_id = [query[0], query[1]];
        let mut ours = query.to_vec();
        let mut id = [0u8; 2];
        getrandom::fill(&mut id).map_err(|e| ForwardError::NoAnswer(e.to_string()))?;
        ours[..2].copy_from_slice(&id);
        let mut last = String::new();
        for server in &self.servers {
            let asked = tokio::time::timeout(UPSTREAM_DEADLINE, self.ask(*server, &ours, id)).await;
            match asked {
                Ok(Ok(mut answer)) => {
                    answer[..2].copy_from_slice(&guest_id);
                    return Ok(answer);
                }
                Ok(Err(e)) => last = format!("{server}: {e}"),
                Err(_) => last = format!("{server}: no answer in {UPSTREAM_DEADLINE:?}"),
            }
        }
        Err(ForwardError::NoAnswer(last))
    }

    async fn ask(&self, server: SocketAddr, query: &[u8], id: [u8; 2]) -> io::Result<Vec<u8>> {
        let answer = self.ask_udp(server, query, id).await?;
        // TC bit: the answer did not fit; ask again over TCP.
        if answer[2] & 0x02 != 0 { self.ask_tcp(server, query, id).await } else { Ok(answer) }
    }

    async fn ask_udp(&self, server: SocketAddr, query: &[u8], id: [u8; 2]) -> io::Result<Vec<u8>> {
        let socket = self.sockets.udp().await?;
        socket.connect(server).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; MAX_ANSWER];
        // A connected socket only hears the server; a datagram with another ID (a late answer
        // to nothing we asked, or a forgery) is skipped, within the caller's deadline.
        loop {
            let n = socket.recv(&mut buf).await?;
            if n >= 12 && buf[..2] == id && buf[2] & 0x80 != 0 {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    }

    async fn ask_tcp(&self, server: SocketAddr, query: &[u8], id: [u8; 2]) -> io::Result<Vec<u8>> {
        let mut stream = self.sockets.tcp().await?.connect(server).await?;
        let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too long"))?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let len = usize::from(u16::from_be_bytes(len));
        if !(12..=MAX_ANSWER).contains(&len) {
            return Err(io::Error::other(format!("answer of {len} bytes")));
        }
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await?;
        if buf[..2] != id {
            return Err(io::Error::other("answer to another query"));
        }
        Ok(buf)
    }
}
