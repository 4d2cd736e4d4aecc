//! The lifecycle service on a real daemon and real VMs: a destroy at any point of a create ends
//! with nothing left (no QEMU, no TAP, no filter rule, no neighbour entry, no cgroup, no row,
//! the address back in the pool), and the create's caller gets a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, until};
use reqwest::Method;

const LIMIT: Duration = Duration::from_secs(60);

/// The row of `name` as the API shows it, if any.
async fn row(d: &Daemon, name: &str) -> Option<api::Sandbox> {
    let r = d.req(Method::GET, &format!("/sandboxes/{name}")).send().await.unwrap();
    if r.status() == 404 {
        return None;
    }
    assert_eq!(r.status(), 200);
    Some(r.json().await.unwrap())
}

/// PIDs of QEMUs whose command line names sandbox `id`.
fn qemus_of(id: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline);
        if text.contains("qemu-system") && text.contains(id) {
            pids.push(pid);
        }
    }
    pids
}

/// Runs a command inside the daemon's namespace and returns its output.
fn in_netns(d: &Daemon, args: &[&str]) -> String {
    let ns = d.state.engine.netns().name().to_owned();
    let out =
        std::process::Command::new("ip").args(["netns", "exec", &ns]).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Cgroups (any controller) of sandbox `id`.
fn cgroups_of(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    let roots = std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten().map(|e| e.path());
    for root in roots.chain([std::path::PathBuf::from("/sys/fs/cgroup")]) {
        let Ok(children) = std::fs::read_dir(root.join("bhatti")) else { continue };
        for child in children.flatten() {
            let name = child.file_name().to_string_lossy().into_owned();
            if name.contains(id) {
                found.push(child.path().display().to_string());
            }
        }
    }
    found
}

/// Asserts nothing of sandbox `id` is left anywhere.
async fn nothing_left(d: &Daemon, name: &str, id: &str, addresses_before: usize) {
    assert!(row(d, name).await.is_none(), "the row is gone");
    let list: Vec<api::Sandbox> =
        d.req(Method::GET, "/sandboxes").send().await.unwrap().json().await.unwrap();
    assert!(list.iter().all(|s| s.id != id), "not listed: {list:?}");
    assert_eq!(qemus_of(id), Vec::<i32>::new(), "no QEMU of {id}");
    let links = in_netns(d, &["ip", "-o", "link"]);
    assert!(!links.contains("tap"), "no TAP left: {links}");
    let rules = in_netns(d, &["nft", "list", "ruleset"]);
    assert!(!rules.contains("tap"), "no port rule left: {rules}");
    let neighbours = in_netns(d, &["ip", "neigh", "show", "nud", "permanent"]);
    assert!(neighbours.trim().is_empty(), "no neighbour entry left: {neighbours}");
    assert_eq!(cgroups_of(id), Vec::<String>::new(), "no cgroup of {id}");
    assert_eq!(d.state.engine.addresses_in_use(), addresses_before, "the address is back");
    let dir = d.data.path().join("engine/sandboxes");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(id))
        .collect();
    assert!(left.is_empty(), "no directory left: {left:?}");
}

