//! Share links and the web shell (host.md 1.16).
//!
//! - `POST /sandboxes/:id/shell-token` mints a token (32 random bytes, 64 hex), replacing any
//!   previous one; the store keeps only its SHA-256. The answer is the only place the token
//!   ever appears: `{"token","url"}`, the URL `<api_url>/_shell/<id>#token=<token>` (the
//!   fragment never reaches a server; without `Settings::api_url` the path alone).
//! - `DELETE /sandboxes/:id/shell-token` clears it and closes every live web-shell connection
//!   of the sandbox (1008 `revoked`).
//! - `GET /_shell/:id` (no auth, any id: the page does not tell which sandboxes exist) serves
//!   the terminal page: xterm.js embedded in the daemon and served from `/_shell/_assets/`, v1's
//!   headers and a strict Content-Security-Policy with a nonce per request.
//! - `GET /_shell/:id/ws` (no auth) upgrades before any lookup. The first message, within
//!   10 s, is `{"type":"auth","token":"..."}`; a missing sandbox, no token set and a wrong one
//!   all answer the same `{"type":"error","error":"unauthorized"}` (the hash compared in
//!   constant time); more than [`MAX_PER_SANDBOX`] live connections answer `too many
//!   sessions`. Then `{"type":"connected","sandbox":<name>,"status":<status>}`, the sandbox is
//!   woken (the guest-access rules of every guest operation: one its user stopped stays
//!   stopped), a new login shell starts, and it is relayed exactly as `/sandboxes/:id/ws`
//!   relays one (`ws::serve_tty`). When the connection ends, its shell is killed (nobody can
//!   reattach to it) and `shell.web_session` is recorded.

use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use tokio::time::{Instant, timeout};

use crate::auth::CurrentUser;
use crate::engine_events::LogEntry;
use crate::error::{ApiError, ApiResult};
use crate::proxy::ClientAddr;
use crate::sandboxes::resolve;
use crate::state::AppState;
pub use crate::web_shells::{MAX_PER_SANDBOX, Slot, WebShells};
use crate::ws::{MAX_CLIENT_MESSAGE, Sink, Source};

/// The auth message must arrive within this long.
const AUTH_DEADLINE: Duration = Duration::from_secs(10);
/// Killing a finished connection's shell may take this long.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// The page; `__NONCE__` is replaced per request.
const PAGE: &str = include_str!("../assets/shell.html");
const XTERM_JS: &[u8] = include_bytes!("../assets/xterm/xterm.js");
const XTERM_CSS: &[u8] = include_bytes!("../assets/xterm/xterm.css");
const FIT_JS: &[u8] = include_bytes!("../assets/xterm/addon-fit.js");
const XTERM_LICENSE: &[u8] = include_bytes!("../assets/xterm/LICENSE");

