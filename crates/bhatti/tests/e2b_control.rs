//! E2B's control plane with the Python SDK (PyPI `e2b`, unmodified) against a real
//! `bhatti serve` with `e2b_listen` on a loopback port and real VMs: the pytest flows in
//! `tests/e2b/test_control.py` (list paging and state filter, metrics, pause / connect, the
//! timeout's auto-pause and kill, set_timeout, kill).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Setup;
use common::e2b::{plain_env, run_pytest, start_with_listener};

#[tokio::test(flavor = "multi_thread")]
async fn e2b_control_plane_flows_pass_against_the_listener() {
    let mut s = Setup::new();
    let url = start_with_listener(&mut s).await;
    run_pytest(&s, "test_control.py", &plain_env(&s, &url), Duration::from_secs(900)).await;
}
