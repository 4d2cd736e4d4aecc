//! Listening ports (host.md 1.13): `GET /sandboxes/:id/ports` wakes the sandbox and lists the
//! TCP ports its guest listens on; `GET /ports` lists them for every running sandbox of the
//! user that is hot right now and wakes nothing (a warm or cold sandbox is left out).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::error::ApiResult;
use crate::sandboxes::resolve;
use crate::state::AppState;

/// The authenticated proxy's URL for a port (`id` as the caller gave it, like v1).
fn proxy_url(id: &str, port: u16) -> String {
    format!("/sandboxes/{id}/proxy/{port}/")
}

/// `GET /sandboxes/:id/ports`.
pub async fn sandbox_ports(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let sandbox = resolve(&state, &user, &id).await?;
    let ports = state.engine.listening_ports(&sandbox.id).await?;
    let out: Vec<api::Port> = ports
        .into_iter()
        .map(|port| api::Port {
            sandbox_id: String::new(),
            container_port: port,
            proxy_url: proxy_url(&id, port),
        })
        .collect();
    Ok(axum::Json(out).into_response())
}

/// `GET /ports`: hot sandboxes only; one that cannot be asked is left out (and logged).
pub async fn all_ports(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<Response> {
    let owner = user.id.clone();
    let rows = state.store.read(move |s| s.list_sandboxes(&owner, &[])).await?;
    let running = rows.into_iter().filter(|s| s.status == store::Status::Running);
    let asks = running.map(|s| {
        let engine = state.engine.clone();
        async move {
            let ports = engine.listening_ports_if_hot(&s.id).await;
            (s.id, ports)
        }
    });
    let mut out = Vec::new();
    for (id, ports) in futures_util::future::join_all(asks).await {
        match ports {
            Ok(Some(ports)) => out.extend(ports.into_iter().map(|port| api::Port {
                sandbox_id: id.clone(),
                container_port: port,
                proxy_url: proxy_url(&id, port),
            })),
            Ok(None) => {}
            Err(e) => tracing::warn!(sandbox = %id, "listing ports: {}", e.report()),
        }
    }
    Ok(axum::Json(out).into_response())
}
