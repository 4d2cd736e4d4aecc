//! Isolation between owners and against spoofing, on the engine's bridge.
//!
//! Every guest is a port (its TAP) on one bridge in the engine's namespace. Two nftables tables
//! in that namespace keep guests apart:
//!
//! - `bridge bhatti_iso` filters frames on the bridge itself:
//!   - *prerouting* (a frame entering from a port, before the bridge learns its source MAC):
//!     only ARP and IPv4 pass, with the port's own MAC as Ethernet source, its own IP as IPv4
//!     source, and its own MAC and IP as ARP sender. Everything else is dropped (IPv6 included:
//!     guests have no IPv6 on the bridge). Since this runs before learning, a guest sending
//!     with another's MAC never teaches the bridge that MAC. A passing frame is marked with
//!     its owner's group (`meta mark`).
//!   - *forward* (once per output port, also for each flooded copy): a frame from another guest
//!     reaches a port only if its mark is that port's group, and only if it is addressed to
//!     that port's MAC or is broadcast/multicast. So a unicast for B that the bridge floods
//!     (unknown or flushed FDB entry) never leaves through A's port.
//!   - *output* (frames from the namespace's own stack, once per output port): the same
//!     destination check, no group check (the host talks to every guest), and nothing with a
//!     guest's source address (a guest's packet routed back through the gateway, when
//!     forwarding is on, would otherwise go around the group check).
//!   - *input* (frames to the namespace's own stack): ARP only when it asks for or answers the
//!     gateway.
//!
//!   Ports nobody admitted get nothing: the base chains drop what no port claims (fail-closed).
//! - `inet bhatti_guard` filters what guests send to the namespace's own addresses (its
//!   `input` hook): replies to connections the host opened pass, ICMP echo to the gateway and
//!   DNS to the gateway's resolver; anything else new from the bridge or from a guest's TAP is
//!   refused (TCP reset, ICMP admin-prohibited), so it fails at once. Forwarding out through
//!   the gateway (optional egress NAT, table `ip bhatti`) is the forward hook's business and
//!   is not touched.
//!
//! Why one bridge with a `bridge`-family filter rather than a bridge per owner: per-owner bridges
//! still need the anti-spoof filter (within one owner, and towards the host), they need an
//! address and a subnet per owner on the host side (or routing between bridges, which is the
//! very traffic to forbid), and a guest that changes owner (a checkpoint resumed by another
//! user) would change subnet. One filter does all three jobs with one subnet.
//!
//! The per-port rules live in chains of their own (`in_<tap>`, `fwd_<tap>`, `out_<tap>`) that
//! the base chains reach through verdict maps keyed by interface name: one hash lookup per frame
//! whatever the number of ports, the rules of a port are literal comparisons that read plainly
//! in `nft list ruleset`, and admitting a port again (a TAP name reused with another MAC, IP or
//! owner) flushes and rewrites its chains in one transaction, where elements of shared sets
//! keyed by `tap . mac . ip` would leave the old identity behind. Owner separation through the
//! mark keeps one element per port, not one per pair of ports.
//!
//! Rules match interface names, so a port is admitted before its TAP exists and the guest's first
//! frame is already filtered. Everything goes to `nft -j -f -` as one JSON document per call
//! (atomic), built with `serde_json` (no rule text is spliced together).
//!
//! The iso table owns the packet mark of frames from guests; nothing else in the namespace may
//! use marks.

use std::io;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::error::EngineError;
use crate::ippool::Subnet;
use crate::net::Netns;

/// The bridge-family table (anti-spoof, owner separation, destination check).
pub const BRIDGE_TABLE: &str = "bhatti_iso";
/// The inet-family table guarding the namespace's own addresses.
pub const GUARD_TABLE: &str = "bhatti_guard";

