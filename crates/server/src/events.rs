//! The event recorder (v1's, host.md 1.24): `record` never blocks and never fails. An event
//! goes to a bounded queue (1,000) that one task writes to the store in batches (every 500 ms,
//! or as soon as 100 are waiting; one transaction per batch); when the queue is full the event
//! is dropped and counted. The same call hands it to the in-process subscribers (`GET
//! /events?follow=true`), each with a bounded buffer (64): a subscriber that falls behind is
//! disconnected (its channel closed), never waited for.
//!
//! ```ignore
//! state.events.record(store::NewEvent { user_id, sandbox_id, meta, ..store::NewEvent::now("volume.created") });
//! ```
//!
//! Events written in the same transaction as the row change they describe (a create's row, a
//! destroy's delete, a stop's transition: `lifecycle.rs`, `thermal.rs`, `engine_events.rs`)
//! stay in that transaction, so the log never disagrees with the rows; those writers hand the
//! events to the subscribers afterwards with [`Recorder::announce`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// Events the queue holds before `record` drops them (v1: 1,000).
pub const QUEUE: usize = 1000;
/// A batch is written once this many wait (v1: 100)...
pub const BATCH: usize = 100;
/// ... or this long after the first of them arrived (v1: 500 ms).
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// A subscriber's buffer (v1: 64); full, the subscriber is disconnected.
pub const SUBSCRIBER_BUFFER: usize = 64;
/// Subscribers at most at once; more are refused (`subscribe` answers `None`).
pub const MAX_SUBSCRIBERS: usize = 256;

/// Where batches go (the store; a test's fake).
pub trait Sink: Send + Sync + 'static {
    /// Writes one batch in one transaction.
    fn write(
        &self,
        batch: Vec<store::NewEvent>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

impl Sink for store::AsyncStore {
    async fn write(&self, batch: Vec<store::NewEvent>) -> Result<(), String> {
        store::AsyncStore::write(self, move |s| s.record_events(&batch))
            .await
            .map_err(|e| e.to_string())
    }
}

/// What a subscriber wants (all given fields must match, v1's AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// A type prefix, as `GET /events`' `type` (`sandbox` matches `sandbox.created`).
    pub kind: Option<String>,
    /// A sandbox ID.
    pub sandbox_id: Option<String>,
    /// A user ID (the API always sets it to the caller, but for the admin's feed).
    pub user_id: Option<String>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &store::NewEvent) -> bool {
        let kind_ok = self.kind.as_deref().is_none_or(|k| type_matches(k, &e.kind));
        kind_ok
            && self.sandbox_id.as_deref().is_none_or(|s| s == e.sandbox_id)
            && self.user_id.as_deref().is_none_or(|u| u == e.user_id)
    }
}

/// The store's rule for `type` filters: with a `.` an exact type, without it the type itself
/// and every `<it>.*`.
pub fn type_matches(filter: &str, kind: &str) -> bool {
    if filter.contains('.') {
        kind == filter
    } else {
        kind == filter || kind.strip_prefix(filter).is_some_and(|rest| rest.starts_with('.'))
    }
}

enum Msg {
    Event(store::NewEvent),
    Flush(oneshot::Sender<()>),
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Arc<store::NewEvent>>,
}

struct Shared {
    dropped: AtomicU64,
    subscribers_dropped: AtomicU64,
    subscribers: Mutex<Vec<Subscriber>>,
}

