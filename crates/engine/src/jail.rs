//! The jail of each sandbox's QEMU: its uid, what it sees, and which cgroup bounds it. The
//! mechanism (namespaces, mounts, credentials between fork and exec) is `vmm::jail`; this module
//! decides what goes in, from a [`Sandbox`] (what `vm` knows of the one it starts).
//!
//! - **Identity.** Each sandbox's QEMU runs as its own uid and gid, `UID_BASE` plus the low 24
//!   bits of the sandbox's guest address. An address is unique among the engine's sandboxes and
//!   kept for a sandbox's whole life (hot, warm, cold, recovered), so the uid is too, with no
//!   table to keep. The sandbox's directory and writable volumes are chowned to it before each
//!   start; the directory is 0700, so no other sandbox's QEMU could read it even if it could
//!   see it.
//! - **View.** The jail shows the sandbox's directory (read-write), its kernel, base image and
//!   read-only volumes (read-only), its writable volumes, QEMU's binary, loader and libraries
//!   (found with `ldd` once), QEMU's firmware directories (`-L help`), `/etc/ld.so.cache`,
//!   `/dev/null`, `/dev/urandom`, and `/dev/kvm` under KVM. Nothing else: no `/proc`, no `/etc`,
//!   no shell, no store, no keys, no other sandbox.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vmm::{Access, Accelerator, Bind, Jail};

use crate::cgroup::{Hierarchy, Limits, SandboxCgroup};
use crate::error::{EngineError, io_at};
use crate::layout::SandboxFiles;

/// First uid (and gid) of the range sandboxes' QEMUs run as: far above the uids distributions
/// hand out to people and services, and above the usual subordinate-uid ranges.
pub const UID_BASE: u32 = 1_000_000_000;

/// The uid (and gid) of the QEMU of the sandbox at `ip`.
pub fn sandbox_uid(ip: Ipv4Addr) -> u32 {
    UID_BASE + (u32::from(ip) & 0x00FF_FFFF)
}

/// How a sandbox's QEMU is confined, beyond what every jail has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// CPU bound in thousandths of a core: 1000 per vCPU unless the caller asked for a fraction
    /// (v1 accepts `cpus: 0.5`).
    pub cpu_millis: u32,
    /// The base of the sandbox's cgroup names, under [`CGROUP_PARENT`]: unique on the host
    /// (engines in tests run side by side, so the engine's namespace is part of it). Each QEMU
    /// start gets a cgroup of its own, `<base>.<n>`, so the guard of an earlier QEMU of the same
    /// sandbox (a stop racing a start, an owner of a crashed engine) can never remove a later
    /// one's.
    pub cgroup: String,
}

/// The cgroup every sandbox's cgroup lives under.
pub const CGROUP_PARENT: &str = "bhatti";

/// Memory a QEMU may use beyond its guest's RAM: under TCG the translation cache (64 MiB), the
/// vCPU and I/O threads' stacks, QEMU's heap and the page cache of its disk writes, which the
/// kernel reclaims at the limit rather than failing (see the engine README for the measurement).
pub const QEMU_OVERHEAD_MIB: u64 = 192;

/// Processes and threads one QEMU may have: vCPU threads, the main loop, RCU, and QEMU's I/O
/// worker pool (up to 64). A guest cannot make QEMU fork (seccomp), so this is a backstop.
pub const PIDS_MAX: u32 = 256;

/// The base of the cgroup names of the sandbox `id` of the engine whose namespace is `netns`.
pub fn cgroup_name(netns: &str, id: &str) -> String {
    format!("{netns}.{id}")
}

/// The host's cgroup hierarchy, found once. `None` (said once in the log) where the host has no
/// usable one: sandboxes then run jailed but without resource bounds.
pub fn hierarchy() -> Option<&'static Hierarchy> {
    static FOUND: OnceLock<Option<Hierarchy>> = OnceLock::new();
    FOUND
        .get_or_init(|| match Hierarchy::detect() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("sandboxes run without cgroup limits: {e}");
                None
            }
        })
        .as_ref()
}

