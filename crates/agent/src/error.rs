//! The client's error type.

use std::time::Duration;

/// Everything a call to the agent can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an ERROR frame; its text is kept verbatim.
    #[error("agent error: {0}")]
    Agent(String),
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
    /// True when the agent itself reported the error (the request was understood and refused).
    pub fn is_agent_error(&self) -> bool {
        matches!(self, AgentError::Agent(_))
    }
}
