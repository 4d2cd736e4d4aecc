//! `bhatti admin status|events|metrics` as a user runs them: the built binary against a real
//! `bhatti serve` process with a real VM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Setup;

fn command(s: &Setup, key: &str, args: &[&str]) -> Command {
    let cli_config = s.data.path().join("cli.yaml");
    std::fs::write(&cli_config, "").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bhatti"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BHATTI_") || k == "SUDO_USER" {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("BHATTI_CONFIG", &cli_config)
        .env("BHATTI_URL", s.url(""))
        .env("BHATTI_TOKEN", key)
        .env("HOME", s.data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `bhatti <args>` with `key`: exit code, stdout, stderr.
fn run(s: &Setup, key: &str, args: &[&str]) -> (i32, String, String) {
    let out = command(s, key, args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn ok(s: &Setup, key: &str, args: &[&str]) -> String {
    let (code, out, err) = run(s, key, args);
    assert_eq!(code, 0, "{args:?}: {out}\n{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_status_events_and_metrics_through_the_cli() {
    let mut s = Setup::new();
    s.start().await;
    let admin = s.key();
    let dir = s.data.path().join("state");
    let dir = dir.to_str().unwrap();

    ok(&s, &admin, &["create", "--name", "evt"]);
    ok(&s, &admin, &["exec", "evt", "--", "true"]);

    // A follower sees the destroy as it happens.
    let mut follower =
        command(&s, &admin, &["admin", "events", "--follow", "--json", "--type", "sandbox"])
            .spawn()
            .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // The follower subscribes before the destroy: wait until the daemon has it (its request
    // is counted once answered with its head).
    let deadline = Instant::now() + Duration::from_secs(20);
    let destroyed = loop {
        // Destroy once; until the follower is connected, create and destroy again.
        ok(&s, &admin, &["destroy", "evt", "-y"]);
        let found = rx
            .recv_timeout(Duration::from_secs(3))
            .into_iter()
            .chain(std::iter::from_fn(|| rx.recv_timeout(Duration::from_millis(500)).ok()))
            .find(|line| line.contains("sandbox.destroyed"));
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "the follower printed nothing");
        ok(&s, &admin, &["create", "--name", "evt"]);
    };
    let event: serde_json::Value = serde_json::from_str(&destroyed).unwrap();
    assert_eq!(event["type"], "sandbox.destroyed", "{destroyed}");
    assert_eq!(event["meta"]["name"], "evt");
    follower.kill().unwrap();
    follower.wait().unwrap();

    // Events, newest first, filtered.
    let out = ok(&s, &admin, &["admin", "events", "--type", "sandbox", "--json"]);
    let events: Vec<api::Event> = serde_json::from_str(&out).unwrap();
    assert_eq!(events.first().unwrap().kind, "sandbox.destroyed");
    assert_eq!(events.last().unwrap().kind, "sandbox.created");
    let out = ok(&s, &admin, &["admin", "events", "--type", "daemon", "--since", "1h", "--json"]);
    let events: Vec<api::Event> = serde_json::from_str(&out).unwrap();
    assert_eq!(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["daemon.started"]);
    let out = ok(&s, &admin, &["admin", "events", "--limit", "1", "--user", "admin"]);
    assert!(out.starts_with("TIME") && out.lines().count() == 2, "{out}");
    let (code, _, err) = run(&s, &admin, &["admin", "events", "--since", "yesterday"]);
    assert!(code != 0 && err.contains("invalid since"), "{err}");

    // Status and metrics.
    let out = ok(&s, &admin, &["admin", "status", "--json"]);
    let status: api::AdminStatus = serde_json::from_str(&out).unwrap();
    assert_eq!(status.version, api::VERSION);
    assert!(status.users.iter().any(|u| u.name == "admin"));
    assert!(status.host.mem_total_mb > 0);
    let out = ok(&s, &admin, &["admin", "status"]);
    assert!(out.contains("sandboxes: ") && out.contains("events dropped: 0"), "{out}");
    let out = ok(&s, &admin, &["admin", "metrics", "--json"]);
    let _: Vec<api::MetricsSnapshot> = serde_json::from_str(&out).unwrap();
    assert!(ok(&s, &admin, &["admin", "metrics"]).starts_with("TIME"));

    // Someone else: the admin routes do not exist for them.
    let out = ok(&s, &admin, &["--data-dir", dir, "user", "create", "--name", "bob", "--json"]);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bob = created["api_key"].as_str().unwrap().to_owned();
    for args in [&["admin", "status"][..], &["admin", "events"], &["admin", "metrics"]] {
        let (code, _, err) = run(&s, &bob, args);
        assert!(code != 0 && err.contains("not found"), "{args:?}: {err}");
    }

    // A clean stop writes what the recorder held, its own event last.
    assert!(s.terminate().success());
    let store = store::Store::open(s.data.path().join("state/state.db")).unwrap();
    let last = store
        .query_events(&store::EventQuery { kind: Some("daemon".into()), ..Default::default() })
        .unwrap();
    assert_eq!(last[0].event.kind, "daemon.shutdown", "{last:?}");
}
