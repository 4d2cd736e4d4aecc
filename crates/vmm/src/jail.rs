//! Confinement of one QEMU process, applied between fork and exec, so QEMU never runs a single
//! instruction with the daemon's privileges (Firecracker's jailer does the same before it execs
//! Firecracker).
//!
//! In order, the child:
//! 1. enters new mount, network, IPC and UTS namespaces. The network namespace is empty (a loopback
//!    that is down): QEMU reaches the guest's network only through the TAP descriptor it inherits,
//!    and cannot connect to anything on the host, the daemon's TCP port included;
//! 2. mounts a small tmpfs as the new root and bind-mounts into it, at the same paths as on the
//!    host, only what [`Jail::binds`] lists (the sandbox's own directory, its kernel, base image
//!    and volumes, QEMU's binary, libraries and firmware, a few device nodes), then `pivot_root`s
//!    into it and detaches the host's tree. The root itself is read-only. Because paths are the
//!    same inside and out, QEMU's command line and the QMP socket path need no translation;
//! 3. sets a `077` umask, drops every capability (bounding set included) and supplementary groups,
//!    switches to the sandbox's own uid and gid, and sets `no_new_privs`.
//!
//! The parent moves the process into its cgroups while it starts (see [`Jail::cgroup_procs`]).
//!
//! QEMU's own seccomp filter (`-sandbox`, see [`crate::cmdline`]) then closes the system calls an
//! attacker inside QEMU would need to fork, exec or raise privileges.
//!
//! Everything the child does is a raw system call on data prepared before the fork ([`Plan`]): the
//! daemon is multi-threaded, so nothing between fork and exec may allocate or take a lock.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// How a bind-mounted path may be used inside the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only, nothing executable (kernel, base image, firmware, read-only volumes).
    Read,
    /// Read-write, nothing executable (the sandbox's directory, writable volumes).
    ReadWrite,
    /// Read-only and executable (QEMU's binary and its shared libraries).
    Execute,
    /// A device node (read-write; device nodes stay usable).
    Device,
}

/// A host path made visible inside the jail at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The path (a file or a directory; symlinks in it are followed on the host).
    pub path: PathBuf,
    /// What QEMU may do with it.
    pub access: Access,
}

/// Everything that confines one QEMU process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// The process's uid (from the engine's reserved range; one per sandbox).
    pub uid: u32,
    /// The process's gid.
    pub gid: u32,
    /// An existing empty directory the jail's root is mounted on. The mount exists only in the
    /// process's private mount namespace, so one directory serves every jail.
    pub mount_point: PathBuf,
    /// What the jail shows.
    pub binds: Vec<Bind>,
    /// `cgroup.procs` files the process is moved into. The parent moves it right after the
    /// spawn, while QEMU initialises, and QEMU starts paused until then: in cgroup v1 every move
    /// waits for an RCU grace period, about 4 ms each here, which done in the child cost 15 ms
    /// on every start (measured). Nothing of the guest runs before the move; only QEMU's own
    /// start-up allocations (a few MiB) are charged where the daemon runs.
    pub cgroup_procs: Vec<PathBuf>,
    /// Supplementary groups it keeps: only the group that owns `/dev/kvm` where that device is
    /// not open to everyone (Debian: `root:kvm 0660`); none under TCG.
    pub groups: Vec<u32>,
}

/// The QEMU seccomp policy of a confined process: QEMU's own filter, with every optional group of
/// system calls denied (obsolete calls, set*uid/set*gid, fork/exec, scheduler and memory-policy
/// changes).
pub const SECCOMP_POLICY: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// One step of building the jail, with its paths already encoded.
#[derive(Debug)]
enum Step {
    Mkdir(CString),
    Touch(CString),
    Bind { source: CString, target: CString, flags: libc::c_ulong },
}

/// A [`Jail`] turned into system-call arguments before the fork.
#[derive(Debug)]
pub struct Plan {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    mount_point: CString,
    steps: Vec<Step>,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}

