//! What can go wrong talking to the daemon, and the exit code and hint each failure gets:
//! decided by the API's typed `code`, never by an error's text.

use api::ErrorCode;

/// Exit codes (documented in the README).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The daemon refused or failed the request (any other API error), or a local failure.
    pub const FAILURE: u8 = 1;
    /// Bad usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// The sandbox, file, user or route does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// The daemon could not be reached.
    pub const UNREACHABLE: u8 = 4;
    /// The key was missing or refused.
    pub const AUTH: u8 = 5;
}

/// A failure with a meaning for the exit code; everything else is exit 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error body: shown as `<status>: <error>`.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The body's `code`, which alone decides the hint and the exit code.
        code: ErrorCode,
        /// The body's `error`, or the raw body when it was not the JSON error shape.
        message: String,
    },
    /// No connection to the daemon.
    #[error("cannot reach the daemon at {url}")]
    Unreachable {
        /// Where we tried (never carries a token).
        url: String,
        /// Why (printed by the chain walk, so not in the message).
        #[source]
        source: std::io::Error,
    },
    /// Something local does not exist (a user in the store, a local file).
    #[error("{0}")]
    NotFound(String),
    /// A usage error found after parsing (e.g. a malformed `KEY=VAL`).
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The error of a non-2xx answer from its status and body: `{"error", "code"}`, or the raw
    /// text (at most 300 characters) when the body is not that shape.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        let (code, message) = match serde_json::from_slice::<api::ErrorBody>(body) {
            Ok(body) => {
                let message = match &body.request_id {
                    Some(id) => format!("{} (request {id})", body.error),
                    None => body.error.clone(),
                };
                (body.error_code(), message)
            }
            Err(_) => {
                let text: String = String::from_utf8_lossy(body).trim().chars().take(300).collect();
                let text = if text.is_empty() { reason(status) } else { text };
                (ErrorCode::Other(String::new()), text)
            }
        };
        CliError::Api { status, code: code_or_status(code, status), message }
    }

    /// The exit code of this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { code, .. } => match code {
                ErrorCode::NotFound | ErrorCode::GuestNotFound => exit::NOT_FOUND,
                ErrorCode::Unauthorized => exit::AUTH,
                _ => exit::FAILURE,
            },
            CliError::NotFound(_) => exit::NOT_FOUND,
            CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::Usage(_) => exit::USAGE,
        }
    }

    /// A hint for a known failure, printed on its own line.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CliError::Api { code, .. } => code_hint(code),
            CliError::Unreachable { .. } => Some(
                "is `bhatti serve` running? Set the address with --url or BHATTI_URL, or save it \
                 with `bhatti setup`",
            ),
            CliError::NotFound(_) | CliError::Usage(_) => None,
        }
    }
}

/// The hint of an API error's code (none for codes whose message says all).
fn code_hint(code: &ErrorCode) -> Option<&'static str> {
    Some(match code {
        ErrorCode::NotFound => "`bhatti ls` lists your sandboxes",
        ErrorCode::Unauthorized => {
            "check your key: set it with --token, BHATTI_TOKEN or auth_token in \
             ~/.bhatti/config.yaml, or save it with `bhatti setup`"
        }
        ErrorCode::RestoreFailed => {
            "the disk is intact: `bhatti start --force <sandbox>` boots from it (without the \
             saved memory)"
        }
        ErrorCode::Crashed | ErrorCode::WrongState | ErrorCode::NotRunning => {
            "run `bhatti start <sandbox>`"
        }
        ErrorCode::Limit | ErrorCode::Exhausted => {
            "destroy sandboxes you no longer use (`bhatti ls`, `bhatti rm`)"
        }
        ErrorCode::ShuttingDown => "the daemon is stopping; run `bhatti serve` again",
        ErrorCode::PortInUse => "pick another host port, or leave it out for any free one",
        ErrorCode::ForwardLimit => "close forwards you no longer use (`bhatti forward --close`)",
        ErrorCode::Lost => "`bhatti destroy <sandbox>` removes it",
        ErrorCode::Internal => "the daemon's log has the cause, under the request ID",
        _ => return None,
    })
}

/// A body without a code (v1's daemon, a proxy in between) is classified by its status, the
/// only other typed thing it has; a code, when there is one, always wins.
fn code_or_status(code: ErrorCode, status: u16) -> ErrorCode {
    match (code, status) {
        (ErrorCode::Other(c), 404) if c.is_empty() => ErrorCode::NotFound,
        (ErrorCode::Other(c), 401) if c.is_empty() => ErrorCode::Unauthorized,
        (code, _) => code,
    }
}

