//! Shape snapshots (issue 24's template snapshots): a create that can restores a private clone
//! of a checkpoint of its shape instead of booting a kernel.
//!
//! - [`plan`] finds a create's shape key (`shape.rs` has the rules and what is in the key).
//! - [`create`] is the create's VM step: with a shape snapshot of its key it restores one
//!   (`engine.create_from_checkpoint_of`, under the sandbox's own hostname, its egress policy
//!   applied before the answer); without, it boots as before and then, before the create
//!   answers (the user has run nothing yet), captures the fresh sandbox as the shape's
//!   snapshot. Concurrent first creates of a shape: one captures, the others only boot. A
//!   failed capture is logged, never the create's error; a failed restore boots.
//! - `POST /templates/:name/warm` (`shape_warm.rs`) captures a template's shape ahead, from a hidden sandbox of
//!   the daemon (no row, no user's quota). `GET /shapes` and `DELETE /shapes/:key` (admin).
//! - Stale snapshots (their kernel or image file changed or went) are removed at the start and
//!   after each capture, unless a sandbox restored from one still has a row.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};

use crate::admin::Admin;
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::Created;
use crate::shape::{self, FileId, Key};
use crate::shape_store::{Entry, SHAPES_OWNER, file_id, unchanged};
use crate::state::AppState;
use crate::times::rfc3339;

/// A create's shape: its key, or why it boots.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) key: Option<Key>,
    pub(crate) kernel: Option<FileId>,
    pub(crate) image_file: Option<FileId>,
    image: String,
    cpus: f64,
    memory_mb: u32,
    disk_size_mb: u32,
}

/// The kernel's and the image's identities (off the async threads), then the rules.
pub(crate) async fn plan(
    state: &AppState,
    req: &api::CreateSandbox,
    image_name: &str,
    image: &Path,
    cpus: f64,
    memory_mb: u32,
) -> Plan {
    let mut plan = Plan {
        key: None,
        kernel: None,
        image_file: None,
        image: image_name.to_owned(),
        cpus,
        memory_mb,
        disk_size_mb: req.disk_size_mb,
    };
    if !state.shapes.enabled() {
        return plan;
    }
    let (kernel, image) = (state.engine.kernel_path().to_owned(), image.to_owned());
    let ids = tokio::task::spawn_blocking(move || {
        Ok::<_, std::io::Error>((file_id(&kernel)?, file_id(&image)?))
    })
    .await;
    let (kernel, image_file) = match ids {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => {
            tracing::warn!("shape snapshots: cannot identify the kernel or the image ({e}): boot");
            return plan;
        }
        Err(e) => {
            tracing::warn!("shape snapshots: {e}");
            return plan;
        }
    };
    let input = shape::Input {
        req,
        cpus,
        memory_mb,
        kernel: &kernel,
        image: &image_file,
        enabled: state.shapes.enabled(),
    };
    match shape::restorable(&input) {
        Ok(key) => plan.key = Some(key),
        Err(why) => tracing::debug!("create boots: {why}"),
    }
    plan.kernel = Some(kernel);
    plan.image_file = Some(image_file);
    plan
}

