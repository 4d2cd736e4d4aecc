//! Directory watches against the real lohar in test mode, on a host temp dir: every event
//! kind, a recursive watch into a new subdirectory, overflow, bad paths, the host going away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use agent::{AgentErrorKind, WatchEvent, WatchKind, WatchStream};
use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// Reads events until one of `kind` for `name` arrives (bounded); returns everything read.
async fn until(stream: &mut WatchStream, name: &str, kind: WatchKind) -> Vec<WatchEvent> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} of {name:?} within {WAIT:?}; saw {seen:?}"))
            .expect("the watch ended")
            .unwrap();
        let hit = event.name == name && event.kind == kind;
        seen.push(event);
        if hit {
            return seen;
        }
    }
}

fn watched(lohar: &Lohar, name: &str) -> std::path::PathBuf {
    let dir = lohar.dir.join(name);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn every_event_kind_is_reported_with_its_name() {
    let lohar = Lohar::start();
    let dir = watched(&lohar, "w");
    let client = lohar.client();
    let mut stream = client.watch(dir.to_str().unwrap(), false).await.unwrap();

    fs::File::create(dir.join("a.txt")).unwrap();
    until(&mut stream, "a.txt", WatchKind::Create).await;
    fs::write(dir.join("a.txt"), b"hello").unwrap();
    until(&mut stream, "a.txt", WatchKind::Write).await;
    fs::set_permissions(dir.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    until(&mut stream, "a.txt", WatchKind::Chmod).await;
    fs::rename(dir.join("a.txt"), dir.join("b.txt")).unwrap();
    let seen = until(&mut stream, "b.txt", WatchKind::Create).await;
    assert!(
        seen.iter().any(|e| e.name == "a.txt" && e.kind == WatchKind::Rename),
        "the old name as rename before the new one: {seen:?}"
    );
    fs::remove_file(dir.join("b.txt")).unwrap();
    until(&mut stream, "b.txt", WatchKind::Remove).await;
    fs::create_dir(dir.join("sub")).unwrap();
    until(&mut stream, "sub", WatchKind::Create).await;
    // Not recursive: a file in the new directory is not reported, the next top-level one is.
    fs::write(dir.join("sub/inner.txt"), b"x").unwrap();
    fs::write(dir.join("marker"), b"x").unwrap();
    let seen = until(&mut stream, "marker", WatchKind::Create).await;
    assert!(!seen.iter().any(|e| e.name.contains("inner")), "{seen:?}");
}

#[tokio::test]
async fn the_agents_atomic_write_is_a_create_and_a_write_of_the_target() {
    let lohar = Lohar::start();
    let dir = watched(&lohar, "w");
    let client = lohar.client();
    let mut stream = client.watch(dir.to_str().unwrap(), false).await.unwrap();
    client.file_write(dir.join("f.txt").to_str().unwrap(), "0644", b"data").await.unwrap();
    let mut seen = until(&mut stream, "f.txt", WatchKind::Create).await;
    seen.extend(until(&mut stream, "f.txt", WatchKind::Write).await);
    assert!(!seen.iter().any(|e| e.name.contains("bhatti-tmp")), "temp file shown: {seen:?}");
}

#[tokio::test]
async fn a_recursive_watch_follows_new_subdirectories() {
    let lohar = Lohar::start();
    let dir = watched(&lohar, "w");
    fs::create_dir_all(dir.join("old/deeper")).unwrap();
    let client = lohar.client();
    let mut stream = client.watch(dir.to_str().unwrap(), true).await.unwrap();

    fs::write(dir.join("old/deeper/x"), b"1").unwrap();
    until(&mut stream, "old/deeper/x", WatchKind::Create).await;
    fs::create_dir(dir.join("new")).unwrap();
    until(&mut stream, "new", WatchKind::Create).await;
    fs::write(dir.join("new/y.txt"), b"2").unwrap();
    until(&mut stream, "new/y.txt", WatchKind::Create).await;
    // A tree made in one go (faster than the watch can be added) is still reported.
    fs::create_dir_all(dir.join("a/b/c")).unwrap();
    fs::write(dir.join("a/b/c/z"), b"3").unwrap();
    until(&mut stream, "a/b/c/z", WatchKind::Create).await;
    fs::remove_file(dir.join("new/y.txt")).unwrap();
    until(&mut stream, "new/y.txt", WatchKind::Remove).await;
}

#[tokio::test]
async fn a_host_that_does_not_read_gets_an_overflow_and_the_agent_stays_responsive() {
    let lohar = Lohar::start();
    let dir = watched(&lohar, "w");
    let client = lohar.client();
    let mut stream = client.watch(dir.to_str().unwrap(), false).await.unwrap();
    // Far more events than the socket buffers, the client's buffer (256) and the agent's
    // queue (1024) hold, while nobody reads.
    let files = 12_000;
    let d = dir.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..files {
            fs::write(d.join(format!("f{i}")), b"x").unwrap();
        }
    })
    .await
    .unwrap();
    // The agent serves other requests meanwhile.
    let started = Instant::now();
    assert_eq!(client.exec(&["true"]).await.unwrap().exit_code, 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Now read: an overflow comes, and afterwards new events again.
    let seen = until(&mut stream, "", WatchKind::Overflow).await;
    assert!(seen.len() < 2 * files, "{} events read", seen.len());
    fs::write(dir.join("after"), b"x").unwrap();
    until(&mut stream, "after", WatchKind::Create).await;
}

#[tokio::test]
async fn a_link_to_a_directory_is_watched_as_the_directory() {
    let lohar = Lohar::start();
    let dir = watched(&lohar, "real");
    let link = lohar.dir.join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let client = lohar.client();
    let mut stream = client.watch(link.to_str().unwrap(), false).await.unwrap();
    fs::write(dir.join("x"), b"1").unwrap();
    until(&mut stream, "x", WatchKind::Create).await;
}

#[tokio::test]
async fn bad_paths_are_clear_errors() {
    let lohar = Lohar::start();
    let file = lohar.dir.join("plain");
    fs::write(&file, b"x").unwrap();
    let client = lohar.client();
    let missing = lohar.path("nope");
    let rows = [
        (
            "missing",
            missing.clone(),
            AgentErrorKind::NotFound,
            format!("watch {missing}: no such file or directory"),
        ),
        (
            "a file",
            file.display().to_string(),
            AgentErrorKind::NotADirectory,
            format!("watch {}: not a directory", file.display()),
        ),
    ];
    for (name, path, kind, message) in rows {
        let err = client.watch(&path, false).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{name}: {err}");
        assert_eq!(err.to_string(), format!("agent error: {message}"), "{name}");
    }
    // The client still works.
    assert_eq!(client.exec(&["true"]).await.unwrap().exit_code, 0);
}

/// inotify descriptors the process holds.
fn inotify_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("inotify")))
        .count()
}