/// What [`sweep_cgroups`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Cgroups removed.
    pub removed: usize,
    /// Cgroups that stay (processes still in them).
    pub left: usize,
}

/// Removes the cgroups an earlier engine on `netns` left behind (its QEMUs are gone, killed as
/// orphans or dead with it). One attempt each, no waiting: a cgroup with processes in it (a
/// sandbox already running again, a QEMU still exiting) stays, and is counted in `left`.
pub fn sweep_cgroups(netns: &str) -> Swept {
    let Some(h) = hierarchy() else {
        return Swept::default();
    };
    let prefix = format!("{netns}.");
    let mut swept = Swept::default();
    for name in h.children(CGROUP_PARENT).into_iter().filter(|n| n.starts_with(&prefix)) {
        match SandboxCgroup::existing(h, CGROUP_PARENT, &name) {
            Ok(cgroup) if cgroup.try_remove() => swept.removed += 1,
            _ => swept.left += 1,
        }
    }
    swept
}

/// CPU QEMU's own threads (device emulation, the main loop, migration) may use beyond what its
/// vCPUs are bound to: one core. Measured side by side (`perf_confinement_cost`): with one
/// bound for the whole process, a 1-vCPU guest's QEMU was throttled while it started and woke
/// (its main thread and vCPU thread together briefly need more than one core): +10-15% on create
/// and cold wake. Half a core of allowance still cost +14% on cold wake; a core costs nothing
/// measurable. The guest's own CPU stays exactly what it asked for.
pub const EMULATOR_MILLIS: u32 = 1000;

/// The limits of a sandbox with `memory_mib` of guest RAM: the whole QEMU may use its vCPUs'
/// CPU plus [`EMULATOR_MILLIS`]; the vCPU threads alone are bound by [`bound_vcpus`].
pub fn limits(memory_mib: u32, confinement: &Confinement) -> Limits {
    Limits {
        memory_bytes: (u64::from(memory_mib) + QEMU_OVERHEAD_MIB) << 20,
        cpu_millis: confinement.cpu_millis + EMULATOR_MILLIS,
        pids: PIDS_MAX,
    }
}

/// Binds the vCPU threads of a started QEMU to the CPU its sandbox asked for (v1's `cpus`), in
/// their own child of the sandbox's cgroup. Call before the guest's first instruction counts:
/// right after QEMU starts (a restore's vCPUs have not run yet).
pub async fn bound_vcpus(
    qemu: &vmm::QemuProcess,
    cgroup: &str,
    cpu_millis: u32,
) -> Result<(), EngineError> {
    let Some(h) = hierarchy() else {
        return Ok(());
    };
    let cpus = qemu.qmp.execute("query-cpus-fast", None, std::time::Duration::from_secs(5)).await?;
    let mut tids: Vec<u32> = cpus
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|cpu| cpu["thread-id"].as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect();
    // Single-threaded TCG runs every vCPU on one thread.
    tids.sort_unstable();
    tids.dedup();
    if tids.is_empty() {
        // QEMU always runs its vCPUs on threads: an answer without one breaks QMP's promise.
        return Err(vmm::VmmError::Protocol("query-cpus-fast: no vCPU thread".into()).into());
    }
    // Moving threads between v1 cgroups waits for an RCU grace period each: off the async
    // threads.
    let cgroup = cgroup.to_owned();
    tokio::task::spawn_blocking(move || {
        SandboxCgroup::existing(h, CGROUP_PARENT, &cgroup)
            .and_then(|cg| cg.bound_threads(&tids, cpu_millis))
    })
    .await??;
    Ok(())
}

/// The name of the cgroup `jail` joins (made by [`prepare`]), if it joins one.
pub fn cgroup_of(jail: &Jail) -> Option<String> {
    let procs = jail.cgroup_procs.first()?;
    Some(procs.parent()?.file_name()?.to_string_lossy().into_owned())
}

