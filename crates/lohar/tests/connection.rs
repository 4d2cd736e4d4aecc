//! Connection handling: auth, the reuse extension, limits, forwarding, TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use proto::messages::{ExecRequest, ForwardRequest, ForwardResponse, Hello};
use proto::payload::decode_exit;
use proto::{FrameType, read_frame, send_json, write_frame};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn with_token() -> Agent {
    Agent::start_with(Some(serde_json::json!({"token": TOKEN})), &[])
}

#[test]
fn auth_correct_token_is_accepted() {
    let agent = with_token();
    let mut s = agent.connect();
    write_frame(&mut s, FrameType::AUTH, TOKEN.as_bytes()).unwrap();
    send_json(&mut s, FrameType::EXEC_REQ, &ExecRequest::command(["echo", "authed"])).unwrap();
    assert_eq!(collect_exec(&mut s).out(), "authed\n");
}

#[test]
fn auth_missing_or_wrong_token_is_refused() {
    let agent = with_token();
    let mut s = agent.request_json(FrameType::EXEC_REQ, &ExecRequest::command(["true"]));
    assert_eq!(collect_exec(&mut s).error.as_deref(), Some("auth required"));
    let mut s = agent.request(FrameType::AUTH, b"0123456789abcdef0123456789abcdeX");
    // The agent may already have answered the wrong token and closed its end (the write then
    // fails with EPIPE); its ERROR frame is still there to read, which is what is checked.
    let _ = send_json(&mut s, FrameType::EXEC_REQ, &ExecRequest::command(["true"]));
    assert_eq!(collect_exec(&mut s).error.as_deref(), Some("auth required"));
    let mut s = agent.request(FrameType::AUTH, b"short");
    assert_eq!(collect_exec(&mut s).error.as_deref(), Some("auth required"));
    let mut s = agent.request(FrameType::AUTH, b"");
    assert_eq!(collect_exec(&mut s).error.as_deref(), Some("auth required"));
}

#[test]
fn auth_deadline_is_five_seconds() {
    let agent = with_token();
    let mut s = agent.connect();
    let start = Instant::now();
    let f = read(&mut s);
    let waited = start.elapsed();
    assert_eq!((f.kind, f.text().as_str()), (FrameType::ERROR, "auth required"));
    assert!(waited >= Duration::from_millis(4500) && waited < Duration::from_secs(8), "{waited:?}");
}

#[test]
fn auth_applies_to_the_forward_port() {
    let agent = with_token();
    let mut s = agent.connect_forward();
    send_json(&mut s, FrameType::FWD_REQ, &ForwardRequest { port: 1 }).unwrap();
    let f = read(&mut s);
    assert_eq!((f.kind, f.text().as_str()), (FrameType::ERROR, "auth required"));
}

#[test]
fn auth_frame_to_a_tokenless_agent_is_accepted() {
    let agent = Agent::start();
    let mut s = agent.request(FrameType::AUTH, b"whatever");
    send_json(&mut s, FrameType::EXEC_REQ, &ExecRequest::command(["echo", "ok"])).unwrap();
    assert_eq!(collect_exec(&mut s).out(), "ok\n");
}

#[test]
fn v1_client_gets_one_request_per_connection() {
    let agent = Agent::start();
    let mut s = agent.request_json(FrameType::EXEC_REQ, &ExecRequest::command(["true"]));
    assert_eq!(collect_exec(&mut s).exit, Some(0));
    // Exactly v1: the agent closes after the request.
    assert!(read_frame(&mut s).unwrap().is_none());
}

#[test]
fn hello_enables_many_requests_on_one_connection() {
    let agent = with_token();
    let mut s = agent.connect();
    write_frame(&mut s, FrameType::AUTH, TOKEN.as_bytes()).unwrap();
    let ack = hello_reuse(&mut s);
    assert_eq!((ack.version, ack.features), (1, vec!["reuse".to_owned()]));
    for i in 0..50 {
        send_json(
            &mut s,
            FrameType::EXEC_REQ,
            &ExecRequest::command(["sh", "-c", &format!("echo {i}; exit {}", i % 7)]),
        )
        .unwrap();
        let r = collect_exec(&mut s);
        assert_eq!((r.out(), r.exit), (format!("{i}\n"), Some(i % 7)));
    }
    write_frame(&mut s, FrameType::ACTIVITY_REQ, b"").unwrap();
    assert_eq!(read(&mut s).kind, FrameType::ACTIVITY_RESP);
    write_frame(&mut s, FrameType::EXEC_LIST_REQ, b"").unwrap();
    assert_eq!(read(&mut s).kind, FrameType::EXEC_LIST_RESP);
}

