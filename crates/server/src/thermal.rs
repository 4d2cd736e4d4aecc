//! The thermal manager (host.md section 3): idle sandboxes are paused (hot -> warm) and later
//! suspended to disk (warm -> cold), so an idle sandbox costs no CPU and then no memory.
//!
//! Every `settings.thermal_tick` the manager reads the store's rows and, for each `running` one
//! that is not `keep_hot`, the engine's host-side view (`host_activity`: thermal state, last
//! lease, leases out), which never waits for the sandbox's owner. It then *dispatches* the work
//! to a task of its own, at most one per sandbox, so a tick never waits behind a boot, a
//! checkpoint or a slow guest:
//! - **hot**, no lease out, host idle for `warm_after` (the fast path, no guest contact): the
//!   task asks the agent (`engine.activity`, a lease that never wakes, 5 s deadline); idle is
//!   now minus the newer of the host's and the agent's last activity; no attached session.
//!   Then `pause(wait = 0)`: the engine refuses with `Busy` if an operation started meanwhile
//!   (skipped quietly). An agent that does not answer for [`AGENT_SILENCE_LIMIT`] evaluations
//!   in a row is paused on the host's view alone (v1's force-pause).
//! - **warm** for `cold_after`: `stop(wait = 0)`; the agent is never asked (its vCPUs are
//!   paused). *Warm for* is counted from the pause (the time the manager paused it, or first saw
//!   it warm), not from the last user activity (v1's bug: the cold timer used the latter). The
//!   host activity timestamp is not used for this: the agent query before a pause takes a lease
//!   and so moves it, which would make the timer depend on how the pause was decided.
//!   On success the row becomes `stopped` (thermal cold, `stopped_at`, the engine's record)
//!   and `sandbox.stopped` (reason `thermal`) and `thermal.snapshot` are logged. A failure is
//!   logged (`thermal.snapshot_failed`) and retried next tick; the third in a row marks the row
//!   `unknown` and the manager stops trying (it only looks at `running` rows).
//!
//! The manager holds no store transition around its stop: a transition would make a
//! concurrent `DELETE` answer 409. Instead the row is written from the engine's state as it is
//! when the write runs (see `engine_events`), so a wake or a destroy that overtook the stop
//! wins. Shutdown stops the loop after the tick in progress and waits for the work it
//! dispatched (each bounded by a deadline).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::engine_events::{EXPORT_DEADLINE, LogEntry, sync_row};
use crate::state::AppState;

use bhatti_core::thermal_policy::{self as policy, Action, PauseVerdict};
pub use bhatti_core::thermal_policy::{AGENT_SILENCE_LIMIT, MAX_STOP_FAILURES};
/// How long the agent may take to say how idle it is.
const AGENT_DEADLINE: Duration = Duration::from_secs(5);
/// How long a pause may wait behind the sandbox's owner.
const PAUSE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a stop may take, including waiting behind the owner (v1: 60 s).
const STOP_DEADLINE: Duration = Duration::from_secs(120);
/// Stops at once (they write to disk).
const PARALLEL_STOPS: usize = engine::SHUTDOWN_PARALLEL;

/// Starts the thermal manager, the engine-events task and the housekeeping loop; the daemon's `serve` calls this
/// after recovery. On `shutdown` both end after the work in progress; await the handles.
pub fn spawn_background(state: &AppState, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    vec![
        crate::engine_events::spawn(state.clone(), shutdown.clone()),
        crate::housekeeping::spawn(state.clone(), shutdown.clone()),
        crate::metrics_snapshots::spawn(state.clone(), shutdown.clone()),
        spawn(state.clone(), shutdown),
    ]
}

/// What one dispatched task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Nothing to do, or not now (busy, gone, woken meanwhile).
    Skipped,
    /// The agent answered: not idle.
    Active,
    /// The agent did not answer.
    AgentSilent,
    /// Paused.
    Paused,
    /// Stopped to cold.
    Stopped,
    /// The stop failed (`attempt` in a row); given up when it reached the limit.
    StopFailed { attempt: u32 },
}