/// Bridge filter priority (`NF_BR_PRI_FILTER_BRIDGED`).
const BRIDGE_PRIO: i32 = -200;
/// The group bit of a MAC address: set for broadcast and multicast.
const GROUP_BIT: &str = "01:00:00:00:00:00";
/// Verdict maps of the bridge table, by base chain.
const INGRESS_MAP: &str = "ingress_ports";
const FORWARD_MAP: &str = "forward_ports";
const OUTPUT_MAP: &str = "output_ports";
/// The guard table's set of guest TAPs (a TAP outside the bridge, as a moved resume uses
/// first, reaches the namespace's stack directly rather than through the bridge).
const GUEST_SET: &str = "guest_ports";

/// One guest port on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The TAP's name (the port; it need not exist yet).
    pub tap: String,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// The guest's IPv4 address.
    pub ip: Ipv4Addr,
    /// The owner's group: ports of one group reach each other, of different groups never.
    pub group: u32,
}

/// Installs both tables in the namespace, replacing earlier copies (and every port they held)
/// in one transaction, with `ports` already admitted: at engine start, pass the ports of the
/// sandboxes that survived, so there is no moment where they are unfiltered or cut off.
pub async fn install(
    ns: &Netns,
    bridge: &str,
    subnet: Subnet,
    ports: &[Port],
) -> Result<(), EngineError> {
    for port in ports {
        check_tap(&port.tap)?;
    }
    check_tap(bridge)?;
    ns.nft(&install_doc(bridge, subnet, ports)).await
}

/// Admits a port (idempotent; replaces whatever an earlier admission of the same TAP name
/// allowed). Call it before the port's QEMU starts.
pub async fn admit(ns: &Netns, port: &Port) -> Result<(), EngineError> {
    check_tap(&port.tap)?;
    ns.nft(&json!({ "nftables": admit_cmds(port) })).await
}

/// Removes a port (idempotent): its frames are dropped again. Call it when the sandbox is
/// destroyed (after its QEMU is gone).
pub async fn remove(ns: &Netns, tap: &str) -> Result<(), EngineError> {
    check_tap(tap)?;
    ns.nft(&remove_doc(tap)).await
}

/// Removes both tables (idempotent): the bridge is open again, as without isolation.
#[cfg(any(test, feature = "test-support"))]
pub async fn uninstall(ns: &Netns) -> Result<(), EngineError> {
    ns.nft(
        &json!({ "nftables": [
            { "add": { "table": bridge_table() } },
            { "delete": { "table": bridge_table() } },
            { "add": { "table": guard_table() } },
            { "delete": { "table": guard_table() } },
        ]}),
    )
    .await
}

/// Interface names are at most 15 bytes; a longer one could never match.
fn check_tap(tap: &str) -> Result<(), EngineError> {
    if tap.is_empty() || tap.len() >= libc::IFNAMSIZ || tap.contains('\0') {
        return Err(EngineError::Net {
            op: format!("isolation for port {tap:?}"),
            source: io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"),
        });
    }
    Ok(())
}

fn bridge_table() -> Value {
    json!({ "family": "bridge", "name": BRIDGE_TABLE })
}

fn guard_table() -> Value {
    json!({ "family": "inet", "name": GUARD_TABLE })
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({ "payload": { "protocol": protocol, "field": field } })
}

fn meta(key: &str) -> Value {
    json!({ "meta": { "key": key } })
}

fn is(left: Value, right: impl Into<Value>) -> Value {
    json!({ "match": { "op": "==", "left": left, "right": right.into() } })
}

fn is_not(left: Value, right: impl Into<Value>) -> Value {
    json!({ "match": { "op": "!=", "left": left, "right": right.into() } })
}

fn set_mark(group: u32) -> Value {
    json!({ "mangle": { "key": meta("mark"), "value": group } })
}

fn accept() -> Value {
    json!({ "accept": null })
}

fn drop_() -> Value {
    json!({ "drop": null })
}

fn bridge_rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({ "add": { "rule": {
        "family": "bridge", "table": BRIDGE_TABLE, "chain": chain, "expr": expr,
    }}})
}

/// A base chain's one lookup: the port's own chain, found by interface name in `map`.
fn dispatch(chain: &str, interface: &str, map: &str) -> Value {
    bridge_rule(
        chain,
        vec![json!({ "vmap": { "key": meta(interface), "data": format!("@{map}") } })],
    )
}

