//! The agent's configuration: what the host put on the config drive (`config.json`).

use std::path::Path;

pub use proto::guest::GuestConfig;

/// Why no usable config was found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// There is no config drive (or, in test mode, `LOHAR_CONFIG` names nothing).
    #[error("no config drive at {0}")]
    Missing(String),
    /// The config drive is there but cannot be mounted.
    #[error("cannot mount the config drive {device}")]
    Mount {
        /// The block device.
        device: String,
        /// Why.
        #[source]
        source: nix::errno::Errno,
    },
    /// `config.json` cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not the expected JSON.
    #[error("cannot parse {path}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Loads and parses a `config.json`.
pub fn load(path: &Path) -> Result<GuestConfig, ConfigError> {
    let shown = || path.display().to_string();
    let text = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ConfigError::Missing(shown()),
        _ => ConfigError::Read { path: shown(), source },
    })?;
    serde_json::from_slice(&text).map_err(|source| ConfigError::Parse { path: shown(), source })
}

/// Why the agent serves nothing on its ports.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No config, or one that cannot be read.
    #[error("no usable config: {}", chain(.0))]
    NoConfig(ConfigError),
    /// A config without a token: serving would let anyone who reaches the guest run commands.
    #[error("the config has no token")]
    NoToken,
}

/// An error and its sources on one line, for the console.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// Whether the agent may serve, given what loading the config gave. Inside a VM lohar fails
/// closed: no config, a damaged one or an empty token means no listeners at all (v1 served
/// everyone without auth then). In test mode only a damaged config refuses: a missing one (no
/// `LOHAR_CONFIG`) or an empty token means an open agent, which the test suites rely on.
pub fn decide(
    mode: Mode,
    require_token: bool,
    loaded: Result<GuestConfig, ConfigError>,
) -> Result<GuestConfig, Refusal> {
    let strict = mode == Mode::Vm || require_token;
    match loaded {
        Ok(config) if strict && config.token.is_empty() => Err(Refusal::NoToken),
        Ok(config) => Ok(config),
        Err(ConfigError::Missing(_)) if !strict => Ok(GuestConfig::default()),
        Err(e) => Err(Refusal::NoConfig(e)),
    }
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
    /// The host's configuration for this guest (the config drive's `config.json`). Its token is
    /// the one the guest booted with; [`Agent::token`] is the one connections must present.
    pub config: GuestConfig,
    /// The token connections AUTH with: the config's, until SET_IDENTITY renews it.
    pub token: crate::token::Token,
    /// VM or test mode.
    pub mode: Mode,
    /// The session registry.
    pub sessions: crate::session::Registry,
    /// Where SET_IDENTITY writes `/etc/hostname` and `/etc/machine-id`: `/` in the VM; in test
    /// mode `LOHAR_IDENTITY_ROOT` (a test's directory) or nowhere (those fields are refused).
    pub identity_root: Option<std::path::PathBuf>,
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

    /// An agent for `config` in `mode`, its token the config's.
    pub fn new(config: GuestConfig, mode: Mode) -> Self {
        let token = crate::token::Token::new(config.token.clone());
        let identity_root = match mode {
            Mode::Vm => Some("/".into()),
            Mode::Test => std::env::var_os("LOHAR_IDENTITY_ROOT").map(Into::into),
        };
        Agent { config, token, mode, sessions: Default::default(), identity_root }
    }

    /// Where and how SET_IDENTITY applies its fields: for real in the VM; in test mode only the
    /// files under `LOHAR_IDENTITY_ROOT` (no hostname, RNG or connection changes on the host).
    pub fn identity_target(&self) -> Option<crate::identity::Target> {
        let root = self.identity_root.clone()?;
        Some(crate::identity::Target { root, live: self.mode == Mode::Vm })
    }

    /// SET_NET may reconfigure interfaces only inside the VM, never the host's in test mode.
    pub fn may_configure_network(&self) -> bool {
        self.mode == Mode::Vm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str) -> GuestConfig {
        GuestConfig { token: token.into(), ..GuestConfig::default() }
    }

    fn damaged() -> ConfigError {
        let source = serde_json::from_slice::<GuestConfig>(b"{not json").unwrap_err();
        ConfigError::Parse { path: "/run/bhatti/config/config.json".into(), source }
    }

    #[test]
    fn vm_serves_only_with_a_config_and_a_token() {
        let ok = decide(Mode::Vm, false, Ok(with_token("feedface"))).unwrap();
        assert_eq!(ok.token, "feedface");
        let missing = ConfigError::Missing("/dev/vdb".into());
        assert!(matches!(decide(Mode::Vm, false, Err(missing)), Err(Refusal::NoConfig(_))));
        assert!(matches!(decide(Mode::Vm, false, Err(damaged())), Err(Refusal::NoConfig(_))));
        assert!(matches!(decide(Mode::Vm, false, Ok(with_token(""))), Err(Refusal::NoToken)));
    }

    #[test]
    fn test_mode_is_open_unless_the_config_is_damaged_or_a_token_is_required() {
        let missing = || ConfigError::Missing("LOHAR_CONFIG".into());
        assert_eq!(decide(Mode::Test, false, Err(missing())).unwrap(), GuestConfig::default());
        assert!(decide(Mode::Test, false, Ok(with_token(""))).is_ok());
        assert!(matches!(decide(Mode::Test, false, Err(damaged())), Err(Refusal::NoConfig(_))));
        assert!(matches!(decide(Mode::Test, true, Err(missing())), Err(Refusal::NoConfig(_))));
        assert!(matches!(decide(Mode::Test, true, Ok(with_token(""))), Err(Refusal::NoToken)));
        assert!(decide(Mode::Test, true, Ok(with_token("t"))).is_ok());
    }

    #[test]
    fn refusals_say_why_on_one_line() {
        let text = Refusal::NoConfig(damaged()).to_string();
        assert!(
            text.starts_with("no usable config: cannot parse /run/bhatti/config/config.json: ")
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn load_tells_missing_from_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert!(matches!(load(&path), Err(ConfigError::Missing(_))));
        std::fs::write(&path, b"{\"token\": 5}").unwrap();
        assert!(matches!(load(&path), Err(ConfigError::Parse { .. })));
        std::fs::write(&path, b"{\"token\": \"abc\"}").unwrap();
        assert_eq!(load(&path).unwrap().token, "abc");
    }
}
