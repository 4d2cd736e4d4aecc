#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Egress NAT against a "remote host": a second namespace joined to the engine's namespace by a
//! veth pair, with a TCP server that records who connected.

mod common;

use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::ExecRequest;
use common::*;
use engine::egress::{self, Egress};
use engine::ippool::Subnet;
use engine::net::Netns;

const REMOTE_PORT: u16 = 7000;
const REPLY: &str = "hello-from-remote";

/// Runs `ip` with `args`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `cmd` run inside namespace `ns`; stdout.
fn in_ns(ns: &str, cmd: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The guest runs `nc` to the remote server; its stdout and exit code.
async fn guest_fetch(vm: &BootedVm, remote: Ipv4Addr) -> (String, i32) {
    let cmd = format!("nc -w 2 {remote} {REMOTE_PORT}");
    let out = vm
        .client
        .exec_request(&ExecRequest::command(["sh", "-c", &cmd]), Duration::from_secs(30))
        .await
        .unwrap();
    (out.stdout_text(), out.exit_code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_reach_the_outside_through_nat_and_the_outside_cannot_reach_them() {
    let started = Instant::now();
    let net = TestNet::new().await;
    let subnet: Subnet = format!("10.{}.0.0/24", net.subnet).parse().unwrap();

    // The namespace's kernel must do nftables with masquerade; say so plainly if it cannot.
    let probe = Command::new("ip")
        .args(["netns", "exec", net.ns.name(), "nft", "list", "tables"])
        .output()
        .expect("nft missing: run scripts/setup (package nftables)");
    assert!(probe.status.success(), "nft: {}", String::from_utf8_lossy(&probe.stderr));

    // The remote host: its own namespace (the guard exists before the namespace does).
    let remote_name = format!("bhatti-r{}", std::process::id());
    let _remote_guard = NetnsGuard(remote_name.clone());
    let remote_ns = Netns::create(&remote_name).await.unwrap();

    // A veth created directly between the two namespaces: nothing appears in the machine's own.
    let uplink_ip = Ipv4Addr::new(192, 168, net.subnet, 1);
    let remote_ip = Ipv4Addr::new(192, 168, net.subnet, 2);
    let ns = net.ns.name();
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &remote_name,
    ]);
    ip(&["-n", ns, "addr", "add", &format!("{uplink_ip}/30"), "dev", "up0"]);
    ip(&["-n", ns, "link", "set", "up0", "up"]);
    ip(&["-n", &remote_name, "addr", "add", &format!("{remote_ip}/30"), "dev", "eth0"]);
    ip(&["-n", &remote_name, "link", "set", "eth0", "up"]);

    // The remote server: records each peer's address and answers with a line. The listening
    // socket is created inside the remote namespace and stays there.
    let listener = remote_ns
        .enter(move || TcpListener::bind(SocketAddrV4::new(remote_ip, REMOTE_PORT)))
        .await
        .unwrap();
    let peers: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
    let seen = peers.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if let Ok(peer) = conn.peer_addr() {
                seen.lock().unwrap().push(peer);
            }
            let _ = conn.write_all(format!("{REPLY}\n").as_bytes());
        }
    });

    let vm = boot(&net, 5, 128).await;
    let egress = Egress { uplink: "up0".into(), next_hop: remote_ip, link: None };

    // Before enable: no way out.
    let (stdout, code) = guest_fetch(&vm, remote_ip).await;
    assert!(code != 0 && !stdout.contains(REPLY), "reached the remote without NAT: {stdout:?}");
    assert!(peers.lock().unwrap().is_empty(), "{:?}", peers.lock().unwrap());

    // After enable: the guest gets the reply, and the remote saw the uplink address.
    egress::enable(&net.ns, subnet, &egress).await.unwrap();
    assert_eq!(in_ns(ns, &["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "1");
    let (stdout, code) = guest_fetch(&vm, remote_ip).await;
    assert_eq!((stdout.as_str(), code), (format!("{REPLY}\n").as_str(), 0));
    let seen: Vec<Ipv4Addr> = peers
        .lock()
        .unwrap()
        .iter()
        .map(|p| match p {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(a) => panic!("v6 peer {a}"),
        })
        .collect();
    assert_eq!(seen, [uplink_ip], "masquerade: the remote must see the uplink, not {}", vm.ip);

    // Enable is idempotent: still one table, one masquerade rule, and it still works.
    egress::enable(&net.ns, subnet, &egress).await.unwrap();
    let tables = in_ns(ns, &["nft", "list", "tables"]);
    assert_eq!(tables.matches("table ip bhatti").count(), 1, "{tables}");
    let table = in_ns(ns, &["nft", "list", "table", "ip", "bhatti"]);
    assert_eq!(table.matches("masquerade").count(), 1, "{table}");
    let (stdout, _) = guest_fetch(&vm, remote_ip).await;
    assert_eq!(stdout, format!("{REPLY}\n"));

    // The outside cannot open a connection to a guest, even when it routes the guest subnet
    // to us. The guest listens on 1024 (a loop, so a probe does not use it up), and a connect
    // from the engine's namespace proves the listener is there; from the remote, the SYN must
    // vanish (a timeout, not a refusal, which would mean it reached the guest).
    ip(&["-n", &remote_name, "route", "add", &subnet.to_string(), "via", &uplink_ip.to_string()]);
    let listen =
        ExecRequest::command(["sh", "-c", "while true; do echo guest | nc -l -p 1024; done"]);
    vm.client.exec_detached(&listen).await.unwrap();
    let guest = SocketAddr::from((vm.ip, 1024));
    let inside = probe_until_connected(&net.ns, guest).await;
    assert!(inside, "the guest's listener on 1024 never answered from the engine's namespace");
    let outside = remote_ns
        .enter(move || Ok(TcpStream::connect_timeout(&guest, Duration::from_secs(2)).map(drop)))
        .await
        .unwrap();
    match outside {
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the remote reached the guest (or was refused by it): {other:?}"),
    }

    // After disable: no way out again, and the table, route and forwarding are gone.
    egress::disable(&net.ns, &egress).await.unwrap();
    egress::disable(&net.ns, &egress).await.unwrap();
    let tables = in_ns(ns, &["nft", "list", "tables"]);
    assert!(!tables.lines().any(|l| l.trim() == "table ip bhatti"), "{tables}");
    assert_eq!(in_ns(ns, &["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "0");
    assert!(!in_ns(ns, &["ip", "route"]).contains("default"));
    let before = peers.lock().unwrap().len();
    let (stdout, code) = guest_fetch(&vm, remote_ip).await;
    assert!(code != 0 && !stdout.contains(REPLY), "reached the remote after disable: {stdout:?}");
    assert_eq!(peers.lock().unwrap().len(), before);
    eprintln!("egress test took {:.1} s", started.elapsed().as_secs_f64());
}

/// Connects to `addr` from inside `ns` until it works (up to ~10 s); whether it did.
async fn probe_until_connected(ns: &Netns, addr: SocketAddr) -> bool {
    for _ in 0..20 {
        let ok = ns
            .enter(move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()))
            .await
            .unwrap();
        if ok {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}
