//! Forwards (host.md 9) against a real daemon with a real VM: a loopback port on the host
//! relays to a `nc` server in the guest; a cold sandbox is woken by a connection; `DELETE` and
//! destroy close the listener and its live connections; a port in use is 409.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use reqwest::Method;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Per connection: a greeting line, then everything echoed.
const GREETER: &str = r#"
set -e
printf '#!/bin/sh\necho hello-from-guest\nexec cat\n' > /home/lohar/greet.sh
chmod 0755 /home/lohar/greet.sh
"#;

async fn wait_listening(d: &Daemon, sandbox: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = d.req(Method::GET, &format!("/sandboxes/{sandbox}/ports")).send().await.unwrap();
        let ports: Vec<api::Port> = r.json().await.unwrap();
        if ports.iter().any(|p| p.container_port == port) {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {port} after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn forward(d: &Daemon, sandbox: &str, guest: u32, host: u32) -> reqwest::Response {
    d.req(Method::POST, &format!("/sandboxes/{sandbox}/forward"))
        .json(&serde_json::json!({"guest_port": guest, "host_port": host}))
        .send()
        .await
        .unwrap()
}

async fn list(d: &Daemon, sandbox: &str) -> Vec<api::Forward> {
    let r = d.req(Method::GET, &format!("/sandboxes/{sandbox}/forward")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Connects, reads the guest's greeting and checks an echo; the connection stays open.
async fn greeted(addr: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).await.unwrap();
    let mut s = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_line(&mut line))
        .await
        .expect("no greeting in 60 s")
        .unwrap();
    assert_eq!(line, "hello-from-guest\n");
    s.get_mut().write_all(b"ping\n").await.unwrap();
    line.clear();
    tokio::time::timeout(Duration::from_secs(30), s.read_line(&mut line)).await.unwrap().unwrap();
    assert_eq!(line, "ping\n");
    s
}

/// The connection ends (EOF or reset) within 10 s.
async fn ends(mut s: BufReader<TcpStream>) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the connection was not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

/// Nothing accepts on `addr` any more.
async fn refused(addr: &str) {
    assert!(TcpStream::connect(addr).await.is_err(), "{addr} still accepts");
}

async fn in_flight(d: &Daemon, id: &str, want: usize) {
    common::until(&format!("in_flight {want}"), Duration::from_secs(10), || async {
        d.state.engine.host_activity(id).unwrap().in_flight == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_relay_wake_and_close() {
    let d = Daemon::start().await;
    let sb = d.create("fwd").await;
    d.sh("fwd", GREETER).await;
    d.detach("fwd", &["nc", "-ll", "-p", "7000", "-e", "/home/lohar/greet.sh"]).await;
    wait_listening(&d, "fwd", 7000).await;

    // Validation: 400 before anything binds; an unknown sandbox is 404.
    for (guest, host) in [(0, 0), (70000, 0), (7000, 65536)] {
        assert_eq!(forward(&d, "fwd", guest, host).await.status(), 400, "{guest} {host}");
    }
    assert_eq!(forward(&d, "nope", 7000, 0).await.status(), 404);

    // An ephemeral host port; bytes come from the guest and go back to it.
    let r = forward(&d, "fwd", 7000, 0).await;
    assert_eq!(r.status(), 201);
    let f: api::Forward = r.json().await.unwrap();
    assert_ne!(f.host_port, 0);
    assert_eq!(f.address, format!("127.0.0.1:{}", f.host_port));
    assert_eq!((f.sandbox_id.as_str(), f.guest_port), (sb.id.as_str(), 7000));
    let conn = greeted(&f.address).await;
    // The live connection holds the lease (it is activity) and shows in the list.
    in_flight(&d, &sb.id, 1).await;
    let listed = list(&d, "fwd").await;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].host_port, listed[0].connections), (f.host_port, 1));
    drop(conn);
    in_flight(&d, &sb.id, 0).await;

    // A host port in use: ours, and one another process holds -> 409 port_in_use.
    let r = forward(&d, "fwd", 7000, u32::from(f.host_port)).await;
    assert_eq!(r.status(), 409);
    let body: api::ErrorBody = r.json().await.unwrap();
    assert_eq!(body.code, "port_in_use");
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = other.local_addr().unwrap().port();
    assert_eq!(forward(&d, "fwd", 7000, u32::from(taken)).await.status(), 409);
    drop(other);

    // A sandbox the thermal manager put to disk is woken by a connection.
    d.state.engine.stop(&sb.id, Duration::ZERO).await.unwrap();
    assert_eq!(d.state.engine.thermal(&sb.id).unwrap(), engine::Thermal::Cold);
    let conn = greeted(&f.address).await;
    assert_eq!(d.state.engine.thermal(&sb.id).unwrap(), engine::Thermal::Hot);

    // DELETE closes the listener and the live connection.
    let r = d.req(Method::DELETE, "/sandboxes/fwd/forward").send().await.unwrap();
    assert_eq!(r.status(), 204);
    ends(conn).await;
    refused(&f.address).await;
    assert!(list(&d, "fwd").await.is_empty());
    in_flight(&d, &sb.id, 0).await;

    // A fixed host port (the one just freed); destroying the sandbox closes it too.
    let r = forward(&d, "fwd", 7000, u32::from(f.host_port)).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let conn = greeted(&f.address).await;
    let r = d.req(Method::DELETE, "/sandboxes/fwd").send().await.unwrap();
    assert_eq!(r.status(), 200);
    ends(conn).await;
    refused(&f.address).await;
    assert!(d.state.forwards.list(&sb.id).is_empty());
    d.stop().await;
}
