//! A guest's freed memory goes back to the host (virtio-balloon free page reporting): after a
//! 512 MiB guest filled 400 MiB of tmpfs and removed it, its RAM file's allocated blocks and its
//! QEMU's RSS and PSS shrink back within 10 s; a warm sandbox's RAM file keeps none of it; a
//! stop/start and a checkpoint resume (which must present the same devices) still work, and the
//! restored guest still gives memory back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use engine::Thermal;

const MIB: u64 = 1 << 20;
/// What the guest allocates and frees.
const HOG_MIB: u64 = 400;
/// Of the 400 MiB, at least this much must come back (the guest keeps some free memory in
/// blocks smaller than the 4 MiB it reports, and its own page cache).
const RETURNED_MIB: u64 = 300;
const WITHIN: Duration = Duration::from_secs(10);

fn qemu_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(engine::layout::SandboxFiles::new(dir).pid_file())
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Bytes the file really holds on disk or in the page cache (`st_blocks * 512`, not its length).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).blocks() * 512
}

/// RSS and PSS of a process in bytes, from `/proc/<pid>/smaps_rollup`; a missing measurement
/// fails the test.
fn rss_pss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("smaps_rollup of {pid}: {e}"));
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in smaps_rollup: {text}"))
            * 1024
    };
    (field("Rss:"), field("Pss:"))
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    file: u64,
    rss: u64,
    pss: u64,
}

fn sample(ram: &Path, pid: u32) -> Sample {
    let (rss, pss) = rss_pss(pid);
    Sample { file: allocated(ram), rss, pss }
}

fn mib(b: u64) -> u64 {
    b / MIB
}

