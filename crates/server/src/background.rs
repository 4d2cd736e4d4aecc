//! What the daemon's background loops share: a ticker and the shutdown signal.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// A ticker every `period` (at least 10 ms: a zero period would panic, and nothing needs a
/// faster pace); a tick missed while the loop was busy is delayed, not bunched.
pub(crate) fn ticker(period: Duration) -> Interval {
    let mut ticker = tokio::time::interval(period.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// Resolves once `shutdown` is true or its sender is gone.
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender went: as good as a shutdown.
    let _ = shutdown.wait_for(|stop| *stop).await;
}
