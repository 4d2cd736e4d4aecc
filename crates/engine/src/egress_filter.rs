//! The per-sandbox egress filter: nftables rules in the engine's namespace that let a guest's
//! packets leave only for what its policy allows (`bhatti_core::egress`).
//!
//! One table, `ip bhatti_egress`, hooked on *forward* just before the NAT table (`ip bhatti`,
//! see `egress`):
//!
//! - `forward` (base chain) leaves traffic between guests on the bridge alone (the isolation
//!   table's business) and sends every other packet whose source is a guest address to that guest's
//!   own chain through a verdict map keyed by source address (anti-spoofing on the bridge
//!   already binds an address to its port); a guest address without a chain is refused, so a
//!   guest is never unfiltered. Everything else (replies coming back) is not this table's
//!   business.
//! - `sb_<tap>` (one per sandbox) is the policy as rules, in this order:
//!   1. never-reachable destinations (set `never`: loopback, link-local and metadata,
//!      multicast, the guests' subnet, the uplink's link) are refused;
//!   2. packets of connections this very policy accepted pass (`ct mark` = the chain's
//!      generation). A policy change writes the chain with a new generation, so the
//!      connections the old one accepted are judged again by step 3 on their next packet and
//!      cut (TCP reset) when the new policy refuses them;
//!   3. `allow_cidrs`, then private ranges refused, then the posture: `public` accepts,
//!      `deny` accepts only addresses the resolver pinned into set `pins_<tap>` (elements
//!      time out with the DNS record's TTL, bounded); what passes is marked with the generation;
//!   4. anything else is refused.
//! - `refuse` answers a TCP SYN with a reset and anything else with ICMP admin-prohibited, so a
//!   denied connection fails at once instead of timing out.
//!
//! Each chain is rewritten in one transaction (flush and refill), so a packet meets either the
//! old policy or the new one. Built with `serde_json`, applied with `nft -j -f -`, like the
//! isolation tables.

use std::net::Ipv4Addr;
use std::time::Duration;

use bhatti_core::egress::{Cidr, NEVER, PRIVATE, Policy, Posture};
use serde_json::{Value, json};

use crate::error::EngineError;
use crate::ippool::Subnet;
use crate::net::Netns;

/// The table (family `ip`).
pub const TABLE: &str = "bhatti_egress";
/// Before the NAT table's forward chain (priority 0), so a refused packet never reaches it.
const FORWARD_PRIO: i32 = -10;
const BY_SOURCE: &str = "by_source";
const NEVER_SET: &str = "never";
const PRIVATE_SET: &str = "private";
const REFUSE: &str = "refuse";

/// One sandbox's rules: where its packets come from and what they may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRules {
    /// The sandbox's TAP (names its chain and pin set).
    pub tap: String,
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// The policy.
    pub policy: Policy,
    /// Marks the connections this version of the policy accepted.
    pub generation: u32,
}

/// Installs the table from scratch (replacing an earlier copy and all it held) with `sandboxes`
/// already in it. `extra` are the deployment's own never-reachable ranges besides the guests'
/// subnet (the uplink's link).
pub async fn install(
    ns: &Netns,
    bridge: &str,
    subnet: Subnet,
    extra: &[Cidr],
    sandboxes: &[SandboxRules],
) -> Result<(), EngineError> {
    ns.nft(&install_doc(bridge, subnet, extra, sandboxes)).await
}

/// Adds or replaces one sandbox's chain (its pins are kept when `keep_pins`, else emptied).
pub async fn admit(ns: &Netns, rules: &SandboxRules, keep_pins: bool) -> Result<(), EngineError> {
    ns.nft(&json!({ "nftables": admit_cmds(rules, keep_pins) })).await
}

/// Removes a sandbox's chain and pins (idempotent); its address is refused again.
pub async fn remove(ns: &Netns, tap: &str, ip: Ipv4Addr) -> Result<(), EngineError> {
    ns.nft(&json!({ "nftables": remove_cmds(tap, ip) })).await
}

