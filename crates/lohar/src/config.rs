//! The agent's configuration: what the host put on the config drive (`config.json`).

use std::path::Path;

pub use proto::guest::GuestConfig;

/// Why a config file could not be used.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Loads and parses a `config.json`.
pub fn load(path: &Path) -> Result<GuestConfig, ConfigError> {
    let text =
        std::fs::read(path).map_err(|e| ConfigError(format!("read {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| ConfigError(format!("parse {}: {e}", path.display())))
}

/// Where the agent runs; the differences between the two modes all follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 inside a sandbox VM.
    Vm,
    /// Test mode on a host (Unix sockets, no PID 1 work).
    Test,
}

/// Agent-wide settings and state shared by every connection.
#[derive(Debug)]
pub struct Agent {
    /// The host's configuration for this guest (the config drive's `config.json`).
    pub config: GuestConfig,
    /// VM or test mode.
    pub mode: Mode,
    /// The session registry.
    pub sessions: crate::session::Registry,
}

impl Agent {
    /// `sync()` before sending EXIT, so files a command wrote are on the virtual disk before the
    /// host snapshots. In test mode there is no VM, and a host-wide sync would only add latency.
    pub fn sync_before_exit(&self) -> bool {
        self.mode == Mode::Vm
    }

    /// SET_TIME may change the clock only inside the VM, never the host's in test mode.
    pub fn may_set_clock(&self) -> bool {
        self.mode == Mode::Vm
    }

    /// SET_NET may reconfigure interfaces only inside the VM, never the host's in test mode.
    pub fn may_configure_network(&self) -> bool {
        self.mode == Mode::Vm
    }
}
