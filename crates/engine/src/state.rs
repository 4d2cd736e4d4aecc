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
use crate::volume::VolumeMount;

/// The version this engine writes and reads.
pub const RECORD_VERSION: u32 = 1;

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

/// Everything needed to restore a sandbox after a daemon restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// [`RECORD_VERSION`] when written.
    pub version: u32,
    /// Sandbox name.
    pub name: String,
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
            sandbox_id: self.name.clone(),
            hostname: self.name.clone(),
            token: self.token.clone(),
            env: self.env.clone(),
            init: self.init.clone(),
            ..Default::default()
        }
    }

    /// The record as JSON.
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
            |e: serde_json::Error| EngineError::Refused(format!("bad sandbox record: {e}"));
        let v: Versioned = serde_json::from_str(text).map_err(refused)?;
        if v.version != RECORD_VERSION {
            return Err(EngineError::Refused(format!(
                "sandbox record version {} is not supported (this engine reads {RECORD_VERSION})",
                v.version
            )));
        }
        serde_json::from_str(text).map_err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SandboxRecord {
        SandboxRecord {
            version: RECORD_VERSION,
            name: "dev".into(),
            dir: "/var/lib/bhatti/sandboxes/dev".into(),
            image: "/var/lib/bhatti/images/minimal.ext4".into(),
            ip: Ipv4Addr::new(10, 0, 0, 2),
            mac: "52:54:00:00:00:02".into(),
            token: "t".repeat(32),
            vcpus: 2,
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
        let json = record().to_json().replace(r#""version":1"#, r#""version":2"#);
        let err = SandboxRecord::from_json(&json).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        assert!(SandboxRecord::from_json("{").is_err());
        assert!(SandboxRecord::from_json(r#"{"version":1}"#).is_err());
    }
}
