//! Sessions: long-lived TTY or piped processes with scrollback, detach and reattach.
//!
//! Each session has one output thread that reads the PTY (or the stdout/stderr pipes: one merged
//! pipe as in v1, or two when the creating request asked for `stderr`), appends to the
//! scrollback (which remembers each chunk's stream) and forwards to the attached client's queue:
//! stderr as STDERR frames to a client that asked for them, as STDOUT to any other. Each attached client
//! has one writer thread draining its queue into its socket, and its connection thread reads its
//! input. The session lock is never held while writing to a socket, so a stalled client cannot
//! block EXEC_KILL, listing or a takeover (v1 wrote to the socket under the lock).
//!
//! Ordering on reattach: the attach takes SESSION_INFO and the scrollback as the new client's
//! first frames under the session lock and only then makes the client visible; the output thread picks
//! the client up under the same lock, so live bytes always follow the replay.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto::limits::{
    MAX_SESSION_META_BYTES, MAX_SESSION_TAG_BYTES, MAX_SESSIONS, SCROLLBACK_BYTES,
};
use proto::messages::{ActivityInfo, ExecRequest, SessionInfo};
use proto::payload::{WindowSize, decode_resize, encode_exit};
use proto::{FrameType, read_frame, write_frame};

use crate::activity;
use crate::conn::Conn;
use crate::pipes::{self, EXIT_DRAIN, poll_slots};
use crate::pty;
use crate::reaper::{self, ExitWatch};
use crate::reply::{Outcome, send_error};
use crate::ring::{Stream, StreamRing};
use crate::spawn::{self, Grouping, RunAs};
use proto::guest::GuestConfig;

/// How long an exited, detached session stays listed so a later attach can read its scrollback
/// and exit code.
const EXITED_RETENTION: Duration = Duration::from_secs(30);
/// Frames queued for one attached client before the output thread waits (back-pressure).
const CLIENT_QUEUE: usize = 256;
/// Bytes read from the PTY or pipe per STDOUT frame.
const OUTPUT_CHUNK: usize = 8192;
/// Default terminal size.
const DEFAULT_SIZE: WindowSize = WindowSize { rows: 24, cols: 80 };
/// The fixed id of the session started from the config's `init` script.
pub const INIT_SESSION_ID: &str = "init";

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a session lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Outbound {
    Frame(FrameType, Vec<u8>),
    /// Write nothing more and shut the socket down.
    End,
}

/// An attached client: its queue and a handle to shut its socket down.
struct Client {
    id: u64,
    tx: SyncSender<Outbound>,
    conn: Conn,
    /// Receives stderr as STDERR frames (it asked, extension `procs`); else as STDOUT.
    stderr: bool,
}

impl Client {
    /// The frame type of a chunk from `stream` for this client.
    fn frame_for(stderr: bool, stream: Stream) -> FrameType {
        if stderr && stream == Stream::Err { FrameType::STDERR } else { FrameType::STDOUT }
    }
}

impl Client {
    /// Tells a client it lost the session to another attach, then disconnects it.
    fn kick(self) {
        let delivered = self
            .tx
            .try_send(Outbound::Frame(FrameType::EXIT, encode_exit(0).to_vec()))
            .and_then(|()| self.tx.try_send(Outbound::End));
        if delivered.is_err() {
            self.conn.shutdown(Shutdown::Both);
        }
    }
}

struct State {
    scrollback: StreamRing,
    attached: Option<Client>,
    exit_code: Option<i32>,
    /// When a detached session with `max_idle` is killed; `None` while attached or unarmed.
    idle_deadline: Option<Instant>,
    /// The session's idle-timer thread is running (at most one per session).
    idle_thread: bool,
}

/// One session.
pub struct Session {
    id: String,
    argv: String,
    tty: bool,
    created_at: i64,
    max_idle: Option<Duration>,
    /// The child's PID, also its process group (it leads a session of its own).
    pgid: Pid,
    /// stderr has a pipe of its own (extension `procs`).
    split_stderr: bool,
    /// Host-given tag and data (extension `procs`).
    tag: Option<String>,
    meta: Option<String>,
    /// PTY master or the write end of the child's stdin; `None` once closed.
    input: Mutex<Option<File>>,
    state: Mutex<State>,
    /// Wakes the idle-timer thread when the deadline changes or the process exits.
    idle_changed: Condvar,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("pgid", &self.pgid).finish()
    }
}

