//! Who is asking. Every route but `/health` needs `Authorization: Bearer <key>`; WebSocket
//! routes also take `?token=<key>` (browsers cannot set headers on a WebSocket). The decision
//! uses the clean path, so `/health/../sandboxes` is not `/health`. Keys are looked up by their
//! SHA-256 in the store; a key never reaches a log line or an error message.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::request::clean_path;
use crate::state::AppState;

/// The authenticated user, in the request's extensions.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub store::User);

/// The user's name, on the response for the request log.
#[derive(Debug, Clone)]
pub struct UserName(pub String);

/// Whether a (clean) path is a WebSocket route, where `?token=` is accepted.
fn is_websocket_route(path: &str) -> bool {
    path.ends_with("/ws")
}

/// The key from `?token=`, if the query has one.
fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| pair.strip_prefix("token=").map(str::to_owned))
}

/// The key of an `Authorization` value: the scheme is matched case-insensitively (RFC 9110
/// 11.1: `bearer` and `BEARER` are `Bearer`), one or more spaces follow it.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim_start())
}

/// The middleware: authenticates everything but `/health`.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = clean_path(request.uri().path());
    if path == "/health" {
        return next.run(request).await;
    }
    let header = request.headers().get(axum::http::header::AUTHORIZATION);
    let key = match header {
        Some(value) => match value.to_str().ok().and_then(bearer_credentials) {
            Some(key) => Some(key.trim().to_owned()),
            None => return ApiError::Unauthorized("authorization required").into_response(),
        },
        None if is_websocket_route(&path) => query_token(request.uri().query()),
        None => None,
    };
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return ApiError::Unauthorized("authorization required").into_response();
    };
    let user = match state.store.read(move |s| s.user_by_api_key(&key)).await {
        Ok(user) => user,
        Err(e) if e.kind() == store::ErrorKind::NotFound => {
            tracing::warn!(path = %path, "invalid api key");
            return ApiError::Unauthorized("invalid api key").into_response();
        }
        Err(e) => return ApiError::Store(e).into_response(),
    };
    let name = user.name.clone();
    request.extensions_mut().insert(CurrentUser(user));
    let mut response = next.run(request).await;
    response.extensions_mut().insert(UserName(name));
    response
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CurrentUser>()
            .cloned()
            .ok_or(ApiError::Unauthorized("authorization required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let table = [
            ("v1's spelling", "Bearer k1", Some("k1")),
            ("lower case", "bearer k1", Some("k1")),
            ("upper case", "BEARER k1", Some("k1")),
            ("two spaces", "Bearer  k1", Some("k1")),
            ("another scheme", "Basic k1", None),
            ("no credentials", "Bearer", None),
            ("glued", "Bearerk1", None),
        ];
        for (name, value, want) in table {
            assert_eq!(bearer_credentials(value), want, "{name}");
        }
    }

    #[test]
    fn tokens_in_the_query_only_count_on_websocket_routes() {
        assert!(
            is_websocket_route("/sandboxes/a/ws") && is_websocket_route("/sandboxes/a/exec/ws")
        );
        assert!(!is_websocket_route("/sandboxes/a/files"));
        assert_eq!(query_token(Some("session=1&token=bht_x")).as_deref(), Some("bht_x"));
        assert_eq!(query_token(Some("session=1")), None);
    }
}
