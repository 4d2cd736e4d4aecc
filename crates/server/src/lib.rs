//! `bhatti serve`'s HTTP API over the engine and the store (host.md section 1, v1's paths,
//! JSON shapes, status codes and headers).
//!
//! The caller gives the engine, the store, the listener and the shutdown signal, so tests run
//! the real server in-process on an ephemeral port. Every request passes `request::around`
//! (request ID, version header, internal errors logged with their cause, the log line) and
//! `auth::authenticate` (everything but `/health` and the web shell's `/_shell/...`); errors become answers in `error.rs` only.

#![forbid(unsafe_code)]

pub mod admin;
mod admin_api;
pub mod auth;
mod background;
pub mod backup_config;
pub mod backup_schedule;
mod backup_store;
mod backups;
mod diff;
pub mod e2b;
pub mod engine_events;
pub mod error;
pub mod events;
mod events_api;
mod exec;
pub mod exec_budget;
pub mod exec_slots;
mod files;
mod fork;
pub mod forward;
mod forward_error;
mod forwards;
mod gate;
pub mod host;
pub mod housekeeping;
pub mod image_catalog;
pub mod image_convert;
mod image_pull;
pub mod images;
mod key_scan;
mod labels;
mod lifecycle;
mod listen;
mod metrics_http;
pub mod metrics_snapshots;
mod names;
mod ports;
pub mod proxy;
pub mod public;
mod publish;
pub mod publish_urls;
mod pulls;
mod quotas;
pub mod rate_limit;
pub mod rate_limits;
pub mod request;
pub mod routes;
mod sandboxes;
pub mod sealing;
pub mod secret_envs;
mod secrets;
mod sessions;
mod shape;
pub mod shape_store;
mod shape_warm;
pub mod shapes;
pub mod snapshots;
pub mod state;
mod tasks;
pub mod telemetry;
mod templates;
pub mod thermal;
mod times;
pub mod tls;
mod volume_attach;
mod volume_files;
mod volume_locks;
mod volume_names;
mod volumes;
pub mod web_shell;
mod web_shells;
pub mod ws;

use std::future::Future;

use axum::Router;

pub use backup_config::{BackupConfig, BackupSchedule};
pub use error::{ApiError, ApiResult};
pub use listen::{NodelayListener, nodelay};
pub use publish_urls::PublicUrls;
pub use state::{AppState, Settings};
pub use thermal::spawn_background;

/// `GET /health`.
pub(crate) async fn health(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<api::Health> {
    axum::Json(api::Health {
        status: "ok".into(),
        uptime: api::go_duration(state.started.elapsed()),
        version: api::VERSION.into(),
    })
}

/// The whole API: every route from `routes::table()` (which the OpenAPI document is built
/// from too; add routes there, never here).
pub fn router(state: AppState) -> Router {
    routes::add_all(Router::new())
        .fallback(request::unrouted)
        .method_not_allowed_fallback(request::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit::limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(axum::middleware::from_fn(metrics_http::track))
        .layer(axum::middleware::from_fn(request::around))
        .with_state(state)
}

/// Every listener's accept loop, with the settings' connection deadlines.
async fn serve_app<L>(
    app: Router,
    settings: &Settings,
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: Into<proxy::ClientAddr>,
{
    listen::serve(app, listener, settings.header_read_timeout, settings.idle_timeout, shutdown)
        .await
}

/// Serves the public proxy (published ports, no authentication) on `listener` until
/// `shutdown` completes, with the same connection deadlines as the API.
pub async fn serve_public<L>(
    state: AppState,
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: Into<proxy::ClientAddr>,
{
    let settings = std::sync::Arc::clone(&state.settings);
    serve_app(public::router(state), &settings, listener, shutdown).await
}

/// Serves domain mode on a TLS `listener` (see [`tls::listener`]): the API at
/// `domain.api_host`, published aliases at `<alias>.<domain.zone>`.
pub async fn serve_domain(
    state: AppState,
    listener: tls::TlsListener,
    domain: public::domain::Domain,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let settings = std::sync::Arc::clone(&state.settings);
    serve_app(public::domain::router(state, domain), &settings, listener, shutdown).await
}

/// Serves the API on `listener` (TCP, wrapped by [`nodelay`], or the Unix socket) until
/// `shutdown` completes, then lets requests in flight finish (the caller bounds that with its
/// own deadline). Connections that send no request head in time, or sit idle between
/// requests, are closed (`Settings::header_read_timeout`, `Settings::idle_timeout`; see
/// `listen.rs`).
pub async fn serve<L>(
    state: AppState,
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: Into<proxy::ClientAddr>,
{
    let (settings, forwards) = (std::sync::Arc::clone(&state.settings), state.forwards.clone());
    let events = state.events.clone();
    // Followed event streams end with the listener, so they do not hold the drain up.
    let shutdown = async move {
        shutdown.await;
        events.close_subscribers();
    };
    let served = serve_app(router(state), &settings, listener, shutdown).await;
    // Forwards end with the API (they hold the engine and do not survive a restart).
    forwards.close_all();
    served
}
