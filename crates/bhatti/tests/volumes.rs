//! `bhatti volume` (v1's nine subcommands) and `create --volume` as a user runs them: the
//! built binary against a real `bhatti serve` with a real VM, backups to a real S3 server
//! (`s3s-fs` on loopback, started by the test).
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
    fn failed(self) -> Self {
        assert_ne!(self.code, 0, "{self:?}");
        self
    }
}

fn bhatti(s: &Setup, args: &[&str]) -> Run {
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

fn json<T: serde::de::DeserializeOwned>(r: Run) -> T {
    serde_json::from_str(&r.ok().stdout).unwrap()
}

/// An S3 server over a temporary directory on 127.0.0.1 (the daemon's backup target).
async fn s3_server(root: &std::path::Path) -> String {
    std::fs::create_dir(root.join("backups")).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single("AKIACLI", "cli-secret-key"));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(sock);
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    endpoint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_and_backups_through_the_cli() {
    let mut s = Setup::new();
    let s3_root = tempfile::tempdir().unwrap();
    let endpoint = s3_server(s3_root.path()).await;
    let mut config = std::fs::read_to_string(&s.config).unwrap();
    config.push_str(&format!(
        "backup:\n  s3_endpoint: {endpoint}\n  s3_bucket: backups\n  s3_access_key: AKIACLI\n  \
         s3_secret_key: cli-secret-key\n"
    ));
    std::fs::write(&s.config, config).unwrap();
    s.start().await;

    // create / list (table and JSON) / bad names.
    let r = bhatti(&s, &["volume", "create", "--name", "data", "--size", "64"]).ok();
    let line: Vec<&str> = r.stdout.split_whitespace().collect();
    assert!(line[0].starts_with("vol_") && line[1..] == ["data", "64MB", "ready"], "{r:?}");
    let r = bhatti(&s, &["volume", "list"]).ok();
    let header: Vec<&str> = r.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "STATUS", "ATTACHED", "AGE", "ID"]);
    assert!(r.stdout.lines().nth(1).unwrap().starts_with("data"), "{r:?}");
    let list: Vec<api::PersistentVolume> = json(bhatti(&s, &["volume", "list", "--json"]));
    assert_eq!(list.len(), 1);
    let r = bhatti(&s, &["volume", "create", "--name", "../x", "--size", "8"]).failed();
    assert!(r.stderr.contains("invalid volume name"), "{r:?}");
    let r = bhatti(&s, &["volume", "create", "--name", "data", "--size", "8"]).failed();
    assert!(r.stderr.contains("already exists"), "{r:?}");

    // create --volume: attached read-write; the data stays after the sandbox.
    let r = bhatti(&s, &["create", "--name", "nope", "--memory", "128", "--volume", "ghost:/g"]);
    assert!(r.failed().stderr.contains("not found"));
    let args = ["create", "--name", "sb", "--memory", "128", "--volume", "data:/data"];
    bhatti(&s, &args).ok();
    bhatti(&s, &["exec", "sb", "--", "sh", "-c", "echo kept > /data/note && sync"]).ok();
    let listed: Vec<api::PersistentVolume> = json(bhatti(&s, &["volume", "list", "--json"]));
    let attached = listed.into_iter().next().unwrap();
    assert_eq!(attached.attachments.len(), 1);
    assert_eq!(attached.attachments[0].mount, "/data");
    let r = bhatti(&s, &["volume", "delete", "data", "--yes"]).failed();
    assert!(r.stderr.contains("1 active attachment(s)"), "{r:?}");
    bhatti(&s, &["destroy", "sb", "--yes"]).ok();
    let file = s.data.path().join("state/volumes").join(&attached.user_id).join("data.ext4");
    let cat = Command::new("debugfs").args(["-R", "cat /note"]).arg(&file).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "kept\n");

    // resize (grow only) and clone.
    let r = bhatti(&s, &["volume", "resize", "data", "--size", "128"]).ok();
    assert!(r.stdout.contains("volume/data resized to 128MB"), "{r:?}");
    let r = bhatti(&s, &["volume", "resize", "data", "--size", "64"]).failed();
    assert!(r.stderr.contains("must be larger"), "{r:?}");
    let r = bhatti(&s, &["volume", "clone", "data", "--name", "copy"]).ok();
    assert!(r.stdout.contains(" copy 128MB ready"), "{r:?}");
    let copy = file.with_file_name("copy.ext4");
    let cat = Command::new("debugfs").args(["-R", "cat /note"]).arg(&copy).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "kept\n", "the clone carries the data");

    // backup / backup-list / restore / backup-delete.
    let b: api::VolumeBackup = json(bhatti(&s, &["volume", "backup", "data", "--json"]));
    assert!(s3_root.path().join("backups").join(&b.s3_key).is_file());
    let r = bhatti(&s, &["volume", "backup-list", "data"]).ok();
    assert!(r.stdout.contains(&b.id), "{r:?}");
    let r = bhatti(&s, &["volume", "restore", "data", "--backup-id", &b.id]).ok();
    assert!(r.stdout.contains(&format!("volume/data restored from backup {}", b.id)), "{r:?}");
    let r = bhatti(&s, &["volume", "backup-delete", "data", &b.id]).ok();
    assert!(r.stderr.contains("Use --yes"), "non-interactive without --yes does nothing: {r:?}");
    let left: Vec<api::VolumeBackup> =
        json(bhatti(&s, &["volume", "backup-list", "data", "--json"]));
    assert_eq!(left.len(), 1);
    let r = bhatti(&s, &["volume", "backup-delete", "data", &b.id, "--yes"]).ok();
    assert!(r.stdout.contains("deleted"), "{r:?}");
    let left: Vec<api::VolumeBackup> =
        json(bhatti(&s, &["volume", "backup-list", "data", "--json"]));
    assert!(left.is_empty());

    // delete.
    bhatti(&s, &["volume", "delete", "copy", "--yes"]).ok();
    let r = bhatti(&s, &["volume", "delete", "data", "--yes", "--json"]).ok();
    assert!(r.stdout.contains("\"deleted\""), "{r:?}");
    let list: Vec<api::PersistentVolume> = json(bhatti(&s, &["volume", "list", "--json"]));
    assert!(list.is_empty());
    assert!(!file.exists());
}
