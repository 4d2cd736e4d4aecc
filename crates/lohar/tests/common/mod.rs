//! Harness for the agent suite: starts the real `lohar` binary in test mode on Unix sockets in a
//! temp dir and speaks raw frames to it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use std::time::{Duration, Instant};

use proto::messages::ExecRequest;
use proto::payload::decode_exit;
use proto::{Frame, FrameType, read_frame, send_json, write_frame};

/// Safety net on every socket read: a hung agent fails the test instead of hanging CI. Tests
/// that wait for something slow use their own explicit bounds.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Agent {
    lohar: testkit::TestLohar,
    pub dir: PathBuf,
    pub control: PathBuf,
    pub forward: PathBuf,
    pub tcp_control: Option<String>,
}

impl Agent {
    pub fn start() -> Self {
        Self::start_with(None, &[])
    }

    /// Starts lohar with an optional config.json and extra environment.
    pub fn start_with(config: Option<serde_json::Value>, env: &[(&str, &str)]) -> Self {
        let config = config.map(|c| serde_json::to_vec(&c).unwrap());
        let options = testkit::Options { config: config.as_deref(), env, echo_stderr: false };
        let lohar = testkit::TestLohar::start(
            std::path::Path::new(env!("CARGO_BIN_EXE_lohar")),
            tempfile::tempdir().unwrap(),
            options,
        );
        Agent {
            dir: lohar.dir().to_owned(),
            control: lohar.control(),
            forward: lohar.forward(),
            tcp_control: lohar.tcp.get("LOHAR_TCP_CONTROL").cloned(),
            lohar,
        }
    }

    pub fn pid(&self) -> u32 {
        self.lohar.pid()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.control).expect("connect control socket");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    pub fn connect_forward(&self) -> UnixStream {
        let s = UnixStream::connect(&self.forward).expect("connect forward socket");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }

    /// Connects and sends one request frame.
    pub fn request(&self, kind: FrameType, payload: &[u8]) -> UnixStream {
        let mut s = self.connect();
        write_frame(&mut s, kind, payload).unwrap();
        s
    }

    pub fn request_json<T: serde::Serialize>(&self, kind: FrameType, value: &T) -> UnixStream {
        let mut s = self.connect();
        send_json(&mut s, kind, value).unwrap();
        s
    }

    pub fn exec(&self, argv: &[&str]) -> ExecResult {
        self.exec_req(&ExecRequest::command(argv.iter().copied()))
    }

    pub fn exec_root(&self, argv: &[&str]) -> ExecResult {
        let mut req = ExecRequest::command(argv.iter().copied());
        req.user = Some("root".into());
        self.exec_req(&req)
    }

    pub fn sh(&self, script: &str) -> ExecResult {
        self.exec(&["sh", "-c", script])
    }

    pub fn exec_req(&self, req: &ExecRequest) -> ExecResult {
        let mut s = self.request_json(FrameType::EXEC_REQ, req);
        collect_exec(&mut s)
    }
}

#[derive(Debug, Default)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<i32>,
    pub error: Option<String>,
    pub frames: Vec<FrameType>,
}

impl ExecResult {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Sends HELLO asking for connection reuse and returns the agent's HELLO_ACK.
pub fn hello_reuse(s: &mut UnixStream) -> proto::messages::Hello {
    let hello = proto::messages::Hello { version: 1, features: vec!["reuse".into()] };
    send_json(s, FrameType::HELLO, &hello).unwrap();
    let f = read(s);
    assert_eq!(f.kind, FrameType::HELLO_ACK, "{}", f.text());
    f.json().unwrap()
}

/// Reads frames until EXIT, ERROR or EOF.
pub fn collect_exec(s: &mut UnixStream) -> ExecResult {
    let mut r = ExecResult::default();
    while let Some(frame) = read_frame(s).unwrap() {
        r.frames.push(frame.kind);
        match frame.kind {
            FrameType::STDOUT => r.stdout.extend_from_slice(&frame.payload),
            FrameType::STDERR => r.stderr.extend_from_slice(&frame.payload),
            FrameType::EXIT => {
                r.exit = Some(decode_exit(&frame.payload).unwrap());
                break;
            }
            FrameType::ERROR => {
                r.error = Some(frame.text());
                break;
            }
            _ => {}
        }
    }
    r
}

pub fn read(s: &mut UnixStream) -> Frame {
    read_frame(s).unwrap().expect("unexpected EOF")
}

/// Reads frames until one of `kind`, returning it; panics on ERROR or EOF first.
pub fn read_until(s: &mut UnixStream, kind: FrameType) -> Frame {
    loop {
        let f = read(s);
        if f.kind == kind {
            return f;
        }
        assert_ne!(f.kind, FrameType::ERROR, "agent error: {}", f.text());
    }
}

/// Reads STDOUT frames until the accumulated output contains `needle` (within `timeout`).
pub fn read_output_until(s: &mut UnixStream, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    s.set_read_timeout(Some(timeout)).unwrap();
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {needle:?}; got {:?}",
            String::from_utf8_lossy(&out)
        );
        let f = read(s);
        match f.kind {
            FrameType::STDOUT => out.extend_from_slice(&f.payload),
            FrameType::ERROR => panic!("agent error: {}", f.text()),
            FrameType::EXIT => panic!(
                "exited while waiting for {needle:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
            _ => {}
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.contains(needle) {
            return text;
        }
    }
}

/// Polls `cond` every 10 ms for at most `timeout`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

pub fn process_alive(pid: i32) -> bool {
    // Zombies are not alive: the agent reaps its children, so a dead child disappears.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}