#[test]
fn hello_without_reuse_grants_nothing() {
    let agent = Agent::start();
    let mut s = agent.connect();
    send_json(&mut s, FrameType::HELLO, &Hello { version: 1, features: vec![] }).unwrap();
    let ack: Hello = read(&mut s).json().unwrap();
    assert!(ack.features.is_empty());
    send_json(&mut s, FrameType::EXEC_REQ, &ExecRequest::command(["true"])).unwrap();
    assert_eq!(collect_exec(&mut s).exit, Some(0));
    assert!(read_frame(&mut s).unwrap().is_none());
}

#[test]
fn reuse_discards_stray_input_between_requests() {
    let agent = Agent::start();
    let mut s = agent.connect();
    hello_reuse(&mut s);
    send_json(&mut s, FrameType::EXEC_REQ, &ExecRequest::command(["true"])).unwrap();
    assert_eq!(collect_exec(&mut s).exit, Some(0));
    // Input that raced with the end of the previous exec.
    write_frame(&mut s, FrameType::STDIN, b"late").unwrap();
    write_frame(&mut s, FrameType::KILL, b"").unwrap();
    send_json(&mut s, FrameType::EXEC_REQ, &ExecRequest::command(["echo", "next"])).unwrap();
    assert_eq!(collect_exec(&mut s).out(), "next\n");
}

#[test]
fn reuse_connection_closes_after_an_error() {
    let agent = Agent::start();
    let mut s = agent.connect();
    hello_reuse(&mut s);
    send_json(&mut s, FrameType::EXEC_REQ, &ExecRequest::command(["/nonexistent"])).unwrap();
    assert!(collect_exec(&mut s).error.is_some());
    assert!(read_frame(&mut s).map(|f| f.is_none()).unwrap_or(true));
}

#[test]
fn control_connections_are_capped_at_50() {
    let agent = Agent::start();
    // 50 idle connections, each occupying a slot with a running exec.
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(agent.request_json(FrameType::EXEC_REQ, &ExecRequest::command(["sleep", "30"])));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut s = agent.connect();
    let f = read(&mut s);
    assert_eq!((f.kind, f.text().as_str()), (FrameType::ERROR, "connection limit exceeded"));
    // The forward port is not capped.
    let mut fwd = agent.connect_forward();
    send_json(&mut fwd, FrameType::FWD_REQ, &ForwardRequest { port: 1 }).unwrap();
    assert_eq!(read(&mut fwd).kind, FrameType::FWD_RESP);
    // Slots free up when connections end.
    for mut conn in held.drain(..) {
        write_frame(&mut conn, FrameType::KILL, b"").unwrap();
        assert_eq!(collect_exec(&mut conn).exit, Some(137));
    }
    assert!(wait_for(Duration::from_secs(5), || {
        let mut s = agent.request_json(FrameType::EXEC_REQ, &ExecRequest::command(["true"]));
        collect_exec(&mut s).exit == Some(0)
    }));
}

fn echo_server() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 65536];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => conn.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    (port, handle)
}

