//! The session WebSockets and the sessions routes against a real daemon with real VMs: auth
//! before the upgrade, the terminal (output, resize, detach, auto-reattach with scrollback,
//! forced attach, new sessions, exit), piped sessions (stdin, reattach, exit codes, errors,
//! the message cap), listing and killing sessions, and the lease an attached shell holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Daemon;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const DEADLINE: Duration = Duration::from_secs(60);

async fn dial(d: &Daemon, path: &str, key: Option<&str>) -> Result<Ws, Error> {
    let url = format!("{}{path}", d.url.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    if let Some(key) = key {
        req.headers_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    let dialed = timeout(DEADLINE, tokio_tungstenite::connect_async(req)).await;
    dialed.expect("handshake within the deadline").map(|(ws, _)| ws)
}

fn status_of(result: Result<Ws, Error>) -> u16 {
    match result {
        Err(Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("not an HTTP refusal: {e}"),
        Ok(_) => panic!("the upgrade succeeded"),
    }
}

/// The next data or close message (pings and pongs skipped, within one deadline overall).
async fn next(ws: &mut Ws) -> Option<Message> {
    let end = Instant::now() + DEADLINE;
    loop {
        let message = tokio::time::timeout_at(end, ws.next()).await;
        match message.expect("a message within the deadline") {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

async fn session_of(ws: &mut Ws) -> String {
    match next(ws).await {
        Some(Message::Text(t)) => match serde_json::from_str(&t).unwrap() {
            api::WsMessage::Session { session_id } => session_id,
            other => panic!("not a session message: {other:?}"),
        },
        other => panic!("no session message: {other:?}"),
    }
}

/// Output until `needle` appears; everything read so far.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut seen = String::new();
    let end = Instant::now() + DEADLINE;
    while !seen.contains(needle) {
        assert!(Instant::now() < end, "no {needle:?} in {seen:?}");
        match next(ws).await {
            Some(Message::Binary(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(Message::Text(t)) => seen.push_str(&t),
            other => panic!("ended waiting for {needle:?} ({other:?}) after {seen:?}"),
        }
    }
    seen
}

/// Reads past output to the close frame; its code.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match next(ws).await {
            Some(Message::Close(frame)) => return frame.map(|f| f.code),
            Some(_) => continue,
            None => return None,
        }
    }
}

async fn poll_in_flight(d: &Daemon, id: &str, want: impl Fn(usize) -> bool) -> usize {
    let end = Instant::now() + DEADLINE;
    loop {
        let n = d.state.engine.host_activity(id).unwrap().in_flight;
        if want(n) || Instant::now() > end {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sessions(d: &Daemon, id: &str) -> Vec<api::SessionInfo> {
    let r = d.req(Method::GET, &format!("/sandboxes/{id}/sessions")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_auth_happens_before_the_upgrade() {
    let d = Daemon::start().await;
    let sb = d.create("auth").await;
    let path = format!("/sandboxes/{}/ws", sb.id);
    // No key, a wrong bearer, a wrong query token: 401 answers, no socket.
    assert_eq!(status_of(dial(&d, &path, None).await), 401);
    assert_eq!(status_of(dial(&d, &path, Some("bht_wrong")).await), 401);
    assert_eq!(status_of(dial(&d, &format!("{path}?token=bht_wrong"), None).await), 401);
    assert_eq!(status_of(dial(&d, &format!("/sandboxes/{}/exec/ws", sb.id), None).await), 401);
    // Another owner, by either kind of key, and an unknown sandbox: 404.
    let other = d.other_user("mallory").await;
    assert_eq!(status_of(dial(&d, &path, Some(&other)).await), 404);
    assert_eq!(status_of(dial(&d, &format!("{path}?token={other}"), None).await), 404);
    assert_eq!(status_of(dial(&d, "/sandboxes/nope/ws", Some(&d.key)).await), 404);
    // A plain GET is no handshake: 400 for the owner, still 404 for a stranger.
    let plain = d.req(Method::GET, &path).send().await.unwrap();
    assert_eq!(plain.status(), 400);
    assert!(plain.json::<api::ErrorBody>().await.unwrap().error.contains("websocket"));
    let r = d.client.get(format!("{}{path}", d.url)).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The owner's bearer and query token both open a terminal that answers.
    let mut by_header = dial(&d, &path, Some(&d.key)).await.unwrap();
    let first = session_of(&mut by_header).await;
    by_header.send(Message::binary(b"echo via-$((1+1))-header\n".to_vec())).await.unwrap();
    read_until(&mut by_header, "via-2-header").await;
    let mut by_query = dial(&d, &format!("{path}?token={}&new=true", d.key), None).await.unwrap();
    let second = session_of(&mut by_query).await;
    assert_ne!(first, second);
    by_query.send(Message::binary(b"echo via-$((1+2))-query\n".to_vec())).await.unwrap();
    read_until(&mut by_query, "via-3-query").await;
    by_header.close(None).await.unwrap();
    by_query.close(None).await.unwrap();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_output_resize_reattach_kill_and_exit() {
    let d = Daemon::start().await;
    let sb = d.create("tty").await;
    let path = format!("/sandboxes/{}/ws", sb.id);
    assert_eq!(poll_in_flight(&d, &sb.id, |n| n == 0).await, 0, "idle before any shell");

    let mut ws = dial(&d, &path, Some(&d.key)).await.unwrap();
    let s1 = session_of(&mut ws).await;
    ws.send(Message::binary(b"echo hello-$((6*7))\n".to_vec())).await.unwrap();
    read_until(&mut ws, "hello-42").await;
    // An attached shell holds a lease: the sandbox stays hot.
    assert!(d.state.engine.host_activity(&sb.id).unwrap().in_flight >= 1);
    // Resize is a JSON text frame; other text is keystrokes.
    let resize = serde_json::to_string(&api::WsMessage::Resize { rows: 33, cols: 111 }).unwrap();
    ws.send(Message::text(resize)).await.unwrap();
    // A resize to 0x0 (a client with no terminal size) is dropped, never typed into the shell.
    let empty = serde_json::to_string(&api::WsMessage::Resize { rows: 0, cols: 0 }).unwrap();
    ws.send(Message::text(empty)).await.unwrap();
    ws.send(Message::text("stty size; echo typed-$((1+1))\n")).await.unwrap();
    let seen = read_until(&mut ws, "typed-2").await;
    assert!(seen.contains("33 111"), "{seen}");
    assert!(!seen.contains("resize"), "the JSON reached the shell: {seen}");
    ws.close(None).await.unwrap();
    drop(ws);
    // Detached: the lease is back, the session keeps running.
    assert_eq!(poll_in_flight(&d, &sb.id, |n| n == 0).await, 0, "lease returned on detach");
    // The guest learns of the detach when the host's connection closes, which may be a moment
    // after the host gave its lease back: wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(15);
    let one = loop {
        let listed = sessions(&d, &sb.id).await;
        let one = listed.into_iter().find(|s| s.session_id == s1).expect("s1 listed");
        if !one.attached || Instant::now() > deadline {
            break one;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(one.tty && one.running && !one.attached, "{one:?}");

    // Without ?session the newest detached shell is attached again, with its scrollback.
    let mut again = dial(&d, &path, Some(&d.key)).await.unwrap();
    assert_eq!(session_of(&mut again).await, s1);
    read_until(&mut again, "hello-42").await;
    // ?new=true starts another shell, with the asked size.
    let fresh = dial(&d, &format!("{path}?new=true&rows=30&cols=90"), Some(&d.key)).await;
    let mut fresh = fresh.unwrap();
    let s2 = session_of(&mut fresh).await;
    assert_ne!(s1, s2);
    fresh.send(Message::text("stty size\n")).await.unwrap();
    read_until(&mut fresh, "30 90").await;
    let listed = sessions(&d, &sb.id).await;
    for sid in [&s1, &s2] {
        let s = listed.iter().find(|s| &s.session_id == sid).expect("listed");
        assert!(s.tty && s.running && s.attached, "{s:?}");
    }

    // ?session=s1 forces the other client off.
    let mut forced = dial(&d, &format!("{path}?session={s1}"), Some(&d.key)).await.unwrap();
    assert_eq!(session_of(&mut forced).await, s1);
    assert_eq!(close_code(&mut again).await, Some(CloseCode::Normal), "replaced client closed");
    forced.send(Message::binary(b"echo still-$((40+2))\n".to_vec())).await.unwrap();
    read_until(&mut forced, "still-42").await;

    // Kill s2: it goes; an unknown session is 404.
    let kill = d.req(Method::DELETE, &format!("/sandboxes/{}/sessions/{s2}", sb.id)).send().await;
    let kill = kill.unwrap();
    assert_eq!(kill.status(), 200);
    assert_eq!(kill.json::<api::StatusBody>().await.unwrap().status, "killed");
    assert!(close_code(&mut fresh).await.is_some_and(|c| c == CloseCode::Normal));
    let listed = sessions(&d, &sb.id).await;
    assert!(!listed.iter().any(|s| s.session_id == s2 && s.running), "{listed:?}");
    let r = d.req(Method::DELETE, &format!("/sandboxes/{}/sessions/s999", sb.id)).send().await;
    assert_eq!(r.unwrap().status(), 404);
    // Attaching to an unknown session: v1's text frame, then a close.
    let mut unknown = dial(&d, &format!("{path}?session=s999"), Some(&d.key)).await.unwrap();
    match next(&mut unknown).await {
        Some(Message::Text(t)) => assert!(t.starts_with("attach error: "), "{t}"),
        other => panic!("no attach error: {other:?}"),
    }
    assert_eq!(close_code(&mut unknown).await, Some(CloseCode::Error));
    let other = d.other_user("mallory").await;
    let r = d
        .client
        .get(format!("{}/sandboxes/{}/sessions", d.url, sb.id))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The shell's exit closes with 1000 and returns the lease.
    assert!(d.state.engine.host_activity(&sb.id).unwrap().in_flight >= 1);
    forced.send(Message::binary(b"exit\n".to_vec())).await.unwrap();
    assert_eq!(close_code(&mut forced).await, Some(CloseCode::Normal));
    assert_eq!(poll_in_flight(&d, &sb.id, |n| n == 0).await, 0);
    let listed = sessions(&d, &sb.id).await;
    assert!(!listed.iter().any(|s| s.session_id == s1 && s.running), "{listed:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_sessions_stdin_reattach_exit_codes_and_limits() {
    let d = Daemon::start().await;
    let sb = d.create("piped").await;
    let path = format!("/sandboxes/{}/exec/ws", sb.id);
    let start = |v: serde_json::Value| Message::text(v.to_string());

    let mut cat = dial(&d, &path, Some(&d.key)).await.unwrap();
    cat.send(start(serde_json::json!({"cmd": ["cat"]}))).await.unwrap();
    let sid = session_of(&mut cat).await;
    cat.send(Message::text("line one\n")).await.unwrap();
    cat.send(Message::binary(b"line two\n".to_vec())).await.unwrap();
    read_until(&mut cat, "line one\nline two\n").await;
    // A large message within the cap goes through whole (as text frames of at most 4 KiB).
    let big = format!("{}END\n", "x".repeat(512 * 1024));
    cat.send(Message::text(big.clone())).await.unwrap();
    let echoed = read_until(&mut cat, "END\n").await;
    assert!(echoed.contains(&big), "the whole message came back");
    drop(cat);

    // Reattach by ID: the scrollback replays, stdin still reaches cat.
    let mut back = dial(&d, &format!("{path}?session={sid}"), Some(&d.key)).await.unwrap();
    assert_eq!(session_of(&mut back).await, sid);
    back.send(Message::text("line three\n")).await.unwrap();
    let seen = read_until(&mut back, "line three\n").await;
    assert!(seen.contains("END\n"), "scrollback replayed");
    // A message over the 1 MiB cap ends the socket, not the session.
    back.send(Message::binary(vec![b'y'; 2 << 20])).await.ok();
    loop {
        match next(&mut back).await {
            None | Some(Message::Close(_)) => break,
            Some(_) => continue,
        }
    }
    let listed = sessions(&d, &sb.id).await;
    assert!(listed.iter().any(|s| s.session_id == sid && s.running && !s.tty), "{listed:?}");

    // Exit codes arrive as an exit message, then a normal close.
    let mut seven = dial(&d, &path, Some(&d.key)).await.unwrap();
    seven.send(start(serde_json::json!({"cmd": ["sh", "-c", "echo bye; exit 7"]}))).await.unwrap();
    session_of(&mut seven).await;
    let mut out = String::new();
    let exit = loop {
        match next(&mut seven).await {
            Some(Message::Text(t)) => match serde_json::from_str::<api::WsMessage>(&t) {
                Ok(api::WsMessage::Exit { exit_code }) => break exit_code,
                _ => out.push_str(&t),
            },
            other => panic!("no exit message: {other:?} after {out:?}"),
        }
    };
    assert_eq!((exit, out.as_str()), (7, "bye\n"));
    assert_eq!(close_code(&mut seven).await, Some(CloseCode::Normal));

    // A start without a command is an error message (both v1's key and this API's shape).
    let mut bad = dial(&d, &path, Some(&d.key)).await.unwrap();
    bad.send(start(serde_json::json!({"env": {"A": "1"}}))).await.unwrap();
    let Some(Message::Text(t)) = next(&mut bad).await else { panic!("no error message") };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!((v["type"].as_str(), v["message"].as_str()), (Some("error"), Some("cmd required")));
    assert_eq!(v["error"], "cmd required");
    assert_eq!(close_code(&mut bad).await, Some(CloseCode::Error));
    // Reattaching to an unknown session is an error message too.
    let mut nope = dial(&d, &format!("{path}?session=s999"), Some(&d.key)).await.unwrap();
    let Some(Message::Text(t)) = next(&mut nope).await else { panic!("no error message") };
    assert!(t.contains(r#""type":"error""#) && t.contains("attach: "), "{t}");
    d.stop().await;
}

// Issue 19: a sandbox that goes away (its QEMU killed, a DELETE, a user's stop) ends every
// stream on it at once with the reason, instead of leaving them on a dead connection until
// their deadline (300 s for an exec).

/// How long a stream may take to notice that its sandbox went away.
const GONE_WITHIN: Duration = Duration::from_secs(15);

/// The close frame (code and reason) that ends a socket, past any output; within `limit`.
async fn close_frame(ws: &mut Ws, limit: Duration) -> (CloseCode, String) {
    let end = Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(end, ws.next()).await;
        match message.expect("the socket closes within the limit") {
            Some(Ok(Message::Close(Some(frame)))) => return (frame.code, frame.reason.to_string()),
            Some(Ok(Message::Close(None))) => panic!("a close frame without a reason"),
            Some(Ok(_)) => continue,
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

/// The streams a test holds open on one sandbox: a buffered exec, an NDJSON exec, a terminal
/// and a piped exec socket, each running (or sitting in) a command that would outlive the test.
struct OpenStreams {
    buffered: tokio::task::JoinHandle<(u16, api::ErrorBody)>,
    ndjson: tokio::task::JoinHandle<Vec<api::ExecEvent>>,
    tty: Ws,
    piped: Ws,
}

async fn open_streams(d: &Daemon, id: &str) -> OpenStreams {
    let sleep = serde_json::json!({"cmd": ["sleep", "600"]});
    let buffered = {
        let req = d.req(Method::POST, &format!("/sandboxes/{id}/exec")).json(&sleep);
        tokio::spawn(async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json().await.unwrap())
        })
    };
    let ndjson = {
        let req = d
            .req(Method::POST, &format!("/sandboxes/{id}/exec"))
            .header("accept", api::NDJSON)
            .json(&serde_json::json!({"cmd": ["sh", "-c", "echo started; sleep 600"]}));
        tokio::spawn(async move {
            let mut r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let mut text = String::new();
            while let Some(chunk) = r.chunk().await.unwrap() {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        })
    };
    let mut tty = dial(d, &format!("/sandboxes/{id}/ws"), Some(&d.key)).await.unwrap();
    session_of(&mut tty).await;
    tty.send(Message::binary(b"echo shell-$((20+22))\n".to_vec())).await.unwrap();
    read_until(&mut tty, "shell-42").await;
    let mut piped = dial(d, &format!("/sandboxes/{id}/exec/ws"), Some(&d.key)).await.unwrap();
    piped.send(Message::text(r#"{"cmd":["sleep","600"]}"#)).await.unwrap();
    session_of(&mut piped).await;
    // Both execs are running (they hold their leases) before the sandbox goes.
    assert_eq!(poll_in_flight(d, id, |n| n >= 4).await, 4);
    OpenStreams { buffered, ndjson, tty, piped }
}

/// Every stream ended within [`GONE_WITHIN`] of `since` with a reason containing `why`.
async fn all_ended(open: OpenStreams, since: Instant, why: &str) {
    let OpenStreams { buffered, ndjson, mut tty, mut piped } = open;
    let (status, body) =
        timeout(GONE_WITHIN, buffered).await.expect("the buffered exec answers").unwrap();
    assert!(matches!(status, 409 | 503), "buffered exec: {status} {body:?}");
    assert_eq!(body.code, "gone", "{body:?}");
    assert!(body.error.contains(why), "{body:?}");
    let lines = timeout(GONE_WITHIN, ndjson).await.expect("the NDJSON exec ends").unwrap();
    match lines.last() {
        Some(api::ExecEvent::Error { data }) => assert!(data.contains(why), "{data}"),
        other => panic!("the NDJSON exec did not end with an error line: {other:?}"),
    }
    let (code, reason) = close_frame(&mut tty, GONE_WITHIN).await;
    assert_eq!(code, CloseCode::Away, "{reason}");
    assert!(reason.contains(why), "terminal: {reason}");
    let (code, reason) = close_frame(&mut piped, GONE_WITHIN).await;
    assert_eq!(code, CloseCode::Away, "{reason}");
    assert!(reason.contains(why), "piped: {reason}");
    assert!(since.elapsed() < GONE_WITHIN, "took {:?}", since.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_ends_at_once_when_qemu_dies_or_the_sandbox_is_destroyed() {
    let d = Daemon::start().await;
    // QEMU killed from outside (only the pid this test's daemon started).
    let sb = d.create("killed").await;
    let open = open_streams(&d, &sb.id).await;
    let pid_file = d.data.path().join("engine/sandboxes").join(&sb.id).join("qemu.pid");
    let pid = std::fs::read_to_string(pid_file).unwrap().trim().to_owned();
    let killed = Instant::now();
    assert!(std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    all_ended(open, killed, "crashed").await;

    // Destroyed while everything is open: the DELETE itself answers at once too.
    let sb = d.create("deleted").await;
    let open = open_streams(&d, &sb.id).await;
    let deleted = Instant::now();
    let r = timeout(GONE_WITHIN, d.req(Method::DELETE, &format!("/sandboxes/{}", sb.id)).send())
        .await
        .expect("DELETE answers")
        .unwrap();
    assert_eq!(r.status(), 200);
    all_ended(open, deleted, "destroyed").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_destroy_proceed_with_a_shell_attached() {
    let d = Daemon::start().await;
    let sb = d.create("attached").await;
    let path = format!("/sandboxes/{}/ws", sb.id);
    let mut tty = dial(&d, &path, Some(&d.key)).await.unwrap();
    session_of(&mut tty).await;
    tty.send(Message::binary(b"echo before-$((1+1))\n".to_vec())).await.unwrap();
    read_until(&mut tty, "before-2").await;
    assert_eq!(poll_in_flight(&d, &sb.id, |n| n == 1).await, 1);

    // A user's stop cuts the shell (told why) instead of waiting 30 s and answering busy.
    let started = Instant::now();
    let stop = d.req(Method::POST, &format!("/sandboxes/{}/stop", sb.id)).send();
    let r = timeout(GONE_WITHIN, stop).await.expect("stop answers").unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert!(started.elapsed() < GONE_WITHIN, "stop took {:?}", started.elapsed());
    let (code, reason) = close_frame(&mut tty, GONE_WITHIN).await;
    assert_eq!(code, CloseCode::Away, "{reason}");
    assert!(reason.contains("stopped"), "{reason}");
    assert_eq!(d.state.engine.thermal(&sb.id).unwrap(), engine::Thermal::Cold);

    // Started again (a user-stopped sandbox's guest routes may refuse until then), a new
    // terminal attaches; a DELETE with it attached proceeds the same way.
    let r = d.req(Method::POST, &format!("/sandboxes/{}/start", sb.id)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let mut tty = dial(&d, &path, Some(&d.key)).await.unwrap();
    session_of(&mut tty).await;
    tty.send(Message::binary(b"echo after-$((2+2))\n".to_vec())).await.unwrap();
    read_until(&mut tty, "after-4").await;
    let started = Instant::now();
    let delete = d.req(Method::DELETE, &format!("/sandboxes/{}", sb.id)).send();
    let r = timeout(GONE_WITHIN, delete).await.expect("DELETE answers").unwrap();
    assert_eq!(r.status(), 200);
    let (code, reason) = close_frame(&mut tty, GONE_WITHIN).await;
    assert_eq!(code, CloseCode::Away, "{reason}");
    assert!(reason.contains("destroyed"), "{reason}");
    assert!(started.elapsed() < GONE_WITHIN, "took {:?}", started.elapsed());
    d.stop().await;
}