/// Where in a create the destroy lands.
#[derive(Debug, Clone, Copy)]
enum Point {
    /// As soon as the row shows `creating`.
    RowWritten,
    /// Once the sandbox's QEMU process exists.
    QemuStarted,
    /// Once the guest's kernel has written to its console (booting).
    GuestBooting,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_at_any_point_of_a_create_leaves_nothing() {
    let d = Daemon::start().await;
    let addresses_before = d.state.engine.addresses_in_use();
    for (n, point) in
        [Point::RowWritten, Point::QemuStarted, Point::GuestBooting].iter().enumerate()
    {
        let name = format!("doomed-{n}");
        let body = serde_json::json!({"name": name, "memory_mb": 128});
        let create = tokio::spawn(d.req(Method::POST, "/sandboxes").json(&body).send());
        let deadline = Instant::now() + LIMIT;
        let id = loop {
            if let Some(s) = row(&d, &name).await {
                assert_eq!(s.status, "creating", "{point:?}");
                break s.id;
            }
            assert!(Instant::now() < deadline, "no creating row after {LIMIT:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let sandbox_dir = d.data.path().join("engine/sandboxes").join(&id);
        match point {
            Point::RowWritten => {}
            Point::QemuStarted => {
                until("QEMU started", LIMIT, || async { !qemus_of(&id).is_empty() }).await;
            }
            Point::GuestBooting => {
                let console = sandbox_dir.join("serial.log");
                until("the guest's console", LIMIT, || async {
                    std::fs::metadata(&console).map(|m| m.len() > 0).unwrap_or(false)
                })
                .await;
            }
        }
        let r = d.req(Method::DELETE, &format!("/sandboxes/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{point:?}: {:?}", r.text().await);

        let created = create.await.unwrap().unwrap();
        assert_eq!(created.status(), 409, "{point:?}");
        let body: api::ErrorBody = created.json().await.unwrap();
        assert_eq!(body.code, "destroyed", "{point:?}: {body:?}");
        assert!(body.error.contains("destroyed while it was being created"), "{body:?}");
        nothing_left(&d, &name, &id, addresses_before).await;
    }
    // The names are free again, and the daemon creates as before.
    let again = d.create("doomed-0").await;
    assert_eq!(again.status, "running");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_hot_answers_with_the_row_after_the_wake() {
    let d = Daemon::start().await;
    let sb = d.create("sleepy").await;
    let r = d.req(Method::POST, "/sandboxes/sleepy/stop").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<api::Sandbox>().await.unwrap().status, "stopped");
    let r = d
        .req(Method::PATCH, "/sandboxes/sleepy")
        .json(&serde_json::json!({"keep_hot": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let patched: api::Sandbox = r.json().await.unwrap();
    assert_eq!(patched.id, sb.id);
    assert!(patched.keep_hot);
    assert_eq!(patched.status, "running", "the answer shows the wake: {patched:?}");
    assert_eq!(patched.thermal.as_deref(), Some("hot"));
    // A lifecycle operation on a row being destroyed is refused by the table, not the engine.
    let r = d.req(Method::DELETE, "/sandboxes/sleepy").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = d.req(Method::POST, &format!("/sandboxes/{}/stop", sb.id)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    d.stop().await;
}

/// The event types of `sandbox`, oldest first.
async fn events_of(d: &Daemon, sandbox: &str) -> Vec<(String, serde_json::Value)> {
    let q = store::EventQuery {
        sandbox_id: Some(sandbox.to_owned()),
        limit: Some(100),
        ..Default::default()
    };
    let mut events = d.state.store.read(move |s| s.query_events(&q)).await.unwrap();
    events.reverse();
    events
        .into_iter()
        .map(|e| (e.event.kind, serde_json::from_str(&e.event.meta).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_are_written_and_old_events_purged() {
    let d = Daemon::start_with(|s| {
        s.housekeeping_period = Duration::from_millis(50);
        s.event_retention = Duration::from_secs(90 * 24 * 3600);
    })
    .await;
    // One event from 91 days ago, one from 89: only the first goes.
    let day = 24 * 3600 * 1000;
    let now = store::Timestamp::now().millis();
    let old = |age_days: i64, kind: &str| store::NewEvent {
        ts: store::Timestamp(now - age_days * day),
        kind: kind.into(),
        user_id: String::new(),
        sandbox_id: "aged".into(),
        meta: String::new(),
    };
    let (stale, recent) = (old(91, "test.stale"), old(89, "test.recent"));
    d.state.store.write(move |s| s.record_events(&[stale, recent])).await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let background = server::spawn_background(&d.state, rx);
    until("the stale event purged", LIMIT, || async {
        events_of(&d, "aged").await.iter().all(|(kind, _)| kind != "test.stale")
    })
    .await;
    assert_eq!(events_of(&d, "aged").await.len(), 1, "the recent event stays");

    let sb = d.create("logged").await;
    for op in ["stop", "start"] {
        let r = d.req(Method::POST, &format!("/sandboxes/logged/{op}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{op}");
    }
    let r = d.req(Method::DELETE, "/sandboxes/logged").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let events = events_of(&d, &sb.id).await;
    let lifecycle: Vec<&(String, serde_json::Value)> =
        events.iter().filter(|(kind, _)| kind.starts_with("sandbox.")).collect();
    let kinds: Vec<&str> = lifecycle.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["sandbox.created", "sandbox.stopped", "sandbox.started", "sandbox.destroyed"],
        "{events:?}"
    );
    let created = &lifecycle[0].1;
    assert_eq!(
        (created["name"].as_str(), created["memory_mb"].as_u64()),
        (Some("logged"), Some(128))
    );
    assert_eq!(lifecycle[1].1["reason"], "api");
    assert_eq!(lifecycle[3].1["name"], "logged");
    assert!(lifecycle[3].1["lifetime_s"].is_u64());
    tx.send(true).unwrap();
    for handle in background {
        handle.await.unwrap();
    }
    d.stop().await;
}

/// A sandbox its user stopped stays stopped: guest routes answer 409 `not_running` with the
/// way out; one put to sleep by the engine's own stop (the thermal manager's path) wakes on
/// the next request; `start` and keep-hot wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_its_user_stopped_stays_stopped() {
    let d = Daemon::start().await;
    let sb = d.create("parked").await;
    let exec = |name: &'static str| {
        d.req(Method::POST, &format!("/sandboxes/{name}/exec"))
            .json(&serde_json::json!({"cmd": ["echo", "up"]}))
            .send()
    };
    let r = d.req(Method::POST, "/sandboxes/parked/stop").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let refused = [
        ("exec", exec("parked").await.unwrap()),
        (
            "files",
            d.req(Method::GET, "/sandboxes/parked/files?path=/etc/hostname").send().await.unwrap(),
        ),
        ("proxy", d.req(Method::GET, "/sandboxes/parked/proxy/8080/").send().await.unwrap()),
        ("shell", d.req(Method::GET, "/sandboxes/parked/ws").send().await.unwrap()),
    ];
    for (route, r) in refused {
        assert_eq!(r.status(), 409, "{route}");
        let body: api::ErrorBody = r.json().await.unwrap();
        assert_eq!(body.code, "not_running", "{route}: {body:?}");
        assert!(body.error.contains("bhatti start parked"), "{route}: {body:?}");
    }
    assert_eq!(d.state.engine.thermal(&sb.id).unwrap(), engine::Thermal::Cold, "nothing woke it");
    // start wakes it, and guest routes work again.
    let r = d.req(Method::POST, "/sandboxes/parked/start").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = exec("parked").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<api::ExecResult>().await.unwrap().stdout, "up\n");

    // Put to sleep the way the thermal manager does (the engine's stop, no user's): the next
    // request wakes it transparently.
    d.state.engine.stop(&sb.id, Duration::ZERO).await.unwrap();
    assert_eq!(d.state.engine.thermal(&sb.id).unwrap(), engine::Thermal::Cold);
    let r = exec("parked").await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    // keep-hot on a user-stopped sandbox wakes it too, and it is no longer user-stopped.
    let r = d.req(Method::POST, "/sandboxes/parked/stop").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = d
        .req(Method::PATCH, "/sandboxes/parked")
        .json(&serde_json::json!({"keep_hot": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = exec("parked").await.unwrap();
    assert_eq!(r.status(), 200);
    d.stop().await;
}

/// An images directory with the test image (`test`) and two that can never boot: `panics` has no
/// agent (the kernel finds no init and panics: QEMU exits), `hangs` has an init that never
/// answers (QEMU runs on).
fn broken_images(root: &std::path::Path) -> std::path::PathBuf {
    let images = root.join("images");
    let test = common::data_dir().join("images/test/current/rootfs.ext4");
    let debugfs = |image: &std::path::Path, request: &str| {
        let out = std::process::Command::new("debugfs")
            .args(["-w", "-R", request])
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "debugfs {request}: {out:?}");
    };
    for name in ["test", "panics", "hangs"] {
        let dir = images.join(name).join("current");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&test, dir.join("rootfs.ext4")).unwrap();
    }
    debugfs(&images.join("panics/current/rootfs.ext4"), "rm /usr/local/bin/lohar");
    let hang = root.join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nwhile :; do sleep 3600; done\n").unwrap();
    let hangs = images.join("hangs/current/rootfs.ext4");
    debugfs(&hangs, "rm /usr/local/bin/lohar");
    debugfs(&hangs, &format!("write {} /usr/local/bin/lohar", hang.display()));
    debugfs(&hangs, "sif /usr/local/bin/lohar mode 0100755");
    images
}

/// A create that can never succeed fails fast (QEMU exited: at once, with the console) or
/// gives up its boot slot, so other creates are not queued behind it; nothing of it is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_answers_neither_blocks_others_nor_leaves_anything() {
    let scratch = tempfile::tempdir().unwrap();
    let images = broken_images(scratch.path());
    let d = Daemon::start_with_engine(
        |s| s.images_dir = images,
        |e| {
            e.boot_slot = Duration::from_secs(3);
            e.ready_timeout = Duration::from_secs(20);
        },
    )
    .await;
    let addresses_before = d.state.engine.addresses_in_use();
    let create = |name: &'static str, image: &'static str| {
        let body = serde_json::json!({"name": name, "memory_mb": 128, "image": image});
        d.req(Method::POST, "/sandboxes").json(&body).send()
    };

    // No agent: the kernel panics, QEMU exits, the create fails at once with the console.
    let started = Instant::now();
    let r = create("panicky", "panics").await.unwrap();
    let took = started.elapsed();
    let status = r.status();
    let body: api::ErrorBody = r.json().await.unwrap();
    assert_eq!(status, 503, "{body:?} after {took:?}");
    assert!(body.error.contains("stopped before its agent answered"), "{body:?}");
    assert!(body.error.to_lowercase().contains("panic"), "the console tail: {body:?}");
    assert!(took < Duration::from_secs(30), "failed fast, not after the ready timeout: {took:?}");

    // An init that never answers holds the only boot slot for 3 s, not 20: a good create
    // started meanwhile finishes while the bad one is still waiting.
    let stuck = tokio::spawn(create("stuck", "hangs"));
    until("the stuck boot's QEMU", LIMIT, || async {
        row(&d, "stuck").await.is_some_and(|s| !qemus_of(&s.id).is_empty())
    })
    .await;
    let stuck_id = row(&d, "stuck").await.unwrap().id;
    let good = create("good", "test").await.unwrap();
    assert_eq!(good.status(), 201);
    let good: api::Sandbox = good.json().await.unwrap();
    let octets: Vec<&str> = good.ip.split('.').collect();
    let good_tap = format!("tap{}-{}", octets[2], octets[3]);
    assert!(!stuck.is_finished(), "the stuck create is still waiting for its guest");
    let r = stuck.await.unwrap().unwrap();
    assert_eq!(r.status(), 503);
    let body: api::ErrorBody = r.json().await.unwrap();
    assert!(body.error.contains("did not become ready"), "{body:?}");

    // Neither left anything behind: no row, no QEMU, no TAP or rule of theirs, their
    // addresses back (the good sandbox holds one).
    for (name, id) in [("stuck", stuck_id.as_str())] {
        assert!(row(&d, name).await.is_none());
        assert_eq!(qemus_of(id), Vec::<i32>::new());
        assert_eq!(cgroups_of(id), Vec::<String>::new());
    }
    assert!(row(&d, "panicky").await.is_none());
    assert_eq!(d.state.engine.addresses_in_use(), addresses_before + 1);
    let links = in_netns(&d, &["ip", "-o", "link"]);
    assert_eq!(links.matches("tap").count(), 1, "only the good sandbox's TAP: {links}");
    let neighbours = in_netns(&d, &["ip", "neigh", "show", "nud", "permanent"]);
    assert_eq!(neighbours.trim().lines().count(), 1, "only the good one's: {neighbours}");
    let rules = in_netns(&d, &["nft", "list", "ruleset"]);
    let taps: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("tap") && w.len() > 3)
        .collect();
    assert_eq!(taps, [good_tap.as_str()].into(), "only the good one's port rules: {rules}");
    d.stop().await;
}

/// The egress policy: refused with 400 when it breaks a rule (at create and PATCH, nothing
/// changed), shown normalised in every answer, replaced by a PATCH (also of a stopped sandbox,
/// without waking it), and kept across stop and start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_policy_is_checked_shown_replaced_and_kept() {
    let d = Daemon::start().await;
    let create = |body: serde_json::Value| d.req(Method::POST, "/sandboxes").json(&body).send();
    let patch =
        |body: serde_json::Value| d.req(Method::PATCH, "/sandboxes/walled").json(&body).send();
    let bad = [
        (
            serde_json::json!({"allow_cidrs": ["169.254.169.254"]}),
            "invalid net_policy: allow_cidrs",
        ),
        (
            serde_json::json!({"default": "deny", "allow_hosts": ["a.*.com"]}),
            "invalid net_policy: allow_hosts",
        ),
        (serde_json::json!({"default": "open"}), "net_policy.default"),
        (serde_json::json!({"allow_cidrs": "10.0.0.0/8"}), "net_policy.allow_cidrs"),
    ];
    for (policy, part) in &bad {
        let body = serde_json::json!({"name": "walled", "memory_mb": 128, "net_policy": policy});
        let r = create(body).await.unwrap();
        assert_eq!(r.status(), 400, "{policy}");
        let body: api::ErrorBody = r.json().await.unwrap();
        assert!(body.error.contains(part), "{policy}: {body:?}");
        assert_eq!(body.code, "invalid");
    }
    assert!(row(&d, "walled").await.is_none(), "nothing of the refused creates is left");

    // Created with a policy: every answer shows it normalised.
    let asked = serde_json::json!({
        "default": "deny",
        "allow_hosts": ["PyPI.org.", "*.pythonhosted.org", "pypi.org"],
        "allow_cidrs": ["10.1.0.0/16"],
    });
    let want: api::NetPolicy = serde_json::from_value(serde_json::json!({
        "default": "deny",
        "allow_hosts": ["pypi.org", "*.pythonhosted.org"],
        "allow_cidrs": ["10.1.0.0/16"],
    }))
    .unwrap();
    let body = serde_json::json!({"name": "walled", "memory_mb": 128, "net_policy": asked});
    let r = create(body).await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let created: api::Sandbox = r.json().await.unwrap();
    assert_eq!(created.net_policy, want);
    let enforced = || d.state.engine.net_policy(&created.id).unwrap().to_net_policy();
    assert_eq!(enforced(), want, "the engine was created with it");
    assert_eq!(row(&d, "walled").await.unwrap().net_policy, want);
    let list: Vec<api::Sandbox> =
        d.req(Method::GET, "/sandboxes").send().await.unwrap().json().await.unwrap();
    assert_eq!(list[0].net_policy, want);
    // The raw answer spells it as v2 did.
    let raw: serde_json::Value =
        d.req(Method::GET, "/sandboxes/walled").send().await.unwrap().json().await.unwrap();
    assert_eq!(raw["net_policy"]["default"], "deny");

    // A bad PATCH changes nothing, not even the fields beside it.
    for (policy, part) in &bad {
        let r = patch(serde_json::json!({"name": "renamed", "net_policy": policy})).await.unwrap();
        assert_eq!(r.status(), 400, "{policy}");
        let body: api::ErrorBody = r.json().await.unwrap();
        assert!(body.error.contains(part), "{policy}: {body:?}");
    }
    let shown = row(&d, "walled").await.unwrap();
    assert_eq!((shown.name.as_str(), &shown.net_policy), ("walled", &want));

    // A PATCH of the policy alone replaces the whole policy.
    let r = patch(serde_json::json!({"net_policy": {"default": "public"}})).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let patched: api::Sandbox = r.json().await.unwrap();
    assert_eq!(patched.net_policy, api::NetPolicy::default());
    assert_eq!(row(&d, "walled").await.unwrap().net_policy, api::NetPolicy::default());
    assert_eq!(enforced(), api::NetPolicy::default(), "the engine enforces it at once");

    // A stopped sandbox takes a new policy without waking; stop and start keep it.
    let r = d.req(Method::POST, "/sandboxes/walled/stop").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = patch(serde_json::json!({"net_policy": asked})).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let patched: api::Sandbox = r.json().await.unwrap();
    assert_eq!((patched.status.as_str(), &patched.net_policy), ("stopped", &want));
    assert_eq!(d.state.engine.thermal(&created.id).unwrap(), engine::Thermal::Cold);
    assert_eq!(enforced(), want);
    // The stored engine record carries it too: a daemon restarted now restores this policy.
    let id = created.id.clone();
    let stored = d.state.store.read(move |s| s.sandbox_by_id(&id)).await.unwrap();
    assert_eq!(stored.record.unwrap().decode().unwrap().net_policy, want);
    let r = d.req(Method::POST, "/sandboxes/walled/start").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<api::Sandbox>().await.unwrap().net_policy, want);
    let r = d.req(Method::POST, "/sandboxes/walled/stop").send().await.unwrap();
    assert_eq!(r.json::<api::Sandbox>().await.unwrap().net_policy, want);
    assert_eq!(row(&d, "walled").await.unwrap().net_policy, want);
    assert_eq!(enforced(), want);
    let id = created.id.clone();
    let stored = d.state.store.read(move |s| s.sandbox_by_id(&id)).await.unwrap();
    assert_eq!(stored.record.unwrap().decode().unwrap().net_policy, want, "the engine's export");
    d.stop().await;
}
