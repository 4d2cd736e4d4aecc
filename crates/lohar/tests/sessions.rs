//! TTY and piped sessions, attach/detach, scrollback, idle timers, listing, kill, init session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use proto::messages::{ActivityInfo, ExecRequest, KillRequest, SessionInfo};
use proto::payload::{WindowSize, decode_exit, encode_resize};
use proto::{FrameType, read_frame, send_json, write_frame};

fn tty_request(argv: &[&str]) -> ExecRequest {
    let mut req = ExecRequest::command(argv.iter().copied());
    req.tty = Some(true);
    req
}

fn piped_request(argv: &[&str]) -> ExecRequest {
    let mut req = ExecRequest::command(argv.iter().copied());
    req.session = Some(true);
    req
}

/// Creates a session and returns the connection and its SESSION_INFO.
fn create(agent: &Agent, req: &ExecRequest) -> (UnixStream, SessionInfo) {
    let mut s = agent.request_json(FrameType::EXEC_REQ, req);
    let f = read(&mut s);
    assert_eq!(f.kind, FrameType::SESSION_INFO, "got {:?}: {}", f.kind, f.text());
    (s, f.json().unwrap())
}

fn attach_req(id: &str, if_detached: bool) -> ExecRequest {
    ExecRequest {
        session_id: Some(id.to_owned()),
        if_detached: if_detached.then_some(true),
        ..Default::default()
    }
}

/// Attaches; returns the connection, SESSION_INFO and the replayed scrollback (if any).
fn attach(agent: &Agent, id: &str) -> (UnixStream, SessionInfo) {
    let mut s = agent.request_json(FrameType::EXEC_REQ, &attach_req(id, false));
    let f = read(&mut s);
    assert_eq!(f.kind, FrameType::SESSION_INFO, "attach got {:?}: {}", f.kind, f.text());
    (s, f.json().unwrap())
}

fn list(agent: &Agent) -> Vec<SessionInfo> {
    let mut s = agent.request(FrameType::EXEC_LIST_REQ, b"");
    let f = read(&mut s);
    assert_eq!(f.kind, FrameType::EXEC_LIST_RESP);
    f.json().unwrap()
}

fn find(agent: &Agent, id: &str) -> Option<SessionInfo> {
    list(agent).into_iter().find(|s| s.session_id == id)
}

fn activity(agent: &Agent) -> ActivityInfo {
    let mut s = agent.request(FrameType::ACTIVITY_REQ, b"");
    let f = read(&mut s);
    assert_eq!(f.kind, FrameType::ACTIVITY_RESP);
    f.json().unwrap()
}

