//! The thermal manager and the engine-events task against a real daemon with real VMs, on
//! short timings (warm after 1 s, cold 2 s after the pause, a tick every 200 ms): sandboxes
//! cool on their own, wake on use with the store in step, and the races of issue 11 item 4.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, until};
use engine::{EventKind, Thermal};
use reqwest::Method;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const WARM_AFTER: Duration = Duration::from_secs(1);
const COLD_AFTER: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(200);

async fn daemon() -> Daemon {
    Daemon::start_with(|s| {
        s.warm_after = WARM_AFTER;
        s.cold_after = COLD_AFTER;
        s.thermal_tick = TICK;
    })
    .await
}

/// The manager and the events task, as `serve` runs them.
struct Background {
    tx: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Background {
    fn start(d: &Daemon) -> Self {
        let (tx, rx) = watch::channel(false);
        Self { tx, handles: server::spawn_background(&d.state, rx) }
    }

    async fn stop(self) {
        self.tx.send(true).unwrap();
        for h in self.handles {
            tokio::time::timeout(Duration::from_secs(30), h).await.expect("ends").unwrap();
        }
    }
}

/// Every engine event from now on, with when it arrived.
#[derive(Clone)]
struct Events(Arc<Mutex<Vec<(Instant, engine::Event)>>>);

impl Events {
    fn record(d: &Daemon) -> Self {
        let mut rx = d.state.engine.subscribe();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok(e) = rx.recv().await {
                sink.lock().unwrap().push((Instant::now(), e));
            }
        });
        Self(seen)
    }

    fn count(&self, id: &str, f: impl Fn(&EventKind) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|(_, e)| e.id == id && f(&e.kind)).count()
    }

    /// When each matching event arrived.
    fn times(&self, id: &str, f: impl Fn(&EventKind) -> bool) -> Vec<Instant> {
        let seen = self.0.lock().unwrap();
        seen.iter().filter(|(_, e)| e.id == id && f(&e.kind)).map(|(t, _)| *t).collect()
    }
}

async fn create(d: &Daemon, name: &str, keep_hot: bool) -> api::Sandbox {
    let body = serde_json::json!({"name": name, "memory_mb": 128, "keep_hot": keep_hot});
    let r = d.req(Method::POST, "/sandboxes").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    r.json().await.unwrap()
}

