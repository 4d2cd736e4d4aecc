//! `engine::cgroup` on this host's real hierarchy (root needed; no VMs): limits read back from
//! the kernel, a child joins between fork and exec exactly as QEMU will, and the kernel enforces
//! the memory, process and CPU limits, each against a control that the same work succeeds
//! without the tight limit.
//!
//! Every test works under its own parent (`bhatti-test-<pid>-<tag>`), which a guard removes
//! even when the test fails, killing whatever is left in it first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use engine::cgroup::{CgroupError, Hierarchy, Limits, SandboxCgroup};

const MIB: u64 = 1 << 20;

/// Removes the test's parent cgroup and everything under it on drop, killing leftovers.
struct Parent {
    h: Hierarchy,
    name: String,
}

impl Parent {
    fn new(tag: &str) -> Self {
        let h = Hierarchy::detect().expect("this host has a usable cgroup hierarchy");
        Parent { h, name: format!("bhatti-test-{}-{tag}", std::process::id()) }
    }

    fn create(&self, name: &str, limits: Limits) -> SandboxCgroup {
        SandboxCgroup::create(&self.h, &self.name, name, &limits).unwrap()
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        for root in self.h.dirs() {
            let Ok(entries) = std::fs::read_dir(root.join(&self.name)) else { continue };
            for e in entries.flatten().filter(|e| e.path().is_dir()) {
                let procs = std::fs::read_to_string(e.path().join("cgroup.procs"));
                for pid in procs.unwrap_or_default().lines().filter_map(|l| l.parse().ok()) {
                    // SAFETY: kill(2) on a pid read from our own test cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let sandbox = e.file_name().to_string_lossy().into_owned();
                if let Err(err) = SandboxCgroup::remove_by_name(&self.h, &self.name, &sandbox) {
                    eprintln!("cleanup: {err}");
                }
            }
        }
        if let Err(err) = self.h.remove_parent(&self.name) {
            eprintln!("cleanup: {err}");
        }
    }
}

/// A command that joins `cg` in the child before exec, as the QEMU launch does.
fn joined(cg: &SandboxCgroup, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let joiner = cg.joiner().unwrap();
    let mut cmd = Command::new(program);
    // SAFETY: Joiner::join only calls open, write and close (async-signal-safe) on paths
    // converted before the fork.
    unsafe { cmd.pre_exec(move || joiner.join()) };
    cmd
}

/// The real interpreter behind `python3` (here a pyenv shim, a shell script that would run
/// more processes inside the cgroup than the test means to).
fn python() -> PathBuf {
    let out =
        Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    assert!(out.status.success());
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Waits for a child, failing the test after `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "child {} still running after {limit:?}", child.id());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn output_bounded(mut child: Child, limit: Duration) -> Output {
    let status = wait_bounded(&mut child, limit);
    let mut out = Output { status, stdout: Vec::new(), stderr: Vec::new() };
    if let Some(mut s) = child.stdout.take() {
        std::io::Read::read_to_end(&mut s, &mut out.stdout).unwrap();
    }
    if let Some(mut s) = child.stderr.take() {
        std::io::Read::read_to_end(&mut s, &mut out.stderr).unwrap();
    }
    out
}

/// Controller (or "" for the v2 line) → cgroup path, from `/proc/<pid>/cgroup`.
fn cgroups_of(pid: u32) -> HashMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut map = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        for c in ctrls.split(',') {
            map.insert(c.to_string(), path.to_string());
        }
    }
    map
}

/// The controllers a sandbox must be in on this host, by their /proc/<pid>/cgroup names.
fn controllers(h: &Hierarchy) -> Vec<&'static str> {
    match h {
        Hierarchy::V2 { .. } => vec![""],
        Hierarchy::V1 { cpuacct, .. } => {
            let mut c = vec!["memory", "cpu", "pids"];
            if cpuacct.is_some() {
                c.push("cpuacct");
            }
            c
        }
    }
}

/// A child killed and reaped when the test ends early (the control child is in no test cgroup
/// the [`Parent`] guard would empty).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn kill(child: &mut Child) {
    child.kill().unwrap();
    let status = wait_bounded(child, Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn a_child_joins_every_controller_and_the_limits_read_back() {
    let p = Parent::new("join");
    let expected =
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "v2" } else { "v1" };
    assert_eq!(p.h.name(), expected, "{}", p.h.describe());
    let cg = p.create("sb", Limits { memory_bytes: 256 * MIB, cpu_millis: 500, pids: 64 });
    let u = cg.read().unwrap();
    assert_eq!(u.memory_max, Some(256 * MIB));
    assert_eq!((u.cpu_quota_us, u.cpu_period_us), (Some(50_000), 100_000));
    assert_eq!((u.pids_max, u.pids_current, u.oom_kills), (Some(64), 0, 0));
    for d in cg.dirs() {
        assert!(d.is_dir(), "{}", d.display());
    }

    let mut inside = Reaped(joined(&cg, "sleep").arg("30").spawn().unwrap());
    // The control: a sibling started the same way without joining is not in the cgroup, so the
    // check below can tell the difference.
    let mut outside = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
    let want = format!("/{}/sb", p.name);
    let (ins, outs) = (cgroups_of(inside.0.id()), cgroups_of(outside.0.id()));
    for c in controllers(&p.h) {
        assert_eq!(ins.get(c), Some(&want), "controller {c:?} of the joined child: {ins:?}");
        assert_ne!(outs.get(c), Some(&want), "controller {c:?} of the control: {outs:?}");
    }
    assert_eq!(cg.read().unwrap().pids_current, 1);

    // A restarted daemon reuses the cgroup with its process in it and rewrites the limits.
    let again = p.create("sb", Limits { memory_bytes: 512 * MIB, cpu_millis: 1500, pids: 32 });
    let u = again.read().unwrap();
    assert_eq!(
        (u.memory_max, u.cpu_quota_us, u.pids_max),
        (Some(512 * MIB), Some(150_000), Some(32))
    );
    assert_eq!(u.pids_current, 1);

    // Busy while the child lives (after the bounded retries), removable once it is gone.
    match SandboxCgroup::remove_by_name(&p.h, &p.name, "sb") {
        Err(CgroupError::Remove { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY))
        }
        other => panic!("expected EBUSY while the child runs, got {other:?}"),
    }
    kill(&mut inside.0);
    kill(&mut outside.0);
    let dirs = cg.dirs();
    cg.remove().unwrap();
    for d in dirs {
        assert!(!d.exists(), "{}", d.display());
    }
}

#[test]
fn a_memory_hog_is_oom_killed_under_its_limit_and_finishes_under_a_larger_one() {
    let p = Parent::new("oom");
    let python = python();
    // Multiplying bytes writes every page: 200 MiB of anonymous memory really touched.
    let hog = "x = b'\\x01' * (200 << 20); print(len(x))";
    let small = p.create("small", Limits { memory_bytes: 64 * MIB, cpu_millis: 1000, pids: 16 });
    let large = p.create("large", Limits { memory_bytes: 512 * MIB, cpu_millis: 1000, pids: 16 });

    let run = |cg: &SandboxCgroup| {
        let child = joined(cg, &python)
            .args(["-c", hog])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        output_bounded(child, Duration::from_secs(60))
    };
    let out = run(&large);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (200 * MIB).to_string());
    let u = large.read().unwrap();
    assert_eq!(u.oom_kills, 0);
    // The peak shows the hog really allocated what the small cgroup must refuse.
    assert!(u.memory_peak.unwrap() >= 200 * MIB, "{u:?}");

    let out = run(&small);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let u = small.read().unwrap();
    assert!(u.oom_kills >= 1, "{u:?}");
    assert!(u.memory_peak.is_none_or(|peak| peak <= 64 * MIB), "{u:?}");

    small.remove().unwrap();
    large.remove().unwrap();
}

#[test]
fn lowering_the_memory_limit_below_usage_is_refused_on_v1_and_oom_kills_on_v2() {
    let p = Parent::new("lower");
    let limits = Limits { memory_bytes: 512 * MIB, cpu_millis: 1000, pids: 16 };
    let cg = p.create("sb", limits);
    let script =
        "import sys, time\nx = b'\\x01' * (200 << 20)\nprint('ready', flush=True)\ntime.sleep(30)";
    let mut child =
        joined(&cg, python()).args(["-c", script]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");

    // The control: a limit above the usage is taken while the child runs.
    let higher = p.create("sb", Limits { memory_bytes: 384 * MIB, ..limits });
    assert_eq!(higher.read().unwrap().memory_max, Some(384 * MIB));

    let lower =
        SandboxCgroup::create(&p.h, &p.name, "sb", &Limits { memory_bytes: 64 * MIB, ..limits });
    match &p.h {
        Hierarchy::V1 { memory, .. } => {
            match lower {
                Err(CgroupError::MemoryBelowUsage { path, limit }) => {
                    assert_eq!(limit, 64 * MIB);
                    assert_eq!(path, memory.join(&p.name).join("sb/memory.limit_in_bytes"));
                }
                other => panic!("expected MemoryBelowUsage, got {other:?}"),
            }
            // The refused limit left the old one and the child in place.
            assert_eq!(cg.read().unwrap().memory_max, Some(384 * MIB));
            assert_eq!(child.try_wait().unwrap(), None);
            kill(&mut child);
        }
        Hierarchy::V2 { .. } => {
            // v2 takes the limit and reclaims by killing.
            lower.unwrap();
            let status = wait_bounded(&mut child, Duration::from_secs(30));
            assert_eq!(status.signal(), Some(libc::SIGKILL));
        }
    }
    cg.remove().unwrap();
}

#[test]
fn pids_max_refuses_forks_beyond_it() {
    let p = Parent::new("pids");
    // `/bin/true` is not the last command, so the shell must fork for it.
    let script = "/bin/true && echo ok";
    let run = |pids: u32| {
        let cg = p
            .create(&format!("p{pids}"), Limits { memory_bytes: 64 * MIB, cpu_millis: 1000, pids });
        let child = joined(&cg, "/bin/sh")
            .args(["-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (output_bounded(child, Duration::from_secs(30)), cg)
    };
    let (out, cg) = run(4);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"ok\n");
    cg.remove().unwrap();

    let (out, cg) = run(1);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    cg.remove().unwrap();
}

/// The cgroup counted at least the CPU time the process reports for itself (v1 without a
/// cpuacct mount counts nothing, and says so).
fn check_counted(h: &Hierarchy, cg: &SandboxCgroup, own: u64) {
    let counted = cg.read().unwrap().cpu_usage_ns;
    if let Hierarchy::V1 { cpuacct: None, .. } = h {
        assert_eq!(counted, None);
        return;
    }
    let counted = counted.unwrap();
    assert!(counted >= own, "cgroup counted {counted} ns, the process used {own} ns");
}

#[test]
fn the_cpu_quota_stretches_the_same_work_and_its_time_is_counted() {
    let p = Parent::new("cpu");
    let python = python();
    // Spin until the process has used 200 ms of CPU, then report the CPU time in ns.
    let spin = "import time\nwhile time.process_time() < 0.2: pass\nprint(time.process_time_ns())";
    let run = |name: &str, cpu_millis: u32| {
        let cg = p.create(name, Limits { memory_bytes: 256 * MIB, cpu_millis, pids: 16 });
        assert_eq!(cg.read().unwrap().cpu_usage_ns.unwrap_or(0), 0);
        let started = Instant::now();
        let child = joined(&cg, &python).args(["-c", spin]).stdout(Stdio::piped()).spawn().unwrap();
        let out = output_bounded(child, Duration::from_secs(60));
        let wall = started.elapsed();
        assert!(out.status.success(), "{out:?}");
        let own: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        (wall, own, cg)
    };
    // 50 millis is 5 ms per 100 ms period: 200 ms of CPU cannot take less than ~4 s of wall
    // time, however idle the machine. Contention only makes it longer.
    let (capped, own, cg) = run("capped", 50);
    assert!(capped >= Duration::from_secs(3), "capped took only {capped:?}");
    check_counted(&p.h, &cg, own);
    cg.remove().unwrap();
    // The control: two cores' worth of quota runs the same work well inside that.
    let (free, own, cg) = run("free", 2000);
    assert!(free < Duration::from_secs(3), "uncapped took {free:?}");
    check_counted(&p.h, &cg, own);
    cg.remove().unwrap();
}
