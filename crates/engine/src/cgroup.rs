//! Per-sandbox cgroups: what bounds the memory, CPU and process count one QEMU may take.
//!
//! The host has either the unified hierarchy (v2: one tree at `/sys/fs/cgroup` whose
//! `cgroup.controllers` lists the controllers) or v1 controllers each mounted on their own
//! (found in `/proc/self/mountinfo`, never assumed to live at `/sys/fs/cgroup/<name>`).
//! [`Hierarchy::detect`] finds which; [`SandboxCgroup::create`] makes `<parent>/<name>` in it
//! and writes the [`Limits`]; the QEMU child joins by writing `0` into each of
//! [`SandboxCgroup::procs_files`] before exec ([`Joiner`] does that with async-signal-safe calls
//! only); [`SandboxCgroup::read`] reads back what the kernel holds; [`SandboxCgroup::remove`]
//! removes the directories once the processes have exited.
//!
//! Every file access is a tiny blocking sysfs read or write through `std::fs`: the caller runs
//! these off the async threads.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the unified hierarchy lives when the host has one.
const UNIFIED_ROOT: &str = "/sys/fs/cgroup";
/// The CFS period every sandbox gets, in microseconds: quotas are per 100 ms.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel takes is 1 ms per period, so 10 millis of a core.
pub const MIN_CPU_MILLIS: u32 = 10;
/// v1 reports "no memory limit" as the largest page-aligned `i64` (or near it); anything this
/// large means unlimited.
const V1_UNLIMITED: u64 = 1 << 62;
/// How long `remove` waits in all for a cgroup whose last process is still exiting.
const REMOVE_DELAYS_MS: [u64; 7] = [5, 10, 20, 40, 80, 160, 320];

/// Why a cgroup operation failed; each names the file or directory concerned.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a usable v2 tree nor the v1 memory, cpu and pids controllers.
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    /// A parent or sandbox name that is not one plain path component.
    #[error("invalid cgroup name {0:?}: must be one path component, not empty, '.' or '..'")]
    InvalidName(String),
    /// Limits the kernel cannot express.
    #[error("invalid cgroup limits: {0}")]
    InvalidLimits(&'static str),
    /// Reading a control file failed.
    #[error("reading {path}")]
    Read {
        /// The control file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A control file held something this module does not understand.
    #[error("{path}: unexpected content {content:?}")]
    Parse {
        /// The control file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
    /// Writing a control file failed.
    #[error("writing {value:?} to {path}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The error.
        source: io::Error,
    },
    /// v1 refuses a memory limit below what the cgroup already uses (it cannot reclaim enough).
    #[error(
        "memory limit of {limit} bytes refused by {path}: the cgroup already uses more than that"
    )]
    MemoryBelowUsage {
        /// `memory.limit_in_bytes` of the sandbox.
        path: PathBuf,
        /// The limit asked for.
        limit: u64,
    },
    /// Creating a cgroup directory failed.
    #[error("creating {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Removing a cgroup directory failed (EBUSY: processes still in it).
    #[error("removing {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Which hierarchy the host has, with the directories the controllers are mounted on.
///
/// A [`SandboxCgroup`] keeps the same shape with each path pointing at its own directory, since a
/// cgroup directory holds the same control files as its controller's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy: every controller in one tree.
    V2 {
        /// Where it is mounted.
        root: PathBuf,
    },
    /// Separate v1 controller mounts. Two controllers mounted together share one path.
    V1 {
        /// The memory controller.
        memory: PathBuf,
        /// The cpu controller (CFS quota).
        cpu: PathBuf,
        /// The cpuacct controller (CPU usage), when mounted; often with cpu, separate here.
        cpuacct: Option<PathBuf>,
        /// The pids controller.
        pids: PathBuf,
    },
}

impl Hierarchy {
    /// Detects the host's hierarchy: v2 when `/sys/fs/cgroup/cgroup.controllers` exists, else
    /// the v1 memory, cpu and pids controllers wherever `/proc/self/mountinfo` says they are.
    pub fn detect() -> Result<Self, CgroupError> {
        let unified = Path::new(UNIFIED_ROOT);
        if unified.join("cgroup.controllers").exists() {
            return Self::v2(unified);
        }
        let mountinfo = Path::new("/proc/self/mountinfo");
        let text = read_string(mountinfo)?;
        Self::from_mountinfo(&text)
    }

    /// The same detection on a directory laid out like either hierarchy, for tests: v2 when
    /// `<root>/cgroup.controllers` exists, else v1 with `<root>/{memory,cpu,pids}` (and
    /// `<root>/cpuacct` when present).
    pub fn at(root: &Path) -> Result<Self, CgroupError> {
        if root.join("cgroup.controllers").exists() {
            return Self::v2(root);
        }
        let dir = |name: &str| {
            let p = root.join(name);
            p.is_dir().then_some(p)
        };
        Self::v1(dir("memory"), dir("cpu"), dir("cpuacct"), dir("pids"))
    }

