//! The client against the real lohar in test mode: client -> socket -> agent -> child process
//! -> frames -> client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent::{
    AgentClient, AgentError, ClientConfig, Endpoint, ExecEvent, ExecRequest, ReadOptions,
    SessionEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::*;

#[tokio::test]
async fn client_exec_returns_stdout_stderr_and_code() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let out = c.exec(&["echo", "hello"]).await.unwrap();
    assert_eq!(
        (out.stdout_text().as_str(), out.stderr_text().as_str(), out.exit_code),
        ("hello\n", "", 0)
    );
    let out = c.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]).await.unwrap();
    assert_eq!(
        (out.stdout_text().as_str(), out.stderr_text().as_str(), out.exit_code),
        ("out\n", "err\n", 3)
    );
    assert_eq!(c.exec(&["false"]).await.unwrap().exit_code, 1);
}

#[tokio::test]
async fn client_exec_env_and_cwd() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let mut req = ExecRequest::command(["sh", "-c", "echo $MY_VAR; pwd"]);
    req.env = Some([("MY_VAR".to_owned(), "works".to_owned())].into());
    req.cwd = Some("/tmp".into());
    let out = c.exec_request(&req, Duration::from_secs(10)).await.unwrap();
    assert_eq!(out.stdout_text(), "works\n/tmp\n");
}

#[tokio::test]
async fn client_exec_not_found_keeps_the_agent_text() {
    let lohar = Lohar::start();
    let err = lohar.client().exec(&["/nonexistent"]).await.unwrap_err();
    match &err {
        AgentError::Agent(text) => {
            assert!(text.message().starts_with("start: /nonexistent"), "{text}")
        }
        other => panic!("expected an agent error, got {other:?}"),
    }
    assert!(err.to_string().starts_with("agent error: start:"));
}

#[tokio::test]
async fn client_exec_output_is_capped_at_10_mib_and_flagged() {
    let lohar = Lohar::start();
    let out = lohar.client().exec(&["head", "-c", "12000000", "/dev/zero"]).await.unwrap();
    assert!(out.truncated);
    assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    assert_eq!(out.exit_code, 0);
    let out = lohar.client().exec(&["head", "-c", "1000", "/dev/zero"]).await.unwrap();
    assert!(!out.truncated);
}

/// Issue 19: each stream has its own cap; stdout keeps its beginning, stderr its end.
#[tokio::test]
async fn client_exec_keeps_stdout_head_and_stderr_tail_and_flags_each() {
    let lohar = Lohar::start();
    let script = "echo FIRST; head -c 11000000 /dev/zero; \
                  echo EARLY >&2; head -c 11000000 /dev/zero | tr '\\0' e >&2; echo LAST >&2";
    let out = lohar.client().exec(&["sh", "-c", script]).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(out.stdout_truncated && out.stderr_truncated && out.truncated);
    assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    assert!(out.stdout.starts_with(b"FIRST\n"));
    assert_eq!(out.stderr.len(), 10 * 1024 * 1024);
    assert!(out.stderr.ends_with(b"eeeLAST\n"));
    assert!(!out.stderr.starts_with(b"EARLY"), "stderr's beginning is what was dropped");
    let out = lohar.client().exec(&["sh", "-c", "echo a; echo b >&2"]).await.unwrap();
    assert!(!out.truncated && !out.stdout_truncated && !out.stderr_truncated);
}

/// A caller's budget (`OutputRoom`) bounds what is kept on top of the caps.
#[tokio::test]
async fn client_exec_within_a_budget_keeps_no_more_than_it_allows() {
    struct Total(usize);
    impl agent::OutputRoom for Total {
        fn room(&self, kept: usize, want: usize) -> usize {
            self.0.saturating_sub(kept).min(want)
        }
    }
    let lohar = Lohar::start();
    let req = ExecRequest::command([
        "sh",
        "-c",
        "head -c 5000 /dev/zero; echo 123456789 >&2; echo END >&2",
    ]);
    let out = lohar
        .client()
        .exec_request_within(&req, Duration::from_secs(30), Arc::new(Total(4096)))
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 4096);
    assert!(out.stdout_truncated);
    // No room for stderr at all: it keeps nothing rather than exceeding the budget.
    assert!(out.stderr.is_empty() && out.stderr_truncated, "{:?}", out.stderr_text());
    assert_eq!(out.exit_code, 0);
}

