//! The session WebSockets (host.md 1.9 and 1.10).
//!
//! - `GET /sandboxes/:id/ws`: a terminal. `?session=<id>` attaches (forcing another client
//!   off); otherwise, unless `?new=true`, the newest detached running TTY session is attached
//!   with `if_detached` (the agent refuses if someone attached in between); otherwise a new
//!   login shell (`/bin/bash -li` if the guest has it, else `/bin/sh -l`) starts. Output goes
//!   out as binary frames of at most 4096 bytes; client binary frames are keystrokes, client
//!   text frames are a JSON resize or else keystrokes. The shell's exit closes with 1000; a
//!   client that goes away only detaches.
//! - `GET /sandboxes/:id/exec/ws`: a piped session. `?session=<id>` reattaches; otherwise the
//!   first client message (within 10 s) is an [`api::PipedStart`]. Output goes out as text
//!   frames; the end is `{"type":"exit","exit_code":N}` and a close with 1000; every client
//!   message is stdin.
//!
//! Auth (bearer or `?token=`) and the owner check happen before the upgrade, so a stranger
//! gets 401 or 404 and no socket. Everything is bounded: client messages are capped at 1 MiB,
//! output moves through a channel of a few agent frames and each send to the client waits (a
//! slow client slows the guest's output, never grows our memory), and every wait has a
//! deadline: 10 s per send, 90 s of client silence (the server pings every 30 s), 90 s for
//! the guest to take input. The session's lease is held for the connection's lifetime, so an
//! attached terminal keeps the sandbox hot. A sandbox that goes away (its QEMU dies, it is
//! destroyed or stopped by a user, the daemon shuts down) cuts the lease: the socket closes at
//! once with 1001 and the reason (`sandbox crashed`, `sandbox destroyed`, `sandbox stopped`),
//! a piped one after an error message with the whole story.

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use engine::{AgentError, SessionEvent, SessionReader, SessionWriter};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::sandboxes::resolve_for_guest;
use crate::state::AppState;

/// The largest message (and frame) a client may send.
pub const MAX_CLIENT_MESSAGE: usize = 1 << 20;
/// The largest output frame the server sends.
pub const MAX_OUTPUT_FRAME: usize = 4096;
/// The server pings this often.
const PING_EVERY: Duration = Duration::from_secs(30);
/// A client silent this long (no message, no pong) is gone.
const READ_DEADLINE: Duration = Duration::from_secs(90);
/// One send to the client may take this long.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// The guest must take a piece of input within this long.
const INPUT_DEADLINE: Duration = Duration::from_secs(90);
/// A piped session's start message must arrive within this long.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// Agent frames waiting for the client (each at most one agent frame, 1 MiB).
const OUTPUT_QUEUE: usize = 4;
/// v1's detached-idle timeout of a session.
const DEFAULT_MAX_IDLE: i64 = 3600;

pub(crate) type Sink = SplitSink<WebSocket, Message>;
pub(crate) type Source = SplitStream<WebSocket>;

/// The query of `/ws` (the `token` is auth's).
#[derive(Debug, Default, PartialEq, Eq)]
struct TtyQuery {
    session: Option<String>,
    new: bool,
    rows: Option<u16>,
    cols: Option<u16>,
}

fn parse_tty_query(query: Option<&str>) -> ApiResult<TtyQuery> {
    let mut q = TtyQuery::default();
    let size = |key: &str, v: &str| {
        v.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::BadRequest(format!("{key} must be a positive integer")))
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "session" if !value.is_empty() => q.session = Some(value.into_owned()),
            "new" => q.new = value == "true",
            "rows" => q.rows = Some(size("rows", &value)?),
            "cols" => q.cols = Some(size("cols", &value)?),
            _ => {}
        }
    }
    Ok(q)
}

