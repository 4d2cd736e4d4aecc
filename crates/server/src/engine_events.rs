//! The engine's events applied to the store, so a wake by any path (an exec, a file read, the
//! proxy), a crash or a stop shows in `list`/`get` and in the thermal manager's view at once.
//!
//! One task reads `engine.subscribe()`. For each event it writes the row's status and thermal
//! column *as the engine says they are when the write runs* (the engine is read inside the
//! store's write closure): writes go through one writer thread in order, and the engine sets
//! its thermal state before it sends the event, so a row written from a stale event is
//! overwritten by the write of the newer one. Nothing here depends on event order, so a lagged
//! receiver resynchronises by syncing every row.
//!
//! Mapping (engine thermal -> store status), `bhatti_core::status::observed`, the one rule
//! `GET` uses too:
//! - hot, warm -> `running`; cold -> `stopped`;
//! - failed (QEMU ended on its own) -> `unknown`, thermal `failed`: the memory is lost, which is
//!   what the store's `unknown` means ("a crash without a snapshot"), and `GET` maps it the same
//!   way (two writers must agree). `POST /start` boots it from its disk whatever the status.
//! - a row the thermal manager gave up on (`unknown` after three failed stops) stays `unknown`
//!   while the sandbox is warm, and becomes `running` again once something wakes it (v1's
//!   ensure-hot recovers `unknown` the same way).
//!
//! The engine's record changes with a cold wake, a boot, a stop or a crash (its `thermal` and
//! `snapshot` fields decide what recovery does): it is refreshed by a task of its own
//! (`engine.export` queues behind the sandbox's owner, which must not hold up other events),
//! written only if the engine is still in the state the record describes.

use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::state::AppState;

/// How long a record export may wait behind the sandbox's owner.
pub(crate) const EXPORT_DEADLINE: Duration = Duration::from_secs(60);

/// Longest reason text kept in the event log.
const MAX_REASON: usize = 1024;

/// A log entry about a sandbox, its owner filled in when written.
#[derive(Debug, Clone)]
pub(crate) struct LogEntry {
    pub(crate) kind: &'static str,
    pub(crate) meta: serde_json::Value,
}

impl LogEntry {
    pub(crate) fn new(kind: &'static str, meta: serde_json::Value) -> Self {
        Self { kind, meta }
    }

    pub(crate) fn to_event(&self, sandbox: &store::Sandbox) -> store::NewEvent {
        store::NewEvent {
            ts: store::Timestamp::now(),
            kind: self.kind.to_owned(),
            user_id: sandbox.owner.clone(),
            sandbox_id: sandbox.id.clone(),
            meta: self.meta.to_string(),
        }
    }
}

/// Brings a row in step with the engine (status, thermal column) and appends `log`, in one
/// call on the store's writer. Returns whether the row changed. A row that is gone, being
/// created or destroyed, or a sandbox the engine no longer has, is left alone.
pub(crate) async fn sync_row(
    state: &AppState,
    id: &str,
    log: Vec<LogEntry>,
) -> Result<bool, store::StoreError> {
    let engine = state.engine.clone();
    let id = id.to_owned();
    let (changed, events) = state
        .store
        .write(move |s| {
            let row = match s.sandbox_by_id(&id) {
                Ok(row) => row,
                Err(e) if e.kind() == store::ErrorKind::NotFound => return Ok((false, Vec::new())),
                Err(e) => return Err(e),
            };
            if matches!(row.status, store::Status::Creating | store::Status::Destroyed) {
                return Ok((false, Vec::new()));
            }
            let Ok(thermal) = engine.thermal(&id) else { return Ok((false, Vec::new())) };
            let status = bhatti_core::status::change(row.status, thermal);
            let changed = status.is_some() || row.thermal != Some(thermal);
            if changed {
                let change = store::Change { status, thermal: Some(thermal), ..Default::default() };
                s.update_sandbox(&id, &change)?;
            }
            let events: Vec<_> = log.iter().map(|e| e.to_event(&row)).collect();
            if !events.is_empty() {
                s.record_events(&events)?;
            }
            Ok((changed, events))
        })
        .await?;
    state.events.announce(&events);
    Ok(changed)
}

