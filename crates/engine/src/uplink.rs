//! The uplink: how the engine's namespace reaches the outside, made and removed by the daemon.
//!
//! A veth pair joins the engine's namespace (end `uplink0`) to the host's (end `bhu-<hash>`),
//! on a /30 taken from a small link-local range that overlaps none of the host's addresses or
//! routes. On the host side one nftables table (`ip bhatti_uplink_<hash>`) masquerades what
//! comes out of the veth, refuses new connections from it to the host itself (every address
//! the host has, now or later: the daemon's API, SSH, anything), and lets nothing from the
//! host's other networks open a connection into it. IPv4 forwarding is switched on where it
//! was off, and switched back off when the uplink goes (a marker file remembers that across a
//! daemon that was killed). The engine's side (its default route, NAT and forwarding) is
//! `egress::enable`, fed the [`Egress`] this returns.
//!
//! "The host side" is the daemon's own namespace in production; tests pass a namespace of
//! their own instead, so their traffic never touches the machine's network.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bhatti_core::egress::Cidr;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::egress::Egress;
use crate::error::EngineError;
use crate::net::Netns;
use crate::run::run;

/// The uplink's end inside the engine's namespace.
pub const NS_END: &str = "uplink0";
/// The range /30 links are taken from unless configured otherwise.
pub const DEFAULT_RANGE: Cidr = Cidr::new(Ipv4Addr::new(169, 254, 100, 0), 24);
const TOOL_DEADLINE: Duration = Duration::from_secs(10);
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Where the uplink leads.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// The link-local range the /30 is taken from.
    pub range: Cidr,
    /// The namespace standing for the host (`None`: the daemon's own).
    pub host_netns: Option<String>,
    /// Remembers that forwarding was switched on by us (so a later run switches it back).
    pub marker: PathBuf,
}

/// The host side: the daemon's namespace or one the tests made.
#[derive(Debug, Clone)]
enum HostSide {
    Here,
    Netns(Netns),
}

impl HostSide {
    fn ip(&self) -> Command {
        let mut cmd = Command::new("ip");
        if let HostSide::Netns(ns) = self {
            cmd.args(["-n", ns.name()]);
        }
        cmd
    }

    async fn nft(&self, doc: &Value) -> Result<(), EngineError> {
        match self {
            HostSide::Netns(ns) => ns.nft(doc).await,
            HostSide::Here => crate::net::nft_here(doc).await,
        }
    }

    /// Runs `f` where the host side's `/proc/sys/net` is: a blocking thread here, or a thread
    /// inside the namespace.
    async fn in_host<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        match self {
            HostSide::Here => tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?,
            HostSide::Netns(ns) => ns.enter(f).await,
        }
    }

    async fn read_forwarding(&self) -> Result<bool, EngineError> {
        let read = || std::fs::read_to_string(IP_FORWARD).map(|s| s.trim() == "1");
        self.in_host(read).await.map_err(|source| EngineError::Net {
            op: "read ip_forward on the host side".into(),
            source,
        })
    }

    async fn write_forwarding(&self, on: bool) -> Result<(), EngineError> {
        let value = if on { "1" } else { "0" };
        self.in_host(move || std::fs::write(IP_FORWARD, value)).await.map_err(|source| {
            EngineError::Net { op: format!("set ip_forward={value} on the host side"), source }
        })
    }

    /// Every IPv4 network the host side has an address in or a route to (not the default
    /// route), from `ip -j` (JSON, not screen text).
    async fn networks(&self) -> Result<Vec<Cidr>, EngineError> {
        let mut nets = Vec::new();
        let out = run(self.ip().args(["-j", "-4", "addr", "show"]), TOOL_DEADLINE).await?;
        let links: Vec<Value> = serde_json::from_slice(&out).unwrap_or_default();
        for link in &links {
            for addr in link["addr_info"].as_array().into_iter().flatten() {
                if let (Some(local), Some(len)) =
                    (addr["local"].as_str(), addr["prefixlen"].as_u64())
                    && let Ok(ip) = local.parse::<Ipv4Addr>()
                {
                    nets.push(Cidr::new(ip, u8::try_from(len).unwrap_or(32)));
                }
            }
        }
        let out = run(self.ip().args(["-j", "-4", "route", "show", "table", "all"]), TOOL_DEADLINE)
            .await?;
        let routes: Vec<Value> = serde_json::from_slice(&out).unwrap_or_default();
        for route in &routes {
            if let Some(cidr) = route["dst"].as_str().and_then(parse_dst) {
                nets.push(cidr);
            }
        }
        Ok(nets)
    }

    async fn has_default_route(&self) -> Result<bool, EngineError> {
        let out =
            run(self.ip().args(["-j", "-4", "route", "show", "default"]), TOOL_DEADLINE).await?;
        let routes: Vec<Value> = serde_json::from_slice(&out).unwrap_or_default();
        Ok(!routes.is_empty())
    }
}