/// Starts the manager's loop; it ends when `shutdown` turns true or its sender goes.
pub fn spawn(state: AppState, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut manager = Manager::new(state);
        let mut ticker = crate::background::ticker(manager.state.settings.thermal_tick);
        loop {
            tokio::select! {
                // Shutdown first: no new work once it is asked for.
                biased;
                () = crate::background::stopping(&mut shutdown) => break,
                _ = ticker.tick() => manager.tick().await,
                Some(done) = manager.ops.join_next_with_id() => manager.settle(done),
            }
        }
        while let Some(done) = manager.ops.join_next_with_id().await {
            manager.settle(done);
        }
    })
}

struct Manager {
    state: AppState,
    ops: JoinSet<Outcome>,
    /// Sandboxes with a task in flight, by task.
    busy: HashMap<tokio::task::Id, String>,
    /// When each warm sandbox was paused (or first seen warm).
    warm_since: HashMap<String, Instant>,
    stop_failures: HashMap<String, u32>,
    agent_silence: HashMap<String, u32>,
    stops: Arc<Semaphore>,
}

impl Manager {
    fn new(state: AppState) -> Self {
        Self {
            state,
            ops: JoinSet::new(),
            busy: HashMap::new(),
            warm_since: HashMap::new(),
            stop_failures: HashMap::new(),
            agent_silence: HashMap::new(),
            stops: Arc::new(Semaphore::new(PARALLEL_STOPS)),
        }
    }

    async fn tick(&mut self) {
        let rows = match self.state.store.read(|s| s.list_all_sandboxes()).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("thermal tick: listing sandboxes: {e}");
                return;
            }
        };
        let busy: HashSet<String> = self.busy.values().cloned().collect();
        let settings = Arc::clone(&self.state.settings);
        let mut managed = HashSet::new();
        for row in rows {
            if busy.contains(&row.id) {
                // Still managed while its task runs; nothing new for it this tick.
                if row.status == store::Status::Running && !row.keep_hot {
                    managed.insert(row.id.clone());
                }
                continue;
            }
            // Not in the engine (recovery left it out): nothing to cool.
            let Ok(host) = self.state.engine.host_activity(&row.id) else {
                if row.status == store::Status::Running && !row.keep_hot {
                    managed.insert(row.id.clone());
                }
                continue;
            };
            let warm_for = match host.thermal {
                engine::Thermal::Warm => Some(
                    self.warm_since.entry(row.id.clone()).or_insert_with(Instant::now).elapsed(),
                ),
                _ => {
                    self.warm_since.remove(&row.id);
                    None
                }
            };
            if host.thermal == engine::Thermal::Hot {
                self.stop_failures.remove(&row.id);
            }
            let view = policy::Row {
                status: row.status,
                keep_hot: row.keep_hot,
                warm_after: settings.warm_after,
                cold_after: settings.cold_after,
            };
            let failures = policy::Failures {
                stops: self.stop_failures.get(&row.id).copied().unwrap_or(0),
                agent_silence: self.agent_silence.get(&row.id).copied().unwrap_or(0),
            };
            let action =
                policy::decide(&view, &activity_view(&host, warm_for), SystemTime::now(), failures);
            if action != Action::Unmanaged {
                managed.insert(row.id.clone());
            }
            match action {
                Action::Unmanaged | Action::Wait | Action::Behind => {}
                Action::CheckIdle { agent_silence } => {
                    let task = pause_if_idle(self.state.clone(), row.id.clone(), agent_silence);
                    self.dispatch(row.id, task);
                }
                Action::Stop { attempt } => {
                    let warm_for = warm_for.unwrap_or_default();
                    let permits = Arc::clone(&self.stops);
                    let task =
                        stop_cold(self.state.clone(), row.id.clone(), attempt, warm_for, permits);
                    self.dispatch(row.id, task);
                }
            }
        }
        // Forget sandboxes no longer managed (destroyed, stopped, kept hot, given up on).
        self.warm_since.retain(|id, _| managed.contains(id));
        self.stop_failures.retain(|id, _| managed.contains(id));
        self.agent_silence.retain(|id, _| managed.contains(id));
    }

    fn dispatch(
        &mut self,
        id: String,
        task: impl std::future::Future<Output = Outcome> + Send + 'static,
    ) {
        let handle = self.ops.spawn(task);
        self.busy.insert(handle.id(), id);
    }

    fn settle(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let (task, outcome) = match done {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("thermal task failed: {e}");
                self.busy.remove(&e.id());
                return;
            }
        };
        let Some(id) = self.busy.remove(&task) else { return };
        match outcome {
            Outcome::Skipped => {}
            Outcome::Active => {
                self.agent_silence.remove(&id);
            }
            Outcome::AgentSilent => *self.agent_silence.entry(id).or_insert(0) += 1,
            Outcome::Paused => {
                self.agent_silence.remove(&id);
                self.warm_since.insert(id, Instant::now());
            }
            Outcome::Stopped => {
                self.warm_since.remove(&id);
                self.stop_failures.remove(&id);
            }
            Outcome::StopFailed { attempt } if policy::gives_up(attempt) => {
                self.stop_failures.remove(&id);
            }
            Outcome::StopFailed { attempt } => {
                self.stop_failures.insert(id, attempt);
            }
        }
    }
}

