//! envd's surface, per sandbox: the request's [`Target`] (from the `E2b-Sandbox-*` headers or
//! the `Host`) is checked against the sandbox's own access token (`X-Access-Token`) before any
//! route runs; an unknown sandbox is a 502 that says "was not found" (what the SDK reads as
//! gone). envd's port (49983) is served here; any other port (the code interpreter's 49999,
//! `sbx.get_host(port)`) is forwarded to that port in the guest by `ports.rs`, with the access
//! rule of [`allowed`].

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
    let token = req
        .headers()
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(|t| e2b.token_matches(t));
    if !allowed(target.port, token) {
        if target.port != ENVD_PORT {
            let body = serde_json::json!({ "code": 401, "message": "invalid access token" });
            return (axum::http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
        }
        return RpcError::new(Code::Unauthenticated, "invalid or missing access token")
            .into_response();
    }
    if target.port != ENVD_PORT || req.uri().path() != "/health" {
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
    if target.port != ENVD_PORT {
        return super::ports::forward(&state, &sandbox.id, target.port, req).await;
    }
    req.extensions_mut().insert(Guest { id: sandbox.id });
    next.run(req).await
}

/// The access rule, by port and `X-Access-Token` (`None`: not sent; `Some(matches)`): envd's
/// port needs the sandbox's token, as E2B's envd does. Any other port follows E2B's default
/// `allow_public_traffic: true`: no token needed, but one that is sent must be right (the code
/// interpreter's `/execute` sends it). E2B's `allow_public_traffic: false` (a
/// `trafficAccessToken` required in `E2B-Traffic-Access-Token`) is not offered: create answers
/// no `trafficAccessToken`, so the SDK sends none.
pub(super) fn allowed(port: u16, token: Option<bool>) -> bool {
    match token {
        Some(matches) => matches,
        None => port != ENVD_PORT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_by_port_and_token_table() {
        let rows = [
            ("envd, right token", ENVD_PORT, Some(true), true),
            ("envd, wrong token", ENVD_PORT, Some(false), false),
            ("envd, no token", ENVD_PORT, None, false),
            ("code interpreter, right token", 49999, Some(true), true),
            ("code interpreter, wrong token", 49999, Some(false), false),
            ("code interpreter, no token (public traffic)", 49999, None, true),
            ("user port, no token", 8080, None, true),
            ("user port, wrong token", 8080, Some(false), false),
        ];
        for (name, port, token, want) in rows {
            assert_eq!(allowed(port, token), want, "{name}");
        }
    }
}