async fn exec(d: &Daemon, name: &str, script: &str) -> api::ExecResult {
    let body = serde_json::json!({"cmd": ["sh", "-c", script]});
    let r =
        d.req(Method::POST, &format!("/sandboxes/{name}/exec")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    r.json().await.unwrap()
}

/// The store's row, read directly (a `GET` would itself sync the row with the engine).
async fn row(d: &Daemon, id: &str) -> store::Sandbox {
    let id = id.to_owned();
    d.state.store.read(move |s| s.sandbox_by_id(&id)).await.unwrap()
}

async fn log(d: &Daemon, id: &str, kind: &str) -> Vec<serde_json::Value> {
    let q = store::EventQuery {
        kind: Some(kind.to_owned()),
        sandbox_id: Some(id.to_owned()),
        limit: Some(100),
        ..Default::default()
    };
    let events = d.state.store.read(move |s| s.query_events(&q)).await.unwrap();
    events.iter().map(|e| serde_json::from_str(&e.event.meta).unwrap()).collect()
}

fn thermal(d: &Daemon, id: &str) -> Thermal {
    d.state.engine.thermal(id).unwrap()
}

fn dir(d: &Daemon, id: &str) -> PathBuf {
    d.data.path().join("engine/sandboxes").join(id)
}

fn qemu_pid(d: &Daemon, id: &str) -> u32 {
    std::fs::read_to_string(dir(d, id).join("qemu.pid")).unwrap().trim().parse().unwrap()
}

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sandboxes_go_warm_then_cold_and_two_execs_wake_one_qemu() {
    let d = daemon().await;
    let idle = create(&d, "idle", false).await;
    let keep = create(&d, "keep", true).await;
    let events = Events::record(&d);
    let bg = Background::start(&d);

    // Hot -> warm -> cold on its own; the row follows.
    let started = Instant::now();
    until("idle warm", LIMIT, || async { thermal(&d, &idle.id) != Thermal::Hot }).await;
    let warm_at = started.elapsed();
    // The row says stopped first; its record follows once the owner answers the export (after
    // it started the sandbox's next QEMU ahead, with the pool on).
    until("idle cold in the store", LIMIT, || async {
        let r = row(&d, &idle.id).await;
        let record = r.record.map(|r| r.decode().unwrap());
        r.status == store::Status::Stopped
            && record.is_some_and(|r| r.thermal == Thermal::Cold && r.snapshot)
    })
    .await;
    let cold_at = started.elapsed();
    println!("warm after {warm_at:?}, stopped after {cold_at:?}");
    assert!(cold_at >= warm_at + COLD_AFTER - TICK, "cold counts from the pause: {cold_at:?}");
    assert_eq!(thermal(&d, &idle.id), Thermal::Cold);
    let stopped = row(&d, &idle.id).await;
    assert_eq!(stopped.thermal, Some(Thermal::Cold));
    assert!(stopped.stopped_at.is_some());
    let record = stopped.record.unwrap().decode().unwrap();
    assert!(
        record.thermal == Thermal::Cold && record.snapshot,
        "the record wakes from memory: {:?} snapshot {}",
        record.thermal,
        record.snapshot
    );
    assert_eq!(log(&d, &idle.id, "thermal.pause").await.len(), 1);
    assert_eq!(log(&d, &idle.id, "sandbox.stopped").await[0]["reason"], "thermal");
    assert_eq!(log(&d, &idle.id, "thermal.snapshot").await.len(), 1);
    // keep_hot: the same ticks went by, never paused.
    assert_eq!(thermal(&d, &keep.id), Thermal::Hot);
    assert_eq!(events.count(&keep.id, |k| matches!(k, EventKind::Paused)), 0);
    assert_eq!(row(&d, &keep.id).await.status, store::Status::Running);

    // Two execs at once on the cold sandbox: both answer, one wake (one QEMU).
    let (a, b) = tokio::join!(exec(&d, "idle", "echo a"), exec(&d, "idle", "echo b"));
    assert_eq!((a.stdout.as_str(), b.stdout.as_str()), ("a\n", "b\n"));
    let woke = |k: &EventKind| matches!(k, EventKind::Woke { from: Thermal::Cold, .. });
    assert_eq!(events.count(&idle.id, woke), 1);
    // The events task puts the row back to running with a record that boots, not restores.
    until("idle running in the store", LIMIT, || async {
        let r = row(&d, &idle.id).await;
        r.status == store::Status::Running
            && r.record.unwrap().decode().unwrap().thermal == Thermal::Hot
    })
    .await;
    assert_eq!(log(&d, &idle.id, "thermal.wake").await[0]["from_state"], "cold");
    // And the manager cools it again (v1's TestPublicProxyColdWakeThermalManaged).
    until("idle warm again", LIMIT, || async { thermal(&d, &idle.id) != Thermal::Hot }).await;

    // With the events task down, a change behind its back leaves the row stale; the next
    // start resynchronises (what a lagged receiver does too).
    bg.stop().await;
    d.state.engine.stop(&keep.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(row(&d, &keep.id).await.status, store::Status::Running, "nothing applied it");
    let bg = Background::start(&d);
    until("keep stopped in the store", LIMIT, || async {
        row(&d, &keep.id).await.status == store::Status::Stopped
    })
    .await;
    until("keep's record cold", LIMIT, || async {
        row(&d, &keep.id).await.record.unwrap().decode().unwrap().thermal == Thermal::Cold
    })
    .await;
    bg.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_exec_is_not_paused_and_execs_racing_pauses_all_succeed() {
    let d = daemon().await;
    let sb = create(&d, "busy", false).await;
    let events = Events::record(&d);
    let bg = Background::start(&d);

    // An exec three times longer than warm_after holds the sandbox hot throughout.
    exec(&d, "busy", "true").await;
    let paused_before = events.count(&sb.id, |k| matches!(k, EventKind::Paused));
    let mut long = Box::pin(exec(&d, "busy", "sleep 3; echo done"));
    let mut samples = 0;
    let out = loop {
        tokio::select! {
            out = &mut long => break out,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                assert_eq!(thermal(&d, &sb.id), Thermal::Hot, "paused under a running exec");
                samples += 1;
            }
        }
    };
    drop(long);
    assert_eq!(out.stdout, "done\n");
    assert!(samples >= 40, "{samples} samples");
    assert_eq!(events.count(&sb.id, |k| matches!(k, EventKind::Paused)), paused_before);
    // Control: once idle, it is paused.
    until("warm after the exec", LIMIT, || async { thermal(&d, &sb.id) == Thermal::Warm }).await;

    // Bursts of execs while the manager pauses: the manager's agent query is the one lease
    // out when the sandbox is idle, so the burst starts as soon as it is seen; its execs
    // arrive during the query, the pause, or just after it. Every exec answers.
    let spans = Arc::new(Mutex::new(Vec::new()));
    for round in 0..8u64 {
        exec(&d, "busy", "true").await;
        let deadline = Instant::now() + LIMIT;
        loop {
            let host = d.state.engine.host_activity(&sb.id).unwrap();
            if host.in_flight > 0 || host.thermal == Thermal::Warm {
                break;
            }
            assert!(Instant::now() < deadline, "the manager never looked");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let start = Instant::now();
        let burst = (0..6u64).map(|i| {
            let (d, spans) = (&d, &spans);
            async move {
                tokio::time::sleep_until((start + Duration::from_millis(4 * i)).into()).await;
                let began = Instant::now();
                let out = exec(d, "busy", &format!("echo {round}.{i}")).await;
                spans.lock().unwrap().push((began, Instant::now()));
                assert_eq!((out.exit_code, out.stdout), (0, format!("{round}.{i}\n")));
            }
        });
        futures_util::future::join_all(burst).await;
    }
    // The race was met: some pause completed while an exec of a burst was waiting for the
    // sandbox (a pause needs no lease out, so that exec's lease was queued behind it).
    let spans = spans.lock().unwrap().clone();
    let pauses = events.times(&sb.id, |k| matches!(k, EventKind::Paused));
    let raced = pauses.iter().filter(|&&p| spans.iter().any(|&(b, e)| b <= p && p <= e)).count();
    println!("{} pauses, {raced} with an exec waiting", pauses.len());
    assert!(raced >= 1, "no exec met a pause");
    bg.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_during_a_thermal_stop_leaves_nothing() {
    let d = daemon().await;
    let sb = create(&d, "doomed", false).await;
    let events = Events::record(&d);
    let pid = qemu_pid(&d, &sb.id);
    let bg = Background::start(&d);
    until("warm", LIMIT, || async { thermal(&d, &sb.id) == Thermal::Warm }).await;
    // The stop writes the device state first: destroy as soon as that file appears.
    let state = dir(&d, &sb.id).join("state");
    let deadline = Instant::now() + LIMIT;
    while !state.exists() {
        assert!(Instant::now() < deadline, "no stop began");
        assert_eq!(thermal(&d, &sb.id), Thermal::Warm, "the stop finished before it was seen");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = d.req(Method::DELETE, "/sandboxes/doomed").send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // Both ended: nothing left in the engine, the store or on disk; QEMU gone.
    assert!(d.state.engine.thermal(&sb.id).is_err());
    assert!(d.state.engine.list().is_empty());
    let id = sb.id.clone();
    let gone = d.state.store.read(move |s| s.sandbox_by_id(&id)).await.unwrap_err();
    assert_eq!(gone.kind(), store::ErrorKind::NotFound);
    assert!(!dir(&d, &sb.id).exists());
    until("QEMU gone", LIMIT, || async { !PathBuf::from(format!("/proc/{pid}")).exists() }).await;
    assert_eq!(events.count(&sb.id, |k| matches!(k, EventKind::Destroyed)), 1);
    assert!(log(&d, &sb.id, "thermal.snapshot_failed").await.is_empty());
    // A few more ticks with nothing to do, then a clean shutdown.
    tokio::time::sleep(TICK * 3).await;
    let r = d.req(Method::GET, "/sandboxes").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "[]");
    bg.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_failed_stops_mark_unknown_and_a_killed_qemu_shows_without_a_request() {
    let d = daemon().await;
    let stuck = create(&d, "stuck", false).await;
    let victim = create(&d, "victim", true).await;
    // The device state cannot be written (its path is a directory): every stop fails.
    let blocker = dir(&d, &stuck.id).join("state");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"x").unwrap();
    let bg = Background::start(&d);

    // QEMU killed from outside: the row changes with no API call, and start brings it back.
    assert_eq!(row(&d, &victim.id).await.status, store::Status::Running);
    let pid = qemu_pid(&d, &victim.id);
    let kill = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(kill.unwrap().success());
    until("victim unknown in the store", LIMIT, || async {
        let r = row(&d, &victim.id).await;
        r.status == store::Status::Unknown && r.thermal == Some(Thermal::Failed)
    })
    .await;
    assert_eq!(log(&d, &victim.id, "sandbox.crashed").await.len(), 1);
    let r = d.req(Method::POST, "/sandboxes/victim/start").json(&serde_json::json!({})).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(r.json::<api::Sandbox>().await.unwrap().status, "running");
    assert_eq!(exec(&d, "victim", "echo back").await.stdout, "back\n");
    assert_eq!(row(&d, &victim.id).await.status, store::Status::Running);

    // Three failed stops: `unknown`, and the manager stops trying.
    until("stuck unknown", LIMIT, || async {
        row(&d, &stuck.id).await.status == store::Status::Unknown
    })
    .await;
    let failures = log(&d, &stuck.id, "thermal.snapshot_failed").await;
    assert_eq!(failures.len(), 3);
    assert_eq!(failures[0]["attempt"], 3);
    assert_eq!(thermal(&d, &stuck.id), Thermal::Warm, "nothing lost: still paused in memory");
    tokio::time::sleep(TICK * 5).await;
    assert_eq!(log(&d, &stuck.id, "thermal.snapshot_failed").await.len(), 3, "gave up");
    // Control: without the blocker, a use brings it back to running and the manager cools it
    // all the way this time.
    std::fs::remove_dir_all(&blocker).unwrap();
    assert_eq!(exec(&d, "stuck", "echo alive").await.stdout, "alive\n");
    until("stuck running", LIMIT, || async {
        row(&d, &stuck.id).await.status == store::Status::Running
    })
    .await;
    until("stuck stopped", LIMIT, || async {
        row(&d, &stuck.id).await.status == store::Status::Stopped
    })
    .await;
    assert_eq!(thermal(&d, &stuck.id), Thermal::Cold);
    bg.stop().await;
    d.stop().await;
}
