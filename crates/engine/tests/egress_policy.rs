#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Egress policies on real guests, against an "internet" made of namespaces this test creates:
//!
//! ```text
//!  guests ── br0 [engine ns] uplink0 ══ bhu-* [wan ns: stands for the host] wan0 ══ eth0 [net ns]
//!                 resolver on .1:53           API stand-in on :8080                 HTTP 203.0.113.10, .11
//!                                                                                   DNS zone 203.0.113.53
//! ```
//!
//! The uplink is made by `engine::uplink` exactly as the daemon makes it, with the wan
//! namespace as its host side; the resolver forwards to the zone from the wan namespace. Nothing
//! touches the machine's own network.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use bhatti_core::egress::{NetPolicy, Posture};
use common::*;
use engine::net::Netns;
use engine::uplink::{Uplink, UplinkConfig};
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

const WEB_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const WEB_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const ZONE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
const WAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The zone: names to addresses, TTL 300.
fn zone(name: &str) -> Option<Ipv4Addr> {
    match name {
        "allowed.test" => Some(WEB_A),
        "other.test" => Some(WEB_B),
        "a.wild.test" | "b.a.wild.test" => Some(WEB_B),
        // Allowed by name, pointing at a private address: rebinding.
        "rebind.test" => Some(Ipv4Addr::new(10, 9, 9, 9)),
        "metadata.test" => Some(Ipv4Addr::new(169, 254, 169, 254)),
        _ => None,
    }
}