fn session_param(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, v)| k == "session" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// The upgrade with the client's messages capped; a request that is no WebSocket handshake is
/// a 400 (after the owner check, so a stranger still gets 404).
fn capped(ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>) -> ApiResult<WebSocketUpgrade> {
    let ws = ws.map_err(|e| ApiError::BadRequest(format!("websocket upgrade required: {e}")))?;
    Ok(ws.max_message_size(MAX_CLIENT_MESSAGE).max_frame_size(MAX_CLIENT_MESSAGE))
}

/// `GET /sandboxes/:id/ws`.
pub async fn tty(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let sandbox = resolve_for_guest(&state, &user, &id).await?;
    let q = parse_tty_query(query.as_deref())?;
    Ok(capped(ws)?.on_upgrade(move |socket| run_tty(state, sandbox.id, q, socket)))
}

/// `GET /sandboxes/:id/exec/ws`.
pub async fn piped(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let sandbox = resolve_for_guest(&state, &user, &id).await?;
    let session = session_param(query.as_deref());
    Ok(capped(ws)?.on_upgrade(move |socket| run_piped(state, sandbox.id, session, socket)))
}

/// What a client may read about an engine error: its message, unless it is an internal one
/// (then only that, and the cause goes to the log).
fn client_message(id: &str, e: engine::EngineError) -> String {
    let e = ApiError::Engine(e);
    if e.status().0 == axum::http::StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(sandbox = %id, "session websocket: {e}");
        return "internal error".into();
    }
    e.to_string()
}

/// Sends one message within the write deadline; false if the client is gone.
pub(crate) async fn send(sink: &mut Sink, message: Message) -> bool {
    matches!(timeout(WRITE_DEADLINE, sink.send(message)).await, Ok(Ok(())))
}

pub(crate) async fn close(sink: &mut Sink, code: u16) {
    close_with(sink, code, "").await;
}

/// A close frame with a reason (at most 123 bytes, the frame's room; ours are short).
async fn close_with(sink: &mut Sink, code: u16, reason: &'static str) {
    let frame = CloseFrame { code, reason: reason.into() };
    send(sink, Message::Close(Some(frame))).await;
}

fn json(message: &api::WsMessage) -> Message {
    Message::text(serde_json::to_string(message).unwrap_or_default())
}

/// A setup failure on the piped socket: v1's `{"error":...}` and this API's
/// `{"type":"error","message":...}` in one object, then a close.
async fn fail_piped(sink: &mut Sink, message: String) {
    let body = serde_json::json!({"type": "error", "message": message, "error": message});
    send(sink, Message::text(body.to_string())).await;
    close(sink, close_code::ERROR).await;
}

/// A setup failure on the terminal socket: v1's plain text frame, then a close.
async fn fail_tty(sink: &mut Sink, message: String) {
    send(sink, Message::text(message)).await;
    close(sink, close_code::ERROR).await;
}

async fn run_tty(state: AppState, id: String, q: TtyQuery, socket: WebSocket) {
    let (mut sink, source) = socket.split();
    let session = match open_tty(&state, &id, &q).await {
        Ok(session) => session,
        Err(message) => return fail_tty(&mut sink, message).await,
    };
    serve_session(Mode::Tty, session, sink, source, std::future::pending()).await;
}

/// A new login shell in sandbox `id` (the web shell's: it never reattaches), of the default
/// size (the page sends its own at once); the error is the text for the client.
pub(crate) async fn new_shell(
    state: &AppState,
    id: &str,
) -> Result<engine::Leased<engine::Session>, String> {
    let req = shell_request(state, id, &TtyQuery::default()).await?;
    state
        .engine
        .shell(id, &req)
        .await
        .map_err(|e| format!("shell error: {}", client_message(id, e)))
}

/// Relays an open terminal session on a socket already split, exactly as `/sandboxes/:id/ws`
/// does (binary output, JSON resize, the same deadlines), until it ends or `stop` completes
/// (then the client gets a close with 1008 and `stop`'s reason).
pub(crate) async fn serve_tty(
    session: engine::Leased<engine::Session>,
    sink: Sink,
    source: Source,
    stop: impl std::future::Future<Output = &'static str>,
) {
    serve_session(Mode::Tty, session, sink, source, stop).await;
}

