//! `POST /sandboxes/:id/fork {"count", "names"?}` (ours, issue 24): N copy-on-write clones of a
//! running sandbox, each a new sandbox with the source's memory, processes, sessions, files,
//! image, shape, labels and egress policy, and an identity of its own (the clone contract: new
//! address, MAC, token, hostname, machine-id, entropy, clock; connections to the outside reset).
//!
//! The protocol: every clone's row is reserved first (names and quotas: each clone counts as a
//! sandbox with the source's CPUs, memory and disk), so a fork the quota cannot hold is refused
//! before the source is touched; then the engine captures the source once (paused only for the
//! capture; a sandbox the thermal manager put to sleep is woken first, one its user stopped is
//! refused with 409) and restores the clones concurrently. All or nothing: a failed clone
//! destroys the others and gives every row back. Each clone logs `sandbox.created` and
//! `sandbox.forked` (source, name). The clones inherit the source's secret environment.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::Reserved;
use crate::names::{random_hex, valid_name};
use crate::request::Json;
use crate::sandboxes::{hostname_of, to_api};
use crate::state::AppState;

/// The clones' names: the given ones (checked, distinct), or `<source>-<6 hex>` (pure but for
/// the random suffix).
fn clone_names(source: &str, req: &api::ForkRequest) -> Result<Vec<String>, String> {
    if req.count == 0 || req.count > api::MAX_FORK_COUNT {
        return Err(format!("count must be 1 to {}, got {}", api::MAX_FORK_COUNT, req.count));
    }
    if req.names.is_empty() {
        let base: String = source.chars().take(56).collect();
        return Ok((0..req.count).map(|_| format!("{base}-{}", random_hex(3))).collect());
    }
    if req.names.len() != req.count as usize {
        return Err(format!("names: {} given for a count of {}", req.names.len(), req.count));
    }
    for (i, name) in req.names.iter().enumerate() {
        if !valid_name(name) {
            return Err(format!(
                "invalid name {name:?}: letters, digits, '.', '_' and '-', starting with a \
                 letter or digit, at most 63"
            ));
        }
        if req.names[..i].contains(name) {
            return Err(format!("name {name:?} is given twice"));
        }
    }
    Ok(req.names.clone())
}

