//! Engine events and access without waking, on real VMs: every thermal change is published as
//! it happens; a QEMU that dies or pauses on a full disk is reported at once, with no engine call
//! in between; hot sandboxes are leased without the owner, warm and cold ones are never woken
//! by reads; an owner task that panics is noticed; the guest's console stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use engine::{ErrorKind, Event, EventKind, Thermal};
use tokio::sync::broadcast;

/// The next event of sandbox `id`, within `within`.
async fn next_event(rx: &mut broadcast::Receiver<Event>, id: &str, within: Duration) -> EventKind {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no event for {id} within {within:?}"))
            .unwrap();
        if event.id == id {
            return event.kind;
        }
    }
}

fn qemu_pid(e: &TestEngine, id: &str) -> i32 {
    std::fs::read_to_string(e.dir_of(id).join("qemu.pid")).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_thermal_change_is_an_event_and_a_killed_qemu_is_reported_at_once() {
    let e = test_engine().await;
    let mut rx = e.subscribe();
    let mut spec = small("ev");
    spec.memory_mib = 256;
    e.create(&spec).await.unwrap();
    let second = Duration::from_secs(1);
    assert_eq!(next_event(&mut rx, "ev", second).await, EventKind::Created);

    e.pause("ev", Duration::ZERO).await.unwrap();
    assert_eq!(next_event(&mut rx, "ev", second).await, EventKind::Paused);
    e.ensure_hot("ev").await.unwrap();
    let EventKind::Woke { from, duration } = next_event(&mut rx, "ev", second).await else {
        panic!("expected a wake")
    };
    assert_eq!(from, Thermal::Warm);
    assert!(duration < Duration::from_secs(5), "{duration:?}");

    e.file_write("ev", "/home/lohar/data.bin", "0644", &vec![7u8; 1 << 20]).await.unwrap();
    e.stop("ev", Duration::ZERO).await.unwrap();
    let EventKind::Stopped { bytes_written } = next_event(&mut rx, "ev", second).await else {
        panic!("expected a stop")
    };
    // The guest wrote 1 MiB through its page cache and disk since QEMU started: a stop that
    // claims to have written less is not measuring.
    let written = bytes_written.expect("this kernel accounts per-task I/O");
    assert!(written >= 1 << 20, "{written} bytes");
    e.ensure_hot("ev").await.unwrap();
    assert!(matches!(
        next_event(&mut rx, "ev", second).await,
        EventKind::Woke { from: Thermal::Cold, .. }
    ));

    // Killed from outside: the event arrives without anyone asking the engine anything.
    let pid = qemu_pid(&e, "ev");
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let EventKind::Crashed { reason } = next_event(&mut rx, "ev", Duration::from_secs(5)).await
    else {
        panic!("expected a crash")
    };
    assert!(reason.contains("QEMU exited"), "{reason}");
    assert!(killed.elapsed() < Duration::from_secs(3), "reported after {:?}", killed.elapsed());
    assert_eq!(e.info("ev").unwrap().thermal, Thermal::Failed);
    assert_eq!(e.lease("ev").await.unwrap_err().kind(), ErrorKind::Crashed);

    e.start("ev").await.unwrap();
    assert_eq!(next_event(&mut rx, "ev", second).await, EventKind::Started);
    assert_eq!(e.exec("ev", &["cat", "/proc/uptime"]).await.unwrap().exit_code, 0);
    e.destroy("ev").await.unwrap();
    assert_eq!(next_event(&mut rx, "ev", second).await, EventKind::Destroyed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_wake_and_never_wait_behind_the_owner() {
    // Without QEMUs started ahead: the pid file tells below when the wake's own QEMU starts
    // (a QEMU started ahead writes it right after the stop).
    let e = test_engine_with(|c| c.restore_pool = 0).await;
    let mut spec = small("rd");
    spec.memory_mib = 256;
    e.create(&spec).await.unwrap();

    // Hot: a lease without the owner, ports readable.
    let lease = e.try_lease("rd").unwrap().expect("hot");
    assert_eq!(e.host_activity("rd").unwrap().in_flight, 1);
    drop(lease);
    assert!(e.listening_ports_if_hot("rd").await.unwrap().is_some());

    // Warm: nothing wakes it.
    e.pause("rd", Duration::ZERO).await.unwrap();
    assert!(e.try_lease("rd").unwrap().is_none());
    assert_eq!(e.listening_ports_if_hot("rd").await.unwrap(), None);
    assert!(e.activity("rd").await.unwrap().agent.is_none());
    assert_eq!(e.thermal("rd").unwrap(), Thermal::Warm);

    // Cold, and being woken: the host's view answers at once while the owner is busy
    // restoring (a thermal tick must never queue behind a wake).
    e.stop("rd", Duration::ZERO).await.unwrap();
    let e = std::sync::Arc::new(e);
    let waking = {
        let e = std::sync::Arc::clone(&e);
        tokio::spawn(async move {
            e.ensure_hot("rd").await.unwrap();
            Instant::now()
        })
    };
    // Wait until the owner has the wake in hand (the restore's QEMU has written its pid).
    let pid_file = e.dir_of("rd").join("qemu.pid");
    let before = std::fs::read_to_string(&pid_file).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pid_file).unwrap_or_default() == before {
        assert!(Instant::now() < deadline, "the wake never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let read = e.host_activity("rd").unwrap();
    let read_at = Instant::now();
    assert_eq!(read.thermal, Thermal::Cold, "read while the restore is under way");
    assert!(e.try_lease("rd").unwrap().is_none());
    let woke_at = waking.await.unwrap();
    assert!(read_at < woke_at, "the read waited for the wake");
    assert!(e.try_lease("rd").unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_panics_is_noticed_and_its_resources_released() {
    let e = test_engine().await;
    let mut rx = e.subscribe();
    e.create(&small("boom")).await.unwrap();
    assert_eq!(next_event(&mut rx, "boom", Duration::from_secs(1)).await, EventKind::Created);
    let pid = qemu_pid(&e, "boom");
    e.simulate_owner_panic("boom").await.unwrap();
    let EventKind::Crashed { reason } = next_event(&mut rx, "boom", Duration::from_secs(5)).await
    else {
        panic!("expected a crash")
    };
    assert!(reason.contains("owner task failed"), "{reason}");
    assert_eq!(e.info("boom").unwrap().thermal, Thermal::Failed);
    // Its QEMU went with the owner.
    let gone =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"));
    assert!(gone, "QEMU outlived its owner");
    let err = e.exec("boom", &["true"]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Crashed, "{err}");
    // Destroy still removes everything.
    e.destroy("boom").await.unwrap();
    assert!(!e.dir_of("boom").exists());
    assert_eq!(e.info("boom").unwrap_err().kind(), ErrorKind::NotFound);
    // Its address went back to the pool: the engine keeps creating.
    e.create(&small("after")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_log_stays_bounded() {
    let e = test_engine().await;
    e.create(&small("chatty")).await.unwrap();
    let log = e.dir_of("chatty").join("serial.log");
    let old = e.dir_of("chatty").join("serial.log.1");
    // 3 MiB of console output from root in the guest.
    let mut flood = agent::ExecRequest::command([
        "sh",
        "-c",
        "head -c 3145728 /dev/zero | tr '\\0' x > /dev/ttyS0",
    ]);
    flood.user = Some("root".into());
    let out = e.exec_request("chatty", &flood, Duration::from_secs(120)).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.stderr_text());
    // The owner rotates the log every couple of seconds: wait until it has.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&log).unwrap().len() > engine::vm::SERIAL_LOG_CAP {
        assert!(Instant::now() < deadline, "the console log was never capped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(old.exists(), "the newest part of a full log is kept");
    assert!(std::fs::metadata(&old).unwrap().len() <= 64 * 1024);
}

/// A tmpfs of a given size mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        Tmpfs { dir }
    }

    fn resize(&self, mib: u32) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_disk_pauses_the_guest_which_resumes_when_there_is_room() {
    let e = test_engine().await;
    let mut rx = e.subscribe();
    // The volume's file lives on a 16 MiB tmpfs: its 64 MiB file system cannot be filled.
    let tmp = Tmpfs::mount(16);
    let volume = tmp.dir.path().join("full.ext4");
    engine::volume::create(&volume, 64).await.unwrap();
    let mut spec = small("full");
    spec.volumes =
        vec![engine::volume::VolumeMount { path: volume, mount: "/data".into(), read_only: false }];
    e.create(&spec).await.unwrap();
    let e = std::sync::Arc::new(e);
    let writer = {
        let e = std::sync::Arc::clone(&e);
        tokio::spawn(async move {
            let mut dd = agent::ExecRequest::command([
                "dd",
                "if=/dev/zero",
                "of=/data/big",
                "bs=1M",
                "count=40",
                "conv=fsync",
            ]);
            dd.user = Some("root".into());
            e.exec_request("full", &dd, Duration::from_secs(300)).await
        })
    };
    loop {
        match next_event(&mut rx, "full", Duration::from_secs(120)).await {
            EventKind::DiskFull => break,
            EventKind::Created => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(e.info("full").unwrap().thermal, Thermal::Warm, "paused by QEMU");
    assert!(!writer.is_finished());
    // Room again: the next wake retries the failed writes and the guest carries on.
    tmp.resize(256);
    e.ensure_hot("full").await.unwrap();
    let out = writer.await.unwrap().unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.stderr_text());
    let size = e.exec("full", &["stat", "-c", "%s", "/data/big"]).await.unwrap();
    assert_eq!(size.stdout_text().trim(), (40 << 20).to_string());
    e.destroy("full").await.unwrap();
}
