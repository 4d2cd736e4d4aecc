//! v1's metrics snapshots (host.md 1.24): every `settings.metrics_period` (60 s) one row with
//! the counters' deltas since the previous row and the gauges of the moment (sandboxes by
//! thermal state, users, the host's load and memory). `housekeeping.rs` purges rows older
//! than `settings.metrics_retention` (30 days).

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;
use crate::telemetry::{COUNTERS, total};

/// Counts live sandboxes by thermal state: running ones by the engine's state (the row's if
/// the engine does not know it), everything not running as cold (v1's rule); destroyed rows
/// not at all.
pub fn thermal_counts(
    rows: &[store::Sandbox],
    live: impl Fn(&str) -> Option<engine::Thermal>,
) -> api::ThermalCounts {
    let mut c = api::ThermalCounts::default();
    for row in rows.iter().filter(|r| r.status != store::Status::Destroyed) {
        c.total += 1;
        let thermal =
            if row.status == store::Status::Running { live(&row.id).or(row.thermal) } else { None };
        match thermal {
            Some(engine::Thermal::Hot) => c.hot += 1,
            Some(engine::Thermal::Warm) => c.warm += 1,
            _ => c.cold += 1,
        }
    }
    c
}

/// The gauges of the moment: sandboxes, users (all, and those owning a sandbox), the host.
pub(crate) async fn gauges(
    state: &AppState,
) -> Result<(api::ThermalCounts, Vec<api::UserSandboxes>, crate::host::Host), store::StoreError> {
    let (rows, users) =
        state.store.read(|s| Ok((s.list_all_sandboxes()?, s.list_users()?))).await?;
    let engine = state.engine.clone();
    let counts = thermal_counts(&rows, |id| engine.thermal(id).ok());
    let per_user = users
        .iter()
        .map(|u| api::UserSandboxes {
            id: u.id.clone(),
            name: u.name.clone(),
            sandboxes: rows
                .iter()
                .filter(|r| r.owner == u.id && r.status != store::Status::Destroyed)
                .count() as u64,
        })
        .collect();
    let host = tokio::task::spawn_blocking(crate::host::read).await.unwrap_or_default();
    Ok((counts, per_user, host))
}

/// The counter totals a snapshot takes deltas of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals([u64; 9]);

fn totals(state: &AppState) -> Totals {
    let public = state.public.stats();
    Totals([
        total(&COUNTERS.api_requests),
        total(&COUNTERS.api_errors),
        total(&COUNTERS.api_auth_failures),
        total(&COUNTERS.api_rate_limited),
        public.requests,
        public.busy,
        public.wakes,
        public.rate_limited,
        state.events.dropped(),
    ])
}

/// One snapshot: `now`'s totals minus `before`'s, and the gauges.
async fn take(
    state: &AppState,
    before: Totals,
) -> Result<(store::MetricsSnapshot, Totals), store::StoreError> {
    let now = totals(state);
    let d = |i: usize| now.0[i].saturating_sub(before.0[i]);
    let (counts, users, host) = gauges(state).await?;
    let snapshot = store::MetricsSnapshot {
        ts: store::Timestamp::now(),
        api_requests: d(0),
        api_errors: d(1),
        api_auth_failures: d(2),
        api_rate_limited: d(3),
        proxy_requests: d(4),
        proxy_errors: d(5),
        proxy_cold_wakes: d(6),
        proxy_rate_limited: d(7),
        events_dropped: d(8),
        sandboxes_total: counts.total,
        sandboxes_hot: counts.hot,
        sandboxes_warm: counts.warm,
        sandboxes_cold: counts.cold,
        users_total: users.len() as u64,
        users_active: users.iter().filter(|u| u.sandboxes > 0).count() as u64,
        websockets_active: 0,
        host_mem_total_mb: host.mem_total_mb,
        host_mem_avail_mb: host.mem_available_mb,
        host_load_1m: host.load_1m,
    };
    Ok((snapshot, now))
}

/// A stored snapshot as the API shows it.
pub fn to_api(m: &store::MetricsSnapshot) -> api::MetricsSnapshot {
    api::MetricsSnapshot {
        ts: crate::times::rfc3339(m.ts),
        api_requests: m.api_requests,
        api_errors: m.api_errors,
        api_auth_failures: m.api_auth_failures,
        api_rate_limited: m.api_rate_limited,
        proxy_requests: m.proxy_requests,
        proxy_errors: m.proxy_errors,
        proxy_cold_wakes: m.proxy_cold_wakes,
        proxy_rate_limited: m.proxy_rate_limited,
        events_dropped: m.events_dropped,
        sandboxes_total: m.sandboxes_total,
        sandboxes_hot: m.sandboxes_hot,
        sandboxes_warm: m.sandboxes_warm,
        sandboxes_cold: m.sandboxes_cold,
        users_total: m.users_total,
        users_active: m.users_active,
        websockets_active: m.websockets_active,
        host_mem_total_mb: m.host_mem_total_mb,
        host_mem_avail_mb: m.host_mem_avail_mb,
        host_load_1m: m.host_load_1m,
    }
}

/// Starts the snapshot loop: the first row one period after the start, then every period,
/// until `shutdown`.
pub fn spawn(state: AppState, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut before = totals(&state);
        let mut ticker = crate::background::ticker(state.settings.metrics_period);
        ticker.tick().await;
        loop {
            tokio::select! {
                biased;
                () = crate::background::stopping(&mut shutdown) => break,
                _ = ticker.tick() => match take(&state, before).await {
                    Ok((snapshot, now)) => {
                        before = now;
                        if let Err(e) = state.store.write(move |s| s.record_metrics(&snapshot)).await {
                            tracing::warn!("writing a metrics snapshot: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("taking a metrics snapshot: {e}"),
                },
            }
        }
    })
}
