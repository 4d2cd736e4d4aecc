//! "What changed?": a sandbox's root filesystem compared with what it was made from, or with a
//! checkpoint of the same owner, on the host and without mounting anything.
//!
//! - `disk`: where bytes come from: a raw base image (`pread`), an NBD export (QEMU's own of
//!   a running sandbox's disk; a `qemu-nbd` we start for a qcow2 file nothing runs), an LRU of
//!   128 KiB chunks in front.
//! - `nbd`: the NBD client (fixed newstyle, `NBD_OPT_GO`, `NBD_CMD_READ`, `NBD_CMD_DISC`).
//! - `ext4`: an ext4 filesystem on a disk as a tree (`ext4-view`, its journal replayed).
//! - `tree`: the comparison (pure decisions with table tests, run over any `Tree`).
//! - `patch`: unified diffs of changed text files, bounded.
//!
//! The registry (`registry/diff.rs`) decides which disks to read: for a hot or warm sandbox the
//! guest flushes first (`sync`, through a lease) and the live disk is read through QEMU's NBD
//! export of the very node the guest writes (consistent with what the guest sees, while it
//! runs on); a cold one's overlay is read from its file, without waking it.

pub mod disk;
pub mod ext4;
pub mod nbd;
pub mod patch;
pub mod tree;

use std::time::{Duration, Instant};

use disk::{Disk, SharedDisk};
use ext4::Ext4Tree;
use tree::{Bounds, Tree, TreeError};

/// Entries one answer lists (added + changed + deleted); past it the answer is truncated.
pub const MAX_ENTRIES: usize = 10_000;
/// Entries one directory may have for the comparison.
const MAX_DIR_ENTRIES: usize = 1_000_000;
/// Bytes of file content compared to tell a write from a touch.
const MAX_COMPARE_BYTES: u64 = 256 << 20;
/// How long one comparison may take.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// What a sandbox is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffBase {
    /// What it was made from: the disk its overlay is backed by (the base image; a checkpoint's
    /// disk for a sandbox made from one whose overlay is chained to it).
    Creation,
    /// A checkpoint of the same owner (`name` is the engine's name of it).
    Checkpoint {
        /// Whose.
        owner: String,
        /// The checkpoint's engine name.
        name: String,
    },
}

/// An entry's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device node, fifo or socket.
    Other,
}

impl EntryKind {
    /// The API's word.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Other => "other",
        }
    }
}

