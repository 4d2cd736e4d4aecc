//! Which images exist and which file each boots from: the built-in images registered from the
//! images directory (`<images_dir>/<name>/current/rootfs.ext4`, registered under the file
//! `current` points at, so a rebuilt image never changes the disk under a sandbox made from
//! the old one), the leftovers of interrupted writes, and the one question `POST /sandboxes`
//! asks (`boot_file`). No handler here: `sandboxes` and `images` both use it.

use std::path::{Path, PathBuf};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The built-in images on disk: `(name, file, bytes, mtime)` for every
/// `<images_dir>/<name>/current/rootfs.ext4` that is a non-empty file.
fn builtins_on_disk(images_dir: &Path) -> Vec<store::NewImage> {
    let Ok(entries) = std::fs::read_dir(images_dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let plain = !name.is_empty()
            && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if !plain {
            continue;
        }
        let file = entry.path().join("current/rootfs.ext4");
        let Ok(real) = std::fs::canonicalize(&file) else { continue };
        let Ok(meta) = std::fs::metadata(&real) else { continue };
        if !meta.is_file() || meta.len() == 0 {
            continue;
        }
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        out.push(store::NewImage {
            id: Some(format!("builtin_{name}")),
            owner: None,
            name,
            source: "built-in".into(),
            file_path: real,
            size_mb: u32::try_from(meta.len().div_ceil(1024 * 1024)).unwrap_or(u32::MAX),
            oci_digest: String::new(),
            oci_config: String::new(),
            created_at: Some(store::Timestamp(mtime)),
        });
    }
    out
}

/// Registers the built-in images as global images (idempotent: a row is written only when its
/// file changed). Runs at start and before every image lookup, so an image rebuilt while the
/// daemon runs is seen at once.
pub async fn sync_builtins(state: &AppState) -> ApiResult<()> {
    let dir = state.settings.images_dir.clone();
    let found = tokio::task::spawn_blocking(move || builtins_on_disk(&dir))
        .await
        .map_err(|e| ApiError::Internal(format!("scanning the images directory: {e}")))?;
    for new in found {
        let name = new.name.clone();
        let stored = state.store.read(move |s| s.image_for("", &name)).await;
        let same = matches!(&stored, Ok(i) if i.owner.is_none()
            && i.file_path == new.file_path
            && i.size_mb == new.size_mb
            && Some(i.created_at) == new.created_at);
        if !same {
            let name = new.name.clone();
            let changed = state.store.write(move |s| s.upsert_global_image(&new)).await?;
            if changed {
                tracing::info!(image = %name, "built-in image registered");
            }
        }
    }
    Ok(())
}

/// Removes what interrupted imports and saves left (`.import-*`, `.save-*` under each owner's
/// image directory); at daemon start.
pub fn clean_partial(data_dir: &Path) {
    let Ok(owners) = std::fs::read_dir(data_dir.join("images")) else { return };
    for owner in owners.flatten() {
        for dir in [owner.path(), data_dir.join("images")] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".import-") || name.starts_with(".save-") {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    tracing::info!(path = %p.display(), "removed an interrupted image write");
                }
            }
        }
    }
}

/// The file image `name` boots from, for `user`: own, then shared, then global (v1's order).
pub async fn boot_file(state: &AppState, user: &store::User, name: &str) -> ApiResult<PathBuf> {
    let not_found = || ApiError::NotFound(format!("image {name:?} not found"));
    if name.is_empty() {
        return Err(not_found());
    }
    sync_builtins(state).await?;
    let (owner, key) = (user.id.clone(), name.to_owned());
    match state.store.read(move |s| s.image_for(&owner, &key)).await {
        Ok(image) if image.file_path.is_file() => Ok(image.file_path),
        Ok(image) => {
            tracing::warn!(image = %name, file = %image.file_path.display(), "image file missing");
            Err(not_found())
        }
        Err(e) if e.kind() == store::ErrorKind::NotFound => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}
