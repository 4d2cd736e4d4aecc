//! Persistent volumes and their backups (host.md 1.5, 1.19): v1's shapes.

use serde::{Deserialize, Serialize};

/// A volume attached to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeAttachment {
    /// The sandbox.
    pub sandbox_id: String,
    /// Mount point in the guest.
    pub mount: String,
    /// Read-only.
    pub read_only: bool,
}

/// v1's `PersistentVolume` (the file path is never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PersistentVolume {
    /// `vol_` + 16 hex.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Name, unique per owner.
    pub name: String,
    /// Size, MB.
    pub size_mb: u32,
    /// `creating` or `ready`.
    pub status: String,
    /// Current attachments (empty in lists, as v1).
    #[serde(default)]
    pub attachments: Vec<VolumeAttachment>,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateVolumeRequest {
    /// Name (`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`).
    #[serde(default)]
    pub name: String,
    /// Size, MB (> 0).
    #[serde(default)]
    pub size_mb: u32,
}

/// `POST /volumes/:name/resize`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResizeVolumeRequest {
    /// The new size, MB (larger than the current one).
    #[serde(default)]
    pub size_mb: u32,
}

/// `POST /volumes/:name/resize`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeResized {
    /// `resized`.
    pub status: String,
    /// The new size.
    pub size_mb: u32,
}

/// `POST /volumes/:name/snapshot` (the CLI's clone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CloneVolumeRequest {
    /// The new volume's name.
    #[serde(default)]
    pub name: String,
}

/// v1's `VolumeBackup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeBackup {
    /// `bkp_` + 16 hex.
    pub id: String,
    /// The volume's name.
    pub volume_name: String,
    /// Owner.
    pub user_id: String,
    /// Object key (`volumes/<uid>/<volume>/<time>.ext4.zst`).
    pub s3_key: String,
    /// Compressed size.
    pub size_bytes: u64,
    /// Always empty (as v1).
    pub sha256: String,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /volumes/:name/backups/restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoreRequest {
    /// The backup to restore.
    #[serde(default)]
    pub backup_id: String,
}

/// `POST /volumes/:name/backups/restore`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Restored {
    /// `restored`.
    pub status: String,
    /// The backup restored.
    pub backup_id: String,
}

/// `{"status": "..."}` (deletes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusOnly {
    /// `deleted`.
    pub status: String,
}