/// 32 random bytes as 64 hex characters.
fn new_token() -> ApiResult<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("no randomness for a shell token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The share link of sandbox `id`.
fn share_url(api_url: Option<&str>, id: &str, token: &str) -> String {
    let base = api_url.map_or("", |u| u.trim_end_matches('/'));
    format!("{base}/_shell/{id}#token={token}")
}

/// `POST /sandboxes/:id/shell-token`.
pub async fn mint(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<api::ShellToken>> {
    let sandbox = resolve(&state, &user, &id).await?;
    let token = new_token()?;
    let (owner, sid, stored) = (user.id.clone(), sandbox.id.clone(), token.clone());
    state.store.write(move |s| s.set_shell_token(&owner, &sid, Some(&stored))).await?;
    let url = share_url(state.settings.api_url.as_deref(), &sandbox.id, &token);
    Ok(Json(api::ShellToken { token, url }))
}

/// `DELETE /sandboxes/:id/shell-token`: the token goes first (no new connection gets in), then
/// the live ones are closed.
pub async fn revoke(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let sandbox = resolve(&state, &user, &id).await?;
    let (owner, sid) = (user.id.clone(), sandbox.id.clone());
    state.store.write(move |s| s.set_shell_token(&owner, &sid, None)).await?;
    let closed = state.web_shells.revoke(&sandbox.id);
    tracing::info!(sandbox = %sandbox.id, closed, "web shell token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// 16 random bytes, base64: the page's script nonce.
fn nonce() -> ApiResult<String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("no randomness for a nonce: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The page's Content-Security-Policy: scripts only from this origin with the nonce, styles
/// from this origin or inline (xterm.js sets element styles), connections only back here
/// (the WebSocket), nothing else, and no framing.
pub fn content_security_policy(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// v1's headers on everything under `/_shell/`.
fn harden(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `GET /_shell/:id` and `GET /_shell/:id/`: the page, for any id.
pub async fn page(Path(_id): Path<String>) -> ApiResult<Response> {
    let nonce = nonce()?;
    let csp = HeaderValue::try_from(content_security_policy(&nonce))
        .map_err(|e| ApiError::Internal(format!("content security policy: {e}")))?;
    let mut response = PAGE.replace("__NONCE__", &nonce).into_response();
    harden(&mut response);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    Ok(response)
}

/// `GET /_shell/_assets/:file`: the vendored xterm.js (see `assets/xterm/README.md`).
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "xterm.js" => (XTERM_JS, "text/javascript; charset=utf-8"),
        "addon-fit.js" => (FIT_JS, "text/javascript; charset=utf-8"),
        "xterm.css" => (XTERM_CSS, "text/css; charset=utf-8"),
        "LICENSE" => (XTERM_LICENSE, "text/plain; charset=utf-8"),
        _ => return crate::request::not_found().await,
    };
    let mut response = body.into_response();
    harden(&mut response);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The same bytes until the daemon is upgraded.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

/// `GET /_shell/:id/ws`: the upgrade comes before anything is looked up.
pub async fn socket(
    State(state): State<AppState>,
    Path(id): Path<String>,
    client: Option<Extension<ConnectInfo<ClientAddr>>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = ws.map_err(|e| ApiError::BadRequest(format!("websocket upgrade required: {e}")))?;
    let ip = client.and_then(|Extension(ConnectInfo(c))| c.0).map(|ip| ip.to_string());
    let ws = ws.max_message_size(MAX_CLIENT_MESSAGE).max_frame_size(MAX_CLIENT_MESSAGE);
    let mut response = ws.on_upgrade(move |socket| run(state, id, ip, socket));
    harden(&mut response);
    Ok(response)
}

/// The auth message. No `Debug`: it holds the token.
#[derive(serde::Deserialize)]
struct Auth {
    #[serde(rename = "type")]
    kind: String,
    token: String,
}

/// The token of the first message, if it is an auth message in time.
async fn read_auth(source: &mut Source) -> Option<String> {
    let deadline = Instant::now() + AUTH_DEADLINE;
    loop {
        let message = match tokio::time::timeout_at(deadline, source.next()).await {
            Ok(Some(Ok(message))) => message,
            _ => return None,
        };
        let data = match message {
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Text(text) => text.as_bytes().to_vec(),
            Message::Binary(data) => data.to_vec(),
            Message::Close(_) => return None,
        };
        return serde_json::from_slice::<Auth>(&data)
            .ok()
            .filter(|a| a.kind == "auth" && !a.token.is_empty())
            .map(|a| a.token);
    }
}

/// The sandbox `id` if `token` opens its web shell; `None` alike for a missing or destroyed
/// sandbox, no token set, a wrong token, or a store that failed (logged).
async fn authorize(state: &AppState, id: &str, token: &str) -> Option<store::Sandbox> {
    let (id, token) = (id.to_owned(), token.to_owned());
    let found = state
        .store
        .read(move |s| {
            if !s.check_shell_token(&id, &token)? {
                return Ok(None);
            }
            s.sandbox_by_id(&id).map(Some)
        })
        .await;
    match found {
        Ok(sandbox) => sandbox.filter(|s| s.status != store::Status::Destroyed),
        Err(e) => {
            tracing::warn!("web shell: checking a token: {e}");
            None
        }
    }
}

/// `{"type":"error","error":...}`, then a close.
async fn refuse(sink: &mut Sink, error: &str) {
    let body = serde_json::json!({"type": "error", "error": error});
    crate::ws::send(sink, Message::text(body.to_string())).await;
    crate::ws::close(sink, close_code::POLICY).await;
}

async fn run(state: AppState, id: String, ip: Option<String>, socket: WebSocket) {
    let (mut sink, mut source) = socket.split();
    let Some(token) = read_auth(&mut source).await else {
        return refuse(&mut sink, "unauthorized").await;
    };
    let Some(sandbox) = authorize(&state, &id, &token).await else {
        return refuse(&mut sink, "unauthorized").await;
    };
    let Some(slot) = state.web_shells.admit(&sandbox.id) else {
        return refuse(&mut sink, "too many sessions").await;
    };
    // Checked again now that the connection holds its place: a revocation that ran between
    // the first check and the admission did not see this connection, and must still keep it
    // out.
    if authorize(&state, &id, &token).await.is_none() {
        return refuse(&mut sink, "unauthorized").await;
    }
    drop(token);
    let connected = serde_json::json!({
        "type": "connected",
        "sandbox": sandbox.name,
        "status": sandbox.status.as_str(),
    });
    if !crate::ws::send(&mut sink, Message::text(connected.to_string())).await {
        return;
    }
    let session = match open(&state, &sandbox).await {
        Ok(session) => session,
        Err(error) => return refuse(&mut sink, &error).await,
    };
    let session_id = session.id().to_owned();
    let started = Instant::now();
    let stop = async {
        slot.revoked().await;
        "revoked"
    };
    crate::ws::serve_tty(session, sink, source, stop).await;
    drop(slot);
    finish(&state, &sandbox, &session_id, ip, started.elapsed()).await;
}

/// Wakes the sandbox (as any guest operation would) and starts a new shell; the error is the
/// text for the client.
async fn open(
    state: &AppState,
    sandbox: &store::Sandbox,
) -> Result<engine::Leased<engine::Session>, String> {
    let thermal = state.engine.thermal(&sandbox.id).ok();
    if let Err(refusal) =
        bhatti_core::lifecycle::guest_access(sandbox.status, sandbox.user_stopped, thermal)
    {
        tracing::info!(sandbox = %sandbox.id, ?refusal, "web shell: sandbox unavailable");
        return Err("sandbox unavailable".into());
    }
    if let Err(e) = state.engine.ensure_hot(&sandbox.id).await {
        tracing::warn!(sandbox = %sandbox.id, "web shell: wake: {}", e.report());
        return Err("sandbox unavailable".into());
    }
    crate::ws::new_shell(state, &sandbox.id).await
}

/// After a connection: its shell goes (a browser tab cannot reattach, so it would only linger),
/// and the session is recorded.
async fn finish(
    state: &AppState,
    sandbox: &store::Sandbox,
    session_id: &str,
    ip: Option<String>,
    duration: Duration,
) {
    match timeout(KILL_DEADLINE, state.engine.kill_session(&sandbox.id, session_id)).await {
        Ok(Ok(())) => {}
        // Exited already, or the sandbox went away.
        Ok(Err(e)) => tracing::debug!(sandbox = %sandbox.id, "web shell: kill: {e}"),
        Err(_) => tracing::warn!(sandbox = %sandbox.id, "web shell: kill timed out"),
    }
    let meta = serde_json::json!({
        "sandbox": sandbox.name,
        "ip": ip.unwrap_or_default(),
        "duration_s": duration.as_secs(),
    });
    state.events.record(LogEntry::new("shell.web_session", meta).to_event(sandbox));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_carry_the_token_in_the_fragment() {
        let t = "ab".repeat(32);
        assert_eq!(
            share_url(Some("https://api.example.com/"), "sb1", &t),
            format!("https://api.example.com/_shell/sb1#token={t}")
        );
        assert_eq!(share_url(None, "sb1", &t), format!("/_shell/sb1#token={t}"));
        let token = new_token().unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(token, new_token().unwrap());
    }

    #[test]
    fn the_policy_allows_this_origin_and_the_nonce_only() {
        let csp = content_security_policy("N0nce");
        assert!(csp.contains("script-src 'self' 'nonce-N0nce';"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(csp.starts_with("default-src 'none';"));
        assert!(!csp.contains("http"), "no other origin: {csp}");
        assert!(PAGE.matches("nonce=\"__NONCE__\"").count() == 3);
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"), "no CDN");
    }
}
