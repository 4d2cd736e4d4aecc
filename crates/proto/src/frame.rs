//! Frames: the 4-byte big-endian length, the type byte, the payload.

use std::fmt;
use std::io::{self, Read, Write};

use serde::Serialize;

use crate::limits::{HEADER_LEN, MAX_FRAME_LEN, PAYLOAD_OFFSET};

/// A frame type byte. A newtype rather than an enum because unknown types are legal on the wire:
/// the agent answers them with an error and the host skips them, so they must be representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameType(pub u8);

impl FrameType {
    /// Raw bytes for the child's stdin or PTY; file content during FILE_WRITE. host -> guest.
    pub const STDIN: Self = Self(0x01);
    /// Child stdout (PTY output for TTY sessions); file content during FILE_READ. guest -> host.
    pub const STDOUT: Self = Self(0x02);
    /// Child stderr, one-shot piped exec only. guest -> host.
    pub const STDERR: Self = Self(0x03);
    /// Terminal size: u16 rows, u16 cols, big-endian. host -> guest.
    pub const RESIZE: Self = Self(0x04);
    /// Exit code: i32 big-endian. guest -> host.
    pub const EXIT: Self = Self(0x05);
    /// UTF-8 error message. guest -> host.
    pub const ERROR: Self = Self(0x06);
    /// Kill the running exec (SIGKILL) or session (SIGTERM). host -> guest, empty.
    pub const KILL: Self = Self(0x07);
    /// JSON [`crate::messages::ExecRequest`]. host -> guest.
    pub const EXEC_REQ: Self = Self(0x10);
    /// Raw token bytes; first frame of every connection when the agent has a token.
    pub const AUTH: Self = Self(0x11);
    /// JSON [`crate::messages::ForwardRequest`], first frame on the forward port.
    pub const FWD_REQ: Self = Self(0x20);
    /// JSON [`crate::messages::ForwardResponse`].
    pub const FWD_RESP: Self = Self(0x21);
    /// List sessions, empty payload.
    pub const EXEC_LIST_REQ: Self = Self(0x30);
    /// JSON array of [`crate::messages::SessionInfo`].
    pub const EXEC_LIST_RESP: Self = Self(0x31);
    /// JSON [`crate::messages::KillRequest`].
    pub const EXEC_KILL: Self = Self(0x32);
    /// JSON [`crate::messages::SessionInfo`], sent on session create and attach.
    pub const SESSION_INFO: Self = Self(0x33);
    /// Activity query, empty payload.
    pub const ACTIVITY_REQ: Self = Self(0x40);
    /// JSON [`crate::messages::ActivityInfo`].
    pub const ACTIVITY_RESP: Self = Self(0x41);
    /// JSON [`crate::messages::FileReadRequest`].
    pub const FILE_READ_REQ: Self = Self(0x50);
    /// JSON [`crate::messages::FileReadResponse`], then STDOUT frames, then EXIT.
    pub const FILE_READ_RESP: Self = Self(0x51);
    /// JSON [`crate::messages::FileWriteRequest`], then STDIN frames.
    pub const FILE_WRITE_REQ: Self = Self(0x52);
    /// JSON [`crate::messages::FileWriteResponse`].
    pub const FILE_WRITE_RESP: Self = Self(0x53);
    /// JSON [`crate::messages::PathRequest`].
    pub const FILE_STAT_REQ: Self = Self(0x54);
    /// JSON [`crate::messages::FileInfo`].
    pub const FILE_STAT_RESP: Self = Self(0x55);
    /// JSON [`crate::messages::PathRequest`].
    pub const FILE_LS_REQ: Self = Self(0x56);
    /// JSON array of [`crate::messages::FileInfo`].
    pub const FILE_LS_RESP: Self = Self(0x57);
    /// In-guest systemctl IPC request (Unix socket inside the guest only).
    pub const SYSTEMCTL_REQ: Self = Self(0x60);
    /// In-guest systemctl IPC response.
    pub const SYSTEMCTL_RESP: Self = Self(0x61);
    /// Extension: connection-reuse hello, JSON [`crate::messages::Hello`]. Not in v1.
    pub const HELLO: Self = Self(0x70);
    /// Extension: the agent's answer to HELLO, JSON [`crate::messages::Hello`]. Not in v1.
    pub const HELLO_ACK: Self = Self(0x71);
    /// Extension: set the guest's wall clock, JSON [`crate::messages::SetTime`]; answered with
    /// EXIT 0 or ERROR. Not in v1 (a v1 agent answers its unknown-type error).
    pub const SET_TIME: Self = Self(0x72);
    /// Extension: move the guest's interface to a new address and MAC (a checkpoint resumed
    /// beside its source), JSON [`crate::messages::SetNet`]; answered with EXIT 0 before the
    /// change takes effect, or ERROR. Not in v1.
    pub const SET_NET: Self = Self(0x73);
    /// Host -> agent (our extension): the guest takes a new identity (a sandbox resumed from a
    /// checkpoint is a new sandbox), JSON [`crate::messages::SetIdentity`]; answered with EXIT 0
    /// or ERROR.
    pub const SET_IDENTITY: Self = Self(0x74);
    /// Extension (feature `"watch"`): watch a directory, JSON
    /// [`crate::messages::WatchRequest`]; answered with WATCH_EVENT frames (the first one
    /// `started`) until the host closes the connection, or with ERROR.
    pub const WATCH_REQ: Self = Self(0x75);
    /// Extension: one event of a watch, JSON [`crate::messages::WatchEvent`]. guest -> host.
    pub const WATCH_EVENT: Self = Self(0x76);

