//! One-shot piped exec and detached exec.
//!
//! A one-shot exec is served by the connection's own thread with a `poll` loop over the socket,
//! the child's stdout and stderr and its exit watch. One thread means frames are written by a
//! single writer (no interleaving), output is back-pressured by the socket, and no helper threads
//! have to be started per exec.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto::messages::{DetachedExec, ExecRequest};
use proto::payload::encode_exit;
use proto::{FrameType, read_frame, send_json, write_frame};

use crate::config::Agent;
use crate::conn::Conn;
use crate::files::{Links, open_regular};
use crate::pipes::{self, EXIT_DRAIN, poll_slots};
use crate::reaper::{self, ExitWatch};
use crate::reply::{Outcome, send_error};
use crate::spawn::{self, Grouping, RunAs};

/// Host input buffered for a child that is not reading its stdin before the host is
/// back-pressured.
const STDIN_BUFFER: usize = 1024 * 1024;

/// Bytes read from a child pipe per STDOUT/STDERR frame.
const OUTPUT_CHUNK: usize = 32 * 1024;

/// Runs a one-shot exec: streams STDOUT/STDERR, feeds STDIN, honours KILL, ends with EXIT.
pub fn run(agent: &Agent, conn: &mut Conn, req: &ExecRequest) -> Outcome {
    let run_as = RunAs::from_request(req.user.as_deref());
    let env = spawn::build_env(run_as, &agent.config.env, req.env.as_ref());
    let spawned =
        spawn::command(&req.argv, &env, req.cwd.as_deref(), run_as, Grouping::ProcessGroup)
            .and_then(|mut cmd| {
                cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
                reaper::spawn_watched(&mut cmd)
            });
    let (mut child, watch) = match spawned {
        Ok(spawned) => spawned,
        Err(e) => return send_error(conn, &format!("start: {}: {e}", req.argv[0])),
    };
    let pgid = Pid::from_raw(child.id() as i32);
    let stdin = child.stdin.take().map(OwnedFd::from).map(File::from);
    let stdout = child.stdout.take().map(OwnedFd::from).map(File::from);
    let stderr = child.stderr.take().map(OwnedFd::from).map(File::from);
    let mut pump =
        Pump { conn, pgid, stdin, stdin_pending: Vec::new(), stdin_eof: false, host_open: true };
    let code = pump.run(stdout, stderr, watch);
    if agent.sync_before_exit() {
        nix::unistd::sync();
    }
    if !pump.host_open {
        return Outcome::Close;
    }
    match write_frame(pump.conn, FrameType::EXIT, &encode_exit(code)) {
        Ok(()) => Outcome::Done,
        Err(_) => Outcome::Close,
    }
}

struct Pump<'a> {
    conn: &'a mut Conn,
    pgid: Pid,
    stdin: Option<File>,
    /// Host input not yet accepted by the child's stdin pipe.
    stdin_pending: Vec<u8>,
    /// The host sent EOF (an empty STDIN frame): close stdin once `stdin_pending` is written.
    stdin_eof: bool,
    host_open: bool,
}

