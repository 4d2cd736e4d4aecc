//! Isolation between owners and against spoofing (`engine::isolation`), on real guests.
//!
//! Every negative check is paired with the same command succeeding where it is allowed, and the
//! VM tests end by removing the filter and showing the blocked command then succeeds: a test
//! cannot pass because its setup is broken.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent::ExecRequest;
use common::*;
use engine::isolation::{self, Port};

fn port(net: &TestNet, host: u8, group: u32) -> Port {
    Port {
        tap: format!("tap{host}"),
        mac: [0x52, 0x54, 0x00, 0x00, net.subnet, host],
        ip: net.guest_ip(host),
        group,
    }
}

fn subnet(net: &TestNet) -> engine::ippool::Subnet {
    format!("10.{}.0.0/24", net.subnet).parse().unwrap()
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Admits guest `host` of `group`, then boots it (so its first frame is already filtered).
async fn admit_and_boot(net: &TestNet, host: u8, group: u32) -> BootedVm {
    isolation::admit(&net.ns, &port(net, host, group)).await.unwrap();
    boot(net, host, 128).await
}

fn root(script: &str) -> ExecRequest {
    let mut req = ExecRequest::command(["sh", "-c", script]);
    req.user = Some("root".into());
    req
}

/// Runs `script` as root in the guest; (stdout, exit code).
async fn sh(vm: &BootedVm, script: &str, timeout: Duration) -> (String, i32) {
    let out = vm.client.exec_request(&root(script), timeout).await.unwrap();
    (out.stdout_text(), out.exit_code as i32)
}

/// The guest connects to `ip:port` (up to 3 tries, 2 s connect timeout each) and prints what
/// the server sent. The same command for allowed and forbidden destinations.
async fn fetch(vm: &BootedVm, ip: Ipv4Addr, port: u16) -> (String, i32) {
    let script =
        format!("for i in 1 2 3; do nc -w 2 {ip} {port} && exit 0; sleep 0.3; done; exit 1");
    sh(vm, &script, Duration::from_secs(30)).await
}

/// One ICMP echo from the guest, 2 s to answer.
async fn ping(vm: &BootedVm, ip: Ipv4Addr) -> bool {
    sh(vm, &format!("ping -c 1 -W 2 {ip}"), Duration::from_secs(15)).await.1 == 0
}

/// Serves `line` on TCP `port` in the guest, one connection after another.
async fn serve(vm: &BootedVm, port: u16, line: &str) {
    let mut req = root(&format!("while true; do echo {line} | nc -l -p {port}; done"));
    req.output_file = Some(format!("/tmp/serve-{port}.log"));
    vm.client.exec_detached(&req).await.unwrap();
}

/// The host connects from the engine's namespace to `ip:port` and reads what it is sent.
async fn host_fetch(net: &TestNet, ip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    net.ns
        .enter(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let attempt = TcpStream::connect_timeout(
                    &SocketAddr::from((ip, port)),
                    Duration::from_secs(2),
                )
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut text = String::new();
                    s.read_to_string(&mut text)?;
                    Ok(text)
                });
                // The guest's server loop has a gap between two connections.
                match attempt {
                    Ok(text) if !text.is_empty() => return Ok(text),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    _ if Instant::now() > deadline => return Ok(String::new()),
                    _ => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_apply_idempotently_and_ports_come_and_go() {
    let net = TestNet::new().await;
    let list = |net: &TestNet| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", net.ns.name(), "nft", "-j", "list", "ruleset"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let rules_in = |doc: &serde_json::Value, chain: &str| -> Vec<String> {
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["rule"]["chain"] == chain)
            .map(|o| o["rule"]["expr"].to_string())
            .collect()
    };
    let tables = |doc: &serde_json::Value| -> Vec<String> {
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("table"))
            .map(|t| format!("{} {}", t["family"].as_str().unwrap(), t["name"].as_str().unwrap()))
            .collect()
    };
    let p = port(&net, 9, 4);
    isolation::install(&net.ns, "br0", subnet(&net), std::slice::from_ref(&p)).await.unwrap();
    isolation::install(&net.ns, "br0", subnet(&net), std::slice::from_ref(&p)).await.unwrap();
    isolation::admit(&net.ns, &p).await.unwrap();
    let doc = list(&net);
    assert_eq!(tables(&doc), ["bridge bhatti_iso", "inet bhatti_guard"]);
    assert_eq!(rules_in(&doc, "in_tap9").len(), 4, "{doc}");
    assert_eq!(rules_in(&doc, "prerouting").len(), 1, "{doc}");
    // Admitted again with another identity: the old one is gone, not kept beside it.
    let mut moved = p.clone();
    moved.group = 5;
    moved.ip = net.guest_ip(19);
    isolation::admit(&net.ns, &moved).await.unwrap();
    let doc = list(&net);
    let rules = rules_in(&doc, "in_tap9").join("\n");
    assert_eq!(rules_in(&doc, "in_tap9").len(), 4, "{rules}");
    assert!(rules.contains(&net.guest_ip(19).to_string()), "{rules}");
    assert!(!rules.contains(&format!("\"{}\"", net.guest_ip(9))), "{rules}");
    // A second port, then removal (twice: idempotent) of the first.
    isolation::admit(&net.ns, &port(&net, 10, 4)).await.unwrap();
    isolation::remove(&net.ns, "tap9").await.unwrap();
    isolation::remove(&net.ns, "tap9").await.unwrap();
    let doc = list(&net);
    let text = doc.to_string();
    assert!(!text.contains("tap9"), "{text}");
    assert_eq!(rules_in(&doc, "in_tap10").len(), 4, "{doc}");
    isolation::uninstall(&net.ns).await.unwrap();
    isolation::uninstall(&net.ns).await.unwrap();
    assert!(tables(&list(&net)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_are_separated_and_guests_reach_nothing_in_the_namespace() {
    let started = Instant::now();
    let net = TestNet::new().await;
    let gw = net.gateway();
    isolation::install(&net.ns, "br0", subnet(&net), &[]).await.unwrap();
    // Owner 1: a1 and a2; owner 2: b.
    let a1 = admit_and_boot(&net, 5, 1).await;
    let a2 = admit_and_boot(&net, 6, 1).await;
    let b = admit_and_boot(&net, 7, 2).await;
    serve(&a2, 7000, "hello-from-a2").await;
    serve(&b, 7000, "hello-from-b").await;
    // A listener of the namespace's own, on the gateway address.
    let listener = net
        .ns
        .enter(move || {
            let l = std::net::TcpListener::bind((gw, 7100))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let host_server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"hello-from-host\n").await;
        }
    });

    // Siblings talk: TCP and ICMP, both ways.
    assert_eq!(fetch(&a1, a2.ip, 7000).await, ("hello-from-a2\n".into(), 0));
    assert!(ping(&a1, a2.ip).await);
    assert!(ping(&a2, a1.ip).await);
    // The host's own connections reach every guest (the agent, and b's server).
    assert_eq!(host_fetch(&net, b.ip, 7000).await.unwrap(), "hello-from-b\n");
    assert_eq!(host_fetch(&net, a2.ip, 7000).await.unwrap(), "hello-from-a2\n");
    // ...and the namespace's listener answers the host itself.
    assert_eq!(host_fetch(&net, gw, 7100).await.unwrap(), "hello-from-host\n");

    // Another owner's guest: no TCP, no ICMP, either way.
    let (text, code) = fetch(&a1, b.ip, 7000).await;
    assert_eq!((text.as_str(), code), ("", 1), "a1 reached b");
    assert!(!ping(&a1, b.ip).await, "a1 pinged b");
    assert!(!ping(&b, a2.ip).await, "b pinged a2");
    // The namespace: only ICMP echo to the gateway.
    assert!(ping(&a1, gw).await);
    let (text, code) = fetch(&a1, gw, 7100).await;
    assert_eq!((text.as_str(), code), ("", 1), "a1 reached the namespace's listener");
    // Nor through the gateway, routed, once the namespace forwards (as egress makes it).
    net.ns.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).await.unwrap();
    let via_gw = format!("ip route add {}/32 via {gw}", b.ip);
    assert_eq!(sh(&a1, &via_gw, Duration::from_secs(10)).await.1, 0);
    let (text, code) = fetch(&a1, b.ip, 7000).await;
    assert_eq!((text.as_str(), code), ("", 1), "a1 reached b through the gateway");
    // (b's answers could not come back anyway: b talks to a1 directly. So count what arrives.)
    let echos = guest_in_echos(&b).await;
    sh(&a1, &format!("ping -c 3 -W 1 {}", b.ip), Duration::from_secs(15)).await;
    assert_eq!(guest_in_echos(&b).await, echos, "a1's pings reached b through the gateway");
    // The host still reaches b after all that.
    assert_eq!(b.client.exec(&["echo", "ok"]).await.unwrap().stdout_text(), "ok\n");

    // Control: without the filter the very same commands succeed (a1 to b through the
    // gateway first, then directly).
    isolation::uninstall(&net.ns).await.unwrap();
    sh(&a1, &format!("ping -c 3 -W 1 {}", b.ip), Duration::from_secs(15)).await;
    assert!(guest_in_echos(&b).await > echos, "the control's pings never reached b");
    assert_eq!(fetch(&a1, b.ip, 7000).await, ("hello-from-b\n".into(), 0));
    sh(&a1, &format!("ip route del {}/32", b.ip), Duration::from_secs(10)).await;
    assert_eq!(fetch(&a1, b.ip, 7000).await, ("hello-from-b\n".into(), 0));
    assert!(ping(&b, a2.ip).await);
    assert_eq!(fetch(&a1, gw, 7100).await, ("hello-from-host\n".into(), 0));
    host_server.abort();
    eprintln!("owners test took {:?}", started.elapsed());
}

