//! The client: connection pool, handshake, and one method per agent operation.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::limits::FILE_CHUNK_BYTES;
use proto::messages::{
    ActivityInfo, DetachedExec, ExecRequest, FEATURE_PROCS, FEATURE_REUSE, FileInfo,
    ForwardRequest, ForwardResponse, Hello, KillRequest, PathRequest, SessionInfo,
};
use proto::payload::decode_exit;
use proto::{Frame, FrameType};
use tokio::sync::mpsc;

use crate::codec::{read_frame, send_json, write_frame};
use crate::error::{AgentError, AgentErrorKind};
use crate::output::{ExecOutput, OutputCollector, OutputRoom, Unbounded};
use crate::session::Session;
use crate::stream::Stream;
use crate::transport::Endpoint;

/// The future of one request on a connection. Boxed so that every public future stays `Send`
/// (async closures cannot express that bound yet); one allocation per request is noise next to
/// the socket round trip.
type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, AgentError>> + Send + 'a>>;

/// Deadlines and pool size.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Connecting, authenticating and the hello exchange.
    pub connect_timeout: Duration,
    /// Short calls: stat, list, activity, session list and kill, session handshakes.
    pub call_timeout: Duration,
    /// A whole buffered or streaming exec, unless the call sets its own.
    pub exec_timeout: Duration,
    /// A whole file read or write.
    pub transfer_timeout: Duration,
    /// Idle connections kept for reuse.
    pub pool_size: usize,
    /// Offer the connection-reuse extension.
    pub reuse: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            exec_timeout: Duration::from_secs(600),
            transfer_timeout: Duration::from_secs(600),
            pool_size: 4,
            reuse: true,
        }
    }
}

/// What we know about the agent's support for connection reuse.
const MODE_UNKNOWN: u8 = 0;
const MODE_REUSE: u8 = 1;
const MODE_V1: u8 = 2;

/// An event of a streaming exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// A chunk of stdout.
    Stdout(Vec<u8>),
    /// A chunk of stderr.
    Stderr(Vec<u8>),
    /// The command exited; the last event.
    Exit(i32),
}

/// A running streaming exec: output events and an input handle.
#[derive(Debug)]
pub struct ExecStream {
    events: mpsc::Receiver<Result<ExecEvent, AgentError>>,
    input: ExecInput,
}

impl ExecStream {
    /// The next event; `None` after the exit event or an error.
    pub async fn next(&mut self) -> Option<Result<ExecEvent, AgentError>> {
        self.events.recv().await
    }

    /// The input handle (clonable).
    pub fn input(&self) -> ExecInput {
        self.input.clone()
    }
}

/// Sends stdin, EOF or KILL to a streaming exec.
#[derive(Debug, Clone)]
pub struct ExecInput {
    tx: mpsc::Sender<Frame>,
}

impl ExecInput {
    /// Sends input bytes.
    pub async fn write(&self, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(FILE_CHUNK_BYTES).filter(|c| !c.is_empty()) {
            self.send(Frame::new(FrameType::STDIN, chunk)).await?;
        }
        Ok(())
    }

    /// Closes the command's stdin.
    pub async fn close(&self) -> Result<(), AgentError> {
        self.send(Frame::new(FrameType::STDIN, Vec::new())).await
    }

    /// SIGKILLs the command's process group.
    pub async fn kill(&self) -> Result<(), AgentError> {
        self.send(Frame::new(FrameType::KILL, Vec::new())).await
    }

    async fn send(&self, frame: Frame) -> Result<(), AgentError> {
        self.tx.send(frame).await.map_err(|_| AgentError::Closed("exec input"))
    }
}

/// A pooled or fresh connection and whether it may go back to the pool.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) reusable: bool,
}

