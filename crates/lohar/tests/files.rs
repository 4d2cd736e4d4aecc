//! File read/write/stat/list against the real agent in test mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use proto::messages::{
    FileInfo, FileReadRequest, FileReadResponse, FileWriteRequest, FileWriteResponse, PathRequest,
};
use proto::payload::decode_exit;
use proto::{FrameType, read_frame, send_json, write_frame};

struct Read {
    head: Result<FileReadResponse, String>,
    content: Vec<u8>,
}

fn read_file(agent: &Agent, req: FileReadRequest) -> Read {
    let mut s = agent.request_json(FrameType::FILE_READ_REQ, &req);
    let f = read(&mut s);
    if f.kind == FrameType::ERROR {
        return Read { head: Err(f.text()), content: Vec::new() };
    }
    assert_eq!(f.kind, FrameType::FILE_READ_RESP);
    let head = f.json().unwrap();
    let mut content = Vec::new();
    loop {
        let f = read(&mut s);
        match f.kind {
            FrameType::STDOUT => content.extend_from_slice(&f.payload),
            FrameType::EXIT => {
                assert_eq!(decode_exit(&f.payload).unwrap(), 0);
                break;
            }
            other => panic!("unexpected {other:?}: {}", f.text()),
        }
    }
    Read { head: Ok(head), content }
}

fn read_all(agent: &Agent, path: &Path) -> Vec<u8> {
    read_file(agent, FileReadRequest { path: path.display().to_string(), ..Default::default() })
        .content
}

fn lines(agent: &Agent, path: &Path, offset: i64, limit: i64, max_bytes: i64) -> String {
    let r = read_file(
        agent,
        FileReadRequest {
            path: path.display().to_string(),
            offset: Some(offset),
            limit: Some(limit),
            max_bytes: Some(max_bytes),
        },
    );
    String::from_utf8(r.content).unwrap()
}

/// Sends a write request and `content` in 32 KiB frames; returns the reply.
fn write_file(agent: &Agent, path: &Path, mode: &str, content: &[u8]) -> Result<(), String> {
    let mut s = agent.request_json(
        FrameType::FILE_WRITE_REQ,
        &FileWriteRequest {
            path: path.display().to_string(),
            mode: mode.into(),
            size: content.len() as i64,
        },
    );
    for chunk in content.chunks(32 * 1024) {
        write_frame(&mut s, FrameType::STDIN, chunk).unwrap();
    }
    reply(&mut s)
}

fn reply(s: &mut UnixStream) -> Result<(), String> {
    let f = read(s);
    match f.kind {
        FrameType::FILE_WRITE_RESP => {
            let r: FileWriteResponse = f.json().unwrap();
            assert_eq!(r.status, "ok");
            Ok(())
        }
        FrameType::ERROR => Err(f.text()),
        other => panic!("unexpected {other:?}"),
    }
}

fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

#[test]
fn file_write_then_read_round_trips() {
    let agent = Agent::start();
    let p = agent.path("hello.txt");
    write_file(&agent, &p, "0644", b"hello world").unwrap();
    let r =
        read_file(&agent, FileReadRequest { path: p.display().to_string(), ..Default::default() });
    assert_eq!(r.content, b"hello world");
    let head = r.head.unwrap();
    assert_eq!((head.mode.as_str(), head.size), ("0644", 11));
}

#[test]
fn file_write_sets_permissions_and_owner() {
    let agent = Agent::start();
    let p = agent.path("secret");
    write_file(&agent, &p, "0600", b"x").unwrap();
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    write_file(&agent, &agent.path("exe"), "755", b"x").unwrap();
    assert_eq!(std::fs::metadata(agent.path("exe")).unwrap().permissions().mode() & 0o777, 0o755);
    // Invalid or zero modes fall back to 0644.
    write_file(&agent, &agent.path("dflt"), "bogus", b"x").unwrap();
    assert_eq!(std::fs::metadata(agent.path("dflt")).unwrap().permissions().mode() & 0o777, 0o644);
}

#[test]
fn file_write_zero_bytes_creates_an_empty_file_and_reads_back_empty() {
    let agent = Agent::start();
    let p = agent.path("empty");
    write_file(&agent, &p, "0644", b"").unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    let mut s = agent.request_json(
        FrameType::FILE_READ_REQ,
        &FileReadRequest { path: p.display().to_string(), ..Default::default() },
    );
    assert_eq!(read(&mut s).kind, FrameType::FILE_READ_RESP);
    assert_eq!(read(&mut s).kind, FrameType::EXIT, "no STDOUT frame for an empty file");
}

