//! Latency and throughput benchmark of the real `lohar` binary in test mode.
//!
//! Starts `lohar` with `LOHAR_TEST=1` on Unix sockets in a temp dir (as the integration suite
//! does), speaks raw frames to it and reports percentiles (p50/p95/p99, min, max; never
//! averages) next to a `posix_spawn` baseline measured by this process in the same run.
//!
//! Run with `cargo bench -p lohar --bench agent` (without `--bench` in its arguments, e.g. under
//! `cargo test --benches`, it does a short smoke run instead). Environment:
//! - `BENCH_RUNS`: measured runs per latency benchmark and ring batches (default 1000).
//! - `BENCH_WARMUP`: warm-up runs before each latency benchmark (default 50).
//! - `BENCH_STREAM_RUNS`: runs per session-throughput benchmark (default 5).
//! - `BENCH_STREAM_MIB`: output size of a session-throughput run in MiB (default 64).
//! - `BENCH_FILE_DIR`: directory (filesystem) for the file benchmark; default the temp dir.
//! - `BENCH_ONLY`: comma-separated groups to run (see [`Only`]), for profiling one path.
//!
//! Results and the machine they were taken on are in `crates/lohar/BENCHMARKS.md`.
//!
//! Units: µs = 10^-6 s, MB/s = 10^6 bytes/s, GB/s = 10^9 bytes/s.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

// Bench targets are built with `cfg(test)` but without the test harness, so the ring's own test
// module compiles with its `#[test]` functions stripped, leaving its import unused. The bench
// times `RingBuffer` only, so `StreamRing` (a session's stream-aware scrollback) is unused here.
#[allow(unused_imports, dead_code)]
#[path = "../src/ring.rs"]
mod ring;

use std::hint::black_box;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use proto::messages::{
    ExecRequest, FileInfo, FileReadRequest, FileWriteRequest, FileWriteResponse, Hello,
    PathRequest, SessionInfo,
};
use proto::payload::decode_exit;
use proto::{Frame, FrameType, read_frame, send_json, write_frame};

use ring::RingBuffer;

/// Safety net on every socket read, so a hung agent fails the bench instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Scrollback size of a session in lohar (`proto::limits::SCROLLBACK_BYTES`).
const RING_CAPACITY: usize = 64 * 1024;
/// Bytes written into the ring per timed batch.
const RING_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// File size of the write/read benchmark.
const FILE_BYTES: usize = 1024;
/// Output size of the 4 KiB exec benchmark.
const EXEC_OUTPUT_BYTES: usize = 4096;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => {
            v.parse().unwrap_or_else(|_| panic!("{name} must be a non-negative integer, got {v:?}"))
        }
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------------
// The agent under test
// ---------------------------------------------------------------------------------------------

struct Agent {
    process: testkit::TestLohar,
    dir: PathBuf,
    control: PathBuf,
}

impl Agent {
    fn start() -> Self {
        let options = testkit::Options { echo_stderr: true, ..Default::default() };
        let process = testkit::TestLohar::start(
            std::path::Path::new(env!("CARGO_BIN_EXE_lohar")),
            tempfile::tempdir().unwrap(),
            options,
        );
        Agent { dir: process.dir().to_owned(), control: process.control(), process }
    }

    /// A fresh connection without HELLO: exactly one request (v1 behaviour).
    fn connect(&self) -> Conn {
        Conn::new(UnixStream::connect(&self.control).expect("connect control socket"))
    }

    /// A connection that negotiated `reuse` and can carry any number of requests.
    fn connect_reuse(&self) -> Conn {
        let mut conn = self.connect();
        let hello = Hello { version: 1, features: vec!["reuse".into()] };
        send_json(&mut conn.w, FrameType::HELLO, &hello).unwrap();
        let ack = conn.read();
        assert_eq!(ack.kind, FrameType::HELLO_ACK, "HELLO answered with {ack:?}");
        let ack: Hello = ack.json().unwrap();
        assert!(ack.features.iter().any(|f| f == "reuse"), "reuse not granted: {ack:?}");
        conn
    }

    /// SIGTERM, then wait (at most 10 s) for the agent to exit.
    fn stop(self) -> Option<ExitStatus> {
        self.process.stop().0
    }
}