/// Attaches or creates the terminal's session; the error is the text for the client.
async fn open_tty(
    state: &AppState,
    id: &str,
    q: &TtyQuery,
) -> Result<engine::Leased<engine::Session>, String> {
    let engine = &state.engine;
    engine.ensure_hot(id).await.map_err(|e| format!("wake sandbox: {}", client_message(id, e)))?;
    if let Some(session) = &q.session {
        return engine
            .attach(id, session, false)
            .await
            .map_err(|e| format!("attach error: {}", client_message(id, e)));
    }
    if !q.new {
        // Any failure (none detached, someone attached in between) falls through to a new one.
        if let Some(newest) = newest_detached(engine.sessions(id).await.unwrap_or_default())
            && let Ok(session) = engine.attach(id, &newest, true).await
        {
            return Ok(session);
        }
    }
    let req = shell_request(state, id, q).await?;
    engine.shell(id, &req).await.map_err(|e| format!("shell error: {}", client_message(id, e)))
}

/// The newest running TTY session nobody is attached to (ties on the second broken by the
/// agent's session number).
fn newest_detached(sessions: Vec<engine::SessionInfo>) -> Option<String> {
    let number = |id: &str| id.strip_prefix('s').and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    sessions
        .into_iter()
        .filter(|s| s.tty && s.running && !s.attached)
        .max_by_key(|s| (s.created_at, number(&s.session_id)))
        .map(|s| s.session_id)
}

/// A login shell: bash if the guest has it, in `/workspace` if that exists.
async fn shell_request(
    state: &AppState,
    id: &str,
    q: &TtyQuery,
) -> Result<engine::ExecRequest, String> {
    let (bash, workspace) = tokio::join!(
        state.engine.file_stat(id, "/bin/bash"),
        state.engine.file_stat(id, "/workspace")
    );
    let argv = if bash.is_ok_and(|f| !f.is_dir) { ["/bin/bash", "-li"] } else { ["/bin/sh", "-l"] };
    let mut req = engine::ExecRequest::command(argv);
    req.env = Some([("TERM".to_owned(), "xterm-256color".to_owned())].into());
    req.rows = Some(q.rows.unwrap_or(24));
    req.cols = Some(q.cols.unwrap_or(80));
    req.cwd = workspace.is_ok_and(|f| f.is_dir).then(|| "/workspace".to_owned());
    req.max_idle_sec = Some(DEFAULT_MAX_IDLE);
    crate::secrets::add_env(state, id, &mut req).await.map_err(|e| format!("shell error: {e}"))?;
    Ok(req)
}

async fn run_piped(state: AppState, id: String, session: Option<String>, socket: WebSocket) {
    let (mut sink, mut source) = socket.split();
    if let Err(e) = state.engine.ensure_hot(&id).await {
        return fail_piped(&mut sink, format!("wake sandbox: {}", client_message(&id, e))).await;
    }
    let opened = match session {
        Some(sid) => state
            .engine
            .attach(&id, &sid, false)
            .await
            .map_err(|e| format!("attach: {}", client_message(&id, e))),
        None => match read_start(&mut source).await {
            Ok(mut req) => match crate::secrets::add_env(&state, &id, &mut req).await {
                Ok(()) => state
                    .engine
                    .piped_session(&id, &req)
                    .await
                    .map_err(|e| format!("start: {}", client_message(&id, e))),
                Err(e) => Err(format!("start: {e}")),
            },
            Err(message) => Err(message),
        },
    };
    let session = match opened {
        Ok(session) => session,
        Err(message) => return fail_piped(&mut sink, message).await,
    };
    serve_session(Mode::Piped, session, sink, source, std::future::pending()).await;
}