#[tokio::test]
async fn client_exec_deadline_kills_the_command() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let pidfile = lohar.path("pid");
    let req = ExecRequest::command(["sh", "-c", &format!("echo $$ > {pidfile}; exec sleep 60")]);
    let start = Instant::now();
    let err = c.exec_request(&req, Duration::from_millis(500)).await.unwrap_err();
    assert!(matches!(err, AgentError::Timeout { op: "exec", .. }), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let gone = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
    });
    assert!(gone, "command outlived the client's deadline");
    // The client still works afterwards.
    assert_eq!(c.exec(&["true"]).await.unwrap().exit_code, 0);
}

#[tokio::test]
async fn client_exec_stream_delivers_events_and_takes_input() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let mut stream = c
        .exec_stream(
            &ExecRequest::command(["sh", "-c", "echo start; read l; echo got-$l >&2; cat"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), ExecEvent::Stdout(b"start\n".to_vec()));
    let input = stream.input();
    input.write(b"line\n").await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), ExecEvent::Stderr(b"got-line\n".to_vec()));
    input.write(b"echoed").await.unwrap();
    input.close().await.unwrap();
    let mut rest = Vec::new();
    loop {
        match stream.next().await.unwrap().unwrap() {
            ExecEvent::Stdout(b) => rest.extend(b),
            ExecEvent::Exit(code) => {
                assert_eq!(code, 0);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rest, b"echoed");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn client_exec_stream_first_byte_arrives_before_exit() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let start = Instant::now();
    let mut stream = c
        .exec_stream(
            &ExecRequest::command(["sh", "-c", "echo first; sleep 3; echo last"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), ExecEvent::Stdout(b"first\n".to_vec()));
    assert!(start.elapsed() < Duration::from_millis(2500), "output was buffered until exit");
}

#[tokio::test]
async fn client_exec_stream_kill() {
    let lohar = Lohar::start();
    let mut stream = lohar
        .client()
        .exec_stream(&ExecRequest::command(["sleep", "60"]), Duration::from_secs(10))
        .await
        .unwrap();
    stream.input().kill().await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), ExecEvent::Exit(137));
}

#[tokio::test]
async fn client_exec_detached() {
    let lohar = Lohar::start();
    let log = lohar.path("bg.log");
    let mut req = ExecRequest::command(["sh", "-c", "echo in-background"]);
    req.output_file = Some(log.clone());
    let info = lohar.client().exec_detached(&req).await.unwrap();
    assert!(info.pid > 1);
    assert_eq!(info.output_file, log);
    let ok = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        std::fs::read_to_string(&log).is_ok_and(|s| s == "in-background\n")
    });
    assert!(ok);
}

async fn output_until(session: &mut agent::Session, needle: &str) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match session.next().await.unwrap() {
                Some(SessionEvent::Output(b)) => out.extend(b),
                other => panic!(
                    "waiting for {needle:?}: {other:?} after {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
            if String::from_utf8_lossy(&out).contains(needle) {
                return String::from_utf8_lossy(&out).into_owned();
            }
        }
    })
    .await
    .expect("timed out")
}

#[tokio::test]
async fn client_shell_session_io_resize_and_exit() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let mut shell = c.shell(&ExecRequest::command(["/bin/sh"])).await.unwrap();
    assert!(shell.info().tty && shell.info().running);
    shell.write(b"echo o''k\n").await.unwrap();
    output_until(&mut shell, "ok\r\n").await;
    shell.resize(40, 120).await.unwrap();
    shell.write(b"stty size\n").await.unwrap();
    output_until(&mut shell, "40 120").await;
    shell.write(b"exit\n").await.unwrap();
    loop {
        match shell.next().await.unwrap() {
            Some(SessionEvent::Output(_)) => {}
            Some(SessionEvent::Stderr(_)) => panic!("a terminal has no stderr apart"),
            Some(SessionEvent::Exit(code)) => {
                assert_eq!(code, 0);
                break;
            }
            None => panic!("closed before exit"),
        }
    }
    assert_eq!(shell.next().await.unwrap(), None);
}

