//! envd's `process.Process` on lohar's sessions: every started process is a session (piped,
//! or a PTY), which outlives the connection that started it. The guest is the source of truth
//! (lohar's process extension, `procs`): a session carries the process's real guest PID, its
//! E2B tag and its config (cmd, args, envs, cwd as the SDK sent them, as the session's host
//! data), and keeps stderr apart from stdout. So `List`, and `Connect`, `SendInput`,
//! `CloseStdin`, `SendSignal` by PID or tag, are answered from lohar's session list and
//! survive a daemon restart and a pause/resume.
//!
//! The daemon keeps each session it is attached to in a task of its own (the [`Registry`], a
//! cache by PID) and fans its output out to the `Start` and `Connect` streams, so a stream that
//! is dropped (or cut by the SDK's command timeout) leaves the process running. A process the
//! daemon is not attached to is attached again by its session.
//!
//! Against an agent without the extension (a v1 image's lohar) the PID is the session's number
//! (`s7` is 7), stderr arrives as stdout, tags and configs are not kept and every signal is
//! SIGKILL.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::E2bState;
use super::connect::{self, Code, RpcError};
use super::envd::Guest;

/// Output chunks a slow stream may fall behind by before it misses some.
const FANOUT: usize = 1024;

/// What E2B's SDKs run commands and terminals with; a guest without bash (the busybox `test`
/// image) runs them with `/bin/sh`, which takes the same `-l -c` / `-i -l`.
const BASH: &str = "/bin/bash";
const SH: &str = "/bin/sh";

/// Something a process did.
#[derive(Debug, Clone)]
enum Event {
    Stdout(Bytes),
    Stderr(Bytes),
    End(i32),
    Failed(String),
}

/// One process the daemon is attached to.
#[derive(Debug)]
struct Proc {
    pid: u32,
    session_id: String,
    pty: bool,
    events: broadcast::Sender<Event>,
    writer: tokio::sync::Mutex<engine::SessionWriter>,
}

/// The processes the daemon is attached to, by sandbox and PID: a cache of attachments, never
/// the list of processes (that is the guest's).
#[derive(Debug, Default)]
pub struct Registry {
    procs: Mutex<HashMap<(String, u32), Arc<Proc>>>,
    /// One attach at a time per sandbox: two would take the session from each other.
    attaching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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

    /// Removes `proc` if it is still the one cached under its PID.
    fn remove(&self, sandbox: &str, proc: &Arc<Proc>) {
        if let Ok(mut procs) = self.procs.lock() {
            let key = (sandbox.to_owned(), proc.pid);
            if procs.get(&key).is_some_and(|p| Arc::ptr_eq(p, proc)) {
                procs.remove(&key);
            }
        }
    }

    /// The attach lock of a sandbox.
    fn attach_lock(&self, sandbox: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.attaching.lock() {
            Ok(mut locks) => Arc::clone(locks.entry(sandbox.to_owned()).or_default()),
            Err(_) => Arc::default(),
        }
    }

    /// Drops what a destroyed sandbox left.
    pub fn forget_sandbox(&self, sandbox: &str) {
        if let Ok(mut procs) = self.procs.lock() {
            procs.retain(|(s, _), _| s != sandbox);
        }
        if let Ok(mut locks) = self.attaching.lock() {
            locks.remove(sandbox);
        }
    }
}

/// `s7` -> 7.
fn pid_of(session_id: &str) -> Option<u32> {
    session_id.strip_prefix('s')?.parse().ok()
}

/// The PID E2B sees for a session: the guest's, or (an agent without `procs`) its number.
fn e2b_pid(info: &engine::SessionInfo) -> Option<u32> {
    match info.pid {
        Some(pid) => u32::try_from(pid).ok(),
        None => pid_of(&info.session_id),
    }
}

/// E2B's `ProcessConfig`, kept as the session's host data.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
struct ProcessConfig {
    cmd: String,
    args: Vec<String>,
    envs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
}

/// The config `List` shows for a session: what `Start` kept, else its argv.
fn config_of(info: &engine::SessionInfo) -> ProcessConfig {
    info.meta
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_else(|| ProcessConfig { cmd: info.argv.clone(), ..ProcessConfig::default() })
}