/// Announces an open session to the client and relays it. The lease lives until this returns:
/// the sandbox stays hot while a client is attached.
async fn serve_session(
    mode: Mode,
    session: engine::Leased<engine::Session>,
    mut sink: Sink,
    source: Source,
    stop: impl std::future::Future<Output = &'static str>,
) {
    let (session, lease) = session.into_parts();
    let (info, reader, writer) = session.split();
    if !send(&mut sink, json(&api::WsMessage::Session { session_id: info.session_id })).await {
        return;
    }
    relay(mode, reader, writer, sink, source, lease.ended(), stop).await;
}

/// The piped session's start message; the error is the text for the client.
async fn read_start(source: &mut Source) -> Result<engine::ExecRequest, String> {
    let message = loop {
        match timeout(START_DEADLINE, source.next()).await {
            Err(_) => return Err("no start message within 10 s".into()),
            Ok(None | Some(Err(_))) => return Err("closed before the start message".into()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Close(_)))) => return Err("closed".into()),
            Ok(Some(Ok(message))) => break message.into_data(),
        }
    };
    start_request(&message)
}

fn start_request(message: &[u8]) -> Result<engine::ExecRequest, String> {
    let start: api::PipedStart =
        serde_json::from_slice(message).map_err(|e| format!("invalid start message: {e}"))?;
    if start.cmd.is_empty() {
        return Err("cmd required".into());
    }
    let mut req = engine::ExecRequest::command(start.cmd);
    if !start.env.is_empty() {
        req.env = Some(start.env);
    }
    req.max_idle_sec = Some(match start.max_idle_sec {
        0 => DEFAULT_MAX_IDLE,
        n => i64::try_from(n).unwrap_or(i64::MAX),
    });
    Ok(req)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Binary output, JSON resize.
    Tty,
    /// Text output, an exit message.
    Piped,
}

/// Aborts a task when dropped (the agent reader, which may be parked on a silent guest).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Moves bytes both ways until the session ends, the client goes, a deadline passes, the
/// sandbox goes away (`ended`: its lease was cut; the client is told why), or the server stops
/// it (`stop`: a revoked web-shell token; the close says why). Returning drops the agent
/// connection (detaching) and the lease.
async fn relay(
    mode: Mode,
    mut reader: SessionReader,
    mut writer: SessionWriter,
    mut sink: Sink,
    mut source: Source,
    ended: impl std::future::Future<Output = engine::EngineError>,
    stop: impl std::future::Future<Output = &'static str>,
) {
    // The agent reader is not cancel-safe (a frame read halfway is lost), so it runs alone
    // and hands whole events over a small channel.
    let (tx, mut rx) = mpsc::channel(OUTPUT_QUEUE);
    let _reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let event = reader.next().await;
            let last =
                !matches!(event, Ok(Some(SessionEvent::Output(_) | SessionEvent::Stderr(_))));
            if tx.send(event).await.is_err() || last {
                break;
            }
        }
    }));
    let gone = tokio::select! {
        () = output(mode, &mut rx, &mut sink) => None,
        () = input(mode, &mut source, &mut writer) => None,
        gone = ended => Some(gone),
        reason = stop => {
            close_with(&mut sink, close_code::POLICY, reason).await;
            None
        }
    };
    if let Some(gone) = gone {
        // The guest will not answer any more (or is being suspended): say so and close,
        // rather than leaving the client on a connection that only its deadline would end.
        let reason = match &gone {
            engine::EngineError::Gone { reason, .. } => reason.short(),
            _ => "sandbox gone",
        };
        if mode == Mode::Piped {
            let message = gone.to_string();
            send(&mut sink, json(&api::WsMessage::Error { message })).await;
        }
        close_with(&mut sink, close_code::AWAY, reason).await;
    }
}

