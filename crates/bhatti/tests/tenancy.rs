//! Issue 23 through the CLI against a real `bhatti serve` process and real VMs: `secret
//! set|list|delete`, `create --secret`, `user create|update` limits, and a planted secret found
//! nowhere at rest nor in the daemon's log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::Setup;

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
}

/// `bhatti <args>` with the daemon's URL and admin key, stdin from `input` (a pipe) or nothing.
fn bhatti(s: &Setup, input: Option<&[u8]>, args: &[&str]) -> Run {
    let cli_config = s.data.path().join("cli.yaml");
    std::fs::write(&cli_config, "").unwrap();
    let home = s.data.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bhatti"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BHATTI_") || k == "SUDO_USER" {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("BHATTI_CONFIG", &cli_config)
        .env("BHATTI_URL", s.url(""))
        .env("BHATTI_TOKEN", s.key())
        .env("HOME", &home)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = input {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Files under `dir` holding `needle`, the sandboxes' RAM and disks aside (they hold what the
/// guest holds).
fn files_holding(dir: &Path, needle: &[u8], out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            files_holding(&path, needle, out);
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "ram" || name == "root.qcow2" || !meta.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            out.push(path.display().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_limits_through_the_cli_and_nothing_at_rest_or_in_the_log() {
    let mut s = Setup::new();
    // The most talkative log: still no value in it.
    let mut config = std::fs::read_to_string(&s.config).unwrap();
    config.push_str("log_level: debug\n");
    std::fs::write(&s.config, config).unwrap();
    s.start().await;
    let planted = format!("planted-cli-{}-{}", std::process::id(), s.port);

    // set from a pipe (no argument: nothing in `ps` or the shell's history), then the others.
    let r = bhatti(&s, Some(format!("{planted}\n").as_bytes()), &["secret", "set", "TOKEN"]).ok();
    assert_eq!(r.stdout.trim(), "secret/TOKEN set");
    let r = bhatti(&s, None, &["secret", "set", "SECOND", "v2", "--json"]).ok();
    let rec: api::SecretRecord = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rec.name, "SECOND");
    assert!(!r.stdout.contains("v2\""), "{r:?}");
    // Bad input is the daemon's 400, exit 1.
    let r = bhatti(&s, None, &["secret", "set", "a/b", "x"]);
    assert!(r.code == 1 && r.stderr.contains("invalid secret name"), "{r:?}");
    let r = bhatti(&s, None, &["secret", "set", "EMPTY", "x", "--value-stdin"]);
    assert!(r.code != 0 && r.stderr.contains("not both"), "{r:?}");
    let r = bhatti(&s, Some(b"\n"), &["secret", "set", "EMPTY"]);
    assert!(r.code != 0 && r.stderr.contains("empty"), "{r:?}");
    let r = bhatti(&s, None, &["secret", "list", "--json"]).ok();
    let list: Vec<api::SecretRecord> = serde_json::from_str(&r.stdout).unwrap();
    let names: Vec<&str> = list.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["SECOND", "TOKEN"]);
    let r = bhatti(&s, None, &["secret", "ls"]).ok();
    assert!(r.stdout.starts_with("NAME") && r.stdout.contains("TOKEN"), "{r:?}");
    assert!(!r.stdout.contains(&planted));

    // create --secret: the guest's commands see it; the create's answer does not hold it.
    let args = ["create", "--name", "sec", "--memory", "128", "--secret", "TOKEN", "--json"];
    let r = bhatti(&s, None, &args).ok();
    assert!(!r.stdout.contains(&planted), "{r:?}");
    let created: api::Sandbox = serde_json::from_str(&r.stdout).unwrap();
    let r = bhatti(&s, None, &["exec", "sec", "--", "sh", "-c", "echo \"$TOKEN\""]).ok();
    assert_eq!(r.stdout.trim(), planted);
    let r = bhatti(&s, None, &["create", "--name", "bad", "--secret", "NOPE"]);
    assert!(r.code != 0 && r.stderr.contains("secret \"NOPE\" not found"), "{r:?}");

    // delete: confirmed, then gone; an unknown one is "not found".
    let r = bhatti(&s, None, &["secret", "delete", "SECOND"]);
    assert!(r.code == 0 && r.stderr.contains("--yes"), "{r:?}");
    bhatti(&s, None, &["secret", "delete", "SECOND", "-y", "--json"]).ok();
    let r = bhatti(&s, None, &["secret", "delete", "SECOND", "-y"]);
    assert!(r.code != 0 && r.stderr.contains("not found"), "{r:?}");

    // Limits: set by `user update` (only those given), refused by the daemon at once.
    let state = s.data.path().join("state");
    let dir = state.to_str().unwrap();
    let user = |args: &[&str]| bhatti(&s, None, &[&["--data-dir", dir, "user"], args].concat());
    let r = user(&["update", "admin", "--max-sandboxes", "1", "--max-execs", "3", "--json"]).ok();
    let admin: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (admin["max_sandboxes"].as_u64(), admin["max_concurrent_execs"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(admin["max_cpus_per_sandbox"], 4, "untouched limits stay");
    assert!(admin.get("api_key").is_none());
    let r = bhatti(&s, None, &["create", "--name", "two", "--memory", "128"]);
    assert!(r.code != 0 && r.stderr.contains("sandbox limit reached (1/1)"), "{r:?}");
    let r = user(&["update", "admin"]);
    assert!(r.code != 0 && r.stderr.contains("nothing to change"), "{r:?}");
    assert_ne!(user(&["update", "nobody", "--max-disk", "1"]).code, 0);
    let r = user(&[
        "create",
        "--name",
        "bob",
        "--max-disk",
        "100",
        "--max-execs",
        "2",
        "--max-snapshots",
        "1",
        "--max-images",
        "3",
        "--max-volume-storage",
        "500",
        "--json",
    ])
    .ok();
    let bob: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let got: Vec<u64> = [
        "max_disk_mb",
        "max_concurrent_execs",
        "max_snapshots",
        "max_images",
        "max_volume_storage_mb",
        "max_sandboxes",
    ]
    .iter()
    .map(|k| bob[k].as_u64().unwrap())
    .collect();
    assert_eq!(got, [100, 2, 1, 3, 500, 5]);
    let r = user(&["list"]).ok();
    assert!(r.stdout.contains("MAX_DISK_MB") && r.stdout.contains("bob"), "{r:?}");

    // Nothing at rest (database, WAL, key file, config drive, everything but the guest's RAM
    // and disk) and nothing in the daemon's log.
    let mut found = Vec::new();
    files_holding(&state, planted.as_bytes(), &mut found);
    assert!(found.is_empty(), "the planted value is in {found:?}");
    assert!(state.join("state.db").exists() && state.join("age.key").exists());
    let logs = s.logs();
    assert!(logs.contains("DEBUG") || logs.contains("debug"), "the log is at debug level");
    assert!(!logs.contains(&planted), "the planted value is in the daemon's log");
    // Control: the search finds what is stored in plain text (the sandbox's ID).
    let mut control = Vec::new();
    files_holding(&state, created.id.as_bytes(), &mut control);
    assert!(!control.is_empty(), "the search finds what is stored");
    bhatti(&s, None, &["destroy", "sec", "-y"]).ok();
}

/// v1's per-user rate limits through the CLI: with a read bucket of two and a slow refill, the
/// third `ls` is refused with the daemon's 429 `rate limit exceeded` (exit 1) and the next
/// class (create) still has its own bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_the_cli_with_the_daemons_429() {
    let mut s = Setup::new();
    let config = std::fs::read_to_string(&s.config).unwrap();
    let low = "rate_limits: {create: {burst: 1, per_minute: 1}, exec: {burst: 1000000, per_minute: 1000000}, read: {burst: 2, per_minute: 1}}";
    let config: String = config
        .lines()
        .map(|l| if l.starts_with("rate_limits:") { low } else { l })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(config.contains(low), "the harness's config has a rate_limits line to replace");
    std::fs::write(&s.config, config).unwrap();
    s.start().await;
    for _ in 0..2 {
        bhatti(&s, None, &["ls"]).ok();
    }
    let r = bhatti(&s, None, &["ls"]);
    assert!(
        r.code == 1 && r.stderr.contains("429") && r.stderr.contains("rate limit exceeded"),
        "{r:?}"
    );
    let r = bhatti(&s, None, &["ls", "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.is_empty(), "no JSON for a refused request: {r:?}");
    // Another class has a bucket of its own: a create is refused for its own reasons only
    // (a bad name: 400, not 429).
    let r = bhatti(&s, None, &["create", "--name", "bad!"]);
    assert!(r.code != 0 && !r.stderr.contains("rate limit"), "{r:?}");
}
