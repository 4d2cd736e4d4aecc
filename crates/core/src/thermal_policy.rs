//! The thermal manager's decisions (host.md section 3): when an idle sandbox is paused (hot ->
//! warm) and when a paused one is suspended to disk (warm -> cold).
//!
//! Two pure steps. [`decide`] runs every tick on the host's view alone (never waiting for a
//! guest): leave the sandbox, ask its agent how idle it is, or stop it. [`pause_verdict`] runs
//! once the agent answered (or did not): pause now, or not yet. The manager in the server does
//! the IO around them and keeps the counters they read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::status::Status;
use crate::thermal::Thermal;

/// Failed stops in a row after which a sandbox is marked `unknown` (v1).
pub const MAX_STOP_FAILURES: u32 = 3;
/// Evaluations in a row without an answer from the agent after which the host's view decides
/// alone (v1's force-pause).
pub const AGENT_SILENCE_LIMIT: u32 = 10;

/// What the store says about a sandbox, as the manager reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Stored status (only `running` rows are managed).
    pub status: Status,
    /// Never cooled.
    pub keep_hot: bool,
    /// Idle time after which a hot sandbox is paused.
    pub warm_after: Duration,
    /// Time warm after which a paused sandbox goes to disk.
    pub cold_after: Duration,
}

/// The engine's host-side view of a sandbox, read without waking or waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Thermal state now.
    pub thermal: Thermal,
    /// Guest operations holding a lease.
    pub in_flight: usize,
    /// The last time a lease was taken or given back.
    pub last_host_activity: SystemTime,
    /// How long it has been warm (counted from the pause, never from the last user activity:
    /// v1's bug was counting the cold timer from the latter). `None` when not warm.
    pub warm_for: Option<Duration>,
}

/// What went wrong before, as the manager counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failures {
    /// Failed stops in a row.
    pub stops: u32,
    /// Evaluations in a row the agent did not answer.
    pub agent_silence: u32,
}

/// What the manager does with one sandbox this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Not the manager's: not running, or kept hot. Its counters are forgotten.
    Unmanaged,
    /// Managed, nothing to do now (in use, not idle long enough).
    Wait,
    /// The engine is ahead of the row (cold or failed): the events task brings the row in step.
    Behind,
    /// Hot and idle on the host's view: ask the agent, then [`pause_verdict`].
    CheckIdle {
        /// Evaluations in a row the agent has not answered so far.
        agent_silence: u32,
    },
    /// Warm for long enough: suspend to disk.
    Stop {
        /// This stop's number in a row of failures (1 for the first try).
        attempt: u32,
    },
}

/// The tick's decision for one sandbox.
pub fn decide(row: &Row, activity: &Activity, now: SystemTime, failures: Failures) -> Action {
    if row.status != Status::Running || row.keep_hot {
        return Action::Unmanaged;
    }
    match activity.thermal {
        Thermal::Hot => {
            let idle = idle_since(now, activity.last_host_activity, None);
            if activity.in_flight > 0 || idle < row.warm_after {
                return Action::Wait;
            }
            Action::CheckIdle { agent_silence: failures.agent_silence }
        }
        Thermal::Warm => {
            let warm_for = activity.warm_for.unwrap_or(Duration::ZERO);
            if activity.in_flight > 0 || warm_for < row.cold_after {
                return Action::Wait;
            }
            Action::Stop { attempt: failures.stops.saturating_add(1) }
        }
        Thermal::Cold | Thermal::Failed => Action::Behind,
    }
}

/// The agent's own view of its use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentView {
    /// Unix seconds of the guest's last activity (0: nothing since boot).
    pub last_activity_unix: i64,
    /// Sessions with a client attached.
    pub attached_sessions: u32,
}

/// What the manager does once it asked the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseVerdict {
    /// Not hot any more, or an operation started meanwhile: not now, not a failure.
    Skip,
    /// In use (a session attached, or activity newer than `warm_after`).
    Active,
    /// The agent did not answer; counted, and decided on the host's view once the count
    /// reaches [`AGENT_SILENCE_LIMIT`].
    AgentSilent,
    /// Pause it; it was idle this long.
    Pause {
        /// Idle time.
        idle: Duration,
        /// Decided on the host's view alone because the agent stayed silent.
        agent_silent: bool,
    },
}