impl Session {
    fn info(&self, st: &State) -> SessionInfo {
        SessionInfo {
            session_id: self.id.clone(),
            argv: self.argv.clone(),
            tty: self.tty,
            running: st.exit_code.is_none(),
            exit_code: st.exit_code,
            attached: st.attached.is_some(),
            created_at: self.created_at,
            pid: Some(i64::from(self.pgid.as_raw())),
            stderr: self.split_stderr,
            tag: self.tag.clone(),
            meta: self.meta.clone(),
        }
    }

    fn signal(&self, signal: Signal) {
        // Never signal PID <= 1: kill(-1) would hit every process.
        if self.pgid.as_raw() > 1 {
            let _ = kill(Pid::from_raw(-self.pgid.as_raw()), signal);
        }
    }

    /// Clears the attached client only if it is still `client_id` (v1 cleared unconditionally,
    /// so a kicked client's disconnect detached its successor), then arms the idle timer.
    fn detach(self: &Arc<Self>, client_id: u64) {
        let mut st = lock(&self.state);
        if st.attached.as_ref().is_some_and(|c| c.id == client_id) {
            st.attached = None;
            self.arm_idle_timer(&mut st);
        }
    }

    /// Arms the idle deadline (detached sessions with `max_idle` only). One timer thread per
    /// session waits for the current deadline; re-arming moves it instead of adding threads.
    fn arm_idle_timer(self: &Arc<Self>, st: &mut State) {
        let Some(idle) = self.max_idle else { return };
        if st.exit_code.is_some() {
            return;
        }
        st.idle_deadline = Some(Instant::now() + idle);
        if st.idle_thread {
            self.idle_changed.notify_all();
            return;
        }
        st.idle_thread = true;
        let session = Arc::clone(self);
        std::thread::spawn(move || session.idle_timer());
    }

    /// Disarms the idle deadline (on attach).
    fn disarm_idle_timer(&self, st: &mut State) {
        st.idle_deadline = None;
        self.idle_changed.notify_all();
    }

    /// The idle-timer thread: SIGKILLs the process group when the deadline passes while nobody
    /// is attached; ends when the process exits.
    fn idle_timer(&self) {
        let mut st = lock(&self.state);
        loop {
            if st.exit_code.is_some() {
                st.idle_thread = false;
                return;
            }
            st = match st.idle_deadline {
                None => self.idle_changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) if Instant::now() >= deadline => {
                    st.idle_deadline = None;
                    if st.attached.is_none() {
                        self.signal(Signal::SIGKILL);
                    }
                    st
                }
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    self.idle_changed.wait_timeout(st, wait).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

/// All sessions of this agent. Cloning shares the registry.
#[derive(Clone, Default, Debug)]
pub struct Registry {
    inner: Arc<Mutex<Sessions>>,
}

#[derive(Default, Debug)]
struct Sessions {
    by_id: HashMap<String, Arc<Session>>,
    next_id: u64,
}

impl Sessions {
    /// Makes room for one more session. Exited sessions kept for scrollback are evicted oldest
    /// first (v1 counted them against the cap, refusing new sessions for 30 s).
    fn make_room(&mut self) -> Result<(), &'static str> {
        if self.by_id.len() < MAX_SESSIONS {
            return Ok(());
        }
        let mut exited: Vec<(i64, String)> = self
            .by_id
            .values()
            .filter(|s| lock(&s.state).exit_code.is_some())
            .map(|s| (s.created_at, s.id.clone()))
            .collect();
        exited.sort();
        for (_, id) in exited {
            if self.by_id.len() < MAX_SESSIONS {
                break;
            }
            self.by_id.remove(&id);
        }
        if self.by_id.len() < MAX_SESSIONS { Ok(()) } else { Err("session limit exceeded") }
    }
}

impl Registry {
    fn get(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.inner).by_id.get(id).cloned()
    }

    fn remove(&self, session: &Arc<Session>) {
        let mut inner = lock(&self.inner);
        if inner.by_id.get(&session.id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            inner.by_id.remove(&session.id);
        }
    }

    /// Every session, in id order.
    pub fn list(&self) -> Vec<SessionInfo> {
        let sessions: Vec<Arc<Session>> = lock(&self.inner).by_id.values().cloned().collect();
        let mut infos: Vec<SessionInfo> =
            sessions.iter().map(|s| s.info(&lock(&s.state))).collect();
        infos.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.session_id.cmp(&b.session_id)));
        infos
    }

    /// Activity counters for ACTIVITY_RESP.
    pub fn activity(&self) -> ActivityInfo {
        let mut info = ActivityInfo { last_activity_unix: activity::last(), ..Default::default() };
        let sessions: Vec<Arc<Session>> = lock(&self.inner).by_id.values().cloned().collect();
        for session in sessions {
            let st = lock(&session.state);
            info.active_sessions += u32::from(st.exit_code.is_none());
            info.attached_sessions += u32::from(st.attached.is_some());
        }
        info
    }

    /// Sends `signal` to a session's process group (EXEC_KILL: SIGKILL unless the request
    /// names another). `false` if there is no such session.
    pub fn kill(&self, id: &str, signal: Signal) -> bool {
        match self.get(id) {
            Some(session) => {
                session.signal(signal);
                true
            }
            None => false,
        }
    }
}