fn guard_rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({ "add": { "rule": {
        "family": "inet", "table": GUARD_TABLE, "chain": chain, "expr": expr,
    }}})
}

fn base_chain(family: &str, table: &str, name: &str, prio: i32, policy: &str) -> Value {
    json!({ "add": { "chain": {
        "family": family, "table": table, "name": name,
        "type": "filter", "hook": name, "prio": prio, "policy": policy,
    }}})
}

fn bridge_chain(name: &str) -> Value {
    json!({ "family": "bridge", "table": BRIDGE_TABLE, "name": name })
}

fn vmap(name: &str) -> Value {
    json!({ "add": { "map": {
        "family": "bridge", "table": BRIDGE_TABLE, "name": name,
        "type": "ifname", "map": "verdict",
    }}})
}

/// Names of a port's chains: what it may send, what other guests may send it, what the host
/// may send it.
fn chains(tap: &str) -> [String; 3] {
    [format!("in_{tap}"), format!("fwd_{tap}"), format!("out_{tap}")]
}

/// Both tables from scratch (add; delete; add: replaces an earlier copy whatever it held),
/// then the given ports.
fn install_doc(bridge: &str, subnet: Subnet, ports: &[Port]) -> Value {
    let gateway = subnet.gateway();
    let gw = gateway.to_string();
    let guests = subnet.cidr();
    let guest_source = is(
        payload("ip", "saddr"),
        json!({ "prefix": { "addr": guests.addr.to_string(), "len": guests.len } }),
    );
    let mut cmds = vec![
        json!({ "add": { "table": bridge_table() } }),
        json!({ "delete": { "table": bridge_table() } }),
        json!({ "add": { "table": bridge_table() } }),
        vmap(INGRESS_MAP),
        vmap(FORWARD_MAP),
        vmap(OUTPUT_MAP),
        // Policy drop everywhere a port is involved: a port nobody admitted sends and receives
        // nothing.
        base_chain("bridge", BRIDGE_TABLE, "prerouting", BRIDGE_PRIO, "drop"),
        dispatch("prerouting", "iifname", INGRESS_MAP),
        base_chain("bridge", BRIDGE_TABLE, "forward", BRIDGE_PRIO, "drop"),
        dispatch("forward", "oifname", FORWARD_MAP),
        base_chain("bridge", BRIDGE_TABLE, "output", BRIDGE_PRIO, "drop"),
        // The namespace's stack never sends from a guest's address; such a packet is a guest's,
        // routed back onto the bridge through the gateway (when forwarding is on, as egress
        // turns it on), which would go around the owner check of `forward`.
        bridge_rule(
            "output",
            vec![
                is(payload("ether", "type"), "ip"),
                guest_source,
                is_not(payload("ip", "saddr"), gw.clone()),
                drop_(),
            ],
        ),
        dispatch("output", "oifname", OUTPUT_MAP),
        // To the namespace's stack (prerouting already let only ARP and IPv4 in): ARP only for
        // the gateway (a request for it, or the answer to its own request), so guests cannot
        // probe the namespace's other addresses. IPv4 is judged by the guard table.
        base_chain("bridge", BRIDGE_TABLE, "input", BRIDGE_PRIO, "accept"),
        bridge_rule(
            "input",
            vec![
                is(payload("ether", "type"), "arp"),
                is_not(payload("arp", "daddr ip"), gw.clone()),
                drop_(),
            ],
        ),
        json!({ "add": { "table": guard_table() } }),
        json!({ "delete": { "table": guard_table() } }),
        json!({ "add": { "table": guard_table() } }),
        json!({ "add": { "set": {
            "family": "inet", "table": GUARD_TABLE, "name": GUEST_SET, "type": "ifname",
        }}}),
        base_chain("inet", GUARD_TABLE, "input", 0, "accept"),
        json!({ "add": { "chain": {
            "family": "inet", "table": GUARD_TABLE, "name": "from_guests",
        }}}),
        // Answers to the host's own connections (the agent's, a port forward).
        guard_rule(
            "input",
            vec![
                json!({ "match": {
                    "op": "in", "left": { "ct": { "key": "state" } },
                    "right": ["established", "related"],
                }}),
                accept(),
            ],
        ),
        guard_rule(
            "input",
            vec![is(meta("iifname"), bridge), json!({ "jump": { "target": "from_guests" } })],
        ),
        guard_rule(
            "input",
            vec![
                is(meta("iifname"), format!("@{GUEST_SET}")),
                json!({ "jump": { "target": "from_guests" } }),
            ],
        ),
        guard_rule(
            "from_guests",
            vec![
                is(meta("nfproto"), "ipv4"),
                is(payload("ip", "daddr"), gw.clone()),
                is(payload("icmp", "type"), "echo-request"),
                accept(),
            ],
        ),
        // The resolver on the gateway (`dns`), over UDP and TCP.
        guard_rule(
            "from_guests",
            vec![
                is(meta("nfproto"), "ipv4"),
                is(payload("ip", "daddr"), gw),
                json!({ "match": {
                    "op": "==", "left": meta("l4proto"),
                    "right": { "set": ["udp", "tcp"] },
                }}),
                is(payload("th", "dport"), 53),
                accept(),
            ],
        ),
        // Anything else is refused out loud (a reset, an ICMP error), so a guest trying the
        // host's ports fails at once rather than after a timeout.
        guard_rule(
            "from_guests",
            vec![is(meta("l4proto"), "tcp"), json!({ "reject": { "type": "tcp reset" } })],
        ),
        guard_rule("from_guests", vec![json!({ "reject": { "type": "icmpx", "expr": "admin-prohibited" } })]),
    ];
    for port in ports {
        cmds.extend(admit_cmds(port));
    }
    json!({ "nftables": cmds })
}

