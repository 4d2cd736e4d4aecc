//! File operations: read (raw or by lines), atomic write, stat, list.
//!
//! They run as the agent (root in the VM), so there are no permission checks beyond root's.
//! Error texts follow v1 (Go's `op path: reason` with lower-case reasons) so existing clients that
//! match on them keep working.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use proto::limits::{FILE_CHUNK_BYTES, MAX_FILE_WRITE_BYTES, MAX_LIST_ENTRIES, MAX_PAYLOAD_LEN};
use proto::messages::{
    FileInfo, FileReadRequest, FileReadResponse, FileWriteRequest, FileWriteResponse, PathRequest,
    STATUS_OK, format_mode, parse_mode,
};
use proto::payload::encode_exit;
use proto::{FrameType, read_frame, send_json, write_frame};

use crate::conn::Conn;
use crate::reply::{Outcome, os_error, refuse_content, send_error, sent};
use crate::spawn::{USER_GID, USER_UID};

/// FILE_READ: FILE_READ_RESP with the total size, content as STDOUT frames, EXIT 0.
pub fn read(conn: &mut Conn, req: &FileReadRequest) -> Outcome {
    let mut options = OpenOptions::new();
    options.read(true);
    let (file, meta) = match open_regular(&req.path, options, Links::Follow) {
        Ok(opened) => opened,
        Err(e) => return send_error(conn, &e.to_string()),
    };
    let head = FileReadResponse { mode: format_mode(meta.mode()), size: meta.len() as i64 };
    if send_json(conn, FrameType::FILE_READ_RESP, &head).is_err() {
        return Outcome::Close;
    }
    let window = LineWindow::from_request(req);
    let streamed = match window {
        None => stream_raw(conn, file),
        Some(window) => stream_lines(conn, file, window),
    };
    match streamed {
        Ok(()) => sent(write_frame(conn, FrameType::EXIT, &encode_exit(0))),
        Err(StreamError::Host) => Outcome::Close,
        Err(StreamError::File(e)) => send_error(conn, &os_error("read", &req.path, &e)),
    }
}

/// Why a path was not opened as a regular file. The texts are v1's (agent.md 1.13), plus
/// `is a symbolic link` for a refused link.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{}", os_error("open", .path, .source))]
    Open { path: String, source: io::Error },
    #[error("{}", os_error("stat", .path, .source))]
    Stat { path: String, source: io::Error },
    #[error("{}", os_error("fcntl", .path, .source))]
    Flags { path: String, source: io::Error },
    #[error("{path} is a directory")]
    Directory { path: String },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    #[error("{path} is a symbolic link")]
    Symlink { path: String },
}

/// Whether [`open_regular`] follows a symbolic link at the path's last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    Follow,
    /// `O_NOFOLLOW`: for files the agent (root) creates or truncates on the host's behalf,
    /// where a link planted by the guest user would redirect root's write.
    Refuse,
}

/// Opens `path` with `options` and returns it only if it is a regular file.
///
/// `O_NONBLOCK` makes the open itself safe: a FIFO without a writer opens at once for reading and
/// one without a reader fails at once (ENXIO) for writing, where a blocking open would hang this
/// connection forever. `O_NOCTTY` keeps a terminal from becoming the agent's controlling terminal.
/// The kind is decided by `fstat` on the opened descriptor, so it cannot change between check
/// and use; then `O_NONBLOCK` is cleared, since a child handed the file shares its flags.
pub fn open_regular(
    path: &str,
    mut options: OpenOptions,
    links: Links,
) -> Result<(File, fs::Metadata), OpenError> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = options.custom_flags(flags).open(path).map_err(|e| open_failure(path, e, links))?;
    let meta = file.metadata().map_err(|source| OpenError::Stat { path: path.into(), source })?;
    if meta.is_dir() {
        return Err(OpenError::Directory { path: path.into() });
    }
    if !meta.is_file() {
        return Err(OpenError::NotRegular { path: path.into() });
    }
    let flags_error = |e: nix::errno::Errno| OpenError::Flags {
        path: path.into(),
        source: io::Error::from_raw_os_error(e as i32),
    };
    let status = fcntl(&file, FcntlArg::F_GETFL).map_err(flags_error)?;
    let status = OFlag::from_bits_retain(status) - OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(status)).map_err(flags_error)?;
    Ok((file, meta))
}

