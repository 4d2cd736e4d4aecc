//! Engine errors: each says what happened in terms a caller can act on, and [`EngineError::kind`]
//! gives it a stable kind that the server maps to a status code in one place. Messages name
//! sandboxes, volumes and checkpoints by the caller's names, never by host paths.

use crate::thermal::Thermal;

/// Why a sandbox's leases were cut: what its guest operations (streams, sessions, transfers)
/// are told when they end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoneReason {
    /// Its QEMU ended on its own (killed, crashed, an owner task that failed): what was said.
    Crashed(String),
    /// It was destroyed.
    Destroyed,
    /// A user stopped it (its memory is saved; the next use wakes it).
    Stopped,
    /// The daemon is shutting down (the sandbox is suspended to disk).
    ShuttingDown,
}

impl GoneReason {
    /// A few words for where space is short (a WebSocket close frame's reason, 123 bytes).
    pub fn short(&self) -> &'static str {
        match self {
            GoneReason::Crashed(_) => "sandbox crashed",
            GoneReason::Destroyed => "sandbox destroyed",
            GoneReason::Stopped => "sandbox stopped",
            GoneReason::ShuttingDown => "daemon shutting down",
        }
    }
}

impl std::fmt::Display for GoneReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GoneReason::Crashed(why) => write!(f, "crashed ({why})"),
            GoneReason::Destroyed => f.write_str("was destroyed"),
            GoneReason::Stopped => f.write_str("was stopped (its next use wakes it)"),
            GoneReason::ShuttingDown => f.write_str("was suspended: the daemon is shutting down"),
        }
    }
}

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
    /// The operation was cancelled: a destroy overtook a create.
    Cancelled,
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
    /// The sandbox went away under a running operation (crashed, destroyed, stopped by a
    /// user, the daemon shutting down): the operation was cut.
    Gone,
    /// The saved state could not be restored.
    RestoreFailed,
    /// The guest agent did not answer (boot or wake failed, connection lost, deadline passed).
    Unavailable,
    /// The guest agent refused the operation.
    Guest(GuestErrorKind),
    /// A disk could not be read (for a diff): a conflict with what is on it, not a fault.
    Unreadable,
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
            ErrorKind::Cancelled => "destroyed",
            ErrorKind::InUse => "in_use",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Busy => "busy",
            ErrorKind::Crashed => "crashed",
            ErrorKind::Gone => "gone",
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
            ErrorKind::Unreadable => "unreadable",
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
    /// A destroy of the same sandbox cancelled its create; everything it took is back.
    #[error("sandbox {id:?} was destroyed while it was being created")]
    Cancelled {
        /// Sandbox.
        id: String,
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
    /// The sandbox went away while the operation ran: its QEMU died, it was destroyed or
    /// stopped, or the daemon shut down. Its lease was cut, so the operation ended at once
    /// instead of waiting on a guest that will not answer.
    #[error("sandbox {id:?} {reason}: the operation was cut off")]
    Gone {
        /// Sandbox.
        id: String,
        /// What happened to it.
        reason: GoneReason,
    },
    /// The saved state could not be loaded (damaged, or from an incompatible QEMU).
    #[error(
        "restoring the saved state failed; QEMU said: {stderr}; the disk is intact: start the \
         sandbox from its disk to boot it without the saved memory"
    )]
    Restore {
        /// The VMM's error.
        #[source]
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
    /// QEMU ended before the guest's agent answered (a kernel panic, an init that died).
    #[error("the guest stopped before its agent answered (QEMU {status}); console:\n{console}")]
    GuestExited {
        /// QEMU's exit status.
        status: String,
        /// The end of the guest's serial console.
        console: String,
    },
    /// The guest agent failed an operation.
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    /// An external tool (mkfs.ext4, ip, qemu-img, nft) exited with an error.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The command.
        tool: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// An external tool could not be started (not installed, not executable).
    #[error("cannot run {tool}")]
    ToolStart {
        /// The command.
        tool: String,
        /// Why.
        #[source]
        source: std::io::Error,
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
    /// A cgroup of a sandbox's QEMU could not be made, bounded or read (the error names the
    /// file).
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// QEMU's own files for its jail (binary, libraries, firmware) could not be found.
    #[error("finding QEMU's files for its jail")]
    JailHost(#[source] std::sync::Arc<std::io::Error>),
    /// The operation needs something this sandbox was not made with.
    #[error("{0}")]
    Precondition(Precondition),
    /// Something the engine writes (the guest's config) could not be encoded.
    #[error("encoding {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A sandbox's disk (or the one it is compared with) could not be read for a diff: a
    /// filesystem the reader does not know, a disk that changed while it was read.
    #[error("cannot read the disk of sandbox {id:?}: {}", .source.summary())]
    DiskUnreadable {
        /// Sandbox.
        id: String,
        /// Why (host paths only here, for the log).
        #[source]
        source: crate::diff::DiffError,
    },
    /// The VMM failed (QEMU did not start, QMP failed).
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    /// A blocking task the engine ran (file work, a process wait) panicked or was cancelled.
    #[error("an engine task failed")]
    Join(#[from] tokio::task::JoinError),
    /// File IO failed on `path`.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`reading`, `creating`, `removing`, ...).
        op: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// What an operation needs that a sandbox lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Suspending to disk needs guest RAM in a file (every engine sandbox has one; only a VM
    /// booted by hand without one lacks it).
    NoMemoryFile,
}

impl std::fmt::Display for Precondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precondition::NoMemoryFile => "cannot suspend to disk: the VM has no memory file",
        })
    }
}

