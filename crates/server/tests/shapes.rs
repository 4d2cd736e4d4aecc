//! Shape snapshots (issue 24, item 1) against a real daemon with real VMs: the first create of
//! a shape boots and records it, the next restores a clone of it (its own name, hostname in the
//! record, address, agent token, env, egress policy; the row a boot would write); `boot: true`
//! boots; a changed image is a new key; concurrent first creates; a destroyed source; a failed
//! capture; `template warm`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use reqwest::Method;
use serde_json::json;

async fn create(d: &Daemon, body: serde_json::Value) -> (api::Sandbox, Duration) {
    let t = Instant::now();
    let r = d.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
    let took = t.elapsed();
    assert_eq!(r.status(), 201, "{body}: {:?}", r.text().await);
    (r.json().await.unwrap(), took)
}

async fn exec(d: &Daemon, sandbox: &str, script: &str) -> api::ExecResult {
    let r = d
        .req(Method::POST, &format!("/sandboxes/{sandbox}/exec"))
        .json(&json!({"cmd": ["sh", "-c", script]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{script}");
    r.json().await.unwrap()
}

async fn events(d: &Daemon, kind: &str) -> Vec<store::Event> {
    d.state.events.flush().await;
    let q = store::EventQuery { kind: Some(kind.into()), ..Default::default() };
    d.state.store.read(move |s| s.query_events(&q)).await.unwrap()
}

fn counts(d: &Daemon) -> (u64, u64) {
    (d.state.shapes.captures(), d.state.shapes.restores())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_second_create_restores_a_clone_with_its_own_identity() {
    let d = Daemon::start().await;
    let shape = |name: &str| json!({"name": name, "memory_mb": 256, "env": {"A": "1"}});

    let (a, boot) = create(&d, shape("first")).await;
    assert_eq!(counts(&d), (1, 0), "the first create of a shape boots and records it");
    assert_eq!(events(&d, "shape.recorded").await.len(), 1);

    let policy = json!({"default": "deny", "allow_hosts": [], "allow_cidrs": []});
    let mut body = shape("second");
    body["net_policy"] = policy.clone();
    body["labels"] = json!({"team": "x"});
    let (b, restore) = create(&d, body).await;
    println!("first create (boot + capture): {boot:?}; second (restore): {restore:?}");
    assert_eq!(counts(&d), (1, 1), "the second create restores");
    assert!(restore < boot, "a restore ({restore:?}) is faster than a boot ({boot:?})");
    let restored = events(&d, "shape.restored").await;
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].event.sandbox_id, b.id);

    // The row a boot would have written.
    assert_eq!(
        (b.name.as_str(), b.status.as_str(), b.image.as_str()),
        ("second", "running", "test")
    );
    assert_eq!((b.cpus, b.memory_mb), (1.0, 256));
    assert_eq!(b.labels.get("team").map(String::as_str), Some("x"));
    assert_eq!(b.net_policy.default, api::Posture::Deny);
    assert!(!b.ip.is_empty() && b.ip != a.ip, "its own address: {} vs {}", b.ip, a.ip);
    let got: api::Sandbox =
        d.req(Method::GET, "/sandboxes/second").send().await.unwrap().json().await.unwrap();
    assert_eq!(got.ip, b.ip);
    assert_eq!(d.state.engine.net_policy(&b.id).unwrap().posture, bhatti_core::Posture::Deny);

    // It runs, with the request's env; its record has its own hostname and agent token.
    let out = exec(&d, "second", "echo $A").await;
    assert_eq!((out.exit_code, out.stdout.trim()), (0, "1"), "{}", out.stderr);
    let (ra, rb) =
        (d.state.engine.export(&a.id).await.unwrap(), d.state.engine.export(&b.id).await.unwrap());
    assert_eq!(rb.hostname, "second");
    assert_ne!(ra.token, rb.token, "a fresh agent token");
    assert_ne!(ra.mac, rb.mac);
    let guest = exec(&d, "second", "hostname").await;
    assert_eq!(guest.stdout.trim(), "second", "the guest's own hostname");

    // `boot: true` boots and records nothing.
    let mut body = shape("booted");
    body["boot"] = json!(true);
    create(&d, body).await;
    assert_eq!(counts(&d), (1, 1));

    // The source's end does not touch the snapshot.
    let r = d.req(Method::DELETE, "/sandboxes/first").send().await.unwrap();
    assert_eq!(r.status(), 200);
    create(&d, shape("third")).await;
    assert_eq!(counts(&d), (1, 2));
    assert_eq!(exec(&d, "third", "echo $A").await.stdout.trim(), "1");

    // Two first creates of a new shape at once: both answer; one records it. (Room for them
    // in the user's quota of 5.)
    for name in ["second", "booted"] {
        let r = d.req(Method::DELETE, &format!("/sandboxes/{name}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let new_shape = |name: &str| json!({"name": name, "memory_mb": 192});
    let (x, y) = tokio::join!(create(&d, new_shape("x")), create(&d, new_shape("y")));
    assert_ne!(x.0.id, y.0.id);
    assert_eq!(counts(&d), (2, 2));
    create(&d, new_shape("z")).await;
    assert_eq!(counts(&d), (2, 3));
    let list = d.state.shapes.list().await;
    assert_eq!(list.len(), 2);
    assert_eq!(list.iter().map(|e| e.uses).sum::<u64>(), 3);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_a_changed_image_is_a_new_shape() {
    let images = tempfile::tempdir().unwrap();
    let current = images.path().join("shapetest/current");
    std::fs::create_dir_all(&current).unwrap();
    let file = current.join("rootfs.ext4");
    let copied = std::process::Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(common::data_dir().join("images/test/current/rootfs.ext4"))
        .arg(&file)
        .status()
        .unwrap();
    assert!(copied.success());
    let dir = images.path().to_owned();
    let d = Daemon::start_with(move |s| s.images_dir = dir).await;
    let body = |name: &str| json!({"name": name, "memory_mb": 192, "image": "shapetest"});

    create(&d, body("one")).await;
    create(&d, body("two")).await;
    assert_eq!(counts(&d), (1, 1));

    // The image changes under its name: a new key, so a boot (and a new record).
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
    create(&d, body("three")).await;
    assert_eq!(counts(&d), (2, 1), "a changed image is never restored from the old snapshot");
    create(&d, body("four")).await;
    assert_eq!(counts(&d), (2, 2));

    // The stale one goes once no sandbox restored from it is left.
    assert_eq!(server::shapes::sweep(&d.state).await.unwrap(), 0, "`two` came from it");
    let r = d.req(Method::DELETE, "/sandboxes/two").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server::shapes::sweep(&d.state).await.unwrap(), 1);
    assert_eq!(d.state.shapes.list().await.len(), 1);
    create(&d, body("five")).await;
    assert_eq!(counts(&d), (2, 3));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_a_failed_capture_still_answers_the_create() {
    let d = Daemon::start().await;
    // The shape store's directory cannot be made: every capture fails.
    let checkpoints = d.data.path().join("engine/checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    std::fs::write(checkpoints.join("shapes"), b"in the way").unwrap();
    let body = |name: &str| json!({"name": name, "memory_mb": 192});
    create(&d, body("a")).await;
    create(&d, body("b")).await;
    assert_eq!(counts(&d), (0, 0), "nothing recorded, both booted");
    assert_eq!(exec(&d, "b", "echo ok").await.stdout.trim(), "ok");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_template_warm_then_the_first_create_restores() {
    let d = Daemon::start().await;
    let r = d
        .req(Method::POST, "/templates")
        .json(&json!({"name": "small", "image": "test", "memory_mb": 192}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = d.req(Method::POST, "/templates/small/warm").send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let warmed: api::WarmResult = r.json().await.unwrap();
    assert!(warmed.created);
    assert_eq!(warmed.key.len(), 32);
    assert!(d.state.engine.list().is_empty(), "the hidden sandbox is gone");
    let again: api::WarmResult =
        d.req(Method::POST, "/templates/small/warm").send().await.unwrap().json().await.unwrap();
    assert_eq!((again.key.as_str(), again.created), (warmed.key.as_str(), false));

    let (s, _) = create(&d, json!({"name": "t1", "template_id": "small"})).await;
    assert_eq!(counts(&d), (1, 1), "the template's first create restores");
    assert_eq!(s.memory_mb, 192);
    assert_eq!(exec(&d, "t1", "echo ok").await.stdout.trim(), "ok");

    let r = d.req(Method::POST, "/templates/nope/warm").send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Not the admin's: the list is not there for this user.
    let r = d.req(Method::GET, "/shapes").send().await.unwrap();
    assert_eq!(r.status(), 404);
    d.stop().await;
}