/// One connection: a buffered reader (as a real host client would use) and a writer handle.
struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    fn new(stream: UnixStream) -> Self {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let w = stream.try_clone().unwrap();
        Conn { r: BufReader::with_capacity(256 * 1024, stream), w }
    }

    /// The next frame; panics on EOF and on ERROR frames.
    fn read(&mut self) -> Frame {
        let frame = read_frame(&mut self.r).unwrap().expect("unexpected EOF");
        assert_ne!(frame.kind, FrameType::ERROR, "agent error: {}", frame.text());
        frame
    }

    /// Sends EXEC_REQ and reads to EXIT; returns the STDOUT byte count. Exit code must be 0.
    fn exec(&mut self, req: &ExecRequest) -> usize {
        send_json(&mut self.w, FrameType::EXEC_REQ, req).unwrap();
        let mut out = 0;
        loop {
            let frame = self.read();
            match frame.kind {
                FrameType::STDOUT => out += frame.payload.len(),
                FrameType::EXIT => {
                    assert_eq!(decode_exit(&frame.payload).unwrap(), 0, "{:?}", req.argv);
                    return out;
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// Sorted samples of one latency benchmark.
struct Latency {
    name: String,
    sorted: Vec<Duration>,
}

impl Latency {
    fn new(name: impl Into<String>, mut samples: Vec<Duration>) -> Self {
        assert!(!samples.is_empty());
        samples.sort_unstable();
        Latency { name: name.into(), sorted: samples }
    }

    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> Duration {
        percentile(&self.sorted, p)
    }

    fn p50(&self) -> Duration {
        self.pct(50.0)
    }

    fn p99(&self) -> Duration {
        self.pct(99.0)
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Throughput samples: one (bytes, time) pair per batch or run.
struct Throughput {
    name: String,
    unit: &'static str,
    /// Sorted rates in `unit`.
    rates: Vec<f64>,
    /// Sorted batch times.
    times: Vec<Duration>,
    /// Bytes moved per batch or run.
    bytes: usize,
}

impl Throughput {
    fn new(
        name: impl Into<String>,
        unit: &'static str,
        scale: f64,
        samples: &[(usize, Duration)],
    ) -> Self {
        assert!(!samples.is_empty());
        let mut rates: Vec<f64> =
            samples.iter().map(|(bytes, t)| *bytes as f64 / t.as_secs_f64() / scale).collect();
        rates.sort_by(f64::total_cmp);
        let mut times: Vec<Duration> = samples.iter().map(|(_, t)| *t).collect();
        times.sort_unstable();
        Throughput { name: name.into(), unit, rates, times, bytes: samples[0].0 }
    }

    fn p50(&self) -> f64 {
        percentile(&self.rates, 50.0)
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

// ---------------------------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------------------------

fn true_req() -> ExecRequest {
    ExecRequest::command(["true"])
}

fn baseline_spawn() -> Duration {
    let t = Instant::now();
    let status = Command::new("/bin/true").status().unwrap();
    let dt = t.elapsed();
    assert!(status.success());
    dt
}

/// Baseline, exec on a new connection and exec on a reused connection, interleaved run by run
/// so that load from other processes on the shared machine hits all three alike. `enabled`
/// selects which of the three run (all, unless `BENCH_ONLY` says otherwise).
fn bench_exec_true(
    agent: &Agent,
    warmup: usize,
    runs: usize,
    enabled: [bool; 3],
) -> [Option<Latency>; 3] {
    let req = true_req();
    let mut reused = enabled[2].then(|| agent.connect_reuse());
    let new_conn = |agent: &Agent| {
        let t = Instant::now();
        let mut conn = agent.connect();
        conn.exec(&req);
        let dt = t.elapsed();
        drop(conn);
        dt
    };
    let mut on_reused = |conn: &mut Conn| {
        let t = Instant::now();
        conn.exec(&req);
        t.elapsed()
    };
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for i in 0..warmup + runs {
        let measured = [
            enabled[0].then(baseline_spawn),
            enabled[1].then(|| new_conn(agent)),
            reused.as_mut().map(&mut on_reused),
        ];
        if i >= warmup {
            for (dst, sample) in samples.iter_mut().zip(measured) {
                dst.extend(sample);
            }
        }
    }
    let names = [
        "baseline: posix_spawn+wait `/bin/true` (bench process)",
        "exec `true`, new connection per request",
        "exec `true`, reused connection",
    ];
    let [a, b, c] = samples;
    let mut out = [a, b, c]
        .into_iter()
        .zip(names)
        .map(|(s, name)| (!s.is_empty()).then(|| Latency::new(name, s)));
    [out.next().flatten(), out.next().flatten(), out.next().flatten()]
}

fn bench_exec_4k(agent: &Agent, warmup: usize, runs: usize) -> Latency {
    let req = ExecRequest::command(["head", "-c", "4096", "/dev/zero"]);
    let mut conn = agent.connect_reuse();
    let mut one = || {
        let t = Instant::now();
        let n = conn.exec(&req);
        let dt = t.elapsed();
        assert_eq!(n, EXEC_OUTPUT_BYTES, "exec returned {n} bytes, want 4096");
        dt
    };
    for _ in 0..warmup {
        one();
    }
    Latency::new(
        "exec `head -c 4096 /dev/zero` (4 KiB out), reused",
        (0..runs).map(|_| one()).collect(),
    )
}

/// Writes `content` to `path` with FILE_WRITE and reads it back with FILE_READ. Returns the
/// time of the write part and of the read part.
fn write_then_read(conn: &mut Conn, path: &str, content: &[u8]) -> (Duration, Duration) {
    let t0 = Instant::now();
    let req =
        FileWriteRequest { path: path.to_owned(), mode: "0644".into(), size: content.len() as i64 };
    send_json(&mut conn.w, FrameType::FILE_WRITE_REQ, &req).unwrap();
    write_frame(&mut conn.w, FrameType::STDIN, content).unwrap();
    let resp = conn.read();
    assert_eq!(resp.kind, FrameType::FILE_WRITE_RESP, "{resp:?}");
    let resp: FileWriteResponse = resp.json().unwrap();
    assert_eq!(resp.status, "ok");
    let t1 = Instant::now();
    let req = FileReadRequest { path: path.to_owned(), ..FileReadRequest::default() };
    send_json(&mut conn.w, FrameType::FILE_READ_REQ, &req).unwrap();
    let head = conn.read();
    assert_eq!(head.kind, FrameType::FILE_READ_RESP, "{head:?}");
    let mut got = Vec::with_capacity(content.len());
    loop {
        let frame = conn.read();
        match frame.kind {
            FrameType::STDOUT => got.extend_from_slice(&frame.payload),
            FrameType::EXIT => break,
            other => panic!("unexpected {other:?} in file read"),
        }
    }
    let t2 = Instant::now();
    assert_eq!(got, content, "file read back differs");
    (t1 - t0, t2 - t1)
}

/// FILE_WRITE+FILE_READ and FILE_STAT on a reused connection, in `dir`. With `reference`, each
/// run is followed by the same file syscalls done by this process (see [`local_write_read`]),
/// interleaved so the disk's state affects both alike.
fn bench_files(
    agent: &Agent,
    dir: &Path,
    warmup: usize,
    runs: usize,
    reference: bool,
) -> Vec<Latency> {
    let path = dir.join("bench-1k.bin");
    let path_str = path.to_str().unwrap().to_owned();
    let mut content = vec![b'a'; FILE_BYTES];
    let mut conn = agent.connect_reuse();
    let mut one = |i: usize| {
        // Different content every time, so a stale read would be noticed.
        content[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let agent = write_then_read(&mut conn, &path_str, &content);
        let local = reference.then(|| local_write_read(dir, i, &content));
        (agent, local)
    };
    for i in 0..warmup {
        one(i);
    }
    let (mut total, mut write, mut read, mut local) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let ((w, r), l) = one(warmup + i);
        total.push(w + r);
        write.push(w);
        read.push(r);
        local.extend(l);
    }

    let stat_req = PathRequest { path: path_str.clone() };
    let mut stat_one = || {
        let t = Instant::now();
        send_json(&mut conn.w, FrameType::FILE_STAT_REQ, &stat_req).unwrap();
        let resp = conn.read();
        let dt = t.elapsed();
        assert_eq!(resp.kind, FrameType::FILE_STAT_RESP, "{resp:?}");
        let info: FileInfo = resp.json().unwrap();
        assert_eq!(info.size, FILE_BYTES as i64);
        dt
    };
    for _ in 0..warmup {
        stat_one();
    }
    let stat = (0..runs).map(|_| stat_one()).collect();
    let mut rows = vec![
        Latency::new("file write+read 1 KiB, reused", total),
        Latency::new("  ├ write part (FILE_WRITE_REQ+STDIN → FILE_WRITE_RESP)", write),
        Latency::new("  └ read part (FILE_READ_REQ → RESP+STDOUT+EXIT)", read),
        Latency::new("file stat, reused", stat),
    ];
    if reference {
        rows.push(Latency::new(
            "reference: lohar's write syscalls (mkdir -p, create, fchmod, write, fsync, rename, \
             chown) + read, 1 KiB, done by the bench process",
            local,
        ));
    }
    rows
}

/// What lohar's atomic write and a read cost without lohar: the same system calls as
/// `files::write` (create parent dirs, create the temp file, fchmod, write, fsync, rename, chown
/// when root) and a read back, in this process.
fn local_write_read(dir: &Path, i: usize, content: &[u8]) -> Duration {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = dir.join("local-1k.bin");
    let temp = dir.join(format!(".local-1k.bin.tmp-{i}"));
    let t = Instant::now();
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).unwrap();
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&temp).unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(0o644)).unwrap();
    f.write_all(content).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&temp, &path).unwrap();
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&path, Some(1000), Some(1000)).unwrap();
    }
    let back = std::fs::read(&path).unwrap();
    let dt = t.elapsed();
    assert_eq!(back, content);
    dt
}

fn bench_ring(chunk: usize, warmup: usize, batches: usize) -> Throughput {
    let mut ring = RingBuffer::new(RING_CAPACITY);
    let data = vec![0xA5u8; chunk];
    let writes = RING_BATCH_BYTES / chunk;
    let mut batch = || {
        let t = Instant::now();
        for _ in 0..writes {
            ring.write(black_box(&data));
        }
        black_box(&ring);
        t.elapsed()
    };
    for _ in 0..warmup {
        batch();
    }
    let samples: Vec<(usize, Duration)> = (0..batches).map(|_| (writes * chunk, batch())).collect();
    assert_eq!(ring.len(), RING_CAPACITY);
    Throughput::new(
        format!(
            "ring write, {} chunks into 64 KiB ring ({} writes/batch)",
            human_size(chunk),
            writes
        ),
        "GB/s",
        1e9,
        &samples,
    )
}

fn bench_ring_snapshot(warmup: usize, runs: usize) -> Latency {
    let mut ring = RingBuffer::new(RING_CAPACITY);
    // Full and wrapped, so snapshot copies both halves.
    ring.write(&vec![1u8; RING_CAPACITY]);
    ring.write(&[2u8; 1000]);
    assert_eq!(ring.len(), RING_CAPACITY);
    assert!(!ring.is_empty());
    let one = || {
        let t = Instant::now();
        let snap = black_box(&ring).snapshot();
        let dt = t.elapsed();
        assert_eq!(black_box(snap).len(), RING_CAPACITY);
        dt
    };
    for _ in 0..warmup {
        one();
    }
    Latency::new("ring snapshot() of a full 64 KiB ring", (0..runs).map(|_| one()).collect())
}

fn human_size(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// One session run: EXEC_REQ, SESSION_INFO, STDOUT until EXIT. Returns bytes and time.
fn stream_once(agent: &Agent, tty: bool, bytes: usize) -> (usize, Duration) {
    let script = format!("head -c {bytes} /dev/zero | tr '\\0' 'x'");
    let mut req = ExecRequest::command(["sh", "-c", script.as_str()]);
    if tty {
        req.tty = Some(true);
    } else {
        req.session = Some(true);
    }
    let mut conn = agent.connect();
    let t = Instant::now();
    send_json(&mut conn.w, FrameType::EXEC_REQ, &req).unwrap();
    let info = conn.read();
    assert_eq!(info.kind, FrameType::SESSION_INFO, "{info:?}");
    let info: SessionInfo = info.json().unwrap();
    assert_eq!(info.tty, tty);
    let mut got = 0usize;
    let mut checked = false;
    loop {
        let frame = conn.read();
        match frame.kind {
            FrameType::STDOUT => {
                if !checked {
                    assert!(frame.payload.iter().all(|b| *b == b'x'), "unexpected output bytes");
                    checked = true;
                }
                got += frame.payload.len();
            }
            FrameType::EXIT => {
                assert_eq!(decode_exit(&frame.payload).unwrap(), 0);
                break;
            }
            _ => {}
        }
    }
    let dt = t.elapsed();
    assert_eq!(
        got,
        bytes,
        "{} session returned {got} bytes, want {bytes}",
        if tty { "TTY" } else { "piped" }
    );
    (got, dt)
}

fn bench_stream(agent: &Agent, tty: bool, bytes: usize, runs: usize) -> Throughput {
    stream_once(agent, tty, bytes.min(8 * 1024 * 1024)); // warm-up
    let samples: Vec<_> = (0..runs).map(|_| stream_once(agent, tty, bytes)).collect();
    Throughput::new(
        format!(
            "{} session output, {} MiB of 'x' (head piped into tr)",
            if tty { "TTY (PTY)" } else { "piped" },
            bytes >> 20
        ),
        "MB/s",
        1e6,
        &samples,
    )
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn print_latency_table(rows: &[&Latency]) {
    println!("| benchmark | runs | p50 (µs) | p95 (µs) | p99 (µs) | min (µs) | max (µs) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for l in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            l.name,
            l.sorted.len(),
            us(l.p50()),
            us(l.pct(95.0)),
            us(l.p99()),
            us(l.sorted[0]),
            us(l.sorted[l.sorted.len() - 1]),
        );
    }
}

fn print_throughput_table(rows: &[&Throughput]) {
    println!(
        "| benchmark | runs (batches) | bytes/run | p50 | min | max | p99 time/run (µs) | min time/run (µs) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for t in rows {
        println!(
            "| {} | {} | {} | {:.2} {u} | {:.2} {u} | {:.2} {u} | {} | {} |",
            t.name,
            t.rates.len(),
            human_bytes(t.bytes),
            t.p50(),
            t.rates[0],
            t.rates[t.rates.len() - 1],
            us(percentile(&t.times, 99.0)),
            us(t.times[0]),
            u = t.unit,
        );
    }
}

fn human_bytes(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", (bytes as f64 / (1 << 20) as f64).round())
    } else {
        human_size(bytes)
    }
}

/// The first three fields of /proc/loadavg: the machine is shared, so say how busy it was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn fs_type(path: &Path) -> String {
    use nix::sys::statfs::{EXT4_SUPER_MAGIC, TMPFS_MAGIC, statfs};
    match statfs(path).map(|s| s.filesystem_type()) {
        Ok(t) if t == EXT4_SUPER_MAGIC => "ext4".into(),
        Ok(t) if t == TMPFS_MAGIC => "tmpfs".into(),
        Ok(t) => format!("fs magic {:#x}", t.0),
        Err(e) => format!("statfs: {e}"),
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**MISSED**" }
}

/// `BENCH_ONLY=group,group`: run only these groups, to profile one path at a time. Groups:
/// `baseline`, `exec-new`, `exec-reused`, `exec-4k`, `files`, `fsync-ref` (the local reference
/// run inside the file benchmark), `ring`, `stream`.
struct Only(Option<Vec<String>>);

impl Only {
    fn from_env() -> Self {
        Only(
            std::env::var("BENCH_ONLY")
                .ok()
                .map(|v| v.split(',').map(|g| g.trim().to_owned()).collect()),
        )
    }

    fn has(&self, group: &str) -> bool {
        self.0.as_ref().is_none_or(|g| g.iter().any(|x| x == group))
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` / `--all-targets` does not, and gets
    // a quick smoke run that still checks every response (environment variables still apply).
    let full = std::env::args().any(|a| a == "--bench");
    let (runs, warmup, stream_runs, stream_mib) = if full {
        (1000, 50, 5, 64)
    } else {
        eprintln!("agent bench: smoke mode (run with `cargo bench` for real numbers)");
        (20, 2, 1, 4)
    };
    let runs = env_usize("BENCH_RUNS", runs).max(1);
    let warmup = env_usize("BENCH_WARMUP", warmup);
    let stream_runs = env_usize("BENCH_STREAM_RUNS", stream_runs).max(1);
    let stream_bytes = env_usize("BENCH_STREAM_MIB", stream_mib).max(1) << 20;
    let only = Only::from_env();
    let started = Instant::now();
    let load_before = loadavg();

    eprintln!("agent bench: runs={runs} warmup={warmup} stream_runs={stream_runs}");
    let agent = Agent::start();
    eprintln!("agent bench: lohar pid {}", agent.process.pid());

    eprintln!("agent bench: exec `true` (baseline / new connection / reused, interleaved)");
    let [baseline, exec_new, exec_reused] = bench_exec_true(
        &agent,
        warmup,
        runs,
        [only.has("baseline"), only.has("exec-new"), only.has("exec-reused")],
    );
    let exec_4k = only.has("exec-4k").then(|| {
        eprintln!("agent bench: exec 4 KiB");
        bench_exec_4k(&agent, warmup, runs)
    });
    // BENCH_FILE_DIR puts the file benchmark on another filesystem (e.g. tmpfs /dev/shm, to
    // separate the disk's fsync from the agent's own cost); default: the agent's temp dir.
    let file_dir = std::env::var_os("BENCH_FILE_DIR").filter(|d| !d.is_empty()).map(|d| {
        let dir = tempfile::tempdir_in(d).unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        dir
    });
    let file_dir_path = file_dir.as_ref().map_or(agent.dir.as_path(), |d| d.path()).to_path_buf();
    let file_fs = fs_type(&file_dir_path);
    let files = only.has("files").then(|| {
        eprintln!("agent bench: files in {}", file_dir_path.display());
        bench_files(&agent, &file_dir_path, warmup, runs, only.has("fsync-ref"))
    });
    let (ring_snapshot, ring_rows) = if only.has("ring") {
        eprintln!("agent bench: ring buffer");
        let snapshot = bench_ring_snapshot(warmup, runs);
        let rows: Vec<Throughput> = [64, 4096, 32 * 1024]
            .into_iter()
            .map(|chunk| bench_ring(chunk, warmup.min(20), runs))
            .collect();
        (Some(snapshot), rows)
    } else {
        (None, Vec::new())
    };
    let streams: Vec<Throughput> = if only.has("stream") {
        eprintln!("agent bench: session output throughput");
        [true, false]
            .into_iter()
            .map(|tty| bench_stream(&agent, tty, stream_bytes, stream_runs))
            .collect()
    } else {
        Vec::new()
    };

    let stopped = agent.stop();
    let elapsed = started.elapsed();
    let load_after = loadavg();

    println!("## lohar agent benchmark\n");
    if !full {
        println!("**Smoke mode** (no `--bench` argument): too few runs to mean anything.\n");
    }
    println!(
        "runs={runs} warmup={warmup} stream_runs={stream_runs}; lohar stopped with {stopped:?}; \
         bench wall time {:.1} s\n",
        elapsed.as_secs_f64()
    );
    println!(
        "CPUs: {}; load average (1/5/15 min) before: {load_before}, after: {load_after}; \
         file benchmark dir: {} ({})\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        file_dir_path.display(),
        file_fs,
    );
    println!("### Latency (µs; nearest-rank percentiles, no averages)\n");
    let mut rows: Vec<&Latency> =
        [&baseline, &exec_new, &exec_reused, &exec_4k].into_iter().flatten().collect();
    if let Some(files) = &files {
        rows.extend(files.iter());
    }
    rows.extend(ring_snapshot.iter());
    print_latency_table(&rows);
    if [&baseline, &exec_new, &exec_reused].iter().filter(|l| l.is_some()).count() > 1 {
        println!(
            "\nThe baseline and exec `true` rows are interleaved run by run (baseline, new \
             connection, reused)."
        );
    }

    let ratio = |l: &Latency, base: &Latency| l.p50().as_secs_f64() / base.p50().as_secs_f64();
    if let Some(base) = &baseline {
        println!("\n### Ratios to the posix_spawn baseline (p50 / baseline p50)\n");
        println!("| ratio | value |");
        println!("|---|---:|");
        if let Some(l) = &exec_new {
            println!("| exec-new-conn p50 / baseline p50 | {:.2}x |", ratio(l, base));
        }
        if let Some(l) = &exec_reused {
            println!("| exec-reused p50 / baseline p50 | {:.2}x |", ratio(l, base));
        }
    }

    let throughput: Vec<&Throughput> = ring_rows.iter().chain(streams.iter()).collect();
    if !throughput.is_empty() {
        println!("\n### Throughput (MB/s = 10^6 B/s, GB/s = 10^9 B/s)\n");
        print_throughput_table(&throughput);
    }

    println!("\n### Targets\n");
    println!("| target | measured | result |");
    println!("|---|---:|---|");
    for l in [&exec_new, &exec_reused].into_iter().flatten() {
        if let Some(base) = &baseline {
            let r = ratio(l, base);
            println!("| {}: p50 ≤ 1.5x baseline p50 | {r:.2}x | {} |", l.name, verdict(r <= 1.5));
        }
        println!(
            "| {}: p99 ≤ 2500 µs | {} µs | {} |",
            l.name,
            us(l.p99()),
            verdict(l.p99() <= Duration::from_micros(2500))
        );
    }
    if let Some(rw) = files.as_ref().and_then(|f| f.first()) {
        println!(
            "| 1 KiB write+read p50 ≤ 500 µs | {} µs | {} |",
            us(rw.p50()),
            verdict(rw.p50() <= Duration::from_micros(500))
        );
    }
    for t in &ring_rows {
        println!(
            "| {}: p50 ≥ 1 GB/s | {:.2} GB/s | {} |",
            t.name,
            t.p50(),
            verdict(t.p50() >= 1.0)
        );
    }
}
