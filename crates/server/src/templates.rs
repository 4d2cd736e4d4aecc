//! Templates (host.md 1.17: global, not per user): `GET/POST /templates`,
//! `GET/DELETE /templates/:id`, and [`apply`], which merges a template into a create request.
//!
//! A create with `template_id` (an ID, or a name that only one template has) gets the
//! template's image, cpus, memory, disk size, secrets, labels and mounts wherever the request
//! leaves them out; what the request gives wins (labels per key; secrets are the template's
//! then the request's, each once, v1's order). Mounts become `persistent_volumes` when the
//! request names no volumes. [`apply`] only fills the request's fields, before anything else
//! of the create runs, so every check of the create applies to what the template brought.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::names::{random_hex, valid_name};
use crate::request::Json;
use crate::state::AppState;
use crate::times::rfc3339;

/// The size of a volume a template mount auto-creates (v1's mounts carry none).
pub const MOUNT_VOLUME_MB: u32 = 1024;

fn to_api(t: &store::Template) -> api::Template {
    api::Template {
        id: t.id.clone(),
        name: t.name.clone(),
        engine: api::TEMPLATE_ENGINE.into(),
        image: t.image.clone(),
        cpus: t.cpus,
        memory_mb: t.memory_mb,
        disk_size_mb: t.disk_size_mb,
        userdata: t.userdata.clone(),
        secrets: t.secrets.clone(),
        labels: t.labels.clone(),
        mounts: t
            .mounts
            .iter()
            .map(|m| api::TemplateMount {
                volume_name: m.volume_name.clone(),
                target: m.target.clone(),
                readonly: m.readonly,
                auto_create: m.auto_create,
            })
            .collect(),
        created_at: rfc3339(t.created_at),
    }
}

/// A mount point a volume may take: core's rule (absolute, no `..`, not a system directory).
pub(crate) fn check_mount(target: &str) -> Result<(), String> {
    bhatti_core::check_mount_point(target).map_err(|why| format!("mount {target:?} {why}"))
}

/// A `POST /templates` body checked, v1's defaults filled in.
fn new_template(req: &api::Template, default_image: &str) -> Result<store::NewTemplate, String> {
    if req.name.is_empty() {
        return Err("name required".into());
    }
    if !valid_name(&req.name) {
        return Err(format!(
            "invalid name {:?}: letters, digits, '.', '_' and '-', starting with a letter or \
             digit, at most 63",
            req.name
        ));
    }
    let image = if req.image.is_empty() { default_image.to_owned() } else { req.image.clone() };
    if !valid_name(&image) {
        return Err(format!("invalid image {image:?}"));
    }
    let cpus = if req.cpus == 0.0 { api::TEMPLATE_CPUS } else { req.cpus };
    if !(cpus > 0.0 && cpus.is_finite()) {
        return Err(format!("cpus must be a positive number, got {}", req.cpus));
    }
    let memory_mb = if req.memory_mb == 0 { api::TEMPLATE_MEMORY_MB } else { req.memory_mb };
    for secret in &req.secrets {
        if secret.is_empty() || secret.contains('=') || secret.contains('\0') {
            return Err(format!("invalid secret name {secret:?}"));
        }
    }
    let mut mounts = Vec::new();
    for m in &req.mounts {
        if !m.volume_name.is_empty() && !valid_name(&m.volume_name) {
            return Err(format!("invalid volume name {:?}", m.volume_name));
        }
        check_mount(&m.target)?;
        mounts.push(store::TemplateMount {
            volume_name: m.volume_name.clone(),
            target: m.target.clone(),
            readonly: m.readonly,
            auto_create: m.auto_create,
        });
    }
    Ok(store::NewTemplate {
        name: req.name.clone(),
        image,
        cpus,
        memory_mb,
        disk_size_mb: req.disk_size_mb,
        userdata: req.userdata.clone(),
        secrets: req.secrets.clone(),
        labels: req.labels.clone(),
        mounts,
    })
}

/// `POST /templates`: 201 with the template (any `id` in the body is ignored: the store
/// makes one).
pub async fn create(
    State(state): State<AppState>,
    CurrentUser(_user): CurrentUser,
    Json(req): Json<api::Template>,
) -> ApiResult<Response> {
    let new = new_template(&req, &state.settings.default_image).map_err(ApiError::BadRequest)?;
    crate::labels::check(&new.labels)?;
    let row = state.store.write(move |s| s.create_template(&new)).await?;
    Ok((StatusCode::CREATED, axum::Json(to_api(&row))).into_response())
}

