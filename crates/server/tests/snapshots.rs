//! Named snapshots (host.md 1.21) and templates (1.17) against a real daemon with real VMs:
//! a checkpoint of a hot and of a warm sandbox, resumed beside its running source (its own ID,
//! name, address and MAC; the files of the moment of the checkpoint), twice; quota, owners,
//! delete, events; templates' CRUD and a create from one with overrides; bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Daemon;
use reqwest::Method;
use serde_json::json;

async fn exec(d: &Daemon, sandbox: &str, script: &str) -> api::ExecResult {
    let r = d
        .req(Method::POST, &format!("/sandboxes/{sandbox}/exec"))
        .json(&json!({"cmd": ["sh", "-c", script]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{script}");
    r.json().await.unwrap()
}

async fn post(d: &Daemon, key: &str, path: &str, body: serde_json::Value) -> reqwest::Response {
    d.client.post(format!("{}{path}", d.url)).bearer_auth(key).json(&body).send().await.unwrap()
}

async fn send(d: &Daemon, key: &str, method: Method, path: &str) -> reqwest::Response {
    d.client.request(method, format!("{}{path}", d.url)).bearer_auth(key).send().await.unwrap()
}

async fn status_and_error(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let error = serde_json::from_str::<api::ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
    (status, error)
}

async fn events(d: &Daemon, kind: &str) -> Vec<store::Event> {
    let q = store::EventQuery { kind: Some(kind.into()), ..Default::default() };
    d.state.store.read(move |s| s.query_events(&q)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_checkpoint_and_resume_beside_the_running_source() {
    let d = Daemon::start().await;
    let other = d.other_user("mallory").await;
    let src = d.create("src").await;
    d.sh("src", "echo before > /home/lohar/before.txt").await;

    // TestCLISnapshotCheckpointAndResume (API side): a hot source, which keeps running.
    let t = std::time::Instant::now();
    let r = post(&d, &d.key, "/sandboxes/src/checkpoint", json!({"name": "cp1"})).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let snap: api::Snapshot = r.json().await.unwrap();
    println!("checkpoint of a hot 128 MiB sandbox through the API: {:?}", t.elapsed());
    assert_eq!((snap.name.as_str(), snap.user_id.as_str()), ("cp1", d.user.id.as_str()));
    assert_eq!(snap.source_sandbox, src.id);
    assert!(snap.id.starts_with("snap_") && snap.size_mb > 0, "{snap:?}");
    assert_eq!(d.state.engine.thermal(&src.id).unwrap().to_string(), "hot");
    d.sh("src", "echo after > /home/lohar/after.txt").await;

    let listed: Vec<api::Snapshot> =
        d.req(Method::GET, "/snapshots").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed, vec![snap.clone()]);
    let got: api::Snapshot =
        d.req(Method::GET, "/snapshots/cp1").send().await.unwrap().json().await.unwrap();
    assert_eq!(got, snap);

    // Resumed beside the running source: its own ID, name, address and MAC; the pre-checkpoint
    // file and not the later one; both answer.
    let t = std::time::Instant::now();
    let r = post(&d, &d.key, "/snapshots/cp1/resume", json!({"name": "clone"})).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let clone: api::Sandbox = r.json().await.unwrap();
    println!("resume beside the source through the API: {:?}", t.elapsed());
    assert_eq!(clone.name, "clone");
    assert_ne!(clone.id, src.id);
    assert_ne!(clone.ip, src.ip);
    assert!(!clone.ip.is_empty());
    assert_eq!(clone.status, "running");
    // Its row carries the source's shape (v1 left these empty).
    assert_eq!(
        (clone.cpus, clone.memory_mb, clone.image.as_str(), clone.disk_size_mb),
        (src.cpus, src.memory_mb, src.image.as_str(), src.disk_size_mb)
    );
    let files = exec(&d, "clone", "cat /home/lohar/before.txt; ls /home/lohar").await;
    assert!(files.stdout.starts_with("before\n"), "{}", files.stdout);
    assert!(!files.stdout.contains("after.txt"), "{}", files.stdout);
    let mac = "cat /sys/class/net/eth0/address";
    let (mac_src, mac_clone) =
        (exec(&d, "src", mac).await.stdout, exec(&d, "clone", mac).await.stdout);
    assert_ne!(mac_src, mac_clone);
    assert!(exec(&d, "src", "cat /home/lohar/after.txt").await.stdout == "after\n");
    let got: api::Sandbox =
        d.req(Method::GET, "/sandboxes/clone").send().await.unwrap().json().await.unwrap();
    assert_eq!((got.id.as_str(), got.ip.as_str()), (clone.id.as_str(), clone.ip.as_str()));

    // Twice from one snapshot: v1's default name, another address again.
    let r = post(&d, &d.key, "/snapshots/cp1/resume", json!({})).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let second: api::Sandbox = r.json().await.unwrap();
    let suffix = second.name.strip_prefix("cp1-").expect(&second.name);
    assert!(suffix.len() == 6 && suffix.bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(second.ip != src.ip && second.ip != clone.ip);
    assert!(exec(&d, &second.name, "cat /home/lohar/before.txt").await.stdout == "before\n");
    let r = send(&d, &d.key, Method::DELETE, &format!("/sandboxes/{}", second.id)).await;
    assert_eq!(r.status(), 200);

    // A warm (paused) source: captured, and it stays warm.
    d.state.engine.pause(&src.id, Duration::from_secs(5)).await.unwrap();
    let r = post(&d, &d.key, "/sandboxes/src/checkpoint", json!({"name": "warm"})).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    assert_eq!(d.state.engine.thermal(&src.id).unwrap().to_string(), "warm");

    // Bad input, each answered before anything is captured.
    let long = "n".repeat(64);
    let table: [(&str, &str, &str, serde_json::Value, u16, &str); 16] = [
        ("no name", "/sandboxes/src/checkpoint", "me", json!({}), 400, "name required"),
        (
            "name null",
            "/sandboxes/src/checkpoint",
            "me",
            json!({"name": null}),
            400,
            "invalid json",
        ),
        (
            "name a number",
            "/sandboxes/src/checkpoint",
            "me",
            json!({"name": 5}),
            400,
            "invalid json",
        ),
        (
            "a body that is a list",
            "/sandboxes/src/checkpoint",
            "me",
            json!(["x"]),
            400,
            "invalid json",
        ),
        ("a space", "/sandboxes/src/checkpoint", "me", json!({"name": "a b"}), 400, "invalid name"),
        ("a slash", "/sandboxes/src/checkpoint", "me", json!({"name": "a/b"}), 400, "invalid name"),
        ("dots", "/sandboxes/src/checkpoint", "me", json!({"name": ".."}), 400, "invalid name"),
        ("64 chars", "/sandboxes/src/checkpoint", "me", json!({"name": long}), 400, "invalid name"),
        (
            "a taken name",
            "/sandboxes/src/checkpoint",
            "me",
            json!({"name": "cp1"}),
            409,
            "already exists",
        ),
        (
            "no such sandbox",
            "/sandboxes/nope/checkpoint",
            "me",
            json!({"name": "x"}),
            404,
            "not found",
        ),
        (
            "another owner's sandbox",
            "/sandboxes/src/checkpoint",
            "other",
            json!({"name": "x"}),
            404,
            "not found",
        ),
        ("another owner's snapshot", "/snapshots/cp1/resume", "other", json!({}), 404, "not found"),
        ("no such snapshot", "/snapshots/nope/resume", "me", json!({}), 404, "not found"),
        (
            "a taken sandbox name",
            "/snapshots/cp1/resume",
            "me",
            json!({"name": "clone"}),
            409,
            "already in use",
        ),
        (
            "a bad sandbox name",
            "/snapshots/cp1/resume",
            "me",
            json!({"name": "-x"}),
            400,
            "invalid name",
        ),
        (
            "a name of the wrong type",
            "/snapshots/cp1/resume",
            "me",
            json!({"name": ["x"]}),
            400,
            "invalid json",
        ),
    ];
    for (what, path, who, body, status, part) in table {
        let key = if who == "me" { d.key.clone() } else { other.clone() };
        let (got, error) = status_and_error(post(&d, &key, path, body).await).await;
        assert_eq!(got, status, "{what}: {error}");
        assert!(error.contains(part), "{what}: {error}");
    }
    // Unknown fields are ignored (v1) and named in a Warning header.
    let r = post(&d, &d.key, "/sandboxes/src/checkpoint", json!({"name": "cp1", "nmae": 1})).await;
    assert_eq!(r.status(), 409);
    assert!(r.headers().get("warning").is_some());
    // Another owner sees none of them.
    for (method, path) in [(Method::GET, "/snapshots/cp1"), (Method::DELETE, "/snapshots/cp1")] {
        assert_eq!(send(&d, &other, method, path).await.status(), 404, "{path}");
    }
    let theirs: Vec<api::Snapshot> =
        send(&d, &other, Method::GET, "/snapshots").await.json().await.unwrap();
    assert!(theirs.is_empty());

    // The quota: v1's 429 and message.
    let mut quotas = d.user.quotas;
    quotas.max_snapshots = 2;
    let uid = d.user.id.clone();
    d.state.store.write(move |s| s.set_quotas(&uid, quotas)).await.unwrap();
    let (status, error) = status_and_error(
        post(&d, &d.key, "/sandboxes/src/checkpoint", json!({"name": "third"})).await,
    )
    .await;
    assert_eq!((status, error.as_str()), (429, "snapshot limit reached (2/2)"));

    // A stopped source is refused with a clear 409.
    let r = send(&d, &d.key, Method::POST, "/sandboxes/clone/stop").await;
    assert_eq!(r.status(), 200);
    let (status, error) = status_and_error(
        post(&d, &d.key, "/sandboxes/clone/checkpoint", json!({"name": "x"})).await,
    )
    .await;
    assert_eq!(status, 409, "{error}");
    assert!(error.contains("not running") && error.contains("bhatti start clone"), "{error}");

    // Delete: the row and the files; then 404 everywhere.
    let dirs = |d: &Daemon| {
        let root = d.data.path().join("engine/checkpoints").join(&d.user.id);
        std::fs::read_dir(root).map(|e| e.count()).unwrap_or(0)
    };
    assert_eq!(dirs(&d), 2);
    let r = send(&d, &d.key, Method::DELETE, "/snapshots/cp1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<api::StatusBody>().await.unwrap().status, "deleted");
    assert_eq!(dirs(&d), 1);
    for (method, path) in [(Method::GET, "/snapshots/cp1"), (Method::DELETE, "/snapshots/cp1")] {
        assert_eq!(send(&d, &d.key, method, path).await.status(), 404, "{path}");
    }
    assert_eq!(post(&d, &d.key, "/snapshots/cp1/resume", json!({})).await.status(), 404);

    // v1's events.
    assert_eq!(events(&d, "snapshot.created").await.len(), 2);
    assert_eq!(events(&d, "snapshot.resumed").await.len(), 2);
    assert_eq!(events(&d, "snapshot.deleted").await.len(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_crud_and_a_create_from_a_template() {
    let d = Daemon::start().await;

    // TestTemplateCRUD, with v1's defaults.
    let r = post(&d, &d.key, "/templates", json!({"name": "tpl"})).await;
    assert_eq!(r.status(), 201);
    let bare: api::Template = r.json().await.unwrap();
    assert_eq!((bare.cpus, bare.memory_mb, bare.engine.as_str()), (1.0, 2048, "firecracker"));
    assert_eq!(bare.image, "test", "the daemon's default image");
    assert_eq!(bare.id.len(), 16);
    let body = json!({
        "name": "small", "image": "test", "cpus": 1, "memory_mb": 128,
        "secrets": [], "labels": {"team": "a", "tier": "dev"},
    });
    let r = post(&d, &d.key, "/templates", body).await;
    assert_eq!(r.status(), 201);
    let t: api::Template = r.json().await.unwrap();
    assert_eq!(t.labels.get("team").map(String::as_str), Some("a"));
    let list: Vec<api::Template> =
        d.req(Method::GET, "/templates").send().await.unwrap().json().await.unwrap();
    assert_eq!(list.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["small", "tpl"]);
    let got: api::Template = d
        .req(Method::GET, &format!("/templates/{}", t.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, t);

    // A create from it: the template's image, cpus and labels; the request's memory and label
    // win.
    let body = json!({"template_id": t.id, "memory_mb": 256, "labels": {"tier": "prod"}});
    let r = post(&d, &d.key, "/sandboxes", body).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let sb: api::Sandbox = r.json().await.unwrap();
    assert!(sb.name.starts_with("small-"), "{}", sb.name);
    assert_eq!((sb.template_id.as_str(), sb.image.as_str()), (t.id.as_str(), "test"));
    assert_eq!((sb.cpus, sb.memory_mb), (1.0, 256));
    assert_eq!(sb.labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(sb.labels.get("tier").map(String::as_str), Some("prod"));
    let mem = exec(&d, &sb.name, "grep MemTotal /proc/meminfo").await.stdout;
    let kib: u64 = mem.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        kib > 200 * 1024 && kib <= 256 * 1024,
        "the request's memory, not the template's: {mem}"
    );

    // Bad input.
    let table: [(&str, &str, serde_json::Value, u16, &str); 10] = [
        ("no name", "/templates", json!({"image": "test"}), 400, "name required"),
        ("a bad name", "/templates", json!({"name": "a b"}), 400, "invalid name"),
        ("cpus a string", "/templates", json!({"name": "t", "cpus": "x"}), 400, "invalid json"),
        (
            "negative memory",
            "/templates",
            json!({"name": "t", "memory_mb": -1}),
            400,
            "invalid json",
        ),
        ("negative cpus", "/templates", json!({"name": "t", "cpus": -1}), 400, "cpus must be"),
        (
            "mount with ..",
            "/templates",
            json!({"name": "t", "mounts": [{"target": "/a/../etc"}]}),
            400,
            "..",
        ),
        (
            "a reserved label",
            "/templates",
            json!({"name": "t", "labels": {"bhatti.sh/x": "y"}}),
            400,
            "reserved",
        ),
        (
            "an unknown template",
            "/sandboxes",
            json!({"template_id": "nope"}),
            404,
            "template not found",
        ),
        ("a template by a bad type", "/sandboxes", json!({"template_id": 7}), 400, "invalid json"),
        (
            "a template and a bad override",
            "/sandboxes",
            json!({"template_id": t.id, "cpus": 0}),
            400,
            "cpus",
        ),
    ];
    for (what, path, body, status, part) in table {
        let (got, error) = status_and_error(post(&d, &d.key, path, body).await).await;
        assert_eq!(got, status, "{what}: {error}");
        assert!(error.contains(part), "{what}: {error}");
    }

    // Delete: v1's answers; the sandbox made from it is untouched.
    let path = format!("/templates/{}", t.id);
    let r = d.req(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<api::StatusBody>().await.unwrap().status, "deleted");
    let (status, error) = status_and_error(d.req(Method::GET, &path).send().await.unwrap()).await;
    assert_eq!((status, error.as_str()), (404, "not found"));
    assert_eq!(d.req(Method::DELETE, &path).send().await.unwrap().status(), 404);
    let still: api::Sandbox = d
        .req(Method::GET, &format!("/sandboxes/{}", sb.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(still.template_id, t.id);
    d.stop().await;
}
