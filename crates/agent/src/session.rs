//! Interactive sessions: a TTY or piped process the caller streams to and from.

use proto::FrameType;
use proto::messages::SessionInfo;
use proto::payload::{WindowSize, decode_exit, encode_resize};
use tokio::io::{ReadHalf, WriteHalf};

use crate::codec::{read_frame, write_frame};
use crate::error::AgentError;
use crate::stream::Stream;

/// Something the session produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Terminal or pipe output (the first one after an attach is the scrollback replay).
    Output(Vec<u8>),
    /// The process's stderr, only for a session that keeps it apart and a client that asked
    /// for it (`stderr` in the request, extension `procs`); a replay may interleave these with
    /// [`SessionEvent::Output`] in the order the process wrote them.
    Stderr(Vec<u8>),
    /// The process exited (or this client was replaced by another attach: code 0).
    Exit(i32),
}

/// An attached session. Dropping it detaches; the process keeps running.
#[derive(Debug)]
pub struct Session {
    info: SessionInfo,
    reader: SessionReader,
    writer: SessionWriter,
}

/// The output half of a session.
#[derive(Debug)]
pub struct SessionReader {
    rd: ReadHalf<Stream>,
}

/// The input half of a session.
#[derive(Debug)]
pub struct SessionWriter {
    wr: WriteHalf<Stream>,
}

impl Session {
    pub(crate) fn new(info: SessionInfo, stream: Stream) -> Self {
        let (rd, wr) = tokio::io::split(stream);
        Self { info, reader: SessionReader { rd }, writer: SessionWriter { wr } }
    }

    /// The SESSION_INFO the agent sent on create or attach.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The session id (`s1`, ..., or `init`).
    pub fn id(&self) -> &str {
        &self.info.session_id
    }

    /// Next output or exit; `Ok(None)` when the agent closed the connection.
    pub async fn next(&mut self) -> Result<Option<SessionEvent>, AgentError> {
        self.reader.next().await
    }

    /// Sends input.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), AgentError> {
        self.writer.write(data).await
    }

    /// Closes the process's stdin (piped sessions).
    pub async fn close_stdin(&mut self) -> Result<(), AgentError> {
        self.writer.close_stdin().await
    }

    /// Changes the terminal size (TTY sessions).
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), AgentError> {
        self.writer.resize(rows, cols).await
    }

    /// Sends SIGTERM to the session's process group; the agent then ends this connection.
    pub async fn kill(&mut self) -> Result<(), AgentError> {
        self.writer.kill().await
    }

    /// Splits into independently usable halves (e.g. a reader task and a writer task).
    pub fn split(self) -> (SessionInfo, SessionReader, SessionWriter) {
        (self.info, self.reader, self.writer)
    }
}

impl SessionReader {
    /// Next output or exit; `Ok(None)` when the agent closed the connection.
    pub async fn next(&mut self) -> Result<Option<SessionEvent>, AgentError> {
        loop {
            let Some(frame) = read_frame(&mut self.rd).await? else {
                return Ok(None);
            };
            match frame.kind {
                FrameType::STDOUT => return Ok(Some(SessionEvent::Output(frame.payload))),
                FrameType::STDERR => return Ok(Some(SessionEvent::Stderr(frame.payload))),
                FrameType::EXIT => {
                    let code = decode_exit(&frame.payload)
                        .map_err(|e| AgentError::Protocol(e.to_string()))?;
                    return Ok(Some(SessionEvent::Exit(code)));
                }
                FrameType::ERROR => return Err(AgentError::guest(frame.text())),
                // Forward compatibility: unknown frames are skipped.
                _ => {}
            }
        }
    }
}

impl SessionWriter {
    /// Sends input (empty input is ignored; use [`SessionWriter::close_stdin`] for EOF).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(proto::limits::FILE_CHUNK_BYTES) {
            write_frame(&mut self.wr, FrameType::STDIN, chunk).await?;
        }
        Ok(())
    }

    /// Closes the process's stdin (an empty STDIN frame; piped sessions).
    pub async fn close_stdin(&mut self) -> Result<(), AgentError> {
        Ok(write_frame(&mut self.wr, FrameType::STDIN, b"").await?)
    }

    /// Changes the terminal size.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), AgentError> {
        let payload = encode_resize(WindowSize { rows, cols });
        Ok(write_frame(&mut self.wr, FrameType::RESIZE, &payload).await?)
    }

    /// Sends KILL (SIGTERM to the session's process group).
    pub async fn kill(&mut self) -> Result<(), AgentError> {
        Ok(write_frame(&mut self.wr, FrameType::KILL, b"").await?)
    }
}
