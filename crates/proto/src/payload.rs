//! The two binary payloads: RESIZE (rows, cols) and EXIT (exit code).
//!
//! Both are exactly 4 big-endian bytes. v1 ignored trailing bytes; we reject any other length so
//! a desynchronised or hostile peer is noticed instead of silently misread.

/// Terminal size carried by a RESIZE frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    /// Rows (lines).
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A binary payload had the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} payload must be 4 bytes, got {got}")]
pub struct PayloadLengthError {
    /// Which payload ("resize" or "exit").
    pub what: &'static str,
    /// The length received.
    pub got: usize,
}

fn four_bytes(what: &'static str, payload: &[u8]) -> Result<[u8; 4], PayloadLengthError> {
    payload.try_into().map_err(|_| PayloadLengthError { what, got: payload.len() })
}

/// Encodes a RESIZE payload: u16 rows, u16 cols, big-endian.
pub fn encode_resize(size: WindowSize) -> [u8; 4] {
    let [r0, r1] = size.rows.to_be_bytes();
    let [c0, c1] = size.cols.to_be_bytes();
    [r0, r1, c0, c1]
}

/// Decodes a RESIZE payload; any length other than 4 is an error.
pub fn decode_resize(payload: &[u8]) -> Result<WindowSize, PayloadLengthError> {
    let [r0, r1, c0, c1] = four_bytes("resize", payload)?;
    Ok(WindowSize { rows: u16::from_be_bytes([r0, r1]), cols: u16::from_be_bytes([c0, c1]) })
}

/// Encodes an EXIT payload: the i32 exit code, two's complement big-endian.
pub fn encode_exit(code: i32) -> [u8; 4] {
    code.to_be_bytes()
}

/// Decodes an EXIT payload; any length other than 4 is an error.
pub fn decode_exit(payload: &[u8]) -> Result<i32, PayloadLengthError> {
    Ok(i32::from_be_bytes(four_bytes("exit", payload)?))
}