#[test]
fn file_write_creates_missing_parent_directories() {
    let agent = Agent::start();
    let p = agent.path("a/b/c/deep.txt");
    write_file(&agent, &p, "0644", b"deep").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"deep");
}

#[test]
fn file_binary_data_round_trips() {
    let agent = Agent::start();
    let p = agent.path("bin");
    let data: Vec<u8> = (0..=255u8).cycle().take(256 * 40).collect();
    write_file(&agent, &p, "0644", &data).unwrap();
    assert_eq!(read_all(&agent, &p), data);
}

#[test]
fn file_large_round_trip_in_32k_chunks() {
    let agent = Agent::start();
    let p = agent.path("large");
    let data: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    write_file(&agent, &p, "0644", &data).unwrap();
    assert_eq!(read_all(&agent, &p), data);
}

#[test]
fn file_unicode_names_round_trip() {
    let agent = Agent::start();
    let p = agent.path("日本語 file (1).txt");
    let content = "héllo wörld 🎉".as_bytes();
    write_file(&agent, &p, "0644", content).unwrap();
    assert_eq!(read_all(&agent, &p), content);
    let mut s = agent.request_json(
        FrameType::FILE_LS_REQ,
        &PathRequest { path: agent.dir.as_path().display().to_string() },
    );
    let entries: Vec<FileInfo> = read(&mut s).json().unwrap();
    assert!(entries.iter().any(|e| e.name == "日本語 file (1).txt"));
}

#[test]
fn file_write_negative_size_is_rejected_before_any_content() {
    let agent = Agent::start();
    let p = agent.path("neg");
    let mut s = agent.request_json(
        FrameType::FILE_WRITE_REQ,
        &FileWriteRequest { path: p.display().to_string(), mode: "0644".into(), size: -1 },
    );
    assert_eq!(reply(&mut s).unwrap_err(), "file size must be >= 0");
    assert!(!p.exists());
}

#[test]
fn file_write_over_100_mib_is_rejected() {
    let agent = Agent::start();
    let p = agent.path("huge");
    let mut s = agent.request_json(
        FrameType::FILE_WRITE_REQ,
        &FileWriteRequest {
            path: p.display().to_string(),
            mode: "0644".into(),
            size: 100 * 1024 * 1024 + 1,
        },
    );
    assert_eq!(reply(&mut s).unwrap_err(), "file too large: 104857601 bytes (max 104857600)");
    assert!(!p.exists());
}

#[test]
fn file_write_beneath_a_regular_file_is_not_a_directory() {
    let agent = Agent::start();
    let f = agent.path("plain");
    std::fs::write(&f, "x").unwrap();
    let err = write_file(&agent, &f.join("child"), "0644", b"x").unwrap_err();
    assert!(err.contains("not a directory"), "{err}");
}

/// Announces `size` bytes for `path` and sends none of them; returns the agent's answer, which
/// must come within 5 s (the content it would otherwise wait for never comes).
fn write_without_content(s: &mut UnixStream, path: &Path, size: i64) -> Result<(), String> {
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    send_json(
        s,
        FrameType::FILE_WRITE_REQ,
        &FileWriteRequest { path: path.display().to_string(), mode: "0644".into(), size },
    )
    .unwrap();
    let f = read_frame(s).expect("no answer within 5 s before any content").expect("EOF");
    match f.kind {
        FrameType::ERROR => Err(f.text()),
        other => panic!("expected ERROR, got {other:?}: {}", f.text()),
    }
}

#[test]
fn file_write_impossible_target_is_refused_before_any_content() {
    let agent = Agent::start();
    let plain = agent.path("plain");
    std::fs::write(&plain, "x").unwrap();
    // Tests run as root, so "unwritable" needs a filesystem that refuses root: sysfs refuses
    // new files (EACCES) and new directories (EPERM).
    let cases = [
        (plain.join("child"), "mkdir ", "not a directory"),
        (Path::new("/sys/bhatti-no-such-file").to_owned(), "open /sys/", "permission denied"),
        (
            Path::new("/sys/bhatti-no-such-dir/file").to_owned(),
            "mkdir /sys/bhatti-no-such-dir",
            "operation not permitted",
        ),
    ];
    for (path, prefix, reason) in cases {
        let mut s = agent.connect();
        let started = std::time::Instant::now();
        let err = write_without_content(&mut s, &path, 1_000_000).unwrap_err();
        assert!(err.starts_with(prefix) && err.ends_with(reason), "{}: {err}", path.display());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // The connection is closed after the ERROR, as after any ERROR in v1.
        assert!(read_frame(&mut s).unwrap().is_none(), "connection left open after ERROR");
    }
    // Nothing was left behind, and the agent still serves.
    assert!(
        !std::fs::read_dir(agent.dir.as_path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("bhatti-tmp"))
    );
    assert_eq!(agent.exec(&["true"]).exit, Some(0));
}

