//! E2B's process semantics (issue 25) with E2B's Python SDK (unmodified) against a real
//! `bhatti serve` with `e2b_listen` on a loopback port and a real VM: the pytest flows in
//! `tests/e2b/test_process.py` (stdout and stderr apart, callbacks, stdin, a PTY, the guest PID
//! and tag in the list, signals, a background process across the SDK's timeout and across a
//! pause and resume).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Setup;
use common::e2b::{plain_env, run_pytest, start_with_listener};

#[tokio::test(flavor = "multi_thread")]
async fn e2b_process_flows_pass_against_the_listener() {
    let mut s = Setup::new();
    let url = start_with_listener(&mut s).await;
    run_pytest(&s, "test_process.py", &plain_env(&s, &url), Duration::from_secs(900)).await;
}
