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
                    // The deadline around this match bounds the connect.
                    let stream = crate::netns_dial::connect(netns, addr, device.clone()).await?;
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