/// What kind of session to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A PTY session (`tty: true`).
    Tty,
    /// Pipes (`session: true`): stderr merged into stdout, or apart with `stderr: true`.
    Piped,
}

struct Spawned {
    pgid: Pid,
    input: File,
    output: File,
    /// stderr's own pipe, when it is kept apart.
    errors: Option<File>,
    watch: ExitWatch,
}

fn spawn_tty(argv: &[String], req_env: &SpawnEnv<'_>, size: WindowSize) -> Result<Spawned, String> {
    let pty = pty::open(size).map_err(|e| format!("pty: {e}"))?;
    let (child, watch) = {
        let mut cmd = spawn::command(
            argv,
            req_env.env,
            req_env.cwd,
            req_env.run_as,
            Grouping::SessionWithTty,
        )
        .map_err(|e| format!("start: {e}"))?;
        let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
        let (i, o, e) = (stdio(&pty.slave), stdio(&pty.slave), stdio(&pty.slave));
        let (i, o, e) = match (i, o, e) {
            (Ok(i), Ok(o), Ok(e)) => (i, o, e),
            _ => return Err("pty: cannot duplicate the terminal".to_owned()),
        };
        cmd.stdin(i).stdout(o).stderr(e);
        // `cmd` (holding the slave copies) is dropped at the end of this block, so the master
        // sees EOF once the child and its descendants close the terminal.
        reaper::spawn_watched(&mut cmd).map_err(|e| format!("start: {}: {e}", argv[0]))?
    };
    drop(pty.slave);
    let input = pty.master.try_clone().map_err(|e| format!("pty: {e}"))?;
    Ok(Spawned {
        pgid: Pid::from_raw(child.id() as i32),
        input,
        output: pty.master,
        errors: None,
        watch,
    })
}

fn spawn_piped(argv: &[String], req_env: &SpawnEnv<'_>, split: bool) -> Result<Spawned, String> {
    let (reader, writer) = std::io::pipe().map_err(|e| format!("stdout pipe: {e}"))?;
    let (errors, err_writer) = if split {
        let (r, w) = std::io::pipe().map_err(|e| format!("stderr pipe: {e}"))?;
        (Some(File::from(OwnedFd::from(r))), w)
    } else {
        (None, writer.try_clone().map_err(|e| format!("stderr pipe: {e}"))?)
    };
    let (mut child, watch) = {
        let mut cmd =
            spawn::command(argv, req_env.env, req_env.cwd, req_env.run_as, Grouping::Session)
                .map_err(|e| format!("start: {e}"))?;
        cmd.stdin(Stdio::piped()).stdout(writer).stderr(err_writer);
        reaper::spawn_watched(&mut cmd).map_err(|e| format!("start: {}: {e}", argv[0]))?
    };
    let input =
        child.stdin.take().map(OwnedFd::from).map(File::from).ok_or("stdin pipe: missing")?;
    Ok(Spawned {
        pgid: Pid::from_raw(child.id() as i32),
        input,
        output: File::from(OwnedFd::from(reader)),
        errors,
        watch,
    })
}

