//! File transfers: reads streamed out of the guest with the size known first, writes streamed
//! in from any reader. Nothing is held in memory beyond one frame, except by the buffered
//! `file_read`, which is capped.

use std::time::Duration;

use proto::FrameType;
use proto::limits::{FILE_CHUNK_BYTES, MAX_FILE_WRITE_BYTES};
use proto::messages::{FileReadRequest, FileReadResponse, FileWriteRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::time::Instant;

use crate::client::{AgentClient, Conn, expect_kind, json};
use crate::codec::{read_frame, send_json, write_frame};
use crate::error::AgentError;
use crate::stream::Stream;

/// Most bytes [`AgentClient::file_read`] holds in memory: the agent's own cap on a write, so
/// whatever the host can put into a guest in one write it can take back out in one read.
pub const MAX_BUFFERED_READ_BYTES: u64 = MAX_FILE_WRITE_BYTES as u64;

/// How long a write whose content could not be sent waits for the agent's reason.
const REASON_WAIT: Duration = Duration::from_secs(2);

/// Line selection for file reads (all zero means the whole file, byte-exact). Sent to the
/// agent, which does the selecting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// First line, 1-based.
    pub offset: u64,
    /// Maximum lines.
    pub limit: u64,
    /// Maximum bytes the agent sends (line mode; the output may end mid-line).
    pub max_bytes: u64,
}

impl ReadOptions {
    /// Raw mode: the whole file, byte-exact, so the announced size is what will arrive.
    fn is_raw(&self) -> bool {
        *self == ReadOptions::default()
    }
}

/// A file read into memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileContent {
    /// The bytes received (all of the file, or the selected window).
    pub data: Vec<u8>,
    /// The file's total size, whatever part was sent.
    pub total_size: u64,
    /// Permission bits, 4-digit octal.
    pub mode: String,
}

impl FileContent {
    /// True when fewer bytes were received than the file holds.
    pub fn is_truncated(&self) -> bool {
        (self.data.len() as u64) < self.total_size
    }
}

/// An open file read: the size and mode are known, the body is still to come. Read the body
/// with [`FileReader::next_chunk`] or [`FileReader::copy_to`]; dropping the reader closes the
/// connection, which stops the agent's read.
#[derive(Debug)]
pub struct FileReader<'c> {
    client: &'c AgentClient,
    /// `None` once the body ended or failed.
    conn: Option<Conn>,
    size: u64,
    mode: String,
    max_bytes: u64,
    received: u64,
    deadline: Instant,
    after: Duration,
}

impl FileReader<'_> {
    /// The file's total size as the agent announced it before the body (in raw mode what will
    /// arrive; files in /proc announce 0).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Permission bits, 4-digit octal.
    pub fn mode(&self) -> &str {
        &self.mode
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next piece of the body (one frame, at most 1 MiB, normally 32 KiB); `None` at its
    /// end. Bytes beyond the reader's `max_bytes` are a [`AgentError::TooLarge`].
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        let result = self.next_frame().await;
        if result.is_err() {
            // The stream is mid-body or desynchronised: never read or pool it again.
            self.conn = None;
        }
        result
    }

    async fn next_frame(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        loop {
            let frame = tokio::time::timeout_at(self.deadline, read_frame(&mut conn.stream))
                .await
                .map_err(|_| AgentError::Timeout { op: "file read", after: self.after })??
                .ok_or(AgentError::Closed("file read"))?;
            match frame.kind {
                FrameType::STDOUT => {
                    self.received += frame.payload.len() as u64;
                    if self.received > self.max_bytes {
                        return Err(AgentError::TooLarge {
                            what: "file read",
                            size: self.received.max(self.size),
                            max: self.max_bytes,
                        });
                    }
                    return Ok(Some(frame.payload));
                }
                FrameType::EXIT => {
                    if let Some(conn) = self.conn.take() {
                        self.client.release(conn);
                    }
                    return Ok(None);
                }
                FrameType::ERROR => return Err(AgentError::guest(frame.text())),
                // Unknown frames are skipped (v1's forward-compatibility rule).
                _ => {}
            }
        }
    }

    /// Streams the rest of the body into `out`; returns the bytes written.
    pub async fn copy_to<W: AsyncWrite + Unpin + Send + ?Sized>(
        mut self,
        out: &mut W,
    ) -> Result<u64, AgentError> {
        let local = |source| AgentError::Local { op: "file read", source };
        while let Some(chunk) = self.next_chunk().await? {
            out.write_all(&chunk).await.map_err(local)?;
        }
        out.flush().await.map_err(local)?;
        Ok(self.received)
    }
}