fn stdin(s: &mut UnixStream, text: &str) {
    write_frame(s, FrameType::STDIN, text.as_bytes()).unwrap();
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn tty_session_runs_a_shell_and_exits_with_its_code() {
    let agent = Agent::start();
    let (mut s, info) = create(&agent, &tty_request(&["/bin/sh"]));
    assert!(info.tty && info.running && info.attached);
    assert!(info.session_id.starts_with('s'));
    assert_eq!(info.argv, "/bin/sh");
    stdin(&mut s, "echo hel''lo\n");
    read_output_until(&mut s, "hello", WAIT);
    stdin(&mut s, "exit 3\n");
    let exit = read_until(&mut s, FrameType::EXIT);
    assert_eq!(decode_exit(&exit.payload).unwrap(), 3);
    assert!(read_frame(&mut s).unwrap().is_none());
    // An attached session that exits is removed at once.
    assert!(wait_for(WAIT, || find(&agent, &info.session_id).is_none()));
}

#[test]
fn tty_session_has_a_real_terminal() {
    let agent = Agent::start();
    let (mut s, _) = create(&agent, &tty_request(&["/bin/sh"]));
    stdin(&mut s, "tty; test -t 0 && echo IS-A-''TTY\n");
    let out = read_output_until(&mut s, "IS-A-TTY\r\n", WAIT);
    assert!(out.contains("/dev/pts/"), "{out}");
}

#[test]
fn tty_resize_changes_the_window_size() {
    let agent = Agent::start();
    let mut req = tty_request(&["/bin/sh"]);
    req.rows = Some(30);
    req.cols = Some(100);
    let (mut s, _) = create(&agent, &req);
    stdin(&mut s, "stty size\n");
    read_output_until(&mut s, "30 100", WAIT);
    write_frame(&mut s, FrameType::RESIZE, &encode_resize(WindowSize { rows: 40, cols: 120 }))
        .unwrap();
    stdin(&mut s, "stty size\n");
    read_output_until(&mut s, "40 120", WAIT);
}

#[test]
fn tty_default_size_is_24x80() {
    let agent = Agent::start();
    let (mut s, _) = create(&agent, &tty_request(&["/bin/sh"]));
    stdin(&mut s, "stty size\n");
    read_output_until(&mut s, "24 80", WAIT);
}

#[test]
fn detach_and_reattach_replays_scrollback_and_the_process_survives() {
    let agent = Agent::start();
    let (mut s, info) = create(&agent, &tty_request(&["/bin/sh"]));
    stdin(&mut s, "echo pid=$$; echo before-''detach\n");
    let out = read_output_until(&mut s, "before-detach\r\n", WAIT);
    drop(s);
    assert!(wait_for(WAIT, || find(&agent, &info.session_id).is_some_and(|i| !i.attached)));
    // The prompt may share the line ("$ pid=123") when input beat it; the echoed command line
    // holds "pid=$$", which does not parse.
    let shell_pid: i32 = out
        .split("pid=")
        .skip(1)
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(process_alive(shell_pid), "detach must not kill the session");

    let (mut s, info2) = attach(&agent, &info.session_id);
    assert!(info2.attached && info2.running);
    let replay = read(&mut s);
    assert_eq!(replay.kind, FrameType::STDOUT);
    assert!(replay.text().contains("before-detach"), "{}", replay.text());
    stdin(&mut s, "echo after-reattach\n");
    read_output_until(&mut s, "after-reattach", WAIT);
}

#[test]
fn scrollback_is_capped_at_64k_and_keeps_the_newest_output() {
    let agent = Agent::start();
    let (s, info) = create(&agent, &piped_request(&["sh", "-c", "seq 1 20000; sleep 60"]));
    drop(s);
    // seq 1 20000 is 108,894 bytes; wait until it has all gone through the scrollback.
    std::thread::sleep(Duration::from_millis(500));
    let (mut s, _) = attach(&agent, &info.session_id);
    let replay = read(&mut s);
    assert_eq!(replay.kind, FrameType::STDOUT);
    assert_eq!(replay.payload.len(), 65_536);
    let text = replay.text();
    assert!(text.ends_with("19999\n20000\n"));
    assert!(!text.contains("\n100\n"), "oldest output must be gone");
}

#[test]
fn attach_to_a_missing_session_is_an_error() {
    let agent = Agent::start();
    let mut s = agent.request_json(FrameType::EXEC_REQ, &attach_req("s999", false));
    let r = collect_exec(&mut s);
    assert_eq!(r.error.as_deref(), Some("session not found"));
}

#[test]
fn attach_if_detached_is_refused_while_someone_is_attached() {
    let agent = Agent::start();
    let (_s, info) = create(&agent, &tty_request(&["/bin/sh"]));
    let mut s2 = agent.request_json(FrameType::EXEC_REQ, &attach_req(&info.session_id, true));
    assert_eq!(collect_exec(&mut s2).error.as_deref(), Some("session is attached"));
}

/// v1 bug: the input loop cleared the attached client unconditionally, so when a client that
/// had been kicked by a takeover disconnected, it detached its successor, which then stopped
/// receiving output.
#[test]
fn takeover_kicks_the_old_client_and_its_disconnect_does_not_detach_the_new_one() {
    let agent = Agent::start();
    let (mut old, info) = create(&agent, &tty_request(&["/bin/sh"]));
    let (mut new, _) = attach(&agent, &info.session_id);
    // The old client is told with EXIT 0, then disconnected.
    let kicked = read_until(&mut old, FrameType::EXIT);
    assert_eq!(decode_exit(&kicked.payload).unwrap(), 0);
    assert!(read_frame(&mut old).map(|f| f.is_none()).unwrap_or(true));
    drop(old);
    std::thread::sleep(Duration::from_millis(200));
    assert!(find(&agent, &info.session_id).unwrap().attached, "new client was detached");
    stdin(&mut new, "echo still-attached\n");
    read_output_until(&mut new, "still-attached", WAIT);
}

/// v1 bug: KILL on a session returned without clearing the attached client, so a process that
/// survived SIGTERM looked attached forever.
#[test]
fn kill_frame_on_a_session_sends_sigterm_and_detaches() {
    let agent = Agent::start();
    let (mut s, info) = create(
        &agent,
        &tty_request(&["sh", "-c", "trap 'echo got-term' TERM; while true; do sleep 0.05; done"]),
    );
    std::thread::sleep(Duration::from_millis(200));
    write_frame(&mut s, FrameType::KILL, b"").unwrap();
    // The connection ends (SIGTERM path).
    while let Ok(Some(_)) = read_frame(&mut s) {}
    let mut latest = None;
    wait_for(WAIT, || {
        latest = find(&agent, &info.session_id);
        latest.as_ref().is_some_and(|i| !i.attached)
    });
    let info = latest.unwrap();
    assert!(info.running, "trap keeps it alive");
    assert!(!info.attached, "a killed client must not stay attached");
    let (mut s, _) = attach(&agent, &info.session_id);
    read_output_until(&mut s, "got-term", WAIT);
}

#[test]
fn kill_frame_ends_a_plain_tty_session() {
    let agent = Agent::start();
    let (mut s, info) = create(&agent, &tty_request(&["sleep", "600"]));
    write_frame(&mut s, FrameType::KILL, b"").unwrap();
    while let Ok(Some(f)) = read_frame(&mut s) {
        if f.kind == FrameType::EXIT {
            assert_eq!(decode_exit(&f.payload).unwrap(), 143);
        }
    }
    assert!(wait_for(WAIT, || find(&agent, &info.session_id).is_none_or(|i| !i.running)));
}

#[test]
fn session_list_shows_every_session_with_its_state() {
    let agent = Agent::start();
    assert!(list(&agent).is_empty());
    let (_a, a) = create(&agent, &tty_request(&["sleep", "60"]));
    let (b_conn, b) = create(&agent, &piped_request(&["sleep", "60"]));
    drop(b_conn);
    assert!(wait_for(WAIT, || find(&agent, &b.session_id).is_some_and(|i| !i.attached)));
    let sessions = list(&agent);
    assert_eq!(sessions.len(), 2);
    let a_info = sessions.iter().find(|s| s.session_id == a.session_id).unwrap();
    assert!(a_info.tty && a_info.attached && a_info.running && a_info.exit_code.is_none());
    assert_eq!(a_info.argv, "sleep 60");
    let b_info = sessions.iter().find(|s| s.session_id == b.session_id).unwrap();
    assert!(!b_info.tty && !b_info.attached && b_info.running);
    assert!(a_info.created_at > 1_600_000_000);
    // The raw JSON omits exit_code while running.
    let mut s = agent.request(FrameType::EXEC_LIST_REQ, b"");
    assert!(!read(&mut s).text().contains("exit_code"));
}

#[test]
fn exec_kill_sigkills_a_session_and_reports_missing_ones() {
    let agent = Agent::start();
    let (s, info) = create(&agent, &piped_request(&["sleep", "600"]));
    drop(s);
    // Detached before the kill: a session that exits while attached goes with its client
    // (and off the list), and the agent sees the client's close only a moment after the drop.
    assert!(wait_for(WAIT, || find(&agent, &info.session_id).is_some_and(|i| !i.attached)));
    let mut k = agent.request_json(
        FrameType::EXEC_KILL,
        &KillRequest { session_id: info.session_id.clone(), signal: None },
    );
    let f = read(&mut k);
    assert_eq!(f.kind, FrameType::EXIT);
    assert_eq!(decode_exit(&f.payload).unwrap(), 0);
    assert!(
        wait_for(WAIT, || find(&agent, &info.session_id).is_some_and(|i| i.exit_code == Some(137)))
    );
    let mut k = agent.request_json(
        FrameType::EXEC_KILL,
        &KillRequest { session_id: "s999".into(), signal: None },
    );
    assert_eq!(collect_exec(&mut k).error.as_deref(), Some("session not found"));
    let mut k = agent.request(FrameType::EXEC_KILL, b"garbage");
    assert_eq!(collect_exec(&mut k).error.as_deref(), Some("bad kill request"));
}

#[test]
fn exited_detached_session_can_be_attached_for_scrollback_and_exit_code() {
    let agent = Agent::start();
    let (s, info) = create(&agent, &piped_request(&["sh", "-c", "sleep 2; echo done; exit 7"]));
    drop(s);
    // Detached before it exits (a session exiting while attached goes with its client).
    assert!(wait_for(WAIT, || find(&agent, &info.session_id).is_some_and(|i| !i.attached)));
    assert!(
        wait_for(WAIT, || find(&agent, &info.session_id).is_some_and(|i| i.exit_code == Some(7)))
    );
    let mut s = agent.request_json(FrameType::EXEC_REQ, &attach_req(&info.session_id, false));
    let frames: Vec<_> = std::iter::from_fn(|| read_frame(&mut s).unwrap()).collect();
    let kinds: Vec<_> = frames.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, vec![FrameType::SESSION_INFO, FrameType::STDOUT, FrameType::EXIT]);
    let info2: SessionInfo = frames[0].json().unwrap();
    assert!(!info2.running);
    assert_eq!(info2.exit_code, Some(7));
    assert_eq!(frames[1].text(), "done\n");
    assert_eq!(decode_exit(&frames[2].payload).unwrap(), 7);
    assert!(find(&agent, &info.session_id).is_none(), "collected sessions are removed");
}