#[test]
fn forward_relays_bytes_to_a_guest_port() {
    let agent = Agent::start();
    let (port, server) = echo_server();
    let mut s = agent.connect_forward();
    send_json(&mut s, FrameType::FWD_REQ, &ForwardRequest { port }).unwrap();
    let f = read(&mut s);
    assert_eq!(f.kind, FrameType::FWD_RESP);
    assert_eq!(f.payload, br#"{"status":"ok"}"#);
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    // Half-close is passed through: the echo server sees EOF and closes, and so do we.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    server.join().unwrap();
}

#[test]
fn forward_large_data_is_byte_exact() {
    let agent = Agent::start();
    let (port, server) = echo_server();
    let mut s = agent.connect_forward();
    send_json(&mut s, FrameType::FWD_REQ, &ForwardRequest { port }).unwrap();
    assert_eq!(read(&mut s).kind, FrameType::FWD_RESP);
    let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut writer = s.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    t.join().unwrap();
    assert!(got == data, "relay corrupted {} bytes", got.len());
    server.join().unwrap();
}

#[test]
fn forward_refused_port_reports_the_dial_error() {
    let agent = Agent::start();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut s = agent.connect_forward();
    send_json(&mut s, FrameType::FWD_REQ, &ForwardRequest { port }).unwrap();
    let resp: ForwardResponse = read(&mut s).json().unwrap();
    assert_eq!(resp.status, "error");
    assert_eq!(
        resp.message.unwrap(),
        format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
    );
}

#[test]
fn forward_bad_requests_are_answered() {
    let agent = Agent::start();
    let mut s = agent.connect_forward();
    write_frame(&mut s, FrameType::FWD_REQ, br#"{"port":70000}"#).unwrap();
    let resp: ForwardResponse = read(&mut s).json().unwrap();
    assert!(resp.message.unwrap().starts_with("bad forward request: "));
    let mut s = agent.connect_forward();
    send_json(&mut s, FrameType::FWD_REQ, &ForwardRequest { port: 0 }).unwrap();
    assert_eq!(read(&mut s).json::<ForwardResponse>().unwrap().status, "error");
    let mut s = agent.connect_forward();
    write_frame(&mut s, FrameType::EXEC_REQ, b"{}").unwrap();
    let f = read(&mut s);
    assert_eq!((f.kind, f.text().as_str()), (FrameType::ERROR, "expected FWD_REQ, got 0x10"));
}

#[test]
fn tcp_listener_serves_the_same_protocol() {
    let agent = Agent::start_with(None, &[("LOHAR_TCP_CONTROL", "127.0.0.1:0")]);
    let addr = agent.tcp_control.clone().expect("tcp address printed");
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    send_json(&mut s, FrameType::EXEC_REQ, &ExecRequest::command(["echo", "over tcp"])).unwrap();
    let mut out = Vec::new();
    loop {
        let f = read_frame(&mut s).unwrap().unwrap();
        match f.kind {
            FrameType::STDOUT => out.extend_from_slice(&f.payload),
            FrameType::EXIT => {
                assert_eq!(decode_exit(&f.payload).unwrap(), 0);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(out, b"over tcp\n");
}

#[test]
fn test_mode_requires_both_socket_paths() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lohar"))
        .env("LOHAR_TEST", "1")
        .env_remove("LOHAR_SOCK")
        .env_remove("LOHAR_FWD_SOCK")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("LOHAR_SOCK and LOHAR_FWD_SOCK required")
    );
}

#[test]
fn agent_refuses_to_run_as_init_when_not_pid_1() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lohar"))
        .env_remove("LOHAR_TEST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be PID 1"));
}

#[test]
fn sigterm_in_test_mode_takes_started_commands_down() {
    let agent = Agent::start();
    let mut s = agent.request_json(
        FrameType::EXEC_REQ,
        &ExecRequest::command(["sh", "-c", "echo $$; exec sleep 600"]),
    );
    let pid: i32 = read_until(&mut s, FrameType::STDOUT).text().trim().parse().unwrap();
    let mut detached = ExecRequest::command(["sh", "-c", "exec sleep 600"]);
    detached.detach = Some(true);
    detached.output_file = Some(agent.path("detached.log").display().to_string());
    let r = agent.exec_req(&detached);
    let info: proto::messages::DetachedExec = serde_json::from_slice(&r.stdout).unwrap();
    drop(agent);
    assert!(
        wait_for(Duration::from_secs(5), || !process_alive(pid) && !process_alive(info.pid as i32))
    );
}

/// Review finding: the 5 s auth deadline was an idle timeout, so a peer trickling one byte at a
/// time held a connection (and a slot of the 50) forever.
#[test]
fn auth_deadline_is_absolute_not_per_read() {
    let agent = with_token();
    let mut s = agent.connect();
    let start = Instant::now();
    let writer = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            // A valid-looking AUTH header, then one byte per second.
            let _ = w.write_all(&[0, 0, 0, 33, 0x11]);
            for _ in 0..9 {
                std::thread::sleep(Duration::from_secs(1));
                if w.write_all(b"0").is_err() {
                    return;
                }
            }
        })
    };
    let f = read(&mut s);
    assert_eq!((f.kind, f.text().as_str()), (FrameType::ERROR, "auth required"));
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(7), "trickling peer kept the connection for {waited:?}");
    drop(s);
    writer.join().unwrap();
}