#[test]
fn file_write_refusal_closes_a_reused_connection_even_while_content_flows() {
    let agent = Agent::start();
    let plain = agent.path("plain");
    std::fs::write(&plain, "x").unwrap();
    let mut s = agent.connect();
    assert_eq!(hello_reuse(&mut s).features, vec!["reuse".to_owned()]);
    let err = write_without_content(&mut s, &plain.join("child"), 3 * 32 * 1024).unwrap_err();
    assert!(err.contains("not a directory"), "{err}");
    // A client that streamed regardless: its content is drained, not read as requests, and
    // the connection ends with EOF rather than a reset.
    for _ in 0..3 {
        if write_frame(&mut s, FrameType::STDIN, &[7u8; 32 * 1024]).is_err() {
            break;
        }
    }
    assert!(read_frame(&mut s).unwrap().is_none(), "reuse connection kept after ERROR");
}

#[test]
fn file_write_connection_lost_leaves_the_old_content_and_no_temp_file() {
    let agent = Agent::start();
    let p = agent.path("keep");
    std::fs::write(&p, "old").unwrap();
    let mut s = agent.request_json(
        FrameType::FILE_WRITE_REQ,
        &FileWriteRequest { path: p.display().to_string(), mode: "0644".into(), size: 100 },
    );
    write_frame(&mut s, FrameType::STDIN, b"partial").unwrap();
    drop(s);
    assert!(wait_for(std::time::Duration::from_secs(5), || {
        std::fs::read_dir(agent.dir.as_path())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("bhatti-tmp"))
    }));
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
}

#[test]
fn file_write_overshooting_frame_is_cut_at_the_announced_size() {
    let agent = Agent::start();
    let p = agent.path("exact");
    let mut s = agent.request_json(
        FrameType::FILE_WRITE_REQ,
        &FileWriteRequest { path: p.display().to_string(), mode: "0644".into(), size: 5 },
    );
    write_frame(&mut s, FrameType::STDIN, b"1234567890").unwrap();
    reply(&mut s).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"12345");
}