#[test]
fn idle_timer_kills_a_detached_session() {
    let agent = Agent::start();
    let mut req = tty_request(&["sleep", "600"]);
    req.max_idle_sec = Some(1);
    let (s, info) = create(&agent, &req);
    // Attached sessions never idle out.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(find(&agent, &info.session_id).unwrap().running);
    let detached_at = Instant::now();
    drop(s);
    assert!(
        wait_for(WAIT, || find(&agent, &info.session_id).is_some_and(|i| i.exit_code == Some(137)))
    );
    assert!(detached_at.elapsed() >= Duration::from_millis(900));
}

#[test]
fn reattach_cancels_the_idle_timer() {
    let agent = Agent::start();
    let mut req = tty_request(&["sleep", "600"]);
    req.max_idle_sec = Some(1);
    let (s, info) = create(&agent, &req);
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let (_s, _) = attach(&agent, &info.session_id);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(find(&agent, &info.session_id).unwrap().running);
}

#[test]
fn max_idle_zero_stays_alive_when_detached() {
    let agent = Agent::start();
    let mut req = tty_request(&["sleep", "600"]);
    req.max_idle_sec = Some(0);
    let (s, info) = create(&agent, &req);
    drop(s);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(find(&agent, &info.session_id).unwrap().running);
}