impl Pump<'_> {
    /// Runs until the exit code is known and then both output pipes reached EOF or
    /// [`EXIT_DRAIN`] passed, whichever comes first; returns the code. Pipes still open then
    /// (a background child inherited them) are handed to [`pipes::discard_until_eof`]: the
    /// child keeps running and writing, and the EXIT frame does not wait for it.
    fn run(
        &mut self,
        mut stdout: Option<File>,
        mut stderr: Option<File>,
        mut watch: ExitWatch,
    ) -> i32 {
        if let Some(stdin) = &self.stdin {
            // Non-blocking, so a child that does not read its stdin cannot stall the loop.
            let _ = fcntl(stdin, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        }
        let mut code = None;
        // Set when the command exits: output is read until then, not until pipe EOF.
        let mut drain_until = None;
        let mut buf = vec![0u8; OUTPUT_CHUNK];
        while code.is_none()
            || ((stdout.is_some() || stderr.is_some()) && !pipes::passed(drain_until))
        {
            // Host frames are read while less than STDIN_BUFFER of input waits for the child, so
            // KILL and a disconnect are seen even while the child ignores its stdin. Beyond
            // that, input is back-pressured but a hang-up is still noticed (POLLRDHUP).
            let host_flags = if self.stdin_pending.len() < STDIN_BUFFER {
                libc::POLLIN | libc::POLLRDHUP
            } else {
                libc::POLLRDHUP
            };
            let want_stdin = self.stdin.is_some() && !self.stdin_pending.is_empty();
            let candidates = [
                self.host_open.then(|| (self.conn.as_raw_fd(), host_flags)),
                stdout.as_ref().map(|f| (f.as_raw_fd(), libc::POLLIN)),
                stderr.as_ref().map(|f| (f.as_raw_fd(), libc::POLLIN)),
                code.is_none().then(|| (watch.as_fd().as_raw_fd(), libc::POLLIN)),
                self.stdin.as_ref().filter(|_| want_stdin).map(|f| (f.as_raw_fd(), libc::POLLOUT)),
            ];
            let [host_events, out_ready, err_ready, exit_ready, in_ready] =
                poll_slots(candidates, pipes::timeout_ms(drain_until));
            let [out_ready, err_ready, exit_ready, in_ready] =
                [out_ready, err_ready, exit_ready, in_ready].map(|r| r != 0);

            if out_ready && !self.forward_output(&mut stdout, FrameType::STDOUT, &mut buf) {
                stdout = None;
            }
            if err_ready && !self.forward_output(&mut stderr, FrameType::STDERR, &mut buf) {
                stderr = None;
            }
            if exit_ready {
                code = Some(watch.read_code());
                drain_until = Some(std::time::Instant::now() + EXIT_DRAIN);
            }
            if in_ready {
                self.flush_stdin();
            }
            if host_events & libc::POLLIN != 0 {
                self.read_host();
            } else if host_events & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                self.host_gone();
            }
        }
        pipes::discard_until_eof(stdout.into_iter().chain(stderr).collect());
        code.unwrap_or(1)
    }

    /// Reads one chunk of child output and sends it; false at EOF.
    fn forward_output(&mut self, pipe: &mut Option<File>, kind: FrameType, buf: &mut [u8]) -> bool {
        let Some(file) = pipe else { return false };
        match file.read(buf) {
            Ok(0) => false,
            Ok(n) => {
                if self.host_open && write_frame(self.conn, kind, &buf[..n]).is_err() {
                    self.host_gone();
                }
                true
            }
            Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {
                true
            }
            Err(_) => false,
        }
    }

    /// Handles one frame from the host: STDIN, KILL, or the host going away.
    fn read_host(&mut self) {
        match read_frame(self.conn) {
            Ok(Some(frame)) => match frame.kind {
                FrameType::STDIN if frame.payload.is_empty() => {
                    // EOF once everything before it has reached the child.
                    self.stdin_eof = true;
                    self.flush_stdin();
                }
                FrameType::STDIN => {
                    self.stdin_pending.extend_from_slice(&frame.payload);
                    self.flush_stdin();
                }
                FrameType::KILL => self.kill(),
                _ => {}
            },
            Ok(None) | Err(_) => self.host_gone(),
        }
    }

    /// Writes as much pending stdin as the pipe takes; drops stdin if the child closed it.
    fn flush_stdin(&mut self) {
        let Some(stdin) = &mut self.stdin else {
            self.stdin_pending.clear();
            return;
        };
        while !self.stdin_pending.is_empty() {
            match stdin.write(&self.stdin_pending) {
                Ok(n) => {
                    self.stdin_pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.stdin = None;
                    self.stdin_pending.clear();
                    return;
                }
            }
        }
        if self.stdin_eof {
            self.stdin = None;
        }
    }

    /// The host disconnected: kill the command (v1 left it running, which the docs said it would
    /// not) and keep draining until it is gone.
    fn host_gone(&mut self) {
        if self.host_open {
            self.host_open = false;
            self.stdin = None;
            self.stdin_pending.clear();
            self.kill();
        }
    }

    fn kill(&self) {
        let _ = kill(Pid::from_raw(-self.pgid.as_raw()), Signal::SIGKILL);
    }
}

/// Starts a detached exec: output to a file, replies with the PID and the file, then EXIT 0.
pub fn run_detached(agent: &Agent, conn: &mut Conn, req: &ExecRequest) -> Outcome {
    let output_file = match req.output_file.as_deref() {
        Some(path) if !path.is_empty() => path.to_owned(),
        _ => format!("/tmp/bhatti-detach-{}.log", unix_nanos()),
    };
    // Opened by root on the host's behalf in a guest the user controls: a link planted at the
    // path would redirect root's truncating write (Links::Refuse), and a FIFO, terminal or device
    // is refused rather than blocked on or written to (open_regular).
    let mut options = OpenOptions::new();
    options.create(true).write(true).truncate(true).mode(0o644);
    let file = match open_regular(&output_file, options, Links::Refuse) {
        Ok((file, _)) => file,
        Err(e) => return send_error(conn, &format!("open output file: {e}")),
    };
    let run_as = RunAs::from_request(req.user.as_deref());
    let env = spawn::build_env(run_as, &agent.config.env, req.env.as_ref());
    let spawned = spawn::command(&req.argv, &env, req.cwd.as_deref(), run_as, Grouping::Session)
        .and_then(|mut cmd| {
            cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
            reaper::spawn_unwatched(&mut cmd)
        });
    let child = match spawned {
        Ok(child) => child,
        Err(e) => return send_error(conn, &format!("start: {}: {e}", req.argv[0])),
    };
    let info = DetachedExec { pid: i64::from(child.id()), output_file };
    let sent = send_json(conn, FrameType::STDOUT, &info)
        .and_then(|()| write_frame(conn, FrameType::EXIT, &encode_exit(0)));
    if sent.is_ok() { Outcome::Done } else { Outcome::Close }
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
