//! The create-time checks of issue 23 that the store cannot make: a sandbox's disk must fit in
//! the host's free space at the data directory (its qcow2 overlay grows there up to the size
//! asked). The per-user quotas are checked elsewhere: sandboxes and the sum of their disks in
//! the store's insert (`create_sandbox`, one transaction, so racing creates cannot both take
//! the last MiB), vCPUs and memory per sandbox in `sandboxes::shape`, concurrent execs in
//! `exec.rs` (`exec_slots.rs`).

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const MIB: u64 = 1024 * 1024;

/// Whether a disk of `asked_mb` fits in `free_bytes` (pure).
pub fn fits(asked_mb: u32, free_bytes: u64) -> Result<(), ApiError> {
    let free_mb = free_bytes / MIB;
    if u64::from(asked_mb) > free_mb {
        return Err(ApiError::HostSpace { asked_mb: u64::from(asked_mb), free_mb });
    }
    Ok(())
}

/// Refuses a disk larger than the host's free space at the data directory (507).
#[allow(clippy::useless_conversion)] // statvfs's types differ between platforms
pub(crate) async fn check_host_space(state: &AppState, disk_size_mb: u32) -> ApiResult<()> {
    if disk_size_mb == 0 {
        return Ok(());
    }
    let dir = state.settings.data_dir.clone();
    let free = tokio::task::spawn_blocking(move || {
        nix::sys::statvfs::statvfs(&dir)
            .map(|s| u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("free space: {e}")))?
    .map_err(|e| ApiError::Internal(format!("free space at the data directory: {e}")))?;
    fits(disk_size_mb, free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_space_table() {
        let table = [
            ("fits", 1024, 10 * 1024 * MIB, true),
            ("exactly", 1024, 1024 * MIB, true),
            ("a TiB on 74 GiB", 1024 * 1024, 74 * 1024 * MIB, false),
            ("a byte short", 1024, 1024 * MIB - 1, false),
            ("nothing free", 1, 0, false),
        ];
        for (name, asked, free, ok) in table {
            let got = fits(asked, free);
            assert_eq!(got.is_ok(), ok, "{name}");
            if let Err(e) = got {
                assert_eq!(e.status().0, axum::http::StatusCode::INSUFFICIENT_STORAGE, "{name}");
                assert!(e.to_string().contains(&format!("{asked} MB asked")), "{name}: {e}");
            }
        }
    }
}
