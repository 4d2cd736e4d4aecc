//! Issue 19 against a real daemon with real VMs: an exec returns when its command exits even
//! when a background child holds the output pipes (buffered, NDJSON and WebSocket), a buffered
//! exec over the cap says so and keeps stdout's beginning and stderr's end, and the daemon-wide
//! budget for buffered output holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Daemon;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Every wait in this file ends by then.
const DEADLINE: Duration = Duration::from_secs(120);

/// How long the background child lives. Before the fix each exec took this long.
const BACKGROUND_SECS: u64 = 60;

/// An exec that returns within this returned with its command, not with the background child
/// (generous: QEMU runs under TCG here, and other builds share the two cores).
const PROMPT: Duration = Duration::from_secs(20);

/// A script that prints, leaves a background child holding stdout and stderr, prints again and
/// exits; the child's PID goes to `pid_file`.
fn leaves_a_child(pid_file: &str) -> serde_json::Value {
    let script = format!("echo before; sleep {BACKGROUND_SECS} & echo $! > {pid_file}; echo after");
    serde_json::json!({"cmd": ["sh", "-c", script]})
}

async fn buffered(d: &Daemon, id: &str, body: &serde_json::Value) -> reqwest::Response {
    let r = d.req(Method::POST, &format!("/sandboxes/{id}/exec")).json(body).send();
    timeout(DEADLINE, r).await.expect("answer within the deadline").unwrap()
}

async fn json_of(r: reqwest::Response) -> serde_json::Value {
    timeout(DEADLINE, r.json()).await.expect("body within the deadline").unwrap()
}

/// An NDJSON exec's events, read to the end.
async fn streamed(d: &Daemon, id: &str, body: &serde_json::Value) -> Vec<api::ExecEvent> {
    let send = d
        .req(Method::POST, &format!("/sandboxes/{id}/exec"))
        .header("accept", api::NDJSON)
        .json(body)
        .send();
    let mut r = timeout(DEADLINE, send).await.expect("answer within the deadline").unwrap();
    let end = Instant::now() + DEADLINE;
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout_at(end, r.chunk()).await.expect("in time").unwrap()
    {
        text.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&text).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn stdout_of(events: &[api::ExecEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            api::ExecEvent::Stdout { data } => Some(data.as_str()),
            _ => None,
        })
        .collect()
}

/// True while the process whose PID is in `pid_file` runs in the guest.
async fn alive_in_guest(d: &Daemon, id: &str, pid_file: &str) -> bool {
    let script = format!("kill -0 $(cat {pid_file}) && echo alive");
    let out =
        json_of(buffered(d, id, &serde_json::json!({"cmd": ["sh", "-c", script]})).await).await;
    out["stdout"] == "alive\n"
}

