//! E2B's control plane with the Python SDK (PyPI `e2b`, unmodified) against a real
//! `bhatti serve` with `e2b_listen` on a loopback port and real VMs: the pytest flows in
//! `tests/e2b/test_control.py` (list paging and state filter, metrics, pause / connect, the
//! timeout's auto-pause and kill, set_timeout, kill), and a template ID that names a bhatti
//! template (made here through the REST API) booting that template.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Setup;
use common::e2b::{plain_env, run_pytest, start_with_listener};

#[tokio::test(flavor = "multi_thread")]
async fn e2b_control_plane_flows_pass_against_the_listener() {
    let mut s = Setup::new();
    let url = start_with_listener(&mut s).await;
    let template = s
        .req(reqwest::Method::POST, "/templates")
        .json(&serde_json::json!({"name": "e2b-tpl", "image": "test", "cpus": 1, "memory_mb": 384}))
        .send()
        .await
        .unwrap();
    assert_eq!(template.status(), 201, "{}", template.text().await.unwrap());
    let mut env = plain_env(&s, &url);
    env.push(("BHATTI_E2B_TEMPLATE".into(), "e2b-tpl".into()));
    env.push(("BHATTI_E2B_TEMPLATE_MEMORY_MB".into(), "384".into()));
    run_pytest(&s, "test_control.py", &env, Duration::from_secs(900)).await;
}
