//! Engine errors.

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An external tool (mkfs.ext4, ip, qemu-img) failed.
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
    /// The guest's agent never answered.
    #[error("the guest agent did not become ready; console:\n{console}")]
    NotReady {
        /// Why the last probe failed.
        #[source]
        source: agent::AgentError,
        /// The guest's serial console.
        console: String,
    },
    /// No sandbox by that name.
    #[error("sandbox {0:?} not found")]
    NotFound(String),
    /// The request was refused (bad name, duplicate, pool exhausted, shutting down).
    #[error("{0}")]
    Refused(String),
    /// The sandbox's QEMU ended on its own (killed, crashed).
    #[error(
        "sandbox {name:?} stopped unexpectedly ({reason}); start it again to boot from its disk"
    )]
    Crashed {
        /// Sandbox.
        name: String,
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
    /// A pause or stop found guest operations still running after its wait.
    #[error("sandbox {name:?} is busy: {in_flight} operation(s) in flight")]
    Busy {
        /// Sandbox.
        name: String,
        /// Operations still running.
        in_flight: usize,
    },
    /// The guest agent failed an operation.
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    /// File IO failed.
    #[error("engine IO: {0}")]
    Io(#[from] std::io::Error),
}
