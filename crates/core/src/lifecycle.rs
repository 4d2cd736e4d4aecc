//! The lifecycle transition table: what a `stop`, `start` or `destroy` of a sandbox does, given
//! its stored status and the engine's thermal state.
//!
//! The server's lifecycle service asks [`plan`] first, then writes the [`Intent`] before the
//! engine's side effect and the resulting status after it, so a daemon killed in between
//! leaves a row recovery recognises.

use crate::status::Status;
use crate::thermal::Thermal;

/// What a transition is about to do (written before the side effect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intent {
    /// Build the VM of a new row.
    Create,
    /// Boot or restore a stopped sandbox.
    Start,
    /// Save a sandbox to disk (cold) or shut it down.
    Stop,
    /// Pause the vCPUs (warm).
    Pause,
    /// Wake a warm or cold sandbox.
    Wake,
    /// Capture a named checkpoint.
    Checkpoint,
    /// Destroy the VM and its files.
    Destroy,
}

impl Intent {
    /// Every intent.
    pub const ALL: [Intent; 7] = [
        Intent::Create,
        Intent::Start,
        Intent::Stop,
        Intent::Pause,
        Intent::Wake,
        Intent::Checkpoint,
        Intent::Destroy,
    ];

    /// Stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Create => "create",
            Intent::Start => "start",
            Intent::Stop => "stop",
            Intent::Pause => "pause",
            Intent::Wake => "wake",
            Intent::Checkpoint => "checkpoint",
            Intent::Destroy => "destroy",
        }
    }

    /// Parses stored text.
    pub fn parse(s: &str) -> Option<Self> {
        Intent::ALL.into_iter().find(|i| i.as_str() == s)
    }
}

/// A lifecycle operation a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Suspend to disk.
    Stop,
    /// Wake from disk; `force` boots from the disk overlay, discarding saved memory.
    Start {
        /// Boot from disk even if memory is saved (or the VM is running).
        force: bool,
    },
    /// Destroy the VM and its files; also cancels a create in flight.
    Destroy,
}

/// Why an operation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The sandbox is still being created (only `destroy` may interrupt a create).
    Creating,
    /// Destroyed already.
    Gone,
    /// The engine does not have the sandbox (recovery could not restore it): only `destroy`
    /// helps.
    Lost,
    /// Its user stopped it: guest operations wait for a `start` (as v1 and `docker exec`).
    NotRunning,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// It already is as asked: answer with the row as it is (idempotent).
    AlreadyDone,
    /// Write `intent`, call the engine, then write `then` (or undo on failure).
    Run {
        /// The intent written first.
        intent: Intent,
        /// The status written when the engine succeeded.
        then: Status,
    },
    /// Refuse.
    Refuse(Refusal),
}

/// The transition table. `thermal` is `None` when the engine does not have the sandbox.
pub fn plan(op: Op, status: Status, thermal: Option<Thermal>) -> Plan {
    use Status as S;
    use Thermal as T;
    if status == S::Destroyed {
        return Plan::Refuse(Refusal::Gone);
    }
    if op == Op::Destroy {
        // At any point, a create in flight included: the engine cancels it.
        return Plan::Run { intent: Intent::Destroy, then: S::Destroyed };
    }
    if status == S::Creating {
        return Plan::Refuse(Refusal::Creating);
    }
    let Some(thermal) = thermal else { return Plan::Refuse(Refusal::Lost) };
    match (op, status, thermal) {
        (Op::Stop, S::Stopped, T::Cold) => Plan::AlreadyDone,
        (Op::Stop, _, _) => Plan::Run { intent: Intent::Stop, then: S::Stopped },
        (Op::Start { force: false }, _, T::Hot | T::Warm) => Plan::AlreadyDone,
        (Op::Start { .. }, _, _) => Plan::Run { intent: Intent::Start, then: S::Running },
        (Op::Destroy, _, _) => Plan::Run { intent: Intent::Destroy, then: S::Destroyed },
    }
}