/// Guest -> client, and the pings.
async fn output(
    mode: Mode,
    rx: &mut mpsc::Receiver<Result<Option<SessionEvent>, AgentError>>,
    sink: &mut Sink,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut carry = Vec::new();
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            _ = ping.tick() => {
                if !send(sink, Message::Ping(Bytes::new())).await {
                    return;
                }
                continue;
            }
        };
        match event {
            // Terminals never ask for stderr apart; should it come, it is output all the same.
            Some(Ok(Some(SessionEvent::Output(data) | SessionEvent::Stderr(data)))) => {
                for frame in frames(mode, &mut carry, &data) {
                    if !send(sink, frame).await {
                        return;
                    }
                }
            }
            Some(Ok(Some(SessionEvent::Exit(code)))) => {
                if mode == Mode::Piped {
                    if !carry.is_empty() {
                        let rest = String::from_utf8_lossy(&carry).into_owned();
                        send(sink, Message::text(rest)).await;
                    }
                    send(sink, json(&api::WsMessage::Exit { exit_code: code })).await;
                }
                return close(sink, close_code::NORMAL).await;
            }
            // The agent ended the connection without an exit: the session is gone.
            Some(Ok(None)) | None => return close(sink, close_code::NORMAL).await,
            Some(Err(e)) => {
                if mode == Mode::Piped {
                    let message = e.to_string();
                    send(sink, json(&api::WsMessage::Error { message })).await;
                }
                return close(sink, close_code::ERROR).await;
            }
        }
    }
}

