//! `GET /events` (the caller's own events) and `GET /admin/events` (everyone's, the admin
//! only): newest first, filtered by `type` (a prefix: `sandbox` is `sandbox.*`; with a dot, an
//! exact type), `sandbox` (an ID, or the name of one of the caller's sandboxes), `since` (RFC
//! 3339, `2006-01-02`, or an age: `30s`, `5m`, `24h`, `7d`), `limit` (1..=1000, default 50)
//! and, for the admin, `user` (a name or an ID). Unknown parameters are ignored, as everywhere
//! in the API. `follow=true` answers NDJSON instead: one event per line as it is recorded
//! (through the recorder's subscribers), until the client goes or falls 64 events behind.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::admin::Admin;
use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The most events one answer holds.
pub const MAX_LIMIT: u32 = 1000;
/// How long a read waits for the recorder to write what is queued.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The parsed query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Type prefix.
    pub kind: Option<String>,
    /// Sandbox ID or name.
    pub sandbox: Option<String>,
    /// User name or ID (the admin's route only).
    pub user: Option<String>,
    /// At or after, ms since the epoch.
    pub since: Option<i64>,
    /// How many.
    pub limit: u32,
    /// Stream NDJSON as events happen.
    pub follow: bool,
}

/// Parses a query string (`now` for relative `since` values).
pub fn parse_query(raw: Option<&str>, now: SystemTime) -> Result<Query, String> {
    let mut q = Query { limit: 50, ..Query::default() };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let non_empty = |name: &str| {
            if v.is_empty() { Err(format!("invalid {name}: empty")) } else { Ok(v.to_string()) }
        };
        match &*k {
            "type" => q.kind = Some(non_empty("type")?),
            "sandbox" => q.sandbox = Some(non_empty("sandbox")?),
            "user" => q.user = Some(non_empty("user")?),
            "since" => q.since = Some(parse_since(&v, now)?),
            "limit" => {
                q.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("invalid limit {v:?}: 1 to {MAX_LIMIT}"))?;
            }
            "follow" => {
                q.follow = match &*v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("invalid follow {v:?}: true or false")),
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

/// `since`: an age (`30s`, `5m`, `24h`, `7d`), a date (`2006-01-02`, UTC) or an RFC 3339 time
/// (`2006-01-02T15:04:05Z`; without an offset, UTC).
pub fn parse_since(v: &str, now: SystemTime) -> Result<i64, String> {
    let bad = || format!("invalid since {v:?}: an age (30s, 5m, 24h, 7d) or a time (RFC 3339)");
    let at = if v.starts_with(|c: char| c.is_ascii_digit()) && !v.contains('-') {
        let age = humantime::parse_duration(v).map_err(|_| bad())?;
        now.checked_sub(age).ok_or_else(bad)?
    } else if v.len() == 10 {
        humantime::parse_rfc3339_weak(&format!("{v}T00:00:00")).map_err(|_| bad())?
    } else {
        humantime::parse_rfc3339_weak(v).map_err(|_| bad())?
    };
    let ms = at.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_millis();
    i64::try_from(ms).map_err(|_| bad())
}

/// A stored event as the API shows it.
pub fn to_api(id: Option<i64>, e: &store::NewEvent) -> api::Event {
    api::Event {
        id,
        ts: crate::times::rfc3339(e.ts),
        kind: e.kind.clone(),
        user_id: e.user_id.clone(),
        sandbox_id: e.sandbox_id.clone(),
        meta: serde_json::from_str(&e.meta).unwrap_or_else(|_| serde_json::json!({})),
    }
}

/// `GET /events`: the caller's events.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = parse_query(raw.as_deref(), SystemTime::now()).map_err(ApiError::BadRequest)?;
    // `user` is the admin's filter; here the caller is the user.
    answer(&state, q, Some(user.id)).await
}

/// `GET /admin/events`: everyone's events (the admin only).
pub async fn list_all(
    State(state): State<AppState>,
    Admin(_): Admin,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q = parse_query(raw.as_deref(), SystemTime::now()).map_err(ApiError::BadRequest)?;
    let user = match &q.user {
        None => None,
        Some(name_or_id) => {
            let key = name_or_id.clone();
            let found = state
                .store
                .read(move |s| s.user_by_name(&key).or_else(|_| s.user(&key)))
                .await
                .map_err(|_| ApiError::NotFound(format!("user {name_or_id:?} not found")))?;
            Some(found.id)
        }
    };
    answer(&state, q, user).await
}