struct SpawnEnv<'a> {
    env: &'a std::collections::BTreeMap<String, String>,
    cwd: Option<&'a str>,
    run_as: RunAs,
}

fn start_output_thread(registry: Registry, session: Arc<Session>, spawned: Spawned) {
    let Spawned { output, errors, watch, .. } = spawned;
    std::thread::spawn(move || pump_output(&registry, &session, output, errors, watch));
}

/// The host-given tag and data of a create, or why they are refused.
fn labels_of(req: &ExecRequest) -> Result<(Option<String>, Option<String>), &'static str> {
    if req.tag.as_ref().is_some_and(|t| t.len() > MAX_SESSION_TAG_BYTES) {
        return Err("session tag too long");
    }
    if req.meta.as_ref().is_some_and(|m| m.len() > MAX_SESSION_META_BYTES) {
        return Err("session meta too long");
    }
    Ok((req.tag.clone(), req.meta.clone()))
}

/// Creates a session for this connection's request and attaches the connection to it.
pub fn create(
    registry: &Registry,
    guest: &GuestConfig,
    conn: &mut Conn,
    req: &ExecRequest,
    kind: Kind,
) -> Outcome {
    let run_as = RunAs::from_request(req.user.as_deref());
    let env = spawn::build_env(run_as, &guest.env, req.env.as_ref());
    let spawn_env = SpawnEnv { env: &env, cwd: req.cwd.as_deref(), run_as };
    let (tag, meta) = match labels_of(req) {
        Ok(labels) => labels,
        Err(msg) => return send_error(conn, msg),
    };
    let wants_stderr = req.stderr == Some(true);
    let session = {
        // Held across the spawn so concurrent creates cannot overshoot the cap.
        let mut inner = lock(&registry.inner);
        if let Err(msg) = inner.make_room() {
            drop(inner);
            return send_error(conn, msg);
        }
        let size = WindowSize {
            rows: req.rows.unwrap_or(DEFAULT_SIZE.rows),
            cols: req.cols.unwrap_or(DEFAULT_SIZE.cols),
        };
        let spawned = match kind {
            Kind::Tty => spawn_tty(&req.argv, &spawn_env, size),
            Kind::Piped => spawn_piped(&req.argv, &spawn_env, wants_stderr),
        };
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(msg) => {
                drop(inner);
                return send_error(conn, &msg);
            }
        };
        inner.next_id += 1;
        let id = format!("s{}", inner.next_id);
        let max_idle = req.max_idle_sec.filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64));
        let labels = (tag, meta);
        let session = new_session(id, &req.argv, kind == Kind::Tty, max_idle, &spawned, labels);
        inner.by_id.insert(session.id.clone(), Arc::clone(&session));
        start_output_thread(registry.clone(), Arc::clone(&session), spawned);
        session
    };
    attach_to(registry, conn, &session, false, wants_stderr)
}

fn new_session(
    id: String,
    argv: &[String],
    tty: bool,
    max_idle: Option<Duration>,
    spawned: &Spawned,
    (tag, meta): (Option<String>, Option<String>),
) -> Arc<Session> {
    Arc::new(Session {
        id,
        argv: argv.join(" "),
        tty,
        created_at: activity::now_unix(),
        max_idle,
        pgid: spawned.pgid,
        split_stderr: spawned.errors.is_some(),
        tag,
        meta,
        input: Mutex::new(spawned.input.try_clone().ok()),
        state: Mutex::new(State {
            scrollback: StreamRing::new(SCROLLBACK_BYTES),
            attached: None,
            exit_code: None,
            idle_deadline: None,
            idle_thread: false,
        }),
        idle_changed: Condvar::new(),
    })
}

