//! E2B's Python SDK (PyPI `e2b`, unmodified, in the venv `scripts/e2b-venv` makes) against a
//! real `bhatti serve` with `e2b_listen` on a loopback port and real VMs: the pytest flows in
//! `tests/e2b/`. A missing venv fails the test and names the script (never a silent skip).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Setup;

fn venv() -> PathBuf {
    let dir = std::env::var_os("BHATTI_E2B_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/bhatti/e2b-venv".into());
    let python = dir.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import e2b, pytest"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ready,
        "no E2B SDK venv at {}: run scripts/e2b-venv (scripts/setup does)",
        dir.display()
    );
    dir
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn e2b_python_sdk_flows_pass_against_the_listener() {
    let venv = venv();
    let mut s = Setup::new();
    let e2b_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = std::fs::read_to_string(&s.config).unwrap();
    config.push_str(&format!("e2b_listen: \"127.0.0.1:{e2b_port}\"\n"));
    std::fs::write(&s.config, config).unwrap();
    s.start().await;
    let url = format!("http://127.0.0.1:{e2b_port}");
    let out = tokio::process::Command::new(venv.join("bin/python"))
        .args(["-m", "pytest", "-v", "-x", "-p", "no:cacheprovider", "tests/e2b"])
        .current_dir(repo_root())
        .env("E2B_API_URL", &url)
        .env("E2B_SANDBOX_URL", &url)
        .env("E2B_API_KEY", s.key())
        .env_remove("E2B_DOMAIN")
        .env_remove("E2B_DEBUG")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(900), out)
        .await
        .expect("pytest did not finish in 15 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The flows by name, for the log.
    println!("{stdout}");
    assert!(out.status.success(), "pytest failed:\n{stdout}\n{stderr}\ndaemon:\n{}", s.logs());
    assert!(stdout.contains(" passed"), "{stdout}");
    assert!(!stdout.contains("skipped"), "{stdout}");
}
