//! Thermal operations through the engine on real VMs: pause/resume, stop/start, ensure-hot from
//! warm and cold, activity tracking, stops that write only what changed, thermal operations
//! racing with guest operations, and failures (a failed stop, a killed QEMU) that lose nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agent::{ExecEvent, ExecRequest, ReadOptions};
use common::*;
use engine::{EngineError, ErrorKind, Thermal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_hot_from_warm_and_cold_keeps_state_and_tracks_activity() {
    let e = test_engine().await;
    let mut spec = small("t");
    spec.memory_mib = 256;
    e.create(&spec).await.unwrap();
    e.file_write("t", "/home/lohar/keep.txt", "0644", b"kept").await.unwrap();
    let pid = start_sleeper(&e, "t").await;

    // Activity: the host cache moves with every operation; the agent's view is there when hot.
    let before = e.activity("t").await.unwrap();
    assert!(before.agent.is_some());
    tokio::time::sleep(Duration::from_millis(20)).await;
    e.exec("t", &["true"]).await.unwrap();
    let after = e.activity("t").await.unwrap();
    assert!(after.last_host_activity > before.last_host_activity);
    assert_eq!(after.in_flight, 0);

    // Already hot: ensure_hot is a no-op round trip to the owner.
    let t = Instant::now();
    e.ensure_hot("t").await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(200), "{:?}", t.elapsed());

    // Warm: paused, asking for activity does not wake it, an exec does.
    e.pause("t", Duration::ZERO).await.unwrap();
    e.pause("t", Duration::ZERO).await.unwrap(); // idempotent
    assert_eq!(e.thermal("t").unwrap(), Thermal::Warm);
    let warm = e.activity("t").await.unwrap();
    assert!(warm.agent.is_none());
    assert_eq!(e.thermal("t").unwrap(), Thermal::Warm);
    assert!(process_alive(&e, "t", pid).await);
    assert_eq!(e.thermal("t").unwrap(), Thermal::Hot);

    // Cold from hot and from warm; the QEMU is gone; a stop of a cold sandbox is a no-op.
    let qemu_pid = std::fs::read_to_string(e.dir_of("t").join("qemu.pid")).unwrap();
    let stopped = e.stop("t", Duration::ZERO).await.unwrap().unwrap();
    assert!(stopped.state_bytes < 10 << 20, "state carried RAM: {}", stopped.state_bytes);
    assert_eq!(e.thermal("t").unwrap(), Thermal::Cold);
    assert!(!std::path::Path::new(&format!("/proc/{}", qemu_pid.trim())).exists());
    assert!(e.stop("t", Duration::ZERO).await.unwrap().is_none());
    assert!(e.pause("t", Duration::ZERO).await.is_err(), "a cold sandbox cannot be paused");
    // Stay cold long enough for a stale guest clock to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    e.ensure_hot("t").await.unwrap();
    assert_eq!(e.thermal("t").unwrap(), Thermal::Hot);
    // The state is consumed by the wake: the guest's RAM has moved on since.
    assert!(!e.dir_of("t").join("state").exists());
    let file = e.file_read("t", "/home/lohar/keep.txt", ReadOptions::default()).await.unwrap();
    assert_eq!(file.data, b"kept");
    assert!(process_alive(&e, "t", pid).await);
    let guest_now: i64 =
        e.exec("t", &["date", "+%s"]).await.unwrap().stdout_text().trim().parse().unwrap();
    let host_now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
            as i64;
    assert!((guest_now - host_now).abs() <= 2, "guest clock {guest_now}, host {host_now}");

    e.pause("t", Duration::ZERO).await.unwrap();
    e.stop("t", Duration::ZERO).await.unwrap().unwrap();
    e.start("t").await.unwrap();
    assert!(process_alive(&e, "t", pid).await);

    // Authentication still holds after a restore: a client with a wrong token is refused.
    let info = e.info("t").unwrap();
    let wrong = agent::AgentClient::new(
        agent::Endpoint::TcpInNetns {
            netns: e.netns().path().to_owned(),
            control: std::net::SocketAddr::new(info.ip.into(), 1024),
            forward: std::net::SocketAddr::new(info.ip.into(), 1025),
            device: None,
        },
        Some("0".repeat(32)),
    );
    let refused = wrong.exec(&["true"]).await.unwrap_err();
    assert!(refused.to_string().contains("auth"), "{refused}");

    // An attached session counts as activity and holds the sandbox hot.
    let shell = e.shell("t", &ExecRequest::command(["sh"])).await.unwrap();
    let activity = e.activity("t").await.unwrap();
    assert!(activity.in_flight >= 1);
    assert!(activity.agent.unwrap().attached_sessions >= 1);
    assert!(matches!(e.pause("t", Duration::ZERO).await, Err(EngineError::Busy { .. })));
    drop(shell);
    e.pause("t", Duration::ZERO).await.unwrap();
}

