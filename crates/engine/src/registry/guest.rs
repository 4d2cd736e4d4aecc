//! Guest operations: each takes a lease (waking the sandbox if needed) and talks to the agent.
//! Every call runs under its lease's cut (`Lease::run`): a sandbox that crashes, is destroyed
//! or is stopped by a user ends the call at once with `EngineError::Gone`, where a dead guest's
//! connection would otherwise wait for its deadline. Streams and sessions carry their lease
//! (`Leased`), which ends them the same way.

use std::time::Duration;

use agent::{
    DetachedExec, ExecOutput, ExecRequest, ExecStream, FileContent, FileInfo, ReadOptions, Session,
    SessionInfo, Stream, WatchStream,
};

use super::Engine;
use crate::error::EngineError;
use crate::lease::{Lease, Leased};

/// The most of one `/proc/net/tcp*` table read: 4 MiB is ~27,000 sockets (150 bytes a line);
/// a guest cannot make the host buffer more.
const MAX_PORT_TABLE_BYTES: u64 = 4 * 1024 * 1024;

impl Engine {
    /// Runs `argv` and buffers its output (within the engine's exec deadline).
    pub async fn exec(&self, id: &str, argv: &[&str]) -> Result<ExecOutput, EngineError> {
        let req = ExecRequest::command(argv.iter().copied());
        self.exec_request(id, &req, self.config.exec_timeout).await
    }

    /// Runs a full exec request, buffered.
    pub async fn exec_request(
        &self,
        id: &str,
        req: &ExecRequest,
        timeout: Duration,
    ) -> Result<ExecOutput, EngineError> {
        let lease = self.lease(id).await?;
        lease.run(lease.client().exec_request(req, timeout)).await
    }

    /// [`exec_request`](Self::exec_request) within a caller's memory budget for the output
    /// (see `agent::OutputRoom`).
    pub async fn exec_request_within(
        &self,
        id: &str,
        req: &ExecRequest,
        timeout: Duration,
        room: std::sync::Arc<dyn agent::OutputRoom>,
    ) -> Result<ExecOutput, EngineError> {
        let lease = self.lease(id).await?;
        lease.run(lease.client().exec_request_within(req, timeout, room)).await
    }

    /// Runs an exec whose output streams; the sandbox stays hot while the stream lives.
    pub async fn exec_stream(
        &self,
        id: &str,
        req: &ExecRequest,
        timeout: Duration,
    ) -> Result<Leased<ExecStream>, EngineError> {
        let lease = self.lease(id).await?;
        let stream = lease.run(lease.client().exec_stream(req, timeout)).await?;
        Ok(Leased::new(stream, lease))
    }

    /// Starts a command that outlives the request.
    pub async fn exec_detached(
        &self,
        id: &str,
        req: &ExecRequest,
    ) -> Result<DetachedExec, EngineError> {
        let lease = self.lease(id).await?;
        lease.run(lease.client().exec_detached(req)).await
    }

    /// A PTY session (a shell unless `req` says otherwise); hot while attached.
    pub async fn shell(&self, id: &str, req: &ExecRequest) -> Result<Leased<Session>, EngineError> {
        let lease = self.lease(id).await?;
        let session = lease.run(lease.client().shell(req)).await?;
        Ok(Leased::new(session, lease))
    }

    /// A piped (non-TTY) session; hot while attached.
    pub async fn piped_session(
        &self,
        id: &str,
        req: &ExecRequest,
    ) -> Result<Leased<Session>, EngineError> {
        let lease = self.lease(id).await?;
        let session = lease.run(lease.client().piped_session(req)).await?;
        Ok(Leased::new(session, lease))
    }

    /// Attaches to an existing session.
    pub async fn attach(
        &self,
        id: &str,
        session_id: &str,
        if_detached: bool,
    ) -> Result<Leased<Session>, EngineError> {
        let lease = self.lease(id).await?;
        let session = lease.run(lease.client().attach(session_id, if_detached)).await?;
        Ok(Leased::new(session, lease))
    }

    /// Attaches to an existing session, with its stderr apart (`SessionEvent::Stderr`) when
    /// the session keeps it so.
    pub async fn attach_with_stderr(
        &self,
        id: &str,
        session_id: &str,
    ) -> Result<Leased<Session>, EngineError> {
        let lease = self.lease(id).await?;
        let session = lease.run(lease.client().attach_with_stderr(session_id, false)).await?;
        Ok(Leased::new(session, lease))
    }

    /// Sends a signal (a number; `None`: SIGKILL) to a session's process group.
    pub async fn signal_session(
        &self,
        id: &str,
        session_id: &str,
        signal: Option<i32>,
    ) -> Result<(), EngineError> {
        let lease = self.lease(id).await?;
        lease.run(lease.client().session_signal(session_id, signal)).await
    }

    /// The guest's sessions.
    pub async fn sessions(&self, id: &str) -> Result<Vec<SessionInfo>, EngineError> {
        let lease = self.lease(id).await?;
        lease.run(lease.client().session_list()).await
    }

