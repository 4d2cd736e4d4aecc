//! Sockets in another network namespace, from one long-lived thread per namespace.
//!
//! A socket belongs to the namespace of the thread that creates it, for life; connecting it can
//! then happen anywhere. So one thread per namespace enters it once and only creates sockets
//! (never connects, never blocks on the network); the async side connects them with a deadline.
//! Compared with a thread per connection this costs one channel round trip per dial. The thread
//! ends after [`IDLE`] without requests, so a namespace that is deleted is not kept alive by it
//! for longer than that.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// How long a factory thread waits for a request before it ends.
const IDLE: Duration = Duration::from_secs(10);

struct Request {
    addr: SocketAddr,
    device: Option<String>,
    reply: oneshot::Sender<std::io::Result<socket2::Socket>>,
}

/// Per namespace: the running factory's number and its queue.
type Factories = Mutex<HashMap<PathBuf, (u64, std_mpsc::Sender<Request>)>>;

fn factories() -> &'static Factories {
    static FACTORIES: OnceLock<Factories> = OnceLock::new();
    FACTORIES.get_or_init(Default::default)
}

fn lock(
    m: &Factories,
) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (u64, std_mpsc::Sender<Request>)>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates an unconnected, non-blocking TCP socket for `addr` in the namespace at `netns`
/// (bound to `device` when given).
async fn socket_in(
    netns: &Path,
    addr: SocketAddr,
    device: Option<String>,
) -> std::io::Result<socket2::Socket> {
    let (reply, answer) = oneshot::channel();
    let mut request = Request { addr, device, reply };
    // A factory that ended (idle) has dropped its receiver: the send fails and a new one starts.
    for _ in 0..2 {
        let sender = {
            let mut map = lock(factories());
            match map.get(netns) {
                Some((_, sender)) => sender.clone(),
                None => {
                    static GENERATION: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(0);
                    let n = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let sender = spawn_factory(netns.to_owned(), n)?;
                    map.insert(netns.to_owned(), (n, sender.clone()));
                    sender
                }
            }
        };
        match sender.send(request) {
            Ok(()) => {
                return answer
                    .await
                    .map_err(|_| std::io::Error::other("namespace socket thread ended"))?;
            }
            Err(std_mpsc::SendError(back)) => {
                request = back;
                lock(factories()).remove(netns);
            }
        }
    }
    Err(std::io::Error::other("cannot start a namespace socket thread"))
}

fn spawn_factory(netns: PathBuf, generation: u64) -> std::io::Result<std_mpsc::Sender<Request>> {
    let (tx, rx) = std_mpsc::channel::<Request>();
    std::thread::Builder::new().name("netns-sockets".into()).spawn(move || {
        let entered = std::fs::File::open(&netns).and_then(|ns| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
        while let Ok(request) = rx.recv_timeout(IDLE) {
            let socket = match &entered {
                Ok(()) => new_socket(request.addr, request.device.as_deref()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let _ = request.reply.send(socket);
        }
        // Idle: forget this thread (a request racing this exit finds the queue closed and
        // starts a new one), unless a newer thread already took its place.
        let mut map = lock(factories());
        if map.get(&netns).is_some_and(|(n, _)| *n == generation) {
            map.remove(&netns);
        }
    })?;
    Ok(tx)
}

fn new_socket(addr: SocketAddr, device: Option<&str>) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(device) = device {
        socket.bind_device(Some(device.as_bytes()))?;
    }
    Ok(socket)
}

/// Connects to `addr` from the namespace at `netns` (through `device` when given).
pub(crate) async fn connect(
    netns: &Path,
    addr: SocketAddr,
    device: Option<String>,
) -> std::io::Result<TcpStream> {
    let socket = socket_in(netns, addr, device).await?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(addr).await
}
