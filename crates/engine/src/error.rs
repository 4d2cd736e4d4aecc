//! Engine errors: each says what happened in terms a caller can act on, and [`EngineError::kind`]
//! gives it a stable kind that the server maps to a status code in one place. Messages name
//! sandboxes, volumes and checkpoints by the caller's names, never by host paths.

use crate::thermal::Thermal;

/// What a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A sandbox (by its ID).
    Sandbox,
    /// A persistent volume.
    Volume,
    /// A named checkpoint.
    Checkpoint,
    /// A root filesystem image.
    Image,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::Sandbox => "sandbox",
            Resource::Volume => "volume",
            Resource::Checkpoint => "checkpoint",
            Resource::Image => "image",
        })
    }
}

/// What ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The guest address pool.
    Addresses,
    /// The volumes one sandbox may have.
    VolumeSlots,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Exhausted::Addresses => "no guest address is free",
            Exhausted::VolumeSlots => "a sandbox has at most 20 volumes",
        })
    }
}

/// What a guest-side failure was, from the agent's error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestErrorKind {
    /// No such file, directory or session.
    NotFound,
    /// The guest refused access.
    PermissionDenied,
    /// A file was expected.
    IsADirectory,
    /// A directory was expected.
    NotADirectory,
    /// The path exists already.
    AlreadyExists,
    /// The content exceeds a limit.
    TooLarge,
    /// The guest's disk is full.
    NoSpace,
    /// A session is attached elsewhere.
    Busy,
    /// Nothing listens on the forwarded guest port.
    PortClosed,
    /// The request itself was invalid (bad path, bad argument).
    Invalid,
    /// A session or connection limit of the agent.
    LimitReached,
    /// Anything else the agent reported.
    Other,
}

/// The stable kind of an [`EngineError`]; the one thing callers match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed (bad name, bad size, bad mount point, bad port).
    Invalid,
    /// The named thing does not exist.
    NotFound,
    /// The name is taken.
    AlreadyExists,
    /// The sandbox is in a state that does not allow the operation.
    WrongState,
    /// A volume is attached elsewhere.
    InUse,
    /// A pool or limit is exhausted.
    Exhausted,
    /// The engine is shutting down.
    ShuttingDown,
    /// Guest operations are in flight.
    Busy,
    /// The sandbox's VMM ended on its own.
    Crashed,
    /// The saved state could not be restored.
    RestoreFailed,
    /// The guest agent did not answer (boot or wake failed, connection lost, deadline passed).
    Unavailable,
    /// The guest agent refused the operation.
    Guest(GuestErrorKind),
    /// Anything on the host side the caller cannot fix (tools, IO, the VMM).
    Internal,
}

