//! The record a store keeps per sandbox so a restarted daemon can bring it back.
//!
//! Typed and versioned (v1 kept an untyped map whose numbers came back as floats from JSON, see
//! host.md 4.5). A record names files inside the sandbox's directory; it carries the agent token,
//! so the store must keep it as private as the sandbox directory itself.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
pub use crate::thermal::Thermal;
use crate::volume::VolumeMount;

/// The version this engine writes and reads.
pub const RECORD_VERSION: u32 = 2;

/// Everything needed to restore a sandbox after a daemon restart.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// [`RECORD_VERSION`] when written.
    pub version: u32,
    /// The caller's opaque sandbox ID.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Guest hostname.
    pub hostname: String,
    /// Disk size the overlay was grown to (MiB), if any.
    #[serde(default)]
    pub disk_size_mib: Option<u32>,
    /// Its directory (disk overlay, RAM file, device state, config drive).
    pub dir: PathBuf,
    /// Base image of the overlay.
    pub image: PathBuf,
    /// Guest address.
    pub ip: Ipv4Addr,
    /// Guest MAC, `52:54:00:..`.
    pub mac: String,
    /// Agent token.
    pub token: String,
    /// vCPUs.
    pub vcpus: u8,
    /// CPU bound in thousandths of a core, when the caller gave a fraction (absent in records
    /// written before bounds existed: `vcpus` cores).
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Environment (needed when the sandbox boots again from its disk).
    pub env: BTreeMap<String, String>,
    /// Init script.
    pub init: String,
    /// Attached volumes, in device order.
    pub volumes: Vec<VolumeMount>,
    /// Thermal state when the record was taken.
    pub thermal: Thermal,
    /// True when device state and RAM are on disk, so a wake restores memory; false means the
    /// next wake boots from the disk overlay.
    pub snapshot: bool,
}

impl SandboxRecord {
    /// The config drive content of this sandbox when it boots again (volumes and name servers
    /// are added by the engine).
    pub fn guest_config(&self) -> proto::guest::GuestConfig {
        proto::guest::GuestConfig {
            sandbox_id: self.id.clone(),
            hostname: self.hostname.clone(),
            token: self.token.clone(),
            env: self.env.clone(),
            init: self.init.clone(),
            ..Default::default()
        }
    }

    /// The record as JSON (it holds the agent token: store it as privately as the sandbox's
    /// directory).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a record, refusing versions this engine does not know.
    pub fn from_json(text: &str) -> Result<Self, EngineError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let refused =
            |e: serde_json::Error| EngineError::invalid(format!("bad sandbox record: {e}"));
        let v: Versioned = serde_json::from_str(text).map_err(refused)?;
        if v.version != RECORD_VERSION {
            return Err(EngineError::invalid(format!(
                "sandbox record version {} is not supported (this engine reads {RECORD_VERSION})",
                v.version
            )));
        }
        serde_json::from_str(text).map_err(refused)
    }
}

/// The agent token and environment values never reach a log: Debug leaves them out.
impl std::fmt::Debug for SandboxRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxRecord")
            .field("version", &self.version)
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("hostname", &self.hostname)
            .field("dir", &self.dir)
            .field("image", &self.image)
            .field("ip", &self.ip)
            .field("mac", &self.mac)
            .field("token", &"<redacted>")
            .field("vcpus", &self.vcpus)
            .field("memory_mib", &self.memory_mib)
            .field("disk_size_mib", &self.disk_size_mib)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("volumes", &self.volumes)
            .field("thermal", &self.thermal)
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SandboxRecord {
        SandboxRecord {
            version: RECORD_VERSION,
            id: "dev".into(),
            owner: "usr_1".into(),
            hostname: "dev".into(),
            disk_size_mib: Some(2048),
            dir: "/var/lib/bhatti/sandboxes/dev".into(),
            image: "/var/lib/bhatti/images/minimal.ext4".into(),
            ip: Ipv4Addr::new(10, 0, 0, 2),
            mac: "52:54:00:00:00:02".into(),
            token: "t".repeat(32),
            vcpus: 2,
            cpu_millis: None,
            memory_mib: 1024,
            env: [("A".to_owned(), "b".to_owned())].into(),
            init: "sleep 1".into(),
            volumes: vec![VolumeMount {
                path: "/v/a.ext4".into(),
                mount: "/data".into(),
                read_only: true,
            }],
            thermal: Thermal::Cold,
            snapshot: true,
        }
    }

    #[test]
    fn round_trips_with_exact_types() {
        let r = record();
        let json = r.to_json();
        assert!(json.contains(r#""thermal":"cold""#), "{json}");
        assert!(json.contains(r#""memory_mib":1024"#), "numbers stay integers: {json}");
        assert_eq!(SandboxRecord::from_json(&json).unwrap(), r);
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        let json = record().to_json().replace(r#""version":2"#, r#""version":9"#);
        let err = SandboxRecord::from_json(&json).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::Invalid);
        assert!(SandboxRecord::from_json("{").is_err());
        assert!(SandboxRecord::from_json(r#"{"version":2}"#).is_err());
    }

    #[test]
    fn debug_never_shows_the_token_or_env_values() {
        let text = format!("{:?}", record());
        assert!(!text.contains(&"t".repeat(32)), "{text}");
        assert!(text.contains("\"A\"") && !text.contains("\"b\""), "{text}");
    }
}