async fn dial(d: &Daemon, path: &str) -> Ws {
    let url = format!("{}{path}", d.url.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", d.key).parse().unwrap());
    let dialed = timeout(DEADLINE, tokio_tungstenite::connect_async(req)).await;
    dialed.expect("handshake within the deadline").unwrap().0
}

/// A piped WebSocket exec: its output and its exit code.
async fn over_websocket(d: &Daemon, id: &str, body: &serde_json::Value) -> (String, i32) {
    let mut ws = dial(d, &format!("/sandboxes/{id}/exec/ws")).await;
    ws.send(Message::text(body.to_string())).await.unwrap();
    let end = Instant::now() + DEADLINE;
    let mut out = String::new();
    loop {
        let message = tokio::time::timeout_at(end, ws.next()).await.expect("an exit in time");
        let text = match message {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(_)) => continue,
            other => panic!("ended without an exit: {other:?} after {out:?}"),
        };
        match serde_json::from_str::<api::WsMessage>(&text) {
            Ok(api::WsMessage::Exit { exit_code }) => return (out, exit_code),
            Ok(api::WsMessage::Session { .. }) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => out.push_str(&text),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_returns_when_its_command_exits_in_every_mode_and_the_child_lives_on() {
    let d = Daemon::start().await;
    let sb = d.create("bg").await;

    let started = Instant::now();
    let r = buffered(&d, &sb.id, &leaves_a_child("/tmp/buffered.pid")).await;
    let out = json_of(r).await;
    assert!(started.elapsed() < PROMPT, "buffered exec took {:?}", started.elapsed());
    assert_eq!(
        (out["exit_code"].as_i64(), out["stdout"].as_str()),
        (Some(0), Some("before\nafter\n"))
    );
    assert!(alive_in_guest(&d, &sb.id, "/tmp/buffered.pid").await, "buffered: child killed");

    let started = Instant::now();
    let events = streamed(&d, &sb.id, &leaves_a_child("/tmp/streamed.pid")).await;
    assert!(started.elapsed() < PROMPT, "NDJSON exec took {:?}", started.elapsed());
    assert_eq!(stdout_of(&events), "before\nafter\n");
    assert_eq!(events.last(), Some(&api::ExecEvent::Exit { exit_code: 0 }));
    assert!(alive_in_guest(&d, &sb.id, "/tmp/streamed.pid").await, "NDJSON: child killed");

    let started = Instant::now();
    let (out, code) = over_websocket(&d, &sb.id, &leaves_a_child("/tmp/ws.pid")).await;
    assert!(started.elapsed() < PROMPT, "WebSocket exec took {:?}", started.elapsed());
    assert_eq!((out.as_str(), code), ("before\nafter\n", 0));
    assert!(alive_in_guest(&d, &sb.id, "/tmp/ws.pid").await, "WebSocket: child killed");
    d.stop().await;
}

/// More than the 10 MiB cap on both streams, with markers at either end.
const OVER_THE_CAP: &str = "echo FIRST; head -c 11000000 /dev/zero | tr '\\0' o; \
                            echo EARLY >&2; head -c 11000000 /dev/zero | tr '\\0' e >&2; \
                            echo LAST >&2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_exec_over_the_cap_says_so_and_keeps_stdouts_head_and_stderrs_tail() {
    let d = Daemon::start().await;
    let sb = d.create("big").await;
    let r = buffered(&d, &sb.id, &serde_json::json!({"cmd": ["sh", "-c", OVER_THE_CAP]})).await;
    assert_eq!(r.status(), 200);
    let header =
        r.headers().get(api::OUTPUT_TRUNCATED_HEADER).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header.as_deref(), Some("stdout,stderr"));
    let out = json_of(r).await;
    assert_eq!(out["exit_code"], 0);
    assert_eq!(
        (out["stdout_truncated"].as_bool(), out["stderr_truncated"].as_bool()),
        (Some(true), Some(true))
    );
    let (stdout, stderr) = (out["stdout"].as_str().unwrap(), out["stderr"].as_str().unwrap());
    assert_eq!((stdout.len(), stderr.len()), (10 << 20, 10 << 20));
    assert!(stdout.starts_with("FIRST\nooo"), "stdout keeps its beginning");
    assert!(stderr.ends_with("eeeLAST\n"), "stderr keeps its end");
    assert!(!stderr.contains("EARLY"), "stderr's beginning is what was dropped");
    // Under the cap: no header, and the answer has v1's shape.
    let r =
        buffered(&d, &sb.id, &serde_json::json!({"cmd": ["sh", "-c", "echo a; echo b >&2"]})).await;
    assert!(r.headers().get(api::OUTPUT_TRUNCATED_HEADER).is_none());
    let out = json_of(r).await;
    let mut keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["exit_code", "stderr", "stdout"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffered_output_budget_is_daemon_wide_and_streaming_is_not_counted() {
    let budget = server::exec_budget::FIRST_SLICE;
    let d = Daemon::start_with(|s| s.exec_output_budget = budget).await;
    let sb = d.create("budget").await;
    let big = serde_json::json!({"cmd": ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"]});

    // One call alone: it may hold the whole budget and no more.
    let r = buffered(&d, &sb.id, &big).await;
    assert_eq!(r.headers()[api::OUTPUT_TRUNCATED_HEADER], "stdout");
    let out = json_of(r).await;
    assert_eq!(out["stdout"].as_str().unwrap().len(), budget);
    assert_eq!(out["stdout_truncated"], true);

    // A call that holds the budget while it runs: the next buffered call waits briefly, then
    // is refused before its command runs.
    let holder = {
        let (client, url, key, id) =
            (d.client.clone(), d.url.clone(), d.key.clone(), sb.id.clone());
        let body =
            serde_json::json!({"cmd": ["sh", "-c", "touch /tmp/holding; sleep 8; echo held"]});
        tokio::spawn(async move {
            let r = client
                .post(format!("{url}/sandboxes/{id}/exec"))
                .bearer_auth(key)
                .json(&body)
                .send();
            timeout(DEADLINE, r)
                .await
                .expect("in time")
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        })
    };
    let holding = serde_json::json!({"cmd": ["test", "-f", "/tmp/holding"]});
    let end = Instant::now() + DEADLINE;
    // Streaming needs no budget, so it can watch for the holder's command.
    while streamed(&d, &sb.id, &holding).await.last()
        != Some(&api::ExecEvent::Exit { exit_code: 0 })
    {
        assert!(Instant::now() < end, "the holder's command never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused_cmd = serde_json::json!({"cmd": ["touch", "/tmp/refused-ran"]});
    let r = buffered(&d, &sb.id, &refused_cmd).await;
    assert_eq!(r.status(), 503);
    let body: api::ErrorBody = r.json().await.unwrap();
    assert!(body.error.contains("retry, or stream"), "{}", body.error);
    assert_eq!(body.code, "exec_output_budget");
    // Streaming is not counted: all of it arrives while the budget is held.
    let events = streamed(&d, &sb.id, &big).await;
    assert_eq!(stdout_of(&events).len(), 200_000);
    let held = timeout(DEADLINE, holder).await.expect("holder in time").unwrap();
    assert_eq!(held["stdout"], "held\n");
    // The refused command never ran, and the budget is whole again.
    let ran =
        streamed(&d, &sb.id, &serde_json::json!({"cmd": ["test", "-e", "/tmp/refused-ran"]})).await;
    assert_eq!(ran.last(), Some(&api::ExecEvent::Exit { exit_code: 1 }));
    assert_eq!(d.state.exec_budget.available(), budget);
    d.stop().await;
}
