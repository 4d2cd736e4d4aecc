//! The REST contract of `bhatti serve`: request and response bodies as v1 shapes them
//! (host.md section 1), shared by the server and the CLI so neither can drift from the other.
//! Additions to v1 are marked as ours; v1 clients ignore unknown fields.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod events;
pub use events::*;
mod fork;
pub use fork::*;
mod volumes;
pub use volumes::*;

/// A sandbox's egress policy (v2's `net_policy`: `{"default": "public"|"deny", "allow_hosts":
/// [...], "allow_cidrs": [...]}`, every field optional) and its posture; `NetPolicy::check`
/// validates and normalises one.
pub use bhatti_core::egress::{NetPolicy, Posture};

mod images;
pub use images::{Image, Imported, PullRequest, PullResult, PullStarted, SaveImageRequest, Task};
mod secrets;
pub use secrets::{RETRY_AFTER_HEADER, SecretRecord, SecretValue, SetSecret};
mod snapshots;
pub use snapshots::*;
mod diff;
pub use diff::{Diff, DiffEntry, DiffQuery, mode_text};
mod shapes;
pub use shapes::*;

/// The daemon's version, sent as `X-Bhatti-Version` on every response.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Response header with the daemon's version.
pub const VERSION_HEADER: &str = "x-bhatti-version";
/// Response header of an idempotent create that found the sandbox already there.
pub const EXISTING_HEADER: &str = "x-bhatti-existing";
/// Response header with a file's full size.
pub const FILE_SIZE_HEADER: &str = "x-file-size";
/// Response header with a file's mode (HEAD).
pub const FILE_MODE_HEADER: &str = "x-file-mode";
/// Response header telling whether a path is a directory (HEAD).
pub const FILE_IS_DIR_HEADER: &str = "x-file-isdir";
/// The media type of a streaming exec.
pub const NDJSON: &str = "application/x-ndjson";

/// Every error: `{"error": "..."}`, plus a stable `code` (ours) and, for internal errors, the
/// request ID to find the log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// A stable code for programs (ours; v1 clients ignore it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// Set on internal errors only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ErrorBody {
    /// The typed `code`: what a client decides on (hints, exit codes, retries), never the text.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::parse(&self.code)
    }
}

/// Declares [`ErrorCode`] with its wire strings, so the two cannot drift apart.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal,)*) => {
        /// The stable `code` of an error body, typed. The server's codes come from the kinds of
        /// the engine's and the store's errors (`crates/server/src/error.rs` maps them); a code
        /// this version does not know (a newer daemon) is kept as [`ErrorCode::Other`], and a
        /// body without one (v1, a proxy in between) is `Other("")`.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// A code this version does not know, verbatim (empty when the body had none).
            Other(String),
        }

        impl ErrorCode {
            /// The code as sent.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                    ErrorCode::Other(code) => code,
                }
            }

            /// The typed code of a body's `code` string.
            pub fn parse(code: &str) -> Self {
                match code {
                    $($code => ErrorCode::$variant,)*
                    other => ErrorCode::Other(other.to_owned()),
                }
            }
        }
    };
}