    /// Kills a session.
    pub async fn kill_session(&self, id: &str, session_id: &str) -> Result<(), EngineError> {
        let lease = self.lease(id).await?;
        lease.run(lease.client().session_kill(session_id)).await
    }

    /// Reads a file (or a window of its lines).
    pub async fn file_read(
        &self,
        id: &str,
        path: &str,
        opts: ReadOptions,
    ) -> Result<FileContent, EngineError> {
        let lease = self.lease(id).await?;
        lease.run(lease.client().file_read(path, opts)).await
    }

    /// Writes a file atomically.
    pub async fn file_write(
        &self,
        id: &str,
        path: &str,
        mode: &str,
        data: &[u8],
    ) -> Result<(), EngineError> {
        let lease = self.lease(id).await?;
        lease.run(lease.client().file_write(path, mode, data)).await
    }

    /// Reads a file into `out`, streaming: `sized(size, mode)` is called once the guest has
    /// said how big the file is (before the first byte reaches `out`, so an HTTP answer can
    /// send its headers); a file over `max_bytes` fails with a too-large guest error before any
    /// byte is sent. Returns the bytes written to `out`.
    pub async fn file_read_into<W>(
        &self,
        id: &str,
        path: &str,
        opts: ReadOptions,
        max_bytes: u64,
        sized: impl FnOnce(u64, &str),
        out: &mut W,
    ) -> Result<u64, EngineError>
    where
        W: tokio::io::AsyncWrite + Unpin + Send + ?Sized,
    {
        let lease = self.lease(id).await?;
        let reader = lease.run(lease.client().file_open_read(path, opts, max_bytes)).await?;
        sized(reader.size(), reader.mode());
        lease.run(reader.copy_to(out)).await
    }

    /// Writes a file atomically from `src`, which must yield exactly `size` bytes (at most the
    /// agent's 100 MiB); streamed in chunks, never held whole. A target the guest cannot create
    /// fails before the content is read.
    pub async fn file_write_from<R>(
        &self,
        id: &str,
        path: &str,
        mode: &str,
        size: u64,
        src: &mut R,
    ) -> Result<(), EngineError>
    where
        R: tokio::io::AsyncRead + Unpin + Send + ?Sized,
    {
        let lease = self.lease(id).await?;
        lease.run(lease.client().file_write_from(path, mode, size, src)).await
    }

    /// Stats a path.
    pub async fn file_stat(&self, id: &str, path: &str) -> Result<FileInfo, EngineError> {
        let lease = self.lease(id).await?;
        lease.run(lease.client().file_stat(path)).await
    }

    /// Lists a directory.
    pub async fn file_list(&self, id: &str, path: &str) -> Result<Vec<FileInfo>, EngineError> {
        let lease = self.lease(id).await?;
        lease.run(lease.client().file_list(path)).await
    }

    /// Watches a guest directory (lohar's watch extension); returns once the watch is armed.
    /// The sandbox stays hot while the stream lives; a cut lease (the sandbox stopped,
    /// destroyed or crashed) ends it, which the holder sees by selecting on the lease (see
    /// [`Leased::into_parts`]).
    pub async fn watch(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<Leased<WatchStream>, EngineError> {
        let lease = self.lease(id).await?;
        let stream = lease.run(lease.client().watch(path, recursive)).await?;
        Ok(Leased::new(stream, lease))
    }

    /// TCP ports the guest listens on (IPv4 and IPv6), sorted; wakes the sandbox.
    pub async fn listening_ports(&self, id: &str) -> Result<Vec<u16>, EngineError> {
        let lease = self.lease(id).await?;
        ports_of(&lease).await
    }

    /// The listening ports of a hot sandbox; `None` when it is not hot (it is never woken).
    pub async fn listening_ports_if_hot(&self, id: &str) -> Result<Option<Vec<u16>>, EngineError> {
        match self.try_lease(id)? {
            Some(lease) => ports_of(&lease).await.map(Some),
            None => Ok(None),
        }
    }
}

/// The listening ports the guest's kernel tables show, each table read with a size cap.
async fn ports_of(lease: &Lease) -> Result<Vec<u16>, EngineError> {
    {
        let mut ports = std::collections::BTreeSet::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let opts = ReadOptions { max_bytes: MAX_PORT_TABLE_BYTES, ..ReadOptions::default() };
            match lease.run(lease.client().file_read(table, opts)).await {
                Ok(content) => {
                    ports.extend(crate::ports::listening(&String::from_utf8_lossy(&content.data)))
                }
                // A guest kernel without IPv6 has no tcp6 table.
                Err(EngineError::Agent(e)) if e.is_agent_error() && table.ends_with('6') => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ports.into_iter().collect())
    }
}

impl Engine {
    /// A byte stream to `localhost:port` in the guest (`AsyncRead + AsyncWrite`: hyper can use
    /// it as a connection); the sandbox stays hot while it is open.
    pub async fn forward(&self, id: &str, port: u16) -> Result<Leased<Stream>, EngineError> {
        if port == 0 {
            return Err(EngineError::invalid("port 0 is not a valid port"));
        }
        let lease = self.lease(id).await?;
        let stream = lease.run(lease.client().forward(port)).await?;
        Ok(Leased::new(stream, lease))
    }
}
