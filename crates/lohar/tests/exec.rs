//! One-shot and detached exec against the real agent in test mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use proto::messages::{DetachedExec, ExecRequest};
use proto::payload::decode_exit;
use proto::{FrameType, read_frame, write_frame};

#[test]
fn exec_echo_returns_stdout_and_exit_zero() {
    let agent = Agent::start();
    let r = agent.exec(&["echo", "hello"]);
    assert_eq!(r.out(), "hello\n");
    assert_eq!(r.err(), "");
    assert_eq!(r.exit, Some(0));
}

#[test]
fn exec_failure_exit_code() {
    let agent = Agent::start();
    assert_eq!(agent.exec(&["false"]).exit, Some(1));
    assert_eq!(agent.sh("exit 42").exit, Some(42));
}

#[test]
fn exec_not_found_is_an_error_frame_not_an_exit() {
    let agent = Agent::start();
    let r = agent.exec(&["/nonexistent"]);
    assert_eq!(r.frames, vec![FrameType::ERROR]);
    let err = r.error.unwrap();
    assert!(err.starts_with("start: "), "{err}");
    assert!(err.contains("/nonexistent"), "{err}");
}

#[test]
fn exec_bad_cwd_is_a_start_error() {
    let agent = Agent::start();
    let mut req = ExecRequest::command(["pwd"]);
    req.cwd = Some("/does/not/exist".into());
    let r = agent.exec_req(&req);
    let error = r.error.unwrap();
    assert!(error.starts_with("start: "), "{error}");
    assert!(error.contains("/does/not/exist"), "the error names the directory: {error}");
    req.cwd = Some("/etc/passwd".into());
    let error = agent.exec_req(&req).error.unwrap();
    assert!(error.contains("/etc/passwd") && error.contains("not a directory"), "{error}");
}

#[test]
fn exec_stdout_and_stderr_are_kept_apart() {
    let agent = Agent::start();
    let r = agent.sh("echo out; echo err >&2");
    assert_eq!(r.out(), "out\n");
    assert_eq!(r.err(), "err\n");
    let r = agent.sh("echo err >&2");
    assert_eq!(r.out(), "");
    assert_eq!(r.err(), "err\n");
}

#[test]
fn exec_mixed_output_lands_on_the_right_streams() {
    let agent = Agent::start();
    let r = agent.sh("for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done");
    assert_eq!(r.out(), "out1\nout2\nout3\nout4\nout5\n");
    assert_eq!(r.err(), "err1\nerr2\nerr3\nerr4\nerr5\n");
}

#[test]
fn exec_request_env_is_visible_and_overrides() {
    let agent = Agent::start();
    let mut req = ExecRequest::command(["sh", "-c", "echo $FOO-$LANG"]);
    req.env = Some(BTreeMap::from([
        ("FOO".to_owned(), "bar".to_owned()),
        ("LANG".to_owned(), "C".to_owned()),
    ]));
    assert_eq!(agent.exec_req(&req).out(), "bar-C\n");
}

#[test]
fn exec_default_env_is_clean_and_complete() {
    let agent = Agent::start_with(None, &[("LOHAR_LEAK_CHECK", "leaked")]);
    let r = agent.exec(&["env"]);
    let env = r.out();
    for expected in [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "TERM=xterm-256color",
        "LANG=en_US.UTF-8",
        "HOME=/home/lohar",
    ] {
        assert!(env.lines().any(|l| l == expected), "missing {expected} in {env}");
    }
    assert!(!env.contains("LOHAR_LEAK_CHECK"), "agent env leaked: {env}");
    assert!(agent.exec_root(&["env"]).out().lines().any(|l| l == "HOME=/root"));
}

#[test]
fn exec_config_env_applies_below_the_request_env() {
    let config = serde_json::json!({"env": {"FROM_CONFIG": "c", "BOTH": "config"}});
    let agent = Agent::start_with(Some(config), &[]);
    let mut req = ExecRequest::command(["sh", "-c", "echo $FROM_CONFIG $BOTH"]);
    req.env = Some(BTreeMap::from([("BOTH".to_owned(), "request".to_owned())]));
    assert_eq!(agent.exec_req(&req).out(), "c request\n");
}

