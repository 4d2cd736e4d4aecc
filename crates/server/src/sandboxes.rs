//! Sandbox routes: create (idempotent by name), list, get, destroy, stop, start.
//!
//! The store says who owns what and what it is called; the engine runs it. Each change that
//! has a side effect writes its intent before and its result after (a `creating` row, a
//! transition), so a daemon killed in between leaves a row recovery can recognise.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::Created;
use crate::request::Json;
use crate::state::AppState;

pub use crate::names::{random_hex, valid_name};
pub use crate::times::rfc3339;

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
        net_policy: s.net_policy.clone(),
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

/// [`resolve`] for a guest operation (exec, files, a shell, the proxy): refused with 409 while
/// the sandbox is being created, or when its user stopped it (it stays stopped until `start`);
/// a sandbox the thermal manager put to sleep is handed on, and the engine's lease wakes it.
pub async fn resolve_for_guest(
    state: &AppState,
    user: &store::User,
    id_or_name: &str,
) -> ApiResult<store::Sandbox> {
    let sandbox = resolve(state, user, id_or_name).await?;
    let thermal = state.engine.thermal(&sandbox.id).ok();
    match bhatti_core::lifecycle::guest_access(sandbox.status, sandbox.user_stopped, thermal) {
        Ok(()) => Ok(sandbox),
        Err(bhatti_core::Refusal::NotRunning) => Err(ApiError::NotRunning(sandbox.name)),
        Err(refusal) => Err(ApiError::Refused(refusal)),
    }
}

/// A guest hostname from a sandbox name: an RFC 1123 label.
pub(crate) fn hostname_of(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() { "sandbox".to_owned() } else { trimmed.chars().take(63).collect() }
}

/// The CPUs and memory a create asks for, defaults filled in; zero, below zero, not a number
/// or over the owner's quota is refused with a message naming the field.
pub(crate) fn shape(
    cpus: Option<f64>,
    memory_mb: Option<u32>,
    quotas: &store::Quotas,
) -> Result<(f64, u32), String> {
    let cpus = cpus.unwrap_or(1.0);
    if !(cpus.is_finite() && cpus > 0.0) {
        return Err(format!("cpus must be a positive number, got {cpus}"));
    }
    if cpus > f64::from(quotas.max_cpus_per_sandbox) {
        return Err(format!("cpus: max {} CPUs per sandbox", quotas.max_cpus_per_sandbox));
    }
    let memory_mb = memory_mb.unwrap_or(1024);
    if memory_mb == 0 {
        return Err("memory_mb must be positive, got 0".into());
    }
    if memory_mb > quotas.max_memory_mb_per_sandbox {
        return Err(format!(
            "memory_mb: max {} MB memory per sandbox",
            quotas.max_memory_mb_per_sandbox
        ));
    }
    Ok((cpus, memory_mb))
}

/// Environment names a process can be given: not empty, no `=` (it would split the name), no
/// NUL anywhere (it would cut the string).
pub(crate) fn check_env(env: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in env {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(format!("env: invalid variable name {name:?}"));
        }
        if value.contains('\0') {
            return Err(format!("env: the value of {name} contains a NUL byte"));
        }
    }
    Ok(())
}

/// A file's mode: octal digits (an optional leading `0o`), at most `07777`; empty is `0644`.
fn file_mode(path: &str, mode: &str) -> Result<String, String> {
    if mode.is_empty() {
        return Ok("0644".into());
    }
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    match u32::from_str_radix(digits, 8) {
        Ok(bits) if !digits.is_empty() && !digits.starts_with('+') && bits <= 0o7777 => {
            Ok(format!("{bits:04o}"))
        }
        _ => Err(format!("file {path:?}: mode {mode:?} is not an octal mode (like 0644)")),
    }
}

/// A request's egress policy, checked and normalised; one that breaks a rule is a 400 naming
/// it. No policy is `public`.
fn checked_policy(policy: Option<&api::NetPolicy>) -> ApiResult<bhatti_core::Policy> {
    match policy {
        None => Ok(bhatti_core::Policy::default()),
        Some(policy) => {
            policy.check().map_err(|e| ApiError::BadRequest(format!("invalid net_policy: {e}")))
        }
    }
}

