//! `bhatti image` as a user runs it: the built binary against a real `bhatti serve`, an image
//! pushed to a real `docker-registry` on loopback (by skopeo) and pulled, a `docker save`
//! tarball imported, listed, inspected, saved from a sandbox, deleted (v1's
//! image_cmd_test.go, mapped in the README).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Setup;

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn bhatti(s: &Setup, args: &[&str]) -> Run {
    let cli_config = s.data.path().join("cli.yaml");
    if !cli_config.exists() {
        std::fs::write(&cli_config, "").unwrap();
    }
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

fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "{r:?}");
    r
}

fn sh(script: &str) {
    let out = Command::new("bash").arg("-ec").arg(script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A `docker save` tarball of a busybox image (one layer, config with its diff ID), made with
/// the host's tar and sha256sum; and lohar from the test image.
fn make_inputs(dir: &Path) {
    let image = common::artifacts_dir().join("images/test/current/rootfs.ext4");
    sh(&format!(
        r#"cd {dir}
debugfs -R 'dump /usr/local/bin/lohar lohar' {image} 2>/dev/null
mkdir -p root/bin root/etc
cp /bin/busybox root/bin/busybox
for a in sh true cat id echo; do ln -s busybox root/bin/$a; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > root/etc/passwd
printf 'from-the-tarball' > root/hello.txt
tar --numeric-owner --owner=0 --group=0 -cf layer.tar -C root .
diff=$(sha256sum layer.tar | cut -d' ' -f1)
mkdir -p img/$diff
mv layer.tar img/$diff/layer.tar
printf '{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:%s"]}}}}' $diff > img/config.json
printf '[{{"Config":"config.json","RepoTags":["local/bb:1"],"Layers":["%s/layer.tar"]}}]' $diff > img/manifest.json
tar -cf image.tar -C img .
"#,
        dir = dir.display(),
        image = image.display()
    ));
}

struct Registry(std::process::Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_import_list_inspect_save_and_delete_through_the_cli() {
    let work = tempfile::tempdir().unwrap();
    make_inputs(work.path());
    // The registry, fed by skopeo.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = work.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}/storage\nhttp:\n  addr: 127.0.0.1:{port}\n",
            work.path().display()
        ),
    )
    .unwrap();
    let registry = Registry(
        Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/setup installs it)"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("http://127.0.0.1:{port}/v2/"))
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(std::time::Instant::now() < deadline, "the registry never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sh(&format!(
        "timeout 120 skopeo copy --quiet --dest-tls-verify=false docker-archive:{}/image.tar docker://127.0.0.1:{port}/cli/bb:1",
        work.path().display()
    ));

    let mut s = Setup::new();
    let mut yaml = std::fs::read_to_string(&s.config).unwrap();
    yaml.push_str(&format!("lohar: {}/lohar\n", work.path().display()));
    std::fs::write(&s.config, yaml).unwrap();
    s.start().await;

    // Pull: follows the task to the end; the name comes from the reference.
    let reference = format!("http://127.0.0.1:{port}/cli/bb:1");
    let r = ok(bhatti(&s, &["image", "pull", &reference]));
    assert!(r.stdout.contains("image/bb-1 pulled"), "{r:?}");
    assert!(r.stderr.contains("creating ext4 image"), "progress on stderr: {r:?}");
    let r = ok(bhatti(&s, &["image", "pull", &reference, "--json"]));
    let again: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(again["status"], "exists");

    // Import with --tar and --name; a missing --name is a usage error.
    let tar = work.path().join("image.tar");
    let tar = tar.to_str().unwrap();
    let r = ok(bhatti(&s, &["image", "import", "--tar", tar, "--name", "imported"]));
    assert!(r.stdout.contains("image/imported imported"), "{r:?}");
    let r = bhatti(&s, &["image", "import", "--tar", tar]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("--name"), "{r:?}");
    let r = bhatti(&s, &["image", "import", "--tar", tar, "--name", "imported"]);
    assert_ne!(r.code, 0, "a duplicate: {r:?}");

    // List and inspect, human and JSON.
    let r = ok(bhatti(&s, &["image", "list"]));
    for want in ["NAME", "SCOPE", "bb-1", "imported", "test", "admin", "user"] {
        assert!(r.stdout.contains(want), "{want}: {r:?}");
    }
    let r = ok(bhatti(&s, &["image", "list", "--json"]));
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let pulled = list.iter().find(|i| i["name"] == "bb-1").unwrap();
    assert_eq!(pulled["source"], format!("oci:{reference}"));
    let r = ok(bhatti(&s, &["image", "inspect", "imported", "--json"]));
    let one: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(one["source"], "import:imported");
    let r = ok(bhatti(&s, &["image", "inspect", "bb-1"]));
    assert!(r.stdout.contains("Digest:   sha256:"), "{r:?}");

    // Save a sandbox's disk.
    ok(bhatti(&s, &["create", "--name", "src", "--memory", "128", "--image", "imported"]));
    let r = ok(bhatti(&s, &["exec", "src", "--", "cat", "/hello.txt"]));
    assert_eq!(r.stdout, "from-the-tarball");
    let r = ok(bhatti(&s, &["image", "save", "src", "--name", "saved"]));
    assert!(r.stdout.contains("image/saved saved from sandbox/src"), "{r:?}");
    // In use: refused; a global image: refused; a missing one: fails (v1's
    // TestCLIImageDeleteNonexistent).
    let r = bhatti(&s, &["image", "delete", "imported"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("in use"), "{r:?}");
    let r = bhatti(&s, &["image", "delete", "test"]);
    assert_ne!(r.code, 0, "{r:?}");
    let r = bhatti(&s, &["image", "delete", "does-not-exist"]);
    assert_ne!(r.code, 0, "{r:?}");
    ok(bhatti(&s, &["destroy", "-y", "src"]));
    for name in ["imported", "saved", "bb-1"] {
        let r = ok(bhatti(&s, &["image", "delete", name]));
        assert!(r.stdout.contains(&format!("image/{name} deleted")), "{r:?}");
    }
    let r = ok(bhatti(&s, &["image", "list", "--json"]));
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    assert!(list.iter().all(|i| i["user_id"] == ""), "only global images left: {list:?}");
    s.terminate();
    drop(registry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_running_when_the_daemon_dies_is_failed_after_the_restart() {
    // A "registry" that accepts and never answers: the pull stays at `resolving image`.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let mut s = Setup::new();
    s.start().await;
    let r = s
        .req(reqwest::Method::POST, "/images/pull")
        .json(&serde_json::json!({"ref": format!("http://127.0.0.1:{port}/x:1"), "name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let started: serde_json::Value = r.json().await.unwrap();
    let id = started["task_id"].as_str().unwrap().to_owned();
    let task = |s: &Setup| {
        let req = s.req(reqwest::Method::GET, &format!("/tasks/{id}"));
        async move { req.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while task(&s).await["progress"] != "resolving image" {
        assert!(std::time::Instant::now() < deadline, "the pull never started resolving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.kill();
    s.start().await;
    let t = task(&s).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error"], "interrupted by daemon restart", "{t}");
    assert!(t["completed_at"].is_string(), "{t}");
    s.terminate();
    held.abort();
}