#[test]
fn piped_session_merges_stderr_and_reattaches() {
    let agent = Agent::start();
    let (mut s, info) = create(
        &agent,
        &piped_request(&["sh", "-c", "while read l; do echo out-$l; echo err-$l >&2; done"]),
    );
    assert!(!info.tty);
    stdin(&mut s, "one\n");
    read_output_until(&mut s, "err-one\n", WAIT);
    drop(s);
    assert!(wait_for(WAIT, || find(&agent, &info.session_id).is_some_and(|i| !i.attached)));
    let (mut s, _) = attach(&agent, &info.session_id);
    let replay = read(&mut s);
    assert_eq!(replay.text(), "out-one\nerr-one\n");
    stdin(&mut s, "two\n");
    read_output_until(&mut s, "err-two\n", WAIT);
}

#[test]
fn piped_session_empty_stdin_frame_closes_stdin() {
    let agent = Agent::start();
    let (mut s, _) = create(&agent, &piped_request(&["sh", "-c", "cat; echo cat-finished"]));
    stdin(&mut s, "abc\n");
    write_frame(&mut s, FrameType::STDIN, b"").unwrap();
    read_output_until(&mut s, "cat-finished", WAIT);
    let exit = read_until(&mut s, FrameType::EXIT);
    assert_eq!(decode_exit(&exit.payload).unwrap(), 0);
}

