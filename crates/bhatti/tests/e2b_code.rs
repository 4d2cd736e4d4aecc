//! E2B's code interpreter SDK (PyPI `e2b-code-interpreter`, unmodified) against a real
//! `bhatti serve` with `e2b_listen` on a loopback port and a real VM of the `code-interpreter`
//! image (built by `images/rootfs/build-code-interpreter` into the artifacts directory): the
//! pytest flows in `tests/e2b/test_code_interpreter.py`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::e2b::{plain_env, run_pytest, start_with_listener};
use common::{Setup, artifacts_dir};

#[tokio::test(flavor = "multi_thread")]
async fn e2b_code_interpreter_flows_pass_against_the_listener() {
    let image = artifacts_dir().join("images/code-interpreter/current/rootfs.ext4");
    assert!(
        image.is_file(),
        "no code-interpreter image at {}: run images/rootfs/build-code-interpreter \
         (scripts/test does)",
        image.display()
    );
    let mut s = Setup::new();
    let url = start_with_listener(&mut s).await;
    run_pytest(&s, "test_code_interpreter.py", &plain_env(&s, &url), Duration::from_secs(900))
        .await;
}
