//! `config.json` on the config drive: what the host tells the guest at boot. Both sides use this
//! type, so the host's writer and lohar's reader cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The config drive's `config.json` (bhatti v1 schema). `Debug` leaves out the token, env
/// values and file contents (they are secrets; a log line must not carry them).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// Sandbox id, for logs.
    #[serde(default)]
    pub sandbox_id: String,
    /// Hostname; empty means `bhatti`.
    #[serde(default)]
    pub hostname: String,
    /// Auth token (32 hex characters); empty disables auth.
    #[serde(default)]
    pub token: String,
    /// Environment merged into every exec.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files to create: path -> content and mode.
    #[serde(default)]
    pub files: BTreeMap<String, GuestFile>,
    /// Block devices to mount.
    #[serde(default)]
    pub volumes: Vec<GuestVolume>,
    /// Script run as the `init` session.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub init: String,
    /// Public resolvers (degraded mode only).
    #[serde(default)]
    pub dns: Vec<String>,
    /// In-cluster DNS responder.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dns_internal: String,
    /// `"root"` runs the init session as root.
    #[serde(default)]
    pub user: String,
}

impl std::fmt::Debug for GuestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestConfig")
            .field("sandbox_id", &self.sandbox_id)
            .field("hostname", &self.hostname)
            .field("token", &if self.token.is_empty() { "<none>" } else { "<redacted>" })
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("volumes", &self.volumes)
            .field("init", &format_args!("<{} bytes>", self.init.len()))
            .field("dns", &self.dns)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A file to materialise in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    /// Content, standard base64 with padding.
    pub content: String,
    /// Octal permission string; invalid or zero means 0644.
    #[serde(default)]
    pub mode: String,
}

/// A volume to mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestVolume {
    /// Block device, e.g. `/dev/vdc`.
    pub device: String,
    /// Mount point.
    pub mount: String,
    /// Filesystem type, e.g. `ext4`.
    #[serde(default)]
    pub fs: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_token_env_values_or_file_contents() {
        let mut c = GuestConfig { token: "sekrit-token-0123".into(), ..Default::default() };
        c.env.insert("KEY".into(), "sekrit-env".into());
        c.files.insert("/f".into(), GuestFile { content: "c2Vrcml0".into(), mode: String::new() });
        let text = format!("{c:?}");
        assert!(text.contains("KEY") && text.contains("<redacted>"), "{text}");
        for secret in ["sekrit-token-0123", "sekrit-env", "c2Vrcml0"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}
