//! The sandbox engine: sandboxes on QEMU microVMs in a network namespace the engine owns.
//!
//! - [`Engine`]: the registry (create from an image or a template, destroy, list), guest
//!   operations through leases that keep a sandbox hot, thermal operations (pause, stop, start,
//!   ensure-hot), checkpoints, volumes, and recovery from stored [`state::SandboxRecord`]s.
//! - `sandbox`: the owner task of one sandbox; `vm`: booting, suspending and waking one QEMU;
//!   `net`/`ippool`/`egress`: the namespace, its bridge, TAPs, addresses and optional NAT;
//!   `configdrive`, `volume`, `checkpoint`: the files a sandbox is made of.

pub mod checkpoint;
pub mod configdrive;
pub mod egress;
mod engine;
mod error;
pub mod ippool;
pub mod isolation;
pub mod net;
pub mod ports;
mod run;
mod sandbox;
pub mod spec;
pub mod state;
pub mod vm;
pub mod volume;

pub use engine::{Engine, EngineConfig, SandboxInfo};
pub use error::EngineError;
pub use sandbox::{Activity, Lease, Leased};
pub use spec::{CreateSpec, Template};
pub use state::{SandboxRecord, Thermal};
