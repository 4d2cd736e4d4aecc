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

/// The most unknown field names a `Warning` header lists.
const MAX_IGNORED_NAMED: usize = 8;

/// Unknown JSON fields the body extractor ignored, in the request's extensions; [`around`]
/// names them in a `Warning` header of the answer, so a typo stays visible while v1's clients
/// (and newer ones sending fields this version does not know) keep working.
#[derive(Debug, Clone, Default)]
pub struct IgnoredFields(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl IgnoredFields {
    fn push(&self, path: String) {
        let mut names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if names.len() < MAX_IGNORED_NAMED && !names.contains(&path) {
            names.push(path);
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The `Warning` header (RFC 9111 5.5, code 299: a persistent warning) naming ignored fields.
/// Names come from the client: only printable ASCII without quotes or backslashes is kept.
fn ignored_warning(names: &[String]) -> Option<HeaderValue> {
    if names.is_empty() {
        return None;
    }
    let clean: Vec<String> = names
        .iter()
        .map(|n| {
            n.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\').take(64).collect()
        })
        .collect();
    HeaderValue::from_str(&format!("299 bhatti \"unknown fields ignored: {}\"", clean.join(", ")))
        .ok()
}

/// On a response: the request's path holds the key it authenticated with (`auth.rs` finds
/// it), so the request log line shows no path.
#[derive(Debug, Clone, Copy)]
pub struct PathHoldsKey;

/// The user's name, on the response for the request log (set by authentication).
#[derive(Debug, Clone)]
pub struct UserName(pub String);

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
    let ignored = IgnoredFields::default();
    request.extensions_mut().insert(ignored.clone());
    let (method, mut path) = (request.method().clone(), request.uri().path().to_owned());
    let started = Instant::now();
    let mut response = next.run(request).await;
    if response.extensions().get::<PathHoldsKey>().is_some() {
        // A client put its key in the path; the log must not keep it.
        path = "<redacted: the path holds the api key>".into();
    }
    if let Some(InternalCause { cause, code }) = response.extensions_mut().remove::<InternalCause>()
    {
        tracing::error!(request_id = %id, %method, %path, "internal error: {cause}");
        let body = api::ErrorBody {
            error: "internal error".into(),
            code: code.into(),
            request_id: Some(id.clone()),
        };
        response = (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
    }
    response.headers_mut().insert(api::VERSION_HEADER, HeaderValue::from_static(api::VERSION));
    if let Some(warning) = ignored_warning(&ignored.take()) {
        response.headers_mut().insert(axum::http::header::WARNING, warning);
    }
    let user = response.extensions().get::<UserName>().map(|u| u.0.clone());
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

/// A JSON object body, at most [`MAX_JSON_BODY`] bytes (empty reads as `{}`). Unknown fields
/// are ignored, as v1's Go decoder does, and named in the answer's `Warning` header; anything
/// else that is wrong (not JSON, not an object, a missing field, a wrong type) is a 400 that
/// names the field.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let ignored = request.extensions().get::<IgnoredFields>().cloned().unwrap_or_default();
        let body = request.into_body();
        let bytes = axum::body::to_bytes(body, MAX_JSON_BODY).await.map_err(|_| {
            ApiError::TooLarge(format!("request body over {} KiB", MAX_JSON_BODY / 1024))
        })?;
        decode(&bytes, |path| ignored.push(path)).map(Json)
    }
}

/// Decodes a JSON object body into `T`, reporting each ignored field's path.
fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    on_ignored: impl FnMut(String),
) -> Result<T, ApiError> {
    let invalid = |e: &dyn std::fmt::Display| ApiError::BadRequest(format!("invalid json: {e}"));
    let value: serde_json::Value = if bytes.is_empty() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(bytes).map_err(|e| invalid(&e))?
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest("invalid json: the body must be a JSON object".into()));
    }
    let mut on_ignored = on_ignored;
    let mut callback = |path: serde_ignored::Path<'_>| on_ignored(field_path(&path));
    let ignoring = serde_ignored::Deserializer::new(value, &mut callback);
    serde_path_to_error::deserialize(ignoring).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            invalid(e.inner())
        } else {
            ApiError::BadRequest(format!("invalid json: {path}: {}", e.inner()))
        }
    })
}

/// A field's path as the client wrote it: `net_policy.allow`, where serde_ignored writes
/// `net_policy.?.allow` (an optional field's value is no level of the JSON).
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    let joined = |parent: &P<'_>, last: String| match field_path(parent) {
        front if front.is_empty() => last,
        front => format!("{front}.{last}"),
    };
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => joined(parent, index.to_string()),
        P::Map { parent, key } => joined(parent, key.clone()),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            field_path(parent)
        }
    }
}

/// 404 for paths no route knows.
pub async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not found".into(), "not_found")
}

