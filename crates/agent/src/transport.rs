//! Where the agent listens and how to dial it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use proto::limits::{CONTROL_PORT, FORWARD_PORT};
use tokio::net::{TcpStream, UnixStream};

use crate::error::AgentError;
use crate::stream::Stream;

/// The agent's two listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP: control and forward ports on an address (normally the guest IP, 1024 and 1025).
    Tcp {
        /// Control port address.
        control: SocketAddr,
        /// Forward port address.
        forward: SocketAddr,
    },
    /// TCP from inside a network namespace (the engine's, where the guests' bridge lives):
    /// sockets are created by a thread that entered `netns` and stay bound to it.
    TcpInNetns {
        /// The namespace's bind-mounted path, e.g. `/run/netns/bhatti`.
        netns: PathBuf,
        /// Control port address.
        control: SocketAddr,
        /// Forward port address.
        forward: SocketAddr,
        /// Send through this interface only (`SO_BINDTODEVICE`), whatever the routes say: how
        /// the engine reaches a resumed guest whose address another guest still holds.
        device: Option<String>,
    },
    /// Unix sockets (lohar test mode).
    Unix {
        /// Control socket path.
        control: PathBuf,
        /// Forward socket path.
        forward: PathBuf,
    },
}

impl Endpoint {
    /// The standard guest endpoint: `ip:1024` and `ip:1025`.
    pub fn guest(ip: IpAddr) -> Self {
        Endpoint::Tcp {
            control: SocketAddr::new(ip, CONTROL_PORT),
            forward: SocketAddr::new(ip, FORWARD_PORT),
        }
    }

    /// Test-mode Unix sockets.
    pub fn unix(control: impl Into<PathBuf>, forward: impl Into<PathBuf>) -> Self {
        Endpoint::Unix { control: control.into(), forward: forward.into() }
    }

    pub(crate) async fn dial(
        &self,
        forward: bool,
        timeout: Duration,
    ) -> Result<Stream, AgentError> {
        let connect = async {
            match self {
                Endpoint::Tcp { control, forward: fwd } => {
                    let stream = TcpStream::connect(if forward { fwd } else { control }).await?;
                    // Requests are small and latency-bound.
                    stream.set_nodelay(true)?;
                    Ok(Stream::Tcp(stream))
                }
                Endpoint::TcpInNetns { netns, control, forward: fwd, device } => {
                    let addr = if forward { *fwd } else { *control };
                    let stream =
                        connect_in_netns(netns.clone(), addr, device.clone(), timeout).await?;
                    stream.set_nodelay(true)?;
                    Ok(Stream::Tcp(stream))
                }
                Endpoint::Unix { control, forward: fwd } => Ok(Stream::Unix(
                    UnixStream::connect(if forward { fwd } else { control }).await?,
                )),
            }
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(AgentError::Connect { endpoint: self.to_string(), source }),
            Err(_) => Err(AgentError::Timeout { op: "connect", after: timeout }),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { control, .. } => write!(f, "{control}"),
            Endpoint::TcpInNetns { netns, control, device, .. } => {
                write!(f, "{control} in {}", netns.display())?;
                match device {
                    Some(device) => write!(f, " via {device}"),
                    None => Ok(()),
                }
            }
            Endpoint::Unix { control, .. } => write!(f, "{}", control.display()),
        }
    }
}

/// Connects from a fresh thread that entered `netns` (never a pooled runtime thread, which would
/// then run unrelated work in the wrong namespace). The socket keeps its namespace for life.
async fn connect_in_netns(
    netns: PathBuf,
    addr: SocketAddr,
    device: Option<String>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("netns-dial".into()).spawn(move || {
        let result = std::fs::File::open(&netns)
            .and_then(|ns| {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            })
            .and_then(|()| connect_socket(addr, device.as_deref(), timeout))
            .and_then(|s| s.set_nonblocking(true).map(|()| s));
        let _ = tx.send(result);
    })?;
    let stream = rx.await.map_err(|_| std::io::Error::other("namespace dial thread died"))??;
    TcpStream::from_std(stream)
}

/// A blocking TCP connect, through `device` only when given.
fn connect_socket(
    addr: SocketAddr,
    device: Option<&str>,
    timeout: Duration,
) -> std::io::Result<std::net::TcpStream> {
    let Some(device) = device else {
        return std::net::TcpStream::connect_timeout(&addr, timeout);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind_device(Some(device.as_bytes()))?;
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}