/// Writes the engine's current record of `id` if the engine is still in the state it
/// describes (otherwise a later event refreshes it).
pub(crate) async fn refresh_record(state: AppState, id: String) {
    let record = match tokio::time::timeout(EXPORT_DEADLINE, state.engine.export(&id)).await {
        Ok(Ok(record)) => record,
        Ok(Err(e)) if e.kind() == engine::ErrorKind::NotFound => return,
        Ok(Err(e)) => {
            tracing::warn!(sandbox = %id, "exporting the record: {}", e.report());
            return;
        }
        Err(_) => {
            tracing::warn!(sandbox = %id, "exporting the record: no answer in {EXPORT_DEADLINE:?}");
            return;
        }
    };
    let engine = state.engine.clone();
    let written = state
        .store
        .write(move |s| {
            if engine.thermal(&id).ok() != Some(record.thermal) {
                return Ok(());
            }
            match s.sandbox_by_id(&id) {
                Ok(row) if row.status != store::Status::Destroyed => {}
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == store::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            let ip = record.ip.to_string();
            let change =
                store::Change { ip: Some(&ip), record: Some(&record), ..Default::default() };
            s.update_sandbox(&id, &change)
        })
        .await;
    if let Err(e) = written {
        tracing::warn!("writing a sandbox's record: {e}");
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// What one event writes: log entries, and whether the record changed.
fn plan(kind: &engine::EventKind) -> Option<(Vec<LogEntry>, bool)> {
    use engine::EventKind as K;
    Some(match kind {
        // The create route writes its row; the destroy route deletes it.
        K::Created | K::Destroyed => return None,
        K::Woke { from, duration } => {
            let meta = serde_json::json!({
                "from_state": from.to_string(),
                "wake_ms": u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            });
            (vec![LogEntry::new("thermal.wake", meta)], *from != engine::Thermal::Warm)
        }
        K::Started => (Vec::new(), true),
        K::Paused => (Vec::new(), false),
        K::Stopped { .. } => (Vec::new(), true),
        K::Crashed { reason } => {
            let meta = serde_json::json!({ "reason": truncate(reason.clone()) });
            (vec![LogEntry::new("sandbox.crashed", meta)], true)
        }
        K::DiskFull => (vec![LogEntry::new("sandbox.disk_full", serde_json::json!({}))], false),
    })
}

/// Applies one event.
async fn apply(state: &AppState, event: engine::Event, refreshes: &mut JoinSet<()>) {
    match &event.kind {
        engine::EventKind::Crashed { reason } => {
            tracing::warn!(sandbox = %event.id, "sandbox crashed: {reason}");
        }
        engine::EventKind::DiskFull => {
            tracing::warn!(sandbox = %event.id, "sandbox paused: a disk is full");
        }
        engine::EventKind::Woke { from, duration } => {
            crate::telemetry::woke(from.as_str(), *duration)
        }
        _ => {}
    }
    let Some((log, record_changed)) = plan(&event.kind) else { return };
    if let Err(e) = sync_row(state, &event.id, log).await {
        tracing::warn!(sandbox = %event.id, "applying {:?} to the store: {e}", event.kind);
    }
    if record_changed {
        refreshes.spawn(refresh_record(state.clone(), event.id));
    }
}

/// Syncs every row with the engine (at start and after missed events).
async fn resync(state: &AppState, refreshes: &mut JoinSet<()>) {
    let rows = match state.store.read(|s| s.list_all_sandboxes()).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!("resynchronising with the engine: {e}");
            return;
        }
    };
    for row in rows {
        match sync_row(state, &row.id, Vec::new()).await {
            Ok(true) => {
                tracing::info!(sandbox = %row.id, "store row resynchronised with the engine");
                refreshes.spawn(refresh_record(state.clone(), row.id));
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(sandbox = %row.id, "resynchronising: {e}"),
        }
    }
}

/// Starts applying the engine's events to the store until `shutdown` turns true (or its sender
/// goes). Subscribes before returning, so no event after this call is missed; rows are synced
/// once at the start for what happened before.
pub fn spawn(state: AppState, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let mut rx = state.engine.subscribe();
    tokio::spawn(async move {
        let mut refreshes = JoinSet::new();
        resync(&state, &mut refreshes).await;
        loop {
            tokio::select! {
                // Shutdown first: no new work once it is asked for.
                biased;
                () = crate::background::stopping(&mut shutdown) => break,
                event = rx.recv() => match event {
                    Ok(event) => apply(&state, event, &mut refreshes).await,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "engine events missed: resynchronising");
                        resync(&state, &mut refreshes).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some(_) = refreshes.join_next() => {}
            }
        }
        // Record refreshes are bounded by their deadlines.
        while refreshes.join_next().await.is_some() {}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::Thermal as T;

    #[test]
    fn events_plan_their_writes() {
        use engine::EventKind as K;
        assert!(plan(&K::Created).is_none() && plan(&K::Destroyed).is_none());
        let (log, record) =
            plan(&K::Woke { from: T::Cold, duration: Duration::from_millis(42) }).unwrap();
        assert!(record);
        assert_eq!(log[0].kind, "thermal.wake");
        assert_eq!(log[0].meta, serde_json::json!({"from_state": "cold", "wake_ms": 42}));
        let (_, record) = plan(&K::Woke { from: T::Warm, duration: Duration::ZERO }).unwrap();
        assert!(!record, "a warm wake changes nothing recovery reads");
        let (log, _) = plan(&K::Crashed { reason: "x".repeat(5000) }).unwrap();
        assert_eq!(log[0].meta["reason"].as_str().unwrap().len(), MAX_REASON);
    }
}