/// The reason phrase of a status, for a body that is empty.
fn reason(status: u16) -> String {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_lowercase()
}

/// The exit code for any error: a `CliError` anywhere in the chain decides, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain().find_map(|c| c.downcast_ref::<CliError>()).map_or(exit::FAILURE, CliError::exit_code)
}

/// The hint for any error, if one is known.
pub fn hint(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|c| c.downcast_ref::<CliError>()).and_then(CliError::hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> CliError {
        CliError::from_answer(status, body.as_bytes())
    }

    /// The code alone decides: the same status with another code, or the same message with
    /// another code, gets that code's hint and exit code.
    #[test]
    fn codes_decide_hints_and_exit_codes() {
        let start_hint = Some("run `bhatti start <sandbox>`");
        let destroy_hint = Some("destroy sandboxes you no longer use (`bhatti ls`, `bhatti rm`)");
        let cases: [(u16, &str, u8, Option<&str>); 16] = [
            (404, "not_found", exit::NOT_FOUND, Some("`bhatti ls` lists your sandboxes")),
            (404, "guest_not_found", exit::NOT_FOUND, None),
            (401, "unauthorized", exit::AUTH, code_hint(&ErrorCode::Unauthorized)),
            (409, "crashed", exit::FAILURE, start_hint),
            (409, "wrong_state", exit::FAILURE, start_hint),
            (500, "restore_failed", exit::FAILURE, code_hint(&ErrorCode::RestoreFailed)),
            (429, "limit", exit::FAILURE, destroy_hint),
            (503, "exhausted", exit::FAILURE, destroy_hint),
            (429, "guest_limit_reached", exit::FAILURE, None),
            (503, "shutting_down", exit::FAILURE, code_hint(&ErrorCode::ShuttingDown)),
            (500, "internal", exit::FAILURE, code_hint(&ErrorCode::Internal)),
            (409, "busy", exit::FAILURE, None),
            (409, "lost", exit::FAILURE, Some("`bhatti destroy <sandbox>` removes it")),
            (409, "creating", exit::FAILURE, None),
            (400, "invalid", exit::FAILURE, None),
            (418, "from_the_future", exit::FAILURE, None),
        ];
        for (status, code, exit_code, hint) in cases {
            // A message that names other failures' words must not change anything.
            let body =
                format!(r#"{{"error":"not found: limit --force not running","code":"{code}"}}"#);
            let e = answer(status, &body);
            assert_eq!((e.exit_code(), e.hint()), (exit_code, hint), "{code}");
        }
        assert!(code_hint(&ErrorCode::Unauthorized).is_some_and(|h| h.contains("bhatti setup")));
        assert!(code_hint(&ErrorCode::RestoreFailed).is_some_and(|h| h.contains("--force")));
    }

    #[test]
    fn bodies_without_a_code_fall_back_to_the_status_never_the_text() {
        let e = answer(404, r#"{"error":"sandbox not found"}"#);
        assert_eq!(
            (e.exit_code(), e.to_string().as_str()),
            (exit::NOT_FOUND, "404: sandbox not found")
        );
        assert_eq!(answer(401, "").exit_code(), exit::AUTH);
        assert_eq!(answer(401, "").to_string(), "401: unauthorized");
        // The text of a limit, but no code: no hint from it.
        let e = answer(429, r#"{"error":"sandbox limit reached (5/5)"}"#);
        assert_eq!((e.exit_code(), e.hint()), (exit::FAILURE, None));
        let e = answer(502, "<html>bad gateway</html>");
        assert_eq!(e.to_string(), "502: <html>bad gateway</html>");
        let e = answer(500, r#"{"error":"internal error","code":"internal","request_id":"r1"}"#);
        assert_eq!(e.to_string(), "500: internal error (request r1)");
    }

    #[test]
    fn local_failures_have_their_own_exit_codes() {
        let unreachable = CliError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(unreachable.exit_code(), exit::UNREACHABLE);
        assert!(unreachable.hint().is_some_and(|h| h.contains("bhatti serve")));
        // The cause is printed once, by the chain walk.
        let chain = format!("{:#}", anyhow::Error::new(unreachable));
        assert_eq!(chain.matches("refused").count(), 1, "{chain}");
        assert_eq!(CliError::Usage("x".into()).exit_code(), exit::USAGE);
        assert_eq!(CliError::NotFound("x".into()).exit_code(), exit::NOT_FOUND);
    }
}
