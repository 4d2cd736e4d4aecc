//! Named checkpoints on real VMs: captured from a running sandbox that keeps running, resumed
//! as a new sandbox with the memory, processes, files and volumes of that moment, beside the
//! source (moved to a new address) or after it (keeping the address).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agent::{ExecRequest, ReadOptions};
use common::*;
use engine::{ErrorKind, Thermal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_then_resume_as_a_new_sandbox() {
    let e = test_engine().await;
    let volume = e.create_volume(engine::DEFAULT_OWNER, "work", 32).await.unwrap();
    let mut spec = small("src");
    spec.memory_mib = 256;
    spec.vcpus = 2;
    spec.volumes = vec![engine::volume::VolumeMount {
        path: volume.clone(),
        mount: "/work".into(),
        read_only: false,
    }];
    e.create(&spec).await.unwrap();
    e.file_write("src", "/home/lohar/note.txt", "0644", b"before").await.unwrap();
    e.file_write("src", "/work/vol.txt", "0644", b"volume before").await.unwrap();
    let pid = start_sleeper(&e, "src").await;

    let t = Instant::now();
    let captured = e.checkpoint("src", "cp1").await.unwrap();
    let dir = captured.dir.clone();
    assert!(captured.bytes > 0 && captured.sync <= captured.took, "{captured:?}");
    let took = t.elapsed();
    for file in ["manifest.json", "state", "ram", "root.qcow2", "config.ext4", "vol0.ext4"] {
        assert!(dir.join(file).exists(), "{file} missing from the checkpoint");
    }
    // The source keeps running and changes after the checkpoint.
    assert_eq!(e.thermal("src").unwrap(), Thermal::Hot);
    e.file_write("src", "/home/lohar/note.txt", "0644", b"after").await.unwrap();
    e.file_write("src", "/work/vol.txt", "0644", b"volume after").await.unwrap();

    // A duplicate name fails fast and does not pause the source.
    let t = Instant::now();
    let dup = e.checkpoint("src", "cp1").await.unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::AlreadyExists, "{dup}");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(e.thermal("src").unwrap(), Thermal::Hot);

    // Resumed while the source runs with the address the checkpoint remembers: the clone is
    // moved to a new address before it joins the bridge, and both run side by side.
    let t = Instant::now();
    let clone = e.create_from_checkpoint(engine::DEFAULT_OWNER, "cp1", "clone").await.unwrap();
    let resumed_in = t.elapsed();
    let src_ip = e.info("src").unwrap().ip;
    assert_ne!(clone.ip, src_ip);
    assert_eq!(clone.thermal, Thermal::Hot);
    // A resumed checkpoint is a new sandbox: its agent answers to a token of its own and no
    // longer to the source's (which the source, and every other resume, still holds).
    let (src_token, clone_token) =
        (e.export("src").await.unwrap().token, e.export("clone").await.unwrap().token);
    assert!(!clone_token.is_empty());
    assert_ne!(src_token, clone_token);
    let dial = |token: &str| {
        let ip = std::net::IpAddr::V4(clone.ip);
        let endpoint = agent::Endpoint::TcpInNetns {
            netns: e.netns().path().to_owned(),
            control: std::net::SocketAddr::new(ip, proto::limits::CONTROL_PORT),
            forward: std::net::SocketAddr::new(ip, proto::limits::FORWARD_PORT),
            device: None,
        };
        agent::AgentClient::new(endpoint, Some(token.to_owned()))
    };
    let stale = dial(&src_token).exec(&["true"]).await;
    assert!(stale.is_err(), "the clone still answers to its source's token");
    let fresh = dial(&clone_token).exec(&["true"]).await.unwrap();
    assert_eq!(fresh.exit_code, 0);
    let read = |sandbox: &'static str, path: &'static str| {
        let e = &e;
        async move { e.file_read(sandbox, path, ReadOptions::default()).await.unwrap().data }
    };
    assert_eq!(read("clone", "/home/lohar/note.txt").await, b"before");
    assert_eq!(read("clone", "/work/vol.txt").await, b"volume before");
    assert_eq!(read("src", "/home/lohar/note.txt").await, b"after", "the source was touched");
    assert_eq!(read("src", "/work/vol.txt").await, b"volume after");
    assert!(process_alive(&e, "clone", pid).await, "the process from the checkpoint is gone");
    assert_eq!(e.exec("clone", &["nproc"]).await.unwrap().stdout_text(), "2\n");
    // The guest really moved: its interface has the new address, and it reaches its source.
    let ip =
        e.exec("clone", &["sh", "-c", "ip -4 -o addr show eth0 || ifconfig eth0"]).await.unwrap();
    assert!(ip.stdout_text().contains(&clone.ip.to_string()), "{}", ip.stdout_text());
    let mut ping = ExecRequest::command(["ping", "-c", "1", "-W", "3", &src_ip.to_string()]);
    ping.user = Some("root".into());
    let ping = e.exec_request("clone", &ping, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ping.exit_code, 0, "{}{}", ping.stdout_text(), ping.stderr_text());
    let other = e.create(&small("other")).await.unwrap();
    assert!(other.ip != src_ip && other.ip != clone.ip);
    e.destroy("other").await.unwrap();

    // A checkpoint racing a stop: both finish, in some order, without a deadlock.
    let (cp, stop) =
        tokio::join!(e.checkpoint("src", "race"), e.stop("src", Duration::from_secs(30)));
    stop.unwrap();
    if let Err(err) = cp {
        assert_eq!(err.kind(), ErrorKind::WrongState, "{err}");
    }
    e.ensure_hot("src").await.unwrap();

    // A damaged checkpoint fails to resume and leaves no directory, TAP or address behind.
    let broken = e.data.path().join("checkpoints/local/broken");
    std::fs::create_dir(&broken).unwrap();
    for file in ["manifest.json", "ram", "root.qcow2", "config.ext4", "vol0.ext4"] {
        std::fs::copy(dir.join(file), broken.join(file)).unwrap();
    }
    std::fs::write(broken.join("state"), b"not a migration stream").unwrap();
    let taps = e.netns().interfaces().await.unwrap();
    e.destroy("src").await.unwrap();
    let taps_without_src = e.netns().interfaces().await.unwrap();
    assert_eq!(taps_without_src.len() + 1, taps.len());
    // The clone carries on without its source.
    assert_eq!(read("clone", "/home/lohar/note.txt").await, b"before");
    assert!(e.create_from_checkpoint(engine::DEFAULT_OWNER, "broken", "wreck").await.is_err());
    assert!(!e.data.path().join("sandboxes/wreck").exists());
    assert_eq!(e.netns().interfaces().await.unwrap(), taps_without_src);
    e.delete_checkpoint(engine::DEFAULT_OWNER, "broken").unwrap();

    // The shared volume was not touched by the clone: it has the source's last write.
    assert!(std::fs::metadata(&volume).unwrap().len() > 0);

    // Its record names its private copy of the volume.
    let record = e.export("clone").await.unwrap();
    assert_eq!(record.volumes[0].path, e.data.path().join("sandboxes/clone/scratch0.ext4"));
    assert_eq!(record.volumes[0].mount, "/work");

    // The resumed sandbox is a full sandbox: it goes cold and wakes again, volume included.
    e.stop("clone", Duration::from_secs(5)).await.unwrap();
    assert_eq!(read("clone", "/home/lohar/note.txt").await, b"before");
    assert_eq!(read("clone", "/work/vol.txt").await, b"volume before");

    // Nested: a checkpoint of the resumed sandbox resumes too, with what was added since.
    e.file_write("clone", "/home/lohar/nested.txt", "0644", b"second generation").await.unwrap();
    e.checkpoint("clone", "cp-nested").await.unwrap();
    e.destroy("clone").await.unwrap();
    // Its address is free again, so this resume keeps it (no move).
    let again =
        e.create_from_checkpoint(engine::DEFAULT_OWNER, "cp-nested", "clone").await.unwrap();
    assert_eq!(again.ip, clone.ip);
    assert_eq!(read("clone", "/home/lohar/nested.txt").await, b"second generation");
    assert_eq!(read("clone", "/home/lohar/note.txt").await, b"before");
    assert!(process_alive(&e, "clone", pid).await);

    // A cold sandbox cannot be checkpointed; a checkpoint resumes only once at a time.
    e.stop("clone", Duration::from_secs(5)).await.unwrap();
    let cold = e.checkpoint("clone", "cp2").await.unwrap_err();
    assert_eq!(cold.kind(), ErrorKind::WrongState, "{cold}");
    assert!(!e.data.path().join("checkpoints/local/cp2").exists());
    assert!(!e.data.path().join("checkpoints/local/cp2.tmp").exists());
    println!(
        "checkpoint of a 256 MiB guest: {took:?} ({:.1} MiB on disk, {:?} of it flushing); \
         resume as a new sandbox: {resumed_in:?}",
        captured.bytes as f64 / 1048576.0,
        captured.sync
    );
    e.delete_checkpoint(engine::DEFAULT_OWNER, "cp1").unwrap();
    assert!(
        e.delete_checkpoint(engine::DEFAULT_OWNER, "cp1").unwrap_err().kind()
            == ErrorKind::NotFound
    );
    assert!(
        e.create_from_checkpoint(engine::DEFAULT_OWNER, "cp1", "again").await.unwrap_err().kind()
            == ErrorKind::NotFound
    );
}