/// Why sending a write's content stopped.
enum SendError {
    /// The caller's source failed or ended early.
    Source(AgentError),
    /// The socket failed (the agent may have refused and closed).
    Socket(AgentError),
}

/// Sends exactly `size` bytes of `src` as STDIN frames of 32 KiB, one buffer for all of them.
async fn send_content<R: AsyncRead + Unpin + Send + ?Sized>(
    wr: &mut WriteHalf<Stream>,
    src: &mut R,
    size: u64,
) -> Result<(), SendError> {
    let mut buf = vec![0u8; FILE_CHUNK_BYTES];
    let mut sent = 0u64;
    while sent < size {
        let want = buf.len().min((size - sent) as usize);
        let n = src
            .read(&mut buf[..want])
            .await
            .map_err(|source| SendError::Source(AgentError::Local { op: "file write", source }))?;
        if n == 0 {
            return Err(SendError::Source(AgentError::SourceEnded { sent, size }));
        }
        write_frame(wr, FrameType::STDIN, &buf[..n])
            .await
            .map_err(|e| SendError::Socket(e.into()))?;
        sent += n as u64;
    }
    Ok(())
}

impl AgentClient {
    /// Opens a file read: the agent's answer carries the size and mode before any content.
    /// In raw mode (default `opts`) a file announced larger than `max_bytes` is refused with
    /// [`AgentError::TooLarge`] before its body is read; in any mode more than `max_bytes`
    /// received is refused the same way (a file may grow, /proc files announce 0, and a window
    /// is not sized in advance). `max_bytes` is the caller's cap, unlike `opts.max_bytes`,
    /// which asks the agent for a shorter window. The whole read is bounded by the transfer
    /// deadline.
    pub async fn file_open_read(
        &self,
        path: &str,
        opts: ReadOptions,
        max_bytes: u64,
    ) -> Result<FileReader<'_>, AgentError> {
        let after = self.config.transfer_timeout;
        let deadline = Instant::now() + after;
        let positive = |v: u64| (v > 0).then_some(v as i64);
        let req = FileReadRequest {
            path: path.to_owned(),
            offset: positive(opts.offset),
            limit: positive(opts.limit),
            max_bytes: positive(opts.max_bytes),
        };
        let open = async {
            let (mut conn, _) = self.connect().await?;
            send_json(&mut conn.stream, FrameType::FILE_READ_REQ, &req).await?;
            let head = read_frame(&mut conn.stream).await?;
            let head = expect_kind(head, FrameType::FILE_READ_RESP, "file read")?;
            let head: FileReadResponse = json(&head, "file read")?;
            Ok::<_, AgentError>((conn, head))
        };
        let (conn, head) = tokio::time::timeout_at(deadline, open)
            .await
            .map_err(|_| AgentError::Timeout { op: "file read", after })??;
        let size = head.size.max(0) as u64;
        if opts.is_raw() && size > max_bytes {
            // Dropping the connection stops the agent after at most a socket buffer's worth.
            return Err(AgentError::TooLarge { what: "file read", size, max: max_bytes });
        }
        Ok(FileReader {
            client: self,
            conn: Some(conn),
            size,
            mode: head.mode,
            max_bytes,
            received: 0,
            deadline,
            after,
        })
    }

    /// Reads a file (or a window of its lines) into memory, at most
    /// [`MAX_BUFFERED_READ_BYTES`]; larger files are a [`AgentError::TooLarge`] (stream them
    /// with [`AgentClient::file_open_read`]).
    pub async fn file_read(
        &self,
        path: &str,
        opts: ReadOptions,
    ) -> Result<FileContent, AgentError> {
        let mut reader = self.file_open_read(path, opts, MAX_BUFFERED_READ_BYTES).await?;
        let mut data = Vec::with_capacity(reader.size().min(MAX_BUFFERED_READ_BYTES) as usize);
        while let Some(chunk) = reader.next_chunk().await? {
            data.extend_from_slice(&chunk);
        }
        Ok(FileContent { data, total_size: reader.size(), mode: reader.mode().to_owned() })
    }

    /// Streams a file (or a window of its lines) into `out`, with no cap; returns the file's
    /// total size and mode. Dropping the future closes the connection, which stops the agent.
    pub async fn file_read_to<W: AsyncWrite + Unpin + Send>(
        &self,
        path: &str,
        opts: ReadOptions,
        out: &mut W,
    ) -> Result<(u64, String), AgentError> {
        let reader = self.file_open_read(path, opts, u64::MAX).await?;
        let (size, mode) = (reader.size(), reader.mode().to_owned());
        reader.copy_to(out).await?;
        Ok((size, mode))
    }

    /// Writes `data` to `path` atomically with an octal `mode` such as `"0644"`.
    pub async fn file_write(&self, path: &str, mode: &str, data: &[u8]) -> Result<(), AgentError> {
        self.file_write_from(path, mode, data.len() as u64, &mut &data[..]).await
    }

    /// Writes exactly `size` bytes from `src` to `path` atomically, streamed in 32 KiB frames.
    /// Over the agent's 100 MiB cap it is refused before anything is sent. The agent's answer
    /// is watched while the content goes out, so a refused target (its parent is a file, say)
    /// fails at once rather than after the whole source. A source that ends early is a
    /// [`AgentError::SourceEnded`]: the connection is dropped and the agent discards the
    /// partial content, keeping the old file.
    pub async fn file_write_from<R: AsyncRead + Unpin + Send + ?Sized>(
        &self,
        path: &str,
        mode: &str,
        size: u64,
        src: &mut R,
    ) -> Result<(), AgentError> {
        let max = MAX_FILE_WRITE_BYTES as u64;
        if size > max {
            return Err(AgentError::TooLarge { what: "file write", size, max });
        }
        let req =
            FileWriteRequest { path: path.to_owned(), mode: mode.to_owned(), size: size as i64 };
        let transfer = async {
            let (mut conn, _) = self.connect().await?;
            send_json(&mut conn.stream, FrameType::FILE_WRITE_REQ, &req).await?;
            let (mut rd, mut wr) = tokio::io::split(conn.stream);
            let answer = {
                let answer = read_frame(&mut rd);
                tokio::pin!(answer);
                let content = send_content(&mut wr, src, size);
                tokio::pin!(content);
                tokio::select! {
                    biased;
                    // Before all content went out, any answer is a refusal.
                    early = &mut answer => early?,
                    sent = &mut content => match sent {
                        Ok(()) => answer.await?,
                        Err(SendError::Source(e)) => return Err(e),
                        Err(SendError::Socket(e)) => {
                            match tokio::time::timeout(REASON_WAIT, &mut answer).await {
                                Ok(Ok(Some(f))) if f.kind == FrameType::ERROR => Some(f),
                                _ => return Err(e),
                            }
                        }
                    },
                }
            };
            expect_kind(answer, FrameType::FILE_WRITE_RESP, "file write")?;
            self.release(Conn { stream: rd.unsplit(wr), reusable: conn.reusable });
            Ok(())
        };
        let after = self.config.transfer_timeout;
        tokio::time::timeout(after, transfer)
            .await
            .map_err(|_| AgentError::Timeout { op: "file write", after })?
    }
}
