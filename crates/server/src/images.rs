//! Image routes (host.md 1.20): list, get, delete, import a `docker save` tarball, save a
//! sandbox's disk (the built-in images and `create --image`'s lookup are `image_catalog.rs`).
//!
//! Files: a user's images are `<data_dir>/images/<owner>/<image id>.ext4` (named by the ID, so
//! two owners, or a name deleted and made again, never share a file), written under a
//! temporary name in that directory and renamed only when complete.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::image_convert::ConvertError;
use crate::request::Json;
use crate::state::AppState;
use crate::times::rfc3339;

/// The API's view of an image row.
pub fn to_api(i: &store::Image) -> api::Image {
    api::Image {
        id: i.id.clone(),
        user_id: i.owner.clone().unwrap_or_default(),
        name: i.name.clone(),
        source: i.source.clone(),
        size_mb: u64::from(i.size_mb),
        oci_digest: i.oci_digest.clone(),
        created_at: rfc3339(i.created_at),
    }
}

/// v1's name rule (as sandboxes): letters, digits, `.`, `_`, `-`, starting with a letter or
/// digit, at most 63.
pub fn check_name(name: &str) -> ApiResult<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if name.is_empty() {
        return Err(ApiError::BadRequest("name required".into()));
    }
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "invalid image name {name:?}: letters, digits, '.', '_' and '-', starting with a \
             letter or digit, at most 63"
        )));
    }
    Ok(())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = getrandom::fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new image ID (`img_` + 16 hex, the store's shape).
pub fn new_image_id() -> String {
    format!("img_{}", random_hex(8))
}

/// Where an owner's image files live (created 0700 if missing).
pub fn owner_dir(state: &AppState, owner: &str) -> ApiResult<PathBuf> {
    let dir = state.settings.data_dir.join("images").join(owner);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}

/// `GET /images`: own, shared with the user, global; newest first.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<Response> {
    crate::image_catalog::sync_builtins(&state).await?;
    let owner = user.id.clone();
    let rows = state.store.read(move |s| s.list_images(&owner)).await?;
    Ok(axum::Json(rows.iter().map(to_api).collect::<Vec<_>>()).into_response())
}

/// `GET /images/:name`.
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Response> {
    crate::image_catalog::sync_builtins(&state).await?;
    let (owner, key) = (user.id.clone(), name.clone());
    let image = state.store.read(move |s| s.image_for(&owner, &key)).await?;
    Ok(axum::Json(to_api(&image)).into_response())
}

/// `DELETE /images/:name`: the user's own image only (a global or shared one: 403), and not
/// while a sandbox boots from it (409: its disk is an overlay on the file).
pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Response> {
    let (owner, key) = (user.id.clone(), name.clone());
    let image = state.store.read(move |s| s.image_for(&owner, &key)).await?;
    match &image.owner {
        None => {
            return Err(ApiError::Forbidden(format!(
                "image {name:?} is a global image: it cannot be deleted by a user"
            )));
        }
        Some(o) if *o != user.id => {
            return Err(ApiError::Forbidden(format!(
                "image {name:?} is shared with you: only its owner can delete it"
            )));
        }
        Some(_) => {}
    }
    let probe = image.clone();
    let users = state.store.read(move |s| s.image_users(&probe)).await?;
    if users > 0 {
        return Err(ApiError::InUse(format!(
            "image {name:?} is in use by {users} sandbox(es): destroy them first"
        )));
    }
    let (owner, key) = (user.id.clone(), name.clone());
    let deleted = state.store.write(move |s| s.delete_image(&owner, &key)).await?;
    let file = deleted.file_path.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(file)).await;
    tracing::info!(image = %name, user = %user.id, "image.deleted");
    record(&state, "image.deleted", &user.id, "", serde_json::json!({ "image": name }));
    Ok(axum::Json(api::StatusBody { status: "deleted".into() }).into_response())
}

/// The `name` query parameter.
fn name_param(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.into_owned())
}

