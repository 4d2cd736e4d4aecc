//! `bhatti fork` and `bhatti create --from` as a user runs them: the built binary against a
//! real `bhatti serve` with real VMs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Setup, bhatti};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_and_create_from_through_the_cli() {
    let mut s = Setup::new();
    s.start().await;
    let r = bhatti(&s, &["create", "--name", "src", "--memory", "128"]).ok();
    assert!(r.stdout.contains("sandbox/src created"), "{r:?}");
    bhatti(&s, &["exec", "src", "--", "sh", "-c", "echo kept > /home/lohar/kept.txt"]).ok();

    // `fork -n 2 --json`: an array of two sandbox objects, named after the source.
    let r = bhatti(&s, &["fork", "src", "-n", "2", "--json"]).ok();
    let clones: Vec<api::Sandbox> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(clones.len(), 2, "{r:?}");
    assert_ne!(clones[0].name, clones[1].name);
    for clone in &clones {
        assert!(clone.name.starts_with("src-") && clone.status == "running", "{clone:?}");
        let cat = bhatti(&s, &["exec", &clone.name, "--", "cat", "/home/lohar/kept.txt"]).ok();
        assert_eq!(cat.stdout, "kept\n");
    }
    // Named, without --json: one line per clone.
    let r = bhatti(&s, &["fork", "src", "--name", "f1"]).ok();
    assert!(r.stdout.contains("sandbox/f1 forked from src"), "{r:?}");

    // `create --from`: a fork of one, printed as a create is.
    let r = bhatti(&s, &["create", "--from", "src", "--name", "one", "--json"]).ok();
    let one: api::Sandbox = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!((one.name.as_str(), one.memory_mb), ("one", 128));
    let r = bhatti(&s, &["exec", "one", "--", "hostname"]).ok();
    assert_eq!(r.stdout.trim(), "one");
    let r = bhatti(&s, &["create", "--from", "src", "--name", "two"]).ok();
    assert!(r.stdout.contains("sandbox/two created from src"), "{r:?}");

    // Refusals: flags a clone cannot take (clap's usage error), an unknown source, bad counts.
    let r = bhatti(&s, &["create", "--from", "src", "--image", "test"]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = bhatti(&s, &["fork", "nope", "-n", "1"]);
    assert_eq!(r.code, 3, "an unknown sandbox is not found: {r:?}");
    let r = bhatti(&s, &["fork", "src", "-n", "0"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("count must be 1 to 16"), "{r:?}");
    assert!(s.terminate().success());
}