/// Names the cause of a failed open when the OS text would hide it: a refused link (ELOOP under
/// `O_NOFOLLOW`), a FIFO or device that cannot be opened without blocking (ENXIO, EAGAIN), a
/// directory opened for writing (EISDIR).
fn open_failure(path: &str, source: io::Error, links: Links) -> OpenError {
    let path = path.to_owned();
    let kind = || match links {
        Links::Follow => fs::metadata(&path),
        Links::Refuse => fs::symlink_metadata(&path),
    };
    match source.raw_os_error() {
        Some(libc::ELOOP)
            if links == Links::Refuse && kind().is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            OpenError::Symlink { path }
        }
        Some(libc::ENXIO | libc::EAGAIN) if kind().is_ok_and(|m| !m.is_file()) => {
            OpenError::NotRegular { path }
        }
        Some(libc::EISDIR) => OpenError::Directory { path },
        _ => OpenError::Open { path, source },
    }
}

enum StreamError {
    /// The host went away: stop reading the file at once (v1 read on into a dead socket).
    Host,
    /// The file could not be read.
    File(io::Error),
}

fn stream_raw(conn: &mut Conn, mut file: File) -> Result<(), StreamError> {
    let mut buf = vec![0u8; FILE_CHUNK_BYTES];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                write_frame(conn, FrameType::STDOUT, &buf[..n]).map_err(|_| StreamError::Host)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StreamError::File(e)),
        }
    }
}

/// Line-mode selection: which lines and how many bytes to send.
#[derive(Debug, Clone, Copy)]
struct LineWindow {
    /// First line to send, 1-based.
    first_line: u64,
    /// Maximum lines, if limited.
    max_lines: Option<u64>,
    /// Maximum bytes, if limited.
    max_bytes: Option<u64>,
}

impl LineWindow {
    /// `None` (raw mode) when offset, limit and max_bytes are all absent or not positive.
    fn from_request(req: &FileReadRequest) -> Option<Self> {
        let positive = |v: Option<i64>| v.filter(|v| *v > 0).map(|v| v as u64);
        let (offset, limit, max_bytes) =
            (positive(req.offset), positive(req.limit), positive(req.max_bytes));
        if offset.is_none() && limit.is_none() && max_bytes.is_none() {
            return None;
        }
        Some(Self { first_line: offset.unwrap_or(1), max_lines: limit, max_bytes })
    }
}

