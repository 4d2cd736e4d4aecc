//! Named snapshots (host.md 1.21): `POST /sandboxes/:id/checkpoint`, `GET /snapshots`,
//! `GET/DELETE /snapshots/:name`, `POST /snapshots/:name/resume`.
//!
//! The store keeps the row (name, owner, size, the source's shape); the engine keeps the files
//! (`checkpoints/<owner>/<key>/`, where the key is 16 random hex digits: API names allow
//! upper case, dots and underscores, the engine's directory names do not). A checkpoint is
//! captured first and recorded after (a crash in between leaves a directory without a row,
//! removed at the next start, see [`remove_orphans`]); a delete removes the row first and the
//! directory after. A resume is a create whose VM comes from the snapshot: it takes a row
//! (name, quota) first, with the source's cpus, memory, image and disk size.
//!
//! Volumes: the snapshot holds copies of the source's volumes as they were, and a resumed
//! sandbox runs on private copies of those in its own directory (v1's rule). They are no
//! attachments of the persistent volumes, so no attachment rows are written (v1 wrote some,
//! which then held volumes no VM used).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::Created;
use crate::names::{random_hex, valid_name};
use crate::request::Json;
use crate::sandboxes::to_api;
use crate::state::AppState;
use crate::times::rfc3339;

/// What the store's `manifest` column holds: the source's shape, for the resumed sandbox's
/// row (the engine's own manifest, with the agent token, stays in the snapshot's directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shape {
    cpus: f64,
    memory_mb: u32,
    #[serde(default)]
    disk_size_mb: u32,
    image: String,
    #[serde(default)]
    template_id: Option<String>,
    #[serde(default)]
    net_policy: api::NetPolicy,
}

fn to_api_snapshot(s: &store::Snapshot) -> api::Snapshot {
    api::Snapshot {
        id: s.id.clone(),
        user_id: s.owner.clone(),
        name: s.name.clone(),
        source_sandbox: s.source_sandbox.clone(),
        size_mb: s.size_mb,
        created_at: rfc3339(s.created_at),
    }
}

/// The engine's name of a snapshot: its directory's.
pub(crate) fn engine_key(s: &store::Snapshot) -> ApiResult<String> {
    s.dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Internal(format!("snapshot {:?} has no directory", s.name)))
}

fn check_name(what: &str, name: &str) -> ApiResult<()> {
    if name.is_empty() {
        return Err(ApiError::BadRequest(format!("{what} required")));
    }
    if !valid_name(name) {
        return Err(ApiError::BadRequest(format!(
            "invalid {what} {name:?}: letters, digits, '.', '_' and '-', starting with a letter \
             or digit, at most 63"
        )));
    }
    Ok(())
}

/// MiB, rounded up.
fn mib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX)
}

fn event(kind: &str, user: &str, sandbox: &str, meta: serde_json::Value) -> store::NewEvent {
    store::NewEvent {
        ts: store::Timestamp::now(),
        kind: kind.to_owned(),
        user_id: user.to_owned(),
        sandbox_id: sandbox.to_owned(),
        meta: meta.to_string(),
    }
}

/// Removes a checkpoint's files off the async threads; gone already is fine.
async fn remove_files(state: &AppState, owner: &str, key: &str) {
    let (engine, owner, name) = (state.engine.clone(), owner.to_owned(), key.to_owned());
    let removed =
        tokio::task::spawn_blocking(move || engine.delete_checkpoint(&owner, &name)).await;
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == engine::ErrorKind::NotFound => {}
        Ok(Err(e)) => tracing::error!(checkpoint = %key, "removing a checkpoint: {}", e.report()),
        Err(e) => tracing::error!(checkpoint = %key, "removing a checkpoint: {e}"),
    }
}

