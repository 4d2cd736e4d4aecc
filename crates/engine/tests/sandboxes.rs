//! The sandbox registry on real VMs: create, exec, duplicate and bad names, destroy with
//! cleanup of the TAP, the address and every file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use engine::{CreateSpec, Engine, ErrorKind};

fn dir_in(data: &std::path::Path, id: &str) -> std::path::PathBuf {
    engine::layout::DataDir::new(data).sandbox(id).dir().to_owned()
}

fn spec(name: &str, image: &std::path::Path) -> CreateSpec {
    let mut spec = CreateSpec::new(name, image);
    spec.memory_mib = 128;
    spec.env = [("SANDBOX".to_owned(), name.to_owned())].into();
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exec_destroy_and_cleanup() {
    let (_, image) = artifacts();
    let data = tempfile::tempdir().unwrap();
    let (config, _cleanup) = engine_config(data.path());
    let engine = Engine::new(config).await.unwrap();

    // Two at once: the boot limit (1 here) serialises them, both succeed. Serialised means one
    // QEMU started (its pid file written) only after the other's create had its agent ready.
    let (alpha_spec, beta_spec) = (spec("alpha", &image), spec("beta", &image));
    let timed = |spec| {
        let engine = &engine;
        async move {
            let info = engine.create(spec).await;
            (info, std::time::SystemTime::now())
        }
    };
    let ((alpha, alpha_done), (beta, beta_done)) =
        tokio::join!(timed(&alpha_spec), timed(&beta_spec));
    let (alpha, beta) = (alpha.unwrap(), beta.unwrap());
    let started = |id: &str| {
        std::fs::metadata(dir_in(data.path(), id).join("qemu.pid")).unwrap().modified().unwrap()
    };
    let (alpha_start, beta_start) = (started("alpha"), started("beta"));
    // The permit goes back just before the create returns (then the registry entry is made):
    // 50 ms of slack, against boots of seconds.
    let slack = std::time::Duration::from_millis(50);
    let serialised = if alpha_start < beta_start {
        beta_start + slack >= alpha_done
    } else {
        alpha_start + slack >= beta_done
    };
    assert!(serialised, "both QEMUs booted at once: {alpha_start:?} {beta_start:?}");
    assert_ne!(alpha.ip, beta.ip);
    for name in ["alpha", "beta"] {
        let out = engine.exec(name, &["sh", "-c", "hostname; echo $SANDBOX"]).await.unwrap();
        assert_eq!(out.stdout_text(), format!("{name}\n{name}\n"));
    }

    assert_eq!(
        engine.create(&spec("alpha", &image)).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        engine.create(&spec("Bad_Name", &image)).await.unwrap_err().kind(),
        ErrorKind::Invalid
    );
    assert!(engine.exec("nope", &["true"]).await.unwrap_err().kind() == ErrorKind::NotFound);
    assert!(engine.destroy("nope").await.unwrap_err().kind() == ErrorKind::NotFound);

    let taps_before = engine.netns().interfaces().await.unwrap();
    let neighbours = engine.netns().neighbours("br0").await.unwrap();
    assert!(neighbours.contains(&alpha.ip) && neighbours.contains(&beta.ip), "{neighbours:?}");
    engine.destroy("alpha").await.unwrap();
    let neighbours = engine.netns().neighbours("br0").await.unwrap();
    assert!(!neighbours.contains(&alpha.ip) && neighbours.contains(&beta.ip), "{neighbours:?}");
    assert!(!dir_in(data.path(), &alpha.id).exists(), "sandbox files left behind");
    let taps_after = engine.netns().interfaces().await.unwrap();
    assert_eq!(taps_after.len() + 1, taps_before.len(), "{taps_before:?} -> {taps_after:?}");
    assert!(engine.info("alpha").unwrap_err().kind() == ErrorKind::NotFound);
    assert_eq!(engine.list().iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["beta"]);

    // The pool hands out new addresses (alpha's is reused last) and the name is free again.
    let again = engine.create(&spec("alpha", &image)).await.unwrap();
    assert_ne!(again.ip, alpha.ip);
    engine.destroy("alpha").await.unwrap();
    engine.destroy("beta").await.unwrap();
    assert!(engine.list().is_empty());
    assert!(!dir_in(data.path(), &beta.id).exists());
}

/// An engine that dies (no destroy, no drop) leaves QEMU running; the next engine on the same
/// data directory kills it and removes the sandbox's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_removes_what_a_crashed_one_left() {
    let (_, image) = artifacts();
    let data = tempfile::tempdir().unwrap();
    let (config, _cleanup) = engine_config(data.path());
    let first = Engine::new(config.clone()).await.unwrap();
    let info = first.create(&spec("orphan", &image)).await.unwrap();
    let pid: i32 = std::fs::read_to_string(dir_in(data.path(), &info.id).join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // One engine per data directory: a second one would take the first's sandboxes for orphans.
    let second = Engine::new(config.clone()).await.unwrap_err();
    assert!(second.to_string().contains("in use by another engine"), "{second}");
    // Simulate a crash: nothing of the first engine runs its cleanup.
    first.simulate_crash();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    let second = Engine::new(config).await.unwrap();
    let gone =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"));
    assert!(gone, "the orphaned QEMU still runs");
    assert!(!dir_in(data.path(), &info.id).exists(), "the orphan's files are still there");
    assert!(second.list().is_empty());
    // Its address and name are usable again.
    second.create(&spec("orphan", &image)).await.unwrap();
    second.destroy("orphan").await.unwrap();
}
