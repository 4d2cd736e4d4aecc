//! QEMUs started ahead for cold wakes (`vm/pool.rs`), on real VMs: a wake takes the pooled QEMU
//! and is faster for it (measured against an engine without the pool, interleaved); the pool
//! never holds more than its capacity; a pooled QEMU that died is not used; a destroy, a boot
//! from the disk, a second stop/start cycle, the TTL and the engine's shutdown leave no QEMU
//! behind. Run with `--nocapture` for the table, `RUST_LOG=engine=debug` for each restore's
//! parts ("restored from disk": tap, qemu, load, cont, ready, pooled).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The pids of the processes whose command line contains `pattern` (`pgrep -f`).
fn pgrep(pattern: &Path) -> Vec<u32> {
    let out = std::process::Command::new("pgrep").arg("-f").arg(pattern).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The QEMU of sandbox `id` (its command line names the sandbox's QMP socket), if one runs.
fn qemu_of(e: &TestEngine, id: &str) -> Option<u32> {
    let pids = pgrep(&e.dir_of(id).join("qmp.sock"));
    assert!(pids.len() <= 1, "{id} has {} QEMUs: {pids:?}", pids.len());
    pids.first().copied()
}

/// QEMUs running on the test's own data directory.
fn qemus(e: &TestEngine) -> usize {
    pgrep(e.data.path()).len()
}

/// Waits (bounded) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops `id` and waits until its next QEMU was started ahead; returns that QEMU's pid.
async fn stop_and_pool(e: &TestEngine, id: &str) -> u32 {
    e.stop(id, Duration::ZERO).await.unwrap().expect("a hot sandbox saves its memory");
    // The stop answers first; the owner starts the next QEMU right after.
    until(&format!("{id}'s next QEMU waits"), || qemu_of(e, id).is_some()).await;
    qemu_of(e, id).unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn p50(values: &[f64]) -> f64 {
    p50_95_99(values).0
}

/// Cold wake + exec `true`, pool on and off (two engines, one 256 MiB sandbox each, cycles
/// interleaved): the wake takes the QEMU started ahead (same pid) and is not slower for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_wake_takes_the_qemu_started_ahead_and_is_faster() {
    init_log();
    let on = test_engine_with(|c| c.restore_pool = 2).await;
    let off = test_engine_with(|c| c.restore_pool = 0).await;
    for e in [&on, &off] {
        let mut spec = small("p");
        spec.memory_mib = 256;
        e.create(&spec).await.unwrap();
        // Warm the guest's own paths once.
        e.exec("p", &["true"]).await.unwrap();
    }
    let (mut with_pool, mut without, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..8 {
        // Pool on: the wake's QEMU is the one started ahead.
        let pooled = stop_and_pool(&on, "p").await;
        rss.push(rss_kib(pooled) as f64 / 1024.0);
        let t = Instant::now();
        assert_eq!(on.exec("p", &["true"]).await.unwrap().exit_code, 0);
        with_pool.push(ms(t.elapsed()));
        assert_eq!(qemu_of(&on, "p"), Some(pooled), "the wake did not take the pooled QEMU");
        // Pool off: no QEMU waits after the stop; the wake starts one.
        off.stop("p", Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(qemu_of(&off, "p"), None, "a QEMU waits with the pool off");
        let t = Instant::now();
        assert_eq!(off.exec("p", &["true"]).await.unwrap().exit_code, 0);
        without.push(ms(t.elapsed()));
    }
    let (p_on, p_off) = (p50(&with_pool), p50(&without));
    println!("\ncold wake + exec `true` (256 MiB guest, TCG), n = 8 each, interleaved\n");
    println!("| pool | p50 ms | p95 ms | runs |\n|---|---|---|---|");
    println!(
        "| off (restore_pool: 0) | {p_off:.1} | {:.1} | {without:.0?} |",
        p50_95_99(&without).1
    );
    println!(
        "| on (restore_pool: 2) | {p_on:.1} | {:.1} | {with_pool:.0?} |",
        p50_95_99(&with_pool).1
    );
    println!("| on / off | {:.2}x | | |", p_on / p_off);
    println!("pooled QEMU RSS while it waits: p50 {:.1} MiB ({rss:.1?})", p50(&rss));
    assert!(p_on <= p_off * 1.1, "pool on p50 {p_on:.0} ms, off {p_off:.0} ms");
}

/// Capacity 2 and three sandboxes: the oldest's QEMU ends. A pooled QEMU killed meanwhile is
/// not used; a destroy, a boot from the disk, stop/start cycles and the shutdown leave no QEMU
/// of their own behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_stays_bounded_and_every_host_operation_ends_its_qemu() {
    init_log();
    let e = test_engine_with(|c| c.restore_pool = 2).await;
    for id in ["a", "b", "c"] {
        e.create(&small(id)).await.unwrap();
    }
    // Three go cold: only the two most recent keep a QEMU waiting.
    stop_and_pool(&e, "a").await;
    stop_and_pool(&e, "b").await;
    assert_eq!(qemus(&e), 3, "a's and b's waiting, c's running");
    let c = stop_and_pool(&e, "c").await;
    until("a's QEMU is ended", || qemu_of(&e, "a").is_none()).await;
    // All three cold: only the pool's QEMUs run.
    assert_eq!(qemus(&e), 2, "the pool holds more than its capacity");
    assert!(qemu_of(&e, "b").is_some());

    // A pooled QEMU that died is not used: the wake starts its own.
    let b = qemu_of(&e, "b").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(b as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    until("the killed QEMU is gone", || !pgrep(&e.dir_of("b").join("qmp.sock")).contains(&b)).await;
    assert_eq!(e.exec("b", &["echo", "ok"]).await.unwrap().stdout_text(), "ok\n");
    let woke = qemu_of(&e, "b").unwrap();
    assert_ne!(woke, b);

    // A wake of a sandbox whose QEMU was ended by the capacity starts one as before.
    assert_eq!(e.exec("a", &["echo", "ok"]).await.unwrap().stdout_text(), "ok\n");

    // Destroying a cold sandbox ends its waiting QEMU.
    assert_eq!(qemu_of(&e, "c"), Some(c));
    e.destroy("c").await.unwrap();
    assert_eq!(qemu_of(&e, "c"), None, "the destroy left c's pooled QEMU");

    // Two stop/start cycles: each start takes the QEMU its stop started ahead.
    for _ in 0..2 {
        let pooled = stop_and_pool(&e, "b").await;
        e.start("b").await.unwrap();
        assert_eq!(qemu_of(&e, "b"), Some(pooled));
        assert_eq!(e.exec("b", &["echo", "ok"]).await.unwrap().stdout_text(), "ok\n");
    }

    // A boot from the disk ends the waiting QEMU first (it holds the TAP and the disk).
    let pooled = stop_and_pool(&e, "b").await;
    e.start_from_disk("b").await.unwrap();
    let booted = qemu_of(&e, "b").unwrap();
    assert_ne!(booted, pooled);
    assert_eq!(e.exec("b", &["echo", "ok"]).await.unwrap().stdout_text(), "ok\n");

    // Never more than the capacity, whatever happened above.
    stop_and_pool(&e, "a").await;
    stop_and_pool(&e, "b").await;
    assert_eq!(qemus(&e), 2);

    // The shutdown ends the waiting QEMUs (the cold sandboxes stay cold).
    let results = e.shutdown(Duration::ZERO, Duration::from_secs(60)).await;
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    assert_eq!(qemus(&e), 0, "QEMUs left after the shutdown");
}

/// A QEMU started ahead waits at most the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_started_ahead_ends_after_its_ttl() {
    init_log();
    let e = test_engine_with(|c| {
        c.restore_pool = 2;
        c.restore_pool_ttl = Duration::from_secs(2);
    })
    .await;
    e.create(&small("t")).await.unwrap();
    let t = Instant::now();
    stop_and_pool(&e, "t").await;
    until("the QEMU's TTL ended it", || qemu_of(&e, "t").is_none()).await;
    assert!(t.elapsed() >= Duration::from_secs(2));
    // The wake starts a QEMU of its own.
    assert_eq!(e.exec("t", &["echo", "ok"]).await.unwrap().stdout_text(), "ok\n");
}

/// A QEMU started ahead by an engine that died is an orphan like any other: the next engine's
/// recovery finds it by its pid file and QMP socket and kills it, and the sandbox wakes from
/// its saved memory with a QEMU of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_started_ahead_by_a_dead_engine_is_killed_at_recovery() {
    init_log();
    let data = tempfile::tempdir().unwrap();
    let (mut config, _guard) = engine_config(data.path());
    config.restore_pool = 2;
    let socket = engine::layout::DataDir::new(data.path()).sandbox("r").qmp_socket();
    let first = engine::Engine::new(config.clone()).await.unwrap();
    first.create(&small("r")).await.unwrap();
    let sleeper = start_sleeper(&first, "r").await;
    first.stop("r", Duration::ZERO).await.unwrap().unwrap();
    until("r's next QEMU waits", || !pgrep(&socket).is_empty()).await;
    let pooled = pgrep(&socket)[0];
    let record = first.export("r").await.unwrap();
    // Nothing of the first engine runs its cleanup: its pooled QEMU stays.
    first.simulate_crash();
    assert!(Path::new(&format!("/proc/{pooled}")).exists());

    let (second, failed) = engine::Engine::new_recovering(config, vec![record]).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let gone =
        std::fs::read_to_string(format!("/proc/{pooled}/stat")).map_or(true, |s| s.contains(") Z"));
    assert!(gone, "the dead engine's pooled QEMU still runs");
    // The memory was saved: the sleeper survived, in a QEMU of the new engine.
    assert!(process_alive(&second, "r", sleeper).await, "the saved memory was not restored");
    let running = pgrep(&socket);
    assert_eq!(running.len(), 1);
    assert_ne!(running[0], pooled);
    second.destroy("r").await.unwrap();
    assert!(pgrep(&socket).is_empty());
}