/// `POST /sandboxes/:id/checkpoint {"name"}`: 201 with the snapshot. The source keeps running
/// (a warm one stays warm; one the thermal manager put to sleep is woken first); one its user
/// stopped is refused (409).
pub async fn checkpoint(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Json(req): Json<api::CheckpointRequest>,
) -> ApiResult<Response> {
    check_name("name", &req.name)?;
    let mut sandbox = crate::sandboxes::resolve(&state, &user, &id).await?;
    match sandbox.status {
        store::Status::Creating => {
            return Err(ApiError::Refused(bhatti_core::Refusal::Creating));
        }
        store::Status::Running if !sandbox.user_stopped => {}
        store::Status::Unknown => return Err(ApiError::Refused(bhatti_core::Refusal::Lost)),
        _ => return Err(ApiError::NotRunning(sandbox.name)),
    }
    let (owner, name) = (user.id.clone(), req.name.clone());
    state.store.read(move |s| s.check_snapshot_room(&owner, &name)).await?;
    if state.engine.thermal(&sandbox.id).ok() == Some(engine::Thermal::Cold) {
        sandbox = crate::lifecycle::wake(&state, &sandbox).await?;
    }
    let key = random_hex(8);
    let captured = state.engine.checkpoint(&sandbox.id, &key).await?;
    tracing::info!(
        sandbox = %sandbox.id, snapshot = %req.name, took = ?captured.took,
        bytes = captured.bytes, "checkpoint"
    );
    let shape = Shape {
        cpus: sandbox.cpus,
        memory_mb: sandbox.memory_mb,
        disk_size_mb: sandbox.disk_size_mb,
        image: sandbox.image.clone(),
        template_id: sandbox.template_id.clone(),
        net_policy: sandbox.net_policy.clone(),
    };
    let manifest = serde_json::to_string(&shape).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (owner, name, source, dir) =
        (user.id.clone(), req.name.clone(), sandbox.id.clone(), captured.dir.clone());
    let size_mb = mib(captured.bytes);
    let meta = serde_json::json!({
        "name": req.name, "source": sandbox.id, "size_mb": size_mb,
        "took_ms": captured.took.as_millis() as u64,
    });
    let recorded = state
        .store
        .write(move |s| {
            let row = s.create_snapshot(&owner, &name, &source, &dir, &manifest, size_mb)?;
            s.record_events(&[event("snapshot.created", &owner, &source, meta)])?;
            Ok(row)
        })
        .await;
    match recorded {
        Ok(row) => Ok((StatusCode::CREATED, axum::Json(to_api_snapshot(&row))).into_response()),
        Err(e) => {
            // Another request took the name or the last slot meanwhile: this capture goes.
            remove_files(&state, &user.id, &key).await;
            Err(e.into())
        }
    }
}

async fn snapshot_row(
    state: &AppState,
    user: &store::User,
    name: &str,
) -> ApiResult<store::Snapshot> {
    let (owner, name) = (user.id.clone(), name.to_owned());
    Ok(state.store.read(move |s| s.snapshot(&owner, &name)).await?)
}

/// `GET /snapshots`: the caller's, newest first.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<Response> {
    let owner = user.id.clone();
    let rows = state.store.read(move |s| s.list_snapshots(&owner)).await?;
    let out: Vec<api::Snapshot> = rows.iter().map(to_api_snapshot).collect();
    Ok(axum::Json(out).into_response())
}

/// `GET /snapshots/:name` (another owner's is 404).
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let row = snapshot_row(&state, &user, &name).await?;
    Ok(axum::Json(to_api_snapshot(&row)).into_response())
}

/// `DELETE /snapshots/:name`: the row, then the files; `{"status":"deleted"}`.
pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let (owner, key) = (user.id.clone(), name.clone());
    let row = state
        .store
        .write(move |s| {
            let row = s.delete_snapshot(&owner, &key)?;
            let meta = serde_json::json!({ "name": row.name, "source": row.source_sandbox });
            s.record_events(&[event("snapshot.deleted", &owner, &row.source_sandbox, meta)])?;
            Ok(row)
        })
        .await?;
    if let Ok(key) = engine_key(&row) {
        remove_files(&state, &user.id, &key).await;
    }
    Ok(axum::Json(api::StatusBody { status: "deleted".into() }).into_response())
}

