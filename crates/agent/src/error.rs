//! The client's error type, and the one place where the agent's error texts are classified.

use std::fmt;
use std::time::Duration;

/// What kind of failure an error is, for callers that map errors (to HTTP statuses, retries)
/// without looking at texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AgentErrorKind {
    /// A path, command or session that does not exist.
    NotFound,
    /// The guest refused the operation (permissions, a read-only or pseudo filesystem).
    PermissionDenied,
    /// A directory where a file was expected.
    IsADirectory,
    /// A file (or nothing) where a directory was expected.
    NotADirectory,
    /// The path exists already.
    AlreadyExists,
    /// More bytes than a limit allows (the agent's 100 MiB write cap, a caller's read cap).
    TooLarge,
    /// The guest's disk (or quota) is full.
    NoSpace,
    /// A malformed or impossible request (bad JSON, empty argv, negative size, not a regular
    /// file, a source shorter than announced).
    Invalid,
    /// A fixed limit of the agent is reached (50 control connections, 20 sessions).
    LimitReached,
    /// The session has a client attached and the request asked for a detached one.
    Busy,
    /// The agent does not do this (an older agent, or lohar in test mode).
    Unsupported,
    /// The agent wants a (different) token.
    Unauthenticated,
    /// The call did not finish within its deadline.
    Timeout,
    /// The agent could not be reached.
    Unreachable,
    /// The guest port of a forward refused the connection.
    ForwardRefused,
    /// The connection ended in the middle of a request.
    Closed,
    /// The agent broke the protocol.
    Protocol,
    /// Local or socket IO failed.
    Io,
    /// An agent error of no kind above.
    Other,
}

/// An ERROR frame from the agent: its text, verbatim, and the kind derived from it once, when
/// the frame arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestError {
    kind: AgentErrorKind,
    message: String,
}

impl GuestError {
    /// Classifies the text of an ERROR frame.
    pub fn new(message: String) -> Self {
        Self { kind: classify(&message), message }
    }

    /// The kind derived from the text.
    pub fn kind(&self) -> AgentErrorKind {
        self.kind
    }