/// Sends the selected lines byte-exact, batched into frames of up to 32 KiB. Unlike v1 this
/// keeps `\r\n`, adds no newline to a last line that has none, and handles lines of any length
/// (v1 silently stopped at a line over 256 KiB).
fn stream_lines(conn: &mut Conn, file: File, window: LineWindow) -> Result<(), StreamError> {
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut out: Vec<u8> = Vec::with_capacity(FILE_CHUNK_BYTES);
    let mut line_no: u64 = 1;
    let mut at_line_start = true;
    let mut lines_sent: u64 = 0;
    let mut bytes_sent: u64 = 0;
    let flush = |out: &mut Vec<u8>, conn: &mut Conn| -> Result<(), StreamError> {
        if !out.is_empty() {
            write_frame(conn, FrameType::STDOUT, out).map_err(|_| StreamError::Host)?;
            out.clear();
        }
        Ok(())
    };
    'read: loop {
        if at_line_start
            && line_no >= window.first_line
            && window.max_lines.is_some_and(|max| lines_sent >= max)
        {
            break;
        }
        let buf = match reader.fill_buf() {
            Ok([]) => break,
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StreamError::File(e)),
        };
        let newline = buf.iter().position(|b| *b == b'\n');
        let segment_len = newline.map_or(buf.len(), |i| i + 1);
        if line_no >= window.first_line {
            if at_line_start {
                lines_sent += 1;
            }
            let mut take = segment_len;
            let mut budget_hit = false;
            if let Some(max) = window.max_bytes {
                let remaining = max - bytes_sent;
                if take as u64 > remaining {
                    take = remaining as usize;
                    budget_hit = true;
                }
            }
            out.extend_from_slice(&buf[..take]);
            bytes_sent += take as u64;
            if out.len() >= FILE_CHUNK_BYTES {
                flush(&mut out, conn)?;
            }
            if budget_hit {
                break 'read;
            }
        }
        reader.consume(segment_len);
        at_line_start = newline.is_some();
        if at_line_start {
            line_no += 1;
        }
    }
    flush(&mut out, conn)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp path next to `path`, unique per write (v1 used one fixed name, so concurrent writers
/// to the same path shared an inode and could mix their content).
fn temp_path(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.bhatti-tmp-{}-{unique}", std::process::id()))
}

/// FILE_WRITE: validates, receives `size` bytes of STDIN frames into a temp file, fsyncs and
/// renames it over the target, so readers see the old or the new content, never a mix.
pub fn write(conn: &mut Conn, req: &FileWriteRequest) -> Outcome {
    // Validation happens before any content is consumed.
    if req.size < 0 {
        return send_error(conn, "file size must be >= 0");
    }
    if req.size > MAX_FILE_WRITE_BYTES {
        return send_error(
            conn,
            &format!("file too large: {} bytes (max {MAX_FILE_WRITE_BYTES})", req.size),
        );
    }
    if req.path.is_empty() {
        return send_error(conn, "bad request: empty path");
    }
    let size = req.size as u64;
    let mode = parse_mode(&req.mode).unwrap_or(0o644);
    let path = Path::new(&req.path);
    // The rename would replace a FIFO, socket or device node (say /dev/null) with a regular
    // file; refused before any content, like every impossible target.
    if let Err(e) = check_target(&req.path) {
        return refuse_content(conn, &e.to_string(), size);
    }
    let temp = temp_path(path);
    // Opened before any content is read, so an impossible target is refused at once
    // (agent.md 3.10): a client that waits for the answer before sending must not hang.
    let mut file = match prepare_temp(path, &temp, mode) {
        Ok(file) => file,
        Err(msg) => return refuse_content(conn, &msg, size),
    };
    let mut written: u64 = 0;
    while written < size {
        let frame = match read_frame(conn) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => {
                let _ = fs::remove_file(&temp);
                return send_error(conn, &format!("connection lost after {written}/{size} bytes"));
            }
        };
        if frame.kind != FrameType::STDIN {
            continue;
        }
        // A frame overshooting `size` is cut at `size`: the file is exactly what was announced.
        let take = frame.payload.len().min((size - written) as usize);
        if let Err(e) = file.write_all(&frame.payload[..take]) {
            // Answered at once too (a full disk, say), not after the rest of the content.
            drop(file);
            let _ = fs::remove_file(&temp);
            let unread = size - written - take as u64;
            return refuse_content(conn, &os_error("write", &req.path, &e), unread);
        }
        written += take as u64;
    }
    match commit(file, &temp, path) {
        Ok(()) => {
            let reply = FileWriteResponse { status: STATUS_OK.to_owned() };
            sent(send_json(conn, FrameType::FILE_WRITE_RESP, &reply))
        }
        Err(msg) => {
            let _ = fs::remove_file(&temp);
            send_error(conn, &msg)
        }
    }
}

/// A write target must be missing, a regular file or a symbolic link (the rename replaces the
/// link itself, as in v1, and never opens what it points to). Other errors of the `lstat` are left
/// to the temp file's creation, which reports them with v1's texts.
fn check_target(path: &str) -> Result<(), OpenError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(OpenError::Directory { path: path.into() }),
        Ok(meta) if !meta.is_file() && !meta.file_type().is_symlink() => {
            Err(OpenError::NotRegular { path: path.into() })
        }
        _ => Ok(()),
    }
}

