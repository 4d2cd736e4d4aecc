//! envd's `process.Process` on lohar's sessions: every started process is a session (piped,
//! or a PTY), which outlives the connection that started it. The daemon keeps each session
//! attached in a task of its own (the [`Registry`]) and fans its output out to the `Start` and
//! `Connect` streams, so a stream that is dropped leaves the process running, and `Connect`,
//! `SendInput`, `CloseStdin`, `SendSignal` find it by PID. A process this daemon is not
//! attached to (after a pause and resume, a restart) is attached again by its session.
//!
//! The PID E2B sees is the session's number (`s7` is 7), not the guest's PID. lohar's piped
//! sessions merge stderr into stdout, so everything arrives as `stdout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::broadcast;

use super::E2bState;
use super::connect::{self, Code, RpcError};
use super::envd::Guest;

/// Output chunks a slow stream may fall behind by before it misses some.
const FANOUT: usize = 1024;

/// Something a process did.
#[derive(Debug, Clone)]
enum Event {
    Data(Bytes),
    End(i32),
    Failed(String),
}

/// One process the daemon is attached to.
#[derive(Debug)]
struct Proc {
    pid: u32,
    pty: bool,
    config: serde_json::Value,
    tag: Option<String>,
    events: broadcast::Sender<Event>,
    writer: tokio::sync::Mutex<engine::SessionWriter>,
}

/// The processes, by sandbox and PID.
#[derive(Debug, Default)]
pub struct Registry {
    procs: Mutex<HashMap<(String, u32), Arc<Proc>>>,
}

impl Registry {
    fn get(&self, sandbox: &str, pid: u32) -> Option<Arc<Proc>> {
        self.procs.lock().ok()?.get(&(sandbox.to_owned(), pid)).cloned()
    }

    fn insert(&self, sandbox: &str, proc: Arc<Proc>) {
        if let Ok(mut procs) = self.procs.lock() {
            procs.insert((sandbox.to_owned(), proc.pid), proc);
        }
    }

    fn remove(&self, sandbox: &str, pid: u32) {
        if let Ok(mut procs) = self.procs.lock() {
            procs.remove(&(sandbox.to_owned(), pid));
        }
    }

    fn of(&self, sandbox: &str) -> Vec<Arc<Proc>> {
        let Ok(procs) = self.procs.lock() else { return Vec::new() };
        procs.iter().filter(|((s, _), _)| s == sandbox).map(|(_, p)| Arc::clone(p)).collect()
    }

    /// Drops what a destroyed sandbox left.
    pub fn forget_sandbox(&self, sandbox: &str) {
        if let Ok(mut procs) = self.procs.lock() {
            procs.retain(|(s, _), _| s != sandbox);
        }
    }
}

