//! E2B's Python SDK (PyPI `e2b`, unmodified) watching directories through a real `bhatti
//! serve` with `e2b_listen` and a real VM: the pytest flows in `tests/e2b/test_watch.py`
//! (sync `files.watch_dir` + `get_new_events`, recursive, stop, the async SDK's stream).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Setup;
use common::e2b::{plain_env, run_pytest, start_with_listener};

#[tokio::test(flavor = "multi_thread")]
async fn e2b_python_sdk_watch_flows_pass_against_the_listener() {
    let mut s = Setup::new();
    let url = start_with_listener(&mut s).await;
    run_pytest(&s, "test_watch.py", &plain_env(&s, &url), Duration::from_secs(600)).await;
}