/// A route's destination as `ip -j` spells it: `a.b.c.d/len`, a bare address, or `default`.
fn parse_dst(dst: &str) -> Option<Cidr> {
    if dst == "default" {
        return None;
    }
    match dst.parse::<Cidr>() {
        Ok(cidr) => Some(cidr),
        // A route with host bits (rare, but `ip` prints what it was given): its network.
        Err(_) => {
            let (addr, len) = dst.split_once('/')?;
            Some(Cidr::new(addr.parse().ok()?, len.parse().ok()?))
        }
    }
}

/// The first /30 of `range` that overlaps none of `taken`.
pub fn pick_link(range: Cidr, taken: &[Cidr]) -> Option<Cidr> {
    let size = 1u32 << (32 - u32::from(range.len.min(30)));
    (0..size / 4)
        .map(|i| Cidr::new(Ipv4Addr::from_bits(range.addr.to_bits() + i * 4), 30))
        .find(|link| !taken.iter().any(|t| t.overlaps(link)))
}

/// Short names derived from the engine's namespace, so two engines (a test's and the daemon's)
/// never share a veth or a table.
fn suffix(engine_netns: &str) -> String {
    // FNV-1a: stable across runs and builds (std's hasher is not).
    let hash = engine_netns
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{:06x}", hash & 0xff_ffff)
}

/// The live uplink.
#[derive(Debug)]
pub struct Uplink {
    host: HostSide,
    host_end: String,
    table: String,
    link: Cidr,
    marker: PathBuf,
    /// Whether the host side had a default route when the uplink came up.
    pub default_route: bool,
}

impl Uplink {
    /// Makes the uplink for the engine namespace `engine_netns` (created if missing), removing
    /// whatever an earlier run left first. `avoid` are ranges the link must not overlap besides
    /// the host's own (the guests' subnet).
    pub async fn up(
        engine_netns: &str,
        config: &UplinkConfig,
        avoid: &[Cidr],
    ) -> Result<(Self, Egress), EngineError> {
        let ns = Netns::create(engine_netns).await?;
        let host = match &config.host_netns {
            None => HostSide::Here,
            Some(name) => HostSide::Netns(Netns::create(name).await?),
        };
        let tag = suffix(engine_netns);
        let host_end = format!("bhu-{tag}");
        let table = format!("bhatti_uplink_{tag}");
        sweep(&host, &ns, &host_end, &table).await?;
        let mut taken = host.networks().await?;
        taken.extend_from_slice(avoid);
        let link = pick_link(config.range, &taken).ok_or_else(|| EngineError::Net {
            op: format!("choose an uplink address in {}", config.range),
            source: io::Error::new(
                io::ErrorKind::AddrInUse,
                "every /30 of the range overlaps the host's networks",
            ),
        })?;
        let host_ip = Ipv4Addr::from_bits(link.addr.to_bits() + 1);
        let ns_ip = Ipv4Addr::from_bits(link.addr.to_bits() + 2);
        let uplink = Self {
            host: host.clone(),
            host_end: host_end.clone(),
            table: table.clone(),
            link,
            marker: config.marker.clone(),
            default_route: false,
        };
        // From here on a failure takes down what was made.
        match uplink.build(&ns, host_ip, ns_ip).await {
            Ok(default_route) => {
                let egress = Egress { uplink: NS_END.into(), next_hop: host_ip, link: Some(link) };
                Ok((Self { default_route, ..uplink }, egress))
            }
            Err(e) => {
                uplink.down().await;
                Err(e)
            }
        }
    }