impl ErrorKind {
    /// A stable snake-case code (the server's `code` field).
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::WrongState => "wrong_state",
            ErrorKind::InUse => "in_use",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Busy => "busy",
            ErrorKind::Crashed => "crashed",
            ErrorKind::RestoreFailed => "restore_failed",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Guest(GuestErrorKind::NotFound) => "guest_not_found",
            ErrorKind::Guest(GuestErrorKind::PermissionDenied) => "guest_permission_denied",
            ErrorKind::Guest(GuestErrorKind::IsADirectory) => "guest_is_a_directory",
            ErrorKind::Guest(GuestErrorKind::NotADirectory) => "guest_not_a_directory",
            ErrorKind::Guest(GuestErrorKind::AlreadyExists) => "guest_already_exists",
            ErrorKind::Guest(GuestErrorKind::TooLarge) => "guest_too_large",
            ErrorKind::Guest(GuestErrorKind::NoSpace) => "guest_no_space",
            ErrorKind::Guest(GuestErrorKind::Busy) => "guest_busy",
            ErrorKind::Guest(GuestErrorKind::PortClosed) => "guest_port_closed",
            ErrorKind::Guest(GuestErrorKind::Invalid) => "guest_invalid",
            ErrorKind::Guest(GuestErrorKind::LimitReached) => "guest_limit_reached",
            ErrorKind::Guest(GuestErrorKind::Other) => "guest_error",
            ErrorKind::Internal => "internal",
        }
    }
}

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// No such sandbox, volume, checkpoint or image.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What was looked for.
        kind: Resource,
        /// The caller's name for it.
        name: String,
    },
    /// The name is taken.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What was being created.
        kind: Resource,
        /// Its name.
        name: String,
    },
    /// The sandbox's thermal state does not allow the operation.
    #[error("sandbox {id:?} is {thermal}: cannot {op}")]
    WrongState {
        /// Sandbox.
        id: String,
        /// Its state.
        thermal: Thermal,
        /// What was asked.
        op: &'static str,
    },
    /// A volume is attached to sandboxes.
    #[error("volume {name:?} is attached to {users} sandbox(es)")]
    InUse {
        /// Volume.
        name: String,
        /// How many sandboxes use it.
        users: usize,
    },
    /// A pool or limit ran out.
    #[error("{0}")]
    Exhausted(Exhausted),
    /// The engine is shutting down and starts nothing new.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A pause or stop found guest operations still running after its wait.
    #[error("sandbox {id:?} is busy: {in_flight} operation(s) in flight")]
    Busy {
        /// Sandbox.
        id: String,
        /// Operations still running.
        in_flight: usize,
    },
    /// The sandbox's QEMU ended on its own (killed, crashed, an owner task that failed).
    #[error("sandbox {id:?} stopped unexpectedly ({reason}); start it again to boot from its disk")]
    Crashed {
        /// Sandbox.
        id: String,
        /// What QEMU said.
        reason: String,
    },
    /// The saved state could not be loaded (damaged, or from an incompatible QEMU).
    #[error(
        "restoring the saved state failed ({source}); QEMU said: {stderr}; the disk is intact: \
         start the sandbox from its disk to boot it without the saved memory"
    )]
    Restore {
        /// The VMM's error.
        source: vmm::VmmError,
        /// QEMU's stderr.
        stderr: String,
    },
    /// The guest's agent never answered.
    #[error("the guest agent did not become ready; console:\n{console}")]
    NotReady {
        /// Why the last probe failed.
        #[source]
        source: agent::AgentError,
        /// The end of the guest's serial console.
        console: String,
    },
    /// The guest agent failed an operation.
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    /// An external tool (mkfs.ext4, ip, qemu-img, nft) failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// The command.
        tool: String,
        /// Its stderr or exit status.
        message: String,
    },
    /// An external tool did not finish in time.
    #[error("{tool} did not finish within {secs} s")]
    ToolTimeout {
        /// The command.
        tool: String,
        /// The deadline.
        secs: u64,
    },
    /// A network operation failed.
    #[error("network: {op}")]
    Net {
        /// What was being done.
        op: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The VMM failed (QEMU did not start, QMP failed).
    #[error("VMM: {0}")]
    Vmm(#[from] vmm::VmmError),
    /// A blocking task the engine ran (file work, a process wait) panicked or was cancelled.
    #[error("an engine task failed")]
    Join(#[from] tokio::task::JoinError),
    /// File IO failed.
    #[error("engine IO: {0}")]
    Io(#[from] std::io::Error),
}

impl EngineError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Invalid(_) => ErrorKind::Invalid,
            EngineError::NotFound { .. } => ErrorKind::NotFound,
            EngineError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            EngineError::WrongState { .. } => ErrorKind::WrongState,
            EngineError::InUse { .. } => ErrorKind::InUse,
            EngineError::Exhausted(_) => ErrorKind::Exhausted,
            EngineError::ShuttingDown => ErrorKind::ShuttingDown,
            EngineError::Busy { .. } => ErrorKind::Busy,
            EngineError::Crashed { .. } => ErrorKind::Crashed,
            EngineError::Restore { .. } => ErrorKind::RestoreFailed,
            EngineError::NotReady { .. } => ErrorKind::Unavailable,
            EngineError::Agent(e) => agent_kind(e),
            EngineError::Tool { .. }
            | EngineError::ToolTimeout { .. }
            | EngineError::Net { .. }
            | EngineError::Vmm(_)
            | EngineError::Join(_)
            | EngineError::Io(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn not_found(kind: Resource, name: impl Into<String>) -> Self {
        EngineError::NotFound { kind, name: name.into() }
    }

    pub(crate) fn exists(kind: Resource, name: impl Into<String>) -> Self {
        EngineError::AlreadyExists { kind, name: name.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        EngineError::Invalid(message.into())
    }
}

/// The kind of an agent error, from the agent client's own classification (the one place that
/// reads the guest's error texts): the guest's refusals by what they were, transport failures
/// as unavailable, broken promises of the protocol as internal.
fn agent_kind(e: &agent::AgentError) -> ErrorKind {
    use GuestErrorKind as G;
    use agent::AgentErrorKind as A;
    match e.kind() {
        A::NotFound => ErrorKind::Guest(G::NotFound),
        A::PermissionDenied => ErrorKind::Guest(G::PermissionDenied),
        A::IsADirectory => ErrorKind::Guest(G::IsADirectory),
        A::NotADirectory => ErrorKind::Guest(G::NotADirectory),
        A::AlreadyExists => ErrorKind::Guest(G::AlreadyExists),
        A::TooLarge => ErrorKind::Guest(G::TooLarge),
        A::NoSpace => ErrorKind::Guest(G::NoSpace),
        A::Invalid => ErrorKind::Guest(G::Invalid),
        A::LimitReached => ErrorKind::Guest(G::LimitReached),
        A::Busy => ErrorKind::Guest(G::Busy),
        A::ForwardRefused => ErrorKind::Guest(G::PortClosed),
        A::Unsupported | A::Other => ErrorKind::Guest(G::Other),
        A::Timeout | A::Unreachable | A::Closed | A::Io => ErrorKind::Unavailable,
        // The engine holds the token and speaks the protocol: these are our faults.
        A::Unauthenticated | A::Protocol => ErrorKind::Internal,
        // A kind the agent client learns later: a guest error until it is mapped here.
        _ => ErrorKind::Guest(G::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_code() {
        let kinds = [
            ErrorKind::Invalid,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::WrongState,
            ErrorKind::InUse,
            ErrorKind::Exhausted,
            ErrorKind::ShuttingDown,
            ErrorKind::Busy,
            ErrorKind::Crashed,
            ErrorKind::RestoreFailed,
            ErrorKind::Unavailable,
            ErrorKind::Guest(GuestErrorKind::NotFound),
            ErrorKind::Guest(GuestErrorKind::PermissionDenied),
            ErrorKind::Guest(GuestErrorKind::IsADirectory),
            ErrorKind::Guest(GuestErrorKind::NotADirectory),
            ErrorKind::Guest(GuestErrorKind::AlreadyExists),
            ErrorKind::Guest(GuestErrorKind::TooLarge),
            ErrorKind::Guest(GuestErrorKind::NoSpace),
            ErrorKind::Guest(GuestErrorKind::Busy),
            ErrorKind::Guest(GuestErrorKind::PortClosed),
            ErrorKind::Guest(GuestErrorKind::Invalid),
            ErrorKind::Guest(GuestErrorKind::LimitReached),
            ErrorKind::Guest(GuestErrorKind::Other),
            ErrorKind::Internal,
        ];
        let codes: std::collections::BTreeSet<_> = kinds.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), kinds.len());
    }

    #[test]
    fn messages_name_things_by_the_callers_names() {
        let e = EngineError::not_found(Resource::Volume, "data");
        assert_eq!(e.to_string(), r#"volume "data" not found"#);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = EngineError::WrongState { id: "a1".into(), thermal: Thermal::Cold, op: "pause" };
        assert_eq!(e.to_string(), r#"sandbox "a1" is cold: cannot pause"#);
        assert_eq!(e.kind(), ErrorKind::WrongState);
    }
}
