//! `bhatti snapshot` and `bhatti template` as a user runs them: the built binary against a real
//! `bhatti serve` with real VMs, across a daemon restart (v1's snapshot_cmd_test.go).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Setup, bhatti};

/// The directory holding the admin's checkpoints (the engine's layout, found on the disk).
fn checkpoints_of(root: &Path, owner: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "checkpoints") && path.join(owner).is_dir() {
            return Some(path.join(owner));
        }
        if let Some(found) = checkpoints_of(&path, owner) {
            return Some(found);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_templates_through_the_cli_across_a_restart() {
    let mut s = Setup::new();
    s.start().await;

    // template create/list/inspect, then a create from it (by name) with an override.
    let r = bhatti(&s, &["template", "create", "--name", "small", "--image", "test"]);
    let r = r.ok();
    assert!(r.stdout.contains("template/small created"), "{r:?}");
    let args = ["template", "create", "--name", "tiny", "--memory", "128", "--label", "team=a"];
    let tiny: api::Template =
        serde_json::from_str(&bhatti(&s, &[&args[..], &["--json"]].concat()).ok().stdout).unwrap();
    assert_eq!((tiny.memory_mb, tiny.cpus), (128, 1.0));
    let list = bhatti(&s, &["template", "list"]).ok();
    let header: Vec<&str> = list.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ID", "IMAGE", "CPUS", "MEMORY", "CREATED"]);
    assert!(list.stdout.contains("small") && list.stdout.contains(&tiny.id), "{list:?}");
    let r = bhatti(&s, &["template", "inspect", "tiny"]).ok();
    assert!(r.stdout.contains("Memory:   128 MB") && r.stdout.contains("team=a"), "{r:?}");
    let r = bhatti(&s, &["create", "--template", "tiny", "--name", "web", "--cpus", "0.5"]).ok();
    assert!(r.stdout.contains("sandbox/web created (0.5 vCPU, 128 MB)"), "{r:?}");
    let web: api::Sandbox =
        serde_json::from_str(&bhatti(&s, &["inspect", "web", "--json"]).ok().stdout).unwrap();
    assert_eq!(web.template_id, tiny.id);
    assert_eq!(web.labels.get("team").map(String::as_str), Some("a"));
    let r = bhatti(&s, &["create", "--template", "nope"]);
    assert_eq!(r.code, 3, "an unknown template is not found: {r:?}");

    // snapshot create/list/inspect.
    bhatti(&s, &["exec", "web", "--", "sh", "-c", "echo kept > /home/lohar/kept.txt"]).ok();
    let r = bhatti(&s, &["snapshot", "create", "web", "--name", "cp"]).ok();
    assert!(r.stdout.starts_with("snapshot/cp created from web ("), "{r:?}");
    let r = bhatti(&s, &["snapshot", "create", "web", "--name", "cp"]);
    assert_eq!(r.code, 1, "a taken name: {r:?}");
    assert!(r.stderr.contains("409"), "{r:?}");
    let r = bhatti(&s, &["snapshot", "list"]).ok();
    let header: Vec<&str> = r.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ID", "SOURCE", "SIZE", "CREATED"]);
    assert!(r.stdout.lines().nth(1).unwrap().starts_with("cp "), "{r:?}");
    let snap: api::Snapshot =
        serde_json::from_str(&bhatti(&s, &["snapshot", "inspect", "cp", "--json"]).ok().stdout)
            .unwrap();
    assert_eq!(snap.source_sandbox, web.id);

    // A restart keeps the snapshot usable; a half-written staging directory and a checkpoint
    // without a row (a crash between the capture and its row) are removed at start.
    let dir = checkpoints_of(s.data.path(), &snap.user_id).expect("the checkpoints directory");
    std::fs::create_dir(dir.join("deadbeef.tmp-3")).unwrap();
    std::fs::create_dir(dir.join("0123456789abcdef")).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    assert!(s.terminate().success());
    s.start().await;
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");

    // resume: `id<TAB>name<TAB>ip`, the file of the moment, beside its source.
    let r = bhatti(&s, &["snapshot", "resume", "cp", "--name", "back"]).ok();
    let fields: Vec<&str> = r.stdout.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 3, "{r:?}");
    assert_eq!(fields[1], "back");
    let r = bhatti(&s, &["exec", "back", "--", "cat", "/home/lohar/kept.txt"]).ok();
    assert_eq!(r.stdout, "kept\n");
    bhatti(&s, &["exec", "web", "--", "true"]).ok();
    let back: api::Sandbox =
        serde_json::from_str(&bhatti(&s, &["inspect", "back", "--json"]).ok().stdout).unwrap();
    assert_eq!(back.ip, fields[2]);
    assert_eq!(
        (back.memory_mb, back.cpus, back.template_id.as_str()),
        (128, 0.5, tiny.id.as_str())
    );
    let r = bhatti(&s, &["snapshot", "resume", "cp", "--name", "back"]);
    assert_eq!(r.code, 1, "a taken name: {r:?}");

    // delete: asks (no terminal, no --yes: v1's refusal, exit 0, nothing deleted), then does;
    // a missing one is exit 3 (TestCLISnapshotDeleteNonexistent).
    let r = bhatti(&s, &["snapshot", "delete", "cp"]).ok();
    assert!(r.stderr.contains("--yes"), "{r:?}");
    bhatti(&s, &["snapshot", "inspect", "cp"]).ok();
    let r = bhatti(&s, &["snapshot", "delete", "cp", "-y", "--json"]).ok();
    assert!(r.stdout.contains("deleted"), "{r:?}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert_eq!(bhatti(&s, &["snapshot", "delete", "cp", "-y"]).code, 3);
    assert_eq!(bhatti(&s, &["snapshot", "resume", "cp"]).code, 3);
    let r = bhatti(&s, &["snapshot", "list", "--json"]).ok();
    assert_eq!(r.stdout.trim(), "[]");

    // template delete by name; then it is not found.
    let r = bhatti(&s, &["template", "delete", "tiny", "-y"]).ok();
    assert!(r.stdout.contains("template/tiny deleted"), "{r:?}");
    assert_eq!(bhatti(&s, &["template", "inspect", "tiny"]).code, 3);
    assert!(s.terminate().success());
}