#[tokio::test]
async fn client_sessions_detach_attach_list_and_kill() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let mut s = c
        .piped_session(&ExecRequest::command(["sh", "-c", "while read l; do echo re-$l; done"]))
        .await
        .unwrap();
    let id = s.id().to_owned();
    s.write(b"one\n").await.unwrap();
    output_until(&mut s, "re-one\n").await;
    drop(s);
    let mut detached = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let list = c.session_list().await.unwrap();
        if list.iter().any(|i| i.session_id == id && !i.attached) {
            detached = true;
            break;
        }
    }
    assert!(detached);
    let mut s = c.attach(&id, true).await.unwrap();
    assert_eq!(s.next().await.unwrap(), Some(SessionEvent::Output(b"re-one\n".to_vec())));
    let err = c.attach(&id, true).await.unwrap_err();
    assert!(matches!(&err, AgentError::Agent(t) if t == "session is attached"), "{err:?}");
    c.session_kill(&id).await.unwrap();
    let err = c.session_kill("s999").await.unwrap_err();
    assert!(matches!(&err, AgentError::Agent(t) if t == "session not found"), "{err:?}");
    assert_eq!(s.next().await.unwrap(), Some(SessionEvent::Exit(137)));
    let err = c.attach("s999", false).await.unwrap_err();
    assert!(matches!(&err, AgentError::Agent(t) if t == "session not found"));
}

#[tokio::test]
async fn client_activity() {
    let lohar = Lohar::start();
    let c = lohar.client();
    assert_eq!(c.activity().await.unwrap().last_activity_unix, 0);
    c.exec(&["true"]).await.unwrap();
    let _shell = c.shell(&ExecRequest::command(["sleep", "60"])).await.unwrap();
    let a = c.activity().await.unwrap();
    assert!(a.last_activity_unix > 0);
    assert_eq!((a.active_sessions, a.attached_sessions), (1, 1));
}

#[tokio::test]
async fn client_files_round_trip_stat_and_list() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let p = lohar.path("data.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    c.file_write(&p, "0600", &data).await.unwrap();
    let read = c.file_read(&p, ReadOptions::default()).await.unwrap();
    assert_eq!((read.data == data, read.total_size, read.mode.as_str()), (true, 300_000, "0600"));
    assert!(!read.is_truncated());
    let info = c.file_stat(&p).await.unwrap();
    assert_eq!((info.name.as_str(), info.size, info.is_dir), ("data.bin", 300_000, false));
    let list = c.file_list(&lohar.dir.as_path().display().to_string()).await.unwrap();
    assert!(list.iter().any(|e| e.name == "data.bin"));
    // Streaming into a writer.
    let mut sink = Vec::new();
    let (size, _) = c.file_read_to(&p, ReadOptions::default(), &mut sink).await.unwrap();
    assert_eq!((size, sink == data), (300_000, true));
}

#[tokio::test]
async fn client_file_read_window_reports_the_total_size() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let p = lohar.path("lines");
    let text: String = (1..=10_000).map(|i| format!("{i}\n")).collect();
    c.file_write(&p, "0644", text.as_bytes()).await.unwrap();
    let r = c.file_read(&p, ReadOptions { offset: 5, limit: 3, max_bytes: 0 }).await.unwrap();
    assert_eq!(r.data, b"5\n6\n7\n");
    assert_eq!(r.total_size, text.len() as u64);
    assert!(r.is_truncated());
}

#[tokio::test]
async fn client_file_errors_keep_the_agent_text() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let err = c.file_read("/nonexistent", ReadOptions::default()).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Agent(t) if t == "open /nonexistent: no such file or directory"),
        "{err:?}"
    );
    let err = c.file_stat("/nonexistent").await.unwrap_err();
    assert!(matches!(&err, AgentError::Agent(t) if t.message().contains("no such file")));
    let err = c.file_write(&lohar.path("x/\0bad"), "0644", b"x").await.unwrap_err();
    assert!(err.is_agent_error(), "{err:?}");
    let big = 100 * 1024 * 1024 + 1;
    let err = c
        .file_write_from(&lohar.path("big"), "0644", big, &mut tokio::io::empty())
        .await
        .unwrap_err();
    assert!(matches!(&err, AgentError::TooLarge { what: "file write", .. }), "{err:?}");
    // A source shorter than announced fails cleanly and leaves nothing behind.
    let err = c
        .file_write_from(&lohar.path("short"), "0644", 100, &mut &b"only ten.."[..])
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::SourceEnded { sent: 10, size: 100 }), "{err:?}");
    assert!(!Path::new(&lohar.path("short")).exists());
    // The client is still healthy.
    assert_eq!(c.exec(&["true"]).await.unwrap().exit_code, 0);
}

