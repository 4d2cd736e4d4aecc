//! SET_IDENTITY in a real guest: hostname, machine-id, entropy, the reset of outside TCP
//! connections (listeners, loopback and the agent's own connections kept), the token last.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use agent::{AgentClient, AgentError, ExecRequest, ReadOptions};
use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const SERVER: &str = r#"
import socket, sys
gw, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((gw, port)); s.listen(1); s.settimeout(120)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(120)
c.sendall(b"hello\n")
print("accepted", flush=True)
try:
    while True:
        if not c.recv(1024):
            print("EOF", flush=True); break
except ConnectionResetError:
    print("RST", flush=True)
except socket.timeout:
    print("TIMEOUT", flush=True)
"#;

const CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
data = b""
while True:
    d = c.recv(1024)
    if not d: break
    data += d
print(data.decode().strip(), flush=True)
"#;

fn root(script: &str) -> ExecRequest {
    let mut req = ExecRequest::command(["sh", "-c", script]);
    req.user = Some("root".into());
    req
}

async fn sh(client: &AgentClient, script: &str) -> String {
    let out = client.exec_request(&root(script), Duration::from_secs(30)).await.unwrap();
    assert_eq!(out.exit_code, 0, "{script}: {}", out.stderr_text());
    out.stdout_text()
}

/// The next line the server prints, within 60 s.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("server said nothing for 60 s")
        .unwrap()
        .expect("server exited")
}

