//! What the engine tells its subscribers: every thermal change, as it happens.
//!
//! Events go out on a broadcast channel: a subscriber that falls more than [`CAPACITY`] events
//! behind misses the oldest and is told how many (tokio's `Lagged`); the engine never waits for
//! a subscriber. The daemon applies them to its store, so a crash or a wake by any path shows in
//! `info`/`list` at once.

use std::time::Duration;

use tokio::sync::broadcast;

use crate::thermal::Thermal;

/// Events kept for a slow subscriber.
pub const CAPACITY: usize = 1024;

/// One thing that happened to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The sandbox's ID.
    pub id: String,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Created and answering.
    Created,
    /// Woken to hot.
    Woke {
        /// The state it woke from.
        from: Thermal,
        /// How long the wake took.
        duration: Duration,
    },
    /// Hot -> warm.
    Paused,
    /// To cold: state and memory on disk, QEMU gone.
    Stopped {
        /// Bytes the stop caused to be written, when the kernel accounts them.
        bytes_written: Option<u64>,
    },
    /// Started again after a crash or from its disk (not from saved memory: that is a wake).
    Started,
    /// QEMU ended on its own, or the sandbox's owner failed.
    Crashed {
        /// What is known of why.
        reason: String,
    },
    /// QEMU paused the guest because a disk is full (the host's disk, for a disk overlay):
    /// the guest resumes on the next wake once there is room again.
    DiskFull,
    /// Destroyed; every file is gone.
    Destroyed,
}

/// The sending side, shared by the engine and every owner.
#[derive(Debug, Clone)]
pub(crate) struct Events {
    tx: broadcast::Sender<Event>,
}

impl Events {
    pub(crate) fn new() -> Self {
        Self { tx: broadcast::channel(CAPACITY).0 }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Publishes an event; having no subscriber is fine.
    pub(crate) fn send(&self, id: &str, kind: EventKind) {
        tracing::debug!(sandbox = %id, event = ?kind, "engine event");
        let _ = self.tx.send(Event { id: id.to_owned(), kind });
    }
}