/// Client -> guest; ends when the client closes or goes silent, or the guest stops taking
/// input.
async fn input(mode: Mode, source: &mut Source, writer: &mut SessionWriter) {
    loop {
        let message = match timeout(READ_DEADLINE, source.next()).await {
            Ok(Some(Ok(message))) => message,
            // Silent past the deadline, an error, or the end: detach.
            _ => return,
        };
        let written = match message {
            Message::Binary(data) => timeout(INPUT_DEADLINE, writer.write(&data)).await,
            Message::Text(text) => match (mode, control_of(&text)) {
                (Mode::Tty, Control::Resize(rows, cols)) => {
                    timeout(INPUT_DEADLINE, writer.resize(rows, cols)).await
                }
                // A resize to nothing (a client without a terminal size) is dropped: typing
                // the JSON into the user's shell would be worse.
                (Mode::Tty, Control::EmptyResize) => continue,
                _ => timeout(INPUT_DEADLINE, writer.write(text.as_bytes())).await,
            },
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
}

/// What a terminal client's text message is.
#[derive(Debug, PartialEq, Eq)]
enum Control {
    /// A resize to rows x cols.
    Resize(u16, u16),
    /// A resize message with a zero dimension.
    EmptyResize,
    /// Keystrokes.
    Input,
}

fn control_of(text: &str) -> Control {
    match serde_json::from_str(text) {
        Ok(api::WsMessage::Resize { rows, cols }) if rows > 0 && cols > 0 => {
            Control::Resize(rows, cols)
        }
        Ok(api::WsMessage::Resize { .. }) => Control::EmptyResize,
        _ => Control::Input,
    }
}

/// Output as frames of at most [`MAX_OUTPUT_FRAME`] bytes: binary for a terminal; text for a
/// piped session, split on character boundaries with an incomplete UTF-8 sequence at the end
/// carried to the next output (invalid bytes become U+FFFD).
fn frames(mode: Mode, carry: &mut Vec<u8>, data: &[u8]) -> Vec<Message> {
    if mode == Mode::Tty {
        return data.chunks(MAX_OUTPUT_FRAME).map(|c| Message::binary(c.to_vec())).collect();
    }
    carry.extend_from_slice(data);
    let mut text = String::new();
    let mut rest: &[u8] = carry;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    // Incomplete at the end: wait for the rest.
                    None => {
                        rest = after;
                        break;
                    }
                    Some(bad) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[bad..];
                    }
                }
            }
        }
    }
    *carry = rest.to_vec();
    let mut out = Vec::new();
    let mut s = text.as_str();
    while !s.is_empty() {
        let mut end = s.len().min(MAX_OUTPUT_FRAME);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let (head, tail) = s.split_at(end);
        out.push(Message::text(head));
        s = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(messages: Vec<Message>) -> Vec<String> {
        messages.into_iter().map(|m| m.into_text().unwrap().to_string()).collect()
    }

    #[test]
    fn queries_select_sessions_and_sizes() {
        let q = parse_tty_query(Some("token=x&session=s3&new=true&rows=50&cols=120")).unwrap();
        assert_eq!(
            q,
            TtyQuery { session: Some("s3".into()), new: true, rows: Some(50), cols: Some(120) }
        );
        assert_eq!(parse_tty_query(None).unwrap(), TtyQuery::default());
        assert!(!parse_tty_query(Some("new=1")).unwrap().new);
        assert!(parse_tty_query(Some("rows=0")).is_err());
        assert!(parse_tty_query(Some("cols=abc")).is_err());
        assert_eq!(session_param(Some("session=s2&token=t")).as_deref(), Some("s2"));
        assert_eq!(session_param(Some("session=")), None);
    }

    #[test]
    fn the_newest_detached_running_tty_session_is_chosen() {
        let s = |id: &str, tty, running, attached, created_at| engine::SessionInfo {
            session_id: id.into(),
            tty,
            running,
            attached,
            created_at,
            ..Default::default()
        };
        let sessions = vec![
            s("s1", true, true, false, 100),
            s("s9", true, true, false, 200),
            s("s10", true, true, false, 200),
            s("s11", true, true, true, 300),
            s("s12", false, true, false, 300),
            s("s13", true, false, false, 300),
        ];
        assert_eq!(newest_detached(sessions).as_deref(), Some("s10"));
        assert_eq!(newest_detached(vec![s("s1", true, true, true, 1)]), None);
    }

    #[test]
    fn resize_is_json_and_anything_else_is_input() {
        let c = control_of;
        assert_eq!(c(r#"{"type":"resize","rows":40,"cols":100}"#), Control::Resize(40, 100));
        assert_eq!(c(r#"{"type":"resize","rows":0,"cols":0}"#), Control::EmptyResize);
        assert_eq!(c("ls\n"), Control::Input);
        assert_eq!(c(r#"{"type":"session","session_id":"s1"}"#), Control::Input);
    }

    #[test]
    fn start_messages_need_a_command_and_default_the_idle_timeout() {
        assert_eq!(start_request(br#"{"env":{}}"#).unwrap_err(), "cmd required");
        assert!(start_request(b"nope").unwrap_err().starts_with("invalid start message"));
        let req = start_request(br#"{"cmd":["cat"],"env":{"A":"1"}}"#).unwrap();
        assert_eq!(req.argv, ["cat"]);
        assert_eq!(req.max_idle_sec, Some(3600));
        assert_eq!(req.env.unwrap()["A"], "1");
        let req = start_request(br#"{"cmd":["cat"],"max_idle_sec":5}"#).unwrap();
        assert_eq!(req.max_idle_sec, Some(5));
    }

    #[test]
    fn output_frames_are_bounded_and_text_keeps_characters_whole() {
        let big = vec![b'a'; 10_000];
        let bin = frames(Mode::Tty, &mut Vec::new(), &big);
        assert_eq!(
            bin.iter().map(|m| m.clone().into_data().len()).collect::<Vec<_>>(),
            [4096, 4096, 1808]
        );
        // A character split across two outputs arrives whole.
        let mut carry = Vec::new();
        let euro = "€".as_bytes();
        assert_eq!(texts(frames(Mode::Piped, &mut carry, &[b'x', euro[0], euro[1]])), ["x"]);
        assert_eq!(texts(frames(Mode::Piped, &mut carry, &[euro[2], b'y'])), ["€y"]);
        assert!(carry.is_empty());
        // Invalid bytes become U+FFFD; long text splits on character boundaries.
        assert_eq!(texts(frames(Mode::Piped, &mut carry, b"a\xffb")), ["a\u{fffd}b"]);
        let long = "é".repeat(3000);
        let parts = texts(frames(Mode::Piped, &mut carry, long.as_bytes()));
        assert!(parts.iter().all(|p| p.len() <= MAX_OUTPUT_FRAME));
        assert_eq!(parts.concat(), long);
    }
}
