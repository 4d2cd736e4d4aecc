//! The public proxy (host.md 1.15): published sandbox ports, unauthenticated, on a listener of
//! its own (`public_proxy_listen`). Path mode: `/<alias>/<rest>` goes to the alias's sandbox
//! port with the path `/<rest>`; a bare `/` is 404.
//!
//! A request passes, in order: the global and per-client rate limits (before any lookup, so a
//! flood of made-up aliases never reaches SQLite); the alias (the route cache, else the store;
//! unknown -> 404); the alias's rate limit; the body cap (50 MiB, as v1, for anything but
//! GET/HEAD); a wake when the sandbox is not hot (`wakes`: single flight, bounded, 503 with
//! `Retry-After` when every slot is taken); then the same forwarding as the authenticated
//! proxy (`proxy::deliver`: streamed both ways, WebSocket upgrades relayed, hop-by-hop headers
//! dropped, `X-Forwarded-*` set). The connection to the guest holds a lease, which is the
//! activity that keeps the sandbox hot while traffic flows.
//!
//! A sandbox its user stopped stays stopped: its routes answer 502 `sandbox unavailable`
//! (a visitor cannot start it).

pub mod domain;

pub use crate::gate::{Public, PublicStats, limits, routes, wakes};

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::response::Response;
use axum::routing::any;

use crate::error::{ApiError, ApiResult};
use crate::gate::routes::Route;
use crate::proxy::ClientAddr;
use crate::state::AppState;

/// Request bodies larger than this are refused (v1: 50 MiB).
pub const MAX_BODY: u64 = 50 * 1024 * 1024;

/// The public proxy's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/{alias}", any(handle))
        .route("/{alias}/", any(handle))
        .route("/{alias}/{*rest}", any(handle))
        .fallback(crate::request::not_found)
        .layer(axum::middleware::from_fn(crate::request::around))
        .with_state(state)
}

/// The alias and the rest of the raw (still percent-encoded) path, which keeps its leading `/`
/// and defaults to `/`.
fn split_alias(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix('/')?;
    let (alias, rest) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    (!alias.is_empty()).then_some((alias, rest))
}

fn not_found() -> ApiError {
    ApiError::NotFound("not found".into())
}

/// The route of `alias`: remembered, else from the store (and remembered).
async fn route_of(state: &AppState, alias: &str) -> ApiResult<Route> {
    if let Some(route) = state.public.routes.get(alias) {
        return Ok(route);
    }
    let key = alias.to_owned();
    let found = state.store.read(move |s| s.publish_route(&key)).await;
    let (rule, sandbox) = match found {
        Ok(found) => found,
        Err(e) if e.kind() == store::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if sandbox.status == store::Status::Destroyed {
        return Err(not_found());
    }
    let route = Route { sandbox_id: sandbox.id, port: rule.port };
    state.public.routes.put(alias, route.clone());
    Ok(route)
}

/// Makes the route's sandbox hot (waking it, single flight) or says why not.
async fn ensure_hot(state: &AppState, route: &Route) -> ApiResult<()> {
    match state.engine.thermal(&route.sandbox_id) {
        Ok(engine::Thermal::Hot) => return Ok(()),
        Ok(_) => {}
        // The engine no longer has it (destroyed meanwhile): the route is stale.
        Err(_) => {
            state.public.routes.forget_sandbox(&route.sandbox_id);
            return Err(not_found());
        }
    }
    let id = route.sandbox_id.clone();
    let sandbox = state.store.read(move |s| s.sandbox_by_id(&id)).await?;
    let thermal = state.engine.thermal(&sandbox.id).ok();
    match bhatti_core::lifecycle::guest_access(sandbox.status, sandbox.user_stopped, thermal) {
        Ok(()) => {}
        Err(bhatti_core::Refusal::Gone) => return Err(not_found()),
        Err(_) => return Err(ApiError::SandboxUnavailable),
    }
    let (wake_state, id) = (state.clone(), sandbox.id.clone());
    let wake = async move {
        match crate::lifecycle::wake(&wake_state, &sandbox).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(sandbox = %sandbox.id, "public proxy wake: {e}");
                false
            }
        }
    };
    state.public.wakes.run(&id, wake).await.map_err(|e| match e {
        wakes::WakeError::Busy => {
            state.public.counters.busy.fetch_add(1, Ordering::Relaxed);
            ApiError::Busy
        }
        wakes::WakeError::Failed => ApiError::SandboxUnavailable,
    })
}

/// Path mode: `/<alias>/<rest>`.
async fn handle(State(state): State<AppState>, request: Request) -> ApiResult<Response> {
    let path = request.uri().path().to_owned();
    // Limits before the path is even looked at: a malformed path costs its client too.
    let client = client_of(&request);
    check_client(&state, client)?;
    let (alias, rest) = split_alias(&path).ok_or_else(not_found)?;
    to_alias(&state, request, alias, rest, "http").await
}

/// The client's address, as the accept loop recorded it.
fn client_of(request: &Request) -> Option<std::net::IpAddr> {
    request.extensions().get::<ConnectInfo<ClientAddr>>().and_then(|c| c.0.0)
}

fn check_client(state: &AppState, client: Option<std::net::IpAddr>) -> ApiResult<()> {
    state.public.limits.check_client(client, Instant::now()).map_err(|_| limited(state))
}

/// A refusal by a rate limit, counted.
fn limited(state: &AppState) -> ApiError {
    state.public.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
    crate::telemetry::rate_limited("proxy");
    ApiError::RateLimited
}

/// Sends a request for `alias` (the rest of its path `rest`) to the alias's sandbox port.
/// The client's own rate limit is already charged.
pub(crate) async fn to_alias(
    state: &AppState,
    request: Request,
    alias: &str,
    rest: &str,
    proto: &'static str,
) -> ApiResult<Response> {
    let client = client_of(&request);
    let route = route_of(state, alias).await?;
    state.public.limits.check_alias(alias, Instant::now()).map_err(|_| limited(state))?;
    state.public.counters.requests.fetch_add(1, Ordering::Relaxed);
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY) {
            return Err(ApiError::TooLarge(format!(
                "request bodies are limited to {MAX_BODY} bytes"
            )));
        }
    }
    let target = match request.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    let headers = crate::proxy::upstream_headers(
        request.headers(),
        request.uri().authority().map(|a| a.as_str()),
        route.port,
        client,
        crate::proxy::is_websocket(request.headers()),
        proto,
    );
    ensure_hot(state, &route).await?;
    let stream = state.engine.forward(&route.sandbox_id, route.port).await?;
    let request = cap_body(request);
    crate::proxy::deliver(stream, request, &target, headers, route.sandbox_id).await
}

/// A body that may be chunked (no length up front) is cut at [`MAX_BODY`]: the guest sees the
/// stream end in an error rather than more than the cap.
fn cap_body(request: Request) -> Request {
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_BODY as usize);
    Request::from_parts(parts, axum::body::Body::new(limited))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alias_and_the_rest_of_the_path() {
        let rows: &[(&str, Option<(&str, &str)>)] = &[
            ("/app", Some(("app", "/"))),
            ("/app/", Some(("app", "/"))),
            ("/app/a/b%20c", Some(("app", "/a/b%20c"))),
            ("/", None),
            ("", None),
        ];
        for (path, want) in rows {
            assert_eq!(split_alias(path), *want, "{path:?}");
        }
    }
}
