//! The QMP client against recorded transcripts (a scripted peer on a Unix socket) and against a
//! real QEMU.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use vmm::VmmError;
use vmm::qmp::{Event, Qmp};

const T: Duration = Duration::from_secs(5);

/// Recorded from QEMU 10.0.2.
const GREETING: &str = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"Debian 1:10.0.2+ds-2+deb13u1~bpo12+1\"}, \"capabilities\": [\"oob\"]}}\r\n";

/// One scripted exchange: what the peer expects to read (a substring), and what it answers.
enum Step {
    Expect(&'static str, Vec<String>),
    Close,
}

/// Plays `script` to the first client; returns the socket path.
fn scripted_peer(dir: &Path, script: Vec<Step>) -> PathBuf {
    let path = dir.join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(GREETING.as_bytes()).await.unwrap();
        for step in script {
            match step {
                Step::Expect(needle, replies) => {
                    let line = lines.next_line().await.unwrap().unwrap();
                    assert!(line.contains(needle), "peer expected {needle}, got {line}");
                    let id: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let id = id["id"].as_u64().unwrap();
                    for reply in replies {
                        write
                            .write_all(reply.replace("$ID", &id.to_string()).as_bytes())
                            .await
                            .unwrap();
                    }
                }
                Step::Close => return,
            }
        }
        // Keep the connection open until the client drops it.
        while let Ok(Some(_)) = lines.next_line().await {}
    });
    path
}

fn caps() -> Step {
    Step::Expect("qmp_capabilities", vec!["{\"return\": {}, \"id\": $ID}\r\n".into()])
}

#[tokio::test]
async fn negotiates_and_runs_typed_commands() {
    let dir = tempfile::tempdir().unwrap();
    let path = scripted_peer(
        dir.path(),
        vec![
            caps(),
            Step::Expect("query-status", vec!["{\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}, \"id\": $ID}\r\n".into()]),
            Step::Expect("\"stop\"", vec![
                "{\"timestamp\": {\"seconds\": 1764028800, \"microseconds\": 1}, \"event\": \"STOP\"}\r\n".into(),
                "{\"return\": {}, \"id\": $ID}\r\n".into(),
            ]),
            Step::Expect("query-status", vec!["{\"return\": {\"status\": \"paused\", \"singlestep\": false, \"running\": false}, \"id\": $ID}\r\n".into()]),
        ],
    );
    let qmp = Qmp::connect(&path, T).await.unwrap();
    assert_eq!(qmp.version, (10, 0, 2));
    let mut events = qmp.subscribe();
    let status = qmp.query_status(T).await.unwrap();
    assert_eq!((status.status.as_str(), status.running), ("running", true));
    qmp.stop(T).await.unwrap();
    assert_eq!(events.recv().await.unwrap(), Event::Stop);
    assert_eq!(qmp.query_status(T).await.unwrap().status, "paused");
}

#[tokio::test]
async fn command_errors_carry_class_and_description() {
    let dir = tempfile::tempdir().unwrap();
    let path = scripted_peer(
        dir.path(),
        vec![caps(), Step::Expect("nosuch", vec!["{\"id\": $ID, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nosuch has not been found\"}}\r\n".into()])],
    );
    let qmp = Qmp::connect(&path, T).await.unwrap();
    match qmp.execute("nosuch", None, T).await.unwrap_err() {
        VmmError::Qmp { command, class, desc } => {
            assert_eq!((command.as_str(), class.as_str()), ("nosuch", "CommandNotFound"));
            assert!(desc.contains("has not been found"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_command_without_reply_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = scripted_peer(dir.path(), vec![caps(), Step::Expect("cont", vec![])]);
    let qmp = Qmp::connect(&path, T).await.unwrap();
    let err = qmp.cont(Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, VmmError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn qemu_dying_fails_pending_and_later_calls_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        scripted_peer(dir.path(), vec![caps(), Step::Expect("query-status", vec![]), Step::Close]);
    let qmp = Qmp::connect(&path, T).await.unwrap();
    let err = qmp.query_status(T).await.unwrap_err();
    assert!(matches!(err, VmmError::QemuGone), "{err:?}");
    assert!(qmp.is_closed());
    assert!(matches!(qmp.stop(T).await.unwrap_err(), VmmError::QemuGone));
}

#[tokio::test]
async fn garbage_instead_of_a_greeting_is_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello, I am not QEMU\n").await.unwrap();
        tokio::time::sleep(T).await;
    });
    assert!(matches!(Qmp::connect(&path, T).await.unwrap_err(), VmmError::Protocol(_)));
}

#[tokio::test]
async fn silent_peer_times_out_on_connect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let _keep = listener.accept().await.unwrap();
        tokio::time::sleep(T).await;
    });
    let err = Qmp::connect(&path, Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, VmmError::Timeout { .. }), "{err:?}");
}

/// The same client against a real QEMU 10 (paused microvm, no guest code runs).
#[tokio::test]
async fn real_qemu_stop_cont_quit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "microvm,acpi=off",
            "-accel",
            "tcg",
            "-m",
            "32M",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-S",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-system-x86_64 (run scripts/setup)");
    let mut waited = 0;
    while !sock.exists() && waited < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    let qmp = Qmp::connect(&sock, T).await.unwrap();
    assert!(qmp.version.0 >= 10, "{:?}", qmp.version);
    let mut events = qmp.subscribe();
    assert_eq!(qmp.query_status(T).await.unwrap().status, "prelaunch");
    qmp.cont(T).await.unwrap();
    assert_eq!(events.recv().await.unwrap(), Event::Resume);
    assert!(qmp.query_status(T).await.unwrap().running);
    qmp.stop(T).await.unwrap();
    assert_eq!(events.recv().await.unwrap(), Event::Stop);
    assert_eq!(qmp.query_status(T).await.unwrap().status, "paused");
    match qmp.execute("no-such-command", None, T).await.unwrap_err() {
        VmmError::Qmp { class, .. } => assert_eq!(class, "CommandNotFound"),
        other => panic!("{other:?}"),
    }
    qmp.quit(T).await.unwrap();
    let status = tokio::time::timeout(T, child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    assert!(matches!(qmp.query_status(T).await.unwrap_err(), VmmError::QemuGone));
}

#[tokio::test]
async fn a_socket_nobody_listens_on_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.sock");
    let err = Qmp::connect(&path, T).await.unwrap_err();
    match &err {
        VmmError::Connect { path: named, .. } => assert_eq!(named, &path),
        other => panic!("{other:?}"),
    }
    // The message says what failed; the cause is the source, printed once by a chain walk.
    assert_eq!(err.to_string(), format!("connecting to QMP at {}", path.display()));
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("No such file"), "{source}");
    assert!(!err.to_string().contains(&source));
}
