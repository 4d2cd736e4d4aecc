//! Async frame IO over tokio streams, with the same rules as `proto`'s blocking functions:
//! the length is validated before anything is allocated, reads are exact, and a frame is written
//! from one pre-assembled buffer.

use proto::limits::{HEADER_LEN, MAX_FRAME_LEN};
use proto::{Frame, FrameError, FrameType, encode_frame};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one frame; `Ok(None)` on a clean EOF before the first header byte.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<Option<Frame>, FrameError> {
    // Header and type byte in one go: a valid LEN is at least 1, so the type byte always
    // follows, and the length is validated as soon as its 4 bytes are in.
    let mut head = [0u8; HEADER_LEN + 1];
    let mut filled = 0;
    let mut len = 0;
    while filled < head.len() {
        match r.read(&mut head[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 if filled >= HEADER_LEN => {
                validate(len)?;
                return Err(FrameError::UnexpectedEof);
            }
            0 => return Err(FrameError::UnexpectedEof),
            n => filled += n,
        }
        if filled >= HEADER_LEN {
            len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            validate(len)?;
        }
    }
    let mut payload = vec![0u8; len - 1];
    r.read_exact(&mut payload).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::UnexpectedEof,
        _ => FrameError::Io(e),
    })?;
    Ok(Some(Frame { kind: FrameType(head[HEADER_LEN]), payload }))
}

fn validate(len: usize) -> Result<(), FrameError> {
    match len {
        0 => Err(FrameError::ZeroLength),
        len if len > MAX_FRAME_LEN => Err(FrameError::TooLarge { len }),
        _ => Ok(()),
    }
}

/// Writes one frame with a single `write_all`.
pub async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    kind: FrameType,
    payload: &[u8],
) -> Result<(), FrameError> {
    let buf = encode_frame(kind, payload)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Encodes `value` as JSON and writes it as one frame.
pub async fn send_json<W: AsyncWrite + Unpin + ?Sized, T: Serialize + ?Sized>(
    w: &mut W,
    kind: FrameType,
    value: &T,
) -> Result<(), FrameError> {
    let payload = serde_json::to_vec(value)?;
    write_frame(w, kind, &payload).await
}
