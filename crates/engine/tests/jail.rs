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
