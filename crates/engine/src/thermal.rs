//! The thermal state of a sandbox: the one vocabulary the owner, the registry, errors, events
//! and records share.

use serde::{Deserialize, Serialize};

/// Thermal state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Thermal {
    /// QEMU running.
    Hot,
    /// QEMU alive, vCPUs paused, memory kept.
    Warm,
    /// QEMU gone, memory freed; the sandbox wakes from its files.
    Cold,
    /// QEMU ended on its own (killed, crashed); `start` boots the sandbox from its disk.
    Failed,
}

impl std::fmt::Display for Thermal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Thermal::Hot => "hot",
            Thermal::Warm => "warm",
            Thermal::Cold => "cold",
            Thermal::Failed => "failed",
        })
    }
}