/// Refuses, before any work (an upload, a copy), a name the user already has (409) and a full
/// `max_images` quota (429); the insert checks both again in its transaction.
async fn refuse_taken(state: &AppState, user: &store::User, name: &str) -> ApiResult<()> {
    let (owner, key) = (user.id.clone(), name.to_owned());
    let rows = state.store.read(move |s| s.list_images(&owner)).await?;
    let own: Vec<&store::Image> =
        rows.iter().filter(|i| i.owner.as_deref() == Some(user.id.as_str())).collect();
    if own.iter().any(|i| i.name == key) {
        return Err(ApiError::Store(store::StoreError::Conflict {
            kind: store::Resource::Image,
            name: name.to_owned(),
            what: "already exists".into(),
        }));
    }
    let max = u64::from(user.quotas.max_images);
    if own.len() as u64 >= max {
        return Err(ApiError::Store(store::StoreError::Limit {
            kind: store::Resource::Image,
            used: own.len() as u64,
            max,
        }));
    }
    Ok(())
}

/// The lohar binary injected into converted images.
fn lohar(state: &AppState) -> ApiResult<PathBuf> {
    let path = state.settings.lohar.clone();
    if !path.is_file() {
        return Err(ApiError::Internal(format!(
            "the guest agent to inject is missing: {} (config key `lohar`)",
            path.display()
        )));
    }
    Ok(path)
}

/// A conversion error as an answer: the input's fault is 400 `import failed: ...`, a full
/// disk 507, the rest ours.
pub fn convert_error(e: ConvertError) -> ApiError {
    if e.is_no_space() {
        return ApiError::NoSpace("import failed: no space left on the daemon's disk".into());
    }
    match e {
        ConvertError::Invalid(m) => ApiError::BadRequest(format!("import failed: {m}")),
        other => ApiError::Internal(format!("import failed: {other}")),
    }
}

/// Moves a finished file into place under `<owner dir>/<id>.ext4`, flushed, and records the
/// image; on a refused insert the file goes again.
pub async fn publish(
    state: &AppState,
    mut new: store::NewImage,
    done: PathBuf,
    dir: PathBuf,
) -> ApiResult<store::Image> {
    let id = new_image_id();
    let dest = dir.join(format!("{id}.ext4"));
    let (from, to) = (done.clone(), dest.clone());
    let size = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let f = std::fs::File::open(&from)?;
        f.sync_all()?;
        let len = f.metadata()?.len();
        std::fs::rename(&from, &to)?;
        if let Some(parent) = to.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(len)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("publishing the image: {e}")))?
    .map_err(|e| ApiError::Internal(format!("publishing {}: {e}", dest.display())))?;
    new.id = Some(id);
    new.file_path = dest.clone();
    new.size_mb = u32::try_from(size.div_ceil(1024 * 1024)).unwrap_or(u32::MAX);
    match state.store.write(move |s| s.create_image(&new)).await {
        Ok(image) => Ok(image),
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(dest)).await;
            Err(e.into())
        }
    }
}

