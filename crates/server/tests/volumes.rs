//! Persistent volumes and their backups against a real daemon: CRUD, quota and bad input over
//! HTTP (no VM), data that outlives a sandbox and v1's one-writer-or-many-readers rule (real
//! VMs), backups to a real S3 server (`s3s-fs`, served over HTTP on loopback by the test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::Daemon;
use reqwest::Method;
use serde_json::{Value, json};

/// The body of an answer, with its status checked.
async fn expect(r: reqwest::Response, status: u16, what: &str) -> Value {
    let got = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "{what}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn call(d: &Daemon, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
    let req = d.req(method, path);
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(b.to_string()),
        None => req,
    };
    req.send().await.unwrap()
}

fn volume_file(d: &Daemon, owner: &str, name: &str) -> PathBuf {
    d.data.path().join("volumes").join(owner).join(format!("{name}.ext4"))
}

/// Writes `text` to `/marker` in an ext4 image (debugfs: no host mount).
fn write_marker(image: &Path, text: &str) {
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), text).unwrap();
    let _ = std::process::Command::new("debugfs")
        .args(["-w", "-R", "rm /marker"])
        .arg(image)
        .output()
        .unwrap();
    let out = std::process::Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} marker", src.path().display()))
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `/marker` of an ext4 image.
fn read_marker(image: &Path) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /marker"])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fsck_clean(image: &Path) -> bool {
    std::process::Command::new("e2fsck").arg("-fn").arg(image).output().unwrap().status.success()
}

