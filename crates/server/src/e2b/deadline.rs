//! E2B's timeout: a deadline after which a sandbox is destroyed, or paused (cold-stopped) when
//! it was created with `autoPause`. `set_timeout` moves it. A task looks every few seconds; what
//! to do is [`decide`] (pure).

use std::time::Duration;

use super::E2bState;

/// E2B's default timeout (seconds) when a create does not say.
pub const DEFAULT_TIMEOUT_S: u64 = 300;
/// The longest timeout taken (E2B's own cap: 24 hours).
pub const MAX_TIMEOUT_S: u64 = 24 * 3600;
/// How often the task looks.
const TICK: Duration = Duration::from_secs(2);

/// The deadline of a timeout given at `now` (Unix seconds); none means the default, more than
/// the cap is the cap.
pub fn end_at(now: i64, timeout_s: Option<u64>) -> i64 {
    let t = timeout_s.unwrap_or(DEFAULT_TIMEOUT_S).min(MAX_TIMEOUT_S);
    now.saturating_add(i64::try_from(t).unwrap_or(i64::MAX))
}

/// What the deadline does to a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Not yet, or nothing to do.
    Nothing,
    /// Destroy it.
    Destroy,
    /// Pause it (cold stop).
    Pause,
}

/// The decision at `now` for a sandbox with deadline `end_at`. A paused sandbox has no running
/// timeout (E2B keeps paused sandboxes until they are killed or resumed; `connect` gives it a
/// new deadline).
pub fn decide(now: i64, end_at: i64, auto_pause: bool, paused: bool) -> Action {
    match (now >= end_at, auto_pause, paused) {
        (false, _, _) | (true, _, true) => Action::Nothing,
        (true, false, false) => Action::Destroy,
        (true, true, false) => Action::Pause,
    }
}

/// The task: runs until aborted.
pub async fn run(state: E2bState) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = once(&state).await {
            tracing::warn!("e2b deadlines: {e}");
        }
    }
}

/// E2B's pause (the pause route's and the timeout's): bhatti's cold stop, marked stopped by its
/// user, which is what makes its E2B state `paused`. A sandbox the thermal manager had made cold
/// already is only marked.
pub async fn pause(
    app: &crate::state::AppState,
    sandbox: store::Sandbox,
) -> Result<(), crate::error::ApiError> {
    let row = crate::lifecycle::stop(app, sandbox).await?;
    if !row.user_stopped {
        let change = store::Change { user_stopped: Some(true), ..Default::default() };
        app.store.write(move |s| s.update_sandbox(&row.id, &change)).await?;
    }
    Ok(())
}

/// One look: every due sandbox gets its action; one that fails is logged and tried again at the
/// next tick, the others go on.
async fn once(state: &E2bState) -> Result<(), crate::error::ApiError> {
    let now = store::Timestamp::now().0 / 1000;
    let due = state.app.store.read(move |s| s.e2b_sandboxes_due(now)).await?;
    for e in due {
        let sid = e.sandbox_id.clone();
        let sandbox = match state.app.store.read(move |s| s.sandbox_by_id(&sid)).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let id = sandbox.id.clone();
        let done = match decide(now, e.end_at, e.auto_pause, sandbox.user_stopped) {
            Action::Nothing => Ok(()),
            Action::Destroy => {
                tracing::info!(sandbox = %id, "e2b timeout: destroying");
                let done = crate::lifecycle::destroy(&state.app, &sandbox).await;
                if done.is_ok() {
                    state.procs.forget_sandbox(&id);
                }
                done
            }
            Action::Pause => {
                tracing::info!(sandbox = %id, "e2b timeout: pausing (autoPause)");
                pause(&state.app, sandbox).await
            }
        };
        if let Err(err) = done {
            tracing::warn!(sandbox = %id, "e2b timeout: {err}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_table() {
        let rows = [
            ("before the deadline", 10, 20, false, false, Action::Nothing),
            ("before, auto-pause", 10, 20, true, false, Action::Nothing),
            ("at the deadline", 20, 20, false, false, Action::Destroy),
            ("past, destroy", 30, 20, false, false, Action::Destroy),
            ("past, paused by its user, no auto-pause", 30, 20, false, true, Action::Nothing),
            ("past, auto-pause", 30, 20, true, false, Action::Pause),
            ("past, auto-pause, paused already", 30, 20, true, true, Action::Nothing),
        ];
        for (name, now, end, auto_pause, paused, want) in rows {
            assert_eq!(decide(now, end, auto_pause, paused), want, "{name}");
        }
    }

    #[test]
    fn deadlines_table() {
        assert_eq!(end_at(100, None), 400);
        assert_eq!(end_at(100, Some(5)), 105);
        assert_eq!(end_at(100, Some(10 * 86_400)), 100 + 86_400);
        assert_eq!(end_at(i64::MAX - 1, Some(10)), i64::MAX);
    }
}