    /// The v1 controllers from the text of a `mountinfo` file.
    pub fn from_mountinfo(text: &str) -> Result<Self, CgroupError> {
        let (mut memory, mut cpu, mut cpuacct, mut pids) = (None, None, None, None);
        for line in text.lines() {
            // `<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype>
            // <source> <super options>`: the optional fields end at the lone "-".
            let Some((before, after)) = line.split_once(" - ") else { continue };
            let mut post = after.split(' ');
            if post.next() != Some("cgroup") {
                continue;
            }
            let (Some(point), Some(opts)) = (before.split(' ').nth(4), post.nth(1)) else {
                continue;
            };
            let point = PathBuf::from(unescape_mount_point(point));
            for opt in opts.split(',') {
                let slot = match opt {
                    "memory" => &mut memory,
                    "cpu" => &mut cpu,
                    "cpuacct" => &mut cpuacct,
                    "pids" => &mut pids,
                    _ => continue,
                };
                // A controller bind-mounted twice: the first mount is as good as any.
                slot.get_or_insert_with(|| point.clone());
            }
        }
        Self::v1(memory, cpu, cpuacct, pids)
    }

    fn v2(root: &Path) -> Result<Self, CgroupError> {
        let path = root.join("cgroup.controllers");
        let text = read_string(&path)?;
        let have: Vec<&str> = text.split_whitespace().collect();
        let missing: Vec<&str> =
            ["memory", "cpu", "pids"].into_iter().filter(|c| !have.contains(c)).collect();
        if !missing.is_empty() {
            return Err(CgroupError::Unavailable(format!(
                "cgroup v2 at {} lacks the {} controller(s)",
                root.display(),
                missing.join(", ")
            )));
        }
        Ok(Hierarchy::V2 { root: root.to_path_buf() })
    }

    fn v1(
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
        pids: Option<PathBuf>,
    ) -> Result<Self, CgroupError> {
        match (memory, cpu, pids) {
            (Some(memory), Some(cpu), Some(pids)) => {
                Ok(Hierarchy::V1 { memory, cpu, cpuacct, pids })
            }
            (memory, cpu, pids) => {
                let missing: Vec<&str> = [("memory", memory), ("cpu", cpu), ("pids", pids)]
                    .into_iter()
                    .filter_map(|(n, p)| p.is_none().then_some(n))
                    .collect();
                Err(CgroupError::Unavailable(format!(
                    "no cgroup v2 and no v1 mount of the {} controller(s)",
                    missing.join(", ")
                )))
            }
        }
    }

    /// `"v2"` or `"v1"`.
    pub fn name(&self) -> &'static str {
        match self {
            Hierarchy::V2 { .. } => "v2",
            Hierarchy::V1 { .. } => "v1",
        }
    }

    /// One line for the daemon's start log, e.g. `cgroup v1 (memory at /sys/fs/cgroup/memory,
    /// cpu at ..., cpuacct at ..., pids at ...)`.
    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 { root } => {
                format!("cgroup v2 (memory, cpu, pids at {})", root.display())
            }
            Hierarchy::V1 { memory, cpu, cpuacct, pids } => {
                let acct = match cpuacct {
                    Some(p) => format!("cpuacct at {}", p.display()),
                    None => "no cpuacct: CPU usage unavailable".to_string(),
                };
                format!(
                    "cgroup v1 (memory at {}, cpu at {}, {acct}, pids at {})",
                    memory.display(),
                    cpu.display(),
                    pids.display()
                )
            }
        }
    }

    /// The distinct directories of this shape: the controller roots of a host hierarchy, or a
    /// sandbox's own directories (v1 controllers mounted together appear once).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::V2 { root } => vec![root.clone()],
            Hierarchy::V1 { memory, cpu, cpuacct, pids } => {
                let mut out: Vec<PathBuf> = Vec::with_capacity(4);
                for p in
                    [Some(memory), Some(cpu), cpuacct.as_ref(), Some(pids)].into_iter().flatten()
                {
                    if !out.contains(p) {
                        out.push(p.clone());
                    }
                }
                out
            }
        }
    }

    /// The same shape with `rel` appended to every path.
    fn join(&self, rel: &Path) -> Hierarchy {
        match self {
            Hierarchy::V2 { root } => Hierarchy::V2 { root: root.join(rel) },
            Hierarchy::V1 { memory, cpu, cpuacct, pids } => Hierarchy::V1 {
                memory: memory.join(rel),
                cpu: cpu.join(rel),
                cpuacct: cpuacct.as_ref().map(|p| p.join(rel)),
                pids: pids.join(rel),
            },
        }
    }

    /// The names of the cgroups under `parent`, in any controller.
    pub fn children(&self, parent: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .join(Path::new(parent))
            .dirs()
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Removes the parent directories themselves (after every sandbox under them is gone); a
    /// missing one is fine. For daemon shutdown and test cleanup.
    pub fn remove_parent(&self, parent: &str) -> Result<(), CgroupError> {
        check_name(parent)?;
        self.join(Path::new(parent)).dirs().iter().try_for_each(|d| rmdir_patiently(d))
    }
}