#[test]
fn oversized_auth_frame_is_refused_at_once() {
    let agent = with_token();
    let mut s = agent.connect();
    s.write_all(&(1u32 << 20).to_be_bytes()).unwrap();
    s.write_all(&[0x11]).unwrap();
    let start = Instant::now();
    let f = read(&mut s);
    assert_eq!((f.kind, f.text().as_str()), (FrameType::ERROR, "auth required"));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn set_time_is_refused_in_test_mode() {
    let agent = Agent::start();
    let mut s =
        agent.request_json(FrameType::SET_TIME, &proto::messages::SetTime { unix_nanos: 1 });
    let r = collect_exec(&mut s);
    assert!(r.error.unwrap().starts_with("set time: refused in test mode"));
    let mut s = agent.request(FrameType::SET_TIME, b"{}");
    assert!(collect_exec(&mut s).error.unwrap().starts_with("bad request: "));
}

#[test]
fn set_net_is_refused_in_test_mode_and_checks_its_input() {
    let agent = Agent::start();
    let req = proto::messages::SetNet {
        ip: "10.0.0.9".parse().unwrap(),
        prefix: 24,
        gateway: "10.0.0.1".parse().unwrap(),
        mac: "52:54:00:00:00:09".into(),
    };
    let mut s = agent.request_json(FrameType::SET_NET, &req);
    let r = collect_exec(&mut s);
    assert!(r.error.unwrap().starts_with("set net: refused in test mode"));
    let mut s = agent.request(FrameType::SET_NET, br#"{"ip":"10.0.0.300"}"#);
    assert!(collect_exec(&mut s).error.unwrap().starts_with("bad request: "));
}

/// Starts lohar in test mode with `config` (if any) and LOHAR_REQUIRE_TOKEN=1, the VM's
/// fail-closed rule; returns the process, its directory and its stderr up to the ready line.
fn start_requiring_token(
    config: Option<&[u8]>,
) -> (std::process::Child, tempfile::TempDir, Vec<String>) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lohar"));
    cmd.env("LOHAR_TEST", "1")
        .env("LOHAR_REQUIRE_TOKEN", "1")
        .env("LOHAR_SOCK", dir.path().join("control.sock"))
        .env("LOHAR_FWD_SOCK", dir.path().join("forward.sock"))
        .env_remove("LOHAR_CONFIG")
        .stderr(std::process::Stdio::piped());
    if let Some(config) = config {
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        cmd.env("LOHAR_CONFIG", dir.path().join("config.json"));
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.last().is_some_and(|l: &String| l.contains("test mode ready")) {
        let left = deadline.saturating_duration_since(Instant::now());
        lines.push(rx.recv_timeout(left).expect("lohar did not get ready"));
    }
    (child, dir, lines)
}

fn stop(mut child: std::process::Child) -> Option<i32> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut status = None;
    assert!(wait_for(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    }));
    status.and_then(|s| s.code())
}

#[test]
fn without_a_usable_token_the_agent_fails_closed() {
    let cases: [(Option<&[u8]>, &str); 3] = [
        (None, "no usable config"),
        (Some(b"{\"token\": "), "no usable config: cannot parse"),
        (Some(b"{\"token\": \"\"}"), "the config has no token"),
    ];
    for (config, why) in cases {
        let (mut child, dir, lines) = start_requiring_token(config);
        let refusal = lines.iter().find(|l| l.contains("refusing to serve")).cloned();
        assert!(refusal.as_deref().is_some_and(|l| l.contains(why)), "{why}: {lines:?}");
        // Nothing listens, and the process stays up (PID 1 keeps reaping) until told to stop.
        assert!(std::os::unix::net::UnixStream::connect(dir.path().join("control.sock")).is_err());
        assert!(std::os::unix::net::UnixStream::connect(dir.path().join("forward.sock")).is_err());
        assert!(child.try_wait().unwrap().is_none(), "lohar exited instead of idling");
        assert_eq!(stop(child), Some(0));
    }
}

#[test]
fn with_a_token_the_fail_closed_rule_serves_and_requires_it() {
    let config = format!(r#"{{"token": "{TOKEN}"}}"#);
    let (child, dir, lines) = start_requiring_token(Some(config.as_bytes()));
    assert!(!lines.iter().any(|l| l.contains("refusing")), "{lines:?}");
    let mut s = std::os::unix::net::UnixStream::connect(dir.path().join("control.sock")).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    send_json(&mut s, FrameType::EXEC_REQ, &ExecRequest::command(["true"])).unwrap();
    assert_eq!(collect_exec(&mut s).error.as_deref(), Some("auth required"));
    assert_eq!(stop(child), Some(0));
}

#[test]
fn test_mode_refuses_a_damaged_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), b"{\"token\": 5}").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lohar"))
        .env("LOHAR_TEST", "1")
        .env("LOHAR_SOCK", dir.path().join("control.sock"))
        .env("LOHAR_FWD_SOCK", dir.path().join("forward.sock"))
        .env("LOHAR_CONFIG", dir.path().join("config.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no usable config: cannot parse"), "{stderr}");
}
