//! Named snapshots (host.md 1.21) and templates (1.17): v1's shapes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A named snapshot (v1's `SnapshotRecord`; paths and manifest hidden).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `snap_` + 16 hex.
    pub id: String,
    /// Owner's user ID.
    pub user_id: String,
    /// Name, unique per owner.
    pub name: String,
    /// ID of the sandbox it was taken from (it may be gone).
    pub source_sandbox: String,
    /// What its files take on the disk, MiB (rounded up).
    pub size_mb: u32,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /sandboxes/:id/checkpoint`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRequest {
    /// The snapshot's name (`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`), required.
    #[serde(default)]
    pub name: String,
}

/// `POST /snapshots/:name/resume`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRequest {
    /// The new sandbox's name; `<snapshot>-<6 hex>` when empty.
    #[serde(default)]
    pub name: String,
}

/// A volume a template mounts (v1's `mounts[]` element).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMount {
    /// Volume name (`bhatti-<template>-workspace` when empty).
    #[serde(default)]
    pub volume_name: String,
    /// Mount point in the guest.
    #[serde(default)]
    pub target: String,
    /// Read-only.
    #[serde(default)]
    pub readonly: bool,
    /// Create the volume when missing.
    #[serde(default)]
    pub auto_create: bool,
}

/// A template (global, v1's shape). As a `POST /templates` body every field is optional:
/// `id` (16 hex when empty), `engine` (`firecracker`, v1's), `cpus` (1), `memory_mb` (2048),
/// `image` (the daemon's default image); `name` is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// 16 hex chars.
    #[serde(default)]
    pub id: String,
    /// Name (not unique, as v1).
    #[serde(default)]
    pub name: String,
    /// v1's engine name; informational.
    #[serde(default)]
    pub engine: String,
    /// Image name.
    #[serde(default)]
    pub image: String,
    /// vCPUs (a float, as v1).
    #[serde(default)]
    pub cpus: f64,
    /// Guest RAM, MB.
    #[serde(default)]
    pub memory_mb: u32,
    /// Disk size, MB (0: the image's).
    #[serde(default)]
    pub disk_size_mb: u32,
    /// User data (stored, unused, as v1).
    #[serde(default)]
    pub userdata: String,
    /// Secret names injected as environment variables.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Labels every sandbox made from it gets (the request's win per key).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Persistent volumes to attach.
    #[serde(default)]
    pub mounts: Vec<TemplateMount>,
    /// RFC 3339 (set by the daemon).
    #[serde(default)]
    pub created_at: String,
}

/// v1's engine name in templates.
pub const TEMPLATE_ENGINE: &str = "firecracker";
/// v1's defaults for a new template.
pub const TEMPLATE_CPUS: f64 = 1.0;
/// v1's defaults for a new template.
pub const TEMPLATE_MEMORY_MB: u32 = 2048;