/// `POST /images/import?name=<name>`: the body is a `docker save` tarball, streamed to a file
/// in a work directory beside the image files (never held in memory), capped at
/// `image_import_max_bytes` (413), converted (400 `import failed: ...` for a bad tarball);
/// the work directory goes however it ends. 201 `{"name","size_mb"}`.
pub async fn import(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let name = name_param(query.as_deref()).unwrap_or_default();
    check_name(&name)?;
    refuse_taken(&state, &user, &name).await?;
    let cap = state.settings.image_import_max_bytes;
    let too_large = || {
        ApiError::TooLarge(format!(
            "image tarball over {cap} bytes (the daemon's image_import_max_bytes)"
        ))
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    let lohar = lohar(&state)?;
    let dir = owner_dir(&state, &user.id)?;
    let work = tempfile::Builder::new()
        .prefix(".import-")
        .tempdir_in(&dir)
        .map_err(|e| ApiError::Internal(format!("a work directory in {}: {e}", dir.display())))?;
    let upload = work.path().join("upload.tar");
    let mut file = tokio::fs::File::create(&upload)
        .await
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", upload.display())))?;
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        received += chunk.len() as u64;
        if received > cap {
            return Err(too_large());
        }
        file.write_all(&chunk).await.map_err(|e| {
            if e.raw_os_error() == Some(28) {
                ApiError::NoSpace("import failed: no space left on the daemon's disk".into())
            } else {
                ApiError::Internal(format!("writing {}: {e}", upload.display()))
            }
        })?;
    }
    file.flush().await.map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
    drop(file);
    let out = work.path().join("image.ext4");
    let warnings = crate::image_convert::docker_archive_to_ext4(
        upload,
        work.path().join("tree"),
        lohar,
        out.clone(),
    )
    .await
    .map_err(convert_error)?;
    for w in &warnings {
        tracing::warn!(image = %name, "import: {w}");
    }
    let new = store::NewImage {
        owner: Some(user.id.clone()),
        name: name.clone(),
        source: format!("import:{name}"),
        ..store::NewImage::default()
    };
    let image = publish(&state, new, out, dir).await?;
    // The work directory (the upload, the tree) goes now, off the async threads.
    let _ = tokio::task::spawn_blocking(move || drop(work)).await;
    tracing::info!(image = %name, user = %user.id, size_mb = image.size_mb, "image.imported");
    let meta = serde_json::json!({ "image": name, "size_mb": image.size_mb });
    record(&state, "image.imported", &user.id, "", meta);
    let body = api::Imported { name, size_mb: u64::from(image.size_mb) };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `POST /sandboxes/:id/save-image {"name"}`: the sandbox's disk (its overlay over its image)
/// flattened into a standalone ext4 image of the user's, source `saved:<id>`. The guest's
/// caches are flushed first (`sync`), then it is paused only while the disk is copied. A
/// sandbox its user stopped is refused (409: start it first).
pub async fn save(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<api::SaveImageRequest>,
) -> ApiResult<Response> {
    check_name(&req.name)?;
    let sandbox = crate::sandboxes::resolve_for_guest(&state, &user, &id).await?;
    refuse_taken(&state, &user, &req.name).await?;
    // What the guest wrote reaches its disk (a lease: wakes a sleeping sandbox). An image
    // without a `sync` program is copied as its kernel last wrote it (crash-consistent).
    match state.engine.exec(&sandbox.id, &["sync"]).await {
        Ok(out) if out.exit_code == 0 => {}
        Ok(out) => {
            tracing::warn!(sandbox = %sandbox.id, "sync in the guest exited {}", out.exit_code)
        }
        Err(e) if matches!(e.kind(), engine::ErrorKind::Guest(_)) => {
            tracing::warn!(sandbox = %sandbox.id, "no sync in the guest: {}", e.report());
        }
        Err(e) => return Err(e.into()),
    }
    let dir = owner_dir(&state, &user.id)?;
    let work = tempfile::Builder::new()
        .prefix(".save-")
        .tempdir_in(&dir)
        .map_err(|e| ApiError::Internal(format!("a work directory in {}: {e}", dir.display())))?;
    let out = work.path().join("image.ext4");
    state.engine.save_disk(&sandbox.id, &out).await?;
    let new = store::NewImage {
        owner: Some(user.id.clone()),
        name: req.name.clone(),
        source: format!("saved:{}", sandbox.id),
        ..store::NewImage::default()
    };
    let image = publish(&state, new, out, dir).await?;
    let _ = tokio::task::spawn_blocking(move || drop(work)).await;
    tracing::info!(image = %req.name, sandbox = %sandbox.id, "image.saved");
    let meta = serde_json::json!({ "image": req.name, "size_mb": image.size_mb });
    record(&state, "image.saved", &user.id, &sandbox.id, meta);
    Ok((StatusCode::CREATED, axum::Json(to_api(&image))).into_response())
}

/// Records one of v1's `image.*` events (never the registry's credentials: only names, sizes,
/// references and error texts, which carry none).
pub(crate) fn record(
    state: &AppState,
    kind: &str,
    user_id: &str,
    sandbox_id: &str,
    meta: serde_json::Value,
) {
    state.events.record(store::NewEvent {
        user_id: user_id.to_owned(),
        sandbox_id: sandbox_id.to_owned(),
        meta: meta.to_string(),
        ..store::NewEvent::now(kind)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for (name, ok) in [
            ("alpine", true),
            ("my-image_1.0", true),
            ("", false),
            ("-x", false),
            (".x", false),
            ("a/b", false),
            ("a b", false),
            ("../x", false),
            (&"x".repeat(64), false),
            (&"x".repeat(63), true),
        ] {
            assert_eq!(check_name(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn the_name_comes_from_the_query() {
        assert_eq!(name_param(Some("name=a%2Db")).as_deref(), Some("a-b"));
        assert_eq!(name_param(Some("x=1")), None);
        assert_eq!(name_param(None), None);
    }
}
