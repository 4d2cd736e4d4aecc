//! Runs one pytest file of `tests/e2b/` with E2B's SDK (the venv `scripts/e2b-venv` makes)
//! against a daemon whose E2B listener is on. A missing venv fails the test and names the
//! script (never a silent skip); a skipped flow fails it too.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::Setup;

pub fn venv() -> PathBuf {
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

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A free loopback port for the listener.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Adds config lines (e.g. `e2b_listen: "127.0.0.1:PORT"`) to the daemon's config file.
pub fn add_config(s: &Setup, lines: &str) {
    let mut config = std::fs::read_to_string(&s.config).unwrap();
    config.push_str(lines);
    if !config.ends_with('\n') {
        config.push('\n');
    }
    std::fs::write(&s.config, config).unwrap();
}

/// Starts `s` with the listener on a free port and answers its plain-HTTP URL.
pub async fn start_with_listener(s: &mut Setup) -> String {
    let port = free_port();
    add_config(s, &format!("e2b_listen: \"127.0.0.1:{port}\""));
    s.start().await;
    format!("http://127.0.0.1:{port}")
}

/// The environment of the plain-HTTP setup: both URLs at the listener, a bhatti key as E2B's.
pub fn plain_env(s: &Setup, url: &str) -> Vec<(String, String)> {
    vec![
        ("E2B_API_URL".into(), url.into()),
        ("E2B_SANDBOX_URL".into(), url.into()),
        ("E2B_API_KEY".into(), s.key()),
    ]
}

/// Runs `cmd` (a client of the listener) with `env` (E2B_* variables not named there are
/// removed) for at most `limit`, asserts it succeeded, prints its stdout for the log and
/// answers it.
pub async fn run_client(
    s: &Setup,
    what: &str,
    mut cmd: tokio::process::Command,
    env: &[(String, String)],
    limit: Duration,
) -> String {
    for k in ["E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DOMAIN", "E2B_DEBUG"] {
        cmd.env_remove(k);
    }
    cmd.kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {limit:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}\ndaemon:\n{}", s.logs());
    stdout
}

/// Runs `tests/e2b/<file>` under pytest with `env` and asserts every flow passed.
pub async fn run_pytest(s: &Setup, file: &str, env: &[(String, String)], limit: Duration) {
    let mut cmd = tokio::process::Command::new(venv().join("bin/python"));
    cmd.args(["-m", "pytest", "-v", "-x", "-p", "no:cacheprovider"])
        .arg(format!("tests/e2b/{file}"))
        .current_dir(repo_root())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let stdout = run_client(s, &format!("pytest {file}"), cmd, env, limit).await;
    assert!(stdout.contains(" passed"), "{stdout}");
    assert!(!stdout.contains("skipped"), "{stdout}");
}
