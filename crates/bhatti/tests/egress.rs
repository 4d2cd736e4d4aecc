#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The daemon's uplink: `bhatti serve` makes it (into the tests' stand-in for the host, the
//! setup's wan namespace), its sandboxes resolve names through the daemon and route out through
//! it, and a stop takes every piece down again. The policy itself is tested on real guests in
//! the engine's `egress_policy` suite.

mod common;

use std::process::Command;

use common::Setup;
use reqwest::Method;

fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tables(ns: &str) -> Vec<String> {
    in_ns(ns, &["nft", "list", "tables"]).lines().map(str::to_owned).collect()
}

fn links(ns: &str) -> String {
    let out = Command::new("ip").args(["-n", ns, "-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_makes_the_uplink_and_takes_it_down_on_stop() {
    let mut s = Setup::new();
    // The wan namespace made up front with forwarding off: a new namespace copies the
    // machine's setting, which is not this test's to know.
    let made = Command::new("ip").args(["netns", "add", &s.wan_netns]).status().unwrap();
    assert!(made.success());
    in_ns(&s.wan_netns, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert_eq!(in_ns(&s.wan_netns, &["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "0");
    s.start().await;

    // Up: a veth from the wan side into the engine's namespace, a table on each side, and
    // forwarding on where the uplink needs it.
    assert!(links(&s.wan_netns).contains("bhu-"), "{}", links(&s.wan_netns));
    assert!(links(&s.netns).contains("uplink0"), "{}", links(&s.netns));
    assert!(tables(&s.wan_netns).iter().any(|t| t.starts_with("table ip bhatti_uplink_")));
    let ns_tables = tables(&s.netns);
    for want in ["table ip bhatti", "table ip bhatti_egress"] {
        assert!(ns_tables.iter().any(|t| t == want), "{want} missing: {ns_tables:?}");
    }
    let forwarding = in_ns(&s.wan_netns, &["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(forwarding.trim(), "1");
    assert!(s.logs().contains("no default route"), "the missing default route is said once");

    // A sandbox names the daemon's resolver and routes out through the uplink.
    let r = s
        .req(Method::POST, "/sandboxes")
        .json(&serde_json::json!({ "name": "net" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let run = |cmd: &str| {
        let cmd = cmd.to_owned();
        let s = &s;
        async move {
            let r = s
                .req(Method::POST, "/sandboxes/net/exec")
                .json(&serde_json::json!({ "cmd": ["sh", "-c", cmd] }))
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = r.json().await.unwrap();
            body["stdout"].as_str().unwrap_or_default().to_owned()
        }
    };
    let resolv = run("cat /etc/resolv.conf").await;
    let gateway = s.subnet.replace(".0/24", ".1");
    assert!(resolv.contains(&format!("nameserver {gateway}")), "{resolv}");
    assert!(run("ip route").await.contains(&format!("default via {gateway}")));

    // A policy set over the API is what the engine enforces after the daemon is killed and
    // started again (recovery installs it from the stored record before the sandbox runs).
    let policy = serde_json::json!({ "default": "deny", "allow_hosts": ["pypi.org"] });
    let r = s
        .req(Method::PATCH, "/sandboxes/net")
        .json(&serde_json::json!({ "net_policy": policy }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    s.kill();
    s.start().await;
    let got: serde_json::Value =
        s.req(Method::GET, "/sandboxes/net").send().await.unwrap().json().await.unwrap();
    assert_eq!(got["net_policy"]["default"], "deny", "{got}");
    assert_eq!(got["net_policy"]["allow_hosts"], serde_json::json!(["pypi.org"]), "{got}");
    let ruleset = in_ns(&s.netns, &["nft", "list", "table", "ip", "bhatti_egress"]);
    assert!(ruleset.contains("@pins_"), "the deny chain is installed again: {ruleset}");

    // Stop: the veth, both tables and the namespace's NAT are gone, forwarding is back off.
    assert!(s.terminate().success(), "{}", s.logs());
    assert!(!links(&s.wan_netns).contains("bhu-"), "{}", links(&s.wan_netns));
    assert!(!links(&s.netns).contains("uplink0"));
    assert!(
        !tables(&s.wan_netns).iter().any(|t| t.contains("bhatti")),
        "{:?}",
        tables(&s.wan_netns)
    );
    let ns_tables = tables(&s.netns);
    assert!(
        !ns_tables.iter().any(|t| t == "table ip bhatti" || t == "table ip bhatti_egress"),
        "{ns_tables:?}"
    );
    let forwarding = in_ns(&s.wan_netns, &["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(forwarding.trim(), "0", "forwarding restored");

    // `egress: off` on the next start: no uplink at all.
    std::fs::write(&s.config, "log_format: text\negress: \"off\"\n").unwrap();
    s.start().await;
    assert!(!links(&s.wan_netns).contains("bhu-"));
    assert!(!tables(&s.netns).iter().any(|t| t == "table ip bhatti"));
    assert!(s.terminate().success());
}
