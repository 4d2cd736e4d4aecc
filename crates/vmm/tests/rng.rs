//! The virtio-rng device and saved states: a state saved by a QEMU without the device (every
//! checkpoint taken before it existed) loads into one with it and runs on; the other way round
//! fails, which is why every VM, booted or restored, gets it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm::{Balloon, QemuProcess, VmConfig, VmmError};

const T: Duration = Duration::from_secs(30);

fn kernel() -> PathBuf {
    let data = std::env::var_os("BHATTI_DATA_DIR").map_or("/var/lib/bhatti".into(), PathBuf::from);
    let kernel = data.join("kernel/current/vmlinux");
    assert!(kernel.exists(), "{} missing: run images/kernel/build", kernel.display());
    kernel
}

fn config(dir: &Path, name: &str, rng: bool, incoming: bool) -> VmConfig {
    let mut cfg = VmConfig::new(
        kernel(),
        "console=ttyS0".into(),
        dir.join(format!("{name}.log")),
        dir.join(format!("{name}.sock")),
    );
    cfg.memory.size_mib = 64;
    cfg.balloon = Some(Balloon { free_page_reporting: true });
    cfg.rng = rng;
    cfg.incoming = incoming;
    cfg
}

/// Boots the kernel (no disk: it probes its virtio devices, then panics for want of a root and
/// halts), pauses it and saves its state.
async fn saved_state(dir: &Path, rng: bool) -> PathBuf {
    let cfg = config(dir, if rng { "src-rng" } else { "src" }, rng, false);
    let mut qemu = QemuProcess::start(&cfg, None, T).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = std::fs::read_to_string(&cfg.serial_log).unwrap_or_default();
        if log.contains("Kernel panic") {
            break;
        }
        assert!(Instant::now() < deadline, "the kernel never got to its panic:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    qemu.qmp.stop(T).await.unwrap();
    let state = dir.join(if rng { "state-rng" } else { "state" });
    qemu.save_state(&state, T).await.unwrap();
    qemu.kill().await.unwrap();
    state
}

async fn restore(dir: &Path, state: &Path, rng: bool) -> Result<QemuProcess, VmmError> {
    let cfg = config(dir, if rng { "dst-rng" } else { "dst" }, rng, true);
    let qemu = QemuProcess::start(&cfg, None, T).await?;
    qemu.load_state(state, T).await?;
    qemu.qmp.cont(T).await?;
    Ok(qemu)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_saved_without_the_rng_loads_into_a_qemu_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let old = saved_state(dir.path(), false).await;
    let mut qemu = restore(dir.path(), &old, true).await.unwrap();
    assert!(qemu.qmp.query_status(T).await.unwrap().running);
    assert!(qemu.is_running());
    qemu.kill().await.unwrap();
    // The other way round the load fails: the device's state has nowhere to go.
    let new = saved_state(dir.path(), true).await;
    let err = match restore(dir.path(), &new, false).await {
        Ok(_) => panic!("a state with the rng loaded into a QEMU without it"),
        Err(e) => e,
    };
    eprintln!("without the device: {err}");
}