/// The create's VM: a restore of the shape's snapshot when there is one, else a boot (and the
/// shape's capture, when this create is its first).
pub(crate) async fn create(
    state: &AppState,
    plan: Plan,
    new: store::NewSandbox,
    volumes: &[api::CreateVolume],
    spec_for: impl FnOnce(&str) -> ApiResult<engine::CreateSpec>,
) -> ApiResult<Created> {
    let Some(key) = plan.key.clone() else {
        return crate::lifecycle::create_with_volumes(state, new, volumes, spec_for).await;
    };
    let ready = state.shapes.get(&key.0).await.is_some()
        && state.engine.has_checkpoint(SHAPES_OWNER, &key.0);
    if !ready {
        let created = crate::lifecycle::create_with_volumes(state, new, volumes, spec_for).await?;
        if let Created::New(row) = &created {
            capture(state, &plan, &key, &row.id, &row.name, &row.owner).await;
        }
        return Ok(created);
    }
    let restored = AtomicBool::new(false);
    let (owner, restored_ref, key_ref) = (new.owner.clone(), &restored, &key);
    let build = |id: String| async move {
        let key = key_ref;
        let spec = spec_for(&id)?;
        let started = Instant::now();
        let from = state
            .engine
            .create_from_checkpoint_of(SHAPES_OWNER, &key.0, &owner, &id, Some(&spec.hostname))
            .await;
        match from {
            Ok(_) => {
                // The shape's policy came with the checkpoint: the sandbox's own replaces it
                // before anyone can use the sandbox.
                if let Err(e) = state.engine.set_net_policy(&id, spec.net_policy.clone()).await {
                    undo(state, &id).await;
                    return Err(e.into());
                }
                restored_ref.store(true, Ordering::Relaxed);
                tracing::info!(
                    sandbox = %id, shape = %key.0, took_ms = started.elapsed().as_millis() as u64,
                    "restored from a shape snapshot"
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, shape = %key.0, "restoring a shape snapshot failed, booting: {}", e.report());
                if e.kind() == engine::ErrorKind::NotFound {
                    let _ = state.shapes.forget(std::slice::from_ref(&key.0)).await;
                }
                let _booting = crate::telemetry::InFlight::boot();
                state.engine.create(&spec).await.map(drop).map_err(ApiError::from)
            }
        }
    };
    let created = crate::lifecycle::create_built(state, new, build).await?;
    if let Created::New(row) = &created
        && restored.load(Ordering::Relaxed)
    {
        state.shapes.used(&key.0, &row.id, store::Timestamp::now().millis()).await;
        let meta = serde_json::json!({ "shape": key.0, "name": row.name });
        state.events.record(store::NewEvent {
            user_id: row.owner.clone(),
            sandbox_id: row.id.clone(),
            meta: meta.to_string(),
            ..store::NewEvent::now("shape.restored")
        });
    }
    Ok(created)
}

/// Destroys a restored VM whose create then failed (its row goes with `create_built`).
pub(crate) async fn undo(state: &AppState, id: &str) {
    match state.engine.destroy(id).await {
        Ok(()) => {}
        Err(e) if e.kind() == engine::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(sandbox = %id, "undoing a restore: {}", e.report()),
    }
}

/// Captures the fresh sandbox `id` as the snapshot of `key`, unless another create is at it
/// or it exists; a failure is logged (the sandbox booted fine). Answers whether it captured.
pub(crate) async fn capture(
    state: &AppState,
    plan: &Plan,
    key: &Key,
    id: &str,
    source: &str,
    user: &str,
) -> bool {
    let (Some(kernel), Some(image_file)) = (plan.kernel.clone(), plan.image_file.clone()) else {
        return false;
    };
    let Some(_mine) = state.shapes.try_capture(&key.0) else {
        return false;
    };
    if state.engine.has_checkpoint(SHAPES_OWNER, &key.0) {
        return false;
    }
    let started = Instant::now();
    let captured = match state.engine.checkpoint_as(id, SHAPES_OWNER, &key.0).await {
        Ok(captured) => captured,
        Err(e) => {
            tracing::warn!(sandbox = %id, shape = %key.0, "capturing a shape snapshot: {}", e.report());
            return false;
        }
    };
    let entry = Entry {
        key: key.0.clone(),
        image: plan.image.clone(),
        image_file,
        kernel,
        cpus: plan.cpus,
        memory_mb: plan.memory_mb,
        disk_size_mb: plan.disk_size_mb,
        source: source.to_owned(),
        created_at: store::Timestamp::now().millis(),
        last_used: None,
        uses: 0,
        restored: Default::default(),
    };
    if let Err(e) = state.shapes.record(entry).await {
        tracing::warn!(shape = %key.0, "recording a shape snapshot: {e}");
        remove_files(state, &key.0).await;
        return false;
    }
    let took_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        sandbox = %id, shape = %key.0, took_ms, bytes = captured.bytes,
        sync_ms = captured.sync.as_millis() as u64, "shape snapshot recorded"
    );
    let meta = serde_json::json!({ "shape": key.0, "image": plan.image, "took_ms": took_ms });
    state.events.record(store::NewEvent {
        user_id: user.to_owned(),
        sandbox_id: if user.is_empty() { String::new() } else { id.to_owned() },
        meta: meta.to_string(),
        ..store::NewEvent::now("shape.recorded")
    });
    let swept = state.clone();
    tokio::spawn(async move {
        if let Err(e) = sweep(&swept).await {
            tracing::warn!("removing stale shape snapshots: {e}");
        }
    });
    true
}

