//! Connect RPC's JSON codec, as envd's clients speak it: unary calls are `application/json`
//! both ways; server streams take one enveloped request (`application/connect+json`: a flags
//! byte, a u32 big-endian length, the JSON) and answer enveloped messages (flags 0) and one
//! end-of-stream envelope (flags 0x02) holding `{}` or `{"error":{"code","message"}}`.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Envelope flag of the end-of-stream message.
const END_STREAM: u8 = 0x02;

/// Connect's error codes (by name on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `invalid_argument`
    InvalidArgument,
    /// `not_found`
    NotFound,
    /// `already_exists`
    AlreadyExists,
    /// `failed_precondition`
    FailedPrecondition,
    /// `unauthenticated`
    Unauthenticated,
    /// `resource_exhausted`
    ResourceExhausted,
    /// `unimplemented`
    Unimplemented,
    /// `unavailable`
    Unavailable,
    /// `internal`
    Internal,
}

impl Code {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unauthenticated => "unauthenticated",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Unimplemented => "unimplemented",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status of a unary error (Connect's table).
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An RPC's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The code.
    pub code: Code,
    /// What happened (never a secret).
    pub message: String,
}

impl RpcError {
    /// An error with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code.name(), "message": self.message })
    }
}

impl IntoResponse for RpcError {
    /// A unary error answer.
    fn into_response(self) -> Response {
        let mut response = (self.code.http_status(), axum::Json(self.json())).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// A unary request's message.
pub fn unary_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, RpcError> {
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    serde_json::from_slice(body)
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("bad request message: {e}")))
}

/// A unary answer.
pub fn unary_response<T: Serialize>(message: &T) -> Response {
    axum::Json(message).into_response()
}

/// The one message of a server-streaming request (its envelope unwrapped).
pub fn stream_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, RpcError> {
    let (flags, message) = unwrap_envelope(body)
        .ok_or_else(|| RpcError::new(Code::InvalidArgument, "malformed envelope"))?;
    if flags & 0x01 != 0 {
        return Err(RpcError::new(Code::Unimplemented, "compressed messages are not supported"));
    }
    unary_request(message)
}

/// Splits one envelope: its flags and its message; `None` when the lengths do not add up.
pub fn unwrap_envelope(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&flags, rest) = body.split_first()?;
    let len_bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let message = rest.get(4..)?;
    (message.len() == len).then_some((flags, message))
}

/// One envelope.
pub fn envelope(flags: u8, message: &[u8]) -> Bytes {
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(flags);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// A message envelope of a stream.
pub fn message<T: Serialize>(message: &T) -> Bytes {
    envelope(0, &serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()))
}

/// The end-of-stream envelope: `{}`, or the error.
pub fn end(error: Option<&RpcError>) -> Bytes {
    let body = match error {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({ "error": e.json() }),
    };
    envelope(END_STREAM, body.to_string().as_bytes())
}

/// A streaming answer whose body is what `rx` yields (envelopes, the last one from [`end`]).
pub fn stream_response(mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|item| item.map(Ok::<Bytes, Infallible>))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/connect+json"));
    response
}

/// A stream that fails before its first message: a 200 with only the error's end envelope
/// (what Connect servers send for a streaming call's early error).
pub fn stream_error(error: &RpcError) -> Response {
    let mut response = Response::new(Body::from(end(Some(error))));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/connect+json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_table() {
        let good = envelope(0, b"{\"a\":1}");
        assert_eq!(&good[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(unwrap_envelope(&good), Some((0, b"{\"a\":1}".as_slice())));
        let rows: [(&str, &[u8]); 4] = [
            ("empty", b""),
            ("short header", &[0, 0, 0]),
            ("length past the end", &[0, 0, 0, 0, 9, b'{', b'}']),
            ("trailing bytes", &[0, 0, 0, 0, 1, b'{', b'}']),
        ];
        for (name, body) in rows {
            assert_eq!(unwrap_envelope(body), None, "{name}");
        }
        let end_ok = end(None);
        assert_eq!(end_ok[0], 0x02);
        assert_eq!(&end_ok[5..], b"{}");
        let e = RpcError::new(Code::NotFound, "no such process");
        let end_err = end(Some(&e));
        let (flags, body) = unwrap_envelope(&end_err).unwrap();
        assert_eq!(flags, 0x02);
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
    }

    #[test]
    fn a_compressed_request_is_refused() {
        let body = envelope(0x01, b"{}");
        let err = stream_request::<serde_json::Value>(&body).unwrap_err();
        assert_eq!(err.code, Code::Unimplemented);
    }
}