/// Removes a sandbox's cgroup when dropped: held by the running VM, declared after its QEMU so
/// the QEMU is reaped first and the directory is empty. The removal retries while the kernel
/// still counts the last threads of a killed QEMU (up to about 0.6 s of sleeps), so it never
/// runs on an async worker: [`CgroupGuard::release`] awaits it on a blocking thread (a stop or a
/// kill, whose caller may look for the cgroup at once), a drop hands it to one and notes it
/// until it is done, so that whoever gives the sandbox back (a create cut short) can finish it
/// first ([`remove_dropped`]).
#[derive(Debug)]
pub struct CgroupGuard {
    /// `None` once released.
    name: Option<String>,
}

impl CgroupGuard {
    /// A guard for the cgroup `name`.
    pub fn new(name: String) -> Self {
        Self { name: Some(name) }
    }

    /// The cgroup's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// Removes the cgroup now (its processes must be gone) and returns once it is removed.
    pub async fn release(mut self) {
        if let Some(name) = self.name.take()
            && let Err(e) = tokio::task::spawn_blocking(move || remove_cgroup(&name)).await
        {
            tracing::warn!("removing a cgroup: {e}");
        }
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            note_dropped(name.clone());
            crate::run::off_thread(move || {
                remove_cgroup(&name);
                dropped().remove(&name);
            });
        }
    }
}

/// Whether the cgroup `name` is one start's (`<base>.<n>`) of the sandbox whose base is `base`.
fn is_start_of(name: &str, base: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(b, n)| b == base && n.bytes().all(|c| c.is_ascii_digit()))
}

/// Cgroups of dropped guards whose removal may not have run yet.
fn dropped() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<String>> {
    static DROPPED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    DROPPED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Notes a dropped guard's cgroup until its removal ran. The first note registers
/// [`remove_all_dropped`] to run at process exit: a removal handed to a blocking thread while
/// the runtime shuts down (an engine's owners dropped with it) never runs, and would leave the
/// cgroup on the host.
fn note_dropped(name: String) {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function that takes no arguments and never
        // unwinds (it catches panics).
        if unsafe { libc::atexit(remove_all_dropped) } != 0 {
            tracing::warn!("cgroups of sandboxes dropped at exit may stay behind");
        }
    });
    dropped().insert(name);
}

/// At process exit: removes the cgroups whose removal no blocking thread ran.
extern "C" fn remove_all_dropped() {
    let _ = std::panic::catch_unwind(|| {
        let names = std::mem::take(&mut *dropped());
        for name in names {
            remove_cgroup(&name);
        }
    });
}

/// Removes now the cgroups of dropped guards of the sandbox whose cgroup base is `base` (see
/// [`Confinement::cgroup`]) that are still waiting for a blocking thread: exactly those, never
/// a later start's live one. Blocking (it retries while a killed QEMU's last threads go): call
/// it from a blocking thread, once the sandbox's QEMU is gone.
pub fn remove_dropped(base: &str) {
    let names: Vec<String> = dropped()
        .iter()
        .filter(|name| is_start_of(name, base))
        .cloned()
        .collect();
    for name in names {
        remove_cgroup(&name);
        dropped().remove(&name);
    }
}

/// Removes the sandbox cgroup `name`, retrying while it is busy. Blocking.
fn remove_cgroup(name: &str) {
    if let Some(h) = hierarchy()
        && let Err(e) = SandboxCgroup::remove_by_name(h, CGROUP_PARENT, name)
    {
        tracing::warn!("removing cgroup {name}: {}", crate::error::Report(&e));
    }
}

/// What every QEMU needs from the host: its binary, loader and libraries, and firmware.
#[derive(Debug, Clone)]
pub struct HostFiles {
    /// The QEMU binary, absolute.
    pub qemu: PathBuf,
    binds: Vec<Bind>,
}