/// `path` (absolute) as it is under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    out.extend(path.components().filter(|c| matches!(c, Component::Normal(_))));
    out
}

/// The mount flags a bind is remounted with.
fn flags(access: Access) -> libc::c_ulong {
    let base = libc::MS_NOSUID;
    match access {
        Access::Read => base | libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOEXEC,
        Access::ReadWrite => base | libc::MS_NODEV | libc::MS_NOEXEC,
        Access::Execute => base | libc::MS_RDONLY | libc::MS_NODEV,
        Access::Device => base | libc::MS_NOEXEC,
    }
}

impl Jail {
    /// Checks the jail against the host and encodes it. Every bound path must exist and be
    /// absolute; binds are mounted parents first, so a path inside a bound directory is mounted
    /// over it.
    pub fn plan(&self) -> io::Result<Plan> {
        if self.uid == 0 || self.gid == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a jail never runs as root"));
        }
        let root = &self.mount_point;
        let mut dirs = BTreeSet::new();
        let mut files = Vec::new();
        let mut binds: Vec<&Bind> = self.binds.iter().collect();
        binds.sort_by_key(|b| b.path.components().count());
        for bind in &binds {
            if !bind.path.is_absolute() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("jail: {} is not an absolute path", bind.path.display()),
                ));
            }
            let meta = std::fs::metadata(&bind.path).map_err(|e| {
                io::Error::new(e.kind(), format!("jail: {}: {e}", bind.path.display()))
            })?;
            dirs.extend(bind.path.ancestors().skip(1).filter(|a| a.parent().is_some()));
            if meta.is_dir() {
                dirs.insert(&bind.path);
            } else {
                files.push(&bind.path);
            }
        }
        let mut steps = Vec::new();
        // BTreeSet orders a parent before its children.
        for dir in dirs {
            steps.push(Step::Mkdir(c_path(&under(root, dir))?));
        }
        for file in files {
            steps.push(Step::Touch(c_path(&under(root, file))?));
        }
        for bind in binds {
            steps.push(Step::Bind {
                source: c_path(&bind.path)?,
                target: c_path(&under(root, &bind.path))?,
                flags: flags(bind.access),
            });
        }
        Ok(Plan {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            mount_point: c_path(root)?,
            steps,
        })
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn cstr(s: &'static [u8]) -> *const libc::c_char {
    s.as_ptr().cast()
}