/// The limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory, in bytes (the kernel rounds down to pages).
    pub memory_bytes: u64,
    /// CPU time in thousandths of a core: 500 is half a core, 2000 two cores.
    pub cpu_millis: u32,
    /// Processes and threads (QEMU's vCPU and I/O threads count).
    pub pids: u32,
}

impl Limits {
    fn check(&self) -> Result<(), CgroupError> {
        if self.memory_bytes == 0 {
            return Err(CgroupError::InvalidLimits("memory_bytes must be above 0"));
        }
        if self.cpu_millis < MIN_CPU_MILLIS {
            return Err(CgroupError::InvalidLimits("cpu_millis must be at least 10 (1 ms/100 ms)"));
        }
        if self.pids == 0 {
            return Err(CgroupError::InvalidLimits("pids must be above 0"));
        }
        Ok(())
    }

    /// The CFS quota per [`CPU_PERIOD_US`]: 500 millis is 50000 µs.
    pub fn cpu_quota_us(&self) -> u64 {
        cpu_quota_us(self.cpu_millis)
    }
}

/// The CFS quota per [`CPU_PERIOD_US`] of `millis` thousandths of a core.
fn cpu_quota_us(millis: u32) -> u64 {
    u64::from(millis) * CPU_PERIOD_US / 1000
}

/// What the kernel holds for one sandbox: its limits and usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The memory limit in bytes; `None` when unlimited.
    pub memory_max: Option<u64>,
    /// The CFS quota in µs per period; `None` when unlimited.
    pub cpu_quota_us: Option<u64>,
    /// The CFS period in µs.
    pub cpu_period_us: u64,
    /// The process limit; `None` when unlimited.
    pub pids_max: Option<u64>,
    /// Memory in use now, in bytes.
    pub memory_current: u64,
    /// The most memory ever used, in bytes (v2 only has it from Linux 5.19, `memory.peak`).
    pub memory_peak: Option<u64>,
    /// CPU time used, in ns (v1 without a cpuacct mount has none).
    pub cpu_usage_ns: Option<u64>,
    /// Processes and threads in the cgroup now.
    pub pids_current: u64,
    /// How many processes the OOM killer has killed in the cgroup.
    pub oom_kills: u64,
}

/// One sandbox's cgroup: a directory per v1 controller, or one v2 directory.
#[derive(Debug)]
pub struct SandboxCgroup {
    /// The sandbox's own directories, in the shape of the host's hierarchy.
    dirs: Hierarchy,
}

impl SandboxCgroup {
    /// Creates `<parent>/<name>` in each controller (v2: one directory, after enabling
    /// `+memory +cpu +pids` in the root's and the parent's `cgroup.subtree_control`) and writes
    /// the limits. An existing directory (a restarted daemon's) is reused and its limits
    /// rewritten. On failure the directories are removed again when empty.
    pub fn create(
        h: &Hierarchy,
        parent: &str,
        name: &str,
        limits: &Limits,
    ) -> Result<Self, CgroupError> {
        check_name(parent)?;
        check_name(name)?;
        limits.check()?;
        let cg = SandboxCgroup { dirs: h.join(&Path::new(parent).join(name)) };
        let made = match h {
            Hierarchy::V2 { root } => {
                // Controllers reach a child only when enabled in every ancestor's
                // subtree_control; the root is exempt from the no-internal-processes rule and
                // the parent holds no processes, so enabling both levels always works.
                let enable = "+memory +cpu +pids";
                write_file(&root.join("cgroup.subtree_control"), enable)?;
                let parent_dir = root.join(parent);
                mkdir(&parent_dir)?;
                write_file(&parent_dir.join("cgroup.subtree_control"), enable)?;
                cg.dirs.dirs().iter().try_for_each(|d| mkdir(d))
            }
            Hierarchy::V1 { .. } => h.join(Path::new(parent)).dirs().iter().try_for_each(|d| {
                mkdir(d)?;
                mkdir(&d.join(name))
            }),
        };
        if let Err(e) = made.and_then(|()| cg.write_limits(limits)) {
            // Best effort and without waiting: a reused cgroup with processes in it stays.
            for d in cg.dirs.dirs() {
                let _ = std::fs::remove_dir(d);
            }
            return Err(e);
        }
        Ok(cg)
    }