/// A counter of /proc/net/snmp (`section` as "Udp:", `name` as "NoPorts").
fn snmp_counter(snmp: &str, section: &str, name: &str) -> u64 {
    let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with(section)).collect();
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    let i = names.iter().position(|n| *n == name).unwrap();
    values[i].parse().unwrap()
}

/// Udp NoPorts of the guest: datagrams it received for a port nobody listens on. A guest that
/// gets a datagram sent to port 9 counts it here.
fn no_ports(snmp: &str) -> u64 {
    snmp_counter(snmp, "Udp:", "NoPorts")
}

/// ICMP echo requests the guest received (whether or not its answer got anywhere).
async fn guest_in_echos(vm: &BootedVm) -> u64 {
    let snmp = sh(vm, "cat /proc/net/snmp", Duration::from_secs(10)).await.0;
    snmp_counter(&snmp, "Icmp:", "InEchos")
}

async fn guest_no_ports(vm: &BootedVm) -> u64 {
    no_ports(&sh(vm, "cat /proc/net/snmp", Duration::from_secs(10)).await.0)
}

/// What one impersonation attempt achieved.
#[derive(Debug)]
struct Impersonation {
    /// Datagrams for the victim that the impostor received while wearing its identity.
    impostor_got: u64,
    /// Datagrams the victim received over the same time.
    victim_got: u64,
    /// Whether the bridge ever learnt the victim's MAC on the impostor's port.
    mac_stolen: bool,
}

