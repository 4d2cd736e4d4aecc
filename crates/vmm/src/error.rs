//! Errors of the VMM layer.

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong starting or driving QEMU.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The QEMU binary could not be started.
    #[error("cannot start {binary}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited before its QMP socket accepted a connection.
    #[error("QEMU exited during start-up ({status}); its output: {output}")]
    EarlyExit {
        /// Exit status.
        status: String,
        /// Last lines QEMU printed.
        output: String,
    },
    /// An operation did not finish in time.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation.
        op: String,
        /// The deadline.
        after: Duration,
    },
    /// The QMP connection is gone (QEMU exited or was killed).
    #[error("QEMU is gone: the QMP connection closed")]
    QemuGone,
    /// QEMU answered a QMP command with an error.
    #[error("QMP {command} failed: {class}: {desc}")]
    Qmp {
        /// The command.
        command: String,
        /// QMP error class, e.g. `GenericError`.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// QEMU sent something that is not QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// The requested accelerator is not usable here.
    #[error("accelerator {0} is not available on this host")]
    AccelUnavailable(&'static str),
    /// A file the VM needs is missing.
    #[error("{what} not found at {path}")]
    Missing {
        /// What it is.
        what: &'static str,
        /// Where we looked.
        path: PathBuf,
    },
    /// QEMU's QMP socket did not take a connection (not listening yet, or QEMU is gone).
    #[error("connecting to QMP at {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The jail could not be built (a bound path is missing, or confining the child failed).
    #[error("confining QEMU")]
    Jail(#[source] std::io::Error),
    /// IO with QEMU failed: its process (wait, kill) or its QMP socket.
    #[error("IO with QEMU (its process or QMP socket)")]
    Io(#[from] std::io::Error),
}
