//! The engine's resolver: a DNS forwarder on the bridge's gateway address (UDP and TCP port 53
//! inside the engine's namespace), which every guest's resolv.conf names.
//!
//! It knows which sandbox asks by the query's source address (the bridge's anti-spoofing rules
//! bind each address to one TAP) and answers by that sandbox's policy
//! (`bhatti_core::egress::Policy::dns`): forwarded as is, forwarded and its addresses pinned
//! into the sandbox's firewall set before the guest sees the answer, or REFUSED. An allowed
//! name whose answer points at the host, metadata or a private range is refused (DNS
//! rebinding) and counted. Messages are parsed and built with `hickory-proto`; nothing here
//! reads DNS wire format by hand beyond the two ID bytes `upstream` swaps.
//!
//! Bounded: at most [`MAX_IN_FLIGHT`] queries at once (more UDP queries are dropped, a guest's
//! resolver asks again), at most [`MAX_TCP`] TCP connections, each with a deadline per query.

pub mod upstream;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bhatti_core::egress::{Cidr, DnsVerdict, normalise_name, pin_for};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::net::Netns;
use crate::netpolicy::Policies;
pub use upstream::{SocketSource, Upstreams};

/// Queries answered at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// TCP connections at once.
pub const MAX_TCP: usize = 64;
/// How long a TCP client may take to send a query.
const TCP_READ_DEADLINE: Duration = Duration::from_secs(10);
/// Queries one TCP connection may send.
const TCP_QUERIES: usize = 32;
/// The largest query read (a query is one question; EDNS options make it a few hundred bytes).
const MAX_QUERY: usize = 4096;

/// What the resolver has done since it started.
#[derive(Debug, Default)]
pub struct Counters {
    forwarded: AtomicU64,
    refused: AtomicU64,
    rebinding_refused: AtomicU64,
    upstream_failed: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Answers relayed from upstream.
    pub forwarded: u64,
    /// Queries answered REFUSED by policy.
    pub refused: u64,
    /// Answers to allowed names refused because they pointed at a never-reachable or private
    /// address (DNS rebinding).
    pub rebinding_refused: u64,
    /// Queries answered SERVFAIL because no upstream answered.
    pub upstream_failed: u64,
}

impl Counters {
    fn snapshot(&self) -> ResolverStats {
        ResolverStats {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            rebinding_refused: self.rebinding_refused.load(Ordering::Relaxed),
            upstream_failed: self.upstream_failed.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    policies: Arc<Policies>,
    upstreams: Upstreams,
    /// The deployment's own never-reachable ranges (guests' subnet, uplink link).
    extra_never: Vec<Cidr>,
    counters: Counters,
    in_flight: Arc<Semaphore>,
}

/// The running resolver; its tasks end when it is dropped.
pub struct Resolver {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("upstreams", &self.shared.upstreams.servers).finish()
    }
}

impl Resolver {
    /// Listens on `gateway:53` inside `ns` (the bridge must have the address already).
    pub(crate) async fn start(
        ns: &Netns,
        gateway: Ipv4Addr,
        policies: Arc<Policies>,
        upstreams: Upstreams,
        extra_never: Vec<Cidr>,
    ) -> std::io::Result<Self> {
        let at = SocketAddr::from((gateway, 53));
        let (udp, tcp) = ns
            .enter(move || {
                let udp = std::net::UdpSocket::bind(at)?;
                let tcp = std::net::TcpListener::bind(at)?;
                udp.set_nonblocking(true)?;
                tcp.set_nonblocking(true)?;
                Ok((udp, tcp))
            })
            .await?;
        let (udp, tcp) = (Arc::new(UdpSocket::from_std(udp)?), TcpListener::from_std(tcp)?);
        let shared = Arc::new(Shared {
            policies,
            upstreams,
            extra_never,
            counters: Counters::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(Arc::clone(&shared), udp));
        tasks.spawn(serve_tcp(Arc::clone(&shared), tcp));
        Ok(Self { shared, tasks })
    }

    /// What it has done so far.
    pub fn stats(&self) -> ResolverStats {
        self.shared.counters.snapshot()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut queries = JoinSet::new();
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        // Reap finished queries so the set holds only live ones.
        while queries.try_join_next().is_some() {}
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!("resolver: receiving: {e}");
                continue;
            }
        };
        let SocketAddr::V4(from) = from else { continue };
        let Ok(permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else { continue };
        let query = buf[..n].to_vec();
        let (shared, socket) = (Arc::clone(&shared), Arc::clone(&socket));
        queries.spawn(async move {
            let _permit = permit;
            if let Some(answer) = answer(&shared, *from.ip(), &query).await
                && let Err(e) = socket.send_to(&answer, from).await
            {
                tracing::debug!("resolver: answering {from}: {e}");
            }
        });
    }
}

async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener) {
    let connections = Arc::new(Semaphore::new(MAX_TCP));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, from) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!("resolver: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let SocketAddr::V4(from) = from else { continue };
        // Over the limit: the connection is closed at once.
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else { continue };
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            let _permit = permit;
            serve_connection(&shared, stream, *from.ip()).await;
        });
    }
}

