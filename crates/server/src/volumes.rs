//! Persistent volume routes (host.md 1.19): create, list, get, delete, resize (grow only,
//! detached), snapshot (an independent copy: the CLI's clone). Files live at
//! `<data_dir>/volumes/<owner>/<name>.ext4`, so two owners' volumes of one name never meet.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::request::Json;
use crate::state::AppState;
use crate::volume_files as files;

pub(crate) use crate::volume_names::valid_name;

/// 400 for a name that breaks the rule.
pub(crate) fn check_name(name: &str) -> ApiResult<()> {
    if valid_name(name) {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "invalid volume name {name:?}: letters, digits, '.', '_' and '-', starting with a letter \
         or digit, at most 63"
    )))
}

/// The API's view of a stored volume.
pub(crate) fn to_api(v: &store::Volume) -> api::PersistentVolume {
    api::PersistentVolume {
        id: v.id.clone(),
        user_id: v.owner.clone(),
        name: v.name.clone(),
        size_mb: v.size_mb,
        status: match v.status {
            store::VolumeStatus::Creating => "creating",
            store::VolumeStatus::Ready => "ready",
        }
        .into(),
        attachments: v
            .attachments
            .iter()
            .map(|a| api::VolumeAttachment {
                sandbox_id: a.sandbox_id.clone(),
                mount: a.mount.clone(),
                read_only: a.read_only,
            })
            .collect(),
        created_at: crate::times::rfc3339(v.created_at),
    }
}

/// An event of the owner's about a volume.
pub(crate) fn event(kind: &str, owner: &str, meta: serde_json::Value) -> store::NewEvent {
    store::NewEvent {
        ts: store::Timestamp::now(),
        kind: kind.to_owned(),
        user_id: owner.to_owned(),
        sandbox_id: String::new(),
        meta: meta.to_string(),
    }
}

/// Where the owner's volume of this name lives: `<data_dir>/volumes/<owner>/<name>.ext4` (the
/// start-up clean-up's layout, `store::DataDirs`). Names are checked first: no `/`, no leading
/// dot.
pub(crate) fn file_of(state: &AppState, owner: &str, name: &str) -> std::path::PathBuf {
    store::DataDirs::under(&state.settings.data_dir)
        .volumes
        .join(owner)
        .join(format!("{name}.ext4"))
}

/// The owner's volume by name (404 `volume "x" not found` otherwise).
pub(crate) async fn find(state: &AppState, owner: &str, name: &str) -> ApiResult<store::Volume> {
    check_name(name).map_err(|_| ApiError::NotFound(format!("volume {name:?} not found")))?;
    let (owner, name) = (owner.to_owned(), name.to_owned());
    Ok(state.store.read(move |s| s.volume(&owner, &name)).await?)
}

/// 409 when the volume is attached anywhere (v1's message).
pub(crate) fn detached(v: &store::Volume) -> ApiResult<()> {
    if v.attachments.is_empty() {
        return Ok(());
    }
    Err(ApiError::Conflict(format!(
        "volume {:?} has {} active attachment(s)",
        v.name,
        v.attachments.len()
    )))
}

/// The owner's volume, taken for a file operation and detached (checked after taking it, so
/// no attach slips in between: an attach takes the same lock).
pub(crate) async fn take_detached(
    state: &AppState,
    owner: &str,
    name: &str,
) -> ApiResult<(store::Volume, crate::volume_locks::VolumeLock)> {
    let v = find(state, owner, name).await?;
    detached(&v)?;
    let lock = crate::volume_locks::lock(&v)?;
    let v = find(state, owner, name).await?;
    detached(&v)?;
    if v.status == store::VolumeStatus::Creating {
        return Err(ApiError::Conflict(format!("volume {name:?} is being created, retry")));
    }
    Ok((v, lock))
}

/// Makes a new volume: the row (`creating`, quota and name checked in its transaction), the
/// file, then `ready` and `volume.created`. A file that cannot be made takes its row with it.
pub(crate) async fn make(
    state: &AppState,
    owner_id: &str,
    name: &str,
    size_mb: u32,
    from: Option<&store::Volume>,
) -> ApiResult<store::Volume> {
    let path = file_of(state, owner_id, name);
    let (owner, n, p) = (owner_id.to_owned(), name.to_owned(), path.clone());
    match state.store.write(move |s| s.create_volume(&owner, &n, size_mb, &p)).await {
        Ok(_) => {}
        Err(store::StoreError::Limit { used, max, .. }) => {
            return Err(ApiError::Quota(format!(
                "volume storage quota exceeded ({used}MB used, {max}MB max)"
            )));
        }
        Err(e) if e.kind() == store::ErrorKind::Conflict => {
            return Err(ApiError::Conflict(format!("volume {name:?} already exists")));
        }
        Err(e) => return Err(e.into()),
    };
    let made = match from {
        None => files::make(&path, size_mb).await,
        Some(source) => files::copy(&source.file_path, &path).await,
    };
    if let Err(e) = made {
        let (owner, n) = (owner_id.to_owned(), name.to_owned());
        if let Err(undo) = state.store.write(move |s| s.delete_volume(&owner, &n)).await {
            tracing::error!(volume = %name, "removing the row of a failed volume create: {undo}");
        }
        return Err(e);
    }
    let (owner, n) = (owner_id.to_owned(), name.to_owned());
    let (kind, meta) = match from {
        None => ("volume.created", serde_json::json!({ "name": name, "size_mb": size_mb })),
        Some(source) => {
            ("volume.snapshot", serde_json::json!({ "name": name, "source": source.name }))
        }
    };
    let ev = event(kind, owner_id, meta);
    Ok(state
        .store
        .write(move |s| {
            s.set_volume_ready(&owner, &n)?;
            s.record_events(&[ev])?;
            s.volume(&owner, &n)
        })
        .await?)
}