/// `POST /sandboxes/:id/fork`: 201 with the clones (sandbox objects, in `names` order).
pub async fn fork(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Json(req): Json<api::ForkRequest>,
) -> ApiResult<Response> {
    let mut source = crate::sandboxes::resolve(&state, &user, &id).await?;
    let names = clone_names(&source.name, &req).map_err(ApiError::BadRequest)?;
    match source.status {
        store::Status::Creating => return Err(ApiError::Refused(bhatti_core::Refusal::Creating)),
        store::Status::Running if !source.user_stopped => {}
        store::Status::Unknown => return Err(ApiError::Refused(bhatti_core::Refusal::Lost)),
        _ => return Err(ApiError::NotRunning(source.name)),
    }
    // Every row first: names and quotas are settled before the source pauses.
    let mut rows: Vec<(String, String)> = Vec::new();
    for name in &names {
        let new = store::NewSandbox {
            owner: user.id.clone(),
            name: name.clone(),
            template_id: source.template_id.clone(),
            image: source.image.clone(),
            cpus: source.cpus,
            memory_mb: source.memory_mb,
            disk_size_mb: source.disk_size_mb,
            labels: source.labels.clone(),
            keep_hot: false,
            net_policy: source.net_policy.clone(),
        };
        let reserved = crate::lifecycle::reserve(&state, new).await;
        let failed = match reserved {
            Ok(Reserved::Row(row)) => {
                rows.push((row, name.clone()));
                continue;
            }
            Ok(Reserved::Existing(existing)) => {
                ApiError::Conflict(format!("name {:?} is already in use", existing.name))
            }
            Err(e) => e,
        };
        give_back(&state, &rows).await;
        return Err(failed);
    }
    let captured = async {
        if state.engine.thermal(&source.id).ok() == Some(engine::Thermal::Cold) {
            source = crate::lifecycle::wake(&state, &source).await?;
        }
        let _capturing = crate::telemetry::InFlight::boot();
        Ok::<_, ApiError>(state.engine.fork_capture(&source.id).await?)
    }
    .await;
    let key = match captured {
        Ok(key) => key,
        Err(e) => {
            give_back(&state, &rows).await;
            return Err(e);
        }
    };
    let started = std::time::Instant::now();
    let builds = rows.iter().map(|(row, name)| {
        let (engine, owner, key, hostname) =
            (state.engine.clone(), user.id.clone(), key.clone(), hostname_of(name));
        let build = |id: String| async move {
            engine
                .create_from_checkpoint_of(&owner, &key, &owner, &id, Some(&hostname))
                .await
                .map(drop)
                .map_err(ApiError::from)
        };
        crate::lifecycle::build_reserved(&state, row.clone(), build)
    });
    let results = futures_util::future::join_all(builds).await;
    state.engine.fork_release(&user.id, &key).await;
    let mut made = Vec::new();
    let mut failed = None;
    for result in results {
        match result {
            Ok(row) => made.push(row),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if failed.is_none() {
        let ids: Vec<String> = made.iter().map(|row| row.id.clone()).collect();
        if let Err(e) = crate::secrets::inherit(&state, &source.id, &ids).await {
            failed = Some(e);
        }
    }
    if let Some(e) = failed {
        for row in &made {
            if let Err(undo) = crate::lifecycle::destroy(&state, row).await {
                tracing::error!(sandbox = %row.id, "undoing a fork: {undo}");
            }
        }
        return Err(e);
    }
    tracing::info!(
        source = %source.id, clones = made.len(), took = ?started.elapsed(), "forked"
    );
    let events: Vec<store::NewEvent> = made
        .iter()
        .map(|row| store::NewEvent {
            ts: store::Timestamp::now(),
            kind: "sandbox.forked".to_owned(),
            user_id: user.id.clone(),
            sandbox_id: row.id.clone(),
            meta: serde_json::json!({ "source": source.id, "name": row.name }).to_string(),
        })
        .collect();
    let logged = state.store.write(move |s| s.record_events(&events)).await;
    if let Err(e) = logged {
        tracing::warn!(source = %source.id, "recording sandbox.forked: {e}");
    }
    let out: Vec<api::Sandbox> = made.iter().map(to_api).collect();
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

/// Removes the rows a fork reserved and never built.
async fn give_back(state: &AppState, rows: &[(String, String)]) {
    for (row, _) in rows {
        crate::lifecycle::unreserve(state, row).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(count: u32, names: &[&str]) -> api::ForkRequest {
        api::ForkRequest { count, names: names.iter().map(|n| n.to_string()).collect() }
    }

    #[test]
    fn clone_names_table() {
        let table: [(&str, api::ForkRequest, Result<usize, &str>); 8] = [
            ("one, generated", req(1, &[]), Ok(1)),
            ("sixteen, generated", req(16, &[]), Ok(16)),
            ("named", req(2, &["a", "b"]), Ok(2)),
            ("zero", req(0, &[]), Err("count must be 1 to 16, got 0")),
            ("seventeen", req(17, &[]), Err("count must be 1 to 16, got 17")),
            ("fewer names", req(2, &["a"]), Err("names: 1 given for a count of 2")),
            ("a name twice", req(2, &["a", "a"]), Err("given twice")),
            ("a bad name", req(1, &["-x"]), Err("invalid name")),
        ];
        for (what, request, want) in table {
            match (clone_names("src", &request), want) {
                (Ok(names), Ok(n)) => {
                    assert_eq!(names.len(), n, "{what}");
                    if request.names.is_empty() {
                        assert!(names.iter().all(|x| x.starts_with("src-") && valid_name(x)));
                    }
                }
                (Err(e), Err(part)) => assert!(e.contains(part), "{what}: {e}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }
}