/// A port's chains, rewritten from scratch, and its entries in the maps and the guard's set.
fn admit_cmds(port: &Port) -> Vec<Value> {
    let [inc, fwd, out] = chains(&port.tap);
    let (mac, ip, group) = (mac_text(port.mac), port.ip.to_string(), port.group);
    let mut cmds = Vec::new();
    for chain in [&inc, &fwd, &out] {
        cmds.push(json!({ "add": { "chain": bridge_chain(chain) } }));
        cmds.push(json!({ "flush": { "chain": bridge_chain(chain) } }));
    }
    cmds.extend([
        // From the guest: its own MAC, then IPv4 from its own IP or ARP naming itself as the
        // sender; nothing else (no IPv6, no VLAN tags, no other EtherTypes).
        bridge_rule(&inc, vec![is_not(payload("ether", "saddr"), mac.clone()), drop_()]),
        bridge_rule(
            &inc,
            vec![
                is(payload("ether", "type"), "ip"),
                is(payload("ip", "saddr"), ip.clone()),
                set_mark(group),
                accept(),
            ],
        ),
        bridge_rule(
            &inc,
            vec![
                is(payload("ether", "type"), "arp"),
                is(payload("arp", "htype"), 1),
                is(payload("arp", "ptype"), "ip"),
                is(payload("arp", "hlen"), 6),
                is(payload("arp", "plen"), 4),
                is(payload("arp", "saddr ether"), mac.clone()),
                is(payload("arp", "saddr ip"), ip),
                set_mark(group),
                accept(),
            ],
        ),
        bridge_rule(&inc, vec![drop_()]),
        // From another guest: same owner only, then the destination check.
        bridge_rule(&fwd, vec![is_not(meta("mark"), group), drop_()]),
        bridge_rule(&fwd, vec![json!({ "goto": { "target": out.clone() } })]),
        // To the guest: ARP or IPv4, addressed to its MAC, or broadcast/multicast.
        bridge_rule(
            &out,
            vec![is_not(payload("ether", "type"), json!({ "set": ["ip", "arp"] })), drop_()],
        ),
        bridge_rule(&out, vec![is(payload("ether", "daddr"), mac), accept()]),
        bridge_rule(
            &out,
            vec![is(json!({ "&": [payload("ether", "daddr"), GROUP_BIT] }), GROUP_BIT), accept()],
        ),
        bridge_rule(&out, vec![drop_()]),
    ]);
    for (map, chain) in [(INGRESS_MAP, &inc), (FORWARD_MAP, &fwd), (OUTPUT_MAP, &out)] {
        cmds.push(json!({ "add": { "element": {
            "family": "bridge", "table": BRIDGE_TABLE, "name": map,
            "elem": [[port.tap, { "jump": { "target": chain } }]],
        }}}));
    }
    cmds.push(guard_element("add", &port.tap));
    cmds
}

