//! `bhatti diff` as a user runs it: the built binary against a real `bhatti serve` with a real
//! VM: the table, `--json`, `--patch`, `--against <snapshot>`, a missing snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Setup, bhatti};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_through_the_cli() {
    let mut s = Setup::new();
    s.start().await;
    bhatti(&s, &["create", "--name", "dv", "--memory", "128"]).ok();
    bhatti(&s, &["snapshot", "create", "dv", "--name", "start"]).ok();
    let r = bhatti(&s, &["diff", "dv", "--against", "start"]);
    assert_eq!(r.code, 0, "{r:?}\n{}", s.logs());
    assert_eq!(r.stdout, "no changes since start\n", "{r:?}");
    let script = "mkdir /workspace/app && printf 'a\\nb\\n' > /workspace/app/main.txt \
                  && chmod 0600 /workspace/app/main.txt && chmod 0700 /workspace";
    bhatti(&s, &["exec", "dv", "--", "sh", "-c", script]).ok();

    // The table: header, then A/M/D rows, a directory with a trailing slash.
    let r = bhatti(&s, &["diff", "dv", "--against", "start"]).ok();
    let rows: Vec<Vec<&str>> = r.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [
            vec!["MODE", "SIZE", "PATH"],
            vec!["A", "0755", "1024", "/workspace/app/"],
            vec!["A", "0600", "4", "/workspace/app/main.txt"],
            vec!["M", "0755->0700", "1024", "/workspace/"],
        ],
        "{r:?}"
    );

    // --json: the API's answer.
    let r = bhatti(&s, &["diff", "dv", "--against", "start", "--json"]).ok();
    let d: api::Diff = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(d.against, "start");
    let added: Vec<(&str, &str, &str)> =
        d.added.iter().map(|e| (e.path.as_str(), e.kind.as_str(), e.mode.as_str())).collect();
    assert_eq!(
        added,
        [("/workspace/app", "dir", "0755"), ("/workspace/app/main.txt", "file", "0600")]
    );
    assert_eq!(d.changed.len(), 1);
    assert_eq!(d.changed[0].old_mode.as_deref(), Some("0755"));
    assert!(d.deleted.is_empty() && d.patch.is_none());

    // --patch prints the unified diff.
    let r = bhatti(&s, &["diff", "dv", "--against", "start", "--patch"]).ok();
    assert!(
        r.stdout.contains("--- /dev/null\n+++ b/workspace/app/main.txt\n@@ -0,0 +1,2 @@\n+a\n+b\n"),
        "{r:?}"
    );

    // Since creation it includes the same files; a missing snapshot is "not found" (exit 3).
    let r = bhatti(&s, &["diff", "dv", "--json"]).ok();
    let d: api::Diff = serde_json::from_str(&r.stdout).unwrap();
    assert!(d.added.iter().any(|e| e.path == "/workspace/app/main.txt"), "{d:?}");
    let r = bhatti(&s, &["diff", "dv", "--against", "nope"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("not found"), "{r:?}");
}
