//! Host-side client of the guest agent `lohar`.
//!
//! One [`AgentClient`] per sandbox. Every call has a deadline. Connections are pooled when the
//! agent supports the connection-reuse extension (see the `proto` crate docs); against a v1
//! agent the client falls back to one connection per request, exactly as v1 clients behave.
//!
//! Errors keep the agent's own text ([`AgentError::Agent`]), so callers and users see what the
//! guest said.

#![forbid(unsafe_code)]

mod client;
mod codec;
mod error;
mod files;
mod netns_dial;
mod output;
mod session;
mod stream;
mod transport;
mod watch;

pub use client::{AgentClient, ClientConfig, ExecEvent, ExecInput, ExecStream};
pub use error::{AgentError, AgentErrorKind, GuestError};
pub use files::{FileContent, FileReader, MAX_BUFFERED_READ_BYTES, ReadOptions};
pub use output::ExecOutput;
pub use output::{OutputCollector, OutputRoom, TailBuffer, Unbounded};
pub use session::{Session, SessionEvent, SessionReader, SessionWriter};
pub use stream::Stream;
pub use transport::Endpoint;
pub use watch::{WatchKind, WatchStream};

pub use proto::messages::{
    ActivityInfo, DetachedExec, ExecRequest, FileInfo, SessionInfo, WatchEvent,
};