/// Pins `addrs` for `tap` for the given durations (refreshing the timeout of addresses already
/// pinned), and unpins `gone`.
pub async fn pin(
    ns: &Netns,
    tap: &str,
    addrs: &[(Ipv4Addr, Duration)],
    gone: &[Ipv4Addr],
) -> Result<(), EngineError> {
    if addrs.is_empty() && gone.is_empty() {
        return Ok(());
    }
    let set = pin_set(tap);
    let element = |verb: &str, elems: Value| {
        json!({ verb: { "element": {
            "family": "ip", "table": TABLE, "name": set, "elem": elems,
        }}})
    };
    let mut cmds = Vec::new();
    if !gone.is_empty() {
        let gone: Vec<Value> = gone.iter().map(|ip| json!(ip.to_string())).collect();
        // add; delete: removes them whether or not they timed out already.
        cmds.push(element("add", json!(gone)));
        cmds.push(element("delete", json!(gone)));
    }
    if !addrs.is_empty() {
        let bare: Vec<Value> = addrs.iter().map(|(ip, _)| json!(ip.to_string())).collect();
        let timed: Vec<Value> = addrs
            .iter()
            .map(|(ip, ttl)| {
                json!({ "elem": { "val": ip.to_string(), "timeout": ttl.as_secs().max(1) } })
            })
            .collect();
        // add; delete; add: an element already present gets the new timeout (a plain add
        // would leave the old one), one that is not is simply added.
        cmds.push(element("add", json!(bare)));
        cmds.push(element("delete", json!(bare)));
        cmds.push(element("add", json!(timed)));
    }
    ns.nft(&json!({ "nftables": cmds })).await
}

/// Removes the table (idempotent).
pub async fn uninstall(ns: &Netns) -> Result<(), EngineError> {
    ns.nft(&json!({ "nftables": [
        { "add": { "table": table() } },
        { "delete": { "table": table() } },
    ]}))
    .await
}

fn table() -> Value {
    json!({ "family": "ip", "name": TABLE })
}

fn chain_name(tap: &str) -> String {
    format!("sb_{tap}")
}

fn pin_set(tap: &str) -> String {
    format!("pins_{tap}")
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({ "add": { "rule": { "family": "ip", "table": TABLE, "chain": chain, "expr": expr }}})
}

fn daddr_in(right: Value) -> Value {
    json!({ "match": {
        "op": "==",
        "left": { "payload": { "protocol": "ip", "field": "daddr" } },
        "right": right,
    }})
}

fn prefix(cidr: &Cidr) -> Value {
    json!({ "prefix": { "addr": cidr.addr.to_string(), "len": cidr.len } })
}

fn interval_set(name: &str, cidrs: &[Cidr]) -> Vec<Value> {
    let mut cmds = vec![json!({ "add": { "set": {
        "family": "ip", "table": TABLE, "name": name, "type": "ipv4_addr", "flags": ["interval"],
    }}})];
    if !cidrs.is_empty() {
        // Overlapping intervals are refused by nft: the lists here are disjoint by
        // construction (the subnet and link are checked against NEVER by the caller).
        let elems: Vec<Value> = cidrs.iter().map(prefix).collect();
        cmds.push(json!({ "add": { "element": {
            "family": "ip", "table": TABLE, "name": name, "elem": elems,
        }}}));
    }
    cmds
}

fn refuse() -> Value {
    json!({ "goto": { "target": REFUSE } })
}

fn accept_marked(generation: u32) -> [Value; 2] {
    [json!({ "mangle": { "key": { "ct": { "key": "mark" } }, "value": generation } }), json!({ "accept": null })]
}

