//! Optional egress: guests reach the outside through NAT in the engine's namespace.
//!
//! The namespace gets an uplink (typically one end of a veth whose other end is in the host
//! namespace, or any interface that leads out) and a router behind it. [`enable`] turns on IPv4
//! forwarding in the namespace, points its default route at that router and installs one
//! nftables table, `ip bhatti`, that masquerades guest traffic leaving through the uplink and
//! drops anything new arriving from the uplink, so the outside never reaches a guest.
//! [`disable`] undoes all three. Both are idempotent.
//!
//! The rules go to `nft` as JSON (`nft -j -f -`), built with `serde_json`: interface names and
//! addresses are JSON values, never spliced into a rule language, and no output is parsed.
//! (Kept off in tests, except in `tests/egress.rs`, which builds a "remote host" namespace.)

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::error::EngineError;
use crate::ippool::Subnet;
use crate::net::Netns;
use crate::run::run;

/// The nftables table the engine owns in its namespace (family `ip`).
pub const TABLE: &str = "bhatti";

/// Deadline for one `nft` or `ip` invocation.
const TOOL_DEADLINE: Duration = Duration::from_secs(10);

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// How the engine's namespace reaches the outside.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Egress {
    /// The interface inside the engine's namespace that leads out.
    pub uplink: String,
    /// The router behind `uplink`: the namespace's default route.
    pub next_hop: Ipv4Addr,
    /// The uplink's own link (its addresses are the host's: never reachable from guests).
    #[serde(default)]
    pub link: Option<bhatti_core::egress::Cidr>,
}

/// Lets guests in `subnet` reach the outside through `egress.uplink`, masqueraded behind the
/// uplink's address, while nothing from the outside can open a connection to them.
///
/// Order matters: the filter is installed before forwarding is switched on, so there is no
/// moment where the namespace routes without it. Running it again replaces the table in one
/// atomic nftables transaction (never two copies, never a moment without rules) and replaces the
/// default route.
pub async fn enable(ns: &Netns, subnet: Subnet, egress: &Egress) -> Result<(), EngineError> {
    ns.nft(&ruleset(subnet, &egress.uplink)).await?;
    run(
        Command::new("ip")
            .args(["netns", "exec", ns.name(), "ip", "route", "replace", "default"])
            .args(["via", &egress.next_hop.to_string(), "dev", &egress.uplink]),
        TOOL_DEADLINE,
    )
    .await?;
    set_forwarding(ns, true).await
}

/// Turns egress off: forwarding off first (so nothing is routed unfiltered), then the default
/// route via `egress.next_hop` and the `bhatti` table are removed. Missing pieces are not an
/// error, so it can run at every start and after a partial [`enable`].
#[cfg(any(test, feature = "test-support"))]
pub async fn disable(ns: &Netns, egress: &Egress) -> Result<(), EngineError> {
    teardown(ns, Some(egress.next_hop)).await
}

/// Turns off whatever egress an earlier run configured, not knowing its router: forwarding off,
/// every default route of the namespace and the `bhatti` table removed. The engine runs it at
/// start when egress is not configured, since the namespace outlives the engine.
pub async fn disable_any(ns: &Netns) -> Result<(), EngineError> {
    teardown(ns, None).await
}

async fn teardown(ns: &Netns, via: Option<Ipv4Addr>) -> Result<(), EngineError> {
    set_forwarding(ns, false).await?;
    // `flush exact` removes only default routes (through our router when given) and succeeds
    // when there is none; no `dev`, as the uplink may already be gone (and its routes with it).
    let mut flush = Command::new("ip");
    flush.args(["netns", "exec", ns.name(), "ip", "route", "flush", "exact", "0.0.0.0/0"]);
    if let Some(via) = via {
        flush.args(["via", &via.to_string()]);
    }
    run(&mut flush, TOOL_DEADLINE).await?;
    // "add" of an existing table is a no-op, so add-then-delete removes it whether or not it
    // was there (this nft predates `destroy`).
    ns.nft(
        &json!({ "nftables": [
            { "add": { "table": table() } },
            { "delete": { "table": table() } },
        ]}),
    )
    .await
}