/// Starts the `init` session from the config's init script (no client attached).
pub fn start_init(registry: &Registry, guest: &GuestConfig) -> Result<(), String> {
    let script = &guest.init;
    let run_as = if guest.user == "root" { RunAs::Root } else { RunAs::User };
    let env = spawn::build_env(run_as, &guest.env, None);
    // v1 required /workspace and silently dropped the init session without it.
    let home = env.get("HOME").cloned().unwrap_or_default();
    let cwd = ["/workspace", home.as_str(), "/"]
        .into_iter()
        .find(|d| !d.is_empty() && std::path::Path::new(d).is_dir());
    let argv = vec!["sh".to_owned(), "-c".to_owned(), script.clone()];
    let spawn_env = SpawnEnv { env: &env, cwd, run_as };
    let mut inner = lock(&registry.inner);
    inner.make_room()?;
    let spawned = spawn_tty(&argv, &spawn_env, DEFAULT_SIZE)?;
    let session =
        new_session(INIT_SESSION_ID.to_owned(), &argv, true, None, &spawned, (None, None));
    inner.by_id.insert(session.id.clone(), Arc::clone(&session));
    start_output_thread(registry.clone(), session, spawned);
    Ok(())
}

/// Attaches this connection to an existing session (`session_id` in the request); with
/// `stderr`, the session's stderr reaches it as STDERR frames.
pub fn attach(
    registry: &Registry,
    conn: &mut Conn,
    id: &str,
    if_detached: bool,
    stderr: bool,
) -> Outcome {
    match registry.get(id) {
        Some(session) => attach_to(registry, conn, &session, if_detached, stderr),
        None => send_error(conn, "session not found"),
    }
}

fn attach_to(
    registry: &Registry,
    conn: &mut Conn,
    session: &Arc<Session>,
    if_detached: bool,
    stderr: bool,
) -> Outcome {
    let Ok(writer_conn) = conn.try_clone() else {
        return Outcome::Close;
    };
    let Ok(kick_conn) = conn.try_clone() else {
        return Outcome::Close;
    };
    let client_id = NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = sync_channel(CLIENT_QUEUE);
    // The client's first frames, written before anything of its queue: SESSION_INFO, the
    // scrollback (one frame per run of a stream for a client that takes STDERR frames, so
    // not bounded by the queue's size), and EXIT of a session that has ended.
    let mut first = Vec::new();
    let finished = {
        let mut st = lock(&session.state);
        if if_detached && st.attached.is_some() {
            drop(st);
            return send_error(conn, "session is attached");
        }
        if let Some(old) = st.attached.take() {
            old.kick();
        }
        session.disarm_idle_timer(&mut st);
        let mut info = session.info(&st);
        info.attached = st.exit_code.is_none();
        let info_json = serde_json::to_vec(&info).unwrap_or_default();
        first.push(Outbound::Frame(FrameType::SESSION_INFO, info_json));
        if !st.scrollback.is_empty() {
            if stderr && session.split_stderr {
                for (stream, data) in st.scrollback.runs() {
                    first.push(Outbound::Frame(Client::frame_for(true, stream), data));
                }
            } else {
                first.push(Outbound::Frame(FrameType::STDOUT, st.scrollback.merged()));
            }
        }
        match st.exit_code {
            Some(code) => {
                first.push(Outbound::Frame(FrameType::EXIT, encode_exit(code).to_vec()));
                first.push(Outbound::End);
                true
            }
            None => {
                st.attached = Some(Client { id: client_id, tx, conn: kick_conn, stderr });
                false
            }
        }
    };
    let writer = std::thread::spawn(move || write_queue(writer_conn, first, rx));
    if finished {
        // The exit has been collected; the session is done.
        registry.remove(session);
        let _ = writer.join();
        return Outcome::Close;
    }
    input_loop(conn, session, client_id);
    Outcome::Close
}

/// Writes a client's first frames, then drains its queue into its socket; shuts the socket
/// down when done.
fn write_queue(mut conn: Conn, first: Vec<Outbound>, rx: Receiver<Outbound>) {
    for out in first.into_iter().chain(rx) {
        match out {
            Outbound::Frame(kind, payload) => {
                if write_frame(&mut conn, kind, &payload).is_err() {
                    break;
                }
            }
            Outbound::End => break,
        }
    }
    conn.shutdown(Shutdown::Both);
}