/// Makes a fully received temp file the target: owner, fsync, rename, directory fsync.
fn commit(file: File, temp: &Path, path: &Path) -> Result<(), String> {
    let shown = path.display().to_string();
    // Owner first, so the file never appears under its name owned by root; through the
    // descriptor, since the temp path lives in a directory the guest user may control.
    if nix::unistd::geteuid().is_root() {
        let _ = std::os::unix::fs::fchown(&file, Some(USER_UID), Some(USER_GID));
    }
    file.sync_all().map_err(|e| os_error("sync", &shown, &e))?;
    drop(file);
    fs::rename(temp, path).map_err(|e| os_error("rename", &shown, &e))?;
    // The rename is durable only once the directory is: without this, a VM killed within the
    // journal's commit interval comes back without the file. The content is in place either
    // way; a directory that cannot be synced is only worth a line on the console.
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Err(e) = fs::File::open(parent).and_then(|dir| dir.sync_all()) {
        eprintln!("lohar: sync directory of {shown}: {e}");
    }
    Ok(())
}

/// Creates the parent directories and the temp file with the requested mode; leaves nothing
/// behind on failure.
fn prepare_temp(path: &Path, temp: &Path, mode: u32) -> Result<File, String> {
    let shown = path.display().to_string();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(|e| {
            // std reports "file exists" when a path component is a regular file.
            let e = if e.kind() == io::ErrorKind::AlreadyExists {
                io::Error::from_raw_os_error(libc::ENOTDIR)
            } else {
                e
            };
            os_error("mkdir", &parent.display().to_string(), &e)
        })?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)
        .map_err(|e| os_error("open", &shown, &e))?;
    // The requested mode exactly, not the mode filtered by the agent's umask.
    if let Err(e) = file.set_permissions(fs::Permissions::from_mode(mode)) {
        let _ = fs::remove_file(temp);
        return Err(os_error("chmod", &shown, &e));
    }
    Ok(file)
}

fn file_info(name: String, meta: &fs::Metadata) -> FileInfo {
    FileInfo {
        name,
        size: meta.len() as i64,
        mode: format_mode(meta.mode()),
        is_dir: meta.is_dir(),
        mtime: meta.mtime(),
    }
}

fn base_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_owned())
}

/// FILE_STAT: the target's info, following symlinks.
pub fn stat(conn: &mut Conn, req: &PathRequest) -> Outcome {
    match fs::metadata(&req.path) {
        Ok(meta) => sent(send_json(
            conn,
            FrameType::FILE_STAT_RESP,
            &file_info(base_name(&req.path), &meta),
        )),
        Err(e) => send_error(conn, &os_error("stat", &req.path, &e)),
    }
}

/// FILE_LS: up to 10,000 entries (lstat'ed, directory order), then a marker entry carrying the
/// real total (v1 always reported 10001).
pub fn list(conn: &mut Conn, req: &PathRequest) -> Outcome {
    match fs::metadata(&req.path) {
        Ok(meta) if !meta.is_dir() => {
            return send_error(conn, &format!("{} is not a directory", req.path));
        }
        Ok(_) => {}
        Err(e) => return send_error(conn, &os_error("stat", &req.path, &e)),
    }
    let dir = match fs::read_dir(&req.path) {
        Ok(dir) => dir,
        Err(e) => return send_error(conn, &os_error("open", &req.path, &e)),
    };
    let mut entries = Vec::new();
    let mut total = 0usize;
    for entry in dir.flatten() {
        // Entries that vanish between readdir and lstat are skipped.
        let Ok(meta) = entry.metadata() else { continue };
        total += 1;
        if entries.len() < MAX_LIST_ENTRIES {
            entries.push(file_info(entry.file_name().to_string_lossy().into_owned(), &meta));
        }
    }
    let payload = encode_listing(entries, total);
    sent(write_frame(conn, FrameType::FILE_LS_RESP, &payload))
}

/// Encodes a listing, truncating further when long names would push it past the frame limit
/// (v1 failed to send such a listing and the client saw EOF).
fn encode_listing(mut entries: Vec<FileInfo>, total: usize) -> Vec<u8> {
    loop {
        let mut shown = entries.clone();
        if entries.len() < total {
            shown.push(FileInfo {
                name: format!("... truncated at {} entries ({total} total)", entries.len()),
                ..FileInfo::default()
            });
        }
        let json = serde_json::to_vec(&shown).unwrap_or_else(|_| b"[]".to_vec());
        if json.len() <= MAX_PAYLOAD_LEN || entries.is_empty() {
            return json;
        }
        entries.truncate(entries.len() / 2);
    }
}