async fn answer(state: &AppState, q: Query, user_id: Option<String>) -> ApiResult<Response> {
    let sandbox_id = match &q.sandbox {
        None => None,
        // A name of one of the user's live sandboxes, else an ID as given (a destroyed
        // sandbox's events are still there).
        Some(arg) => {
            let (owner, arg) = (user_id.clone().unwrap_or_default(), arg.clone());
            Some(
                state
                    .store
                    .read(move |s| Ok(s.resolve_sandbox(&owner, &arg).map(|s| s.id).unwrap_or(arg)))
                    .await?,
            )
        }
    };
    if q.follow {
        let filter = crate::events::Filter { kind: q.kind, sandbox_id, user_id };
        let rx = state.events.subscribe(filter).ok_or(ApiError::Busy)?;
        return Ok(follow(rx));
    }
    // What was recorded before this request is in the answer.
    let _ = tokio::time::timeout(FLUSH_WAIT, state.events.flush()).await;
    let query = store::EventQuery {
        kind: q.kind,
        user_id,
        sandbox_id,
        since: q.since.map(store::Timestamp),
        limit: Some(q.limit),
    };
    let rows = state.store.read(move |s| s.query_events(&query)).await?;
    let out: Vec<api::Event> = rows.iter().map(|e| to_api(Some(e.id), &e.event)).collect();
    Ok(axum::Json(out).into_response())
}

/// The NDJSON stream of a subscription.
fn follow(rx: tokio::sync::mpsc::Receiver<std::sync::Arc<store::NewEvent>>) -> Response {
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&to_api(None, &event)).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    ([(header::CONTENT_TYPE, api::NDJSON)], Body::from_stream(lines)).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn queries_parse_or_say_what_is_wrong() {
        let now = UNIX_EPOCH + Duration::from_secs(10 * 86_400);
        let ok = |raw: &str| parse_query(Some(raw), now).unwrap();
        let table: [(&str, &str, Query); 8] = [
            ("nothing", "", Query { limit: 50, ..Query::default() }),
            (
                "type and sandbox",
                "type=sandbox&sandbox=web",
                Query {
                    kind: Some("sandbox".into()),
                    sandbox: Some("web".into()),
                    limit: 50,
                    ..Query::default()
                },
            ),
            (
                "an age",
                "since=1h",
                Query { since: Some(10 * 86_400_000 - 3_600_000), limit: 50, ..Query::default() },
            ),
            (
                "days",
                "since=7d",
                Query { since: Some(3 * 86_400_000), limit: 50, ..Query::default() },
            ),
            (
                "a date",
                "since=1970-01-02",
                Query { since: Some(86_400_000), limit: 50, ..Query::default() },
            ),
            (
                "rfc 3339",
                "since=1970-01-01T00:00:01Z",
                Query { since: Some(1000), limit: 50, ..Query::default() },
            ),
            (
                "limit and follow",
                "limit=1000&follow=true",
                Query { limit: 1000, follow: true, ..Query::default() },
            ),
            (
                "unknown parameters are ignored",
                "colour=blue&limit=3",
                Query { limit: 3, ..Query::default() },
            ),
        ];
        for (name, raw, want) in table {
            assert_eq!(ok(raw), want, "{name}");
        }
        let bad = [
            ("since nonsense", "since=yesterday", "invalid since"),
            ("since a negative age", "since=-5m", "invalid since"),
            ("since before the epoch", "since=11d", "invalid since"),
            ("since a bad date", "since=2026-13-45", "invalid since"),
            ("since empty", "since=", "invalid since"),
            ("limit zero", "limit=0", "invalid limit"),
            ("limit too big", "limit=1001", "invalid limit"),
            ("limit not a number", "limit=ten", "invalid limit"),
            ("limit negative", "limit=-1", "invalid limit"),
            ("empty type", "type=", "invalid type: empty"),
            ("empty sandbox", "sandbox=", "invalid sandbox: empty"),
            ("follow nonsense", "follow=maybe", "invalid follow"),
        ];
        for (name, raw, want) in bad {
            let err = parse_query(Some(raw), now).unwrap_err();
            assert!(err.starts_with(want), "{name}: {err}");
        }
    }
}