    async fn build(
        &self,
        ns: &Netns,
        host_ip: Ipv4Addr,
        ns_ip: Ipv4Addr,
    ) -> Result<bool, EngineError> {
        let host = &self.host;
        run(
            host.ip()
                .args(["link", "add", &self.host_end, "type", "veth", "peer", "name", NS_END])
                .args(["netns", ns.name()]),
            TOOL_DEADLINE,
        )
        .await?;
        let host_cidr = format!("{host_ip}/30");
        run(host.ip().args(["addr", "add", &host_cidr, "dev", &self.host_end]), TOOL_DEADLINE)
            .await?;
        run(host.ip().args(["link", "set", &self.host_end, "up"]), TOOL_DEADLINE).await?;
        let ns_cidr = format!("{ns_ip}/30");
        run(
            Command::new("ip").args(["-n", ns.name(), "addr", "add", &ns_cidr, "dev", NS_END]),
            TOOL_DEADLINE,
        )
        .await?;
        run(Command::new("ip").args(["-n", ns.name(), "link", "set", NS_END, "up"]), TOOL_DEADLINE)
            .await?;
        host.nft(&host_table(&self.table, &self.host_end, self.link)).await?;
        if !host.read_forwarding().await? {
            // The marker first: a daemon killed right after the switch still switches it back.
            write_marker(&self.marker).await?;
            host.write_forwarding(true).await?;
        }
        host.has_default_route().await
    }

    /// The link's range (never reachable from guests).
    pub fn link(&self) -> Cidr {
        self.link
    }

    /// The host side's address on the link (the namespace's next hop).
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.link.addr.to_bits() + 1)
    }

    /// Removes the uplink, the host table and (if we switched it on) forwarding. Best effort:
    /// each failure is logged and the rest still goes.
    pub async fn down(&self) {
        if let Err(e) = remove(&self.host, &self.host_end, &self.table).await {
            tracing::warn!("removing the uplink: {}", e.report());
        }
        restore_forwarding(&self.host, &self.marker).await;
    }
}

/// Removes an earlier run's uplink (found by name) and host table, and switches forwarding
/// back off if a marker says an earlier run switched it on and nothing else needs it now:
/// what `Uplink::down` would have done had that run ended cleanly. For `egress: off`.
pub async fn sweep_leftovers(engine_netns: &str, config: &UplinkConfig) -> Result<(), EngineError> {
    let ns = Netns::create(engine_netns).await?;
    let host = match &config.host_netns {
        None => HostSide::Here,
        Some(name) => HostSide::Netns(Netns::create(name).await?),
    };
    let tag = suffix(engine_netns);
    sweep(&host, &ns, &format!("bhu-{tag}"), &format!("bhatti_uplink_{tag}")).await?;
    restore_forwarding(&host, &config.marker).await;
    Ok(())
}

async fn sweep(
    host: &HostSide,
    ns: &Netns,
    host_end: &str,
    table: &str,
) -> Result<(), EngineError> {
    remove(host, host_end, table).await?;
    // The namespace's end goes with its peer; one left alone (a half-made pair) goes here.
    if ns.interfaces().await?.iter().any(|i| i == NS_END) {
        run(Command::new("ip").args(["-n", ns.name(), "link", "del", NS_END]), TOOL_DEADLINE)
            .await?;
    }
    Ok(())
}

async fn remove(host: &HostSide, host_end: &str, table: &str) -> Result<(), EngineError> {
    let exists = run(host.ip().args(["-j", "link", "show"]), TOOL_DEADLINE).await?;
    let links: Vec<Value> = serde_json::from_slice(&exists).unwrap_or_default();
    if links.iter().any(|l| l["ifname"].as_str() == Some(host_end)) {
        run(host.ip().args(["link", "del", host_end]), TOOL_DEADLINE).await?;
    }
    host.nft(&json!({ "nftables": [
        { "add": { "table": { "family": "ip", "name": table } } },
        { "delete": { "table": { "family": "ip", "name": table } } },
    ]}))
    .await
}

