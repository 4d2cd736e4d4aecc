//! Every sandbox's QEMU runs jailed: checked from the outside (`/proc/<qemu>`), and attacked from
//! the inside the way a guest that took over its QEMU would, through QEMU itself (QMP commands that
//! open files, sockets and programs) and through a probe that enters the QEMU's namespaces, cgroup
//! and credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

/// The fields of `/proc/<pid>/status`.
fn status(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn qemu_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(engine::layout::SandboxFiles::new(dir).pid_file())
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn ns(pid: u32, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_qemu_runs_as_its_own_user_without_privileges_in_its_own_namespaces() {
    let e = test_engine().await;
    e.create(&small("a")).await.unwrap();
    e.create(&small("b")).await.unwrap();
    let (pa, pb) = (qemu_pid(&e.dir_of("a")), qemu_pid(&e.dir_of("b")));
    let me = std::process::id();
    let (ua, ub) = (
        engine::jail::sandbox_uid(e.info("a").unwrap().ip),
        engine::jail::sandbox_uid(e.info("b").unwrap().ip),
    );
    assert_ne!(ua, ub, "one uid per sandbox");
    for (pid, uid) in [(pa, ua), (pb, ub)] {
        let s = status(pid);
        assert_eq!(s["Uid"], format!("{uid}\t{uid}\t{uid}\t{uid}"), "{s:?}");
        assert_eq!(s["Gid"], format!("{uid}\t{uid}\t{uid}\t{uid}"), "{s:?}");
        assert_eq!(s["Groups"], "", "{s:?}");
        assert_eq!(s["NoNewPrivs"], "1");
        assert_eq!(s["Seccomp"], "2", "QEMU's seccomp filter is on");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(s[set], "0000000000000000", "{set}");
        }
        for kind in ["mnt", "net", "ipc", "uts"] {
            assert_ne!(ns(pid, kind), ns(me, kind), "{kind} namespace shared with the host");
        }
        // Its root holds only the directories that lead to what it needs.
        let root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for absent in ["etc/shadow", "root", "home", "proc", "sys", "bin", "sbin", "boot"] {
            let path = format!("/proc/{pid}/root/{absent}");
            assert!(!Path::new(&path).exists(), "{absent} is visible in the jail: {root:?}");
        }
        assert!(Path::new(&format!("/proc/{pid}/root/dev/null")).exists(), "{root:?}");
    }
    // The two jails do not see each other's directory.
    let (da, db) = (e.dir_of("a"), e.dir_of("b"));
    assert!(Path::new(&format!("/proc/{pa}/root{}", da.display())).join("root.qcow2").exists());
    assert!(!Path::new(&format!("/proc/{pa}/root{}", db.display())).exists());
    assert!(!Path::new(&format!("/proc/{pb}/root{}", da.display())).exists());
    // The guest works.
    let out = e.exec("a", &["echo", "jailed"]).await.unwrap();
    assert_eq!(out.stdout, b"jailed\n");
}

/// The v1 controller directory `controller` of process `pid` (from `/proc/<pid>/cgroup`).
fn v1_cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = text
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == controller).then(|| path.to_owned())
        })
        .unwrap_or_else(|| panic!("{controller} missing from {text}"));
    PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}"))
}

