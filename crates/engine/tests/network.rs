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
