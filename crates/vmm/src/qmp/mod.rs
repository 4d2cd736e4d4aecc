//! Async QMP client: capabilities negotiation, commands with deadlines, events to subscribers.
//!
//! One reader task owns the socket's read half: replies are routed to their callers by id,
//! events are typed once ([`Event`]) and broadcast. When QEMU goes away every pending and later call fails with
//! [`VmmError::QemuGone`].

pub mod wire;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, mpsc, oneshot};

use wire::Message;
pub use wire::{Event, IoErrorAction};

use crate::error::VmmError;

type Reply = Result<Value, VmmError>;

/// Longest line accepted from QEMU (query-qmp-schema is a few hundred KiB).
const MAX_LINE: u64 = 16 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set once the reader saw EOF; later calls fail at once.
    closed: bool,
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    /// Lines for the writer task, which owns the socket's write half.
    writer: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<Pending>>,
    events: broadcast::Sender<Event>,
    /// Turns true when the reader saw QEMU close the socket (QEMU exited or crashed).
    closed: tokio::sync::watch::Receiver<bool>,
    next_id: AtomicU64,
    /// QEMU's version from the greeting.
    pub version: (u64, u64, u64),
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("waiting", &self.waiters.len())
            .field("closed", &self.closed)
            .finish()
    }
}

fn lock(p: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The VM's run state as `query-status` reports it (`running`, `paused`, `prelaunch`,
/// `inmigrate`, `postmigrate`, `shutdown`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Status {
    /// Run state name.
    pub status: String,
    /// vCPUs are running.
    pub running: bool,
}

impl Qmp {
    /// Connects to a QMP socket, reads the greeting and negotiates capabilities, all within
    /// `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, VmmError> {
        let setup = async {
            let stream = UnixStream::connect(path)
                .await
                .map_err(|source| VmmError::Connect { path: path.to_owned(), source })?;
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read);
            let version = match read_message(&mut lines).await? {
                Some(Message::Greeting { version }) => version,
                Some(other) => {
                    return Err(VmmError::Protocol(format!(
                        "expected the greeting, got {other:?}"
                    )));
                }
                None => return Err(VmmError::QemuGone),
            };
            write.write_all(b"{\"execute\":\"qmp_capabilities\",\"id\":0}\n").await?;
            loop {
                match read_message(&mut lines).await? {
                    Some(Message::Return { id: Some(0), .. }) => break,
                    Some(Message::Error { class, desc, .. }) => {
                        return Err(VmmError::Qmp {
                            command: "qmp_capabilities".into(),
                            class,
                            desc,
                        });
                    }
                    Some(_) => {}
                    None => return Err(VmmError::QemuGone),
                }
            }
            Ok((lines, write, version))
        };
        let (lines, write, version) = tokio::time::timeout(timeout, setup)
            .await
            .map_err(|_| VmmError::Timeout { op: "QMP connect".into(), after: timeout })??;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (events, _) = broadcast::channel(256);
        let (pending_reader, events_reader) = (Arc::clone(&pending), events.clone());
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            read_loop(lines, pending_reader, events_reader).await;
            let _ = closed_tx.send(true);
        });
        let (writer, lines_out) = mpsc::channel(64);
        tokio::spawn(write_loop(write, lines_out));
        Ok(Self { writer, pending, events, closed, next_id: AtomicU64::new(1), version })
    }

    /// Completes once QEMU has closed the QMP connection (it exited, was killed or crashed).
    pub async fn gone(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }

    /// Receives every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs a command and returns its raw `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, VmmError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.closed {
                return Err(VmmError::QemuGone);
            }
            pending.waiters.insert(id, tx);
        }
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line =
            serde_json::to_vec(&request).map_err(|e| VmmError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let exchange = async {
            self.writer.send(line).await.map_err(|_| VmmError::QemuGone)?;
            rx.await.map_err(|_| VmmError::QemuGone)?
        };
        let result = tokio::time::timeout(timeout, exchange).await;
        lock(&self.pending).waiters.remove(&id);
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(VmmError::Qmp { class, desc, .. })) => {
                Err(VmmError::Qmp { command: command.into(), class, desc })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(VmmError::Timeout { op: format!("QMP {command}"), after: timeout }),
        }
    }

    /// Runs a command and decodes its `return` value.
    pub async fn call<T: DeserializeOwned>(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<T, VmmError> {
        let value = self.execute(command, arguments, timeout).await?;
        serde_json::from_value(value)
            .map_err(|e| VmmError::Protocol(format!("{command}: unexpected reply: {e}")))
    }

    /// `query-status`.
    pub async fn query_status(&self, timeout: Duration) -> Result<Status, VmmError> {
        self.call("query-status", None, timeout).await
    }

    /// `stop`: pauses the vCPUs.
    pub async fn stop(&self, timeout: Duration) -> Result<(), VmmError> {
        self.execute("stop", None, timeout).await.map(drop)
    }

    /// `cont`: resumes the vCPUs.
    pub async fn cont(&self, timeout: Duration) -> Result<(), VmmError> {
        self.execute("cont", None, timeout).await.map(drop)
    }

    /// `quit`: QEMU exits at once. The reply may or may not arrive before the socket closes.
    pub async fn quit(&self, timeout: Duration) -> Result<(), VmmError> {
        match self.execute("quit", None, timeout).await {
            Ok(_) | Err(VmmError::QemuGone) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// True once QEMU closed the connection.
    pub fn is_closed(&self) -> bool {
        lock(&self.pending).closed
    }
}

async fn write_loop(mut write: OwnedWriteHalf, mut lines: mpsc::Receiver<Vec<u8>>) {
    while let Some(line) = lines.recv().await {
        if write.write_all(&line).await.is_err() {
            break;
        }
    }
}

async fn read_message<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<Option<Message>, VmmError> {
    loop {
        let mut line = Vec::new();
        let n = (&mut *r).take(MAX_LINE).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with(b"\n") && n as u64 == MAX_LINE {
            return Err(VmmError::Protocol(format!("QMP line longer than {MAX_LINE} bytes")));
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        return wire::parse(text.trim()).map(Some).map_err(VmmError::Protocol);
    }
}

async fn read_loop<R: AsyncBufReadExt + Unpin>(
    mut lines: R,
    pending: Arc<Mutex<Pending>>,
    events: broadcast::Sender<Event>,
) {
    loop {
        let message = match read_message(&mut lines).await {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => break,
        };
        match message {
            Message::Return { id: Some(id), value } => {
                if let Some(tx) = lock(&pending).waiters.remove(&id) {
                    let _ = tx.send(Ok(value));
                }
            }
            Message::Error { id: Some(id), class, desc } => {
                if let Some(tx) = lock(&pending).waiters.remove(&id) {
                    let _ = tx.send(Err(VmmError::Qmp { command: String::new(), class, desc }));
                }
            }
            Message::Event(event) => {
                // No subscriber is fine.
                let _ = events.send(event);
            }
            _ => {}
        }
    }
    let mut pending = lock(&pending);
    pending.closed = true;
    for (_, tx) in pending.waiters.drain() {
        let _ = tx.send(Err(VmmError::QemuGone));
    }
}