async fn remove_files(state: &AppState, key: &str) {
    let (engine, name) = (state.engine.clone(), key.to_owned());
    match tokio::task::spawn_blocking(move || engine.delete_checkpoint(SHAPES_OWNER, &name)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == engine::ErrorKind::NotFound => {}
        Ok(Err(e)) => tracing::warn!(shape = %key, "removing a shape snapshot: {}", e.report()),
        Err(e) => tracing::warn!(shape = %key, "removing a shape snapshot: {e}"),
    }
}

/// Removes the shape snapshots whose kernel or image file changed or went (no key can name
/// them again), unless a sandbox restored from one still has a row. Answers how many went.
pub async fn sweep(state: &AppState) -> ApiResult<usize> {
    let rows = state.store.read(|s| s.list_all_sandboxes()).await?;
    let live: HashSet<String> =
        rows.into_iter().filter(|r| r.status != store::Status::Destroyed).map(|r| r.id).collect();
    state.shapes.prune_restored(&live).await;
    let entries = state.shapes.list().await;
    let stale = tokio::task::spawn_blocking(move || {
        entries
            .into_iter()
            .filter(|e| !(unchanged(&e.kernel) && unchanged(&e.image_file)))
            .filter(|e| e.restored.is_empty())
            .map(|e| e.key)
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    state.shapes.forget(&stale).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    for key in &stale {
        tracing::info!(shape = %key, "stale shape snapshot removed (its kernel or image changed)");
        remove_files(state, key).await;
    }
    Ok(stale.len())
}

/// The checkpoints the shape store keeps, as `(owner, name)` (the orphan sweep keeps these).
pub async fn kept(state: &AppState) -> Vec<(String, String)> {
    state.shapes.list().await.into_iter().map(|e| (SHAPES_OWNER.to_owned(), e.key)).collect()
}

fn to_api(e: &Entry) -> api::ShapeSnapshot {
    api::ShapeSnapshot {
        key: e.key.clone(),
        image: e.image.clone(),
        image_file: e.image_file.path.clone(),
        kernel: e.kernel.path.clone(),
        cpus: e.cpus,
        memory_mb: e.memory_mb,
        disk_size_mb: e.disk_size_mb,
        source: e.source.clone(),
        created_at: rfc3339(store::Timestamp(e.created_at)),
        last_used: e.last_used.map(|t| rfc3339(store::Timestamp(t))).unwrap_or_default(),
        uses: e.uses,
    }
}

/// `GET /shapes` (admin).
pub async fn list(State(state): State<AppState>, Admin(_admin): Admin) -> ApiResult<Response> {
    let list: Vec<api::ShapeSnapshot> = state.shapes.list().await.iter().map(to_api).collect();
    Ok(axum::Json(list).into_response())
}

/// `DELETE /shapes/:key` (admin): the entry, then its files. Sandboxes restored from it keep
/// running (their files are their own copies).
pub async fn delete(
    State(state): State<AppState>,
    Admin(_admin): Admin,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Response> {
    if state.shapes.get(&key).await.is_none() {
        return Err(ApiError::NotFound(format!("shape {key:?} not found")));
    }
    state
        .shapes
        .forget(std::slice::from_ref(&key))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    remove_files(&state, &key).await;
    Ok(axum::Json(api::StatusBody { status: "deleted".into() }).into_response())
}
