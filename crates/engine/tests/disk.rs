//! Disk size on real VMs: the overlay grows to the requested size and the guest grows its root
//! file system to fill it at boot (lohar, with the ext4 resize ioctl), against a sandbox of the
//! image's own size in the same test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

/// The root file system's size in MiB, as the guest sees it.
async fn root_mib(e: &TestEngine, id: &str) -> u64 {
    let out = e.exec(id, &["df", "-k", "/"]).await.unwrap();
    let line = out.stdout_text().lines().nth(1).unwrap().to_owned();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_disk_size_grows_the_guest_root_file_system() {
    let e = test_engine().await;
    let image_mib = std::fs::metadata(&e.image).unwrap().len() >> 20;
    e.create(&small("plain")).await.unwrap();
    let plain = root_mib(&e, "plain").await;
    assert!(plain <= image_mib, "{plain} MiB from a {image_mib} MiB image");

    let mut spec = small("big");
    spec.disk_size_mib = Some(512);
    e.create(&spec).await.unwrap();
    let big = root_mib(&e, "big").await;
    assert!(big > 450 && big <= 512, "root file system {big} MiB on a 512 MiB disk");
    let console = std::fs::read_to_string(e.dir_of("big").join("serial.log")).unwrap();
    assert!(console.contains("root filesystem grown from"), "{console}");
    // The space is usable: 200 MiB more than the image holds.
    let mut fill = agent::ExecRequest::command([
        "dd",
        "if=/dev/zero",
        "of=/home/lohar/fill",
        "bs=1M",
        "count=200",
        "conv=fsync",
    ]);
    fill.user = Some("root".into());
    let out = e.exec_request("big", &fill, Duration::from_secs(120)).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.stderr_text());
    // Through a cold cycle and a boot from the disk, the size stays.
    e.stop("big", Duration::ZERO).await.unwrap();
    assert_eq!(root_mib(&e, "big").await, big);
    e.start_from_disk("big").await.unwrap();
    assert_eq!(root_mib(&e, "big").await, big);
    let record = e.export("big").await.unwrap();
    assert_eq!(record.disk_size_mib, Some(512));
}