error_codes! {
    /// 400: the request is malformed or breaks a rule.
    Invalid = "invalid",
    /// 401: no key, or a wrong one.
    Unauthorized = "unauthorized",
    /// 404: no such sandbox, volume, user or route (also another owner's).
    NotFound = "not_found",
    /// 413: a body over its limit.
    TooLarge = "too_large",
    /// 502: a published port did not answer as HTTP.
    BadGateway = "bad_gateway",
    /// 501: a route of a later issue.
    NotImplemented = "not_implemented",
    /// 405: the route exists for another method.
    Method = "method",
    /// 409: the change conflicts with a row that exists.
    Conflict = "conflict",
    /// 429: a quota of the owner is used up.
    Limit = "limit",
    /// 503: the store or the guest agent cannot answer now.
    Unavailable = "unavailable",
    /// 500: our fault; the body has the request ID.
    Internal = "internal",
    /// 409: the name is taken.
    AlreadyExists = "already_exists",
    /// 403: the resource is not the caller's to change (a global image).
    Forbidden = "forbidden",
    /// 507: the daemon's disk is full (an import, a volume restore); nothing half-written was
    /// kept.
    NoSpace = "no_space",
    /// 409: the sandbox's state does not allow the operation.
    WrongState = "wrong_state",
    /// 409: a destroy of the sandbox overtook its create.
    Destroyed = "destroyed",
    /// 409: the sandbox is still being created.
    Creating = "creating",
    /// 409: the sandbox's VM could not be recovered after a daemon restart; only destroy works.
    Lost = "lost",
    /// 409: a volume is attached.
    InUse = "in_use",
    /// 409: its user stopped the sandbox; guest operations wait for `bhatti start`.
    NotRunning = "not_running",
    /// 503: a pool of the host ran out (addresses, volume slots).
    Exhausted = "exhausted",
    /// 503: the daemon is stopping.
    ShuttingDown = "shutting_down",
    /// 503: the daemon's memory for buffered exec output is in use; retry, or stream.
    ExecOutputBudget = "exec_output_budget",
    /// 409: operations still running in the sandbox.
    Busy = "busy",
    /// 409: the sandbox's VM ended on its own; starting it boots it from its disk.
    Crashed = "crashed",
    /// 409: the sandbox went away while the operation ran (its VM crashed, it was destroyed or
    /// stopped, the daemon shut down); the message says which.
    Gone = "gone",
    /// 500: the saved memory could not be restored; `start --force` boots from the disk.
    RestoreFailed = "restore_failed",
    /// 404: no such file, directory or session in the guest.
    GuestNotFound = "guest_not_found",
    /// 403: the guest refused access.
    GuestPermissionDenied = "guest_permission_denied",
    /// 400: a directory where a file was expected.
    GuestIsADirectory = "guest_is_a_directory",
    /// 400: a file where a directory was expected.
    GuestNotADirectory = "guest_not_a_directory",
    /// 409: the guest path exists.
    GuestAlreadyExists = "guest_already_exists",
    /// 413: over the guest agent's limit.
    GuestTooLarge = "guest_too_large",
    /// 507: the guest's disk is full.
    GuestNoSpace = "guest_no_space",
    /// 409: the session is attached elsewhere.
    GuestBusy = "guest_busy",
    /// 502: nothing listens on the guest port.
    GuestPortClosed = "guest_port_closed",
    /// 400: the guest agent refused the request as malformed.
    GuestInvalid = "guest_invalid",
    /// 429: a fixed limit of the guest agent (sessions, connections).
    GuestLimitReached = "guest_limit_reached",
    /// 422: any other refusal of the guest agent.
    GuestError = "guest_error",
    /// 409: the host port of a forward is in use on the daemon's host.
    PortInUse = "port_in_use",
    /// 429: the daemon holds as many forwards as it allows (per sandbox or in all).
    ForwardLimit = "forward_limit",
    /// 429: too many requests of one class from one user; `Retry-After` says when to retry.
    RateLimited = "rate_limited",
    /// 507: the host has less free space than the disk asked for.
    InsufficientStorage = "insufficient_storage",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// How long the daemon has run, as v1 writes it (a Go duration rounded to seconds:
    /// `2h15m30s`).
    #[serde(default)]
    pub uptime: String,
    /// The daemon's version.
    pub version: String,
}

/// A duration as Go's `time.Duration.String()` writes whole seconds: `0s`, `45s`, `1m0s`,
/// `2h15m30s` (v1's `/health` uptime).
pub fn go_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// A sandbox as the API shows it (v1's `store.Sandbox`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sandbox {
    /// ID (16 hex).
    pub id: String,
    /// Name, unique per owner.
    pub name: String,
    /// Template it was made from.
    #[serde(default)]
    pub template_id: String,
    /// The engine's ID for it (ours: the same as `id`).
    #[serde(default)]
    pub engine_id: String,
    /// `running`, `stopped`, `unknown`.
    pub status: String,
    /// Guest address.
    #[serde(default)]
    pub ip: String,
    /// Always `{}` (v1).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub engine_meta: serde_json::Value,
    /// Owner's user ID.
    #[serde(default)]
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    /// Never paused or stopped by the thermal manager.
    #[serde(default)]
    pub keep_hot: bool,
    /// vCPUs (a float in v1).
    pub cpus: f64,
    /// Guest RAM.
    pub memory_mb: u32,
    /// Disk size (0: the image's).
    #[serde(default)]
    pub disk_size_mb: u32,
    /// Image name.
    #[serde(default)]
    pub image: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `hot`, `warm` or `cold` (lists, and only while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thermal: Option<String>,
    /// Published URLs (lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Egress policy, normalised (v2's; always sent; `public` for sandboxes made before
    /// policies, and from a daemon that has none).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub net_policy: NetPolicy,
}

