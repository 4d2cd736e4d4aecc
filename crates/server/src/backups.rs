//! Volume backup routes (host.md 1.19): list, create, restore, delete, all behind v1's
//! `backup` config (501 without it). The transfer itself is `backup_store.rs`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::backup_config::BackupConfig;
use crate::error::{ApiError, ApiResult};
use crate::request::Json;
use crate::state::AppState;
use crate::volumes::{event, find, take_detached};

/// The config, or v1's 501.
fn config(state: &AppState) -> ApiResult<&BackupConfig> {
    let cfg = &state.settings.backup;
    if !cfg.enabled() {
        return Err(ApiError::NotImplemented(
            "backup not configured — set backup.s3_endpoint, s3_bucket, s3_access_key and \
             s3_secret_key in the server's config",
        ));
    }
    Ok(cfg)
}

fn to_api(b: &store::VolumeBackup) -> api::VolumeBackup {
    api::VolumeBackup {
        id: b.id.clone(),
        volume_name: b.volume_name.clone(),
        user_id: b.owner.clone(),
        s3_key: b.s3_key.clone(),
        size_bytes: b.size_bytes,
        sha256: b.sha256.clone(),
        created_at: crate::times::rfc3339(b.created_at),
    }
}

/// Backs up the owner's volume now (an attached one too: crash-consistent). A failure is
/// logged as `volume.backup_failed`.
pub(crate) async fn back_up(
    state: &AppState,
    cfg: &BackupConfig,
    owner: &str,
    name: &str,
) -> ApiResult<store::VolumeBackup> {
    let v = find(state, owner, name).await?;
    let lock = crate::volume_locks::lock(&v)?;
    let key = crate::backup_store::key(owner, name, std::time::SystemTime::now());
    let uploaded = crate::backup_store::upload(cfg, &v.file_path, &key).await;
    drop(lock);
    let size = match uploaded {
        Ok(size) => size,
        Err(e) => {
            let ev = event(
                "volume.backup_failed",
                owner,
                serde_json::json!({ "name": name, "error": e.to_string() }),
            );
            if let Err(log) = state.store.write(move |s| s.record_events(&[ev])).await {
                tracing::warn!("recording volume.backup_failed: {log}");
            }
            return Err(e);
        }
    };
    let (o, n) = (owner.to_owned(), name.to_owned());
    Ok(state
        .store
        .write(move |s| {
            let b = s.create_volume_backup(&o, &n, &key, size, "")?;
            let meta = serde_json::json!({
                "name": n, "backup_id": b.id, "s3_key": b.s3_key, "size_bytes": size,
            });
            s.record_events(&[event("volume.backup_created", &o, meta)])?;
            Ok(b)
        })
        .await?)
}

/// Deletes a backup: the object (a failure is logged), then the row.
pub(crate) async fn remove(
    state: &AppState,
    cfg: &BackupConfig,
    backup: &store::VolumeBackup,
) -> ApiResult<()> {
    crate::backup_store::delete(cfg, &backup.s3_key).await;
    let (o, id) = (backup.owner.clone(), backup.id.clone());
    Ok(state.store.write(move |s| s.delete_volume_backup(&o, &id)).await?)
}

/// The owner's backup `id` of volume `name` (404 otherwise).
async fn backup_of(
    state: &AppState,
    owner: &str,
    name: &str,
    id: &str,
) -> ApiResult<store::VolumeBackup> {
    let (o, i) = (owner.to_owned(), id.to_owned());
    let not_found = || ApiError::NotFound(format!("backup {id:?} not found"));
    match state.store.read(move |s| s.volume_backup(&o, &i)).await {
        Ok(b) if b.volume_name == name => Ok(b),
        Ok(_) => Err(not_found()),
        Err(e) if e.kind() == store::ErrorKind::NotFound => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// `GET /volumes/:name/backups`, newest first.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Vec<api::VolumeBackup>>> {
    config(&state)?;
    let (o, n) = (user.id.clone(), name.clone());
    let rows = state.store.read(move |s| s.list_volume_backups(&o, &n)).await?;
    if rows.is_empty() {
        // 404 for a volume that does not exist (and never had backups).
        find(&state, &user.id, &name).await?;
    }
    Ok(axum::Json(rows.iter().map(to_api).collect()))
}

/// `POST /volumes/:name/backups`.
pub async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let cfg = config(&state)?;
    let b = back_up(&state, cfg, &user.id, &name).await?;
    Ok((StatusCode::CREATED, axum::Json(to_api(&b))).into_response())
}

/// `POST /volumes/:name/backups/restore {"backup_id"}`: the volume must be detached.
pub async fn restore(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
    Json(req): Json<api::RestoreRequest>,
) -> ApiResult<axum::Json<api::Restored>> {
    let cfg = config(&state)?;
    if req.backup_id.is_empty() {
        return Err(ApiError::BadRequest("backup_id is required".into()));
    }
    let (v, _lock) = take_detached(&state, &user.id, &name).await?;
    let b = backup_of(&state, &user.id, &name, &req.backup_id).await?;
    crate::backup_store::restore(cfg, &b.s3_key, &v.file_path, v.size_mb).await?;
    let meta = serde_json::json!({ "name": name, "backup_id": b.id });
    let ev = event("volume.restored", &user.id, meta);
    state.store.write(move |s| s.record_events(&[ev])).await?;
    Ok(axum::Json(api::Restored { status: "restored".into(), backup_id: b.id }))
}

/// `DELETE /volumes/:name/backups/:id`.
pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<axum::Json<api::StatusOnly>> {
    let cfg = config(&state)?;
    let b = backup_of(&state, &user.id, &name, &id).await?;
    remove(&state, cfg, &b).await?;
    Ok(axum::Json(api::StatusOnly { status: "deleted".into() }))
}