/// Whether a guest operation (exec, files, a shell, the proxy) may run on a sandbox: it wakes a
/// sandbox the thermal manager (or a daemon shutdown) put to sleep, transparently, but not one
/// its user stopped, which stays stopped until `start` (or keep-hot) wakes it.
pub fn guest_access(
    status: Status,
    user_stopped: bool,
    thermal: Option<Thermal>,
) -> Result<(), Refusal> {
    match (status, thermal) {
        (Status::Destroyed, _) => Err(Refusal::Gone),
        (Status::Creating, _) => Err(Refusal::Creating),
        (_, None) => Err(Refusal::Lost),
        (_, Some(t)) if user_stopped && !t.is_alive() => Err(Refusal::NotRunning),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status as S;
    use Thermal as T;

    const STOP: Plan = Plan::Run { intent: Intent::Stop, then: S::Stopped };
    const START: Plan = Plan::Run { intent: Intent::Start, then: S::Running };
    const DESTROY: Plan = Plan::Run { intent: Intent::Destroy, then: S::Destroyed };
    const FORCE: Op = Op::Start { force: true };
    const PLAIN: Op = Op::Start { force: false };

    #[test]
    fn transition_table() {
        let table: [(&str, Op, S, Option<T>, Plan); 24] = [
            ("stop a hot sandbox", Op::Stop, S::Running, Some(T::Hot), STOP),
            ("stop a paused sandbox", Op::Stop, S::Running, Some(T::Warm), STOP),
            (
                "stop a stopped sandbox: as it is",
                Op::Stop,
                S::Stopped,
                Some(T::Cold),
                Plan::AlreadyDone,
            ),
            (
                "stop when the row is behind a cold engine",
                Op::Stop,
                S::Running,
                Some(T::Cold),
                STOP,
            ),
            ("stop one the thermal manager gave up on", Op::Stop, S::Unknown, Some(T::Warm), STOP),
            ("stop a crashed one: the engine answers", Op::Stop, S::Unknown, Some(T::Failed), STOP),
            (
                "stop while creating",
                Op::Stop,
                S::Creating,
                Some(T::Hot),
                Plan::Refuse(Refusal::Creating),
            ),
            (
                "stop before the engine has it",
                Op::Stop,
                S::Creating,
                None,
                Plan::Refuse(Refusal::Creating),
            ),
            ("stop a destroyed row", Op::Stop, S::Destroyed, None, Plan::Refuse(Refusal::Gone)),
            ("stop one the engine lost", Op::Stop, S::Unknown, None, Plan::Refuse(Refusal::Lost)),
            ("start a stopped sandbox", PLAIN, S::Stopped, Some(T::Cold), START),
            (
                "start a running sandbox: as it is",
                PLAIN,
                S::Running,
                Some(T::Hot),
                Plan::AlreadyDone,
            ),
            (
                "start a paused sandbox: as it is",
                PLAIN,
                S::Running,
                Some(T::Warm),
                Plan::AlreadyDone,
            ),
            ("start a crashed sandbox boots its disk", PLAIN, S::Unknown, Some(T::Failed), START),
            ("force-start a running sandbox", FORCE, S::Running, Some(T::Hot), START),
            ("force-start a stopped sandbox", FORCE, S::Stopped, Some(T::Cold), START),
            ("start while creating", PLAIN, S::Creating, None, Plan::Refuse(Refusal::Creating)),
            (
                "start a destroyed row",
                FORCE,
                S::Destroyed,
                Some(T::Cold),
                Plan::Refuse(Refusal::Gone),
            ),
            ("start one the engine lost", PLAIN, S::Stopped, None, Plan::Refuse(Refusal::Lost)),
            ("destroy a running sandbox", Op::Destroy, S::Running, Some(T::Hot), DESTROY),
            ("destroy a stopped sandbox", Op::Destroy, S::Stopped, Some(T::Cold), DESTROY),
            ("destroy cancels a create in flight", Op::Destroy, S::Creating, None, DESTROY),
            ("destroy one the engine lost: rows only", Op::Destroy, S::Unknown, None, DESTROY),
            (
                "destroy a destroyed row",
                Op::Destroy,
                S::Destroyed,
                None,
                Plan::Refuse(Refusal::Gone),
            ),
        ];
        for (name, op, status, thermal, want) in table {
            assert_eq!(plan(op, status, thermal), want, "{name}");
        }
    }

    #[test]
    fn guest_access_table() {
        use Refusal as R;
        /// (name, status, stopped by its user, thermal, access).
        type Row = (&'static str, S, bool, Option<T>, Result<(), Refusal>);
        let table: [Row; 12] = [
            ("hot", S::Running, false, Some(T::Hot), Ok(())),
            ("paused by the thermal manager: wakes", S::Running, false, Some(T::Warm), Ok(())),
            ("put to sleep on disk: wakes", S::Stopped, false, Some(T::Cold), Ok(())),
            ("stopped by its user: refused", S::Stopped, true, Some(T::Cold), Err(R::NotRunning)),
            (
                "user-stopped, QEMU gone after a crash",
                S::Unknown,
                true,
                Some(T::Failed),
                Err(R::NotRunning),
            ),
            (
                "crashed, not stopped by the user: the engine answers",
                S::Unknown,
                false,
                Some(T::Failed),
                Ok(()),
            ),
            ("user-stopped but woken meanwhile", S::Running, true, Some(T::Hot), Ok(())),
            ("user-stopped, woken then paused", S::Running, true, Some(T::Warm), Ok(())),
            ("being created", S::Creating, false, None, Err(R::Creating)),
            ("being created, engine has it", S::Creating, false, Some(T::Hot), Err(R::Creating)),
            ("destroyed", S::Destroyed, false, Some(T::Hot), Err(R::Gone)),
            ("lost by the engine", S::Running, false, None, Err(R::Lost)),
        ];
        for (name, status, user_stopped, thermal, want) in table {
            assert_eq!(guest_access(status, user_stopped, thermal), want, "{name}");
        }
    }

    #[test]
    fn intents_round_trip() {
        for i in Intent::ALL {
            assert_eq!(Intent::parse(i.as_str()), Some(i));
        }
        assert_eq!(Intent::parse("resume"), None);
    }
}