/// Whether to pause a sandbox, given the host's fresh view and the agent's answer (`None`: it
/// did not answer in time). `agent_silence` is the count before this evaluation.
pub fn pause_verdict(
    activity: &Activity,
    agent: Option<AgentView>,
    now: SystemTime,
    warm_after: Duration,
    agent_silence: u32,
) -> PauseVerdict {
    if activity.thermal != Thermal::Hot || activity.in_flight > 0 {
        return PauseVerdict::Skip;
    }
    let (idle, agent_silent) = match agent {
        Some(agent) if agent.attached_sessions > 0 => return PauseVerdict::Active,
        Some(agent) => (idle_since(now, activity.last_host_activity, Some(agent)), false),
        None if agent_silence.saturating_add(1) < AGENT_SILENCE_LIMIT => {
            return PauseVerdict::AgentSilent;
        }
        None => (idle_since(now, activity.last_host_activity, None), true),
    };
    if idle < warm_after {
        return PauseVerdict::Active;
    }
    PauseVerdict::Pause { idle, agent_silent }
}

/// Whether the `attempt`-th failed stop in a row gives the sandbox up (marked `unknown`).
pub fn gives_up(attempt: u32) -> bool {
    attempt >= MAX_STOP_FAILURES
}

/// How long since the newer of the host's and the agent's last activity. A guest clock ahead
/// of the host's counts as now; "nothing since boot" (0) is no view.
pub fn idle_since(now: SystemTime, host: SystemTime, agent: Option<AgentView>) -> Duration {
    let agent = agent
        .and_then(|a| u64::try_from(a.last_activity_unix).ok())
        .filter(|&secs| secs > 0)
        .map(|secs| (UNIX_EPOCH + Duration::from_secs(secs)).min(now));
    let last = agent.map_or(host, |a| a.max(host));
    now.duration_since(last).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARM_AFTER: Duration = Duration::from_secs(60);
    const COLD_AFTER: Duration = Duration::from_secs(600);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn row(status: Status, keep_hot: bool) -> Row {
        Row { status, keep_hot, warm_after: WARM_AFTER, cold_after: COLD_AFTER }
    }

    fn seen(thermal: Thermal, in_flight: usize, last: u64, warm_for: Option<u64>) -> Activity {
        Activity {
            thermal,
            in_flight,
            last_host_activity: at(last),
            warm_for: warm_for.map(Duration::from_secs),
        }
    }

    #[test]
    fn decide_table() {
        use Action as A;
        use Status as S;
        use Thermal as T;
        let now = at(10_000);
        let none = Failures::default();
        let failed_twice = Failures { stops: 2, agent_silence: 4 };
        let table: [(&str, Row, Activity, Failures, Action); 14] = [
            (
                "stopped rows are not managed",
                row(S::Stopped, false),
                seen(T::Cold, 0, 0, None),
                none,
                A::Unmanaged,
            ),
            (
                "creating rows are not managed",
                row(S::Creating, false),
                seen(T::Hot, 0, 0, None),
                none,
                A::Unmanaged,
            ),
            (
                "unknown rows (given up) are not managed",
                row(S::Unknown, false),
                seen(T::Warm, 0, 0, Some(9_999)),
                none,
                A::Unmanaged,
            ),
            (
                "destroyed rows are not managed",
                row(S::Destroyed, false),
                seen(T::Hot, 0, 0, None),
                none,
                A::Unmanaged,
            ),
            (
                "keep-hot is never cooled",
                row(S::Running, true),
                seen(T::Hot, 0, 0, None),
                none,
                A::Unmanaged,
            ),
            (
                "hot with a lease out waits",
                row(S::Running, false),
                seen(T::Hot, 1, 0, None),
                none,
                A::Wait,
            ),
            (
                "hot, used 59 s ago, waits",
                row(S::Running, false),
                seen(T::Hot, 0, 9_941, None),
                none,
                A::Wait,
            ),
            (
                "hot, idle 60 s: ask the agent",
                row(S::Running, false),
                seen(T::Hot, 0, 9_940, None),
                none,
                A::CheckIdle { agent_silence: 0 },
            ),
            (
                "the agent's silence so far goes along",
                row(S::Running, false),
                seen(T::Hot, 0, 0, None),
                failed_twice,
                A::CheckIdle { agent_silence: 4 },
            ),
            (
                "warm with a lease out waits",
                row(S::Running, false),
                seen(T::Warm, 1, 0, Some(9_999)),
                none,
                A::Wait,
            ),
            (
                "warm 599 s waits",
                row(S::Running, false),
                seen(T::Warm, 0, 0, Some(599)),
                none,
                A::Wait,
            ),
            (
                "warm 600 s: first stop",
                row(S::Running, false),
                seen(T::Warm, 0, 0, Some(600)),
                none,
                A::Stop { attempt: 1 },
            ),
            (
                "after two failed stops: the third",
                row(S::Running, false),
                seen(T::Warm, 0, 0, Some(600)),
                failed_twice,
                A::Stop { attempt: 3 },
            ),
            (
                "cold under a running row: behind",
                row(S::Running, false),
                seen(T::Cold, 0, 0, None),
                none,
                A::Behind,
            ),
        ];
        for (name, row, activity, failures, want) in table {
            assert_eq!(decide(&row, &activity, now, failures), want, "{name}");
        }
        let failed = seen(T::Failed, 0, 0, None);
        assert_eq!(
            decide(&row(S::Running, false), &failed, now, none),
            A::Behind,
            "failed: behind"
        );
    }

    #[test]
    fn pause_verdict_table() {
        use PauseVerdict as V;
        use Thermal as T;
        let now = at(10_000);
        let agent = |last: i64, attached: u32| {
            Some(AgentView { last_activity_unix: last, attached_sessions: attached })
        };
        let idle_host = seen(T::Hot, 0, 9_000, None);
        let table: [(&str, Activity, Option<AgentView>, u32, PauseVerdict); 9] = [
            (
                "woken meanwhile by nobody: warm already",
                seen(T::Warm, 0, 0, Some(1)),
                agent(0, 0),
                0,
                V::Skip,
            ),
            ("an operation started meanwhile", seen(T::Hot, 1, 0, None), agent(0, 0), 0, V::Skip),
            ("a session attached keeps it hot", idle_host, agent(0, 1), 0, V::Active),
            ("the guest saw activity 10 s ago", idle_host, agent(9_990, 0), 0, V::Active),
            (
                "host and guest idle: pause",
                idle_host,
                agent(8_000, 0),
                0,
                V::Pause { idle: Duration::from_secs(1_000), agent_silent: false },
            ),
            (
                "nothing since boot is no guest view",
                idle_host,
                agent(0, 0),
                0,
                V::Pause { idle: Duration::from_secs(1_000), agent_silent: false },
            ),
            ("a silent agent is counted", idle_host, None, 0, V::AgentSilent),
            (
                "the ninth silence is still counted",
                idle_host,
                None,
                AGENT_SILENCE_LIMIT - 2,
                V::AgentSilent,
            ),
            (
                "the tenth: the host's view decides",
                idle_host,
                None,
                AGENT_SILENCE_LIMIT - 1,
                V::Pause { idle: Duration::from_secs(1_000), agent_silent: true },
            ),
        ];
        for (name, activity, agent, silence, want) in table {
            assert_eq!(pause_verdict(&activity, agent, now, WARM_AFTER, silence), want, "{name}");
        }
        let recent = seen(T::Hot, 0, 9_990, None);
        assert_eq!(
            pause_verdict(&recent, None, now, WARM_AFTER, AGENT_SILENCE_LIMIT),
            V::Active,
            "a silent agent with recent host activity is not paused"
        );
    }

    #[test]
    fn gives_up_on_the_third_failed_stop() {
        let table =
            [("first", 1, false), ("second", 2, false), ("third", 3, true), ("later", 4, true)];
        for (name, attempt, want) in table {
            assert_eq!(gives_up(attempt), want, "{name}");
        }
    }

    #[test]
    fn idle_counts_from_the_newer_of_host_and_agent() {
        let now = at(1_000);
        let host = at(900);
        let agent = |last| Some(AgentView { last_activity_unix: last, attached_sessions: 0 });
        let table: [(&str, SystemTime, SystemTime, Option<AgentView>, u64); 6] = [
            ("host only", now, host, None, 100),
            ("the agent saw something later", now, host, agent(990), 10),
            ("an older agent view does not make it idler", now, host, agent(100), 100),
            ("nothing since boot is no view", now, host, agent(0), 100),
            ("a guest clock ahead counts as now", now, host, agent(5_000), 0),
            ("a host clock stepped back is not idle", host, now, None, 0),
        ];
        for (name, now, host, agent, want) in table {
            assert_eq!(idle_since(now, host, agent), Duration::from_secs(want), "{name}");
        }
    }
}