    /// The agent's text, verbatim.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// So `AgentError::Agent(t) if t == "auth required"` keeps working (by reference or by value).
impl PartialEq<str> for GuestError {
    fn eq(&self, other: &str) -> bool {
        self.message == other
    }
}

impl PartialEq<&str> for GuestError {
    fn eq(&self, other: &&str) -> bool {
        self.message == *other
    }
}

/// The kind of an ERROR text. The only code that looks at the agent's texts: they are v1's
/// (agent.md 1.13), errno reasons in Go's lower-case wording (`open /x: no such file or
/// directory`) and a few fixed messages; lohar's spawn errors carry Rust's capitalised wording
/// (`start: x: No such file or directory (os error 2)`), hence the lower-casing.
fn classify(message: &str) -> AgentErrorKind {
    use AgentErrorKind::*;
    let text = message.to_ascii_lowercase();
    let fixed = [
        ("auth required", Unauthenticated),
        ("connection limit exceeded", LimitReached),
        ("session limit exceeded", LimitReached),
        ("session is attached", Busy),
        ("session not found", NotFound),
        ("empty argv", Invalid),
        ("bad kill request", Invalid),
    ];
    if let Some((_, kind)) = fixed.iter().find(|(t, _)| text == *t) {
        return *kind;
    }
    let prefixes = [
        ("unexpected frame type", Unsupported),
        ("expected fwd_req", Unsupported),
        ("file too large:", TooLarge),
        ("file size must be", Invalid),
        ("bad request", Invalid),
        ("bad exec request", Invalid),
        ("bad forward request", Invalid),
    ];
    if let Some((_, kind)) = prefixes.iter().find(|(p, _)| text.starts_with(p)) {
        return *kind;
    }
    // `<path> is not a directory` before `is a directory`; both are also errno reasons.
    let contained = [
        ("refused in test mode", Unsupported),
        ("directories to watch", LimitReached),
        ("not a directory", NotADirectory),
        ("is a directory", IsADirectory),
        ("is not a regular file", Invalid),
        ("no such file or directory", NotFound),
        ("permission denied", PermissionDenied),
        ("operation not permitted", PermissionDenied),
        ("read-only file system", PermissionDenied),
        ("file exists", AlreadyExists),
        ("no space left on device", NoSpace),
        ("disk quota exceeded", NoSpace),
        ("file too large", TooLarge),
        ("file name too long", Invalid),
        ("invalid argument", Invalid),
        ("bad mac", Invalid),
        ("bad prefix", Invalid),
    ];
    contained.iter().find(|(t, _)| text.contains(t)).map_or(Other, |(_, kind)| *kind)
}

/// Everything a call to the agent can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an ERROR frame; its text is kept verbatim, with its kind.
    #[error("agent error: {0}")]
    Agent(GuestError),
    /// The call did not finish within its deadline.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// Its deadline.
        after: Duration,
    },
    /// The agent could not be reached.
    #[error("cannot connect to the agent at {endpoint}")]
    Connect {
        /// Where we tried.
        endpoint: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The agent refused a port forward.
    #[error("forward to port {port} refused: {message}")]
    ForwardRefused {
        /// The guest port.
        port: u16,
        /// The agent's reason.
        message: String,
    },
    /// More bytes than allowed: a file read over the caller's cap, a write over the agent's
    /// 100 MiB. Refused by the client, before (or instead of) transferring the rest.
    #[error("{what} of {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// `file read` or `file write`.
        what: &'static str,
        /// The size announced, or the bytes received so far when no size was announced.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A write's source ended before the announced size; the agent keeps the old file.
    #[error("the source ended after {sent} of {size} announced bytes")]
    SourceEnded {
        /// Bytes sent.
        sent: u64,
        /// Bytes announced.
        size: u64,
    },
    /// Reading the caller's source or writing the caller's sink failed.
    #[error("local IO failed during {op}")]
    Local {
        /// The operation.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent sent something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection ended in the middle of a request.
    #[error("the agent closed the connection during {0}")]
    Closed(&'static str),
    /// Framing failed (oversize or malformed frame).
    #[error("framing error")]
    Frame(#[from] proto::FrameError),
    /// Socket IO failed.
    #[error("agent connection IO failed")]
    Io(#[from] std::io::Error),
}

impl AgentError {
    /// An ERROR frame's text, classified.
    pub(crate) fn guest(message: String) -> Self {
        AgentError::Agent(GuestError::new(message))
    }

    /// True when the agent itself reported the error (the request was understood and refused).
    pub fn is_agent_error(&self) -> bool {
        matches!(self, AgentError::Agent(_))
    }

    /// What kind of failure this is; for an agent error, derived from its text.
    pub fn kind(&self) -> AgentErrorKind {
        match self {
            AgentError::Agent(e) => e.kind(),
            AgentError::Timeout { .. } => AgentErrorKind::Timeout,
            AgentError::Connect { .. } => AgentErrorKind::Unreachable,
            AgentError::ForwardRefused { .. } => AgentErrorKind::ForwardRefused,
            AgentError::TooLarge { .. } => AgentErrorKind::TooLarge,
            AgentError::SourceEnded { .. } => AgentErrorKind::Invalid,
            AgentError::Protocol(_) => AgentErrorKind::Protocol,
            AgentError::Closed(_) => AgentErrorKind::Closed,
            AgentError::Frame(proto::FrameError::UnexpectedEof) => AgentErrorKind::Closed,
            AgentError::Frame(proto::FrameError::Io(_)) => AgentErrorKind::Io,
            AgentError::Frame(_) => AgentErrorKind::Protocol,
            AgentError::Local { .. } | AgentError::Io(_) => AgentErrorKind::Io,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AgentErrorKind::*;
    use super::*;

    /// v1's catalogue (agent.md 1.13) and lohar's texts, each with its kind.
    #[test]
    fn every_known_agent_text_has_its_kind() {
        let cases = [
            ("connection limit exceeded", LimitReached),
            ("auth required", Unauthenticated),
            ("bad exec request: expected value at line 1 column 1", Invalid),
            ("empty argv", Invalid),
            ("bad kill request", Invalid),
            ("session not found", NotFound),
            ("session is attached", Busy),
            ("session limit exceeded", LimitReached),
            ("pty: out of pty devices", Other),
            ("start: nosuch: No such file or directory (os error 2)", NotFound),
            ("start: /etc/passwd: Permission denied (os error 13)", PermissionDenied),
            ("open output file: Read-only file system (os error 30)", PermissionDenied),
            ("unexpected frame type 0x70", Unsupported),
            ("bad request: missing field `path`", Invalid),
            ("bad request: empty path", Invalid),
            ("open /x: no such file or directory", NotFound),
            ("stat /x: no such file or directory", NotFound),
            ("/tmp is a directory", IsADirectory),
            ("/dev/null is not a regular file", Invalid),
            ("/etc/passwd is not a directory", NotADirectory),
            ("mkdir /etc/passwd: not a directory", NotADirectory),
            ("open /sys/x: permission denied", PermissionDenied),
            ("mkdir /sys/x: operation not permitted", PermissionDenied),
            ("write /data/f: no space left on device", NoSpace),
            ("open /x: file exists", AlreadyExists),
            ("open /x/yyyy: file name too long", Invalid),
            ("file size must be >= 0", Invalid),
            ("file too large: 104857601 bytes (max 104857600)", TooLarge),
            ("write /f: file too large", TooLarge),
            ("connection lost after 7/100 bytes", Other),
            ("expected FWD_REQ, got 0x10", Unsupported),
            ("set time: refused in test mode (it would set the host's clock)", Unsupported),
            ("set net: bad MAC \"zz\"", Invalid),
            ("watch /w: no such file or directory", NotFound),
            ("watch /w/f: not a directory", NotADirectory),
            ("watch /w: more than 8192 directories to watch", LimitReached),
            ("something new", Other),
        ];
        for (text, kind) in cases {
            assert_eq!(classify(text), kind, "{text}");
        }
    }

    #[test]
    fn agent_errors_keep_their_text_and_compare_with_it() {
        let e = AgentError::guest("auth required".into());
        assert_eq!(e.kind(), Unauthenticated);
        assert!(matches!(&e, AgentError::Agent(t) if t == "auth required"));
        assert!(matches!(e, AgentError::Agent(ref t) if *t == "auth required"));
        assert_eq!(e.to_string(), "agent error: auth required");
    }
}