/// The recorder; cheap to clone (`AppState::events`).
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("dropped", &self.dropped()).finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder writing to `sink`, its writer task spawned on the current runtime. The task
    /// ends, after writing what is queued, when every clone of the recorder is gone.
    pub fn spawn(sink: impl Sink) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let recorder = Self {
            tx,
            shared: Arc::new(Shared {
                dropped: AtomicU64::new(0),
                subscribers_dropped: AtomicU64::new(0),
                subscribers: Mutex::new(Vec::new()),
            }),
        };
        tokio::spawn(writer(rx, sink));
        recorder
    }

    /// Records `event`: queued for the store and handed to the subscribers. Never blocks; a
    /// full queue drops the event (counted: [`Recorder::dropped`]).
    pub fn record(&self, event: store::NewEvent) {
        // The store refuses a batch holding one: it must not cost the others theirs.
        if event.kind.is_empty() {
            tracing::warn!("an event without a type, not recorded");
            return;
        }
        self.announce(std::slice::from_ref(&event));
        if self.tx.try_send(Msg::Event(event)).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::telemetry::EVENTS_DROPPED).increment(1);
        }
    }

    /// Hands events the caller wrote itself (in its own transaction) to the subscribers.
    pub fn announce(&self, events: &[store::NewEvent]) {
        let mut subs = self.shared.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if subs.is_empty() {
            return;
        }
        for event in events {
            let event = Arc::new(event.clone());
            subs.retain(|s| {
                if !s.filter.matches(&event) {
                    return !s.tx.is_closed();
                }
                match s.tx.try_send(Arc::clone(&event)) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Too slow: dropping its sender closes its channel.
                        self.shared.subscribers_dropped.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(crate::telemetry::SUBSCRIBERS_DROPPED).increment(1);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
        }
    }

    /// A new subscriber's feed (events recorded from now on that pass `filter`); `None` when
    /// [`MAX_SUBSCRIBERS`] are connected. The feed ends if the subscriber falls
    /// [`SUBSCRIBER_BUFFER`] events behind.
    pub fn subscribe(&self, filter: Filter) -> Option<mpsc::Receiver<Arc<store::NewEvent>>> {
        let mut subs = self.shared.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| !s.tx.is_closed());
        if subs.len() >= MAX_SUBSCRIBERS {
            return None;
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        subs.push(Subscriber { filter, tx });
        Some(rx)
    }

    /// Ends every subscriber's feed (the daemon is stopping: a followed stream must not hold
    /// its connection open).
    pub fn close_subscribers(&self) {
        self.shared.subscribers.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Events dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Subscribers disconnected for being slow, since the start.
    pub fn subscribers_dropped(&self) -> u64 {
        self.shared.subscribers_dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything recorded before this call is written (shutdown, tests).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The writer: batches of up to [`BATCH`], each written at most [`FLUSH_EVERY`] after its
/// first event arrived.
async fn writer(mut rx: mpsc::Receiver<Msg>, sink: impl Sink) {
    let mut batch: Vec<store::NewEvent> = Vec::with_capacity(BATCH);
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        let mut open = true;
        // Gather until the batch is full, a flush is asked for, the deadline passes (counted
        // from the batch's first event) or every sender is gone.
        loop {
            let msg = if batch.is_empty() {
                rx.recv().await
            } else {
                tokio::select! {
                    msg = rx.recv() => msg,
                    () = &mut deadline => break,
                }
            };
            match msg {
                Some(Msg::Event(e)) => {
                    if batch.is_empty() {
                        deadline.as_mut().reset(tokio::time::Instant::now() + FLUSH_EVERY);
                    }
                    batch.push(e);
                    if batch.len() >= BATCH {
                        break;
                    }
                }
                Some(Msg::Flush(done)) => {
                    waiting.push(done);
                    break;
                }
                None => {
                    open = false;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let n = batch.len();
            if let Err(e) = sink.write(std::mem::take(&mut batch)).await {
                tracing::warn!(events = n, "writing events: {e}");
            }
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A sink that keeps its batches, and may be held shut.
    #[derive(Clone)]
    struct Batches {
        got: Arc<Mutex<Vec<Vec<String>>>>,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl Sink for Batches {
        async fn write(&self, batch: Vec<store::NewEvent>) -> Result<(), String> {
            let _permit = self.gate.acquire().await.map_err(|e| e.to_string())?;
            self.got.lock().unwrap().push(batch.into_iter().map(|e| e.kind).collect());
            Ok(())
        }
    }

    impl Batches {
        fn new(permits: usize) -> Self {
            Self { got: Arc::default(), gate: Arc::new(tokio::sync::Semaphore::new(permits)) }
        }
    }

    fn open_sink() -> Batches {
        Batches::new(1000)
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_count_and_by_time() {
        let sink = open_sink();
        let rec = Recorder::spawn(sink.clone());
        for i in 0..250 {
            rec.record(store::NewEvent::now(format!("t.e{i}")));
        }
        // Two full batches go at once; the rest waits for the deadline.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let sizes: Vec<usize> = sink.got.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 100]);
        tokio::time::sleep(FLUSH_EVERY).await;
        let sizes: Vec<usize> = sink.got.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 100, 50]);
        // In order, nothing lost.
        let all: Vec<String> = sink.got.lock().unwrap().concat();
        assert_eq!(all, (0..250).map(|i| format!("t.e{i}")).collect::<Vec<_>>());
        // One lone event waits at most FLUSH_EVERY.
        rec.record(store::NewEvent::now("t.lone"));
        tokio::time::sleep(FLUSH_EVERY - Duration::from_millis(10)).await;
        assert_eq!(sink.got.lock().unwrap().len(), 3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(sink.got.lock().unwrap().len(), 4);
        assert_eq!(rec.dropped(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let sink = Batches::new(0); // shut: the writer waits on its first batch
        let rec = Recorder::spawn(sink.clone());
        let started = std::time::Instant::now();
        // The writer takes one batch (100) and blocks writing it; the queue holds 1,000 more.
        for i in 0..100 {
            rec.record(store::NewEvent::now(format!("t.e{i}")));
        }
        let wait_until = tokio::time::Instant::now() + Duration::from_secs(5);
        while rec.tx.capacity() < QUEUE {
            assert!(tokio::time::Instant::now() < wait_until, "the writer took no batch");
            tokio::task::yield_now().await;
        }
        for i in 0..(QUEUE + 37) {
            rec.record(store::NewEvent::now(format!("t.f{i}")));
        }
        assert!(started.elapsed() < Duration::from_secs(2), "record blocked");
        assert_eq!(rec.dropped(), 37);
        // Opened, everything kept is written.
        sink.gate.add_permits(1000);
        rec.flush().await;
        let written: usize = sink.got.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(written, 100 + QUEUE);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_dropped_and_the_others_keep_going() {
        let rec = Recorder::spawn(open_sink());
        let mut slow = rec.subscribe(Filter::default()).unwrap();
        let mut fast = rec.subscribe(Filter::default()).unwrap();
        let mut other =
            rec.subscribe(Filter { kind: Some("volume".into()), ..Filter::default() }).unwrap();
        let mut fast_got = 0;
        for i in 0..(SUBSCRIBER_BUFFER + 10) {
            rec.record(store::NewEvent::now(format!("sandbox.e{i}")));
            while fast.try_recv().is_ok() {
                fast_got += 1;
            }
        }
        assert_eq!(fast_got, SUBSCRIBER_BUFFER + 10);
        assert_eq!(rec.subscribers_dropped(), 1);
        // The slow one got its buffer's worth, then its channel closed.
        let mut slow_got = 0;
        while let Some(_e) = slow.recv().await {
            slow_got += 1;
        }
        assert_eq!(slow_got, SUBSCRIBER_BUFFER);
        // The filtered one saw nothing and is still connected.
        assert!(matches!(other.try_recv(), Err(mpsc::error::TryRecvError::Empty)));
        rec.record(store::NewEvent::now("volume.created"));
        assert_eq!(other.recv().await.unwrap().kind, "volume.created");
    }

    #[tokio::test]
    async fn a_real_store_keeps_every_event_whatever_the_subscribers_do() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let store = store::AsyncStore::open(&db, &store::Options::default()).unwrap();
        let rec = Recorder::spawn(store.clone());
        let _slow = rec.subscribe(Filter::default()).unwrap();
        let mut alice =
            rec.subscribe(Filter { user_id: Some("alice".into()), ..Filter::default() }).unwrap();
        let gone = rec.subscribe(Filter::default()).unwrap();
        drop(gone); // a subscriber that left is forgotten, nothing else changes
        let n = SUBSCRIBER_BUFFER * 2;
        for i in 0..n {
            let user = if i % 2 == 0 { "alice" } else { "bob" };
            rec.record(store::NewEvent {
                user_id: user.into(),
                ..store::NewEvent::now(format!("t.e{i}"))
            });
        }
        // The slow one was dropped; alice's got hers, in order, though she read none yet.
        assert_eq!(rec.subscribers_dropped(), 1);
        for i in (0..n).step_by(2) {
            assert_eq!(alice.recv().await.unwrap().kind, format!("t.e{i}"));
        }
        // Closing the recorder's subscribers ends every feed.
        rec.close_subscribers();
        assert!(alice.recv().await.is_none());
        // Every event is in the store; none dropped.
        rec.flush().await;
        let q =
            store::EventQuery { kind: Some("t".into()), limit: Some(1000), ..Default::default() };
        let stored = store.read(move |s| s.query_events(&q)).await.unwrap();
        assert_eq!(stored.len(), n);
        assert_eq!(stored[0].event.kind, format!("t.e{}", n - 1));
        assert_eq!(rec.dropped(), 0);
        // An event without a type is refused alone, not with its batch.
        rec.record(store::NewEvent::now(""));
        rec.record(store::NewEvent::now("t.after"));
        rec.flush().await;
        let q =
            store::EventQuery { kind: Some("t".into()), limit: Some(1000), ..Default::default() };
        assert_eq!(store.read(move |s| s.query_events(&q)).await.unwrap().len(), n + 1);
    }

    #[test]
    fn filters_and() {
        let e = store::NewEvent {
            user_id: "u1".into(),
            sandbox_id: "s1".into(),
            ..store::NewEvent::now("sandbox.created")
        };
        let f = |kind: Option<&str>, sandbox: Option<&str>, user: Option<&str>| Filter {
            kind: kind.map(Into::into),
            sandbox_id: sandbox.map(Into::into),
            user_id: user.map(Into::into),
        };
        let table = [
            ("no filter", f(None, None, None), true),
            ("prefix", f(Some("sandbox"), None, None), true),
            ("exact", f(Some("sandbox.created"), None, None), true),
            ("other exact", f(Some("sandbox.create"), None, None), false),
            ("prefix without the dot boundary", f(Some("sand"), None, None), false),
            ("sandbox and user", f(None, Some("s1"), Some("u1")), true),
            ("another user", f(Some("sandbox"), Some("s1"), Some("u2")), false),
            ("another sandbox", f(None, Some("s2"), None), false),
        ];
        for (name, filter, want) in table {
            assert_eq!(filter.matches(&e), want, "{name}");
        }
    }
}
