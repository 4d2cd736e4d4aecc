//! Growing the root filesystem to fill its disk at boot.
//!
//! The host may have grown the sandbox's disk overlay (v1's `disk_size_mb`) beyond the image's
//! filesystem. As PID 1, lohar grows the mounted ext4 online with `EXT4_IOC_RESIZE_FS`, the
//! ioctl `resize2fs` uses for a mounted filesystem, so the image needs no external tool.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

nix::ioctl_read!(blk_get_size64, 0x12, 114, u64);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// A completed growth, in filesystem blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// Blocks before.
    pub from: u64,
    /// Blocks after.
    pub to: u64,
}

/// Why the root filesystem could not be checked or grown.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    /// Neither `root=` nor the mount table names a device node.
    #[error("cannot tell the root device from root= or /proc/self/mountinfo")]
    NoDevice,
    /// The device or the mount point cannot be opened or inspected.
    #[error("cannot open {path}")]
    Open {
        /// What.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The device found is not the one the filesystem lives on; resizing by it would be wrong.
    #[error("{device} is not the device {mount_point} is mounted from")]
    WrongDevice {
        /// The device.
        device: PathBuf,
        /// The mount point.
        mount_point: PathBuf,
    },
    /// A system call failed.
    #[error("{call} failed")]
    Sys {
        /// Which.
        call: &'static str,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The superblock is not an ext4 one.
    #[error("no ext4 superblock on {0}")]
    NotExt4(PathBuf),
    /// statvfs and the superblock disagree about the block size.
    #[error("block size {statvfs} (statvfs) differs from {superblock} (superblock)")]
    BlockSize {
        /// From statvfs.
        statvfs: u64,
        /// From the superblock.
        superblock: u64,
    },
}

/// The root device: `root=/dev/...` on the kernel command line, else the source of the `/`
/// mount in `/proc/self/mountinfo` (the kernel shows its own root mount as `/dev/root`, which
/// is no device node, hence the command line first).
pub fn root_device(cmdline: &str, mountinfo: &str) -> Option<PathBuf> {
    let from_cmdline = cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix("root="))
        .next_back()
        .filter(|dev| dev.starts_with("/dev/"));
    if let Some(dev) = from_cmdline {
        return Some(PathBuf::from(dev));
    }
    // `id parent maj:min root mount-point options [optional...] - fstype source super-options`;
    // the last `/` mount is the one on top.
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            (mount.split(' ').nth(4)? == "/").then_some(())?;
            fs.split(' ').nth(1).map(str::to_owned)
        })
        .next_back()
        .filter(|source| source.starts_with("/dev/") && source != "/dev/root")
        .map(PathBuf::from)
}

/// What the ext4 superblock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// Bytes per block.
    pub block_size: u64,
}

/// Byte offset of the superblock on the device.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes of the superblock read (all the fields used lie in the first 1 KiB).
const SUPERBLOCK_LEN: usize = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
const INCOMPAT_64BIT: u32 = 0x80;

/// Parses the fields used here from an ext2/3/4 superblock (the 1 KiB at device offset 1024).
/// The block count comes from here, not from statfs: statfs's `f_blocks` leaves out the
/// filesystem's own metadata, so it is always smaller than the device even when nothing is to
/// be grown.
pub fn parse_superblock(sb: &[u8]) -> Option<Superblock> {
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(sb.get(off..off + 4)?.try_into().ok()?))
    };
    let magic = u16::from_le_bytes(sb.get(0x38..0x3A)?.try_into().ok()?);
    if magic != EXT4_MAGIC {
        return None;
    }
    let log_block_size = u32_at(0x18)?;
    if log_block_size > 6 {
        return None;
    }
    let lo = u64::from(u32_at(0x04)?);
    let hi = if u32_at(0x60)? & INCOMPAT_64BIT != 0 { u64::from(u32_at(0x150)?) } else { 0 };
    Some(Superblock { blocks: hi << 32 | lo, block_size: 1024 << log_block_size })
}

/// The block count to grow to: the whole blocks the device holds, when that is more than the
/// filesystem has (never a shrink, never a no-op resize).
pub fn target_blocks(device_bytes: u64, block_size: u64, fs_blocks: u64) -> Option<u64> {
    if block_size == 0 {
        return None;
    }
    let device_blocks = device_bytes / block_size;
    (device_blocks > fs_blocks).then_some(device_blocks)
}

