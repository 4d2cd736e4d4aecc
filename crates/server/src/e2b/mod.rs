//! The E2B-compatible listener (issue 25): E2B's SDKs, pointed at this listener by
//! `E2B_API_URL` / `E2B_SANDBOX_URL` (or `E2B_DOMAIN`), run unmodified against bhatti.
//!
//! One port serves both planes. A request that names a sandbox, by the `E2b-Sandbox-Id` /
//! `E2b-Sandbox-Port` headers every envd call carries or by a `Host: <port>-<id>.<domain>`,
//! goes to that sandbox's envd surface (`envd.rs`: Connect RPC, `/files`, `/health`), checked
//! against the sandbox's own access token; anything else is the control plane
//! (`control.rs`, bhatti API keys in `X-API-KEY`). Nothing here is a second agent: envd's
//! calls become the engine's guest operations (lohar frames).
//!
//! - `connect.rs`: Connect's JSON codec (unary, server streams, envelopes).
//! - `error.rs`: every error of the listener becomes an answer there.
//! - `process.rs` / `filesystem.rs` / `files_http.rs`: the envd services.
//! - `watchers.rs`: the polled file watchers' registry.
//! - `deadline.rs`: E2B's timeout (destroy, or pause with `autoPause`).
//! - `template_images.rs`: E2B template IDs with a bhatti image of another name.
//! - `ports.rs`: any other port (the code interpreter's 49999, `get_host(port)`), forwarded
//!   to the guest by the daemon's reverse proxy.

mod connect;
mod control;
pub mod deadline;
mod envd;
mod error;
mod files_http;
mod filesystem;
mod ports;
mod process;
mod template_images;
mod watchers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;

use crate::state::AppState;

/// envd's port in E2B's sandboxes (what `E2b-Sandbox-Port` names for its calls).
pub const ENVD_PORT: u16 = 49983;

/// The envd version the listener reports: the features of 0.5.7 (stdin close, octet-stream
/// uploads, no per-call user) without file metadata or watcher entry info.
pub const ENVD_VERSION: &str = "0.5.7";

/// Config key `e2b_listen` (and `e2b_domain`): off unless configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bConfig {
    /// Where the listener binds (`127.0.0.1:3049`).
    pub listen: SocketAddr,
    /// The domain of `Host: <port>-<id>.<domain>` routing and of the create response's
    /// `domain`; none: header routing only.
    pub domain: Option<String>,
}

/// What the listener's handlers share.
#[derive(Debug, Clone)]
pub struct E2bState {
    /// The daemon's state.
    pub app: AppState,
    /// The listener's settings.
    pub config: Arc<E2bConfig>,
    /// The processes envd started, per sandbox (`process.rs`).
    pub procs: Arc<process::Registry>,
    /// envd's polled watchers, per sandbox (`watchers.rs`).
    pub watchers: Arc<watchers::Registry>,
}

/// Which sandbox and port a request is for, when it is an envd request.
fn target_of(req: &Request, domain: Option<&str>) -> Option<(String, u16)> {
    let headers = req.headers();
    if let Some(id) = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        let port = headers
            .get("e2b-sandbox-port")
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.parse().ok())
            .unwrap_or(ENVD_PORT);
        return Some((id.to_owned(), port));
    }
    let host = headers.get(axum::http::header::HOST).and_then(|v| v.to_str().ok())?;
    host_target(host, domain?)
}

/// `<port>-<id>.<domain>[:port]` -> (id, port). The domain may carry the listener's port
/// (`E2B_DOMAIN=e2b.localhost:3443`, which the SDK puts in its URLs as it is).
fn host_target(host: &str, domain: &str) -> Option<(String, u16)> {
    let without_port = |name: &str| {
        name.rsplit_once(':').map_or(name.to_owned(), |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) { h } else { name }.to_owned()
        })
    };
    let host = without_port(host).to_ascii_lowercase();
    let domain = without_port(domain);
    let label = host.strip_suffix(domain.as_str())?.strip_suffix('.')?;
    if label.contains('.') {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port = port.parse().ok()?;
    (!id.is_empty()).then(|| (id.to_owned(), port))
}

/// The listener's router: envd requests by target, the control plane otherwise.
pub fn router(state: E2bState) -> Router {
    let control = control::router(state.clone());
    let envd = envd::router(state.clone());
    let domain = state.config.domain.clone();
    Router::new()
        .fallback(move |req: Request| {
            let (control, envd) = (control.clone(), envd.clone());
            let target = target_of(&req, domain.as_deref());
            async move {
                let routed = match target {
                    Some(target) => {
                        let mut req = req;
                        req.extensions_mut().insert(envd::Target { id: target.0, port: target.1 });
                        envd.oneshot(req).await
                    }
                    None => control.oneshot(req).await,
                };
                match routed {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        })
        .layer(axum::middleware::from_fn(crate::request::around))
}

/// Serves the listener until `shutdown`, with the timeout task beside it.
pub async fn serve<L>(
    app: AppState,
    config: E2bConfig,
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: Into<crate::proxy::ClientAddr>,
{
    let state = E2bState {
        app: app.clone(),
        config: Arc::new(config),
        procs: Arc::new(process::Registry::default()),
        watchers: Arc::new(watchers::Registry::default()),
    };
    let deadlines = tokio::spawn(deadline::run(state.clone()));
    let settings = Arc::clone(&app.settings);
    let served = crate::serve_app(router(state), &settings, listener, shutdown).await;
    deadlines.abort();
    served
}

/// A response for a request no route took.
pub(crate) async fn unrouted() -> Response {
    error::E2bError::BadRequest("no such route".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_targets_table() {
        let rows = [
            ("envd", "49983-abc.e2b.localhost", Some(("abc", 49983))),
            ("with port", "49983-abc.e2b.localhost:3049", Some(("abc", 49983))),
            ("user port", "8080-abc-def.e2b.localhost", Some(("abc-def", 8080))),
            ("api host", "api.e2b.localhost", None),
            ("other domain", "49983-abc.example.com", None),
            ("nested", "49983-abc.x.e2b.localhost", None),
            ("no port", "abc.e2b.localhost", None),
            ("no id", "49983-.e2b.localhost", None),
            ("the domain itself", "e2b.localhost", None),
            ("upper case", "49983-ABC.E2B.localhost", Some(("abc", 49983))),
        ];
        for (name, host, want) in rows {
            let want = want.map(|(i, p)| (i.to_owned(), p));
            assert_eq!(host_target(host, "e2b.localhost"), want, "{name}");
            // A domain with the listener's port (`E2B_DOMAIN=e2b.localhost:3443`) routes alike.
            assert_eq!(host_target(host, "e2b.localhost:3443"), want, "{name}, domain with port");
        }
    }
}
