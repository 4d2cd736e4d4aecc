//! Streams, not buffers, on real VMs: files streamed in and out of the guest with the size
//! known before the body and caps enforced, a refused write answered before any content, and a
//! forwarded port used as a plain async byte stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use engine::{ErrorKind, GuestErrorKind, ReadOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stream_both_ways_with_sizes_first_and_caps() {
    let e = test_engine().await;
    e.create(&small("s")).await.unwrap();
    // 3 MiB in, from a reader that never holds the whole file.
    let size: u64 = 3 << 20;
    let mut src = tokio::io::repeat(b'z').take(size);
    e.file_write_from("s", "/home/lohar/big.bin", "0644", size, &mut src).await.unwrap();

    // Out again: the size is known before the first byte reaches the writer.
    let mut out = Vec::new();
    let mut announced = None;
    let n = e
        .file_read_into(
            "s",
            "/home/lohar/big.bin",
            ReadOptions::default(),
            size,
            |size, mode| announced = Some((size, mode.to_owned())),
            &mut out,
        )
        .await
        .unwrap();
    assert_eq!(announced, Some((size, "0644".to_owned())));
    assert_eq!(n, size);
    assert!(out.len() as u64 == size && out.iter().all(|b| *b == b'z'));

    // Over the caller's cap: refused before the body, nothing written.
    let mut none = Vec::new();
    let err = e
        .file_read_into(
            "s",
            "/home/lohar/big.bin",
            ReadOptions::default(),
            1 << 20,
            |_, _| {},
            &mut none,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Guest(GuestErrorKind::TooLarge), "{err}");
    assert!(none.is_empty());

    // A target that cannot be created is refused before any content is read: the source here
    // never yields a byte, so waiting for the content would hang.
    let (_keep_open, mut silent) = tokio::io::duplex(64);
    let t = Instant::now();
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        e.file_write_from("s", "/home/lohar/big.bin/under-a-file", "0644", 10, &mut silent),
    )
    .await
    .expect("the refusal waited for content")
    .unwrap_err();
    assert!(matches!(refused.kind(), ErrorKind::Guest(_)), "{refused}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // A source shorter than announced leaves no file behind.
    let mut short = tokio::io::repeat(b'a').take(10);
    let err = e.file_write_from("s", "/home/lohar/short.bin", "0644", 100, &mut short).await;
    assert!(err.is_err());
    let stat = e.file_stat("s", "/home/lohar/short.bin").await.unwrap_err();
    assert_eq!(stat.kind(), ErrorKind::Guest(GuestErrorKind::NotFound), "{stat}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_port_is_an_async_byte_stream() {
    let e = test_engine().await;
    e.create(&small("web")).await.unwrap();
    e.file_write("web", "/home/lohar/www/index.html", "0644", b"hello from the guest")
        .await
        .unwrap();
    let mut httpd = agent::ExecRequest::command(["httpd", "-p", "8080", "-h", "/home/lohar/www"]);
    httpd.output_file = Some("/tmp/httpd.log".into());
    e.exec_detached("web", &httpd).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !e.listening_ports("web").await.unwrap().contains(&8080) {
        assert!(Instant::now() < deadline, "httpd never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = e.forward("web", 8080).await.unwrap();
    assert_eq!(e.host_activity("web").unwrap().in_flight, 1, "the stream holds a lease");
    stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    assert!(answer.ends_with("hello from the guest"), "{answer}");
    drop(stream);
    assert_eq!(e.host_activity("web").unwrap().in_flight, 0);
    // Nothing listens: a typed refusal.
    let closed = e.forward("web", 8081).await.unwrap_err();
    assert_eq!(closed.kind(), ErrorKind::Guest(GuestErrorKind::PortClosed), "{closed}");
    assert_eq!(e.forward("web", 0).await.unwrap_err().kind(), ErrorKind::Invalid);
}