/// A file to write into the guest before init runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateFile {
    /// Absolute path in the guest.
    pub guest_path: String,
    /// Base64 content.
    #[serde(default)]
    pub content: String,
    /// Octal mode, default `0644`.
    #[serde(default)]
    pub mode: String,
}

/// A persistent volume to attach at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateVolume {
    /// Volume name.
    pub name: String,
    /// Mount point in the guest.
    pub mount: String,
    /// Size when auto-created.
    #[serde(default)]
    pub size_mb: u32,
    /// Create when missing.
    #[serde(default)]
    pub auto_create: bool,
    /// Read-only attachment.
    #[serde(default)]
    pub read_only: bool,
}

/// `POST /sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateSandbox {
    /// Name (`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`); `sandbox-<6 hex>` when empty.
    #[serde(default)]
    pub name: String,
    /// Template (resources issue).
    #[serde(default)]
    pub template_id: String,
    /// Image name (resources issue); the default image when empty.
    #[serde(default)]
    pub image: String,
    /// vCPUs, a fraction bounds CPU time (default 1; zero or below is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Guest RAM in MB (default 1024; zero is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Disk size (default: the image's).
    #[serde(default)]
    pub disk_size_mb: u32,
    /// Environment for every exec.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Init script.
    #[serde(default)]
    pub init: String,
    /// Files written before init.
    #[serde(default)]
    pub files: Vec<CreateFile>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Never paused or stopped by the thermal manager.
    #[serde(default)]
    pub keep_hot: bool,
    /// Persistent volumes (resources issue).
    #[serde(default)]
    pub persistent_volumes: Vec<CreateVolume>,
    /// Secret names (resources issue).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Ephemeral volumes made empty for this sandbox (v1's legacy `new_volumes`).
    #[serde(default)]
    pub new_volumes: Vec<NewVolume>,
    /// v1's legacy named volumes: accepted for compatibility; v1 recorded them but never
    /// attached them, and neither do we (use `persistent_volumes`).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub volumes: Vec<serde_json::Value>,
    /// v1's huge pages switch: accepted, without effect here.
    #[serde(default)]
    pub hugepages: bool,
    /// Egress policy (v2's; default `public`). Refused with 400 `invalid net_policy: ...` when
    /// it breaks a rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub net_policy: Option<NetPolicy>,
    /// Ours: boot a kernel even when a shape snapshot of this sandbox's shape exists (and
    /// record none). Default: a create restores a clone of its shape's snapshot when it can.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot: bool,
}

/// An ephemeral volume (v1's `new_volumes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewVolume {
    /// Name (informational).
    #[serde(default)]
    pub name: String,
    /// Size in MiB.
    pub size_mb: u32,
    /// Mount point in the guest.
    pub mount: String,
}

/// `PATCH /sandboxes/:id`: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateSandbox {
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Keep-hot on or off (on wakes the sandbox at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hot: Option<bool>,
    /// Labels to set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels_add: BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels_remove: Vec<String>,
    /// A new egress policy, replacing the whole one (v2's); takes effect at once, whatever the
    /// sandbox's thermal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub net_policy: Option<NetPolicy>,
}

/// `POST /sandboxes/:id/start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StartRequest {
    /// Boot from the disk, discarding saved memory.
    #[serde(default)]
    pub force: bool,
}

/// `DELETE /sandboxes/:id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusBody {
    /// `destroyed`, `ok`.
    pub status: String,
}

/// `POST /sandboxes/:id/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecBody {
    /// argv, non-empty.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// 1..86400, else 300.
    #[serde(default)]
    pub timeout_sec: i64,
    /// Start and return at once.
    #[serde(default)]
    pub detach: bool,
    /// Where a detached command's output goes.
    #[serde(default)]
    pub output_file: String,
    /// Extra environment (ours).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (ours).
    #[serde(default)]
    pub cwd: String,
}

/// A buffered exec's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecResult {
    /// Exit code.
    pub exit_code: i32,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// Stdout went past the daemon's cap (10 MiB) or its memory budget: `stdout` is its
    /// beginning. Left out when false, so v1 clients see v1's shape.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdout_truncated: bool,
    /// Stderr went past the cap or the budget: `stderr` is its end (where errors are).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_truncated: bool,
}

