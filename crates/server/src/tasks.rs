//! `GET /tasks/:id` and `DELETE /tasks/:id` (host.md 1.20): background tasks (image pulls) of
//! the caller; another owner's task is not found.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::times::rfc3339;

/// The API's view of a task row.
pub fn to_api(t: &store::Task) -> api::Task {
    api::Task {
        id: t.id.clone(),
        user_id: t.owner.clone(),
        kind: t.kind.clone(),
        status: match t.status {
            store::TaskStatus::Running => "running",
            store::TaskStatus::Completed => "completed",
            store::TaskStatus::Failed => "failed",
        }
        .into(),
        progress: t.progress.clone(),
        result: t.result.clone().unwrap_or_default(),
        error: t.error.clone().unwrap_or_default(),
        created_at: rfc3339(t.created_at),
        completed_at: t.completed_at.map(rfc3339),
    }
}

/// `GET /tasks/:id`.
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let owner = user.id.clone();
    let task = state.store.read(move |s| s.task(&owner, &id)).await?;
    Ok(axum::Json(to_api(&task)).into_response())
}

/// `DELETE /tasks/:id`: stops a running pull and marks it failed (`cancelled by user`);
/// 200 `{"status":"cancelled"}`. A finished task answers 409.
pub async fn cancel(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (owner, key) = (user.id.clone(), id.clone());
    let task = state.store.read(move |s| s.task(&owner, &key)).await?;
    state.pulls.cancel(&task.id);
    let key = task.id.clone();
    state.store.write(move |s| s.fail_task(&key, "cancelled by user")).await?;
    tracing::info!(task = %id, "task cancelled");
    Ok(axum::Json(api::StatusBody { status: "cancelled".into() }).into_response())
}