/// The engine's create request for a validated API request.
pub(crate) fn engine_spec(
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
        let mode = file_mode(&file.guest_path, &file.mode).map_err(ApiError::BadRequest)?;
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
    Json(mut req): Json<api::CreateSandbox>,
) -> ApiResult<Response> {
    crate::templates::apply(&state, &mut req).await?;
    let (cpus, memory_mb) =
        shape(req.cpus, req.memory_mb, &user.quotas).map_err(ApiError::BadRequest)?;
    check_env(&req.env).map_err(ApiError::BadRequest)?;
    let net_policy = checked_policy(req.net_policy.as_ref())?;
    let name =
        if req.name.is_empty() { format!("sandbox-{}", random_hex(3)) } else { req.name.clone() };
    if !valid_name(&name) {
        return Err(ApiError::BadRequest(format!(
            "invalid name {name:?}: letters, digits, '.', '_' and '-', starting with a letter or \
             digit, at most 63"
        )));
    }
    crate::labels::check(&req.labels)?;
    crate::quotas::check_host_space(&state, req.disk_size_mb).await?;
    let secret_env = crate::secrets::for_create(&state, &user, &req.secrets).await?;
    let image_name =
        if req.image.is_empty() { state.settings.default_image.clone() } else { req.image.clone() };
    let new = store::NewSandbox {
        owner: user.id.clone(),
        name: name.clone(),
        template_id: (!req.template_id.is_empty()).then(|| req.template_id.clone()),
        image: image_name.clone(),
        cpus,
        memory_mb,
        disk_size_mb: req.disk_size_mb,
        labels: req.labels.clone(),
        keep_hot: req.keep_hot,
        net_policy: net_policy.to_net_policy(),
    };
    // An unknown image is refused before anything is written; an existing sandbox of this
    // name is still the answer (create is idempotent by name, whatever it asks for).
    let image = match crate::image_catalog::boot_file(&state, &user, &image_name).await {
        Ok(image) => image,
        Err(e) => {
            return match existing(&state, &user, &name).await? {
                Some(existing) => Ok(existing_response(&existing)),
                None => Err(e),
            };
        }
    };
    let shape = crate::shapes::plan(&state, &req, &image_name, &image, cpus, memory_mb).await;
    let spec_for = |id: &str| {
        let mut spec = engine_spec(id, &user.id, &name, image, &req, cpus, memory_mb)?;
        spec.net_policy = net_policy;
        Ok(spec)
    };
    let volumes = &req.persistent_volumes;
    match crate::shapes::create(&state, shape, new, volumes, spec_for).await? {
        Created::New(row) => {
            crate::secrets::attach(&state, &row, secret_env).await?;
            Ok((StatusCode::CREATED, axum::Json(to_api(&row))).into_response())
        }
        Created::Existing(row) => Ok(existing_response(&row)),
    }
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
    let mut urls = urls_by_sandbox(&state, &user.id).await?;
    let list: Vec<api::Sandbox> = rows
        .iter()
        .filter(|s| s.status != store::Status::Destroyed)
        .map(|s| {
            let mut out = to_api(s);
            out.thermal = thermal_of(&state, s);
            out.urls = urls.remove(&s.id).unwrap_or_default();
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
    let sid = sandbox.id.clone();
    let rules = state.store.read(move |s| s.sandbox_publish_rules(&sid)).await?;
    out.urls = rules.iter().map(|r| state.settings.public_urls.url_for(&r.alias)).collect();
    Ok(axum::Json(out).into_response())
}

/// `PATCH /sandboxes/:id`: rename, labels, keep-hot, egress policy (v1's three applied in that
/// order, then the policy; keep-hot on wakes the sandbox at once). Everything is checked before
/// anything changes; a change that fails answers, and those before it stay made.
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
    let net_policy = match &req.net_policy {
        Some(policy) => {
            let checked = checked_policy(Some(policy))?;
            crate::lifecycle::may_set_net_policy(&state, &sandbox)?;
            Some(checked)
        }
        None => None,
    };
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
    let row = match net_policy {
        Some(policy) => crate::lifecycle::set_net_policy(&state, &row, policy).await?,
        None => row,
    };
    let row = match keep_hot {
        Some(true) => crate::lifecycle::wake(&state, &row).await?,
        _ => row,
    };
    let mut out = to_api(&row);
    out.thermal = thermal_of(&state, &row);
    Ok(axum::Json(out).into_response())
}

/// `DELETE /sandboxes/:id` (also while it is being created).
pub async fn destroy(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let sandbox = resolve(&state, &user, &id).await?;
    crate::lifecycle::destroy(&state, &sandbox).await?;
    Ok(axum::Json(api::StatusBody { status: "destroyed".into() }).into_response())
}

/// `POST /sandboxes/:id/stop`: idempotent (a stopped sandbox answers as it is).
pub async fn stop(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let sandbox = resolve(&state, &user, &id).await?;
    let row = crate::lifecycle::stop(&state, sandbox).await?;
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
    let row = crate::lifecycle::start(&state, sandbox, req.force).await?;
    Ok(axum::Json(to_api(&row)).into_response())
}

/// Each sandbox's published URLs (for lists and gets), by sandbox ID.
pub(crate) async fn urls_by_sandbox(
    state: &AppState,
    owner: &str,
) -> ApiResult<std::collections::HashMap<String, Vec<String>>> {
    let owner = owner.to_owned();
    let rules = state.store.read(move |s| s.owner_publish_rules(&owner)).await?;
    let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in rules {
        out.entry(r.sandbox_id.clone())
            .or_default()
            .push(state.settings.public_urls.url_for(&r.alias));
    }
    Ok(out)
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
    fn shapes_table() {
        let quotas = store::Quotas::default();
        /// (name, cpus, memory, the shape or a part of the error).
        type Row = (&'static str, Option<f64>, Option<u32>, Result<(f64, u32), &'static str>);
        let table: [Row; 9] = [
            ("defaults", None, None, Ok((1.0, 1024))),
            ("half a core", Some(0.5), Some(128), Ok((0.5, 128))),
            ("zero cpus", Some(0.0), None, Err("cpus must be a positive")),
            ("negative cpus", Some(-1.0), None, Err("cpus must be a positive")),
            ("not a number", Some(f64::NAN), None, Err("cpus must be a positive")),
            ("infinite", Some(f64::INFINITY), None, Err("cpus must be a positive")),
            ("over the quota", Some(1000.0), None, Err("cpus: max")),
            ("zero memory", None, Some(0), Err("memory_mb must be positive")),
            ("memory over the quota", None, Some(u32::MAX), Err("memory_mb: max")),
        ];
        for (name, cpus, memory, want) in table {
            match (shape(cpus, memory, &quotas), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn env_names_table() {
        let table = [
            ("ordinary", "A_1", "x", true),
            ("lower case", "path", "x", true),
            ("empty name", "", "x", false),
            ("= in the name", "A=B", "x", false),
            ("NUL in the name", "A\0", "x", false),
            ("NUL in the value", "A", "x\0y", false),
            ("= in the value is fine", "A", "b=c", true),
        ];
        for (name, key, value, ok) in table {
            let env = [(key.to_owned(), value.to_owned())].into();
            assert_eq!(check_env(&env).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn file_modes_table() {
        let table = [
            ("empty is 0644", "", Ok("0644")),
            ("plain", "0755", Ok("0755")),
            ("short", "600", Ok("0600")),
            ("go's 0o", "0o640", Ok("0640")),
            ("setuid bits", "4755", Ok("4755")),
            ("not octal", "0999", Err(())),
            ("words", "rw-r--r--", Err(())),
            ("too large", "17777", Err(())),
            ("a sign", "+644", Err(())),
            ("only the prefix", "0o", Err(())),
        ];
        for (name, mode, want) in table {
            let got = file_mode("/x", mode);
            match want {
                Ok(m) => assert_eq!(got.as_deref(), Ok(m), "{name}"),
                Err(()) => assert!(got.unwrap_err().contains("not an octal mode"), "{name}"),
            }
        }
    }

    #[test]
    fn policies_are_checked_and_normalised_table() {
        let policy = |default: &str, hosts: &[&str], cidrs: &[&str]| -> api::NetPolicy {
            serde_json::from_value(serde_json::json!({
                "default": default, "allow_hosts": hosts, "allow_cidrs": cidrs,
            }))
            .unwrap()
        };
        // (name, the policy, its normalised form or a part of the 400's message).
        type Row = (&'static str, api::NetPolicy, Result<api::NetPolicy, &'static str>);
        let table: [Row; 7] = [
            (
                "names lower-cased, trailing dots and duplicates dropped",
                policy("deny", &["PyPI.org.", "pypi.org", "*.Example.com"], &["192.0.2.7"]),
                Ok(policy("deny", &["pypi.org", "*.example.com"], &["192.0.2.7/32"])),
            ),
            (
                "public with a private range",
                policy("public", &[], &["10.0.0.0/8"]),
                Ok(policy("public", &[], &["10.0.0.0/8"])),
            ),
            (
                "metadata",
                policy("deny", &[], &["169.254.169.254"]),
                Err("invalid net_policy: allow_cidrs: 169.254.169.254/32 overlaps"),
            ),
            (
                "a wildcard inside",
                policy("deny", &["a.*.com"], &[]),
                Err("invalid net_policy: allow_hosts"),
            ),
            ("host bits", policy("deny", &[], &["10.0.0.1/8"]), Err("did you mean 10.0.0.0/8")),
            ("IPv6", policy("deny", &[], &["2001:db8::/32"]), Err("IPv6")),
            ("not a range", policy("deny", &[], &["example.com"]), Err("invalid net_policy")),
        ];
        for (name, asked, want) in table {
            match (checked_policy(Some(&asked)), want) {
                (Ok(got), Ok(want)) => assert_eq!(got.to_net_policy(), want, "{name}"),
                (Err(e), Err(part)) => {
                    assert_eq!(e.status(), (StatusCode::BAD_REQUEST, "invalid"), "{name}");
                    assert!(e.to_string().contains(part), "{name}: {e}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let none = checked_policy(None).unwrap();
        assert_eq!(none.to_net_policy(), api::NetPolicy::default(), "no policy is public");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(store::Timestamp(0)), "1970-01-01T00:00:00.000Z");
    }
}
