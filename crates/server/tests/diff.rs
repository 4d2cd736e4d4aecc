//! `GET /sandboxes/:id/diff` against a real daemon with real VMs: a hot sandbox's changes since
//! its creation (files, a directory, a symlink, a chmod) and their patch, since a snapshot
//! (changes after it only: a same-size rewrite, a removal, a chmod), the same from a stopped
//! sandbox (not woken), bad input, other owners; and the time on a 2 GiB disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Daemon;
use reqwest::Method;
use serde_json::json;

async fn diff(d: &Daemon, sandbox: &str, query: &str) -> api::Diff {
    let r = d.req(Method::GET, &format!("/sandboxes/{sandbox}/diff{query}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{query}: {:?}", r.text().await);
    r.json().await.unwrap()
}

async fn status_and_error(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let error = serde_json::from_str::<api::ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
    (status, error)
}

fn paths(v: &[api::DiffEntry]) -> BTreeSet<String> {
    v.iter().map(|e| e.path.clone()).collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn find<'a>(v: &'a [api::DiffEntry], path: &str) -> &'a api::DiffEntry {
    v.iter().find(|e| e.path == path).unwrap_or_else(|| panic!("{path} not in {v:?}"))
}

/// Only what the test did: the guest's own writes at boot (hostname, resolver) are left out by
/// comparing with the diff taken before.
fn ours(v: &[api::DiffEntry], before: &BTreeSet<String>) -> BTreeSet<String> {
    paths(v).difference(before).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_since_creation_since_a_snapshot_and_of_a_stopped_sandbox() {
    let d = Daemon::start().await;
    let other = d.other_user("mallory").await;
    d.create("dx").await;

    let fresh = diff(&d, "dx", "").await;
    assert_eq!(fresh.against, "creation");
    let (added0, changed0) = (paths(&fresh.added), paths(&fresh.changed));
    println!("a fresh sandbox's own changes: added {added0:?} changed {changed0:?}");
    assert!(fresh.deleted.is_empty(), "{:?}", fresh.deleted);
    assert!(added0.iter().chain(&changed0).all(|p| !p.starts_with("/workspace")), "{fresh:?}");

    d.sh(
        "dx",
        "mkdir -p /workspace/proj/src && printf 'one\\ntwo\\nthree\\n' > /workspace/proj/notes.txt \
         && printf x > /workspace/proj/gone.txt && printf '#!/bin/sh\\n' > /workspace/proj/run.sh \
         && ln -s notes.txt /workspace/proj/link && chmod 0700 /home/lohar",
    )
    .await;
    let t = Instant::now();
    let now = diff(&d, "dx", "?against=creation").await;
    println!("diff of a hot sandbox (64 MiB image): {:?}", t.elapsed());
    let want_added = [
        "/workspace/proj",
        "/workspace/proj/gone.txt",
        "/workspace/proj/link",
        "/workspace/proj/notes.txt",
        "/workspace/proj/run.sh",
        "/workspace/proj/src",
    ];
    assert_eq!(ours(&now.added, &added0), set(&want_added), "{now:?}");
    assert_eq!(ours(&now.changed, &changed0), set(&["/home/lohar"]), "{now:?}");
    assert!(now.deleted.is_empty(), "{:?}", now.deleted);
    assert!(!now.truncated && now.patch.is_none());
    let notes = find(&now.added, "/workspace/proj/notes.txt");
    assert_eq!((notes.kind.as_str(), notes.size, notes.mode.as_str()), ("file", 14, "0644"));
    let link = find(&now.added, "/workspace/proj/link");
    assert_eq!((link.kind.as_str(), link.size), ("symlink", 9));
    assert_eq!(find(&now.added, "/workspace/proj/src").kind, "dir");
    let home = find(&now.changed, "/home/lohar");
    assert_eq!((home.kind.as_str(), home.mode.as_str()), ("dir", "0700"));
    assert_eq!(home.old_mode.as_deref(), Some("0755"));
    assert_eq!(d.state.engine.thermal(&now_id(&d, "dx").await).unwrap().to_string(), "hot");

    let patched = diff(&d, "dx", "?patch=true").await;
    let patch = patched.patch.unwrap();
    assert!(
        patch.contains(
            "--- /dev/null\n+++ b/workspace/proj/notes.txt\n@@ -0,0 +1,3 @@\n+one\n+two\n+three\n"
        ),
        "{patch}"
    );

    // Since a snapshot: only what came after it.
    let r = d
        .req(Method::POST, "/sandboxes/dx/checkpoint")
        .json(&json!({"name": "s1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let unchanged = diff(&d, "dx", "?against=s1").await;
    assert_eq!(
        (paths(&unchanged.added), paths(&unchanged.changed), paths(&unchanged.deleted)),
        (set(&[]), set(&[]), set(&[])),
        "{unchanged:?}"
    );
    d.sh(
        "dx",
        "printf 'one\\nTWO\\nthree\\n' > /workspace/proj/notes.txt && rm /workspace/proj/gone.txt \
         && chmod 0755 /workspace/proj/run.sh && mkdir /workspace/proj/newdir \
         && ln -s /etc/hostname /workspace/proj/newlink",
    )
    .await;
    let since = diff(&d, "dx", "?against=s1&patch=true").await;
    assert_eq!(since.against, "s1");
    assert_eq!(paths(&since.added), set(&["/workspace/proj/newdir", "/workspace/proj/newlink"]));
    assert_eq!(
        paths(&since.changed),
        set(&["/workspace/proj/notes.txt", "/workspace/proj/run.sh"])
    );
    assert_eq!(paths(&since.deleted), set(&["/workspace/proj/gone.txt"]));
    let notes = find(&since.changed, "/workspace/proj/notes.txt");
    assert_eq!((notes.size, notes.old_size), (14, Some(14)), "a same-size rewrite");
    let run = find(&since.changed, "/workspace/proj/run.sh");
    assert_eq!((run.mode.as_str(), run.old_mode.as_deref()), ("0755", Some("0644")));
    let patch = since.patch.unwrap();
    assert!(patch.contains(" one\n-two\n+TWO\n three\n"), "{patch}");
    assert!(patch.contains("--- a/workspace/proj/gone.txt\n+++ /dev/null\n"), "{patch}");

    // A stopped sandbox: its disk is read from the file, and it stays stopped.
    let r = d.req(Method::POST, "/sandboxes/dx/stop").send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let id = now_id(&d, "dx").await;
    assert_eq!(d.state.engine.thermal(&id).unwrap().to_string(), "cold");
    let t = Instant::now();
    let cold = diff(&d, "dx", "?against=s1").await;
    println!("diff of a stopped sandbox: {:?}", t.elapsed());
    assert_eq!(
        (paths(&cold.added), paths(&cold.changed), paths(&cold.deleted)),
        (paths(&since.added), paths(&since.changed), paths(&since.deleted))
    );
    assert_eq!(d.state.engine.thermal(&id).unwrap().to_string(), "cold", "not woken");

    // Bad input, unknown things, other owners.
    let table: [(&str, &str, u16, &str); 5] = [
        ("an empty against", "/sandboxes/dx/diff?against=", 400, "invalid against"),
        ("a bad name", "/sandboxes/dx/diff?against=a%20b", 400, "invalid against"),
        ("a bad patch", "/sandboxes/dx/diff?patch=maybe", 400, "invalid patch"),
        ("an unknown snapshot", "/sandboxes/dx/diff?against=nope", 404, "not found"),
        ("an unknown sandbox", "/sandboxes/nope/diff", 404, "not found"),
    ];
    for (what, path, status, part) in table {
        let (got, error) = status_and_error(d.req(Method::GET, path).send().await.unwrap()).await;
        assert_eq!(got, status, "{what}: {error}");
        assert!(error.contains(part), "{what}: {error}");
    }
    for path in ["/sandboxes/dx/diff", "/sandboxes/dx/diff?against=s1"] {
        let r = d.client.get(format!("{}{path}", d.url)).bearer_auth(&other).send().await.unwrap();
        assert_eq!(r.status(), 404, "another owner's sandbox: {path}");
    }
    d.stop().await;
}

async fn now_id(d: &Daemon, name: &str) -> String {
    let r = d.req(Method::GET, &format!("/sandboxes/{name}")).send().await.unwrap();
    let sb: api::Sandbox = r.json().await.unwrap();
    sb.id
}

/// The target: a sandbox with a 2 GiB disk and a few changed files answers in under a second
/// (asserted loosely: a shared, emulated machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_of_a_2_gib_disk_with_a_few_changes_is_quick() {
    let d = Daemon::start().await;
    let body = json!({"name": "big", "memory_mb": 128, "disk_size_mb": 2048});
    let r = d.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    d.sh("big", "df -m / | tail -1; for i in 1 2 3 4 5; do echo change $i > /workspace/f$i; done")
        .await;
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let r = diff(&d, "big", "").await;
        times.push(t.elapsed());
        let ours: BTreeSet<String> =
            paths(&r.added).into_iter().filter(|p| p.starts_with("/workspace/")).collect();
        assert_eq!(ours, (1..=5).map(|i| format!("/workspace/f{i}")).collect());
    }
    times.sort();
    println!(
        "diff of a hot sandbox with a 2 GiB disk and 5 new files: {times:?} (median {:?})",
        times[1]
    );
    assert!(times[1] < Duration::from_secs(3), "{times:?}");
    d.stop().await;
}