/// The policy's view of the engine's host-side activity.
fn activity_view(host: &engine::Activity, warm_for: Option<Duration>) -> policy::Activity {
    policy::Activity {
        thermal: host.thermal,
        in_flight: host.in_flight,
        last_host_activity: host.last_host_activity,
        warm_for,
    }
}

/// The policy's view of the agent's answer.
fn agent_view(agent: &engine::ActivityInfo) -> policy::AgentView {
    policy::AgentView {
        last_activity_unix: agent.last_activity_unix,
        attached_sessions: agent.attached_sessions,
    }
}

/// Errors that mean "not now" rather than "failed".
fn quiet(kind: engine::ErrorKind) -> bool {
    use engine::ErrorKind as E;
    matches!(kind, E::Busy | E::NotFound | E::ShuttingDown | E::WrongState | E::Crashed)
}

/// Asks the agent how idle the sandbox is and pauses it if it is.
async fn pause_if_idle(state: AppState, id: String, silent: u32) -> Outcome {
    let warm_after = state.settings.warm_after;
    let activity = match tokio::time::timeout(AGENT_DEADLINE, state.engine.activity(&id)).await {
        Ok(Ok(activity)) => activity,
        Ok(Err(_)) => return Outcome::Skipped,
        // The agent did not answer in time: the host's view, counted as silence below.
        Err(_) => match state.engine.host_activity(&id) {
            Ok(activity) => activity,
            Err(_) => return Outcome::Skipped,
        },
    };
    let agent = activity.agent.as_ref().map(agent_view);
    let view = activity_view(&activity, None);
    let idle = match policy::pause_verdict(&view, agent, SystemTime::now(), warm_after, silent) {
        PauseVerdict::Skip => return Outcome::Skipped,
        PauseVerdict::Active => {
            tracing::debug!(sandbox = %id, "thermal: in use (recent activity or a session attached)");
            return Outcome::Active;
        }
        PauseVerdict::AgentSilent => return Outcome::AgentSilent,
        PauseVerdict::Pause { idle, agent_silent } => {
            if agent_silent {
                tracing::warn!(sandbox = %id, "thermal: the agent is silent, pausing on the host's view");
            }
            idle
        }
    };
    match tokio::time::timeout(PAUSE_DEADLINE, state.engine.pause(&id, Duration::ZERO)).await {
        Ok(Ok(())) => {
            let meta = serde_json::json!({ "idle_s": idle.as_secs() });
            if let Err(e) = sync_row(&state, &id, vec![LogEntry::new("thermal.pause", meta)]).await
            {
                tracing::warn!(sandbox = %id, "recording a pause: {e}");
            }
            tracing::debug!(sandbox = %id, idle_s = idle.as_secs(), "thermal: paused");
            Outcome::Paused
        }
        Ok(Err(e)) if quiet(e.kind()) => {
            tracing::debug!(sandbox = %id, "thermal: not paused: {}", e.report());
            Outcome::Skipped
        }
        Ok(Err(e)) => {
            tracing::warn!(sandbox = %id, "thermal: pause failed: {}", e.report());
            Outcome::Skipped
        }
        Err(_) => {
            tracing::warn!(sandbox = %id, "thermal: pause did not finish in {PAUSE_DEADLINE:?}");
            Outcome::Skipped
        }
    }
}

