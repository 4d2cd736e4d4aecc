//! Where every file of the engine lives. No other module spells a file name: a sandbox's
//! directory, a checkpoint's directory and the data directory are described here once.
//!
//! ```text
//! <data_dir>/engine.lock                      one engine per data directory
//! <data_dir>/sandboxes/<id>/                  0700, one per sandbox (SandboxFiles)
//! <data_dir>/checkpoints/<owner>/<name>/      0700, one per checkpoint (CheckpointFiles)
//! <data_dir>/checkpoints/<owner>/<name>.tmp-* a capture in progress (removed at start)
//! <data_dir>/volumes/<owner>/<name>.ext4      persistent volumes
//! ```

use std::path::{Path, PathBuf};

/// The engine's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lock file that keeps a second engine out.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("engine.lock")
    }

    /// Where sandbox directories live.
    pub fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// One sandbox's files.
    pub fn sandbox(&self, id: &str) -> SandboxFiles {
        SandboxFiles::new(self.sandboxes().join(id))
    }

    /// Where an unfinished sandbox's directory moves to be removed in the background (a name
    /// no ID can have, so the ID is free at once; a crash leaves it for the orphan sweep).
    pub fn trash(&self, id: &str) -> SandboxFiles {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SandboxFiles::new(self.sandboxes().join(format!(".trash-{id}-{}-{n}", std::process::id())))
    }

    /// Where checkpoints live (every owner).
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// One owner's checkpoints.
    pub fn owner_checkpoints(&self, owner: &str) -> PathBuf {
        self.checkpoints().join(owner)
    }

    /// One checkpoint's files.
    pub fn checkpoint(&self, owner: &str, name: &str) -> CheckpointFiles {
        CheckpointFiles::new(self.owner_checkpoints(owner).join(name))
    }

    /// One owner's volumes.
    pub fn owner_volumes(&self, owner: &str) -> PathBuf {
        self.root.join("volumes").join(owner)
    }

    /// A persistent volume's file.
    pub fn volume(&self, owner: &str, name: &str) -> PathBuf {
        self.owner_volumes(owner).join(format!("{name}.ext4"))
    }

    /// The engine's own trees, which volumes and images must never point into (another
    /// sandbox's disk or memory).
    pub fn private_trees(&self) -> [PathBuf; 2] {
        [self.sandboxes(), self.checkpoints()]
    }
}

/// The files of one sandbox directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxFiles {
    dir: PathBuf,
}

impl SandboxFiles {
    /// The files of the sandbox directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The disk: a qcow2 overlay over the read-only base image.
    pub fn overlay(&self) -> PathBuf {
        self.dir.join("root.qcow2")
    }

    /// An overlay being made (renamed to [`SandboxFiles::overlay`] when complete).
    pub fn overlay_partial(&self) -> PathBuf {
        self.dir.join("root.qcow2.partial")
    }

    /// The config drive.
    pub fn config_drive(&self) -> PathBuf {
        self.dir.join("config.ext4")
    }

    /// Guest RAM (a shared memory-backend-file).
    pub fn ram(&self) -> PathBuf {
        self.dir.join("ram")
    }

    /// Device state of a cold sandbox (consumed by the restore).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// A clone's RAM: a hard link to its checkpoint's RAM file (read-only, root's), mapped
    /// privately (copy-on-write) by QEMU, so clones share the pages they did not write.
    pub fn base_ram(&self) -> PathBuf {
        self.dir.join(BASE_RAM)
    }

    /// The `depth`-th read-only layer of a clone's disk chain (a hard link to a checkpoint's
    /// overlay): `root.qcow2` is backed by the deepest layer, layer `i` by layer `i - 1`, layer
    /// 0 by the image. Backing names are relative, so a directory's chain is self-contained.
    pub fn layer(&self, depth: usize) -> PathBuf {
        self.dir.join(layer_name(depth))
    }

    /// QEMU's QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// Where the sandbox's QEMU serves its root disk over NBD while a diff reads it.
    pub fn nbd_socket(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }

    /// The guest's serial console (size-capped by the engine).
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    /// The serial console's previous generation (the log is rotated once when it fills).
    pub fn serial_log_old(&self) -> PathBuf {
        self.dir.join("serial.log.1")
    }

    /// The pid of the sandbox's QEMU, so a restarted engine can find what a crashed one left.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }

    /// An empty directory the jail's root is mounted on, in the QEMU's own mount namespace only.
    pub fn jail_root(&self) -> PathBuf {
        self.dir.join("jail")
    }

