//! The one place where errors become HTTP answers.
//!
//! Handlers return [`ApiError`]; its status comes from the engine's or the store's error kind
//! (never from a message). Internal errors answer `internal error` with the request ID; the
//! middleware that knows the ID logs the whole cause chain (see `request.rs`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use engine::{ErrorKind as E, GuestErrorKind as G};
use store::ErrorKind as S;

/// An error a handler answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with a message that says what to change.
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 404 (also for another owner's things).
    #[error("{0}")]
    NotFound(String),
    /// 409 with a message that names the conflict (v1's: a taken name, an attached volume).
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 403: not the caller's to change (a global image); another owner's things are 404.
    #[error("{0}")]
    Forbidden(String),
    /// 409: in use (an image sandboxes boot from).
    #[error("{0}")]
    InUse(String),
    /// 507: the daemon's disk filled up (an import, a volume restore); nothing half-written
    /// was kept.
    #[error("{0}")]
    NoSpace(String),
    /// 502: the guest's service did not answer as HTTP.
    #[error("bad gateway: {0}")]
    BadGateway(String),
    /// 501: not built yet (a later issue's routes).
    #[error("{0}")]
    NotImplemented(&'static str),
    /// From the engine.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// From the store.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A lifecycle operation the sandbox's state does not allow (core's transition table).
    #[error("{}", refusal_message(*.0))]
    Refused(bhatti_core::Refusal),
    /// 503: the daemon's memory for buffered exec output is spent (`exec_budget.rs`).
    #[error(transparent)]
    ExecOutputBudget(#[from] crate::exec_budget::BudgetExhausted),
    /// 409: a guest operation on a sandbox its user stopped (named, with the way out).
    #[error("sandbox {0:?} is not running: start it with `bhatti start {0}`")]
    NotRunning(String),
    /// 429: a rate limit (the public proxy's); retry after a second.
    #[error("rate limit exceeded")]
    RateLimited,
    /// 429: the user's API rate limit for this class of request (`rate_limits.rs`); retry after
    /// this many seconds.
    #[error("rate limit exceeded")]
    RateLimitedFor(u64),
    /// 429: the user's concurrent execs (`Quotas::max_concurrent_execs`).
    #[error(transparent)]
    ExecLimit(#[from] crate::exec_slots::ExecLimit),
    /// 507: the host has less free space at the data directory than a create's disk asks.
    #[error("disk_size_mb: {asked_mb} MB asked, the host has {free_mb} MB free")]
    HostSpace {
        /// The disk asked for.
        asked_mb: u64,
        /// Free at the data directory.
        free_mb: u64,
    },
    /// 503: every wake slot is taken; retry in two seconds.
    #[error("server busy, retry shortly")]
    Busy,
    /// 502: the sandbox behind a public route could not be woken (or is stopped).
    #[error("sandbox unavailable")]
    SandboxUnavailable,
    /// A forward that could not be opened (port in use, too many).
    #[error(transparent)]
    Forward(#[from] crate::forward_error::ForwardError),
    /// 429: a storage quota (v1's `volume storage quota exceeded (XMB used, YMB max)`).
    #[error("{0}")]
    Quota(String),
    /// Anything else that is our fault.
    #[error("{0}")]
    Internal(String),
}

fn refusal_message(refusal: bhatti_core::Refusal) -> &'static str {
    match refusal {
        bhatti_core::Refusal::Creating => "sandbox is still being created",
        bhatti_core::Refusal::Gone => "not found",
        bhatti_core::Refusal::Lost => {
            "the sandbox's VM could not be recovered after a daemon restart; destroy it"
        }
        bhatti_core::Refusal::NotRunning => "sandbox is not running",
    }
}

/// Marks a response as an internal error, with the cause for the log (the body the client sees
/// is replaced by `internal error` and the request ID, keeping the code).
#[derive(Debug, Clone)]
pub struct InternalCause {
    /// The whole cause chain, for the log only.
    pub cause: String,
    /// The stable code the client still gets (`restore_failed` tells it what to do next).
    pub code: &'static str,
}

impl ApiError {
    /// The status and the stable code.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::InUse(_) => (StatusCode::CONFLICT, "in_use"),
            ApiError::NoSpace(_) => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
            ApiError::Engine(e) => (engine_status(e.kind()), e.kind().code()),
            ApiError::Store(e) => store_status(e.kind()),
            ApiError::Refused(refusal) => match refusal {
                bhatti_core::Refusal::Creating => (StatusCode::CONFLICT, "creating"),
                bhatti_core::Refusal::Gone => (StatusCode::NOT_FOUND, "not_found"),
                bhatti_core::Refusal::Lost => (StatusCode::CONFLICT, "lost"),
                bhatti_core::Refusal::NotRunning => (StatusCode::CONFLICT, "not_running"),
            },
            ApiError::ExecOutputBudget(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "exec_output_budget")
            }
            ApiError::NotRunning(_) => (StatusCode::CONFLICT, "not_running"),
            ApiError::RateLimited | ApiError::RateLimitedFor(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            }
            ApiError::ExecLimit(_) => (StatusCode::TOO_MANY_REQUESTS, "limit"),
            ApiError::HostSpace { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ApiError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::SandboxUnavailable => (StatusCode::BAD_GATEWAY, "sandbox_unavailable"),
            ApiError::Forward(e) => match e {
                crate::forward_error::ForwardError::PortInUse(_) => {
                    (StatusCode::CONFLICT, "port_in_use")
                }
                crate::forward_error::ForwardError::Limit { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "forward_limit")
                }
                crate::forward_error::ForwardError::Bind { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
            ApiError::Quota(_) => (StatusCode::TOO_MANY_REQUESTS, "limit"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Seconds a client should wait before trying again (`Retry-After`), where that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited => Some(1),
            ApiError::RateLimitedFor(secs) => Some(*secs),
            ApiError::Busy => Some(2),
            _ => None,
        }
    }
}

/// The status of each engine error kind.
fn engine_status(kind: E) -> StatusCode {
    match kind {
        E::Invalid | E::Guest(G::Invalid | G::IsADirectory | G::NotADirectory) => {
            StatusCode::BAD_REQUEST
        }
        E::NotFound | E::Guest(G::NotFound) => StatusCode::NOT_FOUND,
        E::Guest(G::PermissionDenied) => StatusCode::FORBIDDEN,
        E::AlreadyExists | E::WrongState | E::Cancelled | E::InUse | E::Busy | E::Crashed => {
            StatusCode::CONFLICT
        }
        // A disk the diff cannot read (a filesystem it does not know): said, not hidden.
        E::Unreadable => StatusCode::CONFLICT,
        // The sandbox went away under the operation (crashed, destroyed, stopped): a conflict
        // with its new state, not a fault of the daemon's.
        E::Gone => StatusCode::CONFLICT,
        E::Guest(G::AlreadyExists | G::Busy) => StatusCode::CONFLICT,
        E::Guest(G::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        E::Guest(G::NoSpace) => StatusCode::INSUFFICIENT_STORAGE,
        E::Guest(G::LimitReached) => StatusCode::TOO_MANY_REQUESTS,
        E::Guest(G::PortClosed) => StatusCode::BAD_GATEWAY,
        E::Exhausted | E::ShuttingDown | E::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        E::Guest(G::Other) => StatusCode::UNPROCESSABLE_ENTITY,
        E::RestoreFailed | E::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn store_status(kind: S) -> (StatusCode, &'static str) {
    match kind {
        S::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        S::Conflict => (StatusCode::CONFLICT, "conflict"),
        S::Invalid => (StatusCode::BAD_REQUEST, "invalid"),
        S::Limit => (StatusCode::TOO_MANY_REQUESTS, "limit"),
        S::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        S::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// Writes a JSON error body.
pub fn error_response(status: StatusCode, error: String, code: &str) -> Response {
    let body = api::ErrorBody { error, code: code.to_owned(), request_id: None };
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The chain goes to the log only; the client gets the request ID.
            let mut cause = self.to_string();
            let mut source = std::error::Error::source(&self);
            while let Some(s) = source {
                cause.push_str(&format!(": {s}"));
                source = s.source();
            }
            let mut response = error_response(status, "internal error".into(), code);
            response.extensions_mut().insert(InternalCause { cause, code });
            return response;
        }
        let mut response = error_response(status, self.to_string(), code);
        if let Some(secs) = self.retry_after() {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is never read: the connection closes after this answer, and
            // says so, so a client does not send its next request into it.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses_in_one_place() {
        let nf = ApiError::Engine(engine::EngineError::NotFound {
            kind: engine::Resource::Sandbox,
            name: "x".into(),
        });
        assert_eq!(nf.status().0, StatusCode::NOT_FOUND);
        let busy = ApiError::Engine(engine::EngineError::Busy { id: "x".into(), in_flight: 1 });
        assert_eq!(busy.status(), (StatusCode::CONFLICT, "busy"));
        let gone = ApiError::Engine(engine::EngineError::Gone {
            id: "x".into(),
            reason: engine::GoneReason::Destroyed,
        });
        assert_eq!(gone.status(), (StatusCode::CONFLICT, "gone"));
        let limit = ApiError::Store(store::StoreError::Limit {
            kind: store::Resource::Sandbox,
            used: 5,
            max: 5,
        });
        assert_eq!(limit.status().0, StatusCode::TOO_MANY_REQUESTS);
    }

    /// Every code the server sends is one the API crate (and so the CLI) knows by type: a new
    /// kind without its `api::ErrorCode` would reach clients as `Other` and lose its hint.
    #[test]
    fn every_code_sent_is_a_typed_api_code() {
        let engine_kinds = [
            E::Invalid,
            E::NotFound,
            E::AlreadyExists,
            E::WrongState,
            E::Cancelled,
            E::InUse,
            E::Exhausted,
            E::ShuttingDown,
            E::Busy,
            E::Crashed,
            E::Gone,
            E::RestoreFailed,
            E::Unavailable,
            E::Internal,
            E::Guest(G::NotFound),
            E::Guest(G::PermissionDenied),
            E::Guest(G::IsADirectory),
            E::Guest(G::NotADirectory),
            E::Guest(G::AlreadyExists),
            E::Guest(G::TooLarge),
            E::Guest(G::NoSpace),
            E::Guest(G::Busy),
            E::Guest(G::PortClosed),
            E::Guest(G::Invalid),
            E::Guest(G::LimitReached),
            E::Guest(G::Other),
        ];
        let store_kinds =
            [S::NotFound, S::Conflict, S::Invalid, S::Limit, S::Unavailable, S::Internal];
        let ours = [
            ApiError::BadRequest(String::new()),
            ApiError::Unauthorized(""),
            ApiError::NotFound(String::new()),
            ApiError::TooLarge(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::InUse(String::new()),
            ApiError::NoSpace(String::new()),
            ApiError::BadGateway(String::new()),
            ApiError::NotImplemented(""),
            ApiError::Refused(bhatti_core::Refusal::Creating),
            ApiError::Refused(bhatti_core::Refusal::Gone),
            ApiError::Refused(bhatti_core::Refusal::Lost),
            ApiError::ExecOutputBudget(crate::exec_budget::BudgetExhausted { budget: 0 }),
            ApiError::Forward(crate::forward_error::ForwardError::PortInUse(1)),
            ApiError::Forward(crate::forward_error::ForwardError::Limit {
                max: 1,
                scope: "in all",
            }),
            ApiError::Conflict(String::new()),
            ApiError::Quota(String::new()),
            ApiError::NoSpace(String::new()),
            ApiError::Internal(String::new()),
        ];
        let codes = engine_kinds
            .iter()
            .map(|k| k.code())
            .chain(store_kinds.iter().map(|k| store_status(*k).1))
            .chain(ours.iter().map(|e| e.status().1))
            .chain(["not_found", "method", "internal"]); // request.rs's fallbacks
        for code in codes {
            let typed = api::ErrorCode::parse(code);
            assert!(!matches!(typed, api::ErrorCode::Other(_)), "{code} is not an api::ErrorCode");
            assert_eq!(typed.as_str(), code);
        }
    }

    #[test]
    fn internal_errors_hide_their_cause_from_the_client() {
        let response = ApiError::Internal("disk on fire at /var/lib/secret".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let cause = response.extensions().get::<InternalCause>().unwrap();
        assert!(cause.cause.contains("disk on fire"));
        assert_eq!(cause.code, "internal");
    }
}
