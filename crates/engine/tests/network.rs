//! Networking between guests on the engine's bridge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent::ExecRequest;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_on_the_bridge_reach_each_other() {
    let net = TestNet::new().await;
    let a = boot(&net, 5, 128).await;
    let b = boot(&net, 6, 128).await;
    // b serves one line on a TCP port; a connects to it over the bridge.
    let mut serve = ExecRequest::command(["sh", "-c", "echo hello-from-b | nc -l -p 7000"]);
    serve.user = Some("root".into());
    serve.output_file = Some("/tmp/nc.log".into());
    b.client.exec_detached(&serve).await.unwrap();
    let fetch = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do nc -w 2 {} 7000 && exit 0; sleep 0.3; done; exit 1",
        b.ip
    );
    let out = a
        .client
        .exec_request(&ExecRequest::command(["sh", "-c", &fetch]), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        (out.stdout_text().as_str(), out.exit_code),
        ("hello-from-b\n", 0),
        "stderr: {}",
        out.stderr_text()
    );
    // And ICMP the other way (root for the raw socket).
    let mut ping = ExecRequest::command(["ping", "-c", "1", "-W", "3", &a.ip.to_string()]);
    ping.user = Some("root".into());
    let out = b.client.exec_request(&ping, Duration::from_secs(10)).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}{}", out.stdout_text(), out.stderr_text());
}

/// Through the engine: sandboxes of one owner reach each other, of another owner not at all,
/// and the rules follow a sandbox through a cold cycle and a restarted engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_keeps_owners_apart() {
    let e = test_engine().await;
    for (id, owner) in [("a1", "usr_a"), ("a2", "usr_a"), ("b1", "usr_b")] {
        e.create(&small(id).owned_by(owner)).await.unwrap();
    }
    let ip = |id: &str| e.info(id).unwrap().ip;
    let root = |script: String| {
        let mut req = ExecRequest::command(["sh", "-c", &script]);
        req.user = Some("root".into());
        req
    };
    for id in ["a2", "b1"] {
        let mut serve = root(format!("while true; do echo hello-from-{id} | nc -l -p 7000; done"));
        serve.output_file = Some("/tmp/serve.log".into());
        e.exec_detached(id, &serve).await.unwrap();
    }
    let fetch = |to: std::net::Ipv4Addr| {
        root(format!("for i in 1 2 3; do nc -w 2 {to} 7000 && exit 0; sleep 0.3; done; exit 1"))
    };
    let sibling = e.exec_request("a1", &fetch(ip("a2")), Duration::from_secs(30)).await.unwrap();
    assert_eq!(sibling.stdout_text(), "hello-from-a2\n", "siblings of one owner talk");
    let other = e.exec_request("a1", &fetch(ip("b1")), Duration::from_secs(30)).await.unwrap();
    assert!(other.exit_code != 0 && other.stdout_text().is_empty(), "a1 reached b1");
    // The other way round, and after b1 went cold and came back.
    e.stop("b1", Duration::ZERO).await.unwrap();
    let back = e.exec_request("b1", &fetch(ip("a2")), Duration::from_secs(30)).await.unwrap();
    assert!(back.exit_code != 0 && back.stdout_text().is_empty(), "b1 reached a2");
    // The host still reaches everyone (these execs are the host's own connections).
    for id in ["a1", "a2", "b1"] {
        assert_eq!(e.exec(id, &["true"]).await.unwrap().exit_code, 0);
    }
}