    /// Every type this crate knows, in byte order.
    pub const ALL: [Self; 34] = [
        Self::STDIN,
        Self::STDOUT,
        Self::STDERR,
        Self::RESIZE,
        Self::EXIT,
        Self::ERROR,
        Self::KILL,
        Self::EXEC_REQ,
        Self::AUTH,
        Self::FWD_REQ,
        Self::FWD_RESP,
        Self::EXEC_LIST_REQ,
        Self::EXEC_LIST_RESP,
        Self::EXEC_KILL,
        Self::SESSION_INFO,
        Self::ACTIVITY_REQ,
        Self::ACTIVITY_RESP,
        Self::FILE_READ_REQ,
        Self::FILE_READ_RESP,
        Self::FILE_WRITE_REQ,
        Self::FILE_WRITE_RESP,
        Self::FILE_STAT_REQ,
        Self::FILE_STAT_RESP,
        Self::FILE_LS_REQ,
        Self::FILE_LS_RESP,
        Self::SYSTEMCTL_REQ,
        Self::SYSTEMCTL_RESP,
        Self::HELLO,
        Self::HELLO_ACK,
        Self::SET_TIME,
        Self::SET_NET,
        Self::SET_IDENTITY,
        Self::WATCH_REQ,
        Self::WATCH_EVENT,
    ];

    /// The protocol name of a known type, `None` for unassigned bytes.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::STDIN => "STDIN",
            Self::STDOUT => "STDOUT",
            Self::STDERR => "STDERR",
            Self::RESIZE => "RESIZE",
            Self::EXIT => "EXIT",
            Self::ERROR => "ERROR",
            Self::KILL => "KILL",
            Self::EXEC_REQ => "EXEC_REQ",
            Self::AUTH => "AUTH",
            Self::FWD_REQ => "FWD_REQ",
            Self::FWD_RESP => "FWD_RESP",
            Self::EXEC_LIST_REQ => "EXEC_LIST_REQ",
            Self::EXEC_LIST_RESP => "EXEC_LIST_RESP",
            Self::EXEC_KILL => "EXEC_KILL",
            Self::SESSION_INFO => "SESSION_INFO",
            Self::ACTIVITY_REQ => "ACTIVITY_REQ",
            Self::ACTIVITY_RESP => "ACTIVITY_RESP",
            Self::FILE_READ_REQ => "FILE_READ_REQ",
            Self::FILE_READ_RESP => "FILE_READ_RESP",
            Self::FILE_WRITE_REQ => "FILE_WRITE_REQ",
            Self::FILE_WRITE_RESP => "FILE_WRITE_RESP",
            Self::FILE_STAT_REQ => "FILE_STAT_REQ",
            Self::FILE_STAT_RESP => "FILE_STAT_RESP",
            Self::FILE_LS_REQ => "FILE_LS_REQ",
            Self::FILE_LS_RESP => "FILE_LS_RESP",
            Self::SYSTEMCTL_REQ => "SYSTEMCTL_REQ",
            Self::SYSTEMCTL_RESP => "SYSTEMCTL_RESP",
            Self::HELLO => "HELLO",
            Self::HELLO_ACK => "HELLO_ACK",
            Self::SET_TIME => "SET_TIME",
            Self::SET_NET => "SET_NET",
            Self::SET_IDENTITY => "SET_IDENTITY",
            Self::WATCH_REQ => "WATCH_REQ",
            Self::WATCH_EVENT => "WATCH_EVENT",
            _ => return None,
        })
    }
}

/// Formats as v1 does in its error strings: `0x` and two lower-case hex digits.
impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02x}", self.0)
    }
}

impl fmt::Debug for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "FrameType({self})"),
        }
    }
}