fn guard_element(verb: &str, tap: &str) -> Value {
    json!({ verb: { "element": {
        "family": "inet", "table": GUARD_TABLE, "name": GUEST_SET, "elem": [tap],
    }}})
}

/// Removes a port whether or not it is there: each piece is added first (a no-op if present:
/// this nft predates `destroy`), then deleted; the map entries go before the chains they jump
/// to.
fn remove_doc(tap: &str) -> Value {
    let [inc, fwd, out] = chains(tap);
    let mut cmds = Vec::new();
    for (map, chain) in [(INGRESS_MAP, &inc), (FORWARD_MAP, &fwd), (OUTPUT_MAP, &out)] {
        cmds.push(json!({ "add": { "chain": bridge_chain(chain) } }));
        let elem = |verb: &str, elem: Value| {
            json!({ verb: { "element": {
                "family": "bridge", "table": BRIDGE_TABLE, "name": map, "elem": [elem],
            }}})
        };
        cmds.push(elem("add", json!([tap, { "jump": { "target": chain } }])));
        cmds.push(elem("delete", json!(tap)));
    }
    for chain in [&inc, &fwd, &out] {
        cmds.push(json!({ "flush": { "chain": bridge_chain(chain) } }));
    }
    for chain in [&inc, &fwd, &out] {
        cmds.push(json!({ "delete": { "chain": bridge_chain(chain) } }));
    }
    cmds.push(guard_element("add", tap));
    cmds.push(guard_element("delete", tap));
    json!({ "nftables": cmds })
}


