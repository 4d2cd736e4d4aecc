//! Secrets (host.md 1.18): `POST /secrets` (upsert, 201), `GET /secrets` (names and times),
//! `DELETE /secrets/:name`; sealed with age before the store sees them (`sealing.rs`).
//!
//! At create, `POST /sandboxes {"secrets": [names]}` resolves each name (unknown: 400 `secret
//! "X" not found`, v1's), decrypts it and gives the sandbox the variable `NAME=value`. The
//! values do **not** go on the config drive (v1 wrote them there, so they sat in plain text in
//! the sandbox's directory and in the engine's stored record): the daemon keeps them, sealed in
//! the store (`sandbox_secret_env`) and decrypted in memory (`secret_envs.rs`), and adds them
//! to the environment of every exec, shell and piped session it starts in that sandbox (lohar
//! merges a request's env over its config env). The values are the ones at create time; a later
//! `POST /secrets` does not change a running sandbox's. The init script, which lohar starts
//! from the config drive at boot, does not see them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use zeroize::Zeroizing;

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::request::Json;
use crate::secret_envs::SecretEnv;
use crate::state::AppState;

/// Longest name (ours; an environment variable's name).
pub const MAX_NAME: usize = 128;
/// Largest value (ours).
pub const MAX_VALUE: usize = 64 * 1024;
/// Secrets one create may name (ours).
pub const MAX_PER_SANDBOX: usize = 64;

/// A secret's name is the variable the sandbox gets: a letter or `_` first, then letters,
/// digits, `_`, `.` or `-` (no `/`, which would not fit `DELETE /secrets/:name`, no `=`).
pub fn check_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_NAME
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid secret name {name:?}: a letter or '_', then letters, digits, '_', '.' or \
             '-', at most {MAX_NAME}"
        ))
    }
}

/// A value a process environment can hold: no NUL, at most [`MAX_VALUE`] bytes. The message
/// never shows the value.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE {
        return Err(format!("value: at most {MAX_VALUE} bytes"));
    }
    if value.contains('\0') {
        return Err("value: contains a NUL byte".into());
    }
    Ok(())
}

fn record(info: &store::SecretInfo) -> api::SecretRecord {
    api::SecretRecord {
        name: info.name.clone(),
        created_at: crate::times::rfc3339(info.created_at),
        updated_at: crate::times::rfc3339(info.updated_at),
    }
}

fn sealing_failed(e: crate::sealing::SealError) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// `POST /secrets`.
pub async fn set(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Json(req): Json<api::SetSecret>,
) -> ApiResult<Response> {
    if req.name.is_empty() || req.value.is_empty() {
        return Err(ApiError::BadRequest("name and value required".into()));
    }
    check_name(&req.name).map_err(ApiError::BadRequest)?;
    check_value(req.value.expose()).map_err(ApiError::BadRequest)?;
    let plain = Zeroizing::new(req.value.expose().as_bytes().to_vec());
    let sealed = state.sealer.seal(plain).await.map_err(sealing_failed)?;
    let (owner, name) = (user.id.clone(), req.name.clone());
    let info =
        state.store.write(move |s| s.set_secret(&owner, &name, &store::Ciphertext(sealed))).await?;
    Ok((StatusCode::CREATED, axum::Json(record(&info))).into_response())
}

/// `GET /secrets`: the owner's, by name.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<Response> {
    let owner = user.id.clone();
    let list = state.store.read(move |s| s.list_secrets(&owner)).await?;
    Ok(axum::Json(list.iter().map(record).collect::<Vec<_>>()).into_response())
}

/// `DELETE /secrets/:name`.
pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let owner = user.id.clone();
    state.store.write(move |s| s.delete_secret(&owner, &name)).await?;
    Ok(axum::Json(api::StatusBody { status: "deleted".into() }).into_response())
}

/// The environment a create's `secrets` give (decrypted now; `None` when it names none).
/// An unknown name is v1's 400 `secret "X" not found`; duplicates count once.
pub(crate) async fn for_create(
    state: &AppState,
    user: &store::User,
    names: &[String],
) -> ApiResult<Option<SecretEnv>> {
    if names.is_empty() {
        return Ok(None);
    }
    if names.len() > MAX_PER_SANDBOX {
        return Err(ApiError::BadRequest(format!("secrets: at most {MAX_PER_SANDBOX}")));
    }
    let mut env = BTreeMap::new();
    for name in names {
        if env.contains_key(name) {
            continue;
        }
        check_name(name).map_err(|e| ApiError::BadRequest(format!("secrets: {e}")))?;
        let (owner, key) = (user.id.clone(), name.clone());
        let sealed = match state.store.read(move |s| s.secret_value(&owner, &key)).await {
            Ok(sealed) => sealed,
            Err(e) if e.kind() == store::ErrorKind::NotFound => {
                return Err(ApiError::BadRequest(format!("secret {name:?} not found")));
            }
            Err(e) => return Err(e.into()),
        };
        let plain = state.sealer.open(sealed.0).await.map_err(sealing_failed)?;
        let value = Zeroizing::new(
            String::from_utf8(plain.to_vec())
                .map_err(|_| ApiError::Internal(format!("secret {name:?} is not UTF-8")))?,
        );
        env.insert(name.clone(), value);
    }
    Ok(Some(SecretEnv(env)))
}

