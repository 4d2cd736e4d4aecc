//! Directory watches (the agent's WATCH_REQ extension, feature `"watch"`): a connection of its
//! own per watch, its WATCH_EVENT frames delivered as a stream. Dropping the stream closes the
//! connection, which ends the watch in the guest.

use proto::FrameType;
use proto::messages::{FEATURE_WATCH, Hello, WatchEvent, WatchRequest};
use tokio::sync::mpsc;

use crate::client::{AgentClient, expect_kind, json};
use crate::codec::{read_frame, send_json};
use crate::error::AgentError;

pub use proto::messages::WatchKind;

/// Events held for a caller that reads slower than the agent sends; past this the socket is
/// not read, the agent's own bounded queue fills and it reports an `overflow`.
const EVENTS_BUFFERED: usize = 256;

/// A running watch. Events arrive in order, never `started` (that one is consumed by
/// [`AgentClient::watch`]); `None` once the agent closed the watch, after an error.
#[derive(Debug)]
pub struct WatchStream {
    events: mpsc::Receiver<Result<WatchEvent, AgentError>>,
}

impl WatchStream {
    /// The next event. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, AgentError>> {
        self.events.recv().await
    }
}

impl AgentClient {
    /// Watches the guest directory `path` (and, with `recursive`, every directory below it,
    /// including ones created later). Returns once the watch is armed: later changes are
    /// reported. The watch lasts until the stream is dropped. An agent without the extension
    /// answers an [`Unsupported`](crate::AgentErrorKind::Unsupported) error; a missing path
    /// or a file is the agent's ERROR (`NotFound`, `NotADirectory`).
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<WatchStream, AgentError> {
        let timeout = self.config.connect_timeout + self.config.call_timeout;
        let req = WatchRequest { path: path.to_owned(), recursive };
        let handshake = async {
            // A connection of its own: the watch takes it over for good.
            let mut stream = self.authenticated_stream().await?;
            let hello = Hello { version: 1, features: vec![FEATURE_WATCH.to_owned()] };
            send_json(&mut stream, FrameType::HELLO, &hello).await?;
            let ack = expect_kind(read_frame(&mut stream).await?, FrameType::HELLO_ACK, "watch")?;
            let ack: Hello = json(&ack, "watch")?;
            if !ack.features.iter().any(|f| f == FEATURE_WATCH) {
                return Err(AgentError::guest(format!(
                    "unexpected frame type {} (the agent does not watch directories)",
                    FrameType::WATCH_REQ
                )));
            }
            send_json(&mut stream, FrameType::WATCH_REQ, &req).await?;
            let first =
                expect_kind(read_frame(&mut stream).await?, FrameType::WATCH_EVENT, "watch")?;
            let first: WatchEvent = json(&first, "watch")?;
            if first.kind != WatchKind::Started {
                return Err(AgentError::Protocol(format!(
                    "watch: expected a started event, got {:?}",
                    first.kind
                )));
            }
            Ok(stream)
        };
        let mut stream = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| AgentError::Timeout { op: "watch", after: timeout })??;
        let (tx, events) = mpsc::channel(EVENTS_BUFFERED);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    // The caller dropped the stream: close the connection, ending the watch.
                    _ = tx.closed() => return,
                    next = read_frame(&mut stream) => next,
                };
                let event = match next {
                    Ok(Some(f)) if f.kind == FrameType::WATCH_EVENT => {
                        json::<WatchEvent>(&f, "watch")
                    }
                    Ok(Some(f)) if f.kind == FrameType::ERROR => Err(AgentError::guest(f.text())),
                    // Unknown frames are skipped, as everywhere in the protocol.
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(e) => Err(e.into()),
                };
                let last = event.is_err();
                if tx.send(event).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(WatchStream { events })
    }
}