/// One path that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffEntry {
    /// Absolute path in the guest.
    pub path: String,
    /// Its type (the new one; for a deleted entry the old one).
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o7777`).
    pub mode: u16,
    /// For a changed entry: the size before.
    pub old_size: Option<u64>,
    /// For a changed entry: the mode before.
    pub old_mode: Option<u16>,
}

/// What changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffResult {
    /// Paths the base does not have, sorted.
    pub added: Vec<DiffEntry>,
    /// Paths whose content, type-specific target, mode or owner differ, sorted.
    pub changed: Vec<DiffEntry>,
    /// Paths only the base has, sorted.
    pub deleted: Vec<DiffEntry>,
    /// More than [`MAX_ENTRIES`] differ: the lists stop there.
    pub truncated: bool,
    /// Unified diffs of the text files, when asked for (bounded, see `patch`).
    pub patch: Option<String>,
    /// What it cost.
    pub stats: DiffStats,
}

/// What one comparison cost (for logs and measurements).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries looked at in both trees.
    pub visited: u64,
    /// File bytes compared (each side).
    pub compared_bytes: u64,
    /// NBD reads (both sides).
    pub round_trips: u64,
    /// The flush in the guest (zero for a cold sandbox).
    pub flush: Duration,
    /// Reading and comparing.
    pub compare: Duration,
}

/// The NBD export name of a running sandbox's root disk.
pub const EXPORT: &str = "root";

/// Why a diff failed below the registry.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The sandbox's overlay has no backing file to compare with.
    #[error("its disk has no base image")]
    NoBase,
    /// A disk could not be opened or read.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// A filesystem could not be read.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

impl DiffError {
    /// What a client may read: no host paths (those stay in the cause chain, for the log).
    pub fn summary(&self) -> String {
        match self {
            DiffError::NoBase | DiffError::Tree(_) => self.to_string(),
            DiffError::Disk(disk::DiskError::Nbd(e)) => format!("reading it over NBD: {e}"),
            DiffError::Disk(disk::DiskError::File { .. }) => "a disk file could not be read".into(),
            DiffError::Disk(disk::DiskError::QemuNbd { .. }) => {
                "qemu-nbd could not serve it".into()
            }
            DiffError::Disk(e @ disk::DiskError::PastEnd { .. }) => e.to_string(),
        }
    }
}

/// Compares the filesystems on `old` and `new` (blocking: run it on a blocking thread).
pub fn compare_disks(
    old: Box<dyn Disk>,
    new: Box<dyn Disk>,
    patch: bool,
) -> Result<DiffResult, DiffError> {
    let started = Instant::now();
    let old = Ext4Tree::load(SharedDisk::new(old))?;
    let new = Ext4Tree::load(SharedDisk::new(new))?;
    let bounds = Bounds {
        max_entries: MAX_ENTRIES,
        max_dir_entries: MAX_DIR_ENTRIES,
        max_compare_bytes: MAX_COMPARE_BYTES,
        deadline: started + DEADLINE,
    };
    let mut result = compare_trees(&old, &new, bounds, patch)?;
    result.stats.round_trips = old.round_trips() + new.round_trips();
    result.stats.compare = started.elapsed();
    Ok(result)
}

/// Compares two trees and sorts what it found; builds the patch when asked.
pub fn compare_trees(
    old: &dyn Tree,
    new: &dyn Tree,
    bounds: Bounds,
    patch: bool,
) -> Result<DiffResult, TreeError> {
    let mut found = tree::compare(old, new, bounds)?;
    for list in [&mut found.added, &mut found.changed, &mut found.deleted] {
        list.sort_by(|a, b| a.path.cmp(&b.path));
    }
    let patch = if patch {
        let mut files: Vec<(patch::Change, &DiffEntry)> = Vec::new();
        files.extend(found.added.iter().map(|e| (patch::Change::Added, e)));
        files.extend(found.changed.iter().map(|e| (patch::Change::Changed, e)));
        files.extend(found.deleted.iter().map(|e| (patch::Change::Deleted, e)));
        files.sort_by(|a, b| a.1.path.cmp(&b.1.path));
        // A path deleted and added (its type changed) appears twice: the file side only.
        Some(patch::build(old, new, &files)?)
    } else {
        None
    };
    Ok(DiffResult {
        stats: DiffStats {
            visited: found.visited,
            compared_bytes: found.compared_bytes,
            ..DiffStats::default()
        },
        added: found.added,
        changed: found.changed,
        deleted: found.deleted,
        truncated: found.truncated,
        patch,
    })
}

/// On real images: `mkfs.ext4 -d` of two trees, the new one served by a real `qemu-nbd` from a
/// qcow2 file, the old one read raw.
#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::disk::{Disk, QemuNbd, RawFile};
    use super::*;

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn mkfs(tree: &Path, image: &Path) {
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(tree).arg(image).arg("32M"));
    }

    fn to_qcow2(raw: &Path, qcow2: &Path) {
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(qcow2));
    }

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn chmod(root: &Path, rel: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn nbd_reads_the_same_bytes_as_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("pattern.raw");
        let data: Vec<u8> =
            (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(&raw, &data).unwrap();
        let qcow2 = dir.path().join("pattern.qcow2");
        to_qcow2(&raw, &qcow2);
        let mut nbd = QemuNbd::serve(&qcow2).unwrap();
        assert_eq!(nbd.size(), data.len() as u64);
        let table: [(&str, u64, usize); 5] = [
            ("the first byte", 0, 1),
            ("a sector", 512, 512),
            ("unaligned, across a 64 KiB cluster", 65_530, 100),
            ("one large read", 100_000, 2 << 20),
            ("the last bytes", data.len() as u64 - 7, 7),
        ];
        for (what, offset, len) in table {
            let mut buf = vec![0; len];
            nbd.read_at(offset, &mut buf).unwrap();
            assert!(buf == data[offset as usize..offset as usize + len], "{what}");
        }
        assert_eq!(nbd.round_trips(), 5);
        let mut past = [0; 8];
        assert!(
            nbd.read_at(data.len() as u64 - 4, &mut past).is_err(),
            "a read past the end fails"
        );
    }

    #[test]
    fn two_ext4_images_compare_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for root in [&a, &b] {
            write(root, "etc/hosts", b"127.0.0.1 localhost\n");
            write(root, "etc/motd", b"one\ntwo\nthree\n");
            write(root, "bin/tool", b"\x7fELF\0\0binary");
            write(root, "var/lib/old/state", b"gone soon");
            write(root, "srv/same", b"unchanged");
            std::os::unix::fs::symlink("tool", root.join("bin/link")).unwrap();
        }
        // b: one change, one chmod, one removal (a tree), one new directory and a symlink.
        write(&b, "etc/motd", b"one\nTWO\nthree\n");
        // mkfs keeps whole seconds only: the rewrite is a minute later, as a guest's would be.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(b.join("etc/motd"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        // A touch (new time, same bytes) is no change.
        std::fs::File::options()
            .write(true)
            .open(b.join("srv/same"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        chmod(&b, "bin/tool", 0o700);
        std::fs::remove_dir_all(b.join("var/lib/old")).unwrap();
        write(&b, "home/agent/notes.txt", b"hello\n");
        std::os::unix::fs::symlink("/etc/motd", b.join("home/agent/motd")).unwrap();
        let (ra, rb, qb) =
            (dir.path().join("a.ext4"), dir.path().join("b.ext4"), dir.path().join("b.qcow2"));
        mkfs(&a, &ra);
        mkfs(&b, &rb);
        to_qcow2(&rb, &qb);

        let old: Box<dyn Disk> = Box::new(RawFile::open(&ra).unwrap());
        let new: Box<dyn Disk> = Box::new(QemuNbd::serve(&qb).unwrap());
        let r = compare_disks(old, new, true).unwrap();
        let paths = |v: &[DiffEntry]| v.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        assert_eq!(
            paths(&r.added),
            ["/home", "/home/agent", "/home/agent/motd", "/home/agent/notes.txt"]
        );
        assert_eq!(paths(&r.changed), ["/bin/tool", "/etc/motd"]);
        assert_eq!(paths(&r.deleted), ["/var/lib/old", "/var/lib/old/state"]);
        let tool = &r.changed[0];
        assert_eq!((tool.mode, tool.old_mode), (0o700, Some(0o644)));
        let link = &r.added[2];
        assert_eq!((link.kind, link.size), (EntryKind::Symlink, 9));
        let patch = r.patch.unwrap();
        assert!(
            patch.contains(
                "--- a/etc/motd\n+++ b/etc/motd\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n"
            ),
            "{patch}"
        );
        assert!(patch.contains("+++ b/home/agent/notes.txt\n@@ -0,0 +1 @@\n+hello\n"), "{patch}");
        assert!(patch.contains("--- a/var/lib/old/state\n+++ /dev/null\n"), "{patch}");
        assert!(r.stats.round_trips > 0);

        // A qcow2 overlay over the same image is the same tree.
        let over = dir.path().join("over.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&ra)
            .arg(&over));
        let old: Box<dyn Disk> = Box::new(RawFile::open(&ra).unwrap());
        let new: Box<dyn Disk> = Box::new(QemuNbd::serve(&over).unwrap());
        let same = compare_disks(old, new, false).unwrap();
        assert_eq!((same.added.len(), same.changed.len(), same.deleted.len()), (0, 0, 0));
        assert!(same.patch.is_none());
        let (backing, format) = disk::qcow2_backing(&over).unwrap().unwrap();
        assert_eq!((backing, format), (ra.clone(), disk::BackingFormat::Raw));
        assert!(disk::qcow2_backing(&qb).unwrap().is_none());
    }
}