/// `GET /volumes`, newest first.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<axum::Json<Vec<api::PersistentVolume>>> {
    let owner = user.id.clone();
    let rows = state.store.read(move |s| s.list_volumes(&owner)).await?;
    Ok(axum::Json(rows.iter().map(to_api).collect()))
}

/// `POST /volumes {"name","size_mb"}`.
pub async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Json(req): Json<api::CreateVolumeRequest>,
) -> ApiResult<Response> {
    if req.name.is_empty() || req.size_mb == 0 {
        return Err(ApiError::BadRequest("name and size_mb (> 0) are required".into()));
    }
    check_name(&req.name)?;
    let v = make(&state, &user.id, &req.name, req.size_mb, None).await?;
    Ok((StatusCode::CREATED, axum::Json(to_api(&v))).into_response())
}

/// `GET /volumes/:name`, with its attachments.
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<api::PersistentVolume>> {
    Ok(axum::Json(to_api(&find(&state, &user.id, &name).await?)))
}

/// `DELETE /volumes/:name`: refused while attached; the row goes, then the file (a crash in
/// between leaves a file the start-up clean-up removes).
pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<api::StatusOnly>> {
    let (_v, _lock) = take_detached(&state, &user.id, &name).await?;
    let (owner, n) = (user.id.clone(), name.clone());
    let ev = event("volume.deleted", &user.id, serde_json::json!({ "name": name }));
    let gone = state
        .store
        .write(move |s| {
            let v = s.delete_volume(&owner, &n)?;
            s.record_events(&[ev])?;
            Ok(v)
        })
        .await;
    let gone = match gone {
        Ok(v) => v,
        Err(e) if e.kind() == store::ErrorKind::Conflict => {
            // Attached between the check and the delete.
            let v = find(&state, &user.id, &name).await?;
            detached(&v)?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    files::remove(&gone.file_path).await;
    Ok(axum::Json(api::StatusOnly { status: "deleted".into() }))
}

/// `POST /volumes/:name/resize {"size_mb"}`: grow only, detached, within the quota.
pub async fn resize(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
    Json(req): Json<api::ResizeVolumeRequest>,
) -> ApiResult<axum::Json<api::VolumeResized>> {
    let (v, _lock) = take_detached(&state, &user.id, &name).await?;
    if req.size_mb <= v.size_mb {
        return Err(ApiError::BadRequest(format!(
            "new size ({} MB) must be larger than the current size ({} MB)",
            req.size_mb, v.size_mb
        )));
    }
    // v1 did not check the quota again, so one resize could ask the host for any size; the
    // growth counts against it here.
    let owner = user.id.clone();
    let used = state.store.read(move |s| s.volume_storage_used(&owner)).await?;
    let (max, grown) = (u64::from(user.quotas.max_volume_storage_mb), used - u64::from(v.size_mb));
    if grown + u64::from(req.size_mb) > max {
        return Err(ApiError::Quota(format!(
            "volume storage quota exceeded ({used}MB used, {max}MB max)"
        )));
    }
    files::grow(&v.file_path, req.size_mb).await?;
    let (owner, n, size) = (user.id.clone(), name.clone(), req.size_mb);
    let ev = event(
        "volume.resized",
        &user.id,
        serde_json::json!({ "name": name, "from_mb": v.size_mb, "size_mb": size }),
    );
    state
        .store
        .write(move |s| {
            s.resize_volume(&owner, &n, size)?;
            s.record_events(&[ev])
        })
        .await?;
    Ok(axum::Json(api::VolumeResized { status: "resized".into(), size_mb: size }))
}

/// `POST /volumes/:name/snapshot {"name"}`: an independent copy of a detached volume.
pub async fn snapshot(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
    Json(req): Json<api::CloneVolumeRequest>,
) -> ApiResult<Response> {
    if req.name.is_empty() {
        return Err(ApiError::BadRequest("name is required".into()));
    }
    check_name(&req.name)?;
    let (source, _lock) = take_detached(&state, &user.id, &name).await?;
    let v = make(&state, &user.id, &req.name, source.size_mb, Some(&source)).await?;
    Ok((StatusCode::CREATED, axum::Json(to_api(&v))).into_response())
}