fn read_u64(path: PathBuf) -> u64 {
    std::fs::read_to_string(&path).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sandbox_is_bounded_by_its_cgroup() {
    let hierarchy = engine::cgroup::Hierarchy::detect().unwrap();
    assert_eq!(hierarchy.name(), "v1", "these machines are v1-only; v2 is unit-tested");
    let e = test_engine().await;
    let mut spec = small("bounded");
    spec.memory_mib = 160;
    e.create(&spec).await.unwrap();
    let dir = e.dir_of("bounded");
    let pid = qemu_pid(&dir);
    let name = engine::jail::cgroup_name(&e.config.netns, "bounded");
    let memory = v1_cgroup_dir(pid, "memory");
    let leaf = memory.file_name().unwrap().to_string_lossy().into_owned();
    assert!(leaf.starts_with(&format!("{name}.")), "{}", memory.display());
    assert!(memory.parent().unwrap().ends_with(engine::jail::CGROUP_PARENT));
    let limit = read_u64(memory.join("memory.limit_in_bytes"));
    assert_eq!(limit, (160 + engine::jail::QEMU_OVERHEAD_MIB) << 20);
    // The whole QEMU may use its vCPU's core plus an allowance for its own threads; the vCPU
    // thread alone (moved into a child) gets exactly the core it asked for.
    let cpu = v1_cgroup_dir(pid, "cpu");
    let emulator = u64::from(engine::jail::EMULATOR_MILLIS) * 100;
    assert_eq!(read_u64(cpu.join("cpu.cfs_quota_us")), 100_000 + emulator);
    assert_eq!(read_u64(cpu.join("cpu.cfs_period_us")), 100_000);
    let vcpus = cpu.join(engine::cgroup::THREADS_CHILD);
    assert_eq!(read_u64(vcpus.join("cpu.cfs_quota_us")), 100_000, "1 vCPU = one core");
    let threads = std::fs::read_to_string(vcpus.join("tasks")).unwrap();
    assert_eq!(threads.lines().count(), 1, "one vCPU thread: {threads}");
    let tid = threads.trim();
    assert!(Path::new(&format!("/proc/{pid}/task/{tid}")).exists(), "not a QEMU thread: {tid}");
    let main = std::fs::read_to_string(cpu.join("tasks")).unwrap();
    assert!(main.lines().any(|t| t == pid.to_string()), "QEMU's main thread stays in {main}");
    let pids = v1_cgroup_dir(pid, "pids");
    assert_eq!(read_u64(pids.join("pids.max")), u64::from(engine::jail::PIDS_MAX));
    assert!(read_u64(pids.join("pids.current")) >= 2, "QEMU's threads are counted");
    // Heavy ordinary use (all of the guest's RAM touched through a RAM-backed file, 100 MiB
    // written to its disk and flushed, fresh code translated) never reaches the bound: the
    // overhead allowance is what QEMU really needs, measured here.
    let work = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=150 2>/dev/null; rm -f /dev/shm/fill; \
                dd if=/dev/zero of=/home/lohar/big bs=1M count=100 2>/dev/null && sync; \
                for i in 1 2 3 4 5; do ls -R / >/dev/null 2>&1; done; echo done";
    let out = e.exec("bounded", &["sh", "-c", work]).await.unwrap();
    assert_eq!(out.stdout, b"done\n", "{out:?}");
    let peak = read_u64(memory.join("memory.max_usage_in_bytes"));
    println!(
        "QEMU of a 160 MiB guest: peak {} MiB in its cgroup (guest RAM + {} MiB), limit {} MiB",
        peak >> 20,
        (peak >> 20).saturating_sub(160),
        limit >> 20
    );
    assert!(peak > 160 << 20 && peak <= limit, "peak {peak} limit {limit}");
    assert_eq!(read_u64(memory.join("memory.failcnt")), 0, "ordinary use hit the memory bound");
    // Stopping the sandbox removes the cgroup; starting it makes it again.
    e.stop("bounded", std::time::Duration::from_secs(30)).await.unwrap();
    assert!(!memory.exists(), "{} left behind", memory.display());
    e.start("bounded").await.unwrap();
    let pid = qemu_pid(&dir);
    assert_eq!(read_u64(v1_cgroup_dir(pid, "memory").join("memory.limit_in_bytes")), limit);
    e.destroy("bounded").await.unwrap();
    assert!(!memory.exists());
}

/// Runs the probe in the confinement of QEMU `pid`; the outcome of each check.
fn probe(pid: u32, checks: &[String]) -> BTreeMap<String, bool> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jail-probe"))
        .arg(pid.to_string())
        .args(checks)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "probe failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    let results: BTreeMap<String, bool> = stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((f.next()?.to_owned(), f.next()? == "allowed"))
        })
        .collect();
    assert_eq!(results.len(), checks.len(), "{stdout}");
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_taken_over_by_its_guest_cannot_reach_anything_of_the_host() {
    use proto::guest::GuestConfig;
    use serde_json::json;
    use std::time::Duration;

    let net = TestNet::new().await;
    let a = boot(&net, 2, 128).await;
    let dir_b = tempfile::tempdir().unwrap();
    let spec_b = spec_for(&net, 3, 128, GuestConfig::default(), dir_b.path(), true);
    let b = engine::vm::boot(&net.ns, &spec_b).await.unwrap();
    let (fa, fb) = (
        engine::layout::SandboxFiles::new(a.dir.path()),
        engine::layout::SandboxFiles::new(dir_b.path()),
    );
    assert!(fb.ram().exists() && fb.overlay().exists());

    // What a daemon keeps beside its sandboxes: the store, the admin key, the API socket and
    // TCP port. The host itself can read and reach all of them (the controls).
    let daemon = tempfile::tempdir().unwrap();
    let (store, key) = (daemon.path().join("state.db"), daemon.path().join("admin.key"));
    std::fs::write(&store, b"SQLite format 3").unwrap();
    std::fs::write(&key, b"bht_secret").unwrap();
    let socket = daemon.path().join("api.sock");
    let unix = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap();
    std::os::unix::net::UnixStream::connect(&socket).unwrap();
    std::net::TcpStream::connect(port).unwrap();
    std::fs::read("/etc/shadow").unwrap();

    let path = |p: std::path::PathBuf| p.display().to_string();
    let refused = [
        format!("read:{}", path(fb.overlay())),
        format!("read:{}", path(fb.ram())),
        format!("write:{}", path(fb.overlay())),
        format!("read:{}", path(store.clone())),
        format!("read:{}", path(key.clone())),
        "read:/etc/shadow".to_owned(),
        "read:/proc/1/environ".to_owned(),
        format!("read:{}", fb.dir().display()),
        "create:/escape".to_owned(),
        format!("create:{}/escape", a.dir.path().parent().unwrap().display()),
        format!("unix:{}", socket.display()),
        format!("tcp:{port}"),
        "exec:/bin/sh".to_owned(),
        "exec:/usr/bin/env".to_owned(),
        format!("kill:{}", b.qemu.pid),
        "kill:1".to_owned(),
        format!("kill:{}", std::process::id()),
        "setuid:0".to_owned(),
        "mount".to_owned(),
    ];
    // The probe really holds the QEMU's powers: its own files and its own process.
    let allowed = [
        format!("read:{}", path(fa.overlay())),
        format!("write:{}", path(fa.serial_log())),
        format!("create:{}/probe-was-here", a.dir.path().display()),
        format!("kill:{}", a.qemu.pid),
    ];
    let checks: Vec<String> = refused.iter().chain(&allowed).cloned().collect();
    let results = probe(a.qemu.pid, &checks);
    for check in &refused {
        assert!(!results[check], "{check} was allowed from inside the jail");
    }
    for check in &allowed {
        assert!(results[check], "{check} was refused: the probe did not hold the QEMU's powers");
    }

    // The same through the QEMU itself, seccomp included: QMP commands that open files, connect
    // sockets and start programs.
    let qmp = &a.qemu.qmp;
    let t = Duration::from_secs(5);
    let open = |file: String, node: &str| {
        json!({"driver": "raw", "node-name": node, "read-only": true,
               "file": {"driver": "file", "filename": file}})
    };
    for (i, file) in
        [path(fb.overlay()), path(store), path(key), "/etc/shadow".into()].into_iter().enumerate()
    {
        let err = qmp.execute("blockdev-add", Some(open(file.clone(), &format!("x{i}"))), t).await;
        assert!(err.is_err(), "QEMU opened {file}");
    }
    qmp.execute("blockdev-add", Some(open(path(fa.config_drive()), "own")), t).await.unwrap();
    qmp.execute("blockdev-del", Some(json!({"node-name": "own"})), t).await.unwrap();
    let chardev = |id: &str, addr: serde_json::Value| json!({"id": id, "backend": {"type": "socket", "data": {"addr": addr, "server": false}}});
    let inet =
        json!({"type": "inet", "data": {"host": "127.0.0.1", "port": port.port().to_string()}});
    assert!(qmp.execute("chardev-add", Some(chardev("c1", inet)), t).await.is_err());
    let unix_addr = json!({"type": "unix", "data": {"path": socket.display().to_string()}});
    assert!(qmp.execute("chardev-add", Some(chardev("c2", unix_addr)), t).await.is_err());
    tcp.set_nonblocking(true).unwrap();
    unix.set_nonblocking(true).unwrap();
    tcp.accept().map(drop).expect("the host's own connect");
    assert!(tcp.accept().is_err(), "QEMU connected to the daemon's port");
    unix.accept().map(drop).expect("the host's own connect");
    assert!(unix.accept().is_err(), "QEMU connected to the daemon's socket");
    let spawn = qmp.execute("migrate", Some(json!({"uri": "exec:/bin/true"})), t).await;
    let refused = match spawn {
        Err(e) => e.to_string(),
        Ok(_) => qmp.execute("query-migrate", None, t).await.unwrap().to_string(),
    };
    assert!(refused.contains("not permitted") || refused.contains("failed"), "{refused}");

    // Both guests run on, untouched.
    for vm in [&a.vm, &b] {
        let out = vm.client.exec(&["echo", "ok"]).await.unwrap();
        assert_eq!(out.stdout, b"ok\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_past_the_bounds_is_paid_by_the_guest_or_its_own_qemu_never_the_host() {
    use serde_json::json;
    use std::time::Duration;

    let net = TestNet::new().await;
    let a = boot(&net, 2, 128).await;
    let b = boot(&net, 3, 128).await;
    let memory = v1_cgroup_dir(a.qemu.pid, "memory");
    let limit = read_u64(memory.join("memory.limit_in_bytes"));
    assert_eq!(limit, (128 + engine::jail::QEMU_OVERHEAD_MIB) << 20);

    // The guest asks for more than its RAM (two 100 MiB buffers, each filled): its own kernel's
    // OOM killer answers; the guest lives on.
    let t0 = std::time::Instant::now();
    let dd = "dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null";
    let mut hog = agent::ExecRequest::command([
        "sh".to_owned(),
        "-c".to_owned(),
        format!("{dd} & {dd} & wait; dmesg | grep -c 'Killed process'"),
    ]);
    hog.user = Some("root".into());
    let hog = a.client.exec_request(&hog, Duration::from_secs(120)).await.unwrap();
    let kills: u32 = String::from_utf8_lossy(&hog.stdout).trim().parse().unwrap_or(0);
    assert!(kills >= 1, "the guest's OOM killer did not act: {hog:?}");
    println!("guest hog answered in {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(a.client.exec(&["echo", "alive"]).await.unwrap().stdout, b"alive\n");
    let peak = read_u64(memory.join("memory.max_usage_in_bytes"));
    assert!(peak <= limit, "QEMU used {peak} past its bound {limit}");
    let oom_kills = |dir: &Path| -> u64 {
        let text = std::fs::read_to_string(dir.join("memory.oom_control")).unwrap();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).unwrap().trim().parse().unwrap()
    };
    assert_eq!(oom_kills(&memory), 0, "the guest's OOM is the guest's business");

    // QEMU itself asked (through QMP) to allocate 512 MiB: its cgroup kills it, and only it.
    let t = Duration::from_secs(30);
    let t0 = std::time::Instant::now();
    let hog = json!({"qom-type": "memory-backend-ram", "id": "hog", "size": 512u64 << 20, "prealloc": true});
    let _ = a.qemu.qmp.execute("object-add", Some(hog), t).await;
    let gone = tokio::time::timeout(t, a.qemu.qmp.gone()).await;
    assert!(gone.is_ok(), "QEMU survived allocating past its cgroup's bound");
    assert!(oom_kills(&memory) >= 1, "killed by something else than its cgroup");
    println!("QEMU hog killed in {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(b.client.exec(&["echo", "alive"]).await.unwrap().stdout, b"alive\n");
}

/// CPU time used by the cgroup of QEMU `pid` so far (its cpuacct.usage, in ns).
fn cpu_ns(pid: u32) -> u64 {
    read_u64(v1_cgroup_dir(pid, "cpuacct").join("cpuacct.usage"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_in_a_guest_leaves_the_host_and_its_neighbours_responsive() {
    use std::time::{Duration, Instant};

    let e = test_engine().await;
    e.create(&small("calm")).await.unwrap();
    e.create(&small("bomb")).await.unwrap();
    let bomb_pid = qemu_pid(&e.dir_of("bomb"));
    let mut req = agent::ExecRequest::command(["sh", "-c", "f(){ f | f & }; f"]);
    req.output_file = Some("/tmp/bomb.log".into());
    e.exec_detached("bomb", &req).await.unwrap();

    let (cpu0, t0) = (cpu_ns(bomb_pid), Instant::now());
    let (mut host, mut neighbour) = (Vec::new(), Vec::new());
    while t0.elapsed() < Duration::from_secs(6) {
        let t = Instant::now();
        assert!(std::process::Command::new("true").status().unwrap().success());
        host.push(ms(t.elapsed()));
        let t = Instant::now();
        assert_eq!(e.exec("calm", &["echo", "ok"]).await.unwrap().stdout, b"ok\n");
        neighbour.push(ms(t.elapsed()));
    }
    let (cpu, wall) = (cpu_ns(bomb_pid) - cpu0, t0.elapsed());
    let share = cpu as f64 / wall.as_nanos() as f64;
    let (h50, _, h99) = p50_95_99(&host);
    let (n50, _, n99) = p50_95_99(&neighbour);
    println!(
        "fork bomb: its QEMU used {share:.2} cores; host spawn p50 {h50:.1} p99 {h99:.1} ms; \
         neighbour exec p50 {n50:.1} p99 {n99:.1} ms ({} rounds)",
        host.len()
    );
    assert!(share > 0.3, "the bomb did not run ({share:.2} cores): the test proves nothing");
    assert!(share < 1.15, "the bomb's QEMU took {share:.2} cores, past its one");
    assert!(h99 < 500.0, "host spawn p99 {h99:.1} ms");
    assert!(n99 < 5_000.0, "neighbour exec p99 {n99:.1} ms");
    // The bombed sandbox can still be destroyed at once, and the host keeps nothing of it.
    let t = Instant::now();
    e.destroy("bomb").await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(!Path::new(&format!("/proc/{bomb_pid}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_cpu_is_half_a_core() {
    use std::time::{Duration, Instant};

    let e = test_engine().await;
    let mut spec = small("half");
    spec.cpu_millis = Some(500);
    e.create(&spec).await.unwrap();
    let pid = qemu_pid(&e.dir_of("half"));
    let vcpus = v1_cgroup_dir(pid, "cpu").join(engine::cgroup::THREADS_CHILD);
    assert_eq!(read_u64(vcpus.join("cpu.cfs_quota_us")), 50_000);
    let mut busy = agent::ExecRequest::command(["sh", "-c", "while :; do :; done"]);
    busy.output_file = Some("/tmp/busy.log".into());
    e.exec_detached("half", &busy).await.unwrap();
    let (cpu0, t0) = (cpu_ns(pid), Instant::now());
    // Waiting is the measurement here: CPU time over a fixed wall-clock window.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let share = (cpu_ns(pid) - cpu0) as f64 / t0.elapsed().as_nanos() as f64;
    println!("a busy guest with cpus 0.5 used {share:.2} cores");
    assert!(share > 0.25, "the guest was not busy ({share:.2}): the test proves nothing");
    assert!(share < 0.6, "cpus 0.5 took {share:.2} cores");
    // Out of range fractions are refused with a clear error.
    let mut bad = small("bad");
    bad.cpu_millis = Some(1500);
    let err = e.create(&bad).await.unwrap_err();
    assert_eq!(err.kind(), engine::ErrorKind::Invalid, "{err}");
}