/// `s7` -> 7.
fn pid_of(session_id: &str) -> Option<u32> {
    session_id.strip_prefix('s')?.parse().ok()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProcessConfig {
    cmd: String,
    args: Vec<String>,
    envs: std::collections::BTreeMap<String, String>,
    cwd: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Size {
    cols: u16,
    rows: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pty {
    size: Option<Size>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StartRequest {
    process: ProcessConfig,
    pty: Option<Pty>,
    tag: Option<String>,
    stdin: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selector {
    pid: Option<u32>,
    tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Input {
    stdin: Option<String>,
    pty: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ByProcess {
    process: Selector,
    input: Option<Input>,
    signal: Option<String>,
    pty: Option<Pty>,
}

/// `POST /process.Process/{method}`.
pub async fn call(
    State(state): State<E2bState>,
    axum::Extension(guest): axum::Extension<Guest>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = match method.as_str() {
        "Start" => return start(state, guest, &headers, &body).await,
        "Connect" => return reconnect(state, guest, &headers, &body).await,
        "List" => Ok(list(&state, &guest)),
        "SendInput" => send_input(&state, &guest, &body).await,
        "CloseStdin" => close_stdin(&state, &guest, &body).await,
        "SendSignal" => send_signal(&state, &guest, &body).await,
        "Update" => update(&state, &guest, &body).await,
        other => Err(RpcError::new(Code::Unimplemented, format!("process.Process/{other}"))),
    };
    match result {
        Ok(message) => connect::unary_response(&message),
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

/// The keep-alive interval the client asks (`Keepalive-Ping-Interval`, seconds), bounded.
fn keepalive_of(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30);
    Duration::from_secs(secs.clamp(1, 300))
}

/// Attaches a task to a session and registers it.
fn adopt(
    state: &E2bState,
    guest: &Guest,
    session: engine::Leased<engine::Session>,
    config: serde_json::Value,
    tag: Option<String>,
    pty: bool,
) -> Result<(Arc<Proc>, broadcast::Receiver<Event>), RpcError> {
    let (session, lease) = session.into_parts();
    let (info, mut reader, writer) = session.split();
    let pid = pid_of(&info.session_id).ok_or_else(|| {
        RpcError::new(Code::Internal, format!("unexpected session id {:?}", info.session_id))
    })?;
    let (events, rx) = broadcast::channel(FANOUT);
    let proc = Arc::new(Proc {
        pid,
        pty,
        config,
        tag,
        events: events.clone(),
        writer: tokio::sync::Mutex::new(writer),
    });
    state.procs.insert(&guest.id, Arc::clone(&proc));
    let (procs, sandbox) = (Arc::clone(&state.procs), guest.id.clone());
    tokio::spawn(async move {
        // The lease keeps the sandbox awake while the process is attached.
        let _lease = lease;
        loop {
            let event = match reader.next().await {
                Ok(Some(engine::SessionEvent::Output(data))) => Event::Data(Bytes::from(data)),
                Ok(Some(engine::SessionEvent::Exit(code))) => Event::End(code),
                Ok(None) => Event::Failed("the agent closed the session".into()),
                Err(e) => Event::Failed(e.to_string()),
            };
            let last = !matches!(event, Event::Data(_));
            let _ = events.send(event);
            if last {
                break;
            }
        }
        procs.remove(&sandbox, pid);
    });
    Ok((proc, rx))
}

/// `Start` (server streaming).
async fn start(state: E2bState, guest: Guest, headers: &HeaderMap, body: &[u8]) -> Response {
    let req: StartRequest = match connect::stream_request(body) {
        Ok(r) => r,
        Err(e) => return connect::stream_error(&e),
    };
    if req.process.cmd.is_empty() {
        return connect::stream_error(&RpcError::new(
            Code::InvalidArgument,
            "process.cmd required",
        ));
    }
    let mut exec = engine::ExecRequest::command(
        std::iter::once(req.process.cmd.clone()).chain(req.process.args.iter().cloned()),
    );
    if !req.process.envs.is_empty() {
        exec.env = Some(req.process.envs.clone());
    }
    exec.cwd = req.process.cwd.clone().filter(|c| !c.is_empty());
    let pty = req.pty.is_some();
    if let Some(size) = req.pty.as_ref().and_then(|p| p.size.as_ref()) {
        exec.rows = Some(size.rows.max(1));
        exec.cols = Some(size.cols.max(1));
    }
    if let Err(e) = crate::secrets::add_env(&state.app, &guest.id, &mut exec).await {
        return connect::stream_error(&super::error::rpc(crate::error::ApiError::Internal(e)));
    }
    let session = if pty {
        state.app.engine.shell(&guest.id, &exec).await
    } else {
        state.app.engine.piped_session(&guest.id, &exec).await
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => return connect::stream_error(&super::error::rpc_engine(e)),
    };
    let config = serde_json::json!({
        "cmd": req.process.cmd, "args": req.process.args, "envs": req.process.envs,
        "cwd": req.process.cwd,
    });
    let (proc, rx) = match adopt(&state, &guest, session, config, req.tag, pty) {
        Ok(p) => p,
        Err(e) => return connect::stream_error(&e),
    };
    if !pty && req.stdin != Some(true) {
        let _ = proc.writer.lock().await.close_stdin().await;
    }
    events_response(proc.pid, pty, rx, keepalive_of(headers))
}

/// The stream of a process's events: `start`, `data`..., `end`, then the end envelope. A
/// client that goes away ends only the stream.
fn events_response(
    pid: u32,
    pty: bool,
    mut rx: broadcast::Receiver<Event>,
    keepalive: Duration,
) -> Response {
    let (tx, body) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let start = serde_json::json!({ "event": { "start": { "pid": pid } } });
        if tx.send(connect::message(&start)).await.is_err() {
            return;
        }
        let mut ping = tokio::time::interval(keepalive);
        ping.tick().await;
        let b64 = base64::engine::general_purpose::STANDARD;
        loop {
            let next = tokio::select! {
                e = rx.recv() => e,
                _ = ping.tick() => {
                    let k = serde_json::json!({ "event": { "keepalive": {} } });
                    if tx.send(connect::message(&k)).await.is_err() { return; }
                    continue;
                }
            };
            let (message, end) = match next {
                Ok(Event::Data(data)) => {
                    let stream = if pty { "pty" } else { "stdout" };
                    let m =
                        serde_json::json!({ "event": { "data": { stream: b64.encode(&data) } } });
                    (connect::message(&m), None)
                }
                Ok(Event::End(code)) => {
                    let m = serde_json::json!({ "event": { "end": {
                        "exitCode": code, "exited": true, "status": format!("exit status {code}"),
                    } } });
                    (connect::message(&m), Some(None))
                }
                Ok(Event::Failed(message)) => {
                    let e = RpcError::new(Code::Unavailable, message);
                    (connect::end(Some(&e)), Some(Some(())))
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(pid, missed = n, "e2b process stream fell behind");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let e = RpcError::new(Code::Unavailable, "the process's session ended");
                    (connect::end(Some(&e)), Some(Some(())))
                }
            };
            if tx.send(message).await.is_err() {
                return;
            }
            match end {
                None => {}
                Some(None) => {
                    let _ = tx.send(connect::end(None)).await;
                    return;
                }
                Some(Some(())) => return,
            }
        }
    });
    connect::stream_response(body)
}

/// The process a selector names: one this daemon is attached to, else its session, attached
/// again.
async fn find(
    state: &E2bState,
    guest: &Guest,
    selector: &Selector,
) -> Result<(Arc<Proc>, broadcast::Receiver<Event>), RpcError> {
    if let Some(tag) = &selector.tag {
        let found = state.procs.of(&guest.id).into_iter().find(|p| p.tag.as_ref() == Some(tag));
        return found
            .map(|p| {
                let rx = p.events.subscribe();
                (p, rx)
            })
            .ok_or_else(|| {
                RpcError::new(Code::NotFound, format!("process with tag {tag:?} not found"))
            });
    }
    let pid =
        selector.pid.ok_or_else(|| RpcError::new(Code::InvalidArgument, "process.pid required"))?;
    if let Some(p) = state.procs.get(&guest.id, pid) {
        let rx = p.events.subscribe();
        return Ok((p, rx));
    }
    let session =
        state.app.engine.attach(&guest.id, &format!("s{pid}"), false).await.map_err(|e| {
            match super::error::rpc_engine(e) {
                e if e.code == Code::InvalidArgument => {
                    RpcError::new(Code::NotFound, format!("process with pid {pid} not found"))
                }
                e => e,
            }
        })?;
    let pty = session.info().tty;
    let config = serde_json::json!({ "cmd": session.info().argv, "args": [], "envs": {} });
    adopt(state, guest, session, config, None, pty)
}

/// `Connect` (server streaming).
async fn reconnect(state: E2bState, guest: Guest, headers: &HeaderMap, body: &[u8]) -> Response {
    let req: ByProcess = match connect::stream_request(body) {
        Ok(r) => r,
        Err(e) => return connect::stream_error(&e),
    };
    match find(&state, &guest, &req.process).await {
        Ok((proc, rx)) => events_response(proc.pid, proc.pty, rx, keepalive_of(headers)),
        Err(e) => connect::stream_error(&e),
    }
}

/// `List`: the processes this daemon is attached to.
fn list(state: &E2bState, guest: &Guest) -> serde_json::Value {
    let mut procs = state.procs.of(&guest.id);
    procs.sort_by_key(|p| p.pid);
    let items: Vec<serde_json::Value> = procs
        .iter()
        .map(|p| {
            let mut item = serde_json::json!({ "config": p.config, "pid": p.pid });
            if let Some(tag) = &p.tag {
                item["tag"] = tag.clone().into();
            }
            item
        })
        .collect();
    serde_json::json!({ "processes": items })
}

async fn send_input(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: ByProcess = connect::unary_request(body)?;
    let input = req.input.unwrap_or_default();
    let data = input.stdin.or(input.pty).unwrap_or_default();
    let data = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| RpcError::new(Code::InvalidArgument, "input is not base64"))?;
    let (proc, _) = find(state, guest, &req.process).await?;
    proc.writer
        .lock()
        .await
        .write(&data)
        .await
        .map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))?;
    Ok(serde_json::json!({}))
}

async fn close_stdin(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: ByProcess = connect::unary_request(body)?;
    let (proc, _) = find(state, guest, &req.process).await?;
    proc.writer
        .lock()
        .await
        .close_stdin()
        .await
        .map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))?;
    Ok(serde_json::json!({}))
}

/// `SendSignal`: lohar's session kill (SIGTERM to the process group) for SIGTERM and SIGKILL.
async fn send_signal(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: ByProcess = connect::unary_request(body)?;
    match req.signal.as_deref() {
        Some("SIGNAL_SIGKILL" | "SIGNAL_SIGTERM") | None => {}
        Some(other) => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("signal {other} is not supported yet"),
            ));
        }
    }
    let pid = match (&req.process.pid, &req.process.tag) {
        (Some(pid), _) => *pid,
        (None, Some(_)) => find(state, guest, &req.process).await?.0.pid,
        (None, None) => return Err(RpcError::new(Code::InvalidArgument, "process.pid required")),
    };
    state.app.engine.kill_session(&guest.id, &format!("s{pid}")).await.map_err(|e| {
        match super::error::rpc_engine(e) {
            e if e.code == Code::InvalidArgument => {
                RpcError::new(Code::NotFound, format!("process with pid {pid} not found"))
            }
            e => e,
        }
    })?;
    Ok(serde_json::json!({}))
}

/// `Update`: a PTY's size.
async fn update(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: ByProcess = connect::unary_request(body)?;
    let size = req.pty.and_then(|p| p.size).unwrap_or_default();
    let (proc, _) = find(state, guest, &req.process).await?;
    proc.writer
        .lock()
        .await
        .resize(size.rows.max(1), size.cols.max(1))
        .await
        .map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))?;
    Ok(serde_json::json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_table() {
        let rows = [
            ("first", "s1", Some(1)),
            ("later", "s42", Some(42)),
            ("init", "init", None),
            ("bare", "7", None),
        ];
        for (name, id, want) in rows {
            assert_eq!(pid_of(id), want, "{name}");
        }
    }
}
