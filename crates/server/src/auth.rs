//! Who is asking. Every route but `/health`, `/openapi.json` and the web shell's (`/_shell/...`, see
//! [`is_web_shell_route`]) needs `Authorization: Bearer <key>`; the API's own
//! two WebSocket routes, `/sandboxes/<id>/ws` and `/sandboxes/<id>/exec/ws`, also take
//! `?token=<key>` (browsers cannot set headers on a WebSocket). Nothing else does: not the
//! proxy (`/sandboxes/<id>/proxy/<port>/.../ws` is the guest's path, and a key accepted there
//! would travel on to the guest in the query), not a path that only cleans to a WebSocket route
//! (`/sandboxes/a/proxy/80/../../ws` is routed to the proxy). The `/health` decision uses the
//! clean path, so `/health/../sandboxes` is not `/health`. Keys are looked up by their SHA-256
//! in the store; a key never reaches a log line or an error message.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::request::{UserName, clean_path};
use crate::state::AppState;

/// The authenticated user, in the request's extensions.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub store::User);

/// The key this request authenticated with, in its extensions: the proxy refuses to forward a
/// request that carries it anywhere the guest would see (crates/server/README.md, "Keys and the
/// proxy"). `Debug` never shows it.
#[derive(Clone)]
pub struct PresentedKey(Arc<str>);

impl PresentedKey {
    /// The key's bytes, to search for (never to print).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresentedKey(<redacted>)")
    }
}

/// Whether a raw request path is one of the API's own WebSocket routes, where `?token=` is
/// accepted: exactly `/sandboxes/<id>/ws` or `/sandboxes/<id>/exec/ws`, and already clean (a
/// path with `..`, `.`, `//` or a trailing `/` is routed by its raw form, which may be the
/// proxy's, so it never qualifies).
fn is_websocket_route(path: &str) -> bool {
    if clean_path(path) != path {
        return false;
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    matches!(segments.as_slice(), ["sandboxes", _, "ws"] | ["sandboxes", _, "exec", "ws"])
}

/// Whether a raw request path is the web shell's (`/_shell/...`, or `/_shell`, a 404 for anyone
/// as in v1), which takes no API key: it must start so both raw (it is routed by its raw form, and every route under `/_shell/` is
/// the web shell's) and clean (`/_shell/../sandboxes` is the API's, and needs a key).
fn is_web_shell_route(path: &str) -> bool {
    // `/_shell` itself is a 404 for anyone, as v1's.
    let clean = clean_path(path);
    (path == "/_shell" || path.starts_with("/_shell/"))
        && (clean == "/_shell" || clean.starts_with("/_shell/"))
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
    if path == "/health" || path == "/openapi.json" || is_web_shell_route(request.uri().path()) {
        return next.run(request).await;
    }
    let header = request.headers().get(axum::http::header::AUTHORIZATION);
    let key = match header {
        Some(value) => match value.to_str().ok().and_then(bearer_credentials) {
            Some(key) => Some(key.trim().to_owned()),
            None => return ApiError::Unauthorized("authorization required").into_response(),
        },
        None if is_websocket_route(request.uri().path()) => query_token(request.uri().query()),
        None => None,
    };
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return ApiError::Unauthorized("authorization required").into_response();
    };
    let key_for_proxy: Arc<str> = Arc::from(key.as_str());
    let user = match state.store.read(move |s| s.user_by_api_key(&key)).await {
        Ok(user) => user,
        Err(e) if e.kind() == store::ErrorKind::NotFound => {
            tracing::warn!(path = %path, "invalid api key");
            // No path in the event: a client may have put its key there.
            let meta = serde_json::json!({ "reason": "invalid api key" });
            state.events.record(store::NewEvent {
                meta: meta.to_string(),
                ..store::NewEvent::now("auth.failed")
            });
            return ApiError::Unauthorized("invalid api key").into_response();
        }
        Err(e) => return ApiError::Store(e).into_response(),
    };
    let name = user.name.clone();
    let path_holds_key =
        crate::key_scan::holds(request.uri().path().as_bytes(), key_for_proxy.as_bytes());
    request.extensions_mut().insert(CurrentUser(user));
    request.extensions_mut().insert(PresentedKey(key_for_proxy));
    let mut response = next.run(request).await;
    response.extensions_mut().insert(UserName(name));
    if path_holds_key {
        response.extensions_mut().insert(crate::request::PathHoldsKey);
    }
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
    fn tokens_in_the_query_only_count_on_the_apis_own_websocket_routes() {
        for path in ["/sandboxes/a/ws", "/sandboxes/a/exec/ws", "/sandboxes/proxy/ws"] {
            assert!(is_websocket_route(path), "{path}");
        }
        for path in [
            "/sandboxes/a/files",
            "/sandboxes/a/proxy/8080/ws",
            "/sandboxes/a/proxy/8080/x/ws",
            "/sandboxes/a/proxy/8080/exec/ws",
            "/sandboxes/a/proxy/8080/../../ws",
            "/sandboxes/a/proxy/../ws",
            "/sandboxes/a/./ws",
            "/sandboxes//a/ws",
            "/sandboxes/a/ws/",
            "/sandboxes/ws",
            "/x/sandboxes/a/ws",
            "/ws",
        ] {
            assert!(!is_websocket_route(path), "{path}");
        }
        assert_eq!(query_token(Some("session=1&token=bht_x")).as_deref(), Some("bht_x"));
        assert_eq!(query_token(Some("session=1")), None);
    }

    #[test]
    fn only_clean_web_shell_paths_go_without_a_key() {
        for path in ["/_shell", "/_shell/", "/_shell/a/", "/_shell/a/ws", "/_shell/_assets/x.js"] {
            assert!(is_web_shell_route(path), "{path}");
        }
        for path in [
            "/_shell/..",
            "/_shell/../sandboxes",
            "/_shell/a/../../sandboxes/b/ws",
            "/sandboxes/../_shell/a",
            "/x/_shell/a",
        ] {
            assert!(!is_web_shell_route(path), "{path}");
        }
    }

    #[test]
    fn a_presented_key_never_shows_in_debug() {
        let key = PresentedKey(Arc::from("bht_secret"));
        assert!(!format!("{key:?}").contains("secret"));
        assert_eq!(key.as_bytes(), b"bht_secret");
    }
}