/// The seed's "full -> diff -> diff": every stop writes only what the guest changed since the
/// last one, and data written in each cycle accumulates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_stops_write_only_what_changed_and_data_accumulates() {
    let e = test_engine().await;
    let mut spec = small("d");
    spec.memory_mib = 256;
    e.create(&spec).await.unwrap();
    let mut rows = Vec::new();
    for cycle in 0..4 {
        let path = format!("/home/lohar/cycle-{cycle}.txt");
        e.file_write("d", &path, "0644", format!("cycle {cycle}").as_bytes()).await.unwrap();
        // Dirty 8 MiB of guest memory (tmpfs lives in RAM).
        e.exec("d", &["dd", "if=/dev/urandom", "of=/tmp/dirty", "bs=1M", "count=8"]).await.unwrap();
        let suspended = e.stop("d", Duration::ZERO).await.unwrap().unwrap();
        // QEMU's own I/O accounting: what its guest dirtied since it started, plus the state.
        let written = suspended.bytes_written.expect("measurement unavailable: /proc/<qemu>/io");
        rows.push((cycle, suspended, written));
        e.start("d").await.unwrap();
        for earlier in 0..=cycle {
            let data = e
                .file_read("d", &format!("/home/lohar/cycle-{earlier}.txt"), ReadOptions::default())
                .await
                .unwrap()
                .data;
            assert_eq!(data, format!("cycle {earlier}").as_bytes());
        }
    }
    println!(
        "\n| stop | total | save | fsync | state | bytes written to disk |\n|---|---|---|---|---|---|"
    );
    for (cycle, s, written) in &rows {
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {} B | {:.1} MiB |",
            if *cycle == 0 { "first (\"full\")".to_owned() } else { format!("diff {cycle}") },
            ms(s.total),
            ms(s.save),
            ms(s.fsync),
            s.state_bytes,
            *written as f64 / 1048576.0
        );
    }
    // A v1 full snapshot writes the whole 256 MiB every time; ours write the dirtied pages.
    for (_, s, written) in &rows[1..] {
        // The guest dirtied 8 MiB each cycle: a measurement below that is no measurement.
        assert!(*written >= 8 << 20, "a stop claims to have written {written} bytes");
        assert!(*written < 128 << 20, "a later stop wrote {written} bytes");
        assert!(s.state_bytes < 10 << 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_stop_wait_for_or_refuse_running_operations() {
    let e = std::sync::Arc::new(test_engine().await);
    e.create(&small("r")).await.unwrap();

    // A buffered exec in flight: an immediate pause or stop is refused, the exec is untouched.
    let runner = {
        let e = std::sync::Arc::clone(&e);
        tokio::spawn(async move { e.exec("r", &["sh", "-c", "sleep 3; echo done"]).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let busy = e.pause("r", Duration::ZERO).await.unwrap_err();
    assert!(matches!(busy, EngineError::Busy { in_flight: 1, .. }), "{busy}");
    assert!(matches!(e.stop("r", Duration::ZERO).await, Err(EngineError::Busy { .. })));
    assert_eq!(e.thermal("r").unwrap(), Thermal::Hot);
    // With a wait, the pause happens once the exec is done, and the exec's output is whole.
    let t = Instant::now();
    e.pause("r", Duration::from_secs(20)).await.unwrap();
    assert!(t.elapsed() > Duration::from_millis(500), "the pause did not wait");
    let out = runner.await.unwrap().unwrap();
    assert_eq!((out.exit_code, out.stdout_text().as_str()), (0, "done\n"));
    assert_eq!(e.thermal("r").unwrap(), Thermal::Warm);

    // A streaming exec holds the sandbox hot until the stream is dropped.
    let req = ExecRequest::command(["sh", "-c", "echo start; sleep 2; echo end"]);
    let mut stream = e.exec_stream("r", &req, Duration::from_secs(30)).await.unwrap();
    assert!(matches!(e.stop("r", Duration::ZERO).await, Err(EngineError::Busy { .. })));
    let mut text = Vec::new();
    while let Some(event) = stream.next().await {
        if let ExecEvent::Stdout(b) = event.unwrap() {
            text.extend(b);
        }
    }
    assert_eq!(text, b"start\nend\n");
    drop(stream);
    e.stop("r", Duration::ZERO).await.unwrap().unwrap();

    // Execs racing stops and pauses: every exec succeeds (before the stop, or after a wake).
    let mut tasks = Vec::new();
    for i in 0..6 {
        let e = std::sync::Arc::clone(&e);
        tasks.push(tokio::spawn(async move {
            if i % 3 == 2 {
                let _ = e.stop("r", Duration::from_secs(30)).await.unwrap();
                None
            } else if i % 3 == 1 {
                e.pause("r", Duration::from_secs(30)).await.ok();
                None
            } else {
                Some(e.exec("r", &["echo", &format!("x{i}")]).await.unwrap().stdout_text())
            }
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        if let Some(out) = task.await.unwrap() {
            assert_eq!(out, format!("x{i}\n"));
        }
    }
    assert_eq!(e.exec("r", &["echo", "ok"]).await.unwrap().stdout_text(), "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stop_and_a_killed_qemu_lose_nothing() {
    let e = test_engine().await;
    let info = e.create(&small("f")).await.unwrap();
    e.file_write("f", "/home/lohar/data.txt", "0644", b"precious").await.unwrap();

    // The state file cannot be written (its path is a directory): the stop fails, the sandbox
    // runs on with everything.
    std::fs::create_dir(e.dir_of(&info.id).join("state")).unwrap();
    std::fs::write(e.dir_of(&info.id).join("state/blocker"), b"x").unwrap();
    let failed = e.stop("f", Duration::ZERO).await.unwrap_err();
    println!("failed stop: {failed}");
    assert_eq!(e.thermal("f").unwrap(), Thermal::Hot);
    let data = e.file_read("f", "/home/lohar/data.txt", ReadOptions::default()).await.unwrap();
    assert_eq!(data.data, b"precious");
    std::fs::remove_dir_all(e.dir_of(&info.id).join("state")).unwrap();

    // QEMU killed behind the engine's back: a clear error, then `start` boots from the disk.
    let pid: i32 = std::fs::read_to_string(e.dir_of(&info.id).join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = e.exec("f", &["true"]).await.unwrap_err();
    assert!(matches!(err, EngineError::Crashed { .. }), "{err}");
    assert_eq!(e.thermal("f").unwrap(), Thermal::Failed);
    assert_eq!(err.kind(), ErrorKind::Crashed, "{err}");
    assert!(matches!(e.exec("f", &["true"]).await, Err(EngineError::Crashed { .. })));
    e.start("f").await.unwrap();
    let data = e.file_read("f", "/home/lohar/data.txt", ReadOptions::default()).await.unwrap();
    assert_eq!(data.data, b"precious", "data written before the crash is on the disk");

    // A saved state that cannot be restored: the wake fails clearly, the sandbox stays cold
    // with its files, and `start_from_disk` brings it back without the lost memory.
    e.stop("f", Duration::ZERO).await.unwrap().unwrap();
    std::fs::write(e.dir_of(&info.id).join("state"), b"not a migration stream").unwrap();
    let broken = e.start("f").await.unwrap_err();
    // QEMU's words are in the message or its causes (the daemon logs the whole chain).
    let chain = broken.report().to_string();
    assert!(chain.contains("Not a migration stream"), "{chain}");
    assert_eq!(e.thermal("f").unwrap(), Thermal::Cold);
    e.start_from_disk("f").await.unwrap();
    let data = e.file_read("f", "/home/lohar/data.txt", ReadOptions::default()).await.unwrap();
    assert_eq!(data.data, b"precious");
    let taps_before = e.netns().interfaces().await.unwrap();
    e.destroy("f").await.unwrap();
    assert!(!e.dir_of(&info.id).exists());
    assert_eq!(e.netns().interfaces().await.unwrap().len() + 1, taps_before.len());
}