async fn events(d: &Daemon, kind: &str) -> usize {
    let q = store::EventQuery { kind: Some(kind.into()), ..Default::default() };
    d.state.store.read(move |s| s.query_events(&q)).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_crud_quota_and_bad_input() {
    let d = Daemon::start().await;
    let uid = d.user.id.clone();
    // Create: 201, v1's shape, a real ext4 file at <data>/volumes/<uid>/<name>.ext4.
    let v = expect(
        call(&d, Method::POST, "/volumes", Some(json!({"name": "data", "size_mb": 64}))).await,
        201,
        "create",
    )
    .await;
    assert_eq!(v["name"], "data");
    assert_eq!(v["size_mb"], 64);
    assert_eq!(v["status"], "ready");
    assert_eq!(v["user_id"], uid.as_str());
    assert!(v["id"].as_str().unwrap().starts_with("vol_"));
    assert!(v.get("file_path").is_none(), "the host path is never shown");
    let file = volume_file(&d, &uid, "data");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 << 20);
    assert!(fsck_clean(&file));
    let list = expect(call(&d, Method::GET, "/volumes", None).await, 200, "list").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["size_mb"], 64);
    let got = expect(call(&d, Method::GET, "/volumes/data", None).await, 200, "get").await;
    assert_eq!(got["attachments"], json!([]));

    // Duplicates: 409 with v1's message.
    let dup = call(&d, Method::POST, "/volumes", Some(json!({"name": "data", "size_mb": 8}))).await;
    assert_eq!(expect(dup, 409, "dup").await["error"], "volume \"data\" already exists");

    // Bad input: missing and wrong fields, names that break the rule, sizes.
    let long = "a".repeat(64);
    let bad: Vec<(&str, String, u16)> = vec![
        ("no name", json!({"size_mb": 8}).to_string(), 400),
        ("no size", json!({"name": "x"}).to_string(), 400),
        ("empty body", String::new(), 400),
        ("size zero", json!({"name": "x", "size_mb": 0}).to_string(), 400),
        ("size negative", json!({"name": "x", "size_mb": -1}).to_string(), 400),
        ("size past u32", json!({"name": "x", "size_mb": 5_000_000_000u64}).to_string(), 400),
        ("size a string", json!({"name": "x", "size_mb": "8"}).to_string(), 400),
        ("name a number", json!({"name": 5, "size_mb": 8}).to_string(), 400),
        ("traversal", json!({"name": "../x", "size_mb": 8}).to_string(), 400),
        ("leading dot", json!({"name": ".x", "size_mb": 8}).to_string(), 400),
        ("slash", json!({"name": "a/b", "size_mb": 8}).to_string(), 400),
        ("64 long", json!({"name": long, "size_mb": 8}).to_string(), 400),
        ("not an object", "[1]".into(), 400),
        ("not json", "{".into(), 400),
        ("over the quota", json!({"name": "big", "size_mb": 20480 - 63}).to_string(), 429),
        ("huge", json!({"name": "big", "size_mb": u32::MAX}).to_string(), 429),
    ];
    for (name, body, status) in bad {
        let r = d
            .req(Method::POST, "/volumes")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let body = expect(r, status, name).await;
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{name}");
    }
    let quota =
        call(&d, Method::POST, "/volumes", Some(json!({"name": "big", "size_mb": 20417}))).await;
    assert_eq!(
        expect(quota, 429, "quota").await["error"],
        "volume storage quota exceeded (64MB used, 20480MB max)"
    );
    // Exactly up to the quota is fine (sparse: no disk is used).
    let fill =
        call(&d, Method::POST, "/volumes", Some(json!({"name": "fill", "size_mb": 20416}))).await;
    expect(fill, 201, "fill to quota").await;
    expect(call(&d, Method::DELETE, "/volumes/fill", None).await, 200, "delete fill").await;
    // An unknown field is ignored (as v1) and named in a Warning header.
    let extra = call(
        &d,
        Method::POST,
        "/volumes",
        Some(json!({"name": "extra", "size_mb": 8, "colour": "blue"})),
    )
    .await;
    assert!(extra.headers()["warning"].to_str().unwrap().contains("colour"));
    expect(extra, 201, "extra field").await;

    // Resize: grow only; bad sizes are 400; the file system grows with the file.
    for (name, body) in [
        ("same size", json!({"size_mb": 64})),
        ("smaller", json!({"size_mb": 32})),
        ("zero", json!({"size_mb": 0})),
        ("missing", json!({})),
    ] {
        expect(call(&d, Method::POST, "/volumes/data/resize", Some(body)).await, 400, name).await;
    }
    let neg = call(&d, Method::POST, "/volumes/data/resize", Some(json!({"size_mb": -5}))).await;
    expect(neg, 400, "negative").await;
    let huge = json!({"size_mb": u32::MAX});
    let huge = call(&d, Method::POST, "/volumes/data/resize", Some(huge)).await;
    let huge = expect(huge, 429, "huge").await;
    assert_eq!(huge["error"], "volume storage quota exceeded (72MB used, 20480MB max)");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 << 20, "nothing grew");
    write_marker(&file, "before resize");
    let r = call(&d, Method::POST, "/volumes/data/resize", Some(json!({"size_mb": 128}))).await;
    assert_eq!(expect(r, 200, "resize").await, json!({"status": "resized", "size_mb": 128}));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 128 << 20);
    assert!(fsck_clean(&file));
    assert_eq!(read_marker(&file), "before resize");

    // Snapshot (clone): an independent copy carrying the data.
    let c = call(&d, Method::POST, "/volumes/data/snapshot", Some(json!({"name": "copy"}))).await;
    let c = expect(c, 201, "clone").await;
    assert_eq!((c["name"].as_str(), c["size_mb"].as_u64()), (Some("copy"), Some(128)));
    let copy = volume_file(&d, &uid, "copy");
    write_marker(&file, "changed after the clone");
    assert_eq!(read_marker(&copy), "before resize");
    for (name, body, status) in [
        ("existing name", json!({"name": "data"}), 409),
        ("no name", json!({}), 400),
        ("bad name", json!({"name": "../up"}), 400),
    ] {
        let r = call(&d, Method::POST, "/volumes/copy/snapshot", Some(body)).await;
        expect(r, status, name).await;
    }
    for (method, path) in [
        (Method::GET, "/volumes/nope"),
        (Method::DELETE, "/volumes/nope"),
        (Method::POST, "/volumes/nope/resize"),
        (Method::POST, "/volumes/nope/snapshot"),
        (Method::GET, "/volumes/..%2F..%2Fetc"),
    ] {
        let body = (method == Method::POST).then(|| json!({"size_mb": 500, "name": "z"}));
        let r = call(&d, method.clone(), path, body).await;
        expect(r, 404, path).await;
    }

    // Another owner: not found, never forbidden; their own volume of the same name is another
    // file.
    let other = d.other_user("other").await;
    let as_other =
        |m: Method, p: &str| d.client.request(m, format!("{}{p}", d.url)).bearer_auth(&other);
    for (m, p) in [
        (Method::GET, "/volumes/data"),
        (Method::DELETE, "/volumes/data"),
        (Method::POST, "/volumes/data/resize"),
        (Method::POST, "/volumes/data/snapshot"),
    ] {
        let r = as_other(m.clone(), p).json(&json!({"size_mb": 500, "name": "mine"})).send().await;
        expect(r.unwrap(), 404, p).await;
    }
    let theirs = as_other(Method::POST, "/volumes")
        .json(&json!({"name": "data", "size_mb": 8}))
        .send()
        .await
        .unwrap();
    let theirs = expect(theirs, 201, "other's data").await;
    let their_file = volume_file(&d, theirs["user_id"].as_str().unwrap(), "data");
    assert_ne!(their_file, file);
    assert_eq!(read_marker(&file), "changed after the clone");
    let their_list = as_other(Method::GET, "/volumes").send().await.unwrap();
    assert_eq!(expect(their_list, 200, "their list").await.as_array().unwrap().len(), 1);

    // persistent_volumes at create: refused before any VM is built.
    let create = |pv: Value| json!({"name": "sb", "memory_mb": 128, "persistent_volumes": [pv]});
    let rows: Vec<(&str, Value, u16)> = vec![
        ("root", json!({"name": "data", "mount": "/"}), 400),
        ("proc", json!({"name": "data", "mount": "/proc"}), 400),
        ("dev", json!({"name": "data", "mount": "/dev"}), 400),
        ("etc", json!({"name": "data", "mount": "/etc"}), 400),
        ("relative", json!({"name": "data", "mount": "relative"}), 400),
        ("dot-dot", json!({"name": "data", "mount": "/work/../etc"}), 400),
        ("dot-dot inside", json!({"name": "data", "mount": "/work/.."}), 400),
        ("bad name", json!({"name": "../data", "mount": "/work"}), 400),
        ("mount missing", json!({"name": "data"}), 400),
        ("read_only a string", json!({"name": "data", "mount": "/w", "read_only": "yes"}), 400),
        ("missing volume", json!({"name": "ghost", "mount": "/work"}), 404),
        (
            "auto-create without a size",
            json!({"name": "ghost", "mount": "/work", "auto_create": true}),
            404,
        ),
        (
            "auto-create over the quota",
            json!({"name": "ghost", "mount": "/w", "auto_create": true, "size_mb": 30000}),
            429,
        ),
    ];
    for (name, pv, status) in rows {
        let r = call(&d, Method::POST, "/sandboxes", Some(create(pv))).await;
        expect(r, status, name).await;
    }
    let twice = json!({"name": "sb", "memory_mb": 128, "persistent_volumes": [
        {"name": "data", "mount": "/a"}, {"name": "copy", "mount": "/a/"}]});
    expect(call(&d, Method::POST, "/sandboxes", Some(twice)).await, 400, "one mount twice").await;
    // Another owner's volume is not theirs to attach.
    let r = as_other(Method::POST, "/sandboxes")
        .json(&create(json!({"name": "copy", "mount": "/work"})))
        .send()
        .await
        .unwrap();
    expect(r, 404, "other's volume").await;
    let sandboxes = expect(call(&d, Method::GET, "/sandboxes", None).await, 200, "ls").await;
    assert_eq!(sandboxes, json!([]), "no sandbox row is left by a refused create");

    // Backups without the config: v1's 501.
    for (m, p) in [
        (Method::GET, "/volumes/data/backups"),
        (Method::POST, "/volumes/data/backups"),
        (Method::POST, "/volumes/data/backups/restore"),
        (Method::DELETE, "/volumes/data/backups/bkp_1"),
    ] {
        let body = expect(call(&d, m, p, Some(json!({"backup_id": "bkp_1"}))).await, 501, p).await;
        assert!(body["error"].as_str().unwrap().starts_with("backup not configured"), "{p}");
    }

    // Delete: 200, the file goes; again 404.
    let del = expect(call(&d, Method::DELETE, "/volumes/data", None).await, 200, "delete").await;
    assert_eq!(del, json!({"status": "deleted"}));
    assert!(!file.exists());
    expect(call(&d, Method::DELETE, "/volumes/data", None).await, 404, "delete again").await;
    assert!(their_file.exists(), "the other owner's volume of that name stays");
    for kind in ["volume.created", "volume.deleted", "volume.resized", "volume.snapshot"] {
        assert!(events(&d, kind).await > 0, "{kind}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_data_outlives_sandboxes_one_writer_many_readers() {
    let d = Daemon::start().await;
    let pv = |mount: &str, ro: bool| json!([{"name": "work", "mount": mount, "size_mb": 64, "auto_create": true, "read_only": ro}]);
    let a = call(
        &d,
        Method::POST,
        "/sandboxes",
        Some(json!({"name": "a", "memory_mb": 128, "persistent_volumes": pv("/work", false)})),
    )
    .await;
    let a = expect(a, 201, "create a").await;
    d.sh("a", "echo from-a > /work/note && sync").await;
    let v = expect(call(&d, Method::GET, "/volumes/work", None).await, 200, "get").await;
    assert_eq!(
        v["attachments"],
        json!([{"sandbox_id": a["id"], "mount": "/work", "read_only": false}])
    );
    // Attached: no delete, no resize, no clone, no second writer, no reader.
    let del = expect(call(&d, Method::DELETE, "/volumes/work", None).await, 409, "del").await;
    assert_eq!(del["error"], "volume \"work\" has 1 active attachment(s)");
    let r = call(&d, Method::POST, "/volumes/work/resize", Some(json!({"size_mb": 128}))).await;
    expect(r, 409, "resize attached").await;
    let r = call(&d, Method::POST, "/volumes/work/snapshot", Some(json!({"name": "c"}))).await;
    expect(r, 409, "clone attached").await;
    for (name, ro) in [("b-writer", false), ("b-reader", true)] {
        let body = json!({"name": name, "memory_mb": 128, "persistent_volumes": pv("/w", ro)});
        expect(call(&d, Method::POST, "/sandboxes", Some(body)).await, 409, name).await;
    }
    let names: Vec<String> = expect(call(&d, Method::GET, "/sandboxes", None).await, 200, "ls")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["a"], "refused creates leave no rows");

    // Destroy A: the attachment goes; the data stays for the next sandboxes, two readers.
    expect(call(&d, Method::DELETE, "/sandboxes/a", None).await, 200, "destroy a").await;
    let v = expect(call(&d, Method::GET, "/volumes/work", None).await, 200, "get").await;
    assert_eq!(v["attachments"], json!([]));
    for name in ["r1", "r2"] {
        let body = json!({"name": name, "memory_mb": 128, "persistent_volumes": pv("/data", true)});
        expect(call(&d, Method::POST, "/sandboxes", Some(body)).await, 201, name).await;
    }
    // A's VM was killed, its volume's journal not replayed: the first read-only attach
    // checks it first (else the guest could not mount it).
    d.sh("r1", "test \"$(cat /data/note)\" = from-a").await;
    d.sh("r2", "test \"$(cat /data/note)\" = from-a && ! touch /data/x 2>/dev/null").await;
    let v = expect(call(&d, Method::GET, "/volumes/work", None).await, 200, "get").await;
    assert_eq!(v["attachments"].as_array().unwrap().len(), 2);
    // A writer while readers hold it: 409.
    let body = json!({"name": "w", "memory_mb": 128, "persistent_volumes": pv("/data", false)});
    expect(call(&d, Method::POST, "/sandboxes", Some(body)).await, 409, "writer vs readers").await;
    for name in ["r1", "r2"] {
        expect(call(&d, Method::DELETE, &format!("/sandboxes/{name}"), None).await, 200, name)
            .await;
    }
    let v = expect(call(&d, Method::GET, "/volumes/work", None).await, 200, "get").await;
    assert_eq!(v["attachments"], json!([]));
    expect(call(&d, Method::DELETE, "/volumes/work", None).await, 200, "delete").await;
    d.stop().await;
}

