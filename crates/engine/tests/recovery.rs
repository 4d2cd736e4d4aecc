//! A daemon restart on real VMs: records exported by one engine bring the sandboxes back in the
//! next. A sandbox that was stopped wakes with its memory; one whose daemon died while it ran
//! boots again from its disk; a record that cannot be recovered is reported, not fatal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent::{ExecRequest, ReadOptions};
use common::*;
use engine::{Engine, ErrorKind, SandboxRecord, Thermal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_bring_sandboxes_back_after_a_daemon_restart() {
    let data = tempfile::tempdir().unwrap();
    let (config, _guard) = engine_config(data.path());
    let first = Engine::new(config.clone()).await.unwrap();
    let mut spec = small("sleepy");
    spec.memory_mib = 256;
    spec.env = [("KIND".to_owned(), "sleepy".to_owned())].into();
    first.create(&spec).await.unwrap();
    first.create(&small("busy")).await.unwrap();
    first.file_write("sleepy", "/home/lohar/a.txt", "0644", b"sleepy data").await.unwrap();
    first.file_write("busy", "/home/lohar/b.txt", "0644", b"busy data").await.unwrap();
    let pid = start_sleeper(&first, "sleepy").await;
    first.stop("sleepy", Duration::ZERO).await.unwrap();

    // What a store would keep, through its JSON form.
    let mut records = Vec::new();
    for name in ["sleepy", "busy"] {
        let json = first.export(name).await.unwrap().to_json();
        records.push(SandboxRecord::from_json(&json).unwrap());
    }
    assert_eq!((records[0].thermal, records[0].snapshot), (Thermal::Cold, true));
    assert_eq!((records[1].thermal, records[1].snapshot), (Thermal::Hot, false));
    let busy_pid: i32 =
        std::fs::read_to_string(records[1].dir.join("qemu.pid")).unwrap().trim().parse().unwrap();
    // The daemon dies: nothing of it runs its cleanup; the hot sandbox's QEMU keeps running.
    first.simulate_crash();

    let mut lost = records[1].clone();
    lost.id = "lost".into();
    lost.dir = data.path().join("sandboxes/lost");
    records.push(lost);
    let (second, failed) = Engine::new_recovering(config, records).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "lost");
    assert_eq!(failed[0].1.kind(), ErrorKind::NotFound, "{}", failed[0].1);
    let gone = std::fs::read_to_string(format!("/proc/{busy_pid}/stat"))
        .map_or(true, |s| s.contains(") Z"));
    assert!(gone, "the dead daemon's QEMU still runs");
    let names: Vec<_> = second.list().into_iter().map(|s| (s.id, s.thermal)).collect();
    assert_eq!(names, [("busy".to_owned(), Thermal::Cold), ("sleepy".to_owned(), Thermal::Cold)]);

    // The stopped one wakes with its memory: the process still runs.
    assert!(process_alive(&second, "sleepy", pid).await);
    let out = second.exec("sleepy", &["sh", "-c", "echo $KIND"]).await.unwrap();
    assert_eq!(out.stdout_text(), "sleepy\n");
    let read =
        second.file_read("sleepy", "/home/lohar/a.txt", ReadOptions::default()).await.unwrap();
    assert_eq!(read.data, b"sleepy data");
    // The running one boots again from its disk: its files are there.
    let read = second.file_read("busy", "/home/lohar/b.txt", ReadOptions::default()).await.unwrap();
    assert_eq!(read.data, b"busy data");
    assert_eq!(second.thermal("busy").unwrap(), Thermal::Hot);
    // The pool knows both addresses: a new sandbox gets a third one.
    let third = second.create(&small("third")).await.unwrap();
    let ips: Vec<_> = second.list().into_iter().map(|s| s.ip).collect();
    assert_eq!(ips.iter().filter(|ip| **ip == third.ip).count(), 1, "{ips:?}");
    for name in ["busy", "sleepy", "third"] {
        second.destroy(name).await.unwrap();
    }
}

/// A clean daemon shutdown suspends every sandbox, even one with a shell attached, and the next
/// engine wakes it with its memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_suspends_everything_and_the_next_engine_wakes_it() {
    let data = tempfile::tempdir().unwrap();
    let (config, _guard) = engine_config(data.path());
    let first = Engine::new(config.clone()).await.unwrap();
    let mut spec = small("kept");
    spec.memory_mib = 256;
    first.create(&spec).await.unwrap();
    let pid = start_sleeper(&first, "kept").await;
    // An attached shell holds a lease: a plain stop would be refused as busy.
    let shell = first.shell("kept", &ExecRequest::command(["sh"])).await.unwrap();
    assert!(first.stop("kept", Duration::ZERO).await.is_err());

    let records = first.shutdown(Duration::from_millis(200), Duration::from_secs(60)).await;
    assert_eq!(records.len(), 1);
    let (id, result) = &records[0];
    assert_eq!(id, "kept");
    let (record, error) = result.as_ref().unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!((record.thermal, record.snapshot), (Thermal::Cold, true));
    // The gate is closed: nothing starts once a shutdown began.
    assert_eq!(first.lease("kept").await.unwrap_err().kind(), ErrorKind::ShuttingDown);
    assert_eq!(first.create(&small("late")).await.unwrap_err().kind(), ErrorKind::ShuttingDown);
    assert_eq!(first.start("kept").await.unwrap_err().kind(), ErrorKind::ShuttingDown);
    drop(shell);
    drop(first);

    let (second, failed) = Engine::new_recovering(config, vec![record.clone()]).await.unwrap();
    assert!(failed.is_empty());
    assert!(process_alive(&second, "kept", pid).await, "the process did not survive the restart");
    second.destroy("kept").await.unwrap();
}
