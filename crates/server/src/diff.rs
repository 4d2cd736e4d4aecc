//! `GET /sandboxes/:id/diff?against=creation|<snapshot>[&patch=true]`: what changed in a
//! sandbox's root filesystem since it was made, or since one of the caller's snapshots (the
//! engine reads both disks on the host: `engine::Engine::diff`). A sandbox its user stopped is
//! diffed from its disk without waking it; a running one keeps running.
//!
//! Answers: 200 with `api::Diff`; 400 for a bad query; 404 for an unknown sandbox or snapshot
//! (also another owner's); 409 while the sandbox is being created or when its disk cannot be
//! read (the message says why).

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};

use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// What the query asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `None`: since creation; `Some(name)`: since that snapshot.
    pub snapshot: Option<String>,
    /// Unified diffs too.
    pub patch: bool,
}

/// Parses the query string (unknown keys are ignored, as elsewhere).
pub fn parse_query(raw: Option<&str>) -> Result<Query, String> {
    let mut q = Query { snapshot: None, patch: false };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            "against" => {
                q.snapshot = match &*v {
                    "creation" => None,
                    "" => return Err("invalid against: empty (creation or a snapshot name)".into()),
                    name if crate::names::valid_name(name) => Some(name.to_owned()),
                    name => {
                        return Err(format!(
                            "invalid against {name:?}: creation or a snapshot name"
                        ));
                    }
                }
            }
            "patch" => {
                q.patch = match &*v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("invalid patch {v:?}: true or false")),
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

fn entry(e: &engine::DiffEntry) -> api::DiffEntry {
    api::DiffEntry {
        path: e.path.clone(),
        kind: e.kind.as_str().to_owned(),
        size: e.size,
        mode: api::mode_text(e.mode),
        old_size: e.old_size,
        old_mode: e.old_mode.map(api::mode_text),
    }
}

/// The API's answer from the engine's.
pub fn to_api(against: String, r: &engine::DiffResult) -> api::Diff {
    api::Diff {
        against,
        added: r.added.iter().map(entry).collect(),
        changed: r.changed.iter().map(entry).collect(),
        deleted: r.deleted.iter().map(entry).collect(),
        truncated: r.truncated,
        patch: r.patch.clone(),
    }
}

/// `GET /sandboxes/:id/diff`.
pub async fn diff(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = parse_query(raw.as_deref()).map_err(ApiError::BadRequest)?;
    let sandbox = crate::sandboxes::resolve(&state, &user, &id).await?;
    match sandbox.status {
        store::Status::Creating => return Err(ApiError::Refused(bhatti_core::Refusal::Creating)),
        store::Status::Unknown => return Err(ApiError::Refused(bhatti_core::Refusal::Lost)),
        _ => {}
    }
    let (base, against) = match &q.snapshot {
        None => (engine::DiffBase::Creation, "creation".to_owned()),
        Some(name) => {
            let (owner, key) = (user.id.clone(), name.clone());
            let row = state.store.read(move |s| s.snapshot(&owner, &key)).await?;
            let key = crate::snapshots::engine_key(&row)?;
            (engine::DiffBase::Checkpoint { owner: user.id.clone(), name: key }, name.clone())
        }
    };
    let result = state.engine.diff(&sandbox.id, base, q.patch).await?;
    Ok(axum::Json(to_api(against, &result)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q =
            |snapshot: Option<&str>, patch| Ok(Query { snapshot: snapshot.map(Into::into), patch });
        let table: [(&str, Option<&str>, Result<Query, &str>); 9] = [
            ("nothing: since creation", None, q(None, false)),
            ("creation", Some("against=creation"), q(None, false)),
            ("a snapshot", Some("against=before-x.1"), q(Some("before-x.1"), false)),
            ("a patch", Some("against=creation&patch=true"), q(None, true)),
            ("patch=1", Some("patch=1"), q(None, true)),
            ("an empty against", Some("against="), Err("invalid against: empty")),
            ("a bad name", Some("against=a%2Fb"), Err("invalid against \"a/b\"")),
            ("a bad patch", Some("patch=yes"), Err("invalid patch")),
            ("unknown keys are ignored", Some("x=1&against=s1"), q(Some("s1"), false)),
        ];
        for (what, raw, want) in table {
            match (parse_query(raw), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{what}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{what}: {e}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }
}
