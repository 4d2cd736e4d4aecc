//! The process extension (`procs`) against the real lohar in test mode: a piped session's
//! stderr kept apart (live and on reattach), the guest PID, tag and host data in SESSION_INFO
//! and the session list, and kill signals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent::{AgentClient, AgentError, ExecRequest, SessionEvent};
use common::*;

/// Output and stderr of a session until both contain their needles (or the exit, `Some`).
#[derive(Debug, Default)]
struct Seen {
    out: String,
    err: String,
    /// Every event in order, as ("out" | "err", text).
    order: Vec<(&'static str, String)>,
    exit: Option<i32>,
}

async fn read_until(session: &mut agent::Session, out: &str, err: &str) -> Seen {
    let mut seen = Seen::default();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !(seen.out.contains(out) && seen.err.contains(err)) && seen.exit.is_none() {
            match session.next().await.unwrap() {
                Some(SessionEvent::Output(b)) => {
                    let text = String::from_utf8_lossy(&b).into_owned();
                    seen.out.push_str(&text);
                    seen.order.push(("out", text));
                }
                Some(SessionEvent::Stderr(b)) => {
                    let text = String::from_utf8_lossy(&b).into_owned();
                    seen.err.push_str(&text);
                    seen.order.push(("err", text));
                }
                Some(SessionEvent::Exit(code)) => seen.exit = Some(code),
                None => panic!("closed while waiting: {seen:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {out:?} / {err:?}"));
    seen
}

/// Waits until the session is listed as detached (the agent saw the client go).
async fn until_detached(c: &AgentClient, id: &str) {
    for _ in 0..250 {
        if c.session_list().await.unwrap().iter().any(|i| i.session_id == id && !i.attached) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{id} never detached");
}

fn split(argv: &[&str]) -> ExecRequest {
    ExecRequest { stderr: Some(true), ..ExecRequest::command(argv.iter().copied()) }
}

#[tokio::test]
async fn procs_stderr_is_apart_live_and_in_the_replay_and_merged_for_a_plain_attach() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let script = "echo out1; sleep 0.05; echo err1 >&2; sleep 0.05; echo out2; read x; \
                  echo out3; echo err3 >&2; exit 3";
    let mut s = c.piped_session(&split(&["sh", "-c", script])).await.unwrap();
    assert!(c.supports_procs());
    assert!(s.info().stderr);
    let live = read_until(&mut s, "out2\n", "err1\n").await;
    assert_eq!(live.out, "out1\nout2\n");
    assert_eq!(live.err, "err1\n");
    let id = s.id().to_owned();
    drop(s);
    until_detached(&c, &id).await;

    // The replay keeps the stream of every chunk, in the order it was written.
    let mut again = c.attach_with_stderr(&id, true).await.unwrap();
    let replay = read_until(&mut again, "out2\n", "err1\n").await;
    assert_eq!(
        replay.order,
        [("out", "out1\n".to_owned()), ("err", "err1\n".to_owned()), ("out", "out2\n".to_owned())]
    );
    drop(again);
    until_detached(&c, &id).await;

    // A client that did not ask gets v1's view: one stream.
    let mut plain = c.attach(&id, true).await.unwrap();
    assert_eq!(
        plain.next().await.unwrap(),
        Some(SessionEvent::Output(b"out1\nerr1\nout2\n".to_vec()))
    );
    plain.write(b"go\n").await.unwrap();
    let rest = read_until(&mut plain, "out3\nerr3\n", "").await;
    let rest =
        if rest.exit.is_none() { read_until(&mut plain, "never", "never").await } else { rest };
    assert_eq!(rest.exit, Some(3));
    assert!(rest.order.iter().all(|(stream, _)| *stream == "out"), "{rest:?}");
}

#[tokio::test]
async fn procs_a_session_that_did_not_ask_merges_stderr_as_v1_did() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let req = ExecRequest::command(["sh", "-c", "echo a; sleep 0.05; echo b >&2; read x"]);
    let mut s = c.piped_session(&req).await.unwrap();
    assert!(!s.info().stderr);
    let seen = read_until(&mut s, "a\nb\n", "").await;
    assert_eq!(seen.err, "");
    // Asking on attach cannot split what was merged at the start.
    let id = s.id().to_owned();
    drop(s);
    until_detached(&c, &id).await;
    let mut again = c.attach_with_stderr(&id, true).await.unwrap();
    assert_eq!(again.next().await.unwrap(), Some(SessionEvent::Output(b"a\nb\n".to_vec())));
}

#[tokio::test]
async fn procs_the_guest_pid_tag_and_meta_are_in_the_session_info_and_the_list() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let req = ExecRequest {
        tag: Some("web".into()),
        meta: Some(r#"{"cmd":"sleep"}"#.into()),
        ..split(&["sleep", "30"])
    };
    let s = c.piped_session(&req).await.unwrap();
    let pid = s.info().pid.expect("a pid");
    // The PID is the process's own: /proc names the command.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.ends_with(b"sleep\x0030\x00"), "{:?}", String::from_utf8_lossy(&cmdline));
    let listed = c.session_list().await.unwrap();
    let row = listed.iter().find(|i| i.session_id == s.id()).unwrap();
    assert_eq!(row.pid, Some(pid));
    assert_eq!(row.tag.as_deref(), Some("web"));
    assert_eq!(row.meta.as_deref(), Some(r#"{"cmd":"sleep"}"#));
    assert!(row.stderr && row.running);
    // A TTY session has its PID too, and no tag unless given.
    let shell = c.shell(&ExecRequest::command(["sleep", "30"])).await.unwrap();
    assert!(shell.info().pid.is_some_and(|p| p != pid));
    assert_eq!(shell.info().tag, None);
    c.session_kill(s.id()).await.unwrap();
    c.session_kill(shell.id()).await.unwrap();
}

#[tokio::test]
async fn procs_kill_sends_the_named_signal_to_the_process_group() {
    let lohar = Lohar::start();
    let c = lohar.client();
    // SIGTERM runs the trap (exit 7); SIGKILL cannot be trapped (128 + 9).
    let trap = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done";
    let rows = [
        ("SIGTERM runs the trap", Some(15), 7),
        ("SIGKILL", Some(9), 137),
        ("none is SIGKILL", None, 137),
    ];
    for (name, signal, want) in rows {
        let mut s = c.piped_session(&split(&["sh", "-c", trap])).await.unwrap();
        read_until(&mut s, "ready\n", "").await;
        c.session_signal(s.id(), signal).await.unwrap();
        let seen = read_until(&mut s, "never", "never").await;
        assert_eq!(seen.exit, Some(want), "{name}: {seen:?}");
    }
}

#[tokio::test]
async fn procs_bad_requests_are_refused() {
    let lohar = Lohar::start();
    let c = lohar.client();
    let s = c.piped_session(&split(&["sleep", "30"])).await.unwrap();
    let err = c.session_signal(s.id(), Some(999)).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Agent(t) if t.message().contains("unknown signal")),
        "{err:?}"
    );
    let err = c.session_signal("s999", Some(15)).await.unwrap_err();
    assert!(matches!(&err, AgentError::Agent(t) if t == "session not found"), "{err:?}");
    let rows = [
        (
            "tag",
            ExecRequest { tag: Some("t".repeat(257)), ..split(&["true"]) },
            "session tag too long",
        ),
        (
            "meta",
            ExecRequest { meta: Some("m".repeat(16 * 1024 + 1)), ..split(&["true"]) },
            "session meta too long",
        ),
    ];
    for (name, req, want) in rows {
        let err = c.piped_session(&req).await.unwrap_err();
        assert!(matches!(&err, AgentError::Agent(t) if t == want), "{name}: {err:?}");
    }
    c.session_kill(s.id()).await.unwrap();
}