/// Fills 400 MiB of tmpfs in the guest (`/dev/shm`, grown to fit), then removes it; returns the
/// sample after the fill.
async fn allocate_and_free(e: &TestEngine, id: &str, ram: &Path, pid: u32) -> Sample {
    let fill = format!(
        "mount -o remount,size=460m /dev/shm && dd if=/dev/zero of=/dev/shm/hog bs=1M count={HOG_MIB} 2>&1"
    );
    // As root: growing /dev/shm is a remount.
    let mut req = agent::ExecRequest::command(["sh", "-c", &fill]);
    req.user = Some("root".into());
    let out = e.exec_request(id, &req, Duration::from_secs(300)).await.unwrap();
    assert_eq!(
        out.exit_code,
        0,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let full = sample(ram, pid);
    assert!(
        full.file >= HOG_MIB * MIB && full.pss >= HOG_MIB * MIB,
        "the guest's 400 MiB do not show on the host: {full:?}"
    );
    let mut req = agent::ExecRequest::command(["rm", "/dev/shm/hog"]);
    req.user = Some("root".into());
    let out = e.exec_request(id, &req, Duration::from_secs(30)).await.unwrap();
    assert_eq!(out.exit_code, 0);
    full
}

/// Waits (bounded) until the RAM file and QEMU's PSS are both at least `RETURNED_MIB` below
/// `full`; returns how long it took and the last sample.
async fn wait_returned(ram: &Path, pid: u32, full: Sample) -> (Duration, Sample) {
    let t = Instant::now();
    let enough = |s: Sample| {
        full.file.saturating_sub(s.file) >= RETURNED_MIB * MIB
            && full.pss.saturating_sub(s.pss) >= RETURNED_MIB * MIB
    };
    loop {
        let s = sample(ram, pid);
        if enough(s) {
            return (t.elapsed(), s);
        }
        assert!(
            t.elapsed() < WITHIN,
            "after {:?} the host still holds what the guest freed: full {full:?}, now {s:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print(label: &str, s: Sample) {
    println!(
        "{label:<40} RAM file {:>4} MiB, QEMU RSS {:>4} MiB, PSS {:>4} MiB",
        mib(s.file),
        mib(s.rss),
        mib(s.pss)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_guest_frees_goes_back_to_the_host_hot_warm_cold_and_after_a_checkpoint() {
    let e = test_engine().await;
    let mut spec = engine::CreateSpec::new("m", e.image.clone());
    spec.memory_mib = 512;
    e.create(&spec).await.unwrap();
    let dir = e.dir_of("m");
    let ram = engine::layout::SandboxFiles::new(&dir).ram();
    let pid = qemu_pid(&dir);
    let idle = sample(&ram, pid);
    print("booted", idle);

    // Hot: allocated, freed, given back within 10 s.
    let full = allocate_and_free(&e, "m", &ram, pid).await;
    print("400 MiB in tmpfs", full);
    let (took, back) = wait_returned(&ram, pid, full).await;
    print(&format!("freed, {:.1} s later", took.as_secs_f64()), back);

    // Warm: the paused guest's RAM file holds none of it, and stays so while paused.
    e.pause("m", Duration::ZERO).await.unwrap();
    assert_eq!(e.thermal("m").unwrap(), Thermal::Warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let warm = sample(&ram, pid);
    print("warm (paused)", warm);
    assert!(
        warm.file <= back.file + 16 * MIB && full.file - warm.file >= RETURNED_MIB * MIB,
        "a warm sandbox keeps freed pages: full {full:?}, warm {warm:?}"
    );

    // Cold: a stop and a start restore the VM with its balloon; the guest goes on, its freed
    // memory stays out of the file.
    e.stop("m", Duration::ZERO).await.unwrap();
    let cold = allocated(&ram);
    println!("cold (stopped): RAM file {} MiB", mib(cold));
    assert!(cold <= back.file + 16 * MIB, "the stopped sandbox's file grew: {cold} bytes");
    e.start("m").await.unwrap();
    assert_eq!(e.exec("m", &["echo", "woke"]).await.unwrap().stdout, b"woke\n");
    let out = e.exec("m", &["ls", "/dev/shm"]).await.unwrap();
    assert_eq!(out.stdout, b"", "the removed file came back");

    // A restored guest (it negotiated reporting before the stop) still gives memory back.
    let pid = qemu_pid(&dir);
    let full = allocate_and_free(&e, "m", &ram, pid).await;
    let (took_restored, back) = wait_returned(&ram, pid, full).await;
    print(&format!("after a cold wake: freed, {:.1} s later", took_restored.as_secs_f64()), back);

    // A checkpoint and a resume from it present the same devices (a mismatch fails the load).
    e.checkpoint("m", "cp").await.unwrap();
    e.create_from_checkpoint(engine::DEFAULT_OWNER, "cp", "clone").await.unwrap();
    assert_eq!(e.exec("clone", &["echo", "clone"]).await.unwrap().stdout, b"clone\n");
    assert_eq!(e.exec("m", &["echo", "source"]).await.unwrap().stdout, b"source\n");
    println!(
        "\nfreed memory back within {:.1} s (hot) and {:.1} s (after a cold wake); limit {} s",
        took.as_secs_f64(),
        took_restored.as_secs_f64(),
        WITHIN.as_secs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reporting_the_host_keeps_what_the_guest_freed() {
    // The same guest on an engine with reporting off: nothing comes back, so the test above
    // measures the balloon and not something else.
    let e = test_engine_with(|c| c.free_page_reporting = false).await;
    let mut spec = engine::CreateSpec::new("off", e.image.clone());
    spec.memory_mib = 512;
    e.create(&spec).await.unwrap();
    let dir = e.dir_of("off");
    let ram = engine::layout::SandboxFiles::new(&dir).ram();
    let pid = qemu_pid(&dir);
    let full = allocate_and_free(&e, "off", &ram, pid).await;
    tokio::time::sleep(WITHIN).await;
    let later = sample(&ram, pid);
    print("reporting off, 10 s after the free", later);
    assert!(
        full.file.saturating_sub(later.file) < 64 * MIB,
        "memory came back without reporting: full {full:?}, later {later:?}"
    );
}