/// An S3 server (`s3s-fs` over a temporary directory) on 127.0.0.1, with one bucket.
struct S3 {
    endpoint: String,
    root: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

const BUCKET: &str = "bhatti-backups";
const ACCESS: &str = "AKIATESTKEY";
const SECRET: &str = "test-secret-key-0123456789";

impl S3 {
    async fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS, SECRET));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                let service = service.clone();
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(sock);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        S3 { endpoint, root, task }
    }

    fn config(&self) -> server::BackupConfig {
        server::BackupConfig {
            s3_endpoint: self.endpoint.clone(),
            s3_region: "us-east-1".into(),
            s3_bucket: BUCKET.into(),
            s3_access_key: ACCESS.into(),
            s3_secret_key: SECRET.into(),
            schedule: vec![server::BackupSchedule {
                volume: "data".into(),
                cron: "* * * * *".into(),
                retention: 2,
            }],
        }
    }

    fn object(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-tmp") || n.contains(".partial"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_against_a_real_s3_server() {
    let mut s3 = S3::start().await;
    let cfg = s3.config();
    let d = Daemon::start_with(|s| s.backup = cfg).await;
    let uid = d.user.id.clone();
    let r = call(&d, Method::POST, "/volumes", Some(json!({"name": "data", "size_mb": 64}))).await;
    expect(r, 201, "create").await;
    let file = volume_file(&d, &uid, "data");
    write_marker(&file, "one");
    expect(call(&d, Method::GET, "/volumes/data/backups", None).await, 200, "empty list").await;

    let b1 = expect(call(&d, Method::POST, "/volumes/data/backups", None).await, 201, "b1").await;
    let key1 = b1["s3_key"].as_str().unwrap().to_owned();
    let prefix = format!("volumes/{uid}/data/");
    assert!(key1.starts_with(&prefix) && key1.ends_with(".ext4.zst"), "{key1}");
    assert_eq!(b1["volume_name"], "data");
    assert_eq!(b1["sha256"], "");
    let stored = std::fs::metadata(s3.object(&key1)).unwrap().len();
    assert_eq!(b1["size_bytes"].as_u64(), Some(stored));
    assert!(stored > 0 && stored < 8 << 20, "zstd of a near-empty 64 MB volume: {stored}");

    write_marker(&file, "two");
    let b2 = expect(call(&d, Method::POST, "/volumes/data/backups", None).await, 201, "b2").await;
    let list = expect(call(&d, Method::GET, "/volumes/data/backups", None).await, 200, "ls").await;
    let ids: Vec<&str> =
        list.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [b2["id"].as_str().unwrap(), b1["id"].as_str().unwrap()], "newest first");

    // Restore after the volume changed and grew: the backup's data comes back, at the
    // volume's new size.
    write_marker(&file, "three");
    let r = call(&d, Method::POST, "/volumes/data/resize", Some(json!({"size_mb": 96}))).await;
    expect(r, 200, "grow before the restore").await;
    let body = json!({"backup_id": b1["id"]});
    let r = call(&d, Method::POST, "/volumes/data/backups/restore", Some(body)).await;
    assert_eq!(
        expect(r, 200, "restore").await,
        json!({"status": "restored", "backup_id": b1["id"]})
    );
    assert_eq!(read_marker(&file), "one");
    assert!(fsck_clean(&file));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 96 << 20);
    let v = expect(call(&d, Method::GET, "/volumes/data", None).await, 200, "get").await;
    assert_eq!(v["size_mb"], 96);

    // A restore that fails part way (the object is damaged: its tail is cut off) leaves the
    // volume exactly as it was, and no temporary file.
    let key2 = b2["s3_key"].as_str().unwrap();
    let object = s3.object(key2);
    let whole = std::fs::read(&object).unwrap();
    std::fs::write(&object, &whole[..whole.len() / 2]).unwrap();
    let before = std::fs::read(&file).unwrap();
    let body = json!({"backup_id": b2["id"]});
    let r = call(&d, Method::POST, "/volumes/data/backups/restore", Some(body)).await;
    let err = expect(r, 502, "damaged restore").await;
    assert!(err["error"].as_str().unwrap().contains("decompress"), "{err}");
    assert!(std::fs::read(&file).unwrap() == before, "the volume changed");
    assert_eq!(leftovers(file.parent().unwrap()), Vec::<String>::new());
    std::fs::write(&object, &whole).unwrap();

    // Bad input: unknown backup, another volume's, another owner's; missing ID.
    let r = call(&d, Method::POST, "/volumes", Some(json!({"name": "other", "size_mb": 8}))).await;
    expect(r, 201, "other volume").await;
    let other = d.other_user("other").await;
    for (name, path, body, status) in [
        ("no id", "/volumes/data/backups/restore", json!({}), 400),
        ("id a number", "/volumes/data/backups/restore", json!({"backup_id": 7}), 400),
        ("unknown id", "/volumes/data/backups/restore", json!({"backup_id": "bkp_no"}), 404),
        ("another volume's", "/volumes/other/backups/restore", json!({"backup_id": b1["id"]}), 404),
        ("missing volume", "/volumes/ghost/backups/restore", json!({"backup_id": b1["id"]}), 404),
    ] {
        expect(call(&d, Method::POST, path, Some(body)).await, status, name).await;
    }
    expect(call(&d, Method::POST, "/volumes/ghost/backups", None).await, 404, "ghost").await;
    expect(call(&d, Method::GET, "/volumes/ghost/backups", None).await, 404, "ghost list").await;
    let theirs =
        |m: Method, p: String| d.client.request(m, format!("{}{p}", d.url)).bearer_auth(&other);
    let r = theirs(Method::POST, "/volumes/data/backups/restore".into())
        .json(&json!({"backup_id": b1["id"]}))
        .send()
        .await
        .unwrap();
    expect(r, 404, "other owner's restore").await;
    let r = theirs(Method::DELETE, format!("/volumes/data/backups/{}", b1["id"].as_str().unwrap()));
    expect(r.send().await.unwrap(), 404, "other owner's delete").await;

    // Delete: the object and the row go.
    let path = format!("/volumes/data/backups/{}", b2["id"].as_str().unwrap());
    assert_eq!(
        expect(call(&d, Method::DELETE, &path, None).await, 200, "delete").await,
        json!({"status": "deleted"})
    );
    assert!(!s3.object(key2).exists());
    expect(call(&d, Method::DELETE, &path, None).await, 404, "delete again").await;

    // A backup of a larger volume of this name (deleted, made again smaller): refused.
    expect(call(&d, Method::DELETE, "/volumes/data", None).await, 200, "delete data").await;
    let r = call(&d, Method::POST, "/volumes", Some(json!({"name": "data", "size_mb": 32}))).await;
    expect(r, 201, "data again, smaller").await;
    let body = json!({"backup_id": b1["id"]});
    let r = call(&d, Method::POST, "/volumes/data/backups/restore", Some(body)).await;
    let err = expect(r, 400, "a larger volume's backup").await;
    assert!(err["error"].as_str().unwrap().contains("resize the volume first"), "{err}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 32 << 20);
    assert_eq!(leftovers(file.parent().unwrap()), Vec::<String>::new());

    // The schedule (every minute, keep 2): three ticks leave the newest two.
    let mut made = 0;
    for _ in 0..3 {
        made += server::backup_schedule::run_due(&d.state, std::time::SystemTime::now()).await;
    }
    assert_eq!(made, 3);
    let list = expect(call(&d, Method::GET, "/volumes/data/backups", None).await, 200, "ls").await;
    let kept: Vec<&str> =
        list.as_array().unwrap().iter().map(|b| b["s3_key"].as_str().unwrap()).collect();
    assert_eq!(kept.len(), 2, "{list}");
    assert!(!s3.object(&key1).exists(), "retention deleted the oldest object");
    for key in kept {
        assert!(s3.object(key).exists(), "{key}");
    }

    // A store that is gone: a clear 502, `volume.backup_failed`, no temporary files.
    s3.task.abort();
    let _ = (&mut s3.task).await;
    let r = call(&d, Method::POST, "/volumes/data/backups", None).await;
    expect(r, 502, "store down").await;
    assert_eq!(leftovers(file.parent().unwrap()), Vec::<String>::new());
    for kind in ["volume.backup_created", "volume.restored", "volume.backup_failed"] {
        assert!(events(&d, kind).await > 0, "{kind}");
    }
    d.stop().await;
}

