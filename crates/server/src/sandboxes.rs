//! Sandbox routes: create (idempotent by name), list, get, destroy, stop, start.
//!
//! The store says who owns what and what it is called; the engine runs it. Each change that
//! has a side effect writes its intent before and its result after (a `creating` row, a
//! transition), so a daemon killed in between leaves a row recovery can recognise.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::request::Json;
use crate::state::AppState;

/// How long a stop waits for guest operations in flight before answering busy.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// RFC 3339 of a stored time.
pub fn rfc3339(t: store::Timestamp) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(t.millis().max(0).unsigned_abs());
    humantime::format_rfc3339_millis(at).to_string()
}

/// The API's view of a stored sandbox.
pub fn to_api(s: &store::Sandbox) -> api::Sandbox {
    api::Sandbox {
        id: s.id.clone(),
        name: s.name.clone(),
        template_id: s.template_id.clone().unwrap_or_default(),
        engine_id: s.id.clone(),
        status: s.status.as_str().to_owned(),
        ip: s.ip.clone(),
        engine_meta: serde_json::json!({}),
        created_by: s.owner.clone(),
        created_at: rfc3339(s.created_at),
        stopped_at: s.stopped_at.map(rfc3339),
        keep_hot: s.keep_hot,
        cpus: s.cpus,
        memory_mb: s.memory_mb,
        disk_size_mb: s.disk_size_mb,
        image: s.image.clone(),
        labels: s.labels.clone(),
        thermal: None,
        urls: Vec::new(),
    }
}

