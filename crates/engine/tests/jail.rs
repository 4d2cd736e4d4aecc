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
    assert!(memory.ends_with(format!("bhatti/{name}")), "{}", memory.display());
    let limit = read_u64(memory.join("memory.limit_in_bytes"));
    assert_eq!(limit, (160 + engine::jail::QEMU_OVERHEAD_MIB) << 20);
    let cpu = v1_cgroup_dir(pid, "cpu");
    assert_eq!(read_u64(cpu.join("cpu.cfs_quota_us")), 100_000, "1 vCPU = one core");
    assert_eq!(read_u64(cpu.join("cpu.cfs_period_us")), 100_000);
    let pids = v1_cgroup_dir(pid, "pids");
    assert_eq!(read_u64(pids.join("pids.max")), u64::from(engine::jail::PIDS_MAX));
    assert!(read_u64(pids.join("pids.current")) >= 2, "QEMU's threads are counted");
    // What QEMU used so far stays under the limit, and is more than nothing.
    let peak = read_u64(memory.join("memory.max_usage_in_bytes"));
    assert!(peak > 16 << 20 && peak <= limit, "peak {peak} limit {limit}");
    // Stopping the sandbox removes the cgroup; starting it makes it again.
    e.stop("bounded", std::time::Duration::from_secs(30)).await.unwrap();
    assert!(!memory.exists(), "{} left behind", memory.display());
    e.start("bounded").await.unwrap();
    let pid = qemu_pid(&dir);
    assert_eq!(read_u64(v1_cgroup_dir(pid, "memory").join("memory.limit_in_bytes")), limit);
    e.destroy("bounded").await.unwrap();
    assert!(!memory.exists());
}
