//! E2B's JS SDK (npm `e2b`, unmodified, installed by `scripts/e2b-node` from
//! `tests/e2b/node/package-lock.json`) under Node against a real `bhatti serve` with
//! `e2b_listen` on a loopback port and a real VM: the flow `tests/e2b/node/flow.mjs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Setup;
use common::e2b::{plain_env, repo_root, run_client, start_with_listener};

/// The SDK's install (a missing one fails the test and names the script, never a skip).
fn node_sdk() -> PathBuf {
    let dir = std::env::var_os("BHATTI_E2B_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/bhatti/e2b-node".into());
    let ready = Command::new("node")
        .args(["--input-type=module", "-e", "await import('e2b')"])
        .current_dir(&dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ready, "no E2B JS SDK at {}: run scripts/e2b-node (scripts/setup does)", dir.display());
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn e2b_js_sdk_flow_passes_against_the_listener() {
    let sdk = node_sdk();
    let mut s = Setup::new();
    let url = start_with_listener(&mut s).await;
    // Node resolves `e2b` from the script's own directory: the flow runs from a copy beside
    // a link to the installed node_modules.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo_root().join("tests/e2b/node/flow.mjs"), dir.path().join("flow.mjs"))
        .unwrap();
    std::os::unix::fs::symlink(sdk.join("node_modules"), dir.path().join("node_modules")).unwrap();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("flow.mjs").current_dir(dir.path());
    let env = plain_env(&s, &url);
    let stdout = run_client(&s, "the node flow", cmd, &env, Duration::from_secs(600)).await;
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