/// Unmounts the test's tmpfs when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// `n` MiB of random bytes written into the volume as `name` (random: zstd cannot shrink it).
fn write_random(image: &Path, name: &str, mib: usize) {
    let mut data = vec![0u8; mib << 20];
    getrandom::fill(&mut data).unwrap();
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), &data).unwrap();
    let out = std::process::Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} {name}", src.path().display()))
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_onto_a_full_disk_leaves_the_volume_as_it_was() {
    let s3 = S3::start().await;
    let cfg = s3.config();
    let d = Daemon::start_with(|s| s.backup = cfg).await;
    // The owner's volume directory on a 40 MiB tmpfs: room for a backup of a volume holding
    // 10 MiB (the volume, its copy, the compressed copy), not for a restore once it holds 20.
    let dir = d.data.path().join("volumes").join(&d.user.id);
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success());
    let _tmpfs = Tmpfs(dir.clone());
    let r = call(&d, Method::POST, "/volumes", Some(json!({"name": "data", "size_mb": 64}))).await;
    expect(r, 201, "create").await;
    let file = dir.join("data.ext4");
    write_random(&file, "first", 10);
    let b =
        expect(call(&d, Method::POST, "/volumes/data/backups", None).await, 201, "backup").await;
    write_random(&file, "second", 10);
    let before = std::fs::read(&file).unwrap();
    let body = json!({"backup_id": b["id"]});
    let r = call(&d, Method::POST, "/volumes/data/backups/restore", Some(body)).await;
    let err = expect(r, 507, "restore onto a full disk").await;
    assert!(err["error"].as_str().unwrap().contains("disk is full"), "{err}");
    assert!(std::fs::read(&file).unwrap() == before, "the volume changed");
    assert_eq!(leftovers(&dir), Vec::<String>::new());
    assert!(fsck_clean(&file));
    d.stop().await;
}
