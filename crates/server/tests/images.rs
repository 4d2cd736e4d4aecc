//! Images through the real daemon (host.md 1.20): the built-in images, bad input on every
//! route, a `docker save` tarball built here imported and booted in a real VM, and a
//! sandbox's disk saved as an image that a new sandbox boots from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Daemon, data_dir};
use reqwest::Method;

/// lohar as the test image carries it (the same musl build every image injects).
fn lohar_from_test_image(dir: &Path) -> PathBuf {
    let image = data_dir().join("images/test/current/rootfs.ext4");
    let out = dir.join("lohar");
    let status = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /usr/local/bin/lohar {}", out.display()))
        .arg(&image)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success() && out.metadata().unwrap().len() > 100_000, "lohar from {image:?}");
    out
}

/// One layer: `(path, content)` files (mode 0644, or 0755 for `bin/`), `path -> target`
/// symlinks, directories ending in `/`.
fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        if let Some(target) = path.split_once(" -> ") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, target.0, target.1).unwrap();
        } else if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty()).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(if path.starts_with("bin/") { 0o755 } else { 0o644 });
            h.set_size(content.len() as u64);
            b.append_data(&mut h, path, *content).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// A layer whose only entry's name climbs out of the tree (written byte by byte: the tar
/// crate refuses to make one).
fn hostile_layer() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    let name = b"../../etc/evil";
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(4);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"evil"[..]).unwrap();
    b.into_inner().unwrap()
}

/// A `docker save` tarball (the classic layout: `<id>/layer.tar` and `manifest.json`).
fn docker_save(layers: &[Vec<u8>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{i:064x}/layer.tar");
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(l.len() as u64);
        b.append_data(&mut h, &name, l.as_slice()).unwrap();
        names.push(name);
    }
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": "config.json", "RepoTags": ["local/test:1"], "Layers": names}
    ]))
    .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(manifest.len() as u64);
    b.append_data(&mut h, "manifest.json", manifest.as_slice()).unwrap();
    let config = br#"{"config":{"Env":["PATH=/bin"]}}"#;
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(config.len() as u64);
    b.append_data(&mut h, "config.json", &config[..]).unwrap();
    b.into_inner().unwrap()
}

/// A small busybox image in two layers: the second deletes a file of the first (whiteout) and
/// empties a directory (opaque), and adds `/hello.txt`.
fn busybox_image() -> Vec<u8> {
    let busybox =
        std::fs::read("/bin/busybox").expect("busybox-static (scripts/setup installs it)");
    let mut first: Vec<(&str, &[u8])> = vec![
        ("bin/", b""),
        ("bin/busybox", &busybox),
        ("etc/", b""),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", b"root:x:0:\n"),
        ("etc/gone", b"deleted by the next layer"),
        ("data/", b""),
        ("data/old", b"hidden by the opaque marker"),
    ];
    let links: Vec<String> = ["sh", "true", "cat", "id", "ls", "test", "echo", "sync", "whoami"]
        .iter()
        .map(|a| format!("bin/{a} -> busybox"))
        .collect();
    for l in &links {
        first.push((l.as_str(), b""));
    }
    let second: Vec<(&str, &[u8])> = vec![
        ("etc/.wh.gone", b""),
        ("data/.wh..wh..opq", b""),
        ("data/new", b"kept"),
        ("hello.txt", b"from-layer-2"),
    ];
    docker_save(&[layer(&first), layer(&second)])
}

async fn import(d: &Daemon, name: &str, body: Vec<u8>) -> reqwest::Response {
    d.req(Method::POST, &format!("/images/import?name={name}"))
        .header("content-type", "application/x-tar")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or_default().to_owned())
}

