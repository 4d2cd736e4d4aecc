//! Protocol limits shared by both ends. Values are v1's; changing any of them breaks
//! compatibility with deployed agents or clients.

/// Largest legal `LEN` (type byte + payload).
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Largest legal payload: `MAX_FRAME_LEN` minus the type byte.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - 1;
/// Bytes of frame header on the wire: the u32 length.
pub const HEADER_LEN: usize = 4;
/// Offset of the first payload byte in an encoded frame (header + type byte).
pub const PAYLOAD_OFFSET: usize = HEADER_LEN + 1;

/// Guest TCP port for control requests (exec, sessions, files, activity).
pub const CONTROL_PORT: u16 = 1024;
/// Guest TCP port for port forwarding.
pub const FORWARD_PORT: u16 = 1025;

/// Concurrent control connections the agent accepts.
pub const MAX_CONTROL_CONNECTIONS: usize = 50;
/// Sessions (TTY, piped, init) the agent keeps at once.
pub const MAX_SESSIONS: usize = 20;
/// Scrollback kept per session.
pub const SCROLLBACK_BYTES: usize = 64 * 1024;
/// Largest file a single FILE_WRITE may carry.
pub const MAX_FILE_WRITE_BYTES: i64 = 100 * 1024 * 1024;
/// Entries returned by FILE_LS before the truncation marker.
pub const MAX_LIST_ENTRIES: usize = 10_000;
/// Output the host buffers for one exec, per stream (stdout keeps its beginning, stderr its end).
pub const MAX_EXEC_OUTPUT_BYTES: usize = 10 * 1024 * 1024;
/// Seconds the agent waits for the AUTH frame.
pub const AUTH_TIMEOUT_SECS: u64 = 5;
/// Chunk size for raw file content frames, both directions.
pub const FILE_CHUNK_BYTES: usize = 32 * 1024;
/// Events a watch holds for a host that reads slower than the guest changes files; past
/// this the agent drops events and reports one `overflow` (it never blocks on the host).
pub const WATCH_QUEUE_EVENTS: usize = 1024;
/// Directories one recursive watch follows (inotify watches); more are an ERROR at the start
/// and an `overflow` later.
pub const MAX_WATCH_DIRS: usize = 8192;

/// Longest session tag (extension `procs`), bytes.
pub const MAX_SESSION_TAG_BYTES: usize = 256;
/// Longest session host data (extension `procs`), bytes.
pub const MAX_SESSION_META_BYTES: usize = 16 * 1024;