/// The signal number of E2B's `Signal`; `None` (lohar's default, SIGKILL) when unspecified.
fn signal_number(signal: Option<&str>) -> Result<Option<i32>, RpcError> {
    match signal {
        None | Some("SIGNAL_UNSPECIFIED") => Ok(None),
        Some("SIGNAL_SIGKILL") => Ok(Some(9)),
        Some("SIGNAL_SIGTERM") => Ok(Some(15)),
        Some(other) => {
            Err(RpcError::new(Code::InvalidArgument, format!("unknown signal {other:?}")))
        }
    }
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
        "List" => list(&state, &guest).await,
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

/// Attaches a task to a session and caches it.
fn adopt(
    state: &E2bState,
    guest: &Guest,
    session: engine::Leased<engine::Session>,
) -> Result<(Arc<Proc>, broadcast::Receiver<Event>), RpcError> {
    let (session, lease) = session.into_parts();
    let (info, mut reader, writer) = session.split();
    let pid = e2b_pid(&info).ok_or_else(|| {
        RpcError::new(Code::Internal, format!("unexpected session id {:?}", info.session_id))
    })?;
    let (events, rx) = broadcast::channel(FANOUT);
    let proc = Arc::new(Proc {
        pid,
        session_id: info.session_id.clone(),
        pty: info.tty,
        events: events.clone(),
        writer: tokio::sync::Mutex::new(writer),
    });
    state.procs.insert(&guest.id, Arc::clone(&proc));
    let (procs, sandbox, cached) = (Arc::clone(&state.procs), guest.id.clone(), Arc::clone(&proc));
    tokio::spawn(async move {
        // The lease keeps the sandbox awake while the process is attached.
        let _lease = lease;
        loop {
            let event = match reader.next().await {
                Ok(Some(engine::SessionEvent::Output(data))) => Event::Stdout(Bytes::from(data)),
                Ok(Some(engine::SessionEvent::Stderr(data))) => Event::Stderr(Bytes::from(data)),
                Ok(Some(engine::SessionEvent::Exit(code))) => Event::End(code),
                Ok(None) => Event::Failed("the agent closed the session".into()),
                Err(e) => Event::Failed(e.to_string()),
            };
            let last = matches!(event, Event::End(_) | Event::Failed(_));
            let _ = events.send(event);
            if last {
                break;
            }
        }
        procs.remove(&sandbox, &cached);
    });
    Ok((proc, rx))
}

/// The program to run for `cmd`: `/bin/bash` falls back to `/bin/sh` in a guest without bash.
async fn program(state: &E2bState, guest: &Guest, cmd: &str) -> String {
    if cmd == BASH && state.app.engine.file_stat(&guest.id, BASH).await.is_err() {
        return SH.to_owned();
    }
    cmd.to_owned()
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
    let cmd = program(&state, &guest, &req.process.cmd).await;
    let mut exec =
        engine::ExecRequest::command(std::iter::once(cmd).chain(req.process.args.iter().cloned()));
    if !req.process.envs.is_empty() {
        exec.env = Some(req.process.envs.clone());
    }
    exec.cwd = req.process.cwd.clone().filter(|c| !c.is_empty());
    let pty = req.pty.is_some();
    if let Some(size) = req.pty.as_ref().and_then(|p| p.size.as_ref()) {
        exec.rows = Some(size.rows.max(1));
        exec.cols = Some(size.cols.max(1));
    }
    // What the guest keeps for List and reconnects: the config as the SDK sent it (never the
    // secrets added below), the tag, and stderr apart.
    exec.stderr = (!pty).then_some(true);
    exec.tag = req.tag.clone();
    exec.meta = serde_json::to_string(&req.process).ok();
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
    let (proc, rx) = match adopt(&state, &guest, session) {
        Ok(p) => p,
        Err(e) => return connect::stream_error(&e),
    };
    if !pty && req.stdin != Some(true) {
        let _ = proc.writer.lock().await.close_stdin().await;
    }
    events_response(proc.pid, pty, rx, keepalive_of(headers))
}

/// The `data` event of a chunk: `pty`, `stdout` or `stderr`.
fn data_event(pty: bool, event: &Event) -> Option<serde_json::Value> {
    let (stream, data) = match event {
        Event::Stdout(data) if pty => ("pty", data),
        Event::Stdout(data) => ("stdout", data),
        // A terminal has one stream; a stray stderr chunk is terminal output all the same.
        Event::Stderr(data) if pty => ("pty", data),
        Event::Stderr(data) => ("stderr", data),
        Event::End(_) | Event::Failed(_) => return None,
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    Some(serde_json::json!({ "event": { "data": { stream: b64 } } }))
}

/// The stream of a process's events: `start`, `data`..., `end`, then the end envelope. A
/// client that goes away (or whose SDK-side timeout cuts the stream) ends only the stream.
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
                Ok(data) => match data_event(pty, &data) {
                    Some(m) => (connect::message(&m), None),
                    None => continue,
                },
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

/// A process as the guest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    pid: u32,
    session_id: String,
}

/// The running session a selector names (by PID or tag), from the guest's session list.
fn locate_in(sessions: &[engine::SessionInfo], selector: &Selector) -> Result<Located, RpcError> {
    let running = sessions.iter().filter(|s| s.running);
    let found = match (&selector.tag, selector.pid) {
        (Some(tag), _) => running.into_iter().find(|s| s.tag.as_ref() == Some(tag)),
        (None, Some(pid)) => running.into_iter().find(|s| e2b_pid(s) == Some(pid)),
        (None, None) => {
            return Err(RpcError::new(Code::InvalidArgument, "process.pid or tag required"));
        }
    };
    let not_found = || match (&selector.tag, selector.pid) {
        (Some(tag), _) => format!("process with tag {tag:?} not found"),
        (None, pid) => format!("process with pid {} not found", pid.unwrap_or_default()),
    };
    let found = found.ok_or_else(|| RpcError::new(Code::NotFound, not_found()))?;
    let pid = e2b_pid(found).ok_or_else(|| RpcError::new(Code::NotFound, not_found()))?;
    Ok(Located { pid, session_id: found.session_id.clone() })
}

/// The process a selector names: a cached attachment by PID answers at once, anything else
/// asks the guest.
async fn locate(state: &E2bState, guest: &Guest, selector: &Selector) -> Result<Located, RpcError> {
    if selector.tag.is_none()
        && let Some(pid) = selector.pid
        && let Some(p) = state.procs.get(&guest.id, pid)
    {
        return Ok(Located { pid, session_id: p.session_id.clone() });
    }
    let sessions = state.app.engine.sessions(&guest.id).await.map_err(super::error::rpc_engine)?;
    locate_in(&sessions, selector)
}

/// The attachment to the process a selector names: the cached one, else its session attached
/// again (after a pause and resume, a daemon restart).
async fn find(
    state: &E2bState,
    guest: &Guest,
    selector: &Selector,
) -> Result<(Arc<Proc>, broadcast::Receiver<Event>), RpcError> {
    let located = locate(state, guest, selector).await?;
    let subscribed = |p: Arc<Proc>| {
        let rx = p.events.subscribe();
        (p, rx)
    };
    if let Some(p) = state.procs.get(&guest.id, located.pid) {
        return Ok(subscribed(p));
    }
    let attach_lock = state.procs.attach_lock(&guest.id);
    let _one_attach = attach_lock.lock().await;
    if let Some(p) = state.procs.get(&guest.id, located.pid) {
        return Ok(subscribed(p));
    }
    let session =
        state.app.engine.attach_with_stderr(&guest.id, &located.session_id).await.map_err(|e| {
            match super::error::rpc_engine(e) {
                e if e.code == Code::InvalidArgument => RpcError::new(
                    Code::NotFound,
                    format!("process with pid {} not found", located.pid),
                ),
                e => e,
            }
        })?;
    adopt(state, guest, session)
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

/// `List`: the guest's running sessions, with their PIDs, tags and configs.
async fn list(state: &E2bState, guest: &Guest) -> Result<serde_json::Value, RpcError> {
    let sessions = state.app.engine.sessions(&guest.id).await.map_err(super::error::rpc_engine)?;
    Ok(list_of(&sessions))
}

fn list_of(sessions: &[engine::SessionInfo]) -> serde_json::Value {
    let mut items: Vec<(u32, serde_json::Value)> = sessions
        .iter()
        .filter(|s| s.running)
        .filter_map(|s| {
            let pid = e2b_pid(s)?;
            let mut item = serde_json::json!({ "config": config_of(s), "pid": pid });
            if let Some(tag) = &s.tag {
                item["tag"] = tag.clone().into();
            }
            Some((pid, item))
        })
        .collect();
    items.sort_by_key(|(pid, _)| *pid);
    let items: Vec<serde_json::Value> = items.into_iter().map(|(_, item)| item).collect();
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

/// `SendSignal`: SIGKILL or SIGTERM to the process's group (lohar's session kill).
async fn send_signal(
    state: &E2bState,
    guest: &Guest,
    body: &[u8],
) -> Result<serde_json::Value, RpcError> {
    let req: ByProcess = connect::unary_request(body)?;
    let signal = signal_number(req.signal.as_deref())?;
    let located = locate(state, guest, &req.process).await?;
    state.app.engine.signal_session(&guest.id, &located.session_id, signal).await.map_err(|e| {
        match super::error::rpc_engine(e) {
            e if e.code == Code::InvalidArgument => {
                RpcError::new(Code::NotFound, format!("process with pid {} not found", located.pid))
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

    fn session(
        id: &str,
        pid: Option<i64>,
        running: bool,
        tag: Option<&str>,
    ) -> engine::SessionInfo {
        engine::SessionInfo {
            session_id: id.into(),
            argv: "sleep 9".into(),
            running,
            pid,
            tag: tag.map(Into::into),
            ..Default::default()
        }
    }

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

    #[test]
    fn e2b_pid_is_the_guest_pid_else_the_session_number() {
        let rows = [
            ("guest pid", session("s3", Some(812), true, None), Some(812)),
            ("v1 agent", session("s3", None, true, None), Some(3)),
            ("v1 init", session("init", None, true, None), None),
            ("negative", session("s3", Some(-1), true, None), None),
        ];
        for (name, info, want) in rows {
            assert_eq!(e2b_pid(&info), want, "{name}");
        }
    }

    #[test]
    fn signals_table() {
        let rows = [
            ("kill", Some("SIGNAL_SIGKILL"), Ok(Some(9))),
            ("term", Some("SIGNAL_SIGTERM"), Ok(Some(15))),
            ("unspecified", Some("SIGNAL_UNSPECIFIED"), Ok(None)),
            ("absent", None, Ok(None)),
        ];
        for (name, signal, want) in rows {
            assert_eq!(signal_number(signal), want, "{name}");
        }
        let err = signal_number(Some("SIGNAL_SIGHUP")).unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
    }

    #[test]
    fn locate_by_pid_or_tag_among_running_sessions() {
        let sessions = [
            session("s1", Some(100), false, Some("web")),
            session("s2", Some(200), true, Some("web")),
            session("s3", Some(300), true, None),
        ];
        let at = |pid: Option<u32>, tag: Option<&str>| {
            locate_in(&sessions, &Selector { pid, tag: tag.map(Into::into) })
        };
        let rows = [
            ("by pid", at(Some(300), None), Ok(("s3", 300))),
            ("by tag skips the exited one", at(None, Some("web")), Ok(("s2", 200))),
            ("tag wins over pid", at(Some(300), Some("web")), Ok(("s2", 200))),
            ("exited pid", at(Some(100), None), Err(Code::NotFound)),
            ("unknown pid", at(Some(9), None), Err(Code::NotFound)),
            ("unknown tag", at(None, Some("db")), Err(Code::NotFound)),
            ("nothing", at(None, None), Err(Code::InvalidArgument)),
        ];
        for (name, got, want) in rows {
            let got = got.map(|l| (l.session_id, l.pid)).map_err(|e| e.code);
            let want = want.map(|(id, pid)| (id.to_owned(), pid));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn list_shows_running_sessions_with_config_pid_and_tag() {
        let config = ProcessConfig {
            cmd: "/bin/bash".into(),
            args: vec!["-l".into(), "-c".into(), "sleep 9".into()],
            envs: BTreeMap::from([("A".into(), "1".into())]),
            cwd: Some("/tmp".into()),
        };
        let mut started = session("s2", Some(200), true, Some("web"));
        started.meta = serde_json::to_string(&config).ok();
        let sessions =
            [session("s1", Some(100), false, None), started, session("s3", Some(150), true, None)];
        let got = list_of(&sessions);
        assert_eq!(
            got,
            serde_json::json!({ "processes": [
                { "pid": 150, "config": { "cmd": "sleep 9", "args": [], "envs": {} } },
                { "pid": 200, "tag": "web", "config": {
                    "cmd": "/bin/bash", "args": ["-l", "-c", "sleep 9"], "envs": { "A": "1" },
                    "cwd": "/tmp",
                } },
            ] })
        );
    }

    #[test]
    fn data_events_name_their_stream() {
        let chunk = || Bytes::from_static(b"hi");
        let rows = [
            ("stdout", false, Event::Stdout(chunk()), Some("stdout")),
            ("stderr", false, Event::Stderr(chunk()), Some("stderr")),
            ("pty", true, Event::Stdout(chunk()), Some("pty")),
            ("pty stderr", true, Event::Stderr(chunk()), Some("pty")),
            ("end", false, Event::End(0), None),
        ];
        for (name, pty, event, want) in rows {
            let got = data_event(pty, &event);
            let stream = got.as_ref().and_then(|m| {
                m["event"]["data"].as_object().and_then(|d| d.keys().next().cloned())
            });
            assert_eq!(stream.as_deref(), want, "{name}");
            if let Some(m) = got {
                assert_eq!(m["event"]["data"][want.unwrap_or_default()], "aGk=", "{name}");
            }
        }
    }
}
