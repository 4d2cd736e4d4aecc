//! The store's status of a sandbox, and the one rule that brings it in step with the engine's
//! thermal state.

use crate::thermal::Thermal;

/// The store's status of a sandbox (what a client sees; the thermal state is separate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The row exists, the engine is building the VM (the name is already taken).
    Creating,
    /// The VM exists and is hot or warm.
    Running,
    /// The VM is cold (its state on disk) or shut down.
    Stopped,
    /// The VM's state is lost or unknowable (a crash, a sandbox the thermal manager gave up on).
    Unknown,
    /// Destroyed; the row is kept only until deleted, its name is free again.
    Destroyed,
}

impl Status {
    /// Every status, for tables and tests.
    pub const ALL: [Status; 5] =
        [Status::Creating, Status::Running, Status::Stopped, Status::Unknown, Status::Destroyed];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Unknown => "unknown",
            Status::Destroyed => "destroyed",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status a client sees for a row whose VM the engine reports in `thermal`.
///
/// A row being created or destroyed belongs to the route doing it and keeps its status. A
/// sandbox the thermal manager gave up on (`unknown`, left warm after its stops failed) stays
/// `unknown` until it is used again (a wake makes it hot); it must not turn `running` because
/// somebody looked at it.
pub fn observed(stored: Status, thermal: Thermal) -> Status {
    use Status as S;
    use Thermal as T;
    match (stored, thermal) {
        (S::Creating | S::Destroyed, _) => stored,
        (S::Unknown, T::Warm) => S::Unknown,
        (_, T::Hot | T::Warm) => S::Running,
        (_, T::Cold) => S::Stopped,
        (_, T::Failed) => S::Unknown,
    }
}

/// [`observed`] as a change to write: `None` when the row is already right.
pub fn change(stored: Status, thermal: Thermal) -> Option<Status> {
    let want = observed(stored, thermal);
    (want != stored).then_some(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status as S;
    use Thermal as T;

    /// Every (stored, thermal) pair, by name.
    #[test]
    fn observed_status_table() {
        let table: [(&str, S, T, S); 20] = [
            ("creating stays creating while hot", S::Creating, T::Hot, S::Creating),
            ("creating stays creating while warm", S::Creating, T::Warm, S::Creating),
            ("creating stays creating while cold", S::Creating, T::Cold, S::Creating),
            ("creating stays creating when failed", S::Creating, T::Failed, S::Creating),
            ("running and hot", S::Running, T::Hot, S::Running),
            ("running and paused is still running", S::Running, T::Warm, S::Running),
            ("running, gone cold: stopped", S::Running, T::Cold, S::Stopped),
            ("running, QEMU died: unknown", S::Running, T::Failed, S::Unknown),
            ("stopped, woken: running", S::Stopped, T::Hot, S::Running),
            ("stopped, woken then paused: running", S::Stopped, T::Warm, S::Running),
            ("stopped and cold", S::Stopped, T::Cold, S::Stopped),
            ("stopped, QEMU died on start: unknown", S::Stopped, T::Failed, S::Unknown),
            ("given up on, used again: running", S::Unknown, T::Hot, S::Running),
            ("given up on while warm stays unknown", S::Unknown, T::Warm, S::Unknown),
            ("unknown, later stopped: stopped", S::Unknown, T::Cold, S::Stopped),
            ("unknown and failed", S::Unknown, T::Failed, S::Unknown),
            ("destroyed stays destroyed while hot", S::Destroyed, T::Hot, S::Destroyed),
            ("destroyed stays destroyed while warm", S::Destroyed, T::Warm, S::Destroyed),
            ("destroyed stays destroyed while cold", S::Destroyed, T::Cold, S::Destroyed),
            ("destroyed stays destroyed when failed", S::Destroyed, T::Failed, S::Destroyed),
        ];
        for (name, stored, thermal, want) in table {
            assert_eq!(observed(stored, thermal), want, "{name}");
            assert_eq!(change(stored, thermal), (want != stored).then_some(want), "{name}");
        }
    }

    #[test]
    fn text_round_trips() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("hot"), None);
    }
}
