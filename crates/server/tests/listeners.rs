//! Issue 19 item 2: slow clients cannot hold connections, on either listener. With a 1 s
//! header-read deadline and a 2 s idle one: half a request head, a head trickled a byte at a
//! time, and a connection that sends nothing are closed within the bound while a normal request
//! on another connection is answered; an idle keep-alive connection is closed after the idle
//! deadline (not the header one) and one used within it keeps working. Both over TCP (the
//! test daemon's listener) and the Unix socket (a second `server::serve` on the same state, as
//! `bhatti serve` runs it). No VM is needed: `/health` is enough.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Daemon;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const HEADER_READ: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(3);

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

#[derive(Clone, Copy)]
enum Via<'a> {
    Tcp(&'a str),
    Unix(&'a Path),
}

async fn connect(via: Via<'_>) -> Box<dyn Conn> {
    match via {
        Via::Tcp(addr) => Box::new(tokio::net::TcpStream::connect(addr).await.unwrap()),
        Via::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await.unwrap()),
    }
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

/// Reads one answer (head and `Content-Length` body) and returns its status line.
async fn read_answer(c: &mut Box<dyn Conn>) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut byte))
            .await
            .expect("no answer in 10 s")
            .unwrap();
        assert_eq!(n, 1, "eof in the head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    c.read_exact(&mut body).await.unwrap();
    head.lines().next().unwrap().to_owned()
}

/// Waits (bounded) until the server closes the connection; what it sent before does not
/// matter (a 408, or nothing). Returns how long that took from `since`.
async fn closed_after(c: &mut Box<dyn Conn>, since: Instant, bound: Duration) -> Duration {
    let mut buf = [0u8; 1024];
    loop {
        let left = bound.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, c.read(&mut buf)).await {
            Err(_) => panic!("still open after {bound:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

async fn check(via: Via<'_>, name: &str) {
    // Half a head: closed after the header deadline; meanwhile another connection is served.
    let mut slow = connect(via).await;
    let since = Instant::now();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut ok = connect(via).await;
    ok.write_all(HEALTH).await.unwrap();
    assert_eq!(read_answer(&mut ok).await, "HTTP/1.1 200 OK", "{name}");
    let took = closed_after(&mut slow, since, HEADER_READ + SLACK).await;
    assert!(
        took >= HEADER_READ - Duration::from_millis(100),
        "{name}: half a head cut at {took:?}"
    );

    // Nothing at all: the same deadline from the accept.
    let mut silent = connect(via).await;
    let took = closed_after(&mut silent, Instant::now(), HEADER_READ + SLACK).await;
    assert!(took >= HEADER_READ - Duration::from_millis(100), "{name}: silent cut at {took:?}");

    // A head trickled a byte every 100 ms (slowloris): bytes keep coming, the head never
    // completes, and the deadline still holds.
    let mut trickle = connect(via).await;
    let since = Instant::now();
    trickle.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    loop {
        assert!(since.elapsed() < HEADER_READ + SLACK, "{name}: the trickled head is still open");
        if trickle.write_all(b"X").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), trickle.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            _ => {}
        }
    }
    let took = since.elapsed();
    assert!(took >= HEADER_READ - Duration::from_millis(100), "{name}: trickle cut at {took:?}");

    // Keep-alive: a second request within the idle time is answered on the same connection;
    // then, idle, the connection is closed after the idle deadline (not the header one).
    let mut kept = connect(via).await;
    kept.write_all(HEALTH).await.unwrap();
    assert_eq!(read_answer(&mut kept).await, "HTTP/1.1 200 OK", "{name}");
    tokio::time::sleep(HEADER_READ + Duration::from_millis(300)).await;
    kept.write_all(HEALTH).await.unwrap();
    assert_eq!(read_answer(&mut kept).await, "HTTP/1.1 200 OK", "{name}: reused within idle");
    let since = Instant::now();
    let took = closed_after(&mut kept, since, IDLE + SLACK).await;
    assert!(took >= IDLE - Duration::from_millis(100), "{name}: idle cut at {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_on_both_listeners() {
    let d = Daemon::start_with(|s| {
        s.header_read_timeout = HEADER_READ;
        s.idle_timeout = IDLE;
    })
    .await;
    let socket = d.data.path().join("api.sock");
    let unix = tokio::net::UnixListener::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let unix_server = tokio::spawn(server::serve(d.state.clone(), unix, async move {
        let _ = stopped.await;
    }));
    let tcp = d.url.strip_prefix("http://").unwrap().to_owned();
    // Both at once: the deadlines are per connection, not per listener.
    tokio::join!(check(Via::Tcp(&tcp), "tcp"), check(Via::Unix(&socket), "unix"));

    // The graceful stop still works with connections open: an idle one is closed at once.
    let mut open = connect(Via::Unix(&socket)).await;
    open.write_all(HEALTH).await.unwrap();
    assert_eq!(read_answer(&mut open).await, "HTTP/1.1 200 OK");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), unix_server).await.unwrap().unwrap().unwrap();
    let took = closed_after(&mut open, Instant::now(), Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1));
    d.stop().await;
}