impl Plan {
    /// Confines the calling process. Call only in a forked child before exec.
    ///
    /// # Safety
    /// The caller must be a single-threaded child between fork and exec: this changes the whole
    /// process's namespaces, root and credentials. It makes only async-signal-safe system calls
    /// on memory prepared before the fork.
    pub unsafe fn enter(&self) -> io::Result<()> {
        // SAFETY: every call below is a plain system call on NUL-terminated strings owned by
        // `self`, which outlives the calls; see the function's contract.
        unsafe {
            check(libc::unshare(
                libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
            ))?;
            // Nothing mounted from here on may reach the host's namespace.
            check(libc::mount(
                std::ptr::null(),
                cstr(b"/\0"),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                cstr(b"bhatti-jail\0"),
                self.mount_point.as_ptr(),
                cstr(b"tmpfs\0"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                cstr(b"size=256k,nr_inodes=4096,mode=0755\0").cast(),
            ))?;
            for step in &self.steps {
                match step {
                    Step::Mkdir(dir) => {
                        if libc::mkdir(dir.as_ptr(), 0o755) < 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Step::Touch(file) => {
                        let fd = libc::open(
                            file.as_ptr(),
                            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                            0o644,
                        );
                        check(fd)?;
                        libc::close(fd);
                    }
                    Step::Bind { source, target, flags } => {
                        check(libc::mount(
                            source.as_ptr(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ))?;
                        // A bind takes its flags only from a remount.
                        check(libc::mount(
                            std::ptr::null(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_REMOUNT | libc::MS_BIND | flags,
                            std::ptr::null(),
                        ))?;
                    }
                }
            }
            // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only
            // the jail (the idiom runc uses: no directory for the old root is needed).
            check(libc::chdir(self.mount_point.as_ptr()))?;
            let dot = cstr(b".\0");
            if libc::syscall(libc::SYS_pivot_root, dot, dot) < 0 {
                return Err(io::Error::last_os_error());
            }
            check(libc::umount2(dot, libc::MNT_DETACH))?;
            check(libc::chdir(cstr(b"/\0")))?;
            check(libc::mount(
                std::ptr::null(),
                cstr(b"/\0"),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
            libc::umask(0o077);
            drop_privileges(self.uid, self.gid, &self.groups)
        }
    }
}

/// Becomes `uid`:`gid` with only the supplementary `groups`, no capabilities in any set (bounding and
/// ambient included) and `no_new_privs`, so nothing executed later can gain privileges back.
///
/// # Safety
/// Changes the credentials of the whole process: call it in a single-threaded process (a forked
/// child, or a probe that runs no other thread). Only async-signal-safe system calls.
pub unsafe fn drop_privileges(
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: &[libc::gid_t],
) -> io::Result<()> {
    // SAFETY: plain system calls on local data; see the function's contract.
    unsafe {
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        // The bounding set can only shrink while we still hold CAP_SETPCAP, so before setuid.
        for cap in 0u32..64 {
            if libc::prctl(
                libc::PR_CAPBSET_DROP,
                cap as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) < 0
                && *libc::__errno_location() != libc::EINVAL
            {
                return Err(io::Error::last_os_error());
            }
        }
        check(libc::setresgid(gid, gid, gid))?;
        check(libc::setresuid(uid, uid, uid))?;
        // A root-to-user setuid clears the permitted and effective sets; clear the inheritable
        // and ambient sets too, explicitly.
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ))?;
        let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
        check(libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ))?;
        if libc::getuid() != uid || libc::geteuid() != uid {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Moves process `pid` (all its threads) into each cgroup whose `cgroup.procs` file is given.
/// Blocking: each move waits for an RCU grace period on cgroup v1.
pub fn join_cgroups(pid: u32, procs: &[PathBuf]) -> io::Result<()> {
    // `0` would move the writer: the daemon itself.
    if pid == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no process to move"));
    }
    for file in procs {
        std::fs::write(file, pid.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_mounts_parents_first_and_refuses_root_and_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("sandbox");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("disk"), b"x").unwrap();
        let jail = Jail {
            uid: 1_000_001,
            gid: 1_000_001,
            mount_point: PathBuf::from("/jail"),
            binds: vec![
                Bind { path: inner.join("disk"), access: Access::Read },
                Bind { path: inner.clone(), access: Access::ReadWrite },
            ],
            cgroup_procs: vec![],
            groups: vec![],
        };
        let plan = jail.plan().unwrap();
        let binds: Vec<_> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Bind { target, flags, .. } => Some((target.to_str().unwrap(), *flags)),
                _ => None,
            })
            .collect();
        let jailed = |p: &Path| format!("/jail{}", p.display());
        assert_eq!(binds[0].0, jailed(&inner));
        assert_eq!(binds[1].0, jailed(&inner.join("disk")));
        assert_ne!(binds[0].1 & libc::MS_NOEXEC, 0);
        assert_ne!(binds[1].1 & libc::MS_RDONLY, 0);
        assert_eq!(binds[0].1 & libc::MS_RDONLY, 0);
        assert!(plan.steps.iter().any(
            |s| matches!(s, Step::Touch(f) if f.to_str().unwrap() == jailed(&inner.join("disk")))
        ));
        let mut bad = jail.clone();
        bad.uid = 0;
        assert!(bad.plan().is_err());
        let mut missing = jail.clone();
        missing.binds.push(Bind { path: dir.path().join("nope"), access: Access::Read });
        assert!(missing.plan().unwrap_err().to_string().contains("nope"));
    }
}