fn install_doc(bridge: &str, subnet: Subnet, extra: &[Cidr], sandboxes: &[SandboxRules]) -> Value {
    let guests = subnet.cidr();
    let mut never: Vec<Cidr> = NEVER.to_vec();
    for cidr in std::iter::once(&guests).chain(extra) {
        if !never.iter().any(|n| n.overlaps(cidr)) {
            never.push(*cidr);
        }
    }
    let from_guests = json!({ "match": {
        "op": "==",
        "left": { "payload": { "protocol": "ip", "field": "saddr" } },
        "right": prefix(&guests),
    }});
    let mut cmds = vec![
        json!({ "add": { "table": table() } }),
        json!({ "delete": { "table": table() } }),
        json!({ "add": { "table": table() } }),
    ];
    cmds.extend(interval_set(NEVER_SET, &never));
    cmds.extend(interval_set(PRIVATE_SET, &PRIVATE));
    cmds.push(json!({ "add": { "map": {
        "family": "ip", "table": TABLE, "name": BY_SOURCE, "type": "ipv4_addr", "map": "verdict",
    }}}));
    cmds.push(json!({ "add": { "chain": { "family": "ip", "table": TABLE, "name": REFUSE }}}));
    cmds.push(rule(
        REFUSE,
        vec![
            json!({ "match": {
                "op": "==", "left": { "meta": { "key": "l4proto" } }, "right": "tcp",
            }}),
            json!({ "reject": { "type": "tcp reset" } }),
        ],
    ));
    cmds.push(rule(REFUSE, vec![json!({ "reject": { "type": "icmp", "expr": "admin-prohibited" } })]));
    cmds.push(json!({ "add": { "chain": {
        "family": "ip", "table": TABLE, "name": "forward",
        "type": "filter", "hook": "forward", "prio": FORWARD_PRIO, "policy": "accept",
    }}}));
    // Frames between guests on the bridge reach this hook too when br_netfilter is loaded
    // (out through the bridge itself): the isolation table judges those, not this one.
    cmds.push(rule(
        "forward",
        vec![
            json!({ "match": { "op": "==", "left": { "meta": { "key": "oifname" } }, "right": bridge } }),
            json!({ "accept": null }),
        ],
    ));
    cmds.push(rule(
        "forward",
        vec![
            from_guests.clone(),
            json!({ "vmap": {
                "key": { "payload": { "protocol": "ip", "field": "saddr" } },
                "data": format!("@{BY_SOURCE}"),
            }}),
        ],
    ));
    cmds.push(rule("forward", vec![from_guests, refuse()]));
    for sandbox in sandboxes {
        cmds.extend(admit_cmds(sandbox, false));
    }
    json!({ "nftables": cmds })
}

fn admit_cmds(rules: &SandboxRules, keep_pins: bool) -> Vec<Value> {
    let chain = chain_name(&rules.tap);
    let pins = pin_set(&rules.tap);
    let policy = &rules.policy;
    let mut cmds = vec![
        json!({ "add": { "chain": { "family": "ip", "table": TABLE, "name": chain }}}),
        json!({ "flush": { "chain": { "family": "ip", "table": TABLE, "name": chain }}}),
        json!({ "add": { "set": {
            "family": "ip", "table": TABLE, "name": pins, "type": "ipv4_addr", "flags": ["timeout"],
        }}}),
    ];
    if !keep_pins {
        cmds.push(json!({ "flush": { "set": { "family": "ip", "table": TABLE, "name": pins }}}));
    }
    cmds.push(rule(&chain, vec![daddr_in(json!(format!("@{NEVER_SET}"))), refuse()]));
    let mut passing = vec![
        json!({ "match": {
            "op": "in", "left": { "ct": { "key": "state" } }, "right": ["established", "related"],
        }}),
        json!({ "match": {
            "op": "==", "left": { "ct": { "key": "mark" } }, "right": rules.generation,
        }}),
    ];
    passing.push(json!({ "accept": null }));
    cmds.push(rule(&chain, passing));
    if !policy.cidrs.is_empty() {
        let set: Vec<Value> = policy.cidrs.iter().map(prefix).collect();
        let mut expr = vec![daddr_in(json!({ "set": set }))];
        expr.extend(accept_marked(rules.generation));
        cmds.push(rule(&chain, expr));
    }
    cmds.push(rule(&chain, vec![daddr_in(json!(format!("@{PRIVATE_SET}"))), refuse()]));
    match policy.posture {
        Posture::Public => cmds.push(rule(&chain, accept_marked(rules.generation).to_vec())),
        Posture::Deny => {
            let mut expr = vec![daddr_in(json!(format!("@{pins}")))];
            expr.extend(accept_marked(rules.generation));
            cmds.push(rule(&chain, expr));
        }
    }
    cmds.push(rule(&chain, vec![refuse()]));
    // The map entry last: the chain is complete before any packet is sent to it.
    cmds.push(json!({ "add": { "element": {
        "family": "ip", "table": TABLE, "name": BY_SOURCE,
        "elem": [[rules.ip.to_string(), { "jump": { "target": chain } }]],
    }}}));
    cmds
}

