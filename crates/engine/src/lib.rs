//! The sandbox engine. So far: the guest config drive, the network namespace with its bridge and
//! TAP devices, and the helpers that turn them into a bootable VM description.

pub mod configdrive;
mod engine;
mod error;
pub mod ippool;
pub mod net;
mod run;
pub mod vm;

pub use engine::{CreateSpec, Engine, EngineConfig, SandboxInfo};
pub use error::EngineError;