/// The owner's sandbox by ID, name or unique ID prefix (another owner's is not found).
pub async fn resolve(
    state: &AppState,
    user: &store::User,
    id_or_name: &str,
) -> ApiResult<store::Sandbox> {
    let (owner, key) = (user.id.clone(), id_or_name.to_owned());
    let sandbox = state.store.read(move |s| s.resolve_sandbox(&owner, &key)).await?;
    if sandbox.status == store::Status::Destroyed {
        return Err(ApiError::NotFound("not found".into()));
    }
    Ok(sandbox)
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A guest hostname from a sandbox name: an RFC 1123 label.
fn hostname_of(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() { "sandbox".to_owned() } else { trimmed.chars().take(63).collect() }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = getrandom::fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a built-in image lives; only plain names (no paths) are looked up.
fn image_path(state: &AppState, name: &str) -> ApiResult<std::path::PathBuf> {
    let plain = !name.is_empty()
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    let path = state.settings.images_dir.join(name).join("current/rootfs.ext4");
    if !plain || !path.is_file() {
        return Err(ApiError::NotFound(format!("image {name:?} not found")));
    }
    Ok(path)
}

/// The engine's create request for a validated API request.
fn engine_spec(
    id: &str,
    owner: &str,
    name: &str,
    image: std::path::PathBuf,
    req: &api::CreateSandbox,
    cpus: f64,
    memory_mb: u32,
) -> ApiResult<engine::CreateSpec> {
    use base64::Engine as _;
    let mut spec = engine::CreateSpec::new(id, image).owned_by(owner);
    spec.hostname = hostname_of(name);
    spec.vcpus = u8::try_from(cpus.ceil() as u64).unwrap_or(u8::MAX).max(1);
    // v1's fractions are a CPU-time bound (0.5 is half a core), enforced by the sandbox's cgroup.
    spec.cpu_millis = Some((cpus * 1000.0).round() as u32);
    spec.memory_mib = memory_mb;
    spec.disk_size_mib = (req.disk_size_mb > 0).then_some(req.disk_size_mb);
    spec.env = req.env.clone();
    spec.init = req.init.clone();
    for file in &req.files {
        if file.guest_path.is_empty() {
            return Err(ApiError::BadRequest("file guest_path required".into()));
        }
        if base64::engine::general_purpose::STANDARD.decode(&file.content).is_err() {
            return Err(ApiError::BadRequest(format!("file {:?}: bad base64", file.guest_path)));
        }
        let mode = if file.mode.is_empty() { "0644".to_owned() } else { file.mode.clone() };
        spec.files.insert(
            file.guest_path.clone(),
            engine::GuestFile { content: file.content.clone(), mode },
        );
    }
    spec.scratch_volumes = req
        .new_volumes
        .iter()
        .map(|v| engine::ScratchVolume { mount: v.mount.clone(), size_mib: v.size_mb })
        .collect();
    Ok(spec)
}

/// `POST /sandboxes`.
pub async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Json(req): Json<api::CreateSandbox>,
) -> ApiResult<Response> {
    if !req.template_id.is_empty() || !req.persistent_volumes.is_empty() || !req.secrets.is_empty()
    {
        return Err(ApiError::NotImplemented(
            "templates, persistent volumes and secrets come with the resources API",
        ));
    }
    let cpus = if req.cpus > 0.0 { req.cpus } else { 1.0 };
    let memory_mb = if req.memory_mb > 0 { req.memory_mb } else { 1024 };
    if !cpus.is_finite() || cpus > f64::from(user.quotas.max_cpus_per_sandbox) {
        return Err(ApiError::BadRequest(format!(
            "max {} CPUs per sandbox",
            user.quotas.max_cpus_per_sandbox
        )));
    }
    if memory_mb > user.quotas.max_memory_mb_per_sandbox {
        return Err(ApiError::BadRequest(format!(
            "max {} MB memory per sandbox",
            user.quotas.max_memory_mb_per_sandbox
        )));
    }
    let name =
        if req.name.is_empty() { format!("sandbox-{}", random_hex(3)) } else { req.name.clone() };
    if !valid_name(&name) {
        return Err(ApiError::BadRequest(format!(
            "invalid name {name:?}: letters, digits, '.', '_' and '-', starting with a letter or \
             digit, at most 63"
        )));
    }
    crate::labels::check(&req.labels)?;
    // Idempotent by name: an existing sandbox of this owner is the answer.
    if let Some(existing) = existing(&state, &user, &name).await? {
        return Ok(existing_response(&existing));
    }
    let image_name =
        if req.image.is_empty() { state.settings.default_image.clone() } else { req.image.clone() };
    let image = image_path(&state, &image_name)?;
    let new = store::NewSandbox {
        owner: user.id.clone(),
        name: name.clone(),
        template_id: None,
        image: image_name,
        cpus,
        memory_mb,
        disk_size_mb: req.disk_size_mb,
        labels: req.labels.clone(),
        keep_hot: req.keep_hot,
    };
    // The row (status `creating`) reserves the name and the quota before the VM is built.
    let row = match state.store.write(move |s| s.create_sandbox(&new)).await {
        Ok(row) => row,
        Err(e) if e.kind() == store::ErrorKind::Conflict => {
            // Another request with this name won the race: its sandbox is the answer.
            return match existing(&state, &user, &name).await? {
                Some(winner) => Ok(existing_response(&winner)),
                None => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    let spec = engine_spec(&row.id, &user.id, &name, image, &req, cpus, memory_mb);
    let built = match spec {
        Ok(spec) => state.engine.create(&spec).await.map_err(ApiError::from),
        Err(e) => Err(e),
    };
    if let Err(e) = built {
        let id = row.id.clone();
        if let Err(cleanup) = state.store.write(move |s| s.delete_sandbox_by_id(&id)).await {
            tracing::error!(sandbox = %row.id, "removing the row of a failed create: {cleanup}");
        }
        return Err(e);
    }
    let record = state.engine.export(&row.id).await?;
    let (id, ip) = (row.id.clone(), record.ip.to_string());
    let sandbox = state
        .store
        .write(move |s| {
            let change = store::Change {
                status: Some(store::Status::Running),
                thermal: Some(engine::Thermal::Hot),
                ip: Some(&ip),
                record: Some(&record),
            };
            s.update_sandbox(&id, &change)?;
            s.sandbox_by_id(&id)
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(to_api(&sandbox))).into_response())
}

async fn existing(
    state: &AppState,
    user: &store::User,
    name: &str,
) -> ApiResult<Option<store::Sandbox>> {
    match resolve(state, user, name).await {
        Ok(s) if s.name == name => Ok(Some(s)),
        Ok(_) => Ok(None),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(ApiError::Store(e)) if e.kind() == store::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn existing_response(sandbox: &store::Sandbox) -> Response {
    let mut response = axum::Json(to_api(sandbox)).into_response();
    response
        .headers_mut()
        .insert(api::EXISTING_HEADER, axum::http::HeaderValue::from_static("true"));
    response
}

/// The engine's thermal state of a running sandbox, for lists and gets (never wakes).
fn thermal_of(state: &AppState, s: &store::Sandbox) -> Option<String> {
    if s.status != store::Status::Running {
        return None;
    }
    state.engine.thermal(&s.id).ok().map(|t| t.to_string())
}

/// `GET /sandboxes` (`?label=k=v`, repeatable, ANDed).
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let filters = crate::labels::filters(query.as_deref())?;
    let owner = user.id.clone();
    let rows = state.store.read(move |s| s.list_sandboxes(&owner, &filters)).await?;
    let list: Vec<api::Sandbox> = rows
        .iter()
        .filter(|s| s.status != store::Status::Destroyed)
        .map(|s| {
            let mut out = to_api(s);
            out.thermal = thermal_of(&state, s);
            out
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

/// The status the engine's state implies for a row, if it differs (the rule the events task
/// applies too).
fn observed_status(state: &AppState, s: &store::Sandbox) -> Option<store::Status> {
    let thermal = state.engine.thermal(&s.id).ok()?;
    bhatti_core::status::change(s.status, thermal)
}

/// `GET /sandboxes/:id`: the engine's view, persisted; never wakes.
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut sandbox = resolve(&state, &user, &id).await?;
    if let Some(status) = observed_status(&state, &sandbox) {
        let id = sandbox.id.clone();
        sandbox = state
            .store
            .write(move |s| {
                s.set_status(&id, status)?;
                s.sandbox_by_id(&id)
            })
            .await?;
    }
    let mut out = to_api(&sandbox);
    out.thermal = thermal_of(&state, &sandbox);
    Ok(axum::Json(out).into_response())
}

/// `PATCH /sandboxes/:id`: rename, labels, keep-hot (v1: applied in that order; keep-hot on
/// wakes the sandbox at once).
pub async fn update(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Json(req): Json<api::UpdateSandbox>,
) -> ApiResult<Response> {
    let sandbox = resolve(&state, &user, &id).await?;
    if let Some(name) = &req.name
        && !valid_name(name)
    {
        return Err(ApiError::BadRequest(format!("invalid name {name:?}")));
    }
    crate::labels::check(&req.labels_add)?;
    if req.labels_remove.len() > crate::labels::MAX_LABELS {
        return Err(ApiError::BadRequest(format!("at most {} labels", crate::labels::MAX_LABELS)));
    }
    for key in &req.labels_remove {
        crate::labels::check_key(key)?;
    }
    let (owner, sid) = (user.id.clone(), sandbox.id.clone());
    let keep_hot = req.keep_hot;
    let row = state
        .store
        .write(move |s| {
            if let Some(name) = &req.name {
                s.rename_sandbox(&owner, &sid, name)?;
            }
            s.update_labels(&owner, &sid, &req.labels_add, &req.labels_remove)?;
            if let Some(keep_hot) = req.keep_hot {
                s.set_keep_hot(&owner, &sid, keep_hot)?;
            }
            s.sandbox_by_id(&sid)
        })
        .await?;
    if keep_hot == Some(true) {
        state.engine.ensure_hot(&row.id).await?;
    }
    let mut out = to_api(&row);
    out.thermal = thermal_of(&state, &row);
    Ok(axum::Json(out).into_response())
}

/// `DELETE /sandboxes/:id`.
pub async fn destroy(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let sandbox = resolve(&state, &user, &id).await?;
    let id = sandbox.id.clone();
    // The intent goes first: a daemon killed mid-destroy leaves a row recovery recognises.
    let transition = {
        let id = id.clone();
        state.store.write(move |s| s.begin_transition(&id, store::Intent::Destroy)).await?
    };
    match state.engine.destroy(&id).await {
        Ok(()) => {}
        // A sandbox the engine does not know (recovery marked it unknown): only rows are left.
        Err(e) if e.kind() == engine::ErrorKind::NotFound => {}
        Err(e) => {
            abandon(&state, transition).await;
            return Err(e.into());
        }
    }
    state.store.write(move |s| s.delete_sandbox_by_id(&id)).await?;
    Ok(axum::Json(api::StatusBody { status: "destroyed".into() }).into_response())
}

/// Closes a transition whose side effect failed, leaving the row as it was.
async fn abandon(state: &AppState, transition: store::Transition) {
    let id = transition.sandbox_id.clone();
    let closed = state
        .store
        .write(move |s| s.finish_transition(&transition, &store::Change::default()))
        .await;
    if let Err(e) = closed {
        tracing::error!(sandbox = %id, "closing a failed transition: {e}");
    }
}

/// Runs `op`, closing `transition` if it fails.
async fn guarded<T>(
    state: &AppState,
    transition: store::Transition,
    op: impl std::future::Future<Output = Result<T, engine::EngineError>>,
) -> ApiResult<(T, store::Transition)> {
    match op.await {
        Ok(value) => Ok((value, transition)),
        Err(e) => {
            abandon(state, transition).await;
            Err(e.into())
        }
    }
}

/// Writes a sandbox's new status and the engine's record in one transaction that also closes
/// the transition, and returns the row.
async fn finish(
    state: &AppState,
    transition: store::Transition,
    status: store::Status,
) -> ApiResult<store::Sandbox> {
    let id = transition.sandbox_id.clone();
    let record = state.engine.export(&id).await?;
    let thermal = record.thermal;
    Ok(state
        .store
        .write(move |s| {
            let ip = record.ip.to_string();
            let change = store::Change {
                status: Some(status),
                thermal: Some(thermal),
                ip: Some(&ip),
                record: Some(&record),
            };
            s.finish_transition(&transition, &change)?;
            s.sandbox_by_id(&transition.sandbox_id)
        })
        .await?)
}

/// `POST /sandboxes/:id/stop`: idempotent (a stopped sandbox answers as it is).
pub async fn stop(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let sandbox = resolve(&state, &user, &id).await?;
    if state.engine.thermal(&sandbox.id)? == engine::Thermal::Cold
        && sandbox.status == store::Status::Stopped
    {
        return Ok(axum::Json(to_api(&sandbox)).into_response());
    }
    let sid = sandbox.id.clone();
    let transition =
        state.store.write(move |s| s.begin_transition(&sid, store::Intent::Stop)).await?;
    let (_, transition) =
        guarded(&state, transition, state.engine.stop(&sandbox.id, STOP_WAIT)).await?;
    let row = finish(&state, transition, store::Status::Stopped).await?;
    Ok(axum::Json(to_api(&row)).into_response())
}

/// `POST /sandboxes/:id/start` (`{"force": true}` boots from the disk, discarding saved
/// memory); idempotent (a running sandbox answers as it is).
pub async fn start(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Json(req): Json<api::StartRequest>,
) -> ApiResult<Response> {
    let sandbox = resolve(&state, &user, &id).await?;
    let thermal = state.engine.thermal(&sandbox.id)?;
    if matches!(thermal, engine::Thermal::Hot | engine::Thermal::Warm) && !req.force {
        let mut out = to_api(&sandbox);
        out.status = "running".into();
        return Ok(axum::Json(out).into_response());
    }
    let sid = sandbox.id.clone();
    let transition =
        state.store.write(move |s| s.begin_transition(&sid, store::Intent::Start)).await?;
    let started = async {
        if req.force {
            state.engine.start_from_disk(&sandbox.id).await
        } else {
            state.engine.start(&sandbox.id).await
        }
    };
    let ((), transition) = guarded(&state, transition, started).await?;
    let row = finish(&state, transition, store::Status::Running).await?;
    Ok(axum::Json(to_api(&row)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hostnames() {
        assert!(valid_name("dev") && valid_name("My.Box_1-x") && !valid_name("-x"));
        assert!(!valid_name("a b") && !valid_name(&"n".repeat(64)));
        assert_eq!(hostname_of("My.Box_1"), "my-box-1");
        assert_eq!(hostname_of("___"), "sandbox");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(store::Timestamp(0)), "1970-01-01T00:00:00.000Z");
    }
}
