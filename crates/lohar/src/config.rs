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

/// The host's configuration for this guest (the config drive's `config.json`).
pub type AgentConfig = GuestConfig;

/// Loads and parses a `config.json`.
pub fn load(path: &Path) -> Result<GuestConfig, ConfigError> {
    let text =
        std::fs::read(path).map_err(|e| ConfigError(format!("read {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| ConfigError(format!("parse {}: {e}", path.display())))
}

/// Agent-wide settings and state shared by every connection.
#[derive(Debug)]
pub struct Agent {
    /// The configuration.
    pub config: AgentConfig,
    /// `sync()` before sending EXIT, so files a command wrote are on the virtual disk before the
    /// host snapshots. On in the VM; off in test mode, where there is no VM and a host-wide sync
    /// would only add latency.
    pub sync_before_exit: bool,
    /// SET_TIME may change the clock: only as PID 1 in the VM, never in test mode on a host.
    pub may_set_clock: bool,
    /// The session registry.
    pub sessions: crate::session::Registry,
}
