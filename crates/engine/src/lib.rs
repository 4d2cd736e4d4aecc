//! The sandbox engine: sandboxes on QEMU microVMs in a network namespace the engine owns.
//!
//! - [`Engine`] (`registry`): create from an image or a template, destroy, list, guest
//!   operations through leases that keep a sandbox hot, thermal operations (pause, stop, start,
//!   ensure-hot), checkpoints, volumes, events, and recovery from stored [`SandboxRecord`]s.
//! - `owner`: the task that alone changes one sandbox's thermal state; `lease`: the state it
//!   shares with leases and readers; `vm`: booting, suspending and waking one QEMU;
//!   `net`/`ippool`/`egress`: the namespace, its bridge, TAPs, addresses and optional NAT;
//!   `layout`: where every file lives; `configdrive`, `volume`, `checkpoint`: the files a
//!   sandbox is made of.
//!
//! Errors are [`EngineError`]s with a stable [`ErrorKind`] for callers to map.

pub mod checkpoint;
pub mod configdrive;
pub mod egress;
mod error;
pub mod events;
pub mod ippool;
pub mod isolation;
pub mod layout;
mod lease;
pub mod net;
mod owner;
pub mod ports;
mod registry;
mod run;
pub mod spec;
pub mod state;
mod thermal;
pub mod vm;
pub mod volume;

/// The agent's types the engine's API hands out.
pub use agent::{
    ActivityInfo, DetachedExec, ExecOutput, ExecRequest, ExecStream, FileContent, FileInfo,
    ReadOptions, Session, SessionInfo, Stream,
};
pub use error::{EngineError, ErrorKind, Exhausted, GuestErrorKind, Resource};
pub use events::{Event, EventKind};
pub use lease::{Activity, Lease, Leased};
pub use registry::{Engine, EngineConfig, SHUTDOWN_PARALLEL, SandboxInfo};
pub use spec::{CreateSpec, DEFAULT_OWNER, Template};
pub use state::SandboxRecord;
pub use thermal::Thermal;
