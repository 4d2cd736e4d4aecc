//! The daemon's periodic clean-ups (v1's hourly retention job): events older than
//! `settings.event_retention` (90 days) and metrics snapshots older than
//! `settings.metrics_retention` (30 days) are purged, so the tables cannot grow without bound.

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;

/// Starts the clean-up loop: one pass at once, then every `settings.housekeeping_period`,
/// until `shutdown` turns true or its sender goes.
pub fn spawn(state: AppState, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = crate::background::ticker(state.settings.housekeeping_period);
        loop {
            tokio::select! {
                // Shutdown first: no new work once it is asked for.
                biased;
                () = crate::background::stopping(&mut shutdown) => break,
                _ = ticker.tick() => {
                    purge_events(&state).await;
                    purge_metrics(&state).await;
                    purge_tasks(&state).await;
                }
            }
        }
    })
}

/// Deletes events older than the retention.
async fn purge_events(state: &AppState) {
    let before = store::Timestamp::now().minus(state.settings.event_retention);
    match state.store.write(move |s| s.purge_events(before)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(purged = n, "events past their retention purged"),
        Err(e) => tracing::warn!("purging old events: {e}"),
    }
}

/// Deletes metrics snapshots older than their retention.
async fn purge_metrics(state: &AppState) {
    let before = store::Timestamp::now().minus(state.settings.metrics_retention);
    match state.store.write(move |s| s.purge_metrics(before)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(purged = n, "metrics snapshots past their retention purged"),
        Err(e) => tracing::warn!("purging old metrics snapshots: {e}"),
    }
}

/// Deletes finished tasks (image pulls) done more than 24 hours ago (v1's).
async fn purge_tasks(state: &AppState) {
    let before = store::Timestamp::now().minus(std::time::Duration::from_secs(24 * 3600));
    match state.store.write(move |s| s.purge_tasks(before)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(purged = n, "finished tasks older than a day purged"),
        Err(e) => tracing::warn!("purging old tasks: {e}"),
    }
}