#[test]
fn exec_path_lookup_uses_the_request_path() {
    let agent = Agent::start();
    let bin = agent.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let tool = bin.join("only-here");
    std::fs::write(&tool, "#!/bin/sh\necho found me\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut req = ExecRequest::command(["only-here"]);
    req.env =
        Some(BTreeMap::from([("PATH".to_owned(), format!("{}:/usr/bin:/bin", bin.display()))]));
    assert_eq!(agent.exec_req(&req).out(), "found me\n");
}

#[test]
fn exec_cwd_is_honoured() {
    let agent = Agent::start();
    let mut req = ExecRequest::command(["pwd"]);
    req.cwd = Some("/tmp".into());
    assert_eq!(agent.exec_req(&req).out(), "/tmp\n");
}

#[test]
fn exec_runs_as_uid_1000_by_default_and_root_on_request() {
    let agent = Agent::start();
    assert_eq!(agent.exec(&["id", "-u"]).out(), "1000\n");
    assert_eq!(agent.exec(&["id", "-g"]).out(), "1000\n");
    assert_eq!(agent.exec_root(&["id", "-u"]).out(), "0\n");
}

#[test]
fn exec_signal_exit_codes_are_128_plus_signal() {
    let agent = Agent::start();
    assert_eq!(agent.sh("kill -TERM $$").exit, Some(143));
    assert_eq!(agent.sh("kill -KILL $$").exit, Some(137));
}

#[test]
fn exec_large_output_arrives_complete() {
    let agent = Agent::start();
    let r = agent.exec(&["head", "-c", "1048576", "/dev/zero"]);
    assert_eq!(r.stdout.len(), 1_048_576);
    assert_eq!(r.exit, Some(0));
    // Well past any socket buffer: output must be back-pressured, not dropped.
    let r = agent.sh("head -c 8388608 /dev/urandom | od -An -tx1 | head -c 20000000");
    assert_eq!(r.stdout.len(), 20_000_000);
    assert_eq!(r.exit, Some(0));
}

#[test]
fn exec_slow_reader_back_pressures_the_command() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    // Commands run as the unprivileged user: let it write the marker.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .unwrap();
    let done = dir.path().join("done");
    let script = format!("head -c 4194304 /dev/zero; touch {}", done.display());
    let mut s =
        agent.request_json(FrameType::EXEC_REQ, &ExecRequest::command(["sh", "-c", &script]));
    // Not reading: the command must block on its output (socket and pipe buffers hold far less
    // than 4 MiB), so it cannot finish. Watched for 500 ms.
    let watch_until = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < watch_until {
        assert!(!done.exists(), "the command finished with nobody reading: output was buffered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = collect_exec(&mut s);
    assert_eq!(r.stdout.len(), 4_194_304);
    assert_eq!(r.exit, Some(0));
    // The positive control: once read, it runs to its end.
    assert!(done.exists());
}

#[test]
fn exec_stdin_frames_reach_the_command() {
    let agent = Agent::start();
    let mut s = agent.request_json(FrameType::EXEC_REQ, &ExecRequest::command(["head", "-n", "2"]));
    write_frame(&mut s, FrameType::STDIN, b"line one\n").unwrap();
    write_frame(&mut s, FrameType::STDIN, b"line two\nline three\n").unwrap();
    let r = collect_exec(&mut s);
    assert_eq!(r.out(), "line one\nline two\n");
    assert_eq!(r.exit, Some(0));
}

#[test]
fn exec_empty_stdin_frame_sends_eof() {
    let agent = Agent::start();
    let mut s = agent.request_json(FrameType::EXEC_REQ, &ExecRequest::command(["wc", "-c"]));
    write_frame(&mut s, FrameType::STDIN, b"12345").unwrap();
    write_frame(&mut s, FrameType::STDIN, b"").unwrap();
    let r = collect_exec(&mut s);
    assert_eq!(r.out().trim(), "5");
    assert_eq!(r.exit, Some(0));
}

#[test]
fn exec_large_stdin_to_a_command_that_reads_slowly() {
    let agent = Agent::start();
    let mut s = agent
        .request_json(FrameType::EXEC_REQ, &ExecRequest::command(["sh", "-c", "sleep 0.2; wc -c"]));
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..32 {
        write_frame(&mut s, FrameType::STDIN, &chunk).unwrap();
    }
    write_frame(&mut s, FrameType::STDIN, b"").unwrap();
    let r = collect_exec(&mut s);
    assert_eq!(r.out().trim(), (32 * 64 * 1024).to_string());
}

#[test]
fn exec_kill_frame_sigkills_with_137() {
    let agent = Agent::start();
    let mut s = agent.request_json(FrameType::EXEC_REQ, &ExecRequest::command(["sleep", "60"]));
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    write_frame(&mut s, FrameType::KILL, b"").unwrap();
    let r = collect_exec(&mut s);
    assert_eq!(r.exit, Some(137));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn exec_kill_takes_the_process_group_down() {
    let agent = Agent::start();
    let mut s = agent.request_json(
        FrameType::EXEC_REQ,
        &ExecRequest::command(["sh", "-c", "sleep 3600 & echo $!; wait"]),
    );
    let f = read_until(&mut s, FrameType::STDOUT);
    let child: i32 = f.text().trim().parse().unwrap();
    assert!(process_alive(child));
    write_frame(&mut s, FrameType::KILL, b"").unwrap();
    let r = collect_exec(&mut s);
    assert_eq!(r.exit, Some(137));
    assert!(
        wait_for(Duration::from_secs(5), || !process_alive(child)),
        "background child survived"
    );
}

#[test]
fn exec_host_disconnect_kills_the_command_and_agent_stays_healthy() {
    let agent = Agent::start();
    let mut s = agent.request_json(
        FrameType::EXEC_REQ,
        &ExecRequest::command(["sh", "-c", "echo $$; exec sleep 60"]),
    );
    let pid: i32 = read_until(&mut s, FrameType::STDOUT).text().trim().parse().unwrap();
    drop(s);
    assert!(wait_for(Duration::from_secs(5), || !process_alive(pid)), "exec survived its host");
    assert_eq!(agent.exec(&["echo", "still here"]).out(), "still here\n");
}

#[test]
fn exec_many_concurrent_connections_get_their_own_output() {
    let agent = std::sync::Arc::new(Agent::start());
    let threads: Vec<_> = (0..10)
        .map(|i| {
            let agent = agent.clone();
            std::thread::spawn(move || {
                let r =
                    agent.sh(&format!("head -c 101 /dev/zero | tr '\\0' '{}'", (b'a' + i) as char));
                assert_eq!(r.stdout, vec![b'a' + i; 101]);
                assert_eq!(r.exit, Some(0));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// v1 ran a catch-all `wait4(-1)` reaper beside per-command waits, so a command's exit status
/// could be stolen (exit code 1). With orphans being created and reaped all the time, every
/// exit code must still be exact.
#[test]
fn exec_exit_codes_stay_exact_while_orphans_are_reaped() {
    let agent = std::sync::Arc::new(Agent::start());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let agent = agent.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let code = (t * 40 + i) % 250 + 2;
                    // The background subshell is orphaned when sh exits and must be reaped by
                    // the agent, at the same moment it reaps the command itself.
                    let r = agent.sh(&format!("(sleep 0.01 &) ; exit {code}"));
                    assert_eq!(r.exit, Some(code), "thread {t} iteration {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // No zombies are left under the agent.
    let agent_pid = agent.pid();
    assert!(wait_for(Duration::from_secs(3), || zombie_children(agent_pid) == 0));
}

fn zombie_children(parent: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> =
                stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str())
        })
        .count()
}

#[test]
fn exec_detached_returns_pid_and_writes_the_output_file() {
    let agent = Agent::start();
    let out = agent.path("detached.log");
    let mut req = ExecRequest::command(["sh", "-c", "echo detached-out; echo detached-err >&2"]);
    req.detach = Some(true);
    req.output_file = Some(out.display().to_string());
    let r = agent.exec_req(&req);
    assert_eq!(r.exit, Some(0));
    let info: DetachedExec = serde_json::from_slice(&r.stdout).unwrap();
    assert!(info.pid > 1);
    assert_eq!(info.output_file, out.display().to_string());
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&out)
            .is_ok_and(|s| s.contains("detached-out") && s.contains("detached-err"))
    }));
}

#[test]
fn exec_detached_default_output_file_is_under_tmp() {
    let agent = Agent::start();
    let mut req = ExecRequest::command(["true"]);
    req.detach = Some(true);
    let r = agent.exec_req(&req);
    let info: DetachedExec = serde_json::from_slice(&r.stdout).unwrap();
    assert!(info.output_file.starts_with("/tmp/bhatti-detach-"), "{}", info.output_file);
    let _ = std::fs::remove_file(&info.output_file);
}

#[test]
fn exec_detached_bad_output_file_is_an_error() {
    let agent = Agent::start();
    let mut req = ExecRequest::command(["true"]);
    req.detach = Some(true);
    req.output_file = Some("/nonexistent-dir/x.log".into());
    assert_eq!(
        agent.exec_req(&req).error.unwrap(),
        "open output file: open /nonexistent-dir/x.log: no such file or directory"
    );
}

/// A detached exec writing `script`'s output to `output_file`, answered within 5 s (an agent
/// blocked in `open` would not answer at all). Returns the ERROR text or the output file's
/// content once `expect` appears in it.
fn detach_to(agent: &Agent, output_file: &Path, expect: &str) -> Result<String, String> {
    let mut req = ExecRequest::command(["sh", "-c", &format!("echo {expect}")]);
    req.detach = Some(true);
    req.output_file = Some(output_file.display().to_string());
    let mut s = agent.request_json(FrameType::EXEC_REQ, &req);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let r = collect_exec(&mut s);
    assert!(started.elapsed() < Duration::from_secs(5), "detached exec answered late");
    if let Some(error) = r.error {
        return Err(error);
    }
    assert_eq!(r.exit, Some(0));
    let mut content = String::new();
    assert!(
        wait_for(Duration::from_secs(5), || {
            content = std::fs::read_to_string(output_file).unwrap_or_default();
            content.contains(expect)
        }),
        "{expect:?} never reached {}",
        output_file.display()
    );
    Ok(content)
}

#[test]
fn exec_detached_output_file_refuses_a_symlink_and_leaves_its_target_alone() {
    let agent = Agent::start();
    let target = agent.path("precious");
    std::fs::write(&target, "keep me").unwrap();
    let link = agent.path("out.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_eq!(
        detach_to(&agent, &link, "redirected").unwrap_err(),
        format!("open output file: {} is a symbolic link", link.display())
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    // Control: an existing regular file is truncated and written, as in v1.
    assert_eq!(detach_to(&agent, &target, "fresh").unwrap(), "fresh\n");
}

#[test]
fn exec_detached_output_fifo_or_device_is_refused_at_once() {
    let agent = Agent::start();
    let fifo = agent.path("out.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let refused = |p: &Path| format!("open output file: {} is not a regular file", p.display());
    // No reader: a blocking open would wait for one forever.
    assert_eq!(detach_to(&agent, &fifo, "x").unwrap_err(), refused(&fifo));
    // With a reader the open succeeds; fstat refuses it all the same, and nothing is written.
    let mut reader =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    assert_eq!(detach_to(&agent, &fifo, "x").unwrap_err(), refused(&fifo));
    let mut got = Vec::new();
    // EOF (the agent's write end is closed) rather than data; WouldBlock cannot happen without
    // a writer, so any data or error fails here.
    assert_eq!(std::io::Read::read_to_end(&mut reader, &mut got).unwrap(), 0);
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    // A device is no output file either (the output is meant to be read back).
    let null = Path::new("/dev/null");
    assert_eq!(detach_to(&agent, null, "x").unwrap_err(), refused(null));
    assert!(std::fs::metadata(null).unwrap().file_type().is_char_device());
    // A directory (EISDIR from the open) is named as such.
    assert_eq!(
        detach_to(&agent, &agent.dir, "x").unwrap_err(),
        format!("open output file: {} is a directory", agent.dir.display())
    );
    // Control: a regular path next to them works.
    assert_eq!(detach_to(&agent, &agent.path("plain.log"), "ok").unwrap(), "ok\n");
}

#[test]
fn exec_detached_output_is_handed_over_blocking() {
    // The output file is opened O_NONBLOCK; the command shares that open file description, so
    // the flag must be cleared before it runs. fdinfo shows the flags in octal.
    let agent = Agent::start();
    let out = agent.path("flags.log");
    let mut req = ExecRequest::command(["sh", "-c", "grep '^flags:' /proc/self/fdinfo/1"]);
    req.detach = Some(true);
    req.output_file = Some(out.display().to_string());
    assert_eq!(agent.exec_req(&req).exit, Some(0));
    let mut text = String::new();
    assert!(wait_for(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&out).unwrap_or_default();
        text.ends_with('\n')
    }));
    let flags = text.trim().trim_start_matches("flags:").trim();
    let flags = i32::from_str_radix(flags, 8).unwrap_or_else(|_| panic!("bad fdinfo: {text:?}"));
    assert_eq!(flags & libc::O_ACCMODE, libc::O_WRONLY, "{text:?}");
    assert_eq!(flags & libc::O_NONBLOCK, 0, "output file left non-blocking: {text:?}");
}

#[test]
fn exec_bad_json_and_empty_argv_are_errors() {
    let agent = Agent::start();
    let mut s = agent.request(FrameType::EXEC_REQ, b"{not json");
    let r = collect_exec(&mut s);
    assert!(r.error.unwrap().starts_with("bad exec request: "));
    let r = agent.exec_req(&ExecRequest::default());
    assert_eq!(r.error.as_deref(), Some("empty argv"));
    // Go's nil slice encodes as null.
    let mut s = agent.request(FrameType::EXEC_REQ, br#"{"argv":null}"#);
    assert_eq!(collect_exec(&mut s).error.as_deref(), Some("empty argv"));
}

#[test]
fn unknown_frame_type_gets_the_documented_error() {
    let agent = Agent::start();
    let mut s = agent.request(FrameType(0x7f), b"");
    let f = read(&mut s);
    assert_eq!(f.kind, FrameType::ERROR);
    assert_eq!(f.text(), "unexpected frame type 0x7f");
    assert!(read_frame(&mut s).unwrap().is_none(), "connection must close after the error");
}

#[test]
fn oversize_frame_from_the_host_drops_the_connection_only() {
    let agent = Agent::start();
    let mut s = agent.connect();
    use std::io::Write;
    s.write_all(&(2u32 << 20).to_be_bytes()).unwrap();
    s.write_all(&[0x10]).unwrap();
    assert!(read_frame(&mut s).map(|f| f.is_none()).unwrap_or(true));
    assert_eq!(agent.exec(&["echo", "ok"]).out(), "ok\n");
}

#[test]
fn exit_frame_is_the_last_frame_and_follows_all_output() {
    let agent = Agent::start();
    let mut s =
        agent.request_json(FrameType::EXEC_REQ, &ExecRequest::command(["sh", "-c", "seq 1 20000"]));
    let mut out = Vec::new();
    loop {
        let f = read(&mut s);
        match f.kind {
            FrameType::STDOUT => out.extend_from_slice(&f.payload),
            FrameType::EXIT => {
                assert_eq!(decode_exit(&f.payload).unwrap(), 0);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    assert!(read_frame(&mut s).unwrap().is_none());
}

/// Review finding: PTY descriptors were inheritable, so every command saw the terminals of all
/// live TTY sessions (and could type into them).
#[test]
fn exec_does_not_inherit_other_sessions_terminals() {
    let agent = Agent::start();
    let mut req = ExecRequest::command(["sleep", "60"]);
    req.tty = Some(true);
    let mut session = agent.request_json(FrameType::EXEC_REQ, &req);
    assert_eq!(read(&mut session).kind, FrameType::SESSION_INFO);
    let r = agent.sh("ls -l /proc/self/fd/ 2>/dev/null; ls -l /proc/$$/fd/");
    assert_eq!(r.exit, Some(0));
    let fds = r.out();
    assert!(!fds.contains("ptmx") && !fds.contains("/dev/pts"), "inherited a terminal:\n{fds}");
}

/// Review finding: with input queued for a child that does not read its stdin, KILL and a
/// disconnect were not noticed until the child exited.
#[test]
fn exec_kill_is_honoured_while_stdin_is_backed_up() {
    let agent = Agent::start();
    let mut s = agent.request_json(FrameType::EXEC_REQ, &ExecRequest::command(["sleep", "20"]));
    let chunk = vec![b'x'; 32 * 1024];
    for _ in 0..7 {
        write_frame(&mut s, FrameType::STDIN, &chunk).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    write_frame(&mut s, FrameType::KILL, b"").unwrap();
    assert_eq!(collect_exec(&mut s).exit, Some(137));
    assert!(start.elapsed() < Duration::from_secs(3), "KILL waited for the child");
}

/// Issue 19: `sh -c 'sleep 30 &'` used to take 30 s because the background child inherits the
/// output pipes and the agent waited for their EOF. Now EXIT follows the command's own exit
/// after a short drain, the output written before it is all there, and the child lives on.
#[test]
fn exec_returns_when_the_command_exits_and_its_background_child_lives_on() {
    let agent = Agent::start();
    let pid_file = agent.path("background.pid");
    let script = format!("echo before; sleep 30 & echo $! > {}; echo after", pid_file.display());
    let mut req = ExecRequest::command(["sh", "-c", script.as_str()]);
    req.user = Some("root".into());
    let started = Instant::now();
    let mut s = agent.request_json(FrameType::EXEC_REQ, &req);
    // On the old behaviour the EXIT comes after 30 s: the read times out first.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = collect_exec(&mut s);
    let took = started.elapsed();
    assert_eq!(r.out(), "before\nafter\n");
    assert_eq!(r.exit, Some(0));
    assert!(took < Duration::from_secs(3), "exec took {took:?}");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(process_alive(pid), "the background child was killed with the command");
    // Clean up: the background child is no longer in a group the agent kills at shutdown.
    // SAFETY: kill(2) with a pid read back from the child itself.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_for(Duration::from_secs(5), || !process_alive(pid)));
}

/// Output the command wrote before it exited is delivered whole, even when most of it is still
/// in the pipe (or not yet written by the pipeline's writer) as the exit is seen.
#[test]
fn exec_output_already_written_when_the_command_exits_is_delivered() {
    let agent = Agent::start();
    // 200 KiB is more than a pipe holds (64 KiB): the writer blocks until the agent reads, so
    // the command's exit comes while most of its output is still on the way.
    let r = agent.sh("head -c 204800 /dev/zero | tr '\\0' x; echo done >&2");
    assert_eq!(r.stdout.len(), 204800);
    assert_eq!(r.err(), "done\n");
    assert_eq!(r.exit, Some(0));
}

/// The background child may go on writing to the pipes it inherited after the EXIT: the agent
/// still reads (and drops) it, so the child neither blocks on a full pipe nor dies of SIGPIPE.
#[test]
fn exec_background_child_can_write_after_the_exit_without_dying() {
    let agent = Agent::start();
    let pid_file = agent.path("writer.pid");
    let marker = agent.path("wrote-late");
    // 200 KB after the exit: more than a pipe holds, so nobody reading would block it too.
    let script = format!(
        "(sleep 1; head -c 200000 /dev/zero; echo late >&2; touch {}; sleep 30) & echo $! > {}",
        marker.display(),
        pid_file.display()
    );
    let mut req = ExecRequest::command(["sh", "-c", script.as_str()]);
    req.user = Some("root".into());
    let mut s = agent.request_json(FrameType::EXEC_REQ, &req);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = collect_exec(&mut s);
    assert_eq!(r.exit, Some(0));
    assert!(wait_for(Duration::from_secs(10), || marker.exists()), "the late writer died");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(process_alive(pid));
    // SAFETY: kill(2) with a pid read back from the child itself.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_for(Duration::from_secs(5), || !process_alive(pid)));
}