#[test]
fn session_limit_is_enforced_and_exited_sessions_make_room() {
    let agent = Agent::start();
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(create(&agent, &piped_request(&["sleep", "600"])));
    }
    let mut s = agent.request_json(FrameType::EXEC_REQ, &piped_request(&["sleep", "600"]));
    assert_eq!(collect_exec(&mut s).error.as_deref(), Some("session limit exceeded"));
    // One session exits while detached: it is kept for its scrollback, yet it does not hold a
    // slot against new sessions (v1 refused new sessions for 30 s).
    let (conn, victim) = conns.pop().unwrap();
    drop(conn);
    // The agent sees the hang-up in its own time; a session that exits while still attached is
    // dropped with its client (it told the client its exit), which is not the case under test.
    assert!(wait_for(WAIT, || find(&agent, &victim.session_id).is_some_and(|i| !i.attached)));
    let mut k = agent.request_json(
        FrameType::EXEC_KILL,
        &KillRequest { session_id: victim.session_id.clone(), signal: None },
    );
    read(&mut k);
    assert!(wait_for(WAIT, || find(&agent, &victim.session_id).is_some_and(|i| !i.running)));
    let (_s, fresh) = create(&agent, &piped_request(&["sleep", "600"]));
    assert_ne!(fresh.session_id, victim.session_id);
}

#[test]
fn session_ids_are_never_reused() {
    let agent = Agent::start();
    let (_a, a) = create(&agent, &piped_request(&["true"]));
    let (_b, b) = create(&agent, &piped_request(&["true"]));
    assert_ne!(a.session_id, b.session_id);
    assert_eq!(a.session_id, "s1");
    assert_eq!(b.session_id, "s2");
}

#[test]
fn session_spawn_failure_is_a_start_error_and_leaves_no_session() {
    let agent = Agent::start();
    let mut s = agent.request_json(FrameType::EXEC_REQ, &tty_request(&["/nonexistent"]));
    assert!(collect_exec(&mut s).error.unwrap().starts_with("start: "));
    assert!(list(&agent).is_empty());
}

#[test]
fn init_session_runs_the_config_script_and_can_be_attached() {
    let config = serde_json::json!({"init": "echo init-started; exec sleep 600"});
    let agent = Agent::start_with(Some(config), &[]);
    assert!(wait_for(WAIT, || find(&agent, "init").is_some()));
    let info = find(&agent, "init").unwrap();
    assert!(info.tty && info.running && !info.attached);
    assert_eq!(info.argv, "sh -c echo init-started; exec sleep 600");
    let (mut s, _) = attach(&agent, "init");
    let text = read_output_until(&mut s, "init-started", WAIT);
    assert!(text.contains("init-started"));
}

#[test]
fn activity_counts_sessions_and_tracks_the_last_request() {
    let agent = Agent::start();
    let initial = activity(&agent);
    assert_eq!(initial.last_activity_unix, 0, "nothing happened since start");
    assert_eq!((initial.active_sessions, initial.attached_sessions), (0, 0));
    let (_attached, _) = create(&agent, &tty_request(&["sleep", "60"]));
    let (detached, _) = create(&agent, &piped_request(&["sleep", "60"]));
    drop(detached);
    assert!(wait_for(WAIT, || activity(&agent).attached_sessions == 1));
    let a = activity(&agent);
    assert_eq!(a.active_sessions, 2);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        as i64;
    assert!((now - a.last_activity_unix).abs() <= 2);
    // One-shot execs are not sessions.
    agent.exec(&["true"]);
    assert_eq!(activity(&agent).active_sessions, 2);
}

