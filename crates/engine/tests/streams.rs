//! Streams, not buffers, on real VMs: files streamed in and out of the guest with the size
//! known before the body and caps enforced, a refused write answered before any content, and a
//! forwarded port used as a plain async byte stream; and every stream cut at once when its
//! sandbox is stopped by a user or destroyed (issue 19).
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

/// What one holder of a cut stream saw, and when.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within 15 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_stop_and_a_destroy_cut_every_stream_and_the_thermal_stop_never_does() {
    let e = test_engine().await;
    e.create(&small("cut")).await.unwrap();
    // Something that accepts a forwarded connection and never answers (nc alone would end
    // it: its stdin is empty).
    let mut nc = agent::ExecRequest::command(["nc", "-l", "-p", "9000", "-e", "sleep", "700"]);
    nc.output_file = Some("/tmp/nc.log".into());
    e.exec_detached("cut", &nc).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !e.listening_ports("cut").await.unwrap().contains(&9000) {
        assert!(Instant::now() < deadline, "nc never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each holder waits on its stream and lets go when it ends, as the daemon's tasks do.
    let mut stream = e
        .exec_stream(
            "cut",
            &agent::ExecRequest::command(["sleep", "600"]),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let streamed = tokio::spawn(async move { stream.next().await });
    let mut forward = e.forward("cut", 9000).await.unwrap();
    let forwarded = tokio::spawn(async move { forward.read(&mut [0u8; 16]).await });
    let shell = e.shell("cut", &agent::ExecRequest::command(["/bin/sh"])).await.unwrap();
    let session_id = shell.id().to_owned();
    let (session, lease) = shell.into_parts();
    let attached = tokio::spawn(async move {
        let gone = lease.ended().await;
        drop((session, lease));
        gone
    });
    let buffered = async {
        let req = agent::ExecRequest::command(["sleep", "601"]);
        e.exec_request("cut", &req, Duration::from_secs(600)).await
    };
    let stopping = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while e.host_activity("cut").unwrap().in_flight < 4 {
            assert!(Instant::now() < deadline, "the streams never all held leases");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The thermal manager's stop (wait 0) refuses and cuts nothing.
        let busy = e.stop("cut", Duration::ZERO).await.unwrap_err();
        assert_eq!(busy.kind(), ErrorKind::Busy);
        assert_eq!(e.host_activity("cut").unwrap().in_flight, 4);
        assert_eq!(e.thermal("cut").unwrap(), engine::Thermal::Hot);
        let started = Instant::now();
        e.stop_now("cut").await.unwrap();
        started.elapsed()
    };
    let (buffered, took) =
        within("the buffered exec and the stop", async { tokio::join!(buffered, stopping) }).await;
    // Every holder let go at once, so the stop did not need its 2 s of grace.
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    let gone = |e: &engine::EngineError| {
        matches!(e, engine::EngineError::Gone { reason: engine::GoneReason::Stopped, .. })
    };
    let buffered = buffered.unwrap_err();
    assert!(gone(&buffered), "{buffered}");
    let streamed = within("the streamed exec", streamed).await.unwrap();
    let streamed = streamed.expect("an event").unwrap_err();
    assert!(gone(&streamed), "{streamed}");
    assert_eq!(streamed.kind(), ErrorKind::Gone);
    let forwarded = within("the forward", forwarded).await.unwrap().unwrap_err();
    assert_eq!(forwarded.kind(), std::io::ErrorKind::ConnectionAborted, "{forwarded}");
    assert!(forwarded.to_string().contains("was stopped"), "{forwarded}");
    assert!(gone(&within("the session", attached).await.unwrap()));
    assert_eq!(e.thermal("cut").unwrap(), engine::Thermal::Cold);
    assert_eq!(e.host_activity("cut").unwrap().in_flight, 0);

    // The next use wakes it with leases that are not cut; the shell's session lived on in the
    // saved memory, and the cut execs' commands were ended by the agent once their connections
    // closed.
    let sessions = e.sessions("cut").await.unwrap();
    assert!(sessions.iter().any(|s| s.session_id == session_id && s.running), "{sessions:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ps = e.exec("cut", &["ps", "-o", "args"]).await.unwrap().stdout_text();
        if !ps.contains("sleep 600") && !ps.contains("sleep 601") {
            break;
        }
        assert!(Instant::now() < deadline, "the cut execs still run: {ps}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A destroy cuts the same way, at once.
    let shell = e.shell("cut", &agent::ExecRequest::command(["/bin/sh"])).await.unwrap();
    let ended = shell.lease().ended();
    let mut stream = e
        .exec_stream(
            "cut",
            &agent::ExecRequest::command(["sleep", "600"]),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let (destroyed, streamed) =
        within("the destroy", async { tokio::join!(e.destroy("cut"), stream.next()) }).await;
    destroyed.unwrap();
    let streamed = streamed.expect("an event").unwrap_err();
    assert!(
        matches!(streamed, engine::EngineError::Gone { reason: engine::GoneReason::Destroyed, .. }),
        "{streamed}"
    );
    let ended = within("the shell", ended).await;
    assert!(matches!(
        ended,
        engine::EngineError::Gone { reason: engine::GoneReason::Destroyed, .. }
    ));
    drop(shell);
    assert!(e.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_fails_cuts_its_leases() {
    let e = test_engine().await;
    e.create(&small("doomed")).await.unwrap();
    let shell = e.shell("doomed", &agent::ExecRequest::command(["/bin/sh"])).await.unwrap();
    let ended = shell.lease().ended();
    e.simulate_owner_panic("doomed").await.unwrap();
    // QEMU went with the owner's unwinding: the session's holder hears of it at once.
    let ended = within("the shell", ended).await;
    assert!(
        matches!(ended, engine::EngineError::Gone { reason: engine::GoneReason::Crashed(_), .. }),
        "{ended}"
    );
    drop(shell);
    e.destroy("doomed").await.unwrap();
}