/// `POST /snapshots/:name/resume {"name"?}`: a new sandbox (201) with the snapshot's memory,
/// processes and files, its own ID, name, address, MAC and agent token, beside the source if
/// that still runs. A name in use is 409; the sandbox quota applies (429).
pub async fn resume(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(snapshot): Path<String>,
    Json(req): Json<api::ResumeRequest>,
) -> ApiResult<Response> {
    if !req.name.is_empty() {
        check_name("name", &req.name)?;
    }
    let row = snapshot_row(&state, &user, &snapshot).await?;
    let shape: Shape = serde_json::from_str(&row.manifest).map_err(|e| {
        ApiError::Internal(format!("snapshot {:?} has a damaged manifest: {e}", row.name))
    })?;
    let key = engine_key(&row)?;
    let name = if req.name.is_empty() {
        // v1's default; a long snapshot name is cut so the result stays a valid name.
        let base: String = row.name.chars().take(56).collect();
        format!("{base}-{}", random_hex(3))
    } else {
        req.name.clone()
    };
    check_name("name", &name)?;
    let new = store::NewSandbox {
        owner: user.id.clone(),
        name: name.clone(),
        template_id: shape.template_id.clone(),
        image: shape.image.clone(),
        cpus: shape.cpus,
        memory_mb: shape.memory_mb,
        disk_size_mb: shape.disk_size_mb,
        labels: Default::default(),
        keep_hot: false,
        net_policy: shape.net_policy.clone(),
    };
    // The clone contract: the resumed guest takes its own name as its hostname.
    let (engine, owner, hostname) =
        (state.engine.clone(), user.id.clone(), crate::sandboxes::hostname_of(&name));
    let build = |id: String| async move {
        engine
            .create_from_checkpoint_of(&owner, &key, &owner, &id, Some(&hostname))
            .await
            .map(drop)
            .map_err(ApiError::from)
    };
    match crate::lifecycle::create_built(&state, new, build).await? {
        Created::New(sandbox) => {
            let (owner, sid) = (user.id.clone(), sandbox.id.clone());
            let meta = serde_json::json!({ "snapshot": row.name, "name": sandbox.name });
            let logged = state
                .store
                .write(move |s| s.record_events(&[event("snapshot.resumed", &owner, &sid, meta)]))
                .await;
            if let Err(e) = logged {
                tracing::warn!(sandbox = %sandbox.id, "recording snapshot.resumed: {e}");
            }
            Ok((StatusCode::CREATED, axum::Json(to_api(&sandbox))).into_response())
        }
        Created::Existing(existing) => {
            Err(ApiError::Conflict(format!("name {:?} is already in use", existing.name)))
        }
    }
}

/// At the daemon's start: checkpoint directories without a row (a crash between the capture
/// and its row, or between a delete's row and its files) are removed. Staging directories
/// (`*.tmp-*`) are the engine's to remove at its start.
pub async fn remove_orphans(state: &AppState) -> ApiResult<usize> {
    let rows = state.store.read(|s| s.list_all_snapshots()).await?;
    let mut known: std::collections::HashSet<(String, String)> =
        rows.iter().filter_map(|r| Some((r.owner.clone(), engine_key(r).ok()?))).collect();
    // The shape snapshots' checkpoints are the shape store's (`shapes.rs`).
    known.extend(crate::shapes::kept(state).await);
    let engine = state.engine.clone();
    let removed = tokio::task::spawn_blocking(move || engine.remove_checkpoints_except(&known))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table() {
        let table = [
            ("plain", "cp1", Ok(())),
            ("v1's characters", "My.Snap_1-x", Ok(())),
            ("empty", "", Err("name required")),
            ("leading dash", "-x", Err("invalid name")),
            ("leading dot", ".x", Err("invalid name")),
            ("a space", "a b", Err("invalid name")),
            ("a slash", "a/b", Err("invalid name")),
            ("dot dot", "..", Err("invalid name")),
            ("64 chars", &*"n".repeat(64), Err("invalid name")),
        ];
        for (what, name, want) in table {
            match (check_name("name", name), want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{what}: {e}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn sizes_round_up_to_mib() {
        assert_eq!(mib(0), 0);
        assert_eq!(mib(1), 1);
        assert_eq!(mib(1 << 20), 1);
        assert_eq!(mib((1 << 20) + 1), 2);
        assert_eq!(mib(u64::MAX), u32::MAX);
    }

    #[test]
    fn the_stored_shape_round_trips() {
        let shape = Shape {
            cpus: 0.5,
            memory_mb: 256,
            disk_size_mb: 0,
            image: "test".into(),
            template_id: None,
            net_policy: api::NetPolicy::default(),
        };
        let text = serde_json::to_string(&shape).unwrap();
        assert_eq!(serde_json::from_str::<Shape>(&text).unwrap(), shape);
    }
}