#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> Port {
        Port {
            tap: "tap0-5".into(),
            mac: [0x52, 0x54, 0, 0, 7, 5],
            ip: Ipv4Addr::new(10, 7, 0, 5),
            group: 3,
        }
    }

    /// Whether `needle` occurs anywhere in `doc` (serde_json orders keys, so compare values).
    fn has(doc: &Value, needle: &Value) -> bool {
        doc == needle
            || match doc {
                Value::Array(items) => items.iter().any(|i| has(i, needle)),
                Value::Object(map) => map.values().any(|v| has(v, needle)),
                _ => false,
            }
    }

    fn verbs(doc: &Value) -> Vec<String> {
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_object().unwrap().keys().next().unwrap().clone())
            .collect()
    }

    #[test]
    fn install_replaces_both_tables_and_drops_what_no_port_claims() {
        let doc = install_doc("br0", "10.7.0.0/24".parse().unwrap(), &[]);
        let cmds = doc["nftables"].as_array().unwrap();
        assert_eq!(verbs(&doc)[..3], ["add", "delete", "add"]);
        assert_eq!(cmds[1]["delete"]["table"], json!({ "family": "bridge", "name": "bhatti_iso" }));
        let text = doc.to_string();
        assert!(text.contains(r#"{"family":"inet","name":"bhatti_guard"}"#), "{text}");
        // The guard table is also replaced (add; delete; add).
        let guard: Vec<&str> = cmds
            .iter()
            .filter(|c| c.to_string().contains(r#""table":{"family":"inet""#))
            .map(|c| c.as_object().unwrap().keys().next().unwrap().as_str())
            .collect();
        assert_eq!(guard, ["add", "delete", "add"]);
        for hook in ["prerouting", "forward", "output"] {
            let chain = cmds
                .iter()
                .find(|c| c["add"]["chain"]["hook"] == hook)
                .unwrap_or_else(|| panic!("no {hook} chain in {text}"));
            assert_eq!(chain["add"]["chain"]["policy"], "drop", "{hook}");
            assert_eq!(chain["add"]["chain"]["family"], "bridge", "{hook}");
        }
        assert!(has(
            &doc,
            &json!({ "vmap": { "key": meta("iifname"), "data": "@ingress_ports" } })
        ));
        assert!(has(
            &doc,
            &json!({ "vmap": { "key": meta("oifname"), "data": "@forward_ports" } })
        ));
        assert!(has(&doc, &json!({ "vmap": { "key": meta("oifname"), "data": "@output_ports" } })));
        assert!(has(&doc, &is_not(payload("arp", "daddr ip"), "10.7.0.1")), "{text}");
        assert!(has(&doc, &is(payload("ip", "daddr"), "10.7.0.1")), "{text}");
        assert!(has(&doc, &json!({ "prefix": { "addr": "10.7.0.0", "len": 24 } })), "{text}");
        assert!(has(&doc, &is(meta("iifname"), "br0")), "{text}");
        assert!(has(&doc, &json!(["established", "related"])), "{text}");
    }

    #[test]
    fn admitting_a_port_rewrites_its_chains_and_adds_its_map_entries() {
        let p = port();
        let doc = json!({ "nftables": admit_cmds(&p) });
        let v = verbs(&doc);
        // Each chain is created if missing and flushed before its rules: admission is
        // idempotent and replaces an earlier identity of the same TAP name.
        assert_eq!(v[..6], ["add", "flush", "add", "flush", "add", "flush"]);
        for chain in ["in_tap0-5", "fwd_tap0-5", "out_tap0-5"] {
            assert!(has(&doc, &json!(chain)), "{chain} missing in {doc}");
        }
        for needle in [
            is_not(payload("ether", "saddr"), "52:54:00:00:07:05"),
            is(payload("ip", "saddr"), "10.7.0.5"),
            is(payload("arp", "saddr ether"), "52:54:00:00:07:05"),
            is(payload("arp", "saddr ip"), "10.7.0.5"),
            set_mark(3),
            is_not(meta("mark"), 3),
            is(payload("ether", "daddr"), "52:54:00:00:07:05"),
            is(json!({ "&": [payload("ether", "daddr"), GROUP_BIT] }), GROUP_BIT),
            json!([["tap0-5", { "jump": { "target": "in_tap0-5" } }]]),
            json!({ "goto": { "target": "out_tap0-5" } }),
            json!(["tap0-5"]),
        ] {
            assert!(has(&doc, &needle), "{needle} missing in {doc}");
        }
        // Admitted ports come with install, in the same transaction.
        let installed = install_doc("br0", "10.7.0.0/24".parse().unwrap(), &[p]);
        assert!(has(&installed, &json!({ "jump": { "target": "fwd_tap0-5" } })));
    }

    #[test]
    fn removing_a_port_works_whether_or_not_it_is_there() {
        let doc = remove_doc("tap0-5");
        let v = verbs(&doc);
        // Map entries: ensured, then deleted, before the chains they jump to go.
        let first_chain_delete = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c.get("delete").is_some_and(|d| d.get("chain").is_some()))
            .unwrap();
        let last_elem_delete = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .rposition(|c| c.get("delete").is_some_and(|d| d["element"]["family"] == "bridge"))
            .unwrap();
        assert!(last_elem_delete < first_chain_delete, "{doc}");
        assert_eq!(v.iter().filter(|v| *v == "delete").count(), 7, "{v:?}");
        assert_eq!(v.last().map(String::as_str), Some("delete"));
    }

    #[test]
    fn bad_tap_names_are_refused() {
        assert!(check_tap("").is_err());
        assert!(check_tap("a-name-far-too-long").is_err());
        assert!(check_tap("tap10-250").is_ok());
    }
}
