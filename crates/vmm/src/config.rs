//! A typed description of one microVM.

use std::path::PathBuf;

use crate::accel::Accel;

/// Guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// Size in MiB.
    pub size_mib: u32,
    /// Back RAM with this file (`memory-backend-file`, `share=on`), so a snapshot can leave RAM
    /// in place and migrate device state only. `None` for anonymous memory.
    pub file: Option<PathBuf>,
    /// Map the file copy-on-write (`share=off`): restore the same RAM file many times without
    /// changing it.
    pub private: bool,
}

/// Image format of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw image (ext4 built by `mkfs.ext4 -d`).
    Raw,
    /// qcow2 overlay.
    Qcow2,
}

impl DiskFormat {
    fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// How QEMU caches a disk on the host (`-drive cache=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskCache {
    /// Host page cache, guest flushes honoured (a guest fsync reaches the disk).
    #[default]
    Writeback,
    /// O_DIRECT, guest flushes honoured: no double caching, every write waits for the device.
    None,
    /// Guest flushes ignored: fast, and a host crash loses what guests thought durable.
    Unsafe,
}

impl DiskCache {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DiskCache::Writeback => "writeback",
            DiskCache::None => "none",
            DiskCache::Unsafe => "unsafe",
        }
    }
}

/// A virtio-blk disk; the guest sees them as /dev/vda, /dev/vdb, ... in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Image path.
    pub path: PathBuf,
    /// Format.
    pub format: DiskFormat,
    /// Attach read-only.
    pub read_only: bool,
}

/// A virtio-net device on a TAP file descriptor the caller opened (in whatever network namespace
/// it likes) and that QEMU inherits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// The descriptor number QEMU sees.
    pub tap_fd: i32,
    /// Guest MAC, `52:54:00:xx:xx:xx`.
    pub mac: String,
}

/// A virtio-balloon device (`virtio-balloon-device` on the microvm's virtio-mmio bus). We never
/// set an inflation target (the balloon stays at 0): it is there for free page reporting, where
/// the guest tells QEMU which of its pages are free and QEMU gives them back to the host (a hole
/// punched in a shared RAM file, `MADV_DONTNEED` for anonymous memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balloon {
    /// `free-page-reporting=on`: the guest reports free 4 MiB blocks about 2 s after they are
    /// freed. A restore must offer it whenever the saved guest negotiated it (the load fails
    /// with "Features ... unsupported" otherwise); offering it to a guest that did not is fine.
    pub free_page_reporting: bool,
}

/// Everything needed to start one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The `qemu-system-x86_64` binary.
    pub qemu: PathBuf,
    /// Uncompressed kernel (vmlinux with a PVH note) or bzImage.
    pub kernel: PathBuf,
    /// Kernel command line. With `acpi=off` QEMU appends the `virtio_mmio.device=` entries.
    pub cmdline: String,
    /// Guest RAM.
    pub memory: Memory,
    /// vCPUs.
    pub vcpus: u8,
    /// Disks in order.
    pub disks: Vec<Disk>,
    /// Host caching of every disk.
    pub disk_cache: DiskCache,
    /// Network device, if any.
    pub net: Option<NetDevice>,
    /// Balloon device, if any (after every other device, so adding it moves no disk's or
    /// network card's virtio-mmio slot: a state saved without it still loads).
    pub balloon: Option<Balloon>,
    /// A virtio-rng device fed from the host's `/dev/urandom` (`rng-random` backend,
    /// `virtio-rng-device`): the guest kernel's hwrng mixes it into its pool, so a guest, and
    /// every clone of a snapshot, gets fresh host entropy. The last device, after the balloon,
    /// so adding it moves no other device's virtio-mmio slot: a state saved without it still
    /// loads into a QEMU that has it (the device then gets no state and the guest, which never
    /// probed it, does not see it).
    pub rng: bool,
    /// File receiving the serial console.
    pub serial_log: PathBuf,
    /// QMP Unix socket QEMU listens on.
    pub qmp_socket: PathBuf,
    /// Accelerator request.
    pub accel: Accel,
    /// TCG translation-block cache in MiB. QEMU's default (1 GiB) is far larger than a small
    /// guest needs; 8 MiB thrashes (every guest exec retranslated: 217 ms vs 14 ms at 64 MiB,
    /// see images/README.md).
    pub tcg_tb_size_mib: u32,
    /// Start paused (`-S`).
    pub start_paused: bool,
    /// Wait for an incoming migration (`-incoming defer`); load it with
    /// [`crate::QemuProcess::load_state`]. The VM stays paused until `cont`.
    pub incoming: bool,
    /// Confine the process (see [`crate::jail`]); `None` runs QEMU with the caller's privileges
    /// (benchmark baselines only). A confined QEMU also gets QEMU's strictest seccomp policy.
    pub jail: Option<crate::jail::Jail>,
}

impl VmConfig {
    /// A config with the defaults we use: 1 vCPU, 256 MiB anonymous RAM, TCG cache 8 MiB.
    pub fn new(kernel: PathBuf, cmdline: String, serial_log: PathBuf, qmp_socket: PathBuf) -> Self {
        Self {
            disk_cache: DiskCache::default(),
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel,
            cmdline,
            memory: Memory { size_mib: 256, file: None, private: false },
            vcpus: 1,
            disks: Vec::new(),
            net: None,
            balloon: None,
            rng: false,
            serial_log,
            qmp_socket,
            accel: Accel::Auto,
            tcg_tb_size_mib: 64,
            start_paused: false,
            incoming: false,
            jail: None,
        }
    }

    /// Whether the process is moved into cgroups after the spawn (it then starts paused).
    pub(crate) fn joins_cgroups_after_spawn(&self) -> bool {
        self.jail.as_ref().is_some_and(|j| !j.cgroup_procs.is_empty())
    }

    pub(crate) fn disk_format(disk: &Disk) -> &'static str {
        disk.format.as_str()
    }
}
