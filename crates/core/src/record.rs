//! The record a store keeps per sandbox so a restarted daemon can bring it back.
//!
//! Typed and versioned (v1 kept an untyped map whose numbers came back as floats from JSON, see
//! host.md 4.5). A record names files inside the sandbox's directory; it carries the agent token,
//! so the store must keep it as private as the sandbox directory itself.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::thermal::Thermal;

/// The version the engine writes and reads.
pub const RECORD_VERSION: u32 = 2;

/// Guest paths a volume may not cover: the system's own directories.
const RESERVED_MOUNTS: &[&str] = &[
    "/",
    "/proc",
    "/sys",
    "/dev",
    "/dev/pts",
    "/run",
    "/tmp",
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/usr",
    "/usr/local/bin",
    "/boot",
    "/root",
];

/// A volume attached to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The ext4 image on the host.
    pub path: PathBuf,
    /// Absolute mount point in the guest.
    pub mount: String,
    /// Read-only in QEMU and in the guest's mount.
    #[serde(default)]
    pub read_only: bool,
}

/// Why a volume's mount point is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    /// Relative path.
    #[error("must be an absolute path")]
    Relative,
    /// A `..` component.
    #[error("must not contain '..'")]
    Parent,
    /// One of the guest system's own directories.
    #[error("is a system directory")]
    System,
}

impl VolumeMount {
    /// The volume's name as callers know it: its file's stem (messages never show host paths).
    pub fn volume_name(&self) -> String {
        self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Checks the mount point: absolute, no `..`, not a system directory.
    pub fn check_mount(&self) -> Result<(), MountError> {
        check_mount_point(&self.mount)
    }
}

/// The rule every volume mount point follows (attached volumes, templates' mounts): absolute,
/// no `..`, not a system directory (`//etc` and `/./etc` are `/etc`).
pub fn check_mount_point(mount: &str) -> Result<(), MountError> {
    if !mount.starts_with('/') {
        return Err(MountError::Relative);
    }
    if mount.split('/').any(|c| c == "..") {
        return Err(MountError::Parent);
    }
    let cleaned = format!(
        "/{}",
        mount.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
    );
    if RESERVED_MOUNTS.contains(&cleaned.as_str()) {
        return Err(MountError::System);
    }
    Ok(())
}

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
    /// Egress policy (absent in records written before policies existed: `public`).
    #[serde(default)]
    pub net_policy: crate::egress::NetPolicy,
    /// A copy-on-write clone of a checkpoint: its RAM is the checkpoint's file (hard-linked as
    /// `base.ram` in its directory) mapped privately, so what it wrote lives only in its QEMU
    /// (and in its saved state when cold). False for everything else (and in older records).
    #[serde(default)]
    pub memory_private: bool,
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not a record (serde's message: a position and the expected type).
    #[error("bad sandbox record: {0}")]
    Malformed(String),
    /// Written by an engine of another record version.
    #[error("sandbox record version {found} is not supported (this engine reads {RECORD_VERSION})")]
    Version {
        /// The version in the record.
        found: u32,
    },
}

impl SandboxRecord {
    /// The record as JSON (it holds the agent token: store it as privately as the sandbox's
    /// directory).
    pub fn to_json(&self) -> String {
        // A record is strings, numbers and maps with string keys: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a record, refusing versions this engine does not know.
    pub fn from_json(text: &str) -> Result<Self, RecordError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let malformed = |e: serde_json::Error| RecordError::Malformed(e.to_string());
        let v: Versioned = serde_json::from_str(text).map_err(malformed)?;
        if v.version != RECORD_VERSION {
            return Err(RecordError::Version { found: v.version });
        }
        serde_json::from_str(text).map_err(malformed)
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
            .field("net_policy", &self.net_policy)
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
            net_policy: crate::egress::NetPolicy::default(),
            memory_private: false,
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
        assert_eq!(err, RecordError::Version { found: 9 });
        assert!(err.to_string().contains("version 9"), "{err}");
        assert!(matches!(SandboxRecord::from_json("{"), Err(RecordError::Malformed(_))));
        assert!(matches!(
            SandboxRecord::from_json(r#"{"version":2}"#),
            Err(RecordError::Malformed(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_token_or_env_values() {
        let text = format!("{:?}", record());
        assert!(!text.contains(&"t".repeat(32)), "{text}");
        assert!(text.contains("\"A\"") && !text.contains("\"b\""), "{text}");
    }

    #[test]
    fn mount_points_table() {
        let table: [(&str, &str, Result<(), MountError>); 9] = [
            ("a data directory", "/data", Ok(())),
            ("deep in the home", "/home/lohar/work", Ok(())),
            ("relative", "data", Err(MountError::Relative)),
            ("climbs out", "/data/../etc", Err(MountError::Parent)),
            ("the root", "/", Err(MountError::System)),
            ("etc", "/etc", Err(MountError::System)),
            ("etc spelled with a dot", "/./etc/", Err(MountError::System)),
            ("usr/local/bin", "/usr//local/bin", Err(MountError::System)),
            ("under usr/local but not bin", "/usr/local/share", Ok(())),
        ];
        for (name, mount, want) in table {
            let v = VolumeMount { path: "/v/x.ext4".into(), mount: mount.into(), read_only: false };
            assert_eq!(v.check_mount(), want, "{name}");
        }
        let v = VolumeMount { path: "/v/cache.ext4".into(), mount: "/c".into(), read_only: true };
        assert_eq!(v.volume_name(), "cache");
    }
}