/// The API router's fallback: [`not_found`], marked [`Unrouted`].
pub async fn unrouted() -> Response {
    let mut response = not_found().await;
    response.extensions_mut().insert(Unrouted);
    response
}

/// On the router's own 404 and 405 answers (no route matched the path, or its method): the
/// route table's test tells them from a handler's 404.
#[derive(Debug, Clone, Copy)]
pub struct Unrouted;

/// 405 for known paths with another method.
pub async fn method_not_allowed() -> Response {
    let mut response =
        error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into(), "method");
    response.extensions_mut().insert(Unrouted);
    response
}

/// An empty body (HEAD answers, streams that start later).
pub fn empty() -> Body {
    Body::empty()
}

/// A port in a JSON body (`field`, for the message): `min`..=65535, else 400. Publish and
/// forward both take ports this way.
pub(crate) fn port_field(port: u32, min: u16, field: &str) -> crate::error::ApiResult<u16> {
    u16::try_from(port).ok().filter(|p| *p >= min).ok_or_else(|| {
        crate::error::ApiError::BadRequest(format!("{field} must be {min}-65535, got {port}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_in_bodies() {
        assert!(port_field(0, 1, "guest_port").is_err());
        assert_eq!(port_field(1, 1, "guest_port").ok(), Some(1));
        assert_eq!(port_field(0, 0, "host_port").ok(), Some(0));
        assert_eq!(port_field(65535, 0, "host_port").ok(), Some(65535));
        assert!(port_field(65536, 0, "host_port").is_err());
        assert!(port_field(65536, 1, "guest_port").is_err());
        let e = port_field(0, 1, "port").unwrap_err().to_string();
        assert_eq!(e, "port must be 1-65535, got 0");
    }

    #[test]
    fn paths_are_cleaned_like_posix_path_clean() {
        assert_eq!(clean_path("/health/../sandboxes"), "/sandboxes");
        assert_eq!(clean_path("//health/."), "/health");
        assert_eq!(clean_path("/../../etc"), "/etc");
        assert_eq!(clean_path(""), "/");
        assert_eq!(clean_path("/sandboxes/x/proxy/80/a/"), "/sandboxes/x/proxy/80/a");
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Body {
        name: String,
        #[serde(default)]
        size: u32,
        #[serde(default)]
        inner: Option<Vec<Inner>>,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Inner {
        #[serde(default)]
        a: u32,
    }

    fn decoded(text: &str) -> (Result<Body, String>, Vec<String>) {
        let mut ignored = Vec::new();
        let result =
            decode::<Body>(text.as_bytes(), |p| ignored.push(p)).map_err(|e| e.to_string());
        (result, ignored)
    }

    #[test]
    fn bodies_table() {
        /// (name, body, Ok or a part of the error, the ignored fields).
        type Row = (&'static str, &'static str, Result<(), &'static str>, &'static [&'static str]);
        let table: [Row; 8] = [
            ("a plain object", r#"{"name":"a"}"#, Ok(()), &[]),
            (
                "unknown fields are ignored and named",
                r#"{"name":"a","nmae":1,"from":{"x":1}}"#,
                Ok(()),
                &["from", "nmae"],
            ),
            (
                "nested ones are named by their path, as written",
                r#"{"name":"a","inner":[{"a":1},{"b":2}]}"#,
                Ok(()),
                &["inner.1.b"],
            ),
            ("a missing field is named", r#"{"size":1}"#, Err("missing field `name`"), &[]),
            (
                "a wrong type names its field",
                r#"{"name":5}"#,
                Err("invalid json: name: invalid type"),
                &[],
            ),
            ("an array is not an object", "[]", Err("must be a JSON object"), &[]),
            ("a string is not an object", r#""x""#, Err("must be a JSON object"), &[]),
            ("not JSON", "{nope", Err("invalid json"), &[]),
        ];
        for (name, text, want, want_ignored) in table {
            let (got, ignored) = decoded(text);
            match (got, want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(part)) => assert!(e.contains(part), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
            assert_eq!(ignored, want_ignored, "{name}");
        }
        assert_eq!(decoded("").1, Vec::<String>::new(), "an empty body reads as {{}}");
    }

    #[test]
    fn warning_header_names_ignored_fields_safely() {
        assert!(ignored_warning(&[]).is_none());
        let v = ignored_warning(&["nmae".into(), "a\"b\r\nc".into()]).unwrap();
        assert_eq!(v.to_str().unwrap(), r#"299 bhatti "unknown fields ignored: nmae, abc""#);
    }

    #[test]
    fn request_ids_are_distinct() {
        let (a, b) = (new_request_id(), new_request_id());
        assert!(a.starts_with("req_") && a.len() == 20 && a != b, "{a} {b}");
    }
}
