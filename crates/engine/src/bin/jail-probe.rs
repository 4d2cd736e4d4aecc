//! Test helper: takes on the confinement of a running QEMU and tries to break out of it.
//!
//! `jail-probe <qemu-pid> <check>...` joins the QEMU's cgroups, enters its mount, network, IPC
//! and UTS namespaces (so its root becomes the jail's root), becomes its uid and gid with no
//! capabilities and `no_new_privs`, exactly as the QEMU did, and then runs each check, printing
//! `<check>\tallowed` or `<check>\trefused\t<errno>`. It does everything an attacker holding the
//! QEMU process could do except what QEMU's seccomp filter forbids on top (fork, exec, set*id),
//! so a check it fails, the QEMU fails too.
//!
//! Checks: `read:<path>`, `write:<path>`, `create:<path>`, `unix:<path>` (connect),
//! `tcp:<ip:port>` (connect), `exec:<path>`, `kill:<pid>` (signal 0), `setuid:0`, `mount`.
//!
//! It must run single-threaded (entering a mount namespace requires it), which a plain `main`
//! without threads is.
#![allow(clippy::print_stdout)]

use std::ffi::CString;
use std::io::Error;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((pid, checks)) = args.split_first() else {
        eprintln!("usage: jail-probe <qemu-pid> <check>...");
        std::process::exit(2);
    };
    if let Err(e) = enter(pid) {
        eprintln!("jail-probe: entering the confinement of {pid}: {e}");
        std::process::exit(3);
    }
    for check in checks {
        match run(check) {
            Ok(()) => println!("{check}\tallowed"),
            Err(e) => println!("{check}\trefused\t{}", e.raw_os_error().unwrap_or(0)),
        }
    }
}

fn status_id(status: &str, field: &str) -> Result<u32, Error> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::other(format!("no {field} in status")))
}

fn enter(pid: &str) -> Result<(), Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let (uid, gid) = (status_id(&status, "Uid:")?, status_id(&status, "Gid:")?);
    let groups: Vec<libc::gid_t> = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default();
    // Its cgroups, from the host's view, before the host's tree is out of sight.
    for line in std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        let dir = match controllers {
            "" => format!("/sys/fs/cgroup{path}"),
            c if c.split(',').any(|c| matches!(c, "memory" | "cpu" | "pids")) => {
                let first = c.split(',').next().unwrap_or(c);
                format!("/sys/fs/cgroup/{first}{path}")
            }
            _ => continue,
        };
        if path.contains("bhatti") {
            std::fs::write(format!("{dir}/cgroup.procs"), "0")?;
        }
    }
    // Opened first: /proc is not in the jail.
    let namespaces: Vec<(std::fs::File, libc::c_int)> = [
        ("net", libc::CLONE_NEWNET),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("mnt", libc::CLONE_NEWNS),
    ]
    .into_iter()
    .map(|(name, kind)| Ok((std::fs::File::open(format!("/proc/{pid}/ns/{name}"))?, kind)))
    .collect::<Result<_, Error>>()?;
    for (file, kind) in &namespaces {
        // SAFETY: setns on a descriptor we own; this process runs one thread.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(file), *kind) } < 0 {
            return Err(Error::last_os_error());
        }
    }
    drop(namespaces);
    std::env::set_current_dir("/")?;
    // SAFETY: single-threaded process; the same credential change the QEMU's child made.
    unsafe { vmm::jail::drop_privileges(uid, gid, &groups) }
}

fn c(path: &str) -> Result<CString, Error> {
    CString::new(path).map_err(|_| Error::from_raw_os_error(libc::EINVAL))
}

fn run(check: &str) -> Result<(), Error> {
    let (kind, arg) = check.split_once(':').unwrap_or((check, ""));
    match kind {
        "read" => std::fs::File::open(arg).map(drop),
        "write" => std::fs::OpenOptions::new().write(true).open(arg).map(drop),
        "create" => std::fs::OpenOptions::new().write(true).create_new(true).open(arg).map(drop),
        "unix" => UnixStream::connect(arg).map(drop),
        "tcp" => {
            let addr: SocketAddr =
                arg.parse().map_err(|_| Error::from_raw_os_error(libc::EINVAL))?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(drop)
        }
        "exec" => {
            let status = std::process::Command::new(arg).status()?;
            if status.success() { Ok(()) } else { Err(Error::other("ran, and failed")) }
        }
        "kill" => {
            let pid: libc::pid_t =
                arg.parse().map_err(|_| Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: signal 0 only checks permission.
            if unsafe { libc::kill(pid, 0) } < 0 { Err(Error::last_os_error()) } else { Ok(()) }
        }
        "setuid" => {
            // SAFETY: a plain system call.
            if unsafe { libc::setuid(0) } < 0 { Err(Error::last_os_error()) } else { Ok(()) }
        }
        "mount" => {
            let (src, target, fs) = (c("probe")?, c("/")?, c("tmpfs")?);
            // SAFETY: a plain system call on NUL-terminated strings that outlive it.
            let ret = unsafe {
                libc::mount(src.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, std::ptr::null())
            };
            if ret < 0 { Err(Error::last_os_error()) } else { Ok(()) }
        }
        _ => Err(Error::from_raw_os_error(libc::EINVAL)),
    }
}
