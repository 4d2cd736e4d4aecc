//! Issue 23 against a real daemon: secrets (routes, bad input, injection into a real VM's
//! execs, nothing at rest in plain text), quotas (429 with v1's messages, 507 for a disk the
//! host cannot hold), per-user rate limits (429 with `Retry-After`), and a sandbox's disk giving
//! freed space back to the host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::Daemon;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Opens one of the sandbox WebSockets, sends `first` (a start message or keystrokes) and reads
/// until `needle` shows in the output.
async fn ws_until(d: &Daemon, path: &str, first: Message, needle: &str) -> String {
    let url = format!("{}{path}", d.url.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", d.key).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(first).await.unwrap();
    let mut seen = String::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains(needle) {
        match tokio::time::timeout_at(end, ws.next()).await.expect("output within 60 s") {
            Some(Ok(Message::Binary(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(Message::Text(t))) => seen.push_str(&t),
            Some(Ok(_)) => {}
            other => panic!("ended waiting for {needle:?}: {other:?} after {seen:?}"),
        }
    }
    seen
}

async fn error_of(r: reqwest::Response) -> (u16, api::ErrorBody) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"));
    (status, body)
}

async fn exec_out(
    d: &Daemon,
    key: &str,
    sandbox: &str,
    body: serde_json::Value,
) -> api::ExecResult {
    let r = d
        .client
        .post(format!("{}/sandboxes/{sandbox}/exec", d.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    r.json().await.unwrap()
}

/// Every file under `dir` whose bytes hold `needle`, except the sandbox's own RAM and disk.
fn files_holding(dir: &Path, needle: &[u8], out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            files_holding(&path, needle, out);
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // What the guest holds (its memory and its disk) holds what the guest was given.
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
async fn secrets_bad_input_scoping_injection_and_nothing_at_rest() {
    let d = Daemon::start().await;
    // Bad input: (name, body, status, a part of the error).
    let long_name = "A".repeat(129);
    let big_value = "v".repeat(64 * 1024 + 1);
    let table: Vec<(&str, String, u16, &str)> = vec![
        ("not JSON", "{".into(), 400, "invalid json"),
        ("no fields", "{}".into(), 400, "name and value required"),
        ("no value", r#"{"name":"A"}"#.into(), 400, "name and value required"),
        ("empty value", r#"{"name":"A","value":""}"#.into(), 400, "name and value required"),
        ("no name", r#"{"value":"x"}"#.into(), 400, "name and value required"),
        ("a number as value", r#"{"name":"A","value":5}"#.into(), 400, "invalid json"),
        ("a slash in the name", r#"{"name":"a/b","value":"x"}"#.into(), 400, "invalid secret name"),
        ("= in the name", r#"{"name":"A=B","value":"x"}"#.into(), 400, "invalid secret name"),
        ("a digit first", r#"{"name":"1A","value":"x"}"#.into(), 400, "invalid secret name"),
        (
            "a name too long",
            format!(r#"{{"name":"{long_name}","value":"x"}}"#),
            400,
            "invalid secret name",
        ),
        ("NUL in the value", r#"{"name":"A","value":"a\u0000b"}"#.into(), 400, "NUL"),
        ("a value too large", format!(r#"{{"name":"A","value":"{big_value}"}}"#), 400, "at most"),
    ];
    for (name, body, status, part) in table {
        let r = d
            .req(Method::POST, "/secrets")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (got, err) = error_of(r).await;
        assert_eq!(got, status, "{name}: {err:?}");
        assert!(err.error.contains(part), "{name}: {}", err.error);
    }
    assert_eq!(d.req(Method::GET, "/secrets").send().await.unwrap().text().await.unwrap(), "[]");

    // Set, upsert, list: names and times, never the value.
    let planted = format!("planted-{}-{}", std::process::id(), d.url.len() * 7919);
    let set = |name: &'static str, value: String| {
        d.req(Method::POST, "/secrets").json(&serde_json::json!({"name": name, "value": value}))
    };
    let r = set("API_TOKEN", "first".into()).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let first: api::SecretRecord = r.json().await.unwrap();
    let r = set("API_TOKEN", planted.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&planted) && !text.contains("value"), "{text}");
    let second: api::SecretRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(second.created_at, first.created_at, "an upsert keeps created_at");
    assert!(second.updated_at >= first.updated_at);
    set("OTHER", "o".into()).send().await.unwrap();
    let list: Vec<api::SecretRecord> =
        d.req(Method::GET, "/secrets").send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["API_TOKEN", "OTHER"]);

    // Another owner sees none and cannot delete ours (404, never 403).
    let other = d.other_user("mallory").await;
    let theirs = d.client.get(format!("{}/secrets", d.url)).bearer_auth(&other).send().await;
    assert_eq!(theirs.unwrap().text().await.unwrap(), "[]");
    let r = d.client.delete(format!("{}/secrets/OTHER", d.url)).bearer_auth(&other).send().await;
    assert_eq!(r.unwrap().status(), 404);
    // Their create cannot name our secret.
    let r = d
        .client
        .post(format!("{}/sandboxes", d.url))
        .bearer_auth(&other)
        .json(&serde_json::json!({"name": "m", "memory_mb": 128, "secrets": ["API_TOKEN"]}))
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(r).await;
    assert_eq!((status, err.error.as_str()), (400, "secret \"API_TOKEN\" not found"));
    let r = d.req(Method::DELETE, "/secrets/OTHER").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<api::StatusBody>().await.unwrap().status, "deleted");
    assert_eq!(d.req(Method::DELETE, "/secrets/OTHER").send().await.unwrap().status(), 404);

    // Create-time bad input: an unknown secret (v1's 400) and a bad name; nothing is left.
    for (name, secrets, part) in [
        ("unknown", serde_json::json!(["NOPE"]), "secret \"NOPE\" not found"),
        ("bad name", serde_json::json!(["a/b"]), "invalid secret name"),
        ("not a list", serde_json::json!("API_TOKEN"), "invalid json"),
    ] {
        let body = serde_json::json!({"name": "s", "memory_mb": 128, "secrets": secrets});
        let r = d.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
        let (status, err) = error_of(r).await;
        assert_eq!(status, 400, "{name}");
        assert!(err.error.contains(part), "{name}: {}", err.error);
    }
    assert_eq!(d.req(Method::GET, "/sandboxes").send().await.unwrap().text().await.unwrap(), "[]");

    // Injected: every exec sees it; an exec's own env wins; so does a create's env below it.
    let body = serde_json::json!({
        "name": "s", "memory_mb": 128, "secrets": ["API_TOKEN", "API_TOKEN"],
        "env": {"API_TOKEN": "from-env", "PLAIN": "p"},
    });
    let r = d.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let sb: api::Sandbox = r.json().await.unwrap();
    let printenv = serde_json::json!({"cmd": ["sh", "-c", "echo \"$API_TOKEN\""]});
    let out = exec_out(&d, &d.key, "s", printenv.clone()).await;
    assert_eq!(out.stdout.trim(), planted, "{out:?}");
    let own = serde_json::json!({"cmd": ["sh", "-c", "echo \"$API_TOKEN\""], "env": {"API_TOKEN": "mine"}});
    assert_eq!(exec_out(&d, &d.key, "s", own).await.stdout.trim(), "mine");
    assert_eq!(
        exec_out(&d, &d.key, "s", serde_json::json!({"cmd": ["sh", "-c", "echo \"$PLAIN\""]}))
            .await
            .stdout
            .trim(),
        "p"
    );
    // Streaming execs too.
    let r = d
        .req(Method::POST, "/sandboxes/s/exec")
        .header("accept", api::NDJSON)
        .json(&printenv)
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains(&planted));
    // Piped sessions and terminals too.
    let start = serde_json::json!({"cmd": ["sh", "-c", "echo \"[$API_TOKEN]\""]});
    let seen = ws_until(&d, "/sandboxes/s/exec/ws", Message::text(start.to_string()), "]").await;
    assert!(seen.contains(&format!("[{planted}]")), "{seen}");
    let keys = Message::binary(b"echo \"<$API_TOKEN>\"\n".to_vec());
    let seen = ws_until(&d, "/sandboxes/s/ws?new=true", keys, &format!("<{planted}>")).await;
    assert!(seen.contains(&planted));
    // Values are the create's: a later set does not change the sandbox's.
    set("API_TOKEN", "changed".into()).send().await.unwrap();
    assert_eq!(exec_out(&d, &d.key, "s", printenv.clone()).await.stdout.trim(), planted);
    // After a restart the daemon reads them back from the store (sealed there).
    d.state.secret_envs.forget(&sb.id);
    assert_eq!(exec_out(&d, &d.key, "s", printenv.clone()).await.stdout.trim(), planted);
    // The sandbox's answers never carry them.
    let shown = d.req(Method::GET, "/sandboxes/s").send().await.unwrap().text().await.unwrap();
    assert!(!shown.contains(&planted));

    // At rest: not in the database, its WAL, the key file or anything else of the data
    // directory (the config drive included) but the guest's own RAM and disk.
    let mut found = Vec::new();
    files_holding(d.data.path(), planted.as_bytes(), &mut found);
    assert!(found.is_empty(), "the planted value is stored in plain text in {found:?}");
    assert!(d.data.path().join("state.db-wal").exists() || d.data.path().join("state.db").exists());
    let key = std::fs::metadata(d.data.path().join("age.key")).unwrap();
    assert_eq!(key.mode() & 0o777, 0o600);
    // Control: the grep finds a value that is there (the create's plain env is on the drive).
    let mut control = Vec::new();
    files_holding(d.data.path(), b"from-env", &mut control);
    assert!(!control.is_empty(), "the search finds what is stored");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_with_v1s_messages() {
    let d = Daemon::start().await;
    let id = d.user.id.clone();
    let quotas = store::Quotas {
        max_sandboxes: 2,
        max_disk_mb: 2048,
        max_concurrent_execs: 1,
        ..store::Quotas::default()
    };
    d.state.store.write(move |s| s.set_quotas(&id, quotas)).await.unwrap();
    let create = |body: serde_json::Value| d.req(Method::POST, "/sandboxes").json(&body).send();
    // (name, body, status, error, code).
    let table = [
        (
            "cpus over the quota",
            serde_json::json!({"cpus": 5}),
            400,
            "max 4 CPUs per sandbox",
            "invalid",
        ),
        (
            "memory over the quota",
            serde_json::json!({"memory_mb": 8192}),
            400,
            "max 4096 MB memory per sandbox",
            "invalid",
        ),
        (
            "a disk over the user's disk quota",
            serde_json::json!({"memory_mb": 128, "disk_size_mb": 4096}),
            429,
            "disk quota exceeded (0MB used, 2048MB max)",
            "limit",
        ),
        (
            "a 1 TiB disk on this host",
            serde_json::json!({"memory_mb": 128, "disk_size_mb": 1_048_576}),
            507,
            "disk_size_mb: 1048576 MB asked, the host has",
            "insufficient_storage",
        ),
    ];
    for (name, body, status, part, code) in table {
        let (got, err) = error_of(create(body).await.unwrap()).await;
        assert_eq!((got, err.code.as_str()), (status, code), "{name}: {err:?}");
        assert!(err.error.contains(part), "{name}: {}", err.error);
    }
    assert_eq!(d.req(Method::GET, "/sandboxes").send().await.unwrap().text().await.unwrap(), "[]");
    // The disk quota counts the live sandboxes' disks.
    let r = create(serde_json::json!({"name": "a", "memory_mb": 128, "disk_size_mb": 1536}));
    assert_eq!(r.await.unwrap().status(), 201);
    let r = create(serde_json::json!({"name": "b", "memory_mb": 128, "disk_size_mb": 1024}));
    let (got, err) = error_of(r.await.unwrap()).await;
    assert_eq!((got, err.error.as_str()), (429, "disk quota exceeded (1536MB used, 2048MB max)"));
    d.create("b").await;
    // v1's TestSandboxCountLimit.
    let (got, err) = error_of(create(serde_json::json!({"name": "c"})).await.unwrap()).await;
    assert_eq!(
        (got, err.error.as_str(), err.code.as_str()),
        (429, "sandbox limit reached (2/2)", "limit")
    );

    // Concurrent execs: one at a time for this user; the second is refused while the first
    // runs (streamed, so it is counted until its body ends), then allowed.
    let long = d
        .req(Method::POST, "/sandboxes/a/exec")
        .header("accept", api::NDJSON)
        .json(&serde_json::json!({"cmd": ["sh", "-c", "echo started; sleep 4"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 200);
    let r = d
        .req(Method::POST, "/sandboxes/b/exec")
        .json(&serde_json::json!({"cmd": ["true"]}))
        .send()
        .await
        .unwrap();
    let (got, err) = error_of(r).await;
    assert_eq!(
        (got, err.error.as_str(), err.code.as_str()),
        (429, "exec limit reached (1/1)", "limit")
    );
    // Another user has their own count.
    let other = d.other_user("olga").await;
    let r = d
        .client
        .post(format!("{}/sandboxes/a/exec", d.url))
        .bearer_auth(&other)
        .json(&serde_json::json!({"cmd": ["true"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "not theirs, and not a 429");
    assert!(long.text().await.unwrap().contains("\"exit\""));
    common::until("the exec's place comes back", Duration::from_secs(10), || async {
        d.state.exec_slots.running(&d.user.id) == 0
    })
    .await;
    d.sh("b", "true").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after_per_user_and_class() {
    let d = Daemon::start_with(|s| {
        s.rate_limits.create = server::rate_limits::Rate { burst: 2.0, per_minute: 6.0 };
        s.rate_limits.read = server::rate_limits::Rate { burst: 3.0, per_minute: 1.0 };
    })
    .await;
    // Reads: the burst of 3, then 429 with v1's message and a wait of a minute per token.
    for _ in 0..3 {
        assert_eq!(d.req(Method::GET, "/sandboxes").send().await.unwrap().status(), 200);
    }
    let r = d.req(Method::GET, "/secrets").send().await.unwrap();
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "{retry}");
    let (status, err) = error_of(r).await;
    assert_eq!(
        (status, err.error.as_str(), err.code.as_str()),
        (429, "rate limit exceeded", "rate_limited")
    );
    // Creates have their own bucket (bad ones count: the limit comes before the handler).
    for _ in 0..2 {
        let r = d.req(Method::POST, "/sandboxes").json(&serde_json::json!({"cpus": -1})).send();
        assert_eq!(r.await.unwrap().status(), 400);
    }
    let r = d.req(Method::POST, "/sandboxes").json(&serde_json::json!({"cpus": -1})).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry, 10, "6 a minute: one token every 10 s");
    // Another user is not limited by this one; /health is never limited.
    let other = d.other_user("olga").await;
    let r = d.client.get(format!("{}/sandboxes", d.url)).bearer_auth(&other).send().await;
    assert_eq!(r.unwrap().status(), 200);
    for _ in 0..5 {
        let r = d.client.get(format!("{}/health", d.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(d.state.rate_limits.refused() >= 2);
    d.stop().await;
}

/// Allocated bytes of a file (its blocks, not its length).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_gives_its_space_back_to_the_host() {
    const MIB: u64 = 1024 * 1024;
    let d = Daemon::start().await;
    let body = serde_json::json!({"name": "trim", "memory_mb": 256, "disk_size_mb": 1024});
    let r = d.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let sb: api::Sandbox = r.json().await.unwrap();
    let overlay = d.data.path().join("engine/sandboxes").join(&sb.id).join("root.qcow2");
    assert!(overlay.exists(), "{}", overlay.display());
    let before = allocated(&overlay);
    d.sh("trim", "dd if=/dev/zero of=/home/lohar/big bs=1M count=200 2>/dev/null && sync").await;
    let full = allocated(&overlay);
    assert!(full >= before + 190 * MIB, "200 MiB written: {before} -> {full}");
    d.sh("trim", "rm /home/lohar/big && sync").await;
    // ext4 (mounted with `discard`) discards at the journal commit the sync forces; QEMU
    // (`discard=unmap`) frees the overlay's clusters.
    let mut now = full;
    common::until("the overlay to shrink", Duration::from_secs(30), || {
        now = allocated(&overlay);
        let shrunk = now + 150 * MIB <= full;
        async move { shrunk }
    })
    .await;
    eprintln!(
        "overlay allocated: {} MiB before, {} MiB with the file, {} MiB after rm",
        before / MIB,
        full / MIB,
        now / MIB
    );
    d.stop().await;
}
