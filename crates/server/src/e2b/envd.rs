//! envd's surface, per sandbox: the request's [`Target`] (from the `E2b-Sandbox-*` headers or
//! the `Host`) is checked against the sandbox's own access token (`X-Access-Token`) before any
//! route runs; an unknown sandbox is a 502 that says "was not found" (what the SDK reads as
//! gone). Only envd's port is served; other ports are not yet (502).

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::connect::{Code, RpcError};
use super::{E2bState, ENVD_PORT};

/// Which sandbox and port the request is for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The sandbox ID.
    pub id: String,
    /// The guest port.
    pub port: u16,
}

/// The sandbox an authorised envd request runs in.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Its ID.
    pub id: String,
}

/// envd's routes.
pub fn router(state: E2bState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/files", get(super::files_http::download).post(super::files_http::upload))
        .route("/process.Process/{method}", post(super::process::call))
        .route("/filesystem.Filesystem/{method}", post(super::filesystem::call))
        .fallback(super::unrouted)
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorise))
        .with_state(state)
}

async fn health() -> Response {
    axum::http::StatusCode::NO_CONTENT.into_response()
}

fn gateway(message: String) -> Response {
    let body = serde_json::json!({ "code": 502, "message": message });
    (axum::http::StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

/// The token check, and the guest-access rule (a paused sandbox refuses envd calls).
async fn authorise(State(state): State<E2bState>, mut req: Request, next: Next) -> Response {
    let Some(target) = req.extensions().get::<Target>().cloned() else {
        return gateway("no sandbox named".into());
    };
    let sid = target.id.clone();
    let found = state
        .app
        .store
        .read(move |s| match s.e2b_sandbox(&sid)? {
            Some(e) => Ok(Some((e, s.sandbox_by_id(&sid)?))),
            None => Ok(None),
        })
        .await;
    let (e2b, sandbox) = match found {
        Ok(Some(pair)) => pair,
        Ok(None) => return gateway(format!("The sandbox {} was not found", target.id)),
        Err(e) if e.kind() == store::ErrorKind::NotFound => {
            return gateway(format!("The sandbox {} was not found", target.id));
        }
        Err(e) => return super::error::rpc(e.into()).into_response(),
    };
    let token = req.headers().get("x-access-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if token.is_empty() || !e2b.token_matches(token) {
        return RpcError::new(Code::Unauthenticated, "invalid or missing access token")
            .into_response();
    }
    if target.port != ENVD_PORT {
        return gateway(format!("port {} of sandbox {} is not served yet", target.port, target.id));
    }
    if req.uri().path() != "/health" {
        let thermal = state.app.engine.thermal(&sandbox.id).ok();
        if let Err(refusal) =
            bhatti_core::lifecycle::guest_access(sandbox.status, sandbox.user_stopped, thermal)
        {
            return gateway(format!(
                "sandbox {} is not running ({})",
                target.id,
                crate::error::ApiError::Refused(refusal)
            ));
        }
    }
    req.extensions_mut().insert(Guest { id: sandbox.id });
    next.run(req).await
}
