//! JSON payloads. Field names, optionality and omission rules follow bhatti v1 (Go
//! `encoding/json`): optional request fields are omitted when unset, `null` decodes as "unset",
//! unknown fields are ignored, times are Unix seconds and file modes are 4-digit octal strings of
//! the permission bits.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Go encodes a nil slice or map as `null`; treat it like an absent field.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Payload of EXEC_REQ. Dispatch precedence in the agent: `session_id` (attach), empty `argv`
/// (error), `detach`, `tty`, `session`, otherwise a one-shot piped exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in the exec's `PATH`.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Extra environment, applied last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Allocate a PTY and create a TTY session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    /// Initial rows (TTY only, default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Initial columns (TTY only, default 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Attach to this existing session; other fields except `if_detached` are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Kill a detached session after this many idle seconds; 0 or less never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_sec: Option<i64>,
    /// Attach only if nobody is attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_detached: Option<bool>,
    /// Fire and forget; the agent replies with the PID and the output file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detach: Option<bool>,
    /// Output file of a detached exec; empty means a generated path under /tmp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
    /// Create a piped (non-TTY) session with scrollback and reattach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<bool>,
    /// Extension: `"root"` runs the command as root instead of the unprivileged user. v1 agents
    /// ignore the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Extension ([`FEATURE_PROCS`]): on a piped session's create, keep the child's stderr
    /// apart from its stdout (v1 merges them); on any create or attach, this client receives
    /// the session's stderr as STDERR frames (without it, as STDOUT, as v1 does). v1 agents
    /// ignore the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<bool>,
    /// Extension ([`FEATURE_PROCS`]): a name the session is listed under (at most
    /// [`crate::limits::MAX_SESSION_TAG_BYTES`]). Sessions only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Extension ([`FEATURE_PROCS`]): opaque host data the session is listed with, e.g. the
    /// command as a host's API received it (at most [`crate::limits::MAX_SESSION_META_BYTES`]).
    /// Sessions only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
}

impl ExecRequest {
    /// A plain one-shot exec of `argv`.
    pub fn command<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self { argv: argv.into_iter().map(Into::into).collect(), ..Self::default() }
    }
}

/// A session as reported by SESSION_INFO and EXEC_LIST_RESP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// `s1`, `s2`, ... or `init`.
    pub session_id: String,
    /// argv joined with single spaces.
    #[serde(default)]
    pub argv: String,
    /// TTY (true) or piped (false) session.
    #[serde(default)]
    pub tty: bool,
    /// The process has not exited.
    #[serde(default)]
    pub running: bool,
    /// Exit code; omitted while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A client is attached.
    #[serde(default)]
    pub attached: bool,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created_at: i64,
    /// Extension ([`FEATURE_PROCS`]): the guest PID of the session's process (also its process
    /// group). Omitted by v1 agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// Extension ([`FEATURE_PROCS`]): the session keeps stderr apart from stdout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr: bool,
    /// Extension ([`FEATURE_PROCS`]): the tag given at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Extension ([`FEATURE_PROCS`]): the host data given at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
}

/// Payload of ACTIVITY_RESP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityInfo {
    /// Last activity, Unix seconds; 0 if nothing happened since boot.
    #[serde(default)]
    pub last_activity_unix: i64,
    /// Sessions whose process is still running.
    #[serde(default)]
    pub active_sessions: u32,
    /// Sessions with an attached client.
    #[serde(default)]
    pub attached_sessions: u32,
}

/// Payload of EXEC_KILL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRequest {
    /// The session to kill.
    pub session_id: String,
    /// Extension ([`FEATURE_PROCS`]): the signal number sent to the session's process group;
    /// absent means SIGKILL (v1's behaviour, and what a v1 agent does whatever is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// The STDOUT payload of a detached exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachedExec {
    /// PID of the detached process.
    pub pid: i64,
    /// File receiving its stdout and stderr.
    pub output_file: String,
}

/// Payload of FWD_REQ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// Guest-local TCP port to connect to.
    pub port: u16,
}

/// Payload of FWD_RESP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardResponse {
    /// `"ok"` or `"error"`.
    pub status: String,
    /// Why the forward failed; omitted on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ForwardResponse {
    /// The success response: `{"status":"ok"}`.
    pub fn ok() -> Self {
        Self { status: STATUS_OK.to_owned(), message: None }
    }

    /// A failure response with its reason.
    pub fn error(message: impl Into<String>) -> Self {
        Self { status: "error".to_owned(), message: Some(message.into()) }
    }

    /// True for `"ok"`.
    pub fn is_ok(&self) -> bool {
        self.status == STATUS_OK
    }
}

/// The success status string of FWD_RESP and FILE_WRITE_RESP.
pub const STATUS_OK: &str = "ok";

/// Payload of FILE_READ_REQ. Any of `offset`, `limit`, `max_bytes` above zero selects line mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReadRequest {
    /// File to read.
    pub path: String,
    /// 1-based first line; 0, negative or absent means line 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Maximum lines; 0, negative or absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Maximum bytes; 0, negative or absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<i64>,
}

/// Payload of FILE_READ_RESP; content follows as STDOUT frames, then EXIT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReadResponse {
    /// Permission bits, 4-digit octal.
    pub mode: String,
    /// Total file size, whatever part of it is sent.
    pub size: i64,
}