/// The response header of a buffered exec whose output was cut: the streams that were, comma
/// separated (`stdout`, `stderr` or `stdout,stderr`).
pub const OUTPUT_TRUNCATED_HEADER: &str = "x-bhatti-output-truncated";

/// A detached exec's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DetachedResult {
    /// Process ID in the guest.
    pub pid: i64,
    /// Where its output goes.
    pub output_file: String,
    /// Always true.
    pub detached: bool,
}

/// One line of a streaming exec (`Accept: application/x-ndjson`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecEvent {
    /// Output on stdout.
    Stdout {
        /// The bytes (lossy UTF-8).
        data: String,
    },
    /// Output on stderr.
    Stderr {
        /// The bytes (lossy UTF-8).
        data: String,
    },
    /// The command ended (terminal).
    Exit {
        /// Exit code.
        exit_code: i32,
    },
    /// The exec failed (terminal).
    Error {
        /// Why.
        data: String,
    },
}

/// A listening port of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Port {
    /// The sandbox (`GET /ports` only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox_id: String,
    /// Port in the guest.
    pub container_port: u16,
    /// Where the authenticated proxy serves it.
    pub proxy_url: String,
}

/// `POST /sandboxes/:id/publish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublishRequest {
    /// Guest port, 1..=65535 (wider here so an out-of-range number gets a clear 400).
    pub port: u32,
    /// The alias; empty or absent: generated from the sandbox's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alias: String,
}

/// A published port (v1's `PublishRule` plus its `url`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublishRule {
    /// `pub_` + 16 hex.
    pub id: String,
    /// The sandbox.
    pub sandbox_id: String,
    /// Its owner.
    #[serde(default)]
    pub user_id: String,
    /// Guest port.
    pub port: u16,
    /// Globally unique alias.
    pub alias: String,
    /// Where the public proxy serves it (or v1's `(no public proxy configured) alias: <alias>`).
    #[serde(default)]
    pub url: String,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
}

/// `POST /sandboxes/:id/forward`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForwardRequest {
    /// Guest port, 1..=65535.
    pub guest_port: u32,
    /// Loopback port on the daemon's host, 0..=65535 (0: any free one).
    #[serde(default)]
    pub host_port: u32,
}

/// A forward: a loopback listener on the daemon's host relaying to a guest port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Forward {
    /// The sandbox.
    pub sandbox_id: String,
    /// Guest port.
    pub guest_port: u16,
    /// Loopback port on the daemon's host.
    pub host_port: u16,
    /// `127.0.0.1:<host_port>`.
    pub address: String,
    /// Connections relaying now.
    #[serde(default)]
    pub connections: u64,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
}

/// A file or directory entry in the guest (the agent's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileInfo {
    /// Base name.
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    /// Octal mode, e.g. `0644`.
    pub mode: String,
    /// Directory.
    pub is_dir: bool,
    /// Unix seconds.
    pub mtime: i64,
}

/// A session in the guest (the agent's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionInfo {
    /// Session ID.
    pub session_id: String,
    /// Command line.
    pub argv: String,
    /// Has a terminal.
    pub tty: bool,
    /// Still running.
    pub running: bool,
    /// Exit code once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A client is attached.
    pub attached: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// The first message of a piped session WebSocket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipedStart {
    /// argv, non-empty.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds a detached session lives (default 3600).
    #[serde(default)]
    pub max_idle_sec: u64,
}

/// Control messages on the session WebSockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WsMessage {
    /// Server -> client, first: the session's ID.
    Session {
        /// Session ID.
        session_id: String,
    },
    /// Client -> server (TTY): the terminal's size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Server -> client (piped): the command ended.
    Exit {
        /// Exit code.
        exit_code: i32,
    },
    /// Server -> client (piped): the session failed.
    Error {
        /// Why.
        message: String,
    },
}

/// `POST /sandboxes/:id/shell-token`'s answer: a web-shell share link. The token is shown
/// once (only its hash is stored); `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShellToken {
    /// 64 hex characters.
    pub token: String,
    /// `<api url>/_shell/<sandbox id>#token=<token>`, or the path alone when the server does
    /// not know the URL it is reached at (the client puts its own API URL in front).
    pub url: String,
}