/// Names the path and the operation of an IO error: `fs::read(&p).map_err(io_at("reading", &p))`.
pub(crate) fn io_at(
    op: &'static str,
    path: impl AsRef<std::path::Path>,
) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.as_ref().to_owned();
    move |source| EngineError::Io { op, path, source }
}

/// An error and its causes on one line (`what failed: why: why`), for logs: the engine's errors
/// say what failed and leave the cause to [`std::error::Error::source`].
#[derive(Debug)]
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl EngineError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Invalid(_) => ErrorKind::Invalid,
            EngineError::NotFound { .. } => ErrorKind::NotFound,
            EngineError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            EngineError::WrongState { .. } => ErrorKind::WrongState,
            EngineError::Cancelled { .. } => ErrorKind::Cancelled,
            EngineError::InUse { .. } => ErrorKind::InUse,
            EngineError::Exhausted(_) => ErrorKind::Exhausted,
            EngineError::ShuttingDown => ErrorKind::ShuttingDown,
            EngineError::Busy { .. } => ErrorKind::Busy,
            EngineError::Crashed { .. } => ErrorKind::Crashed,
            EngineError::Gone { .. } => ErrorKind::Gone,
            EngineError::Restore { .. } => ErrorKind::RestoreFailed,
            EngineError::NotReady { .. } | EngineError::GuestExited { .. } => {
                ErrorKind::Unavailable
            }
            EngineError::Agent(e) => agent_kind(e),
            EngineError::DiskUnreadable { .. } => ErrorKind::Unreadable,
            EngineError::Tool { .. }
            | EngineError::ToolStart { .. }
            | EngineError::ToolTimeout { .. }
            | EngineError::Net { .. }
            | EngineError::Cgroup(_)
            | EngineError::JailHost(_)
            | EngineError::Precondition(_)
            | EngineError::Encode { .. }
            | EngineError::Vmm(_)
            | EngineError::Join(_)
            | EngineError::Io { .. } => ErrorKind::Internal,
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

    /// This error and its causes on one line, for logs.
    pub fn report(&self) -> Report<'_> {
        Report(self)
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
            ErrorKind::Gone,
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
    fn a_cause_is_printed_once_and_io_errors_name_their_path() {
        let missing = std::path::Path::new("/nonexistent/dir");
        let e = std::fs::create_dir(missing).map_err(io_at("creating", missing)).unwrap_err();
        // The message says what failed; the cause is the source, not repeated in the message.
        assert_eq!(e.to_string(), "creating /nonexistent/dir");
        let source = std::error::Error::source(&e).expect("the IO error is the source");
        assert_eq!(source.to_string(), "No such file or directory (os error 2)");
        // The chain walk, as the daemon logs it, prints each part once.
        assert_eq!(
            e.report().to_string(),
            "creating /nonexistent/dir: No such file or directory (os error 2)"
        );
        assert_eq!(e.kind(), ErrorKind::Internal);
        // Wrappers without context of their own are transparent: no "VMM: VMM ..." twice.
        let e = EngineError::from(vmm::VmmError::QemuGone);
        assert_eq!(e.report().to_string(), "QEMU is gone: the QMP connection closed");
        let e = EngineError::from(crate::cgroup::CgroupError::Remove {
            path: "/sys/fs/cgroup/memory/bhatti/x".into(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        });
        assert_eq!(
            e.report().to_string(),
            "removing /sys/fs/cgroup/memory/bhatti/x: Device or resource busy (os error 16)"
        );
        assert_eq!(e.kind(), ErrorKind::Internal);
    }

    #[test]
    fn every_error_walks_its_chain_without_repeating_a_cause() {
        // No message contains the text of its own source (each cause printed once).
        let errors = [
            EngineError::Restore {
                source: vmm::VmmError::Protocol("bad stream".into()),
                stderr: "Not a migration stream".into(),
            },
            EngineError::ToolStart {
                tool: "mkfs.ext4".into(),
                source: std::io::Error::other("enoent"),
            },
            EngineError::Net { op: "adding a TAP".into(), source: std::io::Error::other("eperm") },
            EngineError::JailHost(std::sync::Arc::new(std::io::Error::other("no ldd"))),
            EngineError::Vmm(vmm::VmmError::Jail(std::io::Error::other("pivot_root"))),
            EngineError::Vmm(vmm::VmmError::Io(std::io::Error::other("broken pipe"))),
        ];
        for e in errors {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                assert!(!message.contains(&cause.to_string()), "{message:?} repeats {cause:?}");
                message = cause.to_string();
                source = cause.source();
            }
        }
        let e = EngineError::Precondition(Precondition::NoMemoryFile);
        assert_eq!(e.to_string(), "cannot suspend to disk: the VM has no memory file");
        assert_eq!(e.kind(), ErrorKind::Internal);
    }

    #[test]
    fn messages_name_things_by_the_callers_names() {
        let e = EngineError::not_found(Resource::Volume, "data");
        assert_eq!(e.to_string(), r#"volume "data" not found"#);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = EngineError::WrongState { id: "a1".into(), thermal: Thermal::Cold, op: "pause" };
        assert_eq!(e.to_string(), r#"sandbox "a1" is cold: cannot pause"#);
        assert_eq!(e.kind(), ErrorKind::WrongState);
        let e = EngineError::Gone { id: "a1".into(), reason: GoneReason::Destroyed };
        assert_eq!(e.to_string(), r#"sandbox "a1" was destroyed: the operation was cut off"#);
        assert_eq!(e.kind(), ErrorKind::Gone);
        let e = EngineError::Gone { id: "a1".into(), reason: GoneReason::Crashed("killed".into()) };
        assert_eq!(e.to_string(), r#"sandbox "a1" crashed (killed): the operation was cut off"#);
    }
}