/// Client of one agent. `Debug` never shows the token.
pub struct AgentClient {
    endpoint: Endpoint,
    token: Option<String>,
    pub(crate) config: ClientConfig,
    pool: Mutex<Vec<Stream>>,
    mode: AtomicU8,
    /// The agent granted the process extension (`procs`).
    procs: AtomicBool,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn expect_kind(
    frame: Option<Frame>,
    kind: FrameType,
    op: &'static str,
) -> Result<Frame, AgentError> {
    match frame {
        Some(f) if f.kind == kind => Ok(f),
        Some(f) if f.kind == FrameType::ERROR => Err(AgentError::guest(f.text())),
        Some(f) => Err(AgentError::Protocol(format!("{op}: expected {kind:?}, got {}", f.kind))),
        None => Err(AgentError::Closed(op)),
    }
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(
    frame: &Frame,
    op: &'static str,
) -> Result<T, AgentError> {
    frame.json().map_err(|e| AgentError::Protocol(format!("{op}: bad JSON from the agent: {e}")))
}

impl AgentClient {
    /// A client with default deadlines; `token` is sent as AUTH on every new connection.
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        Self::with_config(endpoint, token, ClientConfig::default())
    }

    /// A client with explicit deadlines and pool size.
    pub fn with_config(endpoint: Endpoint, token: Option<String>, config: ClientConfig) -> Self {
        Self {
            endpoint,
            token,
            config,
            pool: Mutex::new(Vec::new()),
            mode: AtomicU8::new(MODE_UNKNOWN),
            procs: AtomicBool::new(false),
        }
    }

    /// Where the agent is.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// True once the agent accepted the connection-reuse extension.
    pub fn reuses_connections(&self) -> bool {
        self.mode.load(Ordering::Relaxed) == MODE_REUSE
    }

    /// True once the agent granted the process extension (`procs`: separate stderr, tags, guest
    /// PIDs, kill signals); known after the first connection.
    pub fn supports_procs(&self) -> bool {
        self.procs.load(Ordering::Relaxed)
    }

    /// Drops every pooled connection (e.g. after the VM was restored from a snapshot).
    pub fn reset_pool(&self) {
        self.pool().clear();
    }

    fn pool(&self) -> MutexGuard<'_, Vec<Stream>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_pooled(&self) -> Option<Stream> {
        let mut pool = self.pool();
        while let Some(stream) = pool.pop() {
            if !stream.is_stale() {
                return Some(stream);
            }
        }
        None
    }

    pub(crate) fn release(&self, conn: Conn) {
        if conn.reusable {
            let mut pool = self.pool();
            if pool.len() < self.config.pool_size {
                pool.push(conn.stream);
            }
        }
    }

    async fn authenticated(&self, forward: bool) -> Result<Stream, AgentError> {
        let mut stream = self.endpoint.dial(forward, self.config.connect_timeout).await?;
        self.send_auth(&mut stream).await?;
        Ok(stream)
    }

    /// A fresh authenticated control connection, not negotiated (for requests that take the
    /// connection over and do their own HELLO).
    pub(crate) async fn authenticated_stream(&self) -> Result<Stream, AgentError> {
        self.authenticated(false).await
    }

    /// Sends AUTH first thing on a new connection when the client has a token.
    async fn send_auth(&self, stream: &mut Stream) -> Result<(), AgentError> {
        if let Some(token) = self.token.as_deref().filter(|t| !t.is_empty()) {
            write_frame(stream, FrameType::AUTH, token.as_bytes()).await?;
        }
        Ok(())
    }

    /// A fresh control connection, negotiated for reuse when the agent supports it.
    async fn dial_control(&self) -> Result<Conn, AgentError> {
        let stream = self.authenticated(false).await?;
        self.negotiate(stream).await
    }

    /// Offers connection reuse (HELLO) on an authenticated connection; remembers a v1 agent's
    /// refusal and then hands back a plain connection.
    async fn negotiate(&self, mut stream: Stream) -> Result<Conn, AgentError> {
        if !self.config.reuse || self.mode.load(Ordering::Relaxed) == MODE_V1 {
            return Ok(Conn { stream, reusable: false });
        }
        let hello = Hello {
            version: 1,
            features: vec![FEATURE_REUSE.to_owned(), FEATURE_PROCS.to_owned()],
        };
        send_json(&mut stream, FrameType::HELLO, &hello).await?;
        let answer = tokio::time::timeout(self.config.connect_timeout, read_frame(&mut stream))
            .await
            .map_err(|_| AgentError::Timeout {
                op: "hello",
                after: self.config.connect_timeout,
            })??;
        match answer {
            Some(f) if f.kind == FrameType::HELLO_ACK => {
                let ack: Hello = json(&f, "hello")?;
                let reuse = ack.features.iter().any(|f| f == FEATURE_REUSE);
                self.procs
                    .store(ack.features.iter().any(|f| f == FEATURE_PROCS), Ordering::Relaxed);
                self.mode.store(if reuse { MODE_REUSE } else { MODE_V1 }, Ordering::Relaxed);
                Ok(Conn { stream, reusable: reuse })
            }
            Some(f) if f.kind == FrameType::ERROR => match AgentError::guest(f.text()) {
                // A v1 agent does not know HELLO and closes the connection after its error.
                e if e.kind() == AgentErrorKind::Unsupported => {
                    self.mode.store(MODE_V1, Ordering::Relaxed);
                    Ok(Conn { stream: self.authenticated(false).await?, reusable: false })
                }
                e => Err(e),
            },
            Some(f) => Err(AgentError::Protocol(format!("hello: unexpected frame {}", f.kind))),
            None => Err(AgentError::Closed("hello")),
        }
    }