fn zone_answer(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let mut reply = Message::response(q.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = q.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(question.clone());
    match (zone(&name), question.query_type()) {
        (Some(addr), RecordType::A) => {
            reply.add_answer(Record::from_rdata(question.name().clone(), 300, RData::A(A(addr))));
        }
        (Some(_), _) => {}
        (None, _) => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.to_vec().ok()
}

/// The stand-in internet and host; namespaces deleted on drop.
struct Internet {
    wan: Netns,
    _guards: [NetnsGuard; 2],
}

impl Internet {
    async fn new(tag: &str) -> Self {
        let wan_name = format!("bt-wan-{}-{tag}", std::process::id());
        let net_name = format!("bt-net-{}-{tag}", std::process::id());
        let guards = [NetnsGuard(wan_name.clone()), NetnsGuard(net_name.clone())];
        let wan = Netns::create(&wan_name).await.unwrap();
        let net = Netns::create(&net_name).await.unwrap();
        ip(&["-n", &wan_name, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0"]);
        ip(&["-n", &wan_name, "link", "set", "eth0", "netns", &net_name]);
        ip(&["-n", &wan_name, "addr", "add", &format!("{WAN}/24"), "dev", "wan0"]);
        ip(&["-n", &wan_name, "link", "set", "wan0", "up"]);
        ip(&["-n", &wan_name, "route", "add", "default", "via", &NET.to_string()]);
        ip(&["-n", &net_name, "addr", "add", &format!("{NET}/24"), "dev", "eth0"]);
        ip(&["-n", &net_name, "link", "set", "eth0", "up"]);
        // Metadata, as a cloud puts it beside the host: reachable from the wan namespace, so
        // only the policy stands between a guest and it.
        ip(&["-n", &wan_name, "route", "add", "169.254.169.254/32", "via", &NET.to_string()]);
        for addr in [WEB_A, WEB_B, ZONE, METADATA] {
            ip(&["-n", &net_name, "addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        }
        for web in [WEB_A, WEB_B, METADATA] {
            let listener =
                net.enter(move || TcpListener::bind(SocketAddrV4::new(web, 80))).await.unwrap();
            serve_lines(listener, format!("hello from {web}"));
        }
        // A stream that goes on for a minute: a connection a policy change must cut.
        let stream = net.enter(|| TcpListener::bind(SocketAddrV4::new(WEB_A, 81))).await.unwrap();
        std::thread::spawn(move || {
            for conn in stream.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    for i in 0..600 {
                        if writeln!(conn, "tick {i}").is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
            }
        });
        // The "daemon's API" on the host: every address of the host side, port 8080.
        let api = wan.enter(|| TcpListener::bind("0.0.0.0:8080")).await.unwrap();
        serve_lines(api, "the host's API".into());
        let dns = net.enter(|| UdpSocket::bind(SocketAddrV4::new(ZONE, 53))).await.unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = dns.recv_from(&mut buf) {
                if let Some(answer) = zone_answer(&buf[..n]) {
                    let _ = dns.send_to(&answer, from);
                }
            }
        });
        Self { wan, _guards: guards }
    }
}

fn serve_lines(listener: TcpListener, line: String) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = writeln!(conn, "{line}");
            let mut sink = [0u8; 64];
            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = conn.read(&mut sink);
        }
    });
}

/// An engine whose namespace leads out through an uplink into `internet`'s wan, with the
/// resolver forwarding to the zone.
async fn engine_on(internet: &Internet) -> (TestEngine, Uplink) {
    let data = tempfile::tempdir().unwrap();
    let (mut config, guard) = engine_config(data.path());
    let marker = data.path().join("uplink.forwarding");
    let uplink_config = UplinkConfig {
        range: engine::uplink::DEFAULT_RANGE,
        host_netns: Some(internet.wan.name().to_owned()),
        marker,
    };
    let subnet = bhatti_core::egress::Cidr::new(config.subnet.gateway(), config.subnet.prefix());
    let (uplink, egress) = Uplink::up(&config.netns, &uplink_config, &[subnet]).await.unwrap();
    assert!(uplink.default_route, "the wan namespace has a default route");
    config.egress = Some(egress);
    config.resolver = Some(engine::ResolverConfig {
        upstreams: vec![(ZONE, 53).into()],
        upstream_netns: Some(internet.wan.name().to_owned()),
    });
    let engine = engine::Engine::new(config.clone()).await.unwrap();
    let test = TestEngine::from_parts(engine, config, data, guard);
    (test, uplink)
}

fn policy(default: Posture, hosts: &[&str], cidrs: &[&str]) -> bhatti_core::Policy {
    NetPolicy {
        default,
        allow_hosts: hosts.iter().map(|s| s.to_string()).collect(),
        allow_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
    }
    .check()
    .unwrap()
}

/// What a guest got from a TCP connection: the first line, or the error nc printed, and how
/// long it took.
struct Fetch {
    ok: bool,
    text: String,
    took: Duration,
}

async fn fetch(e: &engine::Engine, sandbox: &str, addr: Ipv4Addr, port: u16) -> Fetch {
    let cmd = format!("echo | nc -w 4 {addr} {port} 2>&1");
    let started = Instant::now();
    let out = e.exec(sandbox, &["sh", "-c", &cmd]).await.unwrap();
    let text = out.stdout_text();
    let ok = text.contains("hello from") || text.contains("API");
    Fetch { ok, text, took: started.elapsed() }
}

/// Asserts the guest cannot connect and learns so at once (a reset, not a timeout).
async fn refused_fast(e: &engine::Engine, sandbox: &str, addr: Ipv4Addr, port: u16) {
    let f = fetch(e, sandbox, addr, port).await;
    assert!(!f.ok, "{sandbox} reached {addr}:{port}: {}", f.text);
    assert!(f.text.contains("refused"), "{sandbox} -> {addr}:{port} not refused: {:?}", f.text);
    // nc waits 4 s for a silent drop; a reset comes back at once (exec itself costs some
    // hundreds of milliseconds under TCG).
    assert!(f.took < Duration::from_millis(2500), "{sandbox} -> {addr}:{port} took {:?}", f.took);
}

async fn reaches(e: &engine::Engine, sandbox: &str, addr: Ipv4Addr) {
    let f = fetch(e, sandbox, addr, 80).await;
    assert!(f.ok && f.text.contains(&addr.to_string()), "{sandbox} -> {addr}: {:?}", f.text);
}

/// `nslookup name` in the guest (through its resolv.conf: the engine's resolver): the
/// addresses it answered, or `None` if the lookup failed.
async fn lookup(e: &engine::Engine, sandbox: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
    let out = e.exec(sandbox, &["nslookup", "-type=a", name]).await.unwrap();
    if out.exit_code != 0 {
        return None;
    }
    let text = out.stdout_text();
    // busybox prints the server first ("Server: 10.x.0.1", "Address: 10.x.0.1:53"), then the
    // answers ("Name: ...", "Address: a.b.c.d") after the name line.
    let answers = text.split_once("Name:").map(|(_, rest)| rest.to_owned()).unwrap_or_default();
    Some(
        answers
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Address:"))
            .filter_map(|a| a.trim().parse().ok())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_reaches_the_internet_by_name_but_never_the_host_or_metadata() {
    let internet = Internet::new("pub").await;
    let (e, uplink) = engine_on(&internet).await;
    let mut alice = small("alice-dev");
    alice.owner = "alice".into();
    e.create(&alice).await.unwrap();
    // Another owner's sandbox beside it, denied everything.
    let mut bob = small("bob-dev");
    bob.owner = "bob".into();
    bob.net_policy = policy(Posture::Deny, &[], &[]);
    let bob_ip = e.create(&bob).await.unwrap().ip;

    // The resolver answers by name; the answer connects; an address too.
    let resolv = e.exec("alice-dev", &["cat", "/etc/resolv.conf"]).await.unwrap().stdout_text();
    assert!(resolv.contains(&format!("nameserver {}", e.config.subnet.gateway())), "{resolv}");
    assert_eq!(lookup(&e, "alice-dev", "allowed.test").await, Some(vec![WEB_A]));
    reaches(&e, "alice-dev", WEB_A).await;
    reaches(&e, "alice-dev", WEB_B).await;
    let route = e.exec("alice-dev", &["ip", "route"]).await.unwrap().stdout_text();
    assert!(route.contains("default via"), "{route}");

    // Never, under any policy: the host (its wan address and the uplink's own), metadata,
    // the engine's gateway ports.
    refused_fast(&e, "alice-dev", WAN, 8080).await;
    refused_fast(&e, "alice-dev", uplink.host_address(), 8080).await;
    refused_fast(&e, "alice-dev", METADATA, 80).await;
    // Something listening in the engine's namespace, as the daemon's API would on 0.0.0.0.
    let gateway_api = e.netns().enter(|| TcpListener::bind("0.0.0.0:8080")).await.unwrap();
    serve_lines(gateway_api, "the host's API".into());
    refused_fast(&e, "alice-dev", e.config.subnet.gateway(), 8080).await;
    // Another owner's sandbox: nothing gets through (the bridge drops it; no reset to wait for).
    let f = fetch(&e, "alice-dev", bob_ip, 22).await;
    assert!(!f.ok && !f.text.contains("open"), "{}", f.text);

    // Bob: deny means nothing but the resolver, which refuses every name.
    assert_eq!(lookup(&e, "bob-dev", "allowed.test").await, None);
    refused_fast(&e, "bob-dev", WEB_A, 80).await;
    refused_fast(&e, "bob-dev", WAN, 8080).await;
    let stats = e.resolver_stats().unwrap();
    assert!(stats.forwarded >= 1 && stats.refused >= 1, "{stats:?}");

    e.engine.shutdown(Duration::ZERO, Duration::from_secs(60)).await;
    e.engine.close_network().await;
    uplink.down().await;
    assert_uplink_gone(&internet, &e.config.netns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_rules_open_exactly_what_the_resolver_answered() {
    let internet = Internet::new("names").await;
    let (e, uplink) = engine_on(&internet).await;
    let mut spec = small("agent");
    spec.net_policy = policy(
        Posture::Deny,
        &["allowed.test", "*.wild.test", "rebind.test", "metadata.test"],
        &[],
    );
    e.create(&spec).await.unwrap();

    // Before any lookup, even the allowed name's address is closed.
    refused_fast(&e, "agent", WEB_A, 80).await;
    assert_eq!(lookup(&e, "agent", "allowed.test").await, Some(vec![WEB_A]));
    reaches(&e, "agent", WEB_A).await;
    // A name outside the rules is refused, and its address stays closed.
    assert_eq!(lookup(&e, "agent", "other.test").await, None);
    refused_fast(&e, "agent", WEB_B, 80).await;
    // The wildcard opens names below it (not the apex), and then their address.
    assert_eq!(lookup(&e, "agent", "wild.test").await, None);
    assert_eq!(lookup(&e, "agent", "b.a.wild.test").await, Some(vec![WEB_B]));
    reaches(&e, "agent", WEB_B).await;
    // Rebinding: allowed names pointing at a private or metadata address are refused, counted.
    let before = e.resolver_stats().unwrap().rebinding_refused;
    assert_eq!(lookup(&e, "agent", "rebind.test").await, None);
    assert_eq!(lookup(&e, "agent", "metadata.test").await, None);
    assert_eq!(e.resolver_stats().unwrap().rebinding_refused, before + 2);

    // A CIDR rule opens an address no name resolved to.
    let mut open_b = spec.net_policy.clone();
    open_b.cidrs.push("203.0.113.11/32".parse().unwrap());
    e.set_net_policy("agent", open_b).await.unwrap();
    reaches(&e, "agent", WEB_B).await;

    e.engine.shutdown(Duration::ZERO, Duration::from_secs(60)).await;
    e.engine.close_network().await;
    uplink.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_holds_at_once_and_survives_stop_start_and_restart() {
    let internet = Internet::new("change").await;
    let (e, uplink) = engine_on(&internet).await;
    e.create(&small("box")).await.unwrap();
    reaches(&e, "box", WEB_A).await;

    // A long download is running when the policy turns to deny: it is cut.
    let mut stream = agent::ExecRequest::command(["sh", "-c", "nc 203.0.113.10 81 > /tmp/ticks"]);
    stream.output_file = Some("/tmp/stream.log".into());
    let pid = e.exec_detached("box", &stream).await.unwrap().pid;
    let ticking = || async {
        let out = e.exec("box", &["sh", "-c", "wc -l < /tmp/ticks"]).await.unwrap();
        out.stdout_text().trim().parse::<u32>().unwrap_or(0)
    };
    let mut seen = 0;
    for _ in 0..100 {
        seen = ticking().await;
        if seen >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen >= 3, "the stream never started");
    let changed = Instant::now();
    e.set_net_policy("box", policy(Posture::Deny, &[], &[])).await.unwrap();
    let took = changed.elapsed();
    refused_fast(&e, "box", WEB_A, 80).await;
    // The cut connection's nc ends (a reset) well before the stream's minute is up.
    let mut ended = false;
    for _ in 0..100 {
        if !process_alive(&e, "box", pid).await {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "the established connection to a now-denied address was not cut");
    let after = ticking().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ticking().await, after, "ticks still arrive after the cut");
    eprintln!("policy change applied in {took:?}");

    // Open again with a CIDR rule: at once, no restart.
    e.set_net_policy("box", policy(Posture::Deny, &[], &["203.0.113.0/24"])).await.unwrap();
    reaches(&e, "box", WEB_A).await;
    e.set_net_policy("box", policy(Posture::Deny, &[], &[])).await.unwrap();

    // Stop and start: the same policy.
    e.stop("box", Duration::ZERO).await.unwrap();
    e.start("box").await.unwrap();
    refused_fast(&e, "box", WEB_A, 80).await;

    // The engine restarts from the records: the policy comes back with the sandbox, before
    // it can send anything.
    let records: Vec<_> = e
        .engine
        .shutdown(Duration::ZERO, Duration::from_secs(60))
        .await
        .into_iter()
        .map(|(_, r)| r.unwrap().0)
        .collect();
    assert_eq!(records[0].net_policy.default, Posture::Deny);
    let (old, config, d, _guard) = e.into_parts();
    drop(old);
    let (engine, failed) = engine::Engine::new_recovering(config.clone(), records).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(engine.net_policy("box").unwrap().posture, Posture::Deny);
    refused_fast(&engine, "box", WEB_A, 80).await;
    engine.set_net_policy("box", policy(Posture::Public, &[], &[])).await.unwrap();
    reaches(&engine, "box", WEB_A).await;
    engine.shutdown(Duration::ZERO, Duration::from_secs(60)).await;
    engine.close_network().await;
    uplink.down().await;
    drop(d);
}

/// The uplink's veth, its host-side table and the namespace side's tables are gone.
fn assert_uplink_gone(internet: &Internet, engine_netns: &str) {
    let links =
        Command::new("ip").args(["-n", internet.wan.name(), "-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("bhu-"), "{links}");
    let tables = |ns: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let wan_tables = tables(internet.wan.name());
    assert!(!wan_tables.contains("bhatti_uplink"), "{wan_tables}");
    let ns_tables = tables(engine_netns);
    assert!(
        !ns_tables.lines().any(|l| l == "table ip bhatti" || l == "table ip bhatti_egress"),
        "{ns_tables}"
    );
}

/// Microsecond samples `netprobe` printed in the guest.
async fn probe(e: &engine::Engine, sandbox: &str, args: &[&str]) -> Vec<f64> {
    let mut argv = vec!["netprobe"];
    argv.extend_from_slice(args);
    let out = e.exec(sandbox, &argv).await.unwrap();
    assert_eq!(out.exit_code, 0, "netprobe {args:?}: {}", out.stderr_text());
    let samples: Vec<f64> =
        out.stdout_text().lines().map(|l| l.trim().parse::<f64>().unwrap() / 1000.0).collect();
    assert!(!samples.is_empty(), "netprobe printed nothing");
    samples
}

/// The issue's speed targets, measured in one run on one guest, interleaved in rounds so drift
/// in the machine's load hits both sides alike: TCP connect p50 with an allow-list policy (a
/// pinned name) within 10% of `public`; the resolver's p50 within 1 ms of asking the zone
/// directly. The test asserts loose bounds (a regression guard under TCG's noise) and prints
/// the numbers the README quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_of_the_policy_and_the_resolver() {
    const ROUNDS: usize = 4;
    const PER_ROUND: &str = "50";
    let internet = Internet::new("speed").await;
    let (e, uplink) = engine_on(&internet).await;
    e.create(&small("bench")).await.unwrap();
    let pinned = policy(Posture::Deny, &["allowed.test"], &[]);
    let target = format!("{WEB_A}:80");
    let gateway = e.config.subnet.gateway().to_string();
    let (mut public, mut policed, mut resolver, mut direct) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        e.set_net_policy("bench", policy(Posture::Public, &[], &[])).await.unwrap();
        public.extend(probe(&e, "bench", &["connect", &target, PER_ROUND]).await);
        direct.extend(
            probe(&e, "bench", &["dns", &ZONE.to_string(), "allowed.test", PER_ROUND]).await,
        );
        resolver.extend(probe(&e, "bench", &["dns", &gateway, "allowed.test", PER_ROUND]).await);
        e.set_net_policy("bench", pinned.clone()).await.unwrap();
        assert_eq!(lookup(&e, "bench", "allowed.test").await, Some(vec![WEB_A]), "pin");
        policed.extend(probe(&e, "bench", &["connect", &target, PER_ROUND]).await);
    }
    let report = |what: &str, v: &[f64]| {
        let (p50, p95, p99) = p50_95_99(v);
        eprintln!("{what:<40} n={:<4} p50 {p50:.3} ms  p95 {p95:.3} ms  p99 {p99:.3} ms", v.len());
        (p50, p99)
    };
    let (public_p50, public_p99) = report("connect, public", &public);
    let (policed_p50, policed_p99) = report("connect, allow-list (pinned name)", &policed);
    let (direct_p50, _) = report("dns, straight to the zone", &direct);
    let (resolver_p50, resolver_p99) = report("dns, through the engine's resolver", &resolver);
    let connect_ratio = policed_p50 / public_p50;
    let dns_added = resolver_p50 - direct_p50;
    eprintln!(
        "connect p50 ratio policy/public {connect_ratio:.3} (target <= 1.10): {}",
        if connect_ratio <= 1.10 { "met" } else { "NOT met" }
    );
    eprintln!(
        "resolver adds {dns_added:.3} ms at p50 (target <= 1 ms): {}",
        if dns_added <= 1.0 { "met" } else { "NOT met" }
    );
    // Loose guards: a policy that doubled connect times, or a resolver adding 10 ms, is a
    // regression whatever the noise.
    assert!(connect_ratio < 2.0, "policy connect p50 {policed_p50} vs public {public_p50}");
    assert!(policed_p99 < public_p99 * 3.0 + 5.0, "policy connect p99 {policed_p99}");
    assert!(dns_added < 10.0, "resolver adds {dns_added} ms at p50");
    assert!(resolver_p99 < 100.0, "resolver p99 {resolver_p99} ms");

    e.engine.shutdown(Duration::ZERO, Duration::from_secs(60)).await;
    e.engine.close_network().await;
    uplink.down().await;
}
