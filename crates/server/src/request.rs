//! What happens to every request before and after its handler: a request ID is made, the version header goes on the answer, internal errors are logged with their cause
//! and answered with the ID, and one log line records the request (never a token).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, InternalCause, error_response};

/// The largest JSON body a request may carry.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// This request's ID (`req_` + 16 hex), in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A new request ID.
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 8];
    // The ID only correlates a log line with an answer; a clock-based fallback is fine.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_le_bytes();
    }
    format!("req_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// POSIX `path.Clean`: collapses `//`, `.` and `..` (never above the root).
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The outermost middleware: request ID, version header, internal errors, the log line.
pub async fn around(mut request: Request, next: Next) -> Response {
    let id = new_request_id();
    request.extensions_mut().insert(RequestId(id.clone()));
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let started = Instant::now();
    let mut response = next.run(request).await;
    if let Some(InternalCause(cause)) = response.extensions_mut().remove::<InternalCause>() {
        tracing::error!(request_id = %id, %method, %path, "internal error: {cause}");
        let body = api::ErrorBody {
            error: "internal error".into(),
            code: "internal".into(),
            request_id: Some(id.clone()),
        };
        response = (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
    }
    response.headers_mut().insert(api::VERSION_HEADER, HeaderValue::from_static(api::VERSION));
    let user = response.extensions().get::<crate::auth::UserName>().map(|u| u.0.clone());
    tracing::info!(
        request_id = %id,
        %method,
        %path,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        user = user.as_deref().unwrap_or("-"),
        "request"
    );
    response
}

/// A JSON body, at most [`MAX_JSON_BODY`] bytes, unknown fields refused by the types; every
/// failure is a 4xx that says what is wrong.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let body = request.into_body();
        let bytes = axum::body::to_bytes(body, MAX_JSON_BODY).await.map_err(|_| {
            ApiError::TooLarge(format!("request body over {} KiB", MAX_JSON_BODY / 1024))
        })?;
        if bytes.is_empty() {
            return serde_json::from_slice(b"{}")
                .map(Json)
                .map_err(|e| ApiError::BadRequest(format!("invalid json: {e}")));
        }
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| ApiError::BadRequest(format!("invalid json: {e}")))
    }
}

/// 404 for paths no route knows.
pub async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not found".into(), "not_found")
}

/// 405 for known paths with another method.
pub async fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into(), "method")
}

/// An empty body (HEAD answers, streams that start later).
pub fn empty() -> Body {
    Body::empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_like_posix_path_clean() {
        assert_eq!(clean_path("/health/../sandboxes"), "/sandboxes");
        assert_eq!(clean_path("//health/."), "/health");
        assert_eq!(clean_path("/../../etc"), "/etc");
        assert_eq!(clean_path(""), "/");
        assert_eq!(clean_path("/sandboxes/x/proxy/80/a/"), "/sandboxes/x/proxy/80/a");
    }

    #[test]
    fn request_ids_are_distinct() {
        let (a, b) = (new_request_id(), new_request_id());
        assert!(a.starts_with("req_") && a.len() == 20 && a != b, "{a} {b}");
    }
}
