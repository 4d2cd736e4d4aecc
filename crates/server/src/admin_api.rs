//! `GET /admin/status` and `GET /admin/metrics` (the admin only, `admin.rs`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};

use crate::admin::Admin;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `GET /admin/status`: version, uptime, sandboxes by thermal state, users, events dropped,
/// the host, counter totals over the kept snapshots and the last 10 events.
pub async fn status(State(state): State<AppState>, Admin(_): Admin) -> ApiResult<Response> {
    let (sandboxes, users, host) = crate::metrics_snapshots::gauges(&state).await?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), state.events.flush()).await;
    let (snapshots, recent) = state
        .store
        .read(|s| {
            let snaps = s.metrics_since(store::Timestamp(0))?;
            let recent =
                s.query_events(&store::EventQuery { limit: Some(10), ..Default::default() })?;
            Ok((snaps, recent))
        })
        .await?;
    let mut totals = BTreeMap::new();
    for m in &snapshots {
        for (k, v) in [
            ("api_requests", m.api_requests),
            ("api_errors", m.api_errors),
            ("api_auth_failures", m.api_auth_failures),
            ("api_rate_limited", m.api_rate_limited),
            ("proxy_requests", m.proxy_requests),
            ("proxy_errors", m.proxy_errors),
            ("proxy_cold_wakes", m.proxy_cold_wakes),
            ("proxy_rate_limited", m.proxy_rate_limited),
            ("events_dropped", m.events_dropped),
        ] {
            *totals.entry(k.to_owned()).or_insert(0u64) += v;
        }
    }
    let out = api::AdminStatus {
        version: api::VERSION.into(),
        uptime: api::go_duration(state.started.elapsed()),
        sandboxes,
        users,
        events_dropped: state.events.dropped(),
        host: api::HostLoad {
            load_1m: host.load_1m,
            mem_total_mb: host.mem_total_mb,
            mem_available_mb: host.mem_available_mb,
        },
        totals,
        recent_events: recent
            .iter()
            .map(|e| crate::events_api::to_api(Some(e.id), &e.event))
            .collect(),
    };
    Ok(axum::Json(out).into_response())
}

/// `GET /admin/metrics?since=1h`: the snapshots since then (default the last hour), oldest
/// first.
pub async fn metrics(
    State(state): State<AppState>,
    Admin(_): Admin,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let mut since = None;
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if k == "since" {
            since = Some(
                crate::events_api::parse_since(&v, SystemTime::now())
                    .map_err(ApiError::BadRequest)?,
            );
        }
    }
    let since =
        store::Timestamp(since.unwrap_or_else(|| {
            store::Timestamp::now().minus(std::time::Duration::from_secs(3600)).0
        }));
    let rows = state.store.read(move |s| s.metrics_since(since)).await?;
    let out: Vec<api::MetricsSnapshot> =
        rows.iter().map(crate::metrics_snapshots::to_api).collect();
    Ok(axum::Json(out).into_response())
}
