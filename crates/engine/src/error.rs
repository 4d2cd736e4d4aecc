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
    /// File IO failed.
    #[error("engine IO failed")]
    Io(#[from] std::io::Error),
}