/// After a create built the sandbox: keeps its secret environment (sealed in the store, open in
/// memory). If that fails the sandbox is destroyed: it must not run without what it asked for.
pub(crate) async fn attach(
    state: &AppState,
    sandbox: &store::Sandbox,
    env: Option<SecretEnv>,
) -> ApiResult<()> {
    let Some(env) = env else { return Ok(()) };
    let kept = async {
        let json = Zeroizing::new(
            serde_json::to_vec(
                &env.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<BTreeMap<_, _>>(),
            )
            .map_err(|e| ApiError::Internal(format!("encoding a secret env: {e}")))?,
        );
        let sealed = state.sealer.seal(json).await.map_err(sealing_failed)?;
        let id = sandbox.id.clone();
        state
            .store
            .write(move |s| s.set_sandbox_secret_env(&id, &store::Ciphertext(sealed)))
            .await?;
        state.secret_envs.set(&sandbox.id, Some(Arc::new(env)));
        Ok::<(), ApiError>(())
    }
    .await;
    if let Err(e) = kept {
        if let Err(undo) = crate::lifecycle::destroy(state, sandbox).await {
            tracing::error!(sandbox = %sandbox.id, "destroying a sandbox without its secrets: {undo}");
        }
        return Err(e);
    }
    Ok(())
}

/// The sandbox's secret environment: memory, else the store (after a daemon restart).
/// Gives the clones of a fork their source's secret environment (the sealed copy, as it is:
/// a clone is its source's twin, secrets included). A clone that cannot have it is the fork's
/// failure (the caller destroys the clones).
pub(crate) async fn inherit(state: &AppState, source: &str, clones: &[String]) -> ApiResult<()> {
    let key = source.to_owned();
    let Some(sealed) = state.store.read(move |s| s.sandbox_secret_env(&key)).await? else {
        return Ok(());
    };
    let ids = clones.to_vec();
    state
        .store
        .write(move |s| ids.iter().try_for_each(|id| s.set_sandbox_secret_env(id, &sealed)))
        .await?;
    Ok(())
}

async fn env_of(state: &AppState, id: &str) -> Result<Option<Arc<SecretEnv>>, String> {
    if let Some(known) = state.secret_envs.get(id) {
        return Ok(known);
    }
    let key = id.to_owned();
    let sealed = state
        .store
        .read(move |s| s.sandbox_secret_env(&key))
        .await
        .map_err(|e| format!("reading the sandbox's secrets: {e}"))?;
    let env = match sealed {
        None => None,
        Some(sealed) => {
            let plain = state.sealer.open(sealed.0).await.map_err(|e| e.to_string())?;
            let map: BTreeMap<String, String> = serde_json::from_slice(&plain)
                .map_err(|e| format!("decoding the sandbox's secrets: {e}"))?;
            Some(Arc::new(SecretEnv(
                map.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect(),
            )))
        }
    };
    Ok(state.secret_envs.learn(id, env))
}

/// Adds the sandbox's secret environment to a request the daemon sends to its guest: the
/// secrets first, then the request's own variables over them. A failure is the text for the
/// client (no value in it); nothing runs without the secrets it should have.
pub(crate) async fn add_env(
    state: &AppState,
    id: &str,
    req: &mut engine::ExecRequest,
) -> Result<(), String> {
    let Some(env) = env_of(state, id).await.inspect_err(|e| {
        tracing::error!(sandbox = %id, "secret env: {e}");
    })?
    else {
        return Ok(());
    };
    let mut merged: BTreeMap<String, String> =
        env.0.iter().map(|(k, v)| (k.clone(), v.as_str().to_owned())).collect();
    if let Some(own) = req.env.take() {
        merged.extend(own);
    }
    req.env = Some(merged);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table() {
        let table = [
            ("env style", "API_KEY", true),
            ("lower case", "token", true),
            ("underscore first", "_X", true),
            ("dots and dashes", "my-token.v2", true),
            ("empty", "", false),
            ("digit first", "1X", false),
            ("a slash", "a/b", false),
            ("an equals sign", "A=B", false),
            ("a space", "A B", false),
            ("NUL", "A\0", false),
            ("non-ASCII", "clé", false),
            ("too long", &"A".repeat(MAX_NAME + 1), false),
            ("longest", &"A".repeat(MAX_NAME), true),
        ];
        for (name, secret, ok) in table {
            assert_eq!(check_name(secret).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn values_table_and_messages_never_hold_them() {
        let big = "v".repeat(MAX_VALUE + 1);
        let table = [
            ("plain", "s3cret", true),
            ("newlines and = are fine", "a=b\nc", true),
            ("NUL", "planted\0x", false),
            ("too large", big.as_str(), false),
        ];
        for (name, value, ok) in table {
            match check_value(value) {
                Ok(()) => assert!(ok, "{name}"),
                Err(e) => {
                    assert!(!ok, "{name}");
                    assert!(!e.contains("planted") && !e.contains("vvvv"), "{name}: {e}");
                }
            }
        }
    }
}
