//! `bhatti shell`: a raw terminal on the sandbox's TTY WebSocket (host.md 1.9). The server's
//! first text message names the session; binary frames are terminal output; our binary frames
//! are keystrokes, our text frames resizes. Ctrl+\ (0x1c) detaches here, locally (never sent):
//! the session keeps running in the guest and `bhatti shell <sb>` attaches again with its
//! scrollback. Close 1000 means the shell exited.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::Ctx;
use super::client::{enc, sb_path};
use super::error::{CliError, exit};

/// The detach key, Ctrl+\.
const DETACH: u8 = 0x1c;
/// The server pings every 30 s: 90 s of silence is a dead connection (v1).
const READ_DEADLINE: Duration = Duration::from_secs(90);
/// A write that cannot go out in 10 s is a dead connection (v1).
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Connecting and the upgrade (the server may wake the sandbox first).
const HANDSHAKE: Duration = Duration::from_secs(120);

/// `bhatti shell <sandbox>`
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Name, ID or ID prefix.
    sandbox: String,
    /// Start a new shell instead of attaching to a detached one.
    #[arg(long)]
    new: bool,
    /// Attach to this session (taking it from another client).
    #[arg(long, value_name = "ID", conflicts_with = "new")]
    session: Option<String>,
}

/// The terminal in raw mode until dropped.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enable() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let orig = rustix::termios::tcgetattr(&stdin)?;
        let mut raw = orig.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)?;
        Ok(RawMode(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

fn resize_message() -> Option<Message> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin()))
        .ok()?;
    // No size (not a real terminal): say nothing rather than 0x0.
    if ws.ws_row == 0 || ws.ws_col == 0 {
        return None;
    }
    let msg = api::WsMessage::Resize { rows: ws.ws_row, cols: ws.ws_col };
    Some(Message::text(serde_json::to_string(&msg).ok()?))
}

/// How a session ended.
enum End {
    Exited,
    Detached,
    Lost(String),
    Refused(String),
}

/// Reads stdin on a thread of its own (a blocking read cannot be cancelled; the thread dies
/// with the process).
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn handshake_error(e: tungstenite::Error) -> anyhow::Error {
    match e {
        tungstenite::Error::Http(resp) => {
            let body = resp.body().as_deref().unwrap_or_default();
            CliError::from_answer(resp.status().as_u16(), body).into()
        }
        other => anyhow::Error::new(other).context("the shell's WebSocket handshake"),
    }
}

/// `bhatti shell`.
pub async fn run(ctx: &Ctx, a: ShellArgs) -> anyhow::Result<u8> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "shell needs a terminal on stdin; use `bhatti exec` to run commands".into(),
        )
        .into());
    }
    let mut path = sb_path(&a.sandbox, "/ws");
    if let Some(id) = &a.session {
        path.push_str(&format!("?session={}", enc(id)));
    } else if a.new {
        path.push_str("?new=true");
    }
    let mut req = format!("ws://{}{}", ctx.client.host(), ctx.client.path(&path))
        .into_client_request()
        .context("the shell's URL")?;
    if let Some(token) = &ctx.client.endpoint().token {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow::anyhow!("the API key holds characters a header cannot"))?;
        v.set_sensitive(true);
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    let stream = ctx.client.connect_stream().await?;
    let (ws, _) = tokio::time::timeout(HANDSHAKE, tokio_tungstenite::client_async(req, stream))
        .await
        .map_err(|_| anyhow::anyhow!("the shell's WebSocket handshake: no answer in 120s"))?
        .map_err(handshake_error)?;

    let mut session = a.session.clone();
    let end = {
        let _raw = RawMode::enable().context("putting the terminal in raw mode")?;
        session_loop(ws, &mut session).await
    };
    let reattach = |id: &Option<String>| match id {
        Some(id) => format!("bhatti shell {} --session {id}", a.sandbox),
        None => format!("bhatti shell {}", a.sandbox),
    };
    match end {
        End::Exited => Ok(exit::OK),
        End::Detached => {
            eprintln!("\ndetached; the session keeps running. Reattach: {}", reattach(&session));
            Ok(exit::OK)
        }
        End::Lost(why) => {
            let id = session.as_deref().unwrap_or("?");
            eprintln!(
                "\nbhatti: connection lost ({why}; session {id} still running). Reattach: {}",
                reattach(&session)
            );
            Ok(exit::FAILURE)
        }
        End::Refused(why) => Err(anyhow::anyhow!("shell: {why}")),
    }
}

async fn session_loop<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    session: &mut Option<String>,
) -> End
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let mut winch =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
    let mut keys = stdin_reader();
    let mut out = std::io::stdout();
    macro_rules! send {
        ($msg:expr) => {
            match tokio::time::timeout(WRITE_DEADLINE, tx.send($msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return End::Lost(e.to_string()),
                Err(_) => return End::Lost("a write took over 10s".into()),
            }
        };
    }
    if let Some(m) = resize_message() {
        send!(m);
    }
    loop {
        tokio::select! {
            msg = tokio::time::timeout(READ_DEADLINE, rx.next()) => match msg {
                Err(_) => return End::Lost("no message from the daemon in 90s".into()),
                Ok(None) => return End::Lost("the daemon closed the connection".into()),
                Ok(Some(Err(e))) => return End::Lost(e.to_string()),
                Ok(Some(Ok(Message::Binary(b)))) => {
                    if out.write_all(&b).and_then(|()| out.flush()).is_err() {
                        return End::Detached;
                    }
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    match serde_json::from_str::<api::WsMessage>(&t) {
                        Ok(api::WsMessage::Session { session_id }) => *session = Some(session_id),
                        // Before a session, text is the server's refusal (`attach error: ...`).
                        _ if session.is_none() => return End::Refused(t.to_string()),
                        _ => {}
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return match frame {
                        Some(f) if f.code == CloseCode::Normal => End::Exited,
                        Some(f) => End::Lost(format!("closed: {} {}", u16::from(f.code), f.reason)),
                        None => End::Lost("closed".into()),
                    };
                }
                Ok(Some(Ok(_))) => {}
            },
            input = keys.recv() => match input {
                None => {
                    // stdin ended: leave the session running.
                    let _ = tx.send(Message::Close(None)).await;
                    return End::Detached;
                }
                Some(bytes) => {
                    let (before, detach) = match bytes.iter().position(|b| *b == DETACH) {
                        Some(i) => (&bytes[..i], true),
                        None => (&bytes[..], false),
                    };
                    if !before.is_empty() {
                        send!(Message::binary(before.to_vec()));
                    }
                    if detach {
                        let close = CloseFrame { code: CloseCode::Normal, reason: "detach".into() };
                        let _ = tokio::time::timeout(WRITE_DEADLINE, tx.send(Message::Close(Some(close)))).await;
                        return End::Detached;
                    }
                }
            },
            Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => None } } => {
                if let Some(m) = resize_message() {
                    send!(m);
                }
            }
        }
    }
}