async fn serve_connection(shared: &Shared, mut stream: TcpStream, from: Ipv4Addr) {
    for _ in 0..TCP_QUERIES {
        let read = async {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let len = usize::from(u16::from_be_bytes(len));
            if len > MAX_QUERY {
                return Err(std::io::Error::other("query too long"));
            }
            let mut query = vec![0u8; len];
            stream.read_exact(&mut query).await?;
            Ok::<_, std::io::Error>(query)
        };
        let Ok(Ok(query)) = tokio::time::timeout(TCP_READ_DEADLINE, read).await else { return };
        let Some(answer) = answer(shared, from, &query).await else { return };
        let Ok(len) = u16::try_from(answer.len()) else { return };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The answer to `query` from the guest at `from`, or nothing when it is not a DNS query at all.
async fn answer(shared: &Shared, from: Ipv4Addr, query: &[u8]) -> Option<Vec<u8>> {
    let message = Message::from_vec(query).ok()?;
    if message.metadata.message_type != MessageType::Query {
        return None;
    }
    let refuse = |code: ResponseCode| {
        let mut reply = Message::error_msg(message.metadata.id, message.metadata.op_code, code);
        reply.metadata.recursion_desired = message.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_queries(message.queries.clone());
        reply.to_vec().ok()
    };
    if message.metadata.op_code != OpCode::Query {
        return refuse(ResponseCode::NotImp);
    }
    let [question] = message.queries.as_slice() else { return refuse(ResponseCode::FormErr) };
    // A source that is no sandbox's (a guest that lost its address, a stray packet).
    let Some(asker) = shared.policies.asker(from) else {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        return refuse(ResponseCode::Refused);
    };
    let name = normalise_name(&question.name().to_ascii());
    let verdict = asker.policy.dns(&name);
    if verdict == DnsVerdict::Refuse {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        return refuse(ResponseCode::Refused);
    }
    let reply = match shared.upstreams.forward(query).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::debug!(%name, "resolver: {e}");
            shared.counters.upstream_failed.fetch_add(1, Ordering::Relaxed);
            return refuse(ResponseCode::ServFail);
        }
    };
    if verdict == DnsVerdict::ForwardAndPin {
        let Ok(parsed) = Message::from_vec(&reply) else {
            shared.counters.upstream_failed.fetch_add(1, Ordering::Relaxed);
            return refuse(ResponseCode::ServFail);
        };
        let mut pins = Vec::new();
        for record in &parsed.answers {
            if let RData::A(a) = &record.data {
                if !asker.policy.may_pin(a.0, &shared.extra_never) {
                    shared.counters.rebinding_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        sandbox_ip = %from, %name, address = %a.0,
                        "resolver: refused an allowed name's answer pointing at a private or \
                         host address (DNS rebinding)"
                    );
                    return refuse(ResponseCode::Refused);
                }
                pins.push((a.0, pin_for(record.ttl)));
            }
        }
        match shared.policies.pin(from, &asker, &name, &pins).await {
            Ok(true) => {}
            // The policy changed while upstream answered (the guest asks again under the new
            // one), or the sandbox has all the pins it may have.
            Ok(false) => {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                return refuse(ResponseCode::Refused);
            }
            Err(e) => {
                tracing::warn!(sandbox_ip = %from, %name, "resolver: pinning: {}", e.report());
                return refuse(ResponseCode::ServFail);
            }
        }
    }
    shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    Some(reply)
}