async fn write_marker(marker: &Path) -> Result<(), EngineError> {
    let path = marker.to_owned();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(&path)?;
        file.sync_all()
    })
    .await
    .map_err(io::Error::other)
    .and_then(|r| r)
    .map_err(|source| EngineError::Net { op: format!("write {}", marker.display()), source })
}

async fn restore_forwarding(host: &HostSide, marker: &Path) {
    if !marker.exists() {
        return;
    }
    match host.write_forwarding(false).await {
        Ok(()) => {
            if let Err(e) = std::fs::remove_file(marker) {
                tracing::warn!("removing {}: {e}", marker.display());
            }
            tracing::info!(
                "IPv4 forwarding switched back off on the host (the uplink had switched it on)"
            );
        }
        Err(e) => tracing::warn!("{}", e.report()),
    }
}

/// The host side's table: masquerade out of the uplink's link, no new connections from the
/// uplink to the host itself (rejected, so a guest fails at once), none into it from the
/// host's other networks.
fn host_table(table: &str, host_end: &str, link: Cidr) -> Value {
    let t = json!({ "family": "ip", "name": table });
    let rule = |chain: &str, expr: Vec<Value>| json!({ "add": { "rule": { "family": "ip", "table": table, "chain": chain, "expr": expr }}});
    let iface = |key: &str, op: &str| json!({ "match": { "op": op, "left": { "meta": { "key": key } }, "right": host_end } });
    let new =
        json!({ "match": { "op": "in", "left": { "ct": { "key": "state" } }, "right": ["new"] } });
    let chain = |name: &str, kind: &str, hook: &str, prio: i32| {
        json!({ "add": { "chain": {
            "family": "ip", "table": table, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept",
        }}})
    };
    json!({ "nftables": [
        { "add": { "table": t } },
        { "delete": { "table": t } },
        { "add": { "table": t } },
        chain("input", "filter", "input", 0),
        rule("input", vec![
            iface("iifname", "=="), new.clone(),
            json!({ "match": { "op": "==", "left": { "meta": { "key": "l4proto" } }, "right": "tcp" } }),
            json!({ "reject": { "type": "tcp reset" } }),
        ]),
        rule("input", vec![
            iface("iifname", "=="), new.clone(),
            json!({ "reject": { "type": "icmp", "expr": "admin-prohibited" } }),
        ]),
        chain("forward", "filter", "forward", 0),
        rule("forward", vec![iface("oifname", "=="), new, json!({ "drop": null })]),
        chain("postrouting", "nat", "postrouting", 100),
        rule("postrouting", vec![
            json!({ "match": {
                "op": "==",
                "left": { "payload": { "protocol": "ip", "field": "saddr" } },
                "right": { "prefix": { "addr": link.addr.to_string(), "len": link.len } },
            }}),
            iface("oifname", "!="),
            json!({ "masquerade": null }),
        ]),
    ]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn the_link_avoids_every_network_the_host_has() {
        let range = cidr("169.254.100.0/24");
        assert_eq!(pick_link(range, &[]), Some(cidr("169.254.100.0/30")));
        let taken = [cidr("169.254.100.0/30"), cidr("169.254.100.4/32")];
        assert_eq!(pick_link(range, &taken), Some(cidr("169.254.100.8/30")));
        // A host route over the whole range leaves nothing.
        assert_eq!(pick_link(range, &[cidr("169.254.0.0/16")]), None);
        // A range smaller than a /30 is one /30.
        assert_eq!(pick_link(cidr("169.254.100.4/32"), &[]), Some(cidr("169.254.100.4/30")));
    }

    #[test]
    fn route_destinations_as_ip_prints_them() {
        assert_eq!(parse_dst("default"), None);
        assert_eq!(parse_dst("10.0.0.0/8"), Some(cidr("10.0.0.0/8")));
        assert_eq!(parse_dst("192.0.2.7"), Some(cidr("192.0.2.7/32")));
        assert_eq!(parse_dst("10.0.0.1/8"), Some(cidr("10.0.0.0/8")));
    }

    #[test]
    fn names_are_short_and_differ_per_engine() {
        let (a, b) = (suffix("bhatti"), suffix("bt-test-1"));
        assert_ne!(a, b);
        assert!(format!("bhu-{a}").len() < libc::IFNAMSIZ);
    }
}