/// The replay must come before any live byte: with a process printing a counter continuously,
/// the bytes a reattaching client receives are one contiguous run of the counter.
#[test]
fn reattach_never_interleaves_live_output_with_the_replay() {
    let agent = Agent::start();
    let (s, info) = create(
        &agent,
        &piped_request(&["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; done"]),
    );
    drop(s);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let (mut s, _) = attach(&agent, &info.session_id);
        let mut bytes = Vec::new();
        while bytes.len() < 200_000 {
            let f = read(&mut s);
            assert_eq!(f.kind, FrameType::STDOUT);
            bytes.extend_from_slice(&f.payload);
        }
        let text = String::from_utf8(bytes).unwrap();
        // Skip the first line of the scrollback (the ring may have cut it) and the last one
        // (our read stopped at an arbitrary byte); every line between must be its predecessor
        // plus one.
        let lines: Vec<&str> = text.lines().collect();
        let numbers: Vec<u64> =
            lines[1..lines.len() - 1].iter().map(|l| l.parse().expect("a whole number")).collect();
        for pair in numbers.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "gap or reordering between {} and {}",
                pair[0],
                pair[1]
            );
        }
        drop(s);
        assert!(wait_for(WAIT, || find(&agent, &info.session_id).is_some_and(|i| !i.attached)));
    }
}

#[test]
fn session_output_is_not_blocked_by_a_stalled_client_for_other_requests() {
    let agent = Agent::start();
    // A client that never reads: its queue and socket fill up.
    let (_stalled, info) =
        create(&agent, &piped_request(&["sh", "-c", "head -c 50000000 /dev/zero; sleep 600"]));
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    assert!(find(&agent, &info.session_id).is_some());
    let mut k = agent.request_json(
        FrameType::EXEC_KILL,
        &KillRequest { session_id: info.session_id.clone(), signal: None },
    );
    assert_eq!(read(&mut k).kind, FrameType::EXIT);
    assert!(start.elapsed() < Duration::from_secs(2), "list/kill blocked by a stalled client");
}

#[test]
fn hello_on_a_session_connection_still_ends_with_the_session() {
    let agent = Agent::start();
    let mut s = agent.connect();
    hello_reuse(&mut s);
    send_json(&mut s, FrameType::EXEC_REQ, &tty_request(&["sh", "-c", "echo bye"])).unwrap();
    let exit = read_until(&mut s, FrameType::EXIT);
    assert_eq!(decode_exit(&exit.payload).unwrap(), 0);
    assert!(read_frame(&mut s).map(|f| f.is_none()).unwrap_or(true));
}

/// Review finding: every detach started a new idle-timer thread that slept the whole idle period.
#[test]
fn repeated_detach_does_not_pile_up_idle_timer_threads() {
    let agent = Agent::start();
    let mut req = piped_request(&["sleep", "600"]);
    req.max_idle_sec = Some(3600);
    let (s, info) = create(&agent, &req);
    drop(s);
    let threads = || std::fs::read_dir(format!("/proc/{}/task", agent.pid())).unwrap().count();
    for _ in 0..40 {
        assert!(wait_for(WAIT, || find(&agent, &info.session_id).is_some_and(|i| !i.attached)));
        let (s, _) = attach(&agent, &info.session_id);
        drop(s);
    }
    assert!(wait_for(WAIT, || threads() < 15), "lohar has {} threads", threads());
}

/// Issue 19, the WebSocket exec path: a piped session whose command leaves a background child
/// holding the pipe ends with EXIT when the command exits, not when the child does.
#[test]
fn piped_session_ends_when_its_command_exits_and_the_background_child_lives_on() {
    let agent = Agent::start();
    let pid_file = agent.path("session-background.pid");
    let script = format!("echo before; sleep 30 & echo $! > {}; echo after", pid_file.display());
    let mut req = piped_request(&["sh", "-c", script.as_str()]);
    req.user = Some("root".into());
    let started = Instant::now();
    let (mut s, _) = create(&agent, &req);
    // On the old behaviour the EXIT comes after 30 s: the read times out first.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut output = String::new();
    let code = loop {
        let f = read(&mut s);
        match f.kind {
            FrameType::STDOUT => output.push_str(&f.text()),
            FrameType::EXIT => break decode_exit(&f.payload).unwrap(),
            other => panic!("unexpected {other:?}: {}", f.text()),
        }
    };
    let took = started.elapsed();
    assert_eq!(output, "before\nafter\n");
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(3), "session took {took:?}");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(process_alive(pid), "the background child was killed with the command");
    // SAFETY: kill(2) with a pid read back from the child itself.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_for(Duration::from_secs(5), || !process_alive(pid)));
}
