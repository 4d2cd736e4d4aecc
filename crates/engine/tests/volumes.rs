//! Persistent volumes on real VMs: attached at create (read-write and read-only), owned by the
//! guest user, surviving stop/start and the sandbox's destruction, attached to another sandbox
//! later, never attached read-write twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use engine::ErrorKind;

use std::time::Duration;

use agent::{ExecRequest, ReadOptions};
use common::*;
use engine::volume::VolumeMount;

fn mount(path: &std::path::Path, at: &str, read_only: bool) -> VolumeMount {
    VolumeMount { path: path.to_owned(), mount: at.into(), read_only }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_persist_across_sandboxes_and_read_only_is_enforced() {
    let e = test_engine().await;
    let data = e.create_volume(engine::DEFAULT_OWNER, "data", 64).await.unwrap();
    let reference = e.create_volume(engine::DEFAULT_OWNER, "reference", 16).await.unwrap();
    let cache = e.create_volume(engine::DEFAULT_OWNER, "cache", 16).await.unwrap();
    assert_eq!(
        e.create_volume(engine::DEFAULT_OWNER, "data", 64).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );

    let mut spec = small("first");
    spec.memory_mib = 256;
    spec.volumes = vec![
        mount(&data, "/data", false),
        mount(&reference, "/ref", true),
        mount(&cache, "/home/lohar/cache", false),
    ];
    e.create(&spec).await.unwrap();
    // Three devices, each mounted where asked; writable ones owned by the guest user.
    let out = e
        .exec(
            "first",
            &[
                "sh",
                "-c",
                "stat -c '%n %u' /data /home/lohar/cache; grep -c '^/dev/vd[cde] ' /proc/mounts",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "/data 1000\n/home/lohar/cache 1000\n3\n");
    e.file_write("first", "/data/kept.txt", "0644", b"survives").await.unwrap();
    let mut root = ExecRequest::command(["touch", "/ref/x"]);
    root.user = Some("root".into());
    let ro = e.exec_request("first", &root, Duration::from_secs(30)).await.unwrap();
    assert_ne!(ro.exit_code, 0, "a read-only volume was writable even for root");
    assert!(ro.stderr_text().contains("Read-only"), "{}", ro.stderr_text());

    // Survives a cold cycle.
    e.stop("first", Duration::ZERO).await.unwrap();
    let read = e.file_read("first", "/data/kept.txt", ReadOptions::default()).await.unwrap();
    assert_eq!(read.data, b"survives");

    // Attached read-write: a second writer and a delete are refused; read-only sharing is fine.
    let mut second = small("second");
    second.volumes = vec![mount(&data, "/data", false)];
    let twice = e.create(&second).await.unwrap_err();
    assert_eq!(twice.kind(), ErrorKind::InUse, "{twice}");
    assert_eq!(
        e.delete_volume(engine::DEFAULT_OWNER, "data").unwrap_err().kind(),
        ErrorKind::InUse
    );
    // Read-only attachments count too: the file a sandbox reads cannot be deleted under it, and
    // nobody may write it meanwhile.
    assert_eq!(
        e.delete_volume(engine::DEFAULT_OWNER, "reference").unwrap_err().kind(),
        ErrorKind::InUse
    );
    let mut writer = small("writer");
    writer.volumes = vec![mount(&reference, "/ref", false)];
    assert!(e.create(&writer).await.is_err());
    // Another sandbox's files are not volumes.
    let mut thief = small("thief");
    let ram = e.dir_of("first").join("ram");
    thief.volumes = vec![mount(&ram, "/stolen", true)];
    let stolen = e.create(&thief).await.unwrap_err();
    assert_eq!(stolen.kind(), ErrorKind::NotFound, "{stolen}");
    assert!(!stolen.to_string().contains('/'), "no host paths in messages: {stolen}");
    // Bad mount points are refused before anything boots.
    for bad in ["/etc", "relative", "/data/../usr"] {
        let mut spec = small("bad");
        spec.volumes = vec![mount(&cache, bad, true)];
        assert_eq!(e.create(&spec).await.unwrap_err().kind(), ErrorKind::Invalid, "{bad}");
    }

    // The sandbox goes; the volume and its data stay, and the next sandbox sees them.
    e.destroy("first").await.unwrap();
    assert!(data.exists());
    let mut later = small("later");
    later.volumes = vec![mount(&data, "/mnt/data", false)];
    e.create(&later).await.unwrap();
    let read = e.file_read("later", "/mnt/data/kept.txt", ReadOptions::default()).await.unwrap();
    assert_eq!(read.data, b"survives");
    e.destroy("later").await.unwrap();
    e.delete_volume(engine::DEFAULT_OWNER, "data").unwrap();
    assert!(!data.exists());
    assert!(
        e.delete_volume(engine::DEFAULT_OWNER, "data").unwrap_err().kind() == ErrorKind::NotFound
    );
}
