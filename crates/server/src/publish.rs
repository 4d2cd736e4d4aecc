//! Publishing (host.md 1.15): `POST/GET /sandboxes/:id/publish`,
//! `DELETE /sandboxes/:id/publish/:port`.
//!
//! A rule gives a sandbox port a globally unique alias the public proxy serves it under. An
//! absent alias is generated from the sandbox's name (`<base>-<6 hex>`, up to 4 tries). The
//! same port published again answers the existing rule with 200 and `X-Bhatti-Existing: true`
//! (whatever alias was asked for); an alias another rule holds is 409. Publishing neither wakes
//! the sandbox nor checks that anything listens on the port. Destroying a sandbox deletes its
//! rules (the row's foreign-key cascade); start-up deletes rules of destroyed or unknown
//! sandboxes (`store::Store::clean_up_at_start`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bhatti_core::publish::{AliasError, alias_base, generated_alias, validate_alias};

use crate::auth::CurrentUser;
use crate::engine_events::LogEntry;
use crate::error::{ApiError, ApiResult};
use crate::request::Json;
use crate::sandboxes::{resolve, rfc3339};
use crate::state::AppState;

/// Tries at a generated alias before giving up (v1).
const GENERATE_TRIES: usize = 4;

/// The API's view of a rule, with its URL.
pub(crate) fn to_api(state: &AppState, r: &store::PublishRule) -> api::PublishRule {
    api::PublishRule {
        id: r.id.clone(),
        sandbox_id: r.sandbox_id.clone(),
        user_id: r.owner.clone(),
        port: r.port,
        alias: r.alias.clone(),
        url: state.settings.public_urls.url_for(&r.alias),
        created_at: rfc3339(r.created_at),
    }
}

/// A port from a request: 1..=65535.
fn port_of(port: u32) -> ApiResult<u16> {
    crate::request::port_field(port, 1, "port")
}

fn alias_refused(alias: &str, e: AliasError) -> ApiError {
    ApiError::BadRequest(format!("invalid alias {alias:?}: {e}"))
}

/// 6 random hex characters.
fn random_suffix() -> ApiResult<String> {
    let mut buf = [0u8; 3];
    getrandom::fill(&mut buf).map_err(|e| ApiError::Internal(format!("random alias: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a publish did.
enum Outcome {
    Created(store::PublishRule),
    Existing(store::PublishRule),
}

/// `POST /sandboxes/:id/publish` `{"port", "alias"?}`.
pub async fn publish(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    Json(req): Json<api::PublishRequest>,
) -> ApiResult<Response> {
    let port = port_of(req.port)?;
    if !req.alias.is_empty() {
        validate_alias(&req.alias).map_err(|e| alias_refused(&req.alias, e))?;
    }
    let sandbox = resolve(&state, &user, &id).await?;
    // Candidate aliases, drawn before the store call (the writer thread does no IO of ours).
    let candidates: Vec<String> = if req.alias.is_empty() {
        let base = alias_base(&sandbox.name);
        (0..GENERATE_TRIES)
            .map(|_| random_suffix().map(|hex| generated_alias(&base, &hex)))
            .collect::<ApiResult<_>>()?
    } else {
        vec![req.alias.clone()]
    };
    let generated = req.alias.is_empty();
    let (owner, sid) = (user.id.clone(), sandbox.id.clone());
    let outcome = state
        .store
        .write(move |s| {
            // The same port again answers its rule, whatever alias was asked for (v1).
            if let Some(rule) = s.sandbox_publish_rules(&sid)?.into_iter().find(|r| r.port == port)
            {
                return Ok(Some(Outcome::Existing(rule)));
            }
            for alias in &candidates {
                if generated && s.alias_taken(alias)? {
                    continue;
                }
                return s
                    .create_publish_rule(&owner, &sid, port, alias)
                    .map(|r| Some(Outcome::Created(r)));
            }
            Ok(None)
        })
        .await?;
    let rule = match outcome {
        Some(Outcome::Created(rule)) => rule,
        Some(Outcome::Existing(rule)) => {
            let mut response = axum::Json(to_api(&state, &rule)).into_response();
            response
                .headers_mut()
                .insert(api::EXISTING_HEADER, axum::http::HeaderValue::from_static("true"));
            return Ok(response);
        }
        None => return Err(ApiError::Internal("alias generation failed".into())),
    };
    let meta = serde_json::json!({ "port": rule.port, "alias": rule.alias });
    state.events.record(LogEntry::new("publish.created", meta).to_event(&sandbox));
    Ok((StatusCode::CREATED, axum::Json(to_api(&state, &rule))).into_response())
}

/// `GET /sandboxes/:id/publish`: the sandbox's rules by port.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let sandbox = resolve(&state, &user, &id).await?;
    let rules = state.store.read(move |s| s.sandbox_publish_rules(&sandbox.id)).await?;
    let out: Vec<api::PublishRule> = rules.iter().map(|r| to_api(&state, r)).collect();
    Ok(axum::Json(out).into_response())
}

/// `DELETE /sandboxes/:id/publish/:port`: 204; no rule on the port is 404.
pub async fn unpublish(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path((id, port)): Path<(String, String)>,
) -> ApiResult<Response> {
    let port = port
        .parse::<u32>()
        .ok()
        .and_then(|p| port_of(p).ok())
        .ok_or_else(|| ApiError::BadRequest(format!("invalid port {port:?}")))?;
    let sandbox = resolve(&state, &user, &id).await?;
    let sid = sandbox.id.clone();
    let rule = state.store.write(move |s| s.delete_publish_rule(&sid, port)).await?;
    // The public proxy must not keep routing the alias from its cache.
    state.public.routes.forget(&rule.alias);
    let meta = serde_json::json!({ "port": rule.port, "alias": rule.alias });
    state.events.record(LogEntry::new("publish.deleted", meta).to_event(&sandbox));
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_1_to_65535() {
        assert!(port_of(0).is_err());
        assert_eq!(port_of(1).ok(), Some(1));
        assert_eq!(port_of(65535).ok(), Some(65535));
        assert!(port_of(65536).is_err());
    }

    #[test]
    fn suffixes_are_6_hex() {
        let s = random_suffix().unwrap();
        assert_eq!(s.len(), 6);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}