/// The whole table as one nft JSON transaction: create the table if missing, delete it (with
/// whatever an earlier run or another version put in it), then build it afresh. nft applies a
/// file atomically, so concurrent traffic sees either the old rules or the new ones.
fn ruleset(subnet: Subnet, uplink: &str) -> Value {
    let guests = subnet.cidr();
    let from_guests = json!({ "match": {
        "op": "==",
        "left": { "payload": { "protocol": "ip", "field": "saddr" } },
        "right": { "prefix": { "addr": guests.addr.to_string(), "len": guests.len } },
    }});
    let iface = |key: &str| {
        let left = json!({ "meta": { "key": key } });
        json!({ "match": { "op": "==", "left": left, "right": uplink } })
    };
    let rule = |chain: &str, expr: Vec<Value>| {
        json!({ "add": { "rule": {
            "family": "ip", "table": TABLE, "chain": chain, "expr": expr,
        }}})
    };
    json!({ "nftables": [
        { "add": { "table": table() } },
        { "delete": { "table": table() } },
        { "add": { "table": table() } },
        { "add": { "chain": {
            "family": "ip", "table": TABLE, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept",
        }}},
        // Guests leave with the uplink's address: the outside needs no route to the subnet.
        rule("postrouting", vec![
            from_guests.clone(),
            iface("oifname"),
            json!({ "masquerade": null }),
        ]),
        // Policy accept: this chain only governs the uplink; traffic between guests on the
        // bridge (seen here if br_netfilter is loaded) is not its business.
        { "add": { "chain": {
            "family": "ip", "table": TABLE, "name": "forward",
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept",
        }}},
        // Replies to connections guests opened.
        rule("forward", vec![
            json!({ "match": {
                "op": "in",
                "left": { "ct": { "key": "state" } },
                "right": ["established", "related"],
            }}),
            json!({ "accept": null }),
        ]),
        rule("forward", vec![from_guests, iface("oifname"), json!({ "accept": null })]),
        // Anything else from the outside (new connections to guests, or attempts to route
        // through the namespace) is dropped silently.
        rule("forward", vec![iface("iifname"), json!({ "drop": null })]),
    ]})
}

fn table() -> Value {
    json!({ "family": "ip", "name": TABLE })
}


/// Writes the namespace's IPv4 forwarding switch from a thread inside it (`/proc/sys/net`
/// shows the namespace of the thread that opens it).
async fn set_forwarding(ns: &Netns, on: bool) -> Result<(), EngineError> {
    ns.enter(move || std::fs::write(IP_FORWARD, if on { "1" } else { "0" })).await.map_err(
        |source| EngineError::Net {
            op: format!("set ip_forward={} in namespace {}", u8::from(on), ns.name()),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_replaces_the_table_and_matches_the_subnet_and_uplink() {
        let subnet: Subnet = "10.7.0.0/24".parse().unwrap();
        let doc = ruleset(subnet, "up0");
        let cmds = doc["nftables"].as_array().unwrap();
        // add; delete; add: idempotent and atomic.
        let verbs: Vec<&str> = cmds
            .iter()
            .take(3)
            .map(|c| c.as_object().unwrap().keys().next().unwrap().as_str())
            .collect();
        assert_eq!(verbs, ["add", "delete", "add"]);
        let text = doc.to_string();
        assert!(text.contains(r#"{"prefix":{"addr":"10.7.0.0","len":24}}"#), "{text}");
        assert!(text.contains(r#""masquerade":null"#), "{text}");
        assert!(text.contains(r#"{"meta":{"key":"iifname"}}"#), "{text}");
        assert!(text.contains(r#""right":"up0""#), "{text}");
    }
}
