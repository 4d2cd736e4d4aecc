//! The API against a real daemon with real VMs: sandbox CRUD, exec in all three modes, files,
//! auth and owner scoping, and the 4xx answers for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Daemon;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_health_and_bad_requests() {
    let d = Daemon::start().await;
    let health = d.client.get(format!("{}/health", d.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()[api::VERSION_HEADER], api::VERSION);
    // v1's uptime beside the version: a Go duration in whole seconds.
    let health: serde_json::Value = health.json().await.unwrap();
    let uptime = health["uptime"].as_str().unwrap_or_else(|| panic!("no uptime: {health}"));
    assert!(uptime.ends_with('s') && uptime.len() >= 2, "{uptime}");
    assert_eq!(health["version"], api::VERSION);
    // Everything else needs a key; the clean path decides, so a dot-dot does not bypass.
    for path in ["/sandboxes", "/health/../sandboxes", "/health/%2e%2e/sandboxes"] {
        let r = d.client.get(format!("{}{path}", d.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers().contains_key(api::VERSION_HEADER));
        let body: api::ErrorBody = r.json().await.unwrap();
        assert_eq!(body.error, "authorization required");
    }
    let wrong = d.client.get(format!("{}/sandboxes", d.url)).bearer_auth("bht_nope").send().await;
    let wrong = wrong.unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.json::<api::ErrorBody>().await.unwrap().error, "invalid api key");
    // A query token is no key for plain routes.
    let q = d.client.get(format!("{}/sandboxes?token={}", d.url, d.key)).send().await.unwrap();
    assert_eq!(q.status(), 401);

    let list = d.req(Method::GET, "/sandboxes").send().await.unwrap();
    assert_eq!(list.status(), 200);
    assert_eq!(list.text().await.unwrap(), "[]");
    // The scheme is case-insensitive (RFC 9110); the key is not.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = d
            .client
            .get(format!("{}/sandboxes", d.url))
            .header("authorization", format!("{scheme} {}", d.key))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    let r = d
        .client
        .get(format!("{}/sandboxes", d.url))
        .header("authorization", format!("Bearer {}", d.key.to_uppercase()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Malformed, unknown fields, oversize, bad names, bad labels: 4xx that say what is wrong.
    let bad = |body: &'static str| {
        d.req(Method::POST, "/sandboxes").header("content-type", "application/json").body(body)
    };
    let r = bad("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<api::ErrorBody>().await.unwrap().error.starts_with("invalid json"));
    // Unknown fields are ignored, as v1 does, and named in a Warning header (the unknown image
    // keeps this from booting anything).
    let r = bad(r#"{"nmae":"x","net_policy":{"allow":["x"]},"image":"nope"}"#).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 404, "the request went through to the image lookup");
    let warning = r.headers()["warning"].to_str().unwrap().to_owned();
    assert!(warning.starts_with("299 ") && warning.contains("nmae"), "{warning}");
    assert!(warning.contains("net_policy.allow"), "nested ones too: {warning}");
    // A wrong type or a body that is no object is a 400 naming what is wrong.
    let r = bad(r#"{"name":5}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<api::ErrorBody>().await.unwrap().error.contains("name:"));
    for body in ["[]", "5", r#""x""#, "null"] {
        let r = bad(body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let error = r.json::<api::ErrorBody>().await.unwrap().error;
        assert!(error.contains("JSON object"), "{body}: {error}");
    }
    let huge = format!(r#"{{"name":"x","init":"{}"}}"#, "a".repeat(2 << 20));
    let r = d.req(Method::POST, "/sandboxes").body(huge).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let r = bad(r#"{"name":"-bad"}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = bad(r#"{"name":"ok","labels":{"bhatti.sh/x":"y"}}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = bad(r#"{"name":"ok","image":"../../etc"}"#).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = bad(r#"{"name":"ok","cpus":64}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // Silently coerced before: refused now, each naming its field.
    let refused = [
        (r#"{"name":"z","cpus":0}"#, "cpus"),
        (r#"{"name":"z","cpus":-1}"#, "cpus"),
        (r#"{"name":"z","memory_mb":0}"#, "memory_mb"),
        (r#"{"name":"z","memory_mb":-1}"#, "memory_mb"),
        (r#"{"name":"z","env":{"":"x"}}"#, "env"),
        (r#"{"name":"z","env":{"A=B":"x"}}"#, "env"),
        (r#"{"name":"z","env":{"A\u0000":"x"}}"#, "env"),
        (r#"{"name":"z","files":[{"guest_path":"/x","content":"","mode":"rw-r--r--"}]}"#, "mode"),
    ];
    for (body, field) in refused {
        let r = bad(body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let error = r.json::<api::ErrorBody>().await.unwrap().error;
        assert!(error.contains(field), "{body}: {error}");
    }
    let r = d.req(Method::GET, "/sandboxes/z").send().await.unwrap();
    assert_eq!(r.status(), 404, "nothing of the refused creates is left");
    let r = d.req(Method::GET, "/sandboxes/nope").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = d.req(Method::GET, "/sandboxes?label=novalue").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = d.req(Method::PATCH, "/health").send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = d.req(Method::GET, "/nowhere").send().await.unwrap();
    assert_eq!(r.status(), 404);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_lifecycle_exec_and_files() {
    let d = Daemon::start().await;
    let created = d.create("dev").await;
    assert_eq!((created.name.as_str(), created.status.as_str()), ("dev", "running"));
    assert!(!created.ip.is_empty());
    // Idempotent by name.
    let again = d
        .req(Method::POST, "/sandboxes")
        .json(&serde_json::json!({"name": "dev", "memory_mb": 512}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()[api::EXISTING_HEADER], "true");
    assert_eq!(again.json::<api::Sandbox>().await.unwrap().id, created.id);
    // By name and by ID; the list shows the engine's thermal state.
    for key in ["dev", created.id.as_str()] {
        let got: api::Sandbox = d
            .req(Method::GET, &format!("/sandboxes/{key}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got.id, created.id);
    }
    let list: Vec<api::Sandbox> =
        d.req(Method::GET, "/sandboxes").send().await.unwrap().json().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].thermal.as_deref(), Some("hot"));

    // Exec, buffered.
    let r = d
        .req(Method::POST, "/sandboxes/dev/exec")
        .json(&serde_json::json!({"cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: api::ExecResult = r.json().await.unwrap();
    assert_eq!((out.exit_code, out.stdout.as_str(), out.stderr.as_str()), (3, "out\n", "err\n"));
    // Streaming: one event per output frame, as it happens; exit last.
    let r = d
        .req(Method::POST, "/sandboxes/dev/exec")
        .header("accept", api::NDJSON)
        .json(&serde_json::json!({"cmd": ["sh", "-c", "echo one; sleep 1; echo two"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], api::NDJSON);
    let mut r = r;
    let mut first_at = None;
    let started = std::time::Instant::now();
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        first_at.get_or_insert(started.elapsed());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<api::ExecEvent> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.last(), Some(&api::ExecEvent::Exit { exit_code: 0 }));
    let out: String = events
        .iter()
        .filter_map(|e| match e {
            api::ExecEvent::Stdout { data } => Some(data.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(out, "one\ntwo\n");
    // The first line came before the command's second half ran.
    assert!(first_at.unwrap() < started.elapsed() - std::time::Duration::from_millis(500));
    // Detached.
    let r = d
        .req(Method::POST, "/sandboxes/dev/exec")
        .json(&serde_json::json!({"cmd": ["sh", "-c", "echo bg"], "detach": true}))
        .send()
        .await
        .unwrap();
    let det: api::DetachedResult = r.json().await.unwrap();
    assert!(det.detached && det.pid > 0 && det.output_file.starts_with("/tmp/bhatti-exec-"));
    let r = d
        .req(Method::POST, "/sandboxes/dev/exec")
        .json(&serde_json::json!({"cmd": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Files: write (streamed), read with the size first, stat, list.
    let data = vec![b'q'; 300_000];
    let r = d
        .req(Method::PUT, "/sandboxes/dev/files?path=/home/lohar/a.bin&mode=0600")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = d.req(Method::GET, "/sandboxes/dev/files?path=/home/lohar/a.bin").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[api::FILE_SIZE_HEADER], "300000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    let r = d
        .req(Method::GET, "/sandboxes/dev/files?path=/home/lohar/a.bin&max_bytes=10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[api::FILE_SIZE_HEADER], "300000");
    assert_eq!(r.bytes().await.unwrap().len(), 10);
    let r =
        d.req(Method::HEAD, "/sandboxes/dev/files?path=/home/lohar/a.bin").send().await.unwrap();
    assert_eq!(r.headers()[api::FILE_MODE_HEADER], "0600");
    assert_eq!(r.headers()[api::FILE_IS_DIR_HEADER], "false");
    let r = d.req(Method::HEAD, "/sandboxes/dev/files?path=/nope").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let list: Vec<api::FileInfo> = d
        .req(Method::GET, "/sandboxes/dev/files?path=/home/lohar&ls=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.iter().any(|f| f.name == "a.bin" && f.size == 300_000));
    let r =
        d.req(Method::GET, "/sandboxes/dev/files?path=/home/lohar/missing").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = d.req(Method::GET, "/sandboxes/dev/files").send().await.unwrap();
    assert_eq!(r.status(), 400);
    // Chunked (no Content-Length): refused before anything reaches the guest.
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(vec![1u8; 10])]);
    let r = d
        .req(Method::PUT, "/sandboxes/dev/files?path=/home/lohar/c.bin")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Another owner sees nothing: not found, never forbidden.
    let other = d.other_user("mallory").await;
    let r = d.client.get(format!("{}/sandboxes/dev", d.url)).bearer_auth(&other).send().await;
    assert_eq!(r.unwrap().status(), 404);
    let r = d
        .client
        .post(format!("{}/sandboxes/{}/exec", d.url, created.id))
        .bearer_auth(&other)
        .json(&serde_json::json!({"cmd": ["true"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // PATCH: rename, labels, keep-hot; a taken name is a conflict.
    d.create("other").await;
    let patch = |body: serde_json::Value| d.req(Method::PATCH, "/sandboxes/dev").json(&body).send();
    let r = patch(serde_json::json!({"name": "other"})).await.unwrap();
    assert_eq!(r.status(), 409);
    let r = patch(serde_json::json!({"labels_add": {"team": "infra"}, "keep_hot": true}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: api::Sandbox = r.json().await.unwrap();
    assert!(got.keep_hot && got.labels["team"] == "infra");
    let r = patch(serde_json::json!({"labels_remove": ["team"], "keep_hot": false})).await.unwrap();
    assert!(r.json::<api::Sandbox>().await.unwrap().labels.is_empty());
    let r = patch(serde_json::json!({"labels_add": {"bhatti.sh/x": "y"}})).await.unwrap();
    assert_eq!(r.status(), 400);
    let filtered: Vec<api::Sandbox> = d
        .req(Method::GET, "/sandboxes?label=team=infra")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(filtered.is_empty());
    let r = d.req(Method::DELETE, "/sandboxes/other").send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Stop and start, both idempotent; files survive.
    for _ in 0..2 {
        let r = d.req(Method::POST, "/sandboxes/dev/stop").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<api::Sandbox>().await.unwrap().status, "stopped");
    }
    for _ in 0..2 {
        let r = d.req(Method::POST, "/sandboxes/dev/start").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<api::Sandbox>().await.unwrap().status, "running");
    }
    let r = d.req(Method::GET, "/sandboxes/dev/files?path=/home/lohar/a.bin").send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 300_000);

    let r = d.req(Method::DELETE, "/sandboxes/dev").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<api::StatusBody>().await.unwrap().status, "destroyed");
    let r = d.req(Method::GET, "/sandboxes/dev").send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The name is free again.
    d.create("dev").await;
    d.stop().await;
}

/// v1's fractional `cpus` is a CPU-time bound on the sandbox's vCPUs (its cgroup); a fraction
/// below the kernel's smallest quota is a clear 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fractional_cpus_bound_the_guest_and_nonsense_is_refused() {
    let d = Daemon::start().await;
    let body = serde_json::json!({"name": "half", "memory_mb": 128, "cpus": 0.5});
    let r = d.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let sandbox: api::Sandbox = r.json().await.unwrap();
    let pid_file = d.data.path().join("engine/sandboxes").join(&sandbox.id).join("qemu.pid");
    let pid = std::fs::read_to_string(pid_file).unwrap().trim().to_owned();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // This host has cgroup v1 (the engine's tests say so); the cpu controller's line.
    let cpu = cgroups
        .lines()
        .find_map(|l| l.split_once(":cpu:").map(|(_, path)| path.to_owned()))
        .unwrap_or_else(|| panic!("no cpu controller in {cgroups}"));
    let quota =
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{cpu}/vcpus/cpu.cfs_quota_us")).unwrap();
    assert_eq!(quota.trim(), "50000", "half of a 100 ms period");

    let tiny = serde_json::json!({"name": "tiny", "memory_mb": 128, "cpus": 0.001});
    let r = d.req(Method::POST, "/sandboxes").json(&tiny).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("cpus"), "{text}");
    // Nothing of the refused sandbox stays.
    let r = d.req(Method::GET, "/sandboxes").send().await.unwrap();
    let names: Vec<api::Sandbox> = r.json().await.unwrap();
    let names: Vec<&str> = names.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["half"]);
    d.stop().await;
}
