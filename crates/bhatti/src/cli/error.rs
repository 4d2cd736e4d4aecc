//! What can go wrong talking to the daemon, and the exit code each failure gets.

/// Exit codes (documented in the README).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The daemon refused or failed the request (any other API error), or a local failure.
    pub const FAILURE: u8 = 1;
    /// Bad usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// The sandbox, file, user or route does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// The daemon could not be reached.
    pub const UNREACHABLE: u8 = 4;
    /// The key was missing or refused.
    pub const AUTH: u8 = 5;
}

/// A failure with a meaning for the exit code; everything else is exit 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error body: shown as `<status>: <error>`.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The body's `error`, or the raw body when it was not the JSON error shape.
        message: String,
    },
    /// No connection to the daemon.
    #[error("cannot reach the daemon at {url}")]
    Unreachable {
        /// Where we tried (never carries a token).
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something local does not exist (a user in the store, a local file).
    #[error("{0}")]
    NotFound(String),
    /// A usage error found after parsing (e.g. a malformed `KEY=VAL`).
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The exit code of this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { status: 404, .. } | CliError::NotFound(_) => exit::NOT_FOUND,
            CliError::Api { status: 401, .. } => exit::AUTH,
            CliError::Api { .. } => exit::FAILURE,
            CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::Usage(_) => exit::USAGE,
        }
    }

    /// A hint for a known failure, printed on its own line.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CliError::Api { status: 404, .. } => Some("`bhatti ls` lists your sandboxes"),
            CliError::Api { status: 401, .. } => Some(
                "set the key with --token, BHATTI_TOKEN or auth_token in ~/.bhatti/config.yaml",
            ),
            CliError::Api { message, .. } if message.contains("--force") => {
                Some("try `bhatti start --force <sandbox>` (boots from the disk)")
            }
            CliError::Api { message, .. } if message.contains("limit") => {
                Some("destroy sandboxes you no longer use (`bhatti ls`, `bhatti rm`)")
            }
            CliError::Unreachable { .. } => {
                Some("is `bhatti serve` running? Set the address with --url or BHATTI_URL")
            }
            _ => None,
        }
    }
}

/// The exit code for any error: a `CliError` anywhere in the chain decides, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain().find_map(|c| c.downcast_ref::<CliError>()).map_or(exit::FAILURE, CliError::exit_code)
}

/// The hint for any error, if one is known.
pub fn hint(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|c| c.downcast_ref::<CliError>()).and_then(CliError::hint)
}