/// `GET /templates`: newest first.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(_user): CurrentUser,
) -> ApiResult<Response> {
    let rows = state.store.read(|s| s.list_templates()).await?;
    Ok(axum::Json(rows.iter().map(to_api).collect::<Vec<_>>()).into_response())
}

/// `GET /templates/:id` (404 `not found`, v1's).
pub async fn get(
    State(state): State<AppState>,
    CurrentUser(_user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    match state.store.read(move |s| s.template(&id)).await {
        Ok(t) => Ok(axum::Json(to_api(&t)).into_response()),
        Err(e) if e.kind() == store::ErrorKind::NotFound => {
            Err(ApiError::NotFound("not found".into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// `DELETE /templates/:id`: `{"status":"deleted"}`, or 404 with the store's text. Sandboxes
/// made from it keep running (they keep its ID as `template_id`).
pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(_user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state.store.write(move |s| s.delete_template(&id)).await?;
    Ok(axum::Json(api::StatusBody { status: "deleted".into() }).into_response())
}

/// The template a create names: by ID, else the only one of that name.
fn find(s: &store::Store, key: &str) -> Result<Option<store::Template>, store::StoreError> {
    match s.template(key) {
        Ok(t) => return Ok(Some(t)),
        Err(e) if e.kind() == store::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut named: Vec<store::Template> =
        s.list_templates()?.into_iter().filter(|t| t.name == key).collect();
    Ok(if named.len() == 1 { named.pop() } else { None })
}

/// Fills a create request's fields from its template (`template_id`: an ID or a unique name),
/// which must exist (404 `template not found`, v1's). `template_id` becomes the template's ID.
/// A request without one is left as it is.
pub(crate) async fn apply(state: &AppState, req: &mut api::CreateSandbox) -> ApiResult<()> {
    if req.template_id.is_empty() {
        return Ok(());
    }
    let key = req.template_id.clone();
    let Some(template) = state.store.read(move |s| find(s, &key)).await? else {
        return Err(ApiError::NotFound("template not found".into()));
    };
    merge(&template, req, &random_hex(3));
    Ok(())
}

/// [`apply`]'s rules, pure: `suffix` makes the default name `<template>-<suffix>`.
fn merge(t: &store::Template, req: &mut api::CreateSandbox, suffix: &str) {
    req.template_id = t.id.clone();
    if req.name.is_empty() {
        let base: String = t.name.chars().take(56).collect();
        req.name = format!("{base}-{suffix}");
    }
    if req.image.is_empty() {
        req.image = t.image.clone();
    }
    if req.cpus.is_none() {
        req.cpus = Some(t.cpus);
    }
    if req.memory_mb.is_none() {
        req.memory_mb = Some(t.memory_mb);
    }
    if req.disk_size_mb == 0 {
        req.disk_size_mb = t.disk_size_mb;
    }
    let mut secrets = t.secrets.clone();
    for s in std::mem::take(&mut req.secrets) {
        if !secrets.contains(&s) {
            secrets.push(s);
        }
    }
    req.secrets = secrets;
    let mut labels = t.labels.clone();
    labels.extend(std::mem::take(&mut req.labels));
    req.labels = labels;
    if req.persistent_volumes.is_empty() && req.volumes.is_empty() {
        req.persistent_volumes = t
            .mounts
            .iter()
            .map(|m| api::CreateVolume {
                name: if m.volume_name.is_empty() {
                    format!("bhatti-{}-workspace", t.name)
                } else {
                    m.volume_name.clone()
                },
                mount: m.target.clone(),
                size_mb: if m.auto_create { MOUNT_VOLUME_MB } else { 0 },
                auto_create: m.auto_create,
                read_only: m.readonly,
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> store::Template {
        store::Template {
            id: "0123456789abcdef".into(),
            name: "py".into(),
            image: "minimal".into(),
            cpus: 2.0,
            memory_mb: 2048,
            disk_size_mb: 4096,
            userdata: String::new(),
            secrets: vec!["A".into(), "B".into()],
            labels: [("team".into(), "ml".into()), ("tier".into(), "dev".into())].into(),
            mounts: vec![store::TemplateMount {
                volume_name: String::new(),
                target: "/work".into(),
                readonly: false,
                auto_create: true,
            }],
            created_at: store::Timestamp(0),
        }
    }

    #[test]
    fn merge_table() {
        type Check = fn(&api::CreateSandbox) -> bool;
        let table: [(&str, serde_json::Value, Check); 8] = [
            ("everything from the template", serde_json::json!({}), |r| {
                r.name == "py-abc123"
                    && r.image == "minimal"
                    && r.cpus == Some(2.0)
                    && r.memory_mb == Some(2048)
                    && r.disk_size_mb == 4096
                    && r.template_id == "0123456789abcdef"
            }),
            ("the request's name", serde_json::json!({"name": "mine"}), |r| r.name == "mine"),
            (
                "cpus and memory overridden",
                serde_json::json!({"cpus": 0.5, "memory_mb": 256}),
                |r| r.cpus == Some(0.5) && r.memory_mb == Some(256),
            ),
            (
                "image and disk overridden",
                serde_json::json!({"image": "test", "disk_size_mb": 1}),
                |r| r.image == "test" && r.disk_size_mb == 1,
            ),
            (
                "secrets: the template's first, each once",
                serde_json::json!({"secrets": ["B", "C"]}),
                |r| r.secrets == ["A", "B", "C"],
            ),
            (
                "labels: the request wins per key",
                serde_json::json!({"labels": {"tier": "prod"}}),
                |r| {
                    r.labels.get("tier").map(String::as_str) == Some("prod")
                        && r.labels.get("team").map(String::as_str) == Some("ml")
                },
            ),
            ("mounts become persistent volumes", serde_json::json!({}), |r| {
                r.persistent_volumes.len() == 1
                    && r.persistent_volumes[0].name == "bhatti-py-workspace"
                    && r.persistent_volumes[0].mount == "/work"
                    && r.persistent_volumes[0].auto_create
                    && r.persistent_volumes[0].size_mb == MOUNT_VOLUME_MB
            }),
            (
                "the request's volumes replace the mounts",
                serde_json::json!({"persistent_volumes": [{"name": "v", "mount": "/v"}]}),
                |r| r.persistent_volumes.len() == 1 && r.persistent_volumes[0].name == "v",
            ),
        ];
        for (name, body, check) in table {
            let mut req: api::CreateSandbox = serde_json::from_value(body).unwrap();
            req.template_id = "py".into();
            merge(&template(), &mut req, "abc123");
            assert!(check(&req), "{name}: {req:?}");
        }
    }

    #[test]
    fn new_templates_table() {
        let ok = |body: serde_json::Value| {
            new_template(&serde_json::from_value(body).unwrap(), "minimal")
        };
        let t = ok(serde_json::json!({"name": "t"})).unwrap();
        assert_eq!(
            (t.cpus, t.memory_mb, t.image.as_str()),
            (1.0, 2048, "minimal"),
            "v1's defaults"
        );
        let table: [(&str, serde_json::Value, &str); 9] = [
            ("no name", serde_json::json!({}), "name required"),
            ("a name with a space", serde_json::json!({"name": "a b"}), "invalid name"),
            (
                "a path for an image",
                serde_json::json!({"name": "t", "image": "../x"}),
                "invalid image",
            ),
            ("negative cpus", serde_json::json!({"name": "t", "cpus": -1}), "cpus must be"),
            (
                "a secret with =",
                serde_json::json!({"name": "t", "secrets": ["A=B"]}),
                "invalid secret",
            ),
            (
                "a relative mount",
                serde_json::json!({"name": "t", "mounts": [{"target": "work"}]}),
                "absolute",
            ),
            (
                "a mount with ..",
                serde_json::json!({"name": "t", "mounts": [{"target": "/a/../etc"}]}),
                "..",
            ),
            (
                "a system mount",
                serde_json::json!({"name": "t", "mounts": [{"target": "/proc/"}]}),
                "system",
            ),
            (
                "a bad volume name",
                serde_json::json!({"name": "t", "mounts": [{"volume_name": "../v", "target": "/v"}]}),
                "invalid volume",
            ),
        ];
        for (name, body, part) in table {
            let err = ok(body).unwrap_err();
            assert!(err.contains(part), "{name}: {err}");
        }
    }
}