/// Suspends a warm sandbox to disk and writes the row.
async fn stop_cold(
    state: AppState,
    id: String,
    attempt: u32,
    warm_for: Duration,
    permits: Arc<Semaphore>,
) -> Outcome {
    let Ok(_permit) = permits.acquire_owned().await else { return Outcome::Skipped };
    let error =
        match tokio::time::timeout(STOP_DEADLINE, state.engine.stop(&id, Duration::ZERO)).await {
            Ok(Ok(_)) => {
                record_stop(&state, &id, warm_for).await;
                return Outcome::Stopped;
            }
            Ok(Err(e)) if quiet(e.kind()) => {
                tracing::debug!(sandbox = %id, "thermal: not stopped: {}", e.report());
                return Outcome::Skipped;
            }
            Ok(Err(e)) => e.report().to_string(),
            Err(_) => format!("the stop did not finish in {STOP_DEADLINE:?}"),
        };
    tracing::warn!(sandbox = %id, attempt, max = MAX_STOP_FAILURES, "thermal: stop failed: {error}");
    record_failed_stop(&state, &id, attempt, error).await;
    Outcome::StopFailed { attempt }
}

/// The row of a sandbox the manager stopped: `stopped`, cold, the record, the log entries.
/// Written only if the engine still says cold (a wake that overtook the stop wins).
async fn record_stop(state: &AppState, id: &str, warm_for: Duration) {
    let record = match tokio::time::timeout(EXPORT_DEADLINE, state.engine.export(id)).await {
        Ok(Ok(record)) => Some(record),
        Ok(Err(e)) => {
            tracing::debug!(sandbox = %id, "exporting the record after a stop: {}", e.report());
            None
        }
        Err(_) => None,
    };
    let engine = state.engine.clone();
    let sid = id.to_owned();
    let written = state
        .store
        .write(move |s| {
            if engine.thermal(&sid).ok() != Some(engine::Thermal::Cold) {
                return Ok(());
            }
            let row = match s.sandbox_by_id(&sid) {
                Ok(row) if row.status != store::Status::Destroyed => row,
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == store::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let record = record.filter(|r| r.thermal == engine::Thermal::Cold);
            let change = store::Change {
                status: Some(store::Status::Stopped),
                thermal: Some(engine::Thermal::Cold),
                ip: None,
                record: record.as_ref(),
                user_stopped: None,
            };
            s.update_sandbox(&sid, &change)?;
            let entries = [
                LogEntry::new("sandbox.stopped", serde_json::json!({ "reason": "thermal" })),
                LogEntry::new(
                    "thermal.snapshot",
                    serde_json::json!({ "warm_s": warm_for.as_secs() }),
                ),
            ];
            let events: Vec<_> = entries.iter().map(|e| e.to_event(&row)).collect();
            s.record_events(&events)
        })
        .await;
    if let Err(e) = written {
        tracing::warn!(sandbox = %id, "recording a thermal stop: {e}");
    }
}

/// Logs a failed stop; the last allowed one marks the row `unknown` if it is still warm.
async fn record_failed_stop(state: &AppState, id: &str, attempt: u32, error: String) {
    let engine = state.engine.clone();
    let sid = id.to_owned();
    let give_up = policy::gives_up(attempt);
    let written = state
        .store
        .write(move |s| {
            let row = match s.sandbox_by_id(&sid) {
                Ok(row) if row.status == store::Status::Running => row,
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == store::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let meta = serde_json::json!({
                "error": error,
                "attempt": attempt,
                "max_attempts": MAX_STOP_FAILURES,
            });
            s.record_events(&[LogEntry::new("thermal.snapshot_failed", meta).to_event(&row)])?;
            if give_up && engine.thermal(&sid).ok() == Some(engine::Thermal::Warm) {
                s.set_status(&sid, store::Status::Unknown)?;
            }
            Ok(())
        })
        .await;
    if give_up {
        tracing::error!(sandbox = %id, "thermal: {MAX_STOP_FAILURES} stops failed: marked unknown");
    }
    if let Err(e) = written {
        tracing::warn!(sandbox = %id, "recording a failed thermal stop: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_vanished_are_not_failures() {
        use engine::ErrorKind as E;
        assert!(quiet(E::Busy) && quiet(E::NotFound) && quiet(E::ShuttingDown));
        assert!(!quiet(E::Internal) && !quiet(E::Unavailable));
    }
}