#[test]
fn file_concurrent_writes_to_different_files() {
    let agent = std::sync::Arc::new(Agent::start());
    let threads: Vec<_> = (0..10)
        .map(|i| {
            let agent = agent.clone();
            std::thread::spawn(move || {
                let p = agent.path(&format!("f{i}"));
                let content = format!("content of file {i}").repeat(100);
                write_file(&agent, &p, "0644", content.as_bytes()).unwrap();
                assert_eq!(std::fs::read_to_string(&p).unwrap(), content);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// v1 used one fixed temp name per path, so concurrent writers of different lengths could mix
/// content; each writer here has a different length and the result is exactly one of them.
#[test]
fn file_concurrent_writes_to_the_same_file_leave_exactly_one_version() {
    let agent = std::sync::Arc::new(Agent::start());
    let p = agent.path("contended");
    let versions: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 1000 + 37 * i as usize]).collect();
    for _round in 0..3 {
        let threads: Vec<_> = versions
            .iter()
            .cloned()
            .map(|v| {
                let (agent, p) = (agent.clone(), p.clone());
                std::thread::spawn(move || write_file(&agent, &p, "0644", &v).unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = std::fs::read(&p).unwrap();
        assert!(versions.contains(&got), "mixed content of {} bytes", got.len());
    }
}

#[test]
fn file_readers_never_see_partial_content_during_writes() {
    let agent = std::sync::Arc::new(Agent::start());
    let p = agent.path("atomic");
    let old = vec![b'o'; 300_000];
    let new = vec![b'n'; 300_000];
    write_file(&agent, &p, "0644", &old).unwrap();
    let writer = {
        let (agent, p, old, new) = (agent.clone(), p.clone(), old.clone(), new.clone());
        std::thread::spawn(move || {
            for i in 0..10 {
                write_file(&agent, &p, "0644", if i % 2 == 0 { &new } else { &old }).unwrap();
            }
        })
    };
    for _ in 0..30 {
        let got = read_all(&agent, &p);
        assert!(got == old || got == new, "partial read of {} bytes", got.len());
    }
    writer.join().unwrap();
}

#[test]
fn file_write_then_immediate_read_sees_the_new_content() {
    let agent = Agent::start();
    let p = agent.path("visible");
    for round in 0..10 {
        let content = format!("round {round} ").repeat(round + 1);
        write_file(&agent, &p, "0644", content.as_bytes()).unwrap();
        assert_eq!(read_all(&agent, &p), content.as_bytes());
    }
}

#[test]
fn file_read_errors_are_clear() {
    let agent = Agent::start();
    let missing = read_file(
        &agent,
        FileReadRequest { path: "/nonexistent/file".into(), ..Default::default() },
    );
    assert_eq!(missing.head.unwrap_err(), "open /nonexistent/file: no such file or directory");
    let dir = read_file(&agent, FileReadRequest { path: "/tmp".into(), ..Default::default() });
    assert_eq!(dir.head.unwrap_err(), "/tmp is a directory");
    let dev = read_file(&agent, FileReadRequest { path: "/dev/null".into(), ..Default::default() });
    assert_eq!(dev.head.unwrap_err(), "/dev/null is not a regular file");
    let mut s = agent.request(FrameType::FILE_READ_REQ, b"[]");
    assert!(collect_exec(&mut s).error.unwrap().starts_with("bad request: "));
}

/// A read whose answer must come within 5 s: the ERROR text, or the content.
fn read_within_5s(agent: &Agent, path: &Path) -> Result<Vec<u8>, String> {
    let mut s = agent.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let req = FileReadRequest { path: path.display().to_string(), ..Default::default() };
    send_json(&mut s, FrameType::FILE_READ_REQ, &req).unwrap();
    let f = read_frame(&mut s).expect("no answer within 5 s").expect("EOF");
    assert!(started.elapsed() < Duration::from_secs(5));
    if f.kind == FrameType::ERROR {
        return Err(f.text());
    }
    assert_eq!(f.kind, FrameType::FILE_READ_RESP, "{}", f.text());
    let mut content = Vec::new();
    loop {
        let f = read(&mut s);
        match f.kind {
            FrameType::STDOUT => content.extend_from_slice(&f.payload),
            FrameType::EXIT => return Ok(content),
            other => panic!("unexpected {other:?}: {}", f.text()),
        }
    }
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

#[test]
fn file_read_of_a_fifo_or_device_is_refused_at_once() {
    let agent = Agent::start();
    // A FIFO without a writer: a blocking open would wait for one forever.
    let fifo = agent.path("pipe");
    mkfifo(&fifo);
    assert_eq!(
        read_within_5s(&agent, &fifo).unwrap_err(),
        format!("{} is not a regular file", fifo.display())
    );
    // Endless devices would stream forever.
    for dev in ["/dev/zero", "/dev/urandom"] {
        let err = read_within_5s(&agent, Path::new(dev)).unwrap_err();
        assert_eq!(err, format!("{dev} is not a regular file"));
    }
    // A link is followed, as in v1: to a FIFO it is refused, to a regular file it is read.
    let to_fifo = agent.path("to-pipe");
    std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
    assert!(read_within_5s(&agent, &to_fifo).unwrap_err().ends_with(" is not a regular file"));
    // Controls: a regular file, directly and through a link.
    let plain = agent.path("plain");
    std::fs::write(&plain, "content").unwrap();
    assert_eq!(read_within_5s(&agent, &plain).unwrap(), b"content");
    let to_plain = agent.path("to-plain");
    std::os::unix::fs::symlink(&plain, &to_plain).unwrap();
    assert_eq!(read_within_5s(&agent, &to_plain).unwrap(), b"content");
}

#[test]
fn file_write_onto_a_fifo_socket_or_device_is_refused_before_any_content() {
    let agent = Agent::start();
    let fifo = agent.path("pipe");
    mkfifo(&fifo);
    let socket = agent.path("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let dir = agent.path("dir");
    std::fs::create_dir(&dir).unwrap();
    let not_regular = |p: &Path| format!("{} is not a regular file", p.display());
    let cases = [
        (fifo.clone(), not_regular(&fifo)),
        (socket.clone(), not_regular(&socket)),
        // Only the announcement is sent, never content, so /dev/null is safe to name.
        (Path::new("/dev/null").to_owned(), "/dev/null is not a regular file".to_owned()),
        (dir.clone(), format!("{} is a directory", dir.display())),
    ];
    for (path, expected) in &cases {
        let mut s = agent.connect();
        assert_eq!(&write_without_content(&mut s, path, 1_000).unwrap_err(), expected);
        assert!(read_frame(&mut s).unwrap().is_none(), "connection left open after ERROR");
    }
    // Every target is still what it was, and no temp file was made.
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket());
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    assert!(std::fs::metadata(&dir).unwrap().is_dir());
    let temps = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("bhatti-tmp"))
    };
    assert!(!temps(agent.dir.as_path()) && !temps(Path::new("/dev")));
    // Controls: a new file, an existing regular file, and a link (replaced by the file, as in
    // v1, its target untouched).
    let plain = agent.path("plain");
    write_file(&agent, &plain, "0644", b"new").unwrap();
    write_file(&agent, &plain, "0644", b"newer").unwrap();
    assert_eq!(read_all(&agent, &plain), b"newer");
    let link = agent.path("link");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    write_file(&agent, &link, "0644", b"over the link").unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn file_stat_and_list_do_not_block_on_a_fifo() {
    let agent = Agent::start();
    let d = agent.path("with-fifo");
    std::fs::create_dir(&d).unwrap();
    let fifo = d.join("pipe");
    mkfifo(&fifo);
    let ask = |kind: FrameType, path: &Path| {
        let mut s = agent.connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send_json(&mut s, kind, &PathRequest { path: path.display().to_string() }).unwrap();
        read_frame(&mut s).expect("no answer within 5 s").expect("EOF")
    };
    let f = ask(FrameType::FILE_STAT_REQ, &fifo);
    assert_eq!(f.kind, FrameType::FILE_STAT_RESP, "{}", f.text());
    let info: FileInfo = f.json().unwrap();
    assert_eq!((info.name.as_str(), info.size, info.is_dir), ("pipe", 0, false));
    let f = ask(FrameType::FILE_LS_REQ, &d);
    assert_eq!(f.kind, FrameType::FILE_LS_RESP, "{}", f.text());
    let entries: Vec<FileInfo> = f.json().unwrap();
    assert_eq!(entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), vec!["pipe"]);
    let f = ask(FrameType::FILE_LS_REQ, &fifo);
    assert_eq!(f.text(), format!("{} is not a directory", fifo.display()));
}

#[test]
fn file_read_with_limit() {
    let agent = Agent::start();
    let p = agent.path("100");
    std::fs::write(&p, numbered(100)).unwrap();
    assert_eq!(lines(&agent, &p, 0, 10, 0), numbered(10));
}

#[test]
fn file_read_with_offset() {
    let agent = Agent::start();
    let p = agent.path("100");
    std::fs::write(&p, numbered(100)).unwrap();
    let got = lines(&agent, &p, 50, 0, 0);
    let expected: String = (50..=100).map(|i| format!("line {i}\n")).collect();
    assert_eq!(got, expected);
}

#[test]
fn file_read_with_offset_and_limit() {
    let agent = Agent::start();
    let p = agent.path("100");
    std::fs::write(&p, numbered(100)).unwrap();
    let expected: String = (50..60).map(|i| format!("line {i}\n")).collect();
    assert_eq!(lines(&agent, &p, 50, 10, 0), expected);
}

#[test]
fn file_read_with_max_bytes_cuts_mid_line() {
    let agent = Agent::start();
    let p = agent.path("100");
    std::fs::write(&p, numbered(100)).unwrap();
    assert_eq!(lines(&agent, &p, 0, 0, 10), "line 1\nlin");
    let got = lines(&agent, &p, 0, 0, 50);
    assert_eq!(got.len(), 50);
    assert!(numbered(100).starts_with(&got));
}

#[test]
fn file_read_limit_and_max_bytes_whichever_comes_first() {
    let agent = Agent::start();
    let p = agent.path("100");
    std::fs::write(&p, numbered(100)).unwrap();
    assert_eq!(lines(&agent, &p, 0, 2000, 50).len(), 50);
    assert_eq!(lines(&agent, &p, 0, 3, 50000), numbered(3));
}

#[test]
fn file_read_without_options_is_the_whole_file() {
    let agent = Agent::start();
    let p = agent.path("20");
    std::fs::write(&p, numbered(20)).unwrap();
    assert_eq!(lines(&agent, &p, 0, 0, 0), numbered(20));
}

#[test]
fn file_read_offset_beyond_eof_is_empty_not_an_error() {
    let agent = Agent::start();
    let p = agent.path("100");
    std::fs::write(&p, numbered(100)).unwrap();
    assert_eq!(lines(&agent, &p, 9999, 0, 0), "");
}

#[test]
fn file_read_large_file_with_limit() {
    let agent = Agent::start();
    let p = agent.path("100k");
    std::fs::write(&p, numbered(100_000)).unwrap();
    let r = read_file(
        &agent,
        FileReadRequest { path: p.display().to_string(), limit: Some(2000), ..Default::default() },
    );
    assert_eq!(String::from_utf8(r.content).unwrap(), numbered(2000));
    // The header always carries the whole file's size, so the caller can see the truncation.
    assert_eq!(r.head.unwrap().size, numbered(100_000).len() as i64);
}

#[test]
fn file_read_line_mode_is_byte_exact() {
    let agent = Agent::start();
    let p = agent.path("crlf");
    // CRLF kept, no newline invented at the end, and a 300 KiB line (v1 stopped at 256 KiB).
    let long = "x".repeat(300 * 1024);
    let content = format!("a\r\nb\r\n{long}\nlast");
    std::fs::write(&p, &content).unwrap();
    assert_eq!(lines(&agent, &p, 1, 0, 0), content);
    assert_eq!(lines(&agent, &p, 3, 1, 0), format!("{long}\n"));
    assert_eq!(lines(&agent, &p, 4, 0, 0), "last");
}

#[test]
fn file_read_abort_stops_promptly() {
    let agent = Agent::start();
    let p = agent.path("10m");
    std::fs::write(&p, vec![b'z'; 10 * 1024 * 1024]).unwrap();
    let mut s = agent.request_json(
        FrameType::FILE_READ_REQ,
        &FileReadRequest { path: p.display().to_string(), ..Default::default() },
    );
    assert_eq!(read(&mut s).kind, FrameType::FILE_READ_RESP);
    drop(s);
    // The agent notices the closed socket and serves the next request at once.
    let start = std::time::Instant::now();
    assert_eq!(agent.exec(&["echo", "ok"]).out(), "ok\n");
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn file_stat_reports_name_size_mode_and_type() {
    let agent = Agent::start();
    let p = agent.path("stat-me");
    std::fs::write(&p, "1234567").unwrap();
    std::fs::set_permissions(&p, PermissionsExt::from_mode(0o4644)).unwrap();
    let mut s = agent
        .request_json(FrameType::FILE_STAT_REQ, &PathRequest { path: p.display().to_string() });
    let f = read(&mut s);
    assert_eq!(f.kind, FrameType::FILE_STAT_RESP);
    let info: FileInfo = f.json().unwrap();
    assert_eq!(
        (info.name.as_str(), info.size, info.mode.as_str(), info.is_dir),
        ("stat-me", 7, "0644", false)
    );
    assert!(info.mtime > 1_600_000_000);
    let mut s = agent.request_json(
        FrameType::FILE_STAT_REQ,
        &PathRequest { path: agent.dir.as_path().display().to_string() },
    );
    assert!(read(&mut s).json::<FileInfo>().unwrap().is_dir);
}

#[test]
fn file_stat_missing_is_an_error() {
    let agent = Agent::start();
    let mut s =
        agent.request_json(FrameType::FILE_STAT_REQ, &PathRequest { path: "/nonexistent".into() });
    assert_eq!(collect_exec(&mut s).error.unwrap(), "stat /nonexistent: no such file or directory");
}

#[test]
fn file_list_reports_entries() {
    let agent = Agent::start();
    let d = agent.path("listing");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("a.txt"), "a").unwrap();
    std::fs::write(d.join("b.txt"), "bb").unwrap();
    std::fs::create_dir(d.join("subdir")).unwrap();
    std::os::unix::fs::symlink("subdir", d.join("link")).unwrap();
    let mut s =
        agent.request_json(FrameType::FILE_LS_REQ, &PathRequest { path: d.display().to_string() });
    let f = read(&mut s);
    assert_eq!(f.kind, FrameType::FILE_LS_RESP);
    let mut entries: Vec<FileInfo> = f.json().unwrap();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.is_dir)).collect();
    assert_eq!(names, vec![("a.txt", false), ("b.txt", false), ("link", false), ("subdir", true)]);
    assert_eq!(entries[1].size, 2);
}

#[test]
fn file_list_empty_directory_is_an_empty_array() {
    let agent = Agent::start();
    let d = agent.path("empty-dir");
    std::fs::create_dir(&d).unwrap();
    let mut s =
        agent.request_json(FrameType::FILE_LS_REQ, &PathRequest { path: d.display().to_string() });
    assert_eq!(read(&mut s).payload, b"[]");
}

#[test]
fn file_list_errors() {
    let agent = Agent::start();
    let mut s =
        agent.request_json(FrameType::FILE_LS_REQ, &PathRequest { path: "/nonexistent".into() });
    assert!(collect_exec(&mut s).error.unwrap().contains("no such file"));
    let f = agent.path("not-a-dir");
    std::fs::write(&f, "x").unwrap();
    let mut s =
        agent.request_json(FrameType::FILE_LS_REQ, &PathRequest { path: f.display().to_string() });
    assert_eq!(collect_exec(&mut s).error.unwrap(), format!("{} is not a directory", f.display()));
}

#[test]
fn file_list_caps_at_10000_entries_with_the_real_total() {
    let agent = Agent::start();
    let d = agent.path("many");
    std::fs::create_dir(&d).unwrap();
    for i in 0..10_050 {
        std::fs::File::create(d.join(format!("f{i:05}"))).unwrap();
    }
    let mut s =
        agent.request_json(FrameType::FILE_LS_REQ, &PathRequest { path: d.display().to_string() });
    let entries: Vec<FileInfo> = read(&mut s).json().unwrap();
    assert_eq!(entries.len(), 10_001);
    let marker = entries.last().unwrap();
    assert_eq!(marker.name, "... truncated at 10000 entries (10050 total)");
    assert_eq!((marker.size, marker.mode.as_str(), marker.is_dir, marker.mtime), (0, "", false, 0));
}

#[test]
fn file_list_of_long_names_stays_under_the_frame_limit() {
    let agent = Agent::start();
    let d = agent.path("long-names");
    std::fs::create_dir(&d).unwrap();
    for i in 0..6000 {
        std::fs::File::create(d.join(format!("{i:05}-{}", "n".repeat(200)))).unwrap();
    }
    let mut s =
        agent.request_json(FrameType::FILE_LS_REQ, &PathRequest { path: d.display().to_string() });
    let f = read(&mut s);
    assert_eq!(f.kind, FrameType::FILE_LS_RESP);
    let entries: Vec<FileInfo> = f.json().unwrap();
    let marker = entries.last().unwrap();
    assert!(marker.name.ends_with("entries (6000 total)"), "{}", marker.name);
    assert!(entries.len() < 6000);
}

#[test]
fn file_ops_on_a_reused_connection() {
    let agent = Agent::start();
    let mut s = agent.connect();
    hello_reuse(&mut s);
    let p = agent.path("reuse.txt");
    for round in 0..5 {
        let body = format!("round {round}");
        send_json(
            &mut s,
            FrameType::FILE_WRITE_REQ,
            &FileWriteRequest {
                path: p.display().to_string(),
                mode: "0644".into(),
                size: body.len() as i64,
            },
        )
        .unwrap();
        write_frame(&mut s, FrameType::STDIN, body.as_bytes()).unwrap();
        reply(&mut s).unwrap();
        send_json(
            &mut s,
            FrameType::FILE_READ_REQ,
            &FileReadRequest { path: p.display().to_string(), ..Default::default() },
        )
        .unwrap();
        assert_eq!(read(&mut s).kind, FrameType::FILE_READ_RESP);
        assert_eq!(read(&mut s).payload, body.as_bytes());
        assert_eq!(read(&mut s).kind, FrameType::EXIT);
    }
    // An error still closes the connection.
    send_json(&mut s, FrameType::FILE_STAT_REQ, &PathRequest { path: "/nonexistent".into() })
        .unwrap();
    assert_eq!(read(&mut s).kind, FrameType::ERROR);
    assert!(read_frame(&mut s).map(|f| f.is_none()).unwrap_or(true));
}
