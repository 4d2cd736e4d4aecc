//! The backup schedule (v1): once a minute, each schedule whose cron matches the minute (UTC)
//! backs up every owner's volume of its name (30 minutes each at most; a failure is logged as
//! `volume.backup_failed`), then keeps the newest `retention` backups of it and deletes the
//! rest (object and row).

use std::time::{Duration, SystemTime};

use bhatti_core::cron::{CivilTime, matches};

use crate::state::AppState;

/// One scheduled backup of one volume.
const ONE_BACKUP: Duration = Duration::from_secs(30 * 60);

/// Runs the schedules due at `at`; answers how many backups were made. Public so tests can
/// drive a tick at a chosen minute.
pub async fn run_due(state: &AppState, at: SystemTime) -> usize {
    let cfg = &state.settings.backup;
    if !cfg.enabled() {
        return 0;
    }
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let now = CivilTime::from_unix(i64::try_from(secs).unwrap_or(i64::MAX));
    let mut made = 0;
    for schedule in &cfg.schedule {
        match matches(&schedule.cron, now) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!("backup schedule: {e}");
                continue;
            }
        }
        let volumes = match state.store.read(|s| s.list_all_volumes()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("backup schedule: listing volumes: {e}");
                continue;
            }
        };
        for v in volumes.iter().filter(|v| v.name == schedule.volume) {
            let backup = crate::backups::back_up(state, cfg, &v.owner, &v.name);
            match tokio::time::timeout(ONE_BACKUP, backup).await {
                Ok(Ok(_)) => made += 1,
                Ok(Err(e)) => {
                    tracing::warn!(volume = %v.name, owner = %v.owner, "scheduled backup: {e}");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(volume = %v.name, owner = %v.owner, "scheduled backup timed out");
                    continue;
                }
            }
            if schedule.retention > 0 {
                prune(state, &v.owner, &v.name, schedule.retention as usize).await;
            }
        }
    }
    made
}

/// Deletes the owner's backups of `name` beyond the newest `keep`.
async fn prune(state: &AppState, owner: &str, name: &str, keep: usize) {
    let (o, n) = (owner.to_owned(), name.to_owned());
    let old = match state.store.read(move |s| s.volume_backups_beyond(&o, &n, keep)).await {
        Ok(old) => old,
        Err(e) => {
            tracing::warn!(volume = %name, "backup retention: {e}");
            return;
        }
    };
    for b in old {
        if let Err(e) = crate::backups::remove(state, &state.settings.backup, &b).await {
            tracing::warn!(backup = %b.id, "backup retention: {e}");
        }
    }
}

/// Ticks at the start of every minute until the daemon stops (only when a schedule is set).
pub fn spawn(state: AppState) {
    if !state.settings.backup.enabled() || state.settings.backup.schedule.is_empty() {
        return;
    }
    tokio::spawn(async move {
        loop {
            let now = SystemTime::now();
            let into = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 60;
            tokio::time::sleep(Duration::from_secs(60 - into)).await;
            run_due(&state, SystemTime::now()).await;
        }
    });
}
