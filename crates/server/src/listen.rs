//! The accept loop both listeners (TCP and the Unix socket) run, with two deadlines no
//! connection can escape (issue 19 item 2; v1's `ReadHeaderTimeout` and `IdleTimeout`):
//!
//! - **header read**: a new connection must deliver a complete request head within
//!   `Settings::header_read_timeout` of its accept; on a keep-alive connection, the next head
//!   must be complete within the same time of its first byte. A client that trickles a head
//!   (slowloris) or connects and sends nothing is cut.
//! - **idle**: a keep-alive connection with no request in progress is closed after
//!   `Settings::idle_timeout` without the first byte of its next request.
//!
//! Neither touches a request in progress (a long exec, a streamed download, an SSE stream
//! through the proxy): hyper waits for a head only between exchanges. An upgraded connection (a
//! WebSocket) has left hyper and is bounded by its own relay's timeouts.
//!
//! Why a hand-rolled loop: `axum::serve` sets no timer, so hyper applies no header timeout at
//! all. hyper 1's HTTP/1 server has one timer, the header read timeout, started whenever the
//! connection waits for a head, so on its own it would close idle keep-alive connections after
//! the (short) header deadline. Its timer is ours to give ([`HeadTimer`]): it sees the
//! connection's read count and picks the deadline that applies (header read from the accept or
//! from the first byte of the next head; idle until that byte). HTTP/1 only: none of our
//! clients speaks h2c, and hyper's HTTP/2 server has no header deadline.
//!
//! Shutdown: the loop stops accepting, every connection is told to finish its exchange in
//! flight and close (hyper's graceful shutdown), and `serve` returns when all are gone (the
//! caller bounds that with its drain timeout).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::proxy::ClientAddr;

/// A TCP listener whose connections send small writes at once (no Nagle delay: a response's
/// headers and its first body bytes would otherwise wait for the client's delayed ACK).
#[derive(Debug)]
pub struct NodelayListener(tokio::net::TcpListener);

impl axum::serve::Listener for NodelayListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop (it logs and retries failed accepts).
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        (stream, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Wraps a TCP listener so every connection gets `TCP_NODELAY`.
pub fn nodelay(listener: tokio::net::TcpListener) -> NodelayListener {
    NodelayListener(listener)
}

/// The two connection deadlines.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    header_read: Duration,
    idle: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets every connection finish
/// its exchange in flight and returns when all are closed.
pub(crate) async fn serve<L>(
    router: Router,
    mut listener: L,
    header_read: Duration,
    idle: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: Into<ClientAddr>,
{
    let deadlines = Deadlines { header_read, idle };
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender; `recv` answers `None` once all are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let conn = connection(io, addr.into(), router.clone(), deadlines, stop_rx.clone());
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            conn.await;
            drop(alive);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    Ok(())
}

/// One connection: HTTP/1 with upgrades, the client's address in every request's extensions
/// (`ConnectInfo<ClientAddr>`, for the proxy's `X-Forwarded-For`), the deadlines, and a
/// graceful close when the server stops.
async fn connection<I>(
    io: I,
    client: ClientAddr,
    router: Router,
    deadlines: Deadlines,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let read = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Counted { inner: io, read: Arc::clone(&read) });
    let tower = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(client));
        tower.call(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper starts its (only) timer whenever the connection waits for a head; `HeadTimer`
    // turns it into the header-read and idle deadlines.
    builder.timer(HeadTimer { read, deadlines }).header_read_timeout(deadlines.header_read);
    let conn = builder.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    // The watch's guard is dropped here, not held across the graceful close below.
    let stopped = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped => {
            // Finish the exchange in flight, then close; an idle connection closes now.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // A deadline passed, the client went away, or it sent garbage: nothing to answer.
        tracing::debug!("connection closed: {e}");
    }
}

/// The connection's IO, counting the bytes read (the timer's only view of the connection).
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's timer for one connection. hyper asks it for exactly one kind of sleep, the header
/// read timeout, at the moment the connection starts waiting for a head; the sleep it gets
/// decides by the bytes read since which deadline applies.
#[derive(Clone)]
struct HeadTimer {
    read: Arc<AtomicU64>,
    deadlines: Deadlines,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.head_sleep()
    }

    fn sleep_until(&self, _: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.head_sleep()
    }
}

impl HeadTimer {
    fn head_sleep(&self) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let now = Instant::now();
        let read_at_start = self.read.load(Ordering::Relaxed);
        // Nothing read yet: the connection's first head, due a header-read time after accept.
        let first = if read_at_start == 0 { Some(now) } else { None };
        Box::pin(HeadSleep {
            read: Arc::clone(&self.read),
            read_at_start,
            deadlines: self.deadlines,
            started: now,
            head_began: first,
            sleep: Box::pin(tokio::time::sleep_until(now + self.deadlines.idle)),
        })
    }
}

/// Ready when the connection has waited too long for a head: `header_read` after the head
/// began (the accept for a new connection, else the first byte read since the wait started),
/// or `idle` after the wait started if no byte has come.
struct HeadSleep {
    read: Arc<AtomicU64>,
    read_at_start: u64,
    deadlines: Deadlines,
    started: Instant,
    head_began: Option<Instant>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this each time a read leaves the head incomplete, so the first byte's
        // time is seen as it arrives.
        if self.head_began.is_none() && self.read.load(Ordering::Relaxed) > self.read_at_start {
            self.head_began = Some(Instant::now());
        }
        let deadline = match self.head_began {
            Some(began) => began + self.deadlines.header_read,
            None => self.started + self.deadlines.idle,
        };
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer as _;

    fn timer(read: u64) -> (Arc<AtomicU64>, HeadTimer) {
        let read = Arc::new(AtomicU64::new(read));
        let deadlines =
            Deadlines { header_read: Duration::from_secs(10), idle: Duration::from_secs(120) };
        (Arc::clone(&read), HeadTimer { read, deadlines })
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_gets_the_header_deadline_from_its_accept() {
        let (_, timer) = timer(0);
        let started = Instant::now();
        timer.sleep(Duration::ZERO).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_gets_the_idle_deadline_then_the_header_one_from_its_first_byte() {
        let (read, timer) = timer(500);
        let started = Instant::now();
        timer.sleep(Duration::ZERO).await;
        assert_eq!(started.elapsed(), Duration::from_secs(120));

        let mut sleep = timer.sleep(Duration::ZERO);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(futures_util::poll!(sleep.as_mut()).is_pending());
        read.fetch_add(3, Ordering::Relaxed);
        assert!(futures_util::poll!(sleep.as_mut()).is_pending());
        sleep.await;
        assert_eq!(started.elapsed(), Duration::from_secs(110));
    }
}
