//! Forwards (bhatti v2, host.md 9): `POST/GET/DELETE /sandboxes/:id/forward`.
//!
//! A forward is a listener on `127.0.0.1:<host_port>` of the daemon's host (0: any free port)
//! whose every accepted connection is relayed to a port in the guest: the connection wakes the
//! sandbox (the engine's lease, as the authenticated proxy does), holds the lease while it
//! lives, so it counts as activity and keeps the sandbox hot, and ends when either side ends or
//! nothing moves for [`crate::proxy::IDLE_TIMEOUT`]. A sandbox its user stopped is not woken: the
//! connection is closed at once (as the proxy answers 409).
//!
//! Forwards live in memory only (`AppState::forwards`): they do not survive a daemon restart.
//! `DELETE` closes all of a sandbox's forwards and their live connections; destroying the
//! sandbox does the same. Bounded: [`MAX_PER_SANDBOX`] forwards per sandbox, [`MAX_TOTAL`] in
//! all, [`MAX_CONNECTIONS`] live connections per forward (more are closed on accept).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::auth::CurrentUser;
use crate::error::ApiResult;
use crate::request::Json;
use crate::sandboxes::resolve;
use crate::state::AppState;

/// How long a connection may wait for the sandbox to wake and the guest port to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

use crate::forwards::Entry;
pub use crate::forwards::{ForwardError, Forwards, MAX_CONNECTIONS, MAX_PER_SANDBOX, MAX_TOTAL};

/// Binds `127.0.0.1:<host_port>` and starts relaying its connections to `guest_port`.
async fn open(
    state: &AppState,
    sandbox_id: &str,
    guest_port: u16,
    host_port: u16,
) -> Result<api::Forward, ForwardError> {
    Forwards::check_room(&state.forwards.lock(), sandbox_id)?;
    let listener = match TcpListener::bind(("127.0.0.1", host_port)).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(ForwardError::PortInUse(host_port));
        }
        Err(source) => return Err(ForwardError::Bind { port: host_port, source }),
    };
    let host_port = listener
        .local_addr()
        .map_err(|source| ForwardError::Bind { port: host_port, source })?
        .port();
    let connections = Arc::new(AtomicU64::new(0));
    let mut map = state.forwards.lock();
    // Checked again: another request may have taken the last slot while this one bound.
    Forwards::check_room(&map, sandbox_id)?;
    let task = tokio::spawn(serve(
        state.clone(),
        listener,
        sandbox_id.to_owned(),
        guest_port,
        connections.clone(),
    ));
    let entry =
        Entry { guest_port, host_port, created_at: store::Timestamp::now(), connections, task };
    let out = entry.to_api(sandbox_id);
    map.entry(sandbox_id.to_owned()).or_default().push(entry);
    Ok(out)
}

/// The accept loop of one forward; ends only when aborted.
async fn serve(
    state: AppState,
    listener: TcpListener,
    sandbox_id: String,
    guest_port: u16,
    connections: Arc<AtomicU64>,
) {
    let mut live = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) if live.len() < MAX_CONNECTIONS => {
                    let (state, id, n) = (state.clone(), sandbox_id.clone(), connections.clone());
                    live.spawn(async move {
                        n.fetch_add(1, Ordering::Relaxed);
                        relay(&state, &id, guest_port, client).await;
                        n.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Ok(_) => tracing::warn!(
                    sandbox = %sandbox_id, guest_port,
                    "forward: {MAX_CONNECTIONS} connections live; closing a new one"
                ),
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(sandbox = %sandbox_id, guest_port, "forward accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = live.join_next(), if !live.is_empty() => {}
        }
    }
}

/// One connection: the sandbox woken (unless its user stopped it), then bytes both ways.
async fn relay(state: &AppState, sandbox_id: &str, guest_port: u16, client: TcpStream) {
    let _ = client.set_nodelay(true);
    let id = sandbox_id.to_owned();
    let row = match state.store.read(move |s| s.sandbox_by_id(&id)).await {
        Ok(row) => row,
        Err(e) => {
            tracing::info!(sandbox = %sandbox_id, "forward: sandbox gone: {e}");
            return;
        }
    };
    let thermal = state.engine.thermal(sandbox_id).ok();
    if let Err(refusal) =
        bhatti_core::lifecycle::guest_access(row.status, row.user_stopped, thermal)
    {
        tracing::info!(sandbox = %sandbox_id, ?refusal, "forward: connection refused");
        return;
    }
    let guest = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        state.engine.forward(sandbox_id, guest_port),
    )
    .await
    {
        Ok(Ok(guest)) => guest,
        Ok(Err(e)) => {
            tracing::info!(sandbox = %sandbox_id, guest_port, "forward: {}", e.report());
            return;
        }
        Err(_) => {
            tracing::warn!(sandbox = %sandbox_id, guest_port, "forward: guest connect timed out");
            return;
        }
    };
    let end = crate::proxy::relay(client, guest, crate::proxy::IDLE_TIMEOUT).await;
    tracing::debug!(sandbox = %sandbox_id, guest_port, ?end, "forward connection ended");
}

/// A port from a request in `min..=65535`.
/// `POST /sandboxes/:id/forward` `{"guest_port", "host_port"}`: 201 with the forward.
pub async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Json(req): Json<api::ForwardRequest>,
) -> ApiResult<Response> {
    let guest_port = crate::request::port_field(req.guest_port, 1, "guest_port")?;
    let host_port = crate::request::port_field(req.host_port, 0, "host_port")?;
    let sandbox = resolve(&state, &user, &id).await?;
    let forward = open(&state, &sandbox.id, guest_port, host_port).await?;
    tracing::info!(sandbox = %sandbox.id, guest_port, host_port = forward.host_port, "forward opened");
    Ok((StatusCode::CREATED, axum::Json(forward)).into_response())
}

/// `GET /sandboxes/:id/forward`.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let sandbox = resolve(&state, &user, &id).await?;
    Ok(axum::Json(state.forwards.list(&sandbox.id)).into_response())
}

/// `DELETE /sandboxes/:id/forward`: closes them all, with their connections; 204.
pub async fn close(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let sandbox = resolve(&state, &user, &id).await?;
    let n = state.forwards.close_sandbox(&sandbox.id);
    tracing::info!(sandbox = %sandbox.id, closed = n, "forwards closed");
    Ok(StatusCode::NO_CONTENT.into_response())
}