async fn exec(d: &Daemon, sandbox: &str, script: &str) -> api::ExecResult {
    let r = d
        .req(Method::POST, &format!("/sandboxes/{sandbox}/exec"))
        .json(&serde_json::json!({"cmd": ["sh", "-c", script]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn create_from(d: &Daemon, name: &str, image: &str) -> reqwest::Response {
    d.req(Method::POST, "/sandboxes")
        .json(&serde_json::json!({"name": name, "image": image, "memory_mb": 128}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn builtins_bad_input_ownership_and_an_imported_image_boots() {
    let tools = tempfile::tempdir().unwrap();
    let lohar = lohar_from_test_image(tools.path());
    let d = Daemon::start_with(|s| {
        s.lohar = lohar.clone();
        s.image_import_max_bytes = 8 * 1024 * 1024;
    })
    .await;

    // Built-in images: global, listed, resolvable, not deletable by a user.
    let list: Vec<api::Image> =
        d.req(Method::GET, "/images").send().await.unwrap().json().await.unwrap();
    let test = list.iter().find(|i| i.name == "test").expect("the test image is registered");
    assert_eq!((test.source.as_str(), test.user_id.as_str()), ("built-in", ""));
    assert_eq!(test.id, "builtin_test");
    let r = d.req(Method::GET, "/images/test").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, error) =
        error_of(d.req(Method::DELETE, "/images/test").send().await.unwrap()).await;
    assert_eq!(status, 403, "{error}");
    assert!(error.contains("global"), "{error}");
    // Registration is idempotent: a second list has one `test`.
    let again: Vec<api::Image> =
        d.req(Method::GET, "/images").send().await.unwrap().json().await.unwrap();
    assert_eq!(again.iter().filter(|i| i.name == "test").count(), 1);

    // Bad input, one row each.
    let good = busybox_image();
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("missing name", "/images/import".into(), good.clone(), 400, "name required"),
        ("empty name", "/images/import?name=".into(), good.clone(), 400, "name required"),
        (
            "name with a slash",
            "/images/import?name=a%2Fb".into(),
            good.clone(),
            400,
            "invalid image name",
        ),
        ("name with ..", "/images/import?name=..".into(), good.clone(), 400, "invalid image name"),
        (
            "name too long",
            format!("/images/import?name={}", "x".repeat(64)),
            good.clone(),
            400,
            "invalid image name",
        ),
        (
            "not a tarball",
            "/images/import?name=junk".into(),
            b"hello, not a tar file".repeat(40),
            400,
            "import failed: ",
        ),
        ("empty body", "/images/import?name=empty".into(), Vec::new(), 400, "import failed: "),
        (
            "a tar without manifest.json",
            "/images/import?name=plain".into(),
            layer(&[("a", b"1")]),
            400,
            "import failed: no manifest.json",
        ),
        (
            "path traversal in a layer",
            "/images/import?name=evil".into(),
            docker_save(&[hostile_layer()]),
            400,
            "path traversal",
        ),
        (
            "over the cap",
            "/images/import?name=huge".into(),
            vec![0u8; 9 * 1024 * 1024],
            413,
            "over 8388608 bytes",
        ),
    ];
    for (what, path, body, want, text) in cases {
        let r = d.req(Method::POST, &path).body(body).send().await.unwrap();
        let (status, error) = error_of(r).await;
        assert_eq!(status, want, "{what}: {error}");
        assert!(error.contains(text), "{what}: {error:?} lacks {text:?}");
    }
    // A streamed body (no Content-Length) over the cap is cut off too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![0u8; 1024 * 1024])).collect();
    let r = d
        .req(Method::POST, "/images/import?name=streamed")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    // Nothing was left behind by the failures: no rows, no files.
    let names: Vec<String> = d
        .req(Method::GET, "/images")
        .send()
        .await
        .unwrap()
        .json::<Vec<api::Image>>()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| !i.user_id.is_empty())
        .map(|i| i.name)
        .collect();
    assert!(names.is_empty(), "{names:?}");
    let owner_dir = d.data.path().join("images").join(&d.user.id);
    let leftovers: Vec<_> =
        std::fs::read_dir(&owner_dir).map(|r| r.flatten().count()).into_iter().collect();
    assert!(leftovers.iter().all(|n| *n == 0), "files left in {owner_dir:?}");

    // The real import, then a duplicate.
    let r = import(&d, "bb", good.clone()).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let r = import(&d, "bb", good.clone()).await;
    let (status, error) = error_of(r).await;
    assert_eq!(status, 409, "{error}");
    let got: api::Image =
        d.req(Method::GET, "/images/bb").send().await.unwrap().json().await.unwrap();
    assert_eq!((got.source.as_str(), got.user_id.as_str()), ("import:bb", d.user.id.as_str()));
    assert!(got.size_mb >= 512, "v1's minimum size: {}", got.size_mb);

    // Another owner sees none of it, and cannot boot or delete it.
    let other = d.other_user("stranger").await;
    let as_other =
        |m: Method, p: &str| d.client.request(m, format!("{}{p}", d.url)).bearer_auth(&other);
    assert_eq!(as_other(Method::GET, "/images/bb").send().await.unwrap().status(), 404);
    assert_eq!(as_other(Method::DELETE, "/images/bb").send().await.unwrap().status(), 404);
    let r = as_other(Method::POST, "/sandboxes")
        .json(&serde_json::json!({"name": "x", "image": "bb"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let theirs: Vec<api::Image> =
        as_other(Method::GET, "/images").send().await.unwrap().json().await.unwrap();
    assert!(theirs.iter().all(|i| i.name != "bb"));

    // A real VM from the imported image: the layers flattened, lohar injected, uid 1000 there.
    let r = create_from(&d, "from-import", "bb").await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let out = exec(
        &d,
        "from-import",
        "cat /hello.txt; echo; test ! -e /etc/gone && echo gone; ls /data; id -u",
    )
    .await;
    assert_eq!(out.exit_code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "from-layer-2\ngone\nnew\n1000\n");
    // In use: refused; after the destroy: deleted, file and all.
    let (status, error) = error_of(d.req(Method::DELETE, "/images/bb").send().await.unwrap()).await;
    assert_eq!(status, 409, "{error}");
    assert!(error.contains("in use by 1 sandbox"), "{error}");
    assert_eq!(d.req(Method::DELETE, "/sandboxes/from-import").send().await.unwrap().status(), 200);
    assert_eq!(d.req(Method::DELETE, "/images/bb").send().await.unwrap().status(), 200);
    assert_eq!(d.req(Method::GET, "/images/bb").send().await.unwrap().status(), 404);
    assert_eq!(std::fs::read_dir(&owner_dir).unwrap().count(), 0, "the image file is gone");
    d.stop().await;
}

#[tokio::test]
async fn a_saved_sandbox_disk_boots_a_new_sandbox_with_its_files() {
    let d = Daemon::start().await;
    d.create("src").await;
    d.sh("src", "echo saved-before > /home/lohar/marker").await;

    // Bad input first.
    let cases: Vec<(&str, serde_json::Value, u16)> = vec![
        ("/sandboxes/src/save-image", serde_json::json!({}), 400),
        ("/sandboxes/src/save-image", serde_json::json!({"name": ""}), 400),
        ("/sandboxes/src/save-image", serde_json::json!({"name": "a/b"}), 400),
        ("/sandboxes/src/save-image", serde_json::json!({"name": 7}), 400),
        ("/sandboxes/nope/save-image", serde_json::json!({"name": "x"}), 404),
    ];
    for (path, body, want) in cases {
        let r = d.req(Method::POST, path).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{path} {body}: {:?}", r.text().await);
    }

    let started = std::time::Instant::now();
    let r = d
        .req(Method::POST, "/sandboxes/src/save-image")
        .json(&serde_json::json!({"name": "snap1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let image: api::Image = r.json().await.unwrap();
    eprintln!("save-image took {:?}", started.elapsed());
    let src = d.state.store.read(|s| s.list_all_sandboxes()).await.unwrap();
    let src_id = src.iter().find(|s| s.name == "src").unwrap().id.clone();
    assert_eq!(image.source, format!("saved:{src_id}"));
    // The source runs on and a duplicate name is refused.
    d.sh("src", "test -f /home/lohar/marker").await;
    let r = d
        .req(Method::POST, "/sandboxes/src/save-image")
        .json(&serde_json::json!({"name": "snap1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    let r = create_from(&d, "copy", "snap1").await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let out = exec(&d, "copy", "cat /home/lohar/marker").await;
    assert_eq!(out.stdout, "saved-before\n", "{}", out.stderr);
    d.stop().await;
}

/// A `docker-registry` (Debian's distribution/registry) on a free loopback port, storage in a
/// temporary directory; killed by its PID when dropped.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/setup installs it)");
        let registry = Registry { child, port, _dir: dir };
        let url = format!("http://127.0.0.1:{port}/v2/");
        common::until("the registry answers", std::time::Duration::from_secs(30), || {
            let url = url.clone();
            async move { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The busybox image as `docker save` would write it, with a config whose diff IDs are the
/// layers' digests (so skopeo takes it as it is).
fn busybox_archive_for_registry() -> Vec<u8> {
    use sha2::Digest;
    let archive = busybox_image();
    // Re-read the layers from the archive to digest them.
    let mut layers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifest = Vec::new();
    let mut a = tar::Archive::new(archive.as_slice());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if path == "manifest.json" {
            manifest = data;
        } else if path.ends_with("layer.tar") {
            layers.push((path, data));
        }
    }
    let diff_ids: Vec<String> =
        layers.iter().map(|(_, l)| format!("sha256:{:x}", sha2::Sha256::digest(l))).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [("manifest.json".to_owned(), manifest), ("config.json".to_owned(), config)]
        .into_iter()
        .chain(layers)
    {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, &name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

async fn task(d: &Daemon, id: &str) -> api::Task {
    let r = d.req(Method::GET, &format!("/tasks/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Polls a task until it is no longer running, collecting the progress strings seen.
async fn wait_task(d: &Daemon, id: &str, limit: std::time::Duration) -> (api::Task, Vec<String>) {
    let deadline = std::time::Instant::now() + limit;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let t = task(d, id).await;
        if !t.progress.is_empty() && seen.last() != Some(&t.progress) {
            seen.push(t.progress.clone());
        }
        if t.status != "running" {
            return (t, seen);
        }
        assert!(std::time::Instant::now() < deadline, "task {id} still running: {t:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_pull_from_a_real_registry_boots_and_tasks_report_and_cancel() {
    let tools = tempfile::tempdir().unwrap();
    let lohar = lohar_from_test_image(tools.path());
    let registry = Registry::start().await;
    let archive = tools.path().join("bb.tar");
    std::fs::write(&archive, busybox_archive_for_registry()).unwrap();
    let dest = format!("docker://127.0.0.1:{}/tests/bb:1", registry.port);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(&dest)
            .output(),
    )
    .await
    .expect("skopeo within 120 s")
    .expect("skopeo (scripts/setup installs it)");
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));

    let d = Daemon::start_with(|s| s.lohar = lohar.clone()).await;
    let reference = format!("http://127.0.0.1:{}/tests/bb:1", registry.port);

    // Bad input.
    let cases: Vec<(&str, serde_json::Value, u16)> = vec![
        ("no ref", serde_json::json!({"name": "x"}), 400),
        ("no name", serde_json::json!({"ref": reference}), 400),
        ("bad name", serde_json::json!({"ref": reference, "name": "a b"}), 400),
        ("ref of the wrong type", serde_json::json!({"ref": 5, "name": "x"}), 400),
        ("bad reference", serde_json::json!({"ref": "UPPER/Case:!!", "name": "x"}), 400),
        ("bad scheme", serde_json::json!({"ref": "ftp://h/x:1", "name": "x"}), 400),
        (
            "auth without a colon",
            serde_json::json!({"ref": reference, "name": "x", "auth": "tok"}),
            400,
        ),
    ];
    for (what, body, want) in cases {
        let r = d.req(Method::POST, "/images/pull").json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{what}: {:?}", r.text().await);
    }

    // The pull: 202 and a task that ends completed, with v1's progress strings on the way.
    let r = d
        .req(Method::POST, "/images/pull")
        .json(&serde_json::json!({"ref": reference, "name": "pulled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let started: api::PullStarted = r.json().await.unwrap();
    assert_eq!(started.status, "running");
    let (done, seen) = wait_task(&d, &started.task_id, std::time::Duration::from_secs(180)).await;
    assert_eq!(done.status, "completed", "{done:?}");
    assert_eq!(done.kind, "image_pull");
    assert!(done.completed_at.is_some());
    let result: api::PullResult = serde_json::from_str(&done.result).unwrap();
    assert_eq!(
        (result.image.as_str(), result.source.as_str()),
        ("pulled", format!("oci:{reference}").as_str())
    );
    eprintln!("progress seen: {seen:?}");
    for s in &seen {
        let known =
            ["resolving image", "flattening layers", "injecting lohar", "creating ext4 image"]
                .contains(&s.as_str())
                || s.starts_with("extracting layer ");
        assert!(known, "unknown progress {s:?}");
    }
    let image: api::Image =
        d.req(Method::GET, "/images/pulled").send().await.unwrap().json().await.unwrap();
    assert!(image.oci_digest.starts_with("sha256:"), "{image:?}");
    // Again: v1's "exists", no new task.
    let r = d
        .req(Method::POST, "/images/pull")
        .json(&serde_json::json!({"ref": reference, "name": "pulled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let again: api::PullStarted = r.json().await.unwrap();
    assert_eq!(
        (again.status.as_str(), again.digest.as_str()),
        ("exists", image.oci_digest.as_str())
    );
    // Another owner's task is not found; a finished task cannot be cancelled.
    let other = d.other_user("stranger").await;
    let r = d
        .client
        .get(format!("{}/tasks/{}", d.url, started.task_id))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = d.req(Method::DELETE, &format!("/tasks/{}", started.task_id)).send().await.unwrap();
    assert_eq!(r.status(), 409);

    // A missing repository: the task fails with the registry's answer, never stays running.
    let r = d
        .req(Method::POST, "/images/pull")
        .json(&serde_json::json!({"ref": format!("http://127.0.0.1:{}/tests/nope:1", registry.port), "name": "nope"}))
        .send()
        .await
        .unwrap();
    let started_missing: api::PullStarted = r.json().await.unwrap();
    let (failed, _) =
        wait_task(&d, &started_missing.task_id, std::time::Duration::from_secs(60)).await;
    assert_eq!(failed.status, "failed");
    assert!(!failed.error.is_empty());
    assert_eq!(d.req(Method::GET, "/images/nope").send().await.unwrap().status(), 404);

    // A registry that accepts and never answers: the task runs until it is cancelled.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let r = d
        .req(Method::POST, "/images/pull")
        .json(&serde_json::json!({"ref": format!("http://127.0.0.1:{silent_port}/x:1"), "name": "hang"}))
        .send()
        .await
        .unwrap();
    let hanging: api::PullStarted = r.json().await.unwrap();
    common::until("the pull is resolving", std::time::Duration::from_secs(10), || async {
        task(&d, &hanging.task_id).await.progress == "resolving image"
    })
    .await;
    let r = d.req(Method::DELETE, &format!("/tasks/{}", hanging.task_id)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let t = task(&d, &hanging.task_id).await;
    assert_eq!((t.status.as_str(), t.error.as_str()), ("failed", "cancelled by user"));
    held.abort();

    // A VM from the pulled image.
    let r = create_from(&d, "from-pull", "pulled").await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let out = exec(&d, "from-pull", "cat /hello.txt; echo; id -un").await;
    assert_eq!(out.stdout, "from-layer-2\nlohar\n", "{}", out.stderr);
    // v1's image events, the owner's: the pull that worked and the one that failed.
    let events: Vec<api::Event> = d
        .req(Method::GET, "/events?type=image&limit=100")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: std::collections::BTreeSet<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains("image.pulled") && kinds.contains("image.pull_failed"), "{kinds:?}");
    assert!(events.iter().all(|e| e.user_id == d.user.id), "{events:?}");
    d.stop().await;
    drop(registry);
}

#[tokio::test]
async fn a_full_disk_during_an_import_is_507_and_leaves_nothing() {
    let tools = tempfile::tempdir().unwrap();
    let lohar = lohar_from_test_image(tools.path());
    let d = Daemon::start_with(|s| s.lohar = lohar.clone()).await;
    // The owner's image directory on a 3 MiB tmpfs: the upload fills it.
    let dir = d.data.path().join("images").join(&d.user.id);
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());
    let r = import(&d, "big", vec![7u8; 4 * 1024 * 1024]).await;
    let (status, error) = error_of(r).await;
    assert_eq!(status, 507, "{error}");
    assert!(error.contains("no space"), "{error}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing half-written is left");
    assert_eq!(d.req(Method::GET, "/images/big").send().await.unwrap().status(), 404);
    drop(_unmount);
    // A user whose max_images is used up is refused before the upload (v1's quota).
    let (_, key) = d
        .state
        .store
        .write(|s| {
            s.create_user("no-images", store::Quotas { max_images: 0, ..Default::default() })
        })
        .await
        .unwrap();
    let r = d
        .client
        .post(format!("{}/images/import?name=q", d.url))
        .bearer_auth(key.expose())
        .body(busybox_image())
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(r).await;
    assert_eq!(status, 429, "{error}");
    assert!(error.contains("limit reached (0/0)"), "{error}");
    d.stop().await;
}