    pub(crate) async fn connect(&self) -> Result<(Conn, bool), AgentError> {
        match self.take_pooled() {
            Some(stream) => Ok((Conn { stream, reusable: true }, true)),
            None => Ok((self.dial_control().await?, false)),
        }
    }

    /// Runs one request on a connection within `timeout`. The connection goes back to the pool
    /// only if the request completed cleanly. Idempotent requests that fail on a pooled
    /// connection (which the agent may have closed meanwhile) are retried once on a fresh one.
    async fn call<T, F>(
        &self,
        op: &'static str,
        timeout: Duration,
        idempotent: bool,
        f: F,
    ) -> Result<T, AgentError>
    where
        F: for<'a> Fn(&'a mut Stream) -> BoxFuture<'a, T>,
    {
        let attempt = async {
            let (mut conn, pooled) = self.connect().await?;
            match f(&mut conn.stream).await {
                Ok(value) => {
                    self.release(conn);
                    Ok(value)
                }
                Err(e) if pooled && idempotent && !e.is_agent_error() => {
                    drop(conn);
                    let mut conn = self.dial_control().await?;
                    let value = f(&mut conn.stream).await?;
                    self.release(conn);
                    Ok(value)
                }
                Err(e) => Err(e),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| AgentError::Timeout { op, after: timeout })?
    }

    /// Runs `argv` and buffers its output, within the default exec deadline.
    pub async fn exec(&self, argv: &[&str]) -> Result<ExecOutput, AgentError> {
        self.exec_request(&ExecRequest::command(argv.iter().copied()), self.config.exec_timeout)
            .await
    }

    /// Runs a full exec request and buffers up to 10 MiB of each stream: stdout's beginning and
    /// stderr's end, each flagged when cut ([`OutputCollector`]). On timeout the connection is
    /// dropped, which makes the agent kill the command.
    pub async fn exec_request(
        &self,
        req: &ExecRequest,
        timeout: Duration,
    ) -> Result<ExecOutput, AgentError> {
        self.exec_request_within(req, timeout, Arc::new(Unbounded)).await
    }

    /// [`exec_request`](Self::exec_request) that also keeps no more than `room` allows (a
    /// daemon-wide memory budget); what does not fit is dropped and flagged like output over
    /// the cap.
    pub async fn exec_request_within(
        &self,
        req: &ExecRequest,
        timeout: Duration,
        room: Arc<dyn OutputRoom>,
    ) -> Result<ExecOutput, AgentError> {
        let req = req.clone();
        self.call("exec", timeout, false, move |s: &mut Stream| {
            let (req, room) = (req.clone(), room.clone());
            Box::pin(async move {
                send_json(s, FrameType::EXEC_REQ, &req).await?;
                let mut out = OutputCollector::default();
                loop {
                    let frame = read_frame(s).await?.ok_or(AgentError::Closed("exec"))?;
                    let stdout = match frame.kind {
                        FrameType::STDOUT => true,
                        FrameType::STDERR => false,
                        FrameType::EXIT => {
                            let code = decode_exit(&frame.payload)
                                .map_err(|e| AgentError::Protocol(e.to_string()))?;
                            return Ok(out.finish(code));
                        }
                        FrameType::ERROR => return Err(AgentError::guest(frame.text())),
                        _ => continue,
                    };
                    let allowed = room.room(out.held(), out.growth(stdout, frame.payload.len()));
                    if stdout {
                        out.push_stdout(&frame.payload, allowed);
                    } else {
                        out.push_stderr(&frame.payload, allowed);
                    }
                }
            })
        })
        .await
    }

    /// Starts an exec whose output is streamed as events; stdin and KILL go through
    /// [`ExecStream::input`]. The whole exec is bounded by `timeout`.
    pub async fn exec_stream(
        &self,
        req: &ExecRequest,
        timeout: Duration,
    ) -> Result<ExecStream, AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (conn, _) = tokio::time::timeout_at(deadline, self.connect())
            .await
            .map_err(|_| AgentError::Timeout { op: "exec", after: timeout })??;
        let mut stream = conn.stream;
        tokio::time::timeout_at(deadline, send_json(&mut stream, FrameType::EXEC_REQ, req))
            .await
            .map_err(|_| AgentError::Timeout { op: "exec", after: timeout })??;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (event_tx, events) = mpsc::channel(64);
        let (input_tx, mut input_rx) = mpsc::channel::<Frame>(64);
        // The socket closes once both halves are dropped, and closing it is what makes the agent
        // kill the command. The reader ends when the exec ends, the deadline passes or the
        // ExecStream is dropped; the writer ends with it (or when every input handle is gone).
        let (reader_done, mut writer_stop) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    frame = input_rx.recv() => frame,
                    _ = &mut writer_stop => None,
                };
                let Some(frame) = frame else { break };
                if write_frame(&mut wr, frame.kind, &frame.payload).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let _reader_done = reader_done;
            loop {
                let next = tokio::select! {
                    // The caller dropped the ExecStream: abandon the connection.
                    _ = event_tx.closed() => return,
                    next = tokio::time::timeout_at(deadline, read_frame(&mut rd)) => next,
                };
                let next = match next {
                    Ok(next) => next,
                    Err(_) => {
                        let _ = event_tx
                            .send(Err(AgentError::Timeout { op: "exec", after: timeout }))
                            .await;
                        return;
                    }
                };
                let event = match next {
                    Ok(Some(f)) => match f.kind {
                        FrameType::STDOUT => Ok(ExecEvent::Stdout(f.payload)),
                        FrameType::STDERR => Ok(ExecEvent::Stderr(f.payload)),
                        FrameType::EXIT => decode_exit(&f.payload)
                            .map(ExecEvent::Exit)
                            .map_err(|e| AgentError::Protocol(e.to_string())),
                        FrameType::ERROR => Err(AgentError::guest(f.text())),
                        _ => continue,
                    },
                    Ok(None) => Err(AgentError::Closed("exec")),
                    Err(e) => Err(e.into()),
                };
                let last = !matches!(event, Ok(ExecEvent::Stdout(_)) | Ok(ExecEvent::Stderr(_)));
                if event_tx.send(event).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(ExecStream { events, input: ExecInput { tx: input_tx } })
    }

    /// Starts a detached command; its output goes to a file in the guest.
    pub async fn exec_detached(&self, req: &ExecRequest) -> Result<DetachedExec, AgentError> {
        let mut req = req.clone();
        req.detach = Some(true);
        let out = self.exec_request(&req, self.config.call_timeout).await?;
        serde_json::from_slice(&out.stdout)
            .map_err(|e| AgentError::Protocol(format!("detached exec: bad reply: {e}")))
    }

    /// Creates a TTY session (`tty` forced on) and attaches to it.
    pub async fn shell(&self, req: &ExecRequest) -> Result<Session, AgentError> {
        let mut req = req.clone();
        req.tty = Some(true);
        self.open_session(&req).await
    }

    /// Creates a piped session (`session` forced on) and attaches to it.
    pub async fn piped_session(&self, req: &ExecRequest) -> Result<Session, AgentError> {
        let mut req = req.clone();
        req.session = Some(true);
        self.open_session(&req).await
    }

    /// Attaches to an existing session; with `if_detached`, only if nobody else is attached.
    pub async fn attach(&self, session_id: &str, if_detached: bool) -> Result<Session, AgentError> {
        let req = ExecRequest {
            session_id: Some(session_id.to_owned()),
            if_detached: if_detached.then_some(true),
            ..Default::default()
        };
        self.open_session(&req).await
    }

    /// Attaches to an existing session, receiving its stderr as [`crate::SessionEvent::Stderr`]
    /// when it keeps stderr apart (extension `procs`; a v1 agent sends everything as output).
    pub async fn attach_with_stderr(
        &self,
        session_id: &str,
        if_detached: bool,
    ) -> Result<Session, AgentError> {
        let req = ExecRequest {
            session_id: Some(session_id.to_owned()),
            if_detached: if_detached.then_some(true),
            stderr: Some(true),
            ..Default::default()
        };
        self.open_session(&req).await
    }

    async fn open_session(&self, req: &ExecRequest) -> Result<Session, AgentError> {
        let timeout = self.config.call_timeout;
        let handshake = async {
            // Sessions take their connection over for good, so never use a pooled one that
            // another request could have returned.
            let mut conn = self.dial_control().await?;
            send_json(&mut conn.stream, FrameType::EXEC_REQ, req).await?;
            let frame = expect_kind(
                read_frame(&mut conn.stream).await?,
                FrameType::SESSION_INFO,
                "session",
            )?;
            let info: SessionInfo = json(&frame, "session")?;
            Ok(Session::new(info, conn.stream))
        };
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| AgentError::Timeout { op: "session", after: timeout })?
    }

    /// Lists sessions.
    pub async fn session_list(&self) -> Result<Vec<SessionInfo>, AgentError> {
        self.call("session list", self.config.call_timeout, true, |s: &mut Stream| {
            Box::pin(async move {
                write_frame(s, FrameType::EXEC_LIST_REQ, b"").await?;
                let f =
                    expect_kind(read_frame(s).await?, FrameType::EXEC_LIST_RESP, "session list")?;
                json(&f, "session list")
            })
        })
        .await
    }

    /// SIGKILLs a session's process group.
    pub async fn session_kill(&self, session_id: &str) -> Result<(), AgentError> {
        self.session_signal(session_id, None).await
    }

    /// Sends `signal` (a signal number; `None`: SIGKILL) to a session's process group. A v1
    /// agent ignores the number and SIGKILLs; see [`AgentClient::supports_procs`].
    pub async fn session_signal(
        &self,
        session_id: &str,
        signal: Option<i32>,
    ) -> Result<(), AgentError> {
        let req = KillRequest { session_id: session_id.to_owned(), signal };
        self.call("session kill", self.config.call_timeout, false, move |s: &mut Stream| {
            let req = req.clone();
            Box::pin(async move {
                send_json(s, FrameType::EXEC_KILL, &req).await?;
                expect_kind(read_frame(s).await?, FrameType::EXIT, "session kill").map(drop)
            })
        })
        .await
    }

    /// The agent's activity counters.
    pub async fn activity(&self) -> Result<ActivityInfo, AgentError> {
        self.call("activity", self.config.call_timeout, true, |s: &mut Stream| {
            Box::pin(async move {
                write_frame(s, FrameType::ACTIVITY_REQ, b"").await?;
                let f = expect_kind(read_frame(s).await?, FrameType::ACTIVITY_RESP, "activity")?;
                json(&f, "activity")
            })
        })
        .await
    }

    /// Sets the guest's wall clock (it stands still while a VM is paused or suspended). An
    /// extension frame: a v1 agent answers `unexpected frame type 0x72`, lohar in test mode
    /// refuses; both arrive as [`AgentError::Agent`].
    pub async fn set_time(&self, time: std::time::SystemTime) -> Result<(), AgentError> {
        let unix_nanos = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| AgentError::Protocol("time before 1970".into()))?
            .as_nanos() as u64;
        let req = proto::messages::SetTime { unix_nanos };
        self.call("set time", self.config.call_timeout, false, move |s: &mut Stream| {
            Box::pin(async move {
                send_json(s, FrameType::SET_TIME, &req).await?;
                expect_kind(read_frame(s).await?, FrameType::EXIT, "set time").map(drop)
            })
        })
        .await
    }

    /// Moves the guest's interface to a new address and MAC (the SET_NET extension). The agent
    /// answers before the change takes effect; afterwards this client's address is stale.
    pub async fn set_net(&self, req: &proto::messages::SetNet) -> Result<(), AgentError> {
        let req = req.clone();
        self.call("set net", self.config.call_timeout, false, move |s: &mut Stream| {
            let req = req.clone();
            Box::pin(async move {
                send_json(s, FrameType::SET_NET, &req).await?;
                expect_kind(read_frame(s).await?, FrameType::EXIT, "set net").map(drop)
            })
        })
        .await
    }

    /// Renews the guest's identity (the SET_IDENTITY extension): with a token, every later
    /// connection must AUTH with it, so this client (which sends the old one) should be
    /// replaced by one with the new token once this returns.
    pub async fn set_identity(&self, req: &proto::messages::SetIdentity) -> Result<(), AgentError> {
        let req = req.clone();
        self.call("set identity", self.config.call_timeout, false, move |s: &mut Stream| {
            let req = req.clone();
            Box::pin(async move {
                send_json(s, FrameType::SET_IDENTITY, &req).await?;
                expect_kind(read_frame(s).await?, FrameType::EXIT, "set identity").map(drop)
            })
        })
        .await
    }

    /// Stats a path (following symlinks).
    pub async fn file_stat(&self, path: &str) -> Result<FileInfo, AgentError> {
        let req = PathRequest { path: path.to_owned() };
        self.call("file stat", self.config.call_timeout, true, move |s: &mut Stream| {
            let req = req.clone();
            Box::pin(async move {
                send_json(s, FrameType::FILE_STAT_REQ, &req).await?;
                let f = expect_kind(read_frame(s).await?, FrameType::FILE_STAT_RESP, "file stat")?;
                json(&f, "file stat")
            })
        })
        .await
    }

    /// Lists a directory (at most 10,000 entries plus a marker entry with the real total).
    pub async fn file_list(&self, path: &str) -> Result<Vec<FileInfo>, AgentError> {
        let req = PathRequest { path: path.to_owned() };
        self.call("file list", self.config.call_timeout, true, move |s: &mut Stream| {
            let req = req.clone();
            Box::pin(async move {
                send_json(s, FrameType::FILE_LS_REQ, &req).await?;
                let f = expect_kind(read_frame(s).await?, FrameType::FILE_LS_RESP, "file list")?;
                json(&f, "file list")
            })
        })
        .await
    }

    /// Opens a byte stream to `port` inside the guest (the agent dials its loopback).
    pub async fn forward(&self, port: u16) -> Result<Stream, AgentError> {
        let timeout = self.config.connect_timeout + self.config.call_timeout;
        let handshake = async {
            let mut stream = self.authenticated(true).await?;
            send_json(&mut stream, FrameType::FWD_REQ, &ForwardRequest { port }).await?;
            let f = expect_kind(read_frame(&mut stream).await?, FrameType::FWD_RESP, "forward")?;
            let resp: ForwardResponse = json(&f, "forward")?;
            if !resp.is_ok() {
                return Err(AgentError::ForwardRefused {
                    port,
                    message: resp.message.unwrap_or_default(),
                });
            }
            Ok(stream)
        };
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| AgentError::Timeout { op: "forward", after: timeout })?
    }

    /// Waits until the agent runs `true` successfully; returns the number of attempts.
    ///
    /// First a TCP (or Unix) connection: every attempt is a fresh socket with a 50 ms deadline.
    /// While the guest boots its SYNs are simply dropped, so an attempt costs its deadline and no
    /// more (a long attempt would sit out Linux's 1 s SYN retransmit after lohar starts
    /// listening); once the guest has its address but lohar is not listening yet, the refusal is
    /// immediate. Then a real authenticated `exec true` with a generous deadline, since a slow
    /// (TCG) guest may need a while for its first command.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<u32, AgentError> {
        const CONNECT_ATTEMPT: Duration = Duration::from_millis(50);
        const EXEC_ATTEMPT: Duration = Duration::from_secs(5);
        let deadline = Instant::now() + timeout;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AgentError::Timeout { op: "wait ready", after: timeout });
            }
            if let Ok(mut stream) = self.endpoint.dial(false, CONNECT_ATTEMPT.min(left)).await {
                // The probe connection becomes the first pooled one (with a reuse agent), so
                // the exec below does not dial again.
                let left = deadline.saturating_duration_since(Instant::now());
                let negotiated = tokio::time::timeout(EXEC_ATTEMPT.min(left), async {
                    self.send_auth(&mut stream).await?;
                    self.negotiate(stream).await
                })
                .await;
                if let Ok(Ok(conn)) = negotiated {
                    self.release(conn);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let probe = ExecRequest::command(["true"]);
                if let Ok(out) = self.exec_request(&probe, EXEC_ATTEMPT.min(left)).await
                    && out.exit_code == 0
                {
                    return Ok(attempt);
                }
            }
            let pause =
                Duration::from_millis(5).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }
}
