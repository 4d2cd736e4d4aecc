//! The lifecycle service on a real daemon and real VMs: a destroy at any point of a create ends
//! with nothing left (no QEMU, no TAP, no filter rule, no neighbour entry, no cgroup, no row,
//! the address back in the pool), and the create's caller gets a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use reqwest::Method;

const LIMIT: Duration = Duration::from_secs(60);

/// Polls `f` every 10 ms until it holds, or fails the test after `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

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
