//! The one place where the E2B listener's errors become answers: the control plane's
//! `{"code": int, "message": str}` (what the SDK reads; 401, 404, 409, 429, 503 select its
//! exceptions) and envd's Connect codes, both from the server's typed [`ApiError`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::connect::{Code, RpcError};
use crate::error::ApiError;

/// A control-plane error.
#[derive(Debug, thiserror::Error)]
pub enum E2bError {
    /// No or a wrong `X-API-KEY`.
    #[error("invalid API key")]
    Unauthenticated,
    /// Not the caller's, or gone.
    #[error("sandbox {0:?} not found")]
    SandboxNotFound(String),
    /// A pause of a paused sandbox (the SDK's pause returns False).
    #[error("sandbox {0:?} is already paused")]
    AlreadyPaused(String),
    /// A bad request body or query.
    #[error("{0}")]
    BadRequest(String),
    /// From the server's own operations.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// From the store.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl E2bError {
    fn status(&self) -> StatusCode {
        match self {
            E2bError::Unauthenticated => StatusCode::UNAUTHORIZED,
            E2bError::SandboxNotFound(_) => StatusCode::NOT_FOUND,
            E2bError::AlreadyPaused(_) => StatusCode::CONFLICT,
            E2bError::BadRequest(_) => StatusCode::BAD_REQUEST,
            E2bError::Api(e) => e.status().0,
            E2bError::Store(e) => ApiError::Store(clone_store(e)).status().0,
        }
    }
}

/// Store errors are not `Clone`; the status only needs the kind.
fn clone_store(e: &store::StoreError) -> store::StoreError {
    store::StoreError::Invalid(format!("{:?}", e.kind()))
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "e2b control plane");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let body = serde_json::json!({ "code": status.as_u16(), "message": message });
        (status, axum::Json(body)).into_response()
    }
}

/// The Connect code of a server error, by its HTTP status.
fn code_of(status: StatusCode) -> Code {
    match status.as_u16() {
        400 | 413 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        404 => Code::NotFound,
        409 => Code::FailedPrecondition,
        429 | 507 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        502..=504 => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// An envd call's error from a server error.
pub fn rpc(e: ApiError) -> RpcError {
    let (status, _) = e.status();
    let code = code_of(status);
    if code == Code::Internal {
        tracing::error!(error = %e, "e2b envd call");
        return RpcError::new(code, "internal error");
    }
    RpcError::new(code, e.to_string())
}

/// An envd call's error from an engine error.
pub fn rpc_engine(e: engine::EngineError) -> RpcError {
    rpc(ApiError::Engine(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_codes_table() {
        let rows = [
            ("bad request", 400, Code::InvalidArgument),
            ("unauthorized", 401, Code::Unauthenticated),
            ("not found", 404, Code::NotFound),
            ("conflict", 409, Code::FailedPrecondition),
            ("rate limit", 429, Code::ResourceExhausted),
            ("not built", 501, Code::Unimplemented),
            ("busy", 503, Code::Unavailable),
            ("ours", 500, Code::Internal),
        ];
        for (name, status, want) in rows {
            assert_eq!(code_of(StatusCode::from_u16(status).unwrap()), want, "{name}");
        }
    }

    #[test]
    fn control_plane_statuses_table() {
        let rows = [
            ("no key", E2bError::Unauthenticated, 401),
            ("gone", E2bError::SandboxNotFound("x".into()), 404),
            ("paused", E2bError::AlreadyPaused("x".into()), 409),
            ("bad", E2bError::BadRequest("x".into()), 400),
            ("api 404", E2bError::Api(ApiError::NotFound("x".into())), 404),
        ];
        for (name, e, want) in rows {
            assert_eq!(e.status().as_u16(), want, "{name}");
        }
    }
}