/// Found once; a failure too (shared: an `io::Error` cannot be cloned).
static HOST_FILES: OnceLock<Result<HostFiles, std::sync::Arc<std::io::Error>>> = OnceLock::new();

impl HostFiles {
    /// The host files of `qemu-system-x86_64` from `PATH`, found once per process (a few
    /// milliseconds of `ldd`; blocking, so the first call should come from a blocking thread or
    /// the engine's start).
    pub fn get() -> Result<&'static HostFiles, EngineError> {
        HOST_FILES
            .get_or_init(|| Self::discover("qemu-system-x86_64").map_err(std::sync::Arc::new))
            .as_ref()
            .map_err(|e| EngineError::JailHost(std::sync::Arc::clone(e)))
    }

    /// Finds `program`'s binary, the libraries `ldd` resolves for it and QEMU's firmware
    /// directories.
    pub fn discover(program: &str) -> std::io::Result<Self> {
        let qemu = find_in_path(program).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{program} not in PATH"))
        })?;
        let ldd = std::process::Command::new("ldd").arg(&qemu).output()?;
        if !ldd.status.success() {
            return Err(std::io::Error::other(format!(
                "ldd {}: {}",
                qemu.display(),
                String::from_utf8_lossy(&ldd.stderr).trim()
            )));
        }
        let mut binds = vec![Bind { path: qemu.clone(), access: Access::Execute }];
        binds.extend(
            libraries(&String::from_utf8_lossy(&ldd.stdout))
                .into_iter()
                .map(|path| Bind { path, access: Access::Execute }),
        );
        let firmware = std::process::Command::new(&qemu).arg("-L").arg("help").output()?;
        for dir in String::from_utf8_lossy(&firmware.stdout).lines() {
            let dir = Path::new(dir.trim());
            if dir.is_absolute() && dir.is_dir() {
                binds.push(Bind { path: dir.to_owned(), access: Access::Read });
            }
        }
        let cache = Path::new("/etc/ld.so.cache");
        if cache.exists() {
            binds.push(Bind { path: cache.to_owned(), access: Access::Read });
        }
        for device in ["/dev/null", "/dev/urandom"] {
            binds.push(Bind { path: device.into(), access: Access::Device });
        }
        Ok(Self { qemu, binds })
    }
}

/// The absolute paths `ldd` printed: each library it resolved and the loader.
fn libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let target = line.split_once("=>").map_or(line, |(_, right)| right);
            target.split_whitespace().next().filter(|p| p.starts_with('/')).map(PathBuf::from)
        })
        .collect()
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return std::fs::canonicalize(program).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// What of one sandbox its jail shows.
#[derive(Debug, Clone, Copy)]
pub struct Sandbox<'a> {
    /// Its guest address (which gives its uid).
    pub ip: Ipv4Addr,
    /// Its directory.
    pub files: &'a SandboxFiles,
    /// Its kernel.
    pub kernel: &'a Path,
    /// Its base image.
    pub image: &'a Path,
    /// Its volumes.
    pub volumes: &'a [vmm::Disk],
    /// Its guest RAM in MiB.
    pub memory_mib: u32,
}

