//! `GET /sandboxes/:id/sessions` (wakes the sandbox; the agent's sessions, including `init`)
//! and `DELETE /sandboxes/:id/sessions/:session_id` (kills one; an unknown one is 404).

use axum::Json;
use axum::extract::{Path, State};

use crate::auth::CurrentUser;
use crate::error::ApiResult;
use crate::sandboxes::resolve;
use crate::state::AppState;

fn info_of(s: engine::SessionInfo) -> api::SessionInfo {
    api::SessionInfo {
        session_id: s.session_id,
        argv: s.argv,
        tty: s.tty,
        running: s.running,
        exit_code: s.exit_code,
        attached: s.attached,
        created_at: s.created_at,
    }
}

/// The list.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<api::SessionInfo>>> {
    let sandbox = resolve(&state, &user, &id).await?;
    let sessions = state.engine.sessions(&sandbox.id).await?;
    Ok(Json(sessions.into_iter().map(info_of).collect()))
}

/// The kill.
pub async fn kill(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path((id, session_id)): Path<(String, String)>,
) -> ApiResult<Json<api::StatusBody>> {
    let sandbox = resolve(&state, &user, &id).await?;
    state.engine.kill_session(&sandbox.id, &session_id).await?;
    Ok(Json(api::StatusBody { status: "killed".into() }))
}