/// Guest `a` puts on `b`'s MAC and IP, announces them (gratuitous ARP, a ping to the gateway)
/// and takes them off again, while the host keeps sending datagrams to `b`'s IP, each after
/// deleting `b`'s bridge FDB entry so the bridge floods it to every port.
async fn impersonate(net: &TestNet, a: &BootedVm, b: &BootedVm) -> Impersonation {
    let (pa, pb) = (port(net, a.ip.octets()[3], 0), port(net, b.ip.octets()[3], 0));
    let (mac_a, mac_b) = (mac_text(pa.mac), mac_text(pb.mac));
    let put_on = |mac: &str, ip: Ipv4Addr| {
        format!(
            "ip link set eth0 down; ip link set eth0 address {mac}; ip addr flush dev eth0; \
             ip addr add {ip}/24 dev eth0; ip link set eth0 up"
        )
    };
    let victim_before = guest_no_ports(b).await;
    sh(a, "rm -f /tmp/spoof.log", Duration::from_secs(10)).await;
    // The first second lets the agent's answer to this exec leave before the link goes down.
    let script = format!(
        "sleep 1; {}; grep Udp: /proc/net/snmp > /tmp/spoof.log; \
         arping -c 2 -U -I eth0 {ipb}; ping -c 2 -W 1 {gw}; sleep 1; \
         grep Udp: /proc/net/snmp >> /tmp/spoof.log; {}; echo done >> /tmp/spoof.log",
        put_on(&mac_b, pb.ip),
        put_on(&mac_a, pa.ip),
        ipb = pb.ip,
        gw = net.gateway(),
    );
    let mut req = root(&script);
    req.output_file = Some("/tmp/spoof.out".into());
    a.client.exec_detached(&req).await.unwrap();

    // The host's side, on a task of its own until `a` is back.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, ns_net) = (stop.clone(), NetRef::of(net));
        let (mac_b, tap_a, tap_b, ip_b) = (mac_b.clone(), pa.tap.clone(), pb.tap.clone(), pb.ip);
        tokio::spawn(async move {
            let mut stolen = false;
            while !stop.load(Ordering::SeqCst) {
                let fdb = ns_net.fdb(&["show", "br", "br0"]);
                stolen |= fdb.lines().any(|l| l.starts_with(&mac_b) && l.contains(&tap_a));
                ns_net.fdb(&["del", &mac_b, "dev", &tap_b, "master"]);
                ns_net.send_udp(ip_b).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            stolen
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        assert!(Instant::now() < deadline, "guest a never came back");
        // While `a` wears `b`'s MAC these time out (its NIC ignores frames for its own MAC).
        if let Ok(out) =
            a.client.exec_request(&root("cat /tmp/spoof.log"), Duration::from_secs(2)).await
        {
            let text = out.stdout_text();
            if text.contains("done") {
                break text;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    stop.store(true, Ordering::SeqCst);
    let mac_stolen = sender.await.unwrap();
    let snmp: Vec<&str> = log.lines().filter(|l| l.starts_with("Udp:")).collect();
    assert_eq!(snmp.len(), 4, "{log}");
    let impostor_got = no_ports(&snmp[2..].join("\n")) - no_ports(&snmp[..2].join("\n"));
    let victim_got = guest_no_ports(b).await - victim_before;
    Impersonation { impostor_got, victim_got, mac_stolen }
}

/// The engine's namespace as a [`TestNet`] lends it to a task: the bridge FDB, and datagrams
/// from the host.
struct NetRef {
    ns: engine::net::Netns,
}

impl NetRef {
    fn of(net: &TestNet) -> Self {
        Self { ns: net.ns.clone() }
    }

    fn fdb(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", self.ns.name(), "bridge", "fdb"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends one datagram to `ip` port 9 (nobody listens there) from the namespace.
    async fn send_udp(&self, ip: Ipv4Addr) {
        self.ns
            .enter(move || {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.send_to(b"for-b", (ip, 9)).map(drop)
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_wearing_anothers_mac_and_ip_receives_and_steals_nothing() {
    let started = Instant::now();
    let net = TestNet::new().await;
    isolation::install(&net.ns, "br0", subnet(&net), &[]).await.unwrap();
    let a = admit_and_boot(&net, 5, 1).await;
    let b = admit_and_boot(&net, 6, 2).await;
    // The measure works: a datagram the host sends to a's own address counts in a.
    let before = guest_no_ports(&a).await;
    NetRef::of(&net).send_udp(a.ip).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while guest_no_ports(&a).await == before {
        assert!(Instant::now() < deadline, "a never counted the host's datagram");
        NetRef::of(&net).send_udp(a.ip).await;
    }
    // And a's MAC was learnt on a's port once a spoke.
    let mac_a = mac_text(port(&net, 5, 1).mac);
    assert!(
        NetRef::of(&net)
            .fdb(&["show", "br", "br0"])
            .lines()
            .any(|l| l.starts_with(&mac_a) && l.contains("dev tap5")),
        "{}",
        NetRef::of(&net).fdb(&["show", "br", "br0"])
    );

    let filtered = impersonate(&net, &a, &b).await;
    eprintln!("with isolation: {filtered:?}");
    assert_eq!(filtered.impostor_got, 0, "{filtered:?}");
    assert!(!filtered.mac_stolen, "{filtered:?}");
    assert!(filtered.victim_got > 0, "b got nothing while flooded: {filtered:?}");
    // b's address still leads to b.
    assert_eq!(b.client.exec(&["echo", "ok"]).await.unwrap().stdout_text(), "ok\n");
    let perm = net.ns.neighbours("br0").await.unwrap();
    assert!(perm.contains(&b.ip), "{perm:?}");

    // Control: without the filter the same impersonation works.
    isolation::uninstall(&net.ns).await.unwrap();
    let open = impersonate(&net, &a, &b).await;
    eprintln!("without isolation: {open:?}");
    assert!(open.impostor_got > 0 && open.mac_stolen, "{open:?}");
    eprintln!("impersonation test took {:?}", started.elapsed());
}
