//! The thermal state of a sandbox: the one vocabulary the owner, the registry, errors, events
//! and records share.

pub use bhatti_core::Thermal;