impl std::fmt::Debug for ShellToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShellToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_are_written_as_go_does() {
        let table = [
            ("nothing yet", 0, "0s"),
            ("seconds", 45, "45s"),
            ("a whole minute", 60, "1m0s"),
            ("minutes and seconds", 61, "1m1s"),
            ("an hour", 3600, "1h0m0s"),
            ("v1's example", 2 * 3600 + 15 * 60 + 30, "2h15m30s"),
            ("over a day stays in hours", 90_000, "25h0m0s"),
        ];
        for (name, secs, want) in table {
            assert_eq!(go_duration(std::time::Duration::from_secs(secs)), want, "{name}");
        }
    }

    #[test]
    fn exec_events_have_v1_shapes() {
        let line = serde_json::to_string(&ExecEvent::Stdout { data: "hi\n".into() }).unwrap();
        assert_eq!(line, r#"{"type":"stdout","data":"hi\n"}"#);
        let exit = serde_json::to_string(&ExecEvent::Exit { exit_code: 3 }).unwrap();
        assert_eq!(exit, r#"{"type":"exit","exit_code":3}"#);
        let session = WsMessage::Session { session_id: "s1".into() };
        assert_eq!(
            serde_json::to_string(&session).unwrap(),
            r#"{"type":"session","session_id":"s1"}"#
        );
    }

    #[test]
    fn errors_omit_empty_extensions_and_unknown_fields_are_ignored() {
        let body = ErrorBody { error: "not found".into(), code: String::new(), request_id: None };
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"error":"not found"}"#);
        // As v1's Go decoder: a newer client's fields pass (the server names them in a Warning).
        let c: CreateSandbox = serde_json::from_str(r#"{"nmae":"x","from":"y"}"#).unwrap();
        assert_eq!(c.name, "");
        let c: CreateSandbox = serde_json::from_str(r#"{"name":"x","cpus":2}"#).unwrap();
        assert_eq!((c.name.as_str(), c.cpus), ("x", Some(2.0)));
    }

    #[test]
    fn net_policies_have_v2s_shape_and_v1_bodies_still_parse() {
        // v1 bodies: no policy asked for, none sent; a v1 daemon's sandbox reads as public.
        let c: CreateSandbox = serde_json::from_str(r#"{"name":"x"}"#).unwrap();
        assert_eq!(c.net_policy, None);
        assert!(!serde_json::to_string(&c).unwrap().contains("net_policy"));
        let u: UpdateSandbox = serde_json::from_str(r#"{"keep_hot":true}"#).unwrap();
        assert_eq!(u.net_policy, None);
        assert_eq!(serde_json::to_string(&u).unwrap(), r#"{"keep_hot":true}"#);
        let v1 = r#"{"id":"a","name":"x","status":"running","created_at":"t","cpus":1,
            "memory_mb":128}"#;
        let s: Sandbox = serde_json::from_str(v1).unwrap();
        assert_eq!(s.net_policy, NetPolicy::default());
        assert_eq!(s.net_policy.default, Posture::Public);
        // v2's spelling, every field optional.
        let c: CreateSandbox = serde_json::from_str(
            r#"{"net_policy":{"default":"deny","allow_hosts":["pypi.org"],"allow_cidrs":[]}}"#,
        )
        .unwrap();
        let p = c.net_policy.unwrap();
        assert_eq!(
            (p.default, p.allow_hosts.as_slice()),
            (Posture::Deny, &["pypi.org".into()][..])
        );
        let u: UpdateSandbox = serde_json::from_str(r#"{"net_policy":{}}"#).unwrap();
        assert_eq!(u.net_policy, Some(NetPolicy::default()));
        assert!(
            serde_json::from_str::<UpdateSandbox>(r#"{"net_policy":{"default":"open"}}"#).is_err()
        );
        // A sandbox always shows its policy.
        let shown = serde_json::to_value(&s).unwrap();
        assert_eq!(
            shown["net_policy"],
            serde_json::json!({"default":"public","allow_hosts":[],"allow_cidrs":[]})
        );
    }

    #[test]
    fn error_codes_round_trip_and_unknown_ones_are_kept() {
        for code in ["not_found", "unauthorized", "restore_failed", "guest_no_space", "method"] {
            let typed = ErrorCode::parse(code);
            assert!(!matches!(typed, ErrorCode::Other(_)), "{code}");
            assert_eq!(typed.as_str(), code);
        }
        assert_eq!(ErrorCode::parse("from_the_future"), ErrorCode::Other("from_the_future".into()));
        let v1: ErrorBody = serde_json::from_str(r#"{"error":"sandbox not found"}"#).unwrap();
        assert_eq!(v1.error_code(), ErrorCode::Other(String::new()));
    }
}
