//! The boot profile (`/etc/bhatti/init.sh` in the VM; `LOHAR_BOOT_PROFILE` in test mode): run
//! once after the agent listens, with the exec env and `HOME=/root`, killed after its timeout.
//! The VM path (PID 1, the real `/etc/bhatti/init.sh`) is covered by the code interpreter image,
//! whose server init.sh starts (`crates/bhatti/tests/e2b_code.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

fn write_script(dir: &tempfile::TempDir, body: &str) -> String {
    let path = dir.path().join("init.sh");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[test]
fn the_boot_profile_runs_after_the_agent_listens_with_the_exec_env_and_home_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let go = dir.path().join("go");
    // The script waits for a file that only an exec through the agent creates: it can only
    // finish if the agent serves while it runs.
    let script = write_script(
        &dir,
        &format!(
            "echo \"home=$HOME foo=$FOO uid=$(id -u) cwd=$(pwd)\" > {out}.tmp\n\
             i=0; while [ ! -e {go} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n\
             [ -e {go} ] && mv {out}.tmp {out}\n",
            out = out.display(),
            go = go.display()
        ),
    );
    let config = serde_json::json!({"env": {"FOO": "bar", "HOME": "/elsewhere"}});
    let agent = Agent::start_with(Some(config), &[("LOHAR_BOOT_PROFILE", &script)]);
    let touched = agent.exec_root(&["touch", go.to_str().unwrap()]);
    assert_eq!(touched.exit, Some(0), "{}", touched.err());
    assert!(wait_for(Duration::from_secs(10), || out.exists()), "the boot profile did not finish");
    let text = std::fs::read_to_string(&out).unwrap();
    let uid = nix::unistd::geteuid();
    assert_eq!(text.trim(), format!("home=/root foo=bar uid={uid} cwd=/"));
}

#[test]
fn a_boot_profile_still_running_after_its_timeout_is_killed_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The shell and a child in its group; both must go.
    let script = write_script(
        &dir,
        &format!(
            "sleep 60 &\necho \"$$ $!\" > {p}.tmp && mv {p}.tmp {p}\nwait\n",
            p = pids.display()
        ),
    );
    let agent = Agent::start_with(
        None,
        &[("LOHAR_BOOT_PROFILE", &script), ("LOHAR_BOOT_PROFILE_TIMEOUT_MS", "700")],
    );
    assert!(wait_for(Duration::from_secs(10), || pids.exists()), "the boot profile did not start");
    let text = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<i32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{text}");
    assert!(
        wait_for(Duration::from_secs(10), || pids.iter().all(|p| !process_alive(*p))),
        "still alive after the timeout: {pids:?}"
    );
    // The agent goes on serving.
    assert_eq!(agent.sh("true").exit, Some(0));
}

#[test]
fn a_missing_boot_profile_changes_nothing() {
    let agent = Agent::start_with(None, &[("LOHAR_BOOT_PROFILE", "/nonexistent/init.sh")]);
    assert_eq!(agent.sh("echo ok").out(), "ok\n");
}