/// One decoded frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The type byte.
    pub kind: FrameType,
    /// `LEN - 1` bytes, possibly empty.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Builds a frame; nothing is validated until it is written.
    pub fn new(kind: FrameType, payload: impl Into<Vec<u8>>) -> Self {
        Self { kind, payload: payload.into() }
    }

    /// Decodes the payload as JSON.
    pub fn json<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// The payload as text, with invalid UTF-8 replaced (for ERROR frames).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.kind)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Everything that can go wrong reading, writing or parsing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// `LEN` above [`MAX_FRAME_LEN`]. On read the stream is desynchronised: drop the connection.
    #[error("frame too large: {len} > {MAX_FRAME_LEN}")]
    TooLarge {
        /// The offending `LEN` (type byte + payload).
        len: usize,
    },
    /// `LEN == 0`: there is no type byte.
    #[error("invalid frame: length is 0")]
    ZeroLength,
    /// The stream ended inside a frame (partial header or short body).
    #[error("unexpected EOF inside a frame")]
    UnexpectedEof,
    /// Any other IO failure.
    #[error("frame IO failed")]
    Io(#[from] io::Error),
    /// A JSON payload could not be encoded.
    #[error("JSON payload could not be encoded")]
    Json(#[from] serde_json::Error),
}

/// Validates a header `LEN` and returns the payload length.
fn payload_len_for(len: usize) -> Result<usize, FrameError> {
    match len {
        0 => Err(FrameError::ZeroLength),
        len if len > MAX_FRAME_LEN => Err(FrameError::TooLarge { len }),
        len => Ok(len - 1),
    }
}

/// Encodes one frame into a fresh buffer (header, type, payload) or refuses an oversize payload.
pub fn encode_frame(kind: FrameType, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = payload.len() + 1;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let mut buf = Vec::with_capacity(PAYLOAD_OFFSET + payload.len());
    // Cannot truncate: len <= MAX_FRAME_LEN, which fits in u32.
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.push(kind.0);
    buf.extend_from_slice(payload);
    Ok(buf)
}

/// Writes one frame with a single `write_all` of a pre-assembled buffer, so writers that share a
/// stream behind a lock never interleave partial frames. An oversize frame writes nothing.
pub fn write_frame<W: Write + ?Sized>(
    w: &mut W,
    kind: FrameType,
    payload: &[u8],
) -> Result<(), FrameError> {
    let buf = encode_frame(kind, payload)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Encodes `value` as JSON and writes it as one frame.
pub fn send_json<W: Write + ?Sized, T: Serialize + ?Sized>(
    w: &mut W,
    kind: FrameType,
    value: &T,
) -> Result<(), FrameError> {
    let payload = serde_json::to_vec(value)?;
    write_frame(w, kind, &payload)
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if the stream ended before the first byte.
fn read_exact_or_eof<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<bool, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(FrameError::UnexpectedEof),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Reads one frame. `Ok(None)` is a clean EOF (no byte of a new frame arrived). The length is
/// validated before anything is allocated. Reads are exact: nothing past the frame is consumed,
/// which matters on the forward port where raw bytes follow the handshake.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_LEN + 1];
    if !read_exact_or_eof(r, &mut header[..HEADER_LEN])? {
        return Ok(None);
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let payload_len = payload_len_for(len)?;
    if !read_exact_or_eof(r, &mut header[HEADER_LEN..])? {
        return Err(FrameError::UnexpectedEof);
    }
    let mut payload = vec![0u8; payload_len];
    if payload_len > 0 && !read_exact_or_eof(r, &mut payload)? {
        return Err(FrameError::UnexpectedEof);
    }
    Ok(Some(Frame { kind: FrameType(header[HEADER_LEN]), payload }))
}

/// A complete frame found at the front of a buffer by [`try_parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFrame<'a> {
    /// The type byte.
    pub kind: FrameType,
    /// The payload, borrowed from the buffer.
    pub payload: &'a [u8],
    /// Bytes the frame occupies at the front of the buffer (`4 + LEN`).
    pub total_len: usize,
}

/// Looks for a complete frame at the front of `buf` without consuming or allocating.
///
/// `Ok(None)` means "need more bytes"; `Err` means the header is invalid and no amount of further
/// input can make it valid (v1 cannot tell these apart). Trailing bytes are left alone.
pub fn try_parse(buf: &[u8]) -> Result<Option<ParsedFrame<'_>>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    payload_len_for(len)?;
    let total_len = HEADER_LEN + len;
    if buf.len() < total_len {
        return Ok(None);
    }
    Ok(Some(ParsedFrame {
        kind: FrameType(buf[HEADER_LEN]),
        payload: &buf[PAYLOAD_OFFSET..total_len],
        total_len,
    }))
}
