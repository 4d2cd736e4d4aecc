//! D5's RAM placements measured on one guest size in one run: guest RAM in a shared file on
//! disk with device-only state (the engine's choice), against anonymous RAM saved whole with
//! QEMU's `mapped-ram` migration. (The third, a RAM file on tmpfs copied out at stop, was
//! measured in issue 5's first session: 584 ms vs 165 ms; see the README.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use agent::ReadOptions;
use common::*;
use proto::guest::GuestConfig;
use vmm::{QemuProcess, StateFormat};

const MEMORY_MIB: u32 = 512;

/// Makes the guest use memory like a workload (a 64 MiB file in tmpfs) and leaves a marker.
async fn dirty(client: &agent::AgentClient, round: usize) {
    let out =
        client.exec(&["dd", "if=/dev/urandom", "of=/tmp/fill", "bs=1M", "count=64"]).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.stderr_text());
    client.file_write("/home/lohar/round", "0644", round.to_string().as_bytes()).await.unwrap();
}

async fn check(client: &agent::AgentClient, round: usize) {
    let read = client.file_read("/home/lohar/round", ReadOptions::default()).await.unwrap();
    assert_eq!(read.data, round.to_string().as_bytes());
}

fn allocated(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_file_on_disk_against_mapped_ram() {
    let net = TestNet::new().await;
    let rounds = 3;

    // The engine's way: RAM in a shared file, device state only, fsync of what changed.
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_for(&net, 3, MEMORY_MIB, GuestConfig::default(), dir.path(), true);
    let mut vm = engine::vm::boot(&net.ns, &spec).await.unwrap();
    let state = dir.path().join("state");
    let (mut file_stop, mut file_wake, mut file_bytes) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        dirty(&vm.client, round).await;
        let before = disk_written_bytes(dir.path());
        let (suspended, client) = engine::vm::suspend_to_disk(vm, &spec, &state).await.unwrap();
        file_stop.push(ms(suspended.total));
        file_bytes.push(disk_written_bytes(dir.path()).saturating_sub(before) as f64);
        let t = Instant::now();
        vm = engine::vm::restore_from_disk(&net.ns, &spec, &state, Some(client)).await.unwrap();
        file_wake.push(ms(t.elapsed()));
        check(&vm.client, round).await;
    }
    drop(vm);

    // mapped-ram: anonymous RAM, all of it written to the state file at every stop.
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_for(&net, 4, MEMORY_MIB, GuestConfig::default(), dir.path(), false);
    // Declared before the VM: dropped after it, once every QEMU is gone.
    let mut cgroups = Vec::new();
    let mut vm = engine::vm::boot(&net.ns, &spec).await.unwrap();
    let client = std::sync::Arc::clone(&vm.client);
    let (mut mapped_stop, mut mapped_wake, mut mapped_bytes) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        dirty(&client, round).await;
        let state = dir.path().join(format!("state-{round}"));
        let before = disk_written_bytes(dir.path());
        let t = Instant::now();
        vm.qemu.qmp.stop(Duration::from_secs(5)).await.unwrap();
        vm.qemu
            .save_state_as(&state, StateFormat::MappedRam, Duration::from_secs(120))
            .await
            .unwrap();
        vm.qemu.qmp.quit(Duration::from_secs(5)).await.unwrap();
        vm.qemu.wait(Duration::from_secs(10)).await.unwrap();
        std::fs::File::open(&state).unwrap().sync_all().unwrap();
        mapped_stop.push(ms(t.elapsed()));
        mapped_bytes.push(disk_written_bytes(dir.path()).saturating_sub(before) as f64);
        assert!(allocated(&state) > 32 << 20, "mapped-ram wrote only {} bytes", allocated(&state));

        let t = Instant::now();
        let tap = net.ns.open_tap(&spec.tap, &spec.bridge).await.unwrap();
        let mut cfg = engine::vm::vm_config(&spec).unwrap();
        // Started by hand, so its cgroup is removed by hand (after its QEMU, at the end).
        cgroups.extend(
            cfg.jail.as_ref().and_then(engine::jail::cgroup_of).map(engine::jail::CgroupGuard::new),
        );
        cfg.incoming = true;
        let qemu = QemuProcess::start(&cfg, Some(tap), Duration::from_secs(10)).await.unwrap();
        qemu.load_state_as(&state, StateFormat::MappedRam, Duration::from_secs(120)).await.unwrap();
        qemu.qmp.cont(Duration::from_secs(5)).await.unwrap();
        client.activity().await.unwrap();
        mapped_wake.push(ms(t.elapsed()));
        vm.qemu = qemu;
        check(&client, round).await;
    }

    println!(
        "\nRAM placement ({MEMORY_MIB} MiB guest, 64 MiB of tmpfs rewritten per round, {rounds} rounds)\n"
    );
    println!(
        "| placement | stop p50 ms | stop max ms | wake p50 ms | bytes written per stop p50 |"
    );
    println!("|---|---|---|---|---|");
    for (name, stop, wake, bytes) in [
        ("RAM file on disk, device state only (chosen)", &file_stop, &file_wake, &file_bytes),
        ("anonymous RAM, mapped-ram state file", &mapped_stop, &mapped_wake, &mapped_bytes),
    ] {
        let (s50, _, s99) = p50_95_99(stop);
        println!(
            "| {name} | {s50:.0} | {s99:.0} | {:.0} | {:.1} MiB |",
            p50_95_99(wake).0,
            p50_95_99(bytes).0 / 1048576.0
        );
    }
    let (file_p50, mapped_p50) = (p50_95_99(&file_stop).0, p50_95_99(&mapped_stop).0);
    println!("\nstop p50, file / mapped-ram: {:.2}x\n", file_p50 / mapped_p50);
    assert!(file_stop.iter().chain(&mapped_stop).all(|t| *t < 60_000.0));
}
