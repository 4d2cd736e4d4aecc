//! `bhatti serve` as a real process with real VMs: killed with SIGKILL while sandboxes are hot,
//! warm and cold, started again, every sandbox comes back usable with its files and its name; a
//! clean SIGTERM suspends everything and the next start wakes sandboxes with their memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Setup;
use reqwest::Method;

async fn exec(s: &Setup, name: &str, cmd: &[&str]) -> api::ExecResult {
    let r = s
        .req(Method::POST, &format!("/sandboxes/{name}/exec"))
        .json(&serde_json::json!({ "cmd": cmd }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    r.json().await.unwrap()
}

async fn write_file(s: &Setup, name: &str, path: &str, data: &str) {
    let r = s
        .req(Method::PUT, &format!("/sandboxes/{name}/files?path={path}"))
        .body(data.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn read_file(s: &Setup, name: &str, path: &str) -> String {
    let r =
        s.req(Method::GET, &format!("/sandboxes/{name}/files?path={path}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{name}:{path}");
    r.text().await.unwrap()
}

async fn thermal_of(s: &Setup, name: &str) -> Option<String> {
    let r = s.req(Method::GET, &format!("/sandboxes/{name}")).send().await.unwrap();
    r.json::<api::Sandbox>().await.unwrap().thermal
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_loses_no_sandbox_and_a_stopped_one_keeps_memory() {
    let mut s = Setup::new();
    // Idle sandboxes go warm after a second; `hot` is kept hot, `cold` is stopped by hand.
    std::fs::write(&s.config, "log_format: text\nthermal: {warm_after_secs: 1, tick_secs: 1}\n")
        .unwrap();
    s.start().await;
    for name in ["hot", "warm", "cold"] {
        let body = serde_json::json!({ "name": name, "memory_mb": 128, "keep_hot": name == "hot" });
        let r = s.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        write_file(&s, name, "/home/lohar/note.txt", &format!("kept by {name}")).await;
    }
    let r = s.req(Method::POST, "/sandboxes/cold/stop").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while thermal_of(&s, "warm").await.as_deref() != Some("warm") {
        assert!(std::time::Instant::now() < deadline, "never went warm: {}", s.logs());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(thermal_of(&s, "hot").await.as_deref(), Some("hot"));

    // SIGKILL: no shutdown code runs; the hot and warm QEMUs are orphaned.
    s.kill();
    s.start().await;
    let list: Vec<api::Sandbox> =
        s.req(Method::GET, "/sandboxes").send().await.unwrap().json().await.unwrap();
    let mut names: Vec<&str> = list.iter().map(|x| x.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["cold", "hot", "warm"], "{}", s.logs());
    // Its user stopped `cold`: it stays stopped across the restart until `start`.
    let r = s
        .req(Method::POST, "/sandboxes/cold/exec")
        .json(&serde_json::json!({ "cmd": ["true"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "{}", s.logs());
    assert_eq!(r.json::<api::ErrorBody>().await.unwrap().code, "not_running");
    let r = s.req(Method::POST, "/sandboxes/cold/start").send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", s.logs());
    for name in ["hot", "warm", "cold"] {
        assert_eq!(read_file(&s, name, "/home/lohar/note.txt").await, format!("kept by {name}"));
        assert_eq!(exec(&s, name, &["echo", "alive"]).await.stdout, "alive\n");
    }

    // A process started now survives a clean stop of the daemon: SIGTERM suspends with memory.
    let r = s
        .req(Method::POST, "/sandboxes/hot/exec")
        .json(&serde_json::json!({ "cmd": ["sleep", "600"], "detach": true }))
        .send()
        .await
        .unwrap();
    let pid = r.json::<api::DetachedResult>().await.unwrap().pid;
    let status = s.terminate();
    assert!(status.success(), "{status}: {}", s.logs());
    s.start().await;
    let alive = exec(&s, "hot", &["kill", "-0", &pid.to_string()]).await;
    assert_eq!(alive.exit_code, 0, "the process did not survive: {}", s.logs());
    assert_eq!(read_file(&s, "cold", "/home/lohar/note.txt").await, "kept by cold");
    let status = s.terminate();
    assert!(status.success(), "{status}");
}

/// PIDs of QEMUs whose command line names `needle`.
fn qemus_naming(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline);
        if text.contains("qemu-system") && text.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// A daemon SIGKILLed while a create boots leaves no row that `GET` shows but `exec` and
/// `start` call missing: recovery abandons the create, its QEMU goes, and the name is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_create_leaves_no_half_sandbox() {
    let mut s = Setup::new();
    s.start().await;
    let body = serde_json::json!({ "name": "halfway", "memory_mb": 128 });
    let create = tokio::spawn(s.req(Method::POST, "/sandboxes").json(&body).send());
    // Killed once the create's QEMU runs (the row says `creating`).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let id = loop {
        let r = s.req(Method::GET, "/sandboxes/halfway").send().await.unwrap();
        if r.status() == 200 {
            let row: api::Sandbox = r.json().await.unwrap();
            assert_eq!(row.status, "creating");
            if !qemus_naming(&row.id).is_empty() {
                break row.id;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no booting create: {}", s.logs());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    s.kill();
    assert!(create.await.unwrap().is_err(), "the create's connection died with the daemon");
    s.start().await;
    let r = s.req(Method::GET, "/sandboxes/halfway").send().await.unwrap();
    assert_eq!(r.status(), 404, "no half sandbox is shown: {}", s.logs());
    let list: Vec<api::Sandbox> =
        s.req(Method::GET, "/sandboxes").send().await.unwrap().json().await.unwrap();
    assert!(list.is_empty(), "{list:?}");
    assert_eq!(qemus_naming(&id), Vec::<i32>::new(), "the orphaned QEMU is gone");
    // The name is free again.
    let r = s.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", s.logs());
    assert_eq!(exec(&s, "halfway", &["echo", "whole"]).await.stdout, "whole\n");
    let status = s.terminate();
    assert!(status.success(), "{status}");
}

/// Issue 19 item 3: the first start's admin key goes to `<data_dir>/admin.key` (0600) and to
/// stderr only when stderr is a terminal. The harness gives the daemon files for stdout and
/// stderr, as the quickstart's background daemon has (`>>bhatti.log 2>&1`): neither may hold
/// the key, and the log says where the key is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_key_reaches_its_file_and_never_the_log() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Setup::new();
    s.start().await;
    let key = s.key();
    assert!(key.starts_with("bht_") && key.len() > 20, "{key:?}");
    let file = s.data.path().join("state/admin.key");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.key is {mode:o}");
    // The key works (the harness's requests use it).
    let r = s.req(Method::GET, "/sandboxes").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A client that puts its key in a path (a 404 here, a 400 on the proxy) does not get it
    // into the request log either: the line shows no path.
    for path in [format!("/sandboxes/{key}"), format!("/sandboxes/x/proxy/80/{key}")] {
        let r = s.req(Method::GET, &path).send().await.unwrap();
        assert!(r.status() == 404 || r.status() == 400, "{path}: {}", r.status());
    }
    let status = s.terminate();
    assert!(status.success(), "{status}");
    let logs = s.logs();
    assert!(!logs.contains(&key), "the admin key is in the daemon's output:\n{logs}");
    assert!(logs.contains("admin.key"), "the log does not say where the key is:\n{logs}");
    // A second start makes no new key and prints none either.
    s.start().await;
    assert_eq!(s.key(), key);
    let status = s.terminate();
    assert!(status.success(), "{status}");
    assert!(!s.logs().contains(&key));
}

/// Issue 19 item 2, end to end: `bhatti serve` gives both its listeners (TCP and
/// `<data_dir>/api.sock`) the configured connection deadlines. Half a request head is cut
/// after `http.header_read_timeout_secs`; a normal request is still answered on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_cuts_half_sent_requests_on_both_listeners() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    async fn cut_after<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Duration {
        let since = Instant::now();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
            match read.expect("a half-sent request head still open after 10 s") {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    }
    async fn health<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> String {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        answer
    }

    let mut s = Setup::new();
    std::fs::write(
        &s.config,
        "log_format: text\nhttp: {header_read_timeout_secs: 1, idle_timeout_secs: 2}\n",
    )
    .unwrap();
    s.start().await;
    let addr = format!("127.0.0.1:{}", s.port);
    let socket = s.data.path().join("state/api.sock");
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let unix = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (tcp_cut, unix_cut) = tokio::join!(cut_after(tcp), cut_after(unix));
    for (name, took) in [("tcp", tcp_cut), ("unix", unix_cut)] {
        assert!(took >= Duration::from_millis(900), "{name}: cut after {took:?}");
        assert!(took < Duration::from_secs(5), "{name}: cut after {took:?}");
    }
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(health(tcp).await.starts_with("HTTP/1.1 200"));
    let unix = tokio::net::UnixStream::connect(&socket).await.unwrap();
    assert!(health(unix).await.starts_with("HTTP/1.1 200"));
    let status = s.terminate();
    assert!(status.success(), "{status}");
}

/// Issue 19 item 3, the other half: started from a terminal, the first start prints the key
/// there once (the same key as in `admin.key`).
#[test]
fn from_a_terminal_the_first_admin_key_is_printed_there() {
    let s = Setup::new();
    let mut p = expectrl::Session::spawn(s.serve_command()).unwrap();
    p.set_expect_timeout(Some(std::time::Duration::from_secs(60)));
    let found = p.expect(expectrl::Regex(r"admin API key \(also in [^)]*\): (bht_[0-9a-f]+)"));
    let found = found.unwrap();
    let printed = String::from_utf8_lossy(found.get(1).unwrap()).into_owned();
    p.expect("bhatti serve started").unwrap();
    let pid = nix::unistd::Pid::from_raw(p.get_process().pid().as_raw());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    p.expect(expectrl::Eof).unwrap();
    assert_eq!(printed, s.key());
}