#[tokio::test]
async fn client_forward_is_a_duplex_stream() {
    let lohar = Lohar::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = conn.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
    });
    let mut stream = lohar.client().forward(port).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn client_forward_refused() {
    let lohar = Lohar::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = lohar.client().forward(port).await.unwrap_err();
    match err {
        AgentError::ForwardRefused { port: p, message } => {
            assert_eq!(p, port);
            assert!(message.contains("refused"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn client_wait_ready() {
    let lohar = Lohar::start();
    let attempts = lohar.client().wait_ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn client_wait_ready_times_out_on_a_missing_agent() {
    let dir = tempfile::tempdir().unwrap();
    let c = AgentClient::new(
        Endpoint::unix(dir.path().join("none.sock"), dir.path().join("none2.sock")),
        None,
    );
    let start = Instant::now();
    let err = c.wait_ready(Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, AgentError::Timeout { op: "wait ready", .. }), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn client_over_tcp_with_token() {
    let dir = tempfile::tempdir().unwrap();
    let lohar = Lohar::start_in(dir, Some(TOKEN), true);
    let (control, forward) = (lohar.tcp[0].parse().unwrap(), lohar.tcp[1].parse().unwrap());
    let c = AgentClient::new(Endpoint::Tcp { control, forward }, Some(TOKEN.into()));
    assert_eq!(c.exec(&["echo", "tcp"]).await.unwrap().stdout_text(), "tcp\n");
    assert!(c.reuses_connections());
    let wrong = AgentClient::new(Endpoint::Tcp { control, forward }, Some("0".repeat(32)));
    let err = wrong.exec(&["true"]).await.unwrap_err();
    assert!(matches!(&err, AgentError::Agent(t) if t == "auth required"), "{err:?}");
    let none = AgentClient::new(Endpoint::Tcp { control, forward }, None);
    assert!(matches!(none.activity().await.unwrap_err(), AgentError::Agent(_)));
}

/// SET_IDENTITY renews the token: new connections must AUTH with the new one (the old one is
/// refused), the connection that renewed it keeps working, and an empty token is refused (it
/// would open the agent).
#[tokio::test]
async fn set_identity_renews_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let lohar = Lohar::start_in(dir, Some(TOKEN), true);
    let (control, forward) = (lohar.tcp[0].parse().unwrap(), lohar.tcp[1].parse().unwrap());
    let client =
        |token: &str| AgentClient::new(Endpoint::Tcp { control, forward }, Some(token.into()));
    let old = client(TOKEN);
    assert_eq!(old.exec(&["true"]).await.unwrap().exit_code, 0);
    let renewed = "1".repeat(32);
    let set = |token: &str| proto::messages::SetIdentity {
        token: Some(token.into()),
        ..Default::default()
    };
    old.set_identity(&set(&renewed)).await.unwrap();
    let err = client(TOKEN).exec(&["true"]).await.unwrap_err();
    assert!(matches!(&err, AgentError::Agent(t) if t == "auth required"), "{err:?}");
    let new = client(&renewed);
    assert_eq!(new.exec(&["echo", "renewed"]).await.unwrap().stdout_text(), "renewed\n");
    let err = new.set_identity(&set("")).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Agent(t) if t == "set identity: token: empty token"),
        "{err:?}"
    );
    // Nothing to renew is not an error, and the token stays.
    new.set_identity(&proto::messages::SetIdentity::default()).await.unwrap();
    assert_eq!(client(&renewed).exec(&["true"]).await.unwrap().exit_code, 0);
    assert!(!format!("{:?}", set(&renewed)).contains(&renewed), "Debug shows the token");
}

/// A relay in front of the real agent that counts connections, and can answer HELLO the way a
/// v1 agent does (unknown type error, then close) to exercise the fallback.
struct Relay {
    dir: tempfile::TempDir,
    accepted: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(target: PathBuf, act_as_v1: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::UnixListener::bind(dir.path().join("relay.sock")).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                tokio::spawn(async move {
                    let mut head = [0u8; 5];
                    if client.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                    let mut body = vec![0u8; len - 1];
                    client.read_exact(&mut body).await.unwrap();
                    if act_as_v1 && head[4] == 0x70 {
                        let msg = b"unexpected frame type 0x70";
                        let mut frame = ((msg.len() + 1) as u32).to_be_bytes().to_vec();
                        frame.push(0x06);
                        frame.extend_from_slice(msg);
                        client.write_all(&frame).await.unwrap();
                        return;
                    }
                    let mut upstream = tokio::net::UnixStream::connect(&target).await.unwrap();
                    upstream.write_all(&head).await.unwrap();
                    upstream.write_all(&body).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        Relay { dir, accepted }
    }

    fn endpoint(&self, lohar: &Lohar) -> Endpoint {
        Endpoint::unix(self.dir.path().join("relay.sock"), lohar.dir.as_path().join("forward.sock"))
    }
}

#[tokio::test]
async fn client_pools_connections_with_a_reuse_agent() {
    let lohar = Lohar::start();
    let relay = Relay::start(lohar.dir.as_path().join("control.sock"), false).await;
    let c = AgentClient::new(relay.endpoint(&lohar), None);
    for i in 0..20 {
        let out = c.exec(&["sh", "-c", &format!("echo {i}")]).await.unwrap();
        assert_eq!(out.stdout_text(), format!("{i}\n"));
    }
    c.file_stat("/").await.unwrap();
    c.activity().await.unwrap();
    assert!(c.reuses_connections());
    assert_eq!(
        relay.accepted.load(Ordering::SeqCst),
        1,
        "sequential calls must share one connection"
    );
    // An agent error drops that connection; the next call opens a new one and works.
    assert!(c.file_stat("/nonexistent").await.is_err());
    c.file_stat("/").await.unwrap();
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn client_falls_back_to_one_request_per_connection_with_a_v1_agent() {
    let lohar = Lohar::start();
    let relay = Relay::start(lohar.dir.as_path().join("control.sock"), true).await;
    let c = AgentClient::new(relay.endpoint(&lohar), None);
    for i in 0..5 {
        assert_eq!(
            c.exec(&["sh", "-c", &format!("echo {i}")]).await.unwrap().stdout_text(),
            format!("{i}\n")
        );
    }
    assert!(!c.reuses_connections());
    // One rejected hello, then one connection per request and no more hellos.
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn client_replaces_pooled_connections_to_a_restarted_agent() {
    let lohar = Lohar::start();
    let endpoint = lohar.endpoint();
    let c = AgentClient::new(endpoint, None);
    assert_eq!(c.exec(&["echo", "first"]).await.unwrap().stdout_text(), "first\n");
    let dir = lohar.stop();
    let _lohar2 = Lohar::start_in(dir, None, false);
    // The pooled connection points at the dead agent; the client notices and redials.
    assert_eq!(c.exec(&["echo", "second"]).await.unwrap().stdout_text(), "second\n");
}

#[tokio::test]
async fn client_concurrent_calls_share_the_pool_safely() {
    let lohar = Lohar::start();
    let c = Arc::new(AgentClient::with_config(
        lohar.endpoint(),
        None,
        ClientConfig { pool_size: 2, ..Default::default() },
    ));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                for j in 0..5 {
                    let out = c.exec(&["sh", "-c", &format!("echo {i}-{j}")]).await.unwrap();
                    assert_eq!(out.stdout_text(), format!("{i}-{j}\n"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Review finding: dropping an ExecStream left its connection (and the command) alive until the
/// exec deadline.
#[tokio::test]
async fn client_dropping_an_exec_stream_kills_the_command() {
    let lohar = Lohar::start();
    let pidfile = lohar.path("stream.pid");
    let req = ExecRequest::command(["sh", "-c", &format!("echo $$ > {pidfile}; exec sleep 60")]);
    let stream = lohar.client().exec_stream(&req, Duration::from_secs(600)).await.unwrap();
    let mut pid = None;
    for _ in 0..200 {
        if let Some(p) =
            std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok())
        {
            pid = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = pid.expect("command started");
    drop(stream);
    let mut gone = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
        {
            gone = true;
            break;
        }
    }
    assert!(gone, "the command outlived its dropped stream");
}