    /// Where a checkpoint's device state is written first: inside the directory the jailed QEMU
    /// can write to, then moved into the checkpoint.
    pub fn capture_state(&self) -> PathBuf {
        self.dir.join("capture.state")
    }

    /// The `index`-th scratch volume (lives and dies with the sandbox).
    pub fn scratch(&self, index: usize) -> PathBuf {
        self.dir.join(format!("scratch{index}.ext4"))
    }
}

/// The files of one checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFiles {
    dir: PathBuf,
}

impl CheckpointFiles {
    /// The files of the checkpoint directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the checkpoint holds.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    /// The copy of the source's RAM.
    pub fn ram(&self) -> PathBuf {
        self.dir.join("ram")
    }

    /// The source's device state.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The copy of the source's disk overlay.
    pub fn overlay(&self) -> PathBuf {
        self.dir.join("root.qcow2")
    }

    /// The copy of the source's config drive.
    pub fn config_drive(&self) -> PathBuf {
        self.dir.join("config.ext4")
    }

    /// The file name of the `index`-th volume copy (relative: the manifest stores it so).
    pub fn volume_name(index: usize) -> String {
        format!("vol{index}.ext4")
    }

    /// The `index`-th volume copy.
    pub fn volume(&self, index: usize) -> PathBuf {
        self.dir.join(Self::volume_name(index))
    }

    /// The `depth`-th read-only layer under the checkpoint's overlay (see
    /// [`SandboxFiles::layer`]).
    pub fn layer(&self, depth: usize) -> PathBuf {
        self.dir.join(layer_name(depth))
    }

    /// A staging directory beside `self` for one capture (`<name>.tmp-<pid>-<n>`).
    pub fn staging(&self, n: u64) -> CheckpointFiles {
        let name =
            self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        CheckpointFiles::new(
            self.dir.with_file_name(format!("{name}{STAGING_MARK}{}-{n}", std::process::id())),
        )
    }

    /// Whether a directory entry's name is a capture's staging directory.
    pub fn is_staging(file_name: &str) -> bool {
        file_name.contains(STAGING_MARK)
    }
}

const STAGING_MARK: &str = ".tmp-";

/// A clone's privately mapped RAM file (see [`SandboxFiles::base_ram`]).
const BASE_RAM: &str = "base.ram";

fn layer_name(depth: usize) -> String {
    format!("layer{depth}.qcow2")
}

/// Whether a file of a sandbox or checkpoint directory is shared read-only with checkpoints
/// and other clones (a hard link): it is never handed to a sandbox's jail uid.
pub fn is_shared_base(file_name: &str) -> bool {
    file_name == BASE_RAM
        || file_name
            .strip_prefix("layer")
            .and_then(|rest| rest.strip_suffix(".qcow2"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// How many layers a directory's disk chain has (`layer0.qcow2` .. contiguous).
pub fn layer_count(layer: impl Fn(usize) -> PathBuf) -> usize {
    (0..).take_while(|&i| layer(i).exists()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_lives_where_the_layout_says() {
        let data = DataDir::new("/d");
        let sb = data.sandbox("0123abcd");
        assert_eq!(sb.overlay(), Path::new("/d/sandboxes/0123abcd/root.qcow2"));
        assert_eq!(sb.scratch(2), Path::new("/d/sandboxes/0123abcd/scratch2.ext4"));
        assert_eq!(data.volume("usr_1", "data"), Path::new("/d/volumes/usr_1/data.ext4"));
        let cp = data.checkpoint("usr_1", "base");
        assert_eq!(cp.manifest(), Path::new("/d/checkpoints/usr_1/base/manifest.json"));
        let staging = cp.staging(7);
        let name = staging.dir().file_name().unwrap().to_str().unwrap();
        assert!(CheckpointFiles::is_staging(name), "{name}");
        assert!(!CheckpointFiles::is_staging("base"));
        assert_eq!(staging.dir().parent(), cp.dir().parent());
        assert_eq!(sb.layer(3), Path::new("/d/sandboxes/0123abcd/layer3.qcow2"));
    }

    #[test]
    fn shared_bases_are_known_by_name() {
        let table = [
            ("the clone's RAM", "base.ram", true),
            ("a layer", "layer0.qcow2", true),
            ("a deep layer", "layer12.qcow2", true),
            ("the overlay", "root.qcow2", false),
            ("the own RAM", "ram", false),
            ("no number", "layer.qcow2", false),
            ("not a number", "layerx.qcow2", false),
        ];
        for (what, name, want) in table {
            assert_eq!(is_shared_base(name), want, "{what}");
        }
    }
}