fn remove_cmds(tap: &str, ip: Ipv4Addr) -> Vec<Value> {
    let chain = chain_name(tap);
    let pins = pin_set(tap);
    let entry = json!({ "family": "ip", "table": TABLE, "name": BY_SOURCE,
        "elem": [[ip.to_string(), { "jump": { "target": chain } }]] });
    // add-then-delete for each piece: idempotent whether or not it was there. The map entry
    // goes first (a chain still referenced cannot be deleted).
    vec![
        json!({ "add": { "chain": { "family": "ip", "table": TABLE, "name": chain }}}),
        json!({ "add": { "element": entry.clone() }}),
        json!({ "delete": { "element": entry }}),
        json!({ "flush": { "chain": { "family": "ip", "table": TABLE, "name": chain }}}),
        json!({ "delete": { "chain": { "family": "ip", "table": TABLE, "name": chain }}}),
        json!({ "add": { "set": {
            "family": "ip", "table": TABLE, "name": pins, "type": "ipv4_addr", "flags": ["timeout"],
        }}}),
        json!({ "delete": { "set": { "family": "ip", "table": TABLE, "name": pins }}}),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bhatti_core::NetPolicy;

    fn rules(default: Posture, cidrs: &[&str]) -> SandboxRules {
        SandboxRules {
            tap: "tap-10-200-0-5".into(),
            ip: "10.200.0.5".parse().unwrap(),
            policy: NetPolicy {
                default,
                allow_hosts: vec!["pypi.org".into()],
                allow_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            }
            .check()
            .unwrap(),
            generation: 7,
        }
    }

    #[test]
    fn a_deny_chain_accepts_only_pins_and_cidrs_and_ends_refusing() {
        let text = json!(admit_cmds(&rules(Posture::Deny, &["192.0.2.0/24"]), false)).to_string();
        assert!(text.contains(r#""@pins_tap-10-200-0-5""#), "{text}");
        assert!(text.contains(r#"{"prefix":{"addr":"192.0.2.0","len":24}}"#), "{text}");
        assert!(text.contains(r#""right":7"#), "{text}");
        assert!(text.contains(r#"{"flush":{"set""#), "{text}");
        let last_rule = admit_cmds(&rules(Posture::Deny, &[]), true);
        let chain_rules: Vec<&Value> =
            last_rule.iter().filter(|c| c.get("add").and_then(|a| a.get("rule")).is_some()).collect();
        assert_eq!(chain_rules.last().unwrap()["add"]["rule"]["expr"], json!([refuse()]));
        assert!(!json!(last_rule).to_string().contains(r#"{"flush":{"set""#));
    }

    #[test]
    fn the_never_set_holds_the_subnet_and_the_link_once() {
        let subnet: Subnet = "10.200.0.0/16".parse().unwrap();
        let link = Cidr::new("169.254.31.0".parse().unwrap(), 30);
        let text = install_doc("br0", subnet, &[link], &[]).to_string();
        assert!(text.contains(r#"{"prefix":{"addr":"10.200.0.0","len":16}}"#), "{text}");
        // The link is inside 169.254.0.0/16, already in NEVER: not added twice (nft refuses
        // overlapping intervals).
        assert!(!text.contains(r#""len":30"#), "{text}");
    }
}
