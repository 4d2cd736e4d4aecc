//! Why a forward could not be made: its own module, so the error map (`error.rs`) needs
//! nothing of the forwards themselves (which depend on authentication, which depends on the
//! error map).

/// Why a forward could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The host port is taken (409).
    #[error("host port {0} is already in use on the daemon's host")]
    PortInUse(u16),
    /// Too many forwards (429).
    #[error("at most {max} forwards {scope}")]
    Limit {
        /// The bound reached.
        max: usize,
        /// `per sandbox` or `in all`.
        scope: &'static str,
    },
    /// Binding failed otherwise.
    #[error("binding 127.0.0.1:{port}: {source}")]
    Bind {
        /// The port asked for.
        port: u16,
        /// The cause.
        source: std::io::Error,
    },
}