/// Waits until `path` exists in the guest and is not empty (bounded), and returns its content.
async fn wait_file(client: &AgentClient, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(file) = client.file_read(path, ReadOptions::default()).await
            && !file.data.is_empty()
        {
            return String::from_utf8_lossy(&file.data).into_owned();
        }
        assert!(Instant::now() < deadline, "{path} never appeared in the guest");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sockets in TCP state `state` (hex, `01` established, `0A` listening) with `port` at either
/// end, in the guest's /proc/net/tcp and tcp6 (busybox's `nc -l` listens on IPv6). Read by
/// awk: busybox `cat` uses sendfile, which gets only the header line of these files.
async fn sockets_on(client: &AgentClient, state: &str, port: u16) -> usize {
    let script = format!(
        "awk '$4==\"{state}\" && ($2 ~ /:{port:04X}$/ || $3 ~ /:{port:04X}$/)' \
         /proc/net/tcp /proc/net/tcp6 | wc -l"
    );
    sh(client, &script).await.trim().parse().unwrap()
}

/// Waits (bounded) until the guest has `count` sockets in `state` on `port`.
async fn wait_sockets(client: &AgentClient, state: &str, port: u16, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sockets_on(client, state, port).await != count {
        if Instant::now() > deadline {
            let seen = sh(client, "netstat -tan; tail /tmp/*.log").await;
            panic!("never {count} sockets in state {state} on {port}:\n{seen}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_identity_renews_the_guest() {
    let net = TestNet::new().await;
    let vm = boot(&net, 7, 128).await;
    let gateway = net.gateway().to_string();
    let old = &vm.client;

    // A server in the namespace (the outside world), and a guest connection to it.
    let mut server = tokio::process::Command::new("ip")
        .args(["netns", "exec", net.ns.name(), "python3", "-c", SERVER, &gateway, "7100"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    assert_eq!(next_line(&mut lines).await, "listening");
    let mut outside = root(&format!(
        "sleep 600 | {{ nc {gateway} 7100 > /tmp/nc.out; echo $? > /tmp/nc.done; }}"
    ));
    outside.output_file = Some("/tmp/outside.log".into());
    old.exec_detached(&outside).await.unwrap();
    assert_eq!(next_line(&mut lines).await, "accepted");
    assert_eq!(wait_file(old, "/tmp/nc.out").await, "hello\n");
    // A guest listener, and a loopback connection inside the guest.
    let mut listener = root("echo listening-ok | nc -l -p 7200");
    listener.output_file = Some("/tmp/listener.log".into());
    old.exec_detached(&listener).await.unwrap();
    let mut loopback_server = root("sleep 600 | nc -l -p 7300 > /dev/null");
    loopback_server.output_file = Some("/tmp/loopback-server.log".into());
    old.exec_detached(&loopback_server).await.unwrap();
    wait_sockets(old, "0A", 7300, 1).await;
    let mut loopback = root("sleep 600 | nc 127.0.0.1 7300");
    loopback.output_file = Some("/tmp/loopback.log".into());
    old.exec_detached(&loopback).await.unwrap();
    wait_sockets(old, "01", 7300, 2).await;
    wait_sockets(old, "0A", 7200, 1).await;
    let random_before = sh(old, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'").await;

    let token = "fedcba9876543210fedcba9876543210";
    let machine_id = "0123456789abcdef0123456789abcdef";
    let entropy: String = (0..64).map(|i| format!("{:02x}", (i * 37 + 11) % 256)).collect();
    let renew = proto::messages::SetIdentity {
        token: Some(token.into()),
        hostname: Some("clone-7".into()),
        machine_id: Some(machine_id.into()),
        entropy: Some(entropy),
        reset_connections: true,
    };
    old.set_identity(&renew).await.unwrap();

    // The outside connection was reset: the server reads a RST, the guest's nc exits.
    assert_eq!(next_line(&mut lines).await, "RST");
    let nc_exit = wait_file(old, "/tmp/nc.done").await;
    eprintln!("guest nc exited with {}", nc_exit.trim());
    // The agent keeps answering on the pooled connection that sent SET_IDENTITY (its local
    // port is the agent's, so it was kept) ...
    assert_eq!(sh(old, "hostname").await, "clone-7\n");
    // ... while new connections need the new token.
    let err = AgentClient::new(old.endpoint().clone(), Some(TOKEN.into()))
        .exec(&["true"])
        .await
        .unwrap_err();
    assert!(matches!(&err, AgentError::Agent(t) if *t == "auth required"), "{err:?}");
    let new = AgentClient::new(old.endpoint().clone(), Some(token.into()));
    assert_eq!(sh(&new, "cat /etc/hostname").await, "clone-7\n");
    assert!(sh(&new, "cat /etc/hosts").await.contains(" clone-7\n"));
    assert_eq!(sh(&new, "cat /etc/machine-id").await, format!("{machine_id}\n"));
    let random_after = sh(&new, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'").await;
    assert_eq!(random_after.len(), 64);
    assert_ne!(random_before, random_after);
    // The loopback connection is still there, and the guest's listener still accepts.
    assert_eq!(sockets_on(&new, "01", 7300).await, 2, "the loopback connection was reset");
    assert_eq!(sockets_on(&new, "0A", 7200).await, 1, "the listener is gone");
    let guest_ip = net.guest_ip(7).to_string();
    let fetched = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("ip")
            .args(["netns", "exec", net.ns.name(), "python3", "-c", CLIENT, &guest_ip, "7200"])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&fetched.stdout),
        "listening-ok\n",
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let _ = server.kill().await;
}

/// A bad field is refused in the guest too, and nothing changed. (And the guest has its
/// virtio-rng.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_identity_refuses_a_bad_machine_id_in_the_guest() {
    let net = TestNet::new().await;
    let vm = boot(&net, 8, 128).await;
    let bad = proto::messages::SetIdentity {
        token: Some("1".repeat(32)),
        hostname: Some("never".into()),
        machine_id: Some("NOT-A-MACHINE-ID".into()),
        ..Default::default()
    };
    let err = vm.client.set_identity(&bad).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Agent(t) if t.to_string().starts_with("set identity: machine_id: ")),
        "{err:?}"
    );
    assert_eq!(sh(&vm.client, "hostname").await, "vm8\n");
    // Every VM has the virtio-rng device, and the guest's hwrng uses it.
    let rng = sh(&vm.client, "cat /sys/class/misc/hw_random/rng_current").await;
    assert!(rng.starts_with("virtio_rng"), "{rng}");
    let fresh = AgentClient::new(vm.client.endpoint().clone(), Some(TOKEN.into()));
    assert_eq!(fresh.exec(&["true"]).await.unwrap().exit_code, 0, "the old token stopped working");
}