    fn write_limits(&self, l: &Limits) -> Result<(), CgroupError> {
        let quota = l.cpu_quota_us();
        match &self.dirs {
            Hierarchy::V2 { root: dir } => {
                write_file(&dir.join("memory.max"), &l.memory_bytes.to_string())?;
                // Guest RAM must not spill into swap without bound; the file only exists with
                // swap accounting.
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0")?;
                }
                write_file(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                write_file(&dir.join("pids.max"), &l.pids.to_string())?;
            }
            Hierarchy::V1 { memory, cpu, pids, .. } => {
                let path = memory.join("memory.limit_in_bytes");
                let value = l.memory_bytes.to_string();
                if let Err(source) = std::fs::write(&path, &value) {
                    return Err(if source.raw_os_error() == Some(libc::EBUSY) {
                        CgroupError::MemoryBelowUsage { path, limit: l.memory_bytes }
                    } else {
                        CgroupError::Write { path, value, source }
                    });
                }
                write_file(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write_file(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write_file(&pids.join("pids.max"), &l.pids.to_string())?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes `0` into to join: one per v1 controller
    /// directory, one for v2. See [`Joiner`] for doing it between fork and exec.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.dirs().into_iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The sandbox's directories (one per distinct v1 mount, or the v2 one).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.dirs()
    }

    /// A [`Joiner`] for a child process to join this cgroup before exec.
    pub fn joiner(&self) -> Result<Joiner, CgroupError> {
        Joiner::new(&self.procs_files())
    }

    /// Reads back the limits and usage the kernel has.
    pub fn read(&self) -> Result<Usage, CgroupError> {
        match &self.dirs {
            Hierarchy::V2 { root: dir } => {
                let cpu_max = dir.join("cpu.max");
                let text = read_string(&cpu_max)?;
                let (quota, period) = text
                    .split_once(' ')
                    .and_then(|(q, p)| Some((parse_max(q)?, p.trim().parse().ok()?)))
                    .ok_or_else(|| parse_error(&cpu_max, &text))?;
                let peak = dir.join("memory.peak");
                let usage_usec = read_keyed(&dir.join("cpu.stat"), "usage_usec")?;
                Ok(Usage {
                    memory_max: read_max(&dir.join("memory.max"))?,
                    cpu_quota_us: quota,
                    cpu_period_us: period,
                    pids_max: read_max(&dir.join("pids.max"))?,
                    memory_current: read_u64(&dir.join("memory.current"))?,
                    memory_peak: if peak.exists() { Some(read_u64(&peak)?) } else { None },
                    cpu_usage_ns: Some(usage_usec.saturating_mul(1000)),
                    pids_current: read_u64(&dir.join("pids.current"))?,
                    oom_kills: read_keyed(&dir.join("memory.events"), "oom_kill")?,
                })
            }
            Hierarchy::V1 { memory, cpu, cpuacct, pids } => {
                let limit = read_u64(&memory.join("memory.limit_in_bytes"))?;
                let quota_path = cpu.join("cpu.cfs_quota_us");
                let quota_text = read_string(&quota_path)?;
                let quota = match quota_text.trim() {
                    "-1" => None,
                    q => Some(q.parse().map_err(|_| parse_error(&quota_path, &quota_text))?),
                };
                Ok(Usage {
                    memory_max: (limit < V1_UNLIMITED).then_some(limit),
                    cpu_quota_us: quota,
                    cpu_period_us: read_u64(&cpu.join("cpu.cfs_period_us"))?,
                    pids_max: read_max(&pids.join("pids.max"))?,
                    memory_current: read_u64(&memory.join("memory.usage_in_bytes"))?,
                    memory_peak: Some(read_u64(&memory.join("memory.max_usage_in_bytes"))?),
                    cpu_usage_ns: match cpuacct {
                        Some(d) => Some(read_u64(&d.join("cpuacct.usage"))?),
                        None => None,
                    },
                    pids_current: read_u64(&pids.join("pids.current"))?,
                    oom_kills: read_keyed(&memory.join("memory.oom_control"), "oom_kill")?,
                })
            }
        }
    }

    /// Removes the cgroup's directories. Only possible once its processes have exited: a busy
    /// directory is retried for about 0.6 s (a killed QEMU takes a moment to be gone); a missing
    /// one is fine.
    pub fn remove(self) -> Result<(), CgroupError> {
        rmdir_patiently(&self.cpu_dir().join(THREADS_CHILD))?;
        self.dirs.dirs().iter().try_for_each(|d| rmdir_patiently(d))
    }

    /// Removes the cgroup's directories in one attempt, without waiting: false when one stays
    /// (processes still in it). For sweeps that must not stall on a live cgroup.
    pub fn try_remove(&self) -> bool {
        let gone = |d: &Path| match std::fs::remove_dir(d) {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        gone(&self.cpu_dir().join(THREADS_CHILD)) && self.dirs.dirs().iter().all(|d| gone(d))
    }

    /// Removes `<parent>/<name>` without a [`SandboxCgroup`]: leftovers after a crash.
    pub fn remove_by_name(h: &Hierarchy, parent: &str, name: &str) -> Result<(), CgroupError> {
        Self::existing(h, parent, name)?.remove()
    }

    /// The cgroup `<parent>/<name>` made earlier by [`SandboxCgroup::create`] (no file-system
    /// access).
    pub fn existing(h: &Hierarchy, parent: &str, name: &str) -> Result<Self, CgroupError> {
        check_name(parent)?;
        check_name(name)?;
        Ok(SandboxCgroup { dirs: h.join(&Path::new(parent).join(name)) })
    }

    /// The directory of the CPU controller (v1's `cpu` mount, or the v2 directory).
    fn cpu_dir(&self) -> &Path {
        match &self.dirs {
            Hierarchy::V2 { root } => root,
            Hierarchy::V1 { cpu, .. } => cpu,
        }
    }

    /// Bounds the threads `tids` of the cgroup's process to `cpu_millis` together, in a child
    /// of its CPU controller ([`THREADS_CHILD`]); the process's other threads stay under the
    /// cgroup's own bound. This is libvirt's layout: a guest's vCPUs get exactly the CPU it
    /// asked for, while the VMM's own threads (device emulation, the main loop) have an
    /// allowance of their own instead of competing with the vCPUs for the same quota.
    /// v1 moves each thread with `tasks`; v2 makes the child `threaded` and uses
    /// `cgroup.threads`.
    pub fn bound_threads(&self, tids: &[u32], cpu_millis: u32) -> Result<(), CgroupError> {
        if cpu_millis < MIN_CPU_MILLIS {
            return Err(CgroupError::InvalidLimits("cpu_millis must be at least 10 (1 ms/100 ms)"));
        }
        let child = self.cpu_dir().join(THREADS_CHILD);
        mkdir(&child)?;
        let quota = cpu_quota_us(cpu_millis);
        let threads = match &self.dirs {
            Hierarchy::V2 { root } => {
                // The child must be threaded before the parent, which holds the process, may
                // enable a controller for it.
                write_file(&child.join("cgroup.type"), "threaded")?;
                write_file(&root.join("cgroup.subtree_control"), "+cpu")?;
                write_file(&child.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                child.join("cgroup.threads")
            }
            Hierarchy::V1 { .. } => {
                write_file(&child.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write_file(&child.join("cpu.cfs_quota_us"), &quota.to_string())?;
                child.join("tasks")
            }
        };
        tids.iter().try_for_each(|tid| write_file(&threads, &tid.to_string()))
    }
}

/// Joins the calling process to a cgroup, for use between fork and exec
/// (`Command::pre_exec`): the paths are converted up front, and [`Joiner::join`] only calls
/// `open`, `write` and `close`, which are async-signal-safe (no allocation in the child of a
/// multi-threaded parent).
#[derive(Debug, Clone)]
pub struct Joiner {
    files: Vec<CString>,
}

impl Joiner {
    /// A joiner for these `cgroup.procs` files.
    pub fn new(files: &[PathBuf]) -> Result<Self, CgroupError> {
        let files = files
            .iter()
            .map(|p| {
                CString::new(p.as_os_str().as_bytes())
                    .map_err(|_| CgroupError::InvalidName(p.display().to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Joiner { files })
    }

    /// Moves the calling process into every cgroup (`0` means "the writer").
    pub fn join(&self) -> io::Result<()> {
        for f in &self.files {
            // SAFETY: `f` is a valid NUL-terminated path that outlives the call; open, write and
            // close are async-signal-safe and touch no memory of ours but the two buffers.
            unsafe {
                let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(CgroupError::InvalidName(name.to_string()));
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(CgroupError::Create { path: path.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

/// The child of a sandbox's CPU controller that holds its vCPU threads.
pub const THREADS_CHILD: &str = "vcpus";

/// rmdir, retried while the kernel still counts an exiting process in the cgroup.
fn rmdir_patiently(path: &Path) -> Result<(), CgroupError> {
    let mut delays = REMOVE_DELAYS_MS.iter();
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => match delays.next() {
                Some(ms) => std::thread::sleep(Duration::from_millis(*ms)),
                None => return Err(CgroupError::Remove { path: path.to_path_buf(), source: e }),
            },
            Err(e) => return Err(CgroupError::Remove { path: path.to_path_buf(), source: e }),
        }
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path)
        .map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })
}

fn parse_error(path: &Path, content: &str) -> CgroupError {
    CgroupError::Parse { path: path.to_path_buf(), content: content.to_string() }
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read_string(path)?;
    text.trim().parse().map_err(|_| parse_error(path, &text))
}

/// A number, or `max` for unlimited.
fn parse_max(s: &str) -> Option<Option<u64>> {
    match s.trim() {
        "max" => Some(None),
        n => n.parse().ok().map(Some),
    }
}

fn read_max(path: &Path) -> Result<Option<u64>, CgroupError> {
    let text = read_string(path)?;
    parse_max(&text).ok_or_else(|| parse_error(path, &text))
}

/// The value of `key` in a flat-keyed file (`key value` per line).
fn read_keyed(path: &Path, key: &str) -> Result<u64, CgroupError> {
    let text = read_string(path)?;
    text.lines()
        .find_map(|l| l.split_once(' ').filter(|(k, _)| *k == key).map(|(_, v)| v.trim()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| parse_error(path, &text))
}

/// mountinfo escapes space, tab, newline and backslash in paths as `\ooo` octal.
fn unescape_mount_point(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { memory_bytes: 256 << 20, cpu_millis: 500, pids: 64 };

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    fn fake_v2() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        t
    }

    fn fake_v1(with_cpuacct: bool) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "pids"] {
            std::fs::create_dir(t.path().join(c)).unwrap();
        }
        if with_cpuacct {
            std::fs::create_dir(t.path().join("cpuacct")).unwrap();
        }
        t
    }

    #[test]
    fn v2_enables_the_controllers_and_writes_every_limit() {
        let t = fake_v2();
        let root = t.path();
        let h = Hierarchy::at(root).unwrap();
        assert_eq!(h.name(), "v2");
        // The leaf exists beforehand with swap accounting (as the kernel would create it), so
        // its memory.swap.max is written; a restarted daemon's directory is reused.
        std::fs::create_dir_all(root.join("bhatti/sb1")).unwrap();
        std::fs::write(root.join("bhatti/sb1/memory.swap.max"), "max\n").unwrap();
        let cg = SandboxCgroup::create(&h, "bhatti", "sb1", &LIMITS).unwrap();
        assert_eq!(read(&root.join("cgroup.subtree_control")), "+memory +cpu +pids");
        assert_eq!(read(&root.join("bhatti/cgroup.subtree_control")), "+memory +cpu +pids");
        let leaf = root.join("bhatti/sb1");
        assert_eq!(read(&leaf.join("memory.max")), (256u64 << 20).to_string());
        assert_eq!(read(&leaf.join("memory.swap.max")), "0");
        assert_eq!(read(&leaf.join("cpu.max")), "50000 100000");
        assert_eq!(read(&leaf.join("pids.max")), "64");
        assert_eq!(cg.procs_files(), vec![leaf.join("cgroup.procs")]);

        // A fresh leaf without swap accounting gets no memory.swap.max.
        SandboxCgroup::create(&h, "bhatti", "sb2", &LIMITS).unwrap();
        assert!(root.join("bhatti/sb1/memory.swap.max").exists());
        assert!(!root.join("bhatti/sb2/memory.swap.max").exists());
    }

    #[test]
    fn vcpu_threads_get_a_bound_of_their_own_in_both_hierarchies() {
        let t = fake_v2();
        let root = t.path();
        let h = Hierarchy::at(root).unwrap();
        let cg = SandboxCgroup::create(&h, "bhatti", "sb1", &LIMITS).unwrap();
        cg.bound_threads(&[41, 42], 250).unwrap();
        let child = root.join("bhatti/sb1").join(THREADS_CHILD);
        assert_eq!(read(&child.join("cgroup.type")), "threaded");
        assert_eq!(read(&root.join("bhatti/sb1/cgroup.subtree_control")), "+cpu");
        assert_eq!(read(&child.join("cpu.max")), "25000 100000");
        // The fake file keeps the last write; the kernel's takes each thread in turn.
        assert_eq!(read(&child.join("cgroup.threads")), "42");

        let t = fake_v1(true);
        let root = t.path();
        let h = Hierarchy::at(root).unwrap();
        let cg = SandboxCgroup::create(&h, "bhatti", "sb1", &LIMITS).unwrap();
        cg.bound_threads(&[7], 1000).unwrap();
        let child = root.join("cpu/bhatti/sb1").join(THREADS_CHILD);
        assert_eq!(read(&child.join("cpu.cfs_quota_us")), "100000");
        assert_eq!(read(&child.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&child.join("tasks")), "7");
        assert!(!root.join("memory/bhatti/sb1").join(THREADS_CHILD).exists());
        assert!(cg.bound_threads(&[7], 5).is_err(), "below the kernel's smallest quota");
    }

    #[test]
    fn v1_writes_each_controller_and_rewrites_a_reused_cgroup() {
        let t = fake_v1(true);
        let root = t.path();
        let h = Hierarchy::at(root).unwrap();
        assert_eq!(h.name(), "v1");
        let cg = SandboxCgroup::create(&h, "bhatti", "sb1", &LIMITS).unwrap();
        assert_eq!(read(&root.join("memory/bhatti/sb1/memory.limit_in_bytes")), "268435456");
        assert_eq!(read(&root.join("cpu/bhatti/sb1/cpu.cfs_period_us")), "100000");
        assert_eq!(read(&root.join("cpu/bhatti/sb1/cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&root.join("pids/bhatti/sb1/pids.max")), "64");
        assert!(root.join("cpuacct/bhatti/sb1").is_dir());
        let procs: Vec<PathBuf> = ["memory", "cpu", "cpuacct", "pids"]
            .iter()
            .map(|c| root.join(c).join("bhatti/sb1/cgroup.procs"))
            .collect();
        assert_eq!(cg.procs_files(), procs);

        SandboxCgroup::create(&h, "bhatti", "sb2", &LIMITS).unwrap();
        assert_eq!(h.children("bhatti"), ["sb1", "sb2"], "one name per cgroup, any controller");
        assert!(h.children("nobody").is_empty());

        let again = Limits { memory_bytes: 1 << 30, cpu_millis: 2000, pids: 128 };
        SandboxCgroup::create(&h, "bhatti", "sb1", &again).unwrap();
        assert_eq!(read(&root.join("memory/bhatti/sb1/memory.limit_in_bytes")), "1073741824");
        assert_eq!(read(&root.join("cpu/bhatti/sb1/cpu.cfs_quota_us")), "200000");
        assert_eq!(read(&root.join("pids/bhatti/sb1/pids.max")), "128");
    }

    #[test]
    fn v2_read_parses_the_kernel_files() {
        let t = fake_v2();
        let h = Hierarchy::at(t.path()).unwrap();
        let cg = SandboxCgroup::create(&h, "p", "s", &LIMITS).unwrap();
        let leaf = t.path().join("p/s");
        for (f, v) in [
            ("memory.current", "1234\n"),
            ("memory.peak", "5678\n"),
            ("cpu.stat", "usage_usec 42\nuser_usec 40\nsystem_usec 2\n"),
            ("pids.current", "3\n"),
            ("memory.events", "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n"),
        ] {
            std::fs::write(leaf.join(f), v).unwrap();
        }
        let u = cg.read().unwrap();
        assert_eq!(
            u,
            Usage {
                memory_max: Some(256 << 20),
                cpu_quota_us: Some(50_000),
                cpu_period_us: 100_000,
                pids_max: Some(64),
                memory_current: 1234,
                memory_peak: Some(5678),
                cpu_usage_ns: Some(42_000),
                pids_current: 3,
                oom_kills: 2,
            }
        );
        // Unlimited values and a kernel without memory.peak.
        std::fs::write(leaf.join("cpu.max"), "max 100000\n").unwrap();
        std::fs::write(leaf.join("pids.max"), "max\n").unwrap();
        std::fs::remove_file(leaf.join("memory.peak")).unwrap();
        let u = cg.read().unwrap();
        assert_eq!((u.cpu_quota_us, u.pids_max, u.memory_peak), (None, None, None));
        // Garbage is a parse error naming the file.
        std::fs::write(leaf.join("cpu.max"), "lots\n").unwrap();
        match cg.read() {
            Err(CgroupError::Parse { path, .. }) => assert_eq!(path, leaf.join("cpu.max")),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn v1_read_parses_the_kernel_files() {
        let t = fake_v1(true);
        let root = t.path();
        let h = Hierarchy::at(root).unwrap();
        let cg = SandboxCgroup::create(&h, "p", "s", &LIMITS).unwrap();
        for (f, v) in [
            ("memory/p/s/memory.usage_in_bytes", "100\n"),
            ("memory/p/s/memory.max_usage_in_bytes", "200\n"),
            ("memory/p/s/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            ("cpuacct/p/s/cpuacct.usage", "999\n"),
            ("pids/p/s/pids.current", "2\n"),
        ] {
            std::fs::write(root.join(f), v).unwrap();
        }
        let u = cg.read().unwrap();
        assert_eq!(
            u,
            Usage {
                memory_max: Some(256 << 20),
                cpu_quota_us: Some(50_000),
                cpu_period_us: 100_000,
                pids_max: Some(64),
                memory_current: 100,
                memory_peak: Some(200),
                cpu_usage_ns: Some(999),
                pids_current: 2,
                oom_kills: 3,
            }
        );
        std::fs::write(root.join("cpu/p/s/cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(root.join("memory/p/s/memory.limit_in_bytes"), "9223372036854771712\n")
            .unwrap();
        let u = cg.read().unwrap();
        assert_eq!((u.cpu_quota_us, u.memory_max), (None, None));
    }

    #[test]
    fn v1_without_cpuacct_has_no_cpu_usage() {
        let t = fake_v1(false);
        let h = Hierarchy::at(t.path()).unwrap();
        assert!(h.describe().contains("no cpuacct"), "{}", h.describe());
        let cg = SandboxCgroup::create(&h, "p", "s", &LIMITS).unwrap();
        assert_eq!(cg.procs_files().len(), 3);
        for (f, v) in [
            ("memory/p/s/memory.usage_in_bytes", "1\n"),
            ("memory/p/s/memory.max_usage_in_bytes", "1\n"),
            ("memory/p/s/memory.oom_control", "oom_kill 0\n"),
            ("pids/p/s/pids.current", "0\n"),
        ] {
            std::fs::write(t.path().join(f), v).unwrap();
        }
        assert_eq!(cg.read().unwrap().cpu_usage_ns, None);
    }

    #[test]
    fn mountinfo_finds_separate_and_comounted_controllers() {
        // This host: every controller on its own mount, plus a hybrid cgroup2 that is ignored.
        let separate = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let h = Hierarchy::from_mountinfo(separate).unwrap();
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            h,
            Hierarchy::V1 {
                memory: p("/sys/fs/cgroup/memory"),
                cpu: p("/sys/fs/cgroup/cpu"),
                cpuacct: Some(p("/sys/fs/cgroup/cpuacct")),
                pids: p("/sys/fs/cgroup/pids"),
            }
        );
        assert_eq!(h.dirs().len(), 4);
        assert!(h.describe().starts_with("cgroup v1 (memory at /sys/fs/cgroup/memory"));

        // systemd's layout: cpu and cpuacct together, optional fields before the "-", and an
        // escaped space in a mount point.
        let comounted = "\
25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct
26 24 0:23 / /mnt/my\\040cg/memory rw shared:10 - cgroup cgroup rw,memory
27 24 0:24 / /sys/fs/cgroup/pids rw shared:11 - cgroup cgroup rw,pids
";
        let h = Hierarchy::from_mountinfo(comounted).unwrap();
        assert_eq!(
            h,
            Hierarchy::V1 {
                memory: p("/mnt/my cg/memory"),
                cpu: p("/sys/fs/cgroup/cpu,cpuacct"),
                cpuacct: Some(p("/sys/fs/cgroup/cpu,cpuacct")),
                pids: p("/sys/fs/cgroup/pids"),
            }
        );
        // One directory (and one cgroup.procs) for the two controllers mounted together.
        assert_eq!(h.dirs().len(), 3);

        // Without pids there is nothing usable, and the error says what is missing.
        let no_pids: String = separate.lines().filter(|l| !l.contains("pids")).collect();
        match Hierarchy::from_mountinfo(&no_pids) {
            Err(CgroupError::Unavailable(m)) => assert!(m.contains("pids"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn v2_without_a_needed_controller_is_unavailable() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.controllers"), "cpu io memory\n").unwrap();
        match Hierarchy::at(t.path()) {
            Err(CgroupError::Unavailable(m)) => assert!(m.contains("pids"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        std::fs::write(t.path().join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        assert!(Hierarchy::at(t.path()).is_ok());
    }

    #[test]
    fn names_and_limits_are_checked_before_touching_anything() {
        let t = fake_v2();
        let h = Hierarchy::at(t.path()).unwrap();
        for bad in ["", ".", "..", "a/b", "x\0"] {
            assert!(
                matches!(
                    SandboxCgroup::create(&h, "bhatti", bad, &LIMITS),
                    Err(CgroupError::InvalidName(_))
                ),
                "{bad:?}"
            );
            assert!(matches!(
                SandboxCgroup::create(&h, bad, "sb", &LIMITS),
                Err(CgroupError::InvalidName(_))
            ));
        }
        for bad in [
            Limits { memory_bytes: 0, ..LIMITS },
            Limits { cpu_millis: 9, ..LIMITS },
            Limits { pids: 0, ..LIMITS },
        ] {
            assert!(matches!(
                SandboxCgroup::create(&h, "bhatti", "sb", &bad),
                Err(CgroupError::InvalidLimits(_))
            ));
        }
        assert!(!t.path().join("bhatti").exists());
        // The smallest valid CPU share is accepted: 10 millis is 1 ms per period.
        SandboxCgroup::create(&h, "bhatti", "sb", &Limits { cpu_millis: 10, ..LIMITS }).unwrap();
        assert_eq!(read(&t.path().join("bhatti/sb/cpu.max")), "1000 100000");
    }

    #[test]
    fn remove_takes_empty_and_missing_directories() {
        let t = fake_v1(true);
        let h = Hierarchy::at(t.path()).unwrap();
        // Missing: nothing to do.
        SandboxCgroup::remove_by_name(&h, "p", "gone").unwrap();
        // Empty directories (a real cgroup's control files are not files rmdir sees) go.
        for c in ["memory", "cpu", "cpuacct", "pids"] {
            std::fs::create_dir_all(t.path().join(c).join("p/s")).unwrap();
        }
        SandboxCgroup::remove_by_name(&h, "p", "s").unwrap();
        for c in ["memory", "cpu", "cpuacct", "pids"] {
            assert!(!t.path().join(c).join("p/s").exists());
            assert!(t.path().join(c).join("p").exists());
        }
        h.remove_parent("p").unwrap();
        assert!(!t.path().join("memory/p").exists());
        // A directory that is not empty is an error naming it (not retried: not EBUSY).
        std::fs::create_dir_all(t.path().join("memory/p/s/x")).unwrap();
        match SandboxCgroup::remove_by_name(&h, "p", "s") {
            Err(CgroupError::Remove { path, .. }) => assert_eq!(path, t.path().join("memory/p/s")),
            other => panic!("expected a remove error, got {other:?}"),
        }
    }

    #[test]
    fn mount_points_unescape_octal() {
        assert_eq!(unescape_mount_point("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mount_point("/plain\\9"), "/plain\\9");
    }
}
