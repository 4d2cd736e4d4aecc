//! Thermal states on a real VM: warm (vCPUs paused, memory kept) and cold (device state saved
//! beside the RAM file, QEMU gone, memory freed), each woken and checked for lost state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agent::{ExecRequest, ReadOptions};
use common::*;
use proto::guest::GuestConfig;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_and_cold_wake_keep_processes_and_files() {
    let net = TestNet::new().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_for(&net, 3, 256, GuestConfig::default(), dir.path(), true);
    let vm = engine::vm::boot(&net.ns, &spec).await.unwrap();

    // Baseline: plain exec on a running guest.
    let mut plain = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(vm.client.exec(&["true"]).await.unwrap().exit_code, 0);
        plain.push(ms(t.elapsed()));
    }

    // State that must survive: a file and a running process.
    vm.client.file_write("/home/lohar/state.txt", "0644", b"before suspend").await.unwrap();
    let mut sleeper = ExecRequest::command(["sleep", "600"]);
    sleeper.output_file = Some("/tmp/sleeper.log".into());
    let pid = vm.client.exec_detached(&sleeper).await.unwrap().pid;

    // Warm: pause, resume, exec.
    let mut warm = Vec::new();
    for _ in 0..5 {
        engine::vm::pause(&vm).await.unwrap();
        assert_eq!(
            vm.qemu.qmp.query_status(Duration::from_secs(5)).await.unwrap().status,
            "paused"
        );
        let t = Instant::now();
        engine::vm::unpause(&vm).await.unwrap();
        assert_eq!(vm.client.exec(&["true"]).await.unwrap().exit_code, 0);
        warm.push(ms(t.elapsed()));
    }

    // Cold: device state to a file, RAM stays in its file, QEMU exits.
    let qemu_pid = vm.qemu.pid;
    let state = dir.path().join("state");
    let (suspended, client) = engine::vm::suspend_to_disk(vm, &spec, &state).await.unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{qemu_pid}")).exists(), "QEMU still running");
    // Stay cold long enough for a stale guest clock to show.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let t = Instant::now();
    let vm = engine::vm::restore_from_disk(&net.ns, &spec, &state, Some(client)).await.unwrap();
    let cold_ready = ms(t.elapsed());
    let t = Instant::now();
    vm.client.file_stat("/").await.unwrap();
    let cold_stat = ms(t.elapsed());
    assert_eq!(vm.client.exec(&["true"]).await.unwrap().exit_code, 0);
    let cold_wake = cold_ready + cold_stat + ms(t.elapsed());

    // A second cold cycle, this time with a fresh client: its first connection is new.
    let (second, _) = engine::vm::suspend_to_disk(vm, &spec, &state).await.unwrap();
    let t = Instant::now();
    let vm = engine::vm::restore_from_disk(&net.ns, &spec, &state, None).await.unwrap();
    let cold_ready_new_conn = ms(t.elapsed());

    let file = vm.client.file_read("/home/lohar/state.txt", ReadOptions::default()).await.unwrap();
    assert_eq!(file.data, b"before suspend");
    // The guest clock was corrected on wake (it stood still while suspended).
    let guest_now: i64 =
        vm.client.exec(&["date", "+%s"]).await.unwrap().stdout_text().trim().parse().unwrap();
    let host_now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
            as i64;
    // Within 2 s (an exec takes a few hundred ms here); a stale clock would be 4 s or more late.
    assert!((guest_now - host_now).abs() <= 2, "guest clock {guest_now}, host {host_now}");
    let alive = vm.client.exec(&["kill", "-0", &pid.to_string()]).await.unwrap();
    assert_eq!(alive.exit_code, 0, "the process started before the suspend is gone");

    println!("\nthermal (TCG, 256 MiB guest, RAM file on disk)\n");
    println!("| measurement | n | p50 | p95 / value |\n|---|---|---|---|");
    println!(
        "| plain exec `true` | {} | {:.1} ms | {:.1} ms |",
        plain.len(),
        p(&plain, 50.0),
        p(&plain, 95.0)
    );
    println!(
        "| warm wake (cont) + exec `true` | {} | {:.1} ms | {:.1} ms |",
        warm.len(),
        p(&warm, 50.0),
        p(&warm, 95.0)
    );
    println!(
        "| cold stop: stop + save + quit + fsync | 1 | {:.1} ms | save {:.1} ms, fsync {:.1} ms, state {} bytes |",
        ms(suspended.total),
        ms(suspended.save),
        ms(suspended.fsync),
        suspended.state_bytes
    );
    println!(
        "| cold wake to agent answering, pooled connection | 1 | {cold_ready:.1} ms | then stat {cold_stat:.1} ms |"
    );
    println!(
        "| cold wake to agent answering, new connection | 1 | {cold_ready_new_conn:.1} ms | |"
    );
    println!("| cold wake + exec `true` (pooled) | 1 | {cold_wake:.1} ms | |");
    println!(
        "| second cold stop | 1 | {:.1} ms | fsync {:.1} ms (only what changed since the first) |",
        ms(second.total),
        ms(second.fsync)
    );
    println!("| warm p50 / plain p50 | | {:.2}x | |\n", p(&warm, 50.0) / p(&plain, 50.0));
    // Loose bounds for a noisy machine; the table is what we report.
    assert!(p(&warm, 99.0) < 2_000.0, "warm wake p99 {:?}", warm);
    assert!(cold_wake < 30_000.0);
    assert!(
        suspended.state_bytes < 10 * 1024 * 1024,
        "state file carried RAM: {} bytes",
        suspended.state_bytes
    );
}