/// Grows the ext4 filesystem mounted at `mount_point` to fill `device`, online. `Ok(None)`:
/// it already fills the device.
pub fn grow(mount_point: &Path, device: &Path) -> Result<Option<Growth>, GrowError> {
    let open = |path: &Path| {
        File::open(path).map_err(|source| GrowError::Open { path: path.to_owned(), source })
    };
    let dev = open(device)?;
    let dev_meta =
        dev.metadata().map_err(|source| GrowError::Open { path: device.to_owned(), source })?;
    let mount_meta = std::fs::metadata(mount_point)
        .map_err(|source| GrowError::Open { path: mount_point.to_owned(), source })?;
    if !dev_meta.file_type().is_block_device() || dev_meta.rdev() != mount_meta.dev() {
        return Err(GrowError::WrongDevice {
            device: device.to_owned(),
            mount_point: mount_point.to_owned(),
        });
    }
    let mut device_bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into the variable we own for the call.
    unsafe { blk_get_size64(std::os::fd::AsRawFd::as_raw_fd(&dev), &mut device_bytes) }
        .map_err(|source| GrowError::Sys { call: "BLKGETSIZE64", source })?;
    let mut raw = [0u8; SUPERBLOCK_LEN];
    dev.read_exact_at(&mut raw, SUPERBLOCK_OFFSET)
        .map_err(|source| GrowError::Open { path: device.to_owned(), source })?;
    let sb = parse_superblock(&raw).ok_or_else(|| GrowError::NotExt4(device.to_owned()))?;
    let vfs = nix::sys::statvfs::statvfs(mount_point)
        .map_err(|source| GrowError::Sys { call: "statvfs", source })?;
    let block_size = vfs.block_size() as u64;
    if block_size != sb.block_size {
        return Err(GrowError::BlockSize { statvfs: block_size, superblock: sb.block_size });
    }
    let Some(to) = target_blocks(device_bytes, block_size, sb.blocks) else {
        return Ok(None);
    };
    let dir = open(mount_point)?;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) from the pointer.
    unsafe { ext4_resize_fs(std::os::fd::AsRawFd::as_raw_fd(&dir), &to) }
        .map_err(|source| GrowError::Sys { call: "EXT4_IOC_RESIZE_FS", source })?;
    Ok(Some(Growth { from: sb.blocks, to }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_device_prefers_the_command_line() {
        let mountinfo = "22 1 254:0 / / rw,relatime - ext4 /dev/vdz rw\n";
        let cmdline = "console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/usr/local/bin/lohar";
        assert_eq!(root_device(cmdline, mountinfo), Some(PathBuf::from("/dev/vda")));
        assert_eq!(root_device("quiet", mountinfo), Some(PathBuf::from("/dev/vdz")));
        // UUIDs and the kernel's /dev/root name no device node we can open.
        assert_eq!(root_device("root=PARTUUID=1234", ""), None);
        let kernel_root = "22 1 254:0 / / rw - ext4 /dev/root rw\n";
        assert_eq!(root_device("", kernel_root), None);
        // The mount on top wins; other mount points do not count.
        let stacked = "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                       30 22 0:5 / /dev rw shared:2 - devtmpfs devtmpfs rw\n\
                       31 22 254:16 / / rw - ext4 /dev/vdb rw\n";
        assert_eq!(root_device("", stacked), Some(PathBuf::from("/dev/vdb")));
    }

    #[test]
    fn target_is_the_device_in_whole_blocks_and_only_a_growth() {
        assert_eq!(target_blocks(2 << 30, 4096, 262_144), Some(524_288));
        assert_eq!(target_blocks((2 << 30) + 4095, 4096, 262_144), Some(524_288));
        assert_eq!(target_blocks(1 << 30, 4096, 262_144), None, "equal: nothing to do");
        assert_eq!(target_blocks(1 << 29, 4096, 262_144), None, "never a shrink");
        assert_eq!(target_blocks((1 << 30) + 4095, 4096, 262_144), None, "a partial block");
        assert_eq!(target_blocks(1 << 30, 0, 1), None);
    }

    fn superblock(blocks: u64, log_block_size: u32, bits64: bool) -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_LEN];
        sb[0x04..0x08].copy_from_slice(&(blocks as u32).to_le_bytes());
        sb[0x18..0x1C].copy_from_slice(&log_block_size.to_le_bytes());
        sb[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        if bits64 {
            sb[0x60..0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
            sb[0x150..0x154].copy_from_slice(&((blocks >> 32) as u32).to_le_bytes());
        }
        sb
    }

    #[test]
    fn superblock_fields() {
        let sb = parse_superblock(&superblock(262_144, 2, false)).unwrap();
        assert_eq!(sb, Superblock { blocks: 262_144, block_size: 4096 });
        let big = parse_superblock(&superblock(5 << 32 | 7, 2, true)).unwrap();
        assert_eq!(big.blocks, 5 << 32 | 7);
        let mut not_ext4 = superblock(1, 0, false);
        not_ext4[0x38] = 0;
        assert_eq!(parse_superblock(&not_ext4), None);
        assert_eq!(parse_superblock(&[0u8; 16]), None);
    }

    /// The parser against a filesystem made by the real mkfs.ext4 (e2fsprogs, which the image
    /// builds need anyway).
    #[test]
    fn superblock_of_a_real_ext4_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        File::create(&image).unwrap().set_len(64 << 20).unwrap();
        let status = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&image)
            .status()
            .expect("mkfs.ext4 (e2fsprogs) is needed for this test");
        assert!(status.success());
        let mut raw = [0u8; SUPERBLOCK_LEN];
        File::open(&image).unwrap().read_exact_at(&mut raw, SUPERBLOCK_OFFSET).unwrap();
        assert_eq!(
            parse_superblock(&raw).unwrap(),
            Superblock { blocks: (64 << 20) / 4096, block_size: 4096 }
        );
    }

    /// A loop-mounted ext4 image, detached and unmounted when dropped.
    struct LoopMount {
        dir: tempfile::TempDir,
        image: PathBuf,
        device: PathBuf,
    }

    impl LoopMount {
        fn new(bytes: u64) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("fs.img");
            File::create(&image).unwrap().set_len(bytes).unwrap();
            run("mkfs.ext4", &["-q", "-F", "-b", "4096", image.to_str().unwrap()]);
            let out = std::process::Command::new("losetup")
                .args(["-f", "--show", image.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
            let device = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
            let mount = dir.path().join("mnt");
            std::fs::create_dir(&mount).unwrap();
            let m = LoopMount { dir, image, device };
            run("mount", &[m.device.to_str().unwrap(), mount.to_str().unwrap()]);
            m
        }

        fn mount_point(&self) -> PathBuf {
            self.dir.path().join("mnt")
        }
    }

    impl Drop for LoopMount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.mount_point()).status();
            let _ = std::process::Command::new("losetup").arg("-d").arg(&self.device).status();
        }
    }

    fn run(cmd: &str, args: &[&str]) {
        let status = std::process::Command::new(cmd).args(args).status().unwrap();
        assert!(status.success(), "{cmd} {args:?}");
    }

    /// CAP_SYS_RESOURCE, which the resize ioctl needs: PID 1 in the VM has it, but a container
    /// running the tests may not (root here lacks it; `resize2fs` fails the same way).
    fn may_resize() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
        // capability(7): CAP_SYS_RESOURCE is bit 24.
        u64::from_str_radix(caps, 16).unwrap() & (1 << 24) != 0
    }

    /// The whole path on a real mounted ext4 (needs root and a loop device, as the lohar suite
    /// needs root anyway): nothing to do, then the disk grows and so does the filesystem.
    /// Without CAP_SYS_RESOURCE everything up to the ioctl still runs, and the ioctl's refusal
    /// must come back as the typed error.
    #[test]
    fn grows_a_mounted_ext4_to_its_grown_device() {
        let m = LoopMount::new(32 << 20);
        assert_eq!(grow(&m.mount_point(), &m.device).unwrap(), None, "already fills the device");
        // Another device than the one mounted there is refused, not resized by.
        let other = LoopMount::new(32 << 20);
        assert!(matches!(
            grow(&m.mount_point(), &other.device),
            Err(GrowError::WrongDevice { .. })
        ));
        let before = nix::sys::statvfs::statvfs(&m.mount_point()).unwrap().blocks();
        File::options().write(true).open(&m.image).unwrap().set_len(64 << 20).unwrap();
        run("losetup", &["-c", m.device.to_str().unwrap()]);
        if !may_resize() {
            let err = grow(&m.mount_point(), &m.device).unwrap_err();
            assert!(
                matches!(err, GrowError::Sys { call: "EXT4_IOC_RESIZE_FS", source: Errno::EPERM }),
                "{err:?}"
            );
            return;
        }
        let growth = grow(&m.mount_point(), &m.device).unwrap().unwrap();
        assert_eq!(growth, Growth { from: 8192, to: 16384 });
        let after = nix::sys::statvfs::statvfs(&m.mount_point()).unwrap().blocks();
        assert!(after > before + 7000, "statfs blocks {before} -> {after}");
        assert_eq!(grow(&m.mount_point(), &m.device).unwrap(), None, "idempotent");
    }
}
