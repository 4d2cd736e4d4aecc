//! Ours: shape snapshots (template snapshots): `POST /templates/:name/warm`, `GET /shapes`.

use serde::{Deserialize, Serialize};

/// `POST /templates/:name/warm`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WarmResult {
    /// The shape's key.
    pub key: String,
    /// True when this call captured the snapshot; false when it was there already.
    pub created: bool,
    /// How long the call took, in milliseconds.
    pub took_ms: u64,
}

/// One shape snapshot (`GET /shapes`, admin only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShapeSnapshot {
    /// The key: a hash of everything that shapes the booted guest.
    pub key: String,
    /// The image name of the create that recorded it.
    pub image: String,
    /// The file the image resolved to.
    pub image_file: String,
    /// The kernel file.
    pub kernel: String,
    /// vCPUs (a fraction is a CPU-time bound).
    pub cpus: f64,
    /// Guest RAM in MB.
    pub memory_mb: u32,
    /// Disk size in MB (0: the image's).
    pub disk_size_mb: u32,
    /// The sandbox it was captured from (`warm` for `template warm`).
    pub source: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; empty when never restored.
    #[serde(default)]
    pub last_used: String,
    /// Creates restored from it.
    pub uses: u64,
}
