//! `bhatti fork` and `bhatti create --from` as a user runs them: the built binary against a
//! real `bhatti serve` with real VMs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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

/// `bhatti <args>` with the daemon's URL and key, a private HOME, no terminal.
fn bhatti(s: &Setup, args: &[&str]) -> Run {
    let home = s.data.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let cli_config = s.data.path().join("cli.yaml");
    std::fs::write(&cli_config, "").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bhatti"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BHATTI_") || k == "SUDO_USER" || k == "XDG_CACHE_HOME" {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .env("BHATTI_CONFIG", &cli_config)
        .env("BHATTI_URL", s.url(""))
        .env("BHATTI_TOKEN", s.key())
        .env("HOME", &home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_and_create_from_through_the_cli() {
    let mut s = Setup::new();
    s.start().await;
    let r = bhatti(&s, &["create", "--name", "src", "--memory", "128"]).ok();
    assert!(r.stdout.contains("sandbox/src created"), "{r:?}");
    bhatti(&s, &["exec", "src", "--", "sh", "-c", "echo kept > /home/lohar/kept.txt"]).ok();

    // `fork -n 2 --json`: an array of two sandbox objects, named after the source.
    let r = bhatti(&s, &["fork", "src", "-n", "2", "--json"]).ok();
    let clones: Vec<api::Sandbox> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(clones.len(), 2, "{r:?}");
    assert_ne!(clones[0].name, clones[1].name);
    for clone in &clones {
        assert!(clone.name.starts_with("src-") && clone.status == "running", "{clone:?}");
        let cat = bhatti(&s, &["exec", &clone.name, "--", "cat", "/home/lohar/kept.txt"]).ok();
        assert_eq!(cat.stdout, "kept\n");
    }
    // Named, without --json: one line per clone.
    let r = bhatti(&s, &["fork", "src", "--name", "f1"]).ok();
    assert!(r.stdout.contains("sandbox/f1 forked from src"), "{r:?}");

    // `create --from`: a fork of one, printed as a create is.
    let r = bhatti(&s, &["create", "--from", "src", "--name", "one", "--json"]).ok();
    let one: api::Sandbox = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!((one.name.as_str(), one.memory_mb), ("one", 128));
    let r = bhatti(&s, &["exec", "one", "--", "hostname"]).ok();
    assert_eq!(r.stdout.trim(), "one");
    let r = bhatti(&s, &["create", "--from", "src", "--name", "two"]).ok();
    assert!(r.stdout.contains("sandbox/two created from src"), "{r:?}");

    // Refusals: flags a clone cannot take (clap's usage error), an unknown source, bad counts.
    let r = bhatti(&s, &["create", "--from", "src", "--image", "test"]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = bhatti(&s, &["fork", "nope", "-n", "1"]);
    assert_eq!(r.code, 3, "an unknown sandbox is not found: {r:?}");
    let r = bhatti(&s, &["fork", "src", "-n", "0"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("count must be 1 to 16"), "{r:?}");
    assert!(s.terminate().success());
}