/// Reads the attached client's STDIN, RESIZE and KILL until it disconnects.
fn input_loop(conn: &mut Conn, session: &Arc<Session>, client_id: u64) {
    while let Ok(Some(frame)) = read_frame(conn) {
        match frame.kind {
            FrameType::STDIN => {
                activity::touch();
                let mut input = lock(&session.input);
                if frame.payload.is_empty() && !session.tty {
                    // Extension: an empty STDIN frame closes a piped session's stdin (EOF).
                    *input = None;
                } else if let Some(file) = input.as_mut() {
                    let _ = file.write_all(&frame.payload);
                }
            }
            FrameType::RESIZE if session.tty => {
                if let (Ok(size), Some(file)) =
                    (decode_resize(&frame.payload), &*lock(&session.input))
                {
                    let _ = pty::resize(file, size);
                }
            }
            FrameType::KILL => {
                session.signal(Signal::SIGTERM);
                break;
            }
            _ => {}
        }
    }
    session.detach(client_id);
}

/// Reads one chunk of `stream` into the scrollback and the attached client's queue; false at
/// EOF (EIO on a terminal: every slave fd is closed).
fn forward_output(
    session: &Arc<Session>,
    output: &mut Option<File>,
    stream: Stream,
    buf: &mut [u8],
) -> bool {
    let Some(file) = output else { return false };
    let n = match file.read(buf) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => {
            return true;
        }
        Err(_) => return false,
    };
    let client = {
        let mut st = lock(&session.state);
        st.scrollback.write(stream, &buf[..n]);
        st.attached.as_ref().map(|c| (c.tx.clone(), c.stderr))
    };
    if let Some((tx, stderr)) = client {
        // Blocks while the client's queue is full, without holding the session lock.
        let _ = tx.send(Outbound::Frame(Client::frame_for(stderr, stream), buf[..n].to_vec()));
    }
    true
}

/// The session's output thread: scrollback, live output, exit and retention. Output is read
/// until the process exits and then until EOF or [`EXIT_DRAIN`], whichever comes first: a
/// background child that inherited the pipe or terminal must not hold the session's EXIT back.
fn pump_output(
    registry: &Registry,
    session: &Arc<Session>,
    output: File,
    errors: Option<File>,
    mut watch: ExitWatch,
) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut output = Some(output);
    let mut errors = errors;
    let mut code = None;
    let mut drain_until = None;
    while code.is_none() || ((output.is_some() || errors.is_some()) && !pipes::passed(drain_until))
    {
        let [out_ready, err_ready, exit_ready] = poll_slots(
            [
                output.as_ref().map(|f| (f.as_raw_fd(), libc::POLLIN)),
                errors.as_ref().map(|f| (f.as_raw_fd(), libc::POLLIN)),
                code.is_none().then(|| (watch.as_fd().as_raw_fd(), libc::POLLIN)),
            ],
            pipes::timeout_ms(drain_until),
        );
        if out_ready != 0 && !forward_output(session, &mut output, Stream::Out, &mut buf) {
            output = None;
        }
        if err_ready != 0 && !forward_output(session, &mut errors, Stream::Err, &mut buf) {
            errors = None;
        }
        if exit_ready != 0 {
            code = Some(watch.read_code());
            drain_until = Some(Instant::now() + EXIT_DRAIN);
        }
    }
    pipes::discard_until_eof(output.into_iter().chain(errors).collect());
    let code = code.unwrap_or(1);
    *lock(&session.input) = None;
    let attached = {
        let mut st = lock(&session.state);
        st.exit_code = Some(code);
        session.idle_changed.notify_all();
        st.attached.take()
    };
    if let Some(client) = attached {
        let _ = client.tx.send(Outbound::Frame(FrameType::EXIT, encode_exit(code).to_vec()));
        let _ = client.tx.send(Outbound::End);
        registry.remove(session);
    } else {
        std::thread::sleep(EXITED_RETENTION);
        registry.remove(session);
    }
}
