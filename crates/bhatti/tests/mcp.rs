//! `bhatti mcp` driven by the official `mcp` Python SDK (tests/mcp/client.py, in the venv that
//! scripts/mcp-venv makes) against a real `bhatti serve` with a real VM: tools listed, a
//! sandbox created, commands run (output, exit codes, a timeout that kills), files written and
//! read as text and bytes, a port published, the sandbox destroyed; a wrong key gets tool errors.
//! Neither the tool results nor the server's log ever hold the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::Setup;

/// The venv with the `mcp` package (scripts/mcp-venv).
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("BHATTI_MCP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::artifacts_dir().join("mcp-venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "the MCP client's Python venv is missing at {}: run scripts/mcp-venv (scripts/setup runs \
         it) to make it",
        venv.display()
    );
    python
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_mcp_sdk_drives_sandboxes_through_bhatti_mcp() {
    let python = venv_python();
    let mut s = Setup::new();
    s.start().await;
    let key = s.key();
    let home = s.data.path().join("mcp-home");
    std::fs::create_dir_all(&home).unwrap();
    let errlog = s.data.path().join("mcp.stderr");

    let started = Instant::now();
    let mut cmd = Command::new(&python);
    for (k, _) in std::env::vars() {
        if k.starts_with("BHATTI_") || k == "SUDO_USER" {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg(repo_root().join("tests/mcp/client.py"))
        .env("MCP_TEST_BHATTI", env!("CARGO_BIN_EXE_bhatti"))
        .env("MCP_TEST_URL", s.url(""))
        .env("MCP_TEST_KEY", &key)
        .env("MCP_TEST_HOME", &home)
        .env("MCP_TEST_ERRLOG", &errlog)
        .env("MCP_TEST_SANDBOX", "mcp-sb")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(&errlog).unwrap_or_default();
    assert!(
        out.status.success() && stdout.contains("mcp client: all checks passed"),
        "the client failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- bhatti mcp's \
         stderr\n{log}\n--- daemon\n{}",
        out.status,
        s.logs()
    );
    eprintln!("the MCP client's flows took {elapsed:?}; its results, each cut to 200 characters:");
    for line in stdout.lines() {
        eprintln!("  {}", line.chars().take(200).collect::<String>());
    }

    // Every result was printed; none holds the key, nor does the server's log.
    assert!(stdout.lines().filter(|l| l.starts_with("{\"tool\"")).count() > 20, "{stdout}");
    assert!(!stdout.contains(&key), "a tool result holds the key:\n{stdout}");
    assert!(!log.contains(&key), "bhatti mcp's log holds the key:\n{log}");
    // The log is there (debug) and says what ran, without file contents or command output.
    assert!(log.contains("tool call done") && log.contains("tool=\"exec\""), "{log}");
    assert!(!log.contains("hello from MCP"), "a file's content reached the log:\n{log}");
    assert!(!log.contains("namaste"), "an env value or output reached the log:\n{log}");

    // The daemon agrees: the sandbox is gone, and the wrong key made nothing.
    let list: serde_json::Value =
        s.req(reqwest::Method::GET, "/sandboxes").send().await.unwrap().json().await.unwrap();
    assert_eq!(list, serde_json::json!([]), "{list}");
    s.terminate();
}