/// Payload of FILE_WRITE_REQ; `size` bytes of content follow as STDIN frames.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWriteRequest {
    /// Destination; missing parent directories are created.
    pub path: String,
    /// Octal permission string; empty, invalid or zero means 0644.
    #[serde(default)]
    pub mode: String,
    /// Content length; must be 0..=100 MiB.
    pub size: i64,
}

/// Payload of FILE_WRITE_RESP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWriteResponse {
    /// `"ok"`.
    pub status: String,
}

/// Payload of FILE_STAT_REQ and FILE_LS_REQ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRequest {
    /// The path to stat or list.
    pub path: String,
}

/// One file, as returned by stat and list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Base name.
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    /// Permission bits, 4-digit octal; empty for the truncation marker.
    pub mode: String,
    /// Directory (symlinks in listings are reported as themselves).
    pub is_dir: bool,
    /// Modification time, Unix seconds.
    pub mtime: i64,
}

/// Payload of the HELLO / HELLO_ACK extension frames.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Extension protocol version, currently 1.
    pub version: u32,
    /// Requested (HELLO) or granted (HELLO_ACK) features, e.g. [`FEATURE_REUSE`].
    #[serde(default, deserialize_with = "null_as_default")]
    pub features: Vec<String>,
}

/// Payload of the SET_TIME extension frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTime {
    /// Wall-clock time to set, nanoseconds since the Unix epoch.
    pub unix_nanos: u64,
}

/// Payload of the SET_NET extension frame: the guest's interface moves to this address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetNet {
    /// New address.
    pub ip: std::net::Ipv4Addr,
    /// Prefix length of its subnet.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: std::net::Ipv4Addr,
    /// New MAC, `52:54:00:..`.
    pub mac: String,
}

/// Payload of the SET_IDENTITY extension frame: what the guest renews when a checkpoint is
/// resumed as a new sandbox. Fields left out are kept.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetIdentity {
    /// The agent's new token: every connection from now on must AUTH with it (connections
    /// already authenticated keep working). Never empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The guest's new hostname (`sethostname`, `/etc/hostname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The guest's new machine ID: 32 lowercase hex digits, written to `/etc/machine-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// Host entropy, hex encoded (at most 512 bytes decoded): added to the guest's pool
    /// (`RNDADDENTROPY`) and the guest's RNG reseeded (`RNDRESEEDCRNG`), so two clones of one
    /// snapshot never produce the same random bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<String>,
    /// Reset the guest's established TCP connections to peers outside the guest (a clone must
    /// not continue its source's conversations); listening sockets and loopback are kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset_connections: bool,
}

impl std::fmt::Debug for SetIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A token is a secret: never printed.
        f.debug_struct("SetIdentity")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("hostname", &self.hostname)
            .field("machine_id", &self.machine_id)
            .field("entropy", &self.entropy.as_ref().map(|_| "<redacted>"))
            .field("reset_connections", &self.reset_connections)
            .finish()
    }
}

/// Feature name: the connection carries further requests after each one completes.
pub const FEATURE_REUSE: &str = "reuse";

/// Feature name: the connection may carry a WATCH_REQ (which takes the connection over).
pub const FEATURE_WATCH: &str = "watch";

/// Payload of WATCH_REQ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// The directory to watch (absolute, or relative to the agent's working directory).
    pub path: String,
    /// Also watch every directory below it, including ones created later.
    #[serde(default)]
    pub recursive: bool,
}

/// What happened to a watched name. A rename is `rename` for the old name and `create` for
/// the new one (what inotify's moved_from / moved_to pair means, and what E2B's envd reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchKind {
    /// The first event of every watch: the watch is armed, later changes are reported.
    Started,
    /// Created (or moved in).
    Create,
    /// Content written.
    Write,
    /// Removed.
    Remove,
    /// Renamed away (the old name), or moved out.
    Rename,
    /// Permissions or other metadata changed.
    Chmod,
    /// Events were lost (the queue was full, the kernel's queue overflowed, or the directory
    /// limit was reached); `name` is empty.
    Overflow,
}

/// Payload of WATCH_EVENT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The name relative to the watched directory (`sub/file.txt` below a recursive watch);
    /// empty for `started`, `overflow` and the watched directory itself.
    #[serde(default)]
    pub name: String,
    /// What happened.
    pub kind: WatchKind,
}

/// Feature name: the agent knows the process extensions: a piped session's separate stderr
/// ([`ExecRequest::stderr`]), session tags and host data ([`ExecRequest::tag`],
/// [`ExecRequest::meta`]), the guest PID in [`SessionInfo::pid`] and a kill's
/// [`KillRequest::signal`]. Granted per connection, but what it names holds for the agent.
pub const FEATURE_PROCS: &str = "procs";

/// Formats permission bits as v1 does: 4-digit zero-padded octal, file-type and
/// setuid/setgid/sticky bits dropped.
pub fn format_mode(mode: u32) -> String {
    format!("{:04o}", mode & 0o777)
}

/// Parses an octal mode string (`"0600"` or `"600"`); `None` when invalid or zero. Bits above
/// `0o7777` are dropped before the zero check, so `"10000"` is zero (the default applies), not a
/// mode-0 file.
pub fn parse_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode, 8).ok().map(|m| m & 0o7777).filter(|m| *m != 0)
}