#[tokio::test]
async fn dropping_the_stream_ends_the_watch_in_the_agent() {
    let lohar = Lohar::start();
    let dir = watched(&lohar, "w");
    let client = lohar.client();
    let pid = lohar.process.pid();
    let mut stream = client.watch(dir.to_str().unwrap(), true).await.unwrap();
    let second = client.watch(dir.to_str().unwrap(), false).await.unwrap();
    assert_eq!(inotify_fds(pid), 2);
    fs::write(dir.join("x"), b"1").unwrap();
    until(&mut stream, "x", WatchKind::Create).await;
    drop(stream);
    let deadline = Instant::now() + WAIT;
    while inotify_fds(pid) != 1 {
        assert!(Instant::now() < deadline, "the agent kept the dropped watch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(second);
    while inotify_fds(pid) != 0 {
        assert!(Instant::now() < deadline, "the agent kept the dropped watch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_connection_that_did_not_negotiate_watch_gets_v1s_error() {
    use proto::FrameType;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lohar = Lohar::start();
    let mut sock = tokio::net::UnixStream::connect(lohar.process.control()).await.unwrap();
    let body = br#"{"path":"/tmp"}"#;
    let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(FrameType::WATCH_REQ.0);
    frame.extend_from_slice(body);
    sock.write_all(&frame).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, sock.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer[4], FrameType::ERROR.0);
    assert_eq!(&answer[5..], b"unexpected frame type 0x75");
}
