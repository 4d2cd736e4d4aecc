//! The VMM layer: QEMU `microvm` processes and their QMP control channel.
//!
//! [`VmConfig`] is a typed description of one VM; [`cmdline::qemu_args`] turns it into QEMU's
//! command line; [`QemuProcess`] starts QEMU and connects [`qmp::Qmp`] to it. This crate knows
//! nothing about sandboxes, agents or networks beyond "a TAP file descriptor".

pub mod accel;
pub mod cmdline;
pub mod config;
mod error;
pub mod jail;
pub mod process;
pub mod qmp;
mod snapshot;

pub use accel::{Accel, Accelerator};
pub use config::{Balloon, Disk, DiskCache, DiskFormat, Memory, NetDevice, VmConfig};
pub use error::VmmError;
pub use jail::{Access, Bind, Jail};
pub use process::QemuProcess;
pub use snapshot::{StateFormat, StateSaved};
