//! `POST /templates/:name/warm`: a template's shape snapshot captured ahead of its first create
//! (`shapes.rs` has the rest of shape snapshots).

use std::time::Instant;

use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::shape;
use crate::shape_store::SHAPES_OWNER;
use crate::shapes::{capture, plan, undo};
use crate::state::AppState;

/// `POST /templates/:name/warm`: the template's shape snapshot, captured now from a hidden
/// sandbox of the daemon unless it exists.
pub async fn warm(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    UrlPath(template): UrlPath<String>,
) -> ApiResult<Response> {
    let started = Instant::now();
    let mut req = api::CreateSandbox { template_id: template.clone(), ..Default::default() };
    crate::templates::apply(&state, &mut req).await?;
    let (cpus, memory_mb) = crate::sandboxes::shape(req.cpus, req.memory_mb, &user.quotas)
        .map_err(ApiError::BadRequest)?;
    let image_name =
        if req.image.is_empty() { state.settings.default_image.clone() } else { req.image.clone() };
    let image = crate::image_catalog::boot_file(&state, &user, &image_name).await?;
    if !state.shapes.enabled() {
        return Err(ApiError::Conflict("shape snapshots are off (shape_snapshots: false)".into()));
    }
    let plan = plan(&state, &req, &image_name, &image, cpus, memory_mb).await;
    let Some(key) = plan.key.clone() else {
        let why = shape::restorable(&shape::Input {
            req: &req,
            cpus,
            memory_mb,
            kernel: plan
                .kernel
                .as_ref()
                .ok_or_else(|| ApiError::Internal("kernel unidentified".into()))?,
            image: plan
                .image_file
                .as_ref()
                .ok_or_else(|| ApiError::Internal("image unidentified".into()))?,
            enabled: true,
        });
        let why = why.err().map(|w| w.to_string()).unwrap_or_default();
        return Err(ApiError::Conflict(format!("template {template:?} always boots: {why}")));
    };
    let answer = |created: bool| api::WarmResult {
        key: key.0.clone(),
        created,
        took_ms: started.elapsed().as_millis() as u64,
    };
    if state.shapes.get(&key.0).await.is_some() && state.engine.has_checkpoint(SHAPES_OWNER, &key.0)
    {
        return Ok(axum::Json(answer(false)).into_response());
    }
    let id = format!("shape-{}", crate::names::random_hex(6));
    let mut spec =
        crate::sandboxes::engine_spec(&id, SHAPES_OWNER, "shape", image, &req, cpus, memory_mb)?;
    spec.net_policy = bhatti_core::Policy::default();
    {
        let _booting = crate::telemetry::InFlight::boot();
        state.engine.create(&spec).await?;
    }
    let captured = capture(&state, &plan, &key, &id, "warm", "").await;
    undo(&state, &id).await;
    if !captured && !state.engine.has_checkpoint(SHAPES_OWNER, &key.0) {
        return Err(ApiError::Internal(format!(
            "capturing the shape of template {template:?} failed"
        )));
    }
    Ok(axum::Json(answer(captured)).into_response())
}