/// The jail of `spec`'s QEMU. Makes the sandbox's files its uid's first (the directory and what
/// is in it, writable volumes); blocking file-system calls, a handful.
pub fn prepare(
    spec: &Sandbox<'_>,
    confinement: &Confinement,
    accel: Accelerator,
    host: &HostFiles,
) -> Result<Jail, EngineError> {
    let uid = sandbox_uid(spec.ip);
    let dir = spec.files.dir();
    let mount_point = spec.files.jail_root();
    std::fs::create_dir_all(&mount_point).map_err(io_at("creating", &mount_point))?;
    std::fs::set_permissions(&mount_point, std::fs::Permissions::from_mode(0o700))
        .map_err(io_at("setting the mode of", &mount_point))?;
    give(dir, uid)?;
    for entry in std::fs::read_dir(dir).map_err(io_at("listing", dir))? {
        let path = entry.map_err(io_at("listing", dir))?.path();
        // A clone's RAM and disk layers are hard links shared with its checkpoint and the
        // other clones: they stay root's and read-only (QEMU only reads them).
        let shared = path
            .file_name()
            .is_some_and(|n| crate::layout::is_shared_base(&n.to_string_lossy()));
        if path != mount_point && !shared {
            give(&path, uid)?;
        }
    }
    let mut binds = host.binds.clone();
    binds.push(Bind { path: dir.to_owned(), access: Access::ReadWrite });
    binds.push(Bind { path: spec.kernel.to_owned(), access: Access::Read });
    binds.push(Bind { path: spec.image.to_owned(), access: Access::Read });
    for volume in spec.volumes {
        if volume.path.starts_with(dir) {
            continue;
        }
        let access = if volume.read_only { Access::Read } else { Access::ReadWrite };
        if !volume.read_only {
            give(&volume.path, uid)?;
        }
        binds.push(Bind { path: volume.path.clone(), access });
    }
    let mut groups = Vec::new();
    if accel == Accelerator::Kvm {
        let kvm = Path::new("/dev/kvm");
        binds.push(Bind { path: kvm.to_owned(), access: Access::Device });
        // Where the device is not open to everyone, the jail keeps the group that owns it (as
        // libvirt's qemu user is in `kvm`); nothing else of the host's groups.
        let meta = std::fs::metadata(kvm).map_err(io_at("reading", kvm))?;
        if meta.permissions().mode() & 0o006 != 0o006 {
            groups.push(std::os::unix::fs::MetadataExt::gid(&meta));
        }
    }
    let cgroup_procs = match hierarchy() {
        Some(h) => {
            let limits = limits(spec.memory_mib, confinement);
            // This start's own cgroup (see `Confinement::cgroup`).
            static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("{}.{n}", confinement.cgroup);
            SandboxCgroup::create(h, CGROUP_PARENT, &name, &limits)?.procs_files()
        }
        None => Vec::new(),
    };
    Ok(Jail { uid, gid: uid, mount_point, binds, cgroup_procs, groups })
}

/// Makes `path` belong to `uid` (and the group of the same number), without following a symlink.
fn give(path: &Path, uid: u32) -> Result<(), EngineError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).map_err(io_at("handing to the jail", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_one_per_address_and_never_root() {
        let a = sandbox_uid("10.200.0.2".parse().unwrap());
        let b = sandbox_uid("10.200.0.3".parse().unwrap());
        assert_ne!(a, b);
        assert_eq!(a, UID_BASE + (200 << 16) + 2);
        assert!(a > 65_535 && a < u32::MAX / 2);
    }

    #[test]
    fn a_sandbox_settles_only_its_own_starts_cgroups() {
        let base = cgroup_name("bhatti-t", "abc");
        assert!(is_start_of("bhatti-t.abc.0", &base));
        assert!(is_start_of("bhatti-t.abc.17", &base));
        // Another sandbox whose ID starts the same, or another engine's, is not this one.
        assert!(!is_start_of("bhatti-t.abcd.0", &base));
        assert!(!is_start_of("bhatti-u.abc.0", &base));
        assert!(!is_start_of("bhatti-t.abc", &base));
        assert!(!is_start_of("bhatti-t.abc.vcpus", &base));
    }

    #[test]
    fn ldd_output_gives_each_library_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            libraries(out),
            [PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"), "/lib64/ld-linux-x86-64.so.2".into()]
        );
    }

    #[test]
    fn this_hosts_qemu_is_found_with_its_libraries() {
        let host = HostFiles::discover("qemu-system-x86_64").unwrap();
        assert!(host.qemu.is_absolute());
        let libc = host.binds.iter().any(|b| b.path.to_string_lossy().contains("libc.so"));
        assert!(libc, "{:?}", host.binds);
        assert!(host.binds.iter().any(|b| b.access == Access::Read && b.path.is_dir()));
    }
}
